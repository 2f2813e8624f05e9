//! Stable hashes every replica computes alike: FNV-1a for partitions,
//! label queues and hashed run ids, and a unit interval for jitter.

/// Stable 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A number in `[0, 1)` derived from `key`, for jitter every replica agrees on.
pub fn unit_hash(key: &str) -> f64 {
    (fnv1a(key.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

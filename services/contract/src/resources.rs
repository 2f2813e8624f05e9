//! Compute and storage amounts: what a run requires (`requires.cpu`,
//! `requires.memory`, `requires.disk`), what a worker offers and what the
//! runs it holds take, and the arithmetic of "is there room" that
//! dispatchers and workers share.
//!
//! - CPU is a number of cores, `2` or `0.5`, kept in thousandths of a core.
//! - Memory and disk are strings of a number and a unit: `"512MiB"`,
//!   `"4GiB"`, `"1.5GB"`, `"10 GiB"`. Units: `B`; `KB`, `MB`, `GB`, `TB`
//!   (powers of 1000); `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024); spelled
//!   exactly so. A bare number is refused: `"memory": 4` (bytes? GiB?) must
//!   never mean what the writer did not intend.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most cores a requirement or a worker may name.
pub const MAX_CORES: u64 = 1_000_000;

/// Units of a byte amount, with their factors.
const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// An amount of CPU, in thousandths of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cores(pub u64);

impl Cores {
    /// True for no CPU at all.
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// From whole cores.
    pub const fn whole(n: u64) -> Cores {
        Cores(n * 1000)
    }

    /// As a number of cores.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// From a number of cores: finite, 0 to [`MAX_CORES`], in steps of a
    /// thousandth (finer amounts are rounded; one that rounds to 0 from
    /// above is refused).
    pub fn from_f64(cores: f64) -> Result<Cores, String> {
        if !cores.is_finite() || !(0.0..=MAX_CORES as f64).contains(&cores) {
            return Err(format!("cpu {cores} must be a number of cores from 0 to {MAX_CORES}"));
        }
        let millis = (cores * 1000.0).round() as u64;
        if millis == 0 && cores > 0.0 {
            return Err(format!("cpu {cores} is less than a thousandth of a core"));
        }
        Ok(Cores(millis))
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.0 == 1000 { "core" } else { "cores" };
        write!(f, "{} {unit}", self.as_f64())
    }
}

impl FromStr for Cores {
    type Err = String;

    fn from_str(s: &str) -> Result<Cores, String> {
        let n: f64 = s.trim().parse().map_err(|_| format!("cpu {s:?} must be a number of cores, e.g. 2 or 0.5"))?;
        Cores::from_f64(n)
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) { s.serialize_u64(self.0 / 1000) } else { s.serialize_f64(self.as_f64()) }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = f64::deserialize(d)?;
        Cores::from_f64(n).map_err(serde::de::Error::custom)
    }
}

/// An amount of memory or disk, in bytes; written with a unit (`"4GiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteAmount(pub u64);

impl ByteAmount {
    /// True for nothing.
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ByteAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl FromStr for ByteAmount {
    type Err = String;

    /// `<number>[ ]<unit>`, the unit spelled as in [`UNITS`]; the number
    /// and the arithmetic are bytesize's.
    fn from_str(s: &str) -> Result<ByteAmount, String> {
        let bad = || {
            format!(
                "{s:?} must be a number and a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB \
                 (powers of 1024), e.g. \"512MiB\" or \"4GiB\""
            )
        };
        let Some((unit, _)) = UNITS.iter().find(|(u, _)| s.ends_with(u)) else { return Err(bad()) };
        let number = s[..s.len() - unit.len()].strip_suffix(' ').unwrap_or(&s[..s.len() - unit.len()]);
        let plain = !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && number.bytes().filter(|b| *b == b'.').count() <= 1
            && !number.starts_with('.')
            && !number.ends_with('.');
        if !plain {
            return Err(bad());
        }
        let bytes: bytesize::ByteSize = format!("{number}{unit}").parse().map_err(|_| bad())?;
        // bytesize saturates: anything near u64::MAX is out of range.
        if bytes.0 >= 1 << 62 {
            return Err(format!("{s:?} is too large"));
        }
        Ok(ByteAmount(bytes.0))
    }
}

impl Serialize for ByteAmount {
    /// The exact amount in the largest unit that divides it (`"4GiB"`, `"10GB"`, `"1000001B"`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (unit, factor) = UNITS
            .iter()
            .filter(|(_, f)| self.0.is_multiple_of(*f))
            .max_by_key(|(_, f)| *f)
            .copied()
            .unwrap_or(("B", 1));
        let unit = if self.0 == 0 { "B" } else { unit };
        s.serialize_str(&format!("{}{unit}", self.0 / factor.max(1)))
    }
}

impl<'de> Deserialize<'de> for ByteAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Amounts of CPU, memory and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Cores.
    #[serde(default)]
    pub cpu: Cores,
    /// Memory.
    #[serde(default)]
    pub memory: ByteAmount,
    /// Disk.
    #[serde(default)]
    pub disk: ByteAmount,
}

impl Resources {
    /// True when every amount is 0.
    pub fn is_zero(&self) -> bool {
        self.cpu.is_zero() && self.memory.is_zero() && self.disk.is_zero()
    }

    /// True when `need` fits within these amounts, each kind on its own.
    pub fn covers(&self, need: &Resources) -> bool {
        self.cpu >= need.cpu && self.memory >= need.memory && self.disk >= need.disk
    }

    /// Each amount plus `other`'s.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu: Cores(self.cpu.0.saturating_add(other.cpu.0)),
            memory: ByteAmount(self.memory.0.saturating_add(other.memory.0)),
            disk: ByteAmount(self.disk.0.saturating_add(other.disk.0)),
        }
    }

    /// Each amount less `other`'s, never below 0.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu: Cores(self.cpu.0.saturating_sub(other.cpu.0)),
            memory: ByteAmount(self.memory.0.saturating_sub(other.memory.0)),
            disk: ByteAmount(self.disk.0.saturating_sub(other.disk.0)),
        }
    }
}

impl fmt::Display for Resources {
    /// The non-zero amounts: `2 cores, 4.0 GiB memory`; `nothing` when all are 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.cpu.is_zero() {
            parts.push(self.cpu.to_string());
        }
        if !self.memory.is_zero() {
            parts.push(format!("{} memory", self.memory));
        }
        if !self.disk.is_zero() {
            parts.push(format!("{} disk", self.disk));
        }
        if parts.is_empty() { f.write_str("nothing") } else { f.write_str(&parts.join(", ")) }
    }
}

/// What a worker has free: amounts and slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Room {
    /// Free CPU, memory and disk.
    pub resources: Resources,
    /// Free slots.
    pub slots: u64,
}

/// What one run takes: amounts and slots (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// CPU, memory and disk.
    pub resources: Resources,
    /// Slots.
    pub slots: u64,
}

impl Room {
    /// True when `need` fits in this room.
    pub fn fits(&self, need: &Need) -> bool {
        self.resources.covers(&need.resources) && self.slots >= need.slots
    }

    /// How many runs the size of `need` this room could still take: the
    /// least, over every kind `need` asks for (slots always), of free amount
    /// divided by the amount asked. At least 1 when `need` fits. The
    /// `least_loaded` strategy picks the worker where this is largest.
    pub fn headroom(&self, need: &Need) -> f64 {
        let ratio = |free: u64, asked: u64| if asked == 0 { f64::INFINITY } else { free as f64 / asked as f64 };
        let r = &self.resources;
        let n = &need.resources;
        [
            ratio(r.cpu.0, n.cpu.0),
            ratio(r.memory.0, n.memory.0),
            ratio(r.disk.0, n.disk.0),
            ratio(self.slots, need.slots.max(1)),
        ]
        .into_iter()
        .fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Result<u64, String> {
        s.parse::<ByteAmount>().map(|b| b.0)
    }

    #[test]
    fn byte_amounts_need_a_unit_spelled_exactly() {
        assert_eq!(bytes("4GiB"), Ok(4 << 30));
        assert_eq!(bytes("512MiB"), Ok(512 << 20));
        assert_eq!(bytes("10 GB"), Ok(10_000_000_000));
        assert_eq!(bytes("1.5KiB"), Ok(1536));
        assert_eq!(bytes("0B"), Ok(0));
        assert_eq!(bytes("7B"), Ok(7));
        for bad in
            ["4", "4G", "4g", "4gib", "4 GiB ", " 4GiB", "4  GiB", "GiB", "-1GiB", "1e3MB", "1..5GB", ".5GB", "5.GB"]
        {
            assert!(bytes(bad).is_err(), "{bad:?} is refused");
        }
        assert!(bytes("99999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn byte_amounts_serialize_exactly_in_the_largest_unit() {
        let json = |n: u64| serde_json::to_string(&ByteAmount(n)).unwrap();
        assert_eq!(json(4 << 30), r#""4GiB""#);
        assert_eq!(json(10_000_000_000), r#""10GB""#);
        assert_eq!(json(1_000_001), r#""1000001B""#);
        assert_eq!(json(0), r#""0B""#);
        for n in [0, 1, 1536, 4 << 30, 10_000_000_000, 123_456_789] {
            assert_eq!(serde_json::from_str::<ByteAmount>(&json(n)).unwrap(), ByteAmount(n));
        }
        assert!(serde_json::from_str::<ByteAmount>("4096").is_err(), "a bare number is refused");
    }

    #[test]
    fn cores_are_numbers_kept_in_thousandths() {
        assert_eq!(serde_json::from_str::<Cores>("2").unwrap(), Cores(2000));
        assert_eq!(serde_json::from_str::<Cores>("0.5").unwrap(), Cores(500));
        assert_eq!(serde_json::to_string(&Cores(2000)).unwrap(), "2");
        assert_eq!(serde_json::to_string(&Cores(1500)).unwrap(), "1.5");
        assert!(serde_json::from_str::<Cores>("-1").is_err());
        assert!(serde_json::from_str::<Cores>("0.0001").is_err());
        assert!(serde_json::from_str::<Cores>("\"2\"").is_err());
        assert_eq!("1.25".parse::<Cores>(), Ok(Cores(1250)));
        assert_eq!(Cores(2000).to_string(), "2 cores");
    }

    #[test]
    fn room_fits_each_kind_and_headroom_counts_runs_of_that_size() {
        let gib = |n: u64| ByteAmount(n << 30);
        let room = Room { resources: Resources { cpu: Cores::whole(4), memory: gib(8), disk: gib(0) }, slots: 10 };
        let need = |cpu: u64, mem: u64, slots: u64| Need {
            resources: Resources { cpu: Cores::whole(cpu), memory: gib(mem), disk: ByteAmount(0) },
            slots,
        };
        assert!(room.fits(&need(4, 8, 1)));
        assert!(!room.fits(&need(5, 1, 1)), "too many cores");
        assert!(!room.fits(&need(1, 9, 1)), "too much memory");
        assert!(!room.fits(&need(1, 1, 11)), "too many slots");
        let disk = Need { resources: Resources { disk: gib(1), ..Resources::default() }, slots: 1 };
        assert!(!room.fits(&disk), "no disk at all");
        assert_eq!(room.headroom(&need(1, 1, 1)), 4.0, "cores are the tightest");
        assert_eq!(room.headroom(&need(1, 4, 1)), 2.0, "memory is the tightest");
        assert_eq!(room.headroom(&need(0, 0, 1)), 10.0, "slots only");
        assert!(room.headroom(&need(5, 0, 1)) < 1.0);
    }
}

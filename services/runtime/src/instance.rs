//! Instance ids for service replicas (a ticker's lease owner, a worker's
//! heartbeat key): `<hostname>-<pid>`, made safe as one NATS subject token
//! and short enough for a name (64 characters, as `validate_name` allows).

/// `<hostname>-<pid>`, or `<fallback>-<pid>` without a hostname; the host
/// part is cut so that the whole fits in 64 characters.
pub fn default_instance_id(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string());
    let clean: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let pid = std::process::id().to_string();
    let keep = 63usize.saturating_sub(pid.len()).min(clean.len());
    format!("{}-{pid}", &clean[..keep])
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_single_tokens_ending_in_the_pid() {
        let id = super::default_instance_id("ticker");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{id}");
        assert!(id.len() <= 64, "{id}");
    }
}

//! Instance ids for service replicas (a ticker's lease owner, a worker's
//! heartbeat key): `<hostname>-<pid>`, made safe as one NATS subject token.

/// `<hostname>-<pid>`, or `<fallback>-<pid>` without a hostname.
pub fn default_instance_id(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string());
    let clean: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{clean}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_single_tokens_ending_in_the_pid() {
        let id = super::default_instance_id("ticker");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{id}");
    }
}

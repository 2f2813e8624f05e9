//! Which hosts HTTP handlers may reach (`--allow-http`, `--deny-http`).
//!
//! A rule is a host name (`api.example.com`, or `*.example.com` for its
//! subdomains) or an address range (`10.0.0.0/8`, `169.254.169.254`). A
//! request is refused when its host name or any address the name resolves
//! to is denied, or, with an allow-list, when neither the name nor every
//! address is allowed. Denial wins over allowing. The check runs on the
//! resolved addresses, inside the HTTP client's resolver, so what is
//! checked is what is connected to (a name re-pointed at a denied address
//! between two lookups gains nothing); IP literals in URLs are checked as
//! they are. Redirects are not followed at all (a 3xx fails the attempt).
//!
//! By default everything is allowed except link-local addresses and the
//! cloud metadata services on them: calling internal services is the
//! common case, reading the worker's cloud credentials never is.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// What `--deny-http` holds unless told otherwise: link-local ranges
/// (169.254.169.254 is the AWS, GCP, Azure and OpenStack metadata service)
/// and the metadata addresses outside them (AWS over IPv6, Alibaba Cloud).
pub const DEFAULT_DENY: &str = "169.254.0.0/16,fe80::/10,fd00:ec2::254,100.100.100.200,metadata.google.internal";

/// `--deny-http none` denies nothing.
pub const NONE: &str = "none";

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// An address range.
    Net(IpNet),
    /// A host name, lower-case; `*.` in front matches its subdomains.
    Host(String),
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Rule, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Rule::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Rule::Net(IpNet::from(ip)));
        }
        let host = s.strip_prefix("*.").unwrap_or(s);
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!("{s:?} is neither a host name, an address nor an address range (CIDR)"));
        }
        Ok(Rule::Host(s.to_ascii_lowercase()))
    }
}

impl Rule {
    fn matches_host(&self, host: &str) -> bool {
        match self {
            Rule::Host(rule) => match rule.strip_prefix("*.") {
                Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.')),
                None => rule == host,
            },
            Rule::Net(_) => false,
        }
    }

    fn matches_addr(&self, addr: IpAddr) -> bool {
        match self {
            Rule::Net(net) => net.contains(&addr),
            Rule::Host(_) => false,
        }
    }
}

/// Parses a rule list; [`NONE`] (alone) is the empty list.
pub fn parse_rules(items: &[String]) -> Result<Vec<Rule>, String> {
    let items: Vec<&str> = items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if items == [NONE] {
        return Ok(Vec::new());
    }
    items.iter().map(|s| s.parse()).collect()
}

/// The worker's HTTP reach rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// When not empty, only what these match.
    pub allow: Vec<Rule>,
    /// Never what these match.
    pub deny: Vec<Rule>,
}

impl Reach {
    /// The rules `--allow-http` and `--deny-http` describe.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Reach, String> {
        Ok(Reach { allow: parse_rules(allow)?, deny: parse_rules(deny)? })
    }

    /// Whether `host`, which resolves to `addrs`, may be called; the
    /// error says which rule refused it.
    pub fn check(&self, host: &str, addrs: &[IpAddr]) -> Result<(), String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is that IPv4 address.
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.to_canonical()).collect();
        if self.deny.iter().any(|r| r.matches_host(&host)) {
            return Err(format!("host {host} is denied by the worker's --deny-http"));
        }
        if let Some(addr) = addrs.iter().find(|a| self.deny.iter().any(|r| r.matches_addr(**a))) {
            return Err(format!("host {host} resolves to {addr}, which the worker's --deny-http denies"));
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| r.matches_host(&host)) {
            return Ok(());
        }
        match addrs.iter().find(|a| !self.allow.iter().any(|r| r.matches_addr(**a))) {
            None if !addrs.is_empty() => Ok(()),
            None => Err(format!("host {host} is not in the worker's --allow-http")),
            Some(addr) => Err(format!("host {host} ({addr}) is not in the worker's --allow-http")),
        }
    }

    /// Resolves `host` and checks the result.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, 0)],
            Err(_) => {
                tokio::net::lookup_host((bare, 0)).await.map_err(|e| format!("cannot resolve {bare}: {e}"))?.collect()
            }
        };
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        self.check(bare, &ips)?;
        Ok(addrs)
    }
}

/// The HTTP client's resolver: every name it connects to is checked.
pub struct Guarded(pub Arc<Reach>);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.0.clone();
        Box::pin(async move {
            let addrs = reach.resolve(name.as_str()).await.map_err(Box::<dyn std::error::Error + Send + Sync>::from)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(allow: &str, deny: &str) -> Reach {
        let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        Reach::new(&split(allow), &split(deny)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_everything_but_link_local_and_metadata_is_reached() {
        let r = reach("", DEFAULT_DENY);
        assert!(r.check("internal.svc", &[ip("10.1.2.3")]).is_ok());
        assert!(r.check("localhost", &[ip("127.0.0.1")]).is_ok());
        for meta in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "fe80::1", "::ffff:169.254.169.254"] {
            let err = r.check("x", &[ip(meta)]).unwrap_err();
            assert!(err.contains("--deny-http"), "{meta}: {err}");
        }
        assert!(r.check("metadata.google.internal", &[ip("10.0.0.1")]).is_err());
        assert!(r.check("METADATA.google.internal.", &[]).is_err());
    }

    #[test]
    fn any_denied_address_refuses_the_name() {
        let r = reach("", "127.0.0.0/8");
        let err = r.check("rebound.example", &[ip("93.184.216.34"), ip("127.0.0.1")]).unwrap_err();
        assert!(err.contains("resolves to 127.0.0.1"), "{err}");
    }

    #[test]
    fn an_allow_list_admits_only_its_names_and_ranges_and_denial_wins() {
        let r = reach("*.example.com,10.0.0.0/8", "10.9.0.0/16");
        assert!(r.check("api.example.com", &[ip("93.184.216.34")]).is_ok());
        assert!(r.check("example.com", &[ip("93.184.216.34")]).is_err());
        assert!(r.check("evil-example.com", &[ip("93.184.216.34")]).is_err());
        assert!(r.check("db.internal", &[ip("10.1.1.1")]).is_ok());
        assert!(r.check("db.internal", &[ip("10.1.1.1"), ip("192.168.1.1")]).is_err());
        assert!(r.check("db.internal", &[ip("10.9.1.1")]).is_err());
        assert!(r.check("nothing", &[]).is_err());
    }

    #[test]
    fn rules_parse_and_none_empties_the_list() {
        assert_eq!(parse_rules(&["none".into()]), Ok(Vec::new()));
        assert!(parse_rules(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_rules(&["bad host".into()]).is_err());
        assert_eq!(parse_rules(&["Api.Example.com".into()]), Ok(vec![Rule::Host("api.example.com".into())]));
    }
}

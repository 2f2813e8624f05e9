//! How a run reaches a worker, and the limits it runs under: routing
//! strategies, rate limits, and the payload templates that key limits.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which worker runs a run, among those that serve its queue and carry the
/// labels it requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Routing {
    /// Whichever matching worker has a free slot first.
    #[default]
    Any,
    /// Matching workers in turn.
    RoundRobin,
    /// The matching worker with the most room for the run: the one that
    /// could still take the most runs of its size (cores, memory, disk it
    /// requires, and slots), by its last heartbeat.
    LeastLoaded,
    /// The same key (a template over the payload) always goes to the same
    /// worker while the set of workers is unchanged.
    ConsistentHash(String),
    /// One run per live matching worker, each told its shard index and the total.
    Broadcast,
}

impl Routing {
    /// True for the default.
    pub fn is_any(&self) -> bool {
        *self == Routing::Any
    }

    /// True when runs are addressed to one chosen worker.
    pub fn targets_a_worker(&self) -> bool {
        !self.is_any()
    }
}

/// At most `limit` runs start per `per`, counted per rendered `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Template over the payload; absent: one limit for the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Starts allowed per period.
    pub limit: u32,
    /// The period.
    pub per: crate::HumanDuration,
}

/// Renders `{{payload.a.b}}` placeholders with values from `payload`
/// (strings as they are, anything else as compact JSON, missing as empty).
pub fn render_template(template: &str, payload: &Value) -> String {
    render_placeholders(template, |expr| match expr.strip_prefix("payload") {
        Some(path) if path.is_empty() || path.starts_with('.') => lookup(payload, path),
        _ => None,
    })
}

/// Replaces each `{{expr}}` in `template` with what `resolve` finds for the
/// trimmed `expr` (strings as they are, anything else as compact JSON,
/// nothing or `null` as empty).
pub fn render_placeholders<'v>(template: &str, resolve: impl Fn(&str) -> Option<&'v Value>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match resolve(rest[start + 2..start + end].trim()) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// The value at a dotted `path` in `root` (array members by index); an
/// empty path is `root` itself.
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = Some(root);
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = v.and_then(|v| match v {
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            other => other.get(part),
        });
    }
    v
}

/// Checks a template: every placeholder is `{{payload...}}`.
pub fn validate_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("template {template:?} has an unclosed {{{{"));
        };
        let expr = rest[start + 2..start + end].trim();
        if expr != "payload" && !expr.starts_with("payload.") {
            return Err(format!("template {template:?}: placeholders are {{{{payload.<field>}}}}, got {{{{{expr}}}}}"));
        }
        rest = &rest[start + end + 2..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_payload_fields() {
        let p = json!({"customer": "acme", "order": {"id": 42, "lines": [{"sku": "x"}]}});
        assert_eq!(render_template("{{payload.customer}}", &p), "acme");
        assert_eq!(render_template("c-{{ payload.order.id }}-{{payload.order.lines.0.sku}}", &p), "c-42-x");
        assert_eq!(render_template("{{payload.missing}}", &p), "");
        assert_eq!(render_template("static", &p), "static");
        assert!(validate_template("{{payload.customer}}").is_ok());
        assert!(validate_template("{{task}}").is_err());
        assert!(validate_template("{{payload.x").is_err());
    }

    #[test]
    fn routing_reads_like_the_docs() {
        let r: Routing = serde_json::from_str(r#""round_robin""#).unwrap();
        assert_eq!(r, Routing::RoundRobin);
        let r: Routing = serde_json::from_str(r#""least_loaded""#).unwrap();
        assert_eq!(r, Routing::LeastLoaded);
        let r: Routing = serde_json::from_str(r#"{"consistent_hash": "{{payload.user}}"}"#).unwrap();
        assert_eq!(r, Routing::ConsistentHash("{{payload.user}}".into()));
        assert!(serde_json::from_str::<Routing>(r#""random""#).is_err());
    }
}

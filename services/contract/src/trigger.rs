//! Event triggers on a task definition (`"triggers": [...]`): where events
//! come from (a user stream, a plain subject jetsched captures, a KV key
//! filter), which of them count, and what a run gets. Also the run's input
//! for one event ([`TriggerEvent`]), the payload mapping, and the subject
//! arithmetic the capture stream needs (overlap, cover).
//!
//! Every event starts one run whose id comes from the event's position:
//! `Nats-Msg-Id` [`crate::run::trigger_msg_id`], run id `t.<task>.m-<msg id>`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::HumanDuration;

/// Most triggers one task may declare.
pub const MAX_TRIGGERS: usize = 16;

/// Most events in one batch.
pub const MAX_BATCH: u32 = 1000;

/// Longest `batch.within` and `debounce`: events are held unacknowledged
/// that long, so it is bounded.
pub const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

/// One trigger: exactly one source (`stream`, a plain `subject`, or `kv`),
/// and optionally a filter, batching or debouncing, and a payload mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// A stream the user already has; `subject` then filters it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// With `stream`: a subject filter on it. Alone: a plain NATS subject
    /// (wildcards allowed) that jetsched captures into its own stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A KV bucket: one run per change of a key matching `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<String>,
    /// With `kv`: a key filter (`pricing.>`); default every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only events that match start runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilter>,
    /// One run per group of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// One run for the last event of a burst (per `debounce_key`), once no
    /// event of that key came for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<HumanDuration>,
    /// With `debounce`: a template over the event naming the burst an event
    /// belongs to; default `{{subject}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_key: Option<String>,
    /// The run's payload: a JSON value whose strings may hold `{{...}}`
    /// placeholders over the event; default the whole event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// Conditions on an event beyond the source's subject filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// The event's subject must match this pattern (`*` one token, `>` the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Each header must be present with this value (`*`: any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Batching: a run gets up to `max` events, gathered for at most `within`
/// after the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Events per run, 1-1000.
    pub max: u32,
    /// How long the first event of a batch waits for more.
    pub within: HumanDuration,
}

/// Where a trigger's events are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    /// A user stream, with an optional subject filter.
    Stream {
        /// Stream name.
        stream: &'a str,
        /// Subject filter.
        subject: Option<&'a str>,
    },
    /// A plain subject captured into jetsched's triggers stream.
    Subject(&'a str),
    /// A KV bucket and key filter.
    Kv {
        /// Bucket name.
        bucket: &'a str,
        /// Key filter.
        key: &'a str,
    },
}

impl Source<'_> {
    /// A stable text naming the source: two triggers with the same source
    /// share a consumer name, so it must not depend on anything else.
    pub fn identity(&self) -> String {
        match self {
            Source::Stream { stream, subject } => format!("stream\u{1f}{stream}\u{1f}{}", subject.unwrap_or(">")),
            Source::Subject(s) => format!("subject\u{1f}{s}"),
            Source::Kv { bucket, key } => format!("kv\u{1f}{bucket}\u{1f}{key}"),
        }
    }

    /// What a log line or an `invalid` event calls it.
    pub fn describe(&self) -> String {
        match self {
            Source::Stream { stream, subject: Some(s) } => format!("stream {stream}, subject {s}"),
            Source::Stream { stream, subject: None } => format!("stream {stream}"),
            Source::Subject(s) => format!("subject {s}"),
            Source::Kv { bucket, key } => format!("KV bucket {bucket}, keys {key}"),
        }
    }
}

impl EventTrigger {
    /// The source (call after [`EventTrigger::validate`]; an invalid mix
    /// reads as a plain subject or a stream, whichever is set).
    pub fn source(&self) -> Source<'_> {
        match (&self.kv, &self.stream, &self.subject) {
            (Some(bucket), _, _) => Source::Kv { bucket, key: self.key.as_deref().unwrap_or(">") },
            (None, Some(stream), subject) => Source::Stream { stream, subject: subject.as_deref() },
            (None, None, subject) => Source::Subject(subject.as_deref().unwrap_or("")),
        }
    }

    /// The debounce key template in force.
    pub fn debounce_key(&self) -> &str {
        self.debounce_key.as_deref().unwrap_or("{{subject}}")
    }

    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.stream, &self.subject, &self.kv) {
            (None, None, None) => return Err("needs a source: \"stream\", \"subject\" or \"kv\"".to_string()),
            (Some(_), _, Some(_)) => return Err("has both \"stream\" and \"kv\"; name one source".to_string()),
            (None, Some(_), Some(_)) => {
                return Err("has both \"subject\" and \"kv\"; a KV trigger filters with \"key\"".to_string());
            }
            _ => {}
        }
        if self.key.is_some() && self.kv.is_none() {
            return Err("\"key\" needs \"kv\"".to_string());
        }
        if let Some(stream) = &self.stream {
            validate_stream_name(stream)?;
        }
        if let Some(subject) = &self.subject {
            validate_subject_filter(subject).map_err(|e| format!("subject: {e}"))?;
            if self.stream.is_none() && subject.starts_with('$') {
                return Err(format!(
                    "subject {subject:?}: subjects starting with '$' belong to the server; \
                     for a KV bucket use {{\"kv\": \"<bucket>\", \"key\": \"<keys>\"}}"
                ));
            }
        }
        if let Some(bucket) = &self.kv {
            let ok = !bucket.is_empty() && bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(format!("kv {bucket:?} is not a bucket name (A-Z, a-z, 0-9, '_', '-')"));
            }
        }
        if let Some(key) = &self.key {
            let ok = key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.' | b'*' | b'>'));
            if !ok {
                return Err(format!("key {key:?} has characters a KV key cannot hold"));
            }
            validate_subject_filter(key).map_err(|e| format!("key: {e}"))?;
        }
        if let Some(filter) = &self.filter {
            if let Some(s) = &filter.subject {
                validate_subject_filter(s).map_err(|e| format!("filter.subject: {e}"))?;
            }
            if filter.headers.keys().any(|k| k.is_empty() || k.contains(':') || k.chars().any(char::is_whitespace)) {
                return Err("filter.headers: header names must be non-empty, without ':' or spaces".to_string());
            }
        }
        if let Some(batch) = &self.batch {
            if !(1..=MAX_BATCH).contains(&batch.max) {
                return Err(format!("batch.max must be 1-{MAX_BATCH}, got {}", batch.max));
            }
            if batch.within.0.is_zero() || batch.within.0 > MAX_HOLD {
                return Err("batch.within must be greater than 0 and at most 1h".to_string());
            }
            if self.debounce.is_some() {
                return Err("batch and debounce do not combine; choose one".to_string());
            }
        }
        if let Some(d) = &self.debounce
            && (d.0.is_zero() || d.0 > MAX_HOLD)
        {
            return Err("debounce must be greater than 0 and at most 1h".to_string());
        }
        if let Some(k) = &self.debounce_key {
            if self.debounce.is_none() {
                return Err("debounce_key needs debounce".to_string());
            }
            validate_event_template(k).map_err(|e| format!("debounce_key: {e}"))?;
        }
        if let Some(p) = &self.payload {
            validate_mapping(p).map_err(|e| format!("payload: {e}"))?;
        }
        Ok(())
    }
}

/// Checks a task's trigger list: each trigger, and that no two read the same source.
pub fn validate_triggers(triggers: &[EventTrigger]) -> Result<(), String> {
    if triggers.len() > MAX_TRIGGERS {
        return Err(format!("at most {MAX_TRIGGERS} triggers per task, got {}", triggers.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in triggers.iter().enumerate() {
        t.validate().map_err(|e| format!("triggers[{i}]: {e}"))?;
        if !seen.insert(t.source().identity()) {
            return Err(format!("triggers[{i}]: another trigger of this task reads {}", t.source().describe()));
        }
    }
    Ok(())
}

/// Stream names: no whitespace, `.`, `*`, `>`, path separators; at most 255 bytes.
fn validate_stream_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
    if bad {
        return Err(format!("stream {name:?} is not a stream name"));
    }
    Ok(())
}

/// A subject or subject filter: dot-separated non-empty tokens, no
/// whitespace, `*` as a whole token, `>` only as the last token.
pub fn validate_subject_filter(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{subject:?} is not a subject (empty, or has whitespace)"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let wild_inside = t.len() > 1 && (t.contains('*') || t.contains('>'));
        if t.is_empty() || wild_inside || (*t == ">" && i + 1 != tokens.len()) {
            return Err(format!(
                "{subject:?} is not a subject filter: empty tokens, '*' or '>' inside a token, or '>' before the end"
            ));
        }
    }
    Ok(())
}

/// True when some subject matches both filters.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (ta, tb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for i in 0.. {
        match (ta.get(i), tb.get(i)) {
            (None, None) => return true,
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) if x == y || *x == "*" || *y == "*" => continue,
            _ => return false,
        }
    }
    false
}

/// True when every subject `inner` matches is matched by `outer` too.
pub fn subject_covers(outer: &str, inner: &str) -> bool {
    let (to, ti): (Vec<&str>, Vec<&str>) = (outer.split('.').collect(), inner.split('.').collect());
    for i in 0.. {
        match (to.get(i), ti.get(i)) {
            (None, None) => return true,
            (Some(&">"), Some(_)) => return true,
            (Some(&"*"), Some(y)) if *y != ">" => continue,
            (Some(x), Some(y)) if x == y => continue,
            _ => return false,
        }
    }
    false
}

/// Whether the concrete `subject` matches the filter `pattern`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    subject_covers(pattern, subject)
}

/// The smallest set of filters matching what `subjects` match: duplicates
/// and filters covered by another one dropped, sorted.
pub fn minimal_cover(subjects: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = subjects.to_vec();
    sorted.sort();
    sorted.dedup();
    let all = sorted.clone();
    sorted.retain(|s| !all.iter().any(|o| o != s && subject_covers(o, s)));
    sorted
}

/// The run's input for one event (the default payload of a trigger's run;
/// a batch run gets an array of them): where the event was stored and what
/// it carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerEvent {
    /// The subject the event was published to.
    pub subject: String,
    /// The stream that stored it (jetsched's own for plain subjects, `KV_<bucket>` for KV).
    pub stream: String,
    /// Its stream sequence (for KV: the revision).
    pub seq: u64,
    /// When the stream stored it.
    pub time: Timestamp,
    /// Its headers (the first value of each).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Its body: JSON when it parses as JSON, else the text; `null` when empty.
    pub data: Value,
    /// KV: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// KV: the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// KV: what happened to the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<KvOperation>,
    /// KV: the key's revision (the same number as `seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// What a KV change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvOperation {
    /// A value was written.
    Put,
    /// The key was deleted.
    Delete,
    /// The key and its history were purged.
    Purge,
}

impl TriggerEvent {
    /// Decodes a message body as [`TriggerEvent::data`] says.
    pub fn data_of(body: &[u8]) -> Value {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    }

    /// Whether the event passes `filter`.
    pub fn passes(&self, filter: &EventFilter) -> bool {
        if let Some(pattern) = &filter.subject
            && !subject_matches(pattern, &self.subject)
        {
            return false;
        }
        filter.headers.iter().all(|(k, want)| {
            let got = self.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(k)).map(|(_, v)| v);
            got.is_some_and(|v| want == "*" || v == want)
        })
    }
}

/// The fields of [`TriggerEvent`] a placeholder may start with.
const EVENT_FIELDS: [&str; 10] =
    ["subject", "stream", "seq", "time", "headers", "data", "bucket", "key", "operation", "revision"];

/// Placeholders `{{field...}}` inside `template`, trimmed.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("template {template:?} has an unclosed {{{{"));
        };
        out.push(rest[start + 2..start + end].trim());
        rest = &rest[start + end + 2..];
    }
    Ok(out)
}

/// Checks a template over an event: every placeholder names an event field
/// (`{{data.customer}}`, `{{headers.Tenant}}`, `{{subject}}`, ...).
pub fn validate_event_template(template: &str) -> Result<(), String> {
    for p in placeholders(template)? {
        let head = p.split('.').next().unwrap_or_default();
        if !EVENT_FIELDS.contains(&head) {
            return Err(format!(
                "template {template:?}: {{{{{p}}}}} does not name an event field ({})",
                EVENT_FIELDS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks every string of a payload mapping.
pub fn validate_mapping(mapping: &Value) -> Result<(), String> {
    match mapping {
        Value::String(s) => validate_event_template(s),
        Value::Array(items) => items.iter().try_for_each(validate_mapping),
        Value::Object(fields) => fields.values().try_for_each(validate_mapping),
        _ => Ok(()),
    }
}

/// Renders a template over `event` (an event as JSON) into text: values as
/// they are for strings, compact JSON otherwise, missing ones empty.
pub fn render_event_template(template: &str, event: &Value) -> String {
    crate::routing::render_placeholders(template, |path| crate::routing::lookup(event, path))
}

/// Renders a payload mapping: a string that is exactly one placeholder
/// becomes the value it names (any JSON, `null` when missing); other strings
/// are rendered as text; arrays and objects are rendered member by member.
pub fn render_mapping(mapping: &Value, event: &Value) -> Value {
    match mapping {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with("{{") && t.find("}}") == Some(t.len().saturating_sub(2)) {
                let path = t[2..t.len() - 2].trim();
                return crate::routing::lookup(event, path).cloned().unwrap_or(Value::Null);
            }
            Value::String(render_event_template(s, event))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_mapping(v, event)).collect()),
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(k, v)| (k.clone(), render_mapping(v, event))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(v: Value) -> Result<EventTrigger, String> {
        let t: EventTrigger = serde_json::from_value(v).map_err(|e| e.to_string())?;
        t.validate().map(|()| t)
    }

    #[test]
    fn the_three_sources_parse_and_name_themselves() {
        let s = trigger(json!({"stream": "ORDERS", "subject": "orders.created.>"})).unwrap();
        assert_eq!(s.source(), Source::Stream { stream: "ORDERS", subject: Some("orders.created.>") });
        let p = trigger(json!({"subject": "orders.created.>"})).unwrap();
        assert_eq!(p.source(), Source::Subject("orders.created.>"));
        let k = trigger(json!({"kv": "config", "key": "pricing.>"})).unwrap();
        assert_eq!(k.source(), Source::Kv { bucket: "config", key: "pricing.>" });
        let all = trigger(json!({"kv": "config"})).unwrap();
        assert_eq!(all.source(), Source::Kv { bucket: "config", key: ">" });
        let ids = [s.source().identity(), p.source().identity(), k.source().identity()];
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    }

    #[test]
    fn bad_triggers_say_why() {
        for (v, needle) in [
            (json!({}), "needs a source"),
            (json!({"stream": "A", "kv": "b"}), "both"),
            (json!({"subject": "a", "kv": "b"}), "both"),
            (json!({"subject": "a", "key": "b"}), "\"key\" needs \"kv\""),
            (json!({"subject": "a.>.b"}), "subject filter"),
            (json!({"subject": "a b"}), "whitespace"),
            (json!({"subject": "$KV.config.>"}), "belong to the server"),
            (json!({"stream": "A.B"}), "not a stream name"),
            (json!({"kv": "a.b"}), "bucket name"),
            (json!({"kv": "a", "key": "x y"}), "cannot hold"),
            (json!({"subject": "a", "batch": {"max": 0, "within": "1s"}}), "batch.max"),
            (json!({"subject": "a", "batch": {"max": 10, "within": "0"}}), "batch.within"),
            (json!({"subject": "a", "batch": {"max": 10, "within": "1s"}, "debounce": "1s"}), "do not combine"),
            (json!({"subject": "a", "debounce": "2h"}), "at most 1h"),
            (json!({"subject": "a", "debounce_key": "{{subject}}"}), "needs debounce"),
            (json!({"subject": "a", "payload": {"x": "{{payload.x}}"}}), "event field"),
            (json!({"subject": "a", "filter": {"subject": "a.>.b"}}), "filter.subject"),
        ] {
            let err = trigger(v.clone()).unwrap_err();
            assert!(err.contains(needle), "{v}: {err}");
        }
        let dup = vec![trigger(json!({"subject": "a"})).unwrap(), trigger(json!({"subject": "a"})).unwrap()];
        assert!(validate_triggers(&dup).unwrap_err().contains("another trigger"));
    }

    #[test]
    fn subject_arithmetic() {
        assert!(subjects_overlap("orders.>", "orders.created.eu"));
        assert!(subjects_overlap("orders.*.eu", "orders.created.*"));
        assert!(subjects_overlap(">", "a"));
        assert!(!subjects_overlap("orders.created", "orders.created.>"));
        assert!(!subjects_overlap("orders.a", "orders.b"));
        assert!(!subjects_overlap("a.b", "a.b.c"));
        assert!(subject_covers("orders.>", "orders.created.>"));
        assert!(subject_covers("orders.*", "orders.x"));
        assert!(!subject_covers("orders.*", "orders.>"));
        assert!(!subject_covers("orders.created.>", "orders.>"));
        assert!(subject_matches("orders.*.eu", "orders.created.eu"));
        assert!(!subject_matches("orders.*.eu", "orders.created.us"));
        let cover = minimal_cover(&["b.x".into(), "a.>".into(), "a.b.c".into(), "b.x".into(), "b.*".into()]);
        assert_eq!(cover, vec!["a.>".to_string(), "b.*".to_string()]);
    }

    #[test]
    fn filters_and_mappings_read_the_event() {
        let event = TriggerEvent {
            subject: "orders.created.eu".into(),
            stream: "ORDERS".into(),
            seq: 42,
            time: "2026-11-25T02:30:00Z".parse().unwrap(),
            headers: BTreeMap::from([("Tenant".to_string(), "acme".to_string())]),
            data: TriggerEvent::data_of(br#"{"id": 7, "lines": [{"sku": "x"}]}"#),
            bucket: None,
            key: None,
            operation: None,
            revision: None,
        };
        let yes = EventFilter {
            subject: Some("orders.*.eu".into()),
            headers: BTreeMap::from([("tenant".into(), "acme".into())]),
        };
        let no = EventFilter { headers: BTreeMap::from([("Tenant".into(), "other".into())]), ..EventFilter::default() };
        let any = EventFilter { headers: BTreeMap::from([("Tenant".into(), "*".into())]), ..EventFilter::default() };
        assert!(event.passes(&yes) && !event.passes(&no) && event.passes(&any));
        let v = serde_json::to_value(&event).unwrap();
        let mapping = json!({"order": "{{data.id}}", "sku": "{{ data.lines.0.sku }}", "where": "{{subject}}@{{seq}}",
                             "tenant": "{{headers.Tenant}}", "missing": "{{data.nope}}", "fixed": [1, "x"]});
        assert_eq!(
            render_mapping(&mapping, &v),
            json!({"order": 7, "sku": "x", "where": "orders.created.eu@42", "tenant": "acme", "missing": null, "fixed": [1, "x"]})
        );
        assert_eq!(render_event_template("{{subject}}", &v), "orders.created.eu");
        assert_eq!(TriggerEvent::data_of(b"plain text"), json!("plain text"));
        assert_eq!(TriggerEvent::data_of(b""), Value::Null);
    }
}

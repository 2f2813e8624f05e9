//! From a stored message to what a trigger's run gets: the event
//! ([`TriggerEvent`]), whether it passes the trigger's filter, the run's
//! payload (the event, or the trigger's mapping of it), and the submission's
//! `Nats-Msg-Id`. Pure logic.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use jetsched_contract::trigger::{KvOperation, Source, render_event_template, render_mapping};
use jetsched_contract::{EventTrigger, Names, TriggerEvent, run};
use jiff::Timestamp;
use serde_json::Value;

/// The header a KV bucket's messages carry for deletes and purges.
const KV_OPERATION: &str = "KV-Operation";

/// The parts of a stored message an event is made of.
pub struct Stored<'a> {
    /// Its stream.
    pub stream: &'a str,
    /// Its subject.
    pub subject: &'a str,
    /// Its stream sequence.
    pub seq: u64,
    /// When the stream stored it, in nanoseconds since the epoch.
    pub stored_nanos: i128,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its body.
    pub body: &'a [u8],
}

/// The event for a message of `trigger`'s source.
pub fn event(names: &Names, trigger: &EventTrigger, m: &Stored<'_>) -> TriggerEvent {
    let headers: BTreeMap<String, String> = m
        .headers
        .map(|h| {
            h.iter()
                .filter_map(|(k, vs)| vs.first().map(|v| (AsRef::<str>::as_ref(k).to_string(), v.as_str().to_string())))
                .collect()
        })
        .unwrap_or_default();
    let time = Timestamp::from_nanosecond(m.stored_nanos).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut event = TriggerEvent {
        subject: m.subject.to_string(),
        stream: m.stream.to_string(),
        seq: m.seq,
        time,
        headers,
        data: TriggerEvent::data_of(m.body),
        bucket: None,
        key: None,
        operation: None,
        revision: None,
    };
    if let Source::Kv { bucket, .. } = trigger.source() {
        let operation = match event.headers.get(KV_OPERATION).map(String::as_str) {
            Some("DEL") => KvOperation::Delete,
            Some("PURGE") => KvOperation::Purge,
            _ => KvOperation::Put,
        };
        if operation != KvOperation::Put {
            event.data = Value::Null;
        }
        event.key = names.parse_kv_subject(bucket, m.subject).map(str::to_string);
        event.bucket = Some(bucket.to_string());
        event.operation = Some(operation);
        event.revision = Some(m.seq);
    }
    event
}

/// Whether `event` starts a run of `trigger` (its filter, if any).
pub fn passes(trigger: &EventTrigger, event: &TriggerEvent) -> bool {
    trigger.filter.as_ref().is_none_or(|f| event.passes(f))
}

/// The run's payload for one event: the trigger's mapping of it, or the event itself.
pub fn payload(trigger: &EventTrigger, event: &TriggerEvent) -> Value {
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    match &trigger.payload {
        Some(mapping) => render_mapping(mapping, &value),
        None => value,
    }
}

/// The burst a debounced event belongs to.
pub fn debounce_key(trigger: &EventTrigger, event: &TriggerEvent) -> String {
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    render_event_template(trigger.debounce_key(), &value)
}

/// A submission: its `Nats-Msg-Id` and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// `Nats-Msg-Id`, from the events' position.
    pub msg_id: String,
    /// The run's payload as JSON.
    pub body: Vec<u8>,
}

/// The submission of `task` for one event.
pub fn single(task: &str, trigger: &EventTrigger, event: &TriggerEvent) -> Submission {
    let body = serde_json::to_vec(&payload(trigger, event)).unwrap_or_default();
    Submission { msg_id: run::trigger_msg_id(task, &event.stream, event.seq, None), body }
}

/// The submission of `task` for a batch (events in stream order, at least one).
pub fn batch(task: &str, trigger: &EventTrigger, events: &[TriggerEvent]) -> Option<Submission> {
    let (first, last) = (events.first()?, events.last()?);
    let payloads: Vec<Value> = events.iter().map(|e| payload(trigger, e)).collect();
    let body = serde_json::to_vec(&payloads).unwrap_or_default();
    Some(Submission { msg_id: run::trigger_msg_id(task, &first.stream, first.seq, Some(last.seq)), body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(v: Value) -> EventTrigger {
        serde_json::from_value(v).unwrap()
    }

    fn stored<'a>(
        stream: &'a str,
        subject: &'a str,
        seq: u64,
        headers: Option<&'a HeaderMap>,
        body: &'a [u8],
    ) -> Stored<'a> {
        Stored { stream, subject, seq, stored_nanos: 1_764_037_800_000_000_000, headers, body }
    }

    #[test]
    fn a_stream_event_carries_subject_sequence_headers_and_data() {
        let names = Names::default();
        let t = trigger(json!({"stream": "ORDERS", "subject": "orders.>"}));
        let mut h = HeaderMap::new();
        h.insert("Tenant", "acme");
        let e = event(&names, &t, &stored("ORDERS", "orders.created.eu", 42, Some(&h), br#"{"id": 7}"#));
        assert_eq!((e.subject.as_str(), e.stream.as_str(), e.seq), ("orders.created.eu", "ORDERS", 42));
        assert_eq!(e.headers.get("Tenant").map(String::as_str), Some("acme"));
        assert_eq!(e.data, json!({"id": 7}));
        assert_eq!(e.time.to_string(), "2025-11-25T02:30:00Z");
        let s = single("email", &t, &e);
        assert_eq!(s.msg_id, "email-ORDERS-42");
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["subject"], "orders.created.eu");
        assert_eq!(body["headers"]["Tenant"], "acme");
    }

    #[test]
    fn a_kv_event_carries_operation_key_and_revision() {
        let names = Names::default();
        let t = trigger(json!({"kv": "config", "key": "pricing.>"}));
        let put = event(&names, &t, &stored("KV_config", "$KV.config.pricing.eu", 17, None, b"12.5"));
        assert_eq!(
            (put.key.as_deref(), put.operation, put.revision),
            (Some("pricing.eu"), Some(KvOperation::Put), Some(17))
        );
        assert_eq!(put.data, json!(12.5));
        let mut h = HeaderMap::new();
        h.insert(KV_OPERATION, "DEL");
        let del = event(&names, &t, &stored("KV_config", "$KV.config.pricing.eu", 18, Some(&h), b""));
        assert_eq!((del.operation, del.data.clone()), (Some(KvOperation::Delete), Value::Null));
        assert_eq!(single("reprice", &t, &del).msg_id, "reprice-KV_config-18");
    }

    #[test]
    fn mapping_filter_batch_and_debounce_key() {
        let names = Names::default();
        let t = trigger(json!({"subject": "orders.>", "filter": {"subject": "orders.*.eu"},
                               "payload": {"order": "{{data.id}}", "region": "eu"}}));
        let eu = event(&names, &t, &stored("JETSCHED_TRIGGERS", "orders.created.eu", 5, None, br#"{"id": 1}"#));
        let us = event(&names, &t, &stored("JETSCHED_TRIGGERS", "orders.created.us", 6, None, br#"{"id": 2}"#));
        assert!(passes(&t, &eu) && !passes(&t, &us));
        assert_eq!(payload(&t, &eu), json!({"order": 1, "region": "eu"}));
        let b = batch("t", &t, &[eu.clone(), us.clone()]).unwrap();
        assert_eq!(b.msg_id, "t-JETSCHED_TRIGGERS-5-6");
        assert_eq!(
            serde_json::from_slice::<Value>(&b.body).unwrap(),
            json!([{"order": 1, "region": "eu"}, {"order": 2, "region": "eu"}])
        );
        assert!(batch("t", &t, &[]).is_none());
        let d = trigger(json!({"subject": "orders.>", "debounce": "1s", "debounce_key": "{{data.id}}"}));
        assert_eq!(debounce_key(&d, &eu), "1");
        assert_eq!(debounce_key(&trigger(json!({"subject": "a", "debounce": "1s"})), &eu), "orders.created.eu");
    }
}

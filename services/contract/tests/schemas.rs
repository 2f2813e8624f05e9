//! Keeps `schemas/*.json` (the documented, authoritative form of jetsched's payloads) and
//! the Rust payload types in agreement. This file covers the definitions users write (tasks,
//! schedules, time windows) and the checks over every schema file; `schemas_messages.rs`
//! covers the messages and records the services write; `support/` holds what both share.
//!
//! Each table holds sample documents; for every one the schema's verdict must equal the
//! verdict of the Rust parser the services use (`TaskDef::from_json`,
//! `ScheduleDef::from_json`, `WindowDef::from_json`, serde for the messages services write).
//! Where the two deliberately differ, separate lists pin the difference: documents the
//! schemas accept but the services' semantic checks reject (cycles, cron syntax, time zones,
//! templates, ...), and the few spellings the parsers tolerate but the schemas leave out;
//! `schemas/README.md` lists both. Finally, values the services build are serialized and
//! must validate, so nothing the services write falls outside the published contract, and
//! the schemas' `default`s must be the parsers' defaults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use jetsched_contract::schedule::{Dst, DstFold, DstGap, ScheduleDependency};
use jetsched_contract::task::{Concurrency, Requires, Step, Trigger};
use jetsched_contract::window::Outside;
use jetsched_contract::{
    Backfill, ByteAmount, Cores, Handler, HumanDuration, Misfire, MisfirePolicy, Overlap, RateLimit, RetryPolicy,
    Routing, ScheduleDef, TaskDef, TaskRef, WindowDef,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use support::{
    Parser, SCHEMA_FILES, assert_agreement, assert_only_parser_rejects, assert_only_schema_rejects, assert_round_trip,
    defaults, merged, parse_backfill, parse_schedule, parse_task, parse_window, schemas,
};

// ---- sample documents ----

const SPEC_TASK: &str = r#"{
  "handler": {"type": "nats", "subject": "fn.resize"},
  "queue": "default",
  "importance": 5,
  "expected_duration": "2s",
  "timeout": "30s",
  "retry": {"max_attempts": 5, "initial_backoff": "1s", "max_backoff": "5m", "multiplier": 2.0, "jitter": 0.2},
  "concurrency": {"key": "{{payload.customer}}", "limit": 1},
  "window": "business-hours",
  "requires": {"slots": 1, "labels": {"region": "eu"}}
}"#;

/// SPEC.md section 4, schedule, verbatim.
const SPEC_SCHEDULE: &str = r#"{
  "cron": "0 30 2 * * *",
  "timezone": "Europe/Berlin",
  "task": "resize-image",
  "payload": {"bucket": "photos"},
  "misfire": {"policy": "latest", "window": "1h"},
  "overlap": "allow",
  "jitter": "0s",
  "dst": {"gap": "shift", "fold": "first"},
  "paused": false
}"#;

const VALID_TASKS: &[&str] = &[
    SPEC_TASK,
    r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"stream": "ORDERS", "subject": "orders.created.>"}]}"#,
    r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"stream": "ORDERS"}, {"subject": "orders.*.eu"},
        {"kv": "config", "key": "pricing.>"}, {"kv": "flags"}]}"#,
    r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": ">", "filter": {"subject": "a.*",
        "headers": {"Tenant": "acme", "X-Trace": "*"}}, "batch": {"max": 1000, "within": "1h"},
        "payload": {"order": "{{data.id}}", "all": ["{{subject}}", 1, null]}}]}"#,
    r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"kv": "config", "debounce": "30s",
        "debounce_key": "{{key}}"}]}"#,
    r#"{"steps": {"a": {"task": "t"}}, "triggers": [{"stream": "S-1_x"}]}"#,
    r#"{"handler": {"type": "nats", "subject": "fn.resize"}}"#,
    r#"{"handler": {"type": "nats", "subject": "svc.v1.a*b"}}"#,
    r#"{"handler": {"type": "http", "url": "https://example.com/hook"}}"#,
    r#"{"handler": {"type": "http", "url": "http://x/y", "method": "get", "headers": {"Authorization": "Bearer t"}}}"#,
    r#"{"handler": {"type": "http", "url": "http://x/y", "method": "Delete"}}"#,
    r#"{"handler": {"type": "exec", "command": ["df", "-h", "."], "env": {"LANG": "C"}}}"#,
    r#"{"handler": {"type": "exec", "command": ["true", ""]}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "description": "does nothing"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "importance": 0, "queue": "Q_1-x"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "importance": 10}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "timeout": "1h30m", "expected_duration": "0",
        "schedule_to_start": "2d"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "timeout": "1.5s", "expected_duration": "500ms"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "timeout": "250us", "expected_duration": "10ns"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "retry": {}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "retry": {"max_attempts": 1, "multiplier": 1, "jitter": 0}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "retry": {"jitter": 1, "max_backoff": "1h"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {"slots": 4, "labels": {"gpu": "a100"}}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {"cpu": 2, "memory": "4GiB", "disk": "10GiB", "slots": 1}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {"cpu": 0.5, "memory": "1.5GB", "disk": "10 GiB"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {"cpu": 0, "memory": "0B", "disk": "512KiB"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "requires": {"memory": "7B", "disk": "1TB"}, "routing": "least_loaded"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": "least_loaded"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "concurrency": {"key": " x ", "limit": 4294967295}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "window": "business-hours"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "queue": "a_", "concurrency": {"key": "{{payload}}", "limit": 1}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": "any"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": "round_robin"}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": "broadcast", "requires": {"labels": {"os": "linux"}}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": {"consistent_hash": "{{payload.user}}"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "routing": {"consistent_hash": "static"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "rate_limit": {"limit": 1, "per": "1s"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"},
        "rate_limit": {"key": "c-{{ payload.order.id }}-{{payload.lines.0}}", "limit": 4294967295, "per": "1d"}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "rate_limit": {"key": "", "limit": 5, "per": "500ms"}}"#,
    r#"{"steps": {"only": {"task": "t"}}}"#,
    r#"{"steps": {
        "a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]},
        "c": {"task": "t", "depends_on": ["a"], "trigger": "one_failed"},
        "d": {"task": "t", "depends_on": ["b", "c"], "trigger": "all_done"},
        "e": {"task": "t", "depends_on": ["d"], "trigger": "none_failed"},
        "f": {"task": "t", "depends_on": ["d"], "trigger": "one_success"},
        "g": {"task": "t", "depends_on": [], "trigger": "all_success"}},
      "importance": 7, "description": "a workflow"}"#,
    r#"{"steps": {"a": {"task": "t"}}, "routing": "round_robin", "rate_limit": {"limit": 2, "per": "1h"}}"#,
];

const INVALID_TASKS: &[(&str, &str)] = &[
    ("a trigger without a source", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{}]}"#),
    (
        "a trigger with stream and kv",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"stream": "S", "kv": "b"}]}"#,
    ),
    (
        "a trigger with subject and kv",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "kv": "b"}]}"#,
    ),
    ("a key without kv", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"stream": "S", "key": "a"}]}"#),
    ("a stream name with a dot", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"stream": "A.B"}]}"#),
    ("a '>' before the end", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a.>.b"}]}"#),
    (
        "a wildcard inside a token",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a.b*"}]}"#,
    ),
    ("an empty token", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a..b"}]}"#),
    ("a server subject", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "$KV.config.>"}]}"#),
    ("a bucket name with a dot", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"kv": "a.b"}]}"#),
    ("a key with a space", r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"kv": "a", "key": "x y"}]}"#),
    (
        "batch and debounce",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a",
        "batch": {"max": 2, "within": "1s"}, "debounce": "1s"}]}"#,
    ),
    (
        "a batch of 1001",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "batch": {"max": 1001, "within": "1s"}}]}"#,
    ),
    (
        "a batch without within",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "batch": {"max": 5}}]}"#,
    ),
    (
        "a debounce_key without debounce",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "debounce_key": "{{key}}"}]}"#,
    ),
    (
        "a numeric debounce",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "debounce": 30}]}"#,
    ),
    (
        "a header name with a colon",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "filter": {"headers": {"a:b": "x"}}}]}"#,
    ),
    (
        "an unknown trigger field",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "queue": "q"}]}"#,
    ),
    (
        "17 triggers",
        r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a1"}, {"subject": "a2"},
        {"subject": "a3"}, {"subject": "a4"}, {"subject": "a5"}, {"subject": "a6"}, {"subject": "a7"}, {"subject": "a8"},
        {"subject": "a9"}, {"subject": "a10"}, {"subject": "a11"}, {"subject": "a12"}, {"subject": "a13"},
        {"subject": "a14"}, {"subject": "a15"}, {"subject": "a16"}, {"subject": "a17"}]}"#,
    ),
    ("an unknown field", r#"{"handler": {"type": "nats", "subject": "a"}, "colour": 1}"#),
    ("an unknown handler field", r#"{"handler": {"type": "nats", "subject": "a", "extra": 1}}"#),
    ("an unknown handler type", r#"{"handler": {"type": "ftp", "url": "ftp://x"}}"#),
    ("a handler without type", r#"{"handler": {"subject": "a"}}"#),
    ("a handler that is a string", r#"{"handler": "fn.resize"}"#),
    ("a field of another handler type", r#"{"handler": {"type": "nats", "subject": "a", "url": "http://x"}}"#),
    ("a nats handler without subject", r#"{"handler": {"type": "nats"}}"#),
    ("a wildcard subject", r#"{"handler": {"type": "nats", "subject": "fn.*"}}"#),
    ("a full wildcard subject", r#"{"handler": {"type": "nats", "subject": ">"}}"#),
    ("an empty subject token", r#"{"handler": {"type": "nats", "subject": "fn..resize"}}"#),
    ("a trailing dot in the subject", r#"{"handler": {"type": "nats", "subject": "fn."}}"#),
    ("whitespace in the subject", r#"{"handler": {"type": "nats", "subject": "fn resize"}}"#),
    ("an empty subject", r#"{"handler": {"type": "nats", "subject": ""}}"#),
    ("a non-http url", r#"{"handler": {"type": "http", "url": "ftp://x"}}"#),
    ("an http handler without url", r#"{"handler": {"type": "http"}}"#),
    ("an unsupported http method", r#"{"handler": {"type": "http", "url": "http://x", "method": "TRACE"}}"#),
    ("a non-string header value", r#"{"handler": {"type": "http", "url": "http://x", "headers": {"a": 1}}}"#),
    ("an empty command", r#"{"handler": {"type": "exec", "command": []}}"#),
    ("an empty program name", r#"{"handler": {"type": "exec", "command": [""]}}"#),
    ("a command that is a string", r#"{"handler": {"type": "exec", "command": "df -h"}}"#),
    ("an empty builtin name", r#"{"handler": {"type": "builtin", "name": ""}}"#),
    ("a dot in the queue name", r#"{"handler": {"type": "builtin", "name": "n"}, "queue": "a.b"}"#),
    ("an empty queue name", r#"{"handler": {"type": "builtin", "name": "n"}, "queue": ""}"#),
    ("a reserved queue name", r#"{"handler": {"type": "builtin", "name": "n"}, "queue": "_w-worker-1"}"#),
    ("the reserved queue name _", r#"{"handler": {"type": "builtin", "name": "n"}, "queue": "_"}"#),
    (
        "a 65-character queue name",
        r#"{"handler": {"type": "builtin", "name": "n"}, "queue": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    ),
    ("a non-ASCII queue name", r#"{"handler": {"type": "builtin", "name": "n"}, "queue": "é"}"#),
    ("importance 11", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": 11}"#),
    ("importance -1", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": -1}"#),
    ("importance 256", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": 256}"#),
    ("importance as a string", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": "5"}"#),
    ("a bare-number timeout", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": 30}"#),
    ("a bare-number duration string", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "30"}"#),
    ("an unknown duration unit", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "5x"}"#),
    ("a duration part without unit", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "1h30"}"#),
    ("a negative duration", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "-5s"}"#),
    ("an empty duration", r#"{"handler": {"type": "builtin", "name": "n"}, "expected_duration": ""}"#),
    ("a unit before the number", r#"{"handler": {"type": "builtin", "name": "n"}, "schedule_to_start": "s5"}"#),
    ("retry.max_attempts 0", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"max_attempts": 0}}"#),
    ("retry.multiplier below 1", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"multiplier": 0.5}}"#),
    ("retry.jitter above 1", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"jitter": 1.5}}"#),
    ("negative retry.jitter", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"jitter": -0.1}}"#),
    ("an unknown retry field", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"backoff": "1s"}}"#),
    ("a bare-number backoff", r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"initial_backoff": 1}}"#),
    (
        "concurrency.limit 0",
        r#"{"handler": {"type": "builtin", "name": "n"}, "concurrency": {"key": "k", "limit": 0}}"#,
    ),
    (
        "a blank concurrency key",
        r#"{"handler": {"type": "builtin", "name": "n"}, "concurrency": {"key": "  ", "limit": 1}}"#,
    ),
    ("concurrency without limit", r#"{"handler": {"type": "builtin", "name": "n"}, "concurrency": {"key": "k"}}"#),
    ("concurrency without key", r#"{"handler": {"type": "builtin", "name": "n"}, "concurrency": {"limit": 1}}"#),
    ("an invalid window name", r#"{"handler": {"type": "builtin", "name": "n"}, "window": "office hours"}"#),
    ("requires.slots 0", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"slots": 0}}"#),
    ("a non-string label", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"labels": {"gpu": true}}}"#),
    ("an unknown requires field", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"cpus": 2}}"#),
    ("a negative cpu", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"cpu": -1}}"#),
    ("a string cpu", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"cpu": "2"}}"#),
    ("more cores than any machine", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"cpu": 1000001}}"#),
    ("a bare-number memory", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"memory": 4096}}"#),
    ("a memory without a unit", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"memory": "4096"}}"#),
    ("a short unit", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"memory": "4G"}}"#),
    ("a unit in lower case", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"disk": "10gib"}}"#),
    ("two spaces before the unit", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"disk": "10  GiB"}}"#),
    ("a negative disk", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"disk": "-1GiB"}}"#),
    ("least loaded spelled otherwise", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": "least-loaded"}"#),
    ("a non-string description", r#"{"handler": {"type": "builtin", "name": "n"}, "description": 5}"#),
    ("an unknown routing", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": "random"}"#),
    ("routing in capitals", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": "ANY"}"#),
    (
        "consistent_hash without a template",
        r#"{"handler": {"type": "builtin", "name": "n"}, "routing": "consistent_hash"}"#,
    ),
    (
        "a consistent_hash template that is not a string",
        r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"consistent_hash": 5}}"#,
    ),
    (
        "two routing strategies",
        r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"consistent_hash": "k", "round_robin": null}}"#,
    ),
    ("an unknown routing object", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"sticky": "k"}}"#),
    ("an empty routing object", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {}}"#),
    ("routing as an array", r#"{"handler": {"type": "builtin", "name": "n"}, "routing": ["any"]}"#),
    ("rate_limit.limit 0", r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 0, "per": "1s"}}"#),
    (
        "a negative rate_limit.limit",
        r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": -1, "per": "1s"}}"#,
    ),
    ("rate_limit without per", r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 1}}"#),
    ("rate_limit without limit", r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"per": "1s"}}"#),
    ("a bare-number per", r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 1, "per": 60}}"#),
    (
        "a non-string rate_limit.key",
        r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"key": 1, "limit": 1, "per": "1s"}}"#,
    ),
    (
        "an unknown rate_limit field",
        r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 1, "per": "1s", "burst": 2}}"#,
    ),
    ("a rate_limit that is a number", r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": 10}"#),
    ("both handler and steps", r#"{"handler": {"type": "builtin", "name": "n"}, "steps": {"a": {"task": "t"}}}"#),
    ("neither handler nor steps", r#"{}"#),
    ("neither handler nor steps, only settings", r#"{"queue": "default", "timeout": "5s"}"#),
    ("empty steps", r#"{"steps": {}}"#),
    ("an invalid step name", r#"{"steps": {"a.b": {"task": "t"}}}"#),
    ("an invalid step task name", r#"{"steps": {"a": {"task": "t.u"}}}"#),
    ("a step without task", r#"{"steps": {"a": {"depends_on": []}}}"#),
    ("an unknown step field", r#"{"steps": {"a": {"task": "t", "after": ["b"]}}}"#),
    ("an unknown trigger", r#"{"steps": {"a": {"task": "t", "trigger": "sometimes"}}}"#),
    ("depends_on as a string", r#"{"steps": {"a": {"task": "t"}, "b": {"task": "t", "depends_on": "a"}}}"#),
    ("an array instead of an object", r#"[{"handler": {"type": "builtin", "name": "n"}}]"#),
    ("a string instead of an object", r#""resize-image""#),
    ("null instead of an object", r#"null"#),
];

const VALID_SCHEDULES: &[&str] = &[
    SPEC_SCHEDULE,
    r#"{"every": "15s", "task": "resize-image"}"#,
    r#"{"every": "1ms", "phase": "5s", "task": "t", "start_at": "2026-01-01T00:00:00Z"}"#,
    r#"{"at": "2026-11-25T02:30:00Z", "task": "t"}"#,
    r#"{"at": "2026-11-25T03:30:00.5+01:00", "task": "t", "payload": [1, 2, 3]}"#,
    r#"{"cron": "*/5 * * * *", "task": "t", "payload": 42}"#,
    r#"{"cron": "@hourly", "task": "t", "timezone": "UTC", "payload": null}"#,
    r#"{"cron": "0 0 * * MON-FRI", "timezone": "America/New_York", "task": "t",
        "start_at": "2026-01-01T00:00:00Z", "end_at": "2027-01-01T00:00:00Z", "max_runs": 10}"#,
    r#"{"every": "1m", "task": "t", "misfire": {"policy": "all", "window": "1d", "max": 0}}"#,
    r#"{"every": "1m", "task": "t", "misfire": {"policy": "skip"}, "overlap": "skip"}"#,
    r#"{"every": "1m", "task": "t", "misfire": {}, "overlap": "buffer_one", "dst": {}}"#,
    r#"{"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": "t", "overlap": "cancel_previous",
        "dst": {"gap": "skip", "fold": "both"}}"#,
    r#"{"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": "t", "dst": {"fold": "last"}}"#,
    r#"{"every": "10s", "task": "t", "jitter": "2s", "paused": true, "description": "for humans"}"#,
    r#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": "fn.x"}}}"#,
    r#"{"every": "1s", "task": {"steps": {"a": {"task": "t"}, "b": {"task": "u", "depends_on": ["a"]}}}}"#,
    r#"{"cron": "0 4 * * *", "task": "t", "depends_on": {"schedule": "nightly"}}"#,
    r#"{"cron": "0 4 * * *", "timezone": "Europe/Berlin", "task": "t", "depends_on": {"schedule": "n_1-x", "wait": "2h30m"}}"#,
    r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"}, "routing": {"consistent_hash": "{{payload.k}}"},
        "rate_limit": {"key": "{{payload.k}}", "limit": 3, "per": "1m"}}}"#,
];

const INVALID_SCHEDULES: &[(&str, &str)] = &[
    ("an unknown field", r#"{"every": "1s", "task": "t", "color": "red"}"#),
    ("no task", r#"{"every": "1s"}"#),
    ("none of cron, every and at", r#"{"task": "t"}"#),
    ("both cron and every", r#"{"cron": "* * * * *", "every": "1s", "task": "t"}"#),
    ("both every and at", r#"{"every": "1s", "at": "2026-11-25T02:30:00Z", "task": "t"}"#),
    ("both cron and at", r#"{"cron": "* * * * *", "at": "2026-11-25T02:30:00Z", "task": "t"}"#),
    ("all of cron, every and at", r#"{"cron": "* * * * *", "every": "1s", "at": "2026-11-25T02:30:00Z", "task": "t"}"#),
    ("a bare-number interval", r#"{"every": 15, "task": "t"}"#),
    ("a bare-number interval string", r#"{"every": "15", "task": "t"}"#),
    ("a non-RFC-3339 at", r#"{"at": "tomorrow", "task": "t"}"#),
    ("an at without offset", r#"{"at": "2026-11-25T02:30:00", "task": "t"}"#),
    ("a non-RFC-3339 start_at", r#"{"every": "1s", "task": "t", "start_at": "2026-11-25"}"#),
    ("a cron that is not a string", r#"{"cron": 5, "task": "t"}"#),
    ("an invalid task name", r#"{"every": "1s", "task": "bad name"}"#),
    ("a task name with a dot", r#"{"every": "1s", "task": "a.b"}"#),
    ("an empty task name", r#"{"every": "1s", "task": ""}"#),
    ("a numeric task", r#"{"every": "1s", "task": 42}"#),
    ("a null task", r#"{"every": "1s", "task": null}"#),
    (
        "an inline task with an unknown field",
        r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"}, "x": 1}}"#,
    ),
    ("an inline task without handler", r#"{"every": "1s", "task": {}}"#),
    (
        "an inline task with an invalid subject",
        r#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": ""}}}"#,
    ),
    (
        "an inline task with importance 11",
        r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"}, "importance": 11}}"#,
    ),
    ("phase with cron", r#"{"cron": "* * * * *", "phase": "1s", "task": "t"}"#),
    ("phase with at", r#"{"at": "2026-11-25T02:30:00Z", "phase": "1s", "task": "t"}"#),
    ("an unknown misfire policy", r#"{"every": "1s", "task": "t", "misfire": {"policy": "sometimes"}}"#),
    ("an unknown misfire field", r#"{"every": "1s", "task": "t", "misfire": {"limit": 3}}"#),
    ("a negative misfire max", r#"{"every": "1s", "task": "t", "misfire": {"max": -1}}"#),
    ("an unknown overlap", r#"{"every": "1s", "task": "t", "overlap": "never"}"#),
    ("an unknown dst gap", r#"{"cron": "* * * * *", "task": "t", "dst": {"gap": "jump"}}"#),
    ("an unknown dst field", r#"{"cron": "* * * * *", "task": "t", "dst": {"spring": "skip"}}"#),
    ("a string paused", r#"{"every": "1s", "task": "t", "paused": "yes"}"#),
    ("max_runs 0", r#"{"every": "1s", "task": "t", "max_runs": 0}"#),
    ("negative max_runs", r#"{"every": "1s", "task": "t", "max_runs": -1}"#),
    ("a bare-number jitter", r#"{"every": "1s", "task": "t", "jitter": 5}"#),
    ("a numeric timezone", r#"{"cron": "* * * * *", "task": "t", "timezone": 1}"#),
    ("depends_on as a string", r#"{"every": "1s", "task": "t", "depends_on": "nightly"}"#),
    ("depends_on without schedule", r#"{"every": "1s", "task": "t", "depends_on": {"wait": "1h"}}"#),
    ("an invalid depends_on schedule id", r#"{"every": "1s", "task": "t", "depends_on": {"schedule": "a.b"}}"#),
    (
        "an unknown depends_on field",
        r#"{"every": "1s", "task": "t", "depends_on": {"schedule": "n", "date": "today"}}"#,
    ),
    ("a bare-number depends_on wait", r#"{"every": "1s", "task": "t", "depends_on": {"schedule": "n", "wait": 3600}}"#),
    (
        "an inline task with a reserved queue",
        r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"}, "queue": "_l-1c9e04b2"}}"#,
    ),
    ("an array instead of an object", r#"[]"#),
];

const VALID_WINDOWS: &[&str] = &[
    r#"{"weekly": {"mon": ["09:00-17:00"]}}"#,
    r#"{"timezone": "Europe/Berlin", "weekly": {"mon": ["09:00-12:00", "13:00-17:30"], "tue": ["09:00-17:30"]},
        "blackout_dates": ["2026-12-24"], "outside": "defer", "description": "office hours"}"#,
    r#"{"timezone": "UTC", "weekly": {"thu": ["22:00-02:00"], "sun": ["00:00-24:00"]}, "outside": "skip"}"#,
    r#"{"weekly": {"wed": ["10:00:05-10:00:10", "23:59:59-24:00:00"], "sat": []}, "blackout_dates": []}"#,
    r#"{"weekly": {"mon": ["00:00-00:01"], "tue": ["18:00-24:00"], "wed": ["23:00-00:00"], "thu": ["01:02-03:04"],
        "fri": ["12:00-11:59"], "sat": ["00:00:00-23:59:59"], "sun": ["00:00-24:00:00"]},
        "blackout_dates": ["2028-02-29", "2026-01-01"]}"#,
];

const INVALID_WINDOWS: &[(&str, &str)] = &[
    ("24:00 as a start", r#"{"weekly": {"mon": ["24:00-02:00"]}}"#),
    ("an unknown field", r#"{"weekly": {"mon": ["09:00-10:00"]}, "colour": 1}"#),
    ("no weekly", r#"{"timezone": "Europe/Berlin"}"#),
    ("nothing at all", r#"{}"#),
    ("an empty weekly", r#"{"weekly": {}}"#),
    ("an unknown day", r#"{"weekly": {"someday": ["09:00-10:00"]}}"#),
    ("a day spelled out", r#"{"weekly": {"monday": ["09:00-10:00"]}}"#),
    ("ranges that are a string", r#"{"weekly": {"mon": "09:00-10:00"}}"#),
    ("a range that is not a string", r#"{"weekly": {"mon": [900]}}"#),
    ("a range of hours only", r#"{"weekly": {"mon": ["9-10"]}}"#),
    ("a range without colons", r#"{"weekly": {"mon": ["0900-1000"]}}"#),
    ("a range with words", r#"{"weekly": {"mon": ["09:00 to 10:00"]}}"#),
    ("a range without end", r#"{"weekly": {"mon": ["09:00"]}}"#),
    ("an hour past 24", r#"{"weekly": {"mon": ["09:00-25:00"]}}"#),
    ("24 hours and some minutes", r#"{"weekly": {"mon": ["22:00-24:30"]}}"#),
    ("minute 60", r#"{"weekly": {"mon": ["09:60-10:00"]}}"#),
    ("second 60", r#"{"weekly": {"mon": ["09:00-10:00:60"]}}"#),
    ("a fraction of a second", r#"{"weekly": {"mon": ["09:00-10:00:00.5"]}}"#),
    ("an unknown outside", r#"{"weekly": {"mon": ["09:00-10:00"]}, "outside": "never"}"#),
    ("outside in capitals", r#"{"weekly": {"mon": ["09:00-10:00"]}, "outside": "Defer"}"#),
    ("a malformed blackout date", r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": ["24.12.2026"]}"#),
    (
        "a blackout date that does not exist",
        r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": ["2026-02-30"]}"#,
    ),
    ("a blackout date with a zone", r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": ["2026-12-24Z"]}"#),
    ("blackout dates that are a string", r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": "2026-12-24"}"#),
    ("a numeric timezone", r#"{"weekly": {"mon": ["09:00-10:00"]}, "timezone": 1}"#),
    ("a non-string description", r#"{"weekly": {"mon": ["09:00-10:00"]}, "description": ["x"]}"#),
    ("an array instead of an object", r#"[{"weekly": {"mon": ["09:00-10:00"]}}]"#),
];

// ---- tests ----

#[test]
fn spec_examples_are_valid_for_schema_and_parser() {
    assert_agreement("task.json", parse_task, &[SPEC_TASK], &[]);
    assert_agreement("schedule.json", parse_schedule, &[SPEC_SCHEDULE], &[]);
}

#[test]
fn schema_and_parser_agree_on_task_definitions() {
    assert_agreement("task.json", parse_task, VALID_TASKS, INVALID_TASKS);
}

#[test]
fn schema_and_parser_agree_on_schedules() {
    assert_agreement("schedule.json", parse_schedule, VALID_SCHEDULES, INVALID_SCHEDULES);
}

#[test]
fn schema_and_parser_agree_on_windows() {
    assert_agreement("window.json", parse_window, VALID_WINDOWS, INVALID_WINDOWS);
}

const VALID_BACKFILLS: &[&str] = &[
    r#"{"schedule": "nightly", "from": "2026-03-01T00:00:00Z", "to": "2026-03-31T23:59:59Z"}"#,
    r#"{"schedule": "nightly", "from": "2026-03-01T00:00:00+01:00", "to": "2026-03-01T00:00:00+01:00", "max_in_flight": 1}"#,
    r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "status": "cancelled",
        "progress": {"total": 2, "fired": 1, "already_ran": 0, "skipped": 0, "by": "t-1", "updated_at": "2026-11-25T09:00:00Z"}}"#,
    r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "status": "failed", "error": "no schedule named n"}"#,
];

const INVALID_BACKFILLS: &[(&str, &str)] = &[
    ("no schedule", r#"{"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}"#),
    ("no to", r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z"}"#),
    ("a date, not an instant", r#"{"schedule": "n", "from": "2026-03-01", "to": "2026-03-02T00:00:00Z"}"#),
    (
        "a schedule id with a dot",
        r#"{"schedule": "n.x", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}"#,
    ),
    (
        "max_in_flight 0",
        r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "max_in_flight": 0}"#,
    ),
    (
        "an unknown status",
        r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "status": "paused"}"#,
    ),
    (
        "an unknown field",
        r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "task": "t"}"#,
    ),
    (
        "progress without its writer",
        r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z",
            "progress": {"total": 2, "fired": 1, "already_ran": 0, "skipped": 0, "updated_at": "2026-11-25T09:00:00Z"}}"#,
    ),
];

#[test]
fn schema_and_parser_agree_on_backfills() {
    assert_agreement("backfill.json", parse_backfill, VALID_BACKFILLS, INVALID_BACKFILLS);
    assert_only_parser_rejects(
        "backfill.json",
        parse_backfill,
        &[("is after to", r#"{"schedule": "n", "from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}"#)],
    );
    let base = json!({"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"});
    let read = |doc: &str| Backfill::from_json(doc.as_bytes()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    let doc = merged(&base, "", defaults("backfill.json", ""));
    assert_eq!(read(&doc), read(&base.to_string()), "defaults of backfill.json");
}

#[test]
fn what_the_schemas_cannot_express_is_rejected_by_the_parser() {
    assert_only_parser_rejects(
        "task.json",
        parse_task,
        &[
            (
                "cycle through a, b, c",
                r#"{"steps": {"a": {"task": "t", "depends_on": ["c"]}, "b": {"task": "t", "depends_on": ["a"]},
                    "c": {"task": "t", "depends_on": ["b"]}}}"#,
            ),
            ("cycle through a", r#"{"steps": {"a": {"task": "t", "depends_on": ["a"]}}}"#),
            ("unknown step \"zz\"", r#"{"steps": {"a": {"task": "t", "depends_on": ["zz"]}}}"#),
            ("timeout must be greater than 0", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "0s"}"#),
            // Amounts: at least a thousandth of a core, and bytes that fit.
            (
                "less than a thousandth of a core",
                r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"cpu": 0.0001}}"#,
            ),
            ("too large", r#"{"handler": {"type": "builtin", "name": "n"}, "requires": {"memory": "99999999TiB"}}"#),
            // JSON Schema counts 5.0 as an integer; serde does not.
            ("expected u8", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": 5.0}"#),
            ("too large", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "99999999999999999999999d"}"#),
            (
                "initial_backoff must not exceed",
                r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"initial_backoff": "10m", "max_backoff": "5m"}}"#,
            ),
            // Templates: only {{payload...}} placeholders, each closed.
            (
                "concurrency.key",
                r#"{"handler": {"type": "builtin", "name": "n"}, "concurrency": {"key": "{{task}}", "limit": 1}}"#,
            ),
            (
                "unclosed",
                r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"key": "{{payload.x", "limit": 1, "per": "1s"}}"#,
            ),
            (
                "routing.consistent_hash",
                r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"consistent_hash": "{{ run_id }}"}}"#,
            ),
            (
                "placeholders are",
                r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"consistent_hash": "{{payloads.x}}"}}"#,
            ),
            // Triggers: templates over the event, hold times, one trigger per source.
            (
                "event field",
                r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "payload": {"x": "{{payload.x}}"}}]}"#,
            ),
            (
                "debounce_key",
                r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "debounce": "1s", "debounce_key": "{{run_id}}"}]}"#,
            ),
            (
                "batch.within must be greater than 0",
                r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "batch": {"max": 2, "within": "2h"}}]}"#,
            ),
            (
                "debounce must be greater than 0",
                r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a", "debounce": "0s"}]}"#,
            ),
            (
                "another trigger of this task reads subject a",
                r#"{"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a"}, {"subject": "a", "debounce": "1s"}]}"#,
            ),
            // rate_limit.per: more than 0, at most 1d.
            (
                "rate_limit needs",
                r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 1, "per": "0s"}}"#,
            ),
            (
                "rate_limit needs",
                r#"{"handler": {"type": "builtin", "name": "n"}, "rate_limit": {"limit": 1, "per": "1d1ns"}}"#,
            ),
        ],
    );
    assert_only_parser_rejects(
        "schedule.json",
        parse_schedule,
        &[
            ("minute", r#"{"cron": "61 * * * *", "task": "t"}"#),
            ("cron", r#"{"cron": "every day", "task": "t"}"#),
            ("unknown time zone", r#"{"cron": "* * * * *", "timezone": "Mars/Olympus", "task": "t"}"#),
            ("every must be at least 1ms", r#"{"every": "0s", "task": "t"}"#),
            (
                "start_at is after end_at",
                r#"{"every": "1s", "task": "t", "start_at": "2027-01-01T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"}"#,
            ),
            ("cycle", r#"{"every": "1s", "task": {"steps": {"a": {"task": "t", "depends_on": ["a"]}}}}"#),
            (
                "triggers belong to task definitions",
                r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"}, "triggers": [{"subject": "a"}]}}"#,
            ),
            (
                "rate_limit.key",
                r#"{"every": "1s", "task": {"handler": {"type": "builtin", "name": "n"},
                    "rate_limit": {"key": "{{ schedule }}", "limit": 1, "per": "1s"}}}"#,
            ),
        ],
    );
    assert_only_parser_rejects(
        "window.json",
        parse_window,
        &[
            ("is empty", r#"{"weekly": {"mon": ["09:00-09:00"]}}"#),
            ("is empty", r#"{"weekly": {"mon": ["09:00:00-09:00"]}}"#),
            ("never open", r#"{"weekly": {"mon": []}}"#),
            ("never open", r#"{"weekly": {"mon": [], "tue": []}, "outside": "skip"}"#),
            ("unknown time zone", r#"{"weekly": {"mon": ["09:00-10:00"]}, "timezone": "Nowhere/Land"}"#),
        ],
    );
}

#[test]
fn parser_also_accepts_spellings_the_schema_leaves_out() {
    // The schemas document one spelling; the parsers are lenient about these (README.md,
    // "deliberately stricter"). Documents valid under the schemas are unaffected.
    assert_only_schema_rejects(
        "task.json",
        parse_task,
        &[
            ("whitespace around a duration", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": " 30s "}"#),
            ("a duration without integer part", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": ".5s"}"#),
            ("null for an optional field", r#"{"handler": {"type": "builtin", "name": "n"}, "window": null}"#),
            ("a null handler beside steps", r#"{"handler": null, "steps": {"a": {"task": "t"}}}"#),
            (
                "a routing object without value",
                r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"any": null}}"#,
            ),
            (
                "a routing object without value",
                r#"{"handler": {"type": "builtin", "name": "n"}, "routing": {"broadcast": null}}"#,
            ),
        ],
    );
    assert_only_schema_rejects(
        "schedule.json",
        parse_schedule,
        &[
            ("a null every beside cron", r#"{"cron": "* * * * *", "every": null, "task": "t"}"#),
            ("a space instead of T", r#"{"at": "2026-11-25 02:30:00Z", "task": "t"}"#),
            ("a time without seconds", r#"{"at": "2026-11-25T02:30Z", "task": "t"}"#),
            ("an RFC 9557 zone suffix", r#"{"at": "2026-11-25T02:30:00+01:00[Europe/Berlin]", "task": "t"}"#),
            ("a null depends_on", r#"{"every": "1s", "task": "t", "depends_on": null}"#),
        ],
    );
    assert_only_schema_rejects(
        "window.json",
        parse_window,
        &[
            ("a day in capitals", r#"{"weekly": {"Mon": ["09:00-10:00"], "TUE": ["09:00-10:00"]}}"#),
            ("a one-digit hour", r#"{"weekly": {"mon": ["9:00-17:00"]}}"#),
            ("whitespace in a range", r#"{"weekly": {"mon": [" 09:00 - 17:00 "]}}"#),
            ("a basic-format date", r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": ["20261224"]}"#),
            ("a date with a time", r#"{"weekly": {"mon": ["09:00-10:00"]}, "blackout_dates": ["2026-12-24T10:00"]}"#),
            ("a null timezone", r#"{"weekly": {"mon": ["09:00-10:00"]}, "timezone": null}"#),
        ],
    );
}

#[test]
fn schema_examples_are_valid_for_schema_and_parser() {
    let schemas = schemas();
    for (file, parse) in SCHEMA_FILES {
        let examples = schemas.raw(file)["examples"].as_array().unwrap_or_else(|| panic!("{file} has examples"));
        let docs: Vec<String> = examples.iter().map(Value::to_string).collect();
        let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
        assert_agreement(file, parse, &docs, &[]);
    }
}

#[test]
fn shipped_examples_are_valid_for_schema_and_parser() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for (dir, file, parse) in [
        ("tasks", "task.json", parse_task as Parser),
        ("schedules", "schedule.json", parse_schedule),
        ("windows", "window.json", parse_window),
    ] {
        let Ok(entries) = std::fs::read_dir(examples.join(dir)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let doc = std::fs::read_to_string(&path).unwrap();
                assert_agreement(file, parse, &[doc.as_str()], &[]);
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no examples found under {}", examples.display());
}

#[test]
fn definitions_the_services_build_validate_and_read_back() {
    let t = |s: &str| -> Timestamp { s.parse().unwrap() };

    // Task definitions: every handler type, a workflow, every routing, every optional field.
    let full = TaskDef {
        expected_duration: Some(HumanDuration::from_millis(1500)),
        schedule_to_start: Some(HumanDuration::from_secs(90)),
        concurrency: Some(Concurrency { key: "{{payload.customer}}".to_string(), limit: 2 }),
        window: Some("business-hours".to_string()),
        requires: Some(Requires {
            slots: 2,
            labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            cpu: Cores(1500),
            memory: ByteAmount(3 << 30),
            disk: ByteAmount(10_000_000_001),
        }),
        routing: Routing::ConsistentHash("{{payload.customer}}".to_string()),
        rate_limit: Some(RateLimit {
            key: Some("{{payload.customer}}".to_string()),
            limit: 10,
            per: HumanDuration::from_secs(60),
        }),
        description: Some("all fields".to_string()),
        secrets: vec!["X-Key".to_string()],
        retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        ..TaskDef::with_handler(Handler::Http {
            url: "https://example.com/hook".to_string(),
            method: "PATCH".to_string(),
            headers: BTreeMap::from([("X-Key".to_string(), "v".to_string())]),
        })
    };
    let workflow = TaskDef {
        handler: None,
        steps: Some(BTreeMap::from([
            ("a".to_string(), Step { task: "t".to_string(), depends_on: vec![], trigger: Trigger::AllSuccess }),
            (
                "b".to_string(),
                Step { task: "u".to_string(), depends_on: vec!["a".to_string()], trigger: Trigger::OneFailed },
            ),
        ])),
        ..TaskDef::with_handler(Handler::Builtin { name: "unused".to_string() })
    };
    let noop = TaskDef::with_handler(Handler::Builtin { name: "noop".to_string() });
    let defs = [
        TaskDef::from_json(SPEC_TASK.as_bytes()).unwrap(),
        TaskDef::with_handler(Handler::Nats { subject: "fn.resize".to_string() }),
        TaskDef::with_handler(Handler::Exec {
            command: vec!["df".to_string(), "-h".to_string()],
            env: BTreeMap::from([("LANG".to_string(), "C".to_string())]),
        }),
        noop.clone(),
        full,
        workflow,
        TaskDef { routing: Routing::RoundRobin, ..noop.clone() },
        TaskDef { routing: Routing::LeastLoaded, ..noop.clone() },
        TaskDef {
            routing: Routing::Broadcast,
            rate_limit: Some(RateLimit { key: None, limit: 1, per: HumanDuration::from_secs(86_400) }),
            ..noop.clone()
        },
    ];
    for def in &defs {
        def.validate().unwrap();
        assert_round_trip("task.json", def);
    }

    // Schedules: the SPEC's, one with every optional field and an inline task, a one-shot.
    let spec = ScheduleDef::from_json("nightly", SPEC_SCHEDULE.as_bytes()).unwrap();
    let full = ScheduleDef {
        cron: None,
        every: Some(HumanDuration::from_secs(30)),
        phase: Some(HumanDuration::from_secs(5)),
        at: None,
        timezone: Some("Europe/Berlin".to_string()),
        task: TaskRef::Inline(Box::new(defs[4].clone())),
        payload: Some(json!({"k": [1, 2]})),
        misfire: Misfire { policy: MisfirePolicy::All, window: HumanDuration::from_secs(86_400), max: 5 },
        overlap: Overlap::BufferOne,
        jitter: HumanDuration::from_millis(250),
        dst: Dst { gap: DstGap::Skip, fold: DstFold::Both },
        paused: true,
        start_at: Some(t("2026-01-01T00:00:00Z")),
        end_at: Some(t("2027-01-01T00:00:00Z")),
        max_runs: Some(100),
        depends_on: Some(ScheduleDependency { schedule: "nightly".to_string(), wait: HumanDuration::from_secs(7200) }),
        description: Some("every field".to_string()),
    };
    let one_shot =
        ScheduleDef { cron: None, every: None, phase: None, at: Some(t("2026-11-25T02:30:00.25Z")), ..spec.clone() };
    for def in [spec, full, one_shot] {
        def.calendar().unwrap();
        assert_round_trip("schedule.json", &def);
    }

    // Windows: the smallest, and one with every field.
    let full = WindowDef {
        timezone: Some("Europe/Berlin".to_string()),
        weekly: BTreeMap::from([
            ("mon".to_string(), vec!["09:00-12:00".to_string(), "13:00-17:30".to_string()]),
            ("sun".to_string(), vec!["22:00-02:00:30".to_string()]),
        ]),
        blackout_dates: vec![jiff::civil::date(2026, 12, 24), jiff::civil::date(2028, 2, 29)],
        outside: Outside::Skip,
        description: Some("every field".to_string()),
    };
    let small = WindowDef {
        timezone: None,
        weekly: BTreeMap::from([("wed".to_string(), vec!["00:00-24:00".to_string()])]),
        blackout_dates: vec![],
        outside: Outside::Defer,
        description: None,
    };
    for def in [full, small] {
        def.compile().unwrap();
        assert_round_trip("window.json", &def);
    }
}

#[test]
fn schema_defaults_are_the_parser_defaults() {
    // Writing out every documented default must give the value the parser builds when the
    // fields are left out.
    let task = |doc: &str| TaskDef::from_json(doc.as_bytes()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    let base = json!({"handler": {"type": "builtin", "name": "n"}, "retry": {}, "requires": {}});
    for (extra_at, defaults_at) in [("", ""), ("/retry", "/$defs/retry"), ("/requires", "/$defs/requires")] {
        let doc = merged(&base, extra_at, defaults("task.json", defaults_at));
        assert_eq!(task(&doc), task(&base.to_string()), "defaults of task.json#{defaults_at}");
    }
    for handler in [json!({"type": "http", "url": "http://x"}), json!({"type": "exec", "command": ["df"]})] {
        let base = json!({ "handler": handler });
        let kind = handler["type"].as_str().unwrap();
        let doc = merged(&base, "/handler", defaults("task.json", &format!("/$defs/{kind}_handler")));
        assert_eq!(task(&doc), task(&base.to_string()), "defaults of the {kind} handler");
    }
    let base = json!({"steps": {"a": {"task": "t"}}});
    let doc = merged(&base, "/steps/a", defaults("task.json", "/$defs/step"));
    assert_eq!(task(&doc), task(&base.to_string()), "defaults of a step");

    // `timezone` defaults to UTC: Some("UTC") and None are the same zone, not the same value.
    let schedule = |doc: &str| {
        let mut def = ScheduleDef::from_json("s", doc.as_bytes()).unwrap_or_else(|e| panic!("{e}: {doc}"));
        assert_eq!(def.time_zone().unwrap(), jiff::tz::TimeZone::UTC);
        def.timezone = None;
        def
    };
    let base = json!({"cron": "* * * * *", "task": "t", "misfire": {}, "dst": {}, "depends_on": {"schedule": "x"}});
    for (extra_at, defaults_at) in
        [("", ""), ("/misfire", "/$defs/misfire"), ("/dst", "/$defs/dst"), ("/depends_on", "/$defs/depends_on")]
    {
        let doc = merged(&base, extra_at, defaults("schedule.json", defaults_at));
        assert_eq!(schedule(&doc), schedule(&base.to_string()), "defaults of schedule.json#{defaults_at}");
    }

    let window = |doc: &str| {
        let mut def: WindowDef = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
        def.compile().unwrap_or_else(|e| panic!("{e}: {doc}"));
        assert!(matches!(def.timezone.as_deref(), None | Some("UTC")), "{doc}");
        def.timezone = None;
        def
    };
    let base = json!({"weekly": {"mon": ["09:00-10:00"]}});
    let doc = merged(&base, "", defaults("window.json", ""));
    assert_eq!(window(&doc), window(&base.to_string()), "defaults of window.json");
}

/// Every `properties` entry under `value`, as (JSON pointer, property schema).
fn properties<'a>(pointer: String, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_pointer = format!("{pointer}/{key}");
                if key == "properties"
                    && let Value::Object(props) = child
                {
                    for (name, property) in props {
                        out.push((format!("{child_pointer}/{name}"), property));
                    }
                }
                // Examples are instances, not schemas.
                if key != "examples" {
                    properties(child_pointer, child, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                properties(format!("{pointer}/{i}"), child, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_property_is_documented() {
    let schemas = schemas();
    let mut undocumented = Vec::new();
    for (file, _) in SCHEMA_FILES {
        let schema = schemas.raw(file);
        assert!(schema.get("description").and_then(Value::as_str).is_some_and(|d| !d.is_empty()), "{file}");
        let mut props = Vec::new();
        properties(String::new(), schema, &mut props);
        for (pointer, property) in props {
            if property.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                undocumented.push(format!("{file}#{pointer}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "properties without a description: {undocumented:?}");
}

#[test]
fn every_schema_file_is_checked() {
    // A schema added to schemas/ without joining SCHEMA_FILES would go untested.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SCHEMA_FILES.iter().map(|(file, _)| file.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

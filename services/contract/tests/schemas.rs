//! Keeps `schemas/*.json` (the documented, authoritative form of jetsched's payloads) and
//! the Rust payload types in agreement.
//!
//! Each table holds sample documents; for every one the schema's verdict must equal the
//! verdict of the Rust parser the services use (`TaskDef::from_json`,
//! `ScheduleDef::from_json`, serde for the messages services write). Where the two
//! deliberately differ, separate lists pin the difference: documents the schemas accept but
//! the services' semantic checks reject (cycles, cron syntax, time zones, ...), and the few
//! spellings the parsers tolerate but the schemas leave out; `schemas/README.md` lists both.
//! Finally, values the services build are serialized and must validate, so nothing the
//! services write falls outside the published contract, and the schemas' `default`s must be
//! the parsers' defaults.
//!
//! The schemas refer to each other with relative `$ref`s (`task.json#/$defs/duration`);
//! they are registered under their `file://` URIs so that resolution works offline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jetsched_contract::schedule::{Dst, DstFold, DstGap};
use jetsched_contract::task::{Concurrency, Requires, Step, Trigger};
use jetsched_contract::ticker::{FiredCount, Watermark};
use jetsched_contract::{
    DueFire, Handler, HumanDuration, Misfire, MisfirePolicy, Overlap, RetryPolicy, RunEvent, RunRecord, RunStatus,
    ScheduleDef, TaskDef, TaskRef, WorkItem,
};
use jiff::Timestamp;
use jsonschema::{Draft, Registry, Validator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// A Rust parser's verdict on a document: the services accept it, or the reason they do not.
type Parser = fn(&str) -> Result<(), String>;

const SCHEMA_FILES: [&str; 7] = [
    "task.json",
    "schedule.json",
    "run-event.json",
    "run-record.json",
    "due-fire.json",
    "work-item.json",
    "ticker-state.json",
];

/// The schemas as JSON and as compiled validators.
struct Schemas {
    raw: BTreeMap<&'static str, Value>,
    validators: BTreeMap<&'static str, Validator>,
}

impl Schemas {
    fn raw(&self, file: &str) -> &Value {
        &self.raw[file]
    }

    fn validator(&self, file: &str) -> &Validator {
        &self.validators[file]
    }

    /// Whether `doc` is valid under `file`, with the errors when it is not.
    fn verdict(&self, file: &str, doc: &Value) -> Result<(), String> {
        let errors: Vec<String> = self.validator(file).iter_errors(doc).map(|e| e.to_string()).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").canonicalize().expect("schemas/ directory exists")
}

fn file_uri(dir: &Path, file: &str) -> String {
    format!("file://{}/{file}", dir.display())
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = schema_dir();
        let raw: BTreeMap<&'static str, Value> = SCHEMA_FILES
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
                let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
                (*file, value)
            })
            .collect();
        let registry = Registry::new()
            .extend(raw.iter().map(|(file, value)| (file_uri(&dir, file), value.clone())))
            .expect("schema URIs are valid")
            .prepare()
            .expect("schemas resolve against each other");
        let validators = raw
            .iter()
            .map(|(file, value)| {
                let validator = jsonschema::options()
                    .with_draft(Draft::Draft202012)
                    // `format` is only an annotation in 2020-12 unless asked for; the services
                    // reject malformed timestamps, so the test asserts it.
                    .should_validate_formats(true)
                    .with_registry(&registry)
                    .with_base_uri(file_uri(&dir, file))
                    .build(value)
                    .unwrap_or_else(|e| panic!("{file} is not a valid 2020-12 schema: {e}"));
                (*file, validator)
            })
            .collect();
        Schemas { raw, validators }
    })
}

// ---- the Rust side's verdicts ----

fn parse_task(doc: &str) -> Result<(), String> {
    TaskDef::from_json(doc.as_bytes()).map(drop)
}

fn parse_schedule(doc: &str) -> Result<(), String> {
    ScheduleDef::from_json("s", doc.as_bytes()).map(drop)
}

fn parse_serde<T: DeserializeOwned>(doc: &str) -> Result<(), String> {
    serde_json::from_str::<T>(doc).map(drop).map_err(|e| e.to_string())
}

/// Asserts that the schema `file` and `parse` both accept every document of `valid` and
/// both reject every document of `invalid` (each with a note saying what is wrong).
fn assert_agreement(file: &str, parse: Parser, valid: &[&str], invalid: &[(&str, &str)]) {
    let schemas = schemas();
    let mut failures = Vec::new();
    for doc in valid {
        let value: Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("test document is not JSON: {e}: {doc}"));
        if let Err(e) = schemas.verdict(file, &value) {
            failures.push(format!("{file} rejects a valid document: {e}\n  {doc}"));
        }
        if let Err(e) = parse(doc) {
            failures.push(format!("the parser rejects a valid {file} document: {e}\n  {doc}"));
        }
    }
    for (why, doc) in invalid {
        let value: Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("test document is not JSON: {e}: {doc}"));
        if schemas.verdict(file, &value).is_ok() {
            failures.push(format!("{file} accepts a document with {why}\n  {doc}"));
        }
        if parse(doc).is_ok() {
            failures.push(format!("the parser accepts a {file} document with {why}\n  {doc}"));
        }
    }
    assert!(failures.is_empty(), "{} disagreement(s):\n{}", failures.len(), failures.join("\n"));
}

/// Asserts that the schema accepts each document and `parse` rejects it, saying why.
fn assert_only_parser_rejects(file: &str, parse: Parser, docs: &[(&str, &str)]) {
    let schemas = schemas();
    for (needle, doc) in docs {
        let value: Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("test document is not JSON: {e}: {doc}"));
        if let Err(e) = schemas.verdict(file, &value) {
            panic!("{file} was expected to accept (the parser's semantic check rejects it), but: {e}\n  {doc}");
        }
        match parse(doc) {
            Ok(()) => panic!("the parser accepts a {file} document it should reject ({needle})\n  {doc}"),
            Err(e) => assert!(e.contains(needle), "expected a reason containing {needle:?}, got {e:?}\n  {doc}"),
        }
    }
}

/// Asserts that the schema rejects each document (written in a spelling it does not
/// document) and `parse` still accepts it.
fn assert_only_schema_rejects(file: &str, parse: Parser, docs: &[(&str, &str)]) {
    let schemas = schemas();
    for (what, doc) in docs {
        let value: Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("test document is not JSON: {e}: {doc}"));
        assert!(
            schemas.verdict(file, &value).is_err(),
            "{file} now accepts {what}; move it to the agreement table\n  {doc}"
        );
        if let Err(e) = parse(doc) {
            panic!("the parser now rejects {what} ({e}); move it to the agreement table\n  {doc}");
        }
    }
}

fn assert_valid(file: &str, value: &Value) {
    if let Err(e) = schemas().verdict(file, value) {
        panic!("{file} rejects a value the services write: {e}\n  {value}");
    }
}

// ---- sample documents ----

/// SPEC.md section 4, task definition, verbatim.
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

/// SPEC.md section 4, run event, with the elided run id filled in.
const SPEC_RUN_EVENT: &str = r#"{"run_id": "s.nightly.20261125T023000Z", "task": "resize-image", "schedule": "nightly", "status": "succeeded",
 "attempt": 1, "at": "2026-11-25T02:30:00.004Z", "scheduled_for": "2026-11-25T02:30:00Z",
 "error": null, "duration_ms": 12}"#;

const VALID_TASKS: &[&str] = &[
    SPEC_TASK,
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
    r#"{"handler": {"type": "builtin", "name": "noop"}, "concurrency": {"key": " x ", "limit": 4294967295}}"#,
    r#"{"handler": {"type": "builtin", "name": "noop"}, "window": "business-hours"}"#,
    r#"{"steps": {"only": {"task": "t"}}}"#,
    r#"{"steps": {
        "a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]},
        "c": {"task": "t", "depends_on": ["a"], "trigger": "one_failed"},
        "d": {"task": "t", "depends_on": ["b", "c"], "trigger": "all_done"},
        "e": {"task": "t", "depends_on": ["d"], "trigger": "none_failed"},
        "f": {"task": "t", "depends_on": ["d"], "trigger": "one_success"},
        "g": {"task": "t", "depends_on": [], "trigger": "all_success"}},
      "importance": 7, "description": "a workflow"}"#,
];

const INVALID_TASKS: &[(&str, &str)] = &[
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
    ("a non-string description", r#"{"handler": {"type": "builtin", "name": "n"}, "description": 5}"#),
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
    ("an array instead of an object", r#"[]"#),
];

const VALID_RUN_EVENTS: &[&str] = &[
    SPEC_RUN_EVENT,
    r#"{"run_id": "t.resize-image.q7", "task": "resize-image", "schedule": null, "status": "queued", "attempt": 0,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null, "queue": "default"}"#,
    r#"{"run_id": "t.resize-image.q7", "task": "resize-image", "schedule": null, "status": "failed", "attempt": 2,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": "boom", "duration_ms": 3, "worker": "w1",
        "output": "partial"}"#,
    r#"{"run_id": null, "task": "nightly", "schedule": null, "status": "invalid", "attempt": 0,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": "bad cron", "duration_ms": null,
        "bucket": "jetsched-schedules", "key": "nightly", "revision": 3}"#,
    r#"{"run_id": null, "task": "t", "schedule": "s", "status": "missed", "attempt": 0,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": "2026-11-25T02:29:00Z", "error": null, "duration_ms": null,
        "count": 12}"#,
    // Readers ignore fields added by later versions.
    r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null, "added_later": 1}"#,
];

const INVALID_RUN_EVENTS: &[(&str, &str)] = &[
    (
        "an unknown status",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "exploded", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null}"#,
    ),
    (
        "no task",
        r#"{"run_id": "r", "schedule": null, "status": "started", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null}"#,
    ),
    (
        "no at",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
            "scheduled_for": null, "error": null, "duration_ms": null}"#,
    ),
    (
        "a malformed at",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
            "at": "yesterday", "scheduled_for": null, "error": null, "duration_ms": null}"#,
    ),
    (
        "a negative attempt",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": -1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null}"#,
    ),
    (
        "a string duration_ms",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "succeeded", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": "12ms"}"#,
    ),
];

const VALID_RUN_RECORDS: &[&str] = &[
    r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1}"#,
    r#"{"run_id": "s.nightly.20261125T023000Z", "task": "resize-image", "schedule": "nightly", "status": "dead",
        "attempt": 5, "queue": "default", "band": 0, "scheduled_for": "2026-11-25T02:30:00Z",
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:40:00Z",
        "started_at": "2026-11-25T02:39:00Z", "finished_at": "2026-11-25T02:40:00Z", "error": "boom",
        "source_seq": 9, "task_seq": 12, "worker": "w1", "cancel_requested": true}"#,
];

const INVALID_RUN_RECORDS: &[(&str, &str)] = &[
    (
        "no band",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default",
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1}"#,
    ),
    (
        "an unknown status",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "lost", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1}"#,
    ),
    (
        "a malformed created_at",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "now", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1}"#,
    ),
    (
        "a negative source_seq",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": -1}"#,
    ),
];

/// Either value the ticker keeps in its bucket.
fn parse_ticker_state(doc: &str) -> Result<(), String> {
    let watermark = serde_json::from_str::<Watermark>(doc).map(drop).map_err(|e| e.to_string());
    let count = serde_json::from_str::<FiredCount>(doc)
        .map_err(|e| e.to_string())
        .and_then(|c| if c.fired == 0 { Err("a stored count is at least 1".to_string()) } else { Ok(()) });
    watermark.or(count)
}

const VALID_TICKER_STATES: &[&str] =
    &[r#"{"upto": "2026-11-25T02:30:00.204Z", "by": "ticker-1"}"#, r#"{"fired": 1, "last": "2026-11-25T02:30:00Z"}"#];

const INVALID_TICKER_STATES: &[(&str, &str)] = &[
    ("a watermark without its writer", r#"{"upto": "2026-11-25T02:30:00Z"}"#),
    ("a malformed instant", r#"{"upto": "yesterday", "by": "ticker-1"}"#),
    ("an unknown field", r#"{"upto": "2026-11-25T02:30:00Z", "by": "t", "extra": 1}"#),
    ("a count of zero", r#"{"fired": 0, "last": "2026-11-25T02:30:00Z"}"#),
    ("a negative count", r#"{"fired": -1, "last": "2026-11-25T02:30:00Z"}"#),
    ("both kinds mixed", r#"{"fired": 1, "last": "2026-11-25T02:30:00Z", "by": "t"}"#),
];

const VALID_DUE_FIRES: &[&str] = &[
    r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z"}"#,
    r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z", "payload": {"bucket": "photos"},
        "not_before": "2026-11-25T02:30:01Z"}"#,
    r#"{"schedule": "tick", "scheduled_for": "2026-11-25T02:30:00Z", "payload": null,
        "task_def": {"handler": {"type": "nats", "subject": "fn.x"}, "timeout": "5s"}}"#,
];

const INVALID_DUE_FIRES: &[(&str, &str)] = &[
    ("an unknown field", r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "attempt": 1}"#),
    ("no scheduled_for", r#"{"schedule": "s"}"#),
    ("no schedule", r#"{"scheduled_for": "2026-11-25T02:30:00Z"}"#),
    ("a malformed scheduled_for", r#"{"schedule": "s", "scheduled_for": "2026-11-25 02:30"}"#),
    (
        "a task_def with an unknown field",
        r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "task_def": {"handler": {"type": "builtin", "name": "n"}, "x": 1}}"#,
    ),
];

const VALID_WORK_ITEMS: &[&str] = &[
    r#"{"run_id": "t.t.q1", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
        "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1}"#,
    r#"{"run_id": "s.nightly.20261125T023000Z", "task": "resize-image", "schedule": "nightly",
        "scheduled_for": "2026-11-25T02:30:00Z", "not_before": "2026-11-25T02:30:00Z",
        "def": {"handler": {"type": "http", "url": "https://x/y", "method": "PUT"}, "queue": "web", "importance": 9},
        "payload": {"bucket": "photos"}, "queued_at": "2026-11-25T02:30:00Z", "record_revision": 17,
        "source_seq": 99}"#,
];

const INVALID_WORK_ITEMS: &[(&str, &str)] = &[
    (
        "no def",
        r#"{"run_id": "r", "task": "t", "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1}"#,
    ),
    (
        "an unknown field",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1, "band": 3}"#,
    ),
    (
        "a negative record_revision",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": -1, "source_seq": 1}"#,
    ),
    (
        "a def with a wrong handler type",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "ftp", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1}"#,
    ),
];

// ---- tests ----

#[test]
fn spec_examples_are_valid_for_schema_and_parser() {
    assert_agreement("task.json", parse_task, &[SPEC_TASK], &[]);
    assert_agreement("schedule.json", parse_schedule, &[SPEC_SCHEDULE], &[]);
    assert_agreement("run-event.json", parse_serde::<RunEvent>, &[SPEC_RUN_EVENT], &[]);
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
fn schema_and_parser_agree_on_run_events() {
    assert_agreement("run-event.json", parse_serde::<RunEvent>, VALID_RUN_EVENTS, INVALID_RUN_EVENTS);
}

#[test]
fn schema_and_parser_agree_on_run_records() {
    assert_agreement("run-record.json", parse_serde::<RunRecord>, VALID_RUN_RECORDS, INVALID_RUN_RECORDS);
}

#[test]
fn schema_and_parser_agree_on_due_fires_and_work_items() {
    assert_agreement("due-fire.json", parse_serde::<DueFire>, VALID_DUE_FIRES, INVALID_DUE_FIRES);
    assert_agreement("work-item.json", parse_serde::<WorkItem>, VALID_WORK_ITEMS, INVALID_WORK_ITEMS);
}

#[test]
fn schema_and_parser_agree_on_ticker_state() {
    assert_agreement("ticker-state.json", parse_ticker_state, VALID_TICKER_STATES, INVALID_TICKER_STATES);
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
            // JSON Schema counts 5.0 as an integer; serde does not.
            ("expected u8", r#"{"handler": {"type": "builtin", "name": "n"}, "importance": 5.0}"#),
            ("too large", r#"{"handler": {"type": "builtin", "name": "n"}, "timeout": "99999999999999999999999d"}"#),
            (
                "initial_backoff must not exceed",
                r#"{"handler": {"type": "builtin", "name": "n"}, "retry": {"initial_backoff": "10m", "max_backoff": "5m"}}"#,
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
        ],
    );
    assert_only_schema_rejects(
        "run-event.json",
        parse_serde::<RunEvent>,
        &[(
            "an event without its null fields",
            r#"{"run_id": "r", "task": "t", "status": "started", "attempt": 1, "at": "2026-11-25T02:30:00Z"}"#,
        )],
    );
}

#[test]
fn schema_examples_are_valid_for_schema_and_parser() {
    let schemas = schemas();
    let parsers: [(&str, Parser); 7] = [
        ("task.json", parse_task),
        ("schedule.json", parse_schedule),
        ("run-event.json", parse_serde::<RunEvent>),
        ("run-record.json", parse_serde::<RunRecord>),
        ("due-fire.json", parse_serde::<DueFire>),
        ("work-item.json", parse_serde::<WorkItem>),
        ("ticker-state.json", parse_ticker_state),
    ];
    for (file, parse) in parsers {
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
    for (dir, file, parse) in
        [("tasks", "task.json", parse_task as Parser), ("schedules", "schedule.json", parse_schedule)]
    {
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
fn values_the_services_write_validate_against_their_schemas() {
    let t = |s: &str| -> Timestamp { s.parse().unwrap() };

    // Run events: every status, the SPEC's fields filled in, and the `invalid` reports.
    for status in RunStatus::ALL {
        let event = RunEvent::new(status, "resize-image", Some("t.resize-image.q7".to_string()));
        assert_valid("run-event.json", &serde_json::to_value(&event).unwrap());
    }
    let finished = RunEvent {
        schedule: Some("nightly".to_string()),
        attempt: 1,
        scheduled_for: Some(t("2026-11-25T02:30:00Z")),
        duration_ms: Some(12),
        queue: Some("default".to_string()),
        worker: Some("worker-1".to_string()),
        output: Some("ok\n".to_string()),
        ..RunEvent::new(RunStatus::Succeeded, "resize-image", Some("s.nightly.20261125T023000Z".to_string()))
    };
    let missed = RunEvent {
        schedule: Some("nightly".to_string()),
        count: Some(3),
        scheduled_for: Some(t("2026-11-25T02:30:00Z")),
        ..RunEvent::new(RunStatus::Missed, "resize-image", None)
    };
    for event in [
        finished,
        missed,
        RunEvent::invalid("jetsched-schedules", "nightly", 7, "unknown time zone \"Mars/Olympus\""),
        RunEvent::invalid("jetsched-tasks", "not a name", 1, "invalid key"),
    ] {
        let value = serde_json::to_value(&event).unwrap();
        assert_valid("run-event.json", &value);
        assert_eq!(serde_json::from_value::<RunEvent>(value).unwrap(), event);
    }

    // Run records: as created by a dispatcher, and finished.
    let created = RunRecord {
        run_id: "t.resize-image.q7".to_string(),
        task: "resize-image".to_string(),
        schedule: None,
        status: RunStatus::Queued,
        attempt: 0,
        queue: "default".to_string(),
        band: 5,
        scheduled_for: None,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
        started_at: None,
        finished_at: None,
        error: None,
        source_seq: 7,
        task_seq: None,
        worker: None,
        cancel_requested: false,
        replay_of: None,
    };
    let finished = RunRecord {
        schedule: Some("nightly".to_string()),
        status: RunStatus::Cancelled,
        attempt: 2,
        band: 0,
        scheduled_for: Some(t("2026-11-25T02:30:00Z")),
        started_at: Some(Timestamp::now()),
        finished_at: Some(Timestamp::now()),
        error: Some("cancelled on request".to_string()),
        task_seq: Some(12),
        worker: Some("worker-1".to_string()),
        cancel_requested: true,
        ..created.clone()
    };
    for record in [created, finished] {
        assert_valid("run-record.json", &serde_json::to_value(&record).unwrap());
    }

    // Task definitions: every handler type, a workflow, and every optional field.
    let full = TaskDef {
        expected_duration: Some(HumanDuration::from_millis(1500)),
        schedule_to_start: Some(HumanDuration::from_secs(90)),
        concurrency: Some(Concurrency { key: "{{payload.customer}}".to_string(), limit: 2 }),
        window: Some("business-hours".to_string()),
        requires: Some(Requires { slots: 2, labels: BTreeMap::from([("region".to_string(), "eu".to_string())]) }),
        description: Some("all fields".to_string()),
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
    let defs = [
        TaskDef::from_json(SPEC_TASK.as_bytes()).unwrap(),
        TaskDef::with_handler(Handler::Nats { subject: "fn.resize".to_string() }),
        TaskDef::with_handler(Handler::Exec {
            command: vec!["df".to_string(), "-h".to_string()],
            env: BTreeMap::from([("LANG".to_string(), "C".to_string())]),
        }),
        TaskDef::with_handler(Handler::Builtin { name: "noop".to_string() }),
        full,
        workflow,
    ];
    for def in &defs {
        def.validate().unwrap();
        assert_valid("task.json", &serde_json::to_value(def).unwrap());
    }

    // Schedules: the SPEC's, and one with every optional field and an inline task.
    let spec = ScheduleDef::from_json("nightly", SPEC_SCHEDULE.as_bytes()).unwrap();
    let full = ScheduleDef {
        cron: None,
        every: Some(HumanDuration::from_secs(30)),
        phase: Some(HumanDuration::from_secs(5)),
        at: None,
        timezone: Some("Europe/Berlin".to_string()),
        task: TaskRef::Inline(Box::new(defs[1].clone())),
        payload: Some(json!({"k": [1, 2]})),
        misfire: Misfire { policy: MisfirePolicy::All, window: HumanDuration::from_secs(86_400), max: 5 },
        overlap: Overlap::BufferOne,
        jitter: HumanDuration::from_millis(250),
        dst: Dst { gap: DstGap::Skip, fold: DstFold::Both },
        paused: true,
        start_at: Some(t("2026-01-01T00:00:00Z")),
        end_at: Some(t("2027-01-01T00:00:00Z")),
        max_runs: Some(100),
        description: Some("every field".to_string()),
    };
    let one_shot =
        ScheduleDef { cron: None, every: None, phase: None, at: Some(t("2026-11-25T02:30:00.25Z")), ..spec.clone() };
    for def in [spec, full, one_shot] {
        def.calendar().unwrap();
        assert_valid("schedule.json", &serde_json::to_value(&def).unwrap());
    }

    // The ticker's bucket.
    let watermark = Watermark { upto: t("2026-11-25T02:30:00.204Z"), by: "ticker-1".to_string() };
    assert_valid("ticker-state.json", &serde_json::to_value(&watermark).unwrap());
    let count = FiredCount { fired: 3, last: t("2026-11-25T02:30:00Z") };
    assert_valid("ticker-state.json", &serde_json::to_value(&count).unwrap());

    // Internal messages.
    for fire in [
        DueFire {
            schedule: "nightly".to_string(),
            scheduled_for: t("2026-11-25T02:30:00Z"),
            payload: Value::Null,
            task_def: None,
            not_before: None,
        },
        DueFire {
            schedule: "tick".to_string(),
            scheduled_for: t("2026-11-25T02:30:00Z"),
            payload: json!({"bucket": "photos"}),
            task_def: Some(defs[0].clone()),
            not_before: Some(t("2026-11-25T02:30:00.5Z")),
        },
    ] {
        assert_valid("due-fire.json", &serde_json::to_value(&fire).unwrap());
    }
    for item in [
        WorkItem {
            run_id: "t.resize-image.q7".to_string(),
            task: "resize-image".to_string(),
            def: defs[0].clone(),
            payload: json!({"key": "a.png"}),
            schedule: None,
            scheduled_for: None,
            queued_at: Timestamp::now(),
            not_before: None,
            record_revision: 1,
            source_seq: 7,
            replay_of: Some("t.resize-image.q3".to_string()),
        },
        WorkItem {
            run_id: "s.nightly.20261125T023000Z".to_string(),
            task: "nightly".to_string(),
            def: defs[4].clone(),
            payload: Value::Null,
            schedule: Some("nightly".to_string()),
            scheduled_for: Some(t("2026-11-25T02:30:00Z")),
            queued_at: Timestamp::now(),
            not_before: Some(t("2026-11-25T02:30:00Z")),
            record_revision: 42,
            source_seq: 8,
            replay_of: None,
        },
    ] {
        assert_valid("work-item.json", &serde_json::to_value(&item).unwrap());
    }
}

/// The `default` of every property of the object schema at `pointer` in `file`.
fn defaults(file: &str, pointer: &str) -> Map<String, Value> {
    let object = schemas().raw(file).pointer(pointer).unwrap_or_else(|| panic!("{file}#{pointer} exists"));
    object["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{file}#{pointer} has properties"))
        .iter()
        .filter_map(|(name, property)| Some((name.clone(), property.get("default")?.clone())))
        .collect()
}

/// `base` with `extra`'s fields added at `pointer` (an object inside `base`).
fn merged(base: &Value, pointer: &str, extra: Map<String, Value>) -> String {
    let mut doc = base.clone();
    let target =
        doc.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("{pointer} in {base}"));
    target.extend(extra);
    doc.to_string()
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
    let base = json!({"cron": "* * * * *", "task": "t", "misfire": {}, "dst": {}});
    for (extra_at, defaults_at) in [("", ""), ("/misfire", "/$defs/misfire"), ("/dst", "/$defs/dst")] {
        let doc = merged(&base, extra_at, defaults("schedule.json", defaults_at));
        assert_eq!(schedule(&doc), schedule(&base.to_string()), "defaults of schedule.json#{defaults_at}");
    }

    let record = json!({"run_id": "r", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1});
    let with_defaults = merged(&record, "", defaults("run-record.json", ""));
    assert_eq!(serde_json::from_str::<RunRecord>(&with_defaults).unwrap(), serde_json::from_value(record).unwrap());

    let fire = json!({"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z"});
    let with_defaults = merged(&fire, "", defaults("due-fire.json", ""));
    assert_eq!(serde_json::from_str::<DueFire>(&with_defaults).unwrap(), serde_json::from_value(fire).unwrap());

    let item = json!({"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
        "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1});
    let with_defaults = merged(&item, "", defaults("work-item.json", ""));
    assert_eq!(serde_json::from_str::<WorkItem>(&with_defaults).unwrap(), serde_json::from_value(item).unwrap());
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
    for file in SCHEMA_FILES {
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

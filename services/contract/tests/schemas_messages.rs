//! Keeps `schemas/*.json` and the Rust types in agreement for the messages and records the
//! services write: run events, run records, due fires, work items, workflow step starts and
//! outcomes, the ticker's watermarks, fire counts and trigger registrations, the event a
//! triggered run gets, and the dispatchers' overlap state. `schemas.rs` covers the definitions users write and explains the method; the
//! shared machinery is in `support/`.
//!
//! The services read these with serde alone, so serde is the parser every table is checked
//! against. Messages reject unknown fields; events and run records are for reading, and
//! readers ignore fields they do not know.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use jetsched_contract::message::Shard;
use jetsched_contract::schedule::ScheduleDependency;
use jetsched_contract::ticker::{FiredCount, JournaledBatch, TriggerState, Watermark};
use jetsched_contract::workflow::StepState;
use jetsched_contract::{
    BackfillProgress, BackfillReport, BackfillStatus, ByteAmount, Cores, DueFire, Handler, Overlap, Resources,
    RunEvent, RunRecord, RunStatus, StepOutcome, StepStart, TaskDef, TriggerEvent, WorkItem, WorkerInfo, WorkflowState,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use support::{
    assert_agreement, assert_defaults, assert_only_schema_rejects, assert_round_trip, parse_serde, parse_ticker_state,
};

// ---- sample documents ----

/// SPEC.md section 4, run event, with the elided run id filled in.
const SPEC_RUN_EVENT: &str = r#"{"run_id": "s.nightly.20261125T023000Z", "task": "resize-image", "schedule": "nightly", "status": "succeeded",
 "attempt": 1, "at": "2026-11-25T02:30:00.004Z", "scheduled_for": "2026-11-25T02:30:00Z",
 "error": null, "duration_ms": 12}"#;

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
    r#"{"run_id": "t.publish.q7.resize", "task": "resize-image", "schedule": null, "status": "expired", "attempt": 0,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": "not started within 5m", "duration_ms": null,
        "queue": "_w-worker-1", "workflow_run": "t.publish.q7", "step": "resize"}"#,
    r#"{"run_id": "t.charge.q7", "task": "charge", "schedule": null, "status": "waiting", "attempt": 0,
        "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "duration_ms": null, "queue": "default", "worker": "w1",
        "error": "rate limit of 100 starts per 1m reached for key \"acme\"; waiting for the next period"}"#,
    r#"{"run_id": "t.charge.q7", "task": "charge", "schedule": null, "status": "started", "attempt": 1,
        "at": "2026-11-25T02:31:00.2Z", "scheduled_for": null, "error": null, "duration_ms": null, "worker": "w1",
        "rate_window": "2026-11-25T02:31:00Z"}"#,
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
        "a numeric workflow_run",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null, "workflow_run": 7}"#,
    ),
    (
        "a string duration_ms",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "succeeded", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": "12ms"}"#,
    ),
    (
        "a rate_window that is a period number",
        r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
            "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null, "rate_window": 29}"#,
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
    // A workflow run, with a step state a later version extended.
    r#"{"run_id": "t.wf.q1", "task": "wf", "status": "started", "attempt": 1, "queue": "default", "band": 0,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
        "workflow": {"payload": [1], "steps": {"a": {"status": "succeeded", "run_id": "t.wf.q1.a", "result": null},
            "b": {"status": "skipped", "error": "upstream step a failed", "added_later": true}, "c": {}}}}"#,
    r#"{"run_id": "t.wf.q1", "task": "wf", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
        "workflow": {"steps": {}}}"#,
    // A step's run, routed to one worker.
    r#"{"run_id": "t.wf.q1.a", "task": "t", "status": "succeeded", "attempt": 1,
        "queue": "_w-a-very-long-host-name-of-sixty-three-characters-in-all-ok-12345-4242", "band": 0,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 2,
        "parent": "t.wf.q1", "step": "a", "result": {"rows": [1, 2]}}"#,
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
        "a workflow without steps",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
            "workflow": {"payload": 1}}"#,
    ),
    (
        "an unknown step status",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
            "workflow": {"steps": {"a": {"status": "pending"}}}}"#,
    ),
    (
        "a step state that is a string",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
            "workflow": {"steps": {"a": "succeeded"}}}"#,
    ),
    (
        "a numeric parent",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
            "parent": 1}"#,
    ),
    (
        "a negative source_seq",
        r#"{"run_id": "t.t.q1", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
            "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": -1}"#,
    ),
];

const VALID_TICKER_STATES: &[&str] = &[
    r#"{"upto": "2026-11-25T02:30:00.204Z", "by": "ticker-1"}"#,
    r#"{"fired": 1, "last": "2026-11-25T02:30:00Z"}"#,
    r#"{"task": "email", "stream": "ORDERS", "consumer": "jetsched-trg-email-1a2b3c4d"}"#,
    r#"{"task": "email", "stream": "ORDERS", "consumer": "c", "batch": {"msg_id": "email-ORDERS-1-3", "seqs": [1, 3]}}"#,
];

const VALID_WORKERS: &[&str] = &[
    r#"{"id": "w1", "queues": ["default"], "slots": 256, "busy": 0,
        "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    r#"{"id": "gpu-1", "queues": ["default", "gpu"], "slots": 4, "busy": 2, "labels": {"gpu": "true"},
        "capacity": {"cpu": 8, "memory": "32GiB", "disk": "200GiB"}, "held": {"cpu": 0.5, "memory": "1 GiB"},
        "holding": ["t.train.q7"], "released": ["t.train.q3"],
        "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00.120Z", "added_later": 1}"#,
];

const INVALID_WORKERS: &[(&str, &str)] = &[
    (
        "no id",
        r#"{"queues": [], "slots": 1, "busy": 0, "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    ),
    ("no heartbeat_at", r#"{"id": "w1", "queues": [], "slots": 1, "busy": 0, "started_at": "2026-11-25T02:00:00Z"}"#),
    (
        "a bare-number memory",
        r#"{"id": "w1", "queues": [], "slots": 1, "busy": 0, "capacity": {"memory": 1024},
            "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    ),
    (
        "a negative cpu",
        r#"{"id": "w1", "queues": [], "slots": 1, "busy": 0, "held": {"cpu": -1},
            "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    ),
    (
        "an unknown resource",
        r#"{"id": "w1", "queues": [], "slots": 1, "busy": 0, "capacity": {"gpus": 1},
            "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    ),
    (
        "a negative busy count",
        r#"{"id": "w1", "queues": [], "slots": 1, "busy": -1,
            "started_at": "2026-11-25T02:00:00Z", "heartbeat_at": "2026-11-25T02:30:00Z"}"#,
    ),
];

const INVALID_TICKER_STATES: &[(&str, &str)] = &[
    ("a watermark without its writer", r#"{"upto": "2026-11-25T02:30:00Z"}"#),
    ("a malformed instant", r#"{"upto": "yesterday", "by": "ticker-1"}"#),
    ("an unknown field", r#"{"upto": "2026-11-25T02:30:00Z", "by": "t", "extra": 1}"#),
    ("a count of zero", r#"{"fired": 0, "last": "2026-11-25T02:30:00Z"}"#),
    ("a negative count", r#"{"fired": -1, "last": "2026-11-25T02:30:00Z"}"#),
    ("both kinds mixed", r#"{"fired": 1, "last": "2026-11-25T02:30:00Z", "by": "t"}"#),
    ("a trigger without its consumer", r#"{"task": "email", "stream": "ORDERS"}"#),
    ("a batch without its id", r#"{"task": "t", "stream": "S", "consumer": "c", "batch": {"seqs": [1]}}"#),
    (
        "a batch with a negative sequence",
        r#"{"task": "t", "stream": "S", "consumer": "c", "batch": {"msg_id": "m", "seqs": [-1]}}"#,
    ),
];

const VALID_TRIGGER_EVENTS: &[&str] = &[
    r#"{"subject": "orders.created.eu", "stream": "ORDERS", "seq": 42, "time": "2026-11-25T02:30:00Z", "data": {"id": 7}}"#,
    r#"{"subject": "orders.x", "stream": "JETSCHED_TRIGGERS", "seq": 1, "time": "2026-11-25T02:30:00Z",
        "headers": {"Tenant": "acme"}, "data": "plain text"}"#,
    r#"{"subject": "$KV.config.pricing.eu", "stream": "KV_config", "seq": 17, "time": "2026-11-25T02:30:00Z",
        "data": null, "bucket": "config", "key": "pricing.eu", "operation": "delete", "revision": 17}"#,
];

const INVALID_TRIGGER_EVENTS: &[(&str, &str)] = &[
    ("no data", r#"{"subject": "a", "stream": "S", "seq": 1, "time": "2026-11-25T02:30:00Z"}"#),
    (
        "an unknown operation",
        r#"{"subject": "a", "stream": "S", "seq": 1, "time": "2026-11-25T02:30:00Z", "data": 1, "operation": "update"}"#,
    ),
    (
        "an unknown field",
        r#"{"subject": "a", "stream": "S", "seq": 1, "time": "2026-11-25T02:30:00Z", "data": 1, "extra": 1}"#,
    ),
    (
        "a header with a list of values",
        r#"{"subject": "a", "stream": "S", "seq": 1, "time": "2026-11-25T02:30:00Z", "data": 1, "headers": {"A": ["x"]}}"#,
    ),
];

const VALID_OVERLAP_STATES: &[&str] = &[
    r#"{}"#,
    r#"{"active": {"run_id": "s.n.20261125T023000Z", "scheduled_for": "2026-11-25T02:30:00Z", "inbox_seq": 7}}"#,
    r#"{"active": {"run_id": "s.n.20261125T023000Z", "scheduled_for": "2026-11-25T02:30:00Z", "inbox_seq": 7,
                   "broadcast": true},
        "buffered": {"run_id": "s.n.20261125T023100Z", "scheduled_for": "2026-11-25T02:31:00Z", "inbox_seq": 9}}"#,
];

const INVALID_OVERLAP_STATES: &[(&str, &str)] = &[
    (
        "a fire without its inbox sequence",
        r#"{"active": {"run_id": "s.n.x", "scheduled_for": "2026-11-25T02:30:00Z"}}"#,
    ),
    (
        "a negative inbox sequence",
        r#"{"active": {"run_id": "s.n.x", "scheduled_for": "2026-11-25T02:30:00Z", "inbox_seq": -1}}"#,
    ),
    ("a malformed instant", r#"{"buffered": {"run_id": "s.n.x", "scheduled_for": "soon", "inbox_seq": 1}}"#),
    ("an unknown field", r#"{"waiting": []}"#),
    (
        "an unknown field in a fire",
        r#"{"active": {"run_id": "s.n.x", "scheduled_for": "2026-11-25T02:30:00Z", "inbox_seq": 1, "x": 1}}"#,
    ),
];

const VALID_DUE_FIRES: &[&str] = &[
    r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z"}"#,
    r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z", "payload": {"bucket": "photos"},
        "not_before": "2026-11-25T02:30:01Z"}"#,
    r#"{"schedule": "tick", "scheduled_for": "2026-11-25T02:30:00Z", "payload": null,
        "task_def": {"handler": {"type": "nats", "subject": "fn.x"}, "timeout": "5s"}}"#,
    r#"{"schedule": "report", "scheduled_for": "2026-11-25T03:00:00Z", "overlap": "cancel_previous",
        "depends_on": {"schedule": "nightly"}, "timezone": "Europe/Berlin"}"#,
    r#"{"schedule": "report", "scheduled_for": "2026-11-25T03:00:00Z", "overlap": "allow",
        "depends_on": {"schedule": "nightly", "wait": "90m"}}"#,
    r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z", "revision": 7}"#,
];

const INVALID_DUE_FIRES: &[(&str, &str)] = &[
    ("an unknown field", r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "attempt": 1}"#),
    ("no scheduled_for", r#"{"schedule": "s"}"#),
    ("no schedule", r#"{"scheduled_for": "2026-11-25T02:30:00Z"}"#),
    ("a malformed scheduled_for", r#"{"schedule": "s", "scheduled_for": "2026-11-25 02:30"}"#),
    ("an unknown overlap", r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "overlap": "queue"}"#),
    ("a negative revision", r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "revision": -1}"#),
    (
        "depends_on without schedule",
        r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "depends_on": {"wait": "1h"}}"#,
    ),
    (
        "an unknown depends_on field",
        r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "depends_on": {"schedule": "n", "x": 1}}"#,
    ),
    ("a numeric timezone", r#"{"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "timezone": 1}"#),
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
    r#"{"run_id": "t.wf.q1.load", "task": "load", "def": {"handler": {"type": "builtin", "name": "n"}},
        "payload": {"workflow": null, "upstream": {"extract": 1}}, "queued_at": "2026-11-25T02:30:00Z",
        "record_revision": 1, "source_seq": 1, "parent": "t.wf.q1", "step": "load"}"#,
    r#"{"run_id": "t.t.q1.w0", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}, "routing": "broadcast"},
        "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1, "shard": {"index": 0, "total": 1}}"#,
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
        "a shard without total",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1, "shard": {"index": 0}}"#,
    ),
    (
        "an unknown shard field",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1,
            "shard": {"index": 0, "total": 2, "worker": "w1"}}"#,
    ),
    (
        "a negative shard index",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1,
            "shard": {"index": -1, "total": 2}}"#,
    ),
    (
        "a shard that is a number",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1, "shard": 1}"#,
    ),
    (
        "a numeric step",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1, "step": 1}"#,
    ),
    (
        "a def with a wrong handler type",
        r#"{"run_id": "r", "task": "t", "def": {"handler": {"type": "ftp", "name": "n"}},
            "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1}"#,
    ),
];

const VALID_STEP_STARTS: &[&str] = &[
    r#"{"workflow_run": "t.wf.q1", "workflow": "wf", "step": "a"}"#,
    r#"{"workflow_run": "t.wf.q1", "workflow": "wf", "step": "a", "payload": null}"#,
    r#"{"workflow_run": "s.etl.20261125T020000Z", "workflow": "etl", "step": "load",
        "payload": {"workflow": {"day": "mon"}, "upstream": {"extract": [1, 2]}},
        "schedule": "etl", "scheduled_for": "2026-11-25T02:00:00Z"}"#,
];

const INVALID_STEP_STARTS: &[(&str, &str)] = &[
    ("an unknown field", r#"{"workflow_run": "t.wf.q1", "workflow": "wf", "step": "a", "attempt": 1}"#),
    ("no workflow_run", r#"{"workflow": "wf", "step": "a"}"#),
    ("no workflow", r#"{"workflow_run": "t.wf.q1", "step": "a"}"#),
    ("no step", r#"{"workflow_run": "t.wf.q1", "workflow": "wf"}"#),
    ("a numeric step", r#"{"workflow_run": "t.wf.q1", "workflow": "wf", "step": 1}"#),
    (
        "a malformed scheduled_for",
        r#"{"workflow_run": "t.wf.q1", "workflow": "wf", "step": "a", "scheduled_for": "today"}"#,
    ),
    ("an array instead of an object", r#"[]"#),
];

const VALID_STEP_OUTCOMES: &[&str] = &[
    r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "succeeded"}"#,
    r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "succeeded",
        "result": {"rows": 12}}"#,
    r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "succeeded", "result": "plain text"}"#,
    r#"{"workflow_run": "t.wf.q1", "step": "b", "run_id": "t.wf.q1.b", "status": "expired",
        "error": "not started within 5m"}"#,
];

const INVALID_STEP_OUTCOMES: &[(&str, &str)] = &[
    (
        "an unknown field",
        r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "dead", "attempt": 3}"#,
    ),
    ("no run_id", r#"{"workflow_run": "t.wf.q1", "step": "a", "status": "dead"}"#),
    ("no status", r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a"}"#),
    ("no workflow_run", r#"{"step": "a", "run_id": "t.wf.q1.a", "status": "dead"}"#),
    ("an unknown status", r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "done"}"#),
    (
        "a non-string error",
        r#"{"workflow_run": "t.wf.q1", "step": "a", "run_id": "t.wf.q1.a", "status": "dead", "error": {"code": 1}}"#,
    ),
];

// ---- tests ----

#[test]
fn spec_example_is_valid_for_schema_and_parser() {
    assert_agreement("run-event.json", parse_serde::<RunEvent>, &[SPEC_RUN_EVENT], &[]);
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
    let trigger = TriggerState {
        task: "email".into(),
        stream: "ORDERS".into(),
        consumer: "jetsched-trg-email-1a2b3c4d".into(),
        batch: Some(JournaledBatch { msg_id: "email-ORDERS-4-9".into(), seqs: vec![4, 7, 9], carried: vec![2, 3] }),
    };
    assert_round_trip("ticker-state.json", &trigger);
    let t = |s: &str| -> jiff::Timestamp { s.parse().unwrap() };
    let watermark = Watermark { upto: t("2026-11-25T02:30:00.204Z"), by: "ticker-1".to_string() };
    assert_round_trip("ticker-state.json", &watermark);
    assert_round_trip("ticker-state.json", &FiredCount { fired: 3, last: t("2026-11-25T02:30:00Z") });
}

#[test]
fn schema_and_parser_agree_on_overlap_state() {
    use jetsched_contract::overlap::{OverlapFire, OverlapState};
    assert_agreement("overlap-state.json", parse_serde::<OverlapState>, VALID_OVERLAP_STATES, INVALID_OVERLAP_STATES);
    let fire = |n: i64, broadcast: bool| OverlapFire {
        run_id: format!("s.n.{n}"),
        scheduled_for: jiff::Timestamp::from_second(n).unwrap(),
        inbox_seq: n as u64,
        broadcast,
    };
    assert_round_trip("overlap-state.json", &OverlapState::default());
    assert_round_trip(
        "overlap-state.json",
        &OverlapState { active: Some(fire(1, true)), buffered: Some(fire(2, false)) },
    );
}

#[test]
fn schema_and_parser_agree_on_worker_heartbeats() {
    assert_agreement("worker.json", parse_serde::<WorkerInfo>, VALID_WORKERS, INVALID_WORKERS);
    let t = |s: &str| -> jiff::Timestamp { s.parse().unwrap() };
    let gib = |n: u64| ByteAmount(n << 30);
    let info = WorkerInfo {
        id: "gpu-1".to_string(),
        queues: vec!["default".to_string()],
        slots: 4,
        busy: 1,
        labels: BTreeMap::from([("gpu".to_string(), "true".to_string())]),
        capacity: Resources { cpu: Cores(8000), memory: gib(32), disk: ByteAmount(200_000_000_000) },
        held: Resources { cpu: Cores(1500), memory: gib(4), disk: ByteAmount(0) },
        holding: vec!["t.train.q7".to_string()],
        released: vec!["t.train.q3".to_string()],
        started_at: t("2026-11-25T02:00:00Z"),
        heartbeat_at: t("2026-11-25T02:30:00.12Z"),
        draining: false,
    };
    assert_round_trip("worker.json", &info);
    assert_round_trip("worker.json", &WorkerInfo { draining: true, ..info.clone() });
    assert_round_trip(
        "worker.json",
        &WorkerInfo { labels: BTreeMap::new(), holding: vec![], released: vec![], ..info },
    );
}

#[test]
fn schema_and_parser_agree_on_trigger_events() {
    assert_agreement("trigger-event.json", parse_serde::<TriggerEvent>, VALID_TRIGGER_EVENTS, INVALID_TRIGGER_EVENTS);
    let event = TriggerEvent {
        subject: "$KV.config.pricing.eu".into(),
        stream: "KV_config".into(),
        seq: 17,
        time: "2026-11-25T02:30:00Z".parse().unwrap(),
        headers: BTreeMap::from([("KV-Operation".to_string(), "DEL".to_string())]),
        data: Value::Null,
        bucket: Some("config".into()),
        key: Some("pricing.eu".into()),
        operation: Some(jetsched_contract::trigger::KvOperation::Delete),
        revision: Some(17),
    };
    assert_round_trip("trigger-event.json", &event);
}

#[test]
fn schema_and_parser_agree_on_workflow_step_messages() {
    assert_agreement("step-start.json", parse_serde::<StepStart>, VALID_STEP_STARTS, INVALID_STEP_STARTS);
    assert_agreement("step-outcome.json", parse_serde::<StepOutcome>, VALID_STEP_OUTCOMES, INVALID_STEP_OUTCOMES);
}

#[test]
fn parser_also_accepts_spellings_the_schema_leaves_out() {
    // Readers are lenient about events: the SPEC's fields may be missing, extras may be null.
    assert_only_schema_rejects(
        "run-event.json",
        parse_serde::<RunEvent>,
        &[
            (
                "an event without its null fields",
                r#"{"run_id": "r", "task": "t", "status": "started", "attempt": 1, "at": "2026-11-25T02:30:00Z"}"#,
            ),
            (
                "a null step",
                r#"{"run_id": "r", "task": "t", "schedule": null, "status": "started", "attempt": 1,
                    "at": "2026-11-25T02:30:00Z", "scheduled_for": null, "error": null, "duration_ms": null,
                    "workflow_run": null, "step": null}"#,
            ),
        ],
    );
}

#[test]
fn values_the_services_write_validate_and_read_back() {
    let t = |s: &str| -> Timestamp { s.parse().unwrap() };
    let def = TaskDef::with_handler(Handler::Nats { subject: "fn.resize".to_string() });

    // Run events: every status, the SPEC's fields filled in, steps, and the `invalid` reports.
    for status in RunStatus::ALL {
        assert_round_trip("run-event.json", &RunEvent::new(status, "resize-image", Some("t.resize-image.q7".into())));
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
    let step = RunEvent {
        queue: Some("_w-worker-1".to_string()),
        workflow_run: Some("t.publish.q7".to_string()),
        step: Some("resize".to_string()),
        ..RunEvent::new(RunStatus::Expired, "resize-image", Some("t.publish.q7.resize".to_string()))
    };
    for event in [
        finished,
        missed,
        step,
        RunEvent::invalid("jetsched-schedules", "nightly", 7, "unknown time zone \"Mars/Olympus\""),
        RunEvent::invalid("jetsched-tasks", "not a name", 1, "invalid key"),
        RunEvent::invalid("jetsched-windows", "office", 2, "the window is never open (weekly has no ranges)"),
        RunEvent {
            trigger: Some(1),
            ..RunEvent::invalid("jetsched-tasks", "email", 3, "triggers[1]: stream ORDERS does not exist")
        },
        RunEvent {
            schedule: Some("nightly".to_string()),
            bucket: Some("jetsched-backfills".to_string()),
            key: Some("march".to_string()),
            backfill: Some(BackfillReport {
                id: "march".to_string(),
                status: BackfillStatus::Running,
                progress: BackfillProgress {
                    total: 31,
                    fired: 2,
                    already_ran: 1,
                    skipped: 0,
                    cursor: Some(t("2026-03-03T01:30:00Z")),
                    by: "ticker-1".to_string(),
                    updated_at: t("2026-11-25T09:00:00Z"),
                },
            }),
            ..RunEvent::new(RunStatus::Backfill, "resize-image", None)
        },
    ] {
        assert_round_trip("run-event.json", &event);
    }

    // Run records: as created by a dispatcher, finished, a workflow run and one of its steps.
    let created = RunRecord::new("t.resize-image.q7", "resize-image", RunStatus::Queued, "default", 5, 7);
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
        replay_of: Some("t.resize-image.q3".to_string()),
        duration_ms: Some(12),
        output: Some("resized 3 images".to_string()),
        ..created.clone()
    };
    let workflow = RunRecord {
        run_id: "t.publish.q8".to_string(),
        task: "publish".to_string(),
        status: RunStatus::Started,
        attempt: 1,
        band: 0,
        workflow: Some(WorkflowState {
            payload: json!({"image": "a.png"}),
            steps: BTreeMap::from([
                (
                    "resize".to_string(),
                    StepState {
                        status: Some(RunStatus::Succeeded),
                        run_id: Some("t.publish.q8.resize".to_string()),
                        result: Some(json!({"thumb": "a-small.png"})),
                        error: None,
                    },
                ),
                (
                    "index".to_string(),
                    StepState {
                        status: Some(RunStatus::Skipped),
                        error: Some("upstream step resize failed".to_string()),
                        ..StepState::default()
                    },
                ),
                ("notify".to_string(), StepState::default()),
            ]),
        }),
        ..created.clone()
    };
    // A worker id of a long host name: the worker's own queue is longer than a name may be.
    let long_worker = format!("{}-4242", "h".repeat(63));
    let step = RunRecord {
        run_id: "t.publish.q8.resize.w1".to_string(),
        status: RunStatus::Succeeded,
        queue: format!("_w-{long_worker}"),
        band: 0,
        worker: Some(long_worker.clone()),
        parent: Some("t.publish.q8".to_string()),
        step: Some("resize".to_string()),
        result: Some(json!("not JSON, so as text")),
        ..created.clone()
    };
    let labelled = RunRecord { queue: "_l-1c9e04b2".to_string(), ..created.clone() };
    for record in [created, finished, workflow, step, labelled] {
        assert_round_trip("run-record.json", &record);
    }

    // Due fires: the smallest, and one with every field.
    for fire in [
        DueFire {
            schedule: "nightly".to_string(),
            scheduled_for: t("2026-11-25T02:30:00Z"),
            payload: Value::Null,
            task_def: None,
            not_before: None,
            overlap: Overlap::Allow,
            depends_on: None,
            timezone: None,
            revision: None,
        },
        DueFire {
            schedule: "tick".to_string(),
            scheduled_for: t("2026-11-25T02:30:00Z"),
            payload: json!({"bucket": "photos"}),
            task_def: Some(def.clone()),
            not_before: Some(t("2026-11-25T02:30:00.5Z")),
            overlap: Overlap::CancelPrevious,
            depends_on: Some(ScheduleDependency {
                schedule: "nightly".to_string(),
                wait: jetsched_contract::HumanDuration::from_secs(3600),
            }),
            timezone: Some("Europe/Berlin".to_string()),
            revision: Some(42),
        },
    ] {
        assert_round_trip("due-fire.json", &fire);
    }

    // Work items: a submission's, and a scheduled step's broadcast share.
    for item in [
        WorkItem {
            run_id: "t.resize-image.q7".to_string(),
            task: "resize-image".to_string(),
            def: def.clone(),
            payload: json!({"key": "a.png"}),
            schedule: None,
            scheduled_for: None,
            queued_at: Timestamp::now(),
            not_before: None,
            record_revision: 1,
            source_seq: 7,
            replay_of: Some("t.resize-image.q3".to_string()),
            parent: None,
            step: None,
            shard: None,
        },
        WorkItem {
            run_id: "s.etl.20261125T020000Z.load.w1".to_string(),
            task: "load".to_string(),
            def: TaskDef { routing: jetsched_contract::Routing::Broadcast, ..def.clone() },
            payload: Value::Null,
            schedule: Some("etl".to_string()),
            scheduled_for: Some(t("2026-11-25T02:00:00Z")),
            queued_at: Timestamp::now(),
            not_before: Some(t("2026-11-25T02:00:00Z")),
            record_revision: 42,
            source_seq: 8,
            replay_of: None,
            parent: Some("s.etl.20261125T020000Z".to_string()),
            step: Some("load".to_string()),
            shard: Some(Shard { index: 1, total: 3 }),
        },
    ] {
        assert_round_trip("work-item.json", &item);
    }

    // Workflow step messages.
    let start = StepStart {
        workflow_run: "t.publish.q8".to_string(),
        workflow: "publish".to_string(),
        step: "resize".to_string(),
        payload: json!({"image": "a.png"}),
        schedule: None,
        scheduled_for: None,
    };
    let scheduled = StepStart {
        payload: json!({"workflow": {"image": "a.png"}, "upstream": {"resize": null}}),
        schedule: Some("publish-nightly".to_string()),
        scheduled_for: Some(t("2026-11-25T02:30:00Z")),
        ..start.clone()
    };
    for start in [start, scheduled] {
        assert_round_trip("step-start.json", &start);
    }
    let succeeded = StepOutcome {
        workflow_run: "t.publish.q8".to_string(),
        step: "resize".to_string(),
        run_id: "t.publish.q8.resize".to_string(),
        status: RunStatus::Succeeded,
        result: Some(json!({"thumb": "a-small.png"})),
        error: None,
    };
    let dead =
        StepOutcome { status: RunStatus::Dead, result: None, error: Some("boom".to_string()), ..succeeded.clone() };
    for outcome in [succeeded, dead] {
        assert_round_trip("step-outcome.json", &outcome);
    }
}

#[test]
fn schema_defaults_are_the_parser_defaults() {
    // Writing out every documented default must give the value serde builds when the fields
    // are left out.
    let record = json!({"run_id": "r", "task": "t", "status": "queued", "attempt": 0, "queue": "default", "band": 5,
        "created_at": "2026-11-25T02:30:00Z", "updated_at": "2026-11-25T02:30:00Z", "source_seq": 1,
        "workflow": {"steps": {}}});
    assert_defaults::<RunRecord>("run-record.json", &record, "", "");
    assert_defaults::<RunRecord>("run-record.json", &record, "/workflow", "/$defs/workflow_state");

    let fire = json!({"schedule": "s", "scheduled_for": "2026-11-25T02:30:00Z", "depends_on": {"schedule": "x"}});
    assert_defaults::<DueFire>("due-fire.json", &fire, "", "");
    assert_defaults::<DueFire>("schedule.json", &fire, "/depends_on", "/$defs/depends_on");

    let item = json!({"run_id": "r", "task": "t", "def": {"handler": {"type": "builtin", "name": "n"}},
        "queued_at": "2026-11-25T02:30:00Z", "record_revision": 1, "source_seq": 1});
    assert_defaults::<WorkItem>("work-item.json", &item, "", "");

    let start = json!({"workflow_run": "w", "workflow": "wf", "step": "a"});
    assert_defaults::<StepStart>("step-start.json", &start, "", "");
}

//! Run ids and run records (the value under a run id in `jetsched-runs`).
//!
//! Run ids are deterministic so that a duplicate is recognised even after the
//! JetStream dedup window: a dispatcher creates the record with KV `create`,
//! which fails if a run with that id already exists.
//! - scheduled: `s.<schedule>.<nominal UTC, compact>`, e.g. `s.nightly.20261125T023000Z`;
//!   a fire that replaces one withdrawn by an edit adds `.r<revision>`
//! - submitted with `Nats-Msg-Id`: `t.<task>.m-<id>` (hashed if the id has
//!   characters a KV key cannot hold)
//! - submitted without: `t.<task>.q<inbox stream sequence>`
//! - started by an event trigger: a submission whose `Nats-Msg-Id` is
//!   [`trigger_msg_id`] (`<task>-<stream>-<sequence>`, a batch
//!   `<task>-<stream>-<first>-<last>`), so `t.<task>.m-<that>`
//!
//! All runs of a schedule share a key prefix: `nats kv ls jetsched-runs` and
//! watches on `s.nightly.>` find them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::RunStatus;

/// The run id of a schedule's fire at `nominal`.
pub fn scheduled_run_id(schedule: &str, nominal: Timestamp) -> String {
    format!("s.{schedule}.{}", compact_time(nominal))
}

/// The key filter that matches every run fired by `schedule` (its fires and
/// their re-fires after an edit).
pub fn schedule_runs_filter(schedule: &str) -> String {
    format!("s.{schedule}.>")
}

/// The run id of the fire at `nominal` that replaces a withdrawn one after
/// the schedule was edited to KV revision `revision`:
/// `s.<schedule>.<nominal>.r<revision>`.
pub fn refired_run_id(schedule: &str, nominal: Timestamp, revision: u64) -> String {
    format!("{}.r{revision}", scheduled_run_id(schedule, nominal))
}

/// The `Nats-Msg-Id` of a schedule's fire at `nominal`: `<schedule>@<RFC 3339>`.
pub fn due_msg_id(schedule: &str, nominal: Timestamp) -> String {
    format!("{schedule}@{nominal}")
}

/// The run id of a submission of `task`.
pub fn submitted_run_id(task: &str, msg_id: Option<&str>, inbox_seq: u64) -> String {
    match msg_id {
        Some(id) if !id.is_empty() => {
            let safe =
                id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
            if safe { format!("t.{task}.m-{id}") } else { format!("t.{task}.h-{:016x}", fnv1a(id.as_bytes())) }
        }
        _ => format!("t.{task}.q{inbox_seq}"),
    }
}

/// The `Nats-Msg-Id` of the submission an event trigger of `task` makes for
/// the message at sequence `first` of `stream` (a KV trigger: the bucket's
/// stream `KV_<bucket>`, the sequence being the key's revision), or for a
/// batch of messages from `first` to `last`. The task is part of it because
/// the inbox drops duplicates across every task; the run id is then
/// [`submitted_run_id`] of it.
pub fn trigger_msg_id(task: &str, stream: &str, first: u64, last: Option<u64>) -> String {
    match last {
        Some(last) => format!("{task}-{stream}-{first}-{last}"),
        None => format!("{task}-{stream}-{first}"),
    }
}

/// `20261125T023000Z`, with `_<nanos>` before the `Z` when not on a whole second.
fn compact_time(t: Timestamp) -> String {
    let dt = jiff::tz::TimeZone::UTC.to_datetime(t);
    let base = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    match dt.subsec_nanosecond() {
        0 => format!("{base}Z"),
        ns => format!("{base}_{ns:09}Z"),
    }
}

/// Stable 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A number in `[0, 1)` derived from `key`, for jitter every replica agrees on.
pub fn unit_hash(key: &str) -> f64 {
    (fnv1a(key.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

/// The state of one run, updated with compare-and-set on its KV revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run id (also the key).
    pub run_id: String,
    /// Task name.
    pub task: String,
    /// Schedule id of a scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Current status.
    pub status: RunStatus,
    /// Attempts started so far.
    pub attempt: u32,
    /// Queue it was dispatched to.
    pub queue: String,
    /// Priority band it was dispatched to.
    pub band: u8,
    /// Nominal fire time of a scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Timestamp>,
    /// When the dispatcher accepted it.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Start of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Inbox stream sequence of the message that created the run; a redelivery
    /// of that message carries the same sequence, a duplicate does not.
    pub source_seq: u64,
    /// Tasks stream sequence of the work message of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_seq: Option<u64>,
    /// Worker running or last running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Set by `runs cancel`; the worker stops the handler.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The dead run this one replays (`jetsched dlq replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// For a step run: the workflow run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a step run: its step name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a workflow run: where each step stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::workflow::WorkflowState>,
    /// For a run that succeeded: the handler's result (JSON, at most 64 KiB;
    /// a step's result also goes to the workflow's later steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_ids_are_kv_keys_and_deterministic() {
        let t: Timestamp = "2026-11-25T02:30:00Z".parse().unwrap();
        assert_eq!(scheduled_run_id("nightly", t), "s.nightly.20261125T023000Z");
        assert_eq!(due_msg_id("nightly", t), "nightly@2026-11-25T02:30:00Z");
        let sub: Timestamp = "2026-11-25T02:30:00.25Z".parse().unwrap();
        assert_eq!(scheduled_run_id("n", sub), "s.n.20261125T023000_250000000Z");
    }

    #[test]
    fn submission_ids_use_msg_id_or_sequence() {
        assert_eq!(submitted_run_id("resize", Some("order-42"), 7), "t.resize.m-order-42");
        assert_eq!(submitted_run_id("resize", None, 7), "t.resize.q7");
        let hashed = submitted_run_id("resize", Some("a b/c:d"), 7);
        assert!(hashed.starts_with("t.resize.h-") && hashed.len() == "t.resize.h-".len() + 16, "{hashed}");
        assert_eq!(hashed, submitted_run_id("resize", Some("a b/c:d"), 8));
    }

    #[test]
    fn trigger_ids_name_the_source_position() {
        assert_eq!(trigger_msg_id("email", "ORDERS", 42, None), "email-ORDERS-42");
        assert_eq!(trigger_msg_id("email", "ORDERS", 42, Some(50)), "email-ORDERS-42-50");
        let id = trigger_msg_id("email", "KV_config", 7, None);
        assert_eq!(submitted_run_id("email", Some(&id), 1), "t.email.m-email-KV_config-7");
    }

    #[test]
    fn unit_hash_is_in_range() {
        for k in ["a", "b", "run-1", ""] {
            let u = unit_hash(k);
            assert!((0.0..1.0).contains(&u));
        }
    }
}

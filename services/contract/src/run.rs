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

use crate::event::{RunEvent, RunStatus};
pub use crate::hash::{fnv1a, unit_hash};

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

/// The run id of share `index` of broadcast run `run_id` (one per matching
/// worker, numbered from 0): `<run>.w<index>`.
pub fn share_run_id(run_id: &str, index: u32) -> String {
    format!("{run_id}.w{index}")
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
    /// Handler run time of the last finished attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Captured output of the last finished attempt (exec), truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// For `failed` with an attempt to come: when it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// For a task with a rate limit: the start of the period the limiter
    /// counted the current attempt's start in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window: Option<Timestamp>,
    /// For a run that succeeded: the handler's result (JSON, at most 64 KiB;
    /// a step's result also goes to the workflow's later steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The W3C trace id of the run's trace (the submission's, continued by
    /// every service and passed to handlers as `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl RunRecord {
    /// A new record in `status`, created now, with nothing else set.
    pub fn new(run_id: &str, task: &str, status: RunStatus, queue: &str, band: u8, source_seq: u64) -> RunRecord {
        let now = Timestamp::now();
        RunRecord {
            run_id: run_id.to_string(),
            task: task.to_string(),
            schedule: None,
            status,
            attempt: 0,
            queue: queue.to_string(),
            band,
            scheduled_for: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: status.is_terminal().then_some(now),
            error: None,
            source_seq,
            task_seq: None,
            worker: None,
            cancel_requested: false,
            replay_of: None,
            parent: None,
            step: None,
            workflow: None,
            duration_ms: None,
            output: None,
            retry_at: None,
            rate_window: None,
            result: None,
            trace_id: None,
        }
    }

    /// For a step run that has ended: the outcome its workflow needs.
    pub fn step_outcome(&self) -> Option<crate::workflow::StepOutcome> {
        let (Some(parent), Some(step)) = (&self.parent, &self.step) else { return None };
        self.status.is_terminal().then(|| crate::workflow::StepOutcome {
            workflow_run: parent.clone(),
            step: step.clone(),
            run_id: self.run_id.clone(),
            status: self.status,
            result: self.result.clone(),
            error: self.error.clone(),
        })
    }

    /// The event that announces this state of the run: every transition a
    /// record makes is published as its event, built from the record alone.
    pub fn event(&self) -> RunEvent {
        RunEvent {
            schedule: self.schedule.clone(),
            attempt: self.attempt,
            at: self.updated_at,
            scheduled_for: self.scheduled_for,
            error: self.error.clone(),
            duration_ms: self.duration_ms,
            queue: Some(self.queue.clone()),
            worker: self.worker.clone(),
            output: self.output.clone(),
            workflow_run: self.parent.clone(),
            step: self.step.clone(),
            retry_at: self.retry_at,
            rate_window: self.rate_window,
            ..RunEvent::new(self.status, &self.task, Some(self.run_id.clone()))
        }
    }
}

/// A change of a run record that its state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run_id} cannot go from {} to {to}: {why}", from.map_or("nothing", RunStatus::as_str))]
pub struct IllegalTransition {
    /// The run.
    pub run_id: String,
    /// Where it stands (`None`: no record yet).
    pub from: Option<RunStatus>,
    /// Where the change would take it.
    pub to: RunStatus,
    /// Why not.
    pub why: &'static str,
}

/// The run state machine, in one table: may a record in `from` (`None`: no
/// record yet) be written as `to`? A write that keeps the status (a cancel
/// request, a workflow step's progress, the next attempt) is a transition
/// too and follows the same table.
///
/// ```text
/// (none)  -> queued | started (a workflow) | skipped | dead | cancelled (a withdrawn fire)
/// queued  -> queued | started | succeeded | failed | dead | cancelled | expired | skipped
/// started -> started | succeeded | failed | dead | cancelled | skipped
/// failed  -> failed | started | dead | cancelled | skipped
/// succeeded, dead, skipped, cancelled, expired -> nothing (ended)
/// ```
/// `rejected`, `missed` and `invalid` are reports, never a record's status.
pub fn check_transition(run_id: &str, from: Option<RunStatus>, to: RunStatus) -> Result<(), IllegalTransition> {
    use RunStatus::*;
    let why = match (from, to) {
        (_, Rejected | Missed | Invalid) => Some("that is a report, not a state of a run"),
        (Some(f), _) if f.is_terminal() => Some("the run has ended"),
        (None, Queued | Started | Skipped | Dead | Cancelled) => None,
        (None, _) => Some("a run starts queued (or ended by a gate, or a started workflow)"),
        (Some(Queued), Queued | Started | Succeeded | Failed | Dead | Cancelled | Expired | Skipped) => None,
        (Some(Started), Started | Succeeded | Failed | Dead | Cancelled | Skipped) => None,
        (Some(Started), _) => Some("a started attempt ends, it does not go back"),
        (Some(Failed), Failed | Started | Dead | Cancelled | Skipped) => None,
        (Some(Failed), _) => Some("a failed attempt is retried (started) or given up"),
        (Some(_), _) => Some("not a transition of the run state machine"),
    };
    match why {
        None => Ok(()),
        Some(why) => Err(IllegalTransition { run_id: run_id.to_string(), from, to, why }),
    }
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
    fn every_transition_follows_the_table() {
        use RunStatus::*;
        let allowed: &[(Option<RunStatus>, &[RunStatus])] = &[
            (None, &[Queued, Started, Skipped, Dead, Cancelled]),
            (Some(Queued), &[Queued, Started, Succeeded, Failed, Dead, Cancelled, Expired, Skipped]),
            (Some(Started), &[Started, Succeeded, Failed, Dead, Cancelled, Skipped]),
            (Some(Failed), &[Failed, Started, Dead, Cancelled, Skipped]),
        ];
        let froms = std::iter::once(None).chain(RunStatus::ALL.into_iter().map(Some));
        for from in froms {
            let ok = allowed.iter().find(|(f, _)| *f == from).map_or(&[][..], |(_, to)| *to);
            for to in RunStatus::ALL {
                let verdict = check_transition("r", from, to);
                if ok.contains(&to) {
                    assert_eq!(verdict, Ok(()), "{from:?} -> {to}");
                } else {
                    let err = verdict.expect_err(&format!("{from:?} -> {to} must be refused"));
                    let text = err.to_string();
                    assert!(text.starts_with("run r cannot go from "), "{text}");
                    assert!(text.contains(to.as_str()) && !err.why.is_empty(), "{text}");
                }
            }
        }
    }

    #[test]
    fn an_ended_run_says_so() {
        let err = check_transition("s.n.1", Some(RunStatus::Succeeded), RunStatus::Started).unwrap_err();
        assert_eq!(err.to_string(), "run s.n.1 cannot go from succeeded to started: the run has ended");
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

//! Run events, published on `<prefix>.event.<task>.<status>` to the events stream.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a run (or a definition) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted by a dispatcher and waiting for a worker.
    Queued,
    /// Cannot start yet, for the reason in `error` (no live worker has room
    /// for it, a rate or concurrency limit); it starts later, with no
    /// attempt used. Not a state of the run record: the run stays `queued`.
    Waiting,
    /// A worker started an attempt.
    Started,
    /// The handler succeeded.
    Succeeded,
    /// An attempt failed and will be retried.
    Failed,
    /// Gave up; a copy is in the DLQ.
    Dead,
    /// Not run, by rule (overlap, trigger rule, window policy).
    Skipped,
    /// Stopped on request.
    Cancelled,
    /// Not started within the task's `schedule_to_start`; kept in the DLQ.
    Expired,
    /// A submission that cannot be run (unknown task, malformed body); kept in the DLQ.
    Rejected,
    /// Occurrences of a schedule that were not fired (misfire policy).
    Missed,
    /// A schedule or task definition that cannot be used.
    Invalid,
    /// Progress of a backfill (not a run): started, advanced, done,
    /// cancelled or failed.
    Backfill,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 13] = [
        RunStatus::Queued,
        RunStatus::Waiting,
        RunStatus::Started,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Dead,
        RunStatus::Skipped,
        RunStatus::Cancelled,
        RunStatus::Expired,
        RunStatus::Rejected,
        RunStatus::Missed,
        RunStatus::Invalid,
        RunStatus::Backfill,
    ];

    /// The subject token and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Waiting => "waiting",
            RunStatus::Started => "started",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Dead => "dead",
            RunStatus::Skipped => "skipped",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Expired => "expired",
            RunStatus::Rejected => "rejected",
            RunStatus::Missed => "missed",
            RunStatus::Invalid => "invalid",
            RunStatus::Backfill => "backfill",
        }
    }

    /// True for the statuses the events stream keeps: everything that needs
    /// an operator's attention or explains why a run did not happen. The
    /// rest (`queued`, `started`, `succeeded`) are published live only;
    /// their history is the run record's (`nats kv history jetsched-runs
    /// <run-id>`), so a successful run costs no stored event.
    pub fn is_kept(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Started | RunStatus::Succeeded)
    }

    /// True once nothing more will happen to the run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded
                | RunStatus::Dead
                | RunStatus::Skipped
                | RunStatus::Cancelled
                | RunStatus::Expired
                | RunStatus::Rejected
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step in the life of a run, or a report about a definition.
///
/// The first nine fields are the SPEC's and are always present (`null` when
/// they do not apply); the rest appear only when they carry something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The run; `null` for `invalid` and `missed` reports.
    pub run_id: Option<String>,
    /// Task name (for `invalid` schedule reports: the schedule's task, or the key).
    pub task: String,
    /// Schedule id when the run was fired by a schedule.
    pub schedule: Option<String>,
    /// What happened.
    pub status: RunStatus,
    /// Attempt number (0 before the first attempt).
    pub attempt: u32,
    /// When it happened.
    pub at: Timestamp,
    /// Nominal fire time of a scheduled run.
    pub scheduled_for: Option<Timestamp>,
    /// The reason, for waiting, failed, dead, rejected, skipped, cancelled and invalid.
    pub error: Option<String>,
    /// Handler run time of a finished attempt.
    pub duration_ms: Option<u64>,
    /// For `invalid`: the KV bucket of the bad definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// For `invalid`: the key of the bad definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `invalid`: the KV revision of the bad definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// For `missed`: how many occurrences were not fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Queue the run was dispatched to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Worker that ran the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Captured handler output (exec), truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// For a step run: the workflow run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run: Option<String>,
    /// For a step run: its step name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For `failed` with an attempt to come: when it is due (the attempt
    /// does not start before; it may start later, when a worker is free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// For `started` of a task with a rate limit: the start of the limit's
    /// period this start was counted in (at most `limit` starts per key
    /// share one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window: Option<Timestamp>,
    /// For `invalid` reports about a task's trigger: its index in `triggers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<u32>,
    /// For `backfill`: which backfill, where it stands and its counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<crate::backfill::BackfillReport>,
}

impl RunEvent {
    /// An event with the SPEC fields set and no extras.
    pub fn new(status: RunStatus, task: impl Into<String>, run_id: Option<String>) -> Self {
        RunEvent {
            run_id,
            task: task.into(),
            schedule: None,
            status,
            attempt: 0,
            at: Timestamp::now(),
            scheduled_for: None,
            error: None,
            duration_ms: None,
            bucket: None,
            key: None,
            revision: None,
            count: None,
            queue: None,
            worker: None,
            output: None,
            workflow_run: None,
            step: None,
            retry_at: None,
            rate_window: None,
            trigger: None,
            backfill: None,
        }
    }

    /// An `invalid` report for the definition under `key` in `bucket`. The
    /// event's subject token is the key when it is a valid name, else `_`.
    pub fn invalid(bucket: &str, key: &str, revision: u64, error: impl Into<String>) -> Self {
        let token = if crate::names::validate_name("key", key).is_ok() { key } else { "_" };
        RunEvent {
            bucket: Some(bucket.to_string()),
            key: Some(key.to_string()),
            revision: Some(revision),
            error: Some(error.into()),
            ..RunEvent::new(RunStatus::Invalid, token, None)
        }
    }

    /// A deterministic `Nats-Msg-Id`, so a re-published event is stored once.
    /// Reports without a run (`invalid`, `missed`) are named by what they
    /// are about: the definition's key and revision, or the schedule, the
    /// last occurrence and the count.
    pub fn msg_id(&self) -> String {
        if let Some(b) = &self.backfill {
            return format!("backfill:{}:{}:{}", b.id, b.status.as_str(), b.progress.handled());
        }
        if let (None, Some(i)) = (&self.run_id, self.trigger) {
            let key = self.key.as_deref().unwrap_or(&self.task);
            return format!("{}:{key}:{}:trigger{i}", self.status, self.revision.unwrap_or_default());
        }
        match (&self.run_id, self.status) {
            (Some(run), status) => format!("{run}:{status}:{}", self.attempt),
            (None, status) => format!(
                "{}:{}:{}:{}:{}",
                status,
                self.key.as_deref().or(self.schedule.as_deref()).unwrap_or(&self.task),
                self.revision.unwrap_or_default(),
                self.scheduled_for.map(|t| t.to_string()).unwrap_or_default(),
                self.count.unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_reports_of_two_schedules_of_one_task_have_distinct_ids() {
        let missed = |schedule: &str| RunEvent {
            schedule: Some(schedule.to_string()),
            scheduled_for: Some("2026-11-25T02:30:00Z".parse().unwrap()),
            count: Some(3),
            ..RunEvent::new(RunStatus::Missed, "resize-image", None)
        };
        assert_ne!(missed("a").msg_id(), missed("b").msg_id());
        assert_eq!(missed("a").msg_id(), missed("a").msg_id());
        assert_eq!(missed("a").msg_id(), "missed:a:0:2026-11-25T02:30:00Z:3");
    }
}

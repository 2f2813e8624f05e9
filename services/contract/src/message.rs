//! Bodies of the messages services pass each other: due fires (ticker ->
//! dispatcher) and work items (dispatcher -> worker). Submissions carry the
//! user's payload as their whole body and need no type.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::task::TaskDef;

/// Body of `<prefix>.due.<task>`: one fire of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DueFire {
    /// Schedule id.
    pub schedule: String,
    /// Nominal fire time (before jitter); with the schedule id it names the run.
    pub scheduled_for: Timestamp,
    /// The payload the schedule gives its runs.
    #[serde(default)]
    pub payload: Value,
    /// The definition, when the schedule carries it inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_def: Option<TaskDef>,
    /// Do not start before this instant (a fire staged ahead of time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The schedule's overlap policy.
    #[serde(default, skip_serializing_if = "crate::schedule::is_allow")]
    pub overlap: crate::schedule::Overlap,
    /// Another schedule's run for the same date that must succeed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<crate::schedule::ScheduleDependency>,
    /// The schedule's time zone (dates for `depends_on` are in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Set on a fire that replaces one withdrawn by an edit of its schedule:
    /// the KV revision of the definition it follows. The run id and the
    /// `Nats-Msg-Id` then carry it, so that the replacement is not taken for
    /// a duplicate of the withdrawn fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl WorkerInfo {
    /// What it has free by its own account: capacity less holdings, slots less busy ones.
    pub fn room(&self) -> crate::resources::Room {
        crate::resources::Room {
            resources: self.capacity.minus(&self.held),
            slots: u64::from(self.slots.saturating_sub(self.busy)),
        }
    }
}

impl DueFire {
    /// The id of the run this fire starts.
    pub fn run_id(&self) -> String {
        match self.revision {
            None => crate::run::scheduled_run_id(&self.schedule, self.scheduled_for),
            Some(rev) => crate::run::refired_run_id(&self.schedule, self.scheduled_for, rev),
        }
    }

    /// Its `Nats-Msg-Id`.
    pub fn msg_id(&self) -> String {
        match self.revision {
            None => crate::run::due_msg_id(&self.schedule, self.scheduled_for),
            Some(rev) => format!("{}#r{rev}", crate::run::due_msg_id(&self.schedule, self.scheduled_for)),
        }
    }
}

/// A worker's answer to a withdrawal request for a run it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReply {
    /// The run was staged and will never start; it ends `cancelled`.
    Withdrawn,
    /// Its handler was called already: it goes on.
    Started,
}

impl WithdrawReply {
    /// The reply body.
    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawReply::Withdrawn => "withdrawn",
            WithdrawReply::Started => "started",
        }
    }

    /// Reads a reply body.
    pub fn parse(body: &[u8]) -> Option<WithdrawReply> {
        match body {
            b"withdrawn" => Some(WithdrawReply::Withdrawn),
            b"started" => Some(WithdrawReply::Started),
            _ => None,
        }
    }
}

/// Body of `<prefix>.task.<queue>.<band>`: one run for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItem {
    /// The run id.
    pub run_id: String,
    /// Task name.
    pub task: String,
    /// The definition as it was when the run was dispatched.
    pub def: TaskDef,
    /// The run's input.
    #[serde(default)]
    pub payload: Value,
    /// Schedule id of a scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Nominal fire time of a scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Timestamp>,
    /// When the dispatcher queued it.
    pub queued_at: Timestamp,
    /// Do not start before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// KV revision of the run record as the dispatcher created it; the first
    /// attempt's compare-and-set needs no read.
    pub record_revision: u64,
    /// Inbox stream sequence the run came from (kept in the run record).
    pub source_seq: u64,
    /// The dead run this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// For a step run: the workflow run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a step run: its step name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a broadcast run: this worker's share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// One worker's share of a broadcast run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// 0-based index of this worker among the matching workers.
    pub index: u32,
    /// How many workers got a share.
    pub total: u32,
}

/// How many recently released runs a heartbeat lists.
pub const RELEASED_KEPT: usize = 64;

/// Value under a worker id in `jetsched-workers`, refreshed while the worker
/// lives; the bucket's TTL removes it when the worker stops refreshing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Slot capacity.
    pub slots: u32,
    /// Slots in use at the last heartbeat.
    pub busy: u32,
    /// Labels it offers to tasks' `requires.labels`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cores, memory and disk it offers to tasks' `requires` (a worker
    /// that names none offers none).
    #[serde(default)]
    pub capacity: crate::resources::Resources,
    /// What the runs it holds take of them (runs started, or admitted and
    /// about to start).
    #[serde(default)]
    pub held: crate::resources::Resources,
    /// The runs placed by room ([`crate::TaskDef::placed_by_room`]) that it
    /// holds now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holding: Vec<String>,
    /// The last runs placed by room that it let go, oldest first (at most
    /// [`RELEASED_KEPT`]). With `holding`, it tells a dispatcher which of the
    /// runs it placed the heartbeat accounts for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// Shutting down: it takes no new work and finishes what it runs;
    /// dispatchers route nothing more to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

//! What every inbox handler shares: the dispatcher's context, the message
//! being handled, the run it becomes, and the writes every path makes (a
//! new run record, a step outcome). `dispatch`, `gates` and `workflow` all
//! build on this; it builds on none of them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::Store;
use jetsched_contract::{DueFire, RunEvent, RunRecord, RunStatus, StepOutcome, TaskDef, Window};
pub use jetsched_runtime::Disposition;
use jetsched_runtime::{Publisher, RunStore, Stored};
use jiff::Timestamp;
use serde_json::Value;

use crate::cache::DefCache;
use crate::priority::Weights;
use crate::registry::Registry;

/// Everything a handler needs.
pub struct Ctx {
    /// Publishes work, events and dead letters.
    pub publisher: Publisher,
    /// Run records.
    pub runs: RunStore,
    /// Schedules (for dependencies between schedules).
    pub schedules: Store,
    /// Task definitions.
    pub tasks: DefCache<TaskDef>,
    /// Time windows.
    pub windows: DefCache<Window>,
    /// Live workers.
    pub registry: Registry,
    /// Priority formula.
    pub weights: Weights,
    /// Counters in `jetsched-rates` (the cluster-wide round-robin rotation).
    pub rates: Store,
    /// Schedules' overlap state (`jetsched-overlap`).
    pub overlap: Store,
}

/// The parts of an inbox message the handler reads.
pub struct Inbox<'a> {
    /// Subject it was published to.
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its body.
    pub payload: &'a bytes::Bytes,
    /// Its inbox stream sequence.
    pub seq: u64,
    /// How many times it has been delivered (1 the first time).
    pub delivered: u64,
}

pub(crate) const RETRY: Disposition = Disposition::Retry(Duration::from_secs(1));

/// Dispatching fails for reasons outside the run (a stream or bucket without
/// a leader, NATS unreachable): one line when it starts, one when it ends.
/// Each run retries through its inbox message's redelivery.
pub(crate) static DISPATCHING: jetsched_runtime::Outage = jetsched_runtime::Outage::new("dispatching");

/// A run about to be dispatched.
pub struct Accepted {
    /// Its run id.
    pub run_id: String,
    /// Task name.
    pub task: String,
    /// Its definition.
    pub def: Arc<TaskDef>,
    /// Its input.
    pub payload: Value,
    /// Schedule that fired it.
    pub schedule: Option<String>,
    /// Nominal fire time.
    pub scheduled_for: Option<Timestamp>,
    /// 0-10.
    pub importance: u8,
    /// Earliest start.
    pub not_before: Option<Timestamp>,
    /// Replay link.
    pub replay_of: Option<String>,
    /// Workflow run it is a step of.
    pub parent: Option<String>,
    /// Its step name.
    pub step: Option<String>,
    /// The fire, when a schedule fired it.
    pub due: Option<DueFire>,
}

impl Accepted {
    /// An event about this run that changes no record (a `waiting` report).
    pub fn event(&self, status: RunStatus, error: Option<String>) -> RunEvent {
        RunEvent {
            schedule: self.schedule.clone(),
            scheduled_for: self.scheduled_for,
            error,
            workflow_run: self.parent.clone(),
            step: self.step.clone(),
            ..RunEvent::new(status, &self.task, Some(self.run_id.clone()))
        }
    }
}

/// A new record for `a` (or one of its shares).
pub(crate) fn new_record(a: &Accepted, run_id: &str, queue: &str, band: u8, seq: u64, status: RunStatus) -> RunRecord {
    RunRecord {
        schedule: a.schedule.clone(),
        scheduled_for: a.scheduled_for,
        replay_of: a.replay_of.clone(),
        parent: a.parent.clone(),
        step: a.step.clone(),
        trace_id: jetsched_runtime::trace::current_trace_id(),
        ..RunRecord::new(run_id, &a.task, status, queue, band, seq)
    }
}

/// What creating a run's record found.
pub(crate) enum Created {
    /// Created now (and announced).
    New(Stored),
    /// Created by an earlier try at this very message (a dispatcher died
    /// before acking), still where that try left it: finish its job
    /// (publishing again is harmless: message ids).
    Again(Stored),
    /// A duplicate of an existing run, or this message's run moved on.
    Duplicate,
}

/// Creates the record (the exactly-once gate); the run store announces it.
pub(crate) async fn create_record(ctx: &Ctx, record: RunRecord) -> anyhow::Result<Created> {
    let (seq, status) = (record.source_seq, record.status);
    Ok(match ctx.runs.create(record).await? {
        Ok(stored) => Created::New(stored),
        Err(existing) if existing.record.source_seq == seq && existing.record.status == status => {
            Created::Again(existing)
        }
        Err(_) => Created::Duplicate,
    })
}

/// Tells workflow run `parent` that its `step` (a run of `task`) reached `status`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn report_step(
    ctx: &Ctx,
    task: &str,
    parent: &str,
    step: &str,
    run_id: &str,
    status: RunStatus,
    result: Option<Value>,
    error: Option<String>,
) -> anyhow::Result<()> {
    let outcome = StepOutcome {
        workflow_run: parent.to_string(),
        step: step.to_string(),
        run_id: run_id.to_string(),
        status,
        result,
        error,
    };
    Ok(ctx.runs.report_step(task, &outcome).await?)
}

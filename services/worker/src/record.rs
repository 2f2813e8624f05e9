//! The worker's side of the run state machine, through the run store: a
//! worker claims an attempt only if the record is where it expects, so a
//! duplicate copy of a work message, a run finished elsewhere, or a
//! cancellation is noticed before the handler runs.
//!
//! A first delivery of a run that is due now is claimed without a write:
//! the record is read, and if it is the dispatcher's `queued` record the
//! attempt starts, announced `started` live; the start is stored only if
//! the handler is still running after `--record-started-after` (so a short
//! run costs no write between `queued` and its end). Every other claim (a
//! redelivery, a retry, a staged run) stores `started` first, with the
//! attempt and the tasks-stream sequence of the message that holds it.

use jetsched_contract::{RunRecord, RunStatus, WorkItem};
use jetsched_runtime::{Change, Known, RunStore, RunStoreError, Stored};
use jiff::Timestamp;

/// A run this worker holds for an attempt (or to end it).
#[derive(Debug, Clone)]
pub struct Held {
    /// The run as this attempt sees it (`started`, with its attempt number).
    pub record: RunRecord,
    /// What the runs bucket holds: the same record once the start is
    /// stored, else the record the attempt started from.
    pub stored: Stored,
}

impl Held {
    /// Held as stored (nothing of this worker's own is unwritten).
    fn as_stored(stored: Stored) -> Held {
        Held { record: stored.record.clone(), stored }
    }

    /// True once the attempt's start is in the runs bucket.
    pub fn start_is_stored(&self) -> bool {
        self.stored.record.status == self.record.status && self.stored.record.attempt == self.record.attempt
    }
}

/// What the worker may do with a delivered work message.
#[derive(Debug)]
pub enum Claim {
    /// Run the attempt `held.record.attempt`.
    Run(Held),
    /// Nothing to do: another copy of the run owns it.
    Skip(String),
    /// Nothing to do: the run already finished (a redelivered copy).
    Finished(RunRecord),
    /// The run was cancelled before this attempt.
    Cancelled(Held),
    /// Every attempt has been used (the last one died with its worker).
    Exhausted(Held),
    /// Not started within the task's `schedule_to_start`.
    Expired(Held),
}

/// How a claim is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store `started` (the first try assumes the dispatcher's record, no read).
    Store,
    /// Read the record; start without a write if it is the dispatcher's.
    Read,
}

/// The record as the dispatcher wrote it (the first attempt's expectation).
/// Its trace id is the work message's trace (called while the message is
/// handled), which the dispatcher gave the message from the record.
fn as_queued(item: &WorkItem, queue: &str, band: u8) -> RunRecord {
    RunRecord {
        trace_id: jetsched_runtime::trace::current_trace_id(),
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        created_at: item.queued_at,
        updated_at: item.queued_at,
        replay_of: item.replay_of.clone(),
        parent: item.parent.clone(),
        step: item.step.clone(),
        ..RunRecord::new(&item.run_id, &item.task, RunStatus::Queued, queue, band, item.source_seq)
    }
}

/// What a claim found.
enum Found {
    Run(RunRecord),
    Skip(String),
    Finished(RunRecord),
    Cancelled,
    Exhausted,
    Expired,
}

/// Claims the next attempt of `item`, delivered as tasks-stream message
/// `task_seq`, starting from `read` when the caller has just read the record.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    runs: &RunStore,
    item: &WorkItem,
    queue: &str,
    band: u8,
    task_seq: u64,
    worker: &str,
    now: Timestamp,
    mode: Mode,
    read: Option<Stored>,
) -> Result<Claim, RunStoreError> {
    let queued = as_queued(item, queue, band);
    let decide = |current: Option<&RunRecord>| {
        // No record: it expired or was purged; start it afresh (a write).
        let missing = current.is_none();
        let current = current.unwrap_or(&queued);
        let found = if current.status.is_terminal() {
            Found::Finished(current.clone())
        } else if current.cancel_requested {
            Found::Cancelled
        } else if current.status == RunStatus::Started && current.task_seq != Some(task_seq) {
            Found::Skip("another copy of this run is in progress".to_string())
        } else if current.attempt >= item.def.retry.max_attempts {
            Found::Exhausted
        } else if current.attempt == 0
            && let Some(limit) = item.def.schedule_to_start
            && now.duration_since(item.queued_at)
                > jiff::SignedDuration::try_from(limit.0).unwrap_or(jiff::SignedDuration::MAX)
        {
            Found::Expired
        } else {
            Found::Run(RunRecord {
                status: RunStatus::Started,
                attempt: current.attempt + 1,
                started_at: Some(now),
                updated_at: now,
                task_seq: Some(task_seq),
                worker: Some(worker.to_string()),
                duration_ms: None,
                output: None,
                retry_at: None,
                rate_window: None,
                ..current.clone()
            })
        };
        match found {
            Found::Run(next) if mode == Mode::Store || missing || current.status != RunStatus::Queued => {
                Change::Write(next.clone(), Found::Run(next))
            }
            other => Change::Keep(other),
        }
    };
    let known = match (mode, read) {
        (_, Some(stored)) => Known::Is(stored),
        (Mode::Store, None) if item.record_revision > 0 => {
            Known::Is(Stored { record: queued.clone(), revision: item.record_revision })
        }
        (_, None) => Known::Read,
    };
    // A staged claim is announced when the run is released, not now: the
    // start event goes out when the handler starts (see `announce_start`).
    let (found, stored) = runs.update_quietly(&item.run_id, known, decide).await?;
    let stored = match stored {
        Some(s) => s,
        // No record and nothing written: cannot happen (a missing record
        // is started afresh), but never run without one.
        None => return Ok(Claim::Skip("the run has no record".to_string())),
    };
    Ok(match found {
        Found::Run(record) => Claim::Run(Held { record, stored }),
        Found::Skip(why) => Claim::Skip(why),
        Found::Finished(record) => Claim::Finished(record),
        Found::Cancelled => Claim::Cancelled(Held::as_stored(stored)),
        Found::Exhausted => Claim::Exhausted(Held::as_stored(stored)),
        Found::Expired => Claim::Expired(Held::as_stored(stored)),
    })
}

/// Stores the start of an attempt that began without a write (it has been
/// running for a while), unless the record changed meanwhile.
pub async fn store_start(runs: &RunStore, held: &mut Held) -> Result<(), RunStoreError> {
    if held.start_is_stored() {
        return Ok(());
    }
    let base = held.stored.record.clone();
    let started = held.record.clone();
    let (_, stored) = runs
        .update_quietly(&held.record.run_id, Known::Is(held.stored.clone()), |current| match current {
            Some(c) if *c == base => Change::Write(started.clone(), ()),
            _ => Change::Keep(()),
        })
        .await?;
    if let Some(stored) = stored {
        held.stored = stored;
    }
    Ok(())
}

/// How an attempt (or a run that never started) ends.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// The new status (`succeeded`, `failed`, `dead`, `cancelled`, `expired`).
    pub status: Option<RunStatus>,
    /// The reason, for anything but success.
    pub error: Option<String>,
    /// The handler's result.
    pub result: Option<serde_json::Value>,
    /// Handler run time.
    pub duration_ms: Option<u64>,
    /// Captured output (exec), truncated.
    pub output: Option<String>,
    /// For `failed`: how long until the next attempt is due (from when the
    /// failure is recorded: the record's `retry_at`).
    pub retry_after: Option<std::time::Duration>,
}

/// Writes how `held`'s attempt ended (its event is the caller's to send).
/// A cancel request that came while the handler ran is kept and does not
/// undo its result. `None` when the run had ended already (elsewhere).
pub async fn end(runs: &RunStore, held: &Held, ending: &Ending) -> Result<Option<Stored>, RunStoreError> {
    let status = ending.status.unwrap_or(RunStatus::Failed);
    let (ended, stored) = runs
        .update_quietly(&held.record.run_id, Known::Is(held.stored.clone()), |current| {
            let base = match current {
                Some(c) if c.status.is_terminal() => return Change::Keep(false),
                // The attempt started without a write: its start goes in now.
                Some(c) if c.status != RunStatus::Started && held.record.status == RunStatus::Started => {
                    RunRecord { cancel_requested: c.cancel_requested, ..held.record.clone() }
                }
                // Our own stored start: it began when the handler was called
                // (a staged run is stored started when it is claimed, ahead).
                Some(c) if c.attempt == held.record.attempt && c.task_seq == held.record.task_seq => {
                    RunRecord { started_at: held.record.started_at, ..c.clone() }
                }
                Some(c) => c.clone(),
                None => held.record.clone(),
            };
            let now = Timestamp::now();
            let retry_at = ending
                .retry_after
                .and_then(|d| jiff::SignedDuration::try_from(d).ok())
                .and_then(|d| now.checked_add(d).ok());
            let next = RunRecord {
                status,
                updated_at: now,
                retry_at,
                error: ending.error.clone(),
                result: ending.result.clone().or(base.result.clone()),
                duration_ms: ending.duration_ms,
                output: ending.output.clone(),
                finished_at: status.is_terminal().then_some(now),
                ..base
            };
            Change::Write(next, true)
        })
        .await?;
    Ok(if ended { stored } else { None })
}

//! The run record's state machine, written with compare-and-set: a worker
//! claims an attempt only if the record is where it expects, so a duplicate
//! copy of a work message, a run finished elsewhere, or a cancellation is
//! noticed before the handler runs.

use async_nats::jetstream::kv::{CreateErrorKind, Store, UpdateErrorKind};
use jetsched_contract::{RunRecord, RunStatus, WorkItem};
use jiff::Timestamp;

/// What the worker may do with a delivered work message.
#[derive(Debug)]
pub enum Claim {
    /// Run attempt `record.attempt`; `revision` is the record's KV revision.
    Run { record: RunRecord, revision: u64 },
    /// Nothing to do: another copy of the run owns it.
    Skip(String),
    /// Nothing to do: the run already finished (a redelivered copy).
    Finished(RunRecord),
    /// The run was cancelled before this attempt.
    Cancelled { record: RunRecord, revision: u64 },
    /// Every attempt has been used (the last one died with its worker).
    Exhausted { record: RunRecord, revision: u64 },
    /// Not started within the task's `schedule_to_start`.
    Expired { record: RunRecord, revision: u64 },
}

/// The record as the dispatcher wrote it (the first attempt's expectation).
fn as_queued(item: &WorkItem, queue: &str, band: u8) -> RunRecord {
    RunRecord {
        run_id: item.run_id.clone(),
        task: item.task.clone(),
        schedule: item.schedule.clone(),
        status: RunStatus::Queued,
        attempt: 0,
        queue: queue.to_string(),
        band,
        scheduled_for: item.scheduled_for,
        created_at: item.queued_at,
        updated_at: item.queued_at,
        started_at: None,
        finished_at: None,
        error: None,
        source_seq: item.source_seq,
        task_seq: None,
        worker: None,
        cancel_requested: false,
        replay_of: item.replay_of.clone(),
        parent: item.parent.clone(),
        step: item.step.clone(),
        workflow: None,
        result: None,
    }
}

/// Claims the next attempt of `item`, delivered as tasks-stream message `task_seq`.
pub async fn claim(
    runs: &Store,
    item: &WorkItem,
    queue: &str,
    band: u8,
    task_seq: u64,
    worker: &str,
    now: Timestamp,
) -> anyhow::Result<Claim> {
    // First try: the record is as the dispatcher left it. No read needed.
    let mut current = as_queued(item, queue, band);
    let mut revision = item.record_revision;
    for _ in 0..8 {
        if current.status.is_terminal() {
            return Ok(Claim::Finished(current));
        }
        if current.cancel_requested {
            return Ok(Claim::Cancelled { record: current, revision });
        }
        if current.status == RunStatus::Started && current.task_seq != Some(task_seq) {
            return Ok(Claim::Skip("another copy of this run is in progress".to_string()));
        }
        let max = item.def.retry.max_attempts;
        if current.attempt >= max {
            return Ok(Claim::Exhausted { record: current, revision });
        }
        let waited = now.duration_since(item.queued_at);
        if current.attempt == 0
            && let Some(limit) = item.def.schedule_to_start
            && waited > jiff::SignedDuration::try_from(limit.0).unwrap_or(jiff::SignedDuration::MAX)
        {
            return Ok(Claim::Expired { record: current, revision });
        }
        let next = RunRecord {
            status: RunStatus::Started,
            attempt: current.attempt + 1,
            started_at: Some(now),
            updated_at: now,
            task_seq: Some(task_seq),
            worker: Some(worker.to_string()),
            ..current.clone()
        };
        match write(runs, &next, revision).await? {
            Some(rev) => return Ok(Claim::Run { record: next, revision: rev }),
            None => match read(runs, &item.run_id).await? {
                Some((rec, rev)) => {
                    current = rec;
                    revision = rev;
                }
                // The record expired or was purged: start it afresh.
                None => {
                    current = as_queued(item, queue, band);
                    revision = 0;
                }
            },
        }
    }
    anyhow::bail!("run record {} keeps changing under us", item.run_id)
}

/// Moves the record to a new state with `change`, re-reading and re-applying
/// on conflict. A concurrent cancel request is kept. Returns the new revision.
pub async fn transition(
    runs: &Store,
    record: &mut RunRecord,
    revision: &mut u64,
    change: impl Fn(&mut RunRecord),
) -> anyhow::Result<()> {
    for _ in 0..8 {
        let mut next = record.clone();
        change(&mut next);
        next.updated_at = Timestamp::now();
        if let Some(rev) = write(runs, &next, *revision).await? {
            *record = next;
            *revision = rev;
            return Ok(());
        }
        match read(runs, &record.run_id).await? {
            Some((fresh, rev)) => {
                *record = fresh;
                *revision = rev;
            }
            None => *revision = 0,
        }
    }
    anyhow::bail!("run record {} keeps changing under us", record.run_id)
}

/// The current record and revision, if any.
pub async fn read(runs: &Store, run_id: &str) -> anyhow::Result<Option<(RunRecord, u64)>> {
    match runs.entry(run_id).await? {
        Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok(Some((serde_json::from_slice(&entry.value)?, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Compare-and-set; `None` when the revision did not match.
async fn write(runs: &Store, record: &RunRecord, revision: u64) -> anyhow::Result<Option<u64>> {
    let value = serde_json::to_vec(record)?;
    let id = &record.run_id;
    if revision == 0 {
        return match runs.create(id, value.into()).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => anyhow::bail!("cannot create run record {id}: {e}"),
        };
    }
    match runs.update(id, value.into(), revision).await {
        Ok(rev) => Ok(Some(rev)),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => anyhow::bail!("cannot update run record {id}: {e}"),
    }
}

/// Marks a finished attempt.
pub fn finish(status: RunStatus, error: Option<String>) -> impl Fn(&mut RunRecord) {
    move |r: &mut RunRecord| {
        // A cancel that arrived while the handler ran does not undo its result.
        r.status = status;
        r.error = error.clone();
        if status.is_terminal() {
            r.finished_at = Some(Timestamp::now());
        }
    }
}

//! Withdrawing one staged fire whose schedule was deleted, paused or edited
//! before it started, through the run record (compare-and-set) and, for a
//! run a worker already holds, a request to that worker:
//!
//! - no record yet (the fire waits in the inbox): a `cancelled` record is
//!   created under its run id, so the dispatcher drops the fire as a
//!   duplicate; the ticker reports the `cancelled` event;
//! - `queued` (no worker has claimed it): the record is marked
//!   `cancel_requested`; the worker that claims it ends it `cancelled`;
//! - `started` (a worker claimed it and holds it until its time): the worker
//!   is asked on `<prefix>.withdraw.<run-id>`; it withdraws the run unless
//!   its handler was called already, and answers which;
//! - anything else: it ran or is running, and is left alone.
//!
//! Writes happen only here, when a schedule changes: a fire costs nothing
//! more on its way.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use jetsched_contract::{RunEvent, RunRecord, RunStatus, UNDISPATCHED_QUEUE, WithdrawReply};
use jetsched_runtime::Publisher;
use jiff::Timestamp;

use crate::plan::Withdrawal;

/// How long the worker holding a run has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a staged fire was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// It will not start.
    Yes,
    /// It started (or may have: its worker did not answer).
    No,
}

/// Withdraws `w`, a fire of `schedule`; `Err` when it should be tried again.
pub async fn withdraw(
    publisher: &Publisher,
    runs: &Store,
    schedule: &str,
    w: &Withdrawal,
) -> Result<Withdrawn, String> {
    for _ in 0..8 {
        let entry = runs.entry(&w.run_id).await.map_err(|e| format!("cannot read run {}: {e}", w.run_id))?;
        let current = match entry {
            Some(e) if e.operation == Operation::Put => Some((
                serde_json::from_slice::<RunRecord>(&e.value).map_err(|e| format!("malformed run record: {e}"))?,
                e.revision,
            )),
            _ => None,
        };
        let Some((mut record, revision)) = current else {
            let tombstone = tombstone(schedule, w);
            let value = serde_json::to_vec(&tombstone).map_err(|e| e.to_string())?;
            match runs.create(&w.run_id, value.into()).await {
                Ok(_) => {
                    let event = RunEvent {
                        schedule: Some(schedule.to_string()),
                        scheduled_for: Some(w.scheduled_for),
                        error: Some(w.reason.clone()),
                        ..RunEvent::new(RunStatus::Cancelled, &*w.task, Some(w.run_id.clone()))
                    };
                    publisher.event(&event).await.map_err(|e| e.to_string())?;
                    tracing::info!(run_id = %w.run_id, "staged fire withdrawn before dispatch");
                    return Ok(Withdrawn::Yes);
                }
                // The dispatcher created it meanwhile: look again.
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create run record {}: {e}", w.run_id)),
            }
        };
        match record.status {
            // Never claimed: ended by us (a retry of this), or by the
            // worker that found it marked.
            RunStatus::Cancelled if record.attempt == 0 => return Ok(Withdrawn::Yes),
            RunStatus::Queued if record.cancel_requested => return Ok(Withdrawn::Yes),
            RunStatus::Queued => {
                record.cancel_requested = true;
                record.updated_at = Timestamp::now();
                let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                match runs.update(&w.run_id, value.into(), revision).await {
                    Ok(_) => {
                        tracing::info!(run_id = %w.run_id, "queued staged fire withdrawn");
                        return Ok(Withdrawn::Yes);
                    }
                    // A worker claimed it meanwhile: look again.
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(format!("cannot update run record {}: {e}", w.run_id)),
                }
            }
            RunStatus::Started => return Ok(ask_worker(publisher, w).await),
            _ => return Ok(Withdrawn::No),
        }
    }
    Err(format!("run record {} keeps changing", w.run_id))
}

/// Asks the worker holding `w`'s run to withdraw it.
async fn ask_worker(publisher: &Publisher, w: &Withdrawal) -> Withdrawn {
    let client = publisher.js().client();
    let subject = publisher.names().withdraw_subject(&w.run_id);
    let answer = tokio::time::timeout(ASK_TIMEOUT, client.request(subject, w.reason.clone().into())).await;
    match answer {
        Ok(Ok(reply)) if WithdrawReply::parse(&reply.payload) == Some(WithdrawReply::Withdrawn) => {
            tracing::info!(run_id = %w.run_id, "staged run withdrawn from its worker");
            Withdrawn::Yes
        }
        Ok(Ok(_)) => Withdrawn::No,
        // No worker holds it (it died holding it: the run is redelivered
        // after its ack wait), or none answered in time.
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(run_id = %w.run_id, "no worker answered the withdrawal of a staged run; it may still start");
            Withdrawn::No
        }
    }
}

/// The record that keeps a withdrawn fire from being dispatched.
fn tombstone(schedule: &str, w: &Withdrawal) -> RunRecord {
    let now = Timestamp::now();
    RunRecord {
        run_id: w.run_id.clone(),
        task: w.task.to_string(),
        schedule: Some(schedule.to_string()),
        status: RunStatus::Cancelled,
        attempt: 0,
        queue: UNDISPATCHED_QUEUE.to_string(),
        band: 0,
        scheduled_for: Some(w.scheduled_for),
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: Some(now),
        error: Some(w.reason.clone()),
        source_seq: 0,
        task_seq: None,
        worker: None,
        cancel_requested: true,
        replay_of: None,
        parent: None,
        step: None,
        workflow: None,
        result: None,
    }
}

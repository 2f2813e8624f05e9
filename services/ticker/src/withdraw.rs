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

use jetsched_contract::{RunRecord, RunStatus, UNDISPATCHED_QUEUE, WithdrawReply};
use jetsched_runtime::{Change, Known, RunStore};

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

/// What the record said when the withdrawal looked at it.
enum Seen {
    /// Ended by us now (a `cancelled` record, or a cancel request on a queued one).
    Withdrawn,
    /// A worker holds it staged: ask it.
    Held,
    /// It ran, runs, or is retrying: left alone.
    Started,
}

/// Withdraws `w`, a fire of `schedule`; `Err` when it should be tried again.
pub async fn withdraw(runs: &RunStore, schedule: &str, w: &Withdrawal) -> Result<Withdrawn, String> {
    let (seen, _) = runs
        .update(&w.run_id, Known::Read, |current| match current {
            // No record yet: the fire waits in the inbox. A `cancelled`
            // record under its id makes the dispatcher drop it.
            None => Change::Write(tombstone(schedule, w), Seen::Withdrawn),
            Some(r) => match r.status {
                // Never claimed: ended by us (a retry of this), or by the
                // worker that finds it marked.
                RunStatus::Cancelled if r.attempt == 0 => Change::Keep(Seen::Withdrawn),
                RunStatus::Queued if r.cancel_requested => Change::Keep(Seen::Withdrawn),
                RunStatus::Queued => Change::Write(RunRecord { cancel_requested: true, ..r.clone() }, Seen::Withdrawn),
                RunStatus::Started => Change::Keep(Seen::Held),
                _ => Change::Keep(Seen::Started),
            },
        })
        .await
        .map_err(|e| e.to_string())?;
    match seen {
        Seen::Withdrawn => {
            tracing::info!(run_id = %w.run_id, "staged fire withdrawn");
            Ok(Withdrawn::Yes)
        }
        Seen::Held => Ok(ask_worker(runs, w).await),
        Seen::Started => Ok(Withdrawn::No),
    }
}

/// Asks the worker holding `w`'s run to withdraw it.
async fn ask_worker(runs: &RunStore, w: &Withdrawal) -> Withdrawn {
    let client = runs.client();
    let subject = runs.names().withdraw_subject(&w.run_id);
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
    RunRecord {
        schedule: Some(schedule.to_string()),
        scheduled_for: Some(w.scheduled_for),
        error: Some(w.reason.clone()),
        cancel_requested: true,
        ..RunRecord::new(&w.run_id, &w.task, RunStatus::Cancelled, UNDISPATCHED_QUEUE, 0, 0)
    }
}

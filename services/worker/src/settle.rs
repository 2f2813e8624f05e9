//! Ending an attempt: the run record (compare-and-set, announced as the
//! run's event by the run store), then, for a step of a workflow, its
//! outcome to the workflow. The work message is acked only when both are
//! stored.

use async_nats::HeaderMap;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use jetsched_contract::{RunRecord, RunStatus, WorkItem, headers};
use jetsched_runtime::Disposition;
use serde_json::Value;

use crate::ctx::{TRANSIENT, WorkerCtx};
use crate::record::{self, Ending, Held};

/// Gives up on a run (`dead` or `expired`): DLQ copy, then the record.
pub async fn give_up(ctx: &WorkerCtx, msg: &Message, item: &WorkItem, held: &Held, ending: Ending) -> Disposition {
    let status = ending.status.unwrap_or(RunStatus::Dead);
    let reason = ending.error.clone().unwrap_or_default();
    tracing::warn!(run_id = %item.run_id, task = %item.task, attempt = held.record.attempt, %status, %reason, "run given up");
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, item.run_id.as_str());
    h.insert(headers::ATTEMPT, held.record.attempt.to_string().as_str());
    let dead =
        ctx.publisher.dead_letter(&item.task, &item.run_id, &reason, msg.subject.as_str(), h, msg.payload.clone());
    if let Err(err) = dead.await {
        tracing::debug!(run_id = %item.run_id, %err, "cannot store dead letter; will retry");
        crate::running::RUNNING.failed(&format_args!("cannot store dead letter: {err}"));
        return TRANSIENT;
    }
    settle(ctx, msg, held, ending).await
}

/// Writes how the attempt ended, announces it, then (for a finished step)
/// reports the outcome to its workflow; `Ack` only if all are stored.
pub async fn settle(ctx: &WorkerCtx, msg: &Message, held: &Held, ending: Ending) -> Disposition {
    let stored = match record::end(&ctx.runs, held, &ending).await {
        Ok(Some(stored)) => stored.record,
        // Ended elsewhere meanwhile (another copy of the run).
        Ok(None) => return Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %held.record.run_id, %err, "cannot update run record; will retry");
            crate::running::RUNNING.failed(&format_args!("cannot update run record: {err}"));
            return TRANSIENT;
        }
    };
    if !announce(ctx, msg, &stored).await {
        return TRANSIENT;
    }
    if let Err(err) = ctx.runs.report_if_step(&stored).await {
        tracing::debug!(run_id = %stored.run_id, %err, "cannot report the step to its workflow; will retry");
        crate::running::RUNNING.failed(&format_args!("cannot report the step to its workflow: {err}"));
        return TRANSIENT;
    }
    Disposition::Ack
}

/// How long an attempt's end waits, holding its message, for its event to
/// be stored (the events stream without a leader) before it lets the
/// message go.
const ANNOUNCE_FOR: Duration = Duration::from_secs(300);

/// Announces the record's new state. A kept event (a failure) that cannot
/// be stored is tried again in place, the message kept in progress, so that
/// the next attempt does not start before its predecessor's failure is
/// stored (a redelivery could not tell it was not). `false` if it could not
/// be stored in time: the message is handed back (a finished run's
/// redelivery announces it again).
async fn announce(ctx: &WorkerCtx, msg: &Message, record: &RunRecord) -> bool {
    let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let until = tokio::time::Instant::now() + ANNOUNCE_FOR;
    loop {
        match ctx.runs.announce(record).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::debug!(run_id = %record.run_id, %err, "cannot publish run event; trying again");
                crate::running::RUNNING.failed(&format_args!("cannot publish run event: {err}"));
            }
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        let _ = msg.ack_with(AckKind::Progress).await;
        backoff.wait().await;
    }
}

/// Publishes a finished run's terminal event and workflow outcome again,
/// built from its record (a kept event's message id is the run, status and
/// attempt, so the events stream keeps one copy).
pub async fn report_finished(ctx: &WorkerCtx, record: &RunRecord) -> anyhow::Result<()> {
    ctx.runs.announce(record).await?;
    Ok(ctx.runs.report_if_step(record).await?)
}

/// The largest result a run record keeps.
pub const MAX_RECORDED_RESULT: usize = 64 * 1024;

/// A handler's result as JSON for a workflow's later steps: its JSON if it
/// is JSON, else its text; nothing past [`MAX_RECORDED_RESULT`].
pub fn result_json(result: &[u8]) -> Option<Value> {
    if result.is_empty() || result.len() > MAX_RECORDED_RESULT {
        return None;
    }
    serde_json::from_slice(result).ok().or_else(|| Some(Value::String(String::from_utf8_lossy(result).into_owned())))
}

/// An ending with `status` and `reason`.
pub fn ending(status: RunStatus, reason: impl Into<String>) -> Ending {
    Ending { status: Some(status), error: Some(reason.into()), ..Default::default() }
}

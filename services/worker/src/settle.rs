//! Ending an attempt: the run record first (compare-and-set), then the run
//! event, then, for a step of a workflow, its outcome to the workflow. The
//! work message is acked only when all of them are stored.

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use jetsched_contract::{RunEvent, RunRecord, RunStatus, StepOutcome, WorkItem, headers};
use serde_json::Value;

use crate::execute::{Disposition, TRANSIENT, WorkerCtx};
use crate::record;

/// Gives up on a run (`dead` or `expired`): record, DLQ copy, event.
#[allow(clippy::too_many_arguments)]
pub async fn give_up(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    record: &mut RunRecord,
    revision: &mut u64,
    status: RunStatus,
    reason: String,
    output: Option<String>,
    duration_ms: Option<u64>,
) -> Disposition {
    tracing::warn!(run_id = %item.run_id, task = %item.task, attempt = record.attempt, %status, %reason, "run given up");
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, item.run_id.as_str());
    h.insert(headers::ATTEMPT, record.attempt.to_string().as_str());
    let dead =
        ctx.publisher.dead_letter(&item.task, &item.run_id, &reason, msg.subject.as_str(), h, msg.payload.clone());
    if let Err(err) = dead.await {
        tracing::debug!(run_id = %item.run_id, %err, "cannot store dead letter; will retry");
        crate::execute::RUNNING.failed(&format_args!("cannot store dead letter: {err}"));
        return TRANSIENT;
    }
    let event = RunEvent {
        duration_ms,
        output,
        worker: Some(ctx.worker_id.clone()),
        ..event_for(item, record, status, Some(reason.clone()))
    };
    settle(ctx, record, revision, record::finish(status, Some(reason)), &event).await
}

/// Writes the record, then the event, then (for a finished step) the
/// outcome to its workflow; `Ack` only if all are stored.
pub async fn settle(
    ctx: &WorkerCtx,
    record: &mut RunRecord,
    revision: &mut u64,
    change: impl Fn(&mut RunRecord),
    event: &RunEvent,
) -> Disposition {
    if let Err(err) = record::transition(&ctx.runs, record, revision, change).await {
        tracing::debug!(run_id = %record.run_id, %err, "cannot update run record; will retry");
        crate::execute::RUNNING.failed(&format_args!("cannot update run record: {err}"));
        return TRANSIENT;
    }
    if let Err(err) = ctx.publisher.event(event).await {
        tracing::debug!(run_id = %record.run_id, %err, "cannot publish run event; will retry");
        crate::execute::RUNNING.failed(&format_args!("cannot publish run event: {err}"));
        return TRANSIENT;
    }
    if record.status.is_terminal()
        && let Err(err) = report_step(ctx, record).await
    {
        tracing::debug!(run_id = %record.run_id, %err, "cannot report the step to its workflow; will retry");
        crate::execute::RUNNING.failed(&format_args!("cannot report the step to its workflow: {err}"));
        return TRANSIENT;
    }
    Disposition::Ack
}

/// Publishes a finished run's terminal event and workflow outcome again,
/// built from its record (the event's message id is the run, status and
/// attempt, so the events stream keeps one copy).
pub async fn report_finished(ctx: &WorkerCtx, item: &WorkItem, record: &RunRecord) -> anyhow::Result<()> {
    let duration_ms = match (record.started_at, record.finished_at) {
        (Some(s), Some(f)) => u64::try_from(f.duration_since(s).as_millis()).ok(),
        _ => None,
    };
    let event = RunEvent {
        duration_ms,
        worker: record.worker.clone(),
        ..event_for(item, record, record.status, record.error.clone())
    };
    ctx.publisher.event(&event).await?;
    report_step(ctx, record).await
}

/// For a finished step run: tells its workflow (idempotent: the message id
/// is the run id and status, and the workflow ignores repeats).
pub async fn report_step(ctx: &WorkerCtx, record: &RunRecord) -> anyhow::Result<()> {
    let (Some(parent), Some(step)) = (&record.parent, &record.step) else { return Ok(()) };
    let outcome = StepOutcome {
        workflow_run: parent.clone(),
        step: step.clone(),
        run_id: record.run_id.clone(),
        status: record.status,
        result: record.result.clone(),
        error: record.error.clone(),
    };
    let names = ctx.publisher.names();
    let id = format!("advance:{}:{}", record.run_id, record.status);
    ctx.publisher
        .publish(names.advance_subject(&record.task), HeaderMap::new(), &id, serde_json::to_vec(&outcome)?.into())
        .await?;
    Ok(())
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

pub fn event_for(item: &WorkItem, record: &RunRecord, status: RunStatus, error: Option<String>) -> RunEvent {
    RunEvent {
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        attempt: record.attempt,
        error,
        queue: Some(record.queue.clone()),
        workflow_run: item.parent.clone(),
        step: item.step.clone(),
        ..RunEvent::new(status, &item.task, Some(item.run_id.clone()))
    }
}

//! One delivered work message, start to finish: claim the attempt in the run
//! record, wait for its release time if it was staged ahead, call the handler
//! while keeping the message in progress, then map the outcome to exactly one
//! of ack, nak-with-delay or dead-letter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use async_nats::{Client, HeaderMap};
use jetsched_contract::{RunEvent, RunRecord, RunStatus, WorkItem, headers, run as runid};
use jetsched_runtime::Publisher;
use jetsched_runtime::metrics::{kv, metrics};
use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::cancel::Cancels;
use crate::handlers::exec::ExecPolicy;
use crate::handlers::{Builtins, Outcome};
use crate::invoke::{Attempt, invoke};
use crate::record::{self, Claim};

/// What a worker shares between runs.
pub struct WorkerCtx {
    /// For NATS function calls.
    pub client: Client,
    /// Events and dead letters.
    pub publisher: Publisher,
    /// `jetsched-runs`.
    pub runs: async_nats::jetstream::kv::Store,
    /// `jetsched-checkpoints`.
    pub checkpoints: async_nats::jetstream::kv::Store,
    /// This worker's id.
    pub worker_id: String,
    /// Exec allow-list.
    pub exec: ExecPolicy,
    /// Rust handlers.
    pub builtins: Builtins,
    /// The consumers' ack wait; in-progress acks go out at a third of it.
    pub ack_wait: Duration,
    /// Slot capacity.
    pub slots: Arc<Semaphore>,
    /// Room for runs held until their release time.
    pub staged: Arc<Semaphore>,
    /// Runs due within this are held in memory and released on time;
    /// later ones go back to the stream until then.
    pub stage_horizon: Duration,
    /// Runs on this worker that a cancel request can reach.
    pub cancels: Cancels,
}

/// The single decision about a message.
#[derive(Debug, PartialEq)]
pub enum Disposition {
    /// Done with it (succeeded, dead-lettered, skipped).
    Ack,
    /// Deliver again after the delay (retry, not-before, transient trouble).
    Nak(Duration),
}

const TRANSIENT: Disposition = Disposition::Nak(Duration::from_secs(1));

/// Handles one work message, holding `permit` (a slot) while it runs, in a
/// span that continues the run's trace.
pub async fn execute(ctx: &WorkerCtx, msg: Message, permit: OwnedSemaphorePermit) {
    let span = tracing::info_span!(
        "execute",
        otel.kind = "consumer",
        subject = %msg.subject,
        run_id = tracing::field::Empty,
        task = tracing::field::Empty,
        attempt = tracing::field::Empty
    );
    jetsched_runtime::trace::follow(&span, msg.headers.as_ref());
    async {
        let disposition = process(ctx, &msg, permit).await;
        let result = match disposition {
            Disposition::Ack => msg.ack().await,
            Disposition::Nak(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
        };
        if let Err(err) = result {
            tracing::warn!(%err, subject = %msg.subject, "cannot ack work message; it will be redelivered");
        }
    }
    .instrument(span)
    .await
}

async fn process(ctx: &WorkerCtx, msg: &Message, permit: OwnedSemaphorePermit) -> Disposition {
    let names = ctx.publisher.names();
    let task_seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let (queue, band) = names.parse_task_subject(msg.subject.as_str()).unwrap_or(("?", 0));
    let item: WorkItem = match serde_json::from_slice(&msg.payload) {
        Ok(item) => item,
        Err(err) => {
            let reason = format!("malformed work item: {err}");
            tracing::error!(subject = %msg.subject, %reason);
            let h = msg.headers.clone().unwrap_or_default();
            let id = format!("task-seq-{task_seq}");
            return match ctx
                .publisher
                .dead_letter("_", &id, &reason, msg.subject.as_str(), h, msg.payload.clone())
                .await
            {
                Ok(()) => Disposition::Ack,
                Err(_) => TRANSIENT,
            };
        }
    };
    let span = tracing::Span::current();
    span.record("run_id", item.run_id.as_str());
    span.record("task", item.task.as_str());
    let release = item.not_before.filter(|t| *t > Timestamp::now());
    if let Some(at) = release {
        let wait = at.duration_since(Timestamp::now()).unsigned_abs();
        if wait > ctx.stage_horizon {
            // Back to the stream until it is close; holding it would block a slot.
            return Disposition::Nak(wait - ctx.stage_horizon / 2);
        }
    }
    let registration = ctx.cancels.register(&item.run_id);
    let claim = match record::claim(&ctx.runs, &item, queue, band, task_seq, &ctx.worker_id, Timestamp::now()).await {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(run_id = %item.run_id, %err, "cannot claim run; will retry");
            return TRANSIENT;
        }
    };
    let (mut record, mut revision) = match claim {
        Claim::Run { record, revision } => (record, revision),
        Claim::Skip(reason) => {
            tracing::debug!(run_id = %item.run_id, %reason, "skipping work message");
            return Disposition::Ack;
        }
        Claim::Cancelled { mut record, mut revision } => {
            let event = event_for(&item, &record, RunStatus::Cancelled, Some("cancelled before it started".into()));
            return settle(
                ctx,
                &mut record,
                &mut revision,
                record::finish(RunStatus::Cancelled, event.error.clone()),
                &event,
            )
            .await;
        }
        Claim::Expired { mut record, mut revision } => {
            let reason = format!(
                "not started within schedule_to_start ({}) of being queued",
                item.def.schedule_to_start.unwrap_or_default()
            );
            return give_up(ctx, msg, &item, &mut record, &mut revision, RunStatus::Expired, reason, None, None).await;
        }
        Claim::Exhausted { mut record, mut revision } => {
            let reason = format!(
                "attempt {} did not finish (its worker was lost); no attempts left{}",
                record.attempt,
                record.error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
            return give_up(ctx, msg, &item, &mut record, &mut revision, RunStatus::Dead, reason, None, None).await;
        }
    };
    // A run staged ahead of its time gives its slot back while it waits.
    let permit = match release {
        Some(at) => match hold_until(ctx, msg, at, permit, &registration.token).await {
            Some(p) => p,
            None => {
                let event = event_for(&item, &record, RunStatus::Cancelled, Some("cancelled before it started".into()));
                return settle(
                    ctx,
                    &mut record,
                    &mut revision,
                    record::finish(RunStatus::Cancelled, event.error.clone()),
                    &event,
                )
                .await;
            }
        },
        None => permit,
    };
    let result = run_attempt(ctx, msg, &item, &mut record, &mut revision, &registration.token).await;
    drop(permit);
    result
}

/// Waits until `at` without holding a slot (bounded by the staging room),
/// keeping the message in progress; `None` if the run is cancelled meanwhile.
async fn hold_until(
    ctx: &WorkerCtx,
    msg: &Message,
    at: Timestamp,
    permit: OwnedSemaphorePermit,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let staged = ctx.staged.clone().try_acquire_owned().ok();
    let permit = if staged.is_some() {
        drop(permit);
        None
    } else {
        // No room to stage: wait holding the slot.
        Some(permit)
    };
    let wait = at.duration_since(Timestamp::now()).unsigned_abs();
    let deadline = tokio::time::Instant::now() + wait;
    let beat = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(beat) => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
    let permit = match permit {
        Some(p) => p,
        None => ctx.slots.clone().acquire_owned().await.ok()?,
    };
    drop(staged);
    Some(permit)
}

async fn run_attempt(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    record: &mut RunRecord,
    revision: &mut u64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Disposition {
    let attempt = record.attempt;
    tracing::Span::current().record("attempt", attempt);
    tracing::info!(run_id = %item.run_id, task = %item.task, attempt, "run started");
    let started = RunEvent { worker: Some(ctx.worker_id.clone()), ..event_for(item, record, RunStatus::Started, None) };
    // The handler does not wait for the event to be stored; the terminal
    // event is published only after it is, so the stream keeps their order.
    let started_ack = ctx.publisher.send_event(&started).await;
    let clock = Instant::now();
    let handler = tracing::info_span!(
        "handler",
        otel.kind = "client",
        handler = item.def.handler.as_ref().map(|h| h.kind()).unwrap_or("none"),
        run_id = %item.run_id,
        task = %item.task,
        attempt
    );
    let attempt_result = invoke(ctx, msg, item, attempt, cancel).instrument(handler).await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    match started_ack {
        Ok(ack) => match ack.await {
            Ok(_) => jetsched_runtime::publish::count_event(&started),
            Err(err) => tracing::warn!(run_id = %item.run_id, %err, "started event not stored"),
        },
        Err(err) => tracing::warn!(run_id = %item.run_id, %err, "cannot publish started event"),
    }
    let outcome = match attempt_result {
        Attempt::Done(outcome) => outcome,
        Attempt::Cancelled => {
            tracing::info!(run_id = %item.run_id, task = %item.task, attempt, "run cancelled");
            let event = RunEvent {
                duration_ms: Some(duration_ms),
                worker: Some(ctx.worker_id.clone()),
                ..event_for(item, record, RunStatus::Cancelled, Some("cancelled while running".into()))
            };
            return settle(ctx, record, revision, record::finish(RunStatus::Cancelled, event.error.clone()), &event)
                .await;
        }
    };
    let success = matches!(outcome, Outcome::Success { .. });
    metrics().handler_duration.record(
        clock.elapsed().as_secs_f64(),
        &[kv("task", item.task.clone()), kv("outcome", if success { "success" } else { "failure" })],
    );
    match outcome {
        Outcome::Success { output, .. } => {
            tracing::info!(run_id = %item.run_id, task = %item.task, attempt, duration_ms, "run succeeded");
            let event = RunEvent {
                duration_ms: Some(duration_ms),
                output,
                worker: Some(ctx.worker_id.clone()),
                ..event_for(item, record, RunStatus::Succeeded, None)
            };
            settle(ctx, record, revision, record::finish(RunStatus::Succeeded, None), &event).await
        }
        Outcome::Failure { error, retryable, retry_after, output }
            if retryable && attempt < item.def.retry.max_attempts =>
        {
            let spread = runid::unit_hash(&format!("{}:{attempt}", item.run_id));
            let delay = retry_after.unwrap_or_else(|| item.def.retry.backoff(attempt + 1, spread));
            tracing::warn!(run_id = %item.run_id, task = %item.task, attempt, %error, ?delay, "run failed; will retry");
            let event = RunEvent {
                duration_ms: Some(duration_ms),
                output,
                worker: Some(ctx.worker_id.clone()),
                ..event_for(item, record, RunStatus::Failed, Some(error.clone()))
            };
            match settle(ctx, record, revision, record::finish(RunStatus::Failed, Some(error)), &event).await {
                Disposition::Ack => {
                    metrics().retries.add(1, &[kv("task", item.task.clone())]);
                    Disposition::Nak(delay)
                }
                other => other,
            }
        }
        Outcome::Failure { error, retryable, output, .. } => {
            let reason = if retryable {
                format!("{error} (attempt {attempt} of {}, none left)", item.def.retry.max_attempts)
            } else {
                error
            };
            give_up(ctx, msg, item, record, revision, RunStatus::Dead, reason, output, Some(duration_ms)).await
        }
    }
}

/// Gives up on a run (`dead` or `expired`): record, DLQ copy, event.
#[allow(clippy::too_many_arguments)]
async fn give_up(
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
        tracing::warn!(run_id = %item.run_id, %err, "cannot store dead letter; will retry");
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

/// Writes the record, then the event; `Ack` only if both are stored.
async fn settle(
    ctx: &WorkerCtx,
    record: &mut RunRecord,
    revision: &mut u64,
    change: impl Fn(&mut RunRecord),
    event: &RunEvent,
) -> Disposition {
    if let Err(err) = record::transition(&ctx.runs, record, revision, change).await {
        tracing::warn!(run_id = %record.run_id, %err, "cannot update run record; will retry");
        return TRANSIENT;
    }
    match ctx.publisher.event(event).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::warn!(run_id = %record.run_id, %err, "cannot publish run event; will retry");
            TRANSIENT
        }
    }
}

fn event_for(item: &WorkItem, record: &RunRecord, status: RunStatus, error: Option<String>) -> RunEvent {
    RunEvent {
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        attempt: record.attempt,
        error,
        queue: Some(record.queue.clone()),
        ..RunEvent::new(status, &item.task, Some(item.run_id.clone()))
    }
}

//! One delivered work message, start to finish: claim the attempt in the run
//! record, call the handler while keeping the message in progress, then map
//! the outcome to exactly one of ack, nak-with-delay or dead-letter.

use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use async_nats::{Client, HeaderMap};
use jetsched_contract::{Handler, RunEvent, RunRecord, RunStatus, WorkItem, headers, run as runid};
use jetsched_runtime::Publisher;
use jetsched_runtime::metrics::{kv, metrics};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::handlers::exec::{self, ExecPolicy};
use crate::handlers::{Builtins, Invocation, Outcome, http, nats};
use crate::record::{self, Claim};

/// What a worker shares between runs.
pub struct WorkerCtx {
    /// For NATS function calls.
    pub client: Client,
    /// Events and dead letters.
    pub publisher: Publisher,
    /// `jetsched-runs`.
    pub runs: async_nats::jetstream::kv::Store,
    /// This worker's id.
    pub worker_id: String,
    /// Exec allow-list.
    pub exec: ExecPolicy,
    /// Rust handlers.
    pub builtins: Builtins,
    /// The consumers' ack wait; in-progress acks go out at a third of it.
    pub ack_wait: Duration,
}

/// The single decision about a message.
#[derive(Debug, PartialEq)]
enum Disposition {
    /// Done with it (succeeded, dead-lettered, skipped).
    Ack,
    /// Deliver again after the delay (retry, not-before, transient trouble).
    Nak(Duration),
}

const TRANSIENT: Disposition = Disposition::Nak(Duration::from_secs(1));

/// Handles one work message, in a span that continues the run's trace.
pub async fn execute(ctx: &WorkerCtx, msg: Message) {
    let span = tracing::info_span!(
        "execute",
        otel.kind = "consumer",
        subject = %msg.subject,
        run_id = tracing::field::Empty,
        task = tracing::field::Empty,
        attempt = tracing::field::Empty
    );
    jetsched_runtime::trace::follow(&span, msg.headers.as_ref());
    execute_traced(ctx, msg).instrument(span).await
}

async fn execute_traced(ctx: &WorkerCtx, msg: Message) {
    let disposition = process(ctx, &msg).await;
    let result = match disposition {
        Disposition::Ack => msg.ack().await,
        Disposition::Nak(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
    };
    if let Err(err) = result {
        tracing::warn!(%err, subject = %msg.subject, "cannot ack work message; it will be redelivered");
    }
}

async fn process(ctx: &WorkerCtx, msg: &Message) -> Disposition {
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
    if let Some(not_before) = item.not_before {
        let wait = not_before.duration_since(Timestamp::now());
        if wait.is_positive() {
            // Redelivered when due; holding it here would block a slot.
            return Disposition::Nak(wait.unsigned_abs());
        }
    }
    let claim = match record::claim(&ctx.runs, &item, queue, band, task_seq, &ctx.worker_id).await {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(run_id = %item.run_id, %err, "cannot claim run; will retry");
            return TRANSIENT;
        }
    };
    match claim {
        Claim::Skip(reason) => {
            tracing::debug!(run_id = %item.run_id, %reason, "skipping work message");
            Disposition::Ack
        }
        Claim::Cancelled { mut record, mut revision } => {
            let event = event_for(&item, &record, RunStatus::Cancelled, Some("cancelled before it started".into()));
            settle(ctx, &mut record, &mut revision, record::finish(RunStatus::Cancelled, event.error.clone()), &event)
                .await
        }
        Claim::Exhausted { mut record, mut revision } => {
            let reason = format!(
                "attempt {} did not finish (its worker was lost); no attempts left{}",
                record.attempt,
                record.error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
            dead(ctx, msg, &item, &mut record, &mut revision, reason, None, None).await
        }
        Claim::Run { record, revision } => run_attempt(ctx, msg, &item, record, revision).await,
    }
}

async fn run_attempt(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    mut record: RunRecord,
    mut revision: u64,
) -> Disposition {
    let attempt = record.attempt;
    tracing::Span::current().record("attempt", attempt);
    tracing::info!(run_id = %item.run_id, task = %item.task, attempt, "run started");
    let started =
        RunEvent { worker: Some(ctx.worker_id.clone()), ..event_for(item, &record, RunStatus::Started, None) };
    if let Err(err) = ctx.publisher.event(&started).await {
        tracing::warn!(run_id = %item.run_id, %err, "cannot publish started event");
    }
    let clock = Instant::now();
    let handler = tracing::info_span!(
        "handler",
        otel.kind = "client",
        handler = item.def.handler.as_ref().map(|h| h.kind()).unwrap_or("none"),
        run_id = %item.run_id,
        task = %item.task,
        attempt
    );
    let outcome = invoke(ctx, msg, item, attempt).instrument(handler).await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let result = if matches!(outcome, Outcome::Success { .. }) { "success" } else { "failure" };
    metrics()
        .handler_duration
        .record(clock.elapsed().as_secs_f64(), &[kv("task", item.task.clone()), kv("outcome", result)]);
    match outcome {
        Outcome::Success { output, .. } => {
            tracing::info!(run_id = %item.run_id, task = %item.task, attempt, duration_ms, "run succeeded");
            let event = RunEvent {
                duration_ms: Some(duration_ms),
                output,
                worker: Some(ctx.worker_id.clone()),
                ..event_for(item, &record, RunStatus::Succeeded, None)
            };
            settle(ctx, &mut record, &mut revision, record::finish(RunStatus::Succeeded, None), &event).await
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
                ..event_for(item, &record, RunStatus::Failed, Some(error.clone()))
            };
            match settle(ctx, &mut record, &mut revision, record::finish(RunStatus::Failed, Some(error)), &event).await
            {
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
            dead(ctx, msg, item, &mut record, &mut revision, reason, output, Some(duration_ms)).await
        }
    }
}

/// Gives up on a run: record, DLQ copy, `dead` event.
#[allow(clippy::too_many_arguments)]
async fn dead(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    record: &mut RunRecord,
    revision: &mut u64,
    reason: String,
    output: Option<String>,
    duration_ms: Option<u64>,
) -> Disposition {
    tracing::error!(run_id = %item.run_id, task = %item.task, attempt = record.attempt, %reason, "run dead-lettered");
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, item.run_id.as_str());
    h.insert(headers::ATTEMPT, record.attempt.to_string().as_str());
    if let Err(err) =
        ctx.publisher.dead_letter(&item.task, &item.run_id, &reason, msg.subject.as_str(), h, msg.payload.clone()).await
    {
        tracing::warn!(run_id = %item.run_id, %err, "cannot store dead letter; will retry");
        return TRANSIENT;
    }
    let event = RunEvent {
        duration_ms,
        output,
        worker: Some(ctx.worker_id.clone()),
        ..event_for(item, record, RunStatus::Dead, Some(reason.clone()))
    };
    settle(ctx, record, revision, record::finish(RunStatus::Dead, Some(reason)), &event).await
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

/// Calls the handler, sending in-progress acks while it runs and stopping it
/// at its timeout.
async fn invoke(ctx: &WorkerCtx, msg: &Message, item: &WorkItem, attempt: u32) -> Outcome {
    let timeout = item.def.timeout.0;
    let deadline =
        Timestamp::now().checked_add(SignedDuration::try_from(timeout).unwrap_or_default()).unwrap_or(Timestamp::MAX);
    let inv = Invocation {
        run_id: item.run_id.clone(),
        task: item.task.clone(),
        attempt,
        deadline,
        timeout,
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        payload: item.payload.clone(),
    };
    let stop = CancellationToken::new();
    let call = call_handler(ctx, item, &inv, stop.clone());
    tokio::pin!(call);
    let beat = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let expiry = tokio::time::sleep(timeout);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = heartbeat.tick() => {
                if let Err(err) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(run_id = %item.run_id, %err, "cannot extend the work message's ack deadline");
                }
            }
            _ = &mut expiry => break,
        }
    }
    // Over time: stop the handler (exec gets SIGTERM, then SIGKILL) and report.
    stop.cancel();
    let grace = ctx.exec.grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, &mut call).await;
    Outcome::retry(format!("timed out after {}", jetsched_contract::HumanDuration(timeout)))
}

async fn call_handler(ctx: &WorkerCtx, item: &WorkItem, inv: &Invocation, stop: CancellationToken) -> Outcome {
    match &item.def.handler {
        Some(Handler::Nats { subject }) => nats::call(&ctx.client, subject, inv, HeaderMap::new()).await,
        Some(Handler::Exec { command, env }) => exec::run(&ctx.exec, command, env, inv, stop).await,
        Some(Handler::Builtin { name }) => match ctx.builtins.get(name) {
            Some(f) => f(inv.clone()).await,
            None => Outcome::permanent(format!("no builtin handler {name:?} is registered in this worker")),
        },
        Some(Handler::Http { url, method, headers }) => http::call(url, method, headers, inv).await,
        None => Outcome::permanent("a workflow task has no handler of its own"),
    }
}

//! One delivered work message, start to finish: claim the attempt in the run
//! record, wait for its release time if it was staged ahead, call the handler
//! while keeping the message in progress, then map the outcome to exactly one
//! of ack, nak-with-delay or dead-letter.

use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use jetsched_contract::{Handler, RunEvent, RunStatus, WorkItem, run as runid};
use jetsched_runtime::metrics::{kv, metrics};
use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument as _;

use crate::cancel::Registration;
use crate::ctx::{Disposition, TRANSIENT, WorkerCtx};
use crate::handlers::Outcome;
use crate::invoke::{Ahead, Attempt, invocation, invoke};
use crate::limits::{self, Admission, SlotHold};
use crate::record::{self, Claim, Ending, Held, Mode};
use crate::release::{Prepared, Released, Staged};
use crate::running::RUNNING;
use crate::settle::{self, ending, give_up, settle};

/// Runs placed on this worker that need more than it offers (it restarted
/// with less under the same id): they wait in its queue until it has room.
static TOO_BIG: jetsched_runtime::Outage =
    jetsched_runtime::Outage::new("runs placed here that need more than this worker offers");

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
    let carried = jetsched_runtime::trace::Carried::from_headers(msg.headers.as_ref());
    let handled = async {
        let _busy = ctx.room.busy(1);
        // Boxed: a future is copied whole each time it moves (into its
        // wrappers, into the task, out of it when it ends), and the run is
        // most of this one.
        let disposition = Box::pin(process(ctx, &msg, permit)).await;
        let result = disposition.apply(&msg).await;
        if result.is_ok() && disposition == Disposition::Ack {
            RUNNING.recovered();
        }
        if let Err(err) = result {
            tracing::debug!(%err, "cannot ack work message; it will be redelivered");
            RUNNING.failed(&format_args!("cannot ack work message: {err}"));
        }
    };
    carried.run_in(span, handled).await
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
    let needed = item.def.requires.as_ref().map_or(1, |r| r.slots.max(1)) as usize;
    if needed > ctx.capacity {
        tracing::warn!(run_id = %item.run_id, needed, capacity = ctx.capacity, "run needs more slots than this worker has");
        return Disposition::Retry(Duration::from_secs(5));
    }
    let release = item.not_before.filter(|t| *t > Timestamp::now());
    if let Some(at) = release {
        let wait = at.duration_since(Timestamp::now()).unsigned_abs();
        if wait > ctx.stage_horizon {
            // Back to the stream until it is close; holding it would block a slot.
            return Disposition::Retry(wait - ctx.stage_horizon / 2);
        }
    }
    let need = item.def.need().resources;
    let placed = item.def.placed_by_room();
    if !ctx.room.capacity().covers(&need) {
        let capacity = ctx.room.capacity();
        tracing::debug!(run_id = %item.run_id, %need, %capacity, "run needs more than this worker offers");
        TOO_BIG.failed(&format_args!("run {} needs {need}; this worker offers {capacity}", item.run_id));
        return Disposition::Retry(Duration::from_secs(5));
    }
    if placed {
        TOO_BIG.recovered();
    }
    let registration = ctx.cancels.register(&item.run_id);
    let limits = item.def.concurrency.is_some() || item.def.rate_limit.is_some();
    // Claimed only once its room and limits allow it to start, so that a
    // wait uses no attempt.
    let limited = placed || limits;
    // A staged run is claimed before it waits, so that a herd's claims do
    // not pile up at its start time (unless limits must be checked first),
    // and a NATS function's request is built then too.
    let mut claimed = None;
    let mut ahead = None;
    let (permit, settle_after, call, span) = match release {
        None => {
            // Not staged: it starts now. (A withdrawal that came first ends
            // it; one later is answered `started`.)
            if !registration.hold.release() {
                return withdrawn(ctx, msg, &item, queue, band, task_seq).await;
            }
            (permit, None, None, None)
        }
        Some(at) => {
            let mut prepared = None;
            if !limited {
                let held = match claim(ctx, msg, &item, queue, band, task_seq, Mode::Store).await {
                    Ok(c) => c,
                    Err(d) => return d,
                };
                // A payload over the limit is not sent ahead: the attempt refuses it.
                let fits = ctx.sizes.check_payload(&item.payload).is_ok();
                if let (Some(Handler::Nats { subject }), true) = (&item.def.handler, fits) {
                    let inv = invocation(ctx, &item, held.record.attempt, at).await;
                    let (mut outbound, pending) = ctx.functions.prepare(subject, &inv);
                    if !jetsched_runtime::telemetry::tracing_recorded() {
                        // No handler span will be opened at the release (none
                        // is exported): the function joins the run's trace
                        // under this one.
                        outbound.trace(&tracing::Span::current());
                    }
                    let span = handler_span(&tracing::Span::current(), &item, held.record.attempt);
                    prepared = Some(Prepared { outbound, span: Box::new(span) });
                    ahead = Some((inv, pending));
                }
                claimed = Some(held);
            }
            let Some(Released { slot, call, span, settle_after }) =
                stage(ctx, msg, at, permit, &registration, prepared).await
            else {
                let Some(held) = claimed else {
                    // Not claimed yet: the claim below finds the cancel request.
                    return TRANSIENT;
                };
                return settle(ctx, msg, &held, ending(RunStatus::Cancelled, "cancelled before it started")).await;
            };
            let permit = match slot {
                Some(p) => p,
                // No slot was free at the instant: wait for one.
                None => match ctx.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return TRANSIENT,
                },
            };
            (permit, Some(settle_after), call, span)
        }
    };
    let (mut slot, mut rate_window) = (None, None);
    // The dispatcher saw room here a moment ago; it may be gone by now.
    let mut reservation = None;
    if placed {
        match ctx.room.try_reserve(&item.run_id, need) {
            Ok(r) => reservation = Some(r),
            Err(free) => {
                let why = format!(
                    "no room on worker {}: the run needs {need}; free: {free} (of {})",
                    ctx.worker_id,
                    ctx.room.capacity()
                );
                announce_wait(ctx, msg, &item, queue, why).await;
                return Disposition::Retry(room_wait(msg));
            }
        }
    }
    if limits {
        let names = ctx.publisher.names();
        let (task, def, payload, run_id) = (&item.task, &item.def, &item.payload, &item.run_id);
        match limits::admit(names, &ctx.slots_kv, &ctx.rates_kv, task, def, payload, run_id).await {
            Ok(Admission::Go { slot: hold, rate_window: window }) => (slot, rate_window) = (hold, window),
            Ok(Admission::Wait(d, why)) => {
                announce_wait(ctx, msg, &item, queue, why).await;
                return Disposition::Retry(d);
            }
            Err(err) => {
                tracing::debug!(run_id = %item.run_id, %err, "cannot check limits; will retry");
                RUNNING.failed(&format_args!("cannot check limits: {err}"));
                return TRANSIENT;
            }
        }
    }
    let mut held = match claimed {
        Some(c) => c,
        None => {
            // A first delivery of a run due now starts without a write.
            let first = msg.info().is_ok_and(|i| i.delivered == 1);
            let mode = if first && item.record_revision > 0 && !ctx.record_started_after.is_zero() {
                Mode::Read
            } else {
                Mode::Store
            };
            match claim(ctx, msg, &item, queue, band, task_seq, mode).await {
                Ok(c) => c,
                Err(d) => {
                    if let Some(s) = slot {
                        s.release().await;
                    }
                    return d;
                }
            }
        }
    };
    // A run that needs several slots waits here until they are free.
    let extra = if needed > 1 { ctx.slots.clone().acquire_many_owned(needed as u32 - 1).await.ok() } else { None };
    let _busy = ctx.room.busy(extra.as_ref().map_or(0, |p| p.num_permits()));
    let ahead = ahead.zip(call).map(|((inv, pending), sent)| Ahead { inv, pending, sent });
    let result = run_attempt(
        ctx,
        msg,
        &item,
        &mut held,
        Controls { cancel: &registration.token, slot: slot.as_deref_mut(), settle_after, ahead, span, rate_window },
    )
    .await;
    if let Some(s) = slot {
        s.release().await;
    }
    drop(reservation);
    drop(extra);
    drop(permit);
    result
}

/// How long a run placed here waits before it looks for room again: longer
/// the more often it has looked (its work message's deliveries), 100 ms to 2 s.
fn room_wait(msg: &Message) -> Duration {
    let looked = msg.info().map_or(1, |i| i.delivered).clamp(1, 6) as u32;
    Duration::from_millis(100 * 2u64.pow(looked - 1)).min(Duration::from_secs(2))
}

/// The span of one handler call, a child of `parent` (the run's `execute`
/// span), opened when it is called.
fn handler_span(
    parent: &tracing::Span,
    item: &WorkItem,
    attempt: u32,
) -> impl FnOnce() -> tracing::Span + Send + use<> {
    let parent = parent.clone();
    let kind = item.def.handler.as_ref().map(|h| h.kind()).unwrap_or("none");
    let (run_id, task) = (item.run_id.clone(), item.task.clone());
    move || {
        tracing::info_span!(
            parent: &parent,
            "handler",
            otel.kind = "client",
            handler = kind,
            run_id = %run_id,
            task = %task,
            attempt
        )
    }
}

/// Claims the next attempt; `Err` carries what to do when there is none to run.
async fn claim(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    queue: &str,
    band: u8,
    task_seq: u64,
    mode: Mode,
) -> Result<Held, Disposition> {
    let now = Timestamp::now();
    let claim = match record::claim(&ctx.runs, item, queue, band, task_seq, &ctx.worker_id, now, mode, None).await {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(run_id = %item.run_id, %err, "cannot claim run; will retry");
            RUNNING.failed(&format_args!("cannot claim run: {err}"));
            return Err(TRANSIENT);
        }
    };
    match claim {
        Claim::Run(held) => Ok(held),
        Claim::Skip(reason) => {
            tracing::debug!(run_id = %item.run_id, %reason, "skipping work message");
            Err(Disposition::Ack)
        }
        // A finished run delivered again: its record was stored, but the
        // event or the workflow's outcome that follow it may not have been
        // (the events stream had no leader, the worker died in between).
        // Both are idempotent: publish them again.
        Claim::Finished(record) => match settle::report_finished(ctx, &record).await {
            Ok(()) => Err(Disposition::Ack),
            Err(err) => {
                tracing::debug!(run_id = %item.run_id, %err, "cannot report a finished run again; will retry");
                RUNNING.failed(&format_args!("cannot report a finished run: {err}"));
                Err(TRANSIENT)
            }
        },
        Claim::Cancelled(held) => {
            Err(settle(ctx, msg, &held, ending(RunStatus::Cancelled, "cancelled before it started")).await)
        }
        Claim::Expired(held) => {
            let reason = format!(
                "not started within schedule_to_start ({}) of being queued",
                item.def.schedule_to_start.unwrap_or_default()
            );
            Err(give_up(ctx, msg, item, &held, ending(RunStatus::Expired, reason)).await)
        }
        Claim::Exhausted(held) => {
            let reason = format!(
                "attempt {} did not finish (its worker was lost); no attempts left{}",
                held.record.attempt,
                held.record.error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
            Err(give_up(ctx, msg, item, &held, ending(RunStatus::Dead, reason)).await)
        }
    }
}

/// Tells, once per work message (on its first delivery), that a run cannot
/// start yet and why: a `waiting` event. Later deliveries of the same
/// message wait again without a word (the stream would drop the copy within
/// its duplicate window anyway).
async fn announce_wait(ctx: &WorkerCtx, msg: &Message, item: &WorkItem, queue: &str, why: String) {
    tracing::debug!(run_id = %item.run_id, task = %item.task, reason = %why, "run waits");
    if msg.info().map_or(true, |i| i.delivered > 1) {
        return;
    }
    let event = RunEvent {
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        error: Some(why),
        queue: Some(queue.to_string()),
        worker: Some(ctx.worker_id.clone()),
        workflow_run: item.parent.clone(),
        step: item.step.clone(),
        ..RunEvent::new(RunStatus::Waiting, &item.task, Some(item.run_id.clone()))
    };
    if let Err(err) = ctx.publisher.event(&event).await {
        tracing::debug!(run_id = %item.run_id, %err, "cannot publish waiting event");
        RUNNING.failed(&format_args!("cannot publish waiting event: {err}"));
    }
}

/// A run withdrawn before it was claimed (a copy delivered again while its
/// schedule's ticker withdrew it): claimed only to be ended `cancelled`.
async fn withdrawn(ctx: &WorkerCtx, msg: &Message, item: &WorkItem, queue: &str, band: u8, seq: u64) -> Disposition {
    let held = match claim(ctx, msg, item, queue, band, seq, Mode::Store).await {
        Ok(c) => c,
        Err(d) => return d,
    };
    settle(ctx, msg, &held, ending(RunStatus::Cancelled, "withdrawn before it started")).await
}

/// Hands a run to the releaser and waits for its instant without holding a
/// slot (within the staging room), keeping the message in progress; `None`
/// if the run is cancelled meanwhile.
async fn stage(
    ctx: &WorkerCtx,
    msg: &Message,
    at: Timestamp,
    permit: OwnedSemaphorePermit,
    registration: &Registration,
    call: Option<Prepared>,
) -> Option<Released> {
    let (cancel, hold) = (&registration.token, registration.hold.clone());
    let room = ctx.staged.clone().try_acquire_owned().ok();
    // No room to stage: it waits holding its slot.
    let slot = if room.is_some() {
        drop(permit);
        None
    } else {
        Some(permit)
    };
    let (done, mut released) = oneshot::channel();
    if !ctx.releaser.stage(Staged { at, call, hold: hold.clone(), slot, done }) {
        return None;
    }
    let beat = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    let mut cancel_seen = false;
    let released = loop {
        tokio::select! {
            // Cancelled before its release: it never starts. Cancelled after:
            // it goes on and its handler is stopped like a running one's.
            _ = cancel.cancelled(), if !cancel_seen => {
                if hold.withdraw() || hold.is_withdrawn() {
                    return None;
                }
                cancel_seen = true;
            }
            r = &mut released => break r.ok()?,
            _ = tokio::time::sleep(beat) => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    drop(room);
    Some(released)
}

/// What steers one attempt from outside its handler.
struct Controls<'a> {
    /// Cancels the handler (the `cancel` subject, a drain).
    cancel: &'a tokio_util::sync::CancellationToken,
    /// The concurrency slot held for the run, renewed while it runs.
    slot: Option<&'a mut SlotHold>,
    /// For a staged run: not before this instant is its bookkeeping sent.
    settle_after: Option<tokio::time::Instant>,
    /// For a staged run: its NATS function call, built ahead.
    ahead: Option<Ahead>,
    /// The handler span, when the call went out already under it.
    span: Option<tracing::Span>,
    /// The rate-limit period the start was counted in.
    rate_window: Option<Timestamp>,
}

async fn run_attempt(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    held: &mut Held,
    controls: Controls<'_>,
) -> Disposition {
    let Controls { cancel, slot, settle_after, ahead, span, rate_window } = controls;
    let attempt = held.record.attempt;
    tracing::Span::current().record("attempt", attempt);
    tracing::debug!(run_id = %item.run_id, task = %item.task, attempt, "run started");
    let clock = Instant::now();
    let handler = span.unwrap_or_else(|| handler_span(&tracing::Span::current(), item, attempt)());
    // The handler is called first and the `started` event (live only) sent
    // right after: when many runs start at the same instant (a staged
    // herd), their requests are not queued behind their events. An attempt
    // that began without a write is stored `started` once it has run for
    // `record_started_after`; a short run's next write is its end.
    // The attempt starts now (a staged run was claimed ahead of its time).
    let now = Timestamp::now();
    held.record.started_at = Some(now);
    held.record.updated_at = now;
    held.record.rate_window = rate_window;
    let started = held.record.clone();
    let announce = async {
        if let Some(t) = settle_after {
            tokio::time::sleep_until(t).await;
        } else {
            tokio::task::yield_now().await;
        }
        if let Err(err) = ctx.runs.announce(&started).await {
            tracing::debug!(run_id = %item.run_id, %err, "cannot publish started event");
            RUNNING.failed(&format_args!("cannot publish started event: {err}"));
        }
    };
    let store_start = !held.start_is_stored();
    let mut unstored = held.clone();
    let record_start = async {
        tokio::time::sleep(ctx.record_started_after).await;
        // Boxed: most runs end before this write, so the run's future
        // (moved whole into its task) does not carry room for it.
        let result = Box::pin(record::store_start(&ctx.runs, &mut unstored)).await;
        (result, unstored)
    };
    let invoke = invoke(ctx, msg, item, attempt, cancel, slot, ahead).instrument(handler);
    tokio::pin!(invoke, announce, record_start);
    let (mut announced, mut recorded) = (false, !store_start);
    let attempt_result = loop {
        tokio::select! {
            r = &mut invoke => break r,
            _ = &mut announce, if !announced => announced = true,
            (result, now) = &mut record_start, if !recorded => {
                recorded = true;
                match result {
                    Ok(()) => *held = now,
                    Err(err) => {
                        tracing::debug!(run_id = %item.run_id, %err, "cannot record the run's start");
                        RUNNING.failed(&format_args!("cannot record the run's start: {err}"));
                    }
                }
            }
        }
    };
    if !announced {
        announce.await;
    }
    let duration_ms = clock.elapsed().as_millis() as u64;
    if let Some(t) = settle_after {
        tokio::time::sleep_until(t).await;
    }
    let outcome = match attempt_result {
        Attempt::Done(outcome) => outcome,
        Attempt::Cancelled => {
            tracing::info!(run_id = %item.run_id, task = %item.task, attempt, "run cancelled");
            let end =
                Ending { duration_ms: Some(duration_ms), ..ending(RunStatus::Cancelled, "cancelled while running") };
            return settle(ctx, msg, held, end).await;
        }
    };
    let success = matches!(outcome, Outcome::Success { .. });
    metrics().handler_duration.record(
        clock.elapsed().as_secs_f64(),
        &[kv("task", item.task.clone()), kv("outcome", if success { "success" } else { "failure" })],
    );
    match outcome {
        Outcome::Success { output, result } => {
            tracing::debug!(run_id = %item.run_id, task = %item.task, attempt, duration_ms, "run succeeded");
            // Kept in the record (`runs get`); a step's result also travels
            // to the workflow's later steps.
            let end = Ending {
                status: Some(RunStatus::Succeeded),
                result: settle::result_json(&result),
                duration_ms: Some(duration_ms),
                output,
                ..Default::default()
            };
            settle(ctx, msg, held, end).await
        }
        Outcome::Failure { error, retryable, retry_after, output }
            if retryable && attempt < item.def.retry.max_attempts =>
        {
            let spread = runid::unit_hash(&format!("{}:{attempt}", item.run_id));
            let delay = retry_after.unwrap_or_else(|| item.def.retry.backoff(attempt + 1, spread));
            tracing::info!(run_id = %item.run_id, task = %item.task, attempt, %error, ?delay, "run failed; will retry");
            // The message is handed back with this delay after the record is
            // stored, so the next attempt is never due before `retry_at`.
            let end = Ending {
                duration_ms: Some(duration_ms),
                output,
                retry_after: Some(delay),
                ..ending(RunStatus::Failed, error)
            };
            match settle(ctx, msg, held, end).await {
                Disposition::Ack => {
                    metrics().retries.add(1, &[kv("task", item.task.clone())]);
                    Disposition::Retry(delay)
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
            let end = Ending { duration_ms: Some(duration_ms), output, ..ending(RunStatus::Dead, reason) };
            give_up(ctx, msg, item, held, end).await
        }
    }
}

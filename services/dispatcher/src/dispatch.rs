//! Handling of one inbox message: validate it, resolve the task, pass the
//! gates (dependency, window, overlap), route it, create the run record (the
//! exactly-once gate) and publish the work and a `queued` event. Workflows
//! and step outcomes go to `crate::workflow`. Bad input is rejected into the
//! DLQ and acked, never retried.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use jetsched_contract::message::Shard;
use jetsched_contract::overlap::OverlapFire;
use jetsched_contract::{DueFire, InboxKind, RunEvent, RunStatus, StepStart, WorkItem, headers, run, validate_name};
use jiff::Timestamp;
use serde_json::Value;

use crate::ctx::{Accepted, Ctx, DISPATCHING, Disposition, Inbox, RETRY};
use crate::ctx::{Created, create_record, new_record, report_step};
use crate::gates::{self, Gate};
use crate::overlap;
use crate::priority::{band, effective_priority};
use crate::route::{self, Target, Unroutable};

/// Why a message cannot become a run.
pub struct Rejection {
    task: String,
    run_id: Option<String>,
    reason: String,
    step: Option<StepStart>,
}

/// Handles one inbox message.
pub async fn handle(ctx: &Ctx, msg: Inbox<'_>) -> Disposition {
    if let Some((InboxKind::Advance, _)) = ctx.publisher.names().parse_inbox_subject(msg.subject) {
        return crate::workflow::advance(ctx, &msg).await;
    }
    let accepted = match accept(ctx, &msg).await {
        Ok(Some(a)) => a,
        Ok(None) => return RETRY,
        Err(rejection) => return reject(ctx, &msg, rejection).await,
    };
    let span = tracing::Span::current();
    span.record("run_id", accepted.run_id.as_str());
    span.record("task", accepted.task.as_str());
    if accepted.def.steps.is_some() {
        // A scheduled workflow passes its schedule's gates (a workflow has
        // no window of its own: its steps have theirs).
        match passes_gates(ctx, &msg, &accepted, false).await {
            Ok(Gate::Go | Gate::NotBefore(_)) => {}
            Ok(Gate::Wait(d)) => return Disposition::Retry(d),
            Ok(Gate::Skip(reason)) => return finish_unrun(ctx, &msg, &accepted, RunStatus::Skipped, reason).await,
            Ok(Gate::Fail(reason)) => return finish_unrun(ctx, &msg, &accepted, RunStatus::Dead, reason).await,
            Err(err) => return gates_failed(&accepted, &err),
        }
        return crate::workflow::start(ctx, &msg, accepted).await;
    }
    dispatch(ctx, &msg, accepted).await
}

/// Validates the message and resolves its task. `Ok(None)`: transient failure.
async fn accept(ctx: &Ctx, msg: &Inbox<'_>) -> Result<Option<Accepted>, Rejection> {
    let names = ctx.publisher.names();
    let reject = |task: &str, reason: String| Rejection { task: task.to_string(), run_id: None, reason, step: None };
    let Some((kind, task)) = names.parse_inbox_subject(msg.subject) else {
        return Err(reject("_", format!("unexpected subject {}", msg.subject)));
    };
    if let Err(e) = validate_name("task", task) {
        return Err(reject("_", e.to_string()));
    }
    let header = |name: &str| msg.headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let (payload, due, step) = match kind {
        InboxKind::Submit => {
            let payload = if msg.payload.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(msg.payload)
                    .map_err(|e| reject(task, format!("malformed body: not JSON ({e})")))?
            };
            (payload, None, None)
        }
        InboxKind::Due => {
            let due: DueFire =
                serde_json::from_slice(msg.payload).map_err(|e| reject(task, format!("malformed due fire: {e}")))?;
            (due.payload.clone(), Some(due), None)
        }
        InboxKind::Step => {
            let step: StepStart =
                serde_json::from_slice(msg.payload).map_err(|e| reject(task, format!("malformed step start: {e}")))?;
            (step.payload.clone(), None, Some(step))
        }
        InboxKind::Advance => return Err(reject(task, "step outcomes are not runs".to_string())),
    };
    let run_id = match (&due, &step) {
        (Some(d), _) => d.run_id(),
        (None, Some(s)) => jetsched_contract::workflow::step_run_id(&s.workflow_run, &s.step),
        (None, None) => run::submitted_run_id(task, header(headers::NATS_MSG_ID).as_deref(), msg.seq),
    };
    let with_run =
        |reason: String| Rejection { task: task.to_string(), run_id: Some(run_id.clone()), reason, step: step.clone() };
    let def = match due.as_ref().and_then(|d| d.task_def.clone()) {
        Some(inline) => Arc::new(inline),
        None => match ctx.tasks.get(task).await {
            Ok(Some(Ok(def))) => def,
            Ok(Some(Err(reason))) => return Err(with_run(format!("task {task} has an invalid definition: {reason}"))),
            Ok(None) => return Err(with_run(format!("unknown task {task:?}: no definition in the tasks bucket"))),
            Err(err) => {
                tracing::debug!(task, %err, "cannot read task definition; will retry");
                DISPATCHING.failed(&format_args!("cannot read task definition: {err}"));
                return Ok(None);
            }
        },
    };
    let importance = match header(headers::IMPORTANCE) {
        None => def.importance,
        Some(v) => headers::parse_importance(&v).map_err(with_run)?,
    };
    let not_before = match (header(headers::NOT_BEFORE), due.as_ref().and_then(|d| d.not_before)) {
        (Some(v), _) => Some(headers::parse_not_before(&v).map_err(with_run)?),
        (None, staged) => staged,
    };
    let (schedule, scheduled_for) = match (&due, &step) {
        (Some(d), _) => (Some(d.schedule.clone()), Some(d.scheduled_for)),
        (None, Some(s)) => (s.schedule.clone(), s.scheduled_for),
        _ => (None, None),
    };
    Ok(Some(Accepted {
        run_id,
        task: task.to_string(),
        def,
        payload,
        schedule,
        scheduled_for,
        importance,
        not_before,
        replay_of: header(headers::REPLAY_OF),
        parent: step.as_ref().map(|s| s.workflow_run.clone()),
        step: step.as_ref().map(|s| s.step.clone()),
        due,
    }))
}

/// Passes the gates, then queues the run (or its shares).
async fn dispatch(ctx: &Ctx, msg: &Inbox<'_>, mut a: Accepted) -> Disposition {
    match passes_gates(ctx, msg, &a, true).await {
        Ok(Gate::Go) => {}
        Ok(Gate::NotBefore(t)) => a.not_before = Some(a.not_before.map_or(t, |nb| nb.max(t))),
        Ok(Gate::Wait(d)) => return Disposition::Retry(d),
        Ok(Gate::Skip(reason)) => return finish_unrun(ctx, msg, &a, RunStatus::Skipped, reason).await,
        Ok(Gate::Fail(reason)) => return finish_unrun(ctx, msg, &a, RunStatus::Dead, reason).await,
        Err(err) => return gates_failed(&a, &err),
    }
    let band = band(effective_priority(a.importance, a.def.expected_duration.map(|d| d.0), &ctx.weights));
    let names = ctx.publisher.names();
    let targets =
        match route::plan(names, &a.task, &a.def, &a.payload, &a.run_id, band, &ctx.registry, &ctx.rates).await {
            Ok(t) => t,
            Err(Unroutable::Loading) => return Disposition::Retry(Duration::from_secs(1)),
            Err(Unroutable::Wait(why)) => {
                tracing::debug!(run_id = %a.run_id, %why, "waiting for a worker to route to");
                // Stored once per duplicate window of the events stream
                // (its message id is the run's), however often it is looked at.
                let event = a.event(RunStatus::Waiting, Some(why));
                if let Err(err) = ctx.publisher.event(&event).await {
                    DISPATCHING.failed(&format_args!("cannot publish waiting event: {err}"));
                }
                return Disposition::Retry(Duration::from_secs(2));
            }
            Err(Unroutable::Failed(err)) => {
                tracing::debug!(run_id = %a.run_id, %err, "cannot take a round-robin turn; will retry");
                DISPATCHING.failed(&format_args!("cannot take a round-robin turn: {err}"));
                return RETRY;
            }
        };
    for target in &targets {
        if let Err(d) = enqueue(ctx, msg, &a, target).await {
            // Not sent: the room it was counted against is free again.
            if let Some(worker) = names.parse_worker_queue(&target.queue) {
                ctx.registry.unplace(worker, &target.run_id);
            }
            return d;
        }
    }
    Disposition::Ack
}

/// The gates could not be checked (NATS trouble): retried.
fn gates_failed(a: &Accepted, err: &anyhow::Error) -> Disposition {
    tracing::debug!(run_id = %a.run_id, %err, "cannot check the run's gates; will retry");
    DISPATCHING.failed(&format_args!("cannot check the run's gates: {err}"));
    RETRY
}

/// The gates in turn: a scheduled run's dependency, the task's window (if
/// `window`), then (last, because taking the turn marks the fire as the
/// schedule's running one) the schedule's overlap policy.
async fn passes_gates(ctx: &Ctx, msg: &Inbox<'_>, a: &Accepted, window: bool) -> anyhow::Result<Gate> {
    if let Some(due) = &a.due
        && let Some(dep) = &due.depends_on
    {
        let gate =
            gates::dependency(ctx, dep, due.timezone.as_deref(), due.scheduled_for, &a.run_id, msg.delivered).await?;
        if gate != Gate::Go {
            return Ok(gate);
        }
    }
    let window = match &a.def.window {
        Some(w) if window => gates::window(ctx, w, a.not_before.unwrap_or_else(Timestamp::now)).await?,
        _ => Gate::Go,
    };
    if !matches!(window, Gate::Go | Gate::NotBefore(_)) {
        return Ok(window);
    }
    if let Some(due) = &a.due {
        let fire = OverlapFire {
            run_id: a.run_id.clone(),
            scheduled_for: due.scheduled_for,
            inbox_seq: msg.seq,
            broadcast: a.def.routing == jetsched_contract::Routing::Broadcast,
        };
        let gate = overlap::take_turn(ctx, &due.schedule, due.overlap, fire, msg.delivered).await?;
        if gate != Gate::Go {
            return Ok(gate);
        }
    }
    Ok(window)
}

/// Creates the run record for `target` (announcing it `queued`) and
/// publishes its work.
async fn enqueue(ctx: &Ctx, msg: &Inbox<'_>, a: &Accepted, target: &Target) -> Result<(), Disposition> {
    let names = ctx.publisher.names();
    let record = new_record(a, &target.run_id, &target.queue, target.band, msg.seq, RunStatus::Queued);
    let stored = match create_record(ctx, record).await {
        Ok(Created::New(stored) | Created::Again(stored)) => stored,
        Ok(Created::Duplicate) => {
            tracing::debug!(run_id = %target.run_id, "duplicate of an existing run; dropped");
            return Ok(());
        }
        Err(err) => {
            tracing::debug!(run_id = %target.run_id, %err, "cannot create run record; will retry");
            DISPATCHING.failed(&format_args!("cannot create run record: {err}"));
            return Err(RETRY);
        }
    };
    let item = work_item(a, target.run_id.clone(), target.shard, stored.record.created_at, stored.revision, msg.seq);
    let Ok(body) = serde_json::to_vec(&item) else { return Err(RETRY) };
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, target.run_id.as_str());
    h.insert(headers::TASK, a.task.as_str());
    let subject = names.task_subject(&target.queue, target.band);
    match ctx.publisher.publish(subject, h, &target.run_id, body.into()).await {
        Ok(_) => {
            tracing::debug!(run_id = %target.run_id, task = %a.task, queue = %target.queue, band = target.band, "queued");
            Ok(())
        }
        Err(err) => {
            tracing::debug!(run_id = %target.run_id, %err, "cannot publish work; will retry");
            DISPATCHING.failed(&format_args!("cannot publish work: {err}"));
            Err(RETRY)
        }
    }
}

fn work_item(a: &Accepted, run_id: String, shard: Option<Shard>, queued_at: Timestamp, rev: u64, seq: u64) -> WorkItem {
    WorkItem {
        run_id,
        task: a.task.clone(),
        def: (*a.def).clone(),
        payload: a.payload.clone(),
        schedule: a.schedule.clone(),
        scheduled_for: a.scheduled_for,
        queued_at,
        not_before: a.not_before,
        record_revision: rev,
        source_seq: seq,
        replay_of: a.replay_of.clone(),
        parent: a.parent.clone(),
        step: a.step.clone(),
        shard,
    }
}

/// Ends a run that never reaches a worker (`skipped` by a gate, or `dead`
/// when a gate gives up): a DLQ copy for dead ones, the record (announced),
/// and the outcome to its workflow if it is a step.
pub(crate) async fn finish_unrun(
    ctx: &Ctx,
    msg: &Inbox<'_>,
    a: &Accepted,
    status: RunStatus,
    reason: String,
) -> Disposition {
    tracing::info!(run_id = %a.run_id, task = %a.task, %status, %reason, "run ends without running");
    if status == RunStatus::Dead {
        let h = msg.headers.cloned().unwrap_or_default();
        if let Err(err) =
            ctx.publisher.dead_letter(&a.task, &a.run_id, &reason, msg.subject, h, msg.payload.clone()).await
        {
            DISPATCHING.failed(&format_args!("cannot store dead letter: {err}"));
            return RETRY;
        }
    }
    let mut record = new_record(a, &a.run_id, &a.def.queue, 0, msg.seq, status);
    record.error = Some(reason.clone());
    match create_record(ctx, record).await {
        Ok(Created::New(_)) => {}
        Ok(Created::Again(stored)) => {
            // Our own earlier try: its event may not have gone out.
            if let Err(err) = ctx.runs.announce(&stored.record).await {
                DISPATCHING.failed(&format_args!("cannot publish run event: {err}"));
                return RETRY;
            }
        }
        Ok(Created::Duplicate) => return Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot create run record; will retry");
            DISPATCHING.failed(&format_args!("cannot create run record: {err}"));
            return RETRY;
        }
    }
    if let (Some(parent), Some(step)) = (&a.parent, &a.step)
        && let Err(err) = report_step(ctx, &a.task, parent, step, &a.run_id, status, None, Some(reason)).await
    {
        DISPATCHING.failed(&format_args!("cannot report the step to its workflow: {err}"));
        return RETRY;
    }
    Disposition::Ack
}

/// Reports a rejection and keeps the original in the DLQ.
async fn reject(ctx: &Ctx, msg: &Inbox<'_>, r: Rejection) -> Disposition {
    tracing::warn!(task = %r.task, subject = msg.subject, reason = %r.reason, "submission rejected");
    let event = RunEvent {
        error: Some(r.reason.clone()),
        workflow_run: r.step.as_ref().map(|s| s.workflow_run.clone()),
        step: r.step.as_ref().map(|s| s.step.clone()),
        ..RunEvent::new(RunStatus::Rejected, &r.task, r.run_id.clone())
    };
    // The original headers travel along; its Nats-Msg-Id is replaced by the DLQ's own.
    let keep = msg.headers.cloned().unwrap_or_default();
    let id = r.run_id.clone().unwrap_or_else(|| format!("inbox-{}", msg.seq));
    let dead = ctx.publisher.dead_letter(&r.task, &id, &r.reason, msg.subject, keep, msg.payload.clone());
    match futures::join!(dead, ctx.publisher.event(&event)) {
        (Ok(()), Ok(())) => {}
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(%err, "cannot record rejection; will retry");
            DISPATCHING.failed(&format_args!("cannot record rejection: {err}"));
            return RETRY;
        }
    }
    if let (Some(step), Some(run_id)) = (&r.step, &r.run_id)
        && let Err(err) =
            report_step(ctx, &r.task, &step.workflow_run, &step.step, run_id, RunStatus::Rejected, None, Some(r.reason))
                .await
    {
        tracing::debug!(%err, "cannot report the rejected step to its workflow; will retry");
        DISPATCHING.failed(&format_args!("cannot report the rejected step to its workflow: {err}"));
        return RETRY;
    }
    Disposition::Ack
}

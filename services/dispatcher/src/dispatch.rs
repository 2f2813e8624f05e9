//! Handling of one inbox message: validate it, resolve the task, pass the
//! gates (dependency, window, overlap), route it, create the run record (the
//! exactly-once gate) and publish the work and a `queued` event. Workflows
//! and step outcomes go to `crate::workflow`. Bad input is rejected into the
//! DLQ and acked, never retried.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use bytes::Bytes;
use jetsched_contract::message::Shard;
use jetsched_contract::overlap::OverlapFire;
use jetsched_contract::{
    DueFire, InboxKind, RunEvent, RunRecord, RunStatus, StepOutcome, StepStart, TaskDef, Window, WorkItem, headers,
    run, validate_name,
};
use jetsched_runtime::Publisher;
use jiff::Timestamp;
use serde_json::Value;

use crate::cache::DefCache;
use crate::gates::{self, Gate};
use crate::overlap;
use crate::priority::{Weights, band, effective_priority};
use crate::registry::Registry;
use crate::route::{self, Target, Unroutable};

/// What to do with the inbox message.
#[derive(Debug, PartialEq)]
pub enum Disposition {
    /// Done (dispatched, rejected or a duplicate).
    Ack,
    /// Not yet, or a transient failure: redeliver after the delay.
    Retry(Duration),
}

/// Everything a handler needs.
pub struct Ctx {
    /// Publishes work, events and dead letters.
    pub publisher: Publisher,
    /// Run records.
    pub runs: Store,
    /// Schedules (for dependencies between schedules).
    pub schedules: Store,
    /// Task definitions.
    pub tasks: DefCache<TaskDef>,
    /// Time windows.
    pub windows: DefCache<Window>,
    /// Live workers.
    pub registry: Registry,
    /// Priority formula.
    pub weights: Weights,
    /// Counters in `jetsched-rates` (the cluster-wide round-robin rotation).
    pub rates: Store,
    /// Schedules' overlap state (`jetsched-overlap`).
    pub overlap: Store,
}

/// The parts of an inbox message the handler reads.
pub struct Inbox<'a> {
    /// Subject it was published to.
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its body.
    pub payload: &'a Bytes,
    /// Its inbox stream sequence.
    pub seq: u64,
    /// How many times it has been delivered (1 the first time).
    pub delivered: u64,
}

pub(crate) const RETRY: Disposition = Disposition::Retry(Duration::from_secs(1));

/// Dispatching fails for reasons outside the run (a stream or bucket without
/// a leader, NATS unreachable): one line when it starts, one when it ends.
/// Each run retries through its inbox message's redelivery.
pub(crate) static DISPATCHING: jetsched_runtime::Outage = jetsched_runtime::Outage::new("dispatching");

/// A run about to be dispatched.
pub struct Accepted {
    /// Its run id.
    pub run_id: String,
    /// Task name.
    pub task: String,
    /// Its definition.
    pub def: Arc<TaskDef>,
    /// Its input.
    pub payload: Value,
    /// Schedule that fired it.
    pub schedule: Option<String>,
    /// Nominal fire time.
    pub scheduled_for: Option<Timestamp>,
    /// 0-10.
    pub importance: u8,
    /// Earliest start.
    pub not_before: Option<Timestamp>,
    /// Replay link.
    pub replay_of: Option<String>,
    /// Workflow run it is a step of.
    pub parent: Option<String>,
    /// Its step name.
    pub step: Option<String>,
    /// The fire, when a schedule fired it.
    pub due: Option<DueFire>,
}

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
                let event = event_for(&a, &a.run_id, RunStatus::Waiting, Some(why));
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

/// A new record for `a` (or one of its shares).
pub(crate) fn new_record(a: &Accepted, run_id: &str, queue: &str, band: u8, seq: u64, status: RunStatus) -> RunRecord {
    let now = Timestamp::now();
    RunRecord {
        run_id: run_id.to_string(),
        task: a.task.clone(),
        schedule: a.schedule.clone(),
        status,
        attempt: 0,
        queue: queue.to_string(),
        band,
        scheduled_for: a.scheduled_for,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: status.is_terminal().then_some(now),
        error: None,
        source_seq: seq,
        task_seq: None,
        worker: None,
        cancel_requested: false,
        replay_of: a.replay_of.clone(),
        parent: a.parent.clone(),
        step: a.step.clone(),
        workflow: None,
        result: None,
    }
}

/// Creates the record with KV `create`. `Ok(Some(rev))`: go on (new, or
/// our own earlier attempt at this very message); `Ok(None)`: a duplicate.
pub(crate) async fn create_record(ctx: &Ctx, record: &RunRecord) -> anyhow::Result<Option<u64>> {
    let encoded = serde_json::to_vec(record)?;
    match ctx.runs.create(&record.run_id, encoded.into()).await {
        Ok(rev) => Ok(Some(rev)),
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => match ctx.runs.entry(&record.run_id).await? {
            // A dispatcher died before acking: finish its job. Publishing
            // again is harmless (the work message's Msg-Id is the run id).
            Some(entry)
                if serde_json::from_slice::<RunRecord>(&entry.value)
                    .is_ok_and(|r| r.source_seq == record.source_seq && r.status == record.status) =>
            {
                Ok(Some(entry.revision))
            }
            _ => Ok(None),
        },
        Err(err) => Err(err.into()),
    }
}

/// Creates the run record for `target` and publishes its work and `queued` event.
async fn enqueue(ctx: &Ctx, msg: &Inbox<'_>, a: &Accepted, target: &Target) -> Result<(), Disposition> {
    let names = ctx.publisher.names();
    let record = new_record(a, &target.run_id, &target.queue, target.band, msg.seq, RunStatus::Queued);
    let revision = match create_record(ctx, &record).await {
        Ok(Some(rev)) => rev,
        Ok(None) => return requeued_event(ctx, msg, a, target).await,
        Err(err) => {
            tracing::debug!(run_id = %target.run_id, %err, "cannot create run record; will retry");
            DISPATCHING.failed(&format_args!("cannot create run record: {err}"));
            return Err(RETRY);
        }
    };
    let item = work_item(a, target.run_id.clone(), target.shard, record.created_at, revision, msg.seq);
    let Ok(body) = serde_json::to_vec(&item) else { return Err(RETRY) };
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, target.run_id.as_str());
    h.insert(headers::TASK, a.task.as_str());
    let work = ctx.publisher.send(names.task_subject(&target.queue, target.band), h, &target.run_id, body.into());
    let event = RunEvent { queue: Some(target.queue.clone()), ..event_for(a, &target.run_id, RunStatus::Queued, None) };
    let queued = ctx.publisher.send_event(&event);
    let (work, queued) = futures::join!(work, queued);
    let acked = match (work, queued) {
        (Ok(w), Ok(q)) => futures::try_join!(w.into_future(), q.into_future())
            .map(|_| jetsched_runtime::publish::count_event(&event))
            .map_err(|e| e.to_string()),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    };
    match acked {
        Ok(()) => {
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

/// The run exists already. A duplicate (another inbox message) is dropped.
/// This same inbox message delivered again means an earlier try created the
/// run and published its work (a worker has moved it on since), but maybe
/// not its `queued` event (the events stream had no leader): publish that
/// again (its message id keeps it stored once).
async fn requeued_event(ctx: &Ctx, msg: &Inbox<'_>, a: &Accepted, target: &Target) -> Result<(), Disposition> {
    let entry = match ctx.runs.entry(&target.run_id).await {
        Ok(entry) => entry,
        Err(err) => {
            DISPATCHING.failed(&format_args!("cannot read run record: {err}"));
            return Err(RETRY);
        }
    };
    let same_message =
        entry.and_then(|e| serde_json::from_slice::<RunRecord>(&e.value).ok()).is_some_and(|r| r.source_seq == msg.seq);
    if !same_message {
        tracing::debug!(run_id = %target.run_id, "duplicate of an existing run; dropped");
        return Ok(());
    }
    let event = RunEvent { queue: Some(target.queue.clone()), ..event_for(a, &target.run_id, RunStatus::Queued, None) };
    match ctx.publisher.event(&event).await {
        Ok(()) => Ok(()),
        Err(err) => {
            DISPATCHING.failed(&format_args!("cannot publish run event: {err}"));
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

/// An event about run `run_id` of `a`.
pub(crate) fn event_for(a: &Accepted, run_id: &str, status: RunStatus, error: Option<String>) -> RunEvent {
    RunEvent {
        schedule: a.schedule.clone(),
        scheduled_for: a.scheduled_for,
        error,
        workflow_run: a.parent.clone(),
        step: a.step.clone(),
        ..RunEvent::new(status, &a.task, Some(run_id.to_string()))
    }
}

/// Ends a run that never reaches a worker (`skipped` by a gate, or `dead`
/// when a gate gives up): record, event, a DLQ copy for dead ones, and the
/// outcome to its workflow if it is a step.
pub(crate) async fn finish_unrun(
    ctx: &Ctx,
    msg: &Inbox<'_>,
    a: &Accepted,
    status: RunStatus,
    reason: String,
) -> Disposition {
    tracing::info!(run_id = %a.run_id, task = %a.task, %status, %reason, "run ends without running");
    let mut record = new_record(a, &a.run_id, &a.def.queue, 0, msg.seq, status);
    record.error = Some(reason.clone());
    match create_record(ctx, &record).await {
        Ok(Some(_)) => {}
        Ok(None) => return Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot create run record; will retry");
            DISPATCHING.failed(&format_args!("cannot create run record: {err}"));
            return RETRY;
        }
    }
    if status == RunStatus::Dead {
        let h = msg.headers.cloned().unwrap_or_default();
        if ctx.publisher.dead_letter(&a.task, &a.run_id, &reason, msg.subject, h, msg.payload.clone()).await.is_err() {
            return RETRY;
        }
    }
    let event = event_for(a, &a.run_id, status, Some(reason.clone()));
    if ctx.publisher.event(&event).await.is_err() {
        return RETRY;
    }
    if let (Some(parent), Some(step)) = (&a.parent, &a.step)
        && report_step(ctx, &a.task, parent, step, &a.run_id, status, None, Some(reason)).await.is_err()
    {
        return RETRY;
    }
    Disposition::Ack
}

/// Tells workflow run `parent` that its `step` reached `status`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn report_step(
    ctx: &Ctx,
    task: &str,
    parent: &str,
    step: &str,
    run_id: &str,
    status: RunStatus,
    result: Option<Value>,
    error: Option<String>,
) -> anyhow::Result<()> {
    let outcome = StepOutcome {
        workflow_run: parent.to_string(),
        step: step.to_string(),
        run_id: run_id.to_string(),
        status,
        result,
        error,
    };
    let names = ctx.publisher.names();
    let id = format!("advance:{run_id}:{status}");
    ctx.publisher
        .publish(names.advance_subject(task), HeaderMap::new(), &id, serde_json::to_vec(&outcome)?.into())
        .await?;
    Ok(())
}

/// Marks `run_id` cancel-requested and tells whichever worker holds it.
pub(crate) async fn request_cancel(ctx: &Ctx, run_id: &str) -> anyhow::Result<()> {
    for _ in 0..8 {
        let Some(entry) = ctx.runs.entry(run_id).await? else { return Ok(()) };
        let mut record: RunRecord = serde_json::from_slice(&entry.value)?;
        if record.status.is_terminal() || record.cancel_requested {
            return Ok(());
        }
        record.cancel_requested = true;
        if ctx.runs.update(run_id, serde_json::to_vec(&record)?.into(), entry.revision).await.is_ok() {
            let client = ctx.publisher.js().client();
            client.publish(ctx.publisher.names().cancel_subject(run_id), Bytes::new()).await?;
            return Ok(());
        }
    }
    Ok(())
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

//! Handling of one inbox message: validate it, resolve the task, create the
//! run record (the exactly-once gate), publish the work and a `queued` event.
//! Bad input is rejected into the DLQ and acked, never retried.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::CreateErrorKind;
use bytes::Bytes;
use jetsched_contract::{
    DueFire, InboxKind, RunEvent, RunRecord, RunStatus, TaskDef, WorkItem, headers, run, validate_name,
};
use jetsched_runtime::Publisher;
use jiff::Timestamp;
use serde_json::Value;

use crate::priority::band_for;
use crate::taskcache::TaskCache;

/// What to do with the inbox message.
#[derive(Debug, PartialEq)]
pub enum Disposition {
    /// Done (dispatched, rejected or a duplicate).
    Ack,
    /// A transient failure: redeliver after the delay.
    Retry(Duration),
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct Ctx {
    /// Publishes work, events and dead letters.
    pub publisher: Publisher,
    /// Run records.
    pub runs: async_nats::jetstream::kv::Store,
    /// Task definitions.
    pub tasks: TaskCache,
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
}

const RETRY: Disposition = Disposition::Retry(Duration::from_secs(1));

/// A run about to be dispatched.
struct Accepted {
    run_id: String,
    task: String,
    def: Arc<TaskDef>,
    payload: Value,
    schedule: Option<String>,
    scheduled_for: Option<Timestamp>,
    importance: u8,
    not_before: Option<Timestamp>,
    replay_of: Option<String>,
}

/// Handles one inbox message.
pub async fn handle(ctx: &Ctx, msg: Inbox<'_>) -> Disposition {
    let accepted = match accept(ctx, &msg).await {
        Ok(Some(a)) => {
            let span = tracing::Span::current();
            span.record("run_id", a.run_id.as_str());
            span.record("task", a.task.as_str());
            Ok(Some(a))
        }
        other => other,
    };
    let accepted = match accepted {
        Ok(Some(a)) => a,
        Ok(None) => return RETRY,
        Err(rejection) => return reject(ctx, &msg, rejection).await,
    };
    dispatch(ctx, &msg, accepted).await
}

/// Why a message cannot become a run.
struct Rejection {
    task: String,
    run_id: Option<String>,
    reason: String,
}

/// Validates the message and resolves its task. `Ok(None)`: transient failure.
async fn accept(ctx: &Ctx, msg: &Inbox<'_>) -> Result<Option<Accepted>, Rejection> {
    let names = ctx.publisher.names();
    let reject = |task: &str, reason: String| Rejection { task: task.to_string(), run_id: None, reason };
    let Some((kind, task)) = names.parse_inbox_subject(msg.subject) else {
        return Err(reject("_", format!("unexpected subject {}", msg.subject)));
    };
    if let Err(e) = validate_name("task", task) {
        return Err(reject("_", e.to_string()));
    }
    let header = |name: &str| msg.headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let (payload, due) = match kind {
        InboxKind::Submit => {
            let payload = if msg.payload.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(msg.payload)
                    .map_err(|e| reject(task, format!("malformed body: not JSON ({e})")))?
            };
            (payload, None)
        }
        InboxKind::Due => {
            let due: DueFire =
                serde_json::from_slice(msg.payload).map_err(|e| reject(task, format!("malformed due fire: {e}")))?;
            (due.payload.clone(), Some(due))
        }
    };
    let run_id = match &due {
        Some(d) => run::scheduled_run_id(&d.schedule, d.scheduled_for),
        None => run::submitted_run_id(task, header(headers::NATS_MSG_ID).as_deref(), msg.seq),
    };
    let with_run = |reason: String| Rejection { task: task.to_string(), run_id: Some(run_id.clone()), reason };
    let def = match due.as_ref().and_then(|d| d.task_def.clone()) {
        Some(inline) => Arc::new(inline),
        None => match ctx.tasks.get(task).await {
            Ok(Some(Ok(def))) => def,
            Ok(Some(Err(reason))) => return Err(with_run(format!("task {task} has an invalid definition: {reason}"))),
            Ok(None) => return Err(with_run(format!("unknown task {task:?}: no definition in the tasks bucket"))),
            Err(err) => {
                tracing::warn!(task, %err, "cannot read task definition; will retry");
                return Ok(None);
            }
        },
    };
    if def.steps.is_some() {
        return Err(with_run(format!("task {task} is a workflow; workflows are dispatched from issue #4 onwards")));
    }
    let importance = match header(headers::IMPORTANCE) {
        None => def.importance,
        Some(v) => match v.trim().parse::<u8>() {
            Ok(i) if i <= 10 => i,
            _ => return Err(with_run(format!("{} must be a whole number 0-10, got {v:?}", headers::IMPORTANCE))),
        },
    };
    let not_before =
        match (header(headers::NOT_BEFORE), due.as_ref().and_then(|d| d.not_before)) {
            (Some(v), _) => Some(v.trim().parse::<Timestamp>().map_err(|e| {
                with_run(format!("{} must be an RFC 3339 instant, got {v:?} ({e})", headers::NOT_BEFORE))
            })?),
            (None, staged) => staged,
        };
    Ok(Some(Accepted {
        run_id,
        task: task.to_string(),
        def,
        payload,
        schedule: due.as_ref().map(|d| d.schedule.clone()),
        scheduled_for: due.as_ref().map(|d| d.scheduled_for),
        importance,
        not_before,
        replay_of: header(headers::REPLAY_OF),
    }))
}

/// Creates the run record and publishes the work and the `queued` event.
async fn dispatch(ctx: &Ctx, msg: &Inbox<'_>, a: Accepted) -> Disposition {
    let names = ctx.publisher.names();
    let band = band_for(a.importance);
    let now = Timestamp::now();
    let record = RunRecord {
        run_id: a.run_id.clone(),
        task: a.task.clone(),
        schedule: a.schedule.clone(),
        status: RunStatus::Queued,
        attempt: 0,
        queue: a.def.queue.clone(),
        band,
        scheduled_for: a.scheduled_for,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        error: None,
        source_seq: msg.seq,
        task_seq: None,
        worker: None,
        cancel_requested: false,
        replay_of: a.replay_of.clone(),
    };
    let Ok(encoded) = serde_json::to_vec(&record) else { return RETRY };
    let revision = match ctx.runs.create(&a.run_id, encoded.into()).await {
        Ok(rev) => rev,
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => match ctx.runs.entry(&a.run_id).await {
            // Our own earlier attempt at this very message (a dispatcher died
            // before acking): finish it. The work message's Msg-Id makes the
            // re-publish a no-op if it got out before.
            Ok(Some(entry))
                if serde_json::from_slice::<RunRecord>(&entry.value)
                    .is_ok_and(|r| r.source_seq == msg.seq && r.status == RunStatus::Queued) =>
            {
                entry.revision
            }
            Ok(_) => {
                tracing::debug!(run_id = %a.run_id, "duplicate of an existing run; dropped");
                return Disposition::Ack;
            }
            Err(err) => {
                tracing::warn!(run_id = %a.run_id, %err, "cannot read run record; will retry");
                return RETRY;
            }
        },
        Err(err) => {
            tracing::warn!(run_id = %a.run_id, %err, "cannot create run record; will retry");
            return RETRY;
        }
    };
    let item = WorkItem {
        run_id: a.run_id.clone(),
        task: a.task.clone(),
        def: (*a.def).clone(),
        payload: a.payload,
        schedule: a.schedule.clone(),
        scheduled_for: a.scheduled_for,
        queued_at: now,
        not_before: a.not_before,
        record_revision: revision,
        source_seq: msg.seq,
        replay_of: a.replay_of,
    };
    let Ok(body) = serde_json::to_vec(&item) else { return RETRY };
    let mut h = HeaderMap::new();
    h.insert(headers::RUN_ID, a.run_id.as_str());
    h.insert(headers::TASK, a.task.as_str());
    let work = ctx.publisher.send(names.task_subject(&a.def.queue, band), h, &a.run_id, body.into());
    let event = RunEvent {
        schedule: a.schedule,
        scheduled_for: a.scheduled_for,
        queue: Some(a.def.queue.clone()),
        ..RunEvent::new(RunStatus::Queued, &a.task, Some(a.run_id.clone()))
    };
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
            tracing::debug!(run_id = %a.run_id, task = %a.task, band, "queued");
            Disposition::Ack
        }
        Err(err) => {
            tracing::warn!(run_id = %a.run_id, %err, "cannot publish work; will retry");
            RETRY
        }
    }
}

/// Reports a rejection and keeps the original in the DLQ.
async fn reject(ctx: &Ctx, msg: &Inbox<'_>, r: Rejection) -> Disposition {
    tracing::warn!(task = %r.task, subject = msg.subject, reason = %r.reason, "submission rejected");
    let event =
        RunEvent { error: Some(r.reason.clone()), ..RunEvent::new(RunStatus::Rejected, &r.task, r.run_id.clone()) };
    // The original headers travel along; its Nats-Msg-Id is replaced by the DLQ's own.
    let keep = msg.headers.cloned().unwrap_or_default();
    let id = r.run_id.unwrap_or_else(|| format!("inbox-{}", msg.seq));
    let dead = ctx.publisher.dead_letter(&r.task, &id, &r.reason, msg.subject, keep, msg.payload.clone());
    match futures::join!(dead, ctx.publisher.event(&event)) {
        (Ok(()), Ok(())) => Disposition::Ack,
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(%err, "cannot record rejection; will retry");
            RETRY
        }
    }
}

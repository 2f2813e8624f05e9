//! One trigger hosted by this ticker: its source stream (waited for, and
//! reported `invalid` while it does not exist), its registration in the
//! ticker bucket, its durable consumer, and the loop turning events into
//! submissions. Events one by one are handled here; batching and debouncing
//! in [`crate::triggers::hold`].
//!
//! Exactly-once: a submission's `Nats-Msg-Id` (and so its run id) is the
//! event's stream position, and the event is acked only after the
//! submission is stored. A redelivery (after a crash, a lost ack, a second
//! host during a handover) is the same submission again: dropped by the
//! inbox's dedup window, or past it by the dispatcher's run-id gate.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_nats::jetstream::{AckKind, ErrorCode, Message};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jetsched_contract::ticker::{TriggerState, trigger_key};
use jetsched_contract::trigger::Source;
use jetsched_contract::{TaskDef, setup};
use jetsched_runtime::{Backoff, Outage};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::triggers::event::{self, Submission};
use crate::triggers::source::{Opened, Pulls, Spec, ack, event_of, submit};
use crate::triggers::{Ctx, hold};

/// Trigger sources cannot be read (a stream without a leader, NATS
/// unreachable, a consumer that vanished): one line when it starts and one
/// when it ends, however many triggers fail.
pub(crate) static READING_EVENTS: Outage = Outage::new("reading trigger events");

/// Events pulled per request, and submissions in flight at most.
const BATCH: usize = 256;

/// Runs `spec` until `token` fires, starting over (with backoff) after
/// any failure.
pub async fn run(ctx: Arc<Ctx>, spec: Spec, token: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    tracing::info!(task = %spec.task, trigger = spec.index, consumer = %spec.consumer, "trigger started");
    while !token.is_cancelled() {
        let result = match open(&ctx, &spec).await {
            Ok(Some(opened)) => {
                READING_EVENTS.recovered();
                backoff.reset();
                consume(&ctx, &spec, opened, &token).await
            }
            Ok(None) => Err("waiting for the source stream".to_string()),
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => break,
            Err(err) => {
                READING_EVENTS.failed(&format_args!("trigger {} of task {}: {err}", spec.index, spec.task));
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
    tracing::info!(task = %spec.task, trigger = spec.index, "trigger stopped");
}

/// Opens the source stream, registers the consumer and creates it if
/// needed. `Ok(None)`: the stream does not exist (reported `invalid`).
async fn open(ctx: &Ctx, spec: &Spec) -> Result<Option<Opened>, String> {
    let (stream_name, filter) = spec.stream_and_filter(ctx);
    let stream = match ctx.js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(err) if is_not_found(&err) => {
            let what = match spec.trigger.source() {
                Source::Kv { bucket, .. } => format!("KV bucket {bucket} does not exist"),
                _ => format!("stream {stream_name} does not exist"),
            };
            ctx.report_invalid(spec, &format!("{what}; the trigger starts once it exists")).await;
            return Ok(None);
        }
        Err(err) => return Err(format!("cannot read stream {stream_name}: {err}")),
    };
    let (state, state_revision) = register(&ctx.state, spec, &stream_name).await?;
    let consumer = match stream.get_consumer(&spec.consumer).await {
        Ok(consumer) => consumer,
        Err(_) => {
            let config = setup::trigger_consumer(
                spec.consumer.clone(),
                filter,
                first_defined(ctx, spec).await,
                ctx.ack_wait,
                format!("jetsched trigger {} of task {}", spec.index, spec.task),
            );
            stream
                .create_consumer(config)
                .await
                .map_err(|e| format!("cannot create consumer {} on {stream_name}: {e}", spec.consumer))?
        }
    };
    Ok(Some(Opened { stream, stream_name, consumer, state, state_revision }))
}

/// When the trigger's source first appeared in the task's definition, as
/// far back as the bucket's history goes (edits that kept the source do not
/// move it): a consumer created late still reads every event since.
async fn first_defined(ctx: &Ctx, spec: &Spec) -> Timestamp {
    let identity = spec.trigger.source().identity();
    let Ok(history) = ctx.tasks.history(&spec.task).await else { return spec.start };
    let entries: Vec<_> = history.filter_map(|e| async move { e.ok() }).collect().await;
    let mut start = spec.start;
    for entry in entries.iter().rev() {
        let has_source = entry.operation == async_nats::jetstream::kv::Operation::Put
            && TaskDef::from_json(&entry.value)
                .is_ok_and(|d| d.triggers.iter().any(|t| t.source().identity() == identity));
        if !has_source {
            break;
        }
        start = Timestamp::from_nanosecond(entry.created.unix_timestamp_nanos()).unwrap_or(start).min(start);
    }
    start
}

fn is_not_found(err: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The trigger's registration in the ticker bucket, written before its
/// consumer is created, so that a consumer whose trigger disappears while no
/// ticker runs is found and deleted later.
async fn register(state: &Store, spec: &Spec, stream: &str) -> Result<(TriggerState, u64), String> {
    let key = trigger_key(spec.partition, &spec.consumer);
    let fresh = TriggerState {
        task: spec.task.clone(),
        stream: stream.to_string(),
        consumer: spec.consumer.clone(),
        batch: None,
    };
    let bytes = serde_json::to_vec(&fresh).map_err(|e| e.to_string())?;
    match state.create(&key, bytes.into()).await {
        Ok(revision) => Ok((fresh, revision)),
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
            let entry = state.entry(&key).await.map_err(|e| format!("cannot read {key}: {e}"))?;
            let entry = entry.ok_or_else(|| format!("{key} vanished while being registered"))?;
            let known: TriggerState = serde_json::from_slice(&entry.value).unwrap_or(fresh);
            Ok((known, entry.revision))
        }
        Err(err) => Err(format!("cannot register {key}: {err}")),
    }
}

/// Pulls events until `token` fires (`Ok`) or the consumer fails (`Err`).
async fn consume(ctx: &Ctx, spec: &Spec, opened: Opened, token: &CancellationToken) -> Result<(), String> {
    if spec.trigger.batch.is_some() || spec.trigger.debounce.is_some() {
        return hold::consume(ctx, spec, opened, token).await;
    }
    let mut in_flight = FuturesUnordered::new();
    let mut pulls = Pulls::new(&opened.consumer);
    loop {
        if in_flight.len() < BATCH {
            pulls.request(BATCH).await?;
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            Some((msg, stored)) = in_flight.next(), if !in_flight.is_empty() => settle(msg, stored).await,
            next = pulls.next(), if in_flight.len() < BATCH => {
                let Some(msg) = next? else { continue };
                let Some(event) = event_of(ctx, spec, &opened.stream_name, &msg) else {
                    ack(&msg).await;
                    continue;
                };
                if !event::passes(&spec.trigger, &event) {
                    ack(&msg).await;
                    continue;
                }
                let submission = event::single(&spec.task, &spec.trigger, &event);
                in_flight.push(submit_then(ctx, spec, submission, msg));
            }
        }
    }
    // Stopping: what is in flight is stored or comes back after ack_wait.
    let drain = async {
        while let Some((msg, stored)) = in_flight.next().await {
            settle(msg, stored).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok(())
}

/// Publishes one submission and waits for the stream's ack; hands the
/// source message back with the outcome.
async fn submit_then(ctx: &Ctx, spec: &Spec, submission: Submission, msg: Message) -> (Message, bool) {
    let stored = submit(ctx, spec, &submission, msg.headers.as_ref()).await.is_ok();
    (msg, stored)
}

/// Acks an event whose submission is stored; an event whose submission
/// failed comes back after a short delay.
async fn settle(msg: Message, stored: bool) {
    if stored {
        ack(&msg).await;
    } else if let Err(err) = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await {
        tracing::debug!(%err, "cannot nak a trigger event; it comes back after ack_wait");
    }
}

//! Publishing what the plan releases: fires to `<prefix>.due.<task>` with
//! `Nats-Msg-Id: <schedule>@<nominal>`, and `missed` reports to the events
//! stream, many acks in flight, each retried until the stream stores it or
//! its partition is no longer ours (the next owner replays it then).
//!
//! Runs as its own task so that the plan never waits on a publish: the plan
//! hands messages over a bounded channel and hears back about each one that
//! is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jetsched_contract::ticker::PARTITIONS;
use jetsched_contract::{DueFire, headers};
use jetsched_runtime::{Publisher, RunStore, metrics};
use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::plan::{Body, Outgoing};
use crate::withdraw::{self, Withdrawn};

/// Messages published and not yet acknowledged, at most.
const IN_FLIGHT: usize = 1024;

/// Each partition's current ownership epoch, shared with the plan: a message
/// of an older epoch is no longer worth retrying.
#[derive(Debug)]
pub struct Epochs(Vec<AtomicU32>);

impl Default for Epochs {
    fn default() -> Self {
        Epochs((0..PARTITIONS).map(|_| AtomicU32::new(0)).collect())
    }
}

impl Epochs {
    /// Records `partition`'s epoch.
    pub fn set(&self, partition: u16, epoch: u32) {
        if let Some(e) = self.0.get(usize::from(partition)) {
            e.store(epoch, Ordering::Relaxed);
        }
    }

    fn is_current(&self, partition: u16, epoch: u32) -> bool {
        self.0.get(usize::from(partition)).is_some_and(|e| e.load(Ordering::Relaxed) == epoch)
    }
}

/// A stored message, reported back to the plan.
#[derive(Debug)]
pub struct Stored(pub Outgoing);

/// Starts the publisher task. It ends when the sender is dropped and every
/// message still wanted is stored.
pub fn spawn(
    publisher: Publisher,
    runs: RunStore,
    epochs: Arc<Epochs>,
    capacity: usize,
) -> (mpsc::Sender<Outgoing>, mpsc::UnboundedReceiver<Stored>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(capacity);
    let (stored_tx, stored_rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some((out, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    let out: Outgoing = out;
                    match result {
                        Ok(()) => {
                            let _ = stored_tx.send(Stored(out));
                        }
                        Err(attempt) if epochs.is_current(out.partition, out.epoch) => {
                            in_flight.push(publish(publisher.clone(), runs.clone(), out, attempt));
                        }
                        // Lost the partition: its next owner replays this.
                        Err(_) => {}
                    }
                }
                next = rx.recv(), if open && in_flight.len() < IN_FLIGHT => match next {
                    Some(out) => in_flight.push(publish(publisher.clone(), runs.clone(), out, 0)),
                    None => open = false,
                },
                else => break,
            }
        }
    });
    (tx, stored_rx, handle)
}

/// Fires cannot be stored (the inbox without a leader, NATS unreachable):
/// one line when it starts, one when it ends; each fire retries on its own.
static STORING_FIRES: jetsched_runtime::Outage = jetsched_runtime::Outage::new("storing fires");

/// Publishes `out` (after a backoff when `attempt > 0`) and waits for the
/// stream's ack; on failure returns the next attempt number.
async fn publish(publisher: Publisher, runs: RunStore, out: Outgoing, attempt: u32) -> (Outgoing, Result<(), u32>) {
    if attempt > 0 {
        // Exponential from 50 ms to 2 s, jittered so that a herd of fires
        // retrying after an election does not come back at one instant.
        let backoff = Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(2));
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
    }
    let result = match &out.body {
        Body::Due(due) => fire(&publisher, &out, due).await,
        Body::Missed(event) => match publisher.event(event).await {
            Ok(()) => Ok(()),
            Err(err) => Err(err.to_string()),
        },
        Body::Withdraw(w) => match withdraw::withdraw(&runs, &out.schedule, w).await {
            Ok(Withdrawn::Yes) => match &w.then {
                Some(due) => fire(&publisher, &out, due).await,
                None => Ok(()),
            },
            // It started: the edit takes effect from the next fire.
            Ok(Withdrawn::No) => Ok(()),
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => {
            STORING_FIRES.recovered();
            (out, Ok(()))
        }
        Err(err) => {
            tracing::debug!(schedule = %out.schedule, %err, attempt, "not stored yet; retrying");
            STORING_FIRES.failed(&format_args!("cannot store fires: {err}"));
            (out, Err(attempt.saturating_add(1)))
        }
    }
}

/// Publishes one fire, in a span of its own: the root of the run's trace.
async fn fire(publisher: &Publisher, out: &Outgoing, due: &DueFire) -> Result<(), String> {
    let run_id = due.run_id();
    let span = tracing::info_span!(
        parent: None,
        "fire",
        otel.kind = "producer",
        schedule = %out.schedule,
        run_id = %run_id,
        scheduled_for = %due.scheduled_for
    );
    jetsched_runtime::trace::Carried::new_trace().run_in(span, publish_due(publisher, out, due, &run_id)).await
}

async fn publish_due(publisher: &Publisher, out: &Outgoing, due: &DueFire, run_id: &str) -> Result<(), String> {
    let payload = serde_json::to_vec(due).map_err(|e| e.to_string())?;
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEDULE, &*out.schedule);
    h.insert(headers::SCHEDULED_FOR, due.scheduled_for.to_string().as_str());
    h.insert(headers::RUN_ID, run_id);
    let msg_id = due.msg_id();
    let subject = publisher.names().due_subject(&out.task);
    let pending = publisher.send(subject, h, &msg_id, payload.into()).await.map_err(|e| e.to_string())?;
    let ack = pending.await.map_err(|e| e.to_string())?;
    let late = Timestamp::now().duration_since(out.fire_at);
    metrics().fire_lateness.record(late.as_secs_f64().max(0.0), &[]);
    tracing::debug!(schedule = %out.schedule, nominal = %due.scheduled_for, duplicate = ack.duplicate, "fired");
    Ok(())
}

//! The console's two background readers:
//! - the events stream (`jetsched.event.>`), read by an ordered consumer
//!   from an hour back (at most [`MAX_HISTORY`] events), feeds the
//!   overview's statistics and, once caught up, every live page: each event
//!   is rendered once as a table row and broadcast to the connected
//!   server-sent event streams;
//! - every [`SAMPLE_EVERY`], the backlog per queue and band (the worker
//!   consumers) and the DLQ's size (the stream's message count).
//!
//! Both only read: any number of consoles can run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use jetsched_contract::{Handles, RunEvent};
use jetsched_runtime::{Backoff, Outage};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use super::view;

/// Most past events read at start-up; an older part of the hour is left out
/// of the charts.
pub const MAX_HISTORY: u64 = 200_000;
/// How often backlog and DLQ size are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

static EVENTS: Outage = Outage::new("console reading the events stream");
static SAMPLING: Outage = Outage::new("console sampling backlog and DLQ");

/// One event as live pages get it.
#[derive(Debug)]
pub struct Live {
    /// The event.
    pub event: RunEvent,
    /// Its table row, rendered (and escaped) once for every listener.
    pub row: String,
}

/// Reads the events stream until `shutdown`, re-creating the consumer (from
/// the next sequence) after a failure.
pub async fn follow(
    h: Handles,
    stats: Arc<Mutex<Stats>>,
    live: broadcast::Sender<Arc<Live>>,
    shutdown: CancellationToken,
) {
    let mut next: Option<u64> = None;
    let mut caught_up = false;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = read(&h, &stats, &live, &mut next, &mut caught_up, &mut backoff) => r,
        };
        if let Err(err) = result {
            EVENTS.failed(&format_args!("{err:#}"));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

/// One consumer's life: from `next` (or an hour back) until it fails.
async fn read(
    h: &Handles,
    stats: &Mutex<Stats>,
    live: &broadcast::Sender<Arc<Live>>,
    next: &mut Option<u64>,
    caught_up: &mut bool,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let stream = h.js.get_stream(h.names.events_stream()).await?;
    let last = stream.get_info().await?.state.last_sequence;
    let deliver_policy = match *next {
        Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq },
        None => {
            let hour_ago = Timestamp::now().checked_sub(SignedDuration::from_hours(1))?;
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(hour_ago.as_nanosecond())?;
            DeliverPolicy::ByStartTime { start_time }
        }
    };
    let config =
        |deliver_policy| OrderedConfig { filter_subject: h.names.event_filter(), deliver_policy, ..Default::default() };
    let mut consumer = stream.create_consumer(config(deliver_policy)).await?;
    if next.is_none() && consumer.cached_info().num_pending > MAX_HISTORY {
        let start_sequence = last.saturating_sub(MAX_HISTORY).max(1);
        consumer = stream.create_consumer(config(DeliverPolicy::ByStartSequence { start_sequence })).await?;
    }
    if consumer.cached_info().num_pending == 0 {
        *caught_up = true;
    }
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        EVENTS.recovered();
        backoff.reset();
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        *next = Some(info.stream_sequence + 1);
        let pending = info.pending;
        let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
        if let Ok(mut s) = stats.lock() {
            s.record(&event);
        }
        if *caught_up {
            let row = view::event_row(&event).into_string();
            // No listener is not an error: nobody has a page open.
            let _ = live.send(Arc::new(Live { event, row }));
        }
        if pending == 0 {
            *caught_up = true;
        }
    }
    anyhow::bail!("the events consumer ended")
}

/// Samples backlog and DLQ size every [`SAMPLE_EVERY`] until `shutdown`.
pub async fn sample(h: Handles, stats: Arc<Mutex<Stats>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sample_once(&h).await {
            Ok((backlog, dlq)) => {
                SAMPLING.recovered();
                if let Ok(mut s) = stats.lock() {
                    s.sample(Timestamp::now(), &backlog, dlq);
                }
            }
            Err(err) => SAMPLING.failed(&format_args!("{err:#}")),
        }
    }
}

async fn sample_once(h: &Handles) -> anyhow::Result<(Vec<((String, u8), u64)>, u64)> {
    let backlog = crate::inspect::backlog(h).await?;
    let backlog = backlog.into_iter().map(|b| ((b.queue, b.band), b.waiting + b.running)).collect();
    let dlq = h.js.get_stream(h.names.dlq_stream()).await?.get_info().await?.state.messages;
    Ok((backlog, dlq))
}

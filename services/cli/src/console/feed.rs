//! The console's two background readers:
//! - the run events: first the last hour from the run records' history
//!   (every stored change of the runs bucket, at most [`MAX_HISTORY`]; a
//!   fast run's start is not stored, so it is taken from its end record),
//!   then live from `jetsched.event.>` (queued, started and succeeded are
//!   published live only). They feed the overview's statistics and every
//!   live page: each live event is rendered once as a table row and
//!   broadcast to the connected server-sent event streams;
//! - every [`SAMPLE_EVERY`], the backlog per queue and band (the worker
//!   consumers) and the DLQ's size (the stream's message count).
//!
//! Both only read: any number of consoles can run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jetsched_contract::{Handles, RunEvent, RunRecord, RunStatus};
use jetsched_runtime::{Backoff, Outage, RunStore};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use super::view;

/// Most past record changes read at start-up; an older part of the hour is
/// left out of the charts.
pub const MAX_HISTORY: u64 = 200_000;
/// How often backlog and DLQ size are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

static EVENTS: Outage = Outage::new("console reading the run history");
static SAMPLING: Outage = Outage::new("console sampling backlog and DLQ");

/// One event as live pages get it.
#[derive(Debug)]
pub struct Live {
    /// The event.
    pub event: RunEvent,
    /// Its table row, rendered (and escaped) once for every listener.
    pub row: String,
}

/// Reads the last hour, then live events until `shutdown`.
pub async fn follow(
    h: Handles,
    runs: RunStore,
    stats: Arc<Mutex<Stats>>,
    live: broadcast::Sender<Arc<Live>>,
    shutdown: CancellationToken,
) {
    // Subscribed before the history is read: nothing falls between them.
    let mut events = match h.js.client().subscribe(h.names.event_filter()).await {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "the console cannot subscribe to run events; its pages are not live");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let since = Timestamp::now().checked_sub(SignedDuration::from_hours(1)).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut seen = loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = runs.changes_since(since, MAX_HISTORY) => r,
        };
        match read {
            Ok(records) => {
                EVENTS.recovered();
                break history(&records, &stats);
            }
            Err(err) => EVENTS.failed(&format_args!("{err:#}")),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = events.next() => m,
        };
        let Some(msg) = msg else { return };
        let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
        // Published while the history was read, and in it already.
        if !seen.is_empty() && seen.remove(&key(&event)) {
            continue;
        }
        if let Ok(mut s) = stats.lock() {
            s.record(&event);
        }
        let row = view::event_row(&event).into_string();
        // No listener is not an error: nobody has a page open.
        let _ = live.send(Arc::new(Live { event, row }));
    }
}

/// What tells an event of a run's change apart from another.
fn key(e: &RunEvent) -> (String, RunStatus, u32) {
    (e.run_id.clone().unwrap_or_default(), e.status, e.attempt)
}

/// Feeds the statistics with the events `records` stand for; returns the
/// keys of those of the last minute (live events may repeat them).
fn history(records: &[RunRecord], stats: &Mutex<Stats>) -> HashSet<(String, RunStatus, u32)> {
    let recent = Timestamp::now().checked_sub(SignedDuration::from_mins(1)).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut started = HashSet::new();
    let mut seen = HashSet::new();
    let Ok(mut stats) = stats.lock() else { return seen };
    for r in records {
        let mut events = Vec::with_capacity(2);
        if r.status == RunStatus::Started {
            started.insert((r.run_id.clone(), r.attempt));
        } else if let Some(at) = r.started_at
            && (r.status.is_terminal() || r.status == RunStatus::Failed)
            && started.insert((r.run_id.clone(), r.attempt))
        {
            // A start that was announced live only: its end record says when.
            events.push(RunEvent { status: RunStatus::Started, at, ..r.event() });
        }
        events.push(r.event());
        for e in events {
            if e.at >= recent {
                seen.insert(key(&e));
            }
            stats.record(&e);
        }
    }
    seen
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

//! Listing runs newest first, answered from the end of a stream instead of a
//! read of every record (`jetsched runs list`, the console).
//!
//! Two streams hold what a listing needs, in the order things happened:
//! - the runs bucket's own stream (`KV_jetsched-runs`): each change of a run
//!   record is a message on `$KV.jetsched-runs.<run id>`, so the last
//!   messages are the runs that changed last, and a schedule's runs are a
//!   subject filter (`s.<schedule>.>`);
//! - the events stream, for the statuses it keeps (failed, dead, skipped,
//!   cancelled, expired): `jetsched.event.<task>.<status>` is a subject
//!   filter by task and status.
//!
//! Either is read backwards in windows (each an ordered consumer from a start
//! sequence, filtered by the server), newest window first, doubling up to a
//! bound, until a page is full. A message is listed only when it is the run's
//! latest state (the record's revision is the message's sequence; for events,
//! the record's status and attempt are the event's), so each run appears
//! once, at its last change, across pages too. Cost and memory grow with the
//! messages between now and the page's end, not with the runs stored. A
//! filter on a live-only status (queued, started, succeeded) or on a task
//! alone is checked on the records themselves: its cost grows with the
//! changes read until the page is full, and `--since` bounds it.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use jetsched_contract::{RunEvent, RunRecord, RunStatus, run::schedule_runs_filter};
use jiff::Timestamp;

use crate::runs::{RunStore, RunStoreError};

/// The first window of a scan, in stream messages (grown from the page size).
const FIRST_WINDOW: u64 = 64;
/// The largest window: bounds what one step holds in memory.
const MAX_WINDOW: u64 = 16_384;
/// Longest wait for one message of a window.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Which runs, and how many.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only runs of this task.
    pub task: Option<String>,
    /// Only runs fired by this schedule.
    pub schedule: Option<String>,
    /// Only runs now in this status.
    pub status: Option<RunStatus>,
    /// Only runs that last changed at or after this time.
    pub since: Option<Timestamp>,
    /// Only runs that last changed before this time.
    pub until: Option<Timestamp>,
    /// Only changes stored before this stream sequence (a page's cursor).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// A page of runs, newest change first.
#[derive(Debug)]
pub struct Page {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Where the next page starts (`before`), if there may be more.
    pub next: Option<u64>,
    /// Stream messages read to answer.
    pub scanned: u64,
}

/// Which stream answers.
enum Source {
    /// Run record changes; the filter is on the run id.
    Records,
    /// Kept run events; the filter is on task and status.
    Events,
}

impl RunStore {
    /// Answers one page of `q`.
    pub async fn page(&self, q: &RunQuery) -> Result<Page, RunStoreError> {
        let names = self.names();
        let limit = q.limit.max(1);
        // A schedule is a prefix of the run id: the records' stream filters
        // it. A kept status is a subject token of the events. Otherwise the
        // records are read and checked.
        let (source, stream, filter) = match (&q.schedule, q.status) {
            (None, Some(status)) if status.is_kept() => (
                Source::Events,
                self.js().get_stream(names.events_stream()).await.map_err(|e| scan_error("events stream", e))?,
                names.event_subject(q.task.as_deref().unwrap_or("*"), status.as_str()),
            ),
            (schedule, _) => (
                Source::Records,
                self.changes_stream().await?,
                names.runs_bucket_subject(&schedule.as_deref().map_or(">".to_string(), schedule_runs_filter)),
            ),
        };
        let state = stream.get_info().await.map_err(|e| scan_error(&filter, e))?.state;
        let mut lower = state.first_sequence.max(1);
        let mut upper = state.last_sequence;
        if let Some(since) = q.since {
            lower = lower.max(first_at_or_after(&stream, &filter, since).await?.unwrap_or(upper + 1));
        }
        if let Some(until) = q.until
            && let Some(seq) = first_at_or_after(&stream, &filter, until).await?
        {
            upper = upper.min(seq.saturating_sub(1));
        }
        if let Some(before) = q.before {
            upper = upper.min(before.saturating_sub(1));
        }

        let wanted = |r: &RunRecord| {
            q.task.as_ref().is_none_or(|t| &r.task == t)
                && q.status.is_none_or(|s| r.status == s)
                && q.schedule.as_ref().is_none_or(|s| r.schedule.as_ref() == Some(s))
        };
        let mut page = Page { runs: Vec::new(), next: None, scanned: 0 };
        let mut seen: HashSet<String> = HashSet::new();
        let mut width = FIRST_WINDOW.max(limit as u64 * 4).min(MAX_WINDOW);
        let mut hi = upper;
        while hi >= lower && hi > 0 {
            let lo = hi.saturating_sub(width - 1).max(lower);
            let window = read_window(&stream, &filter, lo, hi).await?;
            page.scanned += window.len() as u64;
            for (seq, subject, payload) in window.into_iter().rev() {
                let record = match source {
                    Source::Records => self.latest_record(&mut seen, &subject, seq, &payload, &wanted).await?,
                    Source::Events => self.latest_from_event(&mut seen, &payload).await?,
                };
                let Some(record) = record else { continue };
                if !wanted(&record) {
                    continue;
                }
                page.runs.push(record);
                if page.runs.len() == limit {
                    page.next = (seq > lower).then_some(seq);
                    return Ok(page);
                }
            }
            if lo == lower {
                break;
            }
            hi = lo - 1;
            width = (width * 2).min(MAX_WINDOW);
        }
        Ok(page)
    }

    /// The run record a records-stream message holds, if it matches and is
    /// the record's current revision (not superseded, not deleted).
    async fn latest_record(
        &self,
        seen: &mut HashSet<String>,
        subject: &str,
        seq: u64,
        payload: &[u8],
        wanted: &impl Fn(&RunRecord) -> bool,
    ) -> Result<Option<RunRecord>, RunStoreError> {
        let Some(key) = self.names().parse_runs_bucket_subject(subject) else { return Ok(None) };
        // A newer change of this run was met first (it is listed or left out there).
        if !seen.insert(key.to_string()) {
            return Ok(None);
        }
        // Checked on the message first: only a match costs a read.
        match serde_json::from_slice::<RunRecord>(payload) {
            Ok(r) if wanted(&r) => {}
            _ => return Ok(None),
        }
        let Some(current) = self.get(key).await? else { return Ok(None) };
        Ok((current.revision == seq).then_some(current.record))
    }

    /// The run record an event is about, if the event reports the run's
    /// current state (same status and attempt).
    async fn latest_from_event(
        &self,
        seen: &mut HashSet<String>,
        payload: &[u8],
    ) -> Result<Option<RunRecord>, RunStoreError> {
        let Ok(event) = serde_json::from_slice::<RunEvent>(payload) else { return Ok(None) };
        let Some(run_id) = event.run_id else { return Ok(None) };
        // Met at its newest matching event first: if that is not its current
        // state, no older one is.
        if !seen.insert(run_id.clone()) {
            return Ok(None);
        }
        let Some(current) = self.get(&run_id).await? else { return Ok(None) };
        let record = current.record;
        Ok((record.status == event.status && record.attempt == event.attempt).then_some(record))
    }
}

/// The messages on `filter` with sequences in `lo..=hi`, oldest first.
async fn read_window(
    stream: &Stream,
    filter: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, String, bytes::Bytes)>, RunStoreError> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: lo },
            ..Default::default()
        })
        .await
        .map_err(|e| scan_error(filter, e))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| scan_error(filter, e))?;
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| scan_error(filter, "timed out"))?
            .ok_or_else(|| scan_error(filter, "ended early"))?
            .map_err(|e| scan_error(filter, e))?;
        let info = msg.info().map_err(|e| scan_error(filter, e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > hi {
            break;
        }
        out.push((seq, msg.subject.to_string(), msg.payload.clone()));
        if pending == 0 || seq == hi {
            break;
        }
    }
    Ok(out)
}

/// The sequence of the first message on `filter` stored at or after `t`.
async fn first_at_or_after(stream: &Stream, filter: &str, t: Timestamp) -> Result<Option<u64>, RunStoreError> {
    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).map_err(|e| scan_error(filter, e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| scan_error(filter, e))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    let mut messages = consumer.messages().await.map_err(|e| scan_error(filter, e))?;
    let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
        .await
        .map_err(|_| scan_error(filter, "timed out"))?
        .ok_or_else(|| scan_error(filter, "ended early"))?
        .map_err(|e| scan_error(filter, e))?;
    Ok(Some(msg.info().map_err(|e| scan_error(filter, e))?.stream_sequence))
}

fn scan_error(what: &str, e: impl std::fmt::Display) -> RunStoreError {
    RunStoreError::Unavailable { run_id: what.to_string(), reason: format!("reading {what}: {e}") }
}

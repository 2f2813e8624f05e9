//! `jetsched runs list`: the newest runs first, answered from the end of a
//! stream instead of a read of every record.
//!
//! Two streams hold what a listing needs, in the order things happened:
//! - the runs bucket's own stream (`KV_jetsched-runs`): each change of a run
//!   record is a message on `$KV.jetsched-runs.<run id>`, so the last
//!   messages are the runs that changed last, and a schedule's runs are a
//!   subject filter (`s.<schedule>.>`);
//! - the events stream: `jetsched.event.<task>.<status>` is a subject filter
//!   by task and status.
//!
//! Either is read backwards in windows (each an ordered consumer from a start
//! sequence, filtered by the server), newest window first, doubling up to a
//! bound, until a page is full. A message is listed only when it is the run's
//! latest state (the record's revision is the message's sequence; for events,
//! the record's status and attempt are the event's), so each run appears
//! once, at its last change, across pages too. Cost and memory grow with the
//! messages between now and the page's end, not with the runs stored.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use jetsched_contract::{Handles, RunEvent, RunRecord, RunStatus, parse_duration, run::schedule_runs_filter};
use jiff::{SignedDuration, Timestamp};

use crate::admin::BadInput;
use crate::inspect::record_row;

/// The first window of a scan, in stream messages (grown from the page size).
const FIRST_WINDOW: u64 = 64;
/// The largest window: bounds what one step holds in memory.
const MAX_WINDOW: u64 = 16_384;
/// Longest wait for one message of a window.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `jetsched runs list` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only runs of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only runs fired by this schedule.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Only runs now in this status (queued, started, succeeded, failed, dead, cancelled, expired).
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs that last changed at or after this time: RFC 3339
    /// (2026-12-01T00:00:00Z) or a duration ago (90m, 2d).
    #[arg(long, value_parser = parse_when)]
    pub since: Option<Timestamp>,
    /// Only runs that last changed before this time (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    pub until: Option<Timestamp>,
    /// The next page: the cursor the previous page printed (`--before N`).
    #[arg(long)]
    pub before: Option<u64>,
    /// At most this many (a page).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

impl Default for ListArgs {
    fn default() -> Self {
        ListArgs { task: None, schedule: None, status: None, since: None, until: None, before: None, limit: 50 }
    }
}

/// A page of runs, newest change first.
#[derive(Debug)]
pub struct Page {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Where the next page starts (`--before`), if there may be more.
    pub next: Option<u64>,
    /// Stream messages read to answer.
    pub scanned: u64,
}

/// Prints a page of runs, and the cursor of the next one on stderr.
pub async fn list(h: &Handles, args: ListArgs) -> anyhow::Result<()> {
    let page = page(h, &args).await?;
    if page.runs.is_empty() {
        eprintln!("no runs match");
    } else {
        let mut t = crate::admin::table(&["RUN", "STATUS", "TASK", "ATTEMPT", "CREATED", "ERROR / REPLAYS"]);
        for r in &page.runs {
            t.add_row(record_row(r));
        }
        crate::admin::print_table(&t);
    }
    if let Some(next) = page.next {
        eprintln!("more: repeat with --before {next}");
    }
    Ok(())
}

/// Parses `--since`/`--until`: a timestamp, or a duration before now.
pub(crate) fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let ago = parse_duration(s).map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 90m"))?;
    let ago = SignedDuration::try_from(ago).map_err(|e| e.to_string())?;
    Timestamp::now().checked_sub(ago).map_err(|e| e.to_string())
}

/// Which stream answers, filtered how.
enum Source {
    /// Run record changes; the filter is on the run id.
    Records,
    /// Run events; the filter is on task and status.
    Events,
}

/// Answers one page.
pub async fn page(h: &Handles, args: &ListArgs) -> anyhow::Result<Page> {
    let status = match &args.status {
        Some(s) => Some(RunStatus::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            BadInput(format!("unknown status {s:?}; one of {}", all.join(", ")))
        })?),
        None => None,
    };
    if args.limit == 0 {
        return Err(BadInput("--limit must be at least 1".into()).into());
    }
    // A schedule is a prefix of the run id: the records' stream filters it.
    // Otherwise task and status are subject tokens of the events.
    let (source, stream, filter) = match (&args.schedule, &args.task, status) {
        (None, Some(_), _) | (None, None, Some(_)) => (
            Source::Events,
            h.names.events_stream(),
            h.names.event_subject(args.task.as_deref().unwrap_or("*"), status.map_or("*", |s| s.as_str())),
        ),
        (schedule, _, _) => (
            Source::Records,
            h.names.runs_bucket_stream(),
            h.names.runs_bucket_subject(&schedule.as_deref().map_or(">".to_string(), schedule_runs_filter)),
        ),
    };
    let stream = h.js.get_stream(&stream).await?;
    let state = stream.get_info().await?.state;
    let mut lower = state.first_sequence.max(1);
    let mut upper = state.last_sequence;
    if let Some(since) = args.since {
        lower = lower.max(first_at_or_after(&stream, &filter, since).await?.unwrap_or(upper + 1));
    }
    if let Some(until) = args.until
        && let Some(seq) = first_at_or_after(&stream, &filter, until).await?
    {
        upper = upper.min(seq.saturating_sub(1));
    }
    if let Some(before) = args.before {
        upper = upper.min(before.saturating_sub(1));
    }

    let mut page = Page { runs: Vec::new(), next: None, scanned: 0 };
    let mut seen: HashSet<String> = HashSet::new();
    let mut width = FIRST_WINDOW.max(args.limit as u64 * 4).min(MAX_WINDOW);
    let mut hi = upper;
    while hi >= lower && hi > 0 {
        let lo = hi.saturating_sub(width - 1).max(lower);
        let window = read_window(&stream, &filter, lo, hi).await?;
        page.scanned += window.len() as u64;
        for (seq, subject, payload) in window.into_iter().rev() {
            let record = match source {
                Source::Records => latest_record(h, &mut seen, &subject, seq).await?,
                Source::Events => latest_from_event(h, &mut seen, &payload).await?,
            };
            let Some(record) = record else { continue };
            let wanted = args.task.as_ref().is_none_or(|t| &record.task == t)
                && status.is_none_or(|s| record.status == s)
                && args.schedule.as_ref().is_none_or(|s| record.schedule.as_ref() == Some(s));
            if !wanted {
                continue;
            }
            page.runs.push(record);
            if page.runs.len() == args.limit {
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

/// The run record a records-stream message is for, if that message is the
/// record's current revision (not superseded, not deleted).
async fn latest_record(
    h: &Handles,
    seen: &mut HashSet<String>,
    subject: &str,
    seq: u64,
) -> anyhow::Result<Option<RunRecord>> {
    let Some(key) = h.names.parse_runs_bucket_subject(subject) else { return Ok(None) };
    // A newer change of this run was met first (it is listed or left out there).
    if !seen.insert(key.to_string()) {
        return Ok(None);
    }
    let Some(entry) = h.runs.entry(key).await? else { return Ok(None) };
    if entry.revision != seq || entry.operation != async_nats::jetstream::kv::Operation::Put {
        return Ok(None);
    }
    Ok(serde_json::from_slice(&entry.value).ok())
}

/// The run record an event is about, if the event reports the run's
/// current state (same status and attempt).
async fn latest_from_event(
    h: &Handles,
    seen: &mut HashSet<String>,
    payload: &[u8],
) -> anyhow::Result<Option<RunRecord>> {
    let Ok(event) = serde_json::from_slice::<RunEvent>(payload) else { return Ok(None) };
    let Some(run_id) = event.run_id else { return Ok(None) };
    // Met at its newest matching event first: if that is not its current
    // state, no older one is.
    if !seen.insert(run_id.clone()) {
        return Ok(None);
    }
    let Some(value) = h.runs.get(&run_id).await? else { return Ok(None) };
    let Ok(record) = serde_json::from_slice::<RunRecord>(&value) else { return Ok(None) };
    if record.status != event.status || record.attempt != event.attempt {
        return Ok(None);
    }
    Ok(Some(record))
}

/// The messages on `filter` with sequences in `lo..=hi`, oldest first.
async fn read_window(
    stream: &Stream,
    filter: &str,
    lo: u64,
    hi: u64,
) -> anyhow::Result<Vec<(u64, String, bytes::Bytes)>> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: lo },
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("reading {filter} timed out"))?
            .ok_or_else(|| anyhow::anyhow!("reading {filter} ended early"))??;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
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
async fn first_at_or_after(stream: &Stream, filter: &str, t: Timestamp) -> anyhow::Result<Option<u64>> {
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    let mut messages = consumer.messages().await?;
    let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
        .await
        .map_err(|_| anyhow::anyhow!("reading {filter} timed out"))?
        .ok_or_else(|| anyhow::anyhow!("reading {filter} ended early"))??;
    Ok(Some(msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_is_a_time_or_a_duration_ago() {
        let t = parse_when("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-12-01T00:00:00Z");
        let ago = parse_when("1h").unwrap();
        let d = Timestamp::now().duration_since(ago).as_secs();
        assert!((3599..=3601).contains(&d), "{d}");
        let err = parse_when("yesterday").unwrap_err();
        assert!(err.contains("neither an RFC 3339 time nor a duration"), "{err}");
    }
}

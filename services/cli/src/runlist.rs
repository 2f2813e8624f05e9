//! `jetsched runs list`: the newest runs first, answered from the end of a
//! stream instead of a read of every record (see the run store's
//! `RunStore::page` for how).

use jetsched_contract::{Handles, RunRecord, RunStatus, parse_duration};
use jetsched_runtime::{RunQuery, RunStore};
use jiff::{SignedDuration, Timestamp};

use crate::admin::BadInput;

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

/// Prints a page of runs, and the cursor of the next one on stderr.
pub async fn list(h: &Handles, args: ListArgs) -> anyhow::Result<()> {
    let store = run_store(h).await?;
    let page = page(&store, &args).await?;
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

/// The run store, for a CLI verb.
pub async fn run_store(h: &Handles) -> anyhow::Result<RunStore> {
    Ok(RunStore::open(jetsched_runtime::Publisher::new(h.js.clone(), h.names.clone())).await?)
}

/// A run record's cells in `runs list`: run, status, task, attempt,
/// created, and its error or the run it replays.
fn record_row(r: &RunRecord) -> Vec<String> {
    let note = match (&r.error, &r.replay_of) {
        (Some(e), _) => format!("error: {e}"),
        (None, Some(of)) => format!("replays {of}"),
        (None, None) => String::new(),
    };
    vec![
        r.run_id.clone(),
        r.status.as_str().to_string(),
        r.task.clone(),
        r.attempt.to_string(),
        r.created_at.round(jiff::Unit::Millisecond).unwrap_or(r.created_at).to_string(),
        note,
    ]
}

/// One line per run record (`runs watch`).
pub fn format_record(r: &RunRecord) -> String {
    let mut line = format!(
        "{:<44}  {:<9}  {:<16}  attempt {}  created {}",
        r.run_id,
        r.status.as_str(),
        r.task,
        r.attempt,
        r.created_at.round(jiff::Unit::Millisecond).unwrap_or(r.created_at)
    );
    if let Some(e) = &r.error {
        line.push_str(&format!("  error: {e}"));
    }
    if let Some(of) = &r.replay_of {
        line.push_str(&format!("  replays {of}"));
    }
    line
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

/// Answers one page of `args`.
pub async fn page(store: &RunStore, args: &ListArgs) -> anyhow::Result<jetsched_runtime::Page> {
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
    let query = RunQuery {
        task: args.task.clone(),
        schedule: args.schedule.clone(),
        status,
        since: args.since,
        until: args.until,
        before: args.before,
        limit: args.limit,
    };
    Ok(store.page(&query).await?)
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

//! The checks a run passes before it is queued: its schedule's dependency
//! on another schedule, its task's time window, and (last, in
//! `crate::overlap`) its schedule's overlap policy. Each says go, wait (the
//! inbox message comes back later), start no earlier than some instant,
//! skip, or fail.

use std::collections::VecDeque;
use std::time::Duration;

use jetsched_contract::schedule::ScheduleDependency;
use jetsched_contract::{RunRecord, RunStatus, ScheduleDef, run};
use jetsched_runtime::Backoff;
use jiff::{SignedDuration, Timestamp};

use crate::ctx::Ctx;

/// A gate's verdict.
#[derive(Debug, PartialEq)]
pub enum Gate {
    /// Queue it now.
    Go,
    /// Queue it, to start no earlier than this.
    NotBefore(Timestamp),
    /// Look again after this long (the inbox message is redelivered).
    Wait(Duration),
    /// Do not run it (a `skipped` run).
    Skip(String),
    /// Give up on it (a `dead` run, kept in the DLQ).
    Fail(String),
}

/// The record of run `run_id`, if it exists.
pub(crate) async fn run_record(ctx: &Ctx, run_id: &str) -> anyhow::Result<Option<RunRecord>> {
    Ok(ctx.runs.get(run_id).await?.map(|s| s.record))
}

/// The status of run `run_id`, if it has a record.
pub(crate) async fn run_status(ctx: &Ctx, run_id: &str) -> anyhow::Result<Option<RunStatus>> {
    Ok(run_record(ctx, run_id).await?.map(|r| r.status))
}

/// Most fires of the other schedule looked at for one date: its latest ones.
const DEPENDENCY_FIRES: usize = 64;

/// Most fires of the other schedule walked through for one date.
const DEPENDENCY_WALK: usize = 200_000;

/// A fire waiting for its dependency looks again after
/// `delay_for(delivery count)` of this, never past its deadline.
fn dependency_poll() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
}

/// Whether the schedule `dep.schedule` has a succeeded run on the same date
/// (in `zone`) as `nominal`: go if so; if not, wait (looking again with
/// backoff) until `nominal + dep.wait`, then fail with the reason. `fire`
/// and `delivered` name the waiting fire for its one log line.
pub async fn dependency(
    ctx: &Ctx,
    dep: &ScheduleDependency,
    zone: Option<&str>,
    nominal: Timestamp,
    fire: &str,
    delivered: u64,
) -> anyhow::Result<Gate> {
    let deadline = nominal.checked_add(SignedDuration::try_from(dep.wait.0)?)?;
    let Some(value) = ctx.schedules.get(&dep.schedule).await? else {
        return Ok(Gate::Fail(format!("depends on schedule {:?}, which does not exist", dep.schedule)));
    };
    let other = match ScheduleDef::from_json(&dep.schedule, &value).and_then(|d| d.calendar()) {
        Ok(c) => c,
        Err(e) => return Ok(Gate::Fail(format!("depends on schedule {} which is invalid: {e}", dep.schedule))),
    };
    let tz = match zone {
        None | Some("UTC") => jiff::tz::TimeZone::UTC,
        Some(z) => jiff::tz::TimeZone::get(z)?,
    };
    let date = tz.to_datetime(nominal).date();
    let day_start = tz.to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight())).compatible()?;
    let day_end =
        tz.to_ambiguous_timestamp(date.tomorrow()?.to_datetime(jiff::civil::Time::midnight())).compatible()?;
    let now = Timestamp::now();
    // Fires still ahead have no run yet (a minute of slack for clocks).
    let upto = day_end.min(now.checked_add(SignedDuration::from_secs(60))?);
    let before = day_start.checked_sub(SignedDuration::from_nanos(1))?;
    let mut latest = VecDeque::with_capacity(DEPENDENCY_FIRES);
    for t in other.iter_after(before).take_while(|t| *t < upto).take(DEPENDENCY_WALK) {
        if latest.len() == DEPENDENCY_FIRES {
            latest.pop_front();
        }
        latest.push_back(t);
    }
    let mut last_seen: Option<RunRecord> = None;
    for t in latest.iter().rev() {
        match run_record(ctx, &run::scheduled_run_id(&dep.schedule, *t)).await? {
            Some(r) if r.status == RunStatus::Succeeded => {
                if delivered > 1 {
                    tracing::info!(run_id = fire, upstream = %r.run_id, "dependency met; the fire goes on");
                }
                return Ok(Gate::Go);
            }
            Some(r) if last_seen.is_none() => last_seen = Some(r),
            _ => {}
        }
    }
    if now >= deadline {
        let latest = match last_seen {
            None => "it has no run on that date".to_string(),
            Some(r) => match r.error {
                Some(e) if r.status.is_terminal() => format!("its latest run {} ended {}: {e}", r.run_id, r.status),
                _ => format!("its latest run {} is {}", r.run_id, r.status),
            },
        };
        return Ok(Gate::Fail(format!(
            "dependency not met: no run of schedule {} on {date} succeeded by {deadline} ({latest})",
            dep.schedule
        )));
    }
    if delivered <= 1 {
        tracing::info!(run_id = fire, upstream = %dep.schedule, %date, %deadline, "fire waits for the schedule it depends on");
    }
    let left = deadline.duration_since(now).unsigned_abs();
    Ok(Gate::Wait(dependency_poll().delay_for(delivered).min(left)))
}

/// The task's time window at `at`.
pub async fn window(ctx: &Ctx, name: &str, at: Timestamp) -> anyhow::Result<Gate> {
    let window = match ctx.windows.get(name).await? {
        Some(Ok(w)) => w,
        Some(Err(reason)) => return Ok(Gate::Fail(format!("window {name} is invalid: {reason}"))),
        None => return Ok(Gate::Fail(format!("window {name:?} does not exist in the windows bucket"))),
    };
    if window.contains(at) {
        return Ok(Gate::Go);
    }
    match (window.outside, window.next_open(at)) {
        (jetsched_contract::window::Outside::Skip, _) => Ok(Gate::Skip(format!("outside window {name}"))),
        (jetsched_contract::window::Outside::Defer, Some(open)) => Ok(Gate::NotBefore(open)),
        (jetsched_contract::window::Outside::Defer, None) => Ok(Gate::Fail(format!("window {name} never opens again"))),
    }
}

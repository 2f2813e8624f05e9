//! The checks a run passes before it is queued: its schedule's overlap
//! policy, its schedule's dependency on another schedule, and its task's
//! time window. Each says go, wait (the inbox message comes back later),
//! start no earlier than some instant, skip, or fail.

use std::time::Duration;

use jetsched_contract::schedule::{Overlap, ScheduleDependency};
use jetsched_contract::{RunStatus, ScheduleDef, run};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

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

/// Overlap bookkeeping of one schedule, under `o.<schedule>` in `jetsched-rates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverlapState {
    /// The schedule's latest dispatched run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Under `buffer_one`: the fire waiting for `active` to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<String>,
}

fn overlap_key(schedule: &str) -> String {
    format!("o.{schedule}")
}

async fn status_of(ctx: &Ctx, run_id: &str) -> anyhow::Result<Option<RunStatus>> {
    Ok(ctx.runs.get(run_id).await?.map(|s| s.record.status))
}

/// Applies the schedule's overlap policy to its fire `run_id`.
pub async fn overlap(ctx: &Ctx, schedule: &str, policy: Overlap, run_id: &str) -> anyhow::Result<Gate> {
    if policy == Overlap::Allow {
        return Ok(Gate::Go);
    }
    let key = overlap_key(schedule);
    let entry = ctx.rates.entry(&key).await?;
    let (state, revision) = match &entry {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            (serde_json::from_slice::<OverlapState>(&e.value).unwrap_or_default(), e.revision)
        }
        _ => (OverlapState::default(), 0),
    };
    let running = match &state.active {
        Some(active) if active != run_id => match status_of(ctx, active).await? {
            Some(s) => !s.is_terminal(),
            None => false,
        },
        _ => false,
    };
    if !running {
        if policy == Overlap::BufferOne && state.buffered.as_deref().is_some_and(|b| b != run_id) {
            return Ok(Gate::Skip(format!(
                "run {} is already waiting for its turn",
                state.buffered.unwrap_or_default()
            )));
        }
        return Ok(Gate::Go);
    }
    let active = state.active.clone().unwrap_or_default();
    match policy {
        Overlap::Allow => Ok(Gate::Go),
        Overlap::Skip => Ok(Gate::Skip(format!("previous run {active} is still running"))),
        Overlap::BufferOne => match &state.buffered {
            Some(b) if b == run_id => Ok(Gate::Wait(Duration::from_millis(500))),
            Some(b) => Ok(Gate::Skip(format!("run {b} is already waiting for {active} to finish"))),
            None => {
                let next = OverlapState { buffered: Some(run_id.to_string()), ..state };
                let value = serde_json::to_vec(&next)?;
                let stored = if revision == 0 {
                    ctx.rates.create(&key, value.into()).await.map(|_| ()).map_err(anyhow::Error::from)
                } else {
                    ctx.rates.update(&key, value.into(), revision).await.map(|_| ()).map_err(anyhow::Error::from)
                };
                // Lost a race with another fire: look again shortly.
                let _ = stored;
                Ok(Gate::Wait(Duration::from_millis(500)))
            }
        },
        Overlap::CancelPrevious => {
            ctx.runs.request_cancel(&active).await?;
            Ok(Gate::Go)
        }
    }
}

/// Records `run_id` as the schedule's active run (after it was queued).
pub async fn mark_active(ctx: &Ctx, schedule: &str, run_id: &str) -> anyhow::Result<()> {
    let state = OverlapState { active: Some(run_id.to_string()), buffered: None };
    ctx.rates.put(overlap_key(schedule), serde_json::to_vec(&state)?.into()).await?;
    Ok(())
}

/// Whether the schedule `dep.schedule` has a succeeded run on the same date
/// (in `zone`) as `nominal`; waits until `nominal + dep.wait`, then fails.
pub async fn dependency(
    ctx: &Ctx,
    dep: &ScheduleDependency,
    zone: Option<&str>,
    nominal: Timestamp,
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
    let before = day_start.checked_sub(SignedDuration::from_nanos(1))?;
    let fires: Vec<Timestamp> = other.iter_after(before).take_while(|t| *t < day_end).take(10_000).collect();
    for fire in &fires {
        if status_of(ctx, &run::scheduled_run_id(&dep.schedule, *fire)).await? == Some(RunStatus::Succeeded) {
            return Ok(Gate::Go);
        }
    }
    let now = Timestamp::now();
    if now >= deadline {
        return Ok(Gate::Fail(format!(
            "dependency not met: no run of schedule {} on {date} succeeded by {deadline}",
            dep.schedule
        )));
    }
    let left = deadline.duration_since(now).unsigned_abs();
    Ok(Gate::Wait(left.min(Duration::from_secs(1))))
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

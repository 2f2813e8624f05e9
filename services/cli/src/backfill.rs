//! `jetsched schedule backfill`: run a schedule for every fire in a past
//! range. It writes a record to `jetsched-backfills` (what `nats kv put
//! jetsched-backfills <id> '{"schedule": ..., "from": ..., "to": ...}'`
//! does), which the ticker holding the schedule's partition executes with
//! the ticker's own run ids, and follows the record with a progress bar
//! until it is done. `--dry-run` lists the fires instead, like `schedule
//! preview`, each with whether it would run.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use jetsched_calendar::Cron;
use jetsched_contract::backfill::MAX_FIRES;
use jetsched_contract::{Backfill, BackfillStatus, Handles, run, validate_name};
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::admin::{bad, edit, stored_schedule};
use crate::wallclock::{dst_note, local_time};

/// Runs of a backfill unfinished at once, unless told otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10;

/// `jetsched schedule backfill <schedule> --from ... --to ...`
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// Schedule id.
    pub schedule: String,
    /// First instant of the range (inclusive): RFC 3339, or a date or a
    /// local date-time (`2026-03-01`, `2026-03-01T06:00`) in the schedule's
    /// time zone.
    #[arg(long)]
    pub from: String,
    /// Last instant of the range (inclusive): RFC 3339, or a date (the
    /// whole day, in the schedule's time zone) or a local date-time.
    #[arg(long)]
    pub to: String,
    /// List the fires and whether each would run; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Runs of the backfill unfinished at once, at most.
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: u32,
    /// The backfill's id (its key in jetsched-backfills) [default: <schedule>-<now>].
    #[arg(long)]
    pub id: Option<String>,
    /// Write the backfill and return, without following its progress.
    #[arg(long)]
    pub detach: bool,
}

/// Runs `schedule backfill`.
pub async fn backfill(h: &Handles, args: BackfillArgs) -> anyhow::Result<()> {
    let plan = plan(h, &args.schedule, &args.from, &args.to, args.max_in_flight).await?;
    if args.dry_run {
        let def = &plan.def;
        let cron = def.cron.as_deref().and_then(|c| Cron::parse(c).ok());
        let calendar = def.calendar().map_err(bad)?;
        let before_from = plan.record.from.checked_sub(SignedDuration::from_nanos(1))?;
        let fires: Vec<Timestamp> = calendar.iter_after(before_from).take_while(|t| *t <= plan.record.to).collect();
        let zone = def.timezone.as_deref().unwrap_or("UTC");
        return dry_run(h, &args.schedule, &plan.tz, cron.as_ref(), zone, &fires).await;
    }
    let (from, to, total) = (plan.record.from, plan.record.to, plan.total);
    let id = store(h, plan, args.id).await?;
    println!("backfill {id} stored: {} fires of {} from {from} to {to}", total, args.schedule);
    if args.detach {
        println!("follow it with: nats kv watch {} {id}", h.names.backfills_bucket());
        return Ok(());
    }
    follow(h, &id, total).await
}

/// A backfill checked and ready to store.
pub struct Plan {
    /// The schedule's definition.
    def: jetsched_contract::ScheduleDef,
    /// Its time zone.
    tz: TimeZone,
    /// The record to write.
    pub record: Backfill,
    /// Fires in the range.
    pub total: u64,
}

/// Checks a backfill of `schedule` from `from` to `to` (RFC 3339, a date or
/// a local date-time in the schedule's zone): the range must be valid and
/// hold at most [`MAX_FIRES`] fires.
pub async fn plan(h: &Handles, schedule: &str, from: &str, to: &str, max_in_flight: u32) -> anyhow::Result<Plan> {
    let def = stored_schedule(h, schedule).await?;
    let calendar = def.calendar().map_err(bad)?;
    let tz = calendar.time_zone().clone();
    let from = instant("--from", from, &tz, false)?;
    let to = instant("--to", to, &tz, true)?;
    let record = Backfill {
        schedule: schedule.to_string(),
        from,
        to,
        max_in_flight,
        status: BackfillStatus::Pending,
        progress: None,
        error: None,
    };
    record.validate().map_err(bad)?;
    let before_from = from.checked_sub(SignedDuration::from_nanos(1))?;
    let total = calendar.span(before_from, to, MAX_FIRES + 1).count;
    if total > MAX_FIRES {
        return Err(bad(format!("the range holds more than {MAX_FIRES} fires; split it into several backfills")));
    }
    Ok(Plan { def, tz, record, total })
}

/// Writes `plan`'s record under `id` (default `<schedule>-<now>`) for the
/// tickers to execute; returns the id.
pub async fn store(h: &Handles, plan: Plan, id: Option<String>) -> anyhow::Result<String> {
    let id = match id {
        Some(id) => id,
        None => format!("{}-{}", plan.record.schedule, Timestamp::now().strftime("%Y%m%dT%H%M%S%3fZ")),
    };
    validate_name("backfill", &id).map_err(|e| bad(e.to_string()))?;
    let bytes = serde_json::to_vec(&plan.record)?;
    match h.backfills.create(&id, bytes.into()).await {
        Ok(_) => Ok(id),
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
            Err(bad(format!("a backfill named {id} exists; choose another --id")))
        }
        Err(err) => Err(err.into()),
    }
}

/// `jetsched schedule backfill-cancel <id>`: sets the record's status to
/// `cancelled` (compare-and-set, like `nats kv update`).
pub async fn cancel(h: &Handles, id: &str) -> anyhow::Result<()> {
    let written = edit(&h.backfills, id, "backfill", |value| {
        let mut record = Backfill::from_json(value).map_err(|e| bad(format!("backfill {id}: {e}")))?;
        if record.status.is_final() {
            println!("backfill {id} is {} already", record.status.as_str());
            return Ok(None);
        }
        record.status = BackfillStatus::Cancelled;
        Ok(Some(serde_json::to_vec(&record)?))
    })
    .await?;
    if written.is_some() {
        println!("backfill {id} cancelled; runs already started go on");
    }
    Ok(())
}

/// An instant from a flag: RFC 3339, or a civil date or date-time in `tz`.
/// A date stands for its first instant, or with `end_of_day` its last.
fn instant(flag: &str, arg: &str, tz: &TimeZone, end_of_day: bool) -> anyhow::Result<Timestamp> {
    if let Ok(t) = arg.parse::<Timestamp>() {
        return Ok(t);
    }
    // A local date-time first: a date parser takes "2026-03-01T06:00" for its date.
    if arg.contains(['T', 't', ' '])
        && let Ok(civil) = arg.parse::<DateTime>()
    {
        return Ok(tz.to_ambiguous_zoned_datetime(civil).compatible()?.timestamp());
    }
    if let Ok(date) = arg.parse::<Date>() {
        let day = if end_of_day { date.tomorrow()? } else { date };
        let start = day.to_zoned_datetime(tz.clone())?.start_of_day()?.timestamp();
        return Ok(if end_of_day { start.checked_sub(SignedDuration::from_nanos(1))? } else { start });
    }
    Err(bad(format!(
        "{flag} {arg:?}: expected RFC 3339 (2026-03-01T00:00:00Z), a date (2026-03-01) or a local date-time"
    )))
}

/// Lists `fires` with what a backfill would do with each.
async fn dry_run(
    h: &Handles,
    schedule: &str,
    tz: &TimeZone,
    cron: Option<&Cron>,
    zone: &str,
    fires: &[Timestamp],
) -> anyhow::Result<()> {
    println!("{}", format!("     {:<26}{:<34}{:<36}{}", "UTC", zone, "run id", "backfill").trim_end());
    let now = Timestamp::now();
    let runs = crate::runlist::run_store(h).await?;
    let (mut would, mut ran, mut skipped) = (0, 0, 0);
    for (i, t) in fires.iter().enumerate() {
        let run_id = run::scheduled_run_id(schedule, *t);
        let state = if *t > now {
            skipped += 1;
            "skipped: not due yet (the ticker fires it)".to_string()
        } else {
            match runs.get(&run_id).await? {
                Some(stored) => {
                    ran += 1;
                    format!("already ran ({})", stored.record.status)
                }
                None => {
                    would += 1;
                    "would run".to_string()
                }
            }
        };
        let mut line = format!("{:>3}  {:<26}{:<34}{run_id:<36}{state}", i + 1, t.to_string(), local_time(tz, *t));
        if let Some(note) = dst_note(tz, cron, *t) {
            line.push_str("  ");
            line.push_str(note);
        }
        println!("{line}");
    }
    println!("would fire {would}, already ran {ran}, skipped {skipped} (of {})", fires.len());
    Ok(())
}

/// Follows backfill `id` with a progress bar until it is finished; prints
/// the summary. Ctrl-C stops following, not the backfill.
async fn follow(h: &Handles, id: &str, total: u64) -> anyhow::Result<()> {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} fires  {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut updates = h.backfills.watch_with_history(id).await?;
    let last = loop {
        let entry = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                bar.abandon();
                println!("stopped following; backfill {id} goes on (cancel it with: jetsched schedule backfill-cancel {id})");
                return Ok(());
            }
            entry = updates.next() => entry,
        };
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("the watch of backfill {id} ended"),
        };
        if entry.operation != Operation::Put {
            bar.abandon();
            anyhow::bail!("backfill {id} was deleted");
        }
        let Ok(record) = Backfill::from_json(&entry.value) else { continue };
        if let Some(p) = &record.progress {
            bar.set_length(p.total);
            bar.set_position(p.handled());
            bar.set_message(format!("fired {}, already ran {}, skipped {}", p.fired, p.already_ran, p.skipped));
        }
        if record.status.is_final() {
            break record;
        }
    };
    bar.finish_and_clear();
    let p = last.progress.clone().unwrap_or_default();
    println!(
        "backfill {id} {}: fired {}, already ran {}, skipped {} (of {})",
        last.status.as_str(),
        p.fired,
        p.already_ran,
        p.skipped,
        p.total
    );
    match (last.status, last.error) {
        (BackfillStatus::Failed, Some(e)) => anyhow::bail!("backfill {id} failed: {e}"),
        (BackfillStatus::Failed, None) => anyhow::bail!("backfill {id} failed"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_end_is_a_time_a_date_or_a_local_date_time() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let at = |arg: &str, end: bool| instant("--from", arg, &berlin, end).unwrap().to_string();
        assert_eq!(at("2026-03-01T06:00:00Z", false), "2026-03-01T06:00:00Z");
        assert_eq!(at("2026-03-01T06:00", false), "2026-03-01T05:00:00Z");
        assert_eq!(at("2026-03-01 06:00", true), "2026-03-01T05:00:00Z");
        assert_eq!(at("2026-03-01", false), "2026-02-28T23:00:00Z");
        assert_eq!(at("2026-03-01", true), "2026-03-01T22:59:59.999999999Z");
        let err = instant("--to", "yesterday", &berlin, true).unwrap_err().to_string();
        assert!(err.contains("--to \"yesterday\""), "{err}");
    }
}

//! `jetsched schedule ...`: schedules in `jetsched-schedules`. Every verb is
//! a convenience over a NATS operation (named in its `--help`); `preview`
//! computes fire times locally with the ticker's own calendar code.

use async_nats::HeaderMap;
use jetsched_calendar::Cron;
use jetsched_contract::{DueFire, Handles, ScheduleDef, Topology, headers, run, validate_name};
use jetsched_runtime::NatsArgs;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::admin::{bad, edit, list_keys, print_value, read_definition, stored_schedule};
use crate::wallclock::{dst_note, local_time};

/// `jetsched schedule ...`
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCmd {
    /// Create or replace a schedule
    /// (nats kv put jetsched-schedules <id> '<json>').
    Put {
        /// Schedule id.
        id: String,
        /// The schedule: JSON, @file, or - for stdin.
        definition: String,
    },
    /// Show a schedule (nats kv get jetsched-schedules <id>).
    Get {
        /// Schedule id.
        id: String,
    },
    /// List schedule ids (nats kv ls jetsched-schedules).
    List,
    /// Delete a schedule (nats kv del jetsched-schedules <id>).
    Delete {
        /// Schedule id.
        id: String,
    },
    /// Stop a schedule from firing (nats kv get, then nats kv update with "paused": true).
    ///
    /// Equivalent: `nats kv get jetsched-schedules <id>`, then `nats kv update
    /// jetsched-schedules <id> '<json with "paused": true>' <revision>` (a
    /// compare-and-set: a concurrent change makes it retry). Fires the ticker
    /// already staged ahead of their time (--lookahead) still run.
    Pause {
        /// Schedule id.
        id: String,
    },
    /// Let a paused schedule fire again (nats kv get, then nats kv update without "paused").
    ///
    /// Equivalent: `nats kv get jetsched-schedules <id>`, then `nats kv update
    /// jetsched-schedules <id> '<json without "paused">' <revision>`. It fires
    /// from its next occurrence; what was due while paused is not caught up.
    Resume {
        /// Schedule id.
        id: String,
    },
    /// Fire a schedule once now, under a run id of its own (nats pub jetsched.due.<task>).
    ///
    /// Equivalent: `nats pub jetsched.due.<task>
    /// '{"schedule":"<id>","scheduled_for":"<now>"}' -H Nats-Msg-Id:<id>@<now>`.
    /// The nominal time is now to the millisecond, moved on while it is one of
    /// the schedule's own occurrences, so it never takes a regular fire's run
    /// id. Works on paused schedules, does not count towards max_runs, follows
    /// the overlap policy and ignores depends_on.
    Trigger {
        /// Schedule id.
        id: String,
        /// Payload for this run instead of the schedule's: JSON, @file, or - for stdin.
        #[arg(long)]
        payload: Option<String>,
    },
    /// Print the next fire times in UTC and the schedule's zone, DST marked (nats kv get).
    ///
    /// Of a stored schedule (read like `nats kv get jetsched-schedules <id>`
    /// and computed locally with the ticker's calendar code) or of an inline
    /// --spec (no server needed). Local times show their UTC offset and zone
    /// abbreviation; times moved out of a DST gap or repeated by a DST fold
    /// are marked.
    Preview {
        /// Schedule id (or use --spec).
        id: Option<String>,
        /// A schedule definition to preview instead: JSON, @file, or - for stdin.
        #[arg(long, conflicts_with = "id")]
        spec: Option<String>,
        /// Start after this instant (RFC 3339) [default: now].
        #[arg(long)]
        from: Option<String>,
        /// How many fire times (at most 10000).
        #[arg(short = 'n', long = "count", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=10_000))]
        count: u16,
    },
    /// Run every fire of a schedule in a past range, with the run ids the
    /// ticker uses (nats kv put jetsched-backfills <id> '{"schedule": ..., "from": ..., "to": ...}').
    ///
    /// A fire that already ran (or is running) is not run again. The ticker
    /// holding the schedule executes it, at most --max-in-flight runs at a
    /// time, resuming after a restart; this command follows its record and
    /// prints a summary: fired, already ran, skipped (not due yet: the
    /// ticker fires those itself). --dry-run lists the fires instead.
    Backfill(crate::backfill::BackfillArgs),
    /// Stop a backfill (nats kv get, then nats kv update jetsched-backfills <id> with "status": "cancelled").
    BackfillCancel {
        /// Backfill id.
        id: String,
    },
}

/// Runs a `schedule` verb; connects only when it needs the server.
pub async fn run(nats: &NatsArgs, topology: &Topology, cmd: ScheduleCmd) -> anyhow::Result<()> {
    if let ScheduleCmd::Preview { id: None, spec, from, count } = cmd {
        let spec = spec.ok_or_else(|| bad("preview needs a schedule id or --spec"))?;
        let bytes = read_definition(&spec)?;
        let def = ScheduleDef::from_json("preview", &bytes).map_err(|e| bad(format!("--spec: {e}")))?;
        return preview(None, &def, from.as_deref(), count);
    }
    let h = jetsched_runtime::service::open(nats, topology, "jetsched-cli", false).await?;
    match cmd {
        ScheduleCmd::Put { id, definition } => {
            let bytes = read_definition(&definition)?;
            ScheduleDef::from_json(&id, &bytes).map_err(|e| bad(format!("schedule {id}: {e}")))?;
            let rev = h.schedules.put(&id, bytes.into()).await?;
            println!("schedule {id} stored (revision {rev})");
        }
        ScheduleCmd::Get { id } => print_value(h.schedules.get(&id).await?, "schedule", &id)?,
        ScheduleCmd::List => list_keys(&h.schedules).await?,
        ScheduleCmd::Delete { id } => {
            h.schedules.delete(&id).await?;
            println!("schedule {id} deleted");
        }
        ScheduleCmd::Pause { id } => print_paused(&id, true, set_paused(&h, &id, true).await?),
        ScheduleCmd::Resume { id } => print_paused(&id, false, set_paused(&h, &id, false).await?),
        ScheduleCmd::Trigger { id, payload } => {
            let payload = match payload {
                Some(p) => {
                    Some(serde_json::from_slice(&read_definition(&p)?).map_err(|e| bad(format!("--payload: {e}")))?)
                }
                None => None,
            };
            println!("{}", trigger(&h, &id, payload).await?);
        }
        ScheduleCmd::Preview { id: Some(id), from, count, .. } => {
            let def = stored_schedule(&h, &id).await?;
            preview(Some(&id), &def, from.as_deref(), count)?;
        }
        ScheduleCmd::Preview { id: None, .. } => {}
        ScheduleCmd::Backfill(args) => crate::backfill::backfill(&h, args).await?,
        ScheduleCmd::BackfillCancel { id } => crate::backfill::cancel(&h, &id).await?,
    }
    Ok(())
}

/// What [`set_paused`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseChange {
    /// The schedule was in that state already.
    Already,
    /// Changed; the new KV revision.
    Changed(u64),
}

fn print_paused(id: &str, paused: bool, change: PauseChange) {
    match (change, paused) {
        (PauseChange::Already, true) => println!("schedule {id} is already paused"),
        (PauseChange::Already, false) => println!("schedule {id} is already running"),
        (PauseChange::Changed(rev), true) => println!("schedule {id} paused (revision {rev})"),
        (PauseChange::Changed(rev), false) => println!("schedule {id} resumed (revision {rev})"),
    }
}

/// Read-modify-write of the `paused` flag, retried when someone else
/// changed the schedule in between.
pub async fn set_paused(h: &Handles, id: &str, paused: bool) -> anyhow::Result<PauseChange> {
    validate_name("schedule", id).map_err(|e| bad(e.to_string()))?;
    let written = edit(&h.schedules, id, "schedule", |value| {
        let def = ScheduleDef::from_json(id, value)
            .map_err(|e| bad(format!("schedule {id} is invalid ({e}); fix it with schedule put")))?;
        if def.paused == paused {
            return Ok(None);
        }
        let mut json: Value = serde_json::from_slice(value)?;
        let Some(fields) = json.as_object_mut() else { return Err(bad(format!("schedule {id} is not an object"))) };
        if paused {
            fields.insert("paused".to_string(), Value::Bool(true));
        } else {
            fields.remove("paused");
        }
        Ok(Some(serde_json::to_vec(&json)?))
    })
    .await?;
    Ok(written.map_or(PauseChange::Already, PauseChange::Changed))
}

/// Publishes one fire of `id` now and returns its run id. The nominal time
/// is now to the millisecond, moved on by a millisecond while it is one of
/// the schedule's own occurrences, so the run never takes a regular fire's
/// run id. `payload` replaces the schedule's.
pub async fn trigger(h: &Handles, id: &str, payload: Option<Value>) -> anyhow::Result<String> {
    let def = stored_schedule(h, id).await?;
    let calendar = def.calendar().map_err(bad)?;
    let ms = SignedDuration::from_millis(1);
    let now = Timestamp::now();
    let mut nominal = Timestamp::from_millisecond(now.as_millisecond())?;
    while calendar.next_after(nominal.checked_sub(SignedDuration::from_nanos(1))?) == Some(nominal) {
        nominal = nominal.checked_add(ms)?;
    }
    let payload = payload.unwrap_or_else(|| def.payload.clone().unwrap_or_default());
    let task = def.task_name(id).to_string();
    let fire = DueFire {
        schedule: id.to_string(),
        scheduled_for: nominal,
        payload,
        task_def: def.inline_task().cloned(),
        not_before: None,
        // A run by hand follows the overlap policy but waits for no other
        // schedule (depends_on is about runs of the same calendar date).
        overlap: def.overlap,
        depends_on: None,
        timezone: calendar.time_zone().iana_name().map(str::to_string),
        revision: None,
    };
    let run_id = run::scheduled_run_id(id, nominal);
    let mut hdrs = HeaderMap::new();
    hdrs.insert(headers::NATS_MSG_ID, run::due_msg_id(id, nominal).as_str());
    hdrs.insert(headers::SCHEDULE, id);
    hdrs.insert(headers::SCHEDULED_FOR, nominal.to_string().as_str());
    hdrs.insert(headers::RUN_ID, run_id.as_str());
    let subject = h.names.due_subject(&task);
    h.js.publish_with_headers(subject, hdrs, serde_json::to_vec(&fire)?.into()).await?.await?;
    Ok(run_id)
}

/// The next `count` fire times of `def` after `from`.
pub fn fire_times(def: &ScheduleDef, from: Timestamp, count: usize) -> anyhow::Result<Vec<Timestamp>> {
    Ok(def.calendar().map_err(bad)?.iter_after(from).take(count).collect())
}

/// Prints the next `count` fire times after `from` (default now).
fn preview(id: Option<&str>, def: &ScheduleDef, from: Option<&str>, count: u16) -> anyhow::Result<()> {
    let count = usize::from(count);
    let from: Timestamp = match from {
        Some(f) => f.parse().map_err(|e| bad(format!("--from {f:?}: {e}")))?,
        None => Timestamp::now(),
    };
    let calendar = def.calendar().map_err(bad)?;
    let tz = calendar.time_zone().clone();
    let zone = def.timezone.as_deref().unwrap_or("UTC");
    let cron = def.cron.as_deref().and_then(|c| Cron::parse(c).ok());
    println!("{}", describe(def));
    if def.paused {
        println!("paused: it does not fire until resumed");
    }
    if let Some(max) = def.max_runs {
        println!("max_runs {max}: fires stop after {max} (those already fired are not counted here)");
    }
    let jitter = def.jitter.0;
    let header = match (jitter.is_zero(), id) {
        (true, _) => String::new(),
        (false, Some(_)) => format!("  starts (jitter up to {})", def.jitter),
        (false, None) => format!("  (plus a jitter up to {} derived from the schedule id)", def.jitter),
    };
    println!("{}", format!("     {:<26}{:<34}{header}", "UTC", zone).trim_end());
    let mut shown = 0;
    for t in calendar.iter_after(from).take(count) {
        shown += 1;
        let local = local_time(&tz, t);
        let mut line = format!("{shown:>3}  {:<26}{local:<34}", t.to_string());
        if let (false, Some(id)) = (jitter.is_zero(), id) {
            let start = jetsched_calendar::jitter_offset(id, t, jitter);
            let start = t.checked_add(SignedDuration::try_from(start).unwrap_or_default()).unwrap_or(t);
            line.push_str(&format!("  {start}"));
        }
        if let Some(note) = dst_note(&tz, cron.as_ref(), t) {
            line.push_str("  ");
            line.push_str(note);
        }
        println!("{}", line.trim_end());
    }
    if shown == 0 {
        println!("  (no fire after {from})");
    }
    Ok(())
}

/// The schedule's rule in words: `cron "0 30 2 * * *" in Europe/Berlin, dst
/// gap shift, fold first`, `every 15s`, `once at <time>`.
pub fn describe(def: &ScheduleDef) -> String {
    let zone = def.timezone.as_deref().unwrap_or("UTC");
    let policy = |v: serde_json::Result<Value>| v.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let (gap, fold) = (policy(serde_json::to_value(def.dst.gap)), policy(serde_json::to_value(def.dst.fold)));
    match (&def.cron, &def.every, &def.at) {
        (Some(c), _, _) => format!("cron {c:?} in {zone}, dst gap {gap}, fold {fold}"),
        (_, Some(e), _) => match def.phase {
            Some(p) => format!("every {e} (phase {p})"),
            None => format!("every {e}"),
        },
        (_, _, Some(at)) => format!("once at {at}"),
        _ => String::new(),
    }
}

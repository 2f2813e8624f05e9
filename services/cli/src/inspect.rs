//! Read-only views: a run's record and timeline, and a status summary.
//! Everything here reads the same buckets and streams a user can read with
//! the `nats` CLI (`nats kv get jetsched-runs <id>`, `nats stream view
//! JETSCHED_EVENTS`, `nats consumer ls JETSCHED_TASKS`).

use jetsched_contract::parse_duration;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::{StreamExt, TryStreamExt};
use jetsched_contract::{Handles, RunEvent, RunRecord, RunStatus, ScheduleDef, WorkerInfo};
use jetsched_runtime::{CancelOutcome, RunStore};
use jiff::{SignedDuration, Timestamp};

use crate::admin::{BadInput, format_event};
use crate::runlist::{format_record, run_store};

/// `jetsched runs ...`
#[derive(Debug, clap::Subcommand)]
pub enum RunsCmd {
    /// Show a run's record and its timeline of events
    /// (nats kv get jetsched-runs <id>).
    Get {
        /// Run id, e.g. s.nightly.20261125T013000Z or t.resize-image.q42.
        id: String,
    },
    /// List runs, newest change first, a page at a time (read from the end
    /// of the runs bucket's stream, or of the events stream when filtered by
    /// task or status; never every record).
    List(crate::runlist::ListArgs),
    /// Print what a run's handler printed or answered, attempt by attempt
    /// (nats stream view JETSCHED_LOGS --subject 'jetsched.log.*.<run-id>').
    Logs {
        /// Run id.
        id: String,
        /// Keep printing new output until the run ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print run records as they change (nats kv watch jetsched-runs).
    Watch {
        /// Only runs fired by this schedule.
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Cancel a run: a queued run will not start, a running one is stopped
    /// (exec: SIGTERM, then SIGKILL; NATS functions: a message on
    /// jetsched.cancel.<run-id>). Equivalent: set cancel_requested in the
    /// record, then `nats pub jetsched.cancel.<run-id> ''`.
    Cancel {
        /// Run id.
        id: String,
    },
}

/// Runs a `runs` verb.
pub async fn runs(h: &Handles, cmd: RunsCmd) -> anyhow::Result<()> {
    let store = run_store(h).await?;
    match cmd {
        RunsCmd::Get { id } => {
            let stored =
                store.get(&id).await?.ok_or_else(|| BadInput(format!("no run {id} (run records are kept 7 days)")))?;
            println!("{}", serde_json::to_string_pretty(&stored.record)?);
            println!("\ntimeline:");
            for event in timeline(h, &store, &stored.record).await? {
                println!("  {}", format_event(&event));
            }
            Ok(())
        }
        RunsCmd::List(args) => crate::runlist::list(h, args).await,
        RunsCmd::Logs { id, follow } => crate::logs::print(h, &id, follow).await,
        RunsCmd::Watch { schedule } => {
            let key = schedule.as_deref().map_or(">".to_string(), jetsched_contract::run::schedule_runs_filter);
            let watch = store.watch(&key).await?;
            tokio::pin!(watch);
            let shutdown = jetsched_runtime::shutdown_on_signals();
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    c = watch.next() => c,
                };
                let Some(change) = change else { return Ok(()) };
                if let (_, Some(r)) = change? {
                    println!("{}", format_record(&r));
                }
            }
        }
        RunsCmd::Cancel { id } => {
            let status = cancel(&store, &id).await?;
            println!("cancel requested for {id} ({status})");
            Ok(())
        }
    }
}

/// Asks for run `id` to be cancelled (the run store marks its record and
/// tells its worker); returns the status it had.
pub async fn cancel(store: &RunStore, id: &str) -> anyhow::Result<RunStatus> {
    match store.request_cancel(id).await? {
        CancelOutcome::Unknown => Err(BadInput(format!("no run {id}")).into()),
        CancelOutcome::Ended(status) => Err(BadInput(format!("run {id} already ended ({status})")).into()),
        CancelOutcome::Requested(status) => Ok(status),
    }
}

/// The run's timeline, oldest first: every kept revision of its record
/// (each a transition: queued, started, failed, ... with its time), and the
/// kept events that no record revision stands for (a retry's `failed`
/// report when the revision was superseded is in both: shown once).
pub async fn timeline(h: &Handles, store: &RunStore, record: &RunRecord) -> anyhow::Result<Vec<RunEvent>> {
    let mut events: Vec<RunEvent> = Vec::new();
    for stored in store.history(&record.run_id).await? {
        let event = stored.record.event();
        let same = events.last().is_some_and(|e| e.status == event.status && e.attempt == event.attempt);
        if !same {
            events.push(event);
        }
    }
    let start = record.created_at.checked_sub(SignedDuration::from_secs(5)).unwrap_or(record.created_at);
    for kept in read_events(h, vec![h.names.event_subject(&record.task, "*")], start).await? {
        let shown = events.iter().any(|e| e.status == kept.status && e.attempt == kept.attempt);
        if kept.run_id.as_deref() == Some(record.run_id.as_str()) && !shown {
            events.push(kept);
        }
    }
    events.sort_by_key(|e| e.at);
    Ok(events)
}

/// Every event on `subjects` stored since `since`.
pub(crate) async fn read_events(h: &Handles, subjects: Vec<String>, since: Timestamp) -> anyhow::Result<Vec<RunEvent>> {
    let stream = h.js.get_stream(h.names.events_stream()).await?;
    let start_time = time_from(since)?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: subjects,
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    for _ in 0..pending {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(msg))) => {
                if let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) {
                    out.push(event);
                }
            }
            _ => break,
        }
    }
    Ok(out)
}

fn time_from(t: Timestamp) -> anyhow::Result<time::OffsetDateTime> {
    Ok(time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond())?)
}

/// Work of one queue and band.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backlog {
    /// Queue.
    pub queue: String,
    /// Priority band.
    pub band: u8,
    /// Messages waiting for a worker.
    pub waiting: u64,
    /// Messages delivered and not yet acked (running, or waiting out a retry).
    pub running: u64,
}

/// Backlog per queue and band, from the worker consumers of the tasks
/// stream (`nats consumer ls JETSCHED_TASKS`), sorted.
pub async fn backlog(h: &Handles) -> anyhow::Result<Vec<Backlog>> {
    let tasks = h.js.get_stream(h.names.tasks_stream()).await?;
    let mut rows = Vec::new();
    let mut consumers = tasks.consumers();
    while let Some(info) = consumers.try_next().await? {
        let Some((queue, band)) = h.names.parse_worker_consumer(&info.name) else { continue };
        rows.push(Backlog {
            queue: queue.to_string(),
            band,
            waiting: info.num_pending,
            running: info.num_ack_pending as u64,
        });
    }
    rows.sort();
    Ok(rows)
}

/// Live workers (`nats kv ls` and `get` on jetsched-workers), by id.
pub async fn workers(h: &Handles) -> anyhow::Result<Vec<WorkerInfo>> {
    let mut workers = Vec::new();
    let keys: Vec<String> = h.workers.keys().await?.try_collect().await?;
    for key in keys {
        if let Some(v) = h.workers.get(&key).await?
            && let Ok(w) = serde_json::from_slice::<WorkerInfo>(&v)
        {
            workers.push(w);
        }
    }
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(workers)
}

/// `jetsched status` options.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// How far back to look for failures.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
}

/// Prints schedules, backlog per queue, live workers and recent failures.
pub async fn status(h: &Handles, args: StatusArgs) -> anyhow::Result<()> {
    // Schedules.
    let mut total = 0;
    let mut paused = 0;
    let mut invalid = 0;
    let mut keys: Vec<String> = h.schedules.keys().await?.try_collect().await?;
    keys.sort();
    for key in &keys {
        let Some(value) = h.schedules.get(key).await? else { continue };
        total += 1;
        match ScheduleDef::from_json(key, &value) {
            Ok(def) if def.paused => paused += 1,
            Ok(_) => {}
            Err(_) => invalid += 1,
        }
    }
    println!("schedules: {total} ({paused} paused, {invalid} invalid)");

    // Backlog.
    let inbox = h.js.get_stream(h.names.inbox_stream()).await?.get_info().await?;
    println!("inbox: {} waiting for a dispatcher", inbox.state.messages);
    let rows = backlog(h).await?;
    println!("backlog:");
    let busy: Vec<&Backlog> = rows.iter().filter(|r| r.waiting > 0 || r.running > 0).collect();
    if busy.is_empty() {
        println!("  none");
    } else {
        let mut t = crate::admin::table(&["QUEUE", "BAND", "WAITING", "IN PROGRESS"]);
        for r in busy {
            t.add_row(vec![r.queue.clone(), r.band.to_string(), r.waiting.to_string(), r.running.to_string()]);
        }
        crate::admin::print_table(&t);
    }

    // Workers.
    let workers = workers(h).await?;
    println!("workers: {}", workers.len());
    if !workers.is_empty() {
        let mut t = crate::admin::table(&["WORKER", "QUEUES", "BUSY", "HOLDS / OF", "SEEN", "STATE", "LABELS"]);
        for w in &workers {
            let age = Timestamp::now().duration_since(w.heartbeat_at).as_secs();
            let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.add_row(vec![
                w.id.clone(),
                w.queues.join(","),
                format!("{}/{}", w.busy, w.slots),
                format!("{} / {}", w.held, w.capacity),
                format!("{age}s ago"),
                if w.draining { "draining" } else { "serving" }.to_string(),
                labels.join(","),
            ]);
        }
        crate::admin::print_table(&t);
    }

    // Recent failures.
    let since = Timestamp::now().checked_sub(SignedDuration::try_from(args.since)?)?;
    let subjects = [RunStatus::Dead, RunStatus::Failed, RunStatus::Rejected, RunStatus::Invalid]
        .iter()
        .map(|s| h.names.event_subject("*", s.as_str()))
        .collect();
    let failures = read_events(h, subjects, since).await?;
    println!("failures in the last {}: {}", jetsched_contract::HumanDuration(args.since), failures.len());
    for e in failures.iter().rev().take(10).rev() {
        println!("  {}", format_event(e));
    }
    Ok(())
}

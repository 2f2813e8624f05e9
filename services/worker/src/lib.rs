//! The worker: pulls work for its queues from the tasks stream, band 0 first,
//! runs each handler within its slot budget, and reports every step.
//!
//! Fetching never leaves a pull request dangling (a dropped one would strand
//! a message until its ack wait): with free slots the worker asks each band
//! in priority order for what is there *now*; when there is nothing it joins
//! a queue group on its queues' subjects, so that each new work message wakes
//! one idle worker, and re-checks on a short timer for redeliveries.

pub mod execute;
pub mod handlers;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use jetsched_contract::{BANDS, Handles, setup, validate_name};
use jetsched_runtime::metrics::{kv, metrics};
use jetsched_runtime::{Publisher, Readiness};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::execute::WorkerCtx;
use crate::handlers::Builtins;
use crate::handlers::exec::ExecPolicy;

/// Worker settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// Queues to serve, comma-separated.
    #[arg(long, env = "JETSCHED_QUEUES", value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Runs at once (slot capacity).
    #[arg(long, env = "JETSCHED_SLOTS", default_value_t = 16)]
    pub slots: usize,
    /// Programs exec handlers may run, comma-separated (exact argv[0] match).
    #[arg(long = "allow-exec", env = "JETSCHED_ALLOW_EXEC", value_delimiter = ',')]
    pub allow_exec: Vec<String>,
    /// This worker's id [default: <hostname>-<pid>].
    #[arg(long = "worker-id", env = "JETSCHED_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Ack wait of the work consumers: a run whose worker stops answering is
    /// redelivered after this.
    #[arg(long = "ack-wait", env = "JETSCHED_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// On shutdown, how long running handlers may take to finish.
    #[arg(long = "drain", env = "JETSCHED_DRAIN", default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Labels offered to tasks' `requires.labels`, comma-separated `key=value`.
    #[arg(long, env = "JETSCHED_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How often an idle worker re-checks for redelivered work.
    #[arg(long = "idle-poll", env = "JETSCHED_IDLE_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub idle_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![jetsched_contract::DEFAULT_QUEUE.to_string()],
            slots: 16,
            allow_exec: Vec::new(),
            worker_id: None,
            ack_wait: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            idle_poll: Duration::from_millis(250),
            labels: Vec::new(),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<jetsched_contract::HumanDuration>().map(|d| d.0).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

/// `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string());
    let clean: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{clean}-{}", std::process::id())
}

/// One (queue, band) consumer.
struct Lane {
    queue: String,
    band: u8,
    consumer: PullConsumer,
}

/// Runs a worker with Rust handlers `builtins` until `shutdown`, then
/// drains; `ready` is set once its consumers are open.
pub async fn run(
    config: WorkerConfig,
    handles: Handles,
    builtins: Builtins,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for q in &config.queues {
        validate_name("queue", q)?;
    }
    let names = handles.names.clone();
    let worker_id = config.worker_id.clone().unwrap_or_else(default_worker_id);
    let ctx = Arc::new(WorkerCtx {
        client: handles.js.client(),
        publisher: Publisher::new(handles.js.clone(), names.clone()),
        runs: handles.runs.clone(),
        worker_id: worker_id.clone(),
        exec: ExecPolicy { allowed: config.allow_exec.clone(), ..ExecPolicy::default() },
        builtins,
        ack_wait: config.ack_wait,
    });
    let lanes = open_lanes(&handles, &config).await?;
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    ready.set(true);
    let background = shutdown.child_token();
    tokio::spawn(heartbeat(handles.clone(), config.clone(), worker_id.clone(), slots.clone(), background.clone()));
    tokio::spawn(poll_backlog(
        lanes.iter().map(|l| (l.queue.clone(), l.band, l.consumer.clone())).collect(),
        background.clone(),
    ));
    let mut running = JoinSet::new();
    let client = handles.js.client();
    let wake_subjects: Vec<String> = config.queues.iter().map(|q| names.task_queue_filter(q)).collect();
    let mut wake: Option<futures::stream::SelectAll<async_nats::Subscriber>> = None;
    tracing::info!(worker = %worker_id, queues = ?config.queues, slots = config.slots, "worker started");
    loop {
        // Wait for a free slot, reaping finished runs meanwhile.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        while permits.len() < 64 {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let found = probe(&lanes, &mut permits).await;
        if !found.is_empty() {
            for (msg, permit) in found {
                let ctx = ctx.clone();
                running.spawn(async move {
                    let _permit: OwnedSemaphorePermit = permit;
                    execute::execute(&ctx, msg).await;
                });
            }
            if slots.available_permits() == 0 {
                // Busy: stop taking wake-ups meant for idle workers.
                wake = None;
            }
            continue;
        }
        drop(permits);
        // Nothing to do. Join the wake group first, then look once more, so
        // that work published in between is not missed.
        if wake.is_none() {
            match subscribe_wake(&client, &wake_subjects, &names).await {
                Ok(subs) => {
                    wake = Some(subs);
                    continue;
                }
                Err(err) => tracing::warn!(%err, "cannot subscribe for wake-ups; polling"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = async { match wake.as_mut() { Some(w) => { w.next().await; } None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(config.idle_poll) => {}
        }
    }
    drop(wake);
    ready.set(false);
    tracing::info!(worker = %worker_id, running = running.len(), "worker draining");
    let drained = tokio::time::timeout(config.drain, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; unfinished runs will be redelivered to other workers");
        running.abort_all();
    }
    tracing::info!(worker = %worker_id, "worker stopped");
    Ok(())
}

async fn open_lanes(handles: &Handles, config: &WorkerConfig) -> anyhow::Result<Vec<Lane>> {
    let stream = handles.stream(&handles.names.tasks_stream()).await?;
    let mut lanes = Vec::new();
    // Band-major order: band 0 of every queue before band 1 of any.
    for band in 0..BANDS {
        for queue in &config.queues {
            let consumer =
                stream.create_consumer(setup::worker_consumer(&handles.names, queue, band, config.ack_wait)).await?;
            lanes.push(Lane { queue: queue.clone(), band, consumer });
        }
    }
    Ok(lanes)
}

/// Takes what is available now, band 0 first, at most one message per permit.
async fn probe(
    lanes: &[Lane],
    permits: &mut Vec<OwnedSemaphorePermit>,
) -> Vec<(async_nats::jetstream::Message, OwnedSemaphorePermit)> {
    let mut found = Vec::new();
    for lane in lanes {
        if permits.is_empty() {
            break;
        }
        let batch = match lane.consumer.fetch().max_messages(permits.len()).messages().await {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(%err, "cannot fetch work");
                continue;
            }
        };
        let msgs: Vec<_> = batch.collect().await;
        for msg in msgs {
            match msg {
                Ok(msg) => {
                    if let Some(permit) = permits.pop() {
                        found.push((msg, permit));
                    }
                }
                Err(err) => tracing::debug!(%err, "fetch ended"),
            }
        }
    }
    found
}

async fn subscribe_wake(
    client: &async_nats::Client,
    subjects: &[String],
    names: &jetsched_contract::Names,
) -> anyhow::Result<futures::stream::SelectAll<async_nats::Subscriber>> {
    let mut subs = Vec::new();
    for subject in subjects {
        subs.push(client.queue_subscribe(subject.clone(), names.idle_worker_group()).await?);
    }
    client.flush().await?;
    Ok(futures::stream::select_all(subs))
}

/// Keeps this worker's entry in `jetsched-workers` fresh; deleted on shutdown.
async fn heartbeat(
    handles: Handles,
    config: WorkerConfig,
    id: String,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let started_at = jiff::Timestamp::now();
    let capacity = config.slots.max(1);
    let every = Duration::from_secs(5);
    loop {
        let info = jetsched_contract::WorkerInfo {
            id: id.clone(),
            queues: config.queues.clone(),
            slots: capacity as u32,
            busy: capacity.saturating_sub(slots.available_permits()) as u32,
            labels: config.labels.iter().cloned().collect(),
            started_at,
            heartbeat_at: jiff::Timestamp::now(),
        };
        if let Ok(value) = serde_json::to_vec(&info)
            && let Err(err) = handles.workers.put(&id, value.into()).await
        {
            tracing::warn!(%err, "cannot publish worker heartbeat");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    let _ = handles.workers.delete(&id).await;
}

/// Reports the backlog of each (queue, band) every few seconds.
async fn poll_backlog(lanes: Vec<(String, u8, PullConsumer)>, shutdown: CancellationToken) {
    loop {
        for (queue, band, consumer) in &lanes {
            let mut consumer = consumer.clone();
            if let Ok(info) = consumer.info().await {
                let waiting = info.num_pending + info.num_ack_pending as u64;
                metrics().backlog.record(waiting, &[kv("queue", queue.clone()), kv("band", i64::from(*band))]);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

//! The worker: pulls work for its queues from the tasks stream, band 0 first,
//! runs each handler within its slot budget, and reports every step.
//!
//! Use it as a library to run Rust handlers: register plain async functions
//! in [`Builtins`] and call [`app::main`] (see `examples/custom_worker.rs`).

pub mod app;
mod cancel;
mod checkpoint;
mod ctx;
mod execute;
mod fetch;
mod handlers;
mod invoke;
mod limits;
mod logs;
mod presence;
mod record;
mod release;
mod room;
mod running;
mod settle;
pub mod submit;

use jetsched_contract::parse_duration;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use jetsched_contract::{ByteAmount, Cores, Handles, Scope, validate_name};
use jetsched_runtime::{Outage, Publisher, Readiness};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// NATS function calls made exactly as the worker makes them (every header;
/// a request built ahead and sent later), for tools and benchmarks that
/// must send the same requests.
pub use crate::handlers::nats::{Functions, Outbound, Pending, outcome as function_outcome};
pub use crate::handlers::reach::DEFAULT_DENY as DEFAULT_HTTP_DENY;
pub use crate::handlers::{Builtins, Invocation, Outcome};

use crate::cancel::Cancels;
use crate::ctx::WorkerCtx;
use crate::handlers::exec::ExecPolicy;

/// Worker settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// Queues to serve, comma-separated.
    #[arg(long, env = "JETSCHED_QUEUES", value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Runs at once (slot capacity). Most runs wait on the network (a NATS
    /// function, a webhook), so the default is generous; processes of exec
    /// handlers have their own bound, --exec-slots.
    #[arg(long, env = "JETSCHED_SLOTS", default_value_t = 256)]
    pub slots: usize,
    /// Processes exec handlers run at once [default: twice the cores].
    #[arg(long = "exec-slots", env = "JETSCHED_EXEC_SLOTS")]
    pub exec_slots: Option<usize>,
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
    /// Cores offered to tasks' `requires.cpu` (`4`, `1.5`) [default: the
    /// container's CPU quota (cgroup v2 `cpu.max`) if set, else the cores
    /// this process may run on].
    #[arg(long, env = "JETSCHED_CPU")]
    pub cpu: Option<Cores>,
    /// Memory offered to tasks' `requires.memory` (`16GiB`) [default: the
    /// container's memory limit (cgroup v2 `memory.max`) if set, else the
    /// host's total memory].
    #[arg(long, env = "JETSCHED_MEMORY")]
    pub memory: Option<ByteAmount>,
    /// Disk offered to tasks' `requires.disk` (`100GiB`) [default: the free
    /// space of the working directory when the worker starts].
    #[arg(long, env = "JETSCHED_DISK")]
    pub disk: Option<ByteAmount>,
    /// Labels offered to tasks' `requires.labels`, comma-separated `key=value`.
    #[arg(long, env = "JETSCHED_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Runs due within this long are held in memory and started on time;
    /// later ones wait in the stream.
    #[arg(long = "stage-horizon", env = "JETSCHED_STAGE_HORIZON", default_value = "5s", value_parser = parse_duration)]
    pub stage_horizon: Duration,
    /// Most runs held for their start time at once.
    #[arg(long = "max-staged", env = "JETSCHED_MAX_STAGED", default_value_t = 20_000)]
    pub max_staged: usize,
    /// Waiting work rises one priority band per this much waiting.
    #[arg(long = "aging-step", env = "JETSCHED_AGING_STEP", default_value = "10s", value_parser = parse_duration)]
    pub aging_step: Duration,
    /// A run's first attempt starts without a write to its record; if it is
    /// still running after this long, its start is stored (so `nats kv get
    /// jetsched-runs <id>` shows it `started`). A shorter run's next write
    /// is its end. `0s`: store every start first.
    #[arg(long = "record-started-after", env = "JETSCHED_RECORD_STARTED_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub record_started_after: Duration,
    /// Hosts, `*.domains` and address ranges (CIDR) HTTP handlers may
    /// reach, comma-separated [default: any that --deny-http does not deny].
    #[arg(long = "allow-http", env = "JETSCHED_ALLOW_HTTP", value_delimiter = ',')]
    pub allow_http: Vec<String>,
    /// Hosts, `*.domains` and address ranges HTTP handlers may never reach,
    /// checked on every address a name resolves to; `none` denies nothing.
    /// The default denies link-local addresses and cloud metadata services.
    #[arg(long = "deny-http", env = "JETSCHED_DENY_HTTP", value_delimiter = ',', default_value = handlers::reach::DEFAULT_DENY)]
    pub deny_http: Vec<String>,
    /// Largest payload (as JSON) a handler is called with; a larger run
    /// fails at once with the reason (copy in the DLQ).
    #[arg(long = "max-payload", env = "JETSCHED_MAX_PAYLOAD", default_value = "1MiB")]
    pub max_payload: bytesize::ByteSize,
    /// Largest result a handler may return (a NATS reply, an HTTP body,
    /// exec's stdout, a builtin's result); a larger one fails the run,
    /// never cut.
    #[arg(long = "max-output", env = "JETSCHED_MAX_OUTPUT", default_value = "64KiB")]
    pub max_output: bytesize::ByteSize,
    /// Key file (`<key id> <base64 key>` per line, the first seals) that
    /// opens sealed payloads for HTTP, exec and Rust handlers and seals
    /// their results (docs/HANDLERS.md, "Sealed payloads").
    #[arg(long = "payload-key-file", env = "JETSCHED_PAYLOAD_KEY_FILE")]
    pub payload_key_file: Option<std::path::PathBuf>,
    /// How long an idle worker's standing pull requests last before they
    /// are renewed (and it looks again for work).
    #[arg(long = "idle-poll", env = "JETSCHED_IDLE_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub idle_poll: Duration,
    /// Bytes of output each attempt keeps in the task logs (the logs
    /// stream, `jetsched runs logs`); 0 keeps none.
    #[arg(long = "task-log-limit", env = "JETSCHED_TASK_LOG_LIMIT", default_value_t = 64 * 1024)]
    pub task_log_limit: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![jetsched_contract::DEFAULT_QUEUE.to_string()],
            slots: 256,
            exec_slots: None,
            allow_exec: Vec::new(),
            worker_id: None,
            ack_wait: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            idle_poll: Duration::from_millis(250),
            record_started_after: Duration::from_secs(1),
            labels: Vec::new(),
            cpu: None,
            memory: None,
            disk: None,
            stage_horizon: Duration::from_secs(5),
            aging_step: Duration::from_secs(10),
            max_staged: 20_000,
            task_log_limit: 64 * 1024,
            allow_http: Vec::new(),
            deny_http: handlers::reach::DEFAULT_DENY.split(',').map(str::to_string).collect(),
            max_payload: bytesize::ByteSize::mib(1),
            max_output: bytesize::ByteSize::kib(64),
            payload_key_file: None,
        }
    }
}

impl WorkerConfig {
    /// Fixes this worker's id (the default, `<hostname>-<pid>`, when none
    /// was given) and returns it: its own queue, and so its permissions,
    /// depend on it.
    pub fn fix_id(&mut self) -> String {
        self.worker_id.get_or_insert_with(|| jetsched_runtime::default_instance_id("worker")).clone()
    }

    /// What this worker's NATS permissions must cover at start-up: its
    /// queues, its own queue and the label queues of its labels (function
    /// subjects are named by tasks, so they are not known yet).
    pub fn scope(&self) -> Scope {
        Scope {
            queues: self.queues.clone(),
            worker_ids: self.worker_id.iter().cloned().collect(),
            labels: self.labels.iter().cloned().collect(),
            functions: Vec::new(),
            ..Scope::default()
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
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
    let worker_id = config.worker_id.clone().unwrap_or_else(|| jetsched_runtime::default_instance_id("worker"));
    validate_name("worker id", &worker_id)?;
    let reach = handlers::reach::Reach::new(&config.allow_http, &config.deny_http)
        .map_err(|e| anyhow::anyhow!("--allow-http/--deny-http: {e}"))?;
    let sizes = handlers::Sizes {
        max_payload: usize::try_from(config.max_payload.as_u64()).unwrap_or(usize::MAX),
        max_output: usize::try_from(config.max_output.as_u64()).unwrap_or(usize::MAX),
    };
    let http = handlers::http::Http::new(reach, sizes.max_output).map_err(anyhow::Error::msg)?;
    if sizes.max_output > settle::MAX_RECORDED_RESULT {
        tracing::warn!(
            max_output = sizes.max_output,
            recorded = settle::MAX_RECORDED_RESULT,
            "--max-output is above what a run record keeps: larger results succeed but are not recorded"
        );
    }
    let keyring = match &config.payload_key_file {
        Some(path) => Some(Arc::new(jetsched_contract::codec::Keyring::from_file(path)?)),
        None => None,
    };
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let room = room::Room::new(room::capacity(config.cpu, config.memory, config.disk));
    let cancels = Cancels::default();
    let client = handles.js.client();
    let functions = handlers::nats::Functions::start(client.clone()).await?;
    let ctx = Arc::new(WorkerCtx {
        publisher: Publisher::new(handles.js.clone(), names.clone()),
        runs: jetsched_runtime::RunStore::open(Publisher::new(handles.js.clone(), names.clone())).await?,
        record_started_after: config.record_started_after,
        checkpoints: Arc::new(handles.checkpoints.clone()),
        worker_id: worker_id.clone(),
        exec: ExecPolicy {
            allowed: config.allow_exec.clone(),
            max_output: sizes.max_output,
            processes: Arc::new(Semaphore::new(
                config.exec_slots.unwrap_or_else(handlers::exec::default_exec_slots).max(1),
            )),
            ..ExecPolicy::default()
        },
        builtins,
        ack_wait: config.ack_wait,
        slots: slots.clone(),
        staged: Arc::new(Semaphore::new(config.max_staged.max(1))),
        stage_horizon: config.stage_horizon,
        cancels: cancels.clone(),
        capacity: config.slots.max(1),
        slots_kv: handles.slots.clone(),
        rates_kv: handles.rates.clone(),
        room: room.clone(),
        functions: functions.clone(),
        releaser: release::Releaser::start(functions, slots.clone()),
        task_log_limit: config.task_log_limit,
        http,
        sizes,
        keyring,
    });
    // During a leader election creating the consumers fails for a few
    // seconds: wait it out rather than exit.
    static OPENING: Outage = Outage::new("opening the work consumers");
    let Some(lanes) =
        jetsched_runtime::until_ok(&OPENING, &shutdown, || fetch::Lanes::open(&handles, &config, &worker_id)).await
    else {
        return Ok(());
    };
    let lanes = Arc::new(lanes);
    let background = shutdown.child_token();
    tokio::spawn(cancels.listen(client.clone(), names.clone(), background.clone()));
    // The heartbeat outlives the shutdown signal: it says `draining` until the drain ends.
    let presence_stop = CancellationToken::new();
    let presence = tokio::spawn(presence::heartbeat(
        handles.clone(),
        config.clone(),
        worker_id.clone(),
        room.clone(),
        shutdown.clone(),
        presence_stop.clone(),
    ));
    tokio::spawn(fetch::monitor(lanes.clone(), client.clone(), Duration::from_millis(250), background.clone()));
    tokio::spawn(fetch::watch_label_queues(lanes.clone(), handles.clone(), config.clone(), background.clone()));
    ready.set(true);
    let mut running = JoinSet::new();
    // Told by a standing pull request that it brought work.
    let delivered = Arc::new(tokio::sync::Notify::new());
    let mut backlog = false;
    let capacity = room.capacity();
    tracing::info!(worker = %worker_id, queues = ?config.queues, slots = config.slots, %capacity, "worker started");
    loop {
        // Forget finished runs and lapsed pull requests.
        while running.try_join_next().is_some() {}
        // Wait for a free slot, reaping finished runs meanwhile.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        let cap = config.slots.clamp(1, 256);
        // Under a backlog, gather a few free slots (for at most a
        // millisecond) so that one fetch serves several runs.
        let want = if backlog { (config.slots / 4).clamp(1, 32) } else { 1 };
        let gather_until = tokio::time::Instant::now() + Duration::from_millis(1);
        while permits.len() < cap {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) if permits.len() >= want => break,
                Err(_) => match tokio::time::timeout_at(gather_until, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => permits.push(p),
                    _ => break,
                },
            }
        }
        let found = fetch::probe(&lanes, &mut permits).await;
        backlog = !found.is_empty() && permits.is_empty();
        if !found.is_empty() {
            for (msg, permit) in found {
                let ctx = ctx.clone();
                running.spawn(async move { execute::execute(&ctx, msg, permit).await });
            }
            continue;
        }
        drop(permits);
        // Nothing to do: stand a pull request for one message on every lane
        // that has none.
        for lane in lanes.all() {
            if !lane.stand() {
                continue;
            }
            let (ctx, slots, delivered, expires) = (ctx.clone(), slots.clone(), delivered.clone(), config.idle_poll);
            let draining = shutdown.clone();
            running.spawn(async move {
                let Some(msg) = lane.wait_one(expires).await else { return };
                delivered.notify_one();
                // Draining: no new work. Hand it back at once for another worker.
                let slot = if draining.is_cancelled() { None } else { slots.try_acquire_owned().ok() };
                match slot.ok_or(()) {
                    Ok(permit) => execute::execute(&ctx, msg, permit).await,
                    // Every slot filled up since the request was stood (or
                    // the worker is draining): hand the message back at once
                    // for a worker that has room.
                    Err(()) => {
                        tracing::debug!(subject = %msg.subject, "no free slot for work a standing request brought; handed back");
                        if let Err(err) = msg.ack_with(AckKind::Nak(None)).await {
                            tracing::warn!(%err, "cannot hand back work; it will be redelivered after its ack wait");
                        }
                    }
                }
            });
        }
        // Look again when one brings work (more may wait behind it), or when
        // they lapse (work on lanes without a standing request, such as
        // retries coming due while every slot was held).
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = delivered.notified() => {}
            _ = tokio::time::sleep(config.idle_poll) => {}
        }
    }
    ready.set(false);
    // The slots its runs hold, staged runs among them, as its heartbeat
    // counts them (`running` holds the standing pull requests too).
    tracing::info!(worker = %worker_id, busy_slots = ctx.room.busy_slots(), "worker draining");
    let drained = tokio::time::timeout(config.drain, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; unfinished runs will be redelivered to other workers");
        running.abort_all();
    }
    // Gone from the workers bucket before the process ends.
    presence_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), presence).await.is_err() {
        tracing::warn!(worker = %worker_id, "could not remove this worker's heartbeat; it expires with the bucket's TTL");
    }
    tracing::info!(worker = %worker_id, "worker stopped");
    Ok(())
}

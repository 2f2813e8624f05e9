//! The ticker: loads every schedule from `<prefix>-schedules`, keeps
//! watching it (puts, updates and deletes take effect live), and publishes
//! each fire of the partitions it holds a lease on to `<prefix>.due.<task>`
//! with `Nats-Msg-Id: <schedule>@<nominal>`.
//!
//! - [`plan`]: the timer heap, staging, watermarks (pure logic);
//! - [`catchup`]: misfire policies for occurrences found late (pure logic);
//! - [`lease`]: partition leases among replicas, and writing progress;
//! - [`fire`]: publishing with many acks in flight;
//! - [`withdraw`]: withdrawing staged fires of a deleted, paused or edited schedule;
//! - [`triggers`]: event triggers of task definitions, hosted per partition;
//! - [`backfill`]: backfills of the schedules of the partitions held;
//! - this module: the loop tying them together, one `select!` over the
//!   schedule watch, the timer, lease events and acks, and the shutdown token.
//!
//! Exactly-once: a fire is named by (schedule, nominal time). A replay of an
//! already published fire (after a crash, before the watermark caught up)
//! carries the same `Nats-Msg-Id` and is dropped by the inbox's dedup window;
//! past the window, the dispatcher's run-id `create` drops it.

pub mod backfill;
pub mod catchup;
pub mod fire;
pub mod lease;
pub mod plan;
pub mod spec;
pub mod state;
pub mod triggers;
pub mod withdraw;

use jetsched_contract::parse_duration;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use jetsched_contract::ticker::PARTITIONS;
use jetsched_contract::{Handles, RunEvent, Topology, setup, validate_name};
use jetsched_runtime::{
    KvChange, Outage, Publisher, Readiness, RunStore, StampedChange, metrics, spawn_kv_watch_stamped,
};
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::fire::{Epochs, Stored};
use crate::lease::{Command, LeaseEvent};
use crate::plan::{Outgoing, Plan, PlanConfig, Written};
use crate::spec::Draft;

/// Ticker settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TickerConfig {
    /// This ticker's id, the owner named in its leases [default: <hostname>-<pid>].
    #[arg(long = "ticker-id", env = "JETSCHED_TICKER_ID")]
    pub ticker_id: Option<String>,
    /// Partition lease TTL: a dead ticker's partitions are taken over after
    /// at most this long. Applied when this ticker creates the leases
    /// bucket; otherwise the bucket's TTL is used.
    #[arg(long = "lease-ttl", env = "JETSCHED_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Publish fires up to this long before their time, marked not to start
    /// before it, so that a herd is already queued when it is due; 0
    /// publishes each fire at its time. Deleting, pausing or editing a
    /// schedule withdraws its staged fires that have not started. Schedules
    /// with an overlap policy are not staged.
    #[arg(long, env = "JETSCHED_LOOKAHEAD", default_value = "2s", value_parser = parse_duration)]
    pub lookahead: Duration,
    /// An occurrence found late by at most this much (a partition taken
    /// over, a schedule just written) fires as usual; later ones follow the
    /// schedule's misfire policy.
    #[arg(long = "misfire-threshold", env = "JETSCHED_MISFIRE_THRESHOLD", default_value = "1s", value_parser = parse_duration)]
    pub misfire_threshold: Duration,
}

impl Default for TickerConfig {
    fn default() -> Self {
        TickerConfig {
            ticker_id: None,
            lease_ttl: Duration::from_secs(10),
            lookahead: Duration::from_secs(2),
            misfire_threshold: Duration::from_secs(1),
        }
    }
}

/// How often progress is reported, expired leases are checked and the timer
/// is re-checked when nothing else woke the loop.
const TICK: Duration = Duration::from_millis(200);

/// A partition with nothing new stored still reports its watermark this often.
const IDLE_PROGRESS: Duration = Duration::from_secs(2);

/// On shutdown, how long fires in flight may take to be stored before the
/// leases are given back anyway (the next owner replays what is missing).
const DRAIN: Duration = Duration::from_secs(5);

/// Runs the ticker until `shutdown` fires; `ready` is set once the schedules are loaded.
pub async fn run(
    config: TickerConfig,
    handles: Handles,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let id = config.ticker_id.clone().unwrap_or_else(|| jetsched_runtime::default_instance_id("ticker"));
    validate_name("ticker id", &id)?;
    anyhow::ensure!(
        config.lease_ttl >= Duration::from_secs(1),
        "--lease-ttl must be at least 1s (the server's expiry markers need it), got {:?}",
        config.lease_ttl
    );
    // During a leader election these fail for a few seconds: wait it out
    // rather than exit.
    static OPENING: Outage = Outage::new("opening the ticker's buckets");
    let Some(buckets) = jetsched_runtime::until_ok(&OPENING, &shutdown, || async {
        let topology = topology_of(&handles).await?;
        anyhow::Ok(setup::ensure_ticker(&handles.js, &handles.names, &topology, config.lease_ttl).await?)
    })
    .await
    else {
        return Ok(());
    };
    if buckets.lease_ttl != config.lease_ttl {
        tracing::warn!(
            configured = ?config.lease_ttl,
            in_force = ?buckets.lease_ttl,
            "the leases bucket already exists with another TTL; using the bucket's"
        );
    }
    let publisher = Publisher::new(handles.js.clone(), handles.names.clone());
    // Triggers and backfills run in the partitions this ticker holds.
    let (owned, owned_rx) = watch::channel(0u64);
    let hosted = CancellationToken::new();
    // An event held by a ticker that died comes back after this: about
    // when the next ticker takes the partition over.
    let ack_wait = buckets.lease_ttl.max(Duration::from_secs(2));
    let trigger_ctx = triggers::Ctx::new(
        handles.names.clone(),
        handles.js.clone(),
        buckets.state.clone(),
        handles.tasks.clone(),
        ack_wait,
    );
    let trigger_host = triggers::spawn(Arc::new(trigger_ctx), owned_rx.clone(), hosted.clone());
    let backfills = backfill::spawn(
        id.clone(),
        handles.clone(),
        RunStore::open(publisher.clone()).await?,
        owned_rx,
        hosted.clone(),
    );
    let epochs = Arc::new(Epochs::default());
    let (fires, mut stored, firer) =
        fire::spawn(publisher.clone(), RunStore::open(publisher.clone()).await?, epochs.clone(), 16_384);
    let (keeper, mut leases, keeper_task) = lease::spawn(id.clone(), buckets);
    let watch = spawn_kv_watch_stamped(handles.schedules.clone(), shutdown.child_token(), 4096);
    let mut changes = spawn_decoder(watch, 4096);
    let plan = Plan::new(PlanConfig { lookahead: config.lookahead, misfire_threshold: config.misfire_threshold });
    let mut t = Ticker {
        plan,
        fires,
        keeper,
        epochs,
        publisher,
        bucket: handles.names.schedules_bucket(),
        reported: vec![(Timestamp::MIN, Timestamp::MIN); usize::from(PARTITIONS)],
        loaded: false,
        owned,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(ticker = %id, "ticker started");
    loop {
        let sleep = sleep_until(t.plan.next_release());
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep => t.pop().await,
            Some(Stored(out)) = stored.recv() => t.stored(out),
            event = leases.recv() => match event {
                Some(event) => t.lease(event).await,
                None => anyhow::bail!("the lease keeper stopped"),
            },
            change = changes.recv() => match change {
                Some(change) => t.change(change, &ready).await,
                None => break,
            },
            _ = tick.tick() => t.tick().await,
        }
    }
    ready.set(false);
    // Triggers and backfills stop first: held events are handed back and
    // progress is written while the leases still cover them.
    hosted.cancel();
    let _ = tokio::time::timeout(DRAIN * 2, trigger_host).await;
    let _ = tokio::time::timeout(DRAIN, backfills).await;
    t.drain(&mut stored).await;
    let owned_schedules = t.plan.len();
    drop(t);
    let _ = tokio::time::timeout(DRAIN, firer).await;
    let _ = tokio::time::timeout(DRAIN, keeper_task).await;
    tracing::info!(schedules = owned_schedules, "ticker stopped");
    Ok(())
}

/// Whether the owned-partitions `mask` (bit p for partition p) holds `partition`.
pub(crate) fn owns(mask: u64, partition: u16) -> bool {
    mask & (1u64 << (partition % 64)) != 0
}

/// Replicas and storage of the ticker's buckets: those of the schedules bucket.
async fn topology_of(handles: &Handles) -> anyhow::Result<Topology> {
    let status = handles.schedules.status().await.context("cannot read the schedules bucket")?;
    let config = &status.info.config;
    Ok(Topology { replicas: config.num_replicas.max(1), storage: config.storage, ..Topology::default() })
}

async fn sleep_until(at: Option<Timestamp>) {
    match at {
        Some(at) => {
            let wait = at.duration_since(Timestamp::now());
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
        None => std::future::pending().await,
    }
}

struct Ticker {
    plan: Plan,
    fires: mpsc::Sender<Outgoing>,
    keeper: mpsc::UnboundedSender<Command>,
    epochs: Arc<Epochs>,
    publisher: Publisher,
    bucket: String,
    /// Per partition: the last watermark reported and when.
    reported: Vec<(Timestamp, Timestamp)>,
    loaded: bool,
    /// The partitions owned, for the triggers and backfills hosted here.
    owned: watch::Sender<u64>,
}

impl Ticker {
    fn tell(&self, command: Command) {
        // The keeper outlives this loop; a send fails only after it crashed.
        if self.keeper.send(command).is_err() {
            tracing::error!("the lease keeper is gone");
        }
    }

    async fn send(&mut self, out: Vec<Outgoing>) {
        for o in out {
            if self.fires.send(o).await.is_err() {
                tracing::error!("the fire publisher is gone");
                return;
            }
        }
    }

    fn sync_epochs(&self) {
        for p in 0..PARTITIONS {
            self.epochs.set(p, self.plan.epoch(p));
        }
    }

    /// Tells triggers and backfills which partitions are owned now.
    fn publish_owned(&self) {
        let mask = self.plan.owned_mask();
        self.owned.send_if_modified(|m| std::mem::replace(m, mask) != mask);
    }

    fn expired(&self, partitions: Vec<u16>) {
        if partitions.is_empty() {
            return;
        }
        self.publish_owned();
        self.sync_epochs();
        for p in partitions {
            self.tell(Command::Expired(p));
        }
    }

    async fn pop(&mut self) {
        let mut out = Vec::new();
        let expired = self.plan.pop_due(Timestamp::now(), &mut out);
        self.expired(expired);
        self.send(out).await;
    }

    async fn tick(&mut self) {
        let now = Timestamp::now();
        let expired = self.plan.expire(now);
        self.expired(expired);
        self.pop().await;
        let idle = jiff::SignedDuration::try_from(IDLE_PROGRESS).unwrap_or_default();
        for (p, watermark, dirty) in self.plan.progress() {
            let (last, at) = self.reported[usize::from(p)];
            let stale = at.checked_add(idle).is_ok_and(|due| due <= now);
            if watermark > last && (dirty || stale) {
                self.reported[usize::from(p)] = (watermark, now);
                self.tell(Command::Progress(p, watermark));
            }
        }
    }

    fn stored(&mut self, out: Outgoing) {
        if let Some(count) = out.count.clone() {
            self.tell(Command::Count(out.partition, out.schedule.clone(), count));
        }
        if let Some((p, watermark)) = self.plan.acked(out.partition, out.epoch, out.hold) {
            self.sync_epochs();
            self.tell(Command::Released(p, watermark));
        }
    }

    async fn lease(&mut self, event: LeaseEvent) {
        let mut out = Vec::new();
        match event {
            LeaseEvent::Acquired { partition, valid_until, watermark, counts } => {
                self.plan.acquire(partition, valid_until, watermark, &counts, Timestamp::now(), &mut out);
                self.reported[usize::from(partition)] = (watermark.unwrap_or(Timestamp::MIN), Timestamp::MIN);
                tracing::debug!(partition, owned = self.plan.owned(), "firing partition");
            }
            LeaseEvent::Renewed { partitions, valid_until } => self.plan.renew(&partitions, valid_until),
            LeaseEvent::Lost(p) => self.plan.lose(p),
            LeaseEvent::Release(p) => {
                if let Some(watermark) = self.plan.release(p) {
                    self.tell(Command::Released(p, watermark));
                }
            }
        }
        self.publish_owned();
        self.sync_epochs();
        self.send(out).await;
    }

    async fn change(&mut self, decoded: Decoded, ready: &Readiness) {
        let Decoded { change: StampedChange { change, written_at, replay }, draft } = decoded;
        // The watch numbers its replays; a wrap after 65,536 reconnects is harmless.
        let replay = replay as u16;
        match change {
            KvChange::Put { key, revision, .. } => {
                if self.plan.seen(&key, revision, replay) {
                    // A replay after a reconnect repeating what is loaded.
                    return;
                }
                let draft = draft.unwrap_or_else(|| Err("not decoded".to_string()));
                match draft.and_then(|d| self.plan.build(&key, d)) {
                    Ok(spec) => {
                        let written = Written { revision, time: timestamp(written_at), replay };
                        let mut out = Vec::new();
                        self.plan.upsert(&key, spec, written, Timestamp::now(), &mut out);
                        if self.loaded {
                            tracing::info!(schedule = %key, revision, "schedule loaded");
                        }
                        self.send(out).await;
                    }
                    Err(reason) => {
                        tracing::warn!(schedule = %key, revision, %reason, "invalid schedule");
                        self.remove(&key, "changed to an invalid definition").await;
                        let event = RunEvent::invalid(&self.bucket, &key, revision, reason);
                        if let Err(err) = self.publisher.event(&event).await {
                            tracing::error!(schedule = %key, %err, "cannot report invalid schedule");
                        }
                    }
                }
            }
            KvChange::Delete { key } => {
                tracing::info!(schedule = %key, "schedule removed");
                self.remove(&key, "deleted").await;
            }
            KvChange::Ready if self.loaded => {
                // A replay after the watch was re-created: what it did not
                // mention was deleted meanwhile.
                let mut out = Vec::new();
                for (key, p, counted) in self.plan.sweep(replay, Timestamp::now(), &mut out) {
                    tracing::info!(schedule = %key, "schedule removed while the watch was down");
                    if counted {
                        self.tell(Command::Forget(p, key));
                    }
                }
                self.send(out).await;
            }
            KvChange::Ready => {
                self.loaded = true;
                tracing::info!(schedules = self.plan.len(), "schedules loaded");
                ready.set(true);
                self.tell(Command::Ready);
            }
        }
        if self.loaded {
            metrics().schedules_loaded.record(self.plan.len() as u64, &[]);
        }
    }

    /// Forgets schedule `key` (`why`: "deleted") and withdraws the fires it staged.
    async fn remove(&mut self, key: &str, why: &str) {
        let mut out = Vec::new();
        if let Some((p, counted)) = self.plan.remove(key, why, Timestamp::now(), &mut out)
            && counted
        {
            self.tell(Command::Forget(p, key.to_string()));
        }
        self.send(out).await;
    }

    /// Stops firing and hands every partition back once its fires in flight
    /// are stored (or the drain time is up).
    async fn drain(&mut self, stored: &mut mpsc::UnboundedReceiver<Stored>) {
        self.tell(Command::Stop);
        for p in 0..PARTITIONS {
            if let Some(watermark) = self.plan.release(p) {
                self.tell(Command::Released(p, watermark));
            }
        }
        self.sync_epochs();
        let deadline = tokio::time::sleep(DRAIN);
        tokio::pin!(deadline);
        while self.plan.handing_over() > 0 {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!(partitions = self.plan.handing_over(), "fires still in flight at shutdown; the next owner replays them");
                    return;
                }
                next = stored.recv() => match next {
                    Some(Stored(out)) => self.stored(out),
                    None => return,
                },
            }
        }
    }
}

/// A schedules-watch change with its definition already parsed.
struct Decoded {
    change: StampedChange,
    /// For a put: the parsed definition, or why it is invalid.
    draft: Option<Result<Draft, String>>,
}

/// Parses definitions in a task of its own, so that loading a million
/// schedules uses a second core and the watch is drained fast enough.
fn spawn_decoder(mut watch: mpsc::Receiver<StampedChange>, capacity: usize) -> mpsc::Receiver<Decoded> {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(async move {
        while let Some(change) = watch.recv().await {
            let draft = match &change.change {
                KvChange::Put { key, value, .. } => Some(Draft::decode(key, value)),
                _ => None,
            };
            if tx.send(Decoded { change, draft }).await.is_err() {
                return;
            }
        }
    });
    rx
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now())
}

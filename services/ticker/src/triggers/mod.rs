//! Event triggers, hosted by the tickers: every ticker watches the task
//! definitions, and runs the triggers whose partition (a hash of the
//! trigger's consumer name, the same 64 partitions as schedules) it holds a
//! lease on. One host per trigger at a time is what batching and debouncing
//! need (a batch is a run of consecutive events); the leases that split
//! schedules between tickers give that, with takeover when a ticker dies.
//!
//! - [`runner`]: one trigger: its durable consumer, events one by one;
//! - [`hold`]: batches and debounced bursts;
//! - [`event`]: events and submissions (pure logic);
//! - this module: which triggers run here, starting, stopping and removing
//!   them as definitions and leases change, and keeping the capture stream's
//!   subjects in sync (done by the holder of [`CAPTURE_PARTITION`]).

mod event;
mod hold;
mod runner;
mod source;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use futures::TryStreamExt;
use jetsched_contract::ticker::{PARTITIONS, TriggerState, parse_trigger_key, partition_of, trigger_key};
use jetsched_contract::trigger::Source;
use jetsched_contract::{Names, RunEvent, TaskDef, setup};
use jetsched_runtime::{KvChange, Outage, Publisher, StampedChange, spawn_kv_watch_stamped};
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use source::Spec;

/// The partition whose holder keeps the capture stream's subjects in sync
/// with the plain-subject triggers.
pub const CAPTURE_PARTITION: u16 = 0;

const _: () = assert!(PARTITIONS <= 64, "owned partitions are a 64-bit mask");

/// The capture stream's subjects are checked this often even when no
/// definition changed (a stream created or deleted elsewhere may resolve or
/// cause an overlap).
const CAPTURE_EVERY: Duration = Duration::from_secs(30);

/// The capture stream cannot be kept in sync: one line when it starts, one when it ends.
static CAPTURING: Outage = Outage::new("keeping the trigger capture stream's subjects");

/// What every trigger of this ticker shares.
pub struct Ctx {
    /// Names in use.
    pub names: Names,
    /// JetStream.
    pub js: Context,
    /// Publishes submissions and `invalid` reports.
    pub publisher: Publisher,
    /// The ticker bucket: trigger registrations and batch journals.
    pub state: Store,
    /// Task definitions (their history dates a trigger's first appearance).
    pub tasks: Store,
    /// Ack wait of trigger consumers.
    pub ack_wait: Duration,
    /// `invalid` reports published by this process (each once).
    reported: Mutex<HashSet<String>>,
}

impl Ctx {
    /// A context for triggers hosted by one ticker.
    pub fn new(names: Names, js: Context, state: Store, tasks: Store, ack_wait: Duration) -> Ctx {
        let publisher = Publisher::new(js.clone(), names.clone());
        Ctx { names, js, publisher, state, tasks, ack_wait, reported: Mutex::new(HashSet::new()) }
    }

    /// Publishes an `invalid` report about trigger `spec` (once per process
    /// and reason; replicas reporting the same one store one event).
    pub(crate) async fn report_invalid(&self, spec: &Spec, reason: &str) {
        self.report(&spec.task, spec.revision, spec.index, reason).await;
    }

    async fn report(&self, task: &str, revision: u64, index: u32, reason: &str) {
        let once = format!("{task}\u{1f}{revision}\u{1f}{index}\u{1f}{reason}");
        if !self.reported.lock().is_ok_and(|mut r| r.insert(once)) {
            return;
        }
        tracing::warn!(task, trigger = index, reason, "trigger cannot work yet");
        let event = RunEvent {
            trigger: Some(index),
            ..RunEvent::invalid(&self.names.tasks_bucket(), task, revision, format!("triggers[{index}]: {reason}"))
        };
        if let Err(err) = self.publisher.event(&event).await {
            tracing::error!(task, trigger = index, %err, "cannot report an invalid trigger");
        }
    }
}

/// Starts the trigger host. It runs the triggers of the partitions `owned`
/// says this ticker holds, until `shutdown` fires.
pub fn spawn(ctx: Arc<Ctx>, owned: watch::Receiver<u64>, shutdown: CancellationToken) -> JoinHandle<()> {
    let watch = spawn_kv_watch_stamped(ctx.tasks.clone(), shutdown.child_token(), 1024);
    let host = Host {
        ctx,
        defs: HashMap::new(),
        running: HashMap::new(),
        owned: 0,
        swept: 0,
        loaded: false,
        capture_dirty: true,
    };
    tokio::spawn(host.run(watch, owned, shutdown))
}

/// The triggers of one task definition.
struct Def {
    revision: u64,
    written_at: Timestamp,
    replay: u32,
    triggers: Vec<jetsched_contract::EventTrigger>,
}

struct Running {
    spec: Spec,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

struct Host {
    ctx: Arc<Ctx>,
    /// Valid task definitions that have triggers.
    defs: HashMap<String, Def>,
    /// Triggers running here, by consumer name.
    running: HashMap<String, Running>,
    owned: u64,
    /// Owned partitions whose registrations were checked for leftovers.
    swept: u64,
    loaded: bool,
    capture_dirty: bool,
}

impl Host {
    async fn run(
        mut self,
        mut watch: tokio::sync::mpsc::Receiver<StampedChange>,
        mut owned: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut captured_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                change = watch.recv() => match change {
                    Some(change) => {
                        if self.apply(change) {
                            self.capture_dirty = true;
                            self.reconcile().await;
                        }
                    }
                    None => break,
                },
                changed = owned.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let mask = *owned.borrow_and_update();
                    if crate::owns(mask, CAPTURE_PARTITION) != crate::owns(self.owned, CAPTURE_PARTITION) {
                        self.capture_dirty = true;
                    }
                    self.owned = mask;
                    self.reconcile().await;
                }
                _ = tick.tick() => {
                    let due = self.capture_dirty || captured_at.elapsed() >= CAPTURE_EVERY;
                    if due && self.loaded && crate::owns(self.owned, CAPTURE_PARTITION) {
                        captured_at = tokio::time::Instant::now();
                        self.capture_dirty = !self.capture().await;
                    }
                }
            }
        }
        self.owned = 0;
        let stopping: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in &stopping {
            r.token.cancel();
        }
        for r in stopping {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.handle).await;
        }
    }

    /// Takes a change of the tasks bucket in; true when the view changed.
    fn apply(&mut self, change: StampedChange) -> bool {
        let StampedChange { change, written_at, replay } = change;
        match change {
            KvChange::Put { key, value, revision } => {
                let triggers = match TaskDef::from_json(&value) {
                    // The dispatcher reports invalid definitions.
                    Ok(def) => def.triggers,
                    Err(_) => Vec::new(),
                };
                if triggers.is_empty() {
                    return self.defs.remove(&key).is_some();
                }
                if let Some(d) = self.defs.get_mut(&key)
                    && d.revision == revision
                {
                    d.replay = replay;
                    return false;
                }
                let written_at = Timestamp::try_from(written_at).unwrap_or_else(|_| Timestamp::now());
                self.defs.insert(key, Def { revision, written_at, replay, triggers });
                true
            }
            KvChange::Delete { key } => self.defs.remove(&key).is_some(),
            KvChange::Ready => {
                // Every replay ends with Ready: what it did not mention is gone.
                let before = self.defs.len();
                self.defs.retain(|_, d| d.replay >= replay);
                let first = !self.loaded;
                self.loaded = true;
                first || self.defs.len() != before
            }
        }
    }

    /// Every trigger of every definition, by consumer name.
    fn all(&self) -> HashMap<String, Spec> {
        let mut all = HashMap::new();
        for (task, def) in &self.defs {
            for (i, trigger) in def.triggers.iter().enumerate() {
                let consumer = self.ctx.names.trigger_consumer(task, &trigger.source().identity());
                let spec = Spec {
                    task: task.clone(),
                    index: i as u32,
                    revision: def.revision,
                    start: def.written_at,
                    trigger: trigger.clone(),
                    partition: partition_of(&consumer),
                    consumer: consumer.clone(),
                };
                all.insert(consumer, spec);
            }
        }
        all
    }

    /// Starts, restarts and stops triggers to match the definitions and the
    /// partitions held; deletes the consumers of removed triggers.
    async fn reconcile(&mut self) {
        if !self.loaded {
            return;
        }
        let all = self.all();
        let owned = self.owned;
        let wanted = |spec: &Spec| crate::owns(owned, spec.partition);
        // A trigger whose definition changed restarts (its consumer, named
        // after the source, keeps its position); only the revision changing
        // does not.
        let same = |a: &Spec, b: &Spec| a.index == b.index && a.trigger == b.trigger && a.task == b.task;
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(c, r)| all.get(*c).is_none_or(|s| !wanted(s) || !same(s, &r.spec)))
            .map(|(c, _)| c.clone())
            .collect();
        // Stopped together (each hands its held events back), then the
        // consumers of removed triggers are deleted.
        let stopping: Vec<(String, Running)> =
            stale.into_iter().filter_map(|c| self.running.remove(&c).map(|r| (c, r))).collect();
        for (_, r) in &stopping {
            r.token.cancel();
        }
        let mut removed = Vec::new();
        let mut handles = Vec::new();
        for (consumer, r) in stopping {
            if !all.contains_key(&consumer) && wanted(&r.spec) {
                removed.push((consumer, r.spec));
            }
            handles.push(r.handle);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(handles)).await;
        for (consumer, spec) in removed {
            let (stream, _) = spec.stream_and_filter(&self.ctx);
            forget(&self.ctx, &stream, &consumer, spec.partition).await;
        }
        for (consumer, spec) in &all {
            if wanted(spec) && !self.running.contains_key(consumer) {
                let token = CancellationToken::new();
                let handle = tokio::spawn(runner::run(self.ctx.clone(), spec.clone(), token.clone()));
                self.running.insert(consumer.clone(), Running { spec: spec.clone(), token, handle });
            }
        }
        let fresh = owned & !self.swept;
        if fresh != 0 && self.sweep(fresh, &all).await {
            self.swept |= fresh;
        }
        self.swept &= owned;
    }

    /// Deletes the consumers registered in partitions `mask` whose trigger
    /// no definition has (removed while no ticker held the partition).
    /// False when the registrations could not be read (tried again later).
    async fn sweep(&self, mask: u64, all: &HashMap<String, Spec>) -> bool {
        let keys: Result<Vec<String>, String> = async {
            self.ctx.state.keys().await.map_err(|e| e.to_string())?.try_collect().await.map_err(|e| e.to_string())
        }
        .await;
        let keys = match keys {
            Ok(keys) => keys,
            Err(err) => {
                tracing::debug!(%err, "cannot list trigger registrations; trying again later");
                return false;
            }
        };
        for key in keys {
            let Some((p, consumer)) = parse_trigger_key(&key) else { continue };
            if !crate::owns(mask, p) || all.contains_key(consumer) {
                continue;
            }
            let Ok(Some(entry)) = self.ctx.state.entry(&key).await else { continue };
            let Ok(state) = serde_json::from_slice::<TriggerState>(&entry.value) else { continue };
            tracing::info!(task = %state.task, consumer, "removing the consumer of a trigger that no longer exists");
            forget(&self.ctx, &state.stream, consumer, p).await;
        }
        true
    }

    /// Syncs the capture stream's subjects with the plain-subject triggers;
    /// reports those that cannot be captured. False on failure (retried).
    async fn capture(&self) -> bool {
        let mut named: Vec<(String, &str, u64, u32)> = Vec::new();
        for (task, def) in &self.defs {
            for (i, t) in def.triggers.iter().enumerate() {
                if let Source::Subject(s) = t.source() {
                    named.push((s.to_string(), task.as_str(), def.revision, i as u32));
                }
            }
        }
        let subjects: Vec<String> = named.iter().map(|(s, ..)| s.clone()).collect();
        match setup::sync_trigger_subjects(&self.ctx.js, &self.ctx.names, &subjects).await {
            Ok(conflicts) => {
                CAPTURING.recovered_now();
                for c in conflicts {
                    for (subject, task, revision, index) in &named {
                        if *subject == c.subject {
                            self.ctx.report(task, *revision, *index, &c.reason).await;
                        }
                    }
                }
                true
            }
            Err(err) => {
                CAPTURING.failed(&err);
                false
            }
        }
    }
}

/// Deletes a removed trigger's consumer, then its registration.
async fn forget(ctx: &Ctx, stream: &str, consumer: &str, partition: u16) {
    match ctx.js.get_stream(stream).await {
        Ok(s) => {
            if let Err(err) = s.delete_consumer(consumer).await {
                tracing::debug!(stream, consumer, %err, "trigger consumer not deleted (gone already?)");
            }
        }
        Err(err) => tracing::debug!(stream, %err, "the stream of a removed trigger is gone"),
    }
    if let Err(err) = ctx.state.purge(trigger_key(partition, consumer)).await {
        tracing::warn!(consumer, %err, "cannot drop a removed trigger's registration; dropped on the next sweep");
    } else {
        tracing::info!(stream, consumer, "removed trigger's consumer deleted");
    }
}

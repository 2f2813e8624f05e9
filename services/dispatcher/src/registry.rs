//! Live workers, from the heartbeats in `jetsched-workers`: which ones serve
//! a queue with the labels a task requires. An entry whose heartbeat is older
//! than the worker TTL counts as gone even before the bucket drops it.
//! Until the bucket's first replay has been read the view is incomplete
//! ([`Registry::loaded`] is false): routing that picks a worker waits for it,
//! so that a dispatcher just started does not rotate over part of the workers.
//!
//! The room a worker has is what its last heartbeat says it has free, less
//! what this dispatcher has placed on it since that the heartbeat does not
//! account for yet: a placement counts until a heartbeat lists its run as
//! held or let go (workers publish a heartbeat as soon as that changes), or
//! for at most [`PLACED_TTL`] (a run still waiting in the worker's queue).
//! So a burst of runs placed by one dispatcher is spread by what each takes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use jetsched_contract::{Need, Resources, Room, WorkerInfo};
use jetsched_runtime::{KvChange, spawn_kv_watch};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::cache::{read, write};

/// How long a run placed on a worker counts against its room when no
/// heartbeat has accounted for it.
pub const PLACED_TTL: Duration = Duration::from_secs(60);

/// A run this dispatcher placed on a worker.
struct Placed {
    run_id: String,
    need: Need,
    at: Instant,
}

type Placements = Arc<Mutex<HashMap<String, Vec<Placed>>>>;

/// Chooses among workers with room (each with its room), by index.
pub type Pick<'a> = dyn Fn(&[(&WorkerInfo, Room)]) -> Option<usize> + 'a;

/// The workers seen alive.
#[derive(Clone, Default)]
pub struct Registry {
    workers: Arc<RwLock<HashMap<String, WorkerInfo>>>,
    ttl: Duration,
    loaded: Arc<AtomicBool>,
    placed: Placements,
}

impl Registry {
    /// Mirrors `store` until `shutdown`.
    pub fn spawn(store: Store, ttl: Duration, shutdown: CancellationToken) -> Registry {
        let registry = Registry { workers: Arc::default(), ttl, loaded: Arc::default(), placed: Arc::default() };
        let workers = registry.workers.clone();
        let loaded = registry.loaded.clone();
        let placed = registry.placed.clone();
        let mut changes = spawn_kv_watch(store, shutdown, 256);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match change {
                    KvChange::Put { key, value, .. } => match serde_json::from_slice::<WorkerInfo>(&value) {
                        Ok(info) => {
                            accounted(&placed, &info);
                            write(&workers).insert(key, info);
                        }
                        Err(err) => tracing::warn!(worker = %key, %err, "unreadable worker heartbeat"),
                    },
                    KvChange::Delete { key } => {
                        write(&workers).remove(&key);
                    }
                    KvChange::Ready => loaded.store(true, Ordering::Release),
                }
            }
        });
        registry
    }

    /// A registry holding exactly `workers` (unit tests).
    #[cfg(test)]
    pub fn fixed(workers: Vec<WorkerInfo>, ttl: Duration) -> Registry {
        Registry {
            workers: Arc::new(RwLock::new(workers.into_iter().map(|w| (w.id.clone(), w)).collect())),
            ttl,
            loaded: Arc::new(AtomicBool::new(true)),
            placed: Arc::default(),
        }
    }

    /// True once every worker present when the dispatcher started has been read.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// True when `id` has a fresh heartbeat and is not draining (a draining
    /// worker hands back the work of its own queue, which must move on).
    pub fn is_alive(&self, id: &str) -> bool {
        read(&self.workers).get(id).is_some_and(|w| self.fresh(w) && !w.draining)
    }

    fn fresh(&self, w: &WorkerInfo) -> bool {
        let age = Timestamp::now().duration_since(w.heartbeat_at);
        age < SignedDuration::try_from(self.ttl).unwrap_or(SignedDuration::MAX)
    }

    /// Live workers serving `queue` that carry every label in `labels`, by id.
    pub fn matching(&self, queue: &str, labels: &BTreeMap<String, String>) -> Vec<WorkerInfo> {
        let mut out: Vec<WorkerInfo> = read(&self.workers)
            .values()
            .filter(|w| {
                self.fresh(w) && !w.draining && w.queues.iter().any(|q| q == queue) && labels_match(&w.labels, labels)
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

impl Registry {
    /// What `w` has free: its heartbeat's account, less the runs placed on
    /// it that the heartbeat does not account for yet.
    #[cfg(test)]
    pub fn room(&self, w: &WorkerInfo) -> Room {
        room_in(&mut self.placements(), w)
    }

    fn placements(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Placed>>> {
        self.placed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places run `run_id` on one of `workers` (in id order) that has room
    /// for `need`: the one `pick` chooses among them, given each one's room.
    /// Checking the room and counting the run against it are one step, so
    /// that runs dispatched at once by this dispatcher do not both take the
    /// same room. `None` when none has room (or `pick` chooses none).
    pub fn place(
        &self,
        workers: &[&WorkerInfo],
        need: &Need,
        run_id: &str,
        pick: impl FnOnce(&[(&WorkerInfo, Room)]) -> Option<usize>,
    ) -> Option<WorkerInfo> {
        let mut placed = self.placements();
        let rooms: Vec<(&WorkerInfo, Room)> =
            workers.iter().map(|w| (*w, room_in(&mut placed, w))).filter(|(_, r)| r.fits(need)).collect();
        let (chosen, _) = rooms.get(pick(&rooms)?)?;
        placed.entry(chosen.id.clone()).or_default().push(Placed {
            run_id: run_id.to_string(),
            need: *need,
            at: Instant::now(),
        });
        Some((*chosen).clone())
    }

    /// Takes back the placement of `run_id` on `worker` (it was not sent after all).
    pub fn unplace(&self, worker: &str, run_id: &str) {
        if let Some(runs) = self.placements().get_mut(worker)
            && let Some(i) = runs.iter().position(|p| p.run_id == run_id)
        {
            runs.swap_remove(i);
        }
    }

    /// A heartbeat arrives (unit tests).
    #[cfg(test)]
    pub fn heartbeat(&self, info: WorkerInfo) {
        accounted(&self.placed, &info);
        write(&self.workers).insert(info.id.clone(), info);
    }
}

/// The room of `w` less its placements in `placed` (expired ones dropped).
fn room_in(placed: &mut HashMap<String, Vec<Placed>>, w: &WorkerInfo) -> Room {
    let mut room = w.room();
    if let Some(runs) = placed.get_mut(&w.id) {
        runs.retain(|p| p.at.elapsed() < PLACED_TTL);
        for p in runs.iter() {
            room.resources = room.resources.minus(&p.need.resources);
            room.slots = room.slots.saturating_sub(p.need.slots);
        }
    }
    room
}

/// Of the rooms given (workers in id order), the one with the most room for
/// `need` ([`Room::headroom`]); a tie goes to the first. For [`Registry::place`].
pub fn roomiest(rooms: &[(&WorkerInfo, Room)], need: &Need) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (_, room)) in rooms.iter().enumerate() {
        let headroom = room.headroom(need);
        if best.is_none_or(|(_, h)| headroom > h) {
            best = Some((i, headroom));
        }
    }
    best.map(|(i, _)| i)
}

/// Forgets the placements on `info`'s worker that its heartbeat accounts
/// for: runs it holds or has let go.
fn accounted(placed: &Placements, info: &WorkerInfo) {
    let mut placed = placed.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(runs) = placed.get_mut(&info.id) {
        runs.retain(|p| !info.holding.contains(&p.run_id) && !info.released.contains(&p.run_id));
        if runs.is_empty() {
            placed.remove(&info.id);
        }
    }
}

/// True when the capacity of `w` could ever hold `need` (whatever it holds now).
pub fn big_enough(w: &WorkerInfo, need: &Need) -> bool {
    w.capacity.covers(&need.resources) && u64::from(w.slots) >= need.slots
}

/// The greatest capacity among `workers`, kind by kind (for saying why none fits).
pub fn largest(workers: &[WorkerInfo]) -> Resources {
    workers.iter().fold(Resources::default(), |m, w| Resources {
        cpu: m.cpu.max(w.capacity.cpu),
        memory: m.memory.max(w.capacity.memory),
        disk: m.disk.max(w.capacity.disk),
    })
}

/// True when `offered` has every required label with the same value.
pub fn labels_match(offered: &BTreeMap<String, String>, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| offered.get(k) == Some(v))
}

/// Rendezvous hashing: the worker with the highest score for `key`, stable
/// while the set does not change, and moving only `key`s of a departed worker.
pub fn rendezvous<'a>(key: &str, workers: &'a [WorkerInfo]) -> Option<&'a WorkerInfo> {
    workers.iter().max_by_key(|w| jetsched_contract::run::fnv1a(format!("{key}\u{1f}{}", w.id).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, queues: &[&str], labels: &[(&str, &str)], age_secs: i64) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            slots: 4,
            busy: 0,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            started_at: Timestamp::now(),
            heartbeat_at: Timestamp::now().checked_sub(SignedDuration::from_secs(age_secs)).unwrap(),
            draining: false,
            capacity: Resources::default(),
            held: Resources::default(),
            holding: Vec::new(),
            released: Vec::new(),
        }
    }

    #[test]
    fn a_draining_worker_gets_no_new_work_and_its_queue_moves_on() {
        let draining = WorkerInfo { draining: true, ..worker("old", &["default"], &[], 1) };
        let r = Registry::fixed(vec![draining, worker("new", &["default"], &[], 1)], Duration::from_secs(15));
        let ids: Vec<String> = r.matching("default", &BTreeMap::new()).into_iter().map(|w| w.id).collect();
        assert_eq!(ids, vec!["new"]);
        assert!(!r.is_alive("old"));
        assert!(r.is_alive("new"));
    }

    #[test]
    fn a_placement_counts_until_a_heartbeat_accounts_for_it() {
        let mut w = worker("w", &["q"], &[], 0);
        w.capacity.cpu = jetsched_contract::Cores::whole(4);
        let r = Registry::fixed(vec![w.clone()], Duration::from_secs(15));
        let need =
            Need { resources: Resources { cpu: jetsched_contract::Cores::whole(1), ..Resources::default() }, slots: 1 };
        let first = |_: &[(&WorkerInfo, Room)]| Some(0);
        assert_eq!(r.place(&[&w], &need, "run-1", first).map(|w| w.id), Some("w".to_string()));
        assert!(r.place(&[&w], &need, "run-2", first).is_some());
        let room = r.room(&w);
        assert_eq!((room.resources.cpu.0, room.slots), (2000, 2), "both placements count");
        // run-1 started (held, and counted in the heartbeat); run-2 ran and let go.
        let beat = WorkerInfo {
            held: Resources { cpu: jetsched_contract::Cores::whole(1), ..Resources::default() },
            busy: 1,
            holding: vec!["run-1".into()],
            released: vec!["run-2".into()],
            ..w.clone()
        };
        r.heartbeat(beat.clone());
        let room = r.room(&beat);
        assert_eq!((room.resources.cpu.0, room.slots), (3000, 3), "counted once, by the heartbeat");
    }

    #[test]
    fn matching_needs_the_queue_every_label_and_a_fresh_heartbeat() {
        let r = Registry::fixed(
            vec![
                worker("cpu-1", &["default"], &[], 1),
                worker("gpu-1", &["default"], &[("gpu", "true")], 1),
                worker("gpu-old", &["default"], &[("gpu", "true")], 60),
                worker("gpu-other", &["batch"], &[("gpu", "true")], 1),
            ],
            Duration::from_secs(15),
        );
        let gpu: BTreeMap<String, String> = [("gpu".to_string(), "true".to_string())].into();
        let ids: Vec<String> = r.matching("default", &gpu).into_iter().map(|w| w.id).collect();
        assert_eq!(ids, vec!["gpu-1"]);
        assert_eq!(r.matching("default", &BTreeMap::new()).len(), 2);
        assert!(!r.is_alive("gpu-old"));
    }

    #[test]
    fn rendezvous_is_stable_and_moves_little() {
        let all: Vec<WorkerInfo> = (0..5).map(|i| worker(&format!("w{i}"), &["q"], &[], 0)).collect();
        let keys: Vec<String> = (0..200).map(|i| format!("customer-{i}")).collect();
        let before: Vec<String> = keys.iter().map(|k| rendezvous(k, &all).unwrap().id.clone()).collect();
        let again: Vec<String> = keys.iter().map(|k| rendezvous(k, &all).unwrap().id.clone()).collect();
        assert_eq!(before, again);
        let without_w2: Vec<WorkerInfo> = all.iter().filter(|w| w.id != "w2").cloned().collect();
        for (k, b) in keys.iter().zip(&before) {
            let after = rendezvous(k, &without_w2).unwrap().id.clone();
            if b != "w2" {
                assert_eq!(&after, b, "only keys of the departed worker move");
            }
        }
    }
}

//! Where a run goes: the queue (and band) its work item is published to,
//! and, for broadcast, one run per matching worker.
//!
//! - `any` without labels: the task's queue, at the run's priority band;
//! - `any` with `requires.labels`: a queue shared by the workers of the
//!   task's queue carrying those labels (`_l-<hash>`), at the run's band;
//! - `round_robin`, `least_loaded`, `consistent_hash`, `broadcast`: the
//!   queue of one chosen worker (`_w-<worker id>`), at the run's band (a
//!   worker serves every band of its own queue, so routed runs keep their
//!   priority);
//! - a run that requires cores, memory or disk goes only to a worker whose
//!   capacity could hold it, and (except for broadcast shares and the key's
//!   worker under consistent hashing, which wait there) only to one with
//!   room for it now: `any` takes the first such worker by id,
//!   `least_loaded` the one with the most room, `round_robin` rotates over
//!   them. None: the run waits, and says why.
//!
//! Round robin takes turns across the whole cluster: the rotation is a
//! counter per task in `jetsched-rates` (key [`Names::round_robin_key`]),
//! advanced by compare-and-set, so two dispatchers never hand out the same
//! turn and the matching workers (ordered by id) get runs in strict rotation.

use std::collections::BTreeMap;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use jetsched_contract::message::Shard;
use jetsched_contract::{Names, Routing, TaskDef, WorkerInfo, render_template};
use serde_json::Value;

use crate::registry::{Pick, Registry, big_enough, largest, rendezvous, roomiest};

/// One work item to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Queue token of the subject.
    pub queue: String,
    /// Priority band.
    pub band: u8,
    /// The run id of this work item.
    pub run_id: String,
    /// For broadcast: which share.
    pub shard: Option<Shard>,
}

/// Why a run cannot be routed now.
#[derive(Debug)]
pub enum Unroutable {
    /// The list of live workers is still being read (just started).
    Loading,
    /// No live worker fits it: it waits (the reason says what is missing).
    Wait(String),
    /// The rotation counter could not be read or advanced (NATS trouble).
    Failed(anyhow::Error),
}

/// Most compare-and-set attempts on the rotation counter before giving up
/// (the inbox message is retried later).
const TURN_ATTEMPTS: usize = 32;

/// Takes the next turn of the rotation under `key` in `store`: the counter's
/// value before this call. A conflicting write (another dispatcher took a
/// turn, or a stale read from a follower) is re-read and tried again.
pub async fn next_turn(store: &Store, key: &str) -> anyhow::Result<u64> {
    for _ in 0..TURN_ATTEMPTS {
        match store.entry(key).await? {
            Some(e) if e.operation == Operation::Put => {
                let turn: u64 = std::str::from_utf8(&e.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                match store.update(key, (turn + 1).to_string().into(), e.revision).await {
                    Ok(_) => return Ok(turn),
                    Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            _ => match store.create(key, "1".into()).await {
                Ok(_) => return Ok(0),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err.into()),
            },
        }
    }
    anyhow::bail!("the round-robin counter {key} kept changing ({TURN_ATTEMPTS} attempts)")
}

/// Where the run goes. `Unroutable::Wait` when routing needs a live
/// matching worker (with room, for runs placed by room) and there is none
/// (the caller waits for one).
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    names: &Names,
    task: &str,
    def: &TaskDef,
    payload: &Value,
    run_id: &str,
    band: u8,
    registry: &Registry,
    counters: &Store,
) -> Result<Vec<Target>, Unroutable> {
    let empty = BTreeMap::new();
    let labels = def.requires.as_ref().map(|r| &r.labels).unwrap_or(&empty);
    let single = |queue: String, band: u8| Ok(vec![Target { queue, band, run_id: run_id.to_string(), shard: None }]);
    let to = |w: &WorkerInfo| single(names.worker_queue(&w.id), band);
    if def.routing.is_any() && !def.placed_by_room() {
        return if labels.is_empty() {
            single(def.queue.clone(), band)
        } else {
            single(names.labelled_queue(&def.queue, labels), band)
        };
    }
    if !registry.loaded() {
        return Err(Unroutable::Loading);
    }
    let workers = registry.matching(&def.queue, labels);
    if workers.is_empty() {
        return Err(Unroutable::Wait(format!("no live worker serves queue {} with labels {labels:?}", def.queue)));
    }
    let need = def.need();
    let sized = !need.resources.is_zero();
    let largest = largest(&workers);
    // Of the rest, only workers whose capacity could ever hold the run.
    let workers: Vec<WorkerInfo> = workers.into_iter().filter(|w| !sized || big_enough(w, &need)).collect();
    if workers.is_empty() {
        return Err(Unroutable::Wait(format!(
            "no live worker of queue {} is big enough: the run needs {}; the most any offers is {largest}",
            def.queue, need.resources
        )));
    }
    let no_room = || {
        Unroutable::Wait(format!(
            "no live worker of queue {} has room for the run now: it needs {} and {} slot(s)",
            def.queue, need.resources, need.slots
        ))
    };
    // Counted against the chosen worker's room at once (see `Registry::place`).
    let placed = |candidates: &[&WorkerInfo], pick: &Pick| {
        registry.place(candidates, &need, run_id, pick).map_or_else(|| Err(no_room()), |w| to(&w))
    };
    let all: Vec<&WorkerInfo> = workers.iter().collect();
    match &def.routing {
        Routing::Any => placed(&all, &|_| Some(0)),
        // Workers are in id order: a tie goes to the lowest id.
        Routing::LeastLoaded => placed(&all, &|rooms| roomiest(rooms, &need)),
        Routing::RoundRobin => {
            let turn = next_turn(counters, &names.round_robin_key(task)).await.map_err(Unroutable::Failed)?;
            if !sized {
                return to(all[(turn % all.len() as u64) as usize]);
            }
            // The turn goes round those with room now.
            placed(&all, &|rooms| (!rooms.is_empty()).then(|| (turn % rooms.len() as u64) as usize))
        }
        Routing::ConsistentHash(template) => {
            let key = render_template(template, payload);
            match rendezvous(&key, &workers) {
                Some(w) if !sized => to(w),
                // The key's worker, or none: the key keeps its worker.
                Some(w) => registry.place(&[w], &need, run_id, |_| Some(0)).map_or_else(
                    || {
                        Err(Unroutable::Wait(format!(
                            "worker {} (the one for key {key:?}) has no room for the run now: it needs {}",
                            w.id, need.resources
                        )))
                    },
                    |w| to(&w),
                ),
                None => Err(Unroutable::Wait("no worker to hash onto".to_string())),
            }
        }
        // Every worker big enough gets a share, which waits there for room.
        Routing::Broadcast => {
            let total = workers.len() as u32;
            Ok(workers
                .iter()
                .enumerate()
                .map(|(i, w)| Target {
                    queue: names.worker_queue(&w.id),
                    band,
                    run_id: jetsched_contract::run::share_run_id(run_id, i as u32),
                    shard: Some(Shard { index: i as u32, total }),
                })
                .collect())
        }
    }
}

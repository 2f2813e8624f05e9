//! Where a run goes: the queue (and band) its work item is published to,
//! and, for broadcast, one run per matching worker.
//!
//! - `any` without labels: the task's queue, at the run's priority band;
//! - `any` with `requires.labels`: a queue shared by the workers of the
//!   task's queue carrying those labels (`_l-<hash>`), at the run's band;
//! - `round_robin`, `consistent_hash`, `broadcast`: the queue of one chosen
//!   worker (`_w-<worker id>`), band 0.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use jetsched_contract::message::Shard;
use jetsched_contract::{Names, Routing, TaskDef, render_template};
use serde_json::Value;

use crate::registry::{Registry, rendezvous};

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

/// Round-robin positions per task (per dispatcher: replicas interleave).
#[derive(Default)]
pub struct RoundRobin(Mutex<HashMap<String, usize>>);

impl RoundRobin {
    fn next(&self, task: &str) -> usize {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(task.to_string()).or_default();
        *n = n.wrapping_add(1);
        *n - 1
    }
}

/// Where the run goes; `Err` when routing needs a live matching worker and
/// there is none (the caller waits for one).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    names: &Names,
    task: &str,
    def: &TaskDef,
    payload: &Value,
    run_id: &str,
    band: u8,
    registry: &Registry,
    rr: &RoundRobin,
) -> Result<Vec<Target>, String> {
    let empty = BTreeMap::new();
    let labels = def.requires.as_ref().map(|r| &r.labels).unwrap_or(&empty);
    let single = |queue: String, band: u8| Ok(vec![Target { queue, band, run_id: run_id.to_string(), shard: None }]);
    if def.routing.is_any() {
        return if labels.is_empty() {
            single(def.queue.clone(), band)
        } else {
            single(names.labelled_queue(&def.queue, labels), band)
        };
    }
    let workers = registry.matching(&def.queue, labels);
    if workers.is_empty() {
        return Err(format!("no live worker serves queue {} with labels {labels:?}", def.queue));
    }
    match &def.routing {
        Routing::Any => single(def.queue.clone(), band),
        Routing::RoundRobin => {
            let w = &workers[rr.next(task) % workers.len()];
            single(names.worker_queue(&w.id), 0)
        }
        Routing::ConsistentHash(template) => {
            let key = render_template(template, payload);
            match rendezvous(&key, &workers) {
                Some(w) => single(names.worker_queue(&w.id), 0),
                None => Err("no worker to hash onto".to_string()),
            }
        }
        Routing::Broadcast => {
            let total = workers.len() as u32;
            Ok(workers
                .iter()
                .enumerate()
                .map(|(i, w)| Target {
                    queue: names.worker_queue(&w.id),
                    band: 0,
                    run_id: format!("{run_id}.w{i}"),
                    shard: Some(Shard { index: i as u32, total }),
                })
                .collect())
        }
    }
}

//! Live workers, from the heartbeats in `jetsched-workers`: which ones serve
//! a queue with the labels a task requires. An entry whose heartbeat is older
//! than the worker TTL counts as gone even before the bucket drops it.
//! Until the bucket's first replay has been read the view is incomplete
//! ([`Registry::loaded`] is false): routing that picks a worker waits for it,
//! so that a dispatcher just started does not rotate over part of the workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use jetsched_contract::WorkerInfo;
use jetsched_runtime::{KvChange, spawn_kv_watch};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::cache::{read, write};

/// The workers seen alive.
#[derive(Clone, Default)]
pub struct Registry {
    workers: Arc<RwLock<HashMap<String, WorkerInfo>>>,
    ttl: Duration,
    loaded: Arc<AtomicBool>,
}

impl Registry {
    /// Mirrors `store` until `shutdown`.
    pub fn spawn(store: Store, ttl: Duration, shutdown: CancellationToken) -> Registry {
        let registry = Registry { workers: Arc::default(), ttl, loaded: Arc::default() };
        let workers = registry.workers.clone();
        let loaded = registry.loaded.clone();
        let mut changes = spawn_kv_watch(store, shutdown, 256);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match change {
                    KvChange::Put { key, value, .. } => match serde_json::from_slice::<WorkerInfo>(&value) {
                        Ok(info) => {
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
        }
    }

    /// True once every worker present when the dispatcher started has been read.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// True when `id` has a fresh heartbeat.
    pub fn is_alive(&self, id: &str) -> bool {
        read(&self.workers).get(id).is_some_and(|w| self.fresh(w))
    }

    fn fresh(&self, w: &WorkerInfo) -> bool {
        let age = Timestamp::now().duration_since(w.heartbeat_at);
        age < SignedDuration::try_from(self.ttl).unwrap_or(SignedDuration::MAX)
    }

    /// Live workers serving `queue` that carry every label in `labels`, by id.
    pub fn matching(&self, queue: &str, labels: &BTreeMap<String, String>) -> Vec<WorkerInfo> {
        let mut out: Vec<WorkerInfo> = read(&self.workers)
            .values()
            .filter(|w| self.fresh(w) && w.queues.iter().any(|q| q == queue) && labels_match(&w.labels, labels))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
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
        }
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

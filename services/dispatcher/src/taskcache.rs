//! Task definitions by name, mirrored from `jetsched-tasks` by a KV watch and
//! read directly on a miss (a task put just before its first submission may
//! not have reached the watch yet). Bad definitions are cached with their
//! reason and reported once as `invalid` events.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::Store;
use jetsched_contract::{RunEvent, TaskDef};
use jetsched_runtime::{KvChange, Publisher, spawn_kv_watch};
use tokio_util::sync::CancellationToken;

/// A definition, or why it cannot be used.
pub type Cached = Result<Arc<TaskDef>, String>;

/// Shared, concurrently readable task definitions.
#[derive(Clone)]
pub struct TaskCache {
    store: Store,
    map: Arc<RwLock<HashMap<String, Cached>>>,
}

impl TaskCache {
    /// Starts mirroring `store`; invalid definitions are reported through `publisher`.
    pub fn spawn(store: Store, publisher: Publisher, shutdown: CancellationToken) -> TaskCache {
        let cache = TaskCache { store: store.clone(), map: Arc::default() };
        let mut changes = spawn_kv_watch(store, shutdown, 1024);
        let map = cache.map.clone();
        let bucket = publisher.names().tasks_bucket();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match change {
                    KvChange::Put { key, value, revision } => {
                        let parsed = TaskDef::from_json(&value).map(Arc::new);
                        if let Err(reason) = &parsed {
                            tracing::warn!(task = %key, revision, %reason, "invalid task definition");
                            let event = RunEvent::invalid(&bucket, &key, revision, reason.clone());
                            if let Err(err) = publisher.event(&event).await {
                                tracing::error!(task = %key, %err, "cannot report invalid task definition");
                            }
                        }
                        write(&map).insert(key, parsed);
                    }
                    KvChange::Delete { key } => {
                        write(&map).remove(&key);
                    }
                    KvChange::Ready => tracing::info!(tasks = read(&map).len(), "task definitions loaded"),
                }
            }
        });
        cache
    }

    /// The definition of `name`: from the mirror, else straight from the bucket.
    /// `Ok(None)` means no such task.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Cached>> {
        if let Some(hit) = read(&self.map).get(name) {
            return Ok(Some(hit.clone()));
        }
        let Some(value) = self.store.get(name).await? else {
            return Ok(None);
        };
        let parsed = TaskDef::from_json(&value).map(Arc::new);
        write(&self.map).insert(name.to_string(), parsed.clone());
        Ok(Some(parsed))
    }
}

// A poisoned lock only means another task panicked mid-update of a plain
// map; the data is still usable.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

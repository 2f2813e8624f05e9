//! Definitions by name (tasks, windows), mirrored from their bucket by a KV
//! watch and read directly on a miss (a definition put just before its first
//! use may not have reached the watch yet). Bad definitions are cached with
//! their reason and reported once as `invalid` events.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::Store;
use jetsched_contract::RunEvent;
use jetsched_runtime::{KvChange, Publisher, spawn_kv_watch};
use tokio_util::sync::CancellationToken;

/// A definition, or why it cannot be used.
pub type Cached<T> = Result<Arc<T>, String>;

/// Parses the value stored under a key.
pub type Parse<T> = fn(&str, &[u8]) -> Result<T, String>;

/// Shared, concurrently readable definitions of one kind.
pub struct DefCache<T> {
    store: Store,
    parse: Parse<T>,
    map: Arc<RwLock<HashMap<String, Cached<T>>>>,
}

impl<T> Clone for DefCache<T> {
    fn clone(&self) -> Self {
        DefCache { store: self.store.clone(), parse: self.parse, map: self.map.clone() }
    }
}

impl<T: Send + Sync + 'static> DefCache<T> {
    /// Starts mirroring `store`; invalid definitions are reported through `publisher`.
    pub fn spawn(store: Store, parse: Parse<T>, publisher: Publisher, shutdown: CancellationToken) -> Self {
        let cache = DefCache { store: store.clone(), parse, map: Arc::default() };
        let mut changes = spawn_kv_watch(store.clone(), shutdown, 1024);
        let map = cache.map.clone();
        let bucket = store.name.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match change {
                    KvChange::Put { key, value, revision } => {
                        let parsed = parse(&key, &value).map(Arc::new);
                        if let Err(reason) = &parsed {
                            tracing::warn!(%bucket, %key, revision, %reason, "invalid definition");
                            let event = RunEvent::invalid(&bucket, &key, revision, reason.clone());
                            if let Err(err) = publisher.event(&event).await {
                                tracing::error!(%key, %err, "cannot report invalid definition");
                            }
                        }
                        write(&map).insert(key, parsed);
                    }
                    KvChange::Delete { key } => {
                        write(&map).remove(&key);
                    }
                    KvChange::Ready => tracing::info!(%bucket, entries = read(&map).len(), "definitions loaded"),
                }
            }
        });
        cache
    }

    /// The definition under `name`: from the mirror, else straight from the
    /// bucket. `Ok(None)` means there is none.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Cached<T>>> {
        if let Some(hit) = read(&self.map).get(name) {
            return Ok(Some(hit.clone()));
        }
        let Some(value) = self.store.get(name).await? else {
            return Ok(None);
        };
        let parsed = (self.parse)(name, &value).map(Arc::new);
        write(&self.map).insert(name.to_string(), parsed.clone());
        Ok(Some(parsed))
    }
}

// A poisoned lock only means another task panicked mid-update of a plain
// map; the data is still usable.
pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

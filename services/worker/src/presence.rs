//! This worker's presence: its entry in `jetsched-workers` (queues, slots,
//! labels, busy count), refreshed while it lives.

use std::sync::Arc;
use std::time::Duration;

use jetsched_contract::Handles;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

/// Keeps this worker's entry in `jetsched-workers` fresh; deleted on shutdown.
pub async fn heartbeat(
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
            tracing::debug!(%err, "cannot publish worker heartbeat");
            crate::ctx::RUNNING.failed(&format_args!("cannot publish worker heartbeat: {err}"));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    let _ = handles.workers.delete(&id).await;
}

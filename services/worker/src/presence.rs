//! This worker's presence: its entry in `jetsched-workers` (queues, slots,
//! labels, busy count), refreshed while it lives, and the backlog gauges.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use jetsched_contract::Handles;
use jetsched_runtime::metrics::{kv, metrics};
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
            tracing::warn!(%err, "cannot publish worker heartbeat");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    let _ = handles.workers.delete(&id).await;
}

/// Reports the backlog of each (queue, band) every few seconds.
pub async fn poll_backlog(lanes: Vec<(String, u8, PullConsumer)>, shutdown: CancellationToken) {
    loop {
        for (queue, band, consumer) in &lanes {
            let mut consumer = consumer.clone();
            if let Ok(info) = consumer.info().await {
                let waiting = info.num_pending + info.num_ack_pending as u64;
                metrics().backlog.record(waiting, &[kv("queue", queue.clone()), kv("band", i64::from(*band))]);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

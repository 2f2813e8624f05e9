//! This worker's presence: its entry in `jetsched-workers` (queues, slots,
//! labels, busy count, capacity and holdings), refreshed every 5 s while it
//! lives, and at once (within [`COALESCE`]) when its holdings change, so
//! that dispatchers placing runs by room see them.

use std::sync::Arc;
use std::time::Duration;

use jetsched_contract::Handles;
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;
use crate::room::Room;

/// After a change of the holdings, how long the heartbeat waits for more
/// changes to publish with it: a burst of starts is one KV write.
const COALESCE: Duration = Duration::from_millis(20);

/// Keeps this worker's entry in `jetsched-workers` fresh. From `shutdown`
/// on the entry says `draining` (at once, then at every heartbeat) while the
/// worker finishes its runs; it is deleted at `stop`.
pub async fn heartbeat(
    handles: Handles,
    config: WorkerConfig,
    id: String,
    room: Arc<Room>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let started_at = jiff::Timestamp::now();
    let capacity = config.slots.max(1);
    let every = Duration::from_secs(5);
    loop {
        let holdings = room.holdings();
        let info = jetsched_contract::WorkerInfo {
            id: id.clone(),
            queues: config.queues.clone(),
            slots: capacity as u32,
            busy: room.busy_slots().min(capacity) as u32,
            labels: config.labels.iter().cloned().collect(),
            capacity: room.capacity(),
            held: holdings.held,
            holding: holdings.holding,
            released: holdings.released,
            started_at,
            heartbeat_at: jiff::Timestamp::now(),
            draining: shutdown.is_cancelled(),
        };
        if let Ok(value) = serde_json::to_vec(&info)
            && let Err(err) = handles.workers.put(&id, value.into()).await
        {
            tracing::debug!(%err, "cannot publish worker heartbeat");
            crate::running::RUNNING.failed(&format_args!("cannot publish worker heartbeat: {err}"));
        }
        let draining = shutdown.is_cancelled();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled(), if !draining => {}
            _ = tokio::time::sleep(every) => {}
            _ = room.changed() => tokio::time::sleep(COALESCE).await,
        }
    }
    let _ = handles.workers.delete(&id).await;
}

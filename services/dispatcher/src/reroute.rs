//! Runs addressed to a worker that is gone. A worker's own queue
//! (`_w-<id>`) would otherwise hold them for good: every few seconds each
//! dispatcher looks for worker queues whose worker has no fresh heartbeat,
//! drains them (every band), and re-routes what it finds at the band it had
//! (or skips broadcast shares: that worker's share of a broadcast went with it). Several dispatchers may drain
//! the same queue at once: it is a work queue, each message goes to one.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::{StreamExt, TryStreamExt};
use jetsched_contract::{Handles, RunRecord, RunStatus, WorkItem, WorkerInfo};
use jetsched_runtime::{Change, Known};
use tokio_util::sync::CancellationToken;

use crate::ctx::Ctx;

/// Sweeps for departed workers' queues until `shutdown`.
pub async fn sweep(ctx: std::sync::Arc<Ctx>, handles: Handles, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(err) = sweep_once(&ctx, &handles).await {
            tracing::debug!(%err, "worker-queue sweep failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn sweep_once(ctx: &Ctx, handles: &Handles) -> anyhow::Result<()> {
    let stream = handles.stream(&handles.names.tasks_stream()).await?;
    let names: Vec<String> = stream.consumer_names().try_collect().await?;
    for name in names {
        let Some((queue, band)) = handles.names.parse_worker_consumer(&name) else { continue };
        let Some(id) = handles.names.parse_worker_queue(queue) else { continue };
        if ctx.registry.is_alive(id) {
            continue;
        }
        let mut consumer: PullConsumer = stream.get_consumer(&name).await.map_err(|e| anyhow::anyhow!(e))?;
        if drain(ctx, &consumer, band).await? {
            // Runs the worker held when it died come back after its ack
            // wait: keep the queue until none is outstanding.
            let info = consumer.info().await?;
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                tracing::info!(worker = id, "departed worker's queue drained");
                let _ = stream.delete_consumer(&name).await;
            }
        }
    }
    Ok(())
}

/// Re-routes everything in a departed worker's queue; `true` when it is empty.
async fn drain(ctx: &Ctx, consumer: &PullConsumer, band: u8) -> anyhow::Result<bool> {
    loop {
        let batch: Vec<_> = consumer.fetch().max_messages(64).messages().await?.collect().await;
        if batch.is_empty() {
            return Ok(true);
        }
        for msg in batch {
            let msg = msg.map_err(|e| anyhow::anyhow!(e))?;
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
            let Ok(item) = serde_json::from_slice::<WorkItem>(&msg.payload) else {
                let _ = msg.ack().await;
                continue;
            };
            if resettle(ctx, item, seq, band).await? {
                let _ = msg.ack().await;
            } else {
                // No live worker to take it yet: leave it for the next sweep.
                let _ = msg.ack_with(async_nats::jetstream::AckKind::Nak(Some(Duration::from_secs(5)))).await;
                return Ok(false);
            }
        }
    }
}

/// Skips a broadcast share, or sends the run to another matching worker.
/// `false` when there is no worker to send it to.
async fn resettle(ctx: &Ctx, item: WorkItem, seq: u64, band: u8) -> anyhow::Result<bool> {
    let names = ctx.publisher.names();
    if item.shard.is_some() {
        let reason = "its worker left before running this broadcast share".to_string();
        mark(ctx, &item.run_id, RunStatus::Skipped, &reason).await?;
        return Ok(true);
    }
    let labels = item.def.requires.as_ref().map(|r| r.labels.clone()).unwrap_or_default();
    let mut workers = ctx.registry.matching(&item.def.queue, &labels);
    let need = item.def.need();
    let by_room = item.def.placed_by_room();
    if by_room {
        workers.retain(|w| crate::registry::big_enough(w, &need));
    }
    let placed;
    let Some(target) = (match &item.def.routing {
        jetsched_contract::Routing::ConsistentHash(t) => {
            crate::registry::rendezvous(&jetsched_contract::render_template(t, &item.payload), &workers)
        }
        // The one with the most room for it, counted against it at once.
        _ if by_room => {
            let all: Vec<&WorkerInfo> = workers.iter().collect();
            placed = ctx.registry.place(&all, &need, &item.run_id, |rooms| crate::registry::roomiest(rooms, &need));
            placed.as_ref()
        }
        _ => workers.get(seq as usize % workers.len().max(1)),
    }) else {
        return Ok(false);
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert(jetsched_contract::headers::RUN_ID, item.run_id.as_str());
    let subject = names.task_subject(&names.worker_queue(&target.id), band);
    let msg_id = format!("{}/r{seq}", item.run_id);
    if let Err(err) = ctx.publisher.publish(subject, h, &msg_id, serde_json::to_vec(&item)?.into()).await {
        ctx.registry.unplace(&target.id, &item.run_id);
        return Err(err.into());
    }
    tracing::info!(run_id = %item.run_id, to = %target.id, "re-routed from a departed worker");
    Ok(true)
}

async fn mark(ctx: &Ctx, run_id: &str, status: RunStatus, reason: &str) -> anyhow::Result<()> {
    ctx.runs
        .update(run_id, Known::Read, |current| match current {
            Some(r) if !r.status.is_terminal() => {
                Change::Write(RunRecord { status, error: Some(reason.to_string()), ..r.clone() }, ())
            }
            _ => Change::Keep(()),
        })
        .await?;
    Ok(())
}

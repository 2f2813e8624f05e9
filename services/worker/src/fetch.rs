//! Taking work from the tasks stream without ever leaving a pull request
//! dangling (an abandoned one strands the message it later receives until its
//! ack wait runs out): with free slots the worker asks each band, band 0
//! first, for what is there *now*; when there is nothing it joins a queue
//! group on its queues' subjects, so that each new work message wakes one
//! idle worker.

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use jetsched_contract::{BANDS, Handles, Names, setup};
use tokio::sync::OwnedSemaphorePermit;

use crate::WorkerConfig;

/// Longest wait for the server's answer to a fetch.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One (queue, band) consumer.
pub struct Lane {
    /// Queue name.
    pub queue: String,
    /// Priority band.
    pub band: u8,
    /// The shared durable consumer.
    pub consumer: PullConsumer,
}

/// Creates (or updates) the consumers of every queue and band, band-major:
/// band 0 of every queue before band 1 of any.
pub async fn open_lanes(handles: &Handles, config: &WorkerConfig) -> anyhow::Result<Vec<Lane>> {
    let stream = handles.stream(&handles.names.tasks_stream()).await?;
    let mut lanes = Vec::new();
    for band in 0..BANDS {
        for queue in &config.queues {
            let consumer =
                stream.create_consumer(setup::worker_consumer(&handles.names, queue, band, config.ack_wait)).await?;
            lanes.push(Lane { queue: queue.clone(), band, consumer });
        }
    }
    Ok(lanes)
}

/// Takes what is available now, at most one message per permit, starting
/// with the lane named by `hint` (the subject of a wake-up) and then in
/// priority order.
pub async fn probe(
    lanes: &[Lane],
    permits: &mut Vec<OwnedSemaphorePermit>,
    hint: Option<(String, u8)>,
) -> Vec<(Message, OwnedSemaphorePermit)> {
    let first = hint.and_then(|(q, b)| lanes.iter().position(|l| l.queue == q && l.band == b));
    let order = first.into_iter().chain((0..lanes.len()).filter(move |i| Some(*i) != first));
    let mut found = Vec::new();
    for i in order {
        if permits.is_empty() {
            break;
        }
        // A fetch answered by nobody (the server went away mid-request)
        // would wait forever: bound it.
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let batch = lanes[i].consumer.fetch().max_messages(permits.len()).messages().await?;
            Ok::<_, async_nats::Error>(batch.collect::<Vec<_>>().await)
        })
        .await;
        let msgs = match fetched {
            Ok(Ok(msgs)) => msgs,
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot fetch work");
                continue;
            }
            Err(_) => {
                tracing::warn!(queue = %lanes[i].queue, band = lanes[i].band, "fetch timed out");
                continue;
            }
        };
        for msg in msgs {
            match msg {
                Ok(msg) => {
                    if let Some(permit) = permits.pop() {
                        found.push((msg, permit));
                    }
                }
                Err(err) => tracing::debug!(%err, "fetch ended"),
            }
        }
    }
    found
}

/// Joins the idle workers' queue group on every queue's work subjects.
pub async fn subscribe_wake(
    client: &async_nats::Client,
    queues: &[String],
    names: &Names,
) -> anyhow::Result<futures::stream::SelectAll<async_nats::Subscriber>> {
    let mut subs = Vec::new();
    for queue in queues {
        subs.push(client.queue_subscribe(names.task_queue_filter(queue), names.idle_worker_group()).await?);
    }
    tokio::time::timeout(FETCH_TIMEOUT, client.flush()).await??;
    Ok(futures::stream::select_all(subs))
}

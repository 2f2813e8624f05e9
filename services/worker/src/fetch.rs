//! Taking work from the tasks stream.
//!
//! A worker serves lanes: one durable consumer per (queue, band) of its
//! queues, the shared queues of label requirements it satisfies
//! (`_l-<hash>`, discovered from the task definitions), and its own queue
//! (`_w-<id>`, for runs routed to it by round robin, hashing or broadcast).
//!
//! Order: band 0 first, but waiting work rises one band per `--aging-step`
//! it has waited, so lower bands are delayed, never starved: work at the head
//! of band b is taken within (b + 1) aging steps, however busy band 0 is.
//!
//! Fetching never leaves a pull request dangling (an abandoned one strands
//! the message it later receives until its ack wait runs out): with free
//! slots the worker asks lanes, in that order, for what is there *now*; when
//! there is nothing it joins a queue group on its lanes' subjects, so that
//! each new work message wakes one idle worker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt;
use jetsched_contract::{BANDS, Handles, Names, TaskDef, setup};
use jetsched_runtime::metrics::{kv, metrics};
use jetsched_runtime::{KvChange, spawn_kv_watch};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

/// Longest wait for the server's answer to a fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// One (queue, band) consumer and what the monitor last saw of it.
pub struct Lane {
    /// Queue name.
    pub queue: String,
    /// Priority band.
    pub band: u8,
    /// The shared durable consumer.
    pub consumer: PullConsumer,
    /// Messages not yet delivered (last poll).
    pending: AtomicU64,
    /// Messages delivered and not acked, including retries waiting out a delay (last poll).
    in_flight: AtomicU64,
    /// When the oldest undelivered message was stored (last poll).
    head_at: Mutex<Option<jiff::Timestamp>>,
    /// The lane's subject.
    subject: String,
}

impl Lane {
    fn new(queue: &str, band: u8, consumer: PullConsumer, subject: String) -> Lane {
        Lane {
            queue: queue.to_string(),
            band,
            consumer,
            // Unknown until the first poll: assume there is work.
            pending: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            head_at: Mutex::new(None),
            subject,
        }
    }

    /// Effective band: the band, minus one per aging step its oldest
    /// waiting message has waited.
    fn urgency(&self, now: jiff::Timestamp, aging_step: Duration) -> f64 {
        let waited =
            self.head_at.lock().ok().and_then(|h| *h).map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0));
        f64::from(self.band) - waited / aging_step.as_secs_f64().max(0.001)
    }

    fn idle(&self) -> bool {
        self.pending.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Relaxed) == 0
    }
}

/// Every lane this worker serves; grows when new label queues appear.
pub struct Lanes {
    lanes: RwLock<Vec<Arc<Lane>>>,
    stream: JsStream,
    names: Names,
    ack_wait: Duration,
    aging_step: Duration,
}

impl Lanes {
    /// Opens the lanes of the configured queues and of this worker's own queue.
    pub async fn open(handles: &Handles, config: &WorkerConfig, worker_id: &str) -> anyhow::Result<Lanes> {
        let lanes = Lanes {
            lanes: RwLock::new(Vec::new()),
            stream: handles.stream(&handles.names.tasks_stream()).await?,
            names: handles.names.clone(),
            ack_wait: config.ack_wait,
            aging_step: config.aging_step,
        };
        for queue in &config.queues {
            lanes.add_queue(queue, BANDS).await?;
        }
        // Runs routed to this worker alone come on band 0 of its own queue.
        lanes.add_queue(&lanes.names.worker_queue(worker_id), 1).await?;
        Ok(lanes)
    }

    /// Adds the lanes of `queue` (bands 0 to `bands - 1`) unless present.
    pub async fn add_queue(&self, queue: &str, bands: u8) -> anyhow::Result<()> {
        if self.read().iter().any(|l| l.queue == queue) {
            return Ok(());
        }
        let mut added = Vec::new();
        for band in 0..bands {
            let config: pull::Config = setup::worker_consumer(&self.names, queue, band, self.ack_wait);
            let consumer = self.stream.create_consumer(config).await?;
            added.push(Arc::new(Lane::new(queue, band, consumer, self.names.task_subject(queue, band))));
        }
        tracing::info!(%queue, "serving queue");
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        lanes.extend(added);
        lanes.sort_by(|a, b| (a.band, &a.queue).cmp(&(b.band, &b.queue)));
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Lane>>> {
        self.lanes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The distinct queues served.
    pub fn queues(&self) -> Vec<String> {
        self.read().iter().map(|l| l.queue.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// Lanes to ask, in order: the hinted lane first, then by urgency;
    /// lanes seen empty at the last poll are left out.
    fn order(&self, hint: Option<(String, u8)>) -> Vec<Arc<Lane>> {
        let now = jiff::Timestamp::now();
        let mut lanes: Vec<Arc<Lane>> = self.read().clone();
        let hinted = |l: &Lane| hint.as_ref().is_some_and(|(q, b)| *q == l.queue && *b == l.band);
        lanes.retain(|l| hinted(l) || !l.idle());
        lanes.sort_by(|a, b| {
            hinted(b).cmp(&hinted(a)).then(a.urgency(now, self.aging_step).total_cmp(&b.urgency(now, self.aging_step)))
        });
        lanes
    }
}

/// Takes what is available now, at most one message per permit, in lane order.
pub async fn probe(
    lanes: &Lanes,
    permits: &mut Vec<OwnedSemaphorePermit>,
    hint: Option<(String, u8)>,
) -> Vec<(Message, OwnedSemaphorePermit)> {
    let mut found = Vec::new();
    for lane in lanes.order(hint) {
        if permits.is_empty() {
            break;
        }
        // A fetch answered by nobody (the server went away mid-request)
        // would wait forever: bound it.
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let batch = lane.consumer.fetch().max_messages(permits.len()).messages().await?;
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
                tracing::warn!(queue = %lane.queue, band = lane.band, "fetch timed out");
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

/// Joins the idle workers' queue group on every lane's subjects.
pub async fn subscribe_wake(
    client: &async_nats::Client,
    lanes: &Lanes,
) -> anyhow::Result<futures::stream::SelectAll<async_nats::Subscriber>> {
    let mut subs = Vec::new();
    for queue in lanes.queues() {
        subs.push(
            client.queue_subscribe(lanes.names.task_queue_filter(&queue), lanes.names.idle_worker_group()).await?,
        );
    }
    tokio::time::timeout(FETCH_TIMEOUT, client.flush()).await??;
    Ok(futures::stream::select_all(subs))
}

/// Polls every lane's consumer: what waits and since when (for ordering
/// and aging), and the backlog gauge.
pub async fn monitor(lanes: Arc<Lanes>, every: Duration, shutdown: CancellationToken) {
    loop {
        let snapshot: Vec<Arc<Lane>> = lanes.read().clone();
        for lane in snapshot {
            let mut consumer = lane.consumer.clone();
            let Ok(info) = consumer.info().await else { continue };
            lane.pending.store(info.num_pending, Ordering::Relaxed);
            lane.in_flight.store(info.num_ack_pending as u64, Ordering::Relaxed);
            // The next undelivered message is the lane's head; its store
            // time is how long the lane's oldest work has waited.
            let head = if info.num_pending > 0 {
                lanes
                    .stream
                    .direct_get_next_for_subject(lane.subject.clone(), Some(info.delivered.stream_sequence + 1))
                    .await
                    .ok()
                    .and_then(|m| jiff::Timestamp::from_nanosecond(m.time.unix_timestamp_nanos()).ok())
            } else {
                None
            };
            if let Ok(mut h) = lane.head_at.lock() {
                *h = head;
            }
            let waiting = info.num_pending + info.num_ack_pending as u64;
            metrics().backlog.record(waiting, &[kv("queue", lane.queue.clone()), kv("band", i64::from(lane.band))]);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Watches the task definitions for label requirements this worker meets
/// and serves their queues.
pub async fn watch_label_queues(
    lanes: Arc<Lanes>,
    handles: Handles,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    if config.labels.is_empty() {
        return;
    }
    let labels: std::collections::BTreeMap<String, String> = config.labels.iter().cloned().collect();
    let mut changes = spawn_kv_watch(handles.tasks.clone(), shutdown, 256);
    while let Some(change) = changes.recv().await {
        let KvChange::Put { value, .. } = change else { continue };
        let Ok(def) = TaskDef::from_json(&value) else { continue };
        let Some(req) = def.requires.as_ref().filter(|r| !r.labels.is_empty()) else { continue };
        let satisfied = req.labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        if satisfied && config.queues.contains(&def.queue) {
            let queue = handles.names.labelled_queue(&def.queue, &req.labels);
            if let Err(err) = lanes.add_queue(&queue, BANDS).await {
                tracing::warn!(%queue, %err, "cannot serve a label queue");
            }
        }
    }
}

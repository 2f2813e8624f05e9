//! Taking work from the tasks stream.
//!
//! A worker serves lanes: one durable consumer per (queue, band) of its
//! queues, the shared queues of label requirements it satisfies
//! (`_l-<hash>`, discovered from the task definitions), and its own queue
//! (`_w-<id>`, for runs routed to it by round robin, hashing or broadcast,
//! with every band like any queue, so routed runs keep their priority).
//!
//! Order: band 0 first, but waiting work rises one band per `--aging-step`
//! it has waited, so lower bands are delayed, never starved: work at the head
//! of band b is taken within (b + 1) aging steps, however busy band 0 is.
//!
//! With free slots the worker asks lanes, in that order, for what is there
//! *now* (no-wait fetches). When there is nothing, it stands one pull request
//! for one message on every lane, lapsing after `--idle-poll`: new work then
//! goes straight to an idle worker in the server's delivery, with no wake-up
//! and fetch in between. A message a standing request brings after the
//! worker filled its slots by other means is handed back at once (a nak
//! without delay) for a worker with room. A pull request is never abandoned
//! while it stands (it would strand the message it later receives until its
//! ack wait ran out): the task waiting on it lives until it is answered or
//! lapses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt;
use jetsched_contract::permissions::direct_get_subject;
use jetsched_contract::{BANDS, Handles, Names, TaskDef, setup};
use jetsched_runtime::metrics::{kv, metrics};
use jetsched_runtime::{Backoff, KvChange, Outage, spawn_kv_watch};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

/// Longest wait for the server's answer to a fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Lanes that cannot be read (a stream or consumer without a leader during
/// an election, NATS unreachable): one line when it starts and one when it
/// ends, however many lanes and attempts fail.
static WAITING_FOR_WORK: Outage = Outage::new("waiting for work");

/// One (queue, band) consumer and what the monitor last saw of it.
pub struct Lane {
    /// Queue name.
    pub queue: String,
    /// Priority band.
    pub band: u8,
    /// The shared durable consumer (replaced if the server forgot it).
    consumer: RwLock<PullConsumer>,
    /// How to create it again, and where.
    config: pull::Config,
    stream: JsStream,
    /// Failed requests in a row.
    streak: std::sync::atomic::AtomicU32,
    /// Messages not yet delivered (last poll).
    pending: AtomicU64,
    /// Messages delivered and not acked, including retries waiting out a delay (last poll).
    in_flight: AtomicU64,
    /// When the oldest undelivered message was stored (last poll).
    head_at: Mutex<Option<jiff::Timestamp>>,
    /// The consumer's delivered sequence when `head_at` was estimated
    /// (without permission to read the head itself).
    head_delivered: AtomicU64,
    /// The lane's subject.
    subject: String,
    /// An idle worker's pull request stands on this lane.
    standing: AtomicBool,
    /// Delay before the lane is asked again after a failed request.
    backoff: Mutex<Backoff>,
    /// Not asked before this instant (set after a failure).
    resting_until: Mutex<Option<tokio::time::Instant>>,
}

impl Lane {
    fn new(queue: &str, band: u8, consumer: PullConsumer, config: pull::Config, stream: JsStream) -> Lane {
        Lane {
            queue: queue.to_string(),
            band,
            subject: config.filter_subject.clone(),
            consumer: RwLock::new(consumer),
            config,
            stream,
            streak: std::sync::atomic::AtomicU32::new(0),
            // Unknown until the first poll: assume there is work.
            pending: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            head_at: Mutex::new(None),
            head_delivered: AtomicU64::new(u64::MAX),
            standing: AtomicBool::new(false),
            backoff: Mutex::new(Backoff::new(Duration::from_millis(100), Duration::from_secs(2))),
            resting_until: Mutex::new(None),
        }
    }

    /// The lane's consumer.
    pub fn consumer(&self) -> PullConsumer {
        self.consumer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A request to the lane failed: it rests for a jittered, growing delay
    /// (returned) before it is asked again. Every few failures in a row it
    /// makes sure its durable consumer exists: a server that lost it (a
    /// store lost with a node, a consumer deleted by hand) would otherwise
    /// fail every request forever; creating it with the same config is a
    /// no-op when it exists.
    async fn failed(&self, err: &(dyn std::fmt::Display + Sync)) -> Duration {
        WAITING_FOR_WORK.failed(err);
        if self.streak.fetch_add(1, Ordering::Relaxed) % 5 == 4
            && let Ok(Ok(consumer)) =
                tokio::time::timeout(FETCH_TIMEOUT, self.stream.create_consumer(self.config.clone())).await
        {
            *self.consumer.write().unwrap_or_else(|e| e.into_inner()) = consumer;
        }
        let delay = self.backoff.lock().map(|mut b| b.next_delay()).unwrap_or(Duration::from_secs(1));
        if let Ok(mut r) = self.resting_until.lock() {
            *r = Some(tokio::time::Instant::now() + delay);
        }
        delay
    }

    /// A request to the lane was answered.
    fn answered(&self) {
        self.streak.store(0, Ordering::Relaxed);
        if let Ok(mut b) = self.backoff.lock() {
            b.reset();
        }
        WAITING_FOR_WORK.recovered();
    }

    /// Whether the lane rests after a failure.
    fn resting(&self) -> bool {
        self.resting_until.lock().ok().and_then(|r| *r).is_some_and(|t| t > tokio::time::Instant::now())
    }

    /// Effective band: the band, minus one per aging step its oldest
    /// waiting message has waited.
    fn urgency(&self, now: jiff::Timestamp, aging_step: Duration) -> f64 {
        let waited =
            self.head_at.lock().ok().and_then(|h| *h).map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0));
        f64::from(self.band) - waited / aging_step.as_secs_f64().max(0.001)
    }

    /// The head's store time as far as this worker can tell without
    /// reading it: since when it has seen the lane waiting with no delivery
    /// in between (`delivered`: the consumer's delivered sequence). Work
    /// that waited before this worker looked counts from the first look.
    fn waiting_since(&self, delivered: u64, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let seen = self.head_at.lock().ok().and_then(|h| *h);
        match seen {
            Some(since) if self.head_delivered.swap(delivered, Ordering::Relaxed) == delivered => Some(since),
            _ => {
                self.head_delivered.store(delivered, Ordering::Relaxed);
                Some(now)
            }
        }
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
    /// Whether this worker may read the head of a lane (a direct get on the
    /// tasks stream: any queue's work, so the worker role is not allowed
    /// it); without, a head's waiting time is estimated. Unknown (false)
    /// until the monitor has asked the server.
    read_heads: AtomicBool,
}

impl Lanes {
    /// Opens the lanes of the configured queues and of this worker's own queue.
    pub async fn open(handles: &Handles, config: &WorkerConfig, worker_id: &str) -> anyhow::Result<Lanes> {
        let lanes = Lanes {
            read_heads: AtomicBool::new(false),
            lanes: RwLock::new(Vec::new()),
            stream: handles.stream(&handles.names.tasks_stream()).await?,
            names: handles.names.clone(),
            ack_wait: config.ack_wait,
            aging_step: config.aging_step,
        };
        for queue in &config.queues {
            lanes.add_queue(queue, BANDS).await?;
        }
        // Runs routed to this worker alone come on its own queue, at their band.
        lanes.add_queue(&lanes.names.worker_queue(worker_id), BANDS).await?;
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
            let consumer = self.stream.create_consumer(config.clone()).await?;
            added.push(Arc::new(Lane::new(queue, band, consumer, config, self.stream.clone())));
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

    /// Lanes to ask, in order of urgency; lanes seen empty at the last poll
    /// are left out.
    fn order(&self) -> Vec<Arc<Lane>> {
        let now = jiff::Timestamp::now();
        let mut lanes: Vec<Arc<Lane>> = self.read().clone();
        lanes.retain(|l| !l.idle() && !l.resting());
        lanes.sort_by(|a, b| a.urgency(now, self.aging_step).total_cmp(&b.urgency(now, self.aging_step)));
        lanes
    }

    /// Every lane.
    pub fn all(&self) -> Vec<Arc<Lane>> {
        self.read().clone()
    }
}

impl Lane {
    /// Claims the lane for a standing pull request; false if one stands.
    pub fn stand(&self) -> bool {
        !self.standing.swap(true, Ordering::AcqRel)
    }

    /// Waits up to `expires` for the lane's next message: the standing pull
    /// request of an idle worker, for one message.
    pub async fn wait_one(&self, expires: Duration) -> Option<Message> {
        let got = tokio::time::timeout(expires + FETCH_TIMEOUT, async {
            let mut batch = self.consumer().batch().max_messages(1).expires(expires).messages().await?;
            batch.next().await.transpose()
        })
        .await;
        let msg = match got {
            Ok(Ok(msg)) => {
                self.answered();
                msg
            }
            // The lane stays claimed while it rests, so that no new request
            // is stood on it before the backoff has passed.
            Ok(Err(err)) => {
                let delay = self.failed(&err).await;
                tokio::time::sleep(delay).await;
                None
            }
            Err(_) => {
                let delay = self.failed(&"pull request not answered").await;
                tokio::time::sleep(delay).await;
                None
            }
        };
        self.standing.store(false, Ordering::Release);
        if let Some(m) = &msg {
            self.saw(m);
        }
        msg
    }

    /// Notes what a delivery says is still waiting behind it, so that the
    /// next probe does not skip the lane before the monitor looks again.
    fn saw(&self, msg: &Message) {
        if let Ok(info) = msg.info() {
            self.pending.store(info.pending, Ordering::Relaxed);
        }
    }
}

/// Takes what is available now, at most one message per permit, in lane order.
pub async fn probe(lanes: &Lanes, permits: &mut Vec<OwnedSemaphorePermit>) -> Vec<(Message, OwnedSemaphorePermit)> {
    let mut found = Vec::new();
    for lane in lanes.order() {
        if permits.is_empty() {
            break;
        }
        // A fetch answered by nobody (the server went away mid-request)
        // would wait forever: bound it.
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let batch = lane.consumer().fetch().max_messages(permits.len()).messages().await?;
            Ok::<_, async_nats::Error>(batch.collect::<Vec<_>>().await)
        })
        .await;
        let msgs = match fetched {
            Ok(Ok(msgs)) => msgs,
            Ok(Err(err)) => {
                lane.failed(&err).await;
                continue;
            }
            Err(_) => {
                lane.failed(&"fetch timed out").await;
                continue;
            }
        };
        let failed = msgs.iter().find_map(|m| m.as_ref().err().map(|e| e.to_string()));
        match failed {
            // A status error (503: no leader) arrives as an item of the batch.
            Some(err) if msgs.iter().all(Result::is_err) => {
                lane.failed(&err).await;
                continue;
            }
            _ => lane.answered(),
        }
        for msg in msgs {
            match msg {
                Ok(msg) => {
                    lane.saw(&msg);
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

/// Polls every lane's consumer: what waits and since when (for ordering
/// and aging), and the backlog gauge. First it asks the server whether this
/// worker may read lane heads (off the start-up path: the answer only
/// refines aging).
pub async fn monitor(lanes: Arc<Lanes>, client: async_nats::Client, every: Duration, shutdown: CancellationToken) {
    let tasks = lanes.names.tasks_stream();
    let read_heads = jetsched_runtime::access::ask(&client).await.may_publish(&direct_get_subject(&tasks));
    if !read_heads {
        tracing::info!(
            "this user may not read the head of work lanes; waiting times are measured from when this worker first saw work waiting"
        );
    }
    lanes.read_heads.store(read_heads, Ordering::Relaxed);
    loop {
        let snapshot: Vec<Arc<Lane>> = lanes.read().clone();
        for lane in snapshot {
            let mut consumer = lane.consumer();
            let Ok(info) = consumer.info().await else { continue };
            lane.pending.store(info.num_pending, Ordering::Relaxed);
            lane.in_flight.store(info.num_ack_pending as u64, Ordering::Relaxed);
            // The next undelivered message is the lane's head; its store
            // time is how long the lane's oldest work has waited.
            let head = if info.num_pending > 0 && !lanes.read_heads.load(Ordering::Relaxed) {
                lane.waiting_since(info.delivered.stream_sequence, jiff::Timestamp::now())
            } else if info.num_pending > 0 {
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

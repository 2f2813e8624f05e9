//! The dispatcher: a durable consumer on the inbox stream, shared by every
//! replica. Each message becomes a run (or a rejection) and is acked only
//! after its work and events are stored, so a dispatcher killed at any
//! instant loses nothing; the run-id gate in `jetsched-runs` makes sure the
//! redelivered copy does not run twice.

mod cache;
mod ctx;
mod dispatch;
mod gates;
mod overlap;
mod priority;
mod registry;
mod reroute;
mod route;
mod workflow;

use jetsched_contract::parse_duration;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use jetsched_contract::{Handles, setup};
use jetsched_runtime::{Publisher, Readiness, metrics};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::DefCache;
use crate::ctx::{Ctx, DISPATCHING, Disposition, Inbox};
use crate::priority::Weights;
use crate::registry::Registry;

/// Dispatcher settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherConfig {
    /// Inbox messages handled at once by this dispatcher.
    #[arg(long = "dispatch-concurrency", env = "JETSCHED_DISPATCH_CONCURRENCY", default_value_t = 256)]
    pub dispatch_concurrency: usize,
    /// How long in-flight messages may take to finish on shutdown.
    #[arg(long = "dispatch-drain", env = "JETSCHED_DISPATCH_DRAIN", default_value = "10s", value_parser = parse_duration)]
    pub dispatch_drain: Duration,
    /// Weight of importance in the priority formula.
    #[arg(long = "weight-importance", env = "JETSCHED_WEIGHT_IMPORTANCE", default_value_t = 0.8)]
    pub weight_importance: f64,
    /// Weight of shortness (expected_duration) in the priority formula.
    #[arg(long = "weight-duration", env = "JETSCHED_WEIGHT_DURATION", default_value_t = 0.2)]
    pub weight_duration: f64,
    /// The expected duration that scores one half on shortness.
    #[arg(long = "duration-reference", env = "JETSCHED_DURATION_REFERENCE", default_value = "1m", value_parser = parse_duration)]
    pub duration_reference: Duration,
    /// A worker whose heartbeat is older than this no longer gets runs routed to it.
    #[arg(long = "worker-ttl", env = "JETSCHED_WORKER_TTL", default_value = "15s", value_parser = parse_duration)]
    pub worker_ttl: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let w = Weights::default();
        DispatcherConfig {
            dispatch_concurrency: 256,
            dispatch_drain: Duration::from_secs(10),
            weight_importance: w.importance,
            weight_duration: w.duration,
            duration_reference: w.reference,
            worker_ttl: Duration::from_secs(15),
        }
    }
}

fn parse_task(_: &str, bytes: &[u8]) -> Result<jetsched_contract::TaskDef, String> {
    jetsched_contract::TaskDef::from_json(bytes)
}

/// Runs a dispatcher until `shutdown` fires, then drains; `ready` is set
/// while it is pulling from the inbox.
/// The inbox cannot be read (no leader, consumer lost, NATS unreachable).
static READING_INBOX: jetsched_runtime::Outage = jetsched_runtime::Outage::new("reading the inbox");

pub async fn run(
    config: DispatcherConfig,
    handles: Handles,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::new(handles.js.clone(), handles.names.clone());
    let background = shutdown.child_token();
    let ctx = Arc::new(Ctx {
        tasks: DefCache::spawn(handles.tasks.clone(), parse_task, publisher.clone(), background.clone()),
        windows: DefCache::spawn(
            handles.windows.clone(),
            jetsched_contract::WindowDef::from_json,
            publisher.clone(),
            background.clone(),
        ),
        registry: Registry::spawn(handles.workers.clone(), config.worker_ttl, background.clone()),
        runs: jetsched_runtime::RunStore::open(publisher.clone()).await?,
        schedules: handles.schedules.clone(),
        weights: Weights {
            importance: config.weight_importance,
            duration: config.weight_duration,
            reference: config.duration_reference,
        },
        rates: handles.rates.clone(),
        overlap: handles.overlap.clone(),
        publisher,
    });
    let permits = Arc::new(Semaphore::new(config.dispatch_concurrency.max(1)));
    let mut inflight = JoinSet::new();
    let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    tokio::spawn(poll_backlog(handles.clone(), background.clone()));
    tokio::spawn(reroute::sweep(ctx.clone(), handles.clone(), Duration::from_secs(5), background.clone()));
    tracing::info!(concurrency = config.dispatch_concurrency, "dispatcher started");
    'outer: while !shutdown.is_cancelled() {
        let consumer = match consumer(&handles).await {
            Ok(c) => c,
            Err(err) => {
                READING_INBOX.failed(&format_args!("cannot open the inbox consumer: {err}"));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(config.dispatch_concurrency.clamp(1, 512))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(err) => {
                READING_INBOX.failed(&format_args!("cannot pull from the inbox: {err}"));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        ready.set(true);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
            };
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => continue,
                msg = messages.next() => msg,
            };
            let msg = match msg {
                Some(Ok(msg)) => {
                    backoff.reset();
                    READING_INBOX.recovered();
                    msg
                }
                Some(Err(err)) => {
                    // A consumer that vanished (server restart, reconnect,
                    // leader change) keeps yielding heartbeat errors: start
                    // over, after a backoff.
                    READING_INBOX.failed(&format_args!("inbox consumer error, re-creating it: {err}"));
                    ready.set(false);
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = backoff.wait() => {}
                    }
                    break;
                }
                None => break,
            };
            let ctx = ctx.clone();
            let span = tracing::info_span!(
                "dispatch",
                otel.kind = "consumer",
                subject = %msg.subject,
                run_id = tracing::field::Empty,
                task = tracing::field::Empty
            );
            let carried = jetsched_runtime::trace::Carried::from_headers(msg.headers.as_ref());
            inflight.spawn(carried.run_in(span, async move {
                let _permit = permit;
                let (seq, delivered, stored) = match msg.info() {
                    Ok(i) => (i.stream_sequence, i.delivered.max(0) as u64, Some(i.published.unix_timestamp_nanos())),
                    Err(_) => (0, 1, None),
                };
                let inbox = Inbox {
                    subject: msg.subject.as_str(),
                    headers: msg.headers.as_ref(),
                    payload: &msg.payload,
                    seq,
                    delivered,
                };
                // Boxed: a future is copied whole each time it moves
                // (into its wrappers, into the task, out of it when it
                // ends), and handling a message is most of this one.
                let disposition = Box::pin(dispatch::handle(&ctx, inbox)).await;
                if let (Disposition::Ack, Some(stored)) = (&disposition, stored) {
                    let now = jiff::Timestamp::now().as_nanosecond();
                    metrics().dispatch_latency.record(((now - stored).max(0) as f64) / 1e9, &[]);
                }
                match disposition.apply(&msg).await {
                    Ok(()) => DISPATCHING.recovered(),
                    // The message comes back after ack_wait; the run-id gate absorbs it.
                    Err(err) => DISPATCHING.failed(&format_args!("cannot ack inbox message: {err}")),
                }
            }));
        }
    }
    ready.set(false);
    let drained =
        tokio::time::timeout(config.dispatch_drain, async { while inflight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; unfinished inbox messages will be redelivered");
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// Reports the inbox backlog every few seconds.
async fn poll_backlog(handles: Handles, shutdown: CancellationToken) {
    let name = handles.names.dispatcher_consumer();
    loop {
        if let Ok(stream) = handles.stream(&handles.names.inbox_stream()).await
            && let Ok(info) = stream.consumer_info(&name).await
        {
            metrics().inbox_backlog.record(info.num_pending + info.num_ack_pending as u64, &[]);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn consumer(handles: &Handles) -> anyhow::Result<PullConsumer> {
    let stream = handles.stream(&handles.names.inbox_stream()).await?;
    Ok(stream.create_consumer(setup::dispatcher_consumer(&handles.names)).await?)
}

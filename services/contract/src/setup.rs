//! Stream, bucket and consumer definitions, and idempotent creation.
//!
//! Every JetStream setting that matters is spelled out here with what breaks
//! if it is wrong. Any service may call [`ensure`] at start-up; the first one
//! creates, the rest find what exists.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::event::RunStatus;
use crate::names::Names;

/// Cluster-wide storage settings.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Replicas per stream and bucket: 1 on one server, 3 on a cluster.
    pub replicas: usize,
    /// File (durable) or memory.
    pub storage: StorageType,
    /// Dedup window of the inbox and tasks streams. A re-publish with the
    /// same `Nats-Msg-Id` inside it is dropped by the server; past it the
    /// dispatcher's run-id `create` catches it. Memory grows with the ids in
    /// the window, so it stays short.
    pub duplicate_window: Duration,
    /// How long run events are kept.
    pub events_max_age: Duration,
    /// How long dead letters are kept.
    pub dlq_max_age: Duration,
    /// How long task logs are kept.
    pub logs_max_age: Duration,
    /// Most bytes the logs stream holds, the oldest dropped first; -1: no
    /// bound but age. A bound is reserved from the account's JetStream
    /// storage when the stream is created (and creation fails when the
    /// server has less), so none is set by default.
    pub logs_max_bytes: i64,
    /// How long events captured for plain-subject triggers are kept (a
    /// trigger whose tickers are all down longer loses the oldest).
    pub triggers_max_age: Duration,
    /// How long a run record is kept after its last change.
    pub runs_max_age: Duration,
    /// A worker whose heartbeat is older than this is gone.
    pub worker_ttl: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            events_max_age: Duration::from_secs(7 * 86_400),
            dlq_max_age: Duration::from_secs(30 * 86_400),
            logs_max_age: Duration::from_secs(3 * 86_400),
            logs_max_bytes: -1,
            triggers_max_age: Duration::from_secs(7 * 86_400),
            runs_max_age: Duration::from_secs(7 * 86_400),
            worker_ttl: Duration::from_secs(15),
        }
    }
}

/// How long a concurrency slot outlives its last refresh.
pub const SLOT_TTL: Duration = Duration::from_secs(30);

/// Largest message of the logs stream (a worker writes smaller chunks).
pub const MAX_LOG_MESSAGE: i32 = 64 * 1024;

/// The five streams.
pub fn stream_configs(names: &Names, topo: &Topology) -> Vec<stream::Config> {
    let base = |name: String, subjects: Vec<String>, description: &str| stream::Config {
        name,
        subjects,
        description: Some(description.to_string()),
        storage: topo.storage,
        num_replicas: topo.replicas,
        duplicate_window: topo.duplicate_window,
        allow_direct: true,
        ..Default::default()
    };
    vec![
        stream::Config {
            // Work queue: a message is deleted once a dispatcher acks it, so
            // the stream holds exactly the undispatched backlog.
            retention: RetentionPolicy::WorkQueue,
            ..base(names.inbox_stream(), names.inbox_subjects(), "jetsched: submissions and due fires")
        },
        stream::Config {
            // Work queue with one consumer per (queue, band): their filters
            // never overlap, which WorkQueue retention requires.
            retention: RetentionPolicy::WorkQueue,
            ..base(names.tasks_stream(), names.tasks_subjects(), "jetsched: dispatched work")
        },
        stream::Config {
            // Keeps the events that need attention or explain a run that did
            // not happen; queued, started and succeeded are live only (their
            // history is the run record's), so a successful run stores no event.
            retention: RetentionPolicy::Limits,
            max_age: topo.events_max_age,
            ..base(names.events_stream(), kept_event_subjects(names), "jetsched: run events that need attention")
        },
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: topo.dlq_max_age,
            ..base(names.dlq_stream(), vec![names.dead_filter()], "jetsched: dead letters")
        },
        stream::Config {
            // Best effort and bounded by age (and by size when one is set),
            // the oldest dropped first; each attempt keeps at most the
            // worker's --task-log-limit.
            retention: RetentionPolicy::Limits,
            max_age: topo.logs_max_age,
            max_bytes: topo.logs_max_bytes,
            max_message_size: MAX_LOG_MESSAGE,
            discard: stream::DiscardPolicy::Old,
            ..base(names.logs_stream(), names.logs_subjects(), "jetsched: task logs (handlers' output)")
        },
        stream::Config {
            // Limits, not interest or work queue: several tasks may trigger
            // on one subject (each with its own consumer), and an event must
            // be kept from the moment the server acknowledges it, whether or
            // not a consumer exists yet. Its subjects are the plain subjects
            // task triggers name (kept in sync by the tickers, see
            // `sync_trigger_subjects`); a placeholder while there are none.
            retention: RetentionPolicy::Limits,
            max_age: topo.triggers_max_age,
            ..base(
                names.triggers_stream(),
                vec![names.triggers_idle_subject()],
                "jetsched: events published to subjects that task triggers name",
            )
        },
    ]
}

/// The subjects of the events stream: one per kept status.
pub fn kept_event_subjects(names: &Names) -> Vec<String> {
    names.event_status_subjects(RunStatus::ALL.into_iter().filter(|s| s.is_kept()).map(RunStatus::as_str))
}

/// Revisions of a run record kept (KV's most): its full history, the
/// timeline `jetsched runs get` shows (`nats kv history jetsched-runs <id>`).
pub const RUN_HISTORY: i64 = 64;

/// The buckets every service may open (the SPEC's, and the ones jetsched adds).
pub fn bucket_configs(names: &Names, topo: &Topology) -> Vec<kv::Config> {
    let base = |bucket: String, description: &str, history: i64, max_age: Duration| kv::Config {
        bucket,
        description: description.to_string(),
        history,
        max_age,
        storage: topo.storage,
        num_replicas: topo.replicas,
        ..Default::default()
    };
    vec![
        base(names.tasks_bucket(), "jetsched: task definitions", 10, Duration::ZERO),
        base(names.schedules_bucket(), "jetsched: schedules", 10, Duration::ZERO),
        base(names.runs_bucket(), "jetsched: run records and their history", RUN_HISTORY, topo.runs_max_age),
        // Entries expire unless refreshed: a silent worker drops out.
        base(names.workers_bucket(), "jetsched: live workers", 1, topo.worker_ttl),
        base(names.checkpoints_bucket(), "jetsched: handler checkpoints", 1, topo.runs_max_age),
        base(names.windows_bucket(), "jetsched: time windows", 10, Duration::ZERO),
        // A slot whose holder stops refreshing it (a dead worker) frees itself.
        base(names.slots_bucket(), "jetsched: concurrency slots", 1, SLOT_TTL),
        base(names.rates_bucket(), "jetsched: rate-limit counters", 1, Duration::from_secs(86_400)),
        // No max_age: a schedule's turn must outlive its longest run, or a
        // fire after an expiry would start beside a run still going.
        base(names.overlap_bucket(), "jetsched: overlap state of schedules", 1, Duration::ZERO),
        // Kept until deleted: a backfill's record is its progress report.
        base(names.backfills_bucket(), "jetsched: backfills and their progress", 5, Duration::ZERO),
    ]
}

/// The ticker's two buckets. The ticker creates them itself at start-up,
/// because the lease TTL is a ticker setting.
pub fn ticker_bucket_configs(names: &Names, topo: &Topology, lease_ttl: Duration) -> [kv::Config; 2] {
    let base = |bucket: String, description: &str| kv::Config {
        bucket,
        description: description.to_string(),
        // Only the latest value matters: a watermark or count is replaced,
        // a lease is held by whoever wrote it last.
        history: 1,
        storage: topo.storage,
        num_replicas: topo.replicas,
        ..Default::default()
    };
    [
        // No max_age: a watermark must outlive any outage, or the ticker
        // would forget what it already fired.
        base(names.ticker_bucket(), "jetsched: ticker watermarks and max_runs fire counts"),
        kv::Config {
            // The lease TTL: an entry not refreshed within it disappears, so a
            // dead ticker's leases become free. Every write re-stamps the
            // entry, so refreshing is an update with the last revision.
            max_age: lease_ttl,
            // Expiry leaves a marker that watchers see as a purge, so the
            // surviving tickers notice a dead one's leases at once instead of
            // at their next poll. Needs nats-server 2.11.
            limit_markers: Some(lease_ttl),
            ..base(names.ticker_leases_bucket(), "jetsched: ticker partition leases and live tickers")
        },
    ]
}

/// The ticker's buckets, opened.
#[derive(Clone)]
pub struct TickerBuckets {
    /// `<prefix>-ticker`: watermarks and fire counts.
    pub state: kv::Store,
    /// `<prefix>-ticker-leases`: leases and members.
    pub leases: kv::Store,
    /// The lease TTL in force: the leases bucket's `max_age`, which may
    /// differ from the one asked for when another ticker created the bucket.
    pub lease_ttl: Duration,
}

/// Creates the ticker's buckets if they do not exist and opens them.
pub async fn ensure_ticker(
    js: &Context,
    names: &Names,
    topo: &Topology,
    lease_ttl: Duration,
) -> Result<TickerBuckets, SetupError> {
    let mut stores = Vec::with_capacity(2);
    for config in ticker_bucket_configs(names, topo, lease_ttl) {
        let name = config.bucket.clone();
        let store = match js.get_key_value(&name).await {
            Ok(store) => store,
            Err(_) => js.create_key_value(config).await.map_err(|e| SetupError::new(&name, e))?,
        };
        stores.push(store);
    }
    let leases = stores.pop().ok_or_else(|| SetupError::other("ticker buckets", "missing leases bucket"))?;
    let state = stores.pop().ok_or_else(|| SetupError::other("ticker buckets", "missing state bucket"))?;
    let status = leases.status().await.map_err(|e| SetupError::new(&names.ticker_leases_bucket(), e))?;
    Ok(TickerBuckets { state, leases, lease_ttl: status.info.config.max_age })
}

/// The dispatchers' shared durable consumer on the inbox.
pub fn dispatcher_consumer(names: &Names) -> pull::Config {
    pull::Config {
        durable_name: Some(names.dispatcher_consumer()),
        description: Some("jetsched dispatchers".to_string()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // A dispatcher that dies mid-message has it redelivered after this.
        // Too short and a slow dispatcher sees its message twice (harmless:
        // the run-id create drops the copy, but it is wasted work).
        ack_wait: Duration::from_secs(30),
        // Unlimited: bad input is dead-lettered and acked, never nacked, so
        // only transient failures come back, and those must not be dropped.
        max_deliver: -1,
        // Messages in flight across all dispatchers; bounds their memory.
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The durable consumer all workers of `queue` share for `band`.
pub fn worker_consumer(names: &Names, queue: &str, band: u8, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(names.worker_consumer(queue, band)),
        description: Some(format!("jetsched workers of queue {queue}, band {band}")),
        filter_subject: names.task_subject(queue, band),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // A worker that dies mid-run has the run redelivered (as the next
        // attempt) after this. Live workers send in-progress acks at a third
        // of it, so a long handler is never redelivered while it runs.
        ack_wait,
        // Unlimited: attempts are counted in the run record, not by the
        // server, so a crash-looping handler is still stopped at
        // max_attempts and dead-lettered with its reason.
        max_deliver: -1,
        // Runs in flight plus runs waiting out a retry delay (a nak with
        // delay stays pending). Too low and a burst of retries stalls fresh
        // work on this band.
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// The durable consumer of one event trigger on its source stream.
pub fn trigger_consumer(
    name: String,
    filter: Option<String>,
    start: jiff::Timestamp,
    ack_wait: Duration,
    description: String,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name),
        description: Some(description),
        filter_subject: filter.unwrap_or_default(),
        // Events stored since the trigger was defined (the KV write time of
        // the definition that added it), not the stream's whole history.
        deliver_policy: DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(start.as_nanosecond())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        ack_policy: AckPolicy::Explicit,
        // A ticker that dies holding events (in flight, or gathered into a
        // batch or a debounce burst) has them redelivered after this, to the
        // ticker that takes the trigger over. Holders send in-progress acks
        // at a third of it. Too short and events are submitted twice under
        // load (harmless, same run id, but wasted); too long and a takeover
        // waits for them.
        ack_wait,
        // Unlimited: an event is acked once its submission is stored; a
        // failure to store it is transient and must not drop it.
        max_deliver: -1,
        // Events held at once: in flight, in batches and debounce bursts.
        // Bounds the host's memory; a full debounce table waits for bursts
        // to end.
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// A plain trigger subject jetsched cannot capture, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectConflict {
    /// The subject.
    pub subject: String,
    /// What prevents it (another stream holds overlapping subjects).
    pub reason: String,
}

/// Makes the triggers stream hold exactly the plain subjects in `wanted`
/// (reduced to a minimal cover), except those overlapping a subject of
/// another stream, which are returned as conflicts: the server refuses a
/// subject in two streams, and such events are already stored by the other
/// stream (a trigger names it with `"stream"`). Updates the stream only
/// when its subjects change.
pub async fn sync_trigger_subjects(
    js: &Context,
    names: &Names,
    wanted: &[String],
) -> Result<Vec<SubjectConflict>, SetupError> {
    use futures::TryStreamExt as _;
    let ours = names.triggers_stream();
    let others: Vec<stream::Info> = js
        .streams()
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| SetupError::new("stream list", e))?
        .into_iter()
        .filter(|info| info.config.name != ours)
        .collect();
    let mut conflicts = Vec::new();
    let mut keep = Vec::new();
    for subject in crate::trigger::minimal_cover(wanted) {
        let clash = others.iter().find_map(|info| {
            info.config
                .subjects
                .iter()
                .find(|theirs| crate::trigger::subjects_overlap(&subject, theirs))
                .map(|theirs| (info.config.name.clone(), theirs.clone()))
        });
        match clash {
            Some((stream, theirs)) => conflicts.push(SubjectConflict {
                reason: format!(
                    "subject {subject} overlaps subject {theirs} of stream {stream}, which already stores those \
                     events: trigger on that stream instead ({{\"stream\": \"{stream}\", \"subject\": \"{subject}\"}})"
                ),
                subject,
            }),
            None => keep.push(subject),
        }
    }
    if keep.is_empty() {
        keep.push(names.triggers_idle_subject());
    }
    let mut stream = js.get_stream(&ours).await.map_err(|e| SetupError::new(&ours, e))?;
    let info = stream.info().await.map_err(|e| SetupError::new(&ours, e))?;
    let mut current = info.config.subjects.clone();
    current.sort();
    if current != keep {
        let config = stream::Config { subjects: keep, ..info.config.clone() };
        js.update_stream(config).await.map_err(|e| SetupError::new(&ours, e))?;
    }
    Ok(conflicts)
}

/// Creates every stream and bucket that does not exist yet, and brings the
/// subjects of existing streams and the history of existing buckets to
/// what this version needs (an older `init` kept every event, and one
/// revision per run).
pub async fn ensure(js: &Context, names: &Names, topo: &Topology) -> Result<(), SetupError> {
    ensure_with(js, names, topo, |_, _| {}).await
}

/// How many streams and buckets [`ensure`] sets up.
pub fn setup_steps(names: &Names, topo: &Topology) -> usize {
    stream_configs(names, topo).len() + bucket_configs(names, topo).len()
}

/// [`ensure`], calling `done(name, created)` after each stream or bucket.
pub async fn ensure_with(
    js: &Context,
    names: &Names,
    topo: &Topology,
    mut done: impl FnMut(&str, bool),
) -> Result<(), SetupError> {
    for config in stream_configs(names, topo) {
        let name = config.name.clone();
        // One request for a stream that exists (its info comes with it).
        let (stream, created) = match js.get_stream(&name).await {
            Ok(stream) => (stream, false),
            Err(_) => (js.get_or_create_stream(config.clone()).await.map_err(|e| SetupError::new(&name, e))?, true),
        };
        let current = stream.cached_info().config.clone();
        // Only the events stream's subjects changed between versions (the
        // triggers stream's follow the task definitions: not reset here).
        if name == names.events_stream() && current.subjects != config.subjects {
            let updated = stream::Config { subjects: config.subjects, ..current };
            js.update_stream(updated).await.map_err(|e| SetupError::new(&name, e))?;
        }
        done(&name, created);
    }
    for config in bucket_configs(names, topo) {
        let name = config.bucket.clone();
        let created = js.get_key_value(&name).await.is_err();
        if created {
            js.create_key_value(config).await.map_err(|e| SetupError::new(&name, e))?;
            done(&name, true);
            continue;
        }
        let stream_name = names.bucket_stream(&name);
        let stream = js.get_stream(&stream_name).await.map_err(|e| SetupError::new(&name, e))?;
        let current = stream.cached_info().config.clone();
        if current.max_messages_per_subject < config.history {
            let updated = stream::Config { max_messages_per_subject: config.history, ..current };
            js.update_stream(updated).await.map_err(|e| SetupError::new(&name, e))?;
        }
        done(&name, created);
    }
    Ok(())
}

/// Handles on every bucket and stream a service uses, but the runs bucket:
/// its one owner is the run store (`jetsched_runtime::RunStore`).
#[derive(Clone)]
pub struct Handles {
    /// JetStream context.
    pub js: Context,
    /// Names in use.
    pub names: Names,
    /// `jetsched-tasks`.
    pub tasks: kv::Store,
    /// `jetsched-schedules`.
    pub schedules: kv::Store,
    /// `jetsched-workers`.
    pub workers: kv::Store,
    /// `jetsched-checkpoints`.
    pub checkpoints: kv::Store,
    /// `jetsched-windows`.
    pub windows: kv::Store,
    /// `jetsched-slots`.
    pub slots: kv::Store,
    /// `jetsched-rates`.
    pub rates: kv::Store,
    /// `jetsched-overlap`.
    pub overlap: kv::Store,
    /// `jetsched-backfills`.
    pub backfills: kv::Store,
}

impl Handles {
    /// Opens every bucket (they must exist: see [`ensure`]).
    pub async fn open(js: Context, names: Names) -> Result<Handles, SetupError> {
        let open = |bucket: String| {
            let js = js.clone();
            async move { js.get_key_value(&bucket).await.map_err(|e| SetupError::new(&bucket, e)) }
        };
        Ok(Handles {
            tasks: open(names.tasks_bucket()).await?,
            schedules: open(names.schedules_bucket()).await?,
            workers: open(names.workers_bucket()).await?,
            checkpoints: open(names.checkpoints_bucket()).await?,
            windows: open(names.windows_bucket()).await?,
            slots: open(names.slots_bucket()).await?,
            rates: open(names.rates_bucket()).await?,
            overlap: open(names.overlap_bucket()).await?,
            backfills: open(names.backfills_bucket()).await?,
            js,
            names,
        })
    }

    /// A stream by name.
    pub async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream, SetupError> {
        self.js.get_stream(name).await.map_err(|e| SetupError::new(name, e))
    }
}

/// A stream or bucket could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {what}: {source}")]
pub struct SetupError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl SetupError {
    /// `what` could not be set up or opened because of `source`.
    pub fn from_source(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        SetupError::new(what, source)
    }

    fn new(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        SetupError { what: what.to_string(), source: Box::new(source) }
    }

    fn other(what: &str, reason: &str) -> Self {
        SetupError { what: what.to_string(), source: reason.into() }
    }
}

//! Test harness: a real nats-server per test (random port, temporary store,
//! killed and removed on drop), jetsched's services run in-process through
//! the same `run` functions the binary uses, or as real `jetsched` processes
//! for crash tests, and helpers that wait on events with deadlines instead
//! of sleeping.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use jetsched_contract::{Handles, Names, RunEvent, RunStatus, Topology};
use jetsched_natsbox::{ClusterOptions, LocalCluster, LocalServer, Preference, ServerOptions};
use jetsched_runtime::RunStore;
use serde_json::Value;
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

// The services' settings, for the tests that choose them.
#[allow(unused_imports)]
pub use jetsched_dispatcher::DispatcherConfig;
#[allow(unused_imports)]
pub use jetsched_ticker::TickerConfig;
pub use jetsched_worker::Builtins;
#[allow(unused_imports)]
pub use jetsched_worker::WorkerConfig;

/// Fails the test if `fut` does not finish within `secs`.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Logs, spans (collected in memory) and metrics for this test binary.
fn init_logs() {
    install_span_collector();
}

/// One test's world: a nats-server (or a cluster) with jetsched's streams and buckets.
pub struct Env {
    nats: Nats,
    pub client: Client,
    pub handles: Handles,
    pub names: Names,
    /// The run store (the one reader and writer of run records).
    pub runs: RunStore,
    /// Every event published since the env started, as a subscriber to
    /// `jetsched.event.>` saw them.
    log: EventLog,
    _store: tempfile::TempDir,
}

impl Env {
    /// Starts a fresh server (pinned release, installed on first use).
    pub async fn start() -> Env {
        init_logs();
        let store = tempfile::tempdir().unwrap();
        let store_dir = store.path().join("js");
        let server = tokio::task::spawn_blocking(move || {
            let binary =
                jetsched_natsbox::find_or_install(&workspace_root().join(".jetsched/bin"), Preference::PinnedOnly)
                    .expect("nats-server available");
            LocalServer::start(ServerOptions::new(binary, store_dir)).expect("nats-server starts")
        })
        .await
        .unwrap();
        let (client, handles, runs, log) = connect(&server.url(), &Topology::default()).await;
        Env {
            names: handles.names.clone(),
            nats: Nats::Single(Box::new(server)),
            client,
            handles,
            runs,
            log,
            _store: store,
        }
    }

    /// Starts a fresh 3-node cluster (pinned release) with R3 streams and
    /// buckets; `sync_always` fsyncs every write before its ack, `isolated`
    /// puts each node in a network namespace so that it can be partitioned.
    pub async fn start_cluster(sync_always: bool, isolated: bool) -> Env {
        init_logs();
        let store = tempfile::tempdir().unwrap();
        let root = store.path().join("cluster");
        let cluster = tokio::task::spawn_blocking(move || {
            let binary =
                jetsched_natsbox::find_or_install(&workspace_root().join(".jetsched/bin"), Preference::PinnedOnly)
                    .expect("nats-server available");
            let options = ClusterOptions { sync_always, isolated, ..ClusterOptions::new(binary, root) };
            LocalCluster::start(options).expect("cluster starts")
        })
        .await
        .unwrap();
        let (client, handles, runs, log) =
            connect(&cluster.urls(), &Topology { replicas: 3, ..Topology::default() }).await;
        Env {
            names: handles.names.clone(),
            nats: Nats::Cluster(Box::new(cluster)),
            client,
            handles,
            runs,
            log,
            _store: store,
        }
    }

    /// The server's URL, or the cluster's seed list.
    pub fn url(&self) -> String {
        match &self.nats {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// The single server (panics on a cluster).
    pub fn server(&mut self) -> &mut LocalServer {
        match &mut self.nats {
            Nats::Single(s) => s,
            Nats::Cluster(_) => panic!("this env runs a cluster"),
        }
    }

    /// The cluster (panics on a single server).
    pub fn cluster(&mut self) -> &mut LocalCluster {
        match &mut self.nats {
            Nats::Cluster(c) => c,
            Nats::Single(_) => panic!("this env runs a single server"),
        }
    }

    fn replicas(&self) -> &'static str {
        match self.nats {
            Nats::Single(_) => "1",
            Nats::Cluster(_) => "3",
        }
    }

    /// Runs ticker, dispatcher and worker in this process.
    pub fn services(&self) -> Services {
        self.services_with(ServicesConfig::default())
    }

    /// Runs the chosen services with the given settings (as `jetsched up`
    /// does, on this env's connection).
    pub fn services_with(&self, cfg: ServicesConfig) -> Services {
        let token = CancellationToken::new();
        Services { running: Some(cfg.spawn(|_| self.handles.clone(), &token)), token }
    }

    /// Every event since the env started (live: queued, started and
    /// succeeded are not stored), read from the first.
    pub async fn events(&self) -> Events {
        Events { log: self.log.clone(), read: 0, seen: Vec::new(), taken: Default::default() }
    }

    /// What the events stream holds now (the kept events), oldest first.
    pub async fn stored_events(&self) -> Vec<RunEvent> {
        let stream = self.handles.js.get_stream(self.names.events_stream()).await.unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
            .await
            .unwrap();
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while pending > 0 {
            let msg = within(30, "the stored events", messages.next()).await.unwrap().unwrap();
            pending = msg.info().unwrap().pending;
            out.push(serde_json::from_slice(&msg.payload).expect("event is a RunEvent"));
        }
        out
    }

    /// The run's record (panics if there is none).
    pub async fn record(&self, run_id: &str) -> jetsched_contract::RunRecord {
        self.runs.get(run_id).await.unwrap().unwrap_or_else(|| panic!("no run record for {run_id}")).record
    }

    /// Raw KV put, as `nats kv put <bucket> <key> <value>` does.
    pub async fn kv_put(&self, bucket: &str, key: &str, value: &str) -> u64 {
        let store = self.handles.js.get_key_value(bucket).await.unwrap();
        store.put(key, value.to_string().into()).await.unwrap()
    }

    /// Raw KV delete, as `nats kv del <bucket> <key>` does.
    pub async fn kv_del(&self, bucket: &str, key: &str) {
        let store = self.handles.js.get_key_value(bucket).await.unwrap();
        store.delete(key).await.unwrap();
    }

    /// `nats kv put jetsched-tasks <name> <json>`.
    pub async fn put_task(&self, name: &str, json: Value) {
        self.kv_put(&self.names.tasks_bucket(), name, &json.to_string()).await;
    }

    /// `nats kv put jetsched-schedules <id> <json>`.
    pub async fn put_schedule(&self, id: &str, json: Value) {
        self.kv_put(&self.names.schedules_bucket(), id, &json.to_string()).await;
    }

    /// Raw JetStream publish with headers, as `nats pub -H ... <subject> <body>` does; returns the stream sequence.
    pub async fn publish(&self, subject: String, headers: &[(&str, &str)], body: &str) -> u64 {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.handles.js.publish_with_headers(subject, h, body.to_string().into()).await.unwrap().await.unwrap().sequence
    }

    /// `nats pub jetsched.submit.<task> <body>`.
    pub async fn submit(&self, task: &str, body: &str) -> u64 {
        self.publish(self.names.submit_subject(task), &[], body).await
    }

    /// Messages in the DLQ for `task`, oldest first.
    pub async fn dead_letters(&self, task: &str) -> Vec<async_nats::jetstream::Message> {
        let stream = self.handles.js.get_stream(self.names.dlq_stream()).await.unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig { filter_subject: self.names.dead_subject(task), ..Default::default() })
            .await
            .unwrap();
        let pending = consumer.cached_info().num_pending as usize;
        let mut msgs = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while out.len() < pending {
            out.push(within(5, "dead letters", msgs.next()).await.unwrap().unwrap());
        }
        out
    }

    /// A NATS function on `subject` answering with `reply`; every call is recorded.
    pub async fn function(&self, subject: &str, reply: impl Fn(&Call) -> Reply + Send + 'static) -> Function {
        let mut sub = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let call = Call {
                    headers: msg.headers.clone().unwrap_or_default(),
                    payload: serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
                    at: jiff::Timestamp::now(),
                };
                let answer = reply(&call);
                if let Some(to) = msg.reply {
                    match answer {
                        Reply::Ok(v) => client.publish(to, v.to_string().into()).await.unwrap(),
                        Reply::After(d, v) => {
                            let client = client.clone();
                            // Simulated work: the function answers later.
                            tokio::spawn(async move {
                                tokio::time::sleep_until(tokio::time::Instant::now() + d).await;
                                let _ = client.publish(to, v.to_string().into()).await;
                            });
                        }
                        Reply::Fail { error, retryable } => {
                            let mut h = HeaderMap::new();
                            h.insert(jetsched_contract::headers::ERROR, error.as_str());
                            if !retryable {
                                h.insert(jetsched_contract::headers::RETRYABLE, "false");
                            }
                            client.publish_with_headers(to, h, "".into()).await.unwrap();
                        }
                        Reply::Silent => {}
                    }
                }
                if tx.send(call).is_err() {
                    return;
                }
            }
        });
        Function { calls: rx }
    }
}

enum Nats {
    Single(Box<LocalServer>),
    Cluster(Box<LocalCluster>),
}

/// Connects to `url` (a seed list on a cluster) and creates the streams and
/// buckets; on a fresh cluster JetStream answers only once it has elected a
/// meta leader, so creation is retried until then.
async fn connect(url: &str, topology: &Topology) -> (Client, Handles, RunStore, EventLog) {
    let seeds = jetsched_runtime::connect::seed_list(url).unwrap();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .ping_interval(jetsched_runtime::connect::PING_INTERVAL)
        // Room for every event of a busy test between two reads of the log.
        .subscription_capacity(1 << 20)
        .connect(seeds)
        .await
        .unwrap();
    let js = jetsched_runtime::jetstream(client.clone());
    let names = Names::default();
    // Subscribed before any service runs: the log holds every event.
    let log = EventLog::follow(&client, &names).await;
    within(60, "JetStream to be ready", async {
        // Until the meta leader is elected: retried with the services' backoff.
        let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        while let Err(err) = jetsched_contract::setup::ensure(&js, &names, topology).await {
            tracing::debug!(%err, "JetStream not ready yet");
            backoff.wait().await;
        }
    })
    .await;
    let handles = Handles::open(js.clone(), names.clone()).await.unwrap();
    let runs = RunStore::open(jetsched_runtime::Publisher::new(js, names)).await.unwrap();
    (client, handles, runs, log)
}

/// Every event published on `jetsched.event.>`, in the order one
/// subscriber received them (on one server: the order the server handled
/// them, so an event published after another was received is after it).
#[derive(Clone)]
struct EventLog {
    entries: std::sync::Arc<std::sync::Mutex<Vec<(String, RunEvent)>>>,
    grew: std::sync::Arc<tokio::sync::Notify>,
}

impl EventLog {
    async fn follow(client: &Client, names: &Names) -> EventLog {
        let mut sub = client.subscribe(names.event_filter()).await.unwrap();
        client.flush().await.unwrap();
        let log = EventLog { entries: Default::default(), grew: Default::default() };
        let feed = log.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let event: RunEvent = serde_json::from_slice(&msg.payload).expect("event is a RunEvent");
                feed.entries.lock().unwrap().push((msg.subject.to_string(), event));
                feed.grew.notify_waiters();
            }
        });
        log
    }

    /// Entry `i`, waiting for it.
    async fn get(&self, i: usize) -> (String, RunEvent) {
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if let Some(e) = self.entries.lock().unwrap().get(i) {
                return e.clone();
            }
            grew.await;
        }
    }
}

/// Which services to run, with what settings.
pub type ServicesConfig = jetsched::local::LocalServices;

/// In-process services, stopped on drop.
pub struct Services {
    token: CancellationToken,
    running: Option<jetsched::local::Running>,
}

impl Services {
    /// Stops them and waits for them to drain.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            within(40, "services to stop", running.stop()).await.unwrap();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A builtin handler that reports each run it is called for and returns
/// (succeeding) only when the test releases it: a handler held open.
pub struct Held {
    entered: mpsc::UnboundedReceiver<String>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Held {
    /// Registers it in `builtins` under `name`.
    pub fn register(builtins: &mut Builtins, name: &str) -> Held {
        let (tx, entered) = mpsc::unbounded_channel();
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let gate = release.clone();
        builtins.register(name, move |inv: jetsched_worker::Invocation| {
            let _ = tx.send(inv.run_id.clone());
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                jetsched_worker::Outcome::ok(serde_json::json!({"run": inv.run_id}))
            }
        });
        Held { entered, release }
    }

    /// The run it was called for next.
    pub async fn next(&mut self, secs: u64) -> String {
        within(secs, "the held handler to be called", self.entered.recv()).await.unwrap()
    }

    /// Lets one held call return.
    pub fn release_one(&self) {
        self.release.add_permits(1);
    }

    /// Lets every call return from now on.
    pub fn release_all(&self) {
        self.release.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

/// One call of a test function.
#[derive(Debug, Clone)]
pub struct Call {
    pub headers: HeaderMap,
    pub payload: Value,
    pub at: jiff::Timestamp,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_string())
    }
}

/// What a test function answers.
pub enum Reply {
    Ok(Value),
    /// Answers `Ok` after the given time, like a function doing slow work.
    After(Duration, Value),
    Fail {
        error: String,
        retryable: bool,
    },
    Silent,
}

/// A running test function.
pub struct Function {
    pub calls: mpsc::UnboundedReceiver<Call>,
}

impl Function {
    pub async fn next_call(&mut self, secs: u64) -> Call {
        within(secs, "a function call", self.calls.recv()).await.expect("function stopped")
    }

    /// Calls received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Call> {
        let mut out = Vec::new();
        while let Ok(c) = self.calls.try_recv() {
            out.push(c);
        }
        out
    }
}

/// The events published since the env started, read from the first.
pub struct Events {
    log: EventLog,
    read: usize,
    /// Everything read so far.
    pub seen: Vec<(String, RunEvent)>,
    /// Indices in `seen` already handed out by `wait_for`/`wait_for_n`.
    taken: std::collections::HashSet<usize>,
}

impl Events {
    /// Every event published from now on under the names `handles` use, as
    /// its user sees them (live).
    pub async fn read(handles: &Handles) -> Events {
        let log = EventLog::follow(&handles.js.client(), &handles.names).await;
        Events { log, read: 0, seen: Vec::new(), taken: Default::default() }
    }

    /// The next event (any), with its subject.
    pub async fn next(&mut self) -> (String, RunEvent) {
        let item = self.log.get(self.read).await;
        self.read += 1;
        self.seen.push(item.clone());
        item
    }

    /// The next event matching `pred` not handed out before: first among
    /// those already read, then from the stream.
    async fn take(&mut self, pred: &impl Fn(&RunEvent) -> bool) -> RunEvent {
        if let Some(i) = (0..self.seen.len()).find(|i| !self.taken.contains(i) && pred(&self.seen[*i].1)) {
            self.taken.insert(i);
            return self.seen[i].1.clone();
        }
        loop {
            let (_, e) = self.next().await;
            if pred(&e) {
                self.taken.insert(self.seen.len() - 1);
                return e;
            }
        }
    }

    /// Waits up to `secs` for an event matching `pred`.
    pub async fn wait_for(&mut self, secs: u64, what: &str, pred: impl Fn(&RunEvent) -> bool) -> RunEvent {
        within(secs, what, self.take(&pred)).await
    }

    /// Waits for `n` events matching `pred`, returning them in order.
    pub async fn wait_for_n(
        &mut self,
        n: usize,
        secs: u64,
        what: &str,
        pred: impl Fn(&RunEvent) -> bool,
    ) -> Vec<RunEvent> {
        within(secs, what, async {
            let mut out = Vec::new();
            while out.len() < n {
                out.push(self.take(&pred).await);
            }
            out
        })
        .await
    }

    /// Seen events with `status` for `task`.
    pub fn seen_with(&self, task: &str, status: RunStatus) -> Vec<RunEvent> {
        self.seen.iter().filter(|(_, e)| e.task == task && e.status == status).map(|(_, e)| e.clone()).collect()
    }
}

/// True for `status` events of `task`.
pub fn is(task: &'static str, status: RunStatus) -> impl Fn(&RunEvent) -> bool {
    move |e| e.task == task && e.status == status
}

/// `GET path` against a local HTTP endpoint: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    get_url(&format!("http://{addr}{path}")).await
}

/// `GET url`: (status code, body), failing after 30 s.
pub async fn get_url(url: &str) -> (u16, String) {
    jetsched_runtime::telemetry::install_crypto_provider();
    let response = within(30, &format!("GET {url}"), reqwest::get(url)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_ok(secs, what, || {
        let checked = check();
        async move { checked.await.ok_or_else(String::new) }
    })
    .await
}

/// Polls `check` every 50 ms until it returns `Ok`, failing after `secs`
/// with the last reason it gave: [`eventually`] for conditions whose
/// failure needs explaining (which of several parts did not hold).
pub async fn eventually_ok<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = String::from("never checked");
    let waited = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            tick.tick().await;
            match check().await {
                Ok(v) => return v,
                Err(why) => last = why,
            }
        }
    })
    .await;
    match waited {
        Ok(v) => v,
        Err(_) if last.is_empty() => panic!("timed out after {secs}s waiting for {what}"),
        Err(_) => panic!("timed out after {secs}s waiting for {what}; last seen: {last}"),
    }
}

/// Checks every 50 ms that `holds` stays true for `secs`, failing the moment
/// it does not with the reason it gives: the dual of [`eventually`], for
/// what must not happen during a window (a rate, a quiet spell).
pub async fn throughout(secs: u64, what: &str, mut holds: impl FnMut() -> Result<(), String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        if let Err(why) = holds() {
            panic!("{what}: {why}");
        }
    }
}

/// Spans collected in this test process (see [`install_span_collector`]).
#[derive(Clone, Debug, Default)]
pub struct SpanCollector(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for SpanCollector {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl SpanCollector {
    /// Spans whose `key` attribute equals `value`.
    pub fn with_attr(&self, key: &str, value: &str) -> Vec<opentelemetry_sdk::trace::SpanData> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.attributes.iter().any(|kv| kv.key.as_str() == key && kv.value.as_str() == value))
            .cloned()
            .collect()
    }
}

/// Installs tracing with an in-process span collector and metrics for this
/// test binary (once); returns the collector and the Prometheus reader.
pub fn install_span_collector() -> (SpanCollector, std::sync::Arc<opentelemetry_sdk::metrics::ManualReader>) {
    static INSTALLED: std::sync::OnceLock<(SpanCollector, jetsched_runtime::telemetry::Telemetry)> =
        std::sync::OnceLock::new();
    let (collector, telemetry) = INSTALLED.get_or_init(|| {
        let collector = SpanCollector::default();
        let log = jetsched_runtime::LogArgs {
            log_format: jetsched_runtime::logging::LogFormat::Human,
            log_filter: std::env::var("JETSCHED_TEST_LOG").unwrap_or_else(|_| "error".to_string()),
        };
        let telemetry = jetsched_runtime::telemetry::init_with_exporter(&log, "jetsched-test", collector.clone());
        (collector, telemetry)
    });
    (collector.clone(), telemetry.prometheus())
}

impl Env {
    /// The real `jetsched` binary against this env's server (health port
    /// off, no OpenTelemetry variable set: nothing exported), killed when
    /// dropped.
    pub fn spawn_jetsched(&self, args: &[&str]) -> tokio::process::Child {
        let log = std::env::var("JETSCHED_TEST_LOG").ok();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"));
        cmd.args(args)
            .env("NATS_URL", self.url())
            .env("JETSCHED_REPLICAS", self.replicas())
            .env("JETSCHED_HTTP_ADDR", "off")
            .env("JETSCHED_LOG", log.clone().unwrap_or_else(|| "error".to_string()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if log.is_none() {
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        }
        cmd.spawn().expect("jetsched starts")
    }

    /// The real `jetsched` binary with its log (at `filter`) appended to
    /// `log`, killed when dropped.
    pub fn spawn_jetsched_logged(&self, args: &[&str], filter: &str, log: &std::path::Path) -> tokio::process::Child {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
            .args(args)
            .env("NATS_URL", self.url())
            .env("JETSCHED_REPLICAS", self.replicas())
            .env("JETSCHED_HTTP_ADDR", "off")
            .env("JETSCHED_LOG", filter)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("jetsched starts")
    }

    /// Runs a `jetsched` admin verb to completion: (exit code, stdout, stderr).
    pub async fn jetsched(&self, args: &[&str]) -> (i32, String, String) {
        let out = within(60, "a jetsched command", async {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
                .args(args)
                .env("NATS_URL", self.url())
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .expect("jetsched runs")
        })
        .await;
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// One request an [`HttpStub`] received.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub at: jiff::Timestamp,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP endpoint (axum): answers its n-th request with
/// `responses[n]` (the last one repeats; body `{}`) and records every request.
pub struct HttpStub {
    pub url: String,
    pub requests: mpsc::UnboundedReceiver<StubRequest>,
}

impl HttpStub {
    pub async fn start(responses: Vec<(u16, Vec<(&'static str, &'static str)>)>) -> HttpStub {
        Self::start_on("127.0.0.1", responses).await
    }

    /// The same, listening on `ip` (any loopback address: 127.0.0.2, ...).
    pub async fn start_on(ip: &str, responses: Vec<(u16, Vec<(&'static str, &'static str)>)>) -> HttpStub {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = move |method: axum::http::Method, headers: axum::http::HeaderMap, body: String| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect();
            let _ = tx.send(StubRequest { at: jiff::Timestamp::now(), method: method.to_string(), headers, body });
            let (status, extra) = responses[n.min(responses.len() - 1)].clone();
            let mut response = axum::response::Response::new(axum::body::Body::from("{}"));
            *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
            for (k, v) in extra {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            async move { response }
        };
        let app = axum::Router::new().fallback(answer);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HttpStub { url, requests: rx }
    }

    pub async fn next_request(&mut self, secs: u64) -> StubRequest {
        within(secs, "an HTTP request", self.requests.recv()).await.expect("stub stopped")
    }
}

/// Lease TTL of the tickers tests start: short, so that takeovers are quick.
pub const TEST_LEASE_TTL: &str = "2s";

impl Env {
    /// A `jetsched ticker` process named `id` with [`TEST_LEASE_TTL`] leases
    /// and no staging ahead (fires published at their time), plus `extra`
    /// options; killed (SIGKILL) when dropped.
    pub fn spawn_ticker(&self, id: &str, extra: &[&str]) -> tokio::process::Child {
        let mut args = vec!["ticker", "--ticker-id", id, "--lease-ttl", TEST_LEASE_TTL, "--lookahead", "0s"];
        args.extend_from_slice(extra);
        self.spawn_jetsched(&args)
    }

    /// The value under `key` in `bucket`, as `nats kv get` shows it (`None` when absent or deleted).
    pub async fn kv_get(&self, bucket: &str, key: &str) -> Option<bytes::Bytes> {
        let store = self.handles.js.get_key_value(bucket).await.ok()?;
        store.get(key).await.unwrap()
    }

    /// Waits until the workers bucket lists every one of `ids`.
    pub async fn wait_for_workers(&self, ids: &[&str]) {
        let bucket = self.names.workers_bucket();
        eventually(20, "worker heartbeats", || async {
            let live: Vec<String> = self.kv_entries(&bucket).await.into_iter().map(|(k, _)| k).collect();
            ids.iter().all(|id| live.iter().any(|l| l == id)).then_some(())
        })
        .await;
    }

    /// Every live key of `bucket` with its value, as `nats kv ls` and `get` show them.
    pub async fn kv_entries(&self, bucket: &str) -> Vec<(String, bytes::Bytes)> {
        let Ok(store) = self.handles.js.get_key_value(bucket).await else { return Vec::new() };
        let keys: Vec<String> = store.keys().await.unwrap().filter_map(|k| async move { k.ok() }).collect().await;
        let mut out = Vec::new();
        for key in keys {
            if let Some(value) = store.get(&key).await.unwrap() {
                out.push((key, value));
            }
        }
        out
    }
}

impl Events {
    /// Nominal times of the runs of `schedule` queued so far, in order (duplicates kept).
    pub fn fired(&self, schedule: &str) -> Vec<jiff::Timestamp> {
        let mut out: Vec<jiff::Timestamp> = self
            .seen
            .iter()
            .filter(|(_, e)| e.status == RunStatus::Queued && e.schedule.as_deref() == Some(schedule))
            .filter_map(|(_, e)| e.scheduled_for)
            .collect();
        out.sort();
        out
    }

    /// `missed` reports of `schedule` seen so far.
    pub fn missed(&self, schedule: &str) -> Vec<RunEvent> {
        self.seen
            .iter()
            .filter(|(_, e)| e.status == RunStatus::Missed && e.schedule.as_deref() == Some(schedule))
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// The current value of metric `name` with these `labels` in this test
/// process's metrics (0 when absent), as `/metrics` would show it.
pub fn metric_value(name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, reader) = install_span_collector();
    sample(&jetsched_runtime::metrics::render_prometheus(&reader), name, labels)
}

/// The value of metric `name` with these `labels` in Prometheus text `text` (0 when absent).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The URL a `jetsched console` or `jetsched up` child prints on stderr
/// ("jetsched: console at http://.../"), without the trailing slash, and
/// the lines it printed before it; later lines are read (and dropped) so
/// that the pipe never fills.
pub async fn console_url(child: &mut tokio::process::Child) -> (String, Vec<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let (url, before) = within(60, "the console's URL", async {
        let mut before = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("jetsched: console at ") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                return (url.trim_end_matches('/').to_string(), before);
            }
            before.push(line);
        }
        panic!("it ended without serving a console:\n{}", before.join("\n"));
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (url, before)
}

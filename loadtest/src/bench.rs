//! The benchmark world: a fresh pinned nats-server with file storage (or a
//! local cluster of them, or a given server), jetsched's streams and buckets,
//! and in-process services.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::stream;
use jetsched_contract::{Handles, Names, Topology};
use jetsched_natsbox::{ClusterOptions, LocalCluster, LocalServer, Preference, ServerOptions};

use tokio_util::sync::CancellationToken;

/// How long stream and bucket creation is retried: a fresh cluster elects
/// its JetStream meta leader a few seconds after the nodes accept clients.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// Which server the benchmarks run on.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// A running server (or seed list) to use instead of starting one.
    pub url: Option<String>,
    /// Start a local cluster of this many nodes; streams and buckets get
    /// as many replicas.
    pub cluster: Option<usize>,
    /// Start the server(s) with `jetstream { sync_interval: always }`.
    pub sync_always: bool,
}

/// What this process started (stopped on drop, servers before their stores).
enum Owned {
    Server { _server: Box<LocalServer>, _dir: tempfile::TempDir },
    Cluster { _cluster: LocalCluster, _dir: tempfile::TempDir },
}

pub struct BenchEnv {
    pub url: String,
    pub client: Client,
    pub handles: Handles,
    pub names: Names,
    pub server_version: String,
    /// Replicas of every stream and bucket, the baselines' included.
    pub replicas: usize,
    /// Storage, replication and sync mode, for the output's header.
    pub mode: String,
    _server: Option<Owned>,
}

impl BenchEnv {
    pub async fn start(target: &Target) -> anyhow::Result<BenchEnv> {
        let replicas = target.cluster.unwrap_or(1);
        let sync = if target.sync_always { ", sync_interval always" } else { "" };
        let (url, server, mode) = match (&target.url, target.cluster) {
            (Some(u), _) => (u.clone(), None, format!("file storage, R{replicas}{sync}")),
            (None, None) => {
                let sync_always = target.sync_always;
                let owned = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let dir = tempfile::tempdir()?;
                    let server = LocalServer::start(ServerOptions {
                        sync_always,
                        ..ServerOptions::new(binary()?, dir.path().join("js"))
                    })?;
                    Ok((server, dir))
                })
                .await??;
                (
                    owned.0.url(),
                    Some(Owned::Server { _server: Box::new(owned.0), _dir: owned.1 }),
                    format!("file storage, R1{sync}"),
                )
            }
            (None, Some(size)) => {
                let sync_always = target.sync_always;
                let owned = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let dir = tempfile::tempdir()?;
                    let cluster = LocalCluster::start(ClusterOptions {
                        size,
                        sync_always,
                        ..ClusterOptions::new(binary()?, dir.path().to_path_buf())
                    })?;
                    Ok((cluster, dir))
                })
                .await??;
                let sync = if sync_always { "sync_interval always" } else { "default sync_interval (2 min)" };
                let mode = format!("file storage, R{replicas} on a local {size}-node cluster, {sync}");
                (owned.0.urls(), Some(Owned::Cluster { _cluster: owned.0, _dir: owned.1 }), mode)
            }
        };
        let names = Names::default();
        let topology = Topology { replicas, ..Default::default() };
        let handles = connect(&url, "jetsched-loadtest", &names, &topology).await?;
        let client = handles.js.client();
        let server_version = client.server_info().version;
        Ok(BenchEnv { url, client, handles, names, server_version, replicas, mode, _server: server })
    }

    /// A separate connection (as a separate process would have).
    pub async fn connect(&self, name: &str) -> anyhow::Result<Handles> {
        connect(&self.url, name, &self.names, &Topology { replicas: self.replicas, ..Default::default() }).await
    }

    /// Creates a baseline's file-backed stream afresh (deleting any left
    /// over), with the replicas of jetsched's own streams.
    pub async fn fresh_stream(&self, config: stream::Config) -> anyhow::Result<stream::Stream> {
        let js = &self.handles.js;
        let config = stream::Config { storage: stream::StorageType::File, num_replicas: self.replicas, ..config };
        let _ = js.delete_stream(&config.name).await;
        retry(&format!("create stream {}", config.name), SETUP_LIMIT, || js.create_stream(config.clone())).await
    }

    /// Runs ticker, dispatcher and worker in this process, each on its own
    /// connection as in a real deployment, until stopped.
    pub async fn services(&self, worker: jetsched_worker::WorkerConfig) -> anyhow::Result<Services> {
        self.services_with(Default::default(), worker).await
    }

    /// [`BenchEnv::services`] with ticker settings.
    pub async fn services_with(
        &self,
        ticker: jetsched_ticker::TickerConfig,
        worker: jetsched_worker::WorkerConfig,
    ) -> anyhow::Result<Services> {
        let token = CancellationToken::new();
        let (t, d, w) =
            (self.connect("ticker").await?, self.connect("dispatcher").await?, self.connect("worker").await?);
        let services =
            jetsched::local::LocalServices { ticker: Some(ticker), worker: Some(worker), ..Default::default() };
        let handles_for = |role: &str| match role {
            "ticker" => t.clone(),
            "dispatcher" => d.clone(),
            _ => w.clone(),
        };
        Ok(Services { token: token.clone(), running: Some(services.spawn(handles_for, &token)), processes: Vec::new() })
    }
}

/// The `jetsched` binary built beside this one (release for release figures).
pub fn jetsched_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("jetsched");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: build it first (cargo build --release -p jetsched)",
        binary.display()
    );
    Ok(binary)
}

/// The pinned nats-server (reproducible benchmarks).
fn binary() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.jetsched/bin");
    Ok(jetsched_natsbox::find_or_install(&root, Preference::PinnedOnly)?)
}

async fn connect(url: &str, name: &str, names: &Names, topology: &Topology) -> anyhow::Result<Handles> {
    let seeds = jetsched_runtime::connect::seed_list(url)?;
    let client = async_nats::ConnectOptions::new().name(name).connect(seeds).await?;
    let js = jetsched_runtime::jetstream(client);
    retry("create jetsched's streams and buckets", SETUP_LIMIT, || async {
        jetsched_contract::setup::ensure(&js, names, topology).await?;
        Ok::<_, anyhow::Error>(Handles::open(js.clone(), names.clone()).await?)
    })
    .await
}

/// Calls `f` until it succeeds, with jittered exponential backoff (50 ms
/// doubling to 2 s), for at most `limit`: on a fresh cluster JetStream
/// answers "not available" or times out until its meta leader is elected.
/// Logs the first failure only; on giving up, returns the last error.
pub async fn retry<T, E, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err: anyhow::Error = match f().await {
            Ok(v) => {
                if attempts > 1 {
                    tracing::info!("{what}: succeeded after {attempts} attempts, {:?}", started.elapsed());
                }
                return Ok(v);
            }
            Err(e) => e.into(),
        };
        if started.elapsed() + delay > limit {
            return Err(err.context(format!("{what}: still failing after {attempts} attempts in {limit:?}")));
        }
        if attempts == 1 {
            tracing::info!("{what} failed ({err:#}); retrying for up to {limit:?}");
        }
        // Jitter of up to half the delay, from the clock's nanoseconds.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let jitter = delay.mul_f64(f64::from(nanos % 1000) / 2000.0);
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub struct Services {
    token: CancellationToken,
    running: Option<jetsched::local::Running>,
    processes: Vec<tokio::process::Child>,
}

impl Services {
    pub async fn stop(self) {
        self.token.cancel();
        if let Some(running) = self.running {
            let _ = running.join().await;
        }
        for mut p in self.processes {
            // SIGTERM: the services drain and exit on their own.
            if let Some(pid) = p.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            if tokio::time::timeout(Duration::from_secs(30), p.wait()).await.is_err() {
                let _ = p.kill().await;
            }
        }
    }
}

impl BenchEnv {
    /// Runs ticker, dispatcher and worker as separate `jetsched` processes
    /// (the binary next to this one: `cargo build --release -p jetsched`),
    /// as deployed; `worker_args` go to the worker (`--slots 256`).
    pub async fn external_services(&self, worker_args: &[String]) -> anyhow::Result<Services> {
        let exe = std::env::current_exe()?;
        let jetsched = exe.with_file_name("jetsched");
        anyhow::ensure!(
            jetsched.is_file(),
            "--external runs the services from {}: build it first (cargo build --release -p jetsched)",
            jetsched.display()
        );
        let mut processes = Vec::new();
        for (service, extra) in [("ticker", &[][..]), ("dispatcher", &[][..]), ("worker", worker_args)] {
            let child = tokio::process::Command::new(&jetsched)
                .arg(service)
                .args(extra)
                .env("NATS_URL", &self.url)
                .env("JETSCHED_REPLICAS", self.replicas.to_string())
                .env("JETSCHED_HTTP_ADDR", "127.0.0.1:0")
                .env("JETSCHED_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {} {service}: {e}", jetsched.display()))?;
            processes.push(child);
        }
        Ok(Services { token: CancellationToken::new(), running: None, processes })
    }
}

impl BenchEnv {
    /// Puts every `(key, value)` into `store`, many acks in flight.
    pub async fn put_many(
        &self,
        store: &async_nats::jetstream::kv::Store,
        entries: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<usize> {
        self.publish_many(entries.map(|(key, value)| (format!("{}{key}", store.prefix), value.into_bytes()))).await
    }

    /// Publishes every `(subject, payload)` to JetStream, many acks in flight.
    pub async fn publish_many(&self, messages: impl Iterator<Item = (String, Vec<u8>)>) -> anyhow::Result<usize> {
        use futures::StreamExt;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut n = 0;
        let bar = crate::stats::progress("publishing");
        for (subject, payload) in messages {
            if pending.len() >= 4096 {
                pending.next().await.transpose()?;
            }
            pending.push(self.handles.js.publish(subject, payload.into()).await?.into_future());
            n += 1;
            bar.inc(1);
        }
        while let Some(r) = pending.next().await {
            r?;
        }
        bar.finish_and_clear();
        Ok(n)
    }

    /// Waits until tickers hold every partition's lease.
    pub async fn wait_for_leases(&self, limit: std::time::Duration) -> anyhow::Result<()> {
        use futures::TryStreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(store) = self.handles.js.get_key_value(self.names.ticker_leases_bucket()).await {
                let keys: Vec<String> = store.keys().await?.try_collect().await?;
                if keys.iter().filter(|k| k.starts_with("lease.")).count() == usize::from(PARTITIONS) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the ticker did not take every partition within {limit:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

use jetsched_contract::ticker::PARTITIONS;

//! The benchmark world: a fresh pinned nats-server with file storage (or a
//! given one), jetsched's streams and buckets, and in-process services.

use std::path::PathBuf;

use async_nats::Client;
use jetsched_contract::{Handles, Names, Topology};
use jetsched_natsbox::{LocalServer, Preference, ServerOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct BenchEnv {
    pub url: String,
    pub client: Client,
    pub handles: Handles,
    pub names: Names,
    pub server_version: String,
    _server: Option<(LocalServer, tempfile::TempDir)>,
}

impl BenchEnv {
    pub async fn start(url: Option<&str>) -> anyhow::Result<BenchEnv> {
        let (url, server) = match url {
            Some(u) => (u.to_string(), None),
            None => {
                let (server, dir) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
                    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.jetsched/bin");
                    let binary = jetsched_natsbox::find_or_install(&root, Preference::PinnedOnly)?;
                    let dir = tempfile::tempdir()?;
                    let server = LocalServer::start(ServerOptions::new(binary, dir.path().join("js")))?;
                    Ok((server, dir))
                })
                .await??;
                (server.url(), Some((server, dir)))
            }
        };
        let names = Names::default();
        let handles = connect(&url, "jetsched-loadtest", &names).await?;
        let client = handles.js.client();
        let server_version = client.server_info().version;
        Ok(BenchEnv { url, client, handles, names, server_version, _server: server })
    }

    /// A separate connection (as a separate process would have).
    pub async fn connect(&self, name: &str) -> anyhow::Result<Handles> {
        connect(&self.url, name, &self.names).await
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
        let tasks = vec![
            tokio::spawn(jetsched_ticker::run(ticker, t, Default::default(), token.clone())),
            tokio::spawn(jetsched_dispatcher::run(Default::default(), d, Default::default(), token.clone())),
            tokio::spawn(jetsched_worker::run(worker, w, Default::default(), Default::default(), token.clone())),
        ];
        Ok(Services { token, tasks })
    }
}

async fn connect(url: &str, name: &str, names: &Names) -> anyhow::Result<Handles> {
    let client = async_nats::ConnectOptions::new().name(name).connect(url).await?;
    let js = jetsched_runtime::jetstream(client);
    jetsched_contract::setup::ensure(&js, names, &Topology::default()).await?;
    Ok(Handles::open(js, names.clone()).await?)
}

pub struct Services {
    token: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Services {
    pub async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl BenchEnv {
    /// Puts every `(key, value)` into `store`, many acks in flight.
    pub async fn put_many(
        &self,
        store: &async_nats::jetstream::kv::Store,
        entries: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<usize> {
        use futures::StreamExt;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut n = 0;
        for (key, value) in entries {
            if pending.len() >= 4096 {
                pending.next().await.transpose()?;
            }
            let subject = format!("{}{key}", store.prefix);
            pending.push(self.handles.js.publish(subject, value.into()).await?.into_future());
            n += 1;
        }
        while let Some(r) = pending.next().await {
            r?;
        }
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

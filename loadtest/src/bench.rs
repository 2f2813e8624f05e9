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
        let client = async_nats::ConnectOptions::new().name("jetsched-loadtest").connect(&url).await?;
        let server_version = client.server_info().version;
        let js = jetsched_runtime::jetstream(client.clone());
        let names = Names::default();
        jetsched_contract::setup::ensure(&js, &names, &Topology::default()).await?;
        let handles = Handles::open(js, names.clone()).await?;
        Ok(BenchEnv { url, client, handles, names, server_version, _server: server })
    }

    /// Runs ticker, dispatcher and worker in this process until the returned guard drops.
    pub fn services(&self, worker: jetsched_worker::WorkerConfig) -> Services {
        self.services_with(Default::default(), worker)
    }

    /// [`BenchEnv::services`] with ticker settings.
    pub fn services_with(
        &self,
        ticker: jetsched_ticker::TickerConfig,
        worker: jetsched_worker::WorkerConfig,
    ) -> Services {
        let token = CancellationToken::new();
        let h = &self.handles;
        let tasks = vec![
            tokio::spawn(jetsched_ticker::run(ticker, h.clone(), Default::default(), token.clone())),
            tokio::spawn(jetsched_dispatcher::run(Default::default(), h.clone(), Default::default(), token.clone())),
            tokio::spawn(jetsched_worker::run(
                worker,
                h.clone(),
                Default::default(),
                Default::default(),
                token.clone(),
            )),
        ];
        Services { token, tasks }
    }
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

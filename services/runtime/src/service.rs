//! Start-up shared by every service process (the `jetsched` binary and
//! custom worker binaries): connect, make sure streams and buckets exist,
//! serve `/healthz`, `/readyz` and `/metrics`, and hand over to the service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use jetsched_contract::permissions::{Permissions, Role, Scope, create_stream_subject};
use jetsched_contract::{Handles, Topology};
use opentelemetry_sdk::metrics::ManualReader;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::{Health, NatsArgs};

/// Storage settings used when jetsched creates its streams and buckets.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Replicas for streams and buckets created by jetsched (3 on a cluster).
    #[arg(long, env = "JETSCHED_REPLICAS", default_value_t = 1, global = true)]
    pub replicas: usize,
}

impl TopologyArgs {
    /// The topology these options describe.
    pub fn topology(&self) -> Topology {
        Topology { replicas: self.replicas.max(1), ..Topology::default() }
    }
}

/// Where health and metrics are served.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Address for /healthz, /readyz and /metrics; `off` disables them.
    #[arg(long = "http-addr", env = "JETSCHED_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,
}

/// Connects as an admin (CLI verbs), creates any missing stream or bucket,
/// and opens them all. With `retry` it keeps trying until NATS is there;
/// without, it fails at once when no server answers, and gives JetStream
/// [`ADMIN_PATIENCE`] to answer (a leader election after a node failure
/// takes a few seconds).
pub async fn open(nats: &NatsArgs, topology: &Topology, name: &str, retry: bool) -> anyhow::Result<Handles> {
    open_as(nats, topology, Role::Admin, &Scope::default(), name, retry).await
}

/// Connects as `role` and opens every stream and bucket, creating missing
/// ones only when this user may (the admin role; the services run without
/// it once `jetsched init` has run). Once connected it asks the server what
/// the user may do: a service whose user lacks a permission its role needs
/// (within `scope`) fails at once, naming it.
pub async fn open_as(
    nats: &NatsArgs,
    topology: &Topology,
    role: Role,
    scope: &Scope,
    name: &str,
    retry: bool,
) -> anyhow::Result<Handles> {
    let names = nats.names()?;
    let needed = Permissions::of(role, &names, scope).context("cannot work out the permissions this role needs")?;
    let client = crate::connect_as(nats, role, name, retry).await?;
    let js = crate::jetstream(client.clone());
    let started = tokio::time::Instant::now();
    let give_up = started + ADMIN_PATIENCE;
    let mut backoff = crate::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut failures = 0u32;
    let mut warned = false;
    let mut access: Option<Access> = None;
    loop {
        // Asked once connected: before, the request could only time out.
        if access.is_none() && client.connection_state() == State::Connected {
            let asked = crate::access::ask(&client).await;
            match &asked {
                Access::Unknown(why) => {
                    tracing::warn!(%role, %why, "cannot read this user's NATS permissions; not checking them")
                }
                Access::Known(_) if matches!(role, Role::Ticker | Role::Dispatcher | Role::Worker) => {
                    crate::access::check(&asked, role, &needed)?;
                }
                Access::Known(_) => {}
            }
            access = Some(asked);
        }
        let opened = match &access {
            None => Err(anyhow::anyhow!("not connected to NATS yet")),
            Some(access) if access.may_publish(&create_stream_subject(&names.inbox_stream())) => {
                match jetsched_contract::setup::ensure(&js, &names, topology).await {
                    Ok(()) => Handles::open(js.clone(), names.clone()).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                }
            }
            Some(_) => Handles::open(js.clone(), names.clone())
                .await
                .context("this user may not create streams and buckets: has `jetsched init` run (as the admin role)?"),
        };
        match opened {
            Ok(handles) => {
                if warned {
                    tracing::info!(failures, "JetStream ready");
                }
                return Ok(handles);
            }
            Err(err) if retry || tokio::time::Instant::now() < give_up => {
                // The connection being made (the first few seconds) is not
                // worth a warning; anything else, or a longer wait, is.
                let connecting = access.is_none() && started.elapsed() < CONNECT_GRACE;
                if !warned && !connecting {
                    tracing::warn!(err = format!("{err:#}"), "JetStream not ready; retrying with backoff");
                    warned = true;
                }
                failures += 1;
                backoff.wait().await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How long a connection may take to be made before the wait for it is
/// logged as a warning.
const CONNECT_GRACE: Duration = Duration::from_secs(5);

/// How long an admin verb waits for JetStream to answer.
pub const ADMIN_PATIENCE: Duration = Duration::from_secs(20);

/// Starts the health/metrics endpoint unless disabled. A port that cannot be
/// bound stops the start with a message naming the flag: a second replica on
/// the same host (same default port) must be told where to serve, and a
/// service whose probes silently answer from another process is worse.
pub async fn serve_http(
    http: &HttpArgs,
    health: &Health,
    metrics: Option<Arc<ManualReader>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if http.http_addr.eq_ignore_ascii_case("off") {
        return Ok(());
    }
    let addr: SocketAddr =
        http.http_addr.parse().with_context(|| format!("--http-addr {:?} is not host:port", http.http_addr))?;
    let bound = crate::health::serve(addr, health.clone(), metrics, shutdown.clone()).await.with_context(|| {
        format!(
            "cannot serve /healthz, /readyz and /metrics on {addr} (another replica on this host?): \
             set --http-addr / JETSCHED_HTTP_ADDR to a free address, e.g. 0.0.0.0:0 for any port, or `off`"
        )
    })?;
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    Ok(())
}

/// A started service process: its handles, health and shutdown signal.
pub struct Started {
    /// Buckets and streams.
    pub handles: Handles,
    /// What `/readyz` reports.
    pub health: Health,
    /// Cancelled on SIGTERM/Ctrl-C.
    pub shutdown: CancellationToken,
}

/// Everything a service playing `role` (limited to `scope`) does before
/// its own loop.
pub async fn start(
    nats: &NatsArgs,
    topology: &Topology,
    role: Role,
    scope: &Scope,
    http: &HttpArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<Started> {
    let shutdown = crate::shutdown_on_signals();
    let health = Health::default();
    serve_http(http, &health, metrics, &shutdown).await?;
    let handles = open_as(nats, topology, role, scope, &format!("jetsched-{role}"), true).await?;
    health.watch_client(handles.js.client());
    Ok(Started { handles, health, shutdown })
}

/// Flushes the connection after the service returned.
pub async fn finish(handles: Handles, result: anyhow::Result<()>) -> anyhow::Result<()> {
    close(&handles.js.client()).await;
    result
}

/// Closes a connection without losing what was published on it: the live
/// events (core messages, no ack) of the last runs are flushed to the
/// server before the connection drains, or they would die with the process.
pub async fn close(client: &async_nats::Client) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await;
    let _ = client.drain().await;
}

//! `jetsched ticker|dispatcher|worker`: one service per process (one
//! container each). Each connects (retrying until NATS is up), makes sure the
//! streams and buckets exist, serves `/healthz`, `/readyz` and `/metrics`,
//! runs until SIGTERM/Ctrl-C, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use jetsched_contract::{Handles, Topology};
use jetsched_dispatcher::DispatcherConfig;
use jetsched_runtime::{Health, NatsArgs};
use jetsched_ticker::TickerConfig;
use jetsched_worker::WorkerConfig;
use jetsched_worker::handlers::Builtins;
use opentelemetry_sdk::metrics::ManualReader;
use tokio_util::sync::CancellationToken;

/// Where health and metrics are served.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Address for /healthz, /readyz and /metrics; `off` disables them.
    #[arg(long = "http-addr", env = "JETSCHED_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,
}

/// `jetsched ticker` options.
#[derive(Debug, clap::Args)]
pub struct TickerArgs {
    #[command(flatten)]
    config: TickerConfig,
    #[command(flatten)]
    http: HttpArgs,
}

/// `jetsched dispatcher` options.
#[derive(Debug, clap::Args)]
pub struct DispatcherArgs {
    #[command(flatten)]
    config: DispatcherConfig,
    #[command(flatten)]
    http: HttpArgs,
}

/// `jetsched worker` options.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: WorkerConfig,
    #[command(flatten)]
    http: HttpArgs,
}

/// Starts the health/metrics endpoint unless disabled.
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
    match jetsched_runtime::health::serve(addr, health.clone(), metrics, shutdown.clone()).await {
        Ok(bound) => tracing::info!(%bound, "serving /healthz, /readyz and /metrics"),
        // Health endpoints must not keep the service from running.
        Err(err) => tracing::error!(%addr, %err, "cannot serve /healthz, /readyz and /metrics"),
    }
    Ok(())
}

struct Started {
    handles: Handles,
    health: Health,
    shutdown: CancellationToken,
}

async fn start(
    nats: &NatsArgs,
    topology: &Topology,
    name: &str,
    http: &HttpArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<Started> {
    let shutdown = jetsched_runtime::shutdown_on_signals();
    let health = Health::default();
    serve_http(http, &health, metrics, &shutdown).await?;
    let handles = crate::open(nats, topology, name, true).await?;
    health.watch_client(handles.js.client());
    Ok(Started { handles, health, shutdown })
}

async fn finish(handles: Handles, result: anyhow::Result<()>) -> anyhow::Result<()> {
    // Flush whatever is still buffered before exiting.
    let _ = handles.js.client().drain().await;
    result
}

/// Runs the ticker.
pub async fn ticker(
    nats: &NatsArgs,
    topology: &Topology,
    args: TickerArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<()> {
    let s = start(nats, topology, "jetsched-ticker", &args.http, metrics).await?;
    let ready = s.health.component("ticker");
    let result = jetsched_ticker::run(args.config, s.handles.clone(), ready, s.shutdown).await;
    finish(s.handles, result).await
}

/// Runs a dispatcher.
pub async fn dispatcher(
    nats: &NatsArgs,
    topology: &Topology,
    args: DispatcherArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<()> {
    let s = start(nats, topology, "jetsched-dispatcher", &args.http, metrics).await?;
    let ready = s.health.component("dispatcher");
    let result = jetsched_dispatcher::run(args.config, s.handles.clone(), ready, s.shutdown).await;
    finish(s.handles, result).await
}

/// Runs a worker (with no Rust handlers; see the worker library for those).
pub async fn worker(
    nats: &NatsArgs,
    topology: &Topology,
    args: WorkerArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<()> {
    let s = start(nats, topology, "jetsched-worker", &args.http, metrics).await?;
    let ready = s.health.component("worker");
    let result = jetsched_worker::run(args.config, s.handles.clone(), Builtins::default(), ready, s.shutdown).await;
    finish(s.handles, result).await
}

//! `jetsched ticker|dispatcher|worker`: one service per process (one
//! container each). Each connects (retrying until NATS is up), makes sure the
//! streams and buckets exist, serves `/healthz`, `/readyz` and `/metrics`,
//! runs until SIGTERM/Ctrl-C, then drains.

use std::sync::Arc;

use jetsched_contract::{Role, Scope, Topology};
use jetsched_dispatcher::DispatcherConfig;
use jetsched_runtime::NatsArgs;
use jetsched_runtime::service::{HttpArgs, finish, start};
use jetsched_ticker::TickerConfig;
use jetsched_worker::Builtins;
use jetsched_worker::WorkerConfig;
use opentelemetry_sdk::metrics::ManualReader;

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

/// Runs the ticker.
pub async fn ticker(
    nats: &NatsArgs,
    topology: &Topology,
    args: TickerArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<()> {
    let s = start(nats, topology, Role::Ticker, &Scope::default(), &args.http, metrics).await?;
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
    let s = start(nats, topology, Role::Dispatcher, &Scope::default(), &args.http, metrics).await?;
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
    let mut config = args.config;
    config.fix_id();
    let s = start(nats, topology, Role::Worker, &config.scope(), &args.http, metrics).await?;
    let ready = s.health.component("worker");
    let result = jetsched_worker::run(config, s.handles.clone(), Builtins::default(), ready, s.shutdown).await;
    finish(s.handles, result).await
}

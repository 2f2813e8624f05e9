//! `jetsched ticker|dispatcher|worker`: one service per process (one
//! container each). Each connects (retrying until NATS is up), makes sure the
//! streams and buckets exist, runs until SIGTERM/Ctrl-C, then drains.

use jetsched_contract::{Handles, Topology};
use jetsched_dispatcher::DispatcherConfig;
use jetsched_runtime::NatsArgs;
use jetsched_ticker::TickerConfig;
use jetsched_worker::WorkerConfig;
use jetsched_worker::handlers::Builtins;

/// `jetsched ticker` options.
#[derive(Debug, clap::Args)]
pub struct TickerArgs {
    #[command(flatten)]
    config: TickerConfig,
}

/// `jetsched dispatcher` options.
#[derive(Debug, clap::Args)]
pub struct DispatcherArgs {
    #[command(flatten)]
    config: DispatcherConfig,
}

/// `jetsched worker` options.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: WorkerConfig,
}

async fn start(nats: &NatsArgs, topology: &Topology, name: &str) -> anyhow::Result<Handles> {
    crate::open(nats, topology, name, true).await
}

async fn finish(handles: Handles, result: anyhow::Result<()>) -> anyhow::Result<()> {
    // Flush whatever is still buffered before exiting.
    let _ = handles.js.client().drain().await;
    result
}

/// Runs the ticker.
pub async fn ticker(nats: &NatsArgs, topology: &Topology, args: TickerArgs) -> anyhow::Result<()> {
    let handles = start(nats, topology, "jetsched-ticker").await?;
    let shutdown = jetsched_runtime::shutdown_on_signals();
    let result = jetsched_ticker::run(args.config, handles.clone(), shutdown).await;
    finish(handles, result).await
}

/// Runs a dispatcher.
pub async fn dispatcher(nats: &NatsArgs, topology: &Topology, args: DispatcherArgs) -> anyhow::Result<()> {
    let handles = start(nats, topology, "jetsched-dispatcher").await?;
    let shutdown = jetsched_runtime::shutdown_on_signals();
    let result = jetsched_dispatcher::run(args.config, handles.clone(), shutdown).await;
    finish(handles, result).await
}

/// Runs a worker (with no Rust handlers; see the worker library for those).
pub async fn worker(nats: &NatsArgs, topology: &Topology, args: WorkerArgs) -> anyhow::Result<()> {
    let handles = start(nats, topology, "jetsched-worker").await?;
    let shutdown = jetsched_runtime::shutdown_on_signals();
    let result = jetsched_worker::run(args.config, handles.clone(), Builtins::default(), shutdown).await;
    finish(handles, result).await
}

//! A worker binary of your own in a few lines: register Rust handlers (plain
//! async functions) and call [`main`]. It takes the same flags and environment
//! variables as `jetsched worker` (NATS credentials and TLS, queues, slots,
//! labels, allow-listed commands, health port).
//!
//! ```no_run
//! use jetsched_worker::{Builtins, Invocation, Outcome};
//!
//! async fn greet(inv: Invocation) -> Outcome {
//!     let name = inv.payload["name"].as_str().unwrap_or("stranger");
//!     Outcome::ok(serde_json::json!({ "greeting": format!("hello, {name}") }))
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut handlers = Builtins::default();
//!     handlers.register("greet", greet);
//!     jetsched_worker::app::main(handlers)
//! }
//! ```

use std::process::ExitCode;

use clap::Parser;
use jetsched_contract::Role;
use jetsched_runtime::service::{HttpArgs, TopologyArgs, finish, start};
use jetsched_runtime::{LogArgs, NatsArgs};

use crate::{Builtins, WorkerConfig};

/// A jetsched worker with Rust handlers.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    topology: TopologyArgs,
    #[command(flatten)]
    worker: WorkerConfig,
    #[command(flatten)]
    http: HttpArgs,
}

/// Parses the command line and runs a worker with `builtins` until SIGTERM.
pub fn main(builtins: Builtins) -> ExitCode {
    let args = Args::parse();
    let telemetry = jetsched_runtime::telemetry::init(&args.log, "jetsched-worker");
    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(args, builtins, telemetry.prometheus())),
        Err(err) => Err(err.into()),
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    builtins: Builtins,
    metrics: std::sync::Arc<opentelemetry_sdk::metrics::ManualReader>,
) -> anyhow::Result<()> {
    let topology = args.topology.topology();
    let mut config = args.worker;
    config.fix_id();
    let s = start(&args.nats, &topology, Role::Worker, &config.scope(), &args.http, Some(metrics)).await?;
    let ready = s.health.component("worker");
    let result = crate::run(config, s.handles.clone(), builtins, ready, s.shutdown).await;
    finish(s.handles, result).await
}

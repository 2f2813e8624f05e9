//! `jetsched-loadtest`: benchmarks that print figures together with the raw
//! JetStream baseline measured in the same run, on the same nats-server, and
//! their ratio (absolute numbers drift on shared machines; ratios hold).
//! Performance goals live here, never in timed tests.

#![allow(clippy::print_stdout)]

mod baseline;
mod bench;
mod e2e;
mod stats;

use clap::{Parser, Subcommand};

/// jetsched benchmarks.
#[derive(Debug, Parser)]
#[command(name = "jetsched-loadtest")]
struct Cli {
    /// Use this NATS server instead of starting a fresh pinned one.
    #[arg(long, env = "LOADTEST_NATS_URL", global = true)]
    nats_url: Option<String>,
    /// Log filter.
    #[arg(long = "log", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit -> succeeded throughput with a no-op NATS function, against raw
    /// JetStream async publish (with Nats-Msg-Id).
    E2e(e2e::Args),
    /// Only the raw JetStream async publish baseline.
    Baseline(baseline::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    jetsched_runtime::init_logging(&jetsched_runtime::LogArgs {
        log_format: jetsched_runtime::logging::LogFormat::Human,
        log_filter: cli.log.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let env = bench::BenchEnv::start(cli.nats_url.as_deref()).await?;
        match cli.command {
            Command::E2e(args) => e2e::run(&env, args).await,
            Command::Baseline(args) => {
                let rate = baseline::publish_rate(&env, &args).await?;
                println!(
                    "raw JetStream async publish (Nats-Msg-Id, {} B, {} in flight): {rate:.0} msg/s",
                    args.size, args.in_flight
                );
                Ok(())
            }
        }
    })
}

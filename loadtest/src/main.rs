//! `jetsched-loadtest`: benchmarks that print figures together with the raw
//! JetStream baseline measured in the same run, on the same nats-server, and
//! their ratio (absolute numbers drift on shared machines; ratios hold).
//! Performance goals live here, never in timed tests.

#![allow(clippy::print_stdout)]

mod baseline;
mod bench;
mod ceiling;
mod console;
mod dispatch;
mod e2e;
mod herd;
mod million;
mod noop;
mod otlp_sink;
mod peers;
mod runlist;
mod stats;
mod steady;
mod triggers;

use clap::{Parser, Subcommand};

/// jetsched benchmarks.
#[derive(Debug, Parser)]
#[command(name = "jetsched-loadtest")]
struct Cli {
    /// Use this NATS server instead of starting a fresh pinned one.
    #[arg(long, env = "LOADTEST_NATS_URL", global = true)]
    nats_url: Option<String>,
    /// Start a local cluster of this many nodes instead of one server; every
    /// stream and bucket (the baselines' too) gets as many replicas (3: R3).
    #[arg(long, global = true, value_name = "NODES", value_parser = clap::value_parser!(u8).range(2..=5), conflicts_with = "nats_url")]
    cluster: Option<u8>,
    /// Start the server(s) with `jetstream { sync_interval: always }` (fsync
    /// before every acknowledgement).
    #[arg(long, global = true, conflicts_with = "nats_url")]
    sync_always: bool,
    /// Log filter.
    #[arg(long = "log", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit -> succeeded throughput with a no-op NATS function (tracing off
    /// and on), against raw JetStream async publish (with Nats-Msg-Id); then
    /// latency percentiles at moderate load.
    E2e(e2e::Args),
    /// Dispatcher throughput (submit -> queued) against raw JetStream publish,
    /// then the start order of a backlog of mixed importance.
    Dispatch(dispatch::Args),
    /// Every NATS operation a run performs, measured alone against the raw
    /// baseline (and their batched forms: atomic and fast-ingest batch
    /// publish, batch direct get), and the most runs/s that jetsched's run,
    /// and any design keeping the contract, batched or not, could reach on
    /// this machine.
    Ceiling(ceiling::Args),
    /// Only the raw JetStream async publish baseline.
    Baseline(baseline::Args),
    /// N schedules due in the same second, against NATS's own cron message
    /// schedules in the same run: p99 nominal -> handler start vs nominal ->
    /// fired message stored.
    Herd(herd::Args),
    /// Steady fires spread over each second: p99 nominal -> handler start.
    Steady(steady::Args),
    /// A million schedules: ticker load time and resident memory.
    Million(million::Args),
    /// `jetsched runs list` over a million stored runs: time and peak memory
    /// per kind of query.
    RunsList(runlist::Args),
    /// The web console under 1,000 runs/s of events with 50 live streams
    /// open: delivery to every stream, CPU and memory against a budget.
    Console(console::Args),
    /// jetsched, the raw baseline, and BullMQ and Celery on Redis in one
    /// sitting, as one table (peers installed by `loadtest/peers/setup`).
    Peers(peers::Args),
    /// Event triggers: events on a stream -> handler start through a task's
    /// trigger, throughput and latency, against a plain pull consumer
    /// reading the same events in the same run.
    Triggers(triggers::Args),
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = jetsched_runtime::LogArgs {
        log_format: jetsched_runtime::logging::LogFormat::Human,
        log_filter: cli.log.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // Traces go to an in-process OTLP collector; e2e turns them on and off.
        let (endpoint, sink) = otlp_sink::start().await?;
        let telemetry = jetsched_runtime::telemetry::init_exporting_to(&log, "jetsched-loadtest", &endpoint)?;
        jetsched_runtime::telemetry::set_tracing_enabled(false);
        let target =
            bench::Target { url: cli.nats_url, cluster: cli.cluster.map(usize::from), sync_always: cli.sync_always };
        let env = bench::BenchEnv::start(&target).await?;
        let result = match cli.command {
            Command::E2e(args) => e2e::run(&env, args, &telemetry, &sink).await,
            Command::Herd(args) => herd::run(&env, args).await,
            Command::Steady(args) => steady::run(&env, args).await,
            Command::Million(args) => million::run(&env, args).await,
            Command::RunsList(args) => runlist::run(&env, args).await,
            Command::Dispatch(args) => dispatch::run(&env, args).await,
            Command::Peers(args) => peers::run(&env, args).await,
            Command::Ceiling(args) => ceiling::run(&env, args).await,
            Command::Console(args) => console::run(&env, args).await,
            Command::Triggers(args) => triggers::run(&env, args).await,
            Command::Baseline(args) => baseline::publish_rate(&env, &args).await.map(|rate| {
                println!(
                    "raw JetStream async publish (Nats-Msg-Id, {} B, {} in flight): {rate:.0} msg/s",
                    args.size, args.in_flight
                );
            }),
        };
        telemetry.shutdown();
        result
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every command's options are well formed (what clap checks only in
    /// debug builds, when the command is first parsed).
    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

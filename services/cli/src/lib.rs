//! The `jetsched` command: `up` (everything on one machine), one command per
//! service (`ticker`, `dispatcher`, `worker`, one container each), and admin
//! verbs that are conveniences over the same NATS operations a user can do
//! with the `nats` CLI.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin;
mod backfill;
pub mod console;
mod dlq;
mod examples;
mod inspect;
pub mod local;
mod logs;
mod permissions;
mod runlist;
mod schedule;
mod services;
mod up;
mod wallclock;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jetsched_runtime::service::TopologyArgs;
use jetsched_runtime::{LogArgs, NatsArgs};

/// A distributed task scheduler on NATS JetStream.
///
/// Quick start: `jetsched up --examples` starts a local nats-server and every
/// service, loads example tasks and schedules, and shows runs as they happen.
#[derive(Debug, Parser)]
#[command(name = "jetsched", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    topology: TopologyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run ticker, dispatcher and worker in one process, on a local
    /// nats-server started here unless --nats-url/NATS_URL is given.
    Up(Box<up::UpArgs>),
    /// Run the ticker service (fires schedules).
    Ticker(services::TickerArgs),
    /// Run the dispatcher service (turns submissions and fires into work).
    Dispatcher(services::DispatcherArgs),
    /// Run the worker service (executes tasks).
    Worker(Box<services::WorkerArgs>),
    /// Create jetsched's streams and buckets if they do not exist, and
    /// capture the plain subjects task triggers name.
    Init,
    /// Manage task definitions (bucket jetsched-tasks).
    #[command(subcommand)]
    Task(admin::TaskCmd),
    /// Manage schedules (bucket jetsched-schedules).
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Submit a run of a task (publishes to jetsched.submit.<task>).
    Submit(admin::SubmitArgs),
    /// Print run events as they happen.
    Events(admin::EventsArgs),
    /// Inspect runs (bucket jetsched-runs and their events).
    #[command(subcommand)]
    Runs(inspect::RunsCmd),
    /// Summarise schedules, backlog per queue, live workers and recent failures.
    Status(inspect::StatusArgs),
    /// Inspect and replay dead letters (stream JETSCHED_DLQ).
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Serve the web console (read-only unless --allow-actions).
    Console(console::ConsoleArgs),
    /// Print the NATS publish/subscribe allow-lists a role needs
    /// (ticker, dispatcher, worker, admin, submitter, function, console).
    Permissions(permissions::PermissionsArgs),
}

/// Parses the command line, runs it, and maps errors to exit codes
/// (1: failure, 2: bad input).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Up(_) => Some("jetsched"),
        Command::Console(_) => Some("jetsched-console"),
        Command::Ticker(_) => Some("jetsched-ticker"),
        Command::Dispatcher(_) => Some("jetsched-dispatcher"),
        Command::Worker(_) => Some("jetsched-worker"),
        _ => None,
    };
    let telemetry = match service {
        Some(name) => Some(jetsched_runtime::telemetry::init(&cli.log, name)),
        None => {
            // Admin verbs print results, not connection chatter.
            let mut log = cli.log.clone();
            if log.log_filter == "info" {
                log.log_filter = "warn".to_string();
            }
            jetsched_runtime::init_logging(&log);
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, telemetry.as_ref()));
    if let Some(t) = telemetry {
        t.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<admin::BadInput>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

async fn run(cli: Cli, telemetry: Option<&jetsched_runtime::telemetry::Telemetry>) -> anyhow::Result<()> {
    let topology = cli.topology.topology();
    let metrics = telemetry.map(|t| t.prometheus());
    match cli.command {
        Command::Up(args) => up::run(&cli.nats, &topology, *args, metrics).await,
        Command::Ticker(args) => services::ticker(&cli.nats, &topology, args, metrics).await,
        Command::Dispatcher(args) => services::dispatcher(&cli.nats, &topology, args, metrics).await,
        Command::Worker(args) => services::worker(&cli.nats, &topology, *args, metrics).await,
        Command::Init => admin::init(&cli.nats, &topology).await,
        Command::Task(cmd) => admin::task(&open(&cli.nats, &topology, "jetsched-cli", false).await?, cmd).await,
        Command::Schedule(cmd) => schedule::run(&cli.nats, &topology, cmd).await,
        Command::Submit(args) => admin::submit(&cli.nats, args).await,
        Command::Events(args) => admin::events(&open(&cli.nats, &topology, "jetsched-cli", false).await?, args).await,
        Command::Runs(cmd) => inspect::runs(&open(&cli.nats, &topology, "jetsched-cli", false).await?, cmd).await,
        Command::Status(args) => inspect::status(&open(&cli.nats, &topology, "jetsched-cli", false).await?, args).await,
        Command::Dlq(cmd) => dlq::dlq(&open(&cli.nats, &topology, "jetsched-cli", false).await?, cmd).await,
        Command::Permissions(args) => {
            print!("{}", permissions::render(&cli.nats.names()?, &args)?);
            Ok(())
        }
        Command::Console(args) => console::run(&cli.nats, args).await,
    }
}

/// Connects, creates any missing stream or bucket, and opens them all.
pub use jetsched_runtime::service::open;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

//! Logging: human-readable by default, JSON on request, filtered like RUST_LOG.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging options shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "JETSCHED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter, RUST_LOG syntax (e.g. `info`, `info,jetsched_worker=debug`).
    #[arg(long = "log", env = "JETSCHED_LOG", default_value = "info,async_nats=warn", global = true, value_parser = parse_filter)]
    pub log_filter: String,
}

/// Checks a log filter when the command line is parsed, so that a typo is an
/// error rather than a silent fallback.
fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter ({e}); example: info,jetsched_worker=debug"))
}

/// Installs the global subscriber; call once, first thing.
pub fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match args.log_format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (tests run several services in one process): keep it.
    let _ = result;
}

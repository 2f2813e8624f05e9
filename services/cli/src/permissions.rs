//! `jetsched permissions <role>`: the NATS publish and subscribe allow-lists
//! a role needs, in the shape nats-server's `permissions` block takes, built
//! from the contract's name builders (see
//! [`jetsched_contract::permissions`]).

use jetsched_contract::permissions::{DEFAULT_FUNCTIONS, Permissions, Role, Scope};
use jetsched_contract::{DEFAULT_QUEUE, Names};

use crate::admin::BadInput;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `{"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}`.
    Json,
    /// A `permissions: {...}` block for a user entry of a nats-server config.
    NatsConf,
}

/// `jetsched permissions` options.
#[derive(Debug, clap::Args)]
pub struct PermissionsArgs {
    /// ticker, dispatcher, worker, admin, submitter, function or console.
    pub role: Role,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Worker: queues it serves, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_QUEUE)]
    pub queues: Vec<String>,
    /// Worker: ids (--worker-id) of the workers using this user,
    /// comma-separated; each may read its own queue of routed runs.
    #[arg(long = "worker-id", value_delimiter = ',')]
    pub worker_ids: Vec<String>,
    /// Worker: its labels, comma-separated `key=value` (at most 8).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Worker: NATS function subjects it may call; function: those it
    /// serves. Comma-separated subject filters.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_FUNCTIONS)]
    pub functions: Vec<String>,
    /// Submitter: tasks it may submit, comma-separated [default: every task].
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Ticker: streams its event triggers may read besides jetsched's own
    /// capture stream, comma-separated (`ORDERS`, `KV_config` for a bucket).
    #[arg(long = "trigger-streams", value_delimiter = ',')]
    pub trigger_streams: Vec<String>,
    /// Console: for `jetsched console --allow-actions` (pause, resume,
    /// trigger, backfill, cancel, replay); without it the console only reads.
    #[arg(long)]
    pub allow_actions: bool,
}

/// The allow-lists `args` asks for, rendered.
pub fn render(names: &Names, args: &PermissionsArgs) -> anyhow::Result<String> {
    let mut labels = std::collections::BTreeMap::new();
    for label in &args.labels {
        let (k, v) = label.split_once('=').ok_or_else(|| BadInput(format!("label {label:?} must be key=value")))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let scope = Scope {
        queues: args.queues.clone(),
        worker_ids: args.worker_ids.clone(),
        labels,
        functions: args.functions.clone(),
        tasks: args.tasks.clone(),
        trigger_streams: args.trigger_streams.clone(),
        actions: args.allow_actions,
    };
    let permissions = Permissions::of(args.role, names, &scope).map_err(|e| BadInput(e.to_string()))?;
    Ok(match args.format {
        Format::Json => format!("{:#}\n", permissions.to_json()),
        Format::NatsConf => format!(
            "# jetsched {} role, prefix {names} (jetsched permissions {} --format nats-conf)\n{}",
            args.role,
            args.role,
            permissions.to_nats_conf()
        ),
    })
}

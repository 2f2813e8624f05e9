//! What every part of a worker shares: its context (connections, stores,
//! limits, policies). `execute` and the modules it calls build on this; it
//! builds on none of them. The outage their NATS trouble reports to is in
//! `crate::running`, a leaf every module may use.

use std::sync::Arc;
use std::time::Duration;

pub use jetsched_runtime::Disposition;
use jetsched_runtime::{Publisher, RunStore};
use tokio::sync::Semaphore;

use crate::cancel::Cancels;
use crate::handlers::Builtins;
use crate::handlers::exec::ExecPolicy;
use crate::handlers::nats::Functions;
use crate::release::Releaser;

/// What a worker shares between runs.
pub struct WorkerCtx {
    /// Events and dead letters.
    pub publisher: Publisher,
    /// Run records.
    pub runs: RunStore,
    /// An attempt that began without a write is stored `started` once it
    /// has run this long (zero: every start is stored first).
    pub record_started_after: Duration,
    /// `jetsched-checkpoints` (shared: a `Store` is costly to clone).
    pub checkpoints: std::sync::Arc<async_nats::jetstream::kv::Store>,
    /// This worker's id.
    pub worker_id: String,
    /// Exec allow-list.
    pub exec: ExecPolicy,
    /// Rust handlers.
    pub builtins: Builtins,
    /// The consumers' ack wait; in-progress acks go out at a third of it.
    pub ack_wait: Duration,
    /// Slot capacity.
    pub slots: Arc<Semaphore>,
    /// Room for runs held until their release time.
    pub staged: Arc<Semaphore>,
    /// Runs due within this are held in memory and released on time;
    /// later ones go back to the stream until then.
    pub stage_horizon: Duration,
    /// Runs on this worker that a cancel request can reach.
    pub cancels: Cancels,
    /// Slot capacity (the most a run may require).
    pub capacity: usize,
    /// `jetsched-slots`.
    pub slots_kv: async_nats::jetstream::kv::Store,
    /// `jetsched-rates`.
    pub rates_kv: async_nats::jetstream::kv::Store,
    /// Cores, memory and disk: offered and held.
    pub room: Arc<crate::room::Room>,
    /// Calls NATS functions.
    pub functions: Arc<Functions>,
    /// Releases staged runs at their time.
    pub releaser: Releaser,
    /// Bytes of output an attempt keeps in the task logs (0: none).
    pub task_log_limit: usize,
    /// HTTP handlers' client (where they may go, how much they may read).
    pub http: crate::handlers::http::Http,
    /// Largest payload and result.
    pub sizes: crate::handlers::Sizes,
    /// Keys that open sealed payloads for local handlers (`--payload-key-file`).
    pub keyring: Option<Arc<jetsched_contract::codec::Keyring>>,
}

pub const TRANSIENT: Disposition = Disposition::Retry(Duration::from_secs(1));

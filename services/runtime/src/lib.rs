//! What every jetsched service shares: NATS connection options (credentials,
//! TLS), logging, shutdown on signals, publishing with deterministic ids, and
//! a resilient KV watch.

pub mod access;
pub mod connect;
mod disposition;
pub mod health;
pub mod instance;
pub mod kvwatch;
pub mod logging;
pub mod metrics;
pub mod publish;
pub mod retry;
pub mod runs;
mod runscan;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use connect::{NatsArgs, connect, connect_as, jetstream};
pub use disposition::Disposition;
pub use health::{Health, Readiness};
pub use instance::default_instance_id;
pub use kvwatch::{KvChange, StampedChange, spawn_kv_watch, spawn_kv_watch_stamped};
pub use logging::{LogArgs, init_logging};
pub use metrics::metrics;
pub use publish::Publisher;
pub use retry::{Backoff, Outage, until_ok};
pub use runs::{CancelOutcome, Change, Known, RunStore, RunStoreError, Stored};
pub use runscan::{Page, RunQuery};
pub use shutdown::shutdown_on_signals;

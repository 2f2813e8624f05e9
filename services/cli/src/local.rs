//! jetsched's services inside one process. `jetsched up`, the integration
//! tests and the loadtest all start them here, the same way: each chosen
//! service on the handles (connection) given for its role, until a
//! cancellation token fires.

use jetsched_contract::Handles;
use jetsched_dispatcher::DispatcherConfig;
use jetsched_runtime::Health;
use jetsched_ticker::TickerConfig;
use jetsched_worker::{Builtins, WorkerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which services to run in this process, with what settings.
#[derive(Clone)]
pub struct LocalServices {
    /// The ticker, if any.
    pub ticker: Option<TickerConfig>,
    /// The dispatcher, if any.
    pub dispatcher: Option<DispatcherConfig>,
    /// The worker, if any.
    pub worker: Option<WorkerConfig>,
    /// The worker's Rust handlers.
    pub builtins: Builtins,
    /// Where each service reports its readiness.
    pub health: Health,
}

impl Default for LocalServices {
    /// All three, with their default settings.
    fn default() -> Self {
        LocalServices {
            ticker: Some(TickerConfig::default()),
            dispatcher: Some(DispatcherConfig::default()),
            worker: Some(WorkerConfig::default()),
            builtins: Builtins::default(),
            health: Health::default(),
        }
    }
}

/// The roles a [`LocalServices`] asks handles for.
pub const ROLES: [&str; 3] = ["ticker", "dispatcher", "worker"];

impl LocalServices {
    /// Starts the chosen services, each on `handles(role)` (`role` one of
    /// [`ROLES`]), until `shutdown` fires.
    pub fn spawn(self, handles: impl Fn(&str) -> Handles, shutdown: &CancellationToken) -> Running {
        let mut tasks = Vec::new();
        if let Some(c) = self.ticker {
            let ready = self.health.component("ticker");
            tasks.push(tokio::spawn(jetsched_ticker::run(c, handles("ticker"), ready, shutdown.clone())));
        }
        if let Some(c) = self.dispatcher {
            let ready = self.health.component("dispatcher");
            tasks.push(tokio::spawn(jetsched_dispatcher::run(c, handles("dispatcher"), ready, shutdown.clone())));
        }
        if let Some(c) = self.worker {
            let ready = self.health.component("worker");
            let worker = jetsched_worker::run(c, handles("worker"), self.builtins, ready, shutdown.clone());
            tasks.push(tokio::spawn(worker));
        }
        Running { token: shutdown.clone(), tasks }
    }
}

/// Services running in this process.
pub struct Running {
    token: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Their shutdown token: cancelling it makes them drain and stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Waits until every service has stopped; the first error, if any.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for task in self.tasks.drain(..) {
            let ended = task.await.map_err(anyhow::Error::from).and_then(|r| r);
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }

    /// Stops them (the token) and waits until they have drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.join().await
    }
}

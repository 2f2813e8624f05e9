//! Cancel requests for running (or staged) runs. `jetsched runs cancel`
//! marks the run record and publishes on `<prefix>.cancel.<run-id>`; every
//! worker listens, and the one holding the run stops its handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use jetsched_contract::Names;
use tokio_util::sync::CancellationToken;

/// Runs this worker holds, by run id.
#[derive(Clone, Default)]
pub struct Cancels {
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

/// Unregisters its run when dropped.
pub struct Registration {
    cancels: Cancels,
    run_id: String,
    /// Cancelled when a cancel request for the run arrives.
    pub token: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.cancels.running.lock() {
            map.remove(&self.run_id);
        }
    }
}

impl Cancels {
    /// Notes that this worker holds `run_id`.
    pub fn register(&self, run_id: &str) -> Registration {
        let token = CancellationToken::new();
        if let Ok(mut map) = self.running.lock() {
            map.insert(run_id.to_string(), token.clone());
        }
        Registration { cancels: self.clone(), run_id: run_id.to_string(), token }
    }

    fn cancel(&self, run_id: &str) -> bool {
        match self.running.lock().ok().and_then(|map| map.get(run_id).cloned()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Listens for cancel requests until `shutdown`.
    pub async fn listen(self, client: async_nats::Client, names: Names, shutdown: CancellationToken) {
        let mut sub = match client.subscribe(names.cancel_filter()).await {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "cannot subscribe to cancel requests; runs cannot be cancelled while running");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            if let Some(run_id) = names.parse_cancel_subject(msg.subject.as_str())
                && self.cancel(run_id)
            {
                tracing::info!(run_id, "cancel requested for a run on this worker");
            }
        }
    }
}

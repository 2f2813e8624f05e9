//! Cancel requests for running (or staged) runs. `jetsched runs cancel`
//! marks the run record and publishes on `<prefix>.cancel.<run-id>`; every
//! worker listens, and the one holding the run stops its handler.
//!
//! Withdrawal requests (a ticker whose schedule was deleted, paused or
//! edited) come on `<prefix>.withdraw.<run-id>`: the worker holding the run
//! withdraws it if it is still staged and answers whether it did; a run
//! whose handler was called goes on untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use jetsched_contract::{Names, WithdrawReply};
use tokio_util::sync::CancellationToken;

use crate::release::Hold;

/// Runs this worker holds, by run id.
#[derive(Clone, Default)]
pub struct Cancels {
    running: Arc<Mutex<HashMap<String, (CancellationToken, Hold)>>>,
}

/// Unregisters its run when dropped.
pub struct Registration {
    cancels: Cancels,
    run_id: String,
    /// Cancelled when a cancel request for the run arrives, or when it is
    /// withdrawn.
    pub token: CancellationToken,
    /// Settles whether the run starts or is withdrawn.
    pub hold: Hold,
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
        let hold = Hold::default();
        if let Ok(mut map) = self.running.lock() {
            map.insert(run_id.to_string(), (token.clone(), hold.clone()));
        }
        Registration { cancels: self.clone(), run_id: run_id.to_string(), token, hold }
    }

    fn cancel(&self, run_id: &str) -> bool {
        match self.running.lock().ok().and_then(|map| map.get(run_id).cloned()) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Withdraws `run_id` if this worker holds it and has not started it;
    /// `None` if this worker does not hold it.
    fn withdraw(&self, run_id: &str) -> Option<WithdrawReply> {
        let (token, hold) = self.running.lock().ok().and_then(|map| map.get(run_id).cloned())?;
        if hold.withdraw() {
            token.cancel();
            return Some(WithdrawReply::Withdrawn);
        }
        Some(if hold.is_withdrawn() { WithdrawReply::Withdrawn } else { WithdrawReply::Started })
    }

    /// Listens for cancel and withdrawal requests until `shutdown`.
    pub async fn listen(self, client: async_nats::Client, names: Names, shutdown: CancellationToken) {
        let subs =
            futures::try_join!(client.subscribe(names.cancel_filter()), client.subscribe(names.withdraw_filter()));
        let (mut cancels, mut withdrawals) = match subs {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "cannot subscribe to cancel and withdrawal requests; runs cannot be cancelled while running, nor staged runs of deleted schedules withdrawn");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = cancels.next() => {
                    let Some(msg) = m else { return };
                    if let Some(run_id) = names.parse_cancel_subject(msg.subject.as_str())
                        && self.cancel(run_id)
                    {
                        tracing::info!(run_id, "cancel requested for a run on this worker");
                    }
                }
                m = withdrawals.next() => {
                    let Some(msg) = m else { return };
                    let Some(run_id) = names.parse_withdraw_subject(msg.subject.as_str()) else { continue };
                    // Only the worker holding the run answers.
                    let (Some(answer), Some(reply)) = (self.withdraw(run_id), msg.reply) else { continue };
                    tracing::info!(run_id, answer = answer.as_str(), "withdrawal requested for a staged run");
                    if let Err(err) = client.publish(reply, answer.as_str().into()).await {
                        tracing::warn!(run_id, %err, "cannot answer a withdrawal request");
                    }
                }
            }
        }
    }
}

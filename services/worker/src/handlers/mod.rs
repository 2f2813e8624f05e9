//! Handler kinds. Each turns one invocation into an [`Outcome`]; none of them
//! touches JetStream, so their behaviour is testable on its own.

pub mod exec;
pub mod http;
pub mod nats;
pub mod reach;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde_json::Value;

/// What one attempt of a handler produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded.
    Success {
        /// Its result (a NATS reply body, exec stdout).
        result: Bytes,
        /// Captured output worth showing in the event.
        output: Option<String>,
    },
    /// The attempt failed.
    Failure {
        /// Why.
        error: String,
        /// False: do not try again.
        retryable: bool,
        /// The handler asked to be retried no sooner than this.
        retry_after: Option<Duration>,
        /// Captured output worth showing in the event.
        output: Option<String>,
    },
}

impl Outcome {
    /// Success with a JSON result.
    pub fn ok(result: Value) -> Self {
        Outcome::Success { result: serde_json::to_vec(&result).unwrap_or_default().into(), output: None }
    }

    /// A failure that may be retried.
    pub fn retry(error: impl Into<String>) -> Self {
        Outcome::Failure { error: error.into(), retryable: true, retry_after: None, output: None }
    }

    /// A failure that must not be retried.
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Failure { error: error.into(), retryable: false, retry_after: None, output: None }
    }
}

/// `bytes` as text for a run event, cut at `keep` bytes with a note saying
/// so (the run's result itself is never cut).
pub fn shown(bytes: &[u8], keep: usize) -> String {
    if bytes.len() <= keep {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!("{}… ({} bytes in all)", String::from_utf8_lossy(&bytes[..keep]), bytes.len())
}

/// Sizes a handler's input and output may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Largest payload (as JSON) a handler is called with.
    pub max_payload: usize,
    /// Largest result a handler may return.
    pub max_output: usize,
}

impl Sizes {
    /// Refuses a payload over the limit, before any handler sees it.
    pub fn check_payload(&self, payload: &Value) -> Result<(), Outcome> {
        let len = match payload {
            Value::Null => 0,
            v => serde_json::to_vec(v).map_or(0, |b| b.len()),
        };
        if len <= self.max_payload {
            return Ok(());
        }
        Err(Outcome::permanent(format!(
            "the payload is {len} bytes, over the worker's --max-payload ({} bytes); the handler was not called",
            self.max_payload
        )))
    }

    /// Turns a success whose result is over the limit into a failure.
    pub fn check_output(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Success { result, .. } if result.len() > self.max_output => Outcome::permanent(format!(
                "the handler's result is {} bytes, over the worker's --max-output ({} bytes); refused, not cut",
                result.len(),
                self.max_output
            )),
            other => other,
        }
    }
}

/// One call of a handler.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Run id (the idempotency key).
    pub run_id: String,
    /// Task name.
    pub task: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the attempt must be finished.
    pub deadline: Timestamp,
    /// Time left until the deadline.
    pub timeout: Duration,
    /// Schedule id of a scheduled run.
    pub schedule: Option<String>,
    /// Nominal fire time of a scheduled run.
    pub scheduled_for: Option<Timestamp>,
    /// The run's input.
    pub payload: Value,
    /// The last checkpoint an earlier attempt of this run saved.
    pub checkpoint: Option<Value>,
    /// Where a cancel request for the run is published.
    pub cancel_subject: String,
    /// Saves checkpoints (absent in unit tests).
    pub checkpoints: Option<crate::checkpoint::Checkpoints>,
    /// For a broadcast run: this worker's share.
    pub shard: Option<jetsched_contract::message::Shard>,
    /// The attempt's task log (see [`Invocation::log`]).
    pub log: crate::logs::LogSink,
}

impl Invocation {
    /// Adds `line` to this attempt's task log (`jetsched runs logs`, the
    /// console's run page), with the task's secrets masked.
    pub async fn log(&self, line: &str) {
        self.log.line(crate::logs::Source::Log, line).await;
    }

    /// Saves `value` as this run's checkpoint; the next attempt receives it
    /// in [`Invocation::checkpoint`].
    pub async fn save_checkpoint(&self, value: &Value) -> anyhow::Result<()> {
        match &self.checkpoints {
            Some(c) => c.save(value).await,
            None => anyhow::bail!("checkpoints are not available here"),
        }
    }
}

/// A Rust handler: a plain async function from invocation to outcome.
pub type BuiltinFn = Arc<dyn Fn(Invocation) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Rust handlers registered in this worker binary, by name.
#[derive(Clone, Default)]
pub struct Builtins {
    map: HashMap<String, BuiltinFn>,
}

impl Builtins {
    /// Registers `f` under `name`.
    pub fn register<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Outcome> + Send + 'static,
    {
        self.map.insert(name.to_string(), Arc::new(move |inv| Box::pin(f(inv))));
    }

    /// The handler named `name`.
    pub fn get(&self, name: &str) -> Option<BuiltinFn> {
        self.map.get(name).cloned()
    }
}

impl std::fmt::Debug for Builtins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

//! NATS function handlers: request-reply to any NATS service, in any
//! language. The request carries the payload as its body and the run id,
//! attempt and deadline as headers; a reply with a `Jetsched-Error` header is
//! a failure (permanent when `Jetsched-Retryable: false`).
//!
//! The worker publishes requests itself, each with a reply subject under one
//! wildcard subscription of its own (`<inbox>.<n>`), rather than through the
//! client's request helper: a request can then be built ahead of its time and
//! sent later in one loop with every other request due at that instant (a
//! staged herd, see `release`), and a herd's replies come back through one
//! subscription.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::{PublishError, PublishErrorKind};
use async_nats::{Client, HeaderMap, Message, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use jetsched_contract::headers;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Invocation, Outcome};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>;

/// Calls NATS functions for one worker: builds requests, sends them, and
/// routes each reply to the call waiting for it.
pub struct Functions {
    client: Client,
    inbox: String,
    next: AtomicU64,
    waiting: Waiting,
    /// Stops the reply router when the worker lets go of this.
    stop: CancellationToken,
}

/// A request ready to be published.
pub struct Outbound {
    subject: Subject,
    reply: Subject,
    headers: HeaderMap,
    payload: Bytes,
}

impl Outbound {
    /// Adds `span`'s trace context (the function joins the run's trace).
    pub fn trace(&mut self, span: &tracing::Span) {
        jetsched_runtime::trace::inject_for(span, &mut self.headers);
    }
}

/// Whether a request built ahead has gone out.
pub enum Sent {
    /// Published, with this result.
    Yes(Result<(), PublishError>),
    /// Not yet: send it now.
    No(Outbound),
}

/// The reply of one request, once it comes; forgotten when dropped.
pub struct Pending {
    token: u64,
    waiting: Waiting,
    reply: oneshot::Receiver<Message>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&self.token);
        }
    }
}

impl Drop for Functions {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Functions {
    /// Subscribes to this worker's reply subjects and starts routing replies.
    pub async fn start(client: Client) -> anyhow::Result<Arc<Functions>> {
        let inbox = client.new_inbox();
        let replies = client.subscribe(format!("{inbox}.*")).await?;
        let functions = Arc::new(Functions {
            client,
            inbox,
            next: AtomicU64::new(1),
            waiting: Arc::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(route(replies, functions.waiting.clone(), functions.stop.clone()));
        Ok(functions)
    }

    /// Builds the request for `inv` to the function on `subject`, without
    /// trace context (added when it is sent, under the handler's span).
    pub fn prepare(&self, subject: &str, inv: &Invocation) -> (Outbound, Pending) {
        let mut h = HeaderMap::new();
        h.insert(headers::RUN_ID, inv.run_id.as_str());
        h.insert(headers::ATTEMPT, inv.attempt.to_string().as_str());
        h.insert(headers::DEADLINE, inv.deadline.to_string().as_str());
        h.insert(headers::TASK, inv.task.as_str());
        // A sealed payload goes to the function sealed: it holds the key.
        if let Some(kid) = jetsched_contract::codec::sealed_key(&inv.payload) {
            h.insert(headers::KEY_ID, kid);
        }
        if let Some(s) = &inv.schedule {
            h.insert(headers::SCHEDULE, s.as_str());
        }
        if let Some(t) = inv.scheduled_for {
            h.insert(headers::SCHEDULED_FOR, t.to_string().as_str());
        }
        h.insert(headers::CANCEL_SUBJECT, inv.cancel_subject.as_str());
        if let Some(shard) = inv.shard {
            h.insert(headers::SHARD_INDEX, shard.index.to_string().as_str());
            h.insert(headers::SHARD_TOTAL, shard.total.to_string().as_str());
        }
        if let Some(cp) = &inv.checkpoint {
            let text = cp.to_string();
            // Header values are single lines of limited size; larger checkpoints
            // are read from the bucket by the function itself.
            if text.len() <= 4096 && !text.contains(['\r', '\n']) {
                h.insert(headers::CHECKPOINT, text.as_str());
            }
        }
        let payload = match &inv.payload {
            serde_json::Value::Null => Bytes::new(),
            v => serde_json::to_vec(v).unwrap_or_default().into(),
        };
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(token, tx);
        }
        let outbound = Outbound {
            subject: Subject::from(subject),
            reply: Subject::from(format!("{}.{token}", self.inbox)),
            headers: h,
            payload,
        };
        (outbound, Pending { token, waiting: self.waiting.clone(), reply })
    }

    /// Publishes a prepared request.
    pub async fn send(&self, o: Outbound) -> Result<(), PublishError> {
        self.client.publish_with_reply_and_headers(o.subject, o.reply, o.headers, o.payload).await
    }

    /// Calls the function on `subject` now, in the current span's trace.
    pub async fn call(&self, subject: &str, inv: &Invocation) -> Outcome {
        let (mut outbound, pending) = self.prepare(subject, inv);
        outbound.trace(&tracing::Span::current());
        let sent = self.send(outbound).await;
        outcome(subject, inv.timeout, sent, pending).await
    }
}

/// Waits for the reply to a request sent with result `sent`, at most
/// `timeout`, and turns it into an outcome.
pub async fn outcome(subject: &str, timeout: Duration, sent: Result<(), PublishError>, pending: Pending) -> Outcome {
    if let Err(err) = sent {
        return match err.kind() {
            PublishErrorKind::InvalidSubject => Outcome::permanent(format!("invalid function subject {subject:?}")),
            PublishErrorKind::MaxPayloadExceeded => {
                Outcome::permanent(format!("the payload is larger than the server allows: {err}"))
            }
            PublishErrorKind::Send => Outcome::retry(format!("request to {subject} failed: {err}")),
        };
    }
    let mut pending = pending;
    let reply = match tokio::time::timeout(timeout, &mut pending.reply).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => return Outcome::retry(format!("request to {subject} failed: the worker stopped listening")),
        Err(_) => return Outcome::retry(format!("the function on {subject} did not reply within {timeout:?}")),
    };
    if reply.status == Some(StatusCode::NO_RESPONDERS) {
        return Outcome::retry(format!("no function is listening on {subject}"));
    }
    let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    match header(headers::ERROR) {
        None => Outcome::Success { result: reply.payload, output: None },
        Some(error) => {
            let retryable = !header(headers::RETRYABLE).is_some_and(|v| v.eq_ignore_ascii_case("false"));
            let error = if error.is_empty() { "the function replied with an error".to_string() } else { error };
            Outcome::Failure { error, retryable, retry_after: None, output: None }
        }
    }
}

/// Hands each reply to the call waiting for it, until `stop`.
async fn route(mut replies: async_nats::Subscriber, waiting: Waiting, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = replies.next() => match m { Some(m) => m, None => break },
        };
        let Some(token) = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let tx = waiting.lock().ok().and_then(|mut w| w.remove(&token));
        if let Some(tx) = tx {
            let _ = tx.send(msg);
        }
    }
    // Calls still waiting learn that no reply will come.
    if let Ok(mut w) = waiting.lock() {
        w.clear();
    }
}

//! Every publish a service makes goes through [`Publisher`]: it sets the
//! deterministic `Nats-Msg-Id`, and (one place to change) headers that must
//! ride on every message.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use jetsched_contract::{Names, RunEvent, RunStatus, headers};

use crate::metrics::{kv, metrics};

/// A publish that did not reach the stream.
#[derive(Debug, thiserror::Error)]
#[error("publish to {subject} failed: {source}")]
pub struct PublishError {
    subject: String,
    #[source]
    source: async_nats::jetstream::context::PublishError,
}

impl PublishError {
    /// True when the server never answered (the message may or may not be stored).
    pub fn is_timeout(&self) -> bool {
        self.source.kind() == PublishErrorKind::TimedOut
    }
}

/// Publishes to jetsched's streams.
#[derive(Clone, Debug)]
pub struct Publisher {
    js: Context,
    names: Names,
}

impl Publisher {
    /// A publisher for `names` over `js`.
    pub fn new(js: Context, names: Names) -> Self {
        Publisher { js, names }
    }

    /// Names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The JetStream context.
    pub fn js(&self) -> &Context {
        &self.js
    }

    /// Sends and returns the pending ack, so callers can keep many in flight.
    pub async fn send(
        &self,
        subject: String,
        mut headers: HeaderMap,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        headers.insert(headers::NATS_MSG_ID, msg_id);
        crate::trace::inject(&mut headers);
        self.js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|source| PublishError { subject, source })
    }

    /// Sends and waits for the stream's ack.
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        let pending = self.send(subject.clone(), headers, msg_id, payload).await?;
        pending.await.map_err(|source| PublishError { subject, source })
    }

    /// Publishes a run event on `<prefix>.event.<task>.<status>`. A kept
    /// status ([`RunStatus::is_kept`]) is stored in the events stream and
    /// this waits for its ack; the others (queued, started, succeeded) are
    /// published live only: a core message, no ack, nothing stored (their
    /// history is the run record's).
    pub async fn event(&self, event: &RunEvent) -> Result<(), PublishError> {
        let subject = self.names.event_subject(&event.task, event.status.as_str());
        let mut h = HeaderMap::new();
        if let Some(run) = &event.run_id {
            h.insert(headers::RUN_ID, run.as_str());
        }
        // Serialising a RunEvent cannot fail: it has no maps with non-string keys.
        let body: Bytes = serde_json::to_vec(event).unwrap_or_default().into();
        if event.status.is_kept() {
            self.publish(subject, h, &event.msg_id(), body).await?;
        } else {
            crate::trace::inject(&mut h);
            self.js.client().publish_with_headers(subject.clone(), h, body).await.map_err(|e| PublishError {
                subject,
                source: async_nats::jetstream::context::PublishError::with_source(PublishErrorKind::Other, e),
            })?;
        }
        count_event(event);
        Ok(())
    }

    /// Stores `payload` in the DLQ under `task` with the reason and origin.
    pub async fn dead_letter(
        &self,
        task: &str,
        msg_id: &str,
        reason: &str,
        original_subject: &str,
        mut extra: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        extra.insert(headers::REASON, single_line(reason).as_str());
        extra.insert(headers::ORIGINAL_SUBJECT, original_subject);
        extra.insert(headers::TASK, task);
        self.publish(self.names.dead_subject(task), extra, &format!("dead:{msg_id}"), payload).await?;
        metrics().dead_letters.add(1, &[kv("task", task.to_string())]);
        Ok(())
    }
}

/// Counts a published event in `jetsched_runs_total` (and invalid definitions).
pub fn count_event(event: &RunEvent) {
    let m = metrics();
    m.runs.add(1, &[kv("task", event.task.clone()), kv("status", event.status.as_str())]);
    if event.status == RunStatus::Invalid {
        m.invalid_definitions.add(1, &[kv("bucket", event.bucket.clone().unwrap_or_default())]);
    }
}

/// Header values cannot hold line breaks; long reasons are cut.
fn single_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > 1024 {
        let mut cut = 1024;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

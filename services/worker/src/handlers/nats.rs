//! NATS function handlers: request-reply to any NATS service, in any
//! language. The request carries the payload as its body and the run id,
//! attempt and deadline as headers; a reply with a `Jetsched-Error` header is
//! a failure (permanent when `Jetsched-Retryable: false`).

use async_nats::client::{Request, RequestErrorKind};
use async_nats::{Client, HeaderMap};
use jetsched_contract::headers;

use super::{Invocation, Outcome};

/// Calls the function on `subject`.
pub async fn call(client: &Client, subject: &str, inv: &Invocation, mut extra: HeaderMap) -> Outcome {
    extra.insert(headers::RUN_ID, inv.run_id.as_str());
    extra.insert(headers::ATTEMPT, inv.attempt.to_string().as_str());
    extra.insert(headers::DEADLINE, inv.deadline.to_string().as_str());
    extra.insert(headers::TASK, inv.task.as_str());
    if let Some(s) = &inv.schedule {
        extra.insert(headers::SCHEDULE, s.as_str());
    }
    if let Some(t) = inv.scheduled_for {
        extra.insert(headers::SCHEDULED_FOR, t.to_string().as_str());
    }
    extra.insert(headers::CANCEL_SUBJECT, inv.cancel_subject.as_str());
    if let Some(shard) = inv.shard {
        extra.insert(headers::SHARD_INDEX, shard.index.to_string().as_str());
        extra.insert(headers::SHARD_TOTAL, shard.total.to_string().as_str());
    }
    if let Some(cp) = &inv.checkpoint {
        let text = cp.to_string();
        // Header values are single lines of limited size; larger checkpoints
        // are read from the bucket by the function itself.
        if text.len() <= 4096 && !text.contains(['\r', '\n']) {
            extra.insert(headers::CHECKPOINT, text.as_str());
        }
    }
    // The function joins the run's trace.
    jetsched_runtime::trace::inject(&mut extra);
    let body = match &inv.payload {
        serde_json::Value::Null => bytes::Bytes::new(),
        v => serde_json::to_vec(v).unwrap_or_default().into(),
    };
    let request = Request::new().headers(extra).payload(body).timeout(Some(inv.timeout));
    match client.send_request(subject.to_string(), request).await {
        Ok(reply) => {
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
        Err(err) => match err.kind() {
            RequestErrorKind::NoResponders => Outcome::retry(format!("no function is listening on {subject}")),
            RequestErrorKind::TimedOut => {
                Outcome::retry(format!("the function on {subject} did not reply within {:?}", inv.timeout))
            }
            RequestErrorKind::InvalidSubject => Outcome::permanent(format!("invalid function subject {subject:?}")),
            RequestErrorKind::MaxPayloadExceeded => {
                Outcome::permanent(format!("the payload is larger than the server allows: {err}"))
            }
            RequestErrorKind::Other => Outcome::retry(format!("request to {subject} failed: {err}")),
        },
    }
}

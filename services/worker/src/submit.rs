//! Submitting runs from a Rust program (the client side of the worker
//! library), optionally sealed: with a [`Keyring`] the payload leaves this
//! process as AES-256-GCM ciphertext, and only holders of the key (workers
//! with `--payload-key-file`, NATS functions) open it.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use jetsched_contract::codec::Keyring;
use jetsched_contract::{Names, headers, run};
use serde_json::Value;

/// Submits a run of `task` with `payload` (sealed with `keyring`'s first
/// key when given) and returns its run id once the inbox has stored it.
pub async fn submit(
    js: &Context,
    names: &Names,
    task: &str,
    payload: &Value,
    keyring: Option<&Keyring>,
) -> anyhow::Result<String> {
    jetsched_contract::validate_name("task", task)?;
    let mut h = HeaderMap::new();
    let body = match keyring {
        Some(keyring) => {
            h.insert(headers::KEY_ID, keyring.active());
            serde_json::to_vec(&keyring.seal_value(payload)?)?
        }
        None => serde_json::to_vec(payload)?,
    };
    let ack = js.publish_with_headers(names.submit_subject(task), h, body.into()).await?.await?;
    Ok(run::submitted_run_id(task, None, ack.sequence))
}

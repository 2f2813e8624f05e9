//! Concurrency and rate limits, enforced across every worker through KV.
//!
//! - Concurrency `{key, limit}`: `limit` slot keys per rendered key in
//!   `jetsched-slots` (`c.<task>.<key hash>.<n>`); a run starts only after it
//!   creates one (KV `create` is atomic across the cluster), refreshes it
//!   while it runs and deletes it when done. The bucket's max age frees the
//!   slot of a worker that died holding it.
//! - Rate `{key, limit, per}`: a counter per period in `jetsched-rates`
//!   (`r.<task>.<key hash>.<period>`), incremented with compare-and-set.
//!
//! A run that cannot start yet goes back to the stream for a short while;
//! no attempt is used up.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use jetsched_contract::{TaskDef, render_template, run::fnv1a};
use serde_json::Value;

/// A held concurrency slot.
pub struct SlotHold {
    store: Store,
    key: String,
    run_id: String,
    revision: u64,
}

impl SlotHold {
    /// Keeps the slot from expiring.
    pub async fn refresh(&mut self) {
        match self.store.update(&self.key, self.run_id.clone().into(), self.revision).await {
            Ok(rev) => self.revision = rev,
            Err(err) => {
                tracing::debug!(key = %self.key, %err, "cannot refresh concurrency slot");
                crate::ctx::RUNNING.failed(&format_args!("cannot refresh concurrency slot: {err}"));
            }
        }
    }

    /// Frees the slot.
    pub async fn release(self) {
        if let Err(err) = self.store.delete_expect_revision(&self.key, Some(self.revision)).await {
            tracing::debug!(key = %self.key, %err, "concurrency slot already gone");
        }
    }
}

/// Whether a run may start now.
pub enum Admission {
    /// Yes (holding a slot, if the task has a concurrency limit).
    Go(Option<Box<SlotHold>>),
    /// Not yet: look again after this long.
    Wait(Duration),
}

fn hashed(task: &str, template: Option<&str>, payload: &Value) -> String {
    let key = template.map(|t| render_template(t, payload)).unwrap_or_default();
    format!("{task}.{:016x}", fnv1a(key.as_bytes()))
}

/// Checks the task's rate limit, then takes a concurrency slot.
pub async fn admit(
    slots: &Store,
    rates: &Store,
    task: &str,
    def: &TaskDef,
    payload: &Value,
    run_id: &str,
) -> anyhow::Result<Admission> {
    if let Some(rate) = &def.rate_limit {
        let period = rate.per.0.as_millis().max(1);
        let now = jiff::Timestamp::now().as_millisecond() as u128;
        let index = now / period;
        let key = format!("r.{}.{index}", hashed(task, rate.key.as_deref(), payload));
        if !take_token(rates, &key, rate.limit).await? {
            let wait = (index + 1) * period - now;
            return Ok(Admission::Wait(Duration::from_millis(wait as u64 + 1)));
        }
    }
    let Some(limit) = &def.concurrency else { return Ok(Admission::Go(None)) };
    let base = format!("c.{}", hashed(task, Some(&limit.key), payload));
    let mut free = Vec::new();
    for n in 0..limit.limit {
        let key = format!("{base}.{n}");
        match slots.entry(&key).await? {
            // Ours already (a redelivery of a run that held it).
            Some(e) if e.operation == Operation::Put && e.value == run_id.as_bytes() => {
                return Ok(Admission::Go(Some(Box::new(SlotHold {
                    store: slots.clone(),
                    key,
                    run_id: run_id.to_string(),
                    revision: e.revision,
                }))));
            }
            Some(e) if e.operation == Operation::Put => {}
            _ => free.push(key),
        }
    }
    for key in free {
        match slots.create(&key, run_id.to_string().into()).await {
            Ok(revision) => {
                return Ok(Admission::Go(Some(Box::new(SlotHold {
                    store: slots.clone(),
                    key,
                    run_id: run_id.to_string(),
                    revision,
                }))));
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Admission::Wait(Duration::from_millis(250)))
}

/// Increments the period's counter if it is below `limit`.
async fn take_token(rates: &Store, key: &str, limit: u32) -> anyhow::Result<bool> {
    for _ in 0..16 {
        match rates.entry(key).await? {
            Some(e) if e.operation == Operation::Put => {
                let count: u32 = std::str::from_utf8(&e.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                if count >= limit {
                    return Ok(false);
                }
                match rates.update(key, (count + 1).to_string().into(), e.revision).await {
                    Ok(_) => return Ok(true),
                    Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            _ => match rates.create(key, "1".into()).await {
                Ok(_) => return Ok(true),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err.into()),
            },
        }
    }
    Ok(false)
}

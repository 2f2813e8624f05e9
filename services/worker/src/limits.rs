//! Concurrency and rate limits, enforced across every worker through KV.
//!
//! - Concurrency `{key, limit}`: `limit` slot keys per rendered key in
//!   `jetsched-slots` ([`Names::concurrency_slot_key`]); a run starts only after it
//!   creates one (KV `create` is atomic across the cluster), refreshes it
//!   while it runs and deletes it when done. The bucket's max age frees the
//!   slot of a worker that died holding it.
//! - Rate `{key, limit, per}`: a counter per period in `jetsched-rates`
//!   ([`Names::rate_counter_key`]), incremented with compare-and-set. A
//!   period is `per` long, numbered from the Unix epoch; the run's start
//!   counts in the period in which it was admitted (told to the `started`
//!   event as `rate_window`).
//!
//! A run that cannot start yet goes back to the stream: until the next
//! period for a rate limit, for a short while for a concurrency slot. No
//! attempt is used up.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use jetsched_contract::{Names, TaskDef, render_template};
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
                crate::running::RUNNING.failed(&format_args!("cannot refresh concurrency slot: {err}"));
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
    /// Yes.
    Go {
        /// The concurrency slot it holds, if the task has a concurrency limit.
        slot: Option<Box<SlotHold>>,
        /// The rate-limit period its start counts in, if the task has a rate limit.
        rate_window: Option<jiff::Timestamp>,
    },
    /// Not yet: look again after this long (the reason says which limit).
    Wait(Duration, String),
}

/// Takes a concurrency slot, then a rate-limit token. In that order: a
/// run that waits for a slot must not use up the period's starts, and a
/// slot taken by a run that then waits for the next period is given back.
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    names: &Names,
    slots: &Store,
    rates: &Store,
    task: &str,
    def: &TaskDef,
    payload: &Value,
    run_id: &str,
) -> anyhow::Result<Admission> {
    let slot = match &def.concurrency {
        None => None,
        Some(limit) => {
            let rendered = render_template(&limit.key, payload);
            match take_slot(names, slots, task, &rendered, limit.limit, run_id).await? {
                Some(hold) => Some(Box::new(hold)),
                None => {
                    let why = format!("concurrency limit of {} reached for key {rendered:?}", limit.limit);
                    return Ok(Admission::Wait(Duration::from_millis(250), why));
                }
            }
        }
    };
    let Some(rate) = &def.rate_limit else { return Ok(Admission::Go { slot, rate_window: None }) };
    let period = rate.per.0.as_millis().max(1);
    let now = jiff::Timestamp::now().as_millisecond() as u128;
    let index = now / period;
    let rendered = rate.key.as_deref().map(|t| render_template(t, payload)).unwrap_or_default();
    let taken = take_token(rates, &names.rate_counter_key(task, &rendered, index), rate.limit).await;
    let wait = match taken {
        Ok(Token::Taken) => None,
        Ok(Token::Full) => Some(Admission::Wait(
            Duration::from_millis(((index + 1) * period - now) as u64 + 1),
            format!(
                "rate limit of {} starts per {} reached for key {rendered:?}; waiting for the next period",
                rate.limit, rate.per
            ),
        )),
        Ok(Token::Contended) => Some(Admission::Wait(
            // Jittered, so that the contenders spread out.
            jetsched_runtime::Backoff::new(Duration::from_millis(100), Duration::from_millis(100)).next_delay(),
            format!("rate-limit counter of key {rendered:?} is contended; trying again"),
        )),
        Err(err) => {
            if let Some(s) = slot {
                s.release().await;
            }
            return Err(err);
        }
    };
    if let Some(wait) = wait {
        if let Some(s) = slot {
            s.release().await;
        }
        return Ok(wait);
    }
    let start = i64::try_from(index * period).unwrap_or(i64::MAX);
    Ok(Admission::Go { slot, rate_window: jiff::Timestamp::from_millisecond(start).ok() })
}

/// Takes one of the `limit` slots of `rendered` (or finds the one this run
/// holds already, when its work message is delivered again).
async fn take_slot(
    names: &Names,
    slots: &Store,
    task: &str,
    rendered: &str,
    limit: u32,
    run_id: &str,
) -> anyhow::Result<Option<SlotHold>> {
    let hold =
        |key: String, revision: u64| SlotHold { store: slots.clone(), key, run_id: run_id.to_string(), revision };
    let mut free = Vec::new();
    for n in 0..limit {
        let key = names.concurrency_slot_key(task, rendered, n);
        match slots.entry(&key).await? {
            // Ours already (a redelivery of a run that held it).
            Some(e) if e.operation == Operation::Put && e.value == run_id.as_bytes() => {
                return Ok(Some(hold(key, e.revision)));
            }
            Some(e) if e.operation == Operation::Put => {}
            _ => free.push(key),
        }
    }
    for key in free {
        match slots.create(&key, run_id.to_string().into()).await {
            Ok(revision) => return Ok(Some(hold(key, revision))),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// What became of a request for a rate-limit token.
enum Token {
    /// Counted: the run may start.
    Taken,
    /// The period's starts are used up.
    Full,
    /// Other runs kept changing the counter; not decided.
    Contended,
}

/// Increments the period's counter if it is below `limit`.
async fn take_token(rates: &Store, key: &str, limit: u32) -> anyhow::Result<Token> {
    for _ in 0..16 {
        match rates.entry(key).await? {
            Some(e) if e.operation == Operation::Put => {
                let count: u32 = std::str::from_utf8(&e.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                if count >= limit {
                    return Ok(Token::Full);
                }
                match rates.update(key, (count + 1).to_string().into(), e.revision).await {
                    Ok(_) => return Ok(Token::Taken),
                    Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            _ => match rates.create(key, "1".into()).await {
                Ok(_) => return Ok(Token::Taken),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err.into()),
            },
        }
    }
    Ok(Token::Contended)
}

//! The ticker's durable progress in `<prefix>-ticker`: one watermark per
//! partition and a fire count per `max_runs` schedule, each written with
//! compare-and-set on its revision so that two tickers briefly sharing a
//! partition (one has not noticed its lease is gone) never move a value
//! backwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use jetsched_contract::ticker::{self, FiredCount, Watermark};
use jiff::Timestamp;

/// A value this ticker keeps in sync: what is stored and what is waiting.
#[derive(Debug, Clone)]
pub struct Synced<T> {
    /// The value as last read or written.
    pub stored: Option<T>,
    /// Its revision (0: the key does not exist).
    pub revision: u64,
    /// A newer value to write.
    pub pending: Option<T>,
}

impl<T> Default for Synced<T> {
    fn default() -> Self {
        Synced { stored: None, revision: 0, pending: None }
    }
}

/// What a ticker reads when it takes a partition over.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// The watermark.
    pub watermark: Synced<Timestamp>,
    /// Fire counts by schedule id.
    pub counts: HashMap<Arc<str>, Synced<FiredCount>>,
}

impl PartitionState {
    /// The counts, as the plan takes them.
    pub fn count_values(&self) -> HashMap<String, FiredCount> {
        self.counts.iter().filter_map(|(k, v)| Some((k.to_string(), v.stored.clone()?))).collect()
    }
}

/// Reads partition `p`'s watermark and fire counts.
pub async fn read_partition(state: &Store, p: u16) -> anyhow::Result<PartitionState> {
    let mut out = PartitionState::default();
    if let Some(entry) = state.entry(ticker::watermark_key(p)).await.context("read watermark")? {
        out.watermark.revision = entry.revision;
        if entry.operation == Operation::Put {
            let w: Watermark = serde_json::from_slice(&entry.value).context("malformed watermark")?;
            out.watermark.stored = Some(w.upto);
        }
    }
    // The last value of every count key of the partition, read as a stream
    // (a partition may hold many): an ordered consumer that knows how many
    // messages it will deliver.
    let filter = format!("{}{}", state.prefix, ticker::fired_filter(p));
    let consumer = state
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .context("read fire counts")?;
    let pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.context("read fire counts")?;
    for _ in 0..pending {
        let msg = messages.next().await.context("fire counts ended early")?.context("read fire counts")?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("fire count without metadata: {e}"))?;
        let revision = info.stream_sequence;
        let Some(key) = msg.subject.strip_prefix(state.prefix.as_str()) else { continue };
        let Some(schedule) = ticker::parse_fired_key(p, key) else { continue };
        let deleted = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some());
        let stored = if deleted { None } else { serde_json::from_slice::<FiredCount>(&msg.payload).ok() };
        out.counts.insert(schedule.into(), Synced { stored, revision, pending: None });
    }
    Ok(out)
}

/// Writes `synced.pending` under `key` with compare-and-set. On a conflict
/// it re-reads the key and keeps whichever value is further along (`merge`);
/// returns false when the value could not be stored this time.
pub async fn write<T>(
    state: &Store,
    key: &str,
    synced: &mut Synced<T>,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
    ahead: impl Fn(&T, &T) -> bool,
    timeout: Duration,
) -> bool {
    let Some(value) = synced.pending.take() else { return true };
    let bytes = encode(&value).into();
    let attempt = async {
        if synced.revision == 0 {
            state.create(key, bytes).await.map_err(|e| e.to_string())
        } else {
            state.update(key, bytes, synced.revision).await.map_err(|e| e.to_string())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(revision)) => {
            synced.revision = revision;
            synced.stored = Some(value);
            true
        }
        Ok(Err(err)) => {
            // Someone else wrote it (a ticker that had the partition before).
            tracing::debug!(key, %err, "compare-and-set conflict; re-reading");
            if let Ok(Ok(Some(entry))) = tokio::time::timeout(timeout, state.entry(key)).await {
                synced.revision = entry.revision;
                let theirs = (entry.operation == Operation::Put).then(|| decode(&entry.value)).flatten();
                match theirs {
                    Some(theirs) if !ahead(&value, &theirs) => synced.stored = Some(theirs),
                    _ => synced.pending = Some(value),
                }
            } else {
                synced.pending = Some(value);
            }
            false
        }
        Err(_) => {
            tracing::warn!(key, "ticker state write timed out; will retry");
            synced.pending = Some(value);
            false
        }
    }
}

/// Writes a partition's pending watermark.
pub async fn write_watermark(state: &Store, p: u16, by: &str, synced: &mut Synced<Timestamp>, t: Duration) -> bool {
    write(
        state,
        &ticker::watermark_key(p),
        synced,
        |upto| serde_json::to_vec(&Watermark { upto: *upto, by: by.to_string() }).unwrap_or_default(),
        |bytes| serde_json::from_slice::<Watermark>(bytes).ok().map(|w| w.upto),
        |ours, theirs| ours > theirs,
        t,
    )
    .await
}

/// Writes a schedule's pending fire count.
pub async fn write_count(state: &Store, key: &str, synced: &mut Synced<FiredCount>, t: Duration) -> bool {
    write(
        state,
        key,
        synced,
        |count| serde_json::to_vec(count).unwrap_or_default(),
        |bytes| serde_json::from_slice(bytes).ok(),
        |ours: &FiredCount, theirs: &FiredCount| ours.fired > theirs.fired,
        t,
    )
    .await
}

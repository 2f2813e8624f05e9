//! The ticker's own state: partitions, the keys of its two buckets, and the
//! values it keeps there.
//!
//! Schedules are split into [`PARTITIONS`] partitions by a stable hash of the
//! schedule id. A ticker fires a partition only while it holds the
//! partition's lease (`lease.<p>` in `<prefix>-ticker-leases`, a bucket whose
//! entries expire unless refreshed). Per partition it records a watermark
//! (`wm.<p>` in `<prefix>-ticker`): every fire with a nominal time at or
//! before it has been stored in the inbox (or reported `missed`). A ticker
//! that takes a partition over resumes from there. Schedules with `max_runs`
//! also keep their fire count (`runs.<p>.<schedule>`). Each event trigger's
//! consumer is registered under `trg.<p>.<consumer>` ([`TriggerState`]) by
//! the ticker hosting it, so that a consumer whose trigger was removed while
//! no ticker ran is found and deleted; a batching trigger also journals the
//! batch it is submitting there.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::hash::fnv1a;

/// How many partitions schedules are split into. Fixed: changing it would
/// move schedules between partitions and invalidate every watermark.
pub const PARTITIONS: u16 = 64;

/// The partition of `schedule` (stable FNV-1a of the id, modulo [`PARTITIONS`]).
pub fn partition_of(schedule: &str) -> u16 {
    (fnv1a(schedule.as_bytes()) % u64::from(PARTITIONS)) as u16
}

/// Key of partition `p`'s watermark in the ticker bucket.
pub fn watermark_key(p: u16) -> String {
    format!("wm.{p}")
}

/// Key of a `max_runs` schedule's fire count in the ticker bucket.
pub fn fired_key(p: u16, schedule: &str) -> String {
    format!("runs.{p}.{schedule}")
}

/// Key filter for every fire count of partition `p`.
pub fn fired_filter(p: u16) -> String {
    format!("runs.{p}.>")
}

/// Schedule id of a fire-count key of partition `p`.
pub fn parse_fired_key(p: u16, key: &str) -> Option<&str> {
    key.strip_prefix("runs.")?.strip_prefix(p.to_string().as_str())?.strip_prefix('.')
}

/// Key under which the consumer of a trigger hosted in partition `p` is registered.
pub fn trigger_key(p: u16, consumer: &str) -> String {
    format!("trg.{p}.{consumer}")
}

/// The partition and consumer of a trigger registration key.
pub fn parse_trigger_key(key: &str) -> Option<(u16, &str)> {
    let (p, consumer) = key.strip_prefix("trg.")?.split_once('.')?;
    Some((p.parse().ok().filter(|p| *p < PARTITIONS)?, consumer))
}

/// Key filter for every trigger registered in partition `p`.
pub fn trigger_filter(p: u16) -> String {
    format!("trg.{p}.>")
}

/// Value of `trg.<p>.<consumer>`: a trigger's consumer, and the batch it
/// is submitting, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerState {
    /// The task the trigger belongs to.
    pub task: String,
    /// The stream the consumer reads.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
    /// A batch journaled before its submission is published: until all its
    /// messages are known acknowledged, a ticker taking the trigger over
    /// submits it again (same `Nats-Msg-Id`) and acknowledges its messages
    /// instead of batching them anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<JournaledBatch>,
}

/// A batch of events as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournaledBatch {
    /// The submission's `Nats-Msg-Id`.
    pub msg_id: String,
    /// Stream sequences of its events, in order.
    pub seqs: Vec<u64>,
    /// Events of earlier batches (stored already) not yet known
    /// acknowledged: a ticker taking the trigger over acknowledges them when
    /// they come back instead of batching them anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<u64>,
}

/// Key of partition `p`'s lease in the leases bucket (value: the owner's ticker id).
pub fn lease_key(p: u16) -> String {
    format!("lease.{p}")
}

/// Key under which a live ticker announces itself in the leases bucket.
pub fn member_key(ticker: &str) -> String {
    format!("member.{ticker}")
}

/// What a key of the leases bucket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKey<'a> {
    /// `lease.<p>`.
    Lease(u16),
    /// `member.<ticker id>`.
    Member(&'a str),
}

/// Parses a key of the leases bucket.
pub fn parse_lease_key(key: &str) -> Option<LeaseKey<'_>> {
    if let Some(p) = key.strip_prefix("lease.") {
        return p.parse().ok().filter(|p| *p < PARTITIONS).map(LeaseKey::Lease);
    }
    key.strip_prefix("member.").filter(|id| !id.is_empty()).map(LeaseKey::Member)
}

/// Value of `wm.<p>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// Every fire of the partition's schedules with a nominal time at or
    /// before this instant has been stored in the inbox or reported missed.
    pub upto: Timestamp,
    /// The ticker that wrote it.
    pub by: String,
}

/// Value of `runs.<p>.<schedule>`, kept only for schedules with `max_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiredCount {
    /// Fires stored so far.
    pub fired: u64,
    /// Nominal time of the last of them.
    pub last: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Pinned: a different hash would move schedules between partitions.
        assert_eq!(partition_of("nightly"), (fnv1a(b"nightly") % 64) as u16);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let p = partition_of(&format!("s-{i}"));
            assert!(p < PARTITIONS);
            seen.insert(p);
        }
        assert_eq!(seen.len(), PARTITIONS as usize, "every partition gets schedules");
    }

    #[test]
    fn keys_parse_back() {
        assert_eq!(watermark_key(7), "wm.7");
        assert_eq!(fired_key(7, "nightly"), "runs.7.nightly");
        assert_eq!(parse_fired_key(7, "runs.7.nightly"), Some("nightly"));
        assert_eq!(parse_fired_key(7, "runs.71.nightly"), None);
        assert_eq!(parse_lease_key(&lease_key(63)), Some(LeaseKey::Lease(63)));
        assert_eq!(parse_lease_key("lease.64"), None);
        assert_eq!(parse_lease_key(&member_key("host-1")), Some(LeaseKey::Member("host-1")));
        assert_eq!(parse_lease_key("other"), None);
        assert_eq!(trigger_key(7, "jetsched-trg-a-0000abcd"), "trg.7.jetsched-trg-a-0000abcd");
        assert_eq!(trigger_filter(7), "trg.7.>");
        assert_eq!(parse_trigger_key("trg.7.jetsched-trg-a-0000abcd"), Some((7, "jetsched-trg-a-0000abcd")));
        assert_eq!(parse_trigger_key("trg.99.x"), None);
    }
}

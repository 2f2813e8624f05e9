//! Overlap bookkeeping of a schedule whose `overlap` policy is not `allow`:
//! the value under the schedule id in `<prefix>-overlap`, written by
//! dispatchers with compare-and-set on its revision. It says which fire of
//! the schedule holds the turn (`active`) and which one waits for it
//! (`buffered`, under `buffer_one` and `cancel_previous`).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The schedule's turn: who holds it, who waits for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlapState {
    /// The fire that took the turn last. It holds the turn while its run (or
    /// its inbox message, before the run is queued) exists and is not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<OverlapFire>,
    /// The fire waiting for `active` to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<OverlapFire>,
}

/// One fire of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlapFire {
    /// Its run id.
    pub run_id: String,
    /// Its nominal time.
    pub scheduled_for: Timestamp,
    /// The sequence of its due message in the inbox stream: while that
    /// message is there, the fire is still being dispatched.
    pub inbox_seq: u64,
    /// Its task routes by broadcast: the run is its shares
    /// (`<run>.w0`, `<run>.w1`, ...), each with its own record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
}

impl OverlapFire {
    /// Whether this fire comes after `other` (by nominal time, then run id:
    /// a re-fire after an edit comes after the fire it replaces).
    pub fn is_after(&self, other: &OverlapFire) -> bool {
        (self.scheduled_for, &self.run_id) > (other.scheduled_for, &other.run_id)
    }
}

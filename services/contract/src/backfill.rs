//! Backfills: the value under a backfill id in `<prefix>-backfills`. A user
//! writes `{"schedule", "from", "to"}`; the ticker owning the schedule's
//! partition fires every occurrence in the range under the ticker's own run
//! ids and keeps `status` and `progress` up to date (compare-and-set on the
//! entry's revision). Setting `status` to `cancelled` stops it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Most fires one backfill may cover (a longer range is split into several).
pub const MAX_FIRES: u64 = 100_000;

/// A backfill request and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    /// The schedule whose fires are replayed.
    pub schedule: String,
    /// First instant of the range (inclusive).
    pub from: Timestamp,
    /// Last instant of the range (inclusive).
    pub to: Timestamp,
    /// Runs of this backfill not yet finished, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Where it stands; users may set `cancelled`.
    #[serde(default)]
    pub status: BackfillStatus,
    /// Counts so far (written by the ticker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackfillProgress>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn default_max_in_flight() -> u32 {
    10
}

/// The life of a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackfillStatus {
    /// Written, not started yet.
    #[default]
    Pending,
    /// A ticker is firing it.
    Running,
    /// Every occurrence was handled.
    Done,
    /// Stopped on request.
    Cancelled,
    /// Cannot run (no such schedule, invalid range); see `error`.
    Failed,
}

impl BackfillStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillStatus::Pending => "pending",
            BackfillStatus::Running => "running",
            BackfillStatus::Done => "done",
            BackfillStatus::Cancelled => "cancelled",
            BackfillStatus::Failed => "failed",
        }
    }

    /// True once nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, BackfillStatus::Done | BackfillStatus::Cancelled | BackfillStatus::Failed)
    }
}

/// How far a backfill got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BackfillProgress {
    /// Occurrences in the range.
    pub total: u64,
    /// Fires this backfill published that started a run.
    pub fired: u64,
    /// Occurrences whose run already existed (ran, or is running).
    pub already_ran: u64,
    /// Occurrences not fired: later than when the backfill handled them (the
    /// ticker fires those itself).
    pub skipped: u64,
    /// Every occurrence at or before this instant is handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Timestamp>,
    /// The ticker executing it.
    pub by: String,
    /// When this was written.
    pub updated_at: Timestamp,
}

/// What a `backfill` event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillReport {
    /// The backfill id (its key in the backfills bucket).
    pub id: String,
    /// Where it stands.
    pub status: BackfillStatus,
    /// Its counts.
    pub progress: BackfillProgress,
}

impl BackfillProgress {
    /// Occurrences handled so far.
    pub fn handled(&self) -> u64 {
        self.fired + self.already_ran + self.skipped
    }
}

impl Backfill {
    /// Parses and checks a stored backfill.
    pub fn from_json(bytes: &[u8]) -> Result<Backfill, String> {
        let b: Backfill = serde_json::from_slice(bytes).map_err(|e| format!("malformed backfill: {e}"))?;
        b.validate()?;
        Ok(b)
    }

    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        crate::names::validate_name("schedule", &self.schedule).map_err(|e| e.to_string())?;
        if self.from > self.to {
            return Err(format!("from ({}) is after to ({})", self.from, self.to));
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_written_backfill_is_pending_with_defaults() {
        let b = Backfill::from_json(
            br#"{"schedule": "nightly", "from": "2026-03-01T00:00:00Z", "to": "2026-03-31T23:59:59Z"}"#,
        )
        .unwrap();
        assert_eq!((b.status, b.max_in_flight, b.progress.clone()), (BackfillStatus::Pending, 10, None));
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains(r#""status":"pending""#), "{text}");
    }

    #[test]
    fn bad_backfills_say_why() {
        for (doc, needle) in [
            (r#"{"schedule": "n", "from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}"#, "after"),
            (r#"{"schedule": "n.x", "from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}"#, "schedule"),
            (
                r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "max_in_flight": 0}"#,
                "at least 1",
            ),
            (r#"{"schedule": "n", "from": "yesterday", "to": "2026-03-01T00:00:00Z"}"#, "malformed"),
            (
                r#"{"schedule": "n", "from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "typo": 1}"#,
                "unknown field",
            ),
        ] {
            let err = Backfill::from_json(doc.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }
}

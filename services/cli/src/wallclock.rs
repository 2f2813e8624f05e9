//! Fire times as people read them: on a zone's wall clock, with a note where
//! daylight saving time makes one look odd. Shared by `schedule preview`
//! and `schedule backfill`.

use jetsched_calendar::Cron;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// `t` on the wall clock of `tz`, with its offset and zone abbreviation.
pub(crate) fn local_time(tz: &TimeZone, t: Timestamp) -> String {
    t.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%d %H:%M:%S%.f %:z %Z").to_string()
}

/// Why a fire time looks odd on the wall clock: a repeated local time, or a
/// local time shifted out of a DST gap.
pub(crate) fn dst_note(tz: &TimeZone, cron: Option<&Cron>, t: Timestamp) -> Option<&'static str> {
    let civil = tz.to_datetime(t);
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Fold { before, .. } if tz.to_offset(t) == before => {
            Some("DST fold: first of two such local times")
        }
        AmbiguousOffset::Fold { .. } => Some("DST fold: second of two such local times"),
        _ => {
            let cron = cron?;
            let probe = civil.checked_sub(SignedDuration::from_secs(1)).ok()?;
            (cron.next_after(probe) != Some(civil))
                .then_some("DST gap: the scheduled local time does not exist; shifted")
        }
    }
}

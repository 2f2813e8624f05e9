//! What happens to occurrences found late: when a ticker takes a partition
//! over (after a crash, at start-up, on rebalancing) or loads a schedule, the
//! occurrences between what was already handled and now are replayed under
//! the schedule's misfire policy.
//!
//! An occurrence late by at most the misfire threshold is not a misfire: it
//! fires whatever the policy (a handover between tickers takes milliseconds
//! and must not count as an outage). Later ones are misfires:
//! - `skip`: none fires;
//! - `latest`: the most recent one within `misfire.window` fires;
//! - `all`: every one within the window fires, at most `misfire.max` (the
//!   most recent ones).
//!
//! Misfires that do not fire are counted and reported in one `missed` event.
//! Pure logic: no I/O, time passed in.

use std::time::Duration;

use jetsched_calendar::Calendar;
use jetsched_contract::{Misfire, MisfirePolicy};
use jiff::{SignedDuration, Timestamp};

/// At most this many occurrences are listed or counted per replay; beyond
/// it (a per-second cron schedule down for more than a day) the missed count
/// stops growing.
pub const SCAN_CAP: u64 = 100_000;

/// The outcome of a replay.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    /// Occurrences to fire now, oldest first.
    pub fire: Vec<Timestamp>,
    /// Occurrences that will not fire.
    pub missed: u64,
    /// The latest of them.
    pub last_missed: Option<Timestamp>,
}

impl Replay {
    fn miss(&mut self, count: u64, last: Option<Timestamp>) {
        self.missed += count;
        if last > self.last_missed {
            self.last_missed = last;
        }
    }
}

/// Replays the occurrences of `calendar` in `(floor, now]`. `budget` is how
/// many more times the schedule may fire (`max_runs`); fires beyond it are
/// dropped, not reported.
pub fn replay(
    calendar: &Calendar,
    misfire: &Misfire,
    threshold: Duration,
    floor: Timestamp,
    now: Timestamp,
    budget: u64,
) -> Replay {
    let mut out = Replay::default();
    if now <= floor {
        return out;
    }
    let ago =
        |d: Duration| SignedDuration::try_from(d).ok().and_then(|d| now.checked_sub(d).ok()).unwrap_or(Timestamp::MIN);
    let (threshold_at, window_at) = (ago(threshold), ago(misfire.window.0));
    // Occurrences before both the threshold and the window can only be
    // missed: count them without listing them.
    let listed_from = floor.max(threshold_at.min(window_at));
    let older = calendar.span(floor, listed_from, SCAN_CAP);
    out.miss(older.count, older.last);

    let limit = usize::try_from(SCAN_CAP).unwrap_or(usize::MAX);
    let recent: Vec<Timestamp> = calendar.iter_after(listed_from).take_while(|t| *t <= now).take(limit).collect();
    if let Some(&last) = recent.last()
        && recent.len() == limit
    {
        // Too many to list: the rest up to now is counted as missed.
        let rest = calendar.span(last, now, SCAN_CAP);
        out.miss(rest.count, rest.last);
    }
    let (on_time, late): (Vec<Timestamp>, Vec<Timestamp>) = recent.into_iter().partition(|t| *t >= threshold_at);
    let (eligible, too_old): (Vec<Timestamp>, Vec<Timestamp>) = late.into_iter().partition(|t| *t >= window_at);
    out.miss(too_old.len() as u64, too_old.last().copied());
    let keep = match misfire.policy {
        MisfirePolicy::Skip => 0,
        // An on-time fire already brings the schedule up to date.
        MisfirePolicy::Latest => usize::from(on_time.is_empty()),
        MisfirePolicy::All => misfire.max as usize,
    };
    let split = eligible.len().saturating_sub(keep);
    out.miss(split as u64, eligible[..split].last().copied());
    out.fire = eligible[split..].iter().chain(on_time.iter()).copied().collect();
    out.fire.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsched_calendar::{DstPolicy, Rule};
    use jetsched_contract::HumanDuration;
    use jiff::tz::TimeZone;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn every_second() -> Calendar {
        Calendar::new(
            Rule::Every { interval: Duration::from_secs(1), anchor: Timestamp::UNIX_EPOCH },
            TimeZone::UTC,
            DstPolicy::default(),
            None,
            None,
        )
    }

    fn misfire(policy: MisfirePolicy, window_secs: u64, max: u32) -> Misfire {
        Misfire { policy, window: HumanDuration::from_secs(window_secs), max }
    }

    const FLOOR: &str = "2026-01-01T00:00:00Z";
    const NOW: &str = "2026-01-01T00:00:05.5Z";
    const SEC: Duration = Duration::from_secs(1);

    fn run(policy: MisfirePolicy, window: u64, max: u32, threshold: Duration) -> Replay {
        replay(&every_second(), &misfire(policy, window, max), threshold, ts(FLOOR), ts(NOW), u64::MAX)
    }

    #[test]
    fn skip_fires_only_what_is_within_the_threshold() {
        // Occurrences :01..:05; :05 is 0.5 s late, within the 1 s threshold.
        let r = run(MisfirePolicy::Skip, 3600, 100, SEC);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:05Z")]);
        assert_eq!((r.missed, r.last_missed), (4, Some(ts("2026-01-01T00:00:04Z"))));
        let r = run(MisfirePolicy::Skip, 3600, 100, Duration::ZERO);
        assert!(r.fire.is_empty());
        assert_eq!((r.missed, r.last_missed), (5, Some(ts("2026-01-01T00:00:05Z"))));
    }

    #[test]
    fn latest_fires_the_most_recent_misfire() {
        let r = run(MisfirePolicy::Latest, 3600, 100, Duration::ZERO);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:05Z")]);
        assert_eq!((r.missed, r.last_missed), (4, Some(ts("2026-01-01T00:00:04Z"))));
        // An occurrence within the threshold fires on time, and is the latest.
        let r = run(MisfirePolicy::Latest, 3600, 100, SEC);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:05Z")]);
        assert_eq!((r.missed, r.last_missed), (4, Some(ts("2026-01-01T00:00:04Z"))));
    }

    #[test]
    fn all_fires_each_within_the_window_up_to_max() {
        let r = run(MisfirePolicy::All, 3600, 100, Duration::ZERO);
        assert_eq!(r.fire.len(), 5);
        assert_eq!(r.missed, 0);
        assert_eq!(r.last_missed, None);
        // At most 2: the two most recent.
        let r = run(MisfirePolicy::All, 3600, 2, Duration::ZERO);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:04Z"), ts("2026-01-01T00:00:05Z")]);
        assert_eq!((r.missed, r.last_missed), (3, Some(ts("2026-01-01T00:00:03Z"))));
        // Window 3 s: :01 and :02 are too old (4.5 s and 3.5 s late).
        let r = run(MisfirePolicy::All, 3, 100, Duration::ZERO);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:03Z"), ts("2026-01-01T00:00:04Z"), ts("2026-01-01T00:00:05Z")]);
        assert_eq!((r.missed, r.last_missed), (2, Some(ts("2026-01-01T00:00:02Z"))));
    }

    #[test]
    fn latest_outside_the_window_fires_nothing() {
        let r = replay(
            &every_second(),
            &misfire(MisfirePolicy::Latest, 60, 100),
            Duration::ZERO,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T00:00:00.5Z"),
            u64::MAX,
        );
        assert_eq!(r, Replay::default());
        let daily = Calendar::new(
            Rule::Every { interval: Duration::from_secs(86_400), anchor: Timestamp::UNIX_EPOCH },
            TimeZone::UTC,
            DstPolicy::default(),
            None,
            None,
        );
        let r = replay(
            &daily,
            &misfire(MisfirePolicy::Latest, 3600, 100),
            SEC,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-03T12:00:00Z"),
            u64::MAX,
        );
        assert!(r.fire.is_empty());
        assert_eq!((r.missed, r.last_missed), (2, Some(ts("2026-01-03T00:00:00Z"))));
    }

    #[test]
    fn long_outages_are_counted_without_listing_them() {
        let millis = Calendar::new(
            Rule::Every { interval: Duration::from_millis(1), anchor: Timestamp::UNIX_EPOCH },
            TimeZone::UTC,
            DstPolicy::default(),
            None,
            None,
        );
        let r = replay(
            &millis,
            &misfire(MisfirePolicy::Latest, 1, 100),
            Duration::ZERO,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-02T00:00:00Z"),
            u64::MAX,
        );
        assert_eq!(r.fire, vec![ts("2026-01-02T00:00:00Z")]);
        assert_eq!(r.missed, 86_400_000 - 1);
        assert_eq!(r.last_missed, Some(ts("2026-01-01T23:59:59.999Z")));
    }

    #[test]
    fn max_runs_budget_keeps_the_earliest_fires() {
        let r = replay(&every_second(), &misfire(MisfirePolicy::All, 3600, 100), Duration::ZERO, ts(FLOOR), ts(NOW), 2);
        assert_eq!(r.fire, vec![ts("2026-01-01T00:00:01Z"), ts("2026-01-01T00:00:02Z")]);
        assert_eq!(r.missed, 0);
    }

    #[test]
    fn nothing_to_replay_when_now_is_not_after_the_floor() {
        let r = run(MisfirePolicy::All, 3600, 100, SEC);
        assert!(!r.fire.is_empty());
        let none = replay(&every_second(), &misfire(MisfirePolicy::All, 3600, 100), SEC, ts(NOW), ts(FLOOR), u64::MAX);
        assert_eq!(none, Replay::default());
    }
}

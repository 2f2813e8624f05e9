//! Next-fire tests: every rule kind, bounds, and DST in New York and Berlin in
//! both directions under each gap and fold policy.

use super::*;
use crate::cron::Cron;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn cron_calendar(expr: &str, zone: &str, gap: GapPolicy, fold: FoldPolicy) -> Calendar {
    Calendar::new(
        Rule::Cron(Cron::parse(expr).unwrap()),
        TimeZone::get(zone).unwrap(),
        DstPolicy { gap, fold },
        None,
        None,
    )
}

/// Fire instants in `(from, to]`, as UTC strings.
fn fires(cal: &Calendar, from: &str, to: &str) -> Vec<String> {
    let to = ts(to);
    cal.iter_after(ts(from)).take_while(|t| *t <= to).map(|t| t.to_string()).collect()
}

fn utc(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const NY: &str = "America/New_York";
const BERLIN: &str = "Europe/Berlin";
use FoldPolicy::{Both, First, Last};
use GapPolicy::{Shift, Skip};

// New York 2026: spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z);
// fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
// Berlin 2026: spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
// fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).

#[test]
fn daily_0230_new_york_spring_forward() {
    let shift = cron_calendar("30 2 * * *", NY, Shift, First);
    assert_eq!(
        fires(&shift, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
        // 02:30 EST, then the skipped 02:30 read as EST = 03:30 EDT, then 02:30 EDT.
        utc(&["2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"])
    );
    let skip = cron_calendar("30 2 * * *", NY, Skip, First);
    assert_eq!(
        fires(&skip, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
        utc(&["2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z"])
    );
}

#[test]
fn daily_0230_new_york_fall_back_is_outside_the_fold() {
    // New York repeats 01:00-02:00, so 02:30 happens once under every policy.
    for fold in [First, Last, Both] {
        let cal = cron_calendar("30 2 * * *", NY, Shift, fold);
        assert_eq!(
            fires(&cal, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
            utc(&["2026-10-31T06:30:00Z", "2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"]),
            "{fold:?}"
        );
    }
}

#[test]
fn daily_0130_new_york_fall_back_follows_fold_policy() {
    let window = ("2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z");
    let first = cron_calendar("30 1 * * *", NY, Shift, First);
    assert_eq!(fires(&first, window.0, window.1), utc(&["2026-11-01T05:30:00Z"]));
    let last = cron_calendar("30 1 * * *", NY, Shift, Last);
    assert_eq!(fires(&last, window.0, window.1), utc(&["2026-11-01T06:30:00Z"]));
    let both = cron_calendar("30 1 * * *", NY, Shift, Both);
    assert_eq!(fires(&both, window.0, window.1), utc(&["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"]));
}

#[test]
fn daily_0230_berlin_spring_forward() {
    let shift = cron_calendar("0 30 2 * * *", BERLIN, Shift, First);
    assert_eq!(
        fires(&shift, "2026-03-28T00:00:00Z", "2026-03-30T12:00:00Z"),
        utc(&["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"])
    );
    let skip = cron_calendar("0 30 2 * * *", BERLIN, Skip, First);
    assert_eq!(
        fires(&skip, "2026-03-28T00:00:00Z", "2026-03-30T12:00:00Z"),
        utc(&["2026-03-28T01:30:00Z", "2026-03-30T00:30:00Z"])
    );
}

#[test]
fn daily_0230_berlin_fall_back_follows_fold_policy() {
    let window = ("2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z");
    for (fold, expected) in [
        (First, vec!["2026-10-25T00:30:00Z"]),
        (Last, vec!["2026-10-25T01:30:00Z"]),
        (Both, vec!["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"]),
    ] {
        for gap in [Skip, Shift] {
            let cal = cron_calendar("30 2 * * *", BERLIN, gap, fold);
            assert_eq!(fires(&cal, window.0, window.1), utc(&expected), "{gap:?} {fold:?}");
        }
    }
}

#[test]
fn hourly_new_york_spring_forward_fires_once_per_real_hour() {
    // The skipped 02:00 read as EST is 03:00 EDT: the same instant fires once.
    for gap in [Skip, Shift] {
        let cal = cron_calendar("0 * * * *", NY, gap, First);
        assert_eq!(
            fires(&cal, "2026-03-08T04:30:00Z", "2026-03-08T08:00:00Z"),
            utc(&["2026-03-08T05:00:00Z", "2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"]),
            "{gap:?}"
        );
    }
}

#[test]
fn hourly_new_york_fall_back_follows_fold_policy() {
    let window = ("2026-11-01T03:30:00Z", "2026-11-01T07:00:00Z");
    for (fold, expected) in [
        (First, vec!["2026-11-01T04:00:00Z", "2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z"]),
        (Last, vec!["2026-11-01T04:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"]),
        (Both, vec!["2026-11-01T04:00:00Z", "2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"]),
    ] {
        for gap in [Skip, Shift] {
            let cal = cron_calendar("0 * * * *", NY, gap, fold);
            assert_eq!(fires(&cal, window.0, window.1), utc(&expected), "{gap:?} {fold:?}");
        }
    }
}

#[test]
fn hourly_berlin_both_directions() {
    for gap in [Skip, Shift] {
        let cal = cron_calendar("0 * * * *", BERLIN, gap, First);
        assert_eq!(
            fires(&cal, "2026-03-28T22:30:00Z", "2026-03-29T02:00:00Z"),
            utc(&["2026-03-28T23:00:00Z", "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]),
            "{gap:?}"
        );
    }
    let window = ("2026-10-24T22:30:00Z", "2026-10-25T02:00:00Z");
    for (fold, expected) in [
        (First, vec!["2026-10-24T23:00:00Z", "2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"]),
        (Last, vec!["2026-10-24T23:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"]),
        (Both, vec!["2026-10-24T23:00:00Z", "2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"]),
    ] {
        let cal = cron_calendar("0 * * * *", BERLIN, Shift, fold);
        assert_eq!(fires(&cal, window.0, window.1), utc(&expected), "{fold:?}");
    }
}

#[test]
fn every_15_minutes_cron_new_york_both_directions() {
    for gap in [Skip, Shift] {
        let cal = cron_calendar("*/15 * * * *", NY, gap, First);
        assert_eq!(
            fires(&cal, "2026-03-08T06:30:00Z", "2026-03-08T07:15:00Z"),
            utc(&["2026-03-08T06:45:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:15:00Z"]),
            "{gap:?}"
        );
    }
    let window = ("2026-11-01T04:50:00Z", "2026-11-01T07:00:00Z");
    let q = |h: u8| [0, 15, 30, 45].map(|m| format!("2026-11-01T{h:02}:{m:02}:00Z"));
    let first: Vec<String> = q(5).into_iter().chain(["2026-11-01T07:00:00Z".to_string()]).collect();
    let last: Vec<String> = q(6).into_iter().chain(["2026-11-01T07:00:00Z".to_string()]).collect();
    let both: Vec<String> = q(5).into_iter().chain(q(6)).chain(["2026-11-01T07:00:00Z".to_string()]).collect();
    assert_eq!(fires(&cron_calendar("*/15 * * * *", NY, Shift, First), window.0, window.1), first);
    assert_eq!(fires(&cron_calendar("*/15 * * * *", NY, Shift, Last), window.0, window.1), last);
    assert_eq!(fires(&cron_calendar("*/15 * * * *", NY, Skip, Both), window.0, window.1), both);
}

#[test]
fn every_15_minutes_cron_berlin_both_directions() {
    for gap in [Skip, Shift] {
        let cal = cron_calendar("*/15 * * * *", BERLIN, gap, First);
        assert_eq!(
            fires(&cal, "2026-03-29T00:30:00Z", "2026-03-29T01:15:00Z"),
            utc(&["2026-03-29T00:45:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:15:00Z"]),
            "{gap:?}"
        );
    }
    let q = |h: u8| [0, 15, 30, 45].map(|m| format!("2026-10-25T{h:02}:{m:02}:00Z"));
    let window = ("2026-10-24T23:50:00Z", "2026-10-25T02:00:00Z");
    let tail = || ["2026-10-25T02:00:00Z".to_string()];
    let first: Vec<String> = q(0).into_iter().chain(tail()).collect();
    let last: Vec<String> = q(1).into_iter().chain(tail()).collect();
    let both: Vec<String> = q(0).into_iter().chain(q(1)).chain(tail()).collect();
    assert_eq!(fires(&cron_calendar("*/15 * * * *", BERLIN, Shift, First), window.0, window.1), first);
    assert_eq!(fires(&cron_calendar("*/15 * * * *", BERLIN, Shift, Last), window.0, window.1), last);
    assert_eq!(fires(&cron_calendar("*/15 * * * *", BERLIN, Shift, Both), window.0, window.1), both);
}

#[test]
fn fold_last_from_inside_the_first_pass_finds_the_second_pass() {
    // At 01:30 EDT (first pass) the next 'last' fire is 01:00 EST, an earlier civil time.
    let cal = cron_calendar("0 * * * *", NY, Shift, Last);
    assert_eq!(cal.next_after(ts("2026-11-01T05:30:00Z")), Some(ts("2026-11-01T06:00:00Z")));
}

#[test]
fn every_interval_is_elapsed_time_across_dst() {
    let cal = Calendar::new(
        Rule::Every { interval: Duration::from_secs(15 * 60), anchor: Timestamp::UNIX_EPOCH },
        TimeZone::get(NY).unwrap(),
        DstPolicy::default(),
        None,
        None,
    );
    assert_eq!(fires(&cal, "2026-11-01T04:00:00Z", "2026-11-01T07:00:00Z").len(), 12);
    assert_eq!(fires(&cal, "2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z").len(), 8);
}

#[test]
fn every_with_phase_is_offset_from_the_anchor() {
    let anchor = Timestamp::UNIX_EPOCH.checked_add(SignedDuration::from_secs(5)).unwrap();
    let cal = Calendar::new(
        Rule::Every { interval: Duration::from_secs(15), anchor },
        TimeZone::UTC,
        DstPolicy::default(),
        None,
        None,
    );
    assert_eq!(
        fires(&cal, "2026-01-01T00:00:00Z", "2026-01-01T00:00:40Z"),
        utc(&["2026-01-01T00:00:05Z", "2026-01-01T00:00:20Z", "2026-01-01T00:00:35Z"])
    );
    // Exactly on an occurrence: the next one is strictly after.
    assert_eq!(cal.next_after(ts("2026-01-01T00:00:05Z")), Some(ts("2026-01-01T00:00:20Z")));
}

#[test]
fn at_fires_once() {
    let cal = Calendar::new(Rule::At(ts("2026-12-24T18:00:00Z")), TimeZone::UTC, DstPolicy::default(), None, None);
    assert_eq!(cal.next_after(ts("2026-12-01T00:00:00Z")), Some(ts("2026-12-24T18:00:00Z")));
    assert_eq!(cal.next_after(ts("2026-12-24T18:00:00Z")), None);
}

#[test]
fn start_and_end_bound_the_series() {
    let cal = Calendar::new(
        Rule::Cron(Cron::parse("0 * * * *").unwrap()),
        TimeZone::UTC,
        DstPolicy::default(),
        Some(ts("2026-01-01T03:00:00Z")),
        Some(ts("2026-01-01T05:00:00Z")),
    );
    // The start instant itself is included, the end instant too.
    assert_eq!(
        fires(&cal, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        utc(&["2026-01-01T03:00:00Z", "2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z"])
    );
    let every = Calendar::new(
        Rule::Every { interval: Duration::from_secs(60), anchor: ts("2026-01-01T00:00:30Z") },
        TimeZone::UTC,
        DstPolicy::default(),
        Some(ts("2026-01-01T00:00:30Z")),
        None,
    );
    assert_eq!(every.next_after(ts("2025-12-31T00:00:00Z")), Some(ts("2026-01-01T00:00:30Z")));
}

#[test]
fn zone_matters_for_cron() {
    let cal = cron_calendar("0 9 * * *", "Asia/Tokyo", Shift, First);
    assert_eq!(cal.next_after(ts("2026-06-01T00:00:00Z")), Some(ts("2026-06-02T00:00:00Z")));
}

#[test]
fn jitter_is_deterministic_and_bounded() {
    let nominal = ts("2026-01-01T00:00:00Z");
    let max = Duration::from_secs(10);
    let a = jitter_offset("nightly", nominal, max);
    assert_eq!(a, jitter_offset("nightly", nominal, max));
    assert!(a < max);
    assert_ne!(a, jitter_offset("other", nominal, max));
    assert_eq!(jitter_offset("nightly", nominal, Duration::ZERO), Duration::ZERO);
}

#[test]
fn span_matches_iteration_for_every_with_bounds() {
    let cal = Calendar::new(
        Rule::Every { interval: Duration::from_millis(250), anchor: ts("2026-01-01T00:00:00.1Z") },
        TimeZone::UTC,
        DstPolicy::default(),
        Some(ts("2026-01-01T00:00:00.1Z")),
        Some(ts("2026-01-01T00:00:10Z")),
    );
    for (from, to) in [
        ("2025-12-31T23:59:00Z", "2026-01-01T00:00:05Z"),
        ("2026-01-01T00:00:00.1Z", "2026-01-01T00:00:00.35Z"),
        ("2026-01-01T00:00:03Z", "2026-01-01T00:01:00Z"),
        ("2026-01-01T00:00:20Z", "2026-01-01T00:01:00Z"),
        ("2026-01-01T00:00:05Z", "2026-01-01T00:00:05Z"),
    ] {
        let listed: Vec<Timestamp> = cal.iter_after(ts(from)).take_while(|t| *t <= ts(to)).collect();
        let span = cal.span(ts(from), ts(to), u64::MAX);
        assert_eq!(span.count, listed.len() as u64, "({from}, {to}]");
        assert_eq!((span.first, span.last), (listed.first().copied(), listed.last().copied()), "({from}, {to}]");
    }
    assert_eq!(cal.span(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:00:10Z"), 7).count, 40, "every is exact");
    let cron = cron_calendar("* * * * * *", "UTC", Shift, First);
    assert_eq!(cron.span(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T01:00:00Z"), 100).count, 100, "capped");
    let half_minute = cron.span(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:00:30Z"), 100);
    assert_eq!(
        half_minute,
        Span { count: 30, first: Some(ts("2026-01-01T00:00:01Z")), last: Some(ts("2026-01-01T00:00:30Z")) }
    );
}

#[test]
fn every_with_phase_and_start_anchors_at_start_plus_phase() {
    // start_at 10:00:00 plus phase 20s, every minute: 10:00:20, 10:01:20, ...
    let cal = Calendar::new(
        Rule::Every { interval: Duration::from_secs(60), anchor: ts("2026-01-01T10:00:20Z") },
        TimeZone::UTC,
        DstPolicy::default(),
        Some(ts("2026-01-01T10:00:00Z")),
        Some(ts("2026-01-01T10:03:00Z")),
    );
    assert_eq!(
        fires(&cal, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        utc(&["2026-01-01T10:00:20Z", "2026-01-01T10:01:20Z", "2026-01-01T10:02:20Z"])
    );
}

#[test]
fn at_outside_its_bounds_never_fires() {
    let at = ts("2026-12-24T18:00:00Z");
    let before_start =
        Calendar::new(Rule::At(at), TimeZone::UTC, DstPolicy::default(), Some(ts("2026-12-25T00:00:00Z")), None);
    assert_eq!(before_start.next_after(ts("2026-01-01T00:00:00Z")), None);
    let after_end =
        Calendar::new(Rule::At(at), TimeZone::UTC, DstPolicy::default(), None, Some(ts("2026-12-24T17:59:59Z")));
    assert_eq!(after_end.next_after(ts("2026-01-01T00:00:00Z")), None);
}

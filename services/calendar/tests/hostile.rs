//! Hostile input to the calendar: any text as a cron expression, cron-like
//! expressions built from every field syntax with out-of-range and huge
//! numbers, and huge ranges. Nothing panics, every answer comes within a
//! deadline (no search without a bound), and a count over a century of
//! per-second fires is bounded by its cap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc;
use std::time::Duration;

use jetsched_calendar::{Calendar, Cron, DstPolicy, Rule};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

/// Runs `f` on a thread of its own and fails if it has not answered within
/// `secs` (a hang is a failure, not a stuck test run).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not answer within {secs}s"),
    }
}

/// One cron field in any of the syntaxes, with numbers in and far out of range.
fn field() -> impl Strategy<Value = String> {
    let number = prop_oneof![0u64..70, Just(u64::MAX), Just(4_294_967_296u64), 0u64..100_000_000_000];
    let atom = prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        Just("L".to_string()),
        Just("LW".to_string()),
        Just("JAN".to_string()),
        Just("mon".to_string()),
        number.clone().prop_map(|n| n.to_string()),
        (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (number.clone(), number.clone()).prop_map(|(a, s)| format!("{a}/{s}")),
        number.clone().prop_map(|s| format!("*/{s}")),
        number.clone().prop_map(|n| format!("{n}W")),
        (number.clone(), number.clone()).prop_map(|(d, n)| format!("{d}#{n}")),
        number.prop_map(|n| format!("{n}L")),
        "[-,/#LW*?0-9]{1,8}",
    ];
    prop::collection::vec(atom, 1..4).prop_map(|atoms| atoms.join(","))
}

fn cron_like() -> impl Strategy<Value = String> {
    prop::collection::vec(field(), 4..8).prop_map(|fields| fields.join(" "))
}

fn instant() -> impl Strategy<Value = Timestamp> {
    (-2_000_000_000i64..250_000_000_000i64).prop_map(|s| Timestamp::from_second(s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_cron_is_an_answer_not_a_panic(text in any::<String>()) {
        let _ = within(10, "Cron::parse", move || Cron::parse(&text).map(|_| ()));
    }

    #[test]
    fn cron_like_expressions_parse_or_explain_and_the_next_fire_comes_after(expr in cron_like(), after in instant()) {
        let parsed = within(10, "Cron::parse", {
            let expr = expr.clone();
            move || Cron::parse(&expr)
        });
        match parsed {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(cron) => {
                let calendar = Calendar::new(Rule::Cron(cron), TimeZone::UTC, DstPolicy::default(), None, None);
                let next: Vec<Timestamp> = within(10, "the next fires", move || calendar.iter_after(after).take(5).collect());
                prop_assert!(next.windows(2).all(|w| w[0] < w[1]), "fires go forward: {next:?}");
                prop_assert!(next.first().is_none_or(|t| *t > after));
            }
        }
    }

    #[test]
    fn next_after_any_civil_time_answers(expr in cron_like(), year in 1i16..9999, day in 0i64..366) {
        if let Ok(cron) = Cron::parse(&expr) {
            let start = DateTime::new(year, 1, 1, 0, 0, 0, 0).unwrap();
            let start = start.checked_add(SignedDuration::from_hours(24 * day)).unwrap_or(start);
            let next = within(10, "next_after", move || cron.next_after(start));
            prop_assert!(next.is_none_or(|n| n > start));
        }
    }
}

#[test]
fn a_century_of_per_second_fires_is_counted_within_its_cap() {
    let from = Timestamp::from_second(1_700_000_000).unwrap();
    let upto = from.checked_add(SignedDuration::from_hours(24 * 365 * 100)).unwrap();
    for expr in ["*/1 * * * * *", "* * * * * *"] {
        let cron =
            Calendar::new(Rule::Cron(Cron::parse(expr).unwrap()), TimeZone::UTC, DstPolicy::default(), None, None);
        let span = within(30, "a capped span", move || cron.span(from, upto, 10_000));
        assert_eq!(span.count, 10_000, "{expr}: stops at the cap");
    }
    let every = Calendar::new(
        Rule::Every { interval: Duration::from_secs(1), anchor: Timestamp::UNIX_EPOCH },
        TimeZone::UTC,
        DstPolicy::default(),
        None,
        None,
    );
    let span = within(10, "an every span", move || every.span(from, upto, 10));
    assert_eq!(span.count, 100 * 365 * 86_400, "every is counted exactly, not iterated");
}

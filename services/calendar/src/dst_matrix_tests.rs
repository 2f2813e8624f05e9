//! The DST matrix: a daily 02:30 job, an hourly job, an every-15-minutes cron
//! job and an `every: 15m` job, across each transition of New York and
//! Berlin, under every combination of gap and fold policy. A spring-forward
//! answer depends only on the gap policy, a fall-back answer only on the fold
//! policy; the table says which, and every combination is checked.

use super::*;
use crate::cron::Cron;

const NY: &str = "America/New_York";
const BERLIN: &str = "Europe/Berlin";
const GAPS: [GapPolicy; 2] = [GapPolicy::Skip, GapPolicy::Shift];
const FOLDS: [FoldPolicy; 3] = [FoldPolicy::First, FoldPolicy::Last, FoldPolicy::Both];

/// Expected UTC fire instants in a window, per policy.
enum Expect {
    /// A spring-forward window: (under gap = skip, under gap = shift).
    Spring(&'static [&'static str], &'static [&'static str]),
    /// A fall-back window: (fold = first, fold = last, fold = both).
    Fall(&'static [&'static str], &'static [&'static str], &'static [&'static str]),
    /// The same under every policy.
    Always(&'static [&'static str]),
}

struct Case {
    what: &'static str,
    rule: fn() -> Rule,
    zone: &'static str,
    window: (&'static str, &'static str),
    expect: Expect,
}

fn cron(expr: &str) -> Rule {
    Rule::Cron(Cron::parse(expr).unwrap())
}

fn every_15m() -> Rule {
    Rule::Every { interval: Duration::from_secs(15 * 60), anchor: Timestamp::UNIX_EPOCH }
}

// New York 2026: spring forward 03-08 02:00 EST -> 03:00 EDT (07:00Z); fall back
// 11-01 02:00 EDT -> 01:00 EST (06:00Z), so 01:00-02:00 happens twice.
// Berlin 2026: spring forward 03-29 02:00 CET -> 03:00 CEST (01:00Z); fall back
// 10-25 03:00 CEST -> 02:00 CET (01:00Z), so 02:00-03:00 happens twice.
const CASES: &[Case] = &[
    Case {
        what: "daily 02:30, New York spring",
        rule: || cron("30 2 * * *"),
        zone: NY,
        window: ("2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
        // 02:30 does not exist on 03-08; shifted it is 02:30 EST = 03:30 EDT.
        expect: Expect::Spring(&["2026-03-09T06:30:00Z"], &["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]),
    },
    Case {
        what: "daily 02:30, New York fall",
        rule: || cron("30 2 * * *"),
        zone: NY,
        window: ("2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
        // New York repeats 01:00-02:00: 02:30 happens once.
        expect: Expect::Always(&["2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"]),
    },
    Case {
        what: "daily 02:30, Berlin spring",
        rule: || cron("0 30 2 * * *"),
        zone: BERLIN,
        window: ("2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
        expect: Expect::Spring(&["2026-03-30T00:30:00Z"], &["2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]),
    },
    Case {
        what: "daily 02:30, Berlin fall",
        rule: || cron("0 30 2 * * *"),
        zone: BERLIN,
        window: ("2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
        expect: Expect::Fall(
            &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            &["2026-10-25T01:30:00Z", "2026-10-26T01:30:00Z"],
            &["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-26T01:30:00Z"],
        ),
    },
    Case {
        what: "hourly, New York spring",
        rule: || cron("0 * * * *"),
        zone: NY,
        window: ("2026-03-08T04:30:00Z", "2026-03-08T09:00:00Z"),
        // The missing 02:00 shifted is 03:00 EDT, the same instant: one fire.
        expect: Expect::Always(&[
            "2026-03-08T05:00:00Z",
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T08:00:00Z",
            "2026-03-08T09:00:00Z",
        ]),
    },
    Case {
        what: "hourly, New York fall",
        rule: || cron("0 * * * *"),
        zone: NY,
        window: ("2026-11-01T03:30:00Z", "2026-11-01T08:00:00Z"),
        expect: Expect::Fall(
            &["2026-11-01T04:00:00Z", "2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"],
            &["2026-11-01T04:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"],
            &[
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z",
                "2026-11-01T08:00:00Z",
            ],
        ),
    },
    Case {
        what: "hourly, Berlin spring",
        rule: || cron("0 0 * * * *"),
        zone: BERLIN,
        window: ("2026-03-28T22:30:00Z", "2026-03-29T03:00:00Z"),
        expect: Expect::Always(&[
            "2026-03-28T23:00:00Z",
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T02:00:00Z",
            "2026-03-29T03:00:00Z",
        ]),
    },
    Case {
        what: "hourly, Berlin fall",
        rule: || cron("0 0 * * * *"),
        zone: BERLIN,
        window: ("2026-10-24T22:30:00Z", "2026-10-25T03:00:00Z"),
        expect: Expect::Fall(
            &["2026-10-24T23:00:00Z", "2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"],
            &["2026-10-24T23:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"],
            &[
                "2026-10-24T23:00:00Z",
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z",
            ],
        ),
    },
    Case {
        what: "cron every 15 minutes, New York spring",
        rule: || cron("*/15 * * * *"),
        zone: NY,
        window: ("2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"),
        // 02:15 shifted is 02:15 EST = 03:15 EDT: the gap adds no instants.
        expect: Expect::Always(&[
            "2026-03-08T06:45:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:15:00Z",
            "2026-03-08T07:30:00Z",
        ]),
    },
    Case {
        what: "cron every 15 minutes, New York fall",
        rule: || cron("*/15 * * * *"),
        zone: NY,
        window: ("2026-11-01T04:50:00Z", "2026-11-01T07:00:00Z"),
        expect: Expect::Fall(
            &[
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:15:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T05:45:00Z",
                "2026-11-01T07:00:00Z",
            ],
            &[
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:15:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T06:45:00Z",
                "2026-11-01T07:00:00Z",
            ],
            &[
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:15:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T05:45:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:15:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T06:45:00Z",
                "2026-11-01T07:00:00Z",
            ],
        ),
    },
    Case {
        what: "cron every 15 minutes, Berlin spring",
        rule: || cron("0 */15 * * * *"),
        zone: BERLIN,
        window: ("2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"),
        expect: Expect::Always(&[
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
            "2026-03-29T01:30:00Z",
        ]),
    },
    Case {
        what: "cron every 15 minutes, Berlin fall",
        rule: || cron("0 */15 * * * *"),
        zone: BERLIN,
        window: ("2026-10-24T23:50:00Z", "2026-10-25T02:00:00Z"),
        expect: Expect::Fall(
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-25T02:00:00Z",
            ],
            &[
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z",
                "2026-10-25T02:00:00Z",
            ],
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z",
                "2026-10-25T02:00:00Z",
            ],
        ),
    },
    Case {
        what: "every 15m, New York spring",
        rule: every_15m,
        zone: NY,
        window: ("2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"),
        // Elapsed time: DST changes nothing.
        expect: Expect::Always(&[
            "2026-03-08T06:45:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:15:00Z",
            "2026-03-08T07:30:00Z",
        ]),
    },
    Case {
        what: "every 15m, New York fall",
        rule: every_15m,
        zone: NY,
        window: ("2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"),
        expect: Expect::Always(&[
            "2026-11-01T05:45:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:15:00Z",
            "2026-11-01T06:30:00Z",
        ]),
    },
    Case {
        what: "every 15m, Berlin spring",
        rule: every_15m,
        zone: BERLIN,
        window: ("2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"),
        expect: Expect::Always(&[
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
            "2026-03-29T01:30:00Z",
        ]),
    },
    Case {
        what: "every 15m, Berlin fall",
        rule: every_15m,
        zone: BERLIN,
        window: ("2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"),
        expect: Expect::Always(&[
            "2026-10-25T00:45:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:15:00Z",
            "2026-10-25T01:30:00Z",
        ]),
    },
];

#[test]
fn every_job_across_every_transition_under_every_policy() {
    let mut checked = 0;
    for case in CASES {
        for gap in GAPS {
            for fold in FOLDS {
                let cal = Calendar::new(
                    (case.rule)(),
                    TimeZone::get(case.zone).unwrap(),
                    DstPolicy { gap, fold },
                    None,
                    None,
                );
                let from: Timestamp = case.window.0.parse().unwrap();
                let to: Timestamp = case.window.1.parse().unwrap();
                let got: Vec<String> = cal.iter_after(from).take_while(|t| *t <= to).map(|t| t.to_string()).collect();
                let expected: &[&str] = match (&case.expect, gap, fold) {
                    (Expect::Always(all), _, _) => all,
                    (Expect::Spring(skip, _), GapPolicy::Skip, _) => skip,
                    (Expect::Spring(_, shift), GapPolicy::Shift, _) => shift,
                    (Expect::Fall(first, _, _), _, FoldPolicy::First) => first,
                    (Expect::Fall(_, last, _), _, FoldPolicy::Last) => last,
                    (Expect::Fall(_, _, both), _, FoldPolicy::Both) => both,
                };
                assert_eq!(got, expected, "{} under gap={gap:?} fold={fold:?}", case.what);
                // Counting agrees with listing (the ticker counts missed fires this way).
                let span = cal.span(from, to, u64::MAX);
                assert_eq!(span.count, expected.len() as u64, "{}", case.what);
                assert_eq!(span.first.map(|t| t.to_string()).as_deref(), expected.first().copied(), "{}", case.what);
                assert_eq!(span.last.map(|t| t.to_string()).as_deref(), expected.last().copied(), "{}", case.what);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16 * 6);
}

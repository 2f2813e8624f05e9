//! Time windows: the value under a window name in `jetsched-windows`. A task
//! naming a window only starts inside it; a run that becomes runnable outside
//! is deferred until the window opens (or skipped, if the window says so).
//!
//! ```json
//! {"timezone": "Europe/Berlin",
//!  "weekly": {"mon": ["09:00-12:00", "13:00-17:30"], "tue": ["09:00-17:30"]},
//!  "blackout_dates": ["2026-12-24"],
//!  "outside": "defer"}
//! ```
//! Days missing from `weekly` are closed. A range ending before it starts
//! runs past midnight (`"22:00-02:00"`); `24:00` ends at midnight.

use std::collections::BTreeMap;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// What happens to a run that becomes runnable outside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Outside {
    /// Wait (durably, in the stream) until the window opens.
    #[default]
    Defer,
    /// Do not run it; a `skipped` event says why.
    Skip,
}

/// A weekly calendar of allowed hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDef {
    /// IANA zone the hours are in; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Open ranges per weekday (`mon`..`sun`), `HH:MM[:SS]-HH:MM[:SS]`.
    #[serde(default)]
    pub weekly: BTreeMap<String, Vec<String>>,
    /// Dates (in the zone) when the window stays closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout_dates: Vec<Date>,
    /// defer (default) or skip.
    #[serde(default)]
    pub outside: Outside,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A compiled window.
#[derive(Debug, Clone)]
pub struct Window {
    tz: TimeZone,
    /// Per weekday (Monday first): open ranges as seconds of the day, and
    /// whether the range is the after-midnight part of the previous day's
    /// (a blackout of that previous day closes it too).
    days: [Vec<(u32, u32, bool)>; 7],
    blackout: Vec<Date>,
    /// What happens outside.
    pub outside: Outside,
}

fn parse_time(s: &str) -> Result<u32, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let nums: Result<Vec<u32>, _> = parts.iter().map(|p| p.parse::<u32>()).collect();
    let nums = nums.map_err(|_| format!("{s:?} is not HH:MM or HH:MM:SS"))?;
    let (h, m, sec) = match nums.as_slice() {
        [h, m] => (*h, *m, 0),
        [h, m, sec] => (*h, *m, *sec),
        _ => return Err(format!("{s:?} is not HH:MM or HH:MM:SS")),
    };
    if (h == 24 && m == 0 && sec == 0) || (h < 24 && m < 60 && sec < 60) {
        Ok(h * 3600 + m * 60 + sec)
    } else {
        Err(format!("{s:?} is not a time of day"))
    }
}

impl WindowDef {
    /// Parses and compiles a window stored under `name`.
    pub fn from_json(name: &str, bytes: &[u8]) -> Result<Window, String> {
        crate::names::validate_name("window", name).map_err(|e| e.to_string())?;
        let def: WindowDef = serde_json::from_slice(bytes).map_err(|e| format!("malformed window: {e}"))?;
        def.compile().map_err(crate::headers::bounded)
    }

    /// Checks and compiles the definition.
    pub fn compile(&self) -> Result<Window, String> {
        let tz = match self.timezone.as_deref() {
            None | Some("UTC") => TimeZone::UTC,
            Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {}", crate::headers::shown(n)))?,
        };
        let mut days: [Vec<(u32, u32, bool)>; 7] = Default::default();
        for (day, ranges) in &self.weekly {
            let i = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .ok_or_else(|| format!("unknown day {day:?} (use mon, tue, wed, thu, fri, sat, sun)"))?;
            for range in ranges {
                let (a, b) = range.split_once('-').ok_or_else(|| format!("range {range:?} is not START-END"))?;
                let (start, end) = (parse_time(a)?, parse_time(b)?);
                if start == 86_400 {
                    return Err(format!("range {range:?}: 24:00 can only end a range"));
                }
                if start == end {
                    return Err(format!("range {range:?} is empty"));
                }
                if start < end {
                    days[i].push((start, end, false));
                } else {
                    // Past midnight: the rest of this day, then the next morning.
                    days[i].push((start, 86_400, false));
                    if end > 0 {
                        days[(i + 1) % 7].push((0, end, true));
                    }
                }
            }
        }
        if days.iter().all(Vec::is_empty) {
            return Err("the window is never open (weekly has no ranges)".to_string());
        }
        for d in &mut days {
            d.sort_unstable();
        }
        Ok(Window { tz, days, blackout: self.blackout_dates.clone(), outside: self.outside })
    }
}

impl Window {
    /// The open ranges of `date`, blackouts applied (a range carried over
    /// from a blacked-out previous day is closed too).
    fn ranges(&self, date: Date) -> Vec<(u32, u32)> {
        let blocked = |d: Option<Date>| d.is_some_and(|d| self.blackout.contains(&d));
        let (today, yesterday) = (blocked(Some(date)), blocked(date.yesterday().ok()));
        self.days[date.weekday().to_monday_zero_offset() as usize]
            .iter()
            .filter(|(_, _, carried)| if *carried { !yesterday } else { !today })
            .map(|(a, b, _)| (*a, *b))
            .collect()
    }

    /// True when `t` is inside the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        let dt = self.tz.to_datetime(t);
        let secs = seconds_of(dt.time());
        self.ranges(dt.date()).iter().any(|(a, b)| secs >= *a && secs < *b)
    }

    /// `t` itself when inside, else the next instant the window opens
    /// (within a year and a bit; `None` if it never does).
    pub fn next_open(&self, t: Timestamp) -> Option<Timestamp> {
        if self.contains(t) {
            return Some(t);
        }
        let start = self.tz.to_datetime(t);
        let mut date = start.date();
        for _ in 0..400 {
            for (a, _) in self.ranges(date) {
                let civil = date.to_datetime(time_of(a));
                // A start in a DST gap opens when the gap ends.
                let instant = self.tz.to_ambiguous_timestamp(civil).compatible().ok()?;
                if instant > t {
                    return Some(instant);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn seconds_of(t: Time) -> u32 {
    t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32
}

fn time_of(secs: u32) -> Time {
    let secs = secs.min(86_399) as i64;
    Time::midnight().checked_add(SignedDuration::from_secs(secs)).unwrap_or(Time::midnight())
}

/// `DateTime` re-exported for callers building test instants.
pub type Civil = DateTime;

#[cfg(test)]
mod tests {
    use super::*;

    fn window(json: &str) -> Window {
        WindowDef::from_json("w", json.as_bytes()).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_berlin() {
        // 2026-11-25 is a Wednesday; Berlin is UTC+1 in November.
        let w = window(
            r#"{"timezone": "Europe/Berlin", "weekly": {"mon": ["09:00-17:00"], "wed": ["09:00-12:00", "13:00-17:00"]}}"#,
        );
        assert!(w.contains(ts("2026-11-25T08:30:00Z")));
        assert!(!w.contains(ts("2026-11-25T11:30:00Z")), "lunch break");
        assert_eq!(w.next_open(ts("2026-11-25T11:30:00Z")), Some(ts("2026-11-25T12:00:00Z")));
        // After Wednesday closes, the next opening is Monday 09:00.
        assert_eq!(w.next_open(ts("2026-11-25T17:00:00Z")), Some(ts("2026-11-30T08:00:00Z")));
    }

    #[test]
    fn blackout_dates_and_ranges_past_midnight() {
        let w = window(r#"{"weekly": {"thu": ["22:00-02:00"]}, "blackout_dates": ["2026-12-24"]}"#);
        assert!(w.contains(ts("2026-11-26T23:00:00Z")));
        assert!(w.contains(ts("2026-11-27T01:00:00Z")), "Friday morning is part of Thursday night");
        assert!(!w.contains(ts("2026-11-27T02:00:00Z")));
        assert!(!w.contains(ts("2026-12-24T23:00:00Z")), "Christmas Eve is blacked out");
        assert_eq!(w.next_open(ts("2026-12-24T12:00:00Z")), Some(ts("2026-12-31T22:00:00Z")));
    }

    #[test]
    fn seconds_and_defaults() {
        let w = window(r#"{"weekly": {"wed": ["10:00:05-10:00:10"]}, "outside": "skip"}"#);
        assert_eq!(w.outside, Outside::Skip);
        assert_eq!(w.next_open(ts("2026-11-25T10:00:00Z")), Some(ts("2026-11-25T10:00:05Z")));
        assert_eq!(w.next_open(ts("2026-11-25T10:00:07Z")), Some(ts("2026-11-25T10:00:07Z")));
    }

    #[test]
    fn bad_windows_say_why() {
        for (json, needle) in [
            (r#"{"weekly": {}}"#, "never open"),
            (r#"{"weekly": {"someday": ["09:00-10:00"]}}"#, "unknown day"),
            (r#"{"weekly": {"mon": ["9-10"]}}"#, "HH:MM"),
            (r#"{"weekly": {"mon": ["09:00-09:00"]}}"#, "empty"),
            (r#"{"weekly": {"mon": ["09:00-25:00"]}}"#, "time of day"),
            (r#"{"weekly": {"mon": ["24:00-00:00"]}}"#, "only end"),
            (r#"{"weekly": {"mon": ["09:00-10:00"]}, "timezone": "Nowhere/Land"}"#, "unknown time zone"),
            (r#"{"weekly": {"mon": ["09:00-10:00"]}, "colour": 1}"#, "unknown field"),
        ] {
            let err = WindowDef::from_json("w", json.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}

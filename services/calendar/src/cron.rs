//! Cron expressions evaluated in civil (wall-clock) time.
//!
//! Supports 5-field POSIX (`min hour dom month dow`), 6-field with seconds
//! (`sec min hour dom month dow`), the `@yearly`..`@hourly` macros, names
//! (`JAN`, `MON`), lists, ranges, steps, and the Quartz extensions `L`, `L-n`,
//! `nW`, `LW` (day of month), `nL` and `n#k` (day of week).
//!
//! Day-of-month and day-of-week follow POSIX: when both are restricted a day
//! matches if either matches; when one is `*` or `?` only the other counts.
//!
//! This module knows nothing about time zones: it answers "what is the next
//! civil date-time after this one that matches". Turning civil times into
//! instants, with a policy for DST gaps and folds, is `crate::calendar`'s job.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time, Weekday};

/// How many years ahead a search may look before concluding the expression
/// never fires again (`0 0 30 2 *` never does).
const HORIZON_YEARS: i16 = 100;

/// Longest expression taken: far more than any real one, and every error
/// message that quotes it stays short.
pub const MAX_EXPR_LEN: usize = 256;

/// A parse error, naming the field and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct CronError {
    /// The expression as given (its first bytes, when it is too long).
    pub expr: String,
    /// What was wrong.
    pub reason: String,
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    seconds: u64,
    minutes: u64,
    hours: u32,
    months: u16,
    dom: DomSpec,
    dow: DowSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DomSpec {
    /// `*` or `?`: no restriction.
    any: bool,
    /// Plain days, bit n = day n.
    days: u32,
    /// `L` and `L-n`: days before the last day of the month.
    from_last: Vec<u8>,
    /// `nW`: the weekday nearest to day n, within the month.
    nearest_weekday: Vec<u8>,
    /// `LW`: the last weekday of the month.
    last_weekday: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DowSpec {
    any: bool,
    /// Bit n = weekday n, Sunday = 0.
    days: u8,
    /// `d#k`: the k-th weekday d of the month.
    nth: Vec<(u8, u8)>,
    /// `dL`: the last weekday d of the month.
    last: Vec<u8>,
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        Cron::parse(expr)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Cron {
    /// Parses a 5- or 6-field expression or a macro.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        if expr.len() > MAX_EXPR_LEN {
            let mut cut = 32;
            while !expr.is_char_boundary(cut) {
                cut -= 1;
            }
            let reason = format!("{} bytes long; at most {MAX_EXPR_LEN}", expr.len());
            return Err(CronError { expr: format!("{}…", &expr[..cut]), reason });
        }
        let err = |reason: String| CronError { expr: expr.to_string(), reason };
        let trimmed = expr.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            m if m.starts_with('@') => {
                return Err(err(format!(
                    "unknown macro {m:?} (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
                )));
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(err(format!(
                    "expected 5 fields (min hour dom month dow) or 6 (sec min hour dom month dow), got {n}"
                )));
            }
        };
        let field = |name: &str, r: Result<u64, String>| r.map_err(|e| err(format!("{name}: {e}")));
        let seconds = field("seconds", parse_bits(sec, 0, 59, &[]))?;
        let minutes = field("minutes", parse_bits(rest[0], 0, 59, &[]))?;
        let hours = field("hours", parse_bits(rest[1], 0, 23, &[]))? as u32;
        let months = field("month", parse_bits(rest[3], 1, 12, &MONTHS))? as u16;
        let dom = parse_dom(rest[2]).map_err(|e| err(format!("day of month: {e}")))?;
        let dow = parse_dow(rest[4]).map_err(|e| err(format!("day of week: {e}")))?;
        let cron = Cron { source: trimmed.to_string(), seconds, minutes, hours, months, dom, dow };
        // Reject expressions that can never fire (`0 0 30 2 *`): 28 years
        // covers every weekday/leap-year combination.
        let probe = DateTime::constant(2000, 1, 1, 0, 0, 0, 0);
        if cron.next_within(probe, 2028).is_none() {
            return Err(err("never matches any date".to_string()));
        }
        Ok(cron)
    }

    /// The first civil date-time strictly after `after` that matches, or
    /// `None` if there is none within the search horizon.
    pub fn next_after(&self, after: DateTime) -> Option<DateTime> {
        let limit = after.year().saturating_add(HORIZON_YEARS).min(9998);
        self.next_within(after, limit)
    }

    fn next_within(&self, after: DateTime, last_year: i16) -> Option<DateTime> {
        let mut date = after.date();
        let mut strictly_after = Some(after.time());
        loop {
            if date.year() > last_year {
                return None;
            }
            if self.months & (1 << date.month()) == 0 {
                date = first_of_next_month(date)?;
                strictly_after = None;
                continue;
            }
            if self.day_matches(date)
                && let Some(time) = self.first_time_after(strictly_after)
            {
                return Some(date.to_datetime(time));
            }
            date = date.tomorrow().ok()?;
            strictly_after = None;
        }
    }

    /// The first matching time of day strictly after `after` (or the first
    /// of the day when `None`).
    fn first_time_after(&self, after: Option<Time>) -> Option<Time> {
        let (h0, m0, s0) = match after {
            None => (0, 0, 0),
            Some(t) => {
                // Strictly after: start from the next whole second.
                let secs = i32::from(t.hour()) * 3600 + i32::from(t.minute()) * 60 + i32::from(t.second()) + 1;
                if secs >= 86_400 {
                    return None;
                }
                ((secs / 3600) as u32, ((secs / 60) % 60) as u32, (secs % 60) as u32)
            }
        };
        let mut hour = next_bit(u64::from(self.hours), h0)?;
        loop {
            let (m_start, s_start) = if hour == h0 { (m0, s0) } else { (0, 0) };
            let mut minute = next_bit(self.minutes, m_start);
            while let Some(m) = minute {
                let s_from = if hour == h0 && m == m0 { s_start } else { 0 };
                if let Some(s) = next_bit(self.seconds, s_from) {
                    return Time::new(hour as i8, m as i8, s as i8, 0).ok();
                }
                minute = next_bit(self.minutes, m + 1);
            }
            hour = next_bit(u64::from(self.hours), hour + 1)?;
        }
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = !self.dom.any && self.dom.matches(date);
        let dow = !self.dow.any && self.dow.matches(date);
        match (self.dom.any, self.dow.any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }
}

impl DomSpec {
    fn matches(&self, date: Date) -> bool {
        let day = date.day() as u8;
        let last = date.days_in_month() as u8;
        if self.days & (1 << day) != 0 {
            return true;
        }
        if self.from_last.iter().any(|&n| last > n && day == last - n) {
            return true;
        }
        if self.nearest_weekday.iter().any(|&n| nearest_weekday(date, n) == Some(day)) {
            return true;
        }
        self.last_weekday && nearest_weekday(date, last) == Some(day)
    }
}

impl DowSpec {
    fn matches(&self, date: Date) -> bool {
        let wd = date.weekday().to_sunday_zero_offset() as u8;
        if self.days & (1 << wd) != 0 {
            return true;
        }
        let day = date.day() as u8;
        let nth_of_month = (day - 1) / 7 + 1;
        if self.nth.iter().any(|&(d, n)| d == wd && n == nth_of_month) {
            return true;
        }
        let last = date.days_in_month() as u8;
        self.last.iter().any(|&d| d == wd && day + 7 > last)
    }
}

/// The day of `date`'s month that is the weekday nearest to day `n`, never
/// crossing into another month (Quartz `nW` semantics).
fn nearest_weekday(date: Date, n: u8) -> Option<u8> {
    let last = date.days_in_month() as u8;
    if n == 0 || n > last {
        return None;
    }
    let target = date.with().day(n as i8).build().ok()?;
    Some(match target.weekday() {
        Weekday::Saturday if n == 1 => 3,
        Weekday::Saturday => n - 1,
        Weekday::Sunday if n == last => n - 2,
        Weekday::Sunday => n + 1,
        _ => n,
    })
}

fn first_of_next_month(date: Date) -> Option<Date> {
    let (y, m) = if date.month() == 12 { (date.year().checked_add(1)?, 1) } else { (date.year(), date.month() + 1) };
    Date::new(y, m, 1).ok()
}

/// The lowest set bit at or above `from`.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let masked = bits & (u64::MAX << from);
    (masked != 0).then(|| masked.trailing_zeros())
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses a number or a name (`names[i]` stands for `min + i`).
fn parse_value(s: &str, min: u8, max: u8, names: &[&str]) -> Result<u8, String> {
    let upper = s.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(min + i as u8);
    }
    let v: u8 =
        s.parse().map_err(|_| format!("{s:?} is not a number{}", if names.is_empty() { "" } else { " or name" }))?;
    if v < min || v > max {
        return Err(format!("{v} is out of range {min}-{max}"));
    }
    Ok(v)
}

/// Parses a list of `*`, `a`, `a-b`, with optional `/step`, into a bitset.
fn parse_bits(field: &str, min: u8, max: u8, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u8 = s.parse().map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("step must be at least 1".to_string());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, min, max, names)?, parse_value(b, min, max, names)?);
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let v = parse_value(range, min, max, names)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    if bits == 0 {
        return Err(format!("{field:?} matches nothing"));
    }
    Ok(bits)
}

fn parse_dom(field: &str) -> Result<DomSpec, String> {
    let mut spec = DomSpec::default();
    if field == "*" || field == "?" {
        spec.any = true;
        return Ok(spec);
    }
    for part in field.split(',') {
        let upper = part.to_ascii_uppercase();
        if upper == "L" {
            spec.from_last.push(0);
        } else if upper == "LW" {
            spec.last_weekday = true;
        } else if let Some(n) = upper.strip_prefix("L-") {
            let n: u8 = n.parse().map_err(|_| format!("{part:?}: L-n needs a number"))?;
            if n > 30 {
                return Err(format!("{part:?}: offset from the last day must be 0-30"));
            }
            spec.from_last.push(n);
        } else if let Some(n) = upper.strip_suffix('W') {
            spec.nearest_weekday.push(parse_value(n, 1, 31, &[])?);
        } else {
            spec.days |= parse_bits(part, 1, 31, &[])? as u32;
        }
    }
    Ok(spec)
}

fn parse_dow(field: &str) -> Result<DowSpec, String> {
    let mut spec = DowSpec::default();
    if field == "*" || field == "?" {
        spec.any = true;
        return Ok(spec);
    }
    let weekday = |s: &str| parse_value(s, 0, 7, &WEEKDAYS).map(|d| d % 7);
    for part in field.split(',') {
        let upper = part.to_ascii_uppercase();
        if let Some((d, n)) = upper.split_once('#') {
            let n: u8 = n.parse().map_err(|_| format!("{part:?}: d#k needs a number k"))?;
            if !(1..=5).contains(&n) {
                return Err(format!("{part:?}: k in d#k must be 1-5"));
            }
            spec.nth.push((weekday(d)?, n));
        } else if let Some(d) = upper.strip_suffix('L').filter(|d| !d.is_empty()) {
            spec.last.push(weekday(d)?);
        } else {
            // Allow 7 for Sunday in ranges (`5-7`) by folding after parsing.
            let bits = parse_bits(part, 0, 7, &WEEKDAYS)?;
            spec.days |= ((bits & 0x7f) | (bits >> 7)) as u8;
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn next(expr: &str, from: DateTime) -> DateTime {
        Cron::parse(expr).unwrap().next_after(from).unwrap()
    }

    fn series(expr: &str, from: DateTime, n: usize) -> Vec<DateTime> {
        let cron = Cron::parse(expr).unwrap();
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = cron.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    #[test]
    fn five_field_fires_at_second_zero() {
        let from = date(2026, 1, 1).at(10, 0, 0, 0);
        assert_eq!(next("*/15 * * * *", from), date(2026, 1, 1).at(10, 15, 0, 0));
        assert_eq!(next("30 2 * * *", from), date(2026, 1, 2).at(2, 30, 0, 0));
    }

    #[test]
    fn six_field_has_seconds() {
        let from = date(2026, 1, 1).at(10, 0, 0, 0);
        assert_eq!(
            series("*/20 * * * * *", from, 3),
            vec![
                date(2026, 1, 1).at(10, 0, 20, 0),
                date(2026, 1, 1).at(10, 0, 40, 0),
                date(2026, 1, 1).at(10, 1, 0, 0)
            ]
        );
        assert_eq!(next("0 30 2 * * *", from), date(2026, 1, 2).at(2, 30, 0, 0));
    }

    #[test]
    fn next_is_strictly_after_even_with_subsecond_input() {
        let from = date(2026, 1, 1).at(10, 0, 20, 500);
        assert_eq!(next("*/20 * * * * *", from), date(2026, 1, 1).at(10, 0, 40, 0));
        assert_eq!(next("* * * * * *", date(2026, 1, 1).at(23, 59, 59, 0)), date(2026, 1, 2).at(0, 0, 0, 0));
    }

    #[test]
    fn macros_expand() {
        let from = date(2026, 3, 15).at(12, 34, 56, 0);
        assert_eq!(next("@yearly", from), date(2027, 1, 1).at(0, 0, 0, 0));
        assert_eq!(next("@annually", from), date(2027, 1, 1).at(0, 0, 0, 0));
        assert_eq!(next("@monthly", from), date(2026, 4, 1).at(0, 0, 0, 0));
        // 2026-03-15 is a Sunday: the next Sunday midnight is a week later.
        assert_eq!(next("@weekly", from), date(2026, 3, 22).at(0, 0, 0, 0));
        assert_eq!(next("@daily", from), date(2026, 3, 16).at(0, 0, 0, 0));
        assert_eq!(next("@midnight", from), date(2026, 3, 16).at(0, 0, 0, 0));
        assert_eq!(next("@hourly", from), date(2026, 3, 15).at(13, 0, 0, 0));
        assert!(Cron::parse("@reboot").is_err());
    }

    #[test]
    fn names_lists_ranges_and_steps() {
        let from = date(2026, 1, 1).at(0, 0, 0, 0); // a Thursday
        assert_eq!(next("0 9 * * MON-FRI", from), date(2026, 1, 1).at(9, 0, 0, 0));
        assert_eq!(next("0 9 * * SAT,SUN", from), date(2026, 1, 3).at(9, 0, 0, 0));
        assert_eq!(next("0 9 * JUN *", from), date(2026, 6, 1).at(9, 0, 0, 0));
        assert_eq!(next("0 9 * * 7", from), date(2026, 1, 4).at(9, 0, 0, 0));
        assert_eq!(next("0 9 * * 5-7", from), date(2026, 1, 2).at(9, 0, 0, 0));
        assert_eq!(series("0 10-20/5 * * *", from, 3)[2], date(2026, 1, 1).at(20, 0, 0, 0));
        assert_eq!(next("5/20 * * * *", date(2026, 1, 1).at(0, 46, 0, 0)), date(2026, 1, 1).at(1, 5, 0, 0));
    }

    #[test]
    fn dom_and_dow_both_restricted_match_either() {
        // The 13th, or any Friday.
        let from = date(2026, 2, 1).at(0, 0, 0, 0);
        assert_eq!(
            series("0 0 13 * FRI", from, 3),
            vec![date(2026, 2, 6).at(0, 0, 0, 0), date(2026, 2, 13).at(0, 0, 0, 0), date(2026, 2, 20).at(0, 0, 0, 0)]
        );
    }

    #[test]
    fn last_day_and_offsets() {
        let from = date(2026, 1, 31).at(12, 0, 0, 0);
        assert_eq!(next("0 0 L * *", from), date(2026, 2, 28).at(0, 0, 0, 0));
        assert_eq!(next("0 0 L 2 *", date(2027, 6, 1).at(0, 0, 0, 0)), date(2028, 2, 29).at(0, 0, 0, 0));
        assert_eq!(next("0 0 L-2 * *", from), date(2026, 2, 26).at(0, 0, 0, 0));
    }

    #[test]
    fn nearest_weekday_stays_in_month() {
        // 2026-02-01 is a Sunday: 1W is Monday the 2nd.
        assert_eq!(next("0 0 1W * *", date(2026, 1, 31).at(0, 0, 0, 0)), date(2026, 2, 2).at(0, 0, 0, 0));
        // 2026-08-01 is a Saturday: 1W is Monday the 3rd, not July 31st.
        assert_eq!(next("0 0 1W * *", date(2026, 7, 2).at(0, 0, 0, 0)), date(2026, 8, 3).at(0, 0, 0, 0));
        // 2026-11-15 is a Sunday: 15W is Monday the 16th.
        assert_eq!(next("0 0 15W * *", date(2026, 11, 1).at(0, 0, 0, 0)), date(2026, 11, 16).at(0, 0, 0, 0));
        // 2026-05-31 is a Sunday: LW is Friday the 29th.
        assert_eq!(next("0 0 LW * *", date(2026, 5, 1).at(0, 0, 0, 0)), date(2026, 5, 29).at(0, 0, 0, 0));
    }

    #[test]
    fn nth_and_last_weekday() {
        // Second Tuesday of each month.
        assert_eq!(next("0 0 * * TUE#2", date(2026, 1, 1).at(0, 0, 0, 0)), date(2026, 1, 13).at(0, 0, 0, 0));
        // Last Friday of the month.
        assert_eq!(next("0 0 * * 5L", date(2026, 1, 1).at(0, 0, 0, 0)), date(2026, 1, 30).at(0, 0, 0, 0));
        assert_eq!(next("0 0 * * FRIL", date(2026, 1, 31).at(0, 0, 0, 0)), date(2026, 2, 27).at(0, 0, 0, 0));
        // Fifth Monday only exists in some months.
        assert_eq!(next("0 0 * * 1#5", date(2026, 1, 1).at(0, 0, 0, 0)), date(2026, 3, 30).at(0, 0, 0, 0));
    }

    #[test]
    fn leap_day_is_found_years_ahead() {
        assert_eq!(next("0 0 29 2 *", date(2026, 1, 1).at(0, 0, 0, 0)), date(2028, 2, 29).at(0, 0, 0, 0));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, needle) in [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "minutes: 60 is out of range"),
            ("* 24 * * *", "hours"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step must be at least 1"),
            ("5-1 * * * *", "runs backwards"),
            ("0 0 30 2 *", "never matches"),
            ("0 0 * * MON#6", "1-5"),
            ("x * * * *", "not a number"),
        ] {
            let err = Cron::parse(expr).unwrap_err().to_string();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }
}

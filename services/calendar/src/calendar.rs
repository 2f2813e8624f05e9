//! Fire instants of a schedule: a rule (cron, every, at) in a time zone, with
//! a policy for DST gaps and folds, bounded by `start_at`/`end_at`.
//!
//! Cron rules are matched in civil time and then resolved to instants:
//! - a civil time that does not exist (spring forward) is skipped under
//!   `gap = skip`, or read with the offset in force before the gap under
//!   `gap = shift` (RFC 5545 §3.3.5: 02:30 on the New York spring-forward day
//!   fires at 03:30 EDT);
//! - a civil time that exists twice (fall back) fires at its first instant,
//!   its last, or both, per `fold`.
//!
//! Occurrences that land on the same instant fire once. `every` rules are
//! exact intervals of elapsed time (DST does not apply); `at` is one instant.

use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::cron::Cron;

/// What to do with a civil time that a DST transition skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapPolicy {
    /// Do not fire for that occurrence.
    Skip,
    /// Fire at the civil time read with the pre-transition offset.
    #[default]
    Shift,
}

/// What to do with a civil time that a DST transition repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FoldPolicy {
    /// Fire at the first (earlier) instant only.
    #[default]
    First,
    /// Fire at the second (later) instant only.
    Last,
    /// Fire at both instants.
    Both,
}

/// DST handling for cron rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DstPolicy {
    /// Skipped civil times.
    pub gap: GapPolicy,
    /// Repeated civil times.
    pub fold: FoldPolicy,
}

/// The recurrence rule of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Civil-time cron expression.
    Cron(Cron),
    /// Every `interval` of elapsed time, at `anchor + k * interval`.
    Every {
        /// The interval; never zero.
        interval: Duration,
        /// One instant of the series (start_at or the Unix epoch, plus phase).
        anchor: Timestamp,
    },
    /// Once.
    At(Timestamp),
}

/// Fire instants in a range, as counted by [`Calendar::span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// How many.
    pub count: u64,
    /// The earliest.
    pub first: Option<Timestamp>,
    /// The latest (counted).
    pub last: Option<Timestamp>,
}

/// A schedule's fire instants.
#[derive(Debug, Clone)]
pub struct Calendar {
    rule: Rule,
    tz: TimeZone,
    dst: DstPolicy,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
}

/// How far around an instant to look for DST transitions, and how far past a
/// candidate a cron search continues when one is near.
const NEAR: SignedDuration = SignedDuration::from_hours(26);

impl Calendar {
    /// A calendar for `rule` in `tz`, firing only within `[start, end]`.
    pub fn new(rule: Rule, tz: TimeZone, dst: DstPolicy, start: Option<Timestamp>, end: Option<Timestamp>) -> Self {
        Calendar { rule, tz, dst, start, end }
    }

    /// The time zone the rule is read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first fire instant strictly after `after`, if any.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let after = match self.start {
            Some(start) if after < start => start.checked_sub(SignedDuration::from_nanos(1)).ok()?,
            _ => after,
        };
        let next = match &self.rule {
            Rule::Cron(cron) => self.cron_next(cron, after),
            Rule::Every { interval, anchor } => every_next(*interval, *anchor, after),
            Rule::At(at) => (*at > after).then_some(*at),
        }?;
        match self.end {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Fire instants strictly after `after`, in order.
    pub fn iter_after(&self, after: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }

    /// The fire instants in `(after, upto]`: how many, the first and the
    /// last. `every` is exact arithmetic (an outage of a millisecond series
    /// costs nothing); cron and `at` are iterated, at most `cap` instants, so
    /// past the cap the count and the last instant stop there.
    pub fn span(&self, after: Timestamp, upto: Timestamp, cap: u64) -> Span {
        if upto <= after {
            return Span::default();
        }
        let Rule::Every { interval, anchor } = &self.rule else {
            let limit = usize::try_from(cap).unwrap_or(usize::MAX);
            return self.iter_after(after).take_while(|t| *t <= upto).take(limit).fold(Span::default(), |s, t| Span {
                count: s.count + 1,
                first: s.first.or(Some(t)),
                last: Some(t),
            });
        };
        let step = interval.as_nanos() as i128;
        if step == 0 {
            return Span::default();
        }
        let one = SignedDuration::from_nanos(1);
        let lo = match self.start {
            Some(start) if after < start => start.checked_sub(one).unwrap_or(start),
            _ => after,
        };
        let hi = match self.end {
            Some(end) if upto > end => end,
            _ => upto,
        };
        // Occurrences are anchor + k * step, k >= 0: how many are at or before t.
        let upto_count = |t: Timestamp| {
            let since = t.as_nanosecond() - anchor.as_nanosecond();
            if since < 0 { 0 } else { since / step + 1 }
        };
        let (below, through) = (upto_count(lo), upto_count(hi));
        if through <= below {
            return Span::default();
        }
        let at = |k: i128| Timestamp::from_nanosecond(anchor.as_nanosecond() + k * step).ok();
        let count = u64::try_from(through - below).unwrap_or(u64::MAX);
        let last_k = below + i128::from(count) - 1;
        Span { count, first: at(below), last: at(last_k) }
    }

    /// The instants a civil time stands for under the DST policy (0, 1 or 2).
    fn resolve(&self, civil: DateTime) -> Vec<Timestamp> {
        let at = |offset: Offset| offset.to_timestamp(civil).ok();
        match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => at(offset).into_iter().collect(),
            AmbiguousOffset::Gap { before, .. } => match self.dst.gap {
                GapPolicy::Skip => vec![],
                GapPolicy::Shift => at(before).into_iter().collect(),
            },
            AmbiguousOffset::Fold { before, after } => match self.dst.fold {
                FoldPolicy::First => at(before).into_iter().collect(),
                FoldPolicy::Last => at(after).into_iter().collect(),
                FoldPolicy::Both => [at(before), at(after)].into_iter().flatten().collect(),
            },
        }
    }

    /// The largest offset jump of any transition within `NEAR` of `t`, or
    /// `None` when the offset is constant around `t`.
    fn jump_near(&self, t: Timestamp) -> Option<SignedDuration> {
        let lo = t.checked_sub(NEAR).unwrap_or(Timestamp::MIN);
        let hi = t.checked_add(NEAR).unwrap_or(Timestamp::MAX);
        self.tz
            .following(lo)
            .take_while(|tr| tr.timestamp() <= hi)
            .map(|tr| {
                let before = self
                    .tz
                    .to_offset(tr.timestamp().checked_sub(SignedDuration::from_nanos(1)).unwrap_or(tr.timestamp()));
                (tr.offset().duration_since(before)).abs()
            })
            .max()
    }

    /// Next cron instant after `after`. Far from DST transitions civil order is
    /// instant order and the first civil match is the answer. Near one, the
    /// search starts a jump's width early (a fold's second pass may still be
    /// ahead) and continues a jump's width past the best candidate (a later
    /// civil time may resolve to an earlier instant).
    fn cron_next(&self, cron: &Cron, after: Timestamp) -> Option<Timestamp> {
        let civil_after = self.tz.to_datetime(after);
        let margin = |jump: SignedDuration| jump + SignedDuration::from_mins(1);
        let mut civil = match self.jump_near(after) {
            Some(jump) => civil_after.checked_sub(margin(jump)).ok()?,
            None => civil_after,
        };
        let mut best: Option<(Timestamp, DateTime)> = None;
        loop {
            let Some(candidate) = cron.next_after(civil) else {
                return best.map(|(t, _)| t);
            };
            if let Some((b, stop_after)) = best
                && candidate > stop_after
            {
                return Some(b);
            }
            for t in self.resolve(candidate) {
                if t > after && best.is_none_or(|(b, _)| t < b) {
                    let stop_after = match self.jump_near(t) {
                        Some(jump) => self.tz.to_datetime(t).checked_add(margin(jump)).ok()?,
                        None => self.tz.to_datetime(t),
                    };
                    best = Some((t, stop_after));
                }
            }
            civil = candidate;
        }
    }
}

fn every_next(interval: Duration, anchor: Timestamp, after: Timestamp) -> Option<Timestamp> {
    let step = interval.as_nanos() as i128;
    if step == 0 {
        return None;
    }
    let since = after.as_nanosecond() - anchor.as_nanosecond();
    let k = if since < 0 { 0 } else { since / step + 1 };
    Timestamp::from_nanosecond(anchor.as_nanosecond() + k * step).ok()
}

/// A deterministic jitter in `[0, max)` for one occurrence: every replica
/// computes the same offset from the schedule id and nominal time, so a
/// jittered fire is still exactly-once.
pub fn jitter_offset(schedule: &str, nominal: Timestamp, max: Duration) -> Duration {
    let max_ns = max.as_nanos() as u64;
    if max_ns == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule.bytes().chain(nominal.as_nanosecond().to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Duration::from_nanos(h % max_ns)
}

#[cfg(test)]
#[path = "calendar_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "dst_matrix_tests.rs"]
mod dst_matrix_tests;

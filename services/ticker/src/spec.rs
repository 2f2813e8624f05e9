//! What the ticker keeps of one schedule: only what decides when it fires
//! and what a fire carries, in a compact form, so that a million schedules
//! fit in a few hundred megabytes. Calendars (the parsed cron expression and
//! time zone) are shared between schedules with identical timing fields.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use jetsched_calendar::Calendar;
use jetsched_contract::schedule::Dst;
use jetsched_contract::{DueFire, HumanDuration, Misfire, ScheduleDef, TaskDef};
use jiff::Timestamp;

/// One loaded schedule, without its id.
#[derive(Debug)]
pub struct Spec {
    /// When it fires (shared with schedules of identical timing).
    pub calendar: Arc<Calendar>,
    /// The task runs carry: a task name, or the schedule id for an inline task.
    pub task: Box<str>,
    /// The payload as JSON text (`None`: null).
    pub payload: Option<Box<str>>,
    /// The inline task definition, if any.
    pub inline: Option<Box<TaskDef>>,
    /// Upper bound of the deterministic start delay after the nominal time.
    pub jitter: Duration,
    /// What happens to occurrences found late.
    pub misfire: Misfire,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// Stop after this many fires.
    pub max_runs: Option<u64>,
}

impl Spec {
    /// Parses and validates the value stored under `id`, sharing calendars through `calendars`.
    pub fn parse(id: &str, bytes: &[u8], calendars: &mut Calendars) -> Result<Spec, String> {
        let def = ScheduleDef::from_json_except_calendar(id, bytes)?;
        let calendar = calendars.get(&def)?;
        let payload = match &def.payload {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(serde_json::to_string(v).map_err(|e| format!("payload: {e}"))?.into_boxed_str()),
        };
        Ok(Spec {
            calendar,
            task: def.task_name(id).into(),
            payload,
            inline: def.inline_task().cloned().map(Box::new),
            jitter: def.jitter.0,
            misfire: def.misfire.clone(),
            paused: def.paused,
            max_runs: def.max_runs,
        })
    }

    /// The body of the due fire at `nominal`.
    pub fn due_fire(&self, id: &str, nominal: Timestamp, not_before: Option<Timestamp>) -> DueFire {
        // The payload was serialised from a JSON value, so it parses back.
        let payload = self.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        DueFire {
            schedule: id.to_string(),
            scheduled_for: nominal,
            payload,
            task_def: self.inline.as_deref().cloned(),
            not_before,
        }
    }
}

/// The fields of a schedule that determine its calendar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CalendarKey {
    cron: Option<String>,
    every: Option<HumanDuration>,
    phase: Option<HumanDuration>,
    at: Option<Timestamp>,
    timezone: Option<String>,
    dst: Dst,
    start_at: Option<Timestamp>,
    end_at: Option<Timestamp>,
}

/// Calendars in use, keyed by the fields they were built from. Entries whose
/// schedules are all gone are dropped now and then.
#[derive(Default)]
pub struct Calendars {
    map: HashMap<CalendarKey, Weak<Calendar>>,
    prune_at: usize,
}

impl Calendars {
    /// The calendar of `def`, built (and validated) only the first time its
    /// timing fields are seen.
    pub fn get(&mut self, def: &ScheduleDef) -> Result<Arc<Calendar>, String> {
        let key = CalendarKey {
            cron: def.cron.clone(),
            every: def.every,
            phase: def.phase,
            at: def.at,
            timezone: def.timezone.clone(),
            dst: def.dst,
            start_at: def.start_at,
            end_at: def.end_at,
        };
        if let Some(calendar) = self.map.get(&key).and_then(Weak::upgrade) {
            return Ok(calendar);
        }
        let calendar = Arc::new(def.calendar()?);
        if self.map.len() >= self.prune_at {
            self.map.retain(|_, weak| weak.strong_count() > 0);
            self.prune_at = (self.map.len() * 2).max(1024);
        }
        self.map.insert(key, Arc::downgrade(&calendar));
        Ok(calendar)
    }

    /// Distinct calendars tracked (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_timing_shares_one_calendar() {
        let mut calendars = Calendars::default();
        let a =
            Spec::parse("a", br#"{"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "t"}"#, &mut calendars)
                .unwrap();
        let b = Spec::parse(
            "b",
            br#"{"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "u", "payload": {"n": 2}}"#,
            &mut calendars,
        )
        .unwrap();
        let c =
            Spec::parse("c", br#"{"cron": "0 30 2 * * *", "timezone": "UTC", "task": "t"}"#, &mut calendars).unwrap();
        assert!(Arc::ptr_eq(&a.calendar, &b.calendar));
        assert!(!Arc::ptr_eq(&a.calendar, &c.calendar));
        assert_eq!(calendars.len(), 2);
        assert_eq!(b.payload.as_deref(), Some(r#"{"n":2}"#));
    }

    #[test]
    fn invalid_calendars_are_refused_even_when_not_shared() {
        let mut calendars = Calendars::default();
        let err = Spec::parse("a", br#"{"cron": "61 * * * *", "task": "t"}"#, &mut calendars).unwrap_err();
        assert!(err.contains("minutes"), "{err}");
        let err = Spec::parse("a", br#"{"every": "1s", "task": "t", "max_runs": 0}"#, &mut calendars).unwrap_err();
        assert!(err.contains("max_runs"), "{err}");
    }

    #[test]
    fn due_fire_carries_payload_and_inline_task() {
        let mut calendars = Calendars::default();
        let spec = Spec::parse(
            "tick",
            br#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": "fn.x"}}, "payload": {"k": [1, 2]}}"#,
            &mut calendars,
        )
        .unwrap();
        let nominal: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let fire = spec.due_fire("tick", nominal, Some(nominal));
        assert_eq!(&*spec.task, "tick");
        assert_eq!(fire.payload, serde_json::json!({"k": [1, 2]}));
        assert!(fire.task_def.is_some());
        assert_eq!(fire.not_before, Some(nominal));
    }
}

//! What the ticker keeps of one schedule: only what decides when it fires
//! and what a fire carries, in a compact form, so that a million schedules
//! fit in a few hundred megabytes. Calendars (the parsed cron expression and
//! time zone) and task names are shared between schedules; settings most
//! schedules leave at their defaults live in a box only the others pay for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use jetsched_calendar::Calendar;
use jetsched_contract::schedule::{Dst, ScheduleDependency};
use jetsched_contract::{DueFire, HumanDuration, Misfire, Overlap, ScheduleDef, TaskDef};
use jiff::Timestamp;

/// One loaded schedule, without its id.
#[derive(Debug)]
pub struct Spec {
    /// When it fires (shared with schedules of identical timing).
    pub calendar: Arc<Calendar>,
    /// The task runs carry: a task name, or the schedule id for an inline task.
    pub task: Arc<str>,
    /// The payload as JSON text (`None`: null).
    pub payload: Option<Box<str>>,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// Settings away from their defaults.
    extras: Option<Box<Extras>>,
}

/// The settings most schedules leave at their defaults.
#[derive(Debug, Default)]
struct Extras {
    jitter: Duration,
    misfire: Misfire,
    max_runs: Option<u64>,
    inline: Option<TaskDef>,
    overlap: Overlap,
    depends_on: Option<ScheduleDependency>,
}

fn default_misfire() -> &'static Misfire {
    static DEFAULT: OnceLock<Misfire> = OnceLock::new();
    DEFAULT.get_or_init(Misfire::default)
}

/// A stored definition parsed and checked, not yet sharing anything with
/// loaded schedules: the costly half of [`Spec::parse`], done off the
/// ticker's loop.
#[derive(Debug)]
pub struct Draft {
    def: ScheduleDef,
    payload: Option<Box<str>>,
}

impl Draft {
    /// Parses and checks the value stored under `id` (all but the calendar).
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Draft, String> {
        let def = ScheduleDef::from_json_except_calendar(id, bytes)?;
        let payload = match &def.payload {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(serde_json::to_string(v).map_err(|e| format!("payload: {e}"))?.into_boxed_str()),
        };
        Ok(Draft { def, payload })
    }
}

impl Spec {
    /// Parses and validates the value stored under `id`, sharing calendars
    /// and task names through `shared`.
    pub fn parse(id: &str, bytes: &[u8], shared: &mut Shared) -> Result<Spec, String> {
        Spec::build(id, Draft::decode(id, bytes)?, shared)
    }

    /// Completes a [`Draft`]: its calendar (built and validated unless an
    /// identical one is loaded) and shared task name.
    pub fn build(id: &str, draft: Draft, shared: &mut Shared) -> Result<Spec, String> {
        let Draft { def, payload } = draft;
        let calendar = shared.calendar(&def)?;
        let extras = Extras {
            jitter: def.jitter.0,
            misfire: def.misfire.clone(),
            max_runs: def.max_runs,
            inline: def.inline_task().cloned(),
            overlap: def.overlap,
            depends_on: def.depends_on.clone(),
        };
        let plain = extras.jitter.is_zero()
            && extras.misfire == *default_misfire()
            && extras.max_runs.is_none()
            && extras.inline.is_none()
            && extras.overlap == Overlap::Allow
            && extras.depends_on.is_none();
        Ok(Spec {
            calendar,
            task: shared.task(def.task_name(id)),
            payload,
            paused: def.paused,
            extras: (!plain).then(|| Box::new(extras)),
        })
    }

    /// Upper bound of the deterministic start delay after the nominal time.
    pub fn jitter(&self) -> Duration {
        self.extras.as_ref().map_or(Duration::ZERO, |e| e.jitter)
    }

    /// What happens to occurrences found late.
    pub fn misfire(&self) -> &Misfire {
        self.extras.as_ref().map_or(default_misfire(), |e| &e.misfire)
    }

    /// Whether fires may be published ahead of their time. Not when an
    /// overlap policy applies: the dispatcher decides overlap when it
    /// handles a fire, which must then be at the fire's time.
    pub fn may_stage(&self) -> bool {
        self.extras.as_ref().is_none_or(|e| e.overlap == Overlap::Allow)
    }

    /// Stop after this many fires.
    pub fn max_runs(&self) -> Option<u64> {
        self.extras.as_ref().and_then(|e| e.max_runs)
    }

    /// The body of the due fire at `nominal`.
    pub fn due_fire(&self, id: &str, nominal: Timestamp, not_before: Option<Timestamp>) -> DueFire {
        // The payload was serialised from a JSON value, so it parses back.
        let payload = self.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        let extras = self.extras.as_deref();
        DueFire {
            schedule: id.to_string(),
            scheduled_for: nominal,
            payload,
            task_def: extras.and_then(|e| e.inline.clone()),
            not_before,
            overlap: extras.map_or(Overlap::Allow, |e| e.overlap),
            depends_on: extras.and_then(|e| e.depends_on.clone()),
            // The zone of the calendar (UTC when the schedule names none).
            timezone: self.calendar.time_zone().iana_name().map(str::to_string),
            revision: None,
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

/// Calendars and task names in use. Entries no schedule uses any more are
/// dropped now and then.
#[derive(Default)]
pub struct Shared {
    calendars: HashMap<CalendarKey, Weak<Calendar>>,
    tasks: HashSet<Arc<str>>,
    prune_at: usize,
}

impl Shared {
    /// The calendar of `def`, built (and validated) only the first time its
    /// timing fields are seen.
    fn calendar(&mut self, def: &ScheduleDef) -> Result<Arc<Calendar>, String> {
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
        if let Some(calendar) = self.calendars.get(&key).and_then(Weak::upgrade) {
            return Ok(calendar);
        }
        let calendar = Arc::new(def.calendar()?);
        self.prune();
        self.calendars.insert(key, Arc::downgrade(&calendar));
        Ok(calendar)
    }

    fn task(&mut self, name: &str) -> Arc<str> {
        if let Some(task) = self.tasks.get(name) {
            return task.clone();
        }
        let task: Arc<str> = name.into();
        self.prune();
        self.tasks.insert(task.clone());
        task
    }

    fn prune(&mut self) {
        if self.calendars.len() + self.tasks.len() < self.prune_at {
            return;
        }
        self.calendars.retain(|_, weak| weak.strong_count() > 0);
        self.tasks.retain(|task| Arc::strong_count(task) > 1);
        self.prune_at = ((self.calendars.len() + self.tasks.len()) * 2).max(1024);
    }

    /// Distinct calendars tracked (live or not yet pruned).
    pub fn calendars(&self) -> usize {
        self.calendars.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_timing_shares_one_calendar_and_task_names_are_shared() {
        let mut shared = Shared::default();
        let berlin = br#"{"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "t"}"#;
        let a = Spec::parse("a", berlin, &mut shared).unwrap();
        let b = Spec::parse(
            "b",
            br#"{"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "t", "payload": {"n": 2}}"#,
            &mut shared,
        )
        .unwrap();
        let c = Spec::parse("c", br#"{"cron": "0 30 2 * * *", "timezone": "UTC", "task": "t"}"#, &mut shared).unwrap();
        assert!(Arc::ptr_eq(&a.calendar, &b.calendar));
        assert!(!Arc::ptr_eq(&a.calendar, &c.calendar));
        assert!(Arc::ptr_eq(&a.task, &c.task));
        assert_eq!(shared.calendars(), 2);
        assert_eq!(b.payload.as_deref(), Some(r#"{"n":2}"#));
    }

    #[test]
    fn defaults_need_no_extras_and_others_keep_theirs() {
        let mut shared = Shared::default();
        let plain = Spec::parse("p", br#"{"every": "1s", "task": "t"}"#, &mut shared).unwrap();
        assert!(plain.extras.is_none());
        assert_eq!((plain.jitter(), plain.max_runs()), (Duration::ZERO, None));
        assert_eq!(plain.misfire(), &Misfire::default());
        let custom = Spec::parse(
            "c",
            br#"{"every": "1s", "task": "t", "jitter": "3s", "max_runs": 4, "misfire": {"policy": "all"}}"#,
            &mut shared,
        )
        .unwrap();
        assert_eq!((custom.jitter(), custom.max_runs()), (Duration::from_secs(3), Some(4)));
        assert_eq!(custom.misfire().policy, jetsched_contract::MisfirePolicy::All);
    }

    #[test]
    fn invalid_calendars_are_refused_even_when_not_shared() {
        let mut shared = Shared::default();
        let err = Spec::parse("a", br#"{"cron": "61 * * * *", "task": "t"}"#, &mut shared).unwrap_err();
        assert!(err.contains("minutes"), "{err}");
        let err = Spec::parse("a", br#"{"every": "1s", "task": "t", "max_runs": 0}"#, &mut shared).unwrap_err();
        assert!(err.contains("max_runs"), "{err}");
    }

    #[test]
    fn due_fire_carries_payload_and_inline_task() {
        let mut shared = Shared::default();
        let spec = Spec::parse(
            "tick",
            br#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": "fn.x"}}, "payload": {"k": [1, 2]}}"#,
            &mut shared,
        )
        .unwrap();
        let nominal: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let fire = spec.due_fire("tick", nominal, Some(nominal));
        assert_eq!(&*spec.task, "tick");
        assert_eq!(fire.payload, serde_json::json!({"k": [1, 2]}));
        assert!(fire.task_def.is_some());
        assert_eq!(fire.not_before, Some(nominal));
        assert_eq!((fire.overlap, fire.depends_on, fire.timezone.as_deref()), (Overlap::Allow, None, Some("UTC")));
        let gated = Spec::parse(
            "report",
            br#"{"cron": "0 6 * * *", "timezone": "Europe/Berlin", "task": "t", "overlap": "skip",
                "depends_on": {"schedule": "nightly"}}"#,
            &mut shared,
        )
        .unwrap();
        let fire = gated.due_fire("report", nominal, None);
        assert_eq!(fire.overlap, Overlap::Skip);
        assert_eq!(fire.depends_on.map(|d| d.schedule).as_deref(), Some("nightly"));
        assert_eq!(fire.timezone.as_deref(), Some("Europe/Berlin"));
    }
}

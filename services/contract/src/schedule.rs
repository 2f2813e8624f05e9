//! Schedules: the value under a schedule id in `jetsched-schedules`.

use std::time::Duration;

use jetsched_calendar::{Calendar, Cron, DstPolicy, FoldPolicy, GapPolicy, Rule};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::duration::HumanDuration;
use crate::names::validate_name;
use crate::task::TaskDef;

/// When a schedule fires and what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    /// 5-field, 6-field (seconds first) or `@daily`-style cron, read in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Fixed interval of elapsed time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<HumanDuration>,
    /// With `every`: offset of the series from its anchor (start_at, or the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HumanDuration>,
    /// One-shot instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// IANA time zone for `cron`; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A task name, or an inline task definition (run under the schedule id).
    pub task: TaskRef,
    /// JSON payload each run receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// What happens to occurrences missed while no ticker ran.
    #[serde(default)]
    pub misfire: Misfire,
    /// What happens when a fire comes while the previous run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// Spread fires over `[0, jitter)` after the nominal time (deterministic).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter: HumanDuration,
    /// DST gap/fold handling for cron.
    #[serde(default)]
    pub dst: Dst,
    /// A paused schedule does not fire.
    #[serde(default)]
    pub paused: bool,
    /// No fire before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Timestamp>,
    /// No fire after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<Timestamp>,
    /// Stop after this many fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
    /// Run only after another schedule's run for the same date succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<ScheduleDependency>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_zero(d: &HumanDuration) -> bool {
    d.0.is_zero()
}

/// The task a schedule runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRef {
    /// A task defined in `jetsched-tasks`.
    Name(String),
    /// A definition carried by the schedule itself.
    Inline(Box<TaskDef>),
}

impl Serialize for TaskRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TaskRef::Name(n) => s.serialize_str(n),
            TaskRef::Inline(def) => def.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TaskRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(name) => Ok(TaskRef::Name(name)),
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(|t| TaskRef::Inline(Box::new(t)))
                .map_err(|e| D::Error::custom(format!("inline task: {e}"))),
            _ => Err(D::Error::custom("task must be a task name or an inline task definition")),
        }
    }
}

/// Misfire handling after downtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Misfire {
    /// skip, latest or all.
    #[serde(default)]
    pub policy: MisfirePolicy,
    /// Occurrences older than this are never caught up.
    #[serde(default = "default_misfire_window")]
    pub window: HumanDuration,
    /// Under `all`: at most this many catch-up fires.
    #[serde(default = "default_misfire_max")]
    pub max: u32,
}

fn default_misfire_window() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_misfire_max() -> u32 {
    100
}

impl Default for Misfire {
    fn default() -> Self {
        Misfire { policy: MisfirePolicy::default(), window: default_misfire_window(), max: default_misfire_max() }
    }
}

/// Which missed occurrences fire on recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MisfirePolicy {
    /// None; each is reported as missed.
    Skip,
    /// The most recent one; the rest are reported as missed.
    #[default]
    Latest,
    /// All within the window, up to `max`.
    All,
}

/// "Run only after `schedule`'s run for the same date (in this schedule's
/// zone) succeeded; give up `wait` after the nominal time."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDependency {
    /// The other schedule's id.
    pub schedule: String,
    /// How long past the nominal time to wait for it.
    #[serde(default = "default_dependency_wait")]
    pub wait: HumanDuration,
}

fn default_dependency_wait() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// For serde: skip the default overlap policy.
pub fn is_allow(o: &Overlap) -> bool {
    *o == Overlap::Allow
}

/// Behaviour when the previous run of the schedule is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Run anyway.
    #[default]
    Allow,
    /// Skip this fire.
    Skip,
    /// Keep at most one pending fire until the running one ends.
    BufferOne,
    /// Cancel the running one, then run.
    CancelPrevious,
}

/// DST policy as written in a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dst {
    /// skip or shift (default).
    #[serde(default)]
    pub gap: DstGap,
    /// first (default), last or both.
    #[serde(default)]
    pub fold: DstFold,
}

/// Serde form of [`GapPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DstGap {
    /// See [`GapPolicy::Skip`].
    Skip,
    /// See [`GapPolicy::Shift`].
    #[default]
    Shift,
}

/// Serde form of [`FoldPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DstFold {
    /// See [`FoldPolicy::First`].
    #[default]
    First,
    /// See [`FoldPolicy::Last`].
    Last,
    /// See [`FoldPolicy::Both`].
    Both,
}

impl ScheduleDef {
    /// Parses and validates a schedule stored under `id`.
    pub fn from_json(id: &str, bytes: &[u8]) -> Result<ScheduleDef, String> {
        let def = ScheduleDef::from_json_except_calendar(id, bytes)?;
        def.calendar().map_err(crate::headers::bounded)?;
        Ok(def)
    }

    /// Like [`ScheduleDef::from_json`] but leaves the calendar (cron syntax,
    /// time zone, bounds) to the caller, which must call
    /// [`ScheduleDef::calendar`] or reuse a calendar built from identical
    /// fields; the ticker does so to share one calendar among many schedules.
    pub fn from_json_except_calendar(id: &str, bytes: &[u8]) -> Result<ScheduleDef, String> {
        validate_name("schedule", id).map_err(|e| e.to_string())?;
        let def: ScheduleDef = serde_json::from_slice(bytes).map_err(|e| format!("malformed schedule: {e}"))?;
        if def.max_runs == Some(0) {
            return Err("max_runs must be at least 1".to_string());
        }
        if let Some(dep) = &def.depends_on {
            validate_name("schedule", &dep.schedule).map_err(|e| format!("depends_on: {e}"))?;
        }
        def.validate_task().map_err(crate::headers::bounded)?;
        Ok(def)
    }

    /// The name runs of this schedule carry: the task name, or the schedule
    /// id for an inline definition.
    pub fn task_name<'a>(&'a self, id: &'a str) -> &'a str {
        match &self.task {
            TaskRef::Name(n) => n,
            TaskRef::Inline(_) => id,
        }
    }

    /// The inline definition, if any.
    pub fn inline_task(&self) -> Option<&TaskDef> {
        match &self.task {
            TaskRef::Inline(def) => Some(def),
            TaskRef::Name(_) => None,
        }
    }

    fn validate_task(&self) -> Result<(), String> {
        match &self.task {
            TaskRef::Name(n) => validate_name("task", n).map_err(|e| e.to_string()),
            TaskRef::Inline(def) if !def.triggers.is_empty() => Err(
                "inline task: triggers belong to task definitions in the tasks bucket, not to a schedule's inline task"
                    .to_string(),
            ),
            TaskRef::Inline(def) => def.validate().map_err(|e| format!("inline task: {e}")),
        }
    }

    /// The time zone, UTC when none is given.
    pub fn time_zone(&self) -> Result<TimeZone, String> {
        match self.timezone.as_deref() {
            None | Some("UTC") => Ok(TimeZone::UTC),
            Some(name) => TimeZone::get(name).map_err(|_| {
                format!("unknown time zone {} (use an IANA name such as Europe/Berlin)", crate::headers::shown(name))
            }),
        }
    }

    /// The schedule's fire instants.
    pub fn calendar(&self) -> Result<Calendar, String> {
        let tz = self.time_zone()?;
        if self.phase.is_some() && self.every.is_none() {
            return Err("phase only applies to every".to_string());
        }
        let rule = match (&self.cron, &self.every, &self.at) {
            (Some(expr), None, None) => Rule::Cron(Cron::parse(expr).map_err(|e| e.to_string())?),
            (None, Some(every), None) => {
                if every.0 < Duration::from_millis(1) {
                    return Err("every must be at least 1ms".to_string());
                }
                let base = self.start_at.unwrap_or(Timestamp::UNIX_EPOCH);
                let phase = SignedDuration::try_from(self.phase.unwrap_or_default().0).map_err(|e| e.to_string())?;
                let anchor = base.checked_add(phase).map_err(|e| format!("phase: {e}"))?;
                Rule::Every { interval: every.0, anchor }
            }
            (None, None, Some(at)) => Rule::At(*at),
            (None, None, None) => return Err("a schedule needs one of cron, every or at".to_string()),
            _ => return Err("a schedule takes exactly one of cron, every or at".to_string()),
        };
        if let (Some(s), Some(e)) = (self.start_at, self.end_at)
            && s > e
        {
            return Err("start_at is after end_at".to_string());
        }
        let dst = DstPolicy {
            gap: match self.dst.gap {
                DstGap::Skip => GapPolicy::Skip,
                DstGap::Shift => GapPolicy::Shift,
            },
            fold: match self.dst.fold {
                DstFold::First => FoldPolicy::First,
                DstFold::Last => FoldPolicy::Last,
                DstFold::Both => FoldPolicy::Both,
            },
        };
        Ok(Calendar::new(rule, tz, dst, self.start_at, self.end_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let def = ScheduleDef::from_json(
            "nightly",
            br#"{
              "cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "resize-image",
              "payload": {"bucket": "photos"}, "misfire": {"policy": "latest", "window": "1h"},
              "overlap": "allow", "jitter": "0s", "dst": {"gap": "shift", "fold": "first"}, "paused": false
            }"#,
        )
        .unwrap();
        assert_eq!(def.task_name("nightly"), "resize-image");
        let next = def.calendar().unwrap().next_after("2026-11-25T00:00:00Z".parse().unwrap()).unwrap();
        assert_eq!(next.to_string(), "2026-11-25T01:30:00Z");
    }

    #[test]
    fn inline_task_runs_under_the_schedule_id() {
        let def = ScheduleDef::from_json(
            "tick",
            br#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": "fn.x"}}}"#,
        )
        .unwrap();
        assert_eq!(def.task_name("tick"), "tick");
        assert!(def.inline_task().is_some());
    }

    #[test]
    fn bad_schedules_say_why() {
        for (id, json, needle) in [
            ("a.b", r#"{"every": "1s", "task": "t"}"#, "invalid schedule name"),
            ("s", r#"{"every": "1s"}"#, "missing field `task`"),
            ("s", r#"{"task": "t"}"#, "one of cron, every or at"),
            ("s", r#"{"cron": "* * * * *", "every": "1s", "task": "t"}"#, "exactly one"),
            ("s", r#"{"cron": "61 * * * *", "task": "t"}"#, "minutes"),
            ("s", r#"{"cron": "* * * * *", "timezone": "Mars/Olympus", "task": "t"}"#, "unknown time zone"),
            ("s", r#"{"every": "1s", "task": "t", "color": "red"}"#, "unknown field `color`"),
            ("s", r#"{"every": "1s", "task": "bad name"}"#, "invalid task name"),
            ("s", r#"{"every": "1s", "task": 42}"#, "task name or an inline"),
            ("s", r#"{"every": "1s", "task": {"handler": {"type": "nats", "subject": ""}}}"#, "inline task"),
            ("s", r#"{"cron": "* * * * *", "phase": "1s", "task": "t"}"#, "phase only applies"),
            ("s", r#"{"at": "tomorrow", "task": "t"}"#, "malformed schedule"),
            ("s", r#"{"every": "1s", "task": "t", "misfire": {"policy": "sometimes"}}"#, "unknown variant"),
            ("s", "{", "malformed schedule"),
        ] {
            let err = ScheduleDef::from_json(id, json.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}

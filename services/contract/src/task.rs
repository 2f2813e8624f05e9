//! Task definitions: the value under a task name in `jetsched-tasks`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::names::{DEFAULT_QUEUE, validate_name};
use crate::resources::{ByteAmount, Cores, Need, Resources};

/// Lowest and highest importance.
pub const IMPORTANCE_RANGE: std::ops::RangeInclusive<u8> = 0..=10;

/// What runs a task and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    /// What executes one run. Absent only for workflows (`steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Handler>,
    /// Work queue; workers serve the queues they are configured for.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// 0 (least) to 10 (most); default 5.
    #[serde(default = "default_importance")]
    pub importance: u8,
    /// Typical run time; shorter work is preferred at equal importance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_duration: Option<HumanDuration>,
    /// Start-to-close limit of one attempt; the handler is stopped past it.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A run not started this long after it was queued expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start: Option<HumanDuration>,
    /// Retry policy for failed attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Concurrency limit keyed by a template over the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Name of a time window the task may only start in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Worker requirements (slots, labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requires>,
    /// Which matching worker runs it: any (default), round_robin,
    /// least_loaded, {"consistent_hash": "<template>"}, broadcast.
    #[serde(default, skip_serializing_if = "crate::routing::Routing::is_any")]
    pub routing: crate::routing::Routing,
    /// Starts per period, keyed by a template over the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::routing::RateLimit>,
    /// Workflow steps; a task with steps is a DAG of other tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<BTreeMap<String, Step>>,
    /// Events that start runs: a user stream, a plain subject, or a KV key filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::trigger::EventTrigger>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Names of the handler's `env` variables or HTTP `headers` whose
    /// values are secret: the worker masks those values (`***`) in the
    /// output it captures (task logs, the event's output, a text result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

fn default_importance() -> u8 {
    5
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// How a run is executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Handler {
    /// Request-reply to a NATS service in any language.
    Nats {
        /// The subject the function listens on.
        subject: String,
    },
    /// An HTTP webhook; the payload is the JSON body.
    Http {
        /// Absolute http:// or https:// URL.
        url: String,
        /// HTTP method, default POST.
        #[serde(default = "default_method")]
        method: String,
        /// Extra request headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// A command allow-listed in the worker's configuration; payload on stdin.
    Exec {
        /// argv; `command[0]` must be allow-listed.
        command: Vec<String>,
        /// Extra environment variables.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// A Rust handler registered in the worker binary.
    Builtin {
        /// Registered handler name.
        name: String,
    },
}

fn default_method() -> String {
    "POST".to_string()
}

impl Handler {
    /// The `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Handler::Nats { .. } => "nats",
            Handler::Http { .. } => "http",
            Handler::Exec { .. } => "exec",
            Handler::Builtin { .. } => "builtin",
        }
    }
}

/// Retry policy; attempt `n` (n >= 2) waits
/// `min(max_backoff, initial_backoff * multiplier^(n-2))`, varied by up to
/// `jitter` (a fraction) either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; 1 disables retries.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// Upper bound of any wait.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Growth factor per attempt (>= 1).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Random spread as a fraction of the wait, 0 to 1.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry).
    /// `spread` in `[0, 1)` picks the point within the jitter band; callers
    /// derive it from the run id so every replica agrees.
    pub fn backoff(&self, next_attempt: u32, spread: f64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let base = self.initial_backoff.0.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max_backoff.0.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * spread.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((capped * factor).clamp(0.0, self.max_backoff.0.as_secs_f64()))
    }
}

/// A concurrency limit shared by every run whose key renders the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Template over the payload, e.g. `{{payload.customer}}`.
    pub key: String,
    /// Runs allowed at once per key.
    pub limit: u32,
}

/// What a worker must offer to run the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Slots of the worker's capacity one run uses.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Labels the worker must carry with these exact values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Cores one run holds while it runs (`2`, `0.5`).
    #[serde(default, skip_serializing_if = "Cores::is_zero")]
    pub cpu: Cores,
    /// Memory one run holds while it runs (`"4GiB"`).
    #[serde(default, skip_serializing_if = "ByteAmount::is_zero")]
    pub memory: ByteAmount,
    /// Disk one run holds while it runs (`"10GiB"`).
    #[serde(default, skip_serializing_if = "ByteAmount::is_zero")]
    pub disk: ByteAmount,
}

impl Requires {
    /// The cores, memory and disk one run holds.
    pub fn resources(&self) -> Resources {
        Resources { cpu: self.cpu, memory: self.memory, disk: self.disk }
    }
}

fn default_slots() -> u32 {
    1
}

/// When a workflow step may start, given its upstream steps' outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Every upstream step succeeded.
    #[default]
    AllSuccess,
    /// Every upstream step finished, whatever the outcome.
    AllDone,
    /// At least one upstream step succeeded.
    OneSuccess,
    /// At least one upstream step failed.
    OneFailed,
    /// No upstream step failed (skipped ones are fine).
    NoneFailed,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The task this step runs.
    pub task: String,
    /// Steps that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Rule over the upstream outcomes.
    #[serde(default)]
    pub trigger: Trigger,
}

impl TaskDef {
    /// A task run by `handler` with every default.
    pub fn with_handler(handler: Handler) -> Self {
        TaskDef {
            handler: Some(handler),
            queue: default_queue(),
            importance: default_importance(),
            expected_duration: None,
            timeout: default_timeout(),
            schedule_to_start: None,
            retry: RetryPolicy::default(),
            concurrency: None,
            window: None,
            requires: None,
            routing: crate::routing::Routing::Any,
            rate_limit: None,
            steps: None,
            triggers: Vec::new(),
            description: None,
            secrets: Vec::new(),
        }
    }

    /// What one run takes of a worker: its cores, memory and disk, and its
    /// slots (at least one).
    pub fn need(&self) -> Need {
        match &self.requires {
            Some(r) => Need { resources: r.resources(), slots: u64::from(r.slots.max(1)) },
            None => Need { resources: Resources::default(), slots: 1 },
        }
    }

    /// True when a dispatcher places each run on a worker with room for it
    /// (its own queue `_w-<id>`), rather than leaving it on a queue for
    /// whichever worker asks first: the run requires cores, memory or disk,
    /// or its routing is `least_loaded`.
    pub fn placed_by_room(&self) -> bool {
        self.routing == crate::routing::Routing::LeastLoaded || !self.need().resources.is_zero()
    }

    /// Parses and validates a definition.
    pub fn from_json(bytes: &[u8]) -> Result<TaskDef, String> {
        let def: TaskDef = serde_json::from_slice(bytes).map_err(|e| format!("malformed task definition: {e}"))?;
        def.validate().map_err(crate::headers::bounded)?;
        Ok(def)
    }

    /// Checks what the types cannot: names, ranges, handler fields, the DAG.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("queue", &self.queue).map_err(|e| e.to_string())?;
        if !IMPORTANCE_RANGE.contains(&self.importance) {
            return Err(format!("importance {} is outside 0-10", self.importance));
        }
        if self.timeout.0.is_zero() {
            return Err("timeout must be greater than 0".to_string());
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".to_string());
        }
        if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
            return Err("retry.multiplier must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return Err("retry.jitter must be between 0 and 1".to_string());
        }
        if r.initial_backoff > r.max_backoff {
            return Err("retry.initial_backoff must not exceed retry.max_backoff".to_string());
        }
        if let Some(c) = &self.concurrency {
            if c.limit == 0 || c.key.trim().is_empty() {
                return Err("concurrency needs a non-empty key and a limit of at least 1".to_string());
            }
            crate::routing::validate_template(&c.key).map_err(|e| format!("concurrency.key: {e}"))?;
        }
        if let Some(r) = &self.rate_limit {
            let per = r.per.0;
            if r.limit == 0 || per < std::time::Duration::from_millis(1) || per > std::time::Duration::from_secs(86_400)
            {
                return Err("rate_limit needs a limit of at least 1 and a period between 1ms and 1d".to_string());
            }
            if let Some(k) = &r.key {
                crate::routing::validate_template(k).map_err(|e| format!("rate_limit.key: {e}"))?;
            }
        }
        if let crate::routing::Routing::ConsistentHash(k) = &self.routing {
            crate::routing::validate_template(k).map_err(|e| format!("routing.consistent_hash: {e}"))?;
        }
        if self.queue.starts_with('_') {
            return Err(format!("queue {:?}: names starting with '_' are reserved", self.queue));
        }
        if let Some(w) = &self.window {
            validate_name("window", w).map_err(|e| e.to_string())?;
        }
        if let Some(req) = &self.requires
            && req.slots == 0
        {
            return Err("requires.slots must be at least 1".to_string());
        }
        crate::trigger::validate_triggers(&self.triggers)?;
        match (&self.handler, &self.steps) {
            (Some(_), Some(_)) => Err("a task has either a handler or steps, not both".to_string()),
            (None, None) => Err("a task needs a handler (or steps, for a workflow)".to_string()),
            (Some(h), None) => validate_handler(h),
            (None, Some(steps)) => validate_steps(steps),
        }
    }
}

fn validate_handler(h: &Handler) -> Result<(), String> {
    match h {
        Handler::Nats { subject } => {
            let bad = subject.is_empty()
                || subject.split('.').any(|t| t.is_empty() || t == "*" || t == ">")
                || subject.chars().any(char::is_whitespace);
            if bad {
                return Err(format!("handler.subject {subject:?} must be a concrete NATS subject (no wildcards)"));
            }
        }
        Handler::Http { url, method, headers } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.chars().any(char::is_control) {
                return Err(format!("handler.url {url:?} must start with http:// or https://"));
            }
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.to_ascii_uppercase().as_str()) {
                return Err(format!("handler.method {method:?} must be GET, POST, PUT, PATCH or DELETE"));
            }
            // No header may smuggle a line break (a second header) or be
            // anything but an RFC 9110 token.
            for (name, value) in headers {
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || !name.bytes().all(token) {
                    return Err(format!("handler.headers: {name:?} is not a header name"));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(format!("handler.headers.{name}: a value cannot hold line breaks or NUL"));
                }
            }
        }
        Handler::Exec { command, .. } => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err("handler.command must name a program".to_string());
            }
        }
        Handler::Builtin { name } => {
            if name.is_empty() {
                return Err("handler.name must not be empty".to_string());
            }
        }
    }
    Ok(())
}

fn validate_steps(steps: &BTreeMap<String, Step>) -> Result<(), String> {
    if steps.is_empty() {
        return Err("steps must not be empty".to_string());
    }
    for (name, step) in steps {
        validate_name("step", name).map_err(|e| e.to_string())?;
        validate_name("task", &step.task).map_err(|e| format!("step {name}: {e}"))?;
        for dep in &step.depends_on {
            if !steps.contains_key(dep) {
                return Err(format!("step {name} depends on unknown step {dep:?}"));
            }
        }
    }
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = steps
            .iter()
            .filter(|(n, s)| !done.contains(n.as_str()) && s.depends_on.iter().all(|d| done.contains(d.as_str())))
            .map(|(n, _)| n.as_str())
            .collect();
        if ready.is_empty() {
            break;
        }
        done.extend(ready);
    }
    if done.len() < steps.len() {
        let cyclic: Vec<&str> = steps.keys().map(String::as_str).filter(|n| !done.contains(n)).collect();
        return Err(format!("steps form a cycle through {}", cyclic.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let def = TaskDef::from_json(
            br#"{
              "handler": {"type": "nats", "subject": "fn.resize"},
              "queue": "default", "importance": 5, "expected_duration": "2s", "timeout": "30s",
              "retry": {"max_attempts": 5, "initial_backoff": "1s", "max_backoff": "5m", "multiplier": 2.0, "jitter": 0.2},
              "concurrency": {"key": "{{payload.customer}}", "limit": 1},
              "window": "business-hours",
              "requires": {"slots": 1, "labels": {"region": "eu"}}
            }"#,
        )
        .unwrap();
        assert_eq!(def.handler, Some(Handler::Nats { subject: "fn.resize".into() }));
        assert_eq!(def.retry.max_attempts, 5);
        assert_eq!(def.timeout, HumanDuration::from_secs(30));
    }

    #[test]
    fn defaults_fill_in() {
        let def = TaskDef::from_json(br#"{"handler": {"type": "exec", "command": ["echo"]}}"#).unwrap();
        assert_eq!(def.queue, "default");
        assert_eq!(def.importance, 5);
        assert_eq!(def.retry, RetryPolicy::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_with_reasons() {
        for (json, needle) in [
            (r#"{"handler": {"type": "nats", "subject": "a"}, "colour": 1}"#, "unknown field `colour`"),
            (r#"{"handler": {"type": "nats", "subject": "a", "extra": 1}}"#, "unknown field `extra`"),
            (r#"{"handler": {"type": "ftp"}}"#, "unknown variant `ftp`"),
            (r#"{"handler": {"type": "nats", "subject": "a.*"}}"#, "no wildcards"),
            (r#"{"handler": {"type": "http", "url": "ftp://x"}}"#, "http://"),
            (r#"{"handler": {"type": "exec", "command": []}}"#, "name a program"),
            (r#"{"handler": {"type": "nats", "subject": "a"}, "queue": "a.b"}"#, "invalid queue name"),
            (r#"{"handler": {"type": "nats", "subject": "a"}, "importance": 11}"#, "outside 0-10"),
            (r#"{"handler": {"type": "nats", "subject": "a"}, "timeout": 30}"#, "duration string"),
            (r#"{"handler": {"type": "nats", "subject": "a"}, "retry": {"max_attempts": 0}}"#, "at least 1"),
            (r#"{}"#, "needs a handler"),
            ("not json", "malformed task definition"),
        ] {
            let err = TaskDef::from_json(json.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn workflow_cycles_and_unknown_steps_are_rejected() {
        let ok = br#"{"steps": {
            "a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]},
            "c": {"task": "t", "depends_on": ["a"]}, "d": {"task": "t", "depends_on": ["b", "c"], "trigger": "all_done"}}}"#;
        assert!(TaskDef::from_json(ok).is_ok());
        let cycle = br#"{"steps": {"a": {"task": "t", "depends_on": ["c"]}, "b": {"task": "t", "depends_on": ["a"]}, "c": {"task": "t", "depends_on": ["b"]}}}"#;
        assert!(TaskDef::from_json(cycle).unwrap_err().contains("cycle through a, b, c"));
        let unknown = br#"{"steps": {"a": {"task": "t", "depends_on": ["zz"]}}}"#;
        assert!(TaskDef::from_json(unknown).unwrap_err().contains("unknown step \"zz\""));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let r = RetryPolicy {
            max_attempts: 10,
            initial_backoff: HumanDuration::from_secs(1),
            max_backoff: HumanDuration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.0,
        };
        let secs: Vec<u64> = (2..7).map(|n| r.backoff(n, 0.5).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10]);
        let j = RetryPolicy { jitter: 0.5, ..r };
        assert_eq!(j.backoff(2, 0.0), Duration::from_millis(500));
        assert_eq!(j.backoff(2, 1.0), Duration::from_millis(1500));
    }
}

//! Every subject, stream, bucket and consumer name jetsched uses, built from
//! one prefix (default `jetsched`) so that several tenants can share a NATS
//! account. No other module builds a subject string.

use std::fmt;

/// The default prefix: subjects `jetsched.*`, streams `JETSCHED_*`, buckets `jetsched-*`.
pub const DEFAULT_PREFIX: &str = "jetsched";

/// Number of priority bands per queue; band 0 is served first.
pub const BANDS: u8 = 10;

/// The queue a task runs on when its definition names none.
pub const DEFAULT_QUEUE: &str = "default";

/// The queue named in the record of a fire withdrawn before any dispatcher
/// handled it (it was never dispatched to a queue).
pub const UNDISPATCHED_QUEUE: &str = "_none";

/// Longest task, schedule, queue or step name.
pub const MAX_NAME_LEN: usize = 64;

/// A name that is not `^[A-Za-z0-9_-]{1,64}$`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {}: must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'", crate::headers::shown(name))]
pub struct NameError {
    /// What was being named (task, schedule, queue, ...).
    pub kind: &'static str,
    /// The rejected name.
    pub name: String,
}

/// Checks a task, schedule, queue or step name (one subject token, no dots).
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(NameError { kind, name: name.to_string() }) }
}

/// Which kind of message arrived on the inbox stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxKind {
    /// `<prefix>.submit.<task>`: an ad-hoc submission by a user.
    Submit,
    /// `<prefix>.due.<task>`: a schedule fired by the ticker.
    Due,
    /// `<prefix>.step.<task>`: a dispatcher starting a workflow step.
    Step,
    /// `<prefix>.advance.<task>`: a workflow step running `task` reached an outcome.
    Advance,
}

/// The name set for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
    upper: String,
}

impl Default for Names {
    fn default() -> Self {
        Names { prefix: DEFAULT_PREFIX.to_string(), upper: DEFAULT_PREFIX.to_ascii_uppercase() }
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl Names {
    /// Names under `prefix`, which must itself be a valid name.
    pub fn new(prefix: &str) -> Result<Names, NameError> {
        validate_name("prefix", prefix)?;
        Ok(Names { prefix: prefix.to_string(), upper: prefix.to_ascii_uppercase().replace('-', "_") })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ---- subjects ----

    /// Where users submit ad-hoc runs of `task`.
    pub fn submit_subject(&self, task: &str) -> String {
        format!("{}.submit.{task}", self.prefix)
    }

    /// Where the ticker publishes a schedule's fires of `task`.
    pub fn due_subject(&self, task: &str) -> String {
        format!("{}.due.{task}", self.prefix)
    }

    /// Work for `queue` at priority `band`.
    pub fn task_subject(&self, queue: &str, band: u8) -> String {
        format!("{}.task.{queue}.{band}", self.prefix)
    }

    /// A run event.
    pub fn event_subject(&self, task: &str, status: &str) -> String {
        format!("{}.event.{task}.{status}", self.prefix)
    }

    /// Every event of every task.
    pub fn event_filter(&self) -> String {
        format!("{}.event.>", self.prefix)
    }

    /// The events of every task with one of `statuses`, one subject each.
    pub fn event_status_subjects<'s>(&self, statuses: impl IntoIterator<Item = &'s str>) -> Vec<String> {
        statuses.into_iter().map(|s| self.event_subject("*", s)).collect()
    }

    /// A dead letter of `task`.
    pub fn dead_subject(&self, task: &str) -> String {
        format!("{}.dead.{task}", self.prefix)
    }

    /// Where a cancel request for `run_id` is published (core NATS, not stored).
    pub fn cancel_subject(&self, run_id: &str) -> String {
        format!("{}.cancel.{run_id}", self.prefix)
    }

    /// Every cancel request.
    pub fn cancel_filter(&self) -> String {
        format!("{}.cancel.>", self.prefix)
    }

    /// Run id from a cancel subject.
    pub fn parse_cancel_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".cancel.")
    }

    /// Where a ticker asks the worker holding a staged run of a schedule that
    /// was deleted, paused or edited to withdraw it (core NATS request; the
    /// holder answers [`crate::WithdrawReply`]).
    pub fn withdraw_subject(&self, run_id: &str) -> String {
        format!("{}.withdraw.{run_id}", self.prefix)
    }

    /// Every withdrawal request.
    pub fn withdraw_filter(&self) -> String {
        format!("{}.withdraw.>", self.prefix)
    }

    /// Run id from a withdrawal subject.
    pub fn parse_withdraw_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".withdraw.")
    }

    /// Where the worker writes the captured output of attempt `attempt` of
    /// `run_id` (`<prefix>.log.<attempt>.<run id>`: the attempt comes first
    /// so that a run's filter does not also match its workflow steps, whose
    /// ids extend the workflow run's).
    pub fn log_subject(&self, run_id: &str, attempt: u32) -> String {
        format!("{}.log.{attempt}.{run_id}", self.prefix)
    }

    /// Every attempt's output of `run_id`.
    pub fn run_logs_filter(&self, run_id: &str) -> String {
        format!("{}.log.*.{run_id}", self.prefix)
    }

    /// Attempt and run id of a log subject.
    pub fn parse_log_subject<'a>(&self, subject: &'a str) -> Option<(u32, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".log.")?;
        let (attempt, run) = rest.split_once('.')?;
        Some((attempt.parse().ok()?, run))
    }

    /// Every dead letter.
    pub fn dead_filter(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// Splits an inbox subject into its kind and task name.
    pub fn parse_inbox_subject<'a>(&self, subject: &'a str) -> Option<(InboxKind, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let (kind, task) = rest.split_once('.')?;
        let kind = match kind {
            "submit" => InboxKind::Submit,
            "due" => InboxKind::Due,
            "step" => InboxKind::Step,
            "advance" => InboxKind::Advance,
            _ => return None,
        };
        Some((kind, task))
    }

    /// Splits a task subject into queue and band.
    pub fn parse_task_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, u8)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".task.")?;
        let (queue, band) = rest.split_once('.')?;
        Some((queue, band.parse().ok()?))
    }

    /// Splits an event subject into task and status.
    pub fn parse_event_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".event.")?;
        rest.split_once('.')
    }

    // ---- streams ----

    /// Submissions and due fires, consumed by dispatchers.
    pub fn inbox_stream(&self) -> String {
        format!("{}_INBOX", self.upper)
    }

    /// Subjects of the inbox stream.
    pub fn inbox_subjects(&self) -> Vec<String> {
        ["submit", "due", "step", "advance"].iter().map(|k| format!("{}.{k}.>", self.prefix)).collect()
    }

    /// Where a dispatcher starts step `task` of a workflow run.
    pub fn step_subject(&self, task: &str) -> String {
        format!("{}.step.{task}", self.prefix)
    }

    /// Where the outcome of a workflow step running `task` is reported.
    pub fn advance_subject(&self, task: &str) -> String {
        format!("{}.advance.{task}", self.prefix)
    }

    /// The queue of runs addressed to one worker (routing round_robin,
    /// consistent_hash, broadcast). Names starting with `_` are reserved.
    pub fn worker_queue(&self, worker_id: &str) -> String {
        format!("_w-{worker_id}")
    }

    /// The worker id of a worker's own queue (`None` for any other queue).
    pub fn parse_worker_queue<'a>(&self, queue: &'a str) -> Option<&'a str> {
        queue.strip_prefix("_w-")
    }

    /// The shared queue of runs of `queue` that require `labels`: served
    /// only by workers of that queue carrying all those labels.
    pub fn labelled_queue(&self, queue: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
        let mut key = queue.to_string();
        for (k, v) in labels {
            key.push('\u{1f}');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        format!("_l-{:08x}", crate::hash::fnv1a(key.as_bytes()) as u32)
    }

    /// Dispatched work, consumed by workers.
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.upper)
    }

    /// Subjects of the tasks stream.
    pub fn tasks_subjects(&self) -> Vec<String> {
        vec![format!("{}.task.>", self.prefix)]
    }

    /// Run events.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper)
    }

    /// Dead letters.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper)
    }

    /// Handlers' captured output (task logs).
    pub fn logs_stream(&self) -> String {
        format!("{}_LOGS", self.upper)
    }

    /// Subjects of the logs stream.
    pub fn logs_subjects(&self) -> Vec<String> {
        vec![format!("{}.log.>", self.prefix)]
    }

    // ---- NATS-level names a role's permissions are built from ----

    /// The inbox prefix of a client playing `role` (`_INBOX_<prefix>_<role>`):
    /// replies to its requests arrive under it, so that one role's
    /// permissions can let it read its own replies and nobody else's.
    pub fn inbox_prefix(&self, role: &str) -> String {
        format!("_INBOX_{}_{role}", self.prefix)
    }

    /// The stream JetStream keeps bucket `bucket` in.
    pub fn bucket_stream(&self, bucket: &str) -> String {
        format!("KV_{bucket}")
    }

    /// Every subject of bucket `bucket` (puts, deletes and purges of any key).
    pub fn bucket_subjects(&self, bucket: &str) -> String {
        format!("$KV.{bucket}.>")
    }

    /// Events published to the plain subjects task triggers name, captured
    /// so that none is lost once the server acknowledged it.
    pub fn triggers_stream(&self) -> String {
        format!("{}_TRIGGERS", self.upper)
    }

    /// The subject the triggers stream holds while no trigger names a plain
    /// subject (a stream needs at least one); nothing is published to it.
    pub fn triggers_idle_subject(&self) -> String {
        format!("{}.triggers.idle", self.prefix)
    }

    /// The subject of keys matching `key_filter` in bucket `bucket`'s stream.
    pub fn kv_subject(&self, bucket: &str, key_filter: &str) -> String {
        format!("$KV.{bucket}.{key_filter}")
    }

    /// The key a subject of bucket `bucket`'s stream is for.
    pub fn parse_kv_subject<'a>(&self, bucket: &str, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix("$KV.")?.strip_prefix(bucket)?.strip_prefix('.')
    }

    // ---- buckets ----

    /// Task definitions, keyed by task name.
    pub fn tasks_bucket(&self) -> String {
        format!("{}-tasks", self.prefix)
    }

    /// Schedules, keyed by schedule id.
    pub fn schedules_bucket(&self) -> String {
        format!("{}-schedules", self.prefix)
    }

    /// Run records, keyed by run id.
    pub fn runs_bucket(&self) -> String {
        format!("{}-runs", self.prefix)
    }

    /// The stream behind the runs bucket (JetStream names a bucket's stream
    /// `KV_<bucket>`): read in stream order, it lists runs by last change.
    pub fn runs_bucket_stream(&self) -> String {
        self.bucket_stream(&self.runs_bucket())
    }

    /// The subject of run records whose keys match `key_filter` (a key or a
    /// filter with `*`/`>`), in the runs bucket's stream.
    pub fn runs_bucket_subject(&self, key_filter: &str) -> String {
        self.kv_subject(&self.runs_bucket(), key_filter)
    }

    /// The run record key a runs bucket stream subject is for.
    pub fn parse_runs_bucket_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.parse_kv_subject(&self.runs_bucket(), subject)
    }

    /// Worker heartbeats, keyed by worker id.
    pub fn workers_bucket(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    /// Handler checkpoints, keyed by run id.
    pub fn checkpoints_bucket(&self) -> String {
        format!("{}-checkpoints", self.prefix)
    }

    /// The ticker's progress: partition watermarks and `max_runs` fire counts.
    pub fn ticker_bucket(&self) -> String {
        format!("{}-ticker", self.prefix)
    }

    /// The ticker's partition leases and live members (entries expire unless refreshed).
    pub fn ticker_leases_bucket(&self) -> String {
        format!("{}-ticker-leases", self.prefix)
    }

    /// Backfills (a schedule's fires over a past range), keyed by backfill id.
    pub fn backfills_bucket(&self) -> String {
        format!("{}-backfills", self.prefix)
    }

    /// Time windows, keyed by window name.
    pub fn windows_bucket(&self) -> String {
        format!("{}-windows", self.prefix)
    }

    /// Concurrency slots held by running runs (entries expire unless refreshed).
    pub fn slots_bucket(&self) -> String {
        format!("{}-slots", self.prefix)
    }

    /// Overlap state of schedules whose `overlap` is not `allow`, keyed by
    /// [`Names::overlap_key`].
    pub fn overlap_bucket(&self) -> String {
        format!("{}-overlap", self.prefix)
    }

    /// The key of `schedule`'s overlap state in the overlap bucket.
    pub fn overlap_key(&self, schedule: &str) -> String {
        schedule.to_string()
    }

    /// Rate-limit counters per period.
    pub fn rates_bucket(&self) -> String {
        format!("{}-rates", self.prefix)
    }

    /// The key in the rates bucket counting the starts of `task` whose
    /// rate-limit key renders to `key`, in period number `period` (periods of
    /// the limit's `per`, counted from the Unix epoch). The rendered key is
    /// hashed: it may hold any character, a KV key may not.
    pub fn rate_counter_key(&self, task: &str, key: &str, period: u128) -> String {
        format!("r.{task}.{:016x}.{period}", crate::hash::fnv1a(key.as_bytes()))
    }

    /// The key in the slots bucket of slot `n` (0-based, below the limit)
    /// of `task`'s concurrency limit for runs whose key renders to `key`
    /// (hashed, as for [`Names::rate_counter_key`]).
    pub fn concurrency_slot_key(&self, task: &str, key: &str, n: u32) -> String {
        format!("c.{task}.{:016x}.{n}", crate::hash::fnv1a(key.as_bytes()))
    }

    /// The key in the rates bucket holding `task`'s round-robin rotation
    /// (the next turn to hand out, shared by every dispatcher).
    pub fn round_robin_key(&self, task: &str) -> String {
        format!("rr.{task}")
    }

    // ---- consumers ----

    /// The durable consumer all dispatchers share.
    pub fn dispatcher_consumer(&self) -> String {
        "dispatcher".to_string()
    }

    /// The durable consumer all workers of `queue` share for `band`.
    pub fn worker_consumer(&self, queue: &str, band: u8) -> String {
        format!("worker-{queue}-{band}")
    }

    /// The durable consumer reading the events of one trigger of `task`
    /// (`source` is [`crate::trigger::Source::identity`]) on its source
    /// stream: `<prefix>-trg-<task>-<hash of the source>`. Editing a
    /// trigger's batching, filter or mapping keeps it (and its position);
    /// changing its source makes a new one.
    pub fn trigger_consumer(&self, task: &str, source: &str) -> String {
        format!("{}-trg-{task}-{:08x}", self.prefix, crate::hash::fnv1a(source.as_bytes()) as u32)
    }

    /// Queue and band of a worker consumer's name.
    pub fn parse_worker_consumer<'a>(&self, name: &'a str) -> Option<(&'a str, u8)> {
        let (queue, band) = name.strip_prefix("worker-")?.rsplit_once('-')?;
        Some((queue, band.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_spec() {
        let n = Names::default();
        assert_eq!(n.submit_subject("resize-image"), "jetsched.submit.resize-image");
        assert_eq!(n.due_subject("resize-image"), "jetsched.due.resize-image");
        assert_eq!(n.task_subject("default", 3), "jetsched.task.default.3");
        assert_eq!(n.event_subject("resize-image", "succeeded"), "jetsched.event.resize-image.succeeded");
        assert_eq!(n.dead_subject("resize-image"), "jetsched.dead.resize-image");
        assert_eq!(n.inbox_stream(), "JETSCHED_INBOX");
        assert_eq!(n.tasks_stream(), "JETSCHED_TASKS");
        assert_eq!(n.events_stream(), "JETSCHED_EVENTS");
        assert_eq!(n.dlq_stream(), "JETSCHED_DLQ");
        assert_eq!(n.logs_stream(), "JETSCHED_LOGS");
        assert_eq!(n.log_subject("s.nightly.20261125T023000Z", 2), "jetsched.log.2.s.nightly.20261125T023000Z");
        assert_eq!(n.run_logs_filter("t.a.q1"), "jetsched.log.*.t.a.q1");
        assert_eq!(n.tasks_bucket(), "jetsched-tasks");
        assert_eq!(n.schedules_bucket(), "jetsched-schedules");
        assert_eq!(n.runs_bucket(), "jetsched-runs");
        assert_eq!(n.workers_bucket(), "jetsched-workers");
        assert_eq!(n.checkpoints_bucket(), "jetsched-checkpoints");
        assert_eq!(n.ticker_bucket(), "jetsched-ticker");
        assert_eq!(n.ticker_leases_bucket(), "jetsched-ticker-leases");
        assert_eq!(n.overlap_bucket(), "jetsched-overlap");
        assert_eq!(n.overlap_key("nightly"), "nightly");
        assert_eq!(n.backfills_bucket(), "jetsched-backfills");
        assert_eq!(n.triggers_stream(), "JETSCHED_TRIGGERS");
        assert_eq!(n.bucket_stream("config"), "KV_config");
        assert_eq!(n.kv_subject("config", "pricing.>"), "$KV.config.pricing.>");
        assert_eq!(n.parse_kv_subject("config", "$KV.config.pricing.eu"), Some("pricing.eu"));
        let consumer = n.trigger_consumer("email", "subject\u{1f}orders.>");
        assert!(consumer.starts_with("jetsched-trg-email-") && consumer.len() == "jetsched-trg-email-".len() + 8);
    }

    #[test]
    fn prefix_renames_everything() {
        let n = Names::new("acme-prod").unwrap();
        assert_eq!(n.submit_subject("t"), "acme-prod.submit.t");
        assert_eq!(n.inbox_stream(), "ACME_PROD_INBOX");
        assert_eq!(n.tasks_bucket(), "acme-prod-tasks");
    }

    #[test]
    fn subjects_parse_back() {
        let n = Names::default();
        assert_eq!(n.parse_inbox_subject("jetsched.submit.a"), Some((InboxKind::Submit, "a")));
        assert_eq!(n.parse_inbox_subject("jetsched.due.b"), Some((InboxKind::Due, "b")));
        assert_eq!(n.parse_inbox_subject("jetsched.due.b.c"), Some((InboxKind::Due, "b.c")));
        assert_eq!(n.parse_inbox_subject("other.due.b"), None);
        assert_eq!(n.parse_task_subject("jetsched.task.q.7"), Some(("q", 7)));
        assert_eq!(n.parse_event_subject("jetsched.event.t.dead"), Some(("t", "dead")));
        assert_eq!(n.parse_log_subject("jetsched.log.3.t.a.q1"), Some((3, "t.a.q1")));
        let consumer = n.worker_consumer(&n.worker_queue("host-1-42"), 7);
        assert_eq!(n.parse_worker_consumer(&consumer), Some(("_w-host-1-42", 7)));
        assert_eq!(n.parse_worker_queue("_w-host-1-42"), Some("host-1-42"));
        assert_eq!(n.parse_worker_queue("default"), None);
    }

    #[test]
    fn limit_keys_are_kv_safe_and_distinct_per_key_and_period() {
        let n = Names::default();
        let a = n.rate_counter_key("charge", "acme corp/€", 29_000_000);
        assert!(a.starts_with("r.charge.") && a.ends_with(".29000000"), "{a}");
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'), "{a}");
        assert_ne!(a, n.rate_counter_key("charge", "globex", 29_000_000));
        assert_ne!(a, n.rate_counter_key("charge", "acme corp/€", 29_000_001));
        let s = n.concurrency_slot_key("charge", "acme", 2);
        assert!(s.starts_with("c.charge.") && s.ends_with(".2"), "{s}");
        assert_ne!(s, n.concurrency_slot_key("charge", "globex", 2));
    }

    #[test]
    fn names_are_single_tokens() {
        assert!(validate_name("task", "resize-image_2").is_ok());
        for bad in ["", "a.b", "a b", "a*", "é", &"x".repeat(65)] {
            assert!(validate_name("task", bad).is_err(), "{bad:?}");
        }
    }
}

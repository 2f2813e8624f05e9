//! The NATS permissions each jetsched role needs, built only from the name
//! builders ([`Names`]) and the stream, bucket and consumer definitions
//! ([`crate::setup`]), so that they follow every renamed subject, bucket or
//! consumer.
//!
//! A role gets the JetStream API subjects of its own streams, buckets and
//! consumers, the ack subjects of its consumers, a reply inbox of its own
//! ([`Names::inbox_prefix`]) and `allow_responses` where it answers requests.
//! `jetsched permissions <role>` prints these lists in the shape
//! nats-server's `permissions` block takes; the services compare them with
//! what the server says they hold at start-up ([`Granted::missing`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::names::{BANDS, DEFAULT_QUEUE, Names};
use crate::setup::{self, Topology};

/// The subject a client asks the server what it may do (nats-server answers
/// with the connection's user, account and permissions).
pub const USER_INFO_SUBJECT: &str = "$SYS.REQ.USER.INFO";

/// The account's JetStream information (totals and limits, no names): the
/// client reads it before it creates a bucket.
pub const ACCOUNT_INFO_SUBJECT: &str = "$JS.API.INFO";

/// The JetStream API subject of stream listings (names and subjects of the
/// account's streams, not their messages): tickers and the admin use it to
/// check that the subjects event triggers capture are in no other stream.
pub const STREAM_LIST_SUBJECT: &str = "$JS.API.STREAM.LIST";

/// The NATS function subjects a worker calls and functions serve when none
/// are named: the convention the docs and examples use.
pub const DEFAULT_FUNCTIONS: &str = "fn.>";

/// Most labels whose subsets a worker's permissions enumerate (2^n label
/// queues per queue).
pub const MAX_LABELS: usize = 8;

/// Who connects to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Fires schedules.
    Ticker,
    /// Turns submissions and fires into work.
    Dispatcher,
    /// Runs handlers (users' code): kept to its own queues.
    Worker,
    /// Creates streams and buckets (`jetsched init`), writes tasks and
    /// schedules, inspects runs and replays dead letters.
    Admin,
    /// Publishes submissions and nothing else.
    Submitter,
    /// A NATS function: answers the requests it receives and nothing else.
    Function,
    /// The web console (`jetsched console`): reads jetsched's streams and
    /// buckets and follows the run events; acts (pause, trigger, cancel,
    /// backfill, replay) only when its scope allows actions.
    Console,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 7] =
        [Role::Ticker, Role::Dispatcher, Role::Worker, Role::Admin, Role::Submitter, Role::Function, Role::Console];

    /// The role's name, as `jetsched permissions` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ticker => "ticker",
            Role::Dispatcher => "dispatcher",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Submitter => "submitter",
            Role::Function => "function",
            Role::Console => "console",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?}: one of {}", all.join(", "))
        })
    }
}

/// What a role's permissions are limited to, beyond the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Worker: the queues it serves (`--queues`).
    pub queues: Vec<String>,
    /// Worker: the ids (`--worker-id`) whose own queue (`_w-<id>`, runs
    /// routed to one worker) it may read. A worker always serves its own
    /// queue, so its id must be here.
    pub worker_ids: Vec<String>,
    /// Worker: its labels (`--labels`); it may read the label queue of every
    /// subset of them (a task requiring labels it carries).
    pub labels: BTreeMap<String, String>,
    /// Worker: the NATS function subjects it may call; function: the ones it
    /// serves. Subject filters (`fn.>`).
    pub functions: Vec<String>,
    /// Submitter: the tasks it may submit (empty: every task).
    pub tasks: Vec<String>,
    /// Ticker: the streams event triggers may read besides jetsched's own
    /// capture stream (a user stream `ORDERS`, or `KV_<bucket>` for a
    /// bucket): the ticker manages its trigger consumers on them.
    pub trigger_streams: Vec<String>,
    /// Console: may act (`jetsched console --allow-actions`), not only read.
    pub actions: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            queues: vec![DEFAULT_QUEUE.to_string()],
            worker_ids: Vec::new(),
            labels: BTreeMap::new(),
            functions: vec![DEFAULT_FUNCTIONS.to_string()],
            tasks: Vec::new(),
            trigger_streams: Vec::new(),
            actions: false,
        }
    }
}

/// Allow-lists for one role: what it may publish, what it may subscribe
/// to, and whether it may answer requests sent to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (with wildcards) it may publish to; empty means none.
    pub publish: BTreeSet<String>,
    /// Subjects it may subscribe to.
    pub subscribe: BTreeSet<String>,
    /// May publish to the reply subject of a request it received
    /// (nats-server `allow_responses`).
    pub allow_responses: bool,
}

/// Why a scope cannot be turned into permissions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A queue, worker id or task that is not a valid name.
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    /// Too many labels to enumerate their queues.
    #[error("at most {MAX_LABELS} labels: a worker's label queues are one per subset of its labels")]
    TooManyLabels,
    /// A function subject that is not a valid subject filter.
    #[error("invalid function subject {0:?}")]
    Subject(String),
}

impl Permissions {
    /// What `role` needs under `names`, limited to `scope`.
    pub fn of(role: Role, names: &Names, scope: &Scope) -> Result<Permissions, ScopeError> {
        let mut p = Permissions::default();
        match role {
            Role::Ticker => p.ticker(names, scope)?,
            Role::Dispatcher => p.dispatcher(names),
            Role::Worker => p.worker(names, scope)?,
            Role::Admin => p.admin(names),
            Role::Submitter => {
                p.sub(format!("{}.>", names.inbox_prefix(role.as_str())));
                if scope.tasks.is_empty() {
                    p.publish.insert(names.submit_subject(">"));
                }
                for task in &scope.tasks {
                    crate::validate_name("task", task)?;
                    p.publish.insert(names.submit_subject(task));
                }
            }
            Role::Function => {
                for subject in &scope.functions {
                    check_subject(subject)?;
                    p.sub(subject.clone());
                }
                p.allow_responses = true;
            }
            Role::Console => p.console(names, scope.actions),
        }
        Ok(p)
    }

    /// The `permissions` block nats-server takes, as JSON (also valid
    /// nats-server configuration syntax).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "publish": {"allow": self.publish},
            "subscribe": {"allow": self.subscribe},
        });
        if self.allow_responses {
            v["allow_responses"] = serde_json::Value::Bool(true);
        }
        v
    }

    /// The same block in nats-server's configuration syntax, to paste into
    /// a user entry (`{user: ..., password: ..., permissions: ...}`).
    pub fn to_nats_conf(&self) -> String {
        let list = |set: &BTreeSet<String>| {
            let items: Vec<String> = set.iter().map(|s| format!("      {s:?}")).collect();
            if items.is_empty() { "[]".to_string() } else { format!("[\n{}\n    ]", items.join("\n")) }
        };
        let mut out = format!(
            "permissions: {{\n  publish: {{\n    allow: {}\n  }}\n  subscribe: {{\n    allow: {}\n  }}\n",
            list(&self.publish),
            list(&self.subscribe)
        );
        if self.allow_responses {
            out.push_str("  allow_responses: true\n");
        }
        out.push_str("}\n");
        out
    }

    fn publish(&mut self, subject: String) {
        self.publish.insert(subject);
    }

    fn sub(&mut self, subject: String) {
        self.subscribe.insert(subject);
    }

    /// What the three services share: asking the server what they may do,
    /// opening every stream and bucket (stream info: configuration and
    /// counts, never contents), their reply inbox, events, run records.
    fn service(&mut self, names: &Names, role: Role) {
        self.publish(USER_INFO_SUBJECT.to_string());
        let topo = Topology::default();
        for config in setup::stream_configs(names, &topo) {
            self.publish(stream_api("INFO", &config.name));
        }
        for config in setup::bucket_configs(names, &topo) {
            self.publish(stream_api("INFO", &names.bucket_stream(&config.bucket)));
        }
        self.sub(format!("{}.>", names.inbox_prefix(role.as_str())));
        self.publish(names.event_filter());
        self.kv_read(names, &names.runs_bucket());
        self.kv_write(names, &names.runs_bucket());
    }

    fn ticker(&mut self, names: &Names, scope: &Scope) -> Result<(), ScopeError> {
        self.service(names, Role::Ticker);
        self.publish(names.due_subject(">"));
        // Asks the worker holding a staged run of a deleted schedule to withdraw it.
        self.publish(names.withdraw_filter());
        self.kv_read(names, &names.schedules_bucket());
        // Its own buckets: it creates them at start-up (the lease TTL is its
        // setting); creating a bucket reads the account's JetStream info.
        self.publish(ACCOUNT_INFO_SUBJECT.to_string());
        for config in setup::ticker_bucket_configs(names, &Topology::default(), Duration::from_secs(10)) {
            let stream = names.bucket_stream(&config.bucket);
            self.publish(stream_api("INFO", &stream));
            self.publish(stream_api("CREATE", &stream));
            self.kv_read(names, &config.bucket);
            self.kv_write(names, &config.bucket);
        }
        // Event triggers are part of the task definitions.
        self.kv_read(names, &names.tasks_bucket());
        // Backfills: it executes them and writes their progress.
        self.kv_read(names, &names.backfills_bucket());
        self.kv_write(names, &names.backfills_bucket());
        // Event triggers: a durable consumer per trigger on its source
        // stream (jetsched's capture stream, or a stream the scope names),
        // the capture stream's subjects kept in sync, and the other streams'
        // subjects listed to report overlaps.
        self.publish(STREAM_LIST_SUBJECT.to_string());
        self.publish(stream_api("UPDATE", &names.triggers_stream()));
        let mut sources = vec![names.triggers_stream()];
        for stream in &scope.trigger_streams {
            check_subject(stream)?;
            if stream.contains(['.', '*', '>']) {
                return Err(ScopeError::Subject(stream.clone()));
            }
            sources.push(stream.clone());
        }
        for s in sources {
            self.publish(stream_api("INFO", &s));
            self.publish(format!("$JS.API.STREAM.MSG.GET.{s}"));
            self.publish(format!("$JS.API.CONSUMER.CREATE.{s}.>"));
            self.publish(format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.*"));
            for op in ["INFO", "DELETE", "MSG.NEXT"] {
                self.publish(format!("$JS.API.CONSUMER.{op}.{s}.*"));
            }
            self.publish(format!("$JS.ACK.{s}.>"));
        }
        Ok(())
    }

    fn dispatcher(&mut self, names: &Names) {
        self.service(names, Role::Dispatcher);
        let inbox = names.inbox_stream();
        let consumer = setup::dispatcher_consumer(names);
        let durable = consumer.durable_name.unwrap_or_default();
        self.consume(&inbox, &durable, &consumer.filter_subject);
        for subject in names.tasks_subjects() {
            self.publish(subject);
        }
        self.publish(names.dead_filter());
        self.publish(names.step_subject(">"));
        self.publish(names.advance_subject(">"));
        self.publish(names.cancel_filter());
        for bucket in [names.tasks_bucket(), names.windows_bucket(), names.workers_bucket(), names.schedules_bucket()] {
            self.kv_read(names, &bucket);
        }
        self.kv_read(names, &names.rates_bucket());
        self.kv_write(names, &names.rates_bucket());
        // Schedules' overlap turns.
        self.kv_read(names, &names.overlap_bucket());
        self.kv_write(names, &names.overlap_bucket());
        // Whether an overlap turn's fire still waits in the inbox (by sequence).
        self.publish(direct_get_subject(&names.inbox_stream()));
        // Drains the queues of departed workers (`_w-<id>`, any id) and
        // re-routes what it finds: every consumer of the tasks stream.
        let tasks = names.tasks_stream();
        self.publish(format!("$JS.API.CONSUMER.NAMES.{tasks}"));
        for op in ["INFO", "DELETE", "MSG.NEXT"] {
            self.publish(format!("$JS.API.CONSUMER.{op}.{tasks}.*"));
        }
        self.publish(format!("$JS.ACK.{tasks}.>"));
    }

    fn worker(&mut self, names: &Names, scope: &Scope) -> Result<(), ScopeError> {
        self.service(names, Role::Worker);
        self.allow_responses = true;
        self.publish(names.dead_filter());
        self.publish(names.advance_subject(">"));
        self.sub(names.cancel_filter());
        self.sub(names.withdraw_filter());
        for subject in &scope.functions {
            check_subject(subject)?;
            self.publish(subject.clone());
        }
        // Label requirements it may serve come from the task definitions.
        self.kv_read(names, &names.tasks_bucket());
        for bucket in [names.checkpoints_bucket(), names.slots_bucket(), names.rates_bucket()] {
            self.kv_read(names, &bucket);
            self.kv_write(names, &bucket);
        }
        // Heartbeats.
        self.kv_write(names, &names.workers_bucket());
        // Each attempt's output: the task logs.
        for subject in names.logs_subjects() {
            self.publish(subject);
        }
        for queue in worker_queues(names, scope)? {
            for band in 0..BANDS {
                let config = setup::worker_consumer(names, &queue, band, Duration::from_secs(30));
                let durable = config.durable_name.clone().unwrap_or_default();
                self.consume(&names.tasks_stream(), &durable, &config.filter_subject);
            }
        }
        Ok(())
    }

    fn admin(&mut self, names: &Names) {
        self.publish(USER_INFO_SUBJECT.to_string());
        // Stream lists show other tenants' stream names and subjects (not
        // their messages): only to check that the subjects event triggers
        // capture are in no other stream (`init` with triggers defined).
        self.publish(STREAM_LIST_SUBJECT.to_string());
        self.publish(ACCOUNT_INFO_SUBJECT.to_string());
        let topo = Topology::default();
        let mut streams: Vec<String> = setup::stream_configs(names, &topo).into_iter().map(|c| c.name).collect();
        let buckets = all_buckets(names);
        for bucket in &buckets {
            streams.push(names.bucket_stream(bucket));
            self.kv_write(names, bucket);
        }
        for s in &streams {
            // Create, update, info, delete, purge; message get and delete.
            self.publish(stream_api("*", s));
            self.publish(format!("$JS.API.STREAM.MSG.*.{s}"));
            // Consumers: list, create (named or not), info, delete, pull.
            self.publish(format!("$JS.API.CONSUMER.*.{s}"));
            self.publish(format!("$JS.API.CONSUMER.*.{s}.>"));
            self.publish(format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"));
            self.publish(format!("$JS.API.DIRECT.GET.{s}"));
            self.publish(format!("$JS.API.DIRECT.GET.{s}.>"));
            self.publish(format!("$JS.ACK.{s}.>"));
            self.publish(format!("$JS.FC.{s}.>"));
        }
        // Every jetsched subject: submissions, cancel requests, replays.
        self.publish(format!("{names}.>"));
        self.sub(format!("{names}.>"));
        self.sub(format!("{}.>", names.inbox_prefix(Role::Admin.as_str())));
        // `jetsched submit` replies come to the submitter inbox, a console's
        // run with these credentials to the console's.
        self.sub(format!("{}.>", names.inbox_prefix(Role::Submitter.as_str())));
        self.sub(format!("{}.>", names.inbox_prefix(Role::Console.as_str())));
    }

    /// Reads everything of jetsched's and writes nothing, unless `actions`.
    fn console(&mut self, names: &Names, actions: bool) {
        self.publish(USER_INFO_SUBJECT.to_string());
        self.sub(format!("{}.>", names.inbox_prefix(Role::Console.as_str())));
        // Live run events, for every open page.
        self.sub(names.event_filter());
        let topo = Topology::default();
        let buckets = all_buckets(names);
        for bucket in &buckets {
            self.publish(stream_api("INFO", &names.bucket_stream(bucket)));
            self.kv_read(names, bucket);
        }
        for config in setup::stream_configs(names, &topo) {
            let s = config.name;
            self.publish(stream_api("INFO", &s));
            // A dead letter, a work item, a page of runs read backwards.
            self.publish(format!("$JS.API.STREAM.MSG.GET.{s}"));
            self.publish(direct_get_subject(&s));
            self.publish(format!("{}.>", direct_get_subject(&s)));
        }
        // Ordered consumers (history and tails) on the streams of records:
        // events, task logs, dead letters. Not on the work streams, whose
        // durable consumers the services own.
        for s in [names.events_stream(), names.logs_stream(), names.dlq_stream()] {
            self.publish(format!("$JS.API.CONSUMER.CREATE.{s}"));
            self.publish(format!("$JS.API.CONSUMER.CREATE.{s}.>"));
            for op in ["INFO", "DELETE", "MSG.NEXT"] {
                self.publish(format!("$JS.API.CONSUMER.{op}.{s}.*"));
            }
            self.publish(format!("$JS.FC.{s}.>"));
        }
        // The backlog per queue (the worker consumers' counts) and the
        // inbox's (the dispatcher's consumer).
        let tasks = names.tasks_stream();
        self.publish(format!("$JS.API.CONSUMER.LIST.{tasks}"));
        self.publish(format!("$JS.API.CONSUMER.INFO.{tasks}.*"));
        self.publish(format!("$JS.API.CONSUMER.INFO.{}.*", names.inbox_stream()));
        if actions {
            // Trigger, replay (to the inbox), cancel; pause and resume a
            // schedule, store a backfill, request a run's cancel (compare
            // and set on its record).
            self.publish(names.submit_subject(">"));
            self.publish(names.due_subject(">"));
            self.publish(names.cancel_filter());
            for bucket in [names.schedules_bucket(), names.backfills_bucket(), names.runs_bucket()] {
                self.kv_write(names, &bucket);
            }
        }
    }

    /// Reads of bucket `bucket`: get, watch, list keys.
    fn kv_read(&mut self, names: &Names, bucket: &str) {
        let s = names.bucket_stream(bucket);
        // Get by key (direct, or through the leader when direct gets are off).
        self.publish(format!("$JS.API.DIRECT.GET.{s}"));
        self.publish(format!("$JS.API.DIRECT.GET.{s}.>"));
        self.publish(format!("$JS.API.STREAM.MSG.GET.{s}"));
        // Watches and key listings: ordered consumers, named by the client.
        self.publish(format!("$JS.API.CONSUMER.CREATE.{s}"));
        self.publish(format!("$JS.API.CONSUMER.CREATE.{s}.>"));
        for op in ["INFO", "DELETE", "MSG.NEXT"] {
            self.publish(format!("$JS.API.CONSUMER.{op}.{s}.*"));
        }
        // Flow control of push watches.
        self.publish(format!("$JS.FC.{s}.>"));
    }

    /// Puts, creates, updates, deletes and purges of any key of `bucket`.
    fn kv_write(&mut self, names: &Names, bucket: &str) {
        self.publish(names.bucket_subjects(bucket));
    }

    /// Creating, reading and pulling from the durable consumer `durable`
    /// on `stream` (with `filter`, if any), and acking its messages.
    fn consume(&mut self, stream: &str, durable: &str, filter: &str) {
        let create = if filter.is_empty() {
            format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}")
        } else {
            format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.{filter}")
        };
        self.publish(create);
        self.publish(format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"));
        self.publish(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"));
        self.publish(format!("$JS.ACK.{stream}.{durable}.>"));
    }
}

/// Every bucket jetsched uses: the services' and the ticker's own.
fn all_buckets(names: &Names) -> Vec<String> {
    let topo = Topology::default();
    let mut buckets: Vec<String> = setup::bucket_configs(names, &topo).into_iter().map(|c| c.bucket).collect();
    let ticker = setup::ticker_bucket_configs(names, &topo, Duration::from_secs(10));
    buckets.extend(ticker.into_iter().map(|c| c.bucket));
    buckets
}

fn stream_api(op: &str, stream: &str) -> String {
    format!("$JS.API.STREAM.{op}.{stream}")
}

/// The JetStream API subject of direct gets from `stream` by sequence or
/// "next for subject" (any message of the stream).
pub fn direct_get_subject(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// The JetStream API subject that creates `stream`: a user allowed it may
/// create jetsched's streams and buckets.
pub fn create_stream_subject(stream: &str) -> String {
    stream_api("CREATE", stream)
}

/// The queues a worker of `scope` may read: its queues, the own queue of
/// each of its ids, and the label queue of every subset of its labels on
/// each of its queues.
fn worker_queues(names: &Names, scope: &Scope) -> Result<Vec<String>, ScopeError> {
    if scope.labels.len() > MAX_LABELS {
        return Err(ScopeError::TooManyLabels);
    }
    let mut queues = Vec::new();
    for queue in &scope.queues {
        crate::validate_name("queue", queue)?;
        queues.push(queue.clone());
        let labels: Vec<(&String, &String)> = scope.labels.iter().collect();
        for mask in 1u32..(1 << labels.len()) {
            let subset: BTreeMap<String, String> = labels
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (k, v))| ((*k).clone(), (*v).clone()))
                .collect();
            queues.push(names.labelled_queue(queue, &subset));
        }
    }
    for id in &scope.worker_ids {
        crate::validate_name("worker id", id)?;
        queues.push(names.worker_queue(id));
    }
    Ok(queues)
}

/// A subject filter users name (function subjects): tokens not empty, no
/// spaces, `>` only last.
fn check_subject(subject: &str) -> Result<(), ScopeError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ok = !subject.is_empty()
        && !subject.contains(char::is_whitespace)
        && tokens.iter().all(|t| !t.is_empty())
        && tokens.iter().position(|t| *t == ">").is_none_or(|i| i == tokens.len() - 1);
    if ok { Ok(()) } else { Err(ScopeError::Subject(subject.to_string())) }
}

/// Whether every subject `needed` matches is matched by `allow`.
pub fn covers(allow: &str, needed: &str) -> bool {
    let (mut a, mut n) = (allow.split('.'), needed.split('.'));
    loop {
        match (a.next(), n.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What the server says a connection may do (the `permissions` of its
/// answer on [`USER_INFO_SUBJECT`]); `None` parts are unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Granted {
    /// Publish rules.
    #[serde(default)]
    pub publish: Option<Rules>,
    /// Subscribe rules.
    #[serde(default)]
    pub subscribe: Option<Rules>,
    /// Present when the connection may answer requests.
    #[serde(default)]
    pub responses: Option<serde_json::Value>,
}

/// Allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Rules {
    /// Present: only what these match.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Never what these match.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Rules {
    fn permits(&self, needed: &str) -> bool {
        let allowed = self.allow.as_ref().is_none_or(|allow| allow.iter().any(|a| covers(a, needed)));
        allowed && !self.deny.iter().any(|d| overlaps(d, needed))
    }
}

/// A permission a connection lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// May not publish to this subject (or some subjects it matches).
    Publish(String),
    /// May not subscribe to it.
    Subscribe(String),
    /// May not answer requests.
    Responses,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Publish(s) => write!(f, "publish to {s}"),
            Missing::Subscribe(s) => write!(f, "subscribe to {s}"),
            Missing::Responses => f.write_str("allow_responses"),
        }
    }
}

impl Granted {
    /// Parses the server's answer on [`USER_INFO_SUBJECT`]; a user without
    /// permissions is unrestricted (`Granted::default()`).
    pub fn from_user_info(answer: &[u8]) -> Result<Granted, String> {
        let v: serde_json::Value = serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(err) = v.get("error") {
            return Err(format!("the server answered with an error: {err}"));
        }
        let data = v.get("data").ok_or("the answer has no data")?;
        match data.get("permissions") {
            None | Some(serde_json::Value::Null) => Ok(Granted::default()),
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| format!("unreadable permissions: {e}")),
        }
    }

    /// Whether this connection may publish to `subject`.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.as_ref().is_none_or(|r| r.permits(subject))
    }

    /// Whether this connection may subscribe to `subject`.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.as_ref().is_none_or(|r| r.permits(subject))
    }

    /// What of `needed` this connection lacks, in order.
    pub fn missing(&self, needed: &Permissions) -> Vec<Missing> {
        let mut out: Vec<Missing> =
            needed.publish.iter().filter(|s| !self.may_publish(s)).map(|s| Missing::Publish(s.clone())).collect();
        out.extend(needed.subscribe.iter().filter(|s| !self.may_subscribe(s)).map(|s| Missing::Subscribe(s.clone())));
        // Without any publish rules, answering is allowed like anything else.
        if needed.allow_responses && self.publish.is_some() && self.responses.is_none() {
            out.push(Missing::Responses);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(role: Role, scope: &Scope) -> Permissions {
        Permissions::of(role, &Names::default(), scope).unwrap()
    }

    #[test]
    fn covering_and_overlapping_follow_nats_wildcards() {
        assert!(covers("a.>", "a.b.c"));
        assert!(covers("a.>", "a.>"));
        assert!(!covers("a.>", "a"));
        assert!(covers("a.*.c", "a.b.c"));
        assert!(covers("a.*.c", "a.*.c"));
        assert!(!covers("a.*.c", "a.>"));
        assert!(!covers("a.b", "a.*"));
        assert!(!covers("a.b", "a.b.c"));
        assert!(overlaps("a.b", "a.*"));
        assert!(overlaps("a.>", "a.b.c"));
        assert!(overlaps("*.b", "a.>"));
        assert!(!overlaps("a.b", "a.c"));
        assert!(!overlaps("a.b", "a.b.c"));
    }

    #[test]
    fn the_worker_reads_only_its_own_queues() {
        let names = Names::default();
        let scope = Scope { worker_ids: vec!["w1".into()], ..Scope::default() };
        let p = of(Role::Worker, &scope);
        let tasks = names.tasks_stream();
        assert!(p.publish.contains(&format!(
            "$JS.API.CONSUMER.CREATE.{tasks}.worker-default-3.{}",
            names.task_subject("default", 3)
        )));
        assert!(p.publish.contains(&format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.worker-_w-w1-0")));
        let granted = Granted {
            publish: Some(Rules { allow: Some(p.publish.iter().cloned().collect()), deny: vec![] }),
            ..Granted::default()
        };
        for other in [
            format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.worker-other-0"),
            format!("$JS.API.CONSUMER.CREATE.{tasks}.x.{}", names.task_subject("other", 0)),
            format!("$JS.API.DIRECT.GET.{tasks}"),
            format!("$JS.API.STREAM.DELETE.{tasks}"),
            format!("$KV.{}.t", names.tasks_bucket()),
            format!("$KV.{}.s", names.schedules_bucket()),
            names.submit_subject("t"),
        ] {
            assert!(!granted.may_publish(&other), "{other}");
        }
        assert!(p.allow_responses);
    }

    #[test]
    fn label_queues_are_every_subset_of_the_labels() {
        let names = Names::default();
        let labels: BTreeMap<String, String> =
            [("gpu", "a100"), ("region", "eu")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let scope = Scope { labels: labels.clone(), ..Scope::default() };
        let queues = worker_queues(&names, &scope).unwrap();
        assert_eq!(queues.len(), 4);
        assert!(queues.contains(&names.labelled_queue("default", &labels)));
        let eu: BTreeMap<String, String> = [("region".to_string(), "eu".to_string())].into();
        assert!(queues.contains(&names.labelled_queue("default", &eu)));
        let many: BTreeMap<String, String> = (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(worker_queues(&names, &Scope { labels: many, ..Scope::default() }), Err(ScopeError::TooManyLabels));
    }

    #[test]
    fn submitter_and_function_are_minimal() {
        let s = of(Role::Submitter, &Scope::default());
        assert_eq!(s.publish, BTreeSet::from(["jetsched.submit.>".to_string()]));
        assert_eq!(s.subscribe, BTreeSet::from(["_INBOX_jetsched_submitter.>".to_string()]));
        assert!(!s.allow_responses);
        let f = of(Role::Function, &Scope { functions: vec!["fn.resize".into()], ..Scope::default() });
        assert!(f.publish.is_empty());
        assert_eq!(f.subscribe, BTreeSet::from(["fn.resize".to_string()]));
        assert!(f.allow_responses);
        assert_eq!(f.to_json()["publish"]["allow"], serde_json::json!([]));
    }

    #[test]
    fn prefixes_keep_tenants_apart() {
        let a = Names::new("tenant-a").unwrap();
        let b = Names::new("tenant-b").unwrap();
        for role in Role::ALL {
            let pa = Permissions::of(role, &a, &Scope::default()).unwrap();
            let pb = Permissions::of(role, &b, &Scope::default()).unwrap();
            let granted_a = Granted {
                publish: Some(Rules { allow: Some(pa.publish.iter().cloned().collect()), deny: vec![] }),
                subscribe: Some(Rules { allow: Some(pa.subscribe.iter().cloned().collect()), deny: vec![] }),
                responses: None,
            };
            // Only asking the server who one is, the account's JetStream
            // totals, the list of stream names (triggers look for users'
            // streams; it shows names, never contents) and function subjects
            // (users' own) are shared.
            let shared = |s: &String| {
                s == USER_INFO_SUBJECT || s == ACCOUNT_INFO_SUBJECT || s == STREAM_LIST_SUBJECT || s.starts_with("fn.")
            };
            for s in pb.publish.iter().filter(|s| !shared(s)) {
                assert!(!granted_a.may_publish(s), "{role}: tenant-a may publish to tenant-b's {s}");
            }
            for s in pb.subscribe.iter().filter(|s| !shared(s)) {
                assert!(!granted_a.may_subscribe(s), "{role}: tenant-a may subscribe to tenant-b's {s}");
            }
        }
    }

    #[test]
    fn missing_names_what_the_server_does_not_grant() {
        let needed = of(Role::Submitter, &Scope::default());
        let answer = br#"{"data":{"user":"s","permissions":{"publish":{"allow":["jetsched.submit.a"]},"subscribe":{"allow":["_INBOX_jetsched_submitter.>"]}}}}"#;
        let granted = Granted::from_user_info(answer).unwrap();
        assert_eq!(granted.missing(&needed), vec![Missing::Publish("jetsched.submit.>".into())]);
        let open = Granted::from_user_info(br#"{"data":{"user":"u"}}"#).unwrap();
        assert!(open.missing(&of(Role::Worker, &Scope::default())).is_empty());
        let denied = Granted::from_user_info(
            br#"{"data":{"permissions":{"publish":{"deny":["jetsched.submit.x"]},"responses":{"max":1}}}}"#,
        )
        .unwrap();
        assert_eq!(denied.missing(&needed), vec![Missing::Publish("jetsched.submit.>".into())]);
        let no_responses = Granted::from_user_info(br#"{"data":{"permissions":{"publish":{"allow":[">"]}}}}"#).unwrap();
        let function = of(Role::Function, &Scope::default());
        assert_eq!(no_responses.missing(&function), vec![Missing::Responses]);
    }

    #[test]
    fn roles_parse_back_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("ticker, dispatcher"));
    }
}

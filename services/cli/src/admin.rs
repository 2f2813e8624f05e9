//! Admin verbs. Each is a convenience over a NATS operation a user could do
//! with the `nats` CLI (shown in `--help`); definitions are validated here
//! first so that a typo is an error at the prompt, not an `invalid` event.

use jetsched_contract::parse_duration;
use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use jetsched_contract::{Handles, Role, RunEvent, RunStatus, ScheduleDef, TaskDef, headers, run, validate_name};
use jetsched_runtime::NatsArgs;

/// Input the user must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub(crate) fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// `jetsched task ...`
#[derive(Debug, clap::Subcommand)]
pub enum TaskCmd {
    /// Create or replace a task definition
    /// (nats kv put jetsched-tasks <name> '<json>').
    Put {
        /// Task name.
        name: String,
        /// The definition: JSON, @file, or - for stdin.
        definition: String,
    },
    /// Show a task definition (nats kv get jetsched-tasks <name>).
    Get {
        /// Task name.
        name: String,
    },
    /// List task names (nats kv ls jetsched-tasks).
    List,
    /// Delete a task definition (nats kv del jetsched-tasks <name>).
    Delete {
        /// Task name.
        name: String,
    },
}

/// Read-modify-write of the value under `key` (a `what`), with
/// compare-and-set: `change` gets the current value and returns the new one,
/// or `None` for nothing to do; a concurrent change makes it read again.
/// Returns the revision written, if any.
pub(crate) async fn edit(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    what: &str,
    mut change: impl FnMut(&[u8]) -> anyhow::Result<Option<Vec<u8>>>,
) -> anyhow::Result<Option<u64>> {
    use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
    for _ in 0..5 {
        let entry = store.entry(key).await?.filter(|e| e.operation == Operation::Put);
        let entry = entry.ok_or_else(|| bad(format!("no {what} named {key}")))?;
        let Some(bytes) = change(&entry.value)? else { return Ok(None) };
        match store.update(key, bytes.into(), entry.revision).await {
            Ok(revision) => return Ok(Some(revision)),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
            Err(err) => return Err(err.into()),
        }
    }
    anyhow::bail!("{what} {key} keeps changing; try again")
}

/// Reads a definition argument: inline JSON, `@file`, or `-` (stdin).
pub(crate) fn read_definition(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
        return Ok(buf);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")));
    }
    Ok(arg.as_bytes().to_vec())
}

/// Makes the triggers stream capture the plain subjects the stored task
/// definitions' triggers name (the tickers keep it so; `init` does it once),
/// and says which cannot be captured.
pub async fn capture_trigger_subjects(h: &Handles) -> anyhow::Result<()> {
    let mut subjects = Vec::new();
    let mut keys = h.tasks.keys().await?;
    while let Some(key) = keys.next().await {
        let key = key?;
        let Some(value) = h.tasks.get(&key).await? else { continue };
        let Ok(def) = TaskDef::from_json(&value) else { continue };
        for t in &def.triggers {
            if let jetsched_contract::trigger::Source::Subject(s) = t.source() {
                subjects.push(s.to_string());
            }
        }
    }
    if subjects.is_empty() {
        // Nothing to capture: the stream keeps its placeholder subject.
        return Ok(());
    }
    let conflicts = jetsched_contract::setup::sync_trigger_subjects(&h.js, &h.names, &subjects).await?;
    println!("{} captures {} trigger subject(s)", h.names.triggers_stream(), subjects.len() - conflicts.len());
    for c in &conflicts {
        println!("not captured: {}", c.reason);
    }
    Ok(())
}

/// Runs a `task` verb.
pub async fn task(h: &Handles, cmd: TaskCmd) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Put { name, definition } => {
            validate_name("task", &name).map_err(|e| bad(e.to_string()))?;
            let bytes = read_definition(&definition)?;
            TaskDef::from_json(&bytes).map_err(|e| bad(format!("task {name}: {e}")))?;
            let rev = h.tasks.put(&name, bytes.into()).await?;
            println!("task {name} stored (revision {rev})");
        }
        TaskCmd::Get { name } => print_value(h.tasks.get(&name).await?, "task", &name)?,
        TaskCmd::List => list_keys(&h.tasks).await?,
        TaskCmd::Delete { name } => {
            h.tasks.delete(&name).await?;
            println!("task {name} deleted");
        }
    }
    Ok(())
}

pub(crate) fn print_value(value: Option<bytes::Bytes>, kind: &str, key: &str) -> anyhow::Result<()> {
    let value = value.ok_or_else(|| bad(format!("no {kind} named {key}")))?;
    match serde_json::from_slice::<serde_json::Value>(&value) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{}", String::from_utf8_lossy(&value)),
    }
    Ok(())
}

pub(crate) async fn list_keys(store: &async_nats::jetstream::kv::Store) -> anyhow::Result<()> {
    let mut keys: Vec<String> = store.keys().await?.filter_map(|k| async move { k.ok() }).collect().await;
    keys.sort();
    for key in keys {
        println!("{key}");
    }
    Ok(())
}

/// `jetsched init`: creates what is missing, one progress step per stream
/// or bucket (on a cluster each waits for its replicas), and says what it made.
pub async fn init(nats: &jetsched_runtime::NatsArgs, topology: &jetsched_contract::Topology) -> anyhow::Result<()> {
    let names = nats.names()?;
    let client = jetsched_runtime::connect(nats, "jetsched-init", false).await?;
    let js = jetsched_runtime::jetstream(client.clone());
    let steps = jetsched_contract::setup::setup_steps(&names, topology);
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    let mut created = Vec::new();
    // JetStream may need a few seconds to answer (a leader election on a cluster).
    let give_up = tokio::time::Instant::now() + jetsched_runtime::service::ADMIN_PATIENCE;
    let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut waiting = false;
    loop {
        bar.set_position(0);
        let made = jetsched_contract::setup::ensure_with(&js, &names, topology, |name, made| {
            bar.set_message(name.to_string());
            bar.inc(1);
            if made {
                created.push(name.to_string());
            }
        })
        .await;
        match made {
            Ok(()) => break,
            Err(err) if tokio::time::Instant::now() < give_up => {
                if !waiting {
                    bar.suspend(|| tracing::warn!(%err, "JetStream not ready; retrying"));
                    waiting = true;
                }
                backoff.wait().await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    bar.finish_and_clear();
    match created.is_empty() {
        true => println!("streams and buckets ready under prefix {names} (all existed)"),
        false => println!("streams and buckets ready under prefix {names} (created {})", created.join(", ")),
    }
    let handles = Handles::open(js, names).await?;
    let captured = capture_trigger_subjects(&handles).await;
    let _ = client.drain().await;
    captured
}

/// `jetsched submit` options.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Task to run.
    pub task: String,
    /// Payload: JSON, @file, or - for stdin [default: null].
    pub payload: Option<String>,
    /// Idempotency key (Nats-Msg-Id): the same key runs once.
    #[arg(long)]
    pub id: Option<String>,
    /// Importance override, 0-10 (Jetsched-Importance).
    #[arg(long)]
    pub importance: Option<u8>,
    /// Do not start before this RFC 3339 instant (Jetsched-Not-Before).
    #[arg(long)]
    pub not_before: Option<String>,
    /// Wait for the run to finish and print its last event (exit 1 if it did not succeed).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seal the payload with the first key of this file (AES-256-GCM): the
    /// streams and the NATS operator see only ciphertext; workers and
    /// functions holding the key open it (docs/HANDLERS.md, "Sealed payloads").
    #[arg(long = "payload-key-file", env = "JETSCHED_PAYLOAD_KEY_FILE")]
    pub payload_key_file: Option<std::path::PathBuf>,
}

/// Publishes a submission (like `nats pub jetsched.submit.<task> '<json>'`).
pub async fn submit(nats: &NatsArgs, args: SubmitArgs) -> anyhow::Result<()> {
    validate_name("task", &args.task).map_err(|e| bad(e.to_string()))?;
    // As the submitter role: it may publish submissions and nothing else,
    // so no stream or bucket is opened.
    let names = nats.names()?;
    let client = jetsched_runtime::connect_as(nats, Role::Submitter, "jetsched-cli", false).await?;
    let js = jetsched_runtime::jetstream(client.clone());
    let payload = match &args.payload {
        Some(p) => {
            let bytes = read_definition(p)?;
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| bad(format!("payload is not JSON: {e}")))?;
            bytes
        }
        None => Vec::new(),
    };
    let mut hdrs = HeaderMap::new();
    if let Some(i) = args.importance {
        if i > 10 {
            return Err(bad("--importance must be 0-10"));
        }
        hdrs.insert(headers::IMPORTANCE, i.to_string().as_str());
    }
    if let Some(t) = &args.not_before {
        t.parse::<jiff::Timestamp>().map_err(|e| bad(format!("--not-before {t:?}: {e}")))?;
        hdrs.insert(headers::NOT_BEFORE, t.as_str());
    }
    if let Some(id) = &args.id {
        hdrs.insert(headers::NATS_MSG_ID, id.as_str());
    }
    let payload = match &args.payload_key_file {
        None => payload,
        Some(path) => {
            let keyring = jetsched_contract::codec::Keyring::from_file(path).map_err(|e| bad(e.to_string()))?;
            hdrs.insert(headers::KEY_ID, keyring.active());
            serde_json::to_vec(&keyring.seal(&payload)?)?
        }
    };
    let mut events = if args.wait { Some(client.subscribe(names.event_subject(&args.task, "*")).await?) } else { None };
    let ack = publish_patiently(&js, names.submit_subject(&args.task), hdrs, payload.into(), args.id.is_some()).await?;
    let run_id = run::submitted_run_id(&args.task, args.id.as_deref(), ack.sequence);
    if ack.duplicate {
        println!("{run_id} (duplicate of an earlier submission with the same --id; not submitted again)");
    } else {
        println!("{run_id}");
    }
    let Some(events) = events.as_mut() else { return Ok(()) };
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => anyhow::bail!("run {run_id} did not finish within {:?}", args.timeout),
            msg = events.next() => {
                let Some(msg) = msg else { anyhow::bail!("event subscription closed") };
                let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
                if event.run_id.as_deref() != Some(run_id.as_str()) {
                    continue;
                }
                println!("{}", format_event(&event));
                match event.status {
                    RunStatus::Succeeded => return Ok(()),
                    s if s.is_terminal() => anyhow::bail!("run {run_id} ended {s}"),
                    _ => {}
                }
            }
        }
    }
}

/// Publishes, riding out a leader election for up to
/// [`jetsched_runtime::service::ADMIN_PATIENCE`]: "no stream" (no leader
/// answered, nothing stored) is retried with backoff, and so is a timeout
/// when the message has an id (the stream drops a second copy).
async fn publish_patiently(
    js: &async_nats::jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    idempotent: bool,
) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
    use async_nats::jetstream::context::PublishErrorKind;
    let give_up = tokio::time::Instant::now() + jetsched_runtime::service::ADMIN_PATIENCE;
    let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let sent = js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await;
        let acked = match sent {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => return Ok(ack),
            Err(e)
                if tokio::time::Instant::now() < give_up
                    && (e.kind() == PublishErrorKind::StreamNotFound
                        || (idempotent && e.kind() == PublishErrorKind::TimedOut)) =>
            {
                tracing::debug!(%e, "JetStream not ready; retrying the submission");
                backoff.wait().await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot publish to {subject}")),
        }
    }
}

/// `jetsched events` options.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this task's events.
    #[arg(long)]
    pub task: Option<String>,
    /// Print raw JSON, one event per line.
    #[arg(long)]
    pub json: bool,
}

/// Prints events as they are published (like `nats sub 'jetsched.event.>'`).
pub async fn events(h: &Handles, args: EventsArgs) -> anyhow::Result<()> {
    let subject = match &args.task {
        Some(t) => h.names.event_subject(t, "*"),
        None => h.names.event_filter(),
    };
    let mut sub = h.js.client().subscribe(subject).await?;
    let shutdown = jetsched_runtime::shutdown_on_signals();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = sub.next() => {
                let Some(msg) = msg else { return Ok(()) };
                match (args.json, serde_json::from_slice::<RunEvent>(&msg.payload)) {
                    (false, Ok(event)) => println!("{}", format_event(&event)),
                    _ => println!("{}", String::from_utf8_lossy(&msg.payload)),
                }
            }
        }
    }
}

/// A table for a listing: a header line and aligned columns, no borders
/// (the first column stays the first word of each line, for scripts).
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Prints `t` without the padding comfy-table puts at line ends.
pub fn print_table(t: &comfy_table::Table) {
    for line in t.lines() {
        println!("{}", line.trim_end().trim_start_matches(' '));
    }
}

/// One line per event: time, status, task, run, attempt, and what went wrong.
pub fn format_event(e: &RunEvent) -> String {
    let time = jiff::tz::TimeZone::system().to_datetime(e.at);
    let mut line = format!(
        "{:02}:{:02}:{:02}.{:03}  {:<9}  {:<16}  {}",
        time.hour(),
        time.minute(),
        time.second(),
        time.subsec_nanosecond() / 1_000_000,
        e.status.as_str(),
        e.task,
        e.run_id.as_deref().or(e.key.as_deref()).unwrap_or("-"),
    );
    if e.attempt > 0 {
        line.push_str(&format!("  attempt {}", e.attempt));
    }
    if let Some(ms) = e.duration_ms {
        line.push_str(&format!("  {ms}ms"));
    }
    if let Some(n) = e.count {
        line.push_str(&format!("  count {n}"));
    }
    if let Some(err) = &e.error {
        line.push_str(&format!("  error: {err}"));
    }
    line
}

/// The stored schedule `id`, parsed.
pub(crate) async fn stored_schedule(h: &Handles, id: &str) -> anyhow::Result<ScheduleDef> {
    validate_name("schedule", id).map_err(|e| bad(e.to_string()))?;
    let entry = h.schedules.entry(id).await?.filter(|e| e.operation == Operation::Put);
    let entry = entry.ok_or_else(|| bad(format!("no schedule named {id}")))?;
    ScheduleDef::from_json(id, &entry.value)
        .map_err(|e| bad(format!("schedule {id} is invalid ({e}); fix it with schedule put")))
}

//! Backfills, executed by the ticker holding the schedule's partition:
//! every occurrence of the schedule in the record's range, computed with the
//! schedule's own calendar (time zone, DST policy, bounds), published exactly
//! like the ticker's fires (`<prefix>.due.<task>`, `Nats-Msg-Id:
//! <schedule>@<nominal>`, run id `s.<schedule>.<nominal>`), so an occurrence
//! that already ran (or is running) does not run again: its run record
//! exists, or the inbox or the dispatcher's run-id gate drops the copy.
//!
//! - Resumable: the record keeps a cursor (every occurrence at or before it
//!   is handled), written with compare-and-set; a ticker taking the
//!   partition over continues from it. An occurrence fired just before a
//!   crash, after the last cursor write, is found again: its record exists
//!   (or the inbox reports the copy a duplicate), so it counts as already ran.
//! - Cancellable: a user sets `status` to `cancelled`; the executor's next
//!   write finds the new revision, reads it and stops.
//! - Paced: at most `max_in_flight` of its runs unfinished at once, counted
//!   from the run events of the task (and re-checked from run records).
//! - Reported: the record's `status` and `progress`, and `backfill` events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use futures::StreamExt;
use jetsched_contract::backfill::MAX_FIRES;
use jetsched_contract::ticker::partition_of;
use jetsched_contract::{
    Backfill, BackfillProgress, BackfillReport, BackfillStatus, Handles, RunEvent, RunRecord, RunStatus, headers, run,
};
use jetsched_runtime::{Backoff, KvChange, Outage, Publisher, RunStore, spawn_kv_watch};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::spec::{Shared, Spec};

/// Backfills cannot make progress (a bucket or stream without a leader):
/// one line when it starts, one when it ends.
static BACKFILLING: Outage = Outage::new("running backfills");

/// The record is written at most this often while a backfill runs.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// A `backfill` event reports progress at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Unfinished runs are re-read from their records this often (in case an
/// event was missed).
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// A fire still without a run record this long after it was published is
/// not waited for any more (the dispatcher rejected it: see its event).
const NO_RECORD: Duration = Duration::from_secs(60);

/// Starts the executor of the backfills of the partitions `owned` says this
/// ticker holds, until `shutdown` fires.
pub fn spawn(
    ticker: String,
    handles: Handles,
    runs: RunStore,
    owned: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let watch = spawn_kv_watch(handles.backfills.clone(), shutdown.child_token(), 256);
    let ctx =
        Arc::new(Ctx { publisher: Publisher::new(handles.js.clone(), handles.names.clone()), handles, runs, ticker });
    let manager = Manager { ctx, records: HashMap::new(), running: HashMap::new(), owned: 0, loaded: false };
    tokio::spawn(manager.run(watch, owned, shutdown))
}

struct Ctx {
    handles: Handles,
    publisher: Publisher,
    runs: RunStore,
    ticker: String,
}

struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

struct Manager {
    ctx: Arc<Ctx>,
    /// Backfills not yet finished, by id: their schedule's partition.
    records: HashMap<String, u16>,
    running: HashMap<String, Running>,
    owned: u64,
    loaded: bool,
}

impl Manager {
    async fn run(
        mut self,
        mut watch: tokio::sync::mpsc::Receiver<KvChange>,
        mut owned: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        // Restarts an executor that stopped on a failure.
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                change = watch.recv() => match change {
                    Some(change) => self.apply(change),
                    None => break,
                },
                changed = owned.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.owned = *owned.borrow_and_update();
                }
                _ = tick.tick() => {}
            }
            self.reconcile();
        }
        for r in self.running.values() {
            r.token.cancel();
        }
        for (_, r) in self.running.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
        }
    }

    fn apply(&mut self, change: KvChange) {
        match change {
            KvChange::Put { key, value, revision } => match Backfill::from_json(&value) {
                Ok(b) if !b.status.is_final() => {
                    self.records.insert(key, partition_of(&b.schedule));
                }
                Ok(_) => {
                    self.records.remove(&key);
                }
                Err(reason) => {
                    self.records.remove(&key);
                    // Reported by the ticker holding the partition of the key.
                    if crate::owns(self.owned, partition_of(&key)) {
                        let ctx = self.ctx.clone();
                        tokio::spawn(async move { report_invalid(&ctx, &key, revision, &reason).await });
                    }
                }
            },
            KvChange::Delete { key } => {
                self.records.remove(&key);
            }
            KvChange::Ready => self.loaded = true,
        }
    }

    fn reconcile(&mut self) {
        if !self.loaded {
            return;
        }
        let owned = self.owned;
        let records = &self.records;
        self.running.retain(|id, r| {
            let wanted = records.get(id).is_some_and(|p| crate::owns(owned, *p));
            if !wanted {
                r.token.cancel();
            }
            wanted && !r.handle.is_finished()
        });
        for (id, p) in &self.records {
            if crate::owns(owned, *p) && !self.running.contains_key(id) {
                let token = CancellationToken::new();
                let (ctx, id2, t) = (self.ctx.clone(), id.clone(), token.clone());
                let handle = tokio::spawn(async move {
                    match execute(&ctx, &id2, &t).await {
                        Ok(()) => BACKFILLING.recovered(),
                        Err(err) => BACKFILLING.failed(&format_args!("backfill {id2}: {err}")),
                    }
                });
                self.running.insert(id.clone(), Running { token, handle });
            }
        }
    }
}

/// Why an executor stops writing.
enum Written {
    /// Stored; go on.
    Ok,
    /// Cancelled by a user, taken over by another ticker, or rewritten: stop.
    Stop,
}

/// One backfill being executed, and its record as last written.
struct Exec<'a> {
    ctx: &'a Ctx,
    id: &'a str,
    backfill: Backfill,
    revision: u64,
    task: String,
    reported_at: tokio::time::Instant,
}

/// Runs backfill `id` until it is done, cancelled, or `token` fires.
async fn execute(ctx: &Ctx, id: &str, token: &CancellationToken) -> Result<(), String> {
    let backfills = &ctx.handles.backfills;
    let Some(entry) = backfills.entry(id).await.map_err(|e| e.to_string())? else { return Ok(()) };
    if entry.operation != Operation::Put {
        return Ok(());
    }
    let Ok(backfill) = Backfill::from_json(&entry.value) else { return Ok(()) };
    let mut exec = Exec {
        ctx,
        id,
        backfill,
        revision: entry.revision,
        task: String::new(),
        reported_at: tokio::time::Instant::now(),
    };
    if exec.backfill.status.is_final() {
        return Ok(());
    }
    let schedule = exec.backfill.schedule.clone();
    let spec = match read_schedule(ctx, &schedule).await? {
        Ok(spec) => spec,
        Err(reason) => return exec.finish(BackfillStatus::Failed, Some(reason)).await,
    };
    exec.task = spec.task.to_string();
    let before_from = exec.backfill.from.checked_sub(SignedDuration::from_nanos(1)).map_err(|e| e.to_string())?;
    let total = spec.calendar.span(before_from, exec.backfill.to, MAX_FIRES + 1).count;
    if total > MAX_FIRES {
        let reason =
            format!("the range holds more than {MAX_FIRES} fires of {schedule}; split it into several backfills");
        return exec.finish(BackfillStatus::Failed, Some(reason)).await;
    }
    let mut progress = exec.backfill.progress.clone().unwrap_or_default();
    progress.total = total;
    progress.by = ctx.ticker.clone();
    exec.backfill.status = BackfillStatus::Running;
    if let Written::Stop = exec.write(&progress).await? {
        return Ok(());
    }
    exec.report(&progress).await;
    tracing::info!(backfill = id, schedule = %schedule, total, resumed_at = ?progress.cursor, "backfill running");

    let mut unfinished = Unfinished::start(ctx, &schedule).await?;
    if let Some(cursor) = progress.cursor {
        // Runs fired before a takeover may still be unfinished.
        let recent: VecDeque<Timestamp> =
            spec.calendar.iter_after(before_from).take_while(|t| *t <= cursor).fold(VecDeque::new(), |mut last, t| {
                if last.len() == exec.backfill.max_in_flight as usize {
                    last.pop_front();
                }
                last.push_back(t);
                last
            });
        for t in recent {
            let run_id = run::scheduled_run_id(&schedule, t);
            // A fire not yet dispatched (or rejected) has no record: it is
            // not waited for.
            if run_status(&ctx.runs, &run_id).await?.is_some_and(|s| !s.is_terminal()) {
                unfinished.insert(run_id);
            }
        }
    }
    let after = progress.cursor.unwrap_or(before_from);
    let mut written_at = tokio::time::Instant::now();
    let to = exec.backfill.to;
    for nominal in spec.calendar.iter_after(after).take_while(|t| *t <= to) {
        if token.is_cancelled() {
            break;
        }
        if nominal > Timestamp::now() {
            progress.skipped += 1;
        } else {
            while unfinished.len() >= exec.backfill.max_in_flight as usize {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = unfinished.wait(&ctx.runs) => {}
                }
                if written_at.elapsed() >= WRITE_EVERY {
                    written_at = tokio::time::Instant::now();
                    if let Written::Stop = exec.write(&progress).await? {
                        return Ok(());
                    }
                }
            }
            if token.is_cancelled() {
                break;
            }
            match fire(ctx, &spec, &schedule, nominal).await? {
                Fired::New(run_id) => {
                    progress.fired += 1;
                    unfinished.insert(run_id);
                }
                Fired::Existing => progress.already_ran += 1,
            }
        }
        progress.cursor = Some(nominal);
        if written_at.elapsed() >= WRITE_EVERY {
            written_at = tokio::time::Instant::now();
            if let Written::Stop = exec.write(&progress).await? {
                return Ok(());
            }
            if exec.reported_at.elapsed() >= REPORT_EVERY {
                exec.report(&progress).await;
            }
        }
    }
    if token.is_cancelled() {
        // Lost the partition or shutting down: the next owner resumes.
        let _ = exec.write(&progress).await?;
        return Ok(());
    }
    exec.backfill.status = BackfillStatus::Done;
    if let Written::Ok = exec.write(&progress).await? {
        tracing::info!(
            backfill = id,
            fired = progress.fired,
            already_ran = progress.already_ran,
            skipped = progress.skipped,
            "backfill done"
        );
        exec.report(&progress).await;
    }
    Ok(())
}

/// The schedule as the ticker would fire it; `Ok(Err(reason))` when it
/// cannot be used.
async fn read_schedule(ctx: &Ctx, id: &str) -> Result<Result<Spec, String>, String> {
    let entry = ctx.handles.schedules.entry(id).await.map_err(|e| e.to_string())?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Ok(Err(format!("no schedule named {id}")));
    };
    Ok(Spec::parse(id, &entry.value, &mut Shared::default()).map_err(|e| format!("schedule {id} is invalid: {e}")))
}

/// A record that does not parse gets an `invalid` event (it is not run).
async fn report_invalid(ctx: &Ctx, id: &str, revision: u64, reason: &str) {
    tracing::warn!(backfill = id, reason, "invalid backfill");
    let event = RunEvent::invalid(&ctx.handles.names.backfills_bucket(), id, revision, reason);
    if let Err(err) = ctx.publisher.event(&event).await {
        tracing::error!(backfill = id, %err, "cannot report an invalid backfill");
    }
}

/// What publishing an occurrence did.
enum Fired {
    /// A new run, by this id.
    New(String),
    /// Its run exists already (or the inbox holds its fire).
    Existing,
}

/// Publishes the fire at `nominal` unless its run exists.
async fn fire(ctx: &Ctx, spec: &Spec, schedule: &str, nominal: Timestamp) -> Result<Fired, String> {
    let due = spec.due_fire(schedule, nominal, None);
    let run_id = due.run_id();
    if run_status(&ctx.runs, &run_id).await?.is_some() {
        return Ok(Fired::Existing);
    }
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEDULE, schedule);
    h.insert(headers::SCHEDULED_FOR, nominal.to_string().as_str());
    h.insert(headers::RUN_ID, run_id.as_str());
    let body = serde_json::to_vec(&due).map_err(|e| e.to_string())?;
    let subject = ctx.handles.names.due_subject(&spec.task);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let ack = loop {
        match ctx.publisher.publish(subject.clone(), h.clone(), &due.msg_id(), body.clone().into()).await {
            Ok(ack) => break ack,
            Err(err) => {
                BACKFILLING.failed(&err);
                backoff.wait().await;
            }
        }
    };
    Ok(if ack.duplicate { Fired::Existing } else { Fired::New(run_id) })
}

/// The status of run `run_id`, `None` when it has no record.
async fn run_status(runs: &RunStore, run_id: &str) -> Result<Option<RunStatus>, String> {
    let stored = runs.get(run_id).await.map_err(|e| format!("cannot read run {run_id}: {e}"))?;
    Ok(stored.map(|s| s.record.status))
}

impl Exec<'_> {
    /// Writes the record with `progress` (compare-and-set on the revision
    /// last written). A conflict is read: a user's cancel or rewrite, or
    /// another ticker's progress, stops this executor.
    async fn write(&mut self, progress: &BackfillProgress) -> Result<Written, String> {
        let backfills = &self.ctx.handles.backfills;
        let mut cancelled = false;
        for _ in 0..5 {
            let mut record = self.backfill.clone();
            record.progress = Some(BackfillProgress { updated_at: Timestamp::now(), ..progress.clone() });
            let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            match backfills.update(self.id, bytes.into(), self.revision).await {
                Ok(revision) => {
                    self.revision = revision;
                    self.backfill = record;
                    if cancelled {
                        // The counts at the cancel are recorded: stop.
                        tracing::info!(backfill = self.id, "backfill cancelled");
                        self.report(progress).await;
                        return Ok(Written::Stop);
                    }
                    return Ok(Written::Ok);
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                    let Some(entry) = backfills.entry(self.id).await.map_err(|e| e.to_string())? else {
                        return Ok(Written::Stop);
                    };
                    let theirs = match Backfill::from_json(&entry.value) {
                        Ok(b) if entry.operation == Operation::Put => b,
                        _ => return Ok(Written::Stop),
                    };
                    let same_request = theirs.schedule == self.backfill.schedule
                        && theirs.from == self.backfill.from
                        && theirs.to == self.backfill.to;
                    let someone_else = theirs.progress.as_ref().is_some_and(|p| p.by != self.ctx.ticker);
                    if !same_request
                        || someone_else
                        || theirs.status.is_final() && theirs.status != BackfillStatus::Cancelled
                    {
                        tracing::info!(backfill = self.id, "backfill rewritten or taken over; stopping here");
                        return Ok(Written::Stop);
                    }
                    self.revision = entry.revision;
                    self.backfill.max_in_flight = theirs.max_in_flight;
                    if theirs.status == BackfillStatus::Cancelled {
                        cancelled = true;
                        self.backfill.status = BackfillStatus::Cancelled;
                    }
                }
                Err(err) => return Err(format!("cannot write backfill {}: {err}", self.id)),
            }
        }
        Err(format!("backfill {} keeps changing under this ticker", self.id))
    }

    /// Ends the backfill with `status` (failed: with `error`).
    async fn finish(&mut self, status: BackfillStatus, error: Option<String>) -> Result<(), String> {
        if let Some(e) = &error {
            tracing::warn!(backfill = self.id, error = %e, "backfill failed");
        }
        self.backfill.status = status;
        self.backfill.error = error;
        let progress = self.backfill.progress.clone().unwrap_or_default();
        let progress = BackfillProgress { by: self.ctx.ticker.clone(), ..progress };
        if let Written::Ok = self.write(&progress).await? {
            self.report(&progress).await;
        }
        Ok(())
    }

    /// Publishes a `backfill` event with where it stands.
    async fn report(&mut self, progress: &BackfillProgress) {
        self.reported_at = tokio::time::Instant::now();
        let task = if self.task.is_empty() { "_" } else { self.task.as_str() };
        let event = RunEvent {
            schedule: Some(self.backfill.schedule.clone()),
            error: self.backfill.error.clone(),
            bucket: Some(self.ctx.handles.names.backfills_bucket()),
            key: Some(self.id.to_string()),
            backfill: Some(BackfillReport {
                id: self.id.to_string(),
                status: self.backfill.status,
                progress: progress.clone(),
            }),
            ..RunEvent::new(RunStatus::Backfill, task, None)
        };
        if let Err(err) = self.ctx.publisher.event(&event).await {
            tracing::warn!(backfill = self.id, %err, "cannot report backfill progress");
        }
    }
}

/// Runs fired by a backfill that have not finished, followed through the
/// changes of the schedule's run records (a watch started before anything
/// is checked, so no end is missed) and re-read from them now and then.
struct Unfinished {
    /// Run ids, with when they were fired.
    ids: HashMap<String, tokio::time::Instant>,
    changes: Option<RunChanges>,
    rechecked_at: tokio::time::Instant,
}

/// Changes of run records: run id and record (`None`: deleted).
type RunChanges = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<(String, Option<RunRecord>), jetsched_runtime::RunStoreError>> + Send>,
>;

impl Unfinished {
    async fn start(ctx: &Ctx, schedule: &str) -> Result<Unfinished, String> {
        let changes = ctx
            .runs
            .watch(&run::schedule_runs_filter(schedule))
            .await
            .map_err(|e| format!("cannot follow the runs of {schedule}: {e}"))?;
        Ok(Unfinished {
            ids: HashMap::new(),
            changes: Some(Box::pin(changes)),
            rechecked_at: tokio::time::Instant::now(),
        })
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn insert(&mut self, run_id: String) {
        self.ids.insert(run_id, tokio::time::Instant::now());
    }

    /// Waits until a run may have finished: a change of one of the
    /// schedule's runs, or the next re-check of the records.
    async fn wait(&mut self, runs: &RunStore) {
        let recheck_at = self.rechecked_at + RECHECK_EVERY;
        tokio::select! {
            next = next_change(&mut self.changes) => match next {
                Some(Ok((id, record))) => {
                    if record.is_none_or(|r| r.status.is_terminal()) {
                        self.ids.remove(&id);
                    }
                }
                // Followed by re-reading records from now on.
                Some(Err(err)) => {
                    tracing::debug!(%err, "run changes not followed; re-reading records instead");
                    self.changes = None;
                }
                None => self.changes = None,
            },
            _ = tokio::time::sleep_until(recheck_at) => self.recheck(runs).await,
        }
    }

    /// Drops runs whose record says they finished, and fires that got no
    /// record within [`NO_RECORD`] (rejected by the dispatcher).
    async fn recheck(&mut self, runs: &RunStore) {
        self.rechecked_at = tokio::time::Instant::now();
        let ids: Vec<(String, tokio::time::Instant)> = self.ids.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (id, fired_at) in ids {
            match run_status(runs, &id).await {
                Ok(Some(status)) if status.is_terminal() => {
                    self.ids.remove(&id);
                }
                Ok(None) if fired_at.elapsed() >= NO_RECORD => {
                    self.ids.remove(&id);
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(run_id = %id, %err, "cannot re-read a backfilled run"),
            }
        }
    }
}

type ChangeItem = Result<(String, Option<RunRecord>), jetsched_runtime::RunStoreError>;

/// The next change of a run, or never when they are not followed.
async fn next_change(changes: &mut Option<RunChanges>) -> Option<ChangeItem> {
    match changes.as_mut() {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

//! The run store: the one owner of the runs bucket (`jetsched-runs`).
//!
//! Every service and the CLI read and change run records only through
//! [`RunStore`]. A change is a compare-and-set on the record's KV revision,
//! written in one loop ([`RunStore::update`]): read (or assume), decide,
//! check the move against the state machine's one table
//! ([`jetsched_contract::run::check_transition`]), write on the revision
//! read, and on a conflict read again and decide again. Every write that
//! moves a run to another status, or to its next attempt, is announced as
//! its run event, built from the record ([`RunRecord::event`]); the events
//! of queued, started and succeeded runs are live only, so the record's
//! history (kept [`jetsched_contract::setup::RUN_HISTORY`] revisions deep)
//! is the run's timeline.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::StreamExt;
use jetsched_contract::run::{IllegalTransition, check_transition};
use jetsched_contract::{Names, RunRecord, RunStatus, StepOutcome};
use jiff::Timestamp;

use crate::publish::{PublishError, Publisher};
use crate::retry::Backoff;

/// A record and the KV revision it was read or written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The record.
    pub record: RunRecord,
    /// Its revision (the runs bucket's stream sequence).
    pub revision: u64,
}

/// What [`RunStore::update`] starts from.
// Passed by value once per change and never stored: boxing the record
// would cost an allocation per change for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Known {
    /// Read the record first.
    Read,
    /// Assume there is none (the common case of a new run): no read.
    Absent,
    /// Assume this (it was just read or written): no read.
    Is(Stored),
}

/// What a change decides, given the record as it stands (`None`: no record).
#[allow(clippy::large_enum_variant)] // as for `Known`
#[derive(Debug)]
pub enum Change<T> {
    /// Write this record, then return the value.
    Write(RunRecord, T),
    /// Write nothing; return the value.
    Keep(T),
}

/// A run record could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    /// The change breaks the run state machine (a bug, or a record changed
    /// by hand): nothing was written.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// Others kept changing the record; the caller retries later.
    #[error("run record {0} keeps changing; giving up for now")]
    Contended(String),
    /// The record is not JSON of a run record.
    #[error("run record {run_id} is malformed: {reason}")]
    Malformed {
        /// The run.
        run_id: String,
        /// The parse error.
        reason: String,
    },
    /// NATS or JetStream failed (no leader, unreachable, timed out).
    #[error("run record {run_id}: {reason}")]
    Unavailable {
        /// The run.
        run_id: String,
        /// What failed.
        reason: String,
    },
    /// The record was written but its event could not be published; the
    /// caller retries (the event is idempotent).
    #[error(transparent)]
    Event(#[from] PublishError),
}

/// How often a compare-and-set is tried before [`RunStoreError::Contended`].
const ATTEMPTS: u32 = 16;

/// Where a cancel request left a run.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// No such run.
    Unknown,
    /// It had ended already, with this status.
    Ended(RunStatus),
    /// Requested now (or before); the worker holding it was told. The run's
    /// status when asked.
    Requested(RunStatus),
}

/// The one owner of the runs bucket.
#[derive(Clone)]
pub struct RunStore {
    kv: Store,
    js: Context,
    names: Names,
    publisher: Publisher,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore").field("bucket", &self.names.runs_bucket()).finish()
    }
}

impl RunStore {
    /// Opens the runs bucket (it must exist: `jetsched init`).
    pub async fn open(publisher: Publisher) -> Result<RunStore, jetsched_contract::SetupError> {
        let js = publisher.js().clone();
        let names = publisher.names().clone();
        let kv = js
            .get_key_value(names.runs_bucket())
            .await
            .map_err(|e| jetsched_contract::SetupError::from_source(&names.runs_bucket(), e))?;
        Ok(RunStore { kv, js, names, publisher })
    }

    /// The record of `run_id`, if there is one.
    pub async fn get(&self, run_id: &str) -> Result<Option<Stored>, RunStoreError> {
        let entry = self.kv.entry(run_id).await.map_err(|e| unavailable(run_id, e))?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                Ok(Some(Stored { record: decode(run_id, &e.value)?, revision: e.revision }))
            }
            _ => Ok(None),
        }
    }

    /// Every kept revision of `run_id`, oldest first: the run's timeline.
    pub async fn history(&self, run_id: &str) -> Result<Vec<Stored>, RunStoreError> {
        let mut history = self.kv.history(run_id).await.map_err(|e| unavailable(run_id, e))?;
        let mut out = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry.map_err(|e| unavailable(run_id, e))?;
            if entry.operation == Operation::Put {
                out.push(Stored { record: decode(run_id, &entry.value)?, revision: entry.revision });
            }
        }
        Ok(out)
    }

    /// Changes run `run_id` with compare-and-set: `decide` sees the record
    /// as it stands and says what to write (its `updated_at` is set to now
    /// unless the change sets it); on a conflict the record is
    /// read again and `decide` asked again. Each write is checked against
    /// the state machine, and a write that changes the status or the
    /// attempt is announced as the run's event. Returns `decide`'s value
    /// and the record as it stands after (`None`: still none).
    pub async fn update<T>(
        &self,
        run_id: &str,
        known: Known,
        decide: impl FnMut(Option<&RunRecord>) -> Change<T>,
    ) -> Result<(T, Option<Stored>), RunStoreError> {
        self.change(run_id, known, true, decide).await
    }

    /// [`RunStore::update`] without the event: for a write whose event the
    /// caller sends itself, later (a worker claims a staged run ahead of its
    /// time and announces its start when the handler starts).
    pub async fn update_quietly<T>(
        &self,
        run_id: &str,
        known: Known,
        decide: impl FnMut(Option<&RunRecord>) -> Change<T>,
    ) -> Result<(T, Option<Stored>), RunStoreError> {
        self.change(run_id, known, false, decide).await
    }

    /// The one compare-and-set loop over run records.
    async fn change<T>(
        &self,
        run_id: &str,
        known: Known,
        announce: bool,
        mut decide: impl FnMut(Option<&RunRecord>) -> Change<T>,
    ) -> Result<(T, Option<Stored>), RunStoreError> {
        let mut current = match known {
            Known::Read => self.get(run_id).await?,
            Known::Absent => None,
            Known::Is(stored) => Some(stored),
        };
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        for attempt in 0..ATTEMPTS {
            let (mut next, value) = match decide(current.as_ref().map(|s| &s.record)) {
                Change::Keep(value) => return Ok((value, current)),
                Change::Write(next, value) => (next, value),
            };
            let from = current.as_ref().map(|s| s.record.status);
            check_transition(run_id, from, next.status)?;
            // Stamped now, unless the change stamped it itself (a worker
            // times a retry from the instant it records the failure).
            let stamped = current.as_ref().is_none_or(|c| c.record.updated_at != next.updated_at);
            if !stamped {
                next.updated_at = Timestamp::now();
            }
            if next.status.is_terminal() && next.finished_at.is_none() {
                next.finished_at = Some(next.updated_at);
            }
            match self.write(&next, current.as_ref().map_or(0, |s| s.revision)).await? {
                Some(revision) => {
                    let moved = current
                        .as_ref()
                        .is_none_or(|s| s.record.status != next.status || s.record.attempt != next.attempt);
                    let stored = Stored { record: next, revision };
                    if moved && announce {
                        self.announce(&stored.record).await?;
                    }
                    return Ok((value, Some(stored)));
                }
                None => {
                    // Someone else wrote first (or a follower answered with an
                    // older revision): read again and decide again.
                    if attempt > 1 {
                        backoff.wait().await;
                    }
                    current = self.get(run_id).await?;
                }
            }
        }
        Err(RunStoreError::Contended(run_id.to_string()))
    }

    /// Creates `record` if its run has no record yet. `Ok(Ok(stored))`: created
    /// now; `Ok(Err(existing))`: a record was there (a duplicate, or an
    /// earlier try of the same message).
    pub async fn create(&self, record: RunRecord) -> Result<Result<Stored, Stored>, RunStoreError> {
        let run_id = record.run_id.clone();
        let (created, stored) = self
            .update(&run_id, Known::Absent, |current| match current {
                None => Change::Write(record.clone(), true),
                Some(_) => Change::Keep(false),
            })
            .await?;
        let stored = stored.ok_or_else(|| RunStoreError::Contended(run_id))?;
        Ok(if created { Ok(stored) } else { Err(stored) })
    }

    /// Asks for run `run_id` to be cancelled: marks its record (a worker that
    /// claims a marked run ends it `cancelled` without starting it) and
    /// tells whichever worker holds it, on `<prefix>.cancel.<run-id>`.
    pub async fn request_cancel(&self, run_id: &str) -> Result<CancelOutcome, RunStoreError> {
        let (outcome, _) = self
            .update(run_id, Known::Read, |current| match current {
                None => Change::Keep(CancelOutcome::Unknown),
                Some(r) if r.status.is_terminal() => Change::Keep(CancelOutcome::Ended(r.status)),
                Some(r) if r.cancel_requested => Change::Keep(CancelOutcome::Requested(r.status)),
                Some(r) => {
                    Change::Write(RunRecord { cancel_requested: true, ..r.clone() }, CancelOutcome::Requested(r.status))
                }
            })
            .await?;
        if let CancelOutcome::Requested(_) = outcome {
            let client = self.js.client();
            client
                .publish(self.names.cancel_subject(run_id), Bytes::new())
                .await
                .map_err(|e| unavailable(run_id, e))?;
            client.flush().await.map_err(|e| unavailable(run_id, e))?;
        }
        Ok(outcome)
    }

    /// Stores `records` as they are, with no check, no compare-and-set and no
    /// event: for loading a store (benchmarks, a migration), never for runs
    /// that are going on. Pipelined (4,096 writes in flight). Returns how many.
    pub async fn import(&self, records: impl IntoIterator<Item = RunRecord>) -> Result<u64, RunStoreError> {
        use std::future::IntoFuture as _;
        type Acked = Result<async_nats::jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError>;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut n = 0;
        for record in records {
            if pending.len() >= 4096
                && let Some(acked) = pending.next().await
            {
                let acked: Acked = acked;
                acked.map_err(|e| unavailable("import", e))?;
            }
            let value = serde_json::to_vec(&record)
                .map_err(|e| RunStoreError::Malformed { run_id: record.run_id.clone(), reason: e.to_string() })?;
            let subject = self.names.runs_bucket_subject(&record.run_id);
            let ack = self.js.publish(subject, value.into()).await.map_err(|e| unavailable(&record.run_id, e))?;
            pending.push(ack.into_future());
            n += 1;
        }
        while let Some(acked) = pending.next().await {
            let acked: Acked = acked;
            acked.map_err(|e| unavailable("import", e))?;
        }
        Ok(n)
    }

    /// Publishes the event of `record`'s current state (again): a run whose
    /// record was stored but whose event may not have been, or a started
    /// attempt whose start is not stored (see the worker).
    pub async fn announce(&self, record: &RunRecord) -> Result<(), RunStoreError> {
        self.publisher.event(&record.event()).await?;
        Ok(())
    }

    /// Tells a workflow run that its step (a run of `task`) ended: a message
    /// on `<prefix>.advance.<task>` in the inbox, which a dispatcher records
    /// in the workflow's run. Idempotent (its message id is the step run and
    /// status), so every service that ends a step, and every retry, sends it.
    pub async fn report_step(&self, task: &str, outcome: &StepOutcome) -> Result<(), RunStoreError> {
        let body = serde_json::to_vec(outcome)
            .map_err(|e| RunStoreError::Malformed { run_id: outcome.run_id.clone(), reason: e.to_string() })?;
        let subject = self.names.advance_subject(task);
        self.publisher.publish(subject, async_nats::HeaderMap::new(), &outcome.msg_id(), body.into()).await?;
        Ok(())
    }

    /// [`RunStore::report_step`] for a step run's record, if it has ended.
    pub async fn report_if_step(&self, record: &RunRecord) -> Result<(), RunStoreError> {
        match record.step_outcome() {
            Some(outcome) => self.report_step(&record.task, &outcome).await,
            None => Ok(()),
        }
    }

    /// Follows every change of the runs matching `key_filter` (`>` for all),
    /// from now on.
    pub async fn watch(
        &self,
        key_filter: &str,
    ) -> Result<impl futures::Stream<Item = Result<(String, Option<RunRecord>), RunStoreError>> + use<>, RunStoreError>
    {
        let watch = self.kv.watch(key_filter).await.map_err(|e| unavailable(key_filter, e))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| unavailable("watch", e))?;
            let record = match entry.operation {
                Operation::Put => Some(decode(&entry.key, &entry.value)?),
                _ => None,
            };
            Ok((entry.key, record))
        }))
    }

    /// The runs bucket's stream: every stored change in order, for
    /// [`crate::runscan`].
    pub(crate) async fn changes_stream(&self) -> Result<Stream, RunStoreError> {
        self.js.get_stream(self.names.runs_bucket_stream()).await.map_err(|e| unavailable("runs bucket", e))
    }

    /// Every stored change of every run, oldest first (the whole runs bucket's
    /// history, as tests and audits read it): `(stream sequence, run id,
    /// record)`.
    pub async fn all_changes(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<(u64, String, RunRecord), RunStoreError>> + use<>, RunStoreError>
    {
        let stream = self.changes_stream().await?;
        let names = self.names.clone();
        let consumer = stream
            .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
            .await
            .map_err(|e| unavailable("runs bucket", e))?;
        let messages = consumer.messages().await.map_err(|e| unavailable("runs bucket", e))?;
        Ok(messages.filter_map(move |msg| {
            let names = names.clone();
            async move {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => return Some(Err(unavailable("runs bucket", e))),
                };
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
                let run_id = names.parse_runs_bucket_subject(msg.subject.as_str())?.to_string();
                if msg.payload.is_empty() {
                    return None;
                }
                Some(decode(&run_id, &msg.payload).map(|r| (seq, run_id, r)))
            }
        }))
    }

    /// The changes stored since `since`, oldest first: at most the last
    /// `at_most` of them (a console's charts of the last hour). Reads what
    /// was stored when called, then ends.
    pub async fn changes_since(&self, since: Timestamp, at_most: u64) -> Result<Vec<RunRecord>, RunStoreError> {
        let stream = self.changes_stream().await?;
        let fail = |e: &dyn std::fmt::Display| unavailable("runs bucket", e.to_string());
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(since.as_nanosecond()).map_err(|e| fail(&e))?;
        let config = |deliver_policy| OrderedConfig { deliver_policy, ..Default::default() };
        let mut consumer =
            stream.create_consumer(config(DeliverPolicy::ByStartTime { start_time })).await.map_err(|e| fail(&e))?;
        if consumer.cached_info().num_pending > at_most {
            let last = stream.cached_info().state.last_sequence;
            let start_sequence = last.saturating_sub(at_most).max(1);
            consumer = stream
                .create_consumer(config(DeliverPolicy::ByStartSequence { start_sequence }))
                .await
                .map_err(|e| fail(&e))?;
        }
        let pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
        let mut out = Vec::new();
        for _ in 0..pending {
            let msg = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(fail(&e)),
                Ok(None) | Err(_) => break,
            };
            let Some(run_id) = self.names.parse_runs_bucket_subject(msg.subject.as_str()) else { continue };
            if !msg.payload.is_empty()
                && let Ok(record) = decode(run_id, &msg.payload)
            {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The NATS client (for requests about a run: a withdrawal).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The JetStream context (for the stream scans of [`crate::runscan`]).
    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// Compare-and-set; `None` when the revision did not match.
    async fn write(&self, record: &RunRecord, revision: u64) -> Result<Option<u64>, RunStoreError> {
        let run_id = record.run_id.as_str();
        let value: Bytes = serde_json::to_vec(record)
            .map_err(|e| RunStoreError::Malformed { run_id: run_id.to_string(), reason: e.to_string() })?
            .into();
        if revision == 0 {
            return match self.kv.create(run_id, value).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(unavailable(run_id, e)),
            };
        }
        match self.kv.update(run_id, value, revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(run_id, e)),
        }
    }
}

fn decode(run_id: &str, value: &[u8]) -> Result<RunRecord, RunStoreError> {
    serde_json::from_slice(value)
        .map_err(|e| RunStoreError::Malformed { run_id: run_id.to_string(), reason: e.to_string() })
}

fn unavailable(run_id: &str, e: impl std::fmt::Display) -> RunStoreError {
    RunStoreError::Unavailable { run_id: run_id.to_string(), reason: e.to_string() }
}

//! Triggers that hold events before submitting: batches and debounced bursts.
//! Held events stay unacknowledged (kept alive with in-progress acks), so a
//! host that dies loses none: they come back to the next host.
//!
//! Batch, exactly once: the batch is journaled in the trigger's entry of the
//! ticker bucket (compare-and-set) before its submission is published. The
//! journal also carries the events of earlier (stored) batches not yet known
//! acknowledged (a double ack answered by the server). A host taking the
//! trigger over reads the journal, submits its batch again (same
//! `Nats-Msg-Id`, so a no-op if it was stored) and acknowledges the
//! journal's events, batch and carried, as they come back instead of
//! batching them anew. An event stops being carried once it is seen again
//! and acked, or once none can come back (the consumer's count of
//! unacknowledged events is down to what this host holds). New batches
//! never wait for the journal's events: those may come back only after a
//! dead host's ack wait, and only through a pull request, which a host
//! waiting for them with a full batch would not send.
//!
//! Debounce: the latest event of each burst is held; an older one is acked
//! as soon as a newer one of the same key is held, so a crash leaves the
//! newest for the next host. The run is the latest event's (its position
//! names it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::kv::UpdateErrorKind;
use async_nats::jetstream::{AckKind, Message};
use jetsched_contract::TriggerEvent;
use jetsched_contract::ticker::{JournaledBatch, TriggerState, trigger_key};
use jetsched_runtime::Backoff;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::triggers::Ctx;
use crate::triggers::event::{self, Stored, Submission};
use crate::triggers::source::{Opened, Pulls, Spec, ack, event_of, submit};

/// A batch is submitted early once its events' JSON reaches this size (the
/// inbox takes messages up to the server's payload limit, 1 MiB by default).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Bursts held at once by a debounced trigger; past this it stops pulling
/// until bursts end.
const MAX_BURSTS: usize = 10_000;

/// How often timers and journal accounting are checked.
const TICK: Duration = Duration::from_millis(100);

/// Events not yet known acknowledged a journal carries at most; past this
/// no new batch is journaled until they are accounted for (acks failing
/// that often means NATS is failing, and the journal must stay small).
const MAX_CARRIED: usize = 4096;

/// Consumes a batching or debouncing trigger until `token` fires (`Ok`) or
/// its consumer fails (`Err`).
pub async fn consume(ctx: &Ctx, spec: &Spec, opened: Opened, token: &CancellationToken) -> Result<(), String> {
    match (&spec.trigger.batch, spec.trigger.debounce) {
        (Some(batch), _) => {
            let mut b = Batcher {
                ctx,
                spec,
                max: batch.max.max(1) as usize,
                within: batch.within.0,
                key: trigger_key(spec.partition, &spec.consumer),
                opened,
                pending: Vec::new(),
                queue: VecDeque::new(),
                bytes: 0,
                first_at: None,
                outstanding: HashSet::new(),
            };
            let result = b.run(token).await;
            nak_all(b.pending.iter().chain(b.queue.iter()).map(|(m, _)| m)).await;
            result
        }
        (None, Some(after)) => {
            let mut d = Debouncer {
                ctx,
                spec,
                after: after.0,
                opened,
                held: HashMap::new(),
                timers: BinaryHeap::new(),
                done: HashMap::new(),
            };
            let result = d.run(token).await;
            nak_all(d.held.values().map(|h| &h.msg)).await;
            result
        }
        (None, None) => Ok(()),
    }
}

/// Hands held events back for the next host, at once.
async fn nak_all<'m>(msgs: impl Iterator<Item = &'m Message>) {
    for msg in msgs {
        if let Err(err) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%err, "cannot hand a held event back; it comes back after ack_wait");
        }
    }
}

/// Keeps held events from being redelivered while they wait.
async fn keep_alive<'m>(msgs: impl Iterator<Item = &'m Message>) {
    for msg in msgs {
        if let Err(err) = msg.ack_with(AckKind::Progress).await {
            tracing::debug!(%err, "cannot extend a held event's ack wait");
        }
    }
}

/// Publishes `submission` until it is stored; `false` if `token` fired first.
async fn submit_until_stored(
    ctx: &Ctx,
    spec: &Spec,
    submission: &Submission,
    source: Option<&async_nats::HeaderMap>,
    token: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if submit(ctx, spec, submission, source).await.is_ok() {
            return true;
        }
        tokio::select! {
            _ = token.cancelled() => return false,
            _ = backoff.wait() => {}
        }
    }
}

struct Batcher<'a> {
    ctx: &'a Ctx,
    spec: &'a Spec,
    max: usize,
    within: Duration,
    /// The trigger's key in the ticker bucket (registration and journal).
    key: String,
    opened: Opened,
    /// The batch being gathered, and the size of its events' JSON.
    pending: Vec<(Message, TriggerEvent)>,
    /// Events delivered that wait for room in the batch.
    queue: VecDeque<(Message, TriggerEvent)>,
    bytes: usize,
    first_at: Option<Instant>,
    /// Sequences of batches already submitted (the journal's, and those it
    /// carries) not yet known acknowledged: acked when they come back,
    /// never batched again.
    outstanding: HashSet<u64>,
}

impl Batcher<'_> {
    async fn run(&mut self, token: &CancellationToken) -> Result<(), String> {
        if let Some(journal) = self.opened.state.batch.clone()
            && !self.resubmit(&journal, token).await
        {
            return Ok(());
        }
        let consumer = self.opened.consumer.clone();
        let mut pulls = Pulls::new(&consumer);
        let mut tick = tokio::time::interval(TICK);
        let mut alive = tokio::time::interval(self.ctx.ack_wait / 3);
        loop {
            self.admit(token).await?;
            // Between two pull requests every event delivered to this host
            // is one it holds: the moment to account for the journal.
            if !self.outstanding.is_empty() && !pulls.is_active() {
                self.account().await;
                self.admit(token).await?;
            }
            // Events are always read off a pull request (so that none waits
            // unseen, unkept), but only as many are asked for as a batch has
            // room for; while submitted events are not accounted for, a
            // request stands anyway, for them to come back through (the
            // server redelivers before it delivers new events).
            let mut want = self.max.saturating_sub(self.pending.len() + self.queue.len());
            if !self.outstanding.is_empty() && self.queue.len() < MAX_CARRIED {
                want = want.max(1);
            }
            if want > 0 {
                pulls.request(want).await?;
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let due = self.first_at.is_some_and(|t| t.elapsed() >= self.within);
                    if due && !self.flush(token).await? {
                        return Ok(());
                    }
                }
                _ = alive.tick() => keep_alive(self.pending.iter().chain(self.queue.iter()).map(|(m, _)| m)).await,
                next = pulls.next(), if pulls.is_active() => {
                    let Some(msg) = next? else { continue };
                    self.receive(msg).await;
                }
            }
        }
    }

    /// One delivered event: an event of the journaled batch is acked, one
    /// filtered out too; a redelivery of an event held replaces it; others
    /// wait in the queue for room in the batch.
    async fn receive(&mut self, msg: Message) {
        let Some(event) = event_of(self.ctx, self.spec, &self.opened.stream_name, &msg) else {
            ack(&msg).await;
            return;
        };
        if self.outstanding.contains(&event.seq) {
            if msg.double_ack().await.is_ok() {
                self.outstanding.remove(&event.seq);
            }
            return;
        }
        if !event::passes(&self.spec.trigger, &event) {
            ack(&msg).await;
            return;
        }
        let seq = event.seq;
        if let Some(held) = self.pending.iter_mut().chain(self.queue.iter_mut()).find(|(_, e)| e.seq == seq) {
            held.0 = msg;
            return;
        }
        self.queue.push_back((msg, event));
    }

    /// Moves queued events into the batch, submitting it each time it is full.
    async fn admit(&mut self, token: &CancellationToken) -> Result<(), String> {
        loop {
            if self.pending.len() >= self.max || self.bytes >= MAX_BATCH_BYTES {
                if self.too_much_carried() || !self.flush(token).await? {
                    return Ok(());
                }
                continue;
            }
            let Some((msg, event)) = self.queue.pop_front() else { return Ok(()) };
            if self.outstanding.contains(&event.seq) {
                if msg.double_ack().await.is_ok() {
                    self.outstanding.remove(&event.seq);
                }
                continue;
            }
            self.bytes += serde_json::to_vec(&event::payload(&self.spec.trigger, &event)).map_or(0, |b| b.len());
            self.first_at.get_or_insert_with(Instant::now);
            self.pending.push((msg, event));
        }
    }

    /// Whether so many events are carried that no new batch is journaled.
    fn too_much_carried(&self) -> bool {
        self.outstanding.len() > MAX_CARRIED
    }

    /// Journals, submits and acknowledges the batch gathered so far.
    /// `Ok(false)`: stopped meanwhile.
    async fn flush(&mut self, token: &CancellationToken) -> Result<bool, String> {
        if self.pending.is_empty() || self.too_much_carried() {
            return Ok(true);
        }
        self.pending.sort_by_key(|(_, e)| e.seq);
        let events: Vec<TriggerEvent> = self.pending.iter().map(|(_, e)| e.clone()).collect();
        let Some(submission) = event::batch(&self.spec.task, &self.spec.trigger, &events) else { return Ok(true) };
        let mut carried: Vec<u64> = self.outstanding.iter().copied().collect();
        carried.sort_unstable();
        let journal =
            JournaledBatch { msg_id: submission.msg_id.clone(), seqs: events.iter().map(|e| e.seq).collect(), carried };
        if !self.journal(journal, token).await? {
            return Ok(true);
        }
        let source = self.pending.first().and_then(|(m, _)| m.headers.clone());
        if !submit_until_stored(self.ctx, self.spec, &submission, source.as_ref(), token).await {
            return Ok(false);
        }
        let acks =
            futures::future::join_all(self.pending.iter().map(|(m, e)| async move { (e.seq, m.double_ack().await) }));
        for (seq, result) in acks.await {
            if let Err(err) = result {
                tracing::debug!(seq, %err, "batched event not known acknowledged; the next journals carry it");
                self.outstanding.insert(seq);
            }
        }
        tracing::debug!(task = %self.spec.task, events = events.len(), msg_id = %submission.msg_id, "batch submitted");
        self.pending.clear();
        self.bytes = 0;
        self.first_at = None;
        Ok(true)
    }

    /// Writes `journal` over the previous one with compare-and-set. `Ok(false)`:
    /// another host wrote meanwhile; its batch is resubmitted and accounted
    /// for first, this one waits.
    async fn journal(&mut self, journal: JournaledBatch, token: &CancellationToken) -> Result<bool, String> {
        let state = TriggerState { batch: Some(journal), ..self.opened.state.clone() };
        let bytes = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
        match self.ctx.state.update(&self.key, bytes.into(), self.opened.state_revision).await {
            Ok(revision) => {
                self.opened.state = state;
                self.opened.state_revision = revision;
                Ok(true)
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(task = %self.spec.task, key = %self.key, "another host journaled a batch of this trigger; taking it over");
                let entry =
                    self.ctx.state.entry(&self.key).await.map_err(|e| format!("cannot read {}: {e}", self.key))?;
                let entry = entry.ok_or_else(|| format!("{} was deleted", self.key))?;
                let theirs: TriggerState = serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
                self.opened.state_revision = entry.revision;
                self.opened.state = theirs.clone();
                if let Some(batch) = theirs.batch {
                    self.resubmit(&batch, token).await;
                    // Events of theirs this host holds too (redelivered to
                    // it while the other host still counted them) are theirs.
                    let mut kept = Vec::new();
                    for (msg, event) in std::mem::take(&mut self.pending) {
                        if self.outstanding.contains(&event.seq) {
                            if msg.double_ack().await.is_ok() {
                                self.outstanding.remove(&event.seq);
                            }
                        } else {
                            kept.push((msg, event));
                        }
                    }
                    self.pending = kept;
                }
                Ok(false)
            }
            Err(err) => Err(format!("cannot journal a batch: {err}")),
        }
    }

    /// Submits a journaled batch again from the stream (a no-op if it was
    /// stored) and from then on acknowledges its events and those it
    /// carries when they come back. `false` if stopped meanwhile.
    async fn resubmit(&mut self, journal: &JournaledBatch, token: &CancellationToken) -> bool {
        let mut events = Vec::new();
        for &seq in &journal.seqs {
            match self.opened.stream.get_raw_message(seq).await {
                Ok(m) => {
                    let stored = Stored {
                        stream: &self.opened.stream_name,
                        subject: m.subject.as_str(),
                        seq,
                        stored_nanos: m.time.unix_timestamp_nanos(),
                        headers: Some(&m.headers),
                        body: &m.payload,
                    };
                    events.push(event::event(&self.ctx.names, &self.spec.trigger, &stored));
                }
                Err(err) => {
                    tracing::warn!(task = %self.spec.task, seq, %err, "a journaled batch's event is gone from its stream; submitted without it")
                }
            }
        }
        if let Some(rebuilt) = event::batch(&self.spec.task, &self.spec.trigger, &events) {
            let submission = Submission { msg_id: journal.msg_id.clone(), body: rebuilt.body };
            if !submit_until_stored(self.ctx, self.spec, &submission, None, token).await {
                return false;
            }
        }
        self.outstanding.extend(journal.seqs.iter().chain(&journal.carried));
        true
    }

    /// Drops the submitted events that cannot come back: when the consumer
    /// counts no more unacknowledged events than this host holds, none is
    /// pending elsewhere.
    async fn account(&mut self) {
        let mut consumer = self.opened.consumer.clone();
        match consumer.info().await {
            Ok(info) if info.num_ack_pending <= self.pending.len() + self.queue.len() => self.outstanding.clear(),
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, "cannot read the trigger consumer's state"),
        }
    }
}

/// A burst's latest event, waiting for quiet.
struct Held {
    msg: Message,
    event: TriggerEvent,
    /// Submitted at this instant unless a later event of the burst comes.
    due: Instant,
}

struct Debouncer<'a> {
    ctx: &'a Ctx,
    spec: &'a Spec,
    after: Duration,
    opened: Opened,
    /// Latest event per burst key.
    held: HashMap<String, Held>,
    /// One timer per burst: when it was last known due (a burst that
    /// went on is put back with its new due time when its timer comes).
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Per key, the last event submitted and when: an older event of that
    /// key arriving later (redelivered after a takeover) is dropped.
    done: HashMap<String, (u64, Instant)>,
}

impl Debouncer<'_> {
    async fn run(&mut self, token: &CancellationToken) -> Result<(), String> {
        let consumer = self.opened.consumer.clone();
        let mut pulls = Pulls::new(&consumer);
        let mut alive = tokio::time::interval(self.ctx.ack_wait / 3);
        loop {
            let room = self.held.len() < MAX_BURSTS;
            if room {
                pulls.request(256).await?;
            }
            let next_due = self.timers.peek().map_or(Instant::now() + TICK, |Reverse((at, _))| *at);
            tokio::select! {
                biased;
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_due) => {
                    if !self.fire_due(token).await {
                        return Ok(());
                    }
                }
                _ = alive.tick() => {
                    keep_alive(self.held.values().map(|h| &h.msg)).await;
                    let keep = self.ctx.ack_wait * 2 + self.after;
                    self.done.retain(|_, (_, at)| at.elapsed() < keep);
                }
                next = pulls.next(), if pulls.is_active() => {
                    let Some(msg) = next? else { continue };
                    self.take(msg).await;
                }
            }
        }
    }

    async fn take(&mut self, msg: Message) {
        let Some(event) = event_of(self.ctx, self.spec, &self.opened.stream_name, &msg) else {
            ack(&msg).await;
            return;
        };
        if !event::passes(&self.spec.trigger, &event) {
            ack(&msg).await;
            return;
        }
        let key = event::debounce_key(&self.spec.trigger, &event);
        let stale = self.done.get(&key).is_some_and(|(seq, _)| *seq >= event.seq)
            || self.held.get(&key).is_some_and(|h| h.event.seq > event.seq);
        if stale {
            ack(&msg).await;
            return;
        }
        if let Some(held) = self.held.get_mut(&key)
            && held.event.seq == event.seq
        {
            // A redelivery of the event held: keep the newer delivery.
            held.msg = msg;
            return;
        }
        let due = Instant::now() + self.after;
        match self.held.insert(key.clone(), Held { msg, event, due }) {
            Some(older) => ack(&older.msg).await,
            None => self.timers.push(Reverse((due, key))),
        }
    }

    /// Submits every burst that has been quiet long enough. `false` if stopped meanwhile.
    async fn fire_due(&mut self, token: &CancellationToken) -> bool {
        while self.timers.peek().is_some_and(|Reverse((at, _))| *at <= Instant::now()) {
            let Some(Reverse((_, key))) = self.timers.pop() else { break };
            let Some(held) = self.held.remove(&key) else { continue };
            if held.due > Instant::now() {
                // The burst went on: wait for its new end.
                self.timers.push(Reverse((held.due, key.clone())));
                self.held.insert(key, held);
                continue;
            }
            let submission = event::single(&self.spec.task, &self.spec.trigger, &held.event);
            if !submit_until_stored(self.ctx, self.spec, &submission, held.msg.headers.as_ref(), token).await {
                self.held.insert(key, held);
                return false;
            }
            ack(&held.msg).await;
            self.done.insert(key, (held.event.seq, Instant::now()));
        }
        true
    }
}

//! Partition leases, so that N tickers split the schedules between them and
//! a dead ticker's share is taken over.
//!
//! Leases live in `<prefix>-ticker-leases`, a bucket whose entries expire
//! after the lease TTL unless rewritten (every write re-stamps an entry).
//! - A live ticker announces itself under `member.<id>` and, like its
//!   leases, rewrites it every TTL/3.
//! - It acquires a free partition with KV `create` on `lease.<p>` (fails if
//!   someone holds it) and refreshes it with `update` on the revision it
//!   holds; a refresh that finds another revision means the lease is gone,
//!   and the partition stops firing at once. A refresh that cannot reach the
//!   server keeps the lease only until its TTL would have run out.
//! - Each ticker aims for ceil(partitions / live tickers), preferring
//!   partitions by rendezvous hash of (ticker id, partition) and handing
//!   extras back (a delete on the revision it holds) when tickers join.
//! - Expiry leaves a marker the others see at once through a watch, so a
//!   dead ticker's partitions are taken over as soon as its leases expire.
//!
//! This task also writes the watermarks and fire counts the plan reports
//! ([`crate::state`]), counts first, so a watermark never passes a fire whose
//! count is not stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Store, UpdateErrorKind};
use futures::TryStreamExt;
use jetsched_contract::TickerBuckets;
use jetsched_contract::run::fnv1a;
use jetsched_contract::ticker::{self, FiredCount, LeaseKey, PARTITIONS};
use jetsched_runtime::{KvChange, Outage, spawn_kv_watch};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::{self, PartitionState, Synced};

/// The lease bucket cannot be reached (no leader, NATS unreachable): one
/// line when it starts, one when it ends. Leases are kept until they would
/// expire, so an election shorter than the TTL loses none.
static LEASE_BUCKET: Outage = Outage::new("keeping ticker leases");

/// What the lease keeper tells the plan.
#[derive(Debug)]
pub enum LeaseEvent {
    /// A partition is ours until `valid_until` unless renewed.
    Acquired {
        /// The partition.
        partition: u16,
        /// Stop firing it after this unless renewed.
        valid_until: Timestamp,
        /// Its stored watermark.
        watermark: Option<Timestamp>,
        /// Fire counts of its `max_runs` schedules.
        counts: HashMap<String, FiredCount>,
    },
    /// Leases refreshed.
    Renewed {
        /// The partitions.
        partitions: Vec<u16>,
        /// Their new expiry.
        valid_until: Timestamp,
    },
    /// Someone else holds the partition now: stop firing it.
    Lost(u16),
    /// Hand the partition back: stop firing it and report its final watermark.
    Release(u16),
}

/// What the plan tells the lease keeper.
#[derive(Debug)]
pub enum Command {
    /// Every schedule is loaded: start taking partitions.
    Ready,
    /// Shutting down: take nothing more; every partition is being handed back.
    Stop,
    /// A partition's watermark moved.
    Progress(u16, Timestamp),
    /// A `max_runs` schedule's fire was stored.
    Count(u16, Arc<str>, FiredCount),
    /// A `max_runs` schedule was deleted: drop its count.
    Forget(u16, String),
    /// A released partition is drained; its final watermark.
    Released(u16, Timestamp),
    /// The plan found the lease expired unrenewed.
    Expired(u16),
}

/// How often pending watermarks and counts are written.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Starts the keeper. It runs until the command sender is dropped, then
/// writes what is pending and gives every lease back.
pub fn spawn(
    id: String,
    buckets: TickerBuckets,
) -> (mpsc::UnboundedSender<Command>, mpsc::UnboundedReceiver<LeaseEvent>, tokio::task::JoinHandle<()>) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let ttl = buckets.lease_ttl.max(Duration::from_secs(1));
    let keeper = Keeper {
        op_timeout: (ttl / 3).max(Duration::from_millis(500)),
        id,
        ttl,
        leases: buckets.leases,
        state: buckets.state,
        events: event_tx,
        ready: false,
        stopping: false,
        held: BTreeMap::new(),
        releasing: BTreeSet::new(),
        marks: HashMap::new(),
        counts: HashMap::new(),
        members: HashSet::new(),
        handed_back: 0,
    };
    let handle = tokio::spawn(keeper.run(cmd_rx));
    (cmd_tx, event_rx, handle)
}

struct Keeper {
    id: String,
    ttl: Duration,
    op_timeout: Duration,
    leases: Store,
    state: Store,
    events: mpsc::UnboundedSender<LeaseEvent>,
    ready: bool,
    /// Shutting down: no more balancing.
    stopping: bool,
    /// Leases held, with the revision to refresh on.
    held: BTreeMap<u16, u64>,
    /// Held leases being handed back.
    releasing: BTreeSet<u16>,
    marks: HashMap<u16, Synced<Timestamp>>,
    counts: HashMap<(u16, Arc<str>), Synced<FiredCount>>,
    /// Tickers seen through the watch.
    members: HashSet<String>,
    /// Partitions handed back since shutdown began.
    handed_back: usize,
}

impl Keeper {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let watch_stop = CancellationToken::new();
        let mut watch = spawn_kv_watch(self.leases.clone(), watch_stop.clone(), 1024);
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut balance_at: Option<Instant> = None;
        loop {
            let balance_due = async {
                match balance_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Ready) => {
                        self.ready = true;
                        self.refresh().await;
                        self.balance().await;
                    }
                    Some(command) => self.command(command).await,
                    None => break,
                },
                _ = refresh.tick() => {
                    self.refresh().await;
                    self.balance().await;
                }
                _ = flush.tick() => self.flush(None).await,
                change = watch.recv(), if !watch.is_closed() => {
                    if let Some(change) = change && self.observe(change) && balance_at.is_none() {
                        // Coalesce a burst of changes (a ticker handing back many partitions).
                        balance_at = Some(Instant::now() + Duration::from_millis(50));
                    }
                }
                _ = balance_due => {
                    balance_at = None;
                    self.balance().await;
                }
            }
        }
        watch_stop.cancel();
        self.give_back().await;
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Ready => {}
            Command::Stop => self.stopping = true,
            Command::Progress(p, w) => {
                if let Some(mark) = self.marks.get_mut(&p) {
                    mark.pending = mark.pending.max(Some(w)).filter(|w| mark.stored < Some(*w));
                }
            }
            Command::Count(p, schedule, count) => {
                if self.held.contains_key(&p) {
                    let synced = self.counts.entry((p, schedule)).or_default();
                    if synced.pending.as_ref().is_none_or(|c| c.fired < count.fired) {
                        synced.pending = Some(count);
                    }
                }
            }
            Command::Forget(p, schedule) => {
                if self.held.contains_key(&p) {
                    self.counts.remove(&(p, Arc::from(schedule.as_str())));
                    let key = ticker::fired_key(p, &schedule);
                    if let Ok(Err(err)) = tokio::time::timeout(self.op_timeout, self.state.purge(&key)).await {
                        tracing::warn!(key, %err, "cannot drop the fire count of a deleted schedule");
                    }
                }
            }
            Command::Released(p, w) => {
                if let Some(mark) = self.marks.get_mut(&p) {
                    mark.pending = mark.pending.max(Some(w)).filter(|w| mark.stored < Some(*w));
                }
                self.flush(Some(p)).await;
                self.drop_lease(p, true).await;
                self.handed_back += usize::from(self.stopping);
                tracing::debug!(partition = p, "partition handed back");
            }
            Command::Expired(p) => {
                tracing::warn!(partition = p, "lease ran out before it could be renewed");
                self.drop_lease(p, true).await;
            }
        }
    }

    /// Forgets partition `p`; with `delete`, frees the lease if it is still ours.
    async fn drop_lease(&mut self, p: u16, delete: bool) {
        self.releasing.remove(&p);
        self.marks.remove(&p);
        self.counts.retain(|(part, _), _| *part != p);
        let Some(revision) = self.held.remove(&p) else { return };
        if delete {
            let key = ticker::lease_key(p);
            let op = self.leases.delete_expect_revision(&key, Some(revision));
            if let Ok(Err(err)) = tokio::time::timeout(self.op_timeout, op).await {
                tracing::debug!(key, %err, "lease not deleted (no longer ours)");
            }
        }
    }

    /// Rewrites the member key and every held lease.
    async fn refresh(&mut self) {
        if !self.ready {
            return;
        }
        let started = Timestamp::now();
        let member = self.leases.put(ticker::member_key(&self.id), self.id.clone().into());
        match with_timeout(self.op_timeout, member).await {
            Ok(_) => LEASE_BUCKET.recovered(),
            Err(err) => LEASE_BUCKET.failed(&format_args!("cannot announce this ticker: {err}")),
        }
        let (leases, id, limit) = (&self.leases, &self.id, self.op_timeout);
        let updates = self.held.iter().map(|(&p, &revision)| async move {
            let op = leases.update(ticker::lease_key(p), id.clone().into(), revision);
            (p, tokio::time::timeout(limit, op).await)
        });
        let results = futures::future::join_all(updates).await;
        let mut renewed = Vec::new();
        for (p, result) in results {
            match result {
                Ok(Ok(revision)) => {
                    self.held.insert(p, revision);
                    renewed.push(p);
                }
                // Either another ticker took it, or our own last refresh was
                // stored after its answer was lost (a timeout in an election),
                // or the server answered "wrong last sequence" spuriously (R3
                // under load, nats-server #7281): read who holds it before
                // giving it up.
                Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => match self.holder(p).await {
                    Some((holder, revision)) if holder == self.id => {
                        tracing::debug!(partition = p, revision, "lease still ours at a newer revision");
                        self.held.insert(p, revision);
                    }
                    Some(_) | None => {
                        tracing::warn!(partition = p, "lease taken by another ticker; stopping its fires");
                        self.drop_lease(p, false).await;
                        self.send(LeaseEvent::Lost(p));
                    }
                },
                // Unreachable: keep firing until the lease would expire.
                Ok(Err(err)) => LEASE_BUCKET.failed(&format_args!("cannot refresh lease {p}: {err}")),
                Err(_) => LEASE_BUCKET.failed(&format_args!("refreshing lease {p} timed out")),
            }
        }
        if !renewed.is_empty() && renewed.len() == self.held.len() {
            LEASE_BUCKET.recovered();
        }
        if !renewed.is_empty() {
            self.send(LeaseEvent::Renewed { partitions: renewed, valid_until: self.valid_from(started) });
        }
    }

    /// Who holds partition `p`'s lease now, and at which revision (`None`
    /// when it is free or cannot be read).
    async fn holder(&self, p: u16) -> Option<(String, u64)> {
        let entry =
            tokio::time::timeout(self.op_timeout, self.leases.entry(ticker::lease_key(p))).await.ok()?.ok()??;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return None;
        }
        Some((String::from_utf8_lossy(&entry.value).into_owned(), entry.revision))
    }

    /// When a lease written at `started` stops being safe to use: a tenth of
    /// the TTL before the server would expire it.
    fn valid_from(&self, started: Timestamp) -> Timestamp {
        let safe = jiff::SignedDuration::try_from(self.ttl.mul_f64(0.9)).unwrap_or_default();
        started.checked_add(safe).unwrap_or(started)
    }

    /// Takes free partitions up to this ticker's share, or hands extras back.
    async fn balance(&mut self) {
        if !self.ready || self.stopping {
            return;
        }
        let keys: Result<Vec<String>, String> = match tokio::time::timeout(self.op_timeout, async {
            self.leases.keys().await.map_err(|e| e.to_string())?.try_collect().await.map_err(|e| e.to_string())
        })
        .await
        {
            Ok(keys) => keys,
            Err(_) => Err("timed out".to_string()),
        };
        let keys = match keys {
            Ok(keys) => keys,
            Err(err) => {
                LEASE_BUCKET.failed(&format_args!("cannot list leases: {err}"));
                return;
            }
        };
        let mut members: BTreeSet<&str> = BTreeSet::from([self.id.as_str()]);
        let mut taken = BTreeSet::new();
        for key in &keys {
            match ticker::parse_lease_key(key) {
                Some(LeaseKey::Member(id)) => {
                    members.insert(id);
                }
                Some(LeaseKey::Lease(p)) => {
                    taken.insert(p);
                }
                None => {}
            }
        }
        let share = usize::from(PARTITIONS).div_ceil(members.len());
        let mine: Vec<u16> = self.held.keys().filter(|p| !self.releasing.contains(p)).copied().collect();
        let plan = rebalance(&self.id, &mine, &taken, share);
        for p in plan.release {
            self.releasing.insert(p);
            self.send(LeaseEvent::Release(p));
        }
        let (wanted, tickers) = (plan.acquire.len(), members.len());
        for p in plan.acquire {
            self.acquire(p).await;
        }
        if wanted > 0 {
            tracing::info!(held = self.held.len(), tickers, "partitions acquired");
        }
    }

    async fn acquire(&mut self, p: u16) {
        let started = Timestamp::now();
        let key = ticker::lease_key(p);
        let revision = match with_timeout(self.op_timeout, self.leases.create(&key, self.id.clone().into())).await {
            Ok(revision) => revision,
            Err(err) => {
                tracing::debug!(partition = p, %err, "partition not acquired");
                return;
            }
        };
        self.held.insert(p, revision);
        let read = tokio::time::timeout(self.op_timeout, state::read_partition(&self.state, p)).await;
        let state = match read {
            Ok(Ok(state)) => state,
            Ok(Err(err)) => return self.abandon(p, &err.to_string()).await,
            Err(_) => return self.abandon(p, "timed out reading its state").await,
        };
        let values = state.count_values();
        let PartitionState { watermark, counts } = state;
        let stored = watermark.stored;
        self.marks.insert(p, watermark);
        self.counts.extend(counts.into_iter().map(|(k, v)| ((p, k), v)));
        tracing::debug!(partition = p, watermark = ?stored, "partition acquired");
        self.send(LeaseEvent::Acquired {
            partition: p,
            valid_until: self.valid_from(started),
            watermark: stored,
            counts: values,
        });
    }

    async fn abandon(&mut self, p: u16, why: &str) {
        tracing::warn!(partition = p, why, "cannot take the partition over; giving it back");
        self.drop_lease(p, true).await;
    }

    /// Reacts to a change in the leases bucket; true when a rebalance is due.
    fn observe(&mut self, change: KvChange) -> bool {
        match change {
            KvChange::Put { key, value, .. } => match ticker::parse_lease_key(&key) {
                Some(LeaseKey::Lease(p)) if self.held.contains_key(&p) && value != self.id.as_bytes() => {
                    tracing::warn!(partition = p, "lease taken by another ticker; stopping its fires");
                    self.held.remove(&p);
                    self.releasing.remove(&p);
                    self.marks.remove(&p);
                    self.send(LeaseEvent::Lost(p));
                    true
                }
                Some(LeaseKey::Member(id)) => self.members.insert(id.to_string()),
                _ => false,
            },
            KvChange::Delete { key } => match ticker::parse_lease_key(&key) {
                Some(LeaseKey::Lease(p)) => {
                    if self.held.contains_key(&p) && !self.releasing.contains(&p) {
                        // Expired under us (we could not refresh in time).
                        tracing::warn!(partition = p, "lease expired; stopping its fires");
                        self.held.remove(&p);
                        self.marks.remove(&p);
                        self.send(LeaseEvent::Lost(p));
                    }
                    true
                }
                Some(LeaseKey::Member(id)) => self.members.remove(id),
                None => false,
            },
            KvChange::Ready => true,
        }
    }

    /// Writes pending counts, then watermarks (of `only`, or of every partition).
    async fn flush(&mut self, only: Option<u16>) {
        let mut blocked = HashSet::new();
        for ((p, schedule), synced) in self.counts.iter_mut() {
            if only.is_some_and(|o| o != *p) || synced.pending.is_none() {
                continue;
            }
            let key = ticker::fired_key(*p, schedule);
            if !state::write_count(&self.state, &key, synced, self.op_timeout).await {
                blocked.insert(*p);
            }
        }
        let writes = self
            .marks
            .iter_mut()
            .filter(|(p, m)| only.is_none_or(|o| o == **p) && m.pending.is_some() && !blocked.contains(*p));
        let (state, id, timeout) = (&self.state, self.id.as_str(), self.op_timeout);
        let writes = writes.map(|(&p, mark)| state::write_watermark(state, p, id, mark, timeout));
        futures::future::join_all(writes).await;
    }

    /// On shutdown: writes what is pending and gives every lease back, so
    /// the other tickers take over at once instead of after the TTL.
    async fn give_back(&mut self) {
        self.flush(None).await;
        let held: Vec<u16> = self.held.keys().copied().collect();
        let count = held.len();
        for p in held {
            self.drop_lease(p, true).await;
        }
        if self.ready {
            let member = self.leases.delete(ticker::member_key(&self.id));
            let _ = tokio::time::timeout(self.op_timeout, member).await;
        }
        tracing::info!(partitions = self.handed_back + count, "leases given back");
    }

    fn send(&self, event: LeaseEvent) {
        // The plan stops first on shutdown; nothing left to tell then.
        let _ = self.events.send(event);
    }
}

async fn with_timeout<T, E: std::fmt::Display>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

/// Which partitions to take and which to hand back.
#[derive(Debug, Default, PartialEq)]
pub struct Rebalance {
    /// Free partitions to try, best first.
    pub acquire: Vec<u16>,
    /// Held partitions to hand back.
    pub release: Vec<u16>,
}

/// Rendezvous score of `(ticker, partition)`: each ticker prefers a stable,
/// different set of partitions, so membership changes move few of them.
fn score(ticker: &str, p: u16) -> u64 {
    fnv1a(format!("{ticker}/{p}").as_bytes())
}

/// Moves this ticker towards holding `share` partitions: hand back the
/// lowest-scored extras, or try the best-scored free ones.
pub fn rebalance(ticker: &str, mine: &[u16], taken: &BTreeSet<u16>, share: usize) -> Rebalance {
    let by_score = |list: &mut Vec<u16>| list.sort_by_key(|&p| std::cmp::Reverse(score(ticker, p)));
    if mine.len() > share {
        let mut release = mine.to_vec();
        by_score(&mut release);
        return Rebalance { acquire: Vec::new(), release: release.split_off(share) };
    }
    let mut free: Vec<u16> = (0..PARTITIONS).filter(|p| !taken.contains(p) && !mine.contains(p)).collect();
    by_score(&mut free);
    free.truncate(share - mine.len());
    Rebalance { acquire: free, release: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_ticker_takes_every_partition() {
        let plan = rebalance("a", &[], &BTreeSet::new(), 64);
        assert_eq!(plan.acquire.len(), 64);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn a_ticker_above_its_share_hands_back_its_least_preferred() {
        let all: Vec<u16> = (0..PARTITIONS).collect();
        let plan = rebalance("a", &all, &all.iter().copied().collect(), 32);
        assert_eq!(plan.release.len(), 32);
        let lowest_kept = all.iter().filter(|p| !plan.release.contains(p)).map(|&p| score("a", p)).min().unwrap();
        assert!(plan.release.iter().all(|&p| score("a", p) <= lowest_kept));
    }

    #[test]
    fn a_ticker_below_its_share_tries_only_free_partitions() {
        let taken: BTreeSet<u16> = (0..40).collect();
        let plan = rebalance("b", &[], &taken, 32);
        assert_eq!(plan.acquire.len(), 24);
        assert!(plan.acquire.iter().all(|p| *p >= 40));
    }

    #[test]
    fn two_tickers_prefer_different_partitions() {
        let a = rebalance("ticker-a", &[], &BTreeSet::new(), 32).acquire;
        let b = rebalance("ticker-b", &[], &BTreeSet::new(), 32).acquire;
        let overlap = a.iter().filter(|p| b.contains(p)).count();
        assert!(overlap < 24, "rendezvous preferences should differ: {overlap} of 32 shared");
    }
}

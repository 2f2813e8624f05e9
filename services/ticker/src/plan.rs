//! The ticker's plan: every loaded schedule, a timer heap holding the next
//! fire of each schedule in a partition this ticker owns, and per partition
//! the fires published but not yet acknowledged, from which its watermark
//! follows.
//!
//! - A schedule's slot in the heap is released at `min(nominal, fire_at -
//!   lookahead)`, where `fire_at = nominal + jitter`: a fire is staged up to
//!   the lookahead early (carrying `not_before = fire_at`) and never later
//!   than its nominal time, so every fire not yet released has a nominal time
//!   after the last pop. The watermark of a partition is therefore the last
//!   pop time, held back below any fire still in flight.
//! - Replacing or removing a schedule withdraws the fires it staged that have
//!   not started (`plan_withdraw.rs`); an edit fires its new definition from
//!   the first of them.
//! - Replacing or removing a schedule, or losing its partition, bumps its
//!   generation; slots of older generations are dropped when they surface, so
//!   no operation scans all schedules and a fire costs O(log n).
//!
//! Pure logic: time is passed in, output is a list of messages to publish.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;

use jetsched_calendar::jitter_offset;
use jetsched_contract::ticker::{FiredCount, PARTITIONS, partition_of};
use jetsched_contract::{DueFire, RunEvent, RunStatus};
use jiff::{SignedDuration, Timestamp};

use crate::catchup::replay;
use crate::spec::{Draft, Shared, Spec};

/// What a published message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A fire, to `<prefix>.due.<task>`.
    Due(Box<DueFire>),
    /// A `missed` report.
    Missed(Box<RunEvent>),
    /// A staged fire to withdraw (its schedule was deleted, paused or
    /// edited before it started), maybe with the fire replacing it.
    Withdraw(Box<Withdrawal>),
}

/// A message the ticker must get stored, and what it stands for.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Schedule id.
    pub schedule: Arc<str>,
    /// Task name (subject token).
    pub task: Arc<str>,
    /// The schedule's partition.
    pub partition: u16,
    /// The partition's ownership epoch when it was made: stale once the
    /// partition is lost.
    pub epoch: u32,
    /// The partition's watermark stays below this until the message is stored.
    pub hold: Timestamp,
    /// When it is meant to start (nominal time plus jitter).
    pub fire_at: Timestamp,
    /// The body.
    pub body: Body,
    /// For `max_runs` schedules: the fire count once this fire is stored.
    pub count: Option<FiredCount>,
}

/// Settings of the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanConfig {
    /// How early a fire may be published (0: at its time).
    pub lookahead: Duration,
    /// Lateness up to which an occurrence found late still fires as usual.
    pub misfire_threshold: Duration,
}

struct Sched {
    id: Box<str>,
    spec: Spec,
    /// KV revision of the definition.
    revision: u64,
    /// When the definition was written (server time), in nanoseconds.
    written_at: i64,
    /// While its partition is owned: every occurrence up to here is handled
    /// (nanoseconds; [`NONE`] otherwise).
    cursor: i64,
    /// Position in its partition's member list.
    pos: u32,
    partition: u16,
    /// The schedules watch's replay that last mentioned it.
    replay: u16,
}

/// No cursor.
const NONE: i64 = i64::MIN;

#[derive(Default)]
struct Cell {
    generation: u32,
    sched: Option<Sched>,
}

/// A heap entry; times in nanoseconds since the epoch to keep it small.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    release: i64,
    nominal: i64,
    idx: u32,
    generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ownership {
    Free,
    Owned {
        valid_until: Timestamp,
    },
    /// Handing over: no new fires, waiting for those in flight.
    Releasing {
        upto: Timestamp,
    },
}

struct Part {
    state: Ownership,
    epoch: u32,
    members: Vec<u32>,
    /// Holds of messages in flight, with their multiplicity.
    inflight: BTreeMap<Timestamp, u32>,
    /// Something was stored since the last progress report.
    dirty: bool,
}

/// Every loaded schedule and the next fire of those in owned partitions.
pub struct Plan {
    config: PlanConfig,
    cells: Vec<Cell>,
    free: Vec<u32>,
    /// Cell index by schedule id (hashed with `hasher`, compared in `cells`),
    /// so ids are stored once.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Fires so far of the `max_runs` schedules.
    fired: HashMap<u32, u64>,
    heap: BinaryHeap<Reverse<Slot>>,
    parts: Vec<Part>,
    shared: Shared,
    /// Every slot released at or before this has been popped.
    processed: Timestamp,
    /// Staged fires that replace withdrawn ones: nominal times (ns) and the
    /// revision in their run ids, by cell. Entries are dropped once due.
    refired: HashMap<u32, Vec<(i64, u64)>>,
}

fn nanos(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(if t > Timestamp::UNIX_EPOCH { i64::MAX } else { i64::MIN })
}

fn from_nanos(n: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(n)).unwrap_or(Timestamp::MAX)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

const NANO: SignedDuration = SignedDuration::from_nanos(1);

impl Plan {
    /// An empty plan owning no partition.
    pub fn new(config: PlanConfig) -> Self {
        let parts = (0..PARTITIONS)
            .map(|_| Part {
                state: Ownership::Free,
                epoch: 0,
                members: Vec::new(),
                inflight: BTreeMap::new(),
                dirty: false,
            })
            .collect();
        Plan {
            config,
            cells: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            fired: HashMap::new(),
            heap: BinaryHeap::new(),
            parts,
            shared: Shared::default(),
            processed: Timestamp::MIN,
            refired: HashMap::new(),
        }
    }

    /// Number of loaded schedules.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no schedule is loaded.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Partitions owned (not counting those being handed over).
    pub fn owned(&self) -> usize {
        self.parts.iter().filter(|p| matches!(p.state, Ownership::Owned { .. })).count()
    }

    /// The partitions owned now, bit `p` for partition `p` (expired leases
    /// excluded: call after [`Plan::expire`]).
    pub fn owned_mask(&self) -> u64 {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.state, Ownership::Owned { .. }))
            .fold(0, |mask, (i, _)| mask | (1u64 << (i % 64)))
    }

    /// Partitions being handed over (waiting for fires in flight).
    pub fn handing_over(&self) -> usize {
        self.parts.iter().filter(|p| matches!(p.state, Ownership::Releasing { .. })).count()
    }

    /// The ownership epoch of `partition`.
    pub fn epoch(&self, partition: u16) -> u32 {
        self.parts.get(usize::from(partition)).map_or(0, |p| p.epoch)
    }

    /// Parses a stored schedule, sharing calendars and task names with loaded ones.
    pub fn parse(&mut self, id: &str, bytes: &[u8]) -> Result<Spec, String> {
        Spec::parse(id, bytes, &mut self.shared)
    }

    /// Completes a definition parsed off the loop ([`Draft::decode`]).
    pub fn build(&mut self, id: &str, draft: Draft) -> Result<Spec, String> {
        Spec::build(id, draft, &mut self.shared)
    }

    fn find(&self, id: &str) -> Option<u32> {
        let cells = &self.cells;
        let hash = self.hasher.hash_one(id);
        self.index.find(hash, |&i| cells[i as usize].sched.as_ref().is_some_and(|s| &*s.id == id)).copied()
    }

    /// Notes that replay `replay` of the schedules watch mentioned `id` at
    /// `revision`; true when that is the revision already loaded (nothing to do).
    pub fn seen(&mut self, id: &str, revision: u64, replay: u16) -> bool {
        let Some(idx) = self.find(id) else { return false };
        match self.cells[idx as usize].sched.as_mut() {
            Some(s) if s.revision == revision => {
                s.replay = replay;
                true
            }
            _ => false,
        }
    }

    /// Loads or replaces `id` (KV `revision`, written at `written_at`, seen in
    /// replay `replay`). In an owned partition it fires from the later of what
    /// it already handled and `written_at`: occurrences from before the
    /// current definition are not caught up.
    pub fn upsert(&mut self, id: &str, spec: Spec, at: Written, now: Timestamp, out: &mut Vec<Outgoing>) {
        let written_at = nanos(at.time);
        let mut staged = withdraw::Staged::default();
        let idx = match self.find(id) {
            Some(idx) => {
                staged = self.staged(idx, now);
                let cell = &mut self.cells[idx as usize];
                cell.generation = cell.generation.wrapping_add(1);
                if let Some(s) = cell.sched.as_mut() {
                    s.spec = spec;
                    s.revision = at.revision;
                    s.written_at = written_at;
                    s.replay = at.replay;
                }
                idx
            }
            None => {
                let idx = self.free.pop().unwrap_or_else(|| {
                    self.cells.push(Cell::default());
                    (self.cells.len() - 1) as u32
                });
                let partition = partition_of(id);
                let part = &mut self.parts[usize::from(partition)];
                let pos = part.members.len() as u32;
                part.members.push(idx);
                let cell = &mut self.cells[idx as usize];
                cell.generation = cell.generation.wrapping_add(1);
                cell.sched = Some(Sched {
                    id: id.into(),
                    spec,
                    revision: at.revision,
                    written_at,
                    cursor: NONE,
                    pos,
                    partition,
                    replay: at.replay,
                });
                let (cells, hasher) = (&self.cells, &self.hasher);
                let hash = hasher.hash_one(id);
                self.index.insert_unique(hash, idx, |&i| {
                    hasher.hash_one(cells[i as usize].sched.as_ref().map_or("", |s| &s.id))
                });
                idx
            }
        };
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
        if s.spec.max_runs().is_none() {
            self.fired.remove(&idx);
        }
        if matches!(self.parts[usize::from(s.partition)].state, Ownership::Owned { .. }) {
            let reason =
                format!("withdrawn: schedule {id} was changed (revision {}) before this fire started", at.revision);
            self.refire(idx, staged, at.revision, &reason, now, out);
            let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
            let floor = from_nanos(s.cursor.max(written_at));
            self.catch_up(idx, floor, now, out);
        }
    }

    /// Forgets `id`, withdrawing the fires it staged (`why` it went: "deleted");
    /// returns its partition and whether it kept a fire count.
    pub fn remove(&mut self, id: &str, why: &str, now: Timestamp, out: &mut Vec<Outgoing>) -> Option<(u16, bool)> {
        let idx = self.find(id)?;
        let staged = self.staged(idx, now);
        let reason = format!("withdrawn: schedule {id} was {why} before this fire started");
        self.withdraw(idx, staged, &reason, out);
        self.refired.remove(&idx);
        let cells = &self.cells;
        let hash = self.hasher.hash_one(id);
        if let Ok(entry) =
            self.index.find_entry(hash, |&i| cells[i as usize].sched.as_ref().is_some_and(|s| &*s.id == id))
        {
            entry.remove();
        }
        let cell = &mut self.cells[idx as usize];
        cell.generation = cell.generation.wrapping_add(1);
        let sched = cell.sched.take()?;
        let members = &mut self.parts[usize::from(sched.partition)].members;
        members.swap_remove(sched.pos as usize);
        if let Some(&moved) = members.get(sched.pos as usize)
            && let Some(m) = self.cells[moved as usize].sched.as_mut()
        {
            m.pos = sched.pos;
        }
        self.fired.remove(&idx);
        self.free.push(idx);
        Some((sched.partition, sched.spec.max_runs().is_some()))
    }

    /// Forgets every schedule the watch's replay `replay` did not mention
    /// (deleted while the watch was down); returns them as [`Plan::remove`] does.
    pub fn sweep(&mut self, replay: u16, now: Timestamp, out: &mut Vec<Outgoing>) -> Vec<(String, u16, bool)> {
        let gone: Vec<String> = self
            .cells
            .iter()
            .filter_map(|c| c.sched.as_ref())
            .filter(|s| s.replay != replay)
            .map(|s| s.id.to_string())
            .collect();
        gone.into_iter()
            .filter_map(|id| self.remove(&id, "deleted", now, out).map(|(p, counted)| (id, p, counted)))
            .collect()
    }

    /// Takes `partition` over: replays each of its schedules from the
    /// watermark (or from when it was written, or its last counted fire, if
    /// later) under its misfire policy, and plans the next fires.
    pub fn acquire(
        &mut self,
        partition: u16,
        valid_until: Timestamp,
        watermark: Option<Timestamp>,
        counts: &HashMap<String, FiredCount>,
        now: Timestamp,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(part) = self.parts.get_mut(usize::from(partition)) else { return };
        part.state = Ownership::Owned { valid_until };
        part.epoch = part.epoch.wrapping_add(1);
        part.inflight.clear();
        part.dirty = true;
        for idx in part.members.clone() {
            let Some(s) = self.cells[idx as usize].sched.as_ref() else { continue };
            let count = counts.get(&*s.id);
            if s.spec.max_runs().is_some() {
                self.fired.insert(idx, count.map_or(0, |c| c.fired));
            }
            let floor =
                [watermark, count.map(|c| c.last)].into_iter().flatten().fold(from_nanos(s.written_at), Timestamp::max);
            self.catch_up(idx, floor, now, out);
        }
    }

    /// Stops firing `partition` at once (its lease is gone).
    pub fn lose(&mut self, partition: u16) {
        self.invalidate(partition);
        if let Some(part) = self.parts.get_mut(usize::from(partition)) {
            part.state = Ownership::Free;
            part.epoch = part.epoch.wrapping_add(1);
            part.inflight.clear();
        }
    }

    /// Stops firing `partition` to hand it over. Returns its final watermark
    /// once nothing is in flight (at once, or later from [`Plan::acked`]).
    pub fn release(&mut self, partition: u16) -> Option<Timestamp> {
        let upto = self.processed;
        self.invalidate(partition);
        let part = self.parts.get_mut(usize::from(partition))?;
        if !matches!(part.state, Ownership::Owned { .. }) {
            return None;
        }
        part.state = Ownership::Releasing { upto };
        self.finish_release(partition)
    }

    fn finish_release(&mut self, partition: u16) -> Option<Timestamp> {
        let watermark = self.watermark(partition)?;
        let part = self.parts.get_mut(usize::from(partition))?;
        if !matches!(part.state, Ownership::Releasing { .. }) || !part.inflight.is_empty() {
            return None;
        }
        part.state = Ownership::Free;
        part.epoch = part.epoch.wrapping_add(1);
        Some(watermark)
    }

    fn invalidate(&mut self, partition: u16) {
        let Some(part) = self.parts.get(usize::from(partition)) else { return };
        for &idx in &part.members {
            let cell = &mut self.cells[idx as usize];
            cell.generation = cell.generation.wrapping_add(1);
            if let Some(s) = cell.sched.as_mut() {
                s.cursor = NONE;
            }
        }
    }

    /// Extends the leases of `partitions` to `valid_until`.
    pub fn renew(&mut self, partitions: &[u16], valid_until: Timestamp) {
        for &p in partitions {
            if let Some(Part { state: Ownership::Owned { valid_until: v }, .. }) = self.parts.get_mut(usize::from(p)) {
                *v = valid_until;
            }
        }
    }

    /// Drops owned partitions whose lease ran out unrenewed; returns them.
    pub fn expire(&mut self, now: Timestamp) -> Vec<u16> {
        let expired: Vec<u16> = (0..PARTITIONS)
            .filter(
                |&p| matches!(self.parts[usize::from(p)].state, Ownership::Owned { valid_until } if valid_until <= now),
            )
            .collect();
        for &p in &expired {
            self.lose(p);
        }
        expired
    }

    /// A message made at `epoch` for `partition` was stored. Returns the
    /// partition and its final watermark when that completes a handover.
    pub fn acked(&mut self, partition: u16, epoch: u32, hold: Timestamp) -> Option<(u16, Timestamp)> {
        let part = self.parts.get_mut(usize::from(partition))?;
        if part.epoch != epoch {
            return None;
        }
        if let Some(n) = part.inflight.get_mut(&hold) {
            *n -= 1;
            if *n == 0 {
                part.inflight.remove(&hold);
            }
        }
        part.dirty = true;
        self.finish_release(partition).map(|w| (partition, w))
    }

    /// The partition's watermark: every fire with a nominal time at or before
    /// it has been stored (or reported missed).
    pub fn watermark(&self, partition: u16) -> Option<Timestamp> {
        let part = self.parts.get(usize::from(partition))?;
        let upto = match part.state {
            Ownership::Free => return None,
            Ownership::Owned { .. } => self.processed,
            Ownership::Releasing { upto } => upto,
        };
        let held = part.inflight.keys().next().and_then(|h| h.checked_sub(NANO).ok());
        Some(held.map_or(upto, |h| h.min(upto)))
    }

    /// Watermarks of owned partitions, each with whether anything was stored
    /// in it since the last call.
    pub fn progress(&mut self) -> Vec<(u16, Timestamp, bool)> {
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            if !matches!(self.parts[usize::from(p)].state, Ownership::Owned { .. }) {
                continue;
            }
            if let Some(w) = self.watermark(p) {
                let part = &mut self.parts[usize::from(p)];
                out.push((p, w, std::mem::take(&mut part.dirty)));
            }
        }
        out
    }

    /// When the next slot is released, dropping stale slots on the way.
    pub fn next_release(&mut self) -> Option<Timestamp> {
        while let Some(Reverse(slot)) = self.heap.peek() {
            if self.is_live(slot) {
                return Some(from_nanos(slot.release));
            }
            self.heap.pop();
        }
        None
    }

    fn is_live(&self, slot: &Slot) -> bool {
        self.cells.get(slot.idx as usize).is_some_and(|c| c.generation == slot.generation && c.sched.is_some())
    }

    /// Releases every slot due at `now`; returns partitions found expired.
    pub fn pop_due(&mut self, now: Timestamp, out: &mut Vec<Outgoing>) -> Vec<u16> {
        self.processed = self.processed.max(now);
        let mut expired = Vec::new();
        let limit = nanos(now);
        while let Some(Reverse(slot)) = self.heap.peek() {
            if slot.release > limit {
                break;
            }
            let Some(Reverse(slot)) = self.heap.pop() else { break };
            if !self.is_live(&slot) {
                continue;
            }
            let Some(partition) = self.cells[slot.idx as usize].sched.as_ref().map(|s| s.partition) else { continue };
            match self.parts[usize::from(partition)].state {
                Ownership::Owned { valid_until } if valid_until > now => {}
                Ownership::Owned { .. } => {
                    self.lose(partition);
                    expired.push(partition);
                    continue;
                }
                _ => continue,
            }
            let nominal = from_nanos(slot.nominal);
            self.emit_fire(slot.idx, nominal, now, out);
            if let Some(s) = self.cells[slot.idx as usize].sched.as_mut() {
                s.cursor = slot.nominal;
            }
            self.plan_next(slot.idx, nominal);
        }
        expired
    }

    fn fired(&self, idx: u32) -> u64 {
        self.fired.get(&idx).copied().unwrap_or(0)
    }

    /// Replays `(floor, now]` for one schedule, then plans its next fire.
    fn catch_up(&mut self, idx: u32, floor: Timestamp, now: Timestamp, out: &mut Vec<Outgoing>) {
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
        let budget = s.spec.max_runs().map_or(u64::MAX, |max| max.saturating_sub(self.fired(idx)));
        let r = if s.spec.paused {
            Default::default()
        } else {
            replay(&s.spec.calendar, s.spec.misfire(), self.config.misfire_threshold, floor, now, budget)
        };
        for nominal in r.fire {
            self.emit_fire(idx, nominal, now, out);
        }
        if let (Some(last), Some(s)) = (r.last_missed, self.cells[idx as usize].sched.as_ref()) {
            let event = RunEvent {
                schedule: Some(s.id.to_string()),
                scheduled_for: Some(last),
                count: Some(r.missed),
                at: now,
                ..RunEvent::new(RunStatus::Missed, &*s.spec.task, None)
            };
            let hold = floor.checked_add(NANO).unwrap_or(floor);
            self.emit(idx, hold, last, Body::Missed(Box::new(event)), None, out);
        }
        let cursor = floor.max(now);
        if let Some(s) = self.cells[idx as usize].sched.as_mut() {
            s.cursor = nanos(cursor);
        }
        self.plan_next(idx, cursor);
    }

    fn emit_fire(&mut self, idx: u32, nominal: Timestamp, now: Timestamp, out: &mut Vec<Outgoing>) {
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
        let jitter = signed(jitter_offset(&s.id, nominal, s.spec.jitter()));
        let fire_at = nominal.checked_add(jitter).unwrap_or(nominal);
        let due = s.spec.due_fire(&s.id, nominal, (fire_at > now).then_some(fire_at));
        let count = match s.spec.max_runs() {
            Some(_) => {
                let fired = self.fired.entry(idx).or_default();
                *fired += 1;
                Some(FiredCount { fired: *fired, last: nominal })
            }
            None => None,
        };
        self.emit(idx, nominal, fire_at, Body::Due(Box::new(due)), count, out);
    }

    fn emit(
        &mut self,
        idx: u32,
        hold: Timestamp,
        fire_at: Timestamp,
        body: Body,
        count: Option<FiredCount>,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
        let part = &mut self.parts[usize::from(s.partition)];
        *part.inflight.entry(hold).or_default() += 1;
        out.push(Outgoing {
            schedule: s.id.as_ref().into(),
            task: s.spec.task.clone(),
            partition: s.partition,
            epoch: part.epoch,
            hold,
            fire_at,
            body,
            count,
        });
    }

    /// Plans the first fire after `after`, unless paused, used up or ended.
    fn plan_next(&mut self, idx: u32, after: Timestamp) {
        let cell = &self.cells[idx as usize];
        let Some(s) = cell.sched.as_ref() else { return };
        if s.spec.paused || s.spec.max_runs().is_some_and(|max| self.fired(idx) >= max) {
            return;
        }
        let Some(nominal) = s.spec.calendar.next_after(after) else { return };
        let jitter = signed(jitter_offset(&s.id, nominal, s.spec.jitter()));
        let fire_at = nominal.checked_add(jitter).unwrap_or(nominal);
        let lookahead = if s.spec.may_stage() { signed(self.config.lookahead) } else { SignedDuration::ZERO };
        let staged = fire_at.checked_sub(lookahead).unwrap_or(Timestamp::MIN);
        let release = staged.min(nominal);
        self.heap.push(Reverse(Slot {
            release: nanos(release),
            nominal: nanos(nominal),
            idx,
            generation: cell.generation,
        }));
    }
}

/// Where a schedule definition came from: its KV revision, when it was
/// written, and the watch replay that delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// KV revision.
    pub revision: u64,
    /// Server time of the write.
    pub time: Timestamp,
    /// The schedules watch's replay number (truncated).
    pub replay: u16,
}

#[path = "plan_withdraw.rs"]
mod withdraw;
pub use withdraw::Withdrawal;

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

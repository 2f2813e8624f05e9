//! Withdrawing staged fires. A fire is published up to the lookahead before
//! its time; when its schedule is deleted, paused or edited before then, the
//! plan asks for every such fire that has not started to be withdrawn
//! ([`Body::Withdraw`], carried out by `crate::withdraw`). An edit fires its
//! new definition from the first of them: an occurrence of the new
//! definition at the nominal time of a withdrawn fire goes out once the old
//! one is known not to have started, under a run id carrying the new
//! revision (the old run id is taken by the withdrawn run); one at another
//! time goes out as a regular fire.
//!
//! Staged fires are found from the schedule's cursor (its last fire handed
//! out) and its calendar: no list of fires is kept per schedule, only the
//! few replacements in flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use jetsched_calendar::jitter_offset;
use jetsched_contract::{DueFire, run};
use jiff::Timestamp;

use super::{Body, NANO, NONE, Outgoing, Ownership, Plan, from_nanos, nanos, signed};

/// At most this many staged fires of one schedule are looked for (a
/// lookahead of a few seconds holds a handful).
const MAX_STAGED: usize = 10_000;

/// A staged fire to withdraw, and what replaces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Withdrawal {
    /// The withdrawn run.
    pub run_id: String,
    /// Its task (for its `cancelled` event).
    pub task: Arc<str>,
    /// Its nominal time.
    pub scheduled_for: Timestamp,
    /// Why, as its `cancelled` event says.
    pub reason: String,
    /// The new definition's fire at the same nominal time, published only
    /// once the withdrawn run is known not to have started.
    pub then: Option<Box<DueFire>>,
}

/// The fires a schedule handed out that are not yet due.
#[derive(Default)]
pub(super) struct Staged {
    /// The task they run.
    task: Option<Arc<str>>,
    /// Nominal time and run id of each.
    fires: Vec<(Timestamp, String)>,
}

impl Plan {
    /// The fires of cell `idx` handed out and not yet due at `now` (by its
    /// current definition).
    pub(super) fn staged(&mut self, idx: u32, now: Timestamp) -> Staged {
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return Staged::default() };
        if s.cursor == NONE || !matches!(self.parts[usize::from(s.partition)].state, Ownership::Owned { .. }) {
            return Staged::default();
        }
        let refired = self.refired.get(&idx).map(Vec::as_slice).unwrap_or_default();
        let cursor = from_nanos(s.cursor);
        let mut after = now.checked_sub(signed(s.spec.jitter())).unwrap_or(now).checked_sub(NANO).unwrap_or(now);
        let mut out = Vec::new();
        while out.len() < MAX_STAGED {
            let Some(nominal) = s.spec.calendar.next_after(after).filter(|n| *n <= cursor) else { break };
            after = nominal;
            let fire_at =
                nominal.checked_add(signed(jitter_offset(&s.id, nominal, s.spec.jitter()))).unwrap_or(nominal);
            if fire_at <= now {
                continue;
            }
            let run_id = match refired.iter().find(|(n, _)| *n == nanos(nominal)) {
                Some((_, rev)) => run::refired_run_id(&s.id, nominal, *rev),
                None => run::scheduled_run_id(&s.id, nominal),
            };
            out.push((nominal, run_id));
        }
        Staged { task: Some(s.spec.task.clone()), fires: out }
    }

    /// Withdraws `staged` fires of cell `idx` with nothing in their place.
    pub(super) fn withdraw(&mut self, idx: u32, staged: Staged, reason: &str, out: &mut Vec<Outgoing>) {
        let Some(task) = staged.task else { return };
        for (nominal, run_id) in staged.fires {
            let w = Withdrawal {
                run_id,
                task: task.clone(),
                scheduled_for: nominal,
                reason: reason.to_string(),
                then: None,
            };
            self.emit(idx, nominal, nominal, Body::Withdraw(Box::new(w)), None, out);
        }
    }

    /// After cell `idx` got a new definition (KV `revision`): withdraws the
    /// old definition's `staged` fires and hands out the new one's up to the
    /// cursor, so that the edit takes effect from the first withdrawn fire.
    pub(super) fn refire(
        &mut self,
        idx: u32,
        staged: Staged,
        revision: u64,
        reason: &str,
        now: Timestamp,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
        if s.cursor == NONE {
            return;
        }
        let old_task = staged.task.clone();
        let mut left: BTreeMap<Timestamp, String> = staged.fires.into_iter().collect();
        let cursor = from_nanos(s.cursor);
        // The new definition's fires up to the cursor, not yet due.
        let mut fresh = Vec::new();
        let used_up = s.spec.max_runs().is_some_and(|max| self.fired(idx) >= max);
        if !s.spec.paused && !used_up {
            let mut after = now.checked_sub(signed(s.spec.jitter())).unwrap_or(now).checked_sub(NANO).unwrap_or(now);
            while fresh.len() < MAX_STAGED {
                let Some(nominal) = s.spec.calendar.next_after(after).filter(|n| *n <= cursor) else { break };
                after = nominal;
                let fire_at =
                    nominal.checked_add(signed(jitter_offset(&s.id, nominal, s.spec.jitter()))).unwrap_or(nominal);
                if fire_at > now {
                    fresh.push((nominal, fire_at));
                }
            }
        }
        let mut refired = Vec::new();
        for (nominal, fire_at) in fresh {
            let Some(old) = left.remove(&nominal) else {
                self.emit_fire(idx, nominal, now, out);
                continue;
            };
            let Some(s) = self.cells[idx as usize].sched.as_ref() else { return };
            let due = DueFire { revision: Some(revision), ..s.spec.due_fire(&s.id, nominal, Some(fire_at)) };
            let w = Withdrawal {
                run_id: old,
                task: old_task.clone().unwrap_or_else(|| s.spec.task.clone()),
                scheduled_for: nominal,
                reason: reason.to_string(),
                then: Some(Box::new(due)),
            };
            self.emit(idx, nominal, fire_at, Body::Withdraw(Box::new(w)), None, out);
            refired.push((nanos(nominal), revision));
        }
        self.withdraw(idx, Staged { task: old_task, fires: left.into_iter().collect() }, reason, out);
        // Replacements already due need no entry: they are never withdrawn.
        let due = nanos(now);
        let entry = self.refired.entry(idx).or_default();
        entry.retain(|(n, _)| *n > due && !refired.iter().any(|(m, _)| m == n));
        entry.extend(refired);
        if entry.is_empty() {
            self.refired.remove(&idx);
        }
    }
}

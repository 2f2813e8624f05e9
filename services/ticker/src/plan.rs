//! The ticker's timer heap: every loaded schedule's next fire, in order.
//! Updating or removing a schedule bumps its generation; heap slots of older
//! generations are dropped lazily when they surface, so no operation scans
//! all schedules and a fire costs O(log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use jetsched_calendar::{Calendar, jitter_offset};
use jetsched_contract::ScheduleDef;
use jiff::{SignedDuration, Timestamp};

/// One fire that is due.
#[derive(Debug, Clone)]
pub struct Fire {
    /// Schedule id.
    pub schedule: String,
    /// Nominal time (names the run).
    pub nominal: Timestamp,
    /// Nominal time plus jitter (when it is released).
    pub fire_at: Timestamp,
    /// The schedule as it was when this fire was planned.
    pub def: Arc<ScheduleDef>,
}

struct Entry {
    def: Arc<ScheduleDef>,
    calendar: Calendar,
    generation: u64,
    fired: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    fire_at: Timestamp,
    nominal: Timestamp,
    id: String,
    generation: u64,
}

/// Loaded schedules and their next fires.
#[derive(Default)]
pub struct Plan {
    entries: HashMap<String, Entry>,
    heap: BinaryHeap<Reverse<Slot>>,
    generations: u64,
}

impl Plan {
    /// Number of loaded schedules.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no schedule is loaded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Loads or replaces `id`; its next fire is the first occurrence after `after`.
    pub fn upsert(&mut self, id: &str, def: ScheduleDef, calendar: Calendar, after: Timestamp) {
        self.generations += 1;
        let generation = self.generations;
        let entry = Entry { def: Arc::new(def), calendar, generation, fired: 0 };
        self.schedule_after(id, &entry, after);
        self.entries.insert(id.to_string(), entry);
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    fn schedule_after(&mut self, id: &str, entry: &Entry, after: Timestamp) {
        if entry.def.paused || entry.def.max_runs.is_some_and(|max| entry.fired >= max) {
            return;
        }
        if let Some(nominal) = entry.calendar.next_after(after) {
            let jitter = jitter_offset(id, nominal, entry.def.jitter.0);
            let fire_at = nominal.checked_add(SignedDuration::try_from(jitter).unwrap_or_default()).unwrap_or(nominal);
            self.heap.push(Reverse(Slot { fire_at, nominal, id: id.to_string(), generation: entry.generation }));
        }
    }

    fn is_live(&self, slot: &Slot) -> bool {
        self.entries.get(&slot.id).is_some_and(|e| e.generation == slot.generation)
    }

    /// When the earliest pending fire is due.
    pub fn next_fire_at(&mut self) -> Option<Timestamp> {
        while let Some(Reverse(slot)) = self.heap.peek() {
            if self.is_live(slot) {
                return Some(slot.fire_at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns every fire due at `now`, planning each schedule's next one.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<Fire> {
        let mut due = Vec::new();
        while let Some(Reverse(slot)) = self.heap.peek() {
            if slot.fire_at > now {
                break;
            }
            let Some(Reverse(slot)) = self.heap.pop() else { break };
            let Some(mut entry) = self.entries.remove(&slot.id) else { continue };
            if entry.generation == slot.generation {
                entry.fired += 1;
                due.push(Fire {
                    schedule: slot.id.clone(),
                    nominal: slot.nominal,
                    fire_at: slot.fire_at,
                    def: entry.def.clone(),
                });
                self.schedule_after(&slot.id, &entry, slot.nominal);
            }
            self.entries.insert(slot.id, entry);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> (ScheduleDef, Calendar) {
        let d = ScheduleDef::from_json("s", json.as_bytes()).unwrap();
        let c = d.calendar().unwrap();
        (d, c)
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fires_in_order_and_replans() {
        let mut plan = Plan::default();
        let (d, c) = def(r#"{"every": "10s", "task": "t"}"#);
        plan.upsert("a", d, c, ts("2026-01-01T00:00:00Z"));
        let (d, c) = def(r#"{"every": "15s", "task": "t"}"#);
        plan.upsert("b", d, c, ts("2026-01-01T00:00:00Z"));
        assert_eq!(plan.next_fire_at(), Some(ts("2026-01-01T00:00:10Z")));
        let fired: Vec<(String, String)> =
            plan.pop_due(ts("2026-01-01T00:00:30Z")).into_iter().map(|f| (f.schedule, f.nominal.to_string())).collect();
        assert_eq!(
            fired,
            vec![
                ("a".into(), "2026-01-01T00:00:10Z".into()),
                ("b".into(), "2026-01-01T00:00:15Z".into()),
                ("a".into(), "2026-01-01T00:00:20Z".into()),
                ("a".into(), "2026-01-01T00:00:30Z".into()),
                ("b".into(), "2026-01-01T00:00:30Z".into()),
            ]
        );
        assert_eq!(plan.next_fire_at(), Some(ts("2026-01-01T00:00:40Z")));
    }

    #[test]
    fn removed_and_replaced_schedules_drop_their_old_slots() {
        let mut plan = Plan::default();
        let (d, c) = def(r#"{"every": "10s", "task": "t"}"#);
        plan.upsert("a", d, c, ts("2026-01-01T00:00:00Z"));
        let (d, c) = def(r#"{"every": "1m", "task": "t"}"#);
        plan.upsert("a", d, c, ts("2026-01-01T00:00:00Z"));
        assert_eq!(plan.next_fire_at(), Some(ts("2026-01-01T00:01:00Z")));
        plan.remove("a");
        assert_eq!(plan.next_fire_at(), None);
        assert!(plan.pop_due(ts("2026-01-02T00:00:00Z")).is_empty());
    }

    #[test]
    fn paused_and_exhausted_schedules_do_not_fire() {
        let mut plan = Plan::default();
        let (d, c) = def(r#"{"every": "10s", "task": "t", "paused": true}"#);
        plan.upsert("p", d, c, ts("2026-01-01T00:00:00Z"));
        let (d, c) = def(r#"{"every": "10s", "task": "t", "max_runs": 2}"#);
        plan.upsert("m", d, c, ts("2026-01-01T00:00:00Z"));
        let fired = plan.pop_due(ts("2026-01-01T00:10:00Z"));
        assert_eq!(fired.len(), 2);
        assert!(fired.iter().all(|f| f.schedule == "m"));
    }

    #[test]
    fn jitter_delays_release_but_not_the_nominal_time() {
        let mut plan = Plan::default();
        let (d, c) = def(r#"{"every": "1m", "task": "t", "jitter": "30s"}"#);
        plan.upsert("j", d, c, ts("2026-01-01T00:00:00Z"));
        let fire = plan.pop_due(ts("2026-01-01T00:02:00Z")).remove(0);
        assert_eq!(fire.nominal, ts("2026-01-01T00:01:00Z"));
        assert!(fire.fire_at >= fire.nominal && fire.fire_at < ts("2026-01-01T00:01:30Z"));
    }
}

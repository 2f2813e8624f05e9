//! The overview's numbers over the last hour, in 10-second slices: run
//! events per status and start lateness (from the events stream), backlog
//! per queue and band and the DLQ's size (sampled from the consumers and the
//! stream). Pure bookkeeping: the feed and the sampler write, pages read.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hdrhistogram::Histogram;
use jetsched_contract::{RunEvent, RunStatus};
use jiff::Timestamp;

/// Width of one slice, in seconds.
pub const SLICE_SECS: i64 = 10;
/// Slices kept: one hour.
pub const SLICES: usize = 360;
/// Lateness above this (ms) is counted at this value.
const MAX_LATENESS_MS: u64 = 3_600_000;
/// Latest events kept for the overview's table.
pub const RECENT: usize = 25;
/// Runs per schedule kept for the schedules grid.
pub const GRID_RUNS: usize = 24;
/// Most runs remembered as started live (forgotten all at once past it).
const MAX_RUNNING: usize = 100_000;

/// One slice of time.
struct Slice {
    /// Start, in seconds since the epoch (a multiple of [`SLICE_SECS`]).
    start: i64,
    /// Events per status (index in [`RunStatus::ALL`]).
    counts: [u64; RunStatus::ALL.len()],
    /// Start lateness (started at - scheduled for), in ms.
    lateness: Histogram<u64>,
}

impl Slice {
    fn new(start: i64) -> Option<Slice> {
        let lateness = Histogram::new_with_bounds(1, MAX_LATENESS_MS, 2).ok()?;
        Some(Slice { start, counts: [0; RunStatus::ALL.len()], lateness })
    }
}

/// A sampled gauge: (slice start, value).
type Series = VecDeque<(i64, u64)>;

/// A run's latest known state, for the schedules grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    /// Run id.
    pub run_id: String,
    /// Latest status seen.
    pub status: RunStatus,
    /// Nominal time.
    pub scheduled_for: Option<Timestamp>,
}

/// Everything the overview draws.
#[derive(Default)]
pub struct Stats {
    slices: VecDeque<Slice>,
    backlog: BTreeMap<(String, u8), Series>,
    dlq: Series,
    /// Latest runs per schedule, oldest first.
    grid: HashMap<String, VecDeque<GridCell>>,
    /// The latest events, oldest first.
    recent: VecDeque<RunEvent>,
    /// Runs whose start was announced live and which have not changed
    /// since (a short run's start is not stored: its record says `queued`).
    running: HashMap<String, u32>,
    /// Events counted in all.
    pub events: u64,
}

fn slice_of(t: Timestamp) -> i64 {
    t.as_second().div_euclid(SLICE_SECS) * SLICE_SECS
}

fn index(status: RunStatus) -> usize {
    RunStatus::ALL.iter().position(|s| *s == status).unwrap_or(0)
}

impl Stats {
    /// Statistics that know the hour before `start` (the console read the
    /// events stream from there): its slices exist, empty, so rates read 0
    /// there rather than nothing.
    pub fn starting(start: Timestamp) -> Stats {
        let mut stats = Stats::default();
        let end = slice_of(start);
        let mut t = end - SLICE_SECS * (SLICES as i64 - 1);
        while t <= end {
            stats.slices.extend(Slice::new(t));
            t += SLICE_SECS;
        }
        stats
    }

    /// `status` as the page should show it: `started` for a run whose
    /// record still says `queued` but whose start was announced.
    pub fn current(&self, run_id: &str, status: RunStatus) -> RunStatus {
        match status {
            RunStatus::Queued if self.running.contains_key(run_id) => RunStatus::Started,
            other => other,
        }
    }

    /// Counts one event.
    pub fn record(&mut self, e: &RunEvent) {
        self.events += 1;
        if let Some(run) = &e.run_id {
            if e.status == RunStatus::Started {
                if self.running.len() >= MAX_RUNNING {
                    self.running.clear();
                }
                self.running.insert(run.clone(), e.attempt);
            } else {
                self.running.remove(run);
            }
        }
        self.recent.push_back(e.clone());
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if let Some(slice) = self.slice_mut(slice_of(e.at)) {
            slice.counts[index(e.status)] += 1;
            if e.status == RunStatus::Started
                && e.attempt == 1
                && let Some(nominal) = e.scheduled_for
            {
                let late = e.at.duration_since(nominal).as_millis().clamp(1, MAX_LATENESS_MS as i128) as u64;
                slice.lateness.saturating_record(late);
            }
        }
        if let (Some(schedule), Some(run_id)) = (&e.schedule, &e.run_id)
            && e.workflow_run.is_none()
        {
            let cells = self.grid.entry(schedule.clone()).or_default();
            match cells.iter_mut().find(|c| &c.run_id == run_id) {
                Some(cell) => cell.status = e.status,
                None => {
                    cells.push_back(GridCell {
                        run_id: run_id.clone(),
                        status: e.status,
                        scheduled_for: e.scheduled_for,
                    });
                    if cells.len() > GRID_RUNS {
                        cells.pop_front();
                    }
                }
            }
        }
    }

    /// The slice starting at `start`, created (and old ones dropped) as time
    /// moves on; `None` for a slice older than the hour kept.
    fn slice_mut(&mut self, start: i64) -> Option<&mut Slice> {
        let newest = self.slices.back().map_or(i64::MIN, |s| s.start);
        if start > newest {
            let mut next = if newest == i64::MIN { start } else { newest + SLICE_SECS };
            // Fill the gap so that every slice of the hour exists.
            next = next.max(start - SLICE_SECS * (SLICES as i64 - 1));
            while next <= start {
                self.slices.push_back(Slice::new(next)?);
                next += SLICE_SECS;
            }
            while self.slices.len() > SLICES {
                self.slices.pop_front();
            }
        }
        let first = self.slices.front()?.start;
        if start < first {
            return None;
        }
        self.slices.get_mut(((start - first) / SLICE_SECS) as usize)
    }

    /// Records a sample of the backlog per queue and band and the DLQ's size at `now`.
    pub fn sample(&mut self, now: Timestamp, backlog: &[((String, u8), u64)], dlq: u64) {
        let at = slice_of(now);
        let keep = |series: &mut Series, value: u64| {
            match series.back_mut() {
                Some(last) if last.0 == at => last.1 = value,
                _ => series.push_back((at, value)),
            }
            while series.front().is_some_and(|(t, _)| *t <= at - SLICE_SECS * SLICES as i64) {
                series.pop_front();
            }
        };
        for (key, value) in backlog {
            keep(self.backlog.entry(key.clone()).or_default(), *value);
        }
        // A queue and band that is gone reads 0 from now on.
        for (key, series) in self.backlog.iter_mut() {
            if !backlog.iter().any(|(k, _)| k == key) {
                keep(series, 0);
            }
        }
        keep(&mut self.dlq, dlq);
    }

    /// Runs per second of `status` in each slice: (slice start, rate).
    pub fn rate(&self, status: RunStatus) -> Vec<(i64, f64)> {
        let i = index(status);
        self.slices.iter().map(|s| (s.start, s.counts[i] as f64 / SLICE_SECS as f64)).collect()
    }

    /// Events of `status` in the hour kept.
    pub fn total(&self, status: RunStatus) -> u64 {
        let i = index(status);
        self.slices.iter().map(|s| s.counts[i]).sum()
    }

    /// Lateness quantile `q` (0-1) in ms per slice that has samples.
    pub fn lateness(&self, q: f64) -> Vec<(i64, f64)> {
        self.slices
            .iter()
            .filter(|s| !s.lateness.is_empty())
            .map(|s| (s.start, s.lateness.value_at_quantile(q) as f64))
            .collect()
    }

    /// Lateness quantile `q` in ms over the whole hour, if any run started.
    pub fn lateness_overall(&self, q: f64) -> Option<u64> {
        let mut all = Histogram::<u64>::new_with_bounds(1, MAX_LATENESS_MS, 2).ok()?;
        for s in &self.slices {
            all.add(&s.lateness).ok()?;
        }
        (!all.is_empty()).then(|| all.value_at_quantile(q))
    }

    /// Backlog samples per queue and band.
    pub fn backlog(&self) -> impl Iterator<Item = (&(String, u8), &Series)> {
        self.backlog.iter()
    }

    /// DLQ size samples.
    pub fn dlq(&self) -> &Series {
        &self.dlq
    }

    /// The latest events, newest first.
    pub fn recent(&self) -> Vec<RunEvent> {
        self.recent.iter().rev().cloned().collect()
    }

    /// The latest runs of `schedule` seen, oldest first.
    pub fn grid(&self, schedule: &str) -> Vec<GridCell> {
        self.grid.get(schedule).map(|c| c.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: RunStatus, at: &str) -> RunEvent {
        RunEvent { at: at.parse().unwrap(), ..RunEvent::new(status, "t", Some("r".to_string())) }
    }

    #[test]
    fn counts_fall_into_ten_second_slices_and_gaps_read_zero() {
        let mut stats = Stats::default();
        stats.record(&event(RunStatus::Succeeded, "2026-01-01T00:00:01Z"));
        stats.record(&event(RunStatus::Succeeded, "2026-01-01T00:00:09Z"));
        stats.record(&event(RunStatus::Succeeded, "2026-01-01T00:00:31Z"));
        let rate = stats.rate(RunStatus::Succeeded);
        assert_eq!(rate.iter().map(|r| r.1).collect::<Vec<_>>(), vec![0.2, 0.0, 0.0, 0.1]);
        assert_eq!(stats.total(RunStatus::Succeeded), 3);
        assert_eq!(stats.total(RunStatus::Failed), 0);
    }

    #[test]
    fn a_console_that_read_an_hour_back_knows_the_hour_was_quiet() {
        let start: Timestamp = "2026-01-01T01:00:05Z".parse().unwrap();
        let mut stats = Stats::starting(start);
        stats.record(&event(RunStatus::Succeeded, "2026-01-01T01:00:06Z"));
        let rate = stats.rate(RunStatus::Succeeded);
        assert_eq!(rate.len(), SLICES);
        assert_eq!(rate.iter().filter(|r| r.1 > 0.0).count(), 1);
        assert_eq!(rate[0].0, "2026-01-01T00:00:10Z".parse::<Timestamp>().unwrap().as_second());
    }

    #[test]
    fn only_the_last_hour_is_kept() {
        let mut stats = Stats::default();
        stats.record(&event(RunStatus::Failed, "2026-01-01T00:00:00Z"));
        stats.record(&event(RunStatus::Failed, "2026-01-01T02:00:00Z"));
        // Late arrival for a slice already dropped: ignored.
        stats.record(&event(RunStatus::Failed, "2026-01-01T00:30:00Z"));
        assert_eq!(stats.total(RunStatus::Failed), 1);
        assert_eq!(stats.rate(RunStatus::Failed).len(), SLICES);
    }

    #[test]
    fn lateness_is_start_minus_nominal_of_first_attempts() {
        let mut stats = Stats::default();
        for ms in [10, 20, 30, 40, 1000] {
            let nominal: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let mut e = event(RunStatus::Started, "2026-01-01T00:00:00Z");
            e.attempt = 1;
            e.scheduled_for = Some(nominal);
            e.at = nominal.checked_add(jiff::SignedDuration::from_millis(ms)).unwrap();
            stats.record(&e);
        }
        let p50 = stats.lateness_overall(0.5).unwrap();
        let p99 = stats.lateness_overall(0.99).unwrap();
        assert!((29..=31).contains(&p50), "{p50}");
        assert!((990..=1010).contains(&p99), "{p99}");
        assert_eq!(stats.lateness(0.5).len(), 1);
    }

    #[test]
    fn grid_keeps_each_schedules_latest_runs_with_their_last_status() {
        let mut stats = Stats::default();
        for i in 0..30 {
            let mut e = event(RunStatus::Queued, "2026-01-01T00:00:00Z");
            e.schedule = Some("s".to_string());
            e.run_id = Some(format!("r{i}"));
            stats.record(&e);
        }
        let mut done = event(RunStatus::Succeeded, "2026-01-01T00:00:01Z");
        done.schedule = Some("s".to_string());
        done.run_id = Some("r29".to_string());
        stats.record(&done);
        let grid = stats.grid("s");
        assert_eq!(grid.len(), GRID_RUNS);
        assert_eq!(grid[0].run_id, "r6");
        assert_eq!(grid.last().unwrap().status, RunStatus::Succeeded);
    }

    #[test]
    fn backlog_samples_and_vanished_queues_read_zero() {
        let mut stats = Stats::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        stats.sample(t0, &[(("default".into(), 0), 5)], 2);
        stats.sample(t1, &[], 3);
        let series: Vec<_> = stats.backlog().map(|(_, s)| s.iter().map(|x| x.1).collect::<Vec<_>>()).collect();
        assert_eq!(series, vec![vec![5, 0]]);
        assert_eq!(stats.dlq().iter().map(|x| x.1).collect::<Vec<_>>(), vec![2, 3]);
    }
}

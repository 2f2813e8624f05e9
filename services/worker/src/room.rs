//! This worker's compute and storage: what it offers to tasks' `requires`
//! (`--cpu`, `--memory`, `--disk`; by default what the host, or the
//! container it runs in, gives it) and what the runs it holds take.
//!
//! A run placed by room ([`jetsched_contract::TaskDef::placed_by_room`])
//! reserves its cores, memory and disk here before it is claimed, and keeps
//! them until its attempt ends. The dispatcher that sent it saw this
//! worker's room a moment ago; if the room is gone by now the run does not
//! start: it goes back to this worker's queue and waits, using no attempt.
//! Every change is told to the heartbeat, which publishes it at once.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jetsched_contract::message::RELEASED_KEPT;
use jetsched_contract::{ByteAmount, Cores, Resources};
use tokio::sync::Notify;

/// What this worker offers and what its runs hold.
pub struct Room {
    capacity: Resources,
    state: Mutex<State>,
    changed: Notify,
    /// Slots held by the runs being handled.
    busy: AtomicUsize,
}

/// Slots counted as busy while it lives.
pub struct Busy<'a> {
    room: &'a Room,
    slots: usize,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.room.busy.fetch_sub(self.slots, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct State {
    held: Resources,
    holding: Vec<(String, Resources)>,
    released: VecDeque<String>,
}

/// What the runs hold, as the heartbeat tells it.
pub struct Holdings {
    /// The sum of their amounts.
    pub held: Resources,
    /// The runs holding (placed by room).
    pub holding: Vec<String>,
    /// The last runs that let go, oldest first.
    pub released: Vec<String>,
}

/// Amounts held for one run; given back when dropped.
pub struct Reservation {
    room: Arc<Room>,
    run_id: String,
    need: Resources,
}

impl Room {
    /// A room of `capacity`, nothing held.
    pub fn new(capacity: Resources) -> Arc<Room> {
        Arc::new(Room { capacity, state: Mutex::default(), changed: Notify::new(), busy: AtomicUsize::new(0) })
    }

    /// What this worker offers.
    pub fn capacity(&self) -> Resources {
        self.capacity
    }

    /// Counts `slots` busy until the guard is dropped. (The slot semaphore
    /// cannot tell: the fetch loop holds every free permit for a moment
    /// while it looks for work.)
    pub fn busy(&self, slots: usize) -> Busy<'_> {
        self.busy.fetch_add(slots, Ordering::Relaxed);
        Busy { room: self, slots }
    }

    /// Slots held by the runs being handled.
    pub fn busy_slots(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `need` for run `run_id` if it fits in what is free now;
    /// otherwise what is free.
    pub fn try_reserve(self: &Arc<Self>, run_id: &str, need: Resources) -> Result<Reservation, Resources> {
        let mut state = self.state();
        let free = self.capacity.minus(&state.held);
        if !free.covers(&need) {
            return Err(free);
        }
        state.held = state.held.plus(&need);
        state.holding.push((run_id.to_string(), need));
        drop(state);
        self.changed.notify_one();
        Ok(Reservation { room: self.clone(), run_id: run_id.to_string(), need })
    }

    /// What is held now, and by which runs.
    pub fn holdings(&self) -> Holdings {
        let state = self.state();
        Holdings {
            held: state.held,
            holding: state.holding.iter().map(|(id, _)| id.clone()).collect(),
            released: state.released.iter().cloned().collect(),
        }
    }

    /// Waits for the next change of the holdings.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.room.state();
        state.held = state.held.minus(&self.need);
        if let Some(i) = state.holding.iter().position(|(id, _)| *id == self.run_id) {
            state.holding.swap_remove(i);
        }
        if state.released.len() >= RELEASED_KEPT {
            state.released.pop_front();
        }
        state.released.push_back(std::mem::take(&mut self.run_id));
        drop(state);
        self.room.changed.notify_one();
    }
}

/// The capacity to offer: each amount as configured, else as detected.
pub fn capacity(cpu: Option<Cores>, memory: Option<ByteAmount>, disk: Option<ByteAmount>) -> Resources {
    let limits = CgroupLimits::read();
    Resources {
        cpu: cpu.unwrap_or_else(|| default_cpu(&limits)),
        memory: memory.unwrap_or_else(|| default_memory(&limits)),
        disk: disk.unwrap_or_else(|| default_disk(Path::new("."))),
    }
}

/// Cores this process may use: the container's quota (cgroup v2 `cpu.max`)
/// where one is set, within the cores it may be scheduled on.
fn default_cpu(limits: &CgroupLimits) -> Cores {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cores = limits.cpu.map_or(usable, |quota| quota.min(usable));
    Cores::from_f64(cores).unwrap_or(Cores::whole(1))
}

/// The container's memory limit (cgroup v2 `memory.max`) where one is set,
/// within the host's total memory.
fn default_memory(limits: &CgroupLimits) -> ByteAmount {
    let total = total_memory();
    ByteAmount(limits.memory.map_or(total, |m| m.min(total)))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn total_memory() -> u64 {
    let info = rustix::system::sysinfo();
    // `c_ulong`: 32 or 64 bits.
    let total = u128::from(info.totalram) * u128::from(info.mem_unit.max(1));
    u64::try_from(total).unwrap_or(u64::MAX)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn total_memory() -> u64 {
    tracing::warn!("cannot read this host's memory; offering none unless --memory is given");
    0
}

/// Free space of the work directory (what a non-root user may write), now.
fn default_disk(dir: &Path) -> ByteAmount {
    match rustix::fs::statvfs(dir) {
        Ok(s) => ByteAmount(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err, "cannot read free disk space; offering none unless --disk is given");
            ByteAmount(0)
        }
    }
}

/// The tightest limits of this process's cgroup (v2) and its ancestors.
#[derive(Debug, Default, PartialEq)]
struct CgroupLimits {
    /// Cores (`cpu.max` quota over period).
    cpu: Option<f64>,
    /// Bytes (`memory.max`).
    memory: Option<u64>,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl CgroupLimits {
    /// Reads them from `/proc/self/cgroup` and `/sys/fs/cgroup` (none where
    /// cgroup v2 is not mounted).
    fn read() -> CgroupLimits {
        let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return CgroupLimits::default() };
        let Some(path) = unified_path(&own) else { return CgroupLimits::default() };
        let mut limits = CgroupLimits::default();
        for dir in ancestors(Path::new(CGROUP_ROOT), path) {
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
            if let Some(cores) = read("cpu.max").as_deref().and_then(parse_cpu_max) {
                limits.cpu = Some(limits.cpu.map_or(cores, |c| c.min(cores)));
            }
            if let Some(bytes) = read("memory.max").as_deref().and_then(parse_memory_max) {
                limits.memory = Some(limits.memory.map_or(bytes, |m| m.min(bytes)));
            }
        }
        limits
    }
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::<path>` line).
fn unified_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim)
}

/// `root/<path>` and each of its parents up to `root`.
fn ancestors(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut dir = root.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs
}

/// Cores from `cpu.max` (`"<quota> <period>"`; `max` for no limit).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// Bytes from `memory.max` (`max` for no limit).
fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("4294967296\n"), Some(4 << 30));
        assert_eq!(unified_path("12:cpu:/x\n0::/system.slice/app.service\n"), Some("/system.slice/app.service"));
        assert_eq!(unified_path("0::/\n"), Some("/"));
        assert_eq!(unified_path("4:memory:/docker/abc\n"), None);
        let dirs = ancestors(Path::new("/sys/fs/cgroup"), "/a/b");
        assert_eq!(dirs, ["/sys/fs/cgroup", "/sys/fs/cgroup/a", "/sys/fs/cgroup/a/b"].map(PathBuf::from));
    }

    #[test]
    fn reservations_hold_until_dropped_and_never_exceed_capacity() {
        let room = Room::new(Resources { cpu: Cores::whole(4), ..Resources::default() });
        let two = Resources { cpu: Cores::whole(2), ..Resources::default() };
        let a = room.try_reserve("a", two).unwrap();
        let b = room.try_reserve("b", two).unwrap();
        assert_eq!(room.try_reserve("c", two).err(), Some(Resources::default()), "full: nothing free");
        assert_eq!(room.holdings().holding, ["a", "b"]);
        drop(a);
        let h = room.holdings();
        assert_eq!(
            (h.held.cpu, h.holding, h.released),
            (Cores::whole(2), vec!["b".to_string()], vec!["a".to_string()])
        );
        assert!(room.try_reserve("c", two).is_ok());
        drop(b);
    }

    #[test]
    fn detected_capacity_is_something() {
        let c = capacity(None, None, None);
        assert!(!c.cpu.is_zero() && !c.memory.is_zero(), "{c:?}");
        let set = capacity(Some(Cores(500)), Some(ByteAmount(1 << 30)), Some(ByteAmount(0)));
        assert_eq!(set, Resources { cpu: Cores(500), memory: ByteAmount(1 << 30), disk: ByteAmount(0) });
    }
}

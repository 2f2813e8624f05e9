//! Riding out trouble: a bounded, jittered backoff for every retry loop, and
//! an [`Outage`] that logs a persisting condition once when it starts and
//! once when it ends, however many attempts fail in between (during a NATS
//! leader election thousands of calls fail within seconds; one line says so).

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Exponential backoff between `min` and `max`, each delay drawn uniformly
/// from its upper half so that many clients retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles per failure up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt (jittered), and doubles the next.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The delay before try `n` (1 for the first retry) of a series whose
    /// count is kept elsewhere, such as a message's delivery count when the
    /// retry is a redelivery: `min` doubled `n - 1` times, at most `max`,
    /// jittered like [`Backoff::next_delay`].
    pub fn delay_for(&self, n: u64) -> Duration {
        let doublings = n.saturating_sub(1).min(32) as u32;
        let base = self.min.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Sleeps [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A condition that can persist across many attempts (a stream without a
/// leader, NATS unreachable). Shared by every task that hits it (usually a
/// `static`), so one line reports it however many tasks fail. It ends once
/// successes have held for [`QUIET`] with no failure in between, so the mixed
/// successes and failures of an election (some consumers still answered by
/// a leader that has not yet noticed it lost its quorum, others not) do not
/// flap: one line when it starts, one when it is over.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    quiet: Duration,
    state: Mutex<Option<State>>,
}

/// How long successes must hold, with no failure, to end an outage: longer
/// than the slowest retry cycle of the callers that share one (a worker's
/// lane rests up to 2 s and a pull request waits up to 2 s for an answer).
pub const QUIET: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct State {
    since: Instant,
    failures: u64,
    /// The first success since the last failure.
    ok_since: Option<Instant>,
}

impl Outage {
    /// An outage of `what` ("publishing work", "claiming runs").
    pub const fn new(what: &'static str) -> Outage {
        Outage { what, quiet: QUIET, state: Mutex::new(None) }
    }

    /// Records a failed attempt; logs a warning only when the condition
    /// starts (each attempt is a debug line).
    pub fn failed(&self, err: &dyn Display) {
        let Ok(mut state) = self.state.lock() else { return };
        let now = Instant::now();
        match state.as_mut() {
            Some(s) => {
                s.failures += 1;
                s.ok_since = None;
                tracing::debug!(what = self.what, %err, "{} still failing", self.what);
            }
            None => {
                *state = Some(State { since: now, failures: 1, ok_since: None });
                tracing::warn!(what = self.what, %err, "{} failing; retrying with backoff until it recovers", self.what);
            }
        }
    }

    /// Records a success; logs once when it ends an outage.
    pub fn recovered(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(s) = state.as_mut() else { return };
        let Some(ok_since) = s.ok_since else {
            s.ok_since = Some(Instant::now());
            return;
        };
        if ok_since.elapsed() < self.quiet {
            return;
        }
        let s = *s;
        *state = None;
        tracing::info!(what = self.what, failures = s.failures, after = ?s.since.elapsed(), "{} recovered", self.what);
    }

    /// Records the success that ends a single task's outage: logs the
    /// recovery at once (no quiet second to wait for, nobody else shares it).
    pub fn recovered_now(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(s) = state.take() else { return };
        tracing::info!(what = self.what, failures = s.failures, after = ?s.since.elapsed(), "{} recovered", self.what);
    }

    /// Whether the condition holds now.
    pub fn ongoing(&self) -> bool {
        self.state.lock().map(|s| s.is_some()).unwrap_or(false)
    }
}

/// Runs `attempt` until it succeeds, backing off between failures and
/// reporting them through `outage` (one line when they start, one when they
/// end). For the steps a service takes before its loop (opening consumers,
/// reading a bucket's settings): during a leader election they fail for a
/// few seconds, and a service that exits then does not come back by itself.
/// Returns `None` if `shutdown` fires first.
pub async fn until_ok<T, E, F, Fut>(outage: &Outage, shutdown: &CancellationToken, mut attempt: F) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = attempt() => r,
        };
        match result {
            Ok(value) => {
                outage.recovered_now();
                return Some(value);
            }
            Err(err) => outage.failed(&err),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = backoff.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500), "at the bound, half of it at least: {late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delay_for_follows_the_count_to_its_bound() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let within = |d: Duration, top: u64| d >= Duration::from_millis(top / 2) && d <= Duration::from_millis(top);
        assert!(within(b.delay_for(0), 100) && within(b.delay_for(1), 100));
        assert!(within(b.delay_for(2), 200) && within(b.delay_for(4), 800));
        assert!(within(b.delay_for(6), 2000) && within(b.delay_for(u64::MAX), 2000));
    }

    #[test]
    fn outage_counts_failures_and_ends_only_after_successes_held_quiet() {
        let o = Outage { quiet: Duration::from_millis(30), ..Outage::new("testing") };
        assert!(!o.ongoing());
        o.failed(&"boom");
        o.failed(&"boom");
        assert!(o.ongoing());
        assert_eq!(o.state.lock().unwrap().map(|s| s.failures), Some(2));
        o.recovered();
        assert!(o.ongoing(), "a success right after a failure does not end it");
        std::thread::sleep(Duration::from_millis(40));
        o.failed(&"boom");
        o.recovered();
        assert!(o.ongoing(), "a failure between successes starts the quiet period again");
        std::thread::sleep(Duration::from_millis(40));
        o.recovered();
        assert!(!o.ongoing(), "successes held for the quiet period end it");
        assert_eq!(o.state.lock().unwrap().map(|s| s.failures), None);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_until_success_and_stops_on_shutdown() {
        let o = Outage::new("testing");
        let shutdown = CancellationToken::new();
        let mut tries = 0;
        let got = until_ok(&o, &shutdown, || {
            tries += 1;
            let n = tries;
            async move { if n < 4 { Err("not yet") } else { Ok(n) } }
        })
        .await;
        assert_eq!(got, Some(4));
        assert!(!o.ongoing(), "the success ended the outage");
        shutdown.cancel();
        let never = until_ok(&o, &shutdown, || async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }
}

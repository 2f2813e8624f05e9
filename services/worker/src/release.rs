//! Runs staged ahead of their time, released on time.
//!
//! A run due within the stage horizon is claimed when it is delivered and
//! handed here, for a NATS function with its request already built, headers
//! and all; while it waits it gives its slot back (within `--max-staged`).
//! One task per worker holds the staged runs by release instant. When an
//! instant comes it takes a slot for each run due then and sends every
//! prepared request in one loop, and only then wakes their runs: a
//! same-instant herd costs one timer and one publish per run at its instant,
//! and its bookkeeping (events, records) comes after all of its requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::handlers::nats::{Functions, Outbound, Sent};

/// Per run released at one instant, how long the runs' bookkeeping waits so
/// that the handlers of the whole instant get the machine first: about what
/// one request costs the server and the function on this kind of machine.
const BURST_SHARE: Duration = Duration::from_micros(25);

/// Hands staged runs to the worker's release task. The channel needs no
/// bound of its own: a run is staged only within `--max-staged` or while it
/// holds a slot.
pub struct Releaser {
    tx: mpsc::UnboundedSender<Staged>,
}

/// A run waiting for its instant.
pub struct Staged {
    /// Its release instant.
    pub at: Timestamp,
    /// Its NATS function call, built ahead.
    pub call: Option<Prepared>,
    /// Who has the run: the releaser, once it starts the run's handler, or
    /// the run itself, once it is cancelled while waiting.
    pub hold: Hold,
    /// The slot it kept, when there was no room to stage it without one.
    pub slot: Option<OwnedSemaphorePermit>,
    /// Told when the instant came.
    pub done: oneshot::Sender<Released>,
}

/// Settles, once, whether a staged run is released or withdrawn.
#[derive(Clone, Default)]
pub struct Hold(Arc<AtomicU8>);

const WAITING: u8 = 0;
const RELEASED: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Hold {
    /// The run starts (the releaser takes it at its instant, or a run not
    /// staged is about to be claimed); false if it was withdrawn.
    pub fn release(&self) -> bool {
        self.0.compare_exchange(WAITING, RELEASED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The run takes itself back (cancelled while waiting); false if it was
    /// released already (its handler may have been called: it must go on
    /// as a running run).
    pub fn withdraw(&self) -> bool {
        self.0.compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Whether it was withdrawn.
    pub fn is_withdrawn(&self) -> bool {
        self.0.load(Ordering::Acquire) == WITHDRAWN
    }
}

/// A NATS function request built ahead, and the span it will go out under.
pub struct Prepared {
    /// The request.
    pub outbound: Outbound,
    /// Opens the handler span when the request is sent.
    pub span: Box<dyn FnOnce() -> tracing::Span + Send>,
}

/// What the release did for a run.
pub struct Released {
    /// The slot the run now holds; `None` when none was free at its instant.
    pub slot: Option<OwnedSemaphorePermit>,
    /// What became of its prepared call.
    pub call: Option<Sent>,
    /// The handler span the call went out under, when spans are recorded.
    pub span: Option<tracing::Span>,
    /// Not before this are the run's events and record written.
    pub settle_after: tokio::time::Instant,
}

impl Releaser {
    /// Starts the release task; it ends when the releaser is dropped.
    pub fn start(functions: Arc<Functions>, slots: Arc<Semaphore>) -> Releaser {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_releases(rx, functions, slots));
        Releaser { tx }
    }

    /// Stages a run; false if the release task is gone.
    pub fn stage(&self, staged: Staged) -> bool {
        self.tx.send(staged).is_ok()
    }
}

async fn run_releases(mut rx: mpsc::UnboundedReceiver<Staged>, functions: Arc<Functions>, slots: Arc<Semaphore>) {
    let mut due: BTreeMap<Timestamp, Vec<Staged>> = BTreeMap::new();
    loop {
        let next = due.first_key_value().map(|(at, _)| {
            let wait = at.duration_since(Timestamp::now()).max(jiff::SignedDuration::ZERO).unsigned_abs();
            tokio::time::Instant::now() + wait
        });
        tokio::select! {
            // The clock first: arrivals must not hold back a release.
            biased;
            _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                // Every instant before now is due.
                let later = due.split_off(&Timestamp::now());
                let ready = std::mem::replace(&mut due, later);
                release(ready.into_values().flatten().collect(), &functions, &slots).await;
            }
            staged = rx.recv() => match staged {
                Some(s) => due.entry(s.at).or_default().push(s),
                None => return,
            },
        }
    }
}

/// Sends the prepared calls of every run in `ready`. Runs with nothing sent
/// (other handler kinds, or no slot free) are woken at once to start their
/// handlers; runs whose requests went out are woken a moment later, so
/// that their bookkeeping does not compete with the instant's requests.
async fn release(ready: Vec<Staged>, functions: &Functions, slots: &Arc<Semaphore>) {
    let clock = std::time::Instant::now();
    let mut sent = Vec::with_capacity(ready.len());
    let mut unsent = 0usize;
    for s in ready {
        if !s.hold.release() {
            continue;
        }
        let slot = s.slot.or_else(|| slots.clone().try_acquire_owned().ok());
        let call = match (s.call, slot.is_some()) {
            (Some(Prepared { mut outbound, span }), true) => {
                // A span costs more than the publish: open it here only
                // when it is recorded (its context travels with the request).
                let span = jetsched_runtime::telemetry::tracing_recorded().then(span);
                if let Some(span) = &span {
                    outbound.trace(span);
                }
                let result = functions.send(outbound).await;
                sent.push((s.done, slot, Sent::Yes(result), span));
                continue;
            }
            // No slot: the run sends it once it has one.
            (Some(p), false) => Some(Sent::No(p.outbound)),
            (None, _) => None,
        };
        unsent += 1;
        let settle_after = tokio::time::Instant::now();
        let _ = s.done.send(Released { slot, call, span: None, settle_after });
    }
    tracing::debug!(sent = sent.len(), unsent, took = ?clock.elapsed(), "staged runs released");
    if sent.is_empty() {
        return;
    }
    let share = BURST_SHARE.saturating_mul(u32::try_from(sent.len()).unwrap_or(u32::MAX));
    let settle_after = tokio::time::Instant::now() + share.min(Duration::from_secs(1));
    tokio::spawn(async move {
        if sent.len() > 1 {
            tokio::time::sleep_until(settle_after).await;
        }
        for (done, slot, call, span) in sent {
            let _ = done.send(Released { slot, call: Some(call), span, settle_after });
        }
    });
}

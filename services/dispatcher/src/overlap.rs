//! A schedule's overlap policy (`skip`, `buffer_one`, `cancel_previous`):
//! whether a fire may start while the schedule's previous run is going.
//!
//! The decision and the mark are one compare-and-set on the schedule's
//! overlap state (`<prefix>-overlap`, key = schedule id): read it with its
//! revision, decide, and write "this fire holds the turn" on that revision
//! before the run is queued. A conflicting write (another fire decided in
//! between, on this or another dispatcher) is read again and decided again,
//! so two fires never both take the turn.
//!
//! The fire holding the turn is *going* while its run record exists and is
//! not finished, or, before it has a record, while its due message is still
//! in the inbox (its dispatcher has not finished with it). A fire that finds
//! itself holding the turn goes on: it is the redelivery of a fire whose
//! dispatcher died after taking the turn and before queueing the run.
//!
//! A fire that must wait (`buffer_one`'s waiting fire, `cancel_previous`'s
//! replacement) stays in the inbox: it is handed back with a delay that
//! grows with its delivery count (100 ms up to 5 s) and decided again.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use async_nats::jetstream::stream::DirectGetErrorKind;
use jetsched_contract::overlap::{OverlapFire, OverlapState};
use jetsched_contract::schedule::Overlap;
use jetsched_contract::{RunStatus, run};
use jetsched_runtime::Backoff;

use crate::ctx::Ctx;
use crate::gates::{Gate, run_status};

/// Most compare-and-set attempts before the fire is retried later.
const ATTEMPTS: usize = 32;

/// Most shares of a broadcast run looked at.
const MAX_SHARES: u32 = 1024;

/// The schedule's state and its revision (0: no state yet).
async fn load(store: &Store, key: &str) -> anyhow::Result<(OverlapState, u64)> {
    Ok(match store.entry(key).await? {
        Some(e) if e.operation == Operation::Put => (serde_json::from_slice(&e.value)?, e.revision),
        // Deleted: written again on top of the delete marker.
        Some(e) => (OverlapState::default(), e.revision),
        None => (OverlapState::default(), 0),
    })
}

/// Writes `state` if the key is still at `revision`; `false` if it is not.
async fn save(store: &Store, key: &str, state: &OverlapState, revision: u64) -> anyhow::Result<bool> {
    let value = serde_json::to_vec(state)?;
    if revision == 0 {
        return match store.create(key, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    match store.update(key, value.into(), revision).await {
        Ok(_) => Ok(true),
        // Also a spurious "wrong last sequence" on R3: reading again settles it.
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a fire does, given the state and whether its `active` fire is going.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// It holds the turn already: go on.
    Proceed,
    /// It does not run.
    Skip(String),
    /// It keeps waiting in the buffered slot.
    Wait,
    /// It keeps waiting for the cancelled `active` fire to end (asks again).
    Cancel(OverlapFire),
    /// Write `next` (compare-and-set), then do `then`.
    Write { next: OverlapState, then: Then },
}

/// What follows a successful write.
#[derive(Debug, PartialEq)]
enum Then {
    /// The fire took the turn: queue its run.
    Go,
    /// The fire took the buffered slot: wait.
    Buffered,
    /// The fire took the buffered slot: cancel the previous run, then wait.
    Cancel(OverlapFire),
}

/// The rule itself, without I/O.
fn decide(policy: Overlap, state: &OverlapState, fire: &OverlapFire, going: bool) -> Verdict {
    let take = |buffered: Option<OverlapFire>| Verdict::Write {
        next: OverlapState { active: Some(fire.clone()), buffered },
        then: Then::Go,
    };
    let me = |f: &OverlapFire| f.run_id == fire.run_id;
    if state.active.as_ref().is_some_and(me) {
        return Verdict::Proceed;
    }
    let newer = |other: &Option<OverlapFire>| other.as_ref().filter(|o| !me(o) && o.is_after(fire)).cloned();
    if policy == Overlap::CancelPrevious
        && let Some(n) = newer(&state.buffered).or_else(|| newer(&state.active))
    {
        return Verdict::Skip(format!("superseded by the newer fire {} (overlap cancel_previous)", n.run_id));
    }
    let Some(active) = state.active.clone().filter(|_| going) else {
        return match (&state.buffered, policy) {
            // The waiting fire it was (or an older one, under buffer_one) gets the turn.
            (Some(b), _) if me(b) => take(None),
            (Some(b), Overlap::BufferOne) => Verdict::Write {
                next: OverlapState { active: Some(b.clone()), buffered: Some(fire.clone()) },
                then: Then::Buffered,
            },
            _ => take(None),
        };
    };
    match policy {
        Overlap::Allow => Verdict::Proceed,
        Overlap::Skip => Verdict::Skip(format!("previous run {} is still running", active.run_id)),
        Overlap::BufferOne => match &state.buffered {
            Some(b) if me(b) => Verdict::Wait,
            Some(b) => Verdict::Skip(format!("run {} is already waiting for {} to finish", b.run_id, active.run_id)),
            None => Verdict::Write {
                next: OverlapState { active: Some(active), buffered: Some(fire.clone()) },
                then: Then::Buffered,
            },
        },
        Overlap::CancelPrevious => match &state.buffered {
            Some(b) if me(b) => Verdict::Cancel(active),
            // An older waiting fire is replaced (it skips itself when it looks again).
            _ => Verdict::Write {
                next: OverlapState { active: Some(active.clone()), buffered: Some(fire.clone()) },
                then: Then::Cancel(active),
            },
        },
    }
}

/// The statuses of `fire`'s records (its own, or its broadcast shares'),
/// `None` for one not created (the list stops at the first missing share).
async fn statuses(ctx: &Ctx, fire: &OverlapFire) -> anyhow::Result<Vec<Option<RunStatus>>> {
    if !fire.broadcast {
        return Ok(vec![run_status(ctx, &fire.run_id).await?]);
    }
    let mut out = Vec::new();
    for i in 0..MAX_SHARES {
        match run_status(ctx, &run::share_run_id(&fire.run_id, i)).await? {
            Some(s) => out.push(Some(s)),
            None => {
                out.push(None);
                break;
            }
        }
    }
    Ok(out)
}

/// Whether `fire` (holding the turn) is going: a record of it not finished,
/// or no record yet and its due message still in the inbox.
async fn is_going(ctx: &Ctx, fire: &OverlapFire) -> anyhow::Result<bool> {
    let first = statuses(ctx, fire).await?;
    if first.iter().flatten().any(|s| !s.is_terminal()) {
        return Ok(true);
    }
    if first.first().is_some_and(Option::is_some) {
        return Ok(false);
    }
    if in_inbox(ctx, fire.inbox_seq).await? {
        return Ok(true);
    }
    // Its dispatcher may have created the record and acked the message
    // between the two reads above.
    Ok(statuses(ctx, fire).await?.iter().flatten().any(|s| !s.is_terminal()))
}

/// Whether inbox message `seq` is still stored (not acked yet).
async fn in_inbox(ctx: &Ctx, seq: u64) -> anyhow::Result<bool> {
    if seq == 0 {
        return Ok(false);
    }
    let js = ctx.publisher.js();
    let stream = js.get_stream_no_info(ctx.publisher.names().inbox_stream()).await?;
    match stream.direct_get(seq).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Asks for `fire`'s run (or shares) to be cancelled.
async fn cancel(ctx: &Ctx, fire: &OverlapFire) -> anyhow::Result<()> {
    if !fire.broadcast {
        ctx.runs.request_cancel(&fire.run_id).await?;
        return Ok(());
    }
    for i in 0..MAX_SHARES {
        let share = run::share_run_id(&fire.run_id, i);
        if run_status(ctx, &share).await?.is_none() {
            break;
        }
        ctx.runs.request_cancel(&share).await?;
    }
    Ok(())
}

/// How long a waiting fire stays away before it looks again.
fn poll_delay(delivered: u64) -> Duration {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).delay_for(delivered)
}

/// Applies `schedule`'s overlap policy to `fire`, delivered `delivered`
/// times: takes the turn (`Go`, the run may be queued), waits, or skips.
pub async fn take_turn(
    ctx: &Ctx,
    schedule: &str,
    policy: Overlap,
    fire: OverlapFire,
    delivered: u64,
) -> anyhow::Result<Gate> {
    if policy == Overlap::Allow {
        return Ok(Gate::Go);
    }
    let key = ctx.publisher.names().overlap_key(schedule);
    for _ in 0..ATTEMPTS {
        let (state, revision) = load(&ctx.overlap, &key).await?;
        let going = match &state.active {
            Some(a) if a.run_id != fire.run_id => is_going(ctx, a).await?,
            _ => false,
        };
        let (next, then) = match decide(policy, &state, &fire, going) {
            Verdict::Proceed => return Ok(Gate::Go),
            Verdict::Skip(reason) => return Ok(Gate::Skip(reason)),
            Verdict::Wait => return Ok(Gate::Wait(poll_delay(delivered))),
            Verdict::Cancel(previous) => {
                // Asked before; again in case that dispatcher died before it could.
                cancel(ctx, &previous).await?;
                return Ok(Gate::Wait(poll_delay(delivered)));
            }
            Verdict::Write { next, then } => (next, then),
        };
        if !save(&ctx.overlap, &key, &next, revision).await? {
            continue;
        }
        let previous = next.active.as_ref().map_or("", |a| a.run_id.as_str());
        return Ok(match then {
            Then::Go => Gate::Go,
            Then::Buffered => {
                tracing::info!(run_id = %fire.run_id, %schedule, previous, "fire waits for the previous run to end (overlap buffer_one)");
                Gate::Wait(poll_delay(delivered))
            }
            Then::Cancel(previous) => {
                tracing::info!(run_id = %fire.run_id, %schedule, previous = %previous.run_id, "cancelling the previous run; the fire starts when it has ended (overlap cancel_previous)");
                cancel(ctx, &previous).await?;
                Gate::Wait(poll_delay(delivered))
            }
        });
    }
    anyhow::bail!("the overlap state of schedule {schedule} kept changing ({ATTEMPTS} attempts)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(n: i64) -> OverlapFire {
        OverlapFire {
            run_id: format!("s.x.{n}"),
            scheduled_for: jiff::Timestamp::from_second(n).unwrap(),
            inbox_seq: n as u64,
            broadcast: false,
        }
    }

    fn state(active: Option<i64>, buffered: Option<i64>) -> OverlapState {
        OverlapState { active: active.map(fire), buffered: buffered.map(fire) }
    }

    fn takes(policy: Overlap, s: OverlapState, f: i64, going: bool) -> bool {
        matches!(decide(policy, &s, &fire(f), going), Verdict::Write { next, then: Then::Go } if next.active == Some(fire(f)) && next.buffered.is_none())
    }

    #[test]
    fn a_fire_takes_the_turn_when_nothing_is_going() {
        for p in [Overlap::Skip, Overlap::BufferOne, Overlap::CancelPrevious] {
            assert!(takes(p, state(None, None), 2, false), "{p:?}");
            assert!(takes(p, state(Some(1), None), 2, false), "{p:?}");
        }
    }

    #[test]
    fn a_fire_holding_the_turn_proceeds() {
        for p in [Overlap::Skip, Overlap::BufferOne, Overlap::CancelPrevious] {
            assert_eq!(decide(p, &state(Some(2), None), &fire(2), false), Verdict::Proceed, "{p:?}");
        }
    }

    #[test]
    fn skip_skips_while_the_previous_run_is_going() {
        assert!(
            matches!(decide(Overlap::Skip, &state(Some(1), None), &fire(2), true), Verdict::Skip(r) if r.contains("s.x.1"))
        );
    }

    #[test]
    fn buffer_one_keeps_one_fire_waiting_and_skips_the_rest() {
        let s = state(Some(1), None);
        assert_eq!(
            decide(Overlap::BufferOne, &s, &fire(2), true),
            Verdict::Write { next: state(Some(1), Some(2)), then: Then::Buffered }
        );
        let s = state(Some(1), Some(2));
        assert_eq!(decide(Overlap::BufferOne, &s, &fire(2), true), Verdict::Wait);
        assert!(matches!(decide(Overlap::BufferOne, &s, &fire(3), true), Verdict::Skip(r) if r.contains("s.x.2")));
        // The previous run ended: the waiting fire takes the turn...
        assert!(takes(Overlap::BufferOne, s.clone(), 2, false));
        // ...and a newer fire that comes first hands it the turn and waits behind it.
        assert_eq!(
            decide(Overlap::BufferOne, &s, &fire(3), false),
            Verdict::Write { next: state(Some(2), Some(3)), then: Then::Buffered }
        );
    }

    #[test]
    fn cancel_previous_cancels_then_waits_and_the_newest_fire_wins() {
        let s = state(Some(1), None);
        assert_eq!(
            decide(Overlap::CancelPrevious, &s, &fire(2), true),
            Verdict::Write { next: state(Some(1), Some(2)), then: Then::Cancel(fire(1)) }
        );
        let s = state(Some(1), Some(2));
        assert_eq!(decide(Overlap::CancelPrevious, &s, &fire(2), true), Verdict::Cancel(fire(1)));
        assert_eq!(
            decide(Overlap::CancelPrevious, &s, &fire(3), true),
            Verdict::Write { next: state(Some(1), Some(3)), then: Then::Cancel(fire(1)) }
        );
        let s = state(Some(1), Some(3));
        assert!(matches!(decide(Overlap::CancelPrevious, &s, &fire(2), true), Verdict::Skip(r) if r.contains("s.x.3")));
        assert!(matches!(decide(Overlap::CancelPrevious, &s, &fire(2), false), Verdict::Skip(_)));
        assert!(takes(Overlap::CancelPrevious, s, 3, false));
        // A late fire older than the run that holds the turn never runs after it.
        assert!(matches!(decide(Overlap::CancelPrevious, &state(Some(5), None), &fire(4), false), Verdict::Skip(_)));
    }
}

//! Overlap policies on a real nats-server, with a handler the test holds
//! open until it decides: `skip` skips fires while a run is going and lets
//! exactly one run hold the schedule's turn while two dispatcher processes
//! race over a burst of fires, `buffer_one` keeps exactly one fire waiting
//! and starts it when the running run ends, `cancel_previous` cancels the
//! running run and starts the newest fire once it has ended (a handler slow
//! to stop delays it), a fire whose dispatcher died after taking the turn
//! still runs, and a scheduled workflow holds its schedule's turn until the
//! whole workflow ends. Order is read from the events stream (its sequence
//! order), never from timestamps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeSet;

use harness::*;
use jetsched_contract::overlap::{OverlapFire, OverlapState};
use jetsched_contract::schedule::Overlap;
use jetsched_contract::{DueFire, RunEvent, RunRecord, RunStatus, headers};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// A schedule `schedule` of task `slow` (the held handler) firing every
/// second under `policy`, with the services running; its first run started.
struct EverySecond {
    events: Events,
    held: Held,
    first: RunEvent,
    _services: Services,
    env: Env,
}

impl EverySecond {
    async fn start(schedule: &str, policy: &str) -> EverySecond {
        let env = Env::start().await;
        let (builtins, mut held) = slow_task(&env).await;
        env.put_schedule(schedule, json!({"every": "1s", "task": "slow", "overlap": policy})).await;
        let services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
        let mut events = env.events().await;
        let first = events.wait_for(20, "the first run to start", is("slow", RunStatus::Started)).await;
        assert_eq!(held.next(10).await, first.run_id.clone().unwrap());
        EverySecond { events, held, first, _services: services, env }
    }
}

/// Task `slow`, run by the held handler.
async fn slow_task(env: &Env) -> (Builtins, Held) {
    let mut builtins = Builtins::default();
    let held = Held::register(&mut builtins, "held");
    env.put_task("slow", json!({"handler": {"type": "builtin", "name": "held"}})).await;
    (builtins, held)
}

/// Stream position of the first seen event of `run` with `status`.
fn position(events: &Events, run: &str, status: RunStatus) -> usize {
    events
        .seen
        .iter()
        .position(|(_, e)| e.run_id.as_deref() == Some(run) && e.status == status)
        .unwrap_or_else(|| panic!("no {status} event of {run} seen"))
}

/// Reads events until `done` holds over everything seen.
async fn read_until(events: &mut Events, secs: u64, what: &str, done: impl Fn(&[(String, RunEvent)]) -> bool) {
    within(secs, what, async {
        while !done(&events.seen) {
            events.next().await;
        }
    })
    .await
}

/// Walks the events of `task` in stream order and asserts that a run
/// starts only when no other is open (started and not yet ended).
fn assert_one_at_a_time(events: &Events, task: &str) {
    let mut open: Option<String> = None;
    for (i, (_, e)) in events.seen.iter().enumerate().filter(|(_, (_, e))| e.task == task) {
        let run = e.run_id.clone().unwrap();
        match e.status {
            RunStatus::Started => {
                assert!(
                    open.is_none() || open.as_deref() == Some(run.as_str()),
                    "event {i}: {run} started while {open:?} was still going"
                );
                open = Some(run);
            }
            s if s.is_terminal() && open.as_deref() == Some(run.as_str()) => open = None,
            _ => {}
        }
    }
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_skips_fires_while_the_previous_run_is_going() {
    let EverySecond { mut events, held, first, _services, env: _env } = EverySecond::start("busy", "skip").await;
    let run1 = first.run_id.clone().unwrap();
    let skipped = events.wait_for_n(2, 20, "two fires to be skipped", is("slow", RunStatus::Skipped)).await;
    for s in &skipped {
        assert_eq!(s.error.as_deref(), Some(format!("previous run {run1} is still running").as_str()));
    }
    held.release_one();
    events
        .wait_for(20, "run 1 to succeed", |e| e.run_id.as_deref() == Some(&run1) && e.status == RunStatus::Succeeded)
        .await;
    let next = events.wait_for(20, "a later fire to start", is("slow", RunStatus::Started)).await;
    assert!(skipped.iter().all(|s| s.scheduled_for < next.scheduled_for), "skipped fires never run");
    assert!(
        position(&events, &run1, RunStatus::Succeeded)
            < position(&events, next.run_id.as_deref().unwrap(), RunStatus::Started)
    );
    assert_one_at_a_time(&events, "slow");
    held.release_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_workflow_holds_its_schedules_turn_until_it_ends() {
    let env = Env::start().await;
    let (builtins, mut held) = slow_task(&env).await;
    env.put_task("flow", json!({"steps": {"only": {"task": "slow"}}})).await;
    env.put_schedule("flows", json!({"every": "1s", "task": "flow", "overlap": "skip"})).await;
    let _services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;

    let first = events.wait_for(20, "the first workflow to start", is("flow", RunStatus::Started)).await;
    let run1 = first.run_id.clone().unwrap();
    assert_eq!(held.next(20).await, format!("{run1}.only"));
    let skipped = events.wait_for_n(2, 20, "two fires to be skipped", is("flow", RunStatus::Skipped)).await;
    for s in &skipped {
        assert_eq!(s.error.as_deref(), Some(format!("previous run {run1} is still running").as_str()));
    }
    held.release_one();
    events
        .wait_for(20, "the workflow to succeed", |e| {
            e.run_id.as_deref() == Some(&run1) && e.status == RunStatus::Succeeded
        })
        .await;
    events.wait_for(20, "a later workflow to start", is("flow", RunStatus::Started)).await;
    assert_one_at_a_time(&events, "flow");
    held.release_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_one_starts_one_waiting_fire_after_the_running_run_and_skips_the_rest() {
    let EverySecond { mut events, mut held, first, _services, env: _env } =
        EverySecond::start("buffered", "buffer_one").await;
    let run1 = first.run_id.clone().unwrap();
    // While run 1 is held, later fires come every second: one waits, the
    // rest are skipped, naming the one that waits.
    let skipped = events.wait_for_n(3, 20, "three fires to be skipped", is("slow", RunStatus::Skipped)).await;
    let waiting: BTreeSet<String> = skipped
        .iter()
        .map(|e| {
            let reason = e.error.clone().unwrap();
            assert!(reason.contains(&format!("is already waiting for {run1} to finish")), "{reason}");
            reason.strip_prefix("run ").unwrap().split(' ').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(waiting.len(), 1, "one fire waits: {waiting:?}");
    let buffered = waiting.into_iter().next().unwrap();
    let before_release = events.seen.len();
    let others: Vec<&RunEvent> =
        events.seen.iter().map(|(_, e)| e).filter(|e| e.run_id.as_ref() != Some(&run1)).collect();
    // (A ticker slowed down at start may report a fire before run 1 missed.)
    assert!(
        others.iter().all(|e| matches!(e.status, RunStatus::Skipped | RunStatus::Missed)),
        "nothing but skips while run 1 holds the turn: {others:?}"
    );

    held.release_one();
    let second = events.wait_for(30, "the waiting fire to start", is("slow", RunStatus::Started)).await;
    assert_eq!(second.run_id.as_deref(), Some(buffered.as_str()), "the fire that waited is the one that starts");
    assert_eq!(held.next(10).await, buffered);
    assert!(
        position(&events, &run1, RunStatus::Succeeded) < position(&events, &buffered, RunStatus::Started),
        "the waiting fire starts only after run 1 ended (events stream order)"
    );
    assert!(position(&events, &run1, RunStatus::Succeeded) < position(&events, &buffered, RunStatus::Queued));
    let nominal = second.scheduled_for.unwrap();
    assert!(skipped.iter().all(|s| s.scheduled_for.unwrap() > nominal), "it was the first fire after run 1");

    // Every fire between run 1 and the last one skipped before the release
    // is accounted for: the one that waited, and skips.
    let last = events.seen[..before_release]
        .iter()
        .filter(|(_, e)| e.status == RunStatus::Skipped)
        .filter_map(|(_, e)| e.scheduled_for)
        .max()
        .unwrap();
    let mut expected = BTreeSet::new();
    let mut t = first.scheduled_for.unwrap().checked_add(secs(1)).unwrap();
    while t <= last {
        if t != nominal {
            expected.insert(t);
        }
        t = t.checked_add(secs(1)).unwrap();
    }
    let skipped_in_range = |seen: &[(String, RunEvent)]| -> BTreeSet<Timestamp> {
        seen.iter()
            .filter(|(_, e)| e.task == "slow" && e.status == RunStatus::Skipped)
            .filter_map(|(_, e)| e.scheduled_for)
            .filter(|t| *t <= last)
            .collect()
    };
    read_until(&mut events, 20, "every other fire up to the release to be skipped", |seen| {
        skipped_in_range(seen) == expected
    })
    .await;
    assert_one_at_a_time(&events, "slow");
    held.release_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_previous_cancels_the_running_run_and_starts_the_new_one_once_it_has_ended() {
    let env = Env::start().await;
    // A handler slow to stop: it ignores SIGTERM, so a cancel takes effect
    // only at the SIGKILL after the worker's grace period (5 s).
    let stubborn = "trap '' TERM; while :; do sleep 1; done";
    env.put_task("stubborn", json!({"handler": {"type": "exec", "command": ["sh", "-c", stubborn]}, "timeout": "5m"}))
        .await;
    env.put_schedule("latest", json!({"every": "1s", "task": "stubborn", "overlap": "cancel_previous"})).await;
    let worker = WorkerConfig { allow_exec: vec!["sh".into()], ..WorkerConfig::default() };
    let _services = env.services_with(ServicesConfig { worker: Some(worker), ..ServicesConfig::default() });
    let mut events = env.events().await;

    let first = events.wait_for(20, "the first run to start", is("stubborn", RunStatus::Started)).await;
    let run1 = first.run_id.clone().unwrap();
    let cancelled = events
        .wait_for(30, "run 1 to be cancelled", |e| {
            e.run_id.as_deref() == Some(&run1) && e.status == RunStatus::Cancelled
        })
        .await;
    assert_eq!(cancelled.error.as_deref(), Some("cancelled while running"));
    let second = events.wait_for(30, "the new run to start", is("stubborn", RunStatus::Started)).await;
    let run2 = second.run_id.clone().unwrap();
    assert!(second.scheduled_for > first.scheduled_for);
    assert!(
        position(&events, &run1, RunStatus::Cancelled) < position(&events, &run2, RunStatus::Queued),
        "the new run is queued only once the previous one has ended cancelled (events stream order)"
    );
    let record: RunRecord = env.record(&run1).await;
    assert_eq!((record.status, record.cancel_requested), (RunStatus::Cancelled, true), "{record:?}");
    // Fires that came while run 1 was being stopped: each newer one took the
    // waiting place, the older ones were skipped; the newest of them started.
    let superseded: Vec<&RunEvent> =
        events.seen.iter().map(|(_, e)| e).filter(|e| e.task == "stubborn" && e.status == RunStatus::Skipped).collect();
    for s in &superseded {
        assert!(s.error.as_deref().unwrap().starts_with("superseded by the newer fire"), "{s:?}");
        assert!(s.scheduled_for < second.scheduled_for, "{s:?} is newer than the run that started");
    }
    assert_one_at_a_time(&events, "stubborn");
}

/// A due fire of schedule `schedule` for `task` at `at`, as the ticker publishes it.
async fn publish_fire(env: &Env, schedule: &str, task: &str, at: Timestamp, overlap: Overlap) -> (String, u64) {
    let fire = DueFire {
        schedule: schedule.to_string(),
        scheduled_for: at,
        payload: json!({}),
        task_def: None,
        not_before: None,
        overlap,
        depends_on: None,
        timezone: None,
        revision: None,
    };
    let seq = env
        .publish(
            env.names.due_subject(task),
            &[(headers::NATS_MSG_ID, &fire.msg_id())],
            &serde_json::to_string(&fire).unwrap(),
        )
        .await;
    (fire.run_id(), seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_lets_one_run_hold_the_turn_while_two_dispatchers_race() {
    let env = Env::start().await;
    let (builtins, mut held) = slow_task(&env).await;
    let _worker = env.services_with(ServicesConfig { ticker: None, dispatcher: None, builtins, ..Default::default() });
    let _d1 = env.spawn_jetsched(&["dispatcher"]);
    let _d2 = env.spawn_jetsched(&["dispatcher"]);
    let inbox = env.handles.js.get_stream(env.names.inbox_stream()).await.unwrap();
    eventually(30, "both dispatchers to pull from the inbox", || {
        let inbox = inbox.clone();
        let name = env.names.dispatcher_consumer();
        async move { inbox.clone().consumer_info(name).await.ok().filter(|i| i.num_waiting >= 2).map(drop) }
    })
    .await;
    let mut events = env.events().await;
    let base = Timestamp::now().round(jiff::Unit::Second).unwrap();

    for round in 0..3i64 {
        // A burst of fires at once, shared by both dispatchers.
        let burst: Vec<Timestamp> = (0..12).map(|i| base.checked_add(secs(round * 100 + i)).unwrap()).collect();
        let publishes = burst.iter().map(|t| publish_fire(&env, "race", "slow", *t, Overlap::Skip));
        futures::future::join_all(publishes).await;
        let in_burst = |e: &RunEvent| e.scheduled_for.is_some_and(|t| burst.contains(&t));
        read_until(&mut events, 30, "every fire of the burst to start or be skipped", |seen| {
            seen.iter()
                .filter(|(_, e)| in_burst(e) && matches!(e.status, RunStatus::Started | RunStatus::Skipped))
                .count()
                >= burst.len()
        })
        .await;
        let started: Vec<&RunEvent> =
            events.seen.iter().map(|(_, e)| e).filter(|e| in_burst(e) && e.status == RunStatus::Started).collect();
        assert_eq!(started.len(), 1, "round {round}: exactly one fire of the burst runs: {started:?}");
        let run = started[0].run_id.clone().unwrap();
        assert_eq!(held.next(10).await, run);
        for (_, e) in events.seen.iter().filter(|(_, e)| in_burst(e) && e.status == RunStatus::Skipped) {
            assert!(e.error.as_deref().unwrap().contains(&format!("previous run {run} is still running")), "{e:?}");
        }
        held.release_one();
        events
            .wait_for(20, "the run to succeed", |e| {
                e.run_id.as_deref() == Some(&run) && e.status == RunStatus::Succeeded
            })
            .await;
    }
    assert_one_at_a_time(&events, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_that_took_the_turn_before_its_dispatcher_died_still_runs() {
    let env = Env::start().await;
    let (builtins, mut held) = slow_task(&env).await;
    let base = Timestamp::now().round(jiff::Unit::Second).unwrap();
    // As a dispatcher that died right after taking the turn left it: the
    // fire marked active, its run not queued, its message still in the inbox.
    let (crashed, seq) = publish_fire(&env, "crash", "slow", base, Overlap::Skip).await;
    let state = OverlapState {
        active: Some(OverlapFire { run_id: crashed.clone(), scheduled_for: base, inbox_seq: seq, broadcast: false }),
        buffered: None,
    };
    env.kv_put(&env.names.overlap_bucket(), &env.names.overlap_key("crash"), &serde_json::to_string(&state).unwrap())
        .await;
    let (later, _) = publish_fire(&env, "crash", "slow", base.checked_add(secs(1)).unwrap(), Overlap::Skip).await;
    // A mark whose fire is gone from the inbox without a run (purged) holds nothing.
    let ghost = OverlapState {
        active: Some(OverlapFire {
            run_id: "s.ghost.x".into(),
            scheduled_for: base,
            inbox_seq: 1_000_000,
            broadcast: false,
        }),
        buffered: None,
    };
    env.kv_put(&env.names.overlap_bucket(), &env.names.overlap_key("ghost"), &serde_json::to_string(&ghost).unwrap())
        .await;
    let (unblocked, _) = publish_fire(&env, "ghost", "slow", base, Overlap::Skip).await;
    let _services = env.services_with(ServicesConfig { ticker: None, builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;

    let skipped = events
        .wait_for(20, "the later fire to be skipped", |e| {
            e.run_id.as_deref() == Some(&later) && e.status == RunStatus::Skipped
        })
        .await;
    assert!(
        skipped.error.as_deref().unwrap().contains(&format!("previous run {crashed} is still running")),
        "{skipped:?}"
    );
    let mut entered = BTreeSet::new();
    entered.insert(held.next(20).await);
    entered.insert(held.next(20).await);
    assert_eq!(
        entered,
        BTreeSet::from([crashed.clone(), unblocked.clone()]),
        "both the crashed fire and the unblocked one ran"
    );
    for run in [&crashed, &unblocked] {
        events
            .wait_for(10, "its started event", |e| e.run_id.as_ref() == Some(run) && e.status == RunStatus::Started)
            .await;
    }
    held.release_all();
}

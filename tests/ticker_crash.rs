//! Tickers as real `jetsched ticker` processes killed with SIGKILL: what
//! happens to the fires of the outage under each misfire policy, and how
//! partitions move between two tickers. Dispatcher and worker run in the
//! test process; fires are observed as `queued` events, one per run id.
//! Leases last [`TEST_LEASE_TTL`] so that takeovers are quick.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;

use futures::StreamExt;

use harness::*;
use jetsched_contract::ticker::{PARTITIONS, Watermark, partition_of, watermark_key};
use jetsched_contract::{RunEvent, RunStatus};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

/// How long the tests leave the schedules without a ticker. Part of the
/// scenario (an outage), not a wait for something to happen.
const OUTAGE: std::time::Duration = std::time::Duration::from_secs(5);

fn ttl() -> SignedDuration {
    TEST_LEASE_TTL.parse::<jetsched_contract::HumanDuration>().map(|d| SignedDuration::try_from(d.0).unwrap()).unwrap()
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

/// Dispatcher and worker in this process, a no-op function, task `tick`.
async fn world(env: &Env) -> (Function, Services) {
    let function = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    let services = env.services_with(ServicesConfig { ticker: None, ..ServicesConfig::default() });
    (function, services)
}

fn every_second(policy: &str) -> Value {
    json!({"every": "1s", "task": "tick", "misfire": {"policy": policy}})
}

fn queued(schedule: &str) -> impl Fn(&RunEvent) -> bool + '_ {
    move |e| e.status == RunStatus::Queued && e.schedule.as_deref() == Some(schedule)
}

/// Fails unless `fired` is a run of whole seconds with no gap and no repeat.
fn assert_every_second_once(schedule: &str, fired: &[Timestamp]) {
    assert!(fired.len() >= 2, "{schedule}: too few fires: {fired:?}");
    for pair in fired.windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]), secs(1), "{schedule}: gap or repeat in {fired:?}");
    }
}

/// The watermark the tickers keep for `schedule`'s partition.
async fn watermark(env: &Env, schedule: &str) -> Option<Timestamp> {
    let value = env.kv_get(&env.names.ticker_bucket(), &watermark_key(partition_of(schedule))).await?;
    Some(serde_json::from_slice::<Watermark>(&value).unwrap().upto)
}

/// Returns once the watermark of `schedule`'s partition covers `t`, as the
/// ticker stores it (a KV watch: each update is an event).
async fn watermark_reaches(env: &Env, schedule: &str, t: Timestamp) {
    let store = env.handles.js.get_key_value(env.names.ticker_bucket()).await.unwrap();
    let mut updates = store.watch_with_history(watermark_key(partition_of(schedule))).await.unwrap();
    while let Some(Ok(entry)) = updates.next().await {
        if serde_json::from_slice::<Watermark>(&entry.value).is_ok_and(|w| w.upto >= t) {
            return;
        }
    }
}

/// The outage under test: no ticker runs until [`OUTAGE`] after `from` (the
/// scenario's length, polled with a deadline, not a wait standing in for an
/// event).
async fn outage_from(from: Timestamp) {
    let end = from.checked_add(SignedDuration::try_from(OUTAGE).unwrap()).unwrap();
    eventually(30, "the outage to last its length", || async { (Timestamp::now() >= end).then_some(()) }).await;
}

/// Owner of each held lease.
async fn lease_owners(env: &Env) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for (key, value) in env.kv_entries(&env.names.ticker_leases_bucket()).await {
        if key.starts_with("lease.") {
            *owners.entry(String::from_utf8_lossy(&value).to_string()).or_default() += 1;
        }
    }
    owners
}

async fn kill(child: &mut tokio::process::Child) {
    child.start_kill().unwrap();
    within(10, "the ticker to die", child.wait()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticker_killed_and_restarted_fires_every_occurrence_exactly_once_under_all() {
    let env = Env::start().await;
    let (_fn, _services) = world(&env).await;
    env.put_schedule("s", every_second("all")).await;
    let mut events = env.events().await;

    let mut first = env.spawn_ticker("first", &[]);
    events.wait_for_n(3, 20, "three fires", queued("s")).await;
    kill(&mut first).await;
    let killed_at = Timestamp::now();
    outage_from(killed_at).await;
    let _second = env.spawn_ticker("second", &[]);
    let beyond = killed_at.checked_add(secs(8)).unwrap();
    events.wait_for(30, "fires after the restart", |e| queued("s")(e) && e.scheduled_for > Some(beyond)).await;

    let fired = events.fired("s");
    assert_every_second_once("s", &fired);
    let outage = fired.iter().filter(|t| **t > killed_at && **t < killed_at.checked_add(secs(5)).unwrap());
    assert!(outage.count() >= 4, "the outage's occurrences were caught up: {fired:?}");
    assert!(events.missed("s").is_empty(), "{:?}", events.missed("s"));
}

/// Kills `ticker` right after a fire of `schedule` is stored and covered by
/// the watermark, well before the next one, so that the outage starts
/// exactly at the watermark. Returns the watermark.
async fn kill_after_a_covered_fire(env: &Env, events: &mut Events, ticker: &mut tokio::process::Child) -> Timestamp {
    loop {
        let fire = events.wait_for(10, "a fire", queued("s")).await.scheduled_for.unwrap();
        // Watches the watermark until it covers the fire; one not covered
        // in time is passed over for the next one.
        let covered = tokio::time::timeout(std::time::Duration::from_millis(600), watermark_reaches(env, "s", fire));
        if covered.await.is_ok() && Timestamp::now() < fire.checked_add(SignedDuration::from_millis(700)).unwrap() {
            kill(ticker).await;
            return watermark(env, "s").await.unwrap();
        }
    }
}

/// Runs `s` under `policy` through an outage. Returns the fires, the
/// watermark at the crash and the `missed` report of the restarted ticker.
async fn through_an_outage(policy: &str) -> (Vec<Timestamp>, Timestamp, RunEvent) {
    let env = Env::start().await;
    let (_fn, _services) = world(&env).await;
    env.put_schedule("s", every_second(policy)).await;
    let mut events = env.events().await;
    // Threshold 0: every occurrence found late is a misfire, none fires as usual.
    let mut first = env.spawn_ticker("first", &["--misfire-threshold", "0s"]);
    events.wait_for_n(2, 20, "fires before the crash", queued("s")).await;
    let crashed = kill_after_a_covered_fire(&env, &mut events, &mut first).await;
    outage_from(crashed).await;
    let _second = env.spawn_ticker("second", &["--misfire-threshold", "0s"]);
    let missed = events.wait_for(20, "the missed report", |e| e.status == RunStatus::Missed).await;
    let beyond = missed.at.checked_add(secs(2)).unwrap();
    events.wait_for(20, "fires after the restart", |e| queued("s")(e) && e.scheduled_for > Some(beyond)).await;
    (events.fired("s"), crashed, missed)
}

/// Checks the outage accounting: every occurrence after the watermark up to
/// the last missed one is reported missed and not fired; fires resume right
/// after it. Returns the first fire after the outage.
fn assert_outage_accounted(fired: &[Timestamp], crashed: Timestamp, missed: &RunEvent) -> Timestamp {
    let last_missed = missed.scheduled_for.unwrap();
    let mut expected = 0;
    let mut t = Timestamp::from_second(crashed.as_second() + 1).unwrap();
    while t <= last_missed {
        expected += 1;
        t = t.checked_add(secs(1)).unwrap();
    }
    assert!(expected >= 4, "a 5 s outage misses several occurrences: {crashed} .. {last_missed}");
    assert_eq!(missed.count, Some(expected), "missed count for ({crashed}, {last_missed}]");
    let (before, after): (Vec<Timestamp>, Vec<Timestamp>) = fired.iter().partition(|t| **t <= crashed);
    assert!(fired.iter().all(|t| *t <= crashed || *t > last_missed), "a missed occurrence fired: {fired:?}");
    assert_every_second_once("s", &before);
    assert_every_second_once("s", &after);
    assert_eq!(after[0], last_missed.checked_add(secs(1)).unwrap(), "fires resume after the last missed one");
    after[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_after_an_outage_fires_none_of_the_missed_occurrences_and_reports_them() {
    let (fired, crashed, missed) = through_an_outage("skip").await;
    let resumed = assert_outage_accounted(&fired, crashed, &missed);
    // The first fire after the takeover is the first occurrence after it.
    assert!(resumed > missed.at, "skip fired {resumed}, before the takeover at {}", missed.at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_after_an_outage_fires_only_the_most_recent_missed_occurrence() {
    let (fired, crashed, missed) = through_an_outage("latest").await;
    let caught_up = assert_outage_accounted(&fired, crashed, &missed);
    // The first fire after the takeover is the most recent occurrence before it.
    assert!(caught_up <= missed.at, "latest did not catch up: {caught_up} after the takeover at {}", missed.at);
    assert!(caught_up > missed.at.checked_sub(secs(1)).unwrap());
}

const SCHEDULES: usize = 12;

async fn many_schedules(env: &Env) -> Vec<String> {
    let ids: Vec<String> = (0..SCHEDULES).map(|i| format!("s-{i}")).collect();
    for id in &ids {
        env.put_schedule(id, every_second("all")).await;
    }
    ids
}

async fn wait_for_both(env: &Env) -> BTreeMap<String, usize> {
    eventually(20, "both tickers to hold partitions", || async {
        let owners = lease_owners(env).await;
        let held: usize = owners.values().sum();
        (owners.len() == 2 && held == usize::from(PARTITIONS)).then_some(owners)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tickers_side_by_side_fire_each_occurrence_once() {
    let env = Env::start().await;
    let (_fn, _services) = world(&env).await;
    let ids = many_schedules(&env).await;
    let mut events = env.events().await;
    let _a = env.spawn_ticker("a", &[]);
    let _b = env.spawn_ticker("b", &[]);
    let owners = wait_for_both(&env).await;
    assert!(owners.values().all(|n| *n >= 16), "partitions are shared: {owners:?}");

    let until = Timestamp::now().checked_add(secs(4)).unwrap();
    for id in &ids {
        events.wait_for(20, "fires of every schedule", |e| queued(id)(e) && e.scheduled_for > Some(until)).await;
    }
    for id in &ids {
        assert_every_second_once(id, &events.fired(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_tickers_hands_its_partitions_to_the_other_and_no_fire_is_lost() {
    let env = Env::start().await;
    let (_fn, _services) = world(&env).await;
    let ids = many_schedules(&env).await;
    let mut events = env.events().await;
    let mut a = env.spawn_ticker("a", &[]);
    let _b = env.spawn_ticker("b", &[]);
    wait_for_both(&env).await;
    let steady = Timestamp::now().checked_add(secs(1)).unwrap();
    events.wait_for(20, "fires while both run", |e| queued("s-0")(e) && e.scheduled_for > Some(steady)).await;

    kill(&mut a).await;
    let killed_at = Timestamp::now();
    // a's leases expire (nothing refreshes them) and b takes them; the
    // deadline is only the bound after which the test fails.
    eventually(20, "b to hold every partition", || async {
        let owners = lease_owners(&env).await;
        (owners.get("b") == Some(&usize::from(PARTITIONS))).then_some(())
    })
    .await;

    let until = killed_at.checked_add(ttl() + secs(3)).unwrap();
    for id in &ids {
        events.wait_for(20, "fires after the takeover", |e| queued(id)(e) && e.scheduled_for > Some(until)).await;
    }
    for id in &ids {
        assert_every_second_once(id, &events.fired(id));
        assert!(events.missed(id).is_empty(), "{id}: {:?}", events.missed(id));
    }
}

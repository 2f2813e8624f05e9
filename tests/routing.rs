//! Routing rules on a real nats-server, asserted from causes rather than
//! timing: round robin takes turns across the whole cluster (two
//! dispatchers share one rotation), routed runs keep their priority, a
//! worker runs exactly `--slots` runs at once, and every broadcast share
//! learns its shard index and the total.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use harness::*;
use jetsched_contract::{RunEvent, RunStatus, headers, run};
use jetsched_worker::{Invocation, Outcome};
use serde_json::json;
use tokio::sync::Semaphore;

fn worker(id: &str, builtins: &Builtins, f: impl FnOnce(&mut WorkerConfig)) -> ServicesConfig {
    let mut w = WorkerConfig { worker_id: Some(id.to_string()), ..WorkerConfig::default() };
    f(&mut w);
    ServicesConfig { ticker: None, dispatcher: None, worker: Some(w), builtins: builtins.clone(), ..Default::default() }
}

fn dispatcher() -> ServicesConfig {
    ServicesConfig { ticker: None, worker: None, ..ServicesConfig::default() }
}

/// A builtin that succeeds at once.
fn noop() -> Builtins {
    let mut b = Builtins::default();
    b.register("noop", |_inv: Invocation| async move { Outcome::ok(json!({})) });
    b
}

/// Submits one run of `task` and returns its `queued` event (runs are
/// submitted one after another, so turns are taken in submission order).
async fn submit_and_queue(env: &Env, events: &mut Events, task: &'static str, i: usize) -> RunEvent {
    let msg_id = format!("{task}-{i}");
    env.publish(env.names.submit_subject(task), &[(headers::NATS_MSG_ID, &msg_id)], "{}").await;
    let run_id = run::submitted_run_id(task, Some(&msg_id), 0);
    events
        .wait_for(20, &format!("run {run_id} to be queued"), move |e| {
            e.status == RunStatus::Queued && e.run_id.as_deref() == Some(&run_id)
        })
        .await
}

/// Every prefix of `order` gives each of `workers` the same count, give or take one.
fn assert_rotation_fair(order: &[String], workers: &[&str]) {
    let mut counts: BTreeMap<&str, usize> = workers.iter().map(|w| (*w, 0)).collect();
    for (n, w) in order.iter().enumerate() {
        *counts.get_mut(w.as_str()).unwrap_or_else(|| panic!("run {n} went to unknown queue {w}")) += 1;
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(max - min <= 1, "after {} runs the counts are {counts:?}; order: {order:?}", n + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns_across_dispatchers() {
    let env = Env::start().await;
    env.put_task("rr", json!({"handler": {"type": "builtin", "name": "noop"}, "routing": "round_robin"})).await;
    let ids = ["rr-a", "rr-b", "rr-c"];
    let builtins = noop();
    let _workers: Vec<Services> = ids.iter().map(|id| env.services_with(worker(id, &builtins, |_| {}))).collect();
    env.wait_for_workers(&ids).await;
    let queue = |e: &RunEvent| e.queue.clone().unwrap().strip_prefix("_w-").unwrap().to_string();
    let mut events = env.events().await;
    let mut order = Vec::new();

    // One dispatcher, then another one in its place, then a third: each
    // continues the rotation where the last one left it.
    for (phase, runs) in [4usize, 4, 5].into_iter().enumerate() {
        let d = env.services_with(dispatcher());
        for i in 0..runs {
            let e = submit_and_queue(&env, &mut events, "rr", phase * 10 + i).await;
            order.push(queue(&e));
        }
        d.stop().await;
    }
    assert_rotation_fair(&order, &ids);

    // Two dispatchers at once, sharing a burst: the counter hands out each
    // turn once, so 30 consecutive turns are 10 per worker.
    let _d1 = env.services_with(dispatcher());
    let _d2 = env.services_with(dispatcher());
    for i in 0..30 {
        env.publish(env.names.submit_subject("rr"), &[(headers::NATS_MSG_ID, &format!("burst-{i}"))], "{}").await;
    }
    let burst = events
        .wait_for_n(30, 30, "the burst to be queued", |e| {
            e.status == RunStatus::Queued && e.run_id.as_deref().is_some_and(|r| r.contains(".m-burst-"))
        })
        .await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &burst {
        *counts.entry(queue(e)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.to_string(), 10)).collect();
    assert_eq!(counts, expected, "two dispatchers share one rotation");
}

/// The queue and band in run `id`'s record.
async fn queue_and_band(env: &Env, id: &str) -> (String, u8) {
    let record = env.record(id).await;
    (record.queue, record.band)
}

/// A builtin `gated` that records the order in which runs enter it; a run
/// whose payload says `"block": true` then waits for a permit of the gate.
fn gated(entered: Arc<Mutex<Vec<String>>>, gate: Arc<Semaphore>) -> Builtins {
    let mut b = Builtins::default();
    b.register("gated", move |inv: Invocation| {
        let (entered, gate) = (entered.clone(), gate.clone());
        async move {
            entered.lock().unwrap().push(inv.run_id.clone());
            if inv.payload["block"] == json!(true) {
                gate.acquire().await.unwrap().forget();
            }
            Outcome::ok(json!({}))
        }
    });
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_high_priority_run_overtakes_a_routed_backlog() {
    let env = Env::start().await;
    env.put_task("routed", json!({"handler": {"type": "builtin", "name": "gated"}, "routing": "round_robin"})).await;
    let entered = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let builtins = gated(entered.clone(), gate.clone());
    let _w = env.services_with(worker("prio-1", &builtins, |w| w.slots = 1));
    env.wait_for_workers(&["prio-1"]).await;
    let _d = env.services_with(dispatcher());
    let mut events = env.events().await;
    let submit = |id: &'static str, importance: &'static str, body: &'static str| {
        let env = &env;
        async move {
            let h = [(headers::NATS_MSG_ID, id), (headers::IMPORTANCE, importance)];
            env.publish(env.names.submit_subject("routed"), &h, body).await;
            run::submitted_run_id("routed", Some(id), 0)
        }
    };

    // The worker's one slot is taken by a run held at the gate.
    let blocker = submit("blocker", "5", r#"{"block": true}"#).await;
    eventually(20, "the blocker to enter", || async { (entered.lock().unwrap().len() == 1).then_some(()) }).await;
    // Then a backlog of unimportant runs, then one important run.
    let mut low = Vec::new();
    for i in 0..5 {
        low.push(submit(["low-0", "low-1", "low-2", "low-3", "low-4"][i], "1", "{}").await);
    }
    let high = submit("high", "10", "{}").await;
    events.wait_for_n(7, 20, "every run to be queued", is("routed", RunStatus::Queued)).await;
    let (queue, high_band) = queue_and_band(&env, &high).await;
    let (low_queue, low_band) = queue_and_band(&env, &low[0]).await;
    assert_eq!((queue.as_str(), low_queue.as_str()), ("_w-prio-1", "_w-prio-1"), "both routed to the worker's queue");
    // The worker orders lanes by what it saw at its last look at them:
    // release the gate once it has seen the important run waiting.
    let band = high_band.to_string();
    eventually(20, "the worker to see the important run", || async {
        (metric_value("jetsched_backlog_messages", &[("queue", "_w-prio-1"), ("band", &band)]) >= 1.0).then_some(())
    })
    .await;
    gate.add_permits(1);

    events.wait_for_n(7, 30, "every run to finish", is("routed", RunStatus::Succeeded)).await;
    let order = entered.lock().unwrap().clone();
    assert_eq!(order.len(), 7, "{order:?}");
    assert_eq!(order[0], blocker);
    assert_eq!(
        order[1], high,
        "the importance-10 run (band {high_band}) goes before the importance-1 backlog (band {low_band}): {order:?}"
    );
}

/// Runs inside the handler now, and the most seen at once.
#[derive(Default)]
struct Occupancy {
    now: AtomicUsize,
    max: AtomicUsize,
    entries: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_three_slots_runs_exactly_three_at_once() {
    let env = Env::start().await;
    env.put_task("held", json!({"handler": {"type": "builtin", "name": "held"}})).await;
    let occupancy = Arc::new(Occupancy::default());
    let gate = Arc::new(Semaphore::new(0));
    let mut builtins = Builtins::default();
    let (o, g) = (occupancy.clone(), gate.clone());
    builtins.register("held", move |_inv: Invocation| {
        let (o, g) = (o.clone(), g.clone());
        async move {
            let inside = o.now.fetch_add(1, Ordering::SeqCst) + 1;
            o.max.fetch_max(inside, Ordering::SeqCst);
            o.entries.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            o.now.fetch_sub(1, Ordering::SeqCst);
            Outcome::ok(json!({}))
        }
    });
    let _w = env.services_with(worker("slots-3", &builtins, |w| w.slots = 3));
    let _d = env.services_with(dispatcher());
    let mut events = env.events().await;
    const RUNS: usize = 8;
    for _ in 0..RUNS {
        env.submit("held", "{}").await;
    }

    let entered = |n: usize| {
        let o = occupancy.clone();
        async move {
            eventually(20, &format!("{n} runs to enter"), || async {
                (o.entries.load(Ordering::SeqCst) >= n).then_some(())
            })
            .await
        }
    };
    entered(3).await;
    // Release one at a time: each exit lets exactly one more in.
    for n in 4..=RUNS {
        gate.add_permits(1);
        entered(n).await;
    }
    gate.add_permits(RUNS);
    events.wait_for_n(RUNS, 30, "every run to finish", is("held", RunStatus::Succeeded)).await;
    assert_eq!(occupancy.max.load(Ordering::SeqCst), 3, "three slots: three runs at once, never more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_shares_carry_each_workers_shard_index_and_the_total() {
    let env = Env::start().await;
    let mut calls = env.function("fn.shard", |_| Reply::Ok(json!({}))).await;
    env.put_task("shard-fn", json!({"handler": {"type": "nats", "subject": "fn.shard"}, "routing": "broadcast"})).await;
    let script = r#"echo "$JETSCHED_SHARD_INDEX/$JETSCHED_SHARD_TOTAL""#;
    env.put_task(
        "shard-exec",
        json!({"handler": {"type": "exec", "command": ["sh", "-c", script]}, "routing": "broadcast"}),
    )
    .await;
    let ids = ["shard-a", "shard-b", "shard-c"];
    let builtins = Builtins::default();
    let _w: Vec<Services> =
        ids.iter().map(|id| env.services_with(worker(id, &builtins, |w| w.allow_exec = vec!["sh".into()]))).collect();
    env.wait_for_workers(&ids).await;
    let _d = env.services_with(dispatcher());
    let mut events = env.events().await;

    env.submit("shard-fn", "{}").await;
    env.submit("shard-exec", "{}").await;

    // Shares are numbered over the matching workers in id order.
    let expected: BTreeMap<String, (u32, u32)> =
        ids.iter().enumerate().map(|(i, id)| (id.to_string(), (i as u32, 3))).collect();
    let share = |e: &RunEvent| -> u32 { e.run_id.as_deref().unwrap().rsplit_once(".w").unwrap().1.parse().unwrap() };
    let fn_done = events.wait_for_n(3, 20, "three function shares", is("shard-fn", RunStatus::Succeeded)).await;
    let mut by_run: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for _ in 0..3 {
        let c = calls.next_call(5).await;
        let index = c.header(headers::SHARD_INDEX).unwrap().parse().unwrap();
        let total = c.header(headers::SHARD_TOTAL).unwrap().parse().unwrap();
        by_run.insert(c.header(headers::RUN_ID).unwrap(), (index, total));
    }
    let got: BTreeMap<String, (u32, u32)> = fn_done
        .iter()
        .map(|e| {
            let seen = by_run[e.run_id.as_deref().unwrap()];
            assert_eq!(seen.0, share(e), "the share named .w<i> is told index i: {e:?}");
            (e.worker.clone().unwrap(), seen)
        })
        .collect();
    assert_eq!(got, expected, "function headers: each worker its own index, all the same total");

    let exec_done = events.wait_for_n(3, 20, "three exec shares", is("shard-exec", RunStatus::Succeeded)).await;
    let got: BTreeMap<String, (u32, u32)> = exec_done
        .iter()
        .map(|e| {
            let out = e.output.as_deref().unwrap().trim();
            let (i, n) = out.split_once('/').unwrap_or_else(|| panic!("output {out:?}"));
            let seen = (i.parse().unwrap(), n.parse().unwrap());
            assert_eq!(seen.0, share(e), "{e:?}");
            (e.worker.clone().unwrap(), seen)
        })
        .collect();
    assert_eq!(got, expected, "exec environment: each worker its own index, all the same total");
}

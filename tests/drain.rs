//! SIGTERM to real `jetsched` service processes: each drains and exits 0
//! within its grace period. A worker finishes the run it holds and takes
//! no new one (what it is offered while draining goes to the next worker);
//! a ticker hands its partitions back, so that another ticker fires at once
//! instead of after the lease TTL; a dispatcher stops and loses nothing;
//! `jetsched up` stopped by Ctrl-C lets its worker finish a staged run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use futures::StreamExt;
use harness::*;
use jetsched_contract::{RunEvent, RunRecord, RunStatus, headers};
use jiff::Timestamp;
use serde_json::json;

/// Sends SIGTERM to `child` and waits (at most `secs`) for it to exit 0.
async fn terminate(child: &mut tokio::process::Child, secs: u64) {
    stop_with(child, rustix::process::Signal::TERM, secs).await
}

/// Sends `signal` to `child` and waits (at most `secs`) for it to exit 0.
async fn stop_with(child: &mut tokio::process::Child, signal: rustix::process::Signal, secs: u64) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let status = within(secs, "the process to exit after the signal", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0), "exit status after {signal:?}: {status:?}");
}

fn runs_of<'a>(events: &'a Events, run_id: &'a str, status: RunStatus) -> Vec<&'a RunEvent> {
    events.seen.iter().map(|(_, e)| e).filter(|e| e.run_id.as_deref() == Some(run_id) && e.status == status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_its_run_takes_no_new_one_and_exits_0() {
    let env = Env::start().await;
    let mut calls = env.function("fn.slow", |_| Reply::After(Duration::from_secs(2), json!({}))).await;
    env.put_task("slow", json!({"handler": {"type": "nats", "subject": "fn.slow"}, "timeout": "30s"})).await;
    let _dispatcher = env.services_with(ServicesConfig { ticker: None, worker: None, ..ServicesConfig::default() });
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let mut worker = env.spawn_jetsched_logged(&["worker", "--worker-id", "w1", "--drain", "20s"], "info", &log);
    let mut events = env.events().await;

    env.publish(env.names.submit_subject("slow"), &[(headers::NATS_MSG_ID, "a")], "{}").await;
    let first = calls.next_call(30).await;
    let a = first.header(headers::RUN_ID).unwrap();
    // Run a is in its handler: stop the worker; once its heartbeat says it
    // is draining (dispatchers route nothing to it, the console shows it),
    // offer it run b.
    let mut presence = env.handles.workers.watch("w1").await.unwrap();
    let pid = rustix::process::Pid::from_raw(worker.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let draining = |entry: &async_nats::jetstream::kv::Entry| {
        entry.operation == async_nats::jetstream::kv::Operation::Put
            && serde_json::from_slice::<jetsched_contract::WorkerInfo>(&entry.value).unwrap().draining
    };
    within(10, "the heartbeat to say draining", async { while !draining(&presence.next().await.unwrap().unwrap()) {} })
        .await;
    env.publish(env.names.submit_subject("slow"), &[(headers::NATS_MSG_ID, "b")], "{}").await;
    let status = within(25, "the worker to exit within its drain", worker.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Its log counted the slot of the one run it held, not its standing
    // pull requests.
    let text = std::fs::read_to_string(&log).unwrap();
    let draining =
        text.lines().find(|l| l.contains("worker draining")).unwrap_or_else(|| panic!("no drain line:\n{text}"));
    assert!(draining.ends_with("busy_slots=1"), "{draining}");
    // Its entry went when it exited.
    within(10, "the worker's entry to go", async {
        while presence.next().await.unwrap().unwrap().operation == async_nats::jetstream::kv::Operation::Put {}
    })
    .await;

    // A second worker: b runs there, a is not run again.
    let services = env.services_with(ServicesConfig {
        ticker: None,
        dispatcher: None,
        worker: Some(WorkerConfig { worker_id: Some("w2".into()), ..WorkerConfig::default() }),
        ..ServicesConfig::default()
    });
    let b = events.wait_for(30, "run b done", is("slow", RunStatus::Succeeded)).await;
    let b = match b.run_id.as_deref() {
        Some(id) if id == a => events.wait_for(30, "run b done", is("slow", RunStatus::Succeeded)).await,
        _ => b,
    };
    let b = b.run_id.unwrap();
    assert_ne!(a, b);
    let started_a = runs_of(&events, &a, RunStatus::Started);
    assert_eq!(started_a.len(), 1, "{started_a:?}");
    assert_eq!(started_a[0].worker.as_deref(), Some("w1"));
    assert_eq!(runs_of(&events, &a, RunStatus::Succeeded).len(), 1, "run a finished during the drain");
    let started_b = runs_of(&events, &b, RunStatus::Started);
    assert_eq!(started_b.iter().map(|e| e.worker.as_deref()).collect::<Vec<_>>(), [Some("w2")], "{started_b:?}");
    services.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_ticker_hands_its_partitions_over_at_once() {
    let env = Env::start().await;
    let _fn = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    let _services = env.services_with(ServicesConfig { ticker: None, ..ServicesConfig::default() });
    let mut events = env.events().await;
    env.put_schedule("beat", json!({"every": "1s", "task": "tick"})).await;
    // Leases of a minute: a ticker that did not hand them back would keep
    // the others out for that long.
    let mut a = env.spawn_jetsched(&["ticker", "--ticker-id", "a", "--lease-ttl", "60s"]);
    let fired = |e: &RunEvent| e.status == RunStatus::Queued && e.schedule.as_deref() == Some("beat");
    events.wait_for_n(2, 30, "fires from ticker a", fired).await;
    terminate(&mut a, 20).await;
    let stopped = Timestamp::now();

    let _b = env.spawn_jetsched(&["ticker", "--ticker-id", "b", "--lease-ttl", "60s"]);
    // Well within the minute a's leases would have held.
    events.wait_for(30, "a fire from ticker b", |e| fired(e) && e.scheduled_for.is_some_and(|t| t > stopped)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_dispatcher_exits_0_and_loses_nothing() {
    let env = Env::start().await;
    let _fn = env.function("fn.d", |_| Reply::Ok(json!({}))).await;
    env.put_task("d", json!({"handler": {"type": "nats", "subject": "fn.d"}})).await;
    let _worker = env.services_with(ServicesConfig { ticker: None, dispatcher: None, ..ServicesConfig::default() });
    let mut events = env.events().await;
    let mut dispatcher = env.spawn_jetsched(&["dispatcher"]);
    env.submit("d", "{}").await;
    events.wait_for(30, "a run through the first dispatcher", is("d", RunStatus::Succeeded)).await;
    terminate(&mut dispatcher, 20).await;

    // Submitted with no dispatcher: kept in the inbox for the next one.
    env.submit("d", "{}").await;
    let _next = env.services_with(ServicesConfig { ticker: None, worker: None, ..ServicesConfig::default() });
    events.wait_for(30, "the run submitted meanwhile", is("d", RunStatus::Succeeded)).await;
}

/// Ctrl-C to `jetsched up --examples` while its worker holds a run staged
/// ahead of its time: the example functions answer until the worker has
/// drained, so the run succeeds. (They used to stop with the signal, and the
/// run failed with "no function is listening on examples.hello".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_stopped_by_ctrl_c_finishes_the_run_its_worker_holds_staged() {
    let env = Env::start().await;
    let kv = env.handles.js.get_key_value(env.names.runs_bucket()).await.unwrap();
    let mut up = env.spawn_jetsched(&["up", "--examples", "--quiet", "--console", "off", "--lookahead", "5s"]);
    // `hello-every-10s` fires every 10 s, each fire published 5 s ahead; a
    // worker claims it at once (its record says `started`) and holds it
    // until its time. Stop while one is held with time to spare.
    let mut records = kv.watch("s.hello-every-10s.>").await.unwrap();
    let staged = within(60, "a staged run of hello", async {
        loop {
            let entry = records.next().await.unwrap().unwrap();
            let Ok(record) = serde_json::from_slice::<RunRecord>(&entry.value) else { continue };
            let ahead = Timestamp::now() + jiff::SignedDuration::from_secs(2);
            if record.status == RunStatus::Started && record.scheduled_for.is_some_and(|t| t > ahead) {
                break record;
            }
        }
    })
    .await;
    stop_with(&mut up, rustix::process::Signal::INT, 30).await;
    let record = env.record(&staged.run_id).await;
    assert_eq!(
        (record.status, record.attempt, record.error.as_deref()),
        (RunStatus::Succeeded, 1, None),
        "the staged run {} after Ctrl-C",
        staged.run_id
    );
}

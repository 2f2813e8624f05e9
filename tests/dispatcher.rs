//! The dispatcher's rules on a real nats-server: priority with aging,
//! workflows (DAGs with trigger rules and results), time windows, label
//! routing and broadcast, concurrency limits across replicas, and a
//! dispatcher killed in the middle of a workflow. Overlap policies are in
//! `overlap.rs`, schedule dependencies in `depends.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::*;
use jetsched_contract::{RunRecord, RunStatus, headers};
use serde_json::json;

fn with_workers(workers: Vec<WorkerConfig>) -> Vec<ServicesConfig> {
    workers
        .into_iter()
        .map(|w| ServicesConfig { ticker: None, dispatcher: None, worker: Some(w), ..ServicesConfig::default() })
        .collect()
}

fn worker(id: &str, f: impl FnOnce(&mut WorkerConfig)) -> WorkerConfig {
    let mut w = WorkerConfig { worker_id: Some(id.to_string()), ..WorkerConfig::default() };
    f(&mut w);
    w
}

fn no_worker() -> ServicesConfig {
    ServicesConfig { worker: None, ..ServicesConfig::default() }
}

async fn record(env: &Env, run_id: &str) -> RunRecord {
    env.record(run_id).await
}

/// Waits until the workers bucket lists `n` workers (routing needs their heartbeats).
async fn wait_for_workers(env: &Env, n: usize) {
    let store = env.handles.workers.clone();
    eventually(20, "worker heartbeats", || {
        let store = store.clone();
        async move {
            use futures::StreamExt;
            let keys: Vec<_> = store.keys().await.ok()?.collect().await;
            (keys.len() >= n).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_saturation_higher_priority_runs_first_and_low_priority_is_not_starved() {
    let env = Env::start().await;
    let _fn = env.function("fn.work", |_| Reply::After(Duration::from_millis(100), json!({}))).await;
    // importance 10 is band 1, importance 1 band 8 (default weights).
    env.put_task("high", json!({"handler": {"type": "nats", "subject": "fn.work"}, "importance": 10})).await;
    env.put_task("low", json!({"handler": {"type": "nats", "subject": "fn.work"}, "importance": 1})).await;
    let step = Duration::from_millis(300);
    // One slot, 10 runs/s of capacity, important work arriving at 20/s:
    // strict priority would never run the unimportant run.
    let _services = env.services_with(ServicesConfig {
        worker: Some(worker("solo", |w| {
            w.slots = 1;
            w.aging_step = step;
        })),
        ..ServicesConfig::default()
    });
    let mut events = env.events().await;
    let feeder = {
        let (url, subject) = (env.url(), env.names.submit_subject("high"));
        tokio::spawn(async move {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for i in 0..400 {
                tick.tick().await;
                let _ = js.publish(subject.clone(), format!(r#"{{"i":{i}}}"#).into()).await;
            }
        })
    };
    events.wait_for_n(20, 20, "a backlog of important work", is("high", RunStatus::Queued)).await;
    env.submit("low", "{}").await;

    let low = events.wait_for(30, "the low-priority run to start", is("low", RunStatus::Started)).await;
    feeder.abort();
    let low_queued = events.seen_with("low", RunStatus::Queued)[0].at;
    // Workers serve the earliest virtual deadline (stored + band x aging
    // step): every important run queued more than (8 - 1) steps after the
    // unimportant one (plus the lane monitor's 250 ms) starts after it.
    let cutoff =
        low_queued.checked_add(jiff::SignedDuration::try_from(step * 7 + Duration::from_millis(500)).unwrap()).unwrap();
    let late_highs: Vec<String> = events
        .seen_with("high", RunStatus::Queued)
        .iter()
        .filter(|q| q.at > cutoff)
        .filter_map(|q| q.run_id.clone())
        .collect();
    let started_before_low = |id: &String| {
        events
            .seen
            .iter()
            .any(|(_, e)| e.status == RunStatus::Started && e.run_id.as_ref() == Some(id) && e.at < low.at)
    };
    assert!(late_highs.iter().all(|id| !started_before_low(id)), "important work queued after the bound went first");
    let highs_first =
        events.seen.iter().filter(|(_, e)| e.task == "high" && e.status == RunStatus::Started && e.at < low.at).count();
    assert!(highs_first >= 10, "important work ran first ({highs_first} runs)");
}

const DIAMOND: &str = r#"{"steps": {
    "a": {"task": "step-a"},
    "b": {"task": "step-b", "depends_on": ["a"]},
    "c": {"task": "step-c", "depends_on": ["a"]},
    "d": {"task": "step-d", "depends_on": ["b", "c"]}}}"#;

async fn step_tasks(env: &Env) {
    for s in ["a", "b", "c", "d"] {
        env.put_task(&format!("step-{s}"), json!({"handler": {"type": "nats", "subject": format!("fn.step.{s}")}}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_workflow_runs_in_order_with_fan_out_and_results_flowing_to_the_join() {
    let env = Env::start().await;
    let _a = env.function("fn.step.a", |_| Reply::Ok(json!({"from": "a"}))).await;
    let mut b = env.function("fn.step.b", |_| Reply::After(Duration::from_millis(400), json!({"from": "b"}))).await;
    let mut c = env.function("fn.step.c", |_| Reply::After(Duration::from_millis(400), json!({"from": "c"}))).await;
    let mut d = env.function("fn.step.d", |_| Reply::Ok(json!({"done": true}))).await;
    step_tasks(&env).await;
    env.kv_put(&env.names.tasks_bucket(), "diamond", DIAMOND).await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("diamond", r#"{"day":"mon"}"#).await;

    let done = events.wait_for(30, "the workflow to succeed", is("diamond", RunStatus::Succeeded)).await;
    let wf = done.run_id.unwrap();
    let ended = |task: &str| events.seen_with(task, RunStatus::Succeeded)[0].at;
    let started = |task: &str| events.seen_with(task, RunStatus::Started)[0].at;
    assert!(ended("step-a") <= started("step-b") && ended("step-a") <= started("step-c"), "a before b and c");
    assert!(started("step-b") < ended("step-c") && started("step-c") < ended("step-b"), "b and c ran in parallel");
    assert!(ended("step-b") <= started("step-d") && ended("step-c") <= started("step-d"), "d after b and c");
    let (call_b, call_c, call_d) = (b.next_call(5).await, c.next_call(5).await, d.next_call(5).await);
    assert_eq!(call_b.payload, json!({"workflow": {"day": "mon"}, "upstream": {"a": {"from": "a"}}}));
    assert_eq!(call_c.header(headers::RUN_ID), Some(format!("{wf}.c")));
    assert_eq!(
        call_d.payload,
        json!({"workflow": {"day": "mon"}, "upstream": {"b": {"from": "b"}, "c": {"from": "c"}}})
    );
    let state = record(&env, &wf).await.workflow.unwrap();
    assert!(state.steps.values().all(|s| s.status == Some(RunStatus::Succeeded)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_and_all_done_steps_behave_as_named() {
    let env = Env::start().await;
    let _x = env.function("fn.x", |_| Reply::Fail { error: "x broke".into(), retryable: false }).await;
    let _y = env.function("fn.y", |_| Reply::Ok(json!(1))).await;
    let mut alert = env.function("fn.alert", |_| Reply::Ok(json!({}))).await;
    let _cleanup = env.function("fn.cleanup", |_| Reply::Ok(json!({}))).await;
    for t in ["x", "y", "alert", "cleanup"] {
        env.put_task(t, json!({"handler": {"type": "nats", "subject": format!("fn.{t}")}})).await;
    }
    env.put_task(
        "guarded",
        json!({"steps": {
            "x": {"task": "x"}, "y": {"task": "y"},
            "alert": {"task": "alert", "depends_on": ["x", "y"], "trigger": "one_failed"},
            "cleanup": {"task": "cleanup", "depends_on": ["x", "y"], "trigger": "all_done"},
            "report": {"task": "y", "depends_on": ["x", "y"], "trigger": "none_failed"}
        }}),
    )
    .await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("guarded", "{}").await;

    let wf = events.wait_for(30, "the workflow to end", |e| e.task == "guarded" && e.status == RunStatus::Dead).await;
    let wf = wf.run_id.unwrap();
    let steps = record(&env, &wf).await.workflow.unwrap().steps;
    assert_eq!(steps["alert"].status, Some(RunStatus::Succeeded), "one_failed ran after x failed");
    assert_eq!(steps["cleanup"].status, Some(RunStatus::Succeeded), "all_done ran whatever the outcomes");
    assert_eq!(steps["report"].status, Some(RunStatus::Skipped), "none_failed could not hold");
    // one_failed starts at the first failure: y may not have finished yet.
    let call = alert.next_call(5).await;
    let upstream = call.payload["upstream"].as_object().unwrap();
    assert!(upstream.contains_key("x") && upstream.contains_key("y"), "{upstream:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_failed_upstream_marks_its_dependents_skipped() {
    let env = Env::start().await;
    let _a = env.function("fn.step.a", |_| Reply::Fail { error: "nope".into(), retryable: false }).await;
    step_tasks(&env).await;
    env.kv_put(&env.names.tasks_bucket(), "diamond", DIAMOND).await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("diamond", "{}").await;

    events.wait_for(30, "the workflow to fail", is("diamond", RunStatus::Dead)).await;
    for (t, why) in [("step-b", "a failed"), ("step-c", "a failed"), ("step-d", "was skipped")] {
        let skipped = events.seen_with(t, RunStatus::Skipped);
        assert_eq!(skipped.len(), 1, "{t} skipped once");
        assert!(skipped[0].error.as_deref().unwrap().contains(why), "{skipped:?}");
        assert!(events.seen_with(t, RunStatus::Started).is_empty(), "{t} never started");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclic_workflow_is_reported_invalid() {
    let env = Env::start().await;
    let _services = env.services();
    let mut events = env.events().await;
    env.kv_put(
        &env.names.tasks_bucket(),
        "loop",
        r#"{"steps": {"a": {"task": "t", "depends_on": ["b"]}, "b": {"task": "t", "depends_on": ["a"]}}}"#,
    )
    .await;
    let invalid =
        events.wait_for(15, "invalid", |e| e.status == RunStatus::Invalid && e.key.as_deref() == Some("loop")).await;
    assert!(invalid.error.as_deref().unwrap().contains("cycle"), "{invalid:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_task_submitted_outside_its_window_runs_when_it_opens_even_across_a_dispatcher_restart() {
    let env = Env::start().await;
    let _fn = env.function("fn.office", |_| Reply::Ok(json!({}))).await;
    let opens = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(4)).unwrap();
    let civil = jiff::tz::TimeZone::UTC.to_datetime(opens);
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][civil.weekday().to_monday_zero_offset() as usize];
    let range = format!("{:02}:{:02}:{:02}-23:59:59", civil.hour(), civil.minute(), civil.second());
    env.kv_put(&env.names.windows_bucket(), "office", &json!({"weekly": {day: [range]}}).to_string()).await;
    env.put_task("office-work", json!({"handler": {"type": "nats", "subject": "fn.office"}, "window": "office"})).await;
    let first = env.services();
    let mut events = env.events().await;

    env.submit("office-work", "{}").await;
    events.wait_for(15, "the run to be queued (deferred)", is("office-work", RunStatus::Queued)).await;
    first.stop().await;
    let _second = env.services();

    let started = events.wait_for(20, "the run to start", is("office-work", RunStatus::Started)).await;
    let opened = jiff::Timestamp::from_second(opens.as_second()).unwrap();
    assert!(started.at >= opened, "started at {} before the window opened at {opened}", started.at);
    events.wait_for(10, "the run to succeed", is("office-work", RunStatus::Succeeded)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_requiring_a_label_runs_only_on_that_worker_and_waits_while_it_is_busy() {
    let env = Env::start().await;
    env.put_task(
        "train",
        json!({"handler": {"type": "exec", "command": ["sleep", "0.3"]}, "requires": {"labels": {"gpu": "true"}}}),
    )
    .await;
    let _d = env.services_with(no_worker());
    let workers = with_workers(vec![
        worker("cpu-box", |w| {
            w.slots = 4;
            w.allow_exec = vec!["sleep".into()];
        }),
        worker("gpu-box", |w| {
            w.slots = 1;
            w.labels = vec![("gpu".into(), "true".into())];
            w.allow_exec = vec!["sleep".into()];
        }),
    ]);
    let _w: Vec<Services> = workers.into_iter().map(|c| env.services_with(c)).collect();
    wait_for_workers(&env, 2).await;
    let mut events = env.events().await;

    for _ in 0..3 {
        env.submit("train", "{}").await;
    }

    let done = events.wait_for_n(3, 30, "three trainings", is("train", RunStatus::Succeeded)).await;
    assert!(done.iter().all(|e| e.worker.as_deref() == Some("gpu-box")), "{done:?}");
    let mut spans: Vec<(jiff::Timestamp, jiff::Timestamp)> = events
        .seen_with("train", RunStatus::Started)
        .iter()
        .map(|s| {
            let end = done.iter().find(|d| d.run_id == s.run_id).unwrap().at;
            (s.at, end)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "one slot: runs wait for each other {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_runs_once_per_matching_worker() {
    let env = Env::start().await;
    let mut calls = env.function("fn.cache-flush", |_| Reply::Ok(json!({}))).await;
    env.put_task("flush", json!({"handler": {"type": "nats", "subject": "fn.cache-flush"}, "routing": "broadcast"}))
        .await;
    let _d = env.services_with(no_worker());
    let _w: Vec<Services> =
        with_workers(vec![worker("node-1", |_| {}), worker("node-2", |_| {}), worker("node-3", |_| {})])
            .into_iter()
            .map(|c| env.services_with(c))
            .collect();
    wait_for_workers(&env, 3).await;
    let mut events = env.events().await;

    env.submit("flush", "{}").await;

    let done = events.wait_for_n(3, 20, "three shares", is("flush", RunStatus::Succeeded)).await;
    let mut workers: Vec<String> = done.iter().map(|e| e.worker.clone().unwrap()).collect();
    workers.sort();
    assert_eq!(workers, vec!["node-1", "node-2", "node-3"]);
    let mut shards: Vec<(String, String)> = (0..3)
        .map(|_| calls.calls.try_recv().unwrap())
        .map(|c| (c.header(headers::SHARD_INDEX).unwrap(), c.header(headers::SHARD_TOTAL).unwrap()))
        .collect();
    shards.sort();
    assert_eq!(shards, vec![("0".into(), "3".into()), ("1".into(), "3".into()), ("2".into(), "3".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_of_one_per_customer_holds_across_two_dispatchers_and_two_workers() {
    let env = Env::start().await;
    let mut calls = env.function("fn.bill", |_| Reply::After(Duration::from_millis(150), json!({}))).await;
    env.put_task(
        "bill",
        json!({"handler": {"type": "nats", "subject": "fn.bill"}, "concurrency": {"key": "{{payload.customer}}", "limit": 1}}),
    )
    .await;
    let _d1 = env.services_with(no_worker());
    let _d2 = env.services_with(ServicesConfig { ticker: None, worker: None, ..ServicesConfig::default() });
    let _w: Vec<Services> = with_workers(vec![worker("w1", |w| w.slots = 8), worker("w2", |w| w.slots = 8)])
        .into_iter()
        .map(|c| env.services_with(c))
        .collect();
    let mut events = env.events().await;

    for i in 0..6 {
        for customer in ["acme", "globex"] {
            env.submit("bill", &json!({"customer": customer, "n": i}).to_string()).await;
        }
    }

    events.wait_for_n(12, 60, "every bill", is("bill", RunStatus::Succeeded)).await;
    let customer_of: HashMap<String, String> = calls
        .drain()
        .into_iter()
        .map(|c| (c.header(headers::RUN_ID).unwrap(), c.payload["customer"].as_str().unwrap().to_string()))
        .collect();
    // A worker takes the key's slot before the run's `started` event and
    // frees it after its `succeeded` event is stored: in the events stream's
    // order, each customer's runs start and succeed in turn, never two open.
    let mut open: HashMap<String, Option<String>> = HashMap::new();
    let mut runs: HashMap<String, usize> = HashMap::new();
    for (_, e) in events.seen.iter().filter(|(_, e)| e.task == "bill") {
        let run = e.run_id.clone().unwrap();
        let customer = customer_of[&run].clone();
        let holder = open.entry(customer.clone()).or_default();
        match e.status {
            RunStatus::Started => {
                assert_eq!(*holder, None, "{customer}: {run} started while another run was open");
                *holder = Some(run);
                *runs.entry(customer).or_default() += 1;
            }
            RunStatus::Succeeded => {
                assert_eq!(holder.as_deref(), Some(run.as_str()), "{customer}: {run} ended but was not the open run");
                *holder = None;
            }
            _ => {}
        }
    }
    assert_eq!(runs, HashMap::from([("acme".to_string(), 6), ("globex".to_string(), 6)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_dispatcher_mid_workflow_loses_no_step_and_runs_none_twice() {
    let env = Env::start().await;
    let mut fns = Vec::new();
    for s in ["a", "b", "c", "d"] {
        fns.push(env.function(&format!("fn.step.{s}"), |_| Reply::After(Duration::from_millis(300), json!({}))).await);
    }
    step_tasks(&env).await;
    env.kv_put(&env.names.tasks_bucket(), "diamond", DIAMOND).await;
    let _workers = env.services_with(ServicesConfig { ticker: None, dispatcher: None, ..ServicesConfig::default() });
    let mut doomed = env.spawn_jetsched(&["dispatcher"]);
    let mut events = env.events().await;

    env.submit("diamond", "{}").await;
    events.wait_for(20, "step a to start", is("step-a", RunStatus::Started)).await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let _survivor = env.spawn_jetsched(&["dispatcher"]);

    events.wait_for(40, "the workflow to succeed", is("diamond", RunStatus::Succeeded)).await;
    for (s, f) in ["a", "b", "c", "d"].iter().zip(fns.iter_mut()) {
        let n = f.drain().len();
        assert_eq!(n, 1, "step {s} ran {n} times");
    }
}

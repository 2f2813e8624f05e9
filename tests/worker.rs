//! Workers on a real nats-server: every handler type succeeding and failing,
//! HTTP retry rules, timeouts, schedule-to-start expiry, long handlers kept
//! alive, a worker killed mid-run, cancellation and DLQ replay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use harness::*;
use jetsched_contract::{RunEvent, RunRecord, RunStatus, headers};
use jetsched_worker::{Invocation, Outcome};
use serde_json::json;

fn worker_with(f: impl FnOnce(&mut WorkerConfig)) -> ServicesConfig {
    let mut worker = WorkerConfig::default();
    f(&mut worker);
    ServicesConfig { worker: Some(worker), ..ServicesConfig::default() }
}

async fn record(env: &Env, run_id: &str) -> RunRecord {
    env.record(run_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_handler_gets_the_payload_on_stdin_and_reports_output_and_exit_codes() {
    let env = Env::start().await;
    env.put_task("cat", json!({"handler": {"type": "exec", "command": ["cat"]}})).await;
    env.put_task("boom", json!({"handler": {"type": "exec", "command": ["sh", "-c", "echo boom >&2; exit 3"]}})).await;
    env.put_task("sneaky", json!({"handler": {"type": "exec", "command": ["/bin/cat"]}})).await;
    let _services = env.services_with(worker_with(|w| w.allow_exec = vec!["cat".into(), "sh".into()]));
    let mut events = env.events().await;

    env.submit("cat", r#"{"x":1}"#).await;
    env.submit("boom", "{}").await;
    env.submit("sneaky", "{}").await;

    let ok = events.wait_for(20, "cat to succeed", is("cat", RunStatus::Succeeded)).await;
    assert_eq!(ok.output.as_deref(), Some(r#"{"x":1}"#));
    let dead = events.wait_for(20, "boom to die", is("boom", RunStatus::Dead)).await;
    assert_eq!(dead.attempt, 1, "a non-zero exit other than 75 is permanent");
    assert!(dead.error.as_deref().unwrap().contains("exited with 3"), "{dead:?}");
    assert!(dead.output.as_deref().unwrap().contains("boom"), "{dead:?}");
    let refused = events.wait_for(20, "sneaky to be refused", is("sneaky", RunStatus::Dead)).await;
    assert!(refused.error.as_deref().unwrap().contains("not allow-listed"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_handlers_succeed_and_fail() {
    let env = Env::start().await;
    let mut builtins = Builtins::default();
    builtins.register("double", |inv: Invocation| async move {
        Outcome::ok(json!({"n": inv.payload["n"].as_i64().unwrap_or(0) * 2}))
    });
    builtins.register("refuse", |_inv: Invocation| async move { Outcome::permanent("not today") });
    env.put_task("double", json!({"handler": {"type": "builtin", "name": "double"}})).await;
    env.put_task("refuse", json!({"handler": {"type": "builtin", "name": "refuse"}})).await;
    env.put_task("missing", json!({"handler": {"type": "builtin", "name": "nope"}})).await;
    let _services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;

    env.submit("double", r#"{"n":21}"#).await;
    env.submit("refuse", "{}").await;
    env.submit("missing", "{}").await;

    let doubled = events.wait_for(20, "double to succeed", is("double", RunStatus::Succeeded)).await;
    let run = record(&env, doubled.run_id.as_deref().unwrap()).await;
    assert_eq!(run.result, Some(json!({"n": 42})), "the handler's result is kept in the record");
    let refused = events.wait_for(20, "refuse to die", is("refuse", RunStatus::Dead)).await;
    assert_eq!(refused.error.as_deref(), Some("not today"));
    let missing = events.wait_for(20, "missing to die", is("missing", RunStatus::Dead)).await;
    assert!(missing.error.as_deref().unwrap().contains("no builtin handler"), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handler_posts_the_payload_with_run_headers() {
    let env = Env::start().await;
    let mut stub = HttpStub::start(vec![(200, vec![])]).await;
    env.put_task("hook", json!({"handler": {"type": "http", "url": stub.url, "headers": {"X-Team": "payments"}}}))
        .await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("hook", r#"{"order":42}"#).await;

    let req = stub.next_request(20).await;
    let done = events.wait_for(20, "hook to succeed", is("hook", RunStatus::Succeeded)).await;
    assert_eq!(req.method, "POST");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&req.body).unwrap(), json!({"order": 42}));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header(headers::RUN_ID), done.run_id.as_deref());
    assert_eq!(req.header("idempotency-key"), done.run_id.as_deref());
    assert_eq!(req.header("x-team"), Some("payments"));
    assert!(req.header("traceparent").is_some(), "the webhook joins the run's trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_with_retry_after_is_retried_after_that_delay() {
    let env = Env::start().await;
    let mut stub = HttpStub::start(vec![(503, vec![("Retry-After", "2")]), (200, vec![])]).await;
    env.put_task(
        "flaky-hook",
        json!({"handler": {"type": "http", "url": stub.url}, "retry": {"max_attempts": 3, "initial_backoff": "100ms"}}),
    )
    .await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("flaky-hook", "{}").await;

    let first = stub.next_request(20).await;
    let second = stub.next_request(20).await;
    let done = events.wait_for(20, "the retry to succeed", is("flaky-hook", RunStatus::Succeeded)).await;
    assert_eq!(done.attempt, 2);
    // The retry is announced for Retry-After (2 s), not the task's 100 ms
    // backoff, and the second request does not come before it.
    let failed = events.seen_with("flaky-hook", RunStatus::Failed);
    let due = failed[0].retry_at.expect("the failure says when the retry is due");
    assert_eq!(due.duration_since(failed[0].at), jiff::SignedDuration::from_secs(2));
    assert!(second.at >= due, "retried at {}, before Retry-After's {due}", second.at);
    let _ = first;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_is_not_retried() {
    let env = Env::start().await;
    let mut stub = HttpStub::start(vec![(400, vec![])]).await;
    env.put_task("bad-hook", json!({"handler": {"type": "http", "url": stub.url}, "retry": {"max_attempts": 5}})).await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("bad-hook", "{}").await;

    let dead = events.wait_for(20, "bad-hook to die", is("bad-hook", RunStatus::Dead)).await;
    assert_eq!(dead.attempt, 1);
    assert!(dead.error.as_deref().unwrap().contains("400"), "{dead:?}");
    stub.next_request(5).await;
    assert!(stub.requests.try_recv().is_err(), "a 400 is never sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_over_its_timeout_is_stopped_and_retried() {
    let env = Env::start().await;
    env.put_task(
        "slow",
        json!({
            "handler": {"type": "exec", "command": ["sleep", "30"]},
            "timeout": "1s",
            "retry": {"max_attempts": 2, "initial_backoff": "100ms"}
        }),
    )
    .await;
    let _services = env.services_with(worker_with(|w| w.allow_exec = vec!["sleep".into()]));
    let mut events = env.events().await;

    env.submit("slow", "{}").await;

    let failed = events.wait_for(20, "the first attempt to time out", is("slow", RunStatus::Failed)).await;
    assert!(failed.error.as_deref().unwrap().contains("timed out after 1s"), "{failed:?}");
    let dead = events.wait_for(20, "the retry to time out too", is("slow", RunStatus::Dead)).await;
    assert_eq!(dead.attempt, 2);
    for e in [failed, dead] {
        assert!(e.duration_ms.unwrap() < 5_000, "the command was stopped, not waited for: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_not_started_within_schedule_to_start_expires() {
    let env = Env::start().await;
    let _fn = env.function("fn.late", |_| Reply::Ok(json!({}))).await;
    env.put_task("late", json!({"handler": {"type": "nats", "subject": "fn.late"}, "schedule_to_start": "1s"})).await;
    // No worker yet: the run waits in its queue past its start deadline.
    let _dispatcher = env.services_with(ServicesConfig { worker: None, ..ServicesConfig::default() });
    let mut events = env.events().await;
    env.submit("late", "{}").await;
    let queued = events.wait_for(20, "the run to be queued", is("late", RunStatus::Queued)).await;
    let deadline = queued.at.checked_add(jiff::SignedDuration::from_millis(1200)).unwrap();
    eventually(10, "the start deadline to pass", || async move { (jiff::Timestamp::now() > deadline).then_some(()) })
        .await;

    let _worker = env.services_with(ServicesConfig { ticker: None, dispatcher: None, ..ServicesConfig::default() });

    let expired = events.wait_for(20, "the run to expire", is("late", RunStatus::Expired)).await;
    assert!(expired.error.as_deref().unwrap().contains("schedule_to_start"), "{expired:?}");
    assert_eq!(env.dead_letters("late").await.len(), 1, "the expired run is kept for replay");
    assert_eq!(record(&env, expired.run_id.as_deref().unwrap()).await.status, RunStatus::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_second_handler_with_two_second_ack_wait_is_not_redelivered_while_alive() {
    let env = Env::start().await;
    env.put_task("long", json!({"handler": {"type": "exec", "command": ["sleep", "10"]}, "timeout": "30s"})).await;
    let _services = env.services_with(worker_with(|w| {
        w.allow_exec = vec!["sleep".into()];
        w.ack_wait = Duration::from_secs(2);
    }));
    let mut events = env.events().await;

    env.submit("long", "{}").await;

    let done = events.wait_for(30, "the long run to succeed", is("long", RunStatus::Succeeded)).await;
    assert_eq!(done.attempt, 1);
    assert!(done.duration_ms.unwrap() >= 10_000);
    assert_eq!(events.seen_with("long", RunStatus::Started).len(), 1, "never redelivered while alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_run_gives_exactly_one_more_attempt_with_the_last_checkpoint() {
    let env = Env::start().await;
    // Attempt 1 never answers (its worker dies); attempt 2 answers.
    let mut calls = env
        .function("fn.resumable", |c| {
            if c.header(headers::ATTEMPT).as_deref() == Some("1") { Reply::Silent } else { Reply::Ok(json!({})) }
        })
        .await;
    env.put_task("resumable", json!({"handler": {"type": "nats", "subject": "fn.resumable"}, "timeout": "1m"})).await;
    let _dispatcher = env.services_with(ServicesConfig { worker: None, ..ServicesConfig::default() });
    let mut doomed = env.spawn_jetsched(&["worker", "--ack-wait", "2s"]);
    let mut events = env.events().await;

    env.submit("resumable", "{}").await;
    let first = calls.next_call(20).await;
    let run_id = first.header(headers::RUN_ID).unwrap();
    // The function saves progress the way any function can: a KV put.
    env.handles.checkpoints.put(&run_id, r#"{"step":7}"#.into()).await.unwrap();
    // The worker calls the handler before it stores the start (a first
    // attempt's start is stored once it has run --record-started-after):
    // kill it only once attempt 1's start is stored, so that it counts.
    eventually(20, "attempt 1's start to be stored", || async {
        let r = env.runs.get(&run_id).await.ok()??.record;
        (r.status == RunStatus::Started && r.attempt == 1).then_some(())
    })
    .await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let _survivor = env.spawn_jetsched(&["worker", "--ack-wait", "2s"]);

    let second = calls.next_call(30).await;
    assert_eq!(second.header(headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(second.header(headers::CHECKPOINT).as_deref(), Some(r#"{"step":7}"#));
    let done = events.wait_for(30, "the second attempt to succeed", is("resumable", RunStatus::Succeeded)).await;
    assert_eq!(done.attempt, 2);
    assert!(calls.drain().is_empty(), "exactly one more attempt");
    assert_eq!(events.seen_with("resumable", RunStatus::Started).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_exec_handler() {
    let env = Env::start().await;
    env.put_task("forever", json!({"handler": {"type": "exec", "command": ["sleep", "60"]}, "timeout": "5m"})).await;
    let _services = env.services_with(worker_with(|w| w.allow_exec = vec!["sleep".into()]));
    let mut events = env.events().await;
    env.submit("forever", "{}").await;
    let started = events.wait_for(20, "the run to start", is("forever", RunStatus::Started)).await;
    let run_id = started.run_id.unwrap();

    let (code, out, err) = env.jetsched(&["runs", "cancel", &run_id]).await;
    assert_eq!(code, 0, "{out}{err}");

    let cancelled = events.wait_for(15, "the run to be cancelled", is("forever", RunStatus::Cancelled)).await;
    assert!(cancelled.duration_ms.unwrap() < 15_000);
    assert_eq!(record(&env, &run_id).await.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_a_dead_run_succeeds_once_the_function_is_fixed() {
    let env = Env::start().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let _fn = env
        .function("fn.buggy", move |_| {
            if flag.load(Ordering::SeqCst) {
                Reply::Ok(json!({}))
            } else {
                Reply::Fail { error: "bug".into(), retryable: false }
            }
        })
        .await;
    env.put_task("buggy", json!({"handler": {"type": "nats", "subject": "fn.buggy"}})).await;
    let _services = env.services();
    let mut events = env.events().await;
    env.submit("buggy", r#"{"order":7}"#).await;
    let dead = events.wait_for(20, "the run to die", is("buggy", RunStatus::Dead)).await;
    let dead_run = dead.run_id.unwrap();
    let seq = env.dead_letters("buggy").await[0].info().unwrap().stream_sequence;

    fixed.store(true, Ordering::SeqCst);
    let (code, out, err) = env.jetsched(&["dlq", "replay", &seq.to_string()]).await;
    assert_eq!(code, 0, "{out}{err}");

    let done = events.wait_for(20, "the replay to succeed", is("buggy", RunStatus::Succeeded)).await;
    let replayed = record(&env, done.run_id.as_deref().unwrap()).await;
    assert_eq!(replayed.replay_of.as_deref(), Some(dead_run.as_str()));
    assert!(out.contains(done.run_id.as_deref().unwrap()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_run_cancelled_before_its_time_never_reaches_its_function() {
    let env = Env::start().await;
    let mut calls = env.function("fn.later", |_| Reply::Ok(json!({}))).await;
    env.put_task("later", json!({"handler": {"type": "nats", "subject": "fn.later"}})).await;
    let _services = env.services();
    let mut events = env.events().await;
    let not_before = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(4)).unwrap();
    env.publish(env.names.submit_subject("later"), &[(headers::NOT_BEFORE, &not_before.to_string())], "{}").await;
    let queued = events.wait_for(20, "the run to be queued", is("later", RunStatus::Queued)).await;
    let run_id = queued.run_id.unwrap();
    // The worker claims a run when it stages it, before its time.
    eventually(10, "the run to be staged", || {
        let env = &env;
        let run_id = run_id.clone();
        async move { record(env, &run_id).await.worker.map(|_| ()) }
    })
    .await;

    let (code, out, err) = env.jetsched(&["runs", "cancel", &run_id]).await;
    assert_eq!(code, 0, "{out}{err}");

    let cancelled = events.wait_for(15, "the run to be cancelled", is("later", RunStatus::Cancelled)).await;
    assert_eq!(cancelled.error.as_deref(), Some("cancelled before it started"));
    assert!(jiff::Timestamp::now() < not_before, "cancelled before its release time");
    // A run staged for just after it is released; by its call the
    // cancelled run's time has passed without a call.
    let after = not_before.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
    env.publish(env.names.submit_subject("later"), &[(headers::NOT_BEFORE, &after.to_string())], "{}").await;
    let call = calls.next_call(20).await;
    assert_ne!(
        call.header(headers::RUN_ID).as_deref(),
        Some(run_id.as_str()),
        "a cancelled staged run is not released"
    );
    assert!(call.at >= after);
    assert!(calls.drain().is_empty());
    assert_eq!(record(&env, &run_id).await.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_handler_with_no_function_listening_fails_saying_so() {
    let env = Env::start().await;
    env.put_task(
        "orphan",
        json!({"handler": {"type": "nats", "subject": "fn.nobody"}, "retry": {"max_attempts": 2, "initial_backoff": "100ms"}}),
    )
    .await;
    let _services = env.services();
    let mut events = env.events().await;
    env.submit("orphan", "{}").await;
    let failed = events.wait_for(20, "the first attempt to fail", is("orphan", RunStatus::Failed)).await;
    assert_eq!(failed.error.as_deref(), Some("no function is listening on fn.nobody"));
    let dead = events.wait_for(20, "the run to die", is("orphan", RunStatus::Dead)).await;
    assert_eq!(dead.attempt, 2, "no responders is a retryable failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_arriving_at_once_on_two_bands_of_a_one_slot_worker_runs_back_to_back() {
    let env = Env::start().await;
    let _fn = env.function("fn.slow", |_| Reply::After(Duration::from_secs(1), json!({}))).await;
    env.put_task("urgent", json!({"handler": {"type": "nats", "subject": "fn.slow"}, "importance": 10})).await;
    env.put_task("bulk", json!({"handler": {"type": "nats", "subject": "fn.slow"}, "importance": 0})).await;
    let _services = env.services_with(worker_with(|w| w.slots = 1));
    let mut events = env.events().await;
    // An idle worker stands a pull request on every band: both runs reach
    // it at once, and the one it has no slot for goes back to the stream.
    let stream = env.handles.js.get_stream(env.names.tasks_stream()).await.unwrap();
    for band in [0, 9] {
        let name = env.names.worker_consumer("default", band);
        eventually(10, "a standing pull request", || {
            let stream = stream.clone();
            let name = name.clone();
            async move {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(&name).await.ok()?;
                (consumer.info().await.ok()?.num_waiting > 0).then_some(())
            }
        })
        .await;
    }
    env.submit("urgent", "{}").await;
    env.submit("bulk", "{}").await;
    let first = events.wait_for(20, "one run to succeed", |e| e.status == RunStatus::Succeeded).await;
    let second = events.wait_for(20, "the other run to succeed", |e| e.status == RunStatus::Succeeded).await;
    assert_ne!(first.task, second.task);
    // The ack wait (30 s) is longer than these deadlines (20 s): a message
    // that waited for it, instead of being handed back, fails the test.
    assert_eq!(second.attempt, 1, "a message handed back is not an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_consumers_the_server_forgot_creates_them_again() {
    let env = Env::start().await;
    let _fn = env.function("fn.again", |_| Reply::Ok(json!({}))).await;
    env.put_task("again", json!({"handler": {"type": "nats", "subject": "fn.again"}})).await;
    let _services = env.services();
    let mut events = env.events().await;
    let first = env.submit("again", "{}").await;
    events
        .wait_for(30, "a run before", |e| {
            e.status == RunStatus::Succeeded && e.run_id.as_deref() == Some(&format!("t.again.q{first}"))
        })
        .await;

    // The server forgets every worker consumer (as a lost store would).
    let stream = env.handles.js.get_stream(env.names.tasks_stream()).await.unwrap();
    let consumers: Vec<String> = stream.consumer_names().map(|c| c.unwrap()).collect().await;
    let workers: Vec<&String> = consumers.iter().filter(|c| c.contains("default")).collect();
    assert!(!workers.is_empty(), "worker consumers exist: {consumers:?}");
    for name in &workers {
        stream.delete_consumer(name).await.unwrap();
    }

    let second = env.submit("again", "{}").await;
    let run_id = format!("t.again.q{second}");
    events
        .wait_for(60, "a run after the consumers were deleted", |e| {
            e.status == RunStatus::Succeeded && e.run_id.as_deref() == Some(&run_id)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_on_while_the_events_stream_is_away_and_their_failures_are_stored_when_it_returns() {
    let env = Env::start().await;
    let _ok = env.function("fn.away", |_| Reply::Ok(json!({}))).await;
    // Fails every first attempt, then succeeds.
    let _flaky = env
        .function("fn.flaky", |call| match call.header(headers::ATTEMPT).as_deref() {
            Some("1") => Reply::Fail { error: "first try".into(), retryable: true },
            _ => Reply::Ok(json!({})),
        })
        .await;
    env.put_task("away", json!({"handler": {"type": "nats", "subject": "fn.away"}})).await;
    env.put_task(
        "flaky",
        json!({"handler": {"type": "nats", "subject": "fn.flaky"}, "retry": {"initial_backoff": "100ms"}}),
    )
    .await;
    let _services = env.services();
    // The events stream stops taking jetsched's events (as while it has no
    // leader: publishes find no stream); the runs bucket and the other
    // streams go on.
    let mut stream = env.handles.js.get_stream(env.names.events_stream()).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    let elsewhere = async_nats::jetstream::stream::Config { subjects: vec!["elsewhere.>".into()], ..config.clone() };
    env.handles.js.update_stream(elsewhere).await.unwrap();
    // Successful runs store no event: they go on and end `succeeded`.
    for i in 0..3 {
        let id = format!("t.away.q{}", env.submit("away", &format!(r#"{{"i":{i}}}"#)).await);
        eventually(60, "the run to succeed without the events stream", || async {
            (env.runs.get(&id).await.ok()??.record.status == RunStatus::Succeeded).then_some(())
        })
        .await;
    }
    // A failed attempt's event must be kept: its retry waits for it.
    let mut flaky = Vec::new();
    for i in 0..2 {
        flaky.push(format!("t.flaky.q{}", env.submit("flaky", &format!(r#"{{"i":{i}}}"#)).await));
    }
    for id in &flaky {
        eventually(60, "the first attempt to fail", || async {
            (env.runs.get(id).await.ok()??.record.status == RunStatus::Failed).then_some(())
        })
        .await;
    }
    env.handles.js.update_stream(config).await.unwrap();
    // Once the stream is back, each failure is stored, and only then does the
    // next attempt run.
    for id in &flaky {
        let record = eventually(60, "the retry to succeed", || async {
            let r = env.runs.get(id).await.ok()??.record;
            (r.status == RunStatus::Succeeded).then_some(r)
        })
        .await;
        assert_eq!(record.attempt, 2, "{record:?}");
        let stored = env.stored_events().await;
        let failed: Vec<&RunEvent> =
            stored.iter().filter(|e| e.run_id.as_deref() == Some(id) && e.status == RunStatus::Failed).collect();
        assert_eq!(failed.len(), 1, "the failure of {id} is stored once: {stored:?}");
        assert_eq!(failed[0].attempt, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_processes_are_bounded_by_exec_slots_not_by_slots() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // `holder` runs until the test releases it; `second` notes whether it
    // ran while `holder` was running.
    let holder = r#"touch "$D/a"; while [ ! -e "$D/release" ]; do sleep 0.02; done; touch "$D/a_done""#;
    let second = r#"if [ -e "$D/a" ] && [ ! -e "$D/a_done" ]; then touch "$D/overlap"; fi; touch "$D/b""#;
    for (task, script) in [("holder", holder), ("second", second)] {
        env.put_task(
            task,
            json!({"handler": {"type": "exec", "command": ["sh", "-c", script], "env": {"D": d}}, "timeout": "60s"}),
        )
        .await;
    }
    let _services = env.services_with(worker_with(|w| {
        w.allow_exec = vec!["sh".into()];
        w.slots = 8;
        w.exec_slots = Some(1);
    }));
    let mut events = env.events().await;
    env.submit("holder", "{}").await;
    eventually(30, "holder's process to start", || async { dir.path().join("a").exists().then_some(()) }).await;
    env.submit("second", "{}").await;
    // `second` holds a slot (it has started) but waits for a process slot.
    events.wait_for(30, "second to start", is("second", RunStatus::Started)).await;
    assert!(!dir.path().join("b").exists(), "second's process ran while holder held the only process slot");
    std::fs::write(dir.path().join("release"), "").unwrap();
    events.wait_for(30, "holder to succeed", is("holder", RunStatus::Succeeded)).await;
    events.wait_for(30, "second to succeed", is("second", RunStatus::Succeeded)).await;
    assert!(!dir.path().join("overlap").exists(), "two exec processes ran at once with --exec-slots 1");
}

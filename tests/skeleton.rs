//! The walking skeleton, end to end on a real nats-server: what a user does
//! with raw NATS operations (the `nats` CLI's KV put, publish) is fired,
//! dispatched, executed and reported. Each test shows one behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::*;
use jetsched_contract::{RunStatus, headers};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_schedule_fires_runs_with_distinct_ids_one_second_apart() {
    let env = Env::start().await;
    let _fn = env.function("fn.tick", |_| Reply::Ok(json!({"ok": true}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    env.put_schedule("every-second", json!({"every": "1s", "task": "tick"})).await;
    let _services = env.services();
    let mut events = env.events().await;

    let runs = events.wait_for_n(3, 20, "three succeeded runs", is("tick", RunStatus::Succeeded)).await;

    let ids: std::collections::HashSet<_> = runs.iter().map(|e| e.run_id.clone().unwrap()).collect();
    assert_eq!(ids.len(), 3, "run ids must be distinct: {ids:?}");
    let mut nominal: Vec<_> = runs.iter().map(|e| e.scheduled_for.expect("scheduled_for")).collect();
    nominal.sort();
    for pair in nominal.windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]), jiff::SignedDuration::from_secs(1), "{nominal:?}");
    }
    assert!(runs.iter().all(|e| e.schedule.as_deref() == Some("every-second") && e.attempt == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_updated_then_deleted_by_raw_kv_changes_then_stops() {
    let env = Env::start().await;
    let mut calls = env.function("fn.echo", |_| Reply::Ok(json!({}))).await;
    env.put_task("echo", json!({"handler": {"type": "nats", "subject": "fn.echo"}})).await;
    env.put_schedule("s", json!({"every": "1s", "task": "echo", "payload": {"v": 1}})).await;
    let _services = env.services();

    within(15, "a run with v=1", async { while calls.next_call(15).await.payload != json!({"v": 1}) {} }).await;
    env.put_schedule("s", json!({"every": "1s", "task": "echo", "payload": {"v": 2}})).await;
    within(15, "a run with v=2 after the update", async {
        while calls.next_call(15).await.payload != json!({"v": 2}) {}
    })
    .await;

    env.kv_del(&env.names.schedules_bucket(), "s").await;
    let deleted_at = jiff::Timestamp::now();
    // Fires already staged ahead of their time (the ticker's lookahead) still run.
    let staged = jiff::SignedDuration::try_from(TickerConfig::default().lookahead).unwrap();
    let cutoff = deleted_at.checked_add(staged + jiff::SignedDuration::from_secs(1)).unwrap();
    // A second schedule proves time passed with the ticker alive: if `s`
    // were still loaded it would fire alongside.
    let mut events = env.events().await;
    env.put_schedule("marker", json!({"every": "1s", "task": "echo", "payload": {"marker": true}})).await;
    let beyond = cutoff.checked_add(jiff::SignedDuration::from_secs(2)).unwrap();
    let marker = events
        .wait_for(15, "a marker fire past the cutoff", |e| {
            e.status == RunStatus::Queued
                && e.schedule.as_deref() == Some("marker")
                && e.scheduled_for.is_some_and(|t| t > beyond)
        })
        .await;
    let late = events.seen.iter().filter(|(_, e)| {
        e.status == RunStatus::Queued
            && e.schedule.as_deref() == Some("s")
            && e.scheduled_for.is_some_and(|t| t > cutoff)
    });
    assert_eq!(late.count(), 0, "deleted schedule kept firing while marker fired at {:?}", marker.scheduled_for);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_submission_runs_with_its_payload_and_the_function_gets_the_run_id() {
    let env = Env::start().await;
    let mut calls = env.function("fn.resize", |_| Reply::Ok(json!({"done": true}))).await;
    env.put_task("resize-image", json!({"handler": {"type": "nats", "subject": "fn.resize"}, "timeout": "10s"})).await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("resize-image", r#"{"key":"a.png"}"#).await;

    let call = calls.next_call(15).await;
    assert_eq!(call.payload, json!({"key": "a.png"}));
    let done = events.wait_for(15, "succeeded", is("resize-image", RunStatus::Succeeded)).await;
    let run_id = done.run_id.unwrap();
    assert_eq!(call.header(headers::RUN_ID).as_deref(), Some(run_id.as_str()));
    assert_eq!(call.header(headers::ATTEMPT).as_deref(), Some("1"));
    let deadline: jiff::Timestamp = call.header(headers::DEADLINE).expect("deadline header").parse().unwrap();
    assert!(deadline > call.at && deadline <= call.at.checked_add(jiff::SignedDuration::from_secs(10)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_function_is_retried_with_backoff_then_dead_lettered() {
    let env = Env::start().await;
    let mut calls = env.function("fn.broken", |_| Reply::Fail { error: "disk on fire".into(), retryable: true }).await;
    env.put_task(
        "broken",
        json!({
            "handler": {"type": "nats", "subject": "fn.broken"},
            "retry": {"max_attempts": 3, "initial_backoff": "500ms", "multiplier": 2.0, "jitter": 0.0}
        }),
    )
    .await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("broken", r#"{"n":1}"#).await;

    let dead = events.wait_for(30, "dead", is("broken", RunStatus::Dead)).await;
    assert_eq!(dead.attempt, 3);
    assert!(dead.error.as_deref().unwrap().contains("disk on fire"), "{dead:?}");
    let failed = events.seen_with("broken", RunStatus::Failed);
    assert_eq!(failed.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2]);

    // Backoff: each failure announces its retry 500 ms, then 1 s, later
    // (no jitter), and the next attempt does not start before it.
    let delays: Vec<jiff::SignedDuration> = failed.iter().map(|e| e.retry_at.unwrap().duration_since(e.at)).collect();
    assert_eq!(delays, vec![jiff::SignedDuration::from_millis(500), jiff::SignedDuration::from_secs(1)]);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let call = calls.next_call(5).await;
        attempts.push((call.header(jetsched_contract::headers::ATTEMPT).unwrap(), call.at));
    }
    assert_eq!(attempts.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), vec!["1", "2", "3"]);
    for (f, next) in failed.iter().zip(&attempts[1..]) {
        let due = f.retry_at.unwrap();
        assert!(next.1 >= due, "attempt {} started at {} before its retry was due at {due}", next.0, next.1);
    }
    assert!(calls.drain().is_empty(), "no attempt after the last one");
    assert_eq!(dead.retry_at, None, "no retry after the last attempt");

    let dlq = env.dead_letters("broken").await;
    assert_eq!(dlq.len(), 1);
    let reason = dlq[0].headers.as_ref().unwrap().get(headers::REASON).unwrap().as_str().to_string();
    assert!(reason.contains("disk on fire"), "{reason}");
    let item: jetsched_contract::WorkItem = serde_json::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(item.payload, json!({"n": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_submission_is_rejected_and_kept_in_the_dlq() {
    let env = Env::start().await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("no-such-task", r#"{"keep":"me"}"#).await;

    let rejected = events.wait_for(15, "rejected", is("no-such-task", RunStatus::Rejected)).await;
    assert!(rejected.error.as_deref().unwrap().contains("unknown task"), "{rejected:?}");
    let dlq = env.dead_letters("no-such-task").await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(&dlq[0].payload[..], br#"{"keep":"me"}"#);
    let h = dlq[0].headers.as_ref().unwrap();
    assert_eq!(h.get(headers::ORIGINAL_SUBJECT).unwrap().as_str(), "jetsched.submit.no-such-task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submission_body_is_rejected_and_the_dispatcher_carries_on() {
    let env = Env::start().await;
    let _fn = env.function("fn.ok", |_| Reply::Ok(json!({}))).await;
    env.put_task("t", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    let _services = env.services();
    let mut events = env.events().await;

    env.submit("t", "{not json").await;
    env.submit("t", r#"{"fine":true}"#).await;

    let rejected = events.wait_for(15, "rejected", is("t", RunStatus::Rejected)).await;
    assert!(rejected.error.as_deref().unwrap().contains("malformed body"), "{rejected:?}");
    events.wait_for(15, "the next submission to succeed", is("t", RunStatus::Succeeded)).await;
    assert_eq!(env.dead_letters("t").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schedules_get_invalid_events_while_others_keep_firing() {
    let env = Env::start().await;
    let _fn = env.function("fn.ok", |_| Reply::Ok(json!({}))).await;
    env.put_task("t", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    let _services = env.services();
    let mut events = env.events().await;
    let bucket = env.names.schedules_bucket();

    env.put_schedule("good", json!({"every": "1s", "task": "t"})).await;
    env.kv_put(&bucket, "bad-cron", r#"{"cron": "61 * * * *", "task": "t"}"#).await;
    env.kv_put(&bucket, "bad-json", "{nope").await;
    env.kv_put(&bucket, "unknown-field", r#"{"every": "1s", "task": "t", "colour": "red"}"#).await;
    env.kv_put(&bucket, "bad.name", r#"{"every": "1s", "task": "t"}"#).await;

    let invalid = events.wait_for_n(4, 15, "four invalid events", |e| e.status == RunStatus::Invalid).await;
    let reason = |key: &str| {
        invalid
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.error.clone())
            .unwrap_or_else(|| panic!("no invalid event for {key}: {invalid:?}"))
    };
    assert!(reason("bad-cron").contains("minutes"));
    assert!(reason("bad-json").contains("malformed schedule"));
    assert!(reason("unknown-field").contains("colour"));
    assert!(reason("bad.name").contains("invalid schedule name"));
    assert!(invalid.iter().all(|e| e.bucket.as_deref() == Some(bucket.as_str())));

    events
        .wait_for_n(2, 15, "the good schedule to keep running", |e| {
            e.status == RunStatus::Succeeded && e.schedule.as_deref() == Some("good")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_task_definition_gets_an_invalid_event_and_its_submissions_are_rejected() {
    let env = Env::start().await;
    let _services = env.services();
    let mut events = env.events().await;

    env.kv_put(&env.names.tasks_bucket(), "half", r#"{"handler": {"type": "nats"}}"#).await;
    let invalid =
        events.wait_for(15, "invalid", |e| e.status == RunStatus::Invalid && e.key.as_deref() == Some("half")).await;
    assert!(invalid.error.as_deref().unwrap().contains("subject"), "{invalid:?}");

    env.submit("half", "{}").await;
    let rejected = events.wait_for(15, "rejected", is("half", RunStatus::Rejected)).await;
    assert!(rejected.error.as_deref().unwrap().contains("invalid definition"), "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_due_events_for_the_same_fire_run_once() {
    let env = Env::start().await;
    let mut calls = env.function("fn.once", |_| Reply::Ok(json!({}))).await;
    env.put_task("once", json!({"handler": {"type": "nats", "subject": "fn.once"}})).await;
    let due = r#"{"schedule": "nightly", "scheduled_for": "2026-11-25T02:30:00Z", "payload": {}}"#;
    let subject = env.names.due_subject("once");

    // The same Nats-Msg-Id twice: the stream stores one.
    let msg_id = "nightly@2026-11-25T02:30:00Z";
    let first = env.publish(subject.clone(), &[(headers::NATS_MSG_ID, msg_id)], due).await;
    let second = env.publish(subject.clone(), &[(headers::NATS_MSG_ID, msg_id)], due).await;
    assert_eq!(first, second, "the second publish is a duplicate of the first");
    // The same fire under another id (as if re-published after the dedup
    // window): the run-id gate in jetsched-runs drops it.
    env.publish(subject.clone(), &[(headers::NATS_MSG_ID, "replayed-later")], due).await;

    let _services = env.services();
    let mut events = env.events().await;
    events.wait_for(15, "the run to succeed", is("once", RunStatus::Succeeded)).await;
    // A later submission that also succeeds shows the dispatcher has handled
    // everything published before it.
    env.submit("once", r#"{"marker":true}"#).await;
    within(15, "the marker run", async {
        loop {
            let (_, e) = events.next().await;
            if e.status == RunStatus::Succeeded && e.schedule.is_none() {
                return;
            }
        }
    })
    .await;
    let scheduled_calls = calls.drain().into_iter().filter(|c| c.header(headers::SCHEDULE).is_some()).count();
    assert_eq!(scheduled_calls, 1, "the fire ran {scheduled_calls} times");
    assert_eq!(
        events.seen_with("once", RunStatus::Queued).len(),
        2,
        "one queued event for the fire, one for the marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_health_port_is_taken_stops_and_names_the_flag() {
    let env = Env::start().await;
    // Another replica on this host holds the port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let (code, _, err) = env.jetsched(&["worker", "--http-addr", &addr]).await;
    assert_ne!(code, 0, "a second service on a taken port does not run without its probes");
    assert!(err.contains("--http-addr") && err.contains(&addr), "the message names the flag and the address: {err}");
}

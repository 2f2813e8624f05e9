//! The ticker and the `jetsched schedule` verbs on a real nats-server: pause
//! and resume, trigger, preview across DST, staging ahead of time, and
//! max_runs kept across a restart. Crash and takeover behaviour is in
//! `ticker_crash.rs`. Each test shows one behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::*;
use jetsched_contract::{RunEvent, RunStatus, headers};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// A ticker that publishes each fire at its time (no staging) with short leases.
fn prompt_ticker() -> ServicesConfig {
    let ticker =
        TickerConfig { lookahead: Duration::ZERO, lease_ttl: Duration::from_secs(2), ..TickerConfig::default() };
    ServicesConfig { ticker: Some(ticker), ..ServicesConfig::default() }
}

fn queued(schedule: &'static str) -> impl Fn(&RunEvent) -> bool {
    move |e| e.status == RunStatus::Queued && e.schedule.as_deref() == Some(schedule)
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_schedule_does_not_fire_and_resumes_on_time() {
    let env = Env::start().await;
    let _fn = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    env.put_schedule("p", json!({"every": "1s", "task": "tick"})).await;
    env.put_schedule("marker", json!({"every": "1s", "task": "tick"})).await;
    let _services = env.services_with(prompt_ticker());
    let mut events = env.events().await;
    events.wait_for(15, "a fire before the pause", queued("p")).await;

    let (code, out, err) = env.jetsched(&["schedule", "pause", "p"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paused"), "{out}");
    let paused_at = Timestamp::now();
    // The marker schedule shows the ticker alive and time passing.
    let quiet_until = paused_at.checked_add(secs(3)).unwrap();
    events
        .wait_for(15, "marker fires while paused", |e| queued("marker")(e) && e.scheduled_for > Some(quiet_until))
        .await;

    let (code, out, err) = env.jetsched(&["schedule", "resume", "p"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let resumed_at = Timestamp::now();
    let next = events.wait_for(15, "the first fire after resuming", |e| {
        queued("p")(e) && e.scheduled_for > Some(paused_at.checked_add(secs(1)).unwrap())
    });
    let next = next.await.scheduled_for.unwrap();

    // The pause took effect within the fire in progress when it was written.
    assert!(next > resumed_at.checked_sub(secs(1)).unwrap(), "fired at {next} while paused");
    // On time: the first occurrence after resuming, not a catch-up of those skipped.
    assert!(next <= resumed_at.checked_add(secs(1)).unwrap(), "first fire after resume at {next}");
    assert!(events.missed("p").is_empty(), "pausing is not a misfire");
    let (_, out, _) = env.jetsched(&["schedule", "resume", "p"]).await;
    assert!(out.contains("already running"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_runs_a_schedule_once_now_under_its_own_run_id() {
    let env = Env::start().await;
    let mut calls = env.function("fn.report", |_| Reply::Ok(json!({}))).await;
    env.put_task("report", json!({"handler": {"type": "nats", "subject": "fn.report"}})).await;
    // New Year's midnight only: no regular fire during the test.
    env.put_schedule("yearly", json!({"cron": "@yearly", "task": "report", "payload": {"kind": "yearly"}})).await;
    let _services = env.services_with(prompt_ticker());
    let mut events = env.events().await;

    let before = Timestamp::now();
    let (code, out, err) = env.jetsched(&["schedule", "trigger", "yearly", "--payload", r#"{"kind": "now"}"#]).await;
    assert_eq!(code, 0, "{out}{err}");
    let run_id = out.trim().to_string();
    assert!(run_id.starts_with("s.yearly."), "{run_id}");

    let done = events.wait_for(15, "the triggered run", is("report", RunStatus::Succeeded)).await;
    assert_eq!(done.run_id.as_deref(), Some(run_id.as_str()));
    let nominal = done.scheduled_for.unwrap();
    assert!(nominal >= before.checked_sub(SignedDuration::from_millis(1)).unwrap() && nominal <= Timestamp::now());
    let call = calls.next_call(5).await;
    assert_eq!(call.payload, json!({"kind": "now"}));
    assert_eq!(call.header(headers::RUN_ID).as_deref(), Some(run_id.as_str()));

    // A second trigger is another run.
    let (_, again, _) = env.jetsched(&["schedule", "trigger", "yearly"]).await;
    assert_ne!(again.trim(), run_id);
    let (code, _, err) = env.jetsched(&["schedule", "trigger", "no-such-schedule"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_utc_and_zone_times_across_spring_forward() {
    let env = Env::start().await;
    let spec = r#"{"cron": "30 2 * * *", "timezone": "America/New_York", "task": "t"}"#;
    let (code, out, err) =
        env.jetsched(&["schedule", "preview", "--spec", spec, "--from", "2026-03-07T00:00:00Z", "-n", "3"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("America/New_York") && lines[0].contains("gap shift"), "{out}");
    assert!(lines[2].contains("2026-03-07T07:30:00Z") && lines[2].contains("02:30:00 -05:00 EST"), "{out}");
    // 02:30 does not exist on 2026-03-08: shifted to 03:30 EDT.
    assert!(lines[3].contains("2026-03-08T07:30:00Z") && lines[3].contains("03:30:00 -04:00 EDT"), "{out}");
    assert!(lines[3].contains("DST gap"), "{out}");
    assert!(lines[4].contains("2026-03-09T06:30:00Z") && lines[4].contains("02:30:00 -04:00 EDT"), "{out}");

    // A stored schedule previews the same way.
    env.put_schedule("ny", serde_json::from_str(spec).unwrap()).await;
    let (code, stored, _) =
        env.jetsched(&["schedule", "preview", "ny", "--from", "2026-03-07T00:00:00Z", "-n", "3"]).await;
    assert_eq!(code, 0);
    assert_eq!(stored, out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_fire_is_queued_ahead_of_its_time_and_starts_on_time() {
    let env = Env::start().await;
    let mut calls = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    let lookahead = Duration::from_secs(3);
    let ticker = TickerConfig { lookahead, ..TickerConfig::default() };
    let _services = env.services_with(ServicesConfig { ticker: Some(ticker), ..ServicesConfig::default() });
    let mut events = env.events().await;
    let put_at = Timestamp::now();
    env.put_schedule("staged", json!({"every": "1s", "task": "tick"})).await;

    // The fires due within a lookahead of the put are released at once, as
    // soon as the schedule is seen; every later one is staged a lookahead
    // before it is due.
    let staged_from = put_at.checked_add(lookahead + Duration::from_secs(1)).unwrap();
    let queued = events
        .wait_for_n(3, 20, "three staged fires", |e| queued("staged")(e) && e.scheduled_for > Some(staged_from))
        .await;
    let late: Vec<&RunEvent> = queued.iter().filter(|e| Some(e.at) >= e.scheduled_for).collect();
    assert!(late.is_empty(), "fires are queued before their time: {late:?}");
    for _ in 0..3 {
        let call = calls.next_call(10).await;
        let nominal: Timestamp = call.header(headers::SCHEDULED_FOR).unwrap().parse().unwrap();
        assert!(call.at >= nominal, "handler started at {} before its time {nominal}", call.at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runs_schedule_fires_that_many_times_across_a_ticker_restart() {
    let env = Env::start().await;
    let _fn = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    env.put_task("tick", json!({"handler": {"type": "nats", "subject": "fn.tick"}})).await;
    env.put_schedule("thrice", json!({"every": "1s", "task": "tick", "max_runs": 3})).await;
    env.put_schedule("marker", json!({"every": "1s", "task": "tick"})).await;
    let mut events = env.events().await;

    let services = env.services_with(prompt_ticker());
    events.wait_for_n(2, 15, "two fires", queued("thrice")).await;
    services.stop().await;
    let services = env.services_with(prompt_ticker());
    let third = events.wait_for(15, "the third fire", queued("thrice")).await.scheduled_for.unwrap();
    let later = third.checked_add(secs(3)).unwrap();
    events
        .wait_for(15, "marker fires well after the third", |e| queued("marker")(e) && e.scheduled_for > Some(later))
        .await;

    assert_eq!(events.fired("thrice").len(), 3, "{:?}", events.fired("thrice"));
    services.stop().await;
}

/// What a withdrawal test does to schedule `w` once one of its runs started.
enum Change {
    Delete,
    Pause,
    /// `end_at` before the fires already staged.
    Disable,
    /// Another task from the next fire on.
    Edit,
}

/// `w` fires every second, staged 2 s ahead; right after one of its runs
/// starts (fire N), `change` is made. Asserted from the events stream: no
/// run of the old definition starts after the change is acknowledged (a run
/// that started before it may), the fire of N + 1, staged when the change
/// was made, ends `cancelled` instead; an edit runs its new task from N + 1.
async fn staged_fires_are_withdrawn_on(change: Change) {
    let env = Env::start().await;
    let _old = env.function("fn.old", |_| Reply::Ok(json!({}))).await;
    let _new = env.function("fn.new", |_| Reply::Ok(json!({}))).await;
    env.put_task("old", json!({"handler": {"type": "nats", "subject": "fn.old"}})).await;
    env.put_task("new", json!({"handler": {"type": "nats", "subject": "fn.new"}})).await;
    env.put_task("mark", json!({"handler": {"type": "nats", "subject": "fn.new"}})).await;
    let ticker = TickerConfig { lookahead: Duration::from_secs(2), ..TickerConfig::default() };
    let _services = env.services_with(ServicesConfig { ticker: Some(ticker), ..ServicesConfig::default() });
    let mut events = env.events().await;
    env.put_schedule("w", json!({"every": "1s", "task": "old"})).await;
    // Shows time passing after the change.
    env.put_schedule("marker", json!({"every": "1s", "task": "mark"})).await;

    let n = events.wait_for(20, "a run of w", is("old", RunStatus::Started)).await.scheduled_for.unwrap();
    let bucket = env.names.schedules_bucket();
    match change {
        Change::Delete => env.kv_del(&bucket, "w").await,
        Change::Pause => {
            let (code, out, err) = env.jetsched(&["schedule", "pause", "w"]).await;
            assert_eq!(code, 0, "{out}{err}");
        }
        Change::Disable => {
            let end = n.checked_add(SignedDuration::from_millis(500)).unwrap();
            env.put_schedule("w", json!({"every": "1s", "task": "old", "end_at": end.to_string()})).await;
        }
        Change::Edit => env.put_schedule("w", json!({"every": "1s", "task": "new"})).await,
    }
    let acked = Timestamp::now();
    let next = n.checked_add(secs(1)).unwrap();

    // Past every fire that was staged when the change was made.
    let past = n.checked_add(secs(3)).unwrap();
    events
        .wait_for(20, "marker fires after the staged ones", |e| {
            e.task == "mark" && e.status == RunStatus::Started && e.scheduled_for > Some(past)
        })
        .await;
    let late: Vec<&RunEvent> = events
        .seen
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.task == "old" && e.status == RunStatus::Started && e.scheduled_for > Some(n) && e.at > acked)
        .collect();
    assert!(late.is_empty(), "runs of the old definition started after the change at {acked}: {late:?}");

    let withdrawn = events
        .wait_for(20, "the staged fire of N + 1 withdrawn", |e| {
            e.task == "old" && e.status == RunStatus::Cancelled && e.scheduled_for == Some(next)
        })
        .await;
    assert!(withdrawn.error.is_some(), "{withdrawn:?}");
    if let Change::Edit = change {
        let replaced = events.wait_for(20, "the new definition's fire of N + 1", is("new", RunStatus::Started)).await;
        assert_eq!(replaced.scheduled_for, Some(next), "the edit takes effect from the next fire: {replaced:?}");
        let rev = replaced.run_id.as_deref().unwrap().rsplit_once(".r").map(|(_, r)| r.parse::<u64>());
        assert!(matches!(rev, Some(Ok(_))), "a replacement carries the new revision: {replaced:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_schedule_withdraws_its_staged_fires() {
    staged_fires_are_withdrawn_on(Change::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_schedule_withdraws_its_staged_fires() {
    staged_fires_are_withdrawn_on(Change::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_schedule_withdraws_its_staged_fires() {
    staged_fires_are_withdrawn_on(Change::Disable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_schedule_replaces_its_staged_fires_from_the_next_one() {
    staged_fires_are_withdrawn_on(Change::Edit).await;
}

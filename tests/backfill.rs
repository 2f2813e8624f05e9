//! Backfills on a real nats-server: the real `jetsched schedule backfill`
//! over a range crossing a DST change in Europe/Berlin (fires computed in
//! the schedule's zone, under the ticker's own run ids; a second backfill of
//! the same range starts nothing), a backfill written with `nats kv put`
//! whose ticker is SIGKILLed in the middle (the next ticker resumes it and
//! every occurrence runs once), and a cancelled backfill.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use harness::*;
use jetsched_contract::{Backfill, BackfillStatus, RunEvent, RunStatus, ScheduleDef};
use jiff::Timestamp;
use serde_json::json;

fn queued(schedule: &'static str) -> impl Fn(&RunEvent) -> bool {
    move |e| e.status == RunStatus::Queued && e.schedule.as_deref() == Some(schedule)
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

async fn record(env: &Env, id: &str) -> Option<Backfill> {
    let value = env.kv_get(&env.names.backfills_bucket(), id).await?;
    Some(serde_json::from_slice(&value).unwrap())
}

async fn inbox_last_sequence(env: &Env) -> u64 {
    let mut inbox = env.handles.js.get_stream(env.names.inbox_stream()).await.unwrap();
    inbox.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_across_a_dst_change_fires_each_night_once_and_a_second_one_starts_nothing() {
    let env = Env::start().await;
    let _fn = env.function("fn.night", |_| Reply::Ok(json!({}))).await;
    let _services = env.services();
    env.put_task("night", json!({"handler": {"type": "nats", "subject": "fn.night"}})).await;
    // Paused: only the backfill fires it.
    env.put_schedule(
        "nightly",
        json!({"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "task": "night", "paused": true}),
    )
    .await;
    let mut events = env.events().await;

    // 02:30 in Berlin: 01:30Z in winter time; on 29 March 2026 02:30 does
    // not exist (clocks jump from 02:00 to 03:00) and the default gap policy
    // shifts it to 03:30 CEST, 01:30Z; from 30 March, summer time, 00:30Z.
    let expected: Vec<Timestamp> = [
        "2026-03-26T01:30:00Z",
        "2026-03-27T01:30:00Z",
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:30:00Z",
        "2026-03-30T00:30:00Z",
        "2026-03-31T00:30:00Z",
        "2026-04-01T00:30:00Z",
        "2026-04-02T00:30:00Z",
    ]
    .iter()
    .map(|s| t(s))
    .collect();
    let args = ["schedule", "backfill", "nightly", "--from", "2026-03-26", "--to", "2026-04-02", "--id", "march"];
    let (code, out, err) = env.jetsched(&args).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("backfill march done: fired 8, already ran 0, skipped 0 (of 8)"), "{out}");
    events.wait_for_n(8, 30, "the backfilled runs to succeed", is("night", RunStatus::Succeeded)).await;
    assert_eq!(events.fired("nightly"), expected, "each night once, at its instant in the schedule's zone");
    let run_ids: BTreeSet<String> =
        events.seen_with("night", RunStatus::Queued).into_iter().filter_map(|e| e.run_id).collect();
    assert!(run_ids.contains("s.nightly.20260329T013000Z"), "the ticker's own run ids: {run_ids:?}");
    let done = events
        .wait_for(10, "the backfill's done event", |e| {
            e.status == RunStatus::Backfill && e.backfill.as_ref().is_some_and(|b| b.status == BackfillStatus::Done)
        })
        .await;
    assert_eq!(done.backfill.unwrap().progress.fired, 8);

    // --dry-run lists them as already run, the shifted one marked.
    let dry = ["schedule", "backfill", "nightly", "--from", "2026-03-26", "--to", "2026-04-02", "--dry-run"];
    let (code, out, _) = env.jetsched(&dry).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("already ran (succeeded)").count(), 8, "{out}");
    assert!(out.lines().any(|l| l.contains("2026-03-29T01:30:00Z") && l.contains("DST gap")), "{out}");
    assert!(out.contains("would fire 0, already ran 8, skipped 0 (of 8)"), "{out}");

    // The same range again: every run exists, nothing is published.
    let before = inbox_last_sequence(&env).await;
    let again = ["schedule", "backfill", "nightly", "--from", "2026-03-26", "--to", "2026-04-02", "--id", "again"];
    let (code, out, err) = env.jetsched(&again).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("backfill again done: fired 0, already ran 8, skipped 0 (of 8)"), "{out}");
    assert_eq!(inbox_last_sequence(&env).await, before, "the second backfill published nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_whose_ticker_is_killed_in_the_middle_is_resumed_and_runs_each_occurrence_once() {
    let env = Env::start().await;
    let _fn = env.function("fn.hour", |_| Reply::After(Duration::from_millis(100), json!({}))).await;
    let _services = env.services_with(ServicesConfig { ticker: None, ..ServicesConfig::default() });
    env.put_task("hour", json!({"handler": {"type": "nats", "subject": "fn.hour"}})).await;
    let schedule = json!({"cron": "0 0 * * * *", "timezone": "Europe/Berlin", "task": "hour", "paused": true});
    env.put_schedule("hourly", schedule.clone()).await;
    let mut events = env.events().await;
    // Across the night the clocks go back (25 October 2026).
    let (from, to) = (t("2026-10-24T18:00:00Z"), t("2026-10-26T06:00:00Z"));
    let def = ScheduleDef::from_json("hourly", schedule.to_string().as_bytes()).unwrap();
    let calendar = def.calendar().unwrap();
    let expected: Vec<Timestamp> = calendar
        .iter_after(from.checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap())
        .take_while(|x| *x <= to)
        .collect();
    // 37 hours, but 02:00 local happens twice on the 25th and fires once
    // (dst.fold "first"): 36 fires.
    assert_eq!(expected.len(), 36);

    let mut first = env.spawn_ticker("first", &[]);
    // What a user writes with `nats kv put jetsched-backfills resume '{...}'`.
    let request = json!({"schedule": "hourly", "from": from, "to": to, "max_in_flight": 1});
    env.kv_put(&env.names.backfills_bucket(), "resume", &request.to_string()).await;
    eventually(60, "the backfill to be under way", || async {
        let r = record(&env, "resume").await?;
        (r.status == BackfillStatus::Running && r.progress.is_some_and(|p| p.handled() >= 5)).then_some(())
    })
    .await;
    first.start_kill().unwrap();
    within(10, "the ticker to die", first.wait()).await.unwrap();
    let cut = record(&env, "resume").await.unwrap().progress.unwrap().handled();
    assert!(cut < expected.len() as u64, "killed in the middle ({cut} handled)");

    let _second = env.spawn_ticker("second", &[]);
    let done = eventually(120, "the backfill to finish", || async {
        let r = record(&env, "resume").await?;
        (r.status == BackfillStatus::Done).then_some(r)
    })
    .await;
    let p = done.progress.unwrap();
    assert_eq!(p.by, "second", "the second ticker finished it");
    assert_eq!((p.total, p.fired + p.already_ran, p.skipped), (36, 36, 0), "{p:?}");
    events.wait_for_n(36, 60, "a run per occurrence", queued("hourly")).await;
    events.wait_for_n(36, 60, "every run to succeed", is("hour", RunStatus::Succeeded)).await;
    assert_eq!(events.fired("hourly"), expected, "each occurrence exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backfill_stops_and_records_its_counts() {
    let env = Env::start().await;
    let _fn = env.function("fn.slow", |_| Reply::After(Duration::from_millis(300), json!({}))).await;
    let _services = env.services();
    env.put_task("slow", json!({"handler": {"type": "nats", "subject": "fn.slow"}})).await;
    env.put_schedule("minutely", json!({"every": "1m", "task": "slow", "paused": true})).await;
    let mut events = env.events().await;
    let request = json!({"schedule": "minutely", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:59:00Z",
                         "max_in_flight": 1});
    env.kv_put(&env.names.backfills_bucket(), "stop-me", &request.to_string()).await;
    eventually(60, "the backfill to be under way", || async {
        let r = record(&env, "stop-me").await?;
        r.progress.is_some_and(|p| p.handled() >= 2).then_some(())
    })
    .await;
    let (code, out, err) = env.jetsched(&["schedule", "backfill-cancel", "stop-me"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    // The ticker records its counts at the cancel, then reports it.
    let cancelled = events
        .wait_for(30, "the cancel to be reported", |e| {
            e.status == RunStatus::Backfill
                && e.backfill.as_ref().is_some_and(|b| b.status == BackfillStatus::Cancelled)
        })
        .await;
    let p = cancelled.backfill.unwrap().progress;
    assert!(p.fired >= 2 && p.fired < 60, "stopped in the middle: {p:?}");
    let stored = record(&env, "stop-me").await.unwrap();
    assert_eq!((stored.status, stored.progress.map(|s| s.fired)), (BackfillStatus::Cancelled, Some(p.fired)));
}

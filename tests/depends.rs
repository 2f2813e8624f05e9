//! A schedule that depends on another (`depends_on: {schedule, wait}`) on a
//! real nats-server, both outcomes: the upstream run succeeds while the
//! dependent fire waits (it then starts, after the upstream's `succeeded` in
//! the events stream), or the upstream never succeeds (the dependent run
//! ends `dead` at its deadline with a reason naming the dependency, a copy
//! in the DLQ, and nothing of it ever queued or started). Waits are short;
//! time is only ever a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::*;
use jetsched_contract::{RunRecord, RunStatus, headers};
use jetsched_worker::{Invocation, Outcome};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// A fixed-offset zone in which it is now around midday, so that fires a
/// few seconds apart always fall on the same date there.
fn midday_zone() -> String {
    let hour = i32::from(jiff::tz::TimeZone::UTC.to_datetime(Timestamp::now()).hour());
    let offset = (12 - hour).clamp(-12, 12);
    // POSIX-style names: Etc/GMT-3 is three hours ahead of UTC.
    match offset {
        0 => "UTC".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

fn in_secs(n: i64) -> String {
    Timestamp::now().checked_add(SignedDuration::from_secs(n)).unwrap().to_string()
}

/// Builtins: `extract` (held until the test releases it, then succeeds),
/// `extract-fails` (fails for good at once), `report` (succeeds at once).
fn handlers() -> (Builtins, Held) {
    let mut b = Builtins::default();
    let held = Held::register(&mut b, "extract");
    b.register("extract-fails", |_inv: Invocation| async move { Outcome::permanent("source unreachable") });
    b.register("report", |_inv: Invocation| async move { Outcome::ok(json!({})) });
    (b, held)
}

async fn tasks(env: &Env) {
    for name in ["extract", "extract-fails", "report"] {
        env.put_task(name, json!({"handler": {"type": "builtin", "name": name}})).await;
    }
}

fn position(events: &Events, task: &str, status: RunStatus) -> Option<usize> {
    events.seen.iter().position(|(_, e)| e.task == task && e.status == status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_fire_waits_and_starts_once_the_upstream_run_succeeds() {
    let env = Env::start().await;
    let (builtins, mut extract) = handlers();
    tasks(&env).await;
    let zone = midday_zone();
    let report_at = Timestamp::now().checked_add(SignedDuration::from_secs(2)).unwrap();
    env.put_schedule("extract-nightly", json!({"at": in_secs(1), "timezone": zone, "task": "extract"})).await;
    env.put_schedule(
        "report-nightly",
        json!({"at": report_at.to_string(), "timezone": zone, "task": "report",
               "depends_on": {"schedule": "extract-nightly", "wait": "60s"}}),
    )
    .await;
    let _services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;

    let upstream = extract.next(20).await;
    // The report's fire is in the inbox and has been handed back at least
    // once: it waits (not as a run: no record, no event).
    let inbox = env.handles.js.get_stream(env.names.inbox_stream()).await.unwrap();
    eventually(20, "the report's fire to be waiting in the inbox", || {
        let inbox = inbox.clone();
        let (subject, consumer) = (env.names.due_subject("report"), env.names.dispatcher_consumer());
        async move {
            let stored = inbox.direct_get_last_for_subject(subject).await.is_ok();
            let info = inbox.clone().consumer_info(consumer).await.ok()?;
            (stored && info.num_redelivered >= 1).then_some(())
        }
    })
    .await;
    assert_eq!(position(&events, "report", RunStatus::Queued), None);
    let report_run = jetsched_contract::run::scheduled_run_id("report-nightly", report_at);
    assert!(env.runs.get(&report_run).await.unwrap().is_none(), "a waiting fire has no run record");

    extract.release_one();
    events.wait_for(30, "the report to start", is("report", RunStatus::Started)).await;
    events.wait_for(10, "the report to succeed", is("report", RunStatus::Succeeded)).await;
    let succeeded = position(&events, "extract", RunStatus::Succeeded).expect("the extract succeeded");
    assert!(
        succeeded < position(&events, "report", RunStatus::Queued).unwrap()
            && succeeded < position(&events, "report", RunStatus::Started).unwrap(),
        "the report was queued and started only after the extract {upstream} succeeded (events stream order)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_run_ends_dead_at_its_deadline_when_the_upstream_never_succeeds() {
    let env = Env::start().await;
    let (builtins, _extract) = handlers();
    tasks(&env).await;
    let zone = midday_zone();
    env.put_schedule("extract-daily", json!({"at": in_secs(1), "timezone": zone, "task": "extract-fails"})).await;
    let _services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;
    let upstream = events.wait_for(20, "the extract to fail for good", is("extract-fails", RunStatus::Dead)).await;
    let upstream_run = upstream.run_id.unwrap();

    // Its upstream has failed already: the report waits out its 2 s, then gives up.
    env.put_schedule(
        "report-daily",
        json!({"at": in_secs(1), "timezone": zone, "task": "report",
               "depends_on": {"schedule": "extract-daily", "wait": "2s"}}),
    )
    .await;
    let dead = events.wait_for(30, "the report to end dead", is("report", RunStatus::Dead)).await;
    let reason = dead.error.clone().unwrap();
    assert!(reason.starts_with("dependency not met: no run of schedule extract-daily on "), "{reason}");
    assert!(reason.contains(&format!("its latest run {upstream_run} ended dead: source unreachable")), "{reason}");
    let run = dead.run_id.clone().unwrap();
    let record: RunRecord = env.record(&run).await;
    assert_eq!((record.status, record.attempt, record.error.as_deref()), (RunStatus::Dead, 0, Some(reason.as_str())));
    let letters = env.dead_letters("report").await;
    assert_eq!(letters.len(), 1, "one copy in the DLQ");
    let headers = letters[0].headers.clone().unwrap();
    assert_eq!(headers.get(headers::REASON).map(|v| v.as_str()), Some(reason.as_str()));
    let report: Vec<_> = events.seen.iter().filter(|(_, e)| e.task == "report").map(|(_, e)| e.status).collect();
    assert_eq!(report, vec![RunStatus::Dead], "nothing of the report was queued or started");
}

//! The `runs` and `status` verbs of the real `jetsched` binary against runs
//! that really happened: `runs list` newest change first, in pages that
//! neither repeat nor skip a run, filtered by task, status, schedule and
//! time; `runs watch` printing each change; `status` summing it up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeSet;

use futures::StreamExt;
use harness::*;
use jetsched_contract::{RunStatus, run::schedule_runs_filter};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// The run ids a `runs list` printed, in order.
fn ids(stdout: &str) -> Vec<String> {
    // A header line (RUN STATUS ...), then one run per line.
    stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The `--before` cursor a page printed on stderr, if any.
fn cursor(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| l.strip_prefix("more: repeat with --before ")).map(|s| s.trim().to_string())
}

/// Run ids of every record, newest change (highest revision) first.
async fn by_last_change(env: &Env) -> Vec<String> {
    let mut revisions = Vec::new();
    for (key, _) in env.kv_entries(&env.names.runs_bucket()).await {
        let stored = env.runs.get(&key).await.unwrap().unwrap();
        revisions.push((stored.revision, key));
    }
    revisions.sort_by(|a, b| b.cmp(a));
    revisions.into_iter().map(|(_, k)| k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_pages_newest_change_first_and_filters_by_task_status_schedule_and_time() {
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"ok": true}))).await;
    let _bad = env.function("fn.bad", |_| Reply::Fail { error: "no".into(), retryable: false }).await;
    env.put_task("ok", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    env.put_task("bad", json!({"handler": {"type": "nats", "subject": "fn.bad"}})).await;
    let _services = env.services();
    let mut events = env.events().await;

    // Phase 1: twelve runs that succeed and three fires of a schedule.
    for i in 0..12 {
        env.submit("ok", &format!(r#"{{"i":{i}}}"#)).await;
    }
    env.put_schedule("tri", json!({"every": "1s", "task": "ok", "max_runs": 3})).await;
    events.wait_for_n(15, 60, "phase 1 to succeed", is("ok", RunStatus::Succeeded)).await;
    let between = jiff::Timestamp::now();
    // Phase 2, after `between`: five runs that die.
    for i in 0..5 {
        env.submit("bad", &format!(r#"{{"i":{i}}}"#)).await;
    }
    events.wait_for_n(5, 60, "phase 2 to die", is("bad", RunStatus::Dead)).await;
    let all = by_last_change(&env).await;
    assert_eq!(all.len(), 20, "{all:?}");

    // Pages of 6, following the cursor: every run once, newest change first.
    let mut listed = Vec::new();
    let mut before: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "the pages end");
        let mut args = vec!["runs", "list", "--limit", "6"];
        if let Some(b) = &before {
            args.extend(["--before", b.as_str()]);
        }
        let (code, out, err) = env.jetsched(&args).await;
        assert_eq!(code, 0, "{err}");
        let got = ids(&out);
        assert!(got.len() <= 6, "{out}");
        listed.extend(got);
        before = cursor(&err);
        if before.is_none() {
            break;
        }
    }
    assert_eq!(listed, all, "pages of 6 list every run once, by last change");

    // By task (the records, checked) and status (dead: the events stream).
    let dead: BTreeSet<String> =
        events.seen_with("bad", RunStatus::Dead).into_iter().filter_map(|e| e.run_id).collect();
    let (code, out, err) = env.jetsched(&["runs", "list", "--task", "bad"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&out).into_iter().collect::<BTreeSet<_>>(), dead);
    let (_, out, _) = env.jetsched(&["runs", "list", "--status", "dead"]).await;
    assert_eq!(ids(&out).into_iter().collect::<BTreeSet<_>>(), dead);
    let (_, out, _) = env.jetsched(&["runs", "list", "--status", "succeeded", "--limit", "100"]).await;
    assert_eq!(ids(&out).len(), 15, "{out}");
    let (code, out, err) = env.jetsched(&["runs", "list", "--task", "ok", "--status", "dead"]).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("no runs match"), "{err}");
    // By task, paged: each run once, though each has several changes.
    let mut listed = Vec::new();
    let mut before: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "the pages end");
        let mut args = vec!["runs", "list", "--task", "ok", "--limit", "4"];
        if let Some(b) = &before {
            args.extend(["--before", b.as_str()]);
        }
        let (_, out, err) = env.jetsched(&args).await;
        listed.extend(ids(&out));
        before = cursor(&err);
        if before.is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 15, "{listed:?}");
    assert_eq!(listed.iter().collect::<BTreeSet<_>>().len(), 15, "no run twice: {listed:?}");

    // By schedule (a subject filter on the run id).
    let (_, out, _) = env.jetsched(&["runs", "list", "--schedule", "tri"]).await;
    let fired = ids(&out);
    assert_eq!(fired.len(), 3, "{out}");
    let prefix = schedule_runs_filter("tri").trim_end_matches('>').to_string();
    assert!(fired.iter().all(|id| id.starts_with(&prefix)), "{fired:?}");

    // By time: only phase 2 changed after `between`; nothing before phase 1.
    let (_, out, _) = env.jetsched(&["runs", "list", "--since", &between.to_string()]).await;
    assert_eq!(ids(&out).into_iter().collect::<BTreeSet<_>>(), dead);
    let (_, out, _) = env.jetsched(&["runs", "list", "--until", &between.to_string(), "--limit", "100"]).await;
    assert_eq!(ids(&out).len(), 15, "{out}");
    let (_, out, _) = env.jetsched(&["runs", "list", "--until", "2020-01-01T00:00:00Z"]).await;
    assert_eq!(out, "");

    // Bad input is named.
    let (code, _, err) = env.jetsched(&["runs", "list", "--status", "happy"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown status \"happy\""), "{err}");
    let (code, _, err) = env.jetsched(&["runs", "list", "--since", "yesterday"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("neither an RFC 3339 time nor a duration"), "{err}");

    // Status sums it up.
    let (code, out, err) = env.jetsched(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("schedules: 1 (0 paused, 0 invalid)"), "{out}");
    assert!(out.contains("workers: 1"), "{out}");
    assert!(out.contains("failures in the last 1h: 5"), "{out}");
    for id in &dead {
        assert!(out.contains(id.as_str()), "the failure {id} is shown:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_watch_prints_each_change_of_a_schedules_runs() {
    let env = Env::start().await;
    // `fn.hold` answers only when the test says: a run that is still going.
    let mut held = env.client.subscribe("fn.hold").await.unwrap();
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"ok": true}))).await;
    env.put_task("ok", json!({"handler": {"type": "nats", "subject": "fn.hold"}})).await;
    env.put_task("other", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
        .args(["runs", "watch", "--schedule", "w"])
        .env("NATS_URL", env.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    // The watch stands (its consumer on the bucket's stream) before anything runs.
    let stream = env.handles.js.get_stream(env.names.runs_bucket_stream()).await.unwrap();
    eventually(30, "the watch to stand", || {
        let mut stream = stream.clone();
        async move { (stream.info().await.ok()?.state.consumer_count > 0).then_some(()) }
    })
    .await;
    let _services = env.services();
    env.submit("other", "{}").await;
    env.put_schedule("w", json!({"every": "1s", "task": "ok", "max_runs": 1})).await;
    let mut state = async || {
        let line = within(60, "the next change", lines.next_line()).await.unwrap().expect("watch goes on");
        assert!(line.starts_with("s.w."), "only the schedule's runs: {line}");
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    // Each state of the one fire, in order; never the other task's run. A
    // run still going after --record-started-after (1 s) is stored started.
    assert_eq!(state().await, "queued");
    let call = within(60, "the handler to be called", held.next()).await.unwrap();
    assert_eq!(state().await, "started", "a run still going is shown started");
    env.client.publish(call.reply.unwrap(), "{}".into()).await.unwrap();
    assert_eq!(state().await, "succeeded");
}

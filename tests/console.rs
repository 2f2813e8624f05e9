//! The web console in a real headless Chromium (WebDriver), against a
//! console and services on a real nats-server: charts with data, a run
//! appearing live, a DLQ replay from the page, pausing a schedule, a
//! workflow graph with each step's state, user text shown as text, and
//! actions refused without a session's token. The tests save the
//! screenshots the README and docs show (docs/img/).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use harness::browser::Browser;
use harness::*;
use jetsched::console::ConsoleArgs;
use jetsched_contract::{RunEvent, RunRecord, RunStatus, headers};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio_util::sync::{CancellationToken, DropGuard};

const TOKEN: &str = "test-console-token";

/// A console on this env's server, stopped when dropped.
struct Console {
    url: String,
    _stop: DropGuard,
}

async fn console(env: &Env, actions: bool) -> Console {
    let args = ConsoleArgs {
        listen: "127.0.0.1:0".to_string(),
        allow_actions: actions,
        token: actions.then(|| TOKEN.to_string()),
    };
    let stop = CancellationToken::new();
    let addr = jetsched::console::serve(env.handles.clone(), &args, stop.clone()).await.unwrap();
    Console { url: format!("http://{addr}"), _stop: stop.drop_guard() }
}

impl Console {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// Logs the browser in with the console's token.
async fn log_in(browser: &Browser, console: &Console) {
    browser.goto(&console.at("/login")).await;
    browser.find(30, "input[name=token]").await.send_keys(TOKEN).await.unwrap();
    browser.click(30, "form[action='/login'] button").await;
    eventually(10, "the session to be open", || async {
        browser.text(30, ".who").await.contains("actions enabled").then_some(())
    })
    .await;
}

/// Waits until the page's live stream is connected.
async fn live(browser: &Browser) {
    eventually(15, "the live stream to connect", || async {
        (browser.text(30, "#live-state").await == "live").then_some(())
    })
    .await;
}

/// Marks the page; [`still_same_page`] tells whether it was reloaded since.
async fn mark_page(browser: &Browser) {
    browser.js("window.__jetsched_test_mark = 42; return true;").await;
}

async fn still_same_page(browser: &Browser) -> bool {
    browser.js("return window.__jetsched_test_mark === 42;").await == json!(true)
}

/// The `data-state` of workflow step `step` in the page's graph.
async fn step_state(browser: &Browser, step: &str) -> Option<String> {
    let css = format!("#dag g[data-step='{step}']");
    let el = browser.client.find(fantoccini::Locator::Css(&css)).await.ok()?;
    el.attr("data-state").await.ok().flatten()
}

async fn nats_task(env: &Env, task: &str, subject: &str, extra: serde_json::Value) {
    let mut def = json!({"handler": {"type": "nats", "subject": subject}, "retry": {"initial_backoff": "100ms", "max_backoff": "200ms"}});
    if let (Some(d), Some(e)) = (def.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    env.put_task(task, def).await;
}

fn fail(error: &str) -> Reply {
    Reply::Fail { error: error.to_string(), retryable: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_charts_render_with_data() {
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"ok": true}))).await;
    // Each flaky run fails its first attempt, then succeeds.
    let _flaky = env
        .function("fn.flaky", |call| match call.header(headers::ATTEMPT).as_deref() {
            Some("1") => Reply::Fail { error: "first try fails".into(), retryable: true },
            _ => Reply::Ok(json!({})),
        })
        .await;
    nats_task(&env, "resize", "fn.ok", json!({})).await;
    nats_task(&env, "flaky", "fn.flaky", json!({})).await;
    env.put_schedule("every-second", json!({"every": "1s", "task": "resize"})).await;
    let console = console(&env, false).await;
    let _services = env.services();
    let mut events = env.events().await;
    for _ in 0..8 {
        env.submit("resize", "{}").await;
    }
    for _ in 0..3 {
        env.submit("flaky", "{}").await;
    }
    events
        .wait_for_n(8, 30, "submitted runs succeed", |e| is("resize", RunStatus::Succeeded)(e) && e.schedule.is_none())
        .await;
    events.wait_for_n(3, 30, "flaky runs succeed on their second try", is("flaky", RunStatus::Succeeded)).await;
    events.wait_for(30, "a scheduled run", |e| e.status == RunStatus::Succeeded && e.schedule.is_some()).await;

    let browser = Browser::start().await;
    browser.goto(&console.at("/")).await;
    live(&browser).await;
    // The page redraws itself (no reload) until the feed has counted the runs.
    let shown = eventually(20, "the succeeded tile to count the runs", || async {
        let n: u64 = browser.text(30, "#n-succeeded").await.parse().ok()?;
        (n >= 12).then_some(n)
    })
    .await;
    assert!(shown >= 12, "{shown}");
    let failed: u64 = browser.text(30, "#n-failed").await.parse().unwrap();
    assert_eq!(failed, 3, "one failed first attempt per flaky run");
    // Each chart is an SVG; the runs chart's lines (not their 2-point legend
    // samples) rise from the quiet hour before.
    for id in ["chart-runs", "chart-lateness", "chart-backlog", "chart-failures", "chart-dlq"] {
        assert!(browser.has(&format!("#{id} svg")).await, "chart {id} missing");
    }
    let varying = browser
        .js("return [...document.querySelectorAll('#chart-runs svg polyline[stroke-width=\"2\"]')].some(p => { \
               const pts = p.getAttribute('points').trim().split(/\\s+/); \
               return pts.length > 2 && new Set(pts.map(xy => xy.split(',')[1])).size > 1; });")
        .await;
    assert_eq!(varying, json!(true), "the runs chart draws no data");
    assert!(browser.has("#chart-failures svg polyline").await);
    // Services: the ticker with its partitions and the worker.
    assert!(browser.text(30, "tr.ticker").await.contains("64 partitions"));
    assert!(browser.has("tr.worker").await);
    browser.screenshot("console-overview").await;

    browser.goto(&console.at("/schedules")).await;
    browser.find(30, "tr[data-schedule='every-second'] .cell.s-succeeded").await;
    browser.screenshot("console-schedules").await;
    browser.goto(&console.at("/workers")).await;
    browser.find(30, "#workers tbody tr").await;
    browser.screenshot("console-workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_appears_live_without_reload() {
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"ok": true}))).await;
    nats_task(&env, "resize", "fn.ok", json!({})).await;
    let console = console(&env, false).await;
    let _services = env.services();
    let browser = Browser::start().await;
    browser.goto(&console.at("/runs?task=resize")).await;
    live(&browser).await;
    mark_page(&browser).await;
    assert!(browser.has("#no-runs").await);

    let seq = env.submit("resize", r#"{"image": "a.png"}"#).await;
    let run = jetsched_contract::run::submitted_run_id("resize", None, seq);
    browser.find(20, &format!("#live-rows tr[data-run='{run}'] .badge.s-succeeded")).await;
    assert!(still_same_page(&browser).await, "the page was reloaded");
    // One row per run: its queued and started rows were replaced.
    let rows = browser.js(&format!("return document.querySelectorAll(\"tr[data-run='{run}']\").length;")).await;
    assert_eq!(rows, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_part_refreshes_on_the_streams_ticks_with_no_run_event() {
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"ok": true}))).await;
    nats_task(&env, "resize", "fn.ok", json!({})).await;
    let _services = env.services();
    let mut events = env.events().await;
    let run = jetsched_contract::run::submitted_run_id("resize", None, env.submit("resize", "{}").await);
    events.wait_for(30, "the run to succeed", is("resize", RunStatus::Succeeded)).await;
    // The run has ended: nothing more happens to it, so only the live
    // stream's ticks (every 5 s) refresh its page's part.
    let console = console(&env, false).await;
    let browser = Browser::start().await;
    browser.goto(&console.at(&format!("/runs/{run}"))).await;
    live(&browser).await;
    eventually(20, "a refresh driven by a tick", || async {
        let refreshed = browser.js("return Number(document.body.dataset.refreshed || 0);").await;
        (refreshed.as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_from_the_page_produces_a_new_run() {
    let env = Env::start().await;
    // Fails twice (the whole retry budget), then works: the replay succeeds.
    let calls = AtomicU32::new(0);
    let _fn = env
        .function("fn.charge", move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Reply::Fail { error: "card declined".into(), retryable: true },
            _ => Reply::Ok(json!({"charged": true})),
        })
        .await;
    nats_task(&env, "charge", "fn.charge", json!({"retry": {"max_attempts": 2, "initial_backoff": "100ms"}})).await;
    let console = console(&env, true).await;
    let _services = env.services();
    let mut events = env.events().await;
    let seq = env.submit("charge", r#"{"order": 42}"#).await;
    let dead_run = jetsched_contract::run::submitted_run_id("charge", None, seq);
    events.wait_for(30, "the run to die", is("charge", RunStatus::Dead)).await;

    let browser = Browser::start().await;
    browser.goto(&console.at(&format!("/runs/{dead_run}"))).await;
    browser.find(30, "#timeline li[data-status='dead']").await;
    browser.screenshot("console-run").await;

    log_in(&browser, &console).await;
    browser.goto(&console.at("/dlq")).await;
    let dlq_seq = browser.find(30, "#letters tbody tr[data-seq]").await.attr("data-seq").await.unwrap().unwrap();
    browser.screenshot("console-dlq").await;
    browser.click(30, "#letters tbody tr[data-seq] input[type=checkbox]").await;
    browser.click(30, "#replay-selected").await;
    let notice = browser.text(30, ".notice").await;
    let new_run = format!("t.charge.m-replay-{dlq_seq}");
    assert!(notice.contains(&new_run), "{notice}");

    let replayed = events.wait_for(30, "the replayed run to succeed", |e| {
        e.status == RunStatus::Succeeded && e.run_id.as_deref() == Some(new_run.as_str())
    });
    replayed.await;
    let record: RunRecord = env.runs.get(&new_run).await.unwrap().unwrap().record;
    assert_eq!(record.replay_of.as_deref(), Some(dead_run.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_schedule_stops_firing() {
    let env = Env::start().await;
    let _fn = env.function("fn.tick", |_| Reply::Ok(json!({}))).await;
    nats_task(&env, "tick", "fn.tick", json!({})).await;
    env.put_schedule("p", json!({"every": "1s", "task": "tick"})).await;
    env.put_schedule("marker", json!({"every": "1s", "task": "tick"})).await;
    let ticker =
        TickerConfig { lookahead: Duration::ZERO, lease_ttl: Duration::from_secs(2), ..TickerConfig::default() };
    let _services = env.services_with(ServicesConfig { ticker: Some(ticker), ..ServicesConfig::default() });
    let console = console(&env, true).await;
    let queued =
        |s: &'static str| move |e: &RunEvent| e.status == RunStatus::Queued && e.schedule.as_deref() == Some(s);
    let mut events = env.events().await;
    events.wait_for(15, "a fire before the pause", queued("p")).await;

    let browser = Browser::start().await;
    log_in(&browser, &console).await;
    browser.goto(&console.at("/schedules/p")).await;
    browser.click(30, "form[action='/actions/schedules/p/pause'] button").await;
    let notice = browser.text(30, ".notice").await;
    assert!(notice.contains("schedule p paused"), "{notice}");
    let paused_at = Timestamp::now();
    let stored = env.kv_get(&env.names.schedules_bucket(), "p").await.unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stored).unwrap()["paused"], json!(true));

    // The marker shows the ticker alive and time passing.
    let quiet_until = paused_at.checked_add(SignedDuration::from_secs(3)).unwrap();
    events
        .wait_for(15, "marker fires while p is paused", |e| queued("marker")(e) && e.scheduled_for > Some(quiet_until))
        .await;
    let late = paused_at.checked_add(SignedDuration::from_secs(1)).unwrap();
    let after: Vec<_> = events.seen.iter().filter(|(_, e)| queued("p")(e) && e.scheduled_for > Some(late)).collect();
    assert!(after.is_empty(), "p fired while paused: {after:?}");

    browser.goto(&console.at("/schedules")).await;
    let row = browser.text(30, "tr[data-schedule='p']").await;
    assert!(row.contains("paused"), "{row}");
    assert!(browser.has("form[action='/actions/schedules/p/resume']").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_graph_shows_each_steps_state_live() {
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"rows": 3}))).await;
    let _audit = env.function("fn.audit", |_| fail("ledger mismatch")).await;
    // transform answers only when the test says so.
    let mut transform = env.client.subscribe("fn.transform").await.unwrap();
    env.client.flush().await.unwrap();
    for (task, subject) in [
        ("extract", "fn.ok"),
        ("load", "fn.ok"),
        ("report", "fn.ok"),
        ("audit", "fn.audit"),
        ("transform", "fn.transform"),
    ] {
        nats_task(&env, task, subject, json!({"retry": {"max_attempts": 1}})).await;
    }
    env.put_task(
        "pipeline",
        json!({"steps": {
            "extract": {"task": "extract"},
            "transform": {"task": "transform", "depends_on": ["extract"]},
            "load": {"task": "load", "depends_on": ["transform"]},
            "audit": {"task": "audit", "depends_on": ["extract"]},
            "report": {"task": "report", "depends_on": ["audit"]}
        }}),
    )
    .await;
    let console = console(&env, false).await;
    let _services = env.services();
    let seq = env.submit("pipeline", r#"{"day": "2026-12-01"}"#).await;
    let run = jetsched_contract::run::submitted_run_id("pipeline", None, seq);
    let held = within(30, "transform to be called", transform.next()).await.unwrap();
    let mut events = env.events().await;
    events.wait_for(30, "report to be skipped", is("report", RunStatus::Skipped)).await;

    let browser = Browser::start().await;
    browser.goto(&console.at(&format!("/runs/{run}"))).await;
    live(&browser).await;
    mark_page(&browser).await;
    browser.find(30, "#dag").await;
    assert_eq!(step_state(&browser, "extract").await.as_deref(), Some("succeeded"));
    assert_eq!(step_state(&browser, "transform").await.as_deref(), Some("started"));
    assert_eq!(step_state(&browser, "load").await.as_deref(), Some("waiting"));
    assert_eq!(step_state(&browser, "audit").await.as_deref(), Some("dead"));
    assert_eq!(step_state(&browser, "report").await.as_deref(), Some("skipped"));
    browser.screenshot("console-workflow").await;

    env.client.publish(held.reply.unwrap(), r#"{"rows": 3}"#.into()).await.unwrap();
    env.client.flush().await.unwrap();
    eventually(20, "the graph to show load succeeded without a reload", || async {
        (step_state(&browser, "load").await.as_deref() == Some("succeeded")).then_some(())
    })
    .await;
    assert_eq!(step_state(&browser, "transform").await.as_deref(), Some("succeeded"));
    assert!(still_same_page(&browser).await, "the page was reloaded");
    // A failed step fails the workflow (once the dispatcher has recorded the last step).
    eventually(20, "the workflow run to show dead", || async {
        (browser.text(30, "#run-status").await == "dead").then_some(())
    })
    .await;

    browser.goto(&console.at("/workflows")).await;
    browser.find(30, "section[data-workflow='pipeline'] #dag").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_text_is_shown_as_text() {
    let env = Env::start().await;
    let attack = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";
    let _fn = env.function("fn.esc", move |_| fail(attack)).await;
    nats_task(&env, "esc", "fn.esc", json!({"retry": {"max_attempts": 1}})).await;
    let console = console(&env, false).await;
    let _services = env.services();
    let mut events = env.events().await;
    let mut hdrs = HeaderMap::new();
    hdrs.insert(headers::NATS_MSG_ID, "xss-1");
    let payload = json!({"note": attack}).to_string();
    env.handles
        .js
        .publish_with_headers(env.names.submit_subject("esc"), hdrs, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    events.wait_for(30, "the run to die", is("esc", RunStatus::Dead)).await;

    let browser = Browser::start().await;
    browser.goto(&console.at("/runs/t.esc.m-xss-1")).await;
    let shown = browser.text(30, "#payload pre").await;
    assert!(shown.contains(attack.replace('"', "\\\"").as_str()), "payload shown as {shown:?}");
    let injected = browser.js("return document.querySelectorAll('main script, main img').length;").await;
    assert_eq!(injected, json!(0), "user text became markup");
    assert_ne!(browser.client.title().await.unwrap(), "pwned");
    let error = browser.text(30, "table.facts td.err").await;
    assert!(error.contains("<script>"), "{error}");
    browser.goto(&console.at("/dlq")).await;
    browser.find(30, "#letters tbody tr").await;
    assert_eq!(browser.js("return document.querySelectorAll('main script, main img').length;").await, json!(0));
    assert_ne!(browser.client.title().await.unwrap(), "pwned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_a_session_and_its_form_token() {
    let env = Env::start().await;
    env.put_schedule("nightly", json!({"cron": "0 0 1 1 *", "task": "t"})).await;
    let read_only = console(&env, false).await;
    let acting = console(&env, true).await;
    let browser = Browser::start().await;
    let post = |path: &str, body: &str| {
        format!(
            "return fetch('{path}', {{method: 'POST', headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, \
             body: '{body}', redirect: 'manual'}}).then(r => r.status);"
        )
    };
    // Read-only: no buttons, and a POST is refused.
    browser.goto(&read_only.at("/schedules")).await;
    browser.find(30, "tr[data-schedule='nightly']").await;
    assert!(!browser.has("form[action$='/pause']").await);
    assert_eq!(browser.js(&post("/actions/schedules/nightly/pause", "")).await, json!(403));
    // Acting console, not logged in: refused.
    browser.goto(&acting.at("/schedules")).await;
    assert!(!browser.has("form[action$='/pause']").await);
    assert_eq!(browser.js(&post("/actions/schedules/nightly/pause", "")).await, json!(403));
    // Logged in but without the form's token (what a forged request looks like): refused.
    log_in(&browser, &acting).await;
    browser.goto(&acting.at("/schedules")).await;
    assert_eq!(browser.js(&post("/actions/schedules/nightly/pause", "csrf=guess")).await, json!(403));
    let stored = env.kv_get(&env.names.schedules_bucket(), "nightly").await.unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&stored).unwrap().get("paused").is_none(),
        "a refused action paused it"
    );
    // With the token the page carries: done.
    browser.click(30, "form[action='/actions/schedules/nightly/pause'] button").await;
    let notice = browser.text(30, ".notice").await;
    assert!(notice.contains("paused"), "{notice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_logs_stream_into_its_page_while_it_goes() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    assert!(std::process::Command::new("mkfifo").arg(&gate).status().unwrap().success());
    let script =
        format!("echo 'loading <b>rows</b>'; echo \"token $TOKEN\"; read x < {}; echo finished", gate.display());
    env.put_task(
        "import",
        json!({"handler": {"type": "exec", "command": ["sh", "-c", script], "env": {"TOKEN": "hunter2-secret"}}, "secrets": ["TOKEN"]}),
    )
    .await;
    let worker = WorkerConfig { allow_exec: vec!["sh".into()], ..WorkerConfig::default() };
    let _services = env.services_with(ServicesConfig { worker: Some(worker), ..ServicesConfig::default() });
    let console = console(&env, false).await;
    let mut events = env.events().await;
    let run = jetsched_contract::run::submitted_run_id("import", None, env.submit("import", "{}").await);
    events.wait_for(20, "the run to start", is("import", RunStatus::Started)).await;

    let browser = Browser::start().await;
    browser.goto(&console.at(&format!("/runs/{run}"))).await;
    mark_page(&browser).await;
    eventually(20, "the first lines in the page", || async {
        browser.text(30, "#log-text").await.contains("token ***").then_some(())
    })
    .await;
    let shown = browser.text(30, "#log-text").await;
    assert!(shown.contains("loading <b>rows</b>"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!browser.has("#log-text b").await, "log text became markup");

    let gate_path = gate.clone();
    within(10, "the command to read the gate", tokio::task::spawn_blocking(move || std::fs::write(gate_path, "go\n")))
        .await
        .unwrap()
        .unwrap();
    eventually(20, "the last line to stream in", || async {
        browser.text(30, "#log-text").await.contains("finished").then_some(())
    })
    .await;
    assert!(still_same_page(&browser).await, "the page was reloaded");
    let page = browser.text(30, "main").await;
    assert!(!page.contains("hunter2"), "a secret in the page: {page}");
    browser.js("document.getElementById('logs').scrollIntoView(); return true;").await;
    browser.screenshot("console-logs").await;
}

/// The real `jetsched` with `args`, on the server at `nats`, serving a
/// console: the process (killed when dropped), the console's URL and the
/// lines printed before it.
async fn serving(args: &[&str], nats: &str) -> (tokio::process::Child, String, Vec<String>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
        .args(args)
        .env("NATS_URL", nats)
        .env("JETSCHED_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (url, before) = console_url(&mut child).await;
    (child, url, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_the_console_url_among_its_first_lines_and_serves_it() {
    let env = Env::start().await;
    let args = ["up", "--examples", "--quiet", "--console", "127.0.0.1:0", "--http-addr", "off"];
    let (_up, url, before) = serving(&args, &env.url()).await;
    let url = format!("{url}/");
    assert!(before.len() < 3, "the URL comes among the first lines: {before:?}");
    let browser = Browser::start().await;
    browser.goto(&url).await;
    live(&browser).await;
    // The examples' workflow is drawn on the Workflows page.
    browser.goto(&format!("{url}workflows")).await;
    browser.find(20, "section[data-workflow='morning-report'] #dag g[data-step='greet']").await;
}

/// Backfills schedule `hourly` from its page, 2026-01-02 09:00 to 11:30;
/// returns the notice the action left.
async fn backfill_from_page(browser: &Browser, console: &Console) -> String {
    browser.goto(&console.at("/schedules/hourly")).await;
    browser
        .js("document.querySelector(\"input[name=from]\").value = '2026-01-02T09:00'; \
                document.querySelector(\"input[name=to]\").value = '2026-01-02T11:30'; return true;")
        .await;
    browser.click(30, "form[action='/actions/schedules/hourly/backfill'] button").await;
    browser.text(30, ".notice").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_now_and_backfill_from_the_schedule_page() {
    let env = Env::start().await;
    let _fn = env.function("fn.report", |_| Reply::Ok(json!({}))).await;
    nats_task(&env, "report", "fn.report", json!({})).await;
    // Hourly, at minute 7: no regular fire during the test.
    env.put_schedule("hourly", json!({"cron": "7 * * * *", "task": "report"})).await;
    let _services = env.services();
    let console = console(&env, true).await;
    let mut events = env.events().await;
    let browser = Browser::start().await;
    log_in(&browser, &console).await;
    browser.goto(&console.at("/schedules/hourly")).await;
    browser.click(30, "form[action='/actions/schedules/hourly/trigger'] button").await;
    let notice = browser.text(30, ".notice").await;
    let triggered = notice.split("run ").last().unwrap().trim().to_string();
    assert!(triggered.starts_with("s.hourly."), "{notice}");
    events
        .wait_for(30, "the triggered run to succeed", |e| {
            e.status == RunStatus::Succeeded && e.run_id.as_deref() == Some(triggered.as_str())
        })
        .await;

    // Backfill the three occurrences of a past window, under their regular run ids.
    let hour = |h: i8| jiff::tz::TimeZone::UTC.to_timestamp(jiff::civil::date(2026, 1, 2).at(h, 7, 0, 0)).unwrap();
    let notice = backfill_from_page(&browser, &console).await;
    assert!(notice.contains("3 fires"), "{notice}");
    let wanted: Vec<String> =
        [9, 10, 11].iter().map(|h| jetsched_contract::run::scheduled_run_id("hourly", hour(*h))).collect();
    for run in &wanted {
        events
            .wait_for(30, "a backfilled run to succeed", |e| {
                e.status == RunStatus::Succeeded && e.run_id.as_deref() == Some(run.as_str())
            })
            .await;
    }
    // Backfilling the same window again runs nothing twice.
    let notice = backfill_from_page(&browser, &console).await;
    let again = notice.split_whitespace().nth(1).unwrap().to_string();
    // The tickers execute it: every occurrence had run already.
    let bucket = env.names.backfills_bucket();
    let progress = eventually(30, "the second backfill to finish", || async {
        let record = jetsched_contract::Backfill::from_json(&env.kv_get(&bucket, &again).await?).ok()?;
        (record.status == jetsched_contract::BackfillStatus::Done).then_some(record.progress?)
    })
    .await;
    assert_eq!((progress.fired, progress.already_ran), (0, 3), "{notice}");
    for run in &wanted {
        let queued = events
            .seen
            .iter()
            .filter(|(_, e)| e.status == RunStatus::Queued && e.run_id.as_deref() == Some(run.as_str()));
        assert_eq!(queued.count(), 1, "{run} queued more than once");
    }
}

/// The console's container probes: `/healthz` while it serves, `/readyz`
/// only while it is connected to NATS, so an orchestrator takes it out of
/// rotation when NATS goes away. The real binary, on a server this test
/// kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_whether_the_console_reaches_nats() {
    let mut env = Env::start().await;
    let nats = env.url();
    let (_console, url, _) = serving(&["console", "--listen", "127.0.0.1:0"], &nats).await;
    let status = |path: &'static str| {
        let url = format!("{url}{path}");
        async move { get_url(&url).await.0 }
    };
    assert_eq!(status("/healthz").await, 200);
    assert_eq!(status("/readyz").await, 200, "ready while connected");

    env.server().kill();
    eventually(30, "/readyz to say 503 once NATS is gone", || async { (status("/readyz").await == 503).then_some(()) })
        .await;
    assert_eq!(status("/healthz").await, 200, "still alive without NATS");
}

//! What handlers may reach and how much they may carry, on a real
//! nats-server: HTTP handlers never reach a denied host (checked on the
//! address a name resolves to, cloud metadata denied by default, redirects
//! not followed, an allow-list admitting only its hosts), and payloads and
//! results over the worker's limits fail the run with a clear reason
//! instead of being cut.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::*;
use jetsched_contract::RunStatus;
use serde_json::json;

fn worker(f: impl FnOnce(&mut WorkerConfig)) -> WorkerConfig {
    let mut w = WorkerConfig::default();
    f(&mut w);
    w
}

fn dead_reason(e: &jetsched_contract::RunEvent) -> String {
    e.error.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handlers_reach_only_what_the_worker_allows_checked_on_resolved_addresses() {
    let env = Env::start().await;
    // A host the worker denies (127.0.0.1, also what `localhost` resolves
    // to) and one it allows (127.0.0.2).
    let mut denied = HttpStub::start_on("127.0.0.1", vec![(200, vec![])]).await;
    let mut allowed = HttpStub::start_on("127.0.0.2", vec![(200, vec![])]).await;
    let denied_port = denied.url.rsplit(':').next().unwrap().trim_end_matches("/hook").to_string();
    let to_denied: &'static str = Box::leak(format!("http://localhost:{denied_port}/hook").into_boxed_str());
    let mut redirecting = HttpStub::start_on("127.0.0.2", vec![(302, vec![("location", to_denied)])]).await;
    let http = |url: &str| json!({"handler": {"type": "http", "url": url}, "retry": {"max_attempts": 1}});
    env.put_task("by-name", http(to_denied)).await;
    env.put_task("metadata", http("http://169.254.169.254/latest/meta-data/iam/security-credentials/")).await;
    env.put_task("metadata-v6", http("http://[fd00:ec2::254]/latest/meta-data/")).await;
    env.put_task("redirected", http(&redirecting.url)).await;
    env.put_task("fine", http(&allowed.url)).await;
    let mut strict = http(&allowed.url);
    strict["queue"] = json!("strict");
    env.put_task("strict", strict).await;
    let mut deny = jetsched_worker::DEFAULT_HTTP_DENY.split(',').map(String::from).collect::<Vec<_>>();
    deny.extend(["127.0.0.1".to_string(), "::1".to_string()]);
    let _services =
        env.services_with(ServicesConfig { worker: Some(worker(|w| w.deny_http = deny)), ..ServicesConfig::default() });
    // A second worker, for queue `strict`, allows one domain only.
    let _strict = env.services_with(ServicesConfig {
        ticker: None,
        dispatcher: None,
        worker: Some(worker(|w| {
            w.queues = vec!["strict".into()];
            w.allow_http = vec!["*.example.invalid".into()];
        })),
        ..ServicesConfig::default()
    });
    let mut events = env.events().await;
    for task in ["by-name", "metadata", "metadata-v6", "redirected", "fine", "strict"] {
        env.submit(task, "{}").await;
    }

    let by_name = events.wait_for(30, "the call by name to be refused", is("by-name", RunStatus::Dead)).await;
    assert!(dead_reason(&by_name).contains("resolves to 127.0.0.1"), "{by_name:?}");
    for task in ["metadata", "metadata-v6"] {
        let e = events
            .wait_for(30, "the metadata call to be refused", move |e| e.task == task && e.status == RunStatus::Dead)
            .await;
        assert!(dead_reason(&e).contains("--deny-http"), "{e:?}");
    }
    let strict = events.wait_for(30, "the strict worker to refuse", is("strict", RunStatus::Dead)).await;
    assert!(dead_reason(&strict).contains("not in the worker's --allow-http"), "{strict:?}");
    let redirected = events.wait_for(30, "the redirect", is("redirected", RunStatus::Dead)).await;
    assert!(dead_reason(&redirected).contains("302"), "a redirect is not followed: {redirected:?}");
    redirecting.next_request(10).await;
    events.wait_for(30, "the allowed call", is("fine", RunStatus::Succeeded)).await;
    allowed.next_request(10).await;
    // Every refused call ended without a request reaching the denied host.
    assert!(denied.requests.try_recv().is_err(), "a denied host was called");
    assert!(allowed.requests.try_recv().is_err(), "the strict worker called a host outside its allow-list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_results_over_the_limits_fail_the_run_with_the_reason_and_are_never_cut() {
    let env = Env::start().await;
    let mut echo = env.function("fn.echo", |_| Reply::Ok(json!({"ok": true}))).await;
    let _big = env.function("fn.big", |_| Reply::Ok(json!({"blob": "x".repeat(4096)}))).await;
    env.put_task("echo", json!({"handler": {"type": "nats", "subject": "fn.echo"}})).await;
    env.put_task("big-out", json!({"handler": {"type": "nats", "subject": "fn.big"}})).await;
    env.put_task("exec-out", json!({"handler": {"type": "exec", "command": ["sh", "-c", "yes | head -c 5000"]}})).await;
    env.put_task("exec-fits", json!({"handler": {"type": "exec", "command": ["sh", "-c", "yes | head -c 1000"]}}))
        .await;
    let _services = env.services_with(ServicesConfig {
        worker: Some(worker(|w| {
            w.max_payload = bytesize::ByteSize::kib(1);
            w.max_output = bytesize::ByteSize::kib(1);
            w.allow_exec = vec!["sh".into()];
        })),
        ..ServicesConfig::default()
    });
    let mut events = env.events().await;

    env.submit("echo", &json!({"blob": "y".repeat(2048)}).to_string()).await;
    let too_big = events.wait_for(30, "the big payload to be refused", is("echo", RunStatus::Dead)).await;
    assert!(dead_reason(&too_big).contains("--max-payload"), "{too_big:?}");
    let dlq = env.dead_letters("echo").await;
    assert_eq!(dlq.len(), 1, "the refused payload is kept in the DLQ");
    assert!(dlq[0].payload.len() > 2048, "whole, not cut");
    env.submit("echo", r#"{"small":true}"#).await;
    events.wait_for(30, "a small payload to run", is("echo", RunStatus::Succeeded)).await;
    let calls = echo.drain();
    assert_eq!(calls.len(), 1, "the function saw only the small payload: {calls:?}");
    assert_eq!(calls[0].payload, json!({"small": true}));

    env.submit("big-out", "{}").await;
    let e = events.wait_for(30, "a big NATS reply to be refused", is("big-out", RunStatus::Dead)).await;
    assert!(dead_reason(&e).contains("--max-output") && dead_reason(&e).contains("not cut"), "{e:?}");
    env.submit("exec-out", "{}").await;
    let e = events.wait_for(30, "big exec output to be refused", is("exec-out", RunStatus::Dead)).await;
    assert!(dead_reason(&e).contains("5000 bytes") && dead_reason(&e).contains("--max-output"), "{e:?}");
    env.submit("exec-fits", "{}").await;
    let ok = events.wait_for(30, "exec output at the limit", is("exec-fits", RunStatus::Succeeded)).await;
    let record = env.kv_get(&env.names.runs_bucket(), ok.run_id.as_deref().unwrap()).await.unwrap();
    let record: jetsched_contract::RunRecord = serde_json::from_slice(&record).unwrap();
    let result = serde_json::to_string(&record.result).unwrap();
    assert!(result.matches('y').count() == 500, "the whole result is kept: {} bytes", result.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_payloads_never_reach_the_logs_at_the_default_level() {
    const SECRET: &str = "SECRET-7f3a9c-hunter2";
    let env = Env::start().await;
    let _ok = env.function("fn.ok", |_| Reply::Ok(json!({"done": true}))).await;
    let _fail =
        env.function("fn.fail", |_| Reply::Fail { error: "the function refused".into(), retryable: false }).await;
    env.put_task("ok", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    env.put_task("fail", json!({"handler": {"type": "nats", "subject": "fn.fail"}})).await;
    env.put_task("echo", json!({"handler": {"type": "exec", "command": ["sh", "-c", "cat; cat >&2; exit 3"]}})).await;
    env.put_task("meta", json!({"handler": {"type": "http", "url": "http://169.254.169.254/"}})).await;
    env.put_schedule("tick", json!({"every": "1s", "task": "ok", "payload": {"token": SECRET}})).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("jetsched.log");
    // The binary's default filter (`--log`), spelled out because the
    // harness otherwise quiets it.
    let _up = env.spawn_jetsched_logged(
        &["up", "--http-addr", "off", "--allow-exec", "sh", "--max-payload", "64KiB"],
        "info,async_nats=warn",
        &log,
    );
    let mut events = env.events().await;
    let secret = json!({"password": SECRET}).to_string();
    for task in ["ok", "fail", "echo", "meta", "no-such-task"] {
        env.submit(task, &secret).await;
    }
    env.submit("ok", &format!(r#"{{"password": "{SECRET}""#)).await; // not JSON
    env.submit("ok", &json!({"password": SECRET, "pad": "p".repeat(70_000)}).to_string()).await; // too big
    events
        .wait_for(30, "a run with a secret", |e| {
            e.task == "ok" && e.schedule.is_none() && e.status == RunStatus::Succeeded
        })
        .await;
    events
        .wait_for(30, "a scheduled run with a secret", |e| {
            e.schedule.as_deref() == Some("tick") && e.status == RunStatus::Succeeded
        })
        .await;
    for task in ["fail", "echo", "meta"] {
        events
            .wait_for(30, "a failing run with a secret", move |e| e.task == task && e.status == RunStatus::Dead)
            .await;
    }
    events.wait_for(30, "the unknown task", |e| e.task == "no-such-task" && e.status == RunStatus::Rejected).await;
    events.wait_for(30, "the malformed submission", is("ok", RunStatus::Rejected)).await;
    events.wait_for(30, "the oversized payload", is("ok", RunStatus::Dead)).await;

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("worker started") && text.contains("schedules loaded"), "the log was written:\n{text}");
    assert!(
        !text.contains(SECRET),
        "a payload's secret is in the log:\n{}",
        text.lines().filter(|l| l.contains(SECRET)).collect::<Vec<_>>().join("\n")
    );
}

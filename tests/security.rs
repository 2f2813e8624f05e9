//! Security on a real nats-server with TLS (a test CA and certificates made
//! here) and one user per role carrying exactly what `jetsched permissions`
//! prints:
//!
//! - the whole pipeline works with every service under its own role, over
//!   mutual TLS, and the server refuses nothing on the way;
//! - the denials hold (worker, submitter, function), each shown by the same
//!   probe succeeding for a user widened by exactly that permission;
//! - a service short of a permission stops at start naming it;
//! - plaintext is refused when TLS is required, a client certificate from
//!   another CA is refused, and a client requiring TLS refuses a plain server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod secure;

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use harness::{Events, HttpStub, is, within};
use jetsched_contract::permissions::{Permissions, Role, Scope};
use jetsched_contract::{Names, RunStatus, headers};
use secure::{Probe, SecureServer, Tls, User};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WORKER_ID: &str = "w1";

fn worker_scope() -> Scope {
    Scope { worker_ids: vec![WORKER_ID.into()], ..Scope::default() }
}

fn console_actions() -> Scope {
    Scope { actions: true, ..Scope::default() }
}

/// One user per role of the default prefix.
struct Users {
    ticker: User,
    dispatcher: User,
    worker: User,
    admin: User,
    submitter: User,
    function: User,
    console: User,
    console_actions: User,
}

impl Users {
    fn new(names: &Names) -> Users {
        Users {
            ticker: User::role(names, Role::Ticker, &Scope::default()),
            dispatcher: User::role(names, Role::Dispatcher, &Scope::default()),
            worker: User::role(names, Role::Worker, &worker_scope()),
            admin: User::role(names, Role::Admin, &Scope::default()),
            submitter: User::role(names, Role::Submitter, &Scope::default()),
            function: User::role(names, Role::Function, &Scope::default()),
            console: User::role(names, Role::Console, &Scope::default()),
            console_actions: User::with(
                &format!("{names}-console-actions"),
                Permissions::of(Role::Console, names, &console_actions()).unwrap(),
            ),
        }
    }

    fn all(&self) -> Vec<User> {
        [
            &self.ticker,
            &self.dispatcher,
            &self.worker,
            &self.admin,
            &self.submitter,
            &self.function,
            &self.console,
            &self.console_actions,
        ]
        .into_iter()
        .cloned()
        .collect()
    }
}

/// Runs the real `jetsched` binary with `env`: (exit code, stdout, stderr).
async fn jetsched(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = within(60, "a jetsched command", async {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
            .args(args)
            .envs(env.iter().cloned())
            .env("JETSCHED_HTTP_ADDR", "off")
            .env("JETSCHED_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    })
    .await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A NATS function serving `fn.>` under the function role: `fn.flaky`
/// fails its first call, `fn.broken` always fails for good, `fn.slow`
/// never answers, anything else succeeds.
async fn serve_functions(server: &SecureServer, user: &User, names: &Names) -> tokio::task::JoinHandle<()> {
    let probe = Probe::connect(server, user, names, Role::Function).await;
    let client = probe.client.clone();
    let mut sub = client.subscribe("fn.>").await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let _probe = probe;
        let mut flaky_calls = 0;
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else { continue };
            let fail = |error: &str, retryable: bool| {
                let mut h = HeaderMap::new();
                h.insert(headers::ERROR, error);
                if !retryable {
                    h.insert(headers::RETRYABLE, "false");
                }
                h
            };
            match msg.subject.as_str() {
                "fn.slow" => continue,
                "fn.flaky" => {
                    flaky_calls += 1;
                    if flaky_calls == 1 {
                        client.publish_with_headers(reply, fail("first call fails", true), "".into()).await.unwrap();
                        continue;
                    }
                }
                "fn.broken" => {
                    client.publish_with_headers(reply, fail("broken for good", false), "".into()).await.unwrap();
                    continue;
                }
                _ => {}
            }
            client.publish(reply, r#"{"ok":true}"#.into()).await.unwrap();
        }
    })
}

const CONSOLE_TOKEN: &str = "console-test-token";

/// A real `jetsched console` process as `user` (acting with
/// [`CONSOLE_TOKEN`] when `actions`), and its URL.
async fn console(server: &SecureServer, user: &User, names: &Names, actions: bool) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"));
    cmd.args(["console", "--listen", "127.0.0.1:0"])
        .envs(server.env(user, names))
        .env("JETSCHED_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if actions {
        cmd.arg("--allow-actions").env("JETSCHED_CONSOLE_TOKEN", CONSOLE_TOKEN);
    }
    let mut child = cmd.spawn().unwrap();
    let (url, _) = harness::console_url(&mut child).await;
    (child, url)
}

/// POSTs an action to a console as a script (the token as a bearer): its
/// status and the `Location` it sends the operator to.
async fn act(url: &str, path: &str, form: &str) -> (u16, String) {
    jetsched_runtime::telemetry::install_crypto_provider();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = within(
        30,
        "a console action",
        client
            .post(format!("{url}{path}"))
            .bearer_auth(CONSOLE_TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send(),
    )
    .await
    .unwrap();
    let status = response.status().as_u16();
    let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = response.text().await.unwrap();
    (status, if location.is_empty() { body } else { location })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_works_with_every_service_under_its_own_role_over_mutual_tls() {
    let names = Names::default();
    let users = Users::new(&names);
    let server = SecureServer::start(&users.all(), Tls::Mutual).await;
    // `jetsched init` as the admin, then every service under its own user.
    let admin = server.open(&users.admin, &names, Role::Admin, &Scope::default()).await;
    let ticker = server.open(&users.ticker, &names, Role::Ticker, &Scope::default()).await;
    let dispatcher = server.open(&users.dispatcher, &names, Role::Dispatcher, &Scope::default()).await;
    let worker = server.open(&users.worker, &names, Role::Worker, &worker_scope()).await;
    let _functions = serve_functions(&server, &users.function, &names).await;
    let mut hook = HttpStub::start(vec![(200, vec![])]).await;

    let put = |task: &str, def: serde_json::Value| {
        let tasks = admin.tasks.clone();
        let task = task.to_string();
        async move { tasks.put(task, def.to_string().into()).await.unwrap() }
    };
    put("ok", json!({"handler": {"type": "nats", "subject": "fn.ok"}})).await;
    put("flaky", json!({"handler": {"type": "nats", "subject": "fn.flaky"}, "retry": {"max_attempts": 3, "initial_backoff": "100ms"}})).await;
    put("broken", json!({"handler": {"type": "nats", "subject": "fn.broken"}})).await;
    put("slow", json!({"handler": {"type": "nats", "subject": "fn.slow"}, "timeout": "5m"})).await;
    put("hook", json!({"handler": {"type": "http", "url": hook.url}})).await;
    put("exec", json!({"handler": {"type": "exec", "command": ["true"]}})).await;
    put("flow", json!({"steps": {"a": {"task": "ok"}, "b": {"task": "hook", "depends_on": ["a"]}}})).await;
    put("routed", json!({"handler": {"type": "nats", "subject": "fn.ok"}, "routing": "round_robin"})).await;
    admin.schedules.put("tick", json!({"every": "1s", "task": "ok"}).to_string().into()).await.unwrap();

    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let config = harness::WorkerConfig {
        worker_id: Some(WORKER_ID.into()),
        allow_exec: vec!["true".into()],
        ..harness::WorkerConfig::default()
    };
    secure::spawn_services(ticker, dispatcher, (worker, config), &token);
    let mut events = Events::read(&admin).await;

    // Submissions: the CLI as the submitter role, then raw publishes as it.
    let submitter_env = server.env(&users.submitter, &names);
    let (code, out, err) = jetsched(&submitter_env, &["submit", "ok", "{}"]).await;
    assert_eq!(code, 0, "jetsched submit as the submitter: {out}{err}");
    let submitter = Probe::connect(&server, &users.submitter, &names, Role::Submitter).await;
    let js = jetsched_runtime::jetstream(submitter.client.clone());
    for task in ["flaky", "broken", "slow", "hook", "exec", "flow", "routed"] {
        js.publish(names.submit_subject(task), "{}".into()).await.unwrap().await.unwrap();
    }

    let fired = events.wait_for(30, "a schedule fire to succeed", |e| {
        e.task == "ok" && e.schedule.as_deref() == Some("tick") && e.status == RunStatus::Succeeded
    });
    fired.await;
    events
        .wait_for(30, "a submitted NATS function run", |e| {
            e.task == "ok"
                && e.schedule.is_none()
                && e.status == RunStatus::Succeeded
                && e.run_id.as_deref().is_some_and(|r| r.starts_with("t.ok."))
        })
        .await;
    events.wait_for(30, "the flaky run to fail once", is("flaky", RunStatus::Failed)).await;
    events.wait_for(30, "the flaky run to succeed on retry", is("flaky", RunStatus::Succeeded)).await;
    let dead = events.wait_for(30, "the broken run to be dead-lettered", is("broken", RunStatus::Dead)).await;
    events.wait_for(30, "the HTTP handler", is("hook", RunStatus::Succeeded)).await;
    hook.next_request(10).await;
    events.wait_for(30, "the exec handler", is("exec", RunStatus::Succeeded)).await;
    events.wait_for(30, "the workflow", is("flow", RunStatus::Succeeded)).await;
    events.wait_for(30, "the routed run", is("routed", RunStatus::Succeeded)).await;

    // The dead letter is in the DLQ, as the admin sees it.
    let dlq = admin.stream(&names.dlq_stream()).await.unwrap();
    let copy = dlq.direct_get_last_for_subject(names.dead_subject("broken")).await.unwrap();
    let copied_run = copy.headers.get(headers::RUN_ID).map(|v| v.as_str().to_string());
    assert_eq!(copied_run, dead.run_id, "the DLQ holds the dead run");

    // Cancel through the CLI as the admin.
    let slow = events.wait_for(30, "the slow run to start", is("slow", RunStatus::Started)).await;
    let run_id = slow.run_id.unwrap();
    let (code, out, err) = jetsched(&server.env(&users.admin, &names), &["runs", "cancel", &run_id]).await;
    assert_eq!(code, 0, "jetsched runs cancel: {out}{err}");
    events.wait_for(30, "the slow run to be cancelled", is("slow", RunStatus::Cancelled)).await;

    // The console under its own role: every page of what happened, read
    // without a refusal.
    let (_viewer, url) = console(&server, &users.console, &names, false).await;
    let dead_run = dead.run_id.clone().unwrap();
    let letter = copy.sequence;
    for path in [
        "/".to_string(),
        "/workers".to_string(),
        "/schedules".to_string(),
        "/schedules/tick".to_string(),
        "/runs".to_string(),
        "/runs?status=dead".to_string(),
        format!("/runs/{dead_run}"),
        "/workflows".to_string(),
        "/dlq".to_string(),
        format!("/dlq/{letter}"),
        "/healthz".to_string(),
        "/readyz".to_string(),
    ] {
        let (status, body) = harness::get_url(&format!("{url}{path}")).await;
        assert_eq!(status, 200, "console page {path} as the console role: {body}\n{}", server.violations().join("\n"));
        if path.starts_with("/runs/") {
            assert!(body.contains("dead"), "the dead run's page shows it: {body}");
        }
    }
    // Read-only: an action is refused by the console itself.
    let (status, _) = act(&url, "/actions/schedules/tick/pause", "").await;
    assert_eq!(status, 403, "a read-only console acts");

    // With actions: pause a schedule, trigger it, replay the dead letter.
    let (_operator, url) = console(&server, &users.console_actions, &names, true).await;
    let (status, to) = act(&url, "/actions/schedules/tick/pause", "").await;
    assert_eq!(status, 303, "pause from the console: {to}");
    let def: serde_json::Value = serde_json::from_slice(&admin.schedules.get("tick").await.unwrap().unwrap()).unwrap();
    assert_eq!(def["paused"], json!(true), "the schedule is paused: {def}");
    let (status, to) = act(&url, "/actions/schedules/tick/trigger", "").await;
    assert_eq!(status, 303, "trigger from the console: {to}");
    let (status, to) = act(&url, "/actions/dlq/replay", &format!("seq={letter}")).await;
    assert_eq!(status, 303, "replay from the console: {to}");
    events
        .wait_for(30, "the replayed run to be dead again", |e| {
            e.task == "broken" && e.status == RunStatus::Dead && e.run_id != dead.run_id
        })
        .await;

    // Nothing any role did on the way was refused.
    let violations = server.violations();
    assert!(violations.is_empty(), "the server refused operations of the pipeline:\n{}", violations.join("\n"));
}

/// A user of `role` with exactly `jetsched permissions`, and one with the
/// same plus `extra` (to show that each denial probe would notice).
fn pair(names: &Names, role: Role, scope: &Scope, extra: &[String]) -> (User, User) {
    let exact = Permissions::of(role, names, scope).unwrap();
    let mut wide = exact.clone();
    for e in extra {
        wide.publish.insert(e.clone());
        wide.subscribe.insert(e.clone());
    }
    (User::with(&format!("{role}"), exact), User::with(&format!("{role}-widened"), wide))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_refused_everything_outside_their_allow_lists() {
    let names = Names::default();
    let tasks = names.tasks_stream();
    let other_lane = harness_consumer(&names, "other", 0);
    let worker_denied: Vec<String> = vec![
        // Put or delete a schedule or a task (a delete is a put with a header).
        format!("$KV.{}.nightly", names.schedules_bucket()),
        format!("$KV.{}.resize", names.tasks_bucket()),
        // Read another queue's work: its consumer, a consumer of its own on
        // that queue, a direct read of the stream, a plain subscription.
        format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.{other_lane}"),
        format!("$JS.API.CONSUMER.CREATE.{tasks}.mine.{}", names.task_subject("other", 0)),
        format!("$JS.API.DIRECT.GET.{tasks}"),
        format!("$JS.API.STREAM.MSG.GET.{tasks}"),
        // Delete a stream, or purge it.
        format!("$JS.API.STREAM.DELETE.{tasks}"),
        format!("$JS.API.STREAM.PURGE.{}", names.inbox_stream()),
        // Submit or fire work.
        names.submit_subject("resize"),
        names.due_subject("resize"),
    ];
    let worker_denied_subs: Vec<String> = vec![names.task_subject("other", 0), names.event_filter()];
    let submitter_denied: Vec<String> = vec![
        format!("$KV.{}.resize", names.tasks_bucket()),
        names.due_subject("resize"),
        names.event_subject("resize", "succeeded"),
        names.cancel_subject("t.resize.q1"),
        format!("$JS.API.STREAM.INFO.{}", names.inbox_stream()),
        format!("$JS.API.DIRECT.GET.{}.$KV.{}.resize", names.bucket_stream(&names.runs_bucket()), names.runs_bucket()),
    ];
    let function_denied: Vec<String> =
        vec![names.submit_subject("resize"), "fn.other".to_string(), format!("$KV.{}.x", names.runs_bucket())];
    // The read-only console reads; it starts, changes and takes nothing.
    let console_denied: Vec<String> = vec![
        names.submit_subject("resize"),
        names.due_subject("resize"),
        names.cancel_subject("t.resize.q1"),
        format!("$KV.{}.nightly", names.schedules_bucket()),
        format!("$KV.{}.t.resize.q1", names.runs_bucket()),
        format!("$KV.{}.b1", names.backfills_bucket()),
        // The services' durable consumers: take their work, or delete them.
        format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.{}", harness_consumer(&names, "default", 0)),
        format!("$JS.API.CONSUMER.DELETE.{tasks}.{}", harness_consumer(&names, "default", 0)),
        format!("$JS.API.CONSUMER.CREATE.{tasks}.mine.{}", names.task_subject("default", 0)),
        format!("$JS.API.STREAM.DELETE.{tasks}"),
        format!("$JS.API.STREAM.PURGE.{}", names.inbox_stream()),
    ];
    let console_denied_subs: Vec<String> = vec![names.task_subject("default", 0), names.submit_subject(">")];
    let (worker, worker_wide) =
        pair(&names, Role::Worker, &worker_scope(), &[worker_denied.clone(), worker_denied_subs.clone()].concat());
    let (submitter, submitter_wide) = pair(
        &names,
        Role::Submitter,
        &Scope::default(),
        &[submitter_denied.clone(), vec![names.event_filter()]].concat(),
    );
    let (function, function_wide) = pair(
        &names,
        Role::Function,
        &Scope::default(),
        &[function_denied.clone(), vec![names.event_filter()]].concat(),
    );
    let (console, console_wide) =
        pair(&names, Role::Console, &Scope::default(), &[console_denied.clone(), console_denied_subs.clone()].concat());
    let admin = User::role(&names, Role::Admin, &Scope::default());
    let server = SecureServer::start(
        &[
            worker.clone(),
            worker_wide.clone(),
            submitter.clone(),
            submitter_wide.clone(),
            function.clone(),
            function_wide.clone(),
            console.clone(),
            console_wide.clone(),
            admin.clone(),
        ],
        Tls::ServerOnly,
    )
    .await;
    let handles = server.open(&admin, &names, Role::Admin, &Scope::default()).await;

    // Each probe is refused for the role...
    let cases = [
        (&worker, &worker_wide, Role::Worker, &worker_denied, &worker_denied_subs),
        (&submitter, &submitter_wide, Role::Submitter, &submitter_denied, &vec![names.event_filter()]),
        (&function, &function_wide, Role::Function, &function_denied, &vec![names.event_filter()]),
        (&console, &console_wide, Role::Console, &console_denied, &console_denied_subs),
    ];
    for (user, _, role, denied, denied_subs) in cases {
        let mut exact = Probe::connect(&server, user, &names, role).await;
        for subject in denied {
            assert!(!exact.may_publish(subject).await, "{role} may publish to {subject}");
        }
        for subject in denied_subs.iter() {
            assert!(!exact.may_subscribe(subject).await, "{role} may subscribe to {subject}");
        }
    }

    // ...and what they are for still works: the submitter's submission is
    // stored, the function answers a request, the worker reads its own queue.
    let mut submitter_probe = Probe::connect(&server, &submitter, &names, Role::Submitter).await;
    let js = jetsched_runtime::jetstream(submitter_probe.client.clone());
    let ack = js.publish(names.submit_subject("resize"), "{}".into()).await.unwrap().await.unwrap();
    assert_eq!(ack.stream, names.inbox_stream());
    assert!(submitter_probe.may_publish(&names.submit_subject("other")).await);

    let function_probe = Probe::connect(&server, &function, &names, Role::Function).await;
    let mut calls = function_probe.client.subscribe("fn.resize").await.unwrap();
    function_probe.client.flush().await.unwrap();
    let answering = function_probe.client.clone();
    tokio::spawn(async move {
        if let Some(msg) = calls.next().await {
            answering.publish(msg.reply.unwrap(), "done".into()).await.unwrap();
        }
    });
    let caller = Probe::connect(&server, &worker, &names, Role::Worker).await;
    let answer = within(10, "the function's answer", caller.client.request("fn.resize", "x".into())).await.unwrap();
    assert_eq!(&answer.payload[..], b"done");

    let own = jetsched_contract::setup::worker_consumer(&names, "default", 0, Duration::from_secs(30));
    let worker_handles = server.open(&worker, &names, Role::Worker, &worker_scope()).await;
    let worker_stream = worker_handles.stream(&names.tasks_stream()).await.unwrap();
    worker_stream.create_consumer(own).await.expect("the worker creates its own lane");
    // The schedule, the task and the streams are untouched.
    assert!(handles.schedules.get("nightly").await.unwrap().is_none());
    assert!(handles.tasks.get("resize").await.unwrap().is_none());
    let mut inbox = handles.stream(&names.inbox_stream()).await.unwrap();
    assert_eq!(inbox.info().await.unwrap().state.messages, 2, "the inbox keeps both submissions");
    handles.stream(&names.tasks_stream()).await.expect("the tasks stream is there");

    // The same probes notice a permission granted: each is allowed for a
    // user widened by exactly what it tries (last: some of them destroy).
    for (_, wide, role, denied, denied_subs) in cases {
        let mut widened = Probe::connect(&server, wide, &names, role).await;
        for subject in denied {
            assert!(widened.may_publish(subject).await, "the widened {role} probe cannot tell: {subject}");
        }
        for subject in denied_subs.iter() {
            assert!(widened.may_subscribe(subject).await, "the widened {role} probe cannot tell: {subject}");
        }
    }
}

fn harness_consumer(names: &Names, queue: &str, band: u8) -> String {
    names.worker_consumer(queue, band)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_short_of_a_permission_stops_at_start_naming_it() {
    let names = Names::default();
    let admin = User::role(&names, Role::Admin, &Scope::default());
    // Each service's exact list, less one subject it needs.
    let short = |role: Role, scope: &Scope, missing: &str| {
        let mut p = Permissions::of(role, &names, scope).unwrap();
        assert!(p.publish.remove(missing), "{role} needs {missing}");
        (User::with(&format!("{role}-short"), p), missing.to_string())
    };
    let cases = [
        ("ticker", short(Role::Ticker, &Scope::default(), &names.due_subject(">")), vec![]),
        ("dispatcher", short(Role::Dispatcher, &Scope::default(), &names.tasks_subjects()[0]), vec![]),
        (
            "worker",
            short(Role::Worker, &worker_scope(), &format!("$KV.{}.>", names.slots_bucket())),
            vec!["--worker-id", WORKER_ID],
        ),
    ];
    let mut users = vec![admin.clone()];
    users.extend(cases.iter().map(|(_, (u, _), _)| u.clone()));
    let server = SecureServer::start(&users, Tls::ServerOnly).await;
    let (code, out, err) = jetsched(&server.env(&admin, &names), &["init"]).await;
    assert_eq!(code, 0, "jetsched init as the admin: {out}{err}");
    for (service, (user, missing), extra) in &cases {
        let mut args = vec![*service];
        args.extend(extra.iter().copied());
        let (code, _, err) = jetsched(&server.env(user, &names), &args).await;
        assert_eq!(code, 1, "`jetsched {service}` short of {missing} exits with an error:\n{err}");
        assert!(
            err.contains(&format!("publish to {missing}")) && err.contains(&format!("the {service} role needs")),
            "`jetsched {service}` names the missing permission {missing}:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_certificates_from_another_ca_are_refused() {
    let names = Names::default();
    let admin = User::role(&names, Role::Admin, &Scope::default());
    let server = SecureServer::start(std::slice::from_ref(&admin), Tls::Mutual).await;

    // A plaintext client: the server wants a TLS handshake after its INFO
    // and never reads the CONNECT as such.
    let plain = within(10, "a plaintext session", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port())).await.unwrap();
        let connect = format!(
            "CONNECT {{\"user\":\"{}\",\"pass\":\"{}\",\"verbose\":false}}\r\nPING\r\n",
            admin.name, admin.password
        );
        let _ = tcp.write_all(connect.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).to_string()
    })
    .await;
    assert!(plain.contains("\"tls_required\":true"), "the server announces TLS: {plain}");
    assert!(!plain.contains("PONG"), "a plaintext client was served: {plain}");

    // The same user, over TLS, with a client certificate from the test CA: served.
    let ok = jetsched_runtime::connect(&server.args(&admin, &names), "test", false).await;
    assert!(ok.is_ok(), "the test CA's client certificate is accepted: {:?}", ok.err());
    // With a certificate from another CA, or none: refused.
    let mut rogue = server.args(&admin, &names);
    rogue.tls_cert = Some(server.pki.rogue.cert.clone());
    rogue.tls_key = Some(server.pki.rogue.key.clone());
    let refused = within(30, "a rogue certificate", jetsched_runtime::connect(&rogue, "test", false)).await;
    assert!(refused.is_err(), "a client certificate from another CA was accepted");
    let mut none = server.args(&admin, &names);
    none.tls_cert = None;
    none.tls_key = None;
    let refused = within(30, "no certificate", jetsched_runtime::connect(&none, "test", false)).await;
    assert!(refused.is_err(), "a client without a certificate was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_requiring_tls_refuses_a_plaintext_server() {
    let env = harness::Env::start().await;
    let prefix = jetsched_contract::DEFAULT_PREFIX.to_string();
    let plain = jetsched_runtime::NatsArgs { url: Some(env.url()), prefix, ..Default::default() };
    let args = jetsched_runtime::NatsArgs { tls_required: true, ..plain.clone() };
    let refused = within(30, "connecting", jetsched_runtime::connect(&args, "test", false)).await;
    assert!(refused.is_err(), "--tls-required connected to a server without TLS");
    assert!(jetsched_runtime::connect(&plain, "test", false).await.is_ok());
}

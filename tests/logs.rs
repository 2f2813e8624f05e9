//! Task logs on a real nats-server: the worker keeps what each attempt's
//! handler printed or answered in the logs stream, masks the task's
//! secrets, keeps at most its limit, and `jetsched runs logs RUN [-f]`
//! prints it, live while the run goes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;
use std::process::Stdio;

use harness::*;
use jetsched_contract::RunStatus;
use jetsched_worker::Outcome;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn exec_worker(limit: usize) -> ServicesConfig {
    let worker = WorkerConfig { allow_exec: vec!["sh".into()], task_log_limit: limit, ..WorkerConfig::default() };
    ServicesConfig { worker: Some(worker), ..ServicesConfig::default() }
}

/// A named pipe a command blocks on until the test writes a line to it.
fn fifo(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gate");
    let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(status.success());
    path
}

async fn release(gate: &Path) {
    let gate = gate.to_path_buf();
    within(10, "the command to read the gate", tokio::task::spawn_blocking(move || std::fs::write(gate, "go\n")))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_is_followed_live_with_secrets_masked() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = fifo(dir.path());
    let script = format!("echo \"start with $API_TOKEN\"; echo oops >&2; read x < {}; echo done", gate.display());
    env.put_task(
        "job",
        json!({
            "handler": {"type": "exec", "command": ["sh", "-c", script], "env": {"API_TOKEN": "supersecret-42"}},
            "secrets": ["API_TOKEN"],
            "retry": {"max_attempts": 1}
        }),
    )
    .await;
    let _services = env.services_with(exec_worker(64 * 1024));
    let mut events = env.events().await;
    let seq = env.submit("job", "{}").await;
    let run = jetsched_contract::run::submitted_run_id("job", None, seq);
    events.wait_for(20, "the run to start", is("job", RunStatus::Started)).await;

    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetsched"))
        .args(["runs", "logs", &run, "-f"])
        .env("NATS_URL", env.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    within(20, "the first line while the run goes", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("start with");
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    assert!(seen.iter().any(|l| l == "start with ***"), "{seen:?}");
    assert!(seen.iter().all(|l| !l.contains("supersecret")), "{seen:?}");
    // Still running: the gate is closed.
    assert!(env.runs.get(&run).await.unwrap().is_some_and(|s| !s.record.status.is_terminal()));

    release(&gate).await;
    within(20, "the follower to print the rest and exit when the run ends", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
        }
    })
    .await;
    let status = within(10, "the follower to exit", follow.wait()).await.unwrap();
    assert!(status.success());
    assert!(seen.iter().any(|l| l == "done"), "{seen:?}");
    let done = events.wait_for(10, "the run to succeed", is("job", RunStatus::Succeeded)).await;
    assert!(!done.output.as_deref().unwrap_or_default().contains("supersecret"), "{:?}", done.output);

    let (code, out, err) = env.jetsched(&["runs", "logs", &run]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--- attempt 1, stdout ---\nstart with ***\n"), "{out}");
    assert!(out.contains("--- attempt 1, stderr ---\noops\n"), "{out}");
    assert!(!out.contains("supersecret"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_responses_and_builtin_lines_are_kept_per_attempt() {
    let env = Env::start().await;
    let _fn = env.function("fn.answer", |_| Reply::Ok(json!({"answer": 42}))).await;
    let stub = HttpStub::start(vec![(200, vec![])]).await;
    env.put_task("ask", json!({"handler": {"type": "nats", "subject": "fn.answer"}})).await;
    env.put_task("hook", json!({"handler": {"type": "http", "url": stub.url}})).await;
    env.put_task(
        "steps",
        json!({"handler": {"type": "builtin", "name": "steps"}, "retry": {"max_attempts": 2, "initial_backoff": "100ms"}}),
    )
    .await;
    let mut builtins = Builtins::default();
    builtins.register("steps", |inv| async move {
        inv.log(&format!("step one of attempt {}", inv.attempt)).await;
        if inv.attempt == 1 {
            return Outcome::retry("not yet");
        }
        inv.log("step two").await;
        Outcome::ok(json!({}))
    });
    let _services = env.services_with(ServicesConfig { builtins, ..ServicesConfig::default() });
    let mut events = env.events().await;
    let ask = jetsched_contract::run::submitted_run_id("ask", None, env.submit("ask", "{}").await);
    let hook = jetsched_contract::run::submitted_run_id("hook", None, env.submit("hook", "{}").await);
    let steps = jetsched_contract::run::submitted_run_id("steps", None, env.submit("steps", "{}").await);
    for task in ["ask", "hook", "steps"] {
        events.wait_for(30, "the run to succeed", is(task, RunStatus::Succeeded)).await;
    }

    // A success's answer is the run record's result: shown from there,
    // not stored a second time in the logs stream.
    let (_, out, _) = env.jetsched(&["runs", "logs", &ask]).await;
    assert_eq!(out, "--- attempt 1, result ---\n{\"answer\":42}\n");
    let logs = env.handles.js.get_stream(env.names.logs_stream()).await.unwrap();
    for run in [&ask, &hook] {
        let stored = logs.get_last_raw_message_by_subject(&env.names.log_subject(run, 1)).await;
        assert!(stored.is_err(), "{run}'s answer is stored in the logs too");
    }
    let (_, out, _) = env.jetsched(&["runs", "logs", &hook]).await;
    assert_eq!(out, "--- attempt 1, result ---\n{}\n");
    let (_, out, _) = env.jetsched(&["runs", "logs", &steps]).await;
    assert_eq!(
        out,
        "--- attempt 1, log ---\nstep one of attempt 1\n--- attempt 1, jetsched ---\nfailed: not yet\n\
         --- attempt 2, log ---\nstep one of attempt 2\nstep two\n--- attempt 2, result ---\n{}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_keeps_at_most_its_limit() {
    let env = Env::start().await;
    let script = "i=0; while [ $i -lt 500 ]; do echo line-$i-of-a-chatty-command; i=$((i+1)); done";
    env.put_task("chatty", json!({"handler": {"type": "exec", "command": ["sh", "-c", script]}})).await;
    let _services = env.services_with(exec_worker(1000));
    let mut events = env.events().await;
    let run = jetsched_contract::run::submitted_run_id("chatty", None, env.submit("chatty", "{}").await);
    events.wait_for(30, "the run to succeed", is("chatty", RunStatus::Succeeded)).await;
    let (_, out, _) = env.jetsched(&["runs", "logs", &run]).await;
    let kept: usize = out.lines().filter(|l| l.starts_with("line-")).map(|l| l.len() + 1).sum();
    assert!(kept <= 1000, "kept {kept} bytes");
    assert!(out.contains("line-0-of-a-chatty-command\n"), "{out}");
    assert!(!out.contains("line-499-"), "{out}");
    assert!(out.contains("more bytes of output not kept (limit 1000 bytes per attempt)"), "{out}");
}

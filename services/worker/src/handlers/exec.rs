//! Exec handlers: run an allow-listed command with the payload on stdin.
//! Exit 0 is success, 75 (EX_TEMPFAIL) a retryable failure, anything else a
//! permanent one. The command is executed directly, never through a shell
//! (its arguments are not interpreted). The child gets a clean environment
//! (PATH, the task's `env` and `JETSCHED_*` variables), never the worker's
//! own, which may hold NATS credentials. Its stdout is the run's result, up
//! to the worker's `--max-output`: more fails the run (the output is never
//! cut); events show the first bytes of stdout and stderr, marked when cut. The command runs in a process group of its own; stopping it
//! (timeout, cancel) sends SIGTERM to the whole group, then SIGKILL after a
//! grace period, with plain `kill(2)` calls that never block the runtime, so
//! that processes it started go too.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Invocation, Outcome};
use crate::logs::{LogSink, Source};

/// Exit code that asks for a retry (sysexits.h EX_TEMPFAIL).
pub const EXIT_RETRY: i32 = 75;

/// Which commands may run and how much output is kept.
#[derive(Debug, Clone)]
pub struct ExecPolicy {
    /// Programs allowed as `command[0]`, compared exactly (a bare name does
    /// not allow a path, and the other way round).
    pub allowed: Vec<String>,
    /// Bytes of stdout and of stderr shown in the run event.
    pub output_limit: usize,
    /// Largest stdout (the run's result): more fails the run.
    pub max_output: usize,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub grace: Duration,
    /// Processes at once: a worker's slots are sized for runs that wait on
    /// the network (NATS functions, webhooks); a process costs a core.
    pub processes: Arc<Semaphore>,
}

impl Default for ExecPolicy {
    fn default() -> Self {
        ExecPolicy {
            allowed: Vec::new(),
            output_limit: 4096,
            max_output: 1 << 20,
            grace: Duration::from_secs(5),
            processes: Arc::new(Semaphore::new(default_exec_slots())),
        }
    }
}

/// Processes an exec handler may run at once by default: two per core the
/// worker may use.
pub fn default_exec_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Runs `command`; `stop` ends it early (timeout or cancel).
pub async fn run(
    policy: &ExecPolicy,
    command: &[String],
    env: &BTreeMap<String, String>,
    inv: &Invocation,
    stop: CancellationToken,
) -> Outcome {
    let Some(program) = command.first() else {
        return Outcome::permanent("exec handler has an empty command");
    };
    if !policy.allowed.iter().any(|a| a == program) {
        return Outcome::permanent(format!(
            "command {program:?} is not allow-listed on this worker (see --allow-exec)"
        ));
    }
    // Waiting for a process slot counts against the run's timeout.
    let _process = tokio::select! {
        p = policy.processes.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return Outcome::retry("the worker is shutting down"),
        },
        _ = stop.cancelled() => return Outcome::retry(format!("stopped while waiting for a process slot for {program:?} (see --exec-slots)")),
    };
    let mut cmd = Command::new(program);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .env("JETSCHED_RUN_ID", &inv.run_id)
        .env("JETSCHED_TASK", &inv.task)
        .env("JETSCHED_ATTEMPT", inv.attempt.to_string())
        .env("JETSCHED_DEADLINE", inv.deadline.to_string())
        .env("JETSCHED_CHECKPOINT", inv.checkpoint.as_ref().map(|c| c.to_string()).unwrap_or_default())
        .env("JETSCHED_SHARD_INDEX", inv.shard.map(|s| s.index.to_string()).unwrap_or_default())
        .env("JETSCHED_SHARD_TOTAL", inv.shard.map(|s| s.total.to_string()).unwrap_or_default())
        // The run's W3C trace context (`TRACEPARENT`, and `TRACESTATE` when set).
        .envs(jetsched_runtime::trace::current_pairs().into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group (id = its pid): a stop reaches its children.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::permanent(format!("cannot start {program:?}: {e}")),
    };
    // Killed with its group if this future is dropped before it ends.
    let mut group = Group(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
    let stdin = child.stdin.take();
    let payload = match &inv.payload {
        serde_json::Value::Null => Vec::new(),
        v => serde_json::to_vec(v).unwrap_or_default(),
    };
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read stdin closes it early: not an error.
            let _ = stdin.write_all(&payload).await;
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let wait = async {
        let (_, out, err, status) = tokio::join!(
            feed,
            read_limited(stdout, policy.max_output, &inv.log, Source::Stdout),
            read_limited(stderr, policy.output_limit, &inv.log, Source::Stderr),
            child.wait()
        );
        (out, err, status)
    };
    tokio::pin!(wait);
    let stopped = tokio::select! {
        r = &mut wait => Some(r),
        _ = stop.cancelled() => None,
    };
    let (out, err, status) = match stopped {
        Some(r) => {
            group.0 = None;
            r
        }
        None => {
            group.signal(rustix::process::Signal::TERM);
            match tokio::time::timeout(policy.grace, &mut wait).await {
                Ok(r) => r,
                Err(_) => {
                    // Still alive after the grace period: SIGKILL to the
                    // group, then reap the child (bounded: its pipes close
                    // once every process of the group is gone).
                    group.signal(rustix::process::Signal::KILL);
                    let _ = tokio::time::timeout(policy.grace, &mut wait).await;
                    return Outcome::permanent(format!("{program:?} ignored SIGTERM and was killed"));
                }
            }
        }
    };
    let output = describe(&out, &err, policy.output_limit);
    if out.total > policy.max_output {
        return Outcome::Failure {
            error: format!(
                "{program:?} wrote {} bytes to stdout, over the worker's --max-output ({} bytes); refused, not cut",
                out.total, policy.max_output
            ),
            retryable: false,
            retry_after: None,
            output,
        };
    }
    match status {
        Ok(s) if s.success() => Outcome::Success { result: out.kept.into(), output },
        Ok(s) if s.code() == Some(EXIT_RETRY) => Outcome::Failure {
            error: format!("{program:?} exited with {EXIT_RETRY} (retry)"),
            retryable: true,
            retry_after: None,
            output,
        },
        Ok(s) => Outcome::Failure {
            error: format!("{program:?} {}", exit_text(s)),
            retryable: false,
            retry_after: None,
            output,
        },
        Err(e) => Outcome::retry(format!("cannot wait for {program:?}: {e}")),
    }
}

fn exit_text(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with {code}"),
        None => "was killed by a signal".to_string(),
    }
}

/// A command's process group, SIGKILLed when dropped unless it ended.
struct Group(Option<rustix::process::Pid>);

impl Group {
    /// Sends `signal` to every process of the group (one syscall; a group
    /// already gone is not an error).
    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pgid) = self.0 {
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
    }
}

/// What a pipe carried: its first bytes, and how many in all.
struct Read {
    kept: Vec<u8>,
    total: usize,
}

/// Reads a pipe to the end (so the command never blocks on a full pipe),
/// keeping the first `limit` bytes and counting the rest, and passes
/// everything on to the task log as it comes.
async fn read_limited(pipe: Option<impl AsyncRead + Unpin>, limit: usize, log: &LogSink, source: Source) -> Read {
    let mut read = Read { kept: Vec::new(), total: 0 };
    let Some(mut pipe) = pipe else { return read };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return read,
            Ok(n) => {
                log.write(source, bytes::Bytes::copy_from_slice(&buf[..n])).await;
                let room = limit.saturating_sub(read.kept.len());
                read.kept.extend_from_slice(&buf[..n.min(room)]);
                read.total += n;
            }
        }
    }
}

/// Stdout and stderr for the run event, each cut at `keep` bytes with a note.
fn describe(out: &Read, err: &Read, keep: usize) -> Option<String> {
    let text = |r: &Read| {
        let shown = super::shown(&r.kept[..r.kept.len().min(keep)], keep);
        if r.total > keep { format!("{shown}… ({} bytes in all)", r.total) } else { shown }
    };
    let (out, err) = (text(out), text(err));
    match (out.trim().is_empty(), err.trim().is_empty()) {
        (true, true) => None,
        (false, true) => Some(out),
        (true, false) => Some(format!("stderr: {err}")),
        (false, false) => Some(format!("{out}\nstderr: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Invocation {
        Invocation {
            run_id: "r1".into(),
            task: "t".into(),
            attempt: 1,
            deadline: jiff::Timestamp::now(),
            timeout: Duration::from_secs(5),
            schedule: None,
            scheduled_for: None,
            payload: serde_json::json!({"x": 1}),
            checkpoint: Some(serde_json::json!({"step": 2})),
            cancel_subject: "jetsched.cancel.r1".into(),
            checkpoints: None,
            shard: None,
            log: LogSink::default(),
        }
    }

    fn policy(allowed: &[&str]) -> ExecPolicy {
        ExecPolicy {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            output_limit: 64,
            grace: Duration::from_millis(500),
            ..ExecPolicy::default()
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn payload_goes_to_stdin_and_stdout_is_the_result() {
        let out = run(&policy(&["cat"]), &argv(&["cat"]), &BTreeMap::new(), &inv(), CancellationToken::new()).await;
        assert_eq!(out, Outcome::Success { result: r#"{"x":1}"#.into(), output: Some(r#"{"x":1}"#.into()) });
    }

    #[tokio::test]
    async fn commands_off_the_allow_list_do_not_run() {
        let out =
            run(&policy(&["cat"]), &argv(&["/bin/cat"]), &BTreeMap::new(), &inv(), CancellationToken::new()).await;
        assert!(
            matches!(out, Outcome::Failure { retryable: false, ref error, .. } if error.contains("not allow-listed")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn exit_75_retries_and_other_codes_do_not() {
        let p = policy(&["sh"]);
        let retry = run(&p, &argv(&["sh", "-c", "exit 75"]), &BTreeMap::new(), &inv(), CancellationToken::new()).await;
        assert!(matches!(retry, Outcome::Failure { retryable: true, .. }), "{retry:?}");
        let fail =
            run(&p, &argv(&["sh", "-c", "echo boom >&2; exit 3"]), &BTreeMap::new(), &inv(), CancellationToken::new())
                .await;
        match fail {
            Outcome::Failure { retryable, error, output, .. } => {
                assert!(!retryable);
                assert!(error.contains("exited with 3"));
                assert_eq!(output.as_deref(), Some("stderr: boom\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn environment_is_clean_and_carries_the_run() {
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hi".to_string());
        let script =
            r#"printf '%s %s %s %s' "$GREETING" "$JETSCHED_RUN_ID" "${NATS_PASSWORD:-unset}" "$JETSCHED_CHECKPOINT""#;
        let out = temp_env_run(&env, script).await;
        assert_eq!(out, r#"hi r1 unset {"step":2}"#);
    }

    async fn temp_env_run(env: &BTreeMap<String, String>, script: &str) -> String {
        match run(&policy(&["sh"]), &argv(&["sh", "-c", script]), env, &inv(), CancellationToken::new()).await {
            Outcome::Success { result, .. } => String::from_utf8(result.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Whether process `pid` has ended (gone, or a zombie not yet reaped).
    fn ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// Runs `script` under `sh` (allowed) until it has written its pid and
    /// its background child's to a file, then stops it; returns the outcome
    /// and the two pids.
    async fn stop_after_start(script: &str) -> (Outcome, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let env = BTreeMap::from([("PIDS".to_string(), pids.display().to_string())]);
        let stop = CancellationToken::new();
        let policy = policy(&["sh"]);
        let command = argv(&["sh", "-c", script]);
        let inv = inv();
        let running = run(&policy, &command, &env, &inv, stop.clone());
        tokio::pin!(running);
        // Until the command says it is up (a deadline only as a failure bound).
        let up = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    out = &mut running => panic!("ended before it was stopped: {out:?}"),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if let Ok(text) = std::fs::read_to_string(&pids) {
                    return text.split_whitespace().map(str::to_string).collect::<Vec<_>>();
                }
            }
        })
        .await
        .expect("the command starts");
        assert_eq!(up.len(), 2, "{up:?}");
        assert!(!ended(&up[0]) && !ended(&up[1]), "both run before the stop");
        stop.cancel();
        let out = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the stop ends the run");
        (out, up)
    }

    #[tokio::test]
    async fn stop_terminates_the_command_and_its_children() {
        let script = r#"sleep 300 & echo $$ $! > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; wait"#;
        let (out, pids) = stop_after_start(script).await;
        assert!(matches!(out, Outcome::Failure { retryable: false, .. }), "{out:?}");
        for pid in &pids {
            assert!(ended(pid), "process {pid} outlived the stop");
        }
    }

    #[tokio::test]
    async fn a_command_ignoring_sigterm_is_killed_with_its_children() {
        // SIG_IGN is inherited: the background sleep ignores SIGTERM too.
        let script = r#"trap '' TERM; sleep 300 & echo $$ $! > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; wait"#;
        let (out, pids) = stop_after_start(script).await;
        assert!(
            matches!(&out, Outcome::Failure { error, .. } if error.contains("ignored SIGTERM and was killed")),
            "{out:?}"
        );
        for pid in &pids {
            assert!(ended(pid), "process {pid} outlived the kill");
        }
    }

    #[tokio::test]
    async fn output_over_the_limit_fails_the_run_and_is_never_cut() {
        let p = ExecPolicy { max_output: 1000, ..policy(&["sh"]) };
        let run_with = |script: &'static str| {
            let p = p.clone();
            async move { run(&p, &argv(&["sh", "-c", script]), &BTreeMap::new(), &inv(), CancellationToken::new()).await }
        };
        match run_with("yes | head -c 1000").await {
            Outcome::Success { result, output } => {
                assert_eq!(result.len(), 1000, "a result at the limit is whole");
                assert!(output.unwrap().ends_with("(1000 bytes in all)"), "the event says it shows a part");
            }
            other => panic!("{other:?}"),
        }
        match run_with("yes | head -c 10000").await {
            Outcome::Failure { retryable: false, error, .. } => {
                assert!(error.contains("10000 bytes") && error.contains("--max-output"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
}

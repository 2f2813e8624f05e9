//! Calling the handler for one attempt: build the invocation (deadline,
//! last checkpoint, cancel subject), keep the work message in progress while
//! the handler runs, save exec checkpoints as they appear, and stop the
//! handler at its timeout or on a cancel request.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use jetsched_contract::{Handler, HumanDuration, WorkItem, codec};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointFile, Checkpoints};
use crate::ctx::WorkerCtx;
use crate::handlers::nats::{Pending, Sent};
use crate::handlers::{Invocation, Outcome, exec, http, nats};
use crate::limits::SlotHold;
use crate::logs::{AttemptLog, LogSink, Source};

/// How an attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The handler finished (or timed out, which is a retryable failure).
    Done(Outcome),
    /// A cancel request stopped it.
    Cancelled,
}

/// A staged run's NATS function call, built ahead of its instant.
pub struct Ahead {
    /// The invocation it was built from.
    pub inv: Invocation,
    /// Its reply, once it comes.
    pub pending: Pending,
    /// Whether the releaser sent it.
    pub sent: Sent,
}

/// The invocation of attempt `attempt` of `item` starting at `start`: its
/// deadline, last checkpoint and cancel subject.
pub async fn invocation(ctx: &WorkerCtx, item: &WorkItem, attempt: u32, start: Timestamp) -> Invocation {
    let timeout = item.def.timeout.0;
    let deadline = start.checked_add(SignedDuration::try_from(timeout).unwrap_or_default()).unwrap_or(Timestamp::MAX);
    let checkpoints = Checkpoints::new(ctx.checkpoints.clone(), &item.run_id);
    // Only a retry can have a checkpoint: the first attempt skips the read.
    let checkpoint = if attempt > 1 {
        checkpoints.load().await.unwrap_or_else(|err| {
            tracing::debug!(run_id = %item.run_id, %err, "cannot read checkpoint");
            crate::running::RUNNING.failed(&format_args!("cannot read checkpoint: {err}"));
            None
        })
    } else {
        None
    };
    Invocation {
        run_id: item.run_id.clone(),
        task: item.task.clone(),
        attempt,
        deadline,
        timeout,
        schedule: item.schedule.clone(),
        scheduled_for: item.scheduled_for,
        payload: item.payload.clone(),
        checkpoint,
        cancel_subject: ctx.publisher.names().cancel_subject(&item.run_id),
        checkpoints: Some(checkpoints),
        shard: item.shard,
        log: LogSink::default(),
    }
}

/// Runs attempt `attempt` of `item`, or completes the call built `ahead`.
pub async fn invoke(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    attempt: u32,
    cancel: &CancellationToken,
    slot: Option<&mut SlotHold>,
    ahead: Option<Ahead>,
) -> Attempt {
    let (mut inv, ahead) = match ahead {
        Some(Ahead { inv, pending, sent }) => (inv, Some((pending, sent))),
        None => (invocation(ctx, item, attempt, Timestamp::now()).await, None),
    };
    let subject = ctx.publisher.names().log_subject(&item.run_id, attempt);
    let log = AttemptLog::start(ctx.publisher.js().clone(), subject, &item.def, ctx.task_log_limit);
    inv.log = log.sink();
    let mut attempt = invoke_logged(ctx, msg, item, attempt, cancel, slot, &inv, ahead).await;
    if let Attempt::Done(outcome) = &mut attempt {
        log_outcome(&inv.log, item, outcome).await;
        // The event's copy of the output, and the result kept in the run
        // record, are masked like the log.
        let masker = crate::logs::Masker::for_task(&item.def);
        if !masker.is_empty() {
            if let Outcome::Success { output: Some(o), .. } | Outcome::Failure { output: Some(o), .. } = outcome {
                *o = masker.mask(o);
            }
            if let Outcome::Success { result, .. } = outcome
                && let Ok(text) = std::str::from_utf8(result)
            {
                *result = masker.mask(text).into();
            }
        }
    }
    log.finish().await;
    attempt
}

/// What a NATS function replied or an HTTP handler answered goes to the
/// task log (exec output and builtin lines are written as they come), and
/// so does why an attempt failed. A success's answer that the run record
/// keeps as its `result` is not stored twice: `runs logs` shows it from
/// the record.
async fn log_outcome(log: &LogSink, item: &WorkItem, outcome: &Outcome) {
    let source = match &item.def.handler {
        Some(Handler::Nats { .. }) => Some(Source::Reply),
        Some(Handler::Http { .. }) => Some(Source::Response),
        _ => None,
    };
    match (outcome, source) {
        (Outcome::Success { result, .. }, Some(source))
            if !result.is_empty() && crate::settle::result_json(result).is_none() =>
        {
            log.write(source, result.clone()).await
        }
        (Outcome::Failure { error, output, .. }, source) => {
            if let (Some(output), Some(source)) = (output, source) {
                log.line(source, output).await;
            }
            log.line(Source::Jetsched, &format!("failed: {error}")).await;
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn invoke_logged(
    ctx: &WorkerCtx,
    msg: &Message,
    item: &WorkItem,
    attempt: u32,
    cancel: &CancellationToken,
    mut slot: Option<&mut SlotHold>,
    inv: &Invocation,
    ahead: Option<(Pending, Sent)>,
) -> Attempt {
    let timeout = item.def.timeout.0;
    let checkpoints = Checkpoints::new(ctx.checkpoints.clone(), &item.run_id);
    let exec = matches!(item.def.handler, Some(Handler::Exec { .. }));
    let mut file = exec.then(|| CheckpointFile::new(&item.run_id, attempt));
    let stop = CancellationToken::new();
    let call = call_handler(ctx, item, inv, ahead, stop.clone(), file.as_ref().map(|f| f.path().to_path_buf()));
    tokio::pin!(call);
    let beat = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let expiry = tokio::time::sleep(timeout);
    tokio::pin!(expiry);
    let cancelled = loop {
        tokio::select! {
            outcome = &mut call => {
                if let Some(f) = file.as_mut() {
                    f.sync(&checkpoints).await;
                }
                return Attempt::Done(outcome);
            }
            _ = heartbeat.tick() => {
                if let Err(err) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(run_id = %item.run_id, %err, "cannot extend the work message's ack deadline");
                    crate::running::RUNNING.failed(&format_args!("cannot extend the work message's ack deadline: {err}"));
                }
                if let Some(f) = file.as_mut() {
                    f.sync(&checkpoints).await;
                }
                if let Some(s) = slot.as_mut() {
                    s.refresh().await;
                }
            }
            _ = &mut expiry => break false,
            _ = cancel.cancelled() => break true,
        }
    };
    // Stop the handler: exec gets SIGTERM, then SIGKILL after the grace
    // period, and is waited for. A NATS function, HTTP call or builtin is
    // dropped at once (the worker stops waiting for it; a function may
    // listen on the cancel subject).
    if exec {
        stop.cancel();
        let grace = ctx.exec.grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, &mut call).await;
    }
    if let Some(f) = file.as_mut() {
        f.sync(&checkpoints).await;
    }
    if cancelled {
        Attempt::Cancelled
    } else {
        Attempt::Done(Outcome::retry(format!("timed out after {}", HumanDuration(timeout))))
    }
}

async fn call_handler(
    ctx: &WorkerCtx,
    item: &WorkItem,
    inv: &Invocation,
    ahead: Option<(Pending, Sent)>,
    stop: CancellationToken,
    checkpoint_file: Option<std::path::PathBuf>,
) -> Outcome {
    if let Err(refused) = ctx.sizes.check_payload(&inv.payload) {
        return refused;
    }
    // Local handlers get sealed payloads opened; their results are sealed
    // and their output kept out of events. NATS functions open and seal
    // themselves (they hold the key).
    let sealed = codec::sealed_key(&inv.payload).map(str::to_string);
    let local = !matches!(item.def.handler, Some(Handler::Nats { .. }));
    let opened;
    let inv = match (&sealed, local) {
        (Some(kid), true) => match open(ctx, inv, kid) {
            Ok(inv) => {
                opened = inv;
                &opened
            }
            Err(refused) => return refused,
        },
        _ => inv,
    };
    // The HTTP and exec calls are boxed: their futures are many kilobytes,
    // and every run's future (moved whole into its task) would carry room
    // for them, NATS functions' too.
    let outcome = match &item.def.handler {
        Some(Handler::Nats { subject }) => match ahead {
            None => ctx.functions.call(subject, inv).await,
            Some((pending, Sent::Yes(result))) => nats::outcome(subject, inv.timeout, result, pending).await,
            Some((pending, Sent::No(mut outbound))) => {
                outbound.trace(&tracing::Span::current());
                let result = ctx.functions.send(outbound).await;
                nats::outcome(subject, inv.timeout, result, pending).await
            }
        },
        Some(Handler::Http { url, method, headers }) => {
            Box::pin(http::call(&ctx.http, url, method, headers, inv)).await
        }
        Some(Handler::Exec { command, env }) => {
            let mut env = env.clone();
            if let Some(path) = checkpoint_file {
                env.insert("JETSCHED_CHECKPOINT_FILE".to_string(), path.display().to_string());
            }
            Box::pin(exec::run(&ctx.exec, command, &env, inv, stop)).await
        }
        Some(Handler::Builtin { name }) => match ctx.builtins.get(name) {
            Some(f) => f(inv.clone()).await,
            None => Outcome::permanent(format!("no builtin handler {name:?} is registered in this worker")),
        },
        None => Outcome::permanent("a workflow task has no handler of its own"),
    };
    let outcome = ctx.sizes.check_output(outcome);
    match (&sealed, local, &ctx.keyring) {
        (Some(_), true, Some(keyring)) => seal(keyring, outcome),
        _ => outcome,
    }
}

/// The invocation with its sealed payload opened with this worker's keys.
fn open(ctx: &WorkerCtx, inv: &Invocation, kid: &str) -> Result<Invocation, Outcome> {
    let Some(keyring) = &ctx.keyring else {
        return Err(Outcome::permanent(format!(
            "the payload is sealed with key {kid:?} and this worker has no --payload-key-file"
        )));
    };
    let mut opened = inv.clone();
    keyring.open_all(&mut opened.payload).map_err(|e| Outcome::permanent(e.to_string()))?;
    Ok(opened)
}

/// A local handler's outcome for a sealed run: the result sealed, the
/// output (which may quote the payload) withheld from events.
fn seal(keyring: &codec::Keyring, outcome: Outcome) -> Outcome {
    const WITHHELD: &str = "(output withheld: the run's payload is sealed)";
    match outcome {
        Outcome::Success { result, output } => match keyring.seal(&result) {
            Ok(sealed) => Outcome::Success {
                result: serde_json::to_vec(&sealed).unwrap_or_default().into(),
                output: output.map(|_| WITHHELD.to_string()),
            },
            Err(e) => Outcome::permanent(format!("cannot seal the result: {e}")),
        },
        Outcome::Failure { error, retryable, retry_after, output } => {
            Outcome::Failure { error, retryable, retry_after, output: output.map(|_| WITHHELD.to_string()) }
        }
    }
}

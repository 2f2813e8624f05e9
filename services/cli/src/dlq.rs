//! `jetsched dlq list|replay`: the dead-letter stream holds rejected
//! submissions (their original message) and dead runs (their work item), each
//! with the reason in `Jetsched-Reason`. Replaying resubmits the run's
//! payload with `Jetsched-Replay-Of: <dead run>` (kept in the new run's
//! record) and an idempotency key derived from the DLQ sequence, so replaying
//! the same dead letter twice runs it once.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use jetsched_contract::{Handles, InboxKind, WorkItem, headers, run};

use crate::admin::BadInput;

/// `jetsched dlq ...`
#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// List dead letters, oldest first (nats stream view JETSCHED_DLQ).
    List {
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// At most this many of the newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Resubmit dead letters by DLQ sequence (see `dlq list`). Equivalent:
    /// `nats pub -H Jetsched-Replay-Of:<run> -H Nats-Msg-Id:replay-<seq>
    /// jetsched.submit.<task> '<payload>'`.
    Replay {
        /// DLQ stream sequences.
        #[arg(required = true)]
        seq: Vec<u64>,
    },
}

/// Runs a `dlq` verb.
pub async fn dlq(h: &Handles, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List { task, limit } => list(h, task, limit).await,
        DlqCmd::Replay { seq } => {
            let bar = indicatif::ProgressBar::new(seq.len() as u64);
            for s in seq {
                let run_id = replay(h, s).await?;
                bar.suspend(|| println!("replayed DLQ #{s} as {run_id}"));
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok(())
        }
    }
}

async fn list(h: &Handles, task: Option<String>, limit: usize) -> anyhow::Result<()> {
    let letters = entries(h, task.as_deref(), limit).await?;
    if letters.is_empty() {
        eprintln!("the dead-letter queue is empty");
        return Ok(());
    }
    let mut t = crate::admin::table(&["SEQ", "STORED", "TASK", "RUN", "REASON"]);
    for d in letters {
        t.add_row(vec![
            format!("#{}", d.seq),
            d.at.round(jiff::Unit::Millisecond).unwrap_or(d.at).to_string(),
            d.task,
            d.run_id.unwrap_or_else(|| "-".to_string()),
            d.reason,
        ]);
    }
    crate::admin::print_table(&t);
    Ok(())
}

/// One message of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Stream sequence (what `dlq replay` takes).
    pub seq: u64,
    /// When it was stored.
    pub at: jiff::Timestamp,
    /// Task (`Jetsched-Task`).
    pub task: String,
    /// The dead run, if it was one (`Jetsched-Run-Id`).
    pub run_id: Option<String>,
    /// Why (`Jetsched-Reason`).
    pub reason: String,
    /// The message body (a work item of a dead run, or the original submission).
    pub body: bytes::Bytes,
}

impl DeadLetter {
    /// The payload the run was given: a work item's `payload`, or the whole
    /// body of a rejected submission.
    pub fn payload(&self) -> serde_json::Value {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(mut item)) if item.contains_key("run_id") && item.contains_key("def") => {
                item.remove("payload").unwrap_or_default()
            }
            Ok(v) => v,
            Err(_) => serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned()),
        }
    }
}

/// The newest `limit` dead letters (of `task`), oldest first
/// (`nats stream view JETSCHED_DLQ`).
pub async fn entries(h: &Handles, task: Option<&str>, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = h.js.get_stream(h.names.dlq_stream()).await?;
    let state = stream.info().await?.state.clone();
    let filter = task.map(|t| h.names.dead_subject(t)).unwrap_or_else(|| h.names.dead_filter());
    let start = match task {
        // Unfiltered: start `limit` messages from the end.
        None => state.last_sequence.saturating_sub(limit as u64).saturating_add(1).max(state.first_sequence),
        Some(_) => state.first_sequence,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start.max(1) },
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    for _ in 0..pending {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await else { break };
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let header = |name: &str| msg.headers.as_ref().and_then(|hm| hm.get(name)).map(|v| v.as_str().to_string());
        out.push(DeadLetter {
            seq: info.stream_sequence,
            at: jiff::Timestamp::from_nanosecond(info.published.unix_timestamp_nanos()).unwrap_or_default(),
            task: header(headers::TASK).unwrap_or_default(),
            run_id: header(headers::RUN_ID),
            reason: header(headers::REASON).unwrap_or_default(),
            body: msg.payload.clone(),
        });
    }
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    Ok(out)
}

/// The dead letter of run `run_id`, searched among the newest `limit` of its task.
pub async fn find_run(h: &Handles, task: &str, run_id: &str, limit: usize) -> anyhow::Result<Option<DeadLetter>> {
    let all = entries(h, Some(task), limit).await?;
    Ok(all.into_iter().rev().find(|d| d.run_id.as_deref() == Some(run_id)))
}

/// Resubmits DLQ message `seq`; returns the new run's id.
pub async fn replay(h: &Handles, seq: u64) -> anyhow::Result<String> {
    let stream = h.js.get_stream(h.names.dlq_stream()).await?;
    let msg = stream.get_raw_message(seq).await.map_err(|e| BadInput(format!("no DLQ message #{seq}: {e}")))?;
    let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_string());
    let original = header(headers::ORIGINAL_SUBJECT).unwrap_or_default();
    let msg_id = format!("replay-{seq}");
    let mut out = HeaderMap::new();
    out.insert(headers::NATS_MSG_ID, msg_id.as_str());
    if h.names.parse_task_subject(&original).is_some() {
        // A dead run: resubmit its payload to its task.
        let item: WorkItem = serde_json::from_slice(&msg.payload)?;
        out.insert(headers::REPLAY_OF, item.run_id.as_str());
        let body = serde_json::to_vec(&item.payload)?;
        h.js.publish_with_headers(h.names.submit_subject(&item.task), out, body.into()).await?.await?;
        return Ok(run::submitted_run_id(&item.task, Some(&msg_id), 0));
    }
    match h.names.parse_inbox_subject(&original) {
        // A rejected submission or fire: send the original again.
        Some((kind, task)) => {
            for (name, values) in msg.headers.iter() {
                let name: &str = name.as_ref();
                let ours = [headers::NATS_MSG_ID, headers::REASON, headers::ORIGINAL_SUBJECT, headers::TASK];
                if !ours.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                    for v in values {
                        out.append(name, v.as_str());
                    }
                }
            }
            if let Some(run) = header(headers::RUN_ID) {
                out.insert(headers::REPLAY_OF, run.as_str());
            }
            h.js.publish_with_headers(original.clone(), out, msg.payload.clone()).await?.await?;
            Ok(match kind {
                InboxKind::Submit => run::submitted_run_id(task, Some(&msg_id), 0),
                InboxKind::Due | InboxKind::Step => format!("a re-run of {task} (same run id as before)"),
                InboxKind::Advance => format!("a step outcome of {task}"),
            })
        }
        None => Err(BadInput(format!(
            "DLQ message #{seq} came from {original:?}; only runs and submissions can be replayed"
        ))
        .into()),
    }
}

//! Reading a run's task logs: the chunks the worker stored on
//! `<prefix>.log.<attempt>.<run id>` in the logs stream, oldest first
//! (`nats stream view JETSCHED_LOGS --subject 'jetsched.log.*.<run id>'`).
//! `jetsched runs logs` prints them (and follows a running run with `-f`);
//! the console's run page shows them and streams new ones.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::{Stream, StreamExt};
use jetsched_contract::{Handles, headers};

/// One stored chunk of output.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Its sequence in the logs stream (read on from the next one).
    pub seq: u64,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// `stdout`, `stderr`, `reply`, `response`, `log` or `jetsched`.
    pub source: String,
    /// The text (secrets already masked by the worker).
    pub text: String,
}

/// How long one read may wait for a stored chunk.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The chunks of `run_id` from stream sequence `from` on, as they are
/// stored (the stream does not end: it waits for more).
pub async fn follow(
    h: &Handles,
    run_id: &str,
    from: u64,
) -> anyhow::Result<(u64, impl Stream<Item = anyhow::Result<Chunk>> + use<>)> {
    let stream = h.js.get_stream(h.names.logs_stream()).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: h.names.run_logs_filter(run_id),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    let names = h.names.clone();
    let messages = consumer.messages().await?;
    let chunks = messages.map(move |msg| {
        let msg = msg?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let attempt = names.parse_log_subject(&msg.subject).map_or(0, |(a, _)| a);
        let source = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::LOG_SOURCE))
            .map_or_else(|| "output".to_string(), |v| v.as_str().to_string());
        Ok(Chunk {
            seq: info.stream_sequence,
            attempt,
            source,
            text: String::from_utf8_lossy(&msg.payload).into_owned(),
        })
    });
    Ok((pending, chunks))
}

/// The chunks of `run_id` stored now from `from` on, up to `max_bytes` of
/// text; and whether some were left out.
pub async fn read(h: &Handles, run_id: &str, from: u64, max_bytes: usize) -> anyhow::Result<(Vec<Chunk>, bool)> {
    let (pending, chunks) = follow(h, run_id, from).await?;
    let mut chunks = std::pin::pin!(chunks);
    let mut out = Vec::new();
    let mut bytes = 0;
    for _ in 0..pending {
        let chunk = tokio::time::timeout(READ_TIMEOUT, chunks.next())
            .await
            .map_err(|_| anyhow::anyhow!("reading the logs of {run_id} timed out"))?
            .ok_or_else(|| anyhow::anyhow!("reading the logs of {run_id} ended early"))??;
        bytes += chunk.text.len();
        if bytes > max_bytes {
            return Ok((out, true));
        }
        out.push(chunk);
    }
    Ok((out, false))
}

/// `jetsched runs logs RUN [-f]`: prints the run's logs; with `follow`,
/// keeps printing until the run has ended.
pub async fn print(h: &Handles, run_id: &str, follow_on: bool) -> anyhow::Result<()> {
    let store = crate::runlist::run_store(h).await?;
    let Some(stored) = store.get(run_id).await? else {
        return Err(crate::admin::bad(format!("no run {run_id} (run records are kept 7 days)")));
    };
    let mut header = Header::default();
    let (chunks, _) = read(h, run_id, 1, usize::MAX).await?;
    let mut next = 1;
    for c in &chunks {
        header.print(c);
        next = c.seq + 1;
    }
    if !follow_on {
        let result = print_result(&mut header, &stored.record);
        if chunks.is_empty() && !result {
            eprintln!("no output stored for {run_id}");
        }
        return Ok(());
    }
    let (_, live) = follow(h, run_id, next).await?;
    let mut live = std::pin::pin!(live);
    let watch = store.watch(run_id).await?;
    let mut watch = std::pin::pin!(watch);
    let shutdown = jetsched_runtime::shutdown_on_signals();
    // The run may have ended before the watch began.
    let mut ended = store.get(run_id).await?.is_some_and(|s| s.record.status.is_terminal());
    loop {
        if ended {
            // The worker stores an attempt's logs before its outcome: what is left is all there.
            for c in read(h, run_id, next, usize::MAX).await?.0 {
                header.print(&c);
            }
            if let Some(stored) = store.get(run_id).await? {
                print_result(&mut header, &stored.record);
            }
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            chunk = live.next() => match chunk {
                Some(c) => {
                    let c = c?;
                    header.print(&c);
                    next = c.seq + 1;
                }
                None => anyhow::bail!("the logs stream ended"),
            },
            change = watch.next() => {
                let Some(change) = change else { anyhow::bail!("the runs bucket watch ended") };
                ended = change?.1.is_some_and(|r| r.status.is_terminal());
            }
        }
    }
}

/// Prints the answer of a run that succeeded, which its record keeps (the
/// worker does not store it twice), unless it is the standard output just
/// printed (an exec handler's); true if there was one.
fn print_result(header: &mut Header, record: &jetsched_contract::RunRecord) -> bool {
    let Some(result) = record.result.as_ref().filter(|_| record.status == jetsched_contract::RunStatus::Succeeded)
    else {
        return false;
    };
    if header.stdout.contains(&record.attempt) {
        return true;
    }
    let text = match result {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    header.print(&Chunk { seq: 0, attempt: record.attempt, source: "result".to_string(), text });
    true
}

/// Prints a line naming the attempt and source whenever they change.
#[derive(Default)]
struct Header {
    /// The attempt and source of the last chunk printed.
    last: Option<(u32, String)>,
    /// Attempts whose standard output was printed.
    stdout: std::collections::BTreeSet<u32>,
}

impl Header {
    fn print(&mut self, c: &Chunk) {
        let now = (c.attempt, c.source.clone());
        if self.last.as_ref() != Some(&now) {
            println!("--- attempt {}, {} ---", c.attempt, c.source);
            self.last = Some(now);
        }
        if c.source == "stdout" {
            self.stdout.insert(c.attempt);
        }
        print!("{}", c.text);
        if !c.text.ends_with('\n') {
            println!();
        }
    }
}

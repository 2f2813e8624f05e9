//! Task logs: what one attempt's handler printed or answered (exec stdout
//! and stderr as they come, the HTTP response, the NATS reply, lines a
//! builtin logs), written to the logs stream on
//! `<prefix>.log.<attempt>.<run id>` in chunks of whole lines, with the
//! values of the task's `secrets` masked.
//!
//! The handlers feed a [`LogSink`]; one writer task per attempt batches
//! (at most [`CHUNK`] bytes, or what came within [`LINGER`]) and publishes.
//! An attempt keeps at most its limit (`--task-log-limit`); past it one
//! line says how much was left out. The attempt waits for its writer
//! (bounded by [`FINISH_WITHIN`]) before it reports its outcome, so a
//! reader that sees the run end has every chunk. Logs are best effort: a
//! chunk that cannot be stored is reported once per outage and dropped,
//! and the run goes on.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use jetsched_contract::{Handler, TaskDef, headers};
use jetsched_runtime::Outage;
use tokio::sync::{mpsc, oneshot};

/// Largest chunk published at once (whole lines where they fit).
pub const CHUNK: usize = 4 * 1024;
/// How long output is gathered before it is published.
pub const LINGER: Duration = Duration::from_millis(100);
/// Longest an attempt waits for its last chunks to be stored.
pub const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// Values of secrets shorter than this are not masked (they would mask
/// ordinary text).
pub const MIN_SECRET_LEN: usize = 4;
/// What a masked value is replaced with.
pub const MASK: &str = "***";

static WRITING: Outage = Outage::new("writing task logs");

/// What a piece of output came from (the `Jetsched-Log-Source` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An exec command's standard output.
    Stdout,
    /// An exec command's standard error.
    Stderr,
    /// A NATS function's reply.
    Reply,
    /// An HTTP handler's response body.
    Response,
    /// A line a builtin handler logged.
    Log,
    /// A note from the worker (output left out).
    Jetsched,
}

impl Source {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Reply => "reply",
            Source::Response => "response",
            Source::Log => "log",
            Source::Jetsched => "jetsched",
        }
    }
}

enum Input {
    Data(Source, Bytes),
    Finish(oneshot::Sender<()>),
}

/// Where a handler writes its output; cheap to clone. A sink whose attempt
/// keeps no logs takes everything and does nothing.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    tx: Option<mpsc::Sender<Input>>,
}

impl LogSink {
    /// Adds output; waits while the writer is behind (the channel is bounded).
    pub async fn write(&self, source: Source, bytes: impl Into<Bytes>) {
        if let Some(tx) = &self.tx {
            // The writer stops only once the attempt finished: nothing to lose.
            let _ = tx.send(Input::Data(source, bytes.into())).await;
        }
    }

    /// Adds one line.
    pub async fn line(&self, source: Source, line: &str) {
        let mut text = line.trim_end_matches('\n').to_string();
        text.push('\n');
        self.write(source, text).await;
    }
}

/// One attempt's log: the sink the handler writes to and its writer task.
pub struct AttemptLog {
    sink: LogSink,
}

impl AttemptLog {
    /// A log for attempt `attempt` of `run_id` of a task defined by `def`,
    /// keeping at most `limit` bytes (0: none).
    pub fn start(js: async_nats::jetstream::Context, subject: String, def: &TaskDef, limit: usize) -> AttemptLog {
        if limit == 0 {
            return AttemptLog { sink: LogSink::default() };
        }
        let (tx, rx) = mpsc::channel(64);
        let writer = Writer {
            js,
            subject,
            masker: Masker::for_task(def),
            limit,
            kept: 0,
            left_out: 0,
            sent: 0,
            batch: Vec::new(),
            batch_source: Source::Stdout,
            partial: Vec::new(),
        };
        tokio::spawn(writer.run(rx));
        AttemptLog { sink: LogSink { tx: Some(tx) } }
    }

    /// The sink handlers write to.
    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Publishes what is left and waits (up to [`FINISH_WITHIN`]) until it is stored.
    pub async fn finish(self) {
        let Some(tx) = &self.sink.tx else { return };
        let (done, stored) = oneshot::channel();
        if tx.send(Input::Finish(done)).await.is_err() {
            return;
        }
        if tokio::time::timeout(FINISH_WITHIN, stored).await.is_err() {
            tracing::warn!("task log not stored within {FINISH_WITHIN:?}; the run goes on without its last lines");
        }
    }
}

/// Replaces the values of a task's secrets.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    /// The secret values of `def`: its handler's `env` (exec) or `headers`
    /// (http) entries named in `secrets`.
    pub fn for_task(def: &TaskDef) -> Masker {
        let named = |map: &std::collections::BTreeMap<String, String>| -> Vec<String> {
            map.iter()
                .filter(|(k, _)| def.secrets.iter().any(|s| s.eq_ignore_ascii_case(k)))
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut values = match &def.handler {
            Some(Handler::Exec { env, .. }) => named(env),
            Some(Handler::Http { headers, .. }) => named(headers),
            _ => Vec::new(),
        };
        values.retain(|v| v.len() >= MIN_SECRET_LEN);
        // Longest first: a secret that contains another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Masker { values }
    }

    /// True when the task names no secret value to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        self.values.iter().fold(text.to_string(), |t, v| t.replace(v.as_str(), MASK))
    }
}

struct Writer {
    js: async_nats::jetstream::Context,
    subject: String,
    masker: Masker,
    limit: usize,
    kept: usize,
    left_out: usize,
    sent: u64,
    batch: Vec<u8>,
    batch_source: Source,
    /// The start of a line not yet ended (per the batch's source).
    partial: Vec<u8>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        loop {
            let input = if self.batch.is_empty() && self.partial.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(LINGER, rx.recv()).await {
                    Ok(i) => i,
                    Err(_) => {
                        self.take_partial();
                        self.publish().await;
                        continue;
                    }
                }
            };
            match input {
                Some(Input::Data(source, bytes)) => self.add(source, &bytes).await,
                Some(Input::Finish(done)) => {
                    self.take_partial();
                    self.publish().await;
                    if self.left_out > 0 {
                        let note = format!(
                            "[jetsched: {} more bytes of output not kept (limit {} bytes per attempt)]\n",
                            self.left_out, self.limit
                        );
                        self.batch_source = Source::Jetsched;
                        self.batch.extend_from_slice(note.as_bytes());
                        self.publish().await;
                    }
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
    }

    /// Adds output: whole lines go to the batch, the rest waits for its end.
    async fn add(&mut self, source: Source, bytes: &[u8]) {
        if source != self.batch_source {
            self.take_partial();
            self.publish().await;
            self.batch_source = source;
        }
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n').or_else(|| {
            // A line longer than a chunk is cut.
            (self.partial.len() >= CHUNK).then_some(CHUNK - 1)
        }) {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.keep(&line);
            if self.batch.len() >= CHUNK {
                self.publish().await;
            }
        }
    }

    fn take_partial(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.keep(&rest);
        }
    }

    /// Keeps `line` (masked) within the attempt's limit.
    fn keep(&mut self, line: &[u8]) {
        let text = self.masker.mask(&String::from_utf8_lossy(line));
        let room = self.limit.saturating_sub(self.kept);
        if room == 0 {
            self.left_out += text.len();
            return;
        }
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.batch.extend_from_slice(&text.as_bytes()[..take]);
        self.kept += take;
        self.left_out += text.len() - take;
    }

    async fn publish(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let body = Bytes::from(std::mem::take(&mut self.batch));
        self.sent += 1;
        let mut hdrs = HeaderMap::new();
        hdrs.insert(headers::LOG_SOURCE, self.batch_source.as_str());
        hdrs.insert(headers::NATS_MSG_ID, format!("{}:{}", self.subject, self.sent).as_str());
        let stored = match self.js.publish_with_headers(self.subject.clone(), hdrs, body).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => WRITING.recovered(),
            Err(err) => WRITING.failed(&format_args!("{err} (a chunk of {} is dropped)", self.subject)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: serde_json::Value) -> TaskDef {
        TaskDef::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn values_of_named_env_and_headers_are_masked() {
        let exec = def(serde_json::json!({
            "handler": {"type": "exec", "command": ["x"], "env": {"API_TOKEN": "s3cr3t-value", "MODE": "fast", "PIN": "12"}},
            "secrets": ["API_TOKEN", "PIN"]
        }));
        let m = Masker::for_task(&exec);
        assert_eq!(m.mask("token=s3cr3t-value mode=fast pin=12"), "token=*** mode=fast pin=12");
        let http = def(serde_json::json!({
            "handler": {"type": "http", "url": "http://x/", "headers": {"Authorization": "Bearer abcdef"}},
            "secrets": ["authorization"]
        }));
        assert_eq!(Masker::for_task(&http).mask("sent Bearer abcdef"), "sent ***");
        let none = def(serde_json::json!({"handler": {"type": "nats", "subject": "fn.x"}, "secrets": ["X"]}));
        assert_eq!(Masker::for_task(&none).mask("anything"), "anything");
    }
}

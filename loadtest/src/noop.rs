//! The no-op NATS function the benchmarks run: it answers at once and notes,
//! per run id, when the request arrived (the handler start) and the run's
//! nominal time from `Jetsched-Scheduled-For`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use jetsched_contract::headers;
use jiff::Timestamp;

use crate::bench::BenchEnv;

/// When a run's handler started.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Monotonic arrival time.
    pub instant: Instant,
    /// Wall-clock arrival time.
    pub at: Timestamp,
    /// The run's nominal time, for scheduled runs.
    pub scheduled_for: Option<Timestamp>,
}

/// Arrivals by run id (the first one of each run).
pub type Starts = Arc<Mutex<HashMap<String, Start>>>;

/// The function's subject.
pub const SUBJECT: &str = "loadtest.noop";

/// Answers requests on [`SUBJECT`] until the process ends.
pub async fn serve(env: &BenchEnv) -> anyhow::Result<Starts> {
    let starts: Starts = Arc::default();
    // Its own connection, as a function in another process would have.
    let client = env.connect("function").await?.js.client();
    let mut sub = client.subscribe(SUBJECT).await?;
    client.flush().await?;
    let marks = starts.clone();
    let replies = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (instant, at) = (Instant::now(), Timestamp::now());
            if let Some(reply) = msg.reply {
                let _ = replies.publish(reply, bytes::Bytes::new()).await;
            }
            let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
            let Some(run) = header(headers::RUN_ID) else { continue };
            let scheduled_for = header(headers::SCHEDULED_FOR).and_then(|t| t.parse().ok());
            if let Ok(mut map) = marks.lock() {
                map.entry(run).or_insert(Start { instant, at, scheduled_for });
            }
        }
    });
    env.client.flush().await?;
    Ok(starts)
}

/// Defines task `noop` running the function.
pub async fn define_task(env: &BenchEnv) -> anyhow::Result<()> {
    let def = format!(r#"{{"handler": {{"type": "nats", "subject": "{SUBJECT}"}}, "timeout": "30s"}}"#);
    env.handles.tasks.put("noop", def.into()).await?;
    Ok(())
}

/// True once a run whose id starts with `prefix` has started.
pub fn started(starts: &Starts, prefix: &str) -> bool {
    starts.lock().map(|m| m.keys().any(|k| k.starts_with(prefix))).unwrap_or(false)
}

/// Lateness (start - nominal time) of the runs whose nominal time `pick`
/// accepts, and how many of them started early (counted as 0 late).
pub fn lateness(starts: &Starts, pick: impl Fn(Timestamp) -> bool) -> (crate::stats::Samples, usize) {
    let mut samples = crate::stats::Samples::default();
    let mut early = 0;
    if let Ok(map) = starts.lock() {
        for s in map.values() {
            let Some(nominal) = s.scheduled_for.filter(|t| pick(*t)) else { continue };
            let late = s.at.duration_since(nominal);
            if late.is_negative() {
                early += 1;
            }
            samples.push(if late.is_negative() { std::time::Duration::ZERO } else { late.unsigned_abs() });
        }
    }
    (samples, early)
}

//! `loadtest console`: the web console (a real `jetsched console` process)
//! under a stream of run events, with many pages open. Each run publishes
//! three live events (queued, started, succeeded, on core NATS as the
//! services publish them) at
//! `--rate` runs per second; `--clients` server-sent event streams (`GET
//! /live`, what an open page holds) each count every event and how long it
//! took from its `at` (set just before it was published) to arriving at
//! the client. The console's CPU time and resident memory come from
//! `/proc/<pid>`.

use std::time::{Duration, Instant};

use jetsched_contract::{RunEvent, RunStatus};
use jiff::Timestamp;

use crate::bench::BenchEnv;
use crate::stats::Samples;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Runs per second (three events each).
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Connected live streams (open pages).
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// CPU budget of the console, in cores (1.0: one core busy).
    #[arg(long, default_value_t = 1.0)]
    pub cpu_budget: f64,
    /// Memory budget of the console, peak resident MB.
    #[arg(long, default_value_t = 150)]
    pub memory_budget: u64,
}

/// What one live stream saw.
#[derive(Default)]
struct Seen {
    events: u64,
    latency: Samples,
}

const TASK: &str = "console-load";
const STATUSES: [RunStatus; 3] = [RunStatus::Queued, RunStatus::Started, RunStatus::Succeeded];

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    let binary = crate::bench::jetsched_binary()?;
    println!("nats-server {} | {} | console: {}", env.server_version, env.mode, binary.display());
    jetsched_runtime::telemetry::install_crypto_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(&binary)
        .args(["--nats-url", &env.url, "console", "--listen", &format!("127.0.0.1:{port}")])
        .env("JETSCHED_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("the console exited at once"))?;
    let http = reqwest::Client::new();
    crate::bench::retry("the console to answer", Duration::from_secs(30), || async {
        http.get(format!("{base}/")).send().await?.error_for_status().map(|_| ())
    })
    .await?;

    // Every client connected before the first event.
    let mut clients = Vec::new();
    let stop = tokio_util::sync::CancellationToken::new();
    for _ in 0..args.clients {
        let response = http.get(format!("{base}/live?task={TASK}")).send().await?.error_for_status()?;
        clients.push(tokio::spawn(listen(response, stop.clone())));
    }
    let (cpu0, wall0) = (cpu_seconds(pid)?, Instant::now());
    let published = publish(env, &args).await?;
    // The last events are on their way: every client gets a second more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (cpu_seconds(pid)? - cpu0, wall0.elapsed().as_secs_f64());
    let rss = crate::million::memory(pid, "VmRSS")? / 1024;
    let peak = crate::million::memory(pid, "VmHWM")? / 1024;

    let mut all = Samples::default();
    let mut fewest = u64::MAX;
    let mut late = 0;
    stop.cancel();
    for client in clients {
        let seen = client.await?;
        fewest = fewest.min(seen.events);
        all.merge(&seen.latency);
        late += seen.latency.count_above(Duration::from_secs(1));
    }
    let cores = cpu / wall;
    println!(
        "console under {} runs/s ({} events/s) for {} s with {} live streams: every stream got {} of {published} events; publish -> stream {}; {late} deliveries later than 1 s",
        args.rate,
        args.rate * 3,
        args.seconds,
        args.clients,
        if fewest == u64::MAX { 0 } else { fewest },
        all.summary(),
    );
    println!(
        "console CPU {cores:.2} cores (budget {:.2}), resident memory {rss} MB, peak {peak} MB (budget {} MB)",
        args.cpu_budget, args.memory_budget
    );
    let within = fewest == published && late == 0 && cores <= args.cpu_budget && peak <= args.memory_budget;
    println!("{}", if within { "within budget" } else { "OVER BUDGET" });
    child.start_kill()?;
    let _ = child.wait().await;
    crate::stats::plot(
        "console",
        &format!("console: publish -> live stream, {} runs/s, {} streams", args.rate, args.clients),
        &[("event published -> received by a page", &all)],
    );
    Ok(())
}

/// Publishes `rate` runs a second (three events each) for `seconds`;
/// returns how many events.
async fn publish(env: &BenchEnv, args: &Args) -> anyhow::Result<u64> {
    // Live events, as the services publish queued, started and succeeded:
    // core NATS, no stream.
    let client = env.handles.js.client();
    let per_tick = u64::from(args.rate) / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let bar = crate::stats::progress("events published");
    let mut n = 0u64;
    let mut run = 0u64;
    for _ in 0..args.seconds * 100 {
        tick.tick().await;
        for _ in 0..per_tick.max(1) {
            run += 1;
            for status in STATUSES {
                let event = RunEvent { attempt: 1, ..RunEvent::new(status, TASK, Some(format!("t.{TASK}.q{run}"))) };
                let subject = env.names.event_subject(TASK, status.as_str());
                client.publish(subject, serde_json::to_vec(&event)?.into()).await?;
                n += 1;
            }
        }
        client.flush().await?;
        bar.set_position(n);
    }
    bar.finish_and_clear();
    Ok(n)
}

/// Reads one live stream until `stop`: counts `run` events of this test
/// and their delay from the event's `at` (the row's `datetime`).
async fn listen(mut response: reqwest::Response, stop: tokio_util::sync::CancellationToken) -> Seen {
    let mut seen = Seen::default();
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return seen,
            c = response.chunk() => c,
        };
        let Ok(Some(chunk)) = chunk else { return seen };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let message: String = buf.drain(..end + 2).collect();
            if !message.starts_with("event: run") {
                continue;
            }
            let Some(at) = attribute(&message, "datetime").and_then(|t| t.parse::<Timestamp>().ok()) else { continue };
            seen.events += 1;
            seen.latency.push(Timestamp::now().duration_since(at).unsigned_abs());
        }
    }
}

/// The value of the first `name="..."` in `html`.
fn attribute<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    let len = html[start..].find('"')?;
    Some(&html[start..start + len])
}

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = rustix::param::clock_ticks_per_second() as f64;
    // utime and stime are fields 14 and 15 of stat: indexes 11 and 12 after the name.
    Ok((ticks(11) + ticks(12)) / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_from_a_row() {
        let row = r#"<tr data-run="t.a.q1" data-status="queued"><td><time datetime="2026-01-01T00:00:00Z" title="x">"#;
        assert_eq!(attribute(row, "data-run"), Some("t.a.q1"));
        assert_eq!(attribute(row, "datetime"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(attribute(row, "nope"), None);
    }
}

//! A million schedules: how long a ticker takes to load them (process start
//! -> `/readyz`, which turns ready when the schedules watch has delivered
//! every one) and to take every partition (its timer heap then holds the
//! next fire of each), and its resident memory. The ticker runs as a child
//! process (the release `jetsched` binary next to this one) so that its
//! memory is its own.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::BenchEnv;
use crate::herd::wait_until;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Schedules to load.
    #[arg(long, default_value_t = 1_000_000)]
    pub schedules: usize,
}

/// A realistic mix: daily crons at many times in two zones (DST-aware),
/// hourly and daily intervals with spread phases, small payloads.
fn schedule(i: usize) -> String {
    match i % 4 {
        0 => format!(
            r#"{{"cron": "0 {} {} * * *", "timezone": "Europe/Berlin", "task": "noop", "payload": {{"n": {i}}}}}"#,
            i % 60,
            (i / 60) % 24
        ),
        1 => format!(r#"{{"every": "1h", "phase": "{}s", "task": "noop"}}"#, i % 3600),
        2 => r#"{"cron": "30 2 * * *", "timezone": "America/New_York", "task": "noop", "misfire": {"policy": "all"}}"#
            .to_string(),
        _ => format!(
            r#"{{"every": "24h", "phase": "{}s", "task": "noop", "payload": {{"customer": "c-{i}"}}}}"#,
            i % 86_400
        ),
    }
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    let binary = crate::bench::jetsched_binary()?;
    println!("nats-server {} | {} | ticker: {}", env.server_version, env.mode, binary.display());
    let t0 = Instant::now();
    let n = env.put_many(&env.handles.schedules, (0..args.schedules).map(|i| (format!("m-{i}"), schedule(i)))).await?;
    let took = t0.elapsed();
    println!("stored {n} schedules in {:.1} s ({:.0}/s)", took.as_secs_f64(), n as f64 / took.as_secs_f64());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&binary)
        .args(["--nats-url", &env.url, "--log-format", "json", "ticker", "--http-addr", &addr])
        .env("JETSCHED_LOG", "warn,jetsched_ticker=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let log = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no ticker log"))?;
    let log = tokio::spawn(scan_log(log));
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("ticker exited at once"))?;
    let ready = async {
        loop {
            if readyz(&addr).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(300), ready).await?;
    let loaded = started.elapsed();
    let rss_loaded = memory(pid, "VmRSS")?;
    env.wait_for_leases(Duration::from_secs(300)).await?;
    let firing = started.elapsed();
    let rss_firing = memory(pid, "VmRSS")?;
    wait_until(Duration::from_secs(5), || false).await.ok();
    let rss_settled = memory(pid, "VmRSS")?;
    let peak = memory(pid, "VmHWM")?;
    child.start_kill()?;
    let _ = child.wait().await;
    let (loaded_count, warnings) = log.await?;
    println!(
        "{n} schedules: loaded (process start -> ready) in {:.1} s (goal <= 20 s); every partition taken and planned after {:.1} s",
        loaded.as_secs_f64(),
        firing.as_secs_f64()
    );
    println!(
        "ticker resident memory: {} MB when loaded, {} MB when firing, {} MB 5 s later, peak {} MB (goal <= 500 MB)",
        rss_loaded / 1024,
        rss_firing / 1024,
        rss_settled / 1024,
        peak / 1024
    );
    println!("the ticker reported {loaded_count} schedules loaded, and logged {warnings} warnings");
    Ok(())
}

/// A `kB` figure from `/proc/<pid>/status`.
pub fn memory(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    let kb = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("malformed {field}"))?;
    Ok(kb.parse()?)
}

/// True when `GET /readyz` answers 200.
async fn readyz(addr: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return false };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).split_whitespace().nth(1) == Some("200")
}

/// Reads the ticker's JSON log: the count in "schedules loaded", and how
/// many warnings it logged.
async fn scan_log(log: tokio::process::ChildStderr) -> (u64, usize) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(log).lines();
    let (mut loaded, mut warnings) = (0, 0);
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if entry["level"] == "WARN" {
            warnings += 1;
        }
        if entry["message"] == "schedules loaded" {
            loaded = entry["schedules"].as_u64().unwrap_or(0);
        }
    }
    (loaded, warnings)
}

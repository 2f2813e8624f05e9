//! jetsched next to its peers in one sitting: the raw JetStream baseline,
//! jetsched's submit -> succeeded throughput, and BullMQ and Celery on
//! Redis (with and without AOF `everysec`), each counted when a no-op job
//! ends. The peers run from `loadtest/peers/` when installed there
//! (`loadtest/peers/setup`); a missing one is skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use comfy_table::Table;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::baseline;
use crate::bench::BenchEnv;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Runs for jetsched and BullMQ.
    #[arg(long, default_value_t = 20_000)]
    pub runs: usize,
    /// Runs for Celery (an order of magnitude slower).
    #[arg(long, default_value_t = 3_000)]
    pub celery_runs: usize,
    /// jetsched worker slots.
    #[arg(long, default_value_t = 256)]
    pub slots: usize,
    #[command(flatten)]
    pub baseline: baseline::Args,
}

/// One row of the table.
struct Row {
    system: String,
    rate: f64,
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | peers from {}", env.server_version, env.mode, peers_dir().display());
    let raw = baseline::publish_rate(env, &args.baseline).await?;
    println!("raw JetStream async publish: {raw:.0} msg/s");
    let (rate, writes) = crate::e2e::measure(env, args.runs, args.slots).await?;
    println!("jetsched: {rate:.0} runs/s, {writes:.2} stored writes per successful run");
    let jetsched = rate;
    let mut rows = vec![
        Row { system: "raw JetStream async publish (Nats-Msg-Id)".into(), rate: raw },
        Row { system: format!("jetsched e2e, {} slots", args.slots), rate },
    ];
    match missing() {
        Some(why) => println!("peers skipped: {why} (install them with loadtest/peers/setup)"),
        None => {
            for aof in [false, true] {
                let redis = Redis::start(aof).await?;
                let label = if aof { "Redis AOF everysec" } else { "Redis, no persistence" };
                for concurrency in [64, 256] {
                    let out = peer(
                        "node",
                        &[
                            "bullmq.mjs",
                            "--port",
                            &redis.port_str(),
                            "--runs",
                            &args.runs.to_string(),
                            "--concurrency",
                            &concurrency.to_string(),
                        ],
                    )
                    .await?;
                    println!("{label}: BullMQ concurrency {concurrency}: {out:.0} runs/s");
                    rows.push(Row { system: format!("BullMQ 5, concurrency {concurrency}, {label}"), rate: out });
                }
                if aof {
                    for (pool, concurrency) in [("prefork", 2), ("threads", 8)] {
                        let python = peers_dir().join(".venv/bin/python");
                        let out = peer(
                            &python.to_string_lossy(),
                            &[
                                "celery_bench.py",
                                "--port",
                                &redis.port_str(),
                                "--runs",
                                &args.celery_runs.to_string(),
                                "--pool",
                                pool,
                                "--concurrency",
                                &concurrency.to_string(),
                            ],
                        )
                        .await?;
                        println!("{label}: Celery {pool} {concurrency}: {out:.0} runs/s");
                        rows.push(Row { system: format!("Celery 5, {pool} {concurrency}, {label}"), rate: out });
                    }
                }
                redis.stop().await;
            }
        }
    }
    let mut table = Table::new();
    table.set_header(["system", "runs/s", "ratio to raw publish", "jetsched is x this"]);
    for row in &rows {
        table.add_row([
            row.system.clone(),
            format!("{:.0}", row.rate),
            format!("{:.3}", row.rate / raw),
            format!("{:.2}", jetsched / row.rate),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// What keeps the peers from running, if anything.
fn missing() -> Option<String> {
    let on_path =
        |bin: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    let dir = peers_dir();
    if !on_path("redis-server") {
        Some("redis-server is not installed".into())
    } else if !on_path("node") || !dir.join("node_modules/bullmq").is_dir() {
        Some(format!("node or BullMQ is missing ({})", dir.join("node_modules").display()))
    } else if !dir.join(".venv/bin/python").is_file() {
        Some(format!("the Celery virtualenv is missing ({})", dir.join(".venv").display()))
    } else {
        None
    }
}

/// Runs a peer script in `loadtest/peers/` and reads its `runs_per_s`.
async fn peer(program: &str, args: &[&str]) -> anyhow::Result<f64> {
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        Command::new(program).args(args).current_dir(peers_dir()).stderr(Stdio::inherit()).output(),
    )
    .await
    .with_context(|| format!("{program} {args:?} did not finish within 900 s"))??;
    anyhow::ensure!(out.status.success(), "{program} {args:?} failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("no result from {program}: {text}"))?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    value["runs_per_s"].as_f64().with_context(|| format!("no runs_per_s in {line}"))
}

/// A redis-server of our own on a free loopback port, its data in a temp dir.
struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start(aof: bool) -> anyhow::Result<Redis> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if aof { "yes" } else { "no" }, "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server")?;
        let redis = Redis { port, child, _dir: dir };
        crate::bench::retry("redis-server to answer PING", Duration::from_secs(20), || redis.ping()).await?;
        Ok(redis)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"+PONG\r\n", "unexpected answer");
        Ok(())
    }

    fn port_str(&self) -> String {
        self.port.to_string()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

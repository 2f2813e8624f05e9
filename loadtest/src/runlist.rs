//! `runs list` over a million stored runs: how long the real `jetsched runs
//! list` takes to answer each kind of query, and its peak resident memory.
//! The CLI runs as a child process (the release `jetsched` binary next to
//! this one), so that its time and memory are its own.
//!
//! The store: N run records (70 % fired by 1,000 schedules, 30 % submitted
//! to 20 tasks; 97 % succeeded, 2 % failed waiting for a retry, 1 % dead)
//! and, for each failed or dead one, the event the events stream keeps for
//! it (successful runs store no event).

use std::time::Instant;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use jetsched_contract::{RunRecord, RunStatus};
use jiff::Timestamp;

use crate::bench::BenchEnv;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Run records to store.
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: usize,
}

const SCHEDULES: usize = 1_000;
const TASKS: usize = 20;

/// Run `i` of the store, in its current state.
fn record(i: usize, now: Timestamp) -> RunRecord {
    let status = match i % 100 {
        0 => RunStatus::Dead,
        1 | 2 => RunStatus::Failed,
        _ => RunStatus::Succeeded,
    };
    let at = now - jiff::SignedDuration::from_millis((1_000_000 - (i % 1_000_000)) as i64);
    let (run_id, schedule) = if i % 10 < 7 {
        let s = format!("s{:04}", i % SCHEDULES);
        (jetsched_contract::run::scheduled_run_id(&s, at), Some(s))
    } else {
        (format!("t.task{:02}.q{i}", (i / 3) % TASKS), None)
    };
    RunRecord {
        schedule,
        attempt: if status == RunStatus::Succeeded { 1 } else { 2 },
        created_at: at,
        updated_at: at,
        started_at: Some(at),
        finished_at: (status != RunStatus::Failed).then_some(at),
        error: (status != RunStatus::Succeeded).then(|| "exited with 3".to_string()),
        worker: Some("w-1".into()),
        ..RunRecord::new(&run_id, &format!("task{:02}", (i / 3) % TASKS), status, "default", 4, i as u64)
    }
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    let binary = crate::bench::jetsched_binary()?;
    println!("nats-server {} | {} | cli: {}", env.server_version, env.mode, binary.display());
    let now = Timestamp::now();
    let t0 = Instant::now();
    let names = &env.names;
    let store =
        jetsched_runtime::RunStore::open(jetsched_runtime::Publisher::new(env.handles.js.clone(), names.clone()))
            .await?;
    let n = store.import((0..args.runs).map(|i| record(i, now))).await?;
    env.publish_many((0..args.runs).map(|i| record(i, now)).filter(|r| r.status.is_kept()).map(|r| {
        (names.event_subject(&r.task, r.status.as_str()), serde_json::to_vec(&r.event()).unwrap_or_default())
    }))
    .await?;
    let took = t0.elapsed();
    println!("stored {n} run records and their events in {:.1} s", took.as_secs_f64());

    let queries: [(&str, Vec<&str>); 7] = [
        ("newest 50", vec![]),
        ("one schedule's (1 in 1,000)", vec!["--schedule", "s0042"]),
        ("one task's", vec!["--task", "task07"]),
        ("dead (1 %)", vec!["--status", "dead"]),
        ("one task's dead (0.05 %)", vec!["--task", "task00", "--status", "dead"]),
        ("changed in the last 10 min", vec!["--since", "10m"]),
        ("page 2 of newest 50", vec!["--before", "PAGE2"]),
    ];
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["query", "runs listed", "time", "peak memory"]);
    let mut page2 = String::new();
    let mut worst = 0.0f64;
    for (what, mut extra) in queries {
        if let Some(p) = extra.iter_mut().find(|a| **a == "PAGE2") {
            *p = page2.as_str();
        }
        let mut argv = vec!["--nats-url", env.url.as_str(), "runs", "list"];
        argv.extend(extra);
        let (secs, peak_kb, stdout, stderr) = timed(&binary, &argv).await?;
        if page2.is_empty() {
            page2 = stderr
                .lines()
                .find_map(|l| l.strip_prefix("more: repeat with --before "))
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        worst = worst.max(secs);
        let listed = stdout.lines().count();
        anyhow::ensure!(listed > 0, "{what}: nothing listed ({stderr})");
        table.add_row(vec![
            what.to_string(),
            listed.to_string(),
            format!("{:.0} ms", secs * 1000.0),
            format!("{} MB", peak_kb / 1024),
        ]);
    }
    println!("{table}");
    println!(
        "slowest query: {:.0} ms (goal < 1 s over 1M stored runs: {})",
        worst * 1000.0,
        if worst < 1.0 { "met" } else { "missed" }
    );
    Ok(())
}

/// Runs the CLI to completion: (seconds, peak resident kB, stdout, stderr).
/// The peak is the process's own high-water mark (`VmHWM`), sampled every
/// millisecond until it exits (std reports no rusage of a child, and this
/// workspace has no unsafe code to call `wait4`).
async fn timed(binary: &std::path::Path, argv: &[&str]) -> anyhow::Result<(f64, u64, String, String)> {
    let started = Instant::now();
    let child = tokio::process::Command::new(binary)
        .args(argv)
        .env("JETSCHED_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("jetsched exited at once"))?;
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while let Ok(kb) = crate::million::memory(pid, "VmHWM") {
            peak = peak.max(kb);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        peak
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output()).await??;
    let secs = started.elapsed().as_secs_f64();
    let peak = sampler.await?;
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    anyhow::ensure!(out.status.success(), "jetsched {} failed: {stderr}", argv.join(" "));
    Ok((secs, peak, stdout, stderr))
}

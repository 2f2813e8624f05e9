//! End to end: submissions to `jetsched.submit.noop`, a no-op NATS function,
//! counted at their `succeeded` events. Two phases: as fast as possible
//! (throughput, compared with raw JetStream publish measured just before),
//! then a paced phase at moderate load (latency percentiles).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jetsched_contract::{RunEvent, headers};

use std::sync::atomic::Ordering::Relaxed;

use jetsched_runtime::telemetry::Telemetry;

use crate::baseline;
use crate::bench::BenchEnv;
use crate::noop;
use crate::otlp_sink::Counts;
use crate::stats::{Samples, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Runs in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub runs: usize,
    /// Runs in the latency phase.
    #[arg(long, default_value_t = 2_000)]
    pub paced_runs: usize,
    /// Submissions per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Worker slots (in-process services), or the worker's `--slots` with
    /// `--external`, where it is passed only when given (the default is
    /// the worker's own).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Run ticker, dispatcher and worker as separate `jetsched` processes, as
    /// deployed, instead of in this process.
    #[arg(long)]
    pub external: bool,
    #[command(flatten)]
    pub baseline: baseline::Args,
}

/// In-process worker slots when `--slots` is not given.
const SLOTS: usize = 256;

type Marks = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(env: &BenchEnv, args: Args, telemetry: &Telemetry, sink: &Counts) -> anyhow::Result<()> {
    let how = match (args.external, args.slots) {
        (false, slots) => format!("jetsched services in this process, {} slots", slots.unwrap_or(SLOTS)),
        (true, None) => "jetsched services as separate processes, the worker's default slots".to_string(),
        (true, Some(n)) => format!("jetsched services as separate processes, --slots {n}"),
    };
    println!("nats-server {} | {} | {how}", env.server_version, env.mode);
    let raw = baseline::publish_rate(env, &args.baseline).await?;
    println!(
        "raw JetStream async publish (Nats-Msg-Id, {} B, {} in flight): {raw:.0} msg/s",
        args.baseline.size, args.baseline.in_flight
    );

    let started_at = noop::serve(env).await?;
    noop::define_task(env).await?;
    let services = if args.external {
        let worker_args: Vec<String> = args.slots.map(|n| vec!["--slots".into(), n.to_string()]).unwrap_or_default();
        env.external_services(&worker_args).await?
    } else {
        env.services(jetsched_worker::WorkerConfig { slots: args.slots.unwrap_or(SLOTS), ..Default::default() }).await?
    };
    let mut succeeded = warmed_up(env).await?;

    // Tracing is switched in this process: external services keep theirs.
    let phases: &[(&str, bool)] = if args.external {
        &[("tracing off", false)]
    } else {
        &[("tracing off", false), ("tracing on, OTLP export", true)]
    };
    for &(label, tracing_on) in phases {
        jetsched_runtime::telemetry::set_tracing_enabled(tracing_on);
        let (before_req, before_bytes) = (sink.requests.load(Relaxed), sink.bytes.load(Relaxed));
        let (rate, writes) = counted_throughput(env, &mut succeeded, args.runs, label).await?;
        telemetry.flush();
        println!(
            "jetsched submit -> succeeded, {label}: {rate:.0} runs/s, ratio to raw publish {:.3} (goal >= 0.25); {writes:.2} stored writes per successful run{}",
            rate / raw,
            if tracing_on {
                format!(
                    "; {} OTLP requests, {} KiB exported",
                    sink.requests.load(Relaxed) - before_req,
                    (sink.bytes.load(Relaxed) - before_bytes) / 1024
                )
            } else {
                String::new()
            }
        );
    }
    jetsched_runtime::telemetry::set_tracing_enabled(false);

    // Latency at moderate load, and where it goes: the `queued` event's time
    // (the dispatcher has created the record) and the `started` event's time
    // (the worker has claimed the run).
    let submitted_at: Marks = Arc::default();
    let submitted_wall: Arc<Mutex<HashMap<String, jiff::Timestamp>>> = Arc::default();
    let stamps = stage_stamps(env).await?;
    let mut to_start = Samples::default();
    let mut to_done = Samples::default();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let mut done_seen = 0;
    let mut i = 0;
    while done_seen < args.paced_runs {
        tokio::select! {
            _ = ticker.tick(), if i < args.paced_runs => {
                let id = format!("lat-{i}");
                lock(&submitted_at)?.insert(format!("t.noop.m-{id}"), Instant::now());
                lock(&submitted_wall)?.insert(format!("t.noop.m-{id}"), jiff::Timestamp::now());
                let ack = submit(env, &id).await?;
                tokio::spawn(async move { let _ = ack.await; });
                i += 1;
            }
            msg = succeeded.next() => {
                let Some(msg) = msg else { anyhow::bail!("event subscription ended") };
                let now = Instant::now();
                let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
                let Some(run) = event.run_id else { continue };
                let Some(t_submit) = lock(&submitted_at)?.get(&run).copied() else { continue };
                to_done.push(now - t_submit);
                if let Some(start) = lock(&started_at)?.get(&run).copied() {
                    to_start.push(start.instant - t_submit);
                }
                done_seen += 1;
            }
        }
    }
    println!(
        "latency at {} runs/s ({} runs, tracing off): submit -> handler start p50 {} p99 {} (goals 2 ms / 10 ms); submit -> succeeded p50 {} p99 {}",
        args.rate,
        to_done.len(),
        ms(to_start.percentile(50.0)),
        ms(to_start.percentile(99.0)),
        ms(to_done.percentile(50.0)),
        ms(to_done.percentile(99.0)),
    );
    let (mut dispatch, mut claim, mut call) = (Samples::default(), Samples::default(), Samples::default());
    let elapsed = |a: jiff::Timestamp, b: jiff::Timestamp| b.duration_since(a).unsigned_abs();
    {
        let (walls, stamps, starts) = (lock(&submitted_wall)?, lock(&stamps)?, lock(&started_at)?);
        for (run, t_submit) in walls.iter() {
            let (Some((Some(queued), Some(started))), Some(start)) = (stamps.get(run), starts.get(run)) else {
                continue;
            };
            dispatch.push(elapsed(*t_submit, *queued));
            claim.push(elapsed(*queued, *started));
            call.push(elapsed(*started, start.at));
        }
    }
    println!(
        "  stages p50 / p99: submit -> queued (record created) {} / {}; queued -> started (delivered, claimed) {} / {}; started -> handler receives the request {} / {}",
        ms(dispatch.percentile(50.0)),
        ms(dispatch.percentile(99.0)),
        ms(claim.percentile(50.0)),
        ms(claim.percentile(99.0)),
        ms(call.percentile(50.0)),
        ms(call.percentile(99.0)),
    );
    crate::stats::plot(
        "e2e",
        &format!("e2e at {} runs/s: latency distribution", args.rate),
        &[
            ("submit -> handler start", &to_start),
            ("submit -> succeeded", &to_done),
            ("submit -> queued", &dispatch),
            ("queued -> started", &claim),
        ],
    );
    services.stop().await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))
}

/// jetsched's throughput alone (no-op NATS function, `slots` worker slots,
/// `runs` submissions as fast as possible), as `peers` compares it: runs/s
/// and stored writes per successful run.
pub async fn measure(env: &BenchEnv, runs: usize, slots: usize) -> anyhow::Result<(f64, f64)> {
    let _starts = noop::serve(env).await?;
    noop::define_task(env).await?;
    let services = env.services(jetsched_worker::WorkerConfig { slots, ..Default::default() }).await?;
    let mut succeeded = warmed_up(env).await?;
    let measured = counted_throughput(env, &mut succeeded, runs, "peers").await?;
    services.stop().await;
    Ok(measured)
}

/// Subscribes to `succeeded` events once the services have run one run
/// (consumers created, caches filled).
async fn warmed_up(env: &BenchEnv) -> anyhow::Result<async_nats::Subscriber> {
    let mut succeeded = env.client.subscribe(env.names.event_subject("noop", "succeeded")).await?;
    env.client.flush().await?;
    submit(env, "warmup").await?.await?;
    wait_for(&mut succeeded, 1, Duration::from_secs(30)).await?;
    Ok(succeeded)
}

/// [`throughput`], with the stored writes per successful run it cost.
async fn counted_throughput(
    env: &BenchEnv,
    succeeded: &mut async_nats::Subscriber,
    n: usize,
    label: &str,
) -> anyhow::Result<(f64, f64)> {
    let before = stored_writes(env).await?;
    let rate = throughput(env, succeeded, n, label).await?;
    let writes = (stored_writes(env).await? - before) as f64 / n as f64;
    Ok((rate, writes))
}

/// Messages ever stored in every stream of the server (KV buckets included):
/// the sum of their last sequence numbers. A message removed since (an acked
/// work message, a superseded record) still counts: it was written.
async fn stored_writes(env: &BenchEnv) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut streams = env.handles.js.streams();
    while let Some(info) = streams.next().await {
        total += info?.state.last_sequence;
    }
    Ok(total)
}

/// Submits `n` runs as fast as possible and waits for all of them to succeed.
async fn throughput(
    env: &BenchEnv,
    succeeded: &mut async_nats::Subscriber,
    n: usize,
    label: &str,
) -> anyhow::Result<f64> {
    let prefix = label.replace([' ', ','], "-");
    let t0 = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        if acks.len() >= 256 {
            acks.next().await.transpose()?;
        }
        acks.push(submit(env, &format!("tp-{prefix}-{i}")).await?.into_future());
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    wait_for(succeeded, n, Duration::from_secs(600)).await?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Per run, the times of its `queued` and `started` events.
type Stamps = Arc<Mutex<HashMap<String, (Option<jiff::Timestamp>, Option<jiff::Timestamp>)>>>;

async fn stage_stamps(env: &BenchEnv) -> anyhow::Result<Stamps> {
    let stamps: Stamps = Arc::default();
    let mut sub = env.client.subscribe(env.names.event_subject("noop", "*")).await?;
    env.client.flush().await?;
    let marks = stamps.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(event) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
            let Some(run) = event.run_id else { continue };
            let Ok(mut map) = marks.lock() else { return };
            let entry = map.entry(run).or_default();
            match event.status {
                jetsched_contract::RunStatus::Queued => entry.0 = Some(event.at),
                jetsched_contract::RunStatus::Started => entry.1 = Some(event.at),
                _ => {}
            }
        }
    });
    Ok(stamps)
}

async fn submit(env: &BenchEnv, id: &str) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
    let mut h = HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, id);
    Ok(env.handles.js.publish_with_headers(env.names.submit_subject("noop"), h, "{}".into()).await?)
}

async fn wait_for(sub: &mut async_nats::Subscriber, n: usize, limit: Duration) -> anyhow::Result<Instant> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut seen = 0;
    while seen < n {
        tokio::select! {
            _ = &mut deadline => anyhow::bail!("only {seen} of {n} runs succeeded within {limit:?}"),
            msg = sub.next() => {
                if msg.is_none() { anyhow::bail!("event subscription ended"); }
                seen += 1;
            }
        }
    }
    Ok(Instant::now())
}

//! Event triggers: events published to a stream -> handler start through a
//! task's trigger (ticker -> inbox -> dispatcher -> worker -> no-op
//! function), against the raw baseline measured in the same run: the same
//! events read from a stream by a plain durable pull consumer and acked.
//! Throughput (first publish to the N-th handler start, or receipt), then
//! latency at a moderate paced rate (publish -> handler start, or receipt),
//! both on the publisher's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream;
use futures::StreamExt;

use crate::bench::BenchEnv;
use crate::noop;
use crate::stats::Samples;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Events in the latency phase.
    #[arg(long, default_value_t = 2_000)]
    pub latency_events: usize,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
}

/// Receipt (or handler start) times by stream sequence.
type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | ticker, dispatcher and worker in this process", env.server_version, env.mode);

    // The raw baseline: a durable pull consumer on the events' stream.
    env.fresh_stream(stream::Config {
        name: "LOADTEST_RAWEV".into(),
        subjects: vec!["loadtest.rawev.>".into()],
        ..Default::default()
    })
    .await?;
    let raw = env.handles.js.get_stream("LOADTEST_RAWEV").await?;
    let consumer: pull::Config = pull::Config { durable_name: Some("raw".into()), ..Default::default() };
    let consumer = raw.create_consumer(consumer).await?;
    let arrivals: Arrivals = Arc::default();
    let marks = arrivals.clone();
    let reader = tokio::spawn(async move {
        let mut messages = consumer.stream().max_messages_per_batch(256).messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!(e))?;
            let seq = msg.info().map_err(|e| anyhow::anyhow!(e))?.stream_sequence;
            if let Ok(mut m) = marks.lock() {
                m.entry(seq).or_insert_with(Instant::now);
            }
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::Ok(())
    });
    let raw_rate =
        throughput(env, "loadtest.rawev.x", args.events, || arrivals.lock().map(|m| m.len()).unwrap_or(0)).await?;
    let raw_latency = latency(env, "loadtest.rawev.x", &args, &|seq| arrivals.lock().ok()?.get(&seq).copied()).await?;
    reader.abort();
    env.handles.js.delete_stream("LOADTEST_RAWEV").await?;

    // jetsched: a task triggered by the stream, run by a no-op function.
    env.fresh_stream(stream::Config {
        name: "LOADTEST_EV".into(),
        subjects: vec!["loadtest.ev.>".into()],
        ..Default::default()
    })
    .await?;
    let starts = noop::serve(env).await?;
    let def = format!(
        r#"{{"handler": {{"type": "nats", "subject": "{}"}}, "timeout": "30s", "triggers": [{{"stream": "LOADTEST_EV"}}]}}"#,
        noop::SUBJECT
    );
    env.handles.tasks.put("evt", def.into()).await?;
    let services = env.services(jetsched_worker::WorkerConfig::default()).await?;
    env.wait_for_leases(Duration::from_secs(60)).await?;
    let started_seq =
        |run_id: &str| run_id.strip_prefix("t.evt.m-evt-LOADTEST_EV-").and_then(|s| s.parse::<u64>().ok());
    let count = || starts.lock().map(|m| m.keys().filter(|k| started_seq(k).is_some()).count()).unwrap_or(0);
    // Warm-up: the trigger's consumer is created and its first runs go through.
    throughput(env, "loadtest.ev.x", 200, count).await?;
    let base = count();
    let rate = throughput(env, "loadtest.ev.x", args.events, || count() - base).await?;
    let lat = latency(env, "loadtest.ev.x", &args, &|seq| {
        starts.lock().ok()?.get(&format!("t.evt.m-evt-LOADTEST_EV-{seq}")).map(|s| s.instant)
    })
    .await?;
    services.stop().await;

    let (mut raw_latency, mut lat) = (raw_latency, lat);
    println!(
        "events -> raw consumer receipt: {raw_rate:.0} events/s; latency at {} events/s: {}",
        args.rate,
        raw_latency.summary()
    );
    println!(
        "events -> handler start (trigger): {rate:.0} events/s; latency at {} events/s: {}",
        args.rate,
        lat.summary()
    );
    println!(
        "ratio to the raw baseline: throughput {:.3}, p50 {:.1}x, p99 {:.1}x",
        rate / raw_rate,
        lat.percentile(50.0).as_secs_f64() / raw_latency.percentile(50.0).as_secs_f64().max(1e-9),
        lat.percentile(99.0).as_secs_f64() / raw_latency.percentile(99.0).as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Publishes `n` events to `subject` as fast as acks allow and returns the
/// rate at which `arrived` counts them (first publish to the n-th arrival).
async fn throughput(env: &BenchEnv, subject: &str, n: usize, arrived: impl Fn() -> usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let payload = vec![b'x'; 200];
    env.publish_many((0..n).map(|i| {
        (subject.to_string(), format!(r#"{{"i":{i},"pad":"{}"}}"#, String::from_utf8_lossy(&payload)).into_bytes())
    }))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrived() < n {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} events arrived", arrived());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Publishes events at `args.rate` and returns publish -> arrival latencies.
async fn latency(
    env: &BenchEnv,
    subject: &str,
    args: &Args,
    arrival: &(dyn Fn(u64) -> Option<Instant> + Sync),
) -> anyhow::Result<Samples> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(args.latency_events);
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..args.latency_events {
        tick.tick().await;
        let at = Instant::now();
        let ack = env.handles.js.publish(subject.to_string(), format!(r#"{{"i":{i}}}"#).into()).await?;
        acks.push(async move { ack.await.map(|a| (a.sequence, at)) });
        while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
            sent.push(done?);
        }
    }
    while let Some(done) = acks.next().await {
        sent.push(done?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = Samples::default();
    for (seq, at) in sent {
        loop {
            if let Some(arrived) = arrival(seq) {
                samples.push(arrived.saturating_duration_since(at));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "event {seq} never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(samples)
}

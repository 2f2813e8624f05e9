//! The dispatcher alone: how fast submissions become queued work (records,
//! work items and `queued` events stored), against raw JetStream publish
//! measured in the same run; then the order in which a backlog of mixed
//! importance is started once a worker appears.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jetsched_contract::{RunEvent, RunStatus};

use crate::baseline;
use crate::bench::BenchEnv;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Submissions in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub runs: usize,
    #[command(flatten)]
    pub baseline: baseline::Args,
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | dispatcher in this process, no worker", env.server_version, env.mode);
    let raw = baseline::publish_rate(env, &args.baseline).await?;
    println!(
        "raw JetStream async publish (Nats-Msg-Id, {} B, {} in flight): {raw:.0} msg/s",
        args.baseline.size, args.baseline.in_flight
    );

    let function = env.connect("function").await?.js.client();
    let mut sub = function.subscribe("loadtest.ordered").await?;
    let replier = function.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = replier.publish(reply, bytes::Bytes::new()).await;
            }
        }
    });
    for (task, importance) in [("bulk", 1), ("normal", 5), ("urgent", 10)] {
        let def =
            format!(r#"{{"handler": {{"type": "nats", "subject": "loadtest.ordered"}}, "importance": {importance}}}"#);
        env.handles.tasks.put(task, def.into()).await?;
    }
    let dispatcher = env.connect("dispatcher").await?;
    let token = tokio_util::sync::CancellationToken::new();
    let only = jetsched::local::LocalServices { ticker: None, worker: None, ..Default::default() };
    let d = only.spawn(|_| dispatcher.clone(), &token);
    let mut queued = env.client.subscribe(env.names.event_filter()).await?;
    env.client.flush().await?;

    // Throughput: submissions -> queued.
    let t0 = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..args.runs {
        if acks.len() >= 256 {
            acks.next().await.transpose()?;
        }
        let subject = env.names.submit_subject(["bulk", "normal", "urgent"][i % 3]);
        acks.push(env.handles.js.publish(subject, format!(r#"{{"i":{i}}}"#).into()).await?.into_future());
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    let mut seen = 0;
    while seen < args.runs {
        let msg = tokio::time::timeout(Duration::from_secs(120), queued.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("events ended"))?;
        if msg.subject.ends_with(".queued") {
            seen += 1;
        }
    }
    let rate = args.runs as f64 / t0.elapsed().as_secs_f64();
    println!("dispatcher submit -> queued: {rate:.0} runs/s, ratio to raw publish {:.3}", rate / raw);

    // Ordering: drain the backlog with one worker of 8 slots.
    let backlog = args.runs;
    let worker = env.connect("worker").await?;
    let only = jetsched::local::LocalServices {
        ticker: None,
        dispatcher: None,
        worker: Some(jetsched_worker::WorkerConfig { slots: 8, ..Default::default() }),
        ..Default::default()
    };
    let w = only.spawn(|_| worker.clone(), &token);
    let mut order: Vec<String> = Vec::with_capacity(backlog);
    while order.len() < backlog {
        let msg = tokio::time::timeout(Duration::from_secs(300), queued.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("events ended"))?;
        let Ok(e) = serde_json::from_slice::<RunEvent>(&msg.payload) else { continue };
        if e.status == RunStatus::Started {
            order.push(e.task);
        }
    }
    let position = |task: &str| {
        let pos: Vec<usize> = order.iter().enumerate().filter(|(_, t)| *t == task).map(|(i, _)| i).collect();
        (pos.iter().sum::<usize>() as f64 / pos.len().max(1) as f64 / backlog as f64, pos.len())
    };
    println!(
        "backlog of {backlog} runs (a third each of importance 10, 5, 1) drained by one worker, mean start position (0 = first, 1 = last):"
    );
    for task in ["urgent", "normal", "bulk"] {
        let (mean, n) = position(task);
        println!("  {task:<7} {n:>6} runs  mean position {mean:.2}");
    }
    let first_third = &order[..backlog / 3];
    let urgent_share = first_third.iter().filter(|t| *t == "urgent").count() as f64 / first_third.len().max(1) as f64;
    println!("  share of urgent runs among the first third started: {:.0} %", urgent_share * 100.0);
    token.cancel();
    let _ = tokio::join!(d.join(), w.join());
    Ok(())
}

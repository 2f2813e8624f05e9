//! The raw JetStream baseline: async publish with a Nats-Msg-Id into a
//! file-backed stream (R1, or as many replicas as jetsched's own streams on a
//! cluster), many acks in flight.

use std::time::Instant;

use async_nats::jetstream::stream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::bench::BenchEnv;

#[derive(Debug, Clone, clap::Args)]
// Its own group: every command that flattens it has an `Args` of its own.
#[group(id = "baseline")]
pub struct Args {
    /// Messages to publish.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Acks in flight.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
}

/// Messages per second.
pub async fn publish_rate(env: &BenchEnv, args: &Args) -> anyhow::Result<f64> {
    let js = &env.handles.js;
    let name = "LOADTEST_RAW";
    env.fresh_stream(stream::Config {
        name: name.to_string(),
        subjects: vec!["loadtest.raw.>".to_string()],
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    for i in 0..args.messages {
        if pending.len() >= args.in_flight {
            pending.next().await.transpose()?;
        }
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("raw-{i}"));
        let ack = js.send_publish(format!("loadtest.raw.{}", i % 16), msg).await?;
        pending.push(ack.into_future());
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let rate = args.messages as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(name).await?;
    Ok(rate)
}

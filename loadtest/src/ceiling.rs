//! What a run can cost at best: every NATS operation a successful run
//! performs, measured alone at saturation on the same server in the same
//! run, as a multiple of the raw baseline's publish. The sum over a run's
//! operations is the machine time of its messaging alone; its inverse is the
//! most runs per second any code could reach doing those operations (the
//! handler, JSON and scheduling logic cost extra). Printed for jetsched's
//! run as it is and for the least any design keeping the contract needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use async_nats::jetstream::{consumer, kv, stream};
use comfy_table::Table;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::baseline;
use crate::bench::BenchEnv;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Operations per measurement.
    #[arg(long, default_value_t = 50_000)]
    pub ops: usize,
    #[command(flatten)]
    pub baseline: baseline::Args,
}

/// One kind of NATS operation a run performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// JetStream publish with a Nats-Msg-Id (a submission, a work message):
    /// the raw baseline itself.
    Publish,
    /// KV create of a new key (a run record's creation).
    KvCreate,
    /// KV update with the expected revision (a record's transition).
    KvUpdate,
    /// KV get (direct get) of a key.
    KvGet,
    /// A stored message delivered to a pull consumer and acked.
    ConsumeAck,
    /// A core request answered by a responder on another connection (a
    /// NATS function call).
    Request,
    /// A core publish nobody listens to (a live event).
    CorePublish,
    /// A core message delivered to one subscriber (the benchmark's own
    /// count of `succeeded` events).
    CoreDelivery,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Publish,
        Op::KvCreate,
        Op::KvUpdate,
        Op::KvGet,
        Op::ConsumeAck,
        Op::Request,
        Op::CorePublish,
        Op::CoreDelivery,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Publish => "JetStream publish, Nats-Msg-Id (raw baseline)",
            Op::KvCreate => "KV create",
            Op::KvUpdate => "KV update, expected revision",
            Op::KvGet => "KV get (direct)",
            Op::ConsumeAck => "pull consumer delivery + ack",
            Op::Request => "core request + reply",
            Op::CorePublish => "core publish, no subscriber",
            Op::CoreDelivery => "core publish to one subscriber",
        }
    }
}

/// The operations of one successful single-attempt run, by who performs them.
struct Mix {
    name: &'static str,
    ops: &'static [(Op, &'static str)],
}

/// A run as jetsched performs it today (`loadtest e2e`: a no-op NATS
/// function, counted by a subscription to `succeeded` events).
const JETSCHED: Mix = Mix {
    name: "jetsched today",
    ops: &[
        (Op::Publish, "submission stored (client)"),
        (Op::ConsumeAck, "submission delivered to the dispatcher"),
        (Op::KvCreate, "record created, queued (dispatcher)"),
        (Op::Publish, "work message stored (dispatcher)"),
        (Op::CorePublish, "queued event (dispatcher)"),
        (Op::ConsumeAck, "work message delivered to a worker"),
        (Op::KvGet, "record read: cancelled or ended meanwhile? (worker)"),
        (Op::CorePublish, "started event (worker)"),
        (Op::Request, "NATS function called (worker)"),
        (Op::KvUpdate, "record ended, succeeded (worker)"),
        (Op::CoreDelivery, "succeeded event, counted by the benchmark"),
    ],
};

/// The least any design keeping the contract performs: the submission is
/// stored in the inbox stream and read once; `nats kv get` answers while the
/// run is queued, so a record is stored before a worker has it and again
/// when it ends; the function is called; the benchmark counts the
/// `succeeded` event. Generous on purpose: the run goes from the dispatcher
/// to a worker by a core request (the stored record being its only durable
/// copy), the worker reads nothing, and the `queued` and `started` events
/// are free.
const FLOOR: Mix = Mix {
    name: "floor of the contract",
    ops: &[
        (Op::Publish, "submission stored"),
        (Op::ConsumeAck, "submission read by the dispatcher"),
        (Op::KvCreate, "record created"),
        (Op::Request, "run handed to a worker (core request)"),
        (Op::Request, "function called"),
        (Op::KvUpdate, "record ended"),
        (Op::CoreDelivery, "succeeded event, counted by the benchmark"),
    ],
};

/// One operation measured alone: its rate, and the machine's CPU time it
/// took (every process and the kernel: client, nats-server, loopback).
#[derive(Debug, Clone, Copy)]
struct Measured {
    rate: f64,
    cpu: f64,
}

/// CPU time the machine spent while it runs (all cores, busy ticks of
/// `/proc/stat`), in seconds.
struct Window {
    started: Instant,
    busy: f64,
}

impl Window {
    fn start() -> Window {
        Window { started: Instant::now(), busy: busy_seconds() }
    }

    /// `n` operations done since the start.
    fn finish(self, n: usize) -> Measured {
        self.finish_at(n, Instant::now())
    }

    fn finish_at(self, n: usize, ended: Instant) -> Measured {
        let n = n.max(1) as f64;
        Measured { rate: n / (ended - self.started).as_secs_f64(), cpu: (busy_seconds() - self.busy).max(0.0) / n }
    }
}

/// Busy CPU seconds of the whole machine since boot (`/proc/stat`: user,
/// nice, system, irq, softirq, steal); 0 where there is no such file.
fn busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().next() else { return 0.0 };
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy / rustix::param::clock_ticks_per_second() as f64
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | {} operations per measurement", env.server_version, env.mode, args.ops);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut measured = Vec::new();
    for op in Op::ALL {
        let m = measure(env, op, &args).await?;
        println!("{:<48} {:>10.0} op/s {:>7.1} µs CPU/op", op.label(), m.rate, m.cpu * 1e6);
        measured.push((op, m));
    }
    let raw = measured[0].1;
    let of = |op: Op| measured.iter().find(|(o, _)| *o == op).map_or(raw, |(_, m)| *m);

    let mut table = Table::new();
    table.set_header(["operation", "op/s", "µs CPU per op", "raw publishes (time)", "raw publishes (CPU)"]);
    for (op, m) in &measured {
        table.add_row([
            op.label().to_string(),
            format!("{:.0}", m.rate),
            format!("{:.1}", m.cpu * 1e6),
            format!("{:.2}", raw.rate / m.rate),
            format!("{:.2}", m.cpu / raw.cpu),
        ]);
    }
    println!("{table}");
    println!("the raw baseline kept {:.2} of {cores} cores busy: {:.0} msg/s", raw.rate * raw.cpu, raw.rate);

    for mix in [JETSCHED, FLOOR] {
        let mut table = Table::new();
        table.set_header(["per run", "operation", "raw publishes (time)", "µs CPU"]);
        let (mut time, mut cpu) = (0.0, 0.0);
        for (op, what) in mix.ops {
            let m = of(*op);
            time += raw.rate / m.rate;
            cpu += m.cpu;
            table.add_row([
                what.to_string(),
                op.label().to_string(),
                format!("{:.2}", raw.rate / m.rate),
                format!("{:.1}", m.cpu * 1e6),
            ]);
        }
        println!("{}:\n{table}", mix.name);
        // By time: each operation as fast as it goes alone, one after the
        // other. By CPU: every core busy with nothing but these operations.
        let by_cpu = cores / cpu;
        println!(
            "{}: at most {:.0} runs/s by time ({:.3} x raw publish), {:.0} runs/s by CPU ({:.0} µs per run on {cores} cores: {:.3} x raw publish); goal >= 0.25 x raw",
            mix.name,
            raw.rate / time,
            1.0 / time,
            by_cpu,
            cpu * 1e6,
            by_cpu / raw.rate
        );
    }
    Ok(())
}

/// Operations per second of `op` (`args.ops` of them, the baseline's
/// in-flight count at a time) on one connection (the responder and the
/// subscriber on a second one), and their CPU.
async fn measure(env: &BenchEnv, op: Op, args: &Args) -> anyhow::Result<Measured> {
    let (n, in_flight) = (args.ops, args.baseline.in_flight);
    let js = &env.handles.js;
    match op {
        Op::Publish => {
            // Stream creation and removal included: the raw publish's CPU
            // is, if anything, overstated, which flatters the ratios below.
            let window = Window::start();
            let args = baseline::Args { messages: n, ..args.baseline.clone() };
            let rate = baseline::publish_rate(env, &args).await?;
            Ok(Measured { rate, cpu: window.finish(n).cpu })
        }
        Op::KvCreate | Op::KvUpdate | Op::KvGet => {
            let bucket = "LOADTEST_CEILING";
            let _ = js.delete_key_value(bucket).await;
            // As the runs bucket is (setup::bucket_configs): history 64, direct get.
            let kv = js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    history: jetsched_contract::setup::RUN_HISTORY,
                    num_replicas: env.replicas,
                    ..Default::default()
                })
                .await?;
            let key = |i: usize| format!("t.noop.m-{i}");
            let revisions = Arc::new(std::sync::Mutex::new(vec![0u64; n]));
            let value = bytes::Bytes::from(vec![b'x'; 256]);
            let created = timed(n, in_flight, |i| {
                let (kv, value, revisions) = (kv.clone(), value.clone(), revisions.clone());
                async move {
                    let rev = kv.create(key(i), value).await?;
                    revisions.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?[i] = rev;
                    Ok(())
                }
            })
            .await?;
            let rate = match op {
                Op::KvCreate => created,
                Op::KvUpdate => {
                    let value = bytes::Bytes::from(vec![b'y'; 256]);
                    timed(n, in_flight, |i| {
                        let (kv, value, revisions) = (kv.clone(), value.clone(), revisions.clone());
                        async move {
                            let rev = revisions.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?[i];
                            kv.update(key(i), value, rev).await?;
                            Ok(())
                        }
                    })
                    .await?
                }
                _ => {
                    timed(n, in_flight, |i| {
                        let kv = kv.clone();
                        async move {
                            kv.entry(key(i)).await?.ok_or_else(|| anyhow::anyhow!("key {i} missing"))?;
                            Ok(())
                        }
                    })
                    .await?
                }
            };
            js.delete_key_value(bucket).await?;
            Ok(rate)
        }
        Op::ConsumeAck => {
            let name = "LOADTEST_CEILING_WORK";
            let stream = env
                .fresh_stream(stream::Config {
                    name: name.to_string(),
                    subjects: vec!["loadtest.ceiling.work.>".to_string()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await?;
            env.publish_many((0..n).map(|i| (format!("loadtest.ceiling.work.{}", i % 16), vec![b'x'; 256]))).await?;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("ceiling".to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: in_flight as i64,
                    ..Default::default()
                })
                .await?;
            let window = Window::start();
            let mut messages = consumer.stream().max_messages_per_batch(in_flight).messages().await?;
            let mut seen = 0;
            while seen < n {
                let msg = messages.next().await.ok_or_else(|| anyhow::anyhow!("consumer ended"))?;
                msg.map_err(|e| anyhow::anyhow!("{e}"))?.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                seen += 1;
            }
            // Every ack reached the server when the stream is empty.
            while env.handles.js.get_stream(name).await?.cached_info().state.messages > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let measured = window.finish(n);
            js.delete_stream(name).await?;
            Ok(measured)
        }
        Op::Request => {
            let responder = env.connect("ceiling-responder").await?.js.client();
            let mut sub = responder.subscribe("loadtest.ceiling.fn").await?;
            responder.flush().await?;
            let server = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    if let Some(reply) = msg.reply {
                        let _ = responder.publish(reply, bytes::Bytes::new()).await;
                    }
                }
            });
            let client = env.client.clone();
            let payload = bytes::Bytes::from(vec![b'x'; 256]);
            let rate = timed(n, in_flight, |_| {
                let (client, payload) = (client.clone(), payload.clone());
                async move {
                    client.request("loadtest.ceiling.fn", payload).await?;
                    Ok(())
                }
            })
            .await;
            server.abort();
            rate
        }
        Op::CorePublish | Op::CoreDelivery => {
            let subject = "loadtest.ceiling.event";
            let received = Arc::new(AtomicUsize::new(0));
            let mut listener = None;
            if op == Op::CoreDelivery {
                let other = env.connect("ceiling-subscriber").await?.js.client();
                let mut sub = other.subscribe(subject).await?;
                other.flush().await?;
                let received = received.clone();
                listener = Some(tokio::spawn(async move {
                    while sub.next().await.is_some() {
                        received.fetch_add(1, Relaxed);
                    }
                }));
            }
            let payload = bytes::Bytes::from(vec![b'x'; 256]);
            let window = Window::start();
            for _ in 0..n {
                env.client.publish(subject, payload.clone()).await?;
            }
            env.client.flush().await?;
            // A subscriber that falls behind drops messages (slow consumer):
            // the rate counts what it received, once nothing more comes.
            let (mut got, mut ended) = (n, Instant::now());
            if listener.is_some() {
                let mut last = (0, Instant::now());
                loop {
                    let now = received.load(Relaxed);
                    if now >= n || (now == last.0 && last.1.elapsed() > std::time::Duration::from_secs(2)) {
                        (got, ended) = (now, if now >= n { Instant::now() } else { last.1 });
                        break;
                    }
                    if now != last.0 {
                        last = (now, Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            let measured = window.finish_at(got, ended);
            if let Some(l) = listener {
                l.abort();
            }
            Ok(measured)
        }
    }
}

/// Runs `f(0..n)` with `in_flight` at a time.
async fn timed<F, Fut>(n: usize, in_flight: usize, f: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let window = Window::start();
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        if pending.len() >= in_flight {
            pending.next().await.transpose()?;
        }
        pending.push(f(i));
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(window.finish(n))
}

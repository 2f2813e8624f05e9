//! What a run can cost at best: every NATS operation a successful run
//! performs, measured alone at saturation on the same server in the same
//! run, as a multiple of the raw baseline's publish. The sum over a run's
//! operations is the machine time of its messaging alone; its inverse is the
//! most runs per second any code could reach doing those operations (the
//! handler, JSON and scheduling logic cost extra). Printed for jetsched's
//! run as it is, for the least any design keeping the contract needs, and
//! for that least with its writes in JetStream's batches (atomic batches
//! and fast ingest are measured too, and the batched read: the
//! alternatives issue 13 names).

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
    /// KV gets of `BATCH` keys in one batch direct get (`multi_last`, 2.11).
    KvGetBatch,
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
    /// KV creates sent as atomic batches of `BATCH` (one ack per batch).
    KvCreateBatch,
    /// JetStream publishes with a Nats-Msg-Id as atomic batches of `BATCH`.
    PublishBatch,
    /// KV creates in one fast-ingest batch (2.14, flow acks every 64).
    KvCreateFast,
    /// JetStream publishes in one fast-ingest batch.
    PublishFast,
}

/// Messages per atomic batch, and keys per batched read.
const BATCH: usize = 32;

impl Op {
    const ALL: [Op; 13] = [
        Op::Publish,
        Op::KvCreate,
        Op::KvUpdate,
        Op::KvGet,
        Op::KvGetBatch,
        Op::ConsumeAck,
        Op::Request,
        Op::CorePublish,
        Op::CoreDelivery,
        Op::KvCreateBatch,
        Op::PublishBatch,
        Op::KvCreateFast,
        Op::PublishFast,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Publish => "JetStream publish, Nats-Msg-Id (raw baseline)",
            Op::KvCreate => "KV create",
            Op::KvUpdate => "KV update, expected revision",
            Op::KvGet => "KV get (direct)",
            Op::KvGetBatch => "KV get, batch direct get of 32",
            Op::ConsumeAck => "pull consumer delivery + ack",
            Op::Request => "core request + reply",
            Op::CorePublish => "core publish, no subscriber",
            Op::CoreDelivery => "core publish to one subscriber",
            Op::KvCreateBatch => "KV create, atomic batches of 32",
            Op::PublishBatch => "JetStream publish, atomic batches of 32",
            Op::KvCreateFast => "KV create, fast-ingest batch",
            Op::PublishFast => "JetStream publish, fast-ingest batch",
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

/// The floor of the contract with every write made as cheap as JetStream
/// makes it: sent in fast-ingest batches (one acknowledgement per 64
/// messages), the submission too, and a record's end costed as a batched
/// create (the same per-subject check against an expected sequence). More
/// generous still than `FLOOR`: a write acknowledged only every 64th
/// message would hold a quiet dispatcher's or worker's next step until the
/// batch's next acknowledgement.
const FLOOR_BATCHED: Mix = Mix {
    name: "floor of the contract, writes in fast-ingest batches",
    ops: &[
        (Op::PublishFast, "submission stored"),
        (Op::ConsumeAck, "submission read by the dispatcher"),
        (Op::KvCreateFast, "record created"),
        (Op::Request, "run handed to a worker (core request)"),
        (Op::Request, "function called"),
        (Op::KvCreateFast, "record ended"),
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

impl Measured {
    /// Per item, when each operation measured carried `k` of them.
    fn per(self, k: usize) -> Measured {
        Measured { rate: self.rate * k as f64, cpu: self.cpu / k as f64 }
    }
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

    for mix in [JETSCHED, FLOOR, FLOOR_BATCHED] {
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
        Op::KvCreate | Op::KvUpdate | Op::KvGet | Op::KvGetBatch => {
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
                Op::KvGetBatch => batch_gets(&env.client, &kv, key, n, in_flight).await?,
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
        Op::KvCreateBatch | Op::PublishBatch => atomic_batches(env, op == Op::KvCreateBatch, args).await,
        Op::KvCreateFast | Op::PublishFast => fast_ingest(env, op == Op::KvCreateFast, args).await,
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

/// A stream for the batched writes: as the runs bucket is (history 64,
/// direct get), with atomic or fast-ingest batches allowed.
async fn batch_stream(env: &BenchEnv, name: &str, subjects: &str, atomic: bool) -> anyhow::Result<()> {
    env.fresh_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        allow_atomic_publish: atomic,
        allow_batch_publish: !atomic,
        allow_direct: true,
        max_messages_per_subject: jetsched_contract::setup::RUN_HISTORY,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Writes to distinct subjects as atomic batches of `BATCH` (ADR-50: every
/// message but the last is a core publish, the last commits and is the only
/// one acknowledged), as many batches in flight as the baseline has
/// messages. `creates`: each message expects its subject to be new (a KV
/// create); otherwise each carries a Nats-Msg-Id (a work message).
async fn atomic_batches(env: &BenchEnv, creates: bool, args: &Args) -> anyhow::Result<Measured> {
    let name = "LOADTEST_CEILING_ATOMIC";
    batch_stream(env, name, "loadtest.ceiling.atomic.>", true).await?;
    let client = env.client.clone();
    let value = bytes::Bytes::from(vec![b'x'; 256]);
    let batches = timed(args.ops / BATCH, (args.baseline.in_flight / BATCH).max(1), |b| {
        let (client, value) = (client.clone(), value.clone());
        async move {
            let id = format!("b{b}");
            for i in 1..=BATCH {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Batch-Id", id.as_str());
                headers.insert("Nats-Batch-Sequence", i.to_string().as_str());
                if creates {
                    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                } else {
                    headers.insert("Nats-Msg-Id", format!("m-{b}-{i}").as_str());
                }
                let subject = format!("loadtest.ceiling.atomic.{b}.{i}");
                if i < BATCH {
                    client.publish_with_headers(subject, headers, value.clone()).await?;
                    continue;
                }
                headers.insert("Nats-Batch-Commit", "1");
                let ack = client.request_with_headers(subject, headers, value.clone()).await?;
                let ack: serde_json::Value = serde_json::from_slice(&ack.payload)?;
                anyhow::ensure!(ack.get("count").and_then(|c| c.as_u64()) == Some(BATCH as u64), "batch {b}: {ack}");
            }
            Ok(())
        }
    })
    .await?;
    env.handles.js.delete_stream(name).await?;
    Ok(batches.per(BATCH))
}

/// Reads `n` keys of `kv` (named by `key`) `BATCH` at a time, each batch in
/// one batch direct get (`multi_last`): one message per key, then a 204
/// end-of-batch. The requests in flight hold the baseline's in-flight count
/// of keys.
async fn batch_gets(
    client: &async_nats::Client,
    kv: &kv::Store,
    key: impl Fn(usize) -> String,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<Measured> {
    let api = format!("$JS.API.DIRECT.GET.{}", kv.stream_name);
    let batches = timed(n / BATCH, (in_flight / BATCH).max(1), |b| {
        let subjects: Vec<String> = (b * BATCH..(b + 1) * BATCH).map(|i| format!("{}{}", kv.prefix, key(i))).collect();
        let (client, api) = (client.clone(), api.clone());
        async move {
            let inbox = client.new_inbox();
            let mut replies = client.subscribe(inbox.clone()).await?;
            let body = serde_json::to_vec(&serde_json::json!({ "multi_last": subjects }))?;
            client.publish_with_reply(api, inbox, body.into()).await?;
            let mut got = 0;
            while let Some(msg) = replies.next().await {
                match msg.status.map(|s| s.as_u16()) {
                    None => got += 1,
                    Some(204) => break,
                    Some(_) => anyhow::bail!("batch get: status {:?} {:?}", msg.status, msg.description),
                }
            }
            anyhow::ensure!(got == BATCH, "batch get: {got} of {BATCH}");
            Ok(())
        }
    })
    .await?;
    Ok(batches.per(BATCH))
}

/// Writes to distinct subjects as one fast-ingest batch (2.14, ADR-50): no
/// per-message acknowledgement; the batch's state rides on each message's
/// reply subject (`<inbox>.<flow>.<gap>.<batch-seq>.<operation>.$FI`) and
/// the server acknowledges every 64th message on that inbox. At most the
/// baseline's in-flight count goes unacknowledged.
async fn fast_ingest(env: &BenchEnv, creates: bool, args: &Args) -> anyhow::Result<Measured> {
    const FLOW: usize = 64;
    let (n, in_flight) = (args.ops, args.baseline.in_flight.max(FLOW));
    let name = "LOADTEST_CEILING_FAST";
    batch_stream(env, name, "loadtest.ceiling.fast.>", false).await?;
    let client = env.client.clone();
    // The inbox's last token is the batch id.
    let inbox = format!("{}.ceiling", client.new_inbox());
    let mut acks = client.subscribe(format!("{inbox}.>")).await?;
    let acked = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let reader = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Some(msg) = acks.next().await {
                let frame: serde_json::Value = serde_json::from_slice(&msg.payload)?;
                // Terminal: the batch's ack (`batch`), or its failure.
                if frame.get("batch").is_some() || frame.get("error").is_some() {
                    return Ok::<_, anyhow::Error>(frame);
                }
                anyhow::ensure!(frame.get("type").and_then(|t| t.as_str()) == Some("ack"), "fast batch: {frame}");
                // Stored through `seq` (the first ack, for the batch's start, says 0).
                let seq = frame.get("seq").and_then(|s| s.as_u64()).unwrap_or(0) as usize;
                acked.send_modify(|a| *a = (*a).max(seq.max(1)));
            }
            anyhow::bail!("the fast batch's ack inbox closed")
        })
    };
    let value = bytes::Bytes::from(vec![b'x'; 256]);
    let mut progress = acked.subscribe();
    let window = Window::start();
    for k in 1..=n {
        // The first message waits for the batch to start; then at most
        // `in_flight` unacknowledged.
        progress.wait_for(|&a| k == 1 || k <= a + in_flight).await?;
        let operation = match k {
            1 => 0,
            k if k == n => 2,
            _ => 1,
        };
        let mut headers = async_nats::HeaderMap::new();
        if creates {
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        }
        let reply = format!("{inbox}.{FLOW}.fail.{k}.{operation}.$FI");
        client
            .publish_with_reply_and_headers(format!("loadtest.ceiling.fast.{k}"), reply, headers, value.clone())
            .await?;
        if k == 1 {
            progress.wait_for(|&a| a >= 1).await?;
        }
    }
    let last = reader.await??;
    let measured = window.finish(n);
    anyhow::ensure!(last.get("count").and_then(|c| c.as_u64()) == Some(n as u64), "fast batch: {last}");
    env.handles.js.delete_stream(name).await?;
    Ok(measured)
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

//! The herd: N schedules due in the same second. Measured three times in one run
//! on one server, one after the other:
//! - NATS's own cron message schedules (the baseline): a stream with
//!   `allow_msg_schedules`, N schedule messages with
//!   `Nats-Schedule: * * * * * *` on N subjects, each firing into its own
//!   target subject; lateness is nominal second -> fired message stored
//!   (its stream timestamp);
//! - the floor: N requests built exactly as the worker builds them, published
//!   in one loop at one instant; lateness is that instant -> the function
//!   receives the request;
//! - jetsched: N one-shot schedules at the same instant, a no-op NATS
//!   function; lateness is nominal time -> the function receives the request.

use jetsched_contract::parse_duration;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jiff::{SignedDuration, Timestamp};

use crate::bench::BenchEnv;
use crate::noop;
use crate::stats::{Samples, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Schedules in the herd.
    #[arg(long, default_value_t = 10_000)]
    pub schedules: usize,
    /// Seconds of NATS cron fires measured (each second is one herd).
    #[arg(long, default_value_t = 3)]
    pub cron_seconds: i64,
    /// The ticker's lookahead (how early fires are staged).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lookahead: Duration,
    /// Worker slots (the no-op handler only waits on NATS, so one per run).
    #[arg(long, default_value_t = 10_000)]
    pub slots: usize,
    /// How far ahead of now the herd is due (time to store the schedules).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub lead: Duration,
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | jetsched services in this process", env.server_version, env.mode);
    let mut nats = nats_cron(env, args.schedules, args.cron_seconds).await?;
    println!(
        "NATS cron schedules, {} on \"* * * * * *\", {} seconds: nominal -> stored {} ({} fires)",
        args.schedules,
        args.cron_seconds,
        nats.summary(),
        nats.len()
    );
    let starts = noop::serve(env).await?;
    let mut floor = floor(env, &starts, args.schedules).await?;
    println!(
        "floor: {} requests as jetsched builds them (same headers), built ahead and published in one loop at one instant to the no-op function: instant -> received {}",
        args.schedules,
        floor.summary()
    );
    let (mut ours, early) = jetsched(env, &starts, &args).await?;
    println!(
        "jetsched, {} schedules due at one instant (lookahead {:?}, {} slots): nominal -> handler start {}{}",
        args.schedules,
        args.lookahead,
        args.slots,
        ours.summary(),
        if early > 0 { format!(" ({early} started early!)") } else { String::new() }
    );
    crate::stats::plot(
        "herd",
        &format!("{} schedules due at one instant: nominal -> start", args.schedules),
        &[
            ("jetsched: handler start", &ours),
            ("NATS cron: message stored", &nats),
            ("floor: request received", &floor),
        ],
    );
    let ratio = ours.percentile(99.0).as_secs_f64() / nats.percentile(99.0).as_secs_f64().max(1e-9);
    println!("herd p99 ratio jetsched / NATS cron: {ratio:.3} (goal <= 0.5)");
    let over_floor = ours.percentile(99.0).as_secs_f64() / floor.percentile(99.0).as_secs_f64().max(1e-9);
    println!("herd p99 ratio jetsched / floor: {over_floor:.3}; floor / NATS cron: {:.3}", ratio / over_floor);
    Ok(())
}

/// NATS's own cron schedules: `n` every-second schedules, `seconds` seconds measured.
async fn nats_cron(env: &BenchEnv, n: usize, seconds: i64) -> anyhow::Result<Samples> {
    let js = &env.handles.js;
    let name = "LOADTEST_CRON";
    let stream = env
        .fresh_stream(stream::Config {
            name: name.to_string(),
            subjects: vec!["loadtest.cron.>".to_string()],
            allow_message_schedules: true,
            allow_rollup: true,
            ..Default::default()
        })
        .await?;
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        if pending.len() >= 1024 {
            pending.next().await.transpose()?;
        }
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", "* * * * * *");
        h.insert("Nats-Schedule-Target", format!("loadtest.cron.fired.{i}").as_str());
        let ack = js.publish_with_headers(format!("loadtest.cron.schedule.{i}"), h, "x".into()).await?;
        pending.push(ack.into_future());
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    // Measure whole seconds that start after every schedule is in place.
    let first = Timestamp::from_second(Timestamp::now().as_second() + 2)?;
    let last = first.checked_add(SignedDuration::from_secs(seconds - 1))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "loadtest.cron.fired.>".to_string(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut samples = Samples::default();
    let wanted = n * seconds as usize;
    let deadline = tokio::time::sleep(Duration::from_secs(seconds as u64 + 30));
    tokio::pin!(deadline);
    while samples.len() < wanted {
        let msg = tokio::select! {
            _ = &mut deadline => break,
            msg = messages.next() => match msg {
                Some(msg) => msg?,
                None => break,
            },
        };
        let stored = Timestamp::from_nanosecond(
            msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.published.unix_timestamp_nanos(),
        )?;
        // The fire's nominal second: the one before the schedule's next.
        let next: Option<Timestamp> =
            msg.headers.as_ref().and_then(|h| h.get("Nats-Schedule-Next")).and_then(|v| v.as_str().parse().ok());
        let nominal = match next {
            Some(next) => next.checked_sub(SignedDuration::from_secs(1))?,
            None => Timestamp::from_second(stored.as_second())?,
        };
        if nominal > last {
            break;
        }
        if nominal >= first {
            samples.push(stored.duration_since(nominal).unsigned_abs());
        }
    }
    js.delete_stream(name).await?;
    Ok(samples)
}

/// What jetsched's release cannot beat here: `n` requests built exactly as
/// the worker builds them (its own request builder, every header), ready
/// before the instant and published in one loop at it, with nothing else to
/// do; lateness is the instant -> the function receives the request.
async fn floor(env: &BenchEnv, starts: &noop::Starts, n: usize) -> anyhow::Result<Samples> {
    let functions = jetsched_worker::Functions::start(env.client.clone()).await?;
    env.client.flush().await?;
    let at = Timestamp::now().checked_add(SignedDuration::from_millis(500))?;
    let timeout = Duration::from_secs(30);
    let prepared: Vec<_> = (0..n)
        .map(|i| {
            let run_id = format!("s.floor-{i}.{}", at.strftime("%Y%m%dT%H%M%SZ"));
            let inv = jetsched_worker::Invocation {
                cancel_subject: env.names.cancel_subject(&run_id),
                run_id,
                task: "noop".into(),
                attempt: 1,
                deadline: at.checked_add(timeout).unwrap_or(at),
                timeout,
                schedule: Some(format!("floor-{i}")),
                scheduled_for: Some(at),
                payload: serde_json::Value::Null,
                checkpoint: None,
                checkpoints: None,
                shard: None,
                log: Default::default(),
            };
            functions.prepare(noop::SUBJECT, &inv)
        })
        .collect();
    tokio::time::sleep(at.duration_since(Timestamp::now()).unsigned_abs()).await;
    let mut pending = Vec::with_capacity(n);
    for (outbound, reply) in prepared {
        pending.push((functions.send(outbound).await, reply));
    }
    let replies = pending
        .into_iter()
        .map(|(sent, reply)| jetsched_worker::function_outcome(noop::SUBJECT, Duration::from_secs(30), sent, reply));
    for outcome in futures::future::join_all(replies).await {
        anyhow::ensure!(
            matches!(outcome, jetsched_worker::Outcome::Success { .. }),
            "floor request failed: {outcome:?}"
        );
    }
    Ok(noop::lateness(starts, |t| t == at).0)
}

/// jetsched: `n` one-shot schedules due at the same instant.
async fn jetsched(env: &BenchEnv, starts: &noop::Starts, args: &Args) -> anyhow::Result<(Samples, usize)> {
    noop::define_task(env).await?;
    let ticker = jetsched_ticker::TickerConfig { lookahead: args.lookahead, ..Default::default() };
    let worker = jetsched_worker::WorkerConfig {
        slots: args.slots,
        max_staged: args.schedules.max(20_000),
        stage_horizon: args.lookahead + Duration::from_secs(5),
        ..Default::default()
    };
    let services = env.services_with(ticker, worker).await?;
    env.wait_for_leases(Duration::from_secs(60)).await?;
    // Warm up: consumers created, one run through every stage.
    let soon = Timestamp::now().checked_add(SignedDuration::from_secs(1))?;
    env.handles.schedules.put("herd-warmup", format!(r#"{{"at": "{soon}", "task": "noop"}}"#).into()).await?;
    wait_until(Duration::from_secs(30), || noop::started(starts, "s.herd-warmup.")).await?;

    let events = watch_events(env).await?;
    let due = Timestamp::from_second(Timestamp::now().checked_add(SignedDuration::try_from(args.lead)?)?.as_second())?;
    let value = format!(r#"{{"at": "{due}", "task": "noop"}}"#);
    let stored =
        env.put_many(&env.handles.schedules, (0..args.schedules).map(|i| (format!("herd-{i}"), value.clone())));
    let stored = stored.await?;
    anyhow::ensure!(Timestamp::now() < due, "storing {stored} schedules took past their due time; raise --lead");
    let in_herd = |starts: &noop::Starts| {
        starts.lock().map(|m| m.values().filter(|s| s.scheduled_for == Some(due)).count()).unwrap_or(0)
    };
    let limit = due.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_secs(120);
    wait_until(limit, || in_herd(starts) >= args.schedules).await?;
    let (samples, early) = noop::lateness(starts, |t| t == due);
    services.stop().await;
    report_stages(&events, due, args.schedules);
    Ok((samples, early))
}

/// `queued` and `started` events of task `noop`: (status, at, scheduled_for).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(jetsched_contract::RunStatus, Timestamp, Option<Timestamp>)>>>;

async fn watch_events(env: &BenchEnv) -> anyhow::Result<Seen> {
    let seen: Seen = Default::default();
    let mut sub = env.client.subscribe(env.names.event_subject("noop", "*")).await?;
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Ok(e) = serde_json::from_slice::<jetsched_contract::RunEvent>(&msg.payload)
                && let Ok(mut v) = sink.lock()
            {
                v.push((e.status, e.at, e.scheduled_for));
            }
        }
    });
    env.client.flush().await?;
    Ok(seen)
}

/// Where the time went: how many fires were queued (staged) before they
/// were due, and when the worker released them (`started` events).
fn report_stages(seen: &Seen, due: Timestamp, n: usize) {
    let Ok(seen) = seen.lock() else { return };
    let of = |status| seen.iter().filter(move |(s, _, t)| *s == status && *t == Some(due));
    let queued_ahead = of(jetsched_contract::RunStatus::Queued).filter(|(_, at, _)| *at < due).count();
    let last_queued = of(jetsched_contract::RunStatus::Queued).map(|(_, at, _)| *at).max();
    let mut started = Samples::default();
    for (_, at, _) in of(jetsched_contract::RunStatus::Started) {
        started.push(at.duration_since(due).max(SignedDuration::ZERO).unsigned_abs());
    }
    println!(
        "  stages: {queued_ahead}/{n} queued before they were due (last at {}); worker released them (started event) p50 {} p99 {}",
        last_queued.map(|t| format!("{:+.3} s", t.duration_since(due).as_secs_f64())).unwrap_or_default(),
        ms(started.percentile(50.0)),
        ms(started.percentile(99.0))
    );
}

/// Polls `done` every 10 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("not done within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

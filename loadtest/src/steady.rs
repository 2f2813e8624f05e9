//! Steady load: S schedules `every: 1s`, their phases spread evenly over the
//! second, so that fires come at S per second, one every 1/S s. Lateness is
//! nominal time -> the no-op NATS function receives the request.

use jetsched_contract::parse_duration;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::bench::BenchEnv;
use crate::herd::wait_until;
use crate::noop;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Fires per second (one schedule each, every second).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds measured, after a warm-up.
    #[arg(long, default_value_t = 30)]
    pub seconds: i64,
    /// The ticker's lookahead (0: publish each fire at its time).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lookahead: Duration,
    /// Worker slots.
    #[arg(long, default_value_t = 256)]
    pub slots: usize,
}

pub async fn run(env: &BenchEnv, args: Args) -> anyhow::Result<()> {
    println!("nats-server {} | {} | jetsched services in this process", env.server_version, env.mode);
    let starts = noop::serve(env).await?;
    noop::define_task(env).await?;
    let ticker = jetsched_ticker::TickerConfig { lookahead: args.lookahead, ..Default::default() };
    let worker = jetsched_worker::WorkerConfig { slots: args.slots, ..Default::default() };
    let services = env.services_with(ticker, worker).await?;
    env.wait_for_leases(Duration::from_secs(60)).await?;
    let step = 1_000_000 / u64::from(args.rate.max(1));
    let schedules = (0..args.rate).map(|i| {
        let phase = format!("{}us", u64::from(i) * step);
        (format!("steady-{i}"), format!(r#"{{"every": "1s", "phase": "{phase}", "task": "noop"}}"#))
    });
    env.put_many(&env.handles.schedules, schedules).await?;
    // Warm-up: the first seconds include loading and catch-up.
    let from = Timestamp::from_second(Timestamp::now().as_second() + 5)?;
    let until = from.checked_add(SignedDuration::from_secs(args.seconds))?;
    let wanted = args.rate as usize * args.seconds as usize;
    let measured = |starts: &noop::Starts| {
        starts
            .lock()
            .map(|m| m.values().filter(|s| s.scheduled_for.is_some_and(|t| t >= from && t < until)).count())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(args.seconds as u64 + 60), || measured(&starts) >= wanted).await?;
    let (mut samples, early) = noop::lateness(&starts, |t| t >= from && t < until);
    services.stop().await;
    crate::stats::plot(
        "steady",
        &format!("steady {} fires/s: nominal -> handler start", args.rate),
        &[("nominal -> handler start", &samples)],
    );
    println!(
        "steady {} fires/s for {} s (lookahead {:?}): nominal -> handler start {} ({} runs{}) (goal p99 <= 5 ms)",
        args.rate,
        args.seconds,
        args.lookahead,
        samples.summary(),
        samples.len(),
        if early > 0 { format!(", {early} started early!") } else { String::new() }
    );
    Ok(())
}

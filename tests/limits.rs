//! Rate limits per key on a real nats-server, with two workers serving the
//! queue: the limit holds for the whole cluster in every period, the runs
//! over it wait (announced by a `waiting` event, no attempt used) and then
//! run, and a key under its limit is never held back. Periods are counted
//! as the limiter counts them: the `rate_window` each `started` event names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use harness::*;
use jetsched_contract::{RunEvent, RunStatus};
use jetsched_worker::{Invocation, Outcome};
use serde_json::json;

const LIMIT: usize = 3;
const BURST: usize = 12;
const OTHER: usize = 3;

fn worker(id: &str, builtins: &Builtins) -> ServicesConfig {
    let w = WorkerConfig { worker_id: Some(id.to_string()), ..WorkerConfig::default() };
    ServicesConfig { ticker: None, dispatcher: None, worker: Some(w), builtins: builtins.clone(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_key_holds_across_two_workers_and_holds_back_only_its_key() {
    let env = Env::start().await;
    env.put_task(
        "charge",
        json!({"handler": {"type": "builtin", "name": "charge"},
               "rate_limit": {"key": "{{payload.customer}}", "limit": LIMIT, "per": "1s"}}),
    )
    .await;
    // The handler records each entry: (run, customer, attempt).
    let entered: Arc<Mutex<Vec<(String, String, u32)>>> = Arc::default();
    let mut builtins = Builtins::default();
    let e = entered.clone();
    builtins.register("charge", move |inv: Invocation| {
        let e = e.clone();
        async move {
            let customer = inv.payload["customer"].as_str().unwrap_or_default().to_string();
            e.lock().unwrap().push((inv.run_id.clone(), customer, inv.attempt));
            Outcome::ok(json!({}))
        }
    });
    let _w1 = env.services_with(worker("rate-1", &builtins));
    let _w2 = env.services_with(worker("rate-2", &builtins));
    let _d = env.services_with(ServicesConfig { ticker: None, worker: None, ..ServicesConfig::default() });
    let mut events = env.events().await;

    // A burst of four periods' worth for one customer, then a few runs of
    // another customer, under its own limit.
    for i in 0..BURST {
        env.submit("charge", &json!({"customer": "acme", "n": i}).to_string()).await;
    }
    for i in 0..OTHER {
        env.submit("charge", &json!({"customer": "globex", "n": i}).to_string()).await;
    }

    let done = events.wait_for_n(BURST + OTHER, 60, "every run to succeed", is("charge", RunStatus::Succeeded)).await;
    let customer_of: BTreeMap<String, String> =
        entered.lock().unwrap().iter().map(|(run, c, _)| (run.clone(), c.clone())).collect();
    let seen = |status: RunStatus| -> Vec<RunEvent> { events.seen_with("charge", status) };

    // Nothing dropped, nothing run twice, no attempt used by waiting.
    assert!(seen(RunStatus::Dead).is_empty() && seen(RunStatus::Failed).is_empty(), "no run failed or died");
    let succeeded: BTreeSet<String> = done.iter().map(|e| e.run_id.clone().unwrap()).collect();
    assert_eq!(succeeded.len(), BURST + OTHER, "every run succeeded once");
    let entries = entered.lock().unwrap().clone();
    assert_eq!(entries.len(), BURST + OTHER, "the handler ran once per run: {entries:?}");
    assert!(entries.iter().all(|(_, _, attempt)| *attempt == 1), "waiting used no attempt: {entries:?}");
    let started = seen(RunStatus::Started);
    assert_eq!(started.len(), BURST + OTHER, "one start per run");
    assert!(started.iter().all(|e| e.attempt == 1), "{started:?}");

    // Per key, never more than LIMIT starts in one of the limiter's periods.
    let mut per_window: BTreeMap<(String, jiff::Timestamp), Vec<String>> = BTreeMap::new();
    for e in &started {
        let run = e.run_id.clone().unwrap();
        let window = e.rate_window.unwrap_or_else(|| panic!("a rate-limited start names its period: {e:?}"));
        per_window.entry((customer_of[&run].clone(), window)).or_default().push(run);
    }
    for ((customer, window), runs) in &per_window {
        assert!(runs.len() <= LIMIT, "{customer}: {} starts in the period from {window}: {runs:?}", runs.len());
    }
    let acme_periods = per_window.keys().filter(|(c, _)| c == "acme").count();
    assert!(acme_periods >= BURST / LIMIT, "the burst spread over at least {} periods: {per_window:?}", BURST / LIMIT);

    // The runs over the limit waited, and said so; the other key never waited.
    let waiting: Vec<(String, String)> = seen(RunStatus::Waiting)
        .into_iter()
        .map(|e| (customer_of[e.run_id.as_deref().unwrap()].clone(), e.error.unwrap_or_default()))
        .collect();
    let waited: BTreeSet<&str> = waiting.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(waited, BTreeSet::from(["acme"]), "only the key over its limit waits: {waiting:#?}");
    assert!(waiting[0].1.contains("rate limit of 3 starts per 1s"), "{waiting:#?}");
    let workers: BTreeSet<String> = started.iter().filter_map(|e| e.worker.clone()).collect();
    eprintln!("starts per period: {:?}; workers: {workers:?}", per_window.values().map(Vec::len).collect::<Vec<_>>());
}

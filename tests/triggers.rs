//! Event triggers on a real nats-server: each kind of source (a user stream,
//! a plain subject captured by jetsched, a KV key filter), batching and
//! debouncing, triggers added and removed while the tickers run, a trigger
//! waiting for its stream, and exactly one run per event while the ticker
//! hosting the trigger is SIGKILLed and restarted in the middle of the flow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::{kv, stream};
use futures::StreamExt;
use harness::*;
use jetsched_contract::{RunEvent, RunStatus, headers};
use serde_json::{Value, json};

/// Dispatcher and worker in this process (the tickers are chosen per test).
fn dispatch_and_work(env: &Env) -> Services {
    env.services_with(ServicesConfig { ticker: None, ..ServicesConfig::default() })
}

/// Everything in this process.
fn all_services(env: &Env) -> Services {
    env.services()
}

async fn user_stream(env: &Env, name: &str, subjects: &[&str]) {
    env.handles
        .js
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn handler(subject: &str) -> Value {
    json!({"type": "nats", "subject": subject})
}

/// The consumer state of `consumer` on `stream` (`None`: it does not exist).
async fn consumer_info(env: &Env, stream: &str, consumer: &str) -> Option<async_nats::jetstream::consumer::Info> {
    let s = env.handles.js.get_stream(stream).await.ok()?;
    s.consumer_info(consumer).await.ok()
}

/// Keys of `jetsched-runs` starting with `prefix` (as `nats kv ls
/// jetsched-runs` lists them): one per run ever created.
async fn run_ids(env: &Env, prefix: &str) -> BTreeSet<String> {
    let runs = env.handles.js.get_key_value(env.names.runs_bucket()).await.unwrap();
    let keys: Vec<String> = runs.keys().await.unwrap().filter_map(|k| async move { k.ok() }).collect().await;
    keys.into_iter().filter(|k| k.starts_with(prefix)).collect()
}

/// The name of the consumer jetsched keeps for trigger `identity` of `task`.
fn trigger_consumer(env: &Env, task: &str, trigger: Value) -> String {
    let t: jetsched_contract::EventTrigger = serde_json::from_value(trigger).unwrap();
    env.names.trigger_consumer(task, &t.source().identity())
}

async fn kill(child: &mut tokio::process::Child) {
    child.start_kill().unwrap();
    within(10, "the ticker to die", child.wait()).await.unwrap();
}

const EVENTS: u64 = 10_000;
const ROUNDS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_run_exactly_once_while_the_host_is_killed_and_restarted() {
    let env = Env::start().await;
    let mut calls = env.function("fn.bulk", |_| Reply::Ok(json!({}))).await;
    let batch_calls = env.function("fn.batches", |_| Reply::Ok(json!({}))).await;
    let _services = dispatch_and_work(&env);
    user_stream(&env, "ORDERS", &["orders.>"]).await;
    // Two tasks on the same events: one run per event, and batches.
    let single = json!({"stream": "ORDERS", "subject": "orders.created.>"});
    let batched = json!({"stream": "ORDERS", "subject": "orders.created.>", "batch": {"max": 50, "within": "200ms"}});
    env.put_task("bulk", json!({"handler": handler("fn.bulk"), "triggers": [single.clone()]})).await;
    env.put_task("bulkb", json!({"handler": handler("fn.batches"), "triggers": [batched.clone()]})).await;
    let batches = collect(batch_calls);

    // Events arrive in rounds. Each round is published while no ticker runs;
    // a ticker is then started and SIGKILLed once part of the round has run,
    // so that it dies with events in flight (pulled, submitted, not acked)
    // and batches half gathered.
    let per_round = EVENTS / ROUNDS;
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut seqs = Vec::new();
    let mut ticker: Option<tokio::process::Child> = None;
    for round in 0..ROUNDS {
        let acks = futures::future::join_all((0..per_round).map(|i| {
            let n = round * per_round + i;
            let region = if n.is_multiple_of(2) { "eu" } else { "us" };
            let js = env.handles.js.clone();
            async move {
                let ack = js.publish(format!("orders.created.{region}"), format!(r#"{{"n": {n}}}"#).into()).await;
                ack.unwrap().await.unwrap().sequence
            }
        }));
        seqs.extend(acks.await);
        let mut t = env.spawn_ticker(&format!("host-{round}"), &[]);
        let target = seen.len() as u64 + per_round / 4;
        within(120, "a quarter of the round to run", async {
            while (seen.len() as u64) < target {
                let call = calls.calls.recv().await.unwrap();
                seen.insert(call.payload["seq"].as_u64().unwrap(), call.header(headers::RUN_ID).unwrap());
            }
        })
        .await;
        if round + 1 < ROUNDS {
            kill(&mut t).await;
        } else {
            ticker = Some(t);
        }
    }
    within(300, "every event to run", async {
        while (seen.len() as u64) < EVENTS {
            let call = calls.calls.recv().await.unwrap();
            seen.insert(call.payload["seq"].as_u64().unwrap(), call.header(headers::RUN_ID).unwrap());
        }
    })
    .await;
    let last = seqs.iter().copied().max().unwrap();
    // Quiet: every event acked by both triggers, every submission dispatched.
    let consumers = [trigger_consumer(&env, "bulk", single), trigger_consumer(&env, "bulkb", batched)];
    eventually_ok(120, "the triggers and the dispatcher to be done", || async {
        for consumer in &consumers {
            let t = consumer_info(&env, "ORDERS", consumer).await.ok_or(format!("no info on {consumer}"))?;
            let (floor, acking, pending) = (t.ack_floor.stream_sequence, t.num_ack_pending, t.num_pending);
            if floor < last || acking > 0 || pending > 0 {
                return Err(format!(
                    "{consumer}: ack floor {floor} of {last}, {acking} unacked, {pending} pending, {} redelivered",
                    t.num_redelivered
                ));
            }
        }
        let d = consumer_info(&env, &env.names.inbox_stream(), &env.names.dispatcher_consumer())
            .await
            .ok_or("no info on the dispatcher's consumer")?;
        match (d.num_pending, d.num_ack_pending) {
            (0, 0) => Ok(()),
            (pending, acking) => Err(format!("dispatcher: {pending} pending, {acking} unacked")),
        }
    })
    .await;
    drop(ticker);

    let expected: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), expected, "every event ran");
    let runs = run_ids(&env, "t.bulk.").await;
    assert_eq!(runs.len() as u64, EVENTS, "exactly one run per event, no more");
    for (seq, run_id) in &seen {
        assert_eq!(run_id, &format!("t.bulk.m-bulk-ORDERS-{seq}"), "the run id is the event's position");
    }

    // Every batch run was called (one call each: no worker dies here), and
    // the batches hold every event exactly once.
    let batch_runs = run_ids(&env, "t.bulkb.").await;
    let calls = eventually(120, "every batch run to be called", || async {
        let calls = batches.lock().unwrap().clone();
        (calls.len() >= batch_runs.len()).then_some(calls)
    })
    .await;
    assert_eq!(calls.len(), batch_runs.len(), "one call per batch run");
    let mut in_batches: Vec<u64> =
        calls.iter().flat_map(|c| c.payload.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap())).collect();
    in_batches.sort_unstable();
    assert_eq!(in_batches.len() as u64, EVENTS, "no event in two batches, none left out");
    assert_eq!(in_batches.into_iter().collect::<BTreeSet<_>>(), expected);
    for c in &calls {
        let events = c.payload.as_array().unwrap();
        assert!(events.len() <= 50, "at most max events per batch");
        let (first, last) = (&events[0]["seq"], &events[events.len() - 1]["seq"]);
        assert_eq!(c.header(headers::RUN_ID).unwrap(), format!("t.bulkb.m-bulkb-ORDERS-{first}-{last}"));
    }
}

/// Gathers a function's calls in the background.
fn collect(mut function: Function) -> std::sync::Arc<std::sync::Mutex<Vec<Call>>> {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = calls.clone();
    tokio::spawn(async move {
        while let Some(call) = function.calls.recv().await {
            sink.lock().unwrap().push(call);
        }
    });
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subject_published_with_nats_pub_starts_a_run_with_the_event() {
    let env = Env::start().await;
    let mut calls = env.function("fn.email", |_| Reply::Ok(json!({}))).await;
    let _services = all_services(&env);
    env.put_task("email", json!({"handler": handler("fn.email"), "triggers": [{"subject": "orders.created.>"}]})).await;
    // The ticker adds the subject to the capture stream.
    let capture = env.names.triggers_stream();
    eventually(30, "the subject to be captured", || async {
        let mut s = env.handles.js.get_stream(&capture).await.ok()?;
        let info = s.info().await.ok()?;
        info.config.subjects.contains(&"orders.created.>".to_string()).then_some(())
    })
    .await;
    // `nats pub`: core NATS, no JetStream ack asked for.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Tenant", "acme");
    env.client.publish_with_headers("orders.created.eu", h, r#"{"order": 42}"#.into()).await.unwrap();
    env.client.flush().await.unwrap();

    let call = calls.next_call(30).await;
    let event = &call.payload;
    assert_eq!(event["subject"], "orders.created.eu");
    assert_eq!(event["stream"], capture.as_str());
    assert_eq!(event["data"], json!({"order": 42}));
    assert_eq!(event["headers"]["Tenant"], "acme");
    let seq = event["seq"].as_u64().unwrap();
    assert_eq!(call.header(headers::RUN_ID).unwrap(), format!("t.email.m-email-{capture}-{seq}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subject_another_stream_holds_is_reported_invalid_with_the_stream_to_use() {
    let env = Env::start().await;
    let _services = all_services(&env);
    user_stream(&env, "ORDERS", &["orders.>"]).await;
    let mut events = env.events().await;
    env.put_task("email", json!({"handler": handler("fn.email"), "triggers": [{"subject": "orders.created.>"}]})).await;
    let invalid = events.wait_for(30, "an invalid report", is("email", RunStatus::Invalid)).await;
    let reason = invalid.error.unwrap();
    assert!(reason.contains("stream ORDERS") && reason.contains(r#"{"stream": "ORDERS""#), "{reason}");
    assert_eq!(invalid.trigger, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_trigger_runs_once_per_change_with_operation_and_revision() {
    let env = Env::start().await;
    let mut calls = env.function("fn.reprice", |_| Reply::Ok(json!({}))).await;
    let _services = all_services(&env);
    let config = env
        .handles
        .js
        .create_key_value(kv::Config { bucket: "config".into(), history: 5, ..Default::default() })
        .await
        .unwrap();
    env.put_task(
        "reprice",
        json!({"handler": handler("fn.reprice"), "triggers": [{"kv": "config", "key": "pricing.>"}]}),
    )
    .await;
    let put = config.put("pricing.eu", "12.5".into()).await.unwrap();
    config.put("shipping.eu", "3".into()).await.unwrap();
    config.delete("pricing.eu").await.unwrap();
    let deleted = config.entry("pricing.eu").await.unwrap().map(|e| e.revision);

    let first = calls.next_call(30).await;
    let second = calls.next_call(30).await;
    let by_rev: BTreeMap<u64, Value> =
        [first, second].into_iter().map(|c| (c.payload["revision"].as_u64().unwrap(), c.payload)).collect();
    let put_event = &by_rev[&put];
    assert_eq!((put_event["operation"].as_str(), put_event["key"].as_str()), (Some("put"), Some("pricing.eu")));
    assert_eq!(put_event["data"], json!(12.5));
    let (&del_rev, del_event) = by_rev.iter().find(|(r, _)| **r != put).unwrap();
    assert_eq!(del_event["operation"], "delete");
    assert_eq!(del_event["data"], Value::Null);
    if let Some(rev) = deleted {
        assert_eq!(del_rev, rev);
    }
    // The change to another key started nothing: the next run is the next pricing change.
    let again = config.put("pricing.us", "9".into()).await.unwrap();
    assert_eq!(calls.next_call(30).await.payload["revision"].as_u64(), Some(again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_gather_up_to_max_events_and_a_debounced_burst_runs_its_last_event() {
    let env = Env::start().await;
    let mut batches = env.function("fn.batch", |_| Reply::Ok(json!({}))).await;
    let mut bursts = env.function("fn.burst", |_| Reply::Ok(json!({}))).await;
    let _services = dispatch_and_work(&env);
    user_stream(&env, "SENSORS", &["sensor.>"]).await;
    let mapping = json!({"value": "{{data.v}}", "at": "{{seq}}"});
    let batched = json!({"handler": handler("fn.batch"),
           "triggers": [{"stream": "SENSORS", "subject": "sensor.temp.>", "batch": {"max": 3, "within": "1h"}, "payload": mapping}]});
    env.put_task("batched", batched.clone()).await;
    env.put_task(
        "debounced",
        json!({"handler": handler("fn.burst"),
               "triggers": [{"stream": "SENSORS", "subject": "sensor.door.>", "debounce": "1s"}]}),
    )
    .await;
    // Published before any ticker runs: the trigger reads from its
    // definition's write time, so the first host gets every event at once.
    let mut temps = Vec::new();
    for v in 0..7 {
        temps.push(env.publish("sensor.temp.a".into(), &[], &format!(r#"{{"v": {v}}}"#)).await);
    }
    let mut doors = BTreeMap::new();
    for (door, n) in [("front", 5), ("back", 2)] {
        for i in 0..n {
            doors.insert(door, env.publish(format!("sensor.door.{door}"), &[], &format!(r#"{{"i": {i}}}"#)).await);
        }
    }
    // An edit that keeps the trigger's source keeps the events before it.
    let mut edited = batched;
    edited["description"] = json!("edited after its events were published");
    env.put_task("batched", edited).await;
    let _ticker = env.services_with(ServicesConfig {
        dispatcher: None,
        worker: None,
        ticker: Some(TickerConfig { lookahead: std::time::Duration::ZERO, ..TickerConfig::default() }),
        ..ServicesConfig::default()
    });

    // Batches of 3: events 1-3 and 4-6; the 7th waits for two more (or an hour).
    let mut got: Vec<(String, Value)> = Vec::new();
    for _ in 0..2 {
        let call = batches.next_call(30).await;
        got.push((call.header(headers::RUN_ID).unwrap(), call.payload));
    }
    got.sort_by_key(|(_, p)| p[0]["at"].as_u64());
    let expect = |range: std::ops::Range<usize>| -> Value {
        range.map(|i| json!({"value": i, "at": temps[i]})).collect::<Vec<_>>().into()
    };
    assert_eq!(got[0].1, expect(0..3));
    assert_eq!(got[1].1, expect(3..6));
    assert_eq!(got[0].0, format!("t.batched.m-batched-SENSORS-{}-{}", temps[0], temps[2]));

    // Debounce: one run per door, for its last event.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..2 {
        let call = bursts.next_call(30).await;
        last.insert(call.payload["subject"].as_str().unwrap().to_string(), call.payload["seq"].as_u64().unwrap());
    }
    assert_eq!(last.get("sensor.door.front"), Some(&doors["front"]));
    assert_eq!(last.get("sensor.door.back"), Some(&doors["back"]));

    // Nothing else ran: two more temperatures complete the third batch, and
    // it is the next batch run; a new door event is the next burst run.
    let t8 = env.publish("sensor.temp.a".into(), &[], r#"{"v": 7}"#).await;
    env.publish("sensor.temp.a".into(), &[], r#"{"v": 8}"#).await;
    let third = batches.next_call(30).await.payload;
    assert_eq!(third[0]["at"].as_u64(), Some(temps[6]), "the 7th event waited in the third batch");
    assert_eq!(third[1]["at"].as_u64(), Some(t8));
    let side = env.publish("sensor.door.side".into(), &[], "{}").await;
    assert_eq!(bursts.next_call(30).await.payload["seq"].as_u64(), Some(side));
}

/// A task batching the SENSORS stream's events by 4 (`within` an hour: only
/// full batches go, or a journal's), events 1 to `events` stored, a
/// dispatcher and worker running, and a host that died after journaling the
/// batch `seqs`, carrying the events of an earlier batch `carried` (if any):
/// it held them all (the stream's first events: pulled, never acked,
/// redelivered after `ack_wait`), and the batches' submissions were stored.
struct DeadHost {
    /// The task's function: one call per batch run.
    batches: Function,
    /// The trigger's consumer.
    consumer: String,
    /// The messages the dead host pulled, held until dropped.
    held: Vec<async_nats::jetstream::Message>,
    _services: Services,
}

async fn batching_host_died(
    env: &Env,
    task: &str,
    events: u64,
    carried: &[u64],
    seqs: &[u64],
    ack_wait: u64,
) -> DeadHost {
    use jetsched_contract::ticker::{JournaledBatch, TriggerState, partition_of, trigger_key};
    let function = format!("fn.{task}");
    let batches = env.function(&function, |_| Reply::Ok(json!({}))).await;
    let services = dispatch_and_work(env);
    user_stream(env, "SENSORS", &["sensor.>"]).await;
    let trigger = json!({"stream": "SENSORS", "batch": {"max": 4, "within": "1h"}, "payload": "{{seq}}"});
    env.put_task(task, json!({"handler": handler(&function), "triggers": [trigger.clone()]})).await;
    for i in 1..=events {
        assert_eq!(env.publish("sensor.t".into(), &[], &i.to_string()).await, i);
    }

    let consumer = trigger_consumer(env, task, trigger);
    let source = env.handles.js.get_stream("SENSORS").await.unwrap();
    let config = jetsched_contract::setup::trigger_consumer(
        consumer.clone(),
        None,
        jiff::Timestamp::UNIX_EPOCH,
        std::time::Duration::from_secs(ack_wait),
        "the dead host's".into(),
    );
    let dead = source.create_consumer(config).await.unwrap();
    let mut pull = dead.fetch().max_messages(carried.len() + seqs.len()).messages().await.unwrap();
    let mut held = Vec::new();
    for _ in carried.iter().chain(seqs) {
        held.push(pull.next().await.unwrap().unwrap());
    }
    let msg_id = |seqs: &[u64]| jetsched_contract::run::trigger_msg_id(task, "SENSORS", seqs[0], seqs.last().copied());
    let journal = TriggerState {
        task: task.into(),
        stream: "SENSORS".into(),
        consumer: consumer.clone(),
        batch: Some(JournaledBatch { msg_id: msg_id(seqs), seqs: seqs.to_vec(), carried: carried.to_vec() }),
    };
    let topology = jetsched_contract::Topology::default();
    let ttl = std::time::Duration::from_secs(10);
    jetsched_contract::setup::ensure_ticker(&env.handles.js, &env.names, &topology, ttl).await.unwrap();
    env.kv_put(
        &env.names.ticker_bucket(),
        &trigger_key(partition_of(&consumer), &consumer),
        &serde_json::to_string(&journal).unwrap(),
    )
    .await;
    for batch in [carried, seqs].into_iter().filter(|b| !b.is_empty()) {
        let body = serde_json::to_string(batch).unwrap();
        env.publish(env.names.submit_subject(task), &[(headers::NATS_MSG_ID, &msg_id(batch))], &body).await;
    }
    DeadHost { batches, consumer, held, _services: services }
}

impl DeadHost {
    /// The next `n` batch runs' events, in stream order.
    async fn runs(&mut self, n: usize) -> Vec<Value> {
        let mut runs = Vec::new();
        for _ in 0..n {
            runs.push(self.batches.next_call(60).await.payload);
        }
        runs.sort_by_key(|p| p[0].as_u64());
        runs
    }

    /// Waits until every event up to `last` is acknowledged.
    async fn acked(&self, env: &Env, last: u64) {
        eventually(60, &format!("events 1-{last} to be acknowledged"), || async {
            let info = consumer_info(env, "SENSORS", &self.consumer).await?;
            (info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(())
        })
        .await;
    }

    /// Publishes the next full batch, `first` to `first + 3`, and asserts it
    /// is the next run: no journaled event was batched again.
    async fn next_batch_is_new(&mut self, env: &Env, first: u64) {
        let seqs: Vec<u64> = (first..first + 4).collect();
        for i in &seqs {
            env.publish("sensor.t".into(), &[], &i.to_string()).await;
        }
        assert_eq!(self.batches.next_call(30).await.payload, json!(seqs), "no journaled event batched again");
    }
}

/// The next ticker, in this process.
fn next_host(env: &Env) -> Services {
    env.services_with(ServicesConfig { dispatcher: None, worker: None, ..ServicesConfig::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_journaled_by_a_host_that_died_is_submitted_once_and_its_events_not_batched_again() {
    let env = Env::start().await;
    // A host that died: it held events 1-3 (pulled, never acked), journaled
    // them as a batch (gathered early, `within`), and its submission was
    // stored; then it was killed before acking them.
    let mut dead = batching_host_died(&env, "journaled", 7, &[], &[1, 2, 3], 1).await;

    // The next host: the journaled batch runs once; events 1-3 come back
    // after their ack wait and are acknowledged, not batched with later ones.
    let _ticker = next_host(&env);
    assert_eq!(dead.runs(2).await, vec![json!([1, 2, 3]), json!([4, 5, 6, 7])]);
    // Events 1-3 came back (after the dead host's ack wait) and were acked
    // as the journaled batch's.
    dead.acked(&env, 7).await;
    dead.next_batch_is_new(&env, 8).await;
}

/// The journaled batch's events come back only after the dead host's ack
/// wait, while several batches' worth of later events are waiting: the
/// later batches go on meanwhile (each journal carries the events not yet
/// known acknowledged), and the late events are acknowledged, never batched
/// again. (A host that held later batches until the journal was accounted
/// for stopped pulling once its queue was full, so the late events never
/// came back: the trigger stalled for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_batches_go_on_while_a_dead_hosts_journaled_events_are_still_held() {
    let env = Env::start().await;
    let mut dead = batching_host_died(&env, "late", 15, &[], &[1, 2, 3], 5).await;
    let _ticker = next_host(&env);
    let expected = vec![json!([1, 2, 3]), json!([4, 5, 6, 7]), json!([8, 9, 10, 11]), json!([12, 13, 14, 15])];
    assert_eq!(dead.runs(4).await, expected);
    dead.acked(&env, 15).await;
    dead.held.clear();
    dead.next_batch_is_new(&env, 16).await;
}

/// The journal carries the events of an earlier batch that were not known
/// acknowledged: the next host acknowledges them too when they come back,
/// and batches neither them nor the journaled batch's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_journal_carries_are_acknowledged_by_the_next_host_not_batched_again() {
    let env = Env::start().await;
    // Batch 1-3 was stored but its acks were not known to land; batch 4-5
    // was journaled (carrying 1-3) and stored; then the host died.
    let mut dead = batching_host_died(&env, "carried", 9, &[1, 2, 3], &[4, 5], 2).await;
    let _ticker = next_host(&env);
    assert_eq!(dead.runs(3).await, vec![json!([1, 2, 3]), json!([4, 5]), json!([6, 7, 8, 9])]);
    dead.acked(&env, 9).await;
    dead.held.clear();
    dead.next_batch_is_new(&env, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_added_and_removed_live_takes_effect_and_its_consumer_is_deleted() {
    let env = Env::start().await;
    let mut calls = env.function("fn.live", |_| Reply::Ok(json!({}))).await;
    let _services = all_services(&env);
    user_stream(&env, "ORDERS", &["orders.>"]).await;
    env.put_task("live", json!({"handler": handler("fn.live")})).await;
    let trigger = json!({"stream": "ORDERS", "subject": "orders.paid"});
    let consumer = trigger_consumer(&env, "live", trigger.clone());

    // Added while the ticker runs.
    env.put_task("live", json!({"handler": handler("fn.live"), "triggers": [trigger.clone()]})).await;
    let first = env.publish("orders.paid".into(), &[], r#"{"n": 1}"#).await;
    assert_eq!(calls.next_call(30).await.payload["seq"].as_u64(), Some(first));
    assert!(consumer_info(&env, "ORDERS", &consumer).await.is_some());

    // Removed: its consumer is deleted; an event published then never runs.
    env.put_task("live", json!({"handler": handler("fn.live")})).await;
    eventually(30, "the trigger's consumer to be deleted", || async {
        consumer_info(&env, "ORDERS", &consumer).await.is_none().then_some(())
    })
    .await;
    let while_removed = env.publish("orders.paid".into(), &[], r#"{"n": 2}"#).await;

    // Added again: it reads events stored from then on.
    env.put_task("live", json!({"handler": handler("fn.live"), "triggers": [trigger]})).await;
    let third = env.publish("orders.paid".into(), &[], r#"{"n": 3}"#).await;
    let next = calls.next_call(30).await.payload["seq"].as_u64();
    assert_eq!(next, Some(third), "the event stored while the trigger was removed ({while_removed}) did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_on_a_missing_stream_is_reported_and_works_once_the_stream_exists() {
    let env = Env::start().await;
    let mut calls = env.function("fn.later", |_| Reply::Ok(json!({}))).await;
    let _services = all_services(&env);
    let mut events = env.events().await;
    env.put_task("later", json!({"handler": handler("fn.later"), "triggers": [{"stream": "LATER"}]})).await;
    let invalid: RunEvent = events.wait_for(30, "an invalid report", is("later", RunStatus::Invalid)).await;
    assert!(invalid.error.as_deref().unwrap().contains("stream LATER does not exist"), "{invalid:?}");

    user_stream(&env, "LATER", &["later.>"]).await;
    let seq = env.publish("later.x".into(), &[], "{}").await;
    assert_eq!(calls.next_call(30).await.payload["seq"].as_u64(), Some(seq));
}

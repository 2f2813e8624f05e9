//! jetsched on a real 3-node NATS cluster with R3 streams and buckets, under
//! steady load (schedules firing every second with `misfire: all`, paced
//! submissions with `Nats-Msg-Id`, a NATS function answering), while nodes
//! are killed and restarted, leaders are stepped down, services are killed,
//! the whole cluster restarts, and a node is cut off. Every test then reads
//! the durable record (every stored change of every run record, after the
//! fact) and checks that every fire in the schedules' range and every
//! acknowledged submission succeeded exactly once, and that nothing else ran.
//!
//! Services run as real `jetsched` processes (two of each), so that they can
//! be SIGKILLed. The tests of this file take turns: each starts a cluster
//! and six services, more than two cores carry side by side.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use harness::*;
use jetsched_contract::RunStatus;
use jetsched_contract::run::{scheduled_run_id, submitted_run_id};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

/// One cluster test at a time (see the module header).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TASK: &str = "work";
const SCHEDULES: usize = 10;
/// Submissions per second.
const SUBMIT_RATE: u64 = 20;
/// Lease TTL of the test's tickers: longer than a leader election.
const LEASE_TTL: &str = "5s";

/// The steady load and the services under test.
struct Load {
    /// Fires of every schedule lie in `[first, last]`, one per second.
    first: Timestamp,
    last: Timestamp,
    /// Msg ids of acknowledged submissions.
    acked: Arc<Mutex<Vec<String>>>,
    stop_submitting: CancellationToken,
    submitter: tokio::task::JoinHandle<()>,
    _function: Function,
    services: BTreeMap<String, Child>,
    logs: tempfile::TempDir,
}

impl Load {
    /// Starts the function, the task, the schedules (firing from a few
    /// seconds from now for `seconds`), the submitter and two replicas of
    /// each service.
    async fn start(env: &Env, seconds: i64) -> Load {
        let function = env.function("fn.work", |_| Reply::Ok(json!({"ok": true}))).await;
        env.put_task(
            TASK,
            json!({
                "handler": {"type": "nats", "subject": "fn.work"},
                "timeout": "5s",
                "retry": {"max_attempts": 200, "initial_backoff": "200ms", "max_backoff": "2s", "multiplier": 2.0, "jitter": 0.2}
            }),
        )
        .await;
        let now = Timestamp::now().as_second();
        let first = Timestamp::from_second(now + 4).unwrap();
        let last = Timestamp::from_second(now + 4 + seconds).unwrap();
        for i in 0..SCHEDULES {
            env.put_schedule(
                &format!("s{i}"),
                json!({
                    "every": "1s", "task": TASK, "start_at": first.to_string(), "end_at": last.to_string(),
                    "misfire": {"policy": "all", "window": "5m"}
                }),
            )
            .await;
        }
        // JETSCHED_TEST_KEEP_LOGS=1 keeps the services' logs after the test.
        let logs = tempfile::Builder::new()
            .prefix("jetsched-cluster-logs-")
            .disable_cleanup(std::env::var_os("JETSCHED_TEST_KEEP_LOGS").is_some())
            .tempdir()
            .unwrap();
        let mut load = Load {
            first,
            last,
            acked: Arc::default(),
            stop_submitting: CancellationToken::new(),
            submitter: tokio::spawn(async {}),
            _function: function,
            services: BTreeMap::new(),
            logs,
        };
        for name in ["ticker-a", "ticker-b", "dispatcher-a", "dispatcher-b", "worker-a", "worker-b"] {
            load.spawn(env, name);
        }
        load.submitter = tokio::spawn(submit_paced(
            env.handles.js.clone(),
            env.names.submit_subject(TASK),
            load.acked.clone(),
            load.stop_submitting.clone(),
        ));
        load
    }

    /// (Re)starts the service `name` (`ticker-a`, `worker-b`, ...).
    fn spawn(&mut self, env: &Env, name: &str) {
        let kind = name.split('-').next().unwrap();
        let mut args = vec![kind];
        match kind {
            "ticker" => args.extend(["--ticker-id", name, "--lease-ttl", LEASE_TTL]),
            "worker" => args.extend(["--worker-id", name]),
            _ => {}
        }
        let child = env.spawn_jetsched_logged(&args, "warn,jetsched=info", &self.log(name));
        self.services.insert(name.to_string(), child);
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    /// SIGKILLs the service `name` and starts it again.
    async fn crash(&mut self, env: &Env, name: &str) {
        let child = self.services.get_mut(name).unwrap();
        child.start_kill().unwrap();
        within(10, "a service to die", child.wait()).await.unwrap();
        self.spawn(env, name);
    }

    /// Waits until every schedule's last fire has a run record (the range
    /// has been fired), then stops submitting.
    async fn wind_down(&mut self, env: &Env) {
        let last: Vec<String> = (0..SCHEDULES).map(|i| scheduled_run_id(&format!("s{i}"), self.last)).collect();
        let range = self.last.duration_since(Timestamp::now()).as_secs().max(0) as u64;
        eventually(range + 180, "the last fire of every schedule", || async {
            for id in &last {
                env.runs.get(id).await.ok()??;
            }
            Some(())
        })
        .await;
        self.stop_submitting.cancel();
        within(60, "the submitter to stop", &mut self.submitter).await.unwrap();
    }

    /// Every run that must succeed exactly once.
    fn expected(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for i in 0..SCHEDULES {
            let mut t = self.first;
            while t <= self.last {
                out.insert(scheduled_run_id(&format!("s{i}"), t));
                t = t.checked_add(SignedDuration::from_secs(1)).unwrap();
            }
        }
        for id in self.acked.lock().unwrap().iter() {
            out.insert(submitted_run_id(TASK, Some(id), 0));
        }
        out
    }

    /// The services' logs, for a failure message.
    fn dump_logs(&self) -> String {
        let mut out = String::new();
        for name in self.services.keys() {
            let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}: {} lines, last 15:\n", lines.len()));
            for l in lines.iter().rev().take(15).rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until every expected run has succeeded, then checks from the
    /// durable record (every stored change of every run record) that each
    /// succeeded exactly once and nothing else ran.
    async fn verify(&mut self, env: &Env) {
        self.wind_down(env).await;
        let expected = self.expected();
        assert!(expected.len() > SCHEDULES * 10, "the load ran: {} runs", expected.len());
        let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
        let mut others: BTreeSet<String> = BTreeSet::new();
        let mut changes = Box::pin(env.runs.all_changes().await.unwrap());
        let mut missing = expected.len();
        let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut seen_to = 0;
        let runs_stream = env.names.runs_bucket_stream();
        let read = tokio::time::timeout(Duration::from_secs(180), async {
            loop {
                // Done once every expected run succeeded and the bucket is read to its end.
                let last = env.handles.js.get_stream(&runs_stream).await.unwrap().cached_info().state.last_sequence;
                if missing == 0 && seen_to >= last {
                    return;
                }
                let Some(Ok((seq, run_id, record))) = changes.next().await else { continue };
                seen_to = seq;
                history.entry(run_id.clone()).or_default().push(format!("{:?}#{}", record.status, record.attempt));
                if !expected.contains(&run_id) {
                    others.insert(format!("{run_id} {:?}", record.status));
                } else if record.status == RunStatus::Succeeded {
                    let n = succeeded.entry(run_id).or_default();
                    *n += 1;
                    if *n == 1 {
                        missing -= 1;
                    }
                }
            }
        })
        .await;
        if read.is_err() {
            let mut examples = String::new();
            for id in expected.iter().filter(|id| !succeeded.contains_key(*id)).take(12) {
                let record = env.runs.get(id).await.ok().flatten().map(|s| s.record);
                examples.push_str(&format!("{id}: changes {:?}, record {record:?}\n", history.get(id)));
            }
            panic!("{missing} of {} runs never succeeded, e.g.\n{examples}{}", expected.len(), self.dump_logs());
        }
        let doubled: Vec<_> = succeeded.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "runs that succeeded more than once: {doubled:?}");
        assert!(others.is_empty(), "runs that should not exist: {others:?}");
        eprintln!("{} runs checked; service logs:\n{}", expected.len(), self.dump_logs());
        // And each run record says so now.
        for id in &expected {
            let record = env.record(id).await;
            assert_eq!(record.status, RunStatus::Succeeded, "{id}: {record:?}");
        }
    }
}

/// Publishes a submission every `1/SUBMIT_RATE` s with `Nats-Msg-Id`
/// `sub-<n>`, retrying each (same id) until the server acknowledges it, as a
/// careful client does; records the acknowledged ids.
async fn submit_paced(
    js: async_nats::jetstream::Context,
    subject: String,
    acked: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / SUBMIT_RATE));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        n += 1;
        let id = format!("sub-{n}");
        let mut backoff = jetsched_runtime::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = match js.publish_with_headers(subject.clone(), headers, json!({"n": n}).to_string().into()).await
            {
                Ok(pending) => pending.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match ack {
                Ok(()) => break,
                // An election or a dead node: try again, as the user's client would.
                Err(_) => backoff.wait().await,
            }
        }
        acked.lock().unwrap().push(id);
    }
}

/// Waits until every jetsched stream and bucket has a leader and all its
/// replicas are current again.
async fn wait_healthy(env: &Env) {
    let streams = stream_names(env).await;
    eventually(90, "every stream to have a leader and current replicas", || {
        let streams = streams.clone();
        async move {
            for name in &streams {
                let Ok(mut stream) = env.handles.js.get_stream(name).await else { return None };
                let Ok(info) = stream.info().await else { return None };
                let cluster = info.cluster.as_ref()?;
                if cluster.leader.is_none() || cluster.replicas.len() != 2 {
                    return None;
                }
                if cluster.replicas.iter().any(|r| !r.current || r.offline) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

/// The server name of `stream`'s leader (waits until it has one).
async fn stream_leader(env: &Env, stream: &str) -> String {
    eventually(60, "the stream to have a leader", || async {
        let mut s = env.handles.js.get_stream(stream).await.ok()?;
        s.info().await.ok()?.cluster.as_ref()?.leader.clone()
    })
    .await
}

/// jetsched's streams, buckets' streams included.
async fn stream_names(env: &Env) -> Vec<String> {
    let names: Vec<String> = env.handles.js.stream_names().filter_map(|n| async move { n.ok() }).collect().await;
    assert!(names.len() >= 10, "jetsched's streams and buckets exist: {names:?}");
    names
}

/// Asks every stream leader to step down; returns how many did.
async fn step_down_streams(env: &Env) -> usize {
    let mut n = 0;
    for name in stream_names(env).await {
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}");
        if api_ok(env, subject).await {
            n += 1;
        }
    }
    n
}

/// Asks every consumer leader of every stream to step down; returns how many did.
async fn step_down_consumers(env: &Env) -> usize {
    let mut n = 0;
    for name in stream_names(env).await {
        let Ok(stream) = env.handles.js.get_stream(&name).await else { continue };
        let consumers: Vec<String> = stream.consumer_names().filter_map(|c| async move { c.ok() }).collect().await;
        for consumer in consumers {
            if api_ok(env, format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{name}.{consumer}")).await {
                n += 1;
            }
        }
    }
    n
}

/// A JetStream API request that succeeded (no `error` in the answer),
/// retried for a while: during an election the API may not answer.
async fn api_ok(env: &Env, subject: String) -> bool {
    for _ in 0..5 {
        if api_once(env, subject.clone()).await {
            return true;
        }
    }
    false
}

async fn api_once(env: &Env, subject: String) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), env.client.request(subject.clone(), "".into())).await {
        Ok(Ok(msg)) => {
            let answer: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            if let Some(err) = answer.get("error") {
                eprintln!("{subject}: {err}");
            }
            answer.get("error").is_none()
        }
        Ok(Err(err)) => {
            eprintln!("{subject}: {err}");
            false
        }
        Err(_) => {
            eprintln!("{subject}: no answer within 5s");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_and_restarted_in_turn_loses_and_doubles_nothing() {
    let _turn = TURN.lock().await;
    let mut env = Env::start_cluster(false, false).await;
    let mut load = Load::start(&env, 45).await;
    wait_healthy(&env).await;
    for node in 0..3 {
        env.cluster().node(node).kill();
        // The outage: the node stays down while the other two carry the load.
        carried_on(&env, &env.names.runs_bucket_stream(), 100).await;
        env.cluster().node(node).restart().unwrap();
        wait_healthy(&env).await;
    }
    load.verify(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_stepped_down_and_services_killed_lose_and_double_nothing() {
    let _turn = TURN.lock().await;
    let env = Env::start_cluster(false, false).await;
    let mut load = Load::start(&env, 40).await;
    wait_healthy(&env).await;
    let victims = ["ticker-a", "dispatcher-a", "worker-a", "ticker-b", "dispatcher-b", "worker-b"];
    for victim in victims {
        eventually(60, "a stream leader to step down", || async { (step_down_streams(&env).await >= 1).then_some(()) })
            .await;
        load.crash(&env, victim).await;
        eventually(60, "a consumer leader to step down", || async {
            (step_down_consumers(&env).await >= 1).then_some(())
        })
        .await;
        wait_healthy(&env).await;
    }
    load.verify(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarted_with_sync_always_loses_nothing_acknowledged() {
    let _turn = TURN.lock().await;
    let mut env = Env::start_cluster(true, false).await;
    let mut load = Load::start(&env, 30).await;
    wait_healthy(&env).await;
    // Let the load get going, then crash every node at once.
    eventually(30, "runs to succeed before the crash", || async {
        let stream = env.handles.js.get_stream(env.names.runs_bucket_stream()).await.ok()?;
        (stream.cached_info().state.messages > 100).then_some(())
    })
    .await;
    for node in 0..3 {
        env.cluster().node(node).kill();
    }
    // The outage: every client has lost its connection.
    eventually(30, "the test's own connection to notice the outage", || async {
        (env.handles.js.client().connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    for node in 0..3 {
        env.cluster().node(node).restart().unwrap();
    }
    wait_healthy(&env).await;
    load.verify(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_longer_than_a_lease_then_healed_loses_and_doubles_nothing() {
    let _turn = TURN.lock().await;
    assert!(jetsched_natsbox::Partition::available(), "partition tests need root and `ip netns` (network namespaces)");
    let mut env = Env::start_cluster(false, true).await;
    let mut load = Load::start(&env, 40).await;
    wait_healthy(&env).await;
    // Cut off the node that leads the runs bucket, for longer than a lease lasts.
    let runs_stream = env.names.runs_bucket_stream();
    let leader = stream_leader(&env, &runs_stream).await;
    let node: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    env.cluster().partition(node).unwrap();
    // The cut is real: the other two elect a new leader.
    eventually(60, "a new leader of the runs bucket on the majority side", || async {
        let now = tokio::time::timeout(Duration::from_secs(3), stream_leader(&env, &runs_stream)).await.ok()?;
        (now != leader).then_some(())
    })
    .await;
    // The partition lasts longer than a lease: leases are renewed every
    // third of their TTL, one write per partition held, so four writes per
    // partition on the majority side span more than a TTL whoever holds
    // them (and the cut-off ticker's partitions are taken over meanwhile).
    let leases = env.names.bucket_stream(&env.names.ticker_leases_bucket());
    carried_on(&env, &leases, 4 * u64::from(jetsched_contract::ticker::PARTITIONS)).await;
    carried_on(&env, &runs_stream, 100).await;
    env.cluster().heal(node).unwrap();
    wait_healthy(&env).await;
    load.verify(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_list_with_its_first_node_down_serves_the_cli_and_the_services() {
    let _turn = TURN.lock().await;
    let mut env = Env::start_cluster(false, false).await;
    let _function = env.function("fn.work", |_| Reply::Ok(json!({"ok": true}))).await;
    env.put_task(TASK, json!({"handler": {"type": "nats", "subject": "fn.work"}})).await;
    wait_healthy(&env).await;
    let seeds = env.url();
    assert_eq!(seeds.split(',').count(), 3, "a seed list of three: {seeds}");
    // The first seed is down: every client must go on to the next.
    env.cluster().node(0).kill();
    let logs = tempfile::tempdir().unwrap();
    let _dispatcher = env.spawn_jetsched_logged(&["dispatcher"], "warn", &logs.path().join("dispatcher.log"));
    let _worker = env.spawn_jetsched_logged(&["worker"], "warn", &logs.path().join("worker.log"));
    // Services that start while a node is gone wait out the elections of
    // what it led (consumers created on the tasks stream take longest on a
    // busy machine): the worker serves once its heartbeat is there.
    eventually(120, "the worker to serve with the first seed down", || async {
        // (Reads may fail while the bucket elects a leader: asked again.)
        let mut keys = env.handles.workers.keys().await.ok()?;
        keys.next().await?.ok().map(|_| ())
    })
    .await;
    let (code, out, err) = env.jetsched(&["submit", TASK, r#"{"via":"cli"}"#, "--id", "seeded", "--wait"]).await;
    assert_eq!(code, 0, "jetsched submit with NATS_URL={seeds}: {out}{err}");
    let run_id = submitted_run_id(TASK, Some("seeded"), 0);
    succeeds(&env, &run_id, 60).await;
}

/// Waits until `stream` has stored `messages` more messages: the part of
/// the cluster still up has visibly carried on (an outage then lasts as long
/// as that work takes, whatever the machine's speed). Reads that fail while
/// leaders are elected are asked again.
async fn carried_on(env: &Env, stream: &str, messages: u64) {
    let last = || async {
        let mut s = env.handles.js.get_stream(stream).await.ok()?;
        tokio::time::timeout(Duration::from_secs(3), s.info()).await.ok()?.ok().map(|i| i.state.last_sequence)
    };
    let start = eventually(60, "the stream to answer during the outage", last).await;
    eventually(120, &format!("{messages} more messages in {stream} during the outage"), || async {
        (last().await? >= start + messages).then_some(())
    })
    .await;
}

/// CPU time (user + system) `pid` has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the state (field 3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stays_quiet_and_idle_while_its_stream_has_no_leader() {
    let _turn = TURN.lock().await;
    let mut env = Env::start_cluster(false, false).await;
    let _function = env.function("fn.work", |_| Reply::Ok(json!({"ok": true}))).await;
    env.put_task(TASK, json!({"handler": {"type": "nats", "subject": "fn.work"}})).await;
    wait_healthy(&env).await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    // The default log filter, as an operator runs it.
    let worker = env.spawn_jetsched_logged(&["worker"], "info,async_nats=warn", &log);
    let pid = worker.id().unwrap();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    eventually(60, "the worker to start", || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("worker started").then_some(())
    })
    .await;
    // Two of three nodes down: no stream has a leader (no quorum).
    let (lines_before, cpu_before) = (lines(), cpu_ticks(pid));
    env.cluster().node(1).kill();
    env.cluster().node(2).kill();
    // The outage under test: for 10 s the worker stays within a handful of
    // log lines and a few percent of a core, checked as it goes (a worker
    // that logs per attempt or spins fails the moment it crosses the line).
    throughout(10, "the worker without a stream leader", || {
        let (lines_during, cpu_during) = (lines() - lines_before, cpu_ticks(pid) - cpu_before);
        if lines_during > 6 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("a handful of lines in 10 s without a leader, not {lines_during}:\n{text}"));
        }
        if cpu_during > 50 {
            return Err(format!("a few percent of a core (at most 0.5 s in 10 s), not {cpu_during} ticks"));
        }
        Ok(())
    })
    .await;
    // And it recovers: a submission runs once the nodes are back.
    env.cluster().node(1).restart().unwrap();
    env.cluster().node(2).restart().unwrap();
    wait_healthy(&env).await;
    let _dispatcher = env.spawn_jetsched_logged(&["dispatcher"], "warn", &logs.path().join("dispatcher.log"));
    let seq = env.submit(TASK, r#"{"after":"outage"}"#).await;
    let run_id = submitted_run_id(TASK, None, seq);
    succeeds(&env, &run_id, 90).await;
}

/// Waits up to `secs` for run `run_id` to succeed (read from its record: the
/// test's own connection may be moving between nodes).
async fn succeeds(env: &Env, run_id: &str, secs: u64) {
    eventually(secs, "the run to succeed", || async {
        (env.runs.get(run_id).await.ok()??.record.status == RunStatus::Succeeded).then_some(())
    })
    .await;
}

//! Resources (cores, memory, disk) on a real nats-server, with workers of
//! different sizes, asserted from causes: the events stream's order and
//! what held handlers record. A run goes only to a worker whose capacity
//! can hold it and that has room for it now; `least_loaded` picks the
//! worker with the most room; a run no live worker can hold waits, says
//! why, and starts when a big enough worker joins; and a worker never holds
//! more than its capacity, even when runs are sent to it while it is full.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use harness::*;
use jetsched_contract::{ByteAmount, Cores, RunEvent, RunStatus, headers, run};
use jetsched_worker::{Invocation, Outcome};
use serde_json::json;
use tokio::sync::Semaphore;

/// Per worker: runs inside the handler now, the most at once, and how many entered.
#[derive(Default)]
struct Occupancy(Mutex<HashMap<String, (usize, usize, usize)>>);

impl Occupancy {
    fn enter(&self, worker: &str) {
        let mut map = self.0.lock().unwrap();
        let (now, max, entries) = map.entry(worker.to_string()).or_default();
        *now += 1;
        *max = (*max).max(*now);
        *entries += 1;
    }

    fn leave(&self, worker: &str) {
        self.0.lock().unwrap().get_mut(worker).unwrap().0 -= 1;
    }

    /// (most at once, entries) of `worker`.
    fn of(&self, worker: &str) -> (usize, usize) {
        self.0.lock().unwrap().get(worker).map_or((0, 0), |(_, max, entries)| (*max, *entries))
    }

    fn entries(&self) -> usize {
        self.0.lock().unwrap().values().map(|(_, _, e)| e).sum()
    }
}

/// A builtin `held` that counts who is inside on this worker and waits for
/// a permit of `gate` before it succeeds.
fn held(worker: &str, occupancy: &Arc<Occupancy>, gate: &Arc<Semaphore>) -> Builtins {
    let mut b = Builtins::default();
    let (worker, occupancy, gate) = (worker.to_string(), occupancy.clone(), gate.clone());
    b.register("held", move |_inv: Invocation| {
        let (worker, occupancy, gate) = (worker.clone(), occupancy.clone(), gate.clone());
        async move {
            occupancy.enter(&worker);
            gate.acquire().await.unwrap().forget();
            occupancy.leave(&worker);
            Outcome::ok(json!({}))
        }
    });
    b
}

/// A test's world: a task running `held`, workers of given sizes, one
/// dispatcher (started once every worker's heartbeat is in), the events.
struct World {
    env: Env,
    occupancy: Arc<Occupancy>,
    gate: Arc<Semaphore>,
    services: Vec<Services>,
    events: Events,
}

impl World {
    /// Task `task` defined by `def` (its handler is `held`), and workers
    /// (id, cores, memory, disk); `held` lets `permits` runs through at once.
    async fn start(
        task: &str,
        mut def: serde_json::Value,
        workers: &[(&str, u64, &str, &str)],
        permits: usize,
    ) -> World {
        let env = Env::start().await;
        def["handler"] = json!({"type": "builtin", "name": "held"});
        env.put_task(task, def).await;
        let (occupancy, gate) = (Arc::new(Occupancy::default()), Arc::new(Semaphore::new(permits)));
        let events = env.events().await;
        let mut world = World { env, occupancy, gate, services: Vec::new(), events };
        for (id, cpu, memory, disk) in workers {
            world.join(id, *cpu, memory, disk);
        }
        let ids: Vec<&str> = workers.iter().map(|w| w.0).collect();
        world.env.wait_for_workers(&ids).await;
        world.services.push(world.env.services_with(ServicesConfig {
            ticker: None,
            worker: None,
            ..Default::default()
        }));
        world
    }

    /// Starts worker `id` offering `cpu` cores, `memory` and `disk`.
    fn join(&mut self, id: &str, cpu: u64, memory: &str, disk: &str) {
        let w = WorkerConfig {
            worker_id: Some(id.to_string()),
            cpu: Some(Cores::whole(cpu)),
            memory: Some(memory.parse::<ByteAmount>().unwrap()),
            disk: Some(disk.parse::<ByteAmount>().unwrap()),
            ..WorkerConfig::default()
        };
        let builtins = held(id, &self.occupancy, &self.gate);
        let config = ServicesConfig { ticker: None, dispatcher: None, worker: Some(w), builtins, ..Default::default() };
        self.services.push(self.env.services_with(config));
    }
}

/// Submits run `name` of `task` and returns its run id.
async fn submit(env: &Env, task: &str, name: &str) -> String {
    env.publish(env.names.submit_subject(task), &[(headers::NATS_MSG_ID, name)], "{}").await;
    run::submitted_run_id(task, Some(name), 0)
}

fn of_run<'a>(run: &'a str) -> impl Fn(&RunEvent) -> bool + 'a {
    move |e| e.run_id.as_deref() == Some(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_fit_only_the_big_worker_go_there_one_at_a_time_as_room_frees() {
    // 6 GiB of memory: only the big worker has that much, and only once.
    let def = json!({"requires": {"cpu": 1, "memory": "6GiB"}});
    let workers = [("fit-small", 2, "4GiB", "10GiB"), ("fit-big", 4, "8GiB", "10GiB")];
    let World { env, occupancy, gate, mut events, services: _services } =
        World::start("bigjob", def, &workers, 0).await;

    const RUNS: usize = 3;
    for i in 0..RUNS {
        submit(&env, "bigjob", &format!("big-{i}")).await;
    }
    // One at a time: each next run starts only after a permit lets the one inside finish.
    for n in 1..=RUNS {
        eventually(20, &format!("{n} runs to enter"), || async { (occupancy.entries() >= n).then_some(()) }).await;
        gate.add_permits(1);
    }
    let done = events.wait_for_n(RUNS, 30, "every run to succeed", is("bigjob", RunStatus::Succeeded)).await;
    assert!(done.iter().all(|e| e.attempt == 1), "waiting used no attempt: {done:?}");

    let started = events.seen_with("bigjob", RunStatus::Started);
    let workers: BTreeSet<String> = started.iter().map(|e| e.worker.clone().unwrap()).collect();
    assert_eq!(workers, BTreeSet::from(["fit-big".to_string()]), "only the big worker can hold them");
    assert_eq!(occupancy.of("fit-big"), (1, RUNS), "never two at once: 6 GiB of 8");
    assert_eq!(occupancy.of("fit-small").1, 0);
    // In the events stream, a run is queued (sent to the big worker) only
    // once the one before has finished there: the dispatcher sent none to a
    // worker without room. Those that could not go waited, and said why.
    let mut open: Option<String> = None;
    for (_, e) in events.seen.iter().filter(|(_, e)| e.task == "bigjob") {
        let run = e.run_id.clone().unwrap();
        match e.status {
            RunStatus::Queued => {
                assert_eq!(open, None, "{run} was sent to the big worker while {open:?} held its room");
                assert_eq!(e.queue.as_deref(), Some("_w-fit-big"));
                open = Some(run);
            }
            RunStatus::Succeeded => open = None,
            _ => {}
        }
    }
    let waiting = events.seen_with("bigjob", RunStatus::Waiting);
    let waited: BTreeSet<&str> = waiting.iter().map(|e| e.run_id.as_deref().unwrap()).collect();
    assert_eq!(waited.len(), RUNS - 1, "all but the first waited: {waiting:?}");
    assert!(waiting[0].error.as_deref().unwrap().contains("has room for the run now"), "{waiting:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_places_each_run_on_the_worker_with_the_most_room() {
    let def = json!({"requires": {"cpu": 1}, "routing": "least_loaded"});
    let workers = [("ll-a-small", 2, "4GiB", "10GiB"), ("ll-b-big", 4, "8GiB", "10GiB")];
    let World { env, occupancy, gate, mut events, services: _services } =
        World::start("spread", def, &workers, 0).await;

    // Each run is submitted once the one before is placed and running, so
    // each placement sees the room the earlier ones took. Free cores
    // (small, big) before each: (2, 4) big; (2, 3) big; (2, 2) a tie, to the
    // lower id: small; (1, 2) big; (1, 1) small; (0, 1) big; (0, 0) none.
    let expected = ["ll-b-big", "ll-b-big", "ll-a-small", "ll-b-big", "ll-a-small", "ll-b-big"];
    let mut placed = Vec::new();
    for (i, want) in expected.iter().enumerate() {
        let run = submit(&env, "spread", &format!("spread-{i}")).await;
        let queued = events
            .wait_for(20, &format!("{run} to be placed"), |e| of_run(&run)(e) && e.status == RunStatus::Queued)
            .await;
        placed.push(queued.queue.unwrap().strip_prefix("_w-").unwrap().to_string());
        assert_eq!(placed.last().unwrap(), want, "placement order so far: {placed:?}");
        let started = events
            .wait_for(20, &format!("{run} to start"), |e| of_run(&run)(e) && e.status == RunStatus::Started)
            .await;
        assert_eq!(started.worker.as_deref(), Some(*want));
    }

    // Every core is held: the seventh run waits, and goes where room frees.
    let last = submit(&env, "spread", "spread-6").await;
    let waiting =
        events.wait_for(20, "the seventh run to wait", |e| of_run(&last)(e) && e.status == RunStatus::Waiting).await;
    assert!(waiting.error.as_deref().unwrap().contains("has room for the run now"), "{waiting:?}");
    assert!(
        events.seen.iter().all(|(_, e)| !(of_run(&last)(e) && e.status == RunStatus::Queued)),
        "not sent anywhere yet"
    );
    gate.add_permits(1);
    let started =
        events.wait_for(20, "the seventh run to start", |e| of_run(&last)(e) && e.status == RunStatus::Started).await;
    let freed = events.seen_with("spread", RunStatus::Succeeded)[0].worker.clone().unwrap();
    assert_eq!(started.worker.unwrap(), freed, "it went to the worker whose run finished");
    gate.add_permits(10);
    events.wait_for_n(7, 30, "every run to succeed", is("spread", RunStatus::Succeeded)).await;
    assert_eq!((occupancy.of("ll-a-small").0, occupancy.of("ll-b-big").0), (2, 4), "each full, never more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_too_big_for_every_worker_waits_and_starts_when_a_big_enough_worker_joins() {
    let def = json!({"requires": {"disk": "100GiB"}});
    let workers = [("disk-small", 2, "4GiB", "10GiB"), ("disk-big", 4, "8GiB", "50GiB")];
    let mut world = World::start("archive", def, &workers, 10).await;

    let run = submit(&world.env, "archive", "archive-1").await;
    let events = &mut world.events;
    let waiting = events.wait_for(20, "the run to wait", |e| of_run(&run)(e) && e.status == RunStatus::Waiting).await;
    let why = waiting.error.unwrap();
    assert!(why.contains("no live worker of queue default is big enough") && why.contains("100.0 GiB disk"), "{why}");
    assert!(events.seen.iter().all(|(_, e)| !(of_run(&run)(e) && e.status == RunStatus::Queued)), "sent nowhere");

    world.join("disk-huge", 2, "4GiB", "200GiB");
    let events = &mut world.events;
    let started = events.wait_for(30, "the run to start", |e| of_run(&run)(e) && e.status == RunStatus::Started).await;
    assert_eq!((started.worker.as_deref(), started.attempt), (Some("disk-huge"), 1));
    events.wait_for(20, "the run to succeed", |e| of_run(&run)(e) && e.status == RunStatus::Succeeded).await;
    let occupancy = &world.occupancy;
    assert_eq!(occupancy.of("disk-small").1 + occupancy.of("disk-big").1, 0, "no smaller worker ran it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_holds_more_than_its_capacity_when_runs_are_sent_to_it_full() {
    // Broadcast shares go to every worker big enough, full or not, and wait
    // there: each worker must refuse what it has no room for.
    let def = json!({"requires": {"cpu": 2}, "routing": "broadcast"});
    let workers = [("cap-small", 2, "4GiB", "10GiB"), ("cap-big", 4, "8GiB", "10GiB")];
    let World { env, occupancy, gate, mut events, services: _services } =
        World::start("fanout", def, &workers, 0).await;
    const BROADCASTS: usize = 3;
    for i in 0..BROADCASTS {
        submit(&env, "fanout", &format!("fan-{i}")).await;
    }
    let capacity = BTreeMap::from([("cap-small", 1), ("cap-big", 2)]);

    // Until the shares that find no room have said so (2 on the small
    // worker, 1 on the big one), check after every start that no worker
    // holds more than it can.
    let (mut starts, mut waits) = (0, 0);
    within(30, "three shares to start and three to wait", async {
        while starts < 3 || waits < 3 {
            let (_, e) = events.next().await;
            match (e.task.as_str(), e.status) {
                ("fanout", RunStatus::Waiting) => waits += 1,
                ("fanout", RunStatus::Started) => {
                    starts += 1;
                    eventually(10, "the started share to enter", || async {
                        (occupancy.entries() >= starts).then_some(())
                    })
                    .await;
                }
                _ => continue,
            }
            for (w, cap) in &capacity {
                let (max, _) = occupancy.of(w);
                assert!(max <= *cap, "{w} held {max} shares of 2 cores at once; it has room for {cap}");
            }
        }
    })
    .await;
    gate.add_permits(2 * BROADCASTS);
    let done =
        events.wait_for_n(2 * BROADCASTS, 30, "every share to succeed", is("fanout", RunStatus::Succeeded)).await;
    assert!(done.iter().all(|e| e.attempt == 1), "{done:?}");
    for (w, cap) in &capacity {
        assert_eq!(occupancy.of(w), (*cap, BROADCASTS), "{w}: full at most, every share run");
    }
}

//! Sealed payloads on a real nats-server: submissions sealed by the CLI and
//! by the worker library run with the plaintext their handlers need, while
//! nothing stored (work items, run records, results, events, dead letters)
//! holds it; NATS functions get the documented sealed format and answer in
//! it; a wrong or unknown key fails the run with a clear error; rotated
//! keys keep old runs readable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use base64::Engine as _;
use harness::*;
use jetsched_contract::codec::{self, Keyring};
use jetsched_contract::{RunRecord, RunStatus, headers};
use serde_json::{Value, json};

const SECRET: &str = "card-4111-1111-1111-1111";

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Key files: the old one (k1), the current one after rotation (k2 first,
/// k1 kept), and an impostor (another key under the id k2).
struct Keys {
    _dir: tempfile::TempDir,
    old: std::path::PathBuf,
    current: std::path::PathBuf,
    impostor: std::path::PathBuf,
    stranger: std::path::PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Keys {
        old: write("old.keys", format!("k1 {}\n", key(1))),
        current: write("current.keys", format!("# rotated\nk2 {}\nk1 {}\n", key(2), key(1))),
        impostor: write("impostor.keys", format!("k2 {}\n", key(9))),
        stranger: write("stranger.keys", format!("k3 {}\n", key(3))),
        _dir: dir,
    }
}

/// Every stored message of `stream`, raw (subject, headers and payload),
/// read by sequence (work-queue streams take no second consumer).
async fn raw_messages(env: &Env, stream: &str) -> Vec<String> {
    let mut stream = env.handles.js.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(format!("{} {:?} {}", m.subject, m.headers, String::from_utf8_lossy(&m.payload)));
        }
    }
    out
}

async fn record(env: &Env, run_id: &str) -> RunRecord {
    serde_json::from_slice(&env.kv_get(&env.names.runs_bucket(), run_id).await.expect("record")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_payloads_run_while_nothing_stored_holds_the_plaintext() {
    let env = Env::start().await;
    let keys = keys();
    let ring = Keyring::from_file(&keys.current).unwrap();
    // A NATS function in "another language": it opens the documented
    // format itself and answers sealed.
    let function_ring = ring.clone();
    let mut function = env
        .function("fn.card", move |call| {
            assert_eq!(call.header(headers::KEY_ID).as_deref(), Some("k2"), "the request names its key");
            assert!(codec::is_sealed(&call.payload), "the function gets the sealed form: {}", call.payload);
            let plain: Value = serde_json::from_slice(&function_ring.open(&call.payload).unwrap()).unwrap();
            Reply::Ok(function_ring.seal_value(&json!({"charged": plain["card"]})).unwrap())
        })
        .await;
    env.put_task("echo", json!({"handler": {"type": "exec", "command": ["cat"]}})).await;
    env.put_task("fails", json!({"handler": {"type": "exec", "command": ["sh", "-c", "cat; cat >&2; exit 3"]}})).await;
    env.put_task("card", json!({"handler": {"type": "nats", "subject": "fn.card"}})).await;
    env.put_task("parked", json!({"handler": {"type": "exec", "command": ["cat"]}, "queue": "nobody"})).await;
    let _services = env.services_with(ServicesConfig {
        worker: Some(WorkerConfig {
            allow_exec: vec!["cat".into(), "sh".into()],
            payload_key_file: Some(keys.current.clone()),
            ..WorkerConfig::default()
        }),
        ..ServicesConfig::default()
    });
    let mut events = env.events().await;
    let payload = json!({"card": SECRET});

    // The CLI seals a submission...
    let key_file = keys.current.display().to_string();
    let (code, out, err) =
        env.jetsched(&["submit", "echo", &payload.to_string(), "--payload-key-file", &key_file]).await;
    assert_eq!(code, 0, "{out}{err}");
    let echo_run = out.trim().to_string();
    // ...and so does the worker library.
    let js = &env.handles.js;
    let submit = |task: &'static str| jetsched_worker::submit::submit(js, &env.names, task, &payload, Some(&ring));
    let card_run = submit("card").await.unwrap();
    let fails_run = submit("fails").await.unwrap();
    submit("parked").await.unwrap();

    let done = events.wait_for(30, "the sealed exec run", is("echo", RunStatus::Succeeded)).await;
    assert_eq!(done.run_id.as_deref(), Some(echo_run.as_str()));
    events.wait_for(30, "the sealed function run", is("card", RunStatus::Succeeded)).await;
    events.wait_for(30, "the sealed failing run", is("fails", RunStatus::Dead)).await;
    function.next_call(5).await;
    events.wait_for(30, "the parked run to be queued", is("parked", RunStatus::Queued)).await;

    // The handlers had the plaintext: cat echoed it, the function charged it;
    // both results are stored sealed and open with the key.
    let echoed = record(&env, &echo_run).await.result.expect("a result");
    assert!(codec::is_sealed(&echoed), "{echoed}");
    assert_eq!(serde_json::from_slice::<Value>(&ring.open(&echoed).unwrap()).unwrap(), payload);
    let charged = record(&env, &card_run).await.result.expect("a result");
    assert_eq!(serde_json::from_slice::<Value>(&ring.open(&charged).unwrap()).unwrap(), json!({"charged": SECRET}));
    let failed = record(&env, &fails_run).await;
    assert!(failed.error.is_some());

    // Nothing stored holds the plaintext: work waiting in the tasks stream,
    // run records, events, dead letters.
    let mut stored = raw_messages(&env, &env.names.tasks_stream()).await;
    assert_eq!(stored.len(), 1, "the parked work item waits in the tasks stream");
    stored.extend(raw_messages(&env, &env.names.events_stream()).await);
    stored.extend(raw_messages(&env, &env.names.dlq_stream()).await);
    stored.extend(raw_messages(&env, &env.names.runs_bucket_stream()).await);
    assert!(stored.iter().any(|m| m.contains(codec::SEALED)), "sealed payloads are stored");
    let leaks: Vec<&String> = stored.iter().filter(|m| m.contains(SECRET) || m.contains("4111-1111")).collect();
    assert!(leaks.is_empty(), "plaintext stored:\n{leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_fail_clearly_and_rotated_keys_keep_old_runs_readable() {
    let env = Env::start().await;
    let keys = keys();
    env.put_task("echo", json!({"handler": {"type": "exec", "command": ["cat"]}})).await;
    let mut plain = json!({"handler": {"type": "exec", "command": ["cat"]}});
    plain["queue"] = json!("keyless");
    env.put_task("keyless", plain).await;
    let worker = |queue: &str, key: Option<std::path::PathBuf>| WorkerConfig {
        queues: vec![queue.to_string()],
        allow_exec: vec!["cat".into()],
        payload_key_file: key,
        ..WorkerConfig::default()
    };
    let _services = env.services_with(ServicesConfig {
        worker: Some(worker("default", Some(keys.current.clone()))),
        ..ServicesConfig::default()
    });
    let _keyless = env.services_with(ServicesConfig {
        ticker: None,
        dispatcher: None,
        worker: Some(worker("keyless", None)),
        ..ServicesConfig::default()
    });
    let mut events = env.events().await;
    let payload = json!({"card": SECRET});
    let js = &env.handles.js;
    let sealed_with = |path: &std::path::Path| Keyring::from_file(path).unwrap();
    let old =
        jetsched_worker::submit::submit(js, &env.names, "echo", &payload, Some(&sealed_with(&keys.old))).await.unwrap();
    let impostor =
        jetsched_worker::submit::submit(js, &env.names, "echo", &payload, Some(&sealed_with(&keys.impostor)))
            .await
            .unwrap();
    let stranger =
        jetsched_worker::submit::submit(js, &env.names, "echo", &payload, Some(&sealed_with(&keys.stranger)))
            .await
            .unwrap();
    let keyless =
        jetsched_worker::submit::submit(js, &env.names, "keyless", &payload, Some(&sealed_with(&keys.current)))
            .await
            .unwrap();

    let ended = |run: String| {
        move |e: &jetsched_contract::RunEvent| e.run_id.as_deref() == Some(run.as_str()) && e.status.is_terminal()
    };
    let e = events.wait_for(30, "the run sealed with the rotated-out key", ended(old.clone())).await;
    assert_eq!(e.status, RunStatus::Succeeded, "a run sealed before the rotation still runs: {e:?}");
    let result = record(&env, &old).await.result.unwrap();
    assert_eq!(codec::sealed_key(&result), Some("k2"), "its result is sealed with the current key");
    for (run, expected) in [
        (impostor, "cannot open the payload sealed with key \"k2\": wrong key or altered data"),
        (stranger, "sealed with key \"k3\", which the key file does not hold"),
        (keyless, "sealed with key \"k2\" and this worker has no --payload-key-file"),
    ] {
        let e = events.wait_for(30, "a run this worker cannot open", ended(run)).await;
        assert_eq!(e.status, RunStatus::Dead, "{e:?}");
        assert!(e.error.as_deref().unwrap_or_default().contains(expected), "{e:?}");
    }
}

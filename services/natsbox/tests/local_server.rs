//! A local server on a real nats-server binary: one left running by an
//! owner that was killed (a `jetsched up` ended by SIGKILL) does not block the
//! next start on the same store and port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use jetsched_natsbox::{LocalServer, Preference, ServerOptions, find_or_install, is_nats_server};

#[test]
fn a_server_left_running_by_a_killed_owner_is_stopped_before_a_new_one_starts() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.jetsched/bin");
    let binary = find_or_install(&root, Preference::PinnedOnly).expect("nats-server available");
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nats-server.pid");
    let options =
        ServerOptions { pid_file: Some(pid_file.clone()), ..ServerOptions::new(binary, dir.path().join("js")) };

    let first = LocalServer::start(options.clone()).unwrap();
    let port = first.port();
    let stale: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(is_nats_server(stale));
    // Its owner goes away without stopping it.
    std::mem::forget(first);

    // Same port and store: this start fails unless the stale server is gone.
    let second = LocalServer::start(ServerOptions { port, ..options }).unwrap();
    assert!(!is_nats_server(stale), "the stale server was stopped");
    let current: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(current, stale);
    assert!(is_nats_server(current));
    drop(second);
}

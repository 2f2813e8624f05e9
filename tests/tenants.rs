//! Two tenants (`--prefix tenant-a`, `--prefix tenant-b`) on one
//! nats-server, each with its own user per role carrying exactly what
//! `jetsched permissions <role> --prefix <tenant>` prints: both pipelines run
//! side by side, and no role of either tenant may publish to or subscribe to
//! anything the same role of the other tenant may (both directions), short
//! of asking the server who it is and the account's JetStream totals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod secure;

use futures::StreamExt;
use harness::{Events, is, within};
use jetsched_contract::permissions::{
    ACCOUNT_INFO_SUBJECT, Permissions, Role, STREAM_LIST_SUBJECT, Scope, USER_INFO_SUBJECT,
};
use jetsched_contract::{Handles, Names, RunStatus};
use secure::{Probe, SecureServer, Tls, User};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// One tenant: its names, the scope of its roles, a user per role.
struct Tenant {
    names: Names,
    scope: Scope,
    users: Vec<(Role, User)>,
}

impl Tenant {
    fn new(prefix: &str) -> Tenant {
        let names = Names::new(prefix).unwrap();
        // Function subjects are users' own: each tenant names its own.
        let scope =
            Scope { worker_ids: vec!["w1".into()], functions: vec![format!("fn-{prefix}.>")], ..Scope::default() };
        let users = Role::ALL.iter().map(|&role| (role, User::role(&names, role, &scope))).collect();
        Tenant { names, scope, users }
    }

    fn user(&self, role: Role) -> &User {
        &self.users.iter().find(|(r, _)| *r == role).unwrap().1
    }

    fn function(&self) -> String {
        format!("fn-{}.work", self.names.prefix())
    }

    /// Creates its streams and runs its three services, each under its own
    /// user, and a function under the function user; returns the admin's
    /// handles.
    async fn run(&self, server: &SecureServer, token: &CancellationToken) -> Handles {
        let admin = server.open(self.user(Role::Admin), &self.names, Role::Admin, &self.scope).await;
        let ticker = server.open(self.user(Role::Ticker), &self.names, Role::Ticker, &self.scope).await;
        let dispatcher = server.open(self.user(Role::Dispatcher), &self.names, Role::Dispatcher, &self.scope).await;
        let worker = server.open(self.user(Role::Worker), &self.names, Role::Worker, &self.scope).await;
        let config = harness::WorkerConfig { worker_id: Some("w1".into()), ..harness::WorkerConfig::default() };
        secure::spawn_services(ticker, dispatcher, (worker, config), token);
        let function = Probe::connect(server, self.user(Role::Function), &self.names, Role::Function).await;
        let mut calls = function.client.subscribe(self.function()).await.unwrap();
        function.client.flush().await.unwrap();
        tokio::spawn(async move {
            while let Some(msg) = calls.next().await {
                if let Some(reply) = msg.reply {
                    function.client.publish(reply, "{}".into()).await.unwrap();
                }
            }
        });
        let def = json!({"handler": {"type": "nats", "subject": self.function()}});
        admin.tasks.put("work", def.to_string().into()).await.unwrap();
        admin.schedules.put("tick", json!({"every": "1s", "task": "work"}).to_string().into()).await.unwrap();
        admin
    }
}

/// Every subject `theirs` may use that `ours` may not, tried as `ours`:
/// returns what the server let through.
async fn crossings(server: &SecureServer, ours: &Tenant, theirs: &Tenant) -> Vec<String> {
    // Account-wide reads every tenant has (documented in OPERATIONS.md,
    // "Tenants"): its own user info, the account's JetStream totals, and the
    // stream listing (names and subjects) tickers check trigger subjects with.
    let shared = |s: &String| s == USER_INFO_SUBJECT || s == ACCOUNT_INFO_SUBJECT || s == STREAM_LIST_SUBJECT;
    let mut through = Vec::new();
    for role in Role::ALL {
        let mut probe = Probe::connect(server, ours.user(role), &ours.names, role).await;
        let their = Permissions::of(role, &theirs.names, &theirs.scope).unwrap();
        for subject in their.publish.iter().filter(|s| !shared(s)) {
            if probe.may_publish(subject).await {
                through.push(format!("{} {role} published to {subject}", ours.names));
            }
        }
        for subject in their.subscribe.iter().filter(|s| !shared(s)) {
            if probe.may_subscribe(subject).await {
                through.push(format!("{} {role} subscribed to {subject}", ours.names));
            }
        }
    }
    through
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_one_server_neither_see_nor_touch_each_other() {
    let (a, b) = (Tenant::new("tenant-a"), Tenant::new("tenant-b"));
    let users: Vec<User> = a.users.iter().chain(&b.users).map(|(_, u)| u.clone()).collect();
    let server = SecureServer::start(&users, Tls::ServerOnly).await;
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    // Boxed: the services' futures are large for a test thread's stack.
    let admin_a = Box::pin(a.run(&server, &token)).await;
    let admin_b = Box::pin(b.run(&server, &token)).await;

    // Both pipelines run side by side: each tenant's schedule fires and its
    // submission runs, under its own users.
    for (tenant, admin) in [(&a, &admin_a), (&b, &admin_b)] {
        let mut events = Events::read(admin).await;
        let submitter = Probe::connect(&server, tenant.user(Role::Submitter), &tenant.names, Role::Submitter).await;
        let js = jetsched_runtime::jetstream(submitter.client.clone());
        js.publish(tenant.names.submit_subject("work"), "{}".into()).await.unwrap().await.unwrap();
        let what = format!("{} to run its submission", tenant.names);
        events
            .wait_for(30, &what, |e| e.task == "work" && e.schedule.is_none() && e.status == RunStatus::Succeeded)
            .await;
        let what = format!("{}'s schedule to fire", tenant.names);
        events.wait_for(30, &what, |e| e.schedule.as_deref() == Some("tick") && e.status == RunStatus::Succeeded).await;
        let seen = events.seen.iter().filter(|(subject, _)| !subject.starts_with(tenant.names.prefix())).count();
        assert_eq!(seen, 0, "{} sees events of another tenant", tenant.names);
    }
    let violations = server.violations();
    assert!(violations.is_empty(), "the pipelines were refused something:\n{}", violations.join("\n"));

    // Neither tenant's roles may use anything of the other's.
    let mut through = Box::pin(crossings(&server, &a, &b)).await;
    through.extend(Box::pin(crossings(&server, &b, &a)).await);
    assert!(through.is_empty(), "one tenant reached the other:\n{}", through.join("\n"));

    // Both still run: nothing the probes tried changed the other tenant.
    for (tenant, admin) in [(&a, &admin_a), (&b, &admin_b)] {
        let mut events = Events::read(admin).await;
        let submitter = Probe::connect(&server, tenant.user(Role::Submitter), &tenant.names, Role::Submitter).await;
        let js = jetsched_runtime::jetstream(submitter.client.clone());
        let ack = js.publish(tenant.names.submit_subject("work"), "{}".into()).await.unwrap().await.unwrap();
        let run_id = jetsched_contract::run::submitted_run_id("work", None, ack.sequence);
        let what = format!("{} to run after the probes", tenant.names);
        within(
            40,
            &what,
            events.wait_for(30, &what, move |e| {
                e.run_id.as_deref() == Some(run_id.as_str()) && is("work", RunStatus::Succeeded)(e)
            }),
        )
        .await;
    }
}

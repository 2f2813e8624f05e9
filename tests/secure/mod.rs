//! A nats-server with TLS (a certificate authority and certificates made
//! in the test with rcgen) and one user per jetsched role carrying exactly
//! what `jetsched permissions` prints; services run under their own users;
//! probes that tell a permission the server refused from one it allowed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::Client;
use jetsched_contract::permissions::{Permissions, Role, Scope};
use jetsched_contract::{Handles, Names, Topology};
use jetsched_natsbox::{LocalServer, Preference, ServerOptions};
use jetsched_runtime::NatsArgs;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::mpsc;

use crate::harness::within;

/// A client's certificate and key files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority, the server's certificate for 127.0.0.1,
/// a client certificate it signed, and a client certificate from another
/// authority.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client: ClientCert,
    pub rogue: ClientCert,
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> ClientCert {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    ClientCert { cert: cert_path, key: key_path }
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority("jetsched test CA");
        let rogue_ca = authority("someone else's CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let server = leaf(dir.path(), "server", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth, &ca);
        let client = leaf(dir.path(), "client", &["jetsched"], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let rogue = leaf(dir.path(), "rogue", &["jetsched"], ExtendedKeyUsagePurpose::ClientAuth, &rogue_ca);
        Pki { ca: ca_path, server_cert: server.cert, server_key: server.key, client, rogue, dir }
    }
}

/// One NATS user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// The `permissions` block (JSON), `None` for an unrestricted user.
    pub permissions: Option<serde_json::Value>,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl User {
    /// A user for `role` of the tenant `names` carrying exactly `jetsched
    /// permissions <role>` for `scope`.
    pub fn role(names: &Names, role: Role, scope: &Scope) -> User {
        let p = Permissions::of(role, names, scope).unwrap();
        User::with(&format!("{names}-{role}"), p)
    }

    /// A user named `name` with permissions `p`.
    pub fn with(name: &str, p: Permissions) -> User {
        let password = format!("pw-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        User { name: name.to_string(), password, permissions: Some(p.to_json()) }
    }
}

/// How the server treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS required, client certificates too, verified against the test CA.
    Mutual,
    /// TLS required; no client certificate asked for.
    ServerOnly,
}

/// A nats-server with TLS and the given users, killed on drop.
pub struct SecureServer {
    server: LocalServer,
    pub pki: Pki,
    pub log: PathBuf,
    pub tls: Tls,
    _dir: tempfile::TempDir,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl SecureServer {
    pub async fn start(users: &[User], tls: Tls) -> SecureServer {
        let pki = Pki::generate();
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                let mut e = serde_json::json!({"user": u.name, "password": u.password});
                if let Some(p) = &u.permissions {
                    e["permissions"] = p.clone();
                }
                e
            })
            .collect();
        let config = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {}\n  timeout: 5\n}}\n\
             authorization {{\n  users: {}\n}}\n",
            pki.server_cert,
            pki.server_key,
            pki.ca,
            tls == Tls::Mutual,
            serde_json::to_string_pretty(&entries).unwrap()
        );
        let config_path = dir.path().join("server.conf");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("server.log");
        let (store, log_file) = (dir.path().join("js"), log.clone());
        let server = tokio::task::spawn_blocking(move || {
            let binary =
                jetsched_natsbox::find_or_install(&workspace_root().join(".jetsched/bin"), Preference::PinnedOnly)
                    .expect("nats-server available");
            let options = ServerOptions {
                config: Some(config_path),
                log_file: Some(log_file),
                ..ServerOptions::new(binary, store)
            };
            LocalServer::start(options).expect("nats-server starts")
        })
        .await
        .unwrap();
        SecureServer { server, pki, log, tls, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Connection options for `user` under `prefix`, over TLS with the
    /// test CA (and the client certificate on a mutual-TLS server).
    pub fn args(&self, user: &User, names: &Names) -> NatsArgs {
        let client = (self.tls == Tls::Mutual).then(|| self.pki.client.clone());
        NatsArgs {
            url: Some(self.url()),
            user: Some(user.name.clone()),
            password: Some(user.password.clone()),
            tls_ca: Some(self.pki.ca.clone()),
            tls_cert: client.as_ref().map(|c| c.cert.clone()),
            tls_key: client.as_ref().map(|c| c.key.clone()),
            tls_required: true,
            prefix: names.prefix().to_string(),
            ..NatsArgs::default()
        }
    }

    /// Environment variables that make the `jetsched` binary connect as `user`.
    pub fn env(&self, user: &User, names: &Names) -> Vec<(String, String)> {
        let a = self.args(user, names);
        let mut env = vec![
            ("NATS_URL".to_string(), self.url()),
            ("NATS_USER".to_string(), user.name.clone()),
            ("NATS_PASSWORD".to_string(), user.password.clone()),
            ("NATS_CA".to_string(), self.pki.ca.display().to_string()),
            ("NATS_TLS_REQUIRED".to_string(), "true".to_string()),
            ("JETSCHED_PREFIX".to_string(), names.prefix().to_string()),
        ];
        if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
            env.push(("NATS_CERT".to_string(), cert.display().to_string()));
            env.push(("NATS_KEY".to_string(), key.display().to_string()));
        }
        env
    }

    /// Opens streams and buckets as `role` (creating them as the admin).
    pub async fn open(&self, user: &User, names: &Names, role: Role, scope: &Scope) -> Handles {
        let args = self.args(user, names);
        let name = format!("test-{role}");
        within(
            30,
            "connecting under a role",
            jetsched_runtime::service::open_as(&args, &Topology::default(), role, scope, &name, false),
        )
        .await
        .unwrap_or_else(|e| panic!("{role} cannot open: {e:#}"))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Permission violations the server logged.
    pub fn violations(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains("Violation")).map(str::to_string).collect()
    }
}

/// A connection as one user that reports what the server refuses.
pub struct Probe {
    pub client: Client,
    errors: mpsc::UnboundedReceiver<String>,
    sentinel: u64,
}

/// Nobody may publish here: the server's refusal marks the end of a probe.
const SENTINEL: &str = "_jetsched_probe_sentinel";

impl Probe {
    /// Connects as `user` with `role`'s inbox prefix under `names`.
    pub async fn connect(server: &SecureServer, user: &User, names: &Names, role: Role) -> Probe {
        let args = server.args(user, names);
        let (tx, errors) = mpsc::unbounded_channel();
        let mut opts = async_nats::ConnectOptions::with_user_and_password(user.name.clone(), user.password.clone())
            .add_root_certificates(server.pki.ca.clone())
            .require_tls(true)
            .custom_inbox_prefix(names.inbox_prefix(role.as_str()))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(err) = event {
                        let _ = tx.send(err.to_string());
                    }
                }
            });
        if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
            opts = opts.add_client_certificate(cert, key);
        }
        let client = opts.connect(server.url()).await.unwrap();
        Probe { client, errors, sentinel: 0 }
    }

    /// Runs `op`, then publishes to a subject nobody may use, and returns
    /// the refusals the server sent in between (the server answers in
    /// order, so a refusal of `op` comes before the sentinel's).
    async fn refusals(&mut self, op: impl std::future::Future<Output = ()>) -> Vec<String> {
        op.await;
        self.sentinel += 1;
        let sentinel = format!("{SENTINEL}.{}", self.sentinel);
        self.client.publish(sentinel.clone(), "".into()).await.unwrap();
        self.client.flush().await.unwrap();
        let mut seen = Vec::new();
        within(10, "the server's refusal of the sentinel", async {
            loop {
                let err = self.errors.recv().await.expect("connection events");
                if err.contains(&sentinel) {
                    return;
                }
                seen.push(err);
            }
        })
        .await;
        seen
    }

    /// Whether the server refuses a publish to `subject` (wildcards in it
    /// replaced by a token).
    pub async fn may_publish(&mut self, subject: &str) -> bool {
        let concrete = concrete(subject);
        let client = self.client.clone();
        let publish = concrete.clone();
        let refused = self.refusals(async move { client.publish(publish, "".into()).await.unwrap() }).await;
        !refused.iter().any(|e| e.contains(&format!("Publish to \"{concrete}\"")))
    }

    /// Whether the server refuses a subscription to `subject`.
    pub async fn may_subscribe(&mut self, subject: &str) -> bool {
        let client = self.client.clone();
        let filter = subject.to_string();
        let sub = std::sync::Arc::new(std::sync::Mutex::new(None));
        let keep = sub.clone();
        let refused = self
            .refusals(async move {
                let s = client.subscribe(filter).await.unwrap();
                *keep.lock().unwrap() = Some(s);
            })
            .await;
        !refused.iter().any(|e| e.contains(&format!("Subscription to \"{subject}\"")))
    }
}

/// A subject matching `pattern`: each `*` or `>` becomes one token.
pub fn concrete(pattern: &str) -> String {
    pattern.split('.').map(|t| if t == "*" || t == ">" { "probe" } else { t }).collect::<Vec<_>>().join(".")
}

/// Runs a ticker, a dispatcher and a worker (with `worker`'s settings), each
/// on the handles opened under its own role's user, until `token` fires
/// (started in-process as `jetsched up` starts them).
pub fn spawn_services(
    ticker: Handles,
    dispatcher: Handles,
    (worker, config): (Handles, crate::harness::WorkerConfig),
    token: &tokio_util::sync::CancellationToken,
) {
    let services = crate::harness::ServicesConfig { worker: Some(config), ..Default::default() };
    let handles = |role: &str| match role {
        "ticker" => ticker.clone(),
        "dispatcher" => dispatcher.clone(),
        _ => worker.clone(),
    };
    // Stopped by `token`; nothing waits on them.
    drop(services.spawn(handles, token));
}

//! NATS connection options every service and CLI verb accepts, named like the
//! `nats` CLI's environment variables so one environment serves both.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use jetsched_contract::{Names, Role};

/// The URL used when none is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How often a connection pings its server. A node cut off by a network
/// partition sends no reset: the connection looks open until the client has
/// missed three pongs, and only then reconnects to another node of the seed
/// list. The client's default (60 s) would leave a service stuck on a
/// cut-off node for three minutes, far past a ticker lease or a worker's
/// `ack_wait`; at 2 s it moves within about 6 s, for one small frame per
/// interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long = "nats-url", env = "NATS_URL", global = true)]
    pub url: Option<String>,
    /// Credentials file (JWT and NKey seed, as made by nsc).
    #[arg(long = "nats-creds", env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// User name.
    #[arg(long = "nats-user", env = "NATS_USER", global = true)]
    pub user: Option<String>,
    /// Password for --nats-user.
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding an NKey seed.
    #[arg(long = "nats-nkey", env = "NATS_NKEY", global = true)]
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with.
    #[arg(long = "tls-ca", env = "NATS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "tls-cert", env = "NATS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "tls-key", env = "NATS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long = "tls-required", env = "NATS_TLS_REQUIRED", global = true)]
    pub tls_required: bool,
    /// Name prefix for every subject, stream and bucket (multi-tenant setups).
    #[arg(long, env = "JETSCHED_PREFIX", default_value = jetsched_contract::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
    /// Subject prefix of this connection's reply inboxes [default:
    /// _INBOX_<prefix>_<role>, the one `jetsched permissions <role>` allows].
    #[arg(long = "inbox-prefix", env = "JETSCHED_INBOX_PREFIX", global = true)]
    pub inbox_prefix: Option<String>,
}

impl NatsArgs {
    /// The URL to connect to.
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }

    /// Names under the configured prefix.
    pub fn names(&self) -> anyhow::Result<Names> {
        Names::new(&self.prefix).context("invalid --prefix")
    }

    /// The reply inbox prefix of a connection playing `role`.
    pub fn inbox_prefix(&self, role: Role) -> anyhow::Result<String> {
        match &self.inbox_prefix {
            Some(prefix) => Ok(prefix.clone()),
            None => Ok(self.names()?.inbox_prefix(role.as_str())),
        }
    }

    async fn options(&self, role: Role, name: &str) -> anyhow::Result<ConnectOptions> {
        let mut opts = match &self.creds {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("cannot read credentials file {}", path.display()))?,
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey {
            let seed =
                std::fs::read_to_string(path).with_context(|| format!("cannot read nkey seed {}", path.display()))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let (Some(user), Some(pass)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => opts = opts.add_client_certificate(cert.clone(), key.clone()),
            (None, None) => {}
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
        if self.tls_required || self.tls_ca.is_some() {
            opts = opts.require_tls(true);
        }
        let away = Arc::new(AtomicBool::new(false));
        Ok(opts
            .custom_inbox_prefix(self.inbox_prefix(role)?)
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(PING_INTERVAL)
            .max_reconnects(None)
            .event_callback(move |event| {
                let away = away.clone();
                async move { log_event(event, &away) }
            }))
    }
}

/// Logs connection events. While the connection is down, the client's
/// failed reconnect attempts (one `ClientError` each) are debug lines: the
/// outage was logged when it started and is logged again when it ends.
fn log_event(event: Event, away: &AtomicBool) {
    match event {
        Event::Connected => {
            away.store(false, Ordering::Relaxed);
            tracing::info!("connected to NATS");
        }
        Event::Disconnected => {
            away.store(true, Ordering::Relaxed);
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "slow consumer: messages dropped"),
        Event::ServerError(err) => tracing::error!(%err, "NATS server error"),
        Event::ClientError(err) if away.load(Ordering::Relaxed) => {
            tracing::debug!(%err, "NATS reconnect attempt failed")
        }
        Event::ClientError(err) => tracing::error!(%err, "NATS client error"),
        Event::Draining | Event::Closed => tracing::debug!(%event, "NATS connection"),
    }
}

/// Connects as an admin (CLI verbs). Services pass `retry = true` and keep
/// trying until the server is up; CLI verbs pass `false` and fail at once
/// with a clear message.
pub async fn connect(args: &NatsArgs, name: &str, retry: bool) -> anyhow::Result<Client> {
    connect_as(args, Role::Admin, name, retry).await
}

/// Connects as `role`: its replies come to the role's inbox prefix.
pub async fn connect_as(args: &NatsArgs, role: Role, name: &str, retry: bool) -> anyhow::Result<Client> {
    let mut opts = args.options(role, name).await?;
    if retry {
        opts = opts.retry_on_initial_connect();
    }
    let url = args.url();
    let seeds = seed_list(url)?;
    opts.connect(seeds).await.with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Parses a comma-separated seed list (`nats://a:4222,nats://b:4222`), the
/// form `NATS_URL` takes for every NATS client. Blank entries are skipped;
/// a bad entry is named in the error.
pub fn seed_list(urls: &str) -> anyhow::Result<Vec<ServerAddr>> {
    let seeds: Vec<ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().with_context(|| format!("invalid NATS URL {u:?} in --nats-url/NATS_URL")))
        .collect::<anyhow::Result<_>>()?;
    if seeds.is_empty() {
        anyhow::bail!("--nats-url/NATS_URL names no server");
    }
    Ok(seeds)
}

/// A JetStream context whose publishes wait for room instead of failing when
/// many acks are outstanding.
pub fn jetstream(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(4096)
        .backpressure_on_inflight(true)
        .build(client)
}

#[cfg(test)]
mod tests {
    use super::seed_list;

    #[test]
    fn seed_list_takes_every_comma_separated_url() {
        let seeds = seed_list("nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://127.0.0.1:4224").unwrap();
        let ports: Vec<u16> = seeds.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(seed_list("nats://a:1,").unwrap().len(), 1);
    }

    #[test]
    fn seed_list_names_the_bad_entry() {
        let err = seed_list("nats://a:4222,nats://b:notaport").unwrap_err();
        assert!(format!("{err:#}").contains("nats://b:notaport"), "{err:#}");
        assert!(seed_list(" , ").is_err());
    }
}

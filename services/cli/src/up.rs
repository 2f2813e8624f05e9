//! `jetsched up`: everything on one machine. Without --nats-url/NATS_URL it
//! starts a local nats-server with JetStream (installing the pinned release
//! into the data folder if none is on PATH), creates every stream and bucket,
//! runs ticker, dispatcher and worker in this process, serves the web
//! console (its URL is among the first lines printed), and prints run events
//! as they happen until Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use jetsched_contract::{RunEvent, Topology};
use jetsched_dispatcher::DispatcherConfig;
use jetsched_natsbox::{LocalServer, Preference, ServerOptions};
use jetsched_runtime::{Health, NatsArgs};
use jetsched_ticker::TickerConfig;
use jetsched_worker::Builtins;
use jetsched_worker::WorkerConfig;
use opentelemetry_sdk::metrics::ManualReader;
use tokio_util::sync::CancellationToken;

use crate::admin::format_event;
use crate::console::ConsoleArgs;

/// `jetsched up` options.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Folder for the local nats-server's data, log and binary.
    #[arg(long, env = "JETSCHED_DATA_DIR", default_value = ".jetsched")]
    pub data_dir: PathBuf,
    /// Port of the local nats-server.
    #[arg(long, env = "JETSCHED_PORT", default_value_t = 4222)]
    pub port: u16,
    /// Address the local nats-server listens on.
    #[arg(long, env = "JETSCHED_LISTEN", default_value = "127.0.0.1")]
    pub listen: String,
    /// Load the example tasks and schedules from examples/ and answer their
    /// NATS functions, so runs succeed at once.
    #[arg(long)]
    pub examples: bool,
    /// Do not print run events.
    #[arg(long)]
    pub quiet: bool,
    /// Address of the web console; `off` disables it.
    #[arg(long = "console", env = "JETSCHED_CONSOLE_LISTEN", default_value = crate::console::DEFAULT_LISTEN)]
    pub console: String,
    /// Let the console take actions (pause, trigger, cancel, replay...) from
    /// operators logged in with --console-token.
    #[arg(long = "console-allow-actions", env = "JETSCHED_CONSOLE_ALLOW_ACTIONS", requires = "console_token")]
    pub console_allow_actions: bool,
    /// The token operators log in to the console with; pass it through the environment.
    #[arg(long = "console-token", env = "JETSCHED_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
    /// Address for /healthz, /readyz and /metrics of all services; `off` disables them.
    #[arg(long = "http-addr", env = "JETSCHED_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: String,
    #[command(flatten)]
    pub ticker: TickerConfig,
    #[command(flatten)]
    pub dispatcher: DispatcherConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
}

/// Runs everything until Ctrl-C.
pub async fn run(
    nats: &NatsArgs,
    topology: &Topology,
    mut args: UpArgs,
    metrics: Option<Arc<ManualReader>>,
) -> anyhow::Result<()> {
    let mut server = None;
    let nats = match &nats.url {
        Some(_) => nats.clone(),
        None => {
            let local = start_local_server(&args).await?;
            let url = local.url();
            eprintln!("jetsched: nats-server {url} started (data in {})", local.store_dir().display());
            server = Some(local);
            NatsArgs { url: Some(url), ..nats.clone() }
        }
    };
    let shutdown = jetsched_runtime::shutdown_on_signals();
    let health = Health::default();
    let http = jetsched_runtime::service::HttpArgs { http_addr: args.http_addr.clone() };
    jetsched_runtime::service::serve_http(&http, &health, metrics, &shutdown).await?;
    let handles = crate::open(&nats, topology, "jetsched-up", true).await?;
    health.watch_client(handles.js.client());
    let console = match args.console.eq_ignore_ascii_case("off") {
        true => None,
        false => {
            let console_args = ConsoleArgs {
                listen: args.console.clone(),
                allow_actions: args.console_allow_actions,
                token: args.console_token.clone(),
            };
            let console_handles = crate::open(&nats, topology, "jetsched-console", true).await?;
            let addr = crate::console::serve(console_handles.clone(), &console_args, shutdown.clone())
                .await
                .context("set --console to a free address, or `off`")?;
            let access = if args.console_allow_actions { "actions after /login" } else { "read-only" };
            eprintln!("jetsched: console at {} ({access})", crate::console::url(addr));
            Some(console_handles)
        }
    };
    let client = handles.js.client();
    // The example functions and the event printer outlive the shutdown
    // signal: a draining worker may still call a function (a run it holds
    // staged starts at its time) and announce its last transitions.
    let services_stopped = CancellationToken::new();
    if args.examples {
        crate::examples::load(&handles).await.context("cannot load the examples")?;
        args.worker.allow_exec.extend(crate::examples::ALLOW_EXEC.iter().map(|s| s.to_string()));
        let functions = crate::examples::serve_functions(client.clone(), services_stopped.clone());
        tokio::spawn(async move {
            if let Err(err) = functions.await {
                tracing::error!(%err, "example functions stopped");
            }
        });
        eprintln!("jetsched: loaded example tasks and schedules; runs appear below");
    }
    if !args.quiet {
        let events = client.subscribe(handles.names.event_filter()).await?;
        tokio::spawn(print_events(events, services_stopped.clone()));
    }
    // One connection per service, as when they run as separate processes.
    let ticker_handles = crate::open(&nats, topology, "jetsched-ticker", true).await?;
    let dispatcher_handles = crate::open(&nats, topology, "jetsched-dispatcher", true).await?;
    let worker_handles = crate::open(&nats, topology, "jetsched-worker", true).await?;
    eprintln!("jetsched: ticker, dispatcher and worker running; Ctrl-C stops");
    let services = crate::local::LocalServices {
        ticker: Some(args.ticker),
        dispatcher: Some(args.dispatcher),
        worker: Some(args.worker),
        builtins: Builtins::default(),
        health: health.clone(),
    };
    let handles_for = |role: &str| match role {
        "ticker" => ticker_handles.clone(),
        "dispatcher" => dispatcher_handles.clone(),
        _ => worker_handles.clone(),
    };
    let ended = services.spawn(handles_for, &shutdown).join().await;
    services_stopped.cancel();
    for h in [&ticker_handles, &dispatcher_handles, &worker_handles].into_iter().chain(console.as_ref()) {
        jetsched_runtime::service::close(&h.js.client()).await;
    }
    jetsched_runtime::service::close(&client).await;
    if let Some(mut server) = server {
        tokio::task::spawn_blocking(move || server.stop()).await?;
        eprintln!("jetsched: nats-server stopped");
    }
    ended
}

async fn start_local_server(args: &UpArgs) -> anyhow::Result<LocalServer> {
    let data = args.data_dir.clone();
    let (port, host) = (args.port, args.listen.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<LocalServer> {
        std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
        let binary = jetsched_natsbox::find_or_install(&data.join("bin"), Preference::PathFirst)?;
        let config = data.join("nats-server.conf");
        std::fs::write(&config, jetsched_natsbox::LOCAL_CONFIG).context("cannot write the nats-server configuration")?;
        let log = data.join("nats-server.log");
        let options = ServerOptions {
            port,
            host,
            config: Some(config),
            log_file: Some(log.clone()),
            // A server left running by a `jetsched up` that was killed is stopped first.
            pid_file: Some(data.join("nats-server.pid")),
            // Ctrl-C reaches jetsched alone: the server stops after the services drain.
            detached: true,
            ..ServerOptions::new(binary, data.join("nats"))
        };
        LocalServer::start(options).with_context(|| {
            format!(
                "see {}; if port {port} is taken by a running nats-server, use it with --nats-url nats://127.0.0.1:{port}, or pick another --port",
                log.display()
            )
        })
    })
    .await?
}

/// Prints each event until `stop`.
async fn print_events(mut events: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = events.next() => match msg {
                Some(msg) => match serde_json::from_slice::<RunEvent>(&msg.payload) {
                    Ok(event) => println!("{}", format_event(&event)),
                    Err(_) => println!("{}", String::from_utf8_lossy(&msg.payload)),
                },
                None => return,
            }
        }
    }
}

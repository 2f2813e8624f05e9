//! `jetsched console`: a web console on axum. Pages are rendered on the
//! server (maud templates, every value escaped), charts are SVG drawn by
//! plotters, and one small script (embedded, no build step) keeps pages live
//! with server-sent events fed from the run events (see [`feed`]).
//!
//! The console reads only through NATS, like every other part of jetsched
//! (KV gets and watches, stream reads, consumer info), and keeps nothing but
//! the last hour's statistics in memory: any number of consoles can run.
//! Actions (pause, trigger, backfill, cancel, retry, replay) are the CLI's
//! own functions, allowed only with `--allow-actions` and a token (see
//! [`auth`]).

mod actions;
mod auth;
mod charts;
mod dlq;
mod feed;
mod live;
mod overview;
mod runs;
mod schedules;
mod stats;
mod view;
mod workflows;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jetsched_contract::Handles;
use jetsched_contract::permissions::Role;
use jetsched_runtime::{Backoff, Health, NatsArgs, RunStore};
use maud::{Markup, html};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use self::auth::{Auth, Session};
use self::stats::Stats;
use self::view::{Page, Section};

/// Where the console listens unless told otherwise: loopback, on a port
/// that is none of NATS's (4222 clients, 6222 routes, 8222 monitoring).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// Live events buffered per listener; a listener further behind skips ahead
/// (its page shows a note and reloads).
const LIVE_BUFFER: usize = 4_096;

/// Longest a page (not the live stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `jetsched console` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Address to serve the console on. Loopback by default; to let others
    /// in, put a TLS proxy in front rather than listening on 0.0.0.0.
    #[arg(long, env = "JETSCHED_CONSOLE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Take actions (pause/resume/trigger/backfill schedules, cancel/retry
    /// runs, replay dead letters) from operators logged in with --token.
    /// Without it the console is read-only.
    #[arg(long, env = "JETSCHED_CONSOLE_ALLOW_ACTIONS", requires = "token")]
    pub allow_actions: bool,
    /// The token operators log in with (/login) and scripts send as
    /// `Authorization: Bearer <token>`; pass it through the environment.
    #[arg(long, env = "JETSCHED_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Default for ConsoleArgs {
    fn default() -> Self {
        ConsoleArgs { listen: DEFAULT_LISTEN.to_string(), allow_actions: false, token: None }
    }
}

/// What every handler shares.
#[derive(Clone)]
struct Console(Arc<Inner>);

struct Inner {
    handles: Handles,
    /// Run records: read through the run store, like the CLI's.
    runs: RunStore,
    stats: Arc<Mutex<Stats>>,
    live: broadcast::Sender<Arc<feed::Live>>,
    auth: Auth,
    /// Stops the live streams when the console shuts down.
    shutdown: CancellationToken,
    /// `/readyz`: connected to NATS (the services' readiness check).
    health: Health,
}

impl Console {
    fn h(&self) -> &Handles {
        &self.0.handles
    }

    fn runs(&self) -> &RunStore {
        &self.0.runs
    }

    /// A run's status as pages show it (see [`Stats::current`]).
    fn current(&self, run_id: &str, status: jetsched_contract::RunStatus) -> jetsched_contract::RunStatus {
        self.0.stats.lock().map_or(status, |s| s.current(run_id, status))
    }

    fn session(&self, headers: &HeaderMap) -> Session {
        self.0.auth.session(headers)
    }
}

/// `jetsched console`: connects, serves until Ctrl-C.
pub async fn run(nats: &NatsArgs, args: ConsoleArgs) -> anyhow::Result<()> {
    let shutdown = jetsched_runtime::shutdown_on_signals();
    // Replies come to the console role's inbox (`jetsched permissions console`).
    let client = jetsched_runtime::connect_as(nats, Role::Console, "jetsched-console", true).await?;
    let handles = tokio::select! {
        h = open(jetsched_runtime::jetstream(client), nats.names()?) => h,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let addr = serve(handles.clone(), &args, shutdown.clone()).await?;
    eprintln!("jetsched: console at {} (Ctrl-C stops)", url(addr));
    shutdown.cancelled().await;
    let _ = handles.js.client().drain().await;
    Ok(())
}

/// Opens the buckets and streams without creating any (the console only
/// reads), waiting with backoff until they exist.
async fn open(js: async_nats::jetstream::Context, names: jetsched_contract::Names) -> Handles {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut logged = false;
    loop {
        match Handles::open(js.clone(), names.clone()).await {
            Ok(h) => return h,
            Err(err) => {
                if !logged {
                    tracing::warn!(%err, "jetsched's buckets are not there yet (run `jetsched init`); waiting");
                    logged = true;
                }
                backoff.wait().await;
            }
        }
    }
}

/// The console's URL for a bound address.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// Binds `args.listen`, starts the readers and serves until `shutdown`;
/// returns the bound address.
pub async fn serve(handles: Handles, args: &ConsoleArgs, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr =
        args.listen.parse().with_context(|| format!("--listen {:?} is not host:port", args.listen))?;
    let token = match (args.allow_actions, &args.token) {
        (true, Some(t)) if t.len() >= 8 => Some(t.clone()),
        (true, _) => anyhow::bail!("--allow-actions needs a --token of at least 8 characters"),
        (false, _) => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve the console on {addr}: pick another address with --listen (JETSCHED_CONSOLE_LISTEN)")
    })?;
    let bound = listener.local_addr()?;
    let runs = RunStore::open(jetsched_runtime::Publisher::new(handles.js.clone(), handles.names.clone())).await?;
    let stats = Arc::new(Mutex::new(Stats::starting(jiff::Timestamp::now())));
    let (live, _) = broadcast::channel(LIVE_BUFFER);
    tokio::spawn(feed::follow(handles.clone(), runs.clone(), stats.clone(), live.clone(), shutdown.clone()));
    tokio::spawn(feed::sample(handles.clone(), stats.clone(), shutdown.clone()));
    let health = Health::default();
    health.watch_client(handles.js.client());
    // The buckets and streams are open: from here on it serves.
    health.component("console").set(true);
    let auth = Auth::new(token);
    let console = Console(Arc::new(Inner { handles, runs, stats, live, auth, shutdown: shutdown.clone(), health }));
    let app = router(console);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
            tracing::error!(%err, "console server stopped");
        }
    });
    tracing::info!(%bound, "serving the console");
    Ok(bound)
}

fn router(console: Console) -> Router {
    let pages = Router::new()
        .route("/", get(overview::page))
        .route("/workers", get(overview::workers))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{id}", get(schedules::one))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::one))
        .route("/workflows", get(workflows::list))
        .route("/dlq", get(dlq::list))
        .route("/dlq/{seq}", get(dlq::one))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/actions/{kind}/{id}/{verb}", post(actions::verb))
        .route("/actions/dlq/replay", post(actions::replay))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::from_fn(bounded));
    Router::new()
        .route("/live", get(live::stream))
        .route("/live/logs", get(live::logs))
        .merge(pages)
        .with_state(console)
}

/// Answers 503 to a page that takes longer than [`REQUEST_TIMEOUT`] (NATS
/// not answering); the live stream is not bounded.
async fn bounded(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "NATS did not answer in time; try again\n").into_response(),
    }
}

/// Liveness, for container probes: the process serves.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness, for container probes: connected to NATS.
async fn readyz(State(c): State<Console>) -> (StatusCode, String) {
    c.0.health.answer()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/console.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// A page's answer: the whole page (with what an action did, `?done=`), or
/// only its live part (`?part=1`, what the script fetches to refresh it).
fn respond<'a>(page: Page<'a>, body: Markup, params: &'a Params) -> Response {
    respond_with(page, body, html! {}, params)
}

/// [`respond`], with `after` below the live part (kept as it is when the
/// part is refreshed).
fn respond_with<'a>(mut page: Page<'a>, body: Markup, after: Markup, params: &'a Params) -> Response {
    let live = html! { div #live-part { (body) } };
    page.notice = params.get("done");
    let markup = if params.get("part").is_some() { live } else { page.render(html! { (live) (after) }) };
    ([(header::CACHE_CONTROL, "no-store")], markup).into_response()
}

/// A failure to read NATS, shown as a page.
fn failure(session: &Session, err: anyhow::Error) -> Response {
    let status = if err.downcast_ref::<crate::admin::BadInput>().is_some() {
        StatusCode::NOT_FOUND
    } else {
        tracing::warn!(err = %format!("{err:#}"), "console page failed");
        StatusCode::BAD_GATEWAY
    };
    let page = Page::new("Error", Section::Overview, session);
    (status, page.render(html! { h1 { "Cannot show this" } p.err { (format!("{err:#}")) } })).into_response()
}

async fn login_form(State(c): State<Console>, headers: HeaderMap) -> Response {
    let session = c.session(&headers);
    let page = Page::new("Log in", Section::Overview, &session);
    let body = html! {
        h1 { "Log in" }
        @if !session.actions_allowed {
            p { "This console is read-only: it was started without --allow-actions." }
        } @else {
            form method="post" action="/login" {
                label { "Console token " input type="password" name="token" autocomplete="current-password"; }
                " " button type="submit" { "Log in" }
            }
        }
    };
    page.render(body).into_response()
}

async fn login(State(c): State<Console>, body: axum::body::Bytes) -> Response {
    let params = Params::parse(&body);
    match c.0.auth.login(params.get("token").unwrap_or_default()) {
        Ok(Some(id)) => ([(header::SET_COOKIE, auth::set_cookie(&id))], Redirect::to("/")).into_response(),
        Ok(None) => (StatusCode::FORBIDDEN, "wrong token (or the console is read-only)\n").into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n")).into_response(),
    }
}

async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    c.0.auth.logout(&headers);
    ([(header::SET_COOKIE, auth::clear_cookie())], Redirect::to("/")).into_response()
}

/// What every page handler needs from a request: who asks, and the query.
struct Req {
    session: Session,
    params: Params,
}

impl axum::extract::FromRequestParts<Console> for Req {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, c: &Console) -> Result<Req, Self::Rejection> {
        Ok(Req { session: c.session(&parts.headers), params: Params::query(parts.uri.query()) })
    }
}

/// Form or query parameters (`application/x-www-form-urlencoded`), names
/// repeated for lists.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(bytes: &[u8]) -> Params {
        Params(form_urlencoded::parse(bytes).into_owned().collect())
    }

    fn query(query: Option<&str>) -> Params {
        Params::parse(query.unwrap_or_default().as_bytes())
    }

    /// The first non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

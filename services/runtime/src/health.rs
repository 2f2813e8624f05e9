//! `/healthz`, `/readyz` and `/metrics` on one small HTTP port per process,
//! for Kubernetes probes and Prometheus. `/healthz` answers while the process
//! runs; `/readyz` only while NATS is connected and every registered
//! component says it is consuming.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry_sdk::metrics::ManualReader;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    client: Mutex<Option<async_nats::Client>>,
    components: Mutex<Vec<(String, Readiness)>>,
}

/// One component's "I am consuming" flag.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Reads the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Health {
    /// Readiness also requires `client` to be connected.
    pub fn watch_client(&self, client: async_nats::Client) {
        if let Ok(mut c) = self.inner.client.lock() {
            *c = Some(client);
        }
    }

    /// Registers a component, not ready until it says so.
    pub fn component(&self, name: &str) -> Readiness {
        let r = Readiness::default();
        if let Ok(mut c) = self.inner.components.lock() {
            c.push((name.to_string(), r.clone()));
        }
        r
    }

    /// Whether the process is ready, and why not.
    pub fn check(&self) -> (bool, String) {
        let mut problems = Vec::new();
        if let Ok(c) = self.inner.client.lock()
            && let Some(client) = c.as_ref()
            && client.connection_state() != State::Connected
        {
            problems.push("NATS disconnected".to_string());
        }
        if let Ok(cs) = self.inner.components.lock() {
            // Served before the service is connected and registered: not ready yet.
            if cs.is_empty() {
                problems.push("starting".to_string());
            }
            problems.extend(cs.iter().filter(|(_, r)| !r.get()).map(|(n, _)| format!("{n} not consuming")));
        }
        if problems.is_empty() {
            (true, "ready\n".to_string())
        } else {
            (false, format!("not ready: {}\n", problems.join("; ")))
        }
    }

    /// The `/readyz` answer: 200 when ready, 503 saying why not.
    pub fn answer(&self) -> (StatusCode, String) {
        match self.check() {
            (true, body) => (StatusCode::OK, body),
            (false, body) => (StatusCode::SERVICE_UNAVAILABLE, body),
        }
    }
}

/// Serves the endpoints on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: Option<Arc<ManualReader>>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(health, metrics);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(err) = served {
            tracing::warn!(%err, "health and metrics server stopped");
        }
    });
    Ok(local)
}

/// The three endpoints; anything else is a 404 naming them, any other
/// method a 405.
fn router(health: Health, metrics: Option<Arc<ManualReader>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { health.answer() }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics {
                        Some(reader) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, crate::metrics::PROMETHEUS_CONTENT_TYPE)],
                            crate::metrics::render_prometheus(&reader),
                        )
                            .into_response(),
                        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n") })
        .layer(axum::middleware::from_fn(bounded))
}

/// Answers 408 to a request that takes longer than [`REQUEST_TIMEOUT`].
async fn bounded(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// Longest time a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_a_component_registers_and_says_so() {
        let health = Health::default();
        assert!(!health.check().0, "nothing registered yet: still starting");
        let ticker = health.component("ticker");
        assert!(!health.check().0);
        ticker.set(true);
        assert_eq!(health.check(), (true, "ready\n".to_string()));
    }
}

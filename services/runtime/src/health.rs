//! `/healthz`, `/readyz` and `/metrics` on one small HTTP port per process,
//! for Kubernetes probes and Prometheus. `/healthz` answers while the process
//! runs; `/readyz` only while NATS is connected and every registered
//! component says it is consuming.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use opentelemetry_sdk::metrics::ManualReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
}

/// Serves the endpoints on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: Option<Arc<ManualReader>>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), respond(stream, &health, metrics.as_deref())).await;
            });
        }
    });
    Ok(local)
}

async fn respond(mut stream: TcpStream, health: &Health, metrics: Option<&ManualReader>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match health.check() {
            (true, body) => ("200 OK", "text/plain", body),
            (false, body) => ("503 Service Unavailable", "text/plain", body),
        },
        ("GET", "/metrics") => match metrics {
            Some(reader) => ("200 OK", "text/plain; version=0.0.4", crate::metrics::render_prometheus(reader)),
            None => ("404 Not Found", "text/plain", "metrics are not enabled\n".to_string()),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

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

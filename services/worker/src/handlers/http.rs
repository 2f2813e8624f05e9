//! HTTP webhook handlers: the payload is the JSON body (POST by default).
//! 2xx is success; 429 and 5xx are retryable, honouring `Retry-After`; any
//! other status is a permanent failure. Redirects are not followed (a POST
//! silently turned into a GET would be worse than an error, and a redirect
//! could lead where the worker may not go). Which hosts may be reached is
//! the worker's [`Reach`]; a response body larger than the worker's
//! `--max-output` fails the attempt rather than being cut.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jetsched_contract::headers;
use reqwest::StatusCode;

use super::reach::{Guarded, Reach};
use super::{Invocation, Outcome};

/// Bytes of the response body shown in the run event.
const KEEP: usize = 4096;

/// The worker's HTTP client: its reach rules and output bound.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    reach: Arc<Reach>,
    max_output: usize,
}

impl Http {
    /// A client that connects only where `reach` allows and reads at most
    /// `max_output` bytes of a response.
    pub fn new(reach: Reach, max_output: usize) -> Result<Http, String> {
        jetsched_runtime::telemetry::install_crypto_provider();
        let reach = Arc::new(reach);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would be resolved and checked instead of the target.
            .no_proxy()
            .dns_resolver(Arc::new(Guarded(reach.clone())))
            .user_agent(concat!("jetsched-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Http { client, reach, max_output })
    }
}

/// Whether `err` (or what caused it) is the reach rules refusing a host.
fn refused_by_reach(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if text.contains("--deny-http") || text.contains("--allow-http") {
            return Some(text);
        }
        next = e.source();
    }
    None
}

/// Calls `url` with the run's payload.
pub async fn call(http: &Http, url: &str, method: &str, extra: &BTreeMap<String, String>, inv: &Invocation) -> Outcome {
    let client = &http.client;
    // Checked first for a clear, permanent refusal; the client's resolver
    // checks again what it connects to.
    let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string));
    let Some(host) = host else {
        return Outcome::permanent(format!("invalid URL {url:?}: no host"));
    };
    if let Err(why) = http.reach.resolve(&host).await {
        let retryable = why.starts_with("cannot resolve");
        let error = format!("refused to call {url}: {why}");
        return Outcome::Failure { error, retryable, retry_after: None, output: None };
    }
    let method = match reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return Outcome::permanent(format!("invalid HTTP method {method:?}")),
    };
    let mut req = client
        .request(method, url)
        .timeout(inv.timeout)
        .header("content-type", "application/json")
        .header(headers::RUN_ID, &inv.run_id)
        .header(headers::ATTEMPT, inv.attempt.to_string())
        .header(headers::DEADLINE, inv.deadline.to_string())
        .header(headers::TASK, &inv.task)
        // Idempotency-Key is the common convention for webhooks.
        .header("idempotency-key", &inv.run_id)
        .body(serde_json::to_vec(&inv.payload).unwrap_or_default());
    if let Some(shard) = inv.shard {
        req = req
            .header(headers::SHARD_INDEX, shard.index.to_string())
            .header(headers::SHARD_TOTAL, shard.total.to_string());
    }
    for (k, v) in jetsched_runtime::trace::current_pairs() {
        req = req.header(k, v);
    }
    for (k, v) in extra {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut response = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::retry(format!("{url} did not answer within {:?}", inv.timeout)),
        Err(e) if e.is_builder() => return Outcome::permanent(format!("invalid request to {url}: {e}")),
        Err(e) => match refused_by_reach(&e) {
            Some(why) => return Outcome::permanent(format!("refused to call {url}: {why}")),
            None => return Outcome::retry(format!("request to {url} failed: {e}")),
        },
    };
    let status = response.status();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > http.max_output => {
                return Outcome::permanent(format!(
                    "the response of {url} is larger than the worker's --max-output ({} bytes); refused, not cut",
                    http.max_output
                ));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) if e.is_timeout() => {
                return Outcome::retry(format!("{url} did not finish its answer within {:?}", inv.timeout));
            }
            Err(e) => return Outcome::retry(format!("reading the answer of {url} failed: {e}")),
        }
    }
    let body = body.freeze();
    let shown = (!body.is_empty()).then(|| super::shown(&body, KEEP));
    classify(status, retry_after, body, shown, url)
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
    shown: Option<String>,
    url: &str,
) -> Outcome {
    if status.is_success() {
        return Outcome::Success { result: body, output: shown };
    }
    let error = format!("{url} answered {status}");
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    Outcome::Failure { error, retryable, retry_after: if retryable { retry_after } else { None }, output: shown }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = when.duration_since(jiff::Timestamp::now());
    Some(if wait.is_positive() { wait.unsigned_abs() } else { Duration::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, retry_after: Option<Duration>) -> Outcome {
        classify(StatusCode::from_u16(status).unwrap(), retry_after, bytes::Bytes::new(), None, "http://x")
    }

    #[test]
    fn status_codes_map_to_outcomes() {
        assert!(matches!(outcome(200, None), Outcome::Success { .. }));
        assert!(matches!(outcome(204, None), Outcome::Success { .. }));
        assert!(matches!(outcome(503, None), Outcome::Failure { retryable: true, .. }));
        assert!(matches!(outcome(500, None), Outcome::Failure { retryable: true, .. }));
        assert!(matches!(outcome(429, None), Outcome::Failure { retryable: true, .. }));
        assert!(matches!(outcome(400, None), Outcome::Failure { retryable: false, .. }));
        assert!(matches!(outcome(404, None), Outcome::Failure { retryable: false, .. }));
        assert!(matches!(outcome(301, None), Outcome::Failure { retryable: false, .. }));
        let d = Some(Duration::from_secs(3));
        assert!(
            matches!(outcome(503, d), Outcome::Failure { retry_after: Some(x), .. } if x == Duration::from_secs(3))
        );
        assert!(matches!(outcome(400, d), Outcome::Failure { retry_after: None, .. }));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}

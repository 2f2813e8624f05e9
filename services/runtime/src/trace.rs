//! W3C trace context in NATS headers: injected on every publish and request,
//! extracted on every consume, so one run is one trace across ticker,
//! dispatcher, worker and the user's handler.
//!
//! While spans are exported, the context is OpenTelemetry's (the
//! `tracing-opentelemetry` layer). While they are not (no exporter, or
//! tracing switched off), jetsched records no span and the task that handles
//! a message carries the context that message came with ([`Carried`]):
//! what is injected is what came in, so a handler's spans are children of
//! the submitter's. docs/DESIGN.md says why this is not done with spans.

use std::future::Future;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| AsRef::<str>::as_ref(k)).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`)
/// into `headers`; nothing when the span is not being traced.
pub fn inject(headers: &mut HeaderMap) {
    inject_for(&tracing::Span::current(), headers);
}

/// Writes `span`'s trace context into `headers`; nothing when the span is
/// not being traced.
///
/// Every publish of a run carries it, so it is written here directly in
/// the W3C format (what `TraceContextPropagator` writes, checked by a test)
/// rather than through the global propagator: its lock and `format!` were
/// a twentieth of a worker's CPU. `tracestate` is left out when empty.
pub fn inject_for(span: &tracing::Span, headers: &mut HeaderMap) {
    let Some(sc) = context_of(span) else { return };
    headers.insert(jetsched_contract::headers::TRACEPARENT, traceparent(&sc).as_str());
    let state = sc.trace_state().header();
    if !state.is_empty() {
        headers.insert(jetsched_contract::headers::TRACESTATE, state.as_str());
    }
}

/// `00-<trace id>-<span id>-<flags>`, lowercase hex.
fn traceparent(sc: &opentelemetry::trace::SpanContext) -> String {
    fn hex(out: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0x0f)] as char);
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    hex(&mut out, &sc.span_id().to_bytes());
    out.push_str(if sc.is_sampled() { "-01" } else { "-00" });
    out
}

/// The current span's trace context as header pairs (for HTTP requests).
pub fn current_pairs() -> Vec<(String, String)> {
    let mut map = HeaderMap::new();
    inject(&mut map);
    map.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string()))).collect()
}

/// The context in `headers`, parsed and validated by the library; `None`
/// without a `traceparent` (an invalid one is ignored by the library).
fn extract(headers: Option<&HeaderMap>) -> Option<opentelemetry::Context> {
    let headers = headers?;
    headers.get(jetsched_contract::headers::TRACEPARENT)?;
    Some(opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// The trace id of the current span, when traced (for log correlation).
pub fn current_trace_id() -> Option<String> {
    context_of(&tracing::Span::current()).map(|sc| sc.trace_id().to_string())
}

/// `span`'s trace context while spans are recorded; otherwise the one the
/// current task carries. `None` when there is none.
fn context_of(span: &tracing::Span) -> Option<SpanContext> {
    if crate::telemetry::tracing_recorded() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return Some(sc);
        }
    }
    CARRIED.try_with(|c| c.clone()).ok()
}

tokio::task_local! {
    static CARRIED: SpanContext;
}

/// The trace context a message's handling carries: the message's own, or
/// a new trace (unsampled, as OpenTelemetry's parent-based sampler makes a
/// root that nobody records).
pub struct Carried {
    /// What [`inject`] writes while no span is recorded.
    context: SpanContext,
    /// The message's context as parsed, for its span to continue while
    /// spans are recorded.
    incoming: Option<opentelemetry::Context>,
}

impl Carried {
    /// The context `headers` came with, or a new trace.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Carried {
        let incoming = extract(headers);
        let context = incoming.as_ref().map(|cx| cx.span().span_context().clone()).filter(SpanContext::is_valid);
        Carried { context: context.unwrap_or_else(new_trace), incoming }
    }

    /// A new trace.
    pub fn new_trace() -> Carried {
        Carried { context: new_trace(), incoming: None }
    }

    /// Runs `fut` in `span`, which continues this context while spans are
    /// recorded; otherwise the task carries it, and every publish in `fut`
    /// injects it.
    pub fn run_in<F: Future>(self, span: tracing::Span, fut: F) -> impl Future<Output = F::Output> {
        if let Some(cx) = self.incoming.filter(|_| crate::telemetry::tracing_recorded()) {
            let _ = span.set_parent(cx);
        }
        CARRIED.scope(self.context, fut.instrument(span))
    }
}

fn new_trace() -> SpanContext {
    let (trace, span) = (fastrand::u128(1..), fastrand::u64(1..));
    SpanContext::new(TraceId::from(trace), SpanId::from(span), TraceFlags::default(), false, TraceState::NONE)
}

#[cfg(test)]
mod tests {
    use super::Carried;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn traceparent(h: &async_nats::HeaderMap) -> Option<String> {
        h.get(jetsched_contract::headers::TRACEPARENT).map(|v| v.to_string())
    }

    fn injected() -> async_nats::HeaderMap {
        let mut out = async_nats::HeaderMap::new();
        super::inject(&mut out);
        out
    }

    /// Without recorded spans, a handler's `traceparent` is the one the
    /// run came with (its spans are children of the submitter's); a run
    /// that came without one, or with an invalid one, gets a new trace.
    #[tokio::test]
    async fn context_is_carried_by_the_task_without_recorded_spans() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(jetsched_contract::headers::TRACEPARENT, incoming);
        headers.insert(jetsched_contract::headers::TRACESTATE, "vendor=x");
        let (out, id) = Carried::from_headers(Some(&headers))
            .run_in(tracing::Span::none(), async {
                tokio::task::yield_now().await;
                (injected(), super::current_trace_id())
            })
            .await;
        assert_eq!(traceparent(&out).as_deref(), Some(incoming));
        assert_eq!(out.get(jetsched_contract::headers::TRACESTATE).map(|v| v.as_str()), Some("vendor=x"));
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));

        let mut bad = async_nats::HeaderMap::new();
        bad.insert(jetsched_contract::headers::TRACEPARENT, "00-zz-00f067aa0ba902b7-01");
        let a = Carried::from_headers(None)
            .run_in(tracing::Span::none(), async { traceparent(&injected()).unwrap() })
            .await;
        let b = Carried::from_headers(Some(&bad))
            .run_in(tracing::Span::none(), async { traceparent(&injected()).unwrap() })
            .await;
        assert!(a.starts_with("00-") && a.ends_with("-00") && a.len() == 55, "{a}");
        assert_ne!(a[3..35], b[3..35], "two new traces");
        assert_ne!(&b[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(traceparent(&injected()), None, "outside a carried task, nothing");
    }

    proptest! {
        /// What `inject_for` writes is what OpenTelemetry's own propagator writes.
        #[test]
        fn traceparent_is_the_propagators(trace in 1u128.., span in 1u64.., sampled: bool, remote: bool) {
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let sc = SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, TraceState::default());
            let mut theirs = HashMap::new();
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut theirs);
            prop_assert_eq!(Some(&super::traceparent(&sc)), theirs.get(jetsched_contract::headers::TRACEPARENT));
        }
    }
}

//! W3C trace context in NATS headers: injected on every publish and request,
//! extracted on every consume, so one run is one trace across ticker,
//! dispatcher, worker and the user's handler.

use async_nats::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
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
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return;
    }
    headers.insert(jetsched_contract::headers::TRACEPARENT, traceparent(sc).as_str());
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

/// Makes `span` a child of the trace carried by `headers`, if any.
pub fn follow(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    if headers.get(jetsched_contract::headers::TRACEPARENT).is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

/// The trace id of the current span, when traced (for log correlation).
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    use proptest::prelude::*;
    use std::collections::HashMap;

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

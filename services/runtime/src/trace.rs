//! W3C trace context in NATS headers: injected on every publish and request,
//! extracted on every consume, so one run is one trace across ticker,
//! dispatcher, worker and the user's handler.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

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
pub fn inject_for(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
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

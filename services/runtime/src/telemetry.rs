//! Logs, traces and metrics for a service process.
//!
//! - Logs: `tracing` to stderr, human-readable or JSON.
//! - Traces: a `tracing-opentelemetry` layer turns spans into OpenTelemetry
//!   spans. They are exported over OTLP/HTTP when the standard variables ask
//!   for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, ...); with
//!   none set, no exporter runs and no span is recorded, but spans still
//!   carry W3C trace context (the incoming one, or a new trace), so that it
//!   always rides in NATS headers, HTTP headers and `TRACEPARENT` (see
//!   [`crate::trace`]) and a user's own tracing can join.
//! - Metrics: OpenTelemetry instruments ([`crate::metrics`]), read on demand
//!   for the Prometheus endpoint and, when OTLP is configured, pushed too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::logging::{LogArgs, LogFormat};
use crate::metrics::SharedReader;

/// Whether spans are handed to OpenTelemetry (the loadtest flips it to
/// compare throughput with tracing on and off in one run).
static TRACING_ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether a span exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns trace recording (and so trace-context propagation) on or off.
pub fn set_tracing_enabled(on: bool) {
    TRACING_ENABLED.store(on, Ordering::Relaxed);
}

/// True when spans are recorded and exported (without an exporter spans
/// still carry trace context, but opening one only to propagate it can wait).
pub fn tracing_recorded() -> bool {
    EXPORTING.load(Ordering::Relaxed) && TRACING_ENABLED.load(Ordering::Relaxed)
}

/// What `init` set up; shut it down to flush exporters.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
    reader: Arc<ManualReader>,
}

impl Telemetry {
    /// The reader behind the Prometheus endpoint.
    pub fn prometheus(&self) -> Arc<ManualReader> {
        self.reader.clone()
    }

    /// True when spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Hands every finished span to the exporter now.
    pub fn flush(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
        }
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            let _ = tracer.force_flush();
            let _ = tracer.shutdown();
        }
        let _ = self.meter.shutdown();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn resource(default_service: &str) -> Resource {
    let name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
    Resource::builder().with_service_name(name).build()
}

/// Sets up logging, tracing and metrics for `service` (e.g. `jetsched-ticker`),
/// exporting over OTLP when the standard environment variables ask for it.
pub fn init(log: &LogArgs, service: &str) -> Telemetry {
    install_crypto_provider();
    let otlp = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let traces = (otlp || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
        && env("OTEL_TRACES_EXPORTER").is_none_or(|v| v != "none");
    let metrics = (otlp || env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some())
        && env("OTEL_METRICS_EXPORTER").is_none_or(|v| v != "none");
    // Logging is not up yet: keep problems and report them once it is.
    let mut problems = Vec::new();
    let exporter = if traces {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| problems.push(format!("OTLP trace export disabled: {e}")))
            .ok()
    } else {
        None
    };
    let tracer =
        exporter.map(|e| SdkTracerProvider::builder().with_resource(resource(service)).with_batch_exporter(e).build());
    let metric_exporter = if metrics {
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| problems.push(format!("OTLP metric export disabled: {e}")))
            .ok()
    } else {
        None
    };
    let telemetry = install(log, service, tracer, metric_exporter);
    for problem in problems {
        tracing::error!("{problem}");
    }
    if telemetry.exports_traces() {
        tracing::info!("exporting traces over OTLP");
    }
    telemetry
}

/// Like [`init`], but traces always go over OTLP/HTTP to `endpoint`
/// (the loadtest's in-process collector).
pub fn init_exporting_to(log: &LogArgs, service: &str, endpoint: &str) -> anyhow::Result<Telemetry> {
    use opentelemetry_otlp::WithExportConfig as _;
    install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(endpoint).build()?;
    let tracer = SdkTracerProvider::builder().with_resource(resource(service)).with_batch_exporter(exporter).build();
    Ok(install(log, service, Some(tracer), None))
}

/// Like [`init`], but spans go to `exporter` as each one ends (tests).
pub fn init_with_exporter(log: &LogArgs, service: &str, exporter: impl SpanExporter + 'static) -> Telemetry {
    let tracer = SdkTracerProvider::builder().with_resource(resource(service)).with_simple_exporter(exporter).build();
    install(log, service, Some(tracer), None)
}

/// One TLS crypto provider for the whole process (HTTP clients need it).
pub fn install_crypto_provider() {
    // An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn install(
    log: &LogArgs,
    service: &str,
    tracer: Option<SdkTracerProvider>,
    metric_exporter: Option<opentelemetry_otlp::MetricExporter>,
) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let reader = Arc::new(ManualReader::builder().build());
    let mut meter =
        SdkMeterProvider::builder().with_resource(resource(service)).with_reader(SharedReader(reader.clone()));
    if let Some(e) = metric_exporter {
        meter = meter.with_periodic_exporter(e);
    }
    let meter = meter.build();
    opentelemetry::global::set_meter_provider(meter.clone());

    let filter = EnvFilter::try_new(&log.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match log.log_format {
        LogFormat::Human => {
            Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_target(false))
        }
        LogFormat::Json => {
            Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).json().flatten_event(true))
        }
    };
    EXPORTING.store(tracer.is_some(), Ordering::Relaxed);
    let otel = tracer.as_ref().map(|t| {
        // Spans are recorded for OpenTelemetry regardless of the log level,
        // but only jetsched's own (and only while tracing is enabled).
        // Trace context travels in headers (`trace::inject_for`, `Carried::run_in`),
        // so no OpenTelemetry context is attached on every poll of a span,
        // and busy/idle times are not kept: both cost time on every enter
        // and exit.
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer("jetsched"))
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_filter(dynamic_filter_fn(|meta, _| {
                TRACING_ENABLED.load(Ordering::Relaxed) && meta.is_span() && meta.target().starts_with("jetsched")
            }))
    });
    // While no span is recorded, trace context is still made (or taken from
    // an incoming `traceparent`) and passed on by the task handling a
    // message (`trace::Carried`), with no span needed.
    let result = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init();
    // Already installed (several services in one test process): keep the first.
    let _ = result;
    Telemetry { tracer, meter, reader }
}

//! jetsched's metrics, recorded through OpenTelemetry and rendered in the
//! Prometheus text format on demand (`/metrics`). docs/OBSERVABILITY.md lists
//! them all.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Bucket bounds, in seconds, for latencies from a millisecond to minutes.
const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Every instrument jetsched records.
pub struct Metrics {
    /// Ticker: nominal fire time -> due event acknowledged by the stream.
    pub fire_lateness: Histogram<f64>,
    /// Ticker: schedules loaded.
    pub schedules_loaded: Gauge<u64>,
    /// Dispatcher: inbox message stored -> work item stored.
    pub dispatch_latency: Histogram<f64>,
    /// Worker: handler run time, by task and outcome.
    pub handler_duration: Histogram<f64>,
    /// Run events published, by task and status.
    pub runs: Counter<u64>,
    /// Failed attempts scheduled for a retry, by task.
    pub retries: Counter<u64>,
    /// Messages dead-lettered, by task.
    pub dead_letters: Counter<u64>,
    /// Invalid definitions reported, by bucket.
    pub invalid_definitions: Counter<u64>,
    /// Work waiting per queue and band (undelivered plus in flight).
    pub backlog: Gauge<u64>,
    /// Inbox messages not yet dispatched.
    pub inbox_backlog: Gauge<u64>,
}

/// The process's instruments, created from the global meter provider on
/// first use (so set telemetry up first).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = opentelemetry::global::meter("jetsched");
        let secs = |name: &'static str, help: &'static str| {
            m.f64_histogram(name).with_unit("s").with_description(help).with_boundaries(SECONDS.to_vec()).build()
        };
        Metrics {
            fire_lateness: secs(
                "jetsched_fire_lateness_seconds",
                "Fire time to due event stored (0 when staged ahead)",
            ),
            schedules_loaded: m
                .u64_gauge("jetsched_schedules_loaded")
                .with_description("Schedules loaded by the ticker")
                .build(),
            dispatch_latency: secs("jetsched_dispatch_latency_seconds", "Inbox message stored to work item stored"),
            handler_duration: secs("jetsched_handler_duration_seconds", "Handler run time per attempt"),
            runs: m.u64_counter("jetsched_runs").with_description("Run events published, by task and status").build(),
            retries: m.u64_counter("jetsched_retries").with_description("Failed attempts scheduled for retry").build(),
            dead_letters: m.u64_counter("jetsched_dead_letters").with_description("Messages stored in the DLQ").build(),
            invalid_definitions: m
                .u64_counter("jetsched_invalid_definitions")
                .with_description("Invalid schedule or task definitions reported")
                .build(),
            backlog: m
                .u64_gauge("jetsched_backlog_messages")
                .with_description("Work waiting per queue and band")
                .build(),
            inbox_backlog: m
                .u64_gauge("jetsched_inbox_backlog_messages")
                .with_description("Inbox messages not yet dispatched")
                .build(),
        }
    })
}

/// Seconds as a histogram value.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Shorthand for one attribute.
pub fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// Lets the meter provider own a reader the Prometheus endpoint also reads.
#[derive(Debug, Clone)]
pub struct SharedReader(pub Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The content type of [`render_prometheus`]'s text.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric `reader` holds, in the Prometheus text format (0.0.4),
/// written by `prometheus-client`'s encoder: monotonic sums are counters
/// (`_total`), other sums and gauges are gauges, histograms keep their
/// buckets.
pub fn render_prometheus(reader: &Arc<ManualReader>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(OtelBridge(reader.clone())));
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::debug!(%err, "cannot encode metrics");
    }
    out
}

/// Hands the OpenTelemetry reader's current data to the encoder at each scrape.
#[derive(Debug)]
struct OtelBridge(Arc<ManualReader>);

impl Collector for OtelBridge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rm = ResourceMetrics::default();
        if self.0.collect(&mut rm).is_err() {
            return Ok(());
        }
        for scope in rm.scope_metrics() {
            for metric in scope.metrics() {
                let (name, help) = (sanitize(metric.name()), metric.description());
                match metric.data() {
                    AggregatedMetrics::F64(d) => encode(&mut encoder, &name, help, d, |v| v)?,
                    AggregatedMetrics::U64(d) => encode(&mut encoder, &name, help, d, |v| v as f64)?,
                    AggregatedMetrics::I64(d) => encode(&mut encoder, &name, help, d, |v| v as f64)?,
                }
            }
        }
        Ok(())
    }
}

fn encode<T: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    data: &MetricData<T>,
    f: impl Fn(T) -> f64,
) -> Result<(), std::fmt::Error> {
    match data {
        MetricData::Sum(sum) if sum.is_monotonic() => {
            // The encoder appends `_total` to a counter's name.
            let name = name.strip_suffix("_total").unwrap_or(name);
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in sum.data_points() {
                family
                    .encode_family(&labels(p.attributes()))?
                    .encode_counter::<NoLabelSet, _, f64>(&f(p.value()), None)?;
            }
        }
        MetricData::Sum(sum) => {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in sum.data_points() {
                family.encode_family(&labels(p.attributes()))?.encode_gauge(&f(p.value()))?;
            }
        }
        MetricData::Gauge(g) => {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in g.data_points() {
                family.encode_family(&labels(p.attributes()))?.encode_gauge(&f(p.value()))?;
            }
        }
        MetricData::Histogram(h) => {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for p in h.data_points() {
                let bounds: Vec<f64> = p.bounds().chain(std::iter::once(f64::INFINITY)).collect();
                let buckets: Vec<(f64, u64)> = bounds.into_iter().zip(p.bucket_counts()).collect();
                family.encode_family(&labels(p.attributes()))?.encode_histogram::<NoLabelSet>(
                    f(p.sum()),
                    p.count(),
                    &buckets,
                    None,
                )?;
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
    Ok(())
}

/// A data point's attributes as label pairs (values escaped by the encoder).
fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    attrs.map(|kv| (sanitize(kv.key.as_str()), kv.value.as_str().into_owned())).collect()
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder().with_reader(SharedReader(reader.clone())).build();
        let m = provider.meter("t");
        m.u64_counter("jetsched_runs")
            .with_description("runs")
            .build()
            .add(2, &[kv("task", "a\"b"), kv("status", "succeeded")]);
        m.u64_gauge("jetsched_schedules_loaded").build().record(7, &[]);
        let h = m.f64_histogram("jetsched_fire_lateness_seconds").with_boundaries(vec![0.01, 0.1]).build();
        h.record(0.005, &[]);
        h.record(0.05, &[]);
        h.record(5.0, &[]);
        let text = render_prometheus(&reader);
        assert!(text.contains("# HELP jetsched_runs_total runs"), "{text}");
        assert!(text.contains("# TYPE jetsched_runs_total counter"), "{text}");
        assert!(
            text.contains(r#"jetsched_runs_total{task="a\"b",status="succeeded"} 2"#)
                || text.contains(r#"jetsched_runs_total{status="succeeded",task="a\"b"} 2"#),
            "{text}"
        );
        assert!(text.contains("jetsched_schedules_loaded 7"), "{text}");
        assert!(text.contains(r#"jetsched_fire_lateness_seconds_bucket{le="0.01"} 1"#), "{text}");
        assert!(text.contains(r#"jetsched_fire_lateness_seconds_bucket{le="0.1"} 2"#), "{text}");
        assert!(text.contains(r#"jetsched_fire_lateness_seconds_bucket{le="+Inf"} 3"#), "{text}");
        assert!(text.contains("jetsched_fire_lateness_seconds_count 3"), "{text}");
    }
}

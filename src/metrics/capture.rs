//! In-memory metrics for tests: a meter provider whose cumulative points are read back
//! on demand (see `testing::MetricsCapture`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

/// One data point as a test reads it: the metric's name and unit, the point's attributes
/// as text, and its value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricPoint {
    /// The metric's name.
    pub name: String,
    /// Its unit (`s`, `{message}`).
    pub unit: String,
    /// The instrumentation scope's schema URL.
    pub schema_url: Option<String>,
    /// The point's attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// Its value.
    pub value: PointValue,
}

/// The value of a [`MetricPoint`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PointValue {
    /// A counter's total.
    Sum(f64),
    /// A gauge's last value.
    Gauge(f64),
    /// A histogram: how many values, their sum, and the bucket boundaries.
    Histogram {
        /// How many values were recorded.
        count: u64,
        /// Their sum.
        sum: f64,
        /// The bucket boundaries.
        bounds: Vec<f64>,
    },
}

/// In-memory metrics: hand [`provider`](Self::provider) to
/// [`TelemetryBuilder::metrics`](crate::TelemetryBuilder::metrics), run, then read the
/// totals with [`points`](Self::points), [`sum`](Self::sum) and
/// [`histogram_count`](Self::histogram_count).
#[derive(Clone)]
pub struct MetricsCapture {
    provider: SdkMeterProvider,
    points: Arc<Mutex<Vec<MetricPoint>>>,
}

impl fmt::Debug for MetricsCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsCapture").finish_non_exhaustive()
    }
}

impl Default for MetricsCapture {
    fn default() -> Self {
        MetricsCapture::new()
    }
}

impl MetricsCapture {
    /// A provider with one reader that keeps the last collection in memory.
    pub fn new() -> MetricsCapture {
        let points = Arc::new(Mutex::new(Vec::new()));
        let exporter = Snapshot {
            points: points.clone(),
        };
        // Collected on `points()` (a force flush), not on a timer.
        let reader = PeriodicReader::builder(exporter)
            .with_interval(Duration::from_secs(24 * 3600))
            .build();
        MetricsCapture {
            provider: SdkMeterProvider::builder().with_reader(reader).build(),
            points,
        }
    }

    /// The meter provider to build a handle with.
    pub fn provider(&self) -> SdkMeterProvider {
        self.provider.clone()
    }

    /// Every point recorded so far (totals since the start).
    pub fn points(&self) -> Vec<MetricPoint> {
        // A provider already shut down (with its handle) keeps the last collection.
        let _ = self.provider.force_flush();
        self.points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The points of metric `name` whose attributes include every `(key, value)` of
    /// `attributes`.
    pub fn matching(&self, name: &str, attributes: &[(&str, &str)]) -> Vec<MetricPoint> {
        self.points()
            .into_iter()
            .filter(|p| p.name == name)
            .filter(|p| {
                attributes
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The total of counter `name` over the points matching `attributes` (0 if none).
    pub fn sum(&self, name: &str, attributes: &[(&str, &str)]) -> f64 {
        self.matching(name, attributes)
            .iter()
            .map(|p| match p.value {
                PointValue::Sum(v) | PointValue::Gauge(v) => v,
                PointValue::Histogram { sum, .. } => sum,
            })
            .sum()
    }

    /// How many values histogram `name` recorded over the points matching `attributes`.
    pub fn histogram_count(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        self.matching(name, attributes)
            .iter()
            .map(|p| match p.value {
                PointValue::Histogram { count, .. } => count,
                _ => 0,
            })
            .sum()
    }
}

/// The exporter behind [`MetricsCapture`]: keeps the points of the last collection.
struct Snapshot {
    points: Arc<Mutex<Vec<MetricPoint>>>,
}

impl PushMetricExporter for Snapshot {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut out = Vec::new();
        for scope in metrics.scope_metrics() {
            let schema_url = scope.scope().schema_url().map(str::to_owned);
            for metric in scope.metrics() {
                let point = |attributes: BTreeMap<String, String>, value| MetricPoint {
                    name: metric.name().to_owned(),
                    unit: metric.unit().to_owned(),
                    schema_url: schema_url.clone(),
                    attributes,
                    value,
                };
                match metric.data() {
                    AggregatedMetrics::F64(data) => points(data, |v| v, &point, &mut out),
                    AggregatedMetrics::U64(data) => points(data, |v| v as f64, &point, &mut out),
                    AggregatedMetrics::I64(data) => points(data, |v| v as f64, &point, &mut out),
                }
            }
        }
        *self.points.lock().unwrap_or_else(|e| e.into_inner()) = out;
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

fn text(kv: &opentelemetry::KeyValue) -> (String, String) {
    (kv.key.to_string(), kv.value.as_str().into_owned())
}

fn points<T: Copy>(
    data: &MetricData<T>,
    float: impl Fn(T) -> f64,
    point: &dyn Fn(BTreeMap<String, String>, PointValue) -> MetricPoint,
    out: &mut Vec<MetricPoint>,
) {
    match data {
        MetricData::Sum(sum) => {
            for p in sum.data_points() {
                let attributes = p.attributes().map(text).collect();
                out.push(point(attributes, PointValue::Sum(float(p.value()))));
            }
        }
        MetricData::Gauge(gauge) => {
            for p in gauge.data_points() {
                let attributes = p.attributes().map(text).collect();
                out.push(point(attributes, PointValue::Gauge(float(p.value()))));
            }
        }
        MetricData::Histogram(histogram) => {
            for p in histogram.data_points() {
                let attributes = p.attributes().map(text).collect();
                out.push(point(
                    attributes,
                    PointValue::Histogram {
                        count: p.count(),
                        sum: float(p.sum()),
                        bounds: p.bounds().collect(),
                    },
                ));
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

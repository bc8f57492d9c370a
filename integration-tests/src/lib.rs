//! Shared helpers for tracehop's real-broker tests: broker addresses from the environment
//! (with loopback defaults), unique names per test, and trace assertions.

use std::time::Duration;

pub mod ledger;
#[cfg(feature = "nats")]
pub mod nats_server;
pub mod repeated_headers;

/// How long a test waits for spans from consumers running in other tasks.
pub const WAIT: Duration = Duration::from_secs(20);

/// The value of environment variable `var`, or `default`.
pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// NATS server URL: `TRACEHOP_NATS_URL`, default `nats://127.0.0.1:4222`.
pub fn nats_url() -> String {
    env_or("TRACEHOP_NATS_URL", "nats://127.0.0.1:4222")
}

/// AMQP URL: `TRACEHOP_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn amqp_url() -> String {
    env_or("TRACEHOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Kafka bootstrap servers of the external broker (tansu in CI):
/// `TRACEHOP_KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    env_or("TRACEHOP_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// A name unique to this test run, so tests never see each other's messages.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub mod spans;

/// Await a spawned consumer loop (or any task), failing the test if it takes longer than
/// [`WAIT`] or panics.
pub async fn finish<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(WAIT, task).await {
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
        Ok(Err(e)) => panic!("{what} panicked: {e}"),
        Ok(Ok(out)) => out,
    }
}

/// A service whose spans go to `spans` and whose messaging metrics are read back from
/// the returned in-memory capture.
pub fn metered(
    spans: &tracehop::SpanCollector,
    name: &str,
) -> (tracehop::Telemetry, tracehop::testing::MetricsCapture) {
    let metrics = tracehop::testing::MetricsCapture::new();
    let telemetry = tracehop::Telemetry::builder(name)
        .collector(spans)
        .metrics(metrics.provider())
        .build()
        .expect("telemetry");
    (telemetry, metrics)
}

/// Metric names, for the metric tests.
pub mod metric {
    pub use tracehop::metrics::names::*;
}

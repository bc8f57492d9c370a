//! The OTLP exporter's batch processor: the SDK's `BatchSpanProcessor` loses spans when
//! its queue is full and tells nobody but its own log; this one counts every span it
//! drops and every span a failed export lost, so that
//! [`Telemetry::flush`](crate::Telemetry::flush) can say so.
//!
//! A span that finds the queue full is dropped (a collector that cannot keep up must not
//! slow the service down); the journal is the sink that waits instead.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::{Health, Popped, Queue, SinkKind, Wait};

/// Spans waiting for export before new ones are dropped.
const QUEUE_SIZE: usize = 65_536;
/// Spans per export.
const BATCH_SIZE: usize = 1024;
/// The longest a span waits for a batch to fill, unless `OTEL_BSP_SCHEDULE_DELAY` (in
/// milliseconds, as for the SDK's processor) says otherwise.
const SCHEDULED_DELAY: Duration = Duration::from_secs(5);

fn scheduled_delay() -> Duration {
    std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(SCHEDULED_DELAY, Duration::from_millis)
}
/// How long `force_flush` waits for the exports.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Shared {
    queue: Queue<SpanData>,
    delay: Duration,
    /// A resource to hand the exporter before its next export.
    resource: Mutex<Option<Resource>>,
    health: Health,
}

/// A `SpanProcessor` exporting batches from its own thread, every drop counted.
pub(crate) struct BatchProcessor {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for BatchProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("exporter", &self.shared.health.name())
            .finish_non_exhaustive()
    }
}

impl BatchProcessor {
    /// Start exporting through `exporter`, named `name` in errors.
    pub(crate) fn new<E: SpanExporter + 'static>(
        exporter: E,
        name: &str,
    ) -> std::io::Result<BatchProcessor> {
        let shared = Arc::new(Shared {
            queue: Queue::new(QUEUE_SIZE),
            delay: scheduled_delay(),
            resource: Mutex::new(None),
            health: Health::new(name, SinkKind::Exporter, QUEUE_SIZE),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("tracehop-{name}"))
                .spawn(move || shared.run(exporter))?
        };
        Ok(BatchProcessor {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    pub(crate) fn health(&self) -> Health {
        self.shared.health.clone()
    }

    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let done = self.shared.queue.flush(timeout);
        self.shared.health.end_burst(true);
        if done {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.shared.queue.push(span, 1, Wait::No) {
            Ok(len) => self.shared.health.queued(len),
            Err(_) => self.shared.health.dropped(1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let flushed = self.flush(timeout);
        self.shared.queue.close();
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if flushed.is_ok() {
            if let Some(worker) = worker {
                let _ = worker.join();
            }
        }
        flushed
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self
            .shared
            .resource
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(resource.clone());
    }
}

impl Drop for BatchProcessor {
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

impl Shared {
    fn run<E: SpanExporter>(&self, mut exporter: E) {
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        loop {
            let popped = self.queue.pop(&mut batch, BATCH_SIZE, self.delay);
            // The provider hands the resource over after this thread has started (and
            // may already be waiting in `pop`): apply it after the wait, before anything
            // is exported, so that the first batch carries it too.
            if let Some(resource) = self
                .resource
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                exporter.set_resource(&resource);
            }
            match popped {
                Popped::Items => {
                    let n = batch.len();
                    match block_on(exporter.export(std::mem::take(&mut batch))) {
                        Ok(()) => self.health.written(n as u64),
                        Err(e) => self.health.failed(n as u64, &e),
                    }
                    self.queue.handled(n);
                }
                Popped::Flush => {
                    if let Err(e) = exporter.force_flush() {
                        self.health.failed(0, &e);
                    }
                    self.queue.flushed();
                }
                Popped::Idle => {}
                Popped::Closed => {
                    if let Err(e) = exporter.shutdown() {
                        self.health.failed(0, &e);
                    }
                    self.queue.flushed();
                    self.health.end_burst(true);
                    return;
                }
            }
            self.health.end_burst(false);
        }
    }
}

/// Run a future to completion on this thread (an export future; the HTTP exporter's does
/// its I/O blocking).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

    use super::{BatchProcessor, QUEUE_SIZE};
    use crate::export::SinkKind;

    /// An exporter that holds its first export until the gate opens, counting spans.
    #[derive(Debug, Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        spans: Arc<AtomicU64>,
    }

    impl Gated {
        fn open(&self) {
            *self.open.0.lock().expect("lock") = true;
            self.open.1.notify_all();
        }
    }

    impl SpanExporter for Gated {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let mut open = self.open.0.lock().expect("lock");
            while !*open {
                open = self.open.1.wait(open).expect("wait");
            }
            self.spans.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
    }

    /// With the exporter stuck, a burst larger than the queue drops the excess; every
    /// span is either exported or counted as dropped, and flush says how many.
    #[test]
    fn a_full_queue_drops_and_counts_every_span_it_drops() {
        let exporter = Gated::default();
        let processor = BatchProcessor::new(exporter.clone(), "test-otlp").expect("thread");
        let health = processor.health();
        assert_eq!(health.kind(), SinkKind::Exporter);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("burst");
        let total = QUEUE_SIZE as u64 + 10_000;
        for _ in 0..total {
            tracer.start("span").end();
        }
        exporter.open();
        provider.force_flush().expect("flushed");
        let counts = health.counts();
        assert!(counts.dropped > 0, "{counts:?}");
        assert_eq!(counts.written, exporter.spans.load(Ordering::Relaxed));
        assert_eq!(counts.written + counts.dropped, total, "{counts:?}");
        assert!(counts.peak_queued <= QUEUE_SIZE, "{counts:?}");
        match health.check() {
            Err(crate::Error::Dropped { sink, dropped }) => {
                assert_eq!(sink, "test-otlp");
                assert_eq!(dropped, counts.dropped);
            }
            other => panic!("expected Dropped, got {other:?}"),
        }
        provider.shutdown().expect("shut down");
    }
}

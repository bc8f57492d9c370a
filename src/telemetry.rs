//! The telemetry handle: a service name, a tracer provider and a propagator. No globals.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, SimpleSpanProcessor, SpanProcessor, TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;

use crate::journal::{Journal, JournalExporter, JournalHealth, SpanCollector};
use crate::propagation::Propagation;
use crate::{Error, Result};

/// The instrumentation scope name of tracehop's spans.
const SCOPE: &str = "tracehop";
/// Spans waiting for export before the SDK starts dropping them.
const QUEUE_SIZE: usize = 65_536;

/// A service's handle on tracing: its name, where its spans go, and how context is
/// propagated. Cheap to clone; every clone is the same service.
///
/// Several handles with different service names can live in one process (a demo, a test,
/// an agent runtime hosting several agents): each has its own tracer provider, so each
/// span carries its own `service.name`. Nothing global is installed or required.
///
/// Spans go to a JSON-lines [`Journal`] unless you configure another exporter. Call
/// [`shutdown`](Self::shutdown) before the process exits so every span is written (dropping
/// the last clone also flushes, but cannot report errors).
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) service_name: String,
    pub(crate) tracer: SdkTracer,
    pub(crate) provider: SdkTracerProvider,
    pub(crate) propagation: Propagation,
    journals: Vec<JournalHealth>,
    exports: Vec<ExportHealth>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.inner.service_name)
            .field("propagation", &self.inner.propagation)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Start configuring the handle of service `service_name`.
    pub fn builder(service_name: impl Into<String>) -> TelemetryBuilder {
        TelemetryBuilder {
            service_name: service_name.into(),
            provider: SdkTracerProvider::builder(),
            resource: Vec::new(),
            propagation: Propagation::default(),
            journals: Vec::new(),
            exports: Vec::new(),
            has_processor: false,
        }
    }

    /// Use a tracer provider you built (and may have installed globally). Its resource
    /// decides `service.name`; `service_name` names this handle in tracehop's own output.
    pub fn from_provider(
        service_name: impl Into<String>,
        provider: &SdkTracerProvider,
        propagation: Propagation,
    ) -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                service_name: service_name.into(),
                tracer: provider.tracer(SCOPE),
                provider: provider.clone(),
                propagation,
                journals: Vec::new(),
                exports: Vec::new(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.inner.service_name
    }

    /// The propagation settings.
    pub fn propagation(&self) -> &Propagation {
        &self.inner.propagation
    }

    /// The underlying tracer provider, to create your own spans with this service's name.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.inner.provider
    }

    /// Export every finished span now.
    pub fn flush(&self) -> Result<()> {
        let sdk = self.inner.provider.force_flush();
        self.journal_health()?;
        sdk.map_err(|e| Error::Sdk(e.to_string()))
    }

    /// Flush and shut down this service's exporters. Reports a journal that could not be
    /// written (full disk, closed pipe) with how many spans were lost.
    pub fn shutdown(&self) -> Result<()> {
        let sdk = self.inner.provider.shutdown();
        self.journal_health()?;
        sdk.map_err(|e| Error::Sdk(e.to_string()))
    }

    fn journal_health(&self) -> Result<()> {
        self.inner
            .journals
            .iter()
            .try_for_each(JournalHealth::check)?;
        self.inner.exports.iter().try_for_each(ExportHealth::check)
    }
}

/// Configures a [`Telemetry`] handle.
#[must_use = "call build() to get the Telemetry handle"]
pub struct TelemetryBuilder {
    service_name: String,
    provider: TracerProviderBuilder,
    resource: Vec<KeyValue>,
    propagation: Propagation,
    journals: Vec<JournalHealth>,
    exports: Vec<ExportHealth>,
    has_processor: bool,
}

impl fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("service_name", &self.service_name)
            .field("propagation", &self.propagation)
            .finish_non_exhaustive()
    }
}

impl TelemetryBuilder {
    /// Write spans to `journal` (batched on a background thread).
    pub fn journal(mut self, journal: Journal) -> Self {
        let exporter = JournalExporter::new(journal);
        self.journals.push(exporter.health());
        self.span_processor(batch_processor(exporter))
    }

    /// Capture spans in memory, synchronously as each one ends (for tests and tools).
    pub fn collector(self, collector: &SpanCollector) -> Self {
        let exporter = JournalExporter::collect(collector.clone());
        self.span_processor(SimpleSpanProcessor::new(exporter))
    }

    /// Export spans over OTLP (HTTP/protobuf), configured by the standard
    /// `OTEL_EXPORTER_OTLP_*` environment variables (endpoint `http://localhost:4318` by
    /// default).
    #[cfg(feature = "otlp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
    ///
    /// Export failures (an unreachable collector) are counted; [`Telemetry::flush`] and
    /// [`Telemetry::shutdown`] report them as [`Error::Export`].
    pub fn otlp(mut self) -> Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Otlp(e.to_string()))?;
        let health = ExportHealth::default();
        self.exports.push(health.clone());
        Ok(self.span_processor(batch_processor(Monitored {
            inner: exporter,
            name: "otlp",
            health,
        })))
    }

    /// Add any span processor (an exporter of your own, a filter).
    pub fn span_processor(mut self, processor: impl SpanProcessor + 'static) -> Self {
        self.provider = self.provider.with_span_processor(processor);
        self.has_processor = true;
        self
    }

    /// Choose which traces are recorded (all, by default). Unsampled messages still carry
    /// context, so downstream services keep the same trace id.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.provider = self.provider.with_sampler(sampler);
        self
    }

    /// Add a resource attribute (`deployment.environment.name`, `service.version`, ...).
    pub fn resource_attribute(mut self, kv: KeyValue) -> Self {
        self.resource.push(kv);
        self
    }

    /// How context is written and read (W3C trace context + baggage by default).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Build the handle. With no exporter configured, spans go to the journal named by
    /// `TRACEHOP_JOURNAL` (a path, or `-` for standard output), else to standard output.
    pub fn build(mut self) -> Result<Telemetry> {
        if !self.has_processor {
            let journal = match std::env::var("TRACEHOP_JOURNAL") {
                Ok(path) if path != "-" && !path.is_empty() => Journal::file(&path)?,
                _ => Journal::stdout(),
            };
            self = self.journal(journal);
        }
        let resource = Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .with_attributes(self.resource)
            .build();
        let provider = self
            .provider
            .with_resource(resource)
            .with_id_generator(JoinableIds)
            .with_max_links_per_span(4096)
            .build();
        Ok(Telemetry {
            inner: Arc::new(Inner {
                tracer: provider.tracer(SCOPE),
                service_name: self.service_name,
                provider,
                propagation: self.propagation,
                journals: self.journals,
                exports: self.exports,
            }),
        })
    }
}

fn batch_processor<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_SIZE)
                .with_max_export_batch_size(1024)
                .build(),
        )
        .build()
}

/// The first failure of an exporter: its name, spans lost so far, the first error.
type ExportFailure = (&'static str, u64, String);

/// Export failures of one exporter: spans lost and the first error.
#[derive(Clone, Debug, Default)]
struct ExportHealth(Arc<std::sync::Mutex<Option<ExportFailure>>>);

impl ExportHealth {
    fn failed(&self, exporter: &'static str, spans: u64, message: String) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            Some((_, dropped, _)) => *dropped += spans,
            None => *state = Some((exporter, spans, message)),
        }
    }

    fn check(&self) -> Result<()> {
        let state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            None => Ok(()),
            Some((exporter, dropped, message)) => Err(Error::Export {
                exporter: (*exporter).to_owned(),
                dropped: *dropped,
                message: message.clone(),
            }),
        }
    }
}

/// An exporter whose failures are remembered in an [`ExportHealth`]: the SDK's batch
/// processor only logs them, and a service should be able to tell that its spans never
/// reached the collector.
#[derive(Debug)]
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
struct Monitored<E> {
    inner: E,
    name: &'static str,
    health: ExportHealth,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Monitored<E>
{
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let export = self.inner.export(batch);
        let (health, name) = (self.health.clone(), self.name);
        async move {
            let result = export.await;
            if let Err(e) = &result {
                health.failed(name, spans, e.to_string());
            }
            result
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a root span may be told which trace it joins (a message that
/// carries only the article's `x-trace-id`).
#[derive(Debug)]
struct JoinableIds;

impl IdGenerator for JoinableIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }
    fn new_span_id(&self) -> SpanId {
        RandomIdGenerator::default().new_span_id()
    }
}

/// Run `start` (which starts a root span) so that the span joins `trace_id` if given.
/// Only handles built by [`TelemetryBuilder`] honour it; others start a new trace.
pub(crate) fn with_trace_id<T>(trace_id: Option<TraceId>, start: impl FnOnce() -> T) -> T {
    if trace_id.is_none() {
        return start();
    }
    NEXT_TRACE_ID.with(|c| c.set(trace_id));
    let out = start();
    NEXT_TRACE_ID.with(|c| c.set(None));
    out
}

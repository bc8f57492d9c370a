//! The telemetry handle: a service name, a tracer provider and a propagator. No globals.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider, SimpleSpanProcessor,
    SpanProcessor, TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;

use crate::export::{Health, SinkKind};
use crate::journal::{
    CollectorExporter, DirectJournal, Journal, JournalProcessor, JournalStats, SpanCollector,
};
use crate::messaging::{HeaderCapture, Hooks};
use crate::metrics::Metrics;
use crate::propagation::Propagation;
use crate::{Error, Result};

/// A service's handle on tracing: its name, where its spans go, and how context is
/// propagated. Cheap to clone; every clone is the same service.
///
/// Several handles with different service names can live in one process (a demo, a test,
/// an agent runtime hosting several agents): each has its own tracer provider, so each
/// span carries its own `service.name`. Nothing global is installed or required.
///
/// Spans go to a JSON-lines [`Journal`] unless you configure another exporter. Call
/// [`shutdown`](Self::shutdown) before the process exits: it returns once every span has
/// been written, or with an error that says how many were lost and why (dropping the last
/// clone also flushes, but cannot report errors).
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) service_name: String,
    pub(crate) tracer: SdkTracer,
    /// The provider's sampler, when this handle built the provider (so tracehop can ask it
    /// before describing a span; see `messaging::sampling`).
    pub(crate) sampler: Option<Sampler>,
    /// `sampler` is the SDK's default `ParentBased(AlwaysOn)` that this handle set, whose
    /// root sampler records every root (a `ParentBased` given by the user hides its root
    /// sampler, which is then asked).
    pub(crate) default_sampler: bool,
    pub(crate) provider: SdkTracerProvider,
    pub(crate) propagation: Propagation,
    /// The counts of each journal and exporter this handle built.
    sinks: Vec<Health>,
    /// The messaging metrics, when this handle has a meter provider (off by default).
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The user's filter, enrich and destination-template hooks.
    pub(crate) hooks: Hooks,
    /// The journal tracehop's own spans are written to without the SDK's span, when it
    /// is the handle's only span processor (see `journal::direct`).
    pub(crate) direct: Option<Arc<DirectJournal>>,
    /// The headers recorded as span attributes, if any.
    pub(crate) capture: Option<HeaderCapture>,
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
            sinks: Vec::new(),
            meter_provider: None,
            hooks: Hooks::default(),
            capture: None,
            has_processor: false,
            processors: 0,
            journal: None,
            failed: None,
            // The SDK's default, unless its environment variable chose another.
            sampler: std::env::var_os("OTEL_TRACES_SAMPLER")
                .is_none()
                .then(|| Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            default_sampler: true,
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
                tracer: provider.tracer_with_scope(crate::metrics::scope()),
                sampler: None,
                default_sampler: false,
                provider: provider.clone(),
                propagation,
                sinks: Vec::new(),
                metrics: None,
                hooks: Hooks::default(),
                capture: None,
                direct: None,
            }),
        }
    }

    /// [`from_provider`](Self::from_provider), also recording messaging metrics through
    /// `meter_provider` (see [`metrics`](crate::metrics)), as
    /// [`TelemetryBuilder::metrics`] does for a handle from the builder.
    /// [`flush`](Self::flush) and [`shutdown`](Self::shutdown) flush and shut down the meter
    /// provider too.
    pub fn from_providers(
        service_name: impl Into<String>,
        tracer_provider: &SdkTracerProvider,
        meter_provider: SdkMeterProvider,
        propagation: Propagation,
    ) -> Telemetry {
        let mut telemetry = Telemetry::from_provider(service_name, tracer_provider, propagation);
        if let Some(inner) = Arc::get_mut(&mut telemetry.inner) {
            // Always: the handle was made just now and has no other clone.
            inner.metrics = Some(Arc::new(Metrics::new(meter_provider)));
        }
        telemetry
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

    /// The meter provider of this handle's messaging metrics, if they are on.
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.inner.metrics.as_ref().map(|m| &m.provider)
    }

    /// Export every finished span now, and the metrics' current values when they are on.
    pub fn flush(&self) -> Result<()> {
        let sdk = self.inner.provider.force_flush();
        let metrics = match &self.inner.metrics {
            Some(m) => m.provider.force_flush(),
            None => Ok(()),
        };
        self.sink_health()?;
        sdk.and(metrics).map_err(|e| Error::Sdk(e.to_string()))
    }

    /// Flush and shut down this service's exporters (and its meter provider, when metrics
    /// are on), with the errors of [`flush`](Self::flush).
    pub fn shutdown(&self) -> Result<()> {
        let sdk = self.inner.provider.shutdown();
        let metrics = match &self.inner.metrics {
            Some(m) => m.provider.shutdown(),
            None => Ok(()),
        };
        self.sink_health()?;
        sdk.and(metrics).map_err(|e| Error::Sdk(e.to_string()))
    }

    /// What each journal of this handle has written, failed to write and dropped so far.
    pub fn journal_stats(&self) -> Vec<JournalStats> {
        self.inner
            .sinks
            .iter()
            .filter(|h| h.kind() == SinkKind::Journal)
            .map(|h| {
                let counts = h.counts();
                JournalStats {
                    name: h.name().to_owned(),
                    written: counts.written,
                    failed: counts.failed,
                    dropped: counts.dropped,
                    peak_buffered_bytes: counts.peak_queued,
                    buffer_limit: counts.limit,
                }
            })
            .collect()
    }

    fn sink_health(&self) -> Result<()> {
        self.inner.sinks.iter().try_for_each(Health::check)
    }
}

/// Configures a [`Telemetry`] handle.
#[must_use = "call build() to get the Telemetry handle"]
pub struct TelemetryBuilder {
    service_name: String,
    provider: TracerProviderBuilder,
    resource: Vec<KeyValue>,
    propagation: Propagation,
    sinks: Vec<Health>,
    meter_provider: Option<SdkMeterProvider>,
    hooks: Hooks,
    capture: Option<HeaderCapture>,
    has_processor: bool,
    /// How many span processors the provider has (an exporter, a journal, a baggage
    /// recorder).
    processors: usize,
    /// The last journal added, for its direct spans.
    journal: Option<Arc<crate::journal::JournalShared>>,
    /// A journal whose writer thread could not be started: `build` reports it.
    failed: Option<Error>,
    /// The sampler given to the provider, if known (the SDK's default until one is set).
    sampler: Option<Sampler>,
    /// `sampler` is the SDK's default that [`Telemetry::builder`] set.
    default_sampler: bool,
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
    /// Write spans to `journal`: each span's line is written when it ends and handed to
    /// the journal's writer thread (see [`journal`](crate::journal) for what that costs
    /// and guarantees).
    pub fn journal(mut self, journal: Journal) -> Self {
        let name = journal.name.clone();
        match JournalProcessor::new(journal) {
            Ok(processor) => {
                self.sinks.push(processor.health());
                self.journal = Some(processor.sink());
                self.span_processor(processor)
            }
            Err(source) => {
                self.failed
                    .get_or_insert(Error::JournalIo { path: name, source });
                self
            }
        }
    }

    /// Capture spans in memory, synchronously as each one ends (for tests and tools).
    pub fn collector(self, collector: &SpanCollector) -> Self {
        let exporter = CollectorExporter::new(collector.clone());
        self.span_processor(SimpleSpanProcessor::new(exporter))
    }

    /// Export spans over OTLP (HTTP/protobuf), configured by the standard
    /// `OTEL_EXPORTER_OTLP_*` environment variables (endpoint `http://localhost:4318` by
    /// default).
    #[cfg(feature = "otlp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
    ///
    /// Spans are exported in batches from a background thread through a queue of 65,536
    /// spans; a span that finds the queue full is dropped rather than slowing the service
    /// down. Drops and export failures (an unreachable collector) are counted;
    /// [`Telemetry::flush`] and [`Telemetry::shutdown`] report them as [`Error::Dropped`]
    /// and [`Error::Export`], and a burst of drops is logged once through `tracing`.
    pub fn otlp(mut self) -> Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Otlp(e.to_string()))?;
        let processor = crate::export::BatchProcessor::new(exporter, "otlp")
            .map_err(|e| Error::Otlp(format!("starting the export thread: {e}")))?;
        self.sinks.push(processor.health());
        Ok(self.span_processor(processor))
    }

    /// Record messaging metrics (see [`metrics`](crate::metrics)) through `provider`: a
    /// meter provider you built, with your readers and exporters (an OTLP exporter, a
    /// Prometheus reader, an in-memory one in tests). Nothing is installed globally. The
    /// handle's [`flush`](Telemetry::flush) and [`shutdown`](Telemetry::shutdown) flush and
    /// shut it down too. Without this (or [`otlp_metrics`](Self::otlp_metrics)), metrics
    /// are off and cost nothing.
    pub fn metrics(mut self, provider: SdkMeterProvider) -> Self {
        self.meter_provider = Some(provider);
        self
    }

    /// Record messaging metrics and export them over OTLP (HTTP/protobuf) every 60 s (or
    /// `OTEL_METRIC_EXPORT_INTERVAL` ms), configured by the standard
    /// `OTEL_EXPORTER_OTLP_*` environment variables, with this handle's resource.
    #[cfg(feature = "otlp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
    pub fn otlp_metrics(mut self) -> Result<Self> {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Otlp(e.to_string()))?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
        self.meter_provider = Some(
            SdkMeterProvider::builder()
                .with_resource(self.resource())
                .with_reader(reader)
                .build(),
        );
        Ok(self)
    }

    /// Filter, enrich and destination-template hooks for every send and process span
    /// (see [`Hooks`]).
    pub fn hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Record the headers `capture` names as `messaging.header.<name>` attributes of send
    /// and process spans (see [`HeaderCapture`]). Off by default.
    pub fn capture_headers(mut self, capture: HeaderCapture) -> Self {
        self.capture = (!capture.is_empty()).then_some(capture);
        self
    }

    /// The resource this handle's spans (and OTLP metrics) carry.
    fn resource(&self) -> Resource {
        Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .with_attributes(self.resource.clone())
            .build()
    }

    /// Add any span processor (an exporter of your own, a filter).
    pub fn span_processor(mut self, processor: impl SpanProcessor + 'static) -> Self {
        self.provider = self.provider.with_span_processor(processor);
        self.has_processor = true;
        self.processors += 1;
        self
    }

    /// Record the baggage members named `keys` as attributes of every span started in
    /// their context (a [`BaggageAttributes`](crate::context::BaggageAttributes)
    /// processor): `record_baggage(["run.id"])` puts the run on each hop's spans, so the
    /// journal, `tracehop tree` and any backend show which run a span belongs to. Does not
    /// count as an exporter (the default journal still applies).
    pub fn record_baggage<K: Into<opentelemetry::Key>>(
        mut self,
        keys: impl IntoIterator<Item = K>,
    ) -> Self {
        let processor = crate::context::BaggageAttributes::new(keys);
        if !processor.keys().is_empty() {
            self.provider = self.provider.with_span_processor(processor);
            self.processors += 1;
        }
        self
    }

    /// Choose which traces are recorded (all, by default). Unsampled messages still carry
    /// context, so downstream services keep the same trace id.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.provider = self.provider.with_sampler(sampler.clone());
        self.sampler = Some(sampler);
        self.default_sampler = false;
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
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let resource = self.resource();
        // One journal and nothing else, with the SDK's default span limits (which the
        // environment may change): tracehop's own spans skip the SDK's span.
        let default_limits = [
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
            "OTEL_SPAN_EVENT_COUNT_LIMIT",
        ]
        .iter()
        .all(|name| std::env::var_os(name).is_none());
        let direct = match (&self.journal, &self.sampler, self.processors) {
            (Some(journal), Some(sampler), 1) if default_limits => {
                Some(Arc::new(DirectJournal::new(
                    journal.clone(),
                    crate::journal::service_json_of(&resource),
                    sampler.clone(),
                )))
            }
            _ => None,
        };
        let provider = self
            .provider
            .with_resource(resource)
            .with_id_generator(JoinableIds)
            .with_max_links_per_span(4096)
            .build();
        Ok(Telemetry {
            inner: Arc::new(Inner {
                tracer: provider.tracer_with_scope(crate::metrics::scope()),
                default_sampler: self.default_sampler && self.sampler.is_some(),
                sampler: self.sampler,
                service_name: self.service_name,
                provider,
                propagation: self.propagation,
                sinks: self.sinks,
                metrics: self.meter_provider.map(|p| Arc::new(Metrics::new(p))),
                hooks: self.hooks,
                capture: self.capture,
                direct,
            }),
        })
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

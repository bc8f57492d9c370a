//! Your own work inside the trace: spans of your own around a future, and baggage set and
//! read on the current context.
//!
//! A handler runs inside its message's process span, so everything here nests under it;
//! a send made inside [`Telemetry::in_span`] or [`with_baggage`] carries that span as
//! parent and that baggage to the next service.
//!
//! ```
//! use tracehop::context::{baggage, with_baggage};
//! use tracehop::{SpanCollector, Telemetry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tracehop::Result<()> {
//! let spans = SpanCollector::new();
//! let agent = Telemetry::builder("agent").collector(&spans).build()?;
//!
//! let plan = with_baggage([("run.id", "run-7")], async {
//!     agent
//!         .in_span("plan", async {
//!             // Baggage is readable anywhere below, and travels with every send.
//!             assert_eq!(baggage("run.id").as_deref(), Some("run-7"));
//!             "search invoices"
//!         })
//!         .await
//! })
//! .await;
//! assert_eq!(plan, "search invoices");
//! assert_eq!(spans.records()[0].operation_name.as_deref(), Some("plan"));
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;

use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, Key, KeyValue, StringValue};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::Telemetry;

impl Telemetry {
    /// Run `future` inside a new span named `name` (kind INTERNAL) of this service, a
    /// child of the current context; the span ends when the future completes, with status
    /// ok. For a future that returns a `Result`, [`try_in_span`](Self::try_in_span) also
    /// records the error.
    pub async fn in_span<F: Future>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> F::Output {
        self.in_span_with(name, [], future).await
    }

    /// [`in_span`](Self::in_span) with attributes on the span from its start (where a
    /// sampler sees them).
    pub async fn in_span_with<F: Future>(
        &self,
        name: impl Into<Cow<'static, str>>,
        attributes: impl IntoIterator<Item = KeyValue>,
        future: F,
    ) -> F::Output {
        let cx = self.child_context(name.into(), attributes);
        let output = future.with_context(cx.clone()).await;
        let span = cx.span();
        span.set_status(Status::Ok);
        span.end();
        output
    }

    /// [`in_span`](Self::in_span) for a fallible future: an `Err` marks the span failed
    /// (status error, `error.type`, an `exception` event) and is returned unchanged.
    pub async fn try_in_span<F, T, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let cx = self.child_context(name.into(), []);
        let output = future.with_context(cx.clone()).await;
        let span = cx.span();
        match &output {
            Ok(_) => span.set_status(Status::Ok),
            Err(e) => {
                crate::messaging::record_error_on(&span, e);
            }
        }
        span.end();
        output
    }

    fn child_context(
        &self,
        name: Cow<'static, str>,
        attributes: impl IntoIterator<Item = KeyValue>,
    ) -> Context {
        let tracer = &self.inner().tracer;
        Context::map_current(|parent| {
            let span = tracer
                .span_builder(name)
                .with_attributes(attributes)
                .start_with_context(tracer, parent);
            parent.with_span(span)
        })
    }
}

/// Run `future` with `entries` added to the current context's baggage. Sends made inside
/// carry it in the `baggage` header (within the W3C limits), and the consumers' process
/// spans make it current again for their handlers.
pub async fn with_baggage<F, K, V>(
    entries: impl IntoIterator<Item = (K, V)>,
    future: F,
) -> F::Output
where
    F: Future,
    K: Into<Key>,
    V: Into<StringValue>,
{
    let cx = Context::map_current(|cx| {
        let mut baggage: Baggage = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.clone(), (v.clone(), m.clone())))
            .collect();
        for (key, value) in entries {
            baggage.insert(key, value);
        }
        cx.with_baggage(baggage)
    });
    future.with_context(cx).await
}

/// The value of baggage entry `key` in the current context, if there is one.
pub fn baggage(key: &str) -> Option<String> {
    Context::map_current(|cx| cx.baggage().get(key).map(|v| v.as_str().to_owned()))
}

/// A span processor that copies chosen baggage members onto every span started in their
/// context, as attributes named by the baggage key: with `run.id` in baggage, the send
/// spans, the consumers' process spans and every span inside a handler say which run they
/// belong to, in the journal and in any backend. Members that are not there are skipped.
/// (What OpenTelemetry's contrib `BaggageSpanProcessor` does in Java, JavaScript and
/// Python.) Add it with [`TelemetryBuilder::record_baggage`](crate::TelemetryBuilder::record_baggage).
///
/// Only recorded spans pay for it; a process span under
/// [`ParentPolicy::Link`](crate::ParentPolicy) starts without the producer's baggage, so
/// records none of it.
#[derive(Debug, Clone)]
pub struct BaggageAttributes {
    keys: std::sync::Arc<[Key]>,
}

impl BaggageAttributes {
    /// Record the baggage members named `keys`.
    pub fn new<K: Into<Key>>(keys: impl IntoIterator<Item = K>) -> BaggageAttributes {
        BaggageAttributes {
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// The baggage keys recorded.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }
}

impl SpanProcessor for BaggageAttributes {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        let baggage = cx.baggage();
        if baggage.is_empty() {
            return;
        }
        for key in self.keys.iter() {
            if let Some(value) = baggage.get(key.as_str()) {
                span.set_attribute(KeyValue::new(key.clone(), value.clone()));
            }
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

//! Broker-agnostic context propagation: which headers carry a trace across a hop, how they
//! are written, and how they are read safely.
//!
//! [`Propagation`] writes W3C `traceparent`/`tracestate` and `baggage` (with its own
//! codec, or any OpenTelemetry propagator you configure), optionally the article's
//! `x-trace-id` headers, and a `tracehop-sent-at` timestamp for queue time. On the way in
//! it reads a message's headers once ([`ReadCarrier::for_each`]), validates `traceparent`
//! strictly and parses it in the same pass, trims `tracestate` and `baggage` to the W3C
//! limits by dropping whole members, and tells you why context was rejected or left out.
//! Nothing here panics on input, and nothing here fails a message.
//!
//! Headers a message repeats (Kafka and NATS allow it) follow W3C Trace Context: more
//! than one `traceparent` is rejected ([`Rejection::Repeated`]: a new trace starts);
//! several `tracestate` or `baggage` headers are joined in order with commas, then
//! limited. A `tracestate` that names a key twice, does not parse, or is not text, and a
//! `baggage` that is not text, are left out while the trace goes on
//! ([`Extracted::discarded`], [`Discarded`]). A header of a type that cannot carry text
//! (AMQP integers, tables …, see [`HeaderValue::Typed`]) is rejected or left out with the
//! type as the reason (`traceparent wrong-type:integer`). For the single-valued
//! `tracehop-sent-at`, `tracehop-attempt` and `x-*` headers the last value counts.
//!
//! ```
//! use std::collections::HashMap;
//! use tracehop::propagation::{Propagation, Rejection};
//!
//! let propagation = Propagation::default();
//! let mut headers = HashMap::new();
//! headers.insert("traceparent".to_string(), "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string());
//! let extracted = propagation.extract(&headers);
//! assert_eq!(extracted.rejected, Some(Rejection::ZeroTraceId));
//! assert!(!extracted.has_parent());
//! ```

mod carrier;
mod extract;
pub mod limits;
pub mod simple;
pub mod traceparent;
mod w3c;

use std::fmt;
use std::time::SystemTime;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

#[cfg(any(feature = "nats", feature = "amqp"))]
pub(crate) use carrier::WALK_HEADERS;
pub use carrier::{AsciiValue, HeaderValue, ReadCarrier, ValueType, WriteCarrier};
pub(crate) use carrier::{ExtractBridge, InjectBridge};
pub use extract::Discarded;
pub use traceparent::Rejection;

use extract::{Scan, Unreadable};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace state header.
pub const TRACESTATE: &str = "tracestate";
/// The W3C baggage header.
pub const BAGGAGE: &str = "baggage";
/// The header in which the producer records when it sent the message (Unix microseconds),
/// so the consumer can compute queue time on brokers that carry no timestamp of their own.
pub const SENT_AT: &str = "tracehop-sent-at";

/// The header in which a consumer that forwards a failed message (to a retry or
/// dead-letter destination) records which delivery attempt the forwarded message will be,
/// counting from 1. Read back by [`attempt`].
pub const ATTEMPT: &str = "tracehop-attempt";

/// The attempt number a message carries in the [`ATTEMPT`] header, if any (and valid).
///
/// [`Propagation::extract`] reads it too, in the same pass as the context
/// ([`Extracted::attempt`]).
pub fn attempt(carrier: &dyn ReadCarrier) -> Option<u32> {
    carrier.get(ATTEMPT).and_then(extract::parse_attempt)
}

/// Every header tracehop reads or writes.
const READ_HEADERS: [&str; 8] = [
    TRACEPARENT,
    TRACESTATE,
    BAGGAGE,
    SENT_AT,
    ATTEMPT,
    simple::X_TRACE_ID,
    simple::X_SPAN_ID,
    simple::X_PARENT_SPAN_ID,
];

/// The `&'static` name of a header tracehop writes or reads, if `key` is one: carriers
/// that store header names use it to skip copying the name.
#[cfg_attr(not(any(feature = "kafka", feature = "nats")), allow(dead_code))]
pub(crate) fn known_header(key: &str) -> Option<&'static str> {
    READ_HEADERS.into_iter().find(|name| *name == key)
}

/// How trace context crosses a hop: the propagator, the optional simple headers and the
/// send timestamp.
///
/// Built once per [`Telemetry`](crate::Telemetry) handle; no global propagator is used.
pub struct Propagation {
    codec: Codec,
    read_simple: bool,
    write_simple: bool,
    sent_at: bool,
}

/// How the trace context itself is encoded.
enum Codec {
    /// W3C Trace Context, and W3C Baggage if `baggage`: tracehop's direct codec.
    W3c { baggage: bool },
    /// Any OpenTelemetry propagator.
    Custom(Box<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = match &self.codec {
            Codec::W3c { baggage: true } => {
                vec![TRACEPARENT.into(), TRACESTATE.into(), BAGGAGE.into()]
            }
            Codec::W3c { baggage: false } => vec![TRACEPARENT.into(), TRACESTATE.into()],
            Codec::Custom(p) => p.fields().map(str::to_owned).collect(),
        };
        f.debug_struct("Propagation")
            .field("fields", &fields)
            .field("read_simple", &self.read_simple)
            .field("write_simple", &self.write_simple)
            .field("sent_at", &self.sent_at)
            .finish()
    }
}

impl Default for Propagation {
    /// W3C trace context and baggage; simple headers read but not written; send timestamp
    /// written.
    fn default() -> Self {
        Propagation {
            codec: Codec::W3c { baggage: true },
            read_simple: true,
            write_simple: false,
            sent_at: true,
        }
    }
}

/// Where the context adopted from a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextSource {
    /// The configured propagator (W3C `traceparent` by default).
    Propagator,
    /// The article's `x-trace-id` headers.
    SimpleHeaders,
    /// The message carried no usable trace context.
    None,
}

/// The result of reading a message's headers.
///
/// Its [`context`](Self::context) (the remote parent and the baggage) is built when first
/// asked for: a consumer whose sampler drops the message's span makes its own child
/// context from the parts and never builds this one.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The remote parent's span context; invalid when the message had none.
    remote: SpanContext,
    /// The message's baggage (and whatever else a custom propagator extracted): the
    /// context whose span is `remote`.
    base: Context,
    /// `base` with `remote` as its span (`base` alone without a valid parent).
    context: std::sync::OnceLock<Context>,
    /// Where the context came from.
    pub source: ContextSource,
    /// Why incoming context was ignored, if it was.
    pub rejected: Option<Rejection>,
    /// A trace id to join as a new root, from `x-trace-id` without a span id.
    pub join_trace: Option<TraceId>,
    /// When the producer sent the message, from the `tracehop-sent-at` header.
    pub sent_at: Option<SystemTime>,
    /// The delivery attempt a forwarded message carries in `tracehop-attempt`.
    pub attempt: Option<u32>,
    /// `tracestate` or `baggage` headers left out while the trace went on, and why.
    pub discarded: Vec<Discarded>,
}

impl Extracted {
    fn from_parts(remote: SpanContext, base: Context) -> Extracted {
        Extracted {
            remote,
            base,
            context: std::sync::OnceLock::new(),
            source: ContextSource::None,
            rejected: None,
            join_trace: None,
            sent_at: None,
            attempt: None,
            discarded: Vec::new(),
        }
    }

    /// The remote parent (if any) and baggage, as one context. Never the ambient context:
    /// a consumer does not inherit whatever happens to be current where it runs.
    pub fn context(&self) -> &Context {
        self.context.get_or_init(|| self.make_context())
    }

    /// The remote parent (if valid) with the baggage, made now.
    fn make_context(&self) -> Context {
        if self.remote.is_valid() {
            self.base.with_remote_span_context(self.remote.clone())
        } else {
            self.base.clone()
        }
    }

    /// [`context`](Self::context) as a value, made without being kept when it was not
    /// made before (a span's parent is taken once: keeping it would cost more than making
    /// it).
    pub(crate) fn to_context(&self) -> Context {
        match self.context.get() {
            Some(cx) => cx.clone(),
            None => self.make_context(),
        }
    }

    /// The remote parent's span context: invalid (see [`SpanContext::is_valid`]) when the
    /// message carried none that could be used.
    pub fn span_context(&self) -> &SpanContext {
        &self.remote
    }

    /// Whether a valid remote parent span was found.
    pub fn has_parent(&self) -> bool {
        self.remote.is_valid()
    }

    /// The message's baggage and other extracted entries, without the remote span.
    pub(crate) fn base(&self) -> &Context {
        &self.base
    }

    /// Make `cx` the extracted context (its span the remote parent).
    pub(crate) fn set_context(&mut self, cx: Context) {
        self.remote = cx.span().span_context().clone();
        self.base = cx.clone();
        self.context = std::sync::OnceLock::from(cx);
    }
}

impl Propagation {
    /// Use `propagator` instead of W3C trace context + baggage (for example a composite
    /// that also speaks B3 or Jaeger). `traceparent` is still validated strictly and
    /// `tracestate`/`baggage` limited before the propagator sees them.
    pub fn with_propagator(
        mut self,
        propagator: impl TextMapPropagator + Send + Sync + 'static,
    ) -> Self {
        self.codec = Codec::Custom(Box::new(propagator));
        self
    }

    /// Propagate W3C baggage along with the trace context (on by default; only for the
    /// default W3C format).
    pub fn baggage(mut self, yes: bool) -> Self {
        if let Codec::W3c { baggage } = &mut self.codec {
            *baggage = yes;
        }
        self
    }

    /// The same settings through OpenTelemetry's own `TraceContextPropagator` and
    /// `BaggagePropagator` instead of tracehop's direct codec. Equivalent output; for
    /// comparison and benchmarks.
    pub fn sdk_w3c() -> Self {
        Propagation::default().with_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    }

    /// Also write the article's `x-trace-id`, `x-span-id` and `x-parent-span-id` headers.
    pub fn write_simple_headers(mut self, yes: bool) -> Self {
        self.write_simple = yes;
        self
    }

    /// Read the article's simple headers when no `traceparent` is present (on by default).
    pub fn read_simple_headers(mut self, yes: bool) -> Self {
        self.read_simple = yes;
        self
    }

    /// Write the `tracehop-sent-at` header used for queue time (on by default).
    pub fn write_sent_at(mut self, yes: bool) -> Self {
        self.sent_at = yes;
        self
    }

    /// Write the context of `cx` into `carrier`. Never fails; headers the carrier cannot
    /// store are skipped by the carrier.
    pub fn inject(&self, cx: &Context, carrier: &mut dyn WriteCarrier) {
        self.inject_sent_at(cx, carrier, None, false);
    }

    /// [`inject`](Self::inject), with `sent_at` as the send time when the caller already
    /// read the clock (a send span's start time), so it is read once per message; with
    /// `stamped`, the broker or client timestamps the message itself (a Kafka record,
    /// JetStream), so `tracehop-sent-at` is not written.
    pub(crate) fn inject_sent_at(
        &self,
        cx: &Context,
        carrier: &mut dyn WriteCarrier,
        sent_at: Option<SystemTime>,
        stamped: bool,
    ) {
        match &self.codec {
            Codec::W3c { baggage } => w3c::inject(cx, *baggage, carrier),
            Codec::Custom(p) => p.inject_context(cx, &mut InjectBridge(&mut *carrier)),
        }
        if self.write_simple {
            let span = cx.span();
            let sc = span.span_context();
            if sc.is_valid() {
                let span_id = sc.span_id().to_string();
                carrier.set(simple::X_TRACE_ID, sc.trace_id().to_string());
                carrier.set(simple::X_PARENT_SPAN_ID, span_id.clone());
                carrier.set(simple::X_SPAN_ID, span_id);
            }
        }
        if self.sent_at && !stamped {
            let now = sent_at.unwrap_or_else(SystemTime::now);
            let micros = crate::time::unix_micros(now);
            carrier.set_ascii(
                SENT_AT,
                AsciiValue::new(itoa::Buffer::new().format(micros).to_owned()),
            );
        }
    }

    /// Whether a send of a message the broker does not timestamp (`stamped` false) writes
    /// `tracehop-sent-at` (and so reads the clock).
    pub(crate) fn writes_sent_at(&self, stamped: bool) -> bool {
        self.sent_at && !stamped
    }

    /// Read the context a message carries, in one pass over its headers. Never fails and
    /// never panics: bad context is reported in [`Extracted::rejected`] (a new trace
    /// starts) or [`Extracted::discarded`] (the trace goes on without that header) and
    /// otherwise ignored. The rules for repeated and malformed headers are in the
    /// [`propagation`](self) docs.
    pub fn extract(&self, carrier: &dyn ReadCarrier) -> Extracted {
        let scan = Scan::of(carrier);
        let mut rejected = None;
        let mut discarded = Vec::new();
        let traceparent = match (scan.traceparents, scan.traceparent) {
            (1, Some(HeaderValue::Bytes(raw))) => traceparent::parse(raw)
                .map_err(|why| rejected = Some(why))
                .ok(),
            (1, Some(HeaderValue::Typed(t))) => {
                rejected = Some(Rejection::WrongType(t));
                None
            }
            (0, _) | (_, None) => None,
            _ => {
                rejected = Some(Rejection::Repeated);
                None
            }
        };
        // tracestate belongs to its traceparent: without a valid one it is meaningless.
        let tracestate = match traceparent {
            Some(_) => tracestate_text(&scan, &mut discarded),
            None => None,
        };
        let reads_baggage = !matches!(self.codec, Codec::W3c { baggage: false });
        let baggage = match scan.baggage.text() {
            _ if !reads_baggage => None,
            Ok(text) => text,
            Err(why) => {
                discarded.push(match why {
                    Unreadable::NotUtf8 => Discarded::BaggageNotUtf8,
                    Unreadable::WrongType(t) => Discarded::BaggageWrongType(t),
                });
                None
            }
        };
        let mut extracted = match &self.codec {
            Codec::W3c { .. } => {
                let remote = match traceparent {
                    Some(tp) => SpanContext::new(
                        tp.trace_id,
                        tp.span_id,
                        tp.flags,
                        true,
                        w3c::trace_state(tracestate.as_deref(), &mut discarded),
                    ),
                    None => SpanContext::empty_context(),
                };
                let base = match &baggage {
                    Some(b) => w3c::extract_baggage(Context::new(), &limits::limit_baggage(b)),
                    None => Context::new(),
                };
                Extracted::from_parts(remote, base)
            }
            Codec::Custom(propagator) => {
                let bridge = ExtractBridge {
                    carrier,
                    traceparent: traceparent.map(|tp| tp.text()),
                    tracestate: tracestate
                        .as_deref()
                        .map(limits::limit_tracestate)
                        .filter(|ts| {
                            let unique = !extract::has_duplicate_keys(ts);
                            if !unique {
                                discarded.push(Discarded::TracestateDuplicateKeys);
                            }
                            unique
                        }),
                    baggage: baggage.as_deref().map(limits::limit_baggage),
                };
                let mut extracted =
                    Extracted::from_parts(SpanContext::empty_context(), Context::new());
                extracted.set_context(propagator.extract_with_context(&Context::new(), &bridge));
                extracted
            }
        };
        if extracted.has_parent() {
            extracted.source = ContextSource::Propagator;
        } else if rejected.is_none() && self.read_simple {
            match simple::extract_values(scan.x_trace_id, scan.x_span_id, scan.x_parent_span_id) {
                Ok(Some(simple::SimpleContext::Parent(sc))) => {
                    extracted.remote = sc;
                    extracted.context = std::sync::OnceLock::new();
                    extracted.source = ContextSource::SimpleHeaders;
                }
                Ok(Some(simple::SimpleContext::TraceOnly(trace_id))) => {
                    extracted.join_trace = Some(trace_id);
                    extracted.source = ContextSource::SimpleHeaders;
                }
                Ok(None) => {}
                Err(why) => rejected = Some(why),
            }
        }
        extracted.rejected = rejected;
        extracted.sent_at = scan
            .sent_at
            .and_then(extract::parse_decimal)
            .and_then(crate::time::from_unix_micros);
        extracted.attempt = scan.attempt.and_then(extract::parse_attempt);
        extracted.discarded = discarded;
        extracted
    }
}

/// The combined `tracestate` text, or why it is left out.
fn tracestate_text<'s>(
    scan: &'s Scan<'_>,
    discarded: &mut Vec<Discarded>,
) -> Option<std::borrow::Cow<'s, str>> {
    match scan.tracestate.text() {
        Ok(text) => text,
        Err(why) => {
            discarded.push(match why {
                Unreadable::NotUtf8 => Discarded::TracestateNotUtf8,
                Unreadable::WrongType(t) => Discarded::TracestateWrongType(t),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests;

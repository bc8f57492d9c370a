//! Spans the journal records itself. When a handle's only span processor is one journal,
//! tracehop's own send and process spans skip the SDK's `Span` and `SpanData`: the span's
//! fields are kept in a [`JournalSpan`] and its line is written from them when it ends,
//! as the SDK's span would have been written (the same sampler, the same limits, the same
//! line). Spans made any other way (a user's, `tracing`'s, a batch span) still go through
//! the SDK to the same journal, and a handle with any other span processor, a sampler it
//! does not know or span limits from the environment uses the SDK for every span (see
//! `TelemetryBuilder::build`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};

use super::line::Finished;
use super::processor::Shared;

/// The SDK's default span limits, which a handle built by tracehop keeps (links: the
/// 4,096 the builder sets).
const MAX_ATTRIBUTES: usize = 128;
const MAX_EVENTS: usize = 128;
const MAX_LINKS: usize = 4096;
const MAX_ATTRIBUTES_PER_EVENT: usize = 128;
const MAX_ATTRIBUTES_PER_LINK: usize = 128;

/// Cut `attributes` to `max`, as the SDK does; how many were dropped.
fn limit(attributes: &mut Vec<KeyValue>, max: usize) -> u32 {
    let dropped = attributes.len().saturating_sub(max);
    attributes.truncate(max);
    u32::try_from(dropped).unwrap_or(u32::MAX)
}

/// A journal that tracehop's own spans are written to directly, with the handle's
/// sampler.
pub(crate) struct DirectJournal {
    shared: Arc<Shared>,
    /// The service name as the line writes it.
    service: Vec<u8>,
    sampler: Sampler,
}

impl fmt::Debug for DirectJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectJournal").finish_non_exhaustive()
    }
}

/// What a recorded span is made of when it starts.
pub(crate) struct SpanStart {
    pub(crate) name: SpanName,
    pub(crate) kind: SpanKind,
    pub(crate) start_time: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) links: Vec<Link>,
}

impl DirectJournal {
    /// Spans written to `shared` (a journal processor's blocks) as service `service` (its
    /// JSON), sampled by `sampler`.
    pub(crate) fn new(shared: Arc<Shared>, service: Vec<u8>, sampler: Sampler) -> DirectJournal {
        DirectJournal {
            shared,
            service,
            sampler,
        }
    }

    /// Start a span, a child of `parent` (or a root in `root_trace`, else a new trace), as
    /// the SDK's tracer would, and return `parent` with it and whether it is recorded.
    /// `decided`: the sampler already chose to record this span from its parent alone (it
    /// is not asked again). Not for a parent that suppresses telemetry (the SDK's tracer
    /// handles that).
    pub(crate) fn start(
        self: &Arc<Self>,
        span: SpanStart,
        parent: &Context,
        root_trace: Option<TraceId>,
        decided: bool,
    ) -> (Context, bool) {
        let ids = RandomIdGenerator::default();
        let parent_span = parent.span();
        let psc = Some(parent_span.span_context()).filter(|sc| sc.is_valid());
        let trace_id = match psc {
            Some(sc) => sc.trace_id(),
            None => root_trace.unwrap_or_else(|| ids.new_trace_id()),
        };
        let span_id = ids.new_span_id();
        let flags = psc.map_or_else(TraceFlags::default, |sc| sc.trace_flags());
        let SpanStart {
            name,
            kind,
            start_time,
            mut attributes,
            mut links,
        } = span;
        let (decision, trace_state) = if decided {
            let state = psc.map(|sc| sc.trace_state().clone()).unwrap_or_default();
            (SamplingDecision::RecordAndSample, state)
        } else {
            let result = self.sampler.should_sample(
                Some(parent),
                trace_id,
                name.as_str(),
                &kind,
                &attributes,
                &links,
            );
            attributes.extend(result.attributes);
            (result.decision, result.trace_state)
        };
        let sampled = match decision {
            SamplingDecision::RecordAndSample => true,
            SamplingDecision::RecordOnly => false,
            SamplingDecision::Drop => {
                let sc =
                    SpanContext::new(trace_id, span_id, TraceFlags::default(), false, trace_state);
                let span = JournalSpan {
                    span_context: sc,
                    open: None,
                    journal: self.clone(),
                };
                return (parent.with_span(span), false);
            }
        };
        attributes.truncate(MAX_ATTRIBUTES);
        links.truncate(MAX_LINKS);
        for link in &mut links {
            link.dropped_attributes_count = limit(&mut link.attributes, MAX_ATTRIBUTES_PER_LINK);
        }
        let sc = SpanContext::new(
            trace_id,
            span_id,
            flags.with_sampled(sampled),
            false,
            trace_state,
        );
        let parent_span_id = psc.map_or(SpanId::INVALID, SpanContext::span_id);
        let span = JournalSpan {
            span_context: sc,
            open: Some(Open {
                parent_span_id,
                kind,
                name,
                start_time,
                attributes,
                events: Vec::new(),
                links,
                status: Status::Unset,
            }),
            journal: self.clone(),
        };
        (parent.with_span(span), true)
    }
}

/// A span whose line the journal writes when it ends (or is dropped).
pub(crate) struct JournalSpan {
    span_context: SpanContext,
    /// `None` once ended, or if it is not recorded.
    open: Option<Open>,
    journal: Arc<DirectJournal>,
}

/// A span's name: shared when the journal records the span (a service's spans have a few
/// names, see `messaging::names`), owned when the SDK does (it wants its own) or when the
/// span was renamed.
pub(crate) enum SpanName {
    /// A kept name, and whether it is written in JSON as it is (checked when it was made).
    Shared(Arc<str>, bool),
    Owned(Cow<'static, str>),
}

impl SpanName {
    fn as_str(&self) -> &str {
        match self {
            SpanName::Shared(name, _) => name,
            SpanName::Owned(name) => name,
        }
    }

    /// Whether the name is known to need no JSON escape.
    fn is_clean(&self) -> bool {
        matches!(self, SpanName::Shared(_, true))
    }

    /// The name as the SDK's span builder takes it.
    pub(crate) fn into_cow(self) -> Cow<'static, str> {
        match self {
            SpanName::Shared(name, _) => Cow::Owned(String::from(&*name)),
            SpanName::Owned(name) => name,
        }
    }
}

struct Open {
    parent_span_id: SpanId,
    kind: SpanKind,
    name: SpanName,
    start_time: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    links: Vec<Link>,
    status: Status,
}

impl fmt::Debug for JournalSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalSpan")
            .field("span_context", &self.span_context)
            .field("recording", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl opentelemetry::trace::Span for JournalSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        mut attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if let Some(open) = &mut self.open {
            if open.events.len() < MAX_EVENTS {
                let dropped = limit(&mut attributes, MAX_ATTRIBUTES_PER_EVENT);
                open.events
                    .push(Event::new(name, timestamp, attributes, dropped));
            }
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    fn is_recording(&self) -> bool {
        self.open.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(open) = &mut self.open {
            if open.attributes.len() < MAX_ATTRIBUTES {
                open.attributes.push(attribute);
            }
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(open) = &mut self.open {
            // Ok > Error > Unset, as the SDK orders them: `Ok` (what nearly every span
            // ends with) always wins, without comparing.
            if matches!(status, Status::Ok) || status > open.status {
                open.status = status;
            }
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(open) = &mut self.open {
            open.name = SpanName::Owned(new_name.into());
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        if let Some(open) = &mut self.open {
            if open.links.len() < MAX_LINKS {
                let dropped = limit(&mut attributes, MAX_ATTRIBUTES_PER_LINK);
                open.links
                    .push(Link::new(span_context, attributes, dropped));
            }
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.finish(Some(timestamp));
    }
}

impl JournalSpan {
    fn finish(&mut self, timestamp: Option<SystemTime>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let journal = &self.journal;
        if journal.shared.is_shut_down() {
            // As the SDK: a span that ends after the shutdown is not recorded.
            return;
        }
        let end_time = timestamp.unwrap_or_else(opentelemetry::time::now);
        journal.shared.write_span(
            &Finished {
                span_context: &self.span_context,
                parent_span_id: open.parent_span_id,
                name: open.name.as_str(),
                clean_name: open.name.is_clean(),
                span_kind: &open.kind,
                start_time: open.start_time,
                end_time,
                status: &open.status,
                attributes: &open.attributes,
                events: &open.events,
                links: &open.links,
            },
            &journal.service,
        );
        crate::messaging::recycle_attributes(open.attributes);
    }
}

impl Drop for JournalSpan {
    /// A span dropped without being ended ends now, as the SDK's does.
    fn drop(&mut self) {
        self.finish(None);
    }
}

//! What a [`Telemetry`](crate::Telemetry) handle lets the user add to every send and
//! process span it opens: [`Hooks`] (skip tracing for some messages, add attributes from
//! the message, name high-cardinality destinations by a template) and [`HeaderCapture`]
//! (chosen headers as `messaging.header.<name>` attributes).
//!
//! ```
//! use tracehop::messaging::{HeaderCapture, Hooks, Operation};
//! use tracehop::Telemetry;
//!
//! let hooks = Hooks::new()
//!     // Health checks are delivered and settled as always, but not traced.
//!     .filter(|msg| !msg.destination.starts_with("health."))
//!     .enrich(|msg, attributes| {
//!         if let Some(tenant) = msg.header("x-tenant") {
//!             attributes.push(opentelemetry::KeyValue::new("app.tenant", tenant.to_owned()));
//!         }
//!     })
//!     // `orders.eu.1234` -> `orders.eu.*`: bounded span names and metric series.
//!     .destination_template(|system, destination| {
//!         (system == "nats" && destination.starts_with("orders."))
//!             .then(|| format!("{}.*", destination.rsplit_once('.').map_or(destination, |(p, _)| p)))
//!     });
//! let telemetry = Telemetry::builder("svc")
//!     .hooks(hooks)
//!     .capture_headers(HeaderCapture::new(["x-request-id"]))
//!     .build();
//! # let _ = (telemetry, Operation::Send);
//! ```

use std::fmt;
use std::sync::Arc;

use opentelemetry::{Array, Key, KeyValue, StringValue, Value};

use crate::propagation::{HeaderValue, ReadCarrier};

/// Which side of a hop a hook is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// A send (publish) span.
    Send,
    /// A process span.
    Process,
}

/// A message as the hooks see it.
#[non_exhaustive]
pub struct MessageRef<'a> {
    /// `messaging.system`.
    pub system: &'static str,
    /// The destination (topic, subject, queue or exchange).
    pub destination: &'a str,
    /// Send or process.
    pub operation: Operation,
    /// The message's headers: a delivery's, or on the send side the headers the adapter
    /// can read back (`None` when it cannot).
    pub headers: Option<&'a dyn ReadCarrier>,
}

impl fmt::Debug for MessageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRef")
            .field("system", &self.system)
            .field("destination", &self.destination)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<'a> MessageRef<'a> {
    /// The text of header `name`, if the message has it as UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .and_then(|h| h.get(name))
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

type Filter = dyn Fn(&MessageRef<'_>) -> bool + Send + Sync;
type Enrich = dyn Fn(&MessageRef<'_>, &mut Vec<KeyValue>) + Send + Sync;
type Template = dyn Fn(&'static str, &str) -> Option<String> + Send + Sync;

/// User hooks called by the core on every send and process span of a handle.
#[derive(Clone, Default)]
pub struct Hooks {
    pub(crate) filter: Option<Arc<Filter>>,
    pub(crate) enrich: Option<Arc<Enrich>>,
    pub(crate) template: Option<Arc<Template>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("filter", &self.filter.is_some())
            .field("enrich", &self.enrich.is_some())
            .field("destination_template", &self.template.is_some())
            .finish()
    }
}

impl Hooks {
    /// No hooks.
    pub fn new() -> Hooks {
        Hooks::default()
    }

    /// Trace only the messages `keep` returns `true` for. A message it rejects gets no
    /// span, no metrics and, on the send side, no context headers (it goes out as the
    /// plain client sends it); a delivery it rejects is handed to the handler (outside
    /// any span) and settled exactly as any other. Called before anything is described,
    /// with the system, destination and, for deliveries, the headers.
    pub fn filter(
        mut self,
        keep: impl Fn(&MessageRef<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(keep));
        self
    }

    /// Add attributes taken from the message to its send or process span (called only
    /// for spans that are recorded).
    pub fn enrich(
        mut self,
        enrich: impl Fn(&MessageRef<'_>, &mut Vec<KeyValue>) + Send + Sync + 'static,
    ) -> Self {
        self.enrich = Some(Arc::new(enrich));
        self
    }

    /// Name destinations by a template (`messaging.destination.template`): for a system
    /// and a destination, the template to use instead, or `None` to keep the name. The
    /// span is named after the template and metrics are recorded per template, which
    /// keeps both bounded for high-cardinality NATS subjects (nats.net's destination
    /// formatter). Called for every message (its cost is the closure's).
    pub fn destination_template(
        mut self,
        template: impl Fn(&'static str, &str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.template = Some(Arc::new(template));
        self
    }

    /// Whether the message `msg()` describes is traced (it is described only if there is a
    /// filter to ask).
    pub(crate) fn keeps<'m>(&self, msg: impl FnOnce() -> MessageRef<'m>) -> bool {
        self.filter.as_ref().is_none_or(|keep| keep(&msg()))
    }
}

/// The headers recorded as span attributes: `messaging.header.<name>`, a string array of
/// the header's values (repeated headers give several), on send and process spans.
///
/// Names are matched case-insensitively and recorded in lower case. The context headers
/// (`traceparent`, `tracestate`, `baggage`, ...) are recorded only if named. Each value
/// is cut to [`max_value_bytes`](Self::max_value_bytes) (256 by default, at a character
/// boundary) and at most [`max_values`](Self::max_values) (8) values are kept per header.
#[derive(Debug, Clone)]
pub struct HeaderCapture {
    headers: Vec<(String, Key)>,
    max_value_bytes: usize,
    max_values: usize,
}

impl HeaderCapture {
    /// Capture the headers `names`.
    pub fn new<N: AsRef<str>>(names: impl IntoIterator<Item = N>) -> HeaderCapture {
        HeaderCapture {
            headers: names
                .into_iter()
                .map(|n| {
                    let name = n.as_ref().to_ascii_lowercase();
                    let key = Key::new(format!("messaging.header.{name}"));
                    (name, key)
                })
                .collect(),
            max_value_bytes: 256,
            max_values: 8,
        }
    }

    /// The most bytes kept of each value.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The most values kept per header.
    pub fn max_values(mut self, values: usize) -> Self {
        self.max_values = values;
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The attributes of the named headers `headers` holds, appended to `out`.
    pub(crate) fn capture(&self, headers: &dyn ReadCarrier, out: &mut Vec<KeyValue>) {
        let mut found: Vec<Vec<StringValue>> = vec![Vec::new(); self.headers.len()];
        headers.for_each(&mut |name, value| {
            let Some(i) = self
                .headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
            else {
                return;
            };
            if found[i].len() >= self.max_values {
                return;
            }
            let text = match value {
                HeaderValue::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                HeaderValue::Typed(kind) => format!("{kind:?}").to_ascii_lowercase(),
            };
            found[i].push(self.cut(text).into());
        });
        for ((_, key), values) in self.headers.iter().zip(found) {
            if !values.is_empty() {
                out.push(KeyValue::new(
                    key.clone(),
                    Value::Array(Array::String(values)),
                ));
            }
        }
    }

    fn cut(&self, mut text: String) -> String {
        if text.len() > self.max_value_bytes {
            let mut end = self.max_value_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::{Array, KeyValue, Value};

    use super::HeaderCapture;

    #[test]
    fn capture_keeps_named_headers_cut_at_a_character_boundary() {
        let headers: HashMap<String, String> = [
            ("X-Tenant".to_owned(), "ééé-acme".to_owned()),
            ("traceparent".to_owned(), "00-abc".to_owned()),
            ("other".to_owned(), "x".to_owned()),
        ]
        .into_iter()
        .collect();
        let mut out = Vec::new();
        HeaderCapture::new(["x-tenant", "absent"])
            .max_value_bytes(5)
            .capture(&headers, &mut out);
        // 5 bytes would split the third `é`: cut to 4.
        assert_eq!(
            out,
            [KeyValue::new(
                "messaging.header.x-tenant",
                Value::Array(Array::String(vec!["éé".into()]))
            )]
        );
        let mut out = Vec::new();
        HeaderCapture::new(["TRACEPARENT"]).capture(&headers, &mut out);
        assert_eq!(out.len(), 1, "context headers when named: {out:?}");
        assert_eq!(out[0].key.as_str(), "messaging.header.traceparent");
    }
}

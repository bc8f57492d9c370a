//! The header carrier traits a broker adapter implements, and their bridges to
//! OpenTelemetry's `Injector`/`Extractor`.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::{Extractor, Injector};

/// Read access to a message's headers.
///
/// Values are bytes because brokers carry bytes: Kafka header values and AMQP byte arrays
/// need not be UTF-8. tracehop decides what to do with a value that is not valid text
/// (it rejects it as context and says so), so an adapter never has to.
///
/// Extraction reads a message's headers once, through [`for_each`](Self::for_each). Its
/// default asks [`get`](Self::get) for each header tracehop reads, which is all a carrier
/// with unique header names needs; a carrier whose messages can repeat a header (Kafka,
/// NATS), or can say a value's type (AMQP), or can walk its headers faster than it can
/// look one up, implements `for_each` itself.
///
/// ```
/// use tracehop::propagation::{HeaderValue, ReadCarrier};
///
/// /// Headers kept as a list of pairs, repeats allowed.
/// struct Pairs(Vec<(String, Vec<u8>)>);
///
/// impl ReadCarrier for Pairs {
///     fn get(&self, key: &str) -> Option<&[u8]> {
///         self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
///     }
///     fn keys(&self) -> Vec<&str> {
///         self.0.iter().map(|(k, _)| k.as_str()).collect()
///     }
///     fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
///         for (name, value) in &self.0 {
///             visit(name, HeaderValue::Bytes(value));
///         }
///     }
/// }
/// ```
pub trait ReadCarrier {
    /// The value of the header named exactly `key`, or `None` if it is absent (or null,
    /// or of a type that cannot carry text). With several headers of that name, the one
    /// the carrier documents (tracehop's carriers: Kafka the last, NATS the first).
    fn get(&self, key: &str) -> Option<&[u8]>;
    /// The names of all headers.
    fn keys(&self) -> Vec<&str>;
    /// Call `visit` with every header, in the message's order: a name repeated in the
    /// message is visited once per value. Null values may be left out.
    ///
    /// The default visits each header tracehop reads (`traceparent`, `tracestate`,
    /// `baggage`, `tracehop-sent-at`, `tracehop-attempt` and the `x-trace-id` family)
    /// once, through [`get`](Self::get).
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for name in super::READ_HEADERS {
            if let Some(value) = self.get(name) {
                visit(name, HeaderValue::Bytes(value));
            }
        }
    }
}

/// One header value, as [`ReadCarrier::for_each`] hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValue<'a> {
    /// The value's bytes: text, or bytes that may not be UTF-8.
    Bytes(&'a [u8]),
    /// A value of a type that cannot carry text (an AMQP integer or table, say). Context
    /// in such a header is rejected with the type as the reason.
    Typed(ValueType),
}

/// The type of a header value that is not text or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueType {
    /// `true` or `false`.
    Boolean,
    /// An integer of any width, signed or not.
    Integer,
    /// A floating-point number.
    Float,
    /// A decimal number.
    Decimal,
    /// A timestamp.
    Timestamp,
    /// A nested table (map).
    Table,
    /// An array.
    Array,
    /// No value (AMQP's void).
    Void,
}

/// `"<header> wrong-type:<type>"` for a `ValueType`, as a `&'static str`.
macro_rules! wrong_type {
    ($header:literal, $t:expr) => {
        match $t {
            $crate::propagation::ValueType::Boolean => concat!($header, " wrong-type:boolean"),
            $crate::propagation::ValueType::Integer => concat!($header, " wrong-type:integer"),
            $crate::propagation::ValueType::Float => concat!($header, " wrong-type:float"),
            $crate::propagation::ValueType::Decimal => concat!($header, " wrong-type:decimal"),
            $crate::propagation::ValueType::Timestamp => {
                concat!($header, " wrong-type:timestamp")
            }
            $crate::propagation::ValueType::Table => concat!($header, " wrong-type:table"),
            $crate::propagation::ValueType::Array => concat!($header, " wrong-type:array"),
            $crate::propagation::ValueType::Void => concat!($header, " wrong-type:void"),
        }
    };
}
pub(crate) use wrong_type;

impl ValueType {
    /// The type's name: `boolean`, `integer`, `float`, `decimal`, `timestamp`, `table`,
    /// `array` or `void`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Boolean => "boolean",
            ValueType::Integer => "integer",
            ValueType::Float => "float",
            ValueType::Decimal => "decimal",
            ValueType::Timestamp => "timestamp",
            ValueType::Table => "table",
            ValueType::Array => "array",
            ValueType::Void => "void",
        }
    }
}

/// Write access to a message's headers.
pub trait WriteCarrier {
    /// Set header `key` to `value`, replacing any header of the same name.
    ///
    /// tracehop only calls this for the context headers it owns (`traceparent`,
    /// `tracestate`, `baggage`, the optional `x-trace-id` family and `tracehop-sent-at`);
    /// every other header must be left exactly as it was. An implementation that cannot
    /// store a value (a client that rejects some bytes) skips it: injection never fails a
    /// publish.
    fn set(&mut self, key: &str, value: String);

    /// [`set`](Self::set) for a value tracehop wrote of visible ASCII only (`traceparent`,
    /// `tracehop-sent-at`), which an [`AsciiValue`] guarantees: a carrier that checks each
    /// value for bytes its client rejects can skip the check. By default the same as
    /// `set`.
    fn set_ascii(&mut self, key: &str, value: AsciiValue) {
        self.set(key, value.into_string());
    }

    /// The same headers for reading, when the carrier can read them back (for header
    /// capture and hooks on the send side); `None` by default.
    fn readable(&self) -> Option<&dyn ReadCarrier> {
        None
    }
}

/// A broker adapter looking for one or two headers of its own (`Nats-Msg-Id`, RabbitMQ's
/// redelivery counts) walks a header map of up to this many entries, comparing names,
/// instead of looking each name up (hashing it, or comparing it on the way down a tree):
/// a message has a few headers, and the walk costs less.
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
pub(crate) const WALK_HEADERS: usize = 8;

/// A header value of visible ASCII only (bytes `!` to `~`), as tracehop writes
/// `traceparent` and `tracehop-sent-at`: only tracehop makes one, so a carrier may rely
/// on it (see [`WriteCarrier::set_ascii`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsciiValue(String);

impl AsciiValue {
    /// `value`, which the caller built of visible ASCII only.
    pub(crate) fn new(value: String) -> AsciiValue {
        debug_assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value:?}");
        AsciiValue(value)
    }

    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, as the `String` [`WriteCarrier::set`] takes.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<S: std::hash::BuildHasher> ReadCarrier for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        HashMap::get(self, key).map(|v| v.as_bytes())
    }
    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
    }
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for (name, value) in self {
            visit(name, HeaderValue::Bytes(value.as_bytes()));
        }
    }
}

impl<S: std::hash::BuildHasher> WriteCarrier for HashMap<String, String, S> {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }

    fn readable(&self) -> Option<&dyn ReadCarrier> {
        Some(self)
    }
}

impl<S: std::hash::BuildHasher> ReadCarrier for HashMap<String, Vec<u8>, S> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        HashMap::get(self, key).map(Vec::as_slice)
    }
    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
    }
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for (name, value) in self {
            visit(name, HeaderValue::Bytes(value));
        }
    }
}

impl<S: std::hash::BuildHasher> WriteCarrier for HashMap<String, Vec<u8>, S> {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value.into_bytes());
    }
}

impl ReadCarrier for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        BTreeMap::get(self, key).map(|v| v.as_bytes())
    }
    fn keys(&self) -> Vec<&str> {
        BTreeMap::keys(self).map(String::as_str).collect()
    }
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for (name, value) in self {
            visit(name, HeaderValue::Bytes(value.as_bytes()));
        }
    }
}

impl WriteCarrier for BTreeMap<String, String> {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

impl<T: ReadCarrier + ?Sized> ReadCarrier for &T {
    fn get(&self, key: &str) -> Option<&[u8]> {
        (**self).get(key)
    }
    fn keys(&self) -> Vec<&str> {
        (**self).keys()
    }
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        (**self).for_each(visit);
    }
}

/// Lets an OpenTelemetry propagator write into a [`WriteCarrier`].
pub(crate) struct InjectBridge<'a>(pub(crate) &'a mut dyn WriteCarrier);

impl Injector for InjectBridge<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}

/// Lets an OpenTelemetry propagator read a [`ReadCarrier`], with the W3C headers replaced
/// by their validated and size-limited forms.
pub(crate) struct ExtractBridge<'a> {
    pub(crate) carrier: &'a dyn ReadCarrier,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) tracestate: Option<std::borrow::Cow<'a, str>>,
    pub(crate) baggage: Option<std::borrow::Cow<'a, str>>,
}

impl Extractor for ExtractBridge<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            super::TRACEPARENT => self.traceparent,
            super::TRACESTATE => self.tracestate.as_deref(),
            super::BAGGAGE => self.baggage.as_deref(),
            other => self
                .carrier
                .get(other)
                .and_then(|v| std::str::from_utf8(v).ok()),
        }
    }
    fn keys(&self) -> Vec<&str> {
        self.carrier.keys()
    }
}

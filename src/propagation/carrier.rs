//! The header carrier traits a broker adapter implements, and their bridges to
//! OpenTelemetry's `Injector`/`Extractor`.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::{Extractor, Injector};

/// Read access to a message's headers.
///
/// Values are bytes because brokers carry bytes: Kafka header values and AMQP byte arrays
/// need not be UTF-8. tracehop decides what to do with a value that is not valid text
/// (it rejects it as context and says so), so an adapter never has to.
pub trait ReadCarrier {
    /// The value of the header named exactly `key`, or `None` if it is absent (or null).
    fn get(&self, key: &str) -> Option<&[u8]>;
    /// The names of all headers.
    fn keys(&self) -> Vec<&str>;
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
}

impl<S: std::hash::BuildHasher> ReadCarrier for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        HashMap::get(self, key).map(|v| v.as_bytes())
    }
    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
    }
}

impl<S: std::hash::BuildHasher> WriteCarrier for HashMap<String, String, S> {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

impl<S: std::hash::BuildHasher> ReadCarrier for HashMap<String, Vec<u8>, S> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        HashMap::get(self, key).map(Vec::as_slice)
    }
    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
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

//! async-nats' [`HeaderMap`] as a header carrier, and how the context headers join a user's
//! headers on the way out.
//!
//! async-nats panics when its infallible conversions (`&str`/`String` into a header name or
//! value) meet a name with `:` or control characters or a value with CR/LF. Everything
//! here goes through the fallible `FromStr` constructors instead: a header the client would
//! reject is skipped, never a panic and never a failed publish.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::propagation::{AsciiValue, HeaderValue as Value, ReadCarrier, WriteCarrier};

/// The header name for `key`: tracehop's own names without copying them, others checked
/// by async-nats' fallible parser.
fn header_name(key: &str) -> Option<HeaderName> {
    match crate::propagation::known_header(key) {
        Some(name) => Some(HeaderName::from_static(name)),
        None => HeaderName::from_str(key).ok(),
    }
}

impl ReadCarrier for HeaderMap {
    /// The first value of the header named exactly `key` (names are case-sensitive in
    /// NATS, and this lookup is too).
    fn get(&self, key: &str) -> Option<&[u8]> {
        let name = header_name(key)?;
        HeaderMap::get(self, name).map(|v| v.as_str().as_bytes())
    }

    fn keys(&self) -> Vec<&str> {
        self.iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }

    /// Every value of every header: the values of a name in the order received (the
    /// order between names is the map's).
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Value<'a>)) {
        for (name, values) in self.iter() {
            for value in values {
                visit(name.as_ref(), Value::Bytes(value.as_str().as_bytes()));
            }
        }
    }
}

/// A message without headers (`Message::headers` is `None`) reads as an empty carrier.
impl ReadCarrier for Option<HeaderMap> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.as_ref().and_then(|h| ReadCarrier::get(h, key))
    }

    fn keys(&self) -> Vec<&str> {
        self.as_ref().map(ReadCarrier::keys).unwrap_or_default()
    }

    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Value<'a>)) {
        if let Some(headers) = self {
            headers.for_each(visit);
        }
    }
}

impl WriteCarrier for HeaderMap {
    /// Replace header `key` with `value`; skip it if async-nats would reject the name or the
    /// value (it would panic on them).
    fn set(&mut self, key: &str, value: String) {
        // async-nats rejects (and its infallible conversion panics on) CR and LF in values.
        if memchr::memchr2(b'\r', b'\n', value.as_bytes()).is_some() {
            return;
        }
        let Some(name) = header_name(key) else {
            return;
        };
        self.insert(name, HeaderValue::from(value));
    }

    /// The value has no CR or LF (it is visible ASCII): only the name is checked.
    fn set_ascii(&mut self, key: &str, value: AsciiValue) {
        if let Some(name) = header_name(key) {
            self.insert(name, HeaderValue::from(value.into_string()));
        }
    }

    fn readable(&self) -> Option<&dyn ReadCarrier> {
        Some(self)
    }
}

/// The bytes a header block takes on the wire, as async-nats counts them against the
/// server's `max_payload`: `NATS/1.0\r\n`, one `name: value\r\n` per value, `\r\n`.
const FRAME: usize = b"NATS/1.0\r\n".len() + b"\r\n".len();

fn entry_len(name: &HeaderName, values: &[HeaderValue]) -> usize {
    let name = AsRef::<str>::as_ref(name).len();
    values
        .iter()
        .map(|v| name + b": ".len() + v.as_str().len() + b"\r\n".len())
        .sum()
}

fn wire_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    FRAME
        + headers
            .iter()
            .map(|(k, vs)| entry_len(k, vs))
            .sum::<usize>()
}

/// The headers to publish: the user's, untouched, plus the context headers in `context`
/// (each replacing a user header of the same name, as [`WriteCarrier::set`] promises).
///
/// Returns `(headers, context_dropped)`. If adding the context would push a message that
/// fits the server's `max_payload` over it, the context is left out and the user's headers
/// go alone: injection never fails a publish. `max_payload == 0` means "unknown".
pub(crate) fn merge(
    user: Option<HeaderMap>,
    context: HeaderMap,
    payload_len: usize,
    max_payload: usize,
) -> (Option<HeaderMap>, bool) {
    if context.is_empty() {
        return (user, false);
    }
    if max_payload > 0 {
        let user_len = user.as_ref().map_or(0, wire_len);
        let mut merged_len = FRAME
            + context
                .iter()
                .map(|(k, vs)| entry_len(k, vs))
                .sum::<usize>();
        if let Some(user) = &user {
            merged_len += user
                .iter()
                .filter(|(k, _)| HeaderMap::get(&context, (*k).clone()).is_none())
                .map(|(k, vs)| entry_len(k, vs))
                .sum::<usize>();
        }
        let fits_alone = user_len.saturating_add(payload_len) <= max_payload;
        let fits_merged = merged_len.saturating_add(payload_len) <= max_payload;
        if fits_alone && !fits_merged {
            return (user, true);
        }
    }
    let Some(mut headers) = user else {
        // Nothing to merge with: the context headers are the message's headers.
        return (Some(context), false);
    };
    for (name, values) in context.iter() {
        if let Some(value) = values.first() {
            headers.insert(name.clone(), value.clone());
        }
    }
    (Some(headers), false)
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;

    use crate::propagation::{AsciiValue, WriteCarrier, TRACEPARENT};

    /// `set_ascii` stores what `set` stores, replacing a header of the same name, and
    /// skips a name async-nats would reject as `set` does.
    #[test]
    fn set_ascii_stores_what_set_stores() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (mut by_set, mut by_ascii) = (HeaderMap::new(), HeaderMap::new());
        for headers in [&mut by_set, &mut by_ascii] {
            headers.insert(TRACEPARENT, "old");
            headers.insert("user", "kept");
        }
        by_set.set(TRACEPARENT, value.to_owned());
        by_ascii.set_ascii(TRACEPARENT, AsciiValue::new(value.to_owned()));
        by_set.set("bad:name", "1".to_owned());
        by_ascii.set_ascii("bad:name", AsciiValue::new("1".to_owned()));
        assert_eq!(by_set, by_ascii);
        let got = by_ascii
            .get_all(TRACEPARENT)
            .map(|v| v.as_str())
            .collect::<Vec<_>>();
        assert_eq!(got, [value]);
        assert_eq!(by_ascii.get("user").map(|v| v.as_str()), Some("kept"));
        assert_eq!(by_ascii.len(), 2);
    }
}

//! AMQP header tables as tracehop carriers.
//!
//! Context headers are written as `LongString` (type `S`), the string type every AMQP
//! client reads. They are read back from a `LongString`, a `ShortString` or a `ByteArray`
//! (type `x`), whichever a client used; any other type reads as absent. Every other entry
//! of the table is left exactly as it was, type included.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::propagation::{ReadCarrier, WriteCarrier};

/// The bytes of a header value that can carry text: long string, short string or byte
/// array.
pub(crate) fn value_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// The bytes of header `name` of a message, if it is one of the AMQP types that carry text
/// (long string, short string, byte array), whichever a client used.
///
/// ```
/// use tracehop::amqp::header_bytes;
/// use tracehop::amqp::lapin::types::{AMQPValue, FieldTable};
/// use tracehop::amqp::lapin::BasicProperties;
///
/// let mut headers = FieldTable::default();
/// headers.insert("tenant".into(), AMQPValue::ByteArray(b"acme".to_vec().into()));
/// let properties = BasicProperties::default().with_headers(headers);
/// assert_eq!(header_bytes(&properties, "tenant"), Some(&b"acme"[..]));
/// assert_eq!(header_bytes(&properties, "missing"), None);
/// ```
pub fn header_bytes<'p>(properties: &'p BasicProperties, name: &str) -> Option<&'p [u8]> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .and_then(value_bytes)
}

/// Header `name` of a message as text, if it is a long string, short string or byte
/// array holding UTF-8.
pub fn header_text<'p>(properties: &'p BasicProperties, name: &str) -> Option<&'p str> {
    header_bytes(properties, name).and_then(|b| std::str::from_utf8(b).ok())
}

impl ReadCarrier for FieldTable {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.inner().get(key).and_then(value_bytes)
    }

    fn keys(&self) -> Vec<&str> {
        self.inner().keys().map(ShortString::as_str).collect()
    }
}

impl WriteCarrier for FieldTable {
    /// Set `key` to `value` as a `LongString`, replacing any entry of that name. A key too
    /// long for an AMQP short string (over 255 bytes) is skipped.
    fn set(&mut self, key: &str, value: String) {
        if let Ok(key) = ShortString::try_new(key) {
            self.insert(key, AMQPValue::LongString(value.into()));
        }
    }
}

/// A message's properties read as their `headers` table (no headers: no context).
impl ReadCarrier for BasicProperties {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.headers()
            .as_ref()
            .and_then(|h| ReadCarrier::get(h, key))
    }

    fn keys(&self) -> Vec<&str> {
        self.headers()
            .as_ref()
            .map(ReadCarrier::keys)
            .unwrap_or_default()
    }
}

/// Let `write` add entries to the headers of `properties`, keeping every existing entry.
/// Properties without headers get a table only if something was written.
pub(crate) fn with_headers<T>(
    properties: BasicProperties,
    write: impl FnOnce(&mut FieldTable) -> T,
) -> (BasicProperties, T) {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let out = write(&mut headers);
    if headers.inner().is_empty() && properties.headers().is_none() {
        return (properties, out);
    }
    (properties.with_headers(headers), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::TRACEPARENT;
    use lapin::types::{ByteArray, FieldArray, LongString};

    fn user_table() -> FieldTable {
        let mut nested = FieldTable::default();
        nested.insert("inner".into(), AMQPValue::LongLongInt(-7));
        let mut t = FieldTable::default();
        t.insert("s".into(), AMQPValue::ShortString("short".into()));
        t.insert("l".into(), AMQPValue::LongLongInt(1 << 40));
        t.insert("f".into(), AMQPValue::FieldTable(nested));
        t.insert("x".into(), AMQPValue::ByteArray(vec![0, 255, 1].into()));
        t.insert(
            "a".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
        );
        t.insert("v".into(), AMQPValue::Void);
        t
    }

    #[test]
    fn set_writes_long_strings_and_keeps_other_entries_and_types() {
        let original = user_table();
        let mut t = original.clone();
        WriteCarrier::set(&mut t, TRACEPARENT, "00-abc".to_owned());
        for (k, v) in original.inner() {
            assert_eq!(t.inner().get(k), Some(v), "entry {k} unchanged");
        }
        assert_eq!(
            t.inner().get(TRACEPARENT),
            Some(&AMQPValue::LongString(LongString::from("00-abc")))
        );
        assert_eq!(t.inner().len(), original.inner().len() + 1);
    }

    #[test]
    fn set_replaces_a_same_named_header_of_any_type() {
        let mut t = FieldTable::default();
        t.insert(
            TRACEPARENT.into(),
            AMQPValue::ByteArray(b"old".to_vec().into()),
        );
        WriteCarrier::set(&mut t, TRACEPARENT, "new".to_owned());
        assert_eq!(ReadCarrier::get(&t, TRACEPARENT), Some(&b"new"[..]));
        assert!(matches!(
            t.inner().get(TRACEPARENT),
            Some(AMQPValue::LongString(_))
        ));
    }

    #[test]
    fn set_skips_keys_too_long_for_amqp() {
        let mut t = FieldTable::default();
        WriteCarrier::set(&mut t, &"k".repeat(256), "v".to_owned());
        assert!(t.inner().is_empty());
    }

    #[test]
    fn get_reads_long_short_and_byte_array_values() {
        let mut t = FieldTable::default();
        t.insert("long".into(), AMQPValue::LongString("a".into()));
        t.insert("short".into(), AMQPValue::ShortString("b".into()));
        t.insert(
            "bytes".into(),
            AMQPValue::ByteArray(ByteArray::from(&b"c"[..])),
        );
        t.insert("int".into(), AMQPValue::LongInt(4));
        t.insert("void".into(), AMQPValue::Void);
        assert_eq!(ReadCarrier::get(&t, "long"), Some(&b"a"[..]));
        assert_eq!(ReadCarrier::get(&t, "short"), Some(&b"b"[..]));
        assert_eq!(ReadCarrier::get(&t, "bytes"), Some(&b"c"[..]));
        assert_eq!(ReadCarrier::get(&t, "int"), None);
        assert_eq!(ReadCarrier::get(&t, "void"), None);
        assert_eq!(ReadCarrier::get(&t, "missing"), None);
        let mut keys = ReadCarrier::keys(&t);
        keys.sort_unstable();
        assert_eq!(keys, ["bytes", "int", "long", "short", "void"]);
    }

    #[test]
    fn properties_without_headers_read_as_empty() {
        let p = BasicProperties::default();
        assert_eq!(ReadCarrier::get(&p, TRACEPARENT), None);
        assert!(ReadCarrier::keys(&p).is_empty());
    }

    #[test]
    fn with_headers_keeps_properties_and_user_headers() {
        let p = BasicProperties::default()
            .with_headers(user_table())
            .with_correlation_id("c-1".into())
            .with_priority(3);
        let (out, ()) = with_headers(p.clone(), |h| WriteCarrier::set(h, "k", "v".to_owned()));
        assert_eq!(out.correlation_id(), p.correlation_id());
        assert_eq!(out.priority(), p.priority());
        let h = out.headers().as_ref().expect("headers");
        for (k, v) in user_table().inner() {
            assert_eq!(h.inner().get(k), Some(v));
        }
        assert_eq!(ReadCarrier::get(&out, "k"), Some(&b"v"[..]));

        // Nothing written, no headers before: no empty table is added.
        let (bare, ()) = with_headers(BasicProperties::default(), |_| {});
        assert!(bare.headers().is_none());
    }
}

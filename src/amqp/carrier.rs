//! AMQP header tables as tracehop carriers.
//!
//! Context headers are written as `LongString` (type `S`), the string type every AMQP
//! client reads. They are read back from a `LongString`, a `ShortString` or a `ByteArray`
//! (type `x`), whichever a client used. A `traceparent`, `tracestate` or `baggage` of any
//! other type (integer, boolean, void, table, array …) is handed to extraction as that
//! type, which rejects it with the type as the reason (`traceparent wrong-type:integer`)
//! instead of treating it as absent; [`ReadCarrier::get`] still reads it as absent. Every
//! other entry of the table is left exactly as it was, type included.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::propagation::{HeaderValue, ReadCarrier, ValueType, WriteCarrier};

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

/// A header value as extraction sees it: the bytes of a text type, else its type.
fn header_value(value: &AMQPValue) -> HeaderValue<'_> {
    let t = match value {
        AMQPValue::LongString(s) => return HeaderValue::Bytes(s.as_bytes()),
        AMQPValue::ShortString(s) => return HeaderValue::Bytes(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => return HeaderValue::Bytes(b.as_slice()),
        AMQPValue::Boolean(_) => ValueType::Boolean,
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => ValueType::Integer,
        AMQPValue::Float(_) | AMQPValue::Double(_) => ValueType::Float,
        AMQPValue::DecimalValue(_) => ValueType::Decimal,
        AMQPValue::Timestamp(_) => ValueType::Timestamp,
        AMQPValue::FieldTable(_) => ValueType::Table,
        AMQPValue::FieldArray(_) => ValueType::Array,
        AMQPValue::Void => ValueType::Void,
    };
    HeaderValue::Typed(t)
}

impl ReadCarrier for FieldTable {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.inner().get(key).and_then(value_bytes)
    }

    fn keys(&self) -> Vec<&str> {
        self.inner().keys().map(ShortString::as_str).collect()
    }

    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for (name, value) in self.inner() {
            visit(name.as_str(), header_value(value));
        }
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

    fn readable(&self) -> Option<&dyn ReadCarrier> {
        Some(self)
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

    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        if let Some(headers) = self.headers() {
            headers.for_each(visit);
        }
    }
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
    fn for_each_hands_over_text_as_bytes_and_other_types_by_name() {
        let mut t = user_table();
        t.insert("l2".into(), AMQPValue::LongString("text".into()));
        t.insert("d".into(), AMQPValue::Double(1.5));
        let mut seen = Vec::new();
        ReadCarrier::for_each(&t, &mut |k, v| seen.push((k.to_owned(), v)));
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            [
                ("a".to_owned(), HeaderValue::Typed(ValueType::Array)),
                ("d".to_owned(), HeaderValue::Typed(ValueType::Float)),
                ("f".to_owned(), HeaderValue::Typed(ValueType::Table)),
                ("l".to_owned(), HeaderValue::Typed(ValueType::Integer)),
                ("l2".to_owned(), HeaderValue::Bytes(&b"text"[..])),
                ("s".to_owned(), HeaderValue::Bytes(&b"short"[..])),
                ("v".to_owned(), HeaderValue::Typed(ValueType::Void)),
                ("x".to_owned(), HeaderValue::Bytes(&[0, 255, 1][..])),
            ]
        );
    }

    #[test]
    fn properties_without_headers_read_as_empty() {
        let p = BasicProperties::default();
        assert_eq!(ReadCarrier::get(&p, TRACEPARENT), None);
        assert!(ReadCarrier::keys(&p).is_empty());
    }
}

//! The size of a message's content header frame, as lapin writes it, so that the context
//! headers are added only when the frame stays within the channel's `frame_max` (a frame
//! over it makes RabbitMQ close the whole connection with `FRAME_ERROR`).

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// The `frame_max` RabbitMQ proposes and lapin accepts unless told otherwise.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;

/// Frame type (1), channel (2), size (4); class id (2), weight (2), body size (8),
/// property flags (2: basic has 14 properties); frame end (1).
const FIXED: usize = 7 + 2 + 2 + 8 + 2 + 1;

/// The bytes of the content header frame for a message with `properties`, its headers
/// table replaced by `headers` (a table is written if either has one).
pub(crate) fn header_frame_len(
    properties: &BasicProperties,
    headers: Option<&FieldTable>,
) -> usize {
    let short = |s: Option<&lapin::types::ShortString>| s.map_or(0, |s| 1 + s.as_str().len());
    let headers = headers.or(properties.headers().as_ref());
    FIXED
        + short(properties.content_type().as_ref())
        + short(properties.content_encoding().as_ref())
        + headers.map_or(0, table_len)
        + usize::from(properties.delivery_mode().is_some())
        + usize::from(properties.priority().is_some())
        + short(properties.correlation_id().as_ref())
        + short(properties.reply_to().as_ref())
        + short(properties.expiration().as_ref())
        + short(properties.message_id().as_ref())
        + properties.timestamp().map_or(0, |_| 8)
        + short(properties.kind().as_ref())
        + short(properties.user_id().as_ref())
        + short(properties.app_id().as_ref())
        + short(properties.cluster_id().as_ref())
}

/// A field table: its length (4), then per entry the name as a short string, the type
/// (1) and the value.
fn table_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(name, value)| 1 + name.as_str().len() + 1 + value_len(value))
        .sum::<usize>()
}

/// A value without its type byte.
fn value_len(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => table_len(t),
        AMQPValue::Void => 0,
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};
    use lapin::BasicProperties;

    use super::header_frame_len;

    /// The bytes amq-protocol (lapin's encoder) writes for the frame.
    fn encoded(properties: &BasicProperties) -> usize {
        let frame = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1234,
                properties: properties.clone(),
            },
        );
        let written = gen_frame(&frame)(WriteContext::from(Vec::new())).expect("encoded");
        written.into_inner().0.len()
    }

    #[test]
    fn the_computed_length_is_what_lapin_writes() {
        let mut nested = FieldTable::default();
        nested.insert("n".into(), AMQPValue::LongLongInt(-1));
        let mut every = FieldTable::default();
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
            AMQPValue::ShortString("short".into()),
            AMQPValue::LongString("long ☃".into()),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::Boolean(false),
                AMQPValue::LongString("in an array".into()),
            ])),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::FieldTable(nested),
            AMQPValue::ByteArray(vec![0, 1, 2].into()),
            AMQPValue::Void,
        ];
        for (i, value) in values.into_iter().enumerate() {
            every.insert(format!("k{i}").into(), value);
        }
        let cases = [
            BasicProperties::default(),
            BasicProperties::default().with_headers(FieldTable::default()),
            BasicProperties::default().with_headers(every.clone()),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("gzip".into())
                .with_headers(every.clone())
                .with_delivery_mode(2)
                .with_priority(5)
                .with_correlation_id("c-1".into())
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_expiration("60000".into())
                .with_message_id("m-1".into())
                .with_timestamp(1_700_000_000)
                .with_type("t".into())
                .with_user_id("guest".into())
                .with_app_id("app".into())
                .with_cluster_id("c".into()),
        ];
        for properties in &cases {
            assert_eq!(
                header_frame_len(properties, None),
                encoded(properties),
                "{properties:?}"
            );
        }
        // A replacement table counts instead of the properties' own.
        let bare = BasicProperties::default();
        assert_eq!(
            header_frame_len(&bare, Some(&every)),
            encoded(&bare.clone().with_headers(every))
        );
    }
}

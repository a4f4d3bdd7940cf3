//! What a 0-9-1 message's properties become inside the broker (whose messages carry 0-10
//! headers), and back, so that a message crosses between the protocols with its
//! properties. Fields 0-10 has no place for (`type`, a `message-id` that is not a UUID,
//! `cluster-id`) travel as application headers with reserved names.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable as Table091, LongString, ShortString};
use bytes::Bytes;

use crate::wire::{
    DeliveryProperties, FieldTable, List, MessageDeliveryMode, MessageDeliveryPriority,
    MessageProperties, ReplyTo, Uuid, Value,
};

/// The application header holding a 0-9-1 `type`.
pub const TYPE_HEADER: &str = "x-amqp-0-9-1-type";
/// The application header holding a 0-9-1 `message-id` that is not a UUID.
pub const MESSAGE_ID_HEADER: &str = "x-amqp-0-9-1-message-id";
/// The application header holding a 0-9-1 `cluster-id`.
pub const CLUSTER_ID_HEADER: &str = "x-amqp-0-9-1-cluster-id";

/// 0-10's delivery-mode values.
const NON_PERSISTENT: u8 = 1;
const PERSISTENT: u8 = 2;

/// The 0-10 headers of a published 0-9-1 message.
pub fn to_010(p: &AMQPProperties) -> (DeliveryProperties, MessageProperties) {
    let mut delivery = DeliveryProperties::default();
    if let Some(mode) = p.delivery_mode() {
        delivery.delivery_mode = Some(MessageDeliveryMode(if *mode == 2 {
            PERSISTENT
        } else {
            NON_PERSISTENT
        }));
    }
    delivery.priority = p.priority().map(|v| MessageDeliveryPriority(v.min(9)));
    // `expiration` is a decimal count of milliseconds; anything else is no TTL.
    delivery.ttl = p
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().trim().parse::<u64>().ok());
    delivery.timestamp = *p.timestamp();

    let mut props = MessageProperties {
        content_type: p.content_type().as_ref().map(|s| s.to_string()),
        content_encoding: p.content_encoding().as_ref().map(|s| s.to_string()),
        correlation_id: p
            .correlation_id()
            .as_ref()
            .map(|s| Bytes::copy_from_slice(s.as_str().as_bytes())),
        user_id: p
            .user_id()
            .as_ref()
            .map(|s| Bytes::copy_from_slice(s.as_str().as_bytes())),
        app_id: p
            .app_id()
            .as_ref()
            .map(|s| Bytes::copy_from_slice(s.as_str().as_bytes())),
        reply_to: p.reply_to().as_ref().map(|r| reply_to_010(r.as_str())),
        ..MessageProperties::default()
    };
    let mut headers = p.headers().as_ref().map(table_to_010).unwrap_or_default();
    if let Some(id) = p.message_id() {
        match parse_uuid(id.as_str()) {
            Some(uuid) => props.message_id = Some(uuid),
            None => headers.insert(MESSAGE_ID_HEADER, Value::Str16(id.to_string())),
        }
    }
    if let Some(kind) = p.kind() {
        headers.insert(TYPE_HEADER, Value::Str16(kind.to_string()));
    }
    if let Some(cluster) = p.cluster_id() {
        headers.insert(CLUSTER_ID_HEADER, Value::Str16(cluster.to_string()));
    }
    if !headers.is_empty() {
        props.application_headers = Some(headers);
    }
    (delivery, props)
}

/// The 0-9-1 properties of a message the broker holds.
pub fn to_091(delivery: &DeliveryProperties, props: Option<&MessageProperties>) -> AMQPProperties {
    let mut p = AMQPProperties::default();
    if let Some(mode) = delivery.delivery_mode {
        p = p.with_delivery_mode(if mode.0 == PERSISTENT { 2 } else { 1 });
    }
    if let Some(priority) = delivery.priority {
        p = p.with_priority(priority.0);
    }
    if let Some(ttl) = delivery.ttl {
        p = p.with_expiration(ShortString::from(ttl.to_string()));
    }
    if let Some(ts) = delivery.timestamp {
        p = p.with_timestamp(ts);
    }
    let Some(m) = props else {
        return p;
    };
    if let Some(v) = &m.content_type {
        p = p.with_content_type(short(v));
    }
    if let Some(v) = &m.content_encoding {
        p = p.with_content_encoding(short(v));
    }
    if let Some(v) = &m.correlation_id {
        p = p.with_correlation_id(short(&String::from_utf8_lossy(v)));
    }
    if let Some(v) = &m.user_id {
        p = p.with_user_id(short(&String::from_utf8_lossy(v)));
    }
    if let Some(v) = &m.app_id {
        p = p.with_app_id(short(&String::from_utf8_lossy(v)));
    }
    if let Some(r) = &m.reply_to {
        p = p.with_reply_to(short(&reply_to_091(r)));
    }
    if let Some(id) = &m.message_id {
        p = p.with_message_id(short(&id.to_string()));
    }
    if let Some(headers) = &m.application_headers {
        let mut table = Table091::default();
        for (k, v) in headers.iter() {
            match (k, v) {
                (TYPE_HEADER, v) => p = p.with_type(short(&text(v))),
                (MESSAGE_ID_HEADER, v) => p = p.with_message_id(short(&text(v))),
                (CLUSTER_ID_HEADER, v) => p = p.with_cluster_id(short(&text(v))),
                (k, v) => {
                    table.insert(short(k), value_to_091(v));
                }
            }
        }
        if !table.inner().is_empty() {
            p = p.with_headers(table);
        }
    }
    p
}

/// A 0-9-1 `reply-to` names a queue (reached through the default exchange); the
/// `exchange/key` form some clients write names an exchange and a key.
fn reply_to_010(r: &str) -> ReplyTo {
    match r.split_once('/') {
        Some((exchange, key)) if !exchange.is_empty() => ReplyTo {
            exchange: Some(exchange.to_string()),
            routing_key: Some(key.to_string()),
        },
        _ => ReplyTo {
            exchange: Some(String::new()),
            routing_key: Some(r.to_string()),
        },
    }
}

fn reply_to_091(r: &ReplyTo) -> String {
    let key = r.routing_key.as_deref().unwrap_or_default();
    match r.exchange.as_deref() {
        None | Some("") => key.to_string(),
        Some(exchange) => format!("{exchange}/{key}"),
    }
}

/// A short string of at most 255 bytes (cut at a character boundary).
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

fn text(v: &Value) -> String {
    match v {
        Value::Str8(s) | Value::Str16(s) => s.clone(),
        Value::Vbin8(b) | Value::Vbin16(b) | Value::Vbin32(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// `8-4-4-4-12` hex digits.
fn parse_uuid(s: &str) -> Option<Uuid> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if s.len() != 36 || hex.len() != 32 {
        return None;
    }
    let dashes_at = [8, 13, 18, 23];
    if dashes_at
        .iter()
        .any(|&i| s.as_bytes().get(i) != Some(&b'-'))
    {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(Uuid(out))
}

/// A 0-9-1 field table as a 0-10 map.
pub fn table_to_010(t: &Table091) -> FieldTable {
    let mut out = FieldTable::new();
    for (k, v) in t.inner() {
        out.insert(k.as_str(), value_to_010(v));
    }
    out
}

/// A 0-10 map as a 0-9-1 field table.
pub fn table_to_091(t: &FieldTable) -> Table091 {
    let mut out = Table091::default();
    for (k, v) in t.iter() {
        out.insert(short(k), value_to_091(v));
    }
    out
}

fn value_to_010(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::Int8(*n),
        AMQPValue::ShortShortUInt(n) => Value::Uint8(*n),
        AMQPValue::ShortInt(n) => Value::Int16(*n),
        AMQPValue::ShortUInt(n) => Value::Uint16(*n),
        AMQPValue::LongInt(n) => Value::Int32(*n),
        AMQPValue::LongUInt(n) => Value::Uint32(*n),
        AMQPValue::LongLongInt(n) => Value::Int64(*n),
        AMQPValue::Float(f) => Value::Float(*f),
        AMQPValue::Double(f) => Value::Double(*f),
        AMQPValue::DecimalValue(d) => {
            let scaled = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Value::Double(scaled)
        }
        AMQPValue::ShortString(s) => Value::Str16(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Str16(text.to_string()),
            Err(_) => Value::Vbin32(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::FieldArray(a) => {
            Value::List(List(a.as_slice().iter().map(value_to_010).collect()))
        }
        AMQPValue::Timestamp(t) => Value::Datetime(*t),
        AMQPValue::FieldTable(t) => Value::Map(table_to_010(t)),
        AMQPValue::ByteArray(b) => Value::Vbin32(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Void,
    }
}

fn value_to_091(v: &Value) -> AMQPValue {
    match v {
        Value::Void => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int8(n) => AMQPValue::ShortShortInt(*n),
        Value::Uint8(n) => AMQPValue::ShortShortUInt(*n),
        Value::Int16(n) => AMQPValue::ShortInt(*n),
        Value::Uint16(n) => AMQPValue::ShortUInt(*n),
        Value::Int32(n) => AMQPValue::LongInt(*n),
        Value::Uint32(n) => AMQPValue::LongUInt(*n),
        Value::Int64(n) => AMQPValue::LongLongInt(*n),
        Value::Uint64(n) => match i64::try_from(*n) {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::Float(f) => AMQPValue::Float(*f),
        Value::Double(f) => AMQPValue::Double(*f),
        Value::Datetime(t) => AMQPValue::Timestamp(*t),
        Value::Uuid(u) => AMQPValue::LongString(LongString::from(u.to_string())),
        Value::Str8(s) | Value::Str16(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Vbin8(b) | Value::Vbin16(b) | Value::Vbin32(b) => {
            AMQPValue::ByteArray(b.to_vec().into())
        }
        Value::Map(m) => AMQPValue::FieldTable(table_to_091(m)),
        Value::List(l) => AMQPValue::FieldArray(FieldArray::from(
            l.0.iter().map(value_to_091).collect::<Vec<_>>(),
        )),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.items.iter().map(value_to_091).collect::<Vec<_>>(),
        )),
        Value::Struct32(_) | Value::Fixed(..) | Value::Variable(..) => {
            AMQPValue::LongString(LongString::from(format!("{v:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_property_crosses_both_ways() {
        let mut headers = Table091::default();
        headers.insert("n".into(), AMQPValue::LongInt(-7));
        headers.insert("s".into(), AMQPValue::LongString("text".into()));
        let p = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_correlation_id("corr-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("not-a-uuid".into())
            .with_timestamp(1_700_000_000)
            .with_type("order.created".into())
            .with_user_id("alice".into())
            .with_app_id("shop".into());
        let (delivery, props) = to_010(&p);
        assert_eq!(delivery.delivery_mode, Some(MessageDeliveryMode(2)));
        assert_eq!(delivery.ttl, Some(60_000));
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            props
                .reply_to
                .as_ref()
                .and_then(|r| r.routing_key.as_deref()),
            Some("replies")
        );
        assert_eq!(props.message_id, None, "not a UUID: kept as a header");
        let back = to_091(&delivery, Some(&props));
        assert_eq!(back, p);
    }

    #[test]
    fn uuid_message_ids_use_the_0_10_field() {
        let id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        let p = AMQPProperties::default().with_message_id(id.into());
        let (d, props) = to_010(&p);
        assert_eq!(props.message_id.map(|u| u.to_string()).as_deref(), Some(id));
        assert!(props.application_headers.is_none());
        assert_eq!(to_091(&d, Some(&props)), p);
        for bad in [
            "",
            "6ba7b810-9dad-11d1-80b4-00c04fd430cX",
            "6ba7b8109dad11d180b400c04fd430c8",
        ] {
            assert!(parse_uuid(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn short_strings_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let s = short(&long);
        assert!(s.as_str().len() <= 255);
        assert!(long.starts_with(s.as_str()));
    }
}

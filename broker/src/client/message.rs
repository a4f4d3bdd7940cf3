//! Messages as the client sends and receives them: the two header structs and a body.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::error::ClientError;
use crate::wire::{
    assembly::decode_header_structs, Content, DeliveryProperties, MessageAcceptMode,
    MessageAcquireMode, MessageDeliveryMode, MessageProperties, SequenceNo, Uuid, Value,
};

/// A message to send with `message.transfer`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// `delivery-properties`: routing key, delivery mode, priority, ttl.
    pub delivery_properties: DeliveryProperties,
    /// `message-properties`: ids, content type, reply-to, application headers.
    pub message_properties: MessageProperties,
    /// The body, sent as is (split into frames as the negotiated size requires).
    pub body: Bytes,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Sets `delivery-properties.routing-key`.
    #[must_use]
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Self {
        self.delivery_properties.routing_key = Some(key.into());
        self
    }

    /// Marks the message persistent (delivery-mode 2) or not (1).
    #[must_use]
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.delivery_properties.delivery_mode = Some(if durable {
            MessageDeliveryMode::PERSISTENT
        } else {
            MessageDeliveryMode::NON_PERSISTENT
        });
        self
    }

    /// Sets `message-properties.content-type`.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.message_properties.content_type = Some(content_type.into());
        self
    }

    /// Adds an entry to `message-properties.application-headers`.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.message_properties
            .application_headers
            .get_or_insert_with(Default::default)
            .insert(key, value);
        self
    }

    /// The header segment: delivery-properties then message-properties, each a size-4
    /// coded struct.
    pub fn encode_header(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.delivery_properties.encode(&mut out);
        self.message_properties.encode(&mut out);
        out
    }
}

/// A message the broker delivered to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The broker's command id of the transfer: what `message.accept`, `release` and
    /// `reject` name.
    pub id: SequenceNo,
    /// The subscription's destination.
    pub destination: String,
    /// Whether the broker expects a `message.accept` (explicit) or not (none).
    pub accept_mode: MessageAcceptMode,
    /// Whether the message was acquired for this client or only shown (browse).
    pub acquire_mode: MessageAcquireMode,
    /// `delivery-properties` as sent (default when absent).
    pub delivery_properties: DeliveryProperties,
    /// `message-properties` as sent (default when absent).
    pub message_properties: MessageProperties,
    /// The body.
    pub body: Bytes,
}

impl Delivery {
    /// Whether the broker flagged the message as delivered before.
    pub fn redelivered(&self) -> bool {
        self.delivery_properties.redelivered
    }

    /// An application header by name.
    pub fn header(&self, key: &str) -> Option<&Value> {
        self.message_properties
            .application_headers
            .as_ref()
            .and_then(|h| h.get(key))
    }
}

/// Reads the header structs of a received transfer; unknown structs are skipped.
///
/// # Errors
/// [`ClientError::Protocol`] when a struct is malformed.
pub(crate) fn decode_properties(
    content: Option<&Content>,
) -> Result<(DeliveryProperties, MessageProperties, Bytes), ClientError> {
    let mut dp = DeliveryProperties::default();
    let mut mp = MessageProperties::default();
    let Some(content) = content else {
        return Ok((dp, mp, Bytes::new()));
    };
    for s in decode_header_structs(&content.header)? {
        match s.code {
            DeliveryProperties::CODE => dp = DeliveryProperties::from_struct32(&s)?,
            MessageProperties::CODE => mp = MessageProperties::from_struct32(&s)?,
            _ => {}
        }
    }
    Ok((dp, mp, content.body.clone()))
}

/// A random (version 4) UUID, for message ids and unique session and queue names.
///
/// Uniqueness, not secrecy, is what is needed: the bits come from std's randomly keyed
/// hasher mixed with the clock and a counter.
pub fn random_uuid() -> Uuid {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        half.copy_from_slice(&h.finish().to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Struct32;

    #[test]
    fn header_round_trips() {
        let m = Message::new("hi")
            .with_routing_key("q")
            .with_durable(true)
            .with_content_type("text/plain")
            .with_header("k", "v");
        let content = Content {
            header: m.encode_header().freeze(),
            body: m.body.clone(),
            has_body: true,
        };
        let (dp, mp, body) = decode_properties(Some(&content)).expect("decode");
        assert_eq!(dp, m.delivery_properties);
        assert_eq!(mp, m.message_properties);
        assert_eq!(body, m.body);
    }

    #[test]
    fn delivery_properties_match_the_spec_vector() {
        // amqp-0-10.md §3: delivery-properties(routing-key="q", delivery-mode=persistent).
        let m = Message::new("").with_routing_key("q").with_durable(true);
        let mut out = BytesMut::new();
        m.delivery_properties.encode(&mut out);
        assert_eq!(&out[..], &[0, 0, 0, 7, 4, 1, 0x10, 2, 2, 1, b'q']);
    }

    #[test]
    fn unknown_header_structs_are_skipped() {
        let mut header = BytesMut::new();
        crate::wire::prim::put_struct32(
            &mut header,
            &Struct32 {
                code: 0x0402,
                body: Bytes::from_static(&[0, 0]),
            },
        );
        let content = Content {
            header: header.freeze(),
            body: Bytes::new(),
            has_body: false,
        };
        let (dp, mp, _) = decode_properties(Some(&content)).expect("decode");
        assert_eq!(dp, DeliveryProperties::default());
        assert_eq!(mp, MessageProperties::default());
    }

    #[test]
    fn uuids_differ_and_are_v4() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.to_string().len(), 36);
    }
}

//! A message as the broker holds it. A [`Draft`] carries the decoded header structs while the
//! broker still changes them (exchange, user-id stamp, timestamp); sealing it encodes the
//! header once and keeps only what routing and queues read, so a queued message costs its
//! bytes and a few words rather than two decoded structs.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::prim::put_struct32;
use crate::wire::{
    Content, DecodeError, DeliveryProperties, FieldTable, MessageDeliveryMode, MessageProperties,
    Struct32, Value,
};

/// A message being built or changed: its header structs decoded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Draft {
    /// The connection that published it (for `no-local` queues); 0 for none.
    pub origin: u64,
    /// When it expires (from `delivery-properties.ttl`), stamped on arrival.
    pub expires_at: Option<Instant>,
    /// `delivery-properties` as sent (the broker adjusts `redelivered` per delivery).
    pub delivery: DeliveryProperties,
    /// `message-properties`, decoded for routing and checks.
    pub properties: Option<MessageProperties>,
    /// Every header struct other than `delivery-properties`, raw, in arrival order.
    other_headers: Vec<Struct32>,
    /// The body.
    pub body: Bytes,
    /// Whether the sender sent a body segment at all (an empty body is not no body).
    pub has_body: bool,
    /// Header bytes the broker's `user-id` stamp added: byte credit counts the message as
    /// its sender made it.
    stamp_bytes: usize,
}

impl Draft {
    /// Builds a message from the content of a `message.transfer`.
    ///
    /// # Errors
    /// When the header segment is malformed.
    pub fn from_content(content: Option<&Content>) -> Result<Draft, DecodeError> {
        let mut msg = Draft::default();
        let Some(content) = content else {
            return Ok(msg);
        };
        msg.body = content.body.clone();
        msg.has_body = content.has_body;
        msg.read_header(content.header_structs()?)?;
        Ok(msg)
    }

    fn read_header(&mut self, structs: Vec<Struct32>) -> Result<(), DecodeError> {
        let mut seen_delivery = false;
        for s in structs {
            let duplicate = match s.code {
                DeliveryProperties::CODE => std::mem::replace(&mut seen_delivery, true),
                MessageProperties::CODE => self.properties.is_some(),
                _ => false,
            };
            if duplicate {
                return Err(DecodeError::DuplicateStruct(s.code));
            }
            match s.code {
                DeliveryProperties::CODE => self.delivery = DeliveryProperties::from_struct32(&s)?,
                MessageProperties::CODE => {
                    self.properties = Some(MessageProperties::from_struct32(&s)?);
                    self.other_headers.push(s);
                }
                _ => self.other_headers.push(s),
            }
        }
        Ok(())
    }

    /// A message with the given routing key and body.
    pub fn new(routing_key: &str, body: impl Into<Bytes>) -> Draft {
        Draft {
            delivery: DeliveryProperties {
                routing_key: Some(routing_key.to_string()),
                ..DeliveryProperties::default()
            },
            body: body.into(),
            has_body: true,
            ..Draft::default()
        }
    }

    /// Replaces `message-properties`, decoded and raw alike; returns the header bytes the
    /// old and the new struct take (a struct32 is its size (4), code (2) and body).
    pub fn set_properties(&mut self, props: MessageProperties) -> (usize, usize) {
        let encoded = props.to_struct32();
        let after = 6 + encoded.body.len();
        let before = match self
            .other_headers
            .iter_mut()
            .find(|s| s.code == MessageProperties::CODE)
        {
            Some(slot) => 6 + std::mem::replace(slot, encoded).body.len(),
            None => {
                self.other_headers.push(encoded);
                0
            }
        };
        self.properties = Some(props);
        (before, after)
    }

    /// Writes `user` into `message-properties.user-id`.
    pub fn stamp_user_id(&mut self, user: &str) {
        let mut props = self.properties.take().unwrap_or_default();
        props.user_id = Some(Bytes::copy_from_slice(user.as_bytes()));
        let (before, after) = self.set_properties(props);
        self.stamp_bytes = after.saturating_sub(before);
    }

    fn encode_header(&self, redelivered: bool) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        let mut delivery = self.delivery.clone();
        delivery.redelivered = redelivered || delivery.redelivered;
        delivery.encode(&mut buf);
        for s in &self.other_headers {
            put_struct32(&mut buf, s);
        }
        buf.freeze()
    }

    /// Encodes the header once and keeps what the broker reads from here on.
    pub fn seal(self) -> Message {
        let header = self.encode_header(false);
        self.seal_as(header)
    }

    /// Seals with `header`, the encoding of this draft's structs made earlier.
    fn seal_as(self, header: Bytes) -> Message {
        let headers = self
            .properties
            .and_then(|p| p.application_headers)
            .filter(|h| !h.is_empty())
            .map(Box::new);
        let routing_key = self.delivery.routing_key.unwrap_or_default();
        Message {
            origin: self.origin,
            expires_at: self.expires_at,
            header,
            body: self.body,
            has_body: self.has_body,
            stamp_bytes: u32::try_from(self.stamp_bytes).unwrap_or(u32::MAX),
            priority: self.delivery.priority.map_or(4, |p| p.0.min(9)),
            persistent: self.delivery.delivery_mode == Some(MessageDeliveryMode::PERSISTENT),
            routing_key: routing_key.into_boxed_str(),
            headers,
        }
    }
}

/// An immutable message, shared between the queues it was routed to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The connection that published it (for `no-local` queues); 0 for none.
    pub origin: u64,
    /// When it expires (from `delivery-properties.ttl`), stamped on arrival.
    pub expires_at: Option<Instant>,
    /// The header segment of a first delivery, encoded once.
    header: Bytes,
    /// The body.
    pub body: Bytes,
    /// Whether the sender sent a body segment at all (an empty body is not no body).
    pub has_body: bool,
    stamp_bytes: u32,
    priority: u8,
    persistent: bool,
    routing_key: Box<str>,
    /// `message-properties.application-headers`, when there are any: exchanges, groups and
    /// last-value queues read them.
    headers: Option<Box<FieldTable>>,
}

impl Message {
    /// A message with the given routing key and body (used by the broker itself and tests).
    pub fn new(routing_key: &str, body: impl Into<Bytes>) -> Message {
        Draft::new(routing_key, body).seal()
    }

    /// A message the broker makes itself (management replies and events): routing key,
    /// message properties and body.
    pub fn built(routing_key: &str, properties: MessageProperties, body: Bytes) -> Message {
        let mut m = Draft::new(routing_key, body);
        m.set_properties(properties);
        m.seal()
    }

    /// The message decoded again, to change it or read a rarely needed field.
    pub fn draft(&self) -> Draft {
        let mut d = Draft {
            origin: self.origin,
            expires_at: self.expires_at,
            body: self.body.clone(),
            has_body: self.has_body,
            stamp_bytes: self.stamp_bytes as usize,
            ..Draft::default()
        };
        let content = Content {
            header: self.header.clone(),
            body: Bytes::new(),
            has_body: false,
        };
        // The header was encoded by `Draft::seal` from structs that decoded.
        if let Ok(structs) = content.header_structs() {
            let _ = d.read_header(structs);
        }
        d
    }

    /// The copy that goes to a dead-letter exchange, as RabbitMQ makes it: no expiry, the
    /// dead-letter routing key if the queue has one, and headers saying where and why it
    /// died (`x-first-death-*` once, `x-last-death-*` each time).
    pub fn dead_lettered(&self, queue: &str, reason: &str, routing_key: Option<&str>) -> Message {
        let mut d = self.draft();
        d.expires_at = None;
        d.delivery.ttl = None;
        d.delivery.expiration = None;
        let exchange = d.delivery.exchange.clone().unwrap_or_default();
        if let Some(key) = routing_key {
            d.delivery.routing_key = Some(key.to_string());
        }
        let mut props = d.properties.take().unwrap_or_default();
        let headers = props
            .application_headers
            .get_or_insert_with(FieldTable::new);
        if headers.get("x-first-death-queue").is_none() {
            headers.insert("x-first-death-queue", Value::Str16(queue.to_string()));
            headers.insert("x-first-death-reason", Value::Str16(reason.to_string()));
            headers.insert("x-first-death-exchange", Value::Str16(exchange.clone()));
        }
        headers.insert("x-last-death-queue", Value::Str16(queue.to_string()));
        headers.insert("x-last-death-reason", Value::Str16(reason.to_string()));
        headers.insert("x-last-death-exchange", Value::Str16(exchange));
        d.set_properties(props);
        d.seal()
    }

    /// Whether this message, expiring on `queue`, has gone round a cycle of dead-letter
    /// exchanges back to where it first expired with no rejection since: RabbitMQ drops
    /// such a message rather than let it circle for ever.
    pub fn expired_in_a_cycle(&self, queue: &str) -> bool {
        let text = |k: &str| {
            self.headers()
                .and_then(|h| h.get(k))
                .and_then(Value::as_str)
        };
        text("x-first-death-queue") == Some(queue)
            && text("x-first-death-reason") == Some("expired")
            && text("x-last-death-reason") != Some("rejected")
    }

    /// `message-properties`, decoded from the header.
    pub fn properties(&self) -> Option<MessageProperties> {
        self.draft().properties
    }

    /// A copy with one application header set (queue sequence numbers).
    pub fn with_header(&self, key: &str, value: Value) -> Message {
        let mut d = self.draft();
        let mut props = d.properties.take().unwrap_or_default();
        props
            .application_headers
            .get_or_insert_with(FieldTable::new)
            .insert(key, value);
        d.set_properties(props);
        d.seal()
    }

    /// The message as the store keeps it: header segment length (u32), header segment, a
    /// body-present byte, body.
    pub fn encode_stored(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(5 + self.header.len() + self.body.len());
        buf.put_u32(u32::try_from(self.header.len()).unwrap_or(u32::MAX));
        buf.put_slice(&self.header);
        buf.put_u8(u8::from(self.has_body));
        buf.put_slice(&self.body);
        buf.freeze()
    }

    /// Reads a message written by [`Message::encode_stored`].
    ///
    /// # Errors
    /// Truncated or malformed records.
    pub fn decode_stored(data: &Bytes) -> Result<Message, DecodeError> {
        let mut buf = data.clone();
        if buf.remaining() < 4 {
            return Err(DecodeError::Truncated);
        }
        let len = buf.get_u32() as usize;
        if buf.remaining() < len + 1 {
            return Err(DecodeError::Truncated);
        }
        let header = buf.split_to(len);
        let has_body = buf.get_u8() != 0;
        // Stored sealed: the header is kept as it is, not encoded again.
        let draft = Draft::from_content(Some(&Content {
            header: header.clone(),
            body: buf,
            has_body,
        }))?;
        Ok(draft.seal_as(header))
    }

    /// Credit a delivery of this message costs in byte units: header and body, as qpidd
    /// counts it.
    pub fn credit_size(&self) -> u64 {
        (self.header.len().saturating_sub(self.stamp_bytes as usize) + self.body.len()) as u64
    }

    /// `delivery-properties.routing-key`, or empty.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// `message-properties.application-headers`, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.headers.as_deref()
    }

    /// Priority 0..=9 (default 4).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether the sender asked for persistence.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Bytes that count against queue size limits: the body.
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }

    /// What holding it in a queue costs, as the broker-wide budget counts it.
    pub fn footprint(&self) -> u64 {
        self.body.len() as u64 + self.header.len() as u64 + super::memory::MESSAGE_OVERHEAD
    }

    /// The header segment for one delivery, with `redelivered` set as asked.
    pub fn delivery_header(&self, redelivered: bool) -> Bytes {
        if !redelivered {
            return self.header.clone();
        }
        self.draft().encode_header(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_say_where_they_died_and_cycles_of_expiry_end() {
        let mut d = Draft::new("k", "body");
        d.delivery.exchange = Some("ex".into());
        d.delivery.ttl = Some(50);
        d.expires_at = Some(Instant::now());
        let msg = d.seal();
        let once = msg.dead_lettered("a", "expired", Some("retry"));
        assert_eq!(once.expires_at, None);
        assert_eq!(once.draft().delivery.ttl, None);
        assert_eq!(once.routing_key(), "retry");
        let text = |m: &Message, k: &str| {
            m.headers()
                .and_then(|h| h.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        assert_eq!(text(&once, "x-first-death-queue").as_deref(), Some("a"));
        assert_eq!(text(&once, "x-first-death-exchange").as_deref(), Some("ex"));
        // Expiring again where it first expired: a cycle, dropped.
        assert!(once.expired_in_a_cycle("a"));
        assert!(!once.expired_in_a_cycle("b"));
        // A rejection on the way breaks the cycle (a retry loop).
        let twice = once.dead_lettered("b", "rejected", None);
        assert_eq!(text(&twice, "x-first-death-queue").as_deref(), Some("a"));
        assert_eq!(
            text(&twice, "x-last-death-reason").as_deref(),
            Some("rejected")
        );
        assert_eq!(twice.routing_key(), "retry");
        assert!(!twice.expired_in_a_cycle("a"));
    }

    #[test]
    fn stamped_user_id_travels_but_costs_no_credit() {
        let mut d = Draft::new("k", "body");
        let unstamped = d.clone().seal().credit_size();
        d.stamp_user_id("alice");
        let m = d.seal();
        assert_eq!(m.credit_size(), unstamped);
        let back = Message::decode_stored(&m.encode_stored()).expect("decode");
        assert_eq!(back.routing_key(), "k");
        let user = back.properties().and_then(|p| p.user_id);
        assert_eq!(user.as_deref(), Some(&b"alice"[..]));
    }

    #[test]
    fn a_header_with_two_message_properties_is_refused() {
        let forged = MessageProperties {
            user_id: Some(Bytes::from_static(b"mallory")),
            ..MessageProperties::default()
        };
        let mut header = BytesMut::new();
        put_struct32(&mut header, &forged.to_struct32());
        put_struct32(&mut header, &MessageProperties::default().to_struct32());
        let content = Content {
            header: header.freeze(),
            body: Bytes::new(),
            has_body: false,
        };
        assert!(matches!(
            Draft::from_content(Some(&content)),
            Err(DecodeError::DuplicateStruct(MessageProperties::CODE))
        ));
    }
}

//! The two QMF encodings: version 2 messages (maps and lists with `qmf.*` headers) and
//! version 1's binary records (`AM2`, an opcode, a sequence number, then fields).

use bytes::{BufMut, Bytes, BytesMut};

use crate::core::Message;
#[cfg(test)]
use crate::wire::prim::get_list;
use crate::wire::prim::{get_map, put_list, put_map};
use crate::wire::{FieldTable, List, MessageProperties, ReplyTo, Value};

/// The vendor and product the tools look for.
pub const VENDOR: &str = "apache.org";
/// See [`VENDOR`].
pub const PRODUCT: &str = "qpidd";

/// Where a reply goes: the request's `reply-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub key: String,
}

impl ReplyAddress {
    /// The reply-to of `props`, if it has one.
    pub fn of(props: &MessageProperties) -> Option<ReplyAddress> {
        let ReplyTo {
            exchange,
            routing_key,
        } = props.reply_to.clone()?;
        Some(ReplyAddress {
            exchange: exchange.unwrap_or_default(),
            key: routing_key.unwrap_or_default(),
        })
    }
}

/// A version 2 message: headers, content type and body.
pub fn v2_message(
    key: &str,
    headers: FieldTable,
    correlation: Option<Bytes>,
    content_type: &str,
    body: Bytes,
) -> Message {
    let props = MessageProperties {
        correlation_id: correlation,
        content_type: Some(content_type.to_string()),
        app_id: Some(Bytes::from_static(b"qmf2")),
        application_headers: Some(headers),
        ..MessageProperties::default()
    };
    Message::built(key, props, body)
}

/// The application headers of a version 2 message.
pub fn v2_headers(method: &str, opcode: &str, agent: &str) -> FieldTable {
    let mut h = FieldTable::new();
    h.insert("method", method);
    h.insert("qmf.opcode", opcode);
    h.insert("qmf.agent", agent);
    h
}

/// A map body.
pub fn map_body(m: &FieldTable) -> Bytes {
    let mut buf = BytesMut::new();
    put_map(&mut buf, m);
    buf.freeze()
}

/// A list body.
pub fn list_body(items: Vec<Value>) -> Bytes {
    let mut buf = BytesMut::new();
    put_list(&mut buf, &List(items));
    buf.freeze()
}

/// Reads a map body; an empty body is an empty map.
///
/// # Errors
/// A body that is not a 0-10 map.
pub fn read_map(body: &Bytes) -> Result<FieldTable, String> {
    if body.is_empty() {
        return Ok(FieldTable::new());
    }
    get_map(&mut body.clone()).map_err(|e| format!("the body is not a map: {e}"))
}

/// Reads a list body.
///
/// # Errors
/// A body that is not a 0-10 list.
#[cfg(test)]
pub fn read_list(body: &Bytes) -> Result<List, String> {
    get_list(&mut body.clone()).map_err(|e| format!("the body is not a list: {e}"))
}

/// Writes a version 1 record header.
pub fn v1_header(buf: &mut BytesMut, opcode: u8, seq: u32) {
    buf.put_slice(b"AM2");
    buf.put_u8(opcode);
    buf.put_u32(seq);
}

/// A version 1 reply message.
pub fn v1_message(key: &str, body: Bytes) -> Message {
    let props = MessageProperties {
        content_type: Some("x-application/qmf".into()),
        ..MessageProperties::default()
    };
    Message::built(key, props, body)
}

/// Reads version 1 records one after another.
pub struct V1Reader {
    buf: Bytes,
}

/// Why a version 1 record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed QMF version 1 record")]
pub struct Malformed;

impl V1Reader {
    /// A reader over a message body.
    pub fn new(buf: Bytes) -> V1Reader {
        V1Reader { buf }
    }

    /// The next record's opcode and sequence number; `None` at the end or when what
    /// follows is not a record.
    pub fn next_header(&mut self) -> Option<(u8, u32)> {
        if self.buf.len() < 8 || &self.buf[..3] != b"AM2" {
            return None;
        }
        let opcode = self.buf[3];
        let seq = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        self.buf = self.buf.slice(8..);
        Some((opcode, seq))
    }

    /// A `str8`.
    ///
    /// # Errors
    /// When truncated or not UTF-8.
    pub fn str8(&mut self) -> Result<String, Malformed> {
        crate::wire::prim::get_str8(&mut self.buf).map_err(|_| Malformed)
    }

    /// A `str16`.
    ///
    /// # Errors
    /// When truncated or not UTF-8.
    pub fn str16(&mut self) -> Result<String, Malformed> {
        crate::wire::prim::get_str16(&mut self.buf).map_err(|_| Malformed)
    }

    /// A map.
    ///
    /// # Errors
    /// When malformed.
    pub fn map(&mut self) -> Result<FieldTable, Malformed> {
        get_map(&mut self.buf).map_err(|_| Malformed)
    }

    /// `n` raw bytes.
    ///
    /// # Errors
    /// When truncated.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        Ok(self.buf.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::prim::put_str8;

    #[test]
    fn v1_records_read_back_one_after_another() {
        let mut buf = BytesMut::new();
        v1_header(&mut buf, b'P', 7);
        v1_header(&mut buf, b'Q', 8);
        put_str8(&mut buf, "org.apache.qpid.broker");
        let mut r = V1Reader::new(buf.freeze());
        assert_eq!(r.next_header(), Some((b'P', 7)));
        assert_eq!(r.next_header(), Some((b'Q', 8)));
        assert_eq!(r.str8().as_deref(), Ok("org.apache.qpid.broker"));
        assert_eq!(r.next_header(), None);
        let mut junk = V1Reader::new(Bytes::from_static(b"AM2"));
        assert_eq!(junk.next_header(), None);
        assert_eq!(junk.str8(), Err(Malformed));
    }
}

//! 0-9-1 frames off the socket and onto it. The frame's header is checked here before
//! anything is parsed (its type, its size against the negotiated maximum, its end octet),
//! so a hostile peer can make the broker neither buffer nor parse more than one frame's
//! worth; the payloads are parsed by `amq-protocol`.

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic::AMQPProperties, parse_class, AMQPClass};
use amq_protocol::types::{ChannelId, Identifier};
use bytes::{Buf, Bytes, BytesMut};

/// Frame types.
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and size before a payload, and the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;

/// The classes 0-9-1 defines (anything else is answered with not-implemented).
const KNOWN_CLASSES: [u16; 8] = [10, 20, 30, 40, 50, 60, 85, 90];
/// Field tables and arrays nest at most this deep. `amq-protocol` parses them by
/// recursion without a limit, so deeper ones are refused before it sees them; and the
/// broker's own 0-10 codec stores no deeper than 32.
pub const MAX_TABLE_DEPTH: usize = 16;

/// One frame received.
#[derive(Debug)]
pub enum Frame {
    /// A method.
    Method(ChannelId, Box<AMQPClass>),
    /// A content header: body size and properties.
    Header(ChannelId, u64, Box<AMQPProperties>),
    /// A piece of a body.
    Body(ChannelId, Bytes),
    /// A heartbeat (on channel 0, else a protocol error).
    Heartbeat(ChannelId),
}

/// Why the input is not a frame stream; each is a connection error with its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The 0-9-1 reply code: 501 frame-error, 502 syntax-error, 540 not-implemented.
    pub code: u16,
    /// What went wrong.
    pub text: String,
    /// The class and method the error concerns, when known.
    pub method: (Identifier, Identifier),
}

impl FrameError {
    fn new(code: u16, text: impl Into<String>) -> FrameError {
        FrameError {
            code,
            text: text.into(),
            method: (0, 0),
        }
    }
}

/// The next whole frame in `input`, taken off it; `None` until one has arrived.
///
/// # Errors
/// An unknown frame type, a frame over `max_size`, a wrong end octet, or a payload that
/// does not parse.
pub fn next(input: &mut BytesMut, max_size: usize) -> Result<Option<Frame>, FrameError> {
    if input.len() < 7 {
        return Ok(None);
    }
    let kind = input[0];
    let channel = u16::from_be_bytes([input[1], input[2]]);
    let size = u32::from_be_bytes([input[3], input[4], input[5], input[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::new(501, format!("unknown frame type {kind}")));
    }
    if size.saturating_add(FRAME_OVERHEAD) > max_size {
        return Err(FrameError::new(
            501,
            format!("frame of {size} bytes is over the negotiated frame-max {max_size}"),
        ));
    }
    if input.len() < size + FRAME_OVERHEAD {
        return Ok(None);
    }
    if input[size + 7] != FRAME_END {
        return Err(FrameError::new(
            501,
            format!("frame end octet 0x{:02x}, not 0xce", input[size + 7]),
        ));
    }
    input.advance(7);
    let payload = input.split_to(size).freeze();
    input.advance(1);
    Ok(Some(match kind {
        FRAME_METHOD => Frame::Method(channel, Box::new(method(&payload)?)),
        FRAME_HEADER => {
            if !header_tables_shallow(&payload) {
                return Err(FrameError::new(
                    502,
                    format!("content header with tables nested over {MAX_TABLE_DEPTH} deep"),
                ));
            }
            let header = amq_protocol::frame::parsing::parse_content_header(&payload[..])
                .map_err(|_| FrameError::new(502, "malformed content header"))?
                .1;
            if header.class_id != 60 {
                return Err(FrameError::new(
                    501,
                    format!("content header of class {}", header.class_id),
                ));
            }
            Frame::Header(channel, header.body_size, Box::new(header.properties))
        }
        FRAME_BODY => Frame::Body(channel, payload),
        _ => Frame::Heartbeat(channel),
    }))
}

/// A method payload: its class must be one 0-9-1 has, and the rest must parse.
fn method(payload: &[u8]) -> Result<AMQPClass, FrameError> {
    if payload.len() < 4 {
        return Err(FrameError::new(502, "method frame too short"));
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let id = u16::from_be_bytes([payload[2], payload[3]]);
    if !KNOWN_CLASSES.contains(&class) {
        return Err(FrameError {
            code: 540,
            text: format!("unknown class {class}"),
            method: (class, id),
        });
    }
    // basic.qos's prefetch-size is dropped by the parser; like RabbitMQ, refuse a limit in
    // bytes rather than silently ignore it.
    if (class, id) == (60, 10) && payload.get(4..8).is_some_and(|b| b != [0, 0, 0, 0]) {
        return Err(FrameError {
            code: 540,
            text: "basic.qos with prefetch_size != 0".into(),
            method: (class, id),
        });
    }
    if !method_tables_shallow(class, id, payload) {
        return Err(FrameError {
            code: 502,
            text: format!("method {class}.{id} with tables nested over {MAX_TABLE_DEPTH} deep"),
            method: (class, id),
        });
    }
    match parse_class(payload) {
        Ok(([], m)) => Ok(m),
        Ok(_) => Err(FrameError {
            code: 502,
            text: format!("method {class}.{id} has trailing bytes"),
            method: (class, id),
        }),
        Err(_) => Err(FrameError {
            code: 540,
            text: format!("unknown or malformed method {class}.{id}"),
            method: (class, id),
        }),
    }
}

/// Where the field table of a method starts: after which fields (the layout of the 0-9-1
/// methods that carry one), or `None` for a method without a table.
fn table_offset(class: u16, id: u16, payload: &[u8]) -> Option<usize> {
    // (leading fixed bytes after class and method, short strings, then a bits octet?)
    let (fixed, shorts, bits) = match (class, id) {
        (10, 10) => (2, 0, false),           // connection.start
        (10, 11) => (0, 0, false),           // connection.start-ok
        (40, 10) => (2, 2, true),            // exchange.declare
        (40, 30) | (40, 40) => (2, 3, true), // exchange.bind, unbind
        (50, 10) => (2, 1, true),            // queue.declare
        (50, 20) => (2, 3, true),            // queue.bind
        (50, 50) => (2, 3, false),           // queue.unbind
        (60, 20) => (2, 2, true),            // basic.consume
        _ => return None,
    };
    let mut at = 4 + fixed;
    for _ in 0..shorts {
        at += 1 + usize::from(*payload.get(at)?);
    }
    Some(at + usize::from(bits))
}

fn method_tables_shallow(class: u16, id: u16, payload: &[u8]) -> bool {
    match table_offset(class, id, payload) {
        // A layout that does not fit is left to the parser, which refuses it.
        Some(at) => payload
            .get(at..)
            .is_none_or(|t| table_depth(t).is_none_or(|d| d <= MAX_TABLE_DEPTH)),
        None => true,
    }
}

/// Whether a content header's `headers` property nests no deeper than allowed.
fn header_tables_shallow(payload: &[u8]) -> bool {
    // class, weight, body size, then the property flags (bit 15 content-type, 14
    // content-encoding, 13 headers), in words whose bit 0 says another follows.
    let Some(flags) = payload
        .get(12..14)
        .map(|f| u16::from_be_bytes([f[0], f[1]]))
    else {
        return true;
    };
    let mut at = 14;
    let mut word = flags;
    while word & 1 == 1 {
        let Some(next) = payload.get(at..at + 2) else {
            return true;
        };
        word = u16::from_be_bytes([next[0], next[1]]);
        at += 2;
    }
    if flags & (1 << 13) == 0 {
        return true;
    }
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            let Some(len) = payload.get(at) else {
                return true;
            };
            at += 1 + usize::from(*len);
        }
    }
    payload
        .get(at..)
        .is_none_or(|t| table_depth(t).is_none_or(|d| d <= MAX_TABLE_DEPTH))
}

/// How deep the field table at the start of `buf` nests tables and arrays, found
/// without recursion; `None` when it is not a well-formed table.
pub fn table_depth(buf: &[u8]) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Table,
        Array,
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut stack = vec![(4usize.checked_add(u32_at(0)?)?, Kind::Table)];
    let mut at = 4;
    let mut deepest = 1;
    while let Some(&(end, kind)) = stack.last() {
        if at == end {
            stack.pop();
            continue;
        }
        if at > end || end > buf.len() {
            return None;
        }
        if kind == Kind::Table {
            at += 1 + usize::from(*buf.get(at)?);
        }
        let tag = *buf.get(at)?;
        at += 1;
        match tag {
            b't' | b'b' | b'B' => at += 1,
            b's' | b'U' | b'u' => at += 2,
            b'I' | b'i' | b'f' => at += 4,
            b'L' | b'l' | b'd' | b'T' => at += 8,
            b'D' => at += 5,
            b'V' => {}
            b'S' | b'x' => at = at.checked_add(4)?.checked_add(u32_at(at)?)?,
            b'F' | b'A' => {
                let inner_end = at.checked_add(4)?.checked_add(u32_at(at)?)?;
                at += 4;
                stack.push((
                    inner_end,
                    if tag == b'F' {
                        Kind::Table
                    } else {
                        Kind::Array
                    },
                ));
                deepest = deepest.max(stack.len());
            }
            _ => return None,
        }
    }
    Some(deepest)
}

/// Writes frames into the connection's output buffer.
pub struct Writer {
    /// The largest frame the peer takes.
    pub max_size: usize,
    scratch: Vec<u8>,
}

impl Writer {
    /// A writer for frames of at most `max_size` bytes.
    pub fn new(max_size: usize) -> Writer {
        Writer {
            max_size,
            scratch: Vec::with_capacity(512),
        }
    }

    fn frame(&mut self, frame: &AMQPFrame, out: &mut BytesMut) {
        let buf = std::mem::take(&mut self.scratch);
        match cookie_factory::r#gen(gen_frame(frame), buf) {
            Ok((mut buf, _)) => {
                out.extend_from_slice(&buf);
                buf.clear();
                self.scratch = buf;
            }
            // Only a write into a `Vec` can fail here, and it does not.
            Err(e) => tracing::error!("cannot encode a 0-9-1 frame: {e:?}"),
        }
    }

    /// A method frame.
    pub fn method(&mut self, channel: ChannelId, method: AMQPClass, out: &mut BytesMut) {
        self.frame(&AMQPFrame::Method(channel, method), out);
    }

    /// A message: its method (deliver, get-ok, return), header and body frames.
    pub fn content(
        &mut self,
        channel: ChannelId,
        method: AMQPClass,
        properties: AMQPProperties,
        body: &[u8],
        out: &mut BytesMut,
    ) {
        self.method(channel, method, out);
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        };
        self.frame(&AMQPFrame::Header(channel, header), out);
        let piece = self.max_size.saturating_sub(FRAME_OVERHEAD).max(1);
        for chunk in body.chunks(piece) {
            // Written by hand: gen_frame would want the chunk copied into a Vec first.
            out.extend_from_slice(&[FRAME_BODY]);
            out.extend_from_slice(&channel.to_be_bytes());
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(&[FRAME_END]);
        }
    }

    /// A heartbeat.
    pub fn heartbeat(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    fn encoded(frame: &AMQPFrame) -> BytesMut {
        let (buf, _) = cookie_factory::r#gen(gen_frame(frame), Vec::new()).expect("gen");
        BytesMut::from(&buf[..])
    }

    #[test]
    fn frames_come_whole_and_in_order() {
        let open = AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        let mut input = encoded(&open);
        input.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
        let whole = input.clone();
        // Byte by byte: nothing until a frame is complete.
        let mut trickle = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            trickle.extend_from_slice(&[*b]);
            while let Some(f) = next(&mut trickle, 4096).expect("valid") {
                got.push(f);
            }
        }
        assert!(matches!(
            got.as_slice(),
            [Frame::Method(1, _), Frame::Heartbeat(0)]
        ));
        assert!(trickle.is_empty());
    }

    #[test]
    fn bad_frames_get_their_codes() {
        let mut wrong_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00][..]);
        assert_eq!(
            next(&mut wrong_end, 4096).map(|_| ()).unwrap_err().code,
            501
        );
        let mut big = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 1, 0, 0][..]);
        assert_eq!(
            next(&mut big, 4096).map(|_| ()).unwrap_err().code,
            501,
            "over frame-max"
        );
        let mut kind = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(next(&mut kind, 4096).map(|_| ()).unwrap_err().code, 501);
        let mut class =
            BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, FRAME_END][..]);
        assert_eq!(next(&mut class, 4096).map(|_| ()).unwrap_err().code, 540);
        let mut short = BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 2, 0, 20, FRAME_END][..]);
        assert_eq!(next(&mut short, 4096).map(|_| ()).unwrap_err().code, 502);
    }

    /// `levels` arrays inside one another, as a field table's only value.
    fn nested_table(levels: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..levels {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        let mut entries = vec![1, b'k'];
        entries.extend_from_slice(&inner);
        let mut table = (entries.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entries);
        table
    }

    #[test]
    fn deeply_nested_tables_are_refused_before_they_are_parsed() {
        assert_eq!(table_depth(&nested_table(3)), Some(4));
        assert_eq!(table_depth(&[0, 0, 0, 0]), Some(1));
        assert_eq!(table_depth(&[0, 0, 0, 9, 1]), None, "cut short");
        // queue.declare on channel 1 with 26,000 nested arrays in its arguments: refused
        // with 502 at once, where the parser's recursion would overflow the stack.
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&nested_table(26_000));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[FRAME_METHOD, 0, 1]);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&[FRAME_END]);
        let e = next(&mut frame, 1 << 20).map(|_| ()).unwrap_err();
        assert_eq!(e.code, 502, "{}", e.text);
        // The same with a shallow table parses.
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&nested_table(3));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[FRAME_METHOD, 0, 1]);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&[FRAME_END]);
        assert!(matches!(
            next(&mut frame, 1 << 20),
            Ok(Some(Frame::Method(1, _)))
        ));
        // A content header whose headers property nests too deep.
        let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 0];
        header.extend_from_slice(&nested_table(1000));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[FRAME_HEADER, 0, 1]);
        frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&[FRAME_END]);
        assert_eq!(next(&mut frame, 1 << 20).map(|_| ()).unwrap_err().code, 502);
    }

    #[test]
    fn bodies_are_split_at_the_frame_size() {
        let mut w = Writer::new(64);
        let mut out = BytesMut::new();
        let body = vec![7u8; 150];
        let deliver = AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(
            amq_protocol::protocol::basic::Deliver::default(),
        ));
        w.content(3, deliver, AMQPProperties::default(), &body, &mut out);
        let mut frames = Vec::new();
        while let Some(f) = next(&mut out, 64).expect("valid") {
            frames.push(f);
        }
        let bodies: Vec<usize> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Body(3, b) => Some(b.len()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, [56, 56, 38]);
        assert!(matches!(frames[1], Frame::Header(3, 150, _)));
    }
}

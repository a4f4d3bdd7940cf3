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

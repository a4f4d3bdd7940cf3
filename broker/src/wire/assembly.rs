//! Frames ⇄ segments ⇄ assemblies. An assembly is one control, or one command with its
//! optional header and body segments (`message.transfer`).

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use super::error::{DecodeError, FrameError};
use super::frame::{
    write_frame, Frame, SegmentType, FIRST_FRAME, FIRST_SEGMENT, FRAME_HEADER_LEN, LAST_FRAME,
    LAST_SEGMENT, MAX_FRAME_SIZE,
};
use super::generated::{Command, Control, MessageProperties, SessionHeader};
use super::prim::{get_struct32, get_u8};
use super::types::Struct32;

/// Message content carried by the header and body segments of a command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content {
    /// The raw header segment: concatenated size-4 coded structs.
    pub header: Bytes,
    /// The body, joined from all body frames.
    pub body: Bytes,
    /// Whether a body segment was present (an empty body differs from none).
    pub has_body: bool,
}

impl Content {
    /// The header structs, each as its code and packed body.
    ///
    /// # Errors
    /// When the header segment is malformed.
    pub fn header_structs(&self) -> Result<Vec<Struct32>, DecodeError> {
        decode_header_structs(&self.header)
    }
}

/// Splits a header segment into its structs.
///
/// # Errors
/// When a struct is truncated.
pub fn decode_header_structs(header: &Bytes) -> Result<Vec<Struct32>, DecodeError> {
    let mut buf = header.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        out.push(get_struct32(&mut buf)?);
    }
    Ok(out)
}

/// A complete assembly as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Assembly {
    /// A control (track 0).
    Control(Control),
    /// A command with its session header and, for transfers, its content.
    Command {
        /// The session header (sync bit).
        header: SessionHeader,
        /// The command.
        command: Command,
        /// Header and body segments, when the command has any.
        content: Option<Content>,
    },
}

/// What went wrong while assembling: frame order, or a payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssemblyError {
    /// Broken framing: the connection must close with framing-error.
    Frame(FrameError),
    /// A control or command that does not decode; `command` says which track it was on.
    Decode {
        /// The channel it arrived on.
        channel: u16,
        /// True for the command track.
        command: bool,
        /// Why.
        error: DecodeError,
    },
    /// A command assembly larger than the limit, by its announced content length or by
    /// what arrived. Its remaining frames are dropped as they come; the session refuses the
    /// command and the connection carries on.
    TooLarge {
        /// The channel it arrived on.
        channel: u16,
        /// The size announced or reached.
        size: u64,
        /// The limit.
        max: usize,
        /// Class and command code, when the command segment had arrived.
        codes: Option<(u8, u8)>,
    },
}

#[derive(Default)]
struct Partial {
    segments: Vec<(SegmentType, Segment)>,
    in_segment: bool,
    size: usize,
    /// Refused as too large: the rest of its frames are dropped.
    discarding: bool,
}

/// A segment's bytes: a single frame's payload as received (no copy), or the payloads of
/// several frames joined.
enum Segment {
    Frame(Bytes),
    Joined(BytesMut),
}

impl Segment {
    fn push(&mut self, payload: Bytes) {
        match self {
            Segment::Frame(first) if first.is_empty() => *first = payload,
            Segment::Frame(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + payload.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&payload);
                *self = Segment::Joined(joined);
            }
            Segment::Joined(joined) => joined.extend_from_slice(&payload),
        }
    }

    /// The bytes so far.
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Frame(b) => b,
            Segment::Joined(b) => b,
        }
    }

    /// The bytes, still sharing the read buffer they arrived in (for what is decoded and
    /// dropped: commands and message headers).
    fn shared(self) -> Bytes {
        match self {
            Segment::Frame(b) => b,
            Segment::Joined(b) => b.freeze(),
        }
    }

    /// The bytes in an allocation of their own: a message body may sit in a queue for long
    /// and must not keep a whole read buffer alive.
    fn owned(self) -> Bytes {
        match self {
            Segment::Frame(b) => Bytes::copy_from_slice(&b),
            Segment::Joined(b) => b.freeze(),
        }
    }
}

/// Joins frames into assemblies, per channel and track.
pub struct Assembler {
    partial: HashMap<(u16, u8), Partial>,
    max_assembly: usize,
}

impl Assembler {
    /// An assembler that refuses assemblies larger than `max_assembly` bytes.
    pub fn new(max_assembly: usize) -> Self {
        Self {
            partial: HashMap::new(),
            max_assembly,
        }
    }

    /// Takes one frame; returns the channel and the assembly when this frame completes one.
    ///
    /// # Errors
    /// Out-of-order frames, oversize assemblies and undecodable payloads.
    pub fn push(&mut self, frame: Frame) -> Result<Option<(u16, Assembly)>, AssemblyError> {
        let key = (frame.channel, frame.track);
        let expected_track = u8::from(frame.segment_type != SegmentType::Control);
        if frame.track != expected_track {
            return Err(AssemblyError::Frame(FrameError::Sequence(
                "segment type does not match track",
            )));
        }
        let p = self.partial.entry(key).or_default();
        let first_frame = frame.flags & FIRST_FRAME != 0;
        let first_segment = frame.flags & FIRST_SEGMENT != 0;
        let last_frame = frame.flags & LAST_FRAME != 0;
        let last_segment = last_frame && frame.flags & LAST_SEGMENT != 0;
        if p.discarding {
            // Only the order of a refused assembly's frames still matters.
            if first_frame && (p.in_segment || first_segment) {
                return Err(seq("new segment before the last one ended"));
            }
            if !first_frame && !p.in_segment {
                return Err(seq("continuation frame without a segment"));
            }
            p.in_segment = !last_frame;
            if last_segment {
                self.partial.remove(&key);
            }
            return Ok(None);
        }
        if first_frame {
            if p.in_segment {
                return Err(seq("new segment before the last one ended"));
            }
            if first_segment != p.segments.is_empty() {
                return Err(seq("first-segment flag out of order"));
            }
            p.segments
                .push((frame.segment_type, Segment::Frame(Bytes::new())));
            p.in_segment = true;
        } else if !p.in_segment {
            return Err(seq("continuation frame without a segment"));
        }
        p.size += frame.payload.len();
        let Some(seg) = p.segments.last_mut() else {
            return Err(seq("no open segment"));
        };
        if seg.0 != frame.segment_type {
            return Err(seq("segment type changed inside a segment"));
        }
        seg.1.push(frame.payload);
        let mut too_large = (p.size > self.max_assembly).then_some(p.size as u64);
        if last_frame && seg.0 == SegmentType::Header && !last_segment {
            // Refuse a message by the length it announces, before its body arrives.
            let announced = announced_length(seg.1.bytes())
                .filter(|&n| n.saturating_add(p.size as u64) > self.max_assembly as u64);
            too_large = too_large.or(announced);
        }
        if let Some(size) = too_large {
            if frame.track == 0 {
                return Err(AssemblyError::Frame(FrameError::AssemblyTooLarge(
                    self.max_assembly,
                )));
            }
            let codes = p
                .segments
                .first()
                .filter(|(kind, _)| *kind == SegmentType::Command)
                .and_then(|(_, seg)| Some((*seg.bytes().first()?, *seg.bytes().get(1)?)));
            p.segments.clear();
            p.discarding = !last_segment;
            p.in_segment = !last_frame;
            if last_segment {
                self.partial.remove(&key);
            }
            return Err(AssemblyError::TooLarge {
                channel: frame.channel,
                size,
                max: self.max_assembly,
                codes,
            });
        }
        if last_frame {
            p.in_segment = false;
            if last_segment {
                let Some(done) = self.partial.remove(&key) else {
                    return Err(seq("no open assembly"));
                };
                return decode_assembly(frame.channel, done.segments).map(Some);
            }
        }
        Ok(None)
    }

    /// Forgets any partial assembly on `channel` (after a detach).
    pub fn reset_channel(&mut self, channel: u16) {
        self.partial.remove(&(channel, 0));
        self.partial.remove(&(channel, 1));
    }
}

/// The content length a header segment's `message-properties` announces, read in place:
/// this runs for every transfer, and the session decodes the header fully later anyway.
fn announced_length(mut header: &[u8]) -> Option<u64> {
    while header.len() >= 6 {
        let size = usize::try_from(u32::from_be_bytes(header[..4].try_into().ok()?)).ok()?;
        let end = size.checked_add(4)?;
        let body = header.get(4..end)?;
        header = &header[end..];
        let code = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
        if code == MessageProperties::CODE {
            let flags = *body.get(2)?;
            return if flags & 0x01 != 0 {
                Some(u64::from_be_bytes(body.get(4..12)?.try_into().ok()?))
            } else {
                None
            };
        }
    }
    None
}

fn seq(what: &'static str) -> AssemblyError {
    AssemblyError::Frame(FrameError::Sequence(what))
}

fn decode_assembly(
    channel: u16,
    segments: Vec<(SegmentType, Segment)>,
) -> Result<(u16, Assembly), AssemblyError> {
    let mut segs = segments.into_iter();
    let Some((kind, first)) = segs.next() else {
        return Err(seq("empty assembly"));
    };
    let mut first = first.shared();
    let decode_err = |command: bool, error: DecodeError| AssemblyError::Decode {
        channel,
        command,
        error,
    };
    match kind {
        SegmentType::Control => {
            if segs.next().is_some() {
                return Err(seq("control with extra segments"));
            }
            let control = decode_control(&mut first).map_err(|e| decode_err(false, e))?;
            Ok((channel, Assembly::Control(control)))
        }
        SegmentType::Command => {
            let (header, command) = decode_command(&mut first).map_err(|e| decode_err(true, e))?;
            let mut content = None;
            for (kind, bytes) in segs {
                let c = content.get_or_insert_with(Content::default);
                match kind {
                    SegmentType::Header if c.header.is_empty() && c.body.is_empty() => {
                        c.header = bytes.shared()
                    }
                    SegmentType::Body if !c.has_body => {
                        c.body = bytes.owned();
                        c.has_body = true;
                    }
                    _ => return Err(seq("unexpected segment in command assembly")),
                }
            }
            if content.is_some() && !command.has_segments() {
                return Err(seq("content segments on a command without content"));
            }
            Ok((
                channel,
                Assembly::Command {
                    header,
                    command,
                    content,
                },
            ))
        }
        SegmentType::Header | SegmentType::Body => {
            Err(seq("assembly starts with a header or body segment"))
        }
    }
}

/// Decodes a control segment payload.
///
/// # Errors
/// Unknown codes or malformed fields.
pub fn decode_control(buf: &mut Bytes) -> Result<Control, DecodeError> {
    let class = get_u8(buf)?;
    let code = get_u8(buf)?;
    Control::decode_fields(class, code, buf)
}

/// Decodes a command segment payload into its session header and command.
///
/// # Errors
/// Unknown codes or malformed fields.
pub fn decode_command(buf: &mut Bytes) -> Result<(SessionHeader, Command), DecodeError> {
    let class = get_u8(buf)?;
    let code = get_u8(buf)?;
    let header = SessionHeader::decode(buf)?;
    let command = Command::decode_fields(class, code, buf)?;
    Ok((header, command))
}

/// Writes assemblies as frames no larger than the negotiated maximum.
#[derive(Debug, Clone)]
pub struct FrameWriter {
    max_payload: usize,
}

impl FrameWriter {
    /// A writer for frames of at most `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        // The 16-bit size field bounds every frame, whatever was asked.
        let frame = max_frame_size.clamp(FRAME_HEADER_LEN + 1, MAX_FRAME_SIZE);
        Self {
            max_payload: frame - FRAME_HEADER_LEN,
        }
    }

    /// Writes a control on `channel`.
    pub fn control(&self, channel: u16, control: &Control, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        control.encode_body(&mut payload);
        self.segments(channel, 0, &[(SegmentType::Control, &payload[..])], out);
    }

    /// Writes a command with its sync bit and, for transfers, its content: the header
    /// segment and, when given, a body segment (which may be empty).
    pub fn command(
        &self,
        channel: u16,
        sync: bool,
        command: &Command,
        content: Option<(&[u8], Option<&[u8]>)>,
        out: &mut BytesMut,
    ) {
        let mut payload = BytesMut::new();
        let (class, code) = command.codes();
        payload.extend_from_slice(&[class, code]);
        SessionHeader { sync }.encode(&mut payload);
        command.encode_fields(&mut payload);
        match content {
            None => self.segments(channel, 1, &[(SegmentType::Command, &payload[..])], out),
            Some((header, None)) => self.segments(
                channel,
                1,
                &[
                    (SegmentType::Command, &payload[..]),
                    (SegmentType::Header, header),
                ],
                out,
            ),
            Some((header, Some(body))) => self.segments(
                channel,
                1,
                &[
                    (SegmentType::Command, &payload[..]),
                    (SegmentType::Header, header),
                    (SegmentType::Body, body),
                ],
                out,
            ),
        }
    }

    fn segments(&self, channel: u16, track: u8, segs: &[(SegmentType, &[u8])], out: &mut BytesMut) {
        let last_seg = segs.len().saturating_sub(1);
        for (i, (kind, data)) in segs.iter().enumerate() {
            let mut seg_flags = 0;
            if i == 0 {
                seg_flags |= FIRST_SEGMENT;
            }
            if i == last_seg {
                seg_flags |= LAST_SEGMENT;
            }
            let chunks: Vec<&[u8]> = if data.is_empty() {
                vec![&[][..]]
            } else {
                data.chunks(self.max_payload).collect()
            };
            let last_chunk = chunks.len() - 1;
            for (j, chunk) in chunks.into_iter().enumerate() {
                let mut flags = seg_flags;
                if j == 0 {
                    flags |= FIRST_FRAME;
                }
                if j == last_chunk {
                    flags |= LAST_FRAME;
                }
                write_frame(out, flags, *kind, track, channel, chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::FrameCodec;
    use crate::wire::generated::MessageTransfer;
    use tokio_util::codec::Decoder;

    /// Frames never exceed the 16-bit size, and a split body joins up again.
    #[test]
    fn oversized_writer_is_capped_and_body_round_trips() {
        let writer = FrameWriter::new(1 << 20);
        let body = vec![9u8; 200_000];
        let mut out = BytesMut::new();
        let cmd = Command::MessageTransfer(MessageTransfer::default());
        writer.command(3, true, &cmd, Some((&[][..], Some(&body[..]))), &mut out);
        let mut codec = FrameCodec::new(MAX_FRAME_SIZE);
        let mut asm = Assembler::new(1 << 20);
        let mut got = None;
        while let Some(f) = codec.decode(&mut out).expect("frame") {
            assert!(f.payload.len() + FRAME_HEADER_LEN <= MAX_FRAME_SIZE);
            if let Some((ch, a)) = asm.push(f).expect("assembly") {
                got = Some((ch, a));
            }
        }
        let Some((
            3,
            Assembly::Command {
                content: Some(c),
                header,
                ..
            },
        )) = got
        else {
            panic!("no transfer assembled");
        };
        assert!(header.sync);
        assert_eq!(c.body.len(), body.len());
    }
}

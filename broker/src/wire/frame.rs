//! Frames: the 12-byte header, its flags, and a tokio-util codec that checks every reserved
//! bit and the negotiated maximum size before buffering a payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::FrameError;

/// Bytes in a frame header; the frame size on the wire counts them.
pub const FRAME_HEADER_LEN: usize = 12;
/// The smallest max-frame-size a peer may negotiate (`MIN-MAX-FRAME-SIZE`).
pub const MIN_MAX_FRAME_SIZE: usize = 4096;
/// The largest frame the 16-bit size field can describe.
pub const MAX_FRAME_SIZE: usize = 0xffff;
/// The 0-10 protocol header a client opens with and a server answers.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x01\x01\x00\x0a";

/// Flag: first segment of an assembly.
pub const FIRST_SEGMENT: u8 = 0x08;
/// Flag: last segment of an assembly.
pub const LAST_SEGMENT: u8 = 0x04;
/// Flag: first frame of a segment.
pub const FIRST_FRAME: u8 = 0x02;
/// Flag: last frame of a segment.
pub const LAST_FRAME: u8 = 0x01;

/// Segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SegmentType {
    /// A control (track 0).
    Control = 0,
    /// A command (track 1).
    Command = 1,
    /// Message header structs.
    Header = 2,
    /// Message body.
    Body = 3,
}

impl SegmentType {
    fn from_u8(v: u8) -> Result<Self, FrameError> {
        Ok(match v {
            0 => SegmentType::Control,
            1 => SegmentType::Command,
            2 => SegmentType::Header,
            3 => SegmentType::Body,
            other => return Err(FrameError::SegmentType(other)),
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Segment and frame boundary flags (`FIRST_SEGMENT` ...).
    pub flags: u8,
    /// What the segment holds.
    pub segment_type: SegmentType,
    /// 0 for controls, 1 for commands and their segments.
    pub track: u8,
    /// The session channel.
    pub channel: u16,
    /// The payload, without the header.
    pub payload: Bytes,
}

impl Frame {
    /// Writes header and payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        write_frame(
            buf,
            self.flags,
            self.segment_type,
            self.track,
            self.channel,
            &self.payload,
        );
    }
}

/// Writes one frame; `payload` must fit the 16-bit size with the header.
pub fn write_frame(
    buf: &mut BytesMut,
    flags: u8,
    segment_type: SegmentType,
    track: u8,
    channel: u16,
    payload: &[u8],
) {
    buf.reserve(FRAME_HEADER_LEN + payload.len());
    buf.put_u8(flags);
    buf.put_u8(segment_type as u8);
    buf.put_u16(u16::try_from(FRAME_HEADER_LEN + payload.len()).unwrap_or(u16::MAX));
    buf.put_u8(0);
    buf.put_u8(track);
    buf.put_u16(channel);
    buf.put_u32(0);
    buf.put_slice(payload);
}

/// Frame codec with the negotiated maximum frame size.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec accepting frames up to `max_frame_size` bytes (header included).
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size: max_frame_size.clamp(MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
        }
    }

    /// The maximum frame size in force.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Changes the maximum, after tune.
    pub fn set_max_frame_size(&mut self, max: usize) {
        self.max_frame_size = max.clamp(MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE);
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let h = &src[..FRAME_HEADER_LEN];
        if h[0] & 0xf0 != 0 || h[4] != 0 || h[5] & 0xf0 != 0 || h[8..12] != [0, 0, 0, 0] {
            return Err(FrameError::ReservedBits);
        }
        let segment_type = SegmentType::from_u8(h[1])?;
        let track = h[5] & 0x0f;
        if track > 1 {
            return Err(FrameError::Track(track));
        }
        let size = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if size < FRAME_HEADER_LEN {
            return Err(FrameError::Undersize(size));
        }
        if size > self.max_frame_size {
            return Err(FrameError::Oversize {
                size,
                max: self.max_frame_size,
            });
        }
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        let flags = h[0];
        let channel = u16::from_be_bytes([h[6], h[7]]);
        let mut frame = src.split_to(size);
        frame.advance(FRAME_HEADER_LEN);
        Ok(Some(Frame {
            flags,
            segment_type,
            track,
            channel,
            payload: frame.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heartbeat_vector() {
        let f = Frame {
            flags: 0x0f,
            segment_type: SegmentType::Control,
            track: 0,
            channel: 0,
            payload: Bytes::from_static(&[0x01, 0x0a, 0x00, 0x00]),
        };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(
            &out[..],
            &[0x0f, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x0a, 0, 0]
        );
        let mut codec = FrameCodec::new(MAX_FRAME_SIZE);
        assert_eq!(codec.decode(&mut out).expect("decode"), Some(f));
    }

    #[test]
    fn bad_headers_are_refused_before_buffering() {
        let mut codec = FrameCodec::new(4096);
        let mut reserved = BytesMut::from(&[0x4f, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(codec.decode(&mut reserved), Err(FrameError::ReservedBits));
        let mut oversize = BytesMut::from(&[0x0f, 0, 0x20, 0x00, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut oversize),
            Err(FrameError::Oversize { size: 8192, .. })
        ));
        let mut under = BytesMut::from(&[0x0f, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(codec.decode(&mut under), Err(FrameError::Undersize(4)));
        let mut track = BytesMut::from(&[0x0f, 0, 0, 12, 0, 2, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(codec.decode(&mut track), Err(FrameError::Track(2)));
        let mut seg = BytesMut::from(&[0x0f, 7, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(codec.decode(&mut seg), Err(FrameError::SegmentType(7)));
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            0u8..16,
            0u8..4,
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(flags, seg, channel, payload)| Frame {
                flags,
                segment_type: SegmentType::from_u8(seg).expect("valid"),
                track: u8::from(seg != 0),
                channel,
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        /// However the bytes are cut into reads, the same frames come out.
        #[test]
        fn any_chunking_gives_the_same_frames(
            frames in proptest::collection::vec(arb_frame(), 1..20),
            cuts in proptest::collection::vec(1usize..64, 1..200),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let mut codec = FrameCodec::new(MAX_FRAME_SIZE);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(f) = codec.decode(&mut buf).expect("valid frames") {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
        }
    }

    #[test]
    fn partial_input_waits() {
        let mut codec = FrameCodec::new(4096);
        let mut part = BytesMut::from(&[0x0f, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1][..]);
        assert_eq!(codec.decode(&mut part), Ok(None));
        assert_eq!(part.len(), 13);
    }
}

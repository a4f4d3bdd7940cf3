//! Decoding errors of the 0-10 codec. Every one of them is the peer's fault and maps to a
//! `connection.close` with framing-error (501) or a session exception, never a panic.

use thiserror::Error;

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("truncated input")]
    Truncated,
    /// A message header held the same struct twice (two `message-properties` would let
    /// a sender show one user-id to the broker and another to receivers).
    #[error("struct 0x{0:04x} appears twice in the message header")]
    DuplicateStruct(u16),
    /// A string type held bytes that are not UTF-8.
    #[error("string is not valid utf-8")]
    InvalidUtf8,
    /// A map, list or array value carried a type code of no known width.
    #[error("unknown type code 0x{0:02x}")]
    UnknownType(u8),
    /// A struct32 carried a struct other than the one expected.
    #[error("expected struct 0x{expected:04x}, found 0x{found:04x}")]
    UnexpectedStruct {
        /// The code the field requires.
        expected: u16,
        /// The code that arrived.
        found: u16,
    },
    /// A control of an unknown class or code.
    #[error("unknown control {class}.{code}")]
    UnknownControl {
        /// Class code.
        class: u8,
        /// Control code.
        code: u8,
    },
    /// A command of an unknown (or unimplemented) class or code.
    #[error("unknown command {class}.{code}")]
    UnknownCommand {
        /// Class code.
        class: u8,
        /// Command code.
        code: u8,
    },
    /// Anything else that breaks the layout rules.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
}

/// Why a frame could not be taken off the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Version or reserved bits of the frame header are not zero.
    #[error("reserved bits set in frame header")]
    ReservedBits,
    /// A segment type outside 0..=3.
    #[error("invalid segment type {0}")]
    SegmentType(u8),
    /// A track other than 0 (control) or 1 (command).
    #[error("invalid track {0}")]
    Track(u8),
    /// A size smaller than the header.
    #[error("frame size {0} smaller than the frame header")]
    Undersize(usize),
    /// A size larger than the negotiated maximum.
    #[error("frame size {size} exceeds the maximum {max}")]
    Oversize {
        /// The size announced.
        size: usize,
        /// The negotiated maximum.
        max: usize,
    },
    /// Frames arrived out of segment/assembly order, or of the wrong type for the track.
    #[error("frame out of sequence: {0}")]
    Sequence(&'static str),
    /// An assembly grew past the configured limit.
    #[error("assembly exceeds {0} bytes")]
    AssemblyTooLarge(usize),
    /// An I/O error from the transport.
    #[error("i/o error: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

//! The AMQP 0-10 codec: primitive types, frames, segments, assemblies, and the controls,
//! commands and structs generated from the spec. No I/O and no runtime here.

pub mod assembly;
pub mod error;
pub mod frame;
pub mod generated;
pub mod prim;
pub mod types;

#[cfg(test)]
// A strategy for every primitive type, whether the generated tests use it yet or not
// (newer compilers report the unused ones).
#[allow(dead_code)]
mod arb;
#[cfg(test)]
mod generated_tests;

pub use assembly::{Assembler, Assembly, AssemblyError, Content, FrameWriter};
pub use error::{DecodeError, FrameError};
pub use frame::{Frame, FrameCodec, SegmentType, PROTOCOL_HEADER};
pub use generated::*;
pub use types::*;

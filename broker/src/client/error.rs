//! The one error type of the client: what went wrong on the connection, a session or locally.

use std::io;
use std::sync::Arc;

use thiserror::Error;

use crate::wire::{AssemblyError, DecodeError, ExecutionErrorCode, FrameError, SessionDetachCode};

/// Why a client operation failed.
///
/// Cloneable because one failure (a dropped connection, a session exception) has to be
/// reported to every operation that was waiting on it.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The connection URL or an option could not be understood.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The text given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument cannot be sent as asked (for example a name longer than a `str8`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// Connecting or negotiating took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer answered the protocol header with another protocol version.
    #[error("broker speaks AMQP {major}-{minor}, not 0-10")]
    Version {
        /// Major version in the broker's header.
        major: u8,
        /// Minor version in the broker's header.
        minor: u8,
    },
    /// The peer sent bytes that break the 0-10 framing or encoding rules.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No SASL mechanism both sides support, or the broker refused the login.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// TLS could not be set up or the handshake failed (an untrusted certificate, say).
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker closed the connection (`connection.close`).
    #[error("connection closed by broker: {code} {text}")]
    Connection {
        /// The `connection.close` reply code (200 normal, 320 connection-forced, ...).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The broker raised an `execution.exception`; the session is no longer usable.
    #[error("session error {code} ({}): {text}", ExecutionErrorCode(*.code).name().unwrap_or("unknown"))]
    Session {
        /// The execution error code (404 not-found, 405 resource-locked, ...).
        code: u16,
        /// The broker's description.
        text: String,
    },
    /// The session was detached (`session.detached` with a non-normal code, or detached by
    /// the broker without an exception).
    #[error("session detached: {} ({code})", SessionDetachCode(*.code).name().unwrap_or("unknown"))]
    Detached {
        /// The `session.detached` code (1 session-busy, 2 transport-busy, ...).
        code: u8,
    },
    /// No input from the broker for two heartbeat intervals.
    #[error("heartbeat timeout: broker silent for {0} s")]
    HeartbeatTimeout(u64),
    /// The connection ended: closed by this side, or gone.
    #[error("connection closed")]
    Closed,
}

impl ClientError {
    /// The execution error code when this is a session exception.
    pub fn session_code(&self) -> Option<u16> {
        match self {
            ClientError::Session { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<AssemblyError> for ClientError {
    fn from(e: AssemblyError) -> Self {
        match e {
            AssemblyError::Frame(f) => f.into(),
            AssemblyError::Decode {
                channel,
                command,
                error,
            } => ClientError::Protocol(format!(
                "undecodable {} on channel {channel}: {error}",
                if command { "command" } else { "control" }
            )),
            AssemblyError::TooLarge {
                channel, size, max, ..
            } => ClientError::Protocol(format!(
                "assembly of {size} bytes on channel {channel} exceeds {max}"
            )),
        }
    }
}

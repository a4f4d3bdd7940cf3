//! Errors of the broker model and their one mapping onto 0-10 execution error codes.

use thiserror::Error;

use crate::wire::ExecutionErrorCode;

/// Why a broker operation was refused. The text names the object concerned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A queue, exchange or destination that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// An operation the broker does not allow on that object (530).
    #[error("{0}")]
    NotAllowed(String),
    /// An exclusive object owned by another session (405).
    #[error("{0}")]
    ResourceLocked(String),
    /// A condition set by the caller (if-empty, if-unused) that does not hold (406).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Unauthorized(String),
    /// A required field is missing or empty (531).
    #[error("{0}")]
    IllegalArgument(String),
    /// A field value the broker cannot accept (542).
    #[error("{0}")]
    InvalidArgument(String),
    /// A queue limit was reached with the reject policy (506).
    #[error("{0}")]
    LimitExceeded(String),
    /// A command in the wrong state (503).
    #[error("{0}")]
    CommandInvalid(String),
    /// An object in the wrong state for the command, such as a transaction branch not
    /// ended (409).
    #[error("{0}")]
    IllegalState(String),
    /// The operation is not implemented (540).
    #[error("{0}")]
    NotImplemented(String),
    /// Something the broker failed to do on its own account (541).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The `execution.exception` error code for this error.
    pub fn code(&self) -> ExecutionErrorCode {
        match self {
            Error::NotFound(_) => ExecutionErrorCode::NOT_FOUND,
            Error::NotAllowed(_) => ExecutionErrorCode::NOT_ALLOWED,
            Error::ResourceLocked(_) => ExecutionErrorCode::RESOURCE_LOCKED,
            Error::PreconditionFailed(_) => ExecutionErrorCode::PRECONDITION_FAILED,
            Error::Unauthorized(_) => ExecutionErrorCode::UNAUTHORIZED_ACCESS,
            Error::IllegalArgument(_) => ExecutionErrorCode::ILLEGAL_ARGUMENT,
            Error::InvalidArgument(_) => ExecutionErrorCode::INVALID_ARGUMENT,
            Error::LimitExceeded(_) => ExecutionErrorCode::RESOURCE_LIMIT_EXCEEDED,
            Error::CommandInvalid(_) => ExecutionErrorCode::COMMAND_INVALID,
            Error::IllegalState(_) => ExecutionErrorCode::ILLEGAL_STATE,
            Error::NotImplemented(_) => ExecutionErrorCode::NOT_IMPLEMENTED,
            Error::Internal(_) => ExecutionErrorCode::INTERNAL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes qpidd gives for each kind of refusal.
    #[test]
    fn codes_match_qpidd() {
        let table = [
            (Error::NotFound(String::new()), 404),
            (Error::ResourceLocked(String::new()), 405),
            (Error::PreconditionFailed(String::new()), 406),
            (Error::Unauthorized(String::new()), 403),
            (Error::NotAllowed(String::new()), 530),
            (Error::InvalidArgument(String::new()), 542),
            (Error::IllegalArgument(String::new()), 531),
            (Error::LimitExceeded(String::new()), 506),
            (Error::CommandInvalid(String::new()), 503),
            (Error::IllegalState(String::new()), 409),
            (Error::NotImplemented(String::new()), 540),
            (Error::Internal(String::new()), 541),
        ];
        for (e, code) in table {
            assert_eq!(e.code().0, code, "{e:?}");
        }
    }
}

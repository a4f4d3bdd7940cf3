//! Helpers the store's unit tests share.

use bytes::Bytes;

use crate::{QueueRecord, StoreOp};

/// Declares durable queue `name` (with arguments that must survive as they are).
pub(crate) fn queue(name: &str) -> StoreOp {
    StoreOp::PutQueue(QueueRecord {
        name: name.into(),
        alternate: None,
        auto_delete: false,
        args: Bytes::from_static(b"args"),
    })
}

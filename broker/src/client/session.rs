//! `Session`: commands with their completion, transfers, acknowledgements.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use super::driver::{next_ticket, Request, Shared, Waiter};
use super::error::ClientError;
use super::message::Message;
use super::subscription::{SubscribeOptions, Subscription};
use crate::wire::{
    Command, DecodeError, ExchangeBind, ExchangeBound, ExchangeBoundResult, ExchangeDeclare,
    ExchangeDelete, ExchangeQuery, ExchangeQueryResult, ExchangeUnbind, ExecutionSync,
    MessageAccept, MessageReject, MessageRejectCode, MessageRelease, QueueDeclare, QueueDelete,
    QueuePurge, QueueQuery, QueueQueryResult, SequenceSet, Struct32, TxCommit, TxRollback,
    TxSelect,
};

/// An attached 0-10 session: an ordered stream of commands, each completed by the broker.
///
/// Cheap to clone; clones share the session. Commands made through any clone are sent in
/// the order the calls reach the connection. After a session exception every call fails
/// with that [`ClientError::Session`].
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    channel: u16,
    name: String,
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

/// A command on its way: resolves once the broker's `session.completed` covers it.
///
/// Awaiting it gives `Ok(())` or the error that broke the session; [`Completion::result`]
/// also gives the command's `execution.result`. Dropping it cancels nothing.
///
/// A broker reports completion of a command sent without the sync bit only when asked, so
/// the first time such a completion is awaited the client sends one `execution.sync`,
/// unless a later synced command already covers it. Pipelining many commands and awaiting
/// them in order thus costs one extra command per batch at most.
pub struct Completion {
    fut: Pin<Box<dyn Future<Output = Result<Option<Struct32>, ClientError>> + Send>>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

impl Completion {
    /// Waits for completion and returns the command's result struct, if it has one.
    ///
    /// # Errors
    /// The session exception or connection failure that stopped the command.
    pub async fn result(self) -> Result<Option<Struct32>, ClientError> {
        self.fut.await
    }
}

impl Future for Completion {
    type Output = Result<(), ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx).map(|r| r.map(drop))
    }
}

impl Session {
    pub(crate) fn new(
        channel: u16,
        name: String,
        tx: mpsc::Sender<Request>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel,
                name,
                tx,
                shared,
            }),
        }
    }

    /// The session name given at attach.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The channel the session is attached on.
    pub fn channel(&self) -> u16 {
        self.inner.channel
    }

    /// Sends any command; `sync` sets the session header's sync bit, asking the broker to
    /// report completion at once. The lower layer under every other method, for commands
    /// without a helper (dtx, message.acquire, ...).
    ///
    /// # Errors
    /// When the connection is gone. Failures of the command itself come from the
    /// [`Completion`].
    pub async fn execute(
        &self,
        command: impl Into<Command>,
        sync: bool,
    ) -> Result<Completion, ClientError> {
        let (waiter, rx) = waiter();
        let ticket = waiter.ticket;
        self.request(Request::Command {
            channel: self.inner.channel,
            command: command.into(),
            sync,
            reply: Some(waiter),
        })
        .await?;
        Ok(self.completion(rx, (!sync).then_some(ticket)))
    }

    /// Sends a command with the sync bit and waits for its completion and result.
    ///
    /// # Errors
    /// [`ClientError::Session`] when the broker raised an exception for it (the session is
    /// then broken), or the connection failure.
    pub async fn call(&self, command: impl Into<Command>) -> Result<Option<Struct32>, ClientError> {
        self.execute(command, true).await?.result().await
    }

    /// Sends a command without waiting for anything (credit grants, acknowledgements).
    pub(crate) async fn post(
        &self,
        command: impl Into<Command>,
        sync: bool,
    ) -> Result<(), ClientError> {
        self.request(Request::Command {
            channel: self.inner.channel,
            command: command.into(),
            sync,
            reply: None,
        })
        .await
    }

    /// `queue.declare`.
    ///
    /// # Errors
    /// For example 404 for a passive declare of a missing queue, 405 for another session's
    /// exclusive queue.
    pub async fn declare_queue(&self, declare: QueueDeclare) -> Result<(), ClientError> {
        check_str8("queue", declare.queue.as_deref())?;
        check_str8("alternate-exchange", declare.alternate_exchange.as_deref())?;
        self.call(declare).await.map(drop)
    }

    /// `queue.delete` (with its `if-unused` and `if-empty` conditions).
    ///
    /// # Errors
    /// 404 for a missing queue, 406 when a condition does not hold.
    pub async fn delete_queue(&self, delete: QueueDelete) -> Result<(), ClientError> {
        check_str8("queue", delete.queue.as_deref())?;
        self.call(delete).await.map(drop)
    }

    /// `queue.purge`: drops the queue's available messages.
    ///
    /// # Errors
    /// 404 for a missing queue.
    pub async fn purge_queue(&self, queue: &str) -> Result<(), ClientError> {
        check_str8("queue", Some(queue))?;
        self.call(QueuePurge {
            queue: Some(queue.to_string()),
        })
        .await
        .map(drop)
    }

    /// `queue.query`. For a missing queue the broker answers with every field absent
    /// (`queue` is `None`), not an error.
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn query_queue(&self, queue: &str) -> Result<QueueQueryResult, ClientError> {
        check_str8("queue", Some(queue))?;
        let s = self
            .call(QueueQuery {
                queue: Some(queue.to_string()),
            })
            .await?;
        decode_result(s, "queue.query", QueueQueryResult::from_struct32)
    }

    /// `exchange.declare`.
    ///
    /// # Errors
    /// 530 for reserved names or a type change, 404 for an unknown type.
    pub async fn declare_exchange(&self, declare: ExchangeDeclare) -> Result<(), ClientError> {
        check_str8("exchange", declare.exchange.as_deref())?;
        self.call(declare).await.map(drop)
    }

    /// `exchange.delete`.
    ///
    /// # Errors
    /// 404 for a missing exchange, 530 when it is some queue's alternate.
    pub async fn delete_exchange(&self, delete: ExchangeDelete) -> Result<(), ClientError> {
        check_str8("exchange", delete.exchange.as_deref())?;
        self.call(delete).await.map(drop)
    }

    /// `exchange.query`; a missing exchange gives `not_found`, not an error.
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn query_exchange(&self, name: &str) -> Result<ExchangeQueryResult, ClientError> {
        check_str8("exchange", Some(name))?;
        let s = self
            .call(ExchangeQuery {
                name: Some(name.to_string()),
            })
            .await?;
        decode_result(s, "exchange.query", ExchangeQueryResult::from_struct32)
    }

    /// `exchange.bind`.
    ///
    /// # Errors
    /// 404 when the queue or exchange is missing.
    pub async fn bind(&self, bind: ExchangeBind) -> Result<(), ClientError> {
        check_str8("queue", bind.queue.as_deref())?;
        check_str8("exchange", bind.exchange.as_deref())?;
        check_str8("binding-key", bind.binding_key.as_deref())?;
        self.call(bind).await.map(drop)
    }

    /// `exchange.unbind`.
    ///
    /// # Errors
    /// 404 when the queue or exchange is missing.
    pub async fn unbind(&self, unbind: ExchangeUnbind) -> Result<(), ClientError> {
        check_str8("queue", unbind.queue.as_deref())?;
        check_str8("exchange", unbind.exchange.as_deref())?;
        check_str8("binding-key", unbind.binding_key.as_deref())?;
        self.call(unbind).await.map(drop)
    }

    /// `exchange.bound`: which of the given criteria match a binding.
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn bound(&self, bound: ExchangeBound) -> Result<ExchangeBoundResult, ClientError> {
        check_str8("queue", bound.queue.as_deref())?;
        check_str8("exchange", bound.exchange.as_deref())?;
        check_str8("binding-key", bound.binding_key.as_deref())?;
        let s = self.call(bound).await?;
        decode_result(s, "exchange.bound", ExchangeBoundResult::from_struct32)
    }

    /// `tx.select`: makes the session transactional.
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn tx_select(&self) -> Result<(), ClientError> {
        self.call(TxSelect {}).await.map(drop)
    }

    /// `tx.commit`.
    ///
    /// # Errors
    /// 503 when the session is not transactional.
    pub async fn tx_commit(&self) -> Result<(), ClientError> {
        self.call(TxCommit {}).await.map(drop)
    }

    /// `tx.rollback`.
    ///
    /// # Errors
    /// 503 when the session is not transactional.
    pub async fn tx_rollback(&self) -> Result<(), ClientError> {
        self.call(TxRollback {}).await.map(drop)
    }

    /// `execution.sync`: returns once the broker completed every command sent before it.
    ///
    /// # Errors
    /// The exception that broke the session, or the connection failure.
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.call(ExecutionSync {}).await.map(drop)
    }

    /// Sends `message.transfer` to `exchange` (`""` is the default exchange, which routes
    /// by the routing key to the queue of that name) without the sync bit, for pipelining.
    /// The returned [`Completion`] resolves when the broker has taken the message
    /// (enqueued, and written to disk when persistent).
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn transfer(
        &self,
        exchange: &str,
        message: Message,
    ) -> Result<Completion, ClientError> {
        self.transfer_with(exchange, message, false).await
    }

    /// As [`Session::transfer`], with the sync bit: the broker reports completion of this
    /// and every earlier command promptly. Ends a pipelined batch.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn transfer_sync(
        &self,
        exchange: &str,
        message: Message,
    ) -> Result<Completion, ClientError> {
        self.transfer_with(exchange, message, true).await
    }

    /// Sends one message and waits until the broker completed it.
    ///
    /// # Errors
    /// 404 for a missing exchange, 403 for a user-id that is not the login, or the
    /// connection failure.
    pub async fn send(&self, exchange: &str, message: Message) -> Result<(), ClientError> {
        self.transfer_sync(exchange, message).await?.await
    }

    async fn transfer_with(
        &self,
        exchange: &str,
        message: Message,
        sync: bool,
    ) -> Result<Completion, ClientError> {
        check_str8("exchange", Some(exchange))?;
        let (waiter, rx) = waiter();
        let ticket = waiter.ticket;
        self.request(Request::Transfer {
            channel: self.inner.channel,
            destination: exchange.to_string(),
            message: Box::new(message),
            sync,
            reply: Some(waiter),
        })
        .await?;
        Ok(self.completion(rx, (!sync).then_some(ticket)))
    }

    /// `message.accept` for deliveries (by their ids) of explicit-accept subscriptions.
    /// Sent without waiting; await the [`Completion`] to know the broker processed it.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn accept(&self, ids: SequenceSet) -> Result<Completion, ClientError> {
        self.execute(
            MessageAccept {
                transfers: Some(ids),
            },
            false,
        )
        .await
    }

    /// `message.release`: gives deliveries back to their queue, optionally marking them
    /// redelivered.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn release(
        &self,
        ids: SequenceSet,
        set_redelivered: bool,
    ) -> Result<Completion, ClientError> {
        self.execute(
            MessageRelease {
                transfers: Some(ids),
                set_redelivered,
            },
            false,
        )
        .await
    }

    /// `message.reject`: the broker drops the deliveries or moves them to the queue's
    /// alternate exchange.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn reject(
        &self,
        ids: SequenceSet,
        code: MessageRejectCode,
        text: &str,
    ) -> Result<Completion, ClientError> {
        check_str8("text", Some(text))?;
        self.execute(
            MessageReject {
                transfers: Some(ids),
                code: Some(code),
                text: Some(text.to_string()),
            },
            false,
        )
        .await
    }

    /// Declares `queue` exclusive to this session and deleted with it: a private queue for
    /// replies, events or a topic subscription.
    ///
    /// # Errors
    /// When the broker refuses the declare (a name in use, the ACL).
    pub async fn declare_private_queue(&self, queue: &str) -> Result<(), ClientError> {
        self.declare_queue(QueueDeclare {
            queue: Some(queue.to_string()),
            exclusive: true,
            auto_delete: true,
            ..QueueDeclare::default()
        })
        .await
    }

    /// A fresh private `reply-<uuid>` queue to name in `reply-to`, subscribed without
    /// acknowledgements (a reply is consumed when delivered); its name and subscription.
    ///
    /// # Errors
    /// When the broker refuses the queue or the subscription.
    pub async fn reply_queue(&self) -> Result<(String, Subscription), ClientError> {
        let queue = format!("reply-{}", super::random_uuid());
        self.declare_private_queue(&queue).await?;
        let replies = self
            .subscribe(&queue, SubscribeOptions::unacknowledged())
            .await?;
        Ok((queue, replies))
    }

    /// Subscribes to `queue`: `message.subscribe`, `message.set-flow-mode` credit, and
    /// byte and message credit, then waits until the broker completed them.
    ///
    /// # Errors
    /// 404 for a missing queue, 405 for another session's exclusive queue, 530 for a
    /// destination already used on this session.
    pub async fn subscribe(
        &self,
        queue: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        Subscription::start(self.clone(), queue, options).await
    }

    /// Detaches the session (`session.detach`, waits for `detached`). Other clones of this
    /// session stop working too.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn close(self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Detach {
            channel: self.inner.channel,
            reply,
        })
        .await?;
        rx.await.map_err(|_| self.inner.shared.error())?
    }

    pub(crate) async fn request(&self, request: Request) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(request)
            .await
            .map_err(|_| self.inner.shared.error())
    }

    /// The completion of a command just queued; `demand` is its ticket when it was sent
    /// without the sync bit.
    fn completion(
        &self,
        mut rx: oneshot::Receiver<Result<Option<Struct32>, ClientError>>,
        demand: Option<u64>,
    ) -> Completion {
        let tx = self.inner.tx.clone();
        let shared = self.inner.shared.clone();
        // Lazy: nothing is asked of the broker unless someone awaits.
        let fut = async move {
            if let Some(ticket) = demand {
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(shared.error()),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        // Queued behind the command itself, so the driver knows it by then.
                        let _ = tx.send(Request::Demand { ticket }).await;
                    }
                }
            }
            rx.await.unwrap_or_else(|_| Err(shared.error()))
        };
        Completion { fut: Box::pin(fut) }
    }
}

fn waiter() -> (
    Waiter,
    oneshot::Receiver<Result<Option<Struct32>, ClientError>>,
) {
    let (reply, rx) = oneshot::channel();
    let waiter = Waiter {
        ticket: next_ticket(),
        reply,
    };
    (waiter, rx)
}

/// Names travel as `str8`: refuse what would be cut short on the wire.
pub(crate) fn check_str8(field: &str, value: Option<&str>) -> Result<(), ClientError> {
    match value {
        Some(v) if v.len() > 255 => Err(ClientError::InvalidArgument(format!(
            "{field} is {} bytes, more than the 255 a str8 holds",
            v.len()
        ))),
        _ => Ok(()),
    }
}

fn decode_result<T>(
    value: Option<Struct32>,
    command: &str,
    decode: impl FnOnce(&Struct32) -> Result<T, DecodeError>,
) -> Result<T, ClientError> {
    let value = value.ok_or_else(|| {
        ClientError::Protocol(format!("broker completed {command} without a result"))
    })?;
    decode(&value).map_err(|e| ClientError::Protocol(format!("{command} result: {e}")))
}

//! `Subscription`: deliveries from one queue, with credit kept topped up.

use tokio::sync::mpsc;

use super::driver::Request;
use super::error::ClientError;
use super::message::Delivery;
use super::session::{check_str8, Completion, Session};
use crate::wire::{
    FieldTable, MessageAcceptMode, MessageAcquireMode, MessageCancel, MessageCreditUnit,
    MessageFlow, MessageFlowMode, MessageFlush, MessageSetFlowMode, MessageStop, MessageSubscribe,
    SequenceSet,
};

/// Unlimited credit in `message.flow`.
const UNLIMITED: u32 = 0xffff_ffff;

/// How to subscribe (`message.subscribe` fields plus the client's credit policy).
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The destination naming the subscription on this session; the queue name if `None`.
    pub destination: Option<String>,
    /// Explicit: the broker keeps each delivery until `message.accept`. None: deliveries
    /// count as accepted when sent.
    pub accept_mode: MessageAcceptMode,
    /// Pre-acquired: deliveries are taken off the queue for this client. Not-acquired:
    /// browse, the messages stay available.
    pub acquire_mode: MessageAcquireMode,
    /// At most this many deliveries in flight; credit is granted again as
    /// [`Subscription::next`] hands messages out (like qpid.messaging's capacity).
    /// `None`: unlimited credit.
    pub capacity: Option<u32>,
    /// Ask to be the queue's only consumer.
    pub exclusive: bool,
    /// `message.subscribe` arguments.
    pub arguments: Option<FieldTable>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            destination: None,
            accept_mode: MessageAcceptMode::EXPLICIT,
            acquire_mode: MessageAcquireMode::PRE_ACQUIRED,
            capacity: Some(100),
            exclusive: false,
            arguments: None,
        }
    }
}

impl SubscribeOptions {
    /// Deliveries that count as accepted when sent (replies, events a reader only watches).
    pub fn unacknowledged() -> Self {
        Self {
            accept_mode: MessageAcceptMode::NONE,
            ..Self::default()
        }
    }
}

/// Deliveries of one `message.subscribe`.
///
/// Dropping it without [`Subscription::cancel`] leaves the consumer on the broker until the
/// session ends; messages delivered meanwhile are dropped here and requeued by the broker
/// when the session ends.
pub struct Subscription {
    session: Session,
    destination: String,
    accept_mode: MessageAcceptMode,
    acquire_mode: MessageAcquireMode,
    rx: mpsc::UnboundedReceiver<Result<Delivery, ClientError>>,
    capacity: Option<u32>,
    /// Deliveries handed out since credit was last granted.
    consumed: u32,
    failed: Option<ClientError>,
}

impl Subscription {
    pub(crate) async fn start(
        session: Session,
        queue: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let destination = options.destination.unwrap_or_else(|| queue.to_string());
        check_str8("queue", Some(queue))?;
        check_str8("destination", Some(&destination))?;
        if options.capacity == Some(0) {
            return Err(ClientError::InvalidArgument(
                "capacity 0 would never receive anything".into(),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered before subscribing, so no delivery can arrive unrouted.
        session
            .request(Request::Subscribe {
                channel: session.channel(),
                destination: destination.clone(),
                deliveries: tx,
            })
            .await?;
        session
            .post(
                MessageSubscribe {
                    queue: Some(queue.to_string()),
                    destination: Some(destination.clone()),
                    accept_mode: Some(options.accept_mode),
                    acquire_mode: Some(options.acquire_mode),
                    exclusive: options.exclusive,
                    resume_id: None,
                    resume_ttl: None,
                    arguments: options.arguments,
                },
                false,
            )
            .await?;
        session
            .post(
                MessageSetFlowMode {
                    destination: Some(destination.clone()),
                    flow_mode: Some(MessageFlowMode::CREDIT),
                },
                false,
            )
            .await?;
        session
            .post(
                flow(&destination, MessageCreditUnit::BYTE, UNLIMITED),
                false,
            )
            .await?;
        let credit = options.capacity.unwrap_or(UNLIMITED);
        // The synced last command completes only after the subscribe did: any error in
        // the subscribe surfaces here.
        session
            .call(flow(&destination, MessageCreditUnit::MESSAGE, credit))
            .await?;
        Ok(Subscription {
            session,
            destination,
            accept_mode: options.accept_mode,
            acquire_mode: options.acquire_mode,
            rx,
            capacity: options.capacity,
            consumed: 0,
            failed: None,
        })
    }

    /// The destination naming this subscription.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The session the subscription lives on.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The next delivery; `Ok(None)` once the subscription has ended (cancelled, or its
    /// session closed normally).
    ///
    /// With a capacity, credit for the messages handed out is granted again (at the start
    /// of a call) once half the capacity has been used. Cancel-safe: dropping the future
    /// loses no delivery, so it can race a timer.
    ///
    /// # Errors
    /// The session exception or connection failure that ended the subscription (again on
    /// every later call).
    pub async fn next(&mut self) -> Result<Option<Delivery>, ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.grant_owed_credit().await?;
        match self.rx.recv().await {
            Some(Ok(delivery)) => {
                if self.capacity.is_some() {
                    self.consumed += 1;
                }
                Ok(Some(delivery))
            }
            Some(Err(e)) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            None => Ok(None),
        }
    }

    async fn grant_owed_credit(&mut self) -> Result<(), ClientError> {
        let Some(capacity) = self.capacity else {
            return Ok(());
        };
        if self.consumed >= (capacity / 2).max(1) {
            let grant = self.consumed;
            self.session
                .post(
                    flow(&self.destination, MessageCreditUnit::MESSAGE, grant),
                    false,
                )
                .await?;
            // Only once sent: a cancelled call grants it next time.
            self.consumed -= grant;
        }
        Ok(())
    }

    /// Accepts one delivery (explicit accept mode). See [`Session::accept`] for sets.
    ///
    /// # Errors
    /// When the connection is gone.
    pub async fn accept(&self, delivery: &Delivery) -> Result<Completion, ClientError> {
        self.session
            .accept(SequenceSet::from_range(delivery.id, delivery.id))
            .await
    }

    /// `message.flush`: the broker sends what the current credit allows, then sets the
    /// credit to zero. Returns once that is done; credit is not granted again after it.
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        self.capacity = None;
        self.session
            .call(MessageFlush {
                destination: Some(self.destination.clone()),
            })
            .await
            .map(drop)
    }

    /// `message.stop`: no more deliveries until credit is granted again (which
    /// [`Subscription::next`] then no longer does).
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn stop(&mut self) -> Result<(), ClientError> {
        self.capacity = None;
        self.session
            .call(MessageStop {
                destination: Some(self.destination.clone()),
            })
            .await
            .map(drop)
    }

    /// `message.cancel`, then releases acquired messages that arrived but were never handed
    /// out by [`Subscription::next`].
    ///
    /// # Errors
    /// Session or connection failures.
    pub async fn cancel(mut self) -> Result<(), ClientError> {
        self.capacity = None;
        let result = self
            .session
            .call(MessageCancel {
                destination: Some(self.destination.clone()),
            })
            .await
            .map(drop);
        // Everything the broker sent before completing the cancel is already queued here.
        let mut unseen = SequenceSet::new();
        while let Ok(Ok(d)) = self.rx.try_recv() {
            unseen.add(d.id);
        }
        let owned = self.accept_mode == MessageAcceptMode::EXPLICIT
            && self.acquire_mode == MessageAcquireMode::PRE_ACQUIRED;
        if result.is_ok() && owned && !unseen.is_empty() {
            drop(self.session.release(unseen, false).await?);
        }
        let _ = self
            .session
            .request(Request::Unsubscribe {
                channel: self.session.channel(),
                destination: self.destination.clone(),
            })
            .await;
        result
    }
}

fn flow(destination: &str, unit: MessageCreditUnit, value: u32) -> MessageFlow {
    MessageFlow {
        destination: Some(destination.to_string()),
        unit: Some(unit),
        value: Some(value),
    }
}

//! The basic class (publish and its content, consume, deliver, get, acknowledgements, qos,
//! recover), publisher confirms and transactions, on the broker model.
//!
//! A consumer is a broker subscription named `channel/tag`. Acknowledging consumers run
//! in window mode with the channel's prefetch as their window, and an ack gives the credit
//! back; the others get unlimited credit and take messages off the queue as they go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::{basic, confirm, tx, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};

use super::channel::{destination, parse_destination, Tx, Unacked};
use super::properties::{self, short};
use super::{code, Conn, Durable, Failure};
use crate::core::consumer::UNLIMITED;
use crate::core::journal::journaled;
use crate::core::{Delivery, DeliverySink, Draft, Error, Held, Message, Subscribe};
use crate::server::admin::ConnectionLive;
use crate::wire::{self, Command};

/// A message being received: its publish, then its header, then its body.
#[derive(Debug)]
pub(super) struct Publishing {
    publish: basic::Publish,
    header: Option<(u64, basic::AMQPProperties)>,
    body: BytesMut,
}

/// The window of consumers that set no limit (no-ack, or prefetch 0): deliveries on their
/// way to the socket at most, so that a consumer that does not read holds the rest back
/// in its queue.
const OPEN_WINDOW: u32 = 1000;
/// Consumers one connection may have.
const MAX_CONSUMERS: usize = 10_000;

/// Keeps the one message a basic.get takes.
#[derive(Default)]
struct Capture(Mutex<Option<Delivery>>);

impl DeliverySink for Capture {
    fn deliver(&self, delivery: Delivery) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(delivery);
    }
}

fn reply(m: AMQPClass) -> Result<Option<AMQPClass>, Failure> {
    Ok(Some(m))
}

impl Conn<'_> {
    pub(super) fn basic_class(
        &mut self,
        ch: u16,
        m: &basic::AMQPMethod,
    ) -> Result<Option<AMQPClass>, Failure> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    // Per consumer, for consumers started from now on (RabbitMQ's reading
                    // of `global` false; a global limit is taken the same way).
                    c.prefetch = q.prefetch_count;
                }
                reply(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
            }
            basic::AMQPMethod::Consume(c) => self.consume(ch, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.to_string();
                let _ = self
                    .ctx
                    .broker
                    .cancel(self.session(), &destination(ch, &tag));
                if let Some(channel) = self.channels.get_mut(&ch) {
                    channel.consumers.remove(&tag);
                }
                Ok((!c.nowait).then(|| {
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag.clone(),
                    }))
                }))
            }
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(Failure::new(code::NOT_IMPLEMENTED, "immediate=true"));
                }
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.publishing = Some(Publishing {
                        publish: p.clone(),
                        header: None,
                        body: BytesMut::new(),
                    });
                }
                Ok(None)
            }
            basic::AMQPMethod::Get(g) => self.get(ch, g),
            basic::AMQPMethod::Ack(a) => {
                let settled = self.take_unacked(ch, a.delivery_tag, a.multiple)?;
                self.settle(ch, settled, Settle::Ack);
                Ok(None)
            }
            basic::AMQPMethod::Reject(r) => {
                let settled = self.take_unacked(ch, r.delivery_tag, false)?;
                self.settle(ch, settled, Settle::Back { requeue: r.requeue });
                Ok(None)
            }
            basic::AMQPMethod::Nack(n) => {
                let settled = self.take_unacked(ch, n.delivery_tag, n.multiple)?;
                self.settle(ch, settled, Settle::Back { requeue: n.requeue });
                Ok(None)
            }
            // Redelivering to the same consumer only (requeue=false) is not offered, as in
            // RabbitMQ.
            basic::AMQPMethod::Recover(basic::Recover { requeue: false })
            | basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue: false }) => Err(
                Failure::new(code::NOT_IMPLEMENTED, "basic.recover with requeue=false"),
            ),
            basic::AMQPMethod::Recover(_) => {
                self.recover(ch);
                reply(AMQPClass::Basic(basic::AMQPMethod::RecoverOk(
                    basic::RecoverOk {},
                )))
            }
            basic::AMQPMethod::RecoverAsync(_) => {
                self.recover(ch);
                Ok(None)
            }
            // A client may answer our cancel of a consumer whose queue went away.
            basic::AMQPMethod::CancelOk(_) => Ok(None),
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "not a basic method a client sends",
            )),
        }
    }

    fn consume(&mut self, ch: u16, c: &basic::Consume) -> Result<Option<AMQPClass>, Failure> {
        let queue = self.queue_name(ch, c.queue.as_str())?;
        self.authorize(&Command::MessageSubscribe(wire::MessageSubscribe {
            queue: Some(queue.clone()),
            ..wire::MessageSubscribe::default()
        }))?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", crate::client::random_uuid())
        } else {
            c.consumer_tag.to_string()
        };
        let (prefetch, taken) = match self.channels.get(&ch) {
            Some(channel) => (channel.prefetch, channel.consumers.contains_key(&tag)),
            None => return Ok(None),
        };
        let consumers: usize = self.channels.values().map(|c| c.consumers.len()).sum();
        if consumers >= MAX_CONSUMERS {
            return Err(Failure::new(
                code::PRECONDITION_FAILED,
                format!("a connection may have at most {MAX_CONSUMERS} consumers"),
            ));
        }
        if taken {
            return Err(Failure::new(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let session = self.session();
        let dest = destination(ch, &tag);
        self.ctx
            .broker
            .subscribe(
                session,
                Subscribe {
                    queue: queue.clone(),
                    destination: dest.clone(),
                    acquire: true,
                    accept_explicit: !c.no_ack,
                    exclusive: c.exclusive,
                    sink: self.sink.clone(),
                },
            )
            .map_err(|e| consume_failure(&e, &queue))?;
        // Acknowledging consumers with a prefetch get it as a window that acks refill; the
        // others get a window that refills as deliveries reach the socket (no-ack) or are
        // acked (prefetch 0).
        let window = true;
        let messages = if !c.no_ack && prefetch > 0 {
            u32::from(prefetch)
        } else {
            OPEN_WINDOW
        };
        let broker = &self.ctx.broker;
        let credit = broker
            .set_flow_mode(session, &dest, window)
            .and_then(|()| broker.flow(session, &dest, true, UNLIMITED))
            .and_then(|()| broker.flow(session, &dest, false, messages));
        if let Err(e) = credit {
            return Err(Failure::from_core(&e));
        }
        if let Some(channel) = self.channels.get_mut(&ch) {
            channel.consumers.insert(tag.clone(), !c.no_ack);
        }
        Ok((!c.nowait).then(|| {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            }))
        }))
    }

    fn get(&mut self, ch: u16, g: &basic::Get) -> Result<Option<AMQPClass>, Failure> {
        let queue = self.queue_name(ch, g.queue.as_str())?;
        self.authorize(&Command::MessageSubscribe(wire::MessageSubscribe {
            queue: Some(queue.clone()),
            ..wire::MessageSubscribe::default()
        }))?;
        let capture = Arc::new(Capture::default());
        let broker = &self.ctx.broker;
        broker
            .fetch(self.session(), &queue, !g.no_ack, capture.clone())
            .map_err(|e| consume_failure(&e, &queue))?;
        let got = capture.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(d) = got else {
            return reply(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                basic::GetEmpty {},
            )));
        };
        let remaining = broker.query_queue(&queue).map_or(0, |i| i.message_count);
        let Some(channel) = self.channels.get_mut(&ch) else {
            self.give_back(&d);
            return Ok(None);
        };
        channel.next_tag += 1;
        let delivery_tag = channel.next_tag;
        if d.acquired && !d.settled {
            channel.unacked.insert(
                delivery_tag,
                Unacked {
                    held: d.held(),
                    consumer: None,
                    window: false,
                    epoch: 0,
                    size: d.size,
                },
            );
        }
        let (props, exchange, routing_key) = content_of(&d);
        let get_ok = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag,
            redelivered: d.redelivered,
            exchange: short(&exchange),
            routing_key: short(&routing_key),
            message_count: remaining,
        }));
        ConnectionLive::bump(&self.live.msgs_to, 1);
        self.writer
            .content(ch, get_ok, props, &d.msg.body, &mut self.out);
        Ok(None)
    }

    /// A message for one of this connection's consumers.
    pub(super) fn deliver(&mut self, d: Delivery) {
        if self.closing() {
            return self.give_back(&d);
        }
        let Some((ch, tag)) = parse_destination(&d.destination) else {
            return self.give_back(&d);
        };
        let Some(channel) = self.channels.get_mut(&ch) else {
            return self.give_back(&d);
        };
        let Some(&acks) = channel.consumers.get(tag) else {
            return self.give_back(&d);
        };
        channel.next_tag += 1;
        let delivery_tag = channel.next_tag;
        if d.acquired && !d.settled {
            channel.unacked.insert(
                delivery_tag,
                Unacked {
                    held: d.held(),
                    consumer: Some(tag.to_string()),
                    window: d.window,
                    epoch: d.epoch,
                    size: d.size,
                },
            );
        }
        let (props, exchange, routing_key) = content_of(&d);
        let deliver = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: short(tag),
            delivery_tag,
            redelivered: d.redelivered,
            exchange: short(&exchange),
            routing_key: short(&routing_key),
        }));
        ConnectionLive::bump(&self.live.msgs_to, 1);
        self.writer
            .content(ch, deliver, props, &d.msg.body, &mut self.out);
        if !acks && d.window {
            // No-ack: written is done; the next one may come.
            self.ctx
                .broker
                .restore_credit(self.session(), &d.destination, 1, d.size, d.epoch);
        }
    }

    /// A consumer's queue was deleted: the consumer is gone, and a client that asked
    /// for it (`consumer_cancel_notify`) is told with a `basic.cancel`.
    pub(super) fn consumer_cancelled(&mut self, destination: &str) {
        let Some((ch, tag)) = parse_destination(destination) else {
            return;
        };
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        if channel.consumers.remove(tag).is_none() {
            return;
        }
        let _ = self.ctx.broker.cancel(self.session(), destination);
        if self.capabilities.consumer_cancel_notify {
            self.method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(tag),
                    nowait: true,
                })),
            );
        }
    }

    /// A delivery nobody will take here goes back to its queue.
    pub(super) fn give_back(&self, d: &Delivery) {
        if d.acquired && !d.settled {
            self.ctx.broker.release(&[d.held()], false);
        }
    }

    /// The unacknowledged deliveries an ack, nack or reject names.
    fn take_unacked(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<(u64, Unacked)>, Failure> {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Ok(Vec::new());
        };
        let unknown = || {
            Failure::new(
                code::PRECONDITION_FAILED,
                format!("unknown delivery tag {tag}"),
            )
        };
        if multiple {
            if tag > channel.next_tag {
                return Err(unknown());
            }
            // Tag 0 with `multiple` means everything outstanding.
            let upto = if tag == 0 { u64::MAX } else { tag };
            let tags: Vec<u64> = channel.unacked.range(..=upto).map(|(t, _)| *t).collect();
            Ok(tags
                .into_iter()
                .filter_map(|t| channel.unacked.remove(&t).map(|u| (t, u)))
                .collect())
        } else {
            let u = channel.unacked.remove(&tag).ok_or_else(unknown)?;
            Ok(vec![(tag, u)])
        }
    }

    /// Settles deliveries now, or at commit in a transaction.
    fn settle(&mut self, ch: u16, settled: Vec<(u64, Unacked)>, how: Settle) {
        if settled.is_empty() {
            return;
        }
        if let Some(tx) = self.channels.get_mut(&ch).and_then(|c| c.tx.as_mut()) {
            match how {
                Settle::Ack => tx.acks.extend(settled),
                Settle::Back { requeue } => tx
                    .returns
                    .extend(settled.into_iter().map(|(t, u)| (t, u, requeue))),
            }
            return;
        }
        let held: Vec<Held> = settled.iter().map(|(_, u)| u.held.clone()).collect();
        match how {
            Settle::Ack => self.ctx.broker.accept(&held),
            Settle::Back { requeue: true } => self.ctx.broker.release(&held, true),
            Settle::Back { requeue: false } => self.ctx.broker.reject(&held),
        }
        self.refill(ch, settled.iter().map(|(_, u)| u));
    }

    /// Settled deliveries give their consumers' windows back.
    fn refill<'u>(&self, ch: u16, settled: impl Iterator<Item = &'u Unacked>) {
        let mut by_consumer: HashMap<(&str, u64), (u32, u64)> = HashMap::new();
        for u in settled {
            if let (true, Some(tag)) = (u.window, u.consumer.as_deref()) {
                let e = by_consumer.entry((tag, u.epoch)).or_default();
                e.0 += 1;
                e.1 += u.size;
            }
        }
        let session = self.session();
        for ((tag, epoch), (messages, bytes)) in by_consumer {
            self.ctx
                .broker
                .restore_credit(session, &destination(ch, tag), messages, bytes, epoch);
        }
    }

    /// basic.recover: every unacknowledged delivery goes back, to be delivered again.
    fn recover(&mut self, ch: u16) {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        let all: Vec<(u64, Unacked)> = std::mem::take(&mut channel.unacked).into_iter().collect();
        let held: Vec<Held> = all.iter().map(|(_, u)| u.held.clone()).collect();
        self.ctx.broker.release(&held, true);
        self.refill(ch, all.iter().map(|(_, u)| u));
    }

    pub(super) fn content_header(&mut self, ch: u16, size: u64, props: basic::AMQPProperties) {
        let max = self.ctx.config.max_message_size as u64;
        let Some(channel) = self.channels.get_mut(&ch) else {
            return self.close(Failure::new(
                code::CHANNEL_ERROR,
                format!("content header on channel {ch}, which is not open"),
            ));
        };
        let Some(p) = channel.publishing.as_mut().filter(|p| p.header.is_none()) else {
            return self.close(Failure::new(
                code::UNEXPECTED_FRAME,
                format!("content header on channel {ch} without a basic.publish before it"),
            ));
        };
        if size > max {
            channel.publishing = None;
            return self.fail(
                ch,
                Failure::new(
                    code::PRECONDITION_FAILED,
                    format!("message size {size} is larger than configured max size {max}"),
                ),
            );
        }
        p.header = Some((size, props));
        if size == 0 {
            self.publish_complete(ch);
        }
    }

    pub(super) fn content_body(&mut self, ch: u16, body: Bytes) {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return self.close(Failure::new(
                code::CHANNEL_ERROR,
                format!("content body on channel {ch}, which is not open"),
            ));
        };
        let Some((p, size)) = channel
            .publishing
            .as_mut()
            .and_then(|p| p.header.as_ref().map(|h| h.0).map(|s| (p, s)))
        else {
            return self.close(Failure::new(
                code::UNEXPECTED_FRAME,
                format!("content body on channel {ch} without a content header"),
            ));
        };
        if p.body.len() as u64 + body.len() as u64 > size {
            return self.close(Failure::new(
                code::FRAME_ERROR,
                format!("content body longer than the {size} bytes its header announced"),
            ));
        }
        if p.body.is_empty() && body.len() as u64 == size {
            // The whole body in one frame: keep its buffer rather than copy it.
            p.body = BytesMut::new();
            let publishing = channel.publishing.take();
            return self.publish(ch, publishing, Some(body));
        }
        p.body.extend_from_slice(&body);
        if p.body.len() as u64 == size {
            self.publish_complete(ch);
        }
    }

    fn publish_complete(&mut self, ch: u16) {
        let publishing = self.channels.get_mut(&ch).and_then(|c| c.publishing.take());
        self.publish(ch, publishing, None);
    }

    /// A whole message arrived: route it (or keep it for the transaction), and confirm it
    /// once the broker has it (on disk, when persistent on a durable queue).
    fn publish(&mut self, ch: u16, publishing: Option<Publishing>, whole: Option<Bytes>) {
        let Some(Publishing {
            publish,
            header: Some((_, props)),
            body,
        }) = publishing
        else {
            return;
        };
        let body = whole.unwrap_or_else(|| body.freeze());
        ConnectionLive::bump(&self.live.msgs_from, 1);
        let seq = self
            .channels
            .get_mut(&ch)
            .and_then(|c| c.confirm.as_mut())
            .map(|c| {
                c.last += 1;
                c.last
            });
        match self.route(ch, &publish, &props, body) {
            Ok(ticket) => {
                if let (Some(seq), Some(ticket), Some(journal)) =
                    (seq, ticket, self.ctx.broker.journal())
                {
                    let incarnation = self.channels.get(&ch).map_or(0, |c| c.incarnation);
                    if let Some(c) = self.channels.get_mut(&ch).and_then(|c| c.confirm.as_mut()) {
                        c.pending.insert(seq);
                    }
                    self.when_durable(journal, ticket, move |ok| Durable::Confirm {
                        channel: ch,
                        incarnation,
                        seq,
                        ok,
                    });
                }
            }
            Err(Refused::Nack(why)) => match seq {
                Some(seq) => {
                    tracing::debug!(channel = ch, "publish refused: {why}");
                    self.nack(ch, seq);
                }
                // Without confirms the publisher cannot be told: the message is dropped,
                // as RabbitMQ drops it.
                None => tracing::debug!(channel = ch, "publish dropped: {why}"),
            },
            Err(Refused::Fail(f)) => {
                let f = Failure {
                    method: (60, 40),
                    ..f
                };
                self.fail(ch, f);
            }
        }
    }

    /// Routes a message; the store ticket to wait for before confirming it.
    fn route(
        &mut self,
        ch: u16,
        publish: &basic::Publish,
        props: &basic::AMQPProperties,
        body: Bytes,
    ) -> Result<Option<clacks_storage::Ticket>, Refused> {
        let exchange = publish.exchange.to_string();
        self.authorize_publish(&exchange).map_err(Refused::Fail)?;
        let (delivery, mut message_props) = properties::to_010(props);
        let cfg = &self.ctx.config;
        if let Some(identity) = &self.identity {
            match message_props.user_id.as_ref().filter(|u| !u.is_empty()) {
                Some(claimed) if cfg.auth && !identity.owns_user_id(claimed) => {
                    tracing::warn!(user = %identity.full, "0-9-1 publish with a forged user_id refused");
                    return Err(Refused::Fail(Failure::new(
                        code::PRECONDITION_FAILED,
                        format!(
                            "user_id property set to '{}' but authenticated user was '{}'",
                            String::from_utf8_lossy(claimed),
                            identity.stamp
                        ),
                    )));
                }
                Some(_) => {}
                None if cfg.stamp_user_id => {
                    message_props.user_id = Some(Bytes::copy_from_slice(identity.stamp.as_bytes()));
                }
                None => {}
            }
        }
        let mut draft = Draft::new(publish.routing_key.as_str(), body);
        draft.delivery = wire::DeliveryProperties {
            routing_key: Some(publish.routing_key.to_string()),
            exchange: Some(exchange.clone()),
            ..delivery
        };
        draft.set_properties(message_props);
        draft.origin = self.id;
        if self.ctx.broker.timestamping() && draft.delivery.timestamp.is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            draft.delivery.timestamp = Some(now);
        }
        if let Some(ttl) = draft.delivery.ttl {
            draft.expires_at =
                std::time::Instant::now().checked_add(std::time::Duration::from_millis(ttl));
        }
        let msg = Arc::new(draft.seal());
        let broker = &self.ctx.broker;
        if let Some(tx) = self.channels.get_mut(&ch).and_then(|c| c.tx.as_mut()) {
            let queues = broker
                .route(&exchange, &msg)
                .map_err(|e| refused(&e, &exchange))?;
            tx.publish_bytes += msg.footprint();
            if tx.publish_bytes > self.ctx.config.max_message_size as u64 {
                return Err(Refused::Fail(Failure::new(
                    code::PRECONDITION_FAILED,
                    format!(
                        "uncommitted publishes over {} bytes (max_message_size)",
                        self.ctx.config.max_message_size
                    ),
                )));
            }
            if queues.is_empty() && publish.mandatory {
                tx.unroutable
                    .push((publish.exchange.clone(), publish.routing_key.clone(), msg));
            } else {
                tx.publishes.push((queues, msg));
            }
            return Ok(None);
        }
        let (routed, ticket) = journaled(|| broker.publish(&exchange, msg.clone()));
        let routed = routed.map_err(|e| refused(&e, &exchange))?;
        if routed == 0 && publish.mandatory {
            self.send_return(
                ch,
                publish.exchange.clone(),
                publish.routing_key.clone(),
                &msg,
            );
        }
        Ok(ticket)
    }

    /// Returns an unroutable mandatory message to its publisher.
    fn send_return(
        &mut self,
        ch: u16,
        exchange: ShortString,
        routing_key: ShortString,
        msg: &Message,
    ) {
        let (props, _, _) = message_content(msg);
        let ret = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: code::NO_ROUTE,
            reply_text: short("NO_ROUTE"),
            exchange,
            routing_key,
        }));
        self.writer
            .content(ch, ret, props, &msg.body, &mut self.out);
    }

    /// Once the store has `ticket` on disk (or failed to put it there), this connection
    /// hears `event(ok)`.
    fn when_durable(
        &self,
        journal: &clacks_storage::GroupCommit,
        ticket: clacks_storage::Ticket,
        event: impl FnOnce(bool) -> Durable + Send + 'static,
    ) {
        let tx = self.durable_tx.clone();
        journal.when_durable(
            ticket,
            Box::new(move |result| {
                let _ = tx.send(event(result.is_ok()));
            }),
        );
    }

    fn nack(&mut self, ch: u16, seq: u64) {
        if let Some(c) = self.channels.get_mut(&ch).and_then(|c| c.confirm.as_mut()) {
            c.nacked.insert(seq);
        }
        self.method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            })),
        );
    }

    /// Confirms what the broker has: one ack (`multiple`) per channel covering every
    /// publish up to the oldest still waiting for the store.
    pub(super) fn send_confirms(&mut self) {
        let mut acks = Vec::new();
        for (ch, c) in &mut self.channels {
            let Some(confirm) = c.confirm.as_mut() else {
                continue;
            };
            let upto = confirm
                .pending
                .first()
                .map_or(confirm.last, |oldest| oldest - 1);
            // Up to `upto` in `multiple` acks, stepping over what was nacked.
            while upto > confirm.acked_upto {
                let from = confirm.acked_upto + 1;
                match confirm.nacked.range(from..=upto).next().copied() {
                    Some(nacked) => {
                        if nacked > from {
                            acks.push((*ch, nacked - 1));
                        }
                        confirm.nacked.remove(&nacked);
                        confirm.acked_upto = nacked;
                    }
                    None => {
                        acks.push((*ch, upto));
                        confirm.acked_upto = upto;
                    }
                }
            }
        }
        for (ch, upto) in acks {
            self.method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: upto,
                    multiple: true,
                })),
            );
        }
    }

    /// The store finished something a channel waits for.
    pub(super) fn durable_done(&mut self, done: Durable) {
        match done {
            Durable::Confirm {
                channel,
                incarnation,
                seq,
                ok,
            } => {
                let Some(c) = self
                    .channels
                    .get_mut(&channel)
                    .filter(|c| c.incarnation == incarnation)
                else {
                    return;
                };
                if let Some(confirm) = c.confirm.as_mut() {
                    confirm.pending.remove(&seq);
                }
                if !ok {
                    self.nack(channel, seq);
                }
            }
            Durable::Commit {
                channel,
                incarnation,
                ok,
            } => {
                self.committing = self.committing.saturating_sub(1);
                if self
                    .channels
                    .get(&channel)
                    .is_none_or(|c| c.incarnation != incarnation)
                {
                    return;
                }
                if ok {
                    self.method(
                        channel,
                        AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    );
                } else {
                    self.close(Failure::new(
                        code::INTERNAL_ERROR,
                        "the message store could not keep the transaction",
                    ));
                }
            }
        }
    }

    pub(super) fn tx_class(
        &mut self,
        ch: u16,
        m: &tx::AMQPMethod,
    ) -> Result<Option<AMQPClass>, Failure> {
        let Some(c) = self.channels.get_mut(&ch) else {
            return Ok(None);
        };
        let not_transactional =
            || Failure::new(code::PRECONDITION_FAILED, "channel is not transactional");
        match m {
            tx::AMQPMethod::Select(_) => {
                if c.confirm.is_some() {
                    return Err(Failure::new(
                        code::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                c.tx.get_or_insert_with(Tx::default);
                reply(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
            }
            tx::AMQPMethod::Commit(_) => {
                let work = std::mem::take(c.tx.as_mut().ok_or_else(not_transactional)?);
                let incarnation = c.incarnation;
                let accepts: Vec<Held> = work.acks.iter().map(|(_, u)| u.held.clone()).collect();
                let broker = &self.ctx.broker;
                let (committed, ticket) = journaled(|| broker.commit_tx(work.publishes, &accepts));
                if let Err(e) = committed {
                    // Nothing was settled: the acks and rejects are unacknowledged again,
                    // to go back to their queues with the channel.
                    if let Some(c) = self.channels.get_mut(&ch) {
                        for (tag, u) in work.acks {
                            c.unacked.insert(tag, u);
                        }
                        for (tag, u, _) in work.returns {
                            c.unacked.insert(tag, u);
                        }
                    }
                    return Err(Failure::from_core(&e));
                }
                for (_, u, requeue) in &work.returns {
                    if *requeue {
                        broker.release(std::slice::from_ref(&u.held), true);
                    } else {
                        broker.reject(std::slice::from_ref(&u.held));
                    }
                }
                self.refill(ch, work.acks.iter().map(|(_, u)| u));
                self.refill(ch, work.returns.iter().map(|(_, u, _)| u));
                // Unroutable mandatory publishes come back before commit-ok, as RabbitMQ
                // returns them.
                for (exchange, routing_key, msg) in work.unroutable {
                    self.send_return(ch, exchange, routing_key, &msg);
                }
                match (ticket, broker.journal()) {
                    (Some(ticket), Some(journal)) => {
                        // No more input is taken until the commit is on disk: what follows
                        // on this channel is answered after commit-ok.
                        self.committing += 1;
                        self.when_durable(journal, ticket, move |ok| Durable::Commit {
                            channel: ch,
                            incarnation,
                            ok,
                        });
                        Ok(None)
                    }
                    _ => reply(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
                }
            }
            tx::AMQPMethod::Rollback(_) => {
                let work = std::mem::take(c.tx.as_mut().ok_or_else(not_transactional)?);
                // Acks and rejects are forgotten: those messages are unacknowledged again.
                for (tag, u) in work.acks {
                    c.unacked.insert(tag, u);
                }
                for (tag, u, _) in work.returns {
                    c.unacked.insert(tag, u);
                }
                reply(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})))
            }
            _ => Err(Failure::new(code::COMMAND_INVALID, "unexpected tx method")),
        }
    }

    pub(super) fn confirm_class(
        &mut self,
        ch: u16,
        m: &confirm::AMQPMethod,
    ) -> Result<Option<AMQPClass>, Failure> {
        let Some(c) = self.channels.get_mut(&ch) else {
            return Ok(None);
        };
        match m {
            confirm::AMQPMethod::Select(s) => {
                if c.tx.is_some() {
                    return Err(Failure::new(
                        code::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                c.confirm.get_or_insert_with(Default::default);
                Ok(
                    (!s.nowait).then_some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    ))),
                )
            }
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "unexpected confirm method",
            )),
        }
    }
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Back { requeue: bool },
}

/// Why a publish was not taken.
enum Refused {
    /// Told to a confirming publisher with basic.nack (a full queue, a full disk).
    Nack(String),
    /// Ends the channel (or the connection).
    Fail(Failure),
}

fn refused(e: &Error, exchange: &str) -> Refused {
    match e {
        Error::NotFound(_) => Refused::Fail(Failure::new(
            code::NOT_FOUND,
            format!("no exchange '{exchange}' in vhost '/'"),
        )),
        // A full queue, a disk short of its reserve, a store whose writes fail.
        Error::LimitExceeded(why) | Error::Internal(why) => Refused::Nack(why.clone()),
        other => Refused::Fail(Failure::from_core(other)),
    }
}

/// A subscription's failure as RabbitMQ reports a consume's.
fn consume_failure(e: &Error, queue: &str) -> Failure {
    match e {
        Error::NotFound(_) => {
            Failure::new(code::NOT_FOUND, format!("no queue '{queue}' in vhost '/'"))
        }
        Error::ResourceLocked(why) if why.contains("exclusive consumer") => Failure::new(
            code::ACCESS_REFUSED,
            format!("queue '{queue}' in vhost '/' in exclusive use"),
        ),
        Error::ResourceLocked(_) => Failure::new(
            code::RESOURCE_LOCKED,
            format!("cannot obtain exclusive access to locked queue '{queue}' in vhost '/'"),
        ),
        other => Failure::from_core(other),
    }
}

/// A delivery's 0-9-1 properties, exchange and routing key.
fn content_of(d: &Delivery) -> (basic::AMQPProperties, String, String) {
    message_content(&d.msg)
}

fn message_content(msg: &crate::core::Message) -> (basic::AMQPProperties, String, String) {
    let draft = msg.draft();
    let props = properties::to_091(&draft.delivery, draft.properties.as_ref());
    (
        props,
        draft.delivery.exchange.unwrap_or_default(),
        draft.delivery.routing_key.unwrap_or_default(),
    )
}

//! Channels, and the exchange and queue classes of 0-9-1, on the broker model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use amq_protocol::protocol::{access, channel, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as Table091, ShortString};

use super::basic::Publishing;
use super::frames::Frame;
use super::properties::{short, table_to_010};
use super::{code, Conn, Failure};
use crate::core::{Held, Message};
use crate::wire::{self, Command, FieldTable, Value};

/// A delivery the client has not yet acknowledged.
#[derive(Debug, Clone)]
pub(super) struct Unacked {
    pub held: Held,
    /// The consumer it went to (`None` for basic.get), with the window it counts in.
    pub consumer: Option<String>,
    pub window: bool,
    pub epoch: u64,
    pub size: u64,
}

/// Publisher confirms of a channel in confirm mode.
#[derive(Debug, Default)]
pub(super) struct Confirms {
    /// The sequence number of the last publish.
    pub last: u64,
    /// Publishes waiting for the store.
    pub pending: BTreeSet<u64>,
    /// Confirmed up to here (acks go out with `multiple`).
    pub acked_upto: u64,
    /// Nacked, above `acked_upto`: a `multiple` ack must not cover them as well.
    pub nacked: BTreeSet<u64>,
}

/// What a transaction holds until commit.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// Routed publishes: their queues and the message.
    pub publishes: Vec<(Vec<String>, Arc<Message>)>,
    /// Their bytes, bounded by `max_message_size`: a transaction is held in memory.
    pub publish_bytes: u64,
    /// Mandatory publishes that reached no queue, returned at commit: the exchange, the
    /// routing key and the message.
    pub unroutable: Vec<(ShortString, ShortString, Arc<Message>)>,
    /// Acknowledged deliveries, by delivery tag.
    pub acks: Vec<(u64, Unacked)>,
    /// Rejected or nacked deliveries: requeued (true) or dropped.
    pub returns: Vec<(u64, Unacked, bool)>,
}

/// One open channel.
#[derive(Debug)]
pub(super) struct Channel {
    /// Tells a reopened channel of the same number from its predecessor.
    pub incarnation: u64,
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// Consumer tags, with whether each acknowledges (`no_ack` false).
    pub consumers: HashMap<String, bool>,
    pub prefetch: u16,
    pub publishing: Option<Publishing>,
    pub confirm: Option<Confirms>,
    pub tx: Option<Tx>,
    /// The queue a queue.declare on this channel last named (the default for an empty
    /// queue name in later methods).
    pub last_queue: Option<String>,
}

impl Channel {
    fn new(incarnation: u64) -> Channel {
        Channel {
            incarnation,
            next_tag: 0,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            publishing: None,
            confirm: None,
            tx: None,
            last_queue: None,
        }
    }

    /// Everything still unacknowledged (to go back to its queues).
    pub fn take_unacked(&mut self) -> Vec<Held> {
        let mut held: Vec<Held> = std::mem::take(&mut self.unacked)
            .into_values()
            .map(|u| u.held)
            .collect();
        if let Some(tx) = self.tx.as_mut() {
            held.extend(tx.acks.drain(..).map(|(_, u)| u.held));
            held.extend(tx.returns.drain(..).map(|(_, u, _)| u.held));
        }
        held
    }
}

/// The broker destination of a consumer: its channel and tag (unique per connection).
pub(super) fn destination(channel: u16, tag: &str) -> String {
    format!("{channel}/{tag}")
}

/// The channel and tag of a destination.
pub(super) fn parse_destination(d: &str) -> Option<(u16, &str)> {
    let (ch, tag) = d.split_once('/')?;
    Some((ch.parse().ok()?, tag))
}

fn ok(m: AMQPClass) -> Result<Option<AMQPClass>, Failure> {
    Ok(Some(m))
}

impl Conn<'_> {
    /// A frame for channel `ch` (not 0) on an open connection.
    pub(super) fn channel_frame(&mut self, frame: Frame) {
        let ch = match &frame {
            Frame::Method(ch, _) | Frame::Header(ch, ..) | Frame::Body(ch, _) => *ch,
            Frame::Heartbeat(ch) => *ch,
        };
        if self.closing_channels.contains_key(&ch) {
            // After our channel.close only the peer's close-ok (or its own close) counts.
            if let Frame::Method(_, m) = &frame {
                match m.as_ref() {
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                        self.closing_channels.remove(&ch);
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                        self.closing_channels.remove(&ch);
                        self.method(
                            ch,
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                    _ => {}
                }
            }
            return;
        }
        match frame {
            Frame::Method(ch, m) => {
                match m.as_ref() {
                    AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                        return self.open_channel(ch)
                    }
                    // Closing a channel that is already gone harms nobody: a client that
                    // missed our close may do it.
                    AMQPClass::Channel(channel::AMQPMethod::Close(_))
                        if !self.channels.contains_key(&ch) =>
                    {
                        return self.method(
                            ch,
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
                        if !self.channels.contains_key(&ch) =>
                    {
                        return;
                    }
                    _ => {}
                }
                let Some(c) = self.channels.get(&ch) else {
                    return self.close(
                        Failure::new(
                            code::CHANNEL_ERROR,
                            format!("expected 'channel.open' on channel {ch}"),
                        )
                        .at(&m),
                    );
                };
                if c.publishing.is_some() {
                    return self.close(
                        Failure::new(
                            code::UNEXPECTED_FRAME,
                            format!("method frame on channel {ch} in the middle of a message"),
                        )
                        .at(&m),
                    );
                }
                match self.channel_method(ch, &m) {
                    Ok(Some(reply)) => self.method(ch, reply),
                    Ok(None) => {}
                    Err(f) => self.fail(ch, f.at(&m)),
                }
            }
            Frame::Header(ch, size, props) => self.content_header(ch, size, *props),
            Frame::Body(ch, body) => self.content_body(ch, body),
            Frame::Heartbeat(_) => {}
        }
    }

    fn open_channel(&mut self, ch: u16) {
        if self.channels.contains_key(&ch) {
            return self.close(Failure::new(
                code::CHANNEL_ERROR,
                format!("second 'channel.open' seen on channel {ch}"),
            ));
        }
        if ch > self.channel_max {
            return self.close(Failure::new(
                code::CHANNEL_ERROR,
                format!("channel {ch} is over channel_max {}", self.channel_max),
            ));
        }
        self.next_incarnation += 1;
        self.channels
            .insert(ch, Channel::new(self.next_incarnation));
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
    }

    /// A channel error closes the channel (a hard one, the connection).
    pub(super) fn fail(&mut self, ch: u16, f: Failure) {
        if code::is_hard(f.code) {
            return self.close(f);
        }
        tracing::debug!(
            channel = ch,
            code = f.code,
            "0-9-1 channel closed: {}",
            f.text
        );
        self.drop_channel(ch);
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: f.code,
                reply_text: short(&f.reply_text()),
                class_id: f.method.0,
                method_id: f.method.1,
            })),
        );
        self.closing_channels.insert(ch, ());
    }

    /// Ends a channel: its consumers go, its unacknowledged messages go back.
    fn drop_channel(&mut self, ch: u16) {
        let Some(mut c) = self.channels.remove(&ch) else {
            return;
        };
        let session = self.session();
        for tag in c.consumers.keys() {
            let _ = self.ctx.broker.cancel(session, &destination(ch, tag));
        }
        let held = c.take_unacked();
        if !held.is_empty() {
            self.ctx.broker.release(&held, true);
        }
    }

    pub(super) fn session(&self) -> crate::core::SessionId {
        // Channels exist only once the connection is open, which made the session.
        self.session.unwrap_or(crate::core::SessionId(0))
    }

    /// Checks an operation against the ACL, as the same 0-10 command would be.
    pub(super) fn authorize(&mut self, command: &Command) -> Result<(), Failure> {
        self.ctx.refresh_acl(&mut self.acl);
        let Some(acl) = self.acl.1.as_deref() else {
            return Ok(());
        };
        crate::server::session::authorize(acl, self.identity.as_ref(), command)
            .map_err(|e| Failure::from_core(&e))
    }

    /// Whether the ACL lets this connection publish to `exchange`.
    pub(super) fn authorize_publish(&mut self, exchange: &str) -> Result<(), Failure> {
        self.authorize(&Command::MessageTransfer(wire::MessageTransfer {
            destination: Some(exchange.to_string()),
            ..wire::MessageTransfer::default()
        }))
    }

    /// A queue name, or the channel's last declared queue for an empty one.
    pub(super) fn queue_name(&self, ch: u16, name: &str) -> Result<String, Failure> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.channels
            .get(&ch)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| Failure::new(code::NOT_FOUND, "no previously declared queue"))
    }

    /// Runs a method of an open channel; the reply to send, if any.
    fn channel_method(&mut self, ch: u16, m: &AMQPClass) -> Result<Option<AMQPClass>, Failure> {
        match m {
            AMQPClass::Channel(c) => self.channel_class(ch, c),
            AMQPClass::Exchange(e) => self.exchange_class(e),
            AMQPClass::Queue(q) => self.queue_class(ch, q),
            AMQPClass::Basic(b) => self.basic_class(ch, b),
            AMQPClass::Tx(t) => self.tx_class(ch, t),
            AMQPClass::Confirm(c) => self.confirm_class(ch, c),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => ok(AMQPClass::Access(
                access::AMQPMethod::RequestOk(access::RequestOk {}),
            )),
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "not a method a client sends on a channel",
            )),
        }
    }

    fn channel_class(
        &mut self,
        ch: u16,
        m: &channel::AMQPMethod,
    ) -> Result<Option<AMQPClass>, Failure> {
        match m {
            channel::AMQPMethod::Close(_) => {
                self.drop_channel(ch);
                ok(AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                    channel::CloseOk {},
                )))
            }
            channel::AMQPMethod::Flow(f) if f.active => ok(AMQPClass::Channel(
                channel::AMQPMethod::FlowOk(channel::FlowOk { active: true }),
            )),
            channel::AMQPMethod::Flow(_) => Err(Failure::new(
                code::NOT_IMPLEMENTED,
                "active=false (consumers pause with basic.qos and basic.cancel)",
            )),
            // A flow-ok answers our flow, which we never send.
            channel::AMQPMethod::FlowOk(_) => Ok(None),
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "unexpected channel method",
            )),
        }
    }

    fn exchange_class(&mut self, m: &exchange::AMQPMethod) -> Result<Option<AMQPClass>, Failure> {
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let mut args = table_to_010(&d.arguments);
                let alternate = match args.remove("alternate-exchange") {
                    Some(Value::Str8(s) | Value::Str16(s)) => Some(s),
                    _ => None,
                };
                self.authorize(&Command::ExchangeDeclare(wire::ExchangeDeclare {
                    exchange: Some(d.exchange.to_string()),
                    r#type: Some(d.kind.to_string()),
                    alternate_exchange: alternate.clone(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    arguments: Some(args.clone()),
                }))?;
                if d.passive {
                    if self
                        .ctx
                        .broker
                        .query_exchange(d.exchange.as_str())
                        .is_none()
                    {
                        return Err(Failure::new(
                            code::NOT_FOUND,
                            format!("no exchange '{}' in vhost '/'", d.exchange),
                        ));
                    }
                } else {
                    self.ctx
                        .broker
                        .declare_exchange(crate::core::ExchangeDeclare {
                            name: d.exchange.to_string(),
                            kind: d.kind.to_string(),
                            alternate,
                            passive: false,
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            args,
                            connection: self.id,
                        })
                        .map_err(|e| Failure::from_core(&e))?;
                }
                Ok(
                    (!d.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                        exchange::DeclareOk {},
                    ))),
                )
            }
            exchange::AMQPMethod::Delete(d) => {
                self.authorize(&Command::ExchangeDelete(wire::ExchangeDelete {
                    exchange: Some(d.exchange.to_string()),
                    if_unused: d.if_unused,
                }))?;
                match self
                    .ctx
                    .broker
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                {
                    // Deleting what is not there is fine in 0-9-1.
                    Ok(()) | Err(crate::core::Error::NotFound(_)) => {}
                    Err(e) => return Err(Failure::from_core(&e)),
                }
                Ok(
                    (!d.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                        exchange::DeleteOk {},
                    ))),
                )
            }
            // The ACL sees these as bindings whose "queue" is the destination exchange.
            exchange::AMQPMethod::Bind(b) => {
                let args = table_to_010(&b.arguments);
                // What the source routes is published to the destination: the binder must
                // be allowed to publish there (RabbitMQ asks for write on the destination).
                self.authorize_publish(b.destination.as_str())?;
                self.authorize(&Command::ExchangeBind(wire::ExchangeBind {
                    queue: Some(b.destination.to_string()),
                    exchange: Some(b.source.to_string()),
                    binding_key: Some(b.routing_key.to_string()),
                    arguments: Some(args.clone()),
                }))?;
                self.ctx
                    .broker
                    .bind_exchange(
                        b.source.as_str(),
                        b.destination.as_str(),
                        b.routing_key.as_str(),
                        &args,
                    )
                    .map_err(|e| Failure::from_core(&e))?;
                Ok(
                    (!b.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
                        exchange::BindOk {},
                    ))),
                )
            }
            exchange::AMQPMethod::Unbind(u) => {
                self.authorize_publish(u.destination.as_str())?;
                self.authorize(&Command::ExchangeUnbind(wire::ExchangeUnbind {
                    queue: Some(u.destination.to_string()),
                    exchange: Some(u.source.to_string()),
                    binding_key: Some(u.routing_key.to_string()),
                }))?;
                self.ctx
                    .broker
                    .unbind_exchange(
                        u.source.as_str(),
                        u.destination.as_str(),
                        u.routing_key.as_str(),
                    )
                    .map_err(|e| Failure::from_core(&e))?;
                Ok(
                    (!u.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                        exchange::UnbindOk {},
                    ))),
                )
            }
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "unexpected exchange method",
            )),
        }
    }

    fn queue_class(
        &mut self,
        ch: u16,
        m: &queue::AMQPMethod,
    ) -> Result<Option<AMQPClass>, Failure> {
        let session = self.session();
        match m {
            queue::AMQPMethod::Declare(d) => {
                let name = if d.queue.as_str().is_empty() {
                    format!("amq.gen-{}", crate::client::random_uuid())
                } else {
                    d.queue.to_string()
                };
                let args = queue_arguments(&d.arguments)?;
                self.authorize(&Command::QueueDeclare(wire::QueueDeclare {
                    queue: Some(name.clone()),
                    alternate_exchange: None,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: Some(args.clone()),
                }))?;
                let exists = self.ctx.broker.query_queue(&name).is_some();
                if d.exclusive && !d.passive && exists && !self.exclusive_queues.contains(&name) {
                    return Err(Failure::new(
                        code::RESOURCE_LOCKED,
                        format!(
                            "cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
                        ),
                    ));
                }
                if d.passive && !exists {
                    return Err(Failure::new(
                        code::NOT_FOUND,
                        format!("no queue '{name}' in vhost '/'"),
                    ));
                }
                self.ctx
                    .broker
                    .declare_queue(
                        session,
                        crate::core::QueueDeclare {
                            name: name.clone(),
                            alternate: None,
                            passive: d.passive,
                            durable: d.durable,
                            exclusive: d.exclusive,
                            auto_delete: d.auto_delete,
                            args,
                            creator: self.identity.as_ref().map(|i| i.stamp.clone()),
                            creator_limit: self.ctx.config.max_queues_per_user,
                        },
                    )
                    .map_err(|e| Failure::from_core(&e))?;
                if d.exclusive && !d.passive {
                    // Deleted with this connection, as RabbitMQ deletes exclusive queues.
                    self.exclusive_queues.insert(name.clone());
                }
                let info = self.ctx.broker.query_queue(&name);
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.last_queue = Some(name.clone());
                }
                Ok((!d.nowait).then(|| {
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(&name),
                        message_count: info.as_ref().map_or(0, |i| i.message_count),
                        consumer_count: info.as_ref().map_or(0, |i| i.subscriber_count),
                    }))
                }))
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(ch, b.queue.as_str())?;
                let args = table_to_010(&b.arguments);
                self.authorize(&Command::ExchangeBind(wire::ExchangeBind {
                    queue: Some(name.clone()),
                    exchange: Some(b.exchange.to_string()),
                    binding_key: Some(b.routing_key.to_string()),
                    arguments: Some(args.clone()),
                }))?;
                self.ctx
                    .broker
                    .bind(
                        session,
                        &name,
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        &args,
                    )
                    .map_err(|e| Failure::from_core(&e))?;
                Ok(
                    (!b.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                        queue::BindOk {},
                    ))),
                )
            }
            queue::AMQPMethod::Unbind(u) => {
                let name = self.queue_name(ch, u.queue.as_str())?;
                self.authorize(&Command::ExchangeUnbind(wire::ExchangeUnbind {
                    queue: Some(name.clone()),
                    exchange: Some(u.exchange.to_string()),
                    binding_key: Some(u.routing_key.to_string()),
                }))?;
                self.ctx
                    .broker
                    .unbind(session, &name, u.exchange.as_str(), u.routing_key.as_str())
                    .map_err(|e| Failure::from_core(&e))?;
                ok(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                    queue::UnbindOk {},
                )))
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(ch, p.queue.as_str())?;
                self.authorize(&Command::QueuePurge(wire::QueuePurge {
                    queue: Some(name.clone()),
                }))?;
                let n = self
                    .ctx
                    .broker
                    .purge_queue(session, &name)
                    .map_err(|e| Failure::from_core(&e))?;
                Ok((!p.nowait).then(|| {
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: u32::try_from(n).unwrap_or(u32::MAX),
                    }))
                }))
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(ch, d.queue.as_str())?;
                self.authorize(&Command::QueueDelete(wire::QueueDelete {
                    queue: Some(name.clone()),
                    if_unused: d.if_unused,
                    if_empty: d.if_empty,
                }))?;
                let count = self
                    .ctx
                    .broker
                    .query_queue(&name)
                    .map_or(0, |i| i.message_count);
                match self
                    .ctx
                    .broker
                    .delete_queue(session, &name, d.if_unused, d.if_empty)
                {
                    // Deleting what is not there is fine in 0-9-1.
                    Ok(()) | Err(crate::core::Error::NotFound(_)) => {}
                    Err(e) => return Err(Failure::from_core(&e)),
                }
                Ok(
                    (!d.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                        queue::DeleteOk {
                            message_count: count,
                        },
                    ))),
                )
            }
            _ => Err(Failure::new(
                code::COMMAND_INVALID,
                "unexpected queue method",
            )),
        }
    }
}

/// A 0-9-1 queue's arguments as the broker's: RabbitMQ's length limits and overflow
/// behaviour and priorities become their qpidd equivalents; the rest (the dead-letter
/// exchange and routing key, TTLs, expiry) is kept as given, for the broker reads those
/// too.
fn queue_arguments(args: &Table091) -> Result<FieldTable, Failure> {
    let mut out = table_to_010(args);
    let int = |name: &str| -> Result<Option<u64>, Failure> {
        match args.inner().get(name) {
            None => Ok(None),
            Some(v) => as_u64(v).map(Some).ok_or_else(|| {
                Failure::new(
                    code::PRECONDITION_FAILED,
                    format!("invalid arg '{name}': not a non-negative integer"),
                )
            }),
        }
    };
    let text = |name: &str| match args.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let limited = int("x-max-length")?.is_some() || int("x-max-length-bytes")?.is_some();
    if let Some(n) = int("x-max-length")? {
        out.insert("qpid.max_count", Value::Uint64(n));
    }
    if let Some(n) = int("x-max-length-bytes")? {
        out.insert("qpid.max_size", Value::Uint64(n));
    }
    // RabbitMQ drops the oldest message by default; qpidd's ring queue does the same.
    let policy = match text("x-overflow").as_deref() {
        None | Some("drop-head") => "ring",
        Some("reject-publish" | "reject-publish-dlx") => "reject",
        Some(other) => {
            return Err(Failure::new(
                code::PRECONDITION_FAILED,
                format!("invalid arg 'x-overflow': {other}"),
            ))
        }
    };
    if limited {
        out.insert("qpid.policy_type", Value::Str16(policy.into()));
    }
    if let Some(n) = int("x-max-priority")? {
        out.insert("qpid.priorities", Value::Uint64(n.min(10)));
    }
    if let Some(q) = text("x-queue-type") {
        if q != "classic" {
            return Err(Failure::new(
                code::PRECONDITION_FAILED,
                format!("invalid arg 'x-queue-type': {q} queues are RabbitMQ's own"),
            ));
        }
    }
    Ok(out)
}

/// An integer argument of any width, if it is one and not negative.
pub(super) fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_queue_arguments_become_qpidd_ones() {
        let mut t = Table091::default();
        t.insert("x-max-length".into(), AMQPValue::LongInt(10));
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("dlx".into()),
        );
        let args = queue_arguments(&t).expect("valid");
        assert_eq!(args.get("qpid.max_count"), Some(&Value::Uint64(10)));
        assert_eq!(
            args.get("qpid.policy_type"),
            Some(&Value::Str16("ring".into()))
        );
        // Kept for the broker, which dead-letters by it.
        assert_eq!(
            args.get("x-dead-letter-exchange").and_then(Value::as_str),
            Some("dlx")
        );
        t.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let args = queue_arguments(&t).expect("valid");
        assert_eq!(
            args.get("qpid.policy_type"),
            Some(&Value::Str16("reject".into()))
        );
        t.insert("x-max-length".into(), AMQPValue::LongInt(-1));
        assert_eq!(queue_arguments(&t).map(|_| ()).unwrap_err().code, 406);
    }

    #[test]
    fn destinations_name_channel_and_tag() {
        let d = destination(7, "amq.ctag-a/b");
        assert_eq!(parse_destination(&d), Some((7, "amq.ctag-a/b")));
        assert_eq!(parse_destination("x"), None);
    }
}

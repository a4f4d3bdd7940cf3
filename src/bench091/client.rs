//! A small streaming AMQP 0-9-1 client for the benchmark: it writes publishes in large
//! batches and reads deliveries straight off the socket, so that the broker, not the
//! client, sets the pace. It speaks only what the benchmark needs.

use std::time::Duration;

use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use clacks_broker::server::amqp091::frames::{self, Frame, Writer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The largest frame this client asks for.
const FRAME_MAX: u32 = 131_072;
/// The channel every bench connection uses.
pub const CHANNEL: u16 = 1;

/// The reading half of a connection: frames in arrival order.
pub struct Reader {
    socket: OwnedReadHalf,
    input: BytesMut,
    max_frame: usize,
}

impl Reader {
    /// The next frame, waiting for it.
    ///
    /// # Errors
    /// A closed socket, a malformed frame, or the broker closing the connection or channel.
    pub async fn frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            match frames::next(&mut self.input, self.max_frame) {
                Ok(Some(Frame::Method(_, m))) => return refuse_close(*m),
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => bail!("malformed frame from the broker: {}", e.text),
            }
            if self.input.capacity() - self.input.len() < 16 * 1024 {
                self.input.reserve(64 * 1024);
            }
            if self.socket.read_buf(&mut self.input).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// The next method, skipping heartbeats; anything else is an error.
    ///
    /// # Errors
    /// As [`Reader::frame`], and content where a method was due.
    pub async fn method(&mut self) -> anyhow::Result<AMQPClass> {
        loop {
            match self.frame().await? {
                Frame::Method(_, m) => return Ok(*m),
                Frame::Heartbeat(_) => {}
                other => bail!("expected a method, got {other:?}"),
            }
        }
    }
}

/// A method frame is passed on, unless it is the broker closing on us.
fn refuse_close(m: AMQPClass) -> anyhow::Result<Frame> {
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err(anyhow!(
            "the broker closed the connection: {} {}",
            c.reply_code,
            c.reply_text
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Err(anyhow!(
            "the broker closed the channel: {} {}",
            c.reply_code,
            c.reply_text
        )),
        m => Ok(Frame::Method(CHANNEL, Box::new(m))),
    }
}

/// The writing half: frames are encoded into a buffer and sent with [`Sender::flush`].
pub struct Sender {
    socket: OwnedWriteHalf,
    writer: Writer,
    /// Encoded frames not yet written.
    pub out: BytesMut,
}

impl Sender {
    /// Encodes a method on the bench channel.
    pub fn method(&mut self, method: AMQPClass) {
        self.writer.method(CHANNEL, method, &mut self.out);
    }

    /// Encodes a publish of `body` to the default exchange, routed to `queue`.
    pub fn publish(&mut self, queue: &str, persistent: bool, body: &[u8]) {
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::from(""),
            routing_key: ShortString::from(queue),
            mandatory: false,
            immediate: false,
        }));
        let mut props = basic::AMQPProperties::default();
        if persistent {
            props = props.with_delivery_mode(2);
        }
        self.writer
            .content(CHANNEL, publish, props, body, &mut self.out);
    }

    /// Writes everything encoded so far.
    ///
    /// # Errors
    /// The socket's.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.socket.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Opens a connection, logs in with PLAIN and opens the bench channel.
///
/// # Errors
/// Connection, login or negotiation failures.
pub async fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<(Reader, Sender)> {
    let socket = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let mut reader = Reader {
        socket: read,
        input: BytesMut::with_capacity(64 * 1024),
        max_frame: FRAME_MAX as usize,
    };
    let mut sender = Sender {
        socket: write,
        writer: Writer::new(4096),
        out: BytesMut::with_capacity(64 * 1024),
    };
    sender.out.extend_from_slice(b"AMQP\x00\x00\x09\x01");
    sender.flush().await?;
    let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = reader.method().await? else {
        bail!("the broker did not start a 0-9-1 connection");
    };
    sender.method0(AMQPClass::Connection(connection::AMQPMethod::StartOk(
        connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from("PLAIN"),
            response: LongString::from(format!("\0{user}\0{password}")),
            locale: ShortString::from("en_US"),
        },
    )));
    sender.flush().await?;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = reader.method().await? else {
        bail!("login refused");
    };
    let frame_max = match tune.frame_max {
        0 => FRAME_MAX,
        n => n.min(FRAME_MAX),
    };
    sender.writer.max_size = frame_max as usize;
    sender.method0(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
        connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max,
            heartbeat: 0,
        },
    )));
    sender.method0(AMQPClass::Connection(connection::AMQPMethod::Open(
        connection::Open {
            virtual_host: ShortString::from("/"),
        },
    )));
    sender.method(AMQPClass::Channel(channel::AMQPMethod::Open(
        channel::Open {},
    )));
    sender.flush().await?;
    let AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) = reader.method().await? else {
        bail!("the broker did not open the connection");
    };
    let AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) = reader.method().await? else {
        bail!("the broker did not open the channel");
    };
    Ok((reader, sender))
}

impl Sender {
    /// Encodes a method on channel 0.
    fn method0(&mut self, method: AMQPClass) {
        self.writer.method(0, method, &mut self.out);
    }

    /// Closes the connection politely (the broker then finishes what it was sent).
    ///
    /// # Errors
    /// The socket's.
    pub async fn close(&mut self, reader: &mut Reader) -> anyhow::Result<()> {
        self.method0(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 200,
                reply_text: ShortString::from("bench done"),
                class_id: 0,
                method_id: 0,
            },
        )));
        self.flush().await?;
        loop {
            match reader.method().await? {
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => return Ok(()),
                _ => continue,
            }
        }
    }
}

/// Declares the bench queue and waits for the answer.
///
/// # Errors
/// The broker's refusal.
pub async fn declare_queue(
    reader: &mut Reader,
    sender: &mut Sender,
    name: &str,
    durable: bool,
) -> anyhow::Result<()> {
    let declare = queue::AMQPMethod::Declare(queue::Declare {
        queue: ShortString::from(name),
        passive: false,
        durable,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    queue_method(reader, sender, declare).await
}

/// Deletes the bench queue and waits for the answer.
///
/// # Errors
/// The broker's refusal.
pub async fn delete_queue(
    reader: &mut Reader,
    sender: &mut Sender,
    name: &str,
) -> anyhow::Result<()> {
    let delete = queue::AMQPMethod::Delete(queue::Delete {
        queue: ShortString::from(name),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    queue_method(reader, sender, delete).await
}

async fn queue_method(
    reader: &mut Reader,
    sender: &mut Sender,
    method: queue::AMQPMethod,
) -> anyhow::Result<()> {
    sender.method(AMQPClass::Queue(method));
    sender.flush().await?;
    match reader.method().await? {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_) | queue::AMQPMethod::DeleteOk(_)) => {
            Ok(())
        }
        other => bail!("unexpected answer to a queue method: {other:?}"),
    }
}

/// Puts the channel in confirm mode.
///
/// # Errors
/// The broker's refusal.
pub async fn confirm_select(reader: &mut Reader, sender: &mut Sender) -> anyhow::Result<()> {
    sender.method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: false },
    )));
    sender.flush().await?;
    match reader.method().await? {
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
        other => bail!("unexpected answer to confirm.select: {other:?}"),
    }
}

/// Sets the prefetch and starts consuming `queue` with acknowledgements.
///
/// # Errors
/// The broker's refusal.
pub async fn consume(
    reader: &mut Reader,
    sender: &mut Sender,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> anyhow::Result<()> {
    sender.method(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: prefetch,
        global: false,
    })));
    sender.method(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: ShortString::from(queue),
            consumer_tag: ShortString::from(tag),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        },
    )));
    sender.flush().await?;
    let AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) = reader.method().await? else {
        bail!("the broker did not take basic.qos");
    };
    let AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) = reader.method().await? else {
        bail!("the broker did not start the consumer");
    };
    Ok(())
}

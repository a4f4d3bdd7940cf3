//! The AMQP 0-9-1 door: a connection that opened with `AMQP 0-0-9-1` is served here, on
//! the same listeners, against the same broker model, users, ACL and limits as 0-10.
//! Frames and methods come from `amq-protocol`; what they do is ours.
//!
//! This file holds the connection: the socket loop, negotiation (start, SASL, tune, open),
//! heartbeats and the connection class. `channel.rs` holds the channel, exchange and queue
//! classes and `basic.rs` the basic, confirm and tx classes; `properties.rs` maps message
//! properties to the broker's 0-10 headers and back.

mod basic;
mod channel;
pub mod frames;
pub mod properties;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as Table091, LongString};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::admin::{ConnectionDetails, ConnectionLive};
use super::{verdict_of, ServerContext, Verdict};
use crate::auth::{Claim, Exchange, Identity, PeerInfo, Step};
use crate::core::{Delivery, DeliverySink, SessionId};
use channel::Channel;
use frames::{Frame, FrameError, Writer};
use properties::short;

/// The protocol header a 0-9-1 client opens with.
pub(crate) const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Output buffered beyond this stops reading input and taking deliveries.
const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// The frame size offered (RabbitMQ's default); the client may ask for less.
const FRAME_MAX: u32 = 131_072;
/// The smallest frame-max a client may ask for (the spec's minimum).
const FRAME_MIN: u32 = 4096;
/// Channels offered per connection, at most (RabbitMQ's default).
const CHANNEL_MAX: u16 = 2047;

/// Reply codes.
pub(crate) mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
    pub const NO_ROUTE: u16 = 312;

    /// The name RabbitMQ puts before the text of a close.
    pub fn name(code: u16) -> &'static str {
        match code {
            CONNECTION_FORCED => "CONNECTION_FORCED",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            RESOURCE_ERROR => "RESOURCE_ERROR",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            NO_ROUTE => "NO_ROUTE",
            _ => "ERROR",
        }
    }

    /// Whether a code closes the whole connection rather than one channel.
    pub fn is_hard(code: u16) -> bool {
        !matches!(
            code,
            ACCESS_REFUSED | NOT_FOUND | RESOURCE_LOCKED | PRECONDITION_FAILED
        )
    }
}

/// An error that ends a channel (soft codes) or the connection (hard ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: u16,
    pub text: String,
    /// The class and method that caused it.
    pub method: (u16, u16),
}

impl Failure {
    pub fn new(code: u16, text: impl Into<String>) -> Failure {
        Failure {
            code,
            text: text.into(),
            method: (0, 0),
        }
    }

    /// The broker model's error as 0-9-1 reports it.
    pub fn from_core(e: &crate::core::Error) -> Failure {
        use crate::core::Error as E;
        let code = match e {
            E::NotFound(_) => code::NOT_FOUND,
            E::ResourceLocked(_) => code::RESOURCE_LOCKED,
            E::Unauthorized(_) => code::ACCESS_REFUSED,
            // Redeclaring with another type, the reserved `amq.` names: the channel's error.
            E::NotAllowed(_) => code::PRECONDITION_FAILED,
            E::CommandInvalid(_) => code::COMMAND_INVALID,
            E::NotImplemented(_) => code::NOT_IMPLEMENTED,
            E::Internal(_) => code::INTERNAL_ERROR,
            E::PreconditionFailed(_)
            | E::IllegalArgument(_)
            | E::InvalidArgument(_)
            | E::LimitExceeded(_)
            | E::IllegalState(_) => code::PRECONDITION_FAILED,
        };
        Failure::new(code, e.to_string())
    }

    fn at(mut self, method: &AMQPClass) -> Failure {
        self.method = (method.get_amqp_class_id(), method.get_amqp_method_id());
        self
    }

    /// The reply text as RabbitMQ writes it: the code's name, then what happened.
    fn reply_text(&self) -> String {
        let mut text = format!("{} - {}", code::name(self.code), self.text);
        text.truncate(
            (0..=255.min(text.len()))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0),
        );
        text
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    AwaitSecureOk,
    Authenticating,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok.
    Closing,
}

/// What the broker model tells a connection about its consumers.
enum Event {
    Delivery(Delivery),
    /// The consumer's queue was deleted.
    Cancelled(Arc<str>),
}

/// Hands deliveries (and cancellations) to the connection task.
struct Sink(mpsc::UnboundedSender<Event>);

impl DeliverySink for Sink {
    fn deliver(&self, delivery: Delivery) {
        let _ = self.0.send(Event::Delivery(delivery));
    }

    fn cancelled(&self, _session: SessionId, destination: &Arc<str>) {
        let _ = self.0.send(Event::Cancelled(destination.clone()));
    }
}

/// The store finished something a channel waits for.
pub(crate) enum Durable {
    /// A confirmed publish is on disk (or failed to get there).
    Confirm {
        channel: u16,
        incarnation: u64,
        seq: u64,
        ok: bool,
    },
    /// A transaction's commit is on disk (or failed to get there).
    Commit {
        channel: u16,
        incarnation: u64,
        ok: bool,
    },
}

/// What a client said it can take (`capabilities` in its client properties).
#[derive(Debug, Clone, Copy, Default)]
struct Capabilities {
    authentication_failure_close: bool,
    consumer_cancel_notify: bool,
    connection_blocked: bool,
}

pub(crate) struct Conn<'a> {
    ctx: &'a ServerContext,
    id: u64,
    /// The broker session of this connection (all its channels): set at open.
    session: Option<SessionId>,
    phase: Phase,
    peer: PeerInfo,
    sasl: Option<Exchange>,
    verdict: Option<Verdict>,
    identity: Option<Identity>,
    acl: (u64, Option<Arc<crate::auth::Acl>>),
    mechanism: String,
    client_properties: Table091,
    capabilities: Capabilities,
    writer: Writer,
    /// The largest frame accepted from the peer.
    frame_max: usize,
    channel_max: u16,
    heartbeat: Option<Duration>,
    out: BytesMut,
    channels: HashMap<u16, Channel>,
    /// Channels that got `channel.close` from us and wait for the peer's close-ok.
    closing_channels: HashMap<u16, ()>,
    next_incarnation: u64,
    sink: Arc<dyn DeliverySink>,
    durable_tx: mpsc::UnboundedSender<Durable>,
    /// Set once the socket should close after flushing output.
    done: bool,
    /// Whether the client was told `connection.blocked`.
    blocked: bool,
    /// Commits waiting for the store: no input is taken meanwhile.
    committing: usize,
    /// Exclusive queues this connection declared: deleted when it ends.
    exclusive_queues: std::collections::HashSet<String>,
    live: Arc<ConnectionLive>,
    pending: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Serves one 0-9-1 connection whose protocol header has been read.
pub(crate) async fn serve<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
    peer: PeerInfo,
    pending: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opened = Instant::now();
    let (tx, mut deliveries) = mpsc::unbounded_channel();
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        ctx: &ctx,
        id: ctx.broker.new_connection(),
        session: None,
        phase: Phase::AwaitStartOk,
        peer,
        sasl: None,
        verdict: None,
        identity: None,
        acl: ctx.acl(),
        mechanism: String::new(),
        client_properties: Table091::default(),
        capabilities: Capabilities::default(),
        writer: Writer::new(FRAME_MIN as usize),
        frame_max: FRAME_MIN as usize,
        // RabbitMQ's default: a client opening channels by the thousand is not served.
        channel_max: ctx.config.channel_max.min(CHANNEL_MAX),
        heartbeat: None,
        out: BytesMut::with_capacity(8192),
        channels: HashMap::new(),
        closing_channels: HashMap::new(),
        next_incarnation: 0,
        sink: Arc::new(Sink(tx)),
        durable_tx,
        done: false,
        blocked: false,
        committing: 0,
        exclusive_queues: std::collections::HashSet::new(),
        live: Arc::new(ConnectionLive::default()),
        pending,
    };
    let live = conn.live.clone();
    conn.send_start();

    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut last_input = Instant::now();
    let mut last_output = Instant::now();
    let opened_by = Instant::now() + ctx.config.handshake_timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut closing_since: Option<Instant> = None;
    let mut verdict: Option<Verdict> = None;

    loop {
        if conn.done && conn.out.is_empty() {
            break;
        }
        if let Some(v) = conn.verdict.take() {
            verdict = Some(v);
        }
        let can_read = conn.out.len() < OUTPUT_HIGH_WATER
            && !conn.done
            && verdict.is_none()
            && conn.committing == 0;
        tokio::select! {
            v = verdict_of(&mut verdict), if verdict.is_some() => {
                verdict = None;
                conn.login_judged(v);
            }
            r = reader.read_buf(&mut input), if can_read => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        ConnectionLive::bump(&live.bytes_from, n as u64);
                        last_input = Instant::now();
                        conn.handle_input(&mut input);
                        conn.send_confirms();
                    }
                }
            }
            r = writer.write(&conn.out), if !conn.out.is_empty() => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        ConnectionLive::bump(&live.bytes_to, n as u64);
                        conn.out.advance(n);
                        last_output = Instant::now();
                        // Input held back while the output was full goes on now.
                        if !input.is_empty() {
                            conn.handle_input(&mut input);
                            conn.send_confirms();
                        }
                    }
                }
            }
            Some(done) = durable_rx.recv() => {
                conn.durable_done(done);
                while let Ok(more) = durable_rx.try_recv() {
                    conn.durable_done(more);
                }
                // Input held back during a commit goes on now.
                if !input.is_empty() {
                    conn.handle_input(&mut input);
                }
                conn.send_confirms();
            }
            Some(event) = deliveries.recv(), if can_read => {
                conn.event(event);
                while conn.out.len() < OUTPUT_HIGH_WATER {
                    match deliveries.try_recv() {
                        Ok(event) => conn.event(event),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                conn.tell_blocked();
                let now = Instant::now();
                if conn.phase != Phase::Open && conn.phase != Phase::Closing && now > opened_by {
                    tracing::debug!("0-9-1 negotiation timed out");
                    conn.done = true;
                }
                if let Some(hb) = conn.heartbeat {
                    if now.duration_since(last_input) > hb * 2 {
                        tracing::debug!("0-9-1 peer silent for two heartbeats: closing");
                        break;
                    }
                    if now.duration_since(last_output) >= hb / 2 && conn.out.is_empty() {
                        conn.writer.heartbeat(&mut conn.out);
                    }
                }
                if conn.phase == Phase::Closing {
                    let since = *closing_since.get_or_insert(now);
                    if now.duration_since(since) > Duration::from_secs(5) {
                        break;
                    }
                }
            }
            _ = live.close.notified() => {
                if conn.phase == Phase::Closing || conn.done {
                    break;
                }
                conn.close(Failure::new(code::CONNECTION_FORCED, "Closed by Management Request"));
            }
            _ = shutdown.changed() => {
                if conn.phase == Phase::Closing || conn.done {
                    break;
                }
                conn.close(Failure::new(code::CONNECTION_FORCED, "broker shutting down"));
            }
        }
    }
    // Unacknowledged messages go back before the socket's goodbye, which a peer that does
    // not read could hold up.
    conn.end();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
    if let Some(identity) = &conn.identity {
        tracing::info!(
            peer = %conn.peer.addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            user = %identity.full,
            protocol = "0-9-1",
            seconds = opened.elapsed().as_secs(),
            bytes_in = live.bytes_from.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out = live.bytes_to.load(std::sync::atomic::Ordering::Relaxed),
            "connection closed"
        );
        ctx.leave(conn.id);
    }
    // Whatever was still on its way to this connection goes back to its queue.
    deliveries.close();
    while let Ok(event) = deliveries.try_recv() {
        if let Event::Delivery(d) = event {
            conn.give_back(&d);
        }
    }
}

impl Conn<'_> {
    fn event(&mut self, event: Event) {
        match event {
            Event::Delivery(d) => self.deliver(d),
            Event::Cancelled(destination) => self.consumer_cancelled(&destination),
        }
    }

    /// Tells a client that asked for it (`connection.blocked`) when the store refuses
    /// persistent messages (a disk short of space, failing writes) and when it takes them
    /// again. Publishing goes on: what the store cannot keep is nacked.
    fn tell_blocked(&mut self) {
        if self.phase != Phase::Open || !self.capabilities.connection_blocked {
            return;
        }
        let refusal = self.ctx.broker.journal().and_then(|j| j.refusal());
        match (refusal, self.blocked) {
            (Some(why), false) => {
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                        reason: short(&why.to_string()),
                    })),
                );
                self.blocked = true;
            }
            (None, true) => {
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
                self.blocked = false;
            }
            _ => {}
        }
    }

    fn method(&mut self, channel: u16, m: AMQPClass) {
        self.writer.method(channel, m, &mut self.out);
    }

    fn send_start(&mut self) {
        let mut capabilities = Table091::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "per_consumer_qos",
            "authentication_failure_close",
            "connection.blocked",
        ] {
            capabilities.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = Table091::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        props.insert("product".into(), text("clacks"));
        props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), text("Rust"));
        props.insert(
            "information".into(),
            text("AMQP 0-9-1 and 0-10 broker with a Clacks agent"),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let mut mechanisms = self.ctx.auth.mechanisms(&self.peer);
        mechanisms.push("AMQPLAIN");
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from(mechanisms.join(" ")),
                locales: LongString::from("en_US"),
            })),
        );
    }

    /// Sends connection.close and waits for close-ok; input other than that is ignored.
    fn close(&mut self, failure: Failure) {
        if self.phase == Phase::Closing {
            return;
        }
        tracing::debug!(
            code = failure.code,
            "0-9-1 connection closed: {}",
            failure.text
        );
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: failure.code,
                reply_text: short(&failure.reply_text()),
                class_id: failure.method.0,
                method_id: failure.method.1,
            })),
        );
        self.phase = Phase::Closing;
    }

    fn handle_input(&mut self, input: &mut BytesMut) {
        // Frames wait in `input` while the output is full or a commit is under way.
        while !self.done && self.committing == 0 && self.out.len() < OUTPUT_HIGH_WATER {
            match frames::next(input, self.frame_max) {
                Ok(Some(frame)) => self.frame(frame),
                Ok(None) => return,
                Err(FrameError { code, text, method }) => {
                    tracing::debug!(code, "bad 0-9-1 input: {text}");
                    let mut f = Failure::new(code, text);
                    f.method = method;
                    self.close(f);
                    // The rest of the input cannot be framed: stop reading it.
                    input.clear();
                    self.done = true;
                    return;
                }
            }
        }
    }

    fn frame(&mut self, frame: Frame) {
        if self.phase == Phase::Closing {
            // Only the peer's close or close-ok matters now.
            if let Frame::Method(0, m) = &frame {
                match m.as_ref() {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => self.done = true,
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.done = true;
                    }
                    _ => {}
                }
            }
            return;
        }
        match frame {
            Frame::Heartbeat(0) => {}
            Frame::Heartbeat(_) => self.close(Failure::new(
                code::FRAME_ERROR,
                "heartbeat frame on a channel other than 0",
            )),
            Frame::Method(0, m) => self.connection_method(*m),
            Frame::Method(..) | Frame::Header(..) | Frame::Body(..)
                if self.phase != Phase::Open =>
            {
                self.close(Failure::new(
                    code::COMMAND_INVALID,
                    "channel frame before the connection is open",
                ));
            }
            Frame::Header(0, ..) | Frame::Body(0, _) => self.close(Failure::new(
                code::UNEXPECTED_FRAME,
                "content frame on channel 0",
            )),
            other => self.channel_frame(other),
        }
    }

    fn connection_method(&mut self, m: AMQPClass) {
        let AMQPClass::Connection(method) = &m else {
            return self.close(
                Failure::new(
                    code::COMMAND_INVALID,
                    "only connection methods go on channel 0",
                )
                .at(&m),
            );
        };
        match (self.phase, method) {
            (Phase::AwaitStartOk, connection::AMQPMethod::StartOk(ok)) => self.start_ok(ok),
            (Phase::AwaitSecureOk, connection::AMQPMethod::SecureOk(ok)) => {
                let step = match self.sasl.as_mut() {
                    Some(exchange) => exchange.step(ok.response.as_bytes()),
                    None => Step::Failed("no SASL exchange under way".into()),
                };
                self.sasl_step(step);
            }
            (Phase::AwaitTuneOk, connection::AMQPMethod::TuneOk(ok)) => self.tune_ok(ok),
            (Phase::AwaitOpen, connection::AMQPMethod::Open(_)) => self.open(),
            (_, connection::AMQPMethod::Close(_)) => {
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.done = true;
            }
            (
                Phase::Open,
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => {}
            _ => self.close(
                Failure::new(
                    code::COMMAND_INVALID,
                    format!("unexpected connection method in {:?}", self.phase),
                )
                .at(&m),
            ),
        }
    }

    fn start_ok(&mut self, ok: &connection::StartOk) {
        self.client_properties = ok.client_properties.clone();
        if let Some(AMQPValue::FieldTable(caps)) = ok.client_properties.inner().get("capabilities")
        {
            let on = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
            self.capabilities = Capabilities {
                authentication_failure_close: on("authentication_failure_close"),
                consumer_cancel_notify: on("consumer_cancel_notify"),
                connection_blocked: on("connection.blocked"),
            };
        }
        self.mechanism = ok.mechanism.to_string();
        if self.mechanism == "AMQPLAIN" {
            let claim = amqplain(ok.response.as_bytes());
            return self.judge(claim);
        }
        let (exchange, step) =
            self.ctx
                .auth
                .start(&self.peer, &self.mechanism, ok.response.as_bytes());
        self.sasl = Some(exchange);
        self.sasl_step(step);
    }

    fn sasl_step(&mut self, step: Step) {
        match step {
            Step::Challenge(challenge) => {
                self.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Secure(connection::Secure {
                        challenge: LongString::from(challenge),
                    })),
                );
                self.phase = Phase::AwaitSecureOk;
            }
            Step::Done(claim) => self.judge(Ok(claim)),
            Step::Failed(why) => self.judge(Err(why)),
        }
    }

    /// Judges a claim off this task; a failure is answered after the configured delay.
    fn judge(&mut self, claim: Result<Claim, String>) {
        self.sasl = None;
        self.verdict = Some(self.ctx.judge(claim, &self.peer));
        self.phase = Phase::Authenticating;
    }

    fn login_judged(&mut self, verdict: Result<Identity, String>) {
        if self.phase != Phase::Authenticating {
            return;
        }
        let peer = self
            .peer
            .addr
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let identity = match verdict {
            Ok(identity) => identity,
            Err(why) => {
                let failures = self.ctx.auth.note_failure(&self.peer);
                tracing::warn!(%peer, failures, protocol = "0-9-1", "authentication failed: {why}");
                if self.capabilities.authentication_failure_close {
                    self.close(Failure::new(
                        code::ACCESS_REFUSED,
                        format!(
                            "Login was refused using authentication mechanism {}",
                            self.mechanism
                        ),
                    ));
                }
                // Without the capability the spec says: just close the socket.
                self.done = true;
                return;
            }
        };
        let details = ConnectionDetails {
            properties: properties::table_to_010(&self.client_properties),
            mechanism: self.mechanism.clone(),
            federation_link: false,
            live: self.live.clone(),
        };
        if let Err(why) = self
            .ctx
            .admit(self.id, &identity.stamp, &self.peer, details)
        {
            tracing::warn!(%peer, user = %identity.stamp, "connection refused: {why}");
            self.close(Failure::new(code::NOT_ALLOWED, why));
            return;
        }
        self.pending = None;
        tracing::info!(%peer, user = %identity.full, tls = self.peer.tls, protocol = "0-9-1", "connection opened");
        self.identity = Some(identity);
        let cfg = &self.ctx.config;
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.channel_max,
                frame_max: FRAME_MAX,
                heartbeat: cfg.heartbeat_max.min(60),
            })),
        );
        self.phase = Phase::AwaitTuneOk;
    }

    fn tune_ok(&mut self, ok: &connection::TuneOk) {
        let frame_max = match ok.frame_max {
            0 => FRAME_MAX,
            n => n.min(FRAME_MAX),
        };
        if frame_max < FRAME_MIN {
            return self.close(Failure::new(
                code::NOT_ALLOWED,
                format!("frame_max={frame_max} < {FRAME_MIN} min size"),
            ));
        }
        self.frame_max = frame_max as usize;
        self.writer.max_size = frame_max as usize;
        if ok.channel_max != 0 {
            self.channel_max = self.channel_max.min(ok.channel_max);
        }
        let hb = ok.heartbeat.min(self.ctx.config.heartbeat_max);
        self.heartbeat = (hb > 0).then(|| Duration::from_secs(u64::from(hb)));
        self.phase = Phase::AwaitOpen;
    }

    fn open(&mut self) {
        self.session = Some(self.ctx.broker.new_session(self.id));
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.phase = Phase::Open;
    }

    /// The connection is gone: every channel's unacknowledged messages go back, and the
    /// session's consumers and exclusive queues with it.
    fn end(&mut self) {
        let mut held = Vec::new();
        for (_, mut ch) in self.channels.drain() {
            held.extend(ch.take_unacked());
        }
        if let Some(session) = self.session.take() {
            // Only those still ours: one may have expired and its name been taken since.
            let released = self.ctx.broker.end_session(session, &held);
            for queue in released {
                if self.exclusive_queues.remove(&queue) {
                    let _ = self.ctx.broker.delete_queue(session, &queue, false, false);
                }
            }
        }
    }

    /// Whether the connection is closing (nothing more goes out but the close).
    pub(super) fn closing(&self) -> bool {
        self.phase == Phase::Closing || self.done
    }
}

/// An AMQPLAIN response: a field table (without its length) holding LOGIN and PASSWORD.
fn amqplain(response: &[u8]) -> Result<Claim, String> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    let len = u32::try_from(response.len()).map_err(|_| "AMQPLAIN response too long")?;
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(response);
    let table = amq_protocol::types::parsing::parse_field_table(&framed[..])
        .map_err(|_| "malformed AMQPLAIN response".to_string())?
        .1;
    let field = |name: &str| match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    match (field("LOGIN"), field("PASSWORD")) {
        (Some(authcid), Some(password)) => Ok(Claim::Plain {
            authzid: String::new(),
            authcid,
            password,
        }),
        _ => Err("AMQPLAIN response without LOGIN and PASSWORD".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqplain_responses_give_a_plain_claim() {
        let mut t = Table091::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("alice".into()));
        t.insert("PASSWORD".into(), AMQPValue::LongString("pw".into()));
        let (framed, _) = cookie_factory::r#gen(
            amq_protocol::types::generation::gen_field_table(&t),
            Vec::new(),
        )
        .expect("gen");
        let claim = amqplain(&framed[4..]).expect("claim");
        assert_eq!(
            claim,
            Claim::Plain {
                authzid: String::new(),
                authcid: "alice".into(),
                password: "pw".into()
            }
        );
        assert!(amqplain(b"\x05LOGIN").is_err());
        assert!(amqplain(&[]).is_err());
    }

    #[test]
    fn reply_texts_fit_a_short_string() {
        let f = Failure::new(code::NOT_FOUND, "é".repeat(300));
        let text = f.reply_text();
        assert!(text.starts_with("NOT_FOUND - "));
        assert!(text.len() <= 255);
    }
}

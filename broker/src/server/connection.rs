//! The per-connection driver: protocol header, negotiation (start, SASL, tune, open),
//! heartbeats, sessions by channel, and the socket loop that never blocks reading on
//! writing (and stops reading when the peer stops taking output).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::admin::{ConnectionDetails, ConnectionLive};
use super::session::{DurableDone, DurableNotifier, Session, SessionEnv};
use super::{verdict_of, ServerContext, Verdict};
use crate::auth::{Claim, Exchange, Identity, PeerInfo, Step};
use crate::core::{Delivery, DeliverySink, Error};
use crate::wire::frame::{MIN_MAX_FRAME_SIZE, PROTOCOL_HEADER};
use crate::wire::{
    Array, Assembler, Assembly, AssemblyError, ConnectionClose, ConnectionCloseCode,
    ConnectionCloseOk, ConnectionOpenOk, ConnectionSecure, ConnectionStart, ConnectionTune,
    Control, DecodeError, FieldTable, FrameCodec, FrameWriter, SequenceNo, SequenceSet,
    SessionAttached, SessionCommandPoint, SessionConfirmed, SessionDetach, SessionDetachCode,
    SessionDetached, SessionExpected, SessionKnownCompleted, SessionTimeout,
};

/// Output buffered beyond this stops reading input and taking deliveries, so a peer that
/// does not read cannot make the broker buffer without bound.
const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// Largest assembly (a message with its header) accepted.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    /// A SASL challenge went out.
    AwaitSecureOk,
    /// The login is being judged (password hash, directory).
    Authenticating,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent close and wait for close-ok (or the peer's close).
    Closing,
}

/// Hands deliveries to the connection task.
struct ChannelSink(mpsc::UnboundedSender<Delivery>);

impl DeliverySink for ChannelSink {
    fn deliver(&self, delivery: Delivery) {
        // If the connection task is gone, the session's end releases what it held; a
        // message sent into a closed channel is released by the task's shutdown path.
        let _ = self.0.send(delivery);
    }
}

struct Conn<'a> {
    ctx: &'a ServerContext,
    /// The broker's id for this connection.
    id: u64,
    /// Deliveries for this connection's consumers.
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Hands the store's confirmations back to this connection.
    durable: Option<DurableNotifier>,
    durable_done: mpsc::UnboundedReceiver<DurableDone>,
    phase: Phase,
    peer: PeerInfo,
    sasl: Option<Exchange>,
    /// The verdict on a login, once it is being judged.
    verdict: Option<Verdict>,
    identity: Option<Identity>,
    /// The ACL this connection applies, and the reload generation it came from.
    acl: (u64, Option<Arc<crate::auth::Acl>>),
    codec: FrameCodec,
    writer: FrameWriter,
    assembler: Assembler,
    out: BytesMut,
    sessions: HashMap<u16, Session>,
    sink: Arc<dyn DeliverySink>,
    heartbeat: Option<Duration>,
    channel_max: u16,
    /// Set once the socket should close after flushing output.
    done: bool,
    /// The peer said it is a federation link (`qpid.fed_link` in its client properties).
    fed_link: bool,
    /// A federation link from a configured peer (decided at login): its messages keep
    /// their user-id.
    peer_link: bool,
    /// What the peer said of itself in `connection.start-ok`.
    client_properties: FieldTable,
    /// The SASL mechanism it chose.
    mechanism: String,
    /// Counters management reads, and its request to close.
    live: Arc<ConnectionLive>,
    /// Its place among the connections not yet logged in, given back at login.
    pending: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Serves one connection until it closes.
pub(crate) async fn serve<S>(
    stream: S,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
    peer: PeerInfo,
    pending: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opened = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut header = [0u8; 8];
    let got =
        tokio::time::timeout(ctx.config.handshake_timeout, reader.read_exact(&mut header)).await;
    if !matches!(got, Ok(Ok(_))) {
        return;
    }
    if header == super::amqp091::PROTOCOL_HEADER {
        return super::amqp091::serve(reader, writer, ctx, shutdown, peer, pending).await;
    }
    if header != PROTOCOL_HEADER {
        // Tell the peer what we speak, then close (1.0 and others get the same answer).
        tracing::debug!(?header, "unsupported protocol header");
        let _ = writer.write_all(&PROTOCOL_HEADER).await;
        let _ = writer.shutdown().await;
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        ctx: &ctx,
        id: ctx.broker.new_connection(),
        deliveries: rx,
        durable: ctx.broker.journal().map(|j| DurableNotifier {
            journal: j.clone(),
            done: done_tx,
        }),
        durable_done: done_rx,
        phase: Phase::AwaitStartOk,
        peer,
        sasl: None,
        verdict: None,
        identity: None,
        acl: ctx.acl(),
        codec: FrameCodec::new(usize::from(ctx.config.max_frame_size)),
        writer: FrameWriter::new(usize::from(ctx.config.max_frame_size)),
        assembler: Assembler::new(ctx.config.max_message_size),
        out: BytesMut::with_capacity(8192),
        sessions: HashMap::new(),
        sink: Arc::new(ChannelSink(tx)),
        heartbeat: None,
        channel_max: ctx.config.channel_max,
        done: false,
        fed_link: false,
        peer_link: false,
        client_properties: FieldTable::new(),
        mechanism: String::new(),
        live: Arc::new(ConnectionLive::default()),
        pending,
    };
    let live = conn.live.clone();
    conn.out.extend_from_slice(&PROTOCOL_HEADER);
    conn.send_start();

    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut last_input = Instant::now();
    let mut last_output = Instant::now();
    // Counted from the protocol header: a peer slow to send even that has used it up.
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
        let can_read = conn.out.len() < OUTPUT_HIGH_WATER && !conn.done && verdict.is_none();
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
                        conn.report_completions();
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
                    }
                }
            }
            Some(done) = conn.durable_done.recv() => {
                conn.durable_done(done);
                conn.report_completions();
            }
            Some(d) = conn.deliveries.recv(), if can_read => {
                conn.deliver(d);
                // Take whatever else is ready in one go: one write for many transfers.
                conn.drain_deliveries();
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if conn.phase != Phase::Open && conn.phase != Phase::Closing && now > opened_by {
                    conn.close(ConnectionCloseCode::CONNECTION_FORCED, "negotiation timed out");
                    // No waiting for a close-ok from a peer that has not kept to time.
                    conn.done = true;
                }
                if let Some(hb) = conn.heartbeat {
                    if now.duration_since(last_input) > hb * 2 {
                        tracing::debug!("peer silent for two heartbeats: closing");
                        break;
                    }
                    if now.duration_since(last_output) >= hb / 2 && conn.out.is_empty() {
                        conn.control(0, Control::ConnectionHeartbeat(Default::default()));
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
                conn.close(
                    ConnectionCloseCode::CONNECTION_FORCED,
                    "Closed by Management Request",
                );
            }
            _ = shutdown.changed() => {
                if conn.phase == Phase::Closing || conn.done {
                    break;
                }
                conn.close(ConnectionCloseCode::CONNECTION_FORCED, "broker shutting down");
            }
        }
    }
    let _ = writer.shutdown().await;
    conn.end_all_sessions();
    // Counted in the census once logged in (the identity is set then).
    if let Some(identity) = &conn.identity {
        tracing::info!(
            peer = %conn.peer.addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            user = %identity.full,
            seconds = opened.elapsed().as_secs(),
            bytes_in = live.bytes_from.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out = live.bytes_to.load(std::sync::atomic::Ordering::Relaxed),
            "connection closed"
        );
        ctx.leave(conn.id);
    }
    // Anything still in flight to this connection goes back to its queue: with every
    // session ended, `deliver` releases it.
    conn.deliveries.close();
    while let Ok(d) = conn.deliveries.try_recv() {
        conn.deliver(d);
    }
}

impl Conn<'_> {
    fn control(&mut self, channel: u16, c: Control) {
        self.writer.control(channel, &c, &mut self.out);
    }

    fn send_start(&mut self) {
        let mut props = FieldTable::new();
        props.insert("product", "clacks");
        props.insert("version", env!("CARGO_PKG_VERSION"));
        props.insert("platform", std::env::consts::OS);
        props.insert("qpid.federation_tag", self.ctx.federation_tag.clone());
        let mechs = self.ctx.auth.mechanisms(&self.peer);
        self.control(
            0,
            Control::ConnectionStart(ConnectionStart {
                server_properties: Some(props),
                mechanisms: Some(Array::str16(mechs)),
                locales: Some(Array::str16(["en_US"])),
            }),
        );
    }

    /// Closes with a code and text; output is flushed, then the socket closes.
    fn close(&mut self, code: ConnectionCloseCode, text: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        tracing::debug!(code = code.0, "closing connection: {text}");
        self.control(
            0,
            Control::ConnectionClose(ConnectionClose {
                reply_code: Some(code),
                reply_text: Some(text.to_string()),
            }),
        );
        self.phase = Phase::Closing;
    }

    fn framing_error(&mut self, text: &str) {
        self.close(ConnectionCloseCode::FRAMING_ERROR, text);
        // After a framing error nothing more the peer sends can be trusted.
        self.done = true;
    }

    fn handle_input(&mut self, input: &mut BytesMut) {
        loop {
            if self.done {
                input.clear();
                return;
            }
            let frame = match self.codec.decode(input) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    self.framing_error(&e.to_string());
                    return;
                }
            };
            match self.assembler.push(frame) {
                Ok(None) => {}
                Ok(Some((channel, assembly))) => self.assembly(channel, assembly),
                Err(AssemblyError::Frame(e)) => self.framing_error(&e.to_string()),
                Err(AssemblyError::Decode {
                    channel,
                    command,
                    error,
                }) => self.undecodable(channel, command, error),
                Err(AssemblyError::TooLarge {
                    channel,
                    size,
                    max,
                    codes,
                }) => self.refuse_too_large(channel, size, max, codes),
            }
        }
    }

    /// A command too large to take: its session gets resource-limit-exceeded and is
    /// detached; the connection, and the assembler dropping the rest, carry on.
    fn refuse_too_large(&mut self, channel: u16, size: u64, max: usize, codes: Option<(u8, u8)>) {
        if self.phase != Phase::Open {
            self.framing_error(&format!("assembly of {size} bytes exceeds {max}"));
            return;
        }
        self.with_session(channel, |s, env| {
            let id = s.take_next_id();
            s.exception(
                env,
                &Error::LimitExceeded(format!(
                    "message of {size} bytes exceeds max_message_size {max}"
                )),
                Some(id),
                codes.unwrap_or((0x04, 0x01)),
            );
        });
        self.detach_failed(channel);
    }

    fn undecodable(&mut self, channel: u16, command: bool, error: DecodeError) {
        match (command, &error, self.phase) {
            (true, DecodeError::UnknownCommand { class, code }, Phase::Open) => {
                let codes = (*class, *code);
                self.with_session(channel, |s, env| {
                    let id = s.take_next_id();
                    s.exception(
                        env,
                        &Error::NotImplemented(format!("unknown command {}.{}", codes.0, codes.1)),
                        Some(id),
                        codes,
                    );
                });
                self.detach_failed(channel);
            }
            _ => self.framing_error(&error.to_string()),
        }
    }

    fn assembly(&mut self, channel: u16, assembly: Assembly) {
        match (self.phase, assembly) {
            (_, Assembly::Control(c)) if is_connection_control(&c) => {
                if channel != 0 && self.phase != Phase::Open {
                    return self.framing_error("connection control on a session channel");
                }
                self.connection_control(c)
            }
            (Phase::Open, Assembly::Control(c)) => self.session_control(channel, c),
            (
                Phase::Open,
                Assembly::Command {
                    header,
                    command,
                    content,
                },
            ) => {
                if !self.sessions.contains_key(&channel) {
                    // Commands on a channel with no session: tell the peer it is not attached.
                    self.control(
                        channel,
                        Control::SessionDetached(SessionDetached {
                            name: Some(Bytes::new()),
                            code: Some(SessionDetachCode::NOT_ATTACHED),
                        }),
                    );
                    return;
                }
                let mut outcome = None;
                self.with_session(channel, |s, env| {
                    outcome = s.command(env, header, command, content);
                });
                self.after_command(channel, outcome);
            }
            (Phase::Closing, _) => {}
            _ => self.framing_error("frames before the connection is open"),
        }
    }

    /// The store confirmed a command: complete it on its session, if that still exists.
    fn durable_done(&mut self, done: DurableDone) {
        if self
            .sessions
            .get(&done.channel)
            .is_none_or(|s| s.id != done.session)
        {
            return;
        }
        let mut outcome = None;
        self.with_session(done.channel, |s, env| {
            outcome = s.durable_done(env, done.command, done.result);
        });
        self.after_command(done.channel, outcome);
    }

    /// Detaches a failed session, or reports a completion the peer asked for.
    fn after_command(&mut self, channel: u16, outcome: Option<bool>) {
        match outcome {
            None => self.detach_failed(channel),
            Some(true) => {
                // Transfers the command caused (flush, flow) go out before its
                // completion: clients take the completion to mean "drained".
                self.drain_deliveries();
                if let Some(s) = self.sessions.get_mut(&channel) {
                    s.completion_asked();
                }
            }
            Some(false) => {}
        }
    }

    fn with_session(&mut self, channel: u16, f: impl FnOnce(&mut Session, &mut SessionEnv<'_>)) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let cfg = &self.ctx.config;
        self.ctx.refresh_acl(&mut self.acl);
        let peer_link = self.peer_link;
        let mut env = SessionEnv {
            broker: &self.ctx.broker,
            writer: &self.writer,
            out: &mut self.out,
            channel,
            identity: self.identity.as_ref(),
            check_user_id: cfg.auth && !peer_link,
            stamp_user_id: cfg.stamp_user_id && !peer_link,
            acl: self.acl.1.as_deref(),
            max_queues_per_user: cfg.max_queues_per_user,
            sink: &self.sink,
            connection: self.id,
            durable: self.durable.as_ref(),
            live: &self.live,
        };
        f(session, &mut env);
    }

    /// After an exception qpidd detaches the session itself.
    fn detach_failed(&mut self, channel: u16) {
        if let Some(s) = self.sessions.get(&channel) {
            let name = s.name.clone();
            self.control(
                channel,
                Control::SessionDetach(SessionDetach { name: Some(name) }),
            );
        }
    }

    fn report_completions(&mut self) {
        let channels: Vec<u16> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.completion_due() && !s.failed)
            .map(|(c, _)| *c)
            .collect();
        for ch in channels {
            self.with_session(ch, |s, env| s.send_completed(env));
        }
    }

    fn drain_deliveries(&mut self) {
        while self.out.len() < OUTPUT_HIGH_WATER {
            match self.deliveries.try_recv() {
                Ok(d) => self.deliver(d),
                Err(_) => break,
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let channel = self
            .sessions
            .iter()
            .find(|(_, s)| s.id == d.session)
            .map(|(c, _)| *c);
        match channel {
            Some(ch) => self.with_session(ch, |s, env| s.deliver(env, d)),
            None if d.acquired && !d.settled => self.ctx.broker.release(&[d.held()], false),
            None => {}
        }
    }

    fn end_session(&mut self, channel: u16) {
        if let Some(mut s) = self.sessions.remove(&channel) {
            s.close_dtx(&self.ctx.broker);
            self.ctx.broker.end_session(s.id, &s.held());
        }
        self.assembler.reset_channel(channel);
    }

    fn end_all_sessions(&mut self) {
        let channels: Vec<u16> = self.sessions.keys().copied().collect();
        for ch in channels {
            self.end_session(ch);
        }
    }

    fn connection_control(&mut self, c: Control) {
        match (self.phase, c) {
            (Phase::AwaitStartOk, Control::ConnectionStartOk(s)) => {
                self.fed_link = s
                    .client_properties
                    .as_ref()
                    .and_then(|p| p.get("qpid.fed_link"))
                    .is_some_and(|v| v.as_i64().is_some_and(|n| n != 0));
                self.client_properties = s.client_properties.unwrap_or_default();
                let mechanism = s.mechanism.unwrap_or_default();
                self.mechanism.clone_from(&mechanism);
                let response = s.response.unwrap_or_default();
                let (exchange, step) = self.ctx.auth.start(&self.peer, &mechanism, &response);
                self.sasl = Some(exchange);
                self.sasl_step(step);
            }
            (Phase::AwaitSecureOk, Control::ConnectionSecureOk(s)) => {
                let response = s.response.unwrap_or_default();
                let step = match self.sasl.as_mut() {
                    Some(ex) => ex.step(&response),
                    None => Step::Failed("no exchange in progress".into()),
                };
                self.sasl_step(step);
            }
            (Phase::AwaitTuneOk, Control::ConnectionTuneOk(t)) => {
                let cfg = &self.ctx.config;
                let frame = t
                    .max_frame_size
                    .unwrap_or(cfg.max_frame_size)
                    .min(cfg.max_frame_size);
                if usize::from(frame) < MIN_MAX_FRAME_SIZE {
                    return self.framing_error("max-frame-size below the minimum of 4096");
                }
                self.codec.set_max_frame_size(usize::from(frame));
                self.writer = FrameWriter::new(usize::from(frame));
                if let Some(cm) = t.channel_max.filter(|c| *c > 0) {
                    self.channel_max = cm.min(cfg.channel_max);
                }
                let hb = t.heartbeat.unwrap_or(0).min(cfg.heartbeat_max);
                self.heartbeat = (hb > 0).then(|| Duration::from_secs(u64::from(hb)));
                self.phase = Phase::AwaitOpen;
            }
            (Phase::AwaitOpen, Control::ConnectionOpen(_)) => {
                self.control(
                    0,
                    Control::ConnectionOpenOk(ConnectionOpenOk {
                        known_hosts: Some(Array::str16(Vec::<String>::new())),
                    }),
                );
                self.phase = Phase::Open;
            }
            (_, Control::ConnectionHeartbeat(_)) => {}
            (_, Control::ConnectionClose(_)) => {
                self.control(0, Control::ConnectionCloseOk(ConnectionCloseOk {}));
                self.phase = Phase::Closing;
                self.done = true;
            }
            (Phase::Closing, Control::ConnectionCloseOk(_)) => self.done = true,
            (Phase::Closing, _) => {}
            (_, other) => {
                self.framing_error(&format!("unexpected {} during negotiation", other.name()));
            }
        }
    }

    /// Acts on where the SASL exchange stands: another challenge, or a claim to judge.
    fn sasl_step(&mut self, step: Step) {
        match step {
            Step::Challenge(challenge) => {
                self.control(
                    0,
                    Control::ConnectionSecure(ConnectionSecure {
                        challenge: Some(Bytes::from(challenge)),
                    }),
                );
                self.phase = Phase::AwaitSecureOk;
            }
            Step::Done(claim) => self.judge(Ok(claim)),
            Step::Failed(why) => self.judge(Err(why)),
        }
    }

    /// Judges a claim off this task (hashing and the directory take time); a failure is
    /// answered only after the configured delay, to slow down guessing.
    fn judge(&mut self, claim: Result<Claim, String>) {
        self.sasl = None;
        // A login the connection limits would refuse anyway costs no password hash.
        if let Ok(Claim::Plain { authcid, .. }) = &claim {
            let user = Identity::user(authcid, &self.ctx.auth.config().realm).stamp;
            if let Some(why) = self.ctx.would_refuse(&user) {
                tracing::warn!(peer = ?self.peer.addr, %user, "connection refused: {why}");
                return self.close(ConnectionCloseCode::CONNECTION_FORCED, &why);
            }
        }
        self.verdict = Some(self.ctx.judge(claim, &self.peer));
        self.phase = Phase::Authenticating;
    }

    /// The login was judged: go on to tune, or close as qpidd does.
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
                tracing::warn!(%peer, failures, "authentication failed: {why}");
                return self.close(
                    ConnectionCloseCode::CONNECTION_FORCED,
                    "Authentication failed",
                );
            }
        };
        let details = ConnectionDetails {
            properties: self.client_properties.clone(),
            mechanism: self.mechanism.clone(),
            federation_link: self.fed_link,
            live: self.live.clone(),
        };
        if let Err(why) = self
            .ctx
            .admit(self.id, &identity.stamp, &self.peer, details)
        {
            tracing::warn!(%peer, user = %identity.stamp, "connection refused: {why}");
            return self.close(ConnectionCloseCode::CONNECTION_FORCED, &why);
        }
        // Counted among the logged-in now (`max_connections`), no longer among the pending.
        self.pending = None;
        tracing::info!(%peer, user = %identity.full, tls = self.peer.tls, "connection opened");
        let cfg = &self.ctx.config;
        // A link from a configured federation peer passes messages on as their senders
        // made them: their user-id is neither checked nor stamped.
        self.peer_link = self.fed_link
            && (cfg
                .federation_peers
                .iter()
                .any(|p| identity.owns_user_id(p.as_bytes()))
                // The broker's own routes, over its in-process connector.
                || (self.peer.addr.is_none()
                    && identity.stamp == crate::federation::FEDERATION_IDENTITY));
        self.identity = Some(identity);
        self.control(
            0,
            Control::ConnectionTune(ConnectionTune {
                channel_max: Some(cfg.channel_max),
                max_frame_size: Some(cfg.max_frame_size),
                heartbeat_min: Some(0),
                heartbeat_max: Some(cfg.heartbeat_max),
            }),
        );
        self.phase = Phase::AwaitTuneOk;
    }

    fn session_control(&mut self, channel: u16, c: Control) {
        match c {
            Control::SessionAttach(a) => {
                let name = a.name.unwrap_or_default();
                if channel > self.channel_max {
                    return self.framing_error("channel above channel-max");
                }
                if let Some(existing) = self.sessions.get(&channel) {
                    if existing.name != name {
                        self.control(
                            channel,
                            Control::SessionDetached(SessionDetached {
                                name: Some(name),
                                code: Some(SessionDetachCode::TRANSPORT_BUSY),
                            }),
                        );
                        return;
                    }
                    // Re-attach of the same session on the same channel: start afresh.
                    self.end_session(channel);
                }
                let busy = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.name == name)
                    .map(|(c, _)| *c);
                if let Some(other) = busy {
                    if a.force {
                        self.end_session(other);
                    } else {
                        self.control(
                            channel,
                            Control::SessionDetached(SessionDetached {
                                name: Some(name),
                                code: Some(SessionDetachCode::SESSION_BUSY),
                            }),
                        );
                        return;
                    }
                }
                // Limits are for network peers; the broker's own agent (no address) is exempt.
                let over_limit =
                    self.peer.addr.is_some() && self.sessions.len() >= self.ctx.config.max_sessions;
                let id = self.ctx.broker.new_session(self.id);
                self.ctx
                    .broker
                    .describe_session(id, &String::from_utf8_lossy(&name), channel);
                self.sessions
                    .insert(channel, Session::new(id, name.clone()));
                self.control(
                    channel,
                    Control::SessionAttached(SessionAttached { name: Some(name) }),
                );
                self.control(
                    channel,
                    Control::SessionCommandPoint(SessionCommandPoint {
                        command_id: Some(SequenceNo(0)),
                        command_offset: Some(0),
                    }),
                );
                if over_limit {
                    let limit = self.ctx.config.max_sessions;
                    let e = Error::LimitExceeded(format!(
                        "a connection may have at most {limit} sessions"
                    ));
                    self.with_session(channel, |s, env| s.exception(env, &e, None, (0, 0)));
                    self.detach_failed(channel);
                    // Gone now, whether or not the peer answers the detach.
                    self.end_session(channel);
                }
            }
            Control::SessionDetach(d) => {
                self.end_session(channel);
                self.control(
                    channel,
                    Control::SessionDetached(SessionDetached {
                        name: d.name,
                        code: Some(SessionDetachCode::NORMAL),
                    }),
                );
            }
            Control::SessionDetached(_) => self.end_session(channel),
            Control::SessionRequestTimeout(_) => {
                // Sessions are not kept after detach, so the granted timeout is zero.
                self.control(
                    channel,
                    Control::SessionTimeout(SessionTimeout { timeout: Some(0) }),
                );
            }
            Control::SessionCommandPoint(p) => {
                if let Some(s) = self.sessions.get_mut(&channel) {
                    s.command_point(p.command_id.unwrap_or_default());
                }
            }
            Control::SessionCompleted(c) => {
                let commands = c.commands.unwrap_or_default();
                let broker = &self.ctx.broker;
                if let Some(s) = self.sessions.get_mut(&channel) {
                    s.peer_completed(broker, &commands);
                }
                if c.timely_reply {
                    self.control(
                        channel,
                        Control::SessionKnownCompleted(SessionKnownCompleted {
                            commands: Some(commands),
                        }),
                    );
                }
            }
            Control::SessionKnownCompleted(k) => {
                if let Some(s) = self.sessions.get_mut(&channel) {
                    s.known_completed(&k.commands.unwrap_or_default());
                }
            }
            Control::SessionFlush(f) => {
                let Some(s) = self.sessions.get(&channel) else {
                    return;
                };
                let done = s.completed_set().clone();
                if f.expected {
                    self.control(
                        channel,
                        Control::SessionExpected(SessionExpected {
                            commands: Some(SequenceSet::new()),
                            fragments: None,
                        }),
                    );
                }
                if f.confirmed {
                    self.control(
                        channel,
                        Control::SessionConfirmed(SessionConfirmed {
                            commands: Some(done),
                            fragments: None,
                        }),
                    );
                }
                if f.completed {
                    self.with_session(channel, |s, env| s.send_completed(env));
                }
            }
            Control::SessionExpected(_)
            | Control::SessionConfirmed(_)
            | Control::SessionTimeout(_)
            | Control::SessionGap(_)
            | Control::SessionAttached(_) => {}
            other => self.framing_error(&format!("unexpected {}", other.name())),
        }
    }
}

fn is_connection_control(c: &Control) -> bool {
    c.codes().0 == 1
}

//! The client side of a 0-10 connection without I/O: negotiation, heartbeats, sessions,
//! command ids and completion. The driver feeds it bytes and the time, and carries out what
//! it asks for: bytes to write, events to hand to waiters, a time to be woken.
//!
//! `W` is the driver's token for a waiting command (a oneshot sender there, a plain number
//! in the tests). The machine never touches a socket, a clock or a runtime.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use tracing::{debug, trace, warn};

use super::error::ClientError;
use super::message::{decode_properties, Delivery, Message};
use super::options::ConnectOptions;
use crate::wire::frame::{MAX_FRAME_SIZE, MIN_MAX_FRAME_SIZE};
use crate::wire::{
    Array, Assembler, Assembly, Command, ConnectionClose, ConnectionCloseCode, ConnectionCloseOk,
    ConnectionHeartbeat, ConnectionOpen, ConnectionSecureOk, ConnectionStart, ConnectionStartOk,
    ConnectionTune, ConnectionTuneOk, Content, Control, ExecutionSync, FieldTable, FrameCodec,
    FrameWriter, MessageAcceptMode, MessageAcquireMode, MessageTransfer, SequenceNo, SequenceSet,
    SessionAttach, SessionCommandPoint, SessionCompleted, SessionConfirmed, SessionDetach,
    SessionDetachCode, SessionDetached, SessionExpected, SessionHeader, SessionKnownCompleted,
    SessionTimeout, Struct32, PROTOCOL_HEADER,
};

/// Largest assembly (command plus message content) accepted from the broker.
const MAX_ASSEMBLY: usize = 256 << 20;
/// How long to wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connection settled on with the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// The SASL mechanism used.
    pub mechanism: String,
    /// Largest frame either side may send.
    pub max_frame_size: u16,
    /// Highest usable channel.
    pub channel_max: u16,
    /// Heartbeat interval in seconds; 0 for none.
    pub heartbeat: u16,
    /// The broker's `connection.start` server-properties (product, version,
    /// `qpid.federation_tag`).
    pub server_properties: FieldTable,
    /// The broker's `open-ok` known-hosts.
    pub known_hosts: Vec<String>,
}

/// What happened, for the driver to hand on.
#[derive(Debug)]
pub(crate) enum Event<W> {
    /// Negotiation finished; sessions may be attached.
    Opened(Negotiated),
    /// `session.attached` for the session on this channel.
    Attached(u16),
    /// A command with a token is complete (with its `execution.result`, if any) or failed.
    Done(W, Result<Option<Struct32>, ClientError>),
    /// A `message.transfer` from the broker.
    Delivery(u16, Box<Delivery>),
    /// An `execution.exception` broke the session on this channel.
    SessionFailed(u16, ClientError),
    /// The session on this channel is gone; `None` when it ended as asked.
    SessionEnded(u16, Option<ClientError>),
    /// The connection is over; `None` after a close this side asked for.
    Closed(Option<ClientError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    AwaitStart,
    AwaitTune,
    AwaitOpenOk,
    Open,
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Anonymous,
    External,
    ScramSha256,
}

impl Mechanism {
    const ALL: [Mechanism; 4] = [
        Mechanism::Plain,
        Mechanism::Anonymous,
        Mechanism::External,
        Mechanism::ScramSha256,
    ];

    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Anonymous => "ANONYMOUS",
            Mechanism::External => "EXTERNAL",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionPhase {
    Attaching,
    Attached,
    /// An exception arrived; waiting for the broker's `detach`.
    Broken,
    /// This side sent `detach`.
    Detaching,
}

struct Pending<W> {
    token: W,
    result: Option<Struct32>,
}

struct SessionState<W> {
    name: Bytes,
    phase: SessionPhase,
    error: Option<ClientError>,
    /// Id of the next command this side sends (command-point 0).
    next_out: SequenceNo,
    /// `next_out` without wrap-around, so pending commands sort in send order.
    next_out_abs: u64,
    pending: BTreeMap<u64, Pending<W>>,
    /// Id the broker's next command gets (from its `command-point`).
    next_in: SequenceNo,
    /// Broker commands completed here and not yet known-completed by the broker.
    completed_in: SequenceSet,
    completed_dirty: bool,
    /// Position of the last command sent with the sync bit: the broker reports completion
    /// of it and everything before it without being asked again.
    synced_upto: Option<u64>,
}

impl<W> SessionState<W> {
    fn new(name: Bytes) -> Self {
        Self {
            name,
            phase: SessionPhase::Attaching,
            error: None,
            next_out: SequenceNo(0),
            next_out_abs: 0,
            pending: BTreeMap::new(),
            next_in: SequenceNo(0),
            completed_in: SequenceSet::new(),
            completed_dirty: false,
            synced_upto: None,
        }
    }

    /// Position of an id this side sent, or `None` when it is not before `next_out`.
    fn abs(&self, id: SequenceNo) -> Option<u64> {
        if !id.before(self.next_out) {
            return None;
        }
        let back = u64::from(self.next_out.0.wrapping_sub(id.0));
        Some(self.next_out_abs.saturating_sub(back))
    }

    /// Takes the pending commands covered by the broker's `completed` set.
    fn take_completed(&mut self, set: &SequenceSet) -> Vec<Pending<W>> {
        let mut done = Vec::new();
        for &(lo, hi) in set.ranges() {
            let Some(lo) = self.abs(lo) else { continue };
            let hi = self
                .abs(hi)
                .unwrap_or_else(|| self.next_out_abs.saturating_sub(1));
            if hi < lo {
                continue;
            }
            let keys: Vec<u64> = self.pending.range(lo..=hi).map(|(k, _)| *k).collect();
            done.extend(keys.into_iter().filter_map(|k| self.pending.remove(&k)));
        }
        done
    }
}

/// The client connection state machine.
pub(crate) struct Machine<W> {
    opts: ConnectOptions,
    state: State,
    codec: FrameCodec,
    assembler: Assembler,
    writer: FrameWriter,
    out: BytesMut,
    events: VecDeque<Event<W>>,
    sessions: HashMap<u16, SessionState<W>>,
    /// Why the session last on a channel failed, until the channel is attached again: a
    /// request made after the broker detached it (a command pipelined behind the one
    /// that failed) gets that reason, not a bare "not attached".
    failed_sessions: HashMap<u16, ClientError>,
    mechanism: Option<Mechanism>,
    /// The SCRAM exchange in progress.
    scram: Option<rsasl::prelude::Session>,
    /// SCRAM checked the broker's signature: only then may negotiation go on.
    scram_verified: bool,
    negotiated: Option<Negotiated>,
    heartbeat: Option<Duration>,
    last_in: Instant,
    last_out: Instant,
    close_deadline: Option<Instant>,
}

impl<W> Machine<W> {
    /// A machine that starts by sending the protocol header.
    pub(crate) fn new(opts: ConnectOptions, now: Instant) -> Self {
        let mut out = BytesMut::new();
        out.extend_from_slice(&PROTOCOL_HEADER);
        Self {
            opts,
            state: State::AwaitHeader,
            codec: FrameCodec::new(MAX_FRAME_SIZE),
            assembler: Assembler::new(MAX_ASSEMBLY),
            // Until tune, frames may not exceed the spec minimum.
            writer: FrameWriter::new(MIN_MAX_FRAME_SIZE),
            out,
            events: VecDeque::new(),
            sessions: HashMap::new(),
            failed_sessions: HashMap::new(),
            mechanism: None,
            scram: None,
            scram_verified: false,
            negotiated: None,
            heartbeat: None,
            last_in: now,
            last_out: now,
            close_deadline: None,
        }
    }

    /// Whether the connection is over (nothing more will be read; write what is left).
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether negotiation finished and the connection is not closing.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Moves the bytes to send into `out`.
    pub(crate) fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) {
        if !self.out.is_empty() {
            self.last_out = now;
            if out.is_empty() {
                // The usual case: hand over the buffer instead of copying message bodies.
                std::mem::swap(out, &mut self.out);
            } else {
                out.extend_from_slice(&self.out);
                self.out.clear();
            }
        }
    }

    /// The next event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event<W>> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must run next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let hb = match self.state {
            State::Open | State::Closing => self
                .heartbeat
                .map(|hb| (self.last_out + hb / 2).min(self.last_in + hb * 2)),
            _ => None,
        };
        match (hb, self.close_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends a heartbeat when idle, gives up on a silent broker or a missing `close-ok`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            self.finish(Some(ClientError::Timeout(
                "waiting for connection.close-ok",
            )));
            return;
        }
        let Some(hb) = self.heartbeat else { return };
        if now >= self.last_in + hb * 2 {
            self.finish(Some(ClientError::HeartbeatTimeout(hb.as_secs() * 2)));
        } else if now >= self.last_out + hb / 2 {
            self.control(0, ConnectionHeartbeat {}.into());
        }
    }

    /// Takes bytes from the broker; consumes whole frames and leaves a partial one in `buf`.
    pub(crate) fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        if buf.is_empty() || self.state == State::Closed {
            return;
        }
        self.last_in = now;
        if let Err(e) = self.process_input(buf) {
            self.fail(e);
        }
        self.flush_completions();
    }

    /// The transport ended.
    pub(crate) fn handle_eof(&mut self) {
        if self.state == State::Closing {
            // Closing anyway; a broker that drops the socket instead of `close-ok` is fine.
            self.finish(None);
        } else if self.state != State::Closed {
            self.finish(Some(ClientError::Io(std::sync::Arc::new(
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "broker closed the socket",
                ),
            ))));
        }
    }

    /// Gives up on the connection for a reason found outside (an I/O error).
    pub(crate) fn abort(&mut self, error: ClientError) {
        if self.state != State::Closed {
            self.finish(Some(error));
        }
    }

    /// Starts a normal close (`connection.close` 200).
    pub(crate) fn close(&mut self, now: Instant) {
        match self.state {
            State::Open => {
                self.control(
                    0,
                    ConnectionClose {
                        reply_code: Some(ConnectionCloseCode::NORMAL),
                        reply_text: Some("OK".into()),
                    }
                    .into(),
                );
                self.state = State::Closing;
                self.close_deadline = Some(now + CLOSE_TIMEOUT);
            }
            State::Closing | State::Closed => {}
            _ => self.finish(None),
        }
    }

    /// Attaches a session named `name` on the lowest free channel and returns the channel.
    ///
    /// # Errors
    /// When the connection is not open or every channel is taken.
    pub(crate) fn attach(&mut self, name: Bytes) -> Result<u16, ClientError> {
        self.check_open()?;
        if name.len() > 0xffff {
            return Err(ClientError::InvalidArgument("session name too long".into()));
        }
        let max = self.negotiated.as_ref().map_or(0, |n| n.channel_max);
        let channel = (1..=max)
            .find(|c| !self.sessions.contains_key(c))
            .ok_or_else(|| ClientError::InvalidArgument("no free channel".into()))?;
        self.control(
            channel,
            SessionAttach {
                name: Some(name.clone()),
                force: false,
            }
            .into(),
        );
        // Our commands count from 0; said at once, as qpid.messaging does.
        self.control(
            channel,
            SessionCommandPoint {
                command_id: Some(SequenceNo(0)),
                command_offset: Some(0),
            }
            .into(),
        );
        self.failed_sessions.remove(&channel);
        self.sessions.insert(channel, SessionState::new(name));
        Ok(channel)
    }

    /// Detaches the session on `channel`; [`Event::SessionEnded`] follows.
    pub(crate) fn detach(&mut self, channel: u16) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            self.events.push_back(Event::SessionEnded(channel, None));
            return;
        };
        match s.phase {
            SessionPhase::Detaching => {}
            // After an exception the broker detaches by itself.
            SessionPhase::Broken => {}
            SessionPhase::Attaching | SessionPhase::Attached => {
                s.phase = SessionPhase::Detaching;
                let name = s.name.clone();
                self.control(channel, SessionDetach { name: Some(name) }.into());
            }
        }
    }

    /// Sends a command on the session at `channel`. With a token, [`Event::Done`] reports
    /// when the broker completed it (or why it never will). Returns the command's position
    /// in the session (for [`Self::ensure_synced`]), or `None` when it could not be sent.
    pub(crate) fn send_command(
        &mut self,
        channel: u16,
        command: &Command,
        sync: bool,
        token: Option<W>,
    ) -> Option<u64> {
        self.send(channel, command, None, sync, token)
    }

    /// Makes sure the broker will report completion of the command at `position`: unless a
    /// later synced command covers it already, sends `execution.sync` with the sync bit
    /// (which completes only after every earlier command did).
    pub(crate) fn ensure_synced(&mut self, channel: u16, position: u64) {
        let Some(s) = self.sessions.get(&channel) else {
            return;
        };
        if !s.pending.contains_key(&position) || s.synced_upto.is_some_and(|u| u >= position) {
            return;
        }
        self.send(
            channel,
            &Command::ExecutionSync(ExecutionSync {}),
            None,
            true,
            None,
        );
    }

    /// Sends `message.transfer` to `destination` (an exchange) with the message's content.
    ///
    /// Like the C++ client: accept-mode none (no `message.accept` wanted back),
    /// acquire-mode pre-acquired.
    pub(crate) fn send_transfer(
        &mut self,
        channel: u16,
        destination: String,
        message: &Message,
        sync: bool,
        token: Option<W>,
    ) -> Option<u64> {
        let command = Command::MessageTransfer(MessageTransfer {
            destination: Some(destination),
            accept_mode: Some(MessageAcceptMode::NONE),
            acquire_mode: Some(MessageAcquireMode::PRE_ACQUIRED),
        });
        let header = message.encode_header();
        self.send(
            channel,
            &command,
            // An empty body goes without a body segment.
            Some((
                &header,
                (!message.body.is_empty()).then_some(&message.body[..]),
            )),
            sync,
            token,
        )
    }

    fn send(
        &mut self,
        channel: u16,
        command: &Command,
        content: Option<(&[u8], Option<&[u8]>)>,
        sync: bool,
        token: Option<W>,
    ) -> Option<u64> {
        if let Err(e) = self.check_open().and_then(|()| self.check_session(channel)) {
            if let Some(t) = token {
                self.events.push_back(Event::Done(t, Err(e)));
            }
            return None;
        }
        let s = self.sessions.get_mut(&channel)?;
        let position = s.next_out_abs;
        if sync {
            s.synced_upto = Some(position);
        }
        if let Some(t) = token {
            s.pending.insert(
                position,
                Pending {
                    token: t,
                    result: None,
                },
            );
        }
        trace!(
            channel,
            id = s.next_out.0,
            command = command.name(),
            sync,
            "send"
        );
        s.next_out = s.next_out.next();
        s.next_out_abs += 1;
        self.writer
            .command(channel, sync, command, content, &mut self.out);
        Some(position)
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match self.state {
            State::Open => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }

    fn check_session(&self, channel: u16) -> Result<(), ClientError> {
        match self.sessions.get(&channel) {
            None => {
                Err(self
                    .failed_sessions
                    .get(&channel)
                    .cloned()
                    .unwrap_or(ClientError::Detached {
                        code: SessionDetachCode::NOT_ATTACHED.0,
                    }))
            }
            Some(s) => match (s.phase, &s.error) {
                (_, Some(e)) => Err(e.clone()),
                (SessionPhase::Detaching, None) => Err(ClientError::Detached {
                    code: SessionDetachCode::NORMAL.0,
                }),
                _ => Ok(()),
            },
        }
    }

    fn control(&mut self, channel: u16, control: Control) {
        self.writer.control(channel, &control, &mut self.out);
    }

    fn process_input(&mut self, buf: &mut BytesMut) -> Result<(), ClientError> {
        if self.state == State::AwaitHeader {
            if buf.len() < PROTOCOL_HEADER.len() {
                return Ok(());
            }
            let header = buf.split_to(PROTOCOL_HEADER.len());
            if header[..] != PROTOCOL_HEADER {
                if &header[..4] == b"AMQP" {
                    return Err(ClientError::Version {
                        major: header[6],
                        minor: header[7],
                    });
                }
                return Err(ClientError::Protocol("peer is not an AMQP broker".into()));
            }
            self.state = State::AwaitStart;
        }
        while self.state != State::Closed {
            let Some(frame) = self.codec.decode(buf)? else {
                break;
            };
            if let Some((channel, assembly)) = self.assembler.push(frame)? {
                self.handle_assembly(channel, assembly)?;
            }
        }
        Ok(())
    }

    fn handle_assembly(&mut self, channel: u16, assembly: Assembly) -> Result<(), ClientError> {
        match assembly {
            Assembly::Control(control) => {
                trace!(channel, control = control.name(), "received");
                match control {
                    Control::ConnectionStart(c) => self.on_start(c),
                    Control::ConnectionSecure(s) => self.on_secure(s.challenge.as_deref()),
                    Control::ConnectionTune(t) => self.on_tune(&t),
                    Control::ConnectionOpenOk(o) => {
                        self.expect(State::AwaitOpenOk, "connection.open-ok")?;
                        self.on_open_ok(o.known_hosts);
                        Ok(())
                    }
                    Control::ConnectionRedirect(r) => Err(ClientError::Protocol(format!(
                        "broker redirects to {} (not supported)",
                        r.host.unwrap_or_default()
                    ))),
                    Control::ConnectionHeartbeat(_) => Ok(()),
                    Control::ConnectionClose(c) => {
                        self.control(0, ConnectionCloseOk {}.into());
                        let code = c.reply_code.map_or(200, |c| c.0);
                        let text = c.reply_text.unwrap_or_default();
                        let error = if matches!(self.state, State::AwaitTune | State::AwaitStart) {
                            ClientError::Auth(format!("{code} {text}"))
                        } else {
                            ClientError::Connection { code, text }
                        };
                        self.finish(Some(error));
                        Ok(())
                    }
                    Control::ConnectionCloseOk(_) => {
                        self.expect(State::Closing, "connection.close-ok")?;
                        self.finish(None);
                        Ok(())
                    }
                    Control::ConnectionStartOk(_)
                    | Control::ConnectionSecureOk(_)
                    | Control::ConnectionTuneOk(_)
                    | Control::ConnectionOpen(_) => Err(ClientError::Protocol(format!(
                        "{} is sent by clients, not brokers",
                        control.name()
                    ))),
                    other => self.session_control(channel, other),
                }
            }
            Assembly::Command {
                header,
                command,
                content,
            } => self.session_command(channel, header, command, content),
        }
    }

    fn expect(&self, state: State, what: &str) -> Result<(), ClientError> {
        if self.state == state {
            Ok(())
        } else {
            Err(ClientError::Protocol(format!("unexpected {what}")))
        }
    }

    fn on_start(&mut self, start: ConnectionStart) -> Result<(), ClientError> {
        self.expect(State::AwaitStart, "connection.start")?;
        let offered: Vec<String> = start
            .mechanisms
            .as_ref()
            .map(|a| a.strings().map(str::to_string).collect())
            .unwrap_or_default();
        let has = |m: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(m));
        let user = self.opts.username.is_some();
        let has_cert = self.opts.tls.as_ref().is_some_and(|t| t.cert.is_some());
        let mechanism = if let Some(wanted) = self.opts.mechanism.as_deref() {
            let m = Mechanism::ALL
                .into_iter()
                .find(|m| m.name().eq_ignore_ascii_case(wanted))
                .ok_or_else(|| ClientError::Auth(format!("mechanism {wanted} is not supported")))?;
            if !has(m.name()) {
                return Err(ClientError::Auth(format!(
                    "broker does not offer {wanted}; it offers {offered:?}"
                )));
            }
            m
        } else if user && has("PLAIN") {
            Mechanism::Plain
        } else if user && has("SCRAM-SHA-256") {
            Mechanism::ScramSha256
        } else if has_cert && has("EXTERNAL") {
            Mechanism::External
        } else if has("ANONYMOUS") {
            Mechanism::Anonymous
        } else if has("PLAIN") {
            return Err(ClientError::Auth(
                "broker requires PLAIN: give a user name and password".into(),
            ));
        } else {
            return Err(ClientError::Auth(format!(
                "no supported mechanism among {offered:?}"
            )));
        };
        self.mechanism = Some(mechanism);
        self.negotiated = Some(Negotiated {
            mechanism: mechanism.name().into(),
            max_frame_size: 0,
            channel_max: 0,
            heartbeat: 0,
            server_properties: start.server_properties.unwrap_or_default(),
            known_hosts: Vec::new(),
        });
        let response = if mechanism == Mechanism::ScramSha256 {
            self.scram_start()?
        } else {
            self.sasl_response(mechanism)
        };
        self.control(
            0,
            ConnectionStartOk {
                client_properties: Some(self.opts.client_properties.clone()),
                mechanism: Some(mechanism.name().into()),
                response: Some(response),
                locale: Some("en_US".into()),
            }
            .into(),
        );
        self.state = State::AwaitTune;
        Ok(())
    }

    fn sasl_response(&self, mechanism: Mechanism) -> Bytes {
        match mechanism {
            Mechanism::Plain => {
                // authzid NUL authcid NUL password, authzid left empty.
                let mut r = Vec::new();
                r.push(0);
                r.extend_from_slice(self.opts.username.as_deref().unwrap_or("").as_bytes());
                r.push(0);
                r.extend_from_slice(self.opts.password.as_deref().unwrap_or("").as_bytes());
                Bytes::from(r)
            }
            Mechanism::Anonymous => Bytes::from_static(b"anonymous"),
            // No authorization id: act as the certificate's user.
            Mechanism::External | Mechanism::ScramSha256 => Bytes::new(),
        }
    }

    /// Starts SCRAM-SHA-256 and returns the client-first message.
    fn scram_start(&mut self) -> Result<Bytes, ClientError> {
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
        let auth = |e: String| ClientError::Auth(e);
        let config = SASLConfig::with_credentials(
            None,
            self.opts.username.clone().unwrap_or_default(),
            self.opts.password.clone().unwrap_or_default(),
        )
        .map_err(|e| auth(e.to_string()))?;
        let name = Mechname::parse(b"SCRAM-SHA-256").map_err(|e| auth(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| auth(e.to_string()))?;
        let mut out = Vec::new();
        session
            .step(None, &mut out)
            .map_err(|e| auth(e.to_string()))?;
        self.scram = Some(session);
        Ok(Bytes::from(out))
    }

    fn on_secure(&mut self, challenge: Option<&[u8]>) -> Result<(), ClientError> {
        self.expect(State::AwaitTune, "connection.secure")?;
        let response = match (self.mechanism, self.scram.as_mut()) {
            (Some(Mechanism::ScramSha256), Some(session)) => {
                let mut out = Vec::new();
                match session.step(challenge, &mut out) {
                    Ok(state) => {
                        self.scram_verified = state.is_finished();
                        Bytes::from(out)
                    }
                    // A bad server signature: the broker does not know our password.
                    Err(e) => return Err(ClientError::Auth(format!("SCRAM: {e}"))),
                }
            }
            // The exchange is over (the server's final message came as a challenge).
            (Some(Mechanism::ScramSha256), None) => Bytes::new(),
            // Single-step mechanisms: a challenge can only ask for the response again.
            (m, _) => m.map(|m| self.sasl_response(m)).unwrap_or_default(),
        };
        self.control(
            0,
            ConnectionSecureOk {
                response: Some(response),
            }
            .into(),
        );
        Ok(())
    }

    fn on_tune(&mut self, tune: &ConnectionTune) -> Result<(), ClientError> {
        self.expect(State::AwaitTune, "connection.tune")?;
        if self.mechanism == Some(Mechanism::ScramSha256) && !self.scram_verified {
            // A broker that does not know our password cannot prove it; it must not be
            // able to skip the proof either.
            return Err(ClientError::Auth(
                "the broker did not prove it knows the SCRAM password".into(),
            ));
        }
        let channel_max = tune
            .channel_max
            .unwrap_or(u16::MAX)
            .min(self.opts.channel_max)
            .max(1);
        let frame = usize::from(tune.max_frame_size.unwrap_or(u16::MAX))
            .min(usize::from(self.opts.max_frame_size))
            .clamp(MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE);
        let max_frame_size = u16::try_from(frame).unwrap_or(u16::MAX);
        let heartbeat = match self.opts.heartbeat {
            Some(hb) if hb > 0 => {
                let min = tune.heartbeat_min.unwrap_or(0);
                let max = tune.heartbeat_max.unwrap_or(u16::MAX);
                if max == 0 {
                    0
                } else {
                    hb.clamp(min.min(max), max)
                }
            }
            _ => 0,
        };
        self.control(
            0,
            ConnectionTuneOk {
                channel_max: Some(channel_max),
                max_frame_size: Some(max_frame_size),
                heartbeat: Some(heartbeat),
            }
            .into(),
        );
        self.codec.set_max_frame_size(frame);
        self.writer = FrameWriter::new(frame);
        self.heartbeat = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
        if let Some(n) = self.negotiated.as_mut() {
            n.max_frame_size = max_frame_size;
            n.channel_max = channel_max;
            n.heartbeat = heartbeat;
        }
        self.control(
            0,
            ConnectionOpen {
                virtual_host: Some(String::new()),
                capabilities: None,
                insist: false,
            }
            .into(),
        );
        self.state = State::AwaitOpenOk;
        Ok(())
    }

    fn on_open_ok(&mut self, known_hosts: Option<Array>) {
        self.state = State::Open;
        if let Some(n) = self.negotiated.as_mut() {
            n.known_hosts = known_hosts
                .map(|a| a.strings().map(str::to_string).collect())
                .unwrap_or_default();
            self.events.push_back(Event::Opened(n.clone()));
        }
    }

    fn session_control(&mut self, channel: u16, control: Control) -> Result<(), ClientError> {
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(ClientError::Protocol(format!(
                "{} before the connection is open",
                control.name()
            )));
        }
        let Some(s) = self.sessions.get_mut(&channel) else {
            // Late controls for a session already forgotten (e.g. a detached crossing our
            // detach) are harmless.
            debug!(channel, control = control.name(), "control for no session");
            return Ok(());
        };
        match control {
            Control::SessionAttached(_) => {
                if s.phase == SessionPhase::Attaching {
                    s.phase = SessionPhase::Attached;
                    self.events.push_back(Event::Attached(channel));
                }
            }
            Control::SessionDetached(d) => {
                let code = d.code.map_or(0, |c| c.0);
                let error = match (s.phase, code) {
                    (SessionPhase::Detaching, 0) => s.error.clone(),
                    _ => Some(s.error.clone().unwrap_or(ClientError::Detached { code })),
                };
                self.end_session(channel, error);
            }
            Control::SessionDetach(d) => {
                // The broker ends the session: after an exception, or crossing our detach.
                let error = match s.phase {
                    SessionPhase::Detaching => s.error.clone(),
                    _ => Some(s.error.clone().unwrap_or(ClientError::Detached {
                        code: SessionDetachCode::NORMAL.0,
                    })),
                };
                let name = d.name.unwrap_or_else(|| s.name.clone());
                self.control(
                    channel,
                    SessionDetached {
                        name: Some(name),
                        code: Some(SessionDetachCode::NORMAL),
                    }
                    .into(),
                );
                self.end_session(channel, error);
            }
            Control::SessionCommandPoint(cp) => {
                s.next_in = cp.command_id.unwrap_or_default();
            }
            Control::SessionCompleted(c) => {
                let commands = c.commands.unwrap_or_default();
                for p in s.take_completed(&commands) {
                    self.events.push_back(Event::Done(p.token, Ok(p.result)));
                }
                if c.timely_reply {
                    self.control(
                        channel,
                        SessionKnownCompleted {
                            commands: Some(commands),
                        }
                        .into(),
                    );
                }
            }
            Control::SessionKnownCompleted(k) => {
                if let Some(set) = k.commands {
                    s.completed_in.remove_set(&set);
                }
            }
            Control::SessionFlush(f) => {
                let next_in = s.next_in;
                let completed = s.completed_in.clone();
                if f.expected {
                    self.control(
                        channel,
                        SessionExpected {
                            commands: Some(SequenceSet::from_range(next_in, next_in)),
                            fragments: None,
                        }
                        .into(),
                    );
                }
                if f.confirmed {
                    self.control(
                        channel,
                        SessionConfirmed {
                            commands: Some(completed.clone()),
                            fragments: None,
                        }
                        .into(),
                    );
                }
                if f.completed {
                    self.control(
                        channel,
                        SessionCompleted {
                            commands: Some(completed),
                            timely_reply: false,
                        }
                        .into(),
                    );
                    if let Some(s) = self.sessions.get_mut(&channel) {
                        s.completed_dirty = false;
                    }
                }
            }
            Control::SessionRequestTimeout(_) => {
                // Nothing is kept for resuming, so the granted timeout is 0.
                self.control(channel, SessionTimeout { timeout: Some(0) }.into());
            }
            Control::SessionTimeout(_)
            | Control::SessionExpected(_)
            | Control::SessionConfirmed(_)
            | Control::SessionGap(_) => {}
            Control::SessionAttach(_) => {
                return Err(ClientError::Protocol(
                    "broker sent session.attach to a client".into(),
                ))
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {} on a session",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn session_command(
        &mut self,
        channel: u16,
        header: SessionHeader,
        command: Command,
        content: Option<Content>,
    ) -> Result<(), ClientError> {
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(ClientError::Protocol(format!(
                "{} before the connection is open",
                command.name()
            )));
        }
        let Some(s) = self.sessions.get_mut(&channel) else {
            return Err(ClientError::Protocol(format!(
                "{} on channel {channel} with no session",
                command.name()
            )));
        };
        let id = s.next_in;
        s.next_in = id.next();
        trace!(channel, id = id.0, command = command.name(), "received");
        match command {
            Command::ExecutionResult(r) => {
                if let (Some(cmd), Some(value)) = (r.command_id, r.value) {
                    if let Some(p) = s.abs(cmd).and_then(|a| s.pending.get_mut(&a)) {
                        p.result = Some(value);
                    }
                }
            }
            Command::ExecutionException(e) => {
                let code = e.error_code.map_or(0, |c| c.0);
                let error = ClientError::Session {
                    code,
                    text: e.description.unwrap_or_default(),
                };
                debug!(channel, code, command = ?e.command_id, "execution.exception");
                s.phase = SessionPhase::Broken;
                s.error = Some(error.clone());
                let pending = std::mem::take(&mut s.pending);
                for p in pending.into_values() {
                    self.events
                        .push_back(Event::Done(p.token, Err(error.clone())));
                }
                self.events.push_back(Event::SessionFailed(channel, error));
            }
            Command::MessageTransfer(t) => {
                let (delivery_properties, message_properties, body) =
                    decode_properties(content.as_ref())?;
                self.events.push_back(Event::Delivery(
                    channel,
                    Box::new(Delivery {
                        id,
                        destination: t.destination.unwrap_or_default(),
                        accept_mode: t.accept_mode.unwrap_or(MessageAcceptMode::EXPLICIT),
                        acquire_mode: t.acquire_mode.unwrap_or(MessageAcquireMode::PRE_ACQUIRED),
                        delivery_properties,
                        message_properties,
                        body,
                    }),
                ));
            }
            Command::ExecutionSync(_) => {}
            other => {
                // Brokers send clients only transfers, results, exceptions (and sync);
                // anything else is completed and otherwise ignored.
                warn!(
                    channel,
                    command = other.name(),
                    "ignoring unexpected command"
                );
            }
        }
        if let Some(s) = self.sessions.get_mut(&channel) {
            s.completed_in.add(id);
            s.completed_dirty = true;
        }
        if header.sync {
            self.send_completed(channel);
        }
        Ok(())
    }

    /// Reports every broker command completed since the last report, one `completed` per
    /// session per batch of input.
    fn flush_completions(&mut self) {
        if !matches!(self.state, State::Open | State::Closing) {
            return;
        }
        let dirty: Vec<u16> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.completed_dirty)
            .map(|(c, _)| *c)
            .collect();
        for channel in dirty {
            self.send_completed(channel);
        }
    }

    fn send_completed(&mut self, channel: u16) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        s.completed_dirty = false;
        let commands = s.completed_in.clone();
        self.control(
            channel,
            SessionCompleted {
                commands: Some(commands),
                timely_reply: false,
            }
            .into(),
        );
    }

    fn end_session(&mut self, channel: u16, error: Option<ClientError>) {
        let Some(s) = self.sessions.remove(&channel) else {
            return;
        };
        self.assembler.reset_channel(channel);
        let fail = error.clone().unwrap_or(ClientError::Detached { code: 0 });
        if let Some(e) = &error {
            self.failed_sessions.insert(channel, e.clone());
        }
        for p in s.pending.into_values() {
            self.events
                .push_back(Event::Done(p.token, Err(fail.clone())));
        }
        self.events.push_back(Event::SessionEnded(channel, error));
    }

    /// A fatal error found in the input: close with framing-error (qpid does the same for
    /// anything it cannot decode) and end.
    fn fail(&mut self, error: ClientError) {
        if self.state == State::Closed {
            return;
        }
        warn!(%error, "closing connection");
        if let ClientError::Protocol(text) = &error {
            if self.state != State::AwaitHeader {
                self.control(
                    0,
                    ConnectionClose {
                        reply_code: Some(ConnectionCloseCode::FRAMING_ERROR),
                        reply_text: Some(text.chars().take(255).collect()),
                    }
                    .into(),
                );
            }
        }
        self.finish(Some(error));
    }

    fn finish(&mut self, error: Option<ClientError>) {
        self.state = State::Closed;
        self.close_deadline = None;
        let fail = error.clone().unwrap_or(ClientError::Closed);
        let mut channels: Vec<u16> = self.sessions.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            if let Some(s) = self.sessions.remove(&channel) {
                for p in s.pending.into_values() {
                    self.events
                        .push_back(Event::Done(p.token, Err(fail.clone())));
                }
                self.events
                    .push_back(Event::SessionEnded(channel, Some(fail.clone())));
            }
        }
        self.events.push_back(Event::Closed(error));
    }
}

#[cfg(test)]
mod tests;

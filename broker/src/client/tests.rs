//! The async handles against a small scripted broker on an in-memory stream: enough of a
//! broker (queues, credit, results, exceptions) to drive every client path without a server.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::*;
use crate::wire::{
    Array, Assembler, Assembly, Command, ConnectionCloseOk, ConnectionOpenOk, ConnectionStart,
    ConnectionTune, Control, DeliveryProperties, ExecutionErrorCode, ExecutionException,
    ExecutionResult, FrameCodec, FrameWriter, MessageAcceptMode, MessageAcquireMode,
    MessageCreditUnit, MessageTransfer, QueueDeclare, QueueQueryResult, SequenceNo, SequenceSet,
    SessionAttached, SessionCommandPoint, SessionCompleted, SessionDetach, SessionDetached,
    PROTOCOL_HEADER,
};

/// What the fake broker saw, for assertions.
#[derive(Debug, Default)]
struct Seen {
    accepted: SequenceSet,
    flows: Vec<u32>,
    syncs: u32,
    closed: bool,
}

struct Sub {
    queue: String,
    credit: u32,
    accept_mode: MessageAcceptMode,
}

struct FakeBroker {
    writer: FrameWriter,
    out: BytesMut,
    queues: HashMap<String, VecDeque<(Bytes, Bytes)>>,
    subs: HashMap<(u16, String), Sub>,
    next_out: HashMap<u16, SequenceNo>,
    next_in: HashMap<u16, SequenceNo>,
    completed: HashMap<u16, SequenceSet>,
    broken: HashMap<u16, bool>,
    seen: Seen,
}

impl FakeBroker {
    fn control(&mut self, ch: u16, c: Control) {
        self.writer.control(ch, &c, &mut self.out);
    }

    fn command(&mut self, ch: u16, c: Command, content: Option<(&[u8], Option<&[u8]>)>) {
        let id = self.next_out.entry(ch).or_default();
        *id = id.next();
        self.writer.command(ch, false, &c, content, &mut self.out);
    }

    fn handle(&mut self, ch: u16, a: Assembly) {
        match a {
            Assembly::Control(c) => match c {
                Control::ConnectionStartOk(_) => self.control(
                    0,
                    ConnectionTune {
                        channel_max: Some(0xfffe),
                        max_frame_size: Some(0xffff),
                        heartbeat_min: Some(0),
                        heartbeat_max: Some(120),
                    }
                    .into(),
                ),
                Control::ConnectionOpen(_) => self.control(
                    0,
                    ConnectionOpenOk {
                        known_hosts: Some(Array::str16(Vec::<String>::new())),
                    }
                    .into(),
                ),
                Control::ConnectionClose(_) => {
                    self.seen.closed = true;
                    self.control(0, ConnectionCloseOk {}.into());
                }
                Control::SessionAttach(a) => {
                    self.control(ch, SessionAttached { name: a.name }.into());
                    self.control(
                        ch,
                        SessionCommandPoint {
                            command_id: Some(SequenceNo(0)),
                            command_offset: Some(0),
                        }
                        .into(),
                    );
                    self.next_out.insert(ch, SequenceNo(0));
                    self.next_in.insert(ch, SequenceNo(0));
                    self.completed.insert(ch, SequenceSet::new());
                    self.broken.insert(ch, false);
                }
                Control::SessionDetach(d) => {
                    self.control(
                        ch,
                        SessionDetached {
                            name: d.name,
                            code: None,
                        }
                        .into(),
                    );
                    self.subs.retain(|(c, _), _| *c != ch);
                }
                _ => {}
            },
            Assembly::Command {
                header,
                command,
                content,
            } => {
                let id = self.next_in.entry(ch).or_default();
                let this = *id;
                *id = id.next();
                if self.broken.get(&ch).copied().unwrap_or(false) {
                    return;
                }
                self.execute(ch, this, command, content);
                if self.broken.get(&ch).copied().unwrap_or(false) {
                    return;
                }
                let set = self.completed.entry(ch).or_default();
                set.add(this);
                if header.sync {
                    let commands = Some(set.clone());
                    self.control(
                        ch,
                        SessionCompleted {
                            commands,
                            timely_reply: false,
                        }
                        .into(),
                    );
                }
            }
        }
        self.deliver();
    }

    fn execute(
        &mut self,
        ch: u16,
        id: SequenceNo,
        command: Command,
        content: Option<crate::wire::Content>,
    ) {
        match command {
            Command::QueueDeclare(d) => {
                let name = d.queue.unwrap_or_default();
                if d.passive && !self.queues.contains_key(&name) {
                    self.command(
                        ch,
                        ExecutionException {
                            error_code: Some(ExecutionErrorCode::NOT_FOUND),
                            command_id: Some(id),
                            description: Some(format!("not-found: Queue not found: {name}")),
                            ..Default::default()
                        }
                        .into(),
                        None,
                    );
                    self.broken.insert(ch, true);
                    self.control(ch, SessionDetach { name: None }.into());
                    return;
                }
                self.queues.entry(name).or_default();
            }
            Command::QueueQuery(q) => {
                let name = q.queue.unwrap_or_default();
                let result = match self.queues.get(&name) {
                    Some(msgs) => QueueQueryResult {
                        queue: Some(name.clone()),
                        message_count: Some(u32::try_from(msgs.len()).unwrap_or(0)),
                        subscriber_count: Some(0),
                        ..Default::default()
                    },
                    None => QueueQueryResult::default(),
                };
                self.command(
                    ch,
                    ExecutionResult {
                        command_id: Some(id),
                        value: Some(result.to_struct32()),
                    }
                    .into(),
                    None,
                );
            }
            Command::MessageTransfer(_) => {
                let c = content.unwrap_or_default();
                let mut key = String::new();
                for s in c.header_structs().unwrap_or_default() {
                    if s.code == DeliveryProperties::CODE {
                        if let Ok(dp) = DeliveryProperties::from_struct32(&s) {
                            key = dp.routing_key.unwrap_or_default();
                        }
                    }
                }
                if let Some(q) = self.queues.get_mut(&key) {
                    q.push_back((c.header, c.body));
                }
            }
            Command::MessageSubscribe(s) => {
                self.subs.insert(
                    (ch, s.destination.unwrap_or_default()),
                    Sub {
                        queue: s.queue.unwrap_or_default(),
                        credit: 0,
                        accept_mode: s.accept_mode.unwrap_or_default(),
                    },
                );
            }
            Command::MessageFlow(f) if f.unit == Some(MessageCreditUnit::MESSAGE) => {
                let v = f.value.unwrap_or(0);
                self.seen.flows.push(v);
                if let Some(s) = self.subs.get_mut(&(ch, f.destination.unwrap_or_default())) {
                    s.credit = s.credit.saturating_add(v);
                }
            }
            Command::MessageAccept(a) => {
                self.seen.accepted.add_set(&a.transfers.unwrap_or_default());
            }
            Command::ExecutionSync(_) => self.seen.syncs += 1,
            Command::MessageCancel(c) => {
                self.subs.remove(&(ch, c.destination.unwrap_or_default()));
            }
            _ => {}
        }
    }

    fn deliver(&mut self) {
        let keys: Vec<(u16, String)> = self.subs.keys().cloned().collect();
        for key in keys {
            while let Some(sub) = self.subs.get_mut(&key) {
                if sub.credit == 0 {
                    break;
                }
                let accept_mode = sub.accept_mode;
                let Some((header, body)) = self
                    .queues
                    .get_mut(&sub.queue)
                    .and_then(VecDeque::pop_front)
                else {
                    break;
                };
                sub.credit -= 1;
                let t = MessageTransfer {
                    destination: Some(key.1.clone()),
                    accept_mode: Some(accept_mode),
                    acquire_mode: Some(MessageAcquireMode::PRE_ACQUIRED),
                };
                self.command(key.0, t.into(), Some((&header, Some(&body))));
            }
        }
    }
}

/// Runs the fake broker on one end of a duplex pipe until the client closes.
async fn fake_broker(mut io: DuplexStream, seen: mpsc::UnboundedSender<Seen>) {
    let mut b = FakeBroker {
        writer: FrameWriter::new(0xffff),
        out: BytesMut::new(),
        queues: HashMap::new(),
        subs: HashMap::new(),
        next_out: HashMap::new(),
        next_in: HashMap::new(),
        completed: HashMap::new(),
        broken: HashMap::new(),
        seen: Seen::default(),
    };
    let mut header = [0u8; 8];
    if io.read_exact(&mut header).await.is_err() || header != PROTOCOL_HEADER {
        return;
    }
    b.out.extend_from_slice(&PROTOCOL_HEADER);
    b.control(
        0,
        ConnectionStart {
            server_properties: None,
            mechanisms: Some(Array::str16(["ANONYMOUS"])),
            locales: Some(Array::str16(["en_US"])),
        }
        .into(),
    );
    let mut codec = FrameCodec::new(0xffff);
    let mut asm = Assembler::new(1 << 30);
    let mut buf = BytesMut::new();
    loop {
        if !b.out.is_empty() {
            let out = b.out.split();
            if io.write_all(&out).await.is_err() {
                break;
            }
        }
        if b.seen.closed {
            break;
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            if let Ok(Some((ch, a))) = asm.push(frame) {
                b.handle(ch, a);
            }
        }
    }
    let _ = seen.send(b.seen);
}

async fn connect() -> (Connection, mpsc::UnboundedReceiver<Seen>) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(fake_broker(server, tx));
    let conn = Connection::open_on(client, ConnectOptions::new("fake", 0))
        .await
        .expect("open");
    (conn, rx)
}

fn declare(name: &str) -> QueueDeclare {
    QueueDeclare {
        queue: Some(name.into()),
        ..QueueDeclare::default()
    }
}

#[tokio::test]
async fn send_subscribe_receive_with_capacity() {
    let (conn, mut seen) = connect().await;
    assert_eq!(conn.negotiated().mechanism, "ANONYMOUS");
    let s = conn.session("s1").await.expect("session");
    s.declare_queue(declare("q")).await.expect("declare");
    // A pipelined batch: only the last transfer asks for completion.
    let mut pending = Vec::new();
    for i in 0..9 {
        let m = Message::new(format!("m{i}")).with_routing_key("q");
        pending.push(s.transfer("", m).await.expect("transfer"));
    }
    let last = Message::new("m9").with_routing_key("q");
    pending.push(s.transfer_sync("", last).await.expect("transfer"));
    for c in pending {
        c.await.expect("completed");
    }
    let q = s.query_queue("q").await.expect("query");
    assert_eq!((q.queue.as_deref(), q.message_count), (Some("q"), Some(10)));
    let missing = s.query_queue("nope").await.expect("query");
    assert!(missing.queue.is_none());

    let opts = SubscribeOptions {
        capacity: Some(4),
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe("q", opts).await.expect("subscribe");
    let mut ids = SequenceSet::new();
    for i in 0..10 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("credit was re-granted")
            .expect("delivery")
            .expect("not ended");
        assert_eq!(&d.body[..], format!("m{i}").as_bytes());
        assert_eq!(d.delivery_properties.routing_key.as_deref(), Some("q"));
        ids.add(d.id);
    }
    s.accept(ids.clone())
        .await
        .expect("accept")
        .await
        .expect("accepted");
    sub.cancel().await.expect("cancel");
    s.clone().close().await.expect("detach");
    conn.close().await.expect("close");
    let seen = seen.recv().await.expect("broker report");
    assert_eq!(seen.accepted, ids);
    // capacity 4 up front, then 2 at a time as messages were handed out.
    assert_eq!(seen.flows[0], 4);
    assert!(seen.flows[1..].iter().all(|&f| f == 2), "{:?}", seen.flows);
    assert!(seen.closed);
}

#[tokio::test]
async fn awaiting_unsynced_commands_costs_one_sync_per_batch() {
    let (conn, mut seen) = connect().await;
    let s = conn.session("s1").await.expect("session");
    s.declare_queue(declare("q")).await.expect("declare");
    let mut batch = Vec::new();
    for i in 0..20 {
        let m = Message::new(format!("m{i}")).with_routing_key("q");
        batch.push(s.transfer("", m).await.expect("transfer"));
    }
    // In order: the first await asks for one execution.sync, which covers the rest.
    for c in batch {
        c.await.expect("completed");
    }
    // Out of order: awaiting the newest first covers the older ones too.
    let mut batch = Vec::new();
    for i in 0..5 {
        let m = Message::new(format!("n{i}")).with_routing_key("q");
        batch.push(s.transfer("", m).await.expect("transfer"));
    }
    batch.pop().expect("last").await.expect("completed");
    for c in batch {
        c.await.expect("completed");
    }
    // Dropped completions ask for nothing.
    drop(
        s.transfer("", Message::new("x").with_routing_key("q"))
            .await,
    );
    let q = s.query_queue("q").await.expect("query");
    assert_eq!(q.message_count, Some(26));
    conn.close().await.expect("close");
    let seen = seen.recv().await.expect("report");
    assert_eq!(seen.syncs, 2);
}

#[tokio::test]
async fn session_exception_fails_the_call_and_later_ones() {
    let (conn, _seen) = connect().await;
    let s = conn.session("s1").await.expect("session");
    let passive = QueueDeclare {
        passive: true,
        ..declare("missing")
    };
    let err = s.declare_queue(passive).await.expect_err("404");
    assert_eq!(err.session_code(), Some(404), "{err}");
    assert!(err.to_string().contains("not-found"), "{err}");
    let again = s.sync().await.expect_err("session is gone");
    assert!(
        matches!(
            again,
            ClientError::Session { code: 404, .. } | ClientError::Detached { .. }
        ),
        "{again}"
    );
    // The connection is fine: a new session works.
    let s2 = conn.session("s2").await.expect("session");
    s2.sync().await.expect("sync");
    let watcher = {
        let s2 = s2.clone();
        tokio::spawn(async move { s2.sync().await })
    };
    watcher
        .await
        .expect("task")
        .expect("sync from another task");
    conn.close().await.expect("close");
    // Handles outliving the connection fail with the reason.
    assert!(matches!(s2.sync().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (conn, mut seen) = connect().await;
    let s = conn.session("s1").await.expect("session");
    s.sync().await.expect("sync");
    drop(s);
    assert!(!conn.is_closed());
    drop(conn);
    let seen = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("broker finished")
        .expect("report");
    assert!(seen.closed);
}

#[tokio::test]
async fn names_too_long_are_refused_locally() {
    let (conn, _seen) = connect().await;
    let s = conn.session("s1").await.expect("session");
    let long = "x".repeat(256);
    let err = s.declare_queue(declare(&long)).await.expect_err("too long");
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    s.sync().await.expect("session still fine");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn negotiation_against_a_silent_peer_times_out() {
    let (client, _server) = tokio::io::duplex(1024);
    let mut opts = ConnectOptions::new("fake", 0);
    opts.connect_timeout = Duration::from_millis(100);
    let err = Connection::open_on(client, opts)
        .await
        .err()
        .expect("timeout");
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
}

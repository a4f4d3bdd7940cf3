//! The machine against real broker bytes (qpidd captures) and synthetic frames.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{Event, Machine};
use crate::client::error::ClientError;
use crate::client::message::Message;
use crate::client::options::ConnectOptions;
use crate::wire::{
    Array, Assembler, Assembly, Command, ConnectionClose, ConnectionCloseCode, ConnectionStart,
    ConnectionTune, Control, ExchangeBoundResult, ExecutionSync, FrameCodec, FrameWriter,
    QueueDeclare, SequenceNo, SequenceSet, SessionCompleted, SessionFlush, PROTOCOL_HEADER,
};

const CPP_RECEIVE: &str = include_str!("../../../tests/data/captures/cpp-receive.txt");
const ERRORS: &str = include_str!("../../../tests/data/captures/errors.txt");
const HEARTBEAT: &str = include_str!("../../../tests/data/captures/heartbeat.txt");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The broker's side of a capture: (label, bytes) per line.
fn broker_lines(text: &str) -> Vec<(String, Vec<u8>)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("S< "))
        .map(|l| {
            let (h, label) = l.split_once(" # ").unwrap_or((l, ""));
            (label.to_string(), hex(h.trim()))
        })
        .collect()
}

/// Everything the machine wrote, decoded (after the protocol header).
fn written(m: &mut Machine<u32>, now: Instant) -> Vec<(u16, Assembly)> {
    let mut out = BytesMut::new();
    m.poll_transmit(&mut out, now);
    if out.starts_with(&PROTOCOL_HEADER) {
        let _ = out.split_to(PROTOCOL_HEADER.len());
    }
    let mut codec = FrameCodec::new(0xffff);
    let mut asm = Assembler::new(1 << 30);
    let mut got = Vec::new();
    while let Some(frame) = codec.decode(&mut out).expect("our frames decode") {
        assert!(frame.payload.len() + 12 <= 0xffff);
        if let Some(a) = asm.push(frame).expect("our frames assemble") {
            got.push(a);
        }
    }
    assert!(out.is_empty(), "no partial frame written");
    got
}

fn events(m: &mut Machine<u32>) -> Vec<Event<u32>> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn feed(m: &mut Machine<u32>, bytes: &[u8], now: Instant) {
    let mut buf = BytesMut::from(bytes);
    m.handle_input(&mut buf, now);
    assert!(buf.is_empty() || m.is_closed(), "whole frames consumed");
}

fn frame_of(channel: u16, control: Control) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameWriter::new(0xffff).control(channel, &control, &mut out);
    out.to_vec()
}

fn control_names(asms: &[(u16, Assembly)]) -> Vec<&'static str> {
    asms.iter()
        .map(|(_, a)| match a {
            Assembly::Control(c) => c.name(),
            Assembly::Command { command, .. } => command.name(),
        })
        .collect()
}

/// Runs negotiation on the first S< lines of a capture (header, start, tune, open-ok).
fn negotiated(opts: ConnectOptions, lines: &[(String, Vec<u8>)], now: Instant) -> Machine<u32> {
    let mut m = Machine::new(opts, now);
    for (label, bytes) in &lines[..4] {
        feed(&mut m, bytes, now);
        assert!(!m.is_closed(), "closed at {label}");
    }
    assert!(m.is_open());
    written(&mut m, now);
    events(&mut m);
    m
}

#[test]
fn negotiates_like_the_cpp_client() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = Machine::new(ConnectOptions::new("h", 1), now);
    let mut out = BytesMut::new();
    m.poll_transmit(&mut out, now);
    assert_eq!(&out[..], &PROTOCOL_HEADER);
    feed(&mut m, &lines[0].1, now);
    feed(&mut m, &lines[1].1, now);
    let w = written(&mut m, now);
    let Assembly::Control(Control::ConnectionStartOk(ok)) = &w[0].1 else {
        panic!("start-ok expected, got {:?}", control_names(&w));
    };
    assert_eq!(ok.mechanism.as_deref(), Some("ANONYMOUS"));
    feed(&mut m, &lines[2].1, now);
    let w = written(&mut m, now);
    assert_eq!(control_names(&w), ["connection.tune-ok", "connection.open"]);
    let Assembly::Control(Control::ConnectionTuneOk(t)) = &w[0].1 else {
        unreachable!()
    };
    // min(ours 0x7fff, theirs 0xfffe); frame min(0xffff, 0xffff); no heartbeat asked.
    assert_eq!(
        (t.channel_max, t.max_frame_size, t.heartbeat),
        (Some(0x7fff), Some(0xffff), Some(0))
    );
    feed(&mut m, &lines[3].1, now);
    let ev = events(&mut m);
    let [Event::Opened(n)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(n.mechanism, "ANONYMOUS");
    assert_eq!(n.max_frame_size, 0xffff);
    assert!(n.server_properties.get("qpid.federation_tag").is_some());
}

#[test]
fn picks_plain_with_credentials() {
    let now = Instant::now();
    let start = |mechs: &[&str]| {
        frame_of(
            0,
            ConnectionStart {
                server_properties: None,
                mechanisms: Some(Array::str16(mechs.iter().copied())),
                locales: None,
            }
            .into(),
        )
    };
    let opts = ConnectOptions::new("h", 1).with_credentials("guest", "guest");
    let mut m: Machine<u32> = Machine::new(opts, now);
    feed(&mut m, &PROTOCOL_HEADER, now);
    feed(&mut m, &start(&["ANONYMOUS", "PLAIN"]), now);
    let w = written(&mut m, now);
    let Assembly::Control(Control::ConnectionStartOk(ok)) = &w[0].1 else {
        panic!()
    };
    assert_eq!(ok.mechanism.as_deref(), Some("PLAIN"));
    assert_eq!(ok.response.as_deref(), Some(&b"\0guest\0guest"[..]));

    // No credentials and only PLAIN offered: refuse locally, close, say why.
    let mut m: Machine<u32> = Machine::new(ConnectOptions::new("h", 1), now);
    feed(&mut m, &PROTOCOL_HEADER, now);
    feed(&mut m, &start(&["PLAIN"]), now);
    assert!(m.is_closed());
    let ev = events(&mut m);
    assert!(
        matches!(&ev[..], [Event::Closed(Some(ClientError::Auth(_)))]),
        "{ev:?}"
    );
}

#[test]
fn login_refused_is_an_auth_error() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m: Machine<u32> = Machine::new(ConnectOptions::new("h", 1), now);
    feed(&mut m, &lines[0].1, now);
    feed(&mut m, &lines[1].1, now);
    let close = ConnectionClose {
        reply_code: Some(ConnectionCloseCode::CONNECTION_FORCED),
        reply_text: Some("Authentication failed".into()),
    };
    feed(&mut m, &frame_of(0, close.into()), now);
    let w = written(&mut m, now);
    assert_eq!(control_names(&w).last(), Some(&"connection.close-ok"));
    let ev = events(&mut m);
    assert!(
        matches!(&ev[..], [Event::Closed(Some(ClientError::Auth(t)))] if t.contains("320")),
        "{ev:?}"
    );
}

#[test]
fn other_protocol_versions_are_refused() {
    let now = Instant::now();
    let mut m: Machine<u32> = Machine::new(ConnectOptions::new("h", 1), now);
    feed(&mut m, b"AMQP\x00\x00\x09\x01", now);
    let ev = events(&mut m);
    assert!(
        matches!(
            &ev[..],
            [Event::Closed(Some(ClientError::Version {
                major: 9,
                minor: 1
            }))]
        ),
        "{ev:?}"
    );
}

/// The whole broker side of `qpid-receive -m 3`: results, completions (one with
/// timely-reply), three deliveries, and the detach, against commands sent with the same ids.
#[test]
fn cpp_receive_broker_side() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    events(&mut m);
    let ch = m.attach(Bytes::from_static(b"d5659e2b")).expect("attach");
    assert_eq!(ch, 1);
    let w = written(&mut m, now);
    assert_eq!(
        control_names(&w),
        ["session.attach", "session.command-point"]
    );
    // The C++ client sent 14 commands (ids 0..=13); send as many, each with its id as token.
    for id in 0..14u32 {
        m.send_command(
            ch,
            &Command::ExecutionSync(ExecutionSync {}),
            false,
            Some(id),
        );
    }
    written(&mut m, now);
    let rest = &lines[4..lines.len() - 2];
    let mut done = Vec::new();
    let mut deliveries = Vec::new();
    let mut sent_completed = Vec::new();
    let mut sent_known = Vec::new();
    for (label, bytes) in rest {
        feed(&mut m, bytes, now);
        assert!(!m.is_closed(), "closed at {label}");
        for e in events(&mut m) {
            match e {
                Event::Attached(1) => {}
                Event::Done(id, r) => done.push((id, r.expect("completed"))),
                Event::Delivery(1, d) => deliveries.push(d),
                other => panic!("unexpected {other:?} at {label}"),
            }
        }
        for (_, a) in written(&mut m, now) {
            match a {
                Assembly::Control(Control::SessionCompleted(c)) => sent_completed.push(c),
                Assembly::Control(Control::SessionKnownCompleted(k)) => sent_known.push(k),
                other => panic!("unexpected output {other:?}"),
            }
        }
    }
    let ids: Vec<u32> = done.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..14).collect::<Vec<_>>());
    // exchange.bound (id 1) got its execution.result before its completion.
    let bound = done[1].1.as_ref().expect("result for command 1");
    let bound = ExchangeBoundResult::from_struct32(bound).expect("exchange-bound-result");
    assert!(bound.key_not_matched || bound.queue_not_matched || bound.exchange_not_found);
    assert!(done
        .iter()
        .filter(|(id, _)| *id != 1)
        .all(|(_, r)| r.is_none()));
    // The broker's commands: execution.result is id 0, the transfers 1..=3.
    let ids: Vec<u32> = deliveries.iter().map(|d| d.id.0).collect();
    assert_eq!(ids, [1, 2, 3]);
    for d in &deliveries {
        assert_eq!(d.destination, "q8");
        assert_eq!(&d.body[..], b"cpp message");
        assert_eq!(d.delivery_properties.routing_key.as_deref(), Some("q8"));
        assert_eq!(
            d.message_properties.content_type.as_deref(),
            Some("text/plain")
        );
    }
    // Every broker command got completed, cumulatively.
    let last = sent_completed.last().expect("completed sent");
    assert_eq!(
        last.commands,
        Some(SequenceSet::from_range(SequenceNo(0), SequenceNo(3)))
    );
    // The broker's completed with timely-reply was answered with known-completed.
    assert_eq!(sent_known.len(), 1);
    assert_eq!(
        sent_known[0].commands,
        Some(SequenceSet::from_range(SequenceNo(0), SequenceNo(9)))
    );
    // Detach crossing: ours, then the broker's detached.
    m.detach(ch);
    let w = written(&mut m, now);
    assert_eq!(control_names(&w), ["session.detach"]);
    feed(&mut m, &lines[lines.len() - 2].1, now);
    let ev = events(&mut m);
    assert!(matches!(&ev[..], [Event::SessionEnded(1, None)]), "{ev:?}");
    m.close(now);
    assert_eq!(control_names(&written(&mut m, now)), ["connection.close"]);
    feed(&mut m, &lines[lines.len() - 1].1, now);
    let ev = events(&mut m);
    assert!(matches!(&ev[..], [Event::Closed(None)]), "{ev:?}");
    assert!(m.is_closed());
}

/// Two sessions that each end in an `execution.exception` and a broker detach.
#[test]
fn exceptions_fail_the_session() {
    let now = Instant::now();
    let lines = broker_lines(ERRORS);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    events(&mut m);
    let declare = Command::QueueDeclare(QueueDeclare {
        queue: Some("no-such-queue".into()),
        passive: true,
        ..QueueDeclare::default()
    });
    let ch = m
        .attach(Bytes::from_static(b"err-session-1"))
        .expect("attach");
    m.send_command(ch, &declare, true, Some(0));
    written(&mut m, now);
    // attached, command-point, exception, detach
    for (_, bytes) in &lines[4..8] {
        feed(&mut m, bytes, now);
    }
    let ev = events(&mut m);
    assert!(matches!(ev[0], Event::Attached(1)), "{ev:?}");
    assert!(
        matches!(&ev[1], Event::Done(0, Err(ClientError::Session { code: 404, text })) if text.contains("not-found")),
        "{ev:?}"
    );
    assert!(matches!(
        &ev[2],
        Event::SessionFailed(1, ClientError::Session { code: 404, .. })
    ));
    assert!(matches!(
        &ev[3],
        Event::SessionEnded(1, Some(ClientError::Session { code: 404, .. }))
    ));
    let w = written(&mut m, now);
    assert_eq!(control_names(&w).last(), Some(&"session.detached"));

    // A new session on the freed channel works, until its bind fails.
    let ch = m
        .attach(Bytes::from_static(b"err-session-2"))
        .expect("attach");
    assert_eq!(ch, 1);
    m.send_command(ch, &declare, true, Some(1));
    m.send_command(ch, &declare, true, Some(2));
    written(&mut m, now);
    for (_, bytes) in &lines[8..lines.len() - 1] {
        feed(&mut m, bytes, now);
    }
    let ev = events(&mut m);
    assert!(matches!(ev[1], Event::Done(1, Ok(None))), "{ev:?}");
    assert!(matches!(
        &ev[2],
        Event::Done(2, Err(ClientError::Session { code: 404, .. }))
    ));
    // Once the broker detached, a command pipelined behind the failed one learns why.
    m.send_command(ch, &declare, true, Some(3));
    let ev = events(&mut m);
    assert!(
        matches!(
            &ev[..],
            [Event::Done(3, Err(ClientError::Session { code: 404, .. }))]
        ),
        "{ev:?}"
    );
    // A channel that never had a session is simply not attached.
    m.send_command(9, &declare, true, Some(4));
    let ev = events(&mut m);
    assert!(
        matches!(
            &ev[..],
            [Event::Done(4, Err(ClientError::Detached { code: 3 }))]
        ),
        "{ev:?}"
    );
}

#[test]
fn commands_after_an_exception_fail_with_it() {
    let now = Instant::now();
    let lines = broker_lines(ERRORS);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m
        .attach(Bytes::from_static(b"err-session-1"))
        .expect("attach");
    m.send_command(ch, &Command::ExecutionSync(ExecutionSync {}), true, Some(0));
    for (_, bytes) in &lines[4..7] {
        feed(&mut m, bytes, now);
    }
    events(&mut m);
    m.send_command(ch, &Command::ExecutionSync(ExecutionSync {}), true, Some(1));
    let ev = events(&mut m);
    assert!(
        matches!(
            &ev[..],
            [Event::Done(1, Err(ClientError::Session { code: 404, .. }))]
        ),
        "{ev:?}"
    );
}

#[test]
fn flush_is_answered() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m.attach(Bytes::from_static(b"s")).expect("attach");
    written(&mut m, now);
    // attached + command-point from the capture, then a flush asking for everything.
    feed(&mut m, &lines[4].1, now);
    feed(&mut m, &lines[5].1, now);
    let flush = SessionFlush {
        expected: true,
        confirmed: true,
        completed: true,
    };
    feed(&mut m, &frame_of(ch, flush.into()), now);
    let w = written(&mut m, now);
    assert_eq!(
        control_names(&w),
        ["session.expected", "session.confirmed", "session.completed"]
    );
    let Assembly::Control(Control::SessionExpected(e)) = &w[0].1 else {
        unreachable!()
    };
    assert_eq!(
        e.commands,
        Some(SequenceSet::from_range(SequenceNo(0), SequenceNo(0)))
    );
}

#[test]
fn heartbeats_when_idle_and_gives_up_on_silence() {
    let t0 = Instant::now();
    let lines = broker_lines(HEARTBEAT);
    let opts = ConnectOptions::new("h", 1).with_heartbeat(1);
    let mut m = Machine::new(opts, t0);
    for (_, bytes) in &lines[..4] {
        feed(&mut m, bytes, t0);
    }
    let w = written(&mut m, t0);
    let Some((_, Assembly::Control(Control::ConnectionTuneOk(t)))) = w.get(1) else {
        panic!("{:?}", control_names(&w))
    };
    assert_eq!(t.heartbeat, Some(1));
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    let t1 = t0 + Duration::from_millis(600);
    m.handle_timeout(t1);
    assert_eq!(
        control_names(&written(&mut m, t1)),
        ["connection.heartbeat"]
    );
    // The broker's heartbeat counts as input.
    feed(&mut m, &lines[4].1, t1);
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_millis(500)));
    let t2 = t1 + Duration::from_millis(2000);
    m.handle_timeout(t2);
    assert!(m.is_closed());
    let ev = events(&mut m);
    assert!(
        matches!(
            ev.last(),
            Some(Event::Closed(Some(ClientError::HeartbeatTimeout(2))))
        ),
        "{ev:?}"
    );
}

#[test]
fn heartbeat_is_clamped_to_the_broker_range() {
    let now = Instant::now();
    let opts = ConnectOptions::new("h", 1).with_heartbeat(600);
    let mut m: Machine<u32> = Machine::new(opts, now);
    feed(&mut m, &PROTOCOL_HEADER, now);
    let start = ConnectionStart {
        server_properties: None,
        mechanisms: Some(Array::str16(["ANONYMOUS"])),
        locales: None,
    };
    feed(&mut m, &frame_of(0, start.into()), now);
    let tune = ConnectionTune {
        channel_max: Some(10),
        max_frame_size: Some(4096),
        heartbeat_min: Some(5),
        heartbeat_max: Some(60),
    };
    feed(&mut m, &frame_of(0, tune.into()), now);
    let w = written(&mut m, now);
    let Some((_, Assembly::Control(Control::ConnectionTuneOk(t)))) = w.get(1) else {
        panic!()
    };
    assert_eq!(
        (t.channel_max, t.max_frame_size, t.heartbeat),
        (Some(10), Some(4096), Some(60))
    );
}

#[test]
fn large_messages_are_split_at_the_frame_size() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m.attach(Bytes::from_static(b"s")).expect("attach");
    written(&mut m, now);
    let body: Vec<u8> = (0..204_800u32).map(|i| (i % 251) as u8).collect();
    let msg = Message::new(body.clone()).with_routing_key("q");
    m.send_transfer(ch, String::new(), &msg, true, Some(0));
    let mut out = BytesMut::new();
    m.poll_transmit(&mut out, now);
    let mut codec = FrameCodec::new(0xffff);
    let mut asm = Assembler::new(1 << 30);
    let mut frames = 0;
    let mut got = None;
    while let Some(f) = codec.decode(&mut out).expect("frame") {
        frames += 1;
        got = asm.push(f).expect("assembly").or(got);
    }
    // command + header + 4 body frames, as in large-message.txt.
    assert_eq!(frames, 6);
    let Some((
        1,
        Assembly::Command {
            header,
            command: Command::MessageTransfer(t),
            content: Some(c),
        },
    )) = got
    else {
        panic!("transfer expected")
    };
    assert!(header.sync);
    assert_eq!(t.destination.as_deref(), Some(""));
    assert_eq!(t.accept_mode.map(|a| a.0), Some(1));
    assert_eq!(&c.body[..], &body[..]);
}

#[test]
fn completion_out_of_order_and_across_wrap() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m.attach(Bytes::from_static(b"s")).expect("attach");
    // Pretend many commands went before, so ids wrap past u32::MAX.
    if let Some(s) = m.sessions.get_mut(&ch) {
        s.next_out = SequenceNo(u32::MAX - 1);
        s.next_out_abs = 1_000;
    }
    for token in 0..4 {
        m.send_command(
            ch,
            &Command::ExecutionSync(ExecutionSync {}),
            false,
            Some(token),
        );
    }
    events(&mut m);
    let completed = |set: SequenceSet| {
        frame_of(
            ch,
            SessionCompleted {
                commands: Some(set),
                timely_reply: false,
            }
            .into(),
        )
    };
    // ids: MAX-1, MAX, 0, 1. Complete the third alone, then everything.
    feed(
        &mut m,
        &completed(SequenceSet::from_range(SequenceNo(0), SequenceNo(0))),
        now,
    );
    let ev = events(&mut m);
    assert!(matches!(&ev[..], [Event::Done(2, Ok(None))]), "{ev:?}");
    feed(
        &mut m,
        &completed(SequenceSet::from_range(
            SequenceNo(u32::MAX - 5),
            SequenceNo(1),
        )),
        now,
    );
    let done: Vec<u32> = events(&mut m)
        .into_iter()
        .filter_map(|e| match e {
            Event::Done(t, Ok(_)) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(done, [0, 1, 3]);
}

#[test]
fn garbage_closes_with_framing_error() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m.attach(Bytes::from_static(b"s")).expect("attach");
    m.send_command(ch, &Command::ExecutionSync(ExecutionSync {}), true, Some(7));
    written(&mut m, now);
    feed(
        &mut m,
        &[0x4f, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x0a, 0, 0],
        now,
    );
    assert!(m.is_closed());
    let w = written(&mut m, now);
    let Some((_, Assembly::Control(Control::ConnectionClose(c)))) = w.last() else {
        panic!()
    };
    assert_eq!(c.reply_code, Some(ConnectionCloseCode::FRAMING_ERROR));
    let ev = events(&mut m);
    assert!(
        matches!(ev[0], Event::Done(7, Err(ClientError::Protocol(_)))),
        "{ev:?}"
    );
    assert!(matches!(
        ev.last(),
        Some(Event::Closed(Some(ClientError::Protocol(_))))
    ));
}

#[test]
fn ensure_synced_sends_one_execution_sync_when_needed() {
    let now = Instant::now();
    let lines = broker_lines(CPP_RECEIVE);
    let mut m = negotiated(ConnectOptions::new("h", 1), &lines, now);
    let ch = m.attach(Bytes::from_static(b"s")).expect("attach");
    written(&mut m, now);
    let msg = Message::new("x").with_routing_key("q");
    let p0 = m
        .send_transfer(ch, String::new(), &msg, false, Some(0))
        .expect("sent");
    let p1 = m
        .send_transfer(ch, String::new(), &msg, false, Some(1))
        .expect("sent");
    assert_eq!((p0, p1), (0, 1));
    written(&mut m, now);
    m.ensure_synced(ch, p0);
    let w = written(&mut m, now);
    let [(
        _,
        Assembly::Command {
            header, command, ..
        },
    )] = &w[..]
    else {
        panic!("{:?}", control_names(&w))
    };
    assert!(header.sync);
    assert_eq!(command.name(), "execution.sync");
    // Covered now, for both.
    m.ensure_synced(ch, p0);
    m.ensure_synced(ch, p1);
    assert!(written(&mut m, now).is_empty());
    // A synced transfer covers itself.
    let p3 = m
        .send_transfer(ch, String::new(), &msg, true, Some(3))
        .expect("sent");
    written(&mut m, now);
    m.ensure_synced(ch, p3);
    assert!(written(&mut m, now).is_empty());
}

//! Malformed and hostile input over real sockets: each gets the protocol's own answer
//! (connection.close with the right code, execution.exception, session.detached) and a
//! second, well-behaved connection keeps working throughout.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use clacks_broker::server::ServerConfig;
use clacks_broker::wire::{
    Command, Control, ExecutionSync, FieldTable, MessageFlow, MessageSubscribe, QueueDeclare,
    QueueQuery, QueueQueryResult, SessionDetachCode, PROTOCOL_HEADER,
};
use common::raw::{RawPeer, Seen};
use common::InProcess;
use tokio::io::AsyncReadExt;

/// A second connection declares and queries a queue: the broker still serves others.
async fn still_serves(broker: &InProcess) {
    let mut good = RawPeer::open(broker.addr, 0xffff, 0).await;
    good.attach(1, "good").await;
    good.command(
        1,
        Command::QueueDeclare(QueueDeclare {
            queue: Some("still-here".into()),
            ..Default::default()
        }),
    )
    .await;
    good.command(
        1,
        Command::QueueQuery(QueueQuery {
            queue: Some("still-here".into()),
        }),
    )
    .await;
    let result = good
        .expect_command(|c| matches!(c, Command::ExecutionResult(_)))
        .await;
    let Command::ExecutionResult(r) = result else {
        unreachable!()
    };
    let q = QueueQueryResult::from_struct32(&r.value.expect("value")).expect("result");
    assert_eq!(q.queue.as_deref(), Some("still-here"));
}

#[tokio::test]
async fn wrong_protocol_headers_get_our_header_and_close() {
    let broker = InProcess::start().await;
    // AMQP 1.0, a 0-10 header of another version, and no AMQP at all (0-9-1 is served:
    // tests/amqp091.rs).
    for header in [
        &b"AMQP\x00\x01\x00\x00"[..],
        &b"AMQP\x01\x01\x01\x00"[..],
        &b"GET / HTTP/1.1\r\n"[..],
    ] {
        let mut p = RawPeer::connect(broker.addr).await;
        p.send_raw(header).await;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), p.stream.read_to_end(&mut answer))
            .await
            .expect("broker closes")
            .expect("read");
        assert_eq!(answer, PROTOCOL_HEADER, "answer to {header:?}");
    }
    still_serves(&broker).await;
}

fn frame(flags: u8, seg: u8, size: u16, track: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(flags);
    b.put_u8(seg);
    b.put_u16(size);
    b.put_u8(0);
    b.put_u8(track);
    b.put_u16(channel);
    b.put_u32(0);
    b.put_slice(payload);
    b
}

#[tokio::test]
async fn framing_errors_close_with_501() {
    let broker = InProcess::start().await;
    let heartbeat = [0x01, 0x0a, 0x00, 0x00];
    let cases: Vec<(&str, BytesMut)> = vec![
        ("reserved flag bits", frame(0x4f, 0, 16, 0, 0, &heartbeat)),
        (
            "reserved track bits",
            frame(0x0f, 0, 16, 0x10, 0, &heartbeat),
        ),
        ("size below the header", frame(0x0f, 0, 4, 0, 0, &[])),
        ("segment type 9", frame(0x0f, 9, 16, 0, 0, &heartbeat)),
        (
            "control on the command track",
            frame(0x0f, 0, 16, 1, 0, &heartbeat),
        ),
        (
            "continuation without a start",
            frame(0x00, 0, 16, 0, 0, &heartbeat),
        ),
        (
            "unknown control class",
            frame(0x0f, 0, 16, 0, 0, &[0x0b, 0x01, 0, 0]),
        ),
        (
            // queue.declare announcing a queue name of 200 bytes, with 2 present.
            "truncated struct",
            frame(
                0x0f,
                1,
                20,
                1,
                1,
                &[0x08, 0x01, 0x01, 0x00, 0x01, 0x00, 200, b'q'],
            ),
        ),
    ];
    for (what, bytes) in cases {
        let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
        p.attach(1, "s").await;
        p.send_raw(&bytes).await;
        assert_eq!(p.expect_close().await, 501, "{what}");
        p.expect_eof(Duration::from_secs(10)).await;
    }
    still_serves(&broker).await;
}

#[tokio::test]
async fn oversize_frames_are_refused_before_buffering() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 4096, 0).await;
    // Announce 8000 bytes on a connection tuned to 4096, but send only the header: the broker
    // must not wait for the payload.
    p.send_raw(&frame(0x0f, 0, 8000, 0, 0, &[])).await;
    assert_eq!(p.expect_close().await, 501);
    p.expect_eof(Duration::from_secs(10)).await;
    still_serves(&broker).await;
}

#[tokio::test]
async fn unknown_command_is_not_implemented_then_detached() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.attach(1, "s").await;
    // Class 9 (file) is not implemented; command 0x0f of queue does not exist.
    for (class, code) in [(9u8, 1u8), (8, 0x0f)] {
        p.send_raw(&frame(0x0f, 1, 18, 1, 1, &[class, code, 0x01, 0x01, 0, 0]))
            .await;
        let e = p
            .expect_command(|c| matches!(c, Command::ExecutionException(_)))
            .await;
        let Command::ExecutionException(e) = e else {
            unreachable!()
        };
        assert_eq!(e.error_code.map(|c| c.0), Some(540));
        assert_eq!(e.class_code, Some(class));
        p.expect_control(|c| matches!(c, Control::SessionDetach(_)))
            .await;
        p.attach(1, "s").await;
    }
    still_serves(&broker).await;
}

#[tokio::test]
async fn commands_on_an_unattached_channel_get_detached() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.command(7, Command::ExecutionSync(ExecutionSync {})).await;
    let c = p
        .expect_control(|c| matches!(c, Control::SessionDetached(_)))
        .await;
    let Control::SessionDetached(d) = c else {
        unreachable!()
    };
    assert_eq!(d.code, Some(SessionDetachCode::NOT_ATTACHED));
    // The connection itself is fine.
    p.attach(7, "late").await;
    p.command(7, Command::ExecutionSync(ExecutionSync {})).await;
    p.expect_control(|c| matches!(c, Control::SessionCompleted(_)))
        .await;
    still_serves(&broker).await;
}

#[tokio::test]
async fn errors_in_commands_are_session_exceptions() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.attach(1, "s").await;
    p.command(
        1,
        Command::QueueDeclare(QueueDeclare {
            queue: Some("nope".into()),
            passive: true,
            ..Default::default()
        }),
    )
    .await;
    let e = p
        .expect_command(|c| matches!(c, Command::ExecutionException(_)))
        .await;
    let Command::ExecutionException(e) = e else {
        unreachable!()
    };
    assert_eq!(e.error_code.map(|c| c.0), Some(404));
    assert_eq!(e.command_id, Some(0.into()));
    p.expect_control(|c| matches!(c, Control::SessionDetach(_)))
        .await;
    still_serves(&broker).await;
}

/// A mechanism, its initial response, and the response to a challenge if one comes.
type SaslCase = (&'static str, &'static [u8], Option<&'static [u8]>);

#[tokio::test]
async fn bad_sasl_closes_with_320() {
    let broker = InProcess::start().await;
    let cases: &[SaslCase] = &[
        ("PLAIN", b"\0guest\0wrong", None),
        ("PLAIN", b"no separators at all", None),
        ("PLAIN", b"\0guest\0", None),
        ("PLAIN", b"\0\xff\xfe\0guest", None),
        ("CRAM-MD5", b"", None),
        ("EXTERNAL", b"", None),
        ("SCRAM-SHA-256", b"garbage", None),
        (
            "SCRAM-SHA-256",
            b"n,,n=guest,r=abc",
            Some(b"c=biws,r=wrongnonce,p=AAAA"),
        ),
        ("SCRAM-SHA-256", b"n,,n=nobody,r=abc", Some(b"\xff\x00")),
    ];
    for (mechanism, initial, answer) in cases {
        let mut p = RawPeer::connect(broker.addr).await;
        p.send_raw(&PROTOCOL_HEADER).await;
        let mut header = [0u8; 8];
        p.stream.read_exact(&mut header).await.expect("header");
        p.expect_control(|c| matches!(c, Control::ConnectionStart(_)))
            .await;
        p.control(
            0,
            Control::ConnectionStartOk(clacks_broker::wire::ConnectionStartOk {
                mechanism: Some((*mechanism).into()),
                response: Some(bytes::Bytes::copy_from_slice(initial)),
                ..Default::default()
            }),
        )
        .await;
        if let Some(answer) = answer {
            p.expect_control(|c| matches!(c, Control::ConnectionSecure(_)))
                .await;
            p.control(
                0,
                Control::ConnectionSecureOk(clacks_broker::wire::ConnectionSecureOk {
                    response: Some(bytes::Bytes::copy_from_slice(answer)),
                }),
            )
            .await;
        }
        assert_eq!(p.expect_close().await, 320, "{mechanism} {initial:?}");
    }
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_are_closed_after_the_handshake_timeout() {
    let broker = common::Binary::start("handshake_timeout_ms = 300");
    // One says nothing at all; one sends the protocol header and stops there.
    let mut silent = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    let mut stalled = RawPeer::connect(broker.addr).await;
    stalled.send_raw(&PROTOCOL_HEADER).await;
    for (what, stream) in [("silent", &mut silent), ("stalled", &mut stalled.stream)] {
        let mut seen = Vec::new();
        // Well past the 300 ms asked for, well short of the 10 s default.
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut seen))
            .await
            .unwrap_or_else(|_| panic!("the {what} socket was kept open"))
            .expect("read");
    }
    // Meanwhile an honest client logs in as usual.
    let ok = tokio::process::Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["send", "-b", &format!("amqp://guest:guest@{}", broker.addr)])
        .args(["--create", "q", "--content", "hello"])
        .output()
        .await
        .expect("clacks send");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_honest_clients_out() {
    // More silent sockets than max_connections (1,024), with a handshake timeout long
    // enough that none of them is dropped while the honest client tries.
    let broker = common::Binary::start("handshake_timeout_ms = 120000");
    let mut silent = Vec::new();
    for _ in 0..2000 {
        silent.push(
            tokio::net::TcpStream::connect(broker.addr)
                .await
                .expect("connect"),
        );
    }
    let send = tokio::process::Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["send", "-b", &format!("amqp://guest:guest@{}", broker.addr)])
        .args(["--create", "q", "--content", "hello"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .expect("the honest client was locked out by silent sockets")
        .expect("clacks send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(silent);
}

#[tokio::test]
async fn silent_peer_is_closed_after_two_heartbeats() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 1).await;
    // We send nothing more; the broker sends heartbeats and then gives up on us.
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match p.next(left).await {
            Seen::Assembly(
                _,
                clacks_broker::wire::Assembly::Control(Control::ConnectionHeartbeat(_)),
            ) => heartbeats += 1,
            Seen::Assembly(..) => {}
            Seen::Eof => break,
            Seen::Timeout => panic!("broker kept a silent peer open"),
        }
    }
    assert!(heartbeats >= 1, "broker sent heartbeats while we were idle");
    still_serves(&broker).await;
}

#[tokio::test]
async fn peer_that_stops_reading_is_not_buffered_without_bound() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.attach(1, "s").await;
    // Each query makes the broker write a result; we never read them. Once the socket
    // buffers and the broker's output limit fill, the broker stops reading us, so our
    // writes stall long before we have pushed a large amount.
    let mut one = BytesMut::new();
    p.writer.command(
        1,
        false,
        &Command::QueueQuery(QueueQuery {
            queue: Some("no-such-queue".into()),
        }),
        None,
        &mut one,
    );
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
    let mut sent = 0usize;
    let stalled = loop {
        let write = tokio::io::AsyncWriteExt::write_all(&mut p.stream, &chunk);
        match tokio::time::timeout(Duration::from_secs(3), write).await {
            Err(_) => break true,
            Ok(Err(_)) => break false,
            Ok(Ok(())) => sent += chunk.len(),
        }
        if sent > 512 << 20 {
            break false;
        }
    };
    assert!(
        stalled,
        "broker kept reading after {sent} bytes without us reading"
    );
    still_serves(&broker).await;
}

#[tokio::test]
async fn jumping_command_points_and_syncs_are_not_amplified() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.attach(1, "s").await;
    // Each jump ahead would leave a gap in the completed set, and each sync asks for the
    // whole set: without a bound the replies grow with the square of the requests.
    let mut input = BytesMut::new();
    for i in 0..20_000u32 {
        p.writer.control(
            1,
            &Control::SessionCommandPoint(clacks_broker::wire::SessionCommandPoint {
                command_id: Some((i * 3).into()),
                command_offset: Some(0),
            }),
            &mut input,
        );
        p.writer.command(
            1,
            true,
            &Command::ExecutionSync(ExecutionSync {}),
            None,
            &mut input,
        );
    }
    p.writer.control(
        0,
        &Control::ConnectionClose(clacks_broker::wire::ConnectionClose::default()),
        &mut input,
    );
    let (mut rd, mut wr) = p.stream.split();
    let write = async {
        tokio::io::AsyncWriteExt::write_all(&mut wr, &input)
            .await
            .expect("write");
    };
    let mut answer = Vec::new();
    let read = async {
        tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut answer))
            .await
            .expect("broker closes after close-ok")
            .expect("read");
    };
    tokio::join!(write, read);
    assert!(
        answer.len() < input.len(),
        "{} bytes in made the broker write {} back",
        input.len(),
        answer.len()
    );
    still_serves(&broker).await;
}

#[tokio::test]
async fn large_message_is_split_and_joined_at_the_frame_size() {
    let broker = InProcess::start().await;
    let mut p = RawPeer::open(broker.addr, 4096, 0).await;
    p.attach(1, "s").await;
    p.command(
        1,
        Command::QueueDeclare(QueueDeclare {
            queue: Some("big".into()),
            ..Default::default()
        }),
    )
    .await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut header = BytesMut::new();
    clacks_broker::wire::DeliveryProperties {
        routing_key: Some("big".into()),
        ..Default::default()
    }
    .encode(&mut header);
    p.transfer(
        1,
        Command::MessageTransfer(clacks_broker::wire::MessageTransfer {
            destination: Some(String::new()),
            ..Default::default()
        }),
        &header,
        &body,
    )
    .await;
    p.command(
        1,
        Command::MessageSubscribe(MessageSubscribe {
            queue: Some("big".into()),
            destination: Some("d".into()),
            arguments: Some(FieldTable::new()),
            ..Default::default()
        }),
    )
    .await;
    for unit in [0u8, 1] {
        p.command(
            1,
            Command::MessageFlow(MessageFlow {
                destination: Some("d".into()),
                unit: Some(clacks_broker::wire::MessageCreditUnit(unit)),
                value: Some(u32::MAX),
            }),
        )
        .await;
    }
    loop {
        match p.next(Duration::from_secs(10)).await {
            Seen::Assembly(
                _,
                clacks_broker::wire::Assembly::Command {
                    command: Command::MessageTransfer(_),
                    content: Some(c),
                    ..
                },
            ) => {
                assert_eq!(c.body.len(), body.len());
                assert!(c.body[..] == body[..], "body arrives intact");
                break;
            }
            Seen::Assembly(..) => {}
            other => panic!("no transfer: {other:?}"),
        }
    }
}

/// The soft and hard open-file limits of a running process, from /proc.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let mut words = line["Max open files".len()..].split_whitespace();
    let soft = words.next().expect("soft").to_string();
    let hard = words.next().expect("hard").to_string();
    (soft, hard)
}

#[test]
fn the_broker_raises_its_open_file_limit_to_the_hard_limit() {
    // Under a low soft limit every connection past it would fail its accept.
    let broker = common::Binary::start_wrapped(
        tempfile::tempdir().expect("tempdir"),
        "",
        &["prlimit", "--nofile=200:4000", "--"],
    );
    let (soft, hard) = open_file_limits(broker.child.id());
    assert_eq!(hard, "4000");
    assert_eq!(soft, "4000", "the soft limit stays where the shell left it");
}

/// Splits encoded frames at the first body frame: what comes before, and the body frames.
fn split_at_body(frames: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while at + 4 <= frames.len() {
        if frames[at + 1] == 3 {
            break;
        }
        at += usize::from(u16::from_be_bytes([frames[at + 2], frames[at + 3]]));
    }
    frames.split_at(at)
}

/// A transfer to queue `big` of `body_len` bytes, announcing its length when `announce`.
fn big_transfer(p: &mut RawPeer, channel: u16, body_len: usize, announce: bool) -> BytesMut {
    let mut header = BytesMut::new();
    clacks_broker::wire::prim::put_struct32(
        &mut header,
        &clacks_broker::wire::DeliveryProperties {
            routing_key: Some("big".into()),
            ..Default::default()
        }
        .to_struct32(),
    );
    clacks_broker::wire::prim::put_struct32(
        &mut header,
        &clacks_broker::wire::MessageProperties {
            content_length: announce.then_some(body_len as u64),
            ..Default::default()
        }
        .to_struct32(),
    );
    let body = vec![7u8; body_len];
    let mut out = BytesMut::new();
    p.writer.command(
        channel,
        true,
        &Command::MessageTransfer(clacks_broker::wire::MessageTransfer {
            destination: Some(String::new()),
            ..Default::default()
        }),
        Some((&header, Some(&body))),
        &mut out,
    );
    out
}

/// Waits for the exception that refuses a message and returns its code.
async fn expect_refusal(p: &mut RawPeer) -> u16 {
    let c = p
        .expect_command(|c| matches!(c, Command::ExecutionException(_)))
        .await;
    let Command::ExecutionException(e) = c else {
        unreachable!()
    };
    e.error_code.map_or(0, |c| c.0)
}

#[tokio::test]
async fn a_message_over_max_message_size_is_refused_and_the_connection_carries_on() {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_anonymous: true,
        max_message_size: 1 << 20,
        ..ServerConfig::default()
    };
    config.users.insert("guest".into(), "guest".into());
    let broker = InProcess::with_config(config).await;
    let mut p = RawPeer::open(broker.addr, 0xffff, 0).await;
    p.attach(1, "s").await;
    p.command(
        1,
        Command::QueueDeclare(QueueDeclare {
            queue: Some("big".into()),
            ..Default::default()
        }),
    )
    .await;

    // Announced too large: refused on its header, before any of the body is sent.
    let frames = big_transfer(&mut p, 1, 3 << 20, true);
    let (head, body) = split_at_body(&frames);
    assert!(!body.is_empty());
    p.send_raw(head).await;
    assert_eq!(expect_refusal(&mut p).await, 506);
    p.expect_control(|c| matches!(c, Control::SessionDetach(_)))
        .await;
    // The rest of it is dropped without complaint.
    p.send_raw(body).await;

    // Not announced: refused once what arrived passes the limit.
    p.attach(2, "s2").await;
    let frames = big_transfer(&mut p, 2, 3 << 20, false);
    p.send_raw(&frames).await;
    assert_eq!(expect_refusal(&mut p).await, 506);

    // The same connection still carries messages up to the limit.
    p.attach(3, "s3").await;
    let frames = big_transfer(&mut p, 3, 900 << 10, true);
    p.send_raw(&frames).await;
    p.command(
        3,
        Command::QueueQuery(QueueQuery {
            queue: Some("big".into()),
        }),
    )
    .await;
    let result = p
        .expect_command(|c| matches!(c, Command::ExecutionResult(_)))
        .await;
    let Command::ExecutionResult(r) = result else {
        unreachable!()
    };
    let q = QueueQueryResult::from_struct32(&r.value.expect("value")).expect("result");
    assert_eq!(
        q.message_count,
        Some(1),
        "only the message within the limit"
    );
    still_serves(&broker).await;
}

//! A raw 0-10 peer for tests that must send what no well-behaved client would: it speaks
//! frames directly over a socket, with our codec, and reports exactly what comes back.

use std::time::Duration;

use bytes::BytesMut;
use clacks_broker::wire::{
    Assembler, Assembly, Command, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk, Control,
    FrameCodec, FrameWriter, SessionAttach, SessionCommandPoint, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// What the peer saw next.
#[allow(clippy::large_enum_variant)] // short-lived values in tests
#[derive(Debug)]
pub enum Seen {
    /// A complete control or command.
    Assembly(u16, Assembly),
    /// The broker closed the socket.
    Eof,
    /// Nothing within the deadline.
    Timeout,
}

/// One raw connection.
pub struct RawPeer {
    pub stream: TcpStream,
    codec: FrameCodec,
    assembler: Assembler,
    pub writer: FrameWriter,
    input: BytesMut,
}

impl RawPeer {
    /// Connects without sending anything.
    pub async fn connect(addr: std::net::SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawPeer {
            stream,
            codec: FrameCodec::new(0xffff),
            assembler: Assembler::new(1 << 28),
            writer: FrameWriter::new(0xffff),
            input: BytesMut::new(),
        }
    }

    /// Connects and negotiates (ANONYMOUS), asking for `max_frame` and `heartbeat`.
    pub async fn open(addr: std::net::SocketAddr, max_frame: u16, heartbeat: u16) -> RawPeer {
        let mut p = RawPeer::connect(addr).await;
        p.send_raw(&PROTOCOL_HEADER).await;
        let mut header = [0u8; 8];
        p.stream.read_exact(&mut header).await.expect("header");
        assert_eq!(header, PROTOCOL_HEADER);
        p.expect_control(|c| matches!(c, Control::ConnectionStart(_)))
            .await;
        p.control(
            0,
            Control::ConnectionStartOk(ConnectionStartOk {
                mechanism: Some("ANONYMOUS".into()),
                response: Some(bytes::Bytes::from_static(b"test@localhost")),
                locale: Some("en_US".into()),
                ..Default::default()
            }),
        )
        .await;
        p.expect_control(|c| matches!(c, Control::ConnectionTune(_)))
            .await;
        p.control(
            0,
            Control::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: Some(32),
                max_frame_size: Some(max_frame),
                heartbeat: Some(heartbeat),
            }),
        )
        .await;
        p.control(0, Control::ConnectionOpen(ConnectionOpen::default()))
            .await;
        p.expect_control(|c| matches!(c, Control::ConnectionOpenOk(_)))
            .await;
        p.writer = FrameWriter::new(usize::from(max_frame));
        // Frames from the broker must respect what we negotiated.
        p.codec = FrameCodec::new(usize::from(max_frame));
        p
    }

    /// Attaches a session on `channel` and sets our command point to 0.
    pub async fn attach(&mut self, channel: u16, name: &str) {
        self.control(
            channel,
            Control::SessionAttach(SessionAttach {
                name: Some(bytes::Bytes::copy_from_slice(name.as_bytes())),
                force: false,
            }),
        )
        .await;
        self.expect_control(|c| matches!(c, Control::SessionAttached(_)))
            .await;
        self.control(
            channel,
            Control::SessionCommandPoint(SessionCommandPoint {
                command_id: Some(0.into()),
                command_offset: Some(0),
            }),
        )
        .await;
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Writes a control.
    pub async fn control(&mut self, channel: u16, c: Control) {
        let mut out = BytesMut::new();
        self.writer.control(channel, &c, &mut out);
        self.send_raw(&out).await;
    }

    /// Writes a command with the sync bit set.
    pub async fn command(&mut self, channel: u16, c: Command) {
        let mut out = BytesMut::new();
        self.writer.command(channel, true, &c, None, &mut out);
        self.send_raw(&out).await;
    }

    /// Writes a transfer with header and body.
    pub async fn transfer(&mut self, channel: u16, c: Command, header: &[u8], body: &[u8]) {
        let mut out = BytesMut::new();
        self.writer
            .command(channel, true, &c, Some((header, Some(body))), &mut out);
        self.send_raw(&out).await;
    }

    /// The next assembly, EOF, or a timeout after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.codec.decode(&mut self.input) {
                Ok(Some(frame)) => {
                    if let Some((ch, a)) = self.assembler.push(frame).expect("broker frames") {
                        return Seen::Assembly(ch, a);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("broker sent a bad frame: {e}"),
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input));
            match read.await {
                Err(_) => return Seen::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Eof,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Skips assemblies until one control matches; panics on EOF or after 10 s.
    pub async fn expect_control(&mut self, f: impl Fn(&Control) -> bool) -> Control {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Seen::Assembly(_, Assembly::Control(c)) if f(&c) => return c,
                Seen::Assembly(..) => continue,
                other => panic!("expected a control, saw {other:?}"),
            }
        }
    }

    /// Skips assemblies until one command matches; panics on EOF or after 10 s.
    pub async fn expect_command(&mut self, f: impl Fn(&Command) -> bool) -> Command {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Seen::Assembly(_, Assembly::Command { command, .. }) if f(&command) => {
                    return command
                }
                Seen::Assembly(..) => continue,
                other => panic!("expected a command, saw {other:?}"),
            }
        }
    }

    /// Waits for `connection.close` and returns its code, then for the socket to close.
    pub async fn expect_close(&mut self) -> u16 {
        let c = self
            .expect_control(|c| matches!(c, Control::ConnectionClose(_)))
            .await;
        let Control::ConnectionClose(close) = c else {
            unreachable!()
        };
        close.reply_code.map_or(0, |c| c.0)
    }

    /// Waits until the broker closes the socket (skipping whatever it sends first).
    pub async fn expect_eof(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Seen::Eof => return,
                Seen::Timeout => panic!("socket still open after {within:?}"),
                Seen::Assembly(..) => {}
            }
        }
    }
}

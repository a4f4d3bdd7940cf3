//! Every frame of real conversations between Qpid clients and qpidd decodes, and every
//! assembly re-encodes to exactly the bytes that crossed the wire.

use bytes::BytesMut;
use clacks_broker::wire::{
    Assembler, Assembly, Command, Control, DeliveryProperties, FrameCodec, FrameWriter,
    MessageProperties, PROTOCOL_HEADER,
};
use tokio_util::codec::Decoder;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Frames of one direction of one capture, in order.
fn frames(text: &str, dir: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter_map(|l| l.strip_prefix(dir))
        .map(|l| hex(l.split(" #").next().unwrap_or("").trim()))
        .collect()
}

fn check_direction(name: &str, frames: &[Vec<u8>]) -> (usize, usize) {
    assert_eq!(frames[0], PROTOCOL_HEADER, "{name}: protocol header");
    let mut codec = FrameCodec::new(0xffff);
    let mut assembler = Assembler::new(1 << 30);
    let writer = FrameWriter::new(0xffff);
    let mut pending = Vec::new();
    let (mut controls, mut commands) = (0, 0);
    for raw in &frames[1..] {
        let mut buf = BytesMut::from(&raw[..]);
        let frame = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{name}: frame error {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete frame"));
        assert!(buf.is_empty(), "{name}: one frame per line");
        pending.extend_from_slice(raw);
        let Some((channel, assembly)) = assembler
            .push(frame)
            .unwrap_or_else(|e| panic!("{name}: assembly error {e:?}"))
        else {
            continue;
        };
        let mut out = BytesMut::new();
        match &assembly {
            Assembly::Control(c) => {
                controls += 1;
                writer.control(channel, c, &mut out);
                if let Control::ConnectionStart(start) = c {
                    assert!(start.mechanisms.is_some());
                }
            }
            Assembly::Command {
                header,
                command,
                content,
            } => {
                commands += 1;
                let content_ref = content
                    .as_ref()
                    .map(|c| (&c.header[..], c.has_body.then_some(&c.body[..])));
                writer.command(channel, header.sync, command, content_ref, &mut out);
                if let (Command::MessageTransfer(_), Some(content)) = (command, content) {
                    // Each header struct decodes into its generated type and back.
                    for s in content.header_structs().expect("header structs") {
                        let mut again = BytesMut::new();
                        match s.code {
                            DeliveryProperties::CODE => DeliveryProperties::from_struct32(&s)
                                .expect("delivery-properties")
                                .encode_fields(&mut again),
                            MessageProperties::CODE => MessageProperties::from_struct32(&s)
                                .expect("message-properties")
                                .encode_fields(&mut again),
                            other => panic!("{name}: unexpected header struct {other:#x}"),
                        }
                        assert_eq!(&again[..], &s.body[..], "{name}: header struct re-encodes");
                    }
                }
            }
        }
        assert_eq!(
            hexs(&out),
            hexs(&pending),
            "{name}: {assembly:?} re-encodes to the captured bytes"
        );
        pending.clear();
    }
    assert!(pending.is_empty(), "{name}: trailing partial assembly");
    (controls, commands)
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn captures_decode_and_reencode_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/captures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("captures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "all ten captures are present");
    for path in files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read capture");
        let (c1, m1) = check_direction(&format!("{name} C>"), &frames(&text, "C> "));
        let (c2, m2) = check_direction(&format!("{name} S<"), &frames(&text, "S< "));
        assert!(c1 > 0 && c2 > 0, "{name}: controls both ways");
        if !matches!(name.as_str(), "heartbeat.txt" | "sasl-plain.txt") {
            assert!(m1 + m2 > 0, "{name}: some commands");
        }
    }
}

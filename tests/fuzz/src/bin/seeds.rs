//! Writes the starting corpus of every fuzz target into `corpus/<target>/` (run from
//! `tests/fuzz`): valid inputs made with the broker's own encoders, so that the fuzzers
//! start from inputs that reach deep.

use std::path::Path;

use bytes::{BufMut, BytesMut};
use clacks_broker::wire::prim::put_struct32;
use clacks_broker::wire::{
    Command, ConnectionStartOk, Control, DeliveryProperties, FieldTable, FrameWriter,
    MessageProperties, MessageTransfer, QueueDeclare, SessionAttach, PROTOCOL_HEADER,
};
use clacks_storage::StoreOp;

fn write(target: &str, name: &str, data: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), data)
}

fn header() -> BytesMut {
    let mut h = BytesMut::new();
    put_struct32(
        &mut h,
        &DeliveryProperties {
            routing_key: Some("q".into()),
            ttl: Some(1000),
            ..Default::default()
        }
        .to_struct32(),
    );
    let mut app = FieldTable::new();
    app.insert("k", "v");
    put_struct32(
        &mut h,
        &MessageProperties {
            content_length: Some(5),
            user_id: Some(bytes::Bytes::from_static(b"guest")),
            application_headers: Some(app),
            ..Default::default()
        }
        .to_struct32(),
    );
    h
}

fn main() -> std::io::Result<()> {
    let small = FrameWriter::new(4096);
    let mut stream = BytesMut::new();
    stream.put_slice(&PROTOCOL_HEADER);
    small.control(
        0,
        &Control::ConnectionStartOk(ConnectionStartOk {
            mechanism: Some("PLAIN".into()),
            response: Some(bytes::Bytes::from_static(b"\0guest\0guest")),
            locale: Some("en_US".into()),
            ..Default::default()
        }),
        &mut stream,
    );
    small.control(
        1,
        &Control::SessionAttach(SessionAttach {
            name: Some(bytes::Bytes::from_static(b"s")),
            force: false,
        }),
        &mut stream,
    );
    small.command(
        1,
        true,
        &Command::QueueDeclare(QueueDeclare {
            queue: Some("q".into()),
            durable: true,
            ..Default::default()
        }),
        None,
        &mut stream,
    );
    let transfer = Command::MessageTransfer(MessageTransfer {
        destination: Some(String::new()),
        ..Default::default()
    });
    small.command(
        1,
        true,
        &transfer,
        Some((&header(), Some(b"hello"))),
        &mut stream,
    );
    // A body split over several frames.
    small.command(
        1,
        false,
        &transfer,
        Some((&header(), Some(&[7u8; 9000]))),
        &mut stream,
    );
    write("frames", "session", &stream[PROTOCOL_HEADER.len()..])?;
    amqp091_seeds()?;

    let mut control = BytesMut::new();
    small.control(
        0,
        &Control::ConnectionStartOk(ConnectionStartOk::default()),
        &mut control,
    );
    let mut seg = vec![0u8];
    seg.extend_from_slice(&control[12..]);
    write("commands", "control", &seg)?;
    let mut command = BytesMut::new();
    small.command(1, true, &transfer, None, &mut command);
    let mut seg = vec![1u8];
    seg.extend_from_slice(&command[12..]);
    write("commands", "command", &seg)?;
    let mut content = vec![2u8];
    let h = header();
    content.extend_from_slice(&h);
    content.extend_from_slice(&vec![b'x'; h.len()]);
    write("commands", "content", &content)?;

    write("sasl", "plain", b"\x00\x00guest\x00guest")?;
    write("sasl", "anonymous", b"\x01anonymous@host")?;
    write(
        "sasl",
        "scram",
        b"\x02n,,n=guest,r=fyko+d2lbbFgONRv9qkxdawL\xffc=biws,r=x,p=AAAA",
    )?;
    write("sasl", "amqplain", b"\x05\x05LOGINS\x00\x00\x00\x05guest")?;

    let ns = "declare namespace f='http://www.gonicus.de/Events';";
    write(
        "xquery",
        "clacks",
        format!("{ns} let $e := ./f:Event return $e/f:NodeStatus or $e/f:NodeLeave").as_bytes(),
    )?;
    write(
        "xquery",
        "weather",
        b"let $w := ./weather return $w/station = 'KRDU' and $w/temperature_f > 50",
    )?;
    write(
        "xquery",
        "external",
        b"declare variable $key external; ./a[@id = $key]/b != '' and not(exists(./c))",
    )?;

    let event = "<Event xmlns=\"http://www.gonicus.de/Events\"><NodeStatus><Id>n1</Id><Load>0.5</Load></NodeStatus></Event>";
    write("xml_route", "status", format!("v\0{event}").as_bytes())?;
    write(
        "xml_route",
        "weather",
        b"x\0<weather><station>KRDU</station><temperature_f>60</temperature_f></weather>",
    )?;

    write(
        "jsonrpc",
        "call",
        br#"{"method":"getNodes","params":[],"id":"1"}"#,
    )?;
    write(
        "jsonrpc",
        "named",
        br#"{"method":"echo","params":{"text":"hi","n":[1,2.5,null]},"id":7}"#,
    )?;

    write("events", "status", event.as_bytes())?;
    write("events", "announce", b"<?xml version='1.0'?><Event xmlns='http://www.gonicus.de/Events'><NodeAnnounce><Id>n1</Id><Name>host</Name></NodeAnnounce></Event>")?;

    write("acl", "broker", b"group admins admin alice\nacl allow admins all\nacl allow guest consume queue name=q*\nacl deny all all\n")?;
    write("acl", "agent", br#"{"roles": {"ops": [{"id": 3, "scope": "sub", "actions": [{"topic": "^org\\.clacks\\.command\\.", "acls": "x"}]}]}, "acl": {"org.clacks": [{"acls": [{"id": 1, "priority": 0, "scope": "psub", "members": ["alice"], "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.echo$", "acls": "x", "options": {"text": "^hi"}}]}, {"id": 2, "members": ["bob"], "rolename": "ops"}]}]}}"#)?;

    let ops = [
        StoreOp::PutQueue(clacks_storage::QueueRecord {
            name: "q".into(),
            alternate: None,
            auto_delete: false,
            args: bytes::Bytes::new(),
        }),
        StoreOp::Enqueue {
            queue: "q".into(),
            seq: 1,
            data: clacks_broker::core::Message::new("q", "stored").encode_stored(),
        },
        StoreOp::Delivered {
            queue: "q".into(),
            seq: 1,
        },
    ];
    let mut records = Vec::new();
    if let Ok(writes) = clacks_storage::encode_records(&ops) {
        for (k, v) in writes {
            let v = v.unwrap_or_default();
            records.push(u8::try_from(k.len()).unwrap_or(u8::MAX));
            records.extend_from_slice(&k);
            records.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
            records.extend_from_slice(&v);
        }
    }
    write("recovery", "records", &records)
}

/// A 0-9-1 session's frames: start-ok, channel open, a publish with every property, a
/// body split over frames, an ack and a heartbeat.
fn amqp091_seeds() -> std::io::Result<()> {
    use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldTable};
    use clacks_broker::server::amqp091::frames::Writer;

    let mut w = Writer::new(4096);
    let mut out = BytesMut::new();
    w.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
            ..Default::default()
        })),
        &mut out,
    );
    w.method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})), &mut out);
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongInt(7));
    headers.insert("s".into(), AMQPValue::LongString("text".into()));
    let props = basic::AMQPProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("c".into())
        .with_reply_to("r".into())
        .with_expiration("1000".into())
        .with_message_id("6ba7b810-9dad-11d1-80b4-00c04fd430c8".into())
        .with_timestamp(1)
        .with_type("t".into())
        .with_user_id("guest".into())
        .with_app_id("a".into());
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        routing_key: "q".into(),
        ..Default::default()
    }));
    w.content(1, publish, props, &[7u8; 9000], &mut out);
    w.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: true,
        })),
        &mut out,
    );
    w.heartbeat(&mut out);
    write("amqp091", "session", &out)
}

//! The fuzz targets' shared harnesses. Each binary in `src/bin` feeds AFL's input to one of
//! these; a harness must never panic on any input (a panic is a finding) and must not keep
//! state between inputs that changes what the next one does.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use clacks_broker::core::{Broker, Message, SessionId};
use clacks_broker::wire::{assembly, Assembler, Content, FieldTable, FrameCodec, Value};
use tokio_util::codec::Decoder;

/// Frames through the codec and the assembler, as the server reads a socket.
pub fn frames(data: &[u8]) {
    let mut input = BytesMut::from(data);
    let mut codec = FrameCodec::new(0xffff);
    let mut assembler = Assembler::new(1 << 20);
    while let Ok(Some(frame)) = codec.decode(&mut input) {
        if assembler.push(frame).is_err() {
            break;
        }
    }
}

/// AMQP 0-9-1 frames as the 0-9-1 door reads a socket: framing, methods and content
/// headers, and the headers' properties mapped to the broker's and back.
pub fn amqp091(data: &[u8]) {
    use clacks_broker::server::amqp091::{frames, properties};
    let mut input = BytesMut::from(data);
    while let Ok(Some(frame)) = frames::next(&mut input, 131_072) {
        if let frames::Frame::Header(_, _, props) = frame {
            let (delivery, message) = properties::to_010(&props);
            let _ = properties::to_091(&delivery, Some(&message));
        }
    }
}

/// One control or command segment, and a message header and body, decoded as the session
/// decodes them.
pub fn commands(data: &[u8]) {
    let (first, rest) = data.split_at(data.len().min(1));
    let segment = Bytes::copy_from_slice(rest);
    match first.first().copied().unwrap_or(0) % 3 {
        0 => {
            let _ = assembly::decode_control(&mut segment.clone());
        }
        1 => {
            let _ = assembly::decode_command(&mut segment.clone());
        }
        _ => {
            let (header, body) = rest.split_at(rest.len() / 2);
            let content = Content {
                header: Bytes::copy_from_slice(header),
                body: Bytes::copy_from_slice(body),
                has_body: true,
            };
            if let Ok(mut draft) = clacks_broker::core::Draft::from_content(Some(&content)) {
                draft.stamp_user_id("guest");
                let msg = draft.seal();
                let _ = msg.properties();
                let _ = msg.delivery_header(true);
                let _ = Message::decode_stored(&msg.encode_stored());
            }
        }
    }
}

/// Splits `data` at the first NUL: (before, after).
fn split_fields(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// A SASL exchange against an authenticator with no local users (a verification that
/// would hash a password fails before it: the parsers are what is fuzzed). The first byte
/// picks the mechanism, parts separated by 0xFF bytes are the initial response and later answers.
pub fn sasl(data: &[u8]) {
    use clacks_broker::auth::{AuthConfig, Authenticator, PeerInfo, Step};
    static AUTH: OnceLock<Option<Authenticator>> = OnceLock::new();
    let Some(auth) = AUTH
        .get_or_init(|| {
            let config = AuthConfig {
                allow_anonymous: true,
                ..AuthConfig::default()
            };
            Authenticator::new(config, Default::default()).ok()
        })
        .as_ref()
    else {
        return;
    };
    let mechanisms = [
        "PLAIN",
        "ANONYMOUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "EXTERNAL",
        "AMQPLAIN",
    ];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mechanism = mechanisms[usize::from(pick) % mechanisms.len()];
    let mut parts = rest.split(|&b| b == 0xff);
    let initial = parts.next().unwrap_or(&[]);
    let peer = PeerInfo {
        addr: None,
        local: None,
        tls: false,
        transport_user: None,
    };
    let (mut exchange, mut step) = auth.start(&peer, mechanism, initial);
    for answer in parts {
        match step {
            Step::Challenge(_) => step = exchange.step(answer),
            _ => break,
        }
    }
}

/// An xml exchange binding's `xquery` argument, compiled as a bind compiles it.
pub fn xquery(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut args = FieldTable::new();
    args.insert("xquery", Value::from(text.into_owned()));
    let _ = clacks_broker::core::exchange::xml::compile_binding_query(&args);
}

/// A message body (and a header value) routed through an xml exchange with bindings like
/// the Clacks agents' and a few more.
pub fn xml_route(data: &[u8]) {
    static BROKER: OnceLock<(Broker, SessionId)> = OnceLock::new();
    let (broker, _) = BROKER.get_or_init(|| {
        let b = Broker::new();
        let s = b.new_session(b.new_connection());
        let ns = "declare namespace f='http://www.gonicus.de/Events';";
        let queries = [
            format!("{ns} let $e := ./f:Event return $e/f:NodeStatus or $e/f:NodeLeave"),
            ".".to_string(),
            format!("{ns} ./f:Event/f:NodeAnnounce/f:Id = 'n1'"),
            "declare variable $h external; ./a/@b = $h or count(//c) > 2".to_string(),
            "let $w := ./weather return $w/temperature_f > 50 and not($w/x)".to_string(),
        ];
        for (i, q) in queries.iter().enumerate() {
            let name = format!("q{i}");
            let _ = b.declare_queue(
                s,
                clacks_broker::core::QueueDeclare {
                    name: name.clone(),
                    ..Default::default()
                },
            );
            let mut args = FieldTable::new();
            args.insert("xquery", Value::from(q.clone()));
            let _ = b.bind(s, &name, "xml", "k", &args);
        }
        (b, s)
    });
    let (header, body) = split_fields(data);
    let mut draft = clacks_broker::core::Draft::new("k", Bytes::copy_from_slice(body));
    let mut headers = FieldTable::new();
    headers.insert(
        "h",
        Value::from(String::from_utf8_lossy(header).into_owned()),
    );
    draft.set_properties(clacks_broker::wire::MessageProperties {
        application_headers: Some(headers),
        ..Default::default()
    });
    let _ = broker.publish("xml", Arc::new(draft.seal()));
    for i in 0..5 {
        let _ = broker.purge_queue(SessionId(0), &format!("q{i}"));
    }
}

/// A JSON-RPC request body as the agent receives it on its command queue.
pub fn jsonrpc(data: &[u8]) {
    let _ = clacks_agent::jsonrpc::parse_request(data);
}

/// An event document validated against the Clacks event schemas, as `sendEvent` does.
pub fn events(data: &[u8]) {
    static SCHEMAS: OnceLock<Option<clacks_agent::events::SchemaSet>> = OnceLock::new();
    let Some(schemas) = SCHEMAS
        .get_or_init(|| clacks_agent::events::SchemaSet::load(None).ok())
        .as_ref()
    else {
        return;
    };
    let _ = schemas.validate(&String::from_utf8_lossy(data));
}

/// The broker's ACL file and the agent's ACL file.
pub fn acl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<clacks_broker::auth::Acl>();
    let _ = clacks_agent::acl::AgentAcl::parse(&text, "org.clacks", &["admin".to_string()]);
}

/// Stored records as a damaged data directory might hold them, recovered as the broker
/// starts: length-prefixed keys and values, read in key order, then the broker rebuilt.
pub fn recovery(data: &[u8]) {
    let mut entries = Vec::new();
    let mut rest = data;
    while let [klen, tail @ ..] = rest {
        let klen = usize::from(*klen);
        let Some(key) = tail.get(..klen) else { break };
        let tail = &tail[klen..];
        let [v0, v1, tail @ ..] = tail else { break };
        let vlen = usize::from(u16::from_be_bytes([*v0, *v1]));
        let Some(value) = tail.get(..vlen) else { break };
        entries.push((key.to_vec(), value.to_vec()));
        rest = &tail[vlen..];
    }
    entries.sort();
    entries.dedup_by(|a, b| a.0 == b.0);
    let Ok(recovered) = clacks_storage::recover_entries(entries.into_iter().map(Ok)) else {
        return;
    };
    let store = Arc::new(clacks_storage::MemoryStore::new());
    if let Ok(journal) = clacks_storage::GroupCommit::start(store) {
        let _ = Broker::recover(Arc::new(journal), recovered);
    }
}

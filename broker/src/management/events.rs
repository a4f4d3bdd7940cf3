//! QMF events: what the model and the server report, as version 2 data indications on
//! `qmf.default.topic` (`agent.ind.event.<package>.<event>.<severity>.apache_org.qpidd`).

use crate::core::observer::{Crossing, ModelEvent};
use crate::core::Message;
use crate::server::ConnectionRegistry;
use crate::wire::{FieldTable, Value};

use super::codec::{list_body, v2_headers, v2_message, PRODUCT, VENDOR};
use super::objects::{connection_address, now_ns};
use super::schema::{Class, Schema, Type, PACKAGE};

/// A package or class name as a routing key word: dots become underscores.
pub fn key_word(s: &str) -> String {
    s.replace('.', "_")
}

fn severity_word(s: u8) -> &'static str {
    match s {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "error",
        4 => "warn",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

/// The message announcing one event of `class` with argument values `args` (by name; each
/// is encoded as the schema types it).
pub fn event_message(agent: &str, class: &Class, args: &[(&str, Value)]) -> (String, Message) {
    let mut values = FieldTable::new();
    for a in &class.arguments {
        let Some((_, v)) = args.iter().find(|(n, _)| *n == a.name) else {
            continue;
        };
        values.insert(a.name, typed(a.kind, v.clone()));
    }
    let mut m = FieldTable::new();
    m.insert("_schema_id", Value::Map(class.schema_id()));
    m.insert("_values", Value::Map(values));
    m.insert("_timestamp", Value::Uint64(now_ns()));
    m.insert("_severity", Value::Uint8(class.severity));
    let key = format!(
        "agent.ind.event.{}.{}.{}.{}.{}",
        key_word(PACKAGE),
        key_word(class.name),
        severity_word(class.severity),
        key_word(VENDOR),
        key_word(PRODUCT)
    );
    let mut headers = v2_headers("indication", "_data_indication", agent);
    headers.insert("qmf.content", "_event");
    let msg = v2_message(
        &key,
        headers,
        None,
        "amqp/list",
        list_body(vec![Value::Map(m)]),
    );
    (key, msg)
}

/// A value as the schema type wants it on the wire.
fn typed(kind: Type, v: Value) -> Value {
    match (kind, &v) {
        (Type::U64, _) => v.as_i64().map_or(v, |n| Value::Uint64(n.max(0) as u64)),
        (Type::Sstr | Type::Lstr, Value::Str8(s)) => Value::Str16(s.clone()),
        _ => v,
    }
}

/// Who did something: the connection's address and user (empty when unknown or the
/// broker itself).
fn who(connections: &ConnectionRegistry, connection: u64) -> (String, String) {
    match connections.get(connection) {
        Some(c) => (connection_address(&c), c.user),
        None => (String::new(), String::new()),
    }
}

/// An event to announce: its class, the connection that caused it if any (whose address
/// and user become `rhost` and `user`), and its other arguments.
type Raised = (&'static str, Option<u64>, Vec<(&'static str, Value)>);

/// The messages an event makes: `(exchange, message)` pairs to publish.
pub fn messages(
    agent: &str,
    connections: &ConnectionRegistry,
    event: ModelEvent,
) -> Vec<(String, Message)> {
    let schema = Schema::get();
    let s = |v: &str| Value::Str16(v.to_string());
    let opt = |v: &Option<String>| Value::Str16(v.clone().unwrap_or_default());
    let disp = |created: bool| s(if created { "created" } else { "existing" });
    let mut out: Vec<Raised> = Vec::new();
    match event {
        ModelEvent::QueueDeclared {
            connection,
            name,
            durable,
            exclusive,
            auto_delete,
            alternate,
            args,
            created,
        } => {
            out.push((
                "queueDeclare",
                Some(connection),
                vec![
                    ("qName", s(&name)),
                    ("durable", Value::Bool(durable)),
                    ("excl", Value::Bool(exclusive)),
                    ("autoDel", Value::Bool(auto_delete)),
                    ("altEx", opt(&alternate)),
                    ("args", Value::Map(args)),
                    ("disp", disp(created)),
                ],
            ));
        }
        ModelEvent::QueueDeleted { connection, name } => {
            out.push(("queueDelete", Some(connection), vec![("qName", s(&name))]));
        }
        ModelEvent::ExchangeDeclared {
            connection,
            name,
            kind,
            alternate,
            durable,
            auto_delete,
            args,
            created,
        } => {
            out.push((
                "exchangeDeclare",
                Some(connection),
                vec![
                    ("exName", s(&name)),
                    ("exType", s(&kind)),
                    ("altEx", opt(&alternate)),
                    ("durable", Value::Bool(durable)),
                    ("autoDel", Value::Bool(auto_delete)),
                    ("args", Value::Map(args)),
                    ("disp", disp(created)),
                ],
            ));
        }
        ModelEvent::ExchangeDeleted { connection, name } => {
            out.push((
                "exchangeDelete",
                Some(connection),
                vec![("exName", s(&name))],
            ));
        }
        ModelEvent::Bound {
            connection,
            exchange,
            queue,
            key,
            args,
        } => {
            out.push((
                "bind",
                Some(connection),
                vec![
                    ("exName", s(&exchange)),
                    ("qName", s(&queue)),
                    ("key", s(&key)),
                    ("args", Value::Map(args)),
                ],
            ));
        }
        ModelEvent::Unbound {
            connection,
            exchange,
            queue,
            key,
        } => {
            out.push((
                "unbind",
                Some(connection),
                vec![
                    ("exName", s(&exchange)),
                    ("qName", s(&queue)),
                    ("key", s(&key)),
                ],
            ));
        }
        ModelEvent::Subscribed {
            connection,
            queue,
            destination,
            exclusive,
        } => {
            out.push((
                "subscribe",
                Some(connection),
                vec![
                    ("qName", s(&queue)),
                    ("dest", s(&destination)),
                    ("excl", Value::Bool(exclusive)),
                    ("args", Value::Map(FieldTable::new())),
                ],
            ));
        }
        ModelEvent::Unsubscribed {
            connection,
            destination,
        } => {
            out.push((
                "unsubscribe",
                Some(connection),
                vec![("dest", s(&destination))],
            ));
        }
        ModelEvent::Threshold {
            queue,
            crossing,
            compat,
            msg_depth,
            byte_depth,
        } => {
            let args = vec![
                ("qName", s(&queue)),
                ("msgDepth", Value::Uint64(msg_depth)),
                ("byteDepth", Value::Uint64(byte_depth)),
            ];
            match crossing {
                Crossing::Up => {
                    out.push(("queueThresholdCrossedUpward", None, args.clone()));
                    if compat {
                        out.push(("queueThresholdExceeded", None, args));
                    }
                }
                Crossing::Down => out.push(("queueThresholdCrossedDownward", None, args)),
            }
        }
        ModelEvent::ClientConnected {
            address,
            user,
            properties,
        } => out.push((
            "clientConnect",
            None,
            vec![
                ("rhost", s(&address)),
                ("user", s(&user)),
                ("properties", Value::Map(properties)),
            ],
        )),
        ModelEvent::ClientDisconnected {
            address,
            user,
            properties,
        } => out.push((
            "clientDisconnect",
            None,
            vec![
                ("rhost", s(&address)),
                ("user", s(&user)),
                ("properties", Value::Map(properties)),
            ],
        )),
    }
    out.into_iter()
        .filter_map(|(name, connection, mut args)| {
            if let Some(connection) = connection {
                let (rhost, user) = who(connections, connection);
                args.extend([("rhost", s(&rhost)), ("user", s(&user))]);
            }
            let class = schema.class(name)?;
            let (_, msg) = event_message(agent, class, &args);
            Some(("qmf.default.topic".to_string(), msg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_event_without_a_down_level_also_says_exceeded() {
        let reg = ConnectionRegistry::default();
        let out = messages(
            "apache.org:qpidd:x",
            &reg,
            ModelEvent::Threshold {
                queue: "q".into(),
                crossing: Crossing::Up,
                compat: true,
                msg_depth: 5,
                byte_depth: 170,
            },
        );
        let keys: Vec<String> = out
            .iter()
            .map(|(_, m)| m.routing_key().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "agent.ind.event.org_apache_qpid_broker.queueThresholdCrossedUpward.info.apache_org.qpidd",
                "agent.ind.event.org_apache_qpid_broker.queueThresholdExceeded.warn.apache_org.qpidd"
            ]
        );
        let list = super::super::codec::read_list(&out[0].1.body).expect("list");
        let Some(Value::Map(event)) = list.0.first() else {
            panic!("one event map");
        };
        let Some(Value::Map(values)) = event.get("_values") else {
            panic!("values");
        };
        assert_eq!(values.get("msgDepth"), Some(&Value::Uint64(5)));
        assert_eq!(values.get("qName").and_then(Value::as_str), Some("q"));
    }
}

//! `xml` routing (qpidd's xml exchange): each binding carries an `xquery` argument, and a
//! message goes to a binding's queue when the binding key equals the routing key and the
//! query's effective boolean value over the message body is true. Application headers are
//! bound to the query's declared external variables.
//!
//! Queries run on the threads of [`pool`], never under the broker lock: the router hands
//! out its bindings, which a message's evaluation reads under their own lock. Queries
//! inside the compiled subset ([`filter`]) are answered by the broker's own evaluator,
//! indexed over all bindings of the exchange; the rest by the XPath engine.

pub mod filter;
mod pool;
pub mod prolog;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::core::error::Error;
use crate::core::message::Message;
use crate::wire::{FieldTable, Value};

pub use prolog::XQuery;

/// One xml binding as the evaluation threads see it.
#[derive(Debug, Clone)]
pub struct XmlBinding {
    /// Unique for the life of the process, increasing: names the compiled query in each
    /// thread's cache, and orders the bindings.
    pub id: u64,
    /// The bound queue.
    pub queue: String,
    /// The binding key, compared with the routing key.
    pub key: String,
    /// The query, prolog taken apart.
    pub query: Arc<XQuery>,
}

/// The bindings of an xml exchange, and the compiled filters of those inside the subset.
#[derive(Debug, Default)]
pub struct XmlBindings {
    /// By id: in the order they were made.
    by_id: BTreeMap<u64, XmlBinding>,
    by_queue_and_key: HashMap<(String, String), u64>,
    filters: filter::FilterSet,
    /// How many bindings the engine evaluates (not compiled).
    engine: usize,
    /// Bindings per key.
    keys: HashMap<String, usize>,
}

impl XmlBindings {
    /// The bindings, in the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = &XmlBinding> {
        self.by_id.values()
    }

    /// Whether a binding of `key` exists.
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }
}

/// The bindings as evaluation threads share them: read while a message is evaluated,
/// written (briefly) by bind and unbind.
pub type SharedBindings = Arc<RwLock<XmlBindings>>;

/// An application header as a query's external variable sees it: strings as `xs:string`,
/// integers as `xs:integer`, floating point as `xs:double`, booleans as `xs:boolean`;
/// `None` (the empty sequence) when absent or of another type. Both evaluators type
/// headers by this one rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HeaderValue<'a> {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(&'a str),
}

pub(crate) fn header_value<'a>(
    headers: Option<&'a FieldTable>,
    name: &str,
) -> Option<HeaderValue<'a>> {
    let v = headers.and_then(|h| h.get(name))?;
    Some(match v {
        Value::Bool(b) => HeaderValue::Bool(*b),
        Value::Int8(_)
        | Value::Uint8(_)
        | Value::Int16(_)
        | Value::Uint16(_)
        | Value::Int32(_)
        | Value::Uint32(_)
        | Value::Int64(_) => HeaderValue::Int(v.as_i64()?),
        #[allow(clippy::cast_precision_loss)]
        Value::Uint64(u) => match i64::try_from(*u) {
            Ok(i) => HeaderValue::Int(i),
            Err(_) => HeaderValue::Num(*u as f64),
        },
        Value::Float(f) => HeaderValue::Num(f64::from(*f)),
        Value::Double(d) => HeaderValue::Num(*d),
        other => HeaderValue::Str(other.as_str()?),
    })
}

/// Bindings of an xml exchange.
#[derive(Debug, Default)]
pub struct XmlRouter {
    bindings: SharedBindings,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Parses and compiles the `xquery` argument of a binding.
///
/// # Errors
/// 541 (as qpidd) when the argument is missing or the query does not compile; the text says
/// why.
pub fn compile_binding_query(args: &FieldTable) -> Result<Arc<XQuery>, Error> {
    let text = match args.get("xquery") {
        None | Some(Value::Void) => {
            return Err(Error::Internal(
                "Failed to bind: missing xquery argument".into(),
            ))
        }
        Some(v) => v.as_str().ok_or_else(|| {
            Error::Internal("Failed to bind: the xquery argument must be a string".into())
        })?,
    };
    let bad = |why: String| Error::Internal(format!("Could not parse xquery: {why}: {text}"));
    let query = Arc::new(prolog::parse(text).map_err(bad)?);
    pool::check(query.clone()).map_err(bad)?;
    Ok(query)
}

impl XmlRouter {
    pub(super) fn add(
        &mut self,
        queue: &str,
        key: &str,
        args: &FieldTable,
        prepared: Option<Arc<XQuery>>,
    ) -> Result<(), Error> {
        let query = match prepared {
            Some(q) => q,
            None => compile_binding_query(args)?,
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let compiled = filter::Filter::compile(&query);
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        match compiled {
            Some(f) => b.filters.add(id, f),
            None => b.engine += 1,
        }
        b.by_queue_and_key
            .insert((queue.to_string(), key.to_string()), id);
        *b.keys.entry(key.to_string()).or_default() += 1;
        b.by_id.insert(
            id,
            XmlBinding {
                id,
                queue: queue.to_string(),
                key: key.to_string(),
                query,
            },
        );
        Ok(())
    }

    pub(super) fn remove(&mut self, queue: &str, key: &str) {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = b
            .by_queue_and_key
            .remove(&(queue.to_string(), key.to_string()))
        {
            b.by_id.remove(&id);
            if let Some(n) = b.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    b.keys.remove(key);
                }
            }
            if b.filters.contains(id) {
                b.filters.remove(id);
            } else {
                b.engine = b.engine.saturating_sub(1);
            }
        }
    }

    /// The bindings, for evaluation outside the broker lock.
    pub fn snapshot(&self) -> SharedBindings {
        self.bindings.clone()
    }
}

/// Evaluates `bindings` against `msg` on the evaluation threads, blocking until they
/// answer: the queues matched, in binding order.
pub fn evaluate(bindings: SharedBindings, msg: Arc<Message>) -> Vec<String> {
    pool::route(bindings, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::broker::{ExchangeDeclare, QueueDeclare};
    use crate::core::{Broker, SessionId};
    use crate::wire::MessageProperties;

    const EVENTS_NS: &str = "http://www.gonicus.de/Events";

    fn event(child: &str) -> String {
        format!("<Event xmlns=\"{EVENTS_NS}\"><{child}><Id>n1</Id></{child}></Event>")
    }

    const WEATHER_QUERY: &str = "let $w := ./weather \
        return $w/station = 'Raleigh-Durham International Airport (KRDU)' \
        and $w/temperature_f > 50 \
        and $w/temperature_f - $w/dewpoint > 5 \
        and $w/wind_speed_mph > 7 \
        and $w/wind_speed_mph < 20";

    fn weather(station: &str, wind: i32, temp: i32, dew: i32) -> String {
        format!(
            "<weather><station>{station}</station><wind_speed_mph>{wind}</wind_speed_mph>\
             <temperature_f>{temp}</temperature_f><dewpoint>{dew}</dewpoint></weather>"
        )
    }

    fn xquery(q: &str) -> FieldTable {
        let mut args = FieldTable::new();
        args.insert("xquery", q);
        args
    }

    fn setup(queues: &[&str]) -> (Broker, SessionId) {
        let b = Broker::new();
        let s = b.new_session(b.new_connection());
        for q in queues {
            b.declare_queue(
                s,
                QueueDeclare {
                    name: (*q).into(),
                    ..QueueDeclare::default()
                },
            )
            .expect("declare queue");
        }
        (b, s)
    }

    fn depth(b: &Broker, q: &str) -> u32 {
        b.query_queue(q).map_or(0, |i| i.message_count)
    }

    fn with_headers(key: &str, body: &str, headers: &[(&str, Value)]) -> Arc<Message> {
        let mut m = crate::core::Draft::new(key, body.to_string());
        let mut h = FieldTable::new();
        for (k, v) in headers {
            h.insert(*k, v.clone());
        }
        m.set_properties(MessageProperties {
            application_headers: Some(h),
            ..MessageProperties::default()
        });
        Arc::new(m.seal())
    }

    fn publish(b: &Broker, key: &str, body: &str) -> usize {
        b.publish("xml", Arc::new(Message::new(key, body.to_string())))
            .expect("publish")
    }

    #[test]
    fn clacks_events_by_namespace() {
        let (b, s) = setup(&["nodes", "all", "other"]);
        let q = format!(
            "declare namespace f='{EVENTS_NS}'; \
             let $e := ./f:Event return $e/f:NodeStatus or $e/f:NodeLeave"
        );
        b.bind(s, "nodes", "xml", "event", &xquery(&q))
            .expect("bind");
        b.bind(s, "all", "xml", "event", &xquery("."))
            .expect("bind");
        b.bind(s, "other", "xml", "other-key", &xquery("."))
            .expect("bind");
        assert_eq!(publish(&b, "event", &event("NodeStatus")), 2);
        assert_eq!(publish(&b, "event", &event("NodeLeave")), 2);
        assert_eq!(publish(&b, "event", &event("UserLogin")), 1);
        // Same local name, no namespace: not a Clacks event.
        assert_eq!(
            publish(&b, "event", "<Event><NodeStatus/></Event>"),
            1,
            "only the catch-all binding"
        );
        assert_eq!(depth(&b, "nodes"), 2);
        assert_eq!(depth(&b, "all"), 4);
        assert_eq!(depth(&b, "other"), 0);
    }

    #[test]
    fn bindings_sharing_a_query_all_get_the_message() {
        let queues: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        let (b, s) = setup(&names);
        for q in &names[..4] {
            b.bind(s, q, "xml", "k", &xquery("./a")).expect("bind");
        }
        b.bind(s, "q4", "xml", "k", &xquery("./b")).expect("bind");
        assert_eq!(publish(&b, "k", "<a/>"), 4);
        assert_eq!(publish(&b, "k", "<b/>"), 1);
        assert_eq!(depth(&b, "q3"), 1);
        assert_eq!(depth(&b, "q4"), 1);
    }

    #[test]
    fn default_element_namespace() {
        let (b, s) = setup(&["q"]);
        let q = format!("declare default element namespace '{EVENTS_NS}'; /Event/NodeStatus");
        b.bind(s, "q", "xml", "k", &xquery(&q)).expect("bind");
        assert_eq!(publish(&b, "k", &event("NodeStatus")), 1);
        assert_eq!(publish(&b, "k", &event("NodeLeave")), 0);
    }

    #[test]
    fn weather_example() {
        let (b, s) = setup(&["weather"]);
        b.bind(s, "weather", "xml", "weather", &xquery(WEATHER_QUERY))
            .expect("bind");
        let krdu = "Raleigh-Durham International Airport (KRDU)";
        assert_eq!(publish(&b, "weather", &weather(krdu, 16, 70, 35)), 1);
        assert_eq!(publish(&b, "weather", &weather(krdu, 16, 40, 35)), 0);
        assert_eq!(publish(&b, "weather", &weather(krdu, 25, 70, 35)), 0);
        assert_eq!(publish(&b, "weather", &weather(krdu, 16, 70, 68)), 0);
        assert_eq!(publish(&b, "weather", &weather("Boston", 16, 70, 35)), 0);
        // The binding key must equal the routing key.
        assert_eq!(publish(&b, "news", &weather(krdu, 16, 70, 35)), 0);
        assert_eq!(depth(&b, "weather"), 1);
        // Routing alone (transactions enqueue at commit) gives the same answer.
        let routed = b
            .route(
                "xml",
                &Arc::new(Message::new("weather", weather(krdu, 16, 70, 35))),
            )
            .expect("route");
        assert_eq!(routed, ["weather"]);
    }

    #[test]
    fn header_variables() {
        let (b, s) = setup(&["red", "big", "flag", "absent"]);
        let bind = |q: &str, text: &str| {
            b.bind(s, q, "xml", "k", &xquery(text)).expect("bind");
        };
        bind(
            "red",
            "declare variable $colour external; $colour = 'red' and ./a",
        );
        bind("big", "declare variable $size external; $size > 10");
        bind("flag", "declare variable $flag external; $flag");
        bind(
            "absent",
            "declare variable $missing external; empty($missing)",
        );
        let n = b
            .publish(
                "xml",
                with_headers(
                    "k",
                    "<a/>",
                    &[
                        ("colour", Value::from("red")),
                        ("size", Value::Int32(11)),
                        ("flag", Value::Bool(true)),
                    ],
                ),
            )
            .expect("publish");
        assert_eq!(n, 4);
        let n = b
            .publish(
                "xml",
                with_headers(
                    "k",
                    "<a/>",
                    &[
                        ("colour", Value::from("blue")),
                        ("size", Value::Double(2.5)),
                        ("flag", Value::Bool(false)),
                        ("missing", Value::Int64(1)),
                    ],
                ),
            )
            .expect("publish");
        assert_eq!(n, 0);
        // No body at all: queries on headers alone still decide.
        let n = b
            .publish("xml", with_headers("k", "", &[("size", Value::Uint64(99))]))
            .expect("publish");
        assert_eq!(n, 2, "big and absent");
        assert_eq!(depth(&b, "red"), 1);
        assert_eq!(depth(&b, "big"), 2);
    }

    #[test]
    fn malformed_bodies_match_nothing() {
        let (b, s) = setup(&["q", "catch"]);
        b.declare_exchange(ExchangeDeclare {
            name: "events".into(),
            kind: "xml".into(),
            alternate: Some("amq.fanout".into()),
            ..ExchangeDeclare::default()
        })
        .expect("declare");
        b.bind(s, "catch", "amq.fanout", "", &FieldTable::new())
            .expect("bind");
        b.bind(s, "q", "events", "k", &xquery(".")).expect("bind");
        let publish = |body: &[u8]| {
            b.publish("events", Arc::new(Message::new("k", body.to_vec())))
                .expect("publish")
        };
        for body in [
            &b"<a><b></a>"[..],
            b"not xml",
            b"<a/><b/>",
            b"\xff\xfe<a/>",
            b"<a>&undefined;</a>",
        ] {
            assert_eq!(publish(body), 1, "{body:?} goes to the alternate only");
        }
        assert_eq!(depth(&b, "q"), 0);
        assert_eq!(depth(&b, "catch"), 5);
        // And the exchange still works.
        assert_eq!(publish(b"<a/>"), 1);
        assert_eq!(depth(&b, "q"), 1);
    }

    #[test]
    fn deep_documents_and_queries_are_refused_cheaply() {
        let (b, s) = setup(&["q"]);
        b.bind(s, "q", "xml", "k", &xquery("//x")).expect("bind");
        for depth in [20_000, 300] {
            let body = format!("{}<x/>{}", "<a>".repeat(depth), "</a>".repeat(depth));
            assert_eq!(publish(&b, "k", &body), 0, "depth {depth}");
        }
        let body = format!("{}<x/>{}", "<a>".repeat(200), "</a>".repeat(200));
        assert_eq!(publish(&b, "k", &body), 1);
        let deep_query = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        let e = b
            .bind(s, "q", "xml", "deep", &xquery(&deep_query))
            .expect_err("too deep");
        assert!(e.to_string().contains("nest 5000 deep"), "{e}");
        assert_eq!(publish(&b, "k", "<x/>"), 1);
    }

    #[test]
    fn bind_refusals_are_541_and_name_the_problem() {
        let (b, s) = setup(&["q"]);
        let e = b
            .bind(s, "q", "xml", "k", &FieldTable::new())
            .expect_err("no xquery");
        assert_eq!(e.code().0, 541);
        assert!(e.to_string().contains("missing xquery"), "{e}");
        let e = b
            .bind(s, "q", "xml", "k", &xquery("./a[["))
            .expect_err("syntax");
        assert_eq!(e.code().0, 541);
        assert!(e.to_string().contains("Could not parse xquery"), "{e}");
        assert!(e.to_string().contains("./a[["), "{e}");
        let e = b
            .bind(s, "q", "xml", "k", &xquery("$undeclared = 1"))
            .expect_err("undeclared variable");
        assert_eq!(e.code().0, 541);
        let e = b
            .bind(
                s,
                "q",
                "xml",
                "k",
                &xquery("declare function local:f() { 1 }; local:f()"),
            )
            .expect_err("prolog");
        assert!(e.to_string().contains("unsupported prolog"), "{e}");
        let mut args = FieldTable::new();
        args.insert("xquery", Value::Int32(1));
        assert_eq!(
            b.bind(s, "q", "xml", "k", &args)
                .expect_err("type")
                .code()
                .0,
            541
        );
        assert!(b.bound("xml", Some("q"), None, None).queue_not_matched);
    }

    #[test]
    fn unbind_and_bound_with_arguments() {
        let (b, s) = setup(&["q"]);
        let args = xquery("./a");
        b.bind(s, "q", "xml", "k", &args).expect("bind");
        assert_eq!(publish(&b, "k", "<a/>"), 1);
        assert_eq!(
            b.bound("xml", Some("q"), Some("k"), Some(&args)),
            Default::default()
        );
        assert!(
            b.bound("xml", Some("q"), Some("k"), Some(&xquery("./b")))
                .args_not_matched
        );
        b.unbind(s, "q", "xml", "k").expect("unbind");
        assert_eq!(publish(&b, "k", "<a/>"), 0);
        assert!(b.bound("xml", Some("q"), None, None).queue_not_matched);
        // Bound again with another query: the new one applies.
        b.bind(s, "q", "xml", "k", &xquery("./b")).expect("bind");
        assert_eq!(publish(&b, "k", "<a/>"), 0);
        assert_eq!(publish(&b, "k", "<b/>"), 1);
    }

    #[test]
    fn xml_exchange_as_an_alternate() {
        let (b, s) = setup(&["hit"]);
        b.declare_exchange(ExchangeDeclare {
            name: "front".into(),
            kind: "direct".into(),
            alternate: Some("xml".into()),
            ..ExchangeDeclare::default()
        })
        .expect("declare");
        b.bind(s, "hit", "xml", "k", &xquery("./a")).expect("bind");
        let n = b
            .publish("front", Arc::new(Message::new("k", "<a/>")))
            .expect("publish");
        assert_eq!(n, 1);
        // Orphaned messages of a deleted queue pass through it too (evaluated under the
        // lock).
        b.bind(s, "hit", "xml", "orphans", &xquery("./a"))
            .expect("bind");
        b.declare_queue(
            s,
            QueueDeclare {
                name: "orphans".into(),
                alternate: Some("xml".into()),
                ..QueueDeclare::default()
            },
        )
        .expect("declare");
        for body in ["<a/>", "<b/>", "<a/>"] {
            b.publish("", Arc::new(Message::new("orphans", body)))
                .expect("publish");
        }
        b.delete_queue(s, "orphans", false, false).expect("delete");
        assert_eq!(depth(&b, "hit"), 3, "one from front, two <a/> orphans");
    }

    #[test]
    fn recovery_rebinds_queries_and_skips_those_that_no_longer_compile() {
        use clacks_storage::{
            BindingRecord, ExchangeRecord, GroupCommit, MemoryStore, QueueRecord, Recovered,
        };
        let encode = |args: &FieldTable| {
            let mut buf = bytes::BytesMut::new();
            crate::wire::prim::put_map(&mut buf, args);
            buf.freeze()
        };
        let queue = |name: &str| QueueRecord {
            name: name.into(),
            alternate: None,
            auto_delete: false,
            args: bytes::Bytes::new(),
        };
        let binding = |queue: &str, query: &str| BindingRecord {
            exchange: "ev".into(),
            queue: queue.into(),
            key: "k".into(),
            args: encode(&xquery(query)),
        };
        let recovered = Recovered {
            exchanges: vec![ExchangeRecord {
                name: "ev".into(),
                kind: "xml".into(),
                alternate: None,
                auto_delete: false,
                args: bytes::Bytes::new(),
            }],
            queues: vec![queue("good"), queue("bad")],
            bindings: vec![binding("good", "./a"), binding("bad", "./a[[")],
            ..Recovered::default()
        };
        let journal = Arc::new(GroupCommit::start(Arc::new(MemoryStore::new())).expect("journal"));
        let b = Broker::recover(journal, recovered).expect("a bad query is not fatal");
        let n = b
            .publish("ev", Arc::new(Message::new("k", "<a/>")))
            .expect("publish");
        assert_eq!(n, 1);
        assert_eq!(depth(&b, "good"), 1);
        assert!(b.bound("ev", Some("bad"), None, None).queue_not_matched);
    }
}

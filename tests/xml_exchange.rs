//! The xml exchange end to end on the real binary: Clacks events and Qpid's weather example
//! through our client and through qpid.messaging addresses with x-bindings, errors as qpidd
//! gives them, and durable xml bindings across a restart.

mod common;

use std::process::Command;

use clacks_broker::client::{ConnectOptions, Connection, Message, Session};
use clacks_broker::wire::{
    ExchangeBind, ExchangeBound, ExchangeDeclare, ExchangeUnbind, FieldTable, QueueDeclare,
};
use common::{bodies, qpidpy, Binary};

const EVENTS_NS: &str = "http://www.gonicus.de/Events";

fn node_query() -> String {
    format!(
        "declare namespace f='{EVENTS_NS}'; \
         let $e := ./f:Event return $e/f:NodeStatus or $e/f:NodeLeave"
    )
}

fn event(child: &str, id: u32) -> String {
    format!("<Event xmlns=\"{EVENTS_NS}\"><{child}><Id>{id}</Id></{child}></Event>")
}

const WEATHER_QUERY: &str = "let $w := ./weather \
    return $w/station = 'Raleigh-Durham International Airport (KRDU)' \
    and $w/temperature_f > 50 \
    and $w/temperature_f - $w/dewpoint > 5 \
    and $w/wind_speed_mph > 7 \
    and $w/wind_speed_mph < 20";

fn xquery(q: &str) -> FieldTable {
    let mut args = FieldTable::new();
    args.insert("xquery", q);
    args
}

async fn session_on(broker: &Binary) -> (Connection, Session) {
    let url = format!("amqp://guest:guest@{}", broker.addr);
    let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
        .await
        .expect("connect");
    let s = conn.session_unique().await.expect("session");
    (conn, s)
}

async fn queue(s: &Session, name: &str, durable: bool) {
    s.declare_queue(QueueDeclare {
        queue: Some(name.into()),
        durable,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare queue");
}

fn bind(queue: &str, exchange: &str, key: &str, args: Option<FieldTable>) -> ExchangeBind {
    ExchangeBind {
        queue: Some(queue.into()),
        exchange: Some(exchange.into()),
        binding_key: Some(key.into()),
        arguments: args,
    }
}

#[test]
fn events_weather_and_headers_through_the_predeclared_xml_exchange() {
    let broker = Binary::start("");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_conn, s) = session_on(&broker).await;
        for q in ["nodes", "weather", "red", "all"] {
            queue(&s, q, false).await;
        }
        s.bind(bind("nodes", "xml", "event", Some(xquery(&node_query()))))
            .await
            .expect("bind nodes");
        s.bind(bind("all", "xml", "event", Some(xquery("."))))
            .await
            .expect("bind all");
        s.bind(bind(
            "weather",
            "xml",
            "weather",
            Some(xquery(WEATHER_QUERY)),
        ))
        .await
        .expect("bind weather");
        s.bind(bind(
            "red",
            "xml",
            "event",
            Some(xquery("declare variable $colour external; $colour = 'red'")),
        ))
        .await
        .expect("bind red");

        // Pipelined, so that order through the evaluation threads is visible.
        let kinds = ["NodeStatus", "UserLogin", "NodeLeave", "NodeStatus"];
        let mut pending = Vec::new();
        for i in 0..40u32 {
            let kind = kinds[i as usize % kinds.len()];
            let mut m = Message::new(event(kind, i)).with_routing_key("event");
            if i % 10 == 0 {
                m = m.with_header("colour", "red");
            }
            pending.push(s.transfer("xml", m).await.expect("transfer"));
        }
        // Not XML at all: matches nothing and the session carries on.
        s.send("xml", Message::new("<Event>").with_routing_key("event"))
            .await
            .expect("malformed body is accepted");
        for p in pending {
            p.await.expect("completed");
        }
        let want: Vec<String> = (0..40u32)
            .filter(|i| kinds[*i as usize % kinds.len()] != "UserLogin")
            .map(|i| event(kinds[i as usize % kinds.len()], i))
            .collect();
        assert_eq!(bodies(&s, "nodes").await, want, "node events, in order");
        assert_eq!(bodies(&s, "all").await.len(), 40);
        assert_eq!(
            bodies(&s, "red").await,
            [0u32, 10, 20, 30]
                .iter()
                .map(|i| event(kinds[*i as usize % kinds.len()], *i))
                .collect::<Vec<_>>()
        );

        let station = "Raleigh-Durham International Airport (KRDU)";
        for (st, wind, temp, dew) in [
            (station, 16, 70, 35),
            (station, 16, 40, 35),
            ("Boston Logan (KBOS)", 16, 70, 35),
            (station, 8, 60, 50),
        ] {
            let body = format!(
                "<weather><station>{st}</station><wind_speed_mph>{wind}</wind_speed_mph>\
                 <temperature_f>{temp}</temperature_f><dewpoint>{dew}</dewpoint></weather>"
            );
            s.send("xml", Message::new(body).with_routing_key("weather"))
                .await
                .expect("send");
        }
        let got = bodies(&s, "weather").await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("<temperature_f>70<") && got[1].contains("<dewpoint>50<"));

        // exchange.bound with the query as argument, then unbind.
        let bound = |args: FieldTable| ExchangeBound {
            exchange: Some("xml".into()),
            queue: Some("weather".into()),
            binding_key: Some("weather".into()),
            arguments: Some(args),
        };
        let b = s.bound(bound(xquery(WEATHER_QUERY))).await.expect("bound");
        assert!(!b.args_not_matched && !b.key_not_matched && !b.queue_not_matched);
        let b = s.bound(bound(xquery("./other"))).await.expect("bound");
        assert!(b.args_not_matched);
        s.unbind(ExchangeUnbind {
            queue: Some("weather".into()),
            exchange: Some("xml".into()),
            binding_key: Some("weather".into()),
        })
        .await
        .expect("unbind");
        s.send(
            "xml",
            Message::new(format!(
                "<weather><station>{station}</station><wind_speed_mph>16</wind_speed_mph>\
                 <temperature_f>70</temperature_f><dewpoint>35</dewpoint></weather>"
            ))
            .with_routing_key("weather"),
        )
        .await
        .expect("send");
        assert!(bodies(&s, "weather").await.is_empty(), "unbound");
    });
}

#[test]
fn bad_binds_fail_with_internal_error_naming_the_problem() {
    let broker = Binary::start("");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (conn, s) = session_on(&broker).await;
        queue(&s, "q", false).await;
        let e = s
            .bind(bind("q", "xml", "k", None))
            .await
            .expect_err("no xquery");
        assert_eq!(e.session_code(), Some(541), "{e}");
        assert!(e.to_string().contains("missing xquery argument"), "{e}");

        let s = conn.session_unique().await.expect("session");
        let e = s
            .bind(bind("q", "xml", "k", Some(xquery("let $x := ./a return"))))
            .await
            .expect_err("bad query");
        assert_eq!(e.session_code(), Some(541), "{e}");
        assert!(e.to_string().contains("Could not parse xquery"), "{e}");

        // The broker is unharmed: a good bind on a fresh session works.
        let s = conn.session_unique().await.expect("session");
        s.bind(bind("q", "xml", "k", Some(xquery("./a"))))
            .await
            .expect("bind");
        s.send("xml", Message::new("<a/>").with_routing_key("k"))
            .await
            .expect("send");
        assert_eq!(bodies(&s, "q").await, ["<a/>"]);
    });
}

#[test]
fn durable_xml_exchange_and_bindings_survive_a_restart() {
    let broker = Binary::start("");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_conn, s) = session_on(&broker).await;
        s.declare_exchange(ExchangeDeclare {
            exchange: Some("clacks.events".into()),
            r#type: Some("xml".into()),
            durable: true,
            ..ExchangeDeclare::default()
        })
        .await
        .expect("declare exchange");
        queue(&s, "dnodes", true).await;
        queue(&s, "dweather", true).await;
        s.bind(bind(
            "dnodes",
            "clacks.events",
            "event",
            Some(xquery(&node_query())),
        ))
        .await
        .expect("bind");
        s.bind(bind(
            "dweather",
            "xml",
            "weather",
            Some(xquery(WEATHER_QUERY)),
        ))
        .await
        .expect("bind");
    });
    let broker = Binary::start_in(broker.kill(), "");
    rt.block_on(async {
        let (_conn, s) = session_on(&broker).await;
        let x = s.query_exchange("clacks.events").await.expect("query");
        assert_eq!(x.r#type.as_deref(), Some("xml"));
        for kind in ["NodeStatus", "UserLogin"] {
            s.send(
                "clacks.events",
                Message::new(event(kind, 1)).with_routing_key("event"),
            )
            .await
            .expect("send");
        }
        assert_eq!(bodies(&s, "dnodes").await, [event("NodeStatus", 1)]);
        s.send(
            "xml",
            Message::new(
                "<weather><station>Raleigh-Durham International Airport (KRDU)</station>\
                 <wind_speed_mph>16</wind_speed_mph><temperature_f>70</temperature_f>\
                 <dewpoint>35</dewpoint></weather>",
            )
            .with_routing_key("weather"),
        )
        .await
        .expect("send");
        assert_eq!(bodies(&s, "dweather").await.len(), 1);
        let b = s
            .bound(ExchangeBound {
                exchange: Some("xml".into()),
                queue: Some("dweather".into()),
                binding_key: Some("weather".into()),
                arguments: Some(xquery(WEATHER_QUERY)),
            })
            .await
            .expect("bound");
        assert!(!b.args_not_matched, "the query came back with the binding");
    });
}

const PY_XBINDINGS: &str = r#"
import sys
from qpid.messaging import Connection, Message
weather_q = sys.argv[2]
events_q = sys.argv[3]
c = Connection(sys.argv[1], reconnect=False)
c.open()
s = c.session()
weather = s.receiver("wq; {create: always, node: {type: queue, x-bindings: "
                     "[{exchange: 'xml', key: 'weather', arguments: {xquery: \"%s\"}}]}}" % weather_q)
events = s.receiver("eq; {create: always, node: {type: queue, x-bindings: "
                    "[{exchange: 'xml', key: 'event', arguments: {xquery: \"%s\"}}]}}" % events_q)
snd = s.sender("xml/weather")
def obs(station, wind, temp, dew):
    return ("<weather><station>%s</station><wind_speed_mph>%d</wind_speed_mph>"
            "<temperature_f>%d</temperature_f><dewpoint>%d</dewpoint></weather>"
            % (station, wind, temp, dew))
krdu = "Raleigh-Durham International Airport (KRDU)"
for o in [obs(krdu, 16, 70, 35), obs(krdu, 30, 70, 35), obs("Boston Logan (KBOS)", 16, 70, 35),
          obs(krdu, 12, 55, 40)]:
    snd.send(Message(o))
ev = s.sender("xml/event")
ns = "http://www.gonicus.de/Events"
ev.send(Message('<Event xmlns="%s"><NodeStatus><Id>a</Id></NodeStatus></Event>' % ns,
                properties={"source": "node-a", "priority": 7}))
ev.send(Message('<Event xmlns="%s"><NodeStatus><Id>b</Id></NodeStatus></Event>' % ns,
                properties={"source": "node-b", "priority": 7}))
ev.send(Message('<Event xmlns="%s"><NodeStatus><Id>c</Id></NodeStatus></Event>' % ns,
                properties={"source": "node-a", "priority": 1}))
ev.send(Message('not xml', properties={"source": "node-a", "priority": 7}))
ev.send(Message('<Event xmlns="%s"><UserLogin/></Event>' % ns,
                properties={"source": "node-a", "priority": 7}))
for r in [weather, weather, events]:
    m = r.fetch(timeout=10)
    print(m.content)
s.acknowledge()
for r in [weather, events]:
    try:
        m = r.fetch(timeout=0.5)
        print("unexpected:", m.content)
    except Exception:
        print("none")
c.close()
"#;

#[test]
fn qpid_messaging_x_bindings_carry_xquery() {
    let broker = Binary::start("");
    let events_query = format!(
        "declare namespace f='{EVENTS_NS}'; declare variable $source external; \
         declare variable $priority external; \
         let $e := ./f:Event return $e/f:NodeStatus and $source = 'node-a' and $priority > 5"
    );
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args(["-W", "ignore", "-c", PY_XBINDINGS])
        .args([&broker.url(), WEATHER_QUERY, &events_query])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains("<wind_speed_mph>16<"), "{text}");
    assert!(lines[1].contains("<temperature_f>55<"), "{text}");
    assert!(lines[2].contains("<Id>a</Id>"), "{text}");
    assert_eq!(&lines[3..], ["none", "none"], "{text}");
}

#[test]
fn bench_through_an_xml_exchange_routes_every_event_and_cleans_up() {
    let broker = Binary::start("");
    let url = broker.url();
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["bench", "-b", &url, "--xml-bindings", "5", "--count", "500"])
        .output()
        .expect("run clacks bench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("xml exchange with 5 binding(s)"), "{text}");
    assert!(text.contains("received: 500 msgs"), "{text}");
    let queue = text
        .split("queue ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("queue name")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_conn, s) = session_on(&broker).await;
        assert!(s.query_queue(&queue).await.expect("query").queue.is_none());
        let other = format!("{queue}-4");
        assert!(s.query_queue(&other).await.expect("query").queue.is_none());
        assert!(s.query_exchange(&queue).await.expect("query").not_found);
    });
}

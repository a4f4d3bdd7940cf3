//! Qpid's management tools against the real `clacks serve`: qpid-config, qpid-stat,
//! qpid-route, qpid-tool and qpid-printevents, as a user runs them, checked by what they
//! print. Hostile QMF requests and the ACL on management methods, through Qpid's Python
//! client. The tools come from tests/qpid-setup.sh (the README's test command runs it).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{qpidpy, Binary};

/// How long anything here may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs a Qpid tool; its standard output, or a panic with everything it printed.
fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(qpidpy().join("bin").join(name))
        .args(args)
        .output()
        .expect("run tool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The broker address with guest's credentials, as the tools take it.
fn guest(b: &Binary) -> String {
    format!("guest/guest@{}", b.url())
}

/// Sends `count` messages to `address` with `clacks send`.
fn send(b: &Binary, address: &str, count: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args([
            "send",
            "-b",
            &format!("guest:guest@{}", b.url()),
            "--content",
            "hello",
            "-m",
            &count.to_string(),
            address,
        ])
        .status()
        .expect("clacks send");
    assert!(status.success(), "clacks send failed");
}

/// Runs a `clacks` client command as guest until it succeeds (the agent may still be
/// starting); its output.
fn until_cli(b: &Binary, args: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
            .args(args)
            .args(["-b", &format!("amqp://guest:guest@{}", b.url())])
            .env("RUST_LOG", "warn")
            .output()
            .expect("clacks");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "clacks {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The line of `text` whose first word is `first`.
fn row<'a>(text: &'a str, first: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
}

#[test]
fn qpid_config_adds_lists_binds_and_deletes() {
    let b = Broker::start();
    let url = guest(&b.0);
    let cfg = |args: &[&str]| {
        let mut all = vec!["-b", url.as_str()];
        all.extend_from_slice(args);
        tool("qpid-config", &all)
    };
    cfg(&[
        "add",
        "queue",
        "limited",
        "--max-queue-count",
        "10",
        "--max-queue-size",
        "4096",
        "--limit-policy",
        "ring",
    ]);
    cfg(&["add", "queue", "latest", "--lvq-key", "station"]);
    cfg(&["add", "queue", "kept", "--durable"]);
    let queues = cfg(&["queues"]);
    let limited = row(&queues, "limited").expect("limited listed");
    for opt in [
        "--max-queue-count=10",
        "--max-queue-size=4096",
        "--limit-policy=ring",
    ] {
        assert!(limited.contains(&opt), "{opt} in {limited:?}");
    }
    assert!(row(&queues, "latest")
        .expect("latest listed")
        .contains(&"--lvq-key=station"));
    assert!(row(&queues, "kept").expect("kept").contains(&"--durable"));

    for kind in ["direct", "fanout", "topic", "headers", "xml"] {
        cfg(&["add", "exchange", kind, &format!("ex-{kind}")]);
    }
    // qpid-config lists exchanges as TYPE NAME ATTRIBUTES.
    let exchanges = cfg(&["exchanges"]);
    for kind in ["direct", "fanout", "topic", "headers", "xml"] {
        assert!(
            exchanges
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()[..]
                    .starts_with(&[kind, &format!("ex-{kind}")])),
            "ex-{kind} of type {kind}:\n{exchanges}"
        );
    }
    let query = b.0.dir.path().join("filter.xq");
    std::fs::write(&query, "./weather[temperature > 20]").expect("query file");
    cfg(&[
        "bind",
        "ex-xml",
        "limited",
        "warm",
        "-f",
        query.to_str().expect("path"),
    ]);
    cfg(&["bind", "ex-direct", "limited", "k1"]);
    cfg(&["bind", "ex-headers", "latest", "h", "all", "colour=red"]);
    let bound = cfg(&["-r", "exchanges"]);
    assert!(
        bound.contains("bind [warm] => limited {'xquery': './weather[temperature > 20]'}"),
        "xml binding with its query:\n{bound}"
    );
    assert!(bound.contains("bind [k1] => limited"), "{bound}");
    assert!(
        bound.contains("'colour': 'red'"),
        "headers binding: {bound}"
    );

    cfg(&["unbind", "ex-direct", "limited", "k1"]);
    assert!(!cfg(&["-r", "exchanges"]).contains("bind [k1] => limited"));
    cfg(&["del", "queue", "latest", "--force"]);
    cfg(&["del", "exchange", "ex-fanout"]);
    let queues = cfg(&["queues"]);
    assert!(row(&queues, "latest").is_none() && row(&queues, "limited").is_some());
    assert!(!cfg(&["exchanges"]).contains("ex-fanout"));

    // A failure is reported as qpidd's tools report it.
    let out = Command::new(qpidpy().join("bin/qpid-config"))
        .args(["-b", &url, "add", "queue", "limited"])
        .output()
        .expect("run");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("already exists"),
        "{text}"
    );
}

#[test]
fn qpid_stat_reports_queues_exchanges_connections_and_subscriptions() {
    let b = Broker::start();
    let url = guest(&b.0);
    tool("qpid-config", &["-b", &url, "add", "queue", "stats-q"]);
    send(&b.0, "stats-q", 3);
    send(&b.0, "amq.direct/nowhere", 2);

    let q = tool("qpid-stat", &["-b", &url, "-q"]);
    let r = row(&q, "stats-q").expect("stats-q listed");
    // queue dur autoDel excl msg msgIn msgOut bytes bytesIn bytesOut cons bind
    assert_eq!(
        &r[1..4],
        ["3", "3", "0"],
        "depth, enqueues, dequeues: {r:?}"
    );
    assert_eq!(r[r.len() - 1], "1", "bound to the default exchange");

    // The agent's broker target (`clacks queues`) reads the same counters.
    let ours = until_cli(&b.0, &["queues"]);
    let mine = row(&ours, "stats-q").expect("stats-q in clacks queues");
    // QUEUE DEPTH BYTES ENQ DEQ CONS BIND UNACKED
    assert_eq!(
        (mine[1], mine[2], mine[3], mine[4]),
        (r[1], r[4], r[2], r[3]),
        "clacks queues {mine:?} against qpid-stat {r:?}"
    );

    let one = tool("qpid-stat", &["-b", &url, "-q", "stats-q"]);
    assert!(one.contains("stats-q"), "{one}");

    let e = tool("qpid-stat", &["-b", &url, "-e"]);
    let direct = row(&e, "amq.direct").expect("amq.direct listed");
    // exchange type dur bind msgIn msgOut msgDrop ...
    assert_eq!(&direct[4..7], ["2", "0", "2"], "two dropped: {direct:?}");

    let c = tool("qpid-stat", &["-b", &url, "-c"]);
    assert!(
        c.lines()
            .any(|l| l.contains("qpid-stat") && l.contains("guest")),
        "the tool's own connection:\n{c}"
    );
    assert!(c.contains("clacks-agent"), "the agent's connection:\n{c}");

    let u = tool("qpid-stat", &["-b", &url, "-u"]);
    assert!(
        u.lines()
            .any(|l| l.contains("org.clacks.command.core") && l.contains("in-process")),
        "the agent's subscription with its connection:\n{u}"
    );

    let g = tool("qpid-stat", &["-b", &url, "-g"]);
    assert!(g.contains("total-enqueues"), "{g}");
    let no_route = row(&g, "discards-no-route").expect("no-route row");
    assert!(
        no_route[1].parse::<u64>().expect("count") >= 2,
        "{no_route:?}"
    );
}

#[test]
fn qpid_route_links_brokers_and_a_message_crosses() {
    let dest = Broker::start();
    let src = Broker::start();
    let (d, s) = (guest(&dest.0), guest(&src.0));
    tool("qpid-route", &["link", "add", &d, &s]);
    let links = tool("qpid-route", &["link", "list", &d]);
    let port = src.0.addr.port().to_string();
    assert!(
        links
            .lines()
            .any(|l| l.contains(&port) && l.contains("tcp")),
        "{links}"
    );
    tool(
        "qpid-route",
        &["route", "add", &d, &s, "amq.direct", "fed.key"],
    );
    let routes = tool("qpid-route", &["route", "list", &d]);
    assert!(
        routes.contains(&format!("{} amq.direct fed.key", src.0.url())),
        "{routes}"
    );
    tool("qpid-config", &["-b", &d, "add", "queue", "arrivals"]);
    tool(
        "qpid-config",
        &["-b", &d, "bind", "amq.direct", "arrivals", "fed.key"],
    );
    // The route may still be connecting: send until one message has crossed.
    let started = Instant::now();
    loop {
        send(&src.0, "amq.direct/fed.key", 1);
        let q = tool("qpid-stat", &["-b", &d, "-q"]);
        let depth: u64 = row(&q, "arrivals").expect("listed")[1]
            .parse()
            .expect("depth");
        if depth > 0 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "nothing crossed the route");
        std::thread::sleep(Duration::from_millis(200));
    }
    tool(
        "qpid-route",
        &["route", "del", &d, &s, "amq.direct", "fed.key"],
    );
    assert!(!tool("qpid-route", &["route", "list", &d]).contains("fed.key"));
    tool("qpid-route", &["link", "del", &d, &s]);
    assert!(tool("qpid-route", &["link", "list", &d]).contains("No Links Found"));
}

/// A program whose output is collected as it comes, with its input open.
struct Interactive {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Interactive {
    fn start(name: &str, args: &[&str]) -> Interactive {
        let mut child = Command::new(qpidpy().join("bin").join(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = sink.lock().expect("output");
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Interactive { child, out }
    }

    fn say(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    fn output(&self) -> String {
        self.out.lock().expect("output").clone()
    }

    /// Says `line` again and again until the output satisfies `done`; the output.
    fn until(&mut self, line: Option<&str>, mut done: impl FnMut(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            if let Some(l) = line {
                self.say(l);
            }
            std::thread::sleep(Duration::from_millis(300));
            let out = self.output();
            if done(&out) {
                return out;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "gave up; output so far:\n{out}"
            );
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn qpid_tool_lists_and_shows_a_queue() {
    let b = Broker::start();
    let url = guest(&b.0);
    tool("qpid-config", &["-b", &url, "add", "queue", "tool-q"]);
    send(&b.0, "tool-q", 4);
    let mut t = Interactive::start("qpid-tool", &[&url]);
    let listing = t.until(Some("list queue"), |o| {
        o.contains("org.apache.qpid.broker:queue:tool-q")
    });
    let id = listing
        .lines()
        .find(|l| l.ends_with("org.apache.qpid.broker:queue:tool-q"))
        .and_then(|l| l.split_whitespace().next())
        .expect("an id for tool-q")
        .to_string();
    let shown = t.until(Some(&format!("show {id}")), |o| o.contains("msgDepth"));
    let depth = shown
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&"msgDepth"))
        .expect("msgDepth row");
    assert_eq!(depth.get(1), Some(&"4"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("name") && l.contains("tool-q")),
        "{shown}"
    );
    t.say("quit");
}

#[test]
fn qpid_printevents_reports_a_queue_declare_and_delete() {
    let b = Broker::start();
    let url = guest(&b.0);
    let mut events = Interactive::start("qpid-printevents", &[&url]);
    events.until(None, |o| o.contains("brokerConnected"));
    // Its subscription is made after it says so: declare new queues until one shows.
    let mut n = 0;
    let out = events.until(None, |o| {
        n += 1;
        tool(
            "qpid-config",
            &["-b", &url, "add", "queue", &format!("watched-{n}")],
        );
        o.lines()
            .any(|l| l.contains("queueDeclare") && l.contains("qName=watched-"))
    });
    assert!(out.contains("user=guest"), "{out}");
    tool(
        "qpid-config",
        &["-b", &url, "del", "queue", &format!("watched-{n}")],
    );
    let gone = format!("qName=watched-{n}");
    let out = events.until(None, |o| {
        o.lines()
            .any(|l| l.contains("queueDelete") && l.contains(&gone))
    });
    assert!(out.contains("org.apache.qpid.broker:queueDelete"), "{out}");
}

/// A broker for one test.
struct Broker(Binary);

impl Broker {
    fn start() -> Broker {
        Broker(Binary::start(
            "[management]\npublish_interval_s = 1\n[agent]\nadmins = [\"guest\"]\n",
        ))
    }
}

/// Runs a Python program with Qpid's client against `b`; its output, parsed as JSON lines.
fn python(b: &Binary, user: &str, program: &str) -> Vec<serde_json::Value> {
    let url = format!("{user}@{}", b.url());
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .env("PYTHONPATH", qpidpy().join("py3"))
        .arg("-c")
        .arg(program)
        .arg(url)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Sends QMF requests with qpid.messaging and prints each answer as a JSON line.
const QMF_CLIENT: &str = r#"
import sys, json
from qpid.messaging import Connection, Message
conn = Connection(sys.argv[1]); conn.open()
s = conn.session()
rx = s.receiver("qmf.default.topic/direct.test;{node:{type:topic}}")
tx = s.sender("qmf.default.direct/broker")
def ask(opcode, content, **extra):
    props = {'qmf.opcode': opcode, 'method': 'request', 'x-amqp-0-10.app-id': 'qmf2'}
    m = Message(content, reply_to="qmf.default.topic/direct.test;{node:{type:topic}}",
                correlation_id="c1", properties=props, subject="broker", **extra)
    tx.send(m)
    r = rx.fetch(10); s.acknowledge()
    c = r.content
    if isinstance(c, dict) and '_values' in c:
        c = {'error_code': c['_values'].get('error_code'), 'error_text': str(c['_values'].get('error_text'))}
    elif isinstance(c, list):
        c = {'objects': [o['_values'].get('name') for o in c]}
    elif isinstance(c, dict) and '_arguments' in c:
        c = {'arguments': {k: str(v) for k, v in c['_arguments'].items()}}
    else:
        c = {'raw': str(c)[:100]}
    c['opcode'] = r.properties['qmf.opcode']
    print(json.dumps(c)); sys.stdout.flush()
def method(name, args, obj='org.apache.qpid.broker:broker:amqp-broker'):
    ask('_method_request', {'_object_id': {'_object_name': obj}, '_method_name': name, '_arguments': args})
PROGRAM
conn.close()
"#;

fn qmf(b: &Binary, user: &str, steps: &str) -> Vec<serde_json::Value> {
    python(b, user, &QMF_CLIENT.replace("PROGRAM", steps))
}

#[test]
fn hostile_qmf_requests_get_exceptions_and_the_broker_carries_on() {
    let b = Broker::start();
    let answers = qmf(
        &b.0,
        "guest/guest",
        r#"
ask('_query_request', {'_schema_id': {'_class_name': 'queue'}})
ask('_query_request', {'_what': 42})
ask('_query_request', {'_what': 'SCHEMA'})
ask('_query_request', {'_what': 'OBJECT', '_schema_id': {'_class_name': 'no-such-class'}})
ask('_query_request', {'_what': 'OBJECT', '_object_id': {'_object_name': 'org.apache.qpid.broker:queue:nope'}})
ask('_query_request', "not a map")
ask('_query_request', {'_what': 'OBJECT', 'pad': ['x' * 1000] * 100})
method('noSuchMethod', {})
method('echo', {}, obj='org.apache.qpid.broker:queue:nope')
method('echo', {'sequence': 'seven', 'body': 'b'})
ask('_method_request', {'_method_name': 'echo'})
method('create', {'type': 'queue'})
method('create', {'type': 'gadget', 'name': 'g'})
method('queueMoveMessages', {'srcQueue': 'nope', 'destQueue': 'nope2', 'qty': 0})
v1 = s.sender("qpid.management/broker")
for junk in ["AM2S\x00\x00\x00\x01\x05abc", "AM2M\x00\x00\x00\x02", "AM2G\x00\x00\x00\x03\xff\xff", "AM2", "not qmf at all"]:
    v1.send(Message(junk, reply_to="amq.direct/nowhere"))
method('echo', {'sequence': 7, 'body': 'still here'})
ask('_query_request', {'_what': 'OBJECT', '_schema_id': {'_class_name': 'broker'}})
"#,
    );
    let code = |i: usize| answers[i]["error_code"].as_u64();
    let opcode = |i: usize| {
        answers[i]["opcode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(opcode(0), "_exception", "no _what: {:?}", answers[0]);
    assert!(answers[0]["error_text"]
        .as_str()
        .is_some_and(|t| t.contains("_what")));
    assert_eq!(opcode(1), "_exception");
    assert_eq!(opcode(2), "_exception");
    assert_eq!(
        answers[3]["objects"],
        serde_json::json!([]),
        "unknown class: empty"
    );
    assert_eq!(
        answers[4]["objects"],
        serde_json::json!([]),
        "unknown object: empty"
    );
    assert_eq!(opcode(5), "_exception", "a body that is not a map");
    assert_eq!(opcode(6), "_exception", "a huge query");
    assert_eq!(code(7), Some(2), "unknown method");
    assert_eq!(code(8), Some(1), "unknown object");
    assert_eq!(code(9), Some(4), "argument of the wrong type");
    assert_eq!(code(10), Some(4), "no object id");
    assert_eq!(
        code(11),
        Some(7),
        "create without a name: {:?}",
        answers[11]
    );
    assert_eq!(code(12), Some(7), "unknown type");
    assert!(answers[12]["error_text"]
        .as_str()
        .is_some_and(|t| t.contains("unknown object type")));
    assert_eq!(code(13), Some(4), "move between missing queues");
    assert_eq!(
        answers[14]["arguments"]["body"], "still here",
        "the broker still answers"
    );
    assert_eq!(answers[15]["objects"], serde_json::json!(["amqp-broker"]));
}

#[test]
fn the_acl_governs_management_methods_and_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("broker.acl");
    std::fs::write(
        &acl,
        "acl deny bob access method name=purge\n\
         acl deny bob create queue name=secret*\n\
         acl deny bob access query name=connection\n\
         acl allow all all\n",
    )
    .expect("acl");
    let b = Binary::start(&format!(
        "acl_file = \"{}\"\n[users]\nbob = \"bobpw\"\n",
        acl.display()
    ));
    let answers = qmf(
        &b,
        "bob/bobpw",
        r#"
method('create', {'type': 'queue', 'name': 'open-q', 'properties': {}, 'strict': True})
method('create', {'type': 'queue', 'name': 'secret-q', 'properties': {}, 'strict': True})
method('purge', {'request': 0}, obj='org.apache.qpid.broker:queue:open-q')
ask('_query_request', {'_what': 'OBJECT', '_schema_id': {'_class_name': 'connection'}})
ask('_query_request', {'_what': 'OBJECT', '_schema_id': {'_class_name': 'queue'}})
"#,
    );
    assert_eq!(answers[0]["opcode"], "_method_response", "{:?}", answers[0]);
    assert_eq!(
        answers[1]["error_code"], 6,
        "create refused: {:?}",
        answers[1]
    );
    assert!(answers[1]["error_text"]
        .as_str()
        .is_some_and(|t| t.contains("ACL")));
    assert_eq!(
        answers[2]["error_code"], 6,
        "purge refused: {:?}",
        answers[2]
    );
    assert_eq!(answers[3]["opcode"], "_exception", "query refused");
    let queues = answers[4]["objects"].as_array().expect("queue list");
    assert!(queues.contains(&serde_json::json!("open-q")));
    assert!(!queues.contains(&serde_json::json!("secret-q")));
    // Guest is not bob: the same calls go through.
    let answers = qmf(
        &b,
        "guest/guest",
        "method('purge', {'request': 0}, obj='org.apache.qpid.broker:queue:open-q')\n",
    );
    assert_eq!(answers[0]["opcode"], "_method_response");
}

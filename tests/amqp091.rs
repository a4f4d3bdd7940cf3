//! AMQP 0-9-1 on the broker's own port, with a real 0-9-1 client (pika, from PyPI, in the
//! venv tests/qpid-setup.sh makes): publisher confirms, qos, get, reject and requeue,
//! mandatory returns, transactions, TTL and dead letters; messages crossing to and from
//! Qpid's qpid.messaging with their properties; a Clacks command called over 0-9-1; bad
//! input answered with the close codes RabbitMQ sends; and no confirmed message lost to a
//! `kill -9`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{qpidpy, Binary, Rng};

/// Runs a Python script (pika and qpid.messaging importable) with the broker's port as
/// its argument; its output, once it succeeded.
fn python(broker: &Binary, script: &str) -> String {
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args(["-W", "ignore", "-c", script])
        .arg(broker.addr.port().to_string())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs a pika script (after [`PRELUDE`]) that prints "ok" when all its assertions held.
fn pika(broker: &Binary, script: &str) {
    let out = python(broker, &format!("{PRELUDE}{script}"));
    assert!(out.contains("ok"), "the script did not finish: {out}");
}

const PRELUDE: &str = r#"
import sys, time, json, uuid
import pika
PORT = int(sys.argv[1])
def connect(user="guest", password="guest"):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=PORT, credentials=pika.PlainCredentials(user, password),
        connection_attempts=1))
def wait_until_gone(conn, queue, why):
    # Polls, with a generous deadline, until a passive declare answers 404.
    deadline = time.time() + 10
    while time.time() < deadline:
        probe = conn.channel()
        try:
            probe.queue_declare(queue, passive=True)
            probe.close()
            time.sleep(0.05)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404, e
            return
    raise SystemExit(why)
"#;

/// The configuration every broker here starts from: guest administers, bob is a user.
const CONFIG: &str = "[agent]\nadmins = [\"guest\"]\n[users]\nbob = \"bobpw\"\n";

fn broker() -> Binary {
    Binary::start(CONFIG)
}

/// Kills the broker and starts it again on the same data.
fn restart(b: Binary) -> Binary {
    Binary::start_in(b.kill(), CONFIG)
}

#[test]
fn pika_confirms_qos_get_reject_and_requeue() {
    let b = broker();
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
assert q.startswith("amq.gen-"), q
ch.confirm_delivery()
for i in range(20):
    # Confirmed: basic_publish raises if the broker nacks or returns.
    ch.basic_publish("", q, b"m%d" % i, pika.BasicProperties(delivery_mode=2, content_type="text/plain"))
assert ch.queue_declare(q, passive=True).method.message_count == 20

# get, then reject with requeue: it comes back, marked redelivered.
m = ch.basic_get(q)
assert m[2] == b"m0" and not m[0].redelivered
ch.basic_reject(m[0].delivery_tag, requeue=True)
m = ch.basic_get(q)
assert m[2] == b"m0" and m[0].redelivered, m
ch.basic_ack(m[0].delivery_tag)

# qos: a consumer with prefetch 3 has at most 3 unacknowledged messages.
ch.basic_qos(prefetch_count=3)
held = []
def on_message(c, method, props, body):
    held.append(method.delivery_tag)
ch.basic_consume(q, on_message)
deadline = time.time() + 10
while len(held) < 3 and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
conn.process_data_events(time_limit=0.3)
assert len(held) == 3, held
# Acking two (multiple) lets two more come.
ch.basic_ack(held[1], multiple=True)
deadline = time.time() + 10
while len(held) < 5 and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
conn.process_data_events(time_limit=0.3)
assert len(held) == 5, held
# nack with requeue of everything outstanding: they come again.
ch.basic_nack(0, multiple=True, requeue=True)
deadline = time.time() + 10
while len(held) < 8 and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
assert len(held) >= 8, held
conn.close()
print("ok")
"#,
    );
}

#[test]
fn pika_mandatory_returns_tx_ttl_and_dead_letters() {
    let b = broker();
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
ch.exchange_declare("dlx", "fanout")
dead = ch.queue_declare("dead", exclusive=True).method.queue
ch.queue_bind(dead, "dlx")
q = ch.queue_declare("work", exclusive=True, arguments={"x-dead-letter-exchange": "dlx"}).method.queue

# A rejected message without requeue goes to the dead-letter exchange.
ch.basic_publish("", q, b"poison")
m = ch.basic_get(q)
ch.basic_reject(m[0].delivery_tag, requeue=False)
m = ch.basic_get(dead, auto_ack=True)
assert m[2] == b"poison", m

# An unroutable mandatory message comes back with 312 NO_ROUTE.
returned = []
ch.add_on_return_callback(lambda c, method, props, body: returned.append((method.reply_code, body)))
ch.basic_publish("amq.direct", "nobody", b"lost", mandatory=True)
deadline = time.time() + 10
while not returned and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
assert returned == [(312, b"lost")], returned

# Transactions: publishes and acks take effect at commit, and not at rollback.
tx = conn.channel()
tx.tx_select()
tx.basic_publish("", q, b"t1")
assert tx.queue_declare(q, passive=True).method.message_count == 0
tx.tx_commit()
assert tx.queue_declare(q, passive=True).method.message_count == 1
tx.basic_publish("", q, b"t2")
tx.tx_rollback()
assert tx.queue_declare(q, passive=True).method.message_count == 1
m = tx.basic_get(q)
tx.basic_ack(m[0].delivery_tag)
tx.tx_rollback()
assert tx.queue_declare(q, passive=True).method.message_count == 0  # still held, unacked
tx.basic_recover(requeue=True)
assert tx.queue_declare(q, passive=True).method.message_count == 1

# Per-message TTL: an expired message is never delivered.
ch.queue_purge(q)
ch.basic_publish("", q, b"brief", pika.BasicProperties(expiration="50"))
ch.basic_publish("", q, b"lasting")
time.sleep(0.3)
m = ch.basic_get(q, auto_ack=True)
assert m[2] == b"lasting", m
assert ch.basic_get(q)[0] is None

# basic.get is no consumer: an auto-delete queue outlives it.
ad = ch.queue_declare("auto-del", auto_delete=True).method.queue
ch.basic_publish("", ad, b"a1")
ch.basic_publish("", ad, b"a2")
assert ch.basic_get(ad, auto_ack=True)[2] == b"a1"
assert ch.queue_declare(ad, passive=True).method.message_count == 1

# Exclusive queues: another connection cannot take one (405), and it goes with its
# connection.
other_conn = connect()
oc = other_conn.channel()
oc.queue_declare("mine", exclusive=True)
try:
    ch.queue_declare("mine", exclusive=True)
    raise SystemExit("another connection's exclusive queue was taken")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 405, e
ch = conn.channel()
other_conn.close()
wait_until_gone(conn, "mine", "the exclusive queue outlived its connection")

# A queue's TTL (x-message-ttl) caps every message on it.
brief = ch.queue_declare("brief", exclusive=True, arguments={"x-message-ttl": 50}).method.queue
ch.basic_publish("", brief, b"soon gone")
time.sleep(0.5)
assert ch.basic_get(brief)[0] is None

# A consumer whose queue is deleted is told so (consumer_cancel_notify).
cancelled = []
gone = ch.queue_declare("going", exclusive=True).method.queue
ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
tag = ch.basic_consume(gone, lambda *a: None, consumer_tag="watcher")
other = conn.channel()
other.queue_delete(gone)
deadline = time.time() + 10
while not cancelled and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
assert cancelled == ["watcher"], cancelled

# A queue limited to 2 messages drops the oldest (RabbitMQ's default overflow).
lim = ch.queue_declare("limited", exclusive=True, arguments={"x-max-length": 2}).method.queue
for body in (b"a", b"b", b"c"):
    ch.basic_publish("", lim, body)
assert [ch.basic_get(lim, auto_ack=True)[2] for _ in range(2)] == [b"b", b"c"]
conn.close()
print("ok")
"#,
    );
}

#[test]
fn exchange_bindings_expiring_queues_dead_lettered_expiry_and_tx_returns() {
    let b = broker();
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()

# Exchange-to-exchange: a topic exchange passes what matches on to a fanout exchange,
# and a queue reached two ways gets one copy.
ch.exchange_declare("e2e.src", "topic", durable=True)
ch.exchange_declare("e2e.dst", "fanout", durable=True)
ch.exchange_bind("e2e.dst", "e2e.src", routing_key="a.*")
ch.queue_declare("e2e.q", durable=True)
ch.queue_bind("e2e.q", "e2e.dst")
ch.queue_bind("e2e.q", "e2e.src", routing_key="a.b")
ch.basic_publish("e2e.src", "a.b", b"both ways")
ch.basic_publish("e2e.src", "a.c", b"through the fanout")
ch.basic_publish("e2e.src", "b.c", b"nowhere")
got = []
while True:
    m = ch.basic_get("e2e.q", auto_ack=True)
    if m[0] is None:
        break
    got.append(m[2])
assert got == [b"both ways", b"through the fanout"], got

# Cycles end: a message goes round once.
ch.exchange_declare("ring.a", "fanout")
ch.exchange_declare("ring.b", "fanout")
ch.exchange_bind("ring.b", "ring.a")
ch.exchange_bind("ring.a", "ring.b")
ring = ch.queue_declare("", exclusive=True).method.queue
ch.queue_bind(ring, "ring.b")
ch.basic_publish("ring.a", "", b"once")
assert ch.queue_declare(ring, passive=True).method.message_count == 1

# Unbinding stops the flow; binding a missing exchange is 404; the default is 403.
ch.exchange_unbind("ring.b", "ring.a")
ch.basic_publish("ring.a", "", b"not any more")
assert ch.queue_declare(ring, passive=True).method.message_count == 1
try:
    ch.exchange_bind("nope", "ring.a")
    raise SystemExit("bound a missing exchange")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 404, e
ch = conn.channel()
try:
    ch.exchange_bind("ring.a", "")
    raise SystemExit("bound the default exchange")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 403, e
ch = conn.channel()

# x-expires: an unused queue goes; one with a consumer stays.
ch.queue_declare("expiring", arguments={"x-expires": 300})
ch.queue_declare("watched", arguments={"x-expires": 1000})
ch.basic_consume("watched", lambda *a: None)
wait_until_gone(conn, "expiring", "the unused queue did not expire")
conn.process_data_events(time_limit=1.5)
assert ch.queue_declare("watched", passive=True).method.consumer_count == 1
try:
    ch.queue_declare("bad-expiry", arguments={"x-expires": 0})
    raise SystemExit("x-expires 0 was taken")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 406, e
ch = conn.channel()

# Expired messages go to the dead-letter exchange, no longer expiring.
ch.exchange_declare("ttl.dlx", "fanout")
graveyard = ch.queue_declare("", exclusive=True).method.queue
ch.queue_bind(graveyard, "ttl.dlx")
short = ch.queue_declare("", exclusive=True, arguments={
    "x-message-ttl": 50, "x-dead-letter-exchange": "ttl.dlx"}).method.queue
ch.basic_publish("", short, b"expired", pika.BasicProperties(expiration="20"))
deadline = time.time() + 10
m = (None, None, None)
while m[0] is None and time.time() < deadline:
    time.sleep(0.05)
    m = ch.basic_get(graveyard, auto_ack=True)
assert m[2] == b"expired" and m[1].expiration is None, m
assert m[1].headers["x-first-death-reason"] == "expired", m[1].headers
assert m[1].headers["x-first-death-queue"] == short, m[1].headers

# A delay queue: expired messages go to the default exchange under a new routing key.
ready = ch.queue_declare("", exclusive=True).method.queue
delay = ch.queue_declare("", exclusive=True, arguments={
    "x-message-ttl": 50, "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": ready}).method.queue
ch.basic_publish("", delay, b"later")
deadline = time.time() + 10
m = (None, None, None)
while m[0] is None and time.time() < deadline:
    time.sleep(0.05)
    m = ch.basic_get(ready, auto_ack=True)
assert m[2] == b"later" and m[0].routing_key == ready, m

# Only the broker publishes to its management exchanges.
try:
    ch.exchange_bind("qmf.default.direct", "e2e.src")
    raise SystemExit("bound into a management exchange")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 403, e
ch = conn.channel()

# A mandatory publish in a transaction that reaches no queue comes back at commit, and
# not at all when rolled back.
returned = []
tx = conn.channel()
tx.add_on_return_callback(lambda c, method, props, body: returned.append(body))
tx.tx_select()
tx.basic_publish("amq.direct", "nobody", b"rolled back", mandatory=True)
tx.tx_rollback()
tx.basic_publish("amq.direct", "nobody", b"committed", mandatory=True)
tx.tx_commit()
deadline = time.time() + 10
while not returned and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
assert returned == [b"committed"], returned
conn.close()

# What RabbitMQ does not offer either closes the connection with 540.
for attempt in ("recover", "qos"):
    c = connect()
    k = c.channel()
    try:
        if attempt == "recover":
            k.basic_recover(requeue=False)
        else:
            k.basic_qos(prefetch_size=4096)
        raise SystemExit(attempt + " was taken")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 540, (attempt, e)
print("ok")
"#,
    );
    // The durable binding between durable exchanges survives a restart.
    let b = restart(b);
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
ch.basic_publish("e2e.src", "a.z", b"after restart")
m = ch.basic_get("e2e.q", auto_ack=True)
assert m[2] == b"after restart", m
# Deleting the destination takes the binding with it: the source routes nowhere.
ch.exchange_delete("e2e.dst")
ch.exchange_declare("e2e.dst", "fanout", durable=True)
ch.queue_bind("e2e.q", "e2e.dst")
ch.basic_publish("e2e.src", "a.z", b"unbound")
assert ch.basic_get("e2e.q")[0] is None
# An exchange bound to itself, deleted: nothing of it is left to come back.
ch.exchange_declare("e2e.self", "fanout", durable=True)
ch.exchange_bind("e2e.self", "e2e.self")
ch.exchange_delete("e2e.self")
print("ok")
"#,
    );
    // The deleted bindings are gone from the store too.
    let b = restart(b);
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
ch.basic_publish("e2e.src", "a.z", b"still unbound")
assert ch.basic_get("e2e.q")[0] is None
ch.exchange_declare("e2e.self", "fanout", durable=True)
ch.exchange_delete("e2e.self", if_unused=True)
print("ok")
"#,
    );
}

#[test]
fn errors_logins_and_forged_user_ids_as_rabbitmq_answers_them() {
    let b = broker();
    pika(
        &b,
        r#"
try:
    connect("guest", "wrong")
    raise SystemExit("a wrong password was let in")
except pika.exceptions.ProbableAuthenticationError as e:
    assert "ACCESS_REFUSED" in str(e), e

conn = connect("bob", "bobpw")
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
# A user_id that is not the sender's closes the channel with 406.
ch.confirm_delivery()
try:
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    raise SystemExit("a forged user_id was taken")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 406 and "mallory" in e.reply_text, e

ch = conn.channel()
try:
    ch.queue_declare("no-such-queue", passive=True)
    raise SystemExit("a missing queue was found")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 404 and "no queue 'no-such-queue'" in e.reply_text, e

# Without a user_id the broker stamps the sender's.
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"y")
m = ch.basic_get(q, auto_ack=True)
assert m[1].user_id == "bob", m[1]
conn.close()
print("ok")
"#,
    );
}

#[test]
fn messages_cross_to_and_from_qpid_messaging_with_their_properties() {
    let b = broker();
    pika(
        &b,
        r#"
from qpid.messaging import Connection, Message
qc = Connection("127.0.0.1:%d" % PORT, username="guest", password="guest", reconnect=False)
qc.open()
qs = qc.session()

conn = connect()
ch = conn.channel()
ch.queue_declare("to-qpid")
ch.queue_declare("to-pika")

# 0-9-1 to 0-10: every mapped property arrives.
props = pika.BasicProperties(
    content_type="application/json", content_encoding="utf-8",
    headers={"n": 7, "s": "text", "b": True},
    delivery_mode=2, priority=6, correlation_id="corr-9", reply_to="answers",
    expiration="600000", message_id="6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    timestamp=1700000000, type="order.created", user_id="guest", app_id="shop")
ch.basic_publish("", "to-qpid", b'{"x": 1}', props)
m = qs.receiver("to-qpid").fetch(timeout=10)
qs.acknowledge()
assert m.content_type == "application/json", m.content_type
assert m.content == '{"x": 1}' or m.content == b'{"x": 1}', m.content
assert m.durable and m.priority == 6, (m.durable, m.priority)
assert m.correlation_id == "corr-9", m.correlation_id
assert str(m.reply_to).startswith("answers"), m.reply_to
assert m.user_id == "guest", m.user_id
assert str(m.id) == "6ba7b810-9dad-11d1-80b4-00c04fd430c8", m.id
assert m.ttl is not None and 0 < m.ttl <= 600, m.ttl
p = m.properties
assert p["n"] == 7 and p["s"] == "text" and p["b"] is True, p
assert p["x-amqp-0-9-1-type"] == "order.created", p

# 0-10 to 0-9-1.
qs.sender("to-pika").send(Message(
    content="hello", content_type="text/plain", durable=True, priority=3,
    correlation_id="c-1", user_id="guest", reply_to="replies",
    properties={"k": "v", "i": 42}))
deadline = time.time() + 10
m = (None, None, None)
while m[0] is None and time.time() < deadline:
    m = ch.basic_get("to-pika", auto_ack=True)
    time.sleep(0.05)
method, props, body = m
assert body == b"hello", body
assert props.content_type == "text/plain", props
assert props.delivery_mode == 2 and props.priority == 3, props
assert props.correlation_id == "c-1" and props.user_id == "guest", props
assert props.reply_to.endswith("replies"), props.reply_to
assert props.headers["k"] == b"v" or props.headers["k"] == "v", props.headers
assert props.headers["i"] == 42, props.headers
qc.close()
conn.close()
print("ok")
"#,
    );
}

#[test]
fn a_pika_client_calls_a_clacks_command() {
    let b = broker();
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
replies = ch.queue_declare("", exclusive=True).method.queue
corr = str(uuid.uuid4())
request = {"method": "getSessionUser", "params": [], "id": "jsonrpc"}
ch.basic_publish("", "org.clacks.command.core", json.dumps(request).encode(),
                 pika.BasicProperties(reply_to=replies, correlation_id=corr))
deadline = time.time() + 30
while time.time() < deadline:
    method, props, body = ch.basic_get(replies, auto_ack=True)
    if method:
        break
    time.sleep(0.05)
else:
    raise SystemExit("no reply")
reply = json.loads(body)
assert reply == {"result": "guest", "error": None, "id": "jsonrpc"}, reply
assert props.correlation_id == corr, props
conn.close()
print("ok")
"#,
    );
}

/// A raw 0-9-1 connection for hostile input.
struct Raw(TcpStream);

impl Raw {
    /// Connected, protocol header sent, connection.start read.
    fn open(b: &Binary) -> Raw {
        let mut s = TcpStream::connect(b.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(b"AMQP\x00\x00\x09\x01").expect("header");
        let mut raw = Raw(s);
        assert_eq!(raw.method().0, (10, 10), "connection.start");
        raw
    }

    fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        self.0.write_all(&f).expect("write");
    }

    fn method_frame(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&method.to_be_bytes());
        p.extend_from_slice(args);
        self.frame(1, channel, &p);
    }

    /// The next method frame: (class, method) and its arguments, skipping heartbeats.
    fn method(&mut self) -> ((u16, u16), Vec<u8>) {
        loop {
            let mut head = [0u8; 7];
            self.0.read_exact(&mut head).expect("frame header");
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.0.read_exact(&mut payload).expect("frame payload");
            if head[0] != 1 {
                continue;
            }
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            return ((class, method), payload[4..size].to_vec());
        }
    }

    /// Logs in as guest with PLAIN and opens the connection.
    fn login(&mut self) {
        let mut args = vec![0, 0, 0, 0]; // client-properties: empty table
        args.push(5);
        args.extend_from_slice(b"PLAIN");
        let response = b"\x00guest\x00guest";
        args.extend_from_slice(&(response.len() as u32).to_be_bytes());
        args.extend_from_slice(response);
        args.push(5);
        args.extend_from_slice(b"en_US");
        self.method_frame(0, 10, 11, &args);
        assert_eq!(self.method().0, (10, 30), "connection.tune");
        // tune-ok: channel-max 0, frame-max 131072, heartbeat 0.
        self.method_frame(0, 10, 31, &[0, 0, 0, 2, 0, 0, 0, 0]);
        self.method_frame(0, 10, 40, &[1, b'/', 0, 0]);
        assert_eq!(self.method().0, (10, 41), "connection.open-ok");
    }

    /// The reply code of the connection.close the broker sends next.
    fn close_code(&mut self) -> u16 {
        let ((class, method), args) = self.method();
        assert_eq!((class, method), (10, 50), "connection.close expected");
        u16::from_be_bytes([args[0], args[1]])
    }
}

#[test]
fn bad_input_gets_the_close_codes_rabbitmq_sends_and_others_carry_on() {
    let b = broker();
    // A wrong frame end octet: 501 frame-error.
    let mut r = Raw::open(&b);
    r.0.write_all(&[8, 0, 0, 0, 0, 0, 0, 0x00]).expect("write");
    assert_eq!(r.close_code(), 501);
    // A frame over the frame size: 501, before the frame is read.
    let mut r = Raw::open(&b);
    r.0.write_all(&[3, 0, 1, 0x7f, 0xff, 0xff, 0xff])
        .expect("write");
    assert_eq!(r.close_code(), 501);
    // An unknown class: 540 not-implemented.
    let mut r = Raw::open(&b);
    r.login();
    r.method_frame(0, 99, 10, &[]);
    assert_eq!(r.close_code(), 540);
    // A method on a channel that was never opened: 504 channel-error.
    let mut r = Raw::open(&b);
    r.login();
    // basic.qos: prefetch-size 0, prefetch-count 1, global false.
    r.method_frame(3, 60, 10, &[0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(r.close_code(), 504);
    // A body with no publish before it: 505 unexpected-frame.
    let mut r = Raw::open(&b);
    r.login();
    r.method_frame(1, 20, 10, &[0]);
    assert_eq!(r.method().0, (20, 11), "channel.open-ok");
    r.frame(3, 1, b"stray body");
    assert_eq!(r.close_code(), 505);
    // A method before the handshake is done: 503.
    let mut r = Raw::open(&b);
    r.method_frame(1, 20, 10, &[0]);
    assert_eq!(r.close_code(), 503);
    // Garbage for a protocol header: our own header back, and the door shuts.
    let mut s = TcpStream::connect(b.addr).expect("connect");
    s.write_all(b"HTTP/1.1").expect("write");
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert!(back.starts_with(b"AMQP"), "{back:?}");

    // Meanwhile others are served: a full round trip with pika.
    pika(
        &b,
        r#"
conn = connect()
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"still here")
assert ch.basic_get(q, auto_ack=True)[2] == b"still here"
conn.close()
print("ok")
"#,
    );
}

#[test]
fn no_confirmed_message_is_lost_to_a_kill_during_0_9_1_publishing() {
    let cycles = if std::env::var_os("CLACKS_LONG").is_some() {
        20
    } else {
        3
    };
    let (mut rng, seed) = Rng::from_clock();
    let mut b = broker();
    let publisher = format!(
        "{PRELUDE}{}",
        r#"
conn = connect()
ch = conn.channel()
ch.queue_declare("durable-091", durable=True)
ch.confirm_delivery()
n = int(sys.argv[2])
while True:
    ch.basic_publish("", "durable-091", str(n).encode(), pika.BasicProperties(delivery_mode=2))
    # Confirmed: the broker has it on disk.
    print(n, flush=True)
    n += 1
"#
    );
    let mut first = 0u64;
    for cycle in 0..cycles {
        let mut child = Command::new(qpidpy().join("venv/bin/python"))
            .args(["-W", "ignore", "-u", "-c", &publisher])
            .arg(b.addr.port().to_string())
            .arg(first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("publisher");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .collect::<BTreeSet<u64>>()
        });
        std::thread::sleep(Duration::from_millis(300 + rng.next() % 700));
        let dir = b.kill();
        let confirmed = reader.join().expect("reader");
        let _ = child.kill();
        let _ = child.wait();
        b = Binary::start_in(dir, CONFIG);
        let drain = format!(
            "{PRELUDE}{}",
            r#"
conn = connect()
ch = conn.channel()
while True:
    m = ch.basic_get("durable-091", auto_ack=True)
    if m[0] is None:
        break
    print(m[2].decode())
conn.close()
"#
        );
        let seen: BTreeSet<u64> = python(&b, &drain)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let lost: Vec<&u64> = confirmed.difference(&seen).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle} (seed {seed}): {} of {} confirmed messages lost, first {:?}",
            lost.len(),
            confirmed.len(),
            lost.first()
        );
        assert!(
            !confirmed.is_empty(),
            "cycle {cycle}: nothing was confirmed"
        );
        println!(
            "cycle {cycle}: {} confirmed, all recovered",
            confirmed.len()
        );
        first += 1_000_000;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_with_confirms_and_consumes_in_order() {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let b = broker();
    let uri = format!("amqp://guest:guest@{}/%2f", b.addr);
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("lapin connects");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "lapin-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut confirms = Vec::new();
    for i in 0..200u32 {
        let c = ch
            .basic_publish(
                "".into(),
                "lapin-q".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("text/plain".into()),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirmation").is_ack(), "a nack");
    }
    // The messages are on the broker: a 0-10 client sees them queued.
    let (_c, s) = common::guest_session(&b).await;
    assert_eq!(common::depth(&s, "lapin-q").await, 200);

    let mut consumer = ch
        .basic_consume(
            "lapin-q".into(),
            "lapin".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..200u32 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery in time")
            .expect("stream")
            .expect("delivery");
        assert_eq!(d.data, format!("m{i}").as_bytes(), "in order");
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::depth(&s, "lapin-q").await != 0 {
        assert!(std::time::Instant::now() < deadline, "acks did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close(200, "done".into()).await.expect("close");
}

/// py-amqp's own integration tests (`t/integration/test_rmq.py` from its sdist, which
/// tests/run.sh unpacks into target/py-amqp), plain and over TLS with client certificates
/// from our test CA, against a broker that, like RabbitMQ, does not stamp `user-id` (the
/// tests compare message properties exactly). Left out, because they test no broker:
/// `test_tls_default_certs` and `test_tls_no_default_certs_fails` connect to
/// badssl.com on the internet.
#[test]
fn py_amqp_integration_tests_pass() {
    let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-amqp");
    assert!(
        suite.join("t/integration/test_rmq.py").exists(),
        "py-amqp's sdist is missing: tests/run.sh unpacks it into target/py-amqp"
    );
    let work = tempfile::tempdir().expect("dir");
    let run = work.path().join("py-amqp");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&suite)
        .arg(&run)
        .status()
        .expect("cp");
    assert!(copied.success());
    // Its certificates: ours for the client and the broker, another CA's for the
    // "broken" client that must be refused.
    let make = |dir: &std::path::Path| {
        let made = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/certs/make-test-ca.sh"
        ))
        .arg(dir)
        .arg("client")
        .stdout(Stdio::null())
        .status()
        .expect("make-test-ca.sh");
        assert!(made.success());
    };
    let (ca, other) = (work.path().join("ca"), work.path().join("other"));
    make(&ca);
    make(&other);
    let certs = run.join("t/certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    for (from, to) in [
        (ca.join("ca.pem"), "ca_certificate.pem"),
        (ca.join("client.pem"), "client_certificate.pem"),
        (ca.join("client-key.pem"), "client_key.pem"),
        (other.join("client.pem"), "client_certificate_broken.pem"),
        (other.join("client-key.pem"), "client_key_broken.pem"),
    ] {
        std::fs::copy(from, certs.join(to)).expect("copy a certificate");
    }
    let b = Binary::start(&format!(
        "stamp_user_id = false\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
         client_ca = {:?}\n",
        ca.join("server.pem").display().to_string(),
        ca.join("server-key.pem").display().to_string(),
        ca.join("ca.pem").display().to_string(),
    ));
    let tls = b.tls_addr.expect("an amqps listener");
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            "--reruns",
            "0",
            "t/integration/test_rmq.py",
            "-k",
            "not test_tls_default_certs and not test_tls_no_default_certs_fails",
        ])
        .current_dir(&run)
        .env("RABBITMQ_HOST", "localhost")
        .env("RABBITMQ_5672_TCP", b.addr.port().to_string())
        .env("RABBITMQ_5671_TCP", tls.port().to_string())
        .output()
        .expect("pytest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-amqp's integration tests failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.contains("passed") && !summary.contains("failed"),
        "{summary}"
    );
    println!("py-amqp integration tests: {summary}");
}

/// EXTERNAL over TLS: pika presents a client certificate from a CA the broker trusts and
/// logs in as its common name, which the broker then stamps into `user_id`.
#[test]
fn pika_logs_in_with_external_over_tls() {
    let work = tempfile::tempdir().expect("dir");
    let ca = work.path().join("ca");
    let made = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/certs/make-test-ca.sh"
    ))
    .arg(&ca)
    .arg("alice")
    .stdout(Stdio::null())
    .status()
    .expect("make-test-ca.sh");
    assert!(made.success());
    let path = |f: &str| ca.join(f).display().to_string();
    let b = Binary::start(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        path("server.pem"),
        path("server-key.pem"),
        path("ca.pem"),
    ));
    let tls = b.tls_addr.expect("an amqps listener");
    let script = format!(
        "{PRELUDE}{}",
        r#"
import ssl
ca, cert, key, tls_port = sys.argv[2:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
conn = pika.BlockingConnection(pika.ConnectionParameters(
    host="localhost", port=int(tls_port), ssl_options=pika.SSLOptions(ctx, "localhost"),
    credentials=pika.credentials.ExternalCredentials(), connection_attempts=1))
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"signed")
m = ch.basic_get(q, auto_ack=True)
assert m[2] == b"signed" and m[1].user_id == "alice", m[1]
conn.close()
print("ok")
"#
    );
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args(["-W", "ignore", "-c", &script])
        .arg(b.addr.port().to_string())
        .args([path("ca.pem"), path("alice.pem"), path("alice-key.pem")])
        .arg(tls.port().to_string())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ok"),
        "EXTERNAL login failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A store that refuses persistent messages (here: a disk reserve no disk has) is told to
/// clients that asked for `connection.blocked`, and their persistent publishes are nacked.
#[test]
fn a_refusing_store_blocks_publishers_and_nacks_what_it_cannot_keep() {
    let b = Binary::start("min_free_disk_bytes = 1000000000000000000\n");
    pika(
        &b,
        r#"
blocked = []
conn = pika.BlockingConnection(pika.ConnectionParameters(
    host="127.0.0.1", port=PORT, credentials=pika.PlainCredentials("guest", "guest")))
conn.add_on_connection_blocked_callback(lambda c, frame: blocked.append(frame.method.reason))
ch = conn.channel()
deadline = time.time() + 10
while not blocked and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
assert blocked and "disk" in blocked[0].lower(), blocked
q = ch.queue_declare("kept", durable=True).method.queue
ch.confirm_delivery()
try:
    ch.basic_publish("", q, b"persistent", pika.BasicProperties(delivery_mode=2))
    raise SystemExit("a persistent message was confirmed by a store that refuses it")
except pika.exceptions.NackError:
    pass
# Transient messages go on.
ch.basic_publish("", q, b"transient")
assert ch.basic_get(q, auto_ack=True)[2] == b"transient"
conn.close()
print("ok")
"#,
    );
}

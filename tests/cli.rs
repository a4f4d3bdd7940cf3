//! The `clacks` client subcommands and `serve` as a user runs them: real binary, real
//! broker, and Qpid's Python client on the other end of the queue.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use clacks_broker::client::{ConnectOptions, Connection};
use common::{qpidpy, Binary};

fn clacks(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clacks")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "clacks failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "clacks should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn send_then_receive_with_headers() {
    let broker = Binary::start("");
    let url = broker.url();
    ok(&clacks(&[
        "send",
        "-b",
        &url,
        "orders",
        "--create",
        "-m",
        "3",
        "--content",
        "hello",
        "-P",
        "k=v",
        "--durable",
    ]));
    let text = ok(&clacks(&[
        "receive",
        "-b",
        &url,
        "orders",
        "-m",
        "3",
        "--timeout",
        "5",
        "--print-headers",
    ]));
    assert_eq!(text.lines().filter(|l| *l == "hello").count(), 3, "{text}");
    assert_eq!(text.matches("Properties: {k: v}").count(), 3, "{text}");
    assert_eq!(text.matches("Durable: true").count(), 3, "{text}");
    // Everything was accepted: nothing is left.
    let rest = ok(&clacks(&[
        "receive",
        "-b",
        &url,
        "orders",
        "--timeout",
        "0.5",
    ]));
    assert!(rest.is_empty(), "{rest}");
}

#[test]
fn stdin_lines_are_messages() {
    let broker = Binary::start("");
    let url = format!("amqp://guest:guest@{}", broker.url());
    let mut child = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["send", "-b", &url, "lines", "--create"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"one\ntwo\nthree\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    let text = ok(&clacks(&[
        "receive",
        "-b",
        &url,
        "lines",
        "-m",
        "3",
        "--timeout",
        "5",
    ]));
    assert_eq!(text, "one\ntwo\nthree\n");
}

#[test]
fn exchange_addresses_bind_a_private_queue() {
    let broker = Binary::start("");
    let url = broker.url();
    let receiver = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args([
            "receive",
            "-b",
            &url,
            "amq.topic/news.#",
            "-m",
            "2",
            "--timeout",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Give the receiver time to bind before anything is routed.
    std::thread::sleep(Duration::from_millis(800));
    ok(&clacks(&[
        "send",
        "-b",
        &url,
        "amq.topic/sport",
        "--content",
        "skip",
    ]));
    ok(&clacks(&[
        "send",
        "-b",
        &url,
        "amq.topic/news.uk",
        "-m",
        "2",
        "--content",
        "news",
    ]));
    let out = receiver.wait_with_output().expect("receiver");
    assert_eq!(ok(&out), "news\nnews\n");
}

#[test]
fn errors_exit_nonzero_with_a_reason() {
    let broker = Binary::start("");
    let url = broker.url();
    let e = failed(&clacks(&[
        "receive",
        "-b",
        &url,
        "missing",
        "--timeout",
        "1",
    ]));
    assert!(e.contains("no such queue"), "{e}");
    let e = failed(&clacks(&["send", "-b", &url, "missing", "--content", "x"]));
    assert!(e.contains("no such queue"), "{e}");
    let e = failed(&clacks(&["send", "-b", &url, "nox/key", "--content", "x"]));
    assert!(e.contains("no such exchange"), "{e}");
    let bad = format!("amqp://guest:wrong@{url}");
    let e = failed(&clacks(&[
        "send",
        "-b",
        &bad,
        "q",
        "--create",
        "--content",
        "x",
    ]));
    assert!(e.contains("authentication failed"), "{e}");
    let e = failed(&clacks(&[
        "send",
        "-b",
        "127.0.0.1:1",
        "q",
        "--content",
        "x",
    ]));
    assert!(e.contains("cannot connect"), "{e}");
    let e = failed(&clacks(&["send", "-b", "http://x", "q", "--content", "x"]));
    assert!(e.contains("invalid url"), "{e}");
}

#[test]
fn bench_reports_rates_and_latency_and_cleans_up() {
    let broker = Binary::start("");
    let url = broker.url();
    let text = ok(&clacks(&[
        "bench",
        "-b",
        &url,
        "--producers",
        "2",
        "--consumers",
        "2",
        "--size",
        "64",
        "--count",
        "3000",
    ]));
    assert!(text.contains("sent:     3000 msgs"), "{text}");
    assert!(text.contains("received: 3000 msgs"), "{text}");
    assert!(text.contains("p99"), "{text}");
    let queue = text
        .split("queue ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("queue name")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
            .await
            .expect("connect");
        let s = conn.session("check").await.expect("session");
        assert!(s.query_queue(&queue).await.expect("query").queue.is_none());
        conn.close().await.expect("close");
    });
}

#[test]
fn serve_announces_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clacks.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nheartbeat_max = 7\nallow_anonymous = true\n",
    )
    .expect("config");
    // The environment overrides the file, the flag overrides the environment.
    let mut child = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("CLACKS_LISTEN", "127.0.0.1:2")
        .env("CLACKS_HEARTBEAT_MAX", "3")
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    // First-start lines (certificate, admin password) come before the address.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let addr = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "no address line"
        );
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().to_string();
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let opts = ConnectOptions::parse(&addr)
            .expect("url")
            .with_heartbeat(60);
        let conn = Connection::open(opts).await.expect("connect");
        // heartbeat_max from the environment bounds what we asked for.
        assert_eq!(conn.negotiated().heartbeat, 3);
        conn.close().await.expect("close");
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_serve_config_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["serve", "--listen", "nonsense"])
        .output()
        .expect("run");
    let e = failed(&out);
    assert!(e.contains("IP:PORT"), "{e}");
}

const PY_RECEIVE: &str = r#"
import sys
from qpid.messaging import Connection
c = Connection(sys.argv[1], reconnect=False)
c.open()
s = c.session()
r = s.receiver(sys.argv[2])
for i in range(int(sys.argv[3])):
    m = r.fetch(timeout=10)
    print(repr(m.content), m.properties.get("k"), m.durable, m.content_type)
s.acknowledge()
c.close()
"#;

const PY_SEND: &str = r#"
import sys
from qpid.messaging import Connection, Message
c = Connection(sys.argv[1], reconnect=False)
c.open()
s = c.session()
snd = s.sender(sys.argv[2] + "; {create: always}")
snd.send(Message("from python", properties={"k": "v", "n": 7}, durable=True))
c.close()
"#;

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args(["-W", "ignore", "-c", script])
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn qpid_messaging_reads_what_clacks_sends_and_back() {
    let broker = Binary::start("");
    let url = broker.url();
    ok(&clacks(&[
        "send",
        "-b",
        &url,
        "interop",
        "--create",
        "-m",
        "2",
        "--content",
        "hello",
        "-P",
        "k=v",
        "--durable",
    ]));
    let text = python(PY_RECEIVE, &[&url, "interop", "2"]);
    assert_eq!(
        text,
        "'hello' v True text/plain\n'hello' v True text/plain\n"
    );

    python(PY_SEND, &[&url, "interop2"]);
    let text = ok(&clacks(&[
        "receive",
        "-b",
        &url,
        "interop2",
        "-m",
        "1",
        "--timeout",
        "5",
        "--print-headers",
    ]));
    assert!(text.ends_with("from python\n"), "{text}");
    assert!(text.contains("Durable: true"), "{text}");
    assert!(text.contains("k: v") && text.contains("n: 7"), "{text}");
}

/// Runs `clacks serve` with stderr going to a file (as a service's log does), connects
/// and disconnects one client, stops the broker and returns what it logged.
fn serve_log(extra_args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clacks.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[agent]\nenabled = false\n[users]\nguest = \"guest\"\n",
    )
    .expect("config");
    let log_path = dir.path().join("clacks.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(extra_args)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start clacks serve");
    let stdout = child.stdout.take().expect("stdout");
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
        .expect("address");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("amqp://guest:guest@{addr}");
        let c = Connection::open(ConnectOptions::parse(&url).expect("url"))
            .await
            .expect("connect");
        c.close().await.expect("close");
    });
    // The close line is written once the broker has ended the connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).expect("read log");
        if text.contains("connection closed") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn a_log_file_gets_plain_lines_with_each_connection_opened_and_closed() {
    let text = serve_log(&[]);
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text}"
    );
    let opened = text
        .lines()
        .find(|l| l.contains("connection opened"))
        .unwrap_or_else(|| panic!("no open line: {text}"));
    assert!(
        opened.contains("user=guest@QPID") && opened.contains("peer=127.0.0.1:"),
        "{opened}"
    );
    let closed = text
        .lines()
        .find(|l| l.contains("connection closed"))
        .unwrap_or_else(|| panic!("no close line: {text}"));
    assert!(
        closed.contains("user=guest@QPID") && closed.contains("bytes_in="),
        "{closed}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let text = serve_log(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let opened = lines
        .iter()
        .find(|v| v["fields"]["message"] == "connection opened")
        .unwrap_or_else(|| panic!("no open line: {text}"));
    assert_eq!(opened["fields"]["user"], "guest@QPID");
    assert_eq!(opened["level"], "INFO");
}

//! The agent's command-line client against the real `clacks serve`: `clacks methods`,
//! `nodes`, `call`, `events`, `send-event` and `shell` (script mode), and how they find the
//! broker and the domain.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Binary;
use serde_json::Value;

/// An agent whose NodeStatus events come every 200 ms.
const AGENT: &str = "[agent]\nadmins = [\"guest\"]\nnode = \"node-a\"\nstatus_interval_ms = 200";

/// How long anything may take before a test gives up.
const DEADLINE: Duration = Duration::from_secs(60);

const NODE_LEAVE: &str =
    r#"<Event xmlns="http://www.gonicus.de/Events"><NodeLeave><Id>x</Id></NodeLeave></Event>"#;

fn url(broker: &Binary) -> String {
    format!("amqp://guest:guest@{}", broker.addr)
}

/// `clacks ARGS` with none of the client's environment variables except `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clacks"));
    cmd.args(args);
    for var in [
        "CLACKS_URL",
        "CLACKS_BROKER",
        "CLACKS_CONFIG",
        "CLACKS_DOMAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env("RUST_LOG", "warn");
    cmd
}

/// What a finished run printed.
struct Run {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
}

/// Runs `clacks ARGS` to the end (killed at the deadline), feeding it `stdin`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = command(args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start clacks");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("clacks {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        ok: status.success(),
        code: status.code(),
        out: out.recv_timeout(DEADLINE).expect("stdout"),
        err: err.recv_timeout(DEADLINE).expect("stderr"),
    }
}

/// Reads a pipe to its end on a thread.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// A long-running `clacks events`, its output read line by line on threads; killed when
/// dropped.
struct Events {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Events {
    /// Starts `clacks events ARGS` and waits until it says it is subscribed.
    fn start(broker: &Binary, args: &[&str]) -> Events {
        let url = url(broker);
        let mut all = vec!["events", "-b", url.as_str()];
        all.extend_from_slice(args);
        let mut child = command(&all, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start clacks events");
        let mut events = Events {
            out: lines(child.stdout.take().expect("stdout")),
            err: lines(child.stderr.take().expect("stderr")),
            child,
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.err.recv_timeout(left) {
                Ok(line) if line.starts_with("subscribed to events") => break,
                Ok(line) => events.stderr_seen.push(line),
                Err(_) => panic!("clacks events did not subscribe: {:?}", events.stderr_seen),
            }
        }
        events
    }

    /// Every stdout line until the process exits (which it must do by the deadline).
    fn output_until_exit(mut self) -> (bool, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("clacks events did not finish; printed {out:?}")
                }
            }
        }
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "clacks events did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.success(), out)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each line of a pipe down a channel.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Publishes an event straight to the domain's exchange (not through the agent).
fn publish(broker: &Binary, xml: &str) {
    let r = run(
        &[
            "send",
            "-b",
            &url(broker),
            "org.clacks/event",
            "--content",
            xml,
        ],
        &[],
        "",
    );
    assert!(r.ok, "publish: {}", r.err);
}

#[test]
fn methods_are_listed_by_target_like_the_original_help() {
    let broker = Binary::start(AGENT);
    let r = run(&["methods", "-b", &url(&broker)], &[], "");
    assert!(r.ok, "{}", r.err);
    // Groups come sorted by target, each heading underlined to its length.
    assert!(r.out.starts_with("BROKER\n======\n"), "{}", r.out);
    assert!(r.out.contains("\n\nCORE\n====\n"), "{}", r.out);
    for line in [
        "  getSessionUser(user)\n    Return the user the current call runs as.\n",
        "  getMethods(queue, locale)\n",
        "  getNodes()\n",
        "  sendEvent(user, data)\n",
    ] {
        assert!(r.out.contains(line), "{line:?} in\n{}", r.out);
    }
    // Within each group, sorted by name.
    for group in r.out.split("\n\n") {
        let names: Vec<&str> = group
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "sorted by name");
    }
    // Help texts wrap at 72 columns (signatures stay on one line, as the original's do).
    assert!(
        r.out
            .lines()
            .filter(|l| l.starts_with("    "))
            .all(|l| l.len() <= 72),
        "{}",
        r.out
    );

    let r = run(
        &["methods", "-b", &url(&broker), "--target", "core", "--json"],
        &[],
        "",
    );
    assert!(r.ok, "{}", r.err);
    let map: Value = serde_json::from_str(r.out.trim()).expect("json");
    assert_eq!(map["getSessionUser"]["sig"], serde_json::json!(["user"]));
    let r = run(
        &["methods", "-b", &url(&broker), "--target", "nosuch"],
        &[],
        "",
    );
    assert!(!r.ok);
    assert!(
        r.err
            .contains("no methods with target \"nosuch\" (targets: broker, core)"),
        "{}",
        r.err
    );
}

#[test]
fn nodes_are_a_table() {
    let broker = Binary::start(AGENT);
    let r = run(&["nodes", "-b", &url(&broker)], &[], "");
    assert!(r.ok, "{}", r.err);
    let mut lines = r.out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(&header[..2], ["NODE", "LOAD"], "{}", r.out);
    let row: Vec<&str> = lines.next().expect("node-a").split_whitespace().collect();
    assert_eq!(row[0], "node-a", "{}", r.out);
    assert!(row[1].parse::<f64>().is_ok(), "load: {}", r.out);
    let r = run(&["nodes", "-b", &url(&broker), "--json"], &[], "");
    let nodes: Value = serde_json::from_str(r.out.trim()).expect("json");
    assert!(nodes["node-a"]["load"].is_number(), "{}", r.out);
}

#[test]
fn call_takes_named_and_json_arguments_and_explains_errors() {
    let broker = Binary::start(AGENT);
    let url = url(&broker);
    let r = run(&["call", "-b", &url, "getSessionUser"], &[], "");
    assert!(r.ok, "{}", r.err);
    assert_eq!(r.out, "\"guest\"\n");

    // Named parameters, for one node's private queue too.
    for queue in ["org.clacks.command.core", "org.clacks.command.core.node-a"] {
        let arg = format!("queue={queue}");
        let r = run(&["call", "-b", &url, "--json", "getMethods", &arg], &[], "");
        assert!(r.ok, "{}", r.err);
        assert_eq!(r.out.lines().count(), 1, "one line: {}", r.out);
        let methods: Value = serde_json::from_str(&r.out).expect("json");
        assert_eq!(
            methods["getNodes"]["provider"],
            serde_json::json!(["node-a"])
        );
    }
    // JSON arguments: a JSON string and null, positional.
    let r = run(
        &[
            "call",
            "-b",
            &url,
            "getMethods",
            "\"org.clacks.command.core\"",
            "null",
        ],
        &[],
        "",
    );
    assert!(r.ok, "{}", r.err);
    assert!(r.out.starts_with("{\n  \""), "pretty by default: {}", r.out);
    let methods: Value = serde_json::from_str(&r.out).expect("json");
    assert!(methods.get("getSessionUser").is_some(), "{}", r.out);

    let r = run(
        &["call", "-b", &url, "getMethods", "x", "locale=de"],
        &[],
        "",
    );
    assert!(!r.ok);
    assert!(
        r.err
            .contains("positional arguments and named ones (key=value) cannot be mixed"),
        "{}",
        r.err
    );

    // The error record's text, fetched with get_error, instead of the token.
    let r = run(&["call", "-b", &url, "noSuchMethod", "1"], &[], "");
    assert!(!r.ok);
    assert!(
        r.err
            .starts_with("clacks: method noSuchMethod is not defined"),
        "{}",
        r.err
    );
    // --json leaves the record to the caller: the raw error with its token.
    let r = run(&["call", "-b", &url, "--json", "noSuchMethod"], &[], "");
    assert!(!r.ok);
    assert!(r.err.starts_with("clacks: <"), "{}", r.err);

    // A user without a password and no terminal to ask: a clear failure.
    let no_password = format!("amqp://guest@{}", broker.addr);
    let r = run(&["call", "-b", &no_password, "getSessionUser"], &[], "");
    assert!(!r.ok);
    assert!(
        r.err
            .contains("without a password and stdin is not a terminal"),
        "{}",
        r.err
    );
}

#[test]
fn the_url_comes_from_the_environment_or_a_config_file_and_its_path_is_the_domain() {
    let broker = Binary::start(&format!("{AGENT}\ndomain = \"org.example\""));
    let with_domain = format!("{}/org.example", url(&broker));
    let plain = url(&broker);
    let ok = |r: &Run| {
        assert!(r.ok, "{}", r.err);
        assert_eq!(r.out.trim(), "\"guest\"");
    };
    ok(&run(
        &["call", "getSessionUser"],
        &[("CLACKS_URL", &with_domain)],
        "",
    ));
    // The older variable still works; CLACKS_URL wins over it.
    ok(&run(
        &["call", "getSessionUser"],
        &[("CLACKS_BROKER", &with_domain)],
        "",
    ));
    ok(&run(
        &["call", "getSessionUser"],
        &[("CLACKS_URL", &with_domain), ("CLACKS_BROKER", "nowhere:1")],
        "",
    ));
    // --domain and CLACKS_DOMAIN override the path.
    ok(&run(
        &["call", "--domain", "org.example", "getSessionUser"],
        &[("CLACKS_URL", &format!("{plain}/org.wrong"))],
        "",
    ));
    ok(&run(
        &["call", "getSessionUser"],
        &[("CLACKS_URL", &plain), ("CLACKS_DOMAIN", "org.example")],
        "",
    ));
    // The default domain has no agent here: no reply.
    let r = run(
        &["call", "--timeout", "1", "getSessionUser"],
        &[("CLACKS_URL", &plain)],
        "",
    );
    assert!(!r.ok);
    assert!(
        r.err.contains("no reply to getSessionUser within 1 s"),
        "{}",
        r.err
    );

    // A config file's [client] table, by flag or environment; the flag's URL wins.
    let file = broker.dir.path().join("client.toml");
    std::fs::write(&file, format!("[client]\nurl = \"{with_domain}\"\n")).expect("config");
    let file = file.to_str().expect("path");
    ok(&run(&["call", "--config", file, "getSessionUser"], &[], ""));
    let r = run(&["nodes", "--json"], &[("CLACKS_CONFIG", file)], "");
    assert!(r.ok && r.out.contains("\"node-a\""), "{}{}", r.out, r.err);
    let r = run(
        &[
            "call",
            "--config",
            file,
            "-b",
            "amqp://127.0.0.1:1",
            "getSessionUser",
        ],
        &[],
        "",
    );
    assert!(
        !r.ok
            && r.err
                .contains("cannot connect to amqp://127.0.0.1:1/org.clacks"),
        "{}",
        r.err
    );
}

#[test]
fn events_of_one_type_and_no_others() {
    let broker = Binary::start(AGENT);
    let events = Events::start(&broker, &["--type", "NodeStatus", "--count", "2"]);
    // An announcement makes the agent answer with NodeCapabilities: neither may show.
    publish(
        &broker,
        r#"<Event xmlns="http://www.gonicus.de/Events"><NodeAnnounce><Id>z</Id></NodeAnnounce></Event>"#,
    );
    let (ok, out) = events.output_until_exit();
    assert!(ok);
    let text = out.join("\n");
    let documents: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(documents.len(), 2, "{text}");
    for d in documents {
        assert!(
            d.contains("<NodeStatus>") && d.contains("<Id>node-a</Id>"),
            "{d}"
        );
        assert!(
            !d.contains("NodeAnnounce") && !d.contains("NodeCapabilities"),
            "{d}"
        );
    }
    assert_eq!(
        out.last().map(String::as_str),
        Some(""),
        "blank line after each event"
    );

    // Two types: the disjunction, while NodeStatus and NodeAnnounce go by.
    let events = Events::start(
        &broker,
        &[
            "--type",
            "NodeLeave",
            "--type",
            "NodeCapabilities",
            "--count",
            "2",
            "--json",
        ],
    );
    publish(
        &broker,
        r#"<Event xmlns="http://www.gonicus.de/Events"><NodeAnnounce><Id>z</Id></NodeAnnounce></Event>"#,
    );
    publish(&broker, NODE_LEAVE);
    let (ok, out) = events.output_until_exit();
    assert!(ok);
    let mut kinds: Vec<String> = out
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            assert!(v["xml"].as_str().expect("xml").contains("<Event"), "{l}");
            v["type"].as_str().expect("type").to_string()
        })
        .collect();
    // The agent's answer and our leave race each other.
    kinds.sort();
    assert_eq!(kinds, ["NodeCapabilities", "NodeLeave"], "{out:?}");
}

#[test]
fn events_through_a_whole_xquery() {
    let broker = Binary::start(AGENT);
    let filter = "declare namespace f='http://www.gonicus.de/Events'; \
                  let $e := ./f:Event return $e/f:NodeLeave and $e/f:NodeLeave/f:Id != 'skip'";
    let events = Events::start(&broker, &["--filter", filter, "--count", "1", "--json"]);
    for id in ["skip", "keep"] {
        publish(
            &broker,
            &format!(
                r#"<Event xmlns="http://www.gonicus.de/Events"><NodeLeave><Id>{id}</Id></NodeLeave></Event>"#
            ),
        );
    }
    let (ok, out) = events.output_until_exit();
    assert!(ok);
    assert_eq!(out.len(), 1, "{out:?}");
    let v: Value = serde_json::from_str(&out[0]).expect("json");
    assert_eq!(v["type"], "NodeLeave");
    assert!(
        v["xml"].as_str().expect("xml").contains("<Id>keep</Id>"),
        "{v}"
    );

    // A filter the broker cannot use fails at once, with why.
    let r = run(
        &[
            "events",
            "-b",
            &url(&broker),
            "--filter",
            "this is (( no query",
        ],
        &[],
        "",
    );
    assert!(!r.ok);
    assert!(
        r.err.contains("cannot subscribe to the events"),
        "{}",
        r.err
    );
}

#[test]
fn the_shell_runs_a_script_from_stdin() {
    let broker = Binary::start(AGENT);
    let url = url(&broker);
    let r = run(
        &["shell", "-b", &url],
        &[],
        "getSessionUser()\n\n# a comment\ngetNodes()\ngetMethods queue=org.clacks.command.core\n\
         getMethods(queue='org.clacks.command.core', locale=None)\nhelp\n",
    );
    assert!(r.ok, "{}", r.err);
    assert!(
        r.out.starts_with("\"guest\"\n{\n  \"node-a\": {"),
        "{}",
        r.out
    );
    assert!(r.out.contains("\"getSessionUser\": {"), "{}", r.out);
    assert!(
        r.out.contains("CORE\n====\n  getMethods(queue, locale)\n"),
        "{}",
        r.out
    );
    assert!(
        !r.out.contains("Clacks infrastructure shell"),
        "no banner: {}",
        r.out
    );

    // The first failing line ends the script with its error; later lines do not run.
    let r = run(
        &["shell", "-b", &url],
        &[],
        "getSessionUser()\nnoSuchMethod(1, 2)\ngetNodes()\n",
    );
    assert!(!r.ok);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.out, "\"guest\"\n");
    assert!(
        r.err
            .contains("line 2: noSuchMethod(1, 2): method noSuchMethod is not defined"),
        "{}",
        r.err
    );
    let r = run(&["shell", "-b", &url], &[], "getNodes(\n");
    assert!(!r.ok);
    assert!(
        r.err.contains("line 1: getNodes(: expected a value"),
        "{}",
        r.err
    );
}

#[test]
fn send_event_reaches_a_subscriber_and_invalid_events_are_refused() {
    let broker = Binary::start(AGENT);
    let url = url(&broker);
    let events = Events::start(&broker, &["--type", "NodeLeave", "--count", "1", "--json"]);
    let r = run(
        &["send-event", "-b", &url, "-"],
        &[],
        &format!("<?xml version='1.0' encoding='utf-8'?>\n{NODE_LEAVE}\n"),
    );
    assert!(r.ok, "{}", r.err);
    assert_eq!(r.out, "sent NodeLeave event\n");
    let (ok, out) = events.output_until_exit();
    assert!(ok);
    assert_eq!(out.len(), 1, "{out:?}");
    let v: Value = serde_json::from_str(&out[0]).expect("json");
    assert_eq!(v["type"], "NodeLeave");
    assert!(
        v["xml"].as_str().expect("xml").contains("<Id>x</Id>"),
        "{v}"
    );

    // From a file; an event no schema knows is refused with the agent's reason.
    let file = broker.dir.path().join("bad.xml");
    std::fs::write(
        &file,
        r#"<Event xmlns="http://www.gonicus.de/Events"><NoSuchEvent/></Event>"#,
    )
    .expect("write");
    let r = run(
        &["send-event", "-b", &url, file.to_str().expect("path")],
        &[],
        "",
    );
    assert!(!r.ok);
    assert_eq!(r.code, Some(1));
    assert!(r.err.contains("the event was refused: "), "{}", r.err);
    assert!(r.err.contains("NoSuchEvent"), "{}", r.err);
    assert!(
        !r.err.contains("clacks: the event was refused: <"),
        "no token: {}",
        r.err
    );
}

//! The Clacks agent inside `clacks serve`: JSON-RPC calls through `clacks call`, our client
//! library and Qpid's Python client, its errors and its ACL.

mod common;

use std::process::Command;
use std::time::Duration;

use clacks_broker::client::{ConnectOptions, Connection, Message, SubscribeOptions};
use clacks_broker::wire::{QueueDeclare, ReplyTo};
use common::{qpidpy, Binary};
use serde_json::{json, Value};

const AGENT: &str = "[agent]\nadmins = [\"guest\"]\nnode = \"node-a\"";

fn start() -> Binary {
    Binary::start(&format!("{AGENT}\n[users]\nbob = \"bobpw\""))
}

/// `clacks call` as `user`; (success, stdout, stderr).
fn call(broker: &Binary, user: &str, args: &[&str]) -> (bool, String, String) {
    let url = format!("amqp://{user}@{}", broker.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["call", "-b", &url, "--json", "--timeout", "30"])
        .args(args)
        .output()
        .expect("clacks call");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn calls_through_clacks_call_with_the_callers_identity_and_the_acl() {
    let broker = start();
    let (ok, out, err) = call(&broker, "guest:guest", &["getSessionUser"]);
    assert!(ok, "{err}");
    assert_eq!(out, r#""guest""#);
    let (ok, out, err) = call(&broker, "guest:guest", &["getNodes"]);
    assert!(ok, "{err}");
    let nodes: Value = serde_json::from_str(&out).expect("json");
    // Every field the original agent returns for a node.
    let node = &nodes["node-a"];
    assert!(
        node["load"].is_number() && node["latency"].is_number(),
        "{out}"
    );
    assert!(
        node["workers"].is_u64() && node["indexed"].is_boolean(),
        "{out}"
    );
    assert!(node["received"].is_number(), "{out}");
    let (ok, out, _) = call(&broker, "guest:guest", &["getMethods"]);
    assert!(ok);
    let methods: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(methods["getSessionUser"]["provider"], json!(["node-a"]));
    assert_eq!(methods["getSessionUser"]["target"], json!("core"));

    // bob is not an admin and there is no ACL file: refused, with a record to fetch.
    let (ok, _, err) = call(&broker, "bob:bobpw", &["getSessionUser"]);
    assert!(!ok);
    assert!(
        err.contains("No permission to execute method 'org.clacks.command.core.getSessionUser'"),
        "{err}"
    );
    let token = err
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(t, _)| t.to_string())
        .expect("error token");
    let (ok, out, err) = call(&broker, "guest:guest", &["get_error", &token]);
    assert!(ok, "{err}");
    let record: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(record["code"], json!("PERMISSION_EXEC"));
    assert_eq!(record["user"], json!("bob"));
    let (ok, _, _) = call(&broker, "guest:guest", &["get_error", &token]);
    assert!(!ok, "a record is handed out once");

    let (ok, _, err) = call(&broker, "guest:guest", &["noSuchMethod"]);
    assert!(
        !ok && err.contains("method noSuchMethod is not defined"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_error_replies_and_the_agent_carries_on() {
    let broker = start();
    let conn = Connection::open(
        ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url"),
    )
    .await
    .expect("connect");
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(QueueDeclare {
        queue: Some("reply-raw".into()),
        auto_delete: true,
        ..QueueDeclare::default()
    })
    .await
    .expect("reply queue");
    let mut replies = s
        .subscribe("reply-raw", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let bodies: [&[u8]; 4] = [
        b"{not json",
        br#"{"method": "getNodes", "id": 1}"#,
        br#"{"method": "getNodes", "params": 3, "id": 2}"#,
        br#"{"method": "getSessionUser", "params": [], "id": 3}"#,
    ];
    for body in bodies {
        let mut m = Message::new(body.to_vec()).with_routing_key("org.clacks.command.core");
        m.message_properties.reply_to = Some(ReplyTo {
            exchange: None,
            routing_key: Some("reply-raw".into()),
        });
        s.send("", m).await.expect("send");
        let d = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .expect("a reply in time")
            .expect("session")
            .expect("reply");
        replies.accept(&d).await.expect("accept");
        let reply: Value = serde_json::from_slice(&d.body).expect("reply is JSON");
        let keys: Vec<&str> = reply
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 3, "result, id and error: {reply}");
        if body.starts_with(br#"{"method": "getSessionUser""#) {
            assert_eq!(reply["result"], json!("guest"), "{reply}");
            assert_eq!(reply["error"], Value::Null);
        } else {
            assert_eq!(reply["result"], Value::Null, "{reply}");
            assert!(
                reply["error"].as_str().is_some_and(|e| e.starts_with('<')),
                "{reply}"
            );
        }
    }
}

#[test]
fn qpid_messaging_calls_the_agent_as_the_original_proxy_did() {
    let broker = start();
    let script = r#"
import sys, json, uuid
from qpid.messaging import Connection, Message
conn = Connection(sys.argv[1], username="guest", password="guest", reconnect=False)
conn.open()
ssn = conn.session(str(uuid.uuid4()))
reply = "reply-%s" % ssn.name
rcv = ssn.receiver("%s; {create:always, delete:always, node:{type:queue, durable:False, x-declare:{exclusive:False, auto-delete:True}}}" % reply)
snd = ssn.sender("org.clacks.command.core")
for method in ("getMethods", "getNodes"):
    snd.send(Message(json.dumps({"method": method, "params": [], "id": "jsonrpc"}), reply_to=reply))
    m = rcv.fetch(timeout=30)
    ssn.acknowledge()
    body = json.loads(m.content)
    assert body["error"] is None and body["id"] == "jsonrpc", body
    result = body["result"]
    if method == "getMethods":
        # The core target's commands; plugins add their own beside them.
        result = {k: v for k, v in result.items() if v["target"] == "core"}
    print(method, sorted(result.keys()))
conn.close()
"#;
    let out = Command::new(qpidpy().join("venv/bin/python"))
        .args(["-W", "ignore", "-c", script, &broker.url()])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python proxy call failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let methods = text
        .lines()
        .find(|l| l.starts_with("getMethods ["))
        .unwrap_or_else(|| panic!("no getMethods line in {text}"));
    for name in [
        "getMethods",
        "getNodes",
        "getSessionUser",
        "get_error",
        "sendEvent",
    ] {
        assert!(methods.contains(&format!("'{name}'")), "{name}: {text}");
    }
    assert!(text.contains("getNodes ['node-a']"), "{text}");
}

/// Publishes an event on the domain's exchange as guest.
async fn publish_event(s: &clacks_broker::client::Session, xml: &str) {
    s.send(
        "org.clacks",
        Message::new(xml.as_bytes().to_vec()).with_routing_key("event"),
    )
    .await
    .expect("publish event");
}

/// Polls `getNodes` until `pred` holds for the node table.
fn until_nodes(broker: &Binary, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = call(broker, "guest:guest", &["getNodes"]);
        assert!(ok, "{err}");
        let nodes: Value = serde_json::from_str(&out).expect("json");
        if pred(&nodes) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: nodes are {nodes}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_announce_capabilities_leave_and_timeout() {
    let broker = Binary::start(&format!(
        "{AGENT}\nstatus_interval_ms = 200\nnode_timeout_ms = 1500"
    ));
    let conn = Connection::open(
        ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url"),
    )
    .await
    .expect("connect");
    let s = conn.session_unique().await.expect("session");
    // A subscriber that wants only capability events, as Clacks subscribers bind.
    s.declare_queue(QueueDeclare {
        queue: Some("caps".into()),
        exclusive: true,
        auto_delete: true,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
    let mut args = clacks_broker::wire::FieldTable::new();
    args.insert(
        "xquery",
        "declare namespace f='http://www.gonicus.de/Events'; \
         let $e := ./f:Event return $e/f:NodeCapabilities",
    );
    s.bind(clacks_broker::wire::ExchangeBind {
        queue: Some("caps".into()),
        exchange: Some("org.clacks".into()),
        binding_key: Some("event".into()),
        arguments: Some(args),
    })
    .await
    .expect("bind");
    let mut caps = s
        .subscribe("caps", SubscribeOptions::default())
        .await
        .expect("subscribe");
    // Every agent answers an announcement with its capabilities.
    publish_event(&s, &clacks_agent::events::node_announce("node-b")).await;
    let d = tokio::time::timeout(Duration::from_secs(30), caps.next())
        .await
        .expect("capabilities in time")
        .expect("session")
        .expect("event");
    let text = String::from_utf8_lossy(&d.body).into_owned();
    assert!(
        text.contains("<Id>node-a</Id>") && text.contains("getSessionUser"),
        "{text}"
    );

    // node-b's capabilities make it a provider; its leave removes only node-b.
    let event = text.replace("<Id>node-a</Id>", "<Id>node-b</Id>");
    publish_event(&s, &event).await;
    until_nodes(&broker, "node-b joins", |n| n.get("node-b").is_some());
    let (_, out, _) = call(&broker, "guest:guest", &["getMethods"]);
    let methods: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        methods["getSessionUser"]["provider"],
        json!(["node-a", "node-b"])
    );
    publish_event(&s, &clacks_agent::events::node_leave("node-b")).await;
    until_nodes(&broker, "node-b leaves", |n| {
        n.get("node-b").is_none() && n.get("node-a").is_some()
    });

    // node-c never reports its status: dropped after the node timeout.
    publish_event(&s, &event.replace("<Id>node-b</Id>", "<Id>node-c</Id>")).await;
    until_nodes(&broker, "node-c joins", |n| n.get("node-c").is_some());
    until_nodes(&broker, "node-c times out", |n| {
        n.get("node-c").is_none() && n.get("node-a").is_some()
    });
}

#[test]
fn agent_acl_grants_commands_and_events_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().expect("dir");
    let acl = dir.path().join("agent.acl");
    let rules = |extra: &str| {
        format!(
            r#"{{"acl": {{"org.clacks": [{{"acls": [
                {{"priority": 0, "scope": "sub", "members": ["^bob$"],
                  "actions": [{{"topic": "^org\\.clacks\\.command\\.core\\.sendEvent$", "acls": "x"}},
                              {{"topic": "^org\\.clacks\\.event\\.NodeAnnounce$", "acls": "x"}}{extra}]}}]}}]}}}}"#
        )
    };
    std::fs::write(&acl, rules("")).expect("acl");
    let broker = Binary::start_in(
        dir,
        &format!(
            "[agent]\nadmins = [\"guest\"]\nacl_file = {:?}\n[users]\nbob = \"bobpw\"",
            acl.display().to_string()
        ),
    );
    let event = |name: &str| {
        format!(
            r#"<Event xmlns="http://www.gonicus.de/Events"><{name}><Id>n</Id></{name}></Event>"#
        )
    };
    let (ok, out, err) = call(&broker, "bob:bobpw", &["sendEvent", &event("NodeAnnounce")]);
    assert!(ok, "{err}");
    assert_eq!(out, "null");
    let (ok, _, err) = call(&broker, "bob:bobpw", &["sendEvent", &event("NodeLeave")]);
    assert!(
        !ok && err.contains("sending the event 'org.clacks.event.NodeLeave' is not permitted"),
        "{err}"
    );
    let (ok, _, err) = call(&broker, "bob:bobpw", &["getSessionUser"]);
    assert!(!ok && err.contains("No permission"), "{err}");

    std::fs::write(
        &acl,
        rules(r#", {"topic": "^org\\.clacks\\.command\\.core\\.getSessionUser$", "acls": "x"}"#),
    )
    .expect("acl");
    let hup = Command::new("kill")
        .args(["-HUP", &broker.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = call(&broker, "bob:bobpw", &["getSessionUser"]);
        if ok {
            assert_eq!(out, r#""bob""#);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reloaded: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

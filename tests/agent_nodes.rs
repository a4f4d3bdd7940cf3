//! Several Clacks agents on one domain: the one inside `clacks serve` and `clacks agent`
//! processes. Round robin on the shared queue, private queues, forwarding to a script
//! plugin on another node, trusted caller headers, sendEvent, node stop and loss, and an
//! agent that runs against another `clacks serve` and survives its restart.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clacks_broker::client::{
    random_uuid, ConnectOptions, Connection, Message, Session, SubscribeOptions, Subscription,
};
use clacks_broker::wire::{ExchangeBind, FieldTable, QueueDeclare, ReplyTo};
use common::Binary;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// A `clacks agent` process, killed when dropped.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn start(url: &str, node: &str, config: &Path, extra: &[&str]) -> AgentProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_clacks"))
            .args(["agent", "-b", url, "--node", node, "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clacks agent");
        AgentProcess { child }
    }

    /// Waits for the process to end by itself; its success.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A caller with its own reply queue, reading which node answered each call.
struct Rpc {
    _conn: Connection,
    session: Session,
    replies: Subscription,
    reply_queue: String,
}

/// A reply: its result or error, and the node that sent it.
#[derive(Debug)]
struct Reply {
    result: Value,
    error: Value,
    node: String,
}

impl Rpc {
    async fn open(addr: std::net::SocketAddr, credentials: &str) -> Rpc {
        let url = format!("amqp://{credentials}@{addr}");
        let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
            .await
            .expect("connect");
        let session = conn.session_unique().await.expect("session");
        let (reply_queue, replies) = session.reply_queue().await.expect("reply queue");
        Rpc {
            _conn: conn,
            session,
            replies,
            reply_queue,
        }
    }

    /// Calls `method` on `queue`, optionally claiming to act for `caller`.
    async fn call_as(
        &mut self,
        queue: &str,
        method: &str,
        params: Value,
        caller: Option<&str>,
    ) -> Reply {
        let id = random_uuid().to_string();
        let body = json!({"method": method, "params": params, "id": id});
        let mut m = Message::new(body.to_string()).with_routing_key(queue);
        m.message_properties.reply_to = Some(ReplyTo {
            exchange: None,
            routing_key: Some(self.reply_queue.clone()),
        });
        if let Some(caller) = caller {
            let mut headers = FieldTable::new();
            headers.insert("x-clacks-caller", caller);
            m.message_properties.application_headers = Some(headers);
        }
        self.session.send("", m).await.expect("send");
        let d = tokio::time::timeout(DEADLINE, self.replies.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to {method} on {queue}"))
            .expect("session")
            .expect("reply");
        let reply: Value = serde_json::from_slice(&d.body).expect("json");
        assert_eq!(reply["id"], json!(id), "{reply}");
        let node = d
            .message_properties
            .application_headers
            .as_ref()
            .and_then(|h| h.get("x-clacks-node"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        Reply {
            result: reply["result"].clone(),
            error: reply["error"].clone(),
            node,
        }
    }

    async fn call(&mut self, queue: &str, method: &str, params: Value) -> Reply {
        self.call_as(queue, method, params, None).await
    }

    /// Polls `getNodes` on `queue` until `pred` holds.
    async fn until_nodes(&mut self, queue: &str, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = self.call(queue, "getNodes", json!([])).await;
            assert_eq!(r.error, Value::Null, "{what}");
            if pred(&r.result) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {}", r.result);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn write_script(dir: &Path, name: &str, manifest: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("manifest");
    let program = dir.join(name);
    std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

const CORE: &str = "org.clacks.command.core";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_share_the_domain_forward_calls_and_leave() {
    let broker = Binary::start(
        "[agent]\nnode = \"node-a\"\nadmins = [\"guest\"]\ntrusted_agents = [\"agent2\"]\n\
         status_interval_ms = 200\nnode_timeout_ms = 3000\n\
         [users]\nagent2 = \"agent2pw\"\nbob = \"bobpw\"",
    );
    let work = tempfile::tempdir().expect("dir");
    let scripts = work.path().join("scripts");
    std::fs::create_dir(&scripts).expect("scripts dir");
    let other_scripts = work.path().join("other-scripts");
    std::fs::create_dir(&other_scripts).expect("scripts dir");
    // report is CUMULATIVE and on both; first fails on node-c, so node-b's result wins.
    for (dir, node, first) in [
        (&scripts, "node-b", "echo '\"b\"'"),
        (&other_scripts, "node-c", "exit 1"),
    ] {
        write_script(
            dir,
            "report",
            "target = \"tools\"\nhelp = \"Report from each node.\"\ntype = \"CUMULATIVE\"",
            &format!("echo '\"{node}\"'"),
        );
        write_script(
            dir,
            "first",
            "target = \"tools\"\nhelp = \"The first node that can.\"\ntype = \"FIRSTRESULT\"",
            first,
        );
    }
    write_script(
        &scripts,
        "whoami",
        "target = \"tools\"\nhelp = \"Say where the script ran and for whom.\"\nneeds_user = true",
        "echo \"{\\\"ran_on\\\": \\\"node-b\\\", \\\"input\\\": $(cat)}\"",
    );
    // node-b and node-c keep silent nodes for long: only a NodeLeave removes one there.
    let with_scripts = work.path().join("b.toml");
    std::fs::write(
        &with_scripts,
        format!(
            "[agent]\nscripts_dir = {:?}\nstatus_interval_ms = 200\nnode_timeout_ms = 600000\n",
            scripts.display().to_string()
        ),
    )
    .expect("config");
    let plain = work.path().join("c.toml");
    std::fs::write(
        &plain,
        format!(
            "[agent]\nscripts_dir = {:?}\nstatus_interval_ms = 200\nnode_timeout_ms = 600000\n",
            other_scripts.display().to_string()
        ),
    )
    .expect("config");
    let url = format!("amqp://agent2:agent2pw@{}/org.clacks", broker.addr);
    let trust = ["--admin", "guest", "--trust", "clacks-agent"];
    let mut b = AgentProcess::start(&url, "node-b", &with_scripts, &trust);
    let mut c = AgentProcess::start(&url, "node-c", &plain, &trust);

    let mut guest = Rpc::open(broker.addr, "guest:guest").await;
    let at_a = format!("{CORE}.node-a");
    guest
        .until_nodes(&at_a, "all three nodes", |n| {
            ["node-a", "node-b", "node-c"]
                .iter()
                .all(|id| n.get(id).is_some())
        })
        .await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = guest.call(&at_a, "getMethods", json!([])).await;
        if r.result["whoami"]["provider"] == json!(["node-b"])
            && r.result["report"]["provider"].as_array().map(Vec::len) == Some(2)
        {
            assert_eq!(r.result["whoami"]["target"], json!("tools"));
            break;
        }
        assert!(Instant::now() < deadline, "whoami never offered: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The shared queue goes round robin over all three agents.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = guest.call(CORE, "getSessionUser", json!([])).await;
        assert_eq!(r.result, json!("guest"), "{r:?}");
        answered.insert(r.node);
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"]
    );
    // A private queue reaches its node only.
    for _ in 0..5 {
        let r = guest
            .call(&format!("{CORE}.node-c"), "getSessionUser", json!([]))
            .await;
        assert_eq!((r.node.as_str(), r.result), ("node-c", json!("guest")));
    }

    // The script lives on node-b; node-a and node-c forward to it, for the caller.
    let expected = json!({"ran_on": "node-b", "input": {"user": "guest"}});
    for node in ["node-a", "node-c", "node-b"] {
        let r = guest
            .call(&format!("{CORE}.{node}"), "whoami", json!([]))
            .await;
        assert_eq!(r.error, Value::Null, "via {node}: {r:?}");
        assert_eq!((r.node.as_str(), &r.result), (node, &expected));
    }

    // Walks: CUMULATIVE gathers every provider's result, FIRSTRESULT takes the first
    // success (node-c's script fails).
    let r = guest.call(&at_a, "report", json!([])).await;
    assert_eq!(
        r.result,
        json!({"node-b": "node-b", "node-c": "node-c"}),
        "{r:?}"
    );
    let r = guest
        .call(&format!("{CORE}.node-c"), "first", json!([]))
        .await;
    assert_eq!(r.result, json!("b"), "{r:?}");

    // bob may not call whoami: refused on the forwarding node, as the tools topic.
    let mut bob = Rpc::open(broker.addr, "bob:bobpw").await;
    let r = bob.call(&at_a, "whoami", json!([])).await;
    let error = r.error.as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("No permission to execute method 'org.clacks.command.tools.whoami'"),
        "{r:?}"
    );
    // The record of an error stays on the node that reported it (node-c); get_error
    // asked on node-a finds it there, once.
    let r = bob
        .call(&format!("{CORE}.node-c"), "getSessionUser", json!([]))
        .await;
    let token = r
        .error
        .as_str()
        .and_then(|e| e.strip_prefix('<')?.split_once('>'))
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| panic!("no token in {r:?}"));
    let r = guest.call(&at_a, "get_error", json!([token])).await;
    assert_eq!(
        (&r.node, &r.result["user"], &r.result["code"]),
        (
            &"node-a".to_string(),
            &json!("bob"),
            &json!("PERMISSION_EXEC")
        ),
        "{r:?}"
    );
    let r = guest.call(&at_a, "get_error", json!([token])).await;
    assert!(
        r.error
            .as_str()
            .is_some_and(|e| e.contains("no such resource")),
        "{r:?}"
    );
    // A caller header from a user (not an agent identity) counts for nothing.
    let r = bob
        .call_as(&at_a, "getSessionUser", json!([]), Some("guest"))
        .await;
    assert!(
        r.error
            .as_str()
            .is_some_and(|e| e.contains("No permission")),
        "{r:?}"
    );
    let r = guest
        .call_as(&at_a, "getSessionUser", json!([]), Some("bob"))
        .await;
    assert_eq!(r.result, json!("guest"));

    // shutdown: refused on the shared queue without force, obeyed on a private one.
    let r = guest.call(CORE, "shutdown", json!([])).await;
    assert_eq!(r.result, json!(false), "{r:?}");
    let r = guest
        .call(&format!("{CORE}.node-c"), "shutdown", json!([]))
        .await;
    assert_eq!((r.node.as_str(), r.result), ("node-c", json!(true)));
    assert!(c.wait_exit(), "node-c exits cleanly after shutdown");
    // node-b drops silent nodes only after ten minutes: node-c's leave did it.
    guest
        .until_nodes(&format!("{CORE}.node-b"), "node-c left", |n| {
            n.get("node-c").is_none() && n.get("node-a").is_some()
        })
        .await;

    // A killed agent says nothing: node-a drops it after its node timeout, and its
    // commands with it.
    let _ = b.child.kill();
    let _ = b.child.wait();
    guest
        .until_nodes(&at_a, "node-b timed out", |n| n.get("node-b").is_none())
        .await;
    let r = guest.call(&at_a, "getMethods", json!([])).await;
    assert!(r.result.get("whoami").is_none(), "{r:?}");
    let r = guest.call(&at_a, "whoami", json!([])).await;
    assert!(
        r.error
            .as_str()
            .is_some_and(|e| e.contains("method whoami is not defined")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_event_is_validated_checked_and_reaches_only_subscribers_that_asked() {
    // A site's own event type, dropped into the events directory.
    let dir = tempfile::tempdir().expect("dir");
    let events = dir.path().join("events");
    std::fs::create_dir(&events).expect("events dir");
    std::fs::write(
        events.join("DoorOpened.xsd"),
        r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
           xmlns="http://www.gonicus.de/Events" targetNamespace="http://www.gonicus.de/Events"
           elementFormDefault="qualified">
  <xs:complexType name="DoorOpened">
    <xs:sequence>
      <xs:element name="Door" type="xs:string"/>
      <xs:element name="Floor" type="xs:integer" minOccurs="0"/>
    </xs:sequence>
  </xs:complexType>
  <xs:element name="DoorOpened" type="DoorOpened"/>
</xs:schema>"#,
    )
    .expect("schema");
    let broker = Binary::start_in(
        dir,
        "[agent]\nnode = \"node-a\"\nadmins = [\"guest\"]\nevents_dir = \"events\"\n\
         [users]\nbob = \"bobpw\"",
    );
    let mut guest = Rpc::open(broker.addr, "guest:guest").await;
    let door = |floor: &str| {
        format!(
            "<Event xmlns=\"http://www.gonicus.de/Events\"><DoorOpened><Door>front</Door>\
             <Floor>{floor}</Floor></DoorOpened></Event>"
        )
    };
    let r = guest.call(CORE, "sendEvent", json!([door("2")])).await;
    assert_eq!(r.error, Value::Null, "{r:?}");
    let r = guest.call(CORE, "sendEvent", json!([door("second")])).await;
    assert!(
        r.error
            .as_str()
            .is_some_and(|e| e.contains("DoorOpened/Floor")),
        "{r:?}"
    );
    let s = &guest.session;
    s.declare_queue(QueueDeclare {
        queue: Some("ghosts".into()),
        exclusive: true,
        auto_delete: true,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
    let mut args = FieldTable::new();
    args.insert(
        "xquery",
        "declare namespace f='http://www.gonicus.de/Events'; \
         let $e := ./f:Event return $e/f:NodeLeave and $e/f:NodeLeave/f:Id = 'ghost'",
    );
    s.bind(ExchangeBind {
        queue: Some("ghosts".into()),
        exchange: Some("org.clacks".into()),
        binding_key: Some("event".into()),
        arguments: Some(args),
    })
    .await
    .expect("bind");
    let mut ghosts = s
        .subscribe("ghosts", SubscribeOptions::default())
        .await
        .expect("subscribe");

    let event = |name: &str, id: &str| {
        format!(
            "<Event xmlns=\"http://www.gonicus.de/Events\"><{name}><Id>{id}</Id></{name}></Event>"
        )
    };
    for xml in [
        event("NodeLeave", "ghost"),
        event("NodeLeave", "someone-else"),
        event("NodeAnnounce", "ghost"),
    ] {
        let r = guest.call(CORE, "sendEvent", json!([xml])).await;
        assert_eq!((r.error, r.result), (Value::Null, Value::Null), "{xml}");
    }
    for (xml, why) in [
        (event("NodeStatus", "ghost"), "invalid event: NodeStatus"),
        (
            event("NoSuchEvent", "ghost"),
            "unknown event type NoSuchEvent",
        ),
        (
            "<Event xmlns=\"http://www.gonicus.de/Events\"><NodeLeave>".to_string(),
            "malformed",
        ),
    ] {
        let r = guest.call(CORE, "sendEvent", json!([xml])).await;
        let error = r.error.as_str().unwrap_or_default().to_string();
        assert!(error.contains(why), "{xml}: {r:?}");
    }
    let mut bob = Rpc::open(broker.addr, "bob:bobpw").await;
    let r = bob
        .call(CORE, "sendEvent", json!([event("NodeLeave", "ghost")]))
        .await;
    assert!(
        r.error
            .as_str()
            .is_some_and(|e| e.contains("No permission")),
        "bob may not call sendEvent at all: {r:?}"
    );
    // A last ghost marks the end: what the filter let through lies before it.
    let r = guest
        .call(CORE, "sendEvent", json!([event("NodeLeave", "ghost")]))
        .await;
    assert_eq!(r.error, Value::Null);
    for _ in 0..2 {
        let d = tokio::time::timeout(DEADLINE, ghosts.next())
            .await
            .expect("event in time")
            .expect("session")
            .expect("event");
        ghosts.accept(&d).await.expect("accept");
        let text = String::from_utf8_lossy(&d.body);
        assert!(
            text.contains("<NodeLeave>") && text.contains("<Id>ghost</Id>"),
            "{text}"
        );
        // Published under the agent's identity, as the original agent does.
        assert_eq!(
            d.message_properties.user_id.as_deref(),
            Some(&b"clacks-agent"[..])
        );
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_alone_serves_through_another_broker_and_survives_its_restart() {
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nauth_failure_delay_ms = 50\n\
         [tls]\nenabled = false\n[agent]\nenabled = false\n[users]\nguest = \"guest\"\n"
    );
    let broker = Binary::start_with_config(tempfile::tempdir().expect("dir"), &config, &[]);
    let work = tempfile::tempdir().expect("dir");
    let agent_config = work.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        "[agent]\nstatus_interval_ms = 200\nnode_timeout_ms = 1000\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 500\n",
    )
    .expect("config");
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/org.example");
    let mut agent = AgentProcess::start(&url, "node-x", &agent_config, &["--admin", "guest"]);
    let queue = "org.example.command.core";

    // The agent declares its queues when it is up: poll until a call is answered.
    let answer = |broker_addr| async move {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut rpc = Rpc::open(broker_addr, "guest:guest").await;
            let probe = rpc.session.query_queue(queue).await.expect("query");
            if probe.queue.is_some_and(|q| !q.is_empty()) {
                return rpc.call(queue, "getSessionUser", json!([])).await;
            }
            assert!(Instant::now() < deadline, "the agent never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let r = answer(broker.addr).await;
    assert_eq!((r.node.as_str(), r.result), ("node-x", json!("guest")));

    // The broker dies and comes back on the same port: the agent reconnects by itself.
    let dir = broker.kill();
    let broker = Binary::start_with_config(dir, &config, &[]);
    let r = answer(broker.addr).await;
    assert_eq!((r.node.as_str(), r.result), ("node-x", json!("guest")));
    let mut rpc = Rpc::open(broker.addr, "guest:guest").await;
    rpc.until_nodes(queue, "node-x announced again", |n| {
        n.get("node-x").is_some()
    })
    .await;

    // Killed, the agent cannot delete its private queue: the broker does, once the node
    // timeout has passed without a consumer.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let private = format!("{queue}.node-x");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let q = rpc.session.query_queue(&private).await.expect("query");
        if q.queue.is_none_or(|q| q.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "{private} is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The agent's `broker` commands inside `clacks serve`, called through `clacks call`: queue,
//! exchange, binding and connection listings, purging and deleting queues, and local users
//! added and removed while the broker runs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clacks_broker::client::{ConnectOptions, Connection, Message};
use clacks_broker::wire::{ExchangeBind, FieldTable, QueueDeclare};
use common::Binary;
use serde_json::{json, Value};

const CONFIG: &str = "[agent]\nadmins = [\"guest\"]\nnode = \"node-a\"\n[users]\nbob = \"bobpw\"";

/// How long anything the tests wait for may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// `clacks call` as `user` (`name:password`); (success, stdout, stderr).
fn call(broker: &Binary, user: &str, args: &[&str]) -> (bool, String, String) {
    let url = format!("amqp://{user}@{}", broker.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["call", "-b", &url, "--json", "--timeout", "30"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("clacks call");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// A call as guest that must succeed; its JSON result.
fn ok(broker: &Binary, args: &[&str]) -> Value {
    let (ok, out, err) = call(broker, "guest:guest", args);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// A call as guest that must fail; its error text.
fn refused(broker: &Binary, args: &[&str]) -> String {
    let (ok, out, err) = call(broker, "guest:guest", args);
    assert!(!ok, "{args:?} should fail, gave {out}");
    err
}

/// Calls until the result satisfies `done`, up to the deadline; the last result.
fn poll(broker: &Binary, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (ok, out, err) = call(broker, "guest:guest", args);
        if ok {
            let v: Value = serde_json::from_str(&out).expect("json");
            if done(&v) {
                return v;
            }
            assert!(start.elapsed() < DEADLINE, "{args:?} never got there: {v}");
        } else {
            assert!(start.elapsed() < DEADLINE, "{args:?} kept failing: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The broker's answer to the agent's first command, once it serves.
fn wait_for_agent(broker: &Binary) {
    poll(broker, &["listQueues"], Value::is_array);
}

/// The entry of `list` whose `key` is `value`.
fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == json!(value))
}

/// `clacks send` of one message to `queue` (declared on the way) as `user`.
fn send_as(broker: &Binary, user: &str, queue: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(["send", "-b", &format!("amqp://{user}@{}", broker.addr)])
        .args(["--create", queue, "--content", "hi"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("clacks send");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const XQUERY: &str = "boolean(./order)";

/// Declares `adm-q` (three messages, bound to amq.direct) and `adm-x` (one message, bound
/// to the agent's xml exchange with an XQuery) through the client library.
fn set_up_queues(broker: &Binary) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = Connection::open(
            ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url"),
        )
        .await
        .expect("connect");
        let s = conn.session_unique().await.expect("session");
        for q in ["adm-q", "adm-x"] {
            s.declare_queue(QueueDeclare {
                queue: Some(q.into()),
                ..QueueDeclare::default()
            })
            .await
            .expect("declare");
        }
        s.bind(ExchangeBind {
            queue: Some("adm-q".into()),
            exchange: Some("amq.direct".into()),
            binding_key: Some("adm-key".into()),
            arguments: None,
        })
        .await
        .expect("bind direct");
        let mut args = FieldTable::new();
        args.insert("xquery", XQUERY);
        s.bind(ExchangeBind {
            queue: Some("adm-x".into()),
            exchange: Some("org.clacks".into()),
            binding_key: Some("orders".into()),
            arguments: Some(args),
        })
        .await
        .expect("bind xml");
        for _ in 0..3 {
            s.send(
                "",
                Message::new(b"hello".to_vec()).with_routing_key("adm-q"),
            )
            .await
            .expect("send");
        }
        s.send("", Message::new(b"x".to_vec()).with_routing_key("adm-x"))
            .await
            .expect("send");
        conn.close().await.expect("close");
    });
}

#[test]
fn listings_purge_and_delete_through_the_agent() {
    let broker = Binary::start(CONFIG);
    wait_for_agent(&broker);
    set_up_queues(&broker);

    let queues = poll(&broker, &["listQueues"], |v| {
        find(v, "name", "adm-q").is_some_and(|q| q["messages"] == json!(3))
            && find(v, "name", "adm-x").is_some_and(|q| q["messages"] == json!(1))
    });
    let q = find(&queues, "name", "adm-q").expect("adm-q");
    // Bytes as QMF counts them: three 5-byte bodies and their headers.
    let bytes = q["bytes"].as_u64().expect("bytes");
    assert!(
        bytes > 15 && bytes == q["byteEnqueues"].as_u64().expect("in"),
        "{q}"
    );
    assert_eq!(
        (q["enqueues"].clone(), q["dequeues"].clone()),
        (json!(3), json!(0))
    );
    assert_eq!(q["consumers"], json!(0));
    assert_eq!(q["durable"], json!(false));
    assert_eq!(q["autoDelete"], json!(false));
    assert_eq!(q["exclusive"], json!(false));
    let names: Vec<&str> = queues
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "queues sorted by name");

    let exchanges = ok(&broker, &["listExchanges"]);
    let direct = find(&exchanges, "name", "amq.direct").expect("amq.direct");
    assert_eq!(direct["type"], json!("direct"));
    assert_eq!(direct["bindings"], json!(1), "{direct}");
    let xml = find(&exchanges, "name", "org.clacks").expect("the agent's exchange");
    assert_eq!(xml["type"], json!("xml"));

    let direct_bindings = ok(&broker, &["listBindings", "amq.direct"]);
    assert_eq!(
        direct_bindings,
        json!([{"exchange": "amq.direct", "queue": "adm-q", "key": "adm-key", "arguments": {}}])
    );
    let all = ok(&broker, &["listBindings"]);
    let x = find(&all, "queue", "adm-x").expect("xml binding");
    assert_eq!(x["exchange"], json!("org.clacks"));
    assert_eq!(x["key"], json!("orders"));
    assert_eq!(x["arguments"]["xquery"], json!(XQUERY));
    assert!(find(&all, "queue", "adm-q").is_some(), "{all}");
    let err = refused(&broker, &["listBindings", "no-such-exchange"]);
    assert!(
        err.contains("no such resource: exchange no-such-exchange"),
        "{err}"
    );

    let connections = ok(&broker, &["listConnections"]);
    let list = connections.as_array().expect("list");
    let agent = list
        .iter()
        .find(|c| c["address"] == json!("internal"))
        .expect("the agent's in-process connection");
    assert_eq!(agent["user"], json!("clacks-agent"));
    assert_eq!(agent["tls"], json!(false));
    assert!(agent["sessions"].as_u64() >= Some(1), "{agent}");
    let caller = list
        .iter()
        .find(|c| c["user"] == json!("guest"))
        .expect("the caller's connection");
    assert!(
        caller["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{caller}"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let since = caller["since"].as_u64().expect("since");
    assert!(since <= now && since + 120 > now, "{caller}");

    assert_eq!(ok(&broker, &["purgeQueue", "adm-q"]), json!(3));
    let queues = ok(&broker, &["listQueues"]);
    let q = find(&queues, "name", "adm-q").expect("adm-q stays");
    assert_eq!(
        (q["messages"].clone(), q["bytes"].clone()),
        (json!(0), json!(0))
    );
    let err = refused(&broker, &["purgeQueue", "no-such-queue"]);
    assert!(
        err.contains("no such resource: queue no-such-queue"),
        "{err}"
    );
    assert!(
        err.starts_with('<') || err.contains(" <"),
        "error token: {err}"
    );

    // if-empty holds adm-x back; a plain delete does not.
    let err = refused(&broker, &["deleteQueue", "adm-x", "false", "true"]);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(ok(&broker, &["deleteQueue", "adm-x"]), json!(true));
    assert_eq!(
        ok(&broker, &["deleteQueue", "adm-q", "true", "true"]),
        json!(true)
    );
    let queues = ok(&broker, &["listQueues"]);
    assert!(find(&queues, "name", "adm-q").is_none(), "{queues}");
    assert!(find(&queues, "name", "adm-x").is_none(), "{queues}");
    let err = refused(&broker, &["deleteQueue", "adm-q"]);
    assert!(err.contains("no such resource: queue adm-q"), "{err}");
    let err = refused(&broker, &["deleteQueue"]);
    assert!(
        err.contains("bad arguments: deleteQueue: name is required"),
        "{err}"
    );

    // bob may log in but is no admin, and there is no ACL file.
    let (ok_bob, _, err) = call(&broker, "bob:bobpw", &["listQueues"]);
    assert!(!ok_bob);
    assert!(
        err.contains("No permission to execute method 'org.clacks.command.broker.listQueues'"),
        "{err}"
    );
}

#[test]
fn users_added_at_run_time_log_in_and_survive_a_restart() {
    let broker = Binary::start(CONFIG);
    wait_for_agent(&broker);

    assert_eq!(ok(&broker, &["addUser", "carol", "carolpw"]), json!(true));
    let (sent, err) = send_as(&broker, "carol:carolpw", "carolq");
    assert!(sent, "carol logs in at once: {err}");
    let generated = ok(&broker, &["addUser", "dave"]);
    let password = generated.as_str().expect("a generated password");
    assert!(password.len() >= 16, "{password}");
    let (sent, err) = send_as(&broker, &format!("dave:{password}"), "daveq");
    assert!(sent, "dave logs in with the generated password: {err}");
    let (sent, _) = send_as(&broker, "carol:wrong", "carolq");
    assert!(!sent, "a wrong password is still refused");

    let users = ok(&broker, &["listUsers"]);
    assert_eq!(
        users,
        json!([
            {"name": "bob", "source": "config"},
            {"name": "carol", "source": "store"},
            {"name": "dave", "source": "store"},
            {"name": "guest", "source": "config"},
        ])
    );
    let err = refused(&broker, &["addUser", "carol", "again"]);
    assert!(err.contains("user carol exists"), "{err}");
    let err = refused(&broker, &["addUser", "guest", "x"]);
    assert!(err.contains("user guest exists"), "{err}");
    let err = refused(&broker, &["addUser", "", "x"]);
    assert!(err.contains("bad arguments"), "{err}");
    let err = refused(&broker, &["addUser", "erin", ""]);
    assert!(err.contains("empty passwords are not allowed"), "{err}");
    let err = refused(&broker, &["addUser", "a b", "x"]);
    assert!(err.contains("bad arguments"), "{err}");

    // SIGKILL: what addUser answered for must already be on disk.
    let dir = broker.kill();
    let broker = Binary::start_in(dir, CONFIG);
    let (sent, err) = send_as(&broker, "carol:carolpw", "carolq");
    assert!(sent, "carol survives the restart: {err}");
    wait_for_agent(&broker);
    let users = ok(&broker, &["listUsers"]);
    assert!(find(&users, "name", "carol").is_some(), "{users}");

    assert_eq!(ok(&broker, &["removeUser", "carol"]), json!(true));
    let (sent, err) = send_as(&broker, "carol:carolpw", "carolq");
    assert!(!sent, "carol is refused once removed");
    assert!(err.contains("uthentication failed"), "{err}");
    let users = ok(&broker, &["listUsers"]);
    assert!(find(&users, "name", "carol").is_none(), "{users}");
    let err = refused(&broker, &["removeUser", "carol"]);
    assert!(err.contains("no such resource: user carol"), "{err}");
    let err = refused(&broker, &["removeUser", "bob"]);
    assert!(err.contains("defined in the configuration file"), "{err}");

    // The removal is durable too; dave stays.
    let dir = broker.kill();
    let broker = Binary::start_in(dir, CONFIG);
    let (sent, _) = send_as(&broker, "carol:carolpw", "carolq");
    assert!(!sent, "carol stays removed after a restart");
    let (sent, err) = send_as(&broker, &format!("dave:{password}"), "daveq");
    assert!(sent, "dave survives: {err}");

    // bob may log in but may not administer users.
    let (ok_bob, _, err) = call(&broker, "bob:bobpw", &["addUser", "mallory", "pw"]);
    assert!(!ok_bob);
    assert!(err.contains("No permission to execute"), "{err}");
}

//! Authentication, TLS, stamped identities, the ACL and the limits, end to end against the
//! real `clacks serve`: our client and CLI, Qpid's Python client, and a private slapd.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clacks_broker::client::{ClientError, ConnectOptions, Connection, Message, SubscribeOptions};
use clacks_broker::wire::{Command as AmqpCommand, Control};
use clacks_broker::wire::{ExchangeBind, QueueDeclare, QueueDelete};
use common::raw::RawPeer;
use common::{qpidpy, Binary};

const DEADLINE: Duration = Duration::from_secs(30);

fn clacks() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clacks"))
}

/// Runs a `clacks` client command; returns (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = clacks().args(args).output().expect("run clacks");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn open(url: &str) -> Result<Connection, ClientError> {
    Connection::open(ConnectOptions::parse(url).expect("url")).await
}

fn queue(name: &str) -> QueueDeclare {
    QueueDeclare {
        queue: Some(name.into()),
        ..QueueDeclare::default()
    }
}

/// The test CA of certs/make-test-ca.sh, with client certificates for alice and bob.
fn test_ca(dir: &Path) -> PathBuf {
    let out = dir.join("ca");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/make-test-ca.sh");
    let status = Command::new("sh")
        .arg(script)
        .arg(&out)
        .args(["alice", "bob"])
        .stdout(Stdio::null())
        .status()
        .expect("run make-test-ca.sh");
    assert!(status.success(), "make-test-ca.sh failed");
    out
}

fn tls_config(ca: &Path) -> String {
    format!(
        "[tls]\ncert = \"{0}/server.pem\"\nkey = \"{0}/server-key.pem\"\nclient_ca = \"{0}/ca.pem\"\n",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_logs_in_with_plain_over_tls_scram_and_external() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(certs.path());
    let broker = Binary::start(&format!(
        "allow_anonymous = false\n{}\n[users]\nalice = \"alicepw\"",
        tls_config(&ca)
    ));
    let tls = broker.tls_addr.expect("amqps listener");
    let amqps = |user: &str| format!("amqps://{user}localhost:{}", tls.port());
    let ca_pem = ca.join("ca.pem");
    let ca_arg = ca_pem.to_str().expect("path");
    let cert = ca.join("alice.pem");
    let key = ca.join("alice-key.pem");

    // PLAIN over TLS, checked against the test CA; the queue is made on the way.
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &amqps("alice:alicepw@"),
        "--tls-ca",
        ca_arg,
        "--create",
        "tlsq",
        "--content",
        "plain-over-tls",
    ]);
    assert!(ok, "PLAIN over TLS: {err}");
    // SCRAM-SHA-256 over plain TCP.
    let scram = format!("amqp://alice:alicepw@{}", broker.addr);
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &scram,
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "tlsq",
        "--content",
        "scram",
    ]);
    assert!(ok, "SCRAM: {err}");
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &format!("amqp://alice:wrong@{}", broker.addr),
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "tlsq",
        "--content",
        "x",
    ]);
    assert!(
        !ok && err.contains("authentication failed"),
        "wrong SCRAM password: {err}"
    );
    // EXTERNAL: bob's certificate makes him bob, with no password at all.
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &amqps(""),
        "--tls-ca",
        ca_arg,
        "--tls-cert",
        ca.join("bob.pem").to_str().expect("path"),
        "--tls-key",
        ca.join("bob-key.pem").to_str().expect("path"),
        "tlsq",
        "--content",
        "external",
    ]);
    assert!(ok, "EXTERNAL: {err}");
    // A client that does not trust the broker's certificate gets nowhere.
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &amqps("alice:alicepw@"),
        "tlsq",
        "--content",
        "x",
    ]);
    assert!(
        !ok && err.contains("TLS"),
        "untrusted certificate accepted: {err}"
    );
    // Without a certificate, EXTERNAL is not even offered.
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &amqps(""),
        "--tls-ca",
        ca_arg,
        "--sasl-mechanism",
        "EXTERNAL",
        "tlsq",
        "--content",
        "x",
    ]);
    assert!(
        !ok && err.contains("EXTERNAL"),
        "EXTERNAL without a certificate: {err}"
    );

    // Every message carries the identity it was sent under.
    let (ok, out, err) = run(&[
        "receive",
        "-b",
        &amqps(""),
        "--tls-ca",
        ca_arg,
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
        "tlsq",
        "-m",
        "3",
        "--timeout",
        "10",
        "--print-headers",
    ]);
    assert!(ok, "receive over TLS with EXTERNAL: {err}");
    let users: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("User-Id: "))
        .collect();
    assert_eq!(users, ["alice", "alice", "bob"], "{out}");
    for body in ["plain-over-tls", "scram", "external"] {
        assert!(out.contains(body), "{body} missing from {out}");
    }
}

#[test]
fn qpid_messaging_connects_with_plain_over_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(certs.path());
    let broker = Binary::start(&format!("allow_anonymous = false\n{}", tls_config(&ca)));
    let port = broker.tls_addr.expect("amqps listener").port();
    let script = r#"
import sys
from qpid.messaging import Connection, Message
port, trust = sys.argv[1], sys.argv[2]
conn = Connection("localhost:" + port, username="guest", password="guest",
                  transport="ssl", ssl_trustfile=trust, sasl_mechanisms="PLAIN",
                  reconnect=False)
conn.open()
ssn = conn.session()
snd = ssn.sender("pytls; {create: always}")
rcv = ssn.receiver("pytls")
snd.send(Message("over tls"))
m = rcv.fetch(timeout=10)
ssn.acknowledge()
print("GOT", m.content, "FROM", m.user_id)
conn.close()
"#;
    let python = qpidpy().join("venv/bin/python");
    let run_py = |trust: &Path| {
        Command::new(&python)
            .args(["-W", "ignore", "-c", script, &port.to_string()])
            .arg(trust)
            .output()
            .expect("python")
    };
    let out = run_py(&ca.join("ca.pem"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("GOT over tls FROM guest"),
        "qpid.messaging over TLS:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Trusting another CA (the broker's generated certificate is not from it): refused.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = test_ca(other.path());
    let out = run_py(&other_ca.join("ca.pem"));
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_user_id_is_refused_and_absent_one_is_stamped() {
    let broker = Binary::start("");
    let url = format!("amqp://guest:guest@{}", broker.addr);
    let conn = open(&url).await.expect("login");
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(queue("stamped")).await.expect("declare");
    let mut forged = Message::new("forged").with_routing_key("stamped");
    forged.message_properties.user_id = Some("mallory".into());
    match s.send("", forged).await {
        Err(ClientError::Session { code: 403, text }) => {
            assert!(text.contains("mallory"), "{text}")
        }
        other => panic!("a forged user-id was not refused: {other:?}"),
    }
    let s = conn.session_unique().await.expect("session");
    let mut own = Message::new("own").with_routing_key("stamped");
    own.message_properties.user_id = Some("guest@QPID".into());
    s.send("", own).await.expect("own full id is fine");
    s.send("", Message::new("bare").with_routing_key("stamped"))
        .await
        .expect("no user-id");
    let mut sub = s
        .subscribe("stamped", SubscribeOptions::default())
        .await
        .expect("subscribe");
    for (body, user) in [("own", "guest@QPID"), ("bare", "guest")] {
        let d = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("in time")
            .expect("no error")
            .expect("a delivery");
        assert_eq!(&d.body[..], body.as_bytes());
        assert_eq!(
            d.message_properties.user_id.as_deref(),
            Some(user.as_bytes()),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_one_user_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("broker.acl");
    std::fs::write(
        &acl,
        "acl deny bob consume queue name=secret*\n\
         acl deny bob bind exchange queuename=secret*\n\
         acl deny bob publish exchange name=amq.fanout\n\
         acl allow all all\n",
    )
    .expect("acl");
    let broker = Binary::start_in(
        dir,
        &format!(
            "acl_file = \"{}\"\n[users]\nalice = \"alicepw\"\nbob = \"bobpw\"",
            acl.display()
        ),
    );
    let alice = open(&format!("amqp://alice:alicepw@{}", broker.addr))
        .await
        .expect("alice");
    let bob = open(&format!("amqp://bob:bobpw@{}", broker.addr))
        .await
        .expect("bob");
    let sa = alice.session_unique().await.expect("session");
    sa.declare_queue(queue("secret.plans"))
        .await
        .expect("declare");
    sa.send(
        "",
        Message::new("for alice").with_routing_key("secret.plans"),
    )
    .await
    .expect("send");
    let sb = bob.session_unique().await.expect("session");
    match sb
        .subscribe("secret.plans", SubscribeOptions::default())
        .await
    {
        Err(ClientError::Session { code: 403, text }) => assert!(text.contains("bob"), "{text}"),
        Err(e) => panic!("bob: unexpected error {e}"),
        Ok(_) => panic!("bob was let consume secret.plans"),
    }
    // Bob's other work goes on; alice consumes normally.
    // Nor can he bind the queue elsewhere, or reach a denied exchange as an alternate.
    let sb = bob.session_unique().await.expect("session");
    let bind = ExchangeBind {
        queue: Some("secret.plans".into()),
        exchange: Some("amq.direct".into()),
        binding_key: Some("leak".into()),
        arguments: None,
    };
    match sb.bind(bind).await {
        Err(ClientError::Session { code: 403, .. }) => {}
        other => panic!("bob bound secret.plans: {other:?}"),
    }
    let sb = bob.session_unique().await.expect("session");
    let with_alternate = QueueDeclare {
        alternate_exchange: Some("amq.fanout".into()),
        ..queue("sneaky")
    };
    match sb.declare_queue(with_alternate).await {
        Err(ClientError::Session { code: 403, .. }) => {}
        other => panic!("bob used a denied alternate exchange: {other:?}"),
    }
    let sb = bob.session_unique().await.expect("session");
    sb.declare_queue(queue("public"))
        .await
        .expect("bob declares");
    let mut sub = sa
        .subscribe("secret.plans", SubscribeOptions::default())
        .await
        .expect("alice subscribes");
    let d = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("no error")
        .expect("delivery");
    assert_eq!(&d.body[..], b"for alice");

    // New rules, SIGHUP: now alice may not declare queues.
    std::fs::write(&acl, "acl deny alice create queue\nacl allow all all\n").expect("acl");
    let pid = broker.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let start = Instant::now();
    loop {
        let s = alice.session_unique().await.expect("session");
        match s.declare_queue(queue("after-reload")).await {
            Err(ClientError::Session { code: 403, .. }) => break,
            Ok(()) => {
                let delete = QueueDelete {
                    queue: Some("after-reload".into()),
                    ..QueueDelete::default()
                };
                s.delete_queue(delete).await.expect("delete");
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the ACL was not reloaded on SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_the_excess_and_spare_the_rest() {
    let broker = Binary::start(
        "max_connections_per_user = 1\nmax_sessions = 2\nmax_queues_per_user = 1\n\
         [users]\nalice = \"alicepw\"",
    );
    let guest = format!("amqp://guest:guest@{}", broker.addr);
    let first = open(&guest).await.expect("first connection");
    match open(&guest).await {
        Err(ClientError::Auth(text) | ClientError::Connection { text, .. }) => {
            assert!(text.contains("connections"), "{text}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a second connection of guest was let in"),
    }
    // The limit is checked before the password: a wrong one gets the same refusal.
    match open(&format!("amqp://guest:wrong@{}", broker.addr)).await {
        Err(ClientError::Auth(text) | ClientError::Connection { text, .. }) => {
            assert!(text.contains("connections"), "{text}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a wrong password was let in"),
    }
    // Another user is not affected.
    let alice = open(&format!("amqp://alice:alicepw@{}", broker.addr))
        .await
        .expect("alice");
    // Sessions: two are fine, the third gets resource-limit-exceeded and is detached.
    let mut raw = RawPeer::open(broker.addr, 0xffff, 0).await;
    raw.attach(1, "one").await;
    raw.attach(2, "two").await;
    raw.attach(3, "three").await;
    let e = raw
        .expect_command(|c| matches!(c, AmqpCommand::ExecutionException(_)))
        .await;
    let AmqpCommand::ExecutionException(e) = e else {
        unreachable!()
    };
    assert_eq!(e.error_code.map(|c| c.0), Some(506), "{e:?}");
    raw.expect_control(|c| matches!(c, Control::SessionDetach(_)))
        .await;
    let s1 = first.session_unique().await.expect("session 1");
    // Queues: one per user.
    s1.declare_queue(queue("guest-1"))
        .await
        .expect("first queue");
    match s1.declare_queue(queue("guest-2")).await {
        Err(ClientError::Session { code: 506, .. }) => {}
        other => panic!("second queue of guest: {other:?}"),
    }
    let sa = alice.session_unique().await.expect("session");
    sa.declare_queue(queue("alice-1"))
        .await
        .expect("alice's queue");
}

#[test]
fn first_start_makes_admin_and_user_commands_manage_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("clacks-data");
    let data_arg = data.to_str().expect("path").to_string();
    let config = "listen = \"127.0.0.1:0\"\n";
    let broker = Binary::start_with_config(dir, config, &[]);
    let password = broker
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("first start: created user admin with password "))
        .expect("admin password printed")
        .trim()
        .to_string();
    let url = format!("amqp://admin:{password}@{}", broker.addr);
    let (ok, _, err) = run(&["send", "-b", &url, "--create", "q", "--content", "hi"]);
    assert!(ok, "admin login: {err}");
    // No guest, no anonymous.
    let (ok, _, _) = run(&[
        "send",
        "-b",
        &format!("amqp://guest:guest@{}", broker.addr),
        "q",
    ]);
    assert!(!ok, "guest/guest got in");
    let (ok, _, _) = run(&[
        "send",
        "-b",
        &broker.addr.to_string(),
        "q",
        "--content",
        "x",
    ]);
    assert!(!ok, "anonymous got in");
    // Users are managed on a stopped broker only.
    let (ok, _, err) = run(&["user", "list", "--data-dir", &data_arg]);
    assert!(
        !ok && err.contains("stopped"),
        "user list on a running broker: {err}"
    );
    let dir = broker.kill();

    let mut add = clacks()
        .args([
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--data-dir",
            &data_arg,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("user add");
    {
        use std::io::Write;
        let mut stdin = add.stdin.take().expect("stdin");
        stdin.write_all(b"carolpw\n").expect("write");
    }
    assert!(add.wait().expect("wait").success());
    let (ok, out, _) = run(&["user", "list", "--data-dir", &data_arg]);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["admin", "carol"]);
    let (ok, _, _) = run(&["user", "add", "carol", "--data-dir", &data_arg]);
    assert!(!ok, "adding carol twice");
    let (ok, out, _) = run(&["user", "passwd", "admin", "--data-dir", &data_arg]);
    assert!(ok);
    let new_admin = out
        .lines()
        .find_map(|l| l.strip_prefix("password for admin: "))
        .expect("new password printed")
        .to_string();

    // Restart: nothing printed about admin, carol logs in, admin only with the new password.
    let broker = Binary::start_with_config(dir, config, &[]);
    assert!(
        !broker
            .banner
            .iter()
            .any(|l| l.contains("created user admin")),
        "{:?}",
        broker.banner
    );
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &format!("amqp://carol:carolpw@{}", broker.addr),
        "--create",
        "q",
        "--content",
        "c",
    ]);
    assert!(ok, "carol: {err}");
    let (ok, _, _) = run(&[
        "send",
        "-b",
        &url,
        "--create",
        "q",
        "--content",
        "old password",
    ]);
    assert!(!ok, "the old admin password still works");
    let new_url = format!("amqp://admin:{new_admin}@{}", broker.addr);
    let (ok, _, err) = run(&[
        "send",
        "-b",
        &new_url,
        "--create",
        "q",
        "--content",
        "new password",
    ]);
    assert!(ok, "new admin password: {err}");
    let dir = broker.kill();
    let (ok, _, _) = run(&["user", "del", "carol", "--data-dir", &data_arg]);
    assert!(ok);
    let (ok, out, _) = run(&["user", "list", "--data-dir", &data_arg]);
    assert!(ok && out.trim() == "admin", "{out}");
    drop(dir);
}

/// A private slapd on 127.0.0.1 with alice (password alicepw) under ou=people.
struct Slapd {
    dir: tempfile::TempDir,
    port: u16,
    pid: Option<u32>,
}

const SUFFIX: &str = "dc=example,dc=test";

impl Slapd {
    fn start() -> Slapd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).expect("data dir");
        let hash = |pw: &str| {
            let out = Command::new("/usr/sbin/slappasswd")
                .args(["-s", pw])
                .output()
                .expect("slappasswd (apt-get install slapd)");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let conf = root.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 pidfile {root}/slapd.pid\nargsfile {root}/slapd.args\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\n\
                 rootdn \"cn=admin,{SUFFIX}\"\nrootpw {admin}\n\
                 directory {root}/data\nindex objectClass eq\nindex uid eq\n",
                root = root.display(),
                admin = hash("adminpw"),
            ),
        )
        .expect("slapd.conf");
        let ldif = root.join("base.ldif");
        std::fs::write(
            &ldif,
            format!(
                "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
                 dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
                 dn: uid=alice,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: Example\nuserPassword: {}\n",
                hash("alicepw")
            ),
        )
        .expect("ldif");
        let status = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif)
            .stderr(Stdio::null())
            .status()
            .expect("slapadd");
        assert!(status.success(), "slapadd failed");
        let mut slapd = Slapd {
            dir,
            port,
            pid: None,
        };
        slapd.run();
        slapd
    }

    /// Starts the daemon (again) and waits until it answers.
    fn run(&mut self) {
        let conf = self.dir.path().join("slapd.conf");
        let status = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            .status()
            .expect("slapd");
        assert!(status.success(), "slapd did not start");
        let pidfile = self.dir.path().join("slapd.pid");
        let start = Instant::now();
        loop {
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse().ok());
            let up = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if let (Some(pid), true) = (pid, up) {
                self.pid = Some(pid);
                return;
            }
            assert!(start.elapsed() < DEADLINE, "slapd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(start.elapsed() < DEADLINE, "slapd did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().map(|a: SocketAddr| a.port()).expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_logins_and_outage() {
    let mut slapd = Slapd::start();
    let broker = Binary::start(&format!(
        "allow_anonymous = false\nauth_sources = [\"local\", \"ldap\"]\n\
         [ldap]\nurl = \"{}\"\nbase = \"ou=people,{SUFFIX}\"\nfilter = \"(|(uid=%u)(cn=%u))\"\n\
         bind_dn = \"cn=admin,{SUFFIX}\"\nbind_password = \"adminpw\"\ntimeout_ms = 2000\n",
        slapd.url()
    ));
    let url = |user: &str, pw: &str| format!("amqp://{user}:{pw}@{}", broker.addr);
    let conn = open(&url("alice", "alicepw"))
        .await
        .expect("alice via LDAP");
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(queue("ldapq")).await.expect("declare");
    s.send("", Message::new("m").with_routing_key("ldapq"))
        .await
        .expect("send");
    conn.close().await.expect("close");
    for (user, pw) in [("alice", "wrong"), ("nobody", "alicepw"), ("alice", "")] {
        let e = open(&url(user, pw)).await.err();
        assert!(
            matches!(e, Some(ClientError::Auth(_))),
            "{user}/{pw:?} was let in: {e:?}"
        );
    }
    // Local users still come first.
    open(&url("guest", "guest")).await.expect("local guest");

    slapd.stop();
    let e = open(&url("alice", "alicepw")).await.err();
    assert!(
        matches!(e, Some(ClientError::Auth(_))),
        "LDAP down but alice admitted: {e:?}"
    );
    // The broker itself carries on.
    open(&url("guest", "guest"))
        .await
        .expect("local guest while LDAP is down");
    slapd.run();
    open(&url("alice", "alicepw"))
        .await
        .expect("alice once LDAP is back");
}

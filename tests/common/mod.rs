//! Shared test helpers: an in-process broker on 127.0.0.1:0, the real `clacks` binary on a
//! free port, and a raw 0-10 peer.
#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clacks_broker::server::{Server, ServerConfig};

/// A broker running inside the test process; stops when dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    /// Starts a broker with guest/guest and ANONYMOUS on a free port.
    pub async fn start() -> InProcess {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            heartbeat_max: 60,
            allow_anonymous: true,
            auth_failure_delay: Duration::from_millis(50),
            ..ServerConfig::default()
        };
        config.users.insert("guest".into(), "guest".into());
        InProcess::with_config(config).await
    }

    /// Starts a broker with the given configuration (its `listen` should use port 0).
    pub async fn with_config(config: ServerConfig) -> InProcess {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        InProcess {
            addr,
            stop: Some(tx),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The real `clacks serve`, on a free port, with its own data directory and config file.
pub struct Binary {
    pub addr: SocketAddr,
    /// The amqps listener's address.
    pub tls_addr: Option<SocketAddr>,
    /// What the broker printed before it listened (first-start admin password, TLS).
    pub banner: Vec<String>,
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Binary {
    /// Starts `clacks serve` with guest/guest; `extra` is appended to the TOML config.
    pub fn start(extra: &str) -> Binary {
        Binary::start_in(tempfile::tempdir().expect("tempdir"), extra)
    }

    /// Kills the broker with SIGKILL and hands back its directory (data dir included).
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts `clacks serve` in `dir` (its data directory is `dir/clacks-data`).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Binary {
        Binary::start_wrapped(dir, extra, &[])
    }

    /// Starts `clacks serve` in `dir` under a wrapper command (`strace ...`). Unless `extra`
    /// says otherwise, ANONYMOUS is allowed and failed logins are answered quickly.
    pub fn start_wrapped(dir: tempfile::TempDir, extra: &str, wrapper: &[&str]) -> Binary {
        let mut config = String::from("listen = \"127.0.0.1:0\"\n");
        if !extra.contains("allow_anonymous") {
            config.push_str("allow_anonymous = true\n");
        }
        if !extra.contains("auth_failure_delay_ms") {
            config.push_str("auth_failure_delay_ms = 50\n");
        }
        // guest/guest joins the users `extra` names, or is the only one.
        if extra.contains("[users]") {
            config.push_str(&extra.replacen("[users]", "[users]\nguest = \"guest\"", 1));
        } else {
            config.push_str(extra);
            config.push_str("\n[users]\nguest = \"guest\"\n");
        }
        config.push('\n');
        Binary::start_with_config(dir, &config, wrapper)
    }

    /// Starts `clacks serve` in `dir` with exactly this TOML config.
    pub fn start_with_config(dir: tempfile::TempDir, text: &str, wrapper: &[&str]) -> Binary {
        let config = dir.path().join("clacks.toml");
        std::fs::write(&config, text).expect("config");
        let program = env!("CARGO_BIN_EXE_clacks");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clacks serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        let mut tls_addr = None;
        let addr = loop {
            assert!(
                Instant::now() < deadline,
                "clacks serve did not report its address"
            );
            let line = lines
                .next()
                .expect("clacks serve exited before listening")
                .expect("read stdout");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().parse().expect("address");
            }
            if let Some(a) = line.strip_prefix("listening (amqps) on ") {
                tls_addr = Some(a.trim().parse().expect("tls address"));
            }
            banner.push(line);
        };
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Binary {
            addr,
            tls_addr,
            banner,
            child,
            dir,
        }
    }

    /// `host:port` for Qpid's tools.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Under a wrapper (strace) the broker is a grandchild: it goes first.
        for pid in children_of(self.child.id()) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces: the parent pid follows its `)`.
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The bodies on `queue`, each accepted as it is read, until the queue's depth at the
/// start is drained.
pub async fn bodies(s: &clacks_broker::client::Session, queue: &str) -> Vec<String> {
    let depth = s
        .query_queue(queue)
        .await
        .expect("query")
        .message_count
        .unwrap_or(0);
    let mut sub = s
        .subscribe(queue, clacks_broker::client::SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut out = Vec::new();
    for _ in 0..depth {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("message in time")
            .expect("session")
            .expect("message");
        sub.accept(&d)
            .await
            .expect("accept")
            .await
            .expect("accepted");
        out.push(String::from_utf8_lossy(&d.body).into_owned());
    }
    sub.cancel().await.expect("cancel");
    out
}

/// Messages on `queue` (0 when it does not exist).
pub async fn depth(s: &clacks_broker::client::Session, queue: &str) -> u32 {
    s.query_queue(queue)
        .await
        .expect("query")
        .message_count
        .unwrap_or(0)
}

/// A small xorshift generator seeded from the clock: each run picks other moments.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock (never 0); the seed is returned for failure messages.
    pub fn from_clock() -> (Rng, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        (Rng(seed), seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A connection to `b` as guest and a session on it.
pub async fn guest_session(
    b: &Binary,
) -> (
    clacks_broker::client::Connection,
    clacks_broker::client::Session,
) {
    let url = format!("amqp://guest:guest@{}", b.addr);
    let opts = clacks_broker::client::ConnectOptions::parse(&url).expect("url");
    let conn = clacks_broker::client::Connection::open(opts)
        .await
        .expect("connect");
    let s = conn.session_unique().await.expect("session");
    (conn, s)
}

/// A `clacks` client command against `b` as guest, which must succeed; its stdout.
pub fn cli(b: &Binary, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(args)
        .args(["-b", &format!("amqp://guest:guest@{}", b.addr)])
        .output()
        .expect("clacks");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where tests/qpid-setup.sh put Qpid's Python client; the test command runs it first.
pub fn qpidpy() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/qpidpy");
    assert!(
        dir.join("bin/qpid-python-test").exists(),
        "Qpid's Python client is missing: run tests/qpid-setup.sh (the README's test command does)"
    );
    dir
}

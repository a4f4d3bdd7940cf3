//! The durability promise checked at the system-call level: the broker is run under strace
//! and every `session.completed` it writes after persistent transfers must follow an
//! fdatasync or fsync of every data file written since that file's last sync. A second,
//! pipelined phase checks that syncs are shared: far fewer syncs than transfers.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clacks_broker::client::{ConnectOptions, Connection, Message};
use clacks_broker::wire::QueueDeclare;
use common::Binary;

/// Decodes a string as strace `-x` prints it (`"AMQP\x01..."`).
fn unescape(s: &str) -> Vec<u8> {
    let s = s.trim_matches('"');
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, len) = match b[i + 1] {
            b'x' if i + 3 < b.len() => (u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap_or(0), 4),
            b'n' => (b'\n', 2),
            b't' => (b'\t', 2),
            b'r' => (b'\r', 2),
            b'v' => (0x0b, 2),
            b'f' => (0x0c, 2),
            other => (other, 2),
        };
        out.push(byte);
        i += len;
    }
    out
}

/// Whether a buffer written to a socket holds a `session.completed` frame.
fn has_completed(buf: &[u8]) -> bool {
    has_frame(buf, 0, [0x02, 0x0a])
}

/// Whether a buffer written to a socket holds an `execution.result` command.
fn has_result(buf: &[u8]) -> bool {
    has_frame(buf, 1, [0x03, 0x02])
}

/// Whether `buf` holds a frame of segment type `segment` whose payload starts with `codes`.
fn has_frame(buf: &[u8], segment: u8, codes: [u8; 2]) -> bool {
    let mut rest = buf;
    if rest.starts_with(b"AMQP") {
        rest = &rest[8.min(rest.len())..];
    }
    while rest.len() >= 14 {
        let size = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if size < 12 || size > rest.len() {
            return false;
        }
        if rest[1] == segment && rest[12..14] == codes {
            return true;
        }
        rest = &rest[size..];
    }
    false
}

/// One system call of interest.
#[derive(Debug)]
enum Call {
    /// A write to a data file.
    WriteFile(String),
    /// fsync or fdatasync of a data file.
    SyncFile(String),
    /// A write to a socket, with its bytes.
    WriteSocket(Vec<u8>),
}

/// Reads the trace: joins `<unfinished ...>` with `resumed` lines, keeps completed calls in
/// the order they returned.
fn parse(trace: &str, data_dir: &str) -> Vec<Call> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = pending.remove(pid) else {
                continue;
            };
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            format!("{head}{tail}")
        } else {
            rest.to_string()
        };
        let Some((name, args)) = full.split_once('(') else {
            continue;
        };
        // The fd argument: `7</path/to/file>` thanks to -y.
        let path = args
            .split_once('<')
            .and_then(|(_, p)| p.split_once('>'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let failed = full
            .rsplit_once(" = ")
            .is_some_and(|(_, r)| r.starts_with('-'));
        if failed {
            continue;
        }
        match name {
            "fsync" | "fdatasync" if path.contains(data_dir) => calls.push(Call::SyncFile(path)),
            "write" | "pwrite64" | "writev" | "pwritev" if path.contains(data_dir) => {
                calls.push(Call::WriteFile(path))
            }
            "write" | "sendto" | "writev" if path.starts_with("TCP") => {
                let data = args.split_once(", ").map_or("", |(_, d)| d);
                let data = data.rsplit_once("\", ").map_or(data, |(d, _)| d);
                calls.push(Call::WriteSocket(unescape(data)));
            }
            _ => {}
        }
    }
    calls
}

#[test]
fn completions_follow_syncs_of_everything_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace_path = dir.path().join("trace.txt");
    let trace_arg = trace_path.to_string_lossy().to_string();
    let broker = Binary::start_wrapped(
        dir,
        "",
        &[
            "strace",
            "-f",
            "-qq",
            "-yy",
            "-x",
            "-s",
            "256",
            "-o",
            &trace_arg,
            "-e",
            "trace=write,pwrite64,writev,pwritev,fsync,fdatasync,sendto",
        ],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sequential = 40;
    let pipelined = 2000;
    rt.block_on(async {
        let opts =
            ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url");
        let conn = Connection::open(opts).await.expect("connect");
        let s = conn.session_unique().await.expect("session");
        s.declare_queue(QueueDeclare {
            queue: Some("traced".into()),
            durable: true,
            ..Default::default()
        })
        .await
        .expect("declare");
        for i in 0..sequential {
            let m = Message::new(format!("m{i}"))
                .with_routing_key("traced")
                .with_durable(true);
            s.send("", m).await.expect("send");
        }
        // Mark the boundary between the phases in the trace: a query writes a result.
        s.query_queue("traced").await.expect("query");
        let mut window = std::collections::VecDeque::new();
        for i in 0..pipelined {
            let m = Message::new(format!("p{i}"))
                .with_routing_key("traced")
                .with_durable(true);
            window.push_back(s.transfer("", m).await.expect("transfer"));
            if window.len() > 200 {
                window
                    .pop_front()
                    .expect("window")
                    .await
                    .expect("completed");
            }
        }
        for c in window {
            c.await.expect("completed");
        }
        conn.close().await.expect("close");
    });
    // Let strace write out its last lines.
    std::thread::sleep(Duration::from_millis(300));
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let calls = parse(&trace, "clacks-data");

    // Phase one (until the query's result): one transfer at a time, so every completion
    // must come after every write before it was synced. In phase two transfers overlap and
    // the next batch may be written while the last one's completions go out.
    let mut sequential_phase = true;
    let mut dirty: HashSet<String> = HashSet::new();
    let mut completions = 0;
    let mut syncs = 0;
    let mut writes = 0;
    for call in &calls {
        match call {
            Call::WriteFile(p) => {
                writes += 1;
                dirty.insert(p.clone());
            }
            Call::SyncFile(p) => {
                syncs += 1;
                dirty.remove(p);
            }
            Call::WriteSocket(buf) if has_result(buf) => sequential_phase = false,
            Call::WriteSocket(buf) if has_completed(buf) && sequential_phase => {
                completions += 1;
                assert!(
                    dirty.is_empty(),
                    "session.completed #{completions} written while {dirty:?} had unsynced writes"
                );
            }
            Call::WriteSocket(_) => {}
        }
    }
    assert!(
        writes > 0,
        "the trace shows no writes to the data files:\n{trace:.2000}"
    );
    assert!(
        completions >= sequential,
        "only {completions} completions seen in the trace:\n{}",
        trace
            .lines()
            .filter(|l| l.contains("TCP"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Group commit: the pipelined phase shares syncs among many transfers.
    let syncs_of_db = calls
        .iter()
        .filter(|c| matches!(c, Call::SyncFile(p) if p.ends_with("/db")))
        .count();
    assert!(
        syncs_of_db < (sequential + pipelined) / 2,
        "{syncs_of_db} syncs of the log for {} transfers: no group commit",
        sequential + pipelined
    );
    assert!(syncs > 0);
}

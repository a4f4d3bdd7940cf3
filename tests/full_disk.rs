//! A real full disk: the data directory on a small tmpfs (mounted by the test, which needs
//! root as the federation tests do). Persistent messages are refused with
//! resource-limit-exceeded before the disk fills, nothing refused reaches a queue, others
//! carry on, a purge still works and sticks, and once the tmpfs is made larger the store
//! takes messages again without a restart; after a kill -9 exactly the confirmed messages
//! are back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clacks_broker::client::{ClientError, Message, Session};
use clacks_broker::wire::QueueDeclare;
use common::{depth, guest_session, Binary};

/// A tmpfs mounted for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The broker using it is killed first (declared later, dropped earlier).
        for _ in 0..50 {
            if Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn config(data: &Path) -> String {
    format!(
        "data_dir = {:?}\nmin_free_disk_bytes = 2097152\n[agent]\nenabled = false\n",
        data.display().to_string()
    )
}

fn persistent(queue: &str, body: Bytes) -> Message {
    Message::new(body)
        .with_routing_key(queue)
        .with_durable(true)
}

async fn declare(s: &Session, name: &str, durable: bool) {
    s.declare_queue(QueueDeclare {
        queue: Some(name.into()),
        durable,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_cleanly_and_the_store_resumes_when_space_returns() {
    let tmpfs = Tmpfs::mount("8m");
    let data: PathBuf = tmpfs.path().join("data");
    let broker = Binary::start(&config(&data));
    let (_c, s) = guest_session(&broker).await;
    declare(&s, "d", true).await;
    declare(&s, "purged", true).await;
    declare(&s, "t", false).await;
    for i in 0..5 {
        s.send("", persistent("purged", Bytes::from(format!("p{i}"))))
            .await
            .expect("send");
    }

    // Fill the disk up to its reserve.
    let body = Bytes::from(vec![b'x'; 60_000]);
    let mut confirmed = 0u32;
    let refusal = loop {
        let (_c, s) = guest_session(&broker).await;
        match s.send("", persistent("d", body.clone())).await {
            Ok(()) => confirmed += 1,
            Err(e) => break e,
        }
        assert!(confirmed < 1000, "the disk never filled");
    };
    match refusal {
        ClientError::Session { code, text } => {
            assert_eq!(code, 506, "resource-limit-exceeded, not an internal error");
            assert!(text.contains("message store is full"), "{text}");
        }
        other => panic!("expected a clean refusal, got {other}"),
    }
    assert!(confirmed > 10, "only {confirmed} messages fitted");

    // Others carry on; the refused message reached no queue; a purge still works.
    let (_c, s) = guest_session(&broker).await;
    s.send("", Message::new("transient").with_routing_key("t"))
        .await
        .expect("transient messages need no disk");
    assert_eq!(depth(&s, "d").await, confirmed);
    s.purge_queue("purged").await.expect("purge");
    assert_eq!(depth(&s, "purged").await, 0);

    // Space comes back: the store takes messages again, without a restart.
    tmpfs.resize("32m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_c, s) = guest_session(&broker).await;
        if s.send("", persistent("d", Bytes::from_static(b"after")))
            .await
            .is_ok()
        {
            confirmed += 1;
            break;
        }
        assert!(Instant::now() < deadline, "the store did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After a crash, memory and disk agree: every confirmed message, the purge kept.
    let dir = broker.kill();
    let broker = Binary::start_in(dir, &config(&data));
    let (_c, s) = guest_session(&broker).await;
    assert_eq!(depth(&s, "d").await, confirmed);
    assert_eq!(depth(&s, "purged").await, 0, "purged messages stay purged");
    let bodies = common::bodies(&s, "d").await;
    assert_eq!(bodies.last().map(String::as_str), Some("after"));
    assert!(bodies[..bodies.len() - 1].iter().all(|b| b.len() == 60_000));
    drop(broker);
}

//! Distributed transactions through the real `clacks serve`: a prepared branch with
//! persistent enqueues and dequeues on durable queues survives `kill -9`, comes back in
//! doubt, and its commit or rollback puts every message where it belongs exactly once;
//! and hostile use of dtx gets clean exceptions while the broker carries on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use clacks_broker::client::{Message, Session, SubscribeOptions};
use clacks_broker::wire::{
    Command, DtxCommit, DtxEnd, DtxPrepare, DtxRecover, DtxRollback, DtxSelect, DtxStart,
    QueueDeclare, RecoverResult, Value, XaResult, Xid,
};
use common::{bodies, depth, guest_session, Binary};

const DEADLINE: Duration = Duration::from_secs(30);

fn xid(name: &str) -> Xid {
    Xid {
        format: Some(0),
        global_id: Some(Bytes::copy_from_slice(name.as_bytes())),
        branch_id: Some(Bytes::from_static(b"branch-1")),
    }
}

/// The xa-result status of a dtx command.
async fn xa(s: &Session, c: impl Into<Command>) -> u16 {
    let r = s.call(c).await.expect("dtx command").expect("a result");
    XaResult::from_struct32(&r)
        .expect("xa-result")
        .status
        .expect("status")
        .0
}

/// The global ids `dtx.recover` lists.
async fn in_doubt(s: &Session) -> Vec<String> {
    let r = s
        .call(DtxRecover {})
        .await
        .expect("recover")
        .expect("a result");
    let list = RecoverResult::from_struct32(&r)
        .expect("recover-result")
        .in_doubt
        .expect("in-doubt");
    list.items
        .iter()
        .map(|v| {
            let Value::Struct32(s) = v else {
                panic!("an xid: {v:?}");
            };
            let x = Xid::from_struct32(s).expect("xid");
            String::from_utf8_lossy(&x.global_id.unwrap_or_default()).into_owned()
        })
        .collect()
}

async fn persistent(s: &Session, queue: &str, body: &str) {
    let m = Message::new(body.to_string())
        .with_routing_key(queue)
        .with_durable(true);
    s.send("", m).await.expect("send");
}

/// Prepares a branch that takes `m1` off `dtx-src` and puts `new` on `dtx-dst`, kills the
/// broker, and finishes the branch after the restart with `commit`: (src, dst) afterwards,
/// read after one more kill.
async fn prepared_branch_across_kill(commit: bool) -> (Vec<String>, Vec<String>) {
    let b = Binary::start("");
    let (_c, s) = guest_session(&b).await;
    for q in ["dtx-src", "dtx-dst"] {
        s.declare_queue(QueueDeclare {
            queue: Some(q.into()),
            durable: true,
            ..QueueDeclare::default()
        })
        .await
        .expect("declare");
    }
    persistent(&s, "dtx-src", "m1").await;
    persistent(&s, "dtx-src", "m2").await;
    s.sync().await.expect("sync");

    let (_wc, w) = guest_session(&b).await;
    w.call(DtxSelect {}).await.expect("select");
    let x = xid(if commit {
        "crash-commit"
    } else {
        "crash-rollback"
    });
    let start = DtxStart {
        xid: Some(x.clone()),
        join: false,
        resume: false,
    };
    assert_eq!(xa(&w, start).await, 0);
    let mut sub = w
        .subscribe(
            "dtx-src",
            SubscribeOptions {
                capacity: Some(1),
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("session")
        .expect("message");
    assert_eq!(&d.body[..], b"m1");
    sub.accept(&d).await.expect("accept in the branch");
    persistent(&w, "dtx-dst", "new").await;
    let end = DtxEnd {
        xid: Some(x.clone()),
        fail: false,
        suspend: false,
    };
    assert_eq!(xa(&w, end).await, 0);
    assert_eq!(
        xa(
            &w,
            DtxPrepare {
                xid: Some(x.clone())
            }
        )
        .await,
        0,
        "prepared"
    );
    // The branch's work is invisible: m1 held, the new message not yet on dtx-dst.
    assert_eq!(
        (depth(&s, "dtx-src").await, depth(&s, "dtx-dst").await),
        (1, 0)
    );

    let b = Binary::start_in(b.kill(), "");
    let (_c, s) = guest_session(&b).await;
    let doubt = in_doubt(&s).await;
    assert!(
        doubt.contains(
            &String::from_utf8_lossy(&x.global_id.clone().unwrap_or_default()).into_owned()
        ),
        "the branch is in doubt after the crash: {doubt:?}"
    );
    assert_eq!(
        (depth(&s, "dtx-src").await, depth(&s, "dtx-dst").await),
        (1, 0),
        "still invisible after the restart"
    );
    let outcome = if commit {
        xa(
            &s,
            DtxCommit {
                xid: Some(x.clone()),
                one_phase: false,
            },
        )
        .await
    } else {
        xa(
            &s,
            DtxRollback {
                xid: Some(x.clone()),
            },
        )
        .await
    };
    assert_eq!(outcome, 0);
    assert!(
        in_doubt(&s).await.is_empty(),
        "finished: no longer in doubt"
    );

    // The outcome itself must be durable: read it after one more crash.
    let b = Binary::start_in(b.kill(), "");
    let (_c, s) = guest_session(&b).await;
    assert!(in_doubt(&s).await.is_empty());
    (bodies(&s, "dtx-src").await, bodies(&s, "dtx-dst").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_branch_survives_kill_9_and_commits_once() {
    let (src, dst) = prepared_branch_across_kill(true).await;
    assert_eq!(src, ["m2"], "m1 left dtx-src with the commit");
    assert_eq!(dst, ["new"], "the branch's message arrived once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_branch_survives_kill_9_and_rolls_back_once() {
    let (src, dst) = prepared_branch_across_kill(false).await;
    assert_eq!(src, ["m1", "m2"], "m1 back in its place");
    assert!(
        dst.is_empty(),
        "the branch's message never arrived: {dst:?}"
    );
}

/// The execution error code a failed dtx command got.
async fn refused(s: &Session, c: impl Into<Command>) -> u16 {
    match s.call(c).await {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => {
            let text = e.to_string();
            text.split(|c: char| !c.is_ascii_digit())
                .find_map(|w| w.parse::<u16>().ok().filter(|n| (400..600).contains(n)))
                .unwrap_or_else(|| panic!("no error code in {text}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dtx_use_gets_clean_exceptions() {
    let b = Binary::start("");
    // Each refusal ends its session: a fresh one for each.
    let fresh = || async { guest_session(&b).await };

    let (_c, s) = fresh().await;
    let start = |x: Option<Xid>| DtxStart {
        xid: x,
        join: false,
        resume: false,
    };
    assert_eq!(
        refused(&s, start(Some(xid("a")))).await,
        503,
        "not selected"
    );
    let (_c, s) = fresh().await;
    s.call(DtxSelect {}).await.expect("select");
    assert_eq!(refused(&s, start(None)).await, 503, "no xid");
    let (_c, s) = fresh().await;
    let odd = Xid {
        format: None,
        global_id: Some(Bytes::from(vec![0xff; 255])),
        branch_id: None,
    };
    s.call(DtxSelect {}).await.expect("select");
    assert_eq!(
        xa(&s, start(Some(odd.clone()))).await,
        0,
        "an odd but valid xid"
    );
    // A branch another connection works in cannot be finished from here.
    let (_c2, other) = fresh().await;
    assert_eq!(
        refused(
            &other,
            DtxCommit {
                xid: Some(odd.clone()),
                one_phase: true
            }
        )
        .await,
        409
    );
    let (_c2, other) = fresh().await;
    assert_eq!(
        refused(
            &other,
            DtxRollback {
                xid: Some(xid("nope"))
            }
        )
        .await,
        404
    );

    // A second start while the session works in a branch is refused.
    let (_c, s) = fresh().await;
    s.call(DtxSelect {}).await.expect("select");
    assert_eq!(xa(&s, start(Some(xid("first")))).await, 0);
    assert_eq!(refused(&s, start(Some(xid("second")))).await, 409);

    // Thousands of open branches from one session, then the connection goes: they wait
    // for an outcome (or their timeout), and the broker carries on.
    let (conn, many) = fresh().await;
    many.call(DtxSelect {}).await.expect("select");
    for i in 0..2000 {
        let x = xid(&format!("many-{i}"));
        assert_eq!(xa(&many, start(Some(x.clone()))).await, 0);
        let end = DtxEnd {
            xid: Some(x),
            fail: false,
            suspend: false,
        };
        assert_eq!(xa(&many, end).await, 0);
    }
    drop(many);
    drop(conn);
    let (_c, s) = fresh().await;
    assert!(in_doubt(&s).await.is_empty());
    assert_eq!(
        xa(
            &s,
            DtxRollback {
                xid: Some(xid("many-7"))
            }
        )
        .await,
        0,
        "a branch of the dead connection rolls back"
    );
    persistent(&s, "amq.direct", "still serving").await;
}

//! `clacks bench --dtx`: distributed transactions per second. Each branch publishes one
//! message (persistent into a durable queue with `--durable`), is ended, prepared (durable
//! before the prepare completes) and committed in two phases.

use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use clacks_broker::client::{random_uuid, Connection, Message};
use clacks_broker::wire::{
    Command, DtxCommit, DtxEnd, DtxPrepare, DtxSelect, DtxStart, QueueDeclare, QueueDelete,
    XaResult, Xid,
};

use crate::bench::percentile;
use crate::cli::BenchArgs;

/// Runs `--count` branches one after another and prints branches per second and the
/// latency of each (start to commit).
///
/// # Errors
/// Connection failures, or a branch the broker does not commit.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let opts = crate::client_cmds::connect_options(&args.conn)?;
    let conn = Connection::open(opts)
        .await
        .context("cannot connect to the broker")?;
    let s = conn.session_unique().await?;
    let queue = format!("bench-dtx-{}", random_uuid());
    s.declare_queue(QueueDeclare {
        queue: Some(queue.clone()),
        durable: args.durable,
        ..QueueDeclare::default()
    })
    .await
    .context("cannot declare the bench queue")?;
    s.call(DtxSelect {}).await.context("dtx.select")?;
    let body = Bytes::from(vec![b'x'; args.size]);
    let run_id = random_uuid();
    let mut latencies = Vec::with_capacity(usize::try_from(args.count).unwrap_or(0));
    let started = Instant::now();
    for i in 0..args.count {
        let t = Instant::now();
        let xid = Xid {
            format: Some(0),
            global_id: Some(Bytes::from(format!("{run_id}-{i}"))),
            branch_id: Some(Bytes::from_static(b"bench")),
        };
        expect_ok(
            &s,
            DtxStart {
                xid: Some(xid.clone()),
                join: false,
                resume: false,
            },
        )
        .await?;
        let m = Message::new(body.clone())
            .with_routing_key(queue.clone())
            .with_durable(args.durable);
        s.send("", m).await?;
        expect_ok(
            &s,
            DtxEnd {
                xid: Some(xid.clone()),
                fail: false,
                suspend: false,
            },
        )
        .await?;
        expect_ok(
            &s,
            DtxPrepare {
                xid: Some(xid.clone()),
            },
        )
        .await?;
        expect_ok(
            &s,
            DtxCommit {
                xid: Some(xid),
                one_phase: false,
            },
        )
        .await?;
        latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let secs = started.elapsed().as_secs_f64();
    let committed = s.query_queue(&queue).await?.message_count.unwrap_or(0);
    let _ = s
        .delete_queue(QueueDelete {
            queue: Some(queue.clone()),
            ..QueueDelete::default()
        })
        .await;
    let _ = conn.close().await;
    if u64::from(committed) != args.count {
        bail!("{committed} of {} committed messages arrived", args.count);
    }
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "dtx: {} branches (start, publish{}, end, prepare, commit) in {secs:.3} s = {:.0} branches/s\n\
         latency:  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        args.count,
        if args.durable { " persistent" } else { "" },
        args.count as f64 / secs.max(1e-9),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or(0)),
    );
    Ok(())
}

/// Runs a dtx command whose xa-result must be ok.
async fn expect_ok(
    s: &clacks_broker::client::Session,
    c: impl Into<Command>,
) -> anyhow::Result<()> {
    let c = c.into();
    let name = c.name();
    let r = s.call(c).await?.context("no xa-result")?;
    let status = XaResult::from_struct32(&r)?
        .status
        .map_or(u16::MAX, |s| s.0);
    if status != 0 {
        bail!("{name} answered xa status {status}");
    }
    Ok(())
}

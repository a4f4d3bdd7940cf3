//! `clacks bench`: N producer and M consumer connections on one fresh queue; messages/s and
//! latency from a send timestamp carried in the first 8 bytes of each body. With
//! `--xml-bindings`, the messages are XML events routed by an xml exchange, the timestamp in
//! an attribute. With `--rpc METHOD`, it measures Clacks calls instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use clacks_broker::client::{
    random_uuid, ConnectOptions, Connection, Message, Session, SubscribeOptions, Subscription,
};
use clacks_broker::wire::{
    ExchangeBind, ExchangeDeclare, ExchangeDelete, ExchangeUnbind, FieldTable, QueueDeclare,
    QueueDelete, SequenceSet,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::BenchArgs;

/// What one run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub sent: u64,
    pub send_time: Duration,
    pub receive_time: Duration,
    /// Per message, receive time minus send time, in nanoseconds.
    pub latencies: Vec<u64>,
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// Bad arguments, connection or broker errors, or messages that stop arriving.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(method) = &args.rpc {
        return rpc(&args, method).await;
    }
    if args.dtx {
        return crate::bench_dtx::run(&args).await;
    }
    if args.size < 8 {
        bail!("--size must be at least 8 (the send timestamp)");
    }
    if args.producers == 0 || args.consumers == 0 || args.count == 0 {
        bail!("--producers, --consumers and --count must be at least 1");
    }
    if args.amqp091 {
        return crate::bench091::run(&args).await;
    }
    let smallest = (0..4)
        .map(|n| xml_event(n, 1, 0, 0).len())
        .max()
        .unwrap_or(0);
    if args.xml_bindings > 0 && args.size < smallest {
        bail!("--size must be at least {smallest} for XML events");
    }
    let opts = crate::client_cmds::connect_options(&args.conn)?;
    let consumer_opts = match &args.consume_from {
        Some(url) => {
            let mut o = ConnectOptions::parse(url)?;
            crate::client_cmds::apply_login(&mut o, &args.conn.login);
            o
        }
        None => opts.clone(),
    };
    // The queue lives where the consumers are.
    let admin = Connection::open(consumer_opts.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to {}:{}",
                consumer_opts.host, consumer_opts.port
            )
        })?;
    let session = admin.session_unique().await?;
    let queue = format!("bench-{}", random_uuid());
    session
        .declare_queue(QueueDeclare {
            queue: Some(queue.clone()),
            durable: args.durable,
            arguments: (args.groups > 0).then(|| {
                let mut a = FieldTable::new();
                a.insert("qpid.group_header_key", GROUP_HEADER);
                a.insert(
                    "qpid.shared_msg_group",
                    clacks_broker::wire::Value::Int64(1),
                );
                a
            }),
            ..QueueDeclare::default()
        })
        .await
        .context("cannot declare the bench queue")?;
    // The other bindings' queues, which receive nothing.
    let others: Vec<String> = (1..args.xml_bindings)
        .map(|i| format!("{queue}-{i}"))
        .collect();
    let route = if args.consume_from.is_some() {
        session
            .bind(ExchangeBind {
                queue: Some(queue.clone()),
                exchange: Some("amq.direct".into()),
                binding_key: Some(FEDERATED_KEY.into()),
                arguments: None,
            })
            .await
            .context("cannot bind the bench queue")?;
        Route {
            exchange: "amq.direct".into(),
            key: FEDERATED_KEY.into(),
            xml: false,
        }
    } else if args.xml_bindings > 0 {
        let set_up = xml_setup(&session, &args, &queue, &others).await;
        if set_up.is_err() {
            xml_teardown(&session, &queue, &others).await;
        }
        set_up?;
        Route {
            exchange: queue.clone(),
            key: XML_KEY.into(),
            xml: true,
        }
    } else {
        Route {
            exchange: String::new(),
            key: queue.clone(),
            xml: false,
        }
    };
    let result = measure(&args, &opts, &consumer_opts, &queue, &route).await;
    if route.xml {
        xml_teardown(&session, &queue, &others).await;
    }
    // Clean up whatever happened.
    let deleted = session
        .delete_queue(QueueDelete {
            queue: Some(queue.clone()),
            ..QueueDelete::default()
        })
        .await;
    let _ = admin.close().await;
    let report = result?;
    deleted.context("cannot delete the bench queue")?;
    print!("{}", render(&args, &queue, report));
    Ok(())
}

/// Where producers send: the default exchange and the queue's name, or the xml exchange.
struct Route {
    exchange: String,
    key: String,
    xml: bool,
}

use clacks_agent::names::EVENT_KEY as XML_KEY;
/// The header that names a message's group in `--groups` runs.
const GROUP_HEADER: &str = "bench-group";
/// The routing key of `--consume-from` runs, for the federation route to carry.
const FEDERATED_KEY: &str = "clacks-bench";
use clacks_agent::events::EVENTS_NS;

/// An xml exchange named like the queue, with `--xml-bindings` bindings on one key: the
/// first (to the bench queue) takes every kind of event sent, the others each ask for one
/// kind about one node (or one kind of site alarm), as Clacks clients do.
async fn xml_setup(
    session: &Session,
    args: &BenchArgs,
    queue: &str,
    others: &[String],
) -> anyhow::Result<()> {
    session
        .declare_exchange(ExchangeDeclare {
            exchange: Some(queue.to_string()),
            r#type: Some("xml".into()),
            durable: args.durable,
            ..ExchangeDeclare::default()
        })
        .await
        .context("cannot declare the bench xml exchange")?;
    let mut binds = Vec::with_capacity(others.len() + 1);
    for (i, q) in std::iter::once(queue)
        .chain(others.iter().map(String::as_str))
        .enumerate()
    {
        if i > 0 {
            session
                .declare_queue(QueueDeclare {
                    queue: Some(q.to_string()),
                    ..QueueDeclare::default()
                })
                .await
                .context("cannot declare a bench queue")?;
        }
        let wants = if i == 0 {
            "$e/f:NodeStatus or $e/f:NodeAnnounce or $e/f:NodeCapabilities or $e/f:SiteEvent"
                .to_string()
        } else {
            match i % 4 {
                0 => format!("$e/f:NodeStatus[f:Node = 'node-{i}']"),
                1 => format!("$e/f:NodeAnnounce[f:Node = 'node-{i}']"),
                2 => format!("$e/f:NodeCapabilities[f:Node = 'node-{i}']"),
                _ => format!("$e/f:SiteEvent[@type = 'alarm-{i}']"),
            }
        };
        let mut xquery = FieldTable::new();
        xquery.insert(
            "xquery",
            format!("declare namespace f='{EVENTS_NS}'; let $e := ./f:Event return {wants}"),
        );
        let started = Instant::now();
        session
            .bind(ExchangeBind {
                queue: Some(q.to_string()),
                exchange: Some(queue.to_string()),
                binding_key: Some(XML_KEY.into()),
                arguments: Some(xquery),
            })
            .await
            .context("cannot bind to the bench xml exchange")?;
        binds.push(elapsed_ns(started));
    }
    println!("bind:     {}", round_trips(&mut binds));
    Ok(())
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Percentiles of round trips (binds, unbinds) for the report.
fn round_trips(ns: &mut [u64]) -> String {
    ns.sort_unstable();
    let ms = |v: u64| v as f64 / 1e6;
    format!(
        "{} round trips: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ns.len(),
        ms(percentile(ns, 50.0)),
        ms(percentile(ns, 99.0)),
        ms(ns.last().copied().unwrap_or(0))
    )
}

async fn xml_teardown(session: &Session, queue: &str, others: &[String]) {
    // Unbinding with every binding still in place, as a client leaving does.
    let mut unbinds = Vec::with_capacity(others.len());
    for q in others {
        let started = Instant::now();
        let unbound = session
            .unbind(ExchangeUnbind {
                queue: Some(q.clone()),
                exchange: Some(queue.to_string()),
                binding_key: Some(XML_KEY.into()),
            })
            .await;
        if unbound.is_ok() {
            unbinds.push(elapsed_ns(started));
        }
    }
    if !unbinds.is_empty() {
        println!("unbind:   {}", round_trips(&mut unbinds));
    }
    for q in others {
        let _ = session
            .delete_queue(QueueDelete {
                queue: Some(q.clone()),
                ..QueueDelete::default()
            })
            .await;
    }
    let _ = session
        .delete_exchange(ExchangeDelete {
            exchange: Some(queue.to_string()),
            ..ExchangeDelete::default()
        })
        .await;
}

/// Event `n` of the mix: NodeStatus, NodeAnnounce, NodeCapabilities and a site alarm in
/// turn, about node (or alarm) `(n / 4) % nodes`, with the send time in its `stamp`
/// attribute (20 digits), padded to `size` bytes where it is shorter.
fn xml_event(n: u64, nodes: u64, stamp: u64, size: usize) -> Vec<u8> {
    let j = (n / 4) % nodes.max(1);
    let (head, tail) = match n % 4 {
        0 => (
            format!("<NodeStatus><Node>node-{j}</Node><Load>0.25</Load><Pad>"),
            "</Pad></NodeStatus>",
        ),
        1 => (
            format!("<NodeAnnounce><Node>node-{j}</Node><Pad>"),
            "</Pad></NodeAnnounce>",
        ),
        2 => (
            format!(
                "<NodeCapabilities><Node>node-{j}</Node>\
                 <Capability>core</Capability><Capability>xml</Capability><Pad>"
            ),
            "</Pad></NodeCapabilities>",
        ),
        _ => (
            format!("<SiteEvent type=\"alarm-{j}\"><Text>door open</Text><Pad>"),
            "</Pad></SiteEvent>",
        ),
    };
    let head = format!("<Event xmlns=\"{EVENTS_NS}\" stamp=\"{stamp:020}\">{head}");
    let tail = format!("{tail}</Event>");
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(head.len() + pad + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The send time of a body: its first 8 bytes, or the `stamp` attribute of an XML event.
fn stamp_of(body: &[u8], xml: bool) -> Option<u64> {
    if !xml {
        return body
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
    }
    let at = body.windows(7).position(|w| w == b"stamp=\"")? + 7;
    std::str::from_utf8(body.get(at..at + 20)?)
        .ok()?
        .parse()
        .ok()
}

async fn measure(
    args: &BenchArgs,
    opts: &ConnectOptions,
    consumer_opts: &ConnectOptions,
    queue: &str,
    route: &Route,
) -> anyhow::Result<Report> {
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.1));
    let mut consumers: Vec<JoinHandle<anyhow::Result<Consumed>>> = Vec::new();
    for _ in 0..args.consumers {
        let conn = Connection::open(consumer_opts.clone()).await?;
        let session = conn.session_unique().await?;
        let options = if args.perftest {
            SubscribeOptions {
                accept_mode: clacks_broker::wire::MessageAcceptMode::NONE,
                capacity: None,
                ..SubscribeOptions::default()
            }
        } else {
            SubscribeOptions {
                capacity: Some(args.capacity.max(1)),
                ..SubscribeOptions::default()
            }
        };
        let sub = session.subscribe(queue, options).await?;
        let run = Consumer {
            conn,
            session,
            sub,
            total: args.count,
            batch: u64::from((args.capacity / 2).max(1)),
            accepting: !args.perftest,
            xml: route.xml,
            received: received.clone(),
            done_tx: done_tx.clone(),
            done_rx: done_rx.clone(),
            idle,
        };
        consumers.push(tokio::spawn(run.consume()));
    }
    // Every producer connects before the clock starts.
    let mut producers = Vec::new();
    for i in 0..args.producers {
        let conn = Connection::open(opts.clone()).await?;
        let session = conn.session_unique().await?;
        let share = args.count / u64::from(args.producers)
            + u64::from(u64::from(i) < args.count % u64::from(args.producers));
        producers.push((conn, session, share));
    }
    let start = Instant::now();
    let mut producing = Vec::new();
    for (conn, session, share) in producers {
        let p = Producer {
            conn,
            session,
            exchange: route.exchange.clone(),
            key: route.key.clone(),
            xml: route.xml,
            nodes: u64::from(args.xml_bindings.max(1)),
            count: share,
            size: args.size,
            durable: args.durable,
            // The perftest publisher never waits before the end.
            window: if args.perftest {
                usize::try_from(share).unwrap_or(usize::MAX).max(1)
            } else {
                args.window.max(1)
            },
            groups: args.groups,
            // Each producer sends its share of the rate.
            interval: args
                .rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(f64::from(args.producers) / r)),
        };
        producing.push(tokio::spawn(p.produce()));
    }
    let mut sent = 0;
    for p in producing {
        sent += p.await.context("producer task")??;
    }
    let send_time = start.elapsed();
    let mut latencies = Vec::with_capacity(usize::try_from(args.count).unwrap_or(0));
    let mut last = start;
    for c in consumers {
        let consumed = c.await.context("consumer task")??;
        latencies.extend(consumed.latencies);
        last = last.max(consumed.last.unwrap_or(start));
    }
    Ok(Report {
        sent,
        send_time,
        receive_time: last - start,
        latencies,
    })
}

struct Producer {
    conn: Connection,
    session: Session,
    exchange: String,
    key: String,
    xml: bool,
    /// With `xml`: events name nodes 0 to this (the bindings' count) in turn.
    nodes: u64,
    count: u64,
    size: usize,
    durable: bool,
    window: usize,
    /// Spread messages over this many groups (0: no group header).
    groups: u32,
    /// With `--rate`: the pause between two sends of this producer.
    interval: Option<Duration>,
}

impl Producer {
    /// Pipelines transfers, waiting for the oldest once `window` are in flight.
    async fn produce(self) -> anyhow::Result<u64> {
        let padding = vec![b'x'; self.size - 8];
        let mut in_flight = VecDeque::with_capacity(self.window);
        let start = tokio::time::Instant::now();
        for i in 0..self.count {
            if let Some(gap) = self.interval {
                // Paced from the start, so that a late send does not shift the rest.
                let due = start + gap.mul_f64(i as f64);
                tokio::time::sleep_until(due).await;
            }
            let body = if self.xml {
                bytes::Bytes::from(xml_event(i, self.nodes, now_ns(), self.size))
            } else {
                let mut body = BytesMut::with_capacity(self.size);
                body.put_u64(now_ns());
                body.extend_from_slice(&padding);
                body.freeze()
            };
            let mut m = Message::new(body)
                .with_routing_key(self.key.clone())
                .with_durable(self.durable);
            if self.groups > 0 {
                m = m.with_header(GROUP_HEADER, format!("g{}", i % u64::from(self.groups)));
            }
            in_flight.push_back(self.session.transfer(&self.exchange, m).await?);
            if in_flight.len() >= self.window {
                if let Some(c) = in_flight.pop_front() {
                    c.await?;
                }
            }
        }
        for c in in_flight {
            c.await?;
        }
        self.conn.close().await?;
        Ok(self.count)
    }
}

struct Consumed {
    latencies: Vec<u64>,
    last: Option<Instant>,
}

struct Consumer {
    conn: Connection,
    session: Session,
    sub: Subscription,
    total: u64,
    batch: u64,
    /// Accept what arrives (false: the subscription is accept-mode none).
    accepting: bool,
    xml: bool,
    received: Arc<AtomicU64>,
    done_tx: Arc<watch::Sender<bool>>,
    done_rx: watch::Receiver<bool>,
    idle: Duration,
}

impl Consumer {
    /// Receives until all consumers together have `total`, accepting in batches.
    async fn consume(mut self) -> anyhow::Result<Consumed> {
        let mut latencies = Vec::new();
        let mut last = None;
        let mut unacked = SequenceSet::new();
        let mut unacked_count = 0;
        loop {
            if *self.done_rx.borrow() {
                break;
            }
            let next = tokio::select! {
                r = tokio::time::timeout(self.idle, self.sub.next()) => r,
                _ = self.done_rx.changed() => break,
            };
            let Ok(next) = next else {
                bail!(
                    "no message for {:?}: {} of {} received",
                    self.idle,
                    self.received.load(Ordering::SeqCst),
                    self.total
                );
            };
            let Some(d) = next? else {
                bail!("subscription ended early");
            };
            let Some(stamp) = stamp_of(&d.body, self.xml) else {
                bail!("message of {} bytes has no timestamp", d.body.len());
            };
            let now = now_ns();
            latencies.push(now.saturating_sub(stamp));
            last = Some(Instant::now());
            if self.accepting {
                unacked.add(d.id);
                unacked_count += 1;
            }
            if unacked_count >= self.batch {
                drop(self.session.accept(std::mem::take(&mut unacked)).await?);
                unacked_count = 0;
            }
            if self.received.fetch_add(1, Ordering::SeqCst) + 1 >= self.total {
                let _ = self.done_tx.send(true);
                break;
            }
        }
        if !unacked.is_empty() {
            self.session.accept(unacked).await?.await?;
        }
        self.sub.cancel().await?;
        self.conn.close().await?;
        Ok(Consumed { latencies, last })
    }
}

/// Nanoseconds since the Unix epoch: producers and consumers share the host clock.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn render(args: &BenchArgs, queue: &str, mut r: Report) -> String {
    r.latencies.sort_unstable();
    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
    let ms = |ns: u64| ns as f64 / 1e6;
    let received = r.latencies.len() as u64;
    let recv_rate = rate(received, r.receive_time);
    let via = if args.amqp091 {
        let confirms = if args.confirm {
            "with publisher confirms"
        } else {
            "without confirms"
        };
        format!(", AMQP 0-9-1 {confirms}")
    } else if let Some(url) = &args.consume_from {
        let host = url.rsplit('@').next().unwrap_or(url);
        format!(", consumed on {host} through a federation route")
    } else if args.xml_bindings > 0 {
        format!(
            ", via an xml exchange with {} binding(s)",
            args.xml_bindings
        )
    } else {
        String::new()
    };
    format!(
        "bench: queue {queue}, {} producer(s), {} consumer(s), {} messages of {} bytes, {}{via}\n\
         sent:     {} msgs in {:.3} s = {:.0} msg/s\n\
         received: {} msgs in {:.3} s = {:.0} msg/s ({:.1} MB/s)\n\
         latency:  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  avg {:.3} ms\n",
        args.producers,
        args.consumers,
        args.count,
        args.size,
        if args.durable { "durable" } else { "transient" },
        r.sent,
        r.send_time.as_secs_f64(),
        rate(r.sent, r.send_time),
        received,
        r.receive_time.as_secs_f64(),
        recv_rate,
        recv_rate * args.size as f64 / 1e6,
        ms(percentile(&r.latencies, 50.0)),
        ms(percentile(&r.latencies, 99.0)),
        ms(r.latencies.last().copied().unwrap_or(0)),
        ms(r.latencies.iter().sum::<u64>() / received.max(1)),
    )
}

/// Clacks calls: each caller has its own connection and reply queue and one call in
/// flight; prints calls per second and the round-trip percentiles.
async fn rpc(args: &BenchArgs, method: &str) -> anyhow::Result<()> {
    if args.callers == 0 || args.count == 0 {
        bail!("--callers and --count must be at least 1");
    }
    let opts = crate::client_cmds::connect_options(&args.conn)?;
    let queue = clacks_agent::names::shared_queue(&args.domain, "core");
    let per_caller = args.count.div_ceil(u64::from(args.callers));
    let mut callers = tokio::task::JoinSet::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<()>(args.callers as usize);
    let go = Arc::new(tokio::sync::Notify::new());
    for _ in 0..args.callers {
        let (opts, queue, method) = (opts.clone(), queue.clone(), method.to_string());
        let user = opts.username.clone();
        let (ready_tx, go) = (ready_tx.clone(), go.clone());
        let idle = Duration::from_secs_f64(args.idle_timeout.max(0.001));
        callers.spawn(async move {
            let conn = Connection::open(opts).await?;
            let session = conn.session_unique().await?;
            let (reply_queue, mut replies) = session.reply_queue().await?;
            let started = go.notified();
            let _ = ready_tx.send(()).await;
            started.await;
            let mut latencies = Vec::with_capacity(per_caller as usize);
            for n in 0..per_caller {
                let m = clacks_agent::jsonrpc::request_message(
                    &queue,
                    &reply_queue,
                    &method,
                    &serde_json::json!([]),
                    &serde_json::json!(n),
                    user.as_deref(),
                );
                let sent = Instant::now();
                session.send("", m).await?;
                let reply = tokio::time::timeout(idle, replies.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("no reply in time"))??
                    .context("reply queue closed")?;
                latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                let reply: serde_json::Value = serde_json::from_slice(&reply.body)?;
                if let Err(error) = clacks_agent::jsonrpc::reply_outcome(&reply) {
                    bail!("{method} failed: {error}");
                }
            }
            let _ = conn.close().await;
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    drop(ready_tx);
    for _ in 0..args.callers {
        ready.recv().await.context("a caller could not connect")?;
    }
    let started = Instant::now();
    go.notify_waiters();
    let mut latencies = Vec::new();
    while let Some(done) = callers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "bench rpc: {method} on {queue}, {} caller(s), {} calls in {:.3} s = {:.0} calls/s\n\
         round trip: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        args.callers,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or(0)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn xml_events_carry_their_stamp_and_size() {
        for n in 0..4 {
            let body = xml_event(n, 3, 1_234_567_890_123, 1024);
            assert_eq!(body.len(), 1024);
            assert_eq!(stamp_of(&body, true), Some(1_234_567_890_123));
            assert!(body.starts_with(b"<Event xmlns=\"http://www.gonicus.de/Events\""));
            assert!(body.ends_with(b"</Event>"));
        }
        let alarm = String::from_utf8(xml_event(7, 3, 0, 0)).expect("utf-8");
        assert!(alarm.contains("<SiteEvent type=\"alarm-1\">"), "{alarm}");
        assert_eq!(stamp_of(b"<Event/>", true), None);
    }
}

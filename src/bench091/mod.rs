//! `clacks bench --amqp091`: producers and consumers on one fresh queue over AMQP 0-9-1,
//! plain or with publisher confirms; the same figures as the 0-10 bench, so that the
//! broker can be set beside a RabbitMQ on the same machine and client.

mod client;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, AMQPClass};
use anyhow::{bail, Context};
use clacks_broker::server::amqp091::frames::Frame;
use tokio::sync::watch;

use crate::bench::{now_ns, render, Report};
use crate::cli::BenchArgs;

/// Where the bench connects, and as whom.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
}

impl Target {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Target> {
        let opts = crate::client_cmds::connect_options(&args.conn)?;
        if opts.tls.is_some() {
            bail!("--amqp091 runs over plain TCP");
        }
        Ok(Target {
            host: opts.host.clone(),
            port: opts.port,
            user: opts.username.clone().unwrap_or_else(|| "guest".into()),
            password: opts.password.clone().unwrap_or_else(|| "guest".into()),
        })
    }

    async fn connect(&self) -> anyhow::Result<(client::Reader, client::Sender)> {
        client::connect(&self.host, self.port, &self.user, &self.password)
            .await
            .context("cannot connect over AMQP 0-9-1")
    }
}

/// Runs the 0-9-1 benchmark and prints the report; the arguments were checked by
/// `bench::run`.
///
/// # Errors
/// Connection or broker errors, or messages that stop arriving.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let target = Target::from_args(args)?;
    let (mut reader, mut sender) = target.connect().await?;
    let queue = format!("bench-{}", clacks_broker::client::random_uuid());
    client::declare_queue(&mut reader, &mut sender, &queue, args.durable)
        .await
        .context("cannot declare the bench queue")?;
    let result = measure(args, &target, &queue).await;
    let deleted = client::delete_queue(&mut reader, &mut sender, &queue).await;
    let _ = sender.close(&mut reader).await;
    let report = result?;
    deleted.context("cannot delete the bench queue")?;
    print!("{}", render(args, &queue, report));
    Ok(())
}

async fn measure(args: &BenchArgs, target: &Target, queue: &str) -> anyhow::Result<Report> {
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.1));
    let received = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let (mut reader, mut sender) = target.connect().await?;
        let prefetch = u16::try_from(args.capacity.max(1)).unwrap_or(u16::MAX);
        client::consume(
            &mut reader,
            &mut sender,
            queue,
            &format!("bench-{i}"),
            prefetch,
        )
        .await?;
        let total = args.count;
        let received = received.clone();
        // Acks go out for half a prefetch at a time (`multiple`), as the 0-10 bench
        // accepts in batches.
        let batch = u64::from(prefetch / 2).max(1);
        consumers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut unacked = 0u64;
            let mut last_tag = 0;
            let mut body_left = 0u64;
            let mut first_piece = false;
            let mut stamp = None;
            while received.load(Ordering::Relaxed) < total {
                let Ok(frame) = tokio::time::timeout(idle, reader.frame()).await else {
                    break;
                };
                match frame? {
                    Frame::Method(_, m) => {
                        if let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = *m {
                            last_tag = d.delivery_tag;
                        }
                    }
                    Frame::Header(_, size, _) => {
                        body_left = size;
                        first_piece = true;
                    }
                    Frame::Body(_, body) => {
                        // The stamp is in the first body frame; a message ends with its
                        // last.
                        if std::mem::take(&mut first_piece) {
                            stamp = body.get(..8).and_then(|b| b.try_into().ok());
                        }
                        body_left = body_left.saturating_sub(body.len() as u64);
                        if body_left > 0 {
                            continue;
                        }
                        // A message has arrived with its last body frame.
                        if let Some(s) = stamp.take() {
                            latencies.push(now_ns().saturating_sub(u64::from_be_bytes(s)));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        unacked += 1;
                        if unacked >= batch {
                            sender.method(ack(last_tag));
                            sender.flush().await?;
                            unacked = 0;
                        }
                    }
                    Frame::Heartbeat(_) => {}
                }
            }
            if unacked > 0 {
                sender.method(ack(last_tag));
            }
            let _ = sender.close(&mut reader).await;
            Ok::<(Vec<u64>, Instant), anyhow::Error>((latencies, Instant::now()))
        }));
    }

    let started = Instant::now();
    let mut producers = Vec::new();
    let per = args.count / u64::from(args.producers);
    for p in 0..args.producers {
        let count = per + u64::from(u64::from(p) < args.count % u64::from(args.producers));
        let (mut reader, mut sender) = target.connect().await?;
        if args.confirm {
            client::confirm_select(&mut reader, &mut sender).await?;
        }
        let (size, durable, confirm) = (args.size, args.durable, args.confirm);
        let window = if confirm {
            args.window.max(1) as u64
        } else {
            u64::MAX
        };
        let queue = queue.to_string();
        producers.push(tokio::spawn(async move {
            // Confirms are read by a task of their own, so that publishing never waits on
            // the socket's other direction.
            let (confirmed_tx, mut confirmed) = watch::channel(0u64);
            let confirms = tokio::spawn(async move {
                if !confirm {
                    return Ok::<_, anyhow::Error>(reader);
                }
                while *confirmed_tx.borrow() < count {
                    match reader.method().await? {
                        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                            confirmed_tx.send_modify(|n| *n = (*n).max(a.delivery_tag));
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                            bail!("the broker refused publish {}", n.delivery_tag)
                        }
                        _ => {}
                    }
                }
                Ok(reader)
            });
            let mut body = vec![0u8; size];
            let mut sent = 0u64;
            let unconfirmed = |sent: u64, confirmed: &watch::Receiver<u64>| {
                sent.saturating_sub(*confirmed.borrow())
            };
            'publishing: while sent < count {
                // Up to 64 KiB of publishes per write, within the confirm window.
                while sent < count
                    && sender.out.len() < 64 * 1024
                    && unconfirmed(sent, &confirmed) < window
                {
                    body[..8].copy_from_slice(&now_ns().to_be_bytes());
                    sender.publish(&queue, durable, &body);
                    sent += 1;
                }
                sender.flush().await?;
                while unconfirmed(sent, &confirmed) >= window {
                    // The confirm reader stopped: its error is reported below.
                    if confirmed.changed().await.is_err() {
                        break 'publishing;
                    }
                }
            }
            let mut reader = confirms.await??;
            if sent < count {
                bail!("the confirm reader stopped after {sent} publishes");
            }
            sender.close(&mut reader).await?;
            Ok::<Instant, anyhow::Error>(Instant::now())
        }));
    }
    let mut sent_at = started;
    for p in producers {
        sent_at = sent_at.max(p.await??);
    }
    let mut latencies = Vec::new();
    let mut received_at = started;
    for c in consumers {
        let (mut l, at) = c.await??;
        latencies.append(&mut l);
        received_at = received_at.max(at);
    }
    if (latencies.len() as u64) < args.count {
        bail!(
            "only {} of {} messages arrived (no message for {:.1} s)",
            latencies.len(),
            args.count,
            idle.as_secs_f64()
        );
    }
    Ok(Report {
        sent: args.count,
        send_time: sent_at - started,
        receive_time: received_at - started,
        latencies,
    })
}

/// A `multiple` acknowledgement up to `tag`.
fn ack(tag: u64) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag: tag,
        multiple: true,
    }))
}

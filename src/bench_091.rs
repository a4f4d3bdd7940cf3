//! `clacks bench --amqp091`: producers and consumers on one fresh queue over AMQP 0-9-1,
//! with the lapin client, plain or with publisher confirms; the same figures as the 0-10
//! bench, so that the broker can be set beside a RabbitMQ on the same machine and client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::bench::{now_ns, render, Report};
use crate::cli::BenchArgs;

/// The 0-9-1 URI of the bench's broker and login.
fn uri(args: &BenchArgs) -> anyhow::Result<String> {
    let opts = crate::client_cmds::connect_options(&args.conn)?;
    if opts.tls.is_some() {
        bail!("--amqp091 runs over plain TCP");
    }
    let escape = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let user = escape(opts.username.as_deref().unwrap_or("guest"));
    let password = escape(opts.password.as_deref().unwrap_or("guest"));
    Ok(format!(
        "amqp://{user}:{password}@{}:{}/%2f",
        opts.host, opts.port
    ))
}

async fn connect(uri: &str) -> anyhow::Result<Connection> {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("cannot connect over AMQP 0-9-1")
}

/// Runs the 0-9-1 benchmark and prints the report.
///
/// # Errors
/// Bad arguments, connection or broker errors, or messages that stop arriving.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.size < 8 {
        bail!("--size must be at least 8 (the send timestamp)");
    }
    if args.producers == 0 || args.consumers == 0 || args.count == 0 {
        bail!("--producers, --consumers and --count must be at least 1");
    }
    let uri = uri(args)?;
    let admin = connect(&uri).await?;
    let channel = admin.create_channel().await?;
    let queue = format!("bench-{}", clacks_broker::client::random_uuid());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: args.durable,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("cannot declare the bench queue")?;
    let result = measure(args, &uri, &queue).await;
    let deleted = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin.close(200, "bench done".into()).await;
    let report = result?;
    deleted.context("cannot delete the bench queue")?;
    print!("{}", render(args, &queue, report));
    Ok(())
}

async fn measure(args: &BenchArgs, uri: &str, queue: &str) -> anyhow::Result<Report> {
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.1));
    let received = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let conn = connect(uri).await?;
        let ch = conn.create_channel().await?;
        let prefetch = u16::try_from(args.capacity.max(1)).unwrap_or(u16::MAX);
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                queue.into(),
                format!("bench-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let total = args.count;
        let received = received.clone();
        // Acks go out for half a prefetch at a time (`multiple`), as the 0-10 bench
        // accepts in batches.
        let batch = u64::from(prefetch / 2).max(1);
        consumers.push(tokio::spawn(async move {
            let mut consumer = consumer;
            let mut latencies = Vec::new();
            let mut unacked = 0u64;
            let mut last_tag = None;
            while received.load(Ordering::Relaxed) < total {
                let next = tokio::time::timeout(idle, consumer.next()).await;
                let Ok(Some(delivery)) = next else {
                    break;
                };
                let d = delivery?;
                let now = now_ns();
                if let Some(stamp) = d.data.get(..8).and_then(|b| b.try_into().ok()) {
                    latencies.push(now.saturating_sub(u64::from_be_bytes(stamp)));
                }
                received.fetch_add(1, Ordering::Relaxed);
                unacked += 1;
                last_tag = Some(d.acker);
                if unacked >= batch {
                    if let Some(acker) = last_tag.take() {
                        acker.ack(BasicAckOptions { multiple: true }).await?;
                    }
                    unacked = 0;
                }
            }
            if let Some(acker) = last_tag.take() {
                acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            let _ = conn.close(200, "bench done".into()).await;
            Ok::<(Vec<u64>, Instant), anyhow::Error>((latencies, Instant::now()))
        }));
    }

    let started = Instant::now();
    let mut producers = Vec::new();
    let per = args.count / u64::from(args.producers);
    for p in 0..args.producers {
        let count = per + u64::from(u64::from(p) < args.count % u64::from(args.producers));
        let conn = connect(uri).await?;
        let ch = conn.create_channel().await?;
        if args.confirm {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        let (size, durable, confirm) = (args.size, args.durable, args.confirm);
        let window = args.window.max(1);
        let queue = queue.to_string();
        producers.push(tokio::spawn(async move {
            let props = if durable {
                BasicProperties::default().with_delivery_mode(2)
            } else {
                BasicProperties::default()
            };
            let mut body = vec![0u8; size];
            let mut in_flight = VecDeque::new();
            for _ in 0..count {
                body[..8].copy_from_slice(&now_ns().to_be_bytes());
                let confirmation = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await?;
                if confirm {
                    in_flight.push_back(confirmation);
                    if in_flight.len() >= window {
                        if let Some(oldest) = in_flight.pop_front() {
                            oldest.await?;
                        }
                    }
                }
            }
            for c in in_flight {
                c.await?;
            }
            let _ = conn.close(200, "bench done".into()).await;
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

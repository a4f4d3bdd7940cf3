//! `clacks send` and `clacks receive`, on `clacks_broker::client`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clacks_broker::client::{
    random_uuid, ConnectOptions, Connection, Delivery, Message, Session, SubscribeOptions,
    TlsOptions,
};
use clacks_broker::wire::{
    ExchangeBind, MessageAcceptMode, MessageDeliveryMode, QueueDeclare, SequenceSet, Value,
};
use tokio::io::AsyncBufReadExt;

use crate::cli::{ConnArgs, LoginArgs, ReceiveArgs, SendArgs};

/// Transfers in flight before `send` waits for the oldest to complete.
const SEND_WINDOW: usize = 1000;

/// Where messages go or come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A queue: sent through the default exchange with the queue name as routing key.
    Queue(String),
    /// An exchange and a routing key (send) or binding key (receive).
    Exchange {
        /// The exchange name.
        exchange: String,
        /// The routing or binding key.
        key: String,
    },
}

/// Parses `QUEUE` or `EXCHANGE/KEY`.
///
/// # Errors
/// An empty queue or exchange name.
pub fn parse_address(text: &str) -> anyhow::Result<Address> {
    match text.split_once('/') {
        None if text.is_empty() => bail!("empty address"),
        None => Ok(Address::Queue(text.to_string())),
        Some(("", _)) => bail!("address {text:?} has no exchange before '/'"),
        Some((exchange, key)) => Ok(Address::Exchange {
            exchange: exchange.to_string(),
            key: key.to_string(),
        }),
    }
}

/// Parses `KEY=VALUE` application headers (values are strings).
///
/// # Errors
/// An entry without `=` or with an empty key.
pub fn parse_properties(entries: &[String]) -> anyhow::Result<Vec<(String, Value)>> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Value::from(v))),
            _ => Err(anyhow!("property {e:?} is not KEY=VALUE")),
        })
        .collect()
}

/// The options for a broker URL with the login and TLS flags applied.
///
/// # Errors
/// A URL that does not parse.
pub fn connect_options(conn: &ConnArgs) -> anyhow::Result<ConnectOptions> {
    let mut opts = ConnectOptions::parse(&conn.broker)?;
    apply_login(&mut opts, &conn.login);
    Ok(opts)
}

/// Applies the mechanism and TLS flags to options parsed from a URL.
pub fn apply_login(opts: &mut ConnectOptions, login: &LoginArgs) {
    opts.mechanism.clone_from(&login.sasl_mechanism);
    if login.tls_ca.is_some() || login.tls_cert.is_some() {
        let tls = opts.tls.get_or_insert_with(TlsOptions::default);
        tls.ca.clone_from(&login.tls_ca);
        tls.cert.clone_from(&login.tls_cert);
        tls.key.clone_from(&login.tls_key);
    }
}

pub async fn connect(conn: &ConnArgs) -> anyhow::Result<Connection> {
    let opts = connect_options(conn)?;
    let target = format!("{}:{}", opts.host, opts.port);
    Connection::open(opts)
        .await
        .with_context(|| format!("cannot connect to {target}"))
}

/// Declares `queue` when asked to, otherwise checks that it exists.
async fn ensure_queue(
    session: &Session,
    queue: &str,
    create: bool,
    durable: bool,
) -> anyhow::Result<()> {
    if create {
        session
            .declare_queue(QueueDeclare {
                queue: Some(queue.to_string()),
                durable,
                ..QueueDeclare::default()
            })
            .await
            .with_context(|| format!("cannot declare queue {queue:?}"))?;
    } else if session.query_queue(queue).await?.queue.is_none() {
        bail!("no such queue: {queue:?} (use --create to declare it)");
    }
    Ok(())
}

/// `clacks send`.
///
/// # Errors
/// Connection, address or broker errors, with what was being done.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let address = parse_address(&args.address)?;
    let properties = parse_properties(&args.properties)?;
    let conn = connect(&args.conn).await?;
    let session = conn.session_unique().await?;
    let (exchange, key) = match address {
        Address::Queue(queue) => {
            ensure_queue(&session, &queue, args.create, args.durable).await?;
            (String::new(), queue)
        }
        Address::Exchange { exchange, key } => {
            if args.create {
                bail!("--create applies to queue addresses, not {exchange}/{key}");
            }
            if session.query_exchange(&exchange).await?.not_found {
                bail!("no such exchange: {exchange:?}");
            }
            (exchange, key)
        }
    };
    let template = {
        let mut m = Message::new(Bytes::new())
            .with_routing_key(key)
            .with_content_type(args.content_type.clone());
        m.delivery_properties.delivery_mode = Some(if args.durable {
            MessageDeliveryMode::PERSISTENT
        } else {
            MessageDeliveryMode::NON_PERSISTENT
        });
        for (k, v) in properties {
            m = m.with_header(k, v);
        }
        m
    };
    let with_body = |body: Bytes| Message {
        body,
        ..template.clone()
    };
    let mut in_flight = VecDeque::new();
    let mut sent = 0u64;
    match &args.content {
        Some(content) => {
            let body = Bytes::from(content.clone());
            for _ in 0..args.count.unwrap_or(1) {
                in_flight.push_back(session.transfer(&exchange, with_body(body.clone())).await?);
                sent += 1;
                if in_flight.len() >= SEND_WINDOW {
                    wait_oldest(&mut in_flight).await?;
                }
            }
        }
        None => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let limit = args.count.unwrap_or(u64::MAX);
            let mut read = 0u64;
            while read < limit {
                let Some(line) = lines.next_line().await.context("reading stdin")? else {
                    break;
                };
                read += 1;
                in_flight.push_back(
                    session
                        .transfer(&exchange, with_body(Bytes::from(line)))
                        .await?,
                );
                sent += 1;
                if in_flight.len() >= SEND_WINDOW {
                    wait_oldest(&mut in_flight).await?;
                }
            }
        }
    }
    while !in_flight.is_empty() {
        wait_oldest(&mut in_flight).await?;
    }
    tracing::info!(sent, "done");
    session.close().await?;
    conn.close().await?;
    Ok(())
}

async fn wait_oldest(
    in_flight: &mut VecDeque<clacks_broker::client::Completion>,
) -> anyhow::Result<()> {
    if let Some(c) = in_flight.pop_front() {
        c.await.context("message not accepted by the broker")?;
    }
    Ok(())
}

/// `clacks receive`.
///
/// # Errors
/// Connection, address or broker errors, or a closed stdout.
pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let address = parse_address(&args.address)?;
    let conn = connect(&args.conn).await?;
    let session = conn.session_unique().await?;
    let queue = match address {
        Address::Queue(queue) => {
            ensure_queue(&session, &queue, args.create, false).await?;
            queue
        }
        Address::Exchange { exchange, key } => {
            // A private queue that lives as long as this session, as qpid receivers make
            // for topic addresses.
            let queue = format!("clacks-receive-{}", random_uuid());
            session.declare_private_queue(&queue).await?;
            session
                .bind(ExchangeBind {
                    queue: Some(queue.clone()),
                    exchange: Some(exchange.clone()),
                    binding_key: Some(key),
                    arguments: None,
                })
                .await
                .with_context(|| format!("cannot bind to exchange {exchange:?}"))?;
            queue
        }
    };
    let options = SubscribeOptions {
        capacity: Some(args.capacity.max(1)),
        ..SubscribeOptions::default()
    };
    let mut sub = session
        .subscribe(&queue, options)
        .await
        .with_context(|| format!("cannot subscribe to {queue:?}"))?;
    let idle = args.timeout.map(Duration::from_secs_f64);
    let batch = u64::from((args.capacity / 2).max(1));
    let mut unacked = SequenceSet::new();
    let mut unacked_count = 0u64;
    let mut received = 0u64;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|max| received < max) {
        let next = match idle {
            Some(limit) => match tokio::time::timeout(limit, sub.next()).await {
                Ok(r) => r?,
                Err(_) => break,
            },
            None => sub.next().await?,
        };
        let Some(delivery) = next else { break };
        received += 1;
        let mut text = String::new();
        if args.print_headers {
            text.push_str(&format_headers(&delivery));
        }
        text.push_str(&String::from_utf8_lossy(&delivery.body));
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
        if delivery.accept_mode == MessageAcceptMode::EXPLICIT {
            unacked.add(delivery.id);
            unacked_count += 1;
            if unacked_count >= batch {
                drop(session.accept(std::mem::take(&mut unacked)).await?);
                unacked_count = 0;
            }
        }
    }
    drop(out);
    if !unacked.is_empty() {
        session.accept(unacked).await?.await?;
    }
    sub.cancel().await?;
    session.close().await?;
    conn.close().await?;
    tracing::info!(received, "done");
    Ok(())
}

/// The properties of a delivery, one `Name: value` line each, present ones only.
pub fn format_headers(d: &Delivery) -> String {
    let dp = &d.delivery_properties;
    let mp = &d.message_properties;
    let mut s = String::new();
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(s, "{name}: {value}");
    };
    if let Some(e) = dp.exchange.as_ref().filter(|e| !e.is_empty()) {
        line("Exchange", e);
    }
    if let Some(k) = &dp.routing_key {
        line("Routing-Key", k);
    }
    line(
        "Durable",
        &(dp.delivery_mode == Some(MessageDeliveryMode::PERSISTENT)),
    );
    line("Redelivered", &dp.redelivered);
    if let Some(p) = dp.priority {
        line("Priority", &p.0);
    }
    if let Some(ttl) = dp.ttl {
        line("TTL", &ttl);
    }
    if let Some(id) = &mp.message_id {
        line("Message-Id", id);
    }
    if let Some(c) = &mp.correlation_id {
        line("Correlation-Id", &String::from_utf8_lossy(c));
    }
    if let Some(r) = &mp.reply_to {
        let to = format!(
            "{}/{}",
            r.exchange.as_deref().unwrap_or(""),
            r.routing_key.as_deref().unwrap_or("")
        );
        line("Reply-To", &to);
    }
    if let Some(t) = &mp.content_type {
        line("Content-Type", t);
    }
    if let Some(e) = &mp.content_encoding {
        line("Content-Encoding", e);
    }
    if let Some(u) = &mp.user_id {
        line("User-Id", &String::from_utf8_lossy(u));
    }
    if let Some(a) = &mp.app_id {
        line("App-Id", &String::from_utf8_lossy(a));
    }
    if let Some(h) = &mp.application_headers {
        let entries: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", show_value(v)))
            .collect();
        line("Properties", &format!("{{{}}}", entries.join(", ")));
    }
    s
}

/// A header value as a person would write it.
fn show_value(v: &Value) -> String {
    if let Some(text) = v.as_str() {
        return text.to_string();
    }
    if let Some(n) = v.as_i64() {
        return n.to_string();
    }
    match v {
        Value::Void => "None".into(),
        Value::Uint64(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Uuid(u) => u.to_string(),
        Value::Map(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}: {}", show_value(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::List(l) => {
            let items: Vec<String> = l.0.iter().map(show_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use clacks_broker::wire::{MessageAcquireMode, SequenceNo};

    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("q").expect("q"), Address::Queue("q".into()));
        assert_eq!(
            parse_address("amq.topic/a.b.#").expect("x"),
            Address::Exchange {
                exchange: "amq.topic".into(),
                key: "a.b.#".into()
            }
        );
        assert_eq!(
            parse_address("amq.fanout/").expect("x"),
            Address::Exchange {
                exchange: "amq.fanout".into(),
                key: String::new()
            }
        );
        assert!(parse_address("").is_err());
        assert!(parse_address("/key").is_err());
    }

    #[test]
    fn properties() {
        let p = parse_properties(&["a=1".into(), "b=x=y".into(), "c=".into()]).expect("ok");
        assert_eq!(p[0], ("a".into(), Value::from("1")));
        assert_eq!(p[1], ("b".into(), Value::from("x=y")));
        assert_eq!(p[2], ("c".into(), Value::from("")));
        assert!(parse_properties(&["novalue".into()]).is_err());
        assert!(parse_properties(&["=v".into()]).is_err());
    }

    #[test]
    fn headers_are_printed_line_by_line() {
        let m = Message::new("x")
            .with_routing_key("q")
            .with_durable(true)
            .with_content_type("text/plain")
            .with_header("k", "v")
            .with_header("n", 3i64);
        let d = Delivery {
            id: SequenceNo(1),
            destination: "q".into(),
            accept_mode: MessageAcceptMode::EXPLICIT,
            acquire_mode: MessageAcquireMode::PRE_ACQUIRED,
            delivery_properties: m.delivery_properties,
            message_properties: m.message_properties,
            body: m.body,
        };
        assert_eq!(
            format_headers(&d),
            "Routing-Key: q\nDurable: true\nRedelivered: false\nContent-Type: text/plain\n\
             Properties: {k: v, n: 3}\n"
        );
    }
}

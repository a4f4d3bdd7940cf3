//! Client commands of the Clacks agent: `clacks call`.

use std::time::Duration;

use anyhow::{bail, Context};
use clacks_broker::client::{random_uuid, Message, SubscribeOptions};
use clacks_broker::wire::{MessageAcceptMode, QueueDeclare, ReplyTo};
use serde_json::{json, Value};

use crate::cli::CallArgs;
use crate::client_cmds::connect;

/// Calls a command and prints its result.
///
/// # Errors
/// Connection failures, no reply in time, or the command's error.
pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    let conn = connect(&args.conn).await?;
    let session = conn.session_unique().await?;
    let reply_queue = format!("reply-{}", random_uuid());
    session
        .declare_queue(QueueDeclare {
            queue: Some(reply_queue.clone()),
            exclusive: true,
            auto_delete: true,
            ..QueueDeclare::default()
        })
        .await?;
    let mut replies = session
        .subscribe(
            &reply_queue,
            SubscribeOptions {
                accept_mode: MessageAcceptMode::NONE,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    // Each argument is JSON when it parses as JSON, else a plain string.
    let params: Vec<Value> = args
        .args
        .iter()
        .map(|a| serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())))
        .collect();
    let id = random_uuid().to_string();
    let request = json!({"method": args.method, "params": params, "id": id});
    let mut message = Message::new(serde_json::to_vec(&request)?)
        .with_routing_key(clacks_agent::names::shared_queue(&args.domain, "core"));
    message.message_properties.reply_to = Some(ReplyTo {
        exchange: None,
        routing_key: Some(reply_queue),
    });
    session.send("", message).await?;
    let wait = Duration::from_secs_f64(args.timeout.max(0.0));
    let reply = loop {
        let delivery = tokio::time::timeout(wait, replies.next())
            .await
            .map_err(|_| anyhow::anyhow!("no reply within {} s", args.timeout))??
            .context("the reply queue closed")?;
        let reply: Value =
            serde_json::from_slice(&delivery.body).context("the reply is not JSON")?;
        // Only our own request's reply counts (a reused queue could hold others).
        if reply.get("id") == Some(&Value::String(id.clone())) {
            break reply;
        }
    };
    let _ = conn.close().await;
    match reply.get("error") {
        Some(Value::Null) | None => {}
        Some(Value::String(e)) => bail!("{e}"),
        Some(other) => bail!("{other}"),
    }
    let result = reply.get("result").cloned().unwrap_or(Value::Null);
    if args.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

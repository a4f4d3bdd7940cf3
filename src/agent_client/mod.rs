//! The client side of the Clacks agent: `clacks call`, `methods`, `nodes`, `events`,
//! `send-event` and `shell`.
//!
//! * [`conn`]: the URL, domain and password from flags, environment and config file.
//! * [`rpc`]: the JSON-RPC client over the domain's command queue.
//! * [`params`]: arguments as typed on the command line and in the shell.
//! * [`listing`]: readable `getMethods` and `getNodes` output.
//! * [`events`]: subscribing to events and sending them.
//! * [`shell`]: the interactive and script shell.

pub mod conn;
pub mod events;
pub mod listing;
pub mod params;
pub mod rpc;
pub mod shell;

use serde_json::{json, Value};

use crate::cli::{
    AgentConnArgs, CallArgs, LinkCommand, MethodsArgs, NodesArgs, QueuesArgs, RouteCommand,
};
use rpc::{RpcClient, RpcError};

pub use events::{events, send_event};
pub use shell::shell;

/// Connects, calls one command and closes.
async fn call_once(
    conn_args: &AgentConnArgs,
    method: &str,
    params: Value,
    raw_errors: bool,
) -> anyhow::Result<Value> {
    let target = conn::resolve(conn_args)?;
    let mut client = RpcClient::connect(&target, conn_args.timeout).await?;
    let outcome = if raw_errors {
        client.call_raw(method, params).await
    } else {
        client.call(method, params).await
    };
    client.close().await;
    match outcome {
        Ok(v) => Ok(v),
        Err(RpcError::Failed { message, .. }) => Err(anyhow::anyhow!(message)),
        Err(e) => Err(e.into()),
    }
}

/// Writes `text` to stdout. A reader that went away (`clacks methods | head`) is no
/// error: there is just nobody left to tell.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints a result: one line of JSON, or indented.
fn print_json(value: &Value, one_line: bool) -> anyhow::Result<()> {
    let text = if one_line {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value)?
    };
    write_stdout(&format!("{text}\n"))
}

/// `clacks call`: calls a command and prints its result.
///
/// # Errors
/// Bad arguments, connection failures, no reply in time, or the command's error (with
/// `--json` as the agent sent it, else with its error record's text).
pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    let params = params::cli_params(&args.args)?;
    let result = call_once(&args.conn, &args.method, params, args.json).await?;
    print_json(&result, args.json)
}

/// `clacks methods`: the commands on the bus, grouped by target.
///
/// # Errors
/// As [`call`], or a target without commands.
pub async fn methods(args: MethodsArgs) -> anyhow::Result<()> {
    let mut methods = call_once(&args.conn, "getMethods", json!([]), false).await?;
    if args.json {
        if let (Some(target), Value::Object(map)) = (&args.target, &mut methods) {
            map.retain(|_, info| info.get("target").and_then(Value::as_str) == Some(target));
        }
        return print_json(&methods, true);
    }
    write_stdout(&listing::format_methods(&methods, args.target.as_deref())?)
}

/// `clacks nodes`: the node table.
///
/// # Errors
/// As [`call`].
pub async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let nodes = call_once(&args.conn, "getNodes", json!([]), false).await?;
    if args.json {
        return print_json(&nodes, true);
    }
    write_stdout(&listing::format_nodes(&nodes)?)
}

/// `clacks queues`: the queue table, with rates when asked.
///
/// # Errors
/// Connection failures or the command's error.
pub async fn queues(args: QueuesArgs) -> anyhow::Result<()> {
    let first = call_once(&args.conn, "listQueues", json!([]), false).await?;
    if args.json {
        return print_json(&first, true);
    }
    let text = match args.rate {
        Some(secs) if secs > 0.0 => {
            tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
            let second = call_once(&args.conn, "listQueues", json!([]), false).await?;
            listing::format_queues(&second, Some((&first, secs)))
        }
        _ => listing::format_queues(&first, None),
    };
    write_stdout(&text)
}

/// `clacks link ...`: federation links through the agent's `broker` commands.
///
/// # Errors
/// Connection failures or the command's error.
pub async fn link(cmd: LinkCommand) -> anyhow::Result<()> {
    match cmd {
        LinkCommand::Add {
            conn,
            name,
            remote,
            durable,
            link_ca,
        } => {
            let params = json!([name, remote, durable, link_ca]);
            call_once(&conn, "addLink", params, false).await?;
            write_stdout(&format!("link {name} added\n"))
        }
        LinkCommand::Del { conn, name } => {
            let removed = call_once(&conn, "removeLink", json!([name]), false).await?;
            let routes = removed["removedRoutes"].as_u64().unwrap_or(0);
            write_stdout(&format!("link {name} removed with {routes} route(s)\n"))
        }
        LinkCommand::List { conn, json } => {
            let links = call_once(&conn, "listLinks", json!([]), false).await?;
            if json {
                return print_json(&links, true);
            }
            write_stdout(&listing::format_links(&links))
        }
    }
}

/// `clacks route ...`: federation routes through the agent's `broker` commands.
///
/// # Errors
/// Connection failures or the command's error.
pub async fn route(cmd: RouteCommand) -> anyhow::Result<()> {
    match cmd {
        RouteCommand::Add(a) => {
            let (kind, source) = match (&a.exchange, &a.queue) {
                (Some(exchange), _) => ("exchange", exchange.clone()),
                (None, Some(queue)) => ("queue", queue.clone()),
                (None, None) => anyhow::bail!("give --exchange or --queue"),
            };
            let params = json!({
                "name": a.name, "link": a.link, "type": kind, "source": source,
                "key": a.key, "dest": a.dest, "destKey": a.dest_key, "push": a.push,
                "query": a.query, "durable": a.durable,
            });
            call_once(&a.conn, "addRoute", params, false).await?;
            write_stdout(&format!("route {} added\n", a.name))
        }
        RouteCommand::Del { conn, name } => {
            call_once(&conn, "removeRoute", json!([name]), false).await?;
            write_stdout(&format!("route {name} removed\n"))
        }
        RouteCommand::List { conn, json } => {
            let routes = call_once(&conn, "listRoutes", json!([]), false).await?;
            if json {
                return print_json(&routes, true);
            }
            write_stdout(&listing::format_routes(&routes))
        }
    }
}

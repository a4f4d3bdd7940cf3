//! The `core` target's commands every agent serves.

use serde_json::{json, Value};

use crate::jsonrpc::ErrorCode;
use crate::names;
use crate::plugin::{BoxFuture, CallContext, CallResult, Plugin};
use crate::registry::CommandInfo;

/// `getMethods`, `getNodes`, `getSessionUser`, `sendEvent`, `shutdown`, `get_error`.
pub struct Core;

fn command(name: &str, sig: &[&str], doc: &str) -> CommandInfo {
    CommandInfo::new(name, "core", "CommandRegistry", doc).with_sig(sig)
}

impl Plugin for Core {
    fn target(&self) -> &str {
        "core"
    }

    fn commands(&self) -> Vec<CommandInfo> {
        let mut session_user = command(
            "getSessionUser",
            &["user"],
            "Return the user the current call runs as.",
        );
        session_user.needs_user = true;
        let mut send_event = command(
            "sendEvent",
            &["user", "data"],
            "Validate an event (XML without declaration) and publish it on the domain's exchange.",
        );
        send_event.needs_user = true;
        let mut shutdown = command(
            "shutdown",
            &["queue", "force"],
            "Stop the agent that takes the call; on the shared queue only with force=true.",
        );
        shutdown.needs_queue = true;
        vec![
            send_event,
            shutdown,
            command(
                "getMethods",
                &["queue", "locale"],
                "List available methods that are registered on the bus.",
            ),
            command(
                "getNodes",
                &[],
                "List the nodes of the domain and their load.",
            ),
            session_user,
            command(
                "get_error",
                &["error_id", "locale"],
                "Return the record of an error reported earlier, once.",
            ),
        ]
    }

    fn call<'a>(
        &'a self,
        ctx: &'a CallContext,
        method: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, CallResult> {
        Box::pin(async move {
            let state = &ctx.state;
            match method {
                "getMethods" => {
                    // A copy: the dispatcher takes the capability lock first, so the
                    // node table's lock must not be held while taking it.
                    let alive = state.loads().clone();
                    Ok(state.capabilities().methods(&alive))
                }
                "getNodes" => {
                    // As the original agent answers: each live node's last status.
                    let statuses = state.statuses().clone();
                    let nodes: serde_json::Map<String, Value> = state
                        .loads()
                        .iter()
                        .map(|(n, load)| {
                            let s = statuses.get(n).copied().unwrap_or_default();
                            let entry = json!({
                                "load": load,
                                "latency": s.latency,
                                "workers": s.workers,
                                "indexed": s.indexed,
                                "received": s.received,
                            });
                            (n.clone(), entry)
                        })
                        .collect();
                    Ok(Value::Object(nodes))
                }
                "getSessionUser" => Ok(args.into_iter().next().unwrap_or(Value::Null)),
                "sendEvent" => send_event(ctx, &args).await,
                "shutdown" => {
                    let queue = args.first().and_then(Value::as_str).unwrap_or("");
                    let force = args.get(1).and_then(Value::as_bool).unwrap_or(false);
                    let shared = names::shared_queue(&state.config.domain, "core");
                    if queue == shared && !force {
                        return Ok(Value::Bool(false));
                    }
                    tracing::info!(user = ?ctx.user, %queue, "agent shutdown asked for");
                    state.ask_stop();
                    Ok(Value::Bool(true))
                }
                "get_error" => get_error(ctx, &args).await,
                other => Err(format!("core has no command {other}")),
            }
        })
    }
}

/// `sendEvent(user, data)`: validated, checked as `D.event.<Name>` for the caller, then
/// published under the agent's own identity.
async fn send_event(ctx: &CallContext, args: &[Value]) -> CallResult {
    let state = &ctx.state;
    let Some(data) = args.get(1).and_then(Value::as_str) else {
        return Err(ctx.report((
            ErrorCode::COMMAND_BAD_ARGUMENTS,
            "sendEvent: data must be the event's XML text".into(),
        )));
    };
    let event = state
        .schemas
        .validate(data)
        .map_err(|e| ctx.report((ErrorCode::EVENT_INVALID, e.to_string())))?;
    let topic = format!("{}.event.{}", state.config.domain, event.name);
    if let Some(user) = ctx.user.as_deref() {
        if !state.allows(user, &topic, &serde_json::Map::new()) {
            tracing::warn!(%user, %topic, "agent ACL denied the event");
            return Err(ctx.report((ErrorCode::PERMISSION_EVENT, topic)));
        }
    }
    state
        .publish_validated(&event)
        .await
        .map_err(|e| ctx.report((ErrorCode::COMMAND_FAILED, e)))?;
    Ok(Value::Null)
}

/// `get_error(id)`: the record is kept by the node that reported it, and the shared queue
/// may have brought this call elsewhere, so the other live nodes are asked in turn.
async fn get_error(ctx: &CallContext, args: &[Value]) -> CallResult {
    let state = &ctx.state;
    let id = args.first().and_then(Value::as_str).unwrap_or("");
    if let Some(record) = state.errors.take(id) {
        return serde_json::to_value(record).map_err(|e| e.to_string());
    }
    if let (false, Some(user)) = (ctx.forwarded, ctx.user.as_deref()) {
        let mut others: Vec<String> = state
            .loads()
            .keys()
            .filter(|n| **n != state.config.node)
            .cloned()
            .collect();
        others.sort();
        let request = crate::jsonrpc::Request {
            method: "get_error".into(),
            params: crate::jsonrpc::Params::Positional(args.to_vec()),
            id: Value::Null,
        };
        for node in others {
            if let Ok(record) = state.ask_node(&node, "core", user, &request).await {
                return Ok(record);
            }
        }
    }
    Err(ctx.report((ErrorCode::NO_SUCH_RESOURCE, id.to_string())))
}

//! The `core` target's commands every agent serves.

use serde_json::{json, Value};

use crate::jsonrpc::ErrorCode;
use crate::plugin::{BoxFuture, CallContext, CallResult, Plugin};
use crate::registry::CommandInfo;

/// `getMethods`, `getNodes`, `getSessionUser`, `get_error`.
pub struct Core;

fn command(name: &str, sig: &[&str], doc: &str) -> CommandInfo {
    let mut c = CommandInfo::new(name, "core", "CommandRegistry", doc);
    c.sig = sig.iter().map(|s| s.to_string()).collect();
    c
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
        vec![
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
                    let nodes: serde_json::Map<String, Value> = state
                        .loads()
                        .iter()
                        .map(|(n, l)| (n.clone(), json!({ "load": l })))
                        .collect();
                    Ok(Value::Object(nodes))
                }
                "getSessionUser" => Ok(args.into_iter().next().unwrap_or(Value::Null)),
                "get_error" => {
                    let id = args.first().and_then(Value::as_str).unwrap_or("");
                    match state.errors.take(id) {
                        Some(record) => serde_json::to_value(record).map_err(|e| e.to_string()),
                        None => Err(state.errors.report(
                            ErrorCode::NO_SUCH_RESOURCE,
                            id,
                            ctx.user.as_deref(),
                        )),
                    }
                }
                other => Err(format!("core has no command {other}")),
            }
        })
    }
}

//! Federation commands on the `broker` target: links to other brokers and the routes over
//! them, administered over the bus like the rest of the broker.

use clacks_broker::federation::{Federation, FederationError, LinkSpec, RouteSource, RouteSpec};
use serde_json::{json, Value};

use super::args::{bool_arg, required, string_arg};
use crate::dispatch::Refusal;
use crate::jsonrpc::ErrorCode;
use crate::plugin::{BoxFuture, CallContext, CallResult, Plugin};
use crate::registry::CommandInfo;

/// `listLinks`, `addLink`, `removeLink`, `listRoutes`, `addRoute`, `removeRoute`.
pub struct FederationPlugin {
    federation: Federation,
}

impl FederationPlugin {
    /// Commands acting on these links and routes.
    pub fn new(federation: Federation) -> FederationPlugin {
        FederationPlugin { federation }
    }
}

fn command(name: &str, sig: &[&str], doc: &str) -> CommandInfo {
    CommandInfo::new(name, "broker", "Federation", doc).with_sig(sig)
}

fn refused(e: FederationError) -> Refusal {
    match e {
        FederationError::NotFound(what) => (ErrorCode::NO_SUCH_RESOURCE, what),
        FederationError::Exists(_) | FederationError::Invalid(_) | FederationError::Store(_) => {
            (ErrorCode::COMMAND_FAILED, e.to_string())
        }
    }
}

impl Plugin for FederationPlugin {
    fn target(&self) -> &str {
        "broker"
    }

    fn commands(&self) -> Vec<CommandInfo> {
        vec![
            command(
                "listLinks",
                &[],
                "List the federation links with their state (connecting, operational, failed and why).",
            ),
            command(
                "addLink",
                &["name", "url", "durable", "tlsCa"],
                "Add a link to another broker: amqp[s]://user:password@host:port; tlsCa: a PEM file of CAs to trust for amqps.",
            ),
            command("removeLink", &["name"], "Remove a link and its routes."),
            command(
                "listRoutes",
                &[],
                "List the federation routes with the messages each moved.",
            ),
            command(
                "addRoute",
                &["name", "link", "type", "source", "key", "dest", "destKey", "push", "query", "durable"],
                "Add a route over a link: type exchange (source exchange and key; query for xml) or queue (source queue), into exchange dest; push: from here to the remote broker.",
            ),
            command("removeRoute", &["name"], "Remove a route."),
        ]
    }

    fn call<'a>(
        &'a self,
        ctx: &'a CallContext,
        method: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, CallResult> {
        Box::pin(async move { self.run(method, &args).await.map_err(|r| ctx.report(r)) })
    }
}

impl FederationPlugin {
    async fn run(&self, method: &str, args: &[Value]) -> Result<Value, Refusal> {
        let fed = &self.federation;
        match method {
            "listLinks" => serde_json::to_value(fed.list_links())
                .map_err(|e| (ErrorCode::COMMAND_FAILED, e.to_string())),
            "listRoutes" => serde_json::to_value(fed.list_routes())
                .map_err(|e| (ErrorCode::COMMAND_FAILED, e.to_string())),
            "addLink" => {
                let spec = LinkSpec {
                    name: required(method, args, 0, "name")?,
                    url: required(method, args, 1, "url")?,
                    durable: bool_arg(method, args, 2, "durable")?,
                    tls_ca: string_arg(method, args, 3, "tlsCa")?.map(Into::into),
                };
                fed.add_link(spec).await.map_err(refused)?;
                Ok(Value::Bool(true))
            }
            "removeLink" => {
                let name = required(method, args, 0, "name")?;
                let routes = fed.remove_link(&name).await.map_err(refused)?;
                Ok(json!({"removedRoutes": routes.len()}))
            }
            "addRoute" => {
                let kind = required(method, args, 2, "type")?;
                let source = required(method, args, 3, "source")?;
                let source = match kind.as_str() {
                    "exchange" => RouteSource::Exchange {
                        exchange: source,
                        key: string_arg(method, args, 4, "key")?.unwrap_or_default(),
                        query: string_arg(method, args, 8, "query")?,
                    },
                    "queue" => RouteSource::Queue { queue: source },
                    other => {
                        return Err((
                            ErrorCode::COMMAND_BAD_ARGUMENTS,
                            format!("{method}: type must be exchange or queue, not {other}"),
                        ))
                    }
                };
                let spec = RouteSpec {
                    name: required(method, args, 0, "name")?,
                    link: required(method, args, 1, "link")?,
                    source,
                    dest: required(method, args, 5, "dest")?,
                    dest_key: string_arg(method, args, 6, "destKey")?,
                    push: bool_arg(method, args, 7, "push")?,
                    durable: bool_arg(method, args, 9, "durable")?,
                };
                fed.add_route(spec).await.map_err(refused)?;
                Ok(Value::Bool(true))
            }
            "removeRoute" => {
                let name = required(method, args, 0, "name")?;
                fed.remove_route(&name).await.map_err(refused)?;
                Ok(Value::Bool(true))
            }
            other => Err((ErrorCode::COMMAND_NOT_DEFINED, other.to_string())),
        }
    }
}

//! The `broker` target: administering the broker the agent runs in (queues, exchanges,
//! bindings, connections and local users) over the bus.

use std::time::UNIX_EPOCH;

use clacks_broker::server::{Admin, AdminError};
use clacks_broker::wire::{FieldTable, Value as Wire};
use serde_json::{json, Map, Value};

use super::args::{bool_arg, required, string_arg};
use crate::dispatch::Refusal;
use crate::jsonrpc::ErrorCode;
use crate::plugin::{BoxFuture, CallContext, CallResult, Plugin};
use crate::registry::CommandInfo;

/// The queue suffix these commands are served on.
const TARGET: &str = "broker";

/// The commands of the `broker` target, run against the broker through an [`Admin`] handle.
pub struct BrokerPlugin {
    admin: Admin,
}

impl BrokerPlugin {
    /// A plugin administering the server `admin` belongs to.
    pub fn new(admin: Admin) -> BrokerPlugin {
        BrokerPlugin { admin }
    }
}

fn command(name: &str, sig: &[&str], doc: &str) -> CommandInfo {
    CommandInfo::new(name, TARGET, "BrokerAdmin", doc).with_sig(sig)
}

impl Plugin for BrokerPlugin {
    fn target(&self) -> &str {
        TARGET
    }

    fn commands(&self) -> Vec<CommandInfo> {
        vec![
            command(
                "listQueues",
                &[],
                "List the queues with their flags, messages, bytes and consumers.",
            ),
            command(
                "listExchanges",
                &[],
                "List the exchanges with their type, durability and number of bindings.",
            ),
            command(
                "listBindings",
                &["exchange"],
                "List the bindings, of one exchange or of all.",
            ),
            command(
                "listConnections",
                &[],
                "List the open connections with user, address, TLS, sessions and start time.",
            ),
            command(
                "purgeQueue",
                &["name"],
                "Drop the waiting messages of a queue; returns how many.",
            ),
            command(
                "deleteQueue",
                &["name", "ifUnused", "ifEmpty"],
                "Delete a queue, optionally only when it has no consumers or no messages.",
            ),
            command(
                "listUsers",
                &[],
                "List the local users and where each is defined (store or config).",
            ),
            command(
                "addUser",
                &["name", "password"],
                "Add a local user; without a password one is generated and returned.",
            ),
            command(
                "removeUser",
                &["name"],
                "Remove a local user from the store; it can no longer log in.",
            ),
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

impl BrokerPlugin {
    async fn run(&self, method: &str, args: &[Value]) -> Result<Value, Refusal> {
        let admin = &self.admin;
        let failed = |e: AdminError| admin_refusal(method, e);
        match method {
            "listQueues" => Ok(Value::Array(
                admin
                    .queues()
                    .into_iter()
                    .map(|q| {
                        // The figures QMF reports as msgDepth, byteDepth and so on.
                        let s = &q.stats;
                        json!({
                            "name": q.name,
                            "durable": q.durable,
                            "autoDelete": q.auto_delete,
                            "exclusive": q.exclusive,
                            "messages": q.depth,
                            "bytes": q.byte_depth(),
                            "consumers": q.consumers,
                            "bindings": q.bindings,
                            "unacked": q.unacked,
                            "enqueues": s.enqueues.msgs,
                            "dequeues": s.dequeues.msgs,
                            "byteEnqueues": s.enqueues.bytes,
                            "byteDequeues": s.dequeues.bytes,
                            "acquires": s.acquires,
                            "releases": s.releases,
                            "redeliveries": s.redeliveries,
                            "discards": s.discards_ttl + s.discards_ring + s.discards_lvq
                                + s.discards_overflow + s.discards_subscriber + s.discards_purge,
                        })
                    })
                    .collect(),
            )),
            "listExchanges" => Ok(Value::Array(
                admin
                    .exchanges()
                    .into_iter()
                    .map(|e| {
                        json!({
                            "name": e.name,
                            "type": e.kind,
                            "durable": e.durable,
                            "bindings": e.bindings,
                            "received": e.stats.receives.msgs,
                            "routed": e.stats.routes.msgs,
                            "dropped": e.stats.drops.msgs,
                        })
                    })
                    .collect(),
            )),
            "listBindings" => {
                let exchange = string_arg(method, args, 0, "exchange")?;
                let bindings = admin.bindings(exchange.as_deref()).map_err(failed)?;
                Ok(Value::Array(
                    bindings
                        .into_iter()
                        .map(|b| {
                            json!({
                                "exchange": b.exchange,
                                "queue": b.queue,
                                "key": b.key,
                                "arguments": table_json(&b.args),
                            })
                        })
                        .collect(),
                ))
            }
            "listConnections" => Ok(Value::Array(
                admin
                    .connections()
                    .into_iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "user": c.user,
                            "address": c.addr.map_or_else(|| "internal".to_string(), |a| a.to_string()),
                            "tls": c.tls,
                            "sessions": c.sessions,
                            "since": c.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                        })
                    })
                    .collect(),
            )),
            "purgeQueue" => {
                let name = required(method, args, 0, "name")?;
                let n = admin.purge_queue(&name).await.map_err(failed)?;
                Ok(json!(n))
            }
            "deleteQueue" => {
                let name = required(method, args, 0, "name")?;
                let if_unused = bool_arg(method, args, 1, "ifUnused")?;
                let if_empty = bool_arg(method, args, 2, "ifEmpty")?;
                admin
                    .delete_queue(&name, if_unused, if_empty)
                    .await
                    .map_err(failed)?;
                Ok(Value::Bool(true))
            }
            "listUsers" => Ok(Value::Array(
                admin
                    .users()
                    .into_iter()
                    .map(|u| json!({"name": u.name, "source": u.source.as_str()}))
                    .collect(),
            )),
            "addUser" => {
                let name = required(method, args, 0, "name")?;
                let password = string_arg(method, args, 1, "password")?;
                let generated = admin
                    .add_user(&name, password.as_deref())
                    .await
                    .map_err(failed)?;
                // The generated password is shown to the caller once and kept nowhere.
                Ok(generated.map_or(Value::Bool(true), Value::String))
            }
            "removeUser" => {
                let name = required(method, args, 0, "name")?;
                admin.remove_user(&name).await.map_err(failed)?;
                Ok(Value::Bool(true))
            }
            other => Err((
                ErrorCode::COMMAND_NOT_DEFINED,
                format!("{other} (target {TARGET})"),
            )),
        }
    }
}

/// The code and subject of an administrative error.
fn admin_refusal(method: &str, e: AdminError) -> Refusal {
    match e {
        AdminError::NotFound(what) => (ErrorCode::NO_SUCH_RESOURCE, what),
        AdminError::Invalid(why) => (ErrorCode::COMMAND_BAD_ARGUMENTS, format!("{method}: {why}")),
        AdminError::Refused(why) | AdminError::Failed(why) => {
            (ErrorCode::COMMAND_FAILED, format!("{method}: {why}"))
        }
    }
}

/// A 0-10 map as a JSON object (a repeated key keeps its last value).
fn table_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .iter()
            .map(|(k, v)| (k.to_string(), wire_json(v)))
            .collect::<Map<String, Value>>(),
    )
}

/// A 0-10 value as JSON: numbers, text and containers as such; binary as text when it is
/// UTF-8 and as hex otherwise.
fn wire_json(v: &Wire) -> Value {
    match v {
        Wire::Void => Value::Null,
        Wire::Bool(b) => json!(b),
        Wire::Int8(n) => json!(n),
        Wire::Uint8(n) => json!(n),
        Wire::Int16(n) => json!(n),
        Wire::Uint16(n) => json!(n),
        Wire::Int32(n) => json!(n),
        Wire::Uint32(n) => json!(n),
        Wire::Int64(n) => json!(n),
        Wire::Uint64(n) | Wire::Datetime(n) => json!(n),
        // Non-finite floats have no JSON form: they become null.
        Wire::Float(f) => json!(f),
        Wire::Double(f) => json!(f),
        Wire::Uuid(u) => json!(u.to_string()),
        Wire::Str8(s) | Wire::Str16(s) => json!(s),
        Wire::Vbin8(b) | Wire::Vbin16(b) | Wire::Vbin32(b) | Wire::Variable(_, b) => {
            match std::str::from_utf8(b) {
                Ok(s) => json!(s),
                Err(_) => json!(hex(b)),
            }
        }
        Wire::Fixed(_, b) => json!(hex(b)),
        Wire::Struct32(s) => json!(hex(&s.body)),
        Wire::Map(m) => table_json(m),
        Wire::List(l) => Value::Array(l.0.iter().map(wire_json).collect()),
        Wire::Array(a) => Value::Array(a.items.iter().map(wire_json).collect()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clacks_broker::wire::{Array, List};

    #[test]
    fn wire_values_as_json() {
        let mut inner = FieldTable::new();
        inner.insert("n", 5i64);
        let mut t = FieldTable::new();
        t.insert("xquery", "./order[@id > 1]");
        t.insert("flag", true);
        t.insert("inner", Wire::Map(inner));
        t.insert("list", Wire::List(List(vec![Wire::Uint8(1), Wire::Void])));
        t.insert("names", Wire::Array(Array::str16(["a", "b"])));
        t.insert("bin", Wire::Vbin8(bytes::Bytes::from_static(&[0xff, 0x01])));
        t.insert("nan", Wire::Double(f64::NAN));
        assert_eq!(
            table_json(&t),
            json!({
                "xquery": "./order[@id > 1]",
                "flag": true,
                "inner": {"n": 5},
                "list": [1, null],
                "names": ["a", "b"],
                "bin": "ff01",
                "nan": null,
            })
        );
    }

    #[test]
    fn arguments_are_checked() {
        let args = vec![json!("q"), json!(true), json!("false")];
        assert_eq!(required("m", &args, 0, "name"), Ok("q".to_string()));
        assert_eq!(bool_arg("m", &args, 1, "a"), Ok(true));
        assert_eq!(bool_arg("m", &args, 2, "b"), Ok(false));
        assert_eq!(bool_arg("m", &args, 3, "c"), Ok(false));
        let e = required("m", &[json!("")], 0, "name").expect_err("empty");
        assert_eq!(e.0, ErrorCode::COMMAND_BAD_ARGUMENTS);
        assert!(e.1.contains("name is required"), "{}", e.1);
        assert!(required("m", &[], 0, "name").is_err());
        assert!(required("m", &[json!(3)], 0, "name").is_err());
        assert!(bool_arg("m", &[json!(1)], 0, "ifUnused").is_err());
        assert_eq!(string_arg("m", &[Value::Null], 0, "x"), Ok(None));
    }

    #[test]
    fn admin_errors_keep_their_kind() {
        let (code, subject) = admin_refusal("purgeQueue", AdminError::NotFound("queue q".into()));
        assert_eq!(code, ErrorCode::NO_SUCH_RESOURCE);
        assert_eq!(code.describe(&subject), "no such resource: queue q");
        let (code, subject) =
            admin_refusal("addUser", AdminError::Refused("user bob exists".into()));
        assert_eq!(code, ErrorCode::COMMAND_FAILED);
        assert_eq!(code.describe(&subject), "addUser: user bob exists");
        let (code, _) = admin_refusal("addUser", AdminError::Invalid("empty".into()));
        assert_eq!(code, ErrorCode::COMMAND_BAD_ARGUMENTS);
    }
}

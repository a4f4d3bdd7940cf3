//! The management methods: what `qpid-config`, `qpid-route`, `qpid-tool` and Qpid's tests
//! call on the broker, queue, connection, link and bridge objects, carried out on the
//! model, the server and the federation as qpidd carries them out.

use std::sync::Arc;

use crate::auth::{Action, ObjectKind};
use crate::core::journal::{journaled, wait_durable};
use crate::core::{Broker, Error, Message, SessionId};
use crate::federation::FederationError;
use crate::wire::{FieldTable, Value};

use super::agent::{Agent, Caller};
use super::lifecycle::{
    add_bridge, add_link, create, delete, federation, transport_or_tcp, BridgeRequest, LinkRequest,
};
use super::objects::connection_address;
use super::schema::{Method, Type};

/// QMF method status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    UnknownObject = 1,
    UnknownMethod = 2,
    NotImplemented = 3,
    InvalidParameter = 4,
    FeatureNotImplemented = 5,
    Forbidden = 6,
    Exception = 7,
}

impl Status {
    /// The text qpidd sends with the code.
    fn text(self) -> &'static str {
        match self {
            Status::UnknownObject => "UnknownObject",
            Status::UnknownMethod => "UnknownMethod",
            Status::NotImplemented => "NotImplemented",
            Status::InvalidParameter => "InvalidParameter",
            Status::FeatureNotImplemented => "FeatureNotImplemented",
            Status::Forbidden => "Forbidden",
            Status::Exception => "Exception",
        }
    }
}

/// Why a method failed: the status code and the text for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MethodError {
    pub status: Status,
    pub text: String,
}

impl MethodError {
    pub fn new(status: Status, text: impl Into<String>) -> MethodError {
        MethodError {
            status,
            text: text.into(),
        }
    }

    /// A failure with the standard text of its code.
    pub fn standard(status: Status) -> MethodError {
        MethodError::new(status, status.text())
    }

    /// A model error, named as the AMQP error it is (`not-found: ...`).
    pub fn model(e: &Error) -> MethodError {
        let name = match e {
            Error::NotFound(_) => "not-found",
            Error::NotAllowed(_) => "not-allowed",
            Error::ResourceLocked(_) => "resource-locked",
            Error::PreconditionFailed(_) => "precondition-failed",
            Error::Unauthorized(_) => "unauthorized-access",
            Error::IllegalArgument(_) => "illegal-argument",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::LimitExceeded(_) => "resource-limit-exceeded",
            Error::CommandInvalid(_) => "command-invalid",
            Error::IllegalState(_) => "illegal-state",
            Error::NotImplemented(_) => "not-implemented",
            Error::Internal(_) => "internal-error",
        };
        MethodError::new(Status::Exception, format!("{name}: {e}"))
    }

    pub fn federation(e: &FederationError) -> MethodError {
        MethodError::new(Status::Exception, e.to_string())
    }

    pub fn refused(what: &str) -> MethodError {
        MethodError::new(
            Status::Forbidden,
            format!("unauthorized-access: ACL denied {what}"),
        )
    }
}

/// A method's input arguments, defaults filled in and types checked.
#[derive(Debug)]
pub(super) struct Args(FieldTable);

impl Args {
    /// The inputs of `method` from what the caller sent.
    ///
    /// # Errors
    /// `InvalidParameter` naming an argument of the wrong type.
    pub fn new(method: &Method, given: FieldTable) -> Result<Args, MethodError> {
        let mut out = FieldTable::new();
        for a in method.args.iter().filter(|a| a.dir.contains('I')) {
            let v = given.get(a.name).cloned();
            let bad = || {
                MethodError::new(
                    Status::InvalidParameter,
                    format!("argument {} has the wrong type", a.name),
                )
            };
            let v = match (a.kind, v) {
                (_, None | Some(Value::Void)) => default_value(a.kind, a.default),
                (Type::U8 | Type::U16 | Type::U32 | Type::U64, Some(v)) => {
                    Value::Int64(v.as_i64().filter(|n| *n >= 0).ok_or_else(bad)?)
                }
                (Type::Bool, Some(v)) => match v {
                    Value::Bool(b) => Value::Bool(b),
                    other => Value::Bool(other.as_i64().ok_or_else(bad)? != 0),
                },
                (Type::Sstr | Type::Lstr, Some(v)) => {
                    Value::Str16(v.as_str().ok_or_else(bad)?.to_string())
                }
                (Type::Map, Some(Value::Map(m))) => Value::Map(m),
                (Type::Map, Some(_)) => return Err(bad()),
                (_, Some(v)) => v,
            };
            out.insert(a.name, v);
        }
        Ok(Args(out))
    }

    fn str(&self, name: &str) -> String {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn int(&self, name: &str) -> u64 {
        self.0
            .get(name)
            .and_then(Value::as_i64)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }

    fn bool(&self, name: &str) -> bool {
        self.0
            .get(name)
            .and_then(Value::as_i64)
            .is_some_and(|n| n != 0)
    }

    fn map(&self, name: &str) -> FieldTable {
        match self.0.get(name) {
            Some(Value::Map(m)) => m.clone(),
            _ => FieldTable::new(),
        }
    }
}

fn default_value(kind: Type, default: Option<&str>) -> Value {
    match kind {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            let n = default.and_then(|d| match d.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16).ok(),
                None => d.parse().ok(),
            });
            Value::Int64(n.unwrap_or(0))
        }
        Type::Bool => Value::Bool(false),
        Type::Map => Value::Map(FieldTable::new()),
        _ => Value::Str16(default.unwrap_or_default().to_string()),
    }
}

/// A property given as a boolean, a number or a string (`"true"`, `"1"`).
pub(super) fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        other => other
            .as_i64()
            .map(|n| n != 0)
            .or_else(|| other.as_str().map(|s| matches!(s, "true" | "True" | "yes")))
            .unwrap_or(false),
    }
}

/// The messages a management filter selects: none given selects all; qpidd's one kind
/// is `{filter_type: header_match_str, filter_params: {header_key, header_value}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Filter(Option<(String, String)>);

impl Filter {
    /// Reads a filter argument.
    ///
    /// # Errors
    /// Any other kind of filter (status 7, as qpidd).
    pub fn parse(filter: &FieldTable) -> Result<Filter, MethodError> {
        if filter.is_empty() {
            return Ok(Filter(None));
        }
        let unrecognised = || {
            MethodError::new(
                Status::Exception,
                format!("Unrecognized message filter: '{filter:?}'"),
            )
        };
        if filter.get("filter_type").and_then(Value::as_str) != Some("header_match_str") {
            return Err(unrecognised());
        }
        let Some(Value::Map(params)) = filter.get("filter_params") else {
            return Err(unrecognised());
        };
        match (
            params.get("header_key").and_then(Value::as_str),
            params.get("header_value").and_then(Value::as_str),
        ) {
            (Some(k), Some(v)) => Ok(Filter(Some((k.to_string(), v.to_string())))),
            _ => Err(unrecognised()),
        }
    }

    /// Whether `msg` is selected.
    pub fn matches(&self, msg: &Message) -> bool {
        let Some((key, value)) = &self.0 else {
            return true;
        };
        msg.headers()
            .and_then(|h| h.get(key))
            .is_some_and(|v| match v.as_str() {
                Some(s) => s == value,
                None => v.as_i64().is_some_and(|n| n.to_string() == *value),
            })
    }
}

/// Runs `method` on the object `class`/`key` for `caller`.
pub(super) async fn call(
    agent: &mut Agent,
    caller: &Caller,
    class: &str,
    key: &str,
    method: &str,
    args: &Args,
) -> Result<FieldTable, MethodError> {
    let broker = agent.ctx.admin.broker().clone();
    let mut out = FieldTable::new();
    match (class, method) {
        ("broker", "echo") => {
            out.insert(
                "sequence",
                Value::Uint32(u32::try_from(args.int("sequence")).unwrap_or(u32::MAX)),
            );
            out.insert("body", Value::Str16(args.str("body")));
        }
        ("broker", "create") => {
            create(
                agent,
                caller,
                &args.str("type"),
                &args.str("name"),
                args.map("properties"),
            )
            .await?;
        }
        ("broker", "delete") => {
            delete(
                agent,
                caller,
                &args.str("type"),
                &args.str("name"),
                &args.map("options"),
            )
            .await?;
        }
        ("broker", "queueMoveMessages") => {
            let (from, to) = (args.str("srcQueue"), args.str("destQueue"));
            let filter = Filter::parse(&args.map("filter"))?;
            for q in [&from, &to] {
                if broker.query_queue(q).is_none() {
                    return Err(MethodError::standard(Status::InvalidParameter));
                }
            }
            if !agent.allowed(caller, Action::Purge, ObjectKind::Queue, &from) {
                return Err(MethodError::refused(&format!("moving messages off {from}")));
            }
            let limit = usize::try_from(args.int("qty")).unwrap_or(usize::MAX);
            durably(&broker, || {
                broker.move_messages(&from, &to, limit, |m| filter.matches(m))
            })
            .await?;
        }
        ("broker", "getLogLevel") => {
            out.insert("level", Value::Str16(agent.log_level.clone()));
        }
        ("broker", "setLogLevel") => {
            let level = args.str("level");
            if let Some(hook) = &agent.ctx.log_hook {
                (hook.0)(&level).map_err(|e| MethodError::new(Status::InvalidParameter, e))?;
            }
            tracing::info!(%level, "log level set by management");
            agent.log_level = level;
        }
        ("broker", "getTimestampConfig") => {
            out.insert("receive", Value::Bool(broker.timestamping()));
        }
        ("broker", "setTimestampConfig") => broker.set_timestamping(args.bool("receive")),
        ("broker", "getLogHiresTimestamp") => {
            out.insert("logHires", Value::Bool(agent.log_hires));
        }
        ("broker", "setLogHiresTimestamp") => agent.log_hires = args.bool("logHires"),
        ("broker", "connect") => {
            let transport = args.str("transport");
            let (host, port) = (args.str("host"), args.int("port"));
            let link = LinkRequest {
                name: format!("qpid.{}:{host}:{port}", transport_or_tcp(&transport)),
                host,
                port,
                transport,
                durable: args.bool("durable"),
                username: args.str("username"),
                password: args.str("password"),
            };
            add_link(agent, caller, link, true).await?;
        }
        ("broker", "query") => {
            let (kind, name) = (args.str("type"), args.str("name"));
            match kind.as_str() {
                "queue" => match broker.queue_groups(&name) {
                    Ok(groups) => {
                        out.insert("results", Value::Map(groups.unwrap_or_default()));
                    }
                    Err(_) => return Err(MethodError::standard(Status::UnknownObject)),
                },
                "exchange" | "topic" | "binding" => {
                    return Err(MethodError::standard(Status::NotImplemented))
                }
                other => {
                    return Err(MethodError::new(
                        Status::Exception,
                        format!("unknown object type: {other}"),
                    ))
                }
            }
        }
        ("queue", "purge") => {
            let filter = Filter::parse(&args.map("filter"))?;
            if !agent.allowed(caller, Action::Purge, ObjectKind::Queue, key) {
                return Err(MethodError::refused(&format!("purging {key}")));
            }
            let limit = usize::try_from(args.int("request")).unwrap_or(usize::MAX);
            durably(&broker, || {
                broker.purge_matching(key, limit, |m| filter.matches(m))
            })
            .await?;
        }
        ("queue", "reroute") => {
            let filter = Filter::parse(&args.map("filter"))?;
            let exchange = args.str("exchange");
            let target = if args.bool("useAltExchange") {
                match broker.query_queue(key).and_then(|q| q.alternate) {
                    Some(_) => None,
                    None => return Err(MethodError::standard(Status::InvalidParameter)),
                }
            } else {
                if broker.query_exchange(&exchange).is_none() {
                    return Err(MethodError::standard(Status::InvalidParameter));
                }
                Some(exchange.as_str())
            };
            if !agent.allowed(caller, Action::Purge, ObjectKind::Queue, key) {
                return Err(MethodError::refused(&format!("rerouting from {key}")));
            }
            let limit = usize::try_from(args.int("request")).unwrap_or(usize::MAX);
            durably(&broker, || {
                broker.reroute_messages(key, target, limit, |m| filter.matches(m))
            })
            .await?;
        }
        ("connection", "close") => {
            let id = agent
                .ctx
                .admin
                .connections()
                .into_iter()
                .find(|c| connection_address(c) == key)
                .map(|c| c.id);
            match id {
                Some(id) if agent.ctx.admin.close_connection(id) => {}
                _ => return Err(MethodError::standard(Status::UnknownObject)),
            }
        }
        ("link", "close") => {
            let fed = federation(agent)?;
            if !agent.allowed(caller, Action::Delete, ObjectKind::Link, key) {
                return Err(MethodError::refused(&format!("deleting link {key}")));
            }
            fed.remove_link(key)
                .await
                .map_err(|e| MethodError::federation(&e))?;
        }
        ("link", "bridge") => {
            let route = BridgeRequest {
                link: key.to_string(),
                src: args.str("src"),
                dest: args.str("dest"),
                key: args.str("key"),
                src_is_queue: args.bool("srcIsQueue"),
                src_is_local: args.bool("srcIsLocal"),
                dynamic: args.bool("dynamic"),
                durable: args.bool("durable"),
            };
            add_bridge(agent, caller, route).await?;
        }
        ("bridge", "close") => {
            let fed = federation(agent)?;
            if !agent.allowed(caller, Action::Delete, ObjectKind::Link, key) {
                return Err(MethodError::refused(&format!("deleting route {key}")));
            }
            fed.remove_route(key)
                .await
                .map_err(|e| MethodError::federation(&e))?;
        }
        _ => return Err(MethodError::standard(Status::NotImplemented)),
    }
    Ok(out)
}

/// Runs a model change and waits until the store has it.
pub(super) async fn durably<T>(
    broker: &Arc<Broker>,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, MethodError> {
    let (result, ticket) = journaled(f);
    let value = result.map_err(|e| MethodError::model(&e))?;
    if let (Some(journal), Some(ticket)) = (broker.journal(), ticket) {
        wait_durable(journal, ticket)
            .await
            .map_err(|e| MethodError::new(Status::Exception, format!("store: {e}")))?;
    }
    Ok(value)
}

/// A session of its own for one management change, on the caller's connection so that
/// events name the caller.
pub(super) struct TempSession<'a> {
    broker: &'a Broker,
    /// The session's id.
    pub id: SessionId,
}

impl<'a> TempSession<'a> {
    pub fn open(broker: &'a Broker, connection: u64) -> TempSession<'a> {
        TempSession {
            broker,
            id: broker.new_session(connection),
        }
    }
}

impl Drop for TempSession<'_> {
    fn drop(&mut self) {
        self.broker.end_session(self.id, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_header_strings_and_refuse_other_kinds() {
        let mut params = FieldTable::new();
        params.insert("header_key", "THE-GROUP");
        params.insert("header_value", "A");
        let mut f = FieldTable::new();
        f.insert("filter_type", "header_match_str");
        f.insert("filter_params", Value::Map(params));
        let filter = Filter::parse(&f).expect("filter");
        let mut h = FieldTable::new();
        h.insert("THE-GROUP", "A");
        let msg = Message::new("k", "x").with_header("THE-GROUP", Value::from("A"));
        assert!(filter.matches(&msg));
        assert!(!filter.matches(&Message::new("k", "x")));
        assert!(Filter::parse(&FieldTable::new())
            .expect("none")
            .matches(&Message::new("k", "")));
        let mut other = FieldTable::new();
        other.insert("filter_type", "regex");
        assert_eq!(
            Filter::parse(&other).map_err(|e| e.status),
            Err(Status::Exception)
        );
    }
}

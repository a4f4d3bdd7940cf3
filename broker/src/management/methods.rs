//! The management methods: what `qpid-config`, `qpid-route`, `qpid-tool` and Qpid's tests
//! call on the broker, queue, connection, link and bridge objects, carried out on the
//! model, the server and the federation as qpidd carries them out.

use std::sync::Arc;

use crate::auth::{Action, ObjectKind};
use crate::core::journal::{journaled, wait_durable};
use crate::core::{Broker, Error, ExchangeDeclare, Message, QueueDeclare, SessionId};
use crate::federation::{FederationError, LinkSpec, RouteSource, RouteSpec};
use crate::wire::{FieldTable, Value};

use super::agent::{Agent, Caller};
use super::objects::{connection_address, split_url};
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
    fn model(e: &Error) -> MethodError {
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
            Error::NotImplemented(_) => "not-implemented",
            Error::Internal(_) => "internal-error",
        };
        MethodError::new(Status::Exception, format!("{name}: {e}"))
    }

    fn federation(e: &FederationError) -> MethodError {
        MethodError::new(Status::Exception, e.to_string())
    }

    fn refused(what: &str) -> MethodError {
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
fn truthy(v: &Value) -> bool {
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
                "queue" if broker.query_queue(&name).is_some() => {
                    out.insert("results", Value::Map(FieldTable::new()));
                }
                "queue" => return Err(MethodError::standard(Status::UnknownObject)),
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
async fn durably<T>(
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
struct TempSession<'a> {
    broker: &'a Broker,
    id: SessionId,
}

impl<'a> TempSession<'a> {
    fn open(broker: &'a Broker, connection: u64) -> TempSession<'a> {
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

/// `broker.create`.
async fn create(
    agent: &mut Agent,
    caller: &Caller,
    kind: &str,
    name: &str,
    mut props: FieldTable,
) -> Result<(), MethodError> {
    let broker = agent.ctx.admin.broker().clone();
    let take_bool = |p: &mut FieldTable, k: &str| p.remove(k).is_some_and(|v| truthy(&v));
    let take_str = |p: &mut FieldTable, k: &str| {
        p.remove(k)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
    };
    match kind {
        "queue" => {
            if !agent.allowed(caller, Action::Create, ObjectKind::Queue, name) {
                return Err(MethodError::refused(&format!("creating queue {name}")));
            }
            if broker.query_queue(name).is_some() {
                return Err(MethodError::new(
                    Status::Exception,
                    format!("object already exists: {name}"),
                ));
            }
            let durable = take_bool(&mut props, "durable");
            let auto_delete = take_bool(&mut props, "auto-delete");
            let alternate = take_str(&mut props, "alternate-exchange");
            // qpidd ignores these on create: the queue has no owner.
            props.remove("exclusive");
            let session = TempSession::open(&broker, caller.connection);
            durably(&broker, || {
                broker.declare_queue(
                    session.id,
                    QueueDeclare {
                        name: name.to_string(),
                        alternate,
                        durable,
                        auto_delete,
                        args: props,
                        creator: caller.names.first().cloned(),
                        ..QueueDeclare::default()
                    },
                )
            })
            .await
        }
        "exchange" | "topic" => {
            if !agent.allowed(caller, Action::Create, ObjectKind::Exchange, name) {
                return Err(MethodError::refused(&format!("creating exchange {name}")));
            }
            if broker.query_exchange(name).is_some() {
                return Err(MethodError::new(
                    Status::Exception,
                    format!("object already exists: {name}"),
                ));
            }
            let exchange_type =
                take_str(&mut props, "exchange-type").unwrap_or_else(|| "topic".into());
            let durable = take_bool(&mut props, "durable");
            let auto_delete = take_bool(&mut props, "auto-delete");
            let alternate = take_str(&mut props, "alternate-exchange");
            durably(&broker, || {
                broker.declare_exchange(ExchangeDeclare {
                    name: name.to_string(),
                    kind: exchange_type.clone(),
                    alternate,
                    durable,
                    auto_delete,
                    args: props,
                    connection: caller.connection,
                    ..ExchangeDeclare::default()
                })
            })
            .await
            .map_err(|e| {
                if e.text.contains("unknown exchange type") {
                    MethodError::new(
                        Status::Exception,
                        format!("Invalid exchange type: {exchange_type}"),
                    )
                } else {
                    e
                }
            })
        }
        "binding" => {
            let (exchange, queue, key) = binding_name(name)?;
            if !agent.allowed(caller, Action::Bind, ObjectKind::Exchange, &exchange) {
                return Err(MethodError::refused(&format!("binding to {exchange}")));
            }
            props.remove("exchange-type");
            let session = TempSession::open(&broker, caller.connection);
            durably(&broker, || {
                broker.bind(session.id, &queue, &exchange, &key, &props)
            })
            .await
        }
        "link" => {
            if name.starts_with("qpid.") {
                return Err(MethodError::new(
                    Status::Exception,
                    format!(
                        "invalid-argument: link names beginning with qpid. are reserved: {name}"
                    ),
                ));
            }
            let get = |k: &str| props.get(k).cloned();
            let text = |k: &str| {
                get(k)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let link = LinkRequest {
                name: name.to_string(),
                host: text("host"),
                port: get("port")
                    .and_then(|v| v.as_i64())
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(5672),
                transport: text("transport"),
                durable: get("durable").is_some_and(|v| truthy(&v)),
                username: text("username"),
                password: text("password"),
            };
            add_link(agent, caller, link, false).await
        }
        "bridge" => {
            let get = |k: &str| props.get(k).cloned();
            let text = |k: &str| {
                get(k)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let flag = |k: &str| get(k).is_some_and(|v| truthy(&v));
            let link = text("link");
            let route = BridgeRequest {
                link,
                src: text("src"),
                dest: text("dest"),
                key: text("key"),
                src_is_queue: flag("srcIsQueue"),
                src_is_local: flag("srcIsLocal"),
                dynamic: flag("dynamic"),
                durable: flag("durable"),
            };
            add_bridge_named(agent, caller, route, Some(name.to_string())).await
        }
        other => Err(MethodError::new(
            Status::Exception,
            format!("unknown object type: {other}"),
        )),
    }
}

/// `broker.delete`.
async fn delete(
    agent: &mut Agent,
    caller: &Caller,
    kind: &str,
    name: &str,
    options: &FieldTable,
) -> Result<(), MethodError> {
    let broker = agent.ctx.admin.broker().clone();
    let option = |k: &str| options.get(k).is_some_and(truthy);
    match kind {
        "queue" => {
            if !agent.allowed(caller, Action::Delete, ObjectKind::Queue, name) {
                return Err(MethodError::refused(&format!("deleting queue {name}")));
            }
            let session = TempSession::open(&broker, caller.connection);
            let (if_empty, if_unused) = (option("if_empty"), option("if_unused"));
            durably(&broker, || {
                broker.delete_queue(session.id, name, if_unused, if_empty)
            })
            .await
        }
        "exchange" | "topic" => {
            if !agent.allowed(caller, Action::Delete, ObjectKind::Exchange, name) {
                return Err(MethodError::refused(&format!("deleting exchange {name}")));
            }
            durably(&broker, || {
                broker.delete_exchange_by(caller.connection, name, false)
            })
            .await
        }
        "binding" => {
            let (exchange, queue, key) = binding_name(name)?;
            if !agent.allowed(caller, Action::Bind, ObjectKind::Exchange, &exchange) {
                return Err(MethodError::refused(&format!("unbinding from {exchange}")));
            }
            let session = TempSession::open(&broker, caller.connection);
            durably(&broker, || {
                broker.unbind(session.id, &queue, &exchange, &key)
            })
            .await
        }
        "link" | "bridge" => {
            let fed = federation(agent)?;
            if !agent.allowed(caller, Action::Delete, ObjectKind::Link, name) {
                return Err(MethodError::refused(&format!("deleting {kind} {name}")));
            }
            // Deleting what is not there is no error, as in qpidd.
            let r = if kind == "link" {
                fed.remove_link(name).await.map(|_| ())
            } else {
                fed.remove_route(name).await.map(|_| ())
            };
            match r {
                Ok(()) | Err(FederationError::NotFound(_)) => Ok(()),
                Err(e) => Err(MethodError::federation(&e)),
            }
        }
        other => Err(MethodError::new(
            Status::Exception,
            format!("unknown object type: {other}"),
        )),
    }
}

/// `exchange/queue/key` (key optional) as its three parts.
fn binding_name(name: &str) -> Result<(String, String, String), MethodError> {
    let parts: Vec<&str> = name.splitn(3, '/').collect();
    match parts.as_slice() {
        [_queue] => Err(MethodError::new(
            Status::Exception,
            "invalid-argument: Bind not allowed for default exchange",
        )),
        [e, q] => Ok(((*e).to_string(), (*q).to_string(), String::new())),
        [e, q, k] => Ok(((*e).to_string(), (*q).to_string(), (*k).to_string())),
        _ => Err(MethodError::new(
            Status::Exception,
            format!("invalid binding: {name}"),
        )),
    }
}

fn federation(agent: &Agent) -> Result<crate::federation::Federation, MethodError> {
    agent
        .ctx
        .federation
        .clone()
        .ok_or_else(|| MethodError::standard(Status::FeatureNotImplemented))
}

fn transport_or_tcp(t: &str) -> &str {
    if t.is_empty() {
        "tcp"
    } else {
        t
    }
}

/// A link as `connect` or `create link` describe it.
struct LinkRequest {
    name: String,
    host: String,
    port: u64,
    transport: String,
    durable: bool,
    username: String,
    password: String,
}

/// Makes a link; with `reuse`, an existing link to the same host and port will do.
async fn add_link(
    agent: &Agent,
    caller: &Caller,
    l: LinkRequest,
    reuse: bool,
) -> Result<(), MethodError> {
    let fed = federation(agent)?;
    let scheme = match transport_or_tcp(&l.transport) {
        "tcp" => "amqp",
        "ssl" | "tls" => "amqps",
        _ => return Err(MethodError::standard(Status::NotImplemented)),
    };
    if l.host.is_empty() || l.port == 0 || l.port > u64::from(u16::MAX) {
        return Err(MethodError::standard(Status::InvalidParameter));
    }
    if reuse {
        let port = u16::try_from(l.port).unwrap_or(0);
        let exists = fed.list_links().iter().any(|x| {
            let (_, host, p) = split_url(&x.spec.url);
            host == l.host && p == port
        });
        if exists {
            return Ok(());
        }
    }
    if !agent.allowed(caller, Action::Create, ObjectKind::Link, &l.name) {
        return Err(MethodError::refused(&format!("creating link {}", l.name)));
    }
    let userinfo = match (l.username.is_empty(), l.password.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("{}@", l.username),
        (false, false) => format!("{}:{}@", l.username, l.password),
    };
    let host = if l.host.contains(':') {
        format!("[{}]", l.host)
    } else {
        l.host.clone()
    };
    fed.add_link(LinkSpec {
        name: l.name,
        url: format!("{scheme}://{userinfo}{host}:{}", l.port),
        durable: l.durable,
        tls_ca: None,
    })
    .await
    .map_err(|e| MethodError::federation(&e))
}

/// A route as link `bridge` or `create bridge` describe it.
struct BridgeRequest {
    link: String,
    src: String,
    dest: String,
    key: String,
    src_is_queue: bool,
    src_is_local: bool,
    dynamic: bool,
    durable: bool,
}

async fn add_bridge(agent: &Agent, caller: &Caller, b: BridgeRequest) -> Result<(), MethodError> {
    add_bridge_named(agent, caller, b, None).await
}

/// Makes a route, named as qpidd names bridges unless a name is given.
async fn add_bridge_named(
    agent: &Agent,
    caller: &Caller,
    b: BridgeRequest,
    name: Option<String>,
) -> Result<(), MethodError> {
    let fed = federation(agent)?;
    if b.dynamic {
        return Err(MethodError::new(
            Status::FeatureNotImplemented,
            "dynamic routes are not supported",
        ));
    }
    if b.link.is_empty() || b.dest.is_empty() || b.src.is_empty() {
        return Err(MethodError::standard(Status::InvalidParameter));
    }
    let name = name.unwrap_or_else(|| format!("{}!{}!{}!{}", b.link, b.src, b.dest, b.key));
    if !agent.allowed(caller, Action::Create, ObjectKind::Link, &name) {
        return Err(MethodError::refused(&format!("creating route {name}")));
    }
    let source = if b.src_is_queue {
        RouteSource::Queue { queue: b.src }
    } else {
        RouteSource::Exchange {
            exchange: b.src,
            key: b.key,
            query: None,
        }
    };
    fed.add_route(RouteSpec {
        name,
        link: b.link,
        source,
        dest: b.dest,
        dest_key: None,
        push: b.src_is_local,
        durable: b.durable,
    })
    .await
    .map_err(|e| MethodError::federation(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_names_split_as_qpidd_splits_them() {
        assert_eq!(
            binding_name("amq.direct/q/a/b").expect("three"),
            ("amq.direct".into(), "q".into(), "a/b".into())
        );
        assert_eq!(
            binding_name("ex/q").expect("two"),
            ("ex".into(), "q".into(), String::new())
        );
        assert!(binding_name("q").is_err());
    }

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

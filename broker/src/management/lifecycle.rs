//! Making and removing objects through management: broker `create` and `delete` of queues,
//! exchanges, bindings, links and bridges, and the links and routes that `connect` and
//! link `bridge` make.

use crate::auth::{Action, ObjectKind};
use crate::core::{ExchangeDeclare, QueueDeclare};
use crate::federation::{Federation, FederationError, LinkSpec, RouteSource, RouteSpec};
use crate::wire::FieldTable;

use super::agent::{Agent, Caller};
use super::methods::{durably, truthy, MethodError, Status, TempSession};
use super::objects::split_url;

/// `broker.create`.
pub(super) async fn create(
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
pub(super) async fn delete(
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

pub(super) fn federation(agent: &Agent) -> Result<Federation, MethodError> {
    agent
        .ctx
        .federation
        .clone()
        .ok_or_else(|| MethodError::standard(Status::FeatureNotImplemented))
}

pub(super) fn transport_or_tcp(t: &str) -> &str {
    if t.is_empty() {
        "tcp"
    } else {
        t
    }
}

/// A link as `connect` or `create link` describe it.
pub(super) struct LinkRequest {
    pub(super) name: String,
    pub(super) host: String,
    pub(super) port: u64,
    pub(super) transport: String,
    pub(super) durable: bool,
    pub(super) username: String,
    pub(super) password: String,
}

/// Makes a link; with `reuse`, an existing link to the same host and port will do.
pub(super) async fn add_link(
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
pub(super) struct BridgeRequest {
    pub(super) link: String,
    pub(super) src: String,
    pub(super) dest: String,
    pub(super) key: String,
    pub(super) src_is_queue: bool,
    pub(super) src_is_local: bool,
    pub(super) dynamic: bool,
    pub(super) durable: bool,
}

pub(super) async fn add_bridge(
    agent: &Agent,
    caller: &Caller,
    b: BridgeRequest,
) -> Result<(), MethodError> {
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
}

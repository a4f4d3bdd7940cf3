//! The agent on the bus: its command queues, one worker per queue, and the JSON-RPC
//! request/reply cycle of each call.

use std::future::Future;
use std::sync::Arc;

use clacks_broker::client::{
    random_uuid, ClientError, Connection, Delivery, Message, Session, SubscribeOptions,
    Subscription,
};
use clacks_broker::wire::{
    ExchangeBind, ExchangeDeclare, FieldTable, MessageRejectCode, QueueDeclare, QueueDelete,
    SequenceSet,
};
use serde_json::Value;

use crate::dispatch::{self, Caller, Route, View};
use crate::events;
use crate::forward::{ForwardError, Forwarder, CALLER_HEADER};
use crate::jsonrpc::{self, ErrorCode};
use crate::names;
use crate::plugin::CallContext;
use crate::presence::{self, Answer};
use crate::registry::CommandType;
use crate::state::{AgentState, Link, PresenceTimers};

/// The application header of a reply naming the node that answered (callers may ignore it).
pub const NODE_HEADER: &str = "x-clacks-node";

/// How a service run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The caller's shutdown completed: stop for good.
    Shutdown,
    /// A `shutdown` command stopped this agent.
    Commanded,
}

/// Serves the agent's commands on `conn` until `shutdown` completes or a `shutdown` call
/// stops it; then it says `NodeLeave` and deletes its private queues.
///
/// # Errors
/// When the queues cannot be declared or the connection fails (the caller may reconnect
/// and serve again: the node announces itself anew).
pub async fn serve(
    conn: Connection,
    state: Arc<AgentState>,
    timers: PresenceTimers,
    shutdown: impl Future<Output = ()>,
) -> Result<Ended, ClientError> {
    let domain = state.config.domain.clone();
    let node = state.config.node.clone();
    let admin = conn.session_unique().await?;
    admin
        .declare_exchange(ExchangeDeclare {
            exchange: Some(names::events_exchange(&domain).to_string()),
            r#type: Some("xml".into()),
            ..ExchangeDeclare::default()
        })
        .await?;
    let mut workers = tokio::task::JoinSet::new();
    let (forwarder, replies) = Forwarder::start(&conn).await?;
    workers.spawn(replies);
    let publisher = conn.session_unique().await?;
    state.set_link(Some(Link {
        publisher: publisher.clone(),
        forwarder: Arc::new(forwarder),
    }));
    let mut private = Vec::new();
    for target in state.targets() {
        let shared = names::shared_queue(&domain, &target);
        let own = names::private_queue(&domain, &target, &node);
        for (queue, private) in [(shared, false), (own.clone(), true)] {
            // A private queue outlives a lost connection long enough for a reconnect, and
            // goes with its node when that never comes (a killed agent leaves no queue).
            let arguments = private.then(|| {
                let mut args = FieldTable::new();
                let secs = timers.node_timeout.as_secs().max(1);
                args.insert(
                    "qpid.auto_delete_timeout",
                    i64::try_from(secs).unwrap_or(i64::MAX),
                );
                args
            });
            admin
                .declare_queue(QueueDeclare {
                    queue: Some(queue.clone()),
                    auto_delete: private,
                    arguments,
                    ..QueueDeclare::default()
                })
                .await?;
            let session = conn.session_unique().await?;
            let sub = session
                .subscribe(&queue, SubscribeOptions::default())
                .await?;
            workers.spawn(work(session, sub, queue, state.clone()));
        }
        private.push(own);
    }
    let events_session = conn.session_unique().await?;
    let heard = listen_events(&events_session, &domain, presence::PRESENCE_QUERY).await?;
    workers.spawn(presence_loop(events_session, heard, state.clone(), timers));
    publish(&state, &events::node_announce(&node)).await;
    tracing::info!(%domain, %node, "agent serving");
    let ended = tokio::select! {
        () = shutdown => Ok(Ended::Shutdown),
        () = state.stopped() => Ok(Ended::Commanded),
        err = conn.closed() => Err(err),
        // Every worker runs until its connection fails.
        Some(_) = workers.join_next() => {
            Err(ClientError::Protocol("a command queue's consumer ended".into()))
        }
    };
    workers.abort_all();
    if ended.is_ok() {
        publish(&state, &events::node_leave(&node)).await;
        for queue in private {
            let delete = QueueDelete {
                queue: Some(queue),
                ..QueueDelete::default()
            };
            // The broker may already be gone; the queue goes with it then.
            let _ = admin.delete_queue(delete).await;
        }
    }
    state.set_link(None);
    ended
}

/// Subscribes `session` to the events of `domain` that `xquery` selects, as Clacks
/// subscribers do: a private `event-listener-<uuid>` queue bound to the domain's exchange.
///
/// # Errors
/// When the broker refuses the queue, the binding (a bad query) or the subscription.
pub async fn listen_events(
    session: &Session,
    domain: &str,
    xquery: &str,
) -> Result<Subscription, ClientError> {
    let queue = format!("event-listener-{}", random_uuid());
    session.declare_private_queue(&queue).await?;
    let mut arguments = FieldTable::new();
    arguments.insert("xquery", xquery);
    session
        .bind(ExchangeBind {
            queue: Some(queue.clone()),
            exchange: Some(names::events_exchange(domain).to_string()),
            binding_key: Some(names::EVENT_KEY.into()),
            arguments: Some(arguments),
        })
        .await?;
    session.subscribe(&queue, SubscribeOptions::default()).await
}

/// Validates an event this node sends and publishes it on the domain's exchange.
async fn publish(state: &AgentState, xml: &str) {
    if let Err(e) = state.publish_event(xml).await {
        tracing::warn!("event not published: {e}");
    }
}

/// Hears presence events, answers announcements, reports this node's status and drops
/// nodes that went silent.
async fn presence_loop(
    // Held so that the subscription's session lives as long as the loop.
    _session: Session,
    mut heard: Subscription,
    state: Arc<AgentState>,
    timers: PresenceTimers,
) {
    let node = state.config.node.clone();
    let mut tick = tokio::time::interval(timers.status_interval);
    loop {
        tokio::select! {
            d = heard.next() => {
                let d = match d {
                    Ok(Some(d)) => d,
                    Ok(None) => return,
                    Err(e) => return tracing::warn!("event subscription failed: {e}"),
                };
                let _ = heard.accept(&d).await;
                let text = String::from_utf8_lossy(&d.body);
                match state.schemas.validate(&text) {
                    Ok(event) => {
                        let now = std::time::Instant::now();
                        match presence::apply(&state, &event, now) {
                            Answer::Capabilities => {
                                publish(&state, &presence::capabilities_event(&state)).await;
                            }
                            Answer::Announce => {
                                publish(&state, &events::node_announce(&node)).await;
                            }
                            Answer::Nothing => {}
                        }
                    }
                    Err(e) => tracing::debug!("ignoring an invalid event: {e}"),
                }
            }
            _ = tick.tick() => {
                let status = events::node_status(&node, presence::load_average(), 0.0, 1, None);
                publish(&state, &status).await;
                for gone in presence::sweep(&state, std::time::Instant::now(), timers.node_timeout) {
                    tracing::info!(node = %gone, "node timed out");
                }
            }
        }
    }
}

/// Takes the calls of one queue, one after the other.
async fn work(session: Session, mut sub: Subscription, queue: String, state: Arc<AgentState>) {
    loop {
        match sub.next().await {
            Ok(Some(d)) => handle(&session, &sub, &queue, &state, d).await,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%queue, "command queue failed: {e}");
                return;
            }
        }
    }
}

/// One call: decode, plan, check, run; accept the request, then reply.
async fn handle(
    session: &Session,
    sub: &Subscription,
    queue: &str,
    state: &Arc<AgentState>,
    d: Delivery,
) {
    let props = &d.message_properties;
    let correlation = props.correlation_id.clone();
    let reply_to = props
        .reply_to
        .as_ref()
        .and_then(|r| r.routing_key.clone())
        .filter(|r| !r.is_empty());
    let stamped = props
        .user_id
        .as_ref()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .filter(|u| !u.is_empty());
    let claimed = props
        .application_headers
        .as_ref()
        .and_then(|h| h.get(CALLER_HEADER))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let (id, outcome) = match stamped {
        None => (
            Value::Null,
            Err(state
                .errors
                .report(ErrorCode::AMQP_MESSAGE_WITHOUT_UID, queue, None)),
        ),
        Some(stamped) => {
            let forwarded = match claimed {
                Some(user) if state.config.trusted_agents.contains(&stamped) => Some(user),
                Some(user) => {
                    tracing::warn!(
                        %stamped, claimed = %user,
                        "caller header from an identity that is not a trusted agent; ignored"
                    );
                    None
                }
                None => None,
            };
            let caller = match &forwarded {
                Some(user) => Caller::Forwarded(user),
                None => Caller::User(&stamped),
            };
            match jsonrpc::parse_request(&d.body) {
                Err(bad) => {
                    state.count_call("", false);
                    (
                        bad.id.clone().unwrap_or(Value::Null),
                        Err(state.errors.report(bad.code, &bad.text, caller.user())),
                    )
                }
                Ok(request) => {
                    let outcome = call(state, caller, queue, &request).await;
                    state.count_call(&request.method, outcome.is_ok());
                    (request.id, outcome)
                }
            }
        }
    };
    let Some(reply_to) = reply_to else {
        // Nobody to tell: a failed request is rejected, a successful one just accepted.
        if let Err(e) = &outcome {
            tracing::warn!(%queue, "request without reply-to failed: {e}");
            let ids = SequenceSet::from_range(d.id, d.id);
            let _ = session
                .reject(ids, MessageRejectCode::UNROUTABLE, "bad request")
                .await;
        } else {
            let _ = sub.accept(&d).await;
        }
        return state.stop_if_asked();
    };
    // Accepted before the reply goes out, as the original agent does.
    let _ = sub.accept(&d).await;
    let body = jsonrpc::response(&id, outcome);
    let mut reply = state
        .config
        .signed(Message::new(body).with_routing_key(reply_to.clone()));
    let mut headers = FieldTable::new();
    headers.insert(NODE_HEADER, state.config.node.as_str());
    reply.message_properties.application_headers = Some(headers);
    // Callers that match replies by correlation id (the 0-9-1 convention) find theirs.
    reply.message_properties.correlation_id = correlation;
    if let Err(e) = session.send("", reply).await {
        tracing::warn!(reply_to = %reply_to, "reply not delivered: {e}");
    }
    state.stop_if_asked();
}

/// Plans `request` for `caller` as this node sees the domain now.
fn plan_call(
    state: &AgentState,
    caller: Caller<'_>,
    queue: &str,
    request: &jsonrpc::Request,
) -> Result<dispatch::Plan, dispatch::Refusal> {
    let capabilities = state.capabilities();
    let loads = state.loads();
    let view = View {
        domain: &state.config.domain,
        node: &state.config.node,
        local: &state.local,
        capabilities: &capabilities,
        loads: &loads,
    };
    dispatch::plan(view, caller, queue, request)
}

/// Plans, authorises and runs a call: here, on another node, or on each provider in turn.
pub(crate) async fn call(
    state: &Arc<AgentState>,
    caller: Caller<'_>,
    queue: &str,
    request: &jsonrpc::Request,
) -> Result<Value, String> {
    let user = caller.user();
    let plan = plan_call(state, caller, queue, request)
        .map_err(|(code, subject)| state.errors.report(code, &subject, user))?;
    if let (Some(q), Some(user)) = (&plan.acl, user) {
        if !state.allows(user, &q.topic, &q.options) {
            tracing::warn!(%user, topic = %q.topic, "agent ACL denied the call");
            return Err(state
                .errors
                .report(ErrorCode::PERMISSION_EXEC, &q.topic, Some(user)));
        }
    }
    match plan.route {
        Route::Local(args) => {
            let forwarded = matches!(caller, Caller::Forwarded(_));
            run_local(state, user, forwarded, &request.method, args).await
        }
        Route::Forward { nodes } => {
            // A provider whose private queue this broker does not have (it sits behind a
            // federation link, say) is passed over for the next one.
            for node in &nodes {
                match state
                    .ask_node(node, &plan.target, user.unwrap_or_default(), request)
                    .await
                {
                    Err(ForwardError::Unreachable(_)) => {
                        tracing::debug!(%node, method = %request.method, "provider not reachable from here");
                    }
                    outcome => return forwarded(state, user, outcome),
                }
            }
            Err(state.errors.report(
                ErrorCode::COMMAND_FAILED,
                &format!(
                    "no provider of {} can be reached from this broker",
                    request.method
                ),
                user,
            ))
        }
        Route::Walk { kind, nodes } => {
            let mut gathered = serde_json::Map::new();
            for node in nodes {
                let outcome = if node == state.config.node {
                    // The step this node takes is planned as a forwarded one: here only.
                    let caller = Caller::Forwarded(user.unwrap_or_default());
                    match plan_call(state, caller, queue, request) {
                        Ok(dispatch::Plan {
                            route: Route::Local(args),
                            ..
                        }) => run_local(state, user, false, &request.method, args).await,
                        _ => continue,
                    }
                } else {
                    let caller = user.unwrap_or_default();
                    let outcome = state.ask_node(&node, &plan.target, caller, request).await;
                    forwarded(state, user, outcome)
                };
                match (kind, outcome) {
                    (CommandType::FirstResult, Ok(v)) => return Ok(v),
                    (_, Ok(v)) => {
                        gathered.insert(node, v);
                    }
                    (_, Err(e)) => {
                        tracing::debug!(%node, method = %request.method, "walk step failed: {e}")
                    }
                }
            }
            Ok(match kind {
                CommandType::FirstResult => Value::Null,
                _ => Value::Object(gathered),
            })
        }
    }
}

/// Runs a command of this node's plugins.
async fn run_local(
    state: &Arc<AgentState>,
    user: Option<&str>,
    forwarded: bool,
    method: &str,
    args: Vec<Value>,
) -> Result<Value, String> {
    let Some(plugin) = state.plugins.get(method) else {
        return Err(state
            .errors
            .report(ErrorCode::COMMAND_NOT_DEFINED, method, user));
    };
    let ctx = CallContext {
        user: user.map(str::to_string),
        state: state.clone(),
        forwarded,
    };
    plugin.call(&ctx, method, args).await
}

/// A forwarded call's outcome for the caller: the provider's own error text unchanged,
/// other failures as this node's error records.
fn forwarded(
    state: &AgentState,
    user: Option<&str>,
    outcome: Result<Value, ForwardError>,
) -> Result<Value, String> {
    match outcome {
        Ok(v) => Ok(v),
        Err(ForwardError::Remote(text)) => Err(text),
        Err(e) => Err(state
            .errors
            .report(ErrorCode::COMMAND_FAILED, &e.to_string(), user)),
    }
}

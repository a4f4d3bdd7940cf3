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

use crate::events::{self, SchemaSet};
use crate::presence::{self, Answer};
use crate::state::PresenceTimers;

use crate::dispatch::{self, Caller, Route, View};
use crate::jsonrpc::{self, ErrorCode};
use crate::names;
use crate::plugin::CallContext;
use crate::state::AgentState;

/// Serves the agent's commands on `conn` until `shutdown` completes; then its private
/// queues are deleted.
///
/// # Errors
/// When the queues cannot be declared or the connection fails.
pub async fn serve(
    conn: Connection,
    state: Arc<AgentState>,
    timers: PresenceTimers,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
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
    let mut private = Vec::new();
    let mut workers = tokio::task::JoinSet::new();
    for target in state.targets() {
        let shared = names::shared_queue(&domain, &target);
        let own = names::private_queue(&domain, &target, &node);
        for queue in [shared, own.clone()] {
            admin
                .declare_queue(QueueDeclare {
                    queue: Some(queue.clone()),
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
    let schemas =
        Arc::new(SchemaSet::load(None).map_err(|e| ClientError::Protocol(e.to_string()))?);
    let events_session = conn.session_unique().await?;
    let listener = format!("event-listener-{}", random_uuid());
    events_session
        .declare_queue(QueueDeclare {
            queue: Some(listener.clone()),
            exclusive: true,
            auto_delete: true,
            ..QueueDeclare::default()
        })
        .await?;
    let mut args = FieldTable::new();
    args.insert("xquery", presence::PRESENCE_QUERY);
    events_session
        .bind(ExchangeBind {
            queue: Some(listener.clone()),
            exchange: Some(domain.clone()),
            binding_key: Some(names::EVENT_KEY.into()),
            arguments: Some(args),
        })
        .await?;
    let heard = events_session
        .subscribe(&listener, SubscribeOptions::default())
        .await?;
    let publisher = conn.session_unique().await?;
    workers.spawn(presence_loop(
        events_session,
        heard,
        publisher.clone(),
        schemas.clone(),
        state.clone(),
        timers,
    ));
    publish(&publisher, &schemas, &domain, &events::node_announce(&node)).await;
    tracing::info!(%domain, %node, "agent serving");
    shutdown.await;
    workers.abort_all();
    publish(&publisher, &schemas, &domain, &events::node_leave(&node)).await;
    for queue in private {
        let delete = QueueDelete {
            queue: Some(queue),
            ..QueueDelete::default()
        };
        // The broker may already be gone; the queue goes with it then.
        let _ = admin.delete_queue(delete).await;
    }
    Ok(())
}

/// Validates an event this node sends and publishes it on the domain's exchange.
async fn publish(session: &Session, schemas: &SchemaSet, domain: &str, xml: &str) {
    match schemas.validate(xml) {
        Ok(event) => {
            let message = Message::new(event.wire_text()).with_routing_key(names::EVENT_KEY);
            if let Err(e) = session.send(names::events_exchange(domain), message).await {
                tracing::warn!(event = %event.name, "event not published: {e}");
            }
        }
        Err(e) => tracing::error!("refusing to send an invalid event: {e}"),
    }
}

/// Hears presence events, answers announcements, reports this node's status and drops
/// nodes that went silent.
async fn presence_loop(
    // Held so that the subscription's session lives as long as the loop.
    _session: Session,
    mut heard: Subscription,
    publisher: Session,
    schemas: Arc<SchemaSet>,
    state: Arc<AgentState>,
    timers: PresenceTimers,
) {
    let domain = state.config.domain.clone();
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
                match schemas.validate(&text) {
                    Ok(event) => {
                        let now = std::time::Instant::now();
                        if presence::apply(&state, &event, now) == Answer::Capabilities {
                            let caps = presence::capabilities_event(&state);
                            publish(&publisher, &schemas, &domain, &caps).await;
                        }
                    }
                    Err(e) => tracing::debug!("ignoring an invalid event: {e}"),
                }
            }
            _ = tick.tick() => {
                let status = events::node_status(&node, presence::load_average(), 0.0, 1, None);
                publish(&publisher, &schemas, &domain, &status).await;
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
    let reply_to = d
        .message_properties
        .reply_to
        .as_ref()
        .and_then(|r| r.routing_key.clone())
        .filter(|r| !r.is_empty());
    let user = d
        .message_properties
        .user_id
        .as_ref()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .filter(|u| !u.is_empty());
    let (id, outcome) = match user {
        None => (
            Value::Null,
            Err(state
                .errors
                .report(ErrorCode::AMQP_MESSAGE_WITHOUT_UID, queue, None)),
        ),
        Some(user) => match jsonrpc::parse_request(&d.body) {
            Err(bad) => (
                bad.id.clone().unwrap_or(Value::Null),
                Err(state.errors.report(bad.code, &bad.text, Some(&user))),
            ),
            Ok(request) => {
                let outcome = call(state, &user, queue, &request).await;
                (request.id, outcome)
            }
        },
    };
    let Some(reply_to) = reply_to else {
        // Nobody to tell: a failed request is rejected, a successful one just accepted.
        if let Err(e) = &outcome {
            tracing::warn!(%queue, "request without reply-to failed: {e}");
            let ids = SequenceSet::from_range(d.id, d.id);
            let _ = session
                .reject(ids, MessageRejectCode::UNROUTABLE, "bad request")
                .await;
            return;
        }
        let _ = sub.accept(&d).await;
        return;
    };
    // Accepted before the reply goes out, as the original agent does.
    let _ = sub.accept(&d).await;
    let body = jsonrpc::response(&id, outcome);
    let reply = Message::new(body).with_routing_key(reply_to.clone());
    if let Err(e) = session.send("", reply).await {
        tracing::warn!(reply_to = %reply_to, "reply not delivered: {e}");
    }
}

/// Plans, authorises and runs a call.
async fn call(
    state: &Arc<AgentState>,
    user: &str,
    queue: &str,
    request: &jsonrpc::Request,
) -> Result<Value, String> {
    let plan = {
        let capabilities = state.capabilities();
        let loads = state.loads();
        let view = View {
            domain: &state.config.domain,
            node: &state.config.node,
            local: &state.local,
            capabilities: &capabilities,
            loads: &loads,
        };
        dispatch::plan(view, Caller::User(user), queue, request)
    };
    let plan = plan.map_err(|(code, subject)| state.errors.report(code, &subject, Some(user)))?;
    if let Some(q) = &plan.acl {
        let allowed = state
            .acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(user, &q.topic, "x", &q.options);
        if !allowed {
            tracing::warn!(%user, topic = %q.topic, "agent ACL denied the call");
            return Err(state
                .errors
                .report(ErrorCode::PERMISSION_EXEC, &q.topic, Some(user)));
        }
    }
    match plan.route {
        Route::Local(args) => {
            let Some(plugin) = state.plugins.get(&request.method) else {
                return Err(state.errors.report(
                    ErrorCode::COMMAND_NOT_DEFINED,
                    &request.method,
                    Some(user),
                ));
            };
            let ctx = CallContext {
                user: Some(user.to_string()),
                state: state.clone(),
            };
            plugin.call(&ctx, &request.method, args).await
        }
        Route::Forward { .. } | Route::Walk { .. } => Err(state.errors.report(
            ErrorCode::COMMAND_FAILED,
            "calls to other nodes are not available yet",
            Some(user),
        )),
    }
}

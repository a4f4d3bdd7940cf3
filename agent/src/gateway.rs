//! Calls from outside the bus (the HTTP gateway at `/rpc`): the same plan, ACL, error
//! records and forwarding as a request on a command queue, run as the gateway's logged-in
//! user. The original gateway's rules: wait up to 5 s for the registry, and let
//! `needsQueue` commands act on this node.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::dispatch::Caller;
use crate::jsonrpc::{ErrorCode, Request};
use crate::names;
use crate::service;
use crate::state::AgentState;

/// How long a call waits for the registry to have heard any node's commands.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// How a gateway call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The command's result or its error text, as a queue caller would get them.
    Answered(Result<Value, String>),
    /// No node provides the method (the gateway answers this one with HTTP 500).
    NoSuchMethod,
}

/// Runs `request` as `user`.
pub async fn call_as(state: &Arc<AgentState>, user: &str, request: &Request) -> Outcome {
    let outcome = answer(state, user, request, READY_WAIT).await;
    state.count_call(&request.method, matches!(outcome, Outcome::Answered(Ok(_))));
    // A `shutdown` call asked the agent to stop: it does so now, as on the bus.
    state.stop_if_asked();
    outcome
}

/// Counts a request that did not parse, as the bus counts one.
pub fn count_unparsed(state: &AgentState) {
    state.count_call("", false);
}

async fn answer(state: &Arc<AgentState>, user: &str, request: &Request, wait: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + wait;
    while !state.capabilities().is_ready() {
        if tokio::time::Instant::now() >= deadline {
            return Outcome::Answered(Err(state.errors.report(
                ErrorCode::REGISTRY_NOT_READY,
                &request.method,
                Some(user),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let target = match state.capabilities().get(&request.method) {
        Some(cap) => state
            .local
            .get(&request.method)
            .unwrap_or(&cap.info)
            .target
            .clone(),
        None => return Outcome::NoSuchMethod,
    };
    // This node's own queue of the target: commands that take the queue act here.
    let queue = names::private_queue(&state.config.domain, &target, &state.config.node);
    Outcome::Answered(service::call(state, Caller::User(user), &queue, request).await)
}

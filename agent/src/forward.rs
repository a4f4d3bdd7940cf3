//! Calls this agent passes to other nodes: the request goes to the provider's private
//! queue with the original caller in a header, and its reply comes back on one reply queue
//! per connection, matched by request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clacks_broker::client::{random_uuid, ClientError, Connection, Session, Subscription};
use clacks_broker::wire::FieldTable;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::jsonrpc::{self, Params, Request};
use crate::state::AgentConfig;

/// The application header naming the user a forwarded call runs for. Only trusted when
/// the broker stamped the message with a configured agent identity.
pub const CALLER_HEADER: &str = "x-clacks-caller";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Sends calls to other nodes and waits for their replies.
pub struct Forwarder {
    session: Session,
    reply_queue: String,
    pending: Pending,
}

/// Why a forwarded call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The agent has no broker connection at the moment.
    #[error("the agent is not connected to its broker")]
    NotConnected,
    /// The provider's private queue does not exist on this broker.
    #[error("node {0} cannot be reached from here (its command queue is missing)")]
    Unreachable(String),
    /// No reply within the call timeout.
    #[error("node {node} did not answer within {secs} s")]
    Timeout {
        /// The provider asked.
        node: String,
        /// The timeout.
        secs: f64,
    },
    /// The connection failed on the way.
    #[error("forwarding to node {node} failed: {err}")]
    Link {
        /// The provider asked.
        node: String,
        /// What failed.
        #[source]
        err: ClientError,
    },
    /// The provider answered with an error; its text as it sent it.
    #[error("{0}")]
    Remote(String),
}

impl Forwarder {
    /// Declares this connection's reply queue and starts the task that hands replies to
    /// their waiting calls (returned, so the caller owns its lifetime).
    ///
    /// # Errors
    /// When the queue cannot be declared or subscribed.
    pub async fn start(
        conn: &Connection,
    ) -> Result<(Forwarder, impl std::future::Future<Output = ()>), ClientError> {
        let session = conn.session_unique().await?;
        let (reply_queue, replies) = session.reply_queue().await?;
        let pending = Pending::default();
        let reader = read_replies(replies, pending.clone());
        Ok((
            Forwarder {
                session,
                reply_queue,
                pending,
            },
            reader,
        ))
    }

    /// Sends `request` to `queue` (the private queue of `node`) on behalf of `caller` and
    /// waits up to the configured call timeout for the result.
    ///
    /// # Errors
    /// See [`ForwardError`].
    pub async fn call(
        &self,
        node: &str,
        queue: &str,
        caller: &str,
        request: &Request,
        config: &AgentConfig,
    ) -> Result<Value, ForwardError> {
        let timeout = config.call_timeout;
        let link = |err| ForwardError::Link {
            node: node.to_string(),
            err,
        };
        // The default exchange drops a message for a missing queue without a word, so
        // ask first rather than wait out the timeout.
        let known = self.session.query_queue(queue).await.map_err(link)?;
        if known.queue.as_deref().is_none_or(str::is_empty) {
            return Err(ForwardError::Unreachable(node.to_string()));
        }
        let id = random_uuid().to_string();
        let params = match &request.params {
            Params::Positional(list) => Value::Array(list.clone()),
            Params::Named(map) => Value::Object(map.clone()),
        };
        let mut message = jsonrpc::request_message(
            queue,
            &self.reply_queue,
            &request.method,
            &params,
            &Value::String(id.clone()),
            config.identity.as_deref(),
        );
        let mut headers = FieldTable::new();
        headers.insert(CALLER_HEADER, caller);
        message.message_properties.application_headers = Some(headers);

        let (tx, rx) = oneshot::channel();
        self.pending().insert(id.clone(), tx);
        if let Err(e) = self.session.send("", message).await {
            self.pending().remove(&id);
            return Err(link(e));
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            // The reader ended: the connection is gone.
            Ok(Err(_)) => return Err(link(ClientError::Protocol("reply queue closed".into()))),
            Err(_) => {
                self.pending().remove(&id);
                return Err(ForwardError::Timeout {
                    node: node.to_string(),
                    secs: timeout.as_secs_f64(),
                });
            }
        };
        jsonrpc::reply_outcome(&reply).map_err(|error| {
            ForwardError::Remote(match error {
                Value::String(e) => e.clone(),
                other => other.to_string(),
            })
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands each reply to the call waiting for its id; others are logged and dropped. When
/// the replies end, the calls still waiting are told at once.
async fn read_replies(mut replies: Subscription, pending: Pending) {
    loop {
        let delivery = match replies.next().await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("forwarding replies ended: {e}");
                break;
            }
        };
        let Ok(reply) = serde_json::from_slice::<Value>(&delivery.body) else {
            tracing::warn!("a forwarded call's reply is not JSON");
            continue;
        };
        let waiting = reply
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id));
        match waiting {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            // A late reply after its call timed out.
            None => tracing::debug!("a reply nobody waits for: {reply}"),
        }
    }
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

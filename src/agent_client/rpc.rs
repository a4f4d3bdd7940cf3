//! The JSON-RPC client of the Clacks agent: one connection, one private reply queue,
//! a unique id per request, and a timeout on this side.

use std::time::Duration;

use clacks_broker::client::{random_uuid, Connection, Session, Subscription};
use serde_json::{json, Value};

use super::conn::{self, Target};

/// Why a call gave no result.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The agent answered with an error: `message` is for people (with the error record's
    /// text when the agent kept one), `raw` is the reply's `error` member as it came.
    #[error("{message}")]
    Failed {
        /// The error as shown.
        message: String,
        /// The `error` member of the reply.
        raw: Value,
    },
    /// No reply within the timeout.
    #[error("no reply to {method} within {secs} s")]
    Timeout {
        /// The command called.
        method: String,
        /// The timeout in seconds.
        secs: f64,
    },
    /// The connection or the session failed, or the reply was not JSON-RPC.
    #[error(transparent)]
    Transport(#[from] anyhow::Error),
}

/// A connection to the domain's command queue.
pub struct RpcClient {
    conn: Connection,
    session: Session,
    replies: Subscription,
    reply_queue: String,
    command_queue: String,
    timeout: Duration,
    /// Written into each request's `user-id`: qpidd checks it but does not stamp it, and
    /// the agent needs it.
    user: Option<String>,
}

impl RpcClient {
    /// Connects, declares a private reply queue and subscribes to it.
    ///
    /// # Errors
    /// Connection or login failures, or a broker refusing the reply queue.
    pub async fn connect(target: &Target, timeout_secs: f64) -> anyhow::Result<RpcClient> {
        let conn = conn::open(target).await?;
        let session = conn.session_unique().await?;
        let (reply_queue, replies) = session.reply_queue().await?;
        Ok(RpcClient {
            conn,
            session,
            replies,
            reply_queue,
            command_queue: clacks_agent::names::shared_queue(&target.domain, "core"),
            timeout: Duration::from_secs_f64(timeout_secs.clamp(0.0, 1e9)),
            user: target.opts.username.clone().filter(|u| !u.is_empty()),
        })
    }

    /// Calls `method` with `params` (an array, or an object for named parameters). An error
    /// that names an error record (`<id> text`) is shown with the record's text and details,
    /// fetched with `get_error` (which uses the record up).
    ///
    /// # Errors
    /// The command's error, a timeout, or a transport failure.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        match self.call_raw(method, params).await {
            Err(RpcError::Failed { message, raw }) => {
                let message = match error_token(&raw) {
                    Some(token) => match self.call_raw("get_error", json!([token])).await {
                        Ok(record) => describe_record(&record).unwrap_or(message),
                        // The record may be gone (fetched, expired): the text still says it.
                        Err(_) => message,
                    },
                    None => message,
                };
                Err(RpcError::Failed { message, raw })
            }
            other => other,
        }
    }

    /// Calls `method` and reports an error as the agent sent it, leaving any error record
    /// for the caller to fetch.
    ///
    /// # Errors
    /// As [`RpcClient::call`].
    pub async fn call_raw(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = random_uuid().to_string();
        let message = clacks_agent::jsonrpc::request_message(
            &self.command_queue,
            &self.reply_queue,
            method,
            &params,
            &Value::String(id.clone()),
            self.user.as_deref(),
        );
        self.session
            .send("", message)
            .await
            .map_err(anyhow::Error::from)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = loop {
            let delivery = match tokio::time::timeout_at(deadline, self.replies.next()).await {
                Err(_) => {
                    return Err(RpcError::Timeout {
                        method: method.to_string(),
                        secs: self.timeout.as_secs_f64(),
                    })
                }
                Ok(Err(e)) => return Err(anyhow::Error::from(e).into()),
                Ok(Ok(None)) => return Err(anyhow::anyhow!("the reply queue closed").into()),
                Ok(Ok(Some(d))) => d,
            };
            let Ok(reply) = serde_json::from_slice::<Value>(&delivery.body) else {
                return Err(anyhow::anyhow!(
                    "the reply to {method} is not JSON: {}",
                    String::from_utf8_lossy(&delivery.body)
                )
                .into());
            };
            // A late reply to an earlier call that timed out is skipped.
            if reply.get("id") == Some(&Value::String(id.clone())) {
                break reply;
            }
        };
        clacks_agent::jsonrpc::reply_outcome(&reply).map_err(|raw| RpcError::Failed {
            message: describe_error(raw),
            raw: raw.clone(),
        })
    }

    /// Closes the connection (the reply queue goes with it).
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// The token of an error string `<token> text`.
pub fn error_token(raw: &Value) -> Option<&str> {
    raw.as_str()
        .and_then(clacks_agent::jsonrpc::error_token)
        .filter(|t| !t.is_empty())
}

/// An error member as people read it: the string, or an error object's message.
pub fn describe_error(raw: &Value) -> String {
    match raw {
        Value::String(s) => s.clone(),
        Value::Object(o) => match (o.get("message"), o.get("error")) {
            (Some(Value::String(m)), Some(Value::String(e))) if e != m => format!("{m}: {e}"),
            (Some(Value::String(m)), _) => m.clone(),
            _ => raw.to_string(),
        },
        other => other.to_string(),
    }
}

/// `text[ - detail [index], ...]` of an error record; `None` without a text.
pub fn describe_record(record: &Value) -> Option<String> {
    let text = record.get("text")?.as_str()?;
    let details: Vec<String> = record
        .get("details")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|d| match d {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => {
                        let detail = match o.get("detail") {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => d.to_string(),
                        };
                        match o.get("index") {
                            Some(Value::Null) | None => detail,
                            Some(i) => format!("{detail} [{i}]"),
                        }
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(if details.is_empty() {
        text.to_string()
    } else {
        format!("{text} - {}", details.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_read_as_text() {
        let raw = json!("<0123456789abcdef01234567> No permission");
        assert_eq!(error_token(&raw), Some("0123456789abcdef01234567"));
        assert_eq!(
            describe_error(&raw),
            "<0123456789abcdef01234567> No permission"
        );
        assert_eq!(error_token(&json!("plain")), None);
        assert_eq!(error_token(&json!("<> x")), None);
        let object = json!({"name": "JSONRPCError", "code": 100, "message": "No such method 'x'",
                            "error": "No such method 'x'"});
        assert_eq!(describe_error(&object), "No such method 'x'");
    }

    #[test]
    fn records_show_their_text_and_details() {
        assert_eq!(
            describe_record(&json!({"text": "bad", "details": null})).as_deref(),
            Some("bad")
        );
        assert_eq!(
            describe_record(&json!({"text": "bad", "details": [
                {"detail": "too long", "index": 2}, {"detail": "empty"}, "x"]}))
            .as_deref(),
            Some("bad - too long [2], empty, x")
        );
        assert_eq!(describe_record(&json!({"code": "X"})), None);
    }
}

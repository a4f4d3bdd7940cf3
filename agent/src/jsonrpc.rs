//! The JSON-RPC messages of the command path, as the original agent and its callers write
//! them: `{"method", "params", "id"}` in, `{"result", "id", "error"}` out, and errors as
//! `"<token> text"` strings whose token names a record that `get_error` hands out once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use clacks_broker::client::Message;
use clacks_broker::wire::ReplyTo;
use serde::Serialize;
use serde_json::{Map, Value};

/// The arguments of a call: positional or by name, never both.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `"params": [...]`.
    Positional(Vec<Value>),
    /// `"params": {...}`.
    Named(Map<String, Value>),
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The command name.
    pub method: String,
    /// Its arguments.
    pub params: Params,
    /// Echoed unchanged in the reply (Python callers always send `"jsonrpc"`).
    pub id: Value,
}

/// The symbolic codes of errors the agent raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[allow(non_camel_case_types)]
pub enum ErrorCode {
    /// A call without a user.
    COMMAND_NO_USERNAME,
    /// An unknown method.
    COMMAND_NOT_DEFINED,
    /// The ACL denies the call.
    PERMISSION_EXEC,
    /// A method that arrived on a queue not of its target.
    COMMAND_INVALID_QUEUE,
    /// A request message without `user-id`.
    AMQP_MESSAGE_WITHOUT_UID,
    /// `params` neither a list nor an object.
    AMQP_BAD_PARAMETERS,
    /// A body that is not a JSON request (the original's `BadServiceRequest`).
    BAD_SERVICE_REQUEST,
    /// The arguments do not fit the method's signature.
    COMMAND_BAD_ARGUMENTS,
    /// The command ran and failed.
    COMMAND_FAILED,
    /// No such error record, or some other missing thing.
    NO_SUCH_RESOURCE,
    /// The ACL denies sending this event.
    PERMISSION_EVENT,
    /// An event that breaks its schema or the envelope.
    EVENT_INVALID,
    /// No node's commands were heard in time (a call through the HTTP gateway waits 5 s).
    REGISTRY_NOT_READY,
}

impl ErrorCode {
    /// The English text of the error.
    pub fn describe(self, subject: &str) -> String {
        match self {
            ErrorCode::COMMAND_NO_USERNAME => format!("call of {subject} without a user"),
            ErrorCode::COMMAND_NOT_DEFINED => format!("method {subject} is not defined"),
            ErrorCode::PERMISSION_EXEC => format!("No permission to execute method '{subject}'"),
            ErrorCode::COMMAND_INVALID_QUEUE => {
                format!("method {subject} arrived on a queue that is not its target queue")
            }
            ErrorCode::AMQP_MESSAGE_WITHOUT_UID => {
                format!("request without a user-id: {subject}")
            }
            ErrorCode::AMQP_BAD_PARAMETERS => {
                format!("params of {subject} must be a list or an object")
            }
            ErrorCode::BAD_SERVICE_REQUEST => format!("bad service request: {subject}"),
            ErrorCode::COMMAND_BAD_ARGUMENTS => format!("bad arguments: {subject}"),
            ErrorCode::COMMAND_FAILED => subject.to_string(),
            ErrorCode::NO_SUCH_RESOURCE => format!("no such resource: {subject}"),
            ErrorCode::PERMISSION_EVENT => {
                format!("sending the event '{subject}' is not permitted")
            }
            ErrorCode::EVENT_INVALID => format!("invalid event: {subject}"),
            ErrorCode::REGISTRY_NOT_READY => {
                format!("the command registry is not ready for {subject}")
            }
        }
    }
}

/// Why a request body could not be taken as a request; the text is what the reply's
/// `error` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {text}")]
pub struct BadRequest {
    /// The symbolic code.
    pub code: ErrorCode,
    /// What to tell the caller.
    pub text: String,
    /// The request id, when the body got that far.
    pub id: Option<Value>,
}

/// Reads a request body.
///
/// # Errors
/// Not JSON, not an object, a missing `method`/`params`/`id`, or `params` of another type.
pub fn parse_request(body: &[u8]) -> Result<Request, BadRequest> {
    let raw = String::from_utf8_lossy(body);
    let bad = |code, text: String, id| BadRequest { code, text, id };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            ErrorCode::BAD_SERVICE_REQUEST,
            format!("{e}: {}", shorten(&raw)),
            None,
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(bad(ErrorCode::BAD_SERVICE_REQUEST, shorten(&raw), None));
    };
    let id = object.remove("id");
    let (Some(Value::String(method)), Some(params), Some(id)) =
        (object.remove("method"), object.remove("params"), id.clone())
    else {
        return Err(bad(ErrorCode::BAD_SERVICE_REQUEST, shorten(&raw), id));
    };
    let params = match params {
        Value::Array(list) => Params::Positional(list),
        Value::Object(map) => Params::Named(map),
        _ => {
            return Err(bad(
                ErrorCode::AMQP_BAD_PARAMETERS,
                ErrorCode::AMQP_BAD_PARAMETERS.describe(&method),
                Some(id),
            ))
        }
    };
    Ok(Request { method, params, id })
}

/// A body quoted in an error, cut to a readable length.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// The reply body: all three members, always.
pub fn response(id: &Value, outcome: Result<Value, String>) -> Vec<u8> {
    let (result, error) = match outcome {
        Ok(v) => (v, Value::Null),
        Err(e) => (Value::Null, Value::String(e)),
    };
    let mut object = Map::new();
    object.insert("result".into(), result);
    object.insert("id".into(), id.clone());
    object.insert("error".into(), error);
    // A map of JSON values always serializes.
    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
}

/// One error the agent reported, kept until `get_error` fetches it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRecord {
    /// The token in the error string.
    #[serde(rename = "_id")]
    pub id: String,
    /// The symbolic code.
    pub code: ErrorCode,
    /// What it concerned (method or queue).
    pub topic: String,
    /// The final text.
    pub text: String,
    /// Placeholder values.
    pub kwargs: Map<String, Value>,
    /// More detail, if any.
    pub details: Option<Vec<Value>>,
    /// Seconds since the epoch.
    pub timestamp: u64,
    /// Who made the call.
    pub user: Option<String>,
}

/// Error records by token, bounded so that a caller who never asks cannot fill memory.
#[derive(Debug, Default)]
pub struct ErrorRegistry {
    records: Mutex<(
        HashMap<String, ErrorRecord>,
        std::collections::VecDeque<String>,
    )>,
}

/// Records kept at most; the oldest go first.
const MAX_RECORDS: usize = 10_000;

impl ErrorRegistry {
    /// Keeps a record of an error and returns the `"<token> text"` string for the reply.
    pub fn report(&self, code: ErrorCode, topic: &str, user: Option<&str>) -> String {
        let text = code.describe(topic);
        let id = token();
        let record = ErrorRecord {
            id: id.clone(),
            code,
            topic: topic.to_string(),
            text: text.clone(),
            kwargs: Map::new(),
            details: None,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            user: user.map(str::to_string),
        };
        let mut guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let (records, order) = &mut *guard;
        if records.len() >= MAX_RECORDS {
            if let Some(oldest) = order.pop_front() {
                records.remove(&oldest);
            }
        }
        records.insert(id.clone(), record);
        order.push_back(id.clone());
        format!("<{id}> {text}")
    }

    /// Hands out a record once (`get_error`): it is gone afterwards.
    pub fn take(&self, id: &str) -> Option<ErrorRecord> {
        let mut guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let (records, order) = &mut *guard;
        let record = records.remove(id)?;
        order.retain(|o| o != id);
        Some(record)
    }
}

/// A 24-hex-digit token, like the original's record ids.
fn token() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: a clock-based token is still unique enough for a lookup key.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_be_bytes()[4..]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request message for `queue` on the default exchange: `{"method","params","id"}`, with
/// `reply-to` naming `reply_queue` and, when known, the sender's `user-id` (qpidd checks it
/// but never stamps it).
pub fn request_message(
    queue: &str,
    reply_queue: &str,
    method: &str,
    params: &Value,
    id: &Value,
    user: Option<&str>,
) -> Message {
    let body = serde_json::json!({"method": method, "params": params, "id": id});
    let mut message = Message::new(body.to_string()).with_routing_key(queue);
    message.message_properties.reply_to = Some(ReplyTo {
        exchange: None,
        routing_key: Some(reply_queue.to_string()),
    });
    message.message_properties.user_id = user.map(|u| u.as_bytes().to_vec().into());
    message
}

/// What a reply says: its result, or its (non-null) error member.
pub fn reply_outcome(reply: &Value) -> Result<Value, &Value> {
    match reply.get("error") {
        None | Some(Value::Null) => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
        Some(error) => Err(error),
    }
}

/// The token of an error string (`"<token> text"`), as callers find it.
pub fn error_token(error: &str) -> Option<&str> {
    error.strip_prefix('<')?.split_once('>').map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_as_python_callers_send_them() {
        let r = parse_request(br#"{"method": "getMethods", "params": [], "id": "jsonrpc"}"#)
            .expect("request");
        assert_eq!(r.method, "getMethods");
        assert_eq!(r.params, Params::Positional(vec![]));
        assert_eq!(r.id, json!("jsonrpc"));
        let r = parse_request(br#"{"method": "f", "params": {"a": 1}, "id": 7}"#).expect("named");
        assert!(matches!(r.params, Params::Named(ref m) if m["a"] == json!(1)));
        assert_eq!(r.id, json!(7));
    }

    #[test]
    fn bad_requests_say_why() {
        let e = parse_request(b"{not json").expect_err("bad json");
        assert_eq!(e.code, ErrorCode::BAD_SERVICE_REQUEST);
        assert!(e.id.is_none());
        let e = parse_request(br#"{"method": "f", "id": 1}"#).expect_err("no params");
        assert_eq!(e.code, ErrorCode::BAD_SERVICE_REQUEST);
        assert_eq!(e.id, Some(json!(1)));
        assert!(e.text.contains(r#""method": "f""#), "{}", e.text);
        let e = parse_request(br#"{"method": "f", "params": 3, "id": 1}"#).expect_err("params");
        assert_eq!(e.code, ErrorCode::AMQP_BAD_PARAMETERS);
        assert!(parse_request(b"[1, 2]").is_err());
        assert!(parse_request(br#"{"method": 5, "params": [], "id": 1}"#).is_err());
        assert!(parse_request(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn responses_carry_all_three_members() {
        let ok: Value =
            serde_json::from_slice(&response(&json!("jsonrpc"), Ok(json!([1])))).expect("json");
        assert_eq!(ok, json!({"result": [1], "id": "jsonrpc", "error": null}));
        let err: Value =
            serde_json::from_slice(&response(&json!(3), Err("<abc> no".into()))).expect("json");
        assert_eq!(err, json!({"result": null, "id": 3, "error": "<abc> no"}));
    }

    #[test]
    fn error_records_are_handed_out_once() {
        let errors = ErrorRegistry::default();
        let text = errors.report(
            ErrorCode::PERMISSION_EXEC,
            "org.clacks.command.core.shutdown",
            Some("bob"),
        );
        assert!(
            text.ends_with("No permission to execute method 'org.clacks.command.core.shutdown'"),
            "{text}"
        );
        let id = error_token(&text).expect("token").to_string();
        assert_eq!(id.len(), 24);
        let record = errors.take(&id).expect("record");
        assert_eq!(record.code, ErrorCode::PERMISSION_EXEC);
        assert_eq!(record.user.as_deref(), Some("bob"));
        assert!(errors.take(&id).is_none(), "a record is handed out once");
        assert_eq!(error_token("plain text"), None);
    }
}

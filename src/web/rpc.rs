//! The Clacks gateway at `/rpc`, as the original agent's: JSON-RPC over HTTP POST,
//! `login(user, password)` checked as an AMQP PLAIN login (failures delayed alike), a
//! `ClacksRPC` session cookie, then calls run as that user through the agent in this
//! process, and `logout`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clacks_agent::gateway::{self, Outcome};
use clacks_agent::jsonrpc::{self, Params, Request};
use clacks_broker::auth::{Claim, PeerInfo};
use serde_json::{json, Value};

use super::sessions::{self, COOKIE};
use super::{PeerAddr, Web};

/// `OPTIONS /rpc`: only POST is served.
pub(super) async fn options() -> impl IntoResponse {
    (StatusCode::OK, [(header::ALLOW, "POST, OPTIONS")])
}

/// `POST /rpc`.
pub(super) async fn rpc(
    State(web): State<Arc<Web>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = cross_site(&headers) {
        return refusal;
    }
    let request = match jsonrpc::parse_request(&body) {
        Ok(r) => r,
        Err(bad) => {
            if let Some(agent) = &web.agent {
                gateway::count_unparsed(agent);
            }
            let id = bad.id.unwrap_or(Value::Null);
            return reply(StatusCode::BAD_REQUEST, &id, Err(Value::String(bad.text)));
        }
    };
    let id = request.id.clone();
    if request.method.starts_with('_') {
        let why = format!("method {} is private", request.method);
        return reply(StatusCode::FORBIDDEN, &id, Err(Value::String(why)));
    }
    if request.method == "login" {
        return login(&web, peer, &request).await;
    }
    let Some((cookie, user)) = session(&web, &headers) else {
        let why = "not logged in (call login first)".to_string();
        return reply(StatusCode::UNAUTHORIZED, &id, Err(Value::String(why)));
    };
    if request.method == "logout" {
        web.sessions.end(&cookie);
        let mut r = reply(StatusCode::OK, &id, Ok(Value::Bool(true)));
        set_cookie(&mut r, &format!("{COOKIE}=; Path=/; HttpOnly; Max-Age=0"));
        return r;
    }
    let Some(agent) = &web.agent else {
        let why = "no Clacks agent runs in this broker".to_string();
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &id,
            Err(Value::String(why)),
        );
    };
    match gateway::call_as(agent, &user, &request).await {
        Outcome::Answered(outcome) => reply(StatusCode::OK, &id, outcome.map_err(Value::String)),
        Outcome::NoSuchMethod => {
            // The original gateway's shape for an unknown method.
            let message = format!("No such method '{}'", request.method);
            let error = json!({
                "name": "JSONRPCError",
                "code": 100,
                "message": message,
                "error": message,
            });
            reply(StatusCode::INTERNAL_SERVER_ERROR, &id, Err(error))
        }
    }
}

/// `login(user, password)`: a session cookie, or 401 after the failure delay.
async fn login(web: &Web, peer: SocketAddr, request: &Request) -> Response {
    let id = &request.id;
    let Some((user, password)) = credentials(&request.params) else {
        let why = "login takes a user and a password".to_string();
        return reply(StatusCode::BAD_REQUEST, id, Err(Value::String(why)));
    };
    // Password checks are dear, and AMQP logins wait for the same hashing slots: only a
    // few HTTP logins run at once, the rest are told to come back.
    let Ok(_permit) = web.logins.try_acquire() else {
        let why = "too many logins under way; try again shortly".to_string();
        return reply(StatusCode::SERVICE_UNAVAILABLE, id, Err(Value::String(why)));
    };
    let peer = PeerInfo {
        addr: Some(peer),
        local: None,
        tls: web.secure,
        transport_user: None,
    };
    let claim = Claim::Plain {
        authzid: String::new(),
        authcid: user.clone(),
        password,
    };
    // A PLAIN claim never makes an anonymous identity.
    let identity = match web.auth.decide_slowly(Ok(claim), &peer).await {
        Ok(identity) => identity,
        Err(refusal) => {
            let failures = web.auth.note_failure(&peer);
            // The name is the peer's: quoted and cut short in the log.
            let shown: String = user.chars().take(64).collect();
            tracing::warn!(peer = %peer.addr.map(|a| a.to_string()).unwrap_or_default(),
                user = ?shown, failures, "HTTP login refused: {refusal}");
            let why = "login failed".to_string();
            return reply(StatusCode::UNAUTHORIZED, id, Err(Value::String(why)));
        }
    };
    let Some(cookie) = web.sessions.start(&identity.stamp) else {
        let why = "too many sessions; try again later".to_string();
        return reply(StatusCode::SERVICE_UNAVAILABLE, id, Err(Value::String(why)));
    };
    tracing::info!(user = %identity.stamp, "HTTP login");
    let mut r = reply(StatusCode::OK, id, Ok(Value::Bool(true)));
    let secure = if web.secure { "; Secure" } else { "" };
    set_cookie(
        &mut r,
        &format!(
            "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            web.sessions.lifetime().as_secs()
        ),
    );
    r
}

/// The user and password of a login: `[user, password]` or `{user, password}`.
fn credentials(params: &Params) -> Option<(String, String)> {
    let (user, password) = match params {
        Params::Positional(list) => (list.first()?, list.get(1)?),
        Params::Named(map) => (map.get("user")?, map.get("password")?),
    };
    Some((user.as_str()?.to_string(), password.as_str()?.to_string()))
}

/// The session a request's cookies name, if one is genuine and current: its cookie
/// value and user.
pub(super) fn session(web: &Web, headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(sessions::from_header)
        .find_map(|c| web.sessions.user(c).map(|u| (c.to_string(), u)))
}

/// Refuses what a browser sends on behalf of another site: calls must be JSON (a form
/// post cannot be, and a cross-origin fetch of JSON needs a preflight the gateway does not
/// answer), and must not come from another site by the browser's own account.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        let why = "calls are JSON: send Content-Type: application/json".to_string();
        return Some(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &Value::Null,
            Err(Value::String(why)),
        ));
    }
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if !matches!(site, "same-origin" | "none") {
        let why = "calls from another site are refused".to_string();
        return Some(reply(
            StatusCode::FORBIDDEN,
            &Value::Null,
            Err(Value::String(why)),
        ));
    }
    None
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// A JSON-RPC reply: `{"result", "error", "id"}`.
fn reply(status: StatusCode, id: &Value, outcome: Result<Value, Value>) -> Response {
    let (result, error) = match outcome {
        Ok(v) => (v, Value::Null),
        Err(e) => (Value::Null, e),
    };
    let body = json!({ "result": result, "error": error, "id": id });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

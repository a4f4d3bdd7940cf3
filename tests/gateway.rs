//! The Clacks gateway at `/rpc` of `clacks serve`, driven with curl as any web front end
//! would: login, calls run as the logged-in user through the agent's ACL, `get_error`,
//! logout, and the cookies it must refuse (forged, expired, logged out); the same over
//! HTTPS with the broker's certificate and a Secure cookie; and `/status.json` for admins.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clacks_broker::client::Message;
use clacks_broker::wire::QueueDeclare;
use common::{guest_session, Binary};
use serde_json::{json, Value};

/// bob may call `getSessionUser` and `get_error`, nothing else; guest is an admin.
const ACL: &str = r#"{"acl": {"org.clacks": [{"acls": [
    {"priority": 0, "scope": "sub", "members": ["^bob$"],
     "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.(getSessionUser|get_error)$",
                  "acls": "x"}]}]}]}}"#;

fn broker(extra_http: &str) -> Binary {
    let dir = tempfile::tempdir().expect("dir");
    let acl = dir.path().join("agent.acl");
    std::fs::write(&acl, ACL).expect("acl");
    Binary::start_in(
        dir,
        &format!(
            "auth_failure_delay_ms = 50\n[http]\n{extra_http}\n[agent]\nadmins = [\"guest\"]\n\
             node = \"gw\"\nacl_file = {:?}\n[users]\nbob = \"bobpw\"\n",
            acl.display().to_string()
        ),
    )
}

/// The HTTP(S) listener's address from the start-up lines.
fn http_addr(b: &Binary, scheme: &str) -> SocketAddr {
    let prefix = format!("listening ({scheme}) on ");
    b.banner
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {scheme} listener in {:?}", b.banner))
        .trim()
        .parse()
        .expect("address")
}

/// One HTTP exchange with curl.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A curl with its own cookie jar.
struct Curl {
    base: String,
    jar: PathBuf,
    /// Sent instead of the jar's session cookie, when set.
    forced: std::cell::RefCell<Option<String>>,
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Curl {
    fn new(base: String, ca: Option<&Path>) -> Curl {
        let dir = tempfile::tempdir().expect("dir");
        Curl {
            base,
            jar: dir.path().join("cookies"),
            forced: std::cell::RefCell::new(None),
            ca: ca.map(Path::to_path_buf),
            _dir: dir,
        }
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(method, path, body, &["Content-Type: application/json"])
    }

    /// A request with these headers (none of the JSON default).
    fn request_with(&self, method: &str, path: &str, body: Option<&str>, extra: &[&str]) -> Reply {
        let headers = self._dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}"])
            .arg("-D")
            .arg(&headers)
            .arg("-c")
            .arg(&self.jar);
        match &*self.forced.borrow() {
            Some(value) => cmd.args(["-H", &format!("Cookie: ClacksRPC={value}")]),
            None => cmd.arg("-b").arg(&self.jar),
        };
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        for h in extra {
            cmd.args(["-H", h]);
        }
        if let Some(body) = body {
            cmd.args(["--data-binary", body]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("status line");
        Reply {
            status: status.trim().parse().expect("status"),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: body.to_string(),
        }
    }

    fn call(&self, method: &str, params: Value) -> Reply {
        let body = json!({ "method": method, "params": params, "id": method }).to_string();
        self.request("POST", "/rpc", Some(&body))
    }

    /// Sends `value` as the session cookie from now on.
    fn set_cookie(&self, value: &str) {
        *self.forced.borrow_mut() = Some(value.to_string());
    }

    fn cookie(&self) -> String {
        std::fs::read_to_string(&self.jar)
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split('\t').collect();
                (fields.len() == 7 && fields[5] == "ClacksRPC").then(|| fields[6].to_string())
            })
            .expect("a ClacksRPC cookie in the jar")
    }
}

#[test]
fn login_calls_as_the_user_acl_errors_and_logout() {
    let b = broker("listen = \"127.0.0.1:0\"");
    let http = Curl::new(format!("http://{}", http_addr(&b, "http")), None);

    // Nothing but login without a session.
    let r = http.call("getSessionUser", json!([]));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http.call("login", json!(["bob", "wrong"]));
    assert_eq!(r.status, 401, "a wrong password: {}", r.body);
    assert!(r.json()["result"].is_null());

    let r = http.call("login", json!(["bob", "bobpw"]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"result": true, "error": null, "id": "login"})
    );
    let set = r.headers.to_ascii_lowercase();
    assert!(
        set.contains("set-cookie: clacksrpc=") && set.contains("httponly"),
        "{}",
        r.headers
    );
    assert!(
        !set.contains("secure"),
        "Secure only over TLS: {}",
        r.headers
    );

    // The call runs as bob: the agent sees the session's user.
    let r = http.call("getSessionUser", json!([]));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], "bob", "{}", r.body);

    // The agent's ACL applies: bob may not list the nodes; the error has a record.
    let r = http.call("getNodes", json!([]));
    assert_eq!(r.status, 200, "{}", r.body);
    let error = r.json()["error"].as_str().expect("error text").to_string();
    assert!(error.contains("No permission"), "{error}");
    let token = error
        .strip_prefix('<')
        .and_then(|e| e.split_once('>'))
        .map(|(t, _)| t.to_string())
        .expect("<token> text");
    let r = http.call("get_error", json!([token]));
    let record = r.json()["result"].clone();
    assert_eq!(record["code"], "PERMISSION_EXEC", "{}", r.body);
    assert_eq!(record["user"], "bob");

    // The original gateway's answers for unknown and private methods, and other verbs.
    let r = http.call("noSuchMethod", json!([]));
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], 100, "{}", r.body);
    assert_eq!(r.json()["error"]["name"], "JSONRPCError");
    assert_eq!(http.call("_private", json!([])).status, 403);
    assert_eq!(http.request("GET", "/rpc", None).status, 405);
    let r = http.request("OPTIONS", "/rpc", None);
    assert!(
        r.headers.to_ascii_lowercase().contains("allow: post"),
        "{}",
        r.headers
    );
    let r = http.request("POST", "/rpc", Some("{not json"));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());

    // What a browser sends for another site is refused: a form post is not JSON, and a
    // cross-site fetch says where it comes from.
    let call = r#"{"method":"getSessionUser","params":[],"id":1}"#;
    let form = http.request_with("POST", "/rpc", Some(call), &["Content-Type: text/plain"]);
    assert_eq!(form.status, 415, "{}", form.body);
    let cross = http.request_with(
        "POST",
        "/rpc",
        Some(call),
        &[
            "Content-Type: application/json",
            "Sec-Fetch-Site: cross-site",
        ],
    );
    assert_eq!(cross.status, 403, "{}", cross.body);
    let same = http.request_with(
        "POST",
        "/rpc",
        Some(call),
        &[
            "Content-Type: application/json",
            "Sec-Fetch-Site: same-origin",
        ],
    );
    assert_eq!(same.json()["result"], "bob", "{}", same.body);

    // bob is no admin: the status figures are not for him.
    assert_eq!(http.request("GET", "/status.json", None).status, 403);

    // A forged cookie (the tag altered, or made up) is refused.
    let genuine = http.cookie();
    let (id, tag) = genuine.split_once('.').expect("id.tag");
    let altered = format!(
        "{id}.{}",
        tag.replace(&tag[..1], if &tag[..1] == "0" { "1" } else { "0" })
    );
    for forged in [altered.as_str(), "0123.4567", id] {
        http.set_cookie(forged);
        assert_eq!(
            http.call("getSessionUser", json!([])).status,
            401,
            "{forged}"
        );
    }
    http.set_cookie(&genuine);
    assert_eq!(http.call("getSessionUser", json!([])).status, 200);

    // Logout ends the session: the same cookie no longer works.
    let r = http.call("logout", json!([]));
    assert_eq!(r.json()["result"], true, "{}", r.body);
    http.set_cookie(&genuine);
    assert_eq!(http.call("getSessionUser", json!([])).status, 401);

    // An admin's `shutdown` stops the agent as it does on the bus: its queues go.
    let admin = Curl::new(format!("http://{}", http_addr(&b, "http")), None);
    assert_eq!(admin.call("login", json!(["guest", "guest"])).status, 200);
    let r = admin.call("shutdown", json!([]));
    assert_eq!(r.json()["result"], true, "{}", r.body);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_c, s) = guest_session(&b).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while s
            .query_queue("org.clacks.command.core.gw")
            .await
            .expect("query")
            .queue
            .is_some()
        {
            assert!(Instant::now() < deadline, "the agent did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn sessions_expire_and_https_cookies_are_secure() {
    let b = broker("listen = \"127.0.0.1:0\"\ntls = true\ncookie_lifetime_s = 1");
    let ca = b.dir.path().join("clacks-data").join("tls-cert.pem");
    let https = Curl::new(
        format!("https://localhost:{}", http_addr(&b, "https").port()),
        Some(&ca),
    );
    let r = https.call("login", json!(["guest", "guest"]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("; secure"),
        "{}",
        r.headers
    );
    let cookie = https.cookie();

    // An admin sees the status figures, with what a client just did.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_c, s) = guest_session(&b).await;
        s.declare_queue(QueueDeclare {
            queue: Some("web-q".into()),
            ..QueueDeclare::default()
        })
        .await
        .expect("declare");
        for i in 0..3 {
            s.send("", Message::new(format!("m{i}")).with_routing_key("web-q"))
                .await
                .expect("send");
        }
    });
    let r = https.request("GET", "/status.json", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let status = r.json();
    let q = status["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "web-q"))
        .unwrap_or_else(|| panic!("web-q in {status}"));
    assert_eq!(q["depth"], 3);
    assert_eq!(status["user"], "guest");
    assert!(status["connections"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));

    // The cookie outlives the session: after its lifetime the server refuses it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        https.set_cookie(&cookie);
        if https.call("getSessionUser", json!([])).status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the session never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
}

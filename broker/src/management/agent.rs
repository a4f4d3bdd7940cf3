//! The agent task: answers QMF requests (version 2 queries, methods and agent locates;
//! version 1's schema exchange), sends heartbeats, and publishes object updates to the
//! consoles that listen for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::auth::{Action, ObjectKind};
use crate::core::Message;
use crate::wire::{FieldTable, Value};

use super::codec::{
    list_body, map_body, read_map, v2_headers, v2_message, ReplyAddress, PRODUCT, VENDOR,
};
use super::events::key_word;
use super::methods::{self, MethodError, Status};
use super::objects::{now_ns, Builder, Object, View};
use super::schema::{Kind, Schema, PACKAGE};
use super::v1;
use super::{Context, Input, ManagementConfig};

/// Objects per reply message (qpidd sends the same).
const OBJECTS_PER_MESSAGE: usize = 100;
/// Requests larger than this are refused (qpidd's management buffer).
const MAX_REQUEST: usize = 65536;
/// How long after a console subscribes the first full update goes out.
const REFRESH_DELAY: Duration = Duration::from_millis(200);

/// Runs the agent until `stopped` turns true or the broker drops its side.
pub(super) async fn run(
    ctx: Context,
    config: ManagementConfig,
    mut requests: mpsc::Receiver<Input>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut agent = Agent {
        ctx,
        first_seen: HashMap::new(),
        heartbeat_interval: config.heartbeat_interval,
        log_level: config.log_level.clone(),
        log_hires: false,
        v1_ids: v1::Ids::default(),
    };
    let mut publish = tokio::time::interval(config.publish_interval);
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    let mut refresh: Option<tokio::time::Instant> = None;
    loop {
        let refresh_at = refresh;
        tokio::select! {
            input = requests.recv() => match input {
                Some(Input::Request(exchange, msg)) => agent.handle(&exchange, &msg).await,
                Some(Input::Refresh) => {
                    refresh.get_or_insert_with(|| tokio::time::Instant::now() + REFRESH_DELAY);
                }
                None => break,
            },
            () = async {
                match refresh_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                refresh = None;
                agent.publish_all();
            }
            _ = publish.tick() => agent.publish_all(),
            _ = heartbeat.tick() => agent.heartbeat(),
            _ = stopped.changed() => break,
        }
    }
}

pub(super) struct Agent {
    pub(super) ctx: Context,
    /// When each object was first seen, for `_create_ts`.
    first_seen: HashMap<String, u64>,
    heartbeat_interval: Duration,
    /// What `getLogLevel` reports (the last level set).
    pub(super) log_level: String,
    /// What `getLogHiresTimestamp` reports.
    pub(super) log_hires: bool,
    /// Version 1 object ids handed out.
    pub(super) v1_ids: v1::Ids,
}

/// Who asked, as the ACL knows them.
pub(super) struct Caller {
    pub(super) names: Vec<String>,
    /// Their connection (0: none).
    pub(super) connection: u64,
}

impl Caller {
    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

impl Agent {
    pub(super) fn publish(&self, exchange: &str, msg: Message) {
        if let Err(e) = self.ctx.admin.broker().publish(exchange, Arc::new(msg)) {
            tracing::debug!(exchange, "management message not delivered: {e}");
        }
    }

    /// The objects of `class` (all classes for `None`), from one fresh view.
    pub(super) fn objects(&mut self, class: Option<&str>) -> Vec<Object> {
        let view = View::take(&self.ctx, class);
        let mut b = Builder::new(&self.ctx.facts, &view, &mut self.first_seen);
        let objects = b.build(class);
        // Forget when gone objects of the classes just built were first seen.
        let present: std::collections::HashSet<String> = objects.iter().map(Object::name).collect();
        let prefix = class.map(|c| format!("{PACKAGE}:{c}:"));
        self.first_seen.retain(|name, _| {
            present.contains(name) || prefix.as_ref().is_some_and(|p| !name.starts_with(p))
        });
        objects
    }

    /// Whether the object `class`/`key` exists: looked up directly for the classes methods
    /// are mostly called on, rather than building the whole class.
    fn exists(&mut self, class: &str, key: &str) -> bool {
        let broker = self.ctx.admin.broker();
        match class {
            "broker" => key == super::objects::BROKER_KEY,
            "queue" => broker.query_queue(key).is_some(),
            "exchange" => broker.query_exchange(key).is_some(),
            "connection" => self
                .ctx
                .admin
                .connections()
                .iter()
                .any(|c| super::objects::connection_address(c) == key),
            _ => self.objects(Some(class)).into_iter().any(|o| o.key == key),
        }
    }

    /// Who sent `msg`: the user its connection logged in as, else its `user-id`.
    fn caller(&self, msg: &Message) -> Caller {
        let mut names = Vec::new();
        if let Some(c) = self.ctx.admin.connection(msg.origin) {
            names.push(c.user);
        }
        if let Some(u) = msg.properties().and_then(|p| p.user_id) {
            let u = String::from_utf8_lossy(&u).into_owned();
            if !names.contains(&u) {
                names.push(u);
            }
        }
        Caller {
            names,
            connection: msg.origin,
        }
    }

    /// Whether the ACL (if any) lets `caller` do `action` on `kind` `name`; a refusal is
    /// logged.
    pub(super) fn allowed(
        &self,
        caller: &Caller,
        action: Action,
        kind: ObjectKind,
        name: &str,
    ) -> bool {
        let Some(acl) = self.ctx.admin.acl() else {
            return true;
        };
        let d = acl.check(&caller.names(), action, kind, name);
        if !d.allowed {
            tracing::warn!(
                user = caller.names.first().map_or("(nobody)", String::as_str),
                %action,
                object = %format!("{kind} {name}"),
                rule = d.line,
                "ACL denied a management request"
            );
        }
        d.allowed
    }

    async fn handle(&mut self, exchange: &str, msg: &Arc<Message>) {
        let Some(props) = msg.properties() else {
            return;
        };
        let Some(reply) = ReplyAddress::of(&props) else {
            tracing::debug!(exchange, "management request without reply-to ignored");
            return;
        };
        let correlation = props.correlation_id.clone();
        let v2 = props.app_id.as_deref() == Some(b"qmf2".as_slice());
        // Answer as "broker" when addressed so, as the tools expect.
        let agent = if msg.routing_key() == "broker" {
            "broker".to_string()
        } else {
            self.ctx.name.clone()
        };
        if msg.body.len() > MAX_REQUEST {
            if v2 {
                self.exception(
                    &reply,
                    correlation,
                    &agent,
                    Status::Exception,
                    "request too large",
                );
            }
            return;
        }
        let caller = self.caller(msg);
        if !v2 {
            self.handle_v1(&reply, msg.body.clone(), &caller).await;
            return;
        }
        let opcode = props
            .application_headers
            .as_ref()
            .and_then(|h| h.get("qmf.opcode"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match opcode.as_str() {
            "_query_request" => self.query(&reply, correlation, &agent, &msg.body, &caller),
            "_method_request" => {
                self.method(&reply, correlation, &agent, &msg.body, &caller)
                    .await;
            }
            "_agent_locate_request" => self.locate(&reply, correlation),
            other => {
                tracing::debug!(opcode = other, "unsupported QMF opcode");
                self.exception(
                    &reply,
                    correlation,
                    &agent,
                    Status::Exception,
                    &format!("unsupported QMF opcode: {other:?}"),
                );
            }
        }
    }

    fn exception(
        &self,
        reply: &ReplyAddress,
        correlation: Option<Bytes>,
        agent: &str,
        status: Status,
        text: &str,
    ) {
        let mut values = FieldTable::new();
        values.insert("error_code", Value::Uint32(status as u32));
        values.insert("error_text", text);
        self.reply_map(reply, correlation, agent, "_exception", "_values", values);
    }

    /// Sends `{key: content}` as a version 2 map reply with `opcode`.
    fn reply_map(
        &self,
        reply: &ReplyAddress,
        correlation: Option<Bytes>,
        agent: &str,
        opcode: &str,
        key: &str,
        content: FieldTable,
    ) {
        let method = if opcode == "_method_response" {
            "response"
        } else {
            "indication"
        };
        let mut body = FieldTable::new();
        body.insert(key, Value::Map(content));
        let msg = v2_message(
            &reply.key,
            v2_headers(method, opcode, agent),
            correlation,
            "amqp/map",
            map_body(&body),
        );
        self.publish(&reply.exchange, msg);
    }

    fn query(
        &mut self,
        reply: &ReplyAddress,
        correlation: Option<Bytes>,
        agent: &str,
        body: &Bytes,
        caller: &Caller,
    ) {
        let fail = |s: &Self, text: &str| {
            s.exception(reply, correlation.clone(), agent, Status::Exception, text);
        };
        let q = match read_map(body) {
            Ok(q) => q,
            Err(e) => return fail(self, &e),
        };
        match q.get("_what") {
            None => return fail(self, "_what element missing in Query"),
            Some(w) => match w.as_str() {
                None => return fail(self, "_what element is not a string"),
                Some("OBJECT") => {}
                Some(other) => {
                    return fail(self, &format!("Query for _what => '{other}' not supported"))
                }
            },
        }
        let by_name = match q.get("_object_id") {
            Some(Value::Map(id)) => id
                .get("_object_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let objects = if let Some(name) = by_name {
            match parse_name(&name) {
                Some((class, key))
                    if self.allowed(caller, Action::Access, ObjectKind::Query, class) =>
                {
                    let class = class.to_string();
                    self.objects(Some(&class))
                        .into_iter()
                        .filter(|o| o.key == key)
                        .collect()
                }
                Some(_) => return fail(self, "unauthorized-access: ACL denied the query"),
                None => Vec::new(),
            }
        } else {
            let schema_id = match q.get("_schema_id") {
                Some(Value::Map(m)) => m.clone(),
                _ => FieldTable::new(),
            };
            let class = schema_id
                .get("_class_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let package_ok = schema_id
                .get("_package_name")
                .and_then(Value::as_str)
                .is_none_or(|p| p == PACKAGE);
            if !self.allowed(caller, Action::Access, ObjectKind::Query, &class) {
                return fail(self, "unauthorized-access: ACL denied the query");
            }
            if class.is_empty() || !package_ok {
                Vec::new()
            } else {
                self.objects(Some(&class))
            }
        };
        self.send_objects(reply, correlation, agent, objects, "_query_response");
    }

    /// Sends objects in messages of at most [`OBJECTS_PER_MESSAGE`], every one but the last
    /// marked `partial`; an empty answer is one empty list.
    fn send_objects(
        &self,
        reply: &ReplyAddress,
        correlation: Option<Bytes>,
        agent: &str,
        objects: Vec<Object>,
        opcode: &str,
    ) {
        let now = now_ns();
        let method = if opcode == "_query_response" {
            "response"
        } else {
            "indication"
        };
        // Encoded a message at a time, so a large answer never sits in memory twice over.
        let chunks = objects.len().div_ceil(OBJECTS_PER_MESSAGE).max(1);
        let mut rest = objects.as_slice();
        for i in 0..chunks {
            let (chunk, tail) = rest.split_at(rest.len().min(OBJECTS_PER_MESSAGE));
            rest = tail;
            let mut headers = v2_headers(method, opcode, agent);
            headers.insert("qmf.content", "_data");
            if i + 1 < chunks {
                headers.insert("partial", Value::Void);
            }
            let maps = chunk.iter().map(|o| Value::Map(o.to_map(now))).collect();
            let msg = v2_message(
                &reply.key,
                headers,
                correlation.clone(),
                "amqp/list",
                list_body(maps),
            );
            self.publish(&reply.exchange, msg);
        }
    }

    async fn method(
        &mut self,
        reply: &ReplyAddress,
        correlation: Option<Bytes>,
        agent: &str,
        body: &Bytes,
        caller: &Caller,
    ) {
        let result = self.call(body, caller).await;
        match result {
            Ok(out) => {
                self.reply_map(
                    reply,
                    correlation,
                    agent,
                    "_method_response",
                    "_arguments",
                    out,
                );
            }
            Err(e) => self.exception(reply, correlation, agent, e.status, &e.text),
        }
    }

    /// Runs a method request; the output arguments, or why it failed.
    async fn call(&mut self, body: &Bytes, caller: &Caller) -> Result<FieldTable, MethodError> {
        let req = read_map(body).map_err(|e| MethodError::new(Status::Exception, e))?;
        self.call_map(req, caller).await
    }

    /// Runs a method request already read.
    pub(super) async fn call_map(
        &mut self,
        req: FieldTable,
        caller: &Caller,
    ) -> Result<FieldTable, MethodError> {
        let name = match req.get("_object_id") {
            Some(Value::Map(id)) => id.get("_object_name").and_then(Value::as_str),
            _ => None,
        };
        let method = req.get("_method_name").and_then(Value::as_str);
        let (Some(name), Some(method)) = (name, method) else {
            return Err(MethodError::standard(Status::InvalidParameter));
        };
        let args = match req.get("_arguments") {
            Some(Value::Map(m)) => m.clone(),
            None | Some(Value::Void) => FieldTable::new(),
            Some(_) => return Err(MethodError::standard(Status::InvalidParameter)),
        };
        let missing = || {
            MethodError::new(
                Status::UnknownObject,
                format!("No object found with ID={name}"),
            )
        };
        let (class, key) = parse_name(name).ok_or_else(missing)?;
        let schema_class = Schema::get()
            .class(class)
            .filter(|c| c.kind == Kind::Table)
            .ok_or_else(missing)?;
        if !self.exists(class, key) {
            return Err(missing());
        }
        let Some(m) = schema_class.method(method) else {
            return Err(MethodError::standard(Status::UnknownMethod));
        };
        if !self.allowed(caller, Action::Access, ObjectKind::Method, method) {
            return Err(MethodError::standard(Status::Forbidden));
        }
        let args = methods::Args::new(m, args)?;
        tracing::info!(
            user = caller.names.first().map_or("", String::as_str),
            object = name,
            method,
            "management method"
        );
        methods::call(self, caller, class, key, method, &args).await
    }

    fn locate(&self, reply: &ReplyAddress, correlation: Option<Bytes>) {
        let msg = v2_message(
            &reply.key,
            v2_headers("indication", "_agent_locate_response", &self.ctx.name),
            correlation,
            "amqp/map",
            map_body(&self.agent_info()),
        );
        self.publish(&reply.exchange, msg);
    }

    /// The agent's description: `{_values: {...}}`.
    fn agent_info(&self) -> FieldTable {
        let mut v = FieldTable::new();
        v.insert("_vendor", VENDOR);
        v.insert("_product", PRODUCT);
        v.insert(
            "_instance",
            self.ctx.name.rsplit(':').next().unwrap_or_default(),
        );
        v.insert("_name", self.ctx.name.clone());
        v.insert("_timestamp", Value::Uint64(now_ns()));
        v.insert(
            "_heartbeat_interval",
            Value::Uint32(
                u32::try_from(self.heartbeat_interval.as_secs().max(1)).unwrap_or(u32::MAX),
            ),
        );
        v.insert("_epoch", Value::Uint32(1));
        let mut m = FieldTable::new();
        m.insert("_values", Value::Map(v));
        m
    }

    fn heartbeat(&self) {
        let key = format!(
            "agent.ind.heartbeat.{}.{}",
            key_word(VENDOR),
            key_word(PRODUCT)
        );
        if !self.ctx.admin.broker().has_route("qmf.default.topic", &key) {
            return;
        }
        let mut msg = v2_message(
            &key,
            v2_headers("indication", "_agent_heartbeat_indication", &self.ctx.name),
            None,
            "amqp/map",
            map_body(&self.agent_info()),
        )
        .draft();
        // A stale heartbeat misleads: let it expire after two intervals.
        msg.delivery.ttl =
            Some(u64::try_from(self.heartbeat_interval.as_millis() * 2).unwrap_or(u64::MAX));
        msg.expires_at = Some(std::time::Instant::now() + self.heartbeat_interval * 2);
        self.publish("qmf.default.topic", msg.seal());
    }

    /// Sends every object to the consoles listening for updates of its class.
    fn publish_all(&mut self) {
        let broker = self.ctx.admin.broker().clone();
        let key_of = |class: &str| {
            format!(
                "agent.ind.data.{}.{}.{}.{}",
                key_word(PACKAGE),
                key_word(class),
                key_word(VENDOR),
                key_word(PRODUCT)
            )
        };
        let wanted: Vec<&'static str> = Schema::get()
            .classes()
            .iter()
            .filter(|c| c.kind == Kind::Table)
            .map(|c| c.name)
            .filter(|c| broker.has_route("qmf.default.topic", &key_of(c)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut by_class: HashMap<&'static str, Vec<Object>> = HashMap::new();
        for o in self.objects(None) {
            if wanted.contains(&o.class.name) {
                by_class.entry(o.class.name).or_default().push(o);
            }
        }
        for (class, objects) in by_class {
            let reply = ReplyAddress {
                exchange: "qmf.default.topic".into(),
                key: key_of(class),
            };
            let name = self.ctx.name.clone();
            self.send_objects(&reply, None, &name, objects, "_data_indication");
        }
    }
}

/// `org.apache.qpid.broker:<class>:<key>` as (class, key).
pub(super) fn parse_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix(':')?;
    rest.split_once(':')
}

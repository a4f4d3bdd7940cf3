//! Where a call goes (no I/O): the checks of the original dispatcher in its order, the
//! arguments a local command receives, and the node a call is forwarded to.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::jsonrpc::{ErrorCode, Params, Request};
use crate::names;
use crate::registry::{Capabilities, CommandInfo, CommandType};

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A user, as the broker stamped the request.
    User(&'a str),
    /// The agent itself (no ACL; `needsUser` commands get null).
    Internal,
    /// A user whose call another agent forwarded here: checked as that user, and run
    /// here or nowhere, so that a call never travels in circles.
    Forwarded(&'a str),
}

impl<'a> Caller<'a> {
    /// The user the call runs as, if any.
    pub fn user(self) -> Option<&'a str> {
        match self {
            Caller::User(u) | Caller::Forwarded(u) => Some(u),
            Caller::Internal => None,
        }
    }
}

/// What this node knows when it plans a call.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The domain.
    pub domain: &'a str,
    /// This node's id.
    pub node: &'a str,
    /// Commands this node implements, by name.
    pub local: &'a HashMap<String, CommandInfo>,
    /// Commands of all nodes.
    pub capabilities: &'a Capabilities,
    /// Live nodes and their load.
    pub loads: &'a HashMap<String, f64>,
}

/// What the ACL is asked before the call goes anywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct AclQuestion {
    /// `D.command.T.method`, whatever queue the call arrived on.
    pub topic: String,
    /// The arguments by parameter name (what ACL rules may look at).
    pub options: Map<String, Value>,
}

/// Where the call goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Run here with these positional arguments (injected user/queue first).
    Local(Vec<Value>),
    /// Send the original request to the private queue of the first of these providers
    /// that the local broker can reach (least loaded first).
    Forward {
        /// Live providers, by load.
        nodes: Vec<String>,
    },
    /// Ask these providers in turn (FIRSTRESULT: first success; CUMULATIVE: all).
    Walk {
        /// How results combine.
        kind: CommandType,
        /// Live providers, this node first when it is one.
        nodes: Vec<String>,
    },
}

/// A planned call.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// For the ACL; `None` for internal calls.
    pub acl: Option<AclQuestion>,
    /// Where it goes.
    pub route: Route,
    /// The command's target.
    pub target: String,
}

/// Why a call cannot go anywhere: the code and what it concerns.
pub type Refusal = (ErrorCode, String);

/// Plans `request`, arrived on `queue` (empty: no queue, use the target's shared one).
///
/// # Errors
/// No user, unknown method, bad arguments, a method on a foreign queue, no live provider.
pub fn plan(
    view: View<'_>,
    caller: Caller<'_>,
    queue: &str,
    request: &Request,
) -> Result<Plan, Refusal> {
    let method = request.method.as_str();
    if caller.user() == Some("") {
        return Err((ErrorCode::COMMAND_NO_USERNAME, method.to_string()));
    }
    let Some(cap) = view.capabilities.get(method) else {
        return Err((ErrorCode::COMMAND_NOT_DEFINED, method.to_string()));
    };
    let info = view.local.get(method).unwrap_or(&cap.info);
    let target = info.target.as_str();
    let shared = names::shared_queue(view.domain, target);
    let queue = if queue.is_empty() {
        shared.as_str()
    } else {
        queue
    };

    let injected = usize::from(info.needs_user) + usize::from(info.needs_queue);
    let params = caller_params(info, injected, &request.params)?;
    let acl = match caller {
        Caller::Internal => None,
        Caller::User(_) | Caller::Forwarded(_) => Some(AclQuestion {
            topic: names::command_topic(view.domain, target, method),
            options: info
                .sig
                .iter()
                .skip(injected)
                .cloned()
                .zip(params.iter().cloned())
                .collect(),
        }),
    };
    if info.needs_queue {
        let own = format!(".{}", view.node);
        let base = queue.strip_suffix(own.as_str()).unwrap_or(queue);
        if base != shared {
            return Err((ErrorCode::COMMAND_INVALID_QUEUE, method.to_string()));
        }
    }

    let mut providers = view.capabilities.live_providers(method, view.loads);
    let here = view.local.contains_key(method);
    let local_args = |params: Vec<Value>| {
        let mut args = Vec::with_capacity(params.len() + injected);
        if info.needs_user {
            args.push(
                caller
                    .user()
                    .map_or(Value::Null, |u| Value::String(u.into())),
            );
        }
        if info.needs_queue {
            args.push(Value::String(queue.to_string()));
        }
        args.extend(params);
        args
    };
    let route = match info.kind {
        _ if matches!(caller, Caller::Forwarded(_)) => {
            if !here {
                return Err((ErrorCode::COMMAND_NOT_DEFINED, method.to_string()));
            }
            Route::Local(local_args(params))
        }
        CommandType::Normal if here => Route::Local(local_args(params)),
        CommandType::Normal => {
            let load = |n: &str| view.loads.get(n).copied().unwrap_or(f64::MAX);
            providers.retain(|n| *n != view.node);
            if providers.is_empty() {
                return Err((ErrorCode::COMMAND_NOT_DEFINED, method.to_string()));
            }
            providers.sort_by(|a, b| load(a).total_cmp(&load(b)).then(a.cmp(b)));
            Route::Forward {
                nodes: providers.iter().map(|n| n.to_string()).collect(),
            }
        }
        kind => {
            // Local first: it answers without a round trip.
            providers.sort_by_key(|n| *n != view.node);
            Route::Walk {
                kind,
                nodes: providers.iter().map(|n| n.to_string()).collect(),
            }
        }
    };
    Ok(Plan {
        acl,
        route,
        target: target.to_string(),
    })
}

/// The caller's arguments in signature order: positional as given, named ones placed by
/// the parameter names after the injected ones.
fn caller_params(
    info: &CommandInfo,
    injected: usize,
    params: &Params,
) -> Result<Vec<Value>, Refusal> {
    let names: Vec<&str> = info.sig.iter().skip(injected).map(String::as_str).collect();
    let bad = |why: String| {
        (
            ErrorCode::COMMAND_BAD_ARGUMENTS,
            format!("{}: {why}", info.name),
        )
    };
    match params {
        Params::Positional(list) => {
            if list.len() > names.len() {
                return Err(bad(format!(
                    "takes at most {} arguments, {} given",
                    names.len(),
                    list.len()
                )));
            }
            Ok(list.clone())
        }
        Params::Named(map) => {
            if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
                return Err(bad(format!("no parameter named {unknown}")));
            }
            // Up to the last named parameter; gaps before it are null.
            let last = names.iter().rposition(|n| map.contains_key(*n));
            Ok(names[..last.map_or(0, |l| l + 1)]
                .iter()
                .map(|n| map.get(*n).cloned().unwrap_or(Value::Null))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct World {
        local: HashMap<String, CommandInfo>,
        caps: Capabilities,
        loads: HashMap<String, f64>,
    }

    fn info(name: &str, target: &str, sig: &[&str], f: impl Fn(&mut CommandInfo)) -> CommandInfo {
        let mut c = CommandInfo::new(name, target, "Test", "help");
        c.sig = sig.iter().map(|s| s.to_string()).collect();
        f(&mut c);
        c
    }

    fn world() -> World {
        let echo = info("echo", "core", &["user", "text", "times"], |c| {
            c.needs_user = true
        });
        let queued = info("whereAmI", "core", &["queue"], |c| c.needs_queue = true);
        let remote = info("render", "goto", &["name"], |_| {});
        let all = info("collect", "core", &[], |c| c.kind = CommandType::Cumulative);
        let mut caps = Capabilities::default();
        caps.add_node("n1", &[echo.clone(), queued.clone(), all.clone()]);
        caps.add_node("n2", &[remote.clone(), all.clone()]);
        caps.add_node("n3", std::slice::from_ref(&remote));
        let local = [echo, queued, all]
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let loads = [("n1", 0.5), ("n2", 0.9), ("n3", 0.2)]
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect();
        World { local, caps, loads }
    }

    fn view(w: &World) -> View<'_> {
        View {
            domain: "org.clacks",
            node: "n1",
            local: &w.local,
            capabilities: &w.caps,
            loads: &w.loads,
        }
    }

    fn request(method: &str, params: Value) -> Request {
        let params = match params {
            Value::Array(a) => Params::Positional(a),
            Value::Object(m) => Params::Named(m),
            _ => Params::Positional(Vec::new()),
        };
        Request {
            method: method.into(),
            params,
            id: json!("jsonrpc"),
        }
    }

    #[test]
    fn local_calls_get_the_user_first_and_named_arguments_in_order() {
        let w = world();
        let r = request("echo", json!({"times": 2, "text": "hi"}));
        let p = plan(
            view(&w),
            Caller::User("alice"),
            "org.clacks.command.core",
            &r,
        )
        .expect("plan");
        assert_eq!(
            p.route,
            Route::Local(vec![json!("alice"), json!("hi"), json!(2)])
        );
        let acl = p.acl.expect("acl question");
        assert_eq!(acl.topic, "org.clacks.command.core.echo");
        assert_eq!(acl.options["text"], json!("hi"));
        // Internal calls skip the ACL and pass no user.
        let p = plan(
            view(&w),
            Caller::Internal,
            "",
            &request("echo", json!(["x"])),
        )
        .expect("plan");
        assert!(p.acl.is_none());
        assert_eq!(p.route, Route::Local(vec![Value::Null, json!("x")]));
    }

    #[test]
    fn refusals_in_the_original_order() {
        let w = world();
        let q = "org.clacks.command.core";
        let code = |caller, queue, r: Request| {
            plan(view(&w), caller, queue, &r)
                .map(|_| ())
                .map_err(|e| e.0)
        };
        assert_eq!(
            code(Caller::User(""), q, request("echo", json!([]))),
            Err(ErrorCode::COMMAND_NO_USERNAME)
        );
        assert_eq!(
            code(Caller::User("a"), q, request("nope", json!([]))),
            Err(ErrorCode::COMMAND_NOT_DEFINED)
        );
        assert_eq!(
            code(
                Caller::User("a"),
                q,
                request("echo", json!(["a", "b", "c"]))
            ),
            Err(ErrorCode::COMMAND_BAD_ARGUMENTS)
        );
        assert_eq!(
            code(Caller::User("a"), q, request("echo", json!({"colour": 1}))),
            Err(ErrorCode::COMMAND_BAD_ARGUMENTS)
        );
        assert_eq!(
            code(
                Caller::User("a"),
                "org.clacks.command.goto",
                request("whereAmI", json!([]))
            ),
            Err(ErrorCode::COMMAND_INVALID_QUEUE)
        );
    }

    #[test]
    fn queue_commands_accept_the_private_queue_and_get_it_whole() {
        let w = world();
        let r = request("whereAmI", json!([]));
        let p = plan(
            view(&w),
            Caller::User("a"),
            "org.clacks.command.core.n1",
            &r,
        )
        .expect("plan");
        assert_eq!(
            p.route,
            Route::Local(vec![json!("org.clacks.command.core.n1")])
        );
    }

    #[test]
    fn remote_normal_commands_go_to_the_least_loaded_live_provider() {
        let mut w = world();
        let r = request("render", json!(["x"]));
        let p = plan(view(&w), Caller::User("a"), "", &r).expect("plan");
        assert_eq!(
            p.route,
            Route::Forward {
                nodes: vec!["n3".into(), "n2".into()]
            }
        );
        // The ACL sees the target's topic, not the queue it came on.
        assert_eq!(p.acl.expect("acl").topic, "org.clacks.command.goto.render");
        w.loads.remove("n3");
        let p = plan(view(&w), Caller::User("a"), "", &r).expect("plan");
        assert_eq!(
            p.route,
            Route::Forward {
                nodes: vec!["n2".into()]
            }
        );
        w.loads.remove("n2");
        assert!(
            plan(view(&w), Caller::User("a"), "", &r).is_err(),
            "no live provider"
        );
    }

    #[test]
    fn cumulative_walks_live_providers_local_first() {
        let w = world();
        let p = plan(
            view(&w),
            Caller::User("a"),
            "",
            &request("collect", json!([])),
        )
        .expect("plan");
        assert_eq!(
            p.route,
            Route::Walk {
                kind: CommandType::Cumulative,
                nodes: vec!["n1".into(), "n2".into()]
            }
        );
    }

    #[test]
    fn forwarded_calls_run_here_as_the_original_user_or_not_at_all() {
        let w = world();
        let p = plan(
            view(&w),
            Caller::Forwarded("alice"),
            "org.clacks.command.core.n1",
            &request("echo", json!(["hi"])),
        )
        .expect("plan");
        assert_eq!(p.route, Route::Local(vec![json!("alice"), json!("hi")]));
        assert_eq!(p.acl.expect("acl").topic, "org.clacks.command.core.echo");
        // A walk's step runs locally instead of walking again.
        let p = plan(
            view(&w),
            Caller::Forwarded("alice"),
            "",
            &request("collect", json!([])),
        )
        .expect("plan");
        assert_eq!(p.route, Route::Local(vec![]));
        // Not served here: refused rather than forwarded once more.
        let refused = plan(
            view(&w),
            Caller::Forwarded("alice"),
            "",
            &request("render", json!(["x"])),
        );
        assert_eq!(
            refused.map(|p| p.route).map_err(|e| e.0),
            Err(ErrorCode::COMMAND_NOT_DEFINED)
        );
    }
}

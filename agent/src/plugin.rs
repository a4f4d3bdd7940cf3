//! Command plugins: a target, its commands, and how to run one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::dispatch::Refusal;
use crate::registry::CommandInfo;
use crate::state::AgentState;

/// A boxed future a plugin's command returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a command returns: its result, or the error text for the caller.
pub type CallResult = Result<Value, String>;

/// The agent as a running command sees it.
#[derive(Clone)]
pub struct CallContext {
    /// The calling user; `None` for the agent's own calls.
    pub user: Option<String>,
    /// The agent's shared state (capabilities, nodes, error records).
    pub state: Arc<AgentState>,
    /// Another agent passed this call on: it must not travel further.
    pub forwarded: bool,
}

impl CallContext {
    /// Keeps the record of a refusal for `get_error` and returns the caller's error text.
    pub fn report(&self, (code, subject): Refusal) -> String {
        self.state
            .errors
            .report(code, &subject, self.user.as_deref())
    }
}

/// A set of commands served on one target queue.
pub trait Plugin: Send + Sync {
    /// The queue suffix its commands are served on (`core`, `broker`, ...).
    fn target(&self) -> &str;

    /// Its commands, each with its signature and help.
    fn commands(&self) -> Vec<CommandInfo>;

    /// Runs `method` with positional `args` (injected user/queue first, as planned).
    fn call<'a>(
        &'a self,
        ctx: &'a CallContext,
        method: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, CallResult>;
}

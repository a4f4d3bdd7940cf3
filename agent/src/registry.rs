//! What commands exist and who provides them: each command's description, and the
//! capability map built from the `NodeCapabilities` events of every node.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{json, Value};

/// How a call is dispatched when several nodes provide the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CommandType {
    /// Run locally, or forwarded to the provider with the lowest load.
    Normal,
    /// Providers in turn; the first result without an error wins.
    FirstResult,
    /// Every provider; the results collected by node.
    Cumulative,
}

impl CommandType {
    /// The number `getMethods` reports (1, 2, 3).
    pub fn number(self) -> u8 {
        match self {
            CommandType::Normal => 1,
            CommandType::FirstResult => 2,
            CommandType::Cumulative => 3,
        }
    }

    /// The name in `NodeCapabilities` events (the original schema spells `CUMMULATIVE`).
    pub fn wire_name(self) -> &'static str {
        match self {
            CommandType::Normal => "NORMAL",
            CommandType::FirstResult => "FIRSTRESULT",
            CommandType::Cumulative => "CUMMULATIVE",
        }
    }

    /// Reads an event's type name; both spellings of cumulative are taken.
    pub fn from_wire(name: &str) -> Option<CommandType> {
        match name {
            "NORMAL" => Some(CommandType::Normal),
            "FIRSTRESULT" => Some(CommandType::FirstResult),
            "CUMMULATIVE" | "CUMULATIVE" => Some(CommandType::Cumulative),
            _ => None,
        }
    }
}

/// A command as one node describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// The command name (names are global across targets).
    pub name: String,
    /// `"<Implementation>.<name>"`, informational.
    pub path: String,
    /// The queue suffix it is served on (`core`, a plugin's target).
    pub target: String,
    /// Parameter names, the injected `user`/`queue` included.
    pub sig: Vec<String>,
    /// Dispatch type.
    pub kind: CommandType,
    /// The caller's user is passed as the first argument.
    pub needs_user: bool,
    /// The arrival queue is passed as an argument (and checked).
    pub needs_queue: bool,
    /// One line of help, whitespace collapsed.
    pub doc: String,
}

impl CommandInfo {
    /// A description with `doc`'s whitespace collapsed to single spaces.
    pub fn new(name: &str, target: &str, implementation: &str, doc: &str) -> CommandInfo {
        CommandInfo {
            name: name.to_string(),
            path: format!("{implementation}.{name}"),
            target: target.to_string(),
            sig: Vec::new(),
            kind: CommandType::Normal,
            needs_user: false,
            needs_queue: false,
            doc: doc.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// The same with these parameter names.
    pub fn with_sig(mut self, sig: &[&str]) -> CommandInfo {
        self.sig = sig.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// One entry of the capability map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The description from the first node that announced it.
    pub info: CommandInfo,
    /// Nodes providing it, each once, in the order they announced.
    pub providers: Vec<String>,
}

/// Commands by name, with their providers, from `NodeCapabilities` events.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    entries: BTreeMap<String, Capability>,
    /// Whether any node (this one included) has announced its capabilities yet.
    ready: bool,
}

impl Capabilities {
    /// Takes in what `node` announced: new commands keep the first announcer's
    /// description; a node is listed once however often it announces.
    pub fn add_node(&mut self, node: &str, commands: &[CommandInfo]) {
        self.ready = true;
        for c in commands {
            let entry = self
                .entries
                .entry(c.name.clone())
                .or_insert_with(|| Capability {
                    info: c.clone(),
                    providers: Vec::new(),
                });
            if !entry.providers.iter().any(|p| p == node) {
                entry.providers.push(node.to_string());
            }
        }
    }

    /// Forgets a node that left or timed out: only its own providers go, and commands
    /// nobody provides any more.
    pub fn remove_node(&mut self, node: &str) {
        for entry in self.entries.values_mut() {
            entry.providers.retain(|p| p != node);
        }
        self.entries.retain(|_, e| !e.providers.is_empty());
    }

    /// Whether capabilities have been heard at all (calls wait for this).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The command named `name`, if anyone provides it.
    pub fn get(&self, name: &str) -> Option<&Capability> {
        self.entries.get(name)
    }

    /// Providers of `name` that are alive, in announcement order.
    /// `alive` is the node table: live nodes and their load.
    pub fn live_providers<'a>(&'a self, name: &str, alive: &HashMap<String, f64>) -> Vec<&'a str> {
        self.entries.get(name).map_or_else(Vec::new, |e| {
            e.providers
                .iter()
                .filter(|p| alive.contains_key(*p))
                .map(String::as_str)
                .collect()
        })
    }

    /// The `getMethods` result: commands with at least one live provider.
    pub fn methods(&self, alive: &HashMap<String, f64>) -> Value {
        let mut out = serde_json::Map::new();
        for (name, e) in &self.entries {
            let providers = self.live_providers(name, alive);
            if providers.is_empty() {
                continue;
            }
            out.insert(
                name.clone(),
                json!({
                    "path": e.info.path,
                    "target": e.info.target,
                    "sig": e.info.sig,
                    "type": e.info.kind.number(),
                    "needsQueue": e.info.needs_queue,
                    "doc": e.info.doc,
                    "provider": providers,
                }),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str, doc: &str) -> CommandInfo {
        CommandInfo::new(name, "core", "CommandRegistry", doc)
    }

    fn alive(nodes: &[&str]) -> HashMap<String, f64> {
        nodes.iter().map(|n| (n.to_string(), 0.0)).collect()
    }

    #[test]
    fn providers_are_deduplicated_and_leaving_removes_only_the_leaver() {
        let mut caps = Capabilities::default();
        assert!(!caps.is_ready());
        caps.add_node("n1", &[cmd("getMethods", "List  the\n methods.")]);
        caps.add_node("n1", &[cmd("getMethods", "ignored: first wins")]);
        caps.add_node("n2", &[cmd("getMethods", "other"), cmd("only2", "x")]);
        assert!(caps.is_ready());
        let e = caps.get("getMethods").expect("entry");
        assert_eq!(e.providers, ["n1", "n2"]);
        assert_eq!(e.info.doc, "List the methods.");
        caps.remove_node("n2");
        assert_eq!(caps.get("getMethods").expect("entry").providers, ["n1"]);
        assert!(caps.get("only2").is_none(), "nobody provides it any more");
    }

    #[test]
    fn get_methods_lists_live_providers_only() {
        let mut caps = Capabilities::default();
        caps.add_node("n1", &[cmd("a", "A")]);
        caps.add_node("n2", &[cmd("a", "A"), cmd("b", "B")]);
        let m = caps.methods(&alive(&["n1"]));
        assert_eq!(m["a"]["provider"], json!(["n1"]));
        assert_eq!(m["a"]["type"], json!(1));
        assert_eq!(m["a"]["path"], json!("CommandRegistry.a"));
        assert!(m.get("b").is_none(), "b's only provider is not alive");
        assert_eq!(
            caps.live_providers("a", &alive(&["n2", "n1"])),
            ["n1", "n2"]
        );
    }

    #[test]
    fn command_types_on_the_wire() {
        for t in [
            CommandType::Normal,
            CommandType::FirstResult,
            CommandType::Cumulative,
        ] {
            assert_eq!(CommandType::from_wire(t.wire_name()), Some(t));
        }
        assert_eq!(
            CommandType::from_wire("CUMULATIVE"),
            Some(CommandType::Cumulative)
        );
        assert_eq!(CommandType::Cumulative.number(), 3);
        assert_eq!(CommandType::from_wire("SOMETIMES"), None);
    }
}

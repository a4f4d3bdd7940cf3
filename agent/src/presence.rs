//! Node presence: what the Node* events do to the node table and the capability map, and
//! the events this node sends.

use std::time::{Duration, Instant};

use crate::events::{self, NodeMethod, ValidatedEvent};
use crate::registry::{CommandInfo, CommandType};
use crate::state::{AgentState, NodeStatus};

/// The XQuery an agent binds with to hear presence events.
pub const PRESENCE_QUERY: &str = "declare namespace f='http://www.gonicus.de/Events'; \
     let $e := ./f:Event return $e/f:NodeAnnounce or $e/f:NodeLeave \
     or $e/f:NodeStatus or $e/f:NodeCapabilities";

/// What this node should send in answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing.
    Nothing,
    /// Its `NodeCapabilities` (every `NodeAnnounce`, its own included, gets one).
    Capabilities,
    /// A `NodeAnnounce` of its own: a node appeared that announced itself where this one
    /// could not hear it (before a federation link joined them, say), and the answers
    /// to an announcement bring its capabilities.
    Announce,
}

/// This node's `NodeCapabilities` event.
pub fn capabilities_event(state: &AgentState) -> String {
    let mut methods: Vec<NodeMethod> = state
        .local
        .values()
        .map(|c| NodeMethod {
            name: c.name.clone(),
            path: c.path.clone(),
            target: c.target.clone(),
            signature: c.sig.clone(),
            kind: c.kind,
            queue_required: c.needs_queue,
            documentation: c.doc.clone(),
        })
        .collect();
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    events::node_capabilities(&state.config.node, &methods, &[])
}

/// Takes in a presence event.
pub fn apply(state: &AgentState, event: &ValidatedEvent, now: Instant) -> Answer {
    let Some(id) = event.id.clone().filter(|i| !i.is_empty()) else {
        return Answer::Nothing;
    };
    let text = |name: &str| {
        event
            .element
            .child(name)
            .map(|e| e.text())
            .unwrap_or_default()
    };
    match event.name.as_str() {
        "NodeAnnounce" => {
            state.seen(&id, now);
            Answer::Capabilities
        }
        "NodeCapabilities" => {
            let commands: Vec<CommandInfo> = event
                .element
                .elements()
                .filter(|e| e.local_name() == "NodeMethod")
                .filter_map(|m| {
                    let field = |n: &str| m.child(n).map(|e| e.text()).unwrap_or_default();
                    let mut c = CommandInfo::new(
                        &field("Name"),
                        &field("Target"),
                        "",
                        &field("Documentation"),
                    );
                    c.path = field("Path");
                    c.sig = field("Signature")
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    c.kind = CommandType::from_wire(field("Type").trim())?;
                    c.needs_queue = field("QueueRequired").trim() == "true";
                    Some(c)
                })
                .collect();
            state.capabilities().add_node(&id, &commands);
            state.seen(&id, now);
            Answer::Nothing
        }
        "NodeStatus" => {
            let load = text("Load").trim().parse::<f64>().unwrap_or(0.0);
            let status = NodeStatus {
                latency: text("Latency").trim().parse().unwrap_or(0.0),
                workers: text("Workers").trim().parse().unwrap_or(0),
                indexed: text("Indexed").trim() == "true",
                received: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            };
            state.statuses().insert(id.clone(), status);
            let stranger = state.loads().insert(id.clone(), load).is_none();
            state.seen(&id, now);
            if stranger {
                Answer::Announce
            } else {
                Answer::Nothing
            }
        }
        "NodeLeave" => {
            state.forget(&id);
            Answer::Nothing
        }
        _ => Answer::Nothing,
    }
}

/// Forgets the nodes not heard of for longer than `timeout` (never this node); returns them.
pub fn sweep(state: &AgentState, now: Instant, timeout: Duration) -> Vec<String> {
    let stale = state.stale(now, timeout);
    for node in &stale {
        state.forget(node);
    }
    stale
}

/// This machine's load average over one minute (0 where it cannot be read).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AgentAcl;
    use crate::events::SchemaSet;
    use crate::state::AgentConfig;
    use std::sync::Arc;

    fn state() -> AgentState {
        AgentState::new(
            AgentConfig::new("org.clacks", "a"),
            vec![Arc::new(crate::core_commands::Core)],
            AgentAcl::default(),
            SchemaSet::load(None).expect("schemas"),
        )
    }

    #[test]
    fn capabilities_round_trip_and_presence_changes_the_tables() {
        let schemas = SchemaSet::load(None).expect("schemas");
        let a = state();
        let b = state();
        // b's capabilities, as a would receive them, under another node id.
        let event = capabilities_event(&b).replace("<Id>a</Id>", "<Id>b</Id>");
        let event = schemas.validate(&event).expect("valid capabilities");
        let now = Instant::now();
        assert_eq!(apply(&a, &event, now), Answer::Nothing);
        let entry = a
            .capabilities()
            .get("getSessionUser")
            .expect("entry")
            .clone();
        assert_eq!(entry.providers, ["a", "b"]);
        assert_eq!(entry.info.sig, ["user"]);
        let announce = schemas
            .validate(&events::node_announce("c"))
            .expect("valid");
        assert_eq!(apply(&a, &announce, now), Answer::Capabilities);
        let status = schemas
            .validate(&events::node_status("b", 1.5, 0.0, 1, None))
            .expect("valid");
        apply(&a, &status, now);
        assert_eq!(a.loads().get("b"), Some(&1.5));
        let b_status = a.statuses().get("b").copied().expect("b's status");
        assert_eq!((b_status.workers, b_status.indexed), (1, false));
        assert!(b_status.received > 1.7e9, "seconds since the epoch");
        // c said nothing more: it times out, b (heard later) and a itself stay.
        let later = now + Duration::from_secs(2);
        apply(&a, &status, later);
        assert_eq!(sweep(&a, later, Duration::from_secs(1)), ["c"]);
        let leave = schemas.validate(&events::node_leave("b")).expect("valid");
        apply(&a, &leave, later);
        assert!(a.loads().get("b").is_none());
        assert!(
            a.statuses().get("b").is_none(),
            "a leaving node's status goes too"
        );
        // A status from a node never heard of: announce, so that its capabilities come.
        let stranger = schemas
            .validate(&events::node_status("d", 0.1, 0.0, 1, None))
            .expect("valid");
        assert_eq!(apply(&a, &stranger, later), Answer::Announce);
        assert_eq!(apply(&a, &stranger, later), Answer::Nothing);
        assert_eq!(
            a.capabilities()
                .get("getSessionUser")
                .expect("entry")
                .providers,
            ["a"]
        );
        assert!(a.loads().contains_key("a"));
    }
}

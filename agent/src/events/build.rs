//! Builders for the presence events the agent sends (protocol §4.6, §5.1).
//!
//! They return the document without an XML declaration; validate it with
//! [`SchemaSet::validate`](super::SchemaSet::validate) and publish
//! [`ValidatedEvent::wire_text`](super::ValidatedEvent::wire_text).

use std::fmt::Write;

use super::dom::is_xml_char;
use super::EVENTS_NS;
use crate::registry::CommandType;

/// One command in a `NodeCapabilities` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMethod {
    /// Command name.
    pub name: String,
    /// `Class.method` of the implementation.
    pub path: String,
    /// Queue suffix of the plugin, e.g. `core`.
    pub target: String,
    /// Parameter names (sent comma-joined).
    pub signature: Vec<String>,
    /// Dispatch type.
    pub kind: CommandType,
    /// Whether the dispatcher inserts the arrival queue.
    pub queue_required: bool,
    /// One-line help text.
    pub documentation: String,
}

/// One object type in a `NodeCapabilities` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObject {
    /// Object type identifier.
    pub oid: String,
    /// Optional signature text.
    pub signature: Option<String>,
}

/// `NodeAnnounce{Id}`: sent once when the agent's registry has started.
pub fn node_announce(id: &str) -> String {
    let mut b = Builder::new("NodeAnnounce");
    b.field(2, "Id", id);
    b.finish()
}

/// `NodeLeave{Id}`: sent on orderly shutdown.
pub fn node_leave(id: &str) -> String {
    let mut b = Builder::new("NodeLeave");
    b.field(2, "Id", id);
    b.finish()
}

/// `NodeStatus{Id, Load, Latency, Workers, Indexed?}`: the periodic status report. `load`
/// is written with two decimals; non-finite numbers are sent as 0 because XSD's float
/// spelling of infinity (`INF`) would surprise receivers more than a zero.
pub fn node_status(
    id: &str,
    load: f64,
    latency: f64,
    workers: u32,
    indexed: Option<bool>,
) -> String {
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    let mut b = Builder::new("NodeStatus");
    b.field(2, "Id", id);
    b.field(2, "Load", &format!("{:.2}", finite(load)));
    b.field(2, "Latency", &format!("{}", finite(latency)));
    // xs:int is signed 32-bit; clamp rather than emit an invalid value.
    b.field(2, "Workers", &workers.min(i32::MAX as u32).to_string());
    if let Some(i) = indexed {
        b.field(2, "Indexed", if i { "true" } else { "false" });
    }
    b.finish()
}

/// `NodeCapabilities{Id, NodeMethod*, NodeObject*}`: the agent's commands and object types,
/// sent in reply to every `NodeAnnounce`.
pub fn node_capabilities(id: &str, methods: &[NodeMethod], objects: &[NodeObject]) -> String {
    let mut b = Builder::new("NodeCapabilities");
    b.field(2, "Id", id);
    for m in methods {
        b.open(2, "NodeMethod");
        b.field(3, "Name", &m.name);
        b.field(3, "Path", &m.path);
        b.field(3, "Target", &m.target);
        b.field(3, "Signature", &m.signature.join(","));
        b.field(3, "Type", m.kind.wire_name());
        b.field(
            3,
            "QueueRequired",
            if m.queue_required { "true" } else { "false" },
        );
        b.field(3, "Documentation", &m.documentation);
        b.close(2, "NodeMethod");
    }
    for o in objects {
        b.open(2, "NodeObject");
        b.field(3, "OID", &o.oid);
        if let Some(s) = &o.signature {
            b.field(3, "Signature", s);
        }
        b.close(2, "NodeObject");
    }
    b.finish()
}

/// Writes the pretty-printed envelope around one event element.
struct Builder {
    out: String,
    event: &'static str,
}

impl Builder {
    fn new(event: &'static str) -> Builder {
        let mut out = String::new();
        let _ = writeln!(out, "<Event xmlns=\"{EVENTS_NS}\">");
        let _ = writeln!(out, "  <{event}>");
        Builder { out, event }
    }

    fn open(&mut self, level: usize, name: &str) {
        let _ = writeln!(self.out, "{:w$}<{name}>", "", w = level * 2);
    }

    fn close(&mut self, level: usize, name: &str) {
        let _ = writeln!(self.out, "{:w$}</{name}>", "", w = level * 2);
    }

    fn field(&mut self, level: usize, name: &str, text: &str) {
        let _ = writeln!(
            self.out,
            "{:w$}<{name}>{}</{name}>",
            "",
            escape(text),
            w = level * 2
        );
    }

    fn finish(mut self) -> String {
        let _ = writeln!(self.out, "  </{}>", self.event);
        self.out.push_str("</Event>");
        self.out
    }
}

/// Escapes element text. Carriage returns become a character reference because a parser
/// would otherwise turn them into newlines; characters XML cannot carry at all become
/// U+FFFD so that the event stays well-formed.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

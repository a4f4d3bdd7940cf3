//! Clacks events: XML documents `<Event xmlns="http://www.gonicus.de/Events">` with one
//! child element naming the event type.
//!
//! * [`SchemaSet`] holds the XSDs of the known events (the core ones shipped with the
//!   agent plus any dropped into a configured directory) and validates outgoing and
//!   `sendEvent` events against them.
//! * [`node_announce`], [`node_leave`], [`node_status`] and [`node_capabilities`] build the
//!   presence events the agent itself sends.

mod build;
mod dom;
mod simple;
mod validate;
mod xsd;

use std::path::PathBuf;

pub use build::{
    node_announce, node_capabilities, node_leave, node_status, NodeMethod, NodeObject,
};
pub use dom::Element;
pub use validate::{is_ncname, strip_declaration, SchemaSet};

/// Namespace of every event document.
pub const EVENTS_NS: &str = "http://www.gonicus.de/Events";

/// Largest event accepted for validation, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Deepest element nesting accepted in an event (the `Event` root counts as one).
pub const MAX_EVENT_DEPTH: usize = 64;

/// The declaration the agent writes in front of every published event.
pub const XML_DECLARATION: &str = "<?xml version='1.0'?>\n";

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The text is not well-formed XML, or breaks a size or depth limit.
    #[error("malformed event XML: {0}")]
    Malformed(String),
    /// The root element is not `Event` in the events namespace.
    #[error("the root element must be Event in namespace {EVENTS_NS}, found {0}")]
    NotAnEvent(String),
    /// `Event` does not have exactly one child element, or carries text or attributes.
    #[error("Event: {0}")]
    Envelope(String),
    /// The child of `Event` names no known event type.
    #[error("unknown event type {0}")]
    UnknownEvent(String),
    /// The event's content breaks its schema; `path` is like `NodeStatus/Load`.
    #[error("{path}: {message}")]
    Invalid {
        /// Where: element names from the event element down.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why the schemas could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file is not a supported, well-formed XSD.
    #[error("event schema {source_name}: {message}")]
    Invalid {
        /// The file (or built-in name) at fault.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The schema directory or a file in it could not be read.
    #[error("cannot read event schemas at {}: {err}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        err: std::io::Error,
    },
}

/// An event that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedEvent {
    /// The event type: the local name of the child of `Event`, e.g. `NodeStatus`.
    pub name: String,
    /// Text of the event's direct `Id` child, if it has one (all Node* events do).
    pub id: Option<String>,
    /// The event element (the child of `Event`), for reading fields.
    pub element: Element,
    /// The document without any XML declaration, trimmed.
    pub body: String,
}

impl ValidatedEvent {
    /// The text to publish: one XML declaration, a newline, then the document. A
    /// declaration the sender included is dropped, so the result never has two.
    pub fn wire_text(&self) -> String {
        format!("{XML_DECLARATION}{}", self.body)
    }
}

#[cfg(test)]
mod tests;

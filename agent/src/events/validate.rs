//! The set of known event schemas, and validation of event documents against it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::dom::{self, is_xml_space, Element, Node};
use super::xsd::{self, quote, Compositor, ElementDecl, Max, Particle, Schema, Term, TypeRef};
use super::{EventError, SchemaError, ValidatedEvent, EVENTS_NS, MAX_EVENT_BYTES, MAX_EVENT_DEPTH};

/// The core event schemas shipped with the agent: (event name, XSD text).
const BUILTIN: &[(&str, &str)] = &[
    ("NodeAnnounce", include_str!("xsd/NodeAnnounce.xsd")),
    ("NodeLeave", include_str!("xsd/NodeLeave.xsd")),
    ("NodeStatus", include_str!("xsd/NodeStatus.xsd")),
    ("NodeCapabilities", include_str!("xsd/NodeCapabilities.xsd")),
];

/// Cap on content-model matching steps per element, so that a pathological schema cannot
/// make validation of a large event quadratic without bound.
const MATCH_BUDGET: usize = 1_000_000;

/// One registered event type.
#[derive(Debug, Clone)]
struct EventDef {
    schema: usize,
    ty: TypeRef,
}

/// Every known event type with its schema. `SchemaSet::default()` is empty (not even the
/// core events); [`SchemaSet::load`] is the usual way to get one.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    schemas: Vec<Schema>,
    events: BTreeMap<String, EventDef>,
    ignored: Vec<String>,
}

impl SchemaSet {
    /// Loads the core schemas, then every `*.xsd` file in `dir` (in file-name order). The
    /// event name is the file's base name; a name already known keeps its first schema,
    /// so the core events cannot be replaced (see [`SchemaSet::ignored`]). A file that
    /// cannot be read or parsed is an error naming it.
    pub fn load(dir: Option<&Path>) -> Result<SchemaSet, SchemaError> {
        let mut set = SchemaSet::default();
        for (name, text) in BUILTIN {
            set.add(name, &format!("built-in {name}.xsd"), text)?;
        }
        if let Some(dir) = dir {
            let io = |err| SchemaError::Io {
                path: dir.to_path_buf(),
                err,
            };
            let mut files = Vec::new();
            for entry in fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.extension().is_some_and(|e| e == "xsd") && path.is_file() {
                    files.push(path);
                }
            }
            files.sort();
            for path in files {
                set.add_file(&path)?;
            }
        }
        Ok(set)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), SchemaError> {
        let shown = path.display().to_string();
        let invalid = |message: String| SchemaError::Invalid {
            source_name: shown.clone(),
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| invalid("file name is not valid UTF-8".into()))?;
        let size = fs::metadata(path)
            .map_err(|err| SchemaError::Io {
                path: path.to_path_buf(),
                err,
            })?
            .len();
        // Checked before reading so that a huge file is never loaded into memory.
        if size > xsd::MAX_XSD_BYTES as u64 {
            return Err(invalid(format!("larger than {} bytes", xsd::MAX_XSD_BYTES)));
        }
        let bytes = fs::read(path).map_err(|err| SchemaError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        self.add(name, &shown, &text)
    }

    /// Registers the schema `text` for event `name`; `source_name` is used in errors. The
    /// text is parsed even when the name is already taken, so a broken file never passes.
    pub fn add(&mut self, name: &str, source_name: &str, text: &str) -> Result<(), SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            source_name: source_name.to_string(),
            message,
        };
        if !is_ncname(name) {
            return Err(invalid(format!("'{name}' is not a valid event name")));
        }
        let schema = xsd::parse_schema(text, EVENTS_NS).map_err(invalid)?;
        let ty = schema.event_type(name).ok_or_else(|| {
            invalid(format!(
                "declares neither an element nor a complex type named {name}"
            ))
        })?;
        if matches!(ty, TypeRef::Builtin(_) | TypeRef::Simple(_)) {
            return Err(invalid(format!("event {name} must have a complex type")));
        }
        if self.events.contains_key(name) {
            self.ignored.push(source_name.to_string());
            return Ok(());
        }
        self.schemas.push(schema);
        self.events.insert(
            name.to_string(),
            EventDef {
                schema: self.schemas.len() - 1,
                ty,
            },
        );
        Ok(())
    }

    /// Names of the known event types, sorted.
    pub fn event_names(&self) -> impl Iterator<Item = &str> {
        self.events.keys().map(String::as_str)
    }

    /// Whether `name` is a known event type.
    pub fn contains(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    /// Schema sources that were skipped because their event name was already known.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Checks an event document: well-formed, root `Event` in the events namespace with
    /// exactly one child element, a known event type, and content valid against its schema.
    pub fn validate(&self, xml: &str) -> Result<ValidatedEvent, EventError> {
        let root =
            dom::parse(xml, MAX_EVENT_BYTES, MAX_EVENT_DEPTH).map_err(EventError::Malformed)?;
        if root.local_name() != "Event" || root.namespace() != Some(EVENTS_NS) {
            return Err(EventError::NotAnEvent(describe(&root)));
        }
        if let Some(a) = root.attrs().first() {
            return Err(EventError::Envelope(format!(
                "unexpected attribute '{}'",
                a.local
            )));
        }
        check_no_text(&root).map_err(EventError::Envelope)?;
        let kids: Vec<&Element> = root.elements().collect();
        let event = match kids.as_slice() {
            [one] => *one,
            _ => {
                return Err(EventError::Envelope(format!(
                    "must have exactly one child element, found {}",
                    kids.len()
                )))
            }
        };
        let name = event.local_name().to_string();
        let def = match self.events.get(&name) {
            Some(d) if event.namespace() == Some(EVENTS_NS) => d,
            Some(_) => {
                return Err(EventError::Envelope(format!(
                    "child {} is not in namespace {EVENTS_NS}",
                    describe(event)
                )))
            }
            None => return Err(EventError::UnknownEvent(name)),
        };
        let schema = &self.schemas[def.schema];
        check_element(schema, def.ty, event, &name)?;
        let id = event
            .child("Id")
            .map(|e| e.text().trim_matches(is_xml_space).to_string());
        Ok(ValidatedEvent {
            name,
            id,
            element: event.clone(),
            body: strip_declaration(xml).to_string(),
        })
    }
}

/// `{namespace}local` or just `local`, for messages.
fn describe(el: &Element) -> String {
    match el.namespace() {
        Some(ns) => format!("{{{ns}}}{}", el.local_name()),
        None => el.local_name().to_string(),
    }
}

/// Drops a leading byte order mark, whitespace and XML declaration (the publisher writes
/// its own declaration), trimmed.
pub fn strip_declaration(xml: &str) -> &str {
    let t = xml
        .trim_start_matches('\u{feff}')
        .trim_matches(is_xml_space);
    if t.starts_with("<?xml") && t[5..].starts_with(|c: char| is_xml_space(c) || c == '?') {
        if let Some(end) = t.find("?>") {
            return t[end + 2..].trim_matches(is_xml_space);
        }
    }
    t
}

/// Loose NCName check for event names: they become element names and ACL topic parts.
pub fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn check_no_text(el: &Element) -> Result<(), String> {
    for n in el.nodes() {
        if let Node::Text(t) = n {
            let t = t.trim_matches(is_xml_space);
            if !t.is_empty() {
                return Err(format!("unexpected text {}", quote(t)));
            }
        }
    }
    Ok(())
}

/// Validates one element against its type. Recursion depth is bounded by the document
/// depth limit enforced by the parser.
fn check_element(schema: &Schema, ty: TypeRef, el: &Element, path: &str) -> Result<(), EventError> {
    let invalid = |message: String| EventError::Invalid {
        path: path.to_string(),
        message,
    };
    if let Some(a) = el.attrs().first() {
        return Err(invalid(format!("unexpected attribute '{}'", a.local)));
    }
    let TypeRef::Complex(ci) = ty else {
        if let Some(child) = el.elements().next() {
            return Err(invalid(format!(
                "unexpected element {}, a simple value is expected",
                child.local_name()
            )));
        }
        return schema.check_simple(ty, &el.text()).map_err(invalid);
    };
    check_no_text(el).map_err(invalid)?;
    let kids: Vec<&Element> = el.elements().collect();
    let Some(content) = &schema.complex[ci].content else {
        return match kids.first() {
            Some(k) => Err(invalid(format!(
                "unexpected element {}, no content is allowed",
                k.local_name()
            ))),
            None => Ok(()),
        };
    };
    let mut m = Matcher {
        kids: &kids,
        furthest: 0,
        expected: BTreeMap::new(),
        budget: MATCH_BUDGET,
    };
    let ends = m.particle(content, &BTreeSet::from([0]), true);
    if m.budget == 0 {
        return Err(invalid("content too complex to validate".into()));
    }
    if !ends.contains(&kids.len()) {
        return Err(invalid(m.explain(content)));
    }
    let mut decls = BTreeMap::new();
    collect_decls(content, &mut decls);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &kids {
        *counts.entry(k.local_name()).or_default() += 1;
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &kids {
        let key = (k.namespace(), k.local_name());
        let Some(decl) = decls.get(&key) else {
            // The matcher accepted the child, so its declaration exists.
            return Err(invalid(format!(
                "internal: no declaration for {}",
                k.local_name()
            )));
        };
        let nth = seen.entry(k.local_name()).or_default();
        *nth += 1;
        let child_path = if counts[k.local_name()] > 1 {
            format!("{path}/{}[{nth}]", k.local_name())
        } else {
            format!("{path}/{}", k.local_name())
        };
        check_element(schema, decl.ty, k, &child_path)?;
    }
    Ok(())
}

fn collect_decls<'s>(
    p: &'s Particle,
    out: &mut BTreeMap<(Option<&'s str>, &'s str), &'s ElementDecl>,
) {
    match &p.term {
        Term::Element(d) => {
            out.entry((d.ns.as_deref(), d.name.as_str())).or_insert(d);
        }
        Term::Group(_, kids) => kids.iter().for_each(|k| collect_decls(k, out)),
    }
}

/// Matches a list of child elements against a content model by tracking the set of
/// positions each particle can end at; the sets are bounded by the number of children,
/// so there is no exponential backtracking. It also remembers the furthest position
/// reached and what was expected there, for the error message.
struct Matcher<'a> {
    kids: &'a [&'a Element],
    furthest: usize,
    /// Element names tried at `furthest` and not found, with whether they were required.
    expected: BTreeMap<String, bool>,
    budget: usize,
}

impl Matcher<'_> {
    fn advance(&mut self, pos: usize) {
        if pos > self.furthest {
            self.furthest = pos;
            self.expected.clear();
        }
    }

    fn miss(&mut self, pos: usize, name: &str, required: bool) {
        self.advance(pos);
        if pos == self.furthest {
            let r = self.expected.entry(name.to_string()).or_insert(false);
            *r |= required;
        }
    }

    fn matches(&self, pos: usize, d: &ElementDecl) -> bool {
        self.kids
            .get(pos)
            .is_some_and(|k| k.local_name() == d.name && k.namespace() == d.ns.as_deref())
    }

    /// End positions reachable by matching `p` (with its occurrence bounds) from `starts`.
    fn particle(
        &mut self,
        p: &Particle,
        starts: &BTreeSet<usize>,
        required: bool,
    ) -> BTreeSet<usize> {
        let mut result = BTreeSet::new();
        if p.min == 0 {
            result.extend(starts.iter().copied());
        }
        let mut current = starts.clone();
        let mut count: u32 = 0;
        while !current.is_empty() && self.budget > 0 {
            if let Max::Bounded(m) = p.max {
                if count >= m {
                    break;
                }
            }
            let next = self.term(&p.term, &current, required && count < p.min);
            count += 1;
            if count >= p.min {
                let before = result.len();
                result.extend(next.iter().copied());
                // Every position in `result` has already been expanded, so no new
                // positions means no further iteration can find any.
                if result.len() == before && count > p.min {
                    break;
                }
            }
            current = next;
        }
        result
    }

    fn term(&mut self, t: &Term, starts: &BTreeSet<usize>, required: bool) -> BTreeSet<usize> {
        self.budget = self.budget.saturating_sub(starts.len());
        match t {
            Term::Element(d) => {
                let mut out = BTreeSet::new();
                for &pos in starts {
                    if self.matches(pos, d) {
                        self.advance(pos + 1);
                        out.insert(pos + 1);
                    } else {
                        self.miss(pos, &d.name, required);
                    }
                }
                out
            }
            Term::Group(Compositor::Sequence, members) => {
                let mut set = starts.clone();
                for m in members {
                    set = self.particle(m, &set, required);
                    if set.is_empty() {
                        break;
                    }
                }
                set
            }
            Term::Group(Compositor::Choice, members) => {
                let mut out = BTreeSet::new();
                for m in members {
                    out.extend(self.particle(m, starts, required));
                }
                out
            }
            Term::Group(Compositor::All, members) => {
                let mut out = BTreeSet::new();
                for &start in starts {
                    if let Some(end) = self.all(members, start, required) {
                        out.insert(end);
                    }
                }
                out
            }
        }
    }

    /// xs:all: consume children in any order, each member at most once; succeed if every
    /// required member was seen.
    fn all(&mut self, members: &[Particle], start: usize, required: bool) -> Option<usize> {
        let mut seen = vec![false; members.len()];
        let mut pos = start;
        loop {
            let hit = members.iter().enumerate().position(|(i, m)| {
                !seen[i] && matches!(&m.term, Term::Element(d) if m.max != Max::Bounded(0) && self.matches(pos, d))
            });
            match hit {
                Some(i) => {
                    seen[i] = true;
                    pos += 1;
                    self.advance(pos);
                }
                None => break,
            }
        }
        // Once any member is present the group occurs, so its required members must too.
        let required = required || pos > start;
        let mut complete = true;
        for (m, s) in members.iter().zip(&seen) {
            if let (false, Term::Element(d)) = (*s, &m.term) {
                self.miss(pos, &d.name, required && m.min > 0);
                complete &= m.min == 0;
            }
        }
        complete.then_some(pos)
    }

    /// Describes why matching stopped short.
    fn explain(&self, content: &Particle) -> String {
        let list = |names: Vec<&String>| {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let required: Vec<&String> = self
            .expected
            .iter()
            .filter(|(_, r)| **r)
            .map(|(n, _)| n)
            .collect();
        let all: Vec<&String> = self.expected.keys().collect();
        let Some(kid) = self.kids.get(self.furthest) else {
            return match required.as_slice() {
                [one] => format!("missing required element {one}"),
                [] => format!("incomplete content, expected {}", list(all)),
                _ => format!("missing required element, one of {}", list(required)),
            };
        };
        let mut decls = BTreeMap::new();
        collect_decls(content, &mut decls);
        let known = decls.contains_key(&(kid.namespace(), kid.local_name()));
        let what = if known {
            format!(
                "element {} is out of place or occurs too often",
                kid.local_name()
            )
        } else if kid.namespace() != Some(EVENTS_NS) {
            format!("unexpected element {}", describe(kid))
        } else {
            format!("unexpected element {}", kid.local_name())
        };
        if all.is_empty() {
            what
        } else {
            format!("{what}, expected {}", list(all))
        }
    }
}

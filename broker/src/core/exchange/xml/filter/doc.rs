//! A message body read once into a compact tree for the compiled filter: elements with
//! their namespace-resolved names, attributes and the span of their text. Bodies this
//! reader is not sure of (a DOCTYPE, anything not well-formed, control characters, very
//! deep nesting) give `None`, and then the XPath engine, which decides on them as before.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// The document node.
pub const ROOT: u32 = 0;
/// No node.
pub(super) const NONE: u32 = u32::MAX;
/// Deepest element nesting read (the engine's path has the same limit).
const MAX_DEPTH: usize = 256;

/// A span of [`Doc::strings`] or [`Doc::text`].
type Span = (u32, u32);

#[derive(Debug)]
pub(super) struct Node {
    pub ns: Span,
    pub local: Span,
    pub first_child: u32,
    pub next_sibling: u32,
    /// Its attributes: a span of [`Doc::attrs`].
    pub attrs: (u32, u32),
    /// Its string value: a span of [`Doc::text`] (all text below it, in order).
    pub text: Span,
}

#[derive(Debug)]
pub(super) struct Attr {
    pub ns: Span,
    pub local: Span,
    pub value: Span,
}

/// A parsed body.
#[derive(Debug)]
pub struct Doc {
    pub(super) nodes: Vec<Node>,
    pub(super) attrs: Vec<Attr>,
    strings: String,
    text: String,
}

impl Doc {
    /// Reads a body; `None` when the compiled filter should leave it to the engine.
    pub fn parse(body: &[u8]) -> Option<Doc> {
        // Carriage returns (line-end normalisation), other control characters and the
        // non-characters U+FFFE and U+FFFF are the engine's to judge.
        if body
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n'))
            || body
                .windows(3)
                .any(|w| w == [0xEF, 0xBF, 0xBE] || w == [0xEF, 0xBF, 0xBF])
        {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        let mut doc = Doc {
            nodes: vec![Node {
                ns: (0, 0),
                local: (0, 0),
                first_child: NONE,
                next_sibling: NONE,
                attrs: (0, 0),
                text: (0, 0),
            }],
            attrs: Vec::new(),
            strings: String::new(),
            text: String::new(),
        };
        let mut reader = NsReader::from_str(text);
        // The open elements, each with its last child so far.
        let mut open: Vec<(u32, u32)> = vec![(ROOT, NONE)];
        let mut roots = 0;
        let mut first = true;
        loop {
            let (ns, event) = reader.read_resolved_event().ok()?;
            // Owned at once: the resolved name borrows the reader.
            let ns = match &event {
                Event::Start(_) | Event::Empty(_) => namespace(ns)?,
                _ => String::new(),
            };
            match event {
                Event::Start(_) | Event::Empty(_) if open.len() > MAX_DEPTH => return None,
                Event::Start(ref e) | Event::Empty(ref e) => {
                    if open.len() == 1 {
                        roots += 1;
                        if roots > 1 {
                            return None;
                        }
                    }
                    let empty = matches!(event, Event::Empty(_));
                    let id = doc.element(&reader, ns, e)?;
                    let (parent, last) = open.last_mut()?;
                    if *last == NONE {
                        doc.nodes[*parent as usize].first_child = id;
                    } else {
                        doc.nodes[*last as usize].next_sibling = id;
                    }
                    *last = id;
                    if !empty {
                        open.push((id, NONE));
                    }
                }
                Event::End(_) => {
                    let (id, _) = open.pop()?;
                    if open.is_empty() {
                        return None;
                    }
                    doc.nodes[id as usize].text.1 = doc.text_len()?;
                }
                Event::Text(t) => {
                    let raw: &[u8] = &t;
                    if open.len() == 1 {
                        // Outside the root only white space, and written as such.
                        if !raw.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n')) {
                            return None;
                        }
                    } else {
                        if raw.windows(3).any(|w| w == b"]]>") {
                            return None;
                        }
                        doc.text.push_str(&t.unescape().ok()?);
                    }
                }
                Event::CData(c) => {
                    if open.len() == 1 {
                        return None;
                    }
                    doc.text.push_str(std::str::from_utf8(&c).ok()?);
                }
                Event::Comment(c) => {
                    let c: &[u8] = &c;
                    if c.windows(2).any(|w| w == b"--") || c.ends_with(b"-") {
                        return None;
                    }
                }
                Event::PI(p) => {
                    let target = std::str::from_utf8(p.target()).ok()?;
                    if !is_name(target) || target.eq_ignore_ascii_case("xml") {
                        return None;
                    }
                }
                // Only as the very first thing, and only version 1.0 in UTF-8.
                Event::Decl(d) if first && body.starts_with(b"<?xml ") => {
                    if d.version().ok()?.as_ref() != b"1.0" {
                        return None;
                    }
                    if let Some(enc) = d.encoding() {
                        if !enc.ok()?.eq_ignore_ascii_case(b"utf-8") {
                            return None;
                        }
                    }
                    if let Some(sa) = d.standalone() {
                        if !matches!(sa.ok()?.as_ref(), b"yes" | b"no") {
                            return None;
                        }
                    }
                }
                Event::Decl(_) | Event::DocType(_) => return None,
                Event::Eof => break,
            }
            first = false;
        }
        if open.len() != 1 || roots != 1 {
            return None;
        }
        doc.nodes[ROOT as usize].text = (0, doc.text_len()?);
        Some(doc)
    }

    fn text_len(&self) -> Option<u32> {
        u32::try_from(self.text.len()).ok()
    }

    fn keep(&mut self, s: &str) -> Option<Span> {
        let start = u32::try_from(self.strings.len()).ok()?;
        self.strings.push_str(s);
        Some((start, u32::try_from(self.strings.len()).ok()?))
    }

    /// Adds an element (text span open until its end) and its attributes.
    fn element(&mut self, reader: &NsReader<&[u8]>, ns: String, e: &BytesStart) -> Option<u32> {
        let qname = std::str::from_utf8(e.name().into_inner()).ok()?;
        if !is_qname(qname) || qname.starts_with("xmlns:") || !attributes_spaced(e.attributes_raw())
        {
            return None;
        }
        let local = std::str::from_utf8(e.local_name().into_inner()).ok()?;
        let ns = self.keep(&ns)?;
        let local = self.keep(local)?;
        let first_attr = u32::try_from(self.attrs.len()).ok()?;
        for a in e.attributes() {
            let a = a.ok()?;
            let key = std::str::from_utf8(a.key.into_inner()).ok()?;
            // Values the parser would normalise (white space) or refuse (`<`) are the
            // engine's, namespace declarations' included.
            if !is_qname(key) || a.value.iter().any(|b| matches!(b, b'<' | b'\t' | b'\n')) {
                return None;
            }
            if key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            // `xml:` attributes (`xml:id` is normalised and checked) and `p:xmlns` too.
            if key.starts_with("xml:") || key.ends_with(":xmlns") {
                return None;
            }
            let (ans, alocal) = reader.resolve_attribute(a.key);
            let ans = namespace(ans)?;
            let alocal = std::str::from_utf8(alocal.into_inner()).ok()?;
            if !is_name(alocal) {
                return None;
            }
            let value = a.unescape_value().ok()?;
            let attr = Attr {
                ns: self.keep(&ans)?,
                local: self.keep(alocal)?,
                value: self.keep(&value)?,
            };
            self.attrs.push(attr);
        }
        let start = self.text_len()?;
        self.nodes.push(Node {
            ns,
            local,
            first_child: NONE,
            next_sibling: NONE,
            attrs: (first_attr, u32::try_from(self.attrs.len()).ok()?),
            text: (start, start),
        });
        u32::try_from(self.nodes.len() - 1).ok()
    }

    pub(super) fn string(&self, span: Span) -> &str {
        self.strings
            .get(span.0 as usize..span.1 as usize)
            .unwrap_or_default()
    }

    /// The string value of an element (or of the document).
    pub(super) fn node_text(&self, node: u32) -> &str {
        let (a, b) = self.nodes[node as usize].text;
        self.text.get(a as usize..b as usize).unwrap_or_default()
    }
}

/// The namespace URI of a resolved name (`""` for none); `None` for an undeclared prefix.
fn namespace(r: ResolveResult) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(std::str::from_utf8(ns.into_inner()).ok()?.to_string()),
        ResolveResult::Unbound => Some(String::new()),
        ResolveResult::Unknown(_) => None,
    }
}

/// A name XML allows, conservatively: ASCII only (names beyond it are the engine's).
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A name, or a prefix and a name.
fn is_qname(s: &str) -> bool {
    match s.split_once(':') {
        Some((prefix, local)) => is_name(prefix) && is_name(local),
        None => is_name(s),
    }
}

/// Whether every attribute value's closing quote is followed by white space (or the end):
/// `<a x="1"y="2">` is not well-formed, though the reader takes it.
fn attributes_spaced(raw: &[u8]) -> bool {
    let mut quote = None;
    for (i, &b) in raw.iter().enumerate() {
        match quote {
            Some(q) if b == q => {
                quote = None;
                if raw
                    .get(i + 1)
                    .is_some_and(|n| !matches!(n, b' ' | b'\t' | b'\n' | b'/'))
                {
                    return false;
                }
            }
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None => {}
        }
    }
    true
}

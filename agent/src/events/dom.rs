//! A small namespace-aware XML tree, built with quick-xml.
//!
//! Both the XSD loader and the event validator walk whole documents, so one bounded tree
//! builder serves both. Limits on size and depth are enforced here so that no later
//! recursion can run away on hostile input.

use std::collections::BTreeMap;
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The namespace bound to the `xml` prefix by definition.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Prefix bindings in scope at an element; the empty prefix is the default namespace.
pub(crate) type Scope = Arc<BTreeMap<String, String>>;

/// An element of a parsed document.
#[derive(Debug, Clone)]
pub struct Element {
    ns: Option<String>,
    local: String,
    scope: Scope,
    attrs: Vec<Attr>,
    children: Vec<Node>,
}

/// An attribute other than a namespace declaration.
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub(crate) ns: Option<String>,
    pub(crate) local: String,
    pub(crate) value: String,
}

/// Content of an element: child elements and text, in document order.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// The local name (without prefix).
    pub fn local_name(&self) -> &str {
        &self.local
    }

    /// The namespace URI, if the element is in one.
    pub fn namespace(&self) -> Option<&str> {
        self.ns.as_deref()
    }

    /// The child elements, in document order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this local name.
    pub fn child(&self, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.local == local)
    }

    /// The text directly inside this element (child elements' text not included).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    pub(crate) fn attrs(&self) -> &[Attr] {
        &self.attrs
    }

    pub(crate) fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// Value of an attribute in no namespace.
    pub(crate) fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// Resolves a QName-valued attribute (`xs:string`) against this element's bindings.
    pub(crate) fn resolve_qname<'v>(
        &self,
        value: &'v str,
    ) -> Result<(Option<&str>, &'v str), String> {
        let (prefix, local) = match value.split_once(':') {
            Some((p, l)) => (p, l),
            None => ("", value),
        };
        if local.is_empty() || local.contains(':') {
            return Err(format!("'{value}' is not a valid qualified name"));
        }
        match self.scope.get(prefix) {
            Some(uri) => Ok((Some(uri.as_str()), local)),
            None if prefix.is_empty() => Ok((None, local)),
            None => Err(format!("prefix '{prefix}' of '{value}' is not declared")),
        }
    }
}

/// Parses `text` into its root element, refusing documents over `max_bytes` or nested deeper
/// than `max_depth` elements. Errors are plain messages; callers add their own context.
pub(crate) fn parse(text: &str, max_bytes: usize, max_depth: usize) -> Result<Element, String> {
    if text.len() > max_bytes {
        return Err(format!("document is larger than {max_bytes} bytes"));
    }
    let mut reader = Reader::from_str(text);
    // Empty elements become start+end so that one code path handles both.
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut seen_anything = false;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| format!("malformed XML near byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Decl(_) => {
                if seen_anything {
                    return Err(format!("XML declaration not at the start (byte {pos})"));
                }
            }
            Event::DocType(_) => {
                // Entity declarations are a classic resource attack and events never need them.
                return Err("DOCTYPE declarations are not allowed".into());
            }
            Event::Start(start) => {
                if root.is_some() {
                    return Err(format!("more than one root element (byte {pos})"));
                }
                if stack.len() >= max_depth {
                    return Err(format!("elements nest deeper than {max_depth} levels"));
                }
                let parent_scope = match stack.last() {
                    Some(p) => p.scope.clone(),
                    None => {
                        let mut m = BTreeMap::new();
                        m.insert("xml".to_string(), XML_NS.to_string());
                        Arc::new(m)
                    }
                };
                stack.push(open_element(&start, parent_scope)?);
            }
            Event::End(_) => {
                // quick-xml has already checked that the end name matches the start name.
                let Some(done) = stack.pop() else {
                    return Err(format!("unexpected end tag (byte {pos})"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(done)),
                    None => root = Some(done),
                }
            }
            Event::Empty(_) => {
                // Not produced while expand_empty_elements is set.
                return Err("internal: unexpected empty-element event".into());
            }
            Event::Text(t) => {
                let s = t
                    .unescape()
                    .map_err(|e| format!("bad character data near byte {pos}: {e}"))?;
                add_text(&mut stack, &s, pos)?;
            }
            Event::CData(c) => {
                let raw = c.into_inner();
                let s = std::str::from_utf8(&raw)
                    .map_err(|_| format!("CDATA is not UTF-8 (byte {pos})"))?;
                add_text(&mut stack, s, pos)?;
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
        seen_anything = true;
    }
    if !stack.is_empty() {
        return Err("document ends inside an element".into());
    }
    root.ok_or_else(|| "document has no root element".to_string())
}

fn add_text(stack: &mut [Element], s: &str, pos: u64) -> Result<(), String> {
    check_chars(s)
        .map_err(|c| format!("character U+{c:04X} is not allowed in XML (byte {pos})"))?;
    match stack.last_mut() {
        Some(el) => {
            if let Some(Node::Text(prev)) = el.children.last_mut() {
                prev.push_str(s);
            } else {
                el.children.push(Node::Text(s.to_string()));
            }
            Ok(())
        }
        None if s.trim_matches(is_xml_space).is_empty() => Ok(()),
        None => Err(format!("text outside the root element (byte {pos})")),
    }
}

fn open_element(start: &BytesStart<'_>, parent_scope: Scope) -> Result<Element, String> {
    let qname_raw = start.name();
    let qname = utf8(qname_raw.as_ref())?;
    let mut raw_attrs = Vec::new();
    let mut decls: Vec<(String, String)> = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| format!("bad attribute in <{qname}>: {e}"))?;
        let key = utf8(attr.key.as_ref())?;
        let value = attr
            .unescape_value()
            .map_err(|e| format!("bad attribute value in <{qname}>: {e}"))?;
        check_chars(&value)
            .map_err(|c| format!("character U+{c:04X} is not allowed in XML (<{qname}>)"))?;
        if key == "xmlns" {
            decls.push((String::new(), value.into_owned()));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(format!(
                    "prefix '{p}' bound to an empty namespace in <{qname}>"
                ));
            }
            decls.push((p.to_string(), value.into_owned()));
        } else {
            raw_attrs.push((key.to_string(), value.into_owned()));
        }
    }
    let scope = if decls.is_empty() {
        parent_scope
    } else {
        let mut m = (*parent_scope).clone();
        for (p, uri) in decls {
            if p.is_empty() && uri.is_empty() {
                // xmlns="" undeclares the default namespace.
                m.remove("");
            } else {
                m.insert(p, uri);
            }
        }
        Arc::new(m)
    };
    let (ns, local) = resolve(&scope, qname, true)?;
    let mut attrs = Vec::with_capacity(raw_attrs.len());
    for (key, value) in raw_attrs {
        let (ans, alocal) = resolve(&scope, &key, false)?;
        if attrs
            .iter()
            .any(|a: &Attr| a.ns == ans && a.local == alocal)
        {
            return Err(format!("attribute '{key}' repeated in <{qname}>"));
        }
        attrs.push(Attr {
            ns: ans,
            local: alocal,
            value,
        });
    }
    Ok(Element {
        ns,
        local,
        scope,
        attrs,
        children: Vec::new(),
    })
}

/// Splits a tag or attribute name and resolves its prefix. Unprefixed attributes are in no
/// namespace; unprefixed elements take the default namespace.
fn resolve(
    scope: &Scope,
    qname: &str,
    is_element: bool,
) -> Result<(Option<String>, String), String> {
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", qname),
    };
    if local.is_empty() || local.contains(':') || (prefix.is_empty() && qname.contains(':')) {
        return Err(format!("'{qname}' is not a valid name"));
    }
    if prefix.is_empty() {
        let ns = if is_element {
            scope.get("").cloned()
        } else {
            None
        };
        return Ok((ns, local.to_string()));
    }
    match scope.get(prefix) {
        Some(uri) => Ok((Some(uri.clone()), local.to_string())),
        None => Err(format!(
            "namespace prefix '{prefix}' of '{qname}' is not declared"
        )),
    }
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "name is not valid UTF-8".to_string())
}

/// XML's whitespace characters (not Unicode's wider set).
pub(crate) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Returns the first character outside XML 1.0's `Char` production.
fn check_chars(s: &str) -> Result<(), u32> {
    match s.chars().find(|&c| !is_xml_char(c)) {
        Some(c) => Err(c as u32),
        None => Ok(()),
    }
}

/// XML 1.0 `Char`: tab, newline, carriage return and everything from U+0020 except the
/// two non-characters U+FFFE and U+FFFF (surrogates cannot occur in a Rust `char`).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_resolve_for_elements_not_unprefixed_attributes() {
        let root = parse(
            r#"<a xmlns="urn:x" xmlns:p="urn:p" k="v" p:q="w"><p:b/><c xmlns=""/></a>"#,
            1024,
            8,
        )
        .unwrap();
        assert_eq!(root.namespace(), Some("urn:x"));
        assert_eq!(root.attrs()[0].ns, None);
        assert_eq!(root.attrs()[1].ns.as_deref(), Some("urn:p"));
        let kids: Vec<_> = root.elements().collect();
        assert_eq!(kids[0].namespace(), Some("urn:p"));
        assert_eq!(kids[1].namespace(), None);
    }

    #[test]
    fn limits_and_bad_documents_are_refused() {
        assert!(parse("<a><b><c/></b></a>", 1024, 2)
            .unwrap_err()
            .contains("deeper"));
        assert!(parse("<a/>", 3, 8).unwrap_err().contains("larger"));
        assert!(parse("<a></b>", 1024, 8).is_err());
        assert!(parse("<a/><b/>", 1024, 8).is_err());
        assert!(parse("<a>\u{1}</a>", 1024, 8).is_err());
        assert!(parse("<!DOCTYPE a><a/>", 1024, 8).is_err());
        assert!(parse("<p:a/>", 1024, 8).is_err());
        assert!(parse("", 1024, 8).is_err());
        assert!(parse("<a>", 1024, 8).is_err());
        assert!(parse("<a/>junk", 1024, 8).is_err());
    }

    #[test]
    fn text_and_cdata_merge_and_entities_unescape() {
        let root = parse("<a>x &amp; <![CDATA[<y>]]>&#65;</a>", 1024, 8).unwrap();
        assert_eq!(root.text(), "x & <y>A");
    }
}

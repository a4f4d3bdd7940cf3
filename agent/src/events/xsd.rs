//! Loader for the XSD subset that event schemas use.
//!
//! Supported: `xs:schema` (targetNamespace, elementFormDefault), top-level `xs:element`,
//! named and inline `xs:complexType` with nested `xs:sequence` / `xs:all` / `xs:choice`,
//! `minOccurs` / `maxOccurs`, built-in simple types and named or inline `xs:simpleType`
//! restrictions with enumeration, range and length facets. `xs:annotation` is skipped.
//! Anything else is refused at load time, so a schema never silently means less than it says.

use std::collections::BTreeMap;

use super::dom::{self, Element, Node};
use super::simple::Builtin;

/// The XML Schema namespace.
pub(crate) const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";

/// Largest schema file accepted.
pub(crate) const MAX_XSD_BYTES: usize = 1024 * 1024;
/// Deepest schema document accepted.
const MAX_XSD_DEPTH: usize = 64;
/// Largest minOccurs/maxOccurs accepted; bigger bounds only make matching slow.
const MAX_OCCURS: u32 = 10_000;

/// Upper occurrence bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Max {
    Bounded(u32),
    Unbounded,
}

/// How an element's content is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRef {
    Builtin(Builtin),
    /// Index into [`Schema::simple`].
    Simple(usize),
    /// Index into [`Schema::complex`].
    Complex(usize),
}

/// A local or top-level element declaration.
#[derive(Debug, Clone)]
pub(crate) struct ElementDecl {
    pub(crate) name: String,
    pub(crate) ns: Option<String>,
    pub(crate) ty: TypeRef,
}

/// Model group kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compositor {
    Sequence,
    All,
    Choice,
}

/// What a particle matches.
#[derive(Debug, Clone)]
pub(crate) enum Term {
    Element(ElementDecl),
    Group(Compositor, Vec<Particle>),
}

/// A term with occurrence bounds.
#[derive(Debug, Clone)]
pub(crate) struct Particle {
    pub(crate) term: Term,
    pub(crate) min: u32,
    pub(crate) max: Max,
}

/// Element-only content; `None` means the element must be empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct ComplexType {
    pub(crate) content: Option<Particle>,
}

/// Base of a simple type restriction.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SimpleBase {
    Builtin(Builtin),
    Named(usize),
}

/// Restriction facets; every facet present must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facets {
    pub(crate) enumeration: Vec<String>,
    pub(crate) min_inclusive: Option<f64>,
    pub(crate) max_inclusive: Option<f64>,
    pub(crate) min_exclusive: Option<f64>,
    pub(crate) max_exclusive: Option<f64>,
    pub(crate) length: Option<usize>,
    pub(crate) min_length: Option<usize>,
    pub(crate) max_length: Option<usize>,
}

/// A simple type defined by restriction.
#[derive(Debug, Clone)]
pub(crate) struct SimpleType {
    pub(crate) name: String,
    pub(crate) base: SimpleBase,
    pub(crate) facets: Facets,
}

/// One loaded schema document.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    pub(crate) target_ns: String,
    pub(crate) complex: Vec<ComplexType>,
    pub(crate) simple: Vec<SimpleType>,
    pub(crate) elements: BTreeMap<String, ElementDecl>,
    complex_names: BTreeMap<String, usize>,
    simple_names: BTreeMap<String, usize>,
}

impl Schema {
    /// The type of the event called `name`: the top-level element of that name, else the
    /// complex type of that name (the original combined schema typed each event that way).
    pub(crate) fn event_type(&self, name: &str) -> Option<TypeRef> {
        if let Some(e) = self.elements.get(name) {
            return Some(e.ty);
        }
        self.complex_names.get(name).map(|&i| TypeRef::Complex(i))
    }

    /// The builtin at the bottom of a simple type's derivation chain.
    pub(crate) fn builtin_of(&self, mut idx: usize) -> Builtin {
        // Chains are checked for cycles at load, so this terminates.
        loop {
            match self.simple[idx].base {
                SimpleBase::Builtin(b) => return b,
                SimpleBase::Named(i) => idx = i,
            }
        }
    }

    /// Checks a raw text value against a simple type; the error says why it is invalid.
    pub(crate) fn check_simple(&self, ty: TypeRef, raw: &str) -> Result<(), String> {
        let (builtin, mut chain) = match ty {
            TypeRef::Builtin(b) => (b, None),
            TypeRef::Simple(i) => (self.builtin_of(i), Some(i)),
            TypeRef::Complex(_) => return Err("internal: complex type used as simple".into()),
        };
        let v = builtin.normalize(raw);
        if !builtin.check(&v) {
            return Err(format!("{} is not a valid {}", quote(&v), builtin.name()));
        }
        while let Some(i) = chain {
            let st = &self.simple[i];
            check_facets(&st.name, &st.facets, builtin, &v)?;
            chain = match st.base {
                SimpleBase::Named(n) => Some(n),
                SimpleBase::Builtin(_) => None,
            };
        }
        Ok(())
    }
}

/// Quotes a value for an error message, shortened so errors stay readable.
pub(crate) fn quote(v: &str) -> String {
    const MAX: usize = 64;
    match v.char_indices().nth(MAX) {
        Some((i, _)) => format!("'{}…'", &v[..i]),
        None => format!("'{v}'"),
    }
}

fn check_facets(type_name: &str, f: &Facets, b: Builtin, v: &str) -> Result<(), String> {
    if !f.enumeration.is_empty() && !f.enumeration.iter().any(|e| b.normalize(e) == v) {
        return Err(format!(
            "{} is not one of {} (type {type_name})",
            quote(v),
            f.enumeration.join(", ")
        ));
    }
    if let Some(n) = b.number(v) {
        let bad = f.min_inclusive.is_some_and(|m| n < m)
            || f.max_inclusive.is_some_and(|m| n > m)
            || f.min_exclusive.is_some_and(|m| n <= m)
            || f.max_exclusive.is_some_and(|m| n >= m)
            || (n.is_nan() && (f.min_inclusive.is_some() || f.max_inclusive.is_some()));
        if bad {
            return Err(format!(
                "{} is out of the range of type {type_name}",
                quote(v)
            ));
        }
    }
    let len = v.chars().count();
    let bad_len = f.length.is_some_and(|l| len != l)
        || f.min_length.is_some_and(|l| len < l)
        || f.max_length.is_some_and(|l| len > l);
    if bad_len {
        return Err(format!(
            "{} has a length not allowed by type {type_name}",
            quote(v)
        ));
    }
    Ok(())
}

/// Parses one XSD document whose targetNamespace must be `required_ns`. Errors are
/// messages naming the offending construct.
pub(crate) fn parse_schema(text: &str, required_ns: &str) -> Result<Schema, String> {
    let root = dom::parse(text, MAX_XSD_BYTES, MAX_XSD_DEPTH)?;
    if !is_xs(&root, "schema") {
        return Err(format!(
            "root element must be xs:schema, found {}",
            root.local_name()
        ));
    }
    check_attrs(
        &root,
        &[
            "targetNamespace",
            "elementFormDefault",
            "attributeFormDefault",
            "version",
            "id",
        ],
        "xs:schema",
    )?;
    let target_ns = root
        .attr("targetNamespace")
        .ok_or("xs:schema has no targetNamespace")?
        .to_string();
    if target_ns != required_ns {
        return Err(format!(
            "targetNamespace is '{target_ns}', must be {required_ns}"
        ));
    }
    let qualified = match root.attr("elementFormDefault") {
        None | Some("unqualified") => false,
        Some("qualified") => true,
        Some(other) => return Err(format!("bad elementFormDefault '{other}'")),
    };
    let mut p = Parser {
        schema: Schema {
            target_ns,
            complex: Vec::new(),
            simple: Vec::new(),
            elements: BTreeMap::new(),
            complex_names: BTreeMap::new(),
            simple_names: BTreeMap::new(),
        },
        qualified,
    };
    let tops = xs_children(&root, "xs:schema")?;
    // First pass: reserve named types, so references may come before definitions.
    for el in &tops {
        let kind = el.local_name();
        if kind != "complexType" && kind != "simpleType" {
            continue;
        }
        let name = el
            .attr("name")
            .ok_or_else(|| format!("top-level xs:{kind} has no name"))?
            .to_string();
        let s = &mut p.schema;
        let clash = s.complex_names.contains_key(&name) || s.simple_names.contains_key(&name);
        if clash {
            return Err(format!("type '{name}' is defined twice"));
        }
        if kind == "complexType" {
            s.complex_names.insert(name, s.complex.len());
            s.complex.push(ComplexType::default());
        } else {
            s.simple_names.insert(name.clone(), s.simple.len());
            s.simple.push(SimpleType {
                name,
                base: SimpleBase::Builtin(Builtin::String),
                facets: Facets::default(),
            });
        }
    }
    // Second pass: fill them in and read the top-level elements.
    for el in tops {
        match el.local_name() {
            "complexType" => {
                let name = el.attr("name").unwrap_or_default();
                let ctx = format!("xs:complexType '{name}'");
                let ct = p.complex_type(el, &ctx, true)?;
                // Reserved in the first pass under this name.
                if let Some(&idx) = p.schema.complex_names.get(name) {
                    p.schema.complex[idx] = ct;
                }
            }
            "simpleType" => {
                let name = el.attr("name").unwrap_or_default();
                let ctx = format!("xs:simpleType '{name}'");
                let st = p.simple_type(el, &ctx, name, true)?;
                if let Some(&idx) = p.schema.simple_names.get(name) {
                    p.schema.simple[idx] = st;
                }
            }
            "element" => {
                let Term::Element(decl) = p.element(el, true, "xs:schema")?.term else {
                    return Err("internal: element declaration expected".into());
                };
                if p.schema.elements.contains_key(&decl.name) {
                    return Err(format!("element '{}' is declared twice", decl.name));
                }
                p.schema.elements.insert(decl.name.clone(), decl);
            }
            other => return Err(unsupported(other, "xs:schema")),
        }
    }
    p.check_simple_cycles()?;
    Ok(p.schema)
}

struct Parser {
    schema: Schema,
    qualified: bool,
}

impl Parser {
    /// Reads an element declaration and its occurrence bounds.
    fn element(&mut self, el: &Element, top: bool, ctx: &str) -> Result<Particle, String> {
        let name = el
            .attr("name")
            .ok_or_else(|| format!("{ctx}: xs:element without a name (ref= is not supported)"))?
            .to_string();
        let here = format!("{ctx}/xs:element '{name}'");
        if top {
            check_attrs(el, &["name", "type", "id"], &here)?;
        } else {
            check_attrs(
                el,
                &["name", "type", "minOccurs", "maxOccurs", "form", "id"],
                &here,
            )?;
        }
        let qualified = match el.attr("form") {
            None => self.qualified || top,
            Some("qualified") => true,
            Some("unqualified") => false,
            Some(o) => return Err(format!("{here}: bad form '{o}'")),
        };
        let inline = xs_children(el, &here)?;
        let ty = match (el.attr("type"), inline.as_slice()) {
            (Some(t), []) => self.type_ref(el, t, &here)?,
            (None, [one]) if one.local_name() == "complexType" => {
                let ct = self.complex_type(one, &here, false)?;
                self.schema.complex.push(ct);
                TypeRef::Complex(self.schema.complex.len() - 1)
            }
            (None, [one]) if one.local_name() == "simpleType" => {
                let st = self.simple_type(one, &here, &name, false)?;
                self.schema.simple.push(st);
                TypeRef::Simple(self.schema.simple.len() - 1)
            }
            (None, []) => return Err(format!("{here}: no type (xs:anyType is not supported)")),
            (Some(_), _) => return Err(format!("{here}: both type= and an inline type")),
            (None, [one, ..]) => return Err(unsupported(one.local_name(), &here)),
        };
        let (min, max) = occurs(el, &here)?;
        Ok(Particle {
            term: Term::Element(ElementDecl {
                name,
                ns: qualified.then(|| self.schema.target_ns.clone()),
                ty,
            }),
            min,
            max,
        })
    }

    fn complex_type(
        &mut self,
        el: &Element,
        ctx: &str,
        named: bool,
    ) -> Result<ComplexType, String> {
        let allowed: &[&str] = if named {
            &["name", "mixed", "id"]
        } else {
            &["mixed", "id"]
        };
        check_attrs(el, allowed, ctx)?;
        if matches!(el.attr("mixed"), Some("true" | "1")) {
            return Err(format!("{ctx}: mixed content is not supported"));
        }
        let kids = xs_children(el, ctx)?;
        match kids.as_slice() {
            [] => Ok(ComplexType { content: None }),
            [g] => {
                let particle = self.group(g, ctx, true)?;
                Ok(ComplexType {
                    content: Some(particle),
                })
            }
            [_, extra, ..] => Err(unsupported(extra.local_name(), ctx)),
        }
    }

    /// Reads xs:sequence, xs:all or xs:choice. `top` is true directly under a complex type,
    /// the only place XSD 1.0 allows xs:all.
    fn group(&mut self, el: &Element, ctx: &str, top: bool) -> Result<Particle, String> {
        let kind = match el.local_name() {
            "sequence" => Compositor::Sequence,
            "choice" => Compositor::Choice,
            "all" => Compositor::All,
            other => return Err(unsupported(other, ctx)),
        };
        let here = format!("{ctx}/xs:{}", el.local_name());
        check_attrs(el, &["minOccurs", "maxOccurs", "id"], &here)?;
        let (min, max) = occurs(el, &here)?;
        let mut members = Vec::new();
        for kid in xs_children(el, &here)? {
            let p = match (kind, kid.local_name()) {
                (_, "element") => self.element(kid, false, &here)?,
                (Compositor::All, other) => {
                    return Err(format!(
                        "{here}: xs:all may only contain xs:element, found xs:{other}"
                    ))
                }
                (_, "sequence" | "choice") => self.group(kid, &here, false)?,
                (_, "all") => {
                    return Err(format!("{here}: xs:all must be the whole content model"))
                }
                (_, other) => return Err(unsupported(other, &here)),
            };
            members.push(p);
        }
        if kind == Compositor::All {
            if !top {
                return Err(format!("{here}: xs:all must be the whole content model"));
            }
            if min > 1 || max != Max::Bounded(1) {
                return Err(format!("{here}: xs:all occurs at most once"));
            }
            if members
                .iter()
                .any(|m| m.max != Max::Bounded(1) && m.max != Max::Bounded(0))
            {
                return Err(format!("{here}: elements of xs:all occur at most once"));
            }
        }
        check_consistent(&members, &here)?;
        Ok(Particle {
            term: Term::Group(kind, members),
            min,
            max,
        })
    }

    fn simple_type(
        &mut self,
        el: &Element,
        ctx: &str,
        name: &str,
        named: bool,
    ) -> Result<SimpleType, String> {
        let allowed: &[&str] = if named { &["name", "id"] } else { &["id"] };
        check_attrs(el, allowed, ctx)?;
        let kids = xs_children(el, ctx)?;
        let restriction = match kids.as_slice() {
            [r] if r.local_name() == "restriction" => *r,
            [other, ..] => return Err(unsupported(other.local_name(), ctx)),
            [] => return Err(format!("{ctx}: xs:simpleType needs an xs:restriction")),
        };
        let here = format!("{ctx}/xs:restriction");
        check_attrs(restriction, &["base", "id"], &here)?;
        let base_name = restriction
            .attr("base")
            .ok_or_else(|| format!("{here}: no base (inline base types are not supported)"))?;
        let base = match self.type_ref(restriction, base_name, &here)? {
            TypeRef::Builtin(b) => SimpleBase::Builtin(b),
            TypeRef::Simple(i) => SimpleBase::Named(i),
            TypeRef::Complex(_) => {
                return Err(format!("{here}: base '{base_name}' is a complex type"))
            }
        };
        let mut st = SimpleType {
            name: name.to_string(),
            base,
            facets: Facets::default(),
        };
        // The builtin is only known once base chains are resolved; facet values are checked
        // against the nearest known builtin now and fully at validation time.
        let builtin = match base {
            SimpleBase::Builtin(b) => Some(b),
            SimpleBase::Named(_) => None,
        };
        for facet in xs_children(restriction, &here)? {
            let kind = facet.local_name();
            let fctx = format!("{here}/xs:{kind}");
            check_attrs(facet, &["value", "fixed", "id"], &fctx)?;
            let value = facet
                .attr("value")
                .ok_or_else(|| format!("{fctx}: no value"))?;
            let f = &mut st.facets;
            match kind {
                "enumeration" => {
                    if let Some(b) = builtin {
                        let v = b.normalize(value);
                        if !b.check(&v) {
                            return Err(format!(
                                "{fctx}: {} is not a valid {}",
                                quote(&v),
                                b.name()
                            ));
                        }
                    }
                    // Kept raw: it is normalised by the final builtin when compared.
                    f.enumeration.push(value.to_string());
                }
                "minInclusive" | "maxInclusive" | "minExclusive" | "maxExclusive" => {
                    if builtin.is_some_and(|b| !b.is_numeric()) {
                        return Err(format!("{fctx}: range facet on a non-numeric type"));
                    }
                    let n = Builtin::Double
                        .number(value.trim())
                        .filter(|_| Builtin::Double.check(value.trim()))
                        .ok_or_else(|| format!("{fctx}: {} is not a number", quote(value)))?;
                    let slot = match kind {
                        "minInclusive" => &mut f.min_inclusive,
                        "maxInclusive" => &mut f.max_inclusive,
                        "minExclusive" => &mut f.min_exclusive,
                        _ => &mut f.max_exclusive,
                    };
                    *slot = Some(n);
                }
                "length" | "minLength" | "maxLength" => {
                    if builtin.is_some_and(|b| !b.is_stringy()) {
                        return Err(format!("{fctx}: length facet on a non-string type"));
                    }
                    let n: usize = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("{fctx}: {} is not a length", quote(value)))?;
                    let slot = match kind {
                        "length" => &mut f.length,
                        "minLength" => &mut f.min_length,
                        _ => &mut f.max_length,
                    };
                    *slot = Some(n);
                }
                "pattern" => return Err(format!("{fctx}: xs:pattern is not supported")),
                other => return Err(unsupported(other, &here)),
            }
        }
        Ok(st)
    }

    /// Resolves a `type=`/`base=` QName to a builtin or a named type of this schema.
    fn type_ref(&self, el: &Element, qname: &str, ctx: &str) -> Result<TypeRef, String> {
        let (ns, local) = el.resolve_qname(qname).map_err(|e| format!("{ctx}: {e}"))?;
        if ns == Some(XSD_NS) {
            return Builtin::from_local(local)
                .map(TypeRef::Builtin)
                .ok_or_else(|| format!("{ctx}: built-in type '{qname}' is not supported"));
        }
        if ns == Some(self.schema.target_ns.as_str()) {
            if let Some(&i) = self.schema.complex_names.get(local) {
                return Ok(TypeRef::Complex(i));
            }
            if let Some(&i) = self.schema.simple_names.get(local) {
                return Ok(TypeRef::Simple(i));
            }
        }
        Err(format!("{ctx}: unknown type '{qname}'"))
    }

    fn check_simple_cycles(&self) -> Result<(), String> {
        let s = &self.schema;
        for start in 0..s.simple.len() {
            let mut idx = start;
            for _ in 0..=s.simple.len() {
                match s.simple[idx].base {
                    SimpleBase::Builtin(_) => break,
                    SimpleBase::Named(i) if i == start => {
                        return Err(format!(
                            "simple type '{}' derives from itself",
                            s.simple[start].name
                        ))
                    }
                    SimpleBase::Named(i) => idx = i,
                }
            }
        }
        // Facets on types derived from named types could not be checked while parsing,
        // because the builtin at the bottom of the chain was not known yet.
        for st in s
            .simple
            .iter()
            .filter(|t| matches!(t.base, SimpleBase::Named(_)))
        {
            let SimpleBase::Named(base) = st.base else {
                continue;
            };
            let b = s.builtin_of(base);
            let f = &st.facets;
            let ranged = f.min_inclusive.is_some()
                || f.max_inclusive.is_some()
                || f.min_exclusive.is_some()
                || f.max_exclusive.is_some();
            if ranged && !b.is_numeric() {
                return Err(format!(
                    "simple type '{}': range facet on a non-numeric type",
                    st.name
                ));
            }
            let sized = f.length.is_some() || f.min_length.is_some() || f.max_length.is_some();
            if sized && !b.is_stringy() {
                return Err(format!(
                    "simple type '{}': length facet on a non-string type",
                    st.name
                ));
            }
            if let Some(e) = f.enumeration.iter().find(|e| !b.check(&b.normalize(e))) {
                return Err(format!(
                    "simple type '{}': enumeration {} is not a valid {}",
                    st.name,
                    quote(e),
                    b.name()
                ));
            }
        }
        Ok(())
    }
}

/// The validator finds a child's declaration by name, which is sound only if declarations
/// sharing a name inside one content model share a type (XSD's "Element Declarations
/// Consistent" rule).
fn check_consistent(members: &[Particle], ctx: &str) -> Result<(), String> {
    let mut seen: BTreeMap<(Option<String>, String), TypeRef> = BTreeMap::new();
    let mut stack: Vec<&Particle> = members.iter().collect();
    while let Some(p) = stack.pop() {
        match &p.term {
            Term::Element(d) => {
                let key = (d.ns.clone(), d.name.clone());
                if let Some(prev) = seen.insert(key, d.ty) {
                    if prev != d.ty {
                        return Err(format!(
                            "{ctx}: element '{}' declared twice with different types",
                            d.name
                        ));
                    }
                }
            }
            Term::Group(_, kids) => stack.extend(kids.iter()),
        }
    }
    Ok(())
}

fn occurs(el: &Element, ctx: &str) -> Result<(u32, Max), String> {
    let parse = |name: &str, v: &str| -> Result<u32, String> {
        let n: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("{ctx}: {name}={} is not a count", quote(v)))?;
        if n > MAX_OCCURS {
            return Err(format!(
                "{ctx}: {name}={n} exceeds the supported {MAX_OCCURS}"
            ));
        }
        Ok(n)
    };
    let min = match el.attr("minOccurs") {
        Some(v) => parse("minOccurs", v)?,
        None => 1,
    };
    let max = match el.attr("maxOccurs") {
        Some(v) if v.trim() == "unbounded" => Max::Unbounded,
        Some(v) => Max::Bounded(parse("maxOccurs", v)?),
        None => Max::Bounded(1),
    };
    if let Max::Bounded(m) = max {
        if m < min {
            return Err(format!("{ctx}: maxOccurs is less than minOccurs"));
        }
    }
    Ok((min, max))
}

fn is_xs(el: &Element, local: &str) -> bool {
    el.namespace() == Some(XSD_NS) && el.local_name() == local
}

/// The XSD child elements of `el`, skipping annotations; text and foreign elements are errors.
fn xs_children<'e>(el: &'e Element, ctx: &str) -> Result<Vec<&'e Element>, String> {
    let mut out = Vec::new();
    for node in el.nodes() {
        match node {
            Node::Text(t) if t.trim().is_empty() => {}
            Node::Text(t) => return Err(format!("{ctx}: unexpected text {}", quote(t.trim()))),
            Node::Element(e) if e.namespace() != Some(XSD_NS) => {
                return Err(format!(
                    "{ctx}: unexpected element '{}' outside the XSD namespace",
                    e.local_name()
                ))
            }
            Node::Element(e) if e.local_name() == "annotation" => {}
            Node::Element(e) => out.push(e),
        }
    }
    Ok(out)
}

/// Refuses unknown unqualified attributes; attributes in other namespaces are ignored as
/// XSD allows.
fn check_attrs(el: &Element, allowed: &[&str], ctx: &str) -> Result<(), String> {
    for a in el.attrs() {
        if a.ns.is_none() && !allowed.contains(&a.local.as_str()) {
            return Err(format!("{ctx}: attribute '{}' is not supported", a.local));
        }
    }
    Ok(())
}

fn unsupported(local: &str, ctx: &str) -> String {
    format!("{ctx}: xs:{local} is not supported here")
}

//! Generator of the AMQP 0-10 wire types from the spec XML.
//!
//! What is generated (everything mechanical): one Rust struct per control, command and struct
//! with its pack flags, class and code constants, open newtypes for the enumerated domains,
//! the `Control` and `Command` enums with encode/decode, and the result struct of each command.
//! Primitives, frames, assemblies and all semantics are written by hand in `wire/`.
//!
//! Naming rule: spec names map mechanically: `queue.declare` → `QueueDeclare`,
//! `alternate-exchange` → `alternate_exchange`, a field named `type` → `r#type`. Structs keep
//! their bare name (`delivery-properties` → `DeliveryProperties`) except the session's
//! `header`, which becomes `SessionHeader`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command as Process, Stdio};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Where Debian's `amqp-specs` package installs the 0-10 spec (with Qpid's errata).
pub const DEFAULT_SPEC: &str = "/usr/share/amqp/specs/0-10-qpid/amqp.0-10-qpid-errata.stripped.xml";
/// The generated file, relative to the `broker/` crate.
pub const GENERATED_PATH: &str = "src/wire/generated.rs";
/// The generated round-trip property tests, relative to the `broker/` crate.
pub const GENERATED_TESTS_PATH: &str = "src/wire/generated_tests.rs";

/// Both generated files.
pub struct Generated {
    /// `generated.rs`: the wire types.
    pub code: String,
    /// `generated_tests.rs`: a proptest strategy and round-trip test per type.
    pub tests: String,
}

/// A generated type as the test generator needs it.
struct TypeInfo {
    rust: String,
    fields: Vec<(String, Kind, bool)>,
    /// `Control` or `Command` when the type is one.
    op: Option<&'static str>,
}

/// Classes the broker and client implement; `file` and `stream` are left out (qpidd has
/// neither), so their commands decode as unknown and are answered with not-implemented.
const CLASSES: &[&str] = &[
    "connection",
    "session",
    "execution",
    "message",
    "tx",
    "dtx",
    "exchange",
    "queue",
];

/// A parsed XML element: the generator only needs names, attributes and nesting.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Node {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn req(&self, key: &str) -> Result<&str, String> {
        self.attr(key)
            .ok_or_else(|| format!("<{}> without attribute {key}", self.name))
    }
    fn kids<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn start_node(e: &BytesStart<'_>) -> Result<Node, String> {
    let mut node = Node {
        name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
        ..Node::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        node.attrs.push((
            String::from_utf8_lossy(a.key.as_ref()).into_owned(),
            String::from_utf8_lossy(&a.value).into_owned(),
        ));
    }
    Ok(node)
}

fn parse(xml: &str) -> Result<Node, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => stack.push(start_node(&e)?),
            Event::Empty(e) => {
                let node = start_node(&e)?;
                stack
                    .last_mut()
                    .ok_or("unbalanced xml")?
                    .children
                    .push(node);
            }
            Event::End(_) => {
                let node = stack.pop().ok_or("unbalanced xml")?;
                stack
                    .last_mut()
                    .ok_or("unbalanced xml")?
                    .children
                    .push(node);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = stack.pop().ok_or("empty xml")?;
    root.children
        .pop()
        .filter(|n| n.name == "amqp")
        .ok_or_else(|| "no <amqp> root element".to_string())
}

fn camel(name: &str) -> String {
    name.split(['-', '.'])
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn snake(name: &str) -> String {
    let s = name.replace('-', "_");
    match s.as_str() {
        "type" => "r#type".into(),
        _ => s,
    }
}

fn upper(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

/// How a field of a given spec type is held in Rust and which codec functions move it.
#[derive(Clone, Debug)]
enum Kind {
    /// A single presence bit, no body bytes.
    Bit,
    /// A primitive: Rust type and the suffix of `put_*`/`get_*` in `wire::prim`.
    Prim {
        rust: &'static str,
        codec: &'static str,
    },
    /// An enumerated domain held in its newtype over a primitive.
    Enum {
        rust: String,
        inner: &'static str,
        codec: &'static str,
    },
    /// A struct defined by the spec, encoded with its own size prefix.
    Struct { rust: String },
}

impl Kind {
    fn rust(&self) -> String {
        match self {
            Kind::Bit => "bool".into(),
            Kind::Prim { rust, .. } => (*rust).into(),
            Kind::Enum { rust, .. } | Kind::Struct { rust } => rust.clone(),
        }
    }
}

fn primitive(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "bin8" | "uint8" | "char" => ("u8", "u8"),
        "int8" => ("i8", "i8"),
        "boolean" => ("bool", "boolean"),
        "bin16" | "uint16" => ("u16", "u16"),
        "int16" => ("i16", "i16"),
        "bin32" | "uint32" | "char-utf32" => ("u32", "u32"),
        "int32" => ("i32", "i32"),
        "float" => ("f32", "f32"),
        "sequence-no" => ("SequenceNo", "sequence_no"),
        "bin64" | "uint64" | "datetime" => ("u64", "u64"),
        "int64" => ("i64", "i64"),
        "double" => ("f64", "f64"),
        "bin128" | "uuid" => ("Uuid", "uuid"),
        "vbin8" | "str8-latin" | "str8-utf16" => ("Bytes", "vbin8"),
        "str8" => ("String", "str8"),
        "vbin16" | "str16-latin" | "str16-utf16" => ("Bytes", "vbin16"),
        "str16" => ("String", "str16"),
        "vbin32" => ("Bytes", "vbin32"),
        "map" => ("FieldTable", "map"),
        "list" => ("List", "list"),
        "array" => ("Array", "array"),
        "struct32" => ("Struct32", "struct32"),
        "sequence-set" => ("SequenceSet", "sequence_set"),
        "byte-ranges" => ("ByteRanges", "byte_ranges"),
        _ => return None,
    })
}

struct Spec<'a> {
    root: &'a Node,
    /// Global domains by name.
    global_domains: BTreeMap<String, &'a Node>,
}

impl<'a> Spec<'a> {
    fn class(&self, name: &str) -> Option<&'a Node> {
        self.root
            .kids("class")
            .find(|c| c.attr("name") == Some(name))
    }

    /// Resolves a field's type as written in class `class`.
    fn kind(&self, class: &'a Node, ty: &str) -> Result<Kind, String> {
        if ty == "bit" {
            return Ok(Kind::Bit);
        }
        let (scope, local) = match ty.split_once('.') {
            Some((c, t)) => (self.class(c).ok_or(format!("no class {c}"))?, t),
            None => (class, ty),
        };
        let class_name = scope.attr("name").unwrap_or("");
        if let Some(d) = scope.kids("domain").find(|d| d.attr("name") == Some(local)) {
            return self.domain_kind(Some(class_name), d, scope);
        }
        if let Some(s) = find_struct(scope, local) {
            return Ok(Kind::Struct {
                rust: struct_rust_name(class_name, s.req("name")?),
            });
        }
        if let Some(d) = self.global_domains.get(local) {
            return self.domain_kind(None, d, scope);
        }
        if let Some((rust, codec)) = primitive(local) {
            return Ok(Kind::Prim { rust, codec });
        }
        Err(format!("unknown type {ty} in class {class_name}"))
    }

    fn domain_kind(&self, class: Option<&str>, d: &Node, scope: &'a Node) -> Result<Kind, String> {
        let under = d.req("type")?;
        let base = self.kind(scope, under)?;
        match (d.kids("enum").next(), base) {
            (Some(_), Kind::Prim { rust, codec }) => Ok(Kind::Enum {
                rust: enum_rust_name(class, d.req("name")?),
                inner: rust,
                codec,
            }),
            (_, base) => Ok(base),
        }
    }
}

fn find_struct<'a>(class: &'a Node, name: &str) -> Option<&'a Node> {
    class
        .kids("struct")
        .chain(
            class
                .children
                .iter()
                .filter(|c| c.name == "command")
                .flat_map(|c| c.kids("result"))
                .flat_map(|r| r.kids("struct")),
        )
        .find(|s| s.attr("name") == Some(name))
}

fn struct_rust_name(class: &str, name: &str) -> String {
    if name == "header" {
        camel(class) + "Header"
    } else {
        camel(name)
    }
}

fn enum_rust_name(class: Option<&str>, name: &str) -> String {
    match class {
        Some(c) => camel(c) + &camel(name),
        None => camel(name),
    }
}

struct Field {
    name: String,
    spec_name: String,
    kind: Kind,
}

fn fields(spec: &Spec<'_>, class: &Node, node: &Node) -> Result<Vec<Field>, String> {
    node.kids("field")
        .map(|f| {
            let spec_name = f.req("name")?.to_string();
            Ok(Field {
                name: snake(&spec_name),
                kind: spec.kind(class, f.req("type")?)?,
                spec_name,
            })
        })
        .collect()
}

/// Writes the struct definition, its doc line and the pack-flag codec of its fields.
fn emit_fields_type(
    out: &mut String,
    doc: &str,
    rust: &str,
    fields: &[Field],
    pack: usize,
) -> Result<(), String> {
    let w = |e: std::fmt::Error| e.to_string();
    let copy = fields.is_empty();
    writeln!(out, "/// `{doc}`").map_err(w)?;
    if copy {
        writeln!(out, "#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]").map_err(w)?;
    } else {
        writeln!(out, "#[derive(Debug, Clone, PartialEq, Default)]").map_err(w)?;
    }
    writeln!(out, "pub struct {rust} {{").map_err(w)?;
    for f in fields {
        writeln!(out, "    /// `{}`", f.spec_name).map_err(w)?;
        let ty = f.kind.rust();
        if pack == 0 || matches!(f.kind, Kind::Bit) {
            writeln!(out, "    pub {}: {ty},", f.name).map_err(w)?;
        } else {
            writeln!(out, "    pub {}: Option<{ty}>,", f.name).map_err(w)?;
        }
    }
    writeln!(out, "}}\n").map_err(w)?;

    writeln!(out, "impl {rust} {{").map_err(w)?;
    writeln!(
        out,
        "    /// Writes the pack flags ({pack} bytes) and the present fields."
    )
    .map_err(w)?;
    let buf = if fields.is_empty() && pack == 0 {
        "_buf"
    } else {
        "buf"
    };
    writeln!(
        out,
        "    pub fn encode_fields(&self, {buf}: &mut BytesMut) {{"
    )
    .map_err(w)?;
    if pack > 0 {
        if fields.is_empty() {
            writeln!(out, "        buf.put_bytes(0, {pack});").map_err(w)?;
        } else {
            writeln!(out, "        let mut flags = [0u8; {pack}];").map_err(w)?;
            for (i, f) in fields.iter().enumerate() {
                let cond = match f.kind {
                    Kind::Bit => format!("self.{}", f.name),
                    _ => format!("self.{}.is_some()", f.name),
                };
                writeln!(
                    out,
                    "        if {cond} {{ flags[{}] |= 0x{:02x}; }}",
                    i / 8,
                    1u8 << (i % 8)
                )
                .map_err(w)?;
            }
            writeln!(out, "        buf.put_slice(&flags);").map_err(w)?;
        }
    }
    for f in fields {
        let put = put_expr(&f.kind, "v");
        match (&f.kind, pack) {
            (Kind::Bit, _) => {}
            (_, 0) => {
                let put = put_expr(&f.kind, &format!("&self.{}", f.name));
                writeln!(out, "        {put};").map_err(w)?
            }
            _ => writeln!(
                out,
                "        if let Some(v) = &self.{} {{ {put}; }}",
                f.name
            )
            .map_err(w)?,
        }
    }
    writeln!(out, "    }}\n").map_err(w)?;

    writeln!(
        out,
        "    /// Reads the pack flags and the fields they announce."
    )
    .map_err(w)?;
    writeln!(
        out,
        "    ///\n    /// # Errors\n    /// When the input is truncated or a value is malformed."
    )
    .map_err(w)?;
    let buf = if fields.is_empty() && pack == 0 {
        "_buf"
    } else {
        "buf"
    };
    writeln!(
        out,
        "    pub fn decode_fields({buf}: &mut Bytes) -> Result<Self, DecodeError> {{"
    )
    .map_err(w)?;
    if pack > 0 {
        let flags = if fields.is_empty() { "_flags" } else { "flags" };
        writeln!(out, "        let {flags} = get_flags::<{pack}>(buf)?;").map_err(w)?;
    }
    if fields.is_empty() {
        writeln!(out, "        Ok(Self {{}})").map_err(w)?;
    } else {
        writeln!(out, "        Ok(Self {{").map_err(w)?;
        for (i, f) in fields.iter().enumerate() {
            let (byte, bit) = (i / 8, 1u8 << (i % 8));
            let get = get_expr(&f.kind);
            match (&f.kind, pack) {
                (Kind::Bit, _) => writeln!(
                    out,
                    "            {}: flags[{byte}] & 0x{bit:02x} != 0,",
                    f.name
                )
                .map_err(w)?,
                (_, 0) => writeln!(out, "            {}: {get},", f.name).map_err(w)?,
                _ => writeln!(
                    out,
                    "            {}: if flags[{byte}] & 0x{bit:02x} != 0 {{ Some({get}) }} else {{ None }},",
                    f.name
                )
                .map_err(w)?,
            }
        }
        writeln!(out, "        }})").map_err(w)?;
    }
    writeln!(out, "    }}").map_err(w)?;
    writeln!(out, "}}\n").map_err(w)?;
    Ok(())
}

fn put_expr(kind: &Kind, v: &str) -> String {
    match kind {
        Kind::Bit => String::new(),
        Kind::Prim { codec, .. } => format!("put_{codec}(buf, {v})"),
        Kind::Enum { codec, .. } => format!("put_{codec}(buf, &({v}).0)"),
        Kind::Struct { .. } => format!("({v}).encode(buf)"),
    }
}

fn get_expr(kind: &Kind) -> String {
    match kind {
        Kind::Bit => String::new(),
        Kind::Prim { codec, .. } => format!("get_{codec}(buf)?"),
        Kind::Enum { rust, codec, .. } => format!("{rust}(get_{codec}(buf)?)"),
        Kind::Struct { rust } => format!("{rust}::decode(buf)?"),
    }
}

fn emit_enum_domain(
    out: &mut String,
    doc: &str,
    rust: &str,
    inner: &str,
    d: &Node,
) -> Result<(), String> {
    let w = |e: std::fmt::Error| e.to_string();
    writeln!(
        out,
        "/// `{doc}`: an open set of values; unknown ones are kept as they are."
    )
    .map_err(w)?;
    writeln!(
        out,
        "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]\npub struct {rust}(pub {inner});\n"
    )
    .map_err(w)?;
    writeln!(out, "impl {rust} {{").map_err(w)?;
    let choices: Vec<&Node> = d.kids("enum").flat_map(|e| e.kids("choice")).collect();
    for c in &choices {
        let name = c.req("name")?;
        writeln!(
            out,
            "    /// `{name}`\n    pub const {}: Self = Self({});",
            upper(name),
            c.req("value")?
        )
        .map_err(w)?;
    }
    writeln!(
        out,
        "    /// The spec's name of this value, if it has one.\n    pub fn name(self) -> Option<&'static str> {{\n        match self.0 {{"
    )
    .map_err(w)?;
    for c in &choices {
        writeln!(
            out,
            "            {} => Some(\"{}\"),",
            c.req("value")?,
            c.req("name")?
        )
        .map_err(w)?;
    }
    writeln!(out, "            _ => None,\n        }}\n    }}\n}}\n").map_err(w)?;
    Ok(())
}

fn emit_struct(
    out: &mut String,
    types: &mut Vec<TypeInfo>,
    spec: &Spec<'_>,
    class: &Node,
    s: &Node,
) -> Result<(), String> {
    let w = |e: std::fmt::Error| e.to_string();
    let class_name = class.req("name")?;
    let name = s.req("name")?;
    let rust = struct_rust_name(class_name, name);
    let size: usize = s
        .attr("size")
        .unwrap_or("0")
        .parse()
        .map_err(|_| "bad size")?;
    let pack: usize = s
        .attr("pack")
        .unwrap_or("0")
        .parse()
        .map_err(|_| "bad pack")?;
    let fs = fields(spec, class, s)?;
    emit_fields_type(out, &format!("{class_name}.{name}"), &rust, &fs, pack)?;
    types.push(TypeInfo {
        rust: rust.clone(),
        fields: fs
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.kind.clone(),
                    pack > 0 && !matches!(f.kind, Kind::Bit),
                )
            })
            .collect(),
        op: None,
    });
    let code = match s.attr("code") {
        Some(c) => {
            let class_code = parse_code(class.req("code")?)?;
            Some(((class_code as u16) << 8) | parse_code(c)? as u16)
        }
        None => None,
    };
    writeln!(out, "impl {rust} {{").map_err(w)?;
    if let Some(code) = code {
        writeln!(
            out,
            "    /// The struct code: class code in the high byte.\n    pub const CODE: u16 = 0x{code:04x};"
        )
        .map_err(w)?;
    }
    writeln!(
        out,
        "    /// Writes the struct with its {size}-byte size prefix{}.",
        if code.is_some() { " and code" } else { "" }
    )
    .map_err(w)?;
    writeln!(out, "    pub fn encode(&self, buf: &mut BytesMut) {{").map_err(w)?;
    writeln!(out, "        let at = begin_sized(buf, {size});").map_err(w)?;
    if code.is_some() {
        writeln!(out, "        put_u16(buf, &Self::CODE);").map_err(w)?;
    }
    writeln!(out, "        self.encode_fields(buf);").map_err(w)?;
    writeln!(out, "        end_sized(buf, at, {size});").map_err(w)?;
    writeln!(out, "    }}\n").map_err(w)?;
    writeln!(out, "    /// Reads the struct written by [`Self::encode`].\n    ///\n    /// # Errors\n    /// When the input is truncated, malformed or carries another struct code.").map_err(w)?;
    writeln!(
        out,
        "    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {{"
    )
    .map_err(w)?;
    writeln!(out, "        let mut body = take_sized(buf, {size})?;").map_err(w)?;
    if code.is_some() {
        writeln!(out, "        let code = get_u16(&mut body)?;\n        if code != Self::CODE {{ return Err(DecodeError::UnexpectedStruct {{ expected: Self::CODE, found: code }}); }}").map_err(w)?;
    }
    writeln!(out, "        Self::decode_fields(&mut body)").map_err(w)?;
    writeln!(out, "    }}").map_err(w)?;
    if code.is_some() {
        writeln!(
            out,
            "\n    /// This struct as a `struct32` value (as `execution.result` carries it).\n    pub fn to_struct32(&self) -> Struct32 {{\n        let mut body = BytesMut::new();\n        self.encode_fields(&mut body);\n        Struct32 {{ code: Self::CODE, body: body.freeze() }}\n    }}\n"
        )
        .map_err(w)?;
        writeln!(
            out,
            "    /// Reads this struct out of a `struct32` value.\n    ///\n    /// # Errors\n    /// When the value holds another struct or is malformed.\n    pub fn from_struct32(value: &Struct32) -> Result<Self, DecodeError> {{\n        if value.code != Self::CODE {{ return Err(DecodeError::UnexpectedStruct {{ expected: Self::CODE, found: value.code }}); }}\n        Self::decode_fields(&mut value.body.clone())\n    }}"
        )
        .map_err(w)?;
    }
    writeln!(out, "}}\n").map_err(w)?;
    Ok(())
}

fn parse_code(s: &str) -> Result<u8, String> {
    let t = s.trim_start_matches("0x");
    u8::from_str_radix(t, 16).map_err(|_| format!("bad code {s}"))
}

struct Op {
    rust: String,
    spec: String,
    class_code: u8,
    code: u8,
    result: Option<String>,
    segments: bool,
}

/// Generates the whole `generated.rs`, formatted with rustfmt.
///
/// # Errors
/// When the XML is not the 0-10 spec or rustfmt cannot run.
pub fn generate(xml: &str) -> Result<Generated, String> {
    let mut types = Vec::new();
    let root = parse(xml)?;
    let mut spec = Spec {
        root: &root,
        global_domains: BTreeMap::new(),
    };
    for d in root.kids("domain") {
        spec.global_domains.insert(d.req("name")?.to_string(), d);
    }
    let w = |e: std::fmt::Error| e.to_string();
    let mut out = String::new();
    out.push_str("// @generated by clacks-codegen; do not edit\n");
    out.push_str("//! AMQP 0-10 controls, commands and structs, generated from the spec XML.\n\n");
    out.push_str("#![allow(clippy::all, missing_docs)]\n\n");
    out.push_str("use bytes::{BufMut, Bytes, BytesMut};\n\n");
    out.push_str("use super::error::DecodeError;\nuse super::prim::*;\nuse super::types::*;\n\n");

    for d in root.kids("domain") {
        if d.kids("enum").next().is_some() {
            let name = d.req("name")?;
            if let Kind::Prim { rust, .. } = spec.kind(&root, d.req("type")?)? {
                emit_enum_domain(&mut out, name, &enum_rust_name(None, name), rust, d)?;
            }
        }
    }

    let mut controls = Vec::new();
    let mut commands = Vec::new();
    for class_name in CLASSES {
        let class = spec
            .class(class_name)
            .ok_or(format!("no class {class_name}"))?;
        let class_code = parse_code(class.req("code")?)?;
        writeln!(out, "// ---- class {class_name} (0x{class_code:02x})\n").map_err(w)?;
        for d in class.kids("domain") {
            if d.kids("enum").next().is_some() {
                let name = d.req("name")?;
                if let Kind::Enum { rust, inner, .. } =
                    spec.domain_kind(Some(class_name), d, class)?
                {
                    emit_enum_domain(&mut out, &format!("{class_name}.{name}"), &rust, inner, d)?;
                }
            }
        }
        for s in class.kids("struct") {
            emit_struct(&mut out, &mut types, &spec, class, s)?;
        }
        for op in class
            .children
            .iter()
            .filter(|c| c.name == "control" || c.name == "command")
        {
            let name = op.req("name")?;
            let rust = camel(class_name) + &camel(name);
            let fs = fields(&spec, class, op)?;
            emit_fields_type(&mut out, &format!("{class_name}.{name}"), &rust, &fs, 2)?;
            types.push(TypeInfo {
                rust: rust.clone(),
                fields: fs
                    .iter()
                    .map(|f| (f.name.clone(), f.kind.clone(), !matches!(f.kind, Kind::Bit)))
                    .collect(),
                op: Some(if op.name == "control" {
                    "Control"
                } else {
                    "Command"
                }),
            });
            let mut result = None;
            for r in op.kids("result") {
                if let Some(t) = r.attr("type") {
                    result = Some(match spec.kind(class, t)? {
                        Kind::Struct { rust } => rust,
                        _ => return Err(format!("result of {name} is not a struct")),
                    });
                }
                for s in r.kids("struct") {
                    emit_struct(&mut out, &mut types, &spec, class, s)?;
                    result = Some(struct_rust_name(class_name, s.req("name")?));
                }
            }
            let entry = Op {
                rust,
                spec: format!("{class_name}.{name}"),
                class_code,
                code: parse_code(op.req("code")?)?,
                result,
                segments: op.kids("segments").next().is_some(),
            };
            if op.name == "control" {
                controls.push(entry);
            } else {
                commands.push(entry);
            }
        }
    }
    emit_op_enum(&mut out, "Control", &controls, false)?;
    emit_op_enum(&mut out, "Command", &commands, true)?;
    Ok(Generated {
        code: rustfmt(&out)?,
        tests: rustfmt(&emit_tests(&types))?,
    })
}

/// The strategy expression for one field value.
fn strategy(kind: &Kind) -> String {
    match kind {
        Kind::Bit => "any::<bool>().boxed()".into(),
        Kind::Prim { codec, .. } => format!("arb_{codec}()"),
        Kind::Enum { rust, inner, .. } => format!("any::<{inner}>().prop_map({rust}).boxed()"),
        Kind::Struct { rust } => format!("arb_{}()", to_snake(rust)),
    }
}

fn to_snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn emit_tests(types: &[TypeInfo]) -> String {
    let mut out = String::new();
    out.push_str("// @generated by clacks-codegen; do not edit\n");
    out.push_str(
        "//! Round-trip property tests: every generated type decodes to what it encoded.\n\n",
    );
    out.push_str("#![allow(clippy::all, unused_imports)]\n\n");
    out.push_str("use bytes::BytesMut;\nuse proptest::prelude::*;\n\n");
    out.push_str("use super::arb::*;\nuse super::assembly::{decode_command, decode_control};\nuse super::generated::*;\n\n");
    for t in types {
        let snake = to_snake(&t.rust);
        let _ = writeln!(
            out,
            "/// Any `{}`.\npub fn arb_{snake}() -> BoxedStrategy<{}> {{",
            t.rust, t.rust
        );
        if t.fields.is_empty() {
            let _ = writeln!(out, "    Just({} {{}}).boxed()\n}}\n", t.rust);
        } else {
            let strategies: Vec<String> = t
                .fields
                .iter()
                .map(|(_, k, optional)| {
                    if *optional {
                        format!("proptest::option::of({})", strategy(k))
                    } else {
                        strategy(k)
                    }
                })
                .collect();
            let names: Vec<String> = (0..t.fields.len()).map(|i| format!("f{i}")).collect();
            let inits: Vec<String> = t
                .fields
                .iter()
                .zip(&names)
                .map(|((n, _, _), v)| format!("{n}: {v}"))
                .collect();
            let _ = writeln!(
                out,
                "    ({},).prop_map(|({},)| {} {{ {} }}).boxed()\n}}\n",
                strategies.join(", "),
                names.join(", "),
                t.rust,
                inits.join(", ")
            );
        }
    }
    out.push_str("proptest! {\n");
    for t in types {
        let snake = to_snake(&t.rust);
        let _ = writeln!(
            out,
            "    #[test]\n    fn round_trip_{snake}(v in arb_{snake}()) {{\n        let mut buf = BytesMut::new();\n        v.encode_fields(&mut buf);\n        let mut bytes = buf.freeze();\n        prop_assert_eq!(&{}::decode_fields(&mut bytes).expect(\"decode\"), &v);\n        prop_assert!(bytes.is_empty());",
            t.rust
        );
        match t.op {
            Some("Control") => {
                let _ = writeln!(out, "        let c = Control::from(v);\n        let mut buf = BytesMut::new();\n        c.encode_body(&mut buf);\n        prop_assert_eq!(decode_control(&mut buf.freeze()).expect(\"control\"), c);");
            }
            Some(_) => {
                let _ = writeln!(out, "        let c = Command::from(v);\n        let mut buf = BytesMut::new();\n        let (class, code) = c.codes();\n        buf.extend_from_slice(&[class, code, 1, 1]);\n        c.encode_fields(&mut buf);\n        let (header, decoded) = decode_command(&mut buf.freeze()).expect(\"command\");\n        prop_assert!(header.sync);\n        prop_assert_eq!(decoded, c);");
            }
            None => {}
        }
        out.push_str("    }\n\n");
    }
    out.push_str("}\n");
    out
}

fn emit_op_enum(out: &mut String, name: &str, ops: &[Op], is_command: bool) -> Result<(), String> {
    let w = |e: std::fmt::Error| e.to_string();
    writeln!(
        out,
        "/// Every {} of the implemented classes.",
        name.to_lowercase()
    )
    .map_err(w)?;
    writeln!(
        out,
        "#[derive(Debug, Clone, PartialEq)]\npub enum {name} {{"
    )
    .map_err(w)?;
    for op in ops {
        writeln!(out, "    /// `{}`\n    {}({}),", op.spec, op.rust, op.rust).map_err(w)?;
    }
    writeln!(out, "}}\n").map_err(w)?;
    for op in ops {
        writeln!(
            out,
            "impl {r} {{\n    /// Class code of `{s}`.\n    pub const CLASS: u8 = 0x{c:02x};\n    /// {kind} code of `{s}`.\n    pub const CODE: u8 = 0x{k:02x};\n}}\n",
            r = op.rust,
            s = op.spec,
            c = op.class_code,
            k = op.code,
            kind = if is_command { "Command" } else { "Control" }
        )
        .map_err(w)?;
        writeln!(
            out,
            "impl From<{r}> for {name} {{\n    fn from(v: {r}) -> Self {{ {name}::{r}(v) }}\n}}\n",
            r = op.rust
        )
        .map_err(w)?;
    }
    writeln!(out, "impl {name} {{").map_err(w)?;
    writeln!(
        out,
        "    /// Class and {} code.\n    pub fn codes(&self) -> (u8, u8) {{\n        match self {{",
        name.to_lowercase()
    )
    .map_err(w)?;
    for op in ops {
        writeln!(
            out,
            "            {name}::{}(_) => (0x{:02x}, 0x{:02x}),",
            op.rust, op.class_code, op.code
        )
        .map_err(w)?;
    }
    writeln!(out, "        }}\n    }}\n").map_err(w)?;
    writeln!(out, "    /// The spec name, `class.name`.\n    pub fn name(&self) -> &'static str {{\n        match self {{").map_err(w)?;
    for op in ops {
        writeln!(
            out,
            "            {name}::{}(_) => \"{}\",",
            op.rust, op.spec
        )
        .map_err(w)?;
    }
    writeln!(out, "        }}\n    }}\n").map_err(w)?;
    writeln!(out, "    /// Writes class code, {} code, pack flags and fields.\n    pub fn encode_body(&self, buf: &mut BytesMut) {{\n        let (class, code) = self.codes();\n        buf.put_u8(class);\n        buf.put_u8(code);\n        self.encode_fields(buf);\n    }}\n", name.to_lowercase()).map_err(w)?;
    writeln!(out, "    /// Writes pack flags and fields, without class and code.\n    pub fn encode_fields(&self, buf: &mut BytesMut) {{\n        match self {{").map_err(w)?;
    for op in ops {
        writeln!(
            out,
            "            {name}::{}(v) => v.encode_fields(buf),",
            op.rust
        )
        .map_err(w)?;
    }
    writeln!(out, "        }}\n    }}\n").map_err(w)?;
    writeln!(out, "    /// Reads the fields of the {} named by its class and code.\n    ///\n    /// # Errors\n    /// Unknown codes and malformed fields.\n    pub fn decode_fields(class: u8, code: u8, buf: &mut Bytes) -> Result<Self, DecodeError> {{\n        Ok(match (class, code) {{", name.to_lowercase()).map_err(w)?;
    for op in ops {
        writeln!(
            out,
            "            (0x{:02x}, 0x{:02x}) => {name}::{}({}::decode_fields(buf)?),",
            op.class_code, op.code, op.rust, op.rust
        )
        .map_err(w)?;
    }
    writeln!(
        out,
        "            _ => return Err(DecodeError::Unknown{name} {{ class, code }}),\n        }})\n    }}\n"
    )
    .map_err(w)?;
    if is_command {
        writeln!(out, "    /// Whether the command carries header and body segments (`message.transfer`).\n    pub fn has_segments(&self) -> bool {{\n        matches!(self, {})\n    }}\n",
            ops.iter().filter(|o| o.segments).map(|o| format!("{name}::{}(_)", o.rust)).collect::<Vec<_>>().join(" | ")).map_err(w)?;
        writeln!(out, "    /// The struct code of the result the command returns, if any.\n    pub fn result_code(&self) -> Option<u16> {{\n        match self {{").map_err(w)?;
        for op in ops {
            if let Some(r) = &op.result {
                writeln!(
                    out,
                    "            {name}::{}(_) => Some({r}::CODE),",
                    op.rust
                )
                .map_err(w)?;
            }
        }
        writeln!(out, "            _ => None,\n        }}\n    }}").map_err(w)?;
    }
    writeln!(out, "}}\n").map_err(w)?;
    Ok(())
}

fn rustfmt(code: &str) -> Result<String, String> {
    let mut child = Process::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("rustfmt without stdin")?;
    let input = code.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    writer
        .join()
        .map_err(|_| "rustfmt writer panicked".to_string())?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "rustfmt failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `generated.rs` must be what the generator makes of the installed spec.
    #[test]
    fn committed_code_is_fresh() {
        let xml = std::fs::read_to_string(DEFAULT_SPEC)
            .unwrap_or_else(|e| panic!("{DEFAULT_SPEC}: {e}; install Debian's amqp-specs"));
        let fresh = generate(&xml).expect("generation");
        for (path, code) in [
            (GENERATED_PATH, fresh.code),
            (GENERATED_TESTS_PATH, fresh.tests),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(path);
            let committed = std::fs::read_to_string(&path).expect("generated file");
            assert!(
                committed == code,
                "{} is stale: run `cargo run -p clacks-codegen`",
                path.display()
            );
        }
    }

    #[test]
    fn names_map_mechanically() {
        assert_eq!(camel("delivery-properties"), "DeliveryProperties");
        assert_eq!(snake("alternate-exchange"), "alternate_exchange");
        assert_eq!(snake("type"), "r#type");
        assert_eq!(struct_rust_name("session", "header"), "SessionHeader");
    }
}

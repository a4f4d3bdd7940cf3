//! The management schema: the classes, properties, statistics, methods and events the
//! broker's QMF agent reports, with qpidd's names and types (package
//! `org.apache.qpid.broker`) so that Qpid's tools find what they look for.
//!
//! The table is written in a terse line format (see [`SCHEMA`]) and read once at start.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};

use crate::wire::prim::{put_map, put_str8};
use crate::wire::{FieldTable, Uuid, Value};

pub use super::schema_table::SCHEMA;

/// The package of every class here.
pub const PACKAGE: &str = "org.apache.qpid.broker";

/// QMF's type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Type {
    /// Unsigned 8 bits.
    U8 = 1,
    /// Unsigned 16 bits.
    U16 = 2,
    /// Unsigned 32 bits.
    U32 = 3,
    /// Unsigned 64 bits.
    U64 = 4,
    /// Short string.
    Sstr = 6,
    /// Long string.
    Lstr = 7,
    /// Nanoseconds since the epoch.
    AbsTime = 8,
    /// Nanoseconds.
    DeltaTime = 9,
    /// Another object's id.
    Ref = 10,
    /// Boolean.
    Bool = 11,
    /// UUID.
    Uuid = 14,
    /// Map.
    Map = 15,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "uint8" => Type::U8,
            "uint16" => Type::U16,
            "uint32" | "count32" | "hilo32" => Type::U32,
            "uint64" | "count64" => Type::U64,
            "sstr" => Type::Sstr,
            "lstr" => Type::Lstr,
            "absTime" => Type::AbsTime,
            "deltaTime" => Type::DeltaTime,
            "objId" => Type::Ref,
            "bool" => Type::Bool,
            "uuid" => Type::Uuid,
            "map" => Type::Map,
            _ => return None,
        })
    }
}

/// A property: configuration, set when the object is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// Name.
    pub name: &'static str,
    /// Type.
    pub kind: Type,
    /// `RO`, `RC` or `RW`.
    pub access: &'static str,
    /// Part of the object's key.
    pub index: bool,
    /// May be absent.
    pub optional: bool,
    /// The class a reference points to.
    pub references: Option<&'static str>,
}

/// A statistic: changes as the object works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statistic {
    /// Name.
    pub name: &'static str,
    /// Type.
    pub kind: Type,
    /// Unit, if any.
    pub unit: Option<&'static str>,
}

/// A method argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argument {
    /// Name.
    pub name: &'static str,
    /// Type.
    pub kind: Type,
    /// `I`, `O` or `IO`.
    pub dir: &'static str,
    /// Default when the caller leaves it out.
    pub default: Option<&'static str>,
}

/// A method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Name.
    pub name: &'static str,
    /// Arguments in order.
    pub args: Vec<Argument>,
}

/// Whether a class describes objects or events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Objects with properties and statistics.
    Table = 1,
    /// Events with arguments.
    Event = 2,
}

/// A class of objects or events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Name (lower case for object classes, as qpidd names them).
    pub name: &'static str,
    /// Objects or events.
    pub kind: Kind,
    /// Properties (object classes).
    pub properties: Vec<Property>,
    /// Statistics (object classes).
    pub statistics: Vec<Statistic>,
    /// Methods (object classes).
    pub methods: Vec<Method>,
    /// Arguments (event classes).
    pub arguments: Vec<Argument>,
    /// Severity (event classes): 0 emergency .. 7 debug.
    pub severity: u8,
    /// A digest of the definition, the class key's hash.
    pub hash: Uuid,
}

impl Class {
    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&Method> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The class key as QMF version 2 writes it (`_schema_id`).
    pub fn schema_id(&self) -> FieldTable {
        let mut m = FieldTable::new();
        m.insert("_package_name", PACKAGE);
        m.insert("_class_name", self.name);
        m.insert(
            "_type",
            if self.kind == Kind::Table {
                "_data"
            } else {
                "_event"
            },
        );
        m.insert("_hash", Value::Uuid(self.hash));
        m
    }

    /// The class key as QMF version 1 writes it: package, class name, hash.
    pub fn encode_key(&self, buf: &mut BytesMut) {
        put_str8(buf, PACKAGE);
        put_str8(buf, self.name);
        buf.put_slice(&self.hash.0);
    }

    /// The schema as QMF version 1 sends it in a schema response (after the header).
    pub fn encode_schema(&self, buf: &mut BytesMut) {
        buf.put_u8(self.kind as u8);
        self.encode_key(buf);
        let count = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        match self.kind {
            Kind::Table => {
                buf.put_u16(count(self.properties.len()));
                buf.put_u16(count(self.statistics.len()));
                buf.put_u16(count(self.methods.len()));
                for p in &self.properties {
                    let mut m = FieldTable::new();
                    m.insert("name", p.name);
                    m.insert("type", Value::Uint8(p.kind as u8));
                    m.insert("access", Value::Uint8(access_code(p.access)));
                    m.insert("index", Value::Uint8(u8::from(p.index)));
                    m.insert("optional", Value::Uint8(u8::from(p.optional)));
                    if let Some(r) = p.references {
                        m.insert("refPackage", PACKAGE);
                        m.insert("refClass", r);
                    }
                    put_map(buf, &m);
                }
                for s in &self.statistics {
                    let mut m = FieldTable::new();
                    m.insert("name", s.name);
                    m.insert("type", Value::Uint8(s.kind as u8));
                    if let Some(u) = s.unit {
                        m.insert("unit", u);
                    }
                    put_map(buf, &m);
                }
                for method in &self.methods {
                    let mut m = FieldTable::new();
                    m.insert("name", method.name);
                    m.insert("argCount", Value::Uint16(count(method.args.len())));
                    put_map(buf, &m);
                    for a in &method.args {
                        put_map(buf, &argument_map(a, true));
                    }
                }
            }
            Kind::Event => {
                buf.put_u16(count(self.arguments.len()));
                for a in &self.arguments {
                    put_map(buf, &argument_map(a, false));
                }
            }
        }
    }
}

fn argument_map(a: &Argument, with_dir: bool) -> FieldTable {
    let mut m = FieldTable::new();
    m.insert("name", a.name);
    m.insert("type", Value::Uint8(a.kind as u8));
    if with_dir {
        m.insert("dir", a.dir);
    }
    if let Some(d) = a.default {
        m.insert("default", d);
    }
    m
}

/// QMF version 1 access codes: 1 read-create, 2 read-write, 3 read-only.
fn access_code(access: &str) -> u8 {
    match access {
        "RC" => 1,
        "RW" => 2,
        _ => 3,
    }
}

/// Every class, by name.
#[derive(Debug)]
pub struct Schema {
    classes: Vec<Class>,
    by_name: HashMap<&'static str, usize>,
}

impl Schema {
    /// The schema, read from [`SCHEMA`] on first use.
    pub fn get() -> &'static Schema {
        static SCHEMA_ONCE: OnceLock<Schema> = OnceLock::new();
        SCHEMA_ONCE.get_or_init(|| match parse(SCHEMA) {
            Ok(s) => s,
            // The table is a constant checked by the tests: this cannot happen in a build
            // that passed them, and an empty schema keeps the broker running regardless.
            Err(e) => {
                tracing::error!("management schema unreadable: {e}");
                Schema {
                    classes: Vec::new(),
                    by_name: HashMap::new(),
                }
            }
        })
    }

    /// The class named `name` (object or event).
    pub fn class(&self, name: &str) -> Option<&Class> {
        self.by_name.get(name).map(|&i| &self.classes[i])
    }

    /// Every class, object classes first, in declaration order.
    pub fn classes(&self) -> &[Class] {
        &self.classes
    }
}

/// Reads the line format of [`SCHEMA`].
///
/// # Errors
/// The line that does not parse, and why.
pub fn parse(text: &'static str) -> Result<Schema, String> {
    let mut classes: Vec<Class> = Vec::new();
    let mut arg_types: HashMap<&str, Type> = HashMap::new();
    let ty = |s: &str, line: &str| Type::parse(s).ok_or_else(|| format!("bad type in {line:?}"));
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        let flag = |name: &str| words.iter().skip(2).any(|w| *w == name);
        let value = |key: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        let current = classes.last_mut();
        match (words[0], words.len()) {
            ("class", 2) => classes.push(Class {
                name: words[1],
                kind: Kind::Table,
                properties: Vec::new(),
                statistics: Vec::new(),
                methods: Vec::new(),
                arguments: Vec::new(),
                severity: 0,
                hash: Uuid::default(),
            }),
            ("p", 4..) => current
                .ok_or("property outside a class")?
                .properties
                .push(Property {
                    name: words[1],
                    kind: ty(words[2], line)?,
                    access: words[3],
                    index: flag("index"),
                    optional: flag("optional"),
                    references: value("ref"),
                }),
            ("s", 3..) => {
                let c = current.ok_or("statistic outside a class")?;
                let unit = value("unit");
                let name = words[1];
                match words[2] {
                    "hilo32" => {
                        for n in [
                            name,
                            leak(format!("{name}High")),
                            leak(format!("{name}Low")),
                        ] {
                            c.statistics.push(Statistic {
                                name: n,
                                kind: Type::U32,
                                unit,
                            });
                        }
                    }
                    "mmaTime" => {
                        for (suffix, kind) in [
                            ("Samples", Type::U64),
                            ("Min", Type::DeltaTime),
                            ("Max", Type::DeltaTime),
                            ("Average", Type::DeltaTime),
                        ] {
                            c.statistics.push(Statistic {
                                name: leak(format!("{name}{suffix}")),
                                kind,
                                unit,
                            });
                        }
                    }
                    other => c.statistics.push(Statistic {
                        name,
                        kind: ty(other, line)?,
                        unit,
                    }),
                }
            }
            ("m", 2) => current
                .ok_or("method outside a class")?
                .methods
                .push(Method {
                    name: words[1],
                    args: Vec::new(),
                }),
            ("a", 4..) => current
                .and_then(|c| c.methods.last_mut())
                .ok_or("argument outside a method")?
                .args
                .push(Argument {
                    name: words[1],
                    dir: words[2],
                    kind: ty(words[3], line)?,
                    default: value("default"),
                }),
            ("arg", 3) => {
                arg_types.insert(words[1], ty(words[2], line)?);
            }
            ("event", 4) => {
                let mut arguments = Vec::new();
                for a in words[3].split(',') {
                    let kind = *arg_types
                        .get(a)
                        .ok_or_else(|| format!("event argument {a} has no type"))?;
                    arguments.push(Argument {
                        name: a,
                        kind,
                        dir: "",
                        default: None,
                    });
                }
                classes.push(Class {
                    name: words[1],
                    kind: Kind::Event,
                    properties: Vec::new(),
                    statistics: Vec::new(),
                    methods: Vec::new(),
                    arguments,
                    severity: words[2]
                        .parse()
                        .map_err(|_| format!("bad severity: {line}"))?,
                    hash: Uuid::default(),
                });
            }
            _ => return Err(format!("cannot read schema line {line:?}")),
        }
    }
    for c in &mut classes {
        let mut buf = BytesMut::new();
        c.encode_schema(&mut buf);
        c.hash = digest(&buf);
    }
    let by_name = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name, i))
        .collect();
    Ok(Schema { classes, by_name })
}

/// Names made once at start for the life of the process.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A 128-bit digest of a class definition (the first half of its SHA-256): it only has
/// to change when the definition does.
fn digest(data: &[u8]) -> Uuid {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&sum[..16]);
    Uuid(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_reads_and_has_what_the_tools_use() {
        let s = parse(SCHEMA).expect("schema");
        let q = s.class("queue").expect("queue");
        assert!(q.statistics.iter().any(|x| x.name == "consumerCountHigh"));
        assert!(q
            .statistics
            .iter()
            .any(|x| x.name == "messageLatencySamples"));
        assert_eq!(q.properties[0].references, Some("vhost"));
        let b = s.class("broker").expect("broker");
        let create = b.method("create").expect("create");
        assert_eq!(create.args.len(), 4);
        let ev = s.class("queueDeclare").expect("event");
        assert_eq!(ev.kind, Kind::Event);
        assert_eq!(ev.arguments.len(), 9);
        assert_eq!(ev.arguments[7].kind, Type::Map);
        let hashes: std::collections::HashSet<Uuid> = s.classes().iter().map(|c| c.hash).collect();
        assert_eq!(
            hashes.len(),
            s.classes().len(),
            "every class has its own hash"
        );
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(parse("p name sstr RO").is_err());
        assert!(parse("class x\np name nosuchtype RO").is_err());
        assert!(parse("event e 6 nope").is_err());
    }
}

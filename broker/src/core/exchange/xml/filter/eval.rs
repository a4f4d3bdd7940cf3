//! Evaluation of a compiled query over a [`Doc`], with XPath's rules for general
//! comparisons, effective boolean values and the functions of the subset. A dynamic
//! error (a value that does not convert, a sequence where one item was due) is `Err`,
//! and makes the query false, as the engine's errors do.

use std::borrow::Cow;

use super::super::{header_value, HeaderValue};
use super::doc::{Doc, ROOT};
use super::{Axis, CmpOp, Expr, NameTest, Path, Start, StrFn};
use crate::wire::FieldTable;

/// A dynamic error: the query does not match.
#[derive(Debug)]
pub(super) struct Failed;

type R<T> = Result<T, Failed>;

/// A node of the document: an element (or the document) or an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Item {
    Node(u32),
    Attr(u32),
}

/// An atomic value.
#[derive(Debug, Clone)]
pub(super) enum Atom<'a> {
    /// A node's string value (`xs:untypedAtomic`).
    Untyped(&'a str),
    Str(Cow<'a, str>),
    Int(i64),
    Num(f64),
    Bool(bool),
}

/// A sequence: nodes, or atomic values.
enum Seq<'a> {
    Items(Vec<Item>),
    Atoms(Vec<Atom<'a>>),
}

/// What a query is evaluated against: the document and the message's headers.
pub(super) struct Context<'a> {
    pub doc: &'a Doc,
    headers: Option<&'a FieldTable>,
}

impl<'a> Context<'a> {
    pub fn new(doc: &'a Doc, headers: Option<&'a FieldTable>) -> Context<'a> {
        Context { doc, headers }
    }

    /// The effective boolean value of `e` with `ctx` as context item.
    pub fn boolean(&self, e: &Expr, ctx: u32) -> R<bool> {
        self.ebv_of(e, Item::Node(ctx))
    }

    fn ebv_of(&self, e: &Expr, ctx: Item) -> R<bool> {
        match e {
            // Every operand is evaluated, as the engine does: an error in any fails the
            // query, whatever the others say.
            Expr::Or(terms) => {
                let mut any = false;
                for t in terms {
                    any |= self.ebv_of(t, ctx)?;
                }
                Ok(any)
            }
            Expr::And(terms) => {
                let mut all = true;
                for t in terms {
                    all &= self.ebv_of(t, ctx)?;
                }
                Ok(all)
            }
            Expr::Not(x) => Ok(!self.ebv_of(x, ctx)?),
            Expr::Boolean(x) => self.ebv_of(x, ctx),
            Expr::Exists(x) => Ok(!self.eval(x, ctx)?.is_empty()),
            Expr::Empty(x) => Ok(self.eval(x, ctx)?.is_empty()),
            Expr::Cmp(op, a, b) => {
                let a = self.atomized(a, ctx)?;
                let b = self.atomized(b, ctx)?;
                general(*op, &a, &b)
            }
            Expr::StrFn(f, a, b) => {
                let a = self.string_arg(a, ctx)?;
                let b = self.string_arg(b, ctx)?;
                Ok(match f {
                    StrFn::Contains => a.contains(&*b),
                    StrFn::StartsWith => a.starts_with(&*b),
                    StrFn::EndsWith => a.ends_with(&*b),
                })
            }
            Expr::Path(p) => Ok(!self.select(p, ctx)?.is_empty()),
            Expr::Bool(b) => Ok(*b),
            Expr::Str(s) => Ok(!s.is_empty()),
            Expr::Int(n) => Ok(*n != 0),
            Expr::Num(n) => Ok(*n != 0.0 && !n.is_nan()),
            Expr::Var(name) => match self.header(name).as_slice() {
                [] => Ok(false),
                [a] => Ok(atom_ebv(a)),
                _ => Err(Failed),
            },
        }
    }

    fn eval<'x>(&'x self, e: &'x Expr, ctx: Item) -> R<Seq<'x>> {
        Ok(match e {
            Expr::Path(p) => Seq::Items(self.select(p, ctx)?),
            Expr::Var(name) => Seq::Atoms(self.header(name)),
            Expr::Str(s) => Seq::Atoms(vec![Atom::Str(Cow::Borrowed(s))]),
            Expr::Int(n) => Seq::Atoms(vec![Atom::Int(*n)]),
            Expr::Num(n) => Seq::Atoms(vec![Atom::Num(*n)]),
            other => Seq::Atoms(vec![Atom::Bool(self.ebv_of(other, ctx)?)]),
        })
    }

    fn atomized<'x>(&'x self, e: &'x Expr, ctx: Item) -> R<Vec<Atom<'x>>> {
        Ok(match self.eval(e, ctx)? {
            Seq::Atoms(a) => a,
            Seq::Items(items) => items
                .into_iter()
                .map(|i| Atom::Untyped(self.value(i)))
                .collect(),
        })
    }

    /// A string argument: one item at most (none is the empty string), a string or a
    /// node's value.
    fn string_arg<'x>(&'x self, e: &'x Expr, ctx: Item) -> R<Cow<'x, str>> {
        let atoms = self.atomized(e, ctx)?;
        match atoms.as_slice() {
            [] => Ok(Cow::Borrowed("")),
            [Atom::Untyped(s)] => Ok(Cow::Borrowed(s)),
            [Atom::Str(s)] => Ok(s.clone()),
            _ => Err(Failed),
        }
    }

    /// The string value of an item.
    pub(super) fn value(&self, item: Item) -> &'a str {
        match item {
            Item::Node(n) => self.doc.node_text(n),
            Item::Attr(a) => self.doc.string(self.doc.attrs[a as usize].value),
        }
    }

    /// An application header as an atomic value (none when absent or of another type),
    /// as the engine's variables get them.
    fn header(&self, name: &str) -> Vec<Atom<'a>> {
        let Some(v) = header_value(self.headers, name) else {
            return Vec::new();
        };
        vec![match v {
            HeaderValue::Bool(b) => Atom::Bool(b),
            HeaderValue::Int(n) => Atom::Int(n),
            HeaderValue::Num(n) => Atom::Num(n),
            HeaderValue::Str(s) => Atom::Str(Cow::Borrowed(s)),
        }]
    }

    /// The items a path selects from `ctx`, in document order, each once.
    pub(super) fn select(&self, p: &Path, ctx: Item) -> R<Vec<Item>> {
        let mut current = vec![match p.start {
            Start::Root => Item::Node(ROOT),
            Start::Context => ctx,
        }];
        for step in &p.steps {
            let mut next = Vec::new();
            for item in &current {
                let Item::Node(n) = *item else {
                    continue;
                };
                match step.axis {
                    Axis::Child => self.children(n, &step.test, &mut next),
                    Axis::Descendant => self.descendants(n, &step.test, &mut next),
                    Axis::Attribute => self.attributes(n, &step.test, &mut next),
                }
            }
            if current.len() > 1 {
                next.sort_unstable();
                next.dedup();
            }
            for pred in &step.preds {
                let mut kept = Vec::with_capacity(next.len());
                for item in next {
                    if self.predicate(pred, item)? {
                        kept.push(item);
                    }
                }
                next = kept;
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        Ok(current)
    }

    /// A predicate's truth for one item. A path as the whole predicate is taken as the
    /// engine takes it, so that answers stay what they were: no node is false, one is
    /// true, and more fail the query (XPath would call them true).
    fn predicate(&self, pred: &Expr, item: Item) -> R<bool> {
        match pred {
            Expr::Path(p) => match self.select(p, item)?.len() {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(Failed),
            },
            e => self.ebv_of(e, item),
        }
    }

    fn element_matches(&self, node: u32, test: &NameTest) -> bool {
        match test {
            NameTest::Any => true,
            NameTest::Name { ns, local } => {
                let n = &self.doc.nodes[node as usize];
                self.doc.string(n.local) == local && self.doc.string(n.ns) == ns
            }
        }
    }

    fn children(&self, node: u32, test: &NameTest, out: &mut Vec<Item>) {
        let mut c = self.doc.nodes[node as usize].first_child;
        while c != super::doc::NONE {
            if self.element_matches(c, test) {
                out.push(Item::Node(c));
            }
            c = self.doc.nodes[c as usize].next_sibling;
        }
    }

    fn descendants(&self, node: u32, test: &NameTest, out: &mut Vec<Item>) {
        let mut c = self.doc.nodes[node as usize].first_child;
        while c != super::doc::NONE {
            if self.element_matches(c, test) {
                out.push(Item::Node(c));
            }
            self.descendants(c, test, out);
            c = self.doc.nodes[c as usize].next_sibling;
        }
    }

    fn attributes(&self, node: u32, test: &NameTest, out: &mut Vec<Item>) {
        let (a, b) = self.doc.nodes[node as usize].attrs;
        for i in a..b {
            let attr = &self.doc.attrs[i as usize];
            let hit = match test {
                NameTest::Any => true,
                NameTest::Name { ns, local } => {
                    self.doc.string(attr.local) == local && self.doc.string(attr.ns) == ns
                }
            };
            if hit {
                out.push(Item::Attr(i));
            }
        }
    }
}

impl Seq<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Seq::Items(i) => i.is_empty(),
            Seq::Atoms(a) => a.is_empty(),
        }
    }
}

fn atom_ebv(a: &Atom) -> bool {
    match a {
        Atom::Untyped(s) => !s.is_empty(),
        Atom::Str(s) => !s.is_empty(),
        Atom::Int(n) => *n != 0,
        Atom::Num(n) => *n != 0.0 && !n.is_nan(),
        Atom::Bool(b) => *b,
    }
}

/// A general comparison: true when some pair of values compares true.
fn general(op: CmpOp, a: &[Atom], b: &[Atom]) -> R<bool> {
    for x in a {
        for y in b {
            if compare(op, x, y)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn compare(op: CmpOp, a: &Atom, b: &Atom) -> R<bool> {
    use std::cmp::Ordering;
    let ord = |o: Option<Ordering>| -> bool {
        match (op, o) {
            // NaN is unordered: only `!=` holds.
            (CmpOp::Ne, None) => true,
            (_, None) => false,
            (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
            (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
            (CmpOp::Lt, Some(o)) => o == Ordering::Less,
            (CmpOp::Le, Some(o)) => o != Ordering::Greater,
            (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
            (CmpOp::Ge, Some(o)) => o != Ordering::Less,
        }
    };
    let text = |x: &Atom| -> Option<String> {
        match x {
            Atom::Untyped(s) => Some((*s).to_string()),
            Atom::Str(s) => Some(s.to_string()),
            _ => None,
        }
    };
    let number = |x: &Atom| -> R<Option<f64>> {
        Ok(match x {
            Atom::Untyped(s) => Some(to_double(s)?),
            #[allow(clippy::cast_precision_loss)]
            Atom::Int(n) => Some(*n as f64),
            Atom::Num(n) => Some(*n),
            _ => None,
        })
    };
    Ok(match (a, b) {
        (Atom::Untyped(_) | Atom::Str(_), Atom::Untyped(_) | Atom::Str(_)) => {
            ord(Some(text(a).cmp(&text(b))))
        }
        (Atom::Int(x), Atom::Int(y)) => ord(Some(x.cmp(y))),
        (Atom::Bool(x), Atom::Bool(y)) => ord(Some(x.cmp(y))),
        (Atom::Untyped(s), Atom::Bool(y)) => ord(Some(to_boolean(s)?.cmp(y))),
        (Atom::Bool(x), Atom::Untyped(s)) => ord(Some(x.cmp(&to_boolean(s)?))),
        (Atom::Untyped(_) | Atom::Int(_) | Atom::Num(_), Atom::Int(_) | Atom::Num(_))
        | (Atom::Int(_) | Atom::Num(_), Atom::Untyped(_)) => match (number(a)?, number(b)?) {
            (Some(x), Some(y)) => ord(x.partial_cmp(&y)),
            _ => return Err(Failed),
        },
        // A string beside a number or a boolean: a type error.
        _ => return Err(Failed),
    })
}

/// An untyped value cast to `xs:double`, as the engine casts it: trimmed of white space
/// (Unicode's), then XML Schema's syntax with `INF` (read by the same crate the engine
/// uses, with its options).
fn to_double(s: &str) -> R<f64> {
    let options = lexical::ParseFloatOptionsBuilder::new()
        .inf_string(Some(b"INF"))
        .build()
        .map_err(|_| Failed)?;
    lexical::parse_with_options::<f64, _, { lexical::format::XML }>(s.trim(), &options)
        .map_err(|_| Failed)
}

/// An untyped value cast to `xs:boolean`, as the engine casts it (without trimming).
fn to_boolean(s: &str) -> R<bool> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Failed),
    }
}

//! The compiled filter: the part of the query language Clacks and qpidd bindings use,
//! evaluated by the broker itself over one light parse of the body, instead of by the
//! XPath engine.
//!
//! A binding's query is compiled when it is made (`parse`). Those inside the subset
//! (paths with child, descendant and attribute steps and name tests, predicates, general
//! comparisons with literals and external header variables, `and`, `or`, `let ... return`
//! and a few boolean and string functions) get a [`Filter`]; the rest keep going to the
//! engine. The bindings of an exchange form a [`FilterSet`], which indexes the queries by
//! a string literal each must find in the body to match (`$e/f:NodeStatus[f:Node =
//! 'node-7']` can only match a body with `node-7` at that path), so that a message is
//! checked only against the bindings it might match: one pass over the body finds the
//! values, one hash lookup per value the candidates.

mod doc;
mod eval;
mod index;
mod parse;
#[cfg(test)]
mod tests;

pub use doc::Doc;
pub use index::FilterSet;

use super::prolog::XQuery;

/// A compiled binding query.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

impl Filter {
    /// The compiled form of `query`, or `None` when it is outside the subset.
    pub fn compile(query: &XQuery) -> Option<Filter> {
        parse::parse(query).map(|expr| Filter { expr })
    }

    /// Whether the query's effective boolean value over `doc` is true; errors (a value
    /// that does not convert, say) count as false, as they do from the engine.
    pub fn matches(&self, doc: &Doc, headers: Option<&crate::wire::FieldTable>) -> bool {
        eval::Context::new(doc, headers)
            .boolean(&self.expr, doc::ROOT)
            .unwrap_or(false)
    }
}

/// The expression forms of the subset.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(Box<Expr>),
    Empty(Box<Expr>),
    Boolean(Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    StrFn(StrFn, Box<Expr>, Box<Expr>),
    Path(Path),
    /// An external variable: the application header of that name.
    Var(String),
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
}

impl Expr {
    /// Whether the expression's value is a boolean or a node sequence, so that as a
    /// predicate it filters rather than selects by position.
    fn is_boolean(&self) -> bool {
        match self {
            Expr::Or(_)
            | Expr::And(_)
            | Expr::Not(_)
            | Expr::Exists(_)
            | Expr::Empty(_)
            | Expr::Boolean(_)
            | Expr::Cmp(..)
            | Expr::StrFn(..)
            | Expr::Path(_)
            | Expr::Bool(_) => true,
            Expr::Var(_) | Expr::Str(_) | Expr::Int(_) | Expr::Num(_) => false,
        }
    }
}

/// General comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// String functions of two arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrFn {
    Contains,
    StartsWith,
    EndsWith,
}

/// A path: where it starts, then its steps.
#[derive(Debug, Clone, PartialEq)]
struct Path {
    start: Start,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The document node (`/...`).
    Root,
    /// The context item (`.`, a relative path, a path in a predicate).
    Context,
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    axis: Axis,
    test: NameTest,
    preds: Vec<Expr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    Child,
    /// `//name`: descendants (the subset has no positional predicates, so this is
    /// `descendant-or-self::node()/child::name`).
    Descendant,
    Attribute,
}

#[derive(Debug, Clone, PartialEq)]
enum NameTest {
    /// `*`: any element (or attribute, on the attribute axis).
    Any,
    /// A namespace URI (empty for none) and a local name.
    Name { ns: String, local: String },
}

//! The query language subset the compiled filter evaluates, read from the expression text
//! (after the prolog). Anything outside it makes [`parse`] answer `None`, and the binding
//! is evaluated by the XPath engine instead.

use super::super::prolog::XQuery;
use super::{Axis, CmpOp, Expr, NameTest, Path, Start, Step, StrFn};

/// Longest expression the compiler reads; longer ones go to the XPath engine.
const MAX_TOKENS: usize = 512;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A name, possibly prefixed (`f:Node`), or a keyword.
    Name(String),
    Var(String),
    Str(String),
    Num(f64),
    Int(i64),
    Slash,
    SlashSlash,
    At,
    Dot,
    Star,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Assign,
    Op(CmpOp),
}

fn is_name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn tokens(text: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if out.len() > MAX_TOKENS {
            return None;
        }
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            c if single(c).is_some() => {
                out.extend(single(c));
                i += 1;
            }
            '(' if next == Some(':') => {
                // Comments nest.
                let mut depth = 0usize;
                while i < chars.len() {
                    if chars[i] == '(' && chars.get(i + 1) == Some(&':') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == ':' && chars.get(i + 1) == Some(&')') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if depth != 0 {
                    return None;
                }
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            '/' if next == Some('/') => {
                out.push(Tok::SlashSlash);
                i += 2;
            }
            '/' => {
                out.push(Tok::Slash);
                i += 1;
            }
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                let (tok, len) = number(&chars[i..])?;
                out.push(tok);
                i += len;
            }
            '.' if next == Some('.') => return None,
            '.' => {
                out.push(Tok::Dot);
                i += 1;
            }
            ':' if next == Some('=') => {
                out.push(Tok::Assign);
                i += 2;
            }
            '!' if next == Some('=') => {
                out.push(Tok::Op(CmpOp::Ne));
                i += 2;
            }
            '<' if next == Some('=') => {
                out.push(Tok::Op(CmpOp::Le));
                i += 2;
            }
            '>' if next == Some('=') => {
                out.push(Tok::Op(CmpOp::Ge));
                i += 2;
            }
            '<' => {
                out.push(Tok::Op(CmpOp::Lt));
                i += 1;
            }
            '>' => {
                out.push(Tok::Op(CmpOp::Gt));
                i += 1;
            }
            '\'' | '"' => {
                // A doubled quote stands for itself.
                let mut s = String::new();
                i += 1;
                loop {
                    let ch = *chars.get(i)?;
                    if ch == c {
                        if chars.get(i + 1) == Some(&c) {
                            s.push(c);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    // Entity and character references in literals are the engine's to read.
                    if ch == '&' {
                        return None;
                    }
                    s.push(ch);
                    i += 1;
                }
                out.push(Tok::Str(s));
            }
            '$' => {
                i += 1;
                let start = i;
                if !chars.get(i).copied().is_some_and(is_name_start) {
                    return None;
                }
                while chars.get(i).copied().is_some_and(is_name_char) {
                    i += 1;
                }
                out.push(Tok::Var(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() => {
                let (tok, len) = number(&chars[i..])?;
                out.push(tok);
                i += len;
            }
            c if is_name_start(c) => {
                let start = i;
                while chars.get(i).copied().is_some_and(is_name_char) {
                    i += 1;
                }
                // A prefixed name: `p:local`, with no space around the colon.
                if chars.get(i) == Some(&':')
                    && chars.get(i + 1).copied().is_some_and(is_name_start)
                {
                    i += 1;
                    while chars.get(i).copied().is_some_and(is_name_char) {
                        i += 1;
                    }
                }
                out.push(Tok::Name(chars[start..i].iter().collect()));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The token a character is on its own, whatever follows it.
fn single(c: char) -> Option<Tok> {
    Some(match c {
        '@' => Tok::At,
        '*' => Tok::Star,
        ')' => Tok::RParen,
        '[' => Tok::LBracket,
        ']' => Tok::RBracket,
        ',' => Tok::Comma,
        '=' => Tok::Op(CmpOp::Eq),
        _ => return None,
    })
}

/// An integer or decimal literal (exponents and the rest are the engine's).
fn number(chars: &[char]) -> Option<(Tok, usize)> {
    let mut i = 0;
    while chars.get(i).is_some_and(char::is_ascii_digit) {
        i += 1;
    }
    let mut decimal = false;
    if chars.get(i) == Some(&'.') {
        decimal = true;
        i += 1;
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    if chars
        .get(i)
        .is_some_and(|c| matches!(c, 'e' | 'E') || is_name_char(*c))
    {
        return None;
    }
    let text: String = chars[..i].iter().collect();
    let tok = if decimal {
        Tok::Num(text.parse().ok()?)
    } else {
        Tok::Int(text.parse().ok()?)
    };
    Some((tok, i))
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    query: &'a XQuery,
    /// `let` variables in scope: their paths, and the predicate depth they were bound at.
    lets: Vec<(String, Path, usize)>,
    /// How many predicates the parser is inside.
    pred_depth: usize,
    /// Path steps made so far, inlined `let` paths included: a bound on what a query can
    /// make the compiler build.
    steps_made: usize,
}

/// Most path steps one query may compile to; beyond, the engine takes it.
const MAX_STEPS: usize = 1024;

/// The compiled form of a binding's expression, if it is inside the subset.
pub(super) fn parse(query: &XQuery) -> Option<Expr> {
    let mut p = Parser {
        toks: tokens(&query.expr)?,
        at: 0,
        query,
        lets: Vec::new(),
        pred_depth: 0,
        steps_made: 0,
    };
    let e = p.expr(0)?;
    (p.at == p.toks.len()).then_some(e)
}

/// Nesting allowed while parsing (the text's brackets are already limited).
const MAX_DEPTH: usize = 32;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.at + n)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Name(n)) if n == word)
    }

    fn expr(&mut self, depth: usize) -> Option<Expr> {
        if depth > MAX_DEPTH {
            return None;
        }
        if self.keyword("let") && matches!(self.peek_at(1), Some(Tok::Var(_))) {
            self.at += 1;
            let Some(Tok::Var(name)) = self.peek().cloned() else {
                return None;
            };
            self.at += 1;
            if !self.eat(&Tok::Assign) {
                return None;
            }
            let Expr::Path(path) = self.or_expr(depth + 1)? else {
                return None;
            };
            // The engine evaluates a `let` path at once, where an error (a predicate
            // selecting several nodes) fails the query even when the variable is unused;
            // a path without predicates has no errors to raise.
            if path.steps.iter().any(|s| !s.preds.is_empty()) {
                return None;
            }
            if !self.keyword("return") {
                return None;
            }
            self.at += 1;
            self.lets.push((name, path, self.pred_depth));
            let body = self.expr(depth + 1);
            self.lets.pop();
            return body;
        }
        self.or_expr(depth)
    }

    fn or_expr(&mut self, depth: usize) -> Option<Expr> {
        self.joined(depth, "or", Self::and_expr, Expr::Or)
    }

    fn and_expr(&mut self, depth: usize) -> Option<Expr> {
        self.joined(depth, "and", Self::comparison, Expr::And)
    }

    /// `operand (keyword operand)*`: the operand alone, or `join` of them all.
    fn joined(
        &mut self,
        depth: usize,
        keyword: &str,
        operand: fn(&mut Self, usize) -> Option<Expr>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Option<Expr> {
        let mut terms = vec![operand(self, depth)?];
        while self.keyword(keyword) {
            self.at += 1;
            terms.push(operand(self, depth)?);
        }
        Some(if terms.len() == 1 {
            terms.pop()?
        } else {
            join(terms)
        })
    }

    fn comparison(&mut self, depth: usize) -> Option<Expr> {
        let left = self.primary(depth)?;
        if let Some(Tok::Op(op)) = self.peek().cloned() {
            self.at += 1;
            let right = self.primary(depth)?;
            return Some(Expr::Cmp(op, Box::new(left), Box::new(right)));
        }
        Some(left)
    }

    fn primary(&mut self, depth: usize) -> Option<Expr> {
        match self.peek()?.clone() {
            Tok::Str(s) => {
                self.at += 1;
                Some(Expr::Str(s))
            }
            Tok::Int(n) => {
                self.at += 1;
                Some(Expr::Int(n))
            }
            Tok::Num(n) => {
                self.at += 1;
                Some(Expr::Num(n))
            }
            Tok::LParen => {
                self.at += 1;
                let e = self.expr(depth + 1)?;
                self.eat(&Tok::RParen).then_some(e)
            }
            Tok::Var(name) => {
                if let Some(path) = self.let_path(&name)? {
                    self.at += 1;
                    return self.path_from(path, depth).map(Expr::Path);
                }
                if !self.query.variables.contains(&name) {
                    return None;
                }
                self.at += 1;
                // Steps after a header value are the engine's.
                if matches!(
                    self.peek(),
                    Some(Tok::Slash | Tok::SlashSlash | Tok::LBracket)
                ) {
                    return None;
                }
                Some(Expr::Var(name))
            }
            Tok::Name(n) if self.peek_at(1) == Some(&Tok::LParen) => self.call(&n, depth),
            Tok::Name(n) if matches!(n.as_str(), "let" | "for" | "some" | "every" | "if") => None,
            _ => self.path(depth).map(Expr::Path),
        }
    }

    /// The path of a `let` variable, to be used in its place. Inside a predicate opened
    /// after the `let`, the path would start from another context item than the one it
    /// was bound at, so there the query is the engine's (unless the path is absolute).
    fn let_path(&mut self, name: &str) -> Option<Option<Path>> {
        let Some((_, path, at)) = self.lets.iter().rev().find(|(n, _, _)| n == name) else {
            return Some(None);
        };
        if *at != self.pred_depth && path.start != Start::Root {
            return None;
        }
        self.steps_made += path.steps.len();
        if self.steps_made > MAX_STEPS {
            return None;
        }
        Some(Some(path.clone()))
    }

    fn call(&mut self, name: &str, depth: usize) -> Option<Expr> {
        self.at += 2;
        let mut args = Vec::new();
        if !self.eat(&Tok::RParen) {
            loop {
                args.push(self.expr(depth + 1)?);
                if self.eat(&Tok::RParen) {
                    break;
                }
                if !self.eat(&Tok::Comma) {
                    return None;
                }
            }
        }
        let name = name.strip_prefix("fn:").unwrap_or(name);
        let mut args = args.into_iter();
        let (a, b) = (args.next(), args.next());
        if args.next().is_some() {
            return None;
        }
        let one = |a: Option<Expr>, b: &Option<Expr>| a.filter(|_| b.is_none()).map(Box::new);
        Some(match name {
            "true" if a.is_none() => Expr::Bool(true),
            "false" if a.is_none() => Expr::Bool(false),
            "not" => Expr::Not(one(a, &b)?),
            "exists" => Expr::Exists(one(a, &b)?),
            "empty" => Expr::Empty(one(a, &b)?),
            "boolean" => Expr::Boolean(one(a, &b)?),
            "contains" => Expr::StrFn(StrFn::Contains, Box::new(a?), Box::new(b?)),
            "starts-with" => Expr::StrFn(StrFn::StartsWith, Box::new(a?), Box::new(b?)),
            "ends-with" => Expr::StrFn(StrFn::EndsWith, Box::new(a?), Box::new(b?)),
            _ => return None,
        })
    }

    /// A path: absolute, from the context item (`.`), or relative.
    fn path(&mut self, depth: usize) -> Option<Path> {
        let mut path = Path {
            start: Start::Context,
            steps: Vec::new(),
        };
        match self.peek()? {
            Tok::Slash => {
                self.at += 1;
                path.start = Start::Root;
                if !self.starts_step() {
                    return Some(path);
                }
                self.step(Axis::Child, &mut path, depth)?;
            }
            Tok::SlashSlash => {
                self.at += 1;
                path.start = Start::Root;
                self.step(Axis::Descendant, &mut path, depth)?;
            }
            Tok::Dot => self.at += 1,
            _ => self.step(Axis::Child, &mut path, depth)?,
        }
        self.path_from(path, depth)
    }

    /// The steps that follow a path's start.
    fn path_from(&mut self, mut path: Path, depth: usize) -> Option<Path> {
        loop {
            match self.peek() {
                Some(Tok::Slash) => {
                    self.at += 1;
                    self.step(Axis::Child, &mut path, depth)?;
                }
                Some(Tok::SlashSlash) => {
                    self.at += 1;
                    self.step(Axis::Descendant, &mut path, depth)?;
                }
                // A predicate after a path filters what its last step selected (no
                // predicate here is positional); on `.` alone it is the engine's.
                Some(Tok::LBracket) => {
                    self.at += 1;
                    let e = self.predicate(depth)?;
                    if !e.is_boolean() || !self.eat(&Tok::RBracket) {
                        return None;
                    }
                    path.steps.last_mut()?.preds.push(e);
                }
                _ => return Some(path),
            }
        }
    }

    /// The expression of a predicate (after its `[`).
    fn predicate(&mut self, depth: usize) -> Option<Expr> {
        self.pred_depth += 1;
        let e = self.expr(depth + 1);
        self.pred_depth -= 1;
        e
    }

    fn starts_step(&self) -> bool {
        matches!(
            self.peek(),
            Some(Tok::At | Tok::Star | Tok::Name(_) | Tok::Dot)
        )
    }

    fn step(&mut self, axis: Axis, path: &mut Path, depth: usize) -> Option<()> {
        // Attributes have no children: a step after one is the engine's.
        if path.steps.last().is_some_and(|s| s.axis == Axis::Attribute) {
            return None;
        }
        let (axis, attribute) = match self.peek()? {
            Tok::At if axis == Axis::Child => {
                self.at += 1;
                (Axis::Attribute, true)
            }
            Tok::Dot if axis == Axis::Child => {
                // `x/.` is `x`.
                self.at += 1;
                return Some(());
            }
            _ => (axis, false),
        };
        let test = match self.peek()?.clone() {
            Tok::Star => {
                self.at += 1;
                NameTest::Any
            }
            Tok::Name(n) => {
                // Axis names and kind tests (`text()`, `node()`) are the engine's.
                if self.peek_at(1) == Some(&Tok::LParen) || n.contains("::") {
                    return None;
                }
                self.at += 1;
                self.name_test(&n, attribute)?
            }
            _ => return None,
        };
        let mut preds = Vec::new();
        while self.eat(&Tok::LBracket) {
            let e = self.predicate(depth)?;
            // Positional predicates (a number) are the engine's.
            if !e.is_boolean() {
                return None;
            }
            preds.push(e);
            if !self.eat(&Tok::RBracket) {
                return None;
            }
        }
        self.steps_made += 1;
        if self.steps_made > MAX_STEPS {
            return None;
        }
        path.steps.push(Step { axis, test, preds });
        Some(())
    }

    fn name_test(&self, name: &str, attribute: bool) -> Option<NameTest> {
        let (ns, local) = match name.split_once(':') {
            Some((prefix, local)) => {
                let uri = self
                    .query
                    .namespaces
                    .iter()
                    .rev()
                    .find(|(p, _)| p == prefix)?
                    .1
                    .clone();
                (uri, local)
            }
            None if attribute => (String::new(), name),
            None => (
                self.query
                    .default_element_namespace
                    .clone()
                    .unwrap_or_default(),
                name,
            ),
        };
        Some(NameTest::Name {
            ns,
            local: local.to_string(),
        })
    }
}

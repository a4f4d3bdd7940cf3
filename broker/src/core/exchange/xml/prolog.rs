//! The query text of an xml binding as qpidd and Clacks write it: an optional XQuery prolog
//! (namespace and external variable declarations) followed by one expression. The XPath
//! engine knows no prolog, so the declarations are taken apart here and handed to it as
//! static context.

/// A binding query split into what the XPath engine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XQuery {
    /// The expression after the prolog.
    pub expr: String,
    /// `declare namespace p = "uri";` pairs, in order.
    pub namespaces: Vec<(String, String)>,
    /// `declare default element namespace "uri";`, if given.
    pub default_element_namespace: Option<String>,
    /// Names of `declare variable $name external;`, bound from application headers.
    pub variables: Vec<String>,
}

/// Splits the prolog off a query.
///
/// # Errors
/// A declaration this broker does not understand, or no expression at all; the text says
/// which.
pub fn parse(text: &str) -> Result<XQuery, String> {
    let mut q = XQuery {
        expr: String::new(),
        namespaces: Vec::new(),
        default_element_namespace: None,
        variables: Vec::new(),
    };
    let mut rest = skip_space(text)?;
    while let Some((decl, after)) = next_declaration(rest)? {
        let words = split_words(decl)?;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["xquery", "version", _] | ["xquery", "version", _, "encoding", _] => {}
            ["declare", "namespace", prefix, "=", uri] => {
                if !is_ncname(prefix) {
                    return Err(format!("bad namespace prefix: {prefix}"));
                }
                q.namespaces
                    .push(((*prefix).to_string(), unquote(uri)?.to_string()));
            }
            ["declare", "default", "element", "namespace", uri] => {
                q.default_element_namespace = Some(unquote(uri)?.to_string());
            }
            ["declare", "variable", var, "external"]
            | ["declare", "variable", var, "as", _, "external"] => {
                let name = var
                    .strip_prefix('$')
                    .filter(|n| is_ncname(n))
                    .ok_or_else(|| format!("bad external variable name: {var}"))?;
                if !q.variables.iter().any(|v| v == name) {
                    q.variables.push(name.to_string());
                }
            }
            _ => return Err(format!("unsupported prolog declaration: {}", decl.trim())),
        }
        rest = skip_space(after)?;
    }
    if rest.trim().is_empty() {
        return Err("no expression after the prolog".into());
    }
    check_nesting(rest)?;
    q.expr = rest.to_string();
    Ok(q)
}

/// Deepest nesting of brackets accepted in an expression. The XPath engine's parser takes
/// time exponential in this depth (about double per level), so a deeper query from the
/// network could stall an evaluation thread for minutes.
pub const MAX_NESTING: usize = 10;

/// Refuses expressions whose (), [] or {} nest deeper than [`MAX_NESTING`]; brackets in
/// string literals and comments do not count.
fn check_nesting(expr: &str) -> Result<(), String> {
    let b = expr.as_bytes();
    let (mut depth, mut deepest, mut comments) = (0usize, 0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == b'(' && next == Some(b':') {
            comments += 1;
            i += 1;
        } else if comments > 0 {
            if c == b':' && next == Some(b')') {
                comments -= 1;
                i += 1;
            }
        } else {
            match c {
                b'"' | b'\'' => quote = Some(c),
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    if deepest > MAX_NESTING {
        return Err(format!(
            "brackets nest {deepest} deep, more than the {MAX_NESTING} this broker accepts"
        ));
    }
    Ok(())
}

/// Skips white space and XQuery comments `(: ... :)` (which nest).
fn skip_space(mut s: &str) -> Result<&str, String> {
    loop {
        s = s.trim_start();
        if !s.starts_with("(:") {
            return Ok(s);
        }
        let mut depth = 0usize;
        let mut i = 0;
        let b = s.as_bytes();
        loop {
            if i + 1 >= b.len() {
                return Err("unterminated comment".into());
            }
            match (b[i], b[i + 1]) {
                (b'(', b':') => {
                    depth += 1;
                    i += 2;
                }
                (b':', b')') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                }
                _ => i += 1,
            }
        }
        s = &s[i..];
    }
}

/// The next prolog declaration (without its `;`) and the text after it, or `None` when
/// the expression begins.
fn next_declaration(s: &str) -> Result<Option<(&str, &str)>, String> {
    let starts = ["declare", "xquery"];
    let Some(word) = starts.iter().find(|w| s.starts_with(**w)) else {
        return Ok(None);
    };
    // `declare` or `xquery` followed by white space and a letter begins a declaration;
    // anything else (`declare/x`, `xquery-x`) is part of an expression.
    let after = &s[word.len()..];
    let next = after.trim_start();
    if after.len() == next.len() || !next.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok(None);
    }
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => return Ok(Some((&s[..i], &s[i + 1..]))),
            _ => {}
        }
    }
    Err(format!("prolog declaration without ';': {}", s.trim()))
}

/// Words of a declaration; a quoted string is one word with its quotes, `=` is a word.
fn split_words(decl: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = decl.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            let mut w = String::new();
            w.push(c);
            chars.next();
            loop {
                match chars.next() {
                    Some(d) if d == c => break,
                    Some(d) => w.push(d),
                    None => return Err(format!("unterminated string in: {}", decl.trim())),
                }
            }
            w.push(c);
            words.push(w);
        } else if c == '=' {
            chars.next();
            words.push("=".into());
        } else {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || d == '=' || d == '"' || d == '\'' {
                    break;
                }
                w.push(d);
                chars.next();
            }
            words.push(w);
        }
    }
    Ok(words)
}

fn unquote(w: &str) -> Result<&str, String> {
    w.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| w.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .ok_or_else(|| format!("expected a quoted URI, got {w}"))
}

/// A name without a colon, as XML allows it (ASCII-restrictive where it does not matter).
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_expression() {
        let q = parse(" ./weather/station = 'x' ").expect("parse");
        assert_eq!(q.expr, "./weather/station = 'x' ");
        assert!(q.namespaces.is_empty() && q.variables.is_empty());
    }

    #[test]
    fn namespaces_and_variables() {
        let q = parse(
            "declare namespace f='http://www.gonicus.de/Events';\n\
             declare variable $colour external;\n\
             declare variable $n as xs:integer external;\n\
             (: comment (: nested :) ;; :)\n\
             let $e := ./f:Event return $e/f:NodeStatus and $colour = 'red'",
        )
        .expect("parse");
        assert_eq!(
            q.namespaces,
            [("f".to_string(), "http://www.gonicus.de/Events".to_string())]
        );
        assert_eq!(q.variables, ["colour", "n"]);
        assert!(q.expr.starts_with("let $e"));
    }

    #[test]
    fn default_namespace_and_version() {
        let q =
            parse("xquery version \"1.0\"; declare default element namespace \"urn:a\"; /Event")
                .expect("parse");
        assert_eq!(q.default_element_namespace.as_deref(), Some("urn:a"));
        assert_eq!(q.expr, "/Event");
    }

    #[test]
    fn semicolons_inside_strings() {
        let q = parse("declare namespace a = \"urn:x;y\"; ./a:b").expect("parse");
        assert_eq!(q.namespaces[0].1, "urn:x;y");
    }

    #[test]
    fn refusals_name_the_problem() {
        for (text, needle) in [
            ("declare function local:f() { 1 }; 1", "unsupported prolog"),
            ("declare namespace a = \"urn:x\"", "without ';'"),
            ("declare namespace a = \"urn:x\";   ", "no expression"),
            ("declare variable $a:b external; 1", "variable name"),
            ("(: open", "unterminated comment"),
            ("", "no expression"),
            ("((((((((((((1))))))))))))", "nest 12 deep"),
            ("./a[b[c[d[e[f[g[h[i[j[k[l]]]]]]]]]]]", "nest 11 deep"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_nest() {
        let deep = "(".repeat(20);
        parse(&format!("'{deep}' = \"{deep}\" (: {deep} :)")).expect("parse");
        let siblings = "(1) and ".repeat(50);
        parse(&format!("{siblings} (((((((((( 1 ))))))))))")).expect("parse");
    }

    #[test]
    fn names_that_only_look_like_declarations() {
        let q = parse("declare/x").expect("parse");
        assert_eq!(q.expr, "declare/x");
    }
}

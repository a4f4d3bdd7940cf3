//! Command arguments as typed on the command line and in the shell, turned into JSON-RPC
//! params: an array of positional values, or an object of named ones.

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

/// Collects arguments and refuses to mix the two kinds, as the agent takes one or the other.
#[derive(Debug, Default)]
pub struct ParamsBuilder {
    positional: Vec<Value>,
    named: Map<String, Value>,
}

impl ParamsBuilder {
    /// Adds the next positional argument.
    pub fn positional(&mut self, value: Value) {
        self.positional.push(value);
    }

    /// Adds a named argument.
    ///
    /// # Errors
    /// The same name twice.
    pub fn named(&mut self, key: &str, value: Value) -> anyhow::Result<()> {
        if self.named.insert(key.to_string(), value).is_some() {
            bail!("argument {key} is given twice");
        }
        Ok(())
    }

    /// The params: an object when named, else an array (empty without arguments).
    ///
    /// # Errors
    /// Positional and named arguments together.
    pub fn finish(self) -> anyhow::Result<Value> {
        match (self.positional.is_empty(), self.named.is_empty()) {
            (_, true) => Ok(Value::Array(self.positional)),
            (true, false) => Ok(Value::Object(self.named)),
            (false, false) => bail!(
                "positional arguments and named ones (key=value) cannot be mixed: give all \
                 of them by name or all by position"
            ),
        }
    }
}

/// Whether `s` is a parameter name: a letter or `_`, then letters, digits or `_`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `clacks call` arguments: `key=value` (key an identifier) is named, anything else
/// positional; each value is JSON when it parses as JSON, else a string.
///
/// # Errors
/// Mixed or repeated arguments.
pub fn cli_params(args: &[String]) -> anyhow::Result<Value> {
    let json_or_string =
        |s: &str| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()));
    let mut params = ParamsBuilder::default();
    for arg in args {
        match arg.split_once('=') {
            Some((key, value)) if is_identifier(key) => params.named(key, json_or_string(value))?,
            _ => params.positional(json_or_string(arg)),
        }
    }
    params.finish()
}

/// A line typed into the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum ShellLine {
    /// Nothing to do (blank, or a `#` comment).
    Empty,
    /// `help` or `help target`: the methods listing.
    Help(Option<String>),
    /// `exit` or `quit`.
    Exit,
    /// A command call.
    Call {
        /// The command.
        method: String,
        /// Its params (array or object).
        params: Value,
    },
}

/// Parses `method(arg, key=value)` or `method arg key=value`. Values are JSON literals,
/// also in Python's spelling (`True`, `False`, `None`, 'single quotes', tuples); in the
/// second form a word that is no literal is a string.
///
/// # Errors
/// Syntax errors, with the position; mixed or repeated arguments.
pub fn parse_shell_line(line: &str) -> anyhow::Result<ShellLine> {
    let mut p = Parser::new(line);
    p.skip_ws();
    if p.at_end() || p.peek() == Some('#') {
        return Ok(ShellLine::Empty);
    }
    let method = p
        .identifier()
        .ok_or_else(|| anyhow!("expected a command name, like getNodes() or getNodes"))?;
    let mut params = ParamsBuilder::default();
    p.skip_ws();
    if p.eat('(') {
        p.skip_ws();
        if !p.eat(')') {
            loop {
                p.skip_ws();
                let start = p.pos;
                match p.identifier() {
                    Some(key) if p.eat_after_ws('=') => {
                        p.skip_ws();
                        let value = p.value()?;
                        params.named(&key, value)?;
                    }
                    _ => {
                        p.pos = start;
                        let value = p.value()?;
                        params.positional(value);
                    }
                }
                p.skip_ws();
                if p.eat(')') {
                    break;
                }
                if !p.eat(',') {
                    return Err(p.error("expected ',' or ')'"));
                }
                p.skip_ws();
                // Python allows a comma before the closing parenthesis.
                if p.eat(')') {
                    break;
                }
            }
        }
        p.skip_ws();
        p.eat(';');
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("unexpected text after ')'"));
        }
    } else {
        while !p.at_end() {
            let start = p.pos;
            let key = p.identifier().filter(|_| p.eat('='));
            if key.is_none() {
                p.pos = start;
            }
            let value = p.word_value();
            match key {
                Some(key) => params.named(&key, value)?,
                None => params.positional(value),
            }
            p.skip_ws();
        }
    }
    let params = params.finish()?;
    let no_args = params.as_array().is_some_and(Vec::is_empty);
    Ok(match method.as_str() {
        "exit" | "quit" if no_args => ShellLine::Exit,
        "help" if no_args => ShellLine::Help(None),
        "help" => match params.as_array().map(Vec::as_slice) {
            Some([Value::String(target)]) => ShellLine::Help(Some(target.clone())),
            _ => bail!("help takes one target name, like help core"),
        },
        _ => ShellLine::Call { method, params },
    })
}

/// A hand-written recursive-descent reader over one line.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

/// Nesting allowed in a literal, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Eats `c` after optional whitespace; leaves the position alone when it is not there.
    fn eat_after_ws(&mut self, c: char) -> bool {
        let start = self.pos;
        self.skip_ws();
        // `==` is no keyword argument.
        if self.eat(c) && self.peek() != Some('=') {
            return true;
        }
        self.pos = start;
        false
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{what} at column {}",
            self.text[..self.pos].chars().count() + 1
        )
    }

    fn identifier(&mut self) -> Option<String> {
        let len = self
            .rest()
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map_or(self.rest().len(), |(i, _)| i);
        if len == 0 {
            return None;
        }
        let id = self.rest()[..len].to_string();
        self.pos += len;
        Some(id)
    }

    fn value(&mut self) -> anyhow::Result<Value> {
        self.value_at(0)
    }

    /// A literal when one ends at a word boundary, else the word up to whitespace as a
    /// string (so `getMethods org.clacks.command.core` needs no quotes).
    fn word_value(&mut self) -> Value {
        let start = self.pos;
        if let Ok(v) = self.value() {
            if self.at_end() || self.peek().is_some_and(char::is_whitespace) {
                return v;
            }
        }
        self.pos = start;
        let len = self
            .rest()
            .find(char::is_whitespace)
            .unwrap_or(self.rest().len());
        let word = self.rest()[..len].to_string();
        self.pos += len;
        Value::String(word)
    }

    fn value_at(&mut self, depth: usize) -> anyhow::Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some('"' | '\'') => self.string().map(Value::String),
            Some('[') => {
                self.bump();
                self.sequence(']', depth).map(Value::Array)
            }
            Some('(') => {
                self.bump();
                self.sequence(')', depth).map(Value::Array)
            }
            Some('{') => {
                self.bump();
                self.object(depth)
            }
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let start = self.pos;
                let word = self.identifier().unwrap_or_default();
                match word.as_str() {
                    "true" | "True" => Ok(Value::Bool(true)),
                    "false" | "False" => Ok(Value::Bool(false)),
                    "null" | "None" => Ok(Value::Null),
                    _ => {
                        self.pos = start;
                        Err(self.error(&format!("{word} is no value (quote strings: '{word}')")))
                    }
                }
            }
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("expected a value, found the end of the line")),
        }
    }

    fn sequence(&mut self, close: char, depth: usize) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value_at(depth + 1)?);
            self.skip_ws();
            if self.eat(close) {
                return Ok(items);
            }
            if !self.eat(',') {
                return Err(self.error(&format!("expected ',' or '{close}'")));
            }
        }
    }

    fn object(&mut self, depth: usize) -> anyhow::Result<Value> {
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.eat('}') {
                return Ok(Value::Object(map));
            }
            let key = match self.peek() {
                Some('"' | '\'') => self.string()?,
                _ => self
                    .identifier()
                    .ok_or_else(|| self.error("expected a key"))?,
            };
            self.skip_ws();
            if !self.eat(':') {
                return Err(self.error("expected ':'"));
            }
            let value = self.value_at(depth + 1)?;
            map.insert(key, value);
            self.skip_ws();
            if self.eat('}') {
                return Ok(Value::Object(map));
            }
            if !self.eat(',') {
                return Err(self.error("expected ',' or '}'"));
            }
        }
    }

    fn string(&mut self) -> anyhow::Result<String> {
        let quote = self.bump().ok_or_else(|| self.error("expected a string"))?;
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(self.error("unterminated string")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('0') => out.push('\0'),
                    Some('u') => out.push(self.unicode_escape()?),
                    Some(c) => out.push(c),
                    None => return Err(self.error("unterminated string")),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn unicode_escape(&mut self) -> anyhow::Result<char> {
        let hex = |p: &mut Self| -> anyhow::Result<u32> {
            let digits = p
                .rest()
                .get(..4)
                .ok_or_else(|| p.error("short \\u escape"))?;
            let v = u32::from_str_radix(digits, 16).map_err(|_| p.error("bad \\u escape"))?;
            p.pos += 4;
            Ok(v)
        };
        let first = hex(self)?;
        // A UTF-16 surrogate pair spells one character outside the basic plane.
        let code = if (0xd800..0xdc00).contains(&first) && self.rest().starts_with("\\u") {
            self.pos += 2;
            let second = hex(self)?;
            0x10000 + ((first - 0xd800) << 10) + (second.wrapping_sub(0xdc00) & 0x3ff)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("\\u escape is no character"))
    }

    fn number(&mut self) -> anyhow::Result<Value> {
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
            .unwrap_or(self.rest().len());
        let lexeme = &self.rest()[..len];
        let json = lexeme.strip_prefix('+').unwrap_or(lexeme);
        // Python writes `1.` and `.5`; JSON wants digits on both sides.
        let json = if json.ends_with('.') {
            format!("{json}0")
        } else if let Some(frac) = json.strip_prefix('.') {
            format!("0.{frac}")
        } else if let Some(frac) = json.strip_prefix("-.") {
            format!("-0.{frac}")
        } else {
            json.to_string()
        };
        let value: Value = serde_json::from_str(&json)
            .map_err(|_| self.error(&format!("{lexeme} is not a number")))?;
        self.pos += len;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(line: &str) -> (String, Value) {
        match parse_shell_line(line).expect(line) {
            ShellLine::Call { method, params } => (method, params),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn cli_arguments_are_json_or_strings_and_named_or_positional() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cli_params(&[]).expect("none"), json!([]));
        assert_eq!(
            cli_params(&args(&["1", "x", "[1,2]", "\"a=b\"", "-3"])).expect("positional"),
            json!([1, "x", [1, 2], "a=b", -3])
        );
        assert_eq!(
            cli_params(&args(&["queue=org.clacks.command.core", "force=true"])).expect("named"),
            json!({"queue": "org.clacks.command.core", "force": true})
        );
        // Not an identifier before '=': positional.
        assert_eq!(
            cli_params(&args(&["a b=c", "1=2"])).expect("not named"),
            json!(["a b=c", "1=2"])
        );
        let err = cli_params(&args(&["1", "a=2"])).expect_err("mixed");
        assert!(err.to_string().contains("cannot be mixed"), "{err}");
        let err = cli_params(&args(&["a=1", "a=2"])).expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn shell_calls_in_python_syntax() {
        assert_eq!(call("getNodes()"), ("getNodes".into(), json!([])));
        assert_eq!(call("  getNodes  "), ("getNodes".into(), json!([])));
        assert_eq!(
            call("f(1, -2.5, 'it\\'s', \"x\\ty\", True, False, None, [1, (2, 3)], {'a': {b: null}},)"),
            (
                "f".into(),
                json!([1, -2.5, "it's", "x\ty", true, false, null, [1, [2, 3]], {"a": {"b": null}}])
            )
        );
        assert_eq!(
            call("shutdown(force=True, queue = 'q')"),
            ("shutdown".into(), json!({"force": true, "queue": "q"}))
        );
        assert_eq!(call("f('\\u00e9\\ud83d\\ude00')").1, json!(["é😀"]));
        assert_eq!(call("f(.5, 1., +2)").1, json!([0.5, 1.0, 2]));
    }

    #[test]
    fn shell_calls_in_command_line_syntax() {
        assert_eq!(
            call("getMethods org.clacks.command.core"),
            ("getMethods".into(), json!(["org.clacks.command.core"]))
        );
        assert_eq!(
            call("f 'a b' [1, 2] 3 x1 True"),
            ("f".into(), json!(["a b", [1, 2], 3, "x1", true]))
        );
        assert_eq!(
            call("getMethods queue=org.clacks.command.core locale=None"),
            (
                "getMethods".into(),
                json!({"queue": "org.clacks.command.core", "locale": null})
            )
        );
    }

    #[test]
    fn shell_words_and_mistakes() {
        assert_eq!(parse_shell_line("").expect("empty"), ShellLine::Empty);
        assert_eq!(
            parse_shell_line(" # note").expect("comment"),
            ShellLine::Empty
        );
        assert_eq!(
            parse_shell_line("help").expect("help"),
            ShellLine::Help(None)
        );
        assert_eq!(
            parse_shell_line("help()").expect("help()"),
            ShellLine::Help(None)
        );
        assert_eq!(
            parse_shell_line("help core").expect("help core"),
            ShellLine::Help(Some("core".into()))
        );
        assert_eq!(parse_shell_line("exit").expect("exit"), ShellLine::Exit);
        for (bad, says) in [
            ("f(1", "expected ',' or ')'"),
            ("f(x)", "x is no value"),
            ("f('open", "unterminated string"),
            ("f(1) junk", "unexpected text"),
            ("f(1, a=2)", "cannot be mixed"),
            ("(1)", "expected a command name"),
        ] {
            let err = parse_shell_line(bad).expect_err(bad);
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let deep = format!("f({}{})", "[".repeat(100), "]".repeat(100));
        assert!(parse_shell_line(&deep).is_err());
    }
}

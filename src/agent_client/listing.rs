//! Readable listings of `getMethods` (as the original shell's `help()` printed it) and
//! `getNodes`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;
use serde_json::Value;

/// Width the method descriptions are wrapped to, indentation included.
const WRAP_COLUMNS: usize = 72;

/// Indentation of a method description.
const DOC_INDENT: &str = "    ";

/// The methods grouped by target: per target an upper-case heading underlined with `=`,
/// then `  name(sig, ...)` lines sorted by name, each followed by its description wrapped
/// at 72 columns and indented by 4; groups are separated by a blank line.
///
/// # Errors
/// A result that is not a map of method records, or no method of `only_target`.
pub fn format_methods(methods: &Value, only_target: Option<&str>) -> anyhow::Result<String> {
    let Some(map) = methods.as_object() else {
        bail!("getMethods did not return a map: {methods}");
    };
    let mut groups: BTreeMap<&str, Vec<(&str, &Value)>> = BTreeMap::new();
    for (name, info) in map {
        let target = info.get("target").and_then(Value::as_str).unwrap_or("");
        groups.entry(target).or_default().push((name, info));
    }
    if let Some(only) = only_target {
        if !groups.contains_key(only) {
            let known: Vec<&str> = groups.keys().copied().collect();
            bail!(
                "no methods with target {only:?} (targets: {})",
                known.join(", ")
            );
        }
        groups.retain(|t, _| *t == only);
    }
    let mut out = String::new();
    for (i, (target, mut entries)) in groups.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let heading = if target.is_empty() {
            "(NO TARGET)".to_string()
        } else {
            target.to_uppercase()
        };
        let _ = writeln!(out, "{heading}\n{}", "=".repeat(heading.chars().count()));
        entries.sort_by_key(|(name, _)| *name);
        for (name, info) in entries {
            let sig: Vec<String> = info
                .get("sig")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(out, "  {name}({})", sig.join(", "));
            let doc = info.get("doc").and_then(Value::as_str).unwrap_or("");
            for line in wrap(doc, WRAP_COLUMNS - DOC_INDENT.len()) {
                let _ = writeln!(out, "{DOC_INDENT}{line}");
            }
        }
    }
    Ok(out)
}

/// Breaks `text` into lines of at most `width` characters at whitespace (a longer word
/// gets a line of its own).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The node table: a `NODE` column, then `LOAD`, then every other field any node has,
/// in name order; one row per node, sorted.
///
/// # Errors
/// A result that is not a map of nodes.
pub fn format_nodes(nodes: &Value) -> anyhow::Result<String> {
    let Some(map) = nodes.as_object() else {
        bail!("getNodes did not return a map: {nodes}");
    };
    let mut fields: Vec<&str> = Vec::new();
    for info in map.values() {
        if let Some(o) = info.as_object() {
            for key in o.keys() {
                if !fields.contains(&key.as_str()) {
                    fields.push(key);
                }
            }
        }
    }
    // Load first: it is what getNodes is mostly asked for.
    fields.sort_by_key(|f| (*f != "load", *f));
    let mut rows: Vec<Vec<String>> = vec![std::iter::once("NODE".to_string())
        .chain(fields.iter().map(|f| f.to_uppercase()))
        .collect()];
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let info = &map[name.as_str()];
        let mut row = vec![name.clone()];
        for field in &fields {
            row.push(match info.get(field) {
                None | Some(Value::Null) => "-".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            });
        }
        rows.push(row);
    }
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// The URL without its password, for display.
fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((login, host)) => {
                let user = login.split_once(':').map_or(login, |(u, _)| u);
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `clacks link list`: one line per link with its state and last error.
pub fn format_links(links: &Value) -> String {
    let mut out = String::from("NAME\tSTATE\tURL\tERROR\n");
    for l in links.as_array().into_iter().flatten() {
        let text = |k: &str| l[k].as_str().unwrap_or("-").to_string();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            text("name"),
            text("state"),
            without_password(&text("url")),
            text("error"),
        ));
    }
    out
}

/// `clacks queues`: one line per queue, with in and out rates per second when an earlier
/// sample and its age are given.
pub fn format_queues(queues: &Value, earlier: Option<(&Value, f64)>) -> String {
    let mut out = String::from("QUEUE	DEPTH	BYTES	ENQ	DEQ	CONS	BIND	UNACKED");
    if earlier.is_some() {
        out.push_str("	IN/S	OUT/S");
    }
    out.push('\n');
    let count = |q: &Value, k: &str| q[k].as_u64().unwrap_or(0);
    for q in queues.as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or("-");
        let _ = write!(
            out,
            "{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            count(q, "messages"),
            count(q, "bytes"),
            count(q, "enqueues"),
            count(q, "dequeues"),
            count(q, "consumers"),
            count(q, "bindings"),
            count(q, "unacked"),
        );
        if let Some((before, secs)) = earlier {
            let old = before
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["name"].as_str() == Some(name));
            let rate = |k: &str| {
                let was = old.map_or(0, |b| count(b, k));
                count(q, k).saturating_sub(was) as f64 / secs
            };
            let _ = write!(out, "\t{:.1}\t{:.1}", rate("enqueues"), rate("dequeues"));
        }
        out.push('\n');
    }
    out
}

/// `clacks route list`: one line per route with its source, destination and count.
pub fn format_routes(routes: &Value) -> String {
    let mut out = String::from("NAME\tLINK\tDIRECTION\tSOURCE\tDEST\tFORWARDED\tERROR\n");
    for r in routes.as_array().into_iter().flatten() {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let src = &r["source"];
        let field = |k: &str| src[k].as_str().unwrap_or("-").to_string();
        let source = match src["type"].as_str() {
            Some("queue") => format!("queue {}", field("queue")),
            _ => format!("exchange {} key {:?}", field("exchange"), field("key")),
        };
        let direction = if r["push"].as_bool() == Some(true) {
            "push"
        } else {
            "pull"
        };
        out.push_str(&format!(
            "{}\t{}\t{direction}\t{source}\t{}\t{}\t{}\n",
            text("name"),
            text("link"),
            text("dest"),
            r["forwarded"].as_u64().unwrap_or(0),
            text("last_error"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn methods_grouped_by_target_like_the_original_help() {
        let methods = json!({
            "getNodes": {"target": "core", "sig": [], "doc": "List the nodes."},
            "getMethods": {"target": "core", "sig": ["queue", "locale"],
                           "doc": "List available methods that are registered on the bus, \
                                   with a description long enough to need a second line."},
            "hello": {"target": "sample", "sig": ["name"], "doc": "Say hello."}
        });
        let text = format_methods(&methods, None).expect("listing");
        assert_eq!(
            text,
            "CORE\n====\n  getMethods(queue, locale)\n    List available methods that are \
             registered on the bus, with a\n    description long enough to need a second \
             line.\n  getNodes()\n    List the nodes.\n\nSAMPLE\n======\n  hello(name)\n    \
             Say hello.\n"
        );
        for line in text.lines() {
            assert!(line.len() <= 72, "{line}");
        }
        let sample = format_methods(&methods, Some("sample")).expect("one target");
        assert!(sample.starts_with("SAMPLE\n") && !sample.contains("CORE"));
        let err = format_methods(&methods, Some("goto")).expect_err("unknown");
        assert!(err.to_string().contains("targets: core, sample"), "{err}");
    }

    #[test]
    fn wrapping_keeps_long_words_whole() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("abcdefgh x", 4), ["abcdefgh", "x"]);
        assert!(wrap("  ", 10).is_empty());
    }

    #[test]
    fn nodes_as_a_table() {
        let nodes = json!({
            "node-b": {"load": 0.5, "workers": 6},
            "node-a": {"load": 0.07, "indexed": true},
        });
        assert_eq!(
            format_nodes(&nodes).expect("table"),
            "NODE    LOAD  INDEXED  WORKERS\n\
             node-a  0.07  true     -\n\
             node-b  0.5   -        6\n"
        );
        assert_eq!(format_nodes(&json!({})).expect("empty"), "NODE\n");
    }
}

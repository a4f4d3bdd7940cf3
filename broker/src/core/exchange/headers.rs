//! `headers` routing: binding arguments against `application-headers`. `x-match` = `all` or
//! `any` is required; a void argument matches on the header's presence alone.

use crate::core::error::Error;
use crate::wire::{FieldTable, Value};

#[derive(Debug)]
struct HeadersBinding {
    queue: String,
    key: String,
    all: bool,
    pairs: Vec<(String, Value)>,
}

/// Bindings with their parsed match rules.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    bindings: Vec<HeadersBinding>,
}

impl HeadersRouter {
    pub(super) fn add(&mut self, queue: &str, key: &str, args: &FieldTable) -> Result<(), Error> {
        let all = match args.get("x-match").and_then(Value::as_str) {
            Some("all") => true,
            Some("any") => false,
            _ => {
                return Err(Error::Internal(
                    "headers binding needs x-match = all or any".into(),
                ))
            }
        };
        let pairs = args
            .iter()
            .filter(|(k, _)| !k.starts_with("x-") && !k.starts_with("qpid.fed."))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.bindings.push(HeadersBinding {
            queue: queue.to_string(),
            key: key.to_string(),
            all,
            pairs,
        });
        Ok(())
    }

    pub(super) fn remove(&mut self, queue: &str, key: &str) {
        self.bindings
            .retain(|b| !(b.queue == queue && b.key == key));
    }

    pub(super) fn route(&self, headers: Option<&FieldTable>, out: &mut Vec<String>) {
        let empty = FieldTable::new();
        let headers = headers.unwrap_or(&empty);
        for b in &self.bindings {
            let mut hits = b.pairs.iter().map(|(k, want)| match headers.get(k) {
                None => false,
                Some(_) if *want == Value::Void => true,
                Some(got) => values_equal(want, got),
            });
            let matched = if b.all {
                hits.all(|h| h)
            } else {
                hits.any(|h| h)
            };
            if matched {
                out.push(b.queue.clone());
            }
        }
    }
}

/// Equality across the integer and string encodings different clients choose.
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if !matches!(a, Value::Str8(_) | Value::Str16(_)) => return x == y,
        _ => {}
    }
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

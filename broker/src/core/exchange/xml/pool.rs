//! The threads that evaluate xml binding queries.
//!
//! The XPath engine's values cannot move between threads, so each thread compiles and keeps
//! its own copy of every query it meets (by binding id), parses a message once and runs the
//! queries of all bindings whose key matches against that one document. Callers hand over
//! an immutable snapshot of the bindings and wait for the answer without holding the broker
//! lock.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use xee_xpath::context::{StaticContextBuilder, Variables};
use xee_xpath::query::SequenceQuery;
use xee_xpath::{Documents, Queries, Query, Sequence};
use xot::xmlname::OwnedName;

use super::filter::Doc;
use super::prolog::XQuery;
use super::{HeaderValue, SharedBindings, XmlBinding};
use crate::core::message::Message;
use crate::wire::FieldTable;

/// Threads used when `CLACKS_XML_THREADS` does not say otherwise.
const DEFAULT_THREADS: usize = 2;

/// Evaluation recurses on deep documents and queries; the stack is only reserved, not
/// committed, until used.
const STACK_SIZE: usize = 64 * 1024 * 1024;

/// Deepest element nesting evaluated: the engine's time grows faster than linearly with
/// depth, and events are shallow. Deeper bodies match nothing.
const MAX_DOC_DEPTH: usize = 256;

/// Compiled queries not used for this many jobs are dropped from a thread's cache.
const CACHE_SWEEP: u64 = 4096;

enum Job {
    Route {
        bindings: SharedBindings,
        msg: Arc<Message>,
        reply: mpsc::SyncSender<Vec<String>>,
    },
    Check {
        query: Arc<XQuery>,
        reply: mpsc::SyncSender<Result<(), String>>,
    },
}

struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("CLACKS_XML_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_THREADS)
            .clamp(1, 64);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("clacks-xml-{i}"))
                .stack_size(STACK_SIZE)
                .spawn(move || worker(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!("cannot start xml evaluation thread: {e}"),
            }
        }
        Pool {
            jobs: (started > 0).then_some(tx),
        }
    })
}

/// The queues of `bindings` that `msg` matches, in binding order. A body that is not
/// well-formed XML matches nothing.
pub(crate) fn route(bindings: SharedBindings, msg: Arc<Message>) -> Vec<String> {
    let key = msg.routing_key();
    let any = bindings
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .has_key(key);
    if !any {
        return Vec::new();
    }
    let (reply, answer) = mpsc::sync_channel(1);
    submit(Job::Route {
        bindings,
        msg,
        reply,
    });
    wait(&answer).unwrap_or_default()
}

/// Whether a query compiles, checked on an evaluation thread (deeply nested text needs its
/// large stack).
///
/// # Errors
/// The engine's complaint.
pub(crate) fn check(query: Arc<XQuery>) -> Result<(), String> {
    let (reply, answer) = mpsc::sync_channel(1);
    submit(Job::Check { query, reply });
    wait(&answer).unwrap_or_else(|| Err("no xml evaluation thread available".into()))
}

fn submit(job: Job) {
    if let Some(jobs) = &pool().jobs {
        // A send fails only when every thread is gone; the caller then sees no answer.
        let _ = jobs.send(job);
    }
}

/// Waits for an evaluation thread's answer, letting the async runtime move other tasks
/// off this worker meanwhile when it can.
fn wait<T>(answer: &mpsc::Receiver<T>) -> Option<T> {
    let recv = || answer.recv().ok();
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(recv)
        }
        _ => recv(),
    }
}

struct Compiled {
    query: SequenceQuery,
    /// (header name, variable name) for each external variable.
    variables: Vec<(String, OwnedName)>,
    last_used: u64,
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut cache: HashMap<u64, Compiled> = HashMap::new();
    let mut count: u64 = 0;
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        count += 1;
        match job {
            Job::Route {
                bindings,
                msg,
                reply,
            } => {
                let matched = catch_unwind(AssertUnwindSafe(|| {
                    evaluate(&mut cache, count, &bindings, &msg)
                }));
                let matched = matched.unwrap_or_else(|_| {
                    // The engine panicked on this input: drop what it may have left
                    // half-built and carry on with the next message.
                    tracing::warn!("xml evaluation failed on a message; it matches nothing");
                    cache.clear();
                    Vec::new()
                });
                let _ = reply.send(matched);
            }
            Job::Check { query, reply } => {
                let result = catch_unwind(AssertUnwindSafe(|| compile(&query).map(|_| ())))
                    .unwrap_or_else(|_| Err("the query could not be compiled".into()));
                let _ = reply.send(result);
            }
        }
        if count.is_multiple_of(CACHE_SWEEP) {
            cache.retain(|_, c| count - c.last_used < CACHE_SWEEP);
        }
    }
}

fn compile(q: &XQuery) -> Result<Compiled, String> {
    let mut ctx = StaticContextBuilder::default();
    ctx.namespaces(q.namespaces.iter().map(|(p, u)| (p.as_str(), u.as_str())));
    if let Some(ns) = &q.default_element_namespace {
        ctx.default_element_namespace(ns);
    }
    let variables: Vec<(String, OwnedName)> = q
        .variables
        .iter()
        .map(|v| (v.clone(), OwnedName::name(v)))
        .collect();
    ctx.variable_names(variables.iter().map(|(_, n)| n.clone()));
    let query = Queries::default()
        .sequence_with_context(&q.expr, ctx.build())
        .map_err(|e| e.to_string())?;
    Ok(Compiled {
        query,
        variables,
        last_used: 0,
    })
}

/// The queues `msg` matches, in binding order: compiled filters over one light parse of
/// the body, and the engine for the rest (or for all, on a body the light parse leaves to
/// it). The bindings are read-locked only while the compiled filters run: a bind or an
/// unbind, which waits for the lock under the broker's, never waits for the engine.
fn evaluate(
    cache: &mut HashMap<u64, Compiled>,
    now: u64,
    shared: &SharedBindings,
    msg: &Message,
) -> Vec<String> {
    let key = msg.routing_key();
    let headers = msg.headers();
    let doc = if msg.body.is_empty() {
        None
    } else {
        Doc::parse(&msg.body)
    };
    let (mut matched, for_engine) = {
        let bindings = shared.read().unwrap_or_else(|e| e.into_inner());
        let ids = match &doc {
            Some(doc) => bindings.filters.matches(doc, headers, |id| {
                bindings.by_id.get(&id).is_some_and(|b| b.key == key)
            }),
            None => Vec::new(),
        };
        let matched: Vec<(u64, String)> = ids
            .into_iter()
            .filter_map(|id| bindings.by_id.get(&id).map(|b| (id, b.queue.clone())))
            .collect();
        let for_engine: Vec<XmlBinding> = if doc.is_none() || bindings.engine > 0 {
            bindings
                .iter()
                .filter(|b| b.key == key && (doc.is_none() || !bindings.filters.contains(b.id)))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        (matched, for_engine)
    };
    if !for_engine.is_empty() {
        for id in engine_matches(cache, now, for_engine.iter(), msg) {
            if let Ok(i) = for_engine.binary_search_by_key(&id, |b| b.id) {
                matched.push((id, for_engine[i].queue.clone()));
            }
        }
        matched.sort_unstable_by_key(|(id, _)| *id);
    }
    matched.into_iter().map(|(_, queue)| queue).collect()
}

/// The ids of `bindings` whose queries the XPath engine finds true for `msg`.
fn engine_matches<'b>(
    cache: &mut HashMap<u64, Compiled>,
    now: u64,
    mut bindings: impl Iterator<Item = &'b XmlBinding>,
    msg: &Message,
) -> Vec<u64> {
    let mut out = Vec::new();
    let Some(first) = bindings.next() else {
        return out;
    };
    let mut docs = Documents::new();
    // Parsed once for every binding. No body at all leaves no context item: queries on
    // headers alone still work, queries on the content fail and so do not match.
    let root = if msg.body.is_empty() {
        None
    } else if element_depth(&msg.body) > MAX_DOC_DEPTH {
        tracing::debug!("xml exchange: message body nests deeper than {MAX_DOC_DEPTH}");
        return out;
    } else {
        let parsed = std::str::from_utf8(&msg.body)
            .map_err(|e| e.to_string())
            .and_then(|s| docs.add_string_without_uri(s).map_err(|e| e.to_string()));
        match parsed.map(|h| docs.document_node(h)) {
            Ok(Some(node)) => Some(node),
            Ok(None) => return out,
            Err(e) => {
                tracing::debug!("xml exchange: message body is not well-formed XML: {e}");
                return out;
            }
        }
    };
    let headers = msg.headers();
    // Subscribers often bind the same query; its answer for this message is the same.
    let mut answered: Vec<(&XQuery, bool)> = Vec::new();
    for b in std::iter::once(first).chain(bindings) {
        if let Some((_, hit)) = answered.iter().find(|(q, _)| **q == *b.query) {
            if *hit {
                out.push(b.id);
            }
            continue;
        }
        let compiled = match cache.entry(b.id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match compile(&b.query) {
                Ok(c) => e.insert(c),
                Err(err) => {
                    // Checked at bind time; only a changed engine could get here.
                    tracing::warn!("xml binding of {} does not compile: {err}", b.queue);
                    continue;
                }
            },
        };
        compiled.last_used = now;
        let mut vars = Variables::default();
        for (header, name) in &compiled.variables {
            vars.insert(name.clone(), header_sequence(headers, header));
        }
        let result = compiled
            .query
            .execute_build_context(&mut docs, |ctx| {
                if let Some(node) = root {
                    ctx.context_node(node);
                }
                ctx.variables(vars);
            })
            .map_err(|e| e.to_string())
            .and_then(|s| s.effective_boolean_value().map_err(|e| e.to_string()));
        let hit = result.unwrap_or_else(|e| {
            tracing::debug!("xml binding of {} does not match: {e}", b.queue);
            false
        });
        if hit {
            out.push(b.id);
        }
        answered.push((&b.query, hit));
    }
    out
}

/// The deepest element nesting of a document, found by a scan for tags that skips
/// comments, processing instructions, CDATA and quoted attribute values. Approximate on
/// text that is not XML, which the parser refuses anyway.
fn element_depth(doc: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    let find = |from: usize, pat: &[u8]| {
        doc.get(from..)
            .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
            .map_or(doc.len(), |p| from + p + pat.len())
    };
    while i < doc.len() {
        if doc[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &doc[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = find(i + 2, b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = find(i + 2, b">");
        } else if rest.starts_with(b"<!") {
            i = find(i + 2, b">");
        } else {
            // An opening tag: find its end outside quoted attribute values.
            let mut j = i + 1;
            let mut quote = None;
            while j < doc.len() {
                match (quote, doc[j]) {
                    (None, q @ (b'"' | b'\'')) => quote = Some(q),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if doc.get(j.wrapping_sub(1)) != Some(&b'/') {
                depth += 1;
                deepest = deepest.max(depth);
            }
            i = j + 1;
        }
    }
    deepest
}

/// An application header as an XPath value, typed by [`super::header_value`].
fn header_sequence(headers: Option<&FieldTable>, name: &str) -> Sequence {
    match super::header_value(headers, name) {
        None => Sequence::default(),
        Some(HeaderValue::Bool(b)) => Sequence::from(b),
        Some(HeaderValue::Int(n)) => Sequence::from(n),
        Some(HeaderValue::Num(n)) => Sequence::from(n),
        Some(HeaderValue::Str(s)) => Sequence::from(s.to_string()),
    }
}

/// What the engine answers for one query over one message (the reference the compiled
/// filter is tested against).
#[cfg(test)]
pub(super) fn engine_says(query: &XQuery, msg: &Message) -> bool {
    let binding = XmlBinding {
        id: 1,
        queue: String::new(),
        key: msg.routing_key().to_string(),
        query: Arc::new(query.clone()),
    };
    let mut cache = HashMap::new();
    !engine_matches(&mut cache, 1, std::iter::once(&binding), msg).is_empty()
}

#[cfg(test)]
mod tests {
    use super::element_depth;

    #[test]
    fn depth_scan() {
        assert_eq!(element_depth(b"<a/>"), 0);
        assert_eq!(element_depth(b"<a><b x='>' y=\"/>\"><c/></b></a>"), 2);
        assert_eq!(
            element_depth(b"<?xml version='1.0'?><!-- <x><y> --><a><![CDATA[<p><q>]]></a>"),
            1
        );
        assert_eq!(element_depth(b"<a><b></b><b></b></a>"), 2);
        let deep = format!("{}{}", "<a>".repeat(300), "</a>".repeat(300));
        assert_eq!(element_depth(deep.as_bytes()), 300);
    }
}

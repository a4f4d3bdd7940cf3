//! Exchanges: one routing type per file behind [`Router`], and the binding list they share.

mod direct;
mod fanout;
mod headers;
mod topic;
pub mod xml;

pub use direct::DirectRouter;
pub use fanout::FanoutRouter;
pub use headers::HeadersRouter;
pub use topic::{topic_matches, TopicRouter};
pub use xml::{SharedBindings, XmlBinding, XmlRouter};

use std::sync::Arc;

use super::error::Error;
use super::message::Message;
use super::stats::ExchangeStats;
use crate::wire::FieldTable;

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The bound queue.
    pub queue: String,
    /// The binding key.
    pub key: String,
    /// The binding arguments as given.
    pub args: FieldTable,
}

/// The routing algorithm of an exchange type.
#[derive(Debug)]
pub enum Router {
    /// `direct`: exact key match.
    Direct(DirectRouter),
    /// `topic`: dotted words with `*` and `#`.
    Topic(TopicRouter),
    /// `fanout`: every bound queue.
    Fanout(FanoutRouter),
    /// `headers`: application headers against binding arguments.
    Headers(HeadersRouter),
    /// `xml`: XPath queries over the body and headers, evaluated off the broker lock.
    Xml(XmlRouter),
}

/// Routing through an xml exchange that needs its queries evaluated first.
#[derive(Debug)]
pub struct XmlPending {
    /// The exchange.
    pub exchange: String,
    /// Its bindings at the time.
    pub bindings: SharedBindings,
}

/// The queues xml exchanges matched for one message, by exchange name.
#[derive(Debug, Default)]
pub struct XmlAnswers(Vec<(String, Vec<String>)>);

impl XmlAnswers {
    /// Records what `exchange` matched.
    pub fn insert(&mut self, exchange: String, queues: Vec<String>) {
        self.0.push((exchange, queues));
    }

    fn get(&self, exchange: &str) -> Option<&[String]> {
        self.0
            .iter()
            .find(|(e, _)| e == exchange)
            .map(|(_, q)| q.as_slice())
    }
}

impl Router {
    /// The router for a type name, or `None` when the type is unknown.
    pub fn for_type(kind: &str) -> Option<Router> {
        Some(match kind {
            "direct" => Router::Direct(DirectRouter::default()),
            "topic" => Router::Topic(TopicRouter::default()),
            "fanout" => Router::Fanout(FanoutRouter::default()),
            "headers" => Router::Headers(HeadersRouter::default()),
            "xml" => Router::Xml(XmlRouter::default()),
            _ => return None,
        })
    }

    fn add(&mut self, b: &Binding, prepared: Option<Arc<xml::XQuery>>) -> Result<(), Error> {
        match self {
            Router::Direct(r) => r.add(&b.queue, &b.key),
            Router::Topic(r) => r.add(&b.queue, &b.key),
            Router::Fanout(r) => r.add(&b.queue),
            Router::Headers(r) => r.add(&b.queue, &b.key, &b.args)?,
            Router::Xml(r) => r.add(&b.queue, &b.key, &b.args, prepared)?,
        }
        Ok(())
    }

    fn remove(&mut self, queue: &str, key: &str) {
        match self {
            Router::Direct(r) => r.remove(queue, key),
            Router::Topic(r) => r.remove(queue, key),
            Router::Fanout(r) => r.remove(queue),
            Router::Headers(r) => r.remove(queue, key),
            Router::Xml(r) => r.remove(queue, key),
        }
    }

    fn route(&self, msg: &Message, out: &mut Vec<String>) {
        match self {
            Router::Direct(r) => r.route(msg.routing_key(), out),
            Router::Topic(r) => r.route(msg.routing_key(), out),
            Router::Fanout(r) => r.route(out),
            Router::Headers(r) => r.route(msg.headers(), out),
            // Answered by the evaluation threads; see `Exchange::route_with`.
            Router::Xml(_) => {}
        }
    }
}

/// An exchange: its settings, its bindings and its router.
#[derive(Debug)]
pub struct Exchange {
    /// Name.
    pub name: String,
    /// Type name as declared (`direct`, `topic`, ...).
    pub kind: String,
    /// Whether it survives a restart.
    pub durable: bool,
    /// Whether it goes away with its last binding.
    pub auto_delete: bool,
    /// Where unroutable messages go.
    pub alternate: Option<String>,
    /// Declare arguments as given.
    pub args: FieldTable,
    /// What it has counted.
    pub stats: ExchangeStats,
    bindings: Vec<Binding>,
    router: Router,
    /// Bindings to other exchanges (0-9-1 `exchange.bind`), `Binding::queue` naming the
    /// destination exchange; routed by a router of this exchange's own type.
    exchange_bindings: Vec<Binding>,
    exchange_router: Option<Router>,
    /// Auto-delete waits for the first binding before it can trigger.
    had_bindings: bool,
}

impl Exchange {
    /// A new exchange of a known type.
    ///
    /// # Errors
    /// `NotFound` for an unknown type (as qpidd answers).
    pub fn new(name: &str, kind: &str) -> Result<Exchange, Error> {
        let router = Router::for_type(kind)
            .ok_or_else(|| Error::NotFound(format!("unknown exchange type: {kind}")))?;
        Ok(Exchange {
            name: name.to_string(),
            kind: kind.to_string(),
            durable: false,
            auto_delete: false,
            alternate: None,
            args: FieldTable::new(),
            stats: ExchangeStats::default(),
            bindings: Vec::new(),
            router,
            exchange_bindings: Vec::new(),
            exchange_router: None,
            had_bindings: false,
        })
    }

    /// Adds a binding; binding the same queue and key again is a no-op (returns false).
    ///
    /// # Errors
    /// Arguments the type cannot use (headers without a valid `x-match`).
    pub fn bind(&mut self, queue: &str, key: &str, args: &FieldTable) -> Result<bool, Error> {
        self.bind_prepared(queue, key, args, None)
    }

    /// [`Exchange::bind`] with an xml query already compiled from `args` (see
    /// [`xml::compile_binding_query`]), so that the compile need not happen here.
    ///
    /// # Errors
    /// As [`Exchange::bind`].
    pub fn bind_prepared(
        &mut self,
        queue: &str,
        key: &str,
        args: &FieldTable,
        prepared: Option<Arc<xml::XQuery>>,
    ) -> Result<bool, Error> {
        let new = add_binding(
            &mut self.bindings,
            &mut self.router,
            queue,
            key,
            args,
            prepared,
        )?;
        self.had_bindings |= new;
        Ok(new)
    }

    /// Removes a binding; returns whether there was one.
    pub fn unbind(&mut self, queue: &str, key: &str) -> bool {
        remove_binding(&mut self.bindings, Some(&mut self.router), queue, key)
    }

    /// Removes every binding of `queue` (the queue is being deleted).
    pub fn unbind_queue(&mut self, queue: &str) {
        for k in keys_to(&self.bindings, queue) {
            self.unbind(queue, &k);
        }
    }

    /// The queues a message goes to, each once. An xml exchange routes nothing here: see
    /// [`Exchange::route_with`].
    pub fn route(&self, msg: &Message, out: &mut Vec<String>) {
        let start = out.len();
        self.router.route(msg, out);
        dedup_from(out, start);
    }

    /// Like [`Exchange::route`], taking an xml exchange's matches from `answers`.
    ///
    /// # Errors
    /// The bindings to evaluate when `answers` has nothing for this xml exchange yet.
    pub fn route_with(
        &self,
        msg: &Message,
        out: &mut Vec<String>,
        answers: &XmlAnswers,
    ) -> Result<(), XmlPending> {
        let Router::Xml(r) = &self.router else {
            self.route(msg, out);
            return Ok(());
        };
        let Some(queues) = answers.get(&self.name) else {
            return Err(XmlPending {
                exchange: self.name.clone(),
                bindings: r.snapshot(),
            });
        };
        let start = out.len();
        out.extend_from_slice(queues);
        dedup_from(out, start);
        Ok(())
    }

    /// Binds the exchange `destination`: what this exchange routes under `key` goes on to
    /// it. Binding the same destination and key again is a no-op (returns false).
    ///
    /// # Errors
    /// 406 from an xml exchange (its queries answer with queues only); arguments the type
    /// cannot use.
    pub fn bind_exchange(
        &mut self,
        destination: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<bool, Error> {
        if matches!(self.router, Router::Xml(_)) {
            return Err(Error::PreconditionFailed(format!(
                "bindings from the xml exchange {} to other exchanges are not offered",
                self.name
            )));
        }
        let router = match &mut self.exchange_router {
            Some(r) => r,
            None => self
                .exchange_router
                .insert(Router::for_type(&self.kind).ok_or_else(|| {
                    Error::Internal(format!("exchange {} has an unknown type", self.name))
                })?),
        };
        let new = add_binding(
            &mut self.exchange_bindings,
            router,
            destination,
            key,
            args,
            None,
        )?;
        self.had_bindings |= new;
        Ok(new)
    }

    /// Removes a binding to another exchange; returns whether there was one.
    pub fn unbind_exchange(&mut self, destination: &str, key: &str) -> bool {
        remove_binding(
            &mut self.exchange_bindings,
            self.exchange_router.as_mut(),
            destination,
            key,
        )
    }

    /// Removes every binding to exchange `destination` (it is being deleted); the keys
    /// they had.
    pub fn unbind_destination(&mut self, destination: &str) -> Vec<String> {
        let keys = keys_to(&self.exchange_bindings, destination);
        for k in &keys {
            self.unbind_exchange(destination, k);
        }
        keys
    }

    /// The exchanges this one passes `msg` on to, each once.
    pub fn route_to_exchanges(&self, msg: &Message, out: &mut Vec<String>) {
        if let Some(r) = &self.exchange_router {
            let start = out.len();
            r.route(msg, out);
            dedup_from(out, start);
        }
    }

    /// The bindings to other exchanges, in the order they were made.
    pub fn exchange_bindings(&self) -> &[Binding] {
        &self.exchange_bindings
    }

    /// Whether nothing is bound to it, queue or exchange.
    pub fn has_no_bindings(&self) -> bool {
        self.bindings.is_empty() && self.exchange_bindings.is_empty()
    }

    /// Whether an auto-delete exchange has lost its last binding and should go.
    pub fn is_unused_auto_delete(&self) -> bool {
        self.auto_delete && self.had_bindings && self.has_no_bindings()
    }

    /// The bindings, in the order they were made.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }
}

/// Adds a binding to `list` and `router`, unless the same destination and key are there
/// (returns false then).
fn add_binding(
    list: &mut Vec<Binding>,
    router: &mut Router,
    destination: &str,
    key: &str,
    args: &FieldTable,
    prepared: Option<Arc<xml::XQuery>>,
) -> Result<bool, Error> {
    if list.iter().any(|b| b.queue == destination && b.key == key) {
        return Ok(false);
    }
    let b = Binding {
        queue: destination.to_string(),
        key: key.to_string(),
        args: args.clone(),
    };
    router.add(&b, prepared)?;
    list.push(b);
    Ok(true)
}

/// Removes a binding from `list` and `router`; returns whether there was one.
fn remove_binding(
    list: &mut Vec<Binding>,
    router: Option<&mut Router>,
    destination: &str,
    key: &str,
) -> bool {
    let before = list.len();
    list.retain(|b| !(b.queue == destination && b.key == key));
    if list.len() == before {
        return false;
    }
    if let Some(r) = router {
        r.remove(destination, key);
    }
    true
}

/// The keys of the bindings in `list` to `destination`.
fn keys_to(list: &[Binding], destination: &str) -> Vec<String> {
    list.iter()
        .filter(|b| b.queue == destination)
        .map(|b| b.key.clone())
        .collect()
}

/// A queue bound under several matching keys still gets the message once.
pub(crate) fn dedup_from(out: &mut Vec<String>, start: usize) {
    if out.len() - start > 1 {
        let mut seen = std::collections::HashSet::new();
        let mut i = start;
        while i < out.len() {
            if seen.insert(out[i].clone()) {
                i += 1;
            } else {
                out.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Value;

    fn routed(ex: &Exchange, msg: &Message) -> Vec<String> {
        let mut out = Vec::new();
        ex.route(msg, &mut out);
        out.sort();
        out
    }

    #[test]
    fn direct_and_duplicates() {
        let mut ex = Exchange::new("d", "direct").expect("type");
        assert!(ex.bind("q1", "k", &FieldTable::new()).expect("bind"));
        assert!(!ex.bind("q1", "k", &FieldTable::new()).expect("bind again"));
        ex.bind("q2", "k", &FieldTable::new()).expect("bind");
        ex.bind("q3", "other", &FieldTable::new()).expect("bind");
        assert_eq!(routed(&ex, &Message::new("k", "")), ["q1", "q2"]);
        assert!(ex.unbind("q1", "k"));
        assert!(!ex.unbind("q1", "k"));
        assert_eq!(routed(&ex, &Message::new("k", "")), ["q2"]);
    }

    #[test]
    fn topic_delivers_once_per_queue() {
        let mut ex = Exchange::new("t", "topic").expect("type");
        ex.bind("q", "a.*", &FieldTable::new()).expect("bind");
        ex.bind("q", "#", &FieldTable::new()).expect("bind");
        assert_eq!(routed(&ex, &Message::new("a.b", "")), ["q"]);
    }

    #[test]
    fn headers_need_x_match() {
        let mut ex = Exchange::new("h", "headers").expect("type");
        let mut args = FieldTable::new();
        args.insert("x-match", "some");
        assert!(matches!(ex.bind("q", "k", &args), Err(Error::Internal(_))));
        let mut args = FieldTable::new();
        args.insert("x-match", "any");
        args.insert("a", Value::Int64(1));
        args.insert("b", Value::Void);
        ex.bind("q", "k", &args).expect("bind");
        let mut msg = crate::core::Draft::new("", "");
        let mut props = crate::wire::MessageProperties::default();
        let mut h = FieldTable::new();
        h.insert("b", "anything");
        props.application_headers = Some(h);
        msg.set_properties(props);
        assert_eq!(routed(&ex, &msg.seal()), ["q"]);
    }

    #[test]
    fn unknown_type_is_not_found() {
        assert!(matches!(
            Exchange::new("x", "nope"),
            Err(Error::NotFound(_))
        ));
    }
}

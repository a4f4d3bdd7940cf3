//! Routing published messages through exchanges into queues, with transactions and
//! alternate exchanges.

use std::collections::HashSet;

use super::*;
use crate::core::exchange::dedup_from;

impl Broker {
    /// The queues a message sent to `exchange` reaches, after alternate exchanges for
    /// unroutable messages.
    ///
    /// # Errors
    /// 404 when the exchange does not exist.
    pub fn route(&self, exchange: &str, msg: &Arc<Message>) -> Result<Vec<String>, Error> {
        self.route_locked(exchange, msg).map(|(_, queues)| queues)
    }

    /// Routes a message and returns the lock still held, so that enqueueing follows under
    /// the same lock. xml exchanges on the way are evaluated with the lock released (the
    /// evaluation threads work from a snapshot of their bindings), and routing starts over
    /// with their answers.
    pub(super) fn route_locked(
        &self,
        exchange: &str,
        msg: &Arc<Message>,
    ) -> Result<(Locked<'_>, Vec<String>), Error> {
        let mut answers = XmlAnswers::default();
        loop {
            let mut st = self.lock();
            match st.route(exchange, msg, &answers)? {
                Ok(queues) => {
                    st.count_routed(exchange, msg, queues.len());
                    return Ok((st, queues));
                }
                Err(XmlPending { exchange, bindings }) => {
                    drop(st);
                    let queues = xml::evaluate(bindings, msg.clone());
                    // Each round answers one more exchange, so this ends.
                    answers.insert(exchange, queues);
                }
            }
        }
    }

    /// Routes and enqueues a message in one step (no transaction).
    ///
    /// # Errors
    /// 404 missing exchange; 506 when a queue is full under the reject policy.
    pub fn publish(&self, exchange: &str, msg: Arc<Message>) -> Result<usize, Error> {
        let (mut st, queues) = self.route_locked(exchange, &msg)?;
        st.enqueue_all(&queues, &msg)?;
        Ok(queues.len())
    }

    /// Commits a transaction: messages routed earlier are enqueued (queues that went away
    /// meanwhile are skipped) and held messages are accepted, all under one lock, so their
    /// durable changes form one atomic batch.
    ///
    /// # Errors
    /// 506 when a queue is full under the reject policy.
    pub fn commit_tx(
        &self,
        enqueues: Vec<(Vec<String>, Arc<Message>)>,
        accepts: &[Held],
    ) -> Result<(), Error> {
        self.commit_work(enqueues, accepts, None)
    }

    /// [`Broker::commit_tx`] with one more durable change in the same batch (a prepared
    /// transaction branch's record going away).
    ///
    /// # Errors
    /// 506 when a queue is full under the reject policy.
    pub(in crate::core) fn commit_work(
        &self,
        enqueues: Vec<(Vec<String>, Arc<Message>)>,
        accepts: &[Held],
        also: Option<StoreOp>,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if let Some(op) = also {
            st.record(op);
        }
        for (queues, msg) in &enqueues {
            st.enqueue_counted(queues, msg, true)?;
        }
        for h in accepts {
            if let Some(q) = st.held_queue(h) {
                if let Some(msg) = q.accept(h.position) {
                    q.stats.txn_dequeues.add(msg.credit_size());
                }
            }
        }
        Ok(())
    }
}

impl State {
    /// Counts a published message on its exchange (and as unroutable when it reached no
    /// queue), and hands it to management when addressed there.
    pub(super) fn count_routed(&mut self, exchange: &str, msg: &Arc<Message>, queues: usize) {
        let Some(ex) = self.exchanges.get_mut(exchange) else {
            return;
        };
        // A request management takes counts as routed, to management.
        let to_management = self
            .observer
            .as_ref()
            .is_some_and(|o| o.wants(exchange, msg.routing_key()));
        ex.stats
            .routed(msg.credit_size(), queues + usize::from(to_management));
        if to_management {
            if let Some(o) = &self.observer {
                o.request(exchange, msg);
            }
        } else if queues == 0 {
            self.stats.discards_no_route += 1;
        }
    }

    /// The queues a message reaches, following alternate exchanges when it is unroutable;
    /// `Ok(Err(..))` when an xml exchange on the way has no answer in `answers` yet.
    pub(in crate::core) fn route(
        &self,
        exchange: &str,
        msg: &Message,
        answers: &XmlAnswers,
    ) -> Result<Result<Vec<String>, XmlPending>, Error> {
        let mut out = Vec::new();
        if exchange.is_empty() {
            let key = msg.routing_key();
            if self.queues.contains_key(key) {
                out.push(key.to_string());
            }
            return Ok(Ok(out));
        }
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| Error::NotFound(format!("exchange not found: {exchange}")))?;
        if let Err(pending) = self.route_through(ex, msg, &mut out, answers) {
            return Ok(Err(pending));
        }
        Ok(Ok(out))
    }

    /// The queues `ex` routes `msg` to, following the exchanges bound to it and, from any
    /// exchange on the way that matches nothing itself, its alternate exchange. Each
    /// exchange is visited once, so cycles end, and each queue gets one copy however many
    /// ways lead there.
    fn route_through(
        &self,
        ex: &Exchange,
        msg: &Message,
        out: &mut Vec<String>,
        answers: &XmlAnswers,
    ) -> Result<(), XmlPending> {
        let start = out.len();
        let mut visited: HashSet<&str> = HashSet::new();
        let mut next: Vec<&Exchange> = Vec::new();
        // The common case, without the walk's allocations: no exchange bindings, and a
        // match or no alternate to follow. Otherwise the walk goes on from the alternate,
        // without routing this exchange again.
        if ex.exchange_bindings().is_empty() {
            ex.route_with(msg, out, answers)?;
            self.keep_existing(out, start);
            if out.len() > start {
                return Ok(());
            }
            let Some(a) = ex.alternate.as_ref().and_then(|a| self.exchanges.get(a)) else {
                return Ok(());
            };
            visited.insert(ex.name.as_str());
            next.push(a);
        } else {
            next.push(ex);
        }
        let mut onward = Vec::new();
        while let Some(e) = next.pop() {
            if !visited.insert(e.name.as_str()) {
                continue;
            }
            let before = out.len();
            e.route_with(msg, out, answers)?;
            self.keep_existing(out, before);
            onward.clear();
            e.route_to_exchanges(msg, &mut onward);
            let matched = out.len() > before || !onward.is_empty();
            for name in &onward {
                if let Some(d) = self.exchanges.get(name) {
                    if !visited.contains(d.name.as_str()) {
                        next.push(d);
                    }
                }
            }
            if !matched {
                if let Some(a) = e.alternate.as_ref().and_then(|a| self.exchanges.get(a)) {
                    next.push(a);
                }
            }
        }
        if visited.len() > 1 {
            dedup_from(out, start);
        }
        Ok(())
    }

    /// Drops from `out[from..]` the queues that went away meanwhile (bindings to them do
    /// not count as a match), keeping the order.
    fn keep_existing(&self, out: &mut Vec<String>, from: usize) {
        let mut kept = from;
        for i in from..out.len() {
            if self.queues.contains_key(&out[i]) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
    }

    pub(super) fn enqueue_all(
        &mut self,
        queues: &[String],
        msg: &Arc<Message>,
    ) -> Result<(), Error> {
        self.enqueue_counted(queues, msg, false)
    }

    /// Enqueues on every queue or none; `txn` when a commit brings the message.
    pub(super) fn enqueue_counted(
        &mut self,
        queues: &[String],
        msg: &Arc<Message>,
        txn: bool,
    ) -> Result<(), Error> {
        // Check every limit first so that a refused message reaches no queue at all.
        for name in queues {
            if let Some(q) = self.queues.get_mut(name) {
                if q.persists(msg) {
                    self.check_store(msg.size(), false)?;
                    break;
                }
            }
        }
        for name in queues {
            if let Some(q) = self.queues.get_mut(name) {
                if let Err(e) = q.check_room(msg) {
                    q.stats.discards_overflow += 1;
                    return Err(e);
                }
            }
        }
        for name in queues {
            if let Some(q) = self.queues.get_mut(name) {
                q.enqueue_counted(msg.clone(), txn)?;
                q.dispatch();
            }
        }
        Ok(())
    }

    pub(in crate::core) fn reroute(&mut self, exchange: &str, msg: &Arc<Message>) {
        let mut answers = XmlAnswers::default();
        let routed = loop {
            match self.route(exchange, msg, &answers) {
                Ok(Ok(queues)) => break Ok(queues),
                Ok(Err(XmlPending { exchange, bindings })) => {
                    // Rejected and orphaned messages reach an xml alternate exchange while
                    // the lock is held; rare enough to evaluate here rather than defer.
                    let queues = xml::evaluate(bindings, msg.clone());
                    answers.insert(exchange, queues);
                }
                Err(e) => break Err(e),
            }
        };
        if let Ok(queues) = routed {
            for name in queues {
                if let Some(q) = self.queues.get_mut(&name) {
                    if q.enqueue(msg.clone()).is_ok() {
                        q.dispatch();
                    }
                }
            }
        }
    }
}

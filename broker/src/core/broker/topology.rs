//! Queues, exchanges and bindings: declare, query, delete, bind and unbind, and what goes
//! when they go (auto-delete, unused exchanges).

use super::*;

impl Broker {
    /// `queue.declare`.
    ///
    /// # Errors
    /// 404 for a passive declare of a missing queue or a missing alternate exchange, 405 for
    /// another session's exclusive queue, 542 for bad arguments.
    pub fn declare_queue(&self, session: SessionId, d: QueueDeclare) -> Result<(), Error> {
        let mut st = self.lock();
        let connection = st.sessions.get(&session).copied();
        if let Some(q) = st.queues.get_mut(&d.name) {
            // A redeclare renews an `x-expires` lease; a passive check does not.
            if !d.passive {
                q.last_used = std::time::Instant::now();
            }
            let locked = || {
                Error::ResourceLocked(format!("cannot grant exclusive access to queue {}", d.name))
            };
            match q.owner {
                // Passive checks of someone else's queue are fine (request/reply clients).
                Some(owner) if owner != session && (d.exclusive || !d.passive) => {
                    return Err(locked())
                }
                Some(_) => {}
                None if d.exclusive => {
                    if d.passive || q.consumer_count() > 0 {
                        return Err(locked());
                    }
                    q.owner = Some(session);
                    q.owner_connection = connection;
                }
                None => {}
            }
            if !d.passive {
                st.notify(ModelEvent::QueueDeclared {
                    connection: connection.unwrap_or(0),
                    name: d.name.clone(),
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    alternate: d.alternate.clone(),
                    args: d.args.clone(),
                    created: false,
                });
            }
            return Ok(());
        }
        if d.passive {
            return Err(Error::NotFound(format!("queue not found: {}", d.name)));
        }
        if d.name.is_empty() {
            return Err(Error::InvalidArgument(
                "queue name must not be empty".into(),
            ));
        }
        if let Some(alt) = &d.alternate {
            if !alt.is_empty() && !st.exchanges.contains_key(alt) {
                return Err(Error::NotFound(format!(
                    "alternate exchange not found: {alt}"
                )));
            }
        }
        if let (Some(user), limit @ 1..) = (&d.creator, d.creator_limit) {
            let owned = st
                .queues
                .values()
                .filter(|q| q.creator.as_deref() == Some(user))
                .count();
            if owned >= limit {
                return Err(Error::LimitExceeded(format!(
                    "{user} may not have more than {limit} queues"
                )));
            }
        }
        let mut q = Queue::new(&d.name, d.args)?;
        q.limit_memory(st.default_queue_max_size, &st.budget.clone());
        q.observer = st.observer.clone();
        q.creator = d.creator;
        q.durable = d.durable;
        q.auto_delete = d.auto_delete;
        q.alternate = d.alternate.filter(|a| !a.is_empty());
        q.owner = d.exclusive.then_some(session);
        q.owner_connection = if d.exclusive { connection } else { None };
        if q.durable {
            q.log = st.log.clone();
            st.record(StoreOp::PutQueue(QueueRecord {
                name: q.name.clone(),
                alternate: q.alternate.clone(),
                auto_delete: q.auto_delete,
                args: encode_args(&q.args),
            }));
        }
        st.notify(ModelEvent::QueueDeclared {
            connection: connection.unwrap_or(0),
            name: q.name.clone(),
            durable: q.durable,
            exclusive: d.exclusive,
            auto_delete: q.auto_delete,
            alternate: q.alternate.clone(),
            args: q.args.clone(),
            created: true,
        });
        st.queues.insert(d.name, q);
        Ok(())
    }

    /// `queue.delete`. Messages left on the queue go to its alternate exchange, if any.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive elsewhere, 406 if-unused/if-empty violated.
    pub fn delete_queue(
        &self,
        session: SessionId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let q = st.usable_queue(session, name, "delete")?;
        if if_unused && q.consumer_count() > 0 {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete queue {name}: it has consumers"
            )));
        }
        if if_empty && q.depth() > 0 {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete queue {name}: it is not empty"
            )));
        }
        if q.holds_persistent() {
            st.check_store(0, true)?;
        }
        let connection = st.sessions.get(&session).copied().unwrap_or(0);
        st.remove_queue(name, connection);
        Ok(())
    }

    /// `queue.purge`: drops available messages, returns how many.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive elsewhere.
    pub fn purge_queue(&self, session: SessionId, name: &str) -> Result<usize, Error> {
        if name.is_empty() {
            return Err(Error::IllegalArgument(
                "no queue name given to purge".into(),
            ));
        }
        let mut st = self.lock();
        st.usable_queue(session, name, "purge")?;
        if st.queues.get(name).is_some_and(Queue::holds_persistent) {
            st.check_store(0, true)?;
        }
        Ok(st.queues.get_mut(name).map_or(0, Queue::purge))
    }

    /// `queue.query`: `None` when the queue does not exist.
    pub fn query_queue(&self, name: &str) -> Option<QueueInfo> {
        let st = self.lock();
        let q = st.queues.get(name)?;
        Some(QueueInfo {
            name: q.name.clone(),
            alternate: q.alternate.clone(),
            durable: q.durable,
            exclusive: q.owner.is_some(),
            auto_delete: q.auto_delete,
            args: q.args.clone(),
            message_count: u32::try_from(q.message_count()).unwrap_or(u32::MAX),
            subscriber_count: u32::try_from(q.consumer_count()).unwrap_or(u32::MAX),
        })
    }

    /// The bindings of `exchange`, or of every exchange, by exchange name and then in the
    /// order they were made.
    ///
    /// # Errors
    /// 404 when the named exchange does not exist.
    pub fn list_bindings(&self, exchange: Option<&str>) -> Result<Vec<BindingSummary>, Error> {
        let st = self.lock();
        let mut exchanges: Vec<&Exchange> = match exchange {
            Some(name) => vec![st
                .exchanges
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("exchange not found: {name}")))?],
            None => st.exchanges.values().collect(),
        };
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(exchanges
            .into_iter()
            .flat_map(|e| {
                e.bindings().iter().map(|b| BindingSummary {
                    exchange: e.name.clone(),
                    queue: b.queue.clone(),
                    key: b.key.clone(),
                    args: b.args.clone(),
                })
            })
            .collect())
    }

    /// `exchange.declare`.
    ///
    /// # Errors
    /// 530 for reserved names or a type/alternate mismatch with an existing exchange, 404 for
    /// an unknown type, a missing alternate or a passive declare of a missing exchange.
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<(), Error> {
        let mut st = self.lock();
        if let Some(ex) = st.exchanges.get(&d.name) {
            if !d.passive && !d.kind.is_empty() && ex.kind != d.kind {
                return Err(Error::NotAllowed(format!(
                    "exchange {} declared with type {}, not {}",
                    d.name, ex.kind, d.kind
                )));
            }
            if !d.passive {
                if let Some(alt) = d.alternate.as_ref().filter(|a| !a.is_empty()) {
                    if ex.alternate.as_ref() != Some(alt) {
                        return Err(Error::NotAllowed(format!(
                            "exchange {} exists with another alternate exchange",
                            d.name
                        )));
                    }
                }
            }
            if !d.passive {
                st.notify(ModelEvent::ExchangeDeclared {
                    connection: d.connection,
                    name: d.name.clone(),
                    kind: ex.kind.clone(),
                    alternate: ex.alternate.clone(),
                    durable: ex.durable,
                    auto_delete: ex.auto_delete,
                    args: ex.args.clone(),
                    created: false,
                });
            }
            return Ok(());
        }
        if d.name.is_empty() {
            return if d.passive {
                Ok(())
            } else {
                Err(Error::NotAllowed(
                    "cannot redeclare the default exchange".into(),
                ))
            };
        }
        if d.passive {
            return Err(Error::NotFound(format!("exchange not found: {}", d.name)));
        }
        if d.name.starts_with("amq.") || d.name.starts_with("qpid.") {
            return Err(Error::NotAllowed(format!(
                "exchange names beginning with amq. or qpid. are reserved: {}",
                d.name
            )));
        }
        let mut ex = Exchange::new(&d.name, &d.kind)?;
        if let Some(alt) = d.alternate.filter(|a| !a.is_empty()) {
            if !st.exchanges.contains_key(&alt) {
                return Err(Error::NotFound(format!(
                    "alternate exchange not found: {alt}"
                )));
            }
            ex.alternate = Some(alt);
        }
        ex.durable = d.durable;
        ex.auto_delete = d.auto_delete;
        ex.args = d.args;
        if ex.durable {
            st.record(StoreOp::PutExchange(ExchangeRecord {
                name: ex.name.clone(),
                kind: ex.kind.clone(),
                alternate: ex.alternate.clone(),
                auto_delete: ex.auto_delete,
                args: encode_args(&ex.args),
            }));
        }
        st.notify(ModelEvent::ExchangeDeclared {
            connection: d.connection,
            name: ex.name.clone(),
            kind: ex.kind.clone(),
            alternate: ex.alternate.clone(),
            durable: ex.durable,
            auto_delete: ex.auto_delete,
            args: ex.args.clone(),
            created: true,
        });
        st.exchanges.insert(d.name, ex);
        Ok(())
    }

    /// `exchange.delete`.
    ///
    /// # Errors
    /// 404 missing, 542 for the default exchange, 530 when it is some object's alternate, 406
    /// for if-unused with bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.delete_exchange_by(0, name, if_unused)
    }

    /// [`Broker::delete_exchange`] on behalf of `connection` (named in the event).
    ///
    /// # Errors
    /// As [`Broker::delete_exchange`].
    pub fn delete_exchange_by(
        &self,
        connection: u64,
        name: &str,
        if_unused: bool,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "cannot delete the default exchange".into(),
            ));
        }
        let ex = st
            .exchanges
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("exchange not found: {name}")))?;
        if STANDARD_EXCHANGES.iter().any(|(n, _)| *n == name)
            || st.system_exchanges.iter().any(|n| n == name)
        {
            return Err(Error::NotAllowed(format!(
                "cannot delete the standard exchange {name}"
            )));
        }
        if if_unused && !ex.has_no_bindings() {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete exchange {name}: it has bindings"
            )));
        }
        let used_as_alternate = st
            .queues
            .values()
            .any(|q| q.alternate.as_deref() == Some(name))
            || st
                .exchanges
                .values()
                .any(|e| e.alternate.as_deref() == Some(name));
        if used_as_alternate {
            return Err(Error::NotAllowed(format!(
                "cannot delete exchange {name}: it is in use as an alternate exchange"
            )));
        }
        st.remove_exchange(name);
        st.notify(ModelEvent::ExchangeDeleted {
            connection,
            name: name.to_string(),
        });
        // Auto-delete sources bound only to it go too.
        st.remove_unused_exchanges();
        Ok(())
    }

    /// `exchange.query`: `None` when the exchange does not exist.
    pub fn query_exchange(&self, name: &str) -> Option<ExchangeInfo> {
        if name.is_empty() {
            return Some(ExchangeInfo {
                kind: "direct".into(),
                durable: true,
                args: FieldTable::new(),
            });
        }
        let st = self.lock();
        st.exchanges.get(name).map(|e| ExchangeInfo {
            kind: e.kind.clone(),
            durable: e.durable,
            args: e.args.clone(),
        })
    }

    /// `exchange.bind`.
    ///
    /// # Errors
    /// 404 missing queue or exchange, 542 for the default exchange, 405 for another session's
    /// exclusive queue, 541 for arguments the type cannot use.
    pub fn bind(
        &self,
        session: SessionId,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<(), Error> {
        // An xml query compiles without the lock: a hard one takes the engine tens of
        // milliseconds. Missing queues and exchanges are still reported first, below.
        // Only bindings with a query look the exchange up: others skip that lock round.
        let prepared = if args.get("xquery").is_some()
            && self
                .lock()
                .exchanges
                .get(exchange)
                .is_some_and(|e| e.kind == "xml")
        {
            Some(xml::compile_binding_query(args))
        } else {
            None
        };
        let mut st = self.lock();
        if exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "bind on the default exchange is not allowed".into(),
            ));
        }
        let queue_durable = st.usable_queue(session, queue, "bind")?.durable;
        let ex = st.exchange_mut(exchange)?;
        let prepared = match prepared {
            // Replaced meanwhile by an exchange of another type: compile as it needs.
            Some(_) if ex.kind != "xml" => None,
            Some(p) => Some(p?),
            None => None,
        };
        let new = ex.bind_prepared(queue, key, args, prepared)?;
        let count = u32::try_from(ex.bindings().len()).unwrap_or(u32::MAX);
        ex.stats.bindings_high = ex.stats.bindings_high.max(count);
        let durable = ex.durable;
        if new {
            let connection = st.sessions.get(&session).copied().unwrap_or(0);
            st.notify(ModelEvent::Bound {
                connection,
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
                args: args.clone(),
            });
        }
        if new && durable && queue_durable {
            st.record(StoreOp::PutBinding(BindingRecord {
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
                args: encode_args(args),
            }));
        }
        Ok(())
    }

    /// `exchange.unbind`: an absent binding between existing objects is no error.
    ///
    /// # Errors
    /// 404 missing queue or exchange, 542 for the default exchange.
    pub fn unbind(
        &self,
        session: SessionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "unbind from the default exchange is not allowed".into(),
            ));
        }
        let queue_durable = st.usable_queue(session, queue, "unbind")?.durable;
        let ex = st.exchange_mut(exchange)?;
        let removed = ex.unbind(queue, key);
        if removed && ex.durable && queue_durable {
            st.record(StoreOp::DeleteBinding {
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
            });
        }
        if removed {
            let connection = st.sessions.get(&session).copied().unwrap_or(0);
            st.notify(ModelEvent::Unbound {
                connection,
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
            });
        }
        st.remove_unused_exchanges();
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source` (0-9-1 `exchange.bind`): what
    /// `source` routes under `key` also goes through `destination`. The binding is durable
    /// when both exchanges are.
    ///
    /// # Errors
    /// 404 missing exchange, 403 for the default exchange or a destination only the broker
    /// publishes to, 406 from an xml exchange, 541 for arguments the type cannot use.
    pub fn bind_exchange(
        &self,
        source: &str,
        destination: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if source.is_empty() || destination.is_empty() {
            return Err(Error::Unauthorized(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if st.system_exchanges.iter().any(|n| n == destination) {
            return Err(Error::Unauthorized(format!(
                "exchange {destination} takes messages from the broker only"
            )));
        }
        let destination_durable = st.exchange_mut(destination)?.durable;
        let ex = st.exchange_mut(source)?;
        let new = ex.bind_exchange(destination, key, args)?;
        if new && ex.durable && destination_durable {
            st.record(StoreOp::PutExchangeBinding(ExchangeBindingRecord {
                source: source.to_string(),
                destination: destination.to_string(),
                key: key.to_string(),
                args: encode_args(args),
            }));
        }
        Ok(())
    }

    /// Removes a binding between exchanges (0-9-1 `exchange.unbind`); an absent binding
    /// between existing exchanges is no error.
    ///
    /// # Errors
    /// 404 missing exchange, 403 for the default exchange.
    pub fn unbind_exchange(&self, source: &str, destination: &str, key: &str) -> Result<(), Error> {
        let mut st = self.lock();
        if source.is_empty() || destination.is_empty() {
            return Err(Error::Unauthorized(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let destination_durable = st.exchange_mut(destination)?.durable;
        let ex = st.exchange_mut(source)?;
        if ex.unbind_exchange(destination, key) && ex.durable && destination_durable {
            st.record(StoreOp::DeleteExchangeBinding {
                source: source.to_string(),
                destination: destination.to_string(),
                key: key.to_string(),
            });
        }
        st.remove_unused_exchanges();
        Ok(())
    }

    /// `exchange.bound`, criterion by criterion as qpidd computes it.
    pub fn bound(
        &self,
        exchange: &str,
        queue: Option<&str>,
        key: Option<&str>,
        args: Option<&FieldTable>,
    ) -> BoundInfo {
        let st = self.lock();
        let queue = queue.filter(|q| !q.is_empty());
        let key = key.filter(|k| !k.is_empty());
        let args = args.filter(|a| !a.is_empty());
        let queue_missing = queue.is_some_and(|q| !st.queues.contains_key(q));
        let Some(ex) = st.exchanges.get(exchange) else {
            return BoundInfo {
                exchange_not_found: true,
                queue_not_found: queue_missing,
                ..BoundInfo::default()
            };
        };
        if queue_missing {
            return BoundInfo {
                queue_not_found: true,
                ..BoundInfo::default()
            };
        }
        let b = ex.bindings();
        let exact = b.iter().any(|x| {
            queue.is_none_or(|q| x.queue == q)
                && key.is_none_or(|k| x.key == k)
                && args.is_none_or(|a| x.args == *a)
        });
        if exact && (queue.is_some() || key.is_some() || args.is_some()) {
            return BoundInfo::default();
        }
        if queue.is_none() && key.is_none() && args.is_none() {
            return BoundInfo {
                queue_not_matched: b.is_empty(),
                ..BoundInfo::default()
            };
        }
        BoundInfo {
            queue_not_matched: queue.is_some_and(|q| !b.iter().any(|x| x.queue == q)),
            key_not_matched: key.is_some_and(|k| !b.iter().any(|x| x.key == k)),
            args_not_matched: args.is_some_and(|a| !b.iter().any(|x| x.args == *a)),
            ..BoundInfo::default()
        }
    }
}

impl State {
    /// An auto-delete queue became unused: delete it now, or after its timeout.
    pub(super) fn auto_delete(&mut self, name: &str) {
        match self.queues.get_mut(name) {
            Some(q) if q.settings.auto_delete_timeout > 0 => q.pending_delete = Some(None),
            Some(_) => self.remove_queue(name, 0),
            None => {}
        }
    }

    /// Deletes auto-delete exchanges that lost their last binding, unless something uses
    /// them as an alternate.
    pub(super) fn remove_unused_exchanges(&mut self) {
        // Removing one can leave another unused (a source bound only to it): repeat.
        loop {
            let unused = self.unused_exchanges();
            if unused.is_empty() {
                return;
            }
            for n in unused {
                self.remove_exchange(&n);
            }
        }
    }

    fn unused_exchanges(&self) -> Vec<String> {
        self.exchanges
            .values()
            .filter(|e| e.is_unused_auto_delete())
            .map(|e| e.name.clone())
            .filter(|n| {
                !self
                    .queues
                    .values()
                    .any(|q| q.alternate.as_ref() == Some(n))
                    && !self
                        .exchanges
                        .values()
                        .any(|e| e.alternate.as_ref() == Some(n))
            })
            .collect()
    }

    pub(super) fn remove_exchange(&mut self, name: &str) {
        let Some(ex) = self.exchanges.remove(name) else {
            return;
        };
        // Bindings to other exchanges go with either end (a binding to itself included).
        let mut ops = Vec::new();
        for b in ex.exchange_bindings() {
            let destination_durable =
                b.queue == name || self.exchanges.get(&b.queue).is_some_and(|d| d.durable);
            if ex.durable && destination_durable {
                ops.push(StoreOp::DeleteExchangeBinding {
                    source: name.to_string(),
                    destination: b.queue.clone(),
                    key: b.key.clone(),
                });
            }
        }
        for source in self.exchanges.values_mut() {
            for key in source.unbind_destination(name) {
                if ex.durable && source.durable {
                    ops.push(StoreOp::DeleteExchangeBinding {
                        source: source.name.clone(),
                        destination: name.to_string(),
                        key,
                    });
                }
            }
        }
        for op in ops {
            self.record(op);
        }
        if ex.durable {
            for b in ex.bindings() {
                if self.queues.get(&b.queue).is_some_and(|q| q.durable) {
                    self.record(StoreOp::DeleteBinding {
                        exchange: name.to_string(),
                        queue: b.queue.clone(),
                        key: b.key.clone(),
                    });
                }
            }
            self.record(StoreOp::DeleteExchange(name.to_string()));
        }
    }

    /// Deletes a queue; `connection` asked for it (0: the broker itself).
    pub(in crate::core) fn remove_queue(&mut self, name: &str, connection: u64) {
        let Some(mut q) = self.queues.remove(name) else {
            return;
        };
        self.notify(ModelEvent::QueueDeleted {
            connection,
            name: name.to_string(),
        });
        let mut ops = Vec::new();
        for ex in self.exchanges.values_mut() {
            if q.durable && ex.durable {
                for b in ex.bindings().iter().filter(|b| b.queue == name) {
                    ops.push(StoreOp::DeleteBinding {
                        exchange: ex.name.clone(),
                        queue: name.to_string(),
                        key: b.key.clone(),
                    });
                }
            }
            ex.unbind_queue(name);
        }
        if q.durable {
            ops.push(StoreOp::DeleteQueue(name.to_string()));
        }
        for op in ops {
            self.record(op);
        }
        self.remove_unused_exchanges();
        for c in &q.consumers {
            c.sink.cancelled(c.session, &c.destination);
        }
        // Subscriptions outlive their queue (the peer still cancels them); they point at no
        // queue from now on, so a new queue of the same name is not mistaken for it.
        for qn in self.subscriptions.values_mut() {
            if qn == name {
                qn.clear();
            }
        }
        let left = q.drain();
        match q.alternate.clone() {
            Some(alt) => {
                self.stats.abandoned_via_alt += left.len() as u64;
                for msg in left {
                    self.reroute(&alt, &msg);
                }
            }
            None => self.stats.abandoned += left.len() as u64,
        }
        self.stats.gone.absorb(&q.stats);
    }
}

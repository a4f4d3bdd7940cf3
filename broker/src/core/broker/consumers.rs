//! Subscriptions, credit, and settling what consumers were given (accept, release,
//! reject, acquire), and what a session leaves behind when it ends.

use super::*;

impl Broker {
    /// `message.subscribe`.
    ///
    /// # Errors
    /// 404 missing queue, 530 destination in use, 405 exclusivity conflicts.
    pub fn subscribe(&self, session: SessionId, s: Subscribe) -> Result<(), Error> {
        if s.queue.is_empty() {
            return Err(Error::IllegalArgument(
                "no queue given to subscribe to".into(),
            ));
        }
        let mut st = self.lock();
        let connection = st.sessions.get(&session).copied().unwrap_or(0);
        if st
            .subscriptions
            .contains_key(&(session, s.destination.clone()))
        {
            return Err(Error::NotAllowed(format!(
                "destination {} already in use",
                s.destination
            )));
        }
        let q = st
            .queues
            .get_mut(&s.queue)
            .ok_or_else(|| Error::NotFound(format!("queue not found: {}", s.queue)))?;
        // Browsing another session's exclusive queue is allowed, as qpidd allows it.
        if s.acquire && q.owner.is_some_and(|o| o != session) {
            return Err(Error::ResourceLocked(format!(
                "cannot subscribe to exclusive queue {}",
                s.queue
            )));
        }
        if q.consumers.iter().any(|c| c.exclusive) || (s.exclusive && q.consumer_count() > 0) {
            return Err(Error::ResourceLocked(format!(
                "queue {} has an exclusive consumer",
                s.queue
            )));
        }
        q.consumers.push(Consumer {
            session,
            connection,
            epoch: 0,
            destination: Arc::from(s.destination.as_str()),
            acquire: s.acquire,
            accept_explicit: s.accept_explicit,
            exclusive: s.exclusive,
            credit: Credit::initial(),
            cursor: None,
            sink: s.sink,
            delivered: 0,
        });
        q.had_consumers = true;
        let count = u32::try_from(q.consumer_count()).unwrap_or(u32::MAX);
        q.stats.consumers_high = q.stats.consumers_high.max(count);
        st.notify(ModelEvent::Subscribed {
            connection,
            queue: s.queue.clone(),
            destination: s.destination.clone(),
            exclusive: s.exclusive,
        });
        st.subscriptions.insert((session, s.destination), s.queue);
        Ok(())
    }

    /// One message for a fetch (0-9-1's `basic.get`): the next available one, acquired
    /// (and held, with `accept_explicit`), handed to `sink` under the lock; nothing when
    /// the queue has none to give. A fetch is no consumer: an auto-delete queue outlives
    /// it, and management hears of no subscription.
    ///
    /// # Errors
    /// 404 missing queue, 405 another session's exclusive queue.
    pub fn fetch(
        &self,
        session: SessionId,
        queue: &str,
        accept_explicit: bool,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let connection = st.sessions.get(&session).copied().unwrap_or(0);
        let q = st
            .queues
            .get_mut(queue)
            .ok_or_else(|| Error::NotFound(format!("queue not found: {queue}")))?;
        if q.owner.is_some_and(|o| o != session) {
            return Err(Error::ResourceLocked(format!(
                "cannot fetch from exclusive queue {queue}"
            )));
        }
        q.last_used = std::time::Instant::now();
        let had_consumers = q.had_consumers;
        let destination: Arc<str> = Arc::from("\u{0}fetch");
        q.consumers.push(Consumer {
            session,
            connection,
            epoch: 0,
            destination: destination.clone(),
            acquire: true,
            accept_explicit,
            exclusive: false,
            credit: Credit::messages(1),
            cursor: None,
            sink,
            delivered: 0,
        });
        q.dispatch();
        q.remove_consumer(session, &destination);
        q.had_consumers = had_consumers;
        Ok(())
    }

    pub(super) fn with_consumer(
        &self,
        session: SessionId,
        destination: &str,
        f: impl FnOnce(&mut Consumer),
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let queue = st
            .subscriptions
            .get(&(session, destination.to_string()))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("unknown destination: {destination}")))?;
        let Some(q) = st.queues.get_mut(&queue) else {
            // The queue was deleted under the subscription: nothing left to deliver.
            return Ok(());
        };
        let Some(c) = q.consumer_mut(session, destination) else {
            return Err(Error::NotFound(format!(
                "unknown destination: {destination}"
            )));
        };
        f(c);
        q.dispatch();
        Ok(())
    }

    /// `message.set-flow-mode`: credit (false) or window (true); credit drops to zero.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn set_flow_mode(
        &self,
        session: SessionId,
        destination: &str,
        window: bool,
    ) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit = Credit {
                messages: 0,
                bytes: 0,
                window,
            };
            c.epoch += 1;
        })
    }

    /// `message.flow`: adds message (`bytes` false) or byte credit, then delivers.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn flow(
        &self,
        session: SessionId,
        destination: &str,
        bytes: bool,
        value: u32,
    ) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            if bytes {
                c.credit.add_bytes(value);
            } else {
                c.credit.add_messages(value);
            }
        })
    }

    /// Window mode: completed deliveries (`messages` of them, `bytes` in all) give their
    /// credit back, unless the window was reset (stop, set-flow-mode) since they were sent.
    pub fn restore_credit(
        &self,
        session: SessionId,
        destination: &str,
        messages: u32,
        bytes: u64,
        epoch: u64,
    ) {
        let _ = self.with_consumer(session, destination, |c| {
            if c.credit.window && c.epoch == epoch {
                c.credit.add_messages(messages);
                if c.credit.bytes != u32::MAX {
                    c.credit.add_bytes(u32::try_from(bytes).unwrap_or(u32::MAX));
                }
            }
        });
    }

    /// `message.flush`: what credit allows has already been delivered (every change
    /// dispatches at once), so the flush only drops the remaining credit.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn flush(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit.messages = 0;
            c.credit.bytes = 0;
        })
    }

    /// `message.stop`: credit to zero; outstanding deliveries no longer move the window.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn stop(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit.messages = 0;
            c.credit.bytes = 0;
            c.epoch += 1;
        })
    }

    /// `message.cancel`. An auto-delete queue left without consumers goes away.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn cancel(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        let mut st = self.lock();
        let queue = st
            .subscriptions
            .remove(&(session, destination.to_string()))
            .ok_or_else(|| Error::NotFound(format!("unknown destination: {destination}")))?;
        st.drop_consumer(session, destination, &queue);
        Ok(())
    }

    /// `message.accept` of held messages: they leave their queues.
    pub fn accept(&self, held: &[Held]) {
        let mut st = self.lock();
        for h in held {
            if let Some(q) = st.held_queue(h) {
                q.accept(h.position);
            }
        }
    }

    /// `message.release` of held messages: back to their queues.
    pub fn release(&self, held: &[Held], redelivered: bool) {
        let mut st = self.lock();
        let touched = st.release_held(held, redelivered);
        st.dispatch_queues(&touched);
    }

    /// `message.reject`: held messages leave their queues for the alternate exchange.
    pub fn reject(&self, held: &[Held]) {
        let mut st = self.lock();
        for h in held {
            let Some(q) = st.held_queue(h) else {
                continue;
            };
            let letter = q
                .reject(h.position)
                .and_then(|msg| q.dead_letter(msg, "rejected"));
            if let Some((exchange, msg)) = letter {
                st.reroute(&exchange, &msg);
            }
        }
    }

    /// `message.acquire` of browsed messages; returns those now held.
    pub fn acquire(&self, held: &[Held]) -> Vec<Held> {
        let mut st = self.lock();
        held.iter()
            .filter(|h| st.held_queue(h).is_some_and(|q| q.acquire(h.position)))
            .cloned()
            .collect()
    }

    /// A session ended: its consumers go, held messages return marked redelivered, its
    /// exclusive queues are released (and deleted if auto-delete). Returns the names of
    /// the queues it held exclusively until now.
    pub fn end_session(&self, session: SessionId, held: &[Held]) -> Vec<String> {
        let mut st = self.lock();
        // Held messages go back first, so that a queue deleted below passes them on to its
        // alternate exchange in order.
        let touched = st.release_held(held, true);
        let mine: Vec<(String, String)> = st
            .subscriptions
            .keys()
            .filter(|(s, _)| *s == session)
            .map(|(_, d)| d.clone())
            .filter_map(|d| {
                st.subscriptions
                    .get(&(session, d.clone()))
                    .map(|q| (d, q.clone()))
            })
            .collect();
        for (dest, queue) in mine {
            st.subscriptions.remove(&(session, dest.clone()));
            st.drop_consumer(session, &dest, &queue);
        }
        let owned: Vec<String> = st
            .queues
            .values()
            .filter(|q| q.owner == Some(session))
            .map(|q| q.name.clone())
            .collect();
        for name in &owned {
            let delete = match st.queues.get_mut(name) {
                Some(q) => {
                    q.owner = None;
                    q.owner_connection = None;
                    q.auto_delete && q.consumer_count() == 0
                }
                None => false,
            };
            if delete {
                st.auto_delete(name);
            }
        }
        st.dispatch_queues(&touched);
        st.sessions.remove(&session);
        st.session_names.remove(&session);
        owned
    }
}

impl State {
    /// Puts held messages back in their queues; returns the queues they went back to.
    fn release_held(&mut self, held: &[Held], redelivered: bool) -> Vec<Arc<str>> {
        let mut touched = Vec::new();
        for h in held {
            if let Some(q) = self.held_queue(h) {
                q.release(h.position, redelivered);
                touched.push(h.queue.clone());
            }
        }
        touched
    }

    pub(super) fn dispatch_queues<S: AsRef<str>>(&mut self, names: &[S]) {
        for n in names {
            if let Some(q) = self.queues.get_mut(n.as_ref()) {
                q.dispatch();
            }
        }
    }

    pub(super) fn drop_consumer(&mut self, session: SessionId, destination: &str, queue: &str) {
        let connection = self.sessions.get(&session).copied().unwrap_or(0);
        self.notify(ModelEvent::Unsubscribed {
            connection,
            destination: destination.to_string(),
        });
        let delete = match self.queues.get_mut(queue) {
            Some(q) => {
                q.remove_consumer(session, destination);
                // An `x-expires` lease runs from the last consumer's going.
                q.last_used = std::time::Instant::now();
                q.dispatch();
                q.auto_delete && q.had_consumers && q.consumer_count() == 0 && q.owner.is_none()
            }
            None => false,
        };
        if delete {
            self.auto_delete(queue);
        }
    }
}

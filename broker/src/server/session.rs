//! One attached session: command ids and completion in both directions, held deliveries,
//! transactions, and the adapter from each 0-10 command onto `core`.

mod dtx;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::admin::ConnectionLive;
use crate::auth::{Acl, Action, Identity, ObjectKind};
use crate::core::broker::{Broker, ExchangeDeclare, Held, QueueDeclare, Subscribe};
use crate::core::journal::journaled;
use crate::core::{Delivery, DeliverySink, Draft, Error, Message, SessionId};
use crate::wire::{
    Acquired, Command, Content, Control, ExchangeBoundResult, ExchangeQueryResult,
    ExecutionException, ExecutionResult, FrameWriter, MessageAccept, MessageTransfer,
    QueueQueryResult, SequenceNo, SequenceSet, SessionCompleted, SessionHeader, Struct32,
};
use clacks_storage::{GroupCommit, StoreError, Ticket};

/// What a session needs from its connection besides the broker.
pub(crate) struct SessionEnv<'a> {
    pub broker: &'a Broker,
    pub writer: &'a FrameWriter,
    pub out: &'a mut BytesMut,
    pub channel: u16,
    /// Who the peer logged in as.
    pub identity: Option<&'a Identity>,
    /// Refuse transfers whose `user-id` names someone else (authentication is on).
    pub check_user_id: bool,
    /// Write the sender's identity into transfers without a `user-id`.
    pub stamp_user_id: bool,
    /// The ACL in force, if one is configured.
    pub acl: Option<&'a Acl>,
    /// Queues one user may have; 0 for no limit.
    pub max_queues_per_user: usize,
    pub sink: &'a Arc<dyn DeliverySink>,
    /// The broker's id of this connection.
    pub connection: u64,
    /// Present when the broker has a store.
    pub durable: Option<&'a DurableNotifier>,
    /// The connection's counters.
    pub live: &'a ConnectionLive,
}

/// A delivery the peer has not yet settled.
#[derive(Debug)]
struct Record {
    held: Held,
    destination: Arc<str>,
    acquired: bool,
    accept_explicit: bool,
    size: u64,
    epoch: u64,
    completed: bool,
    settled: bool,
}

#[derive(Default)]
struct TxBuffer {
    enqueues: Vec<(Vec<String>, Arc<Message>)>,
    accepts: Vec<u32>,
}

/// The state of one attached session.
pub(crate) struct Session {
    pub id: SessionId,
    pub name: Bytes,
    /// Id the next incoming command gets.
    next_in: SequenceNo,
    /// Incoming commands completed and not yet known-completed by the peer.
    completed_in: SequenceSet,
    /// The peer asked for a completion not yet sent.
    completion_due: bool,
    /// Transfers with accept-mode explicit to answer with `message.accept`.
    accept_pending: SequenceSet,
    /// Id of our next outgoing command.
    next_out: SequenceNo,
    records: BTreeMap<u32, Record>,
    tx: Option<TxBuffer>,
    /// Distributed transactions: the branch this session works in, and those it suspended.
    dtx: dtx::DtxState,
    /// Commands whose changes the store has not yet confirmed, by id.
    waiting: BTreeMap<u32, Waiting>,
    /// `execution.sync` commands held until the commands before them complete.
    syncs_waiting: Vec<SequenceNo>,
    /// After an exception: everything but detach is ignored.
    pub failed: bool,
}

/// How to complete a command once the store confirms it.
struct Waiting {
    sync: bool,
    explicit_accept: bool,
    codes: (u8, u8),
    /// The command's result, held back until its changes are durable (a prepared
    /// transaction branch is only prepared once it is on disk).
    result: Option<Struct32>,
}

/// Tells a connection when the store has made a command's changes durable.
pub(crate) struct DurableNotifier {
    pub journal: Arc<GroupCommit>,
    pub done: tokio::sync::mpsc::UnboundedSender<DurableDone>,
}

/// The store finished a command.
pub(crate) struct DurableDone {
    pub channel: u16,
    pub session: SessionId,
    pub command: SequenceNo,
    pub result: Result<(), StoreError>,
}

impl DurableNotifier {
    fn notify(&self, ticket: Ticket, channel: u16, session: SessionId, command: SequenceNo) {
        let done = self.done.clone();
        self.journal.when_durable(
            ticket,
            Box::new(move |result| {
                let _ = done.send(DurableDone {
                    channel,
                    session,
                    command,
                    result,
                });
            }),
        );
    }
}

impl Session {
    pub fn new(id: SessionId, name: Bytes) -> Session {
        Session {
            id,
            name,
            next_in: SequenceNo(0),
            completed_in: SequenceSet::new(),
            completion_due: false,
            accept_pending: SequenceSet::new(),
            next_out: SequenceNo(0),
            records: BTreeMap::new(),
            tx: None,
            dtx: dtx::DtxState::default(),
            waiting: BTreeMap::new(),
            syncs_waiting: Vec::new(),
            failed: false,
        }
    }

    /// Every message this session holds (for the broker when the session ends).
    pub fn held(&self) -> Vec<Held> {
        self.records
            .values()
            .filter(|r| r.acquired && !r.settled)
            .map(|r| r.held.clone())
            .collect()
    }

    /// `session.command-point`: the next command the peer sends has id `id`.
    pub fn command_point(&mut self, id: SequenceNo) {
        if self.next_in.before(id) {
            // The skipped ids will never come: counting them completed keeps the completed
            // set one range, where a peer jumping ahead before each `execution.sync` would
            // otherwise grow it by a range a time and have every reply carry them all.
            self.completed_in
                .add_range(self.next_in, SequenceNo(id.0.wrapping_sub(1)));
        }
        self.next_in = id;
    }

    fn send_command(
        &mut self,
        env: &mut SessionEnv<'_>,
        cmd: &Command,
        content: Option<(&[u8], Option<&[u8]>)>,
    ) {
        env.writer
            .command(env.channel, false, cmd, content, env.out);
        self.next_out = self.next_out.next();
    }

    fn control(&self, env: &mut SessionEnv<'_>, c: Control) {
        env.writer.control(env.channel, &c, env.out);
    }

    /// Sends `session.completed` (after any pending `message.accept`).
    pub fn send_completed(&mut self, env: &mut SessionEnv<'_>) {
        self.completion_due = false;
        if !self.accept_pending.is_empty() {
            let transfers = std::mem::take(&mut self.accept_pending);
            self.send_command(
                env,
                &Command::MessageAccept(MessageAccept {
                    transfers: Some(transfers),
                }),
                None,
            );
        }
        self.control(
            env,
            Control::SessionCompleted(SessionCompleted {
                commands: Some(self.completed_in.clone()),
                timely_reply: false,
            }),
        );
    }

    /// Whether a `session.completed` is due, asked for or carrying a `message.accept`.
    pub fn completion_due(&self) -> bool {
        self.completion_due || !self.accept_pending.is_empty()
    }

    /// The peer asked to hear of a completion: it goes out once the input at hand is
    /// handled, one control for however many requests it held.
    pub fn completion_asked(&mut self) {
        self.completion_due = true;
    }

    /// `session.known-completed`: the peer no longer needs these reported.
    pub fn known_completed(&mut self, commands: &SequenceSet) {
        self.completed_in.remove_set(commands);
    }

    pub fn completed_set(&self) -> &SequenceSet {
        &self.completed_in
    }

    /// The peer completed some of our commands: window credit comes back, and deliveries
    /// that need no accept are done.
    pub fn peer_completed(&mut self, broker: &Broker, commands: &SequenceSet) {
        let mut done = Vec::new();
        // Credit given back per consumer and window epoch: one call for a whole range.
        let mut credit: Vec<(Arc<str>, u64, u32, u64)> = Vec::new();
        for &(lo, hi) in commands.ranges() {
            for (id, r) in range_mut(&mut self.records, lo, hi) {
                if r.completed {
                    continue;
                }
                r.completed = true;
                match credit
                    .iter_mut()
                    .find(|(d, e, _, _)| *e == r.epoch && Arc::ptr_eq(d, &r.destination))
                {
                    Some((_, _, messages, bytes)) => {
                        *messages += 1;
                        *bytes += r.size;
                    }
                    None => credit.push((r.destination.clone(), r.epoch, 1, r.size)),
                }
                if r.settled || !r.accept_explicit || !r.acquired {
                    done.push(id);
                }
            }
        }
        for id in done {
            self.records.remove(&id);
        }
        for (destination, epoch, messages, bytes) in credit {
            broker.restore_credit(self.id, &destination, messages, bytes, epoch);
        }
    }

    /// Writes one delivery as a `message.transfer`.
    pub fn deliver(&mut self, env: &mut SessionEnv<'_>, d: Delivery) {
        ConnectionLive::bump(&env.live.msgs_to, 1);
        let id = self.next_out;
        let header = d.msg.delivery_header(d.redelivered);
        let transfer = Command::MessageTransfer(MessageTransfer {
            destination: Some(d.destination.to_string()),
            accept_mode: Some(crate::wire::MessageAcceptMode(u8::from(!d.accept_explicit))),
            acquire_mode: Some(crate::wire::MessageAcquireMode(u8::from(!d.acquired))),
        });
        self.send_command(
            env,
            &transfer,
            Some((&header, d.msg.has_body.then_some(&d.msg.body[..]))),
        );
        // A settled delivery (acquired, accept-mode none) left its queue when it was
        // dispatched; only window mode still needs its completion, to give credit back.
        if d.settled && !d.window {
            return;
        }
        let held = d.held();
        let settled = d.settled;
        self.records.insert(
            id.0,
            Record {
                held,
                destination: d.destination,
                acquired: d.acquired,
                accept_explicit: d.accept_explicit,
                size: d.size,
                epoch: d.epoch,
                completed: false,
                settled,
            },
        );
    }

    /// Handles one incoming command. Returns `None` when the session failed and must
    /// detach, else whether the peer asked to hear of its completion now (the caller first
    /// writes out any deliveries the command caused, then calls [`Session::send_completed`]).
    pub fn command(
        &mut self,
        env: &mut SessionEnv<'_>,
        header: SessionHeader,
        command: Command,
        content: Option<Content>,
    ) -> Option<bool> {
        let id = self.next_in;
        self.next_in = id.next();
        if self.failed {
            return Some(false);
        }
        let codes = command.codes();
        let explicit_accept = matches!(&command,
            Command::MessageTransfer(t) if t.accept_mode.is_some_and(|m| m.0 == 0));
        let is_sync = matches!(command, Command::ExecutionSync(_));
        let sync = header.sync || is_sync;
        if is_sync && !self.waiting.is_empty() {
            // execution.sync completes only after every earlier command has.
            self.syncs_waiting.push(id);
            return Some(false);
        }
        let (outcome, ticket) = journaled(|| self.execute(env, command, content));
        match outcome {
            Ok(result) => {
                if let (Some(ticket), Some(durable)) = (ticket, env.durable) {
                    // Complete only once the store has it: the promise to the publisher.
                    self.waiting.insert(
                        id.0,
                        Waiting {
                            sync,
                            explicit_accept,
                            codes,
                            result,
                        },
                    );
                    durable.notify(ticket, env.channel, self.id, id);
                    return Some(false);
                }
                if let Some(value) = result {
                    self.send_result(env, id, value);
                }
                self.complete(id, explicit_accept);
                Some(sync)
            }
            Err(e) => {
                self.exception(env, &e, Some(id), codes);
                None
            }
        }
    }

    fn send_result(&mut self, env: &mut SessionEnv<'_>, id: SequenceNo, value: Struct32) {
        self.send_command(
            env,
            &Command::ExecutionResult(ExecutionResult {
                command_id: Some(id),
                value: Some(value),
            }),
            None,
        );
    }

    /// The session is going away: a transaction branch it still works in fails.
    pub fn close_dtx(&mut self, broker: &Broker) {
        self.dtx.closed(broker);
    }

    fn complete(&mut self, id: SequenceNo, explicit_accept: bool) {
        // Completions go out when the peer asks (sync bit, execution.sync, session.flush),
        // as qpidd sends them: a streaming publisher gets no control per read. Transfers
        // that want a message.accept are answered without being asked.
        if explicit_accept {
            self.accept_pending.add(id);
        }
        self.completed_in.add(id);
    }

    /// The store finished with command `id`. Same answer as [`Session::command`]: `None`
    /// when the session failed, else whether a completion must go out now.
    pub fn durable_done(
        &mut self,
        env: &mut SessionEnv<'_>,
        id: SequenceNo,
        result: Result<(), StoreError>,
    ) -> Option<bool> {
        let Some(w) = self.waiting.remove(&id.0) else {
            return Some(false);
        };
        if self.failed {
            return Some(false);
        }
        if let Err(e) = result {
            let error = match e {
                StoreError::Full => Error::LimitExceeded(format!("message store is full: {e}")),
                other => Error::Internal(format!("message store failed: {other}")),
            };
            self.exception(env, &error, Some(id), w.codes);
            return None;
        }
        if let Some(value) = w.result {
            self.send_result(env, id, value);
        }
        self.complete(id, w.explicit_accept);
        let mut sync = w.sync;
        let oldest_waiting = self.waiting.keys().next().copied();
        let ready: Vec<SequenceNo> = self
            .syncs_waiting
            .iter()
            .copied()
            .filter(|s| oldest_waiting.is_none_or(|o| !SequenceNo(o).before(*s)))
            .collect();
        if !ready.is_empty() {
            self.syncs_waiting.retain(|s| !ready.contains(s));
            for s in ready {
                self.complete(s, false);
            }
            sync = true;
        }
        Some(sync)
    }

    /// Sends `execution.exception` and marks the session failed; the caller detaches.
    pub fn exception(
        &mut self,
        env: &mut SessionEnv<'_>,
        e: &Error,
        command: Option<SequenceNo>,
        codes: (u8, u8),
    ) {
        tracing::debug!(session = ?self.id, code = e.code().0, "session exception: {e}");
        let exception = Command::ExecutionException(ExecutionException {
            error_code: Some(e.code()),
            command_id: command,
            class_code: Some(codes.0),
            command_code: Some(codes.1),
            field_index: Some(0),
            description: Some(e.to_string()),
            error_info: None,
        });
        self.send_command(env, &exception, None);
        self.failed = true;
    }

    /// Returns the id the next incoming command will get (for exceptions on commands that
    /// did not decode).
    pub fn take_next_id(&mut self) -> SequenceNo {
        let id = self.next_in;
        self.next_in = id.next();
        id
    }

    fn execute(
        &mut self,
        env: &mut SessionEnv<'_>,
        command: Command,
        content: Option<Content>,
    ) -> Result<Option<Struct32>, Error> {
        let broker = env.broker;
        let sid = self.id;
        if let Some(acl) = env.acl {
            authorize(acl, env.identity, &command)?;
        }
        match command {
            Command::ExecutionSync(_) => Ok(None),
            Command::ExecutionResult(_) | Command::ExecutionException(_) => Ok(None),
            Command::MessageTransfer(t) => {
                self.transfer(env, t, content)?;
                Ok(None)
            }
            Command::MessageAccept(a) => {
                let set = a.transfers.unwrap_or_default();
                if let Some((_, buffer)) = self.dtx.current.clone() {
                    // Held acquired by the branch until its outcome.
                    let held = self.settle(&set, |r| r.acquired);
                    let left = broker.dtx_accept(buffer, held);
                    broker.accept(&left);
                } else if let Some(tx) = &mut self.tx {
                    for &(lo, hi) in set.ranges() {
                        tx.accepts
                            .extend(range_mut(&mut self.records, lo, hi).map(|(id, _)| id));
                    }
                } else {
                    let held = self.settle(&set, |r| r.acquired);
                    broker.accept(&held);
                }
                Ok(None)
            }
            Command::MessageReject(r) => {
                let held = self.settle(&r.transfers.unwrap_or_default(), |r| r.acquired);
                broker.reject(&held);
                Ok(None)
            }
            Command::MessageRelease(r) => {
                let held = self.settle(&r.transfers.unwrap_or_default(), |r| r.acquired);
                broker.release(&held, r.set_redelivered);
                Ok(None)
            }
            Command::MessageAcquire(a) => {
                let set = a.transfers.unwrap_or_default();
                let mut wanted = Vec::new();
                for &(lo, hi) in set.ranges() {
                    for (id, r) in range_mut(&mut self.records, lo, hi) {
                        if !r.acquired && !r.settled {
                            wanted.push((id, r.held.clone()));
                        }
                    }
                }
                let got =
                    broker.acquire(&wanted.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>());
                let mut acquired = SequenceSet::new();
                for (id, h) in wanted {
                    if got.contains(&h) {
                        acquired.add(SequenceNo(id));
                        if let Some(r) = self.records.get_mut(&id) {
                            r.acquired = true;
                        }
                    }
                }
                Ok(Some(
                    Acquired {
                        transfers: Some(acquired),
                    }
                    .to_struct32(),
                ))
            }
            Command::MessageResume(_) => Err(Error::NotImplemented(
                "message.resume is not supported".into(),
            )),
            Command::MessageSubscribe(s) => {
                let queue = s.queue.unwrap_or_default();
                broker.subscribe(
                    sid,
                    Subscribe {
                        queue,
                        destination: s.destination.unwrap_or_default(),
                        acquire: s.acquire_mode.is_none_or(|m| m.0 == 0),
                        accept_explicit: s.accept_mode.is_none_or(|m| m.0 == 0),
                        exclusive: s.exclusive,
                        sink: env.sink.clone(),
                    },
                )?;
                Ok(None)
            }
            Command::MessageCancel(c) => {
                broker.cancel(sid, c.destination.as_deref().unwrap_or(""))?;
                Ok(None)
            }
            Command::MessageSetFlowMode(f) => {
                let window = match f.flow_mode.map_or(0, |m| m.0) {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(Error::InvalidArgument(format!("invalid flow mode {other}")))
                    }
                };
                broker.set_flow_mode(sid, f.destination.as_deref().unwrap_or(""), window)?;
                Ok(None)
            }
            Command::MessageFlow(f) => {
                let bytes = match f.unit.map_or(0, |u| u.0) {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "invalid credit unit {other}"
                        )))
                    }
                };
                broker.flow(
                    sid,
                    f.destination.as_deref().unwrap_or(""),
                    bytes,
                    f.value.unwrap_or(0),
                )?;
                Ok(None)
            }
            Command::MessageFlush(f) => {
                broker.flush(sid, f.destination.as_deref().unwrap_or(""))?;
                Ok(None)
            }
            Command::MessageStop(f) => {
                broker.stop(sid, f.destination.as_deref().unwrap_or(""))?;
                Ok(None)
            }
            Command::TxSelect(_) => {
                self.tx.get_or_insert_with(TxBuffer::default);
                Ok(None)
            }
            Command::TxCommit(_) => {
                let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
                let work = std::mem::take(tx);
                let mut held = Vec::new();
                for id in work.accepts {
                    if let Some(r) = self.records.get_mut(&id) {
                        if r.acquired && !r.settled {
                            r.settled = true;
                            held.push(r.held.clone());
                        }
                    }
                }
                broker.commit_tx(work.enqueues, &held)?;
                self.records
                    .retain(|_, r| !(r.settled && (r.completed || !r.accept_explicit)));
                Ok(None)
            }
            Command::TxRollback(_) => {
                let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
                *tx = TxBuffer::default();
                Ok(None)
            }
            c @ (Command::DtxSelect(_)
            | Command::DtxStart(_)
            | Command::DtxEnd(_)
            | Command::DtxCommit(_)
            | Command::DtxForget(_)
            | Command::DtxGetTimeout(_)
            | Command::DtxPrepare(_)
            | Command::DtxRecover(_)
            | Command::DtxRollback(_)
            | Command::DtxSetTimeout(_)) => self.dtx.command(broker, c),
            Command::ExchangeDeclare(d) => {
                broker.declare_exchange(ExchangeDeclare {
                    name: d.exchange.unwrap_or_default(),
                    kind: d.r#type.unwrap_or_default(),
                    alternate: d.alternate_exchange,
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    args: d.arguments.unwrap_or_default(),
                    connection: env.connection,
                })?;
                Ok(None)
            }
            Command::ExchangeDelete(d) => {
                broker.delete_exchange_by(
                    env.connection,
                    d.exchange.as_deref().unwrap_or(""),
                    d.if_unused,
                )?;
                Ok(None)
            }
            Command::ExchangeQuery(q) => {
                let name = q.name.unwrap_or_default();
                let result = match broker.query_exchange(&name) {
                    Some(info) => ExchangeQueryResult {
                        r#type: Some(info.kind),
                        durable: info.durable,
                        not_found: false,
                        arguments: Some(info.args),
                    },
                    None => ExchangeQueryResult {
                        not_found: true,
                        ..ExchangeQueryResult::default()
                    },
                };
                Ok(Some(result.to_struct32()))
            }
            Command::ExchangeBind(b) => {
                broker.bind(
                    sid,
                    b.queue.as_deref().unwrap_or(""),
                    b.exchange.as_deref().unwrap_or(""),
                    b.binding_key.as_deref().unwrap_or(""),
                    &b.arguments.unwrap_or_default(),
                )?;
                Ok(None)
            }
            Command::ExchangeUnbind(u) => {
                broker.unbind(
                    sid,
                    u.queue.as_deref().unwrap_or(""),
                    u.exchange.as_deref().unwrap_or(""),
                    u.binding_key.as_deref().unwrap_or(""),
                )?;
                Ok(None)
            }
            Command::ExchangeBound(b) => {
                let info = broker.bound(
                    b.exchange.as_deref().unwrap_or(""),
                    b.queue.as_deref(),
                    b.binding_key.as_deref(),
                    b.arguments.as_ref(),
                );
                Ok(Some(
                    ExchangeBoundResult {
                        exchange_not_found: info.exchange_not_found,
                        queue_not_found: info.queue_not_found,
                        queue_not_matched: info.queue_not_matched,
                        key_not_matched: info.key_not_matched,
                        args_not_matched: info.args_not_matched,
                    }
                    .to_struct32(),
                ))
            }
            Command::QueueDeclare(d) => {
                broker.declare_queue(
                    sid,
                    QueueDeclare {
                        name: d.queue.unwrap_or_default(),
                        alternate: d.alternate_exchange,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        args: d.arguments.unwrap_or_default(),
                        creator: env.identity.map(|i| i.stamp.clone()),
                        creator_limit: env.max_queues_per_user,
                    },
                )?;
                Ok(None)
            }
            Command::QueueDelete(d) => {
                broker.delete_queue(
                    sid,
                    d.queue.as_deref().unwrap_or(""),
                    d.if_unused,
                    d.if_empty,
                )?;
                Ok(None)
            }
            Command::QueuePurge(p) => {
                broker.purge_queue(sid, p.queue.as_deref().unwrap_or(""))?;
                Ok(None)
            }
            Command::QueueQuery(q) => {
                let result = match broker.query_queue(q.queue.as_deref().unwrap_or("")) {
                    Some(info) => QueueQueryResult {
                        queue: Some(info.name),
                        alternate_exchange: info.alternate,
                        durable: info.durable,
                        exclusive: info.exclusive,
                        auto_delete: info.auto_delete,
                        arguments: Some(info.args),
                        message_count: Some(info.message_count),
                        subscriber_count: Some(info.subscriber_count),
                    },
                    None => QueueQueryResult::default(),
                };
                Ok(Some(result.to_struct32()))
            }
        }
    }

    fn transfer(
        &mut self,
        env: &mut SessionEnv<'_>,
        t: MessageTransfer,
        content: Option<Content>,
    ) -> Result<(), Error> {
        ConnectionLive::bump(&env.live.msgs_from, 1);
        let mut msg = Draft::from_content(content.as_ref())
            .map_err(|e| Error::InvalidArgument(format!("malformed message header: {e}")))?;
        if let Some(identity) = env.identity {
            let claimed = msg
                .properties
                .as_ref()
                .and_then(|p| p.user_id.as_ref())
                .filter(|u| !u.is_empty());
            match claimed {
                Some(claimed) if env.check_user_id && !identity.owns_user_id(claimed) => {
                    tracing::warn!(user = %identity.full, "transfer with a forged user-id refused");
                    return Err(Error::Unauthorized(format!(
                        "authenticated user id is {} but user id in message declared as {}",
                        identity.full,
                        String::from_utf8_lossy(claimed)
                    )));
                }
                Some(_) => {}
                None if env.stamp_user_id => msg.stamp_user_id(&identity.stamp),
                None => {}
            }
        }
        let exchange = t.destination.unwrap_or_default();
        msg.delivery.exchange = Some(exchange.clone());
        msg.origin = env.connection;
        if env.broker.timestamping() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            msg.delivery.timestamp = Some(now);
        }
        if let Some(ttl) = msg.delivery.ttl.filter(|t| *t > 0) {
            msg.expires_at =
                Some(std::time::Instant::now() + std::time::Duration::from_millis(ttl));
        }
        let msg = Arc::new(msg.seal());
        if let Some((_, buffer)) = &self.dtx.current {
            let queues = env.broker.route(&exchange, &msg)?;
            env.broker.dtx_enqueue(*buffer, queues, msg);
            return Ok(());
        }
        if let Some(tx) = &mut self.tx {
            let queues = env.broker.route(&exchange, &msg)?;
            tx.enqueues.push((queues, msg));
            return Ok(());
        }
        env.broker.publish(&exchange, msg)?;
        Ok(())
    }

    /// Marks the records in `set` settled and returns the held messages that match `f`.
    fn settle(&mut self, set: &SequenceSet, f: impl Fn(&Record) -> bool) -> Vec<Held> {
        let mut held = Vec::new();
        let mut done = Vec::new();
        for &(lo, hi) in set.ranges() {
            for (id, r) in range_mut(&mut self.records, lo, hi) {
                if r.settled {
                    continue;
                }
                if f(r) {
                    held.push(r.held.clone());
                }
                r.settled = true;
                if r.completed {
                    done.push(id);
                }
            }
        }
        for id in done {
            self.records.remove(&id);
        }
        held
    }
}

fn not_transactional() -> Error {
    Error::CommandInvalid("session is not transactional: tx.select first".into())
}

/// Records with ids in `lo..=hi`, taking wrap-around into account.
fn range_mut(
    records: &mut BTreeMap<u32, Record>,
    lo: SequenceNo,
    hi: SequenceNo,
) -> Box<dyn Iterator<Item = (u32, &mut Record)> + '_> {
    if lo.0 <= hi.0 {
        Box::new(records.range_mut(lo.0..=hi.0).map(|(id, r)| (*id, r)))
    } else {
        // The range wraps past u32::MAX.
        Box::new(
            records
                .iter_mut()
                .filter(move |(id, _)| **id >= lo.0 || **id <= hi.0)
                .map(|(id, r)| (*id, r)),
        )
    }
}

fn name(n: &Option<String>) -> &str {
    n.as_deref().unwrap_or("")
}

/// One thing a command does, in the ACL's terms.
struct AclCheck<'c> {
    action: Action,
    kind: ObjectKind,
    object: &'c str,
    /// The queue of a bind or unbind.
    queue: Option<&'c str>,
}

fn check(action: Action, kind: ObjectKind, object: &Option<String>) -> Option<AclCheck<'_>> {
    Some(AclCheck {
        action,
        kind,
        object: name(object),
        queue: None,
    })
}

fn declare_action(passive: bool) -> Action {
    if passive {
        Action::Access
    } else {
        Action::Create
    }
}

/// Publishing to the alternate exchange a declare names (rejected and unroutable messages
/// go there).
fn alternate(alt: &Option<String>, passive: bool) -> Option<AclCheck<'_>> {
    if passive || name(alt).is_empty() {
        return None;
    }
    check(Action::Publish, ObjectKind::Exchange, alt)
}

/// What a command does to which objects, at most two; none for commands the ACL does not
/// govern (flow control, acknowledgements, session commands).
fn acl_checks(command: &Command) -> [Option<AclCheck<'_>>; 2] {
    let bind = |d_exchange, d_queue| {
        check(Action::Bind, ObjectKind::Exchange, d_exchange).map(|c| AclCheck {
            queue: Some(name(d_queue)),
            ..c
        })
    };
    match command {
        Command::QueueDeclare(d) => [
            check(declare_action(d.passive), ObjectKind::Queue, &d.queue),
            alternate(&d.alternate_exchange, d.passive),
        ],
        Command::ExchangeDeclare(d) => [
            check(declare_action(d.passive), ObjectKind::Exchange, &d.exchange),
            alternate(&d.alternate_exchange, d.passive),
        ],
        Command::QueueDelete(d) => [check(Action::Delete, ObjectKind::Queue, &d.queue), None],
        Command::QueuePurge(d) => [check(Action::Purge, ObjectKind::Queue, &d.queue), None],
        Command::QueueQuery(d) => [check(Action::Access, ObjectKind::Queue, &d.queue), None],
        Command::ExchangeDelete(d) => [
            check(Action::Delete, ObjectKind::Exchange, &d.exchange),
            None,
        ],
        Command::ExchangeQuery(d) => [check(Action::Access, ObjectKind::Exchange, &d.name), None],
        Command::ExchangeBound(d) => [
            check(Action::Access, ObjectKind::Exchange, &d.exchange),
            None,
        ],
        Command::ExchangeBind(d) => [bind(&d.exchange, &d.queue), None],
        Command::ExchangeUnbind(d) => [bind(&d.exchange, &d.queue), None],
        Command::MessageSubscribe(s) => [check(Action::Consume, ObjectKind::Queue, &s.queue), None],
        Command::MessageTransfer(t) => [
            check(Action::Publish, ObjectKind::Exchange, &t.destination),
            None,
        ],
        _ => [None, None],
    }
}

/// Checks a command against the ACL; a denial is logged and answered with 403.
pub(crate) fn authorize(
    acl: &Acl,
    identity: Option<&Identity>,
    command: &Command,
) -> Result<(), Error> {
    let both;
    let names: &[&str] = match identity {
        Some(i) => {
            both = [i.stamp.as_str(), i.full.as_str()];
            &both
        }
        None => &[],
    };
    for c in acl_checks(command).into_iter().flatten() {
        let decision = acl.check_bind(names, c.action, c.kind, c.object, c.queue);
        if decision.allowed {
            continue;
        }
        let user = names.first().copied().unwrap_or("(nobody)");
        let (action, kind, object) = (c.action, c.kind, c.object);
        tracing::warn!(user, %action, object = %format!("{kind} {object}"), rule = decision.line, "ACL denied");
        return Err(Error::Unauthorized(format!(
            "ACL denied {user} {action} on {kind} {object}"
        )));
    }
    Ok(())
}

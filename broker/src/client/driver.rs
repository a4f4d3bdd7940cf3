//! The connection's task: owns the socket and the [`Machine`], reads and writes without one
//! blocking the other, runs the heartbeat timer, and turns machine events into replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::error::ClientError;
use super::machine::{Event, Machine, Negotiated};
use super::message::{Delivery, Message};
use super::options::ConnectOptions;
use crate::wire::{Command, Struct32};

/// Room for requests waiting for the driver; senders wait when it is full.
const REQUEST_QUEUE: usize = 256;
/// Stop taking requests while this many bytes wait for the socket (backpressure).
const HIGH_WATER: usize = 1 << 20;
/// Requests handled per wake-up at most (bounded so output is written in between).
const REQUEST_BURST: usize = 64;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// How long the last bytes (close, close-ok) may take to leave once the machine is done.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Where a command's outcome goes: its result struct, if any, once complete.
pub(crate) type Reply = oneshot::Sender<Result<Option<Struct32>, ClientError>>;

/// A command's waiter, with the ticket its [`Completion`](super::Completion) names it by
/// when it asks for the broker to be made to report.
pub(crate) struct Waiter {
    pub(crate) ticket: u64,
    pub(crate) reply: Reply,
}

/// A fresh ticket; unique per process, in no particular order.
pub(crate) fn next_ticket() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
/// Where a subscription's deliveries go.
pub(crate) type DeliverySender = mpsc::UnboundedSender<Result<Delivery, ClientError>>;

/// What the handles ask of the driver.
pub(crate) enum Request {
    Attach {
        name: Bytes,
        reply: oneshot::Sender<Result<u16, ClientError>>,
    },
    Detach {
        channel: u16,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Command {
        channel: u16,
        command: Command,
        sync: bool,
        reply: Option<Waiter>,
    },
    Transfer {
        channel: u16,
        destination: String,
        message: Box<Message>,
        sync: bool,
        reply: Option<Waiter>,
    },
    /// Someone awaits the command with this ticket: make sure the broker will report it.
    Demand {
        ticket: u64,
    },
    Subscribe {
        channel: u16,
        destination: String,
        deliveries: DeliverySender,
    },
    Unsubscribe {
        channel: u16,
        destination: String,
    },
    Close {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
}

/// State the handles read after the driver is gone.
#[derive(Debug)]
pub(crate) struct Shared {
    error: OnceLock<ClientError>,
    /// Turns true when the driver has finished.
    ended: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Self {
        Self {
            error: OnceLock::new(),
            ended: watch::Sender::new(false),
        }
    }

    /// Why the connection ended ([`ClientError::Closed`] while it has not, or after a close
    /// this side asked for).
    pub(crate) fn error(&self) -> ClientError {
        self.error.get().cloned().unwrap_or(ClientError::Closed)
    }

    /// Whether the driver has finished.
    pub(crate) fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Waits until the driver has finished and returns why.
    pub(crate) async fn wait_ended(&self) -> ClientError {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
        self.error()
    }

    fn end(&self, error: ClientError) {
        let _ = self.error.set(error);
        self.ended.send_replace(true);
    }
}

/// A started driver and the ends the handles keep.
pub(crate) struct Spawned {
    /// Where requests go.
    pub(crate) tx: mpsc::Sender<Request>,
    /// The negotiation outcome.
    pub(crate) opened: oneshot::Receiver<Result<Negotiated, ClientError>>,
    /// Why the connection ended, once it has.
    pub(crate) shared: Arc<Shared>,
    /// The task.
    pub(crate) handle: JoinHandle<()>,
}

/// Starts the driver on `stream`.
pub(crate) fn spawn<S>(stream: S, opts: ConnectOptions) -> Spawned
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let (opened_tx, opened_rx) = oneshot::channel();
    let shared = Arc::new(Shared::new());
    let driver = Driver {
        machine: Machine::new(opts, now()),
        tickets: HashMap::new(),
        opened: Some(opened_tx),
        attaching: HashMap::new(),
        detaching: HashMap::new(),
        subscriptions: HashMap::new(),
        closing: Vec::new(),
        shared: shared.clone(),
    };
    let handle = tokio::spawn(driver.run(stream, rx));
    Spawned {
        tx,
        opened: opened_rx,
        shared,
        handle,
    }
}

/// The tokio clock as a std instant, so paused-time tests drive the machine too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end(ClientError::Closed);
    }
}

struct Driver {
    machine: Machine<Waiter>,
    /// Where each unfinished command with a waiter went: ticket → (channel, position).
    tickets: HashMap<u64, (u16, u64)>,
    opened: Option<oneshot::Sender<Result<Negotiated, ClientError>>>,
    attaching: HashMap<u16, oneshot::Sender<Result<u16, ClientError>>>,
    detaching: HashMap<u16, Vec<oneshot::Sender<Result<(), ClientError>>>>,
    subscriptions: HashMap<u16, HashMap<String, DeliverySender>>,
    closing: Vec<oneshot::Sender<Result<(), ClientError>>>,
    shared: Arc<Shared>,
}

impl Driver {
    async fn run<S>(mut self, stream: S, mut requests: mpsc::Receiver<Request>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        // However the task ends (even aborted or panicking), the handles learn it.
        let _ended = EndGuard(self.shared.clone());
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut outbuf = BytesMut::new();
        let mut requests_open = true;
        loop {
            self.machine.poll_transmit(&mut outbuf, now());
            self.dispatch_events();
            if self.machine.is_closed() {
                break;
            }
            if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                inbuf.reserve(READ_CHUNK);
            }
            let deadline = self.machine.poll_timeout();
            let sleep_to = tokio::time::Instant::from_std(deadline.unwrap_or_else(now));
            let take_requests = requests_open && outbuf.len() < HIGH_WATER;
            tokio::select! {
                r = rd.read_buf(&mut inbuf) => match r {
                    Ok(0) => self.machine.handle_eof(),
                    Ok(_) => self.machine.handle_input(&mut inbuf, now()),
                    Err(e) => self.machine.abort(e.into()),
                },
                w = wr.write(&outbuf), if !outbuf.is_empty() => match w {
                    Ok(0) => {
                        outbuf.clear();
                        self.machine.abort(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    Ok(n) => outbuf.advance(n),
                    Err(e) => {
                        outbuf.clear();
                        self.machine.abort(e.into());
                    }
                },
                req = requests.recv(), if take_requests => match req {
                    Some(req) => {
                        self.handle_request(req);
                        // Take what else is queued in one go: one wake-up for a burst.
                        for _ in 1..REQUEST_BURST {
                            let Ok(req) = requests.try_recv() else { break };
                            self.handle_request(req);
                        }
                    }
                    None => {
                        // Every handle is gone: nobody can use the connection any more.
                        requests_open = false;
                        self.machine.close(now());
                    }
                },
                () = tokio::time::sleep_until(sleep_to), if deadline.is_some() => {
                    self.machine.handle_timeout(now());
                }
            }
        }
        // Say goodbye (close or close-ok) if the socket still takes bytes.
        let flush = async {
            wr.write_all(&outbuf).await?;
            wr.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(FINAL_FLUSH, flush).await {
            debug!(error = %e, "final write failed");
        }
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Attach { name, reply } => match self.machine.attach(name) {
                Ok(channel) => {
                    self.attaching.insert(channel, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Detach { channel, reply } => {
                self.detaching.entry(channel).or_default().push(reply);
                self.machine.detach(channel);
            }
            Request::Command {
                channel,
                command,
                sync,
                reply,
            } => {
                let ticket = reply.as_ref().map(|w| w.ticket);
                let position = self.machine.send_command(channel, &command, sync, reply);
                self.track(ticket, channel, position);
            }
            Request::Transfer {
                channel,
                destination,
                message,
                sync,
                reply,
            } => {
                let ticket = reply.as_ref().map(|w| w.ticket);
                let position =
                    self.machine
                        .send_transfer(channel, destination, &message, sync, reply);
                self.track(ticket, channel, position);
            }
            Request::Demand { ticket } => {
                if let Some(&(channel, position)) = self.tickets.get(&ticket) {
                    self.machine.ensure_synced(channel, position);
                }
            }
            Request::Subscribe {
                channel,
                destination,
                deliveries,
            } => {
                self.subscriptions
                    .entry(channel)
                    .or_default()
                    .insert(destination, deliveries);
            }
            Request::Unsubscribe {
                channel,
                destination,
            } => {
                if let Some(subs) = self.subscriptions.get_mut(&channel) {
                    subs.remove(&destination);
                }
            }
            Request::Close { reply } => {
                self.closing.push(reply);
                self.machine.close(now());
            }
        }
    }

    fn track(&mut self, ticket: Option<u64>, channel: u16, position: Option<u64>) {
        // Failed sends have already answered their waiter.
        if let (Some(ticket), Some(position)) = (ticket, position) {
            self.tickets.insert(ticket, (channel, position));
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            match event {
                Event::Opened(negotiated) => {
                    if let Some(tx) = self.opened.take() {
                        let _ = tx.send(Ok(negotiated));
                    }
                }
                Event::Attached(channel) => {
                    if let Some(tx) = self.attaching.remove(&channel) {
                        let _ = tx.send(Ok(channel));
                    }
                }
                Event::Done(waiter, result) => {
                    self.tickets.remove(&waiter.ticket);
                    let _ = waiter.reply.send(result);
                }
                Event::Delivery(channel, delivery) => self.deliver(channel, delivery),
                Event::SessionFailed(channel, error) => {
                    for (_, tx) in self.subscriptions.remove(&channel).unwrap_or_default() {
                        let _ = tx.send(Err(error.clone()));
                    }
                }
                Event::SessionEnded(channel, error) => {
                    let error_or_detached =
                        || error.clone().unwrap_or(ClientError::Detached { code: 0 });
                    if let Some(tx) = self.attaching.remove(&channel) {
                        let _ = tx.send(Err(error_or_detached()));
                    }
                    // The session is gone as its closer asked; an earlier exception was
                    // already reported to the commands it broke.
                    for tx in self.detaching.remove(&channel).unwrap_or_default() {
                        let _ = tx.send(Ok(()));
                    }
                    for (_, tx) in self.subscriptions.remove(&channel).unwrap_or_default() {
                        if let Some(e) = &error {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
                Event::Closed(error) => {
                    let e = error.clone().unwrap_or(ClientError::Closed);
                    if let Some(err) = &error {
                        debug!(error = %err, "connection ended");
                    }
                    // Recorded now so replies below and later calls see the reason; `ended`
                    // turns true once the last bytes are out.
                    let _ = self.shared.error.set(e.clone());
                    if let Some(tx) = self.opened.take() {
                        let _ = tx.send(Err(e.clone()));
                    }
                    for (_, tx) in self.attaching.drain() {
                        let _ = tx.send(Err(e.clone()));
                    }
                    for (_, txs) in self.detaching.drain() {
                        for tx in txs {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    for (_, subs) in self.subscriptions.drain() {
                        for (_, tx) in subs {
                            if error.is_some() {
                                let _ = tx.send(Err(e.clone()));
                            }
                        }
                    }
                    for tx in self.closing.drain(..) {
                        let _ = tx.send(match &error {
                            None => Ok(()),
                            Some(err) => Err(err.clone()),
                        });
                    }
                }
            }
        }
    }

    fn deliver(&mut self, channel: u16, delivery: Box<Delivery>) {
        let Some(subs) = self.subscriptions.get_mut(&channel) else {
            warn!(channel, destination = %delivery.destination, "delivery for no subscription");
            return;
        };
        let Some(tx) = subs.get(&delivery.destination) else {
            warn!(channel, destination = %delivery.destination, "delivery for no subscription");
            return;
        };
        if let Err(e) = tx.send(Ok(*delivery)) {
            // The Subscription was dropped without cancel; its messages stay acquired
            // until the session ends and the broker requeues them.
            if let Ok(d) = e.0 {
                debug!(channel, destination = %d.destination, "subscription dropped");
                subs.remove(&d.destination);
            }
        }
    }
}

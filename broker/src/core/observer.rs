//! How the model tells management what happens in it: requests addressed to the broker's
//! management agent, and the events QMF reports (declares, deletes, bindings,
//! subscriptions, queue thresholds). The model only calls a non-blocking [`Observer`];
//! what is done with it happens elsewhere, off the broker lock.

use std::sync::Arc;

use super::broker::Broker;
use super::error::Error;
use super::message::Message;
use crate::wire::{FieldTable, Value};

/// Something in the model that management reports. `connection` is the broker's id of the
/// connection that caused it (0: the broker itself, or management).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// A queue was declared (`created` false: it existed already).
    QueueDeclared {
        /// Who declared it.
        connection: u64,
        /// The queue.
        name: String,
        /// Durable flag.
        durable: bool,
        /// Exclusive flag.
        exclusive: bool,
        /// Auto-delete flag.
        auto_delete: bool,
        /// Alternate exchange.
        alternate: Option<String>,
        /// Declare arguments.
        args: FieldTable,
        /// Whether this declare made it.
        created: bool,
    },
    /// A queue was deleted.
    QueueDeleted {
        /// Who deleted it.
        connection: u64,
        /// The queue.
        name: String,
    },
    /// An exchange was declared.
    ExchangeDeclared {
        /// Who declared it.
        connection: u64,
        /// The exchange.
        name: String,
        /// Its type.
        kind: String,
        /// Alternate exchange.
        alternate: Option<String>,
        /// Durable flag.
        durable: bool,
        /// Auto-delete flag.
        auto_delete: bool,
        /// Declare arguments.
        args: FieldTable,
        /// Whether this declare made it.
        created: bool,
    },
    /// An exchange was deleted.
    ExchangeDeleted {
        /// Who deleted it.
        connection: u64,
        /// The exchange.
        name: String,
    },
    /// A binding was made.
    Bound {
        /// Who bound.
        connection: u64,
        /// The exchange.
        exchange: String,
        /// The queue.
        queue: String,
        /// The binding key.
        key: String,
        /// The binding arguments.
        args: FieldTable,
    },
    /// A binding was removed.
    Unbound {
        /// Who unbound.
        connection: u64,
        /// The exchange.
        exchange: String,
        /// The queue.
        queue: String,
        /// The binding key.
        key: String,
    },
    /// A consumer subscribed.
    Subscribed {
        /// Its connection.
        connection: u64,
        /// The queue.
        queue: String,
        /// Its destination.
        destination: String,
        /// Exclusive consumer.
        exclusive: bool,
    },
    /// A consumer went away.
    Unsubscribed {
        /// Its connection.
        connection: u64,
        /// Its destination.
        destination: String,
    },
    /// A client logged in.
    ClientConnected {
        /// Its address as management names connections.
        address: String,
        /// Who.
        user: String,
        /// Its client properties.
        properties: FieldTable,
    },
    /// A logged-in client went away.
    ClientDisconnected {
        /// Its address as management names connections.
        address: String,
        /// Who.
        user: String,
        /// Its client properties.
        properties: FieldTable,
    },
    /// A queue's depth crossed its `qpid.alert_*` threshold.
    Threshold {
        /// The queue.
        queue: String,
        /// Which way.
        crossing: Crossing,
        /// Report the old-style event as well.
        compat: bool,
        /// Messages held then.
        msg_depth: u64,
        /// Bytes held then.
        byte_depth: u64,
    },
}

/// Management as the model sees it. Calls other than `flush` come with the broker lock
/// held: they must return at once (queue the work, never block on it).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Whether a message published to `exchange` with routing key `key` is addressed to the
    /// management agent.
    fn wants(&self, exchange: &str, key: &str) -> bool;
    /// A message addressed to the management agent.
    fn request(&self, exchange: &str, msg: &Arc<Message>);
    /// Something happened.
    fn event(&self, event: ModelEvent);
    /// Called each time the broker lock is released: publish what the events raised under
    /// it have to say (through `broker`, which takes the lock again).
    fn flush(&self, broker: &Broker);
}

/// qpidd's queue threshold alerts. `qpid.alert_count[_up]` and `qpid.alert_size[_up]`
/// (or 80% of `qpid.max_count` / `qpid.max_size`) set the levels; crossing one upward
/// raises an event, and falling back to the lower level (`qpid.alert_*_down`, by default
/// half) raises one downward. Without any down level the old `queueThresholdExceeded`
/// event accompanies the upward one.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    count: Option<Level>,
    size: Option<Level>,
    /// No down level was given: raise the old-style event too.
    pub compat: bool,
}

/// One of the two watched quantities (messages or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    up: u64,
    down: u64,
    /// Waiting to cross upward (else downward).
    rising: bool,
}

impl Level {
    fn new(up: u64, down: Option<u64>) -> Option<Level> {
        (up > 0).then(|| Level {
            up,
            down: down.filter(|d| *d > 0 && *d < up).unwrap_or(up / 2),
            rising: true,
        })
    }

    fn crossed(&mut self, value: u64) -> Option<bool> {
        if self.rising && value >= self.up {
            self.rising = false;
            return Some(true);
        }
        if !self.rising && value <= self.down {
            self.rising = true;
            return Some(false);
        }
        None
    }
}

/// What a threshold check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// A level was reached.
    Up,
    /// The depth fell back to the lower level.
    Down,
}

fn arg(args: &FieldTable, keys: &[&str]) -> Result<Option<u64>, Error> {
    for key in keys {
        match args.get(key) {
            None | Some(Value::Void) => continue,
            Some(v) => {
                return v
                    .as_i64()
                    .and_then(|n| u64::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("{key} must be a non-negative integer"))
                    })
            }
        }
    }
    Ok(None)
}

/// The share of a queue limit at which alerts start when no level is given (percent).
const DEFAULT_RATIO: u64 = 80;

impl Threshold {
    /// The threshold the declare arguments set, if any.
    ///
    /// # Errors
    /// `InvalidArgument` for values that are not non-negative integers.
    pub fn from_args(args: &FieldTable) -> Result<Option<Threshold>, Error> {
        let count_up = match arg(
            args,
            &[
                "qpid.alert_count",
                "qpid.alert_count_up",
                "x-qpid-maximum-message-count",
            ],
        )? {
            Some(n) => n,
            None => arg(args, &["qpid.max_count"])?.unwrap_or(0) * DEFAULT_RATIO / 100,
        };
        let size_up = match arg(
            args,
            &[
                "qpid.alert_size",
                "qpid.alert_size_up",
                "x-qpid-maximum-message-size",
            ],
        )? {
            Some(n) => n,
            None => arg(args, &["qpid.max_size"])?.unwrap_or(0) * DEFAULT_RATIO / 100,
        };
        let count_down = arg(args, &["qpid.alert_count_down"])?;
        let size_down = arg(args, &["qpid.alert_size_down"])?;
        let t = Threshold {
            count: Level::new(count_up, count_down),
            size: Level::new(size_up, size_down),
            compat: count_down.is_none() && size_down.is_none(),
        };
        Ok((t.count.is_some() || t.size.is_some()).then_some(t))
    }

    /// Notes the queue's depth (messages, and bytes as qpidd sizes messages) after a
    /// change; the crossings it makes, at most one per quantity.
    pub fn crossed(&mut self, msgs: u64, bytes: u64) -> [Option<Crossing>; 2] {
        let as_crossing =
            |c: Option<bool>| c.map(|up| if up { Crossing::Up } else { Crossing::Down });
        [
            as_crossing(self.count.as_mut().and_then(|l| l.crossed(msgs))),
            as_crossing(self.size.as_mut().and_then(|l| l.crossed(bytes))),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(pairs: &[(&str, i64)]) -> Threshold {
        let mut args = FieldTable::new();
        for (k, v) in pairs {
            args.insert(*k, Value::Int64(*v));
        }
        Threshold::from_args(&args).expect("args").expect("set")
    }

    #[test]
    fn hysteresis_between_the_up_and_down_levels() {
        let mut t = threshold(&[("qpid.alert_count_up", 10), ("qpid.alert_count_down", 5)]);
        assert!(!t.compat);
        let mut seen = Vec::new();
        for depth in [8, 2, 10, 9, 10, 20, 15, 3, 2, 8, 14, 5, 6, 5, 0] {
            if let [Some(c), _] = t.crossed(depth, 0) {
                seen.push((depth, c));
            }
        }
        assert_eq!(
            seen,
            [
                (10, Crossing::Up),
                (3, Crossing::Down),
                (14, Crossing::Up),
                (5, Crossing::Down)
            ]
        );
    }

    #[test]
    fn levels_default_from_limits_and_aliases() {
        let mut t = threshold(&[("qpid.max_count", 10)]);
        assert!(t.compat);
        assert_eq!(t.crossed(7, 0), [None, None]);
        assert_eq!(t.crossed(8, 0), [Some(Crossing::Up), None]);
        assert_eq!(t.crossed(4, 0), [Some(Crossing::Down), None]);
        let mut t = threshold(&[("x-qpid-maximum-message-size", 100)]);
        assert_eq!(t.crossed(3, 102), [None, Some(Crossing::Up)]);
        assert!(Threshold::from_args(&FieldTable::new())
            .expect("none")
            .is_none());
    }
}

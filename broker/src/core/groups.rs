//! Message groups, as qpidd has them: a queue declared with `qpid.group_header_key` sorts
//! its messages into groups by that header (messages without it form the group
//! `qpid.no-group`), and a group belongs to one consumer while that consumer holds any of
//! its acquired messages. Other consumers pass its messages by; browsers see everything.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::message::Message;
use super::SessionId;
use crate::wire::{FieldTable, Value};

/// The group of messages without the group header.
pub const DEFAULT_GROUP: &str = "qpid.no-group";

/// A consumer, as groups know it: its session and destination.
pub type ConsumerId = (SessionId, std::sync::Arc<str>);

/// Who holds a group, and how many of its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Holder {
    /// The consumer that acquired them; `None` when acquired otherwise (message.acquire).
    consumer: Option<ConsumerId>,
    acquired: u32,
}

/// The groups of one queue and who holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    key: String,
    held: HashMap<String, Holder>,
}

/// One group as management reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group.
    pub id: String,
    /// Its messages on the queue, acquired ones included.
    pub messages: u64,
    /// The consumer holding it (`session:destination`), or empty.
    pub consumer: String,
}

impl Groups {
    /// The groups the declare arguments ask for, if any.
    pub fn from_args(args: &FieldTable) -> Option<Groups> {
        let key = args.get("qpid.group_header_key")?.as_str()?;
        (!key.is_empty()).then(|| Groups {
            key: key.to_string(),
            held: HashMap::new(),
        })
    }

    /// The header that names a message's group.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The group `msg` belongs to (borrowed from its header when that is a string, as it
    /// almost always is: this runs for every message a grouped queue hands out).
    pub fn group_of<'a>(&self, msg: &'a Message) -> Cow<'a, str> {
        match msg.headers().and_then(|h| h.get(&self.key)) {
            Some(v) => match v.as_str() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(
                    v.as_i64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| format!("{v:?}")),
                ),
            },
            None => Cow::Borrowed(DEFAULT_GROUP),
        }
    }

    /// Whether `consumer` may acquire `msg`: its group is free, or already its own.
    pub fn may_take(&self, msg: &Message, consumer: &ConsumerId) -> bool {
        match self.held.get(self.group_of(msg).as_ref()) {
            None => true,
            Some(h) => h.consumer.as_ref() == Some(consumer),
        }
    }

    /// Whether anyone holds `msg`'s group.
    pub fn is_held(&self, msg: &Message) -> bool {
        self.held.contains_key(self.group_of(msg).as_ref())
    }

    /// `msg` was acquired (by `consumer`, when a consumer took it).
    pub fn acquired(&mut self, msg: &Message, consumer: Option<&ConsumerId>) {
        let h = self
            .held
            .entry(self.group_of(msg).into_owned())
            .or_default();
        if h.acquired == 0 {
            h.consumer = consumer.cloned();
        }
        h.acquired += 1;
    }

    /// An acquired `msg` was accepted, rejected or released: when its group has no acquired
    /// message left, the group is free.
    pub fn settled(&mut self, msg: &Message) {
        let group = self.group_of(msg);
        if let Some(h) = self.held.get_mut(group.as_ref()) {
            h.acquired = h.acquired.saturating_sub(1);
            if h.acquired == 0 {
                self.held.remove(group.as_ref());
            }
        }
    }

    /// Every message left the queue.
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// The groups among `messages` (everything on the queue), by id.
    pub fn state<'a>(&self, messages: impl Iterator<Item = &'a Message>) -> Vec<GroupState> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for m in messages {
            *counts.entry(self.group_of(m).into_owned()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(id, messages)| {
                let consumer = self
                    .held
                    .get(&id)
                    .and_then(|h| h.consumer.as_ref())
                    .map(|(s, d)| format!("{}:{d}", s.0))
                    .unwrap_or_default();
                GroupState {
                    id,
                    messages,
                    consumer,
                }
            })
            .collect()
    }
}

/// The group state as qpidd's `query` method reports it for a queue.
pub fn state_map(key: &str, groups: &[GroupState]) -> FieldTable {
    let list = groups
        .iter()
        .map(|g| {
            let mut m = FieldTable::new();
            m.insert("group_id", g.id.as_str());
            m.insert(
                "msg_count",
                Value::Uint32(u32::try_from(g.messages).unwrap_or(u32::MAX)),
            );
            m.insert("timestamp", Value::Uint64(0));
            m.insert("consumer", g.consumer.as_str());
            Value::Map(m)
        })
        .collect();
    let mut q = FieldTable::new();
    q.insert("group_header_key", key);
    q.insert("group_state", Value::List(crate::wire::List(list)));
    let mut out = FieldTable::new();
    out.insert("qpid.message_group_queue", Value::Map(q));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: Option<&str>) -> Message {
        let m = Message::new("q", "x");
        match group {
            Some(g) => m.with_header("THE-GROUP", Value::from(g)),
            None => m,
        }
    }

    #[test]
    fn a_group_belongs_to_its_consumer_until_its_last_message_is_settled() {
        let mut args = FieldTable::new();
        args.insert("qpid.group_header_key", "THE-GROUP");
        let mut g = Groups::from_args(&args).expect("groups");
        let (c1, c2) = ((SessionId(1), "a".into()), (SessionId(2), "b".into()));
        let (a0, a1, b) = (msg(Some("A")), msg(Some("A")), msg(Some("B")));
        g.acquired(&a0, Some(&c1));
        assert!(g.may_take(&a1, &c1) && !g.may_take(&a1, &c2) && g.may_take(&b, &c2));
        g.acquired(&a1, Some(&c1));
        g.settled(&a0);
        assert!(!g.may_take(&a1, &c2), "still one A held");
        g.settled(&a1);
        assert!(g.may_take(&a1, &c2), "free again");
        assert_eq!(g.group_of(&msg(None)), DEFAULT_GROUP);
        let state = g.state([a0, b].iter());
        assert_eq!(state.len(), 2);
        assert!(state
            .iter()
            .all(|s| s.consumer.is_empty() && s.messages == 1));
    }
}

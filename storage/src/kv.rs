//! The translation between store operations and the ordered key space of `record`, shared
//! by the sled and the in-memory store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::record::{self, CHUNK};
use crate::{Recovered, StoreError, StoreOp, StoredMessage};

/// One key written (`Some`) or removed (`None`).
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

/// The writes that carry out `ops`; `scan` lists the keys under a prefix (for removals of
/// whole messages and queues).
pub(crate) fn writes(
    ops: &[StoreOp],
    scan: impl Fn(&[u8]) -> Result<Vec<Vec<u8>>, StoreError>,
) -> Result<Vec<Write>, StoreError> {
    let mut out = Vec::with_capacity(ops.len());
    // Chunk counts of messages enqueued in this batch: their keys are not in the store yet,
    // and looking them up here keeps a batch of many dequeues linear.
    let mut enqueued: HashMap<(&str, u64), u32> = HashMap::new();
    for op in ops {
        match op {
            StoreOp::PutExchange(r) => out.push((
                record::exchange_key(&r.name),
                Some(record::exchange_value(r)),
            )),
            StoreOp::DeleteExchange(name) => out.push((record::exchange_key(name), None)),
            StoreOp::PutQueue(r) => {
                out.push((record::queue_key(&r.name), Some(record::queue_value(r))))
            }
            StoreOp::DeleteQueue(name) => {
                out.push((record::queue_key(name), None));
                for prefix in [
                    record::message_prefix(name, None),
                    record::delivered_prefix(name, None),
                ] {
                    let keys = [scan(&prefix)?, written_under(&out, &prefix)].concat();
                    out.extend(keys.into_iter().map(|k| (k, None)));
                }
            }
            StoreOp::PutBinding(r) => out.push((
                record::binding_key(&r.exchange, &r.queue, &r.key),
                Some(record::binding_value(&r.args)),
            )),
            StoreOp::DeleteBinding {
                exchange,
                queue,
                key,
            } => out.push((record::binding_key(exchange, queue, key), None)),
            StoreOp::PutExchangeBinding(r) => out.push((
                record::exchange_binding_key(&r.source, &r.destination, &r.key),
                Some(record::binding_value(&r.args)),
            )),
            StoreOp::DeleteExchangeBinding {
                source,
                destination,
                key,
            } => out.push((record::exchange_binding_key(source, destination, key), None)),
            StoreOp::Enqueue { queue, seq, data } => {
                if data.is_empty() {
                    out.push((record::chunk_key(queue, *seq, 0), Some(Vec::new())));
                }
                let mut chunks = u32::from(data.is_empty());
                for chunk in data.chunks(CHUNK) {
                    out.push((record::chunk_key(queue, *seq, chunks), Some(chunk.to_vec())));
                    chunks += 1;
                }
                enqueued.insert((queue.as_str(), *seq), chunks);
            }
            StoreOp::Dequeue { queue, seq } => {
                let prefix = record::message_prefix(queue, Some(*seq));
                out.extend(scan(&prefix)?.into_iter().map(|k| (k, None)));
                let fresh = enqueued.remove(&(queue.as_str(), *seq)).unwrap_or(0);
                out.extend((0..fresh).map(|i| (record::chunk_key(queue, *seq, i), None)));
                out.push((record::delivered_prefix(queue, Some(*seq)), None));
            }
            StoreOp::Delivered { queue, seq } => out.push((
                record::delivered_prefix(queue, Some(*seq)),
                Some(Vec::new()),
            )),
            StoreOp::PutUser(r) => {
                out.push((record::user_key(&r.name), Some(record::user_value(r))))
            }
            StoreOp::DeleteUser(name) => out.push((record::user_key(name), None)),
            StoreOp::PutFederation(r) => out.push((
                record::federation_key(r.kind, &r.name),
                Some(record::federation_value(r)),
            )),
            StoreOp::DeleteFederation { kind, name } => {
                out.push((record::federation_key(*kind, name), None))
            }
            StoreOp::PutPrepared(r) => out.push((
                record::prepared_key(&r.xid),
                Some(record::prepared_value(r)),
            )),
            StoreOp::DeletePrepared(xid) => out.push((record::prepared_key(xid), None)),
        }
    }
    Ok(out)
}

/// Keys put earlier in the same batch under `prefix`: the scan of the store cannot see them.
fn written_under(out: &[Write], prefix: &[u8]) -> Vec<Vec<u8>> {
    out.iter()
        .filter(|(k, v)| v.is_some() && k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Rebuilds the durable state from every key and value, in key order.
pub(crate) fn recover(
    entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
) -> Result<Recovered, StoreError> {
    let mut records = Records::default();
    let mut messages = Messages::default();
    for entry in entries {
        let (k, v) = entry?;
        match k.split_first() {
            Some((&record::MESSAGE, key)) => messages.push(key, v)?,
            _ => records.push(&k, v)?,
        }
    }
    Ok(records.finish(messages.finish()))
}

/// Every record but the messages, read in any order; [`Records::finish`] adds the messages.
#[derive(Default)]
pub(crate) struct Records {
    rec: Recovered,
    delivered: HashSet<(String, u64)>,
}

impl Records {
    /// Takes one record (its whole key, kind first); messages go to [`Messages`].
    pub(crate) fn push(&mut self, k: &[u8], v: Vec<u8>) -> Result<(), StoreError> {
        let rec = &mut self.rec;
        let Some((&kind, key)) = k.split_first() else {
            return Ok(());
        };
        match kind {
            record::EXCHANGE => rec.exchanges.push(record::decode_exchange(key, &v)?),
            record::QUEUE => rec.queues.push(record::decode_queue(key, &v)?),
            record::BINDING => rec.bindings.push(record::decode_binding(key, &v)?),
            record::EXCHANGE_BINDING => rec
                .exchange_bindings
                .push(record::decode_exchange_binding(key, &v)?),
            record::MESSAGE => {
                return Err(StoreError::Corrupt("a message read as a record".into()))
            }
            record::DELIVERED => {
                self.delivered.insert(record::decode_delivered_key(key)?);
            }
            record::USER => rec.users.push(record::decode_user(key, &v)?),
            record::FEDERATION => rec.federation.push(record::decode_federation(key, &v)?),
            record::PREPARED => rec.prepared.push(record::decode_prepared(key, &v)?),
            other => return Err(StoreError::Corrupt(format!("unknown record kind {other}"))),
        }
        Ok(())
    }

    /// The queues read so far.
    pub(crate) fn queues(&self) -> impl Iterator<Item = &str> {
        self.rec.queues.iter().map(|q| q.name.as_str())
    }

    /// The whole state, with `messages` (in key order) of the queues that exist, each
    /// marked if it had been delivered.
    pub(crate) fn finish(self, mut messages: Vec<StoredMessage>) -> Recovered {
        let mut rec = self.rec;
        let queues: HashSet<&str> = rec.queues.iter().map(|q| q.name.as_str()).collect();
        messages.retain(|m| queues.contains(&*m.queue));
        if !self.delivered.is_empty() {
            for m in &mut messages {
                m.delivered = self.delivered.contains(&(m.queue.to_string(), m.seq));
            }
        }
        rec.messages = messages;
        rec
    }
}

/// Stored messages joined from their chunks, which come in key order: a message's chunks
/// are adjacent and messages arrive sorted by queue and position. One name is shared by
/// each queue's messages.
#[derive(Default)]
pub(crate) struct Messages {
    done: Vec<StoredMessage>,
    open: Option<Joining>,
}

impl Messages {
    /// Takes one chunk (its key after the kind byte).
    pub(crate) fn push(&mut self, key: &[u8], v: Vec<u8>) -> Result<(), StoreError> {
        // Everything but the chunk number names the message.
        let id = &key[..key.len().saturating_sub(4)];
        match &mut self.open {
            Some(j) if j.id[..] == *id => j.data.extend_from_slice(&v),
            _ => {
                let (queue, seq, _) = record::decode_chunk_key(key)?;
                let queue = match &self.open {
                    Some(j) if *j.queue == *queue => j.queue.clone(),
                    _ => Arc::from(queue),
                };
                let next = Joining {
                    id: id.to_vec(),
                    queue,
                    seq,
                    data: v,
                };
                if let Some(done) = self.open.replace(next) {
                    self.done.push(done.finish());
                }
            }
        }
        Ok(())
    }

    /// The messages, in the order their chunks came.
    pub(crate) fn finish(mut self) -> Vec<StoredMessage> {
        if let Some(done) = self.open.take() {
            self.done.push(done.finish());
        }
        self.done
    }
}

/// A stored message whose chunks are being joined.
struct Joining {
    /// Its key without the chunk number.
    id: Vec<u8>,
    queue: Arc<str>,
    seq: u64,
    data: Vec<u8>,
}

impl Joining {
    fn finish(self) -> StoredMessage {
        StoredMessage {
            queue: self.queue,
            seq: self.seq,
            delivered: false,
            data: Bytes::from(self.data),
        }
    }
}

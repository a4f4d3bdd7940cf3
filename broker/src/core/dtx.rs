//! Distributed transactions (`dtx`), as qpidd runs them: branches named by xid, each with
//! the work of one or more sessions (buffers), ended, prepared durably, committed in one or
//! two phases or rolled back, and rolled back by a timer when they take too long.
//!
//! A branch's publishes wait in its buffers; the messages it accepts stay acquired (nobody
//! else sees them) until the outcome. Prepare writes the whole branch as one store record,
//! so that after a crash it comes back in doubt, its accepted messages still held.
//!
//! Lock order: the branch table, then the broker state; never the other way round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clacks_storage::{PreparedRecord, StoreOp};

use super::broker::{Broker, Held};
use super::error::Error;
use super::message::Message;
use crate::wire::prim::{get_str8, get_vbin8, put_str8, put_vbin8};

/// Seconds a new branch may live before it is rolled back.
pub const DEFAULT_TIMEOUT: u32 = 60;
/// The longest timeout `set-timeout` may ask for.
pub const MAX_TIMEOUT: u32 = 3600;
/// Branches the broker keeps at once: beyond, new ones are refused (memory stays bounded).
pub const MAX_BRANCHES: usize = 10_000;
/// Buffers (session shares of branches) the broker keeps at once.
const MAX_BUFFERS: usize = 4 * MAX_BRANCHES;

fn too_many() -> Error {
    Error::LimitExceeded(format!(
        "{MAX_BRANCHES} transaction branches are open: finish some first"
    ))
}

/// A branch's name: format, global transaction id and branch qualifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xid {
    /// Format identifier.
    pub format: u32,
    /// Global transaction id.
    pub global: Bytes,
    /// Branch qualifier.
    pub branch: Bytes,
}

impl Xid {
    /// The xid as the store keys it.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(6 + self.global.len() + self.branch.len());
        b.put_u32(self.format);
        put_vbin8(&mut b, &self.global);
        put_vbin8(&mut b, &self.branch);
        b.freeze()
    }

    /// Reads what [`Xid::encode`] wrote.
    ///
    /// # Errors
    /// A record that is cut short.
    pub fn decode(mut b: Bytes) -> Result<Xid, Error> {
        let corrupt = || Error::Internal("a stored transaction id is cut short".into());
        if b.remaining() < 4 {
            return Err(corrupt());
        }
        let format = b.get_u32();
        let global = get_vbin8(&mut b).map_err(|_| corrupt())?;
        let branch = get_vbin8(&mut b).map_err(|_| corrupt())?;
        Ok(Xid {
            format,
            global,
            branch,
        })
    }
}

/// The outcome codes qpidd gives (a subset of the spec's `xa-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XaStatus {
    /// Done.
    Ok = 0,
    /// Rolled back instead (a failed or closed session's work was in it).
    RbRollback = 1,
    /// Rolled back because it timed out.
    RbTimeout = 2,
}

/// One session's share of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferId(u64);

/// What a buffer did: messages to publish (with the queues they were routed to) and
/// messages accepted (held acquired until the outcome).
#[derive(Debug, Default)]
struct Work {
    enqueues: Vec<(Vec<String>, Arc<Message>)>,
    accepts: Vec<Held>,
}

#[derive(Debug)]
struct Buffer {
    xid: Xid,
    ended: bool,
    failed: bool,
    work: Work,
}

#[derive(Debug)]
struct Branch {
    buffers: Vec<BufferId>,
    /// Every buffer ended and an outcome asked for: no more joins.
    completed: bool,
    prepared: bool,
    /// Its work is (to be) undone whatever comes.
    rolledback: bool,
    expired: bool,
    timeout: u32,
    deadline: Instant,
}

/// Every branch of the broker.
#[derive(Debug, Default)]
pub struct Branches {
    branches: HashMap<Xid, Branch>,
    buffers: HashMap<BufferId, Buffer>,
    next: u64,
    /// Messages of branches that went away under the table's lock, to be released once
    /// it is let go (releasing takes the broker state lock).
    leftover: Vec<Held>,
}

impl Branches {
    fn new_buffer(&mut self, xid: &Xid) -> BufferId {
        self.next += 1;
        let id = BufferId(self.next);
        self.buffers.insert(
            id,
            Buffer {
                xid: xid.clone(),
                ended: false,
                failed: false,
                work: Work::default(),
            },
        );
        id
    }

    /// Takes a branch's work out of all its buffers, in the order it was done.
    fn take_work(&mut self, xid: &Xid) -> Work {
        let mut all = Work::default();
        let ids = self
            .branches
            .get(xid)
            .map(|b| b.buffers.clone())
            .unwrap_or_default();
        for id in ids {
            if let Some(buf) = self.buffers.get_mut(&id) {
                let w = std::mem::take(&mut buf.work);
                all.enqueues.extend(w.enqueues);
                all.accepts.extend(w.accepts);
            }
        }
        all
    }

    fn remove(&mut self, xid: &Xid) {
        if let Some(b) = self.branches.remove(xid) {
            for id in b.buffers {
                self.buffers.remove(&id);
            }
        }
    }

    /// qpidd's check before an outcome: `Ok(None)` when the branch may go on (every
    /// buffer ended; it is now complete), `Ok(Some(RbTimeout))` when it timed out (and is
    /// gone), an error when it is unknown or not ended.
    fn check(&mut self, xid: &Xid) -> Result<Option<XaStatus>, Error> {
        let b = self
            .branches
            .get(xid)
            .ok_or_else(|| Error::NotFound(format!("unknown transaction branch {xid:?}")))?;
        if b.expired {
            // What it took after timing out (a session still working in it) goes back.
            let work = self.take_work(xid);
            self.leftover.extend(work.accepts);
            self.remove(xid);
            return Ok(Some(XaStatus::RbTimeout));
        }
        if !b.completed {
            let buffers: Vec<&Buffer> = b
                .buffers
                .iter()
                .filter_map(|id| self.buffers.get(id))
                .collect();
            if buffers.iter().any(|buf| !buf.ended) {
                return Err(Error::IllegalState(format!(
                    "transaction branch {xid:?} is not ended"
                )));
            }
            let failed = buffers.iter().any(|buf| buf.failed);
            if let Some(b) = self.branches.get_mut(xid) {
                b.completed = true;
                b.rolledback |= failed;
            }
        }
        Ok(None)
    }
}

/// A prepared branch's work as the store keeps it: the publishes (queues and message) and
/// the accepted messages (queue and position).
fn encode_work(w: &Work) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(u32::try_from(w.enqueues.len()).unwrap_or(u32::MAX));
    for (queues, msg) in &w.enqueues {
        b.put_u16(u16::try_from(queues.len()).unwrap_or(u16::MAX));
        for q in queues {
            put_str8(&mut b, q);
        }
        let data = msg.encode_stored();
        b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        b.put_slice(&data);
    }
    b.put_u32(u32::try_from(w.accepts.len()).unwrap_or(u32::MAX));
    for h in &w.accepts {
        put_str8(&mut b, &h.queue);
        b.put_u64(h.position.seq);
    }
    b.freeze()
}

/// Reads [`encode_work`]: the publishes, and the accepted messages as (queue, sequence).
type StoredWork = (Vec<(Vec<String>, Message)>, Vec<(String, u64)>);

fn decode_work(mut b: Bytes) -> Option<StoredWork> {
    let text = |b: &mut Bytes| get_str8(b).ok();
    let mut enqueues = Vec::new();
    let n = read_u32(&mut b)?;
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        let nq = b.get_u16();
        let mut queues = Vec::new();
        for _ in 0..nq {
            queues.push(text(&mut b)?);
        }
        let len = read_u32(&mut b)? as usize;
        if b.remaining() < len {
            return None;
        }
        let msg = Message::decode_stored(&b.split_to(len)).ok()?;
        enqueues.push((queues, msg));
    }
    let mut accepts = Vec::new();
    let n = read_u32(&mut b)?;
    for _ in 0..n {
        let q = text(&mut b)?;
        if b.remaining() < 8 {
            return None;
        }
        accepts.push((q, b.get_u64()));
    }
    Some((enqueues, accepts))
}

fn read_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

impl Broker {
    fn branches(&self) -> std::sync::MutexGuard<'_, Branches> {
        self.dtx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets go of the branch table, then releases what branches left behind.
    fn unlock(&self, mut d: std::sync::MutexGuard<'_, Branches>) {
        let left = std::mem::take(&mut d.leftover);
        drop(d);
        if !left.is_empty() {
            self.release(&left, true);
        }
    }

    /// `dtx.start` without join or resume: a new branch and this session's buffer in it.
    ///
    /// # Errors
    /// 530 when the branch exists.
    pub fn dtx_start(&self, xid: &Xid, now: Instant) -> Result<BufferId, Error> {
        let mut d = self.branches();
        if d.branches.contains_key(xid) {
            return Err(Error::NotAllowed(format!(
                "transaction branch {xid:?} is already known"
            )));
        }
        if d.branches.len() >= MAX_BRANCHES || d.buffers.len() >= MAX_BUFFERS {
            return Err(too_many());
        }
        let id = d.new_buffer(xid);
        d.branches.insert(
            xid.clone(),
            Branch {
                buffers: vec![id],
                completed: false,
                prepared: false,
                rolledback: false,
                expired: false,
                timeout: DEFAULT_TIMEOUT,
                deadline: now + Duration::from_secs(u64::from(DEFAULT_TIMEOUT)),
            },
        );
        Ok(id)
    }

    /// `dtx.start` with join: another buffer in an existing branch; `Err(RbTimeout)`-like
    /// outcomes come back as `Ok(Err(status))`.
    ///
    /// # Errors
    /// 404 for an unknown branch, 503 when its outcome is already under way.
    pub fn dtx_join(&self, xid: &Xid) -> Result<Result<BufferId, XaStatus>, Error> {
        let mut d = self.branches();
        let b = d
            .branches
            .get(xid)
            .ok_or_else(|| Error::NotFound(format!("unknown transaction branch {xid:?}")))?;
        if b.expired {
            return Ok(Err(XaStatus::RbTimeout));
        }
        if b.completed {
            return Err(Error::CommandInvalid(format!(
                "transaction branch {xid:?} can no longer be joined"
            )));
        }
        if d.buffers.len() >= MAX_BUFFERS {
            return Err(too_many());
        }
        let id = d.new_buffer(xid);
        if let Some(b) = d.branches.get_mut(xid) {
            b.buffers.push(id);
        }
        Ok(Ok(id))
    }

    /// Whether a suspended buffer may be resumed (`Ok`) or its branch timed out.
    pub fn dtx_resume(&self, buffer: BufferId) -> XaStatus {
        if self.dtx_expired(buffer) {
            XaStatus::RbTimeout
        } else {
            XaStatus::Ok
        }
    }

    fn dtx_expired(&self, buffer: BufferId) -> bool {
        let d = self.branches();
        d.buffers
            .get(&buffer)
            .and_then(|b| d.branches.get(&b.xid))
            .is_none_or(|br| br.expired)
    }

    /// `dtx.end` of a session's buffer: plain (ended), `fail` (its work undone now, the
    /// branch bound to roll back) or `suspend` (kept for a later resume).
    pub fn dtx_end(&self, buffer: BufferId, fail: bool, suspend: bool) -> XaStatus {
        if self.dtx_expired(buffer) {
            return XaStatus::RbTimeout;
        }
        if fail {
            self.dtx_fail(buffer);
            return XaStatus::RbRollback;
        }
        if !suspend {
            if let Some(b) = self.branches().buffers.get_mut(&buffer) {
                b.ended = true;
            }
        }
        XaStatus::Ok
    }

    /// Undoes a buffer's work now and marks it ended and failed (end with fail, or the
    /// session closed while associated): its branch can only roll back.
    pub fn dtx_fail(&self, buffer: BufferId) {
        let work = {
            let mut d = self.branches();
            let Some(b) = d.buffers.get_mut(&buffer) else {
                return;
            };
            b.ended = true;
            b.failed = true;
            std::mem::take(&mut b.work)
        };
        self.release(&work.accepts, true);
    }

    /// A message published in a buffer: routed now, enqueued at commit.
    pub fn dtx_enqueue(&self, buffer: BufferId, queues: Vec<String>, msg: Arc<Message>) {
        let mut d = self.branches();
        let live = d
            .buffers
            .get(&buffer)
            .and_then(|b| d.branches.get(&b.xid))
            .is_some_and(|br| !br.expired);
        // A timed-out branch's publishes are dropped, as its rollback would drop them.
        if let (true, Some(b)) = (live, d.buffers.get_mut(&buffer)) {
            b.work.enqueues.push((queues, msg));
        }
    }

    /// Messages accepted in a buffer: they stay acquired until the outcome. Returns those
    /// the buffer did not take (its branch is gone), for the caller to settle as usual.
    pub fn dtx_accept(&self, buffer: BufferId, held: Vec<Held>) -> Vec<Held> {
        let mut d = self.branches();
        let Some(b) = d.buffers.get(&buffer) else {
            return held;
        };
        if d.branches.get(&b.xid).is_none_or(|br| br.expired) {
            // The branch timed out: what its session accepts now is rolled back too.
            d.leftover.extend(held);
            self.unlock(d);
            return Vec::new();
        }
        if let Some(b) = d.buffers.get_mut(&buffer) {
            b.work.accepts.extend(held);
        }
        Vec::new()
    }

    /// `dtx.prepare`: the branch's work is written to the store as one record (the caller
    /// completes the command once it is durable).
    ///
    /// # Errors
    /// 404 unknown, 409 not ended.
    pub fn dtx_prepare(&self, xid: &Xid) -> Result<XaStatus, Error> {
        let mut d = self.branches();
        if let Some(status) = d.check(xid)? {
            self.unlock(d);
            return Ok(status);
        }
        let rolledback = d.branches.get(xid).is_some_and(|b| b.rolledback);
        if rolledback {
            // Kept, so that a rollback (or a commit, refused) still finds it.
            let work = d.take_work(xid);
            drop(d);
            self.release(&work.accepts, true);
            return Ok(XaStatus::RbRollback);
        }
        let ids = d
            .branches
            .get(xid)
            .map(|b| b.buffers.clone())
            .unwrap_or_default();
        let mut all = Work::default();
        for id in &ids {
            if let Some(buf) = d.buffers.get(id) {
                all.enqueues.extend(buf.work.enqueues.iter().cloned());
                all.accepts.extend(buf.work.accepts.iter().cloned());
            }
        }
        let st = self.lock();
        st.record(StoreOp::PutPrepared(PreparedRecord {
            xid: xid.encode(),
            data: encode_work(&all),
        }));
        drop(st);
        if let Some(b) = d.branches.get_mut(xid) {
            b.prepared = true;
        }
        Ok(XaStatus::Ok)
    }

    /// `dtx.commit`, in one phase (not prepared) or two (prepared).
    ///
    /// # Errors
    /// 404 unknown, 409 not ended or the wrong phase, 506 when a queue is full.
    pub fn dtx_commit(&self, xid: &Xid, one_phase: bool) -> Result<XaStatus, Error> {
        let mut d = self.branches();
        if let Some(status) = d.check(xid)? {
            self.unlock(d);
            return Ok(status);
        }
        let (prepared, rolledback) = d
            .branches
            .get(xid)
            .map_or((false, false), |b| (b.prepared, b.rolledback));
        if rolledback {
            let work = d.take_work(xid);
            d.remove(xid);
            drop(d);
            self.release(&work.accepts, true);
            return Ok(XaStatus::RbRollback);
        }
        if prepared && one_phase {
            return Err(Error::IllegalState(format!(
                "transaction branch {xid:?} is prepared: commit it in two phases"
            )));
        }
        if !prepared && !one_phase {
            return Err(Error::IllegalState(format!(
                "transaction branch {xid:?} is not prepared: commit it in one phase"
            )));
        }
        let work = d.take_work(xid);
        d.remove(xid);
        drop(d);
        let done = prepared.then(|| StoreOp::DeletePrepared(xid.encode()));
        self.commit_work(work.enqueues, &work.accepts, done)?;
        Ok(XaStatus::Ok)
    }

    /// `dtx.rollback`.
    ///
    /// # Errors
    /// 404 unknown, 409 not ended.
    pub fn dtx_rollback(&self, xid: &Xid) -> Result<XaStatus, Error> {
        let mut d = self.branches();
        if let Some(status) = d.check(xid)? {
            self.unlock(d);
            return Ok(status);
        }
        let prepared = d.branches.get(xid).is_some_and(|b| b.prepared);
        let work = d.take_work(xid);
        d.remove(xid);
        drop(d);
        if prepared {
            self.lock().record(StoreOp::DeletePrepared(xid.encode()));
        }
        self.release(&work.accepts, true);
        Ok(XaStatus::Ok)
    }

    /// `dtx.get-timeout`: seconds.
    ///
    /// # Errors
    /// 404 unknown.
    pub fn dtx_get_timeout(&self, xid: &Xid) -> Result<u32, Error> {
        self.branches()
            .branches
            .get(xid)
            .map(|b| b.timeout)
            .ok_or_else(|| Error::NotFound(format!("unknown transaction branch {xid:?}")))
    }

    /// `dtx.set-timeout`: the branch now has `secs` from `now` (the same value again
    /// leaves its timer running).
    ///
    /// # Errors
    /// 542 above [`MAX_TIMEOUT`], 404 unknown.
    pub fn dtx_set_timeout(&self, xid: &Xid, secs: u32, now: Instant) -> Result<(), Error> {
        if secs > MAX_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "transaction timeout {secs} s is above the maximum of {MAX_TIMEOUT} s"
            )));
        }
        let mut d = self.branches();
        let b = d
            .branches
            .get_mut(xid)
            .ok_or_else(|| Error::NotFound(format!("unknown transaction branch {xid:?}")))?;
        if b.timeout != secs {
            b.timeout = secs;
            b.deadline = now + Duration::from_secs(u64::from(secs));
        }
        Ok(())
    }

    /// `dtx.recover`: the branches prepared and not yet finished.
    pub fn dtx_in_doubt(&self) -> Vec<Xid> {
        let d = self.branches();
        let mut out: Vec<Xid> = d
            .branches
            .iter()
            .filter(|(_, b)| b.prepared && !b.rolledback && !b.expired)
            .map(|(x, _)| x.clone())
            .collect();
        out.sort();
        out
    }

    /// Rolls back the branches whose time ran out (their record stays, answering
    /// `xa-rbtimeout` to what comes next).
    pub(super) fn dtx_expire(&self, now: Instant) {
        let mut released = Vec::new();
        let mut done = Vec::new();
        {
            let mut d = self.branches();
            let due: Vec<Xid> = d
                .branches
                .iter()
                .filter(|(_, b)| !b.expired && b.deadline <= now)
                .map(|(x, _)| x.clone())
                .collect();
            for xid in due {
                let work = d.take_work(&xid);
                released.extend(work.accepts);
                if let Some(b) = d.branches.get_mut(&xid) {
                    b.expired = true;
                    b.rolledback = true;
                    if std::mem::take(&mut b.prepared) {
                        done.push(StoreOp::DeletePrepared(xid.encode()));
                    }
                }
                tracing::info!(?xid, "transaction branch timed out and was rolled back");
            }
        }
        if !done.is_empty() {
            let st = self.lock();
            for op in done {
                st.record(op);
            }
        }
        if !released.is_empty() {
            self.release(&released, true);
        }
    }

    /// Rebuilds prepared branches from the store, in doubt, their accepted messages held
    /// again. Called while the broker is built, before anyone connects.
    pub(super) fn dtx_restore(&self, records: Vec<PreparedRecord>, now: Instant) {
        for r in records {
            let (xid, work) = match (Xid::decode(r.xid.clone()), decode_work(r.data.clone())) {
                (Ok(x), Some(w)) => (x, w),
                _ => {
                    tracing::error!(
                        "a prepared transaction branch could not be read; left in the store"
                    );
                    continue;
                }
            };
            let (enqueues, accepts) = work;
            let held = self.hold_recovered(&accepts);
            let mut d = self.branches();
            let id = d.new_buffer(&xid);
            if let Some(b) = d.buffers.get_mut(&id) {
                b.ended = true;
                b.work = Work {
                    enqueues: enqueues
                        .into_iter()
                        .map(|(q, m)| (q, Arc::new(m)))
                        .collect(),
                    accepts: held,
                };
            }
            d.branches.insert(
                xid.clone(),
                Branch {
                    buffers: vec![id],
                    completed: true,
                    prepared: true,
                    rolledback: false,
                    expired: false,
                    timeout: DEFAULT_TIMEOUT,
                    deadline: now + Duration::from_secs(u64::from(DEFAULT_TIMEOUT)),
                },
            );
            tracing::info!(?xid, "prepared transaction branch recovered, in doubt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(g: &str) -> Xid {
        Xid {
            format: 0,
            global: Bytes::copy_from_slice(g.as_bytes()),
            branch: Bytes::from_static(b"b1"),
        }
    }

    #[test]
    fn xids_and_work_read_back() {
        let x = xid("gtrid");
        assert_eq!(Xid::decode(x.encode()).expect("xid"), x);
        let w = Work {
            enqueues: vec![(
                vec!["a".into(), "b".into()],
                Arc::new(Message::new("k", "m")),
            )],
            accepts: vec![],
        };
        let (enq, acc) = decode_work(encode_work(&w)).expect("work");
        assert_eq!(enq[0].0, ["a", "b"]);
        assert_eq!(enq[0].1.body, Bytes::from_static(b"m"));
        assert!(acc.is_empty());
        assert!(decode_work(Bytes::from_static(b"\0\0\0\x05")).is_none());
    }

    #[test]
    fn the_outcome_follows_qpidd() {
        let b = Broker::new();
        let now = Instant::now();
        let x = xid("one");
        let buf = b.dtx_start(&x, now).expect("start");
        assert!(matches!(b.dtx_start(&x, now), Err(Error::NotAllowed(_))));
        assert!(matches!(b.dtx_prepare(&x), Err(Error::IllegalState(_))));
        assert_eq!(b.dtx_end(buf, false, false), XaStatus::Ok);
        assert!(matches!(
            b.dtx_commit(&x, false),
            Err(Error::IllegalState(_))
        ));
        assert_eq!(b.dtx_prepare(&x).expect("prepare"), XaStatus::Ok);
        assert_eq!(b.dtx_in_doubt(), vec![x.clone()]);
        assert!(matches!(b.dtx_join(&x), Err(Error::CommandInvalid(_))));
        assert!(matches!(
            b.dtx_commit(&x, true),
            Err(Error::IllegalState(_))
        ));
        assert_eq!(b.dtx_commit(&x, false).expect("commit"), XaStatus::Ok);
        assert!(matches!(b.dtx_rollback(&x), Err(Error::NotFound(_))));

        let y = xid("two");
        let buf = b.dtx_start(&y, now).expect("start");
        assert_eq!(b.dtx_end(buf, true, false), XaStatus::RbRollback);
        assert_eq!(b.dtx_prepare(&y).expect("prepare"), XaStatus::RbRollback);
        assert_eq!(b.dtx_rollback(&y).expect("rollback"), XaStatus::Ok);

        let z = xid("three");
        b.dtx_start(&z, now).expect("start");
        b.dtx_set_timeout(&z, 1, now).expect("timeout");
        assert!(b.dtx_set_timeout(&z, MAX_TIMEOUT + 1, now).is_err());
        b.dtx_expire(now + Duration::from_secs(2));
        assert_eq!(b.dtx_rollback(&z).expect("rollback"), XaStatus::RbTimeout);
        assert!(matches!(b.dtx_get_timeout(&z), Err(Error::NotFound(_))));
    }
}

//! The on-disk layout: keys and values of every record. Version 1.
//!
//! One ordered key space, each record kind under its own first byte, so that a batch over
//! several kinds is one atomic write:
//!
//! | key | value |
//! |---|---|
//! | `E` name | `1`, kind (u16 len), alternate (u8 flag, u16 len), auto-delete u8, args |
//! | `Q` name | `1`, alternate (u8 flag, u16 len), auto-delete u8, args |
//! | `B` len exchange, len queue, key | `1`, args |
//! | `G` len source, len destination, key | `1`, args (a binding between exchanges) |
//! | `M` len queue, seq u64, chunk u32 | a slice of the message (32 KiB at most) |
//! | `D` len queue, seq u64 | empty: the message was delivered |
//! | `U` name | `1`, the user's credentials as the broker encodes them |
//! | `F` `L`/`R` name | `1`, a federation link or route as the broker encodes it |
//! | `X` xid | `1`, a prepared transaction branch's work as the broker encodes it |
//!
//! Names are at most 255 bytes (0-10 `str8`), so one length byte prefixes them. Messages are
//! cut into chunks so that sled never moves a value into its separate blob files.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    BindingRecord, ExchangeBindingRecord, ExchangeRecord, FederationKind, FederationRecord,
    QueueRecord, StoreError, UserRecord,
};

/// Largest value written for one message chunk.
pub(crate) const CHUNK: usize = 32 * 1024;
const VERSION: u8 = 1;

pub(crate) const EXCHANGE: u8 = b'E';
pub(crate) const QUEUE: u8 = b'Q';
pub(crate) const BINDING: u8 = b'B';
pub(crate) const EXCHANGE_BINDING: u8 = b'G';
pub(crate) const MESSAGE: u8 = b'M';
pub(crate) const DELIVERED: u8 = b'D';
pub(crate) const USER: u8 = b'U';
pub(crate) const FEDERATION: u8 = b'F';
pub(crate) const PREPARED: u8 = b'X';

pub(crate) fn prepared_key(xid: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(xid.len() + 1);
    k.push(PREPARED);
    k.extend_from_slice(xid);
    k
}

pub(crate) fn prepared_value(r: &crate::PreparedRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(r.data.len() + 1);
    v.push(VERSION);
    v.extend_from_slice(&r.data);
    v
}

pub(crate) fn decode_prepared(
    key: &[u8],
    value: &[u8],
) -> Result<crate::PreparedRecord, StoreError> {
    match value.split_first() {
        Some((&VERSION, data)) => Ok(crate::PreparedRecord {
            xid: Bytes::copy_from_slice(key),
            data: Bytes::copy_from_slice(data),
        }),
        _ => Err(StoreError::Corrupt(
            "prepared branch of unknown version".into(),
        )),
    }
}

pub(crate) fn federation_key(kind: FederationKind, name: &str) -> Vec<u8> {
    let mut k = vec![FEDERATION, federation_kind_byte(kind)];
    k.extend_from_slice(name.as_bytes());
    k
}

fn federation_kind_byte(kind: FederationKind) -> u8 {
    match kind {
        FederationKind::Link => b'L',
        FederationKind::Route => b'R',
    }
}

/// The kind [`federation_kind_byte`] wrote.
fn federation_kind(byte: u8) -> Option<FederationKind> {
    match byte {
        b'L' => Some(FederationKind::Link),
        b'R' => Some(FederationKind::Route),
        _ => None,
    }
}

/// A value of this layout version: the version byte, then `data`.
fn versioned(data: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(data);
    v
}

/// The payload of a value written by [`versioned`]; `what` names the record in the error.
fn unversioned<'a>(what: &str, value: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match value.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        _ => Err(StoreError::Corrupt(format!("{what} of unknown version"))),
    }
}

pub(crate) fn federation_value(r: &FederationRecord) -> Vec<u8> {
    versioned(&r.data)
}

pub(crate) fn decode_federation(key: &[u8], value: &[u8]) -> Result<FederationRecord, StoreError> {
    let kind = key
        .first()
        .and_then(|b| federation_kind(*b))
        .ok_or_else(|| StoreError::Corrupt("federation record of unknown kind".into()))?;
    let name = String::from_utf8(key[1..].to_vec())
        .map_err(|_| StoreError::Corrupt("federation name is not utf-8".into()))?;
    let data = unversioned(&format!("federation record {name}"), value)?;
    Ok(FederationRecord {
        kind,
        name,
        data: Bytes::copy_from_slice(data),
    })
}

fn put_name(k: &mut Vec<u8>, name: &str) {
    let b = &name.as_bytes()[..name.len().min(255)];
    k.push(b.len() as u8);
    k.extend_from_slice(b);
}

pub(crate) fn exchange_key(name: &str) -> Vec<u8> {
    let mut k = vec![EXCHANGE];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn user_key(name: &str) -> Vec<u8> {
    let mut k = vec![USER];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn user_value(r: &UserRecord) -> Vec<u8> {
    versioned(&r.credentials)
}

pub(crate) fn decode_user(key: &[u8], value: &[u8]) -> Result<UserRecord, StoreError> {
    let name = String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::Corrupt("user name is not utf-8".into()))?;
    let credentials = unversioned(&format!("user record {name}"), value)?;
    Ok(UserRecord {
        name,
        credentials: Bytes::copy_from_slice(credentials),
    })
}

pub(crate) fn queue_key(name: &str) -> Vec<u8> {
    let mut k = vec![QUEUE];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn binding_key(exchange: &str, queue: &str, key: &str) -> Vec<u8> {
    pair_key(BINDING, exchange, queue, key)
}

pub(crate) fn exchange_binding_key(source: &str, destination: &str, key: &str) -> Vec<u8> {
    pair_key(EXCHANGE_BINDING, source, destination, key)
}

fn pair_key(kind: u8, from: &str, to: &str, key: &str) -> Vec<u8> {
    let mut k = vec![kind];
    put_name(&mut k, from);
    put_name(&mut k, to);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Prefix of every chunk of every message of `queue` (and, with `seq`, of one message).
pub(crate) fn message_prefix(queue: &str, seq: Option<u64>) -> Vec<u8> {
    let mut k = vec![MESSAGE];
    put_name(&mut k, queue);
    if let Some(s) = seq {
        k.extend_from_slice(&s.to_be_bytes());
    }
    k
}

pub(crate) fn chunk_key(queue: &str, seq: u64, chunk: u32) -> Vec<u8> {
    let mut k = message_prefix(queue, Some(seq));
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

pub(crate) fn delivered_prefix(queue: &str, seq: Option<u64>) -> Vec<u8> {
    let mut k = vec![DELIVERED];
    put_name(&mut k, queue);
    if let Some(s) = seq {
        k.extend_from_slice(&s.to_be_bytes());
    }
    k
}

fn put_str16(v: &mut BytesMut, s: &str) {
    v.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    v.put_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

fn put_opt(v: &mut BytesMut, s: &Option<String>) {
    match s {
        Some(s) => {
            v.put_u8(1);
            put_str16(v, s);
        }
        None => v.put_u8(0),
    }
}

pub(crate) fn exchange_value(r: &ExchangeRecord) -> Vec<u8> {
    let mut v = BytesMut::new();
    v.put_u8(VERSION);
    put_str16(&mut v, &r.kind);
    put_opt(&mut v, &r.alternate);
    v.put_u8(u8::from(r.auto_delete));
    v.put_slice(&r.args);
    v.to_vec()
}

pub(crate) fn queue_value(r: &QueueRecord) -> Vec<u8> {
    let mut v = BytesMut::new();
    v.put_u8(VERSION);
    put_opt(&mut v, &r.alternate);
    v.put_u8(u8::from(r.auto_delete));
    v.put_slice(&r.args);
    v.to_vec()
}

pub(crate) fn binding_value(args: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(args);
    v
}

/// Reads values written above; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("record truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn str16(&mut self) -> Result<String, StoreError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| StoreError::Corrupt("name is not utf-8".into()))
    }
    fn opt(&mut self) -> Result<Option<String>, StoreError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.str16()?),
        })
    }
    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        }
    }
    fn rest(self) -> Bytes {
        Bytes::copy_from_slice(self.0)
    }
}

fn utf8(b: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(b.to_vec()).map_err(|_| StoreError::Corrupt("name is not utf-8".into()))
}

/// Splits `len, name` off the front of a key suffix.
fn take_name(k: &[u8]) -> Result<(String, &[u8]), StoreError> {
    let (&len, rest) = k
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("empty key".into()))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(StoreError::Corrupt("key truncated".into()));
    }
    Ok((utf8(&rest[..len])?, &rest[len..]))
}

pub(crate) fn decode_exchange(key: &[u8], value: &[u8]) -> Result<ExchangeRecord, StoreError> {
    let mut r = Reader(value);
    r.version()?;
    Ok(ExchangeRecord {
        name: utf8(key)?,
        kind: r.str16()?,
        alternate: r.opt()?,
        auto_delete: r.u8()? != 0,
        args: r.rest(),
    })
}

pub(crate) fn decode_queue(key: &[u8], value: &[u8]) -> Result<QueueRecord, StoreError> {
    let mut r = Reader(value);
    r.version()?;
    Ok(QueueRecord {
        name: utf8(key)?,
        alternate: r.opt()?,
        auto_delete: r.u8()? != 0,
        args: r.rest(),
    })
}

pub(crate) fn decode_binding(key: &[u8], value: &[u8]) -> Result<BindingRecord, StoreError> {
    let (exchange, rest) = take_name(key)?;
    let (queue, rest) = take_name(rest)?;
    let mut r = Reader(value);
    r.version()?;
    Ok(BindingRecord {
        exchange,
        queue,
        key: utf8(rest)?,
        args: r.rest(),
    })
}

pub(crate) fn decode_exchange_binding(
    key: &[u8],
    value: &[u8],
) -> Result<ExchangeBindingRecord, StoreError> {
    let b = decode_binding(key, value)?;
    Ok(ExchangeBindingRecord {
        source: b.exchange,
        destination: b.queue,
        key: b.key,
        args: b.args,
    })
}

/// Queue, seq and chunk of a message chunk key (after the kind byte).
pub(crate) fn decode_chunk_key(key: &[u8]) -> Result<(String, u64, u32), StoreError> {
    let (queue, rest) = take_name(key)?;
    if rest.len() != 12 {
        return Err(StoreError::Corrupt("message key of wrong length".into()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[..8]);
    let mut chunk = [0u8; 4];
    chunk.copy_from_slice(&rest[8..]);
    Ok((queue, u64::from_be_bytes(seq), u32::from_be_bytes(chunk)))
}

/// Queue and seq of a delivered mark (after the kind byte).
pub(crate) fn decode_delivered_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let (queue, rest) = take_name(key)?;
    let seq: [u8; 8] = rest
        .try_into()
        .map_err(|_| StoreError::Corrupt("delivered key of wrong length".into()))?;
    Ok((queue, u64::from_be_bytes(seq)))
}

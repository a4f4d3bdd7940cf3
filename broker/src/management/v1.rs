//! QMF version 1's binary forms of objects, method arguments and object ids, for the old
//! consoles that ask for objects (`G`) and call methods (`M`) in version 1.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use crate::wire::prim::{put_map, put_str16, put_str8};
use crate::wire::{FieldTable, Value};

use super::codec::{Malformed, V1Reader};
use super::objects::Object;
use super::schema::{Method, Type, PACKAGE};

/// The broker bank of this broker's objects in version 1 ids (qpidd's is 1).
const BROKER_BANK: u64 = 1;

/// Version 1 object ids: a number per object name, stable while the agent runs.
#[derive(Debug, Default)]
pub struct Ids {
    by_name: HashMap<String, u64>,
    by_number: HashMap<u64, String>,
    next: u64,
}

impl Ids {
    /// The id of the object named `name`, as its two 64-bit halves.
    pub fn id(&mut self, name: &str) -> (u64, u64) {
        let n = match self.by_name.get(name) {
            Some(n) => *n,
            None => {
                self.next += 1;
                self.by_name.insert(name.to_string(), self.next);
                self.by_number.insert(self.next, name.to_string());
                self.next
            }
        };
        (BROKER_BANK << 28, n)
    }

    /// The object name an id stands for.
    pub fn name(&self, first: u64, second: u64) -> Option<&str> {
        if (first >> 28) & 0xf_ffff != BROKER_BANK {
            return None;
        }
        self.by_number.get(&second).map(String::as_str)
    }
}

/// Writes one value as version 1 writes `kind`.
fn put_value(out: &mut BytesMut, kind: Type, v: Option<&Value>, ids: &mut Ids) {
    let int = || {
        v.and_then(Value::as_i64)
            .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    };
    match kind {
        Type::U8 => out.put_u8(u8::try_from(int()).unwrap_or(u8::MAX)),
        Type::U16 => out.put_u16(u16::try_from(int()).unwrap_or(u16::MAX)),
        Type::U32 => out.put_u32(u32::try_from(int()).unwrap_or(u32::MAX)),
        Type::U64 | Type::AbsTime | Type::DeltaTime => {
            let n = match v {
                Some(Value::Uint64(n)) => *n,
                _ => int(),
            };
            out.put_u64(n);
        }
        Type::Sstr => put_str8(out, v.and_then(Value::as_str).unwrap_or_default()),
        Type::Lstr => put_str16(out, v.and_then(Value::as_str).unwrap_or_default()),
        Type::Bool => out.put_u8(u8::from(int() != 0)),
        Type::Uuid => match v {
            Some(Value::Uuid(u)) => out.put_slice(&u.0),
            _ => out.put_slice(&[0; 16]),
        },
        Type::Map => match v {
            Some(Value::Map(m)) => put_map(out, m),
            _ => put_map(out, &FieldTable::new()),
        },
        Type::Ref => {
            let name = match v {
                Some(Value::Map(m)) => m.get("_object_name").and_then(Value::as_str),
                _ => None,
            };
            let (first, second) = name.map_or((0, 0), |n| ids.id(n));
            out.put_u64(first);
            out.put_u64(second);
        }
    }
}

/// Writes an object as a version 1 `g` record's body: class key, timestamps, id, presence
/// bits of the optional properties, properties, statistics.
pub fn encode_object(out: &mut BytesMut, o: &Object, now: u64, ids: &mut Ids) {
    let class = o.class;
    class.encode_key(out);
    out.put_u64(now);
    out.put_u64(o.created);
    out.put_u64(0);
    let (first, second) = ids.id(&o.name());
    out.put_u64(first);
    out.put_u64(second);
    let mut mask = 0u8;
    let mut bit = 0;
    for p in class.properties.iter().filter(|p| p.optional) {
        if o.values.get(p.name).is_some() {
            mask |= 1 << bit;
        }
        bit += 1;
        if bit == 8 {
            out.put_u8(mask);
            (mask, bit) = (0, 0);
        }
    }
    if bit > 0 {
        out.put_u8(mask);
    }
    for p in &class.properties {
        let v = o.values.get(p.name);
        if p.optional && v.is_none() {
            continue;
        }
        put_value(out, p.kind, v, ids);
    }
    for s in &class.statistics {
        put_value(out, s.kind, o.values.get(s.name), ids);
    }
}

/// Reads a method's input arguments as version 1 sends them, in schema order.
///
/// # Errors
/// When the record is cut short or malformed.
pub fn read_args(r: &mut V1Reader, m: &Method, ids: &Ids) -> Result<FieldTable, Malformed> {
    let mut out = FieldTable::new();
    for a in m.args.iter().filter(|a| a.dir.contains('I')) {
        let v = match a.kind {
            Type::U8 | Type::Bool => Value::Int64(i64::from(r.bytes(1)?[0])),
            Type::U16 => {
                let b = r.bytes(2)?;
                Value::Int64(i64::from(u16::from_be_bytes([b[0], b[1]])))
            }
            Type::U32 => {
                let b = r.bytes(4)?;
                Value::Int64(i64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            Type::U64 | Type::AbsTime | Type::DeltaTime => {
                let b = r.bytes(8)?;
                let mut a8 = [0u8; 8];
                a8.copy_from_slice(&b);
                Value::Int64(i64::try_from(u64::from_be_bytes(a8)).map_err(|_| Malformed)?)
            }
            Type::Sstr => Value::Str16(r.str8()?),
            Type::Lstr => Value::Str16(r.str16()?),
            Type::Uuid => {
                let b = r.bytes(16)?;
                let mut u = [0u8; 16];
                u.copy_from_slice(&b);
                Value::Uuid(crate::wire::Uuid(u))
            }
            Type::Map => Value::Map(r.map()?),
            Type::Ref => {
                let b = r.bytes(16)?;
                let first = u64::from_be_bytes(b[..8].try_into().map_err(|_| Malformed)?);
                let second = u64::from_be_bytes(b[8..].try_into().map_err(|_| Malformed)?);
                let mut m = FieldTable::new();
                if let Some(name) = ids.name(first, second) {
                    m.insert("_object_name", name);
                }
                Value::Map(m)
            }
        };
        out.insert(a.name, v);
    }
    Ok(out)
}

/// Writes a method's output arguments (`O` and `IO`) in schema order.
pub fn encode_out_args(out: &mut BytesMut, m: &Method, values: &FieldTable, ids: &mut Ids) {
    for a in m.args.iter().filter(|a| a.dir.contains('O')) {
        put_value(out, a.kind, values.get(a.name), ids);
    }
}

/// The class key of a version 1 request names our package.
pub fn is_ours(package: &str) -> bool {
    package == PACKAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_map_back() {
        let mut ids = Ids::default();
        let a = ids.id("org.apache.qpid.broker:queue:a");
        let b = ids.id("org.apache.qpid.broker:queue:b");
        assert_ne!(a, b);
        assert_eq!(ids.id("org.apache.qpid.broker:queue:a"), a);
        assert_eq!(ids.name(a.0, a.1), Some("org.apache.qpid.broker:queue:a"));
        assert_eq!(ids.name(0, a.1), None);
    }
}

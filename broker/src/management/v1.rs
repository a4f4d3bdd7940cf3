//! QMF version 1: the schema exchange every `qmf.console` performs first (`B`, `P`, `Q`,
//! `S`), and for old consoles objects (`G`) and method calls (`M`) in version 1's binary
//! forms, with version 1 object ids.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::{Action, ObjectKind};
use crate::wire::prim::{put_map, put_str16, put_str8};
use crate::wire::{FieldTable, Value};

use super::agent::{Agent, Caller};
use super::codec::{v1_header, v1_message, Malformed, ReplyAddress, V1Reader};
use super::methods::{MethodError, Status};
use super::objects::{now_ns, Object};
use super::schema::{Method, Schema, Type, PACKAGE};

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

impl Agent {
    /// Answers version 1 requests, one reply message per record (old consoles read only
    /// the first record they do not understand in a message).
    pub(super) async fn handle_v1(&mut self, reply: &ReplyAddress, body: Bytes, caller: &Caller) {
        let mut r = V1Reader::new(body);
        let mut out: Vec<BytesMut> = Vec::new();
        while let Some((opcode, seq)) = r.next_header() {
            let ok = match opcode {
                b'B' => {
                    let mut rec = record(b'b', seq);
                    rec.put_slice(&self.ctx.facts.system_id.0);
                    out.push(rec);
                    true
                }
                b'P' => {
                    let mut rec = record(b'p', seq);
                    put_str8(&mut rec, PACKAGE);
                    out.push(rec);
                    out.push(complete(seq, 0, "OK"));
                    true
                }
                b'Q' => match r.str8() {
                    Ok(package) => {
                        if package == PACKAGE {
                            for c in Schema::get().classes() {
                                let mut rec = record(b'q', seq);
                                rec.put_u8(c.kind as u8);
                                c.encode_key(&mut rec);
                                out.push(rec);
                            }
                        }
                        out.push(complete(seq, 0, "OK"));
                        true
                    }
                    Err(_) => false,
                },
                b'S' => self.v1_schema(&mut r, &mut out, seq),
                b'G' => self.v1_get(&mut r, &mut out, seq, caller),
                b'M' => self.v1_method(&mut r, &mut out, seq, caller).await,
                other => {
                    tracing::debug!(opcode = %char::from(other), "unsupported QMF v1 request");
                    out.push(complete(seq, 1, "unsupported request"));
                    // Whatever follows an unknown record cannot be read.
                    false
                }
            };
            if !ok {
                break;
            }
        }
        for rec in out {
            self.publish(&reply.exchange, v1_message(&reply.key, rec.freeze()));
        }
    }

    /// `S`: the schema of one class.
    fn v1_schema(&self, r: &mut V1Reader, out: &mut Vec<BytesMut>, seq: u32) -> bool {
        let (Ok(package), Ok(class), Ok(_hash)) = (r.str8(), r.str8(), r.bytes(16)) else {
            return false;
        };
        match Schema::get().class(&class).filter(|_| is_ours(&package)) {
            Some(c) => {
                let mut rec = record(b's', seq);
                c.encode_schema(&mut rec);
                out.push(rec);
            }
            None => out.push(complete(seq, 1, "unknown class")),
        }
        true
    }

    /// `G`: the objects of a class, in version 1's binary form.
    fn v1_get(
        &mut self,
        r: &mut V1Reader,
        out: &mut Vec<BytesMut>,
        seq: u32,
        caller: &Caller,
    ) -> bool {
        let Ok(query) = r.map() else {
            return false;
        };
        let class = query
            .get("_class")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !class.is_empty() && self.allowed(caller, Action::Access, ObjectKind::Query, &class) {
            let now = now_ns();
            for o in self.objects(Some(&class)) {
                let mut rec = record(b'g', seq);
                encode_object(&mut rec, &o, now, &mut self.v1_ids);
                out.push(rec);
            }
        }
        out.push(complete(seq, 0, "OK"));
        true
    }

    /// `M`: a method call on an object named by its version 1 id.
    async fn v1_method(
        &mut self,
        r: &mut V1Reader,
        out: &mut Vec<BytesMut>,
        seq: u32,
        caller: &Caller,
    ) -> bool {
        let (Ok(id), Ok(_package), Ok(class), Ok(_hash), Ok(method)) =
            (r.bytes(16), r.str8(), r.str8(), r.bytes(16), r.str8())
        else {
            return false;
        };
        let first = u64::from_be_bytes(id[..8].try_into().unwrap_or_default());
        let second = u64::from_be_bytes(id[8..].try_into().unwrap_or_default());
        let Some(m) = Schema::get().class(&class).and_then(|c| c.method(&method)) else {
            let mut rec = record(b'm', seq);
            rec.put_u32(Status::UnknownMethod as u32);
            put_str16(&mut rec, "UnknownMethod");
            out.push(rec);
            // The arguments cannot be read without the method.
            return false;
        };
        let Ok(args) = read_args(r, m, &self.v1_ids) else {
            return false;
        };
        let result = match self.v1_ids.name(first, second).map(str::to_string) {
            Some(name) => {
                let mut oid = FieldTable::new();
                oid.insert("_object_name", name);
                let mut req = FieldTable::new();
                req.insert("_object_id", Value::Map(oid));
                req.insert("_method_name", method.as_str());
                req.insert("_arguments", Value::Map(args));
                self.call_map(req, caller).await
            }
            None => Err(MethodError::standard(Status::UnknownObject)),
        };
        let mut rec = record(b'm', seq);
        match result {
            Ok(outs) => {
                rec.put_u32(0);
                put_str16(&mut rec, "OK");
                encode_out_args(&mut rec, m, &outs, &mut self.v1_ids);
            }
            Err(e) => {
                rec.put_u32(e.status as u32);
                put_str16(&mut rec, &e.text);
            }
        }
        out.push(rec);
        true
    }
}

/// A version 1 record with its header written.
fn record(opcode: u8, seq: u32) -> BytesMut {
    let mut b = BytesMut::new();
    v1_header(&mut b, opcode, seq);
    b
}

/// A version 1 command-complete record.
fn complete(seq: u32, code: u32, text: &str) -> BytesMut {
    let mut b = record(b'z', seq);
    b.put_u32(code);
    put_str8(&mut b, text);
    b
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

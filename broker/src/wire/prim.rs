//! Byte layouts of the AMQP 0-10 primitive types: one `put_*` and one `get_*` per spec type
//! as the generated code names them, plus the typed values of maps, lists and arrays.
//!
//! Decoding never panics: every read checks the remaining length first.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::types::{
    Array, ByteRanges, FieldTable, List, SequenceNo, SequenceSet, Struct32, Uuid, Value,
};

/// Nesting of maps, lists and arrays accepted from a peer; deeper input is refused so that a
/// hostile value cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

macro_rules! fixed {
    ($put:ident, $get:ident, $t:ty, $w:expr, $putm:ident, $getm:ident) => {
        /// Writes the fixed-width value big-endian.
        pub fn $put(buf: &mut BytesMut, v: &$t) {
            buf.$putm(*v);
        }
        /// Reads the fixed-width value.
        ///
        /// # Errors
        /// When fewer bytes remain than the type needs.
        pub fn $get(buf: &mut Bytes) -> Result<$t, DecodeError> {
            need(buf, $w)?;
            Ok(buf.$getm())
        }
    };
}

fixed!(put_u8, get_u8, u8, 1, put_u8, get_u8);
fixed!(put_i8, get_i8, i8, 1, put_i8, get_i8);
fixed!(put_u16, get_u16, u16, 2, put_u16, get_u16);
fixed!(put_i16, get_i16, i16, 2, put_i16, get_i16);
fixed!(put_u32, get_u32, u32, 4, put_u32, get_u32);
fixed!(put_i32, get_i32, i32, 4, put_i32, get_i32);
fixed!(put_u64, get_u64, u64, 8, put_u64, get_u64);
fixed!(put_i64, get_i64, i64, 8, put_i64, get_i64);
fixed!(put_f32, get_f32, f32, 4, put_f32, get_f32);
fixed!(put_f64, get_f64, f64, 8, put_f64, get_f64);

/// Writes a `boolean` (one byte, 0 or 1).
pub fn put_boolean(buf: &mut BytesMut, v: &bool) {
    buf.put_u8(u8::from(*v));
}

/// Reads a `boolean`; any non-zero byte is true.
///
/// # Errors
/// When the input is empty.
pub fn get_boolean(buf: &mut Bytes) -> Result<bool, DecodeError> {
    Ok(get_u8(buf)? != 0)
}

/// Writes a `sequence-no`.
pub fn put_sequence_no(buf: &mut BytesMut, v: &SequenceNo) {
    buf.put_u32(v.0);
}

/// Reads a `sequence-no`.
///
/// # Errors
/// When fewer than 4 bytes remain.
pub fn get_sequence_no(buf: &mut Bytes) -> Result<SequenceNo, DecodeError> {
    Ok(SequenceNo(get_u32(buf)?))
}

/// Writes a `uuid` (16 raw bytes).
pub fn put_uuid(buf: &mut BytesMut, v: &Uuid) {
    buf.put_slice(&v.0);
}

/// Reads a `uuid`.
///
/// # Errors
/// When fewer than 16 bytes remain.
pub fn get_uuid(buf: &mut Bytes) -> Result<Uuid, DecodeError> {
    need(buf, 16)?;
    let mut u = [0u8; 16];
    buf.copy_to_slice(&mut u);
    Ok(Uuid(u))
}

fn put_len(buf: &mut BytesMut, width: usize, len: usize) {
    // Lengths beyond the prefix width cannot be expressed; callers keep names and strings
    // within their type's limit, so saturating here only guards against misuse.
    match width {
        1 => buf.put_u8(u8::try_from(len).unwrap_or(u8::MAX)),
        2 => buf.put_u16(u16::try_from(len).unwrap_or(u16::MAX)),
        _ => buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX)),
    }
}

fn get_len(buf: &mut Bytes, width: usize) -> Result<usize, DecodeError> {
    Ok(match width {
        1 => usize::from(get_u8(buf)?),
        2 => usize::from(get_u16(buf)?),
        _ => get_u32(buf)? as usize,
    })
}

fn put_var(buf: &mut BytesMut, width: usize, bytes: &[u8]) {
    let max = match width {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX as usize,
    };
    let bytes = &bytes[..bytes.len().min(max)];
    put_len(buf, width, bytes.len());
    buf.put_slice(bytes);
}

fn get_var(buf: &mut Bytes, width: usize) -> Result<Bytes, DecodeError> {
    let len = get_len(buf, width)?;
    need(buf, len)?;
    Ok(buf.split_to(len))
}

fn get_string(buf: &mut Bytes, width: usize) -> Result<String, DecodeError> {
    let raw = get_var(buf, width)?;
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}

/// Writes a `vbin8`.
pub fn put_vbin8(buf: &mut BytesMut, v: &Bytes) {
    put_var(buf, 1, v);
}
/// Reads a `vbin8`.
///
/// # Errors
/// When truncated.
pub fn get_vbin8(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    get_var(buf, 1)
}
/// Writes a `vbin16`.
pub fn put_vbin16(buf: &mut BytesMut, v: &Bytes) {
    put_var(buf, 2, v);
}
/// Reads a `vbin16`.
///
/// # Errors
/// When truncated.
pub fn get_vbin16(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    get_var(buf, 2)
}
/// Writes a `vbin32`.
pub fn put_vbin32(buf: &mut BytesMut, v: &Bytes) {
    put_var(buf, 4, v);
}
/// Reads a `vbin32`.
///
/// # Errors
/// When truncated.
pub fn get_vbin32(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    get_var(buf, 4)
}
/// Longest prefix of `s` within `max` bytes that ends on a character boundary.
fn clip(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Writes a `str8` (UTF-8, at most 255 bytes; longer text is cut at a character boundary).
pub fn put_str8(buf: &mut BytesMut, v: &str) {
    put_var(buf, 1, clip(v, 0xff));
}
/// Reads a `str8`.
///
/// # Errors
/// When truncated or not UTF-8.
pub fn get_str8(buf: &mut Bytes) -> Result<String, DecodeError> {
    get_string(buf, 1)
}
/// Writes a `str16` (UTF-8, at most 65535 bytes, cut at a character boundary).
pub fn put_str16(buf: &mut BytesMut, v: &str) {
    put_var(buf, 2, clip(v, 0xffff));
}
/// Reads a `str16`.
///
/// # Errors
/// When truncated or not UTF-8.
pub fn get_str16(buf: &mut Bytes) -> Result<String, DecodeError> {
    get_string(buf, 2)
}

/// Writes a `sequence-set`: u16 byte length, then inclusive pairs.
pub fn put_sequence_set(buf: &mut BytesMut, v: &SequenceSet) {
    let ranges = &v.ranges()[..v.ranges().len().min(0xffff / 8)];
    put_len(buf, 2, ranges.len() * 8);
    for (a, b) in ranges {
        buf.put_u32(a.0);
        buf.put_u32(b.0);
    }
}

/// Reads a `sequence-set`.
///
/// # Errors
/// When truncated or the length is not a multiple of 8.
pub fn get_sequence_set(buf: &mut Bytes) -> Result<SequenceSet, DecodeError> {
    let mut body = get_var(buf, 2)?;
    if body.len() % 8 != 0 {
        return Err(DecodeError::Malformed(
            "sequence-set length not a multiple of 8",
        ));
    }
    let mut ranges = Vec::with_capacity(body.len() / 8);
    while body.has_remaining() {
        ranges.push((SequenceNo(body.get_u32()), SequenceNo(body.get_u32())));
    }
    Ok(SequenceSet::from_raw(ranges))
}

/// Writes `byte-ranges`.
pub fn put_byte_ranges(buf: &mut BytesMut, v: &ByteRanges) {
    put_len(buf, 2, v.0.len() * 16);
    for (a, b) in &v.0 {
        buf.put_u64(*a);
        buf.put_u64(*b);
    }
}

/// Reads `byte-ranges`.
///
/// # Errors
/// When truncated or the length is not a multiple of 16.
pub fn get_byte_ranges(buf: &mut Bytes) -> Result<ByteRanges, DecodeError> {
    let mut body = get_var(buf, 2)?;
    if body.len() % 16 != 0 {
        return Err(DecodeError::Malformed(
            "byte-ranges length not a multiple of 16",
        ));
    }
    let mut out = Vec::with_capacity(body.len() / 16);
    while body.has_remaining() {
        out.push((body.get_u64(), body.get_u64()));
    }
    Ok(ByteRanges(out))
}

/// Reserves a size prefix of `width` bytes (0, 1, 2 or 4) and returns where it starts.
pub fn begin_sized(buf: &mut BytesMut, width: usize) -> usize {
    let at = buf.len();
    buf.put_bytes(0, width);
    at
}

/// Fills in the size prefix reserved by [`begin_sized`] with the bytes written since.
pub fn end_sized(buf: &mut BytesMut, at: usize, width: usize) {
    let len = buf.len() - at - width;
    match width {
        0 => {}
        1 => buf[at] = u8::try_from(len).unwrap_or(u8::MAX),
        2 => buf[at..at + 2].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()),
        _ => buf[at..at + 4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()),
    }
}

/// Takes the body of a struct with a `width`-byte size prefix; with no prefix the struct runs
/// to the end of the input.
///
/// # Errors
/// When the prefix announces more bytes than remain.
pub fn take_sized(buf: &mut Bytes, width: usize) -> Result<Bytes, DecodeError> {
    if width == 0 {
        return Ok(buf.split_off(0));
    }
    get_var(buf, width)
}

/// Reads `N` bytes of pack flags.
///
/// # Errors
/// When fewer than `N` bytes remain.
pub fn get_flags<const N: usize>(buf: &mut Bytes) -> Result<[u8; N], DecodeError> {
    need(buf, N)?;
    let mut f = [0u8; N];
    buf.copy_to_slice(&mut f);
    Ok(f)
}

/// Writes a `struct32` value.
pub fn put_struct32(buf: &mut BytesMut, v: &Struct32) {
    put_len(buf, 4, v.body.len() + 2);
    buf.put_u16(v.code);
    buf.put_slice(&v.body);
}

/// Reads a `struct32` value.
///
/// # Errors
/// When truncated.
pub fn get_struct32(buf: &mut Bytes) -> Result<Struct32, DecodeError> {
    let mut body = get_var(buf, 4)?;
    let code = get_u16(&mut body)?;
    Ok(Struct32 { code, body })
}

/// Writes a `map`.
pub fn put_map(buf: &mut BytesMut, v: &FieldTable) {
    let at = begin_sized(buf, 4);
    put_len(buf, 4, v.0.len());
    for (k, val) in &v.0 {
        put_var(buf, 1, k.as_bytes());
        buf.put_u8(val.type_code());
        put_value(buf, val);
    }
    end_sized(buf, at, 4);
}

/// Reads a `map`. An empty body (size 0, as python writes for None) is an empty map.
///
/// # Errors
/// When truncated or malformed.
pub fn get_map(buf: &mut Bytes) -> Result<FieldTable, DecodeError> {
    map_at(buf, 0)
}

fn map_at(buf: &mut Bytes, depth: usize) -> Result<FieldTable, DecodeError> {
    let mut body = get_var(buf, 4)?;
    if body.is_empty() {
        return Ok(FieldTable::new());
    }
    let count = get_u32(&mut body)? as usize;
    let mut out = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let key = get_var(&mut body, 1)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| DecodeError::InvalidUtf8)?;
        let code = get_u8(&mut body)?;
        out.push((key, value_at(&mut body, code, depth + 1)?));
    }
    Ok(FieldTable(out))
}

/// Writes a `list`.
pub fn put_list(buf: &mut BytesMut, v: &List) {
    let at = begin_sized(buf, 4);
    put_len(buf, 4, v.0.len());
    for val in &v.0 {
        buf.put_u8(val.type_code());
        put_value(buf, val);
    }
    end_sized(buf, at, 4);
}

/// Reads a `list`.
///
/// # Errors
/// When truncated or malformed.
pub fn get_list(buf: &mut Bytes) -> Result<List, DecodeError> {
    list_at(buf, 0)
}

fn list_at(buf: &mut Bytes, depth: usize) -> Result<List, DecodeError> {
    let mut body = get_var(buf, 4)?;
    if body.is_empty() {
        return Ok(List::default());
    }
    let count = get_u32(&mut body)? as usize;
    let mut out = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let code = get_u8(&mut body)?;
        out.push(value_at(&mut body, code, depth + 1)?);
    }
    Ok(List(out))
}

/// Writes an `array`.
pub fn put_array(buf: &mut BytesMut, v: &Array) {
    let at = begin_sized(buf, 4);
    buf.put_u8(v.type_code);
    put_len(buf, 4, v.items.len());
    for val in &v.items {
        put_value(buf, val);
    }
    end_sized(buf, at, 4);
}

/// Reads an `array`.
///
/// # Errors
/// When truncated or malformed.
pub fn get_array(buf: &mut Bytes) -> Result<Array, DecodeError> {
    array_at(buf, 0)
}

fn array_at(buf: &mut Bytes, depth: usize) -> Result<Array, DecodeError> {
    let mut body = get_var(buf, 4)?;
    if body.is_empty() {
        return Ok(Array::default());
    }
    let type_code = get_u8(&mut body)?;
    let count = get_u32(&mut body)? as usize;
    // A zero-width element type could announce billions of items in a few bytes.
    if fixed_width(type_code) == Some(0) && count > 0x10000 {
        return Err(DecodeError::Malformed("array of void too long"));
    }
    let mut items = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        items.push(value_at(&mut body, type_code, depth + 1)?);
    }
    Ok(Array { type_code, items })
}

/// Width of a fixed-width type code by its class (bits 7-4), as the spec lays codes out.
fn fixed_width(code: u8) -> Option<usize> {
    Some(match code >> 4 {
        0x0 => 1,
        0x1 => 2,
        0x2 => 4,
        0x3 => 8,
        0x4 => 16,
        0x5 => 32,
        0x6 => 64,
        0x7 => 128,
        0xc => 5,
        0xd => 9,
        0xf => 0,
        _ => return None,
    })
}

/// Prefix width of a variable-width type code by its class.
fn variable_width(code: u8) -> Option<usize> {
    Some(match code >> 4 {
        0x8 => 1,
        0x9 => 2,
        0xa => 4,
        _ => return None,
    })
}

/// Writes a value without its type code.
pub fn put_value(buf: &mut BytesMut, v: &Value) {
    match v {
        Value::Void => {}
        Value::Bool(b) => put_boolean(buf, b),
        Value::Int8(x) => buf.put_i8(*x),
        Value::Uint8(x) => buf.put_u8(*x),
        Value::Int16(x) => buf.put_i16(*x),
        Value::Uint16(x) => buf.put_u16(*x),
        Value::Int32(x) => buf.put_i32(*x),
        Value::Uint32(x) => buf.put_u32(*x),
        Value::Int64(x) => buf.put_i64(*x),
        Value::Uint64(x) | Value::Datetime(x) => buf.put_u64(*x),
        Value::Float(x) => buf.put_f32(*x),
        Value::Double(x) => buf.put_f64(*x),
        Value::Uuid(u) => put_uuid(buf, u),
        Value::Str8(s) => put_var(buf, 1, clip(s, 0xff)),
        Value::Str16(s) => put_var(buf, 2, clip(s, 0xffff)),
        Value::Vbin8(b) => put_var(buf, 1, b),
        Value::Vbin16(b) => put_var(buf, 2, b),
        Value::Vbin32(b) => put_var(buf, 4, b),
        Value::Map(m) => put_map(buf, m),
        Value::List(l) => put_list(buf, l),
        Value::Array(a) => put_array(buf, a),
        Value::Struct32(s) => put_struct32(buf, s),
        Value::Fixed(_, b) => buf.put_slice(b),
        Value::Variable(code, b) => put_var(buf, variable_width(*code).unwrap_or(4), b),
    }
}

/// Reads a value of type `code`.
///
/// # Errors
/// When truncated, malformed, nested too deeply, or of a code with no known width.
pub fn get_value(buf: &mut Bytes, code: u8) -> Result<Value, DecodeError> {
    value_at(buf, code, 0)
}

fn value_at(buf: &mut Bytes, code: u8, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Malformed("values nested too deeply"));
    }
    Ok(match code {
        0xf0 => Value::Void,
        0x08 => Value::Bool(get_boolean(buf)?),
        0x01 => Value::Int8(get_i8(buf)?),
        0x02 => Value::Uint8(get_u8(buf)?),
        0x11 => Value::Int16(get_i16(buf)?),
        0x12 => Value::Uint16(get_u16(buf)?),
        0x21 => Value::Int32(get_i32(buf)?),
        0x22 => Value::Uint32(get_u32(buf)?),
        0x31 => Value::Int64(get_i64(buf)?),
        0x32 => Value::Uint64(get_u64(buf)?),
        0x23 => Value::Float(get_f32(buf)?),
        0x33 => Value::Double(get_f64(buf)?),
        0x38 => Value::Datetime(get_u64(buf)?),
        0x48 => Value::Uuid(get_uuid(buf)?),
        0x80 => Value::Vbin8(get_var(buf, 1)?),
        0x90 => Value::Vbin16(get_var(buf, 2)?),
        0xa0 => Value::Vbin32(get_var(buf, 4)?),
        0x85 | 0x95 => {
            let raw = get_var(buf, if code == 0x85 { 1 } else { 2 })?;
            match String::from_utf8(raw.to_vec()) {
                Ok(s) if code == 0x85 => Value::Str8(s),
                Ok(s) => Value::Str16(s),
                Err(_) => Value::Variable(code, raw),
            }
        }
        0xa8 => Value::Map(map_at(buf, depth)?),
        0xa9 => Value::List(list_at(buf, depth)?),
        0xaa => Value::Array(array_at(buf, depth)?),
        0xab => Value::Struct32(get_struct32(buf)?),
        _ => {
            if let Some(w) = fixed_width(code) {
                need(buf, w)?;
                Value::Fixed(code, buf.split_to(w))
            } else if let Some(w) = variable_width(code) {
                Value::Variable(code, get_var(buf, w)?)
            } else {
                return Err(DecodeError::UnknownType(code));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The python codec's encoding of `{"a":1,"s":"x","b":True,"l":[1,"y"]}`.
    #[test]
    fn map_matches_python_vector() {
        let bytes = hex("00000031 00000004 01 61 31 0000000000000001 01 73 95 0001 78 01 62 08 01 01 6c a9 00000011 00000002 31 0000000000000001 95 0001 79");
        let mut input = Bytes::from(bytes.clone());
        let map = get_map(&mut input).expect("decode");
        assert!(input.is_empty());
        assert_eq!(map.get("a"), Some(&Value::Int64(1)));
        assert_eq!(map.get("s"), Some(&Value::Str16("x".into())));
        assert_eq!(map.get("b"), Some(&Value::Bool(true)));
        assert_eq!(
            map.get("l"),
            Some(&Value::List(List(vec![
                Value::Int64(1),
                Value::Str16("y".into())
            ])))
        );
        let mut out = BytesMut::new();
        put_map(&mut out, &map);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn str16_array_matches_vector() {
        let bytes = hex("00000017 95 00000002 0005 504c41494e 0009 414e4f4e594d4f5553");
        let mut out = BytesMut::new();
        put_array(&mut out, &Array::str16(["PLAIN", "ANONYMOUS"]));
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn sequence_set_vector() {
        let mut s = SequenceSet::new();
        s.add_range(SequenceNo(1), SequenceNo(2));
        s.add(SequenceNo(5));
        let mut out = BytesMut::new();
        put_sequence_set(&mut out, &s);
        assert_eq!(
            &out[..],
            &hex("0010 00000001 00000002 00000005 00000005")[..]
        );
    }

    #[test]
    fn truncated_and_hostile_input_is_an_error() {
        assert!(get_map(&mut Bytes::from_static(&[0, 0, 0, 9, 0, 0])).is_err());
        assert!(get_str8(&mut Bytes::from_static(&[5, b'a'])).is_err());
        // An array of a billion voids in 9 bytes.
        assert!(get_array(&mut Bytes::from_static(&[0, 0, 0, 5, 0xf0, 0x40, 0, 0, 0])).is_err());
        // Maps nested past the limit.
        let mut deep = BytesMut::new();
        let mut m = FieldTable::new();
        for _ in 0..40 {
            let mut outer = FieldTable::new();
            outer.insert("m", Value::Map(m));
            m = outer;
        }
        put_map(&mut deep, &m);
        assert!(get_map(&mut deep.freeze()).is_err());
        assert_eq!(
            get_value(&mut Bytes::from_static(&[1]), 0xb3),
            Err(DecodeError::UnknownType(0xb3))
        );
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let mut out = BytesMut::new();
        put_str8(&mut out, &long);
        let decoded = get_str8(&mut out.freeze()).expect("valid utf-8");
        assert_eq!(decoded.len(), 254);
        assert!(long.starts_with(&decoded));
    }

    #[test]
    fn unknown_codes_keep_their_bytes() {
        let mut input = Bytes::from_static(&[0xc8, 1, 2, 3, 4, 5]);
        let code = get_u8(&mut input).expect("code");
        let v = get_value(&mut input, code).expect("value");
        assert_eq!(v, Value::Fixed(0xc8, Bytes::from_static(&[1, 2, 3, 4, 5])));
    }
}

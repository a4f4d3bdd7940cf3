//! Wire value types of AMQP 0-10: sequence numbers and sets, uuids, maps, lists, arrays and
//! `struct32` values. Pure data; their byte layouts live in `prim`.

use std::fmt;

use bytes::Bytes;

/// A 32-bit serial number (RFC 1982): comparison and distance wrap around.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SequenceNo(pub u32);

impl SequenceNo {
    /// The number that follows this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }

    /// Serial-number ordering: `self` is before `other` when the forward distance is less
    /// than half the number space.
    pub fn before(self, other: Self) -> bool {
        self != other && other.0.wrapping_sub(self.0) < 0x8000_0000
    }

    /// `self <= other` in serial-number order.
    pub fn not_after(self, other: Self) -> bool {
        self == other || self.before(other)
    }
}

impl fmt::Debug for SequenceNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl From<u32> for SequenceNo {
    fn from(v: u32) -> Self {
        Self(v)
    }
}

/// A set of sequence numbers kept as sorted, disjoint, non-adjacent inclusive ranges.
///
/// Ranges are compared with serial arithmetic relative to each other, which holds as long
/// as one set spans less than half the number space (true for any live session).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SequenceSet {
    ranges: Vec<(SequenceNo, SequenceNo)>,
}

impl SequenceSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of one range, `lower..=upper`.
    pub fn from_range(lower: SequenceNo, upper: SequenceNo) -> Self {
        let mut s = Self::new();
        s.add_range(lower, upper);
        s
    }

    /// The ranges, inclusive, in order.
    pub fn ranges(&self) -> &[(SequenceNo, SequenceNo)] {
        &self.ranges
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds one number.
    pub fn add(&mut self, n: SequenceNo) {
        // Commands complete mostly in order: extending the last range needs no rebuild.
        if let Some(last) = self.ranges.last_mut() {
            if last.1.next() == n {
                last.1 = n;
                return;
            }
        }
        self.add_range(n, n);
    }

    /// Adds `lower..=upper` (a reversed pair is taken as written by the peer: both ends).
    pub fn add_range(&mut self, lower: SequenceNo, upper: SequenceNo) {
        let (mut lo, mut hi) = if upper.before(lower) {
            (upper, lower)
        } else {
            (lower, upper)
        };
        let mut merged = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b.next().before(lo) {
                merged.push((a, b));
            } else if hi.next().before(a) {
                if !placed {
                    merged.push((lo, hi));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                if a.before(lo) {
                    lo = a;
                }
                if hi.before(b) {
                    hi = b;
                }
            }
        }
        if !placed {
            merged.push((lo, hi));
        }
        self.ranges = merged;
    }

    /// Adds every number of `other`.
    pub fn add_set(&mut self, other: &SequenceSet) {
        for &(a, b) in &other.ranges {
            self.add_range(a, b);
        }
    }

    /// Removes every number of `other`.
    pub fn remove_set(&mut self, other: &SequenceSet) {
        for &(a, b) in &other.ranges {
            self.remove_range(a, b);
        }
    }

    /// Removes `lower..=upper`.
    pub fn remove_range(&mut self, lower: SequenceNo, upper: SequenceNo) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b.before(lower) || upper.before(a) {
                out.push((a, b));
                continue;
            }
            if a.before(lower) {
                out.push((a, SequenceNo(lower.0.wrapping_sub(1))));
            }
            if upper.before(b) {
                out.push((upper.next(), b));
            }
        }
        self.ranges = out;
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: SequenceNo) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b)| a.not_after(n) && n.not_after(b))
    }

    /// Every number in the set, in order. Sets from peers can be huge: callers that act on
    /// each member bound their work by what they actually hold (see `contains`).
    pub fn iter(&self) -> impl Iterator<Item = SequenceNo> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| {
            let len = b.0.wrapping_sub(a.0);
            (0..=len).map(move |i| SequenceNo(a.0.wrapping_add(i)))
        })
    }

    /// The highest number, if any.
    pub fn last(&self) -> Option<SequenceNo> {
        self.ranges.last().map(|r| r.1)
    }

    /// Builds a set from raw pairs as decoded, without merging (keeps peer bytes exact).
    pub(crate) fn from_raw(ranges: Vec<(SequenceNo, SequenceNo)>) -> Self {
        Self { ranges }
    }
}

impl fmt::Debug for SequenceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{}", a.0)?;
            } else {
                write!(f, "{}-{}", a.0, b.0)?;
            }
        }
        f.write_str("}")
    }
}

impl FromIterator<SequenceNo> for SequenceSet {
    fn from_iter<I: IntoIterator<Item = SequenceNo>>(iter: I) -> Self {
        let mut s = Self::new();
        for n in iter {
            s.add(n);
        }
        s
    }
}

/// A 16-byte UUID as it travels (no interpretation of its bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// `byte-ranges`: inclusive pairs of byte offsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ByteRanges(pub Vec<(u64, u64)>);

/// A `struct32` value: the struct code and its packed body (flags and fields), undecoded.
/// The generated structs convert with `to_struct32` / `from_struct32`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Struct32 {
    /// `class-code << 8 | struct-code`.
    pub code: u16,
    /// Pack flags and fields, after the code.
    pub body: Bytes,
}

/// A typed value inside a map, list or array.
///
/// Common types have their own variant; every other type code is kept with its raw bytes
/// so that what a peer sent re-encodes exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `void` (0xf0).
    Void,
    /// `boolean` (0x08).
    Bool(bool),
    /// `int8` (0x01).
    Int8(i8),
    /// `uint8` (0x02).
    Uint8(u8),
    /// `int16` (0x11).
    Int16(i16),
    /// `uint16` (0x12).
    Uint16(u16),
    /// `int32` (0x21).
    Int32(i32),
    /// `uint32` (0x22).
    Uint32(u32),
    /// `int64` (0x31).
    Int64(i64),
    /// `uint64` (0x32).
    Uint64(u64),
    /// `float` (0x23).
    Float(f32),
    /// `double` (0x33).
    Double(f64),
    /// `datetime` (0x38): seconds since the epoch.
    Datetime(u64),
    /// `uuid` (0x48).
    Uuid(Uuid),
    /// `str8` (0x85) holding valid UTF-8.
    Str8(String),
    /// `str16` (0x95) holding valid UTF-8.
    Str16(String),
    /// `vbin8` (0x80).
    Vbin8(Bytes),
    /// `vbin16` (0x90).
    Vbin16(Bytes),
    /// `vbin32` (0xa0).
    Vbin32(Bytes),
    /// `map` (0xa8).
    Map(FieldTable),
    /// `list` (0xa9).
    List(List),
    /// `array` (0xaa).
    Array(Array),
    /// `struct32` (0xab).
    Struct32(Struct32),
    /// Any other fixed-width type: its code and raw bytes.
    Fixed(u8, Bytes),
    /// Any other variable-width type (or a string that is not UTF-8): code and raw bytes.
    Variable(u8, Bytes),
}

impl Value {
    /// The type code written before this value in a map or list.
    pub fn type_code(&self) -> u8 {
        match self {
            Value::Void => 0xf0,
            Value::Bool(_) => 0x08,
            Value::Int8(_) => 0x01,
            Value::Uint8(_) => 0x02,
            Value::Int16(_) => 0x11,
            Value::Uint16(_) => 0x12,
            Value::Int32(_) => 0x21,
            Value::Uint32(_) => 0x22,
            Value::Int64(_) => 0x31,
            Value::Uint64(_) => 0x32,
            Value::Float(_) => 0x23,
            Value::Double(_) => 0x33,
            Value::Datetime(_) => 0x38,
            Value::Uuid(_) => 0x48,
            Value::Str8(_) => 0x85,
            Value::Str16(_) => 0x95,
            Value::Vbin8(_) => 0x80,
            Value::Vbin16(_) => 0x90,
            Value::Vbin32(_) => 0xa0,
            Value::Map(_) => 0xa8,
            Value::List(_) => 0xa9,
            Value::Array(_) => 0xaa,
            Value::Struct32(_) => 0xab,
            Value::Fixed(c, _) | Value::Variable(c, _) => *c,
        }
    }

    /// The value as a signed integer, for any integral type (booleans count as 0/1).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match self {
            Value::Bool(b) => i64::from(*b),
            Value::Int8(v) => i64::from(*v),
            Value::Uint8(v) => i64::from(*v),
            Value::Int16(v) => i64::from(*v),
            Value::Uint16(v) => i64::from(*v),
            Value::Int32(v) => i64::from(*v),
            Value::Uint32(v) => i64::from(*v),
            Value::Int64(v) => *v,
            Value::Uint64(v) => i64::try_from(*v).ok()?,
            Value::Str8(s) | Value::Str16(s) => s.trim().parse().ok()?,
            _ => return None,
        })
    }

    /// The value as text, for string and binary types that hold UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str8(s) | Value::Str16(s) => Some(s),
            Value::Vbin8(b) | Value::Vbin16(b) | Value::Vbin32(b) | Value::Variable(_, b) => {
                std::str::from_utf8(b).ok()
            }
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str16(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str16(s)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// A 0-10 `map`: string keys and typed values, in wire order (duplicates kept as sent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, Value)>);

impl FieldTable {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// A 0-10 `list`: typed values in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct List(pub Vec<Value>);

/// A 0-10 `array`: values of one type code.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Array {
    /// The element type code (0x95 str16 for the string arrays of `connection.start`).
    pub type_code: u8,
    /// The elements; each must carry `type_code`.
    pub items: Vec<Value>,
}

impl Array {
    /// An array of `str16` strings, as `connection.start.mechanisms` uses.
    pub fn str16<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        Array {
            type_code: 0x95,
            items: items.into_iter().map(|s| Value::Str16(s.into())).collect(),
        }
    }

    /// The elements that are text.
    pub fn strings(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter_map(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ns: &[u32]) -> SequenceSet {
        ns.iter().map(|&n| SequenceNo(n)).collect()
    }

    #[test]
    fn serial_order_wraps() {
        assert!(SequenceNo(u32::MAX).before(SequenceNo(0)));
        assert!(!SequenceNo(0).before(SequenceNo(u32::MAX)));
        assert!(SequenceNo(5).not_after(SequenceNo(5)));
    }

    #[test]
    fn set_merges_adjacent_ranges() {
        let s = set(&[1, 2, 5, 3]);
        assert_eq!(
            s.ranges(),
            &[
                (SequenceNo(1), SequenceNo(3)),
                (SequenceNo(5), SequenceNo(5))
            ]
        );
        let mut s = s;
        s.remove_range(SequenceNo(2), SequenceNo(2));
        assert_eq!(format!("{s:?}"), "{1,3,5}");
    }

    proptest! {
        /// The set behaves as a plain set of numbers.
        #[test]
        fn set_matches_naive_model(adds in proptest::collection::vec(0u32..64, 0..40),
                                   removes in proptest::collection::vec((0u32..64, 0u32..8), 0..10)) {
            let mut s = SequenceSet::new();
            let mut model = std::collections::BTreeSet::new();
            for a in &adds { s.add(SequenceNo(*a)); model.insert(*a); }
            for (lo, len) in &removes {
                s.remove_range(SequenceNo(*lo), SequenceNo(lo + len));
                for n in *lo..=lo + len { model.remove(&n); }
            }
            let got: Vec<u32> = s.iter().map(|n| n.0).collect();
            let want: Vec<u32> = model.into_iter().collect();
            prop_assert_eq!(got, want);
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].1.next().before(w[1].0));
            }
        }
    }
}

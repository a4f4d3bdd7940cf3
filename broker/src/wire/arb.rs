//! Proptest strategies for the hand-written wire types, used by the generated round-trip
//! tests (one `arb_<codec>` per primitive codec name).

use bytes::Bytes;
use proptest::prelude::*;

use super::types::{
    Array, ByteRanges, FieldTable, List, SequenceNo, SequenceSet, Struct32, Uuid, Value,
};

macro_rules! any_of {
    ($($name:ident: $t:ty),*) => {$(
        /// Any value of the type.
        pub fn $name() -> BoxedStrategy<$t> {
            any::<$t>().boxed()
        }
    )*};
}

any_of!(arb_u8: u8, arb_i8: i8, arb_u16: u16, arb_i16: i16, arb_u32: u32, arb_i32: i32,
        arb_u64: u64, arb_i64: i64, arb_boolean: bool);

/// Finite floats (NaN is not equal to itself).
pub fn arb_f32() -> BoxedStrategy<f32> {
    (-1.0e6f32..1.0e6f32).boxed()
}

/// Finite doubles.
pub fn arb_f64() -> BoxedStrategy<f64> {
    (-1.0e12f64..1.0e12f64).boxed()
}

/// Any sequence number.
pub fn arb_sequence_no() -> BoxedStrategy<SequenceNo> {
    any::<u32>().prop_map(SequenceNo).boxed()
}

/// Any uuid.
pub fn arb_uuid() -> BoxedStrategy<Uuid> {
    any::<[u8; 16]>().prop_map(Uuid).boxed()
}

fn bytes(max: usize) -> BoxedStrategy<Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max)
        .prop_map(Bytes::from)
        .boxed()
}

/// A `vbin8`.
pub fn arb_vbin8() -> BoxedStrategy<Bytes> {
    bytes(256)
}

/// A `vbin16`.
pub fn arb_vbin16() -> BoxedStrategy<Bytes> {
    bytes(600)
}

/// A `vbin32`.
pub fn arb_vbin32() -> BoxedStrategy<Bytes> {
    bytes(600)
}

/// A `str8` (at most 255 bytes of UTF-8).
pub fn arb_str8() -> BoxedStrategy<String> {
    "[a-zA-Z0-9.#*_ -]{0,40}|\\PC{0,20}".boxed()
}

/// A `str16`.
pub fn arb_str16() -> BoxedStrategy<String> {
    "\\PC{0,80}".boxed()
}

/// A `sequence-set` as a peer may send it (pairs as written, not normalised).
pub fn arb_sequence_set() -> BoxedStrategy<SequenceSet> {
    proptest::collection::vec((any::<u32>(), any::<u32>()), 0..8)
        .prop_map(|pairs| {
            SequenceSet::from_raw(
                pairs
                    .into_iter()
                    .map(|(a, b)| (SequenceNo(a), SequenceNo(b)))
                    .collect(),
            )
        })
        .boxed()
}

/// `byte-ranges`.
pub fn arb_byte_ranges() -> BoxedStrategy<ByteRanges> {
    proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6)
        .prop_map(ByteRanges)
        .boxed()
}

/// A `struct32` with an opaque body.
pub fn arb_struct32() -> BoxedStrategy<Struct32> {
    (any::<u16>(), bytes(64))
        .prop_map(|(code, body)| Struct32 { code, body })
        .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Void),
        any::<bool>().prop_map(Value::Bool),
        any::<i8>().prop_map(Value::Int8),
        any::<u8>().prop_map(Value::Uint8),
        any::<i16>().prop_map(Value::Int16),
        any::<u16>().prop_map(Value::Uint16),
        any::<i32>().prop_map(Value::Int32),
        any::<u32>().prop_map(Value::Uint32),
        any::<i64>().prop_map(Value::Int64),
        any::<u64>().prop_map(Value::Uint64),
        arb_f32().prop_map(Value::Float),
        arb_f64().prop_map(Value::Double),
        any::<u64>().prop_map(Value::Datetime),
        arb_uuid().prop_map(Value::Uuid),
        arb_str8().prop_map(Value::Str8),
        arb_str16().prop_map(Value::Str16),
        arb_vbin8().prop_map(Value::Vbin8),
        arb_vbin16().prop_map(Value::Vbin16),
        arb_vbin32().prop_map(Value::Vbin32),
        arb_struct32().prop_map(Value::Struct32),
        bytes(9).prop_map(|b| {
            let mut v = b.to_vec();
            v.resize(5, 0);
            Value::Fixed(0xc8, Bytes::from(v))
        }),
        bytes(40).prop_map(|b| Value::Variable(0x84, b)),
    ]
    .boxed()
}

/// Any value, nested up to a few levels.
pub fn arb_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(("[a-z]{1,8}", inner.clone()), 0..5)
                    .prop_map(|kv| Value::Map(FieldTable(kv))),
                proptest::collection::vec(inner, 0..5).prop_map(|v| Value::List(List(v))),
                proptest::collection::vec(any::<i64>(), 0..5).prop_map(|v| {
                    Value::Array(Array {
                        type_code: 0x31,
                        items: v.into_iter().map(Value::Int64).collect(),
                    })
                }),
            ]
        })
        .boxed()
}

/// A `map`.
pub fn arb_map() -> BoxedStrategy<FieldTable> {
    proptest::collection::vec(("[a-z.-]{1,12}", arb_value()), 0..6)
        .prop_map(FieldTable)
        .boxed()
}

/// A `list`.
pub fn arb_list() -> BoxedStrategy<List> {
    proptest::collection::vec(arb_value(), 0..6)
        .prop_map(List)
        .boxed()
}

/// An `array` of strings or integers.
pub fn arb_array() -> BoxedStrategy<Array> {
    prop_oneof![
        proptest::collection::vec(arb_str16(), 0..5).prop_map(Array::str16),
        proptest::collection::vec(any::<u8>(), 0..5).prop_map(|v| Array {
            type_code: 0x02,
            items: v.into_iter().map(Value::Uint8).collect(),
        }),
    ]
    .boxed()
}

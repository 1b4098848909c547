//! Property tests of the wire decoders: any value round-trips, and no input, however
//! broken, makes a decoder panic.

use std::collections::BTreeMap;

use breakglass::stacks::clarity::{self, Principal, Value};
use breakglass::stacks::{tx, Address};
use proptest::prelude::*;

fn address() -> impl Strategy<Value = Address> {
    (
        prop_oneof![Just(22u8), Just(20u8), Just(26u8), Just(21u8)],
        any::<[u8; 20]>(),
    )
        .prop_map(|(version, hash160)| Address::new(version, hash160).unwrap())
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i128>().prop_map(Value::Int),
        any::<u128>().prop_map(Value::UInt),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Buffer),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::None),
        address().prop_map(|a| Value::Principal(Principal::Standard(a))),
        (address(), "[a-z][a-z0-9-]{0,20}")
            .prop_map(|(a, n)| Value::Principal(Principal::Contract(a, n))),
        "[ -~]{0,30}".prop_map(Value::Ascii),
        "\\PC{0,20}".prop_map(Value::Utf8),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            inner.clone().prop_map(|v| Value::Ok(Box::new(v))),
            inner.clone().prop_map(|v| Value::Err(Box::new(v))),
            inner.clone().prop_map(|v| Value::Some(Box::new(v))),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::btree_map("[a-z][a-z-]{0,10}", inner, 0..6)
                .prop_map(|m: BTreeMap<String, Value>| Value::Tuple(m)),
        ]
    })
}

proptest! {
    #[test]
    fn values_round_trip_through_bytes_and_notation(v in value()) {
        let bytes = v.serialize();
        prop_assert_eq!(Value::deserialize(&bytes).unwrap(), v.clone());
        prop_assert_eq!(clarity::parse(&v.to_string()).unwrap(), v.clone());
        // stacks-rs writes the same bytes for the same value
        prop_assert_eq!(stacks_rs::clarity::Codec::encode(&*v.to_stacks_rs()).unwrap(), bytes);
    }

    #[test]
    fn truncated_values_are_errors_not_panics(v in value(), cut in any::<prop::sample::Index>()) {
        let bytes = v.serialize();
        let n = cut.index(bytes.len());
        prop_assert!(Value::deserialize(&bytes[..n]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Value::deserialize(&bytes);
        let _ = tx::decode(&bytes);
        let _ = clarity::parse(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn hostile_lengths_are_refused_without_allocating() {
    // a list that claims four billion items in five bytes
    assert!(Value::deserialize(&[0x0b, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(Value::deserialize(&[0x02, 0xff, 0xff, 0xff, 0xff, 0x00]).is_err());
    // nesting beyond the limit
    let mut deep = vec![0x0a; 40];
    deep.push(0x09);
    assert!(Value::deserialize(&deep).is_err());
    // tuple keys out of canonical order
    let unsorted = [0x0c, 0, 0, 0, 2, 1, b'b', 0x03, 1, b'a', 0x03];
    assert!(matches!(
        Value::deserialize(&unsorted),
        Err(clarity::DecodeError::NonCanonicalTuple)
    ));
    // string-ascii with a non-ASCII byte
    assert!(Value::deserialize(&[0x0d, 0, 0, 0, 1, 0xc3]).is_err());
}

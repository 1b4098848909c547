//! Clarity values: the types, the consensus serialization (SIP-005) and the conversion into
//! stacks-rs values for transaction building; `decode.rs` reads them back and `notation.rs`
//! writes and parses Clarity literals.
//!
//! stacks-rs encodes values byte-exactly but its decoder indexes into the input unchecked, so
//! bytes from outside (signed requests, node answers) are decoded here, with bounds, a depth
//! limit and canonical tuple order enforced.
//!
//! It must not: panic on any input, or do I/O.
use std::collections::BTreeMap;

use stacks_rs::clarity as srs;

use super::address::Address;
use decode::Reader;
pub use notation::parse;

mod decode;
mod notation;

/// Clarity's limit on a serialized value (MAX_VALUE_SIZE).
pub const MAX_VALUE_SIZE: usize = 1024 * 1024;
/// Nesting deeper than this is refused (Clarity's own limit is 32).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Standard(Address),
    Contract(Address, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i128),
    UInt(u128),
    Buffer(Vec<u8>),
    Bool(bool),
    Principal(Principal),
    Ok(Box<Value>),
    Err(Box<Value>),
    None,
    Some(Box<Value>),
    List(Vec<Value>),
    Tuple(BTreeMap<String, Value>),
    Ascii(String),
    Utf8(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value ends early at byte {0}")]
    Truncated(usize),
    #[error("unknown type prefix 0x{0:02x} at byte {1}")]
    UnknownType(u8, usize),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    #[error("value nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("value larger than {MAX_VALUE_SIZE} bytes")]
    TooLarge,
    #[error("string-ascii holds a byte that is not printable ASCII")]
    BadAscii,
    #[error("string-utf8 is not valid UTF-8")]
    BadUtf8,
    #[error("bad name in a tuple or contract principal")]
    BadName,
    #[error("tuple keys are not in canonical (sorted, unique) order")]
    NonCanonicalTuple,
    #[error("bad principal: {0}")]
    BadPrincipal(String),
}

impl Value {
    pub fn ascii(s: &str) -> Value {
        Value::Ascii(s.to_string())
    }

    pub fn buffer(b: impl AsRef<[u8]>) -> Value {
        Value::Buffer(b.as_ref().to_vec())
    }

    pub fn tuple<K: Into<String>>(fields: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Tuple(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The consensus serialization.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        let len = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u32).to_be_bytes());
        match self {
            Value::Int(i) => {
                out.push(0x00);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::UInt(u) => {
                out.push(0x01);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Value::Buffer(b) => {
                out.push(0x02);
                len(out, b.len());
                out.extend_from_slice(b);
            }
            Value::Bool(true) => out.push(0x03),
            Value::Bool(false) => out.push(0x04),
            Value::Principal(Principal::Standard(a)) => {
                out.push(0x05);
                out.push(a.version());
                out.extend_from_slice(a.hash160());
            }
            Value::Principal(Principal::Contract(a, name)) => {
                out.push(0x06);
                out.push(a.version());
                out.extend_from_slice(a.hash160());
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
            Value::Ok(v) => {
                out.push(0x07);
                v.write(out);
            }
            Value::Err(v) => {
                out.push(0x08);
                v.write(out);
            }
            Value::None => out.push(0x09),
            Value::Some(v) => {
                out.push(0x0a);
                v.write(out);
            }
            Value::List(items) => {
                out.push(0x0b);
                len(out, items.len());
                for item in items {
                    item.write(out);
                }
            }
            Value::Tuple(fields) => {
                out.push(0x0c);
                len(out, fields.len());
                for (k, v) in fields {
                    out.push(k.len() as u8);
                    out.extend_from_slice(k.as_bytes());
                    v.write(out);
                }
            }
            Value::Ascii(s) => {
                out.push(0x0d);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Utf8(s) => {
                out.push(0x0e);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Decodes exactly one value filling all of `bytes`.
    pub fn deserialize(bytes: &[u8]) -> Result<Value, DecodeError> {
        if bytes.len() > MAX_VALUE_SIZE {
            return Err(DecodeError::TooLarge);
        }
        let mut r = Reader { bytes, pos: 0 };
        let v = r.value(0)?;
        if r.pos != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - r.pos));
        }
        Ok(v)
    }

    /// Decodes one value from the front of `bytes`, returning it and the bytes it used.
    pub fn deserialize_prefix(bytes: &[u8]) -> Result<(Value, usize), DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let v = r.value(0)?;
        Ok((v, r.pos))
    }

    /// Decodes `0x`-prefixed (or bare) hex, as the node's RPC passes values.
    pub fn from_hex(hex_str: &str) -> Result<Value, DecodeError> {
        let bytes = hex::decode(hex_str).map_err(|_| DecodeError::Truncated(0))?;
        Value::deserialize(&bytes)
    }

    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.serialize()))
    }

    /// The same value as a stacks-rs value, to pass as a contract-call argument.
    pub fn to_stacks_rs(&self) -> Box<dyn srs::Clarity> {
        match self {
            Value::Int(i) => Box::new(srs::Int::new(*i)),
            Value::UInt(u) => Box::new(srs::UInt::new(*u)),
            Value::Buffer(b) => Box::new(srs::Buffer::new(b.clone())),
            Value::Bool(true) => Box::new(srs::True::new()),
            Value::Bool(false) => Box::new(srs::False::new()),
            Value::Principal(Principal::Standard(a)) => {
                Box::new(srs::PrincipalStandard::new(a.to_string()))
            }
            Value::Principal(Principal::Contract(a, n)) => {
                Box::new(srs::PrincipalContract::new((a.to_string(), n.clone())))
            }
            Value::Ok(v) => Box::new(srs::ResponseOk::new(v.to_stacks_rs())),
            Value::Err(v) => Box::new(srs::ResponseErr::new(v.to_stacks_rs())),
            Value::None => Box::new(srs::OptionalNone::new()),
            Value::Some(v) => Box::new(srs::OptionalSome::new(v.to_stacks_rs())),
            Value::List(items) => Box::new(srs::List::new(
                items.iter().map(Value::to_stacks_rs).collect(),
            )),
            // BTreeMap iteration is the canonical sorted order stacks-rs writes as given
            Value::Tuple(f) => Box::new(srs::Tuple::new(
                f.iter()
                    .map(|(k, v)| (k.clone(), v.to_stacks_rs()))
                    .collect(),
            )),
            Value::Ascii(s) => Box::new(srs::StringAscii::new(s.clone())),
            Value::Utf8(s) => Box::new(srs::StringUtf8::new(s.clone())),
        }
    }

    pub fn as_tuple(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }
}

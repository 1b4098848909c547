//! Clarity values: the consensus serialization (SIP-005), the Clarity notation, and the
//! conversion into stacks-rs values for transaction building.
//!
//! stacks-rs encodes values byte-exactly but its decoder indexes into the input unchecked, so
//! bytes from outside (signed requests, node answers) are decoded here, with bounds, a depth
//! limit and canonical tuple order enforced. Nothing in this module panics on any input.

use std::collections::BTreeMap;
use std::fmt;

use stacks_rs::clarity as srs;

use super::address::Address;

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
                out.push(a.version);
                out.extend_from_slice(&a.hash160);
            }
            Value::Principal(Principal::Contract(a, name)) => {
                out.push(0x06);
                out.push(a.version);
                out.extend_from_slice(&a.hash160);
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
        let bytes = hex::decode(hex_str.strip_prefix("0x").unwrap_or(hex_str))
            .map_err(|_| DecodeError::Truncated(0))?;
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

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn name(&mut self) -> Result<String, DecodeError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadName)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(DecodeError::BadName);
        }
        Ok(s.to_string())
    }

    fn address(&mut self) -> Result<Address, DecodeError> {
        let version = self.u8()?;
        if version >= 32 {
            return Err(DecodeError::BadPrincipal(format!(
                "address version {version}"
            )));
        }
        Ok(Address {
            version,
            hash160: self.array()?,
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.pos;
        Ok(match self.u8()? {
            0x00 => Value::Int(i128::from_be_bytes(self.array()?)),
            0x01 => Value::UInt(u128::from_be_bytes(self.array()?)),
            0x02 => {
                let n = self.u32()?;
                Value::Buffer(self.take(n)?.to_vec())
            }
            0x03 => Value::Bool(true),
            0x04 => Value::Bool(false),
            0x05 => Value::Principal(Principal::Standard(self.address()?)),
            0x06 => {
                let a = self.address()?;
                Value::Principal(Principal::Contract(a, self.name()?))
            }
            0x07 => Value::Ok(Box::new(self.value(depth + 1)?)),
            0x08 => Value::Err(Box::new(self.value(depth + 1)?)),
            0x09 => Value::None,
            0x0a => Value::Some(Box::new(self.value(depth + 1)?)),
            0x0b => {
                let n = self.u32()?;
                // every item takes at least one byte: a length beyond the input is a lie
                if n > self.bytes.len() - self.pos {
                    return Err(DecodeError::Truncated(self.pos));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            0x0c => {
                let n = self.u32()?;
                if n > self.bytes.len() - self.pos {
                    return Err(DecodeError::Truncated(self.pos));
                }
                let mut fields = BTreeMap::new();
                let mut last: Option<String> = None;
                for _ in 0..n {
                    let k = self.name()?;
                    if last.as_ref().is_some_and(|l| *l >= k) {
                        return Err(DecodeError::NonCanonicalTuple);
                    }
                    let v = self.value(depth + 1)?;
                    last = Some(k.clone());
                    fields.insert(k, v);
                }
                Value::Tuple(fields)
            }
            0x0d => {
                let n = self.u32()?;
                let b = self.take(n)?;
                if !b
                    .iter()
                    .all(|c| (0x20..=0x7e).contains(c) || matches!(c, b'\t' | b'\n' | b'\r'))
                {
                    return Err(DecodeError::BadAscii);
                }
                Value::Ascii(String::from_utf8_lossy(b).into_owned())
            }
            0x0e => {
                let n = self.u32()?;
                let b = self.take(n)?;
                Value::Utf8(
                    std::str::from_utf8(b)
                        .map_err(|_| DecodeError::BadUtf8)?
                        .to_string(),
                )
            }
            t => return Err(DecodeError::UnknownType(t, at)),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Standard(a) => write!(f, "{a}"),
            Principal::Contract(a, n) => write!(f, "{a}.{n}"),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            None => Ok(Principal::Standard(
                s.parse().map_err(DecodeError::BadPrincipal)?,
            )),
            Some((a, n)) => {
                let valid = !n.is_empty()
                    && n.len() <= 128
                    && n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
                if !valid {
                    return Err(DecodeError::BadName);
                }
                Ok(Principal::Contract(
                    a.parse().map_err(DecodeError::BadPrincipal)?,
                    n.to_string(),
                ))
            }
        }
    }
}

/// Clarity notation, as `cvToString` in @stacks/transactions writes it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "u{u}"),
            Value::Buffer(b) => write!(f, "0x{}", hex::encode(b)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Principal(p) => write!(f, "{p}"),
            Value::Ok(v) => write!(f, "(ok {v})"),
            Value::Err(v) => write!(f, "(err {v})"),
            Value::None => write!(f, "none"),
            Value::Some(v) => write!(f, "(some {v})"),
            Value::List(items) => {
                write!(f, "(list")?;
                for i in items {
                    write!(f, " {i}")?;
                }
                write!(f, ")")
            }
            Value::Tuple(fields) => {
                write!(f, "(tuple")?;
                for (k, v) in fields {
                    write!(f, " ({k} {v})")?;
                }
                write!(f, ")")
            }
            Value::Ascii(s) => write!(f, "{}", quote(s)),
            Value::Utf8(s) => write!(f, "u{}", quote(s)),
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses Clarity notation (the literals `Display` writes) back into a value.
pub fn parse(text: &str) -> Result<Value, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let v = parse_tokens(&tokens, &mut pos, 0)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?} after the value", tokens[pos]));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Str(String, bool),
    Atom(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            _ => {
                let mut atom = String::new();
                let mut utf8 = false;
                if c == 'u' {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek() == Some(&'"') {
                        chars.next();
                        utf8 = true;
                    }
                }
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated string".into()),
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some('r') => s.push('\r'),
                                Some(e @ ('"' | '\\')) => s.push(e),
                                other => return Err(format!("bad escape \\{other:?}")),
                            },
                            Some(ch) => s.push(ch),
                        }
                    }
                    out.push(Token::Str(s, utf8));
                    continue;
                }
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == '(' || ch == ')' {
                        break;
                    }
                    atom.push(ch);
                    chars.next();
                }
                out.push(Token::Atom(atom));
            }
        }
    }
    Ok(out)
}

fn parse_tokens(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    let tok = tokens.get(*pos).ok_or("unexpected end")?.clone();
    *pos += 1;
    match tok {
        Token::Str(s, true) => Ok(Value::Utf8(s)),
        Token::Str(s, false) => {
            if !s
                .bytes()
                .all(|c| (0x20..=0x7e).contains(&c) || matches!(c, b'\t' | b'\n' | b'\r'))
            {
                return Err("string-ascii with non-ASCII characters".into());
            }
            Ok(Value::Ascii(s))
        }
        Token::Close => Err("unexpected )".into()),
        Token::Atom(a) => parse_atom(&a),
        Token::Open => {
            let head = match tokens.get(*pos) {
                Some(Token::Atom(h)) => h.clone(),
                other => return Err(format!("expected a form name, got {other:?}")),
            };
            *pos += 1;
            let mut items = Vec::new();
            let value = match head.as_str() {
                "tuple" => {
                    let mut fields = BTreeMap::new();
                    while tokens.get(*pos) == Some(&Token::Open) {
                        *pos += 1;
                        let key = match tokens.get(*pos) {
                            Some(Token::Atom(k)) => k.clone(),
                            other => return Err(format!("expected a tuple key, got {other:?}")),
                        };
                        *pos += 1;
                        let v = parse_tokens(tokens, pos, depth + 1)?;
                        if tokens.get(*pos) != Some(&Token::Close) {
                            return Err("expected ) after a tuple field".into());
                        }
                        *pos += 1;
                        if fields.insert(key.clone(), v).is_some() {
                            return Err(format!("duplicate tuple key {key}"));
                        }
                    }
                    Value::Tuple(fields)
                }
                "list" | "ok" | "err" | "some" => {
                    while tokens.get(*pos).is_some_and(|t| *t != Token::Close) {
                        items.push(parse_tokens(tokens, pos, depth + 1)?);
                    }
                    let one = |mut items: Vec<Value>| -> Result<Box<Value>, String> {
                        if items.len() != 1 {
                            return Err(format!("({head} ...) takes one value"));
                        }
                        Ok(Box::new(items.remove(0)))
                    };
                    match head.as_str() {
                        "list" => Value::List(items),
                        "ok" => Value::Ok(one(items)?),
                        "err" => Value::Err(one(items)?),
                        _ => Value::Some(one(items)?),
                    }
                }
                other => return Err(format!("unknown form ({other} ...)")),
            };
            if tokens.get(*pos) != Some(&Token::Close) {
                return Err("expected )".into());
            }
            *pos += 1;
            Ok(value)
        }
    }
}

fn parse_atom(a: &str) -> Result<Value, String> {
    match a {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "none" => return Ok(Value::None),
        _ => {}
    }
    if let Some(h) = a.strip_prefix("0x") {
        return hex::decode(h)
            .map(Value::Buffer)
            .map_err(|e| format!("bad buffer {a}: {e}"));
    }
    if let Some(u) = a.strip_prefix('u') {
        return u
            .parse::<u128>()
            .map(Value::UInt)
            .map_err(|e| format!("bad uint {a}: {e}"));
    }
    if a.starts_with('S') {
        return a
            .parse::<Principal>()
            .map(Value::Principal)
            .map_err(|e| e.to_string());
    }
    if let Some(p) = a.strip_prefix('\'') {
        return p
            .parse::<Principal>()
            .map(Value::Principal)
            .map_err(|e| e.to_string());
    }
    a.parse::<i128>()
        .map(Value::Int)
        .map_err(|_| format!("unknown literal {a}"))
}

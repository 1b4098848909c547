//! The consensus deserialization (SIP-005), safe on bytes from outside: every length is
//! checked before it is read, nesting is bounded, tuple keys must be in canonical order.
//!
//! It must not: panic on any input.

use std::collections::BTreeMap;

use super::*;

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
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
        Address::new(version, self.array()?).map_err(DecodeError::BadPrincipal)
    }

    pub(super) fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
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

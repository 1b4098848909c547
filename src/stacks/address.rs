//! Stacks addresses: a version byte and the hash160 of a public key (or script), written in
//! c32check (`ST…`/`SN…` testnet, `SP…`/`SM…` mainnet) by stacks-rs.
//!
//! It must not: do I/O.

use std::fmt;

use secp256k1::PublicKey;
use stacks_rs::crypto::c32;

/// Address versions (single-sig P2PKH; multi-sig P2SH).
pub const TESTNET_SINGLE_SIG: u8 = 26;
pub const TESTNET_MULTI_SIG: u8 = 21;
pub const MAINNET_SINGLE_SIG: u8 = 22;
pub const MAINNET_MULTI_SIG: u8 = 20;

/// The longest c32check address: `S`, the version's character, then 24 bytes (the hash160
/// and a 4-byte checksum) in at most 39 characters.
const MAX_TEXT: usize = 41;

/// A version (below 32) and a hash160, with its c32check text, written once when it is made:
/// a request's signer is written several times per grant (store keys, the token, the audit
/// entry, the record), and each writing costs two SHA-256 and a few allocations.
#[derive(Clone, Copy)]
pub struct Address {
    version: u8,
    hash160: [u8; 20],
    text: [u8; MAX_TEXT],
    text_len: u8,
}

impl Address {
    /// The address of `hash160` under `version` (below 32: a c32 character).
    pub fn new(version: u8, hash160: [u8; 20]) -> Result<Address, String> {
        if version >= 32 {
            return Err(format!("address version {version} (at most 31)"));
        }
        let text = c32::c32check_encode(hash160, version)
            .map_err(|e| format!("address version {version}: {e}"))?;
        let mut address = Address {
            version,
            hash160,
            text: [0; MAX_TEXT],
            text_len: 0,
        };
        let len = text.len() + 1;
        if len > MAX_TEXT {
            return Err(format!("address text {text:?} is too long"));
        }
        address.text[0] = b'S';
        address.text[1..len].copy_from_slice(text.as_bytes());
        address.text_len = len as u8;
        Ok(address)
    }

    /// The single-signature address of a public key.
    pub fn from_public_key(key: &PublicKey, mainnet: bool) -> Address {
        let hash = c32::hash_p2pkh(&key.serialize());
        let version = if mainnet {
            MAINNET_SINGLE_SIG
        } else {
            TESTNET_SINGLE_SIG
        };
        Address::new(version, hash.into_bytes()).expect("a single-sig version is below 32")
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn hash160(&self) -> &[u8; 20] {
        &self.hash160
    }

    /// The c32check text (`ST…`).
    pub fn as_str(&self) -> &str {
        // c32 characters and `S` only (`new`)
        std::str::from_utf8(&self.text[..usize::from(self.text_len)]).unwrap_or_default()
    }

    pub fn is_mainnet(&self) -> bool {
        matches!(self.version, MAINNET_SINGLE_SIG | MAINNET_MULTI_SIG)
    }
}

// what the address is: its version and hash160 (its text follows from them)
impl PartialEq for Address {
    fn eq(&self, other: &Address) -> bool {
        (self.version, self.hash160) == (other.version, other.hash160)
    }
}

impl Eq for Address {}

impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.version, self.hash160).hash(state)
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Address) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Address) -> std::cmp::Ordering {
        (self.version, self.hash160).cmp(&(other.version, other.hash160))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Address")
            .field("version", &self.version)
            .field("hash160", &self.hash160)
            .finish()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_ascii() || s.len() < 6 || s.len() > 52 {
            return Err(format!("not a Stacks address: {s:?}"));
        }
        let (hash, version) =
            c32::c32_address_decode(s).map_err(|e| format!("not a Stacks address: {s:?} ({e})"))?;
        let hash160: [u8; 20] = hash
            .try_into()
            .map_err(|_| format!("not a Stacks address: {s:?} (hash length)"))?;
        Address::new(version, hash160).map_err(|e| format!("not a Stacks address: {s:?} ({e})"))
    }
}

/// Written as its c32check text (`ST…`), read from it, so configuration holds it parsed.
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_made_once_and_is_what_stacks_rs_writes() {
        for version in [
            TESTNET_SINGLE_SIG,
            TESTNET_MULTI_SIG,
            MAINNET_SINGLE_SIG,
            MAINNET_MULTI_SIG,
        ] {
            for hash160 in [[0u8; 20], [0xff; 20], [7; 20]] {
                let a = Address::new(version, hash160).unwrap();
                assert_eq!(a.to_string(), c32::c32_address(hash160, version).unwrap());
                assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
                assert_eq!((a.version(), *a.hash160()), (version, hash160));
            }
        }
        // any c32 version can be written (stacks-rs writes only the four above)
        assert!(Address::new(0, [1; 20]).unwrap().as_str().starts_with("S0"));
        assert!(Address::new(32, [1; 20]).is_err());
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub version: u8,
    pub hash160: [u8; 20],
}

impl Address {
    /// The single-signature address of a public key.
    pub fn from_public_key(key: &PublicKey, mainnet: bool) -> Address {
        let hash = c32::hash_p2pkh(&key.serialize());
        let version = if mainnet {
            MAINNET_SINGLE_SIG
        } else {
            TESTNET_SINGLE_SIG
        };
        Address {
            version,
            hash160: hash.into_bytes(),
        }
    }

    pub fn is_mainnet(&self) -> bool {
        matches!(self.version, MAINNET_SINGLE_SIG | MAINNET_MULTI_SIG)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // c32 encoding of 20 bytes with a version below 32 cannot fail
        let s = c32::c32_address(self.hash160, self.version).map_err(|_| fmt::Error)?;
        f.write_str(&s)
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
        if version >= 32 {
            return Err(format!("not a Stacks address: {s:?} (version {version})"));
        }
        Ok(Address { version, hash160 })
    }
}

/// Written as its c32check text (`ST…`), read from it, so configuration holds it parsed.
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

//! SIP-018 signed structured data: the hash wallets sign, and recovery of the signer.
//!
//! hash = sha256("SIP018" || sha256(domain) || sha256(message)), where domain and message are
//! Clarity values (the domain a tuple `{name, version, chain-id}`). Wallets return a 65-byte
//! recoverable signature in RSV order: r || s || recovery id.
//!
//! It must not: do I/O.

use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, PublicKey, SECP256K1};
use sha2::{Digest, Sha256};

use super::address::Address;
use super::clarity::Value;

pub const PREFIX: &[u8; 6] = b"SIP018";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("a signature is 65 bytes (r, s, recovery id), got {0}")]
    Length(usize),
    #[error("recovery id must be 0 or 1, got {0}")]
    RecoveryId(u8),
    #[error("signature is not canonical (high S)")]
    HighS,
    #[error("signature does not recover a public key")]
    Invalid,
}

/// The bytes whose sha256 is signed: prefix, domain hash, message hash.
pub fn encode(domain: &Value, message: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(70);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(&Sha256::digest(domain.serialize()));
    out.extend_from_slice(&Sha256::digest(message.serialize()));
    out
}

/// The SIP-018 message hash.
pub fn message_hash(domain: &Value, message: &Value) -> [u8; 32] {
    Sha256::digest(encode(domain, message)).into()
}

/// The domain tuple `{name, version, chain-id}`.
pub fn domain(name: &str, version: &str, chain_id: u32) -> Value {
    Value::tuple([
        ("name", Value::ascii(name)),
        ("version", Value::ascii(version)),
        ("chain-id", Value::UInt(chain_id.into())),
    ])
}

/// Recovers the public key that made `signature` (RSV) over `hash`. Malleable (high-S)
/// signatures are refused, so one message has one accepted signature per key.
pub fn recover(hash: &[u8; 32], signature: &[u8]) -> Result<PublicKey, SignatureError> {
    if signature.len() != 65 {
        return Err(SignatureError::Length(signature.len()));
    }
    let v = signature[64];
    if v > 1 {
        return Err(SignatureError::RecoveryId(v));
    }
    let standard =
        Signature::from_compact(&signature[..64]).map_err(|_| SignatureError::Invalid)?;
    let mut normalized = standard;
    normalized.normalize_s();
    if normalized != standard {
        return Err(SignatureError::HighS);
    }
    let id = RecoveryId::from_i32(i32::from(v)).map_err(|_| SignatureError::RecoveryId(v))?;
    let sig = RecoverableSignature::from_compact(&signature[..64], id)
        .map_err(|_| SignatureError::Invalid)?;
    let msg = Message::from_digest(*hash);
    // the recovered key satisfies the verification equation by construction (Q = r⁻¹(sR − eG)),
    // so verifying again would only double the cost
    SECP256K1
        .recover_ecdsa(&msg, &sig)
        .map_err(|_| SignatureError::Invalid)
}

/// Signs `hash` in RSV order, as a wallet would (for tests and tools; the service never
/// signs SIP-018 messages for clinicians).
pub fn sign(hash: &[u8; 32], key: &secp256k1::SecretKey) -> [u8; 65] {
    let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(*hash), key);
    let (id, rs) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&rs);
    out[64] = id.to_i32() as u8;
    out
}

/// The signer's testnet and mainnet single-sig principals.
pub fn principals(key: &PublicKey) -> (Address, Address) {
    (
        Address::from_public_key(key, false),
        Address::from_public_key(key, true),
    )
}

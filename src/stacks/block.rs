//! Nakamoto blocks (SIP-005 encoding, as stacks-core's `NakamotoBlock`): the header, enough
//! of a block served by `GET /v3/blocks/height/{h}` to name it, and the transactions after it
//! (`decode_block`: a u32 count, then each transaction, `tx::decode_prefix`). A block's hash is sha512/256
//! of its header without the signer signatures (signers sign that hash); its index block hash,
//! the id the event observer and the RPC use, is sha512/256 of the block hash then the
//! consensus hash. Safe on untrusted bytes: every length is checked before it is read.
//!
//! It must not: trust a length before checking it.

use sha2::{Digest, Sha512_256};

use super::tx::{decode_prefix, DecodedTx};

/// Header versions from this one on (the low 7 bits; the high bit marks a shadow block) end
/// with a list of problematic transactions (stacks-core `NAKAMOTO_BLOCK_VERSION_EPOCH_4`).
const VERSION_WITH_PROBLEMATIC_TXS: u8 = 2;
const PROBLEMATIC_TX_BYTES: usize = 32;
const MAX_PROBLEMATIC_TXS: usize = 4096;
const MAX_SIGNERS: usize = 4096;
const SIGNATURE_BYTES: usize = 65;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// The block's height (`chain_length`).
    pub height: u64,
    pub consensus_hash: [u8; 20],
    pub parent_block_id: [u8; 32],
    /// Unix seconds, as the miner set them.
    pub timestamp: u64,
    /// The index block hash.
    pub block_id: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a Nakamoto block: {0}")]
pub struct HeaderError(String);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HeaderError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| HeaderError(format!("{what} runs past the end")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self, what: &str) -> Result<usize, HeaderError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self, what: &str) -> Result<usize, HeaderError> {
        let b = self.take(4, what)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| HeaderError(format!("{what} too long")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, HeaderError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], HeaderError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

/// Reads the header at the start of `bytes` (a whole block or the header alone).
pub fn decode_header(bytes: &[u8]) -> Result<BlockHeader, HeaderError> {
    header_and_length(bytes).map(|(header, _)| header)
}

/// Reads a whole block: its header and its transactions, in order. Refused if a transaction
/// is of a kind this decoder does not know, or bytes are left over.
pub fn decode_block(bytes: &[u8]) -> Result<(BlockHeader, Vec<DecodedTx>), HeaderError> {
    let (header, at) = header_and_length(bytes)?;
    let mut r = Reader { bytes, at };
    let count = r.u32("the transactions' count")?;
    let mut txs = Vec::new();
    for i in 0..count {
        let (tx, used) = decode_prefix(&bytes[r.at..])
            .map_err(|e| HeaderError(format!("transaction {i}: {e}")))?;
        r.at += used;
        txs.push(tx);
    }
    if r.at != bytes.len() {
        return Err(HeaderError(format!(
            "{} bytes after the last transaction",
            bytes.len() - r.at
        )));
    }
    Ok((header, txs))
}

/// The header at the start of `bytes`, and how many bytes it took.
fn header_and_length(bytes: &[u8]) -> Result<(BlockHeader, usize), HeaderError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.take(1, "version")?[0];
    let height = r.u64("chain_length")?;
    r.u64("burn_spent")?;
    let consensus_hash = r.array::<20>("consensus_hash")?;
    let parent_block_id = r.array::<32>("parent_block_id")?;
    r.take(64, "tx_merkle_root and state_index_root")?;
    let timestamp = r.u64("timestamp")?;
    r.take(SIGNATURE_BYTES, "miner_signature")?;
    let signed_end = r.at;
    let signers = r.u32("signer_signature")?;
    if signers > MAX_SIGNERS {
        return Err(HeaderError(format!("{signers} signer signatures")));
    }
    r.take(signers * SIGNATURE_BYTES, "signer_signature")?;
    let rest_start = r.at;
    // pox_treatment: a bit vector (its length in bits, then its bytes as a list)
    let bits = r.u16("pox_treatment")?;
    let data = r.u32("pox_treatment data")?;
    if bits == 0 || data != bits.div_ceil(8) {
        return Err(HeaderError(format!(
            "pox_treatment of {bits} bits in {data} bytes"
        )));
    }
    r.take(data, "pox_treatment data")?;
    if version & 0x7f >= VERSION_WITH_PROBLEMATIC_TXS {
        let n = r.u32("problematic_txs")?;
        if n > MAX_PROBLEMATIC_TXS {
            return Err(HeaderError(format!("{n} problematic transactions")));
        }
        r.take(n * PROBLEMATIC_TX_BYTES, "problematic_txs")?;
    }
    let block_hash = Sha512_256::new()
        .chain_update(&bytes[..signed_end])
        .chain_update(&bytes[rest_start..r.at])
        .finalize();
    let block_id = Sha512_256::new()
        .chain_update(block_hash)
        .chain_update(consensus_hash)
        .finalize()
        .into();
    Ok((
        BlockHeader {
            height,
            consensus_hash,
            parent_block_id,
            timestamp,
            block_id,
        },
        r.at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-0 header with `signers` signer signatures, field by field.
    fn header(signers: u32) -> Vec<u8> {
        let mut h = vec![0u8];
        h.extend(7u64.to_be_bytes()); // chain_length
        h.extend(0u64.to_be_bytes()); // burn_spent
        h.extend([0xcc; 20]); // consensus_hash
        h.extend([0xaa; 32]); // parent_block_id
        h.extend([0x11; 64]); // roots
        h.extend(1_700_000_000u64.to_be_bytes());
        h.extend([0x22; 65]); // miner_signature
        h.extend(signers.to_be_bytes());
        for _ in 0..signers {
            h.extend([0x33; 65]);
        }
        h.extend(9u16.to_be_bytes());
        h.extend(2u32.to_be_bytes());
        h.extend([0xff, 0x01]);
        h
    }

    #[test]
    fn the_block_id_commits_to_everything_but_the_signer_signatures() {
        let a = decode_header(&header(0)).unwrap();
        assert_eq!(a.height, 7);
        assert_eq!(a.parent_block_id, [0xaa; 32]);
        assert_eq!(a.consensus_hash, [0xcc; 20]);
        // signers sign the block hash, so their signatures cannot be part of it
        assert_eq!(decode_header(&header(3)).unwrap().block_id, a.block_id);
        let mut other = header(0);
        other[10] ^= 1; // burn_spent
        assert_ne!(decode_header(&other).unwrap().block_id, a.block_id);
        // what follows the header (the transactions) is not read
        let mut block = header(0);
        block.extend([0, 0, 0, 0]);
        assert_eq!(decode_header(&block).unwrap().block_id, a.block_id);
    }

    #[test]
    fn truncated_or_inconsistent_headers_are_refused_without_panicking() {
        let h = header(1);
        for n in 0..h.len() {
            assert!(decode_header(&h[..n]).is_err(), "{n} bytes");
        }
        let mut huge = header(0);
        let at = 1 + 8 + 8 + 20 + 32 + 64 + 8 + 65;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_header(&huge).is_err());
    }
}

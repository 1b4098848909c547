//! Stacks transactions (SIP-005): signed contract calls built with stacks-rs, and a decoder
//! for any transaction a Nakamoto block holds (every payload kind stacks-core serializes),
//! used by the operator tools, to check what we send, and to walk a block's transactions
//! (`decode_prefix`: one transaction at the start of a slice, and how long it is).
//!
//! It must not: do I/O, or panic on any input it decodes.

use secp256k1::SecretKey;
use sha2::{Digest, Sha512_256};
use stacks_rs::clarity::{Codec, FnArguments};
use stacks_rs::transaction::{
    Network, PostConditionMode, STXContractCall, StacksMainnet, StacksTestnet,
};

use super::address::{
    Address, MAINNET_MULTI_SIG, MAINNET_SINGLE_SIG, TESTNET_MULTI_SIG, TESTNET_SINGLE_SIG,
};
use super::clarity::{DecodeError, Value};

pub const TESTNET_CHAIN_ID: u32 = 0x8000_0000;
pub const MAINNET_CHAIN_ID: u32 = 0x0000_0001;

#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("transaction ends early at byte {0}")]
    Truncated(usize),
    #[error("bad transaction: {0}")]
    Malformed(String),
    #[error(transparent)]
    Value(#[from] DecodeError),
    #[error("building the transaction failed: {0}")]
    Build(String),
}

/// A contract call to sign: the service's writes (record-emergency-access, anchor-audit, ...).
#[derive(Debug, Clone)]
pub struct ContractCall {
    pub contract: Address,
    pub contract_name: String,
    pub function: String,
    pub args: Vec<Value>,
    pub nonce: u64,
    pub fee: u64,
    pub mainnet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    pub bytes: Vec<u8>,
    pub txid: [u8; 32],
}

impl SignedTx {
    pub fn txid_hex(&self) -> String {
        hex::encode(self.txid)
    }
}

/// The txid: sha512/256 of the signed transaction's bytes.
pub fn txid(bytes: &[u8]) -> [u8; 32] {
    Sha512_256::digest(bytes).into()
}

/// Builds and signs a contract call in post-condition deny mode (the contracts move no assets).
pub fn sign_contract_call(call: &ContractCall, key: &SecretKey) -> Result<SignedTx, TxError> {
    if call.mainnet {
        sign_on(call, key, StacksMainnet::new())
    } else {
        sign_on(call, key, StacksTestnet::new())
    }
}

fn sign_on<N: Network>(
    call: &ContractCall,
    key: &SecretKey,
    network: N,
) -> Result<SignedTx, TxError> {
    let build = |e: &dyn std::fmt::Display| TxError::Build(e.to_string());
    let args = FnArguments::new(call.args.iter().map(Value::to_stacks_rs).collect());
    let tx = STXContractCall::builder()
        .address(call.contract.to_string())
        .contract(call.contract_name.clone())
        .fn_name(call.function.clone())
        .fn_args(args)
        .sender(*key)
        .network(network)
        .fee(call.fee)
        .nonce(call.nonce)
        .post_condition_mode(PostConditionMode::Deny)
        .build()
        .transaction()
        .map_err(|e| build(&e))?;
    let signed = tx.sign(*key).map_err(|e| build(&e))?;
    let bytes = signed.encode().map_err(|e| build(&e))?;
    Ok(SignedTx {
        txid: txid(&bytes),
        bytes,
    })
}

// ----------------------------------------------------------------------------- decoding

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodedTx {
    pub txid: String,
    pub version: u8,
    pub chain_id: u32,
    pub sponsored: bool,
    pub origin: String,
    pub hash_mode: u8,
    pub nonce: u64,
    pub fee: u64,
    pub anchor_mode: u8,
    pub post_condition_mode: &'static str,
    pub post_conditions: usize,
    pub payload: Payload,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Payload {
    ContractCall {
        contract: String,
        function: String,
        args: Vec<String>,
        /// The arguments as values (`args` is their notation).
        #[serde(skip)]
        values: Vec<Value>,
    },
    TokenTransfer {
        recipient: String,
        amount: u64,
        memo: String,
    },
    SmartContract {
        name: String,
        clarity_version: Option<u8>,
        code_bytes: usize,
    },
    /// A coinbase: of epoch 2 (`vrf_proof: false`), or of a Nakamoto tenure.
    Coinbase {
        alt_recipient: Option<String>,
        vrf_proof: bool,
    },
    /// A tenure change (`cause`: 0 a block found, 1 an extension, later ones extensions of
    /// one budget).
    TenureChange {
        cause: u8,
        previous_tenure_blocks: u32,
    },
    PoisonMicroblock,
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TxError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(TxError::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TxError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TxError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, TxError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, TxError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn hash160(&mut self) -> Result<[u8; 20], TxError> {
        let mut a = [0u8; 20];
        a.copy_from_slice(self.take(20)?);
        Ok(a)
    }
    fn address(&mut self) -> Result<Address, TxError> {
        let version = self.u8()?;
        Address::new(version, self.hash160()?).map_err(TxError::Malformed)
    }
    fn name(&mut self) -> Result<String, TxError> {
        let n = self.u8()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| TxError::Malformed("name is not text".into()))
    }
    fn value(&mut self) -> Result<Value, TxError> {
        let (v, used) = Value::deserialize_prefix(&self.b[self.pos..])?;
        self.pos += used;
        Ok(v)
    }

    /// A spending condition; returns (hash mode, signer hash, nonce, fee).
    fn spending_condition(&mut self) -> Result<(u8, [u8; 20], u64, u64), TxError> {
        let mode = self.u8()?;
        let signer = self.hash160()?;
        let nonce = self.u64()?;
        let fee = self.u64()?;
        match mode {
            0x00 | 0x02 => {
                let _key_encoding = self.u8()?;
                self.take(65)?;
            }
            0x01 | 0x03 | 0x05 | 0x07 => {
                let fields = self.u32()?;
                for _ in 0..fields {
                    match self.u8()? {
                        0x00 | 0x01 => {
                            self.take(33)?;
                        }
                        0x02 | 0x03 => {
                            self.take(65)?;
                        }
                        t => return Err(TxError::Malformed(format!("auth field type {t}"))),
                    }
                }
                self.u16()?;
            }
            m => return Err(TxError::Malformed(format!("hash mode {m}"))),
        }
        Ok((mode, signer, nonce, fee))
    }

    fn post_condition(&mut self) -> Result<(), TxError> {
        let kind = self.u8()?;
        match self.u8()? {
            0x01 => {}
            0x02 => {
                self.address()?;
            }
            0x03 => {
                self.address()?;
                self.name()?;
            }
            p => {
                return Err(TxError::Malformed(format!(
                    "post-condition principal type {p}"
                )))
            }
        }
        match kind {
            0x00 => {
                self.u8()?;
                self.u64()?;
            }
            0x01 => {
                self.address()?;
                self.name()?;
                self.name()?;
                self.u8()?;
                self.u64()?;
            }
            0x02 => {
                self.address()?;
                self.name()?;
                self.name()?;
                self.value()?;
                self.u8()?;
            }
            // staking (epoch 4): a condition code and an amount
            0x03 => {
                self.u8()?;
                self.u64()?;
            }
            // a PoX operation (epoch 4): a condition code
            0x04 => {
                self.u8()?;
            }
            k => return Err(TxError::Malformed(format!("post-condition type {k}"))),
        }
        Ok(())
    }
}

/// Decodes one whole transaction; trailing bytes are an error.
pub fn decode(bytes: &[u8]) -> Result<DecodedTx, TxError> {
    let (tx, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(TxError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(tx)
}

/// A microblock header (epoch 2, named by a poison-microblock transaction): version,
/// sequence, parent, merkle root, signature.
const MICROBLOCK_HEADER_BYTES: usize = 1 + 2 + 32 + 32 + 65;
const COINBASE_BYTES: usize = 32;
const VRF_PROOF_BYTES: usize = 80;
/// A tenure change's fields: three consensus hashes, the previous tenure's last block, its
/// block count, the cause, the miner's key hash.
const TENURE_CHANGE_BYTES: usize = 20 + 20 + 20 + 32 + 4;

/// Decodes the transaction at the start of `bytes`; returns it (its txid over the bytes it
/// took) and how many bytes it took.
pub fn decode_prefix(bytes: &[u8]) -> Result<(DecodedTx, usize), TxError> {
    let mut r = R { b: bytes, pos: 0 };
    let version = r.u8()?;
    let mainnet = match version {
        0x00 => true,
        0x80 => false,
        v => return Err(TxError::Malformed(format!("transaction version 0x{v:02x}"))),
    };
    let chain_id = r.u32()?;
    let auth_type = r.u8()?;
    let (hash_mode, signer, nonce, fee) = match auth_type {
        0x04 => r.spending_condition()?,
        0x05 => {
            let origin = r.spending_condition()?;
            r.spending_condition()?;
            origin
        }
        t => return Err(TxError::Malformed(format!("auth type 0x{t:02x}"))),
    };
    let anchor_mode = r.u8()?;
    let post_condition_mode = match r.u8()? {
        0x01 => "allow",
        0x02 => "deny",
        // deny for the originator's assets, allow for others (SIP-040)
        0x03 => "originator",
        m => return Err(TxError::Malformed(format!("post-condition mode {m}"))),
    };
    let post_conditions = r.u32()? as usize;
    for _ in 0..post_conditions {
        r.post_condition()?;
    }
    let payload = match r.u8()? {
        0x02 => {
            let address = r.address()?;
            let contract = r.name()?;
            let function = r.name()?;
            let n = r.u32()?;
            let mut values = Vec::new();
            for _ in 0..n {
                values.push(r.value()?);
            }
            Payload::ContractCall {
                contract: format!("{address}.{contract}"),
                function,
                args: values.iter().map(Value::to_string).collect(),
                values,
            }
        }
        0x00 => {
            let recipient = r.value()?.to_string();
            let amount = r.u64()?;
            let memo = String::from_utf8_lossy(r.take(34)?)
                .trim_end_matches('\0')
                .to_string();
            Payload::TokenTransfer {
                recipient,
                amount,
                memo,
            }
        }
        t @ (0x01 | 0x06) => {
            let clarity_version = if t == 0x06 { Some(r.u8()?) } else { None };
            let name = r.name()?;
            let n = r.u32()? as usize;
            r.take(n)?;
            Payload::SmartContract {
                name,
                clarity_version,
                code_bytes: n,
            }
        }
        0x03 => {
            r.take(2 * MICROBLOCK_HEADER_BYTES)?;
            Payload::PoisonMicroblock
        }
        0x04 => {
            r.take(COINBASE_BYTES)?;
            Payload::Coinbase {
                alt_recipient: None,
                vrf_proof: false,
            }
        }
        0x05 => {
            r.take(COINBASE_BYTES)?;
            let recipient = r.value()?;
            if !matches!(recipient, Value::Principal(_)) {
                return Err(TxError::Malformed(
                    "coinbase recipient is not a principal".into(),
                ));
            }
            Payload::Coinbase {
                alt_recipient: Some(recipient.to_string()),
                vrf_proof: false,
            }
        }
        0x07 => {
            let fields = r.take(TENURE_CHANGE_BYTES)?;
            let blocks = u32::from_be_bytes(
                fields[TENURE_CHANGE_BYTES - 4..]
                    .try_into()
                    .unwrap_or([0; 4]),
            );
            let cause = r.u8()?;
            r.hash160()?;
            Payload::TenureChange {
                cause,
                previous_tenure_blocks: blocks,
            }
        }
        0x08 => {
            r.take(COINBASE_BYTES)?;
            let alt_recipient = match r.value()? {
                Value::None => None,
                Value::Some(p) if matches!(*p, Value::Principal(_)) => Some(p.to_string()),
                _ => {
                    return Err(TxError::Malformed(
                        "coinbase recipient is not an optional principal".into(),
                    ))
                }
            };
            r.take(VRF_PROOF_BYTES)?;
            Payload::Coinbase {
                alt_recipient,
                vrf_proof: true,
            }
        }
        t => return Err(TxError::Malformed(format!("payload type {t}"))),
    };
    let used = r.pos;
    let bytes = &bytes[..used];
    let address_version = match (mainnet, hash_mode) {
        (true, 0x00) => MAINNET_SINGLE_SIG,
        (true, _) => MAINNET_MULTI_SIG,
        (false, 0x00) => TESTNET_SINGLE_SIG,
        (false, _) => TESTNET_MULTI_SIG,
    };
    let tx = DecodedTx {
        txid: hex::encode(txid(bytes)),
        version,
        chain_id,
        sponsored: auth_type == 0x05,
        origin: Address::new(address_version, signer)
            .map_err(TxError::Malformed)?
            .to_string(),
        hash_mode,
        nonce,
        fee,
        anchor_mode,
        post_condition_mode,
        post_conditions,
        payload,
    };
    Ok((tx, used))
}

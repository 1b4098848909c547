//! Byte-for-byte agreement with the vectors made by @stacks/transactions
//! (`../shared/vectors/stacks.json`, shipped as `tests/data/stacks-vectors.json`).

use breakglass::stacks::clarity::{self, Value};
use breakglass::stacks::tx::{self, ContractCall, Payload};
use breakglass::stacks::{sip018, Address};
use secp256k1::{PublicKey, SecretKey};
use serde_json::Value as Json;

fn vectors() -> Json {
    // prefer the shared copy, so a new vector there is checked the day it lands
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/stacks.json");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/stacks-vectors.json"
    );
    let text = std::fs::read_to_string(shared)
        .or_else(|_| std::fs::read_to_string(shipped))
        .expect("vectors file");
    serde_json::from_str(&text).expect("vectors JSON")
}

fn s<'a>(v: &'a Json, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector field {k}"))
}

fn unhex(h: &str) -> Vec<u8> {
    hex::decode(h.trim_start_matches("0x")).expect("hex")
}

/// Keys in the vectors carry the trailing 01 "compressed" marker of stacks.js.
fn secret(h: &str) -> SecretKey {
    SecretKey::from_slice(&unhex(h)[..32]).expect("secret key")
}

#[test]
fn sip018_hashes_signatures_and_signers() {
    let v = vectors();
    let cases = v["sip018"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let domain = Value::deserialize(&unhex(s(case, "domain_cv_hex"))).unwrap();
        let message = Value::deserialize(&unhex(s(case, "message_cv_hex"))).unwrap();
        assert_eq!(hex::encode(domain.serialize()), s(case, "domain_cv_hex"));
        assert_eq!(hex::encode(message.serialize()), s(case, "message_cv_hex"));
        let chain_id = if domain.to_string().contains("(chain-id u1)") {
            tx::MAINNET_CHAIN_ID
        } else {
            tx::TESTNET_CHAIN_ID
        };
        assert_eq!(domain, sip018::domain("breakglass", "1", chain_id));
        assert_eq!(
            hex::encode(sip018::encode(&domain, &message)),
            s(case, "encoded_hex")
        );
        let hash = sip018::message_hash(&domain, &message);
        assert_eq!(hex::encode(hash), s(case, "message_hash_hex"));

        let signature = unhex(s(case, "signature_rsv_hex"));
        let key = sip018::recover(&hash, &signature).unwrap();
        assert_eq!(hex::encode(key.serialize()), s(case, "public_key"));
        let (testnet, mainnet) = sip018::principals(&key);
        assert_eq!(testnet.to_string(), s(case, "address_testnet"));
        assert_eq!(mainnet.to_string(), s(case, "address_mainnet"));

        // RFC 6979: signing the same hash with the same key gives the wallet's bytes
        assert_eq!(
            hex::encode(sip018::sign(&hash, &secret(s(case, "private_key")))),
            s(case, "signature_rsv_hex")
        );

        // the same signature over another message recovers someone else, or nothing
        let mut other = hash;
        other[0] ^= 1;
        assert_ne!(sip018::recover(&other, &signature).ok(), Some(key));
    }
}

#[test]
fn contract_calls_sign_to_the_same_bytes_and_txid() {
    let v = vectors();
    let cases = v["contract_call"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        assert_eq!(s(case, "network"), "testnet");
        assert_eq!(s(case, "post_condition_mode"), "deny");
        let (address, name) = s(case, "contract").split_once('.').unwrap();
        let args: Vec<Value> = case["args_cv_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| Value::deserialize(&unhex(a.as_str().unwrap())).unwrap())
            .collect();
        let call = ContractCall {
            contract: address.parse().unwrap(),
            contract_name: name.to_string(),
            function: s(case, "function").to_string(),
            args,
            nonce: case["nonce"].as_u64().unwrap(),
            fee: case["fee"].as_u64().unwrap(),
            mainnet: false,
        };
        let key = secret(s(case, "private_key"));
        let signed = tx::sign_contract_call(&call, &key).unwrap();
        assert_eq!(hex::encode(&signed.bytes), s(case, "tx_hex"));
        assert_eq!(signed.txid_hex(), s(case, "txid"));

        let decoded = tx::decode(&unhex(s(case, "tx_hex"))).unwrap();
        assert_eq!(decoded.txid, s(case, "txid"));
        assert_eq!(decoded.chain_id, tx::TESTNET_CHAIN_ID);
        assert_eq!(decoded.nonce, call.nonce);
        assert_eq!(decoded.fee, call.fee);
        assert_eq!(decoded.post_condition_mode, "deny");
        let origin = Address::from_public_key(
            &PublicKey::from_secret_key(secp256k1::SECP256K1, &key),
            false,
        );
        assert_eq!(decoded.origin, origin.to_string());
        match decoded.payload {
            Payload::ContractCall {
                contract,
                function,
                args,
                ..
            } => {
                assert_eq!(contract, s(case, "contract"));
                assert_eq!(function, s(case, "function"));
                assert_eq!(args.len(), call.args.len());
                for (shown, arg) in args.iter().zip(&call.args) {
                    assert_eq!(&clarity::parse(shown).unwrap(), arg);
                }
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}

#[test]
fn clarity_values_serialize_and_print_alike() {
    let v = vectors();
    let cases = v["clarity"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let from_repr = clarity::parse(s(case, "repr")).unwrap();
        assert_eq!(
            hex::encode(from_repr.serialize()),
            s(case, "hex"),
            "{}",
            s(case, "repr")
        );
        let decoded = Value::deserialize(&unhex(s(case, "hex"))).unwrap();
        assert_eq!(decoded, from_repr);
        // printing and parsing back is the identity (tuples print in canonical key order)
        assert_eq!(clarity::parse(&decoded.to_string()).unwrap(), decoded);
        // and stacks-rs encodes our values to the same bytes
        assert_eq!(
            hex::encode(stacks_rs::clarity::Codec::encode(&*decoded.to_stacks_rs()).unwrap()),
            s(case, "hex")
        );
    }
}

#[test]
fn addresses_from_public_keys() {
    let v = vectors();
    let cases = v["address"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let key = PublicKey::from_slice(&unhex(s(case, "public_key"))).unwrap();
        assert_eq!(
            Address::from_public_key(&key, false).to_string(),
            s(case, "testnet")
        );
        assert_eq!(
            Address::from_public_key(&key, true).to_string(),
            s(case, "mainnet")
        );
        let parsed: Address = s(case, "testnet").parse().unwrap();
        assert_eq!(parsed.to_string(), s(case, "testnet"));
        assert!(!parsed.is_mainnet());
        assert!(s(case, "mainnet").parse::<Address>().unwrap().is_mainnet());
    }
}

/// Transactions of every payload kind a Nakamoto block holds, and a block of them, made by
/// @stacks/transactions (`contracts/scripts/block-vectors.ts`, `tests/data/block-vectors.json`):
/// each decodes with its txid, and the block walks to the same transactions in order.
#[test]
fn every_kind_of_transaction_in_a_block_decodes_with_its_txid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/block-vectors.json");
    let v: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v["transactions"].as_array().unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    let mut modes = std::collections::BTreeSet::new();
    for case in cases {
        let raw = unhex(s(case, "tx_hex"));
        let decoded = tx::decode(&raw).unwrap_or_else(|e| panic!("{}: {e}", s(case, "kind")));
        modes.insert(decoded.post_condition_mode);
        assert_eq!(decoded.txid, s(case, "txid"), "{}", s(case, "kind"));
        assert_eq!(decoded.nonce, case["nonce"].as_u64().unwrap());
        assert_eq!(decoded.sponsored, case["sponsored"].as_bool().unwrap());
        if !s(case, "origin").is_empty() {
            assert_eq!(decoded.origin, s(case, "origin"));
        }
        // one byte short, or one byte more, is refused
        assert!(tx::decode(&raw[..raw.len() - 1]).is_err());
        assert!(tx::decode(&[raw.as_slice(), &[0]].concat()).is_err());
        let kind = match &decoded.payload {
            Payload::ContractCall {
                contract,
                function,
                values,
                ..
            } => {
                assert_eq!(contract, s(case, "contract"));
                assert_eq!(function, s(case, "function"));
                let args: Vec<String> = values
                    .iter()
                    .map(|a| a.to_hex().trim_start_matches("0x").to_string())
                    .collect();
                let expected: Vec<String> = case["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().trim_start_matches("0x").to_string())
                    .collect();
                assert_eq!(args, expected);
                "contract-call"
            }
            Payload::TenureChange { cause: 0, .. } => "tenure-change",
            Payload::TenureChange { cause: 1, .. } => "tenure-extend",
            Payload::Coinbase { .. } => "coinbase",
            Payload::TokenTransfer { .. } => "token-transfer",
            Payload::SmartContract { .. } => "smart-contract",
            other => panic!("decoded as {other:?}"),
        };
        assert_eq!(kind, s(case, "kind"));
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 6, "every kind is in the vectors: {kinds:?}");
    assert_eq!(
        modes,
        ["allow", "deny", "originator"].into_iter().collect(),
        "every post-condition mode"
    );

    let block = &v["block"];
    let bytes = unhex(s(block, "hex"));
    let (header, txs) = breakglass::stacks::block::decode_block(&bytes).unwrap();
    assert_eq!(header.height, block["height"].as_u64().unwrap());
    assert_eq!(hex::encode(header.block_id), s(block, "index_block_hash"));
    let txids: Vec<&str> = txs.iter().map(|t| t.txid.as_str()).collect();
    let expected: Vec<&str> = block["txids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(txids, expected);
    // a block cut short, or with bytes after its last transaction, is refused
    assert!(breakglass::stacks::block::decode_block(&bytes[..bytes.len() - 1]).is_err());
    assert!(breakglass::stacks::block::decode_block(&[bytes.as_slice(), &[0]].concat()).is_err());
}

/// A poison-microblock transaction (epoch 2; @stacks/transactions does not write its headers),
/// laid out as stacks-core's `TransactionPayload::PoisonMicroblock`: two microblock headers.
#[test]
fn a_poison_microblock_transaction_decodes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/block-vectors.json");
    let v: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // a signed coinbase's authorization and modes, with its payload swapped for a poison one
    let coinbase = v["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| s(c, "kind") == "coinbase")
        .unwrap();
    let raw = unhex(s(coinbase, "tx_hex"));
    let payload_at = raw.len() - (1 + 32 + 1 + 80); // type, coinbase, none, vrf proof
    assert_eq!(raw[payload_at], 0x08);
    let header = |seq: u8| [vec![0u8, 0, seq], vec![7; 32], vec![8; 32], vec![9; 65]].concat();
    let poison = [&raw[..payload_at], &[0x03], &header(1), &header(2)].concat();
    let decoded = tx::decode(&poison).unwrap();
    assert!(matches!(decoded.payload, Payload::PoisonMicroblock));
    assert!(tx::decode(&poison[..poison.len() - 1]).is_err());
}

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

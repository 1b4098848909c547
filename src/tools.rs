//! Operator tools (`breakglass stacks ...`): decode what is on the wire, as JSON. Each returns
//! a one-line error for input it cannot read.
//!
//! It must not: be used by the service.

use serde_json::{json, Value as Json};

use crate::stacks::tx::{self, Payload};
use crate::stacks::{sip018, Value};

fn bytes(what: &str, hex_str: &str) -> Result<Vec<u8>, String> {
    let h = hex_str.trim();
    if h.strip_prefix("0x").unwrap_or(h).is_empty() {
        return Err(format!("{what}: empty"));
    }
    // (one optional `0x`: the decoder takes it off)
    hex::decode(h).map_err(|e| format!("{what}: not hex ({e})"))
}

fn value(what: &str, hex_str: &str) -> Result<Value, String> {
    Value::deserialize(&bytes(what, hex_str)?)
        .map_err(|e| format!("{what}: not a Clarity value ({e})"))
}

/// `breakglass stacks decode-tx <hex>`
pub fn decode_tx(hex_str: &str) -> Result<Json, String> {
    let raw = bytes("transaction", hex_str)?;
    let d = tx::decode(&raw).map_err(|e| format!("transaction: {e}"))?;
    let mut out = json!({
        "txid": d.txid,
        "origin": d.origin,
        "nonce": d.nonce,
        "fee": d.fee,
        "chain_id": format!("0x{:08x}", d.chain_id),
        "version": format!("0x{:02x}", d.version),
        "sponsored": d.sponsored,
        "post_condition_mode": d.post_condition_mode,
        "post_conditions": d.post_conditions,
    });
    match d.payload {
        Payload::ContractCall {
            contract,
            function,
            args,
            ..
        } => {
            out["type"] = json!("contract-call");
            out["contract"] = json!(contract);
            out["function"] = json!(function);
            out["args"] = json!(args);
        }
        other => out["payload"] = serde_json::to_value(other).unwrap_or(Json::Null),
    }
    Ok(out)
}

/// `breakglass stacks cv <hex>`
pub fn cv(hex_str: &str) -> Result<Json, String> {
    let v = value("value", hex_str)?;
    Ok(json!({ "repr": v.to_string(), "hex": v.to_hex() }))
}

/// `breakglass stacks sip018-verify --domain <hex> --message <hex> --signature <hex>`
pub fn sip018_verify(
    domain_hex: &str,
    message_hex: &str,
    signature_hex: &str,
) -> Result<Json, String> {
    let domain = value("domain", domain_hex)?;
    let message = value("message", message_hex)?;
    let signature = bytes("signature", signature_hex)?;
    let hash = sip018::message_hash(&domain, &message);
    let key = sip018::recover(&hash, &signature).map_err(|e| format!("signature: {e}"))?;
    let (testnet, mainnet) = sip018::principals(&key);
    Ok(json!({
        "message_hash": hex::encode(hash),
        "domain": domain.to_string(),
        "message": message.to_string(),
        "public_key": hex::encode(key.serialize()),
        "testnet": testnet.to_string(),
        "mainnet": mainnet.to_string(),
    }))
}

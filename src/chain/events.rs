//! The event-observer payload (`POST /new_block`) and what its contract print events change
//! in the chain-state cache. Pure functions: the follower applies their result atomically.

use serde::Deserialize;

use super::contracts::{self, Contracts};
use crate::domain::{ProviderStatus, Purpose};
use crate::stacks::Value;
use crate::store::{Batch, Consent, ConsentKey, Preferences, ProviderState, Store, StoreError};

#[derive(Debug, Clone, Deserialize)]
pub struct NewBlock {
    pub block_height: u64,
    pub index_block_hash: String,
    #[serde(default)]
    pub parent_index_block_hash: String,
    #[serde(default)]
    pub transactions: Vec<BlockTx>,
    #[serde(default)]
    pub events: Vec<BlockEvent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockTx {
    pub txid: String,
    pub status: String,
    #[serde(default)]
    pub raw_result: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockEvent {
    #[serde(default)]
    pub txid: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub contract_event: Option<ContractEvent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContractEvent {
    pub contract_identifier: String,
    pub topic: String,
    pub raw_value: String,
}

/// A print event of one of our contracts, decoded.
#[derive(Debug, Clone)]
pub struct Print {
    pub topic: String,
    pub value: Value,
}

pub fn hash32(hex_str: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(b) = hex::decode(hex_str.trim_start_matches("0x")) {
        if b.len() == 32 {
            out.copy_from_slice(&b);
        }
    }
    out
}

/// The prints of our contracts in a block, in order. Events of failed transactions are not
/// committed by the node and are skipped.
pub fn prints(block: &NewBlock, contracts: &Contracts) -> Vec<Print> {
    block
        .events
        .iter()
        .filter(|e| e.kind == "contract_event")
        .filter_map(|e| e.contract_event.as_ref())
        .filter(|c| c.topic == "print" && contracts.is_ours(&c.contract_identifier))
        .filter_map(|c| {
            let value = Value::from_hex(&c.raw_value).ok()?;
            let topic = contracts::ascii(value.as_tuple()?.get("topic"))?.to_string();
            Some(Print { topic, value })
        })
        .collect()
}

/// Adds to `batch` what the prints change in the cache. `store` is read for what an event
/// does not carry (a role change keeps the cached status); an entry it cannot complete is
/// dropped from the cache, so the next read fills it from the node.
pub fn cache_updates(
    prints: &[Print],
    store: &dyn Store,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    for p in prints {
        let t = &p.value;
        let f = |name: &str| t.as_tuple().and_then(|m| m.get(name));
        match p.topic.as_str() {
            "provider-registered"
            | "provider-verified"
            | "provider-suspended"
            | "provider-reinstated"
            | "provider-revoked"
            | "provider-role-changed"
            | "provider-credentials-updated" => {
                let Some(who) = contracts::principal(f("provider")) else {
                    continue;
                };
                let role = contracts::ascii(f("role")).and_then(|r| r.parse().ok());
                let status = match p.topic.as_str() {
                    "provider-registered" => Some(ProviderStatus::Pending),
                    _ => contracts::ascii(f("status")).and_then(|s| s.parse().ok()),
                };
                // what this batch already says wins over the store
                let known = batch
                    .providers
                    .iter()
                    .rev()
                    .find(|(w, _)| *w == who)
                    .map(|(_, s)| s.clone())
                    .map_or_else(|| store.provider(&who), Ok)?;
                let (old_role, old_status, old_info) = match known {
                    Some(ProviderState::Registered {
                        role,
                        status,
                        info_hash,
                    }) => (Some(role), Some(status), info_hash),
                    _ => (None, None, None),
                };
                // registration and credential updates carry the info-hash; the rest keep it
                let info_hash = contracts::buff32(f("info-hash")).or(old_info);
                let next = match (role.or(old_role), status.or(old_status)) {
                    (Some(role), Some(status)) => Some(ProviderState::Registered {
                        role,
                        status,
                        info_hash,
                    }),
                    _ => None,
                };
                batch.providers.push((who, next));
            }
            "emergency-preferences-set" => {
                let (Some(patient), Some(allow), Some(data_types), Some(max_window)) = (
                    contracts::patient_id(f("patient-id")),
                    contracts::boolean(f("allow")),
                    contracts::data_types(f("data-types")),
                    contracts::uint(f("max-window")).and_then(|u| u64::try_from(u).ok()),
                ) else {
                    continue;
                };
                batch.preferences.push((
                    patient,
                    Preferences {
                        allow,
                        data_types,
                        max_window,
                        is_default: false,
                    },
                ));
            }
            "consent-granted" | "consent-revoked" => {
                let (Some(patient), Some(provider), Some(data_type), Some(purpose)) = (
                    contracts::patient_id(f("patient-id")),
                    contracts::principal(f("provider")),
                    contracts::ascii(f("data-type")).and_then(|d| d.parse().ok()),
                    contracts::ascii(f("purpose")).and_then(|d| d.parse::<Purpose>().ok()),
                ) else {
                    continue;
                };
                let key = ConsentKey {
                    patient,
                    provider,
                    data_type,
                    purpose,
                };
                let consent = if p.topic == "consent-granted" {
                    let expires_at = contracts::uint(f("expires-at"))
                        .and_then(|u| u64::try_from(u).ok())
                        .unwrap_or(0);
                    Consent {
                        active: true,
                        expires_at,
                    }
                } else {
                    let previous = store.consent(&key)?.map_or(0, |c| c.expires_at);
                    Consent {
                        active: false,
                        expires_at: previous,
                    }
                };
                batch.consents.push((key, consent));
            }
            "responder-added" | "responder-removed" => {
                if let Some(who) = contracts::principal(f("principal")) {
                    batch.responders.push((who, p.topic == "responder-added"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

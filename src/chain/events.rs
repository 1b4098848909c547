//! The event-observer payload (`POST /new_block`) and which cache entries its contract print
//! events name. Pure functions. A payload is only a hint: the follower checks the block
//! against the node and reads every named entry back from it.
//!
//! It must not: take a value from a pushed event (only names).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::contracts::{self, Contracts};
use crate::domain::{DataType, PatientId, Purpose};
use crate::stacks::{Address, Value};

/// What the follower reads of a `/new_block` payload: the height and hash it names (checked
/// against the node) and the print events (names to read back). Its transactions, results and
/// parent are not read: the node's own block tells them.
#[derive(Debug, Clone, Deserialize)]
pub struct NewBlock {
    pub block_height: u64,
    pub index_block_hash: String,
    #[serde(default)]
    pub events: Vec<BlockEvent>,
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

/// A 32-byte hash in hex, with or without `0x`.
pub fn parse_hash32(hex_str: &str) -> Option<[u8; 32]> {
    hex::decode(hex_str).ok()?.try_into().ok()
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

/// How many cache entries one block may name; a block naming more is read as a gap (every
/// cached entry read again), so a forged push cannot make the follower ask the node for
/// thousands of entries one by one.
pub const MAX_NAMED: usize = 256;

/// The cache entries a block's print events name. Only names: what an entry now holds is
/// read back from the node (`ChainState::reread`), never taken from a pushed event, which
/// anyone who can reach the observer port could have written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub providers: BTreeSet<Address>,
    pub patients: BTreeSet<PatientId>,
    pub consents: BTreeSet<(PatientId, Address, DataType, Purpose)>,
    pub responders: BTreeSet<Address>,
    pub reviewers: BTreeSet<Address>,
    /// Patients whose summary hash changed.
    pub summaries: BTreeSet<PatientId>,
}

impl Named {
    pub fn len(&self) -> usize {
        self.providers.len()
            + self.patients.len()
            + self.consents.len()
            + self.responders.len()
            + self.reviewers.len()
            + self.summaries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `self` names that `other` does not.
    pub fn minus(&self, other: &Named) -> Named {
        Named {
            providers: self
                .providers
                .difference(&other.providers)
                .cloned()
                .collect(),
            patients: self.patients.difference(&other.patients).cloned().collect(),
            consents: self.consents.difference(&other.consents).cloned().collect(),
            responders: self
                .responders
                .difference(&other.responders)
                .cloned()
                .collect(),
            reviewers: self
                .reviewers
                .difference(&other.reviewers)
                .cloned()
                .collect(),
            summaries: self
                .summaries
                .difference(&other.summaries)
                .cloned()
                .collect(),
        }
    }

    pub fn extend(&mut self, other: Named) {
        self.providers.extend(other.providers);
        self.patients.extend(other.patients);
        self.consents.extend(other.consents);
        self.responders.extend(other.responders);
        self.reviewers.extend(other.reviewers);
        self.summaries.extend(other.summaries);
    }
}

/// What `prints` name (see `Named`).
pub fn named(prints: &[Print]) -> Named {
    let mut out = Named::default();
    for p in prints {
        let f = |name: &str| p.value.as_tuple().and_then(|m| m.get(name));
        match p.topic.as_str() {
            "provider-registered"
            | "provider-verified"
            | "provider-suspended"
            | "provider-reinstated"
            | "provider-revoked"
            | "provider-role-changed"
            | "provider-credentials-updated" => {
                if let Some(who) = contracts::principal(f("provider")) {
                    out.providers.insert(who);
                }
            }
            "emergency-preferences-set" | "patient-registered" => {
                if let Some(patient) = contracts::patient_id(f("patient-id")) {
                    out.patients.insert(patient);
                }
            }
            "consent-granted" | "consent-revoked" => {
                if let (Some(patient), Some(provider), Some(data_type), Some(purpose)) = (
                    contracts::patient_id(f("patient-id")),
                    contracts::principal(f("provider")),
                    contracts::ascii(f("data-type")).and_then(|d| d.parse().ok()),
                    contracts::ascii(f("purpose")).and_then(|d| d.parse::<Purpose>().ok()),
                ) {
                    out.consents.insert((patient, provider, data_type, purpose));
                }
            }
            "responder-added" | "responder-removed" => {
                if let Some(who) = contracts::principal(f("principal")) {
                    out.responders.insert(who);
                }
            }
            "summary-hash-set" | "summary-hash-cleared" => {
                if let Some(p) = contracts::buff32(f("patient-id")) {
                    out.summaries.insert(PatientId(p));
                }
            }
            "reviewer-added" | "reviewer-removed" => {
                if let Some(who) = contracts::principal(f("principal")) {
                    out.reviewers.insert(who);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::Value;

    fn print(topic: &str, fields: Vec<(&str, Value)>) -> Print {
        let mut m: Vec<(String, Value)> = vec![("topic".into(), Value::ascii(topic))];
        m.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
        Print {
            topic: topic.into(),
            value: Value::tuple(m),
        }
    }

    #[test]
    fn a_block_names_entries_and_carries_no_values() {
        let who = "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB";
        let p = contracts::principal_value(who).unwrap();
        let named = named(&[
            print(
                "provider-suspended",
                vec![
                    ("provider", p.clone()),
                    ("status", Value::ascii("verified")),
                ],
            ),
            print(
                "emergency-preferences-set",
                vec![("patient-id", Value::buffer([7; 32]))],
            ),
            print("responder-added", vec![("principal", p)]),
            print("unknown-topic", vec![]),
        ]);
        assert_eq!(named.providers, BTreeSet::from([who.parse().unwrap()]));
        assert_eq!(named.patients, BTreeSet::from([PatientId([7; 32])]));
        assert_eq!(named.responders, BTreeSet::from([who.parse().unwrap()]));
        assert_eq!(named.len(), 3);
    }
}

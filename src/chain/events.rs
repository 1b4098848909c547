//! The event-observer payload (`POST /new_block`) and which cache entries its contract print
//! events name, and which the node's block names by its own calls to our contracts (`called`).
//! Pure functions. A payload is only a hint: the follower checks the block against the node
//! and reads every named entry back from it.
//!
//! It must not: take a value from a pushed event (only names).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::contracts::{self, Contracts};
use crate::domain::{DataType, PatientId, Purpose};
use crate::stacks::tx::{DecodedTx, Payload};
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

/// A patient-consent call acts for the patient who sent it: what it may have changed of theirs
/// (their id is read from the node, `get-patient-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForPatient {
    Preferences,
    Consent(Address, DataType, Purpose),
}

/// What the node's own block names through its transactions (`called`): the calls to our
/// contracts, by function and arguments, with or without their events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Called {
    pub named: Named,
    /// Patient-consent calls, by sender: their patient's entries are named once the sender's
    /// patient id is read.
    pub by_patients: Vec<(Address, ForPatient)>,
}

/// The cache entries the calls to our contracts among `txs` (the node's block, decoded) may
/// have changed, whatever their results (a call refused changed nothing; its entries are read
/// back all the same, harmlessly). A pushed payload's events name the same entries when it is
/// whole; a copy whose events were stripped names nothing, and the block's own transactions
/// still do. Every function of ours acts for its direct caller (`tx-sender` equals
/// `contract-caller`), so a call made by another contract (one holding a role, or a contract
/// that is a patient) is not among the block's calls to ours: only its events name it.
pub fn called(txs: &[DecodedTx], contracts: &Contracts) -> Called {
    let mut out = Called::default();
    for tx in txs {
        let Payload::ContractCall {
            contract,
            function,
            values,
            ..
        } = &tx.payload
        else {
            continue;
        };
        let Ok(sender) = tx.origin.parse::<Address>() else {
            continue;
        };
        let arg = |i: usize| values.get(i);
        let named = &mut out.named;
        if *contract == contracts.access_control() {
            match function.as_str() {
                "register-provider" | "update-provider-credentials" => {
                    named.providers.insert(sender);
                }
                "verify-provider" | "suspend-provider" | "reinstate-provider"
                | "revoke-provider" | "set-provider-role" => {
                    if let Some(who) = contracts::principal(arg(0)) {
                        named.providers.insert(who);
                    }
                }
                "add-responder" | "remove-responder" => {
                    if let Some(who) = contracts::principal(arg(0)) {
                        named.responders.insert(who);
                    }
                }
                "add-reviewer" | "remove-reviewer" => {
                    if let Some(who) = contracts::principal(arg(0)) {
                        named.reviewers.insert(who);
                    }
                }
                "set-summary-hash" | "clear-summary-hash" => {
                    if let Some(p) = contracts::buff32(arg(0)) {
                        named.summaries.insert(PatientId(p));
                    }
                }
                _ => {}
            }
        } else if *contract == contracts.patient_consent() {
            // (provider, data type, purpose) as each consent function takes them
            let consent = |purpose: Option<Purpose>| {
                Some(ForPatient::Consent(
                    contracts::principal(arg(0))?,
                    contracts::ascii(arg(1))?.parse().ok()?,
                    purpose?,
                ))
            };
            let what = match function.as_str() {
                "register-patient" => {
                    if let Some(Value::Buffer(salt)) = arg(0) {
                        named.patients.insert(derive_patient_id(&sender, salt));
                    }
                    None
                }
                "set-emergency-preferences" => Some(ForPatient::Preferences),
                "grant-consent-for-purpose" | "revoke-consent-for-purpose" => {
                    consent(contracts::ascii(arg(2)).and_then(|p| p.parse().ok()))
                }
                // the contract's DEFAULT-PURPOSE
                "grant-consent" | "revoke-consent" => consent(Some(Purpose::Treatment)),
                _ => None,
            };
            if let Some(what) = what {
                out.by_patients.push((sender, what));
            }
        }
    }
    out
}

/// A patient's id as `derive-patient-id` makes it: sha256 of the principal's consensus bytes,
/// then the salt.
pub fn derive_patient_id(patient: &Address, salt: &[u8]) -> PatientId {
    use sha2::{Digest, Sha256};
    let principal = Value::Principal(crate::stacks::Principal::Standard(*patient)).serialize();
    PatientId(
        Sha256::new()
            .chain_update(principal)
            .chain_update(salt)
            .finalize()
            .into(),
    )
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

    fn call(origin: &str, contract: &str, function: &str, values: Vec<Value>) -> DecodedTx {
        DecodedTx {
            txid: String::new(),
            version: 0x80,
            chain_id: 0x8000_0000,
            sponsored: false,
            origin: origin.into(),
            hash_mode: 0,
            nonce: 0,
            fee: 0,
            anchor_mode: 3,
            post_condition_mode: "deny",
            post_conditions: 0,
            payload: Payload::ContractCall {
                contract: contract.into(),
                function: function.into(),
                args: vec![],
                values,
            },
        }
    }

    #[test]
    fn a_blocks_calls_to_our_contracts_name_what_they_may_change() {
        let deployer: Address = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap();
        let ours = Contracts { address: deployer };
        let (ac, pc) = (ours.access_control(), ours.patient_consent());
        let who = "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB";
        let other = "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG";
        let p = contracts::principal_value(who).unwrap();
        let txs = vec![
            call(other, &ac, "suspend-provider", vec![p.clone()]),
            call(who, &ac, "register-provider", vec![]),
            call(other, &ac, "add-reviewer", vec![p.clone()]),
            call(
                other,
                &ac,
                "set-summary-hash",
                vec![Value::buffer([5; 32]), Value::buffer([6; 32])],
            ),
            call(other, &pc, "register-patient", vec![Value::buffer([1; 32])]),
            call(other, &pc, "set-emergency-preferences", vec![]),
            call(
                other,
                &pc,
                "grant-consent",
                vec![p.clone(), Value::ascii("allergies"), Value::UInt(9)],
            ),
            call(
                other,
                &pc,
                "revoke-consent-for-purpose",
                vec![
                    p.clone(),
                    Value::ascii("allergies"),
                    Value::ascii("research"),
                ],
            ),
            // not ours, or nothing cached: named by nothing
            call(
                other,
                &format!("{deployer}.patient-consent-v2"),
                "suspend-provider",
                vec![p.clone()],
            ),
            call(other, &ac, "record-emergency-access", vec![]),
            call(
                other,
                &ac,
                "suspend-provider",
                vec![Value::ascii("not a principal")],
            ),
        ];
        let called = called(&txs, &ours);
        let who: Address = who.parse().unwrap();
        let other: Address = other.parse().unwrap();
        assert_eq!(called.named.providers, BTreeSet::from([who]));
        assert_eq!(called.named.reviewers, BTreeSet::from([who]));
        assert_eq!(called.named.summaries, BTreeSet::from([PatientId([5; 32])]));
        assert_eq!(
            called.named.patients,
            BTreeSet::from([derive_patient_id(&other, &[1; 32])])
        );
        assert_eq!(called.named.len(), 4);
        assert_eq!(
            called.by_patients,
            vec![
                (other, ForPatient::Preferences),
                (
                    other,
                    ForPatient::Consent(who, DataType::Allergies, Purpose::Treatment)
                ),
                (
                    other,
                    ForPatient::Consent(who, DataType::Allergies, Purpose::Research)
                ),
            ]
        );
    }
}

//! The two contracts as the service sees them: their ids, and decoding of their read-only
//! answers and print events into domain state.
//!
//! It must not: decide anything, or call the node (it shapes values; `rpc.rs` calls).

use crate::domain::chain::{Consent, Preferences, ProviderState};
use crate::domain::{DataType, PatientId};
use crate::stacks::{Address, Principal, Value};

pub const PATIENT_CONSENT: &str = "patient-consent";
pub const ACCESS_CONTROL: &str = "access-control";

#[derive(Debug, Clone)]
pub struct Contracts {
    pub address: Address,
}

impl Contracts {
    pub fn id(&self, name: &str) -> String {
        format!("{}.{name}", self.address)
    }
    pub fn patient_consent(&self) -> String {
        self.id(PATIENT_CONSENT)
    }
    pub fn access_control(&self) -> String {
        self.id(ACCESS_CONTROL)
    }
    pub fn is_ours(&self, contract_id: &str) -> bool {
        contract_id == self.patient_consent() || contract_id == self.access_control()
    }
}

fn field<'a>(t: &'a Value, name: &str) -> Option<&'a Value> {
    t.as_tuple()?.get(name)
}

pub fn ascii(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::Ascii(s)) => Some(s),
        _ => None,
    }
}

pub fn uint(v: Option<&Value>) -> Option<u128> {
    match v {
        Some(Value::UInt(u)) => Some(*u),
        _ => None,
    }
}

pub fn boolean(v: Option<&Value>) -> Option<bool> {
    match v {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// A standard principal (a clinician, a responder): contract principals are not.
pub fn principal(v: Option<&Value>) -> Option<Address> {
    match v {
        Some(Value::Principal(crate::stacks::Principal::Standard(a))) => Some(*a),
        _ => None,
    }
}

pub fn patient_id(v: Option<&Value>) -> Option<PatientId> {
    match v {
        Some(Value::Buffer(b)) => Some(PatientId(b.as_slice().try_into().ok()?)),
        _ => None,
    }
}

pub fn data_types(v: Option<&Value>) -> Option<Vec<DataType>> {
    match v {
        Some(Value::List(items)) => items.iter().map(|i| ascii(Some(i))?.parse().ok()).collect(),
        _ => None,
    }
}

/// `get-provider` answers `(optional {role, status, ...})`.
pub fn provider_state(v: &Value) -> Option<ProviderState> {
    match v {
        Value::None => Some(ProviderState::Unregistered),
        Value::Some(t) => Some(ProviderState::Registered {
            role: ascii(field(t, "role"))?.parse().ok()?,
            status: ascii(field(t, "status"))?.parse().ok()?,
            info_hash: buff32(field(t, "info-hash")),
        }),
        _ => None,
    }
}

/// `get-emergency-preferences` answers a tuple (defaults included, flagged by is-default).
pub fn preferences(v: &Value) -> Option<Preferences> {
    Some(Preferences {
        allow: boolean(field(v, "allow"))?,
        data_types: data_types(field(v, "data-types"))?,
        max_window: u64::try_from(uint(field(v, "max-window"))?).ok()?,
        is_default: boolean(field(v, "is-default")).unwrap_or(false),
        registered: None,
    })
}

/// `get-consent` answers `(optional {active, expires-at, ...})`; none is no consent.
pub fn consent(v: &Value) -> Option<Consent> {
    match v {
        Value::None => Some(Consent {
            active: false,
            expires_at: 0,
        }),
        Value::Some(t) => Some(Consent {
            active: boolean(field(t, "active"))?,
            expires_at: u64::try_from(uint(field(t, "expires-at"))?).unwrap_or(u64::MAX),
        }),
        _ => None,
    }
}

pub fn principal_value(p: &str) -> Option<Value> {
    p.parse::<Principal>().ok().map(Value::Principal)
}

/// A 32-byte buffer.
pub fn buff32(v: Option<&Value>) -> Option<[u8; 32]> {
    match v {
        Some(Value::Buffer(b)) => b.as_slice().try_into().ok(),
        _ => None,
    }
}

/// `record-emergency-access`'s arguments for `access`, consensus-serialized (hex): access id,
/// the provider who signed the request, patient id, data types, window in blocks, the reason's
/// hash, whether the grant was degraded.
pub fn record_emergency_access_args(
    access: &crate::store::AccessRecord,
) -> Result<Vec<String>, String> {
    let reason_hash: [u8; 32] = hex::decode(&access.reason_hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "the reason hash is not 32 bytes of hex".to_string())?;
    Ok([
        Value::buffer(access.id.0),
        Value::Principal(crate::stacks::Principal::Standard(access.provider)),
        Value::buffer(access.patient.0),
        Value::List(
            access
                .data_types
                .iter()
                .map(|d| Value::ascii(d.as_str()))
                .collect(),
        ),
        Value::UInt(access.window_blocks.into()),
        Value::buffer(reason_hash),
        Value::Bool(access.degraded),
    ]
    .iter()
    .map(Value::to_hex)
    .collect())
}

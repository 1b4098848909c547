//! What the chain says, as the service caches it: a provider's registration, a patient's
//! emergency preferences, a consent. Read from the contracts' read-only functions
//! (`chain/contracts.rs`) and kept by the stores.
//!
//! It must not: do I/O or know how a value is encoded on chain or in a store.

use serde::{Deserialize, Serialize};

use super::{DataType, PatientId, ProviderStatus, Purpose, Role};
use crate::stacks::Address;

/// What the chain says of a provider principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderState {
    Unregistered,
    Registered {
        role: Role,
        status: ProviderStatus,
        /// The hash of the provider's directory entry, as registered on chain (`info-hash`);
        /// the off-chain directory entry must hash to it to be shown as verified.
        #[serde(default)]
        info_hash: Option<[u8; 32]>,
    },
}

impl ProviderState {
    /// Registered and verified: what a grant asks of its clinician, and a token's holder must
    /// still be for it to be honoured.
    pub fn is_verified(&self) -> bool {
        matches!(
            self,
            ProviderState::Registered {
                status: ProviderStatus::Verified,
                ..
            }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    pub allow: bool,
    pub data_types: Vec<DataType>,
    pub max_window: u64,
    pub is_default: bool,
    /// Whether the patient id is registered in patient-consent (`get-patient-principal`);
    /// `None` in entries cached before it was read, which are read again on use.
    #[serde(default)]
    pub registered: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConsentKey {
    pub patient: PatientId,
    pub provider: Address,
    pub data_type: DataType,
    pub purpose: Purpose,
}

impl ConsentKey {
    /// The key as one string (the stores' row key).
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.patient, self.provider, self.data_type, self.purpose
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub active: bool,
    pub expires_at: u64,
}

impl Consent {
    pub fn is_active_at(&self, height: u64) -> bool {
        self.active && height < self.expires_at
    }
}

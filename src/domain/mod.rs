//! Domain newtypes, parsed once at the edge: what the contracts and the service mean by a
//! patient id, an access id, a role, a provider's status, a data type; `chain.rs` what the
//! chain says of them, `directory.rs` the off-chain directory's records. A principal is a
//! `stacks::Address`.
//!
//! It must not: do I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod chain;
pub mod directory;

pub use directory::{Contact, Dated, Delegate, Language, ProviderEntry, Verification};

/// A 32-byte id written as 64 hex digits (`0x` accepted on input), in text and in JSON.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes = hex::decode(s)
                    .map_err(|_| concat!($what, " is not hex").to_string())?;
                Ok($name(bytes.try_into().map_err(|_| {
                    concat!($what, " is not 32 bytes").to_string()
                })?))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A pseudonymous patient id: 32 bytes, the only way a patient appears on chain.
    PatientId,
    "patient id"
);

hex_id!(
    /// An access's id: the grant time (Unix ms, 6 bytes) then 26 random bytes; on chain as the
    /// emergency record's key.
    AccessId,
    "access id"
);

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }
    };
}

string_enum!(
    /// Provider roles, as access-control knows them.
    Role {
        Physician = "physician",
        Nurse = "nurse",
        Paramedic = "paramedic",
        Pharmacist = "pharmacist",
        Reviewer = "reviewer",
        Admin = "admin",
    }
);

string_enum!(
    /// A provider's credential status on chain.
    ProviderStatus {
        Pending = "pending",
        Verified = "verified",
        Suspended = "suspended",
        Revoked = "revoked",
    }
);

string_enum!(
    /// Data types patient-consent knows; the first seven are the critical (emergency) set.
    DataType {
        Allergies = "allergies",
        Medications = "medications",
        Problems = "problems",
        BloodType = "blood-type",
        AdvanceDirectives = "advance-directives",
        Immunizations = "immunizations",
        EmergencySummary = "emergency-summary",
        Vitals = "vitals",
        LabResults = "lab-results",
        Procedures = "procedures",
        Imaging = "imaging",
        ClinicalNotes = "clinical-notes",
    }
);

impl DataType {
    /// The sections of the emergency summary (the IPS's critical set): opening the summary
    /// opens each of them (`scope::of`), so a patient's preference or a policy that keeps one
    /// closed keeps the summary closed too (`covering`).
    pub const SUMMARY_SECTIONS: [DataType; 6] = [
        DataType::Allergies,
        DataType::Medications,
        DataType::Problems,
        DataType::BloodType,
        DataType::AdvanceDirectives,
        DataType::Immunizations,
    ];

    /// The data types opening `self` opens: itself, and for the summary each of its sections.
    pub fn opens(self) -> Vec<DataType> {
        match self {
            DataType::EmergencySummary => std::iter::once(self)
                .chain(DataType::SUMMARY_SECTIONS)
                .collect(),
            _ => vec![self],
        }
    }
}

/// Every data type that asking for `data_types` opens (`DataType::opens`), each once, in order:
/// what a patient's preferences and the policies must allow.
pub fn covering(data_types: &[DataType]) -> Vec<DataType> {
    let mut out = Vec::new();
    for dt in data_types.iter().flat_map(|d| d.opens()) {
        if !out.contains(&dt) {
            out.push(dt);
        }
    }
    out
}

string_enum!(
    /// A reviewer's verdict on an emergency access, as access-control knows them.
    VerdictKind {
        Appropriate = "appropriate",
        Inappropriate = "inappropriate",
        NeedsFollowUp = "needs-follow-up",
    }
);

string_enum!(
    /// Purposes of use in patient-consent.
    Purpose {
        Treatment = "treatment",
        Research = "research",
        Insurance = "insurance",
        Transfer = "transfer",
    }
);

/// Why a clinician counts as on call: the source that says so and what it knows. A policy
/// input (`context.on_call`), and kept with the access for reviewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnCall {
    /// `roster`, `pagerduty`, `opsgenie` or `webhook`.
    pub source: String,
    /// The service, schedule or department they are on call for, when the source names one.
    pub service: Option<String>,
    /// On call since (unix seconds), when the source says.
    pub since: Option<u64>,
    /// On call until (unix seconds), when the source says.
    pub until: Option<u64>,
    /// The paging incident they were paged for, if any.
    pub incident: Option<String>,
    /// Whether that incident was acknowledged.
    pub acknowledged: bool,
}

impl OnCall {
    /// On call by a schedule or roster (no incident), between `since` and `until` when known.
    pub fn scheduled(
        source: &str,
        service: Option<String>,
        since: Option<u64>,
        until: Option<u64>,
    ) -> OnCall {
        OnCall {
            source: source.into(),
            service,
            since,
            until,
            incident: None,
            acknowledged: false,
        }
    }
}

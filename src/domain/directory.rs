//! The off-chain directory's records: how to reach a patient (protected, only ever stored
//! sealed) and a provider's entry (not protected; shown as verified only while it hashes to
//! the provider's on-chain `info-hash`). Parsed from FHIR by `directory`.
//!
//! It must not: do I/O, or hold anything the chain should hold.

use serde::{Deserialize, Serialize};

use super::chain::ProviderState;
use super::{ProviderStatus, Role};
use crate::stacks::Address;

/// The languages notices are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Es,
}

impl Language {
    /// A BCP 47 tag's language (`es`, `es-MX`, `ES`), if notices exist in it.
    pub fn from_tag(tag: &str) -> Option<Language> {
        match tag.split(['-', '_']).next()?.to_ascii_lowercase().as_str() {
            "en" => Some(Language::En),
            "es" => Some(Language::Es),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Es => "es",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegate {
    pub name: Option<String>,
    pub relationship: Option<String>,
    pub email: String,
}

/// How to reach a patient. Protected: only ever stored sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: Option<String>,
    /// The patient's address: the first of `emails` whose periods hold on the day it is
    /// judged (`current`: at the import, and again when a notice goes).
    pub email: Option<String>,
    pub language: Language,
    /// The delegate told beside the patient (a guardian, next of kin): as `email` is, the
    /// first of `delegates` whose periods hold.
    pub delegate: Option<Delegate>,
    /// Every address of the patient's the directory named, in the order they are chosen in,
    /// each with when it starts and stops being theirs (a contact sealed before these were
    /// kept has none, and `email` stands as it is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Dated<String>>,
    /// Every delegate the directory named, in the order they are chosen in, each with when
    /// they start and stop being one (their relationship's period, their address's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegates: Vec<Dated<Delegate>>,
}

/// An address, or a delegate, with the starts and ends of the periods it holds within (FHIR
/// `period.start` and `period.end`: a date as given, to the year, month or day, or a dateTime
/// as its UTC day, `directory::period_of`): it holds once every one has started (`started_by`)
/// and until any has ended (`ended_by`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dated<T> {
    pub value: T,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub until: Vec<String>,
}

impl<T> Dated<T> {
    /// Whether it holds on `today` (`YYYY-MM-DD`).
    pub fn holds(&self, today: &str) -> bool {
        self.from.iter().all(|start| started_by(start, today))
            && !self.until.iter().any(|end| ended_by(end, today))
    }
}

/// Whether a FHIR period whose `start` is `start` (a date or a dateTime, to the year, month or
/// day) has started by `today` (`YYYY-MM-DD`): its start is today or before at the precision it
/// gives (a period that starts this month holds all of it).
pub fn started_by(start: &str, today: &str) -> bool {
    let start = start.get(..10).unwrap_or(start);
    today.get(..start.len()).is_some_and(|t| start <= t)
}

/// Whether a FHIR period whose `end` is `end` (a date or a dateTime, to the year, month or day)
/// ended before `today` (`YYYY-MM-DD`): its end is before today at the precision it gives, so
/// that a period holds through its last day (month, year).
pub fn ended_by(end: &str, today: &str) -> bool {
    let end = end.get(..10).unwrap_or(end);
    today.get(..end.len()).is_some_and(|t| end < t)
}

impl Contact {
    /// The contact as it stands on `today` (`YYYY-MM-DD`): its address the first of `emails`
    /// that holds, its delegate the first of `delegates` (none when none does). Judged when a
    /// notice goes, not when the directory was imported: a guardian whose guardianship ended
    /// since (or has not started), or an address given up since, is not told. A contact sealed
    /// before these lists were kept stands as it is.
    pub fn current(mut self, today: &str) -> Contact {
        if let Some(email) = Dated::first_holding(&self.emails, today) {
            self.email = email;
        }
        if let Some(delegate) = Dated::first_holding(&self.delegates, today) {
            self.delegate = delegate;
        }
        self
    }
}

impl<T: Clone> Dated<T> {
    /// Of `list`, the first that holds on `today` (`Some(None)`: none does); `None` for an
    /// empty list (nothing kept: what was chosen at the import stands).
    fn first_holding(list: &[Dated<T>], today: &str) -> Option<Option<T>> {
        (!list.is_empty()).then(|| {
            list.iter()
                .find(|d| d.holds(today))
                .map(|d| d.value.clone())
        })
    }
}

/// A provider's entry in the off-chain directory. Not protected health information, so kept
/// in the clear; shown as verified only while it hashes to the provider's on-chain
/// `info-hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderEntry {
    pub principal: Address,
    pub display_name: String,
    pub role: Role,
    pub department: Option<String>,
    pub organization: Option<String>,
    /// Paging-system user ids (FHIR `telecom` with `system: pager`); operational, not hashed.
    pub paging_ids: Vec<String>,
}

impl ProviderEntry {
    /// The document whose SHA-256 is registered on chain as the provider's `info-hash`: the
    /// canonical JSON (RFC 8785: members sorted by name, no whitespace) of `department`,
    /// `display_name`, `organization` and `role`, absent members left out.
    pub fn info_document(&self) -> String {
        let mut doc = std::collections::BTreeMap::new();
        if let Some(d) = &self.department {
            doc.insert("department", d.as_str());
        }
        doc.insert("display_name", self.display_name.as_str());
        if let Some(o) = &self.organization {
            doc.insert("organization", o.as_str());
        }
        doc.insert("role", self.role.as_str());
        serde_json::to_string(&doc).unwrap_or_default()
    }

    pub fn info_hash(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.info_document().as_bytes()).into()
    }

    /// How the entry stands against the chain.
    pub fn verification(&self, chain: Option<&ProviderState>) -> Verification {
        match chain {
            Some(ProviderState::Registered {
                info_hash, status, ..
            }) => {
                if *info_hash != Some(self.info_hash()) {
                    Verification::Mismatch
                } else if *status == ProviderStatus::Verified {
                    Verification::Verified
                } else {
                    Verification::Unverified
                }
            }
            _ => Verification::NotOnChain,
        }
    }
}

/// How a directory entry stands against the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// It hashes to the on-chain `info-hash` and the credential is verified.
    Verified,
    /// Flagged: the entry is not what was registered.
    Mismatch,
    /// It matches, but the credential is not verified now.
    Unverified,
    NotOnChain,
}

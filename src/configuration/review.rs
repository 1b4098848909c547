//! Post-incident review and the audit trail: reviewer sessions and audit anchoring.
//!
//! It must not: hold a secret.

use super::*;

/// Reviewers' sign-in and sessions (`http/review`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSettings {
    /// How long a sign-in challenge may be signed and sent back.
    pub challenge_secs: u64,
    /// A session ends after this many seconds without a request...
    pub idle_secs: u64,
    /// ...and this many after sign-in, whatever happens.
    pub max_secs: u64,
    /// Mark the session cookie `Secure` (browsers treat `http://localhost` as secure too).
    pub secure_cookie: bool,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        ReviewSettings {
            challenge_secs: 300,
            idle_secs: 15 * 60,
            max_secs: 8 * 3600,
            secure_cookie: true,
        }
    }
}

impl ReviewSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.challenge_secs == 0 || self.challenge_secs > 3600 {
            return Err("review.challenge_secs must be between 1 and 3600".into());
        }
        if self.idle_secs == 0 || self.max_secs == 0 {
            return Err("review.idle_secs and review.max_secs must be positive".into());
        }
        if self.idle_secs > self.max_secs {
            return Err("review.idle_secs cannot be longer than review.max_secs".into());
        }
        Ok(())
    }
}

/// The audit log's anchors on chain (`audit::anchor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Anchor once this many entries were added since the last anchor...
    pub anchor_every_entries: u64,
    /// ...or once this long has passed with fewer (but some) new entries.
    pub anchor_every_secs: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            anchor_every_entries: 1000,
            anchor_every_secs: 600,
        }
    }
}

impl AuditSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.anchor_every_entries == 0 || self.anchor_every_secs == 0 {
            return Err(
                "audit.anchor_every_entries and audit.anchor_every_secs must be positive".into(),
            );
        }
        Ok(())
    }

    pub fn schedule(&self) -> crate::audit::anchor::Schedule {
        crate::audit::anchor::Schedule {
            every_entries: self.anchor_every_entries,
            every: std::time::Duration::from_secs(self.anchor_every_secs),
        }
    }
}

//! What every paging webhook goes through before it may change who is on call: its
//! signature (HMAC-SHA256, checked in constant time against every configured secret, so a
//! secret can be rotated without downtime), its age, and whether it was delivered before.
//!
//! It must not: compare secrets in variable time.

use ring::hmac;

use super::Change;

/// A verified delivery, read: what names it (a second delivery of it is a replay), its own
/// time (unix seconds), what it changes (nothing for events that page no one, such as
/// PagerDuty's `pagey.ping`) and the paged users that map to no principal.
pub struct Delivery {
    pub id: String,
    pub at: i64,
    pub change: Option<Change>,
    pub unmapped: Vec<String>,
}

/// A header the sender must send to be verified.
pub fn required<'h>(value: Option<&'h str>, name: &str) -> Result<&'h str, WebhookError> {
    value.ok_or_else(|| WebhookError::BadSignature(format!("{name} is missing")))
}

/// The refusal of a signature or token that matches no configured secret.
pub fn unmatched(name: &str) -> WebhookError {
    WebhookError::BadSignature(format!("{name} matches no configured secret"))
}

/// Why a webhook was refused: each a 4xx with a stable code, and no state change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("the webhook is {age} s from now, beyond the {window} s window")]
    Stale { age: i64, window: u64 },
    #[error("delivery {0} was already received")]
    Replayed(String),
    /// Well formed and signed, but not something this service takes: `code` says which.
    #[error("{detail}")]
    NotTaken { code: &'static str, detail: String },
}

impl WebhookError {
    pub fn status(&self) -> u16 {
        match self {
            WebhookError::Malformed(_) => 400,
            WebhookError::BadSignature(_) | WebhookError::Stale { .. } => 401,
            WebhookError::Replayed(_) => 409,
            WebhookError::NotTaken { .. } => 422,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::Malformed(_) => "malformed-webhook",
            WebhookError::BadSignature(_) => "bad-webhook-signature",
            WebhookError::Stale { .. } => "stale-webhook",
            WebhookError::Replayed(_) => "replayed-webhook",
            WebhookError::NotTaken { code, .. } => code,
        }
    }
    pub fn title(&self) -> &'static str {
        match self {
            WebhookError::Malformed(_) => "Malformed webhook",
            WebhookError::BadSignature(_) => "Bad webhook signature",
            WebhookError::Stale { .. } => "Stale webhook",
            WebhookError::Replayed(_) => "Replayed webhook",
            WebhookError::NotTaken { .. } => "Webhook not taken",
        }
    }
}

/// At most this many `v1=` signatures of a header are looked at: a sender sends one per active
/// secret (two while one rotates).
const MAX_SIGNATURES: usize = 8;

/// The `v1=<hex>` signatures of `header` that can be an HMAC-SHA256 (32 bytes), the first
/// `MAX_SIGNATURES` of them.
fn v1_signatures(header: &str) -> Vec<[u8; 32]> {
    header
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .take(MAX_SIGNATURES)
        .collect()
}

/// Whether any `v1=<hex>` signature of `header` (comma-separated: PagerDuty sends one per
/// active secret while a secret rotates) is the HMAC-SHA256 of `message` under any of
/// `secrets`. The message is signed once per secret, whatever the header holds, and each
/// signature compared with it in constant time.
pub fn verify_v1(header: &str, message: &[&[u8]], secrets: &[Vec<u8>]) -> bool {
    use subtle::ConstantTimeEq;
    let signatures = v1_signatures(header);
    if signatures.is_empty() {
        return false;
    }
    secrets.iter().fold(false, |ok, secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut context = hmac::Context::with_key(&key);
        for part in message {
            context.update(part);
        }
        let tag = context.sign();
        signatures.iter().fold(ok, |ok, s| {
            ok | bool::from(s.as_slice().ct_eq(tag.as_ref()))
        })
    })
}

/// Whether a static token (a custom header the sender cannot sign with) is one of `secrets`,
/// compared in constant time.
pub fn verify_token(token: &str, secrets: &[Vec<u8>]) -> bool {
    use subtle::ConstantTimeEq;
    secrets
        .iter()
        .fold(false, |ok, s| ok | bool::from(token.as_bytes().ct_eq(s)))
}

/// Refuses a webhook whose own time (unix seconds) is further than `window` from `now`; one
/// that only `releases` someone (an incident resolved, a shift ended) only when it is that far
/// ahead. A release sent late (its sender retrying through an outage of ours) still takes its
/// responders off call: refused, they stayed on call until the incident aged out. Taken late,
/// or again, it changes nothing that is newer than it (`OnCall::apply` sets it aside).
pub fn fresh(at: i64, now: u64, window: u64, releases: bool) -> Result<(), WebhookError> {
    let age = i64::try_from(now).unwrap_or(i64::MAX).saturating_sub(at);
    let beyond = if releases {
        age < 0 && age.unsigned_abs() > window
    } else {
        age.unsigned_abs() > window
    };
    if beyond {
        return Err(WebhookError::Stale { age, window });
    }
    Ok(())
}

/// An RFC 3339 time as unix seconds.
pub fn rfc3339(s: &str) -> Result<i64, WebhookError> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| WebhookError::Malformed(format!("{s:?} is not an RFC 3339 time: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_yields_a_few_signatures_of_an_hmacs_length_at_most() {
        let tag = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        // thousands of candidates, empty or not, cost as much as eight: the message is signed
        // once per secret, and only the first eight of an HMAC's length are compared
        let flood = format!("{}v1={tag}", "v1=,".repeat(30_000));
        assert!(v1_signatures(&flood).len() == 1);
        let many = vec![format!("v1={tag}"); 30_000].join(",");
        assert_eq!(v1_signatures(&many).len(), MAX_SIGNATURES);
        assert!(v1_signatures("v1=00ff, v1=, v0=00").is_empty());
    }

    #[test]
    fn a_v1_signature_verifies_under_any_current_secret() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        let tag = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let secrets = vec![b"old".to_vec(), b"Jefe".to_vec()];
        let msg: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert!(verify_v1(&format!("v1={tag}"), &msg, &secrets));
        assert!(verify_v1(&format!("v1=00ff, v1={tag}"), &msg, &secrets));
        assert!(!verify_v1(&format!("v0={tag}"), &msg, &secrets));
        assert!(!verify_v1(&format!("v1={tag}"), &msg, &secrets[..1]));
        assert!(!verify_v1("v1=zz", &msg, &secrets));
        assert!(!verify_v1(
            &format!("v1={tag}"),
            &[b"what do ya want"],
            &secrets
        ));
    }

    #[test]
    fn tokens_and_times() {
        let secrets = vec![b"a-secret".to_vec()];
        assert!(verify_token("a-secret", &secrets));
        assert!(!verify_token("a-secret ", &secrets));
        assert!(!verify_token("", &secrets));
        assert!(fresh(1000, 1100, 100, false).is_ok());
        // a release, however late, but not from beyond the window ahead
        assert!(fresh(1000, 100_000, 100, true).is_ok());
        assert!(fresh(1100, 1000, 100, true).is_ok());
        assert!(fresh(1101, 1000, 100, true).is_err());
        assert_eq!(
            fresh(1000, 1101, 100, false),
            Err(WebhookError::Stale {
                age: 101,
                window: 100
            })
        );
        assert!(fresh(1201, 1100, 100, false).is_err());
        assert_eq!(rfc3339("2020-10-02T18:45:22.169Z"), Ok(1601664322));
        assert!(rfc3339("yesterday").is_err());
    }
}

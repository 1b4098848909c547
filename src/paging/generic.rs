//! The generic webhook, for paging systems without an integration here:
//!
//! ```text
//! POST /v1/paging/webhook
//! X-Breakglass-Timestamp: <unix seconds>
//! X-Breakglass-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
//! {"responder": "ST... | paging id | email", "on_call_until": "<RFC 3339>",
//!  "incident": "INC-123" | null, "service": "emergency-department" | null}
//! ```
//!
//! The timestamp must be within the window and is signed with the body, so a delivery cannot
//! be re-dated; the signed bytes name the delivery, so the same one twice is a replay. An
//! `on_call_until` in the past takes the responder off call (such a delivery is taken however
//! late it comes); one more than `SHIFT_MAX_SECS` after the timestamp is refused.
//!
//! It must not: accept a delivery without a valid signature.

use std::collections::HashMap;

use serde::Deserialize;

use super::webhook::{self, WebhookError};
use super::{Change, Mapping};
use crate::domain::OnCall as Fact;

/// The longest shift one delivery puts someone on call for: one mistaken or stolen delivery
/// does not keep them on call for good (a secret rotated does not end what it started).
pub const SHIFT_MAX_SECS: i64 = 7 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    responder: String,
    on_call_until: String,
    #[serde(default)]
    incident: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

/// Checks the signature over `timestamp.body`.
pub fn verify(
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    secrets: &[Vec<u8>],
) -> Result<(), WebhookError> {
    let ts = webhook::required(timestamp, "X-Breakglass-Timestamp")?;
    let sig = webhook::required(signature, "X-Breakglass-Signature")?;
    if !webhook::verify_v1(sig, &[ts.as_bytes(), b".", body], secrets) {
        return Err(webhook::unmatched("X-Breakglass-Signature"));
    }
    Ok(())
}

/// Reads a delivery `verify` passed, with its signed timestamp `ts`.
pub fn parse(
    ts: &str,
    body: &[u8],
    map: &HashMap<String, String>,
) -> Result<webhook::Delivery, WebhookError> {
    let at: i64 = ts.trim().parse().map_err(|_| {
        WebhookError::Malformed("X-Breakglass-Timestamp is not unix seconds".into())
    })?;
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a paging webhook: {e}")))?;
    let until = webhook::rfc3339(&b.on_call_until)?;
    if until.saturating_sub(at) > SHIFT_MAX_SECS {
        return Err(WebhookError::NotTaken {
            code: "shift-too-long",
            detail: format!(
                "on_call_until is more than {} days after the delivery: a shift is at most that long (send another as it goes on)",
                SHIFT_MAX_SECS / 86_400
            ),
        });
    }
    let principal = Mapping::resolve(map, &[b.responder.as_str()]).ok_or_else(|| {
        WebhookError::NotTaken {
            code: "unknown-responder",
            detail: format!(
                "responder {:?} maps to no provider, or to two (mapping file or directory paging ids)",
                b.responder
            ),
        }
    })?;
    // the signed bytes name the delivery: a resend of them is a replay, whichever of its
    // signatures it carries
    let delivery = {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(ts.as_bytes())
            .chain_update(b".")
            .chain_update(body)
            .finalize();
        format!("webhook:{}", hex::encode(digest))
    };
    Ok(webhook::Delivery {
        id: delivery,
        at,
        unmapped: Vec::new(),
        change: Some(Change::Shift {
            principal,
            fact: Fact {
                source: "webhook".into(),
                service: b.service,
                since: Some(u64::try_from(at).unwrap_or(0)),
                until: Some(u64::try_from(until).unwrap_or(0)),
                incident: b.incident,
                acknowledged: false,
            },
        }),
    })
}

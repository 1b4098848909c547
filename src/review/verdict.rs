//! A reviewer's verdict: checked here as access-control will check it (a known verdict, an
//! access recorded on chain, not the reviewer's own access, not this service's principal (the
//! responder that records our accesses), once), signed by the reviewer (SIP-018, under the
//! break-glass domain)
//!
//! ```text
//! { action: "review", access-id: (buff 32), verdict: (string-ascii 16), note-hash: (buff 32) }
//! ```
//!
//! The note's hash is its commitment, SHA-256(salt ‖ note), with 32 random bytes of salt the
//! reviewer's page draws and posts with the note (`note_salt`): a note is short text about a
//! patient's care, often one of a few phrases, whose own SHA-256 (on chain and in the audit
//! export) a guess would find. The salt is sealed with the note (`seal::names::salted_note`)
//! and shown with it to reviewers, to check the chain's hash; a note recorded before salts
//! opens as before, its hash the note's own.
//!
//! It is written in one durable write: the verdict with its note sealed, the operation
//! `review:<access id>` (`review-emergency-access` with the note's hash and the reviewer's
//! signature, which the responder relays: one transaction, sent by the submitter), the audit
//! entry, and, for an inappropriate verdict that asks for it, the token's revocation. A verdict
//! the chain refused (its operation failed: the reviewer lost their role meanwhile, say) leaves
//! the access to be reviewed again: the next verdict is its next attempt
//! (`review:<access id>:<n>`).
//!
//! It must not: put the note anywhere but sealed in the store (only its salted hash leaves).

use super::{refusal, Review, Session, VERDICT_ACTION};
use crate::audit::{Event, Record};
use crate::chain::contracts::ACCESS_CONTROL;
use crate::chain::submitter;
use crate::clock::now_secs;
use crate::domain::{AccessId, VerdictKind};
use crate::refusal::Refusal;
use crate::seal::{names, Committed, SALT_LEN};
use crate::stacks::Value;
use crate::store::{apply_async, Batch, SubmissionState, Verdict};

/// The longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 4000;

/// What the reviewer sent.
pub struct Given<'a> {
    pub verdict: &'a str,
    pub note: &'a str,
    /// The salt of the note's commitment: 32 bytes, hex.
    pub note_salt: &'a str,
    pub revoke: bool,
    pub signature: &'a str,
}

/// The message a reviewer signs for a verdict.
pub fn message(access: &AccessId, verdict: VerdictKind, note_hash: &[u8; 32]) -> Value {
    Value::Tuple(
        [
            ("action".to_string(), Value::Ascii(VERDICT_ACTION.into())),
            ("access-id".to_string(), Value::Buffer(access.0.to_vec())),
            ("verdict".to_string(), Value::Ascii(verdict.as_str().into())),
            ("note-hash".to_string(), Value::Buffer(note_hash.to_vec())),
        ]
        .into_iter()
        .collect(),
    )
}

/// A note's length as the reviewer typed it: a form sends each line break as CRLF, which the
/// page's `maxlength` counts as one character.
fn note_chars(note: &str) -> usize {
    note.chars().count() - note.matches("\r\n").count()
}

fn already_reviewed() -> Refusal {
    refusal(
        409,
        "already-reviewed",
        "Already reviewed",
        "this access has a verdict already",
    )
}

impl Review {
    /// Records `given` as `session`'s verdict on access `id`.
    pub async fn give_verdict(
        &self,
        session: &Session,
        id: &AccessId,
        given: Given<'_>,
    ) -> Result<Verdict, Refusal> {
        let store = &self.state.store;
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "store unavailable for a verdict");
            refusal(
                503,
                "store-unavailable",
                "Store unavailable",
                "the verdict could not be recorded; try again",
            )
        };
        let verdict: VerdictKind = given.verdict.parse().map_err(|_| {
            refusal(
                400,
                "invalid-verdict",
                "Invalid verdict",
                "the verdict is appropriate, inappropriate or needs-follow-up",
            )
        })?;
        if note_chars(given.note) > MAX_NOTE_CHARS {
            return Err(refusal(
                400,
                "note-too-long",
                "Note too long",
                format!("a note is at most {MAX_NOTE_CHARS} characters"),
            ));
        }
        let salt: [u8; SALT_LEN] = hex::decode(given.note_salt)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                refusal(
                    400,
                    "invalid-note-salt",
                    "Invalid note salt",
                    "the note's salt is 32 random bytes, as 64 hexadecimal characters",
                )
            })?;
        let note = Committed {
            text: given.note.into(),
            salt: Some(salt),
        };
        // the signature first: a bad one costs no read of the store or the node, nor a turn
        // of the one-at-a-time lock
        let note_hash = note.commitment();
        let signed = message(id, verdict, &note_hash);
        let (signer, sig) = self
            .signer_of(&signed, given.signature)
            .map_err(|u| match u {
                super::Unsigned::Malformed => refusal(
                    400,
                    "malformed-signature",
                    "Malformed signature",
                    "the verdict's signature is 65 bytes of hex",
                ),
                super::Unsigned::DoesNotVerify(e) => refusal(
                    400,
                    "bad-signature",
                    "Bad signature",
                    format!("the verdict's signature does not verify: {e}"),
                ),
            })?;
        if signer != session.reviewer {
            return Err(refusal(
                400,
                "bad-signature",
                "Bad signature",
                "the verdict was not signed by the signed-in reviewer's key, or not over this verdict and note",
            ));
        }
        let access = store.access(id).map_err(unavailable)?.ok_or_else(|| {
            refusal(
                404,
                "unknown-access",
                "Unknown access",
                "no access with this id was granted here",
            )
        })?;
        let reviewer = session.reviewer;
        let _one_at_a_time = self.verdicts.lock().await;
        if reviewer == access.provider || reviewer == self.responder {
            return Err(refusal(
                403,
                "self-review",
                "Self-review",
                "a reviewer cannot review their own access, or one they recorded",
            ));
        }
        // a verdict stands once given, unless the chain refused it: then another may be given,
        // the access's next attempt
        let attempt = match store.verdict(id).map_err(unavailable)? {
            None => 0,
            Some(v) => {
                let failed = store
                    .submission(&v.operation())
                    .map_err(unavailable)?
                    .is_some_and(|s| matches!(s.state, SubmissionState::Failed { .. }));
                if !failed {
                    return Err(already_reviewed());
                }
                v.attempt + 1
            }
        };
        let recorded = store
            .submission(&format!("record:{id}"))
            .map_err(unavailable)?
            .is_some_and(|s| matches!(s.state, SubmissionState::Confirmed { .. }));
        if !recorded {
            return Err(refusal(
                409,
                "not-on-chain-yet",
                "Not on chain yet",
                "the access is not confirmed on chain yet: its verdict can be given once it is",
            ));
        }
        // reviewed on chain already (directly, by a reviewer who holds STX, or through another
        // responder): the contract would refuse ours (u215), and the responder pay for nothing
        let on_chain = self
            .state
            .rpc
            .call_read(
                &self.state.contracts.access_control(),
                "get-emergency-review",
                &[Value::Buffer(id.0.to_vec())],
                &self.state.contracts.address,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "the node cannot be asked for an access's review");
                refusal(
                    503,
                    "chain-state-unavailable",
                    "Chain state unavailable",
                    "the chain could not be asked whether the access is reviewed; try again",
                )
            })?;
        if let Value::Some(review) = on_chain {
            let m = review.as_tuple();
            let field = |k: &str| m.and_then(|m| m.get(k)).map(ToString::to_string);
            return Err(refusal(
                409,
                "reviewed-on-chain",
                "Reviewed on chain",
                format!(
                    "the access has a review on chain already: {} by {}",
                    field("verdict").unwrap_or_default(),
                    field("reviewer").unwrap_or_default()
                ),
            ));
        }
        let sealed = self
            .keyring
            .seal(&names::salted_note(id), &note.plain())
            .map_err(|e| {
                tracing::error!(error = %e, "could not seal a note");
                refusal(
                    503,
                    "seal-unavailable",
                    "Sealing unavailable",
                    "the note could not be sealed; try again",
                )
            })?;
        let revoke = given.revoke && verdict == VerdictKind::Inappropriate;
        let record = Verdict {
            access_id: *id,
            reviewer,
            verdict,
            note_sealed: hex::encode(sealed),
            note_hash: hex::encode(note_hash),
            signature: hex::encode(&sig),
            at: now_secs(),
            revoked: revoke,
            attempt,
        };
        let op = submitter::operation(
            &record.operation(),
            ACCESS_CONTROL,
            "review-emergency-access",
            &[
                Value::Buffer(id.0.to_vec()).to_hex(),
                Value::Ascii(verdict.as_str().into()).to_hex(),
                Value::Buffer(note_hash.to_vec()).to_hex(),
                Value::Some(Box::new(Value::Buffer(sig))).to_hex(),
            ],
        );
        let mut audit = vec![Record::now(Event::Verdict {
            access: *id,
            reviewer,
            verdict: verdict.as_str().into(),
            note_hash: record.note_hash.clone(),
            patient: access.patient,
            revoked: revoke,
        })];
        let mut revoked = Vec::new();
        if revoke {
            revoked.push((id.to_string(), access.expires_at));
            audit.push(Record::now(Event::Revocation {
                jti: id.to_string(),
                by: reviewer.to_string(),
                patient: Some(access.patient),
            }));
        }
        let batch = Batch {
            verdicts: vec![record.clone()],
            submissions: vec![op],
            revoked,
            audit,
            ..Batch::default()
        };
        match apply_async(store, batch).await {
            Ok(()) => {}
            // another replica's reviewer was first (a shared store checks it with the write)
            Err(crate::store::StoreError::Guarded(crate::store::Guarded::Reviewed)) => {
                return Err(already_reviewed())
            }
            Err(e) => return Err(unavailable(e)),
        }
        tracing::info!(access = %id, %reviewer, verdict = %verdict, revoked = revoke, "verdict recorded");
        Ok(record)
    }

    /// The note of a verdict, unsealed, with its salt: for reviewers only.
    pub fn note(&self, v: &Verdict) -> Option<Committed> {
        crate::seal::open_committed(
            &self.keyring,
            &names::salted_note(&v.access_id),
            &names::note(&v.access_id),
            &v.note_sealed,
        )
    }

    /// The clinician's reason for an access, unsealed: for reviewers only.
    pub fn reason(&self, access: &crate::store::AccessRecord) -> Option<String> {
        crate::access::reasons::open(&self.keyring, access).map(|r| r.text)
    }
}

/// Seals every verdict's note (each attempt's) that is not sealed with the current data key
/// again with it (after `keys rotate-data`, with `patients rekey`). Returns how many were
/// re-sealed.
pub async fn rekey_notes(
    store: &std::sync::Arc<dyn crate::store::Store>,
    keyring: &crate::seal::Keyring,
) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut batch = Batch::default();
    for mut v in store.every_verdict()? {
        let Some(sealed) = crate::seal::reseal_either(
            keyring,
            &names::salted_note(&v.access_id),
            &names::note(&v.access_id),
            &hex::decode(&v.note_sealed)?,
        )?
        else {
            continue;
        };
        v.note_sealed = hex::encode(sealed);
        batch.resealed_verdicts.push(v);
        n += 1;
        if batch.resealed_verdicts.len() == 1000 {
            apply_async(store, std::mem::take(&mut batch)).await?;
        }
    }
    apply_async(store, batch).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Redis too (where a new verdict must be the first of its access, and comes with its
    /// audit entry): each attempt's note is sealed again with the current key, and opens with
    /// it alone, under the name it had: a note from before salts as it was, a salted one with
    /// its salt. Before, the rekey's write was refused there, and the rotation stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notes_are_sealed_again_on_redis_too() {
        let redis = crate::dev::test_redis().await;
        let store: std::sync::Arc<dyn crate::store::Store> =
            std::sync::Arc::new(crate::store::RedisStore::open(redis.url.as_str(), "v:").unwrap());
        let (old, new) = ([1; 32], [2; 32]);
        let before = crate::seal::Keyring::from_keys(&[old]).unwrap();
        let id = crate::access::access_id(7);
        // attempt 0 from before salts, attempt 1 salted
        let note = |attempt: u32| Committed {
            text: format!("note {attempt}"),
            salt: (attempt == 1).then_some([9; SALT_LEN]),
        };
        let verdict = |attempt: u32| Verdict {
            access_id: id,
            reviewer: "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap(),
            verdict: VerdictKind::Appropriate,
            note_sealed: hex::encode(
                before
                    .seal(
                        &if attempt == 1 {
                            names::salted_note(&id)
                        } else {
                            names::note(&id)
                        },
                        &note(attempt).plain(),
                    )
                    .unwrap(),
            ),
            note_hash: String::new(),
            signature: String::new(),
            at: 1_000,
            revoked: false,
            attempt,
        };
        for attempt in [0, 1] {
            apply_async(
                &store,
                Batch {
                    verdicts: vec![verdict(attempt)],
                    audit: vec![Record::now(Event::SignIn {
                        reviewer: None,
                        outcome: "a verdict's entry".into(),
                    })],
                    ..Batch::default()
                },
            )
            .await
            .unwrap();
        }
        // (the current key last)
        let both = crate::seal::Keyring::from_keys(&[old, new]).unwrap();
        assert_eq!(rekey_notes(&store, &both).await.unwrap(), 2);
        let after = crate::seal::Keyring::from_keys(&[new]).unwrap();
        let mut notes: Vec<(u32, Committed)> = store
            .every_verdict()
            .unwrap()
            .iter()
            .map(|v| {
                let opened = crate::seal::open_committed(
                    &after,
                    &names::salted_note(&id),
                    &names::note(&id),
                    &v.note_sealed,
                );
                (v.attempt, opened.unwrap())
            })
            .collect();
        notes.sort_by_key(|(attempt, _)| *attempt);
        assert_eq!(notes, [(0, note(0)), (1, note(1))]);
        assert_eq!(rekey_notes(&store, &both).await.unwrap(), 0);
    }

    #[test]
    fn a_line_break_counts_as_one_character_of_a_note() {
        let typed = format!("{}{}", "a".repeat(3_990), "\r\n".repeat(10));
        assert_eq!(note_chars(&typed), MAX_NOTE_CHARS);
        assert_eq!(note_chars("a\nb"), 3);
        assert_eq!(note_chars("ü\r\n"), 2);
    }
}

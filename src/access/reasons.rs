//! The clinician's reason for an access: sealed at rest with the salt of its commitment
//! (`seal::names::salted_reason`), unsealed only for the authorized views (the access view's
//! admin clients, reviewers, the patient's notice), and sealed again after a data-key rotation.
//!
//! The chain record and the token carry the reason's commitment, SHA-256(salt ‖ reason) with
//! 32 random bytes of salt, never the reason: a reason is short clinical text, often one of a
//! few phrases, and the SHA-256 of the reason alone (as recorded before, `names::reason`) is
//! found by hashing candidate phrases, tying a patient's pseudonymous id on chain to a
//! condition. Whoever may read the reason gets its salt with it, to check the chain's hash.
//!
//! It must not: log or return a reason or its salt anywhere but the authorized views.

use std::sync::Arc;

use super::BreakGlass;
use crate::domain::AccessId;
use crate::seal::{names, open_committed, reseal_either, Committed, Keyring, SealError, SALT_LEN};
use crate::store::{AccessRecord, Batch};

/// A reason as recorded: sealed with its salt (hex), and its commitment (hex).
pub struct Sealed {
    pub sealed: String,
    pub hash: String,
}

/// Seals access `id`'s `reason` with a new salt, and commits to it.
pub fn seal(keyring: &Keyring, id: &AccessId, reason: &str) -> Result<Sealed, SealError> {
    let mut salt = [0u8; SALT_LEN];
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut salt);
    let reason = Committed {
        text: reason.into(),
        salt: Some(salt),
    };
    Ok(Sealed {
        hash: hex::encode(reason.commitment()),
        sealed: hex::encode(keyring.seal(&names::salted_reason(id), &reason.plain())?),
    })
}

/// An access's reason, unsealed, and the salt its commitment was made with (none for one
/// recorded before reasons were salted: its hash is the reason's own).
pub type Reason = Committed;

/// `access`'s reason, unsealed with the key it was sealed with: `None` if it does not open
/// (or was recorded before reasons were kept).
pub fn open(keyring: &Keyring, access: &AccessRecord) -> Option<Reason> {
    open_committed(
        keyring,
        &names::salted_reason(&access.id),
        &names::reason(&access.id),
        &access.reason_sealed,
    )
}

impl BreakGlass {
    /// The clinician's reason for `access`, unsealed: for the authorized access view only.
    pub fn reason(&self, access: &AccessRecord) -> Option<Reason> {
        open(&self.keyring, access)
    }
}

/// Seals every access's reason that is not sealed with the current data key again with it
/// (after `keys rotate-data`, with `patients rekey`). Returns how many were re-sealed.
pub async fn rekey_reasons(
    store: &Arc<dyn crate::store::Store>,
    keyring: &crate::seal::Keyring,
) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut batch = Batch::default();
    for id in store.access_ids()? {
        let Some(mut access) = store.access(&id)? else {
            continue;
        };
        if access.reason_sealed.is_empty() {
            continue; // recorded before reasons were kept
        }
        // under the name it was sealed with (salted, or as before salts)
        let Some(sealed) = reseal_either(
            keyring,
            &names::salted_reason(&access.id),
            &names::reason(&access.id),
            &hex::decode(&access.reason_sealed)?,
        )?
        else {
            continue;
        };
        access.reason_sealed = hex::encode(sealed);
        batch.accesses.push(access);
        n += 1;
        if batch.accesses.len() == 1000 {
            crate::store::apply_async(store, std::mem::take(&mut batch)).await?;
        }
    }
    crate::store::apply_async(store, batch).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn access_with(id: AccessId, sealed: String, hash: String) -> AccessRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "provider": "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM", "role": "nurse",
            "patient": "00".repeat(32), "data_types": ["allergies"], "reason_sealed": sealed,
            "reason_hash": hash, "device": null, "nonce": 1, "issued_at": 1000,
            "granted_at": 1000, "expires_at": 1600, "window_minutes": 10, "window_blocks": 60,
            "rules": [], "message_hash": "", "signature": "",
        }))
        .unwrap()
    }

    /// A reason's hash is its salted commitment, which the reason and its salt, unsealed,
    /// give back; the same reason twice gives two hashes, neither the reason's own SHA-256
    /// (what a guess of the phrase finds). One recorded before salts still opens, its hash
    /// the reason's own.
    #[test]
    fn a_reasons_hash_is_salted_and_its_salt_opens_with_it() {
        let ring = Keyring::from_keys(&[[1; 32]]).unwrap();
        let reason = "suspected opioid overdose";
        let id = crate::access::access_id(1_000);
        let first = seal(&ring, &id, reason).unwrap();
        let again = seal(&ring, &id, reason).unwrap();
        assert_ne!(first.hash, again.hash);
        assert_ne!(first.hash, hex::encode(Sha256::digest(reason)));
        let opened = open(&ring, &access_with(id, first.sealed, first.hash.clone())).unwrap();
        assert_eq!(opened.text, reason);
        assert!(opened.salt.is_some());
        assert_eq!(hex::encode(opened.commitment()), first.hash);

        let before = ring.seal(&names::reason(&id), reason.as_bytes()).unwrap();
        let unsalted = hex::encode(Sha256::digest(reason));
        let old = access_with(id, hex::encode(before), unsalted.clone());
        let opened = open(&ring, &old).unwrap();
        assert_eq!((opened.text.as_str(), opened.salt), (reason, None));
        assert_eq!(hex::encode(opened.commitment()), unsalted);
        // another key's seal does not open
        let other = Keyring::from_keys(&[[2; 32]]).unwrap();
        assert_eq!(open(&other, &old), None);
    }
}

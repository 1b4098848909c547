//! The clinician's reason for an access: sealed at rest (`seal::names::reason`), unsealed
//! only for the authorized access view, and sealed again after a data-key rotation.
//!
//! It must not: log or return a reason anywhere but the authorized view.

use std::sync::Arc;

use super::BreakGlass;
use crate::store::{AccessRecord, Batch};

impl BreakGlass {
    /// The clinician's reason for `access`, unsealed: for the authorized access view only.
    pub fn reason(&self, access: &AccessRecord) -> Option<String> {
        self.keyring.open_text(
            &crate::seal::names::reason(&access.id),
            &access.reason_sealed,
        )
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
        let name = crate::seal::names::reason(&access.id);
        let Some(sealed) = keyring.reseal(&name, &hex::decode(&access.reason_sealed)?)? else {
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

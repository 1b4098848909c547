//! The grant itself, once every step passed: the window, the access record, then the record,
//! its audit entry and the used nonce in one durable write, the token signed while it syncs and
//! handed out only once the write is durable. Its chain operation and the patient's notice are
//! made from the audit entry after it (`follow_up`).
//!
//! It must not: hand out a token whose access is not durable.

use super::{access_id, BreakGlass, ChainView, Grant};
use crate::clock::now_ms;
use crate::domain::{OnCall as OnCallFact, Role};
use crate::refusal::Refusal;
use crate::request::BreakGlassRequest;
use crate::store::{apply_started, AccessRecord, Batch, Guarded, StoreError};

/// How long a grant waits for its durable write before it is refused (503 `audit-pending`):
/// far beyond a healthy store's worst (tens of milliseconds at peak), short enough for a
/// clinician to try again.
pub(crate) const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an access lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub secs: u64,
    pub minutes: u32,
    /// What the chain record is checked against.
    pub blocks: u64,
}

impl Window {
    /// The policy's window, never beyond the patient's maximum (in blocks, which the chain
    /// record is checked against), to the second; patient-consent keeps every patient's
    /// maximum within the contracts' one longest window (`get-max-emergency-window`), so that
    /// bound holds here too.
    pub fn of(policy_minutes: u32, max_window_blocks: u64, seconds_per_block: u64) -> Window {
        let max_blocks = max_window_blocks.max(1);
        let secs = (u64::from(policy_minutes.max(1)) * 60)
            .min(max_blocks.saturating_mul(seconds_per_block))
            .max(1);
        Window {
            secs,
            minutes: u32::try_from(secs.div_ceil(60)).unwrap_or(u32::MAX),
            blocks: secs.div_ceil(seconds_per_block).clamp(1, max_blocks),
        }
    }
}

/// What the steps decided, for the record.
pub(super) struct Decision {
    pub role: Role,
    pub window: Window,
    /// The policies that permitted it.
    pub rules: Vec<String>,
    pub on_call: Option<OnCallFact>,
    pub chain: ChainView,
    pub patient_registered: bool,
}

impl BreakGlass {
    /// The access as it will be recorded, its reason sealed.
    pub(super) fn access_record(
        &self,
        req: &BreakGlassRequest,
        now: u64,
        d: Decision,
    ) -> Result<AccessRecord, Refusal> {
        let id = access_id(now_ms());
        // its commitment, salted, is what the chain and the token carry (`reasons`)
        let reason = super::reasons::seal(&self.keyring, &id, &req.reason)
            .map_err(|e| Self::internal("the reason could not be sealed", e))?;
        Ok(AccessRecord {
            id,
            provider: req.signer,
            role: d.role,
            patient: req.patient,
            data_types: req.data_types.clone(),
            reason_sealed: reason.sealed,
            reason_hash: reason.hash,
            device: req.device.clone(),
            nonce: req.nonce,
            issued_at: req.issued_at,
            granted_at: now,
            expires_at: now + d.window.secs,
            window_minutes: d.window.minutes,
            window_blocks: d.window.blocks,
            rules: d.rules,
            message_hash: hex::encode(req.message_hash),
            signature: hex::encode(&req.signature),
            on_call: d.on_call,
            degraded: d.chain.stale,
            chain_lag_blocks: d.chain.lag_blocks,
            patient_registered: Some(d.patient_registered),
        })
    }

    /// The record, its audit entry and the used nonce in one durable write (the chain
    /// operation and the notice follow from the entry: `follow_up`); the token signed while it
    /// syncs, handed out only once the write is durable.
    pub(super) async fn record_and_sign(
        &self,
        access: AccessRecord,
        req: &BreakGlassRequest,
        replay_key: String,
        claim: Option<crate::store::Claim>,
    ) -> Result<Grant, Refusal> {
        // the chain record is made from the access after the token (`follow_up`): its
        // arguments are checked now, so that no token leaves for an access that could not be
        // recorded on chain
        crate::chain::contracts::record_emergency_access_args(&access)
            .map_err(|e| Self::internal("the access's chain record could not be made", e))?;
        let granted = crate::audit::Record::now(access.granted());
        let batch = Batch {
            audit: vec![granted],
            accesses: vec![access.clone()],
            // one process keeps its used nonces as rows (read back at start); replicas' nonces
            // are their claims
            replay: match claim {
                None => vec![(replay_key, req.issued_at + super::NONCE_KEPT_SECS)],
                Some(_) => Vec::new(),
            },
            claims: claim.into_iter().collect(),
            ..Batch::default()
        };
        // the write is handed to the journal first, the token signed while it syncs: the
        // token leaves only once the record is durable, and is dropped if it never is
        let writing = std::time::Instant::now();
        let mut written = Box::pin(apply_started(&self.state.store, batch));
        let claims = self.tokens.claims(&access);
        let token = self.tokens.issue(&claims);
        // a store that does not answer (a hung server, a disk stalled) gets a clear refusal
        // within `WRITE_WAIT`, not a clinician waiting on it; the write may still land (then
        // the access is recorded, on chain and notified, with no token: `Refusal::recorded`)
        let Ok(written) = tokio::time::timeout(WRITE_WAIT, &mut written).await else {
            // the wait as long as it was: the histogram's tail holds the writes given up on
            self.metrics
                .audit_write_seconds
                .observe(writing.elapsed().as_secs_f64());
            tracing::error!(access = %access.id, waited_ms = WRITE_WAIT.as_millis() as u64, "the access's durable write did not answer in time: no token issued");
            // if it lands after all, its record says the token never left
            tokio::spawn(withheld(
                self.state.store.clone(),
                written,
                access.id,
                access.patient,
                access.expires_at,
            ));
            return Err(Refusal::new(
                503,
                "audit-pending",
                "Audit trail not answering",
                "the access could not be recorded in time, so no token was issued; try again (the access may still be recorded, and reviewed as any other)",
            ));
        };
        self.metrics
            .audit_write_seconds
            .observe(writing.elapsed().as_secs_f64());
        match written {
            Ok(()) => {}
            Err(StoreError::Guarded(Guarded::Replayed)) => {
                return Err(super::steps::replayed(&req.signer.to_string(), req.nonce))
            }
            Err(StoreError::Guarded(Guarded::RateLimited)) => {
                return Err(super::steps::rate_limited(&req.signer))
            }
            Err(e) => {
                tracing::error!(error = %e, access = %access.id, "the access could not be recorded: no token issued");
                // an error may have landed all the same (acknowledged by fewer replicas than
                // asked, a copy sent from a dropped connection): if it did, its record says
                // the token never left. One refused before it was sent did not
                if !matches!(e, StoreError::Unwritten(_)) {
                    tokio::spawn(withheld(
                        self.state.store.clone(),
                        Box::pin(std::future::ready(Err(e))),
                        access.id,
                        access.patient,
                        access.expires_at,
                    ));
                }
                return Err(Refusal::new(
                    503,
                    "audit-unavailable",
                    "Audit trail unavailable",
                    "the access could not be recorded, so no token was issued; try again",
                ));
            }
        }

        if let Some(wake) = &self.follow_up {
            // its chain record and notice, made from the log (a follow-up stopped by a
            // shutdown makes them at the next start)
            wake.notify_one();
        }

        let token = token.map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            Refusal::new(
                503,
                "token-unavailable",
                "Token unavailable",
                "the access is recorded but no token could be signed; try again",
            )
        })?;
        tracing::info!(access = %access.id, provider = %access.provider, role = %access.role, window_minutes = access.window_minutes, "break-glass access granted");
        Ok(Grant {
            scope: claims.scope,
            access,
            token,
        })
    }
}

/// Who revokes a token that never left: the service, for a grant whose durable write landed
/// though the clinician was refused (`audit-pending`, `audit-unavailable`).
pub const WITHHELD_BY: &str =
    "breakglass: token never issued (its grant was refused before its write was known to land)";

/// How many times `withheld` asks the store whether a refused grant's write landed.
const WITHHELD_CHECKS: usize = 12;

/// How many refused grants' writes are watched at once (`withheld`): during an outage every
/// grant is refused (except those refused unwritten), and each watch holds a task for up to a
/// minute, and ten more for one that landed while the store refuses its mark; past this, one
/// is not watched (logged).
const WITHHELD_WATCHED: usize = 1024;

/// How many times, and how often, `withheld` tries to write a landed grant's mark that its
/// token never left: for ten minutes, while the store refuses writes (Redis's replicas away).
const WITHHELD_MARK_TRIES: usize = 120;
const WITHHELD_MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

static WITHHELD_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(WITHHELD_WATCHED);

/// Waits for `written`, a grant's write that did not answer in time or answered an error (its
/// clinician refused 503 `audit-pending` or `audit-unavailable`, no token issued). If it
/// lands, the access is on record as any grant (recorded on chain, notified, reviewed), so its
/// token is revoked in the log beside it: a reviewer reads that it never left, and no copy of
/// it is honoured. (A process that stops meanwhile does not: the access then reads as any
/// grant.)
async fn withheld(
    store: std::sync::Arc<dyn crate::store::Store>,
    written: std::pin::Pin<Box<impl std::future::Future<Output = Result<(), StoreError>>>>,
    access: crate::domain::AccessId,
    patient: crate::domain::PatientId,
    expires_at: u64,
) {
    let Ok(_slot) = WITHHELD_SLOTS.try_acquire() else {
        tracing::error!(%access, "too many refused grants watched at once: if this one's write lands, its token reads as issued");
        return;
    };
    let landed = match written.await {
        Ok(()) => true,
        // an error may have landed all the same (acknowledged by fewer replicas than asked, a
        // copy sent from a dropped connection): once it could have, the store says; asked
        // again while it does not answer (a server still hung), for a minute
        Err(_) => {
            let mut landed = None;
            for _ in 0..WITHHELD_CHECKS {
                tokio::time::sleep(WRITE_WAIT).await;
                let store = store.clone();
                if let Ok(Ok(read)) =
                    tokio::task::spawn_blocking(move || store.access(&access)).await
                {
                    landed = Some(read.is_some());
                    break;
                }
            }
            landed.unwrap_or_else(|| {
                tracing::error!(%access, "whether a grant refused for its write landed could not be read: if it did, its token reads as issued");
                false
            })
        }
    };
    if !landed {
        return;
    }
    let revocation = Batch {
        revoked: vec![(access.to_string(), expires_at)],
        audit: vec![crate::audit::Record::now(crate::audit::Event::Revocation {
            jti: access.to_string(),
            by: WITHHELD_BY.into(),
            patient: Some(patient),
        })],
        ..Batch::default()
    };
    // written as soon as the store takes writes again (a grant that landed unacknowledged by
    // Redis's replicas is marked once they are back: until then every write is refused), for
    // `WITHHELD_MARK_TRIES` tries
    for tried in 1..=WITHHELD_MARK_TRIES {
        match crate::store::apply_async(&store, revocation.clone()).await {
            Ok(()) => return,
            Err(e) if tried == WITHHELD_MARK_TRIES => {
                tracing::error!(%access, error = %e, "a grant written after its clinician was refused could not be marked as never issued");
            }
            Err(e) => {
                tracing::warn!(%access, error = %e, "a grant written after its clinician was refused is not marked as never issued yet: trying again");
                tokio::time::sleep(WITHHELD_MARK_EVERY).await;
                // a try that failed may have landed (unacknowledged by Redis's replicas): not
                // written twice
                let store = store.clone();
                let jti = access.to_string();
                if let Ok(Ok(Some(_))) =
                    tokio::task::spawn_blocking(move || store.revoked(&jti)).await
                {
                    return;
                }
            }
        }
    }
}

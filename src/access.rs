//! The break-glass path, top to bottom: verify the signed request, refuse replays, look the
//! clinician up in the chain-state cache, check on-call, the patient's preferences and the
//! policies, then write the access record, the chain-record operation, the patient's notice
//! and the used nonce in one durable write, signing the token while it syncs and handing it
//! out only once the write is durable. No step waits on the node except a cache miss; the
//! chain record and the notice are background work.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::chain::contracts::ACCESS_CONTROL;
use crate::chain::state::ChainState;
use crate::chain::status::FollowerStatus;
use crate::chain::submitter;
use crate::clock::{now_ms, now_secs};
use crate::configuration::Settings;
use crate::domain::ProviderStatus;
use crate::metrics::Metrics;
use crate::paging::{Lookup, OnCall};
use crate::policy::{Policies, Situation, Verdict};
pub use crate::refusal::Refusal;
use crate::request::{self, RequestError};
use crate::stacks::{Principal, Value};
use crate::store::{apply_started, AccessRecord, Batch, ProviderState};
use crate::token::TokenIssuer;

pub struct Grant {
    pub access: AccessRecord,
    pub token: String,
    pub scope: String,
}

pub struct BreakGlass {
    pub state: ChainState,
    pub policies: Arc<Policies>,
    pub tokens: Arc<TokenIssuer>,
    keyring: Arc<crate::seal::Keyring>,
    /// Who is on call (every paging source, combined); read from memory.
    pub oncall: Arc<OnCall>,
    pub metrics: Arc<Metrics>,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Nonces seen (refused requests included), with when they may be forgotten. Granted
    /// ones are also durable and read back at start, so this alone answers "used before?"
    /// without a store read per request.
    seen: Mutex<Seen>,
    chain_id: u32,
    mainnet: bool,
    seconds_per_block: u64,
    notify: crate::configuration::NotifySettings,
    /// Where each grant announces its notice to the notifier (`notify::Notifier::run`).
    notices: Option<tokio::sync::mpsc::UnboundedSender<(u64, String)>>,
    /// How far the follower's view of the chain may be behind (`chain_view`).
    follower: Arc<FollowerStatus>,
    max_lag_blocks: u64,
    /// How recently the node must have answered to count as reachable.
    fresh_ms: u64,
}

/// The service's view of the chain at one grant, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainView {
    pub lag_blocks: u64,
    pub reachable: bool,
    pub stale: bool,
}

/// `status` read at `now_ms`: the lag behind the node's tip, or, when the node has been
/// silent, the blocks that could have been mined since it last answered (a suspension made
/// meanwhile is not seen either way); never heard from, the view counts as stale.
pub fn chain_view(
    status: &FollowerStatus,
    now_ms: u64,
    seconds_per_block: u64,
    max_lag_blocks: u64,
    fresh_ms: u64,
) -> ChainView {
    let heard = status.last_poll_ok_ms.load(Ordering::SeqCst);
    if heard == 0 || status.applied() == 0 {
        return ChainView {
            lag_blocks: u64::MAX,
            reachable: false,
            stale: true,
        };
    }
    let silent_ms = now_ms.saturating_sub(heard);
    let silent_blocks = silent_ms / seconds_per_block.saturating_mul(1000).max(1);
    let lag_blocks = status.lag().max(silent_blocks);
    ChainView {
        lag_blocks,
        reachable: status.node_reachable.load(Ordering::SeqCst) && silent_ms <= fresh_ms,
        stale: lag_blocks > max_lag_blocks,
    }
}

impl BreakGlass {
    pub fn new(
        settings: &Settings,
        state: ChainState,
        follower: Arc<FollowerStatus>,
        policies: Arc<Policies>,
        tokens: Arc<TokenIssuer>,
        keyring: Arc<crate::seal::Keyring>,
        metrics: Metrics,
    ) -> anyhow::Result<BreakGlass> {
        let oncall = Arc::new(OnCall::load(&settings.oncall, state.store.clone())?);
        let per_minute =
            NonZeroU32::new(settings.issuance.grants_per_minute).unwrap_or(NonZeroU32::MIN);
        let mut seen = Seen::default();
        for (key, until) in state.store.replays()? {
            if until > now_secs() {
                seen.insert(key, until);
            }
        }
        Ok(BreakGlass {
            state,
            policies,
            tokens,
            keyring,
            oncall,
            metrics: Arc::new(metrics),
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            seen: Mutex::new(seen),
            chain_id: settings.chain.network.chain_id(),
            mainnet: settings.chain.network.is_mainnet(),
            seconds_per_block: settings.issuance.seconds_per_block,
            notify: settings.notify.clone(),
            notices: None,
            follower,
            max_lag_blocks: settings.follower.max_lag_blocks,
            fresh_ms: settings.follower.fresh_ms(),
        })
    }

    /// Announces each grant's notice to the notifier.
    pub fn with_notices(
        mut self,
        notices: tokio::sync::mpsc::UnboundedSender<(u64, String)>,
    ) -> BreakGlass {
        self.notices = Some(notices);
        self
    }

    fn unavailable(e: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "chain state unavailable");
        Refusal::new(
            503,
            "chain-state-unavailable",
            "Chain state unavailable",
            "the service cannot read the chain state right now; try again",
        )
    }

    pub async fn request(&self, body: &[u8]) -> Result<Grant, Refusal> {
        let now = now_secs();
        // 1-3. the request, its signature, its freshness
        let req = request::verify(body, self.chain_id, self.mainnet, now).map_err(|e| match e {
            RequestError::Malformed(m) => {
                Refusal::new(400, "malformed-request", "Malformed request", m)
            }
            RequestError::WrongDomain(m) => {
                Refusal::new(400, "wrong-domain", "Signed for another domain", m)
            }
            RequestError::BadSignature(m) => Refusal::new(401, "bad-signature", "Bad signature", m),
            e @ RequestError::Stale { .. } => {
                Refusal::new(401, "stale-request", "Stale request", e.to_string())
            }
        })?;
        let signer = req.signer.to_string();
        let replay_key = format!("{signer}:{}", req.nonce);
        let until = req.issued_at + 2 * request::MAX_SKEW_SECS;
        let replayed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.forget_until(now);
            seen.insert(replay_key.clone(), until)
        };
        if replayed {
            return Err(Refusal::new(
                401,
                "replayed-request",
                "Replayed request",
                format!("nonce {} was already used by {signer}", req.nonce),
            ));
        }
        let answer = self.judge(req, signer, replay_key.clone(), now).await;
        if answer.as_ref().is_err_and(Refusal::invites_retry) {
            // nothing was recorded: the same signed request may be sent again
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.remove(&replay_key, until);
        }
        answer
    }

    /// Steps 4 to 8 and the grant, for a verified, fresh request whose nonce is now taken.
    async fn judge(
        &self,
        req: request::BreakGlassRequest,
        signer: String,
        replay_key: String,
        now: u64,
    ) -> Result<Grant, Refusal> {
        // 4. the clinician, as the chain has them
        let role = match self
            .state
            .provider(&signer)
            .await
            .map_err(Self::unavailable)?
        {
            ProviderState::Unregistered => {
                return Err(Refusal::new(
                    403,
                    "unknown-provider",
                    "Unknown provider",
                    format!("{signer} is not a registered provider"),
                ))
            }
            ProviderState::Registered {
                status: ProviderStatus::Verified,
                role,
                ..
            } => role,
            ProviderState::Registered { status, .. } => {
                return Err(Refusal::new(
                    403,
                    "provider-not-verified",
                    "Provider not verified",
                    format!("{signer} is {status}, not verified"),
                ))
            }
        };

        // 5. on call, by any paging source
        let on_call = match self.oncall.lookup(&signer, now) {
            Lookup::NotChecked => None,
            Lookup::OnCall(fact) => Some(fact),
            Lookup::NotOnCall => {
                return Err(Refusal::new(
                    403,
                    "not-on-call",
                    "Not on call",
                    format!("{signer} is not on call according to any paging source"),
                ))
            }
        };

        // 6. the patient's own emergency preferences
        let prefs = self
            .state
            .preferences(&req.patient)
            .await
            .map_err(Self::unavailable)?;
        if !prefs.allow {
            return Err(Refusal::new(
                403,
                "patient-opted-out",
                "Patient opted out",
                "the patient has opted out of emergency access",
            ));
        }
        if let Some(dt) = req
            .data_types
            .iter()
            .find(|d| !prefs.data_types.contains(d))
        {
            return Err(Refusal::new(
                403,
                "data-type-not-allowed-by-patient",
                "Not allowed by the patient",
                format!("the patient does not allow emergency access to {dt}"),
            ));
        }

        // 7. the policies, which also see how fresh the chain state is and whether the
        // patient is registered
        let chain = chain_view(
            &self.follower,
            now_ms(),
            self.seconds_per_block,
            self.max_lag_blocks,
            self.fresh_ms,
        );
        let patient_registered = prefs.registered.unwrap_or(false);
        let situation = Situation {
            on_call: on_call.as_ref(),
            chain_lag_blocks: chain.lag_blocks,
            chain_reachable: chain.reachable,
            chain_stale: chain.stale,
            patient_registered,
        };
        let (policy_minutes, rules) = match self
            .policies
            .decide(&signer, role, &req.data_types, &situation)
            .map_err(Self::unavailable)?
        {
            Verdict::Permit {
                window_minutes,
                rules,
            } => (window_minutes, rules),
            // refused on a stale view: the staleness is the reason only if a fresh view
            // would be permitted (otherwise the policies' own refusal is the answer)
            Verdict::Deny { message, .. }
                if chain.stale
                    && matches!(
                        self.policies
                            .decide(
                                &signer,
                                role,
                                &req.data_types,
                                &Situation {
                                    chain_lag_blocks: 0,
                                    chain_reachable: true,
                                    chain_stale: false,
                                    ..situation
                                },
                            )
                            .map_err(Self::unavailable)?,
                        Verdict::Permit { .. }
                    ) =>
            {
                let lag = if chain.lag_blocks == u64::MAX {
                    "has never been confirmed by the node".to_string()
                } else {
                    format!("may be {} blocks old", chain.lag_blocks)
                };
                return Err(Refusal::new(
                    503,
                    "chain-state-stale",
                    "Chain state stale",
                    format!(
                        "the service's view of the chain {lag} (the limit is {}), so a suspension or an opt-out could be missed: {message}; try again",
                        self.max_lag_blocks
                    ),
                ));
            }
            Verdict::Deny { message, .. } => {
                return Err(Refusal::new(
                    403,
                    "policy-denied",
                    "Denied by policy",
                    message,
                ))
            }
        };
        if chain.stale {
            tracing::warn!(provider = %signer, lag_blocks = chain.lag_blocks, "a degraded grant: the policies permit it on a stale view of the chain");
        }

        // 8. the rate of grants per clinician
        if self.limiter.check_key(&signer).is_err() {
            return Err(Refusal::new(
                429,
                "rate-limited",
                "Too many requests",
                format!("{signer} has asked for too many accesses; wait a minute"),
            ));
        }

        // the window: the policy's, never beyond the patient's maximum (in blocks, which the
        // chain record is checked against), to the second; patient-consent keeps every
        // patient's maximum within the contracts' one longest window
        // (`get-max-emergency-window`), so that bound holds here too
        let max_blocks = prefs.max_window.max(1);
        let window_secs = (u64::from(policy_minutes.max(1)) * 60)
            .min(max_blocks.saturating_mul(self.seconds_per_block))
            .max(1);
        let window_blocks = window_secs
            .div_ceil(self.seconds_per_block)
            .clamp(1, max_blocks);
        let window_minutes = u32::try_from(window_secs.div_ceil(60)).unwrap_or(u32::MAX);

        // the record, the chain operation and the used nonce: one durable write, or nothing
        let id = access_id(now_ms());
        let reason_hash: [u8; 32] = Sha256::digest(req.reason.as_bytes()).into();
        let access = AccessRecord {
            id: hex::encode(id),
            provider: signer.clone(),
            role,
            patient: req.patient,
            data_types: req.data_types.clone(),
            reason_sealed: hex::encode(
                self.keyring
                    .seal(
                        &crate::seal::names::reason(&hex::encode(id)),
                        req.reason.as_bytes(),
                    )
                    .map_err(|e| {
                        tracing::error!(error = %e, "sealing the reason failed");
                        Self::unavailable("sealing the reason")
                    })?,
            ),
            reason_hash: hex::encode(reason_hash),
            device: req.device.clone(),
            nonce: req.nonce,
            issued_at: req.issued_at,
            granted_at: now,
            expires_at: now + window_secs,
            window_minutes,
            window_blocks,
            rules,
            message_hash: hex::encode(req.message_hash),
            signature: hex::encode(&req.signature),
            on_call,
            degraded: chain.stale,
            chain_lag_blocks: chain.lag_blocks,
            patient_registered: Some(patient_registered),
        };
        let args: Vec<String> = [
            Value::buffer(id),
            Value::Principal(Principal::Standard(req.signer)),
            Value::buffer(req.patient.0),
            Value::List(
                req.data_types
                    .iter()
                    .map(|d| Value::ascii(d.as_str()))
                    .collect(),
            ),
            Value::UInt(window_blocks.into()),
            Value::buffer(reason_hash),
            Value::Bool(chain.stale),
        ]
        .iter()
        .map(Value::to_hex)
        .collect();
        let record = submitter::operation(
            &format!("record:{}", access.id),
            ACCESS_CONTROL,
            "record-emergency-access",
            &args,
        );
        let notice = crate::notify::notice_for(&self.notify, &access);
        let announce = (notice.next_at, notice.access_id.clone());
        let batch = Batch {
            notices: vec![notice],
            accesses: vec![access.clone()],
            submissions: vec![record],
            replay: vec![(replay_key, req.issued_at + 2 * request::MAX_SKEW_SECS)],
            ..Batch::default()
        };
        // the write is handed to the journal first, the token signed while it syncs: the
        // token leaves only once the record is durable, and is dropped if it never is
        let writing = std::time::Instant::now();
        let written = apply_started(&self.state.store, batch);
        let claims = self.tokens.claims(&access);
        let token = self.tokens.issue(&claims);
        let written = written.await;
        self.metrics
            .audit_write_seconds
            .observe(writing.elapsed().as_secs_f64());
        if let Err(e) = written {
            tracing::error!(error = %e, access = %access.id, "the access could not be recorded: no token issued");
            return Err(Refusal::new(
                503,
                "audit-unavailable",
                "Audit trail unavailable",
                "the access could not be recorded, so no token was issued; try again",
            ));
        }

        if let Some(n) = &self.notices {
            // the notifier may have stopped (shutdown): the next start reads it from the store
            let _ = n.send(announce);
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
        tracing::info!(access = %access.id, provider = %signer, role = %role, window_minutes, "break-glass access granted");
        Ok(Grant {
            scope: claims.scope,
            access,
            token,
        })
    }
}

/// Used nonces (`signer:nonce`), and the same by when they may be forgotten, so that
/// forgetting touches only the expired ones (a sweep of every entry, once a second, held the
/// lock for milliseconds at a thousand requests a second).
#[derive(Default)]
struct Seen {
    keys: HashSet<String>,
    by_time: std::collections::BTreeMap<u64, Vec<String>>,
}

impl Seen {
    /// Records `key`; true if it was already there (a replay).
    fn insert(&mut self, key: String, until: u64) -> bool {
        if self.keys.contains(&key) {
            return true;
        }
        self.by_time.entry(until).or_default().push(key.clone());
        self.keys.insert(key);
        false
    }

    /// Forgets `key`, recorded with `until`, at once (a request that may be sent again).
    fn remove(&mut self, key: &str, until: u64) {
        if self.keys.remove(key) {
            if let Some(keys) = self.by_time.get_mut(&until) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.by_time.remove(&until);
                }
            }
        }
    }

    /// Forgets what may be forgotten by `now`.
    fn forget_until(&mut self, now: u64) {
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                self.keys.remove(&key);
            }
        }
    }
}

impl BreakGlass {
    /// The clinician's reason for `access`, unsealed: for the authorized access view only.
    pub fn reason(&self, access: &AccessRecord) -> Option<String> {
        let sealed = hex::decode(&access.reason_sealed).ok()?;
        let plain = self
            .keyring
            .open(&crate::seal::names::reason(&access.id), &sealed)
            .ok()?;
        String::from_utf8(plain).ok()
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

/// A new access id: the grant time (unix milliseconds, 6 bytes, big-endian) then 26 random
/// bytes. Ids sort by time, so the store appends them instead of scattering them across its
/// B-tree, and 208 random bits keep them unguessable.
pub fn access_id(now_ms: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut id[6..]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_nonces_are_kept_until_due_and_forgotten_then() {
        let mut seen = Seen::default();
        assert!(!seen.insert("ST1:1".into(), 100));
        assert!(!seen.insert("ST1:2".into(), 90));
        assert!(
            seen.insert("ST1:1".into(), 200),
            "a replay, whatever its time"
        );
        seen.forget_until(89);
        assert!(seen.insert("ST1:2".into(), 300), "not due yet");
        seen.forget_until(90);
        assert!(!seen.insert("ST1:2".into(), 300), "forgotten when due");
        assert!(seen.insert("ST1:1".into(), 100), "the other one stays");
        seen.forget_until(1000);
        assert!(seen.keys.is_empty() && seen.by_time.is_empty());
    }

    #[test]
    fn a_nonce_given_back_may_be_used_again_and_the_others_stay() {
        let mut seen = Seen::default();
        assert!(!seen.insert("ST1:1".into(), 100));
        assert!(!seen.insert("ST1:2".into(), 100));
        seen.remove("ST1:1", 100);
        assert!(!seen.insert("ST1:1".into(), 100), "usable again");
        assert!(seen.insert("ST1:2".into(), 100), "still used");
        seen.remove("ST1:1", 100);
        seen.remove("ST1:2", 100);
        assert!(seen.keys.is_empty() && seen.by_time.is_empty());
    }

    #[test]
    fn only_refusals_that_recorded_nothing_and_ask_to_try_again_give_the_nonce_back() {
        let r = |status, code| Refusal::new(status, code, "", "");
        assert!(r(429, "rate-limited").invites_retry());
        assert!(r(503, "chain-state-unavailable").invites_retry());
        assert!(r(503, "audit-unavailable").invites_retry());
        // the access was recorded, with its nonce
        assert!(!r(503, "token-unavailable").invites_retry());
        assert!(!r(403, "policy-denied").invites_retry());
        assert!(!r(401, "bad-signature").invites_retry());
    }
}

//! The break-glass path, top to bottom: verify the signed request, refuse replays, look the
//! clinician up in the chain-state cache, check on-call, the patient's preferences and the
//! policies, then write the access record, its audit entry and the used nonce in one durable
//! write, signing the token while it syncs and handing it out only once the write is durable.
//! No step waits on the node except a cache miss; the chain record and the notice are
//! background work, made from the audit entry by the grants' follow-up (`follow_up.rs`).
//!
//! `request` reads as the pipeline: verify (`request.rs`), the nonce (taken in this process's
//! memory, `coordination::Local`; with replicas, a `store::Claim` that the grant's write takes
//! with the record, so a replay there is refused by that write), then `judge`: the steps
//! (`steps.rs`), each refusing with its own code, then the grant (`grant.rs`). `view.rs` says
//! how fresh the view of the chain is; `reasons.rs` keeps the clinician's reason sealed.
//!
//! It must not: wait on the node on a cache hit, or hand out a token before its access is
//! durable.

use std::sync::Arc;

use crate::chain::state::ChainState;
use crate::chain::status::FollowerStatus;
use crate::clock::{now_ms, now_secs};
use crate::configuration::Settings;
use crate::coordination::Coordinator;
use crate::metrics::Metrics;
use crate::paging::OnCall;
use crate::policy::{Policies, Situation};
pub use crate::refusal::Refusal;
use crate::request::{self, RequestError};
use crate::stacks::Address;
use crate::store::AccessRecord;
use crate::token::TokenIssuer;
use grant::{Decision, Window};
pub use reasons::rekey_reasons;
use steps::replayed;
pub use view::{chain_view, ChainView};

pub mod follow_up;
mod grant;
pub use grant::WITHHELD_BY;
pub mod reasons;
mod steps;
pub(crate) mod view;

/// How many introspections of our tokens whose window had closed go to the audit log a minute
/// (in each process); the rest are counted (`expired_introspections_unlogged` in `/metrics`).
/// A resource server introspects each token it is shown: unbounded, anyone holding an old one
/// would grow the log.
pub const EXPIRED_INTROSPECTIONS_PER_MINUTE: u32 = 60;

pub struct Grant {
    pub access: AccessRecord,
    pub token: String,
    pub scope: String,
}

/// How long after its request was issued a grant's nonce is kept (its `until`): twice the
/// clock skew a request may have, so that no copy of it is fresh once it is forgotten.
pub const NONCE_KEPT_SECS: u64 = 2 * request::MAX_SKEW_SECS;

pub struct BreakGlass {
    pub state: ChainState,
    pub policies: Arc<Policies>,
    pub tokens: Arc<TokenIssuer>,
    keyring: Arc<crate::seal::Keyring>,
    /// Who is on call (every paging source, combined); read from memory.
    pub oncall: Arc<OnCall>,
    pub metrics: Arc<Metrics>,
    /// Used nonces (a refused request's given back, so it may be sent again while fresh) and
    /// rate limits: in memory for one process (granted nonces are also durable and read back
    /// at start), on Redis for replicas.
    pub coordination: Arc<Coordinator>,
    chain_id: u32,
    mainnet: bool,
    seconds_per_block: u64,
    /// What each grant wakes: its follow-up, which makes its chain record and notice
    /// (`follow_up::FollowUp::run`).
    follow_up: Option<Arc<tokio::sync::Notify>>,
    /// How far the follower's view of the chain may be behind (`chain_view`).
    follower: Arc<FollowerStatus>,
    max_lag_blocks: u64,
    /// How recently the node must have answered to count as reachable.
    fresh_ms: u64,
    /// Each signer's share of refusal entries in the audit log (`REFUSAL_ENTRIES_PER_MINUTE`).
    refusal_entries: governor::DefaultKeyedRateLimiter<Address>,
    /// The audit log's share of introspections of our tokens whose window had closed
    /// (`EXPIRED_INTROSPECTIONS_PER_MINUTE`).
    pub expired_introspections: governor::DefaultDirectRateLimiter,
    /// The refusals logged of each signed request (what was signed and the refusal's code), with
    /// when the request stops being fresh (`LOGGED_REFUSALS_MAX` at most).
    logged_refusals: Arc<std::sync::Mutex<std::collections::HashMap<RefusalOf, u64>>>,
}

/// One signed request refused for one reason: the SIP-018 hash of what was signed (a request
/// signed anew with the same nonce, which a refusal gives back, is another request) and the
/// code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalOf {
    message_hash: [u8; 32],
    code: &'static str,
}

/// A signed request, as its refusals are logged: what was signed and when it stops being fresh.
#[derive(Debug, Clone, Copy)]
struct Signed {
    message_hash: [u8; 32],
    fresh_until: u64,
}

/// How many logged refusals of signed requests are remembered at most (in each process), so
/// that the same request refused for the same reason again goes to the audit log once: a
/// captured refused request, replayed while fresh, would otherwise use up its clinician's
/// share of entries (`REFUSAL_ENTRIES_PER_MINUTE`), leaving their own next refusals unlogged.
/// Beyond it (a flood of distinct requests, which the share bounds), requests are not
/// remembered and the share alone applies.
const LOGGED_REFUSALS_MAX: usize = 10_000;

/// How many refusals of one signer a minute go to the audit log (in each process); the rest
/// are counted (`refusals_unlogged` in `/metrics`). Anyone may register as a provider (a
/// pending one) and sign requests that are refused, each refusal a synced write beside the
/// grants: without a bound, one registration could grow the log, and hold up the grants'
/// writes, without end.
pub const REFUSAL_ENTRIES_PER_MINUTE: u32 = 20;

impl BreakGlass {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        state: ChainState,
        follower: Arc<FollowerStatus>,
        policies: Arc<Policies>,
        tokens: Arc<TokenIssuer>,
        keyring: Arc<crate::seal::Keyring>,
        metrics: Metrics,
        coordination: Arc<Coordinator>,
    ) -> anyhow::Result<BreakGlass> {
        let oncall = Arc::new(
            OnCall::load(&settings.oncall, state.store.clone())?
                .shared_with_replicas(coordination.is_shared()),
        );
        if let Coordinator::Local(local) = coordination.as_ref() {
            local.recall(state.store.as_ref())?;
        }
        Ok(BreakGlass {
            state,
            policies,
            tokens,
            keyring,
            oncall,
            metrics: Arc::new(metrics),
            coordination,
            chain_id: settings.chain.network.chain_id(),
            mainnet: settings.chain.network.is_mainnet(),
            seconds_per_block: settings.issuance.seconds_per_block,
            follow_up: None,
            follower,
            max_lag_blocks: settings.follower.max_lag_blocks,
            fresh_ms: settings.follower.fresh_ms(),
            refusal_entries: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(REFUSAL_ENTRIES_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            logged_refusals: Default::default(),
            expired_introspections: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(EXPIRED_INTROSPECTIONS_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
        })
    }

    /// Wakes the grants' follow-up after each grant.
    pub fn with_follow_up(mut self, wake: Arc<tokio::sync::Notify>) -> BreakGlass {
        self.follow_up = Some(wake);
        self
    }

    fn unavailable(e: crate::chain::state::StateError) -> Refusal {
        use crate::chain::{rpc::RpcError, state::StateError};
        tracing::error!(error = %e, "chain state unavailable");
        let detail = match e {
            // (another replica applied a block this replica's node has not got yet)
            StateError::Rpc(RpcError::NoSuchTip { .. }) => {
                "this replica's Stacks node is behind the chain state the service holds; try again in a moment"
            }
            _ => "the service cannot read the chain state right now; try again",
        };
        Refusal::new(
            503,
            "chain-state-unavailable",
            "Chain state unavailable",
            detail,
        )
    }

    /// The policies could not be evaluated (a fault of the policies or the service, not of the
    /// request or the chain: trying again does not help).
    fn policy_error(e: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "the policies could not be evaluated");
        Refusal::new(
            500,
            "policy-error",
            "Policy error",
            "the break-glass policies could not be evaluated: tell the service's operators",
        )
    }

    /// A fault of the service itself (its keys, the record it would write): trying again does
    /// not help.
    fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "{what}");
        Refusal::new(
            500,
            "internal-error",
            "Internal error",
            format!("{what}: tell the service's operators"),
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
        let until = req.issued_at + NONCE_KEPT_SECS;
        let sent = Signed {
            message_hash: req.message_hash,
            fresh_until: until,
        };
        let refused = crate::audit::Event::Refusal {
            code: String::new(),
            status: 0,
            signer: Some(req.signer),
            patient: Some(req.patient),
            data_types: req.data_types.clone(),
        };
        // the nonce (and at step 8 the rate): taken now in this process's memory, or, with
        // replicas, claimed for the grant's write to take in the same synced write
        let claim = match self.coordination.as_ref() {
            Coordinator::Local(local) => {
                if !local.use_nonce(&replay_key, until) {
                    let r = replayed(&signer, req.nonce);
                    self.audit_refusal(refused, &r, sent).await;
                    return Err(r);
                }
                None
            }
            Coordinator::Redis(shared) => Some(shared.claim(&replay_key, until, now, &signer)),
        };
        let answer = self
            .judge(req, signer, replay_key.clone(), claim, now)
            .await;
        if let Err(r) = &answer {
            self.audit_refusal(refused, r, sent).await;
        }
        if let Coordinator::Local(local) = self.coordination.as_ref() {
            if answer.as_ref().is_err_and(|r| !r.recorded()) {
                // only a recorded access uses a nonce up: the same signed request may be sent
                // again while fresh, and is judged again (as a refused claim takes nothing)
                local.give_back(&replay_key, until);
            }
        }
        answer
    }

    /// Appends a refusal of a request signed by a provider the chain knows to the audit log,
    /// `REFUSAL_ENTRIES_PER_MINUTE` of each signer at most (other refusals are only counted, in
    /// `/metrics`: anyone can make a key and sign, or register as a provider, so anonymous
    /// traffic cannot grow the log without bound). A refusal that happened after the access
    /// was recorded (no token could be signed) is not one: the grant is in the log. The same
    /// signed request (`request`: its replay key and when it stops being fresh) refused again
    /// for the same reason is counted, not logged again (`LOGGED_REFUSALS_MAX`).
    async fn audit_refusal(&self, mut event: crate::audit::Event, r: &Refusal, request: Signed) {
        if r.recorded() {
            return;
        }
        let mut remembered = None;
        // a key made on the spot signs as well as any: only signers the chain knows as
        // providers are logged
        if let crate::audit::Event::Refusal {
            signer: Some(signer),
            ..
        } = &event
        {
            if !matches!(
                self.state.store.provider(signer),
                Ok(Some(crate::store::ProviderState::Registered { .. }))
            ) {
                return;
            }
            let once = RefusalOf {
                message_hash: request.message_hash,
                code: r.code,
            };
            let mut logged = self
                .logged_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = now_secs();
            if logged.get(&once).is_some_and(|fresh| *fresh >= now) {
                drop(logged);
                self.metrics.refusals_unlogged.inc();
                return;
            }
            if self.refusal_entries.check_key(signer).is_err() {
                drop(logged);
                self.metrics.refusals_unlogged.inc();
                return;
            }
            if logged.len() >= LOGGED_REFUSALS_MAX {
                logged.retain(|_, fresh| *fresh >= now);
            }
            if logged.len() < LOGGED_REFUSALS_MAX {
                logged.insert(once.clone(), request.fresh_until);
                remembered = Some(once);
            }
        }
        if let crate::audit::Event::Refusal { code, status, .. } = &mut event {
            *code = r.code.to_string();
            *status = r.status;
        }
        let batch = crate::store::Batch::logging(event);
        // handed to the store now, and waited on no longer than a grant's write: a stalled
        // store delays the refusal's answer by that much at most. Its outcome is taken by a task
        // of its own (which holds no store, and outlives this request if it must): an entry that
        // did not land is forgotten as logged, so that the next copy of the request is logged
        let written = crate::store::apply_started(&self.state.store, batch);
        let logged = self.logged_refusals.clone();
        let code = r.code;
        let outcome = tokio::spawn(async move {
            if let Err(e) = written.await {
                tracing::error!(error = %e, code, "a refusal could not be added to the audit log");
                if let Some(once) = &remembered {
                    logged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(once);
                }
            }
        });
        if tokio::time::timeout(grant::WRITE_WAIT, outcome)
            .await
            .is_err()
        {
            tracing::error!(
                code,
                "a refusal's audit entry did not answer in time; the refusal is answered"
            );
        }
    }

    /// Steps 4 to 8 and the grant, for a verified, fresh request whose nonce is now taken, or
    /// is claimed (`claim`: the grant's write takes it and the rate): each step refuses with
    /// its own code, or hands on what the next ones need.
    async fn judge(
        &self,
        req: request::BreakGlassRequest,
        signer: String,
        replay_key: String,
        claim: Option<crate::store::Claim>,
        now: u64,
    ) -> Result<Grant, Refusal> {
        let role = self.clinician(&req.signer).await?;
        let on_call = self.on_call(&signer, now).await?;
        let prefs = self.patient_allows(&req).await?;
        let chain = chain_view(
            &self.follower,
            now_ms(),
            self.seconds_per_block,
            self.max_lag_blocks,
            self.fresh_ms,
        );
        let situation = Situation {
            on_call: on_call.as_ref(),
            chain_lag_blocks: chain.lag_blocks,
            chain_reachable: chain.reachable,
            chain_stale: chain.stale,
            patient_registered: prefs.registered.unwrap_or(false),
        };
        let (policy_minutes, rules) =
            self.policies_permit(&signer, role, &req, &situation, chain)?;
        self.within_rate(&req.signer)?;
        let decision = Decision {
            role,
            window: Window::of(policy_minutes, prefs.max_window, self.seconds_per_block),
            rules,
            patient_registered: situation.patient_registered,
            on_call,
            chain,
        };
        let answer = match self.access_record(&req, now, decision) {
            Ok(access) => self.record_and_sign(access, &req, replay_key, claim).await,
            Err(r) => Err(r),
        };
        if answer.as_ref().is_err_and(|r| !r.recorded()) {
            // nothing recorded: the grant it took of the clinician's rate is given back
            self.give_back_rate(&req.signer);
        }
        answer
    }
}

/// What a clinician may ask for, as the tablet shows it before they ask: their role and
/// status (the chain-state cache), and per data type whether the policies permit it with the
/// clinician's on-call state as a request now would see it, on a fresh view of the chain, and
/// for how long, or why not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Options {
    pub principal: Address,
    pub role: Option<crate::domain::Role>,
    pub status: Option<crate::domain::ProviderStatus>,
    pub data_types: Vec<DataTypeOption>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DataTypeOption {
    pub data_type: crate::domain::DataType,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BreakGlass {
    /// The shared bound on lookups of principals the cache does not know
    /// (`ChainState::bounded_lookup`).
    fn bounded_lookup(&self, principal: &Address) -> Result<(), Refusal> {
        self.state.bounded_lookup(principal)
    }

    pub async fn options(&self, principal: Address) -> Result<Options, Refusal> {
        use crate::domain::DataType;
        use crate::policy::Verdict;
        // anyone may ask
        self.bounded_lookup(&principal)?;
        let state = self
            .state
            .provider(&principal)
            .await
            .map_err(Self::unavailable)?;
        let (role, status) = match state {
            crate::store::ProviderState::Registered { role, status, .. } => {
                (Some(role), Some(status))
            }
            crate::store::ProviderState::Unregistered => (None, None),
        };
        // what the policies see of the clinician's on-call state, as a request now would (a
        // policy may read it): none when not on call (the request is then refused for that);
        // looked up for providers the chain knows only
        let on_call = match role {
            Some(_) => match self
                .oncall
                .lookup_fresh(&principal.to_string(), crate::clock::now_secs())
                .await
            {
                crate::paging::Lookup::OnCall(fact) => Some(fact),
                _ => None,
            },
            None => None,
        };
        let situation = Situation {
            on_call: on_call.as_ref(),
            ..Situation::NORMAL
        };
        let mut data_types = Vec::new();
        for dt in DataType::ALL {
            let option = match role {
                None => DataTypeOption {
                    data_type: *dt,
                    allowed: false,
                    window_minutes: None,
                    reason: Some(format!("{principal} is not a provider on chain")),
                },
                Some(role) => {
                    match self
                        .policies
                        .decide(&principal.to_string(), role, &[*dt], &situation)
                    {
                        Ok(Verdict::Permit { window_minutes, .. }) => DataTypeOption {
                            data_type: *dt,
                            allowed: true,
                            window_minutes: Some(window_minutes),
                            reason: None,
                        },
                        Ok(Verdict::Deny { message, .. }) => DataTypeOption {
                            data_type: *dt,
                            allowed: false,
                            window_minutes: None,
                            reason: Some(message),
                        },
                        Err(e) => return Err(Self::policy_error(e)),
                    }
                }
            };
            data_types.push(option);
        }
        Ok(Options {
            principal,
            role,
            status,
            data_types,
        })
    }
}

/// A new access id: the grant time (unix milliseconds, 6 bytes, big-endian) then 26 random
/// bytes. Ids sort by time, so the store appends them instead of scattering them across its
/// B-tree, and 208 random bits keep them unguessable.
pub fn access_id(now_ms: u64) -> crate::domain::AccessId {
    let mut id = [0u8; 32];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut id[6..]);
    crate::domain::AccessId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_after_the_record_counts_as_recorded() {
        let r = |status, code| Refusal::new(status, code, "", "");
        // the access was recorded, with its nonce
        assert!(r(503, "token-unavailable").recorded());
        // or may yet be: its write did not answer in time
        assert!(r(503, "audit-pending").recorded());
        for (status, code) in [
            (429, "rate-limited"),
            (503, "audit-unavailable"),
            (403, "policy-denied"),
            (401, "replayed-request"),
        ] {
            assert!(!r(status, code).recorded(), "{code}");
        }
    }

    /// A node behind the block the shared cache is at is named as the cause, under the code a
    /// client already handles (the tablet: try again in a moment).
    #[test]
    fn a_node_behind_the_shared_state_is_named_in_the_refusal() {
        use crate::chain::{rpc::RpcError, state::StateError};
        let behind = BreakGlass::unavailable(StateError::Rpc(RpcError::NoSuchTip {
            call: "call-read get-provider".into(),
            tip: "ab".repeat(32),
        }));
        assert_eq!(
            (behind.status, behind.code),
            (503, "chain-state-unavailable")
        );
        assert!(
            behind.detail.contains("node is behind"),
            "{}",
            behind.detail
        );
        let down = BreakGlass::unavailable(StateError::Rpc(RpcError::Unreachable {
            call: "call-read get-provider".into(),
            detail: "refused".into(),
        }));
        assert_eq!((down.status, down.code), (503, "chain-state-unavailable"));
        assert!(!down.detail.contains("behind"), "{}", down.detail);
    }
}

//! Steps 4 to 8 of a grant, each a method that refuses with its own code or hands on what the
//! next steps need: the clinician as the chain has them, on call, the patient's preferences,
//! the policies (with how fresh the view of the chain is), the clinician's rate.
//!
//! It must not: write anything (the grant does, once every step passed).

use super::{BreakGlass, ChainView};
use crate::coordination::Coordinator;
use crate::domain::chain::{Preferences, ProviderState};
use crate::domain::DataType;
use crate::domain::OnCall as OnCallFact;
use crate::domain::{ProviderStatus, Role};
use crate::paging::Lookup;
use crate::policy::{Situation, Verdict};
use crate::refusal::Refusal;
use crate::request::BreakGlassRequest;
use crate::stacks::Address;

impl BreakGlass {
    /// Step 4, the clinician, as the chain has them: registered and verified, with their role.
    /// A signer the cache does not know is looked up within `LOOKUPS_PER_SECOND` (any key
    /// signs: one made on the spot per request was a read from the node each).
    pub(super) async fn clinician(&self, signer: &Address) -> Result<Role, Refusal> {
        self.bounded_lookup(signer)?;
        match self
            .state
            .provider(signer)
            .await
            .map_err(Self::unavailable)?
        {
            ProviderState::Unregistered => Err(Refusal::new(
                403,
                "unknown-provider",
                "Unknown provider",
                format!("{signer} is not a registered provider"),
            )),
            ProviderState::Registered {
                status: ProviderStatus::Verified,
                role,
                ..
            } => Ok(role),
            ProviderState::Registered { status, .. } => Err(Refusal::new(
                403,
                "provider-not-verified",
                "Provider not verified",
                format!("{signer} is {status}, not verified"),
            )),
        }
    }

    /// Step 5, on call, by any paging source: why (kept with the access), or `None` when on-call
    /// is not checked.
    pub(super) async fn on_call(
        &self,
        signer: &str,
        now: u64,
    ) -> Result<Option<OnCallFact>, Refusal> {
        match self.oncall.lookup_fresh(signer, now).await {
            Lookup::NotChecked => Ok(None),
            Lookup::OnCall(fact) => Ok(Some(fact)),
            Lookup::NotOnCall => Err(Refusal::new(
                403,
                "not-on-call",
                "Not on call",
                format!("{signer} is not on call according to any paging source"),
            )),
        }
    }

    /// Step 6, the patient's own emergency preferences allow every data type asked for, and
    /// every section of the emergency summary if it is asked for (`domain::covering`).
    pub(super) async fn patient_allows(
        &self,
        req: &BreakGlassRequest,
    ) -> Result<Preferences, Refusal> {
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
        if let Some(dt) = crate::domain::covering(&req.data_types)
            .into_iter()
            .find(|d| !prefs.data_types.contains(d))
        {
            let part = if req.data_types.contains(&dt) {
                String::new()
            } else {
                format!(", a section of the {}", DataType::EmergencySummary)
            };
            return Err(Refusal::new(
                403,
                "data-type-not-allowed-by-patient",
                "Not allowed by the patient",
                format!("the patient does not allow emergency access to {dt}{part}"),
            ));
        }
        Ok(prefs)
    }

    /// Step 7, the policies permit every data type (the window in minutes, the rules that
    /// decided). Refused on a stale view, the staleness is the reason only if a fresh view
    /// would be permitted; otherwise the policies' own refusal is the answer.
    pub(super) fn policies_permit(
        &self,
        signer: &str,
        role: Role,
        req: &BreakGlassRequest,
        situation: &Situation,
        chain: ChainView,
    ) -> Result<(u32, Vec<String>), Refusal> {
        let decide = |situation: &Situation| {
            self.policies
                .decide(signer, role, &req.data_types, situation)
                .map_err(Self::policy_error)
        };
        let message = match decide(situation)? {
            Verdict::Permit {
                window_minutes,
                rules,
            } => {
                if chain.stale {
                    tracing::warn!(provider = %signer, lag_blocks = chain.lag_blocks, "a degraded grant: the policies permit it on a stale view of the chain");
                }
                return Ok((window_minutes, rules));
            }
            Verdict::Deny { message, .. } => message,
        };
        let denied =
            |message: String| Refusal::new(403, "policy-denied", "Denied by policy", message);
        if !chain.stale {
            return Err(denied(message));
        }
        let fresh = Situation {
            chain_lag_blocks: 0,
            chain_reachable: true,
            chain_stale: false,
            ..*situation
        };
        match decide(&fresh)? {
            // a fresh view would permit: the staleness is the reason
            Verdict::Permit { .. } => {
                let lag = if chain.lag_blocks == u64::MAX {
                    "has never been confirmed by the node".to_string()
                } else {
                    format!("may be {} blocks old", chain.lag_blocks)
                };
                Err(Refusal::new(
                    503,
                    "chain-state-stale",
                    "Chain state stale",
                    format!(
                        "the service's view of the chain {lag} (the limit is {}), so a suspension or an opt-out could be missed: {message}; try again",
                        self.max_lag_blocks
                    ),
                ))
            }
            // refused on any view: that refusal, with its own rule (not the staleness's)
            Verdict::Deny { message, .. } => Err(denied(message)),
        }
    }

    /// Step 8, the clinician's rate of grants, in this process's memory (with replicas the
    /// grant's write takes it: `store::Claim`).
    pub(super) fn within_rate(&self, signer: &Address) -> Result<(), Refusal> {
        match self.coordination.as_ref() {
            Coordinator::Local(local) if !local.within_rate(&signer.to_string()) => {
                Err(rate_limited(signer))
            }
            _ => Ok(()),
        }
    }

    /// Gives back the grant `within_rate` took of `signer` (the grant recorded nothing, so it
    /// used nothing up: on Redis the write takes it, and a write that did not land took none).
    pub(super) fn give_back_rate(&self, signer: &Address) {
        if let Coordinator::Local(local) = self.coordination.as_ref() {
            local.give_back_rate(&signer.to_string());
        }
    }
}

/// Step 3's refusal of a nonce used before.
pub(super) fn replayed(signer: &str, nonce: u64) -> Refusal {
    Refusal::new(
        401,
        "replayed-request",
        "Replayed request",
        format!("nonce {nonce} was already used by {signer}"),
    )
}

/// Step 8's refusal.
pub(super) fn rate_limited(signer: &Address) -> Refusal {
    Refusal::new(
        429,
        "rate-limited",
        "Too many requests",
        format!("{signer} has asked for too many accesses; wait a minute"),
    )
}

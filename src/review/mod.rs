//! Post-incident review: reviewers sign in with their Stacks key, see every emergency access,
//! and give a verdict that goes on chain.
//!
//! Sign-in (`sign_in`): the service hands out a challenge, SIP-018 structured data under the
//! break-glass domain,
//!
//! ```text
//! { action: "review-sign-in", nonce: (buff 32), expires-at: uint (Unix s), service: (string-ascii 256) }
//! ```
//!
//! bound to the browser that asked by a `SameSite=Strict` cookie, usable once, until it
//! expires. Its nonce carries its own proof (16 random bytes and a MAC of them, the expiry and
//! the service, by the data keys: `seal::Keyring::mac`), so handing one out stores nothing:
//! anyone may ask for as many as they like without pushing a reviewer's out. A challenge is
//! kept only once spent, by a signer the chain knows, until it expires (on Redis, ten minutes
//! past). A signature over it by
//! a principal that holds access-control's reviewer role and a verified provider record (the
//! chain-state cache) opens a session: a random token in an
//! `HttpOnly; Secure; SameSite=Strict` cookie (only its SHA-256 is kept), a CSRF token for
//! every form, an idle and an absolute timeout. Every request checks the reviewer again in the
//! cache, which the follower keeps at most a block behind: a reviewer removed or suspended on
//! chain loses the session within a block.
//!
//! Spent challenges and sessions are kept where replicas agree (`coordination`): in this process's
//! memory on the embedded store (a restart signs reviewers out: they sign in again, nothing
//! else is lost), on Redis with replicas (a reviewer signed in on one replica is signed in on
//! every one, and a challenge is spent once, wherever it is sent back).
//!
//! `verdict.rs` gives a verdict; `listing.rs` builds the queue and an access's whole story.
//!
//! It must not: let a verdict through without the reviewer's own signature over it, or log a
//! reason, a note or a session token.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::chain::state::ChainState;
use crate::clock::{now_ms, now_secs};
use crate::configuration::ReviewSettings;
use crate::domain::ProviderStatus;
use crate::refusal::Refusal;
use crate::stacks::{sip018, Address, Value};
use crate::store::{apply_async, Batch, ProviderState};

pub mod listing;
pub mod verdict;
pub mod views;

pub const SIGN_IN_ACTION: &str = "review-sign-in";
/// The purpose a challenge's MAC is made under (`seal::Keyring::mac`).
const CHALLENGE_MAC: &str = "review-sign-in-challenge";
/// The verdict message's `action`.
pub const VERDICT_ACTION: &str = "review";

/// A reviewer's open session.
#[derive(Debug, Clone)]
pub struct Session {
    pub reviewer: Address,
    /// The token every form of this session carries.
    pub csrf: String,
    /// Where the session is kept (the SHA-256 of its cookie's token, hex): the same on every
    /// replica, another for each sign-in. Never logged or shown.
    pub id: String,
    /// When it opened (unix ms).
    pub created_ms: u64,
}

pub struct Review {
    pub state: ChainState,
    pub keyring: Arc<crate::seal::Keyring>,
    pub settings: ReviewSettings,
    pub chain_id: u32,
    pub mainnet: bool,
    /// `service` in the sign-in challenge: the issuer URL, so that a signature for another
    /// service's sign-in is not ours.
    pub service: String,
    /// The identifier systems of patients and clinicians (`directory`), as the audit export
    /// names them.
    pub directory: crate::configuration::DirectorySettings,
    /// The service's own principal (the responder that records accesses): never a reviewer of
    /// what it recorded.
    pub responder: Address,
    /// Held from a verdict's checks to its write, so that two reviewers of this process cannot
    /// both record one for the same access (on a shared store, the write itself refuses a
    /// second verdict: `store::Guarded::Reviewed`, whichever replica gave the first).
    pub(crate) verdicts: tokio::sync::Mutex<()>,
    /// Where challenges and sessions are kept.
    coordination: Arc<crate::coordination::Coordinator>,
    /// The views of accesses logged lately (`views`).
    views: views::Views,
    /// Each signer's share of refused sign-ins spent and logged
    /// (`access::REFUSAL_ENTRIES_PER_MINUTE`, as break-glass refusals): anyone may register as
    /// a provider, and each refused sign-in of one was a synced write of the audit log.
    refused_sign_ins: governor::DefaultKeyedRateLimiter<Address>,
    /// Drawn at start and in every challenge's MAC when this process keeps spent challenges
    /// in its memory alone: a challenge handed out before a restart, maybe spent then, is
    /// unknown after it. Zero with replicas, whose spent challenges are kept on Redis.
    epoch: [u8; 16],
}

/// A challenge to sign: the domain and message (consensus-serialized, hex) and the nonce that
/// binds it to the browser that asked.
pub struct Challenge {
    pub nonce: [u8; 32],
    pub domain: String,
    pub message: String,
    pub expires_at: u64,
}

/// Why a signature names no signer (`Review::signer_of`).
pub(crate) enum Unsigned {
    /// Not 65 bytes of hex.
    Malformed,
    /// It does not verify over the message under our domain.
    DoesNotVerify(String),
}

/// A challenge that is not ours, or was spent already.
fn unknown_challenge() -> Refusal {
    refusal(
        401,
        "unknown-challenge",
        "Challenge used or unknown",
        "this challenge was used already, or not issued here: ask for a new one",
    )
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut b);
    b
}

fn refusal(
    status: u16,
    code: &'static str,
    title: &'static str,
    detail: impl Into<String>,
) -> Refusal {
    Refusal::new(status, code, title, detail)
}

impl Review {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: ChainState,
        keyring: Arc<crate::seal::Keyring>,
        settings: ReviewSettings,
        chain_id: u32,
        mainnet: bool,
        service: String,
        directory: crate::configuration::DirectorySettings,
        responder: Address,
        coordination: Arc<crate::coordination::Coordinator>,
    ) -> Review {
        Review {
            state,
            keyring,
            settings,
            chain_id,
            mainnet,
            service,
            directory,
            responder,
            verdicts: tokio::sync::Mutex::default(),
            epoch: if coordination.is_shared() {
                [0; 16]
            } else {
                let mut epoch = [0; 16];
                epoch.copy_from_slice(&random32()[..16]);
                epoch
            },
            coordination,
            views: views::Views::default(),
            refused_sign_ins: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(crate::access::REFUSAL_ENTRIES_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    pub fn domain(&self) -> Value {
        crate::request::domain(self.chain_id)
    }

    /// A new sign-in challenge. Anyone may ask for one, so nothing is kept: its nonce is 16
    /// random bytes and their MAC with its expiry and this service (`challenge_mac`), which
    /// `sign_in` checks.
    pub fn challenge(&self) -> Result<Challenge, Refusal> {
        let random = random32();
        let expires_at = now_secs() + self.settings.challenge_secs;
        let mut nonce = [0u8; 32];
        nonce[..16].copy_from_slice(&random[..16]);
        let tag = self
            .keyring
            .mac(
                CHALLENGE_MAC,
                &self.challenge_data(&random[..16], expires_at),
            )
            .map_err(|e| sessions_unavailable(crate::store::StoreError::Backend(e.to_string())))?;
        nonce[16..].copy_from_slice(&tag);
        let message = Value::Tuple(
            [
                ("action".to_string(), Value::Ascii(SIGN_IN_ACTION.into())),
                ("nonce".to_string(), Value::Buffer(nonce.to_vec())),
                ("expires-at".to_string(), Value::UInt(expires_at.into())),
                ("service".to_string(), Value::Ascii(self.service.clone())),
            ]
            .into_iter()
            .collect(),
        );
        Ok(Challenge {
            nonce,
            domain: self.domain().to_hex(),
            message: message.to_hex(),
            expires_at,
        })
    }

    /// What a challenge's MAC is over: its random half, its expiry, this process's epoch (one
    /// process) and this service.
    fn challenge_data(&self, random: &[u8], expires_at: u64) -> Vec<u8> {
        let mut data = Vec::with_capacity(40 + self.service.len());
        data.extend_from_slice(&self.epoch);
        data.extend_from_slice(random);
        data.extend_from_slice(&expires_at.to_be_bytes());
        data.extend_from_slice(self.service.as_bytes());
        data
    }

    /// The principal whose key made `signature` (65 bytes of hex, an optional `0x`) over
    /// `message` under our domain (a sign-in's, a verdict's), and the signature's bytes.
    pub(crate) fn signer_of(
        &self,
        message: &Value,
        signature: &str,
    ) -> Result<(Address, Vec<u8>), Unsigned> {
        let sig = hex::decode(signature)
            .ok()
            .filter(|s| s.len() == 65)
            .ok_or(Unsigned::Malformed)?;
        let hash = sip018::message_hash(&self.domain(), message);
        let key =
            sip018::recover(&hash, &sig).map_err(|e| Unsigned::DoesNotVerify(e.to_string()))?;
        let (testnet, mainnet) = sip018::principals(&key);
        Ok((if self.mainnet { mainnet } else { testnet }, sig))
    }

    /// The signer of a sign-in's `signature` over `message`.
    fn signer(&self, message: &Value, signature: &str) -> Result<Address, Refusal> {
        self.signer_of(message, signature)
            .map(|(signer, _)| signer)
            .map_err(|u| match u {
                Unsigned::Malformed => refusal(
                    400,
                    "malformed-signature",
                    "Malformed signature",
                    "the signature is not 65 bytes of hex",
                ),
                Unsigned::DoesNotVerify(e) => refusal(
                    401,
                    "bad-signature",
                    "Bad signature",
                    format!("the signature does not verify: {e}"),
                ),
            })
    }

    /// Whether `who` may review now: access-control's reviewer role and a verified provider
    /// record, as the chain-state cache has them.
    pub async fn authorized(&self, who: &Address) -> Result<(), Refusal> {
        let unavailable = |e: crate::chain::state::StateError| {
            tracing::error!(error = %e, "chain state unavailable for a reviewer check");
            refusal(
                503,
                "chain-state-unavailable",
                "Chain state unavailable",
                "the service cannot read the chain state right now; try again",
            )
        };
        if !self.state.is_reviewer(who).await.map_err(unavailable)? {
            return Err(refusal(
                403,
                "not-a-reviewer",
                "Not a reviewer",
                format!("{who} does not hold the reviewer role on chain"),
            ));
        }
        match self.state.provider(who).await.map_err(unavailable)? {
            ProviderState::Registered {
                status: ProviderStatus::Verified,
                ..
            } => Ok(()),
            ProviderState::Registered { status, .. } => Err(refusal(
                403,
                "reviewer-not-verified",
                "Reviewer not verified",
                format!("{who}'s provider record is {status} on chain"),
            )),
            ProviderState::Unregistered => Err(refusal(
                403,
                "reviewer-not-verified",
                "Reviewer not verified",
                format!("{who} has no provider record on chain"),
            )),
        }
    }

    /// Checks a signed challenge (`message`, hex) sent back with the nonce cookie `bound`, and
    /// opens a session: its token (for the cookie) and the session. A challenge that is ours,
    /// unexpired, sent back from the browser it was bound to and signed by a principal the chain
    /// knows is spent whatever the outcome, and the outcome goes to the audit log; any other is
    /// refused without either.
    pub async fn sign_in(
        &self,
        message: &str,
        signature: &str,
        bound: Option<&str>,
    ) -> Result<(String, Session), Refusal> {
        let bad = |d: &str| {
            refusal(
                400,
                "malformed-challenge",
                "Malformed challenge",
                d.to_string(),
            )
        };
        let value = Value::from_hex(message.strip_prefix("0x").unwrap_or(message))
            .map_err(|_| bad("the message is not a Clarity value"))?;
        let fields = value
            .as_tuple()
            .ok_or_else(|| bad("the message is not a tuple"))?;
        if fields.len() != 4
            || fields.get("action") != Some(&Value::Ascii(SIGN_IN_ACTION.into()))
            || fields.get("service") != Some(&Value::Ascii(self.service.clone()))
        {
            return Err(bad("the message is not this service's sign-in challenge"));
        }
        let nonce: [u8; 32] = match fields.get("nonce") {
            Some(Value::Buffer(b)) => b
                .as_slice()
                .try_into()
                .map_err(|_| bad("the nonce is not 32 bytes"))?,
            _ => return Err(bad("the message has no nonce")),
        };
        let expires_at = match fields.get("expires-at") {
            Some(Value::UInt(n)) => u64::try_from(*n).unwrap_or(u64::MAX),
            _ => return Err(bad("the message has no expiry")),
        };
        if bound != Some(hex::encode(nonce).as_str()) {
            return Err(refusal(
                400,
                "challenge-not-bound",
                "Challenge from another browser",
                "sign in from the page that asked for the challenge",
            ));
        }
        let data = self.challenge_data(&nonce[..16], expires_at);
        if !self.keyring.mac_matches(CHALLENGE_MAC, &data, &nonce[16..]) {
            // not handed out here, or its expiry changed since
            return Err(unknown_challenge());
        }
        if expires_at <= now_secs() {
            return Err(refusal(
                401,
                "expired-challenge",
                "Challenge expired",
                "the challenge expired before it was sent back: ask for a new one",
            ));
        }
        let reviewer = self.signer(&value, signature)?;
        // a principal the cache does not know is read from the node: within the bound all
        // askers share (a key made on the spot signs a challenge as well as any)
        self.state.bounded_lookup(&reviewer)?;
        let outcome = self.authorized(&reviewer).await;
        // a key made on the spot signs as well as any: only principals the chain knows (a
        // provider record, read through the cache, or the reviewer role) spend a challenge and
        // are logged, so anonymous traffic cannot grow the log or the spent challenges (theirs
        // is refused, and may be sent again: refused again)
        let known = matches!(
            self.state.provider(&reviewer).await,
            Ok(ProviderState::Registered { .. })
        ) || matches!(self.state.store.reviewer(&reviewer), Ok(Some(true)));
        let outcome = match (known, outcome) {
            (false, Err(r)) => return Err(r),
            // beyond the signer's share of refusals logged: refused as well, neither spent nor
            // logged (sent again, refused again)
            (true, Err(r)) if self.refused_sign_ins.check_key(&reviewer).is_err() => {
                tracing::warn!(signer = %reviewer, code = r.code, "a refused sign-in beyond the signer's share: not logged");
                return Err(r);
            }
            (_, outcome) => outcome,
        };
        // spent now, whatever follows: a challenge is signed in with once (a copy sent again is
        // refused before it is logged again)
        let unspent = self
            .coordination
            .spend_challenge(&hex::encode(nonce), expires_at)
            .await
            .map_err(sessions_unavailable)?;
        if !unspent {
            return Err(unknown_challenge());
        }
        let code = match &outcome {
            Ok(()) => "ok".to_string(),
            Err(r) => r.code.to_string(),
        };
        self.audit(crate::audit::Event::SignIn {
            reviewer: Some(reviewer),
            outcome: code,
        })
        .await?;
        outcome?;
        let token = random32();
        let session = Session {
            reviewer,
            csrf: hex::encode(random32()),
            id: key_of(&token),
            created_ms: now_ms(),
        };
        let (idle_ms, max_ms) = self.session_limits_ms();
        self.coordination
            .open_session(
                &session.id,
                &crate::coordination::OpenSession {
                    reviewer: reviewer.to_string(),
                    csrf: session.csrf.clone(),
                    created_ms: session.created_ms,
                },
                idle_ms,
                max_ms,
            )
            .await
            .map_err(sessions_unavailable)?;
        tracing::info!(%reviewer, "reviewer signed in");
        Ok((hex::encode(token), session))
    }

    /// How long a session may go unused, and stay open in all (`review.idle_secs`,
    /// `review.max_secs`), in ms.
    fn session_limits_ms(&self) -> (u64, u64) {
        (
            self.settings.idle_secs * 1000,
            self.settings.max_secs * 1000,
        )
    }

    /// The session of cookie `token`, if it is open and its reviewer may still review: each
    /// use keeps it from idling out.
    pub async fn session(&self, token: &str) -> Result<Session, Refusal> {
        let session = self.open_session(token).await?;
        if let Err(r) = self.authorized(&session.reviewer).await {
            if r.status != 503 {
                let key = session_key(token).unwrap_or_default();
                let open = self
                    .coordination
                    .end_session(&key)
                    .await
                    .map_err(sessions_unavailable)?;
                tracing::info!(reviewer = %session.reviewer, code = r.code, "a reviewer's session ended: no longer authorized on chain");
                // (ended all the same when the log cannot take it; one whose time ran out
                // meanwhile is logged as such)
                let ended = ended_session(session.reviewer, r.code, session.created_ms, now_ms());
                if open && self.audit(ended).await.is_err() {
                    tracing::error!(reviewer = %session.reviewer, "a session's end is not in the audit log: it ended all the same");
                }
            }
            return Err(r);
        }
        Ok(session)
    }

    /// The session of cookie `token`, if it is open, whether or not its reviewer may still
    /// review (signing out needs no more, and must work while the chain cannot be read).
    pub async fn open_session(&self, token: &str) -> Result<Session, Refusal> {
        let signed_out = |d: &str| refusal(401, "not-signed-in", "Not signed in", d.to_string());
        let Some(key) = session_key(token) else {
            return Err(signed_out("the session cookie is not one of ours: sign in"));
        };
        let (idle_ms, max_ms) = self.session_limits_ms();
        let open = self
            .coordination
            .touch_session(&key, idle_ms, max_ms)
            .await
            .map_err(sessions_unavailable)?;
        let Some(open) = open else {
            return Err(signed_out(
                "no open session (it expired, or was never opened): sign in",
            ));
        };
        let Ok(reviewer) = open.reviewer.parse::<Address>() else {
            return Err(signed_out("the session is not one of ours: sign in"));
        };
        Ok(Session {
            reviewer,
            csrf: open.csrf,
            id: key,
            created_ms: open.created_ms,
        })
    }

    /// Ends `session` (of cookie `token`), then logs it: a sign-out the log cannot take ends
    /// the session all the same (logged as an error), since keeping it open would be worse.
    pub async fn sign_out(&self, token: &str, session: &Session) -> Result<(), Refusal> {
        let reviewer = &session.reviewer;
        if let Some(key) = session_key(token) {
            let ended = self
                .coordination
                .end_session(&key)
                .await
                .map_err(sessions_unavailable)?;
            // (one taken out meanwhile, its time run out, is logged as such)
            if ended
                && self
                    .audit(signed_out(*reviewer, None, session.created_ms, now_ms()))
                    .await
                    .is_err()
            {
                tracing::error!(reviewer = %reviewer, "a sign-out is not in the audit log: the session ended all the same");
            }
        }
        Ok(())
    }

    /// Takes out the sessions whose time ran out (unused for `review.idle_secs`, or open for
    /// `review.max_secs`) and logs each one's end, `LAPSED_AT_ONCE` a write: a sign-out with
    /// `ended` `idle` or `max-age`. Each is taken out by one replica, and marked ended once its
    /// entry is written; one whose entry could not be written (or, rarely, that could not be
    /// marked) is taken out again later (`coordination::ENDING_LEASE_MS`), by whichever
    /// replica looks then: logged at least once, and twice only after such a failure. How many
    /// were logged.
    pub async fn log_lapsed_sessions(&self) -> Result<usize, crate::store::StoreError> {
        let (idle_ms, max_ms) = self.session_limits_ms();
        let mut logged = 0;
        // (a backlog, after the store was away say, is taken out write after write)
        for _ in 0..LAPSED_WRITES_AT_ONCE {
            let claimed = self
                .coordination
                .lapsed_sessions(now_ms(), idle_ms, max_ms, LAPSED_AT_ONCE)
                .await?;
            let mut ends = Vec::new();
            for c in &claimed {
                match c.lapsed.as_ref().and_then(|l| Some((l.reviewer.parse::<Address>().ok()?, l))) {
                    Some((reviewer, l)) => ends.push(ended_session(
                        reviewer,
                        l.why(max_ms),
                        l.created_ms,
                        l.until_ms,
                    )),
                    None => tracing::error!(
                        "a reviewer's session ended unlogged: its record was gone (ended by an older version, or not taken out within a day of its time)"
                    ),
                }
            }
            let n = self
                .log_session_ends(ends, "that timed out (taken out again later)")
                .await?;
            // (not marked ended, they would be taken out and logged again after the lease:
            // tried again before that)
            let keys: Vec<String> = claimed.iter().map(|c| c.key.clone()).collect();
            let mut marked = self.coordination.sessions_ended(&keys).await;
            for _ in 0..3 {
                if marked.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                marked = self.coordination.sessions_ended(&keys).await;
            }
            if let Err(e) = marked {
                tracing::error!(error = %e, sessions = keys.len(), "sessions whose ends are logged could not be marked ended: they will be logged again in five minutes");
                return Err(e);
            }
            logged += n;
            if claimed.len() < LAPSED_AT_ONCE {
                break;
            }
        }
        Ok(logged)
    }

    /// `log_lapsed_sessions` every `every`, until `shutdown`.
    pub async fn end_lapsed_sessions(
        self: Arc<Self>,
        every: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.log_lapsed_sessions().await {
                tracing::warn!(error = %e, "reviewers' sessions that timed out could not be taken out");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
        }
        // the sessions this process kept in its memory end with it: logged (`ended`
        // `stopped`), after those whose time ran out (as such, whether or not their ends
        // could be logged before)
        let _ = self.log_lapsed_sessions().await;
        let (idle_ms, max_ms) = self.session_limits_ms();
        let now = now_ms();
        let ends: Vec<_> = self
            .coordination
            .sessions_ending_with_this_process(idle_ms, max_ms)
            .into_iter()
            .filter_map(|l| {
                let (ended, until) = if l.until_ms <= now {
                    (l.why(max_ms), l.until_ms)
                } else {
                    ("stopped", now)
                };
                Some(ended_session(
                    l.reviewer.parse().ok()?,
                    ended,
                    l.created_ms,
                    until,
                ))
            })
            .collect();
        let _ = self.log_session_ends(ends, "this stop ends").await;
    }

    /// Logs `ends` (sessions' ends) in one write, if there are any: how many. One that cannot
    /// be written is said in this process's log, naming `which` sessions they were.
    async fn log_session_ends(
        &self,
        ends: Vec<crate::audit::Event>,
        which: &str,
    ) -> Result<usize, crate::store::StoreError> {
        let n = ends.len();
        if n == 0 {
            return Ok(0);
        }
        apply_async(&self.state.store, Batch::logging_all(ends))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, sessions = n, "the ends of reviewers' sessions {which} could not be logged");
                e
            })?;
        Ok(n)
    }

    /// How often `end_lapsed_sessions` looks: a tenth of the idle timeout, between a second and
    /// a minute (an ended session's entry comes that long after its time at most).
    pub fn lapse_check_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.settings.idle_secs * 100).clamp(1_000, 60_000))
    }

    /// Appends `event` to the audit log; a sign-in or a view that cannot be logged does not
    /// happen.
    async fn audit(&self, event: crate::audit::Event) -> Result<(), Refusal> {
        apply_async(&self.state.store, Batch::logging(event))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "the audit log cannot be written");
                refusal(
                    503,
                    "audit-unavailable",
                    "Audit trail unavailable",
                    "the audit trail cannot be written right now; try again",
                )
            })
    }
}

/// How many timed-out sessions one write logs the ends of at most.
const LAPSED_AT_ONCE: usize = 100;
/// How many such writes one look makes at most (the rest at the next look).
const LAPSED_WRITES_AT_ONCE: usize = 10;

/// Where the session of cookie `token` (32 bytes, hex) is kept, if it is one of ours.
fn session_key(token: &str) -> Option<String> {
    hex::decode(token)
        .ok()
        .filter(|t| t.len() == 32)
        .map(|t| key_of(&t))
}

/// A session the service ended, `ended` why, open from `opened` until `until` (unix ms).
fn ended_session(reviewer: Address, ended: &str, opened: u64, until: u64) -> crate::audit::Event {
    signed_out(reviewer, Some(ended.to_string()), opened, until)
}

/// A session's end, its period as it is logged: never later than now (when the entry is made:
/// an opening or a deadline another replica's clock set may be ahead of this one's), its end
/// never before its start.
fn signed_out(
    reviewer: Address,
    ended: Option<String>,
    opened: u64,
    until: u64,
) -> crate::audit::Event {
    let now = now_ms();
    let opened = opened.min(now);
    crate::audit::Event::SignOut {
        reviewer,
        ended,
        opened: Some(opened),
        until: Some(until.clamp(opened, now)),
    }
}

/// Where the session of token `token` is kept: its SHA-256, hex (never the token itself).
fn key_of(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

fn sessions_unavailable(e: crate::store::StoreError) -> Refusal {
    tracing::error!(error = %e, "reviewer sessions unavailable");
    refusal(
        503,
        "sessions-unavailable",
        "Sign-in unavailable",
        "the service cannot read or keep sign-ins right now; try again",
    )
}

/// Constant-time comparison of a form's CSRF token with the session's.
pub fn csrf_matches(session: &Session, sent: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    sent.is_some_and(|s| {
        s.len() == session.csrf.len() && bool::from(s.as_bytes().ct_eq(session.csrf.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Review;
    use crate::coordination::Coordinator;

    fn review(coordination: Coordinator) -> Review {
        let dir = tempfile::tempdir().unwrap();
        // the node is never asked: a challenge that is not ours is refused before the chain is
        let state = crate::chain::state::ChainState::without_node(Arc::new(
            crate::store::RedbStore::open(&dir.path().join("s.redb")).unwrap(),
        ));
        let responder = state.contracts.address;
        Review::new(
            state,
            Arc::new(crate::seal::Keyring::from_keys(&[[5; 32]]).unwrap()),
            crate::configuration::ReviewSettings::default(),
            crate::stacks::tx::TESTNET_CHAIN_ID,
            false,
            "https://breakglass.example".into(),
            crate::configuration::Settings::default().directory,
            responder,
            Arc::new(coordination),
        )
    }

    /// Whether `to` knows `from`'s challenge as one of its own (a signature that is not one
    /// is refused after that check, an unknown challenge before it).
    async fn knows(from: &Review, to: &Review) -> bool {
        let c = from.challenge().unwrap();
        let nonce = hex::encode(c.nonce);
        let refused = to
            .sign_in(&c.message, "00", Some(&nonce))
            .await
            .expect_err("not signed");
        refused.code != "unknown-challenge"
    }

    /// One process keeps the challenges it spent in its memory alone: a restart must not make
    /// one handed out (and maybe spent) before it good again, so each process's challenges are
    /// its own. Replicas keep them on Redis, and know each other's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_challenge_from_before_a_restart_is_unknown_after_it_but_known_across_replicas() {
        let before = review(Coordinator::local(10));
        assert!(knows(&before, &before).await);
        let after = review(Coordinator::local(10));
        assert!(!knows(&before, &after).await, "restarted");
        let redis = crate::dev::test_redis().await;
        let replica = || review(Coordinator::redis(redis.url.as_str(), "rv:", 10).unwrap());
        assert!(knows(&replica(), &replica()).await, "replicas");
    }
}

//! The critical-data vault: each patient's emergency summary (`bundle.rs`), stored sealed
//! (`seal::names::summary`), its SHA-256 recorded on chain by the service as a data custodian
//! (`set-summary-hash`, through the submitter), and served only to a valid break-glass token
//! for that patient, only the resources its scopes cover (`scope.rs`), only when the stored
//! summary still hashes to what the chain says. An import keeps the summary it replaces, if the
//! chain has its hash: while the new one's hash is on its way to the chain (its operation open,
//! or mined after the block of the hash the cache holds), reads serve the kept one (with an
//! `OperationOutcome` saying so), not a refusal. The token's revocation (and its clinician's
//! standing) is checked first and again once the summary is checked, which may wait on the
//! node: nothing is served past a revocation written meanwhile.
//!
//! Every read, and every refused read of a verified token's holder, goes to the audit log
//! before it is answered: reviewers see what was actually read. Refused reads without a
//! verified token go to it 60 a minute at most, the rest counted (anyone can send them).
//!
//! It must not: serve anything it could not check against the chain, log clinical content,
//! or let a token for one patient read another's data.

pub mod bundle;

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audit::Event;
use crate::chain::contracts::ACCESS_CONTROL;
use crate::chain::state::ChainState;
use crate::chain::submitter;
use crate::domain::PatientId;
use crate::refusal::Refusal;
use crate::scope::Scope;
use crate::seal::Keyring;
use crate::stacks::Value as Clarity;
use crate::store::{apply_async, Batch};
use crate::token::TokenIssuer;

pub struct Vault {
    pub state: ChainState,
    pub keyring: Arc<Keyring>,
    pub tokens: Arc<TokenIssuer>,
    pub patient_id_system: String,
    metrics: Arc<crate::metrics::Metrics>,
    /// The audit log's share of refused reads without a verified token
    /// (`ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE`).
    anonymous_refusals: governor::DefaultDirectRateLimiter,
}

/// How many refused reads a minute without a verified token (none, or a forged or expired one)
/// go to the audit log (in each process); the rest are counted (`vault_refusals_unlogged` in
/// `/metrics`). Anyone can send such reads, each refusal a synced write beside the grants':
/// unbounded, they would grow the log and hold up the grants' writes. Refusals of a verified
/// token's holder are always logged.
pub const ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE: u32 = 60;

/// Whose token read: its id and the clinician it was issued to.
#[derive(Debug, Clone)]
struct Holder {
    jti: String,
    clinician: crate::stacks::Address,
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub patient: PatientId,
    pub resources: usize,
    /// sha256 of the stored bytes, hex: what goes on chain.
    pub hash: String,
    /// The chain write that records it.
    pub operation: String,
}

fn refusal(
    status: u16,
    code: &'static str,
    title: &'static str,
    detail: impl Into<String>,
) -> Refusal {
    Refusal::new(status, code, title, detail)
}

fn store_unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "vault: store unavailable");
    refusal(
        503,
        "store-unavailable",
        "Store unavailable",
        "the vault cannot be read or written right now; try again",
    )
}

/// The operation that records `hash` as `patient`'s summary hash.
pub fn operation(patient: &PatientId, hash: &[u8; 32]) -> crate::store::Submission {
    submitter::operation(
        &operation_prefix(patient, &hex::encode(hash)),
        ACCESS_CONTROL,
        "set-summary-hash",
        &[
            Clarity::Buffer(patient.0.to_vec()).to_hex(),
            Clarity::Buffer(hash.to_vec()).to_hex(),
        ],
    )
}

/// Imports a summary into `store`: checked, sealed and stored with the chain write of its
/// hash, in one durable write; a bad one is refused with the reason and nothing is stored.
/// (`Vault::import` for the running service; `breakglass summaries import` with it stopped.)
/// `by` (an admin client's id, or `audit::command_line`) is in the audit log with it, in the
/// same write.
pub async fn import(
    store: &Arc<dyn crate::store::Store>,
    keyring: &Keyring,
    patient_id_system: &str,
    body: &[u8],
    by: &str,
) -> Result<Imported, Refusal> {
    let summary = bundle::parse(body, patient_id_system)
        .map_err(|why| refusal(422, "invalid-summary", "Invalid summary", why))?;
    // one import at a time in a process (across replicas: the operation made once by its
    // guard, below; of two summaries imported at once, the other's operation closed unsent if
    // still pending, by the submitter; an operation reused that was closed before the write
    // landed, replaced below; and the stored bytes imported again are recorded again if the
    // chain ended with another's hash): two of the same bytes at once would both read no
    // operation and make it twice (the embedded store checks no guard: the second would put
    // the operation back as pending after the submitter signed it, to be signed again)
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _importing = ONE_AT_A_TIME.lock().await;
    // the same bytes imported at once on another replica (a client sending it again) may make
    // the operation first: read again, it is then the operation of these bytes
    let once = async || match import_once(store, keyring, &summary, body, by).await {
        Err(Imports::Raced) => import_once(store, keyring, &summary, body, by).await,
        done => done,
    };
    let mut attempt = once().await;
    // the operation named (reused, read open) closed since (another replica's import of
    // another summary landed between this one's read and its write, and the submitter closed
    // it unsent), or failed, while this summary is still the one stored: an import now makes
    // these bytes an operation of their own. (Not when another summary was stored since: its
    // import is the later, and closed ours rightly. A close the submitter decided before this
    // write and writes after this read is not seen: importing these bytes again repairs it.)
    // A read that fails keeps the answer: the summary is stored
    if let Ok(imported) = &attempt {
        let ours = hex::encode(Sha256::digest(body));
        let still_ours = matches!(
            store.summary_digest(&summary.patient),
            Ok(Some(stored)) if stored.plain == ours
        );
        let closed = store
            .submission(&imported.operation)
            .is_ok_and(|named| named.is_some_and(|s| submitter::records_nothing(&s.state)));
        if still_ours && closed {
            attempt = once().await;
        }
    }
    attempt.map_err(|e| match e {
        Imports::Refused(r) => r,
        Imports::Raced => store_unavailable("the summary's operation was made twice meanwhile"),
    })
}

/// Why an import's attempt did not store it.
enum Imports {
    Refused(Refusal),
    /// Its new operation was made meanwhile by another import of the same bytes.
    Raced,
}

impl From<Refusal> for Imports {
    fn from(r: Refusal) -> Imports {
        Imports::Refused(r)
    }
}

async fn import_once(
    store: &Arc<dyn crate::store::Store>,
    keyring: &Keyring,
    summary: &bundle::Summary,
    body: &[u8],
    by: &str,
) -> Result<Imported, Imports> {
    let hash: [u8; 32] = Sha256::digest(body).into();
    let sealed = keyring
        .seal(&crate::seal::names::summary(&summary.patient), body)
        .map_err(store_unavailable)?;
    let mut op = operation(&summary.patient, &hash);
    // the operations that recorded these bytes so far: the first under `operation`'s id, each
    // later one (the bytes imported again after another summary replaced them) under
    // `<id>:<n>`, n from 2; read by their ids, one by one (not by a scan of every operation
    // ever made, one a grant: on Redis an HSCAN of the whole table at each import)
    let mut ops = Vec::new();
    while let Some(s) = store
        .submission(&crate::chain::submitter::numbered(&op.id, ops.len() + 1))
        .map_err(store_unavailable)?
    {
        ops.push(s);
    }
    let made = ops.len();
    // (one the chain refused, or one closed unsent because a later summary replaced it,
    // records nothing: the same bytes again get an operation of their own)
    let refused = ops
        .iter()
        .find(|s| s.id == crate::chain::submitter::numbered(&op.id, made))
        .is_some_and(|s| submitter::records_nothing(&s.state));
    let latest = (made > 0 && !refused).then(|| crate::chain::submitter::numbered(&op.id, made));
    let n = made + 1;
    // the same bytes as the summary stored now: their hash is recorded (or on its way) by the
    // latest of those already; else (new bytes, or bytes another summary replaced since, whose
    // hash the chain no longer holds) by an operation of their own
    let stored = store.summary(&summary.patient).map_err(store_unavailable)?;
    let stored_hash = stored
        .as_ref()
        .and_then(|sealed| opened(keyring, &summary.patient, sealed).ok())
        .map(|(_, hash)| hash);
    let stored_now = stored_hash.as_deref() == Some(hex::encode(hash).as_str());
    // the summary stored now, if the chain has its hash, is kept as the one before this one
    // until the chain has this one's: clinicians read it meanwhile (the new one is not yet
    // checked against the chain). One whose hash the chain does not have yet is not: the one
    // kept before it stays
    let previous = match (&stored, &stored_hash) {
        (Some(sealed), Some(h)) if !stored_now && on_chain(store, &summary.patient, h)? => {
            vec![(summary.patient, Some(sealed.clone()))]
        }
        _ => Vec::new(),
    };
    // reused only while it records them: still open, or the chain holds their hash. One mined
    // whose hash the chain no longer holds (another replica's import of another summary
    // landed between this one's read and its write, and was recorded after) is not: an import
    // of the stored bytes then records them again, rather than leaving every read refused
    let open = ops.last().is_some_and(|s| {
        matches!(
            s.state,
            crate::store::SubmissionState::Pending | crate::store::SubmissionState::Sent { .. }
        )
    });
    let submissions = match latest {
        Some(id)
            if stored_now && (open || on_chain(store, &summary.patient, &hex::encode(hash))?) =>
        {
            op.id = id;
            Vec::new()
        }
        _ => {
            op.id = crate::chain::submitter::numbered(&op.id, n);
            vec![op.clone()]
        }
    };
    let imported = Imported {
        patient: summary.patient,
        resources: summary.resources.len(),
        hash: hex::encode(hash),
        operation: op.id,
    };
    let digest = crate::store::SummaryDigest::of(body, &sealed);
    // a new operation is made only if it is not there yet: a second import of these bytes that
    // read before the first was written would otherwise put it back as pending, signed or not
    let guard = (!submissions.is_empty()).then(|| crate::store::Guard {
        absent: submissions.iter().map(|s| s.id.clone()).collect(),
        ..crate::store::Guard::default()
    });
    let batch = Batch {
        summaries: vec![(summary.patient, Some(sealed))],
        summary_digests: vec![(summary.patient, Some(digest))],
        previous_summaries: previous,
        submissions,
        guard,
        audit: vec![crate::audit::Record::now(Event::import(
            by,
            "summary",
            Some(summary.patient),
            summary.resources.len(),
            body,
        ))],
        ..Batch::default()
    };
    match apply_async(store, batch).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Guarded(crate::store::Guarded::Changed)) => {
            return Err(Imports::Raced)
        }
        Err(e) => return Err(store_unavailable(e).into()),
    }
    tracing::info!(patient = %summary.patient, resources = imported.resources, "emergency summary imported");
    Ok(imported)
}

/// What the ids of `patient`'s summary operations recording `hash` (hex; "" for any) begin
/// with.
fn operation_prefix(patient: &PatientId, hash: &str) -> String {
    format!("summary:{patient}:{hash}")
}

/// `patient`'s summary `sealed`, opened, and the SHA-256 of its bytes (hex: what the chain
/// records).
fn opened(
    keyring: &Keyring,
    patient: &PatientId,
    sealed: &[u8],
) -> Result<(Vec<u8>, String), crate::seal::SealError> {
    let bytes = keyring.open(&crate::seal::names::summary(patient), sealed)?;
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, hash))
}

/// Whether the chain has `hash` (hex) as `patient`'s summary hash, as this service knows
/// without asking it: its cached hash, or an operation of ours that recorded it, confirmed.
fn on_chain(
    store: &Arc<dyn crate::store::Store>,
    patient: &PatientId,
    hash: &str,
) -> Result<bool, Refusal> {
    // the cache, when it holds the chain's hash (or that it has none), says
    if let Ok(Some(cached)) = store.summary_hash(patient) {
        return Ok(cached.is_some_and(|h| h.hash == hash));
    }
    // else the latest of our operations of the patient's summary mined: one that recorded this
    // hash once, and another since, does not count
    let latest = store
        .submissions_prefixed(&operation_prefix(patient, ""))
        .map_err(store_unavailable)?
        .into_iter()
        .filter_map(|s| match s.state {
            // (one closed without its effect, at height 0, recorded nothing)
            // (two mined in one block ran in their nonces' order)
            crate::store::SubmissionState::Confirmed { height, nonce, .. } if height > 0 => {
                Some(((height, nonce), s.id))
            }
            _ => None,
        })
        .max_by_key(|(mined, _)| *mined);
    Ok(latest.is_some_and(|(_, id)| id.starts_with(&operation_prefix(patient, hash))))
}

/// Whether an operation of ours is recording `hash` (hex) as `patient`'s summary hash: open,
/// or mined after the block the chain's hash was read at (`cached`: the cache has not caught
/// up with it yet).
fn recording(
    store: &Arc<dyn crate::store::Store>,
    patient: &PatientId,
    hash: &str,
    cached: &crate::store::SummaryHash,
) -> Result<bool, Refusal> {
    Ok(store
        .submissions_prefixed(&operation_prefix(patient, hash))
        .map_err(store_unavailable)?
        .iter()
        .any(|s| match s.state {
            crate::store::SubmissionState::Confirmed { height, .. } => height > cached.block,
            _ => s.is_open(),
        }))
}

/// How many summaries `rekey_summaries` writes at once.
const REKEY_BATCH: usize = 32;

/// Seals every stored summary (and the one kept before it) that is not sealed with the current
/// data key again with it (after `keys rotate-data`, with `patients rekey`), with its digest
/// (the sealed bytes are new; the plain bytes, whose hash is on chain, are not). Returns how
/// many were re-sealed.
pub async fn rekey_summaries(
    store: &Arc<dyn crate::store::Store>,
    keyring: &Keyring,
) -> anyhow::Result<usize> {
    let mut batch = Batch::default();
    let mut n = 0;
    for patient in store.summary_patients()? {
        let Some(sealed) = store.summary(&patient)? else {
            continue;
        };
        if keyring.is_current(&sealed) {
            continue;
        }
        let name = crate::seal::names::summary(&patient);
        let plain = match keyring.open(&name, &sealed) {
            Ok(plain) => plain,
            Err(e) => {
                apply_async(store, batch).await?;
                anyhow::bail!("the summary of patient {patient} does not open ({e}): those before it are sealed again; restore its key to the ring, or import it again");
            }
        };
        let sealed = keyring.seal(&name, &plain)?;
        let digest = crate::store::SummaryDigest::of(&plain, &sealed);
        batch.summaries.push((patient, Some(sealed)));
        batch.summary_digests.push((patient, Some(digest)));
        n += 1;
        // (summaries are up to 2 MiB each: written a few at a time)
        if batch.summaries.len() == REKEY_BATCH {
            apply_async(store, std::mem::take(&mut batch)).await?;
        }
    }
    for patient in store.summary_patients()? {
        let name = crate::seal::names::summary(&patient);
        if let Some(sealed) = store.previous_summary(&patient)? {
            if let Some(sealed) = keyring.reseal(&name, &sealed)? {
                batch.previous_summaries.push((patient, Some(sealed)));
                n += 1;
                if batch.previous_summaries.len() == REKEY_BATCH {
                    apply_async(store, std::mem::take(&mut batch)).await?;
                }
            }
        }
    }
    apply_async(store, batch).await?;
    Ok(n)
}

impl Vault {
    pub fn new(
        state: ChainState,
        keyring: Arc<Keyring>,
        tokens: Arc<TokenIssuer>,
        patient_id_system: String,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Vault {
        let per_minute = std::num::NonZeroU32::new(ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE)
            .unwrap_or(std::num::NonZeroU32::MIN);
        Vault {
            state,
            keyring,
            tokens,
            patient_id_system,
            metrics,
            anonymous_refusals: governor::RateLimiter::direct(governor::Quota::per_minute(
                per_minute,
            )),
        }
    }

    /// Imports a summary (`import`).
    pub async fn import(&self, body: &[u8], by: &str) -> Result<Imported, Refusal> {
        import(
            &self.state.store,
            &self.keyring,
            &self.patient_id_system,
            body,
            by,
        )
        .await
    }

    /// Reads `patient`'s summary with break-glass `token`: the resources its scopes cover
    /// (of `resource_type` only, when given) as a FHIR searchset Bundle. Each read and each
    /// refusal of a verified token's holder is in the audit log before the answer; refusals
    /// without one, `ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE` at most (the rest counted).
    pub async fn read(
        &self,
        token: Option<&str>,
        patient: &str,
        resource_type: Option<&str>,
    ) -> Result<Value, Refusal> {
        let result = self.read_checked(token, patient, resource_type).await;
        let event = match &result {
            Ok((who, patient, bundle)) => Event::Read {
                jti: who.jti.clone(),
                clinician: who.clinician,
                patient: *patient,
                resource_types: resource_types(bundle),
                count: bundle["total"].as_u64().unwrap_or(0),
            },
            Err((r, None, _)) if self.anonymous_refusals.check().is_err() => {
                self.metrics.vault_refusals_unlogged.inc();
                return Err(r.clone());
            }
            Err((r, who, patient)) => Event::ReadRefusal {
                code: r.code.to_string(),
                status: r.status,
                jti: who.as_ref().map(|w| w.jti.clone()),
                clinician: who.as_ref().map(|w| w.clinician),
                patient: *patient,
            },
        };
        let logged = apply_async(&self.state.store, Batch::logging(event)).await;
        if let Err(e) = logged {
            tracing::error!(error = %e, "a read could not be added to the audit log: not served");
            return Err(refusal(
                503,
                "audit-unavailable",
                "Audit trail unavailable",
                "the read could not be recorded, so nothing is served; try again",
            ));
        }
        result.map(|(_, _, bundle)| bundle).map_err(|(r, _, _)| r)
    }

    #[allow(clippy::type_complexity)]
    async fn read_checked(
        &self,
        token: Option<&str>,
        patient: &str,
        resource_type: Option<&str>,
    ) -> Result<(Holder, PatientId, Value), (Refusal, Option<Holder>, Option<PatientId>)> {
        let patient: PatientId = patient.parse().map_err(|e: String| {
            (
                refusal(400, "invalid-patient-id", "Invalid patient id", e),
                None,
                None,
            )
        })?;
        let p = Some(patient);
        let token = token.ok_or_else(|| {
            (
                refusal(
                    401,
                    "no-token",
                    "No token",
                    "read with a break-glass token: Authorization: Bearer <token>",
                ),
                None,
                p,
            )
        })?;
        let claims = self.tokens.verify(token).map_err(|why| {
            (
                refusal(
                    401,
                    "invalid-token",
                    "Invalid token",
                    format!("the token is not valid here: {why}"),
                ),
                None,
                p,
            )
        })?;
        let jti = claims.sub.parse().ok().map(|clinician| Holder {
            jti: claims.jti.clone(),
            clinician,
        });
        self.honoured(&claims)
            .await
            .map_err(|r| (r, jti.clone(), p))?;
        if claims.patient != patient.to_string() {
            return Err((
                refusal(
                    403,
                    "wrong-patient",
                    "Another patient",
                    "the token was issued for another patient",
                ),
                jti,
                p,
            ));
        }
        let scopes = crate::scope::parse_claim(&claims.scope);
        if let Some(kind) = resource_type {
            if !scopes.iter().any(|s| s.resource == kind) {
                return Err((
                    refusal(
                        403,
                        "insufficient-scope",
                        "Not in the token's scope",
                        format!("the token does not open {kind}"),
                    ),
                    jti,
                    p,
                ));
            }
        }
        let (resources, previous) = self
            .verified(&patient)
            .await
            .map_err(|r| (r, jti.clone(), p))?;
        // and again once the summary is checked: that check may have waited on the node, and
        // a revocation (or a suspension) that landed meanwhile must not be served past
        self.honoured(&claims)
            .await
            .map_err(|r| (r, jti.clone(), p))?;
        let granted: Vec<&Value> = resources
            .iter()
            .filter(|r| resource_type.is_none_or(|k| r["resourceType"] == k))
            .filter(|r| scopes.iter().any(|s: &Scope| s.allows(r)))
            .collect();
        let mut entries: Vec<Value> = granted
            .iter()
            .map(|r| json!({ "resource": r, "search": { "mode": "match" } }))
            .collect();
        if previous {
            // said, for whoever reads it: not the newest summary, the one the chain checks
            entries.push(json!({ "resource": { "resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "informational",
                "diagnostics": "this is the patient's previous summary: a newer one was imported and is still being recorded, so it cannot be shown yet; what changed (a new allergy or medication) may be missing" }] },
                "search": { "mode": "outcome" } }));
        }
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": granted.len(),
            "entry": entries,
        });
        let holder = jti.ok_or_else(|| {
            (
                refusal(
                    401,
                    "invalid-token",
                    "Invalid token",
                    "the token names no clinician",
                ),
                None,
                p,
            )
        })?;
        Ok((holder, patient, bundle))
    }

    /// Whether the token is still honoured: not revoked, its clinician not suspended since.
    async fn honoured(&self, claims: &crate::token::AccessClaims) -> Result<(), Refusal> {
        match crate::token::standing(&self.state, claims).await {
            Ok(standing) => standing.refusal().map_or(Ok(()), Err),
            Err(e) => Err(crate::token::standing_unknown(&e)),
        }
    }

    /// The patient's summary resources, unsealed, once their bytes hash to the chain's record:
    /// the stored summary's, or, while the chain records its hash, the one before it, which
    /// the chain has (`true`).
    async fn verified(&self, patient: &PatientId) -> Result<(Vec<Value>, bool), Refusal> {
        let sealed = self
            .state
            .store
            .summary(patient)
            .map_err(store_unavailable)?
            .ok_or_else(|| {
                refusal(
                    404,
                    "no-summary",
                    "No summary",
                    "no emergency summary is held for this patient",
                )
            })?;
        let (bytes, hash) = opened(&self.keyring, patient, &sealed).map_err(|e| {
            tracing::error!(%patient, error = %e, "a sealed summary does not open");
            refusal(
                502,
                "summary-integrity",
                "Summary failed its integrity check",
                "the stored summary could not be opened; nothing is served",
            )
        })?;
        let on_chain = self.state.summary_hash(patient).await.map_err(|e| {
            tracing::error!(error = %e, "vault: the chain's summary hash could not be read");
            refusal(
                503,
                "chain-state-unavailable",
                "Chain state unavailable",
                "the summary's hash on chain could not be read; try again",
            )
        })?;
        let Some(on_chain) = on_chain else {
            return Err(refusal(409, "summary-not-recorded", "Summary not recorded on chain", "the summary's hash is not on chain yet, so it cannot be checked; nothing is served"));
        };
        let (bytes, previous) = if on_chain.hash == hash {
            (bytes, false)
        } else if recording(&self.state.store, patient, &hash, &on_chain)? {
            // an update on its way to the chain: the summary before it, if the chain has its
            // hash, is read meanwhile
            match self.previous(patient, &on_chain.hash)? {
                Some(bytes) => (bytes, true),
                None => {
                    tracing::info!(%patient, "a summary whose hash the chain does not have yet, and none before it that it has: nothing served until it does");
                    return Err(refusal(409, "summary-update-pending", "Summary update pending", "the summary was updated and its hash is not on chain yet, so it cannot be checked; try again in a minute"));
                }
            }
        } else {
            // none on its way (recorded and changed since, or refused): the chain and the
            // store disagree
            tracing::error!(%patient, "the stored summary does not hash to the chain's record");
            return Err(refusal(502, "summary-integrity", "Summary failed its integrity check", "the stored summary does not match its hash on chain (it was changed off chain, or the chain's record was); nothing is served"));
        };
        bundle::parse(&bytes, &self.patient_id_system)
            .map(|s| (s.resources, previous))
            .map_err(|why| {
                tracing::error!(%patient, "a stored summary no longer parses: {why}");
                refusal(
                    502,
                    "summary-integrity",
                    "Summary failed its integrity check",
                    "the stored summary could not be read; nothing is served",
                )
            })
    }

    /// The patient's summary kept before the stored one, unsealed, if it hashes to `hash` (the
    /// chain's record, which the stored one's has not replaced yet).
    fn previous(&self, patient: &PatientId, hash: &str) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(sealed) = self
            .state
            .store
            .previous_summary(patient)
            .map_err(store_unavailable)?
        else {
            return Ok(None);
        };
        Ok(opened(&self.keyring, patient, &sealed)
            .ok()
            .filter(|(_, h)| h == hash)
            .map(|(bytes, _)| bytes))
    }
}

fn resource_types(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        if e["search"]["mode"] != "match" {
            continue;
        }
        if let Some(t) = e["resource"]["resourceType"].as_str() {
            if !out.iter().any(|x| x == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbStore, Store, SubmissionState};

    /// Without the chain's hash in the cache, the latest of the patient's summary operations
    /// mined says which hash the chain holds: of two mined in one block, the one with the
    /// higher nonce, which ran last (before, the one whose id sorted last); one closed unsent
    /// (height 0) recorded nothing.
    #[test]
    fn the_latest_operation_mined_is_by_block_then_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let patient = PatientId([5; 32]);
        let mined = |hash: [u8; 32], height: u64, nonce: u64| {
            let mut op = operation(&patient, &hash);
            op.state = SubmissionState::Confirmed {
                txid: Some(format!("{nonce:064x}")),
                height,
                result: "(ok true)".into(),
                nonce: Some(nonce),
                raw: None,
            };
            op
        };
        // (ids by hash: 0xff… sorts after 0x11…)
        let (ran_first, ran_last) = ([0xff; 32], [0x11; 32]);
        store
            .apply(Batch {
                submissions: vec![mined(ran_first, 9, 4), mined(ran_last, 9, 5)],
                ..Batch::default()
            })
            .unwrap();
        let holds = |hash: [u8; 32]| on_chain(&store, &patient, &hex::encode(hash)).unwrap();
        assert!(holds(ran_last));
        assert!(!holds(ran_first));
        // closed unsent, at height 0: not the latest mined, whatever its id
        let mut closed = operation(&patient, &[0xaa; 32]);
        closed.state = SubmissionState::Confirmed {
            txid: None,
            height: 0,
            result: "replaced".into(),
            nonce: None,
            raw: None,
        };
        store
            .apply(Batch {
                submissions: vec![closed],
                ..Batch::default()
            })
            .unwrap();
        assert!(holds(ran_last));
        assert!(!holds([0xaa; 32]));
    }
}

//! The chain-state cache: what the break-glass path asks of the chain, answered from the
//! store the follower keeps current (at most one block stale). A miss is filled with one
//! read-only call, as of the block the store's tip is (`?tip=`), and kept; after a gap,
//! `refresh_all` re-reads every cached entry (and while it does, its mark on the tip,
//! `Tip::catching_up`, has fills keep nothing).
//!
//! A fill and the follower's blocks take turns (`apply_lock`): a fill keeps what it read only
//! if no block was applied while it read, since that block may have changed the entry (a
//! suspension, an opt-out) after the node answered; otherwise it looks again. A principal
//! that is not a registered provider, or not a reviewer, is not written to the store (anyone
//! can sign a request with a new key): it is remembered in memory until the next block, within
//! a bound; a cached row read back as "not" by a block or a catch-up is dropped.
//!
//! With replicas sharing a store, the lock is one process's: a fill is also written only while
//! the store's tip is the one it read before asking the node (`Guard::tip`), so that it never
//! lands after a block another replica applied meanwhile; and a block drops the entries it names
//! but did not read back (`reread`), so that one filled meanwhile does not outlive it; and a
//! catch-up marks the tip before it lists what to read again, so that a fill read before it
//! cannot land unread under the tip it moves to. Every write of the tip is its own
//! (`Tip::written`): another replica applying the same block again, late, does not put back
//! the tip such a fill read.
//!
//! It must not: keep an answer read while a block was applied (it could be older than the block).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::contracts::{self, Contracts};
use super::events::{self, ForPatient, Named};
use super::rpc::{NodeBlock, NodeClient, RpcError};
use crate::domain::PatientId;
use crate::stacks::{Address, Principal, Value};
use crate::store::{
    Batch, Consent, ConsentKey, Preferences, ProviderState, Store, StoreError, Tip,
};

/// How many times a fill reads again when blocks keep landing while it reads.
const FILL_ATTEMPTS: usize = 3;
/// How many unregistered principals are remembered (until the next block) at most.
const MAX_UNREGISTERED: usize = 4096;

/// What the node said of keys, each with the tip it was read at: kept in memory until the next
/// block (`MAX_UNREGISTERED` at most), never stored.
struct AtTip<K, V> {
    known: HashMap<K, (V, Option<Tip>)>,
}

impl<K, V> Default for AtTip<K, V> {
    fn default() -> Self {
        AtTip {
            known: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> AtTip<K, V> {
    /// What was said of `key`, if it was read at `tip`.
    fn get(&self, key: &K, tip: &Option<Tip>) -> Option<V> {
        self.known
            .get(key)
            .filter(|(_, at)| at == tip)
            .map(|(v, _)| v.clone())
    }

    fn remember(&mut self, key: K, value: V, tip: Option<Tip>) {
        // what was read at an older tip is of no use any more
        self.known.retain(|_, (_, at)| *at == tip);
        if self.known.len() < MAX_UNREGISTERED {
            self.known.insert(key, (value, tip));
        }
    }

    fn forget(&mut self, key: &K) {
        self.known.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.len()
    }
}

/// What the node said principals are not.
type KnownNot = AtTip<(Address, Not), ()>;

/// Patient ids the node said are not registered, with the preferences it gave for them.
type KnownUnregistered = AtTip<PatientId, Preferences>;

/// What the node said a principal is not: remembered in memory until the next block, never
/// stored, since anyone can make a key and sign with it (a sign-in, a request), and every
/// stored entry is read again from the node by each catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Not {
    /// A registered provider (`get-provider`).
    Provider,
    /// A reviewer (`is-reviewer`).
    Reviewer,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("{0}: the node's answer does not have the expected shape")]
    Shape(String),
    #[error("{0}: blocks kept landing while it was read")]
    Unsettled(String),
}

#[derive(Clone)]
pub struct ChainState {
    pub store: Arc<dyn Store>,
    pub rpc: NodeClient,
    pub contracts: Contracts,
    /// Held while a block (or a catch-up) is applied, and while a fill or the submitter
    /// checks what the store holds and writes over it.
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Principals the node said are not registered providers, or not reviewers (`Not`), with
    /// the tip they were read at.
    unregistered: Arc<Mutex<KnownNot>>,
    /// Patient ids the node said are not registered, with the preferences it gave for them
    /// (the contract's defaults) and the tip they were read at: remembered until the next
    /// block, never stored, as what principals are not (anyone the chain knows as a clinician
    /// may ask about any id, and every stored entry is read again by each catch-up).
    unregistered_patients: Arc<Mutex<KnownUnregistered>>,
    /// Patients' ids by the principal that registered them (`get-patient-id`): a registered
    /// id never changes, so each is read from the node once (`PATIENT_IDS_KEPT` at most).
    patient_ids: Arc<Mutex<HashMap<Address, PatientId>>>,
    /// Principals the cache does not know, asked about by the tablet's options, signing a
    /// break-glass request or a reviewer's sign-in, each a read from the node
    /// (`LOOKUPS_PER_SECOND`, all askers together: `bounded_lookup`).
    lookups: Arc<governor::DefaultDirectRateLimiter>,
    /// Each principal the provider directory lists, past `lookups`: one lookup every
    /// `LISTED_LOOKUP_SECS` (keyed by listed principals only, so as many as the staff).
    listed_lookups: Arc<governor::DefaultKeyedRateLimiter<Address>>,
}

/// How often a principal the provider directory lists is looked up on the node past the
/// shared bound (`bounded_lookup`): a registered clinician is cached after one, but one the
/// chain does not know is remembered only until the next block, and not at all once that
/// memory is full.
pub const LISTED_LOOKUP_SECS: u64 = 5;

/// How many principals the cache does not know the service asks the node about a second, for
/// `/tablet/options`, break-glass requests and reviewers' sign-ins together: anyone may ask, or
/// sign a request or a challenge with a key made on the spot, and each is a read from the node
/// (which the follower reads too);
/// beyond, 503 `too-many-lookups` (the page asks again; a refused request may be sent again
/// as it is). A clinician the cache holds (one who has used the service since a block last
/// named them) is never bounded, nor is one the provider directory lists, beyond one lookup of
/// each every `LISTED_LOOKUP_SECS`: the directory is as long as the hospital's staff.
pub const LOOKUPS_PER_SECOND: u32 = 20;

/// How many patients' ids `ChainState` keeps by principal (then it forgets them all).
const PATIENT_IDS_KEPT: usize = 50_000;

impl ChainState {
    pub fn new(store: Arc<dyn Store>, rpc: NodeClient, contracts: Contracts) -> ChainState {
        ChainState {
            store,
            rpc,
            contracts,
            apply_lock: Arc::default(),
            unregistered: Arc::default(),
            unregistered_patients: Arc::default(),
            patient_ids: Arc::default(),
            lookups: Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(LOOKUPS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN),
            ))),
            listed_lookups: Arc::new(governor::RateLimiter::keyed(
                governor::Quota::with_period(std::time::Duration::from_secs(LISTED_LOOKUP_SECS))
                    .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN)),
            )),
        }
    }

    /// Refuses (503 `too-many-lookups`) to look `principal` up when the cache does not know
    /// them, `LOOKUPS_PER_SECOND` such lookups were made this second already, and they are not
    /// in the provider directory (the hospital's clinicians, imported by its operators: a
    /// flood of keys made on the spot does not keep them waiting), or were looked up in the
    /// last `LISTED_LOOKUP_SECS` past that bound.
    /// A directory that cannot be read is 503 `store-unavailable` (not `too-many-lookups`: the
    /// clinician's client would wait for a bound that is not the cause).
    pub fn bounded_lookup(&self, principal: &Address) -> Result<(), crate::refusal::Refusal> {
        let listed = || match self.store.directory_entry(principal) {
            Ok(entry) => Ok(entry.is_some()),
            Err(e) => {
                tracing::error!(error = %e, "the provider directory could not be read for a lookup past the bound");
                Err(crate::refusal::Refusal::new(
                    503,
                    "store-unavailable",
                    "Store unavailable",
                    "the store cannot be read right now; try again",
                ))
            }
        };
        if self.cached_provider(principal).is_none()
            && self.lookups.check().is_err()
            && !(listed()? && self.listed_lookups.check_key(principal).is_ok())
        {
            return Err(crate::refusal::Refusal::new(
                503,
                "too-many-lookups",
                "Too many lookups",
                "too many principals the service does not know were asked about just now: try again in a moment",
            ));
        }
        Ok(())
    }

    /// Over `store`, with a node that is never asked (nothing listens there: a test that
    /// reaches it fails), for unit tests that read through their own `read` or the store.
    #[cfg(test)]
    pub(crate) fn without_node(store: Arc<dyn Store>) -> ChainState {
        ChainState::new(
            store,
            NodeClient::new(
                "http://127.0.0.1:9",
                std::time::Duration::from_millis(10),
                0,
            ),
            Contracts {
                address: "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap(),
            },
        )
    }

    fn sender(&self) -> &Address {
        &self.contracts.address
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.store, batch).await
    }

    /// An access-control read-only function of one principal.
    async fn read_of_principal(
        &self,
        function: &str,
        principal: &Address,
        at: Option<[u8; 32]>,
    ) -> Result<Value, StateError> {
        let arg = Value::Principal(Principal::Standard(*principal));
        Ok(self
            .rpc
            .call_read_at(
                &self.contracts.access_control(),
                function,
                &[arg],
                self.sender(),
                at.as_ref(),
            )
            .await?)
    }

    async fn read_provider(
        &self,
        principal: &Address,
        at: Option<[u8; 32]>,
    ) -> Result<ProviderState, StateError> {
        let v = self
            .read_of_principal("get-provider", principal, at)
            .await?;
        contracts::provider_state(&v).ok_or_else(|| StateError::Shape("get-provider".into()))
    }

    /// The patient's emergency preferences and whether the id is registered at all.
    async fn read_preferences(
        &self,
        patient: &PatientId,
        at: Option<[u8; 32]>,
    ) -> Result<Preferences, StateError> {
        let contract = self.contracts.patient_consent();
        let v = self
            .rpc
            .call_read_at(
                &contract,
                "get-emergency-preferences",
                &[Value::buffer(patient.0)],
                self.sender(),
                at.as_ref(),
            )
            .await?;
        let mut prefs = contracts::preferences(&v)
            .ok_or_else(|| StateError::Shape("get-emergency-preferences".into()))?;
        let principal = self
            .rpc
            .call_read_at(
                &contract,
                "get-patient-principal",
                &[Value::buffer(patient.0)],
                self.sender(),
                at.as_ref(),
            )
            .await?;
        prefs.registered = match principal {
            Value::Some(_) => Some(true),
            Value::None => Some(false),
            _ => return Err(StateError::Shape("get-patient-principal".into())),
        };
        Ok(prefs)
    }

    async fn read_consent(
        &self,
        key: &ConsentKey,
        at: Option<[u8; 32]>,
    ) -> Result<Consent, StateError> {
        let provider = Value::Principal(Principal::Standard(key.provider));
        let args = [
            Value::buffer(key.patient.0),
            provider,
            Value::ascii(key.data_type.as_str()),
            Value::ascii(key.purpose.as_str()),
        ];
        let v = self
            .rpc
            .call_read_at(
                &self.contracts.patient_consent(),
                "get-consent",
                &args,
                self.sender(),
                at.as_ref(),
            )
            .await?;
        contracts::consent(&v).ok_or_else(|| StateError::Shape("get-consent".into()))
    }

    async fn read_responder(
        &self,
        principal: &Address,
        at: Option<[u8; 32]>,
    ) -> Result<bool, StateError> {
        let v = self
            .read_of_principal("is-responder", principal, at)
            .await?;
        contracts::boolean(Some(&v)).ok_or_else(|| StateError::Shape("is-responder".into()))
    }

    async fn read_summary_hash(
        &self,
        patient: &PatientId,
        at: Option<[u8; 32]>,
    ) -> Result<Option<crate::store::SummaryHash>, StateError> {
        let c = &self.contracts;
        let v = self
            .rpc
            .call_read_at(
                &c.access_control(),
                "get-summary-hash",
                &[Value::Buffer(patient.0.to_vec())],
                self.sender(),
                at.as_ref(),
            )
            .await?;
        match v {
            Value::None => Ok(None),
            Value::Some(t) => {
                let m = t
                    .as_tuple()
                    .ok_or_else(|| StateError::Shape("get-summary-hash".into()))?;
                let num = |k: &str| contracts::uint(m.get(k)).and_then(|n| u64::try_from(n).ok());
                match (
                    contracts::buff32(m.get("hash")),
                    num("version"),
                    num("block"),
                ) {
                    (Some(hash), Some(version), Some(block)) => {
                        Ok(Some(crate::store::SummaryHash {
                            hash: hex::encode(hash),
                            version,
                            block,
                        }))
                    }
                    _ => Err(StateError::Shape("get-summary-hash".into())),
                }
            }
            _ => Err(StateError::Shape("get-summary-hash".into())),
        }
    }

    /// The chain's hash of `patient`'s emergency summary (a data custodian's record).
    pub async fn summary_hash(
        &self,
        patient: &PatientId,
    ) -> Result<Option<crate::store::SummaryHash>, StateError> {
        self.fill(
            "get-summary-hash",
            |store| store.summary_hash(patient),
            |at| self.read_summary_hash(patient, at),
            |h, _| {
                Some(Batch {
                    summary_hashes: vec![(*patient, h.clone())],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    async fn read_reviewer(
        &self,
        principal: &Address,
        at: Option<[u8; 32]>,
    ) -> Result<bool, StateError> {
        let v = self.read_of_principal("is-reviewer", principal, at).await?;
        contracts::boolean(Some(&v)).ok_or_else(|| StateError::Shape("is-reviewer".into()))
    }

    /// Whether `principal` holds the reviewer role of access-control (governance). A
    /// principal that does not is remembered in memory, not stored (`Not`): anyone can sign a
    /// sign-in with a key made on the spot, and each such row stored would be read from the
    /// node again by every catch-up, under the lock blocks wait on.
    pub async fn is_reviewer(&self, principal: &Address) -> Result<bool, StateError> {
        self.fill(
            "is-reviewer",
            |store| match store.reviewer(principal)? {
                Some(r) => Ok(Some(r)),
                None => Ok(self
                    .known_not(Not::Reviewer, principal, &store.tip()?)
                    .then_some(false)),
            },
            |at| self.read_reviewer(principal, at),
            |r, tip| {
                if !*r {
                    self.remember_not(Not::Reviewer, principal, tip);
                    return None;
                }
                Some(Batch {
                    reviewers: vec![(*principal, true)],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    /// Fills a miss: reads with `read`, as of the block the store's tip is (`read_at`), and
    /// writes what `keep` makes of it (given the tip it was read at), unless a block was applied
    /// meanwhile, in which case it asks the store again (the follower may have written the
    /// entry) and reads again.
    ///
    /// Read at the store's tip, not the node's: with replicas sharing the store, the tip may be
    /// a block another replica applied from a node ahead of this one's. This node's answer from
    /// before that block (a clinician verified whom the block suspended, say) would otherwise be
    /// kept under it, and honoured until a later block named them again. A node that has not got
    /// the block answers so (`RpcError::NoSuchTip`, read again while it catches up), and
    /// nothing is kept.
    async fn fill<T, R, Fut>(
        &self,
        what: &str,
        cached: impl Fn(&dyn Store) -> Result<Option<T>, StoreError>,
        read: R,
        keep: impl Fn(&T, Option<Tip>) -> Option<Batch>,
    ) -> Result<T, StateError>
    where
        R: Fn(Option<[u8; 32]>) -> Fut,
        Fut: Future<Output = Result<T, StateError>>,
    {
        for _ in 0..FILL_ATTEMPTS {
            if let Some(v) = cached(self.store.as_ref())? {
                return Ok(v);
            }
            let before = self.store.tip()?;
            let v = match read(read_at(&before)).await {
                // the node has not got the stored block: read again if the tip moved meanwhile
                // (to a block it may have)
                Err(StateError::Rpc(RpcError::NoSuchTip { .. })) if self.store.tip()? != before => {
                    continue
                }
                read => read?,
            };
            let _guard = self.apply_lock.lock().await;
            if self.store.tip()? == before {
                // a catch-up under way (the tip its mark): answered, not kept (a catch-up writes
                // every entry listed when it began; one kept after, as of its mark's block,
                // would stay under the later tip it moves to)
                if before.is_some_and(|t| t.catching_up) {
                    return Ok(v);
                }
                let Some(batch) = keep(&v, before) else {
                    return Ok(v);
                };
                // written only while the store's tip is still `before`: another replica sharing
                // the store may apply a block between this check and the write
                let guarded = Batch {
                    guard: Some(crate::store::Guard {
                        tip: Some(before),
                        ..crate::store::Guard::default()
                    }),
                    ..batch
                };
                match self.write(guarded).await {
                    Ok(()) => return Ok(v),
                    Err(StoreError::Guarded(crate::store::Guarded::Changed)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(StateError::Unsettled(what.to_string()))
    }

    pub async fn provider(&self, principal: &Address) -> Result<ProviderState, StateError> {
        self.fill(
            "get-provider",
            |store| match store.provider(principal)? {
                Some(s) => Ok(Some(s)),
                None => Ok(self
                    .known_not(Not::Provider, principal, &store.tip()?)
                    .then_some(ProviderState::Unregistered)),
            },
            |at| self.read_provider(principal, at),
            |s, tip| {
                if *s == ProviderState::Unregistered {
                    self.remember_not(Not::Provider, principal, tip);
                    return None;
                }
                Some(Batch {
                    providers: vec![(*principal, Some(s.clone()))],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    /// The provider as the cache has them, never asking the node: stored, or known to be
    /// unregistered since the last block; `None` if neither (or the store cannot be read).
    pub fn cached_provider(&self, principal: &Address) -> Option<ProviderState> {
        let cached = || -> Result<Option<ProviderState>, StoreError> {
            Ok(match self.store.provider(principal)? {
                Some(s) => Some(s),
                None => self
                    .known_not(Not::Provider, principal, &self.store.tip()?)
                    .then_some(ProviderState::Unregistered),
            })
        };
        cached().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the chain-state cache could not be read");
            None
        })
    }

    fn known_not(&self, not: Not, principal: &Address, tip: &Option<Tip>) -> bool {
        let known = self.unregistered.lock().unwrap_or_else(|p| p.into_inner());
        known.get(&(*principal, not), tip).is_some()
    }

    /// Forgets what the node said `principal` was not: a block names them (with replicas, the
    /// tip this was remembered at may be the very block's, another replica having stored it
    /// first, and this replica's node behind it when it was asked).
    fn forget_not(&self, not: Not, principal: &Address) {
        let mut known = self.unregistered.lock().unwrap_or_else(|p| p.into_inner());
        known.forget(&(*principal, not));
    }

    fn remember_not(&self, not: Not, principal: &Address, tip: Option<Tip>) {
        let mut known = self.unregistered.lock().unwrap_or_else(|p| p.into_inner());
        known.remember((*principal, not), (), tip);
    }

    pub async fn preferences(&self, patient: &PatientId) -> Result<Preferences, StateError> {
        self.fill(
            "get-emergency-preferences",
            // an entry cached before registration was read is read again
            |store| {
                Ok(match store.preferences(patient)? {
                    Some(p) if p.registered.is_some() => Some(p),
                    _ => self.known_unregistered(patient, &store.tip()?),
                })
            },
            |at| self.read_preferences(patient, at),
            |p, tip| {
                if p.registered == Some(false) {
                    self.remember_unregistered(patient, p.clone(), tip);
                    return None;
                }
                Some(Batch {
                    preferences: vec![(*patient, p.clone())],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    /// The preferences the node gave for unregistered `patient` at `tip`, if that is when
    /// they were read.
    fn known_unregistered(&self, patient: &PatientId, tip: &Option<Tip>) -> Option<Preferences> {
        let known = self
            .unregistered_patients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.get(patient, tip)
    }

    fn remember_unregistered(&self, patient: &PatientId, p: Preferences, tip: Option<Tip>) {
        let mut known = self
            .unregistered_patients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.remember(*patient, p, tip);
    }

    pub async fn consent(&self, key: &ConsentKey) -> Result<Consent, StateError> {
        self.fill(
            "get-consent",
            |store| store.consent(key),
            |at| self.read_consent(key, at),
            |c, _| {
                Some(Batch {
                    consents: vec![(key.clone(), c.clone())],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    pub async fn is_responder(&self, principal: &Address) -> Result<bool, StateError> {
        self.fill(
            "is-responder",
            |store| store.responder(principal),
            |at| self.read_responder(principal, at),
            |r, _| {
                Some(Batch {
                    responders: vec![(*principal, *r)],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    /// What the node's `block` names through its own calls to our contracts
    /// (`events::called`), each patient-consent caller's patient id read from the node (once:
    /// kept). `None` when that is not known this way: its transactions did not decode (a later
    /// epoch's kind), or its patient-consent callers are more than `events::MAX_NAMED` (each a
    /// read); the block is then read as a gap (every cached entry read again).
    pub async fn named_by_calls(&self, block: &NodeBlock) -> Result<Option<Named>, StateError> {
        let Some(txs) = &block.txs else {
            return Ok(None);
        };
        let called = events::called(txs, &self.contracts);
        let callers: std::collections::BTreeSet<&Address> =
            called.by_patients.iter().map(|(a, _)| a).collect();
        if callers.len() > events::MAX_NAMED {
            return Ok(None);
        }
        let mut named = called.named;
        let mut ids: HashMap<Address, Option<PatientId>> = HashMap::new();
        for (sender, what) in called.by_patients {
            let patient = match ids.get(&sender) {
                Some(id) => *id,
                None => {
                    let id = self.patient_of(&sender).await?;
                    ids.insert(sender, id);
                    id
                }
            };
            let Some(patient) = patient else {
                continue; // not a patient: the call changed nothing
            };
            match what {
                ForPatient::Preferences => {
                    named.patients.insert(patient);
                }
                ForPatient::Consent(provider, data_type, purpose) => {
                    named
                        .consents
                        .insert((patient, provider, data_type, purpose));
                }
            }
        }
        Ok(Some(named))
    }

    /// The patient id `who` registered, as the node has it (kept once read).
    async fn patient_of(&self, who: &Address) -> Result<Option<PatientId>, StateError> {
        let kept = |ids: &Mutex<HashMap<Address, PatientId>>| {
            ids.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(who)
                .copied()
        };
        if let Some(id) = kept(&self.patient_ids) {
            return Ok(Some(id));
        }
        let id = self.read_patient_of(who).await?;
        if let Some(id) = id {
            let mut ids = self.patient_ids.lock().unwrap_or_else(|p| p.into_inner());
            if ids.len() >= PATIENT_IDS_KEPT {
                ids.clear();
            }
            ids.insert(*who, id);
        }
        Ok(id)
    }

    async fn read_patient_of(&self, who: &Address) -> Result<Option<PatientId>, StateError> {
        let v = self
            .rpc
            .call_read(
                &self.contracts.patient_consent(),
                "get-patient-id",
                &[Value::Principal(Principal::Standard(*who))],
                self.sender(),
            )
            .await?;
        match v {
            Value::None => Ok(None),
            Value::Some(id) => contracts::buff32(Some(&id))
                .map(|id| Some(PatientId(id)))
                .ok_or_else(|| StateError::Shape("get-patient-id".into())),
            _ => Err(StateError::Shape("get-patient-id".into())),
        }
    }

    /// Reads back from the node the entries a block names that the cache holds (an entry it
    /// does not hold is read on its first use anyway), into `batch`, to land with the block.
    /// Those it does not hold are dropped by the same write (`Batch::uncached`): with replicas
    /// sharing the store, another replica's fill, read before this block, may land between
    /// this look and the write, and would otherwise outlive the block it is older than.
    pub async fn reread(&self, named: &Named, batch: &mut Batch) -> Result<(), StateError> {
        for who in &named.providers {
            // what the node said it was not, it may be since this block
            self.forget_not(Not::Provider, who);
            if self.store.provider(who)?.is_some() {
                let s = self.read_provider(who, None).await?;
                keep_provider(batch, *who, s);
            } else {
                batch.uncached.providers.push(*who);
            }
        }
        for who in &named.reviewers {
            self.forget_not(Not::Reviewer, who);
            if self.store.reviewer(who)?.is_some() {
                let r = self.read_reviewer(who, None).await?;
                keep_reviewer(batch, *who, r);
            } else {
                batch.uncached.reviewers.push(*who);
            }
        }
        for patient in &named.patients {
            self.unregistered_patients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(patient);
            if self.store.preferences(patient)?.is_some() {
                let p = self.read_preferences(patient, None).await?;
                keep_preferences(batch, *patient, p);
            } else {
                batch.uncached.preferences.push(*patient);
            }
        }
        let u = &mut batch.uncached;
        for who in &named.responders {
            if self.store.responder(who)?.is_some() {
                let r = self.read_responder(who, None).await?;
                batch.responders.push((*who, r));
            } else {
                u.responders.push(*who);
            }
        }
        for patient in &named.summaries {
            if self.store.summary_hash(patient)?.is_some() {
                let h = self.read_summary_hash(patient, None).await?;
                batch.summary_hashes.push((*patient, h));
            } else {
                u.summary_hashes.push(*patient);
            }
        }
        for (patient, provider, data_type, purpose) in &named.consents {
            let key = ConsentKey {
                patient: *patient,
                provider: *provider,
                data_type: *data_type,
                purpose: *purpose,
            };
            if self.store.consent(&key)?.is_some() {
                let c = self.read_consent(&key, None).await?;
                batch.consents.push((key, c));
            } else {
                u.consents.push(key);
            }
        }
        Ok(())
    }

    /// Marks the stored tip for a catch-up (`refresh_all`), over the tip as read (another
    /// replica's tip written meanwhile is not put back): the tip as marked.
    async fn mark_tip(&self) -> Result<Tip, StateError> {
        for _ in 0..FILL_ATTEMPTS {
            let stored = self.store.tip()?;
            let marked = stored.unwrap_or(Tip::new(0, [0; 32])).marked();
            let batch = Batch {
                tip: Some(marked),
                guard: Some(crate::store::Guard {
                    tip: Some(stored),
                    ..crate::store::Guard::default()
                }),
                ..Batch::default()
            };
            match self.write(batch).await {
                Ok(()) => return Ok(marked),
                Err(StoreError::Guarded(crate::store::Guarded::Changed)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StateError::Unsettled("the tip, to mark it".into()))
    }

    /// Re-reads every cached entry from the node, for after a gap in the block stream or a
    /// reorg. The result goes into `batch` so that it lands with the new tip.
    ///
    /// Other replicas fill the same cache meanwhile: a fill that read the node before this
    /// catch-up looked, and landed before its write, would be kept under the tip the catch-up
    /// moves to without being read again (it is not in the list read here), though the chain
    /// may have changed it since. So the stored tip is marked first (`Tip::written`): a fill
    /// checked against the tip it read before cannot land after the mark, and every one that
    /// landed before it is in the list; one read while the mark stands keeps nothing
    /// (`Tip::catching_up`). Another replica applying the tip's block again, late, keeps the
    /// mark as it is. Reads that fail take the mark off (`unmark`).
    pub async fn refresh_all(&self, batch: &mut Batch) -> Result<(), StateError> {
        let marked = self.mark_tip().await?;
        batch.reread_all = Some(marked);
        let read = self.read_all(batch).await;
        if read.is_err() {
            self.unmark(marked).await;
        }
        read
    }

    /// Takes a catch-up's mark off the stored tip, if it is still there (the catch-up failed:
    /// else fills kept nothing until the next block), guarded on it; a failure is logged
    /// (the next block's tip takes it off).
    pub async fn unmark(&self, marked: Tip) {
        let batch = Batch {
            tip: Some(marked.unmarked()),
            guard: Some(crate::store::Guard {
                tip: Some(Some(marked)),
                ..crate::store::Guard::default()
            }),
            ..Batch::default()
        };
        match self.write(batch).await {
            Ok(()) | Err(StoreError::Guarded(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a failed catch-up's mark could not be taken off (the next block's tip takes it off)")
            }
        }
    }

    /// `refresh_all`'s reads, into `batch`.
    async fn read_all(&self, batch: &mut Batch) -> Result<(), StateError> {
        for who in self.store.providers()? {
            let s = self.read_provider(&who, None).await?;
            keep_provider(batch, who, s);
        }
        for patient in self.store.patients()? {
            let p = self.read_preferences(&patient, None).await?;
            keep_preferences(batch, patient, p);
        }
        for who in self.store.responders()? {
            let r = self.read_responder(&who, None).await?;
            batch.responders.push((who, r));
        }
        for patient in self.store.summary_hash_ids()? {
            let h = self.read_summary_hash(&patient, None).await?;
            batch.summary_hashes.push((patient, h));
        }
        for who in self.store.reviewers()? {
            let r = self.read_reviewer(&who, None).await?;
            keep_reviewer(batch, who, r);
        }
        for key in self.store.consents()? {
            let c = self.read_consent(&key, None).await?;
            batch.consents.push((key, c));
        }
        Ok(())
    }
}

/// The block a fill reads at (`ChainState::fill`): the store's tip (a catch-up's mark too:
/// the rows cached meanwhile are as of its block), the node's while the store holds none.
fn read_at(tip: &Option<Tip>) -> Option<[u8; 32]> {
    tip.as_ref()
        .map(|t| t.index_block_hash)
        .filter(|hash| *hash != [0; 32])
}

/// A patient's preferences as read back from the node, into `batch`: kept if the id is
/// registered, else dropped (as `keep_provider`: rows for unregistered ids, stored before
/// they were remembered in memory instead, were read again by every catch-up).
fn keep_preferences(batch: &mut Batch, patient: PatientId, p: Preferences) {
    if p.registered == Some(false) {
        batch.uncached.preferences.push(patient);
    } else {
        batch.preferences.push((patient, p));
    }
}

/// A provider's entry as read back from the node, into `batch`: kept if registered, else
/// dropped. What a principal is not is never stored (anyone can make a key), and a row that
/// says so (stored by a version before that, or a registration undone) would be read from the
/// node again by every catch-up; the next use reads it once, and remembers it until the next
/// block.
fn keep_provider(batch: &mut Batch, who: Address, state: ProviderState) {
    if state == ProviderState::Unregistered {
        batch.uncached.providers.push(who);
    } else {
        batch.providers.push((who, Some(state)));
    }
}

/// A reviewer's entry as read back from the node, into `batch`: kept if they hold the role,
/// else dropped (as `keep_provider`).
fn keep_reviewer(batch: &mut Batch, who: Address, reviewer: bool) {
    if reviewer {
        batch.reviewers.push((who, true));
    } else {
        batch.uncached.reviewers.push(who);
    }
}

/// A write's number for the tip (`Tip::written`): random, so that no two writes of a tip, on
/// any replica, leave it alike.
pub(crate) fn mark() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // the system's generator does not fail on the systems this runs on; a clock's
    // nanoseconds would do nearly as well
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn who() -> Address {
        WHO.parse().unwrap()
    }
    use crate::domain::{ProviderStatus, Role};
    use crate::store::RedbStore;

    const WHO: &str = "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB";

    fn state(dir: &std::path::Path) -> ChainState {
        // the node is never asked here: each test reads through its own `read`
        ChainState::without_node(Arc::new(RedbStore::open(&dir.join("store.redb")).unwrap()))
    }

    fn tip(height: u64) -> Tip {
        Tip::new(height, [height as u8; 32])
    }

    fn provider(status: ProviderStatus) -> ProviderState {
        ProviderState::Registered {
            role: Role::Nurse,
            status,
            info_hash: None,
        }
    }

    fn block(height: u64, providers: Vec<(Address, Option<ProviderState>)>) -> Batch {
        Batch {
            tip: Some(tip(height)),
            providers,
            ..Batch::default()
        }
    }

    /// Fills `WHO`'s entry; `read` answers for the node and may apply blocks meanwhile.
    async fn fill_provider<Fut>(
        st: &ChainState,
        read: impl Fn() -> Fut,
    ) -> Result<ProviderState, StateError>
    where
        Fut: Future<Output = Result<ProviderState, StateError>>,
    {
        st.fill(
            "get-provider",
            |store| store.provider(&who()),
            |_| read(),
            |s, _| {
                Some(Batch {
                    providers: vec![(who(), Some(s.clone()))],
                    ..Batch::default()
                })
            },
        )
        .await
    }

    /// The fill gave the provider as suspended, and the store holds them so.
    fn suspended_in_the_end(st: &ChainState, got: ProviderState) {
        assert_eq!(got, provider(ProviderStatus::Suspended));
        assert_eq!(
            st.store.provider(&who()).unwrap(),
            Some(provider(ProviderStatus::Suspended))
        );
    }

    /// A cache at block 1, with nothing filled yet.
    fn at_block_one() -> (tempfile::TempDir, ChainState) {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        st.store.apply(block(1, vec![])).unwrap();
        (dir, st)
    }

    /// Two replicas' stores on one Redis (killed when dropped) at block 1: this one's cache
    /// state, and the other's store.
    async fn two_replicas_at_block_one(
    ) -> (crate::dev::TestRedis, ChainState, crate::store::RedisStore) {
        let redis = crate::dev::test_redis().await;
        let url = redis.url.as_str();
        let mut st = state(redis.dir.path());
        st.store = Arc::new(crate::store::RedisStore::open(url, "r:").unwrap());
        let other = crate::store::RedisStore::open(url, "r:").unwrap();
        st.store.apply(block(1, vec![])).unwrap();
        (redis, st, other)
    }

    /// Replicas sharing Redis: a provider this replica wrote (kept in its memory) is taken out
    /// of Redis by another (a block it found passed, say); this replica's catch-up lists
    /// Redis, does not find it, and re-reads nothing of it: its write drops the copies kept in
    /// memory, so that the provider is read from Redis (a miss, filled from the node), not as
    /// this replica wrote it before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_catch_up_drops_what_this_replica_kept_of_rows_another_took_out() {
        let (_redis, st, other) = two_replicas_at_block_one().await;
        st.store
            .apply(block(
                1,
                vec![(who(), Some(provider(ProviderStatus::Verified)))],
            ))
            .unwrap();
        other
            .apply(Batch {
                uncached: crate::store::Uncached {
                    providers: vec![who()],
                    ..Default::default()
                },
                ..Batch::default()
            })
            .unwrap();
        assert!(
            st.store.provider(&who()).unwrap().is_some(),
            "kept in memory"
        );
        let mut batch = Batch::default();
        st.refresh_all(&mut batch).await.unwrap();
        st.store.apply(batch).unwrap();
        assert_eq!(st.store.provider(&who()).unwrap(), None);
    }

    /// Replicas sharing Redis: another replica applies block 2 (the provider not cached, so
    /// not read back) after this one's fill checked the tip and before its write lands. The
    /// fill's write is refused (the tip is no longer the one it read), and it reads again: it
    /// never lands the answer read at block 1 over block 2. Before, it landed, and every
    /// replica kept the provider verified after their suspension until a block named them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_is_not_written_over_a_block_another_replica_applied_after_its_check() {
        let (_redis, st, other) = two_replicas_at_block_one().await;
        let reads = AtomicUsize::new(0);
        let kept = AtomicUsize::new(0);
        let got = st
            .fill(
                "get-provider",
                |store| store.provider(&who()),
                |_| async {
                    Ok(if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                        provider(ProviderStatus::Verified)
                    } else {
                        provider(ProviderStatus::Suspended)
                    })
                },
                |s, _| {
                    if kept.fetch_add(1, Ordering::SeqCst) == 0 {
                        // between this replica's check of the tip and its write
                        other.apply(block(2, vec![])).unwrap();
                    }
                    Some(Batch {
                        providers: vec![(who(), Some(s.clone()))],
                        ..Batch::default()
                    })
                },
            )
            .await
            .unwrap();
        suspended_in_the_end(&st, got);
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again at block 2");
    }

    /// Replicas sharing Redis: this replica catches up (a gap, say) while another fills the
    /// provider, who is not cached when the catch-up lists what to read again. The fill read
    /// the node before the catch-up began (verified, at block 1) and would land before the
    /// catch-up's write: it is refused (the catch-up marked the tip first), reads again (the
    /// catch-up under way), answers that and keeps nothing: nothing of the
    /// provider stays under the catch-up's tip, read from the node on use. Before, the fill
    /// landed as read, the catch-up moved the tip past it, and the provider stayed verified
    /// after their suspension until a block named them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_read_before_another_replicas_catch_up_does_not_outlive_it() {
        let (redis, st, other) = two_replicas_at_block_one().await;
        let mut filler = state(redis.dir.path());
        filler.store = Arc::new(other);
        let reads = AtomicUsize::new(0);
        let caught_up = tokio::sync::Mutex::new(None);
        let got = fill_provider(&filler, || async {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                // while the filler reads the node, the catch-up lists what to read
                let mut batch = Batch::default();
                st.refresh_all(&mut batch).await.unwrap();
                assert!(batch.providers.is_empty(), "not cached yet");
                *caught_up.lock().await = Some(batch);
                Ok(provider(ProviderStatus::Verified))
            } else {
                Ok(provider(ProviderStatus::Suspended))
            }
        })
        .await
        .unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again after the mark");
        assert_eq!(got, provider(ProviderStatus::Suspended));
        // the catch-up's write, with the node's tip
        let batch = caught_up.lock().await.take().unwrap();
        st.store
            .apply(Batch {
                tip: Some(tip(2)),
                ..batch
            })
            .unwrap();
        let third = crate::store::RedisStore::open(redis.url.as_str(), "r:").unwrap();
        assert_eq!(third.tip().unwrap(), Some(tip(2)), "the mark cleared");
        assert_eq!(third.provider(&who()).unwrap(), None);
    }

    /// Replicas sharing Redis: as above, but between the catch-up's mark and the fill's write
    /// a third replica applies block 1 again, late (its follower behind), writing the same
    /// block's tip over the mark. The tip it writes is its own (`Tip::applied`), not the one
    /// the fill read before the mark, so the fill is still refused and reads again. Before,
    /// the late write put back exactly the tip the fill had read: the fill landed as read,
    /// unread by the catch-up, and the provider stayed verified after their suspension.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_applied_again_late_does_not_let_a_fill_from_before_a_catch_up_land() {
        let (redis, st, other) = two_replicas_at_block_one().await;
        let mut filler = state(redis.dir.path());
        filler.store = Arc::new(other);
        let late = crate::store::RedisStore::open(redis.url.as_str(), "r:").unwrap();
        let reads = AtomicUsize::new(0);
        let got = fill_provider(&filler, || async {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut batch = Batch::default();
                st.refresh_all(&mut batch).await.unwrap();
                // block 1 again, as the late replica's follower writes it
                late.apply(Batch {
                    tip: Some(Tip::applied(1, [1; 32])),
                    ..Batch::default()
                })
                .unwrap();
                Ok(provider(ProviderStatus::Verified))
            } else {
                Ok(provider(ProviderStatus::Suspended))
            }
        })
        .await
        .unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again");
        assert_eq!(got, provider(ProviderStatus::Suspended));
        assert_eq!(
            late.provider(&who()).unwrap(),
            Some(provider(ProviderStatus::Suspended))
        );
    }

    /// Replicas sharing Redis: a block names the provider, who is not cached when this replica
    /// looks, so it is not read back; another replica's fill, read before the block, lands
    /// before the block's write. The block's write drops the entry: the fill does not outlive
    /// the block it is older than (the next use reads it again). Before, it stayed, verified
    /// after the suspension, until a block named the provider again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_drops_what_it_names_and_did_not_read_back() {
        let (redis, st, other) = two_replicas_at_block_one().await;
        let named = Named {
            providers: [who()].into(),
            ..Named::default()
        };
        let mut batch = block(2, vec![]);
        st.reread(&named, &mut batch).await.unwrap();
        // the other replica's fill, read at block 1, lands now
        other
            .apply(Batch {
                providers: vec![(who(), Some(provider(ProviderStatus::Verified)))],
                guard: Some(crate::store::Guard {
                    tip: Some(Some(tip(1))),
                    ..crate::store::Guard::default()
                }),
                ..Batch::default()
            })
            .unwrap();
        st.store.apply(batch).unwrap();
        assert_eq!(st.store.provider(&who()).unwrap(), None, "dropped");
        // in Redis, for a replica that reads it next (the one that filled it keeps its own
        // copy until its follower applies the block, which finds it cached and reads it back)
        let third = crate::store::RedisStore::open(redis.url.as_str(), "r:").unwrap();
        assert_eq!(third.provider(&who()).unwrap(), None);
    }

    #[tokio::test]
    async fn a_fill_never_overwrites_a_block_applied_while_it_read() {
        let (_dir, st) = at_block_one();
        let reads = AtomicUsize::new(0);
        let got = fill_provider(&st, || async {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                // the node answered at block 1; block 2, suspending the provider, is
                // applied before that answer is kept
                st.store
                    .apply(block(
                        2,
                        vec![(who(), Some(provider(ProviderStatus::Suspended)))],
                    ))
                    .unwrap();
            }
            Ok(provider(ProviderStatus::Verified))
        })
        .await
        .unwrap();
        suspended_in_the_end(&st, got);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the block's entry was used"
        );
    }

    #[tokio::test]
    async fn a_fill_reads_again_when_a_block_lands_meanwhile_and_keeps_the_new_answer() {
        let (_dir, st) = at_block_one();
        let reads = AtomicUsize::new(0);
        let got = fill_provider(&st, || async {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                // a block that said nothing of this provider (or dropped it: an event the
                // follower could not complete)
                st.store.apply(block(2, vec![(who(), None)])).unwrap();
                return Ok(provider(ProviderStatus::Verified));
            }
            Ok(provider(ProviderStatus::Revoked))
        })
        .await
        .unwrap();
        assert_eq!(got, provider(ProviderStatus::Revoked));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(
            st.store.provider(&who()).unwrap(),
            Some(provider(ProviderStatus::Revoked))
        );
    }

    #[tokio::test]
    async fn a_fill_gives_up_when_blocks_keep_landing() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let height = AtomicUsize::new(0);
        let got = fill_provider(&st, || async {
            let h = height.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            st.store.apply(block(h, vec![])).unwrap();
            Ok(provider(ProviderStatus::Verified))
        })
        .await;
        assert!(matches!(got, Err(StateError::Unsettled(_))), "{got:?}");
        assert_eq!(st.store.provider(&who()).unwrap(), None, "nothing was kept");
    }

    /// A fill reads as of the stored block; while a catch-up is under way (the stored tip its
    /// mark) it keeps nothing: the catch-up writes what it listed when it began, and a row kept
    /// after, read as of its mark's block, would stay under the later tip the catch-up moves
    /// to.
    #[tokio::test]
    async fn a_fill_during_a_catch_up_keeps_nothing() {
        let (_dir, st) = at_block_one();
        let asked = Mutex::new(Vec::new());
        let fill = || {
            st.fill(
                "get-provider",
                |store| store.provider(&who()),
                |at| {
                    asked.lock().unwrap().push(at);
                    async { Ok(provider(ProviderStatus::Verified)) }
                },
                |s, _| {
                    Some(Batch {
                        providers: vec![(who(), Some(s.clone()))],
                        ..Batch::default()
                    })
                },
            )
        };
        let marked = st.mark_tip().await.unwrap();
        assert!(marked.catching_up && st.store.tip().unwrap() == Some(marked));
        assert_eq!(fill().await.unwrap(), provider(ProviderStatus::Verified));
        assert_eq!(
            *asked.lock().unwrap(),
            vec![Some([1; 32])],
            "at the mark's block"
        );
        assert_eq!(st.store.provider(&who()).unwrap(), None, "nothing kept");
        // the catch-up done (a block's tip written), as of the stored block, and kept
        st.store.apply(block(2, vec![])).unwrap();
        fill().await.unwrap();
        assert_eq!(asked.lock().unwrap()[1], Some([2; 32]));
        assert_eq!(
            st.store.provider(&who()).unwrap(),
            Some(provider(ProviderStatus::Verified))
        );
    }

    /// A catch-up whose reads fail (the node away) takes its mark off the stored tip: else
    /// every fill kept nothing until the next block.
    #[tokio::test]
    async fn a_failed_catch_up_takes_its_mark_off() {
        let (_dir, st) = at_block_one();
        st.store
            .apply(Batch {
                providers: vec![(who(), Some(provider(ProviderStatus::Verified)))],
                ..Batch::default()
            })
            .unwrap();
        let mut batch = Batch::default();
        // (this state has no node: every read fails)
        assert!(st.refresh_all(&mut batch).await.is_err());
        let stored = st.store.tip().unwrap().unwrap();
        assert_eq!((stored.height, stored.catching_up), (1, false));
        assert_eq!(
            Some(stored.index_block_hash),
            batch.reread_all.map(|t| t.index_block_hash)
        );
    }

    /// A node without the stored block (behind the replica that applied it) is asked again
    /// when the tip moves meanwhile, at the new tip; while it does not, its answer is the
    /// fill's error and nothing is kept.
    #[tokio::test]
    async fn a_fill_at_a_block_the_node_has_not_got_reads_again_if_the_tip_moves() {
        let (_dir, st) = at_block_one();
        let asked = &Mutex::new(Vec::new());
        let st = &st;
        let behind = || {
            StateError::Rpc(RpcError::NoSuchTip {
                call: "call-read get-provider".into(),
                tip: "01".repeat(32),
            })
        };
        let fill = |moves: bool| {
            st.fill(
                "get-provider",
                |store| store.provider(&who()),
                move |at| {
                    let first = asked.lock().unwrap().is_empty();
                    asked.lock().unwrap().push(at);
                    if first && moves {
                        st.store.apply(block(2, vec![])).unwrap();
                    }
                    let answer = if at == Some([2; 32]) {
                        Ok(provider(ProviderStatus::Verified))
                    } else {
                        Err(behind())
                    };
                    async { answer }
                },
                |s, _| {
                    Some(Batch {
                        providers: vec![(who(), Some(s.clone()))],
                        ..Batch::default()
                    })
                },
            )
        };
        let got = fill(false).await;
        assert!(
            matches!(got, Err(StateError::Rpc(RpcError::NoSuchTip { .. }))),
            "{got:?}"
        );
        assert_eq!(st.store.provider(&who()).unwrap(), None);
        asked.lock().unwrap().clear();
        assert_eq!(
            fill(true).await.unwrap(),
            provider(ProviderStatus::Verified)
        );
        assert_eq!(*asked.lock().unwrap(), vec![Some([1; 32]), Some([2; 32])]);
        assert!(st.store.provider(&who()).unwrap().is_some());
    }

    /// A block that names a principal remembered as not a reviewer, or not registered,
    /// forgets that, whatever the tip: with replicas the answer may have been read from a
    /// node behind the block another replica stored, at that very tip, and this replica's
    /// applying the block leaves the tip as it is.
    #[tokio::test]
    async fn a_block_naming_a_principal_forgets_what_it_was_not() {
        let (_dir, st) = at_block_one();
        let tip = st.store.tip().unwrap();
        st.remember_not(Not::Reviewer, &who(), tip);
        st.remember_not(Not::Provider, &who(), tip);
        let named = Named {
            reviewers: [who()].into(),
            providers: [who()].into(),
            ..Named::default()
        };
        let mut batch = Batch::default();
        st.reread(&named, &mut batch).await.unwrap();
        assert!(!st.known_not(Not::Reviewer, &who(), &tip));
        assert!(!st.known_not(Not::Provider, &who(), &tip));
    }

    #[test]
    fn unregistered_principals_are_remembered_until_the_next_block_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        st.remember_not(Not::Provider, &who(), Some(tip(1)));
        assert!(st.known_not(Not::Provider, &who(), &Some(tip(1))));
        assert!(!st.known_not(Not::Provider, &who(), &Some(tip(2))));
        let other: Address = "ST000000000000000000002AMW42H".parse().unwrap();
        assert!(!st.known_not(Not::Provider, &other, &Some(tip(1))));
        // a newer block forgets what was read before it
        st.remember_not(Not::Provider, &other, Some(tip(2)));
        assert!(!st.known_not(Not::Provider, &who(), &Some(tip(1))));
        for i in 0..MAX_UNREGISTERED + 10 {
            let mut hash160 = [0u8; 20];
            hash160[..8].copy_from_slice(&(i as u64).to_be_bytes());
            st.remember_not(
                Not::Provider,
                &Address::new(26, hash160).unwrap(),
                Some(tip(2)),
            );
        }
        let known = st.unregistered.lock().unwrap().len();
        assert_eq!(known, MAX_UNREGISTERED);
    }
}

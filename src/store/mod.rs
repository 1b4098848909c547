//! Durable state behind one `Store` trait: the chain-state cache the follower keeps, the
//! follower's position, and the transaction submitter's operations and nonce.
//!
//! `redb` (embedded, default) and Redis (`redis_store.rs`, for many replicas) implement it,
//! and pass the same conformance tests (`tests/api/store.rs`); both read through `reads.rs`.
//! Every write is one `Batch`, applied atomically and durably: a block's cache updates, its
//! confirmations and the new follower tip land together or not at all.
//!
//! Work that runs again and again reads what is open, not all history: the open operations and
//! notices are index tables kept by every write of them (`schema::rows_of`), audit pages are
//! read by number, an access's trail by key prefix.
//!
//! It must not: know about HTTP or the node; read a table that grows with every grant from
//! periodic work.

mod applier;
mod journal;
mod reads;
mod redb_store;
mod redis_primary;
mod redis_store;
mod redis_writer;
mod schema;
mod segments;
mod writer;

use serde::{Deserialize, Serialize};

pub use crate::domain::chain::{Consent, ConsentKey, Preferences, ProviderState};
use crate::domain::{AccessId, DataType, PatientId, ProviderEntry, Role};
use crate::stacks::Address;
pub use journal::Journal;
pub use redb_store::{Checkpoints, RedbOptions, RedbStore, DEFAULT_CACHE_MIB};
pub use redis_primary::{must_reconnect, Primary, RedisTarget};
pub use redis_store::{lease_key, Acknowledgement, RedisStore, NONCES, RATES};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store: corrupt record {0}: {1}")]
    Corrupt(String, String),
    /// The batch's `Guard` did not hold: nothing was written.
    #[error("store: {0}")]
    Guarded(Guarded),
    /// The write was refused before it was sent, why said: nothing was written (Redis has
    /// fewer replicas than each write waits for: `redis_writer::Writer::replicas_short`).
    #[error("store: {0}")]
    Unwritten(String),
}

/// Which condition of a batch's `Guard` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// The writer no longer holds the lease its fencing token is from.
    Fenced,
    /// The operation is not as the writer read it (another writer changed it meanwhile).
    Changed,
    /// A `Claim`'s request nonce was used before (a replay).
    Replayed,
    /// A `Claim`'s clinician has no grant left this minute.
    RateLimited,
    /// The batch's verdict is for an access that has one: a verdict is written once. A shared
    /// store (Redis) checks it with the write; one process on the embedded store gives one
    /// verdict at a time (`review::Review`) and checks before.
    Reviewed,
}

impl std::fmt::Display for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guarded::Fenced => "the writer's lease was lost: nothing written",
            Guarded::Changed => "what the write was guarded on (an operation, a paging row, the follow-up's place, the tip or a replica's row) changed since it was read: nothing written",
            Guarded::Replayed => "the request's nonce was used before: nothing written",
            Guarded::RateLimited => "the clinician has no grant left this minute: nothing written",
            Guarded::Reviewed => "the access has a verdict already: nothing written",
        })
    }
}

/// Conditions a write holds to, checked with it atomically by a store that several processes
/// share (Redis). The embedded store belongs to one process, where one submitter writes under
/// `ChainState::apply_lock` after checking the same conditions: it does not check them again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The lease the writer holds (`coordination`): the write fails with `Guarded::Fenced`
    /// unless the lease is still this holder's, with this token. A batch with audit events
    /// may carry a guard (not with claims, nor a paging row): it is then linked on the audit
    /// head as any other, its guard checked in the same step.
    pub fence: Option<Fence>,
    /// The operations as the writer read them: the write fails with `Guarded::Changed` unless
    /// the store holds exactly these (the submitter's change of one; the follower's changes
    /// with its block; either one's entry of an operation that failed, with it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submissions: Vec<Submission>,
    /// Operations the write makes, by id, which must not be there yet (`Guarded::Changed`
    /// else): a second write of the same new operation (an import sent again to another
    /// replica, a write whose answer was lost read as not made) must not put back as pending
    /// one the submitter signed meanwhile, which it would sign again. With `submissions`, not
    /// with a paging row; a batch with audit events may carry it (a summary's import with its
    /// entry: on Redis the linked write checks it, as a fence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// A paging row as the writer read it (`Store::paging_row`; `None`: absent): the write
    /// fails with `Guarded::Changed` unless the store holds exactly this, so that of two
    /// replicas changing one incident, shift or roster at once, the one that read it before
    /// the other's write reads it again. Not with `submissions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<(String, Option<serde_json::Value>)>,
    /// The grants' follow-up's place in the log as it read it (`Batch::followed`; `Some(None)`:
    /// none yet): the write fails with `Guarded::Changed` unless the store holds exactly this,
    /// so that what it made from the log after that place is made once, even when a write of
    /// it reported failed lands late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Option<u64>>,
    /// The chain tip as a cache fill read it before it asked the node (`Some(None)`: none
    /// yet): the write fails with `Guarded::Changed` unless the store's tip is still exactly
    /// this, so that a fill never lands after a block another replica applied while it read
    /// (that block may have changed the entry). A catch-up's mark (`Tip::written`) is put
    /// under the same guard, over the tip it read. Not with `followed`; with audit events (a
    /// block's write with an operation it failed), checked by Redis's linked write too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tip: Option<Option<Tip>>,
    /// A replica's row as the writer read it: its id and its bytes (`ReplicaRow::bytes`;
    /// `None`: absent). The write fails with `Guarded::Changed` unless the store holds exactly
    /// these bytes, so that a process's end is logged once, and not when its row was renewed
    /// meanwhile (`audit::replicas`); a row written by another version, with fields this one
    /// does not know, is compared whole. Not with `followed` nor `tip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<(String, Option<Vec<u8>>)>,
}

/// A lease as its holder took it: its name, the holder (`coordination::replica_id`) and the
/// fencing token it was given. Both the holder and the token are checked: a token alone could
/// be given twice if the server lost the lease's last write (a failover to a replica that had
/// not received it), the holder tells the two apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub token: u64,
}

/// A break-glass request's claim on what replicas share, taken by a shared store (Redis)
/// atomically with the grant's write: its nonce unused (then used for `keep_secs`), and one of
/// the clinician's grants this minute. A batch with a claim that does not hold fails with
/// `Guarded::Replayed` or `Guarded::RateLimited` and writes nothing; the other batches of its
/// group are written. One process on the embedded store checks both in memory before the
/// write (`coordination::Local`) and gives its batches no claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The request's nonce (`signer:nonce`), used for `keep_secs` from the write, counted on
    /// the server's clock (`TIME`): how long the replica that made the claim, on its own clock,
    /// may still take the request as fresh, with a clock skew to spare. An absolute time from
    /// the replica's clock, compared with the server's, let a replica whose clock ran more than
    /// a skew behind the server's grant a replay the server counted as past its time.
    pub nonce: String,
    pub keep_secs: u64,
    /// The clinician whose rate it counts against (GCRA, as `governor` runs it for one
    /// process): one grant every `emission_ms`, at most `burst_ms` ahead.
    pub clinician: String,
    pub emission_ms: u64,
    pub burst_ms: u64,
}

/// The last block the follower applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    pub height: u64,
    pub index_block_hash: [u8; 32],
    /// A number of this write's own (random): set by every write of the tip, a block applied
    /// (`Tip::applied`) or a catch-up's mark (`ChainState::refresh_all`), so that the tip as
    /// stored differs from any a cache fill read before it. Such a fill, read at an older
    /// state of the chain, then cannot land (its guard fails): not after a block, not beside
    /// the entries a catch-up re-reads, and not after another replica applied the same block
    /// again, late, over a catch-up's mark (the tip it writes is its own, not the one the fill
    /// read). Stored under its first name, `refreshing`, so that a tip stored before reads
    /// back as the same bytes.
    #[serde(
        default,
        rename = "refreshing",
        skip_serializing_if = "Option::is_none"
    )]
    pub written: Option<u64>,
    /// Whether this is a catch-up's mark (`ChainState::mark_tip`): the store's entries are
    /// being read again, to land with the node's tip. A cache fill meanwhile keeps nothing
    /// (`ChainState::fill`). Taken off by the catch-up's write, whatever it writes
    /// (`Follower::attempt`), or when it fails (`ChainState::unmark`); else (a crash) by the
    /// next block's tip.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catching_up: bool,
}

impl Tip {
    /// A tip without a write's number (a store written before, or a test's).
    pub fn new(height: u64, index_block_hash: [u8; 32]) -> Tip {
        Tip {
            height,
            index_block_hash,
            written: None,
            catching_up: false,
        }
    }

    /// A block's tip as the follower writes it: with a number of its own.
    pub fn applied(height: u64, index_block_hash: [u8; 32]) -> Tip {
        Tip {
            written: Some(crate::chain::state::mark()),
            ..Tip::new(height, index_block_hash)
        }
    }

    /// This tip's block as a catch-up marks it (`ChainState::mark_tip`): a number of the
    /// mark's own, `catching_up`.
    pub fn marked(self) -> Tip {
        Tip {
            written: Some(crate::chain::state::mark()),
            catching_up: true,
            ..self
        }
    }

    /// This tip's block with a catch-up's mark taken off: a number of its own.
    pub fn unmarked(self) -> Tip {
        Tip {
            written: Some(crate::chain::state::mark()),
            catching_up: false,
            ..self
        }
    }
}

/// A logical chain write and where it stands. Its id names the operation (one transaction
/// per id, ever), e.g. `anchor:<head>` or `record:<access id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub id: String,
    pub contract_name: String,
    pub function: String,
    /// Arguments, consensus-serialized hex.
    pub args: Vec<String>,
    pub state: SubmissionState,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SubmissionState {
    /// Accepted, no transaction signed yet.
    Pending,
    /// Signed (and durably kept) before it was broadcast; broadcast again as the same bytes.
    Sent {
        txid: String,
        nonce: u64,
        raw: String,
        sent_at_height: u64,
        broadcasts: u32,
    },
    /// Mined with success (or the chain already had it: a duplicate access id), as read
    /// back from the node. The signed transaction is kept (`nonce`, `raw`) so that a reorg
    /// that abandons its block reopens it as the same bytes, never a second transaction.
    Confirmed {
        txid: Option<String>,
        height: u64,
        result: String,
        #[serde(default)]
        nonce: Option<u64>,
        #[serde(default)]
        raw: Option<String>,
    },
    /// Mined with an error response that no retry can change. The signed transaction is kept
    /// (`nonce`, `raw`; none for one whose transaction is not known) so that a reorg that
    /// abandons its block reopens it as the same bytes: its nonce unused on the new branch,
    /// every later transaction of the service would wait behind it.
    Failed {
        txid: String,
        height: u64,
        result: String,
        #[serde(default)]
        nonce: Option<u64>,
        #[serde(default)]
        raw: Option<String>,
    },
}

impl Submission {
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            SubmissionState::Pending | SubmissionState::Sent { .. }
        )
    }
}

/// A granted access as the grants' follow-up reads it (`Store::granted`): the record, and
/// whether its notice and its chain record's operation are made already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub access: AccessRecord,
    pub noticed: bool,
    pub recorded: bool,
}

/// A granted break-glass access, as the service recorded it before answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub id: AccessId,
    pub provider: Address,
    pub role: Role,
    pub patient: PatientId,
    pub data_types: Vec<DataType>,
    /// The clinician's words, sealed (`seal.rs`, named `reason:<access id>`), hex: for
    /// reviewers and the patient's notice; never logged, never on chain (only its hash goes
    /// there), never readable on disk.
    #[serde(default)]
    pub reason_sealed: String,
    pub reason_hash: String,
    pub device: Option<String>,
    pub nonce: u64,
    pub issued_at: u64,
    pub granted_at: u64,
    pub expires_at: u64,
    pub window_minutes: u32,
    pub window_blocks: u64,
    pub rules: Vec<String>,
    /// The signed request, kept as proof: the SIP-018 message hash and the signature.
    pub message_hash: String,
    pub signature: String,
    /// Why the clinician counted as on call (the paging source, service, incident), if on-call
    /// was checked: for reviewers.
    #[serde(default)]
    pub on_call: Option<crate::domain::OnCall>,
    /// Granted while the service's view of the chain was stale, because a policy permitted
    /// it then (degraded mode): the token and the chain record say so too.
    #[serde(default)]
    pub degraded: bool,
    /// How many blocks the view of the chain may have been behind at the grant.
    #[serde(default)]
    pub chain_lag_blocks: u64,
    /// Whether the patient id was registered in patient-consent at the grant (`None`: granted
    /// before this was recorded).
    #[serde(default)]
    pub patient_registered: Option<bool>,
}

impl AccessRecord {
    /// The grant's audit event: who, for whom, what, until when, and the record's digest.
    pub fn granted(&self) -> crate::audit::Event {
        crate::audit::Event::Grant {
            access: self.id,
            clinician: self.provider,
            role: self.role,
            patient: self.patient,
            data_types: self.data_types.clone(),
            expires_at: self.expires_at,
            degraded: self.degraded,
            record: Some(self.digest()),
        }
    }

    /// `v1:` and the SHA-256 (hex) of what was granted: every field as granted but the sealed
    /// reason (which a key rotation seals again; its hash is in), in a form fixed here (the
    /// on-call basis field by field, not as `OnCall` serializes). The grant's audit entry
    /// carries it (`audit::Event::Grant::record`), so that a record altered in the store since
    /// is told: the reviewer's view flags it, `audit verify` names it. A field added to the
    /// record (or to `OnCall`) later is not in it unless added under a new form (`v2:`), with
    /// this one still read for the grants before.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        #[derive(Serialize)]
        struct OnCallV1<'a> {
            source: &'a str,
            service: &'a Option<String>,
            since: Option<u64>,
            until: Option<u64>,
            incident: &'a Option<String>,
            acknowledged: bool,
        }
        #[derive(Serialize)]
        struct Granted<'a> {
            id: &'a AccessId,
            provider: &'a Address,
            role: &'a Role,
            patient: &'a PatientId,
            data_types: &'a [DataType],
            reason_hash: &'a str,
            device: &'a Option<String>,
            nonce: u64,
            issued_at: u64,
            granted_at: u64,
            expires_at: u64,
            window_minutes: u32,
            window_blocks: u64,
            rules: &'a [String],
            message_hash: &'a str,
            signature: &'a str,
            on_call: Option<OnCallV1<'a>>,
            degraded: bool,
            chain_lag_blocks: u64,
            patient_registered: Option<bool>,
        }
        let granted = Granted {
            id: &self.id,
            provider: &self.provider,
            role: &self.role,
            patient: &self.patient,
            data_types: &self.data_types,
            reason_hash: &self.reason_hash,
            device: &self.device,
            nonce: self.nonce,
            issued_at: self.issued_at,
            granted_at: self.granted_at,
            expires_at: self.expires_at,
            window_minutes: self.window_minutes,
            window_blocks: self.window_blocks,
            rules: &self.rules,
            message_hash: &self.message_hash,
            signature: &self.signature,
            on_call: self.on_call.as_ref().map(|o| OnCallV1 {
                source: &o.source,
                service: &o.service,
                since: o.since,
                until: o.until,
                incident: &o.incident,
                acknowledged: o.acknowledged,
            }),
            degraded: self.degraded,
            chain_lag_blocks: self.chain_lag_blocks,
            patient_registered: self.patient_registered,
        };
        // (serializing these types cannot fail: no maps with non-string keys)
        let bytes = serde_json::to_vec(&granted).unwrap_or_default();
        format!("v1:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }
}

/// The patient's notice of one access, from the grant to its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub access_id: AccessId,
    pub patient: PatientId,
    /// When it should go out (unix seconds): the window's close, or the grant itself for the
    /// data types notified at once.
    pub due_at: u64,
    /// No attempt before this (unix seconds): `due_at`, then the retry backoff.
    pub next_at: u64,
    pub attempts: u32,
    pub first_attempt_at: Option<u64>,
    /// The last failure (an SMTP reply or an I/O error: never an address or clinical data).
    pub last_error: Option<String>,
    /// `<access id@domain>` (`<access id.<when opened again>@domain>` for a notice opened again
    /// after nobody could be told: `reopened`), fixed when the message is rendered.
    pub message_id: Option<String>,
    /// The rendered message (envelope and RFC 5322 bytes), sealed, hex; written before the
    /// first send so that every retry sends these same bytes.
    pub message: Option<String>,
    /// With replicas: when an attempt started whose outcome is not recorded yet (written
    /// before the message goes to the SMTP server). Another replica sends it again only after
    /// a grace period, by which a sender still alive has recorded the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_since: Option<u64>,
    /// Which of the message's recipients (their places in its envelope, never their
    /// addresses) have it, and which refused it for good: each is sent to alone, so that one
    /// refusing it (a delegate's mailbox gone) does not keep it from the others, and a retry
    /// goes to those still waiting only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<u8>,
    /// Which recipients the directory no longer names (a delegate removed since the message
    /// was made): not sent to again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<u8>,
    /// When it was opened again after nobody could be told (`NoticeState::NoContact`): the
    /// directory reaches the patient since (a contact imported, or a period of one imported
    /// before begun; unix seconds; `Notifier::reopen_reachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopened: Option<u64>,
    pub state: NoticeState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NoticeState {
    Pending,
    Sent {
        at: u64,
    },
    /// Given up: refused for good (5xx, a bad address) or still failing after the retry
    /// period. Listed for operators and shown to reviewers.
    Dead {
        at: u64,
        reason: String,
    },
    /// The directory has no way to reach the patient: nobody was told.
    NoContact {
        at: u64,
    },
}

impl Notice {
    pub fn new(access_id: AccessId, patient: PatientId, due_at: u64) -> Notice {
        Notice {
            access_id,
            patient,
            due_at,
            next_at: due_at,
            attempts: 0,
            first_attempt_at: None,
            last_error: None,
            message_id: None,
            message: None,
            sending_since: None,
            delivered: Vec::new(),
            refused: Vec::new(),
            withdrawn: Vec::new(),
            reopened: None,
            state: NoticeState::Pending,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == NoticeState::Pending
    }

    /// Whether the recipient at `place` is still to be sent to: it has not had the message,
    /// nor refused it for good, nor been withdrawn.
    pub fn waits_on(&self, place: u8) -> bool {
        !self.delivered.contains(&place)
            && !self.refused.contains(&place)
            && !self.withdrawn.contains(&place)
    }
}

/// A reviewer's verdict on an access. Its way to the chain is the operation
/// `review:<access id>` (the reviewer's signed verdict, sent by the submitter); a verdict given
/// after the one before it failed on chain is the access's next `attempt`, with its own row and
/// operation (`Verdict::key`, `Verdict::operation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub access_id: AccessId,
    pub reviewer: Address,
    pub verdict: crate::domain::VerdictKind,
    /// The reviewer's note, sealed with the salt of its hash (`seal::names::salted_note`; one
    /// recorded before salts alone, `seal::names::note`), hex: for reviewers only; on chain
    /// only as its hash.
    pub note_sealed: String,
    /// SHA-256 of the salt and the note's UTF-8 bytes (of the note alone before salts), hex:
    /// what `review-emergency-access` carries.
    pub note_hash: String,
    /// The reviewer's SIP-018 signature over the verdict (65 bytes RSV, hex).
    pub signature: String,
    /// When it was given (Unix s).
    pub at: u64,
    /// Whether the verdict revoked the access's token.
    pub revoked: bool,
    /// Which verdict on its access this is: 0 the first, then one more for each given after
    /// the one before failed on chain.
    #[serde(default)]
    pub attempt: u32,
}

impl Verdict {
    /// Its row's key: the access id, then `:<attempt>` after the first. A shared store writes a
    /// row once (`Guarded::Reviewed`), so two replicas' verdicts on one attempt cannot both land.
    pub fn key(&self) -> String {
        match self.attempt {
            0 => self.access_id.to_string(),
            n => format!("{}:{n}", self.access_id),
        }
    }

    /// Its operation's id: `review:<access id>`, then `:<attempt>` after the first.
    pub fn operation(&self) -> String {
        format!("review:{}", self.key())
    }
}

/// Chain-state cache entries to drop (`Batch::uncached`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uncached {
    pub providers: Vec<Address>,
    /// Patients' emergency preferences.
    pub preferences: Vec<PatientId>,
    pub consents: Vec<ConsentKey>,
    pub responders: Vec<Address>,
    pub reviewers: Vec<Address>,
    pub summary_hashes: Vec<PatientId>,
}

impl Uncached {
    /// Every chain-state cache entry `batch` sets or drops.
    pub fn named_by(batch: &Batch) -> Uncached {
        let mut u = batch.uncached.clone();
        u.providers.extend(batch.providers.iter().map(|(k, _)| *k));
        u.preferences
            .extend(batch.preferences.iter().map(|(k, _)| *k));
        u.consents
            .extend(batch.consents.iter().map(|(k, _)| k.clone()));
        u.responders
            .extend(batch.responders.iter().map(|(k, _)| *k));
        u.reviewers.extend(batch.reviewers.iter().map(|(k, _)| *k));
        u.summary_hashes
            .extend(batch.summary_hashes.iter().map(|(k, _)| *k));
        u
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
            && self.preferences.is_empty()
            && self.consents.is_empty()
            && self.responders.is_empty()
            && self.reviewers.is_empty()
            && self.summary_hashes.is_empty()
    }
}

/// A process of the service as the store knows it (`audit::replicas`): when it started and
/// when it last said it runs (unix ms, by its own clock), and its build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSeen {
    pub started_ms: u64,
    pub seen_ms: u64,
    pub version: String,
}

impl ReplicaSeen {
    /// The row's bytes as a store writes them (what a write guarded on this process's own
    /// row compares: `Guard::replica`).
    pub fn stored(&self) -> Result<Vec<u8>, StoreError> {
        schema::enc(self)
    }
}

/// A process's row as read (`Store::replicas`): its replica id, what this version reads of it,
/// and its bytes as the store holds them (what a write guarded on it compares: `Guard::replica`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub seen: ReplicaSeen,
    pub bytes: Vec<u8>,
}

/// One atomic, durable write.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub tip: Option<Tip>,
    pub providers: Vec<(Address, Option<ProviderState>)>,
    pub preferences: Vec<(PatientId, Preferences)>,
    pub consents: Vec<(ConsentKey, Consent)>,
    pub responders: Vec<(Address, bool)>,
    /// Whether each principal holds access-control's reviewer role.
    #[serde(default)]
    pub reviewers: Vec<(Address, bool)>,
    pub submissions: Vec<Submission>,
    pub nonce: Option<u64>,
    /// How far the grants' follow-up has read the audit log (`access::follow_up`): the seq of
    /// the last entry whose grant has its chain operation and notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<u64>,
    pub accesses: Vec<AccessRecord>,
    /// Request nonces used, `signer:nonce` with when they may be forgotten (unix seconds).
    pub replay: Vec<(String, u64)>,
    /// Request nonces no longer kept (their time passed: `coordination::Local::recall`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay_forgotten: Vec<String>,
    /// Revoked tokens, by `jti`, with their expiry (unix seconds).
    pub revoked: Vec<(String, u64)>,
    /// Patient contacts, sealed (`seal.rs`); `None` removes one.
    pub contacts: Vec<(PatientId, Option<Vec<u8>>)>,
    pub notices: Vec<Notice>,
    /// The provider directory, by principal; `None` removes an entry.
    pub directory: Vec<(Address, Option<ProviderEntry>)>,
    /// On-call state of the paging integrations, by key (`paging` owns the keys and values);
    /// `None` removes one.
    #[serde(default)]
    pub paging: Vec<(String, Option<serde_json::Value>)>,
    /// Events for the audit log, appended in this order after every entry written before
    /// (the store numbers and links them: `audit`).
    #[serde(default)]
    pub audit: Vec<crate::audit::Record>,
    /// Reviewers' verdicts.
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
    /// Verdicts already stored, written again with their notes sealed with the current data
    /// key (`patients rekey`): not new verdicts, so neither checked as one (shared stores
    /// refuse a second verdict of an access) nor logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resealed_verdicts: Vec<Verdict>,
    /// Patients' emergency summaries, sealed (`vault`); `None` removes one.
    #[serde(default)]
    pub summaries: Vec<(PatientId, Option<Vec<u8>>)>,
    /// The summaries before them, kept while the chain records the new ones' hashes
    /// (`vault::import`); `None` removes one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_summaries: Vec<(PatientId, Option<Vec<u8>>)>,
    /// Each summary's digests, written with it (`vault::import`): which summary is stored,
    /// for what no replica's clock can tell (`submitter::superseded`).
    #[serde(default)]
    pub summary_digests: Vec<(PatientId, Option<SummaryDigest>)>,
    /// The summaries' hashes as the chain has them (`get-summary-hash`; `None`: no hash).
    #[serde(default)]
    pub summary_hashes: Vec<(PatientId, Option<SummaryHash>)>,
    /// Chain-state cache entries dropped (written before this batch's own entries): a block
    /// drops those it names but did not read back, not being cached when it looked, in case
    /// another replica's fill cached one since (`chain::state::reread`).
    #[serde(default, skip_serializing_if = "Uncached::is_empty")]
    pub uncached: Uncached,
    /// The processes of the service that run, by replica id (`audit::replicas`); `None`
    /// takes one out (its stop, or its end logged by another).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<(String, Option<ReplicaSeen>)>,
    /// What must hold for this batch to be written (checked by shared stores: `Guard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// Requests' claims on nonces and rates, taken with the write by shared stores (`Claim`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<Claim>,
    /// For a batch that carries every chain-state cache entry the store listed, re-read
    /// (`chain::state::refresh_all`: a catch-up, a reorg): the stored tip as the re-read
    /// marked it before it read (`Tip::written`). A replica's copy of the cache in memory
    /// (Redis) is dropped when it lands, so that none outlives a row another replica took out
    /// of the store meanwhile; the follower writes its entries only while no other tip was
    /// stored since the mark, or one not above its own (`follower::attempt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reread_all: Option<Tip>,
}

/// What a stored summary is: the SHA-256 of its plain bytes (what goes on chain) and of its
/// sealed bytes as stored, which tell whether the digest is still the stored summary's (a
/// version of the service from before the digests, during a rolling upgrade say, writes a
/// summary without one, and the one beside it is then another summary's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDigest {
    /// hex
    pub plain: String,
    /// hex
    pub sealed: String,
}

impl SummaryDigest {
    pub fn of(plain: &[u8], sealed: &[u8]) -> SummaryDigest {
        SummaryDigest {
            plain: sha256_hex(plain),
            sealed: sha256_hex(sealed),
        }
    }

    /// Whether this is the digest of the summary whose sealed bytes are `sealed`.
    pub fn describes(&self, sealed: &[u8]) -> bool {
        self.sealed == sha256_hex(sealed)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A summary's hash as recorded on chain by a data custodian.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryHash {
    /// sha256 of the summary's bytes, hex.
    pub hash: String,
    pub version: u64,
    pub block: u64,
}

impl Batch {
    /// A write of `event` to the audit log alone, as happening now.
    pub fn logging(event: crate::audit::Event) -> Batch {
        Batch::logging_all([event])
    }

    /// A write of `events` to the audit log alone, in their order, as happening now.
    pub fn logging_all(events: impl IntoIterator<Item = crate::audit::Event>) -> Batch {
        Batch {
            audit: events.into_iter().map(crate::audit::Record::now).collect(),
            ..Batch::default()
        }
    }

    /// Appends `later`, as if it were applied after this batch.
    pub fn merge(&mut self, later: Batch) {
        // every field named: a new one cannot be left out
        let Batch {
            tip,
            providers,
            preferences,
            consents,
            responders,
            reviewers,
            submissions,
            nonce,
            followed,
            accesses,
            replay,
            replay_forgotten,
            revoked,
            contacts,
            notices,
            directory,
            paging,
            audit,
            verdicts,
            resealed_verdicts,
            summaries,
            previous_summaries,
            summary_digests,
            summary_hashes,
            uncached,
            replicas,
            guard: _,
            claims,
            reread_all,
        } = later;
        // (its copies dropped when the merged batch lands, before any of its rows are kept)
        if reread_all.is_some() {
            self.reread_all = reread_all;
        }
        if tip.is_some() {
            self.tip = tip;
        }
        if nonce.is_some() {
            self.nonce = nonce;
        }
        if followed.is_some() {
            self.followed = followed;
        }
        self.providers.extend(providers);
        self.preferences.extend(preferences);
        self.consents.extend(consents);
        self.responders.extend(responders);
        self.reviewers.extend(reviewers);
        self.submissions.extend(submissions);
        self.accesses.extend(accesses);
        self.replay.extend(replay);
        self.replay_forgotten.extend(replay_forgotten);
        self.revoked.extend(revoked);
        self.contacts.extend(contacts);
        self.notices.extend(notices);
        self.directory.extend(directory);
        self.paging.extend(paging);
        self.audit.extend(audit);
        self.verdicts.extend(verdicts);
        self.resealed_verdicts.extend(resealed_verdicts);
        self.summaries.extend(summaries);
        self.previous_summaries.extend(previous_summaries);
        self.summary_digests.extend(summary_digests);
        self.summary_hashes.extend(summary_hashes);
        let Uncached {
            providers,
            preferences,
            consents,
            responders,
            reviewers,
            summary_hashes,
        } = uncached;
        self.uncached.providers.extend(providers);
        self.uncached.preferences.extend(preferences);
        self.uncached.consents.extend(consents);
        self.uncached.responders.extend(responders);
        self.uncached.reviewers.extend(reviewers);
        self.uncached.summary_hashes.extend(summary_hashes);
        self.replicas.extend(replicas);
        self.claims.extend(claims);
        // only unguarded batches are merged (the embedded store does not check guards)
        self.guard = None;
    }

    pub fn is_empty(&self) -> bool {
        self.tip.is_none()
            && self.providers.is_empty()
            && self.preferences.is_empty()
            && self.consents.is_empty()
            && self.responders.is_empty()
            && self.reviewers.is_empty()
            && self.submissions.is_empty()
            && self.nonce.is_none()
            && self.followed.is_none()
            && self.accesses.is_empty()
            && self.replay.is_empty()
            && self.replay_forgotten.is_empty()
            && self.revoked.is_empty()
            && self.contacts.is_empty()
            && self.notices.is_empty()
            && self.directory.is_empty()
            && self.paging.is_empty()
            && self.audit.is_empty()
            && self.verdicts.is_empty()
            && self.resealed_verdicts.is_empty()
            && self.summaries.is_empty()
            && self.previous_summaries.is_empty()
            && self.summary_digests.is_empty()
            && self.summary_hashes.is_empty()
            && self.claims.is_empty()
            && self.uncached.is_empty()
            && self.replicas.is_empty()
    }
}

/// Where a store answers `apply_then`.
pub type Done = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

/// Applies `batch` and waits for it to be durable without holding a runtime thread: the
/// store's writer answers the task directly.
pub async fn apply_async(
    store: &std::sync::Arc<dyn Store>,
    batch: Batch,
) -> Result<(), StoreError> {
    apply_started(store, batch).await
}

/// Hands `batch` to the store now and returns what resolves once it is durable (or failed),
/// so that the caller can work while it is written.
pub fn apply_started(
    store: &std::sync::Arc<dyn Store>,
    batch: Batch,
) -> impl std::future::Future<Output = Result<(), StoreError>> + use<> {
    let (done, answer) = tokio::sync::oneshot::channel();
    store.apply_then(batch, done);
    async move {
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's writer stopped".into()))?
    }
}

/// How a store's group commits go, for `/metrics`: each group's durable write as its writer
/// sees it (the journal's synced append, or the round trip of Redis's synced write), and how
/// many batches each group took (a grant waits for one group's write; a group of one at a
/// steady load means the writer keeps up, groups near `GROUP_COMMIT_MAX` that it does not).
#[derive(Clone, Debug)]
pub struct GroupMetrics {
    /// Who writes the groups.
    pub writer: GroupWriter,
    pub writes: prometheus_client::metrics::histogram::Histogram,
    pub batches: prometheus_client::metrics::histogram::Histogram,
    /// How long each batch waited for the writer to take it into a group (behind the group
    /// in flight, at a steady load; a writer that does not keep up shows here first).
    pub waits: prometheus_client::metrics::histogram::Histogram,
}

/// Who writes a store's groups, which names its write histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupWriter {
    /// The embedded store's journal: its synced append.
    Journal,
    /// The shared store's writer: its synced write's round trip to Redis.
    Redis,
}

impl GroupWriter {
    /// The write histogram's name and help on `/metrics`.
    pub fn series(self) -> (&'static str, &'static str) {
        match self {
            GroupWriter::Journal => (
                "store_journal_write_duration_seconds",
                "The store journal's durable writes (one per group of batches), as the journal sees them",
            ),
            GroupWriter::Redis => (
                "store_redis_write_duration_seconds",
                "The shared store's synced writes to Redis (one per group of batches, the round trip, any retry and its WAIT for Redis's replicas if configured), as its writer sees them",
            ),
        }
    }
}

impl GroupMetrics {
    fn new(writer: GroupWriter) -> GroupMetrics {
        GroupMetrics {
            writer,
            writes: crate::latency::latency_histogram(),
            batches: prometheus_client::metrics::histogram::Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0,
            ]),
            waits: crate::latency::latency_histogram(),
        }
    }
}

pub trait Store: Send + Sync + 'static {
    /// Whether other processes (replicas) may write it too: a tip stored in it may be another
    /// replica's block, from a node ahead of this one's.
    fn shared(&self) -> bool {
        false
    }

    /// Its group commits' histograms (`GroupMetrics`), where it commits in groups.
    fn group_metrics(&self) -> Option<GroupMetrics> {
        None
    }
    /// Applies `batch` atomically and durably; blocks until it is.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Starts applying `batch` and answers on `done` once it is durable (or failed); never
    /// blocks, so async callers can await the answer.
    fn apply_then(&self, batch: Batch, done: Done);
    fn tip(&self) -> Result<Option<Tip>, StoreError>;
    fn provider(&self, principal: &Address) -> Result<Option<ProviderState>, StoreError>;
    fn providers(&self) -> Result<Vec<Address>, StoreError>;
    fn preferences(&self, patient: &PatientId) -> Result<Option<Preferences>, StoreError>;
    fn patients(&self) -> Result<Vec<PatientId>, StoreError>;
    fn consent(&self, key: &ConsentKey) -> Result<Option<Consent>, StoreError>;
    fn consents(&self) -> Result<Vec<ConsentKey>, StoreError>;
    fn responder(&self, principal: &Address) -> Result<Option<bool>, StoreError>;
    fn responders(&self) -> Result<Vec<Address>, StoreError>;
    fn reviewer(&self, principal: &Address) -> Result<Option<bool>, StoreError>;
    fn reviewers(&self) -> Result<Vec<Address>, StoreError>;
    fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError>;
    /// The operations still open, oldest first: read through an index of them, so that the
    /// cost follows how many are open, not how many were ever made.
    fn open_submissions(&self) -> Result<Vec<Submission>, StoreError>;
    /// Every operation, open or not (for after a reorg: what was confirmed may be undone).
    fn submissions(&self) -> Result<Vec<Submission>, StoreError>;
    /// The operations whose ids start with `prefix`, oldest first (e.g. a patient's summary
    /// hashes: `summary:<patient>:`).
    fn submissions_prefixed(&self, prefix: &str) -> Result<Vec<Submission>, StoreError>;
    /// The next nonce the submitter will use, as it last wrote it.
    fn nonce(&self) -> Result<Option<u64>, StoreError>;
    /// The processes of the service the store knows to run (`Batch::replicas`); a row that
    /// does not read (of a later version, say) is passed over.
    fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError>;
    fn access(&self, id: &AccessId) -> Result<Option<AccessRecord>, StoreError>;
    fn access_ids(&self) -> Result<Vec<AccessId>, StoreError>;
    /// The accesses of `ids` that are stored, in that order, read together (a command per
    /// thousands on Redis, not a round trip each).
    fn accesses(&self, ids: &[AccessId]) -> Result<Vec<AccessRecord>, StoreError>;
    /// The operations named `ids`, each or `None`, in that order, read together.
    fn submissions_named(&self, ids: &[String]) -> Result<Vec<Option<Submission>>, StoreError>;
    /// When a used request nonce (`signer:nonce`) may be forgotten, if it was used.
    fn replay(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every used request nonce kept, with when it may be forgotten.
    fn replays(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// The expiry of a revoked token, if it was revoked.
    fn revoked(&self, jti: &str) -> Result<Option<u64>, StoreError>;
    /// A patient's contact, sealed.
    fn contact(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError>;
    fn contact_ids(&self) -> Result<Vec<PatientId>, StoreError>;
    fn notice(&self, access_id: &AccessId) -> Result<Option<Notice>, StoreError>;
    /// The accesses of `ids` the store holds, in their order, each with whether its notice and
    /// its chain record's operation (`record:<id>`) are held too: what the grants' follow-up
    /// reads (`access::follow_up`), a few reads for any number of them.
    fn granted(&self, ids: &[AccessId]) -> Result<Vec<Granted>, StoreError>;
    /// How far the grants' follow-up has read the audit log (`Batch::followed`).
    fn followed(&self) -> Result<Option<u64>, StoreError>;
    /// A provider's directory entry.
    fn directory_entry(&self, principal: &Address) -> Result<Option<ProviderEntry>, StoreError>;
    fn directory_entries(&self) -> Result<Vec<ProviderEntry>, StoreError>;
    /// Every on-call entry of the paging integrations; `None` for one that is not JSON (its
    /// reader decides what a row it cannot read means: `paging::read_stored`).
    fn paging(&self) -> Result<Vec<(String, Option<serde_json::Value>)>, StoreError>;
    /// One on-call entry of the paging integrations.
    fn paging_row(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;
    /// Every notice, oldest access first.
    fn notices(&self) -> Result<Vec<Notice>, StoreError>;
    /// The notices still open (`Notice::is_open`), read through an index of them.
    fn open_notices(&self) -> Result<Vec<Notice>, StoreError>;
    /// The notices closed with nobody to tell (`NoticeState::NoContact`), as their index names
    /// them: each access id with its patient's (the notices themselves are not read; an index
    /// built while one was opened again may still name it; one closed by a replica of a
    /// version before the index is missed until a process of this one builds it again).
    fn uncontacted(&self) -> Result<Vec<(AccessId, PatientId)>, StoreError>;
    /// How many notices are closed with nobody to tell, as their index names them (for
    /// operators).
    fn uncontacted_count(&self) -> Result<u64, StoreError>;
    /// Which of `patients` have a contact, in their order (read at once, not opened).
    fn have_contacts(&self, patients: &[PatientId]) -> Result<Vec<bool>, StoreError>;
    /// How many operations and notices are open, as their indexes name them (for operators: an
    /// index may still name a few closed while it was built, never miss an open one).
    fn open_counts(&self) -> Result<(u64, u64), StoreError>;
    /// The open notices but those of `known` (which are not read: a replica's rescan reads
    /// only the notices it does not hold yet), and only those next due by `until` (unix
    /// seconds), if given: read through the index by that time (`OPEN_NOTICES`), so that a
    /// rescan costs what is due, not what is open.
    fn open_notices_but(
        &self,
        known: &std::collections::HashSet<AccessId>,
        until: Option<u64>,
    ) -> Result<Vec<Notice>, StoreError>;
    /// The audit log's head (none before its first entry).
    fn audit_head(&self) -> Result<Option<crate::audit::Head>, StoreError>;
    /// Up to `limit` audit entries from seq `from` on, in order.
    fn audit_entries(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::Entry>, StoreError>;
    /// Whether the audit log holds a row for entry `seq`, past its head or not (`audit
    /// verify`: every other reader stops at the head).
    fn audit_row_exists(&self, seq: u64) -> Result<bool, StoreError>;
    /// The audit entries about one access, in order.
    fn audit_of(&self, access_id: &AccessId) -> Result<Vec<crate::audit::Entry>, StoreError>;
    /// Every row of the audit log's index by access, as the access and entry number it names
    /// (for `audit verify`, which checks it against the log); a row that names neither is
    /// `Corrupt`.
    fn audit_index(&self) -> Result<Vec<(AccessId, u64)>, StoreError>;
    /// A patient's emergency summary, sealed.
    fn summary(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError>;
    /// A patient's summary before the stored one, sealed, kept while the chain records the
    /// stored one's hash.
    fn previous_summary(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError>;
    /// The patients whose summaries are stored.
    fn summary_patients(&self) -> Result<Vec<PatientId>, StoreError>;
    /// The digests of the patient's summary as last written with them (`SummaryDigest`; a
    /// store written before they were kept has none until the summary is imported again).
    fn summary_digest(&self, patient: &PatientId) -> Result<Option<SummaryDigest>, StoreError>;
    /// The chain's hash of a patient's summary, as cached: `None` not cached, `Some(None)`
    /// the chain has none.
    fn summary_hash(&self, patient: &PatientId) -> Result<Option<Option<SummaryHash>>, StoreError>;
    /// Patients whose summary hash is cached.
    fn summary_hash_ids(&self) -> Result<Vec<PatientId>, StoreError>;
    /// The access's latest verdict (its highest attempt).
    fn verdict(&self, access_id: &AccessId) -> Result<Option<Verdict>, StoreError>;
    /// Every access's latest verdict.
    fn verdicts(&self) -> Result<Vec<Verdict>, StoreError>;
    /// Every verdict, each attempt of each access.
    fn every_verdict(&self) -> Result<Vec<Verdict>, StoreError>;
    /// Why the store stopped writing, if it has: a write failed, and every write fails until
    /// a restart recovers from disk.
    fn stopped(&self) -> Option<String>;
    /// A cheap read that proves the store answers (for /readyz).
    fn ping(&self) -> Result<(), StoreError>;
    /// Why a store that answers refuses writes now, if it does (a Redis server at its
    /// `maxmemory`, until it has room), for /readyz. A store that stopped writing fails its
    /// `ping` instead.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

//! The audit trail: every grant, refusal, token introspection and revocation, notice change,
//! reviewer sign-in and sign-out, verdict, vault read and refused read, reviewer's or admin
//! client's view of an access, import, chain operation that failed, start and stop of each of
//! the service's processes (with the keys it runs with), and rekey, as one hash-chained log that
//! no one can rewrite unseen. A later version may add kinds: this one's follow-up passes over an entry of a kind
//! it does not read unless that kind is `grant` (`access::follow_up`), so a grant is never
//! logged under any other kind.
//!
//! Callers put an `Event` (what happened, with when) in the `Batch` that does the work; the
//! store's single writer numbers it and links it to the entry before (`Entry`): entry `n`
//! names the hash of entry `n - 1`, and its own hash is
//!
//! ```text
//! sha256( prev (32 bytes) || seq (u64, big-endian) || at (Unix ms, u64, big-endian) || event )
//! ```
//!
//! where `event` is the event's JSON exactly as stored (kept as raw text, so that what is
//! hashed is what is read back, whatever later code would serialize). The first entry's `prev`
//! is 32 zero bytes. The head (the last seq and its hash) is anchored on chain with
//! `anchor-audit` (`anchor.rs`); `verify` walks the log and names the first entry that does not
//! match; `fhir.rs` exports entries as FHIR R4 AuditEvents (IHE BALP).
//!
//! No protected health information: patients appear as their pseudonymous id, data as data
//! type names, notes and reasons only as hashes.
//!
//! It must not: do I/O (the store writes, `anchor.rs` and `verify` read).

pub mod anchor;
pub mod fhir;
pub mod replicas;
pub mod verify;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::domain::{AccessId, DataType, PatientId, Role};
use crate::stacks::Address;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// A break-glass access granted (written with the access, before its token leaves).
    Grant {
        access: AccessId,
        clinician: Address,
        role: Role,
        patient: PatientId,
        data_types: Vec<DataType>,
        /// The window's end (Unix s).
        expires_at: u64,
        degraded: bool,
        /// What was granted, as `store::AccessRecord::digest` (none before 2026-12-06, night):
        /// the access record as stored is checked against it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<String>,
    },
    /// A break-glass request refused, with the signer its signature proved (if it did).
    Refusal {
        code: String,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signer: Option<Address>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<PatientId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data_types: Vec<DataType>,
    },
    /// A resource server asked whether a token is active (RFC 7662).
    Introspection {
        jti: String,
        client: String,
        active: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<PatientId>,
    },
    /// A token revoked: by a resource server or admin client (`by` names the client) or by a
    /// reviewer's verdict (`by` is the reviewer's principal).
    Revocation {
        jti: String,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<PatientId>,
    },
    /// The patient's notice of an access changed state (`sent`, `dead`, `no-contact`).
    Notice {
        access: AccessId,
        patient: PatientId,
        state: String,
    },
    /// A reviewer's sign-in: `outcome` is `ok` or the refusal's code.
    SignIn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reviewer: Option<Address>,
        outcome: String,
    },
    /// A read of a patient's summary with a break-glass token (`jti`): which resource types,
    /// how many resources.
    Read {
        jti: String,
        /// The clinician the token was issued to.
        clinician: Address,
        patient: PatientId,
        resource_types: Vec<String>,
        count: u64,
    },
    /// A refused read (the token, if it verified, and the patient, if the request named one).
    ReadRefusal {
        code: String,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clinician: Option<Address>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<PatientId>,
    },
    /// A reviewer's verdict on an access (the note's hash; the note stays sealed off chain).
    Verdict {
        access: AccessId,
        reviewer: Address,
        verdict: String,
        note_hash: String,
        patient: PatientId,
        revoked: bool,
    },
    /// An access's record read by someone other than its token's holder: a reviewer (`by`,
    /// their principal) or an admin client (`by`, its id). `reason`: whether the clinician's
    /// reason was shown (a reviewer also sees a verdict's note). Logged before the answer, once per reader (a
    /// reviewer's session, an admin client) and access a while on each replica
    /// (`review::views`): a page that refreshes itself is one view.
    View {
        access: AccessId,
        patient: PatientId,
        by: String,
        reason: bool,
    },
    /// A reviewer signed out; or the service ended their session, `ended` why: the refusal's
    /// code (the reviewer no longer authorized on chain: suspended, their role removed), or
    /// `idle` / `max-age` (its time ran out: unused for `review.idle_secs`, or open for
    /// `review.max_secs`; logged by whichever replica takes it out, within a minute while the
    /// store answers, once but after a failure to mark it, then again five minutes later), or
    /// `stopped` (one process on its own store kept it in its memory, and stopped).
    /// `opened` and `until`: when the session opened and when it ended (unix ms); for one whose
    /// time ran out, until when it was open, before the entry's own time (when it was logged).
    /// (Entries from before 2026-12-07 have neither.)
    SignOut {
        reviewer: Address,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opened: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
    /// Data an admin client (`by`) imported: a patient's emergency summary (`what`
    /// `summary`, its patient, `count` its resources), or the patient or provider directory
    /// (`patients`, `providers`: `count` the entries taken). `hash`: the SHA-256 of the
    /// imported bytes, hex, to tell which file it was. Logged once the import is stored.
    Import {
        by: String,
        what: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<PatientId>,
        count: u64,
        hash: String,
    },
    /// A process of the service started (each replica's, at each start), once ready to run and
    /// before it serves: which one (`replica`: host, process id and a random part), its build
    /// (`startup::VERSION`: `0.1.0+<commit>`),
    /// and the keys it runs with: the current data key's id (what it seals with), the current
    /// token signing key's id, and the responder's principal (what it records on chain as). A
    /// key rotation shows as the next starts' keys.
    Start {
        replica: String,
        version: String,
        data_key: String,
        token_key: String,
        responder: Address,
    },
    /// Everything sealed with the data key sealed anew with `data_key`, the current one
    /// (`breakglass patients rekey`, by `by`, `cli:<user>`): contacts, reasons, notices,
    /// summaries, notes and the token and service keys' files, `resealed` of them. Logged once
    /// the rekey is done (a rekey that could not log is said so, and run again).
    Rekey {
        by: String,
        data_key: String,
        resealed: u64,
    },
    /// A process of the service stopped, as asked; or, `lost`, it went without a stop of its
    /// own (it crashed, was killed, or its host was lost): `lost` is when it last said it ran
    /// (unix ms, its clock), and another process logged its end once it had read its row
    /// unchanged for `audit::replicas::LOST_AFTER_LEASES` leases (`data.lease_ms`; on one
    /// machine, the process started next on the same store, at its start). A process started
    /// again has another `replica`.
    Stop {
        replica: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lost: Option<u64>,
    },
    /// A process whose end another logged (a `stop` with `lost`) runs again: it was paused, or
    /// cut off from the store, past `audit::replicas::LOST_AFTER_LEASES` leases, and found its
    /// row taken out at its next renewal, which writes it back with this entry. `since`: when
    /// it last said it ran before (unix ms, its clock, no later than the entry: as a rule the
    /// `lost` of that stop). Its later stop is logged as any other.
    Resume { replica: String, since: u64 },
    /// One of the service's chain operations failed (its state `Failed`: the contract
    /// refused it when mined, it could not be signed, or whether it ran cannot be told), or,
    /// `cleared`, such a failure no longer holds (a reorg abandoned the block that refused it:
    /// sent again, or its effect reads back on chain). `operation` its id, `access` the access
    /// it records or reviews (a chain record, a verdict), `result` why, as the submitter or
    /// the follower found it. Logged in the write that changes its state, guarded on the
    /// state read (`chain::submitter::failure_entry`): once, whichever replica finds it.
    ChainFailure {
        operation: String,
        contract: String,
        function: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access: Option<AccessId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txid: Option<String>,
        height: u64,
        result: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cleared: bool,
    },
}

/// Who imported from the command line (`breakglass summaries import`, `patients import`): the
/// operating system's user, after `cli:` (no admin client's id holds a colon): `USER`, else
/// `LOGNAME` (a container's shell may set neither: then `uid <n>`).
pub fn command_line() -> String {
    let named = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty());
    #[cfg(target_os = "linux")]
    let user = named.unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    #[cfg(not(target_os = "linux"))]
    let user = named.unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

impl Event {
    /// An import by `by` of `count` entries of `what` (of `patient`) from `body`'s bytes.
    pub fn import(
        by: &str,
        what: &str,
        patient: Option<PatientId>,
        count: usize,
        body: &[u8],
    ) -> Event {
        use sha2::Digest;
        Event::Import {
            by: by.to_string(),
            what: what.to_string(),
            patient,
            count: count as u64,
            hash: hex::encode(Sha256::digest(body)),
        }
    }

    /// The access this event is about, if one.
    pub fn access(&self) -> Option<AccessId> {
        match self {
            Event::Grant { access, .. }
            | Event::Notice { access, .. }
            | Event::Verdict { access, .. }
            | Event::View { access, .. } => Some(*access),
            Event::ChainFailure { access, .. } => *access,
            Event::Start { .. }
            | Event::Stop { .. }
            | Event::Resume { .. }
            | Event::Rekey { .. } => None,
            // a token's id is its access's id
            Event::Introspection { jti, .. }
            | Event::Revocation { jti, .. }
            | Event::Read { jti, .. } => jti.parse().ok(),
            Event::ReadRefusal { jti, .. } => jti.as_ref().and_then(|j| j.parse().ok()),
            Event::Refusal { .. }
            | Event::SignIn { .. }
            | Event::SignOut { .. }
            | Event::Import { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Grant { .. } => "grant",
            Event::Refusal { .. } => "refusal",
            Event::Introspection { .. } => "introspection",
            Event::Revocation { .. } => "revocation",
            Event::Notice { .. } => "notice",
            Event::SignIn { .. } => "sign-in",
            Event::Verdict { .. } => "verdict",
            Event::Read { .. } => "read",
            Event::ReadRefusal { .. } => "read-refusal",
            Event::View { .. } => "view",
            Event::SignOut { .. } => "sign-out",
            Event::Import { .. } => "import",
            Event::ChainFailure { .. } => "chain-failure",
            Event::Start { .. } => "start",
            Event::Stop { .. } => "stop",
            Event::Resume { .. } => "resume",
            Event::Rekey { .. } => "rekey",
        }
    }
}

/// An event to append, with when it happened (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub at: u64,
    pub event: Event,
}

impl Record {
    pub fn now(event: Event) -> Record {
        Record {
            at: crate::clock::now_ms(),
            event,
        }
    }
}

/// The log's last entry: how many entries it holds and the last one's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Head {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// One entry of the log, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: u64,
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// The event's JSON, exactly as hashed.
    pub event: Box<RawValue>,
}

impl Entry {
    /// The entry after `head` for `record`.
    pub fn next(head: &Head, record: &Record) -> Result<Entry, serde_json::Error> {
        let event = serde_json::value::to_raw_value(&record.event)?;
        let seq = head.seq + 1;
        let hash = hash(&head.hash, seq, record.at, event.get());
        Ok(Entry {
            seq,
            at: record.at,
            prev: head.hash,
            hash,
            event,
        })
    }

    /// The hash this entry's contents give (equal to `hash` unless it was altered).
    pub fn computed_hash(&self) -> [u8; 32] {
        hash(&self.prev, self.seq, self.at, self.event.get())
    }

    /// The event, if this version reads it: an object (serde reads a tagged event from an
    /// array too, `["sign-in", …]`, which no version writes).
    pub fn parsed(&self) -> Result<Event, serde_json::Error> {
        let text = self.event.get();
        if !text.starts_with('{') {
            return Err(serde::de::Error::custom("an event is a JSON object"));
        }
        serde_json::from_str(text)
    }

    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

pub fn hash(prev: &[u8; 32], seq: u64, at: u64, event_json: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    h.update(event_json.as_bytes());
    h.finalize().into()
}

/// Why a stretch of the log does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("entry {seq}: its contents do not hash to the hash it carries (altered)")]
    Altered { seq: u64 },
    #[error("entry {seq}: it names {found} as the entry before, but entry {} hashes to {expected}", seq - 1)]
    Unlinked {
        seq: u64,
        expected: String,
        found: String,
    },
    #[error("entry {seq}: expected entry {expected} here (an entry is missing or out of place)")]
    Gap { seq: u64, expected: u64 },
    #[error("entry {seq}: unreadable: {why}")]
    Unreadable { seq: u64, why: String },
}

/// Checks that `entry` follows `head`: the next seq, linked to its hash, and hashing to what
/// it carries. Returns the new head.
pub fn follows(head: &Head, entry: &Entry) -> Result<Head, Broken> {
    if entry.seq != head.seq + 1 {
        return Err(Broken::Gap {
            seq: entry.seq,
            expected: head.seq + 1,
        });
    }
    if entry.prev != head.hash {
        return Err(Broken::Unlinked {
            seq: entry.seq,
            expected: hex::encode(head.hash),
            found: hex::encode(entry.prev),
        });
    }
    if entry.computed_hash() != entry.hash {
        return Err(Broken::Altered { seq: entry.seq });
    }
    // an event this version does not read but that names a kind is a later version's (a
    // new kind, or new fields of one): it holds together as any other, its hash checked
    if let Err(e) = entry.parsed() {
        if kind_of(entry).is_none() {
            return Err(Broken::Unreadable {
                seq: entry.seq,
                why: e.to_string(),
            });
        }
    }
    Ok(entry.head())
}

/// The kind `entry`'s event names: a JSON object with one string `kind` that is a kind's name
/// (lowercase letters, digits and hyphens, 64 at most, a FHIR `code`), whether this version
/// reads the event or not (a later version's). `None` for anything else: an array (serde reads
/// a struct from one), a duplicate `kind` (readers that keep the first and those that keep the
/// last would disagree), a kind no version names so.
pub fn kind_of(entry: &Entry) -> Option<String> {
    #[derive(Deserialize)]
    struct Kind {
        kind: String,
    }
    // (a raw value keeps no leading whitespace)
    let text = entry.event.get();
    if !text.starts_with('{') {
        return None;
    }
    let kind = serde_json::from_str::<Kind>(text).ok()?.kind;
    let named = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    named.then_some(kind)
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("not 32 bytes of hex"))
    }
}

/// The first of entries `from..=until` that `entries` (read in order, as a store gives them)
/// does not hold: entries are numbered without gaps, and one missing must not be skipped over
/// by a reader that goes on from the last it read (the export's cursor).
pub fn first_missing(from: u64, until: u64, entries: &[Entry]) -> Option<u64> {
    let mut held = entries.iter().map(|e| e.seq);
    (from..=until).find(|seq| held.next() != Some(*seq))
}

/// An entry 7 holding `event` (JSON as stored, any kind), for tests of readers.
#[cfg(test)]
pub(crate) fn test_entry(event: &str) -> Entry {
    serde_json::from_str(&format!(
        r#"{{"seq":7,"at":1,"prev":"{z}","hash":"{z}","event":{event}}}"#,
        z = "00".repeat(32)
    ))
    .unwrap_or_else(|e| panic!("{event}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in(n: u64) -> Record {
        Record {
            at: 1_700_000_000_000 + n,
            event: Event::SignIn {
                reviewer: None,
                outcome: format!("code-{n}"),
            },
        }
    }

    fn log(n: u64) -> Vec<Entry> {
        let mut head = Head::default();
        let mut out = Vec::new();
        for i in 0..n {
            let e = Entry::next(&head, &sign_in(i)).unwrap();
            head = e.head();
            out.push(e);
        }
        out
    }

    #[test]
    fn an_entry_missing_from_a_read_is_named_wherever_it_is() {
        let entries = log(6);
        assert_eq!(first_missing(1, 6, &entries), None);
        assert_eq!(first_missing(3, 6, &entries[2..]), None);
        assert_eq!(first_missing(1, 0, &[]), None, "an empty log");
        for gone in 0..6 {
            let mut read = log(6);
            read.remove(gone);
            assert_eq!(first_missing(1, 6, &read), Some(gone as u64 + 1));
        }
        assert_eq!(first_missing(1, 6, &[]), Some(1));
    }

    fn walk(entries: &[Entry]) -> Result<Head, Broken> {
        entries
            .iter()
            .try_fold(Head::default(), |h, e| follows(&h, e))
    }

    #[test]
    fn a_log_holds_together_and_each_change_is_named() {
        let entries = log(4);
        assert_eq!(walk(&entries).unwrap(), entries[3].head());

        // a stored entry's JSON round-trips to the same hash
        let text = serde_json::to_string(&entries[1]).unwrap();
        let back: Entry = serde_json::from_str(&text).unwrap();
        assert_eq!(back.computed_hash(), entries[1].hash);

        // one character of an event changed: that entry is named
        let altered = text.replace("code-1", "code-9");
        let mut bad = log(4);
        bad[1] = serde_json::from_str(&altered).unwrap();
        assert_eq!(walk(&bad), Err(Broken::Altered { seq: 2 }));

        // an entry removed: a gap at the next
        let mut gap = log(4);
        gap.remove(2);
        assert_eq!(
            walk(&gap),
            Err(Broken::Gap {
                seq: 4,
                expected: 3
            })
        );

        // an entry of a kind this version does not read (a later version's) holds together,
        // its hash checked as any other's; one that names no kind is unreadable
        let later_raw = |event: &str| {
            let mut head = Head::default();
            let mut out = Vec::new();
            for i in 0..3 {
                let mut e = Entry::next(&head, &sign_in(i)).unwrap();
                if i == 1 {
                    let raw = RawValue::from_string(event.to_string()).unwrap();
                    e.hash = hash(&head.hash, e.seq, e.at, raw.get());
                    e.event = raw;
                }
                head = e.head();
                out.push(e);
            }
            out
        };
        let later = |event: serde_json::Value| later_raw(&event.to_string());
        for kind in ["later", "later-2", &"a".repeat(64)] {
            let entries = later(serde_json::json!({"kind": kind, "access": "x"}));
            assert_eq!(walk(&entries).unwrap(), entries[2].head(), "{kind}");
        }
        let entries = later(serde_json::json!({"kind": "later", "access": "x"}));
        assert!(entries[1].parsed().is_err(), "not read by this version");
        let mut altered = later(serde_json::json!({"kind": "later"}));
        altered[1].event =
            serde_json::value::to_raw_value(&serde_json::json!({"kind": "latex"})).unwrap();
        assert_eq!(walk(&altered), Err(Broken::Altered { seq: 2 }));
        for unnamed in [
            r#"{"what":"later"}"#,
            r#"["later"]"#,
            r#"{"kind":2}"#,
            r#"{"kind":"Hand Over"}"#,
            r#"{"kind":""}"#,
            r#"{"kind":"later","kind":"grant"}"#,
            r#"["sign-in",null,"ok"]"#,
            &format!(r#"{{"kind":"{}"}}"#, "a".repeat(65)),
        ] {
            assert!(
                matches!(
                    walk(&later_raw(unnamed)),
                    Err(Broken::Unreadable { seq: 2, .. })
                ),
                "{unnamed}"
            );
        }

        // an entry rewritten with a fresh hash over new contents: the next no longer links
        let mut rewritten = log(4);
        let forged = Entry::next(&rewritten[0].head(), &sign_in(7)).unwrap();
        rewritten[1] = forged;
        assert!(matches!(
            walk(&rewritten),
            Err(Broken::Unlinked { seq: 3, .. })
        ));
    }
}

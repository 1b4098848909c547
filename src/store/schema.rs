//! The embedded store's schema: its redb tables, how a `Batch` becomes rows (the values the
//! tables hold, JSON-encoded once) and how rows travel in a journal frame.
//!
//! It must not: do I/O.

use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;

/// Tables, by name.
pub(super) type Table = &'static str;
pub(super) const META: Table = "meta";
pub(super) const PROVIDERS: Table = "providers";
pub(super) const PREFERENCES: Table = "preferences";
pub(super) const CONSENTS: Table = "consents";
pub(super) const RESPONDERS: Table = "responders";
pub(super) const SUBMISSIONS: Table = "submissions";
pub(super) const ACCESSES: Table = "accesses";
pub(super) const REPLAY: Table = "replay";
pub(super) const REVOKED: Table = "revoked";
/// Sealed values, stored as they are (not JSON).
pub(super) const CONTACTS: Table = "contacts";
pub(super) const NOTICES: Table = "notices";
pub(super) const DIRECTORY: Table = "provider_directory";
/// On-call state from the paging integrations (`paging`), JSON values it owns.
pub(super) const PAGING: Table = "paging";
/// The audit log (`audit`), keyed by seq as 20 digits so that key order is log order.
pub(super) const AUDIT: Table = "audit";
/// Which audit entries are about which access: `<access id>:<seq>` keys, empty values.
pub(super) const AUDIT_BY_ACCESS: Table = "audit_by_access";
/// Emergency summaries, sealed, stored as they are (not JSON).
pub(super) const SUMMARIES: Table = "summaries";
/// The chain's summary hashes, by patient id.
pub(super) const SUMMARY_HASHES: Table = "summary_hashes";
/// access-control's reviewers, by principal.
pub(super) const REVIEWERS: Table = "reviewers";
/// Reviewers' verdicts, by access id.
pub(super) const VERDICTS: Table = "verdicts";
/// Which operations are open (`Submission::is_open`), by id, empty values: kept with every
/// write of an operation (`rows_of`), so that the submitter reads the open ones, not every
/// operation ever made.
pub(super) const OPEN_SUBMISSIONS: Table = "open_submissions";
/// Which notices are open (`Notice::is_open`), by access id, each valued with when it is next
/// due (`Notice::next_at`, unix seconds as decimal text; a store written before held empty
/// values, read as 0: due): kept as `OPEN_SUBMISSIONS` is, for the notifier, whose rescan with
/// replicas reads only the notices due soon (`RowSource::scan_due`; Redis keeps this index as
/// a set scored by that time).
pub(super) const OPEN_NOTICES: Table = "open_notices";
/// Each stored summary's digests (`SummaryDigest`), by patient id (`Batch::summary_digests`).
pub(super) const SUMMARY_DIGESTS: Table = "summary_digests";
/// Each patient's summary before the one stored, while the chain records the stored one's
/// hash: the one the chain still has (`Batch::previous_summaries`), sealed as `SUMMARIES`.
pub(super) const PREVIOUS_SUMMARIES: Table = "previous_summaries";
/// Which notices were closed with nobody to tell (`NoticeState::NoContact`), by access id,
/// each valued with its patient's id: kept with every write of such a notice and of one
/// opened again from it (`Notice::reopened`), so that the notifier finds the notices a
/// contact imported since can reach without reading every notice ever made.
pub(super) const UNCONTACTED: Table = "uncontacted_notices";
/// New tables go last: a journal frame names a table by its index here.
pub(super) const TABLES: [Table; 24] = [
    META,
    PROVIDERS,
    PREFERENCES,
    CONSENTS,
    RESPONDERS,
    SUBMISSIONS,
    ACCESSES,
    REPLAY,
    REVOKED,
    CONTACTS,
    NOTICES,
    DIRECTORY,
    PAGING,
    AUDIT,
    VERDICTS,
    REVIEWERS,
    AUDIT_BY_ACCESS,
    SUMMARIES,
    SUMMARY_HASHES,
    OPEN_SUBMISSIONS,
    OPEN_NOTICES,
    SUMMARY_DIGESTS,
    PREVIOUS_SUMMARIES,
    UNCONTACTED,
];

pub(super) fn def(name: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The META key of the audit log's head (`audit::Head`).
pub(super) const AUDIT_HEAD: &str = "audit_head";

/// The META key of how far the grants' follow-up has read the log (`Batch::followed`).
pub(super) const FOLLOWED: &str = "followed";
/// The META key of the chain tip the follower applied last (`Batch::tip`).
pub(super) const TIP: &str = "tip";
/// What the META keys of the processes that run begin with (then the replica id:
/// `Batch::replicas`).
pub(super) const REPLICA_PREFIX: &str = "replica:";

/// The AUDIT key of entry `seq`.
pub(super) fn audit_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// The audit entries for `records`, linked on from `head` (which moves to the last), as rows
/// with the new head: the entries, then their index by access, then the head (each table's
/// rows together, so that a store writes each table's rows as one command). Only the store's
/// single writer calls this, so the log has one order.
pub(super) fn audit_rows(
    head: &mut crate::audit::Head,
    records: &[impl std::borrow::Borrow<crate::audit::Record>],
    out: &mut Rows,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut by_access = Vec::new();
    for record in records {
        let record = record.borrow();
        let entry = crate::audit::Entry::next(head, record).map_err(backend)?;
        *head = entry.head();
        if let Some(access) = record.event.access() {
            by_access.push((
                AUDIT_BY_ACCESS,
                format!("{access}:{}", audit_key(entry.seq)),
                Some(Vec::new()),
            ));
        }
        out.push((AUDIT, audit_key(entry.seq), Some(enc(&entry)?)));
    }
    out.append(&mut by_access);
    out.push((META, AUDIT_HEAD.into(), Some(enc(head)?)));
    Ok(())
}

/// The META key that says the embedded store's open indexes (`OPEN_SUBMISSIONS`,
/// `OPEN_NOTICES`) were built from the tables they index (`open_index_rows`): a store written
/// before they existed has open operations and notices that no write has indexed yet.
pub(super) const OPEN_INDEXED: &str = "open_indexed";

/// The META key that says the embedded store's index of notices with nobody to tell
/// (`UNCONTACTED`) was built with the open indexes (`open_index_rows`): a store written
/// before it has such notices that no write has indexed.
pub(super) const UNCONTACTED_INDEXED: &str = "uncontacted_indexed";

/// The rows that make the open indexes whole for a store's `submissions` and `notices` (as
/// its tables hold them): for a store written before the indexes; every write keeps them
/// after that.
pub(super) fn open_index_rows(
    submissions: &[(String, Vec<u8>)],
    notices: &[(String, Vec<u8>)],
) -> Result<Rows, StoreError> {
    // a row that does not decode (a later version's, a fault of the disk) is indexed as open
    // and due: the reads of the open rows then say it, each time, instead of it stopping the
    // store from opening or being forgotten
    let mut out = Rows::new();
    for (id, v) in submissions {
        if dec::<Submission>(id, v).map_or(true, |s| s.is_open()) {
            indexed(&mut out, OPEN_SUBMISSIONS, id.clone(), true);
        }
    }
    let mut uncontacted = Rows::new();
    for (id, v) in notices {
        match dec::<Notice>(id, v) {
            Ok(notice) if !notice.is_open() => {
                // (a build writes what is there: a notice's removal from the index is not a row)
                if let Some(row @ (_, _, Some(_))) = uncontacted_row(&notice) {
                    uncontacted.push(row);
                }
            }
            read => due(&mut out, id.clone(), Some(read.map_or(0, |n| n.next_at))),
        }
    }
    out.append(&mut uncontacted);
    Ok(out)
}

/// Where `open` is kept in `index`: a row while it is open, none after.
fn indexed(out: &mut Rows, index: Table, key: String, open: bool) {
    out.push((index, key, open.then(Vec::new)));
}

/// Where a notice is kept in `OPEN_NOTICES`: while it is open, a row valued with when it is
/// next due; none after.
fn due(out: &mut Rows, key: String, next_at: Option<u64>) {
    out.push((
        OPEN_NOTICES,
        key,
        next_at.map(|t| t.to_string().into_bytes()),
    ));
}

/// Where a notice is kept in `UNCONTACTED`: a row (its patient's id) while nobody can be told
/// (`NoticeState::NoContact`), none once it is opened again (`Notice::reopened`); nothing to
/// write for any other notice (none of them was ever there), so that the follow-up's and the
/// notifier's writes carry no more rows than before.
fn uncontacted_row(notice: &Notice) -> Option<Row> {
    let key = notice.access_id.to_string();
    if matches!(notice.state, crate::store::NoticeState::NoContact { .. }) {
        Some((
            UNCONTACTED,
            key,
            Some(notice.patient.to_string().into_bytes()),
        ))
    } else {
        notice
            .reopened
            .is_some()
            .then_some((UNCONTACTED, key, None))
    }
}

/// When an `OPEN_NOTICES` row says its notice is next due (an empty value, as a store written
/// before held: 0, due now).
pub(super) fn due_at(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The META key of the last journal frame applied to redb.
pub(super) const JOURNAL_SEQ: &str = "journal_seq";

/// A row to write: table, key, encoded value (`None` removes the key).
pub(super) type Row = (Table, String, Option<Vec<u8>>);
pub(super) type Rows = Vec<Row>;

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(backend)
}

pub(super) fn dec<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(key.to_string(), e.to_string()))
}

pub(super) fn rows<T: Serialize>(
    out: &mut Rows,
    table: Table,
    items: impl IntoIterator<Item = (String, T)>,
) -> Result<(), StoreError> {
    for (k, v) in items {
        out.push((table, k, Some(enc(&v)?)));
    }
    Ok(())
}

/// A batch as rows, encoded once: what the overlay holds and the applier writes.
pub(super) fn rows_of(batch: &Batch) -> Result<Rows, StoreError> {
    let mut out = Rows::new();
    if let Some(tip) = &batch.tip {
        out.push((META, TIP.into(), Some(enc(tip)?)));
    }
    if let Some(n) = batch.nonce {
        out.push((META, "nonce".into(), Some(enc(&n)?)));
    }
    if let Some(seq) = batch.followed {
        out.push((META, FOLLOWED.into(), Some(enc(&seq)?)));
    }
    for (id, seen) in &batch.replicas {
        let value = seen.as_ref().map(enc).transpose()?;
        out.push((META, format!("{REPLICA_PREFIX}{id}"), value));
    }
    // dropped first: an entry the same batch writes is kept
    let u = &batch.uncached;
    let dropped = (u.providers.iter().map(|w| (PROVIDERS, w.to_string())))
        .chain(u.preferences.iter().map(|p| (PREFERENCES, p.to_string())))
        .chain(u.consents.iter().map(|k| (CONSENTS, k.id())))
        .chain(u.responders.iter().map(|w| (RESPONDERS, w.to_string())))
        .chain(u.reviewers.iter().map(|w| (REVIEWERS, w.to_string())))
        .chain(
            u.summary_hashes
                .iter()
                .map(|p| (SUMMARY_HASHES, p.to_string())),
        );
    for (table, key) in dropped {
        out.push((table, key, None));
    }
    for (w, s) in &batch.providers {
        out.push((PROVIDERS, w.to_string(), s.as_ref().map(enc).transpose()?));
    }
    rows(
        &mut out,
        PREFERENCES,
        batch.preferences.iter().map(|(p, v)| (p.to_string(), v)),
    )?;
    rows(
        &mut out,
        CONSENTS,
        batch.consents.iter().map(|(k, c)| (k.id(), (k, c))),
    )?;
    rows(
        &mut out,
        RESPONDERS,
        batch.responders.iter().map(|(w, y)| (w.to_string(), y)),
    )?;
    rows(
        &mut out,
        REVIEWERS,
        batch.reviewers.iter().map(|(w, y)| (w.to_string(), y)),
    )?;
    rows(
        &mut out,
        SUBMISSIONS,
        batch.submissions.iter().map(|s| (s.id.clone(), s)),
    )?;
    for s in &batch.submissions {
        indexed(&mut out, OPEN_SUBMISSIONS, s.id.clone(), s.is_open());
    }
    rows(
        &mut out,
        ACCESSES,
        batch.accesses.iter().map(|a| (a.id.to_string(), a)),
    )?;
    rows(
        &mut out,
        REPLAY,
        batch.replay.iter().map(|(k, u)| (k.clone(), u)),
    )?;
    for key in &batch.replay_forgotten {
        out.push((REPLAY, key.clone(), None));
    }
    rows(
        &mut out,
        REVOKED,
        batch.revoked.iter().map(|(k, u)| (k.clone(), u)),
    )?;
    for (p, sealed) in &batch.contacts {
        out.push((CONTACTS, p.to_string(), sealed.clone()));
    }
    rows(
        &mut out,
        NOTICES,
        batch.notices.iter().map(|n| (n.access_id.to_string(), n)),
    )?;
    for n in &batch.notices {
        due(
            &mut out,
            n.access_id.to_string(),
            n.is_open().then_some(n.next_at),
        );
    }
    out.extend(batch.notices.iter().filter_map(uncontacted_row));
    for (p, e) in &batch.directory {
        out.push((DIRECTORY, p.to_string(), e.as_ref().map(enc).transpose()?));
    }
    for (k, v) in &batch.paging {
        out.push((PAGING, k.clone(), v.as_ref().map(enc).transpose()?));
    }
    for (p, sealed) in &batch.summaries {
        out.push((SUMMARIES, p.to_string(), sealed.clone()));
    }
    for (p, sealed) in &batch.previous_summaries {
        out.push((PREVIOUS_SUMMARIES, p.to_string(), sealed.clone()));
    }
    for (p, digest) in &batch.summary_digests {
        out.push((
            SUMMARY_DIGESTS,
            p.to_string(),
            digest.as_ref().map(enc).transpose()?,
        ));
    }
    rows(
        &mut out,
        SUMMARY_HASHES,
        batch.summary_hashes.iter().map(|(p, h)| (p.to_string(), h)),
    )?;
    rows(
        &mut out,
        VERDICTS,
        batch
            .verdicts
            .iter()
            .chain(&batch.resealed_verdicts)
            .map(|v| (v.key(), v)),
    )?;
    Ok(out)
}

/// The rows format of a journal frame (older frames hold the batch as JSON, `{...`).
pub(super) const ROWS_FORMAT: u8 = 1;
/// A removed row's value length.
pub(super) const REMOVED: u32 = u32::MAX;

/// Rows as a journal frame's payload: the format byte, then per row the table's index,
/// the key and the value (each length-prefixed, `u32` LE; `REMOVED` for a removal). The
/// values are the bytes the tables hold, so a batch is encoded once.
pub(super) fn encode_rows(rows: &Rows) -> Vec<u8> {
    let size: usize = rows
        .iter()
        .map(|(_, k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(ROWS_FORMAT);
    for (table, key, value) in rows {
        let index = TABLES.iter().position(|t| t == table).unwrap_or(0) as u8;
        out.push(index);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&REMOVED.to_le_bytes()),
        }
    }
    out
}

/// A journal frame's payload as rows: the rows format, or a batch as JSON (frames written
/// before it).
pub(super) fn decode_rows(payload: &[u8]) -> Result<Rows, String> {
    match payload.first() {
        Some(b'{') => {
            let batch: Batch = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            rows_of(&batch).map_err(|e| e.to_string())
        }
        Some(&ROWS_FORMAT) => {
            fn take<'p>(rest: &mut &'p [u8], n: usize) -> Result<&'p [u8], String> {
                if rest.len() < n {
                    return Err("a row runs past the frame".into());
                }
                let (head, tail) = rest.split_at(n);
                *rest = tail;
                Ok(head)
            }
            fn len(rest: &mut &[u8]) -> Result<u32, String> {
                let b = take(rest, 4)?;
                Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            let mut rows = Rows::new();
            let mut rest = &payload[1..];
            while !rest.is_empty() {
                let table = *TABLES
                    .get(take(&mut rest, 1)?[0] as usize)
                    .ok_or_else(|| "a row names no table".to_string())?;
                let key_len = len(&mut rest)? as usize;
                let key = std::str::from_utf8(take(&mut rest, key_len)?)
                    .map_err(|e| e.to_string())?
                    .to_string();
                let value = match len(&mut rest)? {
                    REMOVED => None,
                    n => Some(take(&mut rest, n as usize)?.to_vec()),
                };
                rows.push((table, key, value));
            }
            Ok(rows)
        }
        _ => Err("an unknown frame format".into()),
    }
}

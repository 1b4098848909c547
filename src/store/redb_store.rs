//! The embedded store: one redb file and its write-ahead journal (`journal.rs`).
//!
//! Writes go through one writer thread that takes every batch waiting at that moment as one
//! group (group commit): the group is appended to the journal with one `fdatasync`, then
//! applied to redb in one transaction that does not sync (`Durability::None`), and only then
//! does each caller get its answer: durable first, then visible to readers, then acknowledged.
//! When writes pause, every 10 s under steady traffic, and at shutdown, a checkpoint commits
//! redb durably and empties the journal. On open, journal frames newer than redb's durable
//! state are applied again.
//!
//! A failed journal write or redb commit poisons the store: every later write fails (and
//! `ping` with it, so readiness drops) until the service restarts and recovers from disk.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::journal::Journal;
use super::*;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PROVIDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("providers");
const PREFERENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("preferences");
const CONSENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("consents");
const RESPONDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("responders");
const SUBMISSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("submissions");
const ACCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("accesses");
const REPLAY: TableDefinition<&str, &[u8]> = TableDefinition::new("replay");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
/// Sealed values, stored as they are (not JSON).
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const NOTICES: TableDefinition<&str, &[u8]> = TableDefinition::new("notices");
const DIRECTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("provider_directory");

/// The META key of the last journal frame applied to redb.
const JOURNAL_SEQ: &str = "journal_seq";

type Job = (Batch, Reply);

/// Where the writer answers: a thread waiting in `apply`, or a task awaiting `apply_then`.
enum Reply {
    Blocking(mpsc::SyncSender<Result<(), StoreError>>),
    Async(Done),
}

impl Reply {
    fn send(self, result: Result<(), StoreError>) {
        // a caller that went away no longer needs the answer
        let _ = match self {
            Reply::Blocking(tx) => tx.send(result).map_err(|_| ()),
            Reply::Async(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

/// How many waiting batches one group takes at most.
const GROUP_COMMIT_MAX: usize = 256;
/// A journal this large is checkpointed at once.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// When redb commits durably and the journal is emptied. A checkpoint writes and syncs every
/// page changed since the last one and holds the writer meanwhile (tens of milliseconds
/// under load), so under steady traffic it is rare; when writes pause it happens at once.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// At the latest this long after the last checkpoint, with writes pending.
    pub every: Duration,
    /// As soon as no write has come for this long.
    pub when_idle_for: Duration,
}

impl Default for Checkpoints {
    fn default() -> Checkpoints {
        Checkpoints {
            every: Duration::from_secs(10),
            when_idle_for: Duration::from_millis(200),
        }
    }
}

pub struct RedbStore {
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Why the writer stopped accepting writes, once it has.
    poisoned: Arc<Mutex<Option<String>>>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // closing the channel ends the writer (after a last checkpoint); joining it releases
        // the file
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    journal: Journal,
    seq: u64,
    /// Whether redb holds commits that are not durable yet.
    dirty: bool,
    checkpointed: Instant,
    checkpoints: Checkpoints,
    poisoned: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poison(&self, e: &StoreError) {
        tracing::error!(error = %e, "the store cannot write: refusing every write until restart");
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn write(&mut self, batch: Batch) -> Result<(), StoreError> {
        if let Some(why) = self.poisoned() {
            return Err(StoreError::Backend(format!(
                "the store stopped writing: {why}"
            )));
        }
        let seq = self.seq + 1;
        let result = self
            .journal
            .append(seq, &batch)
            .and_then(|()| write_batch(&self.db, batch, seq, Durability::None));
        match &result {
            Ok(()) => {
                self.seq = seq;
                self.dirty = true;
            }
            Err(e) => self.poison(e),
        }
        result
    }

    fn checkpoint_due(&self) -> bool {
        self.dirty
            && (self.checkpointed.elapsed() >= self.checkpoints.every
                || self.journal.bytes() >= CHECKPOINT_BYTES)
    }

    /// Makes redb durable up to the last frame, then empties the journal.
    fn checkpoint(&mut self) {
        if !self.dirty || self.poisoned().is_some() {
            return;
        }
        let result = checkpoint(&self.db).and_then(|()| self.journal.clear());
        self.checkpointed = Instant::now();
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => self.poison(&e),
        }
    }
}

/// A durable commit: redb makes every earlier non-durable commit durable with it.
fn checkpoint(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate).map_err(backend)?;
    tx.commit().map_err(backend)
}

fn writer_loop(mut w: Writer, jobs: mpsc::Receiver<Job>) {
    loop {
        let first = match jobs.recv_timeout(w.checkpoints.when_idle_for) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                w.checkpoint();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut waiting = vec![first];
        while waiting.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        let mut merged = Batch::default();
        let mut replies = Vec::with_capacity(waiting.len());
        for (batch, reply) in waiting {
            merged.merge(batch);
            replies.push(reply);
        }
        let result = w.write(merged);
        for reply in replies {
            reply.send(result.clone());
        }
        if w.checkpoint_due() {
            w.checkpoint();
        }
    }
    w.checkpoint();
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(backend)
}

fn dec<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(key.to_string(), e.to_string()))
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, with its journal beside it (`<path>.journal`),
    /// and applies what the journal holds beyond redb's durable state.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, Checkpoints::default())
    }

    /// `open`, with its own checkpoint schedule (a journal of 64 MiB is checkpointed at once
    /// whatever the schedule).
    pub fn open_with(path: &Path, checkpoints: Checkpoints) -> Result<RedbStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::create(path).map_err(backend)?;
        // create every table so that reads never meet a missing one
        let tx = db.begin_write().map_err(backend)?;
        for t in [
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
        ] {
            tx.open_table(t).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;

        let mut journal_path = path.as_os_str().to_owned();
        journal_path.push(".journal");
        let (mut journal, frames) = Journal::open(Path::new(&journal_path))?;
        let durable: u64 = {
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(META).map_err(backend)?;
            match t.get(JOURNAL_SEQ).map_err(backend)? {
                Some(v) => dec(JOURNAL_SEQ, v.value())?,
                None => 0,
            }
        };
        let mut seq = durable;
        let mut replayed = 0usize;
        for (frame_seq, batch) in frames {
            if frame_seq > seq {
                write_batch(&db, batch, frame_seq, Durability::None)?;
                seq = frame_seq;
                replayed += 1;
            }
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                "applied journal frames the last run had not checkpointed"
            );
        }
        checkpoint(&db)?;
        journal.clear()?;

        let db = Arc::new(db);
        let poisoned = Arc::new(Mutex::new(None));
        let w = Writer {
            db: db.clone(),
            journal,
            seq,
            dirty: false,
            checkpointed: Instant::now(),
            checkpoints,
            poisoned: poisoned.clone(),
        };
        let (writer, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(w, jobs))
            .map_err(backend)?;
        Ok(RedbStore {
            db,
            writer: Some(writer),
            thread: Some(thread),
            poisoned,
        })
    }

    fn enqueue(&self, batch: Batch, reply: Reply) -> Result<(), StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send((batch, reply))
            .map_err(|_| backend("the store's writer stopped"))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(table).map_err(backend)?;
        match t.get(key).map_err(backend)? {
            Some(v) => Ok(Some(dec(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn keys(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(table).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, _) = row.map_err(backend)?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.enqueue(batch, Reply::Blocking(reply))?;
        done.recv()
            .map_err(|_| backend("the store's writer stopped"))?
    }

    fn apply_then(&self, batch: Batch, done: Done) {
        // if the writer is gone, `done` is dropped with the job and the awaiting task sees
        // its channel closed
        let _ = self.enqueue(batch, Reply::Async(done));
    }

    fn tip(&self) -> Result<Option<Tip>, StoreError> {
        self.get(META, "tip")
    }

    fn provider(&self, principal: &str) -> Result<Option<ProviderState>, StoreError> {
        self.get(PROVIDERS, principal)
    }

    fn providers(&self) -> Result<Vec<String>, StoreError> {
        self.keys(PROVIDERS)
    }

    fn preferences(&self, patient: &PatientId) -> Result<Option<Preferences>, StoreError> {
        self.get(PREFERENCES, &patient.to_string())
    }

    fn patients(&self) -> Result<Vec<PatientId>, StoreError> {
        self.keys(PREFERENCES)?
            .into_iter()
            .map(|k| k.parse().map_err(|e: String| StoreError::Corrupt(k, e)))
            .collect()
    }

    fn consent(&self, key: &ConsentKey) -> Result<Option<Consent>, StoreError> {
        Ok(self
            .get::<(ConsentKey, Consent)>(CONSENTS, &key.id())?
            .map(|(_, c)| c))
    }

    fn consents(&self) -> Result<Vec<ConsentKey>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(CONSENTS).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            let (key, _): (ConsentKey, Consent) = dec(k.value(), v.value())?;
            out.push(key);
        }
        Ok(out)
    }

    fn responder(&self, principal: &str) -> Result<Option<bool>, StoreError> {
        self.get(RESPONDERS, principal)
    }

    fn responders(&self) -> Result<Vec<String>, StoreError> {
        self.keys(RESPONDERS)
    }

    fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        self.get(SUBMISSIONS, id)
    }

    fn open_submissions(&self) -> Result<Vec<Submission>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(SUBMISSIONS).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            let s: Submission = dec(k.value(), v.value())?;
            if s.is_open() {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.created_at_ms);
        Ok(out)
    }

    fn nonce(&self) -> Result<Option<u64>, StoreError> {
        self.get(META, "nonce")
    }

    fn access(&self, id: &str) -> Result<Option<AccessRecord>, StoreError> {
        self.get(ACCESSES, id)
    }

    fn access_ids(&self) -> Result<Vec<String>, StoreError> {
        self.keys(ACCESSES)
    }

    fn replay(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.get(REPLAY, key)
    }

    fn revoked(&self, jti: &str) -> Result<Option<u64>, StoreError> {
        self.get(REVOKED, jti)
    }

    fn contact(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(CONTACTS).map_err(backend)?;
        Ok(t.get(patient.to_string().as_str())
            .map_err(backend)?
            .map(|v| v.value().to_vec()))
    }

    fn contact_ids(&self) -> Result<Vec<PatientId>, StoreError> {
        self.keys(CONTACTS)?
            .into_iter()
            .map(|k| k.parse().map_err(|e: String| StoreError::Corrupt(k, e)))
            .collect()
    }

    fn notice(&self, access_id: &str) -> Result<Option<Notice>, StoreError> {
        self.get(NOTICES, access_id)
    }

    fn directory_entry(
        &self,
        principal: &str,
    ) -> Result<Option<crate::directory::ProviderEntry>, StoreError> {
        self.get(DIRECTORY, principal)
    }

    fn directory_entries(&self) -> Result<Vec<crate::directory::ProviderEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(DIRECTORY).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            out.push(dec(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn notices(&self) -> Result<Vec<Notice>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(NOTICES).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            out.push(dec(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn ping(&self) -> Result<(), StoreError> {
        if let Some(why) = self
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(StoreError::Backend(format!(
                "the store stopped writing: {why}"
            )));
        }
        self.tip().map(|_| ())
    }
}

/// Keys and encoded values (`None` removes the key).
type Rows = Vec<(String, Option<Vec<u8>>)>;

/// Puts (or, for `None`, removes) rows of one table; a table with no rows is not opened, so
/// a commit only touches the tables its batch names.
fn put(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    rows: Rows,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(table).map_err(backend)?;
    for (key, value) in rows {
        match value {
            Some(v) => t.insert(key.as_str(), v.as_slice()).map(|_| ()),
            None => t.remove(key.as_str()).map(|_| ()),
        }
        .map_err(backend)?;
    }
    Ok(())
}

fn rows<T: Serialize>(items: impl IntoIterator<Item = (String, T)>) -> Result<Rows, StoreError> {
    items
        .into_iter()
        .map(|(k, v)| Ok((k, Some(enc(&v)?))))
        .collect()
}

/// Applies one batch (or group) as one redb transaction, recording its journal `seq`.
fn write_batch(
    db: &Database,
    batch: Batch,
    seq: u64,
    durability: Durability,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(durability).map_err(backend)?;
    let mut meta = vec![(JOURNAL_SEQ.to_string(), Some(enc(&seq)?))];
    if let Some(tip) = &batch.tip {
        meta.push(("tip".to_string(), Some(enc(tip)?)));
    }
    if let Some(n) = batch.nonce {
        meta.push(("nonce".to_string(), Some(enc(&n)?)));
    }
    put(&tx, META, meta)?;
    let providers = batch
        .providers
        .iter()
        .map(|(w, s)| Ok((w.clone(), s.as_ref().map(enc).transpose()?)))
        .collect::<Result<_, StoreError>>()?;
    put(&tx, PROVIDERS, providers)?;
    put(
        &tx,
        PREFERENCES,
        rows(batch.preferences.iter().map(|(p, v)| (p.to_string(), v)))?,
    )?;
    put(
        &tx,
        CONSENTS,
        rows(batch.consents.iter().map(|(k, c)| (k.id(), (k, c))))?,
    )?;
    put(
        &tx,
        RESPONDERS,
        rows(batch.responders.iter().map(|(w, y)| (w.clone(), y)))?,
    )?;
    put(
        &tx,
        SUBMISSIONS,
        rows(batch.submissions.iter().map(|s| (s.id.clone(), s)))?,
    )?;
    put(
        &tx,
        ACCESSES,
        rows(batch.accesses.iter().map(|a| (a.id.clone(), a)))?,
    )?;
    put(
        &tx,
        REPLAY,
        rows(batch.replay.iter().map(|(k, u)| (k.clone(), u)))?,
    )?;
    put(
        &tx,
        REVOKED,
        rows(batch.revoked.iter().map(|(k, u)| (k.clone(), u)))?,
    )?;
    put(
        &tx,
        CONTACTS,
        batch
            .contacts
            .into_iter()
            .map(|(p, sealed)| (p.to_string(), sealed))
            .collect(),
    )?;
    put(
        &tx,
        DIRECTORY,
        batch
            .directory
            .iter()
            .map(|(p, e)| Ok((p.clone(), e.as_ref().map(enc).transpose()?)))
            .collect::<Result<_, StoreError>>()?,
    )?;
    put(
        &tx,
        NOTICES,
        rows(batch.notices.iter().map(|n| (n.access_id.clone(), n)))?,
    )?;
    tx.commit().map_err(backend)
}

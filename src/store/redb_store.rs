//! The embedded store: one redb file, crash-safe (copy-on-write with fsync on commit).
//!
//! Writes go through one writer thread that commits every batch waiting at that moment in a
//! single transaction (group commit): each caller still returns only once its batch is
//! durable, and concurrent grants share an fsync instead of queueing for one each.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

type Job = (Batch, mpsc::SyncSender<Result<(), StoreError>>);

/// How many waiting batches one commit takes at most.
const GROUP_COMMIT_MAX: usize = 256;

pub struct RedbStore {
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // closing the channel ends the writer; joining it releases the file
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(db: Arc<Database>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
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
        let result = write_batch(&db, merged);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
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
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
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
        ] {
            tx.open_table(t).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (writer, jobs) = mpsc::channel();
        let for_writer = db.clone();
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(for_writer, jobs))
            .map_err(backend)?;
        Ok(RedbStore {
            db,
            writer: Some(writer),
            thread: Some(thread),
        })
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
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?;
        writer
            .send((batch, reply))
            .map_err(|_| backend("the store's writer stopped"))?;
        done.recv()
            .map_err(|_| backend("the store's writer stopped"))?
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

    fn ping(&self) -> Result<(), StoreError> {
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

fn write_batch(db: &Database, batch: Batch) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(backend)?;
    let mut meta = Vec::new();
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
    tx.commit().map_err(backend)
}

//! The embedded store: one redb file and its write-ahead journal, opened, recovered and read.
//!
//! Writes go through two threads: the journal thread (`writer.rs`: group commit, one synced
//! write per group, then the overlay, then the answers) and the applier (`applier.rs`: into
//! redb without syncing, checkpoints). Reads consult the overlay first, then redb. On open,
//! journal frames newer than redb's durable state are applied again. A failed journal write or
//! redb commit poisons the store: every later write fails (and `ping` with it, so readiness
//! drops) until the service restarts and recovers from disk.
//!
//! `group_metrics` has the journal's own write time, one observation per group, and each
//! group's batches, for `/metrics`: beside a grant's wait for its write (`access`), they show
//! how much of that wait is the disk.
//!
//! It must not: sync on the applier's path, or answer a write before it is in the journal.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::applier::*;
use super::journal::Journal;
use super::reads::RowSource;
use super::schema::*;
use super::segments::*;
use super::writer::*;
use super::*;

/// When redb commits durably (and the journal segments it covers go). A checkpoint writes
/// and syncs every page changed since the last one; it runs beside the journal, so answers
/// do not wait for it, but it shares the disk.
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
            every: Duration::from_secs(2),
            when_idle_for: Duration::from_millis(200),
        }
    }
}

pub struct RedbStore {
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    overlay: Overlay,
    poisoned: Poison,
    metrics: GroupMetrics,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // closing the channel ends the journal thread, which ends the applier (after a last
        // checkpoint); joining them releases the file
        self.writer.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct RedbOptions {
    pub checkpoints: Checkpoints,
    /// redb's page cache: pages read, and pages written and not yet checkpointed (up to half
    /// of it). The store writes mostly new records that are seldom read, so a small
    /// cache costs little; redb's own default (1 GiB) let a busy service's memory grow by
    /// ~45 MB a second at peak until it was full.
    pub cache_bytes: usize,
}

/// `data.cache_mib`'s default.
pub const DEFAULT_CACHE_MIB: usize = 128;

impl Default for RedbOptions {
    fn default() -> RedbOptions {
        RedbOptions {
            checkpoints: Checkpoints::default(),
            cache_bytes: DEFAULT_CACHE_MIB << 20,
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, with its journal beside it
    /// (`<path>.journal.*`), and applies what the journal holds beyond redb's durable state.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, RedbOptions::default())
    }

    /// `open`, with its own checkpoint schedule and cache.
    pub fn open_with(path: &Path, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let RedbOptions {
            checkpoints,
            cache_bytes,
        } = options;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(backend)?;
        // create every table so that reads never meet a missing one
        let tx = db.begin_write().map_err(backend)?;
        for t in TABLES {
            tx.open_table(def(t)).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;

        let durable: u64 = {
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(def(META)).map_err(backend)?;
            match t.get(JOURNAL_SEQ).map_err(backend)? {
                Some(v) => dec(JOURNAL_SEQ, v.value())?,
                None => 0,
            }
        };
        let mut seq = durable;
        let mut replayed = 0usize;
        let files = segments(path)?;
        for file in &files {
            let (_, frames) = Journal::open(file, first_seq(file))?;
            for (frame_seq, payload) in frames {
                // frames at or below what redb holds are already applied; a lower seq after
                // a higher one is a stale frame
                if frame_seq > seq {
                    let rows = decode_rows(&payload).map_err(|e| {
                        StoreError::Corrupt(format!("journal frame {frame_seq}"), e)
                    })?;
                    apply_rows(&db, rows.iter(), frame_seq, Durability::None)?;
                    seq = frame_seq;
                    replayed += 1;
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                "applied journal frames the last run had not checkpointed"
            );
        }
        checkpoint(&db)?;
        for file in files {
            std::fs::remove_file(&file).map_err(backend)?;
        }
        // a spare the last run was still zero-filling
        for spare in spare_paths(path) {
            match std::fs::remove_file(being_filled(&spare)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(backend(e)),
                _ => {}
            }
        }

        build_open_index(&db, seq)?;

        let audit_head = {
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(def(META)).map_err(backend)?;
            match t.get(AUDIT_HEAD).map_err(backend)? {
                Some(v) => dec(AUDIT_HEAD, v.value())?,
                None => crate::audit::Head::default(),
            }
        };
        let db = Arc::new(db);
        let poisoned: Poison = Arc::new(Mutex::new(None));
        let overlay: Overlay = Arc::new(Mutex::new(HashMap::new()));
        let checkpointed = Arc::new(AtomicU64::new(seq));
        let (to_applier, groups) = mpsc::channel();
        let segment_bytes = Arc::new(AtomicU64::new(0));
        let applier = Applier {
            db: db.clone(),
            store_path: path.to_path_buf(),
            segment_bytes: segment_bytes.clone(),
            zero_filled: false,
            overlay: overlay.clone(),
            applied: seq,
            dirty: false,
            checkpointed_at: Instant::now(),
            checkpoints,
            checkpointed: checkpointed.clone(),
            poisoned: poisoned.clone(),
        };
        let metrics = GroupMetrics::new(GroupWriter::Journal);
        let journal = JournalWriter {
            store_path: path.to_path_buf(),
            spares: spare_paths(path),
            current: None,
            closed: Vec::new(),
            seq,
            overlay: overlay.clone(),
            applier: to_applier,
            checkpointed,
            segment_bytes,
            poisoned: poisoned.clone(),
            announced: false,
            audit_head,
            writes: metrics.writes.clone(),
            batches: metrics.batches.clone(),
            waits: metrics.waits.clone(),
        };
        let (writer, jobs) = mpsc::channel();
        let threads = vec![
            std::thread::Builder::new()
                .name("redb-applier".into())
                .spawn(move || applier_loop(applier, groups))
                .map_err(backend)?,
            std::thread::Builder::new()
                .name("redb-journal".into())
                .spawn(move || journal_loop(journal, jobs))
                .map_err(backend)?,
        ];
        Ok(RedbStore {
            db,
            writer: Some(writer),
            // joined journal first: it ends the applier
            threads: threads.into_iter().rev().collect(),
            overlay,
            poisoned,
            metrics,
        })
    }

    /// Stops the store as a failed write would (fault injection, for tests of what the rest
    /// of the service does then): every later write fails until a restart.
    #[doc(hidden)]
    pub fn stop_writing(&self, why: &str) {
        poison(&self.poisoned, &backend(why));
    }

    fn enqueue(&self, batch: Batch, reply: Reply) -> Result<(), StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send((batch, reply, std::time::Instant::now()))
            .map_err(|_| backend("the store's writer stopped"))
    }
}

/// Makes the open indexes (and the index of notices with nobody to tell) whole, once, for a
/// store written before them (`open_index_rows`):
/// durably, before any write of this run.
fn build_open_index(db: &Database, seq: u64) -> Result<(), StoreError> {
    let tx = db.begin_read().map_err(backend)?;
    let all = |table: Table| -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = tx.open_table(def(table)).map_err(backend)?;
        t.iter()
            .map_err(backend)?
            .map(|row| {
                let (k, v) = row.map_err(backend)?;
                Ok((k.value().to_string(), v.value().to_vec()))
            })
            .collect()
    };
    let meta = tx.open_table(def(META)).map_err(backend)?;
    if meta.get(OPEN_INDEXED).map_err(backend)?.is_some()
        && meta.get(UNCONTACTED_INDEXED).map_err(backend)?.is_some()
    {
        return Ok(());
    }
    let mut rows = open_index_rows(&all(SUBMISSIONS)?, &all(NOTICES)?)?;
    drop((meta, tx));
    tracing::info!(open = rows.len(), "indexed the open operations and notices");
    rows.push((META, OPEN_INDEXED.into(), Some(enc(&true)?)));
    rows.push((META, UNCONTACTED_INDEXED.into(), Some(enc(&true)?)));
    apply_rows(db, rows.iter(), seq, Durability::Immediate)
}

impl RowSource for RedbStore {
    /// A value as stored: the overlay (acknowledged, not yet applied) first, then redb.
    fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some((_, v)) = self
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(table, key.to_string()))
        {
            return Ok(v.clone());
        }
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(def(table)).map_err(backend)?;
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    /// Every row of a table, in key order, the overlay's over redb's. The overlay is read
    /// first: a group the applier moves meanwhile is then in one or the other.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let pending: Vec<(String, Option<Vec<u8>>)> = self
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, k), (_, v))| (k.clone(), v.clone()))
            .collect();
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(def(table)).map_err(backend)?;
        let mut rows = BTreeMap::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            rows.insert(k.value().to_string(), v.value().to_vec());
        }
        for (k, v) in pending {
            match v {
                Some(v) => rows.insert(k, v),
                None => rows.remove(&k),
            };
        }
        Ok(rows.into_iter().collect())
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // the overlay first (as `scan`): a row the applier moves meanwhile is in one or the other
        let pending: BTreeMap<String, Option<Vec<u8>>> = self
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), (_, v))| (k.clone(), v.clone()))
            .collect();
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(def(table)).map_err(backend)?;
        let mut rows = BTreeMap::new();
        for row in t.range(prefix..).map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            rows.insert(k.value().to_string(), Some(v.value().to_vec()));
        }
        rows.extend(pending);
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// As `get_raw` for each key, in one read transaction.
    fn get_many(&self, table: Table, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let pending: Vec<Option<Option<Vec<u8>>>> = {
            let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter()
                .map(|k| overlay.get(&(table, k.clone())).map(|(_, v)| v.clone()))
                .collect()
        };
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(def(table)).map_err(backend)?;
        keys.iter()
            .zip(pending)
            .map(|(k, pending)| match pending {
                Some(v) => Ok(v),
                None => Ok(t
                    .get(k.as_str())
                    .map_err(backend)?
                    .map(|v| v.value().to_vec())),
            })
            .collect()
    }
}

impl Store for RedbStore {
    fn group_metrics(&self) -> Option<GroupMetrics> {
        Some(self.metrics.clone())
    }

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

    super::reads::typed_reads!();

    fn stopped(&self) -> Option<String> {
        poisoned(&self.poisoned)
    }

    fn ping(&self) -> Result<(), StoreError> {
        if let Some(why) = poisoned(&self.poisoned) {
            return Err(StoreError::Backend(format!(
                "the store stopped writing: {why}"
            )));
        }
        self.tip().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rows_survive_the_journal_format(
            rows in proptest::collection::vec(
                (0..TABLES.len(), ".{0,40}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))),
                0..20,
            )
        ) {
            let rows: Rows = rows.into_iter().map(|(t, k, v)| (TABLES[t], k, v)).collect();
            prop_assert_eq!(decode_rows(&encode_rows(&rows)).unwrap(), rows.clone());
            // a payload cut short is refused, never misread
            let bytes = encode_rows(&rows);
            if bytes.len() > 1 {
                let cut = decode_rows(&bytes[..bytes.len() - 1]);
                prop_assert!(cut.is_err());
            }
        }
    }

    #[test]
    fn frames_of_earlier_versions_still_decode() {
        let batch = Batch {
            nonce: Some(7),
            replay: vec![("ST1:1".into(), 99)],
            ..Batch::default()
        };
        let legacy = serde_json::to_vec(&batch).unwrap();
        assert_eq!(decode_rows(&legacy).unwrap(), rows_of(&batch).unwrap());
        assert!(decode_rows(&[9, 1, 2]).is_err());
    }
}

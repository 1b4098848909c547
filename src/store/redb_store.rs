//! The embedded store: one redb file and its write-ahead journal (`journal.rs`).
//!
//! Writes go through two threads. The journal thread takes every batch waiting at that moment
//! as one group (group commit), appends the group to the journal with one synced write, puts
//! its rows in an in-memory overlay that every read consults first, and answers each caller:
//! durable first, then visible, then acknowledged. The applier thread then applies groups to
//! redb without syncing (`Durability::None`) and drops them from the overlay. Checkpoints (a
//! durable redb commit, after which the journal segments it covers are deleted) run on the
//! applier when writes pause, every few seconds under load and at shutdown, so a checkpoint
//! never holds up an answer. On open, journal frames newer than redb's durable state are
//! applied again.
//!
//! A failed journal write or redb commit poisons the store: every later write fails (and
//! `ping` with it, so readiness drops) until the service restarts and recovers from disk.
//!
//! `journal_writes` is the journal's own write time, one observation per group, for
//! `/metrics`: beside a grant's wait for its write (`access`), it shows how much of that wait
//! is the disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::journal::Journal;
use super::*;

/// Tables, by name.
type Table = &'static str;
const META: Table = "meta";
const PROVIDERS: Table = "providers";
const PREFERENCES: Table = "preferences";
const CONSENTS: Table = "consents";
const RESPONDERS: Table = "responders";
const SUBMISSIONS: Table = "submissions";
const ACCESSES: Table = "accesses";
const REPLAY: Table = "replay";
const REVOKED: Table = "revoked";
/// Sealed values, stored as they are (not JSON).
const CONTACTS: Table = "contacts";
const NOTICES: Table = "notices";
const DIRECTORY: Table = "provider_directory";
/// On-call state from the paging integrations (`paging`), JSON values it owns.
const PAGING: Table = "paging";
const TABLES: [Table; 13] = [
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
];

fn def(name: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The META key of the last journal frame applied to redb.
const JOURNAL_SEQ: &str = "journal_seq";

/// A row to write: table, key, encoded value (`None` removes the key).
type Row = (Table, String, Option<Vec<u8>>);
type Rows = Vec<Row>;

/// Acknowledged rows not yet in redb, with the `seq` of the group that wrote them.
type Overlay = Arc<Mutex<HashMap<(Table, String), (u64, Option<Vec<u8>>)>>>;

type Poison = Arc<Mutex<Option<String>>>;

fn poisoned(p: &Poison) -> Option<String> {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn poison(p: &Poison, e: &StoreError) {
    tracing::error!(error = %e, "the store cannot write: refusing every write until restart");
    p.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(|| e.to_string());
}

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
/// How long the applier gathers groups before one redb commit.
const APPLY_GATHER: Duration = Duration::from_millis(10);
/// A journal segment this large is closed and a new one begun.
const SEGMENT_BYTES: u64 = 8 << 20;
/// A zero-filled spare: a segment and room for the group that closes it.
const SPARE_BYTES: u64 = SEGMENT_BYTES + (1 << 20);
/// Written to a store's first segment, this much makes it prepare a zero-filled spare
/// (about 64 grants).
const SPARE_AFTER: u64 = 256 << 10;

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
    journal_writes: Histogram,
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

/// The journal's segment files, `<store>.journal.<first seq>`, oldest first (and the
/// single-file journal of earlier versions, `<store>.journal`, before them).
fn segments(store: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let dir = store.parent().unwrap_or(Path::new("."));
    let name = store
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let legacy = format!("{name}.journal");
    let prefix = format!("{name}.journal.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(backend)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == legacy || n.starts_with(&prefix))
        })
        .collect();
    // zero-padded seqs sort by name; the legacy name is a prefix of the rest, so first
    out.sort();
    Ok(out)
}

/// The first seq a segment holds, from its name (`None` for the single-file journal of
/// earlier versions).
fn first_seq(segment: &Path) -> Option<u64> {
    let name = segment.file_name()?.to_str()?;
    name.rsplit_once(".journal.")?.1.parse().ok()
}

/// Spare segments kept at most: full segments a checkpoint freed, for the segments written
/// before the next checkpoint (at peak, ~25 MB of journal a second against a checkpoint every
/// 2 s; a new file instead costs each sync its growing size).
const SPARES: usize = 8;
/// Spares zero-filled when a store starts taking writes: two, so that a segment can fill
/// while the one before it waits for the checkpoint that lets it be recycled. They have their
/// own places (the first), apart from those recycled segments go to, so that the applier
/// filling them and the journal thread recycling never rename onto the same name.
const ZERO_FILLED: usize = 2;

/// The spare segments' places: zero-filled (by the applier) or recycled segments, renamed to
/// be the next segment. Not segment names, so they are never read for frames.
fn spare_paths(store: &Path) -> [PathBuf; SPARES] {
    std::array::from_fn(|i| {
        let mut p = store.as_os_str().to_owned();
        p.push(".journal-spare");
        if i > 0 {
            p.push(format!(".{i}"));
        }
        PathBuf::from(p)
    })
}

/// Makes the directory's entries durable (a new or renamed segment's name).
fn sync_dir(store: &Path) -> Result<(), StoreError> {
    let dir = store.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(backend)
}

/// Where a zero-filled spare is written before it is renamed into its place.
fn being_filled(spare: &Path) -> PathBuf {
    let mut tmp = spare.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes a zero-filled spare segment in each of their free places: on the applier thread, so
/// that no answer waits for them.
fn prepare_spares(store: &Path) -> Result<(), StoreError> {
    for spare in spare_paths(store).into_iter().take(ZERO_FILLED) {
        if spare.exists() {
            continue;
        }
        let tmp = being_filled(&spare);
        Journal::zero_fill(&tmp, SPARE_BYTES)?;
        std::fs::rename(&tmp, &spare).map_err(backend)?;
    }
    Ok(())
}

fn segment_path(store: &Path, first_seq: u64) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(format!(".journal.{first_seq:020}"));
    PathBuf::from(p)
}

struct Segment {
    journal: Journal,
    path: PathBuf,
    last_seq: u64,
    /// A new file, not a spare: its writes also extend it (size and block allocation to
    /// commit at each sync), so it is closed as soon as a spare is ready.
    fresh: bool,
}

/// The journal thread: appends groups, makes them visible, answers, hands them on.
struct JournalWriter {
    store_path: PathBuf,
    /// The spares' places (`spare_paths`), looked at after every group.
    spares: [PathBuf; SPARES],
    current: Option<Segment>,
    /// Closed segments, with the last seq each holds.
    closed: Vec<(PathBuf, u64)>,
    seq: u64,
    overlay: Overlay,
    applier: mpsc::Sender<(u64, Rows)>,
    checkpointed: Arc<AtomicU64>,
    segment_bytes: Arc<AtomicU64>,
    poisoned: Poison,
    /// Whether the journal's way of writing (direct I/O or buffered) was logged yet.
    announced: bool,
    writes: Histogram,
}

impl JournalWriter {
    fn write(&mut self, batch: Batch) -> Result<(), StoreError> {
        if let Some(why) = poisoned(&self.poisoned) {
            return Err(StoreError::Backend(format!(
                "the store stopped writing: {why}"
            )));
        }
        let seq = self.seq + 1;
        let rows = rows_of(&batch)?;
        let payload = encode_rows(&rows);
        let started = Instant::now();
        let result = self.append(seq, &payload);
        self.writes.observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            poison(&self.poisoned, e);
            return result;
        }
        self.seq = seq;
        {
            let mut overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
            for (table, key, value) in &rows {
                overlay.insert((*table, key.clone()), (seq, value.clone()));
            }
        }
        if self.applier.send((seq, rows)).is_err() {
            let e = backend("the store's applier stopped");
            poison(&self.poisoned, &e);
            // durable in the journal and visible: applied at the next start
        }
        Ok(())
    }

    fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
        let segment = match &mut self.current {
            Some(s) => s,
            None => {
                let path = segment_path(&self.store_path, seq);
                let spare = self
                    .spares
                    .iter()
                    .any(|spare| std::fs::rename(spare, &path).is_ok());
                let (journal, fresh) = if spare {
                    (Journal::reuse(&path)?, false)
                } else {
                    (Journal::open(&path, Some(seq))?.0, true)
                };
                // the segment's name is durable before any frame in it is acknowledged
                sync_dir(&self.store_path)?;
                if !std::mem::replace(&mut self.announced, true) {
                    if journal.direct() {
                        tracing::info!(journal = %path.display(), "journal writes use direct I/O (O_DIRECT | O_DSYNC)");
                    } else {
                        tracing::warn!(journal = %path.display(), "this file system takes no direct I/O: journal writes are buffered and synced with fdatasync (slower)");
                    }
                }
                self.current.insert(Segment {
                    journal,
                    path,
                    last_seq: seq,
                    fresh,
                })
            }
        };
        segment.journal.append(seq, payload)?;
        segment.last_seq = seq;
        self.segment_bytes
            .store(segment.journal.bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Closes a full segment; deletes the segments a checkpoint covers.
    fn collect(&mut self) {
        let durable = self.checkpointed.load(Ordering::Acquire);
        let spares = &self.spares;
        if let Some(s) = &self.current {
            if s.last_seq <= durable
                || s.journal.bytes() >= SEGMENT_BYTES
                || (s.fresh && spares.iter().any(|p| p.exists()))
            {
                if let Some(s) = self.current.take() {
                    self.closed.push((s.path, s.last_seq));
                }
            }
        }
        self.closed.retain(|(path, last)| {
            if *last > durable {
                return true;
            }
            // a full segment becomes a spare if there is a free place (its old frames are
            // never read as the next segment's: they do not run on from the seq in its
            // name); the rest go
            let full = std::fs::metadata(path).is_ok_and(|m| m.len() >= SEGMENT_BYTES);
            let recycled = full
                && spares[ZERO_FILLED..]
                    .iter()
                    .find(|p| !p.exists())
                    .is_some_and(|free| std::fs::rename(path, free).is_ok());
            if !recycled {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(error = %e, segment = %path.display(), "could not delete a checkpointed journal segment");
                }
            }
            false
        });
    }
}

fn journal_loop(mut w: JournalWriter, jobs: mpsc::Receiver<Job>) {
    loop {
        let first = match jobs.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                w.collect();
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
        w.collect();
    }
    // dropping `w` closes the applier's channel: it checkpoints and stops
}

/// The applier thread: groups into redb, out of the overlay; checkpoints.
struct Applier {
    db: Arc<Database>,
    store_path: PathBuf,
    /// The current journal segment's size, as the journal thread last wrote it.
    segment_bytes: Arc<AtomicU64>,
    zero_filled: bool,
    overlay: Overlay,
    applied: u64,
    dirty: bool,
    checkpointed_at: Instant,
    checkpoints: Checkpoints,
    checkpointed: Arc<AtomicU64>,
    poisoned: Poison,
}

impl Applier {
    fn apply(&mut self, groups: Vec<(u64, Rows)>) {
        if poisoned(&self.poisoned).is_some() {
            return;
        }
        let Some(last) = groups.last().map(|(seq, _)| *seq) else {
            return;
        };
        let rows: Vec<_> = groups.iter().flat_map(|(_, r)| r.iter()).collect();
        if let Err(e) = apply_rows(&self.db, rows.iter().copied(), last, Durability::None) {
            poison(&self.poisoned, &e);
            return;
        }
        self.applied = last;
        self.dirty = true;
        let mut overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, rows) in &groups {
            for (table, key, _) in rows {
                let k = (*table, key.clone());
                if overlay.get(&k).is_some_and(|(s, _)| s <= seq) {
                    overlay.remove(&k);
                }
            }
        }
    }

    fn checkpoint(&mut self) {
        if !self.dirty || poisoned(&self.poisoned).is_some() {
            return;
        }
        self.checkpointed_at = Instant::now();
        match checkpoint(&self.db) {
            Ok(()) => {
                self.dirty = false;
                self.checkpointed.store(self.applied, Ordering::Release);
            }
            Err(e) => poison(&self.poisoned, &e),
        }
    }

    /// A store that starts taking writes gets its zero-filled spares (a quiet one, e.g. in
    /// tests, needs none): until then the journal appends to a new file, whose syncs also
    /// commit its growing size (on this project's machine, a grant's p99 over the first 2 s
    /// of a run at 1,000 a second went from ~0.6 ms to several). After it, full segments are
    /// recycled as spares by the journal thread, so that zero-filling does not compete with
    /// the journal's syncs again.
    fn prepare_spares(&mut self) {
        if self.zero_filled || self.segment_bytes.load(Ordering::Relaxed) < SPARE_AFTER {
            return;
        }
        self.zero_filled = true;
        if let Err(e) = prepare_spares(&self.store_path) {
            // only slower syncs until there is one: the journal appends to a new file
            tracing::warn!(error = %e, "could not prepare spare journal segments");
        }
    }
}

fn applier_loop(mut a: Applier, groups: mpsc::Receiver<(u64, Rows)>) {
    loop {
        let first = match groups.recv_timeout(a.checkpoints.when_idle_for) {
            Ok(g) => g,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                a.checkpoint();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // gather what comes within a few milliseconds: one redb commit for many groups costs
        // much less CPU than one each, and the overlay answers reads meanwhile
        let mut waiting = vec![first];
        let until = Instant::now() + APPLY_GATHER;
        while waiting.len() < GROUP_COMMIT_MAX {
            match groups.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(g) => waiting.push(g),
                Err(_) => break,
            }
        }
        a.apply(waiting);
        a.prepare_spares();
        if a.dirty && a.checkpointed_at.elapsed() >= a.checkpoints.every {
            a.checkpoint();
        }
    }
    a.checkpoint();
}

/// A durable commit: redb makes every earlier non-durable commit durable with it.
fn checkpoint(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate).map_err(backend)?;
    tx.commit().map_err(backend)
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
        let journal_writes = crate::latency::latency_histogram();
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
            writes: journal_writes.clone(),
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
            journal_writes,
        })
    }

    /// Stops the store as a failed write would (fault injection, for tests of what the rest
    /// of the service does then): every later write fails until a restart.
    #[doc(hidden)]
    pub fn stop_writing(&self, why: &str) {
        poison(&self.poisoned, &backend(why));
    }

    /// How long the journal's durable writes take (one per group commit), for `/metrics`.
    pub fn journal_writes(&self) -> Histogram {
        self.journal_writes.clone()
    }

    fn enqueue(&self, batch: Batch, reply: Reply) -> Result<(), StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send((batch, reply))
            .map_err(|_| backend("the store's writer stopped"))
    }

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

    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, StoreError> {
        self.get_raw(table, key)?.map(|v| dec(key, &v)).transpose()
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

    fn keys(&self, table: Table) -> Result<Vec<String>, StoreError> {
        Ok(self.scan(table)?.into_iter().map(|(k, _)| k).collect())
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
        self.scan(CONSENTS)?
            .iter()
            .map(|(k, v)| dec::<(ConsentKey, Consent)>(k, v).map(|(key, _)| key))
            .collect()
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
        let mut out = self.submissions()?;
        out.retain(Submission::is_open);
        Ok(out)
    }

    fn submissions(&self) -> Result<Vec<Submission>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(SUBMISSIONS)? {
            out.push(dec::<Submission>(&k, &v)?);
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

    fn replays(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.scan(REPLAY)?
            .into_iter()
            .map(|(k, v)| {
                let until = dec(&k, &v)?;
                Ok((k, until))
            })
            .collect()
    }

    fn revoked(&self, jti: &str) -> Result<Option<u64>, StoreError> {
        self.get(REVOKED, jti)
    }

    fn contact(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(CONTACTS, &patient.to_string())
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
    ) -> Result<Option<crate::domain::ProviderEntry>, StoreError> {
        self.get(DIRECTORY, principal)
    }

    fn directory_entries(&self) -> Result<Vec<crate::domain::ProviderEntry>, StoreError> {
        self.scan(DIRECTORY)?
            .iter()
            .map(|(k, v)| dec(k, v))
            .collect()
    }

    fn paging(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.scan(PAGING)?
            .iter()
            .map(|(k, v)| Ok((k.clone(), dec(k, v)?)))
            .collect()
    }

    fn notices(&self) -> Result<Vec<Notice>, StoreError> {
        self.scan(NOTICES)?.iter().map(|(k, v)| dec(k, v)).collect()
    }

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

fn rows<T: Serialize>(
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
fn rows_of(batch: &Batch) -> Result<Rows, StoreError> {
    let mut out = Rows::new();
    if let Some(tip) = &batch.tip {
        out.push((META, "tip".into(), Some(enc(tip)?)));
    }
    if let Some(n) = batch.nonce {
        out.push((META, "nonce".into(), Some(enc(&n)?)));
    }
    for (w, s) in &batch.providers {
        out.push((PROVIDERS, w.clone(), s.as_ref().map(enc).transpose()?));
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
        batch.responders.iter().map(|(w, y)| (w.clone(), y)),
    )?;
    rows(
        &mut out,
        SUBMISSIONS,
        batch.submissions.iter().map(|s| (s.id.clone(), s)),
    )?;
    rows(
        &mut out,
        ACCESSES,
        batch.accesses.iter().map(|a| (a.id.clone(), a)),
    )?;
    rows(
        &mut out,
        REPLAY,
        batch.replay.iter().map(|(k, u)| (k.clone(), u)),
    )?;
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
        batch.notices.iter().map(|n| (n.access_id.clone(), n)),
    )?;
    for (p, e) in &batch.directory {
        out.push((DIRECTORY, p.clone(), e.as_ref().map(enc).transpose()?));
    }
    for (k, v) in &batch.paging {
        out.push((PAGING, k.clone(), v.as_ref().map(enc).transpose()?));
    }
    Ok(out)
}

/// The rows format of a journal frame (older frames hold the batch as JSON, `{...`).
const ROWS_FORMAT: u8 = 1;
/// A removed row's value length.
const REMOVED: u32 = u32::MAX;

/// Rows as a journal frame's payload: the format byte, then per row the table's index,
/// the key and the value (each length-prefixed, `u32` LE; `REMOVED` for a removal). The
/// values are the bytes the tables hold, so a batch is encoded once.
fn encode_rows(rows: &Rows) -> Vec<u8> {
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
fn decode_rows(payload: &[u8]) -> Result<Rows, String> {
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

/// Writes rows (in order: a later row for a key wins) as one redb transaction, recording the
/// journal `seq` they reach.
fn apply_rows<'r>(
    db: &Database,
    rows: impl IntoIterator<Item = &'r Row>,
    seq: u64,
    durability: Durability,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(durability).map_err(backend)?;
    {
        let mut by_table: BTreeMap<Table, Vec<&'r Row>> = BTreeMap::new();
        for row in rows {
            by_table.entry(row.0).or_default().push(row);
        }
        let seq_bytes = enc(&seq)?;
        let mut meta = tx.open_table(def(META)).map_err(backend)?;
        meta.insert(JOURNAL_SEQ, seq_bytes.as_slice())
            .map_err(backend)?;
        drop(meta);
        // only the tables the rows name are opened
        for (table, rows) in by_table {
            let mut t = tx.open_table(def(table)).map_err(backend)?;
            for (_, key, value) in rows {
                match value {
                    Some(v) => t.insert(key.as_str(), v.as_slice()).map(|_| ()),
                    None => t.remove(key.as_str()).map(|_| ()),
                }
                .map_err(backend)?;
            }
        }
    }
    tx.commit().map_err(backend)
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

//! The journal thread: takes every batch waiting at that moment as one group (group
//! commit), appends it to the journal with one synced write, puts its rows in the overlay
//! that every read consults first, and answers each caller: durable first, then visible,
//! then acknowledged. A failed write poisons the store.
//!
//! It must not: touch redb (the applier does).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

use super::journal::Journal;
use super::*;
use super::{schema::*, segments::*};

/// Acknowledged rows not yet in redb, with the `seq` of the group that wrote them.
pub(super) type Overlay = Arc<Mutex<HashMap<(Table, String), (u64, Option<Vec<u8>>)>>>;

pub(super) type Poison = Arc<Mutex<Option<String>>>;

pub(super) fn poisoned(p: &Poison) -> Option<String> {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(super) fn poison(p: &Poison, e: &StoreError) {
    tracing::error!(error = %e, "the store cannot write: refusing every write until restart");
    p.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(|| e.to_string());
}

/// A batch, where to answer, and when it was handed to the writer.
pub(super) type Job = (Batch, Reply, Instant);

/// One group for a writer (the journal's or Redis's): `first` and every job waiting behind it,
/// `GROUP_COMMIT_MAX` at most, each one's wait for the writer observed in `waits`.
pub(super) fn group(
    first: Job,
    jobs: &mpsc::Receiver<Job>,
    waits: &Histogram,
) -> Vec<(Batch, Reply)> {
    let now = Instant::now();
    std::iter::once(first)
        .chain(jobs.try_iter().take(GROUP_COMMIT_MAX - 1))
        .map(|(batch, reply, queued)| {
            waits.observe(now.saturating_duration_since(queued).as_secs_f64());
            (batch, reply)
        })
        .collect()
}

/// Where the writer answers: a thread waiting in `apply`, or a task awaiting `apply_then`.
pub(super) enum Reply {
    Blocking(mpsc::SyncSender<Result<(), StoreError>>),
    Async(Done),
}

impl Reply {
    pub(super) fn send(self, result: Result<(), StoreError>) {
        // a caller that went away no longer needs the answer
        let _ = match self {
            Reply::Blocking(tx) => tx.send(result).map_err(|_| ()),
            Reply::Async(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

/// How many waiting batches one group takes at most.
pub(super) const GROUP_COMMIT_MAX: usize = 256;
/// How long the applier gathers groups before one redb commit.
pub(super) const APPLY_GATHER: Duration = Duration::from_millis(10);

/// The journal thread: appends groups, makes them visible, answers, hands them on.
pub(super) struct JournalWriter {
    pub(super) store_path: PathBuf,
    /// The spares' places (`spare_paths`), looked at after every group.
    pub(super) spares: [PathBuf; SPARES],
    pub(super) current: Option<Segment>,
    /// Closed segments, with the last seq each holds.
    pub(super) closed: Vec<(PathBuf, u64)>,
    pub(super) seq: u64,
    pub(super) overlay: Overlay,
    pub(super) applier: mpsc::Sender<(u64, Rows)>,
    pub(super) checkpointed: Arc<AtomicU64>,
    pub(super) segment_bytes: Arc<AtomicU64>,
    pub(super) poisoned: Poison,
    /// Whether the journal's way of writing (direct I/O or buffered) was logged yet.
    pub(super) announced: bool,
    pub(super) writes: Histogram,
    /// How many batches each group took.
    pub(super) batches: Histogram,
    /// How long each batch waited for this thread to take it.
    pub(super) waits: Histogram,
    /// The audit log's head: this thread alone numbers and links entries.
    pub(super) audit_head: crate::audit::Head,
}

impl JournalWriter {
    fn write(&mut self, batch: Batch) -> Result<(), StoreError> {
        if let Some(why) = poisoned(&self.poisoned) {
            return Err(StoreError::Backend(format!(
                "the store stopped writing: {why}"
            )));
        }
        let seq = self.seq + 1;
        let mut rows = rows_of(&batch)?;
        let mut head = self.audit_head;
        audit_rows(&mut head, &batch.audit, &mut rows)?;
        let payload = encode_rows(&rows);
        let started = Instant::now();
        let result = self.append(seq, &payload);
        self.writes.observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            poison(&self.poisoned, e);
            return result;
        }
        self.seq = seq;
        self.audit_head = head;
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

pub(super) fn journal_loop(mut w: JournalWriter, jobs: mpsc::Receiver<Job>) {
    loop {
        let first = match jobs.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                w.collect();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let waiting = group(first, &jobs, &w.waits);
        let batches = waiting.len();
        let mut merged = Batch::default();
        let mut replies = Vec::with_capacity(waiting.len());
        for (batch, reply) in waiting {
            merged.merge(batch);
            replies.push(reply);
        }
        let result = w.write(merged);
        w.batches.observe(batches as f64);
        for reply in replies {
            reply.send(result.clone());
        }
        w.collect();
    }
    // dropping `w` closes the applier's channel: it checkpoints and stops
}

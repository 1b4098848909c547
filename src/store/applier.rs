//! The applier thread: applies acknowledged groups to redb without syncing, drops them from
//! the overlay, and checkpoints (a durable redb commit, after which the journal segments it
//! covers go) when writes pause, every few seconds under load and at shutdown.
//!
//! It must not: answer a caller (the journal already did).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability};

use super::*;
use super::{schema::*, segments::*, writer::*};

/// The applier thread: groups into redb, out of the overlay; checkpoints.
pub(super) struct Applier {
    pub(super) db: Arc<Database>,
    pub(super) store_path: PathBuf,
    /// The current journal segment's size, as the journal thread last wrote it.
    pub(super) segment_bytes: Arc<AtomicU64>,
    pub(super) zero_filled: bool,
    pub(super) overlay: Overlay,
    pub(super) applied: u64,
    pub(super) dirty: bool,
    pub(super) checkpointed_at: Instant,
    pub(super) checkpoints: Checkpoints,
    pub(super) checkpointed: Arc<AtomicU64>,
    pub(super) poisoned: Poison,
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
    /// commit its growing size (docs/benchmarks.md). After it, full segments are
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

pub(super) fn applier_loop(mut a: Applier, groups: mpsc::Receiver<(u64, Rows)>) {
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
pub(super) fn checkpoint(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate).map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Writes rows (in order: a later row for a key wins) as one redb transaction, recording the
/// journal `seq` they reach.
pub(super) fn apply_rows<'r>(
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

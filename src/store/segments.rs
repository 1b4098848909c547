//! The journal's files: its segments (`<store>.journal.<first seq>`) and the zero-filled
//! spares a new segment is made from, so that a group commit never waits for a file to grow.
//!
//! It must not: decide when to write (the writer does).

use std::path::{Path, PathBuf};

use super::journal::Journal;
use super::schema::*;
use super::*;

/// A journal segment this large is closed and a new one begun.
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;
/// A zero-filled spare: a segment and room for the group that closes it.
pub(super) const SPARE_BYTES: u64 = SEGMENT_BYTES + (1 << 20);
/// Written to a store's first segment, this much makes it prepare a zero-filled spare
/// (about 64 grants).
pub(super) const SPARE_AFTER: u64 = 256 << 10;

/// The journal's segment files, `<store>.journal.<first seq>`, oldest first (and the
/// single-file journal of earlier versions, `<store>.journal`, before them).
pub(super) fn segments(store: &Path) -> Result<Vec<PathBuf>, StoreError> {
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
pub(super) fn first_seq(segment: &Path) -> Option<u64> {
    let name = segment.file_name()?.to_str()?;
    name.rsplit_once(".journal.")?.1.parse().ok()
}

/// Spare segments kept at most: full segments a checkpoint freed, for the segments written
/// before the next checkpoint (at peak, ~25 MB of journal a second against a checkpoint every
/// 2 s; a new file instead costs each sync its growing size).
pub(super) const SPARES: usize = 8;
/// Spares zero-filled when a store starts taking writes: two, so that a segment can fill
/// while the one before it waits for the checkpoint that lets it be recycled. They have their
/// own places (the first), apart from those recycled segments go to, so that the applier
/// filling them and the journal thread recycling never rename onto the same name.
pub(super) const ZERO_FILLED: usize = 2;

/// The spare segments' places: zero-filled (by the applier) or recycled segments, renamed to
/// be the next segment. Not segment names, so they are never read for frames.
pub(super) fn spare_paths(store: &Path) -> [PathBuf; SPARES] {
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
pub(super) fn sync_dir(store: &Path) -> Result<(), StoreError> {
    let dir = store.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(backend)
}

/// Where a zero-filled spare is written before it is renamed into its place.
pub(super) fn being_filled(spare: &Path) -> PathBuf {
    let mut tmp = spare.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes a zero-filled spare segment in each of their free places: on the applier thread, so
/// that no answer waits for them.
pub(super) fn prepare_spares(store: &Path) -> Result<(), StoreError> {
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

pub(super) fn segment_path(store: &Path, first_seq: u64) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(format!(".journal.{first_seq:020}"));
    PathBuf::from(p)
}

pub(super) struct Segment {
    pub(super) journal: Journal,
    pub(super) path: PathBuf,
    pub(super) last_seq: u64,
    /// A new file, not a spare: its writes also extend it (size and block allocation to
    /// commit at each sync), so it is closed as soon as a spare is ready.
    pub(super) fresh: bool,
}

//! The store's write-ahead journal: every group of batches is appended here as one frame and
//! made durable with one `fdatasync` before it is applied to redb, which then commits without
//! syncing (`Durability::None`). A sequential append of a few kilobytes costs one small sync,
//! where a durable redb commit rewrites and syncs every B-tree page the batches touched.
//!
//! A frame is `len: u32 LE | crc32(payload): u32 LE | payload`, the payload `seq: u64 LE`
//! then the batch as JSON. Frames are written one after another and each is synced before the
//! next is written, so only the last frame can be torn by a crash; reading stops at the first
//! frame that is short, fails its checksum or goes back in `seq`, and the file is cut back to
//! the frames before it.
//!
//! The journal is a series of segment files (`<store>.journal.<first seq>`). After a
//! checkpoint (redb commits durably, recording the last applied `seq` in the same commit) the
//! segments it covers are deleted. On open, frames with a `seq` above the one redb holds are
//! applied again; the rest were already in redb's durable state.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Batch, StoreError};

const HEADER: usize = 8;
/// A frame larger than this is taken for a torn length.
const MAX_FRAME: usize = 1 << 30;

pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("journal {}: {e}", path.display()))
}

impl Journal {
    /// Opens (or creates) the journal and returns it with its intact frames, in order; a torn
    /// tail is cut off.
    pub fn open(path: &Path) -> Result<(Journal, Vec<(u64, Batch)>), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
        let mut frames = Vec::new();
        let mut at = 0usize;
        while let Some((seq, batch, next)) = frame_at(&bytes, at) {
            // an emptied journal is not synced: frames of an earlier round may follow the
            // current ones, recognizable by their lower seq
            if frames.last().is_some_and(|(last, _)| seq <= *last) {
                break;
            }
            frames.push((seq, batch));
            at = next;
        }
        if at < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                kept = at,
                dropped = bytes.len() - at,
                "the journal ends in a torn frame (a write the crash interrupted, never acknowledged): cut off"
            );
            file.set_len(at as u64).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        file.seek(SeekFrom::Start(at as u64))
            .map_err(|e| io(path, e))?;
        Ok((
            Journal {
                file,
                path: path.to_path_buf(),
                len: at as u64,
            },
            frames,
        ))
    }

    /// Appends one frame and syncs it: when this returns `Ok`, the batch survives a crash.
    pub fn append(&mut self, seq: u64, batch: &Batch) -> Result<(), StoreError> {
        let frame = encode(seq, batch)?;
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io(&self.path, e))?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// Bytes in the journal since the last checkpoint.
    pub fn bytes(&self) -> u64 {
        self.len
    }
}

/// One frame's bytes.
pub fn encode(seq: u64, batch: &Batch) -> Result<Vec<u8>, StoreError> {
    let mut payload = Vec::with_capacity(1024);
    payload.extend_from_slice(&seq.to_le_bytes());
    serde_json::to_writer(&mut payload, batch).map_err(|e| StoreError::Backend(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| StoreError::Backend("a batch too large for one journal frame".into()))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// The frame starting at `at`, and where the next one starts; `None` at the end or at a frame
/// that is short, fails its checksum or does not decode.
fn frame_at(bytes: &[u8], at: usize) -> Option<(u64, Batch, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if !(8..=MAX_FRAME).contains(&len) {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().ok()?);
    let batch = serde_json::from_slice(&payload[8..]).ok()?;
    Some((seq, batch, at + HEADER + len))
}

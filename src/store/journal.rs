//! The store's write-ahead journal: every group of batches is appended here as one frame and
//! made durable before it is applied to redb, which then commits without syncing
//! (`Durability::None`). A sequential write of a few kilobytes costs one small sync, where a
//! durable redb commit rewrites and syncs every B-tree page the batches touched.
//!
//! A frame is `len: u32 LE | crc32(payload): u32 LE | payload`, the payload `seq: u64 LE`
//! then what the store put in it (its rows, encoded once: `redb_store::encode_rows`). Each
//! frame starts on a 4 KiB block boundary and is written as whole blocks, zeros after it, with
//! direct I/O and `O_DSYNC` where the file system takes them (`open_for_writes`; otherwise a
//! buffered write and `fdatasync`). Frames are written one after another and each is durable
//! before the next is written, so only the last frame can be torn by a crash; reading stops at
//! the first frame that is short, fails its checksum or is not the next `seq` (a segment's
//! frames run on from the seq in its name), and the file is cut back to the frames before it.
//! Journals of earlier versions, with frames back to back, read the same way.
//!
//! The journal is a series of segment files (`<store>.journal.<first seq>`). After a
//! checkpoint (redb commits durably, recording the last applied `seq` in the same commit) the
//! segments it covers are deleted, or kept as spares that later segments reuse
//! (`Journal::reuse`): overwriting blocks already on disk makes each sync faster than
//! appending to a growing file (docs/benchmarks.md). On open, frames with a `seq` above the
//! one redb holds are applied again; the rest were already in redb's durable state.
//!
//! It must not: know what the frames hold (rows are `schema.rs`'s).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StoreError;

const HEADER: usize = 8;
/// A frame larger than this is taken for a torn length.
const MAX_FRAME: usize = 1 << 30;
/// Every group's frame starts on a block boundary and is written as whole blocks (zeros after
/// the frame), which direct I/O needs, and which keeps a new frame from rewriting a block that
/// holds an acknowledged one.
const BLOCK: usize = 4096;

/// A frame read back: its seq and its payload.
pub type Frame = (u64, Vec<u8>);

pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    /// Opened `O_DIRECT | O_DSYNC`: a write returns once it is on stable storage, past the
    /// page cache. Otherwise a buffered write and `fdatasync`.
    direct: bool,
    /// Where a frame is laid out for writing; longer than any write by a block, so that an
    /// aligned window always fits in it.
    staging: Vec<u8>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("journal {}: {e}", path.display()))
}

impl Journal {
    /// Opens (or creates) the journal and returns it with its intact frames, in order; a torn
    /// tail is cut off. A segment's frames have consecutive seqs from `first_seq` (its name's),
    /// so that frames a reused file held before (an earlier round's, or another store's after
    /// an operator restored a backup beside its spares) end the reading whatever their seq.
    pub fn open(path: &Path, first_seq: Option<u64>) -> Result<(Journal, Vec<Frame>), StoreError> {
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
        while let Some((seq, payload, next)) = next_frame(&bytes, at) {
            // a reused file is not emptied: frames of an earlier round may follow the current
            // ones, and are not the next seq
            let expected = frames.last().map(|(last, _)| last + 1).or(first_seq);
            if expected.is_some_and(|e| seq != e) {
                break;
            }
            frames.push((seq, payload.to_vec()));
            at = next;
        }
        // zeros after the frames are padding or preallocated space, not a torn frame
        if at < bytes.len() && bytes[at..].iter().any(|b| *b != 0) {
            tracing::warn!(
                journal = %path.display(),
                kept = at,
                dropped = bytes.len() - at,
                "the journal ends in a torn frame (a write the crash interrupted, never acknowledged) or in older frames of a recycled segment: cut off"
            );
            file.set_len(at as u64).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        drop(file);
        let mut journal = Journal::reuse(path)?;
        // the next frame starts on the block after the last one (a journal of earlier
        // versions has its frames back to back, not on block boundaries)
        journal.len = at.next_multiple_of(BLOCK) as u64;
        Ok((journal, frames))
    }

    /// Starts a journal over a file written before (a zero-filled spare, or a segment whose
    /// frames a checkpoint covers): frames overwrite it from the start, so each sync writes
    /// data blocks only, with no file size or block allocation to commit as well. What
    /// follows the last frame is never read as one: zeros end the reading, and older frames
    /// are not the next seq.
    pub fn reuse(path: &Path) -> Result<Journal, StoreError> {
        let (file, direct) = open_for_writes(path)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            len: 0,
            direct,
            staging: Vec::new(),
        })
    }

    /// Writes a zero-filled file of `bytes` at `path` and syncs it: room that frames overwrite
    /// (`reuse`) without growing the file, so that a sync commits no size or block allocation.
    pub fn zero_fill(path: &Path, bytes: u64) -> Result<(), StoreError> {
        let mut f = File::create(path).map_err(|e| io(path, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while written < bytes {
            let n = zeros.len().min((bytes - written) as usize);
            std::io::Write::write_all(&mut f, &zeros[..n]).map_err(|e| io(path, e))?;
            written += n as u64;
        }
        f.sync_all().map_err(|e| io(path, e))
    }

    /// Appends one frame and makes it durable: when this returns `Ok`, the payload survives a
    /// crash.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
        let len = frame_len(payload)?;
        let blocks = len.next_multiple_of(BLOCK);
        if self.staging.len() < blocks + BLOCK {
            self.staging.resize(blocks + BLOCK, 0);
        }
        let start = self.staging.as_ptr().align_offset(BLOCK);
        let out = &mut self.staging[start..start + blocks];
        put_frame(out, seq, payload);
        out[len..].fill(0);
        let mut written = self.file.write_all_at(out, self.len);
        if self.direct && matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::InvalidInput)
        {
            // the file system opened it for direct I/O but refuses this write (a device's
            // blocks larger than ours, some stacked file systems): buffered from now on
            tracing::warn!(journal = %self.path.display(), "the file system refused a direct write: journal writes are buffered and synced with fdatasync (slower)");
            self.file = open_buffered(&self.path)?;
            self.direct = false;
            written = self.file.write_all_at(out, self.len);
        }
        written
            .and_then(|()| {
                if self.direct {
                    Ok(())
                } else {
                    self.file.sync_data()
                }
            })
            .map_err(|e| io(&self.path, e))?;
        self.len += blocks as u64;
        Ok(())
    }

    /// Bytes in the journal since the last checkpoint.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Whether writes bypass the page cache (`O_DIRECT | O_DSYNC`).
    pub fn direct(&self) -> bool {
        self.direct
    }
}

/// Opens a journal file for its frames' writes: with direct I/O where the file system allows
/// it at this alignment, since a write that is durable on return (`O_DSYNC`, past the page
/// cache) costs one device round trip and a flush, where a buffered write and `fdatasync`
/// also copy into the page cache, dirty the inode and wait for writeback (docs/benchmarks.md).
fn open_for_writes(path: &Path) -> Result<(File, bool), StoreError> {
    #[cfg(target_os = "linux")]
    if direct_io_fits(path) {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::DSYNC;
        match OpenOptions::new()
            .write(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
        {
            Ok(file) => return Ok((file, true)),
            // a file system without direct I/O (EINVAL): buffered writes below
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(io(path, e)),
        }
    }
    Ok((open_buffered(path)?, false))
}

/// Opens a journal file for buffered writes (each followed by `fdatasync`).
fn open_buffered(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))
}

/// Whether the file system takes direct I/O at `BLOCK` alignment, as far as the kernel tells
/// (`statx` with `STATX_DIOALIGN`, Linux 6.1); an older kernel does not, and the open tries.
#[cfg(target_os = "linux")]
fn direct_io_fits(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    match statx(CWD, path, AtFlags::empty(), StatxFlags::DIOALIGN) {
        Ok(st) if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN) => {
            let (memory, offset) = (
                st.stx_dio_mem_align as usize,
                st.stx_dio_offset_align as usize,
            );
            // is_multiple_of(0) is false: a file system without direct I/O reports 0
            BLOCK.is_multiple_of(memory) && BLOCK.is_multiple_of(offset)
        }
        _ => true,
    }
}

/// The frame at `at`, or at the next block boundary when only zeros (a frame's padding) lie
/// between: its seq, its payload and where the frame after it may start.
fn next_frame(bytes: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
    frame_at(bytes, at).or_else(|| {
        let boundary = at.next_multiple_of(BLOCK);
        let padding = bytes.get(at..boundary)?;
        (boundary != at && padding.iter().all(|b| *b == 0))
            .then(|| frame_at(bytes, boundary))
            .flatten()
    })
}

/// The size of `body`'s frame, header included; an error for a body too large for one.
fn frame_len(body: &[u8]) -> Result<usize, StoreError> {
    Some(8 + body.len())
        .filter(|len| *len <= MAX_FRAME)
        .map(|len| HEADER + len)
        .ok_or_else(|| StoreError::Backend("a batch too large for one journal frame".into()))
}

/// Lays `body`'s frame out at the start of `out` (at least `frame_len(body)` long), straight
/// into the block-aligned buffer a direct write needs.
fn put_frame(out: &mut [u8], seq: u64, body: &[u8]) {
    let len = 8 + body.len();
    // frame_len checked len ≤ MAX_FRAME, which fits in a u32
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[HEADER..HEADER + 8].copy_from_slice(&seq.to_le_bytes());
    out[HEADER + 8..HEADER + len].copy_from_slice(body);
    let crc = crc32fast::hash(&out[HEADER..HEADER + len]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The frame starting at `at` (its seq and what follows it), and where the next one starts;
/// `None` at the end or at a frame that is short or fails its checksum.
fn frame_at(bytes: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
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
    Some((seq, &payload[8..], at + HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame's bytes, on their own.
    fn encode(seq: u64, body: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut frame = vec![0; frame_len(body)?];
        put_frame(&mut frame, seq, body);
        Ok(frame)
    }

    fn batch(n: u64) -> Vec<u8> {
        format!("frame {n}: {}", "x".repeat(n as usize * 7)).into_bytes()
    }

    fn seqs(frames: &[(u64, Vec<u8>)]) -> Vec<u64> {
        frames.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn a_reused_file_yields_only_its_new_frames() {
        let dir = tempfile::tempdir().unwrap();
        // a recycled segment: older frames, then new ones written over its start
        let recycled = dir.path().join("recycled");
        let (mut j, _) = Journal::open(&recycled, None).unwrap();
        for s in 1..=20 {
            j.append(s, &batch(s)).unwrap();
        }
        let old_len = std::fs::metadata(&recycled).unwrap().len();
        let mut j = Journal::reuse(&recycled).unwrap();
        for s in 30..=32 {
            j.append(s, &batch(s)).unwrap();
        }
        assert_eq!(
            std::fs::metadata(&recycled).unwrap().len(),
            old_len,
            "overwritten in place"
        );
        let (_, frames) = Journal::open(&recycled, None).unwrap();
        assert_eq!(seqs(&frames), vec![30, 31, 32]);
        assert_eq!(frames[2].1, batch(32));

        // a zero-filled spare: new frames, and the zeros after them are not a torn frame
        let spare = dir.path().join("spare");
        Journal::zero_fill(&spare, 64 * 1024).unwrap();
        assert!(std::fs::read(&spare).unwrap().iter().all(|b| *b == 0));
        let mut j = Journal::reuse(&spare).unwrap();
        for s in 5..=6 {
            j.append(s, &batch(s)).unwrap();
        }
        let (mut reopened, frames) = Journal::open(&spare, None).unwrap();
        assert_eq!(seqs(&frames), vec![5, 6]);
        assert_eq!(
            std::fs::metadata(&spare).unwrap().len(),
            64 * 1024,
            "kept preallocated"
        );
        // and appending after recovery goes on after the last frame
        reopened.append(7, &batch(7)).unwrap();
        let (_, frames) = Journal::open(&spare, None).unwrap();
        assert_eq!(seqs(&frames), vec![5, 6, 7]);
    }

    #[test]
    fn frames_of_an_earlier_round_end_the_reading_whatever_their_seq() {
        let dir = tempfile::tempdir().unwrap();
        // a spare recycled from a store whose seqs ran higher (a database restored from a
        // backup beside the journal's spares): its old frames follow the new ones
        let path = dir.path().join("s.redb.journal.00000000000000000005");
        let (mut j, _) = Journal::open(&path, None).unwrap();
        for s in 40_000..40_010 {
            j.append(s, &batch(s % 7)).unwrap();
        }
        let mut j = Journal::reuse(&path).unwrap();
        for s in 5..=7 {
            j.append(s, &batch(s)).unwrap();
        }
        let (_, frames) = Journal::open(&path, Some(5)).unwrap();
        assert_eq!(
            seqs(&frames),
            vec![5, 6, 7],
            "40,003 is not the frame after 7"
        );

        // a segment renamed from a spare, the crash before its first write: the old frames
        // are not this segment's (its first seq is its name's)
        let path = dir.path().join("s.redb.journal.00000000000000000100");
        let (mut j, _) = Journal::open(&path, None).unwrap();
        for s in 60..=62 {
            j.append(s, &batch(s)).unwrap();
        }
        let (_, frames) = Journal::open(&path, Some(100)).unwrap();
        assert!(frames.is_empty(), "{:?}", seqs(&frames));
    }

    #[test]
    fn frames_start_on_block_boundaries_and_a_journal_of_earlier_versions_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path, None).unwrap();
        for s in 1..=3 {
            j.append(s, &batch(s)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 3 * BLOCK, "one block per small frame");
        for (i, s) in (1..=3u64).enumerate() {
            let at = i * BLOCK;
            let (seq, payload, _) = frame_at(&bytes, at).expect("a frame on the boundary");
            assert_eq!((seq, payload), (s, batch(s).as_slice()));
        }

        // earlier versions wrote frames back to back
        let legacy = dir.path().join("legacy");
        let mut bytes = Vec::new();
        for s in 1..=4 {
            bytes.extend(encode(s, &batch(s)).unwrap());
        }
        std::fs::write(&legacy, &bytes).unwrap();
        let (mut j, frames) = Journal::open(&legacy, None).unwrap();
        assert_eq!(seqs(&frames), vec![1, 2, 3, 4]);
        j.append(5, &batch(5)).unwrap();
        let (_, frames) = Journal::open(&legacy, None).unwrap();
        assert_eq!(seqs(&frames), vec![1, 2, 3, 4, 5]);
        assert_eq!(frames[4].1, batch(5));
    }

    #[test]
    fn a_torn_frame_after_padding_is_cut_off_and_writing_goes_on_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path, None).unwrap();
        for s in 1..=3 {
            j.append(s, &batch(s)).unwrap();
        }
        drop(j);
        // the third frame's write was interrupted: its block holds only part of it
        let mut bytes = std::fs::read(&path).unwrap();
        let third = 2 * BLOCK;
        let torn = encode(3, &batch(3)).unwrap().len() / 2;
        bytes[third + torn..].fill(0);
        bytes[third + torn - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let (mut j, frames) = Journal::open(&path, None).unwrap();
        assert_eq!(seqs(&frames), vec![1, 2]);
        assert!(
            std::fs::metadata(&path).unwrap().len() < 3 * BLOCK as u64,
            "the torn frame is cut off"
        );
        j.append(3, &batch(3)).unwrap();
        j.append(4, &batch(4)).unwrap();
        let (_, frames) = Journal::open(&path, None).unwrap();
        assert_eq!(seqs(&frames), vec![1, 2, 3, 4]);
    }

    /// The buffered way (file systems without direct I/O) lays frames out the same way.
    #[test]
    fn buffered_writes_make_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (j, _) = Journal::open(&path, None).unwrap();
        let mut buffered = Journal {
            file: OpenOptions::new().write(true).open(&path).unwrap(),
            direct: false,
            ..j
        };
        for s in 1..=3 {
            buffered.append(s, &batch(s)).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * BLOCK as u64);
        let (_, frames) = Journal::open(&path, None).unwrap();
        assert_eq!(seqs(&frames), vec![1, 2, 3]);
        assert_eq!(frames[1].1, batch(2));
    }

    /// Where the kernel says this file system takes direct I/O at our block size (ext4, xfs,
    /// tmpfs on recent kernels), the journal's file is open for it.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_journal_uses_direct_io_where_the_file_system_allows_it() {
        use rustix::fs::{fcntl_getfl, statx, AtFlags, OFlags, StatxFlags, CWD};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (j, _) = Journal::open(&path, None).unwrap();
        let st = statx(CWD, &path, AtFlags::empty(), StatxFlags::DIOALIGN).unwrap();
        let told = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN);
        let fits = (1..=4096).contains(&st.stx_dio_offset_align)
            && (1..=4096).contains(&st.stx_dio_mem_align);
        if told {
            assert_eq!(j.direct(), fits, "statx: {st:?}");
        }
        let flags = fcntl_getfl(&j.file).unwrap();
        assert_eq!(flags.contains(OFlags::DIRECT), j.direct());
        assert_eq!(flags.contains(OFlags::DSYNC), j.direct());
    }
}

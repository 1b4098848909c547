//! Files only the service's user may read (keys, sealed or not): created without ever
//! overwriting, or replaced atomically, and synced, so a crash leaves the old or the new file.
//!
//! It must not: know what the bytes are (keys and sealing are `keys`, `seal`, `token`).

use std::fs;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents` (owner-only), atomically: written and synced beside it,
/// renamed over it, then the directory synced, so a crash leaves the old or the new file.
pub fn replace_private_bytes(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_private_bytes(&tmp, contents)?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `path` (never overwriting) readable by the owner only, and syncs it.
pub fn write_private_bytes(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

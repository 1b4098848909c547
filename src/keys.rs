//! The service's own keys. Its Stacks key signs the contract calls it makes as a responder.
//!
//! Production passes the key in `BREAKGLASS_SERVICE_KEY` (hex) or a file named by
//! `BREAKGLASS_SERVICE_KEY_FILE`. Otherwise the key is generated at first run into the data
//! directory with mode 0600 and read from there afterwards. Keys never go in the repository.

use std::fs;
use std::io::Write;
use std::path::Path;

use secp256k1::{PublicKey, SecretKey, SECP256K1};

use crate::stacks::Address;

pub struct ServiceKeys {
    pub stacks: SecretKey,
    pub source: KeySource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Generated,
    DataDir,
}

impl ServiceKeys {
    pub fn stacks_address(&self, mainnet: bool) -> Address {
        Address::from_public_key(
            &PublicKey::from_secret_key(SECP256K1, &self.stacks),
            mainnet,
        )
    }

    /// From the environment, else from (or newly into) `data_dir`.
    pub fn load_or_generate(data_dir: &Path) -> anyhow::Result<ServiceKeys> {
        if let Ok(hex_key) = std::env::var("BREAKGLASS_SERVICE_KEY") {
            return Ok(ServiceKeys {
                stacks: parse_key(&hex_key)?,
                source: KeySource::Env,
            });
        }
        if let Ok(file) = std::env::var("BREAKGLASS_SERVICE_KEY_FILE") {
            let text =
                fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?;
            return Ok(ServiceKeys {
                stacks: parse_key(&text)?,
                source: KeySource::File,
            });
        }
        let dir = data_dir.join("keys");
        let path = dir.join("service-stacks.key");
        if path.exists() {
            let text = fs::read_to_string(&path)?;
            return Ok(ServiceKeys {
                stacks: parse_key(&text)?,
                source: KeySource::DataDir,
            });
        }
        fs::create_dir_all(&dir)?;
        let key = SecretKey::new(&mut secp256k1::rand::thread_rng());
        write_private(&path, &format!("{}\n", hex::encode(key.secret_bytes())))?;
        Ok(ServiceKeys {
            stacks: key,
            source: KeySource::Generated,
        })
    }
}

/// A hex secp256k1 key; the trailing `01` compressed marker of stacks.js keys is accepted.
pub fn parse_key(text: &str) -> anyhow::Result<SecretKey> {
    let bytes = hex::decode(text.trim().trim_start_matches("0x"))
        .map_err(|_| anyhow::anyhow!("the key is not hex"))?;
    let raw = match bytes.len() {
        32 => &bytes[..],
        33 if bytes[32] == 1 => &bytes[..32],
        n => anyhow::bail!("a key is 32 bytes (or 33 with a trailing 01), got {n}"),
    };
    Ok(SecretKey::from_slice(raw)?)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

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

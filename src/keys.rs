//! The service's own keys. Its Stacks key signs the contract calls it makes as a responder.
//!
//! Production passes the key in `BREAKGLASS_SERVICE_KEY` (hex) or a file named by
//! `BREAKGLASS_SERVICE_KEY_FILE`. Otherwise the key is generated at first run into the data
//! directory (`keys/service-stacks.key`, mode 0600), sealed with the data key (`seal.rs`),
//! and read from there afterwards; a plain hex key file from before is sealed in place. Keys
//! never go in the repository.
//!
//! It must not: write a key in the clear (the generated one is sealed), or put one in the
//! repository.

use std::fs;
use std::path::Path;

use secp256k1::{PublicKey, SecretKey, SECP256K1};

use crate::private_files::{replace_private_bytes, write_private_bytes};
use crate::seal::Keyring;
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

    /// Whether a key is there to load (the environment, or a key file in `data_dir`), for
    /// commands that must not make one.
    pub fn exists(data_dir: &Path) -> bool {
        std::env::var_os("BREAKGLASS_SERVICE_KEY").is_some()
            || std::env::var_os("BREAKGLASS_SERVICE_KEY_FILE").is_some()
            || service_key_path(data_dir).exists()
    }

    /// From the environment, else from (or newly into) `data_dir`.
    pub fn load_or_generate(data_dir: &Path) -> anyhow::Result<ServiceKeys> {
        // (the variable or the file named: a bad key otherwise said only "not hex")
        if let Ok(hex_key) = std::env::var("BREAKGLASS_SERVICE_KEY") {
            return Ok(ServiceKeys {
                stacks: parse_key(&hex_key)
                    .map_err(|e| anyhow::anyhow!("BREAKGLASS_SERVICE_KEY: {e}"))?,
                source: KeySource::Env,
            });
        }
        if let Ok(file) = std::env::var("BREAKGLASS_SERVICE_KEY_FILE") {
            let text = fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("BREAKGLASS_SERVICE_KEY_FILE: reading {file}: {e}"))?;
            return Ok(ServiceKeys {
                stacks: parse_key(&text)
                    .map_err(|e| anyhow::anyhow!("BREAKGLASS_SERVICE_KEY_FILE: {file}: {e}"))?,
                source: KeySource::File,
            });
        }
        let keyring = Keyring::load_or_generate(
            data_dir,
            std::env::var(crate::seal::DATA_KEY_ENV).ok().as_deref(),
        )?;
        let path = service_key_path(data_dir);
        if path.exists() {
            let bytes = fs::read(&path)?;
            let stacks = match std::str::from_utf8(&bytes).ok().map(parse_key) {
                // a plain hex key from before keys were sealed: sealed in place
                Some(Ok(key)) => {
                    replace_private_bytes(
                        &path,
                        &keyring.seal(SERVICE_KEY_NAME, &key.secret_bytes())?,
                    )?;
                    key
                }
                _ => {
                    let raw = keyring.open(SERVICE_KEY_NAME, &bytes).map_err(|e| {
                        anyhow::anyhow!("{}: not opened by the data keys ({e})", path.display())
                    })?;
                    SecretKey::from_slice(&raw)?
                }
            };
            return Ok(ServiceKeys {
                stacks,
                source: KeySource::DataDir,
            });
        }
        let key = SecretKey::new(&mut secp256k1::rand::thread_rng());
        fs::create_dir_all(data_dir.join("keys"))?;
        write_private_bytes(&path, &keyring.seal(SERVICE_KEY_NAME, &key.secret_bytes())?)?;
        Ok(ServiceKeys {
            stacks: key,
            source: KeySource::Generated,
        })
    }
}

/// The sealed-value name of the service's generated Stacks key.
const SERVICE_KEY_NAME: &str = "service-stacks-key";

fn service_key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("keys").join("service-stacks.key")
}

/// Seals the generated service key again with the current data key if it is not (after `keys
/// rotate-data`, with `patients rekey`); whether it was.
pub fn rekey_service_key(data_dir: &Path, keyring: &Keyring) -> anyhow::Result<bool> {
    let path = service_key_path(data_dir);
    if !path.exists() {
        return Ok(false);
    }
    let Some(sealed) = keyring.reseal(SERVICE_KEY_NAME, &fs::read(&path)?)? else {
        return Ok(false);
    };
    replace_private_bytes(&path, &sealed)?;
    Ok(true)
}

/// A hex secp256k1 key; the trailing `01` compressed marker of stacks.js keys is accepted.
pub fn parse_key(text: &str) -> anyhow::Result<SecretKey> {
    let bytes = hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("the key is not hex"))?;
    let raw = match bytes.len() {
        32 => &bytes[..],
        33 if bytes[32] == 1 => &bytes[..32],
        n => anyhow::bail!("a key is 32 bytes (or 33 with a trailing 01), got {n}"),
    };
    Ok(SecretKey::from_slice(raw)?)
}

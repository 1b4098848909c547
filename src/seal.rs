//! Encryption at rest for what must not be readable on disk: patient contact details and the
//! notices rendered from them. AES-256-GCM (ring) with a fresh random 96-bit nonce per value
//! and the value's name (`contact:<patient>`, `notice:<access>`) as associated data, so a
//! sealed value cannot be passed off as another.
//!
//! Sealed form: `1` (version) | key id (8 bytes: SHA-256 of the key, truncated) | nonce (12) |
//! ciphertext and tag. Keys: `BREAKGLASS_DATA_KEY` (32 bytes, base64url) when set, else the
//! newest `data_dir/keys/data-*.key` (32 random bytes, mode 0600, generated at first run).
//! Every key found opens; the current one seals. Rotation: `breakglass keys rotate-data` adds a
//! key (refused while `BREAKGLASS_DATA_KEY` is set: rotate it there; with replicas on Redis,
//! recorded for them, and a rotation by hand with `keys publish`), `breakglass patients rekey`
//! seals everything sealed before (contacts, the accesses' reasons, reviewers' notes, stored notices, token
//! signing keys) again with it, then old keys can go.
//!
//! Each data key also gives a MAC key (HKDF-SHA256 of it, `MAC_INFO`): `mac` tags what the
//! service hands out and must know again without keeping it (a reviewer's sign-in challenge),
//! with the current key; `mac_matches` knows a tag by any key of the ring, as `open` does.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const KID_LEN: usize = 8;
const HEADER: usize = 1 + KID_LEN + NONCE_LEN;
/// The HKDF info a data key's MAC key is derived with.
const MAC_INFO: &[u8] = b"breakglass mac v1";
/// A MAC tag's length: 128 bits.
pub const TAG_LEN: usize = 16;
/// The environment variable with the current data key.
pub const DATA_KEY_ENV: &str = "BREAKGLASS_DATA_KEY";

/// The names values are sealed under (the associated data): a sealed value opens only under
/// its own name, so one cannot be passed off as another.
pub mod names {
    use crate::domain::{AccessId, PatientId};

    /// A patient's contact details.
    pub fn contact(patient: &PatientId) -> String {
        format!("contact:{patient}")
    }

    /// The clinician's reason for an access, as recorded before reasons were salted (the
    /// reason alone).
    pub fn reason(access_id: &AccessId) -> String {
        format!("reason:{access_id}")
    }

    /// The clinician's reason for an access with the salt of its commitment (`salt ‖ reason`:
    /// `access::reasons`).
    pub fn salted_reason(access_id: &AccessId) -> String {
        format!("salted-reason:{access_id}")
    }

    /// A patient's emergency summary (the FHIR bundle as imported).
    pub fn summary(patient: &PatientId) -> String {
        format!("summary:{patient}")
    }

    /// A reviewer's note on an access, as recorded before notes were salted (the note alone).
    pub fn note(access_id: &AccessId) -> String {
        format!("note:{access_id}")
    }

    /// A reviewer's note on an access with the salt of its commitment (`salt ‖ note`:
    /// `review::verdict`).
    pub fn salted_note(access_id: &AccessId) -> String {
        format!("salted-note:{access_id}")
    }

    /// The patient's notice of an access, as rendered.
    pub fn notice(access_id: &AccessId) -> String {
        format!("notice:{access_id}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value: unknown format")]
    Format,
    #[error("sealed value: no key {0} in the keyring")]
    UnknownKey(String),
    #[error("sealed value: does not open (wrong key, wrong name or altered)")]
    Open,
    #[error("sealing failed")]
    Seal,
}

struct Key {
    id: [u8; KID_LEN],
    key: LessSafeKey,
    /// The MAC key derived from it.
    mac: hmac::Key,
}

/// The data keys: the current one seals, all of them open.
pub struct Keyring {
    keys: Vec<Key>,
    rng: SystemRandom,
}

fn key_of(bytes: &[u8]) -> anyhow::Result<Key> {
    let mut id = [0u8; KID_LEN];
    id.copy_from_slice(&Sha256::digest(bytes)[..KID_LEN]);
    let unbound = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| anyhow::anyhow!("a data key must be 32 bytes"))?;
    let mac = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(bytes)
        .expand(&[MAC_INFO], hmac::HMAC_SHA256)
        .map_err(|_| anyhow::anyhow!("a data key's MAC key cannot be derived"))?
        .into();
    Ok(Key {
        id,
        key: LessSafeKey::new(unbound),
        mac,
    })
}

fn key_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("data-") && n.ends_with(".key"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    files.sort();
    Ok(files)
}

/// Whether `data_dir/keys` holds a data key.
pub fn has_keys(data_dir: &Path) -> bool {
    key_files(&data_dir.join("keys")).is_ok_and(|f| !f.is_empty())
}

/// Writes a new random data key into `data_dir/keys`; it becomes the current one.
pub fn generate_key(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("keys");
    std::fs::create_dir_all(&dir)?;
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a data key"))?;
    // names sort by creation: the newest is current
    let name = dir.join(format!("data-{:016}.key", crate::clock::now_ms()));
    crate::private_files::write_private_bytes(&name, &bytes)?;
    Ok(name)
}

impl Keyring {
    /// The keys of `data_dir/keys/data-*.key` (one is generated when there is none and no
    /// key comes from the environment), with `env_key` (base64url) as the current key if set.
    pub fn load_or_generate(data_dir: &Path, env_key: Option<&str>) -> anyhow::Result<Keyring> {
        let dir = data_dir.join("keys");
        let mut files = key_files(&dir)?;
        if files.is_empty() && env_key.is_none() {
            files.push(generate_key(data_dir)?);
        }
        let mut keys = files
            .iter()
            .map(|f| {
                key_of(&std::fs::read(f)?).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))
            })
            .collect::<anyhow::Result<Vec<Key>>>()?;
        if let Some(k) = env_key {
            let bytes = URL_SAFE_NO_PAD
                .decode(k.trim().trim_end_matches('='))
                .map_err(|e| anyhow::anyhow!("{DATA_KEY_ENV}: not base64url: {e}"))?;
            let key = key_of(&bytes).map_err(|e| anyhow::anyhow!("{DATA_KEY_ENV}: {e}"))?;
            keys.retain(|k| k.id != key.id);
            keys.push(key);
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// From raw 32-byte keys, the last current (for tests and tools).
    pub fn from_keys(keys: &[[u8; 32]]) -> anyhow::Result<Keyring> {
        Ok(Keyring {
            keys: keys
                .iter()
                .map(|k| key_of(k))
                .collect::<anyhow::Result<_>>()?,
            rng: SystemRandom::new(),
        })
    }

    fn current(&self) -> Result<&Key, SealError> {
        self.keys.last().ok_or(SealError::Seal)
    }

    /// The current key's id, hex.
    pub fn current_id(&self) -> String {
        self.keys
            .last()
            .map(|k| hex::encode(k.id))
            .unwrap_or_default()
    }

    /// Every key's id, hex, the current one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().rev().map(|k| hex::encode(k.id)).collect()
    }

    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.current()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// A sealed text kept as hex (a reason, a note), opened under `name`: `None` if it does not
    /// open (or is not UTF-8).
    pub fn open_text(&self, name: &str, sealed_hex: &str) -> Option<String> {
        let sealed = hex::decode(sealed_hex).ok()?;
        String::from_utf8(self.open(name, &sealed).ok()?).ok()
    }

    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < HEADER + 16 || sealed[0] != VERSION {
            return Err(SealError::Format);
        }
        let id = &sealed[1..1 + KID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(hex::encode(id)))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1 + KID_LEN..HEADER])
            .map_err(|_| SealError::Format)?;
        let mut body = sealed[HEADER..].to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }

    /// The tag of `data` under `purpose` (`purpose` and `data` length-framed, so that no two
    /// pairs are the same bytes), by the current key.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> Result<[u8; TAG_LEN], SealError> {
        Ok(tag_of(&self.current()?.mac, purpose, data))
    }

    /// Whether `tag` is `data`'s under `purpose` by a key of the ring (compared in constant
    /// time).
    pub fn mac_matches(&self, purpose: &str, data: &[u8], tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.keys
            .iter()
            .any(|k| bool::from(tag_of(&k.mac, purpose, data).ct_eq(tag)))
    }

    /// Whether `sealed` is sealed with the current key (else `reseal` seals it again).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        self.keys
            .last()
            .is_some_and(|k| sealed.get(1..1 + KID_LEN) == Some(&k.id[..]))
    }

    /// `sealed` (named `name`) sealed again with the current key, or `None` when it already
    /// is: what `patients rekey` does to every sealed value after `keys rotate-data`.
    pub fn reseal(&self, name: &str, sealed: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        if self.is_current(sealed) {
            return Ok(None);
        }
        let plain = self.open(name, sealed)?;
        self.seal(name, &plain).map(Some)
    }
}

/// How many random bytes salt a commitment to a text (a reason, a note).
pub const SALT_LEN: usize = 32;

/// A short text that goes off this service only as its commitment, SHA-256(salt ‖ text) with
/// `SALT_LEN` random bytes of salt (a clinician's reason, a reviewer's note: often one of a few
/// phrases, whose own SHA-256 a guess finds), sealed with its salt as `salt ‖ text` under a
/// name of its own; one sealed before salts (the text alone, under another name) has none.
/// Whoever may read the text gets its salt with it, to check the commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub text: String,
    pub salt: Option<[u8; SALT_LEN]>,
}

impl Committed {
    /// The commitment: SHA-256(salt ‖ text), or the text's own for one without a salt.
    pub fn commitment(&self) -> [u8; 32] {
        commitment(
            self.salt.as_ref().map(|s| &s[..]).unwrap_or_default(),
            &self.text,
        )
    }

    /// `salt ‖ text`, as sealed (the text alone without a salt).
    pub fn plain(&self) -> Vec<u8> {
        let mut plain = self.salt.map(|s| s.to_vec()).unwrap_or_default();
        plain.extend_from_slice(self.text.as_bytes());
        plain
    }
}

/// SHA-256(salt ‖ text).
pub fn commitment(salt: &[u8], text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(text.as_bytes());
    h.finalize().into()
}

/// Which of the two names a committed text was sealed under (`true`: `salted`, with its salt;
/// `false`: `plain`, from before salts), and its bytes opened once.
pub fn open_either(
    keyring: &Keyring,
    salted: &str,
    plain: &str,
    sealed: &[u8],
) -> Result<(bool, Vec<u8>), SealError> {
    if let Ok(bytes) = keyring.open(salted, sealed) {
        return Ok((true, bytes));
    }
    Ok((false, keyring.open(plain, sealed)?))
}

/// A committed text sealed under `salted` (with its salt) or `plain` (before salts), opened:
/// `None` if it opens under neither, or is not UTF-8.
pub fn open_committed(
    keyring: &Keyring,
    salted: &str,
    plain: &str,
    sealed_hex: &str,
) -> Option<Committed> {
    let sealed = hex::decode(sealed_hex).ok()?;
    let (with_salt, bytes) = open_either(keyring, salted, plain, &sealed).ok()?;
    if !with_salt {
        return Some(Committed {
            text: String::from_utf8(bytes).ok()?,
            salt: None,
        });
    }
    let (salt, text) = bytes.split_at_checked(SALT_LEN)?;
    Some(Committed {
        text: String::from_utf8(text.to_vec()).ok()?,
        salt: Some(salt.try_into().ok()?),
    })
}

/// A committed text sealed under `salted` or `plain` sealed again with the current key under
/// the name it had, or `None` when it already is.
pub fn reseal_either(
    keyring: &Keyring,
    salted: &str,
    plain: &str,
    sealed: &[u8],
) -> anyhow::Result<Option<Vec<u8>>> {
    if keyring.is_current(sealed) {
        return Ok(None);
    }
    let (with_salt, bytes) = open_either(keyring, salted, plain, sealed)?;
    let name = if with_salt { salted } else { plain };
    Ok(Some(keyring.seal(name, &bytes)?))
}

fn tag_of(key: &hmac::Key, purpose: &str, data: &[u8]) -> [u8; TAG_LEN] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(purpose.len() as u64).to_be_bytes());
    ctx.update(purpose.as_bytes());
    ctx.update(data);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&ctx.sign().as_ref()[..TAG_LEN]);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseal_moves_what_an_older_key_sealed_to_the_current_one_only() {
        let old = Keyring::from_keys(&[[1; 32]]).unwrap();
        let ring = Keyring::from_keys(&[[1; 32], [2; 32]]).unwrap();
        let sealed = old.seal("reason:a", b"unresponsive").unwrap();
        let again = ring.reseal("reason:a", &sealed).unwrap().unwrap();
        assert!(ring.is_current(&again));
        assert_eq!(ring.open("reason:a", &again).unwrap(), b"unresponsive");
        assert!(ring.reseal("reason:a", &again).unwrap().is_none());
        // under another name it does not open, so it is not sealed again
        assert!(ring.reseal("reason:b", &sealed).is_err());
    }

    #[test]
    fn seals_and_opens_only_under_its_name_and_keys() {
        let old = Keyring::from_keys(&[[1; 32]]).unwrap();
        let ring = Keyring::from_keys(&[[1; 32], [2; 32]]).unwrap();
        let sealed = old.seal("contact:a", b"ana@example.org").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"ana"));
        // an older key still opens; the current one seals
        assert_eq!(ring.open("contact:a", &sealed).unwrap(), b"ana@example.org");
        assert!(!ring.is_current(&sealed));
        assert!(ring.is_current(&ring.seal("contact:a", b"x").unwrap()));
        // another name, an altered byte, an unknown key: refused
        assert!(matches!(
            ring.open("contact:b", &sealed),
            Err(SealError::Open)
        ));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ring.open("contact:a", &altered),
            Err(SealError::Open)
        ));
        let other = Keyring::from_keys(&[[3; 32]]).unwrap();
        assert!(matches!(
            other.open("contact:a", &sealed),
            Err(SealError::UnknownKey(_))
        ));
        assert!(matches!(
            ring.open("contact:a", &sealed[..10]),
            Err(SealError::Format)
        ));
        // two seals of the same value differ (fresh nonces)
        assert_ne!(old.seal("n", b"v").unwrap(), old.seal("n", b"v").unwrap());
    }

    #[test]
    fn a_tag_is_known_by_any_key_of_the_ring_and_only_for_its_purpose_and_data() {
        let old = Keyring::from_keys(&[[1; 32]]).unwrap();
        let ring = Keyring::from_keys(&[[1; 32], [2; 32]]).unwrap();
        let tag = old.mac("challenge", b"nonce").unwrap();
        assert!(old.mac_matches("challenge", b"nonce", &tag));
        // rotated: the old key's tags still match, new ones are the new key's
        assert!(ring.mac_matches("challenge", b"nonce", &tag));
        assert_ne!(ring.mac("challenge", b"nonce").unwrap(), tag);
        assert!(!old.mac_matches(
            "challenge",
            b"nonce",
            &ring.mac("challenge", b"nonce").unwrap()
        ));
        // another purpose, other data, a key not in the ring, a cut tag: no
        assert!(!ring.mac_matches("challengE", b"nonce", &tag));
        assert!(!ring.mac_matches("challeng", b"enonce", &tag));
        assert!(!ring.mac_matches("challenge", b"nonce!", &tag));
        assert!(!Keyring::from_keys(&[[3; 32]])
            .unwrap()
            .mac_matches("challenge", b"nonce", &tag));
        assert!(!ring.mac_matches("challenge", b"nonce", &tag[..8]));
        // not the data key itself used as a MAC key
        let plain = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]), b"nonce");
        assert!(!old.mac_matches("challenge", b"nonce", &plain.as_ref()[..TAG_LEN]));
    }
}

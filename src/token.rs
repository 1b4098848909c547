//! Break-glass access tokens: Ed25519-signed JWTs per RFC 9068 (`typ: at+jwt`) with SMART v2
//! scopes for the data types opened, `purpose_of_use: BTG`, the patient, the reason's hash
//! (never its text) and whether the grant was degraded; and
//! the JWKS that resource servers verify them with.
//!
//! The signing key is generated at first run into the data directory, sealed with the data key
//! (`seal.rs`; mode 0600), and named by a key id; older keys found beside it stay in the JWKS,
//! so tokens signed before a rotation keep verifying until they expire. Key files from before
//! they were sealed (`token-*.pk8`, plain PKCS#8) are sealed in place at start.
//!
//! It must not: carry the reason's text (only its hash), or keep a signing key in the clear at
//! rest.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::DataType;
use crate::seal::Keyring;
use crate::store::AccessRecord;

pub const PURPOSE_OF_USE: &str = "BTG";

/// SMART v2 granular scopes (read + search) for the data types' FHIR resources (`scope.rs`).
pub fn scopes(data_types: &[DataType]) -> Vec<String> {
    crate::scope::of_all(data_types)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub purpose_of_use: String,
    pub patient: String,
    /// The salted commitment to the clinician's reason (`access::reasons`), hex: the
    /// `reason-hash` of the chain record.
    /// Never the reason itself: resource servers log tokens, and the reason is clinical free
    /// text, kept sealed and shown only in the authorized access view.
    pub reason_hash: String,
    pub data_types: Vec<DataType>,
    /// Granted on a stale view of the chain, as a degraded-mode policy allowed.
    pub degraded: bool,
}

struct SigningKey {
    kid: String,
    /// Parsed once: jsonwebtoken's `encode` re-parses the PKCS#8 document and re-derives the
    /// public key on every call, which costs as much as the signature itself.
    pair: Ed25519KeyPair,
    public: Vec<u8>,
}

/// A token that could not be made (its parts did not encode).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("encoding the token: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct TokenIssuer {
    current: SigningKey,
    older: Vec<SigningKey>,
    pub issuer: String,
    pub audience: String,
}

fn kid_of(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12])
}

fn load_key(pkcs8: Vec<u8>) -> anyhow::Result<SigningKey> {
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("token signing key: {e}"))?;
    let public = pair.public_key().as_ref().to_vec();
    Ok(SigningKey {
        kid: kid_of(&public),
        pair,
        public,
    })
}

/// The sealed-value name of a token signing key.
const KEY_NAME: &str = "token-signing-key";

/// `data_dir/keys/token-*.<ext>`, in name (so creation) order.
fn key_files(dir: &Path, ext: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("token-") && n.ends_with(&format!(".{ext}")))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Seals every token signing key not sealed with the current data key again with it (after
/// `keys rotate-data`, with `patients rekey`). Returns how many were re-sealed.
pub fn rekey(data_dir: &Path, keyring: &Keyring) -> anyhow::Result<usize> {
    let mut n = 0;
    for f in key_files(&data_dir.join("keys"), "key")? {
        if let Some(sealed) = keyring.reseal(KEY_NAME, &std::fs::read(&f)?)? {
            crate::private_files::replace_private_bytes(&f, &sealed)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether `data_dir/keys` holds a token signing key (sealed, or plain to be sealed).
pub fn has_keys(data_dir: &Path) -> bool {
    let dir = data_dir.join("keys");
    ["key", "pk8"]
        .iter()
        .any(|ext| key_files(&dir, ext).is_ok_and(|f| !f.is_empty()))
}

impl TokenIssuer {
    /// Loads the signing keys of `data_dir/keys/token-*.key`, sealed with `keyring` (the newest
    /// signs), generating the first one when there is none.
    pub fn load_or_generate(
        data_dir: &Path,
        issuer: &str,
        audience: &str,
        keyring: &Keyring,
    ) -> anyhow::Result<TokenIssuer> {
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        // keys from before they were sealed: sealed beside, then the plain file removed
        for plain in key_files(&dir, "pk8")? {
            let pkcs8 = std::fs::read(&plain)?;
            load_key(pkcs8.clone())?;
            crate::private_files::replace_private_bytes(
                &plain.with_extension("key"),
                &keyring.seal(KEY_NAME, &pkcs8)?,
            )?;
            std::fs::remove_file(&plain)?;
        }
        let mut files = key_files(&dir, "key")?;
        if files.is_empty() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|e| anyhow::anyhow!("generating a token key: {e}"))?;
            let name = dir.join(format!("token-{}.key", crate::clock::now_ms()));
            crate::private_files::write_private_bytes(
                &name,
                &keyring.seal(KEY_NAME, pkcs8.as_ref())?,
            )?;
            files.push(name);
        }
        let mut keys: Vec<SigningKey> = files
            .into_iter()
            .map(|f| {
                let pkcs8 = keyring.open(KEY_NAME, &std::fs::read(&f)?).map_err(|e| {
                    anyhow::anyhow!("{}: not opened by the data keys ({e})", f.display())
                })?;
                load_key(pkcs8)
            })
            .collect::<anyhow::Result<_>>()?;
        let current = keys.pop().ok_or_else(|| anyhow::anyhow!("no token key"))?;
        Ok(TokenIssuer {
            current,
            older: keys,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Signs `claims` as a compact JWS (RFC 7515) with the current key: `typ: at+jwt`, `alg:
    /// EdDSA`, `kid`. Verified with jsonwebtoken (`verify`, and resource servers' libraries).
    pub fn issue(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.current.kid.clone());
        let mut jws = String::with_capacity(768);
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&header)?, &mut jws);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut jws);
        let signature = self.current.pair.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }

    /// Verifies a token's signature (by any of our keys), issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, String> {
        let claims = self.ours(token)?;
        // expired "on or after" exp (RFC 7519 4.1.4); the library lets its last second pass
        if claims.exp <= crate::clock::now_secs() {
            return Err("the token has expired".into());
        }
        Ok(claims)
    }

    /// A token of ours whose window has closed (its signature, issuer and audience verified):
    /// its claims, for the audit log of a use of it after its time; `None` for any other.
    pub fn expired(&self, token: &str) -> Option<AccessClaims> {
        self.ours(token)
            .ok()
            .filter(|c| c.exp <= crate::clock::now_secs())
    }

    /// A token's claims, its signature (by any of our keys), issuer and audience verified, its
    /// expiry not.
    fn ours(&self, token: &str) -> Result<AccessClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("the token names no key")?;
        let key = self
            .keys()
            .find(|k| k.kid == kid)
            .ok_or("the token's key is not ours")?;
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.leeway = 0;
        v.validate_exp = false; // judged by the callers, to the second
        v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss", "jti"]);
        jsonwebtoken::decode::<AccessClaims>(
            token,
            &jsonwebtoken::DecodingKey::from_ed_der(&key.public),
            &v,
        )
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
    }

    /// The signing keys, the current one first, then the newest older one first.
    fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.current).chain(self.older.iter().rev())
    }

    /// The signing keys' ids, the current one first.
    pub fn kids(&self) -> Vec<String> {
        self.keys().map(|k| k.kid.clone()).collect()
    }

    /// The public keys as a JWK Set (RFC 7517, OKP keys per RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys()
            .map(|k| json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&k.public), "kid": k.kid, "use": "sig", "alg": "EdDSA" }))
            .collect();
        json!({ "keys": keys })
    }

    /// The claims of `access`'s token.
    pub fn claims(&self, access: &AccessRecord) -> AccessClaims {
        AccessClaims {
            iss: self.issuer.clone(),
            sub: access.provider.to_string(),
            aud: self.audience.clone(),
            exp: access.expires_at,
            iat: access.granted_at,
            jti: access.id.to_string(),
            client_id: "breakglass".into(),
            scope: scopes(&access.data_types).join(" "),
            purpose_of_use: PURPOSE_OF_USE.into(),
            patient: access.patient.to_string(),
            reason_hash: access.reason_hash.clone(),
            data_types: access.data_types.clone(),
            degraded: access.degraded,
        }
    }
}

/// Where a token that verified stands now, as the store has it: what every use of it (the
/// vault, introspection, the access view) honours or refuses alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Honoured,
    /// Its access was revoked (by a resource server, or by a reviewer's verdict).
    Revoked,
    /// Its clinician (`sub`) is no longer verified on chain, as the chain-state cache has them
    /// now (suspended, or no longer registered, since the grant), whatever its expiry. A holder
    /// the cache has no entry for (one it let go: a block named them while another replica
    /// filled them) is read from the node, as any miss is: honoured only if verified there.
    HolderNotVerified,
}

impl Standing {
    /// The refusal of a token that stands so (none for one honoured): the same status and
    /// code wherever it is used.
    pub fn refusal(self) -> Option<crate::refusal::Refusal> {
        use crate::refusal::Refusal;
        match self {
            Standing::Honoured => None,
            Standing::Revoked => Some(Refusal::new(
                401,
                "token-revoked",
                "Token revoked",
                "this access was revoked",
            )),
            Standing::HolderNotVerified => Some(Refusal::new(
                403,
                "provider-not-verified",
                "Provider not verified",
                "the token's clinician is no longer verified on chain (suspended since it was issued)",
            )),
        }
    }
}

/// The refusal when a token's standing cannot be told (`standing` failed): the store could not
/// be read, or the node, asked about a clinician the cache does not hold.
pub fn standing_unknown(e: &crate::chain::state::StateError) -> crate::refusal::Refusal {
    use crate::chain::state::StateError;
    use crate::refusal::Refusal;
    match e {
        StateError::Store(_) => {
            tracing::error!(error = %e, "the store cannot tell a token's standing");
            Refusal::new(
                503,
                "store-unavailable",
                "Store unavailable",
                "the store cannot be read right now; try again",
            )
        }
        _ => {
            tracing::error!(error = %e, "the node cannot tell a token's clinician's standing");
            Refusal::new(
                503,
                "chain-state-unavailable",
                "Chain state unavailable",
                "the chain could not be asked whether the token's clinician is still verified; try again",
            )
        }
    }
}

pub async fn standing(
    state: &crate::chain::state::ChainState,
    claims: &AccessClaims,
) -> Result<Standing, crate::chain::state::StateError> {
    if state.store.revoked(&claims.jti)?.is_some() {
        return Ok(Standing::Revoked);
    }
    let Ok(holder) = claims.sub.parse::<crate::stacks::Address>() else {
        return Ok(Standing::Honoured);
    };
    Ok(if state.provider(&holder).await?.is_verified() {
        Standing::Honoured
    } else {
        Standing::HolderNotVerified
    })
}

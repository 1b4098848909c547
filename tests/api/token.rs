//! Access tokens: RFC 9068 shape, Ed25519 signatures that verify against the JWKS alone, and
//! keys kept across restarts and rotations.

use breakglass::domain::{DataType, PatientId, Role};
use breakglass::seal::Keyring;
use breakglass::store::AccessRecord;
use breakglass::token::{scopes, AccessClaims, TokenIssuer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn verify_with_jwks(jwks: &serde_json::Value, token: &str, audience: &str) -> AccessClaims {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid in the JWKS");
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
    jsonwebtoken::decode::<AccessClaims>(token, &key, &v)
        .unwrap()
        .claims
}

/// An access id named in the test (its bytes, zero-padded).
fn id_of(name: &str) -> breakglass::domain::AccessId {
    let mut id = [0u8; 32];
    id[..name.len()].copy_from_slice(name.as_bytes());
    breakglass::domain::AccessId(id)
}

fn access(id: &str, provider: &str, dts: &[DataType], exp_in: u64) -> AccessRecord {
    AccessRecord {
        id: id_of(id),
        provider: provider.parse().unwrap(),
        role: Role::Nurse,
        patient: PatientId([3; 32]),
        data_types: dts.to_vec(),
        reason_sealed: String::new(),
        reason_hash: "ab".repeat(32),
        device: None,
        nonce: 1,
        issued_at: now(),
        granted_at: now(),
        expires_at: now() + exp_in,
        window_minutes: 10,
        window_blocks: 60,
        rules: vec![],
        message_hash: String::new(),
        signature: String::new(),
        on_call: None,
        degraded: false,
        chain_lag_blocks: 0,
        patient_registered: Some(true),
    }
}

/// The data key the token keys are sealed with, as the service has it.
fn ring() -> Keyring {
    Keyring::from_keys(&[[7; 32]]).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn tokens_verify_against_the_jwks_and_carry_btg_and_smart_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let issuer =
        TokenIssuer::load_or_generate(dir.path(), "https://breakglass.example", "fhir", &ring())
            .unwrap();
    let dts = [DataType::Allergies, DataType::Medications];
    let claims = issuer.claims(&access(
        "acc-1",
        "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
        &dts,
        600,
    ));
    let token = issuer.issue(&claims).unwrap();
    let back = verify_with_jwks(&issuer.jwks(), &token, "fhir");
    assert_eq!(back, claims);
    assert_eq!(back.purpose_of_use, "BTG");
    // the reason's hash, as the chain record has it; never the reason
    assert_eq!(back.reason_hash, "ab".repeat(32));
    let payload = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(!payload.contains("\"reason\""), "{payload}");
    assert_eq!(
        back.scope,
        "patient/AllergyIntolerance.rs patient/MedicationStatement.rs patient/MedicationRequest.rs"
    );
    // a tampered token does not verify
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    let key =
        DecodingKey::from_ed_components(issuer.jwks()["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["fhir"]);
    assert!(jsonwebtoken::decode::<AccessClaims>(&parts.join("."), &key, &v).is_err());
}

#[test]
fn keys_are_kept_and_rotated_keys_stay_in_the_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let first = TokenIssuer::load_or_generate(dir.path(), "iss", "aud", &ring()).unwrap();
    let old_token = first
        .issue(&first.claims(&access(
            "a",
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
            &[DataType::Allergies],
            60,
        )))
        .unwrap();
    let again = TokenIssuer::load_or_generate(dir.path(), "iss", "aud", &ring()).unwrap();
    assert_eq!(again.jwks(), first.jwks(), "the same key after a restart");
    // sealed at rest: not a PKCS#8 document, and only the data key opens it
    let files: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        ring::signature::Ed25519KeyPair::from_pkcs8(&std::fs::read(&files[0]).unwrap()).is_err()
    );
    let stranger = Keyring::from_keys(&[[8; 32]]).unwrap();
    let refused = TokenIssuer::load_or_generate(dir.path(), "iss", "aud", &stranger)
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("not opened by the data keys"),
        "{refused}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in std::fs::read_dir(dir.path().join("keys")).unwrap() {
            assert_eq!(
                f.unwrap().metadata().unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
    // rotation: a newer key file signs from now on; the old key still verifies old tokens
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    std::fs::write(
        dir.path().join("keys/token-99999999999999.pk8"),
        pkcs8.as_ref(),
    )
    .unwrap();
    let rotated = TokenIssuer::load_or_generate(dir.path(), "iss", "aud", &ring()).unwrap();
    // the plain key file it was given is sealed in place
    assert!(!dir.path().join("keys/token-99999999999999.pk8").exists());
    assert!(dir.path().join("keys/token-99999999999999.key").exists());
    let jwks = rotated.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_ne!(jwks["keys"][0]["kid"], first.jwks()["keys"][0]["kid"]);
    verify_with_jwks(&jwks, &old_token, "aud");
    let new_token = rotated
        .issue(&rotated.claims(&access(
            "b",
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
            &[DataType::Allergies],
            60,
        )))
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        jwks["keys"][0]["kid"].as_str().unwrap()
    );
}

#[test]
fn every_data_type_has_scopes() {
    for dt in DataType::ALL {
        let s = scopes(&[*dt]);
        assert!(!s.is_empty(), "{dt}");
        assert!(s
            .iter()
            .all(|x| x.starts_with("patient/") && x.contains(".rs")));
    }
}

#[test]
fn a_token_expires_on_its_exp_second() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_generate(dir.path(), "iss", "aud", &ring()).unwrap();
    let live = issuer
        .issue(&issuer.claims(&access(
            "a",
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
            &[DataType::Allergies],
            60,
        )))
        .unwrap();
    assert_eq!(issuer.verify(&live).unwrap().jti, id_of("a").to_string());
    // exp = now: expired "on or after" exp (RFC 7519 4.1.4)
    let ending = issuer
        .issue(&issuer.claims(&access(
            "b",
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
            &[DataType::Allergies],
            0,
        )))
        .unwrap();
    assert!(issuer.verify(&ending).is_err());
}

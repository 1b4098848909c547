//! The critical-data vault end to end against the seeded devnet: importing summaries (their
//! hash recorded on chain by the service as a data custodian), reading them with break-glass
//! tokens (only what the scopes cover), every refused token and read in the audit log, and a
//! summary changed off chain (or its hash on chain) refused with the integrity code.

use breakglass::configuration::ResourceServerClient;
use breakglass::domain::PatientId;
use breakglass::stacks::Value;
use breakglass::token::{AccessClaims, TokenIssuer};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::support::*;

const ADMIN_SECRET: &str = "admin-secret-for-vault-tests";
const SYSTEM: &str = "urn:breakglass:patient-id";

/// The seeded devnet and the service, with the admin client `ops` that imports summaries.
async fn with_an_admin_client() -> Env {
    setup(|s| {
        s.admin.clients = vec![ResourceServerClient {
            id: "ops".into(),
            secret_sha256: hex::encode(Sha256::digest(ADMIN_SECRET.as_bytes())),
        }];
    })
    .await
}

async fn import(env: &Env, body: Vec<u8>) -> (u16, Json) {
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/summaries", env.app.api_addr))
        .basic_auth("ops", Some(ADMIN_SECRET))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Json::Null))
}

async fn read(env: &Env, path: &str, token: &str) -> (u16, Json, Option<String>) {
    let res = reqwest::Client::new()
        .get(format!("http://{}{path}", env.app.api_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|h| h.to_str().unwrap().to_string());
    (status, res.json().await.unwrap_or(Json::Null), cache)
}

/// The headers of a read of `path` (with `token`, if any), by name.
async fn answered_headers(
    env: &Env,
    path: &str,
    token: Option<&str>,
) -> std::collections::HashMap<String, String> {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", env.app.api_addr));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    res.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

/// A token grant for `role` on `patient`'s `data_types`.
async fn token(env: &Env, role: &str, patient: &str, data_types: &[&str], nonce: u64) -> Json {
    let p = provider(&env.demo, role);
    let (status, g) = post(
        &env.app,
        &signed(
            p["private_key"].as_str().unwrap(),
            patient,
            data_types,
            nonce,
            now(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    g
}

fn types(bundle: &Json) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect()
}

/// Every refused read's code in the audit log.
fn refused_reads(env: &Env) -> Vec<String> {
    env.app
        .store
        .audit_entries(1, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.parsed().unwrap() {
            breakglass::audit::Event::ReadRefusal { code, .. } => Some(code),
            _ => None,
        })
        .collect()
}

/// `patient`'s summary hash as the chain has it (`get-summary-hash`), hex.
async fn hash_on_chain(env: &Env, patient: &PatientId) -> String {
    env.app
        .follower
        .state
        .rpc
        .call_read(
            &format!("{}.access-control", deployer()),
            "get-summary-hash",
            &[Value::buffer(patient.0)],
            &deployer(),
        )
        .await
        .unwrap()
        .to_hex()
}

/// Revokes the token of grant `g`, as the revocation endpoint writes it.
async fn revoke(env: &Env, g: &Json) {
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            revoked: vec![(g["access_id"].as_str().unwrap().to_string(), now() + 600)],
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

async fn recorded(env: &Env, op: &str) {
    eventually(op, SECS, async || {
        env.devnet.mine().await;
        let s = env.app.store.submission(op).unwrap()?;
        matches!(
            s.state,
            breakglass::store::SubmissionState::Confirmed { .. }
        )
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_read_only_what_they_open_and_every_bad_read_is_refused_and_logged() {
    let env = with_an_admin_client().await;
    let patient_hex = patient(&env.demo, true).to_string();
    let other_hex = patient(&env.demo, false).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();

    // bad bundles: the reason, and nothing stored
    let stranger = PatientId([9; 32]);
    let good = breakglass::demo::summary(&stranger, SYSTEM);
    let mut no_patient = good.clone();
    no_patient["entry"].as_array_mut().unwrap().remove(1);
    let mut wrong_type = good.clone();
    wrong_type["resourceType"] = "Patient".into();
    let mut not_r4 = good.clone();
    not_r4["entry"][2]["resource"]["colour"] = "red".into();
    // another patient's allergy in this patient's summary: it would be served with this
    // patient's token
    let mut another_patients = good.clone();
    another_patients["entry"][2]["resource"]["patient"] = json!({ "reference": "Patient/other" });
    // a diagnosis held inside an allergy: an allergies token would read it
    let mut hidden = good.clone();
    hidden["entry"][2]["resource"]["contained"] = json!([{ "resourceType": "Condition",
        "id": "c", "subject": { "reference": "Patient/p" }, "code": { "text": "x" } }]);
    for (body, status, says) in [
        (b"{not json".to_vec(), 422, "not JSON"),
        (serde_json::to_vec(&wrong_type).unwrap(), 422, "Bundle"),
        (serde_json::to_vec(&no_patient).unwrap(), 422, "no Patient"),
        (
            serde_json::to_vec(&not_r4).unwrap(),
            422,
            "not valid FHIR R4",
        ),
        (
            serde_json::to_vec(&another_patients).unwrap(),
            422,
            "names another patient",
        ),
        (
            serde_json::to_vec(&hidden).unwrap(),
            422,
            "a Condition may not be contained",
        ),
        (vec![b' '; 10 * 1024 * 1024], 413, "at most"),
    ] {
        let (s, p) = import(&env, body).await;
        assert_eq!(s, status, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(says), "{p}");
        assert!(env.app.store.summary(&stranger).unwrap().is_none());
    }
    // without the admin client's credentials: refused, nothing stored
    let forged = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/summaries", env.app.api_addr))
        .basic_auth("ops", Some("not-the-secret"))
        .body(serde_json::to_vec(&good).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    assert!(env.app.store.summary(&stranger).unwrap().is_none());
    // with them, a body that does not say it is JSON (a cross-site form's): 415, nothing stored
    let form = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/summaries", env.app.api_addr))
        .basic_auth("ops", Some(ADMIN_SECRET))
        .header("content-type", "text/plain")
        .body(serde_json::to_vec(&good).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    assert!(env.app.store.summary(&stranger).unwrap().is_none());
    // a malformed principal for the tablet's options
    let bad = reqwest::get(format!(
        "http://{}/tablet/options?principal=nobody",
        env.app.api_addr
    ))
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let ops_before = env.app.store.submissions().unwrap().len();
    assert!(env
        .app
        .store
        .submissions()
        .unwrap()
        .iter()
        .all(|s| !s.id.starts_with("summary:")));

    // the demo patient's summary, its hash on chain
    let body = serde_json::to_vec(&breakglass::demo::summary(&patient_id, SYSTEM)).unwrap();
    let (s, imported) = import(&env, body.clone()).await;
    assert_eq!(s, 201, "{imported}");
    assert_eq!(imported["hash"], hex::encode(Sha256::digest(&body)));
    assert_eq!(env.app.store.submissions().unwrap().len(), ops_before + 1);
    // in the audit log once stored (the refused imports above are not): by whom, of which
    // patient, how many resources, which bytes
    assert_eq!(
        logged(&*env.app.store, "import"),
        [breakglass::audit::Event::Import {
            by: "ops".into(),
            what: "summary".into(),
            patient: Some(patient_id),
            count: imported["resources"].as_u64().unwrap(),
            hash: hex::encode(Sha256::digest(&body)),
        }]
    );
    recorded(&env, imported["operation"].as_str().unwrap()).await;

    // a nurse who opened allergies reads exactly the allergies
    let g = token(&env, "nurse", &patient_hex, &["allergies"], 1).await;
    let t = g["access_token"].as_str().unwrap().to_string();
    let (s, bundle, cache) = read(&env, &format!("/fhir/Patient/{patient_hex}/$summary"), &t).await;
    assert_eq!(s, 200, "{bundle}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(types(&bundle), ["AllergyIntolerance", "AllergyIntolerance"]);
    let (s, search, _) = read(
        &env,
        &format!("/fhir/AllergyIntolerance?patient={patient_hex}"),
        &t,
    )
    .await;
    assert_eq!((s, search["total"].as_u64()), (200, Some(2)));
    // an unscoped resource type
    let (s, p, _) = read(&env, &format!("/fhir/Condition?patient={patient_hex}"), &t).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("insufficient-scope")));

    // blood type opens the ABO observation, never the labs beside it
    let g = token(&env, "physician", &patient_hex, &["blood-type"], 2).await;
    assert!(
        g["scope"]
            .as_str()
            .unwrap()
            .contains("Observation.rs?code=http://loinc.org|882-1"),
        "{g}"
    );
    let (s, bundle, _) = read(
        &env,
        &format!("/fhir/Observation?patient={patient_hex}"),
        g["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(bundle["total"], 1, "{bundle}");
    assert_eq!(
        bundle["entry"][0]["resource"]["code"]["coding"][0]["code"],
        "882-1"
    );

    // tokens that must not read
    let data = env.dir.path().join("service");
    let keyring = breakglass::seal::Keyring::load_or_generate(&data, None).unwrap();
    let issuer = |aud: &str| {
        TokenIssuer::load_or_generate(&data, "http://127.0.0.1:8080", aud, &keyring).unwrap()
    };
    let valid = env
        .app
        .store
        .access(&g["access_id"].as_str().unwrap().parse().unwrap())
        .unwrap()
        .unwrap();
    let own = issuer("fhir");
    let mut claims: AccessClaims = own.claims(&valid);
    claims.exp = now() - 5;
    let expired = own.issue(&claims).unwrap();
    let wrong_aud = issuer("another-resource-server")
        .issue(&issuer("another-resource-server").claims(&valid))
        .unwrap();
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    let tampered = parts.join(".");
    let none = format!(
        "{}.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"at+jwt"}"#
        ),
        t.split('.').nth(1).unwrap()
    );
    let summary = format!("/fhir/Patient/{patient_hex}/$summary");
    for (what, tok, code) in [
        ("expired", expired.as_str(), "invalid-token"),
        ("wrong audience", wrong_aud.as_str(), "invalid-token"),
        ("tampered", tampered.as_str(), "invalid-token"),
        ("alg none", none.as_str(), "invalid-token"),
    ] {
        let (s, p, _) = read(&env, &summary, tok).await;
        assert_eq!((s, p["code"].as_str()), (401, Some(code)), "{what}: {p}");
        assert!(p.get("entry").is_none());
        // said as RFC 6750 says, never cached or sniffed
        let h = answered_headers(&env, &summary, Some(tok)).await;
        assert_eq!(
            [
                &h["www-authenticate"],
                &h["cache-control"],
                &h["x-content-type-options"]
            ],
            [
                "Bearer realm=\"breakglass\", error=\"invalid_token\"",
                "no-store",
                "nosniff"
            ],
            "{what}"
        );
    }
    let h = answered_headers(&env, &summary, None).await;
    assert_eq!(
        h["www-authenticate"], "Bearer realm=\"breakglass\"",
        "no token"
    );
    // the tablet's page, as served: its own origin only, never framed, cached or sniffed
    let h = answered_headers(&env, "/tablet", None).await;
    let csp = &h["content-security-policy"];
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} not in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(
        [
            &h["cache-control"],
            &h["x-content-type-options"],
            &h["referrer-policy"]
        ],
        ["no-store", "nosniff", "no-referrer"]
    );
    let h = answered_headers(&env, &summary, Some(t.as_str())).await;
    assert_eq!(
        [&h["cache-control"], &h["x-content-type-options"]],
        ["no-store", "nosniff"]
    );
    // a token for this patient does not read another's
    let (s, p, _) = read(&env, &format!("/fhir/Patient/{other_hex}/$summary"), &t).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("wrong-patient")), "{p}");
    // a revoked token
    revoke(&env, &g).await;
    let (s, p, _) = read(&env, &summary, g["access_token"].as_str().unwrap()).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("token-revoked")), "{p}");
    let logged = refused_reads(&env);
    for code in [
        "insufficient-scope",
        "invalid-token",
        "wrong-patient",
        "token-revoked",
    ] {
        assert!(logged.iter().any(|c| c == code), "{code} not in {logged:?}");
    }
    assert!(logged.iter().filter(|c| *c == "invalid-token").count() >= 4);
    // a flood of reads with a forged token: the log takes its share a minute, the rest are
    // counted (refusals of a verified token's holder are still all logged: below)
    let invalid = || {
        refused_reads(&env)
            .iter()
            .filter(|c| *c == "invalid-token")
            .count()
    };
    let before = invalid();
    let flood = 70;
    for _ in 0..flood {
        let (s, _, _) = read(&env, &summary, tampered.as_str()).await;
        assert_eq!(s, 401);
    }
    let share = breakglass::vault::ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE as usize;
    assert!(invalid() - before <= share, "{}", invalid() - before);
    assert!(
        Scrape::of(&env.app)
            .await
            .value("breakglass_vault_refusals_unlogged_total")
            >= (flood - share) as f64
    );

    // the stored summary changed off chain: refused, nothing served
    let forged = {
        let mut d = breakglass::demo::summary(&patient_id, SYSTEM);
        d["entry"][2]["resource"]["criticality"] = "low".into();
        serde_json::to_vec(&d).unwrap()
    };
    let sealed_forged = keyring
        .seal(&breakglass::seal::names::summary(&patient_id), &forged)
        .unwrap();
    let original = env.app.store.summary(&patient_id).unwrap().unwrap();
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            summaries: vec![(patient_id, Some(sealed_forged))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let fresh = token(&env, "nurse", &patient_hex, &["allergies"], 4).await;
    let ft = fresh["access_token"].as_str().unwrap().to_string();
    let (s, p, _) = read(&env, &summary, &ft).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (502, Some("summary-integrity")),
        "{p}"
    );
    assert!(p.get("entry").is_none() && !p.to_string().contains("Penicillin"));
    // put back: served again
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            summaries: vec![(patient_id, Some(original))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(read(&env, &summary, &ft).await.0, 200);
    // the hash on chain changed (a custodian recorded another): refused within the block
    let responder =
        breakglass::keys::parse_key(env.demo["responder"]["private_key"].as_str().unwrap())
            .unwrap();
    env.devnet
        .call(
            &responder,
            "access-control",
            "set-summary-hash",
            vec![
                Value::Buffer(patient_id.0.to_vec()),
                Value::Buffer(vec![0xab; 32]),
            ],
        )
        .await;
    eventually("the new hash applied", SECS, async || {
        env.devnet.mine().await;
        let h = env.app.store.summary_hash(&patient_id).unwrap()??;
        (h.hash == "ab".repeat(32)).then_some(())
    })
    .await;
    let (s, p, _) = read(&env, &summary, &ft).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (502, Some("summary-integrity")),
        "{p}"
    );
    assert!(
        refused_reads(&env)
            .iter()
            .filter(|c| *c == "summary-integrity")
            .count()
            >= 2
    );
    let reads = env
        .app
        .store
        .audit_entries(1, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.parsed().unwrap(), breakglass::audit::Event::Read { .. }))
        .count();
    assert!(reads >= 4, "every read is in the audit log: {reads}");
}

/// Runs `web/tests/tablet-flow.mjs` against the service, mining blocks meanwhile; its JSON line.
pub(crate) async fn tablet_flow(env: &Env, vars: &[(&str, String)]) -> Json {
    let mut all = vec![
        ("BASE_URL", format!("http://{}", env.app.api_addr)),
        ("OUT_DIR", env.dir.path().display().to_string()),
    ];
    all.extend(vars.iter().cloned());
    browser_flow(&env.devnet, "web/tests/tablet-flow.mjs", &all, 1000).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nurse_on_the_tablet_sees_the_allergies_for_the_window_and_no_longer() {
    let env = setup(|s| {
        s.admin.clients = vec![ResourceServerClient {
            id: "ops".into(),
            secret_sha256: hex::encode(Sha256::digest(ADMIN_SECRET.as_bytes())),
        }];
        // the patient allows 2 blocks: an 8-second window
        s.issuance.seconds_per_block = 4;
    })
    .await;
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let key = env.demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["patient_id"] == patient_hex.as_str())
        .unwrap()["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    let types = [
        "allergies",
        "medications",
        "problems",
        "blood-type",
        "advance-directives",
        "immunizations",
    ];
    env.devnet
        .set_preferences(&breakglass::keys::parse_key(&key).unwrap(), true, &types, 2)
        .await;
    // mined before anything reads the patient's preferences (the first grant does)
    env.devnet.mine().await;
    let body = serde_json::to_vec(&breakglass::demo::summary(&patient_id, SYSTEM)).unwrap();
    let (s, imported) = import(&env, body).await;
    assert_eq!(s, 201, "{imported}");
    recorded(&env, imported["operation"].as_str().unwrap()).await;

    let nurse = provider(&env.demo, "nurse");
    let result = tablet_flow(
        &env,
        &[
            (
                "CLINICIAN_KEY",
                nurse["private_key"].as_str().unwrap().to_string(),
            ),
            ("PATIENT_ID", patient_hex.clone()),
            ("DATA_TYPES", "allergies".into()),
            ("REASON", "anaphylaxis on arrival, unresponsive".into()),
            ("EXPECT_GONE", "yes".into()),
        ],
    )
    .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["resource_types"],
        serde_json::json!(["AllergyIntolerance"]),
        "{result}"
    );
    let text = result["text"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("penicillin") && text.contains("shellfish"),
        "{text}"
    );
    for never in ["glucose", "abo", "amlodipine", "hypertension"] {
        assert!(!text.contains(never), "{never} shown: {text}");
    }
    assert_eq!(result["gone"], true, "{result}");
    assert_eq!(result["read_after_window"], 401, "{result}");
    // what was actually read is in the audit log
    let reads: Vec<_> = env
        .app
        .store
        .audit_entries(1, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.parsed().unwrap() {
            breakglass::audit::Event::Read {
                resource_types,
                count,
                ..
            } => Some((resource_types, count)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reads,
        vec![(vec!["AllergyIntolerance".to_string()], 2)],
        "{reads:?}"
    );
}

/// Two summaries of `patient`: the demo's, and the same with one allergy's criticality changed.
fn two_summaries(patient: &PatientId) -> (Vec<u8>, Vec<u8>) {
    let first = breakglass::demo::summary(patient, SYSTEM);
    let mut second = first.clone();
    second["entry"][2]["resource"]["criticality"] = "low".into();
    (
        serde_json::to_vec(&first).unwrap(),
        serde_json::to_vec(&second).unwrap(),
    )
}

/// Imports each of `bodies` in turn, each recorded on chain before the next: their operations.
async fn imported_and_recorded<const N: usize>(env: &Env, bodies: [&Vec<u8>; N]) -> Vec<String> {
    let mut operations = Vec::new();
    for body in bodies {
        let (s, imported) = import(env, body.clone()).await;
        assert_eq!(s, 201, "{imported}");
        let op = imported["operation"].as_str().unwrap().to_string();
        recorded(env, &op).await;
        operations.push(op);
    }
    operations
}

/// The chain holds `body`'s hash as `patient`'s summary hash, and a nurse's token reads the
/// summary stored (not refused as changed off chain).
async fn served_as_on_chain(env: &Env, patient_hex: &str, body: &[u8]) {
    let patient_id: PatientId = patient_hex.parse().unwrap();
    assert!(
        hash_on_chain(env, &patient_id)
            .await
            .contains(&hex::encode(Sha256::digest(body))),
        "the chain holds the hash of the summary stored"
    );
    // a nonce of its own each time it is asked
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);
    let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let g = token(env, "nurse", patient_hex, &["allergies"], nonce).await;
    let (s, bundle, _) = read(
        env,
        &format!("/fhir/Patient/{patient_hex}/$summary"),
        g["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{bundle}");
}

/// A summary imported again after another replaced it is recorded on chain again: the chain
/// then holds its hash, and the vault serves it. Before, its first operation's id was found
/// and nothing was sent: the chain kept the other summary's hash, and every read of the
/// patient's summary was refused with `summary-integrity`. The same bytes as the summary
/// stored now make no new operation (a retried import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_imported_again_after_another_is_recorded_again() {
    let env = with_an_admin_client().await;
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let (first, second) = two_summaries(&patient_id);
    let operations = imported_and_recorded(&env, [&first, &second, &first]).await;
    assert_eq!(operations.len(), 3);
    assert_ne!(operations[2], operations[0], "an operation of its own");
    served_as_on_chain(&env, &patient_hex, &first).await;
    // the same bytes as stored now: no new operation, the latest named
    let ops_before = env.app.store.submissions().unwrap().len();
    let (s, imported) = import(&env, first.clone()).await;
    assert_eq!(s, 201, "{imported}");
    assert_eq!(imported["operation"].as_str(), Some(operations[2].as_str()));
    assert_eq!(env.app.store.submissions().unwrap().len(), ops_before);
}

/// A summary operation whose confirmation the follower skipped (blocks caught up by reading
/// state), its nonce since used, is found replaced by the patient's later summary: closed, not
/// signed again. Before, the chain's hash (the later one's) was not its own, so it was signed
/// again with a new nonce and ran after the later one: the chain held the first hash again, the
/// vault the later summary, and every read of it was refused (`summary-integrity`). The summary
/// stored decides which is later, not the operations' times (each importing replica's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_operation_replaced_by_a_later_one_is_not_sent_again() {
    use breakglass::store::SubmissionState;
    let env = with_an_admin_client().await;
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let (first, second) = two_summaries(&patient_id);
    let ops = imported_and_recorded(&env, [&first, &second]).await;
    let service = env.app.submitter.sender;
    let nonce_before = env.devnet.nonce(&service).await;
    // the first's confirmation skipped: it is on record as sent, its nonce used since
    let mut skipped = env.app.store.submission(&ops[0]).unwrap().unwrap();
    let SubmissionState::Confirmed {
        txid: Some(txid),
        nonce: Some(nonce),
        raw: Some(raw),
        height,
        ..
    } = skipped.state.clone()
    else {
        panic!("{skipped:?}");
    };
    skipped.state = SubmissionState::Sent {
        txid,
        nonce,
        raw,
        sent_at_height: height,
        broadcasts: 1,
    };
    // made on a replica whose clock ran a minute ahead: by the operations' times it is the
    // later one; the summary stored (imported after it) says otherwise
    let later = env.app.store.submission(&ops[1]).unwrap().unwrap();
    skipped.created_at_ms = later.created_at_ms + 60_000;
    written(&env, skipped).await;
    env.app
        .status
        .skipped_blocks
        .store(true, std::sync::atomic::Ordering::SeqCst);
    env.app.submitter.reconcile().await.unwrap();
    env.app.submitter.tick().await.unwrap();
    env.devnet.mine().await;
    let closed = env.app.store.submission(&ops[0]).unwrap().unwrap();
    assert!(
        matches!(&closed.state, SubmissionState::Confirmed { result, .. } if result.contains("later summary")),
        "{closed:?}"
    );
    assert_eq!(
        env.devnet.nonce(&service).await,
        nonce_before,
        "nothing signed again"
    );
    served_as_on_chain(&env, &patient_hex, &second).await;
}

/// Two summaries of a patient imported at once on two replicas: the one whose write lands last
/// is stored, whatever order the replicas' clocks gave their operations, and both operations
/// wait for the submitter's next tick. Only the stored summary's is signed, and the other's
/// closed unsent: the chain ends with the stored one's hash, and the vault serves it. Before,
/// both were signed in their times' order, and with the stored summary's operation the
/// earlier, the chain ended with the other's hash: every read of the patient's summary refused
/// (`summary-integrity`) until it was imported again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_summaries_imported_at_once_the_stored_ones_hash_ends_on_chain() {
    use breakglass::store::SubmissionState;
    let env = with_an_admin_client().await;
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let (first, second) = two_summaries(&patient_id);
    let keyring =
        breakglass::seal::Keyring::load_or_generate(&env.dir.path().join("service"), None).unwrap();
    let operation =
        |body: &[u8]| breakglass::vault::operation(&patient_id, &Sha256::digest(body).into());
    // what the two imports leave, written as one (so that the submitter finds both pending):
    // the first summary stored, its operation made by a replica whose clock ran a minute
    // behind the second's
    let (mut stored, other) = (operation(&first), operation(&second));
    stored.created_at_ms = other.created_at_ms - 60_000;
    // `body` stored as the patient's summary (sealed, with its digest), with `submissions`
    let stored_with = |body: &[u8], submissions| {
        let sealed = keyring
            .seal(&breakglass::seal::names::summary(&patient_id), body)
            .unwrap();
        breakglass::store::apply_async(
            &env.app.store,
            breakglass::store::Batch {
                summaries: vec![(patient_id, Some(sealed.clone()))],
                summary_digests: vec![(
                    patient_id,
                    Some(breakglass::store::SummaryDigest::of(body, &sealed)),
                )],
                submissions,
                ..Default::default()
            },
        )
    };
    let service = env.app.submitter.sender;
    let nonce_before = env.devnet.nonce(&service).await;
    stored_with(&first, vec![stored.clone(), other.clone()])
        .await
        .unwrap();
    recorded(&env, &stored.id).await;
    let closed = env.app.store.submission(&other.id).unwrap().unwrap();
    assert!(
        matches!(&closed.state, SubmissionState::Confirmed { txid: None, result, .. } if result.contains("before it was signed")),
        "{closed:?}"
    );
    assert_eq!(
        env.devnet.nonce(&service).await,
        nonce_before + 1,
        "one transaction: the stored summary's"
    );
    served_as_on_chain(&env, &patient_hex, &first).await;
    // each stored after all, then imported again: recorded by an operation of its own, not
    // by the one it had. The second over its operation closed unsent (an import of it that
    // read its operation open, and landed after it was closed); then the first over the
    // second's recorded hash (an import of it that reused its operation, mined, and landed
    // after the second was recorded)
    for (body, had) in [(&second, &other.id), (&first, &stored.id)] {
        stored_with(body, Vec::new()).await.unwrap();
        let (s, imported) = import(&env, body.clone()).await;
        assert_eq!(s, 201, "{imported}");
        let again = imported["operation"].as_str().unwrap();
        assert_ne!(again, had, "an operation of its own");
        recorded(&env, again).await;
        served_as_on_chain(&env, &patient_hex, body).await;
    }
}

/// A token revoked while the vault checks the summary against the chain (its hash not cached:
/// the vault asks the node, and waits) is refused when the check is done: the revocation is
/// looked at again before anything is served. Before, it was looked at only first, and the
/// summary went out after the revocation was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_while_the_vault_asks_the_node_is_refused() {
    let mut proxied = None;
    let env = setup(|s| {
        s.admin.clients = vec![ResourceServerClient {
            id: "ops".into(),
            secret_sha256: hex::encode(Sha256::digest(ADMIN_SECRET.as_bytes())),
        }];
        proxied = Some(HoldingProxy::in_front_of_node(s));
    })
    .await;
    let proxy = proxied.unwrap();
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let body = serde_json::to_vec(&breakglass::demo::summary(&patient_id, SYSTEM)).unwrap();
    let (s, imported) = import(&env, body).await;
    assert_eq!(s, 201, "{imported}");
    recorded(&env, imported["operation"].as_str().unwrap()).await;
    let g = token(&env, "nurse", &patient_hex, &["allergies"], 1).await;
    let t = g["access_token"].as_str().unwrap().to_string();
    let summary = format!("/fhir/Patient/{patient_hex}/$summary");
    let (s, bundle, _) = read(&env, &summary, &t).await;
    assert_eq!(s, 200, "{bundle}");

    // the summary's hash no longer cached: the next read asks the node, and while the node's
    // answer is held, the token is revoked
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            uncached: breakglass::store::Uncached {
                summary_hashes: vec![patient_id],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (told, done) = proxy.hold(patient_hex.clone());
    let revoke = async {
        told.await.unwrap();
        revoke(&env, &g).await;
        done.send(()).unwrap();
    };
    let ((s, p, _), ()) = tokio::join!(read(&env, &summary, &t), revoke);
    assert_eq!((s, p["code"].as_str()), (401, Some("token-revoked")), "{p}");
    assert!(refused_reads(&env).iter().any(|c| c == "token-revoked"));
}

/// Operation `id` put in `state` in the store (what the submitter or the follower would
/// write), not on chain.
async fn settled(env: &Env, id: &str, state: breakglass::store::SubmissionState) {
    // written again until it stays so for a tick of the submitter: this write is made outside
    // the lock the submitter's and the follower's writes hold (`apply_lock`), so one of theirs
    // read before it may land after it
    eventually(id, SECS, async || {
        let mut op = env.app.store.submission(id).unwrap().unwrap();
        if op.state != state {
            op.state = state.clone();
            written(env, op).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        (env.app.store.submission(id).unwrap().unwrap().state == state).then_some(())
    })
    .await;
}

/// `op` written to the store as it is.
async fn written(env: &Env, op: breakglass::store::Submission) {
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            submissions: vec![op],
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// A summary updated is read as the chain has it until the chain has the update's hash: the
/// summary before it, with an `OperationOutcome` saying so, then the update. Before, every read
/// between was refused (502 `summary-integrity`) and logged as a summary changed off chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_summary_is_read_as_the_chain_has_it_until_the_chain_has_the_update() {
    let env = with_an_admin_client().await;
    let patient_hex = patient(&env.demo, true).to_string();
    let patient_id: PatientId = patient_hex.parse().unwrap();
    let (first, second) = two_summaries(&patient_id);
    let mut third: Json = serde_json::from_slice(&second).unwrap();
    third["entry"][2]["resource"]["criticality"] = "unable-to-assess".into();
    let third = serde_json::to_vec(&third).unwrap();
    imported_and_recorded(&env, [&first]).await;
    let g = token(&env, "nurse", &patient_hex, &["allergies"], 1).await;
    let path = format!("/fhir/Patient/{patient_hex}/$summary");
    let reads = async || {
        let (s, bundle, _) = read(&env, &path, g["access_token"].as_str().unwrap()).await;
        assert_eq!(s, 200, "{bundle}");
        let entries = bundle["entry"].as_array().unwrap().clone();
        let criticality = entries
            .iter()
            .find(|e| e["resource"]["id"] == "a1")
            .map(|e| e["resource"]["criticality"].clone())
            .unwrap();
        let said = entries.iter().any(|e| {
            e["resource"]["resourceType"] == "OperationOutcome" && e["search"]["mode"] == "outcome"
        });
        (criticality, said, bundle["total"].clone())
    };
    assert_eq!(reads().await, (json!("high"), false, json!(2)));
    // updated, twice, neither on chain yet: the summary the chain has is read, and said so
    for body in [&second, &third] {
        let (s, imported) = import(&env, body.clone()).await;
        assert_eq!(s, 201, "{imported}");
        assert_eq!(reads().await, (json!("high"), true, json!(2)));
    }
    // once the chain has the latest's hash: it
    let op = format!(
        "summary:{patient_hex}:{}",
        hex::encode(Sha256::digest(&third))
    );
    recorded(&env, &op).await;
    eventually("the update read", SECS, async || {
        (reads().await == (json!("unable-to-assess"), false, json!(2))).then_some(())
    })
    .await;
    // the first imported again (its first operation mined long ago, the chain's hash another's
    // since), then another: the summary kept is still the one the chain has, and is read
    // (before, the first's old confirmed operation counted it as on chain: it was kept instead,
    // and the reads refused 409)
    for body in [first.clone(), {
        let mut fifth: Json = serde_json::from_slice(&third).unwrap();
        fifth["entry"][2]["resource"]["criticality"] = "low".into();
        fifth["entry"][3]["resource"]["criticality"] = "unable-to-assess".into();
        serde_json::to_vec(&fifth).unwrap()
    }] {
        let (s, imported) = import(&env, body).await;
        assert_eq!(s, 201, "{imported}");
    }
    assert_eq!(reads().await, (json!("unable-to-assess"), true, json!(2)));
    // an update the chain will not have (its operation failed): not on its way, so the chain
    // and the store disagree, and nothing is served, as before (not the kept summary)
    let mut fourth: Json = serde_json::from_slice(&third).unwrap();
    fourth["entry"][3]["resource"]["criticality"] = "high".into();
    let (s, imported) = import(&env, serde_json::to_vec(&fourth).unwrap()).await;
    assert_eq!(s, 201, "{imported}");
    let refused_op = imported["operation"].as_str().unwrap().to_string();
    settled(
        &env,
        &refused_op,
        breakglass::store::SubmissionState::Failed {
            txid: "00".repeat(32),
            height: 1,
            result: "(err u226)".into(),
            nonce: None,
            raw: None,
        },
    )
    .await;
    let (s, bundle, _) = read(&env, &path, g["access_token"].as_str().unwrap()).await;
    assert_eq!(
        (s, &bundle["code"]),
        (502, &json!("summary-integrity")),
        "{bundle}"
    );
    // the same bytes imported again: an operation of their own, the refused one recording
    // nothing (before, it was named again, nothing was sent, and the reads stayed refused)
    let (s, again) = import(&env, serde_json::to_vec(&fourth).unwrap()).await;
    assert_eq!(s, 201, "{again}");
    let op = again["operation"].as_str().unwrap();
    assert_ne!(op, refused_op);
    assert!(env.app.store.submission(op).unwrap().unwrap().is_open());
    // an update whose operation is on record as mined, in a block after the chain's hash the
    // cache holds (the submitter found it so before the follower applied that block): on its
    // way still, the kept summary read (before: 502 and an integrity alarm until the cache
    // caught up)
    let mut sixth: Json = serde_json::from_slice(&third).unwrap();
    sixth["entry"][3]["resource"]["criticality"] = "unable-to-assess".into();
    let (s, imported) = import(&env, serde_json::to_vec(&sixth).unwrap()).await;
    assert_eq!(s, 201, "{imported}");
    settled(
        &env,
        imported["operation"].as_str().unwrap(),
        breakglass::store::SubmissionState::Confirmed {
            txid: None,
            height: 1_000_000,
            result: "(ok u9)".into(),
            nonce: None,
            raw: None,
        },
    )
    .await;
    assert_eq!(reads().await, (json!("unable-to-assess"), true, json!(2)));
}

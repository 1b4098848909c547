//! Break-glass issuance end to end, against the devnet seeded with demo identities: requests
//! signed by @stacks/transactions (as a tablet would), every refusal with its code and no
//! trace, tokens that verify against the JWKS, and the access on chain within two blocks.

mod support;

use breakglass::keys::parse_key;
use breakglass::stacks::Value;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value as Json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_breaks_the_glass_and_the_access_lands_on_chain() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let jwks = get(app, "/.well-known/jwks.json").await;
    let pid = patient(demo, true);
    let cases = [
        ("physician", vec!["allergies", "advance-directives"], 15),
        ("nurse", vec!["allergies", "medications"], 10),
        ("paramedic", vec!["blood-type", "problems"], 10),
        ("pharmacist", vec!["medications"], 10),
    ];
    let mut previous_token: Option<String> = None;
    for (i, (role, dts, minutes)) in cases.iter().enumerate() {
        let p = provider(demo, role);
        let (status, body) = post(
            app,
            &signed(
                p["private_key"].as_str().unwrap(),
                pid,
                dts,
                100 + i as u64,
                now(),
            ),
        )
        .await;
        assert_eq!(status, 201, "{role}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], minutes * 60);
        let id = body["access_id"].as_str().unwrap();

        // the token verifies against the JWKS alone
        let token = body["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["fhir"]);
        let claims = jsonwebtoken::decode::<Json>(
            token,
            &DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], p["principal"]);
        assert_eq!(claims["jti"], id);
        assert_eq!(claims["purpose_of_use"], "BTG");
        assert_eq!(claims["patient"], pid);
        assert_eq!(claims["scope"], body["scope"]);
        assert!(claims["scope"].as_str().unwrap().starts_with("patient/"));

        // pending or submitted here, then on chain within two blocks
        let state = get(app, &format!("/v1/accesses/{id}")).await;
        assert!(
            ["pending", "submitted"].contains(&state["chain"]["state"].as_str().unwrap()),
            "{state}"
        );
        assert!(
            state.get("reason").is_none(),
            "the reason stays out of this view"
        );
        // anyone with the id (it is on chain) follows the record; only the token's holder
        // sees who opened what
        assert_eq!(state["view"], "public", "{state}");
        assert!(state.get("provider").is_none() && state.get("on_call").is_none());
        let (ok, full) = access_with_token(app, id, token).await;
        assert_eq!((ok, &full["view"]), (200, &json!("full")), "{full}");
        assert_eq!(full["provider"], p["principal"]);
        assert_eq!(full["data_types"], json!(dts));
        assert!(full.get("reason").is_none(), "{full}");
        if let Some(other) = &previous_token {
            let (refused, problem) = access_with_token(app, id, other).await;
            assert_eq!(
                (refused, &problem["code"]),
                (401, &json!("invalid-credentials"))
            );
        }
        let (refused, _) = access_with_token(app, id, "not-a-token").await;
        assert_eq!(refused, 401);
        previous_token = Some(token.to_string());
        eventually("submitted", SECS, async || {
            (get(app, &format!("/v1/accesses/{id}")).await["chain"]["state"] == "submitted")
                .then_some(())
        })
        .await;
        let start = devnet.tip().await;
        devnet.mine().await;
        let confirmed = eventually("confirmed", SECS, async || {
            let s = get(app, &format!("/v1/accesses/{id}")).await;
            (s["chain"]["state"] == "confirmed").then_some(s)
        })
        .await;
        assert!(confirmed["chain"]["block_height"].as_u64().unwrap() <= start + 2);
        let shown = on_chain(app, id).await;
        assert!(
            shown.contains(p["principal"].as_str().unwrap())
                && shown.contains(&format!("(provider-role \"{role}\")")),
            "{shown}"
        );
        assert!(
            !shown.contains("anaphylaxis"),
            "only the reason's hash goes on chain"
        );
    }

    // operators see how long grants take, and their durable writes
    let m = reqwest::get(format!("http://{}/metrics", app.api_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} in {m}"))
    };
    let grants = cases.len() as f64;
    assert_eq!(value("breakglass_grants_total "), grants);
    assert_eq!(value("breakglass_grant_duration_seconds_count "), grants);
    assert_eq!(
        value("breakglass_audit_write_duration_seconds_count "),
        grants
    );
    assert!(value("breakglass_grant_duration_seconds_sum ") > 0.0);
    // the journal also wrote what the follower and the submitter stored
    assert!(value("breakglass_store_journal_write_duration_seconds_count ") >= grants);
    assert!(
        value("breakglass_audit_write_duration_seconds_sum ")
            < value("breakglass_grant_duration_seconds_sum "),
        "the durable write is a part of each grant"
    );
}

/// `provider` (a demo clinician) asks for `patient`'s allergies, now, with `nonce`.
async fn ask_for_allergies(
    app: &breakglass::startup::Application,
    provider: &Json,
    patient: &str,
    nonce: u64,
) -> (u16, Json) {
    let key = provider["private_key"].as_str().unwrap();
    post(app, &signed(key, patient, &["allergies"], nonce, now())).await
}

/// The demo authority suspends `provider`; returns once the service has applied that block.
async fn suspend(env: &Env, provider: &Json) {
    let authority = parse_key(env.demo["authority"]["private_key"].as_str().unwrap()).unwrap();
    env.devnet
        .call(
            &authority,
            "access-control",
            "suspend-provider",
            vec![Value::Principal(
                provider["principal"].as_str().unwrap().parse().unwrap(),
            )],
        )
        .await;
    mine_applied(&env.app, &env.devnet, "suspension applied").await;
}

/// The access's record on chain, in Clarity notation.
async fn on_chain(app: &breakglass::startup::Application, access_id: &str) -> String {
    app.follower
        .state
        .rpc
        .call_read(
            &format!("{}.access-control", deployer()),
            "get-emergency-access",
            &[Value::buffer(hex::decode(access_id).unwrap())],
            &deployer(),
        )
        .await
        .unwrap()
        .to_string()
}

/// Mines one block and waits until the service has applied it.
async fn mine_applied(app: &breakglass::startup::Application, devnet: &Devnet, what: &str) {
    let before = devnet.tip().await;
    devnet.mine().await;
    eventually(what, SECS, async || {
        (app.status.applied() > before).then_some(())
    })
    .await;
}

/// A key no provider registered.
const UNKNOWN_KEY: &str = "32dbccc75cc0e55e357086cba78b121454b8bf67952ba20a9dd36aba46ce1e9f01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_code_and_leaves_no_trace() {
    let env = setup(|s| s.issuance.grants_per_minute = 2).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let key = |role: &str| {
        provider(demo, role)["private_key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let yes = patient(demo, true);
    let no = patient(demo, false);
    let t = now();

    // a provider registered but not verified
    let pending = new_key();
    devnet.fund(&address_of(&pending)).await;
    devnet
        .call(
            &pending,
            "access-control",
            "register-provider",
            vec![
                Value::buffer([1u8; 32]),
                Value::ascii("nurse"),
                Value::buffer([2u8; 32]),
            ],
        )
        .await;
    devnet.mine().await;
    let pending_hex = format!("{}01", hex::encode(pending.secret_bytes()));

    let good = signed(&key("nurse"), yes, &["allergies"], 1, t);
    let mut bad_sig: Json = serde_json::from_str(&good).unwrap();
    let s = bad_sig["signature"].as_str().unwrap().to_string();
    // r = 0 is no signature at all (a flipped byte would recover some other key, an unknown
    // provider, which the next case covers)
    bad_sig["signature"] = json!(format!("{}{}", "0".repeat(64), &s[s.len() - 66..]));
    let mut short_sig: Json = serde_json::from_str(&good).unwrap();
    short_sig["signature"] = json!(&s[..s.len() - 2]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{oops".into(), 400, "malformed-request"),
        (
            "wrong types",
            json!({ "message": "0x0100000000000000000000000000000001", "signature": "0x00" })
                .to_string(),
            400,
            "malformed-request",
        ),
        (
            "huge body",
            format!("{{\"message\":\"{}\"}}", "0".repeat(40_000)),
            413,
            "request-too-large",
        ),
        ("bad signature", bad_sig.to_string(), 401, "bad-signature"),
        (
            "short signature",
            short_sig.to_string(),
            401,
            "bad-signature",
        ),
        (
            "stale",
            signed(&key("nurse"), yes, &["allergies"], 2, t - 3600),
            401,
            "stale-request",
        ),
        (
            "from the future",
            signed(&key("nurse"), yes, &["allergies"], 3, t + 3600),
            401,
            "stale-request",
        ),
        (
            "unknown provider",
            signed(UNKNOWN_KEY, yes, &["allergies"], 4, t),
            403,
            "unknown-provider",
        ),
        (
            "not verified",
            signed(&pending_hex, yes, &["allergies"], 5, t),
            403,
            "provider-not-verified",
        ),
        (
            "not on call",
            signed(&key("admin"), yes, &["allergies"], 6, t),
            403,
            "not-on-call",
        ),
        (
            "patient opted out",
            signed(&key("physician"), no, &["allergies"], 7, t),
            403,
            "patient-opted-out",
        ),
        (
            "type the patient does not allow",
            signed(&key("physician"), yes, &["emergency-summary"], 8, t),
            403,
            "data-type-not-allowed-by-patient",
        ),
        (
            "role may not open the type",
            signed(&key("nurse"), yes, &["advance-directives"], 9, t),
            403,
            "policy-denied",
        ),
        (
            "role never breaks glass",
            signed(&key("reviewer"), yes, &["allergies"], 10, t),
            403,
            "policy-denied",
        ),
    ];
    for (what, body, status, code) in &cases {
        let (got, problem) = post(app, body).await;
        assert_eq!(
            (got, problem["code"].as_str().unwrap_or("")),
            (*status, *code),
            "{what}: {problem}"
        );
        assert_eq!(problem["status"], *status);
        assert!(problem["type"].as_str().unwrap().ends_with(code));
        assert!(!problem["detail"].as_str().unwrap().is_empty());
        assert!(problem.get("access_token").is_none());
    }
    let (_, nurse_ad) = post(
        app,
        &signed(&key("nurse"), yes, &["advance-directives"], 11, t),
    )
    .await;
    assert_eq!(
        nurse_ad["detail"],
        "role nurse may not open advance-directives (no policy permits it)"
    );
    let (_, reviewer) = post(app, &signed(&key("reviewer"), yes, &["allergies"], 12, t)).await;
    assert!(reviewer["detail"]
        .as_str()
        .unwrap()
        .contains("reviewers-and-admins-never-break-glass"));
    assert!(
        app.store.access_ids().unwrap().is_empty(),
        "no refusal left a record"
    );
    assert!(
        app.store.open_submissions().unwrap().is_empty(),
        "no refusal queued a chain write"
    );
    // anyone can sign with a new key: what the node said of it is not kept in the store
    let unknown = address_of(&parse_key(UNKNOWN_KEY).unwrap()).to_string();
    let cached = app.store.providers().unwrap();
    assert!(!cached.contains(&unknown), "{unknown} is in {cached:?}");
    assert!(cached.contains(&address_of(&parse_key(&key("nurse")).unwrap()).to_string()));

    // replay: the same signed request twice
    let (first, _) = post(app, &good).await;
    assert_eq!(first, 201);
    let (again, problem) = post(app, &good).await;
    assert_eq!(
        (again, problem["code"].as_str().unwrap()),
        (401, "replayed-request")
    );
    // rate: two grants a minute for this test's configuration
    let (second, _) = post(app, &signed(&key("nurse"), yes, &["medications"], 13, t)).await;
    assert_eq!(second, 201);
    let third_body = signed(&key("nurse"), yes, &["problems"], 14, t);
    let (third, problem) = post(app, &third_body).await;
    assert_eq!(
        (third, problem["code"].as_str().unwrap()),
        (429, "rate-limited")
    );
    // "try again": the same signed request may be sent again (its nonce was not used up)
    let (again, problem) = post(app, &third_body).await;
    assert_eq!(
        (again, problem["code"].as_str().unwrap()),
        (429, "rate-limited")
    );
    assert_eq!(
        app.store.access_ids().unwrap().len(),
        2,
        "only the two grants were recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_servers_introspect_and_revoke_tokens() {
    use sha2::Digest;
    let secret = "s3cret-for-this-test";
    let env = setup(|s| {
        s.resource_servers.clients = vec![breakglass::configuration::ResourceServerClient {
            id: "fhir-server".into(),
            secret_sha256: hex::encode(sha2::Sha256::digest(secret.as_bytes())),
        }]
    })
    .await;
    let (app, demo) = (&env.app, &env.demo);
    let nurse = provider(demo, "nurse");
    let (status, grant) = post(
        app,
        &signed(
            nurse["private_key"].as_str().unwrap(),
            patient(demo, true),
            &["allergies"],
            1,
            now(),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let token = grant["access_token"].as_str().unwrap();
    let http = reqwest::Client::new();
    let call = async |path: &str, user: &str, pass: &str, token: &str| {
        let res = http
            .post(format!("http://{}{path}", app.api_addr))
            .basic_auth(user, Some(pass))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Json>().await.unwrap_or(Json::Null))
    };

    let (s, body) = call("/v1/token/introspect", "fhir-server", secret, token).await;
    assert_eq!(s, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], nurse["principal"]);
    assert_eq!(body["jti"], grant["access_id"]);
    assert_eq!(body["purpose_of_use"], "BTG");
    assert_eq!(body["scope"], grant["scope"]);
    // the wrong secret, or none: 401, and nothing said of the token
    assert_eq!(
        call("/v1/token/introspect", "fhir-server", "guess", token)
            .await
            .0,
        401
    );
    assert_eq!(
        call("/v1/token/revoke", "someone", secret, token).await.0,
        401
    );
    // a forged or garbled token is simply inactive
    assert_eq!(
        call(
            "/v1/token/introspect",
            "fhir-server",
            secret,
            &format!("{token}x")
        )
        .await
        .1["active"],
        false
    );
    assert_eq!(
        call("/v1/token/introspect", "fhir-server", secret, "not-a-jwt")
            .await
            .1["active"],
        false
    );

    assert_eq!(
        call("/v1/token/revoke", "fhir-server", secret, token)
            .await
            .0,
        200
    );
    assert_eq!(
        call("/v1/token/introspect", "fhir-server", secret, token)
            .await
            .1,
        json!({ "active": false })
    );
    // nor does it show the whole access any more
    let (refused, problem) =
        access_with_token(app, grant["access_id"].as_str().unwrap(), token).await;
    assert_eq!(
        (refused, &problem["code"]),
        (401, &json!("invalid-credentials"))
    );
    // revoking again, or revoking garbage, is still 200 (RFC 7009)
    assert_eq!(
        call("/v1/token/revoke", "fhir-server", secret, token)
            .await
            .0,
        200
    );
    assert_eq!(
        call("/v1/token/revoke", "fhir-server", secret, "garbage")
            .await
            .0,
        200
    );
    assert!(
        app.store
            .revoked(grant["access_id"].as_str().unwrap())
            .unwrap()
            .is_some(),
        "kept in the shared store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_changes_are_honoured_within_a_block() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let physician = provider(demo, "physician");
    let pkey = physician["private_key"].as_str().unwrap();
    let yes = demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["emergency_access"] == true)
        .unwrap();
    let pid = yes["patient_id"].as_str().unwrap();
    let (ok, grant) = post(app, &signed(pkey, pid, &["allergies"], 1, now())).await;
    assert_eq!(ok, 201);
    // let that grant's own chain record land first, so each block below holds one change
    let id = grant["access_id"].as_str().unwrap().to_string();
    let state = async || {
        get(app, &format!("/v1/accesses/{id}")).await["chain"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    eventually("submitted", SECS, async || {
        (state().await == "submitted").then_some(())
    })
    .await;
    devnet.mine().await;
    eventually("confirmed", SECS, async || {
        (state().await == "confirmed").then_some(())
    })
    .await;

    // the patient allows 3 blocks at most (30 s at 10 s a block), less than any policy's
    // window: the token lives 30 s, and the chain record is within the patient's preferences
    let patient_key = parse_key(yes["private_key"].as_str().unwrap()).unwrap();
    devnet
        .call(
            &patient_key,
            "patient-consent",
            "set-emergency-preferences",
            vec![
                Value::Bool(true),
                Value::List(vec![Value::ascii("allergies")]),
                Value::UInt(3),
            ],
        )
        .await;
    mine_applied(app, devnet, "preferences applied").await;
    let (ok, short) = post(app, &signed(pkey, pid, &["allergies"], 4, now())).await;
    assert_eq!(ok, 201, "{short}");
    assert_eq!(short["expires_in"], 30, "{short}");
    let short_id = short["access_id"].as_str().unwrap().to_string();
    let record = get(app, &format!("/v1/accesses/{short_id}")).await;
    assert_eq!(
        record["expires_at"].as_u64().unwrap() - record["granted_at"].as_u64().unwrap(),
        30,
        "{record}"
    );
    eventually("the short access on chain", SECS, async || {
        let r = get(app, &format!("/v1/accesses/{short_id}")).await;
        if r["chain"]["state"] == "submitted" {
            devnet.mine().await;
        }
        (r["chain"]["state"] == "confirmed").then_some(r)
    })
    .await;
    let recorded = on_chain(app, &short_id).await;
    assert!(
        recorded.contains("(within-preferences true)") && recorded.contains("(window u3)"),
        "{recorded}"
    );

    // the patient opts out: one block later, refused
    devnet
        .call(
            &patient_key,
            "patient-consent",
            "set-emergency-preferences",
            vec![Value::Bool(false), Value::List(vec![]), Value::UInt(60)],
        )
        .await;
    let before = devnet.tip().await;
    mine_applied(app, devnet, "opt-out applied").await;
    assert_eq!(devnet.tip().await, before + 1);
    let (status, problem) = post(app, &signed(pkey, pid, &["allergies"], 2, now())).await;
    assert_eq!(
        (status, problem["code"].as_str().unwrap()),
        (403, "patient-opted-out")
    );

    // the authority suspends the nurse: one block later, refused
    let nurse = provider(demo, "nurse");
    suspend(&env, nurse).await;
    let (status, problem) = ask_for_allergies(app, nurse, pid, 3).await;
    assert_eq!(
        (status, problem["code"].as_str().unwrap()),
        (403, "provider-not-verified")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_granted_before_a_suspension_still_lands_on_chain() {
    // the submitter broadcasts only when this test says so
    let env = setup(|s| s.submitter.interval_ms = 3_600_000).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let nurse = provider(demo, "nurse");
    let pid = patient(demo, true);
    let (ok, grant) = ask_for_allergies(app, nurse, pid, 1).await;
    assert_eq!(ok, 201, "{grant}");
    let id = grant["access_id"].as_str().unwrap().to_string();

    // the authority suspends the nurse in the block before the record is mined
    suspend(&env, nurse).await;

    // the access happened: it is recorded all the same, with the status the nurse has now
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    let confirmed = eventually("confirmed", SECS, async || {
        let a = get(app, &format!("/v1/accesses/{id}")).await;
        (a["chain"]["state"] == "confirmed").then_some(a)
    })
    .await;
    assert!(confirmed["chain"]["txid"].is_string(), "{confirmed}");
    let recorded = on_chain(app, &id).await;
    assert!(
        recorded.contains("(provider-status \"suspended\")"),
        "{recorded}"
    );
}

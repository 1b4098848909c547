//! Break-glass issuance end to end, against the devnet seeded with demo identities: requests
//! signed by @stacks/transactions (as a tablet would), every refusal with its code and no
//! trace, tokens that verify against the JWKS, and the access on chain within two blocks.

use crate::support::*;
use breakglass::keys::parse_key;
use breakglass::stacks::Value;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value as Json};

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
        // the reason: not to the token's holder, as not in the token, which carries its hash
        // alone (resource servers log tokens); admin clients read it (tests/api/notify.rs)
        let reason = "unresponsive on arrival, suspected anaphylaxis";
        assert!(full["reason"].is_null(), "{full}");
        assert!(!full.to_string().contains("anaphylaxis"), "{full}");
        // its hash is salted (`access::reasons`): the SHA-256 of the reason alone, which anyone
        // reading the chain or a token log could find by hashing likely phrases, is not it
        let unsalted = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(reason));
        let reason_hash = full["reason_hash"].as_str().unwrap();
        assert_eq!(hex::decode(reason_hash).map(|h| h.len()), Ok(32));
        assert_ne!(reason_hash, unsalted);
        assert_eq!(claims["reason_hash"], reason_hash, "{claims}");
        assert!(
            full.get("reason_salt").is_none_or(|s| s.is_null()),
            "{full}"
        );
        assert!(claims.get("reason").is_none(), "{claims}");
        assert!(!token_payload(token).contains("anaphylaxis"));
        assert_eq!(claims["degraded"], false);
        assert_eq!(full["degraded"], false);
        assert_eq!(full["patient_registered"], true);
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
        chain_state(app, id, "submitted").await;
        // operators see the record waiting for its block, and this process submitting it
        let m = Scrape::of(app).await;
        assert_eq!(m.value("breakglass_chain_records_open"), 1.0);
        assert_eq!(m.value("breakglass_submitter_lease_held"), 1.0);
        let start = devnet.tip().await;
        devnet.mine().await;
        let confirmed = chain_state(app, id, "confirmed").await;
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
        // the token's reason hash is the chain record's
        assert!(
            shown.contains(&format!(
                "(reason-hash 0x{})",
                claims["reason_hash"].as_str().unwrap()
            )),
            "{shown}"
        );
        assert!(shown.contains("(degraded false)"), "{shown}");
    }

    // operators see how long grants take, and their durable writes
    let m = Scrape::of(app).await;
    let value = |series: &str| m.value(series);
    let grants = cases.len() as f64;
    assert_eq!(value("breakglass_grants_total"), grants);
    assert_eq!(value("breakglass_grant_duration_seconds_count"), grants);
    assert_eq!(
        value("breakglass_audit_write_duration_seconds_count"),
        grants
    );
    assert!(value("breakglass_grant_duration_seconds_sum") > 0.0);
    // the journal also wrote what the follower and the submitter stored, in groups that took
    // every grant between them
    assert!(m.assert_group_commits("journal", grants) >= grants);
    // every record confirmed: none waits; every grant followed up (its chain record and
    // notice made from the audit log)
    assert_eq!(value("breakglass_chain_records_open"), 0.0);
    assert_eq!(value("breakglass_follow_up_behind_entries"), 0.0);
    assert!(
        value("breakglass_audit_write_duration_seconds_sum")
            < value("breakglass_grant_duration_seconds_sum"),
        "the durable write is a part of each grant"
    );
}

/// Waits until the access's chain record is in `state` (the public view); that view.
async fn chain_state(app: &breakglass::startup::Application, id: &str, state: &str) -> Json {
    eventually(state, SECS, async || {
        let s = get(app, &format!("/v1/accesses/{id}")).await;
        (s["chain"]["state"] == state).then_some(s)
    })
    .await
}

/// A JWT's payload, decoded (not verified).
fn token_payload(token: &str) -> String {
    let part = token.split('.').nth(1).unwrap();
    String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).unwrap(),
    )
    .unwrap()
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
    send_suspension(env, provider).await;
    mine_applied(&env.app, &env.devnet, "suspension applied").await;
}

/// The demo authority's suspension of `provider`, sent to the mempool.
pub(crate) async fn send_suspension(env: &Env, provider: &Json) {
    send_suspension_by(&env.devnet, &env.demo, provider).await
}

/// The demo authority's suspension of `provider`, sent to `devnet`'s mempool.
pub(crate) async fn send_suspension_by(devnet: &Devnet, demo: &Json, provider: &Json) {
    let authority = parse_key(demo["authority"]["private_key"].as_str().unwrap()).unwrap();
    devnet
        .call(
            &authority,
            "access-control",
            "suspend-provider",
            vec![Value::Principal(
                provider["principal"].as_str().unwrap().parse().unwrap(),
            )],
        )
        .await;
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
pub(crate) async fn mine_applied(
    app: &breakglass::startup::Application,
    devnet: &Devnet,
    what: &str,
) {
    // the block mined, and any mined beside it (the one with the transactions sent may not be
    // the first above the tip read before)
    devnet.mine().await;
    let mined = devnet.tip().await;
    eventually(what, SECS, async || {
        (app.status.applied() >= mined).then_some(())
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
    devnet.register_nurse(&pending).await;
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
    // a refusal uses nothing up: the same signed request, sent again while fresh, is judged
    // again (only a recorded access uses its nonce)
    for (what, body, status, code) in &cases {
        for sent in ["", ", again"] {
            let (got, problem) = post(app, body).await;
            assert_eq!(
                (got, problem["code"].as_str().unwrap_or("")),
                (*status, *code),
                "{what}{sent}: {problem}"
            );
            assert_eq!(problem["status"], *status);
            assert!(problem["type"].as_str().unwrap().ends_with(code));
            assert!(!problem["detail"].as_str().unwrap().is_empty());
            assert!(problem.get("access_token").is_none());
        }
    }
    // a body declared past the bound is refused before any of it is sent
    let mut declared = stalled_post(app.api_addr, "/v1/break-glass", 10 << 20, b"").await;
    assert_eq!(answered(&mut declared, SECS).await, Some(413));
    // each counted by its code, as the refusals of the request itself are
    let m = crate::support::metrics(app).await;
    for (code, n) in [("request-too-large", 3.0), ("bad-signature", 4.0)] {
        let line = format!(r#"breakglass_refusals_total{{code="{code}"}}"#);
        assert_eq!(crate::support::metric(&m, &line), Some(n), "{line}");
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
    let unknown = address_of(&parse_key(UNKNOWN_KEY).unwrap());
    let cached = app.store.providers().unwrap();
    assert!(!cached.contains(&unknown), "{unknown} is in {cached:?}");
    assert!(cached.contains(&address_of(&parse_key(&key("nurse")).unwrap())));

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
    // "try again": the same signed request may be sent again (its nonce was not used up),
    // and the answer says when
    let again = reqwest::Client::new()
        .post(format!("http://{}/v1/break-glass", app.api_addr))
        .header("content-type", "application/json")
        .body(third_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);
    let retry_after: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    let problem: Json = again.json().await.unwrap();
    assert_eq!(problem["code"], "rate-limited");
    assert_eq!(
        app.store.access_ids().unwrap().len(),
        2,
        "only the two grants were recorded"
    );
}

/// A resource server's form post of `token` to `path` (introspect, revoke), as `user`:`pass`.
async fn as_resource_server(
    app: &breakglass::startup::Application,
    path: &str,
    user: &str,
    pass: &str,
    token: &str,
) -> (u16, Json) {
    let res = reqwest::Client::new()
        .post(format!("http://{}{path}", app.api_addr))
        .basic_auth(user, Some(pass))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Json>().await.unwrap_or(Json::Null))
}

/// The service with the resource server `fhir-server` (its secret `secret`).
async fn with_a_resource_server(secret: &str) -> Env {
    use sha2::Digest;
    setup(|s| {
        s.resource_servers.clients = vec![breakglass::configuration::ResourceServerClient {
            id: "fhir-server".into(),
            secret_sha256: hex::encode(sha2::Sha256::digest(secret.as_bytes())),
        }]
    })
    .await
}

/// A clinician suspended on chain after their grant: their token is no longer honoured,
/// whatever its expiry: introspection says inactive, the vault refuses it
/// (`provider-not-verified`), and it no longer shows the whole access. Before, all three
/// honoured it until it expired (a lost tablet, its clinician suspended, kept reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_suspended_after_the_grant_has_their_token_refused() {
    let secret = "s3cret-for-this-test";
    let mut env = with_a_resource_server(secret).await;
    let nurse = provider(&env.demo, "nurse").clone();
    let patient_hex = patient(&env.demo, true).to_string();
    let (status, grant) = ask_for_allergies(&env.app, &nurse, &patient_hex, 1).await;
    assert_eq!(status, 201, "{grant}");
    let token = grant["access_token"].as_str().unwrap();
    let introspected = async || {
        as_resource_server(
            &env.app,
            "/v1/token/introspect",
            "fhir-server",
            secret,
            token,
        )
        .await
        .1
    };
    let summary = async || {
        let res = reqwest::Client::new()
            .get(format!(
                "http://{}/fhir/Patient/{patient_hex}/$summary",
                env.app.api_addr
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Json>().await.unwrap_or(Json::Null))
    };
    assert_eq!(introspected().await["active"], true);
    let (s, before) = summary().await;
    assert_ne!(before["code"], "provider-not-verified", "{s} {before}");
    // introspection says inactive, the vault refuses it, and it no longer shows the whole
    // access
    let refused_everywhere = async || {
        assert_eq!(introspected().await, json!({ "active": false }));
        let (s, after) = summary().await;
        assert_eq!(
            (s, &after["code"]),
            (403, &json!("provider-not-verified")),
            "{after}"
        );
        // (refused as the vault refuses it: one code for one reason)
        let (refused, problem) =
            access_with_token(&env.app, grant["access_id"].as_str().unwrap(), token).await;
        assert_eq!(
            (refused, &problem["code"]),
            (403, &json!("provider-not-verified"))
        );
    };
    suspend(&env, &nurse).await;
    refused_everywhere().await;
    // nor once the cache lets the clinician go (with replicas: a block naming them, applied
    // by one replica, drops the row another filled meanwhile): a miss is read from the node,
    // not taken as verified. Before, all three honoured the token again.
    let who: breakglass::stacks::Address = nurse["principal"].as_str().unwrap().parse().unwrap();
    let mut let_go = breakglass::store::Batch::default();
    let_go.uncached.providers.push(who);
    env.app.store.apply(let_go.clone()).unwrap();
    assert_eq!(env.app.store.provider(&who).unwrap(), None);
    refused_everywhere().await;
    // and with the node away, a miss cannot be read: refused as the chain's state unavailable
    // (before, as the store's)
    env.app.store.apply(let_go).unwrap();
    env.devnet.kill().await;
    let (s, after) = summary().await;
    assert_eq!(
        (s, &after["code"]),
        (503, &json!("chain-state-unavailable")),
        "{after}"
    );
    let (refused, problem) =
        access_with_token(&env.app, grant["access_id"].as_str().unwrap(), token).await;
    assert_eq!(
        (refused, &problem["code"]),
        (503, &json!("chain-state-unavailable"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_servers_introspect_and_revoke_tokens() {
    let secret = "s3cret-for-this-test";
    let env = with_a_resource_server(secret).await;
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
    let call = async |path: &str, user: &str, pass: &str, token: &str| {
        as_resource_server(app, path, user, pass, token).await
    };

    let (s, body) = call("/v1/token/introspect", "fhir-server", secret, token).await;
    assert_eq!(s, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], nurse["principal"]);
    assert_eq!(body["jti"], grant["access_id"]);
    assert_eq!(body["purpose_of_use"], "BTG");
    assert_eq!(body["scope"], grant["scope"]);
    // the same access's token once its window has closed (made with the service's own key),
    // presented again: inactive, and that use is in the audit log too (a resource server
    // reading on after the window is what reviewers look for)
    let data = env.dir.path().join("service");
    let ring = breakglass::seal::Keyring::load_or_generate(&data, None).unwrap();
    let tokens = breakglass::token::TokenIssuer::load_or_generate(
        &data,
        body["iss"].as_str().unwrap(),
        body["aud"].as_str().unwrap(),
        &ring,
    )
    .unwrap();
    let mut ended = tokens.verify(token).expect("the service's own token");
    ended.exp = now() - 1;
    let ended = tokens.issue(&ended).unwrap();
    // a forged one (the same claims, expired, signed by a key not ours): inactive, and not
    // logged (only a use of a token we issued is)
    let elsewhere = tempfile::tempdir().unwrap();
    let forger = breakglass::token::TokenIssuer::load_or_generate(
        elsewhere.path(),
        body["iss"].as_str().unwrap(),
        body["aud"].as_str().unwrap(),
        &breakglass::seal::Keyring::load_or_generate(elsewhere.path(), None).unwrap(),
    )
    .unwrap();
    let mut forged = tokens.verify(token).unwrap();
    forged.exp = now() - 1;
    let forged = forger.issue(&forged).unwrap();
    let before = app.store.audit_head().unwrap().unwrap().seq;
    let (s, answer) = call("/v1/token/introspect", "fhir-server", secret, &forged).await;
    assert_eq!((s, &answer), (200, &json!({ "active": false })));
    assert_eq!(
        app.store.audit_head().unwrap().unwrap().seq,
        before,
        "not logged"
    );
    let logged = app.store.audit_head().unwrap().unwrap().seq;
    let (s, body) = call("/v1/token/introspect", "fhir-server", secret, &ended).await;
    assert_eq!((s, &body), (200, &json!({ "active": false })));
    let entries = app.store.audit_entries(logged + 1, 10).unwrap();
    let uses: Vec<Json> = entries
        .iter()
        .map(|e| serde_json::from_str(e.event.get()).unwrap())
        .filter(|e: &Json| e["kind"] == "introspection")
        .collect();
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert_eq!(
        (&uses[0]["jti"], &uses[0]["active"], &uses[0]["client"]),
        (&grant["access_id"], &json!(false), &json!("fhir-server")),
        "{uses:?}"
    );
    // up to a share a minute: a resource server asked with an old token each time it is shown
    // one would otherwise grow the log without end; beyond it, counted, answered the same
    let sending = std::time::Instant::now();
    for _ in 0..2 * breakglass::access::EXPIRED_INTROSPECTIONS_PER_MINUTE {
        let (s, body) = call("/v1/token/introspect", "fhir-server", secret, &ended).await;
        assert_eq!((s, &body), (200, &json!({ "active": false })));
    }
    let entries = app.store.audit_entries(logged + 1, 1_000).unwrap();
    let kinds = entries
        .iter()
        .map(|e| serde_json::from_str::<Json>(e.event.get()).unwrap())
        .filter(|e| e["kind"] == "introspection" && e["active"] == false)
        .count();
    let m = crate::support::metrics(app).await;
    let unlogged = crate::support::metric(&m, "breakglass_expired_introspections_unlogged_total")
        .unwrap_or(0.0) as usize;
    // (the share refills a token a second while they are sent)
    let share = breakglass::access::EXPIRED_INTROSPECTIONS_PER_MINUTE as usize;
    let refilled = sending.elapsed().as_secs() as usize + 2;
    assert!((share..share + refilled).contains(&kinds), "{kinds} logged");
    assert_eq!(kinds + unlogged, 2 * share + 1, "each logged or counted");
    // an authorization scheme is matched in any case (RFC 9110): `basic`, and `bearer` for the
    // access view (before, both were refused as credentials of no one)
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("fhir-server:{secret}"));
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/token/introspect", app.api_addr))
        .header("authorization", format!("basic {basic}"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Json>().await.unwrap()["active"], true);
    let id = grant["access_id"].as_str().unwrap();
    let res = reqwest::Client::new()
        .get(format!("http://{}/v1/accesses/{id}", app.api_addr))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<Json>().await.unwrap()["provider"],
        nurse["principal"]
    );
    // the wrong secret, or none: 401, and nothing said of the token
    assert_eq!(
        call("/v1/token/introspect", "fhir-server", "guess", token)
            .await
            .0,
        401
    );
    // a body that is not a form: 400, answered as OAuth answers (not the framework's text)
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/token/introspect", app.api_addr))
        .basic_auth("fhir-server", Some(secret))
        .header("content-type", "application/json")
        .body(json!({ "token": token }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let refused: Json = res.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_request", "{refused}");
    assert_eq!(
        call("/v1/token/revoke", "someone", secret, token).await.0,
        401
    );
    // credentials are checked before any of the body is read: a request without them whose
    // body never comes is answered at once (before, up to 16 KiB was read first, for anyone),
    // and a body past the bound is refused as soon as it declares so
    for path in ["/v1/token/introspect", "/v1/token/revoke"] {
        let mut stalled = stalled_post_as(
            app.api_addr,
            path,
            "application/x-www-form-urlencoded",
            1 << 10,
            b"token=",
        )
        .await;
        assert_eq!(
            answered(&mut stalled, std::time::Duration::from_secs(2)).await,
            Some(401),
            "{path}"
        );
    }
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/token/introspect", app.api_addr))
        .basic_auth("fhir-server", Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&pad={}", "x".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
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
    // nor does it show the whole access any more (refused as the vault refuses it)
    let (refused, problem) =
        access_with_token(app, grant["access_id"].as_str().unwrap(), token).await;
    assert_eq!((refused, &problem["code"]), (401, &json!("token-revoked")));
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
        .set_preferences(&patient_key, true, &["allergies"], 3)
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
    devnet.set_preferences(&patient_key, false, &[], 60).await;
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

/// A clinician the chain knows but no longer verifies sends refused requests again and again:
/// each minute, only their share of refusals goes to the audit log, the rest are counted.
/// Before, each was a synced entry: anyone who registers as a provider (pending) could grow
/// the log, beside the grants' writes, without end. And one refused request sent again (its
/// nonce is given back each time: a captured request replayed while fresh) goes to the log
/// once, so that its copies do not use up the share before the clinician's own next refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_signers_refusals_are_logged_up_to_their_share_a_minute() {
    let env = setup(|_| {}).await;
    let (app, demo) = (&env.app, &env.demo);
    let nurse = provider(demo, "nurse");
    suspend(&env, nurse).await;
    let signer: breakglass::stacks::Address = nurse["principal"].as_str().unwrap().parse().unwrap();
    let logged = || entries_with(app, "provider-not-verified", &signer.to_string());
    let before = logged();
    let request = |nonce: u64| {
        signed(
            nurse["private_key"].as_str().unwrap(),
            patient(demo, true),
            &["allergies"],
            nonce,
            now(),
        )
    };
    let refused = async |body: &str| {
        let (status, problem) = post(app, body).await;
        assert_eq!(
            (status, &problem["code"]),
            (403, &json!("provider-not-verified"))
        );
    };
    // (the share refills one entry every three seconds from the first refusal on)
    let started = std::time::Instant::now();
    // one request, sent again and again: one entry
    let replayed = request(1);
    for _ in 0..30 {
        refused(&replayed).await;
    }
    assert_eq!(logged() - before, 1);
    let unlogged = Scrape::of(app)
        .await
        .value("breakglass_refusals_unlogged_total");
    assert!(unlogged >= 29.0, "{unlogged}");
    // the nonce a refusal gave back, signed anew for another patient: another request, logged
    let other = signed(
        nurse["private_key"].as_str().unwrap(),
        patient(demo, false),
        &["allergies"],
        1,
        now(),
    );
    refused(&other).await;
    assert_eq!(logged() - before, 2);
    let before = before + 1;
    // distinct requests: the share
    let n = breakglass::access::REFUSAL_ENTRIES_PER_MINUTE as usize + 7;
    for nonce in 0..n {
        refused(&request(100 + nonce as u64)).await;
    }
    // the share, and what refilled it while the test ran (one entry every three seconds: a
    // busy machine takes longer over these requests)
    let share = breakglass::access::REFUSAL_ENTRIES_PER_MINUTE as usize;
    let refilled = (started.elapsed().as_secs_f64() * share as f64 / 60.0).ceil() as usize;
    let total = logged() - before;
    assert!(
        (share - 1..=share + refilled).contains(&total),
        "{total} logged, the share {share}, {refilled} refilled"
    );
    assert!(
        Scrape::of(app)
            .await
            .value("breakglass_refusals_unlogged_total")
            >= unlogged + (n + 1 - total) as f64,
        "the distinct requests not logged are counted"
    );
}

/// The demo patient `id`'s private key.
fn patient_key(demo: &Json, id: &str) -> String {
    demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["patient_id"] == id)
        .unwrap()["private_key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A patient who allows the emergency summary but keeps one of its sections closed: the
/// summary, which would open that section too, is refused, naming it; the sections they
/// allow are still granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_is_refused_where_the_patient_keeps_one_of_its_sections_closed() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let physician = provider(demo, "physician");
    let yes = patient(demo, true);
    let patient_key = patient_key(demo, yes);
    let key = physician["private_key"].as_str().unwrap();
    let prefer = async |types: &[&str]| {
        devnet
            .set_preferences(&parse_key(&patient_key).unwrap(), true, types, 10)
            .await;
        mine_applied(app, devnet, "preferences applied").await;
    };
    let sections = [
        "allergies",
        "medications",
        "blood-type",
        "advance-directives",
        "immunizations",
        "emergency-summary",
    ];
    prefer(&[&sections[..], &["problems"]].concat()).await;
    let (status, body) = post(app, &signed(key, yes, &["emergency-summary"], 1, now())).await;
    assert_eq!(status, 201, "{body}");

    // every section but the problems list
    prefer(&sections).await;
    let (status, body) = post(app, &signed(key, yes, &["emergency-summary"], 2, now())).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("data-type-not-allowed-by-patient")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("problems, a section of the emergency-summary"),
        "{detail}"
    );
    let (status, body) = post(
        app,
        &signed(key, yes, &["allergies", "medications"], 3, now()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

// --- trust only the chain: forged observer posts, reorgs, a stale view ---

/// A `/new_block` payload naming `prints` (Clarity tuples, as access-control or patient-consent
/// would print them) and `transactions`, as anyone who reaches the observer port could post it.
fn forged_block(height: u64, hash: &str, prints: &[(&str, Value)], transactions: Json) -> Json {
    let events: Vec<Json> = prints
        .iter()
        .enumerate()
        .map(|(i, (contract, v))| {
            json!({ "txid": format!("0x{}", "ee".repeat(32)), "event_index": i, "committed": true,
                    "type": "contract_event",
                    "contract_event": { "contract_identifier": format!("{}.{contract}", deployer()),
                                        "topic": "print", "raw_value": v.to_hex() } })
        })
        .collect();
    json!({ "block_height": height, "index_block_hash": hash,
            "parent_index_block_hash": format!("0x{}", "00".repeat(32)),
            "transactions": transactions, "events": events })
}

/// A record the contract refuses (the service is no longer a responder) is mined with an
/// error: the node's block holds the transaction, its effect does not read back: failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_contract_refuses_is_marked_failed() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    devnet
        .call(
            &deployer_key(),
            "access-control",
            "remove-responder",
            vec![Value::Principal(
                demo["responder"]["principal"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )],
        )
        .await;
    mine_applied(app, devnet, "responder removed").await;
    let (status, body) =
        ask_for_allergies(app, provider(demo, "nurse"), patient(demo, true), 1).await;
    assert_eq!(status, 201, "{body}");
    let id = body["access_id"].as_str().unwrap().to_string();
    let sent = chain_state(app, &id, "submitted").await;
    let tip = devnet.tip().await;
    devnet.mine().await;
    let failed = chain_state(app, &id, "failed").await;
    assert_eq!(failed["chain"]["txid"], sent["chain"]["txid"], "{failed}");
    assert_eq!(failed["chain"]["block_height"], json!(tip + 1), "{failed}");
    assert!(
        failed["chain"]["result"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{failed}"
    );

    // a reorg from below it whose branch kept its block (a fork point not known after a
    // restart is 0) leaves it as it is: its nonce is used, and reopened it would be signed
    // again under a new one
    let mut changes = Vec::new();
    breakglass::chain::submitter::reopen_abandoned(
        0,
        &app.follower.state.rpc,
        &app.follower.state.contracts,
        app.store.as_ref(),
        &mut changes,
    )
    .await
    .unwrap();
    assert!(changes.is_empty(), "{changes:?}");

    // a reorg abandons the block that mined it (the node drops its transactions): its nonce
    // is unused on the new branch, so it is reopened and sent again as the same transaction.
    // Before, it stayed failed, and every later transaction of the service waited behind its
    // nonce for ever: the next access's record below was never mined.
    let fork = devnet.post("/devnet/fork?depth=1", json!({})).await;
    assert_eq!(fork["tip"], json!(tip + 2), "{fork}");
    let reopened = chain_state(app, &id, "submitted").await;
    assert_eq!(
        reopened["chain"]["txid"], sent["chain"]["txid"],
        "{reopened}"
    );
    let principal = demo["responder"]["principal"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    devnet
        .call(
            &deployer_key(),
            "access-control",
            "add-responder",
            vec![Value::Principal(principal)],
        )
        .await;
    let (status, body) =
        ask_for_allergies(app, provider(demo, "nurse"), patient(demo, true), 2).await;
    assert_eq!(status, 201, "{body}");
    let next = body["access_id"].as_str().unwrap().to_string();
    chain_state(app, &next, "submitted").await;
    devnet.mine().await;
    chain_state(app, &next, "confirmed").await;
    assert!(on_chain(app, &next).await.starts_with("(some"));
    // the first, mined again on the new branch (before or after the service was a responder
    // again, as the block ordered them): settled there, same transaction
    let again = eventually("mined again", SECS, async || {
        let s = get(app, &format!("/v1/accesses/{id}")).await;
        let settled = ["confirmed", "failed"].contains(&s["chain"]["state"].as_str()?);
        let height = s["chain"]["block_height"].as_u64()?;
        (settled && height > tip + 2).then_some(s)
    })
    .await;
    assert_eq!(again["chain"]["txid"], sent["chain"]["txid"], "{again}");
}

/// A service whose observer is at a secret path the devnet does not know: the devnet's pushes
/// are not found (and retried), so the test is the only sender and decides the order. The
/// poller does not catch up while the test sends (it waits for 30 s of quiet at this interval).
async fn the_only_sender() -> (Env, tempfile::TempDir) {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("observer-path");
    std::fs::write(&secret_file, "a-secret-observer-path").unwrap();
    let env = setup(|s| {
        s.follower.path_secret_file = Some(secret_file);
        s.follower.poll_interval_ms = 10_000;
    })
    .await;
    (env, secret_dir)
}

/// Posts `block` to the observer at the secret path of `the_only_sender`; its status.
async fn secretly(app: &breakglass::startup::Application, block: Json) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://{}/a-secret-observer-path/new_block",
            app.observer_addr
        ))
        .json(&block)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The node's block, copied and sent first with its events stripped (the id is the node's, so
/// it checks out): the node's own push of it, arriving after, still has its effects read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_copy_of_the_nodes_block_sent_first_loses_none_of_its_effects() {
    let (env, _secret) = the_only_sender().await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let paramedic = provider(demo, "paramedic");
    let yes = patient(demo, true);
    assert_eq!(ask_for_allergies(app, paramedic, yes, 1).await.0, 201);

    let start = devnet.tip().await;
    send_suspension(&env, paramedic).await;
    devnet.mine().await;
    let tip = devnet.tip().await;
    let observer = |block: Json| secretly(app, block);
    // in order, as the node sends them; the block with the suspension is copied, stripped,
    // and that copy sent first
    let mut suspended_at = None;
    for height in start + 1..=tip {
        let real = devnet_block(devnet, height).await;
        if real["events"]
            .to_string()
            .contains(&hex::encode("provider-suspended"))
        {
            let mut stripped = real.clone();
            stripped["events"] = json!([]);
            stripped["transactions"] = json!([]);
            assert_eq!(observer(stripped).await, 200);
            assert_eq!(app.status.applied(), height);
            suspended_at = Some((height, real.clone()));
        }
        assert_eq!(observer(real).await, 200, "the node's own push");
    }
    let (height, real) = suspended_at.expect("a block holds the suspension");
    let (status, body) = ask_for_allergies(app, paramedic, yes, 2).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("provider-not-verified")),
        "the suspension in the node's push was read: {body}"
    );
    // and sent again, nothing more to read: the tip stays
    assert_eq!(observer(real).await, 200);
    assert!(height <= tip);
    assert_eq!(app.status.applied(), tip);
}

/// The node's blocks, copied with their events stripped, and those copies their only pushes
/// (the node's own never arrive): the blocks' own calls to our contracts, read from the node's
/// blocks, name what they changed, so a suspension and a patient's opt-out in them are read all
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_copies_alone_still_name_what_the_blocks_calls_changed() {
    let (env, _secret) = the_only_sender().await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let (paramedic, nurse) = (provider(demo, "paramedic"), provider(demo, "nurse"));
    let (yes, no) = (patient(demo, true), patient(demo, false));
    // cached: both clinicians, and the patient who allows emergency access
    assert_eq!(ask_for_allergies(app, paramedic, yes, 1).await.0, 201);
    assert_eq!(ask_for_allergies(app, nurse, yes, 1).await.0, 201);
    assert_eq!(ask_for_allergies(app, nurse, no, 2).await.0, 403);

    let start = devnet.tip().await;
    send_suspension(&env, paramedic).await;
    let yes_key = patient_key(demo, yes);
    devnet
        .set_preferences(&parse_key(&yes_key).unwrap(), false, &[], 60)
        .await;
    devnet.mine().await;
    let tip = devnet.tip().await;
    let mut stripped_any = false;
    for height in start + 1..=tip {
        let mut block = devnet_block(devnet, height).await;
        stripped_any |= !block["events"].as_array().unwrap().is_empty();
        block["events"] = json!([]);
        block["transactions"] = json!([]);
        assert_eq!(secretly(app, block).await, 200);
    }
    assert!(stripped_any, "the blocks had events to strip");
    assert_eq!(app.status.applied(), tip);

    let (status, body) = ask_for_allergies(app, paramedic, yes, 2).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("provider-not-verified")),
        "the suspension was read from the block's call: {body}"
    );
    let (status, body) = ask_for_allergies(app, nurse, yes, 3).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("patient-opted-out")),
        "the opt-out was read from the block's call: {body}"
    );
    // a registration names the patient id the contract derives
    let who: breakglass::stacks::Address = nurse["principal"].as_str().unwrap().parse().unwrap();
    let derived = app
        .follower
        .state
        .rpc
        .call_read(
            &format!("{}.patient-consent", deployer()),
            "derive-patient-id",
            &[
                Value::Principal(breakglass::stacks::Principal::Standard(who)),
                Value::buffer([3; 32]),
            ],
            &deployer(),
        )
        .await
        .unwrap();
    assert_eq!(
        derived,
        Value::buffer(breakglass::chain::events::derive_patient_id(&who, &[3; 32]).0)
    );
}

async fn push(app: &breakglass::startup::Application, block: &Json) -> (u16, Json) {
    let res = reqwest::Client::new()
        .post(format!("http://{}/new_block", app.observer_addr))
        .json(block)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Json::Null),
    )
}

/// The index block hash the devnet gave its block at `height`.
async fn block_hash(devnet: &Devnet, height: u64) -> String {
    devnet_block(devnet, height).await["index_block_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The devnet's block at `height`, as its observers are sent it.
async fn devnet_block(devnet: &Devnet, height: u64) -> Json {
    devnet.get_json(&format!("/devnet/blocks/{height}")).await
}

fn tuple(fields: Vec<(&str, Value)>) -> Value {
    Value::tuple(fields.into_iter().map(|(k, v)| (k.to_string(), v)))
}

fn principal_of(p: &str) -> Value {
    Value::Principal(p.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_observer_posts_change_no_decision_readiness_or_confirmation() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let (physician, pharmacist, paramedic, nurse) = (
        provider(demo, "physician"),
        provider(demo, "pharmacist"),
        provider(demo, "paramedic"),
        provider(demo, "nurse"),
    );
    let (yes, no) = (patient(demo, true), patient(demo, false));
    let stranger = new_key();
    let stranger_key = format!("{}01", hex::encode(stranger.secret_bytes()));
    let stranger_principal = address_of(&stranger).to_string();
    let mut nonce = 500u64;
    let mut next = || {
        nonce += 1;
        nonce
    };
    // the cache holds the pharmacist, the paramedic and the opted-out patient
    assert_eq!(ask_for_allergies(app, pharmacist, yes, next()).await.0, 201);
    assert_eq!(ask_for_allergies(app, paramedic, yes, next()).await.0, 201);
    let (status, body) = ask_for_allergies(app, physician, no, next()).await;
    assert_eq!((status, &body["code"]), (403, &json!("patient-opted-out")));

    let prints = [
        (
            "access-control",
            tuple(vec![
                ("topic", Value::ascii("provider-verified")),
                ("provider", principal_of(&stranger_principal)),
                ("role", Value::ascii("physician")),
                ("status", Value::ascii("verified")),
            ]),
        ),
        (
            "patient-consent",
            tuple(vec![
                ("topic", Value::ascii("emergency-preferences-set")),
                ("patient-id", Value::buffer(hex::decode(no).unwrap())),
                ("allow", Value::Bool(true)),
                (
                    "data-types",
                    Value::List(vec![
                        Value::ascii("allergies"),
                        Value::ascii("advance-directives"),
                    ]),
                ),
                ("max-window", Value::UInt(720)),
            ]),
        ),
        (
            "access-control",
            tuple(vec![
                ("topic", Value::ascii("provider-suspended")),
                (
                    "provider",
                    principal_of(pharmacist["principal"].as_str().unwrap()),
                ),
                ("status", Value::ascii("suspended")),
            ]),
        ),
    ];
    let tip = devnet.tip().await;
    let applied = app.status.applied();
    let fake = format!("0x{}", "ab".repeat(32));
    for (block, expected) in [
        // the next height, with a made-up hash: the node has no block there yet, so the
        // answer is the one that makes a node send its block again
        (forged_block(applied + 1, &fake, &prints, json!([])), 503),
        // the node's tip height, with a made-up hash
        (forged_block(tip, &fake, &prints, json!([])), 200),
        // the node's own id for its tip, with made-up events
        (
            forged_block(tip, &block_hash(devnet, tip).await, &prints, json!([])),
            200,
        ),
        // an older block's id, with made-up events
        (
            forged_block(
                tip - 1,
                &block_hash(devnet, tip - 1).await,
                &prints,
                json!([]),
            ),
            200,
        ),
        // far ahead
        (forged_block(1_000_000_000_000, &fake, &[], json!([])), 200),
    ] {
        let (status, answer) = push(app, &block).await;
        assert_eq!(
            status, expected,
            "the node must not resend what it never sent: {answer}"
        );
    }
    let (status, body) = post(
        app,
        &signed(&stranger_key, yes, &["advance-directives"], 1, now()),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("unknown-provider")),
        "{body}"
    );
    let (status, body) = ask_for_allergies(app, physician, no, next()).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("patient-opted-out")),
        "{body}"
    );
    let (status, body) = ask_for_allergies(app, pharmacist, yes, next()).await;
    assert_eq!(status, 201, "a real clinician is not locked out: {body}");
    let ready = get(app, "/readyz").await;
    assert_eq!(
        ready["checks"]["follower"]["applied_height"],
        json!(tip),
        "{ready}"
    );
    // the tests' notices go to the outbox: said, so that a deployment left so is seen
    assert_eq!(
        ready["checks"]["notices"],
        json!({"transport": "file", "emailed": false}),
        "{ready}"
    );
    assert!(app.store.tip().unwrap().unwrap().height <= tip);
    assert_eq!(app.status.node_tip(), tip);
    // operators see them
    let metrics = text(app, "/metrics").await;
    assert!(
        metrics.contains("breakglass_chain_pushes_not_on_chain 2"),
        "{metrics}"
    );

    // a forged block at the next height, sent before the real one: the real one still applies
    push(app, &forged_block(tip + 1, &fake, &[], json!([]))).await;
    suspend(&env, paramedic).await;
    let (status, body) = ask_for_allergies(app, paramedic, yes, next()).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("provider-not-verified")),
        "{body}"
    );

    // a forged confirmation of our own transaction, under the node's own block id: not believed
    let (status, body) = ask_for_allergies(app, nurse, yes, next()).await;
    assert_eq!(status, 201);
    let id = body["access_id"].as_str().unwrap().to_string();
    let txid = eventually("submitted", SECS, async || {
        let s = get(app, &format!("/v1/accesses/{id}")).await;
        (s["chain"]["state"] == "submitted")
            .then(|| s["chain"]["txid"].as_str().unwrap().to_string())
    })
    .await;
    let tip = devnet.tip().await;
    let mined =
        json!([{ "txid": format!("0x{txid}"), "status": "success", "raw_result": "0x0703" }]);
    for (block, expected) in [
        (
            forged_block(tip, &block_hash(devnet, tip).await, &[], mined.clone()),
            200,
        ),
        (forged_block(tip + 1, &fake, &[], mined.clone()), 503),
    ] {
        assert_eq!(push(app, &block).await.0, expected);
    }
    let s = get(app, &format!("/v1/accesses/{id}")).await;
    assert_eq!(s["chain"]["state"], "submitted", "{s}");
    // mined for real: confirmed, with its txid and block
    devnet.mine().await;
    let s = chain_state(app, &id, "confirmed").await;
    assert_eq!(s["chain"]["txid"], json!(txid));
    let height = s["chain"]["block_height"].as_u64().unwrap();
    assert!(height > tip && height <= devnet.tip().await, "{s}");

    // malformed and oversized posts change nothing either; one that is not a block's JSON
    // is a problem with its code
    let (status, p) = push(app, &json!({ "block_height": "x" })).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (400, Some("malformed-event")),
        "{p}"
    );
    let (status, _) = push(
        app,
        &json!({ "block_height": 1, "index_block_hash": "0x12" }),
    )
    .await;
    assert!(status == 400 || status == 200, "{status}");
    // beyond the observer's 64 MiB body limit: refused (413, or the connection closed on it)
    let oversized = format!(
        r#"{{"block_height": {}, "index_block_hash": "0x{}", "events": [], "pad": "{}"}}"#,
        app.status.applied() + 1,
        "ab".repeat(32),
        "x".repeat(65 << 20)
    );
    let answer = reqwest::Client::new()
        .post(format!("http://{}/new_block", app.observer_addr))
        .header("content-type", "application/json")
        .body(oversized)
        .send()
        .await;
    if let Ok(res) = answer {
        assert_eq!(res.status().as_u16(), 413);
    }
    assert_eq!(app.status.applied(), devnet.tip().await);

    // pushes are let in before their bodies are read: four slow ones hold every place, so a
    // fifth is sent back at once (the node sends it again) rather than read into memory too;
    // once they are gone, pushes are read again
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(
            stalled_post(
                app.observer_addr,
                "/new_block",
                1 << 20,
                b"{\"block_height\":",
            )
            .await,
        );
    }
    eventually("the slow pushes admitted", SECS, async || {
        let (status, _) = push(app, &json!({ "block_height": "x" })).await;
        (status == 503).then_some(())
    })
    .await;
    drop(slow);
    eventually("pushes read again", SECS, async || {
        let (status, p) = push(app, &json!({ "block_height": "x" })).await;
        (status == 400 && p["code"] == "malformed-event").then_some(())
    })
    .await;
    // one that declares more than the bound is refused before any of its body is sent
    let mut declared = stalled_post(app.observer_addr, "/new_block", 65 << 20, b"").await;
    assert_eq!(answered(&mut declared, SECS).await, Some(413));
    // one whose body does not come is let go after 10 s, its place with it
    let mut stalled = stalled_post(app.observer_addr, "/new_block", 1 << 10, b"{").await;
    assert_eq!(answered(&mut stalled, SECS).await, Some(408));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_undoes_what_the_abandoned_blocks_did_within_one_block() {
    let env = setup(|_| {}).await;
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let (nurse, paramedic) = (provider(demo, "nurse"), provider(demo, "paramedic"));
    let yes = patient(demo, true);
    let mut nonce = 700u64;
    let mut next = || {
        nonce += 1;
        nonce
    };
    assert_eq!(ask_for_allergies(app, paramedic, yes, next()).await.0, 201);
    // an access confirmed, then a suspension, both in blocks the reorg abandons
    let (status, body) = ask_for_allergies(app, nurse, yes, next()).await;
    assert_eq!(status, 201);
    let id = body["access_id"].as_str().unwrap().to_string();
    chain_state(app, &id, "submitted").await;
    let before = devnet.tip().await;
    devnet.mine().await;
    let confirmed = chain_state(app, &id, "confirmed").await;
    let txid = confirmed["chain"]["txid"].clone();
    let mined_at = confirmed["chain"]["block_height"].as_u64().unwrap();
    assert!(mined_at > before);
    suspend(&env, paramedic).await;
    let (status, body) = ask_for_allergies(app, paramedic, yes, next()).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("provider-not-verified"))
    );

    // the node switches to a longer branch without those blocks (their transactions dropped)
    let tip = devnet.tip().await;
    let fork = devnet
        .post(
            &format!("/devnet/fork?depth={}", tip - mined_at + 1),
            json!({}),
        )
        .await;
    assert_eq!(fork["tip"], json!(tip + 1), "{fork}");
    // within the new branch's blocks, nothing more mined: the suspension is gone, and the
    // access's record is reopened and sent again as the same transaction
    let status = eventually("suspension undone", SECS, async || {
        let (status, body) = ask_for_allergies(app, paramedic, yes, next()).await;
        (status == 201).then_some(body)
    })
    .await;
    assert_eq!(status["token_type"], "Bearer");
    let reopened = chain_state(app, &id, "submitted").await;
    assert_eq!(
        reopened["chain"]["txid"], txid,
        "the same signed transaction"
    );
    assert_eq!(devnet.tip().await, tip + 1, "no block mined meanwhile");
    eventually("the new tip applied", SECS, async || {
        let ready = get(app, "/readyz").await;
        (ready["checks"]["follower"]["applied_height"] == json!(tip + 1)).then_some(())
    })
    .await;
    // broadcast again, mined on the new branch: confirmed again, same txid, its new block
    let pending = txid.as_str().unwrap().trim_start_matches("0x").to_string();
    eventually("broadcast again", SECS, async || {
        let mempool = devnet.get_json("/devnet/mempool").await;
        mempool
            .as_array()?
            .iter()
            .any(|t| t["txid"].as_str().map(|t| t.trim_start_matches("0x")) == Some(&pending))
            .then_some(())
    })
    .await;
    devnet.mine().await;
    let again = chain_state(app, &id, "confirmed").await;
    assert_eq!(again["chain"]["txid"], txid);
    assert!(again["chain"]["block_height"].as_u64().unwrap() > tip + 1);
    assert!(on_chain(app, &id).await.starts_with("(some"));
}

/// A policy directory (for `policy.dir`): the default schema and `policies`.
fn policies_dir(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("breakglass.cedarschema"),
        breakglass::policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(dir.path().join("breakglass.cedar"), policies).unwrap();
    dir
}

/// The tablet's options are decided as a request would be, on-call state included: with a
/// policy that lets pharmacists break the glass only while on call, an on-call pharmacist's
/// options open what a request grants. Before, they were decided as if no one were on call,
/// and the tablet greyed out (and would not send) what the API grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tablets_options_are_decided_with_the_clinicians_on_call_state() {
    let on_call_only = format!(
        "{}\n@id(\"pharmacists-only-on-call\")\nforbid (principal, action, resource) when {{ principal.role == \"pharmacist\" && !(context has on_call) }};",
        breakglass::policy::DEFAULT_POLICIES
    );
    let policies = policies_dir(&on_call_only);
    let dir = policies.path().to_path_buf();
    // the roster has everyone on call but the admin
    let env = setup(move |s| s.policy.dir = Some(dir)).await;
    let pharmacist = provider(&env.demo, "pharmacist");
    let options: Json = reqwest::get(format!(
        "http://{}/tablet/options?principal={}",
        env.app.api_addr,
        pharmacist["principal"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let allergies = options["data_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["data_type"] == "allergies")
        .unwrap();
    assert_eq!(allergies["allowed"], true, "{options}");

    // anyone may ask about any principal, each unknown one a read from the node: a flood of
    // them is bounded for all askers together (503 too-many-lookups beyond), while a known
    // clinician's options are answered from the cache throughout
    let ask = |principal: String| {
        let url = format!(
            "http://{}/tablet/options?principal={principal}",
            env.app.api_addr
        );
        async move {
            let res = reqwest::get(url).await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Json>().await.unwrap_or(Json::Null))
        }
    };
    let flood =
        futures_util::future::join_all((0..60).map(|_| ask(address_of(&new_key()).to_string())));
    let known = ask(pharmacist["principal"].as_str().unwrap().to_string());
    let (answers, (known_status, _)) = tokio::join!(flood, known);
    assert_eq!(known_status, 200, "a known clinician is never bounded");
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{answers:?}"
    );
    assert!(
        !refused.is_empty(),
        "some of 60 unknown at once are refused"
    );
    assert!(
        answers.len() - refused.len() >= 20,
        "a second's share is answered"
    );
    assert_eq!(refused[0].1["code"], "too-many-lookups", "{:?}", refused[0]);

    let (status, body) = ask_for_allergies(&env.app, pharmacist, patient(&env.demo, true), 1).await;
    assert_eq!(status, 201, "{body}");

    // and so are break-glass requests signed with keys made on the spot, within the same
    // bound (before, each was a read from the node, without end), while a cached clinician's
    // request is granted throughout; a refused one may be sent again as it is
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let patient_id: breakglass::domain::PatientId = patient(&env.demo, true).parse().unwrap();
    let sign = |key: &secp256k1::SecretKey, nonce: u64| {
        let m = breakglass::request::message(
            &patient_id,
            &["allergies"],
            "unresponsive on arrival",
            nonce,
            now(),
            Some("er-tablet-2"),
        );
        breakglass::request::sign(key, breakglass::stacks::tx::TESTNET_CHAIN_ID, &m).to_string()
    };
    let strangers: Vec<String> = (0..60).map(|i| sign(&new_key(), i)).collect();
    // (the pharmacist is cached: granted above)
    let known_key = parse_key(pharmacist["private_key"].as_str().unwrap()).unwrap();
    let known = sign(&known_key, 77);
    let flood = futures_util::future::join_all(strangers.iter().map(|b| post(&env.app, b)));
    let (answers, (known_status, known_body)) = tokio::join!(flood, post(&env.app, &known));
    assert_eq!(
        known_status, 201,
        "a cached clinician is never bounded: {known_body}"
    );
    let codes: Vec<&str> = answers
        .iter()
        .map(|(_, b)| b["code"].as_str().unwrap_or(""))
        .collect();
    assert!(
        codes
            .iter()
            .all(|c| *c == "unknown-provider" || *c == "too-many-lookups"),
        "{answers:?}"
    );
    let bounded = codes.iter().filter(|c| **c == "too-many-lookups").count();
    assert!(
        bounded > 0,
        "some of 60 unknown signers at once are refused"
    );
    assert!(60 - bounded >= 20, "a second's share is looked up");
    let (status, _) = answers
        .iter()
        .find(|(_, b)| b["code"] == "too-many-lookups")
        .unwrap();
    assert_eq!(*status, 503);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let again = &strangers[codes.iter().position(|c| *c == "too-many-lookups").unwrap()];
    let (status, body) = post(&env.app, again).await;
    assert_eq!((status, &body["code"]), (403, &json!("unknown-provider")));

    // a clinician the cache does not hold yet (the nurse has not used the service), but whom
    // the hospital's provider directory lists, is not kept waiting by such a flood: her
    // requests sent while the bound is spent, and kept spent
    let nurse = provider(&env.demo, "nurse");
    let nurse_principal: breakglass::stacks::Address =
        nurse["principal"].as_str().unwrap().parse().unwrap();
    assert!(env.app.store.provider(&nurse_principal).unwrap().is_none());
    in_directory(
        &env,
        breakglass::domain::ProviderEntry {
            principal: nurse_principal,
            display_name: "Nurse on the ward".into(),
            role: breakglass::domain::Role::Nurse,
            department: None,
            organization: None,
            paging_ids: vec![],
        },
    )
    .await;
    // (signed first: the signer is a process of its own, waited for on this task)
    let nurse_key = nurse["private_key"].as_str().unwrap();
    let requests: Vec<String> = (78..81)
        .map(|nonce| {
            signed(
                nurse_key,
                patient(&env.demo, true),
                &["allergies"],
                nonce,
                now(),
            )
        })
        .collect();
    let spent = std::sync::atomic::AtomicBool::new(false);
    let done = std::sync::atomic::AtomicBool::new(false);
    let flooding = futures_util::future::join_all((0..8).map(|_| async {
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let (status, _) = ask(address_of(&new_key()).to_string()).await;
            if status == 503 {
                spent.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }));
    let nurse_asks = async {
        while !spent.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut answers = Vec::new();
        for body in &requests {
            answers.push(post(&env.app, body).await);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        answers
    };
    let (_, answers) = tokio::join!(flooding, nurse_asks);
    for (status, body) in answers {
        assert_eq!(
            status, 201,
            "a clinician of the directory is never bounded: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_view_of_the_chain_refuses_unless_a_degraded_policy_permits() {
    // the hospital's degraded mode: while stale, allergies and blood type only
    let degraded = breakglass::policy::DEFAULT_POLICIES.replace(
        "when { context.chain_stale };",
        r#"when { context.chain_stale && !([Breakglass::DataType::"allergies", Breakglass::DataType::"blood-type"].contains(resource)) };"#,
    );
    assert_ne!(degraded, breakglass::policy::DEFAULT_POLICIES);
    let policies = policies_dir(&degraded);
    let dir = policies.path().to_path_buf();
    let mut env = setup(move |s| {
        s.issuance.seconds_per_block = 1;
        s.follower.max_lag_blocks = 2;
        // the wait for staleness asks again and again, and is granted until then
        s.issuance.grants_per_minute = 10_000;
        s.policy.dir = Some(dir);
    })
    .await;
    let nurse = provider(&env.demo, "nurse").clone();
    let key = nurse["private_key"].as_str().unwrap().to_string();
    let yes = patient(&env.demo, true).to_string();
    let mut nonce = 900u64;
    let mut ask = async |dts: &[&str]| {
        nonce += 1;
        post(&env.app, &signed(&key, &yes, dts, nonce, now())).await
    };
    let (status, body) = ask(&["medications"]).await;
    assert_eq!(status, 201, "{body}");

    // the node goes away: after max_lag_blocks blocks' time, the view is stale
    let port = env.devnet.rpc.rsplit(':').next().unwrap().to_string();
    env.devnet.kill().await;
    let refusal = eventually("chain-state-stale", SECS, async || {
        let (status, body) = ask(&["medications"]).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(refusal["code"], "chain-state-stale", "{refusal}");
    assert!(!ready(&env.app).await);
    // what the degraded policy permits is granted, and says so
    let (status, body) = ask(&["allergies"]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["access_id"].as_str().unwrap().to_string();
    let token = body["access_token"].as_str().unwrap();
    assert!(
        token_payload(token).contains("\"degraded\":true"),
        "{}",
        token_payload(token)
    );
    let (_, full) = access_with_token(&env.app, &id, token).await;
    assert_eq!(full["degraded"], true, "{full}");
    assert!(full["chain_lag_blocks"].as_u64().unwrap() > 2, "{full}");
    let (status, body) = ask(&["allergies", "medications"]).await;
    assert_eq!(
        (status, &body["code"]),
        (503, &json!("chain-state-stale")),
        "{body}"
    );
    // what the policies refuse on any view is refused as such, not as a stale view, naming
    // the rule that refuses it on a fresh one
    let (status, body) = ask(&["advance-directives"]).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("policy-denied")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("chain-state-stale") && detail.contains("advance-directives"),
        "{detail}"
    );

    // the node is back, with the same chain: normal again without waiting for a block
    let devnet_dir = env.dir.path().join("devnet");
    env.devnet = Devnet::start(&[
        "--data-dir",
        devnet_dir.to_str().unwrap(),
        "--seed-demo",
        "--port",
        &port,
    ])
    .await;
    env.devnet.observe(env.app.observer_addr).await;
    let tip = env.devnet.tip().await;
    let body = eventually("fresh again", SECS, async || {
        let (status, body) = ask(&["medications"]).await;
        (status == 201).then_some(body)
    })
    .await;
    assert_eq!(env.devnet.tip().await, tip, "no block was needed");
    let (_, full) = access_with_token(
        &env.app,
        body["access_id"].as_str().unwrap(),
        body["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(full["degraded"], false);
    // the degraded access's chain record says so too
    env.devnet.mine().await;
    let shown = eventually("degraded record on chain", SECS, async || {
        env.devnet.mine().await;
        let shown = on_chain(&env.app, &id).await;
        shown.starts_with("(some").then_some(shown)
    })
    .await;
    assert!(shown.contains("(degraded true)"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_is_415_and_an_unregistered_patient_is_a_visible_decision() {
    let env = setup(|_| {}).await;
    let (app, demo) = (&env.app, &env.demo);
    let key = provider(demo, "nurse")["private_key"].as_str().unwrap();
    let body = signed(key, patient(demo, true), &["allergies"], 1, now());
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/v1/break-glass", app.api_addr))
            .body(body.clone());
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 415, "{content_type}");
        let problem: Json = res.json().await.unwrap();
        assert_eq!(problem["code"], "unsupported-media-type");
    }
    // nothing was used up: the same signed request, as JSON, is granted
    let (status, granted) = post(app, &body).await;
    assert_eq!(status, 201, "{granted}");
    let (_, full) = access_with_token(
        app,
        granted["access_id"].as_str().unwrap(),
        granted["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(full["patient_registered"], true);

    // a patient id no one registered: the contract's default preferences, and it shows
    let unregistered = hex::encode([0x5au8; 32]);
    let (status, granted) = post(app, &signed(key, &unregistered, &["allergies"], 2, now())).await;
    assert_eq!(status, 201, "{granted}");
    let (_, full) = access_with_token(
        app,
        granted["access_id"].as_str().unwrap(),
        granted["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(full["patient_registered"], false, "{full}");
    // what the node said of an unregistered id is remembered until the next block, not
    // stored: any clinician may ask about any id, and each stored one was read again by every
    // catch-up, without end
    let pid: breakglass::domain::PatientId = unregistered.parse().unwrap();
    assert_eq!(app.store.preferences(&pid).unwrap(), None);
    let stored = app.store.patients().unwrap().len();
    for i in 0..5u8 {
        let id = hex::encode([0x60 + i; 32]);
        let (status, body) = post(
            app,
            &signed(key, &id, &["allergies"], 10 + u64::from(i), now()),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(app.store.patients().unwrap().len(), stored);
}

/// A graceful stop ends once everything has ended, not at its timeout: every part that holds
/// the store lets it go (the vault held it to the end, so every stop, each rolling deploy's
/// included, waited out the whole `server.shutdown_timeout_secs`, 10 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_when_everything_has_ended_not_at_its_timeout() {
    let env = setup(|s| s.server.shutdown_timeout_secs = 120).await;
    let (status, granted) = post(
        &env.app,
        &signed(
            provider(&env.demo, "nurse")["private_key"]
                .as_str()
                .unwrap(),
            patient(&env.demo, true),
            &["allergies"],
            1,
            now(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{granted}");
    let started = std::time::Instant::now();
    env.app.stop().await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(60),
        "stopped after {took:?}: it waited for its timeout (120 s), so something still held the store"
    );
}

/// Our record of an access refused on chain (another responder recorded its id first, u212) in
/// a block the follower did not see (skipped: caught up by reading state): the submitter's check
/// of the operations those blocks may have mined finds its nonce used and its effect not ours,
/// and finds our transaction in the block that mined it: failed, logged once, not signed again.
/// Before, a used nonce without our effect was taken for another transaction's: a second
/// transaction was signed for it (refused again), and the first refusal never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_in_a_block_the_follower_skipped_is_not_signed_again() {
    use breakglass::store::SubmissionState;
    let env = setup(|s| s.submitter.interval_ms = 3_600_000).await;
    let (app, devnet) = (&env.app, &env.devnet);
    let (op, failed) = recorded_first_by_another_responder(&env, 902).await;
    let SubmissionState::Failed {
        txid,
        nonce: Some(nonce),
        raw: Some(raw),
        height,
        ..
    } = failed.state.clone()
    else {
        panic!("{failed:?}");
    };
    // as if the follower had skipped that block: on record as sent, from the height before it
    // (its refusal seen here is in the log already: the check logs it once more)
    let logged_before = entries_with(app, "chain-failure", &op);
    let mut sent = failed.clone();
    sent.state = SubmissionState::Sent {
        txid: txid.clone(),
        nonce,
        raw,
        sent_at_height: height - 1,
        broadcasts: 1,
    };
    app.store
        .apply(breakglass::store::Batch {
            submissions: vec![sent],
            ..breakglass::store::Batch::default()
        })
        .unwrap();
    let service = app.submitter.sender;
    let nonce_before = devnet.nonce(&service).await;
    app.status
        .skipped_blocks
        .store(true, std::sync::atomic::Ordering::SeqCst);
    app.submitter.reconcile().await.unwrap();
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    match app.store.submission(&op).unwrap().unwrap().state {
        SubmissionState::Failed {
            txid: again,
            height: at,
            ..
        } => {
            assert_eq!(again, txid, "our own transaction named");
            assert_eq!(at, height, "the block that mined it");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        devnet.nonce(&service).await,
        nonce_before,
        "nothing signed again"
    );
    assert_eq!(
        entries_with(app, "chain-failure", &op),
        logged_before + 1,
        "its refusal logged"
    );
}

/// How many entries of the audit log name both `what` and `whom` (a code, an operation's id).
fn entries_with(app: &breakglass::startup::Application, what: &str, whom: &str) -> usize {
    app.store
        .audit_entries(1, 100_000)
        .unwrap()
        .iter()
        .filter(|e| {
            let event = e.event.get();
            event.contains(what) && event.contains(whom)
        })
        .count()
}

/// Another responder records our access's id first (its arguments copied from our
/// transaction, as anyone reading the mempool could): ours is refused on chain (u212), and the
/// operation reads as failed, not as confirmed on the other's record. Before, any record of
/// the id counted as ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_recorded_first_by_another_responder_is_not_taken_for_ours() {
    let env = setup(|s| s.submitter.interval_ms = 3_600_000).await;
    let (_, failed) = recorded_first_by_another_responder(&env, 901).await;
    assert!(
        matches!(
            failed.state,
            breakglass::store::SubmissionState::Failed { .. }
        ),
        "{failed:?}"
    );
}

/// A grant (request nonce `n`) whose access id another responder records first (its arguments
/// copied from our operation, as anyone reading the mempool could), then ours sent, mined and
/// refused (u212): our operation's id and the operation once it settled (neither pending nor
/// sent).
async fn recorded_first_by_another_responder(
    env: &Env,
    n: u64,
) -> (String, breakglass::store::Submission) {
    let (app, demo, devnet) = (&env.app, &env.demo, &env.devnet);
    let (status, body) =
        ask_for_allergies(app, provider(demo, "nurse"), patient(demo, true), n).await;
    assert_eq!(status, 201, "{body}");
    let op = format!("record:{}", body["access_id"].as_str().unwrap());
    // (made from the log by the grants' follow-up; the submitter asleep, it stays pending)
    let read = eventually("the record's operation", SECS, async || {
        app.store.submission(&op).unwrap()
    })
    .await;
    let other = new_key();
    devnet.make_responder(&address_of(&other)).await;
    let args: Vec<Value> = read
        .args
        .iter()
        .map(|a| Value::from_hex(a).unwrap())
        .collect();
    devnet
        .call(&other, "access-control", "record-emergency-access", args)
        .await;
    devnet.mine().await;
    // ours, sent after it, is mined and refused
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    let settled = eventually("ours settled", SECS, async || {
        let s = app.store.submission(&op).unwrap()?;
        (!matches!(
            s.state,
            breakglass::store::SubmissionState::Pending
                | breakglass::store::SubmissionState::Sent { .. }
        ))
        .then_some(s)
    })
    .await;
    (op, settled)
}

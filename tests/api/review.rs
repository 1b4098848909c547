//! Post-incident review end to end: reviewers signing in with their key (in a real headless
//! Chromium, and over HTTP for each refusal), verdicts relayed on chain, the hash-chained audit
//! log, its anchors, `breakglass audit verify`, and the FHIR AuditEvent export.

use breakglass::configuration::ResourceServerClient;
use breakglass::domain::{AccessId, VerdictKind};
use breakglass::stacks::{sip018, Value};
use redb::ReadableTable;
use sha2::{Digest, Sha256};

use serde_json::{json, Value as Json};

use crate::breakglass::mine_applied;
use crate::support::*;

const ADMIN_SECRET: &str = "admin-secret-for-review-tests";
const RS_SECRET: &str = "rs-secret-for-review-tests";

fn client(id: &str, secret: &str) -> ResourceServerClient {
    ResourceServerClient {
        id: id.into(),
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    }
}

fn base(env: &Env) -> String {
    format!("http://{}", env.app.api_addr)
}

fn key_of(p: &Json) -> secp256k1::SecretKey {
    breakglass::keys::parse_key(p["private_key"].as_str().unwrap()).unwrap()
}

/// The value of cookie `name` set by `res`, if it sets one.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| h.strip_prefix(&format!("{name}=")))
        .map(|rest| rest.split(';').next().unwrap_or("").to_string())
        .filter(|v| !v.is_empty())
}

struct Challenge {
    message: String,
    cookie: String,
}

async fn challenge(base: &str) -> Challenge {
    let res = reqwest::Client::new()
        .post(format!("{base}/review/challenge"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = set_cookie(&res, "bg_challenge").expect("a challenge cookie");
    let body: Json = res.json().await.unwrap();
    Challenge {
        message: body["message"].as_str().unwrap().to_string(),
        cookie,
    }
}

fn sign(message: &Value, key: &secp256k1::SecretKey) -> String {
    let domain = breakglass::request::domain(breakglass::stacks::tx::TESTNET_CHAIN_ID);
    format!(
        "0x{}",
        hex::encode(sip018::sign(&sip018::message_hash(&domain, message), key))
    )
}

fn sign_hex(message_hex: &str, key: &secp256k1::SecretKey) -> String {
    sign(
        &Value::from_hex(message_hex.trim_start_matches("0x")).unwrap(),
        key,
    )
}

/// The reviewer's flow in headless Chromium (`web/tests/review-flow.mjs`) on access `id`: the
/// demo reviewer's key imported, signed in, the queue, the access's page, an `inappropriate`
/// verdict with `note` and the token revoked, confirmed on chain (blocks mined while it
/// waits). Its result: what the page showed (`trail`, `record_altered`), the note's salt and
/// hash.
async fn browser_review(env: &Env, base: &str, id: &str, note: &str) -> Json {
    let reviewer = provider(&env.demo, "reviewer");
    let vars = [
        ("BASE_URL", base.to_string()),
        (
            "REVIEWER_KEY",
            reviewer["private_key"].as_str().unwrap().to_string(),
        ),
        ("ACCESS_ID", id.to_string()),
        ("VERDICT", "inappropriate".to_string()),
        ("NOTE", note.to_string()),
        ("REVOKE", "yes".to_string()),
        ("OUT_DIR", env.dir.path().display().to_string()),
    ];
    // blocks come while the browser waits for its verdict to be confirmed
    let result = browser_flow(&env.devnet, "web/tests/review-flow.mjs", &vars, 700).await;
    assert_eq!(result["ok"], true, "{result}");
    result
}

/// Signs `c` in with `key`, from the browser that asked for it.
async fn sign_in_as(
    base: &str,
    c: &Challenge,
    key: &secp256k1::SecretKey,
) -> (u16, Json, Option<String>) {
    sign_in(
        base,
        &c.message,
        &sign_hex(&c.message, key),
        Some(&c.cookie),
    )
    .await
}

/// Signs in: (status, problem or answer, session cookie).
async fn sign_in(
    base: &str,
    message: &str,
    signature: &str,
    challenge_cookie: Option<&str>,
) -> (u16, Json, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/review/sign-in"))
        .header("content-type", "application/json")
        .body(json!({ "message": message, "signature": signature }).to_string());
    if let Some(c) = challenge_cookie {
        req = req.header("cookie", format!("bg_challenge={c}"));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let session = set_cookie(&res, "bg_session");
    (status, res.json().await.unwrap_or(Json::Null), session)
}

async fn signed_in(base: &str, key: &secp256k1::SecretKey) -> String {
    let c = challenge(base).await;
    let (status, body, session) = sign_in_as(base, &c, key).await;
    assert_eq!(status, 200, "{body}");
    session.expect("a session cookie")
}

/// What the log took after `head`, but the ends of sessions that timed out (logged by the
/// service's own task whenever their time runs out).
fn logged_since(
    store: &dyn breakglass::store::Store,
    head: Option<breakglass::audit::Head>,
) -> Vec<breakglass::audit::Event> {
    let from = head.map_or(0, |h| h.seq) + 1;
    store
        .audit_entries(from, 10_000)
        .unwrap()
        .iter()
        .map(|e| e.parsed().unwrap())
        .filter(|e| {
            !matches!(e, breakglass::audit::Event::SignOut { ended: Some(why), .. }
                if why == "idle" || why == "max-age")
        })
        .collect()
}

/// GET `path` with a session cookie: (status, body).
async fn get_with(base: &str, path: &str, session: &str) -> (u16, String) {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}{path}"))
        .header("cookie", format!("bg_session={session}"))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..at + 64].to_string()
}

/// Posts a verdict form; (status, body).
async fn post_verdict(base: &str, session: &str, id: &str, form: &[(&str, &str)]) -> (u16, String) {
    post_form(
        base,
        &format!("/review/accesses/{id}/verdict"),
        session,
        form,
    )
    .await
}

/// Posts a form with a session cookie; (status, body).
async fn post_form(base: &str, path: &str, session: &str, form: &[(&str, &str)]) -> (u16, String) {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}{path}"))
        .header("cookie", format!("bg_session={session}"))
        .form(form)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// `key`'s verdict on access `id`, signed over `note` and posted with `session` and its CSRF
/// token; (status, body).
async fn give_verdict(
    base: &str,
    session: &str,
    id: &str,
    verdict: VerdictKind,
    note: &str,
    key: &secp256k1::SecretKey,
) -> (u16, String) {
    let signature = verdict_signature(id, verdict, note, key);
    let csrf = csrf_of_session(base, session).await;
    post_verdict(
        base,
        session,
        id,
        &[
            ("csrf", &csrf),
            ("verdict", verdict.as_str()),
            ("note", note),
            ("note_salt", NOTE_SALT),
            ("signature", &signature),
        ],
    )
    .await
}

/// Signs `key`'s reviewer in and gives their verdict on `id`, which the service takes (303):
/// the session.
async fn verdict_taken(
    base: &str,
    id: &str,
    verdict: VerdictKind,
    note: &str,
    key: &secp256k1::SecretKey,
) -> String {
    let session = signed_in(base, key).await;
    let (s, body) = give_verdict(base, &session, id, verdict, note, key).await;
    assert_eq!(s, 303, "{body}");
    session
}

/// The salt the tests' verdicts post with their notes (a page draws one for each verdict).
const NOTE_SALT: &str = "5a17ed5a17ed5a17ed5a17ed5a17ed5a17ed5a17ed5a17ed5a17ed5a17ed5a17";

/// `key`'s signature over its verdict on `id` with `note`, salted with `NOTE_SALT`.
fn verdict_signature(
    id: &str,
    verdict: VerdictKind,
    note: &str,
    key: &secp256k1::SecretKey,
) -> String {
    salted_verdict_signature(id, verdict, note, NOTE_SALT, key)
}

fn salted_verdict_signature(
    id: &str,
    verdict: VerdictKind,
    note: &str,
    salt: &str,
    key: &secp256k1::SecretKey,
) -> String {
    let id: AccessId = id.parse().unwrap();
    let hash = breakglass::seal::commitment(&hex::decode(salt).unwrap(), note);
    sign(
        &breakglass::review::verdict::message(&id, verdict, &hash),
        key,
    )
}

/// A demo clinician's grant of the demo patient's allergies: its access id and token.
async fn grant(env: &Env, role: &str, nonce: u64) -> (String, String) {
    let p = provider(&env.demo, role);
    let (status, g) = post(
        &env.app,
        &signed(
            p["private_key"].as_str().unwrap(),
            patient(&env.demo, true),
            &["allergies"],
            nonce,
            now(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    (
        g["access_id"].as_str().unwrap().to_string(),
        g["access_token"].as_str().unwrap().to_string(),
    )
}

/// Mines until operation `id` is confirmed; its state.
async fn mined(env: &Env, op: &str) -> breakglass::store::Submission {
    eventually(op, SECS, async || {
        env.devnet.mine().await;
        let s = env.app.store.submission(op).unwrap()?;
        matches!(
            s.state,
            breakglass::store::SubmissionState::Confirmed { .. }
        )
        .then_some(s)
    })
    .await
}

fn txid_of(s: &breakglass::store::Submission) -> String {
    match &s.state {
        breakglass::store::SubmissionState::Confirmed { txid: Some(t), .. } => t.clone(),
        other => panic!("not confirmed with a txid: {other:?}"),
    }
}

/// A GET as the admin client `auditor`.
async fn admin_get(base: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .basic_auth("auditor", Some(ADMIN_SECRET))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_signs_in_in_a_browser_and_their_verdict_reaches_the_chain() {
    let env = setup(|s| {
        s.admin.clients = vec![client("auditor", ADMIN_SECRET)];
        s.resource_servers.clients = vec![client("fhir-server", RS_SECRET)];
        s.notify.immediate_data_types = vec![breakglass::domain::DataType::Allergies];
        s.audit.anchor_every_entries = 1_000_000;
        s.audit.anchor_every_secs = 1;
    })
    .await;
    let base = base(&env);
    let (id, token) = grant(&env, "nurse", 1).await;
    mined(&env, &format!("record:{id}")).await;
    // a resource server reads with the token: its introspection is in the access's trail
    let introspected = reqwest::Client::new()
        .post(format!("{base}/v1/token/introspect"))
        .basic_auth("fhir-server", Some(RS_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspected.status(), 200);
    // a refused request, by a signer the service knows
    let admin = provider(&env.demo, "admin");
    let (refused, _) = post(
        &env.app,
        &signed(
            admin["private_key"].as_str().unwrap(),
            patient(&env.demo, true),
            &["allergies"],
            1,
            now(),
        ),
    )
    .await;
    assert_eq!(refused, 403);

    // the access's record edited in the store since its grant (the device it was asked from):
    // the page says so, in the browser, and the reviewer still gives a verdict
    let access_id: AccessId = id.parse().unwrap();
    let granted = env.app.store.access(&access_id).unwrap().unwrap();
    let mut edited = granted.clone();
    edited.device = Some("er-tablet-9".into());
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            accesses: vec![edited],
            ..breakglass::store::Batch::default()
        },
    )
    .await
    .unwrap();
    // and a chain failure in its trail, as the submitter or the follower logs one (how it is
    // logged: `a_verdict_the_chain_refused_leaves_the_access_to_be_reviewed_again`): the page
    // says which call failed and why
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch::logging(breakglass::audit::Event::ChainFailure {
            operation: format!("review:{id}:9"),
            contract: "access-control".into(),
            function: "review-emergency-access".into(),
            access: Some(access_id),
            txid: Some("ab".repeat(32)),
            height: 3,
            result: "mined, but its effect is not on chain".into(),
            cleared: false,
        }),
    )
    .await
    .unwrap();

    // the browser: import the key, sign in, the queue, the access, the verdict, confirmed
    let reviewer = provider(&env.demo, "reviewer");
    let note = "Paged for anaphylaxis; reason matches the incident.\nNo further action.";
    let result = browser_review(&env, &base, &id, note).await;
    assert!(
        result["record_altered"]
            .as_str()
            .is_some_and(|t| t.contains("not what its audit entry says was granted")),
        "{result}"
    );
    assert!(
        result["trail"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .ends_with("chain-failure: review-emergency-access failed (mined, but its effect is not on chain)")),
        "{result}"
    );
    // and the reviewer's reading of the page, its reason shown, is in the log
    let principal = reviewer["principal"].as_str().unwrap();
    assert!(
        logged(&*env.app.store, "view").iter().any(|e| matches!(e,
            breakglass::audit::Event::View { by, reason: true, access, .. }
                if by == principal && *access == access_id)),
        "a view by {principal}"
    );
    // (put back as granted: `audit verify` below names an altered record, as its own test shows)
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            accesses: vec![granted],
            ..breakglass::store::Batch::default()
        },
    )
    .await
    .unwrap();

    // the browser posted the note with CRLF line breaks and a salt of its own: the hash of
    // both is on chain, not the note's own (which a guess would find)
    let posted = note.replace('\n', "\r\n");
    let salt = result["note_salt"].as_str().unwrap();
    let note_hash = hex::encode(breakglass::seal::commitment(
        &hex::decode(salt).unwrap(),
        &posted,
    ));
    assert_eq!(result["note_hash"], note_hash);
    let unsalted = hex::encode(Sha256::digest(posted.as_bytes()));
    let review = mined(&env, &format!("review:{id}")).await;
    let receipt = env.devnet.receipt(&txid_of(&review)).await;
    let shown = receipt.to_string();
    assert!(shown.contains("review-emergency-access"), "{receipt}");
    assert!(
        shown.contains(&note_hash),
        "the receipt carries the note's hash: {receipt}"
    );
    assert!(!shown.contains("anaphylaxis"), "the note stays off chain");
    assert!(!shown.contains(&unsalted), "{receipt}");
    let on_chain = env
        .app
        .store
        .verdict(&id.parse().unwrap())
        .unwrap()
        .expect("the verdict is stored");
    assert_eq!(on_chain.verdict, VerdictKind::Inappropriate);
    assert_eq!(
        on_chain.reviewer.to_string(),
        reviewer["principal"].as_str().unwrap()
    );
    // the chain's own record of the review names the reviewer (relayed by the service)
    let read = env
        .app
        .submitter
        .rpc
        .call_read(
            &format!("{}.access-control", deployer()),
            "get-emergency-review",
            &[Value::Buffer(hex::decode(&id).unwrap())],
            &deployer(),
        )
        .await
        .unwrap();
    let read = read.to_string();
    assert!(
        read.contains(reviewer["principal"].as_str().unwrap()),
        "{read}"
    );
    assert!(read.contains(&note_hash), "{read}");
    // the reviewer's page shows the note with its salt, to check the chain's hash by
    let session = signed_in(&base, &key_of(reviewer)).await;
    let (s, page) = get_with(&base, &format!("/review/accesses/{id}"), &session).await;
    assert_eq!(s, 200);
    assert!(
        page.contains(salt) && page.contains(&note_hash) && page.contains("anaphylaxis"),
        "{page}"
    );

    // the inappropriate verdict revoked the token: introspection says so at once
    let after: Json = reqwest::Client::new()
        .post(format!("{base}/v1/token/introspect"))
        .basic_auth("fhir-server", Some(RS_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["active"], false, "{after}");
    assert!(on_chain.revoked);

    // the review API, for an admin client: the access, its verdict, its trail; the clinician
    // as the directory has them, but not how to page them
    let clinician = env
        .app
        .store
        .access(&id.parse().unwrap())
        .unwrap()
        .unwrap()
        .provider;
    in_directory(
        &env,
        breakglass::domain::ProviderEntry {
            principal: clinician,
            display_name: "Nurse Bo Demo".into(),
            role: breakglass::domain::Role::Nurse,
            department: Some("Emergency".into()),
            organization: None,
            paging_ids: vec!["PAGER-7731".into(), "bo@hospital.example".into()],
        },
    )
    .await;
    let detail: Json = admin_get(&base, &format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["directory"]["display_name"], "Nurse Bo Demo");
    assert!(
        !detail.to_string().contains("PAGER-7731") && !detail.to_string().contains("bo@"),
        "{detail}"
    );
    // that entry is not what was registered on chain for the nurse ("Nurse Ben Demo"): it is
    // flagged wherever its name is shown, and the one registered is not
    assert_eq!(detail["directory"]["verification"], "mismatch", "{detail}");
    let in_queue = |page: &Json| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["access_id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    let queue: Json = admin_get(&base, "/v1/reviews").await.json().await.unwrap();
    assert_eq!(in_queue(&queue)["clinician_entry"], "mismatch", "{queue}");
    let nurse = provider(&env.demo, "nurse");
    in_directory(
        &env,
        breakglass::domain::ProviderEntry {
            principal: clinician,
            display_name: nurse["display_name"].as_str().unwrap().into(),
            role: breakglass::domain::Role::Nurse,
            department: nurse["department"].as_str().map(Into::into),
            organization: nurse["organization"].as_str().map(Into::into),
            paging_ids: vec![],
        },
    )
    .await;
    let registered: Json = admin_get(&base, &format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(registered["directory"]["verification"], "verified");
    let queue: Json = admin_get(&base, "/v1/reviews").await.json().await.unwrap();
    let row = in_queue(&queue);
    assert_eq!(
        (&row["clinician_name"], &row["clinician_entry"]),
        (&nurse["display_name"], &json!("verified")),
        "{queue}"
    );
    // the nurse no longer in the chain-state cache: the queue does not wait on the node for
    // them (the name shown as not checked); the access's view reads the node, and the queue
    // has them checked again after it
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            uncached: breakglass::store::Uncached {
                providers: vec![clinician],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let queue: Json = admin_get(&base, "/v1/reviews").await.json().await.unwrap();
    let row = in_queue(&queue);
    assert_eq!(
        (&row["clinician_name"], &row["clinician_entry"]),
        (&nurse["display_name"], &Json::Null),
        "{queue}"
    );
    let read: Json = admin_get(&base, &format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["directory"]["verification"], "verified", "{read}");
    let queue: Json = admin_get(&base, "/v1/reviews").await.json().await.unwrap();
    assert_eq!(in_queue(&queue)["clinician_entry"], "verified", "{queue}");
    assert_eq!(detail["verdict"]["verdict"], "inappropriate");
    assert_eq!(detail["verdict"]["on_chain"]["state"], "confirmed");
    assert!(
        detail["cannot_review"].is_string(),
        "admin clients never give verdicts"
    );
    assert!(
        detail["reason"].is_null()
            && detail["verdict"]["note"].is_null()
            && detail["verdict"]["note_salt"].is_null(),
        "the reason and the note are for reviewers only: {detail}"
    );
    assert!(!detail.to_string().contains("anaphylaxis") && !detail.to_string().contains(salt));
    let kinds: Vec<&str> = detail["trail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    for k in ["grant", "introspection", "verdict"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let pending: Json = admin_get(&base, "/v1/reviews?pending=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["counts"]["unreviewed"], 0, "{pending}");
    let flagged: Json = admin_get(&base, "/v1/reviews?verdict=inappropriate")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(flagged["items"][0]["access_id"], id.as_str());

    // the export: every entry as a FHIR R4 AuditEvent, checked by a FHIR validator
    let past_the_end = admin_get(&base, &format!("/v1/audit/export?since={}", u64::MAX)).await;
    assert_eq!(past_the_end.status(), 400);
    // a cursor past the log's end (the store restored from an older copy, or its tail lost in
    // a failover): said, not answered as if nothing were new (before: 200, empty, and the
    // entries numbered anew under the cursor never exported)
    let head_entry = env.app.store.audit_head().unwrap().unwrap();
    let head = head_entry.seq;
    let ahead = admin_get(&base, &format!("/v1/audit/export?since={}", head + 5)).await;
    assert_eq!(ahead.status(), 409);
    let said: Json = ahead.json().await.unwrap();
    assert_eq!(said["code"], "cursor-past-head", "{said}");
    let at_end = admin_get(&base, &format!("/v1/audit/export?since={head}")).await;
    assert_eq!(at_end.status(), 200);
    assert_eq!(
        at_end.headers()["x-audit-last-seq"].to_str().unwrap(),
        head.to_string()
    );
    // and the cursor's entry, named by its hash (`X-Audit-Last-Hash`), is checked: a log that
    // lost entries the cursor read and grew back past it is said to (before, read on as if not)
    let last_hash = at_end.headers()["x-audit-last-hash"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(last_hash, hex::encode(head_entry.hash));
    let on = admin_get(
        &base,
        &format!("/v1/audit/export?since={head}&since_hash={last_hash}"),
    )
    .await;
    assert_eq!(on.status(), 200);
    let lost = admin_get(
        &base,
        &format!(
            "/v1/audit/export?since={head}&since_hash={}",
            "00".repeat(32)
        ),
    )
    .await;
    assert_eq!(lost.status(), 409);
    let said: Json = lost.json().await.unwrap();
    assert_eq!(said["code"], "cursor-mismatch", "{said}");
    // a hash that is not one, or far too long: bad input, not a mismatch
    for bad in ["zz".to_string(), "ab".repeat(4_000)] {
        let malformed = admin_get(
            &base,
            &format!("/v1/audit/export?since={head}&since_hash={bad}"),
        )
        .await;
        assert_eq!(malformed.status(), 400);
        let said: Json = malformed.json().await.unwrap();
        assert_eq!(said["code"], "invalid-query", "{said}");
    }
    let export = admin_get(&base, "/v1/audit/export?since=0").await;
    assert_eq!(export.status(), 200);
    let ndjson = export.text().await.unwrap();
    fhir_validated(&env, &ndjson);
    for kind in [
        "grant",
        "refusal",
        "introspection",
        "sign-in",
        "verdict",
        "revocation",
        "start",
    ] {
        assert!(
            ndjson.contains(&format!("\"code\":\"{kind}\"")),
            "no {kind} in the export"
        );
    }

    // the log is anchored; stopped, `audit verify` walks it and matches the latest anchor
    let anchored = eventually("an anchor", SECS, async || {
        env.devnet.mine().await;
        let head = env.app.store.audit_head().unwrap()?;
        let op = format!("anchor:{}", hex::encode(head.hash));
        let s = env.app.store.submission(&op).unwrap()?;
        matches!(
            s.state,
            breakglass::store::SubmissionState::Confirmed { .. }
        )
        .then_some(head)
    })
    .await;
    let data_dir = env.dir.path().join("service");
    let responder_key = env.demo["responder"]["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    let responder_principal = env.demo["responder"]["principal"]
        .as_str()
        .unwrap()
        .to_string();
    let rpc = env.devnet.rpc.clone();
    let Env { app, .. } = env;
    app.stop().await;
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["audit", "verify"])
            .env("BREAKGLASS_DATA__DIR", &data_dir)
            .env("BREAKGLASS_CHAIN__NODE_URL", &rpc)
            .env("BREAKGLASS_SERVICE_KEY", &responder_key)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: Json = serde_json::from_slice(&ok.stdout).unwrap();
    let latest = &report["report"]["latest_anchor"];
    assert_eq!(latest["head"], hex::encode(anchored.hash), "{report}");
    // on a host with the store alone (an operator's), the check makes no key there
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        data_dir.join("breakglass.redb"),
        bare.path().join("breakglass.redb"),
    )
    .unwrap();
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["audit", "verify", "--responder", &responder_principal])
        .env("BREAKGLASS_DATA__DIR", bare.path())
        .env("BREAKGLASS_CHAIN__NODE_URL", &rpc)
        .env_remove("BREAKGLASS_SERVICE_KEY")
        .env_remove("BREAKGLASS_DATA_KEY")
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let made: Vec<_> = std::fs::read_dir(bare.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        made,
        vec![std::ffi::OsString::from("breakglass.redb")],
        "{made:?}"
    );
    assert_eq!(latest["count"], anchored.seq);
    assert!(report["report"]["entries"].as_u64().unwrap() >= anchored.seq);

    // one entry altered in the store: verify names it
    let rewrite = |seq: u64, with: &dyn Fn(String) -> Vec<u8>| {
        let db = redb::Database::open(data_dir.join("breakglass.redb")).unwrap();
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("audit");
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(table).unwrap();
            let key = format!("{seq:020}");
            let row = t.get(key.as_str()).unwrap().unwrap().value().to_vec();
            t.insert(
                key.as_str(),
                with(String::from_utf8(row).unwrap()).as_slice(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    let names = |seq: u64, what: &str| {
        let broken = verify();
        assert_eq!(
            broken.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&broken.stderr)
        );
        let why: Json = serde_json::from_slice(&broken.stdout).unwrap();
        assert_eq!(why["entry"], seq, "{why}");
        assert!(why["error"].as_str().unwrap().contains(what), "{why}");
    };
    let victim = 2u64;
    rewrite(victim, &|text| {
        let altered = text.replacen("\"at\":1", "\"at\":2", 1);
        assert_ne!(altered, text);
        altered.into_bytes()
    });
    names(victim, &format!("entry {victim}"));

    // one entry's bytes are not an entry at all: verify names it too, not the store, once the
    // entries before it are checked (the altered one still breaks the log first)
    let garbled = victim + 1;
    rewrite(garbled, &|_| b"\x00not an entry".to_vec());
    names(victim, &format!("entry {victim}"));
    rewrite(victim, &|text| {
        text.replacen("\"at\":2", "\"at\":1", 1).into_bytes()
    });
    names(garbled, &format!("entry {garbled}: unreadable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_and_verdicts_that_must_be_refused_are_and_change_nothing() {
    use crate::breakglass::{mine_applied, send_suspension};
    let env = setup(|s| {
        s.review.challenge_secs = 2;
        s.review.idle_secs = 8;
    })
    .await;
    let base = base(&env);
    let reviewer_p = provider(&env.demo, "reviewer");
    let reviewer = key_of(reviewer_p);
    let nurse_p = provider(&env.demo, "nurse");
    let nurse = key_of(nurse_p);
    let code = |p: &Json| p["code"].as_str().unwrap_or("").to_string();

    // keys made on the spot, each a principal the node is asked about, signing in at once:
    // held to the lookups all askers share (each was read from the node, twice, without end)
    let mut strangers = Vec::new();
    for _ in 0..40 {
        strangers.push((challenge(&base).await, new_key()));
    }
    let tries =
        futures_util::future::join_all(strangers.iter().map(|(c, k)| sign_in_as(&base, c, k)))
            .await;
    let bounded = tries
        .iter()
        .filter(|(s, p, _)| *s == 503 && code(p) == "too-many-lookups")
        .count();
    assert!(bounded >= 10, "{bounded} of 40 bounded");
    assert!(tries.iter().all(|(s, p, session)| session.is_none()
        && matches!(
            (s, code(p).as_str()),
            (403, "not-a-reviewer") | (503, "too-many-lookups")
        )));
    // the bound refills within a second: the reviewer signs in
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    signed_in(&base, &reviewer).await;

    // a non-reviewer's signature: refused, no session
    let c = challenge(&base).await;
    let (s, p, session) = sign_in_as(&base, &c, &nurse).await;
    assert_eq!((s, code(&p)), (403, "not-a-reviewer".into()), "{p}");
    assert!(session.is_none());
    // logged once: the same copy sent again finds its challenge spent, and is not logged again
    let logged = env.app.store.audit_head().unwrap();
    let (s, p, _) = sign_in_as(&base, &c, &nurse).await;
    assert_eq!((s, code(&p)), (401, "unknown-challenge".into()), "{p}");
    assert_eq!(logged_since(&*env.app.store, logged), []);

    // a challenge whose expiry was moved (signed and bound as handed out): not ours
    let c = challenge(&base).await;
    let mut later = Value::from_hex(c.message.trim_start_matches("0x")).unwrap();
    if let Value::Tuple(fields) = &mut later {
        let Some(Value::UInt(at)) = fields.get("expires-at").cloned() else {
            panic!("a challenge has an expiry")
        };
        fields.insert("expires-at".into(), Value::UInt(at + 3_600));
    }
    let (s, p, none) = sign_in(
        &base,
        &later.to_hex(),
        &sign(&later, &reviewer),
        Some(&c.cookie),
    )
    .await;
    assert_eq!((s, code(&p)), (401, "unknown-challenge".into()), "{p}");
    assert!(none.is_none());

    // malformed and oversized sign-ins: refused, no session
    for (body, status) in [
        ("not json".to_string(), 400),
        (
            json!({"message": "0x00", "signature": "0x00", "extra": 1}).to_string(),
            400,
        ),
        (
            json!({"message": "0x00", "signature": "0x00"}).to_string(),
            400,
        ),
        ("x".repeat(64 * 1024), 413),
    ] {
        let res = reqwest::Client::new()
            .post(format!("{base}/review/sign-in"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert!(set_cookie(&res, "bg_session").is_none());
        // each refusal a problem with a code (the one past the bound was the framework's text)
        let p: Json = res.json().await.unwrap();
        assert!(p["code"].is_string(), "{p}");
        if status == 413 {
            assert_eq!(p["code"], "request-too-large", "{p}");
        }
    }

    // a key made on the spot: refused, and not in the audit log (anyone can make keys), nor
    // in the chain-state cache (each catch-up would read it from the node again)
    let before = env.app.store.audit_head().unwrap();
    let c = challenge(&base).await;
    let made = new_key();
    let (s, p, none) = sign_in_as(&base, &c, &made).await;
    assert_eq!((s, code(&p)), (403, "not-a-reviewer".into()), "{p}");
    assert!(none.is_none());
    assert_eq!(logged_since(&*env.app.store, before), []);
    assert_eq!(env.app.store.reviewer(&address_of(&made)).unwrap(), None);
    // nor does it spend the challenge (nothing is kept for it): sent again, refused the same
    let (s, p, _) = sign_in_as(&base, &c, &made).await;
    assert_eq!((s, code(&p)), (403, "not-a-reviewer".into()), "{p}");

    // a challenge signs in once: sent again, refused
    let c = challenge(&base).await;
    let sig = sign_hex(&c.message, &reviewer);
    let (s, p, session) = sign_in(&base, &c.message, &sig, Some(&c.cookie)).await;
    assert_eq!(s, 200, "{p}");
    let session = session.unwrap();
    let (s, p, again) = sign_in(&base, &c.message, &sig, Some(&c.cookie)).await;
    assert_eq!((s, code(&p)), (401, "unknown-challenge".into()), "{p}");
    assert!(again.is_none());

    // from a browser that did not ask for it
    let c = challenge(&base).await;
    let (s, p, none) = sign_in(&base, &c.message, &sign_hex(&c.message, &reviewer), None).await;
    assert_eq!((s, code(&p)), (400, "challenge-not-bound".into()), "{p}");
    assert!(none.is_none());

    // expired before it came back
    let c = challenge(&base).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let (s, p, none) = sign_in_as(&base, &c, &reviewer).await;
    assert_eq!((s, code(&p)), (401, "expired-challenge".into()), "{p}");
    assert!(none.is_none());

    // a forged session cookie reads nothing; the real one does
    let (s, _) = get_with(&base, "/v1/reviews", &hex::encode([7u8; 32])).await;
    assert_eq!(s, 401);
    let (s, _) = get_with(&base, "/review", "not-even-hex").await;
    assert_eq!(s, 303, "a page without a session sends to the sign-in page");
    let (s, body) = get_with(&base, "/v1/reviews", &session).await;
    assert_eq!(s, 200, "{body}");

    // an access the nurse was granted, recorded on chain
    let (id, _) = grant(&env, "nurse", 1).await;
    mined(&env, &format!("record:{id}")).await;
    let nothing_stored = || {
        let aid: AccessId = id.parse().unwrap();
        assert!(env.app.store.verdict(&aid).unwrap().is_none());
        assert!(env
            .app
            .store
            .submission(&format!("review:{id}"))
            .unwrap()
            .is_none());
    };
    // the nurse's directory entry says another name than the one registered on chain: the
    // pages show it flagged
    let nurse_principal = nurse_p["principal"].as_str().unwrap().parse().unwrap();
    in_directory(
        &env,
        breakglass::domain::ProviderEntry {
            principal: nurse_principal,
            display_name: "Dr. Not The Nurse".into(),
            role: breakglass::domain::Role::Physician,
            department: None,
            organization: None,
            paging_ids: vec![],
        },
    )
    .await;
    // (a new session: the first may have idled out while the block was mined)
    let session = signed_in(&base, &reviewer).await;
    let (s, page) = get_with(&base, &format!("/review/accesses/{id}"), &session).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("Dr. Not The Nurse") && page.contains("not what was registered on chain"),
        "{page}"
    );
    let (s, queue) = get_with(&base, "/review", &session).await;
    assert_eq!(s, 200);
    assert!(
        queue.contains("Dr. Not The Nurse") && queue.contains("name not as registered on chain"),
        "{queue}"
    );
    let csrf = csrf_of(&page);
    let sig = verdict_signature(&id, VerdictKind::Appropriate, "fine", &reviewer);

    // a form without its CSRF token, or with another one
    for form in [
        vec![
            ("verdict", "appropriate"),
            ("note", "fine"),
            ("note_salt", NOTE_SALT),
            ("signature", sig.as_str()),
        ],
        vec![
            ("csrf", "0".repeat(64).leak() as &str),
            ("verdict", "appropriate"),
            ("note", "fine"),
            ("note_salt", NOTE_SALT),
            ("signature", sig.as_str()),
        ],
    ] {
        let (s, body) = post_verdict(&base, &session, &id, &form).await;
        assert_eq!(s, 403);
        assert!(body.contains("csrf-mismatch"), "{body}");
        nothing_stored();
    }
    // a verdict not signed by the signed-in reviewer, or over another note, or over the note
    // with another salt than the one posted, or over the note's own hash (unsalted)
    let nurse_sig = verdict_signature(&id, VerdictKind::Appropriate, "fine", &nurse);
    let other_note = verdict_signature(&id, VerdictKind::Appropriate, "something else", &reviewer);
    let other_salt = salted_verdict_signature(
        &id,
        VerdictKind::Appropriate,
        "fine",
        &"11".repeat(32),
        &reviewer,
    );
    let unsalted = sign(
        &breakglass::review::verdict::message(
            &id.parse().unwrap(),
            VerdictKind::Appropriate,
            &Sha256::digest(b"fine").into(),
        ),
        &reviewer,
    );
    for sig in [&nurse_sig, &other_note, &other_salt, &unsalted] {
        let (s, body) = post_verdict(
            &base,
            &session,
            &id,
            &[
                ("csrf", &csrf),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("note_salt", NOTE_SALT),
                ("signature", sig),
            ],
        )
        .await;
        assert_eq!(s, 400, "signed in, the verdict's signature is bad input");
        assert!(body.contains("bad-signature"), "{body}");
        nothing_stored();
    }

    // a malformed verdict, a note over 4,000 characters, a note's salt missing or not 32
    // bytes of hex, a verdict for an unknown access
    let long = "é".repeat(4001);
    let long_sig = verdict_signature(&id, VerdictKind::Appropriate, &long, &reviewer);
    for (form, status, code) in [
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("signature", sig.as_str()),
            ],
            400,
            "invalid-note-salt",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("note_salt", &NOTE_SALT[2..]),
                ("signature", sig.as_str()),
            ],
            400,
            "invalid-note-salt",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("note_salt", "zz".repeat(32).leak()),
                ("signature", sig.as_str()),
            ],
            400,
            "invalid-note-salt",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "maybe"),
                ("note", "fine"),
                ("note_salt", NOTE_SALT),
                ("signature", sig.as_str()),
            ],
            400,
            "invalid-verdict",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "appropriate"),
                ("note", long.as_str()),
                ("note_salt", NOTE_SALT),
                ("signature", long_sig.as_str()),
            ],
            400,
            "note-too-long",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("note_salt", NOTE_SALT),
                ("signature", "0xzz"),
            ],
            400,
            "malformed-signature",
        ),
    ] {
        let (s, body) = post_verdict(&base, &session, &id, &form).await;
        assert_eq!(s, status, "{body}");
        assert!(body.contains(code), "{body}");
        nothing_stored();
    }
    // a verdict not sent as a form, or past the form's bound (a note's 4,000 characters,
    // percent-encoded, are well within it): refused as such, nothing stored
    for (content_type, body, status, code) in [
        (
            "application/json",
            json!({ "csrf": csrf, "verdict": "appropriate", "note": "fine", "signature": sig })
                .to_string(),
            400,
            "malformed-form",
        ),
        (
            "application/x-www-form-urlencoded",
            format!(
                "csrf={csrf}&verdict=appropriate&signature={sig}&note={}",
                "x".repeat(70 * 1024)
            ),
            413,
            "form-too-large",
        ),
    ] {
        let res = reqwest::Client::new()
            .post(format!("{base}/review/accesses/{id}/verdict"))
            .header("cookie", format!("bg_session={session}"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        let body = res.text().await.unwrap();
        assert!(body.contains(code), "{body}");
        nothing_stored();
    }
    // a verdict or a sign-out posted without a session is refused before any of its form is
    // read: one whose body never comes is answered at once (before, up to 64 KiB was read
    // first, for anyone)
    for (path, status) in [
        (format!("/review/accesses/{id}/verdict"), 401),
        ("/review/sign-out".to_string(), 303),
    ] {
        let mut stalled = stalled_post_as(
            env.app.api_addr,
            &path,
            "application/x-www-form-urlencoded",
            32 * 1024,
            b"csrf=",
        )
        .await;
        assert_eq!(
            answered(&mut stalled, std::time::Duration::from_secs(2)).await,
            Some(status),
            "{path}"
        );
    }
    // (signed over the unknown access: a signature over another is refused first, before
    // the store or the node is read)
    let unknown = "ab".repeat(32);
    let unknown_sig = verdict_signature(&unknown, VerdictKind::Appropriate, "fine", &reviewer);
    for (signature, status, code) in [
        (&unknown_sig, 404, "unknown-access"),
        (&sig, 400, "bad-signature"),
    ] {
        let (s, body) = post_verdict(
            &base,
            &session,
            &unknown,
            &[
                ("csrf", &csrf),
                ("verdict", "appropriate"),
                ("note", "fine"),
                ("note_salt", NOTE_SALT),
                ("signature", signature),
            ],
        )
        .await;
        assert_eq!(s, status, "{body}");
        assert!(body.contains(code), "{body}");
    }

    // self-review: the nurse, made a reviewer on chain, may sign in, but not judge her own access
    env.devnet
        .call(
            &deployer_key(),
            "access-control",
            "add-reviewer",
            vec![principal(
                &nurse_p["principal"].as_str().unwrap().parse().unwrap(),
            )],
        )
        .await;
    mine_applied(&env.app, &env.devnet, "the nurse made a reviewer").await;
    let nurse_session = signed_in(&base, &nurse).await;
    let (s, page) = get_with(&base, &format!("/review/accesses/{id}"), &nurse_session).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("cannot review your own access"),
        "the page says so"
    );
    let own = verdict_signature(&id, VerdictKind::Appropriate, "fine", &nurse);
    let (s, body) = post_verdict(
        &base,
        &nurse_session,
        &id,
        &[
            ("csrf", &csrf_of_session(&base, &nurse_session).await),
            ("verdict", "appropriate"),
            ("note", "fine"),
            ("note_salt", NOTE_SALT),
            ("signature", &own),
        ],
    )
    .await;
    assert_eq!(s, 403);
    assert!(body.contains("self-review"), "{body}");
    nothing_stored();

    // an idle session ends
    let idle = signed_in(&base, &reviewer).await;
    tokio::time::sleep(std::time::Duration::from_millis(8_500)).await;
    let (s, _) = get_with(&base, "/v1/reviews", &idle).await;
    assert_eq!(s, 401, "idle for longer than review.idle_secs");

    // a reviewer suspended on chain loses the session with the block that suspends them
    let signing_in = breakglass::clock::now_ms();
    let fresh = signed_in(&base, &reviewer).await;
    let (s, _) = get_with(&base, "/v1/reviews", &fresh).await;
    assert_eq!(s, 200);
    send_suspension(&env, reviewer_p).await;
    mine_applied(&env.app, &env.devnet, "the reviewer's suspension").await;
    let (s, body) = get_with(&base, "/v1/reviews", &fresh).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("reviewer-not-verified"), "{body}");
    let (s, _) = get_with(&base, "/v1/reviews", &fresh).await;
    assert_eq!(s, 401, "the session is gone");
    // and its end is in the log, by the service, with why (beside the ends of the sessions
    // that idled out, the one above among them)
    let ended: Vec<_> = env
        .app
        .store
        .audit_entries(1, 10_000)
        .unwrap()
        .iter()
        .filter_map(|e| match e.parsed().unwrap() {
            breakglass::audit::Event::SignOut {
                reviewer: who,
                ended: Some(code),
                opened,
                until,
            } if code != "idle" => Some((who.to_string(), code, opened, until, e.at)),
            _ => None,
        })
        .collect();
    let [(who, why, Some(opened), Some(until), at)] = &ended[..] else {
        panic!("{ended:?}")
    };
    assert_eq!(
        (who.as_str(), why.as_str()),
        (
            reviewer_p["principal"].as_str().unwrap(),
            "reviewer-not-verified"
        )
    );
    // open from its sign-in until the service ended it (after the suspension was mined)
    assert!(
        *opened >= signing_in && opened < until && until <= at,
        "{ended:?}"
    );
    let c = challenge(&base).await;
    let (s, p, none) = sign_in_as(&base, &c, &reviewer).await;
    assert_eq!((s, code(&p)), (403, "reviewer-not-verified".into()), "{p}");
    assert!(none.is_none());
    nothing_stored();

    // every sign-in with a known signer is in the audit log, refused ones with their code
    let mut outcomes = Vec::new();
    for e in env.app.store.audit_entries(1, 10_000).unwrap() {
        if let breakglass::audit::Event::SignIn { outcome, .. } = e.parsed().unwrap() {
            outcomes.push(outcome);
        }
    }
    for o in ["not-a-reviewer", "ok", "reviewer-not-verified"] {
        assert!(outcomes.iter().any(|x| x == o), "{outcomes:?}");
    }

    // a provider's refused sign-ins are logged up to their share (as break-glass refusals):
    // anyone may register as a provider, and each was a synced write of the log. Beyond it,
    // refused all the same, not logged (the nurse is a reviewer by now: the pharmacist)
    let pharmacist = key_of(provider(&env.demo, "pharmacist"));
    let pharmacist_at = address_of(&pharmacist);
    let logged = || {
        env.app
            .store
            .audit_entries(1, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| {
                matches!(e.parsed().unwrap(), breakglass::audit::Event::SignIn { reviewer: Some(r), .. } if r == pharmacist_at)
            })
            .count()
    };
    let before = logged();
    let share = breakglass::access::REFUSAL_ENTRIES_PER_MINUTE as usize;
    for _ in 0..share + 10 {
        let c = challenge(&base).await;
        let (s, p, _) = sign_in_as(&base, &c, &pharmacist).await;
        assert_eq!((s, code(&p)), (403, "not-a-reviewer".into()), "{p}");
    }
    let added = logged() - before;
    assert!(added <= share + 1, "{added} logged of {}", share + 10);
    assert!(added >= share, "{added} logged: a share is");
}

/// Another reviewer reviews an access directly on chain with the same verdict and an empty
/// note (whose hash is everyone's), mined just before our reviewer's relayed verdict, the
/// same, which the contract refuses (u215). Its operation is failed, not confirmed: the chain's
/// review names the other reviewer. Before, verdict and note hash matching, ours was confirmed,
/// and the pages and the audit trail gave our reviewer the other's verdict. A verdict given
/// after is refused at once (409 `reviewed-on-chain`): the responder pays for no transaction the
/// contract would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_verdict_is_confirmed_only_as_its_reviewers() {
    let env = setup(|_| {}).await;
    let base = base(&env);
    let (id, _) = grant(&env, "nurse", 1).await;
    mined(&env, &format!("record:{id}")).await;

    // the physician, made a reviewer, reviews directly on chain
    let physician = provider(&env.demo, "physician");
    let physician_key = key_of(physician);
    env.devnet
        .call(
            &deployer_key(),
            "access-control",
            "add-reviewer",
            vec![principal(
                &physician["principal"].as_str().unwrap().parse().unwrap(),
            )],
        )
        .await;
    mine_applied(&env.app, &env.devnet, "the physician made a reviewer").await;
    let empty: [u8; 32] = Sha256::digest(b"").into();
    env.devnet
        .call(
            &physician_key,
            "access-control",
            "review-emergency-access",
            vec![
                Value::buffer(hex::decode(&id).unwrap()),
                Value::ascii("appropriate"),
                Value::buffer(empty),
                Value::None,
            ],
        )
        .await;

    // our reviewer gives the same verdict, with an empty note, through the service, before the
    // physician's review is mined (the service sees no review on chain yet)
    let reviewer = key_of(provider(&env.demo, "reviewer"));
    let session = verdict_taken(&base, &id, VerdictKind::Appropriate, "", &reviewer).await;
    let op = format!("review:{id}");
    let failed = eventually("the relayed verdict refused on chain", SECS, async || {
        env.app.submitter.tick().await.unwrap();
        env.devnet.mine().await;
        let s = env.app.store.submission(&op).unwrap()?;
        match s.state {
            breakglass::store::SubmissionState::Failed { .. } => Some(s),
            breakglass::store::SubmissionState::Confirmed { .. } => {
                panic!("confirmed as ours: {s:?}")
            }
            _ => None,
        }
    })
    .await;
    assert!(format!("{failed:?}").contains("refused"), "{failed:?}");
    // and no verdict is taken for it since: the chain has its review
    let (s, body) = give_verdict(
        &base,
        &session,
        &id,
        VerdictKind::Inappropriate,
        "",
        &reviewer,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("reviewed-on-chain"), "{body}");
}

/// A verdict the chain refuses (its reviewer lost the role before it was mined) leaves the
/// access to be reviewed again: it is pending in the queue, and another reviewer's verdict is
/// the access's next attempt (`review:<id>:1`), which reaches the chain. Before, the failed
/// verdict stood: every later one was refused as `already-reviewed`, and the access was never
/// reviewed on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_the_chain_refused_leaves_the_access_to_be_reviewed_again() {
    let env = setup(|s| s.admin.clients = vec![client("auditor", ADMIN_SECRET)]).await;
    let base = base(&env);
    let (id, _) = grant(&env, "nurse", 1).await;
    mined(&env, &format!("record:{id}")).await;
    let physician = provider(&env.demo, "physician");
    let reviewer_p = provider(&env.demo, "reviewer");
    let as_principal = |p: &Json| principal(&p["principal"].as_str().unwrap().parse().unwrap());
    env.devnet
        .call(
            &deployer_key(),
            "access-control",
            "add-reviewer",
            vec![as_principal(physician)],
        )
        .await;
    mine_applied(&env.app, &env.devnet, "the physician made a reviewer").await;

    // the reviewer's removal is sent, then their verdict given (the service has not seen the
    // removal yet): mined after the removal, the verdict is refused
    env.devnet
        .call(
            &deployer_key(),
            "access-control",
            "remove-reviewer",
            vec![as_principal(reviewer_p)],
        )
        .await;
    let reviewer = key_of(reviewer_p);
    verdict_taken(&base, &id, VerdictKind::Appropriate, "fine", &reviewer).await;
    eventually("the verdict refused on chain", SECS, async || {
        env.app.submitter.tick().await.unwrap();
        env.devnet.mine().await;
        let s = env.app.store.submission(&format!("review:{id}")).unwrap()?;
        matches!(s.state, breakglass::store::SubmissionState::Failed { .. }).then_some(())
    })
    .await;
    let pending: Json = admin_get(&base, "/v1/reviews?pending=true")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        pending["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["access_id"] == id.as_str() && i["review"]["state"] == "failed"),
        "{pending}"
    );
    // the refusal is in the log, once (the submitter ticks again and the follower sees later
    // blocks: no second entry), in the access's trail, with why
    for _ in 0..2 {
        env.app.submitter.tick().await.unwrap();
        mine_applied(&env.app, &env.devnet, "a block after the refusal").await;
    }
    let failures = logged(env.app.store.as_ref(), "chain-failure");
    assert_eq!(failures.len(), 1, "{failures:?}");
    match &failures[0] {
        breakglass::audit::Event::ChainFailure {
            operation,
            contract,
            function,
            access,
            txid,
            result,
            cleared,
            ..
        } => {
            assert_eq!(operation, &format!("review:{id}"));
            assert_eq!(
                (contract.as_str(), function.as_str()),
                ("access-control", "review-emergency-access")
            );
            assert_eq!(access.map(|a| a.to_string()), Some(id.clone()));
            assert!(
                txid.is_some() && !cleared && result.contains("refused"),
                "{result}"
            );
        }
        other => panic!("{other:?}"),
    }
    let detail: Json = admin_get(&base, &format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        detail["trail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"] == "chain-failure" && t["intact"] == true),
        "{detail}"
    );
    // and counted for operators, by the follower that found it
    let metrics = text(&env.app, "/metrics").await;
    assert!(
        metrics.contains("\nbreakglass_chain_operations_failed 1\n"),
        "{metrics}"
    );

    // the physician reviews it: the next attempt, on chain
    let physician_key = key_of(physician);
    let session = verdict_taken(
        &base,
        &id,
        VerdictKind::NeedsFollowUp,
        "call back",
        &physician_key,
    )
    .await;
    mined(&env, &format!("review:{id}:1")).await;
    // the reviewer's page says it in the access's trail
    let (status, page) = get_with(&base, &format!("/review/accesses/{id}"), &session).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("chain-failure: <code>review-emergency-access</code> failed (mined, but its effect is not on chain"),
        "{page}"
    );
    let latest = env
        .app
        .store
        .verdict(&id.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (latest.attempt, latest.verdict),
        (1, VerdictKind::NeedsFollowUp)
    );
    // and it stands: a third is refused
    let (s, body) = give_verdict(
        &base,
        &session,
        &id,
        VerdictKind::Appropriate,
        "",
        &physician_key,
    )
    .await;
    assert_eq!(s, 409, "{body}");
}

/// Signing out ends the session even while the chain cannot be read (the reviewer's entry no
/// longer cached and the node down): once the node is back, the cookie opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_session_while_the_node_is_down() {
    let mut env = setup(|_| {}).await;
    let base = base(&env);
    let reviewer = provider(&env.demo, "reviewer");
    let session = signed_in(&base, &key_of(reviewer)).await;
    let csrf = csrf_of_session(&base, &session).await;

    // the reviewer's entries leave the cache, and the node goes away
    let who: breakglass::stacks::Address = reviewer["principal"].as_str().unwrap().parse().unwrap();
    let mut batch = breakglass::store::Batch::default();
    batch.uncached.reviewers.push(who);
    batch.uncached.providers.push(who);
    breakglass::store::apply_async(&env.app.store, batch)
        .await
        .unwrap();
    let port = env.devnet.rpc.rsplit(':').next().unwrap().to_string();
    env.devnet.kill().await;
    let (status, _) = get_with(&base, "/review", &session).await;
    assert_eq!(
        status, 503,
        "the session cannot be checked against the chain"
    );

    let (status, _) = post_form(&base, "/review/sign-out", &session, &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);

    let data_dir = env.dir.path().join("devnet");
    let observer = format!("http://{}", env.app.observer_addr);
    env.devnet = Devnet::start(&[
        "--port",
        &port,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--observer",
        &observer,
    ])
    .await;
    eventually("the reviewer's entry read again", SECS, async || {
        env.app
            .follower
            .state
            .is_reviewer(&who)
            .await
            .ok()
            .filter(|r| *r)
    })
    .await;
    let (status, _) = get_with(&base, "/review", &session).await;
    assert_eq!(status, 303, "signed out: the page sends to the sign-in");
}

/// A session's CSRF token, from its queue page.
async fn csrf_of_session(base: &str, session: &str) -> String {
    let (s, page) = get_with(base, "/review", session).await;
    assert_eq!(s, 200);
    csrf_of(&page)
}

/// Two replicas on one Redis, behind a load balancer without session affinity: a challenge
/// handed out by one is signed in with on the other, once; the session opened there is open on
/// both; signing out on one signs out on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_moves_between_replicas_without_signing_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url.clone())).await;
    // a replica started with keys of its own (a first run on a new host generates them) does
    // not start: it could not open or verify what the others seal and sign
    let mut fresh = settings(&env.devnet.rpc, &dir.path().join("fresh"));
    fresh.data.redis_url = Some(url.clone());
    let responder = breakglass::keys::ServiceKeys {
        stacks: key_of(&env.demo["responder"]),
        source: breakglass::keys::KeySource::Env,
    };
    let refused = breakglass::startup::Application::build(fresh, responder)
        .await
        .err()
        .expect("a replica with other keys is refused");
    assert!(refused.to_string().contains("no data key"), "{refused}");
    // the others' keys copied beside the ones it generated (newer, so current): refused still
    let refused = build_replica(&env, &dir.path().join("fresh"), |s| {
        s.data.redis_url = Some(url.clone())
    })
    .await
    .err()
    .expect("a replica sealing with a key of its own is refused");
    assert!(
        refused.to_string().contains("seals with data key"),
        "{refused}"
    );
    let other = replica(&env, &dir.path().join("other"), |s| {
        s.data.redis_url = Some(url.clone())
    })
    .await;
    let (a, b) = (base(&env), format!("http://{}", other.api_addr));
    let reviewer = key_of(provider(&env.demo, "reviewer"));

    // handing challenges out keeps nothing on the shared state: anyone may ask for any number
    // without pushing a reviewer's out
    let kept = || -> Vec<String> {
        redis::cmd("KEYS")
            .arg("*challenge*")
            .query(&mut redis.connection())
            .unwrap()
    };
    let first = challenge(&a).await;
    futures_util::future::join_all((0..200).map(|_| challenge(&b))).await;
    assert_eq!(
        kept(),
        Vec::<String>::new(),
        "asking for challenges wrote nothing"
    );
    let (status, body, _) = sign_in_as(&b, &first, &reviewer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kept().len(), 1, "a spent challenge is kept");

    // handed out by A, signed in with on B
    let c = challenge(&a).await;
    let signature = sign_hex(&c.message, &reviewer);
    let (status, body, session) = sign_in(&b, &c.message, &signature, Some(&c.cookie)).await;
    assert_eq!(status, 200, "{body}");
    let session = session.expect("a session cookie");
    // spent, on either replica
    for at in [&a, &b] {
        let (status, body, none) = sign_in(at, &c.message, &signature, Some(&c.cookie)).await;
        assert_eq!(
            (status, body["code"].as_str(), none),
            (401, Some("unknown-challenge"), None)
        );
    }
    // refused on the shared state as in one process: a challenge never handed out (its nonce
    // forged, signed and bound), one sent back from another browser (which does not spend it:
    // its own browser still signs in with it), a forged, an oversized and a malformed session
    // cookie
    let mut forged = Value::from_hex(c.message.trim_start_matches("0x")).unwrap();
    let nonce = [9u8; 32];
    if let Value::Tuple(fields) = &mut forged {
        fields.insert("nonce".into(), Value::Buffer(nonce.to_vec()));
    }
    let (status, body, none) = sign_in(
        &b,
        &forged.to_hex(),
        &sign(&forged, &reviewer),
        Some(&hex::encode(nonce)),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str(), none),
        (401, Some("unknown-challenge"), None)
    );
    let c2 = challenge(&a).await;
    let signature2 = sign_hex(&c2.message, &reviewer);
    let (status, body, _) = sign_in(&b, &c2.message, &signature2, Some(&c.cookie)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("challenge-not-bound"))
    );
    let (status, body, own) = sign_in(&a, &c2.message, &signature2, Some(&c2.cookie)).await;
    assert_eq!(status, 200, "{body}");
    assert!(own.is_some());
    for cookie in [
        hex::encode([7u8; 32]),
        "ab".repeat(4_000),
        "not-even-hex".into(),
    ] {
        for at in [&a, &b] {
            let (status, _) = get_with(at, "/v1/reviews", &cookie).await;
            assert_eq!(status, 401, "{} bytes of cookie on {at}", cookie.len());
        }
    }

    // open on both, with the same CSRF token
    let csrf = csrf_of_session(&a, &session).await;
    assert_eq!(csrf_of_session(&b, &session).await, csrf);

    // an access read on B: logged once in the session, however often its page reloads
    let (access, _) = grant(&env, "nurse", 4_101).await;
    let page = format!("/review/accesses/{access}");
    let views = || {
        logged(&*env.app.store, "view")
            .into_iter()
            .filter(|e| matches!(e, breakglass::audit::Event::View { access: a, .. } if a.to_string() == access))
            .count()
    };
    for _ in 0..3 {
        assert_eq!(get_with(&b, &page, &session).await.0, 200);
    }
    assert_eq!(views(), 1);

    // signed out on A: signed out on B
    let (status, _) = post_form(&a, "/review/sign-out", &session, &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    for at in [&a, &b] {
        let (status, _) = get_with(at, "/review", &session).await;
        assert_ne!(status, 200, "signed out on {at}");
    }
    // signed in again on A, the access read on B: a new session's read, logged (B remembers
    // the last session's, not this one's)
    let again = signed_in(&a, &reviewer).await;
    assert_eq!(get_with(&b, &page, &again).await.0, 200);
    assert_eq!(views(), 2, "the new session's first read is logged");
    other.stop().await;
}

/// A session left unused past `review.idle_secs` ends, and its end is in the audit log once (a
/// sign-out the service ended, `ended` `idle`), whichever replica takes it out: two on one
/// Redis, and one process on its own store. The session is not open after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_idles_out_is_logged_as_ended_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let idle = |s: &mut breakglass::configuration::Settings| {
        s.review.idle_secs = 3;
        s.review.max_secs = 600;
    };
    let env = setup(|s| {
        idle(s);
        s.data.redis_url = Some(url.clone());
    })
    .await;
    let other = replica(&env, &dir.path().join("other"), |s| {
        idle(s);
        s.data.redis_url = Some(url.clone());
    })
    .await;
    let alone = setup(idle).await;
    for (env, signed_in_at, shared) in [
        (&env, base(&env), Some(&redis)),
        (&alone, base(&alone), None),
    ] {
        let reviewer = key_of(provider(&env.demo, "reviewer"));
        let principal = provider(&env.demo, "reviewer")["principal"]
            .as_str()
            .unwrap()
            .to_string();
        let before = breakglass::clock::now_ms();
        let session = signed_in(&signed_in_at, &reviewer).await;
        assert_eq!(get_with(&signed_in_at, "/review", &session).await.0, 200);
        let used = breakglass::clock::now_ms();
        // on Redis, until when the session is open, as the replicas keep it
        let deadline: Option<u64> = shared.map(|redis| {
            let key = hex::encode(Sha256::digest(hex::decode(&session).unwrap()));
            let mut c = redis.connection();
            let kept: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*session:{key}"))
                .query(&mut c)
                .unwrap();
            assert_eq!(kept.len(), 1, "{kept:?}");
            redis::cmd("HGET")
                .arg(&kept[0])
                .arg("until")
                .query(&mut c)
                .unwrap()
        });
        // each end: (when the session opened, until when it was open, when it was logged)
        let ended = || {
            audit_log(&*env.app.store)
                .iter()
                .filter_map(|e| match e.parsed().unwrap() {
                    breakglass::audit::Event::SignOut {
                        reviewer,
                        ended,
                        opened,
                        until,
                    } if reviewer.to_string() == principal && ended.as_deref() == Some("idle") => {
                        Some((opened, until, e.at))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        eventually(
            "the session's end logged",
            std::time::Duration::from_secs(20),
            async || (!ended().is_empty()).then_some(()),
        )
        .await;
        // the replicas keep looking: logged once
        tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
        let ends = ended();
        assert_eq!(ends.len(), 1, "{ends:?}");
        // with when the session was open: from its sign-in until its time ran out (3 s after
        // its last use, or after less than a tenth of that later on Redis), before it was logged
        let (Some(opened), Some(until), at) = ends[0] else {
            panic!("{ends:?}")
        };
        assert!(
            (before..=used).contains(&opened),
            "{ends:?} {before} {used}"
        );
        assert!(
            (opened + 2_700..=used + 3_000).contains(&until) && until <= at,
            "{ends:?} {used}"
        );
        if let Some(deadline) = deadline {
            assert_eq!(
                until, deadline,
                "the session's deadline, not when it was logged"
            );
        }
        assert_eq!(get_with(&signed_in_at, "/review", &session).await.0, 303);
    }
    other.stop().await;
}

/// One process on its own store keeps reviewers' sessions in its memory: when it stops they
/// end, and their ends are logged (`ended` `stopped`) before its stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_a_process_forgets_when_it_stops_are_logged_as_ended() {
    let env = setup(|_| {}).await;
    let reviewer = provider(&env.demo, "reviewer");
    let principal = reviewer["principal"].as_str().unwrap().to_string();
    let signed_in_at = breakglass::clock::now_ms();
    let session = signed_in(&base(&env), &key_of(reviewer)).await;
    assert_eq!(get_with(&base(&env), "/review", &session).await.0, 200);
    let used = breakglass::clock::now_ms();
    let Env { app, dir, .. } = env;
    let stopped = breakglass::clock::now_ms();
    app.stop().await;
    let store =
        breakglass::store::RedbStore::open(&dir.path().join("service/breakglass.redb")).unwrap();
    use breakglass::store::Store as _;
    let head = store.audit_head().unwrap().unwrap();
    let entries = store.audit_entries(head.seq - 1, 2).unwrap();
    let last: Vec<_> = entries.iter().map(|e| e.parsed().unwrap()).collect();
    let stopped_at = entries[1].at;
    assert!(
        matches!(&last[0], breakglass::audit::Event::SignOut { reviewer, ended: Some(why), opened: Some(opened), until: Some(until) }
            if reviewer.to_string() == principal && why == "stopped"
                && (signed_in_at..=used).contains(opened)
                && (stopped..=stopped_at).contains(until)),
        "{last:?}"
    );
    assert!(
        matches!(last[1], breakglass::audit::Event::Stop { .. }),
        "{last:?}"
    );
}

/// `ndjson`, an export, passes the FHIR validator (`tests/fhir/validate.mjs`).
fn fhir_validated(env: &Env, ndjson: &str) {
    let file = env.dir.path().join("audit.ndjson");
    std::fs::write(&file, ndjson).unwrap();
    let checked = std::process::Command::new("node")
        .arg("tests/fhir/validate.mjs")
        .arg(&file)
        .current_dir(repo())
        // the service's default identifier systems, whatever the shell's environment says
        .env_remove("BREAKGLASS_DIRECTORY__PATIENT_ID_SYSTEM")
        .env_remove("BREAKGLASS_DIRECTORY__PROVIDER_PRINCIPAL_SYSTEM")
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}\n{}\n{ndjson}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A service on a Redis of its own (in `dir`), with the admin client `auditor`.
async fn on_redis_with_an_auditor(dir: &std::path::Path) -> (RedisServer, Env) {
    let redis = RedisServer::start(dir);
    let url = redis.url();
    let env = setup(|s| {
        s.data.redis_url = Some(url);
        s.admin.clients = vec![client("auditor", ADMIN_SECRET)];
    })
    .await;
    (redis, env)
}

/// An entry a later version logged (a kind this version does not read: a replica of the next
/// version wrote it during a rolling upgrade) is exported as `unmapped`, and the page passes
/// the FHIR validator, which recomputes that entry's hash from the event it carries (its bytes
/// as logged); the entries around it are exported as before. Before, the export refused the
/// page at it (500 `audit-entry-unreadable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_versions_entry_is_exported_as_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, env) = on_redis_with_an_auditor(dir.path()).await;
    let base = base(&env);
    let (access, _) = grant(&env, "nurse", 1).await;

    // the next entry, as a replica of a later version links it on the head (and names it in
    // the log's index by access)
    let mut raw = redis.connection();
    let metas: Vec<String> = redis::cmd("KEYS").arg("*meta").query(&mut raw).unwrap();
    let meta = metas
        .iter()
        .find(|k| {
            redis::cmd("HEXISTS")
                .arg(k.as_str())
                .arg("audit_head")
                .query::<bool>(&mut raw)
                .unwrap()
        })
        .unwrap()
        .clone();
    let prefix = meta.strip_suffix("meta").unwrap();
    let head: String = redis::cmd("HGET")
        .arg(&meta)
        .arg("audit_head")
        .query(&mut raw)
        .unwrap();
    let head: breakglass::audit::Head = serde_json::from_str(&head).unwrap();
    let event = r#"{"kind":"handover","replica":"er-node-9:1:0a1b2c3d","lease":"follow-up"}"#;
    let (seq, at) = (head.seq + 1, breakglass::clock::now_ms());
    let entry = breakglass::audit::Entry {
        seq,
        at,
        prev: head.hash,
        hash: breakglass::audit::hash(&head.hash, seq, at, event),
        event: serde_json::value::RawValue::from_string(event.to_string()).unwrap(),
    };
    redis::pipe()
        .atomic()
        .hset(
            format!("{prefix}audit"),
            format!("{seq:020}"),
            serde_json::to_string(&entry).unwrap(),
        )
        .hset(
            &meta,
            "audit_head",
            serde_json::to_string(&entry.head()).unwrap(),
        )
        .zadd(
            format!("{prefix}sorted:audit_by_access"),
            format!("{access}:{seq:020}"),
            0,
        )
        .query::<()>(&mut raw)
        .unwrap();

    let export = admin_get(&base, "/v1/audit/export?since=0").await;
    assert_eq!(export.status(), 200);
    let ndjson = export.text().await.unwrap();
    let last: Json = serde_json::from_str(ndjson.lines().last().unwrap()).unwrap();
    assert_eq!(last["id"], seq.to_string(), "{ndjson}");
    assert_eq!(last["type"]["code"], "unmapped", "{last}");
    assert_eq!(last["subtype"][0]["code"], "handover", "{last}");
    assert!(
        ndjson.lines().count() as u64 == seq && ndjson.contains("\"code\":\"grant\""),
        "{ndjson}"
    );
    fhir_validated(&env, &ndjson);

    // the access's trail shows it by its kind, intact, on the API and the reviewer's page.
    // Before, it was left out (logged as an error): a privacy officer saw a gap
    let detail: Json = admin_get(&base, &format!("/v1/reviews/{access}"))
        .await
        .json()
        .await
        .unwrap();
    let trail = detail["trail"].as_array().unwrap();
    let later = trail.iter().find(|t| t["seq"] == seq).expect("shown");
    assert_eq!(
        (&later["kind"], &later["event"], &later["intact"]),
        (&json!("handover"), &Json::Null, &json!(true)),
        "{later}"
    );
    assert!(trail.iter().any(|t| t["kind"] == "grant"), "{trail:?}");
    let session = signed_in(&base, &key_of(provider(&env.demo, "reviewer"))).await;
    let (status, page) = get_with(&base, &format!("/review/accesses/{access}"), &session).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("#{seq} "))
            && page.contains(": handover <em class=\"later\">(logged by a later version"),
        "{page}"
    );
    // and as headless Chromium shows it, the reviewer's verdict given on the same page
    let seen = browser_review(&env, &base, &access, "handed over").await;
    assert!(
        seen["trail"].as_array().unwrap().iter().any(|l| {
            let l = l.as_str().unwrap();
            l.starts_with(&format!("#{seq} "))
                && l.contains(": handover (logged by a later version")
        }),
        "{seen}"
    );
}

/// An access's trail, read through the log's index by access, shows only the entries about
/// that access, and flags one that does not verify against the log: on Redis, one grant's
/// entry edited in place, and an index row added that names another access's grant for it.
/// Before, the trail showed whatever the index named, as it read, unflagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_trail_shows_its_own_entries_and_flags_an_edited_one() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, env) = on_redis_with_an_auditor(dir.path()).await;
    let base = base(&env);
    let (mine, _) = grant(&env, "nurse", 1).await;
    let (other, _) = grant(&env, "physician", 1).await;
    let trail = async |id: &str| -> Vec<Json> {
        let detail: Json = admin_get(&base, &format!("/v1/reviews/{id}"))
            .await
            .json()
            .await
            .unwrap();
        detail["trail"].as_array().unwrap().clone()
    };
    let before = trail(&mine).await;
    assert!(
        !before.is_empty() && before.iter().all(|t| t["intact"] == true),
        "{before:?}"
    );
    let seq = before[0]["seq"].as_u64().unwrap();
    let other_seq = trail(&other).await[0]["seq"].as_u64().unwrap();

    let mut raw = redis.connection();
    let index: Vec<String> = redis::cmd("KEYS")
        .arg("*sorted:audit_by_access")
        .query(&mut raw)
        .unwrap();
    let prefix = index[0].strip_suffix("sorted:audit_by_access").unwrap();
    // the grant's entry edited in place (its data type), its hash left as it was
    let log = format!("{prefix}audit");
    let field = format!("{seq:020}");
    let entry: String = redis::cmd("HGET")
        .arg(&log)
        .arg(&field)
        .query(&mut raw)
        .unwrap();
    let edited = entry.replace("allergies", "medications");
    assert_ne!(edited, entry);
    redis::cmd("HSET")
        .arg(&log)
        .arg(&field)
        .arg(&edited)
        .query::<()>(&mut raw)
        .unwrap();
    // and the other access's grant named in this access's index
    redis::cmd("ZADD")
        .arg(&index[0])
        .arg(0)
        .arg(format!("{mine}:{other_seq:020}"))
        .query::<()>(&mut raw)
        .unwrap();

    let after = trail(&mine).await;
    let seqs: Vec<u64> = after.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert!(
        !seqs.contains(&other_seq),
        "another access's entry shown: {after:?}"
    );
    let edited = after.iter().find(|t| t["seq"] == seq).unwrap();
    assert_eq!(edited["intact"], false, "{edited}");
    assert!(
        after
            .iter()
            .filter(|t| t["seq"] != seq)
            .all(|t| t["intact"] == true),
        "{after:?}"
    );

    // the export hands on no entry that does not hold together: a page holding the edited
    // entry is refused, naming it (a SIEM checks the links it is given, not the hashes); one
    // after it, linked to it as stored, goes out
    for since in [0, seq - 1] {
        let refused = admin_get(&base, &format!("/v1/audit/export?since={since}")).await;
        assert_eq!(refused.status(), 500, "since {since}");
        let p: Json = refused.json().await.unwrap();
        assert_eq!(p["code"], "audit-entry-unreadable", "{p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("entry {seq}")),
            "{p}"
        );
    }
    let after_it = admin_get(&base, &format!("/v1/audit/export?since={seq}")).await;
    assert_eq!(after_it.status(), 200);

    // every read of an access's record by someone other than its token's holder is in its
    // trail, once a while per reader and access, however often the page reloads: the admin
    // client's through the reviewers' API (read three times above: no reason shown), its
    // read of /v1/accesses (the reason shown), a reviewer's page read twice (the reason shown)
    let views = async |id: &str| -> Vec<(String, bool)> {
        trail(id)
            .await
            .iter()
            .filter(|t| t["kind"] == "view")
            .map(|t| {
                assert_eq!(t["event"]["access"], id, "{t}");
                assert_eq!(t["intact"], true, "{t}");
                let by = t["event"]["by"].as_str().unwrap().to_string();
                (by, t["event"]["reason"].as_bool().unwrap())
            })
            .collect()
    };
    assert_eq!(views(&other).await, [("auditor".to_string(), false)]);
    let read = admin_get(&base, &format!("/v1/accesses/{other}")).await;
    assert_eq!(read.status(), 200);
    assert!(read.json::<Json>().await.unwrap()["reason"].is_string());
    let reviewer = provider(&env.demo, "reviewer");
    let principal = reviewer["principal"].as_str().unwrap().to_string();
    let signing_in = breakglass::clock::now_ms();
    let session = signed_in(&base, &key_of(reviewer)).await;
    let signed_in_by = breakglass::clock::now_ms();
    for _ in 0..2 {
        let (status, page) = get_with(&base, &format!("/review/accesses/{other}"), &session).await;
        assert_eq!(status, 200, "{page}");
    }
    assert_eq!(
        views(&other).await,
        [
            ("auditor".to_string(), false),
            ("auditor".to_string(), true),
            (principal.clone(), true)
        ]
    );
    // a sign-out is logged, as a sign-in is
    let csrf = csrf_of_session(&base, &session).await;
    let (status, _) = post_form(&base, "/review/sign-out", &session, &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let head = env.app.store.audit_head().unwrap().unwrap();
    let last = env.app.store.audit_entries(head.seq, 1).unwrap();
    let breakglass::audit::Event::SignOut {
        reviewer: signed_out,
        ended: None,
        opened: Some(opened),
        until: Some(until),
    } = last[0].parsed().unwrap()
    else {
        panic!("{:?}", last[0].parsed())
    };
    assert_eq!(signed_out, principal.parse().unwrap());
    // (opened at its sign-in, before the reads above; ended as it was logged)
    assert!(
        (signing_in..=signed_in_by).contains(&opened) && signed_in_by <= until,
        "{opened} {until}"
    );
    assert!(until <= last[0].at, "{until}");
    // an access record edited in place (its rules, to make the grant look allowed) is flagged
    // against what its grant logged; so is one whose grant entry was edited (above): it proves
    // nothing of the record
    let intact = async |id: &str| {
        admin_get(&base, &format!("/v1/reviews/{id}"))
            .await
            .json::<Json>()
            .await
            .unwrap()["record_intact"]
            .clone()
    };
    assert_eq!(intact(&other).await, json!(true));
    assert_eq!(intact(&mine).await, json!(false));
    let accesses = format!("{prefix}accesses");
    let row: String = redis::cmd("HGET")
        .arg(&accesses)
        .arg(&other)
        .query(&mut raw)
        .unwrap();
    let mut record: Json = serde_json::from_str(&row).unwrap();
    record["rules"] = json!(["on-call-physician-allergies"]);
    redis::cmd("HSET")
        .arg(&accesses)
        .arg(&other)
        .arg(record.to_string())
        .query::<()>(&mut raw)
        .unwrap();
    assert_eq!(intact(&other).await, json!(false));

    // a read the log cannot take shows nothing: Redis full, an admin client's first read of
    // an access with its reason is refused, the reason not in the answer; and so is a
    // reviewer's page (signed in again: their reads are logged anew, the one before included)
    let again = signed_in(&base, &key_of(reviewer)).await;
    let (status, page) = get_with(&base, &format!("/review/accesses/{other}"), &again).await;
    assert_eq!(status, 200, "{page}");
    // (its record edited above: the page says so before anything else)
    assert!(page.contains(r#"id="record-altered""#), "{page}");
    assert_eq!(
        views(&other).await.len(),
        4,
        "read again after signing in again"
    );
    redis.set_maxmemory(1);
    let refused = admin_get(&base, &format!("/v1/accesses/{mine}")).await;
    assert_eq!(refused.status(), 503);
    let p: Json = refused.json().await.unwrap();
    assert_eq!(p["code"], "audit-unavailable", "{p}");
    assert!(!p.to_string().contains("suspected anaphylaxis"), "{p}");
    let (status, page) = get_with(&base, &format!("/review/accesses/{mine}"), &again).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("audit-unavailable"), "{page}");
    assert!(!page.contains("suspected anaphylaxis"), "{page}");
    redis.set_maxmemory(0);
}

/// Each start of a process of the service is in the audit log before it serves, with the keys
/// it runs with (the data key it seals with, its token signing key, the responder), so that a
/// key rotation shows at the next start; and each stop it is asked for, after it. A start that
/// fails (its port taken) logs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_start_and_stop_is_logged_with_the_keys_it_runs_with() {
    use breakglass::audit::Event;
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let data_key = || {
        breakglass::seal::Keyring::load_or_generate(dir.path(), None)
            .unwrap()
            .current_id()
    };
    let starts_and_stops = |store: &dyn breakglass::store::Store| -> Vec<Event> {
        store
            .audit_entries(1, 10_000)
            .unwrap()
            .iter()
            .map(|e| e.parsed().unwrap())
            .filter(|e| matches!(e, Event::Start { .. } | Event::Stop { .. }))
            .collect()
    };
    let first = app(&devnet.rpc, dir.path(), |_| {}).await;
    let (before, responder) = (data_key(), first.submitter.sender);
    let token_key = {
        let ring = breakglass::seal::Keyring::load_or_generate(dir.path(), None).unwrap();
        breakglass::token::TokenIssuer::load_or_generate(dir.path(), "", "", &ring)
            .unwrap()
            .kids()[0]
            .clone()
    };
    let logged = starts_and_stops(first.store.as_ref());
    let replica = breakglass::coordination::replica_id();
    // the build is named by the commit checked out (what this test was built from), marked
    // `.modified` when what is compiled had changes not committed, unless the build was given
    // its name
    let build = breakglass::startup::VERSION.to_string();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if let (Some(commit), None) = (commit, option_env!("BREAKGLASS_BUILD_ID")) {
        let mut status = vec!["status", "--porcelain", "--untracked-files=normal", "--"];
        status.extend(env!("BREAKGLASS_BUILT_FROM").split(' '));
        let modified = !git(&status).unwrap().is_empty();
        let marked = if modified { ".modified" } else { "" };
        assert_eq!(
            build,
            format!("{}+{commit}{marked}", env!("CARGO_PKG_VERSION"))
        );
    }
    assert!(
        crate::support::metrics(&first)
            .await
            .contains(&format!("breakglass_build_info{{version=\"{build}\"}} 1")),
        "this build in /metrics"
    );
    assert_eq!(
        logged,
        vec![Event::Start {
            replica: replica.clone(),
            version: build.clone(),
            data_key: before.clone(),
            token_key: token_key.clone(),
            responder,
        }]
    );
    first.stop().await;

    // a start that fails (its port taken) logs nothing: the start is logged once the process
    // is ready to run
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = settings(&devnet.rpc, dir.path());
    s.server.listen = taken.local_addr().unwrap();
    let keys = breakglass::keys::ServiceKeys::load_or_generate(dir.path()).unwrap();
    assert!(breakglass::startup::Application::build(s, keys)
        .await
        .is_err());
    drop(taken);

    // the data key rotated: the next start names the new one
    breakglass::seal::generate_key(dir.path()).unwrap();
    let after = data_key();
    assert_ne!(after, before);
    let second = app(&devnet.rpc, dir.path(), |_| {}).await;
    let logged = starts_and_stops(second.store.as_ref());
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert_eq!(
        logged[1],
        Event::Stop {
            replica: replica.clone(),
            lost: None,
        }
    );
    assert!(
        matches!(&logged[2], Event::Start { data_key, token_key: t, .. } if *data_key == after && *t == token_key),
        "{logged:?}"
    );
    second.stop().await;
    let store = breakglass::store::RedbStore::open(&dir.path().join("breakglass.redb")).unwrap();
    assert_eq!(
        starts_and_stops(&store).last(),
        Some(&Event::Stop {
            replica,
            lost: None
        })
    );
}

//! Patient notices end to end: the seeded devnet, the service, a real SMTP server process
//! (nodemailer's smtp-server, `contracts/scripts/smtp-server.mjs`) on a TCP port, and the
//! patient directory imported as a FHIR bundle through the admin API.

use std::time::Duration;

use crate::support::*;
use breakglass::configuration::{MailTransport, ResourceServerClient};
use breakglass::startup::Application;
use serde_json::{json, Value as Json};
use sha2::Digest;

const ADMIN: (&str, &str) = ("ops", "ops-secret");

fn patient_resource(id: &str, email: &str, language: &str) -> Json {
    json!({ "resourceType": "Patient", "id": format!("p-{}", &id[..6]),
            "identifier": [{ "system": "urn:breakglass:patient-id", "value": id }],
            "name": [{ "given": ["Ana"], "family": "García" }],
            "telecom": [{ "system": "phone", "value": "+34 600 000 000" }, { "system": "email", "value": email, "use": "home" }],
            "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": language }] }, "preferred": true }] })
}

/// `patient_resource` (English) with a guardian whose email is `delegate`.
fn with_delegate(id: &str, email: &str, delegate: &str) -> Json {
    let mut p = patient_resource(id, email, "en");
    p["contact"] = json!([{ "relationship": [{ "text": "guardian" }],
        "telecom": [{ "system": "email", "value": delegate }] }]);
    p
}

fn bundle(resources: Vec<Json>) -> Json {
    json!({ "resourceType": "Bundle", "type": "collection",
            "entry": resources.into_iter().map(|r| json!({ "resource": r })).collect::<Vec<_>>() })
}

async fn import(app: &Application, bundle: &Json, auth: bool) -> (u16, Json) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/patients", app.api_addr))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string());
    if auth {
        req = req.basic_auth(ADMIN.0, Some(ADMIN.1));
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Json::Null),
    )
}

/// `GET path` as the admin client.
async fn admin_get(app: &Application, path: &str) -> Json {
    reqwest::Client::new()
        .get(format!("http://{}{path}", app.api_addr))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn notices(app: &Application, state: &str) -> Vec<Json> {
    let res = admin_get(app, &format!("/v1/admin/notices?state={state}")).await;
    res["notices"].as_array().unwrap().clone()
}

async fn notify_env(smtp_port: u16) -> Env {
    notify_env_with(smtp_port, |_| {}).await
}

async fn notify_env_with(
    smtp_port: u16,
    configure: impl FnOnce(&mut breakglass::configuration::Settings),
) -> Env {
    setup(|s| {
        s.notify.transport = MailTransport::Smtp;
        s.notify.smtp.port = smtp_port;
        s.notify.from = "Privacy office <privacy@hospital.example>".into();
        s.notify.immediate_data_types = vec![breakglass::domain::DataType::Allergies];
        s.notify.explorer_tx_url = Some("https://explorer.example/txid/{txid}".into());
        s.notify.contest = "privacy@hospital.example".into();
        s.notify.poll_interval_ms = 200;
        s.notify.retry_initial_secs = 1;
        s.notify.retry_max_secs = 1;
        s.admin.clients = vec![ResourceServerClient {
            id: ADMIN.0.into(),
            secret_sha256: hex::encode(sha2::Sha256::digest(ADMIN.1)),
        }];
        configure(s);
    })
    .await
}

/// Breaks the glass for `patient` as the nurse; the access id.
async fn grant(env: &Env, patient: &str, nonce: u64) -> String {
    granted(env, patient, nonce).await.0
}

/// Breaks the glass for `patient` as the nurse; the access id and its token.
async fn granted(env: &Env, patient: &str, nonce: u64) -> (String, String) {
    let key = provider(&env.demo, "nurse")["private_key"]
        .as_str()
        .unwrap();
    let (status, body) = post(
        &env.app,
        &signed(key, patient, &["allergies"], nonce, now()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["access_id"].as_str().unwrap().to_string(),
        body["access_token"].as_str().unwrap().to_string(),
    )
}

/// An access as an admin client sees it: the whole of it, with its notice.
async fn access_view(env: &Env, id: &str) -> Json {
    admin_get(&env.app, &format!("/v1/accesses/{id}")).await
}

/// The demo patient who allows emergency access, with an email contact in the directory.
async fn patient_with_contact(env: &Env) -> String {
    let pid = patient(&env.demo, true).to_string();
    contact_imported(env, &pid, "ana@example.org").await;
    pid
}

/// Imports `email` (English) as the contact of patient `pid`.
async fn contact_imported(env: &Env, pid: &str, email: &str) {
    let (status, _) = import(
        &env.app,
        &bundle(vec![patient_resource(pid, email, "en")]),
        true,
    )
    .await;
    assert_eq!(status, 200);
}

/// A patient with a contact, and an access to their record whose notice has failed
/// `attempts` times (no SMTP server yet): the patient id and the access id.
async fn notice_failing(env: &Env, attempts: u64) -> (String, String) {
    let pid = patient_with_contact(env).await;
    let (id, token) = granted(env, &pid, 1).await;
    // an admin client reads the clinician's reason (a token's holder does not), with the salt
    // of the hash the chain and the token carry: SHA-256(salt ‖ reason), which it can check
    let view = access_view(env, &id).await;
    let reason = "unresponsive on arrival, suspected anaphylaxis";
    assert_eq!(view["reason"], reason);
    let mut salted = hex::decode(view["reason_salt"].as_str().unwrap()).unwrap();
    assert_eq!(salted.len(), 32);
    salted.extend_from_slice(reason.as_bytes());
    let commitment = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&salted));
    assert_eq!(view["reason_hash"], commitment, "{view}");
    let token_hash = token.split('.').nth(1).map(|p| {
        let p =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap();
        serde_json::from_slice::<serde_json::Value>(&p).unwrap()["reason_hash"].clone()
    });
    assert_eq!(token_hash, Some(json!(commitment)));
    eventually("failed attempts", Duration::from_secs(60), async || {
        env.devnet.mine().await;
        let a = access_view(env, &id).await;
        (a["notice"]["state"] == "pending" && a["notice"]["attempts"].as_u64() >= Some(attempts))
            .then_some(())
    })
    .await;
    // the mail server's errors to admin clients only; the token's holder sees where the notice
    // stands
    assert!(access_view(env, &id).await["notice"]["last_error"].is_string());
    let (status, held) = access_with_token(&env.app, &id, &token).await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["notice"]["state"], "pending", "{held}");
    assert!(held["notice"].get("last_error").is_none(), "{held}");
    (pid, id)
}

/// Mines until the access is on chain, then waits for its notice to reach `state`.
async fn notice_reaches(env: &Env, id: &str, state: &str) -> Json {
    eventually(
        &format!("notice {state}"),
        Duration::from_secs(60),
        async || {
            env.devnet.mine().await;
            let a = access_view(env, id).await;
            (a["notice"]["state"] == state).then_some(a)
        },
    )
    .await
}

fn text_parts(raw: &[u8]) -> (String, String) {
    let m = mailparse::parse_mail(raw).unwrap();
    assert_eq!(m.ctype.mimetype, "multipart/alternative");
    let part = |t: &str| {
        m.subparts
            .iter()
            .find(|p| p.ctype.mimetype == t)
            .unwrap_or_else(|| panic!("no {t} part"))
            .get_body()
            .unwrap()
    };
    (part("text/plain"), part("text/html"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_access_is_notified_once_with_its_proof() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    let pid = patient(&env.demo, true).to_string();

    // the directory: the admin API alone imports it; bad entries are refused with a reason
    let doc = bundle(vec![
        patient_resource(&pid, "ana.garcia@example.org", "es"),
        json!({ "resourceType": "Patient", "id": "no-id", "telecom": [{ "system": "email", "value": "x@example.org" }] }),
        patient_resource(&"ab".repeat(32), "not an address", "en"),
        json!({ "resourceType": "Observation", "id": "obs" }),
    ]);
    let (status, _) = import(&env.app, &doc, false).await;
    assert_eq!(status, 401);
    // a body past the bound: refused for its credentials before it is read, and with them
    // refused as too large with a code, nothing imported
    let oversized = |auth: bool| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/v1/admin/patients", env.app.api_addr))
            .header("content-type", "application/fhir+json")
            .body(vec![b' '; 16 * 1024 * 1024 + 1]);
        if auth {
            req = req.basic_auth(ADMIN.0, Some(ADMIN.1));
        }
        async move {
            match req.send().await {
                Ok(res) => (
                    res.status().as_u16(),
                    res.json::<Json>().await.unwrap_or(Json::Null),
                ),
                // refused before the body is all sent: the connection closed on the rest
                Err(e) => panic!("no answer: {e}"),
            }
        }
    };
    let (status, p) = oversized(false).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (401, Some("invalid-client")),
        "{p}"
    );
    let (status, p) = oversized(true).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (413, Some("import-too-large")),
        "{p}"
    );
    let (status, report) = import(&env.app, &doc, true).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], 1);
    // in the audit log once taken (the refused posts above are not): by whom, how many, which
    // bytes (whose contacts changed is in the bytes, not the log)
    assert_eq!(
        logged(&*env.app.store, "import"),
        [breakglass::audit::Event::Import {
            by: ADMIN.0.into(),
            what: "patients".into(),
            patient: None,
            count: 1,
            hash: hex::encode(sha2::Sha256::digest(doc.to_string().as_bytes())),
        }]
    );
    let rejected: Vec<(u64, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entry"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rejected.len(), 3, "{report}");
    assert!(rejected[0].1.contains("identifier"), "{rejected:?}");
    assert!(rejected[1].1.contains("email"), "{rejected:?}");
    assert!(rejected[2].1.contains("not a Patient"), "{rejected:?}");
    assert!(
        !report.to_string().contains("not an address"),
        "reasons never quote values"
    );

    let id = grant(&env, &pid, 1).await;
    let access = notice_reaches(&env, &id, "sent").await;
    let txid = access["chain"]["txid"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    assert_eq!(access["chain"]["state"], "confirmed");

    // a little later: still exactly one message
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    let (envelope, raw) = &got[0];
    assert_eq!(envelope["to"], json!(["ana.garcia@example.org"]));
    assert_eq!(envelope["from"], "privacy@hospital.example");
    let message_id = format!("<{id}@hospital.example>");
    assert_eq!(header(raw, "Message-ID"), message_id);
    assert_eq!(access["notice"]["message_id"], message_id);
    assert!(header(raw, "To").contains("ana.garcia@example.org"));
    assert!(
        header(raw, "Subject").contains("Acceso de emergencia"),
        "in the patient's language"
    );
    let (text, html) = text_parts(raw);
    for body in [&text, &html] {
        assert!(body.contains(&txid), "the proof: {body}");
        // the explorer link (HTML-escaped in the HTML part)
        assert!(
            body.contains(&format!("https://explorer.example/txid/{txid}"))
                || body.contains(&format!(
                    "https:&#x2f;&#x2f;explorer.example&#x2f;txid&#x2f;{txid}"
                )),
            "{body}"
        );
        assert!(body.contains("alergias"), "the data type, by name");
        assert!(body.contains("enfermero"), "who, by role");
        assert!(
            body.contains("unresponsive on arrival"),
            "the stated reason"
        );
        assert!(body.contains("privacy@hospital.example"), "how to contest");
        assert!(body.contains(&id));
        // never the clinician's key or principal
        let nurse = provider(&env.demo, "nurse");
        assert!(!body.contains(nurse["principal"].as_str().unwrap()));
        assert!(!body.contains(nurse["private_key"].as_str().unwrap()));
    }

    // the directory and everything else the service keeps on disk: no plaintext address
    let mut files = vec![];
    let mut stack = vec![env.dir.path().join("service")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("breakglass.redb")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        // the contact, and the clinician's stated reason (clinical words): sealed, never plain
        for needle in ["ana.garcia@example.org", "Garc", "unresponsive on arrival"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds {needle} in plain text",
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_then_up_delivers_once_and_a_550_is_dead_lettered() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    // no SMTP server yet: attempts fail and are retried
    let (pid, id) = notice_failing(&env, 2).await;
    let pending = notices(&env.app, "pending").await;
    assert!(pending
        .iter()
        .any(|n| n["access_id"] == id.as_str() && n["last_error"].is_string()));
    assert!(received(&mail).is_empty());

    // the server comes up: delivered once
    let _smtp = smtp_server(port, &mail, 0).await;
    let a = notice_reaches(&env, &id, "sent").await;
    assert!(a["notice"]["attempts"].as_u64().unwrap() >= 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    assert_eq!(
        header(&got[0].1, "Message-ID"),
        format!("<{id}@hospital.example>")
    );
    assert!(header(&got[0].1, "Subject").starts_with("Emergency access to your health record"));

    // an address the server refuses for good (550): dead-lettered after one attempt
    let (status, _) = import(
        &env.app,
        &bundle(vec![patient_resource(&pid, "bounce@example.org", "en")]),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let dead = grant(&env, &pid, 2).await;
    let a = notice_reaches(&env, &dead, "dead").await;
    assert_eq!(a["notice"]["attempts"], 1);
    let reason = a["notice"]["reason"].as_str().unwrap();
    assert!(reason.contains("550"), "{a}");
    // the server quoted the address: it is redacted from what is kept and shown
    assert!(
        reason.contains("<recipient>") && !reason.contains("bounce@"),
        "{a}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        access_view(&env, &dead).await["notice"]["attempts"],
        1,
        "not retried"
    );
    let listed = notices(&env.app, "dead").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["access_id"], dead.as_str());
    assert!(
        !listed[0].to_string().contains("bounce@"),
        "operators see no address"
    );
    assert_eq!(received(&mail).len(), 1);

    // a delegate whose address is refused for good does not keep the notice from the patient:
    // each recipient is sent to alone. Before, the one envelope was refused whole, and the
    // notice dead-lettered: the patient never told
    let doc = bundle(vec![with_delegate(
        &pid,
        "ana@example.org",
        "bounce-guardian@example.org",
    )]);
    let (status, _) = import(&env.app, &doc, true).await;
    assert_eq!(status, 200);
    let told = grant(&env, &pid, 3).await;
    let a = notice_reaches(&env, &told, "sent").await;
    assert_eq!(a["notice"]["attempts"], 1, "{a}");
    let got = received(&mail);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0["to"], json!(["ana@example.org"]));
    // the copy names its recipient alone: not the delegate's address beside it
    assert_eq!(header(&got[1].1, "To"), "ana@example.org");
    assert_eq!(
        header(&got[1].1, "Message-ID"),
        format!("<{told}@hospital.example>")
    );
    let said = a["notice"].to_string();
    assert!(
        said.contains("550") && !said.contains("bounce-guardian"),
        "{a}"
    );
}

/// A 5xx about the service's own setup, not the recipient's mailbox (the relay refusing our
/// sender by policy, `553 5.7.1`, as after its setup changed; a refused login alike) is
/// retried, not dead-lettered: once the relay takes the sender again, the notice goes. Before,
/// every 5xx was permanent, and each notice tried meanwhile was dead for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_the_services_own_setup_is_retried_not_dead_lettered() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    let gate = env.dir.path().join("refuse-senders");
    std::fs::write(&gate, "").unwrap();
    let _smtp = smtp_server_with(
        port,
        &mail,
        0,
        &["--refuse-senders-while", gate.to_str().unwrap()],
    )
    .await;
    let (_, id) = notice_failing(&env, 3).await;
    let a = access_view(&env, &id).await;
    assert_eq!(a["notice"]["state"], "pending", "{a}");
    assert!(
        a["notice"]["last_error"].as_str().unwrap().contains("553"),
        "{a}"
    );
    assert!(received(&mail).is_empty());
    std::fs::remove_file(&gate).unwrap();
    notice_reaches(&env, &id, "sent").await;
    assert_eq!(received(&mail).len(), 1);
}

/// A recipient still failing when the notice gives up (the delegate's mailbox answering 4xx),
/// while the other has it (the patient): the notice is sent, saying who could not be reached.
/// Before, the whole notice was dead-lettered, as if the patient had not been told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_on_one_recipient_keeps_the_others_delivery() {
    let port = free_port();
    let env = notify_env_with(port, |s| s.notify.give_up_after_hours = 0).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    let pid = patient(&env.demo, true).to_string();
    let doc = bundle(vec![with_delegate(
        &pid,
        "ana@example.org",
        "later-guardian@example.org",
    )]);
    let (status, _) = import(&env.app, &doc, true).await;
    assert_eq!(status, 200);
    let id = grant(&env, &pid, 1).await;
    let a = notice_reaches(&env, &id, "sent").await;
    let said = a["notice"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.contains("the delegate's address could not be reached") && said.contains("450"),
        "{a}"
    );
    assert!(!said.contains("later-guardian"), "{a}");
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0["to"], json!(["ana@example.org"]));
}

/// A patient's contact changed while their notice is retried: a recipient the directory no
/// longer names (a delegate removed, an old address) is not sent to again, and the patient's
/// new address gets the same message. Before, every retry went to the recipients as first
/// made, until the retry period ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_the_directory_no_longer_names_is_not_sent_to_again() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    let pid = patient(&env.demo, true).to_string();
    let with = |email: &str, delegate: Option<&str>| {
        bundle(vec![match delegate {
            Some(d) => with_delegate(&pid, email, d),
            None => patient_resource(&pid, email, "en"),
        }])
    };
    let set = async |doc: Json| assert_eq!(import(&env.app, &doc, true).await.0, 200);
    let attempts = async |id: &str| {
        let a = access_view(&env, id).await;
        a["notice"]["attempts"].as_u64().unwrap_or(0)
    };

    // both addresses deferred (the test server answers 450 to `later*`): nobody has it
    set(with(
        "later-ana@example.org",
        Some("later-guardian@example.org"),
    ))
    .await;
    let first = grant(&env, &pid, 1).await;
    eventually("two attempts", Duration::from_secs(60), async || {
        env.devnet.mine().await;
        (attempts(&first).await >= 2).then_some(())
    })
    .await;
    // the patient's address changes, the delegate is removed: the new address has it
    set(with("ana@example.org", None)).await;
    let a = notice_reaches(&env, &first, "sent").await;
    assert_eq!(
        a["notice"]["last_error"], "not sent to 2 addresses the directory no longer names",
        "{a}"
    );
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0["to"], json!(["ana@example.org"]));
    assert_eq!(header(&got[0].1, "To"), "ana@example.org");
    assert_eq!(
        header(&got[0].1, "Message-ID"),
        format!("<{first}@hospital.example>"),
        "the same message"
    );

    // the patient has it, the delegate's is deferred; the patient's address changes and the
    // delegate is removed: sent, saying so, and not to the patient a second time
    set(with("ana@example.org", Some("later-guardian@example.org"))).await;
    let second = grant(&env, &pid, 2).await;
    eventually(
        "delivered to the patient",
        Duration::from_secs(60),
        async || {
            env.devnet.mine().await;
            (received(&mail).len() == 2 && attempts(&second).await >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        access_view(&env, &second).await["notice"]["state"],
        "pending"
    );
    set(with("ana.new@example.org", None)).await;
    let a = notice_reaches(&env, &second, "sent").await;
    assert_eq!(
        a["notice"]["last_error"], "not sent to an address the directory no longer names",
        "{a}"
    );
    assert_eq!(received(&mail).len(), 2, "nobody has it twice");
}

/// No block mined (the chain stalled), the access's chain record is not on chain: its notice
/// waits for it no longer than `notify.chain_wait_hours` after it is due (here none), then goes
/// out once, saying the record is not confirmed yet, not naming a transaction. Before, it
/// waited on the chain without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_waits_for_the_chain_record_a_bounded_time_then_goes_out_saying_so() {
    let port = free_port();
    let env = notify_env_with(port, |s| s.notify.chain_wait_hours = 0).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    let pid = patient_with_contact(&env).await;
    let id = grant(&env, &pid, 1).await;
    let a = eventually("the notice sent", Duration::from_secs(60), async || {
        let a = access_view(&env, &id).await;
        (a["notice"]["state"] == "sent").then_some(a)
    })
    .await;
    assert_ne!(a["chain"]["state"], "confirmed", "{a}");
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    let (text, html) = text_parts(&got[0].1);
    for part in [&text, &html] {
        assert!(
            part.contains("is not confirmed yet: the service keeps"),
            "{part}"
        );
        assert!(part.contains(&id), "{part}");
        assert!(!part.contains("in transaction"), "{part}");
    }
    // sent once: the record's arrival later does not send it again
    eventually("the record on chain", Duration::from_secs(60), async || {
        env.devnet.mine().await;
        (access_view(&env, &id).await["chain"]["state"] == "confirmed").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&mail).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_without_a_contact_is_recorded_and_the_gap_is_visible() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    // never imported: the directory cannot reach this patient
    let pid = patient(&env.demo, true).to_string();
    let id = grant(&env, &pid, 1).await;
    let a = notice_reaches(&env, &id, "no_contact").await;
    // the access itself is recorded, on chain, as always
    assert_eq!(a["chain"]["state"], "confirmed");
    let listed = notices(&env.app, "no_contact").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["access_id"], id.as_str());
    assert_eq!(listed[0]["patient"], pid.as_str());
    assert!(received(&mail).is_empty());
    // operators see how many patients nobody could tell
    let m = Scrape::of(&env.app).await;
    assert_eq!(m.value("breakglass_notices_uncontacted"), 1.0);
    let (status, _) = reqwest::Client::new()
        .get(format!("http://{}/v1/admin/notices", env.app.api_addr))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);
    // a state that is none: refused, not an empty list
    let refused = admin_get(&env.app, "/v1/admin/notices?state=delivered").await;
    assert_eq!(refused["code"], "unknown-state", "{refused}");
    // a filter by another name: refused, not read as no filter (every notice listed)
    let refused = admin_get(&env.app, "/v1/admin/notices?status=dead").await;
    assert_eq!(refused["code"], "unknown-parameter", "{refused}");

    // the patient's contact imported later: the patient is told after all, once, of the
    // access they could not be told of (the message says when it was)
    contact_imported(&env, &pid, "late@example.org").await;
    // at once (the import tells the notifier), not at its next check of the directory (60 s)
    let a = eventually("notice sent", Duration::from_secs(30), async || {
        let a = access_view(&env, &id).await;
        (a["notice"]["state"] == "sent").then_some(a)
    })
    .await;
    assert!(a["notice"]["reopened_at"].is_u64(), "{a}");
    let got = received(&mail);
    assert_eq!(got.len(), 1, "one message");
    assert_eq!(got[0].0["to"], json!(["late@example.org"]));
    let (text, _) = text_parts(&got[0].1);
    assert!(
        text.contains("We could not reach you when it happened"),
        "{text}"
    );
    assert!(notices(&env.app, "no_contact").await.is_empty());
    assert_eq!(
        Scrape::of(&env.app)
            .await
            .value("breakglass_notices_uncontacted"),
        0.0
    );
    // the audit trail has both: nobody to tell, then the notice sent
    let trail = env.app.store.audit_of(&id.parse().unwrap()).unwrap();
    let states: Vec<String> = trail
        .iter()
        .map(|e| serde_json::from_str::<Json>(e.event.get()).unwrap())
        .filter(|e| e["kind"] == "notice")
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["no-contact", "sent"], "{trail:?}");
    // and nothing is sent again: a later check of the directory (another import nudges one)
    // finds nothing to open
    contact_imported(&env, &pid, "late@example.org").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&mail).len(), 1);
    assert_eq!(access_view(&env, &id).await["notice"]["state"], "sent");
}

fn practitioner(id: &str, principal: &str, name: &str) -> Json {
    json!({ "resourceType": "Practitioner", "id": id,
            "identifier": [{ "system": "urn:breakglass:stacks-principal", "value": principal }],
            "name": [{ "text": name }] })
}

fn practitioner_role(id: &str, role: &str) -> Json {
    json!({ "resourceType": "PractitionerRole", "id": format!("role-{id}"),
            "practitioner": { "reference": format!("Practitioner/{id}") },
            "code": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": role }] }],
            "specialty": [{ "text": "Emergency" }],
            "organization": { "display": "Demo General Hospital" },
            "telecom": [{ "system": "pager", "value": format!("PD-{id}") }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_directory_is_checked_against_the_chain_and_names_verified_clinicians() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    let (nurse, physician) = (
        provider(&env.demo, "nurse"),
        provider(&env.demo, "physician"),
    );
    let doc = bundle(vec![
        // as registered on chain
        practitioner("n1", nurse["principal"].as_str().unwrap(), "Nurse Ben Demo"),
        practitioner_role("n1", "nurse"),
        // not what was registered: flagged
        practitioner(
            "d1",
            physician["principal"].as_str().unwrap(),
            "Dr. Ada Impostor",
        ),
        practitioner_role("d1", "doctor"),
        // no role; a role for nobody
        practitioner("x1", nurse["principal"].as_str().unwrap(), "Nobody"),
        practitioner_role("zz", "nurse"),
    ]);
    let posted = async |content_type: &str| {
        reqwest::Client::new()
            .post(format!("http://{}/v1/admin/providers", env.app.api_addr))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .header("content-type", content_type)
            .body(doc.to_string())
            .send()
            .await
            .unwrap()
    };
    // a body that does not say it is JSON (a cross-site form's, with the credentials a browser
    // holds): refused before it is read, nothing imported
    let res = posted("text/plain").await;
    assert_eq!(res.status(), 415);
    let refused: Json = res.json().await.unwrap();
    assert_eq!(refused["code"], "unsupported-media-type", "{refused}");
    assert!(
        admin_get(&env.app, "/v1/admin/providers").await["providers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let res = posted("application/fhir+json; charset=utf-8").await;
    assert_eq!(res.status(), 200);
    let report: Json = res.json().await.unwrap();
    assert_eq!(report["imported"], 2, "{report}");
    // in the audit log once taken (the refused post above is not): by whom, how many, which bytes
    assert_eq!(
        logged(&*env.app.store, "import"),
        [breakglass::audit::Event::Import {
            by: ADMIN.0.into(),
            what: "providers".into(),
            patient: None,
            count: 2,
            hash: hex::encode(sha2::Sha256::digest(doc.to_string().as_bytes())),
        }]
    );
    let rejected: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource_id"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, ["x1", "role-zz"], "{report}");

    let list = admin_get(&env.app, "/v1/admin/providers").await;
    let entry = |p: &Json| {
        list["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["principal"] == p["principal"])
            .unwrap()
            .clone()
    };
    let n = entry(nurse);
    // the service's hash of the entry agrees with the one the devnet registered (JavaScript)
    assert_eq!(n["info_hash"], nurse["info_hash"]);
    assert_eq!(n["verification"], "verified");
    assert_eq!(n["role"], "nurse");
    assert_eq!(n["paging_ids"], json!(["PD-n1"]));
    let d = entry(physician);
    assert_eq!(d["role"], "physician");
    assert_eq!(d["verification"], "mismatch");

    // notices name a verified clinician, and only a verified one
    let pid = patient_with_contact(&env).await;
    let by_nurse = grant(&env, &pid, 1).await;
    notice_reaches(&env, &by_nurse, "sent").await;
    let key = physician["private_key"].as_str().unwrap();
    let (status, body) = post(&env.app, &signed(key, &pid, &["allergies"], 2, now())).await;
    assert_eq!(status, 201, "{body}");
    let by_physician = body["access_id"].as_str().unwrap().to_string();
    notice_reaches(&env, &by_physician, "sent").await;
    let got = received(&mail);
    let text_of = |id: &str| {
        got.iter()
            .find(|(_, raw)| header(raw, "Message-ID").contains(id))
            .map(|(_, raw)| text_parts(raw).0)
            .unwrap()
    };
    let t = text_of(&by_nurse);
    assert!(
        t.contains("Nurse Ben Demo, a nurse (Emergency), Demo General Hospital"),
        "{t}"
    );
    let t = text_of(&by_physician);
    assert!(!t.contains("Impostor"), "{t}");
    assert!(
        t.contains("a physician with credentials verified on chain"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_while_the_store_cannot_record_it() {
    let port = free_port();
    let env = notify_env(port).await;
    let mail = env.dir.path().join("mail");
    // no SMTP server yet: the message is rendered and kept, and its attempts fail
    let (_, id) = notice_failing(&env, 1).await;

    // the disk fails: the store stops writing, and the orchestrator is told to restart
    env.app
        .redb
        .as_ref()
        .unwrap()
        .stop_writing("the disk failed (injected)");
    let health = reqwest::get(format!("http://{}/healthz", env.app.api_addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let body: Json = health.json().await.unwrap();
    assert_eq!(body["status"], "store-stopped");
    // and it is not ready, saying why
    let ready = reqwest::get(format!("http://{}/readyz", env.app.api_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Json = ready.json().await.unwrap();
    let why = body["checks"]["store_writes"].as_str().unwrap();
    assert!(why.contains("the disk failed (injected)"), "{body}");
    assert_eq!(
        body["checks"]["notices"],
        json!({"transport": "smtp", "emailed": true}),
        "{body}"
    );

    // the server comes up: nothing is sent, since it could not be recorded as sent (an
    // attempt a second, before this change, sent it again every 5 s)
    let _smtp = smtp_server(port, &mail, 0).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(received(&mail).is_empty(), "{:?}", received(&mail).len());
    let a = access_view(&env, &id).await;
    assert_eq!(a["notice"]["state"], "pending", "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_that_cannot_be_prepared_is_dead_lettered_after_the_retry_period() {
    // no retry period: a notice stuck once is dead-lettered at once
    let env = notify_env_with(free_port(), |s| s.notify.give_up_after_hours = 0).await;
    let pid = patient_with_contact(&env).await;
    let id = grant(&env, &pid, 1).await;
    // its reason sealed with a key the service does not have (a key retired too early)
    let mut access = env.app.store.access(&id.parse().unwrap()).unwrap().unwrap();
    let stranger = breakglass::seal::Keyring::from_keys(&[[9; 32]]).unwrap();
    access.reason_sealed = hex::encode(stranger.seal(&format!("reason:{id}"), b"x").unwrap());
    env.app
        .store
        .apply(breakglass::store::Batch {
            accesses: vec![access],
            ..Default::default()
        })
        .unwrap();

    let a = notice_reaches(&env, &id, "dead").await;
    let reason = a["notice"]["reason"].as_str().unwrap();
    assert!(reason.contains("could not be prepared"), "{a}");
    let dead = notices(&env.app, "dead").await;
    assert!(
        dead.iter().any(|n| n["access_id"] == id.as_str()),
        "{dead:?}"
    );
}

/// The follower sees no block (the node posts to `/new_block`, but the observer only answers
/// under its secret path), so the record is found on chain by the submitter: its rebroadcast
/// meets `BadNonce`, or a catch-up's check of used nonces, and the chain says it is there.
/// The notice must still name the transaction and its block, whatever the transport.
async fn the_proof_survives_the_rebroadcast_path(transport: MailTransport) {
    let port = free_port();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a-secret-path-0123456789").unwrap();
    let secret_path = secret.path().to_path_buf();
    let env = notify_env_with(port, move |s| {
        s.notify.transport = transport;
        s.submitter.rebroadcast_after_blocks = 1;
        s.follower.path_secret_file = Some(secret_path);
    })
    .await;
    let mail = env.dir.path().join("mail");
    let _smtp = smtp_server(port, &mail, 0).await;
    // the observer's endpoint without its secret path is not found
    let res = reqwest::Client::new()
        .post(format!("http://{}/new_block", env.app.observer_addr))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let pid = patient_with_contact(&env).await;
    let id = grant(&env, &pid, 1).await;
    let txid = eventually("submitted", SECS, async || {
        let a = access_view(&env, &id).await;
        (a["chain"]["state"] == "submitted")
            .then(|| a["chain"]["txid"].as_str().unwrap().to_string())
    })
    .await;
    env.devnet.mine().await;
    let receipt = env.devnet.receipt(&txid).await;
    assert_eq!(receipt["status"], "success");
    let access = eventually("notice sent", Duration::from_secs(60), async || {
        let a = access_view(&env, &id).await;
        (a["notice"]["state"] == "sent").then_some(a)
    })
    .await;
    assert_eq!(access["chain"]["state"], "confirmed");
    assert_eq!(access["chain"]["txid"], json!(txid), "{access}");
    assert_eq!(
        access["chain"]["block_height"], receipt["block_height"],
        "{access}"
    );
    let raw = match transport {
        MailTransport::Smtp => received(&mail).pop().unwrap().1,
        MailTransport::File => {
            let outbox = env.dir.path().join("service").join("outbox");
            // the messages in the clear: the service's user's alone
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&outbox).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "outbox mode {mode:o}");
            let eml = std::fs::read_dir(&outbox)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "eml"))
                .expect("the notice in the outbox");
            std::fs::read(eml).unwrap()
        }
    };
    let (text, html) = text_parts(&raw);
    for body in [&text, &html] {
        assert!(
            body.contains(&txid),
            "the proof names the transaction: {body}"
        );
        assert!(!body.contains("transaction -"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_names_the_txid_after_the_rebroadcast_path_over_smtp() {
    the_proof_survives_the_rebroadcast_path(MailTransport::Smtp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_names_the_txid_after_the_rebroadcast_path_in_the_dev_outbox() {
    the_proof_survives_the_rebroadcast_path(MailTransport::File).await;
}

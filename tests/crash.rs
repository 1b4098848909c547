//! Crash safety: the service is killed with SIGKILL right after each grant, twenty times
//! over; every granted access still reaches the chain, exactly once.

mod support;

use std::process::Stdio;
use std::time::Duration;

use breakglass::stacks::Value;
use serde_json::{json, Value as Json};
use support::*;

fn signed(key: &str, patient: &str, nonce: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let input = json!({ "private_key": key, "patient": patient, "data_types": ["allergies"], "reason": "crash test", "nonce": nonce, "issued_at": now });
    let out = std::process::Command::new("node")
        .arg("scripts/sign-request.mjs")
        .arg(input.to_string())
        .current_dir(repo().join("contracts"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_reaches_the_chain_once_across_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    // the devnet mines on its own every half second, while the service keeps dying
    let devnet = Devnet::start(&[
        "--data-dir",
        devnet_dir.to_str().unwrap(),
        "--seed-demo",
        "--block-time",
        "0.5",
    ])
    .await;
    let demo: Json = serde_json::from_str(
        &std::fs::read_to_string(devnet_dir.join("demo-identities.json")).unwrap(),
    )
    .unwrap();
    let (api, observer) = (free_port(), free_port());
    devnet
        .observe(format!("127.0.0.1:{observer}").parse().unwrap())
        .await;
    let providers: Vec<String> = demo["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            ["physician", "nurse", "paramedic", "pharmacist"].contains(&p["role"].as_str().unwrap())
        })
        .map(|p| p["private_key"].as_str().unwrap().to_string())
        .collect();
    let patient = demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["emergency_access"] == true)
        .unwrap()["patient_id"]
        .as_str()
        .unwrap()
        .to_string();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .arg("serve")
            .env("BREAKGLASS_CHAIN__NODE_URL", &devnet.rpc)
            .env("BREAKGLASS_SERVER__LISTEN", format!("127.0.0.1:{api}"))
            .env(
                "BREAKGLASS_FOLLOWER__LISTEN",
                format!("127.0.0.1:{observer}"),
            )
            .env("BREAKGLASS_FOLLOWER__POLL_INTERVAL_MS", "200")
            .env("BREAKGLASS_SUBMITTER__INTERVAL_MS", "50")
            .env("BREAKGLASS_DATA__DIR", dir.path().join("service"))
            .env(
                "BREAKGLASS_SERVICE_KEY",
                demo["responder"]["private_key"].as_str().unwrap(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{api}/readyz");
    let wait_ready = async || {
        eventually("service ready", Duration::from_secs(30), async || {
            http.get(&readyz)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await
    };

    let mut granted = Vec::new();
    let mut previous: Option<String> = None;
    for i in 0..20u64 {
        let mut service = spawn();
        wait_ready().await;
        // the request granted just before the crash is still a replay after it
        if let Some(body) = previous.take() {
            let res = http
                .post(format!("http://127.0.0.1:{api}/v1/break-glass"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "replay after crash {i}");
            let answer: Json = res.json().await.unwrap();
            assert_eq!(answer["code"], "replayed-request");
        }
        let body = signed(&providers[i as usize % providers.len()], &patient, 1000 + i);
        previous = Some(body.clone());
        let res = http
            .post(format!("http://127.0.0.1:{api}/v1/break-glass"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "grant {i}");
        let answer: Json = res.json().await.unwrap();
        granted.push(answer["access_id"].as_str().unwrap().to_string());
        // killed the moment it answered: no shutdown, no flush beyond what it did before
        service.start_kill().unwrap();
        service.wait().await.unwrap();
    }

    let _service = spawn();
    wait_ready().await;
    for id in &granted {
        eventually(id, Duration::from_secs(60), async || {
            let s: Json = http
                .get(format!("http://127.0.0.1:{api}/v1/accesses/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (s["chain"]["state"] == "confirmed").then_some(())
        })
        .await;
    }
    let rpc = breakglass::chain::rpc::NodeClient::new(&devnet.rpc, Duration::from_secs(5), 3);
    let contract = format!("{}.access-control", deployer());
    for id in &granted {
        let record = rpc
            .call_read(
                &contract,
                "get-emergency-access",
                &[Value::buffer(hex::decode(id).unwrap())],
                &deployer(),
            )
            .await
            .unwrap();
        assert!(matches!(record, Value::Some(_)), "{id} is on chain");
    }
    assert_eq!(
        rpc.call_read(&contract, "get-emergency-count", &[], &deployer())
            .await
            .unwrap(),
        Value::UInt(20)
    );
    // exactly one transaction per access: the responder's nonce counts every one it sent
    let responder: breakglass::stacks::Address = demo["responder"]["principal"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(devnet.nonce(&responder).await, 20);
}

/// The service killed with SIGKILL again and again while it sends the patients' notices
/// through a slow SMTP server (each reply held 400 ms after the message is stored, so kills
/// land between "delivered" and "marked sent"): every access is notified, and every copy of a
/// notice is the same message, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notice_is_delivered_and_never_as_two_different_messages_across_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    let devnet = Devnet::start(&[
        "--data-dir",
        devnet_dir.to_str().unwrap(),
        "--seed-demo",
        "--block-time",
        "0.5",
    ])
    .await;
    let demo: Json = serde_json::from_str(
        &std::fs::read_to_string(devnet_dir.join("demo-identities.json")).unwrap(),
    )
    .unwrap();
    let (api, observer, smtp) = (free_port(), free_port(), free_port());
    devnet
        .observe(format!("127.0.0.1:{observer}").parse().unwrap())
        .await;
    let mail = dir.path().join("mail");
    let _smtp = smtp_server(smtp, &mail, 400).await;
    let data = dir.path().join("service");
    let pid = patient(&demo, true).to_string();

    // the directory, imported with the CLI before the service starts
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": {
        "resourceType": "Patient", "identifier": [{ "system": "urn:breakglass:patient-id", "value": pid }],
        "telecom": [{ "system": "email", "value": "patient@example.org" }] } }] });
    let file = dir.path().join("patients.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["patients", "import", file.to_str().unwrap()])
        .env("BREAKGLASS_DATA__DIR", &data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .arg("serve")
            .env("BREAKGLASS_CHAIN__NODE_URL", &devnet.rpc)
            .env("BREAKGLASS_SERVER__LISTEN", format!("127.0.0.1:{api}"))
            .env(
                "BREAKGLASS_FOLLOWER__LISTEN",
                format!("127.0.0.1:{observer}"),
            )
            .env("BREAKGLASS_FOLLOWER__POLL_INTERVAL_MS", "200")
            .env("BREAKGLASS_SUBMITTER__INTERVAL_MS", "50")
            .env("BREAKGLASS_NOTIFY__TRANSPORT", "smtp")
            .env("BREAKGLASS_NOTIFY__SMTP__PORT", smtp.to_string())
            .env("BREAKGLASS_NOTIFY__IMMEDIATE_DATA_TYPES", "[\"allergies\"]")
            .env("BREAKGLASS_NOTIFY__POLL_INTERVAL_MS", "50")
            .env("BREAKGLASS_NOTIFY__RETRY_INITIAL_SECS", "1")
            .env("BREAKGLASS_NOTIFY__RETRY_MAX_SECS", "1")
            .env("BREAKGLASS_DATA__DIR", &data)
            .env(
                "BREAKGLASS_SERVICE_KEY",
                demo["responder"]["private_key"].as_str().unwrap(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{api}/readyz");
    let wait_ready = async || {
        eventually("service ready", Duration::from_secs(30), async || {
            http.get(&readyz)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await
    };
    let notice_state = async |id: &str| -> Option<String> {
        let s: Json = http
            .get(format!("http://127.0.0.1:{api}/v1/accesses/{id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        s["notice"]["state"].as_str().map(str::to_string)
    };

    let mut service = spawn();
    wait_ready().await;
    let providers: Vec<&str> = ["physician", "nurse", "paramedic", "pharmacist"]
        .iter()
        .map(|r| provider(&demo, r)["private_key"].as_str().unwrap())
        .collect();
    let mut granted = Vec::new();
    for i in 0..12u64 {
        let body = signed(providers[i as usize % providers.len()], &pid, 5000 + i);
        let res = http
            .post(format!("http://127.0.0.1:{api}/v1/break-glass"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "grant {i}");
        let answer: Json = res.json().await.unwrap();
        granted.push(answer["access_id"].as_str().unwrap().to_string());
    }

    // kill it while it sends, at varying moments, twelve times over
    let mut kills = 0;
    let mut killed_mid_send = 0;
    while kills < 12 {
        let before = received(&mail).len();
        tokio::time::sleep(Duration::from_millis(250 + 97 * kills)).await;
        let after = received(&mail).len();
        service.start_kill().unwrap();
        service.wait().await.unwrap();
        kills += 1;
        if after > before {
            killed_mid_send += 1;
        }
        service = spawn();
        wait_ready().await;
    }
    assert!(
        killed_mid_send >= 3,
        "kills landed while sending: {killed_mid_send}"
    );

    for id in &granted {
        eventually(
            &format!("notice of {id} sent"),
            Duration::from_secs(90),
            async || (notice_state(id).await.as_deref() == Some("sent")).then_some(()),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&mail);
    let mut by_id: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    for (_, raw) in &got {
        by_id
            .entry(header(raw, "Message-ID"))
            .or_default()
            .push(raw.clone());
    }
    for id in &granted {
        let copies = by_id
            .get(&format!("<{id}@breakglass.localhost>"))
            .unwrap_or_else(|| panic!("{id} was never notified"));
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "{id}: two different notices"
        );
    }
    // nothing but these notices went out
    assert_eq!(by_id.len(), granted.len());
    println!(
        "{} accesses, {kills} kills ({killed_mid_send} while sending), {} messages received",
        granted.len(),
        got.len()
    );
}

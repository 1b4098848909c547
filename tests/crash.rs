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
    for i in 0..20u64 {
        let mut service = spawn();
        wait_ready().await;
        let body = signed(&providers[i as usize % providers.len()], &patient, 1000 + i);
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

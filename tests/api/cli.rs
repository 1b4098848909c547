//! The `breakglass` binary: operator tools, keys, configuration errors, and `breakglass dev`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;

fn breakglass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vectors() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/stacks-vectors.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn decode_tx_prints_the_call() {
    let v = vectors();
    let case = &v["contract_call"][1];
    let out = json(&breakglass(&[
        "stacks",
        "decode-tx",
        case["tx_hex"].as_str().unwrap(),
    ]));
    assert_eq!(out["txid"], case["txid"]);
    assert_eq!(out["nonce"], case["nonce"]);
    assert_eq!(out["fee"], case["fee"]);
    assert_eq!(out["chain_id"], "0x80000000");
    assert_eq!(out["contract"], case["contract"]);
    assert_eq!(out["function"], case["function"]);
    assert_eq!(
        out["args"].as_array().unwrap().len(),
        case["args_cv_hex"].as_array().unwrap().len()
    );
    assert_eq!(out["args"][3], "(list \"allergies\")");
}

#[test]
fn cv_prints_clarity_notation() {
    for case in vectors()["clarity"].as_array().unwrap() {
        let out = json(&breakglass(&[
            "stacks",
            "cv",
            case["hex"].as_str().unwrap(),
        ]));
        let repr = out["repr"].as_str().unwrap();
        assert_eq!(
            breakglass::stacks::clarity::parse(repr).unwrap().to_hex(),
            format!("0x{}", case["hex"].as_str().unwrap())
        );
    }
}

#[test]
fn sip018_verify_names_the_signer() {
    let v = vectors();
    let case = &v["sip018"][0];
    let out = json(&breakglass(&[
        "stacks",
        "sip018-verify",
        "--domain",
        case["domain_cv_hex"].as_str().unwrap(),
        "--message",
        case["message_cv_hex"].as_str().unwrap(),
        "--signature",
        case["signature_rsv_hex"].as_str().unwrap(),
    ]));
    assert_eq!(out["message_hash"], case["message_hash_hex"]);
    assert_eq!(out["public_key"], case["public_key"]);
    assert_eq!(out["testnet"], case["address_testnet"]);
    assert_eq!(out["mainnet"], case["address_mainnet"]);
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let v = vectors();
    let sip = &v["sip018"][0];
    let tx = v["contract_call"][0]["tx_hex"].as_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["stacks", "decode-tx", "not-hex"],
        vec!["stacks", "decode-tx", &tx[..60]],
        vec!["stacks", "decode-tx", ""],
        vec!["stacks", "cv", "0x0b00000005"],
        vec!["stacks", "cv", "0xff"],
        vec!["stacks", "cv", "0x0703ff"],
        vec![
            "stacks",
            "sip018-verify",
            "--domain",
            "zz",
            "--message",
            "03",
            "--signature",
            "00",
        ],
        vec![
            "stacks",
            "sip018-verify",
            "--domain",
            sip["domain_cv_hex"].as_str().unwrap(),
            "--message",
            sip["message_cv_hex"].as_str().unwrap(),
            "--signature",
            "0011",
        ],
    ];
    for args in cases {
        let out = breakglass(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn keys_are_generated_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["keys", "show"])
            .env("BREAKGLASS_DATA__DIR", dir.path())
            .env_remove("BREAKGLASS_SERVICE_KEY")
            .output()
            .unwrap()
    };
    let first = json(&run());
    assert_eq!(first["source"], "generated");
    let second = json(&run());
    assert_eq!(second["source"], "datadir");
    assert_eq!(first["principal"], second["principal"]);
    assert!(first["principal"].as_str().unwrap().starts_with("ST"));
    let file = dir.path().join("keys/service-stacks.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // sealed with the data key at rest: the key is not in the file
    let sealed = std::fs::read(&file).unwrap();
    assert!(!String::from_utf8_lossy(&sealed)
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c.is_whitespace()));
    // the key file copied without the data key that sealed it opens nowhere else
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(moved.join("keys")).unwrap();
    std::fs::copy(&file, moved.join("keys/service-stacks.key")).unwrap();
    let stranger = Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["keys", "show"])
        .env("BREAKGLASS_DATA__DIR", &moved)
        .env_remove("BREAKGLASS_SERVICE_KEY")
        .env_remove("BREAKGLASS_DATA_KEY")
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("not opened by the data keys"));
    // a plain hex key file from before is sealed in place, and is the same key
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, format!("{DEPLOYER_KEY}\n")).unwrap();
    let legacy = json(&run());
    assert_eq!(legacy["principal"], deployer().to_string());
    assert_ne!(
        std::fs::read(&file).unwrap(),
        format!("{DEPLOYER_KEY}\n").into_bytes()
    );
    assert_eq!(json(&run())["principal"], deployer().to_string());
    // a key given in the environment wins and nothing is written
    let env = Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["keys", "show"])
        .env("BREAKGLASS_DATA__DIR", dir.path().join("other"))
        .env("BREAKGLASS_SERVICE_KEY", DEPLOYER_KEY)
        .output()
        .unwrap();
    let env = json(&env);
    assert_eq!(env["principal"], deployer().to_string());
    assert!(!dir.path().join("other/keys").exists());
    // a bad key says where it came from
    let key_file = dir.path().join("service.key");
    std::fs::write(&key_file, "not a key\n").unwrap();
    for (var, value) in [
        ("BREAKGLASS_SERVICE_KEY", "0xnope"),
        ("BREAKGLASS_SERVICE_KEY_FILE", key_file.to_str().unwrap()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["keys", "show"])
            .env("BREAKGLASS_DATA__DIR", dir.path().join("other"))
            .env_remove("BREAKGLASS_SERVICE_KEY")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(var) && said.contains("not hex"), "{said}");
    }
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[chain]\nnode_url = \"ftp://nowhere\"\n").unwrap();
    let out = breakglass(&["--config", file.to_str().unwrap(), "keys", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node_url"));
    std::fs::write(&file, "[chain]\nnode_urll = \"http://x\"\n").unwrap();
    let out = breakglass(&["--config", file.to_str().unwrap(), "keys", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node_urll"));
    // each refusal names the setting
    for (toml, named) in [
        ("[data]\ncache_mib = 0\n", "data.cache_mib"),
        (
            "[chain]\nrequest_timeout_ms = 0\n",
            "chain.request_timeout_ms",
        ),
        (
            "[server]\nshutdown_timeout_secs = 0\n",
            "server.shutdown_timeout_secs",
        ),
        (
            "[notify.smtp]\ntimeout_secs = 0\n",
            "notify.smtp.timeout_secs",
        ),
        ("[submitter]\ninterval_ms = 0\n", "submitter.interval_ms"),
        (
            "[notify]\nretry_initial_secs = 60\nretry_max_secs = 1\n",
            "notify.retry_max_secs",
        ),
        ("[issuance]\nissuer = \" \"\n", "issuance.issuer"),
        ("[issuance]\naudience = \"\"\n", "issuance.audience"),
        (
            "[server]\nlisten = \"127.0.0.1:38080\"\n[follower]\nlisten = \"127.0.0.1:38080\"\n",
            "follower.listen",
        ),
        ("[log]\nfilter = \"breakglass=loud\"\n", "log.filter"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        // two writes' `WAIT`s must fit in a grant's wait for its write
        ("[data]\nredis_wait_ms = 2001\n", "data.redis_wait_ms"),
        (
            "[chain]\ncontracts_address = \"\"\n",
            "chain.contracts_address",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let out = breakglass(&["--config", file.to_str().unwrap(), "keys", "show"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(named), "{toml}: {stderr}");
    }
    // a sync interval so long that two of them overflow: refused, not wrapped around
    let out = Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["keys", "show"])
        .env("BREAKGLASS_DATA__DIR", dir.path().join("data"))
        .env(
            "BREAKGLASS_ONCALL__PAGERDUTY__SYNC__INTERVAL_MS",
            u64::MAX.to_string(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("oncall.pagerduty.sync.grace_secs"),
        "{stderr}"
    );
}

#[test]
fn a_bad_log_filter_or_a_taken_address_stops_the_service_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |envs: &[(&str, String)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .arg("serve")
            .env("BREAKGLASS_DATA__DIR", dir.path().join("data"))
            .env("BREAKGLASS_SERVER__LISTEN", "127.0.0.1:0")
            .env("BREAKGLASS_FOLLOWER__LISTEN", "127.0.0.1:0")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, stderr, _) = serve(&[("BREAKGLASS_LOG", "breakglass=loud".into())]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("BREAKGLASS_LOG"), "{stderr}");
    // the port the observer wants is taken by another program
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr, _) = serve(&[("BREAKGLASS_FOLLOWER__LISTEN", addr.clone())]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("follower.listen {addr}")),
        "{stderr}"
    );
    // on the embedded defaults, notices go to the outbox, not by email: said at start
    let outbox = "notify.transport is \\\"file\\\"";
    assert!(stderr.contains(outbox), "{stderr}");
    for quiet in [
        ("BREAKGLASS_NOTIFY__TRANSPORT", "smtp".to_string()),
        ("BREAKGLASS_DEV_REPLICA", "1".to_string()),
    ] {
        let (_, log, _) = serve(&[("BREAKGLASS_FOLLOWER__LISTEN", addr.clone()), quiet.clone()]);
        assert!(!log.contains(outbox), "{quiet:?}: {log}");
    }
}

/// `breakglass dev` running in `dir` with `args`, its API and devnet on free ports, until
/// it says it runs.
struct DevRun {
    child: tokio::process::Child,
    api: u16,
    devnet: u16,
    printed: String,
}

/// Waits until the service on `port` says it is ready.
async fn ready_at(port: u16, within: Duration) {
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let what = format!("the service on port {port} ready");
    eventually(&what, within, async || {
        reqwest::get(&readyz)
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
}

impl DevRun {
    async fn start(dir: &std::path::Path, args: &[&str]) -> DevRun {
        let (api, observer, devnet) = (free_port(), free_port(), free_port());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["dev", "--devnet-port", &devnet.to_string()])
            .args(args)
            .current_dir(repo())
            .env("BREAKGLASS_SERVER__LISTEN", format!("127.0.0.1:{api}"))
            .env(
                "BREAKGLASS_FOLLOWER__LISTEN",
                format!("127.0.0.1:{observer}"),
            )
            .env("BREAKGLASS_DATA__DIR", dir.join("breakglass"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // a group of its own, as a terminal's foreground job: `interrupt` is its Ctrl-C
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        ready_at(api, Duration::from_secs(90)).await;
        // ready first, then the demo directories and summaries are imported, then it says so
        let printed = eventually(
            "breakglass dev says it runs",
            Duration::from_secs(60),
            async || {
                let printed = text.lock().unwrap().clone();
                printed.contains("Ctrl-C stops").then_some(printed)
            },
        )
        .await;
        DevRun {
            child,
            api,
            devnet,
            printed,
        }
    }

    /// SIGTERM: it stops what it started, and exits 0.
    async fn stop(self) {
        let pid = self.child.id().unwrap().to_string();
        self.stopped_by(&["-TERM", &pid]).await
    }

    /// Ctrl-C in its terminal (SIGINT to its whole process group): as `stop`.
    async fn interrupt(self) {
        let group = format!("-{}", self.child.id().unwrap());
        self.stopped_by(&["-INT", "--", &group]).await
    }

    async fn stopped_by(mut self, kill: &[&str]) {
        assert!(Command::new("kill").args(kill).status().unwrap().success());
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("dev stops")
            .unwrap();
        assert!(status.success());
        eventually("devnet stopped", Duration::from_secs(10), async || {
            reqwest::get(format!("http://127.0.0.1:{}/v2/info", self.devnet))
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_devnet_and_the_service_with_demo_data() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevRun::start(dir.path(), &[]).await;
    let (api, devnet, printed) = (dev.api, dev.devnet, dev.printed.clone());
    assert!(
        !printed.contains("replicas"),
        "one process on the embedded store: {printed}"
    );
    assert!(!dir.path().join("redis").exists());
    assert!(printed.contains("breakglass dev is running"), "{printed}");
    assert!(printed.contains(&format!("http://127.0.0.1:{api}")));
    assert!(printed.contains("demo identities"));
    // the tablet's address, and the page is there
    let tablet = format!("http://127.0.0.1:{api}/tablet");
    assert!(printed.contains(&tablet), "{printed}");
    let page = reqwest::get(&tablet).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"key-setup\""));
    // the reviewer pages' address, and the page is there
    let review = format!("http://127.0.0.1:{api}/review");
    assert!(printed.contains(&review), "{printed}");
    let sign_in = reqwest::get(format!("{review}/sign-in")).await.unwrap();
    assert_eq!(sign_in.status(), 200);
    assert!(sign_in.text().await.unwrap().contains("id=\"key-import\""));
    for role in [
        "physician",
        "nurse",
        "paramedic",
        "pharmacist",
        "reviewer",
        "admin",
    ] {
        assert!(printed.contains(role), "{role} missing from:\n{printed}");
    }
    let info: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{devnet}/v2/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["network_id"], 0x8000_0000u32);

    // SIGTERM stops the service and its devnet
    dev.stop().await;
}

/// `breakglass dev --replicas 2`: two service processes on a redis-server it started, each
/// answering, sharing their state: a request granted by one is a replay on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_replicas_runs_two_services_on_one_local_redis() {
    let dir = tempfile::tempdir().unwrap();
    // a configuration file the replicas read too (its audience is in every token)
    let config = dir.path().join("ward.toml");
    std::fs::write(&config, "[issuance]\naudience = \"fhir-ward-3\"\n").unwrap();
    let dev = DevRun::start(
        dir.path(),
        &["--replicas", "2", "--config", config.to_str().unwrap()],
    )
    .await;
    let second = format!("http://127.0.0.1:{}", dev.api + 1);
    assert!(
        dev.printed
            .contains("2 service processes sharing redis://127.0.0.1:"),
        "{}",
        dev.printed
    );
    assert!(dev.printed.contains(&second), "{}", dev.printed);
    assert!(dir.path().join("redis/appendonlydir").exists(), "persisted");
    ready_at(dev.api + 1, Duration::from_secs(60)).await;
    let demo: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("devnet/demo-identities.json")).unwrap(),
    )
    .unwrap();
    let nurse = breakglass::keys::parse_key(
        demo["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "nurse")
            .unwrap()["private_key"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let patient: breakglass::domain::PatientId = demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["emergency_access"] == true)
        .unwrap()["patient_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let message = breakglass::request::message(
        &patient,
        &["allergies"],
        "unresponsive on arrival",
        77,
        breakglass::clock::now_secs(),
        None,
    );
    let body =
        breakglass::request::sign(&nurse, breakglass::stacks::tx::TESTNET_CHAIN_ID, &message)
            .to_string();
    let http = reqwest::Client::new();
    let first = post_until_fresh(&http, &format!("127.0.0.1:{}", dev.api), &body, 20).await;
    assert_eq!(first.0, 201, "{}", first.1);
    let again = post_until_fresh(&http, &format!("127.0.0.1:{}", dev.api + 1), &body, 20).await;
    assert_eq!(
        (again.0, again.1["code"].clone()),
        (401, serde_json::json!("replayed-request"))
    );
    // a new request granted by the second replica: under the same configuration file
    let message = breakglass::request::message(
        &patient,
        &["medications"],
        "unresponsive on arrival",
        78,
        breakglass::clock::now_secs(),
        None,
    );
    let body =
        breakglass::request::sign(&nurse, breakglass::stacks::tx::TESTNET_CHAIN_ID, &message)
            .to_string();
    let second_grant =
        post_until_fresh(&http, &format!("127.0.0.1:{}", dev.api + 1), &body, 20).await;
    assert_eq!(second_grant.0, 201, "{}", second_grant.1);
    for grant in [&first.1, &second_grant.1] {
        let token = grant["access_token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "fhir-ward-3", "{claims}");
    }
    // Ctrl-C: each replica stops in turn and logs it, Redis last (stopped by `dev`, never by
    // the terminal's signal, which reached `dev` alone); its log where `dev` said
    let printed = dev.printed.clone();
    dev.interrupt().await;
    assert!(
        reqwest::get(format!("{second}/readyz")).await.is_err(),
        "the second replica stopped too"
    );
    let log_file = dir.path().join("redis/redis.log");
    assert!(
        printed.contains(&log_file.display().to_string()),
        "{printed}"
    );
    let redis_log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        redis_log.contains("Received SIGTERM") && !redis_log.contains("SIGINT"),
        "{redis_log}"
    );
    let redis = crate::support::RedisServer::start(&dir.path().join("redis"));
    let store = breakglass::store::RedisStore::open(&redis.url(), "breakglass:").unwrap();
    let replicas = |kind| {
        let mut ids: Vec<String> = crate::support::logged(&store, kind)
            .into_iter()
            .map(|e| match e {
                breakglass::audit::Event::Start { replica, .. }
                | breakglass::audit::Event::Stop {
                    replica,
                    lost: None,
                } => replica,
                other => panic!("{other:?}"),
            })
            .collect();
        ids.sort();
        ids
    };
    let started = replicas("start");
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(replicas("stop"), started, "each replica's stop is logged");
}

/// The block each of the services on `ports` applied last (`/readyz`).
async fn applied_heights(ports: &[u16]) -> Vec<u64> {
    let mut heights = Vec::new();
    for port in ports {
        let r: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        heights.push(
            r["checks"]["follower"]["applied_height"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    heights
}

/// `breakglass dev --replicas 2` killed outright (no chance to stop what it started): its
/// replicas, its devnet and its Redis stop too (told by the kernel), none left holding the
/// append-only file a next run would open with a Redis of its own. Then `--reset` (without
/// `--replicas`) starts a new chain and empties their Redis: in the next run with replicas, the
/// old chain's tip, above the new chain's, is not waited for (a replica on a shared store waits
/// for a block its node never had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_dev_started_stops_when_it_is_killed_and_reset_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = DevRun::start(dir.path(), &["--replicas", "2"]).await;
    ready_at(dev.api + 1, Duration::from_secs(60)).await;
    // the old chain well above where a new one starts, applied by both
    let mined: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/devnet/mine?empty=40",
            dev.devnet
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_tip = mined["tip"].as_u64().unwrap();
    let ports = [dev.api, dev.api + 1];
    eventually(
        "both replicas at the old chain's tip",
        Duration::from_secs(60),
        async || (applied_heights(&ports).await.iter().all(|h| *h >= old_tip)).then_some(()),
    )
    .await;
    let second = format!("http://127.0.0.1:{}/readyz", dev.api + 1);
    let redis = dev
        .printed
        .split("sharing redis://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{}", dev.printed))
        .to_string();
    let devnet = format!("127.0.0.1:{}", dev.devnet);
    for up in [&redis, &devnet] {
        assert!(std::net::TcpStream::connect(up).is_ok(), "{up}");
    }
    dev.child.start_kill().unwrap();
    dev.child.wait().await.unwrap();
    eventually(
        "the replica, the devnet and Redis gone",
        Duration::from_secs(20),
        async || {
            (reqwest::get(&second).await.is_err()
                && std::net::TcpStream::connect(&redis).is_err()
                && std::net::TcpStream::connect(&devnet).is_err())
            .then_some(())
        },
    )
    .await;

    // a new chain, on one process (redb): the replicas' Redis emptied all the same
    assert!(dir.path().join("redis/appendonlydir").exists());
    let dev = DevRun::start(dir.path(), &["--reset"]).await;
    assert!(!dir.path().join("redis").exists(), "emptied");
    dev.stop().await;
    // then with replicas: both ready on the new chain (`DevRun::start` waits for the first),
    // at its height, not the old one's
    let dev = DevRun::start(dir.path(), &["--replicas", "2"]).await;
    ready_at(dev.api + 1, Duration::from_secs(60)).await;
    let heights = applied_heights(&[dev.api, dev.api + 1]).await;
    assert!(
        heights.iter().all(|h| *h < old_tip),
        "{heights:?} against {old_tip}"
    );
    dev.stop().await;
}

#[test]
fn the_example_configuration_is_valid_and_matches_the_defaults() {
    let file = repo().join("deploy/breakglass.example.toml");
    let loaded = breakglass::configuration::Settings::load(Some(&file)).unwrap();
    let defaults = breakglass::configuration::Settings::default();
    assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
}

#[test]
fn policy_check_prints_what_each_role_may_open() {
    let out = json(&breakglass(&[
        "policy",
        "check",
        "--dir",
        repo().join("policies").to_str().unwrap(),
    ]));
    assert_eq!(out["physician"]["advance-directives"], "15 min");
    assert_eq!(out["nurse"]["allergies"], "10 min");
    assert_eq!(out["nurse"]["advance-directives"], "no");
    assert_eq!(
        out["admin"]["allergies"],
        "no (reviewers-and-admins-never-break-glass)"
    );
    assert_eq!(
        json(&breakglass(&["policy", "check"])),
        out,
        "the built-in defaults are the repository's"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("policies/breakglass.cedarschema"),
        dir.path().join("breakglass.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { principal.shoe_size > 3 };",
    )
    .unwrap();
    let bad = breakglass(&["policy", "check", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("shoe_size"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn patients_import_seals_the_directory_and_names_refused_entries() {
    let dir = tempfile::tempdir().unwrap();
    let id = "c".repeat(64);
    let bundle = serde_json::json!({ "resourceType": "Bundle", "type": "collection", "entry": [
        { "resource": { "resourceType": "Patient", "id": "a",
            "identifier": [{ "system": "urn:breakglass:patient-id", "value": id }],
            "telecom": [{ "system": "email", "value": "luis.perez@example.org" }] } },
        { "resource": { "resourceType": "Patient", "id": "b",
            "identifier": [{ "system": "urn:breakglass:patient-id", "value": "d".repeat(64) }] } },
    ]});
    let file = dir.path().join("patients.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["patients", "import", file.to_str().unwrap()])
        .env("BREAKGLASS_DATA__DIR", &data)
        .output()
        .unwrap();
    let report = json(&out);
    assert_eq!(report["imported"], 1);
    assert_eq!(report["rejected"][0]["resource_id"], "b");
    assert!(report["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no email"));
    for f in std::fs::read_dir(&data).unwrap() {
        let f = f.unwrap().path();
        if f.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"luis.perez"),
            "{}",
            f.display()
        );
    }
    // a new data key, every contact sealed again with it, then the old key retired
    let old_keys: Vec<_> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("data-"))
        .collect();
    assert_eq!(old_keys.len(), 1);
    let run = |args: &[&str]| {
        json(
            &Command::new(env!("CARGO_BIN_EXE_breakglass"))
                .args(args)
                .env("BREAKGLASS_DATA__DIR", &data)
                .output()
                .unwrap(),
        )
    };
    // an access with its sealed reason and a rendered notice, sealed with the old key too
    let access_id = "ab".repeat(32);
    {
        use breakglass::store::Store;
        let store = breakglass::store::RedbStore::open(&data.join("breakglass.redb")).unwrap();
        let ring = breakglass::seal::Keyring::load_or_generate(&data, None).unwrap();
        let access = sealed_access(&ring, &access_id, &id);
        let mut notice = breakglass::notify::notice_for(
            &breakglass::configuration::Settings::default().notify,
            &access,
        );
        let message = ring
            .seal(&format!("notice:{access_id}"), b"the rendered message")
            .unwrap();
        notice.message = Some(hex::encode(message));
        // and a token signing key, sealed with it at first use
        breakglass::token::TokenIssuer::load_or_generate(&data, "iss", "aud", &ring).unwrap();
        // the patient's emergency summary, and a reviewer's verdict with its note (two
        // attempts: the first failed on chain)
        let pid: breakglass::domain::PatientId = id.parse().unwrap();
        let summary = breakglass::demo::summary(&pid, "urn:breakglass:patient-id").to_string();
        let sealed_summary = ring
            .seal(&format!("summary:{id}"), summary.as_bytes())
            .unwrap();
        let verdict = |attempt: u32, note: &str| -> breakglass::store::Verdict {
            serde_json::from_value(serde_json::json!({
                "access_id": access_id, "reviewer": "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
                "verdict": "appropriate", "note_hash": "", "signature": "", "at": 1000,
                "revoked": false, "attempt": attempt,
                "note_sealed": hex::encode(ring.seal(&format!("note:{access_id}"), note.as_bytes()).unwrap()),
            }))
            .unwrap()
        };
        store
            .apply(breakglass::store::Batch {
                accesses: vec![access],
                notices: vec![notice],
                summaries: vec![(pid, Some(sealed_summary.clone()))],
                summary_digests: vec![(
                    pid,
                    Some(breakglass::store::SummaryDigest::of(
                        summary.as_bytes(),
                        &sealed_summary,
                    )),
                )],
                // (and the one before it, kept while the chain records this one)
                previous_summaries: vec![(
                    pid,
                    Some(
                        ring.seal(&format!("summary:{id}"), b"the one before")
                            .unwrap(),
                    ),
                )],
                verdicts: vec![verdict(0, "first note"), verdict(1, "second note")],
                ..Default::default()
            })
            .unwrap();
    }
    let rotated = run(&["keys", "rotate-data"]);
    let rekeyed = run(&["patients", "rekey"]);
    assert_eq!(
        (
            &rekeyed["resealed"],
            &rekeyed["contacts"],
            &rekeyed["reasons"],
            &rekeyed["notice_messages"],
            &rekeyed["summaries"],
            &rekeyed["notes"],
            &rekeyed["token_keys"]
        ),
        (
            &serde_json::json!(8),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{rekeyed}"
    );
    assert_eq!(run(&["patients", "rekey"])["resealed"], 0);
    // each rekey in the audit log, by the command line's user, with the key it sealed with
    {
        let store = breakglass::store::RedbStore::open(&data.join("breakglass.redb")).unwrap();
        let user = breakglass::audit::command_line();
        let rekeys = crate::support::logged(&store, "rekey");
        let key = rotated["key_id"].as_str().unwrap();
        assert_eq!(
            rekeys,
            [8, 0].map(|resealed| breakglass::audit::Event::Rekey {
                by: user.clone(),
                data_key: key.into(),
                resealed,
            }),
        );
    }
    std::fs::remove_file(&old_keys[0]).unwrap();
    {
        let store = breakglass::store::RedbStore::open(&data.join("breakglass.redb")).unwrap();
        let ring = breakglass::seal::Keyring::load_or_generate(&data, None).unwrap();
        assert_eq!(ring.current_id(), rotated["key_id"].as_str().unwrap());
        let pid: breakglass::domain::PatientId = id.parse().unwrap();
        use breakglass::store::Store;
        let sealed = store.contact(&pid).unwrap().unwrap();
        let contact: serde_json::Value =
            serde_json::from_slice(&ring.open(&format!("contact:{id}"), &sealed).unwrap()).unwrap();
        assert_eq!(contact["email"], "luis.perez@example.org");
        // the reason and the notice open with the new key alone
        let access = store.access(&access_id.parse().unwrap()).unwrap().unwrap();
        let reason = ring
            .open(
                &format!("reason:{access_id}"),
                &hex::decode(&access.reason_sealed).unwrap(),
            )
            .unwrap();
        assert_eq!(reason, b"anaphylaxis, unresponsive");
        let notice = store.notice(&access_id.parse().unwrap()).unwrap().unwrap();
        let message = ring
            .open(
                &format!("notice:{access_id}"),
                &hex::decode(notice.message.unwrap()).unwrap(),
            )
            .unwrap();
        assert_eq!(message, b"the rendered message");
        // the summary, whose digest still describes it (the vault serves it), and both notes
        let sealed = store.summary(&pid).unwrap().unwrap();
        let summary = ring.open(&format!("summary:{id}"), &sealed).unwrap();
        assert_eq!(
            store.summary_digest(&pid).unwrap().unwrap(),
            breakglass::store::SummaryDigest::of(&summary, &sealed)
        );
        let mut notes: Vec<String> = store
            .every_verdict()
            .unwrap()
            .iter()
            .map(|v| {
                ring.open_text(&format!("note:{access_id}"), &v.note_sealed)
                    .unwrap()
            })
            .collect();
        notes.sort();
        assert_eq!(notes, ["first note", "second note"]);
        let before = store.previous_summary(&pid).unwrap().unwrap();
        assert_eq!(
            ring.open(&format!("summary:{id}"), &before).unwrap(),
            b"the one before"
        );
        // the token signing key too
        breakglass::token::TokenIssuer::load_or_generate(&data, "iss", "aud", &ring).unwrap();
    }

    // not a bundle: exit 2 with the reason
    std::fs::write(&file, "{\"resourceType\": \"Observation\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_breakglass"))
        .args(["patients", "import", file.to_str().unwrap()])
        .env("BREAKGLASS_DATA__DIR", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bundle"));
}

/// With replicas on Redis, keys are the replicas': a command that seals with the service
/// stopped does so only with the data key they recorded (a new host, whose data key is its own,
/// is refused, saying which key it lacks), and `keys rotate-data` runs only on a host with their
/// keys (none made elsewhere), recording the new key for them: a replica with the old key alone
/// is refused from then on, and the host seals with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_commands_that_seal_use_the_data_key_the_replicas_recorded() {
    use breakglass::store::Store;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("redis")).unwrap();
    let redis = crate::support::RedisServer::start(&dir.path().join("redis"));
    let prefix = breakglass::configuration::Settings::default()
        .data
        .redis_prefix;
    let coordination =
        breakglass::coordination::Coordinator::redis(&redis.url(), &prefix, 10).unwrap();
    // a replica's host: its keys, recorded as the replicas' (as its service did at start)
    let host = dir.path().join("host");
    let ring = breakglass::seal::Keyring::load_or_generate(&host, None).unwrap();
    let tokens = breakglass::token::TokenIssuer::load_or_generate(&host, "", "", &ring).unwrap();
    let service = breakglass::keys::ServiceKeys::load_or_generate(&host).unwrap();
    let replicas = breakglass::coordination::ReplicaKeys {
        data: ring.ids(),
        token: tokens.kids(),
        responder: service.stacks_address(false).to_string(),
    };
    assert_eq!(coordination.agree_on_keys(&replicas).await.unwrap(), None);
    let bundle = serde_json::json!({ "resourceType": "Bundle", "type": "collection", "entry": [
        { "resource": { "resourceType": "Patient", "id": "a",
            "identifier": [{ "system": "urn:breakglass:patient-id", "value": "e".repeat(64) }],
            "telecom": [{ "system": "email", "value": "ana@example.org" }] } },
    ]});
    let file = dir.path().join("patients.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let run = |data: &std::path::Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(args)
            .env("BREAKGLASS_DATA__DIR", data)
            .env("BREAKGLASS_DATA__REDIS_URL", redis.url())
            .env_remove("BREAKGLASS_DATA_KEY")
            .env_remove("BREAKGLASS_SERVICE_KEY")
            .output()
            .unwrap()
    };
    let store = breakglass::store::RedisStore::open(redis.url().as_str(), &prefix).unwrap();
    let pid: breakglass::domain::PatientId = "e".repeat(64).parse().unwrap();
    let data_keys = |data: &std::path::Path| {
        std::fs::read_dir(data.join("keys"))
            .map(|d| {
                d.filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("data-")
                })
                .count()
            })
            .unwrap_or(0)
    };

    // a new host: refused, nothing sealed, no key made by rotate-data
    let new_host = dir.path().join("new");
    let refused = run(&new_host, &["patients", "import", file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains(&format!("no data key {}", replicas.data[0])),
        "{why}"
    );
    assert_eq!(store.contact(&pid).unwrap(), None, "nothing sealed");
    let keys_before = data_keys(&new_host);
    let refused = run(&new_host, &["keys", "rotate-data"]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(data_keys(&new_host), keys_before, "no key made");
    let refused = run(&new_host, &["keys", "publish"]);
    assert_eq!(refused.status.code(), Some(2), "not a replica's host");

    // the replica's host: rotates, recorded for the replicas
    let rotated = json(&run(&host, &["keys", "rotate-data"]));
    assert_eq!(rotated["recorded_for_replicas"], true, "{rotated}");
    let new_key = rotated["key_id"].as_str().unwrap().to_string();
    let why = coordination.agree_on_keys(&replicas).await.unwrap();
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains(&format!("no data key {new_key}"))),
        "the old key alone is refused now: {why:?}"
    );
    let imported = json(&run(&host, &["patients", "import", file.to_str().unwrap()]));
    assert_eq!(imported["imported"], 1, "{imported}");
    let sealed = store.contact(&pid).unwrap().unwrap();
    let ring = breakglass::seal::Keyring::load_or_generate(&host, None).unwrap();
    assert_eq!(ring.current_id(), new_key);
    assert!(ring.is_current(&sealed), "sealed with the new key");
    // published again from the same host: nothing changes, and it agrees
    let again = json(&run(&host, &["keys", "publish"]));
    assert_eq!(again["data_key"], new_key.as_str());

    // `patients rekey` rewrites rows the replicas write: refused while one runs (it holds the
    // submitter's lease), nothing resealed; run once none does
    let lease = format!("submitter:{}", replicas.responder);
    assert!(coordination
        .lease(&lease, "a-running-replica", 30_000)
        .await
        .unwrap()
        .is_some());
    let refused = run(&host, &["patients", "rekey"]);
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("a replica is running"), "{why}");
    coordination
        .release(&lease, "a-running-replica")
        .await
        .unwrap();
    let rekeyed = json(&run(&host, &["patients", "rekey"]));
    assert_eq!(rekeyed["key_id"], new_key.as_str(), "{rekeyed}");
    // (and it let the lease go: a replica takes it at once)
    assert!(coordination
        .lease(&lease, "a-replica-started-after", 30_000)
        .await
        .unwrap()
        .is_some());
}

/// An access record whose reason is sealed with `ring`'s current key.
fn sealed_access(
    ring: &breakglass::seal::Keyring,
    access_id: &str,
    patient: &str,
) -> breakglass::store::AccessRecord {
    let reason = ring
        .seal(&format!("reason:{access_id}"), b"anaphylaxis, unresponsive")
        .unwrap();
    // as the store keeps it
    serde_json::from_value(serde_json::json!({
        "id": access_id, "provider": "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM", "role": "nurse",
        "patient": patient, "data_types": ["allergies"], "reason_sealed": hex::encode(reason),
        "reason_hash": "", "device": null, "nonce": 1, "issued_at": 1000, "granted_at": 1000,
        "expires_at": 1600, "window_minutes": 10, "window_blocks": 60, "rules": [],
        "message_hash": "", "signature": "",
    }))
    .unwrap()
}

#[test]
fn summaries_import_stores_a_good_bundle_and_names_what_is_wrong_with_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let patient = breakglass::domain::PatientId([5; 32]);
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        breakglass::demo::summary(&patient, "urn:breakglass:patient-id").to_string(),
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"resourceType": "Patient"}"#).unwrap();
    let run = |file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["summaries", "import"])
            .arg(file)
            .env("BREAKGLASS_DATA__DIR", dir.path().join("data"))
            .env("USER", "ops-on-call")
            .output()
            .unwrap()
    };
    let refused = run(&bad);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid-summary"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let imported = json(&run(&good));
    assert_eq!(imported["patient"], patient.to_string());
    assert_eq!(imported["resources"], 8);
    assert!(imported["operation"]
        .as_str()
        .unwrap()
        .starts_with(&format!("summary:{patient}:")));
    // in the audit log with it, by the command line's user (the bad one is not)
    let store =
        breakglass::store::RedbStore::open(&dir.path().join("data").join("breakglass.redb"))
            .unwrap();
    assert_eq!(
        crate::support::logged(&store, "import"),
        [breakglass::audit::Event::Import {
            by: "cli:ops-on-call".into(),
            what: "summary".into(),
            patient: Some(patient),
            count: 8,
            hash: imported["hash"].as_str().unwrap().into(),
        }]
    );
}

//! Test support: the real devnet process, the service built in-process against it, and a
//! few chain actions signed with the public devnet deployer key or fresh keys.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use breakglass::configuration::Settings;
use breakglass::keys::ServiceKeys;
use breakglass::keys::{parse_key, KeySource};
use breakglass::stacks::tx::{self, ContractCall};
use breakglass::stacks::{Address, Value};
use breakglass::startup::Application;
use secp256k1::{PublicKey, SecretKey, SECP256K1};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Clarinet's public devnet deployer key (settings/Devnet.toml): it owns the contracts.
pub const DEPLOYER_KEY: &str = "753b7cc01a1a2e86221266a154af739463fce51219d97e4f856cd7200c3bd2a601";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free port for a process that binds it later, perhaps again after a restart. It is taken
/// below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default), so
/// that no socket bound to port 0 (every other server the tests start, in parallel) can take it
/// meanwhile, and it is never handed out twice in this test binary.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .min(32768);
    let (low, span) = (10_000u16, ephemeral_low.saturating_sub(10_000).max(1));
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        let port = low + (h.finish() % u64::from(span)) as u16;
        if GIVEN.lock().unwrap().insert(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

pub struct Devnet {
    pub child: Child,
    pub rpc: String,
    pub http: reqwest::Client,
}

impl Devnet {
    /// Starts `contracts/devnet` (mining only on demand) and waits for its ready line.
    pub async fn start(args: &[&str]) -> Devnet {
        let mut all = vec![
            "--import",
            "tsx",
            "devnet/main.ts",
            "--block-time",
            "0",
            "--exit-with-stdin",
        ];
        // a port of its own (see `free_port`), so that a test may stop it and start it again
        // on the same port
        let port = free_port().to_string();
        if !args.contains(&"--port") {
            all.extend(["--port", &port]);
        }
        all.extend(args);
        let mut child = Command::new("node")
            .args(&all)
            .current_dir(repo().join("contracts"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed; scripts/test installs the devnet's modules");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let rpc = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("devnet ready in time")
                .unwrap()
                .expect("devnet exited early");
            if line.starts_with('{') && line.contains("\"ready\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                break v["rpc"].as_str().unwrap().to_string();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Devnet {
            child,
            rpc,
            http: reqwest::Client::new(),
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let res = self
            .http
            .post(format!("{}{path}", self.rpc))
            .json(&body)
            .send()
            .await
            .unwrap();
        res.json().await.unwrap_or(serde_json::Value::Null)
    }

    pub async fn mine(&self) -> serde_json::Value {
        let res = self
            .http
            .post(format!("{}/devnet/mine", self.rpc))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    pub async fn mine_empty(&self, n: u32) {
        self.http
            .post(format!("{}/devnet/mine?empty={n}", self.rpc))
            .send()
            .await
            .unwrap();
    }

    /// `GET path` on the devnet, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.rpc))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn tip(&self) -> u64 {
        self.get_json("/v2/info").await["stacks_tip_height"]
            .as_u64()
            .unwrap()
    }

    pub async fn nonce(&self, who: &Address) -> u64 {
        self.get_json(&format!("/v2/accounts/{who}?proof=0")).await["nonce"]
            .as_u64()
            .unwrap()
    }

    pub async fn observe(&self, observer: std::net::SocketAddr) {
        self.post(
            "/devnet/observers",
            serde_json::json!({ "url": format!("http://{observer}") }),
        )
        .await;
    }

    pub async fn fund(&self, who: &Address) {
        self.post(
            "/devnet/faucet",
            serde_json::json!({ "principal": who.to_string(), "amount": 1_000_000_000u64 }),
        )
        .await;
    }

    /// Funds `who` and has the deployer make them a responder of access-control, mined.
    pub async fn make_responder(&self, who: &Address) {
        self.fund(who).await;
        self.call(
            &deployer_key(),
            "access-control",
            "add-responder",
            vec![principal(who)],
        )
        .await;
        self.mine().await;
    }

    /// Has the deployer make itself an authority of access-control (which verifies and
    /// suspends providers), not mined.
    pub async fn deployer_as_authority(&self) -> String {
        self.call(
            &deployer_key(),
            "access-control",
            "add-authority",
            vec![principal(&deployer())],
        )
        .await
    }

    /// Registers `key` as a nurse (information hash 1…1, credentials hash 2…2), not mined.
    pub async fn register_nurse(&self, key: &SecretKey) -> String {
        self.call(
            key,
            "access-control",
            "register-provider",
            vec![
                Value::buffer([1u8; 32]),
                Value::ascii("nurse"),
                Value::buffer([2u8; 32]),
            ],
        )
        .await
    }

    /// Signs and posts a call to one of the contracts, returning the txid (not mined).
    ///
    /// The key may be one the service sends from too (the demo responder): when the service
    /// took the same nonce in between, the node answers `ConflictingNonceInMempool` and the
    /// call is signed again with the next nonce.
    pub async fn call(
        &self,
        key: &SecretKey,
        contract: &str,
        function: &str,
        args: Vec<Value>,
    ) -> String {
        let sender = address_of(key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let signed = tx::sign_contract_call(
                &ContractCall {
                    contract: deployer(),
                    contract_name: contract.into(),
                    function: function.into(),
                    args: args.clone(),
                    nonce: self.nonce(&sender).await + self.pending_from(&sender).await,
                    fee: 10_000,
                    mainnet: false,
                },
                key,
            )
            .unwrap();
            let res = self
                .http
                .post(format!("{}/v2/transactions", self.rpc))
                .header("content-type", "application/octet-stream")
                .body(signed.bytes)
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body = res.text().await.unwrap();
            let raced = status == 400
                && serde_json::from_str::<Json>(&body).is_ok_and(|b| {
                    b["reason"] == "ConflictingNonceInMempool" || b["reason"] == "BadNonce"
                });
            if raced && attempt < 10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(status, 200, "{function}: {body}");
            return serde_json::from_str(&body).unwrap();
        }
    }

    async fn pending_from(&self, who: &Address) -> u64 {
        self.get_json("/devnet/mempool")
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["origin"] == who.to_string())
            .count() as u64
    }

    /// The patient (`key`) sets their emergency preferences; sent to the mempool.
    pub async fn set_preferences(&self, key: &SecretKey, allow: bool, types: &[&str], window: u64) {
        self.call(
            key,
            "patient-consent",
            "set-emergency-preferences",
            vec![
                Value::Bool(allow),
                Value::List(types.iter().map(|t| Value::ascii(t)).collect()),
                Value::UInt(window.into()),
            ],
        )
        .await;
    }

    pub async fn receipt(&self, txid: &str) -> serde_json::Value {
        self.get_json(&format!("/devnet/tx/{txid}")).await
    }
}

pub fn deployer_key() -> SecretKey {
    breakglass::keys::parse_key(DEPLOYER_KEY).unwrap()
}

pub fn deployer() -> Address {
    address_of(&deployer_key())
}

pub fn address_of(key: &SecretKey) -> Address {
    Address::from_public_key(&PublicKey::from_secret_key(SECP256K1, key), false)
}

pub fn new_key() -> SecretKey {
    SecretKey::new(&mut secp256k1::rand::thread_rng())
}

pub fn principal(a: &Address) -> Value {
    Value::Principal(breakglass::stacks::Principal::Standard(*a))
}

/// Settings for a service on free ports against `rpc`, keeping its data in `dir`.
pub fn settings(rpc: &str, dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.chain.node_url = rpc.parse().unwrap();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.follower.listen = "127.0.0.1:0".parse().unwrap();
    s.follower.poll_interval_ms = 200;
    s.submitter.interval_ms = 200;
    s.data.dir = dir.to_path_buf();
    s
}

pub async fn app(rpc: &str, dir: &Path, configure: impl FnOnce(&mut Settings)) -> Application {
    let mut s = settings(rpc, dir);
    configure(&mut s);
    let keys = ServiceKeys::load_or_generate(dir).unwrap();
    Application::build(s, keys).await.unwrap()
}

pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn ready(app: &Application) -> bool {
    let url = format!("http://{}/readyz", app.api_addr);
    reqwest::get(url)
        .await
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

// --- break-glass end to end: the seeded devnet, the service, signed requests ---

pub const SECS: Duration = Duration::from_secs(20);

pub struct Env {
    pub devnet: Devnet,
    pub app: Application,
    pub demo: Json,
    pub dir: tempfile::TempDir,
}

pub fn provider<'a>(demo: &'a Json, role: &str) -> &'a Json {
    demo["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap()
}

/// The devnet with the demo data in `dir/devnet`, mining every `block_time` seconds (`"0"`:
/// when told), and the demo's identities.
pub async fn demo_devnet(dir: &Path, block_time: &str) -> (Devnet, Json) {
    let devnet_dir = dir.join("devnet");
    let devnet = Devnet::start(&[
        "--data-dir",
        devnet_dir.to_str().unwrap(),
        "--seed-demo",
        "--block-time",
        block_time,
    ])
    .await;
    let demo: Json = serde_json::from_str(
        &std::fs::read_to_string(devnet_dir.join("demo-identities.json")).unwrap(),
    )
    .unwrap();
    (devnet, demo)
}

/// Imports an e-mail contact for patient `pid` with `breakglass patients import` (the
/// command's store and keys chosen by `configure`), as an operator would.
pub fn import_patient_contact(
    pid: &str,
    dir: &Path,
    configure: impl FnOnce(&mut std::process::Command),
) {
    import_patient_contacts(pid, None, dir, configure)
}

/// `import_patient_contact`, with a delegate's address too (a contact of the patient).
pub fn import_patient_contacts(
    pid: &str,
    delegate: Option<&str>,
    dir: &Path,
    configure: impl FnOnce(&mut std::process::Command),
) {
    let mut patient = json!({
        "resourceType": "Patient", "identifier": [{ "system": "urn:breakglass:patient-id", "value": pid }],
        "telecom": [{ "system": "email", "value": "patient@example.org" }] });
    if let Some(delegate) = delegate {
        patient["contact"] = json!([{ "relationship": [{ "text": "guardian" }],
            "telecom": [{ "system": "email", "value": delegate }] }]);
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": patient }] });
    let file = dir.join("patients.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_breakglass"));
    configure(&mut cmd);
    succeeded(
        cmd.args(["patients", "import", file.to_str().unwrap()])
            .output()
            .unwrap(),
    );
}

/// What a command that must succeed printed (its error output if it failed).
pub fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that each access id has its record on the devnet's access-control contract.
pub async fn assert_on_chain<'i>(rpc: &str, ids: impl IntoIterator<Item = &'i String>) {
    let rpc = breakglass::chain::rpc::NodeClient::new(rpc, Duration::from_secs(5), 3);
    let contract = format!("{}.access-control", deployer());
    for id in ids {
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
}

/// Writes a roster file at `path` with every demo provider but the admin on call.
pub fn roster_of_all_but_admin(demo: &Json, path: &Path) {
    let on_call: Vec<&str> = demo["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] != "admin")
        .map(|p| p["principal"].as_str().unwrap())
        .collect();
    std::fs::write(
        path,
        format!("on_call = {}\n", serde_json::to_string(&on_call).unwrap()),
    )
    .unwrap();
}

/// Posts a break-glass request to the service at `api` (host:port), sent again while the
/// answer is "the view of the chain is stale, try again" (such a refusal records nothing and
/// gives the nonce back), as a tablet would; for at most `secs` seconds.
pub async fn post_until_fresh(
    http: &reqwest::Client,
    api: &str,
    body: &str,
    secs: u64,
) -> (u16, Json) {
    for _ in 0..secs * 10 {
        let res = http
            .post(format!("http://{api}/v1/break-glass"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let answer = (
            res.status().as_u16(),
            res.json().await.unwrap_or(Json::Null),
        );
        if answer.0 != 503 || answer.1["code"] != "chain-state-stale" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the view of the chain of the service at {api} stayed stale for {secs} s");
}

pub async fn setup(configure: impl FnOnce(&mut Settings)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    let devnet = Devnet::start(&["--data-dir", devnet_dir.to_str().unwrap(), "--seed-demo"]).await;
    let demo: Json = serde_json::from_str(
        &std::fs::read_to_string(devnet_dir.join("demo-identities.json")).unwrap(),
    )
    .unwrap();
    // everyone on call but the admin
    let roster = dir.path().join("roster.toml");
    roster_of_all_but_admin(&demo, &roster);
    let mut s = settings(&devnet.rpc, &dir.path().join("service"));
    s.oncall.roster = Some(roster);
    configure(&mut s);
    let keys = ServiceKeys {
        stacks: parse_key(demo["responder"]["private_key"].as_str().unwrap()).unwrap(),
        source: KeySource::Env,
    };
    let app = Application::build(s, keys).await.unwrap();
    devnet.observe(app.observer_addr).await;
    eventually("ready", SECS, async || ready(&app).await.then_some(())).await;
    Env {
        devnet,
        app,
        demo,
        dir,
    }
}

/// Another replica of `env`'s service, its data in `dir`: as deploy/README.md has replicas, with
/// the same service key, data key and token signing keys (`env`'s key files copied).
pub async fn replica(env: &Env, dir: &Path, configure: impl FnOnce(&mut Settings)) -> Application {
    build_replica(env, dir, configure).await.unwrap()
}

/// `replica`, built: `env`'s key files copied into `dir/keys` (beside any there), its service
/// key the responder's.
pub async fn build_replica(
    env: &Env,
    dir: &Path,
    configure: impl FnOnce(&mut Settings),
) -> anyhow::Result<Application> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for file in std::fs::read_dir(env.dir.path().join("service/keys")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, keys.join(file.file_name().unwrap())).unwrap();
    }
    let mut s = settings(&env.devnet.rpc, dir);
    configure(&mut s);
    let keys = ServiceKeys {
        stacks: parse_key(env.demo["responder"]["private_key"].as_str().unwrap()).unwrap(),
        source: KeySource::Env,
    };
    Application::build(s, keys).await
}

/// A POST to `path` at `addr` on a connection of its own that declares `declared` bytes of
/// body and sends only `sent` of them (held open: a slow or stalled client).
pub async fn stalled_post(
    addr: std::net::SocketAddr,
    path: &str,
    declared: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    stalled_post_as(addr, path, "application/json", declared, sent).await
}

/// `stalled_post` with another `Content-Type`.
pub async fn stalled_post_as(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    declared: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    stalled_post_with(
        addr,
        path,
        &[("Content-Type", content_type)],
        declared,
        sent,
    )
    .await
}

/// `stalled_post` with these headers (a `Content-Type` among them).
pub async fn stalled_post_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    declared: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// The status of the answer on `stream`, if one arrives within `wait`.
pub async fn answered(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request body signed by @stacks/transactions (contracts/scripts/sign-request.mjs).
pub fn signed(key: &str, patient: &str, data_types: &[&str], nonce: u64, issued_at: u64) -> String {
    let input = json!({ "private_key": key, "patient": patient, "data_types": data_types,
                        "reason": "unresponsive on arrival, suspected anaphylaxis", "nonce": nonce, "issued_at": issued_at, "device": "er-tablet-2" });
    succeeded(
        std::process::Command::new("node")
            .arg("scripts/sign-request.mjs")
            .arg(input.to_string())
            .current_dir(repo().join("contracts"))
            .output()
            .unwrap(),
    )
}

pub async fn post(app: &Application, body: &str) -> (u16, Json) {
    post_at(app.api_addr, body).await
}

/// `post` to the service at `addr`.
pub async fn post_at(addr: std::net::SocketAddr, body: &str) -> (u16, Json) {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/break-glass"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Json::Null))
}

/// A scrape of the service's `/metrics`.
pub struct Scrape(pub String);

impl Scrape {
    pub async fn of(app: &Application) -> Scrape {
        Scrape::at(&format!("http://{}", app.api_addr)).await
    }

    /// The scrape of the service at `base` (`http://host:port`), e.g. a replica's process.
    pub async fn at(base: &str) -> Scrape {
        let url = format!("{base}/metrics");
        Scrape(reqwest::get(url).await.unwrap().text().await.unwrap())
    }

    /// The value of the one series named `series` (with its labels, if any), which must exist.
    pub fn value(&self, series: &str) -> f64 {
        let series = format!("{series} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} in {}", self.0))
    }

    /// Asserts the store's group commits were seen by `writer` (`journal` or `redis`, and not
    /// the other): its writes' histogram, and one observation of batches per group (made right
    /// after its write's; the exposition reads the writes before the batches, so a group
    /// observed while a scrape renders shows one more or one fewer) that carried at least
    /// `batches`, each of whose waits for its group was observed (when the writer first took
    /// it, before its group's write: a batch sent again in a later group, behind another
    /// batch's refused claim or a lost answer, is carried twice and waited once). Returns the
    /// groups counted.
    pub fn assert_group_commits(&self, writer: &str, batches: f64) -> f64 {
        let m = &self.0;
        let groups = self.value(&format!(
            "breakglass_store_{writer}_write_duration_seconds_count"
        ));
        assert!(groups >= 1.0, "{m}");
        let counted = self.value("breakglass_store_group_batches_count");
        assert!((counted - groups).abs() <= 1.0, "{m}");
        let carried = self.value("breakglass_store_group_batches_sum");
        assert!(carried >= batches, "{m}");
        let waited = self.value("breakglass_store_batch_wait_duration_seconds_count");
        assert!(waited >= batches, "{m}");
        let other = if writer == "journal" {
            "redis"
        } else {
            "journal"
        };
        assert!(!m.contains(&format!("store_{other}_write")), "{m}");
        groups
    }
}

/// A GET of `path`'s body as text.
pub async fn text(app: &Application, path: &str) -> String {
    reqwest::get(format!("http://{}{path}", app.api_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get(app: &Application, path: &str) -> Json {
    reqwest::get(format!("http://{}{path}", app.api_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An access as the holder of its token sees it (`token`: the grant's `access_token`), with
/// the answer's status.
pub async fn access_with_token(app: &Application, id: &str, token: &str) -> (u16, Json) {
    let res = reqwest::Client::new()
        .get(format!("http://{}/v1/accesses/{id}", app.api_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

pub fn patient(demo: &Json, allows: bool) -> &str {
    demo["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["emergency_access"] == allows)
        .unwrap()["patient_id"]
        .as_str()
        .unwrap()
}

// --- notices: a real SMTP server process and what it received ---

/// A real SMTP server, writing what it receives to `dir`.
pub async fn smtp_server(port: u16, dir: &Path, delay_ms: u64) -> Child {
    smtp_server_with(port, dir, delay_ms, &[]).await
}

/// `smtp_server` with more of its options (`--refuse-senders-while <file>`).
pub async fn smtp_server_with(port: u16, dir: &Path, delay_ms: u64, args: &[&str]) -> Child {
    let mut child = Command::new("node")
        .args(["scripts/smtp-server.mjs", "--port", &port.to_string()])
        .args(["--delay-ms", &delay_ms.to_string(), "--dir"])
        .arg(dir)
        .args(args)
        .current_dir(repo().join("contracts"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(SECS, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains("\"ready\":true"), "{line}");
    child
}

/// The messages received so far: envelope and raw bytes.
pub fn received(dir: &Path) -> Vec<(Json, Vec<u8>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    names.sort();
    names
        .into_iter()
        .map(|eml| {
            let env = std::fs::read_to_string(eml.with_extension("json")).unwrap();
            (
                serde_json::from_str(&env).unwrap(),
                std::fs::read(&eml).unwrap(),
            )
        })
        .collect()
}

/// A header of a raw message.
pub fn header(raw: &[u8], name: &str) -> String {
    use mailparse::MailHeaderMap;
    mailparse::parse_mail(raw)
        .unwrap()
        .headers
        .get_first_value(name)
        .unwrap_or_default()
}

// --- Redis: a real redis-server per test, persisting every write (AOF, fsync always) ---

/// A real `redis-server` on a free port, its append-only file in `dir`; stopped when dropped.
/// Fails (never skips) when the server cannot start: `scripts/test` installs it.
pub struct RedisServer {
    pub child: Option<std::process::Child>,
    pub port: u16,
    pub dir: std::path::PathBuf,
    /// Its options beyond `dev::redis_server`'s.
    pub args: Vec<String>,
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, &[])
    }

    /// A server with more options (e.g. `--enable-debug-command local`).
    pub fn start_with(dir: &Path, args: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.restart();
        s
    }

    /// A replica of `primary`, its files in `dir`.
    pub fn start_replica(dir: &Path, primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        RedisServer::start_with(dir, &["--replicaof", "127.0.0.1", &port])
    }

    /// A connection of its own, for a test to look at or change what the store wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sets the server's `maxmemory` (bytes; 0, no limit) at run time, as an operator would.
    pub fn set_maxmemory(&self, bytes: u64) {
        self.config_set("maxmemory", &bytes.to_string());
    }

    /// Sets one of the server's settings at run time (`CONFIG SET`), as an operator would.
    pub fn config_set(&self, name: &str, value: &str) {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut self.connection())
            .unwrap();
    }

    /// Starts the server (again) on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
        let child = breakglass::dev::redis_server(self.port, &self.dir)
            .args(&self.args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs the Debian package)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            });
            if up {
                // the server that answered is this one (not another on the port, with this
                // one gone: a test would then stop and start a server it does not talk to)
                let child = self.child.as_mut().expect("just started");
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "redis-server on port {} exited: another process holds the port",
                    self.port
                );
                let pid = format!("process_id:{}", child.id());
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query(&mut self.connection())
                    .unwrap();
                assert!(
                    info.lines().any(|l| l.trim_end() == pid),
                    "another redis-server answers on port {}",
                    self.port
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server at once (SIGKILL: no shutdown, no last save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server without closing anything (SIGSTOP): connections are accepted by the
    /// kernel and commands sent, but none is answered, as with a hung server or a host gone
    /// silent. `resume` goes on where it stopped.
    /// Returns once every thread of the server is stopped (a signal is delivered when its
    /// target next runs, not when `kill` returns).
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP, true);
    }

    /// Returns once no thread of the server is stopped.
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT, false);
    }

    fn signal(&self, signal: rustix::process::Signal, stopped: bool) {
        let pid = self.child.as_ref().expect("a running server").id();
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal)
            .unwrap();
        // each thread's state, the third field of its `stat` (after the name in parentheses):
        // `T`, stopped by a signal
        let states = || -> Vec<bool> {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("the server runs")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .map(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !states().iter().all(|&s| s == stopped) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server {pid}: not {} within 10 s",
                if stopped { "stopped" } else { "running" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A TCP proxy in front of a Redis server that can lose one answer: once `lose_next_script_answer`
/// is set, the next `EVALSHA` goes to the server (which runs it) and its answer is dropped with
/// the connection; the connection that follows is held (accepted, not served) until `release`
/// is sent, so that the test can write meanwhile. Or deliver one command late: once
/// `hold_next_script` is set, the next `EVALSHA` is kept from the server (its sender waits for
/// an answer that does not come, and may drop the connection) until `deliver_late` is sent,
/// then sent on the connection it came on, as a network that delays a segment does;
/// `late_answered` says when the server answered it. Faults at a boundary a real network has.
pub struct LossyProxy {
    pub port: u16,
    pub lose_next_script_answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Says when an answer was lost.
    pub lost: std::sync::mpsc::Receiver<()>,
    pub release: std::sync::mpsc::Sender<()>,
    pub hold_next_script: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Says when a command is held.
    pub held: std::sync::mpsc::Receiver<()>,
    pub deliver_late: std::sync::mpsc::Sender<()>,
    pub late_answered: std::sync::mpsc::Receiver<()>,
}

impl LossyProxy {
    pub fn start(server_port: u16) -> LossyProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let (lost_tx, lost) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let flag = armed.clone();
        let hold_next = Arc::new(AtomicBool::new(false));
        let hold_script = Arc::new(AtomicBool::new(false));
        let (held_tx, held) = mpsc::channel();
        let (deliver_late, late) = mpsc::channel::<()>();
        let late = Arc::new(std::sync::Mutex::new(late));
        let (answered_tx, late_answered) = mpsc::channel();
        let holding = hold_script.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if hold_next.swap(false, Ordering::SeqCst) {
                    let _ = released.recv();
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    return;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                let script_sent = Arc::new(AtomicBool::new(false));
                let sent = script_sent.clone();
                let arm = flag.clone();
                let late_sent = Arc::new(AtomicBool::new(false));
                let (hold, held_tx, late, sent_late) = (
                    holding.clone(),
                    held_tx.clone(),
                    late.clone(),
                    late_sent.clone(),
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n > 0
                            && buf[..n].windows(7).any(|w| w == b"EVALSHA")
                            && hold.swap(false, Ordering::SeqCst)
                        {
                            let kept = buf[..n].to_vec();
                            let _ = held_tx.send(());
                            let _ = late.lock().unwrap().recv();
                            // sent on its connection, which is then the answer's alone
                            sent_late.store(true, Ordering::SeqCst);
                            let _ = s_out.write_all(&kept);
                            return;
                        }
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if arm.load(Ordering::SeqCst)
                            && buf[..n].windows(7).any(|w| w == b"EVALSHA")
                        {
                            sent.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                let (arm, lost_tx, hold) = (flag.clone(), lost_tx.clone(), hold_next.clone());
                let answered_tx = answered_tx.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if late_sent.load(Ordering::SeqCst) {
                            let _ = answered_tx.send(());
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                        if script_sent.load(Ordering::SeqCst) && arm.swap(false, Ordering::SeqCst) {
                            // the server ran it; its answer never arrives, and the connection
                            // made next waits
                            hold.store(true, Ordering::SeqCst);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            let _ = lost_tx.send(());
                            return;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        LossyProxy {
            port,
            lose_next_script_answer: armed,
            lost,
            release,
            hold_next_script: hold_script,
            held,
            deliver_late,
            late_answered,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A real Redis Sentinel (`redis-server --sentinel`) on a free port, watching `primary` as
/// `master`, quick to fail over (down after 300 ms); stopped when dropped.
pub struct Sentinel {
    pub child: std::process::Child,
    pub port: u16,
    /// Whether it is reached by TLS only (`rediss://`).
    pub tls: bool,
}

impl Sentinel {
    pub fn start(dir: &Path, primary: &RedisServer, master: &str) -> Sentinel {
        Sentinel::start_with(dir, primary.port, master, None)
    }

    /// A Sentinel reached by TLS only, its certificate `cert` and key `key`, watching the
    /// primary on its TLS port `primary_tls_port` by TLS too (checked against `ca`).
    pub fn start_tls(
        dir: &Path,
        primary_tls_port: u16,
        master: &str,
        [ca, cert, key]: &[std::path::PathBuf; 3],
    ) -> Sentinel {
        let tls = format!(
            "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
            cert.display(),
            key.display(),
            ca.display()
        );
        Sentinel::start_with(dir, primary_tls_port, master, Some(&tls))
    }

    fn start_with(dir: &Path, primary: u16, master: &str, tls: Option<&str>) -> Sentinel {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("sentinel.conf");
        let listen = match tls {
            Some(settings) => format!("port 0\ntls-port {port}\n{settings}"),
            None => format!("port {port}\n"),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {master} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {master} 300\n\
                 sentinel failover-timeout {master} 2000\n",
                dir = dir.display(),
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs the Debian package)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sentinel did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sentinel {
            child,
            port,
            tls: tls.is_some(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A proxy in front of the node's RPC that forwards every request, and once `hold`s needle is
/// set, answers the first request whose body holds it with the node's answer only after the
/// test has done what it is told to (`told`, then `done`): something the node does while that
/// answer is on its way.
pub struct HoldingProxy {
    pub url: String,
    hold: std::sync::Arc<std::sync::Mutex<Option<Hold>>>,
    pub server: actix_web::dev::ServerHandle,
}

struct Hold {
    needle: String,
    told: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl HoldingProxy {
    pub fn start(upstream: &str) -> HoldingProxy {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        type Held = std::sync::Arc<std::sync::Mutex<Option<Hold>>>;
        async fn forward(
            req: HttpRequest,
            body: web::Bytes,
            to: web::Data<(String, reqwest::Client, Held)>,
        ) -> HttpResponse {
            let (upstream, client, hold) = to.get_ref();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut ask = client.request(
                req.method().as_str().parse().unwrap(),
                format!("{upstream}{path}"),
            );
            if let Some(ct) = req.headers().get("content-type") {
                ask = ask.header("content-type", ct.as_bytes());
            }
            let res = ask.body(body.to_vec()).send().await.unwrap();
            let status = res.status().as_u16();
            let ct = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let answer = res.bytes().await.unwrap();
            let held = {
                let mut hold = hold.lock().unwrap();
                let holds = hold
                    .as_ref()
                    .is_some_and(|h| String::from_utf8_lossy(&body).contains(h.needle.as_str()));
                if holds {
                    hold.take()
                } else {
                    None
                }
            };
            if let Some(h) = held {
                h.told.send(()).unwrap();
                h.done.await.unwrap();
            }
            let mut out =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            if let Some(ct) = ct {
                out.content_type(ct);
            }
            out.body(answer)
        }
        let hold: Held = Default::default();
        let data = web::Data::new((upstream.to_string(), reqwest::Client::new(), hold.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(forward))
        })
        .listen(listener)
        .unwrap()
        .workers(2)
        .disable_signals()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        HoldingProxy {
            url,
            hold,
            server: handle,
        }
    }

    /// A proxy started in front of the node `s` names, `s` then naming the proxy.
    pub fn in_front_of_node(s: &mut Settings) -> HoldingProxy {
        let proxy = HoldingProxy::start(s.chain.node_url.as_str().trim_end_matches('/'));
        s.chain.node_url = proxy.url.parse().unwrap();
        proxy
    }

    /// Holds the node's answer to the next request whose body holds `needle` until `done`
    /// fires; `told` fires once that answer is read.
    pub fn hold(
        &self,
        needle: String,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (told, told_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        *self.hold.lock().unwrap() = Some(Hold { needle, told, done });
        (told_rx, done_tx)
    }
}

/// Puts `entry` in the service's provider directory (as an import would).
pub async fn in_directory(env: &Env, entry: breakglass::domain::ProviderEntry) {
    breakglass::store::apply_async(
        &env.app.store,
        breakglass::store::Batch {
            directory: vec![(entry.principal, Some(entry))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// The value of one metric line (`name{labels}`) in an exposition.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The service's `/metrics` exposition.
pub async fn metrics(app: &Application) -> String {
    text(app, "/metrics").await
}

/// Every entry of `store`'s audit log, oldest first.
pub fn audit_log(store: &dyn breakglass::store::Store) -> Vec<breakglass::audit::Entry> {
    let head = store.audit_head().unwrap().map_or(0, |h| h.seq);
    store.audit_entries(1, head as usize).unwrap()
}

/// The events of kind `kind` in `store`'s audit log, oldest first.
pub fn logged(store: &dyn breakglass::store::Store, kind: &str) -> Vec<breakglass::audit::Event> {
    audit_log(store)
        .iter()
        .map(|e| e.parsed().unwrap())
        .filter(|e| e.kind() == kind)
        .collect()
}

/// Runs a headless-Chromium flow, `script` (a `web/tests/*-flow.mjs`), with `vars` in its
/// environment, mining a block on `devnet` every `mine_every_ms` while it runs; fails with its
/// output unless it succeeds; its last line, as JSON.
pub async fn browser_flow(
    devnet: &Devnet,
    script: &str,
    vars: &[(&str, String)],
    mine_every_ms: u64,
) -> Json {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut flow = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("node runs {script} (scripts/test installs web/): {e}"));
    let out = loop {
        tokio::select! {
            out = flow.wait() => break out.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(mine_every_ms)) => { devnet.mine().await; }
        }
    };
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(flow.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(flow.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(out.success(), "{script} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

//! The service on the shared store (Redis, #21): grants recorded there before their token, a
//! Redis outage refused with 503 and shown in `/readyz`, recovery without a restart, nothing
//! acknowledged lost.

use crate::support::*;

async fn readyz(env: &Env) -> u16 {
    readyz_at(env.app.api_addr).await
}

async fn readyz_at(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What `ask` answers and how long it took, asked from a thread and runtime of their own: the
/// test's runtime also runs the service's background tasks, whose reads of a hung Redis may
/// hold both its threads for seconds, and the answer (from the service's own HTTP workers)
/// must not be timed by a client waiting for one of them.
async fn timed<T: Send + 'static, F: std::future::Future<Output = T>>(
    ask: impl FnOnce() -> F + Send + 'static,
) -> (T, Duration) {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let asked = Instant::now();
        let answer = rt.block_on(tokio::time::timeout(Duration::from_secs(10), ask()));
        (answer.expect("answered, not left waiting"), asked.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_grant_waits_for_redis_and_an_outage_is_refused_then_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url)).await;
    assert!(env.app.redb.is_none(), "the service runs on Redis");
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let pid = patient(&env.demo, true);

    let (status, first) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(status, 201, "{first}");
    let first_id: breakglass::domain::AccessId =
        first["access_id"].as_str().unwrap().parse().unwrap();
    // it is in Redis: a second store on the same server reads it
    let other = breakglass::store::RedisStore::open(&redis.url(), "breakglass:").unwrap();
    assert!(breakglass::store::Store::access(&other, &first_id)
        .unwrap()
        .is_some());
    drop(other);
    // the grant's write took its nonce: the same request again is a replay, refused by that
    // write, and recorded as a refusal; a refused request took nothing and is judged again
    // (and refused again for the same reason, recorded once)
    let (status, replay) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(
        (status, replay["code"].as_str()),
        (401, Some("replayed-request"))
    );
    let opted_out = signed(key, patient(&env.demo, false), &["allergies"], 3, now());
    for _ in 0..2 {
        let (status, refused) = post(&env.app, &opted_out).await;
        assert_eq!(
            (status, refused["code"].as_str()),
            (403, Some("patient-opted-out"))
        );
    }
    let refusals: Vec<String> = env
        .app
        .store
        .audit_entries(1, 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| {
            let event: Json = serde_json::from_str(e.event.get()).unwrap();
            event["code"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(refusals, ["replayed-request", "patient-opted-out"]);
    assert_eq!(env.app.store.access_ids().unwrap().len(), 1, "one access");
    // operators see the writes to Redis, one per group, and the batches each group took: the
    // grant and the two refusals logged at least, as the writer saw them (no journal here)
    let m = Scrape::of(&env.app).await;
    m.assert_group_commits("redis", 3.0);
    assert!(m.value("breakglass_store_redis_write_duration_seconds_sum") > 0.0);

    redis.kill();
    let (status, refused) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
    assert_eq!(status, 503, "no token without the durable write: {refused}");
    eventually("readyz says the store is down", SECS, async || {
        (readyz(&env).await == 503).then_some(())
    })
    .await;

    redis.restart();
    // the same request (nothing was recorded, its nonce not taken) is granted once Redis is back
    let again = eventually("granted again", SECS, async || {
        let (status, g) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
        (status == 201).then_some(g)
    })
    .await;
    assert_ne!(again["access_id"], first["access_id"]);
    eventually("ready again", SECS, async || {
        (readyz(&env).await == 200).then_some(())
    })
    .await;
    // the grant acknowledged before the outage is still there, with its chain record (made
    // by the grants' follow-up, which goes on once the server is back)
    assert!(env.app.store.access(&first_id).unwrap().is_some());
    eventually("its chain record", SECS, async || {
        env.app
            .store
            .submission(&format!("record:{first_id}"))
            .ok()
            .flatten()
    })
    .await;
}

/// A Redis that stops answering without closing (hung, or its host gone silent): a grant is
/// refused within seconds, not left waiting, `/readyz` says so, and everything resumes with
/// the server. The refused grant's write went on waiting and landed: its access is recorded
/// (with no token) and its request used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_refused_within_seconds_and_the_service_resumes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url)).await;
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let pid = patient(&env.demo, true);
    let (status, first) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(status, 201, "{first}");

    redis.pause();
    let hung = signed(key, pid, &["allergies"], 2, now());
    let (addr, body) = (env.app.api_addr, hung.clone());
    let ((status, refused), waited) =
        timed(move || async move { post_at(addr, &body).await }).await;
    println!("refused after {waited:?}");
    assert_eq!(
        (status, refused["code"].as_str()),
        (503, Some("audit-pending")),
        "{refused}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "refused after {waited:?}: the write is waited on for 5 s"
    );
    let (ready, waited) = timed(move || readyz_at(addr)).await;
    assert_eq!(ready, 503, "readyz: the store does not answer");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // the write given up on is in the histogram of the grants' writes, as long as it waited
    let m = crate::support::metrics(&env.app).await;
    let value = |series: &str| crate::support::metric(&m, series).unwrap_or(0.0);
    assert_eq!(value("breakglass_audit_write_duration_seconds_count"), 2.0);
    assert!(value("breakglass_audit_write_duration_seconds_sum") >= 4.0);

    redis.resume();
    let again = eventually("granted again", SECS, async || {
        let (status, g) = post(&env.app, &signed(key, pid, &["allergies"], 3, now())).await;
        (status == 201).then_some(g)
    })
    .await;
    assert!(again["access_token"].is_string());
    eventually("ready again", SECS, async || {
        (readyz(&env).await == 200).then_some(())
    })
    .await;
    // the refused grant's write landed once the server went on: recorded, with its chain
    // record (made by the grants' follow-up once the server answers), and its request used up
    let store = &env.app.store;
    let accesses = store.access_ids().unwrap();
    assert_eq!(accesses.len(), 3, "{accesses:?}");
    eventually("every access's chain record", SECS, async || {
        accesses
            .iter()
            .all(|id| matches!(store.submission(&format!("record:{id}")), Ok(Some(_))))
            .then_some(())
    })
    .await;
    let (status, replay) = post(&env.app, &hung).await;
    assert_eq!(
        (status, replay["code"].as_str()),
        (401, Some("replayed-request")),
        "{replay}"
    );
    // and its record says its token never left: revoked beside it, by the service (before, it
    // read as any grant whose clinician had the data)
    let withheld = accesses
        .iter()
        .find(|id| {
            let id = id.to_string();
            id != first["access_id"].as_str().unwrap() && id != again["access_id"].as_str().unwrap()
        })
        .unwrap();
    withheld_token_revoked(store, withheld).await;
}

/// A refusal's audit entry is waited on no longer than a grant's write: with Redis hung, a
/// request the policies refuse is answered in its own words within ~5 s (on Redis the writer's
/// `WRITE_TIMEOUT` and the refusal's `WRITE_WAIT` are both 5 s: this shows the answer, not which
/// of the two gave it), not held nor answered as the store's failure; its entry lands when the
/// server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_answered_in_its_own_words_while_redis_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url)).await;
    let key = provider(&env.demo, "nurse")["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    // a patient who opted out, read once (kept in the replica's memory from then on)
    let opted_out = patient(&env.demo, false);
    let (status, _) = post(&env.app, &signed(&key, opted_out, &["allergies"], 1, now())).await;
    assert_eq!(status, 403);

    redis.pause();
    let (addr, body) = (
        env.app.api_addr,
        signed(&key, opted_out, &["allergies"], 2, now()),
    );
    let ((status, refused), waited) =
        timed(move || async move { post_at(addr, &body).await }).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("patient-opted-out")),
        "{refused}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "refusal answered after {waited:?}: its entry is waited on for 5 s"
    );
    redis.resume();
    eventually("both refusals in the audit log", SECS, async || {
        let entries = env.app.store.audit_entries(1, 100).ok()?;
        let refusals = entries
            .iter()
            .filter(|e| e.event.get().contains("patient-opted-out"))
            .count();
        (refusals == 2).then_some(())
    })
    .await;
}

/// A grant whose write answered an error that landed all the same (acknowledged by fewer of
/// Redis's replicas than `data.redis_wait_replicas` asks: the primary has it; its replica hung,
/// still counted as connected): the clinician is refused 503 `audit-unavailable`, no token
/// issued, and the access, on record as any grant, has its token revoked beside it by the
/// service, so that its record says the token never left. With the replica gone, the next
/// grant is refused unwritten, and so is that revocation, until the replica is back: then it
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_refused_on_a_write_that_landed_all_the_same_reads_as_never_issued() {
    let dir = tempfile::tempdir().unwrap();
    let (primary_dir, replica_dir) = (dir.path().join("primary"), dir.path().join("replica"));
    std::fs::create_dir_all(&primary_dir).unwrap();
    std::fs::create_dir_all(&replica_dir).unwrap();
    let primary = RedisServer::start(&primary_dir);
    let mut replica = RedisServer::start_replica(&replica_dir, &primary);
    eventually("the replica linked", SECS, async || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connection())
            .unwrap();
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    let url = primary.url();
    let env = setup(|s| {
        s.data.redis_url = Some(url);
        s.data.redis_wait_replicas = 1;
        s.data.redis_wait_ms = 500;
    })
    .await;
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let pid = patient(&env.demo, true);
    let (status, first) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(status, 201, "{first}");

    // hung: still connected (and its lag within 5 s) for the primary, acknowledging nothing
    replica.pause();
    let (status, refused) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (503, Some("audit-unavailable")),
        "{refused}"
    );
    assert!(refused.get("access_token").is_none(), "{refused}");
    let store = &env.app.store;
    let accesses = store.access_ids().unwrap();
    assert_eq!(
        accesses.len(),
        2,
        "the refused grant's write landed: {accesses:?}"
    );
    // gone: the primary has no replica, and writes are refused unwritten
    replica.kill();
    eventually("the primary without its replica", SECS, async || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut primary.connection())
            .unwrap();
        info.contains("connected_slaves:0").then_some(())
    })
    .await;
    let (status, refused) = post(&env.app, &signed(key, pid, &["allergies"], 3, now())).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (503, Some("audit-unavailable")),
        "{refused}"
    );
    assert_eq!(store.access_ids().unwrap().len(), 2, "refused unwritten");
    let withheld = accesses
        .iter()
        .find(|id| id.to_string() != first["access_id"].as_str().unwrap())
        .unwrap();
    // the refused grant's watch finds it landed (after 5 s) and cannot mark it yet
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert!(store.revoked(&withheld.to_string()).unwrap().is_none());
    replica.restart();
    withheld_token_revoked(store, withheld).await;
    // the grant that was answered keeps its token
    assert!(store
        .revoked(first["access_id"].as_str().unwrap())
        .unwrap()
        .is_none());
}

/// Past the bound on lookups of principals the cache does not know, a store that does not
/// answer whether a principal is in the provider directory is 503 `store-unavailable`, not
/// `too-many-lookups` (before, the failed read counted as "not listed", and the clinician's
/// client was told to wait for a bound that was not the cause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_read_past_the_lookup_bound_is_said_to_be_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let env = setup(|s| s.data.redis_url = Some(url)).await;
    let addr = env.app.api_addr;
    redis.pause();
    // more principals no one knows than the bound lets through in a second, at once
    let asked = futures_util::future::join_all((0..120).map(|_| async move {
        let who = address_of(&new_key());
        let res = reqwest::get(format!("http://{addr}/tablet/options?principal={who}"))
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Json = res.json().await.unwrap_or(Json::Null);
        (
            status,
            body["code"].as_str().unwrap_or_default().to_string(),
        )
    }))
    .await;
    redis.resume();
    let codes: Vec<&str> = asked.iter().map(|(_, c)| c.as_str()).collect();
    println!("{codes:?}");
    assert!(
        !codes.contains(&"too-many-lookups"),
        "the directory was not read, yet the bound was blamed: {codes:?}"
    );
    assert!(
        asked
            .iter()
            .any(|(s, c)| *s == 503 && c == "store-unavailable"),
        "{codes:?}"
    );
}

/// Waits until access `withheld`'s token is revoked in `store`, and checks its trail says by
/// the service, as a token that never left (`access::WITHHELD_BY`).
async fn withheld_token_revoked(
    store: &std::sync::Arc<dyn breakglass::store::Store>,
    withheld: &breakglass::domain::AccessId,
) {
    eventually("the withheld token revoked", SECS, async || {
        store.revoked(&withheld.to_string()).unwrap().map(drop)
    })
    .await;
    let trail: Vec<breakglass::audit::Event> = store
        .audit_of(withheld)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e.event.get()).unwrap())
        .collect();
    assert!(
        trail.iter().any(|e| matches!(e,
            breakglass::audit::Event::Revocation { by, .. } if by == breakglass::access::WITHHELD_BY)),
        "{:?}",
        trail.iter().map(breakglass::audit::Event::kind).collect::<Vec<_>>()
    );
}

/// A Redis at its `maxmemory`: a grant is refused at once (503 `audit-unavailable`, no token),
/// and so is an introspection (each use of a token is recorded before it is answered),
/// `/readyz` says why (`store_writes`), and everything resumes once the server has room,
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_grants_says_why_and_takes_them_again_once_it_has_room() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let secret = "full-redis-test-secret";
    let env = setup(|s| {
        s.data.redis_url = Some(url);
        s.resource_servers.clients = vec![breakglass::configuration::ResourceServerClient {
            id: "fhir-server".into(),
            secret_sha256: hex::encode(sha2::Sha256::digest(secret.as_bytes())),
        }]
    })
    .await;
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let pid = patient(&env.demo, true);
    let (status, first) = post(&env.app, &signed(key, pid, &["allergies"], 1, now())).await;
    assert_eq!(status, 201, "{first}");
    let readyz = async || {
        let res = reqwest::get(format!("http://{}/readyz", env.app.api_addr))
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Json>().await.unwrap())
    };
    let (status, ready) = readyz().await;
    assert_eq!(
        (status, &ready["checks"]["store_writes"]),
        (200, &json!("ok"))
    );

    redis.set_maxmemory(1);
    let asked = Instant::now();
    let (status, refused) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (503, Some("audit-unavailable")),
        "{refused}"
    );
    assert!(refused.get("access_token").is_none());
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once");
    let (status, ready) = readyz().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["store"], json!(true), "it answers");
    let why = ready["checks"]["store_writes"].as_str().unwrap();
    assert!(why.contains("out of memory"), "{why}");
    let introspect = async || {
        let res = reqwest::Client::new()
            .post(format!("http://{}/v1/token/introspect", env.app.api_addr))
            .basic_auth("fhir-server", Some(secret))
            .form(&[("token", first["access_token"].as_str().unwrap())])
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Json>().await.unwrap())
    };
    let (status, unrecorded) = introspect().await;
    assert_eq!(
        (status, &unrecorded["error"]),
        (503, &json!("temporarily_unavailable")),
        "no use of a token unrecorded"
    );

    redis.set_maxmemory(0);
    let again = eventually("granted again", SECS, async || {
        let (status, g) = post(&env.app, &signed(key, pid, &["allergies"], 2, now())).await;
        (status == 201).then_some(g)
    })
    .await;
    assert!(again["access_token"].is_string());
    let (status, ready) = readyz().await;
    assert_eq!(
        (status, &ready["checks"]["store_writes"]),
        (200, &json!("ok"))
    );
    let (status, active) = introspect().await;
    assert_eq!((status, &active["active"]), (200, &json!(true)), "{active}");
    assert_eq!(
        env.app.store.access_ids().unwrap().len(),
        2,
        "the refused one left nothing"
    );
}

// --- two service processes on one Redis (#21) ---

use std::path::PathBuf;
use std::time::{Duration, Instant};

use breakglass::domain::PatientId;
use breakglass::stacks::Value;
use futures_util::StreamExt;
use serde_json::{json, Value as Json};

const FHIR_CLIENT: (&str, &str) = ("fhir-server", "replicas-test-secret");

/// One service process (the binary, as operators run it), on its own ports.
struct Replica {
    api: u16,
    observer: u16,
    child: Option<tokio::process::Child>,
}

/// One redis-server, the devnet (mining when the test says), a real SMTP server and two
/// service processes sharing the Redis, its keys in one data directory: replicas behind a
/// load balancer.
struct Cluster {
    dir: tempfile::TempDir,
    devnet: Devnet,
    demo: Json,
    redis: RedisServer,
    mail: PathBuf,
    _smtp: tokio::process::Child,
    config: PathBuf,
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let (devnet, demo) = demo_devnet(dir.path(), "0").await;
        let redis = RedisServer::start(&dir.path().join("redis").tap_mkdir());
        let smtp = free_port();
        let mail = dir.path().join("mail");
        let smtp_child = smtp_server(smtp, &mail, 0).await;
        let roster = dir.path().join("roster.toml");
        roster_of_all_but_admin(&demo, &roster);
        let config = dir.path().join("breakglass.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[chain]
node_url = "{rpc}"
[data]
dir = "{data}"
redis_url = "{redis}"
lease_ms = 1000
[follower]
poll_interval_ms = 200
max_lag_blocks = 1000
[submitter]
interval_ms = 50
[issuance]
grants_per_minute = 100000
[audit]
anchor_every_entries = 1000000
anchor_every_secs = 86400
[oncall]
roster = "{roster}"
[notify]
transport = "smtp"
immediate_data_types = ["allergies"]
poll_interval_ms = 50
retry_initial_secs = 1
retry_max_secs = 1
[notify.smtp]
port = {smtp}
timeout_secs = 1
[[resource_servers.clients]]
id = "{client}"
secret_sha256 = "{secret}"
"#,
                rpc = devnet.rpc,
                data = dir.path().join("service").display(),
                redis = redis.url(),
                roster = roster.display(),
                client = FHIR_CLIENT.0,
                secret = hex::encode(sha2::Sha256::digest(FHIR_CLIENT.1)),
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            devnet,
            demo,
            redis,
            mail,
            _smtp: smtp_child,
            config,
            replicas: Vec::new(),
            http: reqwest::Client::new(),
        };
        c.import_contact();
        for _ in 0..n {
            let r = Replica {
                api: free_port(),
                observer: free_port(),
                child: None,
            };
            c.devnet
                .observe(format!("127.0.0.1:{}", r.observer).parse().unwrap())
                .await;
            c.replicas.push(r);
        }
        for i in 0..n {
            c.spawn(i);
            // the first one generates the keys the others read
            c.ready(i).await;
        }
        c
    }

    /// The patient's contact, imported into Redis with the CLI.
    fn import_contact(&self) {
        import_patient_contact(patient(&self.demo, true), self.dir.path(), |c| {
            c.args(["--config", self.config.to_str().unwrap()]);
        });
    }

    fn spawn(&mut self, i: usize) {
        let r = &self.replicas[i];
        let log = std::fs::File::create(self.dir.path().join(format!("replica-{i}.log"))).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .args(["--config", self.config.to_str().unwrap(), "serve"])
            .env("BREAKGLASS_SERVER__LISTEN", format!("127.0.0.1:{}", r.api))
            .env(
                "BREAKGLASS_FOLLOWER__LISTEN",
                format!("127.0.0.1:{}", r.observer),
            )
            .env(
                "BREAKGLASS_SERVICE_KEY",
                self.demo["responder"]["private_key"].as_str().unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.replicas[i].child = Some(child);
    }

    async fn ready(&self, i: usize) {
        let readyz = format!("http://127.0.0.1:{}/readyz", self.replicas[i].api);
        eventually("replica ready", Duration::from_secs(30), async || {
            let r = self.http.get(&readyz).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await
    }

    /// SIGKILL: no shutdown, nothing flushed beyond what it did before.
    async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            c.start_kill().unwrap();
            c.wait().await.unwrap();
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.replicas[i].api)
    }

    /// A request to replica `i`, sent again while the answer is "the view of the chain is
    /// stale" (nothing recorded, the nonce given back), as a tablet would.
    async fn post(&self, i: usize, body: &str) -> (u16, Json) {
        let api = format!("127.0.0.1:{}", self.replicas[i].api);
        post_until_fresh(&self.http, &api, body, 10).await
    }

    async fn token_call(&self, i: usize, path: &str, token: &str) -> (u16, Json) {
        let res = self
            .http
            .post(self.url(i, path))
            .basic_auth(FHIR_CLIENT.0, Some(FHIR_CLIENT.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Json::Null),
        )
    }

    /// Mines every transaction the mempool can give, a block each (and one block if none).
    async fn mine(&self) -> u64 {
        self.devnet.mine().await["tip"].as_u64().unwrap()
    }

    /// The replica that holds the chain submitter's lease now.
    async fn submitter_holder(&self) -> usize {
        let responder = self.demo["responder"]["principal"].as_str().unwrap();
        let client = ::redis::Client::open(self.redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let holder: String = ::redis::cmd("HGET")
            .arg(format!("breakglass:lease:submitter:{responder}"))
            .arg("holder")
            .query_async(&mut conn)
            .await
            .unwrap();
        // host:pid:random
        let pid: u32 = holder.rsplit(':').nth(1).unwrap().parse().unwrap();
        self.replicas
            .iter()
            .position(|r| r.child.as_ref().and_then(|c| c.id()) == Some(pid))
            .unwrap_or_else(|| panic!("the lease's holder {holder} is not a replica"))
    }

    /// A series of replica `i`'s `/metrics`.
    async fn gauge(&self, i: usize, series: &str) -> f64 {
        Scrape::at(&self.url(i, "")).await.value(series)
    }

    async fn mempool(&self) -> usize {
        self.devnet
            .get_json("/devnet/mempool")
            .await
            .as_array()
            .unwrap()
            .len()
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// A request for the patient's allergies from `key`, signed here (the signature is checked
/// against an independent implementation elsewhere: `vectors`, `request`).
fn body(key: &secp256k1::SecretKey, patient: &PatientId, nonce: u64) -> String {
    let m = breakglass::request::message(
        patient,
        &["allergies"],
        "unresponsive on arrival, suspected anaphylaxis",
        nonce,
        now(),
        Some("er-tablet-2"),
    );
    breakglass::request::sign(key, breakglass::stacks::tx::TESTNET_CHAIN_ID, &m).to_string()
}

/// Mines in the background every 200 ms until dropped (the load phases).
struct Miner(tokio::task::JoinHandle<()>);

impl Miner {
    fn start(rpc: &str) -> Miner {
        let url = format!("{rpc}/devnet/mine");
        Miner(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let _ = http.post(&url).send().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Acceptance 2 to 5 of #21 in one run: two replicas take requests spread across both, each
/// of a hundred re-sent to the other replica (refused as a replay); a revocation on one is
/// honoured by the other's introspection within the second; a suspension on chain is honoured
/// by both before another block; Redis is killed and restarted (requests meanwhile get 503,
/// nothing acknowledged is lost); one replica is SIGKILLed mid-run and the other finishes its
/// work. At the end every access the store holds is on chain exactly once (the responder's
/// nonce equals their count) and its notice delivered, each as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_grant_record_and_notify_each_access_once_through_a_sigkill_and_a_redis_restart(
) {
    let started = Instant::now();
    let mut c = Cluster::start(2).await;
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    phase("two replicas ready");
    let key = |role: &str| {
        breakglass::keys::parse_key(provider(&c.demo, role)["private_key"].as_str().unwrap())
            .unwrap()
    };
    let clinicians = [key("physician"), key("nurse"), key("paramedic")];
    let pharmacist = key("pharmacist");
    let patient: PatientId = patient(&c.demo, true).parse().unwrap();
    let mut granted: Vec<String> = Vec::new();
    let mut nonce = 1u64;
    let mut next = || {
        nonce += 1;
        nonce
    };

    // 5a. a revocation on replica 0 is honoured by replica 1's introspection at once
    let (status, g) = c.post(0, &body(&clinicians[0], &patient, next())).await;
    assert_eq!(status, 201, "{g}");
    granted.push(g["access_id"].as_str().unwrap().into());
    let token = g["access_token"].as_str().unwrap();
    let (status, active) = c.token_call(1, "/v1/token/introspect", token).await;
    assert_eq!((status, active["active"].clone()), (200, json!(true)));
    let (status, _) = c.token_call(0, "/v1/token/revoke", token).await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    let (status, inactive) = c.token_call(1, "/v1/token/introspect", token).await;
    assert_eq!((status, inactive["active"].clone()), (200, json!(false)));
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // 5b. a suspension on chain: both refuse the pharmacist once its block is mined, before
    // any other block
    for i in 0..2 {
        let (status, g) = c.post(i, &body(&pharmacist, &patient, next())).await;
        assert_eq!(status, 201, "{g}");
        granted.push(g["access_id"].as_str().unwrap().into());
    }
    // every grant so far recorded and mined: a record the submitter sends after the mempool
    // was seen empty would otherwise land in the block after the suspension's
    let responder: breakglass::stacks::Address = c.demo["responder"]["principal"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually(
        "the first grants recorded on chain",
        Duration::from_secs(30),
        async || {
            if c.mempool().await > 0 {
                c.mine().await;
            }
            (c.mempool().await == 0 && c.devnet.nonce(&responder).await == granted.len() as u64)
                .then_some(())
        },
    )
    .await;
    crate::breakglass::send_suspension_by(&c.devnet, &c.demo, provider(&c.demo, "pharmacist"))
        .await;
    let suspended_at = c.mine().await;
    assert_eq!(
        c.mempool().await,
        0,
        "the suspension's block is the last one"
    );
    for i in 0..2 {
        let refused = eventually(
            "the suspension honoured",
            Duration::from_secs(10),
            async || {
                let (status, answer) = c.post(i, &body(&pharmacist, &patient, next())).await;
                if status == 201 {
                    granted.push(answer["access_id"].as_str().unwrap().into());
                    return None;
                }
                Some(answer)
            },
        )
        .await;
        assert_eq!(refused["code"], "provider-not-verified", "replica {i}");
    }
    assert_eq!(
        c.devnet.tip().await,
        suspended_at,
        "no block was mined meanwhile"
    );

    phase("revocation and suspension honoured by both");
    // 2. requests spread across both; every fourth re-sent to the other replica
    let miner = Miner::start(&c.devnet.rpc);
    let replays = std::sync::atomic::AtomicUsize::new(0);
    let run = async |c: &Cluster, from: u64, count: u64, replicas: &[usize]| -> Vec<String> {
        futures_util::stream::iter(from..from + count)
            .map(|n| {
                let b = body(
                    &clinicians[n as usize % clinicians.len()],
                    &patient,
                    1_000 + n,
                );
                let replays = &replays;
                async move {
                    let i = replicas[n as usize % replicas.len()];
                    let (status, g) = c.post(i, &b).await;
                    assert_eq!(status, 201, "request {n}: {g}");
                    if n % 4 == 0 && replicas.len() > 1 {
                        let other = replicas[(n as usize + 1) % replicas.len()];
                        let (status, again) = c.post(other, &b).await;
                        assert_eq!(
                            (status, again["code"].clone()),
                            (401, json!("replayed-request")),
                            "re-sent {n}"
                        );
                        replays.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    g["access_id"].as_str().unwrap().to_string()
                }
            })
            .buffer_unordered(6)
            .collect()
            .await
    };
    granted.extend(run(&c, 0, 250, &[0, 1]).await);

    phase("250 requests, 62 re-sent");
    // 4. Redis killed and restarted: refused meanwhile, nothing acknowledged lost
    c.redis.kill();
    for i in 0..2 {
        let (status, answer) = c.post(i, &body(&clinicians[0], &patient, next())).await;
        assert_eq!(status, 503, "replica {i} without Redis: {answer}");
    }
    c.redis.restart();
    for i in 0..2 {
        let b = body(&clinicians[1], &patient, next());
        let g = eventually("granted again", SECS, async || {
            let (status, g) = c.post(i, &b).await;
            (status == 201).then_some(g)
        })
        .await;
        granted.push(g["access_id"].as_str().unwrap().into());
    }

    phase("Redis restarted");
    // 3. the replica that holds the submitter's lease SIGKILLed mid-run, with chain records
    // and notices in hand; the other takes everything after
    granted.extend(run(&c, 250, 150, &[0, 1]).await);
    let holder = c.submitter_holder().await;
    // each replica's /metrics says whether it is the one
    assert_eq!(
        c.gauge(holder, "breakglass_submitter_lease_held").await,
        1.0
    );
    assert_eq!(
        c.gauge(1 - holder, "breakglass_submitter_lease_held").await,
        0.0
    );
    let killed_pid = c.replicas[holder].child.as_ref().unwrap().id().unwrap();
    c.kill(holder).await;
    let killed_at = breakglass::clock::now_ms();
    phase("the submitting replica killed");
    granted.extend(run(&c, 400, 100, &[1 - holder]).await);
    phase("all 500 requests answered");
    assert_eq!(replays.load(std::sync::atomic::Ordering::SeqCst), 100);

    // every access recorded (acknowledged or not) reaches the chain once and is notified
    let store = breakglass::store::RedisStore::open(&c.redis.url(), "breakglass:").unwrap();
    use breakglass::store::Store;
    let recorded: std::collections::HashSet<String> = store
        .access_ids()
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    for id in &granted {
        assert!(recorded.contains(id), "acknowledged {id} is in the store");
    }
    eventually(
        "every record confirmed",
        Duration::from_secs(120),
        async || {
            let open = store.open_submissions().unwrap().len();
            (open == 0).then_some(())
        },
    )
    .await;
    phase("every record confirmed");
    drop(miner);
    let rpc = breakglass::chain::rpc::NodeClient::new(&c.devnet.rpc, Duration::from_secs(5), 3);
    let contract = format!("{}.access-control", deployer());
    let count = rpc
        .call_read(&contract, "get-emergency-count", &[], &deployer())
        .await
        .unwrap();
    assert_eq!(
        count,
        Value::UInt(recorded.len() as u128),
        "each access on chain once"
    );
    assert_eq!(
        c.devnet.nonce(&responder).await,
        recorded.len() as u64,
        "one transaction per access, none twice"
    );
    assert_on_chain(&c.devnet.rpc, recorded.iter().take(20)).await;

    // notices: each access's notice delivered; a copy of one only for a message the killed
    // replica was sending at the kill, then byte for byte the same
    let sent = eventually("every notice sent", Duration::from_secs(120), async || {
        let notices = store.notices().unwrap();
        notices
            .iter()
            .all(|n| matches!(n.state, breakglass::store::NoticeState::Sent { .. }))
            .then_some(notices.len())
    })
    .await;
    phase("every notice sent");
    assert_eq!(sent, recorded.len());
    // and the survivor's /metrics: it submits now, and nothing waits (once its next rounds
    // have pruned what this test's own store named while it built the indexes, above)
    let survivor = 1 - holder;
    assert_eq!(
        c.gauge(survivor, "breakglass_submitter_lease_held").await,
        1.0
    );
    for series in ["breakglass_chain_records_open", "breakglass_notices_open"] {
        eventually(series, SECS, async || {
            (c.gauge(survivor, series).await == 0.0).then_some(())
        })
        .await;
    }
    let mut by_id: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    for (_, raw) in received(&c.mail) {
        by_id
            .entry(header(&raw, "Message-ID"))
            .or_default()
            .push(raw);
    }
    assert_eq!(by_id.len(), recorded.len(), "one message per access");
    // a copy is the same message sent again: the one the killed replica was sending when it
    // died, and any it had sent but not recorded (its record written during Redis's restart,
    // kept in its memory to be written again), which the survivor sends once more after the
    // takeover period; none other
    let copies: usize = by_id.values().map(|v| v.len() - 1).sum();
    let log = std::fs::read_to_string(c.dir.path().join(format!("replica-{holder}.log")))
        .unwrap_or_default();
    let unrecorded: std::collections::HashSet<String> = log
        .lines()
        .filter(|l| l.contains("its attempt could not be recorded"))
        .filter_map(|l| {
            let line: Json = serde_json::from_str(l).ok()?;
            line["access"].as_str().map(String::from)
        })
        .collect();
    assert!(
        copies <= 1 + unrecorded.len(),
        "{copies} notices sent twice; the killed replica had {} sent and not recorded: {unrecorded:?}",
        unrecorded.len()
    );
    for messages in by_id.values() {
        assert!(
            messages.windows(2).all(|w| w[0] == w[1]),
            "copies are the same bytes"
        );
    }

    // the killed replica's end is in the log once, logged by the other (`lost`: when it was
    // last seen, before the kill); no other process is logged as gone
    let killed = started_as(&store, killed_pid);
    let lost = eventually("the killed replica's end logged", SECS, async || {
        let lost = gone_or_resumed(&store, "stop");
        (!lost.is_empty()).then_some(lost)
    })
    .await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    // and none after it (the survivor keeps looking)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = gone_or_resumed(&store, "stop");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(lost[0].0, killed);
    assert!(lost[0].1 <= killed_at, "last seen before the kill");
}

/// The id of the process `pid` that logged its start in `store`.
fn started_as(store: &dyn breakglass::store::Store, pid: u32) -> String {
    logged(store, "start")
        .into_iter()
        .find_map(|e| match e {
            breakglass::audit::Event::Start { replica, .. }
                if replica.split(':').nth(1) == Some(pid.to_string().as_str()) =>
            {
                Some(replica)
            }
            _ => None,
        })
        .expect("the process's start")
}

/// The processes `store`'s log has as gone (`kind` "stop": those with `lost`, when each was
/// last seen) or as running again ("resume": since when), each with that time, oldest first.
fn gone_or_resumed(store: &dyn breakglass::store::Store, kind: &str) -> Vec<(String, u64)> {
    logged(store, kind)
        .into_iter()
        .filter_map(|e| match e {
            breakglass::audit::Event::Stop {
                replica,
                lost: Some(seen),
            } => Some((replica, seen)),
            breakglass::audit::Event::Resume { replica, since } => Some((replica, since)),
            _ => None,
        })
        .collect()
}

/// A replica paused (a frozen VM) past three leases is logged as gone by the other (a `stop`
/// with `lost`); once it runs again, its next renewal writes its row back with a `resume`
/// (when it last said it ran before), once, and it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_three_leases_is_logged_as_gone_then_as_resumed() {
    let c = Cluster::start(2).await;
    let store = breakglass::store::RedisStore::open(&c.redis.url(), "breakglass:").unwrap();
    let pid = c.replicas[1].child.as_ref().unwrap().id().unwrap();
    let paused = started_as(&store, pid);
    let signal = |signal| {
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal)
            .unwrap()
    };
    signal(rustix::process::Signal::STOP);
    let paused_at = breakglass::clock::now_ms();
    let ends = || gone_or_resumed(&store, "stop");
    // three leases of 1 s unchanged, read by the other
    let lost = eventually("its end logged by the other", SECS, async || {
        let lost = ends();
        (!lost.is_empty()).then_some(lost)
    })
    .await;
    signal(rustix::process::Signal::CONT);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, paused);
    assert!(lost[0].1 <= paused_at, "last seen before the pause");
    let resumes = || gone_or_resumed(&store, "resume");
    let resumed = eventually("its resume", SECS, async || {
        let r = resumes();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        resumed,
        [(paused.clone(), lost[0].1)],
        "since it was last seen"
    );
    c.ready(1).await;
    // once: renewed since as any other, not logged gone again
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(resumes().len(), 1);
    assert_eq!(ends().len(), 1);
    assert!(breakglass::store::Store::replicas(&store)
        .unwrap()
        .iter()
        .any(|r| r.id == paused));
}

/// Replicas on Redis: while this replica's follower applies the block that mines an access's
/// chain record (its check of the record on chain held on its way back), another replica's
/// submitter signs that operation again with a new nonce, as it does when the node says the
/// nonce is used. The follower's write is refused and made again over the operation as it is
/// now: the new transaction stays, to be broadcast, and the block is applied. Before, the
/// follower wrote the old transaction back over it as confirmed, and the new nonce was never
/// broadcast (every later transaction of the service waiting behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_applied_while_another_replica_signs_an_operation_again_keeps_the_new_one() {
    use breakglass::store::{Batch, Submission, SubmissionState};
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let url = redis.url();
    let mut proxied = None;
    let env = setup(|s| {
        s.data.redis_url = Some(url);
        proxied = Some(HoldingProxy::in_front_of_node(s));
    })
    .await;
    let proxy = proxied.unwrap();
    let nurse = provider(&env.demo, "nurse");
    let key = nurse["private_key"].as_str().unwrap();
    let (status, g) = post(
        &env.app,
        &signed(key, patient(&env.demo, true), &["allergies"], 1, now()),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    let store = &env.app.store;
    let id = store.access_ids().unwrap()[0];
    let op = format!("record:{id}");
    let read = eventually("its chain record sent", SECS, async || {
        store.submission(&op).unwrap().filter(
            |s| matches!(&s.state, SubmissionState::Sent { broadcasts, .. } if *broadcasts > 0),
        )
    })
    .await;
    // the follower's check of the record on chain, once the block mining it is pushed
    let needle = read.args[0].trim_start_matches("0x").to_string();
    let (told, done) = proxy.hold(needle);
    let mined = env.devnet.mine().await;
    tokio::time::timeout(Duration::from_secs(30), told)
        .await
        .expect("the follower checked the record on chain")
        .unwrap();
    // meanwhile another replica's submitter signs it again
    let again = Submission {
        state: SubmissionState::Sent {
            txid: "ee".repeat(32),
            nonce: 9_999,
            raw: "00".into(),
            sent_at_height: 0,
            broadcasts: 1,
        },
        ..read.clone()
    };
    breakglass::store::apply_async(
        store,
        Batch {
            submissions: vec![again.clone()],
            ..Batch::default()
        },
    )
    .await
    .unwrap();
    done.send(()).unwrap();
    let tip = mined["tip"].as_u64().unwrap();
    eventually("the block applied", SECS, async || {
        (env.app.status.applied() >= tip).then_some(())
    })
    .await;
    let now = store.submission(&op).unwrap().unwrap();
    assert!(
        matches!(&now.state, SubmissionState::Sent { txid, nonce: 9_999, .. } if *txid == "ee".repeat(32)),
        "the new transaction stays: {now:?}"
    );
    proxy.server.stop(false).await;
}

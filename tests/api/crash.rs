//! Crash safety: the service is killed with SIGKILL right after each grant, twenty times
//! over; every granted access still reaches the chain, exactly once.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use breakglass::stacks::Value;
use serde_json::Value as Json;

/// A request from `key` for the patient's allergies, signed by @stacks/transactions.
/// A grant's access id and token (which shows the whole access, notice included).
fn granted_access(answer: &Json) -> (String, String) {
    (
        answer["access_id"].as_str().unwrap().to_string(),
        answer["access_token"].as_str().unwrap().to_string(),
    )
}

fn allergies(key: &str, patient: &str, nonce: u64) -> String {
    signed(key, patient, &["allergies"], nonce, now())
}

/// The service's settings that send notices of allergies at once, to the SMTP server on
/// `port`, looked for every 50 ms.
fn notices_by_smtp(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("BREAKGLASS_NOTIFY__TRANSPORT", "smtp".to_string()),
        ("BREAKGLASS_NOTIFY__SMTP__PORT", port.to_string()),
        (
            "BREAKGLASS_NOTIFY__IMMEDIATE_DATA_TYPES",
            "[\"allergies\"]".to_string(),
        ),
        ("BREAKGLASS_NOTIFY__POLL_INTERVAL_MS", "50".to_string()),
    ]
}

/// The devnet (mining every half second, while the service keeps dying) with demo data, and
/// the service binary run as its own process, as operators run it, so that SIGKILL is real.
struct Harness {
    dir: tempfile::TempDir,
    devnet: Devnet,
    demo: Json,
    api: u16,
    observer: u16,
    http: reqwest::Client,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (devnet, demo) = demo_devnet(dir.path(), "0.5").await;
        let (api, observer) = (free_port(), free_port());
        devnet
            .observe(format!("127.0.0.1:{observer}").parse().unwrap())
            .await;
        Harness {
            dir,
            devnet,
            demo,
            api,
            observer,
            http: reqwest::Client::new(),
        }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("service")
    }

    /// Starts the service with `env` beside the common settings.
    fn spawn(&self, env: &[(&str, String)]) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_breakglass"))
            .arg("serve")
            .env("BREAKGLASS_CHAIN__NODE_URL", &self.devnet.rpc)
            .env(
                "BREAKGLASS_SERVER__LISTEN",
                format!("127.0.0.1:{}", self.api),
            )
            .env(
                "BREAKGLASS_FOLLOWER__LISTEN",
                format!("127.0.0.1:{}", self.observer),
            )
            .env("BREAKGLASS_FOLLOWER__POLL_INTERVAL_MS", "200")
            // this devnet mines every half second, twenty times the default block time, and
            // its observer queue backs off while the service is down: a few blocks of lag
            // after each restart are a second or two here, not the minute they would be
            .env("BREAKGLASS_FOLLOWER__MAX_LAG_BLOCKS", "20")
            .env("BREAKGLASS_SUBMITTER__INTERVAL_MS", "50")
            .env("BREAKGLASS_DATA__DIR", self.data())
            .env(
                "BREAKGLASS_SERVICE_KEY",
                self.demo["responder"]["private_key"].as_str().unwrap(),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn ready(&self) {
        let readyz = format!("http://127.0.0.1:{}/readyz", self.api);
        eventually("service ready", Duration::from_secs(30), async || {
            self.http
                .get(&readyz)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await
    }

    /// Posts a request, sent again as a tablet would while the answer is "the view of the
    /// chain is stale, try again" (this devnet mines every half second: a restarted service
    /// on a loaded machine may trail it by a block more than the limit for a moment; such a
    /// refusal records nothing and gives the nonce back).
    async fn post(&self, body: String) -> (u16, Json) {
        post_until_fresh(&self.http, &format!("127.0.0.1:{}", self.api), &body, 5).await
    }

    /// The access as the holder of its token sees it (with its notice).
    async fn access(&self, (id, token): &(String, String)) -> Option<Json> {
        self.http
            .get(format!("http://127.0.0.1:{}/v1/accesses/{id}", self.api))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_reaches_the_chain_once_across_sigkills() {
    let h = Harness::start().await;
    let (devnet, demo) = (&h.devnet, &h.demo);
    let providers: Vec<&str> = ["physician", "nurse", "paramedic", "pharmacist"]
        .iter()
        .map(|r| provider(demo, r)["private_key"].as_str().unwrap())
        .collect();
    let pid = patient(demo, true);

    let mut granted = Vec::new();
    let mut previous: Option<String> = None;
    let mut killed = Vec::new();
    for i in 0..20u64 {
        let mut service = h.spawn(&[]);
        killed.push(service.id().unwrap());
        h.ready().await;
        // the request granted just before the crash is still a replay after it
        if let Some(body) = previous.take() {
            let (status, answer) = h.post(body).await;
            assert_eq!(status, 401, "replay after crash {i}");
            assert_eq!(answer["code"], "replayed-request");
        }
        let body = allergies(providers[i as usize % providers.len()], pid, 1000 + i);
        previous = Some(body.clone());
        let (status, answer) = h.post(body).await;
        assert_eq!(status, 201, "grant {i}: {answer}");
        granted.push(granted_access(&answer));
        // killed the moment it answered: no shutdown, no flush beyond what it did before
        service.start_kill().unwrap();
        service.wait().await.unwrap();
    }

    let mut service = h.spawn(&[]);
    h.ready().await;
    // it runs without transparent huge pages (their faults stall requests: main.rs)
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", service.id().unwrap())).unwrap();
    assert!(
        status.lines().any(|l| l == "THP_enabled:\t0"),
        "transparent huge pages still on: {status}"
    );
    for access in &granted {
        eventually(&access.0, Duration::from_secs(60), async || {
            let s = h.access(access).await?;
            (s["chain"]["state"] == "confirmed").then_some(())
        })
        .await;
    }
    let rpc = breakglass::chain::rpc::NodeClient::new(&devnet.rpc, Duration::from_secs(5), 3);
    let contract = format!("{}.access-control", deployer());
    assert_on_chain(&devnet.rpc, granted.iter().map(|(id, _)| id)).await;
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

    // each process killed has its end in the log, once, logged by the next at its start (a
    // stop with `lost`), each after that process's start; the last one stops as asked
    let pid = service.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    service.wait().await.unwrap();
    let store = breakglass::store::RedbStore::open(&h.data().join("breakglass.redb")).unwrap();
    let lives: Vec<(String, &str)> = audit_log(&store)
        .iter()
        .filter_map(|e| match e.parsed().unwrap() {
            breakglass::audit::Event::Start { replica, .. } => Some((replica, "start")),
            breakglass::audit::Event::Stop {
                replica,
                lost: Some(_),
            } => Some((replica, "lost")),
            breakglass::audit::Event::Stop {
                replica,
                lost: None,
            } => Some((replica, "stop")),
            _ => None,
        })
        .collect();
    let pid_of = |replica: &str| replica.split(':').nth(1).unwrap().parse::<u32>().unwrap();
    let mut expected = Vec::new();
    for (i, pid) in killed.iter().enumerate() {
        expected.push((*pid, "start"));
        if i > 0 {
            expected.push((killed[i - 1], "lost"));
        }
    }
    let last: u32 = pid.parse().unwrap();
    expected.extend([(last, "start"), (killed[19], "lost"), (last, "stop")]);
    let found: Vec<(u32, &str)> = lives.iter().map(|(r, what)| (pid_of(r), *what)).collect();
    assert_eq!(found, expected);
}

/// The service killed with SIGKILL again and again while it sends the patients' notices
/// through a slow SMTP server (each reply held 400 ms after the message is stored, so kills
/// land between "delivered" and "marked sent"): every access is notified, and every copy of a
/// notice is the same message, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notice_is_delivered_and_never_as_two_different_messages_across_sigkills() {
    let h = Harness::start().await;
    let (dir, demo) = (&h.dir, &h.demo);
    let smtp = free_port();
    let mail = dir.path().join("mail");
    let _smtp = smtp_server(smtp, &mail, 400).await;
    let data = h.data();
    let pid = patient(demo, true).to_string();

    // the directory, imported with the CLI before the service starts
    import_patient_contact(&pid, dir.path(), |c| {
        c.env("BREAKGLASS_DATA__DIR", &data);
    });

    let mut env = notices_by_smtp(smtp);
    env.extend([
        ("BREAKGLASS_NOTIFY__RETRY_INITIAL_SECS", "1".to_string()),
        ("BREAKGLASS_NOTIFY__RETRY_MAX_SECS", "1".to_string()),
    ]);
    let notice_state = async |id: &(String, String)| -> Option<String> {
        let s = h.access(id).await?;
        s["notice"]["state"].as_str().map(str::to_string)
    };

    let mut service = h.spawn(&env);
    h.ready().await;
    let providers: Vec<&str> = ["physician", "nurse", "paramedic", "pharmacist"]
        .iter()
        .map(|r| provider(demo, r)["private_key"].as_str().unwrap())
        .collect();
    let mut granted = Vec::new();
    for i in 0..12u64 {
        let body = allergies(providers[i as usize % providers.len()], &pid, 5000 + i);
        let (status, answer) = h.post(body).await;
        assert_eq!(status, 201, "grant {i}: {answer}");
        granted.push(granted_access(&answer));
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
        service = h.spawn(&env);
        h.ready().await;
    }
    assert!(
        killed_mid_send >= 3,
        "kills landed while sending: {killed_mid_send}"
    );

    for access in &granted {
        eventually(
            &format!("notice of {} sent", access.0),
            Duration::from_secs(90),
            async || (notice_state(access).await.as_deref() == Some("sent")).then_some(()),
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
    for (id, _) in &granted {
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

/// A notice goes to the patient and to their delegate, each alone. The service is killed
/// while the delegate's send hangs (the SMTP server never answers its first `RCPT`): the
/// patient's delivery was recorded before it, so after the restart the notice goes to the
/// delegate only. Before, what each recipient had was recorded after the last send, and the
/// patient was sent it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_notices_recipients_does_not_send_it_again_to_the_first() {
    let h = Harness::start().await;
    let smtp = free_port();
    let mail = h.dir.path().join("mail");
    let _smtp = smtp_server(smtp, &mail, 0).await;
    let data = h.data();
    let pid = patient(&h.demo, true).to_string();
    let delegate = "hold-guardian@example.org";
    import_patient_contacts(&pid, Some(delegate), h.dir.path(), |c| {
        c.env("BREAKGLASS_DATA__DIR", &data);
    });
    let env = notices_by_smtp(smtp);
    let mut service = h.spawn(&env);
    h.ready().await;
    let key = provider(&h.demo, "physician")["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, answer) = h.post(allergies(&key, &pid, 7001)).await;
    assert_eq!(status, 201, "{answer}");
    let access = granted_access(&answer);

    // the patient has it, and the delegate's send hangs: killed there
    let held = mail.join(format!("held-{delegate}"));
    eventually(
        "the delegate's send held",
        Duration::from_secs(60),
        async || held.exists().then_some(()),
    )
    .await;
    let to = |got: &[(Json, Vec<u8>)], address: &str| {
        got.iter()
            .filter(|(envelope, _)| envelope["to"] == serde_json::json!([address]))
            .count()
    };
    assert_eq!(to(&received(&mail), "patient@example.org"), 1);
    service.start_kill().unwrap();
    service.wait().await.unwrap();

    let _service = h.spawn(&env);
    h.ready().await;
    eventually("the notice sent", Duration::from_secs(60), async || {
        let a = h.access(&access).await?;
        (a["notice"]["state"] == "sent").then_some(())
    })
    .await;
    let got = received(&mail);
    assert_eq!(to(&got, delegate), 1, "the delegate has it once");
    assert_eq!(
        to(&got, "patient@example.org"),
        1,
        "the patient has it once, not again after the restart"
    );
    assert_eq!(got.len(), 2);
    // each copy names its recipient alone: the patient and their delegate do not see each
    // other's address
    for (envelope, raw) in &got {
        assert_eq!(
            header(raw, "To"),
            envelope["to"][0].as_str().unwrap(),
            "{envelope}"
        );
    }
}

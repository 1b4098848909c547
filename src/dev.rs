//! `breakglass dev`: one command for a working system on this machine. It starts the devnet
//! (the contracts on a local stacks-node stand-in) with demo data, runs the service against
//! it with the demo responder's key (authorized on chain), and says what to try next.
//! `--replicas N` runs N service processes instead (this one and N-1 `breakglass serve`
//! children, on consecutive ports) sharing a local `redis-server` started here with its
//! append-only file under the data root: the production shape, on one machine.
//!
//! What it starts runs in process groups of its own, so that Ctrl-C in the terminal reaches
//! this process alone, which stops them in order: the replicas (each logs its stop while the
//! store is there), itself, the devnet, and Redis last. Each is also told to stop when this
//! process dies (`PR_SET_PDEATHSIG`; the devnet sees its stdin close too): none outlives it,
//! and no second Redis ever writes the append-only file an orphaned first one still holds.
//!
//! It must not: run in production (dev keys, demo data, a local devnet).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::configuration::Settings;
use crate::keys::{parse_key, KeySource, ServiceKeys};
use crate::startup::{wait_for_signal, Application};

#[derive(Debug, Deserialize)]
struct Ready {
    rpc: String,
    demo_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Demo {
    responder: Identity,
    providers: Vec<Provider>,
    patients: Vec<Patient>,
}

#[derive(Debug, Deserialize)]
struct Identity {
    principal: String,
    private_key: String,
}

#[derive(Debug, Deserialize)]
struct Provider {
    role: String,
    principal: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    organization: Option<String>,
}

/// FHIR bundles for the demo's directories: each demo patient reachable at an example.invalid
/// address (their notices land in `data.dir/outbox`), each clinician as the devnet registered
/// them (so their entries verify against the chain).
fn demo_directories(demo: &Demo, settings: &Settings) -> (serde_json::Value, serde_json::Value) {
    use serde_json::json;
    let patients: Vec<_> = demo
        .patients
        .iter()
        .map(|p| json!({ "resource": { "resourceType": "Patient",
            "identifier": [{ "system": settings.directory.patient_id_system, "value": p.patient_id }],
            "telecom": [{ "system": "email", "value": format!("patient-{}@example.invalid", p.patient_id.get(..8).unwrap_or(&p.patient_id)) }] } }))
        .collect();
    let mut practitioners = Vec::new();
    for (i, p) in demo.providers.iter().enumerate() {
        let id = format!("demo-{i}");
        practitioners.push(json!({ "resource": { "resourceType": "Practitioner", "id": id,
            "identifier": [{ "system": settings.directory.provider_principal_system, "value": p.principal }],
            "name": [{ "text": p.display_name }] } }));
        let mut role = json!({ "resourceType": "PractitionerRole",
            "practitioner": { "reference": format!("Practitioner/{id}") },
            "code": [{ "coding": [{ "code": p.role }] }] });
        if let Some(d) = &p.department {
            role["specialty"] = json!([{ "text": d }]);
        }
        if let Some(o) = &p.organization {
            role["organization"] = json!({ "display": o });
        }
        practitioners.push(json!({ "resource": role }));
    }
    (
        json!({ "resourceType": "Bundle", "type": "collection", "entry": patients }),
        json!({ "resourceType": "Bundle", "type": "collection", "entry": practitioners }),
    )
}

#[derive(Debug, Deserialize)]
struct Patient {
    patient_id: String,
    emergency_access: bool,
}

pub struct DevOptions {
    pub contracts_dir: PathBuf,
    pub devnet_port: u16,
    pub reset: bool,
    /// Service processes; more than one share a local redis-server.
    pub replicas: u16,
    /// The configuration file this process read (`--config`), which the other replicas read
    /// too.
    pub config: Option<PathBuf>,
}

/// A free TCP port on the loopback interface (for the local redis-server).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `redis-server` on `port` of the loopback interface, persisting to `dir` as production
/// should: an append-only file synced on every write, no snapshots.
pub fn redis_server(port: u16, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .stdout(Stdio::null());
    cmd
}

/// A `redis-server` of a unit test's own (`start_redis`) in a temporary directory, which it
/// also gives for the test's other files; the test fails when the server cannot start.
#[cfg(test)]
pub(crate) struct TestRedis {
    // killed before its directory goes
    _server: Child,
    pub dir: tempfile::TempDir,
    pub url: String,
}

#[cfg(test)]
impl TestRedis {
    /// Sends the server signal `sig` (`STOP`: it stops answering, as a hung server; `CONT`).
    pub(crate) fn signal(&self, sig: &str) {
        let pid = self._server.id().expect("the server runs");
        let sent = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{sig} {pid}");
    }

    /// A plain connection to the server, for a test to write what the store would not.
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// An access as a unit test needs one: id `n` repeated, for `data_types`, granted at 1,000
/// for ten minutes.
#[cfg(test)]
pub(crate) fn test_access(
    n: u8,
    data_types: Vec<crate::domain::DataType>,
) -> crate::store::AccessRecord {
    crate::store::AccessRecord {
        id: crate::domain::AccessId([n; 32]),
        provider: "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap(),
        role: crate::domain::Role::Nurse,
        patient: crate::domain::PatientId([7; 32]),
        data_types,
        reason_sealed: String::new(),
        reason_hash: hex::encode([n; 32]),
        device: None,
        nonce: u64::from(n),
        issued_at: 1_000,
        granted_at: 1_000,
        expires_at: 1_600,
        window_minutes: 10,
        window_blocks: 60,
        rules: vec![],
        message_hash: String::new(),
        signature: String::new(),
        on_call: None,
        degraded: false,
        chain_lag_blocks: 0,
        patient_registered: Some(true),
    }
}

#[cfg(test)]
pub(crate) async fn test_redis() -> TestRedis {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start_redis(&dir.path().join("redis"))
        .await
        .expect("redis-server must be installed (scripts/test installs the Debian package)");
    TestRedis {
        _server: server,
        dir,
        url,
    }
}

/// A file `start_redis` writes in its directory, which it takes only empty or made by `dev`:
/// `dev --reset` empties only a directory that has it (or, from before the mark, the log and
/// the append-only files `dev` gives its Redis), never one `dev` did not make (a `data.dir`
/// of `/var/lib/breakglass` puts dev's Redis at `/var/lib/redis`).
const DEV_REDIS_MARK: &str = "breakglass-dev-redis";

/// Whether `dir` is a Redis directory `dev` made (`DEV_REDIS_MARK`).
fn made_by_dev(dir: &Path) -> bool {
    dir.join(DEV_REDIS_MARK).is_file()
        || (dir.join("redis.log").is_file() && dir.join("appendonlydir").is_dir())
}

/// Starts `redis-server` on a free port, persisting to `dir` as production should (an
/// append-only file synced on every write), and waits until it answers; killed when dropped.
pub(crate) async fn start_redis(dir: &Path) -> anyhow::Result<(Child, String)> {
    // never another server's files: a directory that holds any, and not dev's, is refused
    let foreign = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) && !made_by_dev(dir);
    anyhow::ensure!(
        !foreign,
        "{} holds files `breakglass dev` did not make (another Redis's?): give dev a data directory of its own (BREAKGLASS_DATA__DIR), or remove that one if it is an old dev run's",
        dir.display()
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(DEV_REDIS_MARK),
        "made by `breakglass dev --replicas`: `breakglass dev --reset` empties this directory\n",
    )?;
    let port = free_port()?;
    let mut cmd = Command::from(redis_server(port, dir));
    cmd.arg("--logfile").arg(dir.join("redis.log"));
    on_its_own(&mut cmd);
    let child = cmd
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (on Debian: apt-get install redis-server)")?;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..100 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                return Ok((child, url));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("redis-server did not answer on {url}")
}

/// `cmd` in a process group of its own (a terminal's Ctrl-C reaches this process, which stops
/// it in its turn), sent SIGTERM when this process dies.
/// (Linux only: elsewhere, with no death signal, a child in a group of its own would outlive
/// a `dev` killed before it stops them, so children stay in the terminal's group.) Called from
/// `run`'s own thread (the death signal follows the thread that spawned, which lives as long as
/// `dev`), never from a blocking task's.
fn on_its_own(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        cmd.process_group(0);
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes two system calls (prctl, getppid) and
        // builds an error from a number, allocating nothing and taking no lock.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))?;
                // this process died before the death signal was set: it will never come
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
}

/// `addr` with its port moved up by `by`.
fn shifted(addr: std::net::SocketAddr, by: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip(), addr.port().saturating_add(by))
}

/// Set in the environment of the replicas `breakglass dev --replicas` starts.
pub const DEV_REPLICA_ENV: &str = "BREAKGLASS_DEV_REPLICA";

/// Replica `i` (from 1) as a child `breakglass serve`: the settings that differ from this
/// process's go by environment (the rest comes from `config`, this process's configuration
/// file, and the environment, inherited).
fn spawn_replica(
    i: u16,
    settings: &Settings,
    responder_key: &str,
    config: Option<&Path>,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(file) = config {
        cmd.env("BREAKGLASS_CONFIG", absolute(file)?);
    }
    // (a replica of a development run: its outbox is meant, not a deployment's mistake)
    cmd.env(DEV_REPLICA_ENV, "1");
    cmd.arg("serve")
        .env(
            "BREAKGLASS_SERVER__LISTEN",
            shifted(settings.server.listen, i).to_string(),
        )
        .env(
            "BREAKGLASS_FOLLOWER__LISTEN",
            shifted(settings.follower.listen, i).to_string(),
        )
        .env(
            "BREAKGLASS_CHAIN__NODE_URL",
            settings.chain.node_url.as_str(),
        )
        .env("BREAKGLASS_DATA__DIR", &settings.data.dir)
        .env("BREAKGLASS_SERVICE_KEY", responder_key)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    on_its_own(&mut cmd);
    if let Some(url) = &settings.data.redis_url {
        cmd.env("BREAKGLASS_DATA__REDIS_URL", url);
    }
    if let Some(file) = &settings.follower.path_secret_file {
        cmd.env("BREAKGLASS_FOLLOWER__PATH_SECRET_FILE", file);
    }
    cmd.spawn().context("starting a replica")
}

/// Starts the devnet process and waits for its ready line.
async fn start_devnet(opts: &DevOptions, settings: &Settings) -> anyhow::Result<(Child, Ready)> {
    let dir = &opts.contracts_dir;
    if !dir.join("Clarinet.toml").exists() {
        anyhow::bail!(
            "no Clarinet project at {} (run from the repository root, or pass --contracts-dir)",
            dir.display()
        );
    }
    if !dir.join("node_modules").exists() {
        eprintln!("breakglass dev: installing the devnet's node modules (npm ci)...");
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .await
            .context("running npm ci")?;
        anyhow::ensure!(ok.success(), "npm ci failed");
    }
    let data_root = absolute(settings.data.dir.parent().unwrap_or(Path::new(".")))?;
    let observer = match &settings.follower.path_secret_file {
        Some(file) => format!(
            "http://{}/{}",
            settings.follower.listen,
            crate::configuration::read_path_secret(file)?
        ),
        None => format!("http://{}", settings.follower.listen),
    };
    let mut args = vec![
        "--import".to_string(),
        "tsx".into(),
        "devnet/main.ts".into(),
        "--seed-demo".into(),
        "--port".into(),
        opts.devnet_port.to_string(),
        "--observer".into(),
        observer,
        "--data-dir".into(),
        data_root.join("devnet").display().to_string(),
        // if this process dies without stopping it, the devnet sees its stdin close and stops
        "--exit-with-stdin".into(),
    ];
    if opts.reset {
        args.push("--reset".into());
    }
    let mut cmd = Command::new("node");
    cmd.args(&args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    on_its_own(&mut cmd);
    let mut child = cmd
        .spawn()
        .context("starting the devnet (is Node.js 20+ installed?)")?;
    let stdout = child.stdout.take().context("devnet stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if line.starts_with('{') && line.contains("\"ready\"") {
            let ready: Ready = serde_json::from_str(&line)?;
            // keep draining stdout so the devnet never blocks on a full pipe
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, ready));
        }
    }
    anyhow::bail!("the devnet exited before it was ready")
}

/// Asks a child to stop (SIGTERM: the service drains its requests; redis-server syncs its
/// file), and kills it if it has not after ten seconds.
async fn stop_child(child: &mut Child) {
    #[cfg(target_os = "linux")]
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The observer's secret path for dev, generated at first run into `data.dir/observer-path`
/// (0600): the devnet posts its blocks there, so other local processes cannot.
fn dev_path_secret(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let file = data_dir.join("observer-path");
    if !file.exists() {
        std::fs::create_dir_all(data_dir)?;
        let secret: [u8; 16] = secp256k1::rand::random();
        crate::private_files::write_private_bytes(&file, hex::encode(secret).as_bytes())?;
    }
    Ok(file)
}

pub async fn run(mut settings: Settings, opts: DevOptions) -> anyhow::Result<()> {
    if settings.follower.path_secret_file.is_none() {
        settings.follower.path_secret_file = Some(dev_path_secret(&settings.data.dir)?);
    }
    let data_root = absolute(settings.data.dir.parent().unwrap_or(Path::new(".")))?;
    let redis_dir = data_root.join("redis");
    if opts.reset && made_by_dev(&redis_dir) {
        // a new chain: the shared store's tip and cache are the old chain's, above the new
        // one, which replicas would wait for (each alone on redb catches up to it instead);
        // emptied with or without --replicas now, for a later run with them
        std::fs::remove_dir_all(&redis_dir)
            .context("emptying the replicas' Redis for a new chain")?;
    }
    let redis = if opts.replicas > 1 {
        let (child, url) = start_redis(&redis_dir).await?;
        settings.data.redis_url = Some(url);
        Some(child)
    } else {
        None
    };
    let (mut devnet, ready) = start_devnet(&opts, &settings).await?;
    // held open for as long as this process lives (Child::wait would close it)
    let _devnet_stdin = devnet.stdin.take();
    let demo_file = ready
        .demo_file
        .context("the devnet wrote no demo identities")?;
    let demo: Demo = serde_json::from_str(&std::fs::read_to_string(&demo_file)?)?;
    settings.chain.node_url = ready.rpc.parse()?;
    // in dev the service acts as the demo responder, which the devnet authorized on chain
    let keys = ServiceKeys {
        stacks: parse_key(&demo.responder.private_key)?,
        source: KeySource::File,
    };
    let (patients, practitioners) = demo_directories(&demo, &settings);
    let data_dir = settings.data.dir.clone();
    let observer_path = settings
        .follower
        .path_secret_file
        .clone()
        .unwrap_or_default();
    let (patient_system, provider_system) = (
        settings.directory.patient_id_system.clone(),
        settings.directory.provider_principal_system.clone(),
    );
    let replica_settings = settings.clone();
    let app = Application::build(settings, keys).await?;
    anyhow::ensure!(
        app.service_principal == demo.responder.principal,
        "the service key does not match the demo responder"
    );
    // the demo directories, so that notices go out (as files) and name the clinicians
    let keyring = crate::seal::Keyring::load_or_generate(&data_dir, None)?;
    crate::directory::import(
        &app.store,
        &keyring,
        &patient_system,
        patients.to_string().as_bytes(),
        "dev:demo",
    )
    .await?;
    crate::directory::import_providers(
        &app.store,
        &provider_system,
        practitioners.to_string().as_bytes(),
        "dev:demo",
    )
    .await?;

    // a synthetic emergency summary per demo patient, its hash recorded on chain by the
    // service (the demo responder is also a data custodian)
    for p in &demo.patients {
        let id: crate::domain::PatientId = p.patient_id.parse().map_err(anyhow::Error::msg)?;
        let body = crate::demo::summary(&id, &patient_system).to_string();
        app.vault
            .import(body.as_bytes(), "dev:demo")
            .await
            .map_err(|r| anyhow::anyhow!("the demo summary: {}", r.detail))?;
    }

    // the other replicas, each observed by the devnet
    let mut replicas = Vec::new();
    for i in 1..opts.replicas {
        replicas.push(spawn_replica(
            i,
            &replica_settings,
            &demo.responder.private_key,
            opts.config.as_deref(),
        )?);
        let observer = format!(
            "http://{}/{}",
            shifted(app.observer_addr, i),
            crate::configuration::read_path_secret(&observer_path)?
        );
        reqwest::Client::new()
            .post(format!("{}/devnet/observers", ready.rpc))
            .json(&serde_json::json!({ "url": observer }))
            .send()
            .await?
            .error_for_status()?;
    }

    let api = format!("http://{}", app.api_addr);
    println!();
    println!("breakglass dev is running");
    println!("  service API       {api}   (try: curl {api}/readyz)");
    println!(
        "  stacks node RPC   {}   (the devnet; try: curl {}/v2/info)",
        ready.rpc, ready.rpc
    );
    println!(
        "  event observer    http://{}/<the secret path in {}>",
        app.observer_addr,
        observer_path.display()
    );
    println!(
        "  responder         {} (the service's key)",
        demo.responder.principal
    );
    println!(
        "  clinician tablet  {api}/tablet   (import a demo clinician's private_key, then break the glass)"
    );
    println!(
        "  reviewer pages    {api}/review   (sign in with the demo reviewer's private_key from the demo identities file)"
    );
    println!("  demo identities   {demo_file}");
    for p in &demo.providers {
        println!("    {:<11} {}", p.role, p.principal);
    }
    for p in &demo.patients {
        let prefs = if p.emergency_access {
            "allows emergency access"
        } else {
            "opted out of emergency access"
        };
        println!("    patient     {} ({prefs})", p.patient_id);
    }
    println!(
        "  patient notices   {} (one .eml file per notice, when its window closes)",
        data_dir.join("outbox").display()
    );
    if let Some(url) = &replica_settings.data.redis_url {
        println!(
            "  replicas          {} service processes sharing {url}:",
            opts.replicas
        );
        println!("    {api}   (this process)");
        for (i, child) in replicas.iter().enumerate() {
            let at = shifted(app.api_addr, i as u16 + 1);
            println!("    http://{at}   (pid {})", child.id().unwrap_or(0));
        }
        println!(
            "    Redis's log       {}",
            data_root.join("redis/redis.log").display()
        );
    }
    println!("Ctrl-C stops everything it started; the chain and the service's store are kept under .data/.");
    println!();

    // (what it started is in process groups of their own: Ctrl-C reaches this process alone)
    let devnet_exited = tokio::select! {
        r = wait_for_signal() => { r?; None }
        status = devnet.wait() => Some(status),
    };
    // the replicas first, each logging its stop in the store they share, then this one
    for mut r in replicas {
        stop_child(&mut r).await;
    }
    app.stop().await;
    if devnet_exited.is_none() {
        stop_child(&mut devnet).await;
    }
    if let Some(mut r) = redis {
        stop_child(&mut r).await;
    }
    match devnet_exited {
        Some(status) => anyhow::bail!("the devnet exited ({})", status?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dev --reset` empties a Redis directory `dev` made, and no other: one that holds
    /// another server's files is neither started on nor marked, and so left alone.
    #[tokio::test]
    async fn only_a_redis_directory_dev_made_is_its_to_empty() {
        let root = tempfile::tempdir().unwrap();
        let ours = root.path().join("ours");
        let (mut redis, _) = start_redis(&ours).await.unwrap();
        redis.kill().await.unwrap();
        // by its mark alone (not by what the server wrote beside it)
        for file in std::fs::read_dir(&ours).unwrap() {
            let file = file.unwrap().path();
            if !file.ends_with(DEV_REDIS_MARK) {
                std::fs::remove_dir_all(&file)
                    .or_else(|_| std::fs::remove_file(&file))
                    .unwrap();
            }
        }
        assert!(made_by_dev(&ours));
        // started again on it: its own
        let (mut redis, _) = start_redis(&ours).await.unwrap();
        redis.kill().await.unwrap();
        // an empty directory is taken (and marked)
        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let (mut redis, _) = start_redis(&empty).await.unwrap();
        redis.kill().await.unwrap();
        assert!(made_by_dev(&empty));
        // another server's: refused, not marked
        let theirs = root.path().join("theirs");
        std::fs::create_dir_all(theirs.join("appendonlydir")).unwrap();
        let refused = start_redis(&theirs).await.expect_err("not dev's");
        assert!(refused.to_string().contains("did not make"), "{refused}");
        assert!(!made_by_dev(&theirs), "another server's directory");
        assert!(!made_by_dev(&root.path().join("none")));
    }
}

//! `breakglass`: the command line. `serve` runs the service, `dev` runs it with a local devnet
//! and demo data, `stacks ...` are operator tools for what is on the wire, `keys show` names
//! the service's Stacks principal (to authorize it as a responder on chain), `keys rotate-data`
//! and `keys publish` rotate keys (with replicas on Redis, recording them for the replicas).
//!
//! It must not: hold logic (each command calls into the library).

use std::path::PathBuf;
use std::process::ExitCode;

use breakglass::configuration::Settings;
use breakglass::keys::ServiceKeys;
use breakglass::policy::Policies;
use breakglass::{demo, dev, startup, telemetry, tools};
use clap::{Parser, Subcommand};

/// mimalloc: the service allocates many small, short-lived buffers per request from several
/// threads, which glibc's allocator serves noticeably slower (it showed as ~14% of the
/// break-glass path's CPU in profiles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "breakglass",
    version = breakglass::startup::VERSION,
    about = "Emergency-access responder for a Stacks-based medical record system"
)]
struct Cli {
    /// A TOML configuration file (BREAKGLASS_* environment variables override it).
    #[arg(long, global = true, env = "BREAKGLASS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve,
    /// Run the service against a local devnet with demo clinicians, patients and a responder.
    Dev {
        /// The Clarinet project (with the devnet) to run.
        #[arg(long, default_value = "contracts")]
        contracts_dir: PathBuf,
        /// The devnet's RPC port.
        #[arg(long, default_value_t = 20443)]
        devnet_port: u16,
        /// Start a new devnet chain (with --replicas, the replicas' shared Redis starts empty
        /// too: its chain state is the old chain's).
        #[arg(long)]
        reset: bool,
        /// Run this many service processes on one local redis-server (from PATH), as
        /// replicas behind a load balancer would; 1 keeps the embedded store.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
        replicas: u16,
    },
    /// Decode Stacks wire formats; prints JSON, exits 2 on input it cannot read.
    #[command(subcommand)]
    Stacks(StacksCommand),
    /// The service's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Break-glass policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Try the running service as a demo clinician would (after `breakglass dev`).
    #[command(subcommand)]
    Demo(DemoCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Patients' emergency summaries (the critical-data vault).
    #[command(subcommand)]
    Summaries(SummariesCommand),
    /// The patient directory (contacts for the notices), kept sealed in the store.
    #[command(subcommand)]
    Patients(PatientsCommand),
}

#[derive(Subcommand)]
enum SummariesCommand {
    /// Import a patient's emergency summary (an IPS-style FHIR R4 Bundle) while the service is
    /// stopped (a running service takes it at POST /v1/admin/summaries): stored sealed, its hash
    /// recorded on chain by the service once it runs. Prints the patient, the hash and the
    /// operation; exits 2 with the reason for a bundle it refuses. With replicas on Redis, only
    /// with the data key they recorded.
    Import {
        /// The bundle (JSON).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole audit log (with the service stopped, or on a copy of its data
    /// directory): check every entry's hash and link, then every anchor the service put on
    /// chain. Prints the head and the latest anchor; exits 1 naming the first entry that does
    /// not match.
    Verify {
        /// The principal whose anchors to check (default: the service's own, from its key).
        #[arg(long)]
        responder: Option<String>,
    },
}

#[derive(Subcommand)]
enum PatientsCommand {
    /// Import a FHIR R4 bundle of Patient resources into the store while the service is
    /// stopped (a running service takes the same bundle at POST /v1/admin/patients). Prints
    /// how many were imported and each refused entry with its reason. With replicas on Redis,
    /// only with the data key they recorded.
    Import {
        /// The bundle (JSON).
        file: PathBuf,
    },
    /// Seal everything sealed with an older data key again with the current one (after `keys
    /// rotate-data`, or a rotation by hand recorded with `keys publish`): contacts, the
    /// accesses' reasons, stored notices, token signing keys, the generated service key; with
    /// the service stopped (with replicas on Redis, only with the data key they recorded);
    /// prints how many of each were re-sealed.
    Rekey,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Sign a break-glass request with a demo clinician's key and send it; exits 0 when granted.
    Request {
        /// physician, nurse, paramedic, pharmacist, reviewer or admin
        #[arg(long)]
        role: String,
        /// "demo" (allows emergency access), "opted-out", or a 64-hex patient id
        #[arg(long, default_value = "demo")]
        patient: String,
        /// Comma-separated data types.
        #[arg(long, value_delimiter = ',', default_value = "allergies")]
        data_types: Vec<String>,
        #[arg(long, default_value = "unresponsive on arrival, suspected anaphylaxis")]
        reason: String,
        #[arg(long, default_value = ".data/devnet/demo-identities.json")]
        demo_file: PathBuf,
        /// The service; default: server.listen from the configuration.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate the policies (a directory, else the configured or built-in ones) and print
    /// what each role may open, for how long.
    Check {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StacksCommand {
    /// A raw transaction: txid, origin, nonce, fee, chain id, contract, function, arguments.
    DecodeTx { hex: String },
    /// A consensus-serialized Clarity value, in Clarity notation.
    Cv { hex: String },
    /// Recover the signer of SIP-018 structured data.
    Sip018Verify {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        signature: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the service's Stacks principal (generating its key on first run).
    Show,
    /// Add a new data key (data.dir/keys/data-*.key, 0600): it seals from now on, the older
    /// ones still open. Then `patients rekey`, then older keys can be removed. Refused while
    /// BREAKGLASS_DATA_KEY is set (rotate it there, then `keys publish`). With replicas on
    /// Redis, only on a host with their keys; the new key is recorded as theirs.
    RotateData,
    /// With replicas on Redis: record this host's current keys (data and token signing key) as
    /// the ones every replica must run with, after a rotation made by hand (a new
    /// BREAKGLASS_DATA_KEY, a newer token key file); only on a host with their keys.
    Publish,
}

fn settings(cli: &Cli) -> Result<Settings, ExitCode> {
    Settings::load(cli.config.as_deref()).map_err(|e| {
        eprintln!("breakglass: configuration: {e}");
        ExitCode::from(2)
    })
}

type Offline = (
    std::sync::Arc<dyn breakglass::store::Store>,
    breakglass::seal::Keyring,
    tokio::runtime::Runtime,
);

/// The store, for commands that run while the service is stopped and open nothing sealed.
fn offline_store(
    s: &Settings,
) -> anyhow::Result<(
    std::sync::Arc<dyn breakglass::store::Store>,
    tokio::runtime::Runtime,
)> {
    use anyhow::Context;
    let (store, _) = s
        .data
        .open_store()
        .context("opening the store (is the service running? stop it, or use the admin API)")?;
    Ok((store, tokio::runtime::Runtime::new()?))
}

/// The store and the data keys, for commands that run while the service is stopped.
fn offline(s: &Settings) -> anyhow::Result<Offline> {
    let (store, runtime) = offline_store(s)?;
    let keyring = breakglass::seal::Keyring::load_or_generate(
        &s.data.dir,
        std::env::var(breakglass::seal::DATA_KEY_ENV)
            .ok()
            .as_deref(),
    )?;
    Ok((store, keyring, runtime))
}

/// `offline`, for a command that seals: with replicas, what it seals must open on every one (a
/// first run on a new host generates a data key of its own), so its data key must be theirs.
fn offline_sealing(s: &Settings) -> anyhow::Result<Offline> {
    let (store, keyring, runtime) = offline(s)?;
    let coordination = s.data.coordinator(s.issuance.grants_per_minute)?;
    if let Some(why) = runtime.block_on(coordination.agree_on_data_key(&keyring.ids()))? {
        anyhow::bail!("{why}");
    }
    Ok((store, keyring, runtime))
}

/// This host's keys as a replica runs with them, none generated: its data keys (with
/// `BREAKGLASS_DATA_KEY`), its token signing keys and its service key.
fn host_keys(s: &Settings) -> anyhow::Result<breakglass::coordination::ReplicaKeys> {
    let env_key = std::env::var(breakglass::seal::DATA_KEY_ENV).ok();
    anyhow::ensure!(
        env_key.is_some() || breakglass::seal::has_keys(&s.data.dir),
        "no data key in {} or {}: this is not a replica's host",
        s.data.dir.join("keys").display(),
        breakglass::seal::DATA_KEY_ENV
    );
    anyhow::ensure!(
        breakglass::token::has_keys(&s.data.dir),
        "no token signing key in {}: this is not a replica's host",
        s.data.dir.join("keys").display()
    );
    anyhow::ensure!(
        ServiceKeys::exists(&s.data.dir),
        "no service key in {} or the environment: this is not a replica's host",
        s.data.dir.display()
    );
    let ring = breakglass::seal::Keyring::load_or_generate(&s.data.dir, env_key.as_deref())?;
    let tokens = breakglass::token::TokenIssuer::load_or_generate(&s.data.dir, "", "", &ring)?;
    Ok(breakglass::coordination::ReplicaKeys {
        data: ring.ids(),
        token: tokens.kids(),
        responder: ServiceKeys::load_or_generate(&s.data.dir)?
            .stacks_address(s.chain.network.is_mainnet())
            .to_string(),
    })
}

/// Records this host's current keys for the replicas sharing its Redis (`keys publish`).
fn publish_keys(s: &Settings) -> anyhow::Result<serde_json::Value> {
    use breakglass::coordination::Published;
    let ours = host_keys(s)?;
    let coordination = s.data.coordinator(s.issuance.grants_per_minute)?;
    match tokio::runtime::Runtime::new()?.block_on(coordination.publish_keys(&ours))? {
        Published::Refused(why) => anyhow::bail!("{why}"),
        published => Ok(serde_json::json!({
            "recorded_for_replicas": published == Published::Recorded,
            "data_key": ours.current_data(),
            "token_key": ours.current_token(),
        })),
    }
}

/// A new data key; with replicas on Redis, only on a host that runs with their keys (checked
/// before the key is made), and recorded as the one they seal with (each is refused at its next
/// start until it has it).
fn rotate_data_key(s: &Settings) -> anyhow::Result<serde_json::Value> {
    use breakglass::coordination::Published;
    anyhow::ensure!(
        std::env::var_os(breakglass::seal::DATA_KEY_ENV).is_none(),
        "the current data key comes from {}: rotate it there (the new key in the variable, the old one kept as a file in data.dir/keys so that it still opens), then `breakglass keys publish`",
        breakglass::seal::DATA_KEY_ENV
    );
    let coordination = s.data.coordinator(s.issuance.grants_per_minute)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let shared = coordination.is_shared();
    if shared {
        let before = host_keys(s)?;
        if let Some(why) = runtime.block_on(coordination.keys_agree(&before))? {
            anyhow::bail!("{why}");
        }
    }
    let file = breakglass::seal::generate_key(&s.data.dir)?;
    let ring = breakglass::seal::Keyring::load_or_generate(&s.data.dir, None)?;
    let recorded = if shared {
        let published =
            host_keys(s).and_then(|ours| Ok(runtime.block_on(coordination.publish_keys(&ours))?));
        match published {
            Ok(Published::Recorded) => true,
            Ok(Published::NothingRecorded) => false,
            Ok(Published::Refused(why)) => {
                std::fs::remove_file(&file)?;
                anyhow::bail!("{why}");
            }
            // it may have been recorded (the answer lost): the key is kept, to be recorded
            // or removed by hand, never removed while the replicas may be told to use it
            Err(e) => anyhow::bail!(
                "the new data key {} ({}) was made, but whether it is recorded for the replicas is not known ({e:#}): record it with `breakglass keys publish`, or remove the file",
                ring.current_id(),
                file.display()
            ),
        }
    } else {
        false
    };
    Ok(serde_json::json!({
        "file": file,
        "key_id": ring.current_id(),
        "recorded_for_replicas": recorded,
    }))
}

/// Refuses while a replica runs on the shared store: each running replica contends for the
/// submitter's lease, and one holds it, renewed every few seconds. An offline command that
/// writes rows the replicas write too (`patients rekey` reads each row, then writes it sealed
/// anew) would overwrite what a running replica wrote between its read and its write (a
/// summary imported meanwhile, say). On the embedded store the file's lock keeps the service
/// out already.
///
/// (The lease is the one of the principal the replicas recorded as theirs, not this host's
/// key's; none recorded: no replica ever started on the store.) A replica whose lease lapsed
/// just then, or one started after the check, is not seen: the check is for the common
/// mistake, the maintenance window is the rule.
fn no_replica_running(s: &Settings, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let coordination = s.data.coordinator(s.issuance.grants_per_minute)?;
    let holder = format!("offline:{}", breakglass::coordination::replica_id());
    runtime.block_on(async {
        let Some(responder) = coordination.recorded_responder().await? else {
            return Ok(());
        };
        let lease = format!("submitter:{responder}");
        match coordination.lease(&lease, &holder, 1_000).await? {
            Some(_) => coordination.release(&lease, &holder).await.map_err(anyhow::Error::from),
            None => anyhow::bail!(
                "a replica is running on this store (it holds the lease {lease}): stop every replica first (deploy/README.md, data-key rotation step 3)"
            ),
        }
    })
}

fn rekey_patients(s: &Settings) -> anyhow::Result<serde_json::Value> {
    let (store, keyring, runtime) = offline_sealing(s)?;
    no_replica_running(s, &runtime)?;
    // everything sealed with the data key: contacts, the accesses' reasons, stored notices,
    // emergency summaries, reviewers' notes, the token signing keys
    let (contacts, reasons, messages, summaries, notes) = runtime.block_on(async {
        anyhow::Ok((
            breakglass::directory::rekey(&store, &keyring).await?,
            breakglass::access::rekey_reasons(&store, &keyring).await?,
            breakglass::notify::rekey_messages(&store, &keyring).await?,
            breakglass::vault::rekey_summaries(&store, &keyring).await?,
            breakglass::review::verdict::rekey_notes(&store, &keyring).await?,
        ))
    })?;
    let token_keys = breakglass::token::rekey(&s.data.dir, &keyring)?;
    let service_key = usize::from(breakglass::keys::rekey_service_key(&s.data.dir, &keyring)?);
    let resealed = contacts + reasons + messages + summaries + notes + token_keys + service_key;
    // in the audit log once done (what was resealed stays resealed if the log cannot take it:
    // run again, which reseals nothing and logs)
    let rekey = breakglass::audit::Event::Rekey {
        by: breakglass::audit::command_line(),
        data_key: keyring.current_id(),
        resealed: resealed as u64,
    };
    runtime
        .block_on(breakglass::store::apply_async(
            &store,
            breakglass::store::Batch::logging(rekey),
        ))
        .map_err(|e| {
            anyhow::anyhow!(
                "{resealed} resealed with the data key {}, but the audit log could not record it ({e}): run `patients rekey` again to log it",
                keyring.current_id()
            )
        })?;
    Ok(serde_json::json!({
        "resealed": resealed,
        "service_key": service_key,
        "contacts": contacts,
        "reasons": reasons,
        "notice_messages": messages,
        "summaries": summaries,
        "notes": notes,
        "token_keys": token_keys,
        "key_id": keyring.current_id(),
    }))
}

fn verify_audit(
    s: &Settings,
    responder: Option<&str>,
) -> anyhow::Result<Result<serde_json::Value, serde_json::Value>> {
    use breakglass::audit::verify;
    let responder: breakglass::stacks::Address = match responder {
        Some(p) => p.parse().map_err(|e| anyhow::anyhow!("--responder: {e}"))?,
        // never a new key: anchors would then be checked against a principal that made none
        None if ServiceKeys::exists(&s.data.dir) => {
            ServiceKeys::load_or_generate(&s.data.dir)?.stacks_address(s.chain.network.is_mainnet())
        }
        None => anyhow::bail!(
            "no service key in {} or the environment: say whose anchors to check with --responder",
            s.data.dir.display()
        ),
    };
    // the store alone: a check run on an operator's host makes no data key there (a host with
    // a key of its own is refused as a replica until it is removed)
    let (store, runtime) = offline_store(s)?;
    let rpc = breakglass::chain::rpc::NodeClient::new(
        s.chain.node_url.as_str(),
        std::time::Duration::from_millis(s.chain.request_timeout_ms),
        s.chain.read_retries,
    );
    let contracts = breakglass::chain::contracts::Contracts {
        address: s.chain.contracts_address,
    };
    let anchors = runtime.block_on(verify::anchors(&rpc, &contracts, &responder))?;
    Ok(match verify::check(store.as_ref(), &anchors) {
        Ok(report) => Ok(serde_json::json!({ "ok": true, "report": report })),
        Err(e) => {
            Err(serde_json::json!({ "ok": false, "entry": e.entry(), "error": e.to_string() }))
        }
    })
}

fn import_summary(s: &Settings, file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (store, keyring, runtime) = offline_sealing(s)?;
    let imported = runtime
        .block_on(breakglass::vault::import(
            &store,
            &keyring,
            &s.directory.patient_id_system,
            &body,
            &breakglass::audit::command_line(),
        ))
        .map_err(|r| anyhow::anyhow!("{} ({}): {}", r.title, r.code, r.detail))?;
    Ok(serde_json::to_value(imported)?)
}

fn import_patients(s: &Settings, file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (store, keyring, runtime) = offline_sealing(s)?;
    let report = runtime.block_on(breakglass::directory::import(
        &store,
        &keyring,
        &s.directory.patient_id_system,
        &body,
        &breakglass::audit::command_line(),
    ))?;
    Ok(serde_json::to_value(report)?)
}

fn print(result: Result<serde_json::Value, String>) -> ExitCode {
    match result {
        Ok(v) => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Stacks(StacksCommand::DecodeTx { hex }) => print(tools::decode_tx(hex)),
        Command::Stacks(StacksCommand::Cv { hex }) => print(tools::cv(hex)),
        Command::Stacks(StacksCommand::Sip018Verify {
            domain,
            message,
            signature,
        }) => print(tools::sip018_verify(domain, message, signature)),
        Command::Policy(PolicyCommand::Check { dir }) => {
            let dir = match dir {
                Some(d) => Some(d.clone()),
                None => match settings(&cli) {
                    Ok(s) => s.policy.dir,
                    Err(code) => return code,
                },
            };
            let loaded = match &dir {
                Some(d) => Policies::load(d),
                None => Policies::defaults(),
            };
            print(loaded.and_then(|p| p.matrix()).map_err(|e| e.to_string()))
        }
        Command::Demo(DemoCommand::Request {
            role,
            patient,
            data_types,
            reason,
            demo_file,
            url,
        }) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let url = url
                .clone()
                .unwrap_or_else(|| format!("http://{}", s.server.listen));
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return print(Err(e.to_string())),
            };
            let r = demo::DemoRequest {
                demo_file,
                url: &url,
                role,
                patient,
                data_types,
                reason,
                chain_id: s.chain.network.chain_id(),
            };
            match runtime.block_on(demo::request(r)) {
                Ok((status, body)) => {
                    println!("HTTP {status}\n{body:#}");
                    if status == 201 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => print(Err(e.to_string())),
            }
        }
        Command::Patients(PatientsCommand::Import { file }) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print(import_patients(&s, file).map_err(|e| format!("{e:#}")))
        }
        Command::Audit(AuditCommand::Verify { responder }) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match verify_audit(&s, responder.as_deref()) {
                Ok(Ok(report)) => print(Ok(report)),
                Ok(Err(broken)) => {
                    println!("{broken:#}");
                    ExitCode::from(1)
                }
                Err(e) => print(Err(format!("{e:#}"))),
            }
        }
        Command::Summaries(SummariesCommand::Import { file }) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print(import_summary(&s, file).map_err(|e| format!("{e:#}")))
        }
        Command::Patients(PatientsCommand::Rekey) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print(rekey_patients(&s).map_err(|e| format!("{e:#}")))
        }
        Command::Keys(KeysCommand::RotateData) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print(rotate_data_key(&s).map_err(|e| format!("{e:#}")))
        }
        Command::Keys(KeysCommand::Publish) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print(publish_keys(&s).map_err(|e| format!("{e:#}")))
        }
        Command::Keys(KeysCommand::Show) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match ServiceKeys::load_or_generate(&s.data.dir) {
                Ok(k) => print(Ok(serde_json::json!({
                    "principal": k.stacks_address(s.chain.network.is_mainnet()).to_string(),
                    "source": format!("{:?}", k.source).to_lowercase(),
                }))),
                Err(e) => print(Err(e.to_string())),
            }
        }
        Command::Serve | Command::Dev { .. } => {
            let mut s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let is_dev = matches!(cli.command, Command::Dev { .. });
            if is_dev && std::env::var_os("BREAKGLASS_LOG__FORMAT").is_none() {
                s.log.format = breakglass::configuration::LogFormat::Pretty;
            }
            if let Err(e) = telemetry::init(&s.log) {
                eprintln!("breakglass: {e}");
                return ExitCode::from(2);
            }
            let dev_replica = std::env::var_os(dev::DEV_REPLICA_ENV).is_some();
            if !is_dev
                && !dev_replica
                && s.notify.transport == breakglass::configuration::MailTransport::File
            {
                tracing::warn!(
                    outbox = %s.data.dir.join("outbox").display(),
                    "notify.transport is \"file\": patients' notices are written to the outbox, not emailed; a deployment sets notify.transport = \"smtp\" (/readyz checks.notices says which)"
                );
            }
            startup::no_huge_pages();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("breakglass: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                match cli.command {
                    Command::Dev {
                        contracts_dir,
                        devnet_port,
                        reset,
                        replicas,
                    } => {
                        dev::run(
                            s,
                            dev::DevOptions {
                                contracts_dir,
                                devnet_port,
                                reset,
                                replicas,
                                config: cli.config.clone(),
                            },
                        )
                        .await
                    }
                    _ => {
                        let keys = ServiceKeys::load_or_generate(&s.data.dir)?;
                        startup::Application::build(s, keys)
                            .await?
                            .run_until_signal()
                            .await
                    }
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "breakglass failed");
                    eprintln!("breakglass: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

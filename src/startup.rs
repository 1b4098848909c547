//! Wiring, in one place: the store, the keys, the node client, the chain-state cache, the
//! follower, submitter and notifier tasks, and the two HTTP listeners; and their orderly shutdown.
//!
//! It must not: hold logic beyond wiring and shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::BreakGlass;
use crate::audit::Event;
use crate::chain::contracts::Contracts;
use crate::chain::follower::Follower;
use crate::chain::rpc::NodeClient;
use crate::chain::state::ChainState;
use crate::chain::status::FollowerStatus;
use crate::chain::submitter::Submitter;
use crate::configuration::Settings;
use crate::http;
use crate::keys::ServiceKeys;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::paging;
use crate::policy::Policies;
use crate::seal::Keyring;
use crate::store::{Batch, RedbStore, Store};
use crate::token::TokenIssuer;

/// This build: the crate's version and, as its build metadata, the commit it was built from
/// (`build.rs`: `0.1.0+1a2b3c4d5e6f`), logged with each start and shown in `/metrics`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("BREAKGLASS_BUILD"));

/// Turns transparent huge pages off for this process (and what it starts). mimalloc asks for
/// them where the kernel allows it (`madvise`), and the kernel then zeroes a whole 2 MiB page,
/// or first compacts memory to find one, inside whichever request touches it first: stalls of
/// milliseconds on the break-glass path (docs/benchmarks.md).
/// The benchmarks' reference handlers run with the same setting.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "could not turn transparent huge pages off: expect latency spikes");
    }
}

pub struct Application {
    pub api_addr: SocketAddr,
    pub observer_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    /// The same store, as itself (its fault injection, for tests).
    #[doc(hidden)]
    /// The embedded store, when it is the one in use (not with `data.redis_url`).
    pub redb: Option<Arc<RedbStore>>,
    pub status: Arc<FollowerStatus>,
    pub follower: Arc<Follower>,
    pub submitter: Arc<Submitter>,
    /// The critical-data vault (imports outside HTTP: `breakglass dev`'s demo summaries).
    pub vault: Arc<crate::vault::Vault>,
    pub service_principal: String,
    pub policies: Arc<Policies>,
    servers: Vec<(ServerHandle, JoinHandle<std::io::Result<()>>)>,
    tasks: Vec<JoinHandle<()>>,
    /// This process among the replicas (its row, taken out with its stop's entry), and its
    /// renewals: stopped just before that entry.
    replicas: Arc<crate::audit::replicas::Replicas>,
    renewing: (watch::Sender<bool>, JoinHandle<()>),
    shutdown: watch::Sender<bool>,
    shutdown_timeout: Duration,
}

/// How long a replica waits at start for its store to answer whether its keys agree with the
/// other replicas' (Redis starting beside it), and then to take its start's entry
/// (`log_start`): past either, it does not start.
const KEYS_CHECK_AT_MOST: Duration = Duration::from_secs(15);

/// Stops a replica whose keys are not the other replicas' (`Coordinator::agree_on_keys`), or
/// whose store does not answer within `KEYS_CHECK_AT_MOST`: it never runs unchecked, since its
/// background work (the chain submitter, the notifier) would act with those keys as soon as
/// the store answered.
async fn agree_on_keys(
    coordination: &crate::coordination::Coordinator,
    ours: &crate::coordination::ReplicaKeys,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + KEYS_CHECK_AT_MOST;
    loop {
        match coordination.agree_on_keys(ours).await {
            Ok(None) => return Ok(()),
            Ok(Some(why)) => anyhow::bail!("{why}"),
            Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                "this replica's keys could not be checked against the other replicas' (the store does not answer: {e}); start it again once the store answers"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the store does not answer yet: this replica's keys are checked against the other replicas' once it does");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Logs this process's start (`start`), once it is ready to run: the write is tried again for
/// up to `KEYS_CHECK_AT_MOST` (a store that fails over as the process starts), then the start
/// fails (a store that cannot take it cannot take a grant's entry either; the orchestrator
/// starts the process again). (A write that landed but was reported failed, its replicas'
/// acknowledgement late, is written again: two starts of one process, never none.)
async fn log_start(store: &Arc<dyn Store>, start: impl Fn() -> Batch) -> anyhow::Result<Batch> {
    let deadline = tokio::time::Instant::now() + KEYS_CHECK_AT_MOST;
    loop {
        let batch = start();
        match crate::store::apply_async(store, batch.clone()).await {
            Ok(()) => return Ok(batch),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("the audit log could not record this start: {e}")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the audit log does not take this start yet: tried again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Application {
    pub async fn build(settings: Settings, keys: ServiceKeys) -> anyhow::Result<Application> {
        let mainnet = settings.chain.network.is_mainnet();
        // policies are checked before anything starts: a bad file stops the service here
        let policies = Arc::new(match &settings.policy.dir {
            Some(dir) => Policies::load(dir)?,
            None => Policies::defaults()?,
        });
        let (store, redb) = settings.data.open_store()?;
        let coordination = Arc::new(
            settings
                .data
                .coordinator(settings.issuance.grants_per_minute)?,
        );
        let mut metrics = Metrics::new();
        if let Some(group) = store.group_metrics() {
            metrics.register_store(group);
        }
        let rpc = NodeClient::new(
            settings.chain.node_url.as_str(),
            Duration::from_millis(settings.chain.request_timeout_ms),
            settings.chain.read_retries,
        );
        let contracts = Contracts {
            address: settings.chain.contracts_address,
        };
        let state = ChainState::new(store.clone(), rpc.clone(), contracts.clone());
        let status = Arc::new(FollowerStatus::default());
        let keyring = Arc::new(Keyring::load_or_generate(
            &settings.data.dir,
            std::env::var(crate::seal::DATA_KEY_ENV).ok().as_deref(),
        )?);
        let tokens = Arc::new(TokenIssuer::load_or_generate(
            &settings.data.dir,
            &settings.issuance.issuer,
            &settings.issuance.audience,
            &keyring,
        )?);
        // replicas sharing a store must run with the same keys: one started with others (a
        // first run on a new host generates its own) is stopped here, before it seals, signs
        // or sends anything the others cannot open, verify or continue
        let ours = crate::coordination::ReplicaKeys {
            data: keyring.ids(),
            token: tokens.kids(),
            responder: keys.stacks_address(mainnet).to_string(),
        };
        agree_on_keys(&coordination, &ours).await?;
        let (announce, announced) = tokio::sync::mpsc::unbounded_channel();
        let wake = Arc::new(tokio::sync::Notify::new());
        let breakglass = web::Data::new(
            BreakGlass::new(
                &settings,
                state.clone(),
                status.clone(),
                policies.clone(),
                tokens,
                keyring.clone(),
                metrics,
                coordination.clone(),
            )?
            .with_follow_up(wake.clone()),
        );
        let oncall = breakglass.oncall.clone();
        let metrics = breakglass.metrics.clone();
        let vault = web::Data::from(Arc::new(crate::vault::Vault::new(
            state.clone(),
            keyring.clone(),
            breakglass.tokens.clone(),
            settings.directory.patient_id_system.clone(),
            metrics.clone(),
        )));
        let vault_handle = vault.clone().into_inner();
        let paging = web::Data::new(http::paging::Paging {
            oncall: oncall.clone(),
            metrics: metrics.clone(),
            pagerduty_secrets: settings.oncall.pagerduty.webhook_secrets_file.clone(),
            opsgenie_secrets: settings.oncall.opsgenie.webhook_secrets_file.clone(),
            webhook_secrets: settings.oncall.webhook.secrets_file.clone(),
        });
        let clients = web::Data::new(http::tokens::Clients(
            settings.resource_servers.clients.clone(),
        ));
        let sender = keys.stacks_address(mainnet);
        let follower = Arc::new(Follower::new(state.clone(), status.clone())?);
        let observer_prefix = match &settings.follower.path_secret_file {
            Some(file) => format!("/{}", crate::configuration::read_path_secret(file)?),
            None => {
                if !settings.follower.listen.ip().is_loopback() {
                    tracing::warn!(listen = %settings.follower.listen, "the event observer listens beyond this host without follower.path_secret_file: whoever reaches its port can hold its places with slow posts (one each) and make the node send blocks again; set a secret path, or keep the port reachable by the node alone");
                }
                String::new()
            }
        };
        let notifier = Arc::new(Notifier::new(
            &settings,
            store.clone(),
            keyring.clone(),
            coordination.clone(),
        )?);
        let apply_lock = state.apply_lock.clone();
        let review = web::Data::new(crate::review::Review::new(
            state.clone(),
            keyring.clone(),
            settings.review.clone(),
            settings.chain.network.chain_id(),
            mainnet,
            settings.issuance.issuer.clone(),
            settings.directory.clone(),
            keys.stacks_address(mainnet),
            coordination.clone(),
        ));
        let pages = web::Data::new(http::review::Pages::new()?);
        let tablet = web::Data::new(http::tablet::TabletPage::new(
            settings.chain.network.chain_id(),
            mainnet,
        )?);
        let admin = web::Data::new(http::admin::Admin {
            clients: settings.admin.clients.clone(),
            store: store.clone(),
            chain: state,
            keyring,
            patient_id_system: settings.directory.patient_id_system.clone(),
            provider_principal_system: settings.directory.provider_principal_system.clone(),
            contacts_imported: notifier.contacts_imported(),
        });
        let submitter = Arc::new(Submitter::new(
            store.clone(),
            rpc,
            contracts,
            keys.stacks,
            sender,
            mainnet,
            &settings.submitter,
            status.clone(),
            apply_lock,
            coordination.clone(),
            settings.data.lease_ms,
        ));
        // every secrets file read and both ports bound before the start is logged: a start
        // that fails after it would leave the log a start of a process that never ran
        let oc = &settings.oncall;
        for file in [
            &oc.pagerduty.api_token_file,
            &oc.opsgenie.api_key_file,
            &oc.pagerduty.webhook_secrets_file,
            &oc.opsgenie.webhook_secrets_file,
            &oc.webhook.secrets_file,
        ]
        .into_iter()
        .flatten()
        {
            paging::load_secrets(file)?;
        }
        let bind = |what: &str, addr: SocketAddr| {
            TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("{what} {addr}: {e}"))
        };
        let api_listener = bind("server.listen", settings.server.listen)?;
        let observer_listener = bind("follower.listen", settings.follower.listen)?;
        let (api_addr, observer_addr) =
            (api_listener.local_addr()?, observer_listener.local_addr()?);
        // (the ports take connections from here on: while the store does not take the start,
        // they wait in the listeners' backlog, and `/readyz` does not answer yet)
        // (with this process's row among the replicas: `audit::replicas`)
        let replicas = Arc::new(crate::audit::replicas::Replicas::new(
            store.clone(),
            coordination.clone(),
            VERSION,
            settings.data.lease_ms,
        ));
        let start = Event::Start {
            replica: crate::coordination::replica_id(),
            version: VERSION.into(),
            data_key: admin.keyring.current_id(),
            token_key: breakglass
                .tokens
                .kids()
                .first()
                .cloned()
                .unwrap_or_default(),
            responder: sender,
        };
        // (the row as of each attempt; the one written is the first its renewals are guarded on)
        let started = log_start(&store, || Batch {
            replicas: vec![replicas.seen(crate::clock::now_ms())],
            ..Batch::logging(start.clone())
        })
        .await?;
        let row = started.replicas.into_iter().find_map(|(_, row)| row);
        // the processes before it gone without a stop: on one machine, logged before it serves
        if let Err(e) = replicas.log_lost().await {
            tracing::warn!(error = %e, "the ends of processes gone could not be logged yet");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);

        let poll = Duration::from_millis(settings.follower.poll_interval_ms);
        // this process's row is renewed until nothing else runs in it (`stop`)
        let (stop_renewing, renewals) = watch::channel(false);
        let renewing = tokio::spawn(replicas.clone().run(renewals, row));
        let mut tasks = vec![
            tokio::spawn(follower.clone().run_poller(poll, shutdown_rx.clone())),
            tokio::spawn(submitter.clone().run(
                Duration::from_millis(settings.submitter.interval_ms),
                shutdown_rx.clone(),
            )),
            tokio::spawn(notifier.run(announced, shutdown_rx.clone())),
            tokio::spawn(
                Arc::new(crate::access::follow_up::FollowUp::new(
                    store.clone(),
                    settings.notify.clone(),
                    coordination.clone(),
                    settings.data.lease_ms,
                    Some(announce),
                ))
                .run(wake, shutdown_rx.clone()),
            ),
            tokio::spawn(
                crate::audit::anchor::Anchorer::new(
                    store.clone(),
                    coordination.clone(),
                    settings.data.lease_ms,
                    settings.audit.schedule(),
                )
                .run(Duration::from_secs(1), shutdown_rx.clone()),
            ),
            tokio::spawn(
                review
                    .clone()
                    .into_inner()
                    .end_lapsed_sessions(review.lapse_check_every(), shutdown_rx.clone()),
            ),
        ];
        if oncall.is_shared() {
            tasks.push(tokio::spawn(paging::reload_every(
                oncall.clone(),
                Duration::from_secs(1),
                shutdown_rx.clone(),
            )));
        }
        if let Some(file) = &oc.pagerduty.api_token_file {
            tasks.push(tokio::spawn(paging::sync::run(
                paging::pagerduty::OnCalls::new(&oc.pagerduty),
                file.clone(),
                oncall.clone(),
                oc.pagerduty.sync.clone(),
                shutdown_rx.clone(),
            )));
        }
        if let Some(file) = &oc.opsgenie.api_key_file {
            tasks.push(tokio::spawn(paging::sync::run(
                paging::opsgenie::OnCalls::new(&oc.opsgenie),
                file.clone(),
                oncall.clone(),
                oc.opsgenie.sync.clone(),
                shutdown_rx,
            )));
        }
        let health = web::Data::new(http::Health {
            store: store.clone(),
            follower: status.clone(),
            keys_loaded: true,
            max_lag_blocks: settings.follower.max_lag_blocks,
            fresh_ms: settings.follower.fresh_ms(),
            seconds_per_block: settings.issuance.seconds_per_block,
            oncall,
            metrics,
            submitter: submitter.clone(),
            notices_emailed: settings.notify.transport == crate::configuration::MailTransport::Smtp,
        });
        let timeout = settings.server.shutdown_timeout_secs;
        let api = HttpServer::new(move || {
            App::new()
                .app_data(health.clone())
                .app_data(breakglass.clone())
                .app_data(clients.clone())
                .app_data(admin.clone())
                .app_data(paging.clone())
                .app_data(review.clone())
                .app_data(pages.clone())
                .app_data(vault.clone())
                .app_data(tablet.clone())
                .configure(http::api)
        })
        .listen(api_listener)?
        .disable_signals()
        .shutdown_timeout(timeout)
        .run();
        let follower_data = web::Data::from(follower.clone());
        let observer = HttpServer::new(move || {
            App::new()
                .app_data(follower_data.clone())
                .configure(http::observer(observer_prefix.clone()))
        })
        .listen(observer_listener)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(timeout)
        .run();
        let servers = vec![
            (api.handle(), tokio::spawn(api)),
            (observer.handle(), tokio::spawn(observer)),
        ];
        tracing::info!(%api_addr, %observer_addr, service = %sender, node = %settings.chain.node_url, "breakglass started");
        Ok(Application {
            api_addr,
            observer_addr,
            store,
            redb,
            status,
            follower,
            submitter,
            vault: vault_handle,
            service_principal: sender.to_string(),
            policies,
            servers,
            tasks,
            replicas,
            renewing: (stop_renewing, renewing),
            shutdown,
            shutdown_timeout: Duration::from_secs(timeout),
        })
    }

    /// Stops accepting, lets in-flight requests finish, stops the workers, and returns when
    /// all of it has ended (or the shutdown timeout has passed).
    pub async fn stop(self) {
        let Application {
            store,
            redb,
            status,
            follower,
            submitter,
            servers,
            tasks,
            replicas,
            renewing: (stop_renewing, renewing),
            shutdown,
            shutdown_timeout,
            vault,
            ..
        } = self;
        let _ = shutdown.send(true);
        for (handle, _) in &servers {
            handle.stop(true).await;
        }
        let wait = async {
            for (_, join) in servers {
                let _ = join.await;
            }
            for t in tasks {
                let _ = t.await;
            }
            // every copy of the store held here goes too (the vault's, left held, made every
            // stop wait out its whole timeout)
            drop((redb, status, follower, submitter, vault));
            // (its row renewed until now: not taken for gone while it stopped)
            let _ = stop_renewing.send(true);
            let _ = renewing.await;
            // the stop, logged once nothing else runs (a log that cannot take it is said so:
            // the stop goes on)
            let stop = Batch {
                replicas: vec![replicas.gone()],
                ..Batch::logging(Event::Stop {
                    replica: crate::coordination::replica_id(),
                    lost: None,
                })
            };
            if let Err(e) = crate::store::apply_async(&store, stop).await {
                tracing::warn!(error = %e, "this stop could not be logged");
            }
            drop(replicas);
            // HTTP workers drop their copies of the shared state as they wind down; the store
            // (and its file lock) is released only when the last copy is gone
            while Arc::strong_count(&store) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(shutdown_timeout, wait).await.is_err() {
            tracing::warn!("shutdown timed out");
        }
        drop(store);
        tracing::info!("breakglass stopped");
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!("signal received: shutting down");
        self.stop().await;
        Ok(())
    }
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

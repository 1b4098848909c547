//! Typed configuration: embedded defaults, then one TOML file, then `BREAKGLASS_*` environment
//! variables (`__` separates sections: `BREAKGLASS_CHAIN__NODE_URL`). Every value has a safe
//! default for the embedded single-node mode; secrets are never read from the TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::stacks::tx::{MAINNET_CHAIN_ID, TESTNET_CHAIN_ID};
use crate::stacks::Address;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub chain: ChainSettings,
    pub follower: FollowerSettings,
    pub submitter: SubmitterSettings,
    pub data: DataSettings,
    pub log: LogSettings,
    pub policy: PolicySettings,
    pub issuance: IssuanceSettings,
    pub oncall: OnCallSettings,
    pub resource_servers: ResourceServerSettings,
    pub admin: AdminSettings,
    pub directory: DirectorySettings,
    pub notify: NotifySettings,
}

/// Operators' clients for the admin API (`/v1/admin/...`: directory import, notice lists),
/// HTTP Basic with only the SHA-256 of each secret configured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub clients: Vec<ResourceServerClient>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySettings {
    /// The FHIR `identifier.system` whose value is the patient's pseudonymous id (hex).
    pub patient_id_system: String,
    /// The FHIR `identifier.system` whose value is a practitioner's Stacks principal.
    pub provider_principal_system: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// Through an SMTP server (`notify.smtp`).
    Smtp,
    /// `.eml` files in `data.dir/outbox` (development: no SMTP server needed).
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a local relay only).
    None,
    /// STARTTLS on a submission port (587).
    Starttls,
    /// TLS from the first byte (465).
    Implicit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// With the password from `BREAKGLASS_SMTP_PASSWORD`.
    pub username: Option<String>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub transport: MailTransport,
    pub smtp: SmtpSettings,
    /// The notices' `From`, e.g. `Hospital privacy office <privacy@hospital.example>`; its
    /// domain also names the `Message-ID`s.
    pub from: String,
    /// Data types whose access is notified at once rather than when the window closes.
    pub immediate_data_types: Vec<crate::domain::DataType>,
    /// A link to the chain record, `{txid}` replaced (e.g. an explorer's transaction page).
    pub explorer_tx_url: Option<String>,
    /// How to contest an access, as the notice says it (an address, a phone number, a page).
    pub contest: String,
    pub poll_interval_ms: u64,
    /// Retries after a transient failure: this long first, doubling up to `retry_max_secs`,
    /// for up to `give_up_after_hours` after the first attempt.
    pub retry_initial_secs: u64,
    pub retry_max_secs: u64,
    pub give_up_after_hours: u64,
}

/// The resource servers allowed to introspect and revoke tokens (HTTP Basic, RFC 7662 §2.1).
/// Only the SHA-256 of each secret is configured, so this file holds no secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerSettings {
    pub clients: Vec<ResourceServerClient>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerClient {
    pub id: String,
    /// hex SHA-256 of the client's secret
    pub secret_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceSettings {
    /// `iss` of the access tokens.
    pub issuer: String,
    /// `aud` of the access tokens: the resource server(s) that accept them.
    pub audience: String,
    /// Used to turn a patient's maximum window (in blocks) into minutes, and a token's window
    /// into the blocks recorded on chain.
    pub seconds_per_block: u64,
    /// Grants per provider per minute (a burst of this size, refilled over the minute).
    pub grants_per_minute: u32,
}

/// Who is on call (`paging`): sources combine, and a clinician is on call when any of them
/// says so. With no source configured, on-call is not checked. Secrets (webhook secrets, API
/// tokens) are read from files, one secret a line, never from this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCallSettings {
    /// A TOML file with `on_call = ["ST...", ...]`: always on call.
    pub roster: Option<PathBuf>,
    /// A TOML file mapping paging user ids and emails to principals, `[responders]
    /// "PXPGF42" = "ST..."`; the provider directory's paging ids map too.
    pub mapping: Option<PathBuf>,
    /// A webhook whose own timestamp is further than this from now is refused; a delivery
    /// seen before within twice this is a replay.
    pub webhook_window_secs: u64,
    /// An incident pages no one this long after it first paged, resolved or not (so that a
    /// lost `resolved` cannot leave anyone on call for ever).
    pub incident_max_secs: u64,
    pub pagerduty: PagerDutySettings,
    pub opsgenie: OpsgenieSettings,
    pub webhook: GenericWebhookSettings,
}

/// PagerDuty: Webhooks v3 (incidents page responders) and the REST API's `GET /oncalls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    /// The webhook subscriptions' signing secrets, one a line (two while rotating); unset,
    /// `POST /v1/paging/pagerduty` is off.
    pub webhook_secrets_file: Option<PathBuf>,
    /// A REST API key; unset, there is no on-call sync.
    pub api_token_file: Option<PathBuf>,
    pub api_url: String,
    /// Only these schedules / escalation policies (all, when both are empty).
    pub schedule_ids: Vec<String>,
    pub escalation_policy_ids: Vec<String>,
    pub sync: SyncSettings,
}

/// Opsgenie: alert webhooks and the schedules' on-call API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsgenieSettings {
    /// The secrets the webhook integration sends in its `X-Breakglass-Token` custom header,
    /// one a line; unset, `POST /v1/paging/opsgenie` is off.
    pub webhook_secrets_file: Option<PathBuf>,
    /// An API key (GenieKey); unset, there is no on-call sync.
    pub api_key_file: Option<PathBuf>,
    pub api_url: String,
    /// The schedules (by name) whose on-call participants are on call.
    pub schedules: Vec<String>,
    pub sync: SyncSettings,
}

/// Any other paging system: `POST /v1/paging/webhook` with `{responder, on_call_until,
/// incident}`, signed with HMAC-SHA256 over `timestamp.body`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericWebhookSettings {
    /// The signing secrets, one a line (two while rotating); unset, the endpoint is off.
    pub secrets_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    pub interval_ms: u64,
    /// After a failed sync the last good roster stands this long, then the source fails
    /// closed (no one is on call through it) until a sync succeeds.
    pub grace_secs: u64,
    /// The longest `Retry-After` honoured; a longer one counts as a failure.
    pub max_retry_after_secs: u64,
    pub request_timeout_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            interval_ms: 60_000,
            grace_secs: 900,
            max_retry_after_secs: 120,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for OnCallSettings {
    fn default() -> Self {
        OnCallSettings {
            roster: None,
            mapping: None,
            webhook_window_secs: 600,
            incident_max_secs: 12 * 3600,
            pagerduty: PagerDutySettings {
                webhook_secrets_file: None,
                api_token_file: None,
                api_url: "https://api.pagerduty.com".into(),
                schedule_ids: Vec::new(),
                escalation_policy_ids: Vec::new(),
                sync: SyncSettings::default(),
            },
            opsgenie: OpsgenieSettings {
                webhook_secrets_file: None,
                api_key_file: None,
                api_url: "https://api.opsgenie.com".into(),
                schedules: Vec::new(),
                sync: SyncSettings::default(),
            },
            webhook: GenericWebhookSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// A directory with `breakglass.cedarschema` and `*.cedar` files; unset, the built-in
    /// defaults (the repository's `policies/`) apply.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// The public HTTP API.
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    /// The stacks-node RPC (a real node, or the devnet).
    pub node_url: String,
    /// "testnet" or "mainnet".
    pub network: Network,
    /// The address that deployed patient-consent and access-control.
    pub contracts_address: String,
    pub request_timeout_ms: u64,
    /// Retries of a failed read (call-read, info, accounts), with exponential backoff.
    pub read_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Testnet,
    Mainnet,
}

impl Network {
    pub fn chain_id(self) -> u32 {
        match self {
            Network::Testnet => TESTNET_CHAIN_ID,
            Network::Mainnet => MAINNET_CHAIN_ID,
        }
    }
    pub fn is_mainnet(self) -> bool {
        self == Network::Mainnet
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowerSettings {
    /// Where the stacks-node POSTs event-observer payloads (`/new_block`).
    pub listen: SocketAddr,
    /// How often the node's tip is polled, to notice gaps and to judge readiness.
    pub poll_interval_ms: u64,
    /// Ready only while the follower is within this many blocks of the node's tip; beyond
    /// it (or when the node has not been heard from for as long) the policies see
    /// `context.chain_stale` and the default refuses with `chain-state-stale`.
    pub max_lag_blocks: u64,
    /// A file holding a secret path segment: the event-observer endpoints are served under
    /// `/<secret>/` only (the node's `events_observer.endpoint` is then `host:port/<secret>`).
    /// Unset, they are at `/`: keep the port reachable by the node alone either way.
    #[serde(default)]
    pub path_secret_file: Option<PathBuf>,
}

impl FollowerSettings {
    /// How recently the node must have answered for the follower to count as in touch: three
    /// polls and a second.
    pub fn fresh_ms(&self) -> u64 {
        self.poll_interval_ms.saturating_mul(3).saturating_add(1000)
    }
}

/// Reads the observer's secret path segment: 16 to 128 URL-safe characters (letters, digits,
/// `-`, `_`), so that it is both hard to guess and one path segment.
pub fn read_path_secret(file: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("follower.path_secret_file {}: {e}", file.display()))?;
    let s = s.trim();
    anyhow::ensure!(
        (16..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "follower.path_secret_file {}: the secret path must be 16 to 128 letters, digits, '-' or '_'",
        file.display()
    );
    Ok(s.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitterSettings {
    /// Fee per contract call, in microstacks.
    pub fee: u64,
    /// A sent transaction not confirmed after this many blocks is broadcast again.
    pub rebroadcast_after_blocks: u64,
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// The embedded store and generated keys live here.
    pub dir: PathBuf,
    /// The store's page cache, in MiB (`RedbOptions::cache_bytes`): pages read, and pages
    /// written and not yet checkpointed (up to half of it); what the service's memory grows
    /// by under sustained writes.
    pub cache_mib: usize,
}

impl DataSettings {
    /// How the store at `breakglass.redb` in `dir` is opened.
    pub fn store_options(&self) -> crate::store::RedbOptions {
        crate::store::RedbOptions {
            cache_bytes: self.cache_mib.saturating_mul(1 << 20),
            ..crate::store::RedbOptions::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// "json" (default) or "pretty".
    pub format: String,
    /// A tracing filter, e.g. "info" or "breakglass=debug,info".
    pub filter: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings {
                listen: ([127, 0, 0, 1], 8080).into(),
                shutdown_timeout_secs: 10,
            },
            chain: ChainSettings {
                node_url: "http://127.0.0.1:20443".into(),
                network: Network::Testnet,
                contracts_address: "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".into(),
                request_timeout_ms: 3000,
                read_retries: 3,
            },
            follower: FollowerSettings {
                listen: ([127, 0, 0, 1], 3700).into(),
                poll_interval_ms: 1000,
                max_lag_blocks: 2,
                path_secret_file: None,
            },
            submitter: SubmitterSettings {
                fee: 10_000,
                rebroadcast_after_blocks: 3,
                interval_ms: 250,
            },
            data: DataSettings {
                dir: PathBuf::from(".data/breakglass"),
                cache_mib: crate::store::DEFAULT_CACHE_MIB,
            },
            log: LogSettings {
                format: "json".into(),
                filter: "info".into(),
            },
            policy: PolicySettings::default(),
            issuance: IssuanceSettings {
                issuer: "http://127.0.0.1:8080".into(),
                audience: "fhir".into(),
                seconds_per_block: 10,
                grants_per_minute: 10,
            },
            oncall: OnCallSettings::default(),
            resource_servers: ResourceServerSettings::default(),
            admin: AdminSettings::default(),
            directory: DirectorySettings {
                patient_id_system: "urn:breakglass:patient-id".into(),
                provider_principal_system: "urn:breakglass:stacks-principal".into(),
            },
            notify: NotifySettings {
                transport: MailTransport::File,
                smtp: SmtpSettings {
                    host: "127.0.0.1".into(),
                    port: 25,
                    tls: SmtpTls::None,
                    username: None,
                    timeout_secs: 15,
                },
                from: "Emergency access notices <notices@breakglass.localhost>".into(),
                immediate_data_types: Vec::new(),
                explorer_tx_url: None,
                contest: "reply to your care provider's privacy office".into(),
                poll_interval_ms: 1000,
                retry_initial_secs: 30,
                retry_max_secs: 3600,
                give_up_after_hours: 72,
            },
        }
    }
}

impl Settings {
    /// Defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // only `section.field` keys: secrets (BREAKGLASS_SERVICE_KEY) and other BREAKGLASS_*
        // variables are read where they are used, not here
        let sections: Vec<String> = match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let env = Env::prefixed("BREAKGLASS_").split("__").filter(move |key| {
            let key = key.as_str().to_ascii_lowercase();
            key.contains('.')
                && sections
                    .iter()
                    .any(|s| key.split('.').next() == Some(s.as_str()))
        });
        let settings: Settings = fig.merge(env).extract().map_err(Box::new)?;
        settings
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        let address: Address = self
            .chain
            .contracts_address
            .parse()
            .map_err(|e| format!("chain.contracts_address: {e}"))?;
        if address.is_mainnet() != self.chain.network.is_mainnet() {
            return Err(format!(
                "chain.contracts_address {address} is not a {:?} address",
                self.chain.network
            ));
        }
        if !self.chain.node_url.starts_with("http://")
            && !self.chain.node_url.starts_with("https://")
        {
            return Err("chain.node_url must be an http(s) URL".into());
        }
        if !(1..=65_536).contains(&self.data.cache_mib) {
            return Err(format!(
                "data.cache_mib must be from 1 to 65536 (MiB), not {}",
                self.data.cache_mib
            ));
        }
        if self.issuance.seconds_per_block == 0 || self.issuance.grants_per_minute == 0 {
            return Err(
                "issuance.seconds_per_block and issuance.grants_per_minute must be positive".into(),
            );
        }
        if self
            .notify
            .from
            .parse::<lettre::message::Mailbox>()
            .is_err()
        {
            return Err(format!(
                "notify.from {:?} is not a mailbox",
                self.notify.from
            ));
        }
        for (name, value) in [
            ("chain.request_timeout_ms", self.chain.request_timeout_ms),
            (
                "server.shutdown_timeout_secs",
                self.server.shutdown_timeout_secs,
            ),
            ("follower.poll_interval_ms", self.follower.poll_interval_ms),
            ("submitter.interval_ms", self.submitter.interval_ms),
            ("notify.retry_initial_secs", self.notify.retry_initial_secs),
            ("notify.poll_interval_ms", self.notify.poll_interval_ms),
            ("notify.smtp.timeout_secs", self.notify.smtp.timeout_secs),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.notify.retry_max_secs < self.notify.retry_initial_secs {
            return Err(format!(
                "notify.retry_max_secs ({}) must be at least notify.retry_initial_secs ({})",
                self.notify.retry_max_secs, self.notify.retry_initial_secs
            ));
        }
        for (name, value) in [
            ("issuance.issuer", &self.issuance.issuer),
            ("issuance.audience", &self.issuance.audience),
        ] {
            if value.trim().is_empty() {
                return Err(format!(
                    "{name} must not be empty: resource servers check it in every token"
                ));
            }
        }
        let (api, observer) = (self.server.listen, self.follower.listen);
        if api == observer && api.port() != 0 {
            return Err(format!(
                "server.listen and follower.listen are both {api}: the API and the event observer each need their own"
            ));
        }
        if !["json", "pretty"].contains(&self.log.format.as_str()) {
            return Err(format!(
                "log.format must be \"json\" or \"pretty\", not {:?}",
                self.log.format
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(format!("log.filter {:?}: {e}", self.log.filter));
        }
        let oc = &self.oncall;
        if oc.webhook_window_secs == 0 || oc.incident_max_secs == 0 {
            return Err(
                "oncall.webhook_window_secs and oncall.incident_max_secs must be positive".into(),
            );
        }
        for (name, sync) in [
            ("pagerduty", &oc.pagerduty.sync),
            ("opsgenie", &oc.opsgenie.sync),
        ] {
            if sync.interval_ms < 100 || sync.request_timeout_ms == 0 {
                return Err(format!(
                    "oncall.{name}.sync.interval_ms must be at least 100 and request_timeout_ms positive"
                ));
            }
            // a grace shorter than two rounds would fail closed between good syncs
            if sync.grace_secs.saturating_mul(1000) < sync.interval_ms.saturating_mul(2) {
                return Err(format!(
                    "oncall.{name}.sync.grace_secs must cover at least two sync intervals"
                ));
            }
        }
        Ok(())
    }

    pub fn contracts_address(&self) -> Address {
        // validated in load()
        self.chain.contracts_address.parse().unwrap_or(Address {
            version: 26,
            hash160: [0; 20],
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn the_store_cache_is_given_in_mib() {
        let data = DataSettings {
            dir: PathBuf::from("d"),
            cache_mib: 3,
        };
        assert_eq!(data.store_options().cache_bytes, 3 << 20);
        assert_eq!(
            Settings::default().data.store_options().cache_bytes,
            crate::store::DEFAULT_CACHE_MIB << 20
        );
    }

    // figment::Jail isolates the environment and working directory of each test
    #[test]
    fn defaults_file_then_environment() {
        figment::Jail::expect_with(|jail| {
            let d = Settings::load(None).map_err(|e| *e)?;
            assert_eq!(d.chain.node_url, "http://127.0.0.1:20443");
            assert_eq!(d.follower.max_lag_blocks, 2);
            jail.create_file(
                "b.toml",
                "[chain]\nnode_url = \"http://node:20443\"\n[submitter]\nfee = 7\n",
            )?;
            jail.set_env("BREAKGLASS_SUBMITTER__FEE", "9");
            jail.set_env("BREAKGLASS_SERVICE_KEY", "not a setting, ignored here");
            jail.set_env("BREAKGLASS_LOG", "debug");
            jail.set_env("BREAKGLASS_ISSUANCE__GRANTS_PER_MINUTE", "7");
            jail.set_env("BREAKGLASS_ONCALL__ROSTER", "/etc/roster.toml");
            let s = Settings::load(Some(Path::new("b.toml"))).map_err(|e| *e)?;
            assert_eq!(s.chain.node_url, "http://node:20443");
            assert_eq!(s.submitter.fee, 9);
            // every section can be overridden from the environment
            assert_eq!(s.issuance.grants_per_minute, 7);
            assert_eq!(
                s.oncall.roster.as_deref(),
                Some(Path::new("/etc/roster.toml"))
            );
            Ok(())
        });
    }

    #[test]
    fn a_mainnet_network_needs_a_mainnet_contracts_address() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BREAKGLASS_CHAIN__NETWORK", "mainnet");
            let e = Settings::load(None).unwrap_err();
            assert!(e.to_string().contains("contracts_address"), "{e}");
            jail.set_env(
                "BREAKGLASS_CHAIN__CONTRACTS_ADDRESS",
                "SP000000000000000000002Q6VF78",
            );
            assert_eq!(
                Settings::load(None)
                    .map_err(|e| *e)?
                    .chain
                    .network
                    .chain_id(),
                MAINNET_CHAIN_ID
            );
            Ok(())
        });
    }

    #[test]
    fn paging_sync_settings_that_would_flap_or_spin_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BREAKGLASS_ONCALL__PAGERDUTY__SYNC__INTERVAL_MS", "60000");
            jail.set_env("BREAKGLASS_ONCALL__PAGERDUTY__SYNC__GRACE_SECS", "60");
            let e = Settings::load(None).unwrap_err();
            assert!(e.to_string().contains("two sync intervals"), "{e}");
            jail.set_env("BREAKGLASS_ONCALL__PAGERDUTY__SYNC__GRACE_SECS", "120");
            Settings::load(None).map_err(|e| *e)?;
            jail.set_env("BREAKGLASS_ONCALL__OPSGENIE__SYNC__INTERVAL_MS", "0");
            let e = Settings::load(None).unwrap_err();
            assert!(e.to_string().contains("at least 100"), "{e}");
            jail.set_env("BREAKGLASS_ONCALL__OPSGENIE__SYNC__INTERVAL_MS", "1000");
            jail.set_env("BREAKGLASS_ONCALL__WEBHOOK_WINDOW_SECS", "0");
            let e = Settings::load(None).unwrap_err();
            assert!(e.to_string().contains("webhook_window_secs"), "{e}");
            Ok(())
        });
    }
}

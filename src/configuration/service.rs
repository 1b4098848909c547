//! The service's own sections: its listeners, the data directory and store cache, logs,
//! issuance, policies, the directory and the HTTP clients (resource servers, admins).
//!
//! It must not: hold a secret (clients are configured by the SHA-256 of theirs).

use super::*;

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

/// Checks the clients of section `section` (`resource_servers`, `admin`): each id given once,
/// usable in HTTP Basic (no colon), and each secret's SHA-256 as 64 hex digits. A digest pasted
/// with `sha256sum`'s trailing `  -`, or the secret itself, refused every call of that client
/// as `invalid-client`, and nothing said why.
pub(super) fn validate_clients(
    section: &str,
    clients: &[ResourceServerClient],
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in clients.iter().enumerate() {
        let at = format!("{section}.clients[{i}]");
        if c.id.trim().is_empty() || c.id.contains(':') || c.id != c.id.trim() {
            return Err(format!(
                "{at}.id {:?} must be a name without a colon or surrounding spaces (HTTP Basic sends it before one)",
                c.id
            ));
        }
        if !seen.insert((c.id.as_str(), c.secret_sha256.to_ascii_lowercase())) {
            return Err(format!(
                "{at} is given twice in {section}.clients (id {:?} with the same secret)",
                c.id
            ));
        }
        if c.secret_sha256.len() != 64 || !c.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{at}.secret_sha256 must be the secret's SHA-256 as 64 hex digits (the first field of `printf %s \"$SECRET\" | sha256sum`), not the secret"
            ));
        }
    }
    Ok(())
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

/// The longest `data.redis_wait_ms`: a grant waits 5 s for its durable write
/// (`access::grant::WRITE_WAIT`), and with `WAIT` one group is in flight at a time, so with
/// Redis's replicas away a grant waits for the groups before it, each this long: at 2 s, a
/// grant behind one other is refused `audit-unavailable` (its own write not acknowledged),
/// one behind more `audit-pending` (both 503, no token). Longer, every grant would be.
pub const MAX_REDIS_WAIT_MS: u64 = 2_000;

impl IssuanceSettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.seconds_per_block == 0 || self.grants_per_minute == 0 {
            return Err(
                "issuance.seconds_per_block and issuance.grants_per_minute must be positive".into(),
            );
        }
        for (name, value) in [
            ("issuance.issuer", &self.issuer),
            ("issuance.audience", &self.audience),
        ] {
            if value.trim().is_empty() {
                return Err(format!(
                    "{name} must not be empty: resource servers check it in every token"
                ));
            }
        }
        Ok(())
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
pub struct DataSettings {
    /// The embedded store and generated keys live here.
    pub dir: PathBuf,
    /// The store's page cache, in MiB (`RedbOptions::cache_bytes`): pages read, and pages
    /// written and not yet checkpointed (up to half of it); what the service's memory grows
    /// by under sustained writes.
    pub cache_mib: usize,
    /// The shared store of many replicas (`redis://host:port/db`): when set, the store is
    /// there instead of `breakglass.redb` (keys stay in `dir`). Credentials belong in the
    /// environment (`BREAKGLASS_DATA__REDIS_URL`), not in a file.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Redis Sentinel (`redis://host:port` each, or all `rediss://`: TLS to them): when given,
    /// the primary is the one they name `redis_master` now, followed through failovers, and
    /// `redis_url` gives only its credentials, database and whether it is TLS (its host and
    /// port are not used).
    #[serde(default)]
    pub redis_sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary by.
    #[serde(default)]
    pub redis_master: String,
    /// With a `rediss://` URL or Sentinels (TLS), the certificates (PEM) of the authorities the
    /// servers' certificates are checked against; without it, the system's roots.
    #[serde(default)]
    pub redis_ca_file: Option<PathBuf>,
    /// The prefix of this deployment's keys on that server.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// With replicas: how long a replica's lease on shared work (the chain submitter, the
    /// grants' follow-up, a notice being sent) lasts unless renewed. A crashed replica's chain
    /// writes are taken over by another this long after it stopped, its notices after this or
    /// three SMTP timeouts, the longer; one stopped with SIGTERM lets its leases go at once.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How many of the Redis server's own replicas must have each write before it counts as
    /// done (`WAIT`; 0: the server's synced append-only file is enough). With 1, a failover to
    /// an acknowledging replica loses no grant; while fewer answer, grants are refused (503).
    #[serde(default)]
    pub redis_wait_replicas: u32,
    /// How long a write waits for those replicas before it fails (at most
    /// `MAX_REDIS_WAIT_MS`).
    #[serde(default = "default_redis_wait_ms")]
    pub redis_wait_ms: u64,
}

fn default_redis_wait_ms() -> u64 {
    1_000
}

fn default_lease_ms() -> u64 {
    10_000
}

/// The store in use, and the embedded one when it is that.
pub type OpenStore = (
    std::sync::Arc<dyn crate::store::Store>,
    Option<std::sync::Arc<crate::store::RedbStore>>,
);

fn default_redis_prefix() -> String {
    "breakglass:".into()
}

impl DataSettings {
    /// The shared store's server, when `redis_url` is set.
    pub fn redis_target(&self) -> Option<crate::store::RedisTarget> {
        self.redis_url
            .as_ref()
            .map(|url| crate::store::RedisTarget {
                url: url.clone(),
                sentinels: self.redis_sentinels.clone(),
                master: self.redis_master.clone(),
                ca_file: self.redis_ca_file.clone(),
            })
    }

    /// The store these settings name: Redis when `redis_url` is set, else the embedded store
    /// (with its journal histogram, for `/metrics`).
    pub fn open_store(&self) -> Result<OpenStore, crate::store::StoreError> {
        Ok(match self.redis_target() {
            Some(url) => (
                std::sync::Arc::new(crate::store::RedisStore::open_with(
                    url,
                    &self.redis_prefix,
                    crate::store::Acknowledgement {
                        replicas: self.redis_wait_replicas,
                        timeout_ms: self.redis_wait_ms,
                    },
                )?),
                None,
            ),
            None => {
                let redb = std::sync::Arc::new(crate::store::RedbStore::open_with(
                    &self.dir.join("breakglass.redb"),
                    self.store_options(),
                )?);
                (redb.clone(), Some(redb))
            }
        })
    }

    /// What the replicas agree on beside the store: on the same Redis server when there is
    /// one, else in this process's memory.
    pub fn coordinator(
        &self,
        grants_per_minute: u32,
    ) -> Result<crate::coordination::Coordinator, crate::store::StoreError> {
        use crate::coordination::Coordinator;
        Ok(match self.redis_target() {
            Some(target) => Coordinator::redis(target, &self.redis_prefix, grants_per_minute)?,
            None => Coordinator::local(grants_per_minute),
        })
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !(200..=600_000).contains(&self.lease_ms) {
            return Err(format!(
                "data.lease_ms must be from 200 to 600000 (ms), not {}",
                self.lease_ms
            ));
        }
        // a grant waits `access::grant::WRITE_WAIT` (5 s) for its write, which may wait behind
        // other groups' `WAIT`s (one group is in flight at a time with them)
        if !(10..=MAX_REDIS_WAIT_MS).contains(&self.redis_wait_ms) {
            return Err(format!(
                "data.redis_wait_ms must be from 10 to {MAX_REDIS_WAIT_MS} (ms): a grant waits 5 s for its write, which may wait behind another's; not {}",
                self.redis_wait_ms
            ));
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err("data.redis_url is a redis:// or rediss:// URL".into());
            }
        }
        let tls = self
            .redis_url
            .iter()
            .chain(&self.redis_sentinels)
            .any(|u| u.starts_with("rediss://"));
        // (the URL not repeated: it may hold a password)
        if self
            .redis_url
            .iter()
            .chain(&self.redis_sentinels)
            .any(|u| u.contains("#insecure"))
        {
            return Err("data.redis_url or data.redis_sentinels: a URL asks for no certificate check (#insecure), which is not supported; give the authority in data.redis_ca_file".into());
        }
        if self.redis_ca_file.is_some() && !tls {
            return Err("data.redis_ca_file is for a rediss:// (TLS) data.redis_url or data.redis_sentinels".into());
        }
        if !self.redis_sentinels.is_empty() {
            let to_sentinels = |u: &String| u.starts_with("rediss://");
            if self.redis_sentinels.iter().any(to_sentinels)
                && !self.redis_sentinels.iter().all(to_sentinels)
            {
                return Err("data.redis_sentinels are all rediss:// (TLS) or all redis://".into());
            }
            if self.redis_url.is_none() {
                return Err("data.redis_sentinels needs data.redis_url (the primary's credentials and database)".into());
            }
            if self.redis_master.is_empty() {
                return Err("data.redis_sentinels needs data.redis_master (the name they monitor the primary by)".into());
            }
            if let Some(bad) = self
                .redis_sentinels
                .iter()
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return Err(format!(
                    "data.redis_sentinels are redis:// or rediss:// URLs, not {bad:?}"
                ));
            }
        }
        if !(1..=65_536).contains(&self.cache_mib) {
            return Err(format!(
                "data.cache_mib must be from 1 to 65536 (MiB), not {}",
                self.cache_mib
            ));
        }
        Ok(())
    }
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
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "breakglass=debug,info".
    pub filter: String,
}

impl LogSettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(&self.filter)
            .map(|_| ())
            .map_err(|e| format!("log.filter {:?}: {e}", self.filter))
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line (the default: for log collectors).
    Json,
    /// For a person at a terminal.
    Pretty,
}

//! The chain sections: the node (`chain`), the follower (`follower`) and the submitter
//! (`submitter`).
//!
//! It must not: read the node (these are settings only).

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    /// The stacks-node RPC (a real node, or the devnet).
    pub node_url: url::Url,
    /// "testnet" or "mainnet".
    pub network: Network,
    /// The address that deployed patient-consent and access-control.
    pub contracts_address: Address,
    pub request_timeout_ms: u64,
    /// Retries of a failed read (call-read, info, accounts), with exponential backoff.
    pub read_retries: u32,
}

/// The most retries of a failed read `chain.read_retries` may ask for.
pub const MAX_READ_RETRIES: u32 = 8;

impl ChainSettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        let address = self.contracts_address;
        if address.is_mainnet() != self.network.is_mainnet() {
            return Err(format!(
                "chain.contracts_address {address} is not a {:?} address",
                self.network
            ));
        }
        if !["http", "https"].contains(&self.node_url.scheme()) {
            return Err("chain.node_url must be an http(s) URL".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("chain.request_timeout_ms must be positive".into());
        }
        // each retry waits twice as long as the one before: 8 already wait ~a minute in all
        if self.read_retries > MAX_READ_RETRIES {
            return Err(format!(
                "chain.read_retries ({}) must be at most {MAX_READ_RETRIES}: each retry waits twice the one before, and a grant may wait on a read",
                self.read_retries
            ));
        }
        Ok(())
    }
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

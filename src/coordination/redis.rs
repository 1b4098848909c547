//! The coordination of replicas on their shared Redis server. Leases are small Lua scripts,
//! each one round trip, over the `redis` crate's async connection manager (it reconnects by
//! itself; a command while the server is away fails at once, within its timeout, and the
//! caller sees an error). Nonces and rates are not a round trip of their own: a grant's write
//! takes them (`claim`, `store::Claim`), in the same synced write as its record.
//!
//! Keys, under the store's prefix: `nonces` (a sorted set of used `signer:nonce`, each scored
//! with when the request could no longer be fresh, and forgotten then), `rates` (a hash of each
//! clinician's theoretical arrival time of GCRA, the algorithm `governor` runs for one
//! process: one field per clinician), `lease:<name>` (a hash: holder and fencing token,
//! expiring with the lease) and `fences` (the last token given for each lease name; never
//! expires, so tokens only grow).

use std::num::NonZeroU32;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;

use crate::store::{must_reconnect, Claim, Primary, RedisTarget, StoreError};

/// How long a command may take before the server counts as unreachable.
const TIMEOUT: Duration = Duration::from_millis(1500);

pub struct RedisCoordinator {
    primary: Primary,
    prefix: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    per_minute: u64,
    lease: Script,
    release: Script,
}

fn redis_err(e: ::redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// Takes or renews a lease: its token, or -1 while another holder has it.
const LEASE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'fence')
if cur[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(cur[2])
end
if not cur[1] then
  local f = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', f)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return f
end
return -1
";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisCoordinator {
    pub fn new(
        target: impl Into<RedisTarget>,
        prefix: &str,
        per_minute: NonZeroU32,
    ) -> Result<RedisCoordinator, StoreError> {
        Ok(RedisCoordinator {
            primary: Primary::open(&target.into()).map_err(redis_err)?,
            prefix: prefix.to_string(),
            conn: tokio::sync::Mutex::new(None),
            per_minute: u64::from(per_minute.get()),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
        })
    }

    /// The connection, opened on first use and again after it could not be.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(TIMEOUT))
            .set_connection_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let c = self
            .primary
            .client_async()
            .await
            .map_err(redis_err)?
            .get_connection_manager_with_config(config)
            .await
            .map_err(redis_err)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs a script; after a connection found dropped (the server restarted) or on a server
    /// demoted to a replica (a failover), the connection is opened again, to the primary as
    /// it is now (`store::Primary`), and the script sent once more (a script that ran and
    /// lost its answer errs on the safe side: a lease is renewed by its holder).
    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        match call.invoke_async(&mut c).await {
            Err(e) if must_reconnect(&e) => {
                self.conn.lock().await.take();
                let mut c = self.conn().await?;
                call.invoke_async(&mut c).await.map_err(redis_err)
            }
            answer => answer.map_err(redis_err),
        }
    }

    /// A request's claim on nonce `key` (`signer:nonce`, used until `until`) and on one of
    /// clinician `who`'s grants this minute, for the grant's write to take (`store::Claim`).
    pub fn claim(&self, key: &str, until: u64, who: &str) -> Claim {
        let emission = (60_000 / self.per_minute.max(1)).max(1);
        Claim {
            nonce: key.to_string(),
            until,
            clinician: who.to_string(),
            emission_ms: emission,
            burst_ms: emission * self.per_minute,
        }
    }

    pub(super) async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut call = self.lease.prepare_invoke();
        call.key(crate::store::lease_key(&self.prefix, name))
            .key(format!("{}fences", self.prefix))
            .arg(holder)
            .arg(ttl_ms.max(1))
            .arg(name);
        Ok(u64::try_from(self.invoke::<i64>(&call).await?).ok())
    }

    pub(super) async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut call = self.release.prepare_invoke();
        call.key(crate::store::lease_key(&self.prefix, name))
            .arg(holder);
        self.invoke::<i64>(&call).await.map(|_| ())
    }
}

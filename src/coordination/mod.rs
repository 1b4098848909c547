//! What replicas agree on besides the store's rows: used request nonces, per-clinician rate
//! limits, and leases (one holder at a time, each grant of a lease with a fencing token that a
//! later grant exceeds). One process on the embedded store keeps them in memory (`Local`: a
//! request's nonce and rate are taken before its write); replicas sharing a Redis server keep
//! them there (`Redis`: a request's nonce and rate are a `store::Claim` its grant's write
//! takes, atomically and in the same synced write), so a nonce used on one replica is refused
//! on every other, a clinician's rate counts across all of them, and one replica at a time
//! holds the chain submitter's lease or a notice's.
//!
//! Reviewers' sign-in challenges and sessions are kept the same way (in memory, or on Redis
//! with an expiry), so that a reviewer moves between replicas without signing in again.
//!
//! A lease's fencing token goes with the holder's writes (`store::Guard`): the store refuses a
//! write whose token is no longer the lease's, so a holder that was paused past its lease (and
//! replaced) cannot write, or sign and broadcast, with what it read before.
//!
//! It must not: answer "fresh" for a nonce it could not record, or grant a lease it could not
//! record (an unreachable server is an error, never a yes).

mod local;
mod redis;
mod seen;

use std::num::NonZeroU32;

pub use self::redis::RedisCoordinator;
use crate::store::StoreError;
pub use local::Local;

pub enum Coordinator {
    Local(Local),
    Redis(RedisCoordinator),
}

impl Coordinator {
    /// In memory, for one process; `grants_per_minute` per clinician.
    pub fn local(grants_per_minute: u32) -> Coordinator {
        Coordinator::Local(Local::new(per_minute(grants_per_minute)))
    }

    /// On the Redis server at `url`, under the store's `prefix`.
    pub fn redis(
        url: impl Into<crate::store::RedisTarget>,
        prefix: &str,
        grants_per_minute: u32,
    ) -> Result<Coordinator, StoreError> {
        Ok(Coordinator::Redis(RedisCoordinator::new(
            url,
            prefix,
            per_minute(grants_per_minute),
        )?))
    }

    /// Whether other processes share it.
    pub fn is_shared(&self) -> bool {
        matches!(self, Coordinator::Redis(_))
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms`: its fencing token, or `None`
    /// while another holder has it.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.lease(name, holder, ttl_ms)),
            Coordinator::Redis(r) => r.lease(name, holder, ttl_ms).await,
        }
    }

    /// Lets lease `name` go, if `holder` has it.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.release(name, holder);
                Ok(())
            }
            Coordinator::Redis(r) => r.release(name, holder).await,
        }
    }
}

/// A reviewer's open session as replicas share it (`review::Session`): who signed in, the
/// CSRF token of its forms, and when it opened (unix ms). Kept under the SHA-256 of its cookie's
/// token (hex), never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub reviewer: String,
    pub csrf: String,
    pub created_ms: u64,
}

/// Reviewers' spent sign-in challenges and sessions: in this process's memory (`Local`), or on
/// Redis, so that a reviewer signed in on one replica is signed in on all, and a challenge handed
/// out by one can be signed in with on another, once.
impl Coordinator {
    /// Spends sign-in challenge `nonce` (hex), good until `until` (unix s): whether it was
    /// unspent (once only, on every replica). Challenges are not kept when handed out (they
    /// carry their own proof, `review::Review::challenge`); only a spent one is, until it could
    /// no longer be used anyway.
    pub async fn spend_challenge(&self, nonce: &str, until: u64) -> Result<bool, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.spend_challenge(nonce, until)),
            Coordinator::Redis(r) => r.spend_challenge(nonce, until).await,
        }
    }

    /// Opens session `key` for at most `idle_ms` unused and `max_ms` in all.
    pub async fn open_session(
        &self,
        key: &str,
        session: &OpenSession,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.open_session(key, session);
                Ok(())
            }
            Coordinator::Redis(r) => r.open_session(key, session, idle_ms.min(max_ms)).await,
        }
    }

    /// Session `key`, if it is open, kept from idling out for `idle_ms` more (never past
    /// `max_ms` after it opened).
    pub async fn touch_session(
        &self,
        key: &str,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<Option<OpenSession>, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.touch_session(key, idle_ms, max_ms)),
            Coordinator::Redis(r) => r.touch_session(key, idle_ms, max_ms).await,
        }
    }

    /// Ends session `key`.
    pub async fn end_session(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.end_session(key);
                Ok(())
            }
            Coordinator::Redis(r) => r.end_session(key).await,
        }
    }
}

fn per_minute(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Who this process is among the replicas, for leases and logs: host name, process id and a
/// random part drawn once per process (`host:pid:random`). Host and pid alone do not tell two
/// replicas apart: containers given the same host name each run the service as pid 1, and a
/// lease held by one would be renewed by the other, the same fencing token in both.
pub fn replica_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let run: u32 = secp256k1::rand::random();
        format!("{host}:{}:{run:08x}", std::process::id())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::replica_id;

    #[test]
    fn a_replica_is_named_by_host_pid_and_a_random_part_drawn_once() {
        let id = replica_id();
        let parts: Vec<&str> = id.rsplitn(3, ':').collect();
        let [random, pid, host] = parts[..] else {
            panic!("{id} is not host:pid:random");
        };
        assert!(!host.is_empty());
        assert_eq!(pid, std::process::id().to_string());
        // two containers with the same host name, each the service as pid 1, still differ
        assert_eq!(random.len(), 8);
        assert!(u32::from_str_radix(random, 16).is_ok());
        assert_eq!(replica_id(), id, "the same for the whole process");
    }
}

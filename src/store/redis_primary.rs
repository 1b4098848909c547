//! Where the shared store's Redis primary is: a fixed address (`data.redis_url`), or the one
//! Redis Sentinel names now (`data.redis_sentinels`, the primary's name `data.redis_master`),
//! so that after a failover every new connection goes to the promoted replica. Connections
//! are opened again (and the primary asked for again) when one drops or finds its server
//! demoted to a replica (`READONLY`): `must_reconnect`.
//!
//! It must not: cache an address across a reconnect when Sentinel is in use.

use std::sync::Arc;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, RedisError, RedisResult};

/// What the operator configured: the server's URL and, with Sentinel, where they are and the
/// name they know the primary by (the URL then gives only the primary's credentials and
/// database: its host and port are not used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: String,
    pub sentinels: Vec<String>,
    pub master: String,
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_string(),
            sentinels: Vec::new(),
            master: String::new(),
        }
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> RedisTarget {
        RedisTarget::from(url.as_str())
    }
}

impl From<&RedisTarget> for RedisTarget {
    fn from(target: &RedisTarget) -> RedisTarget {
        target.clone()
    }
}

/// A `RedisTarget`, opened: clients for the primary as it is now.
#[derive(Clone)]
pub struct Primary(Arc<Source>);

enum Source {
    Fixed(Client),
    Sentinel(Box<Sentinels>),
}

/// One client for blocking callers and one for tasks (each asks the Sentinels in its own way,
/// and holds its own connections to them).
struct Sentinels {
    blocking: std::sync::Mutex<SentinelClient>,
    tasks: tokio::sync::Mutex<SentinelClient>,
}

fn sentinel_client(target: &RedisTarget) -> RedisResult<SentinelClient> {
    let primary = target.url.as_str().into_connection_info()?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(primary.redis_settings().clone());
    SentinelClient::build(
        target.sentinels.clone(),
        target.master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

impl Primary {
    pub fn open(target: &RedisTarget) -> RedisResult<Primary> {
        let source = if target.sentinels.is_empty() {
            Source::Fixed(Client::open(target.url.as_str())?)
        } else {
            Source::Sentinel(Box::new(Sentinels {
                blocking: std::sync::Mutex::new(sentinel_client(target)?),
                tasks: tokio::sync::Mutex::new(sentinel_client(target)?),
            }))
        };
        Ok(Primary(Arc::new(source)))
    }

    /// A client for the primary, for a blocking caller (Sentinel asked now).
    pub fn client(&self) -> RedisResult<Client> {
        match self.0.as_ref() {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Sentinel(s) => s
                .blocking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_client(),
        }
    }

    /// A client for the primary, for a task (Sentinel asked now).
    pub async fn client_async(&self) -> RedisResult<Client> {
        match self.0.as_ref() {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Sentinel(s) => s.tasks.lock().await.async_get_client().await,
        }
    }
}

/// Whether a command's connection must be opened again before the next: it dropped, or its
/// server is a replica now (a failover demoted it), or it could not be made.
pub fn must_reconnect(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

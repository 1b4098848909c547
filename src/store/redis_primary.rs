//! Where the shared store's Redis primary is: a fixed address (`data.redis_url`), or the one
//! Redis Sentinel names now (`data.redis_sentinels`, the primary's name `data.redis_master`),
//! so that after a failover every new connection goes to the promoted replica. Connections
//! are opened again (and the primary asked for again) when one drops or finds its server
//! demoted to a replica (`READONLY`): `must_reconnect`.
//!
//! It must not: cache an address across a reconnect when Sentinel is in use.

use std::sync::Arc;

use redis::sentinel::{
    SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType,
};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult, TlsMode};

/// What the operator configured: the server's URL and, with Sentinel, where they are and the
/// name they know the primary by (the URL then gives only the primary's credentials and
/// database, and whether it is TLS: its host and port are not used). A `rediss://` URL is TLS
/// (rustls), the server's certificate checked against `ca_file` (PEM: the certificates of the
/// authorities to trust) when given, else against the system's roots; so are `rediss://`
/// Sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: String,
    pub sentinels: Vec<String>,
    pub master: String,
    pub ca_file: Option<std::path::PathBuf>,
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_string(),
            sentinels: Vec::new(),
            master: String::new(),
            ca_file: None,
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

/// The certificates (PEM) in `file`, `data.redis_ca_file`: an error naming it when it cannot
/// be read or holds none (a key, a DER file, an empty one), rather than every connection
/// failing later on a certificate it does not name.
fn authorities(file: &std::path::Path) -> RedisResult<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let named = |why: String| -> RedisError {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("data.redis_ca_file {}: {why}", file.display()),
        )
        .into()
    };
    let pem = std::fs::read(file).map_err(|e| named(e.to_string()))?;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(e.to_string()))?;
    if certificates.is_empty() {
        return Err(named("no PEM certificate in it".into()));
    }
    Ok(pem)
}

/// A `RedisTarget`, opened: clients for the primary as it is now.
#[derive(Clone)]
pub struct Primary(Arc<Source>);

enum Source {
    Fixed(Box<Client>),
    Sentinel(Box<Sentinels>),
}

/// The Sentinels' client, with its connections to them. Blocking callers ask through it too
/// (`Primary::client`): the crate's blocking lookup sets no timeout on its connections (to the
/// Sentinels, and to the primary they name for its `ROLE`), so a silent host held a store read,
/// and every read waiting for a connection behind it, for the system's TCP timeouts (minutes).
struct Sentinels {
    tasks: tokio::sync::Mutex<SentinelClient>,
}

/// How long a blocking caller waits at most for the primary's address from the Sentinels
/// (the lookup's own connections time out sooner: 1 s to connect, 500 ms an answer).
pub(super) const LOOKUP_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3);

/// The TLS mode of a connection to `addr`, if it is TLS (`rediss://`): the certificate always
/// checked (the configuration refuses `#insecure`, which this build cannot connect with).
fn tls_mode(addr: &ConnectionAddr) -> Option<TlsMode> {
    matches!(addr, ConnectionAddr::TcpTls { .. }).then_some(TlsMode::Secure)
}

/// The Sentinels' client: their URLs (`rediss://`: TLS to them), and the primary's connections
/// made as `data.redis_url` says (its credentials and database; `rediss://`: TLS to the
/// primary each names). Certificates are checked against `ca_file` when given, else the
/// system's roots.
fn sentinel_client(target: &RedisTarget) -> RedisResult<SentinelClient> {
    let primary = target.url.as_str().into_connection_info()?;
    let to_primary = tls_mode(primary.addr());
    let Some(file) = &target.ca_file else {
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(primary.redis_settings().clone());
        if let Some(mode) = to_primary {
            node = node.set_tls_mode(mode);
        }
        return SentinelClient::build(
            target.sentinels.clone(),
            target.master.clone(),
            Some(node),
            SentinelServerType::Master,
        );
    };
    // authorities of its own: the crate takes them only through its builder, which gives
    // every Sentinel the same credentials
    let root_cert = authorities(file)?;
    let certificates = || redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert.clone()),
    };
    let sentinels = target
        .sentinels
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?;
    let first = sentinels.first().map(|s| s.redis_settings());
    fn credentials(s: &redis::RedisConnectionInfo) -> (Option<&str>, Option<&str>) {
        (s.username(), s.password())
    }
    if sentinels
        .iter()
        .any(|s| first.map(credentials) != Some(credentials(s.redis_settings())))
    {
        return Err(invalid(
            "data.redis_sentinels: with data.redis_ca_file, every Sentinel takes the same user and password",
        ));
    }
    let settings = primary.redis_settings();
    let mut builder = SentinelClientBuilder::new(
        sentinels.iter().map(|s| s.addr().clone()),
        &target.master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_db(settings.db())
    .set_client_to_redis_protocol(settings.protocol());
    if let Some(user) = settings.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(mode) = to_primary {
        builder = builder
            .set_client_to_redis_tls_mode(mode)
            .set_client_to_redis_certificates(certificates());
    }
    if let Some(s) = first {
        if let Some(user) = s.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = s.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    // (the configuration takes the Sentinels all `rediss://` or all `redis://`)
    if sentinels.iter().any(|s| tls_mode(s.addr()).is_some()) {
        builder = builder.set_client_to_sentinel_certificates(certificates());
    }
    builder.build()
}

/// An error in what the operator configured.
fn invalid(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, why))
}

impl Primary {
    pub fn open(target: &RedisTarget) -> RedisResult<Primary> {
        let source = if target.sentinels.is_empty() {
            Source::Fixed(Box::new(match &target.ca_file {
                Some(file) => {
                    let root_cert = authorities(file)?;
                    Client::build_with_tls(
                        target.url.as_str(),
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(root_cert),
                        },
                    )?
                }
                None => Client::open(target.url.as_str())?,
            }))
        } else {
            Source::Sentinel(Box::new(Sentinels {
                tasks: tokio::sync::Mutex::new(sentinel_client(target)?),
            }))
        };
        Ok(Primary(Arc::new(source)))
    }

    /// A client for the primary, for a blocking caller (Sentinel asked now, on a thread of its
    /// own: the caller may be on a runtime's thread; within `LOOKUP_AT_MOST`, else an error).
    pub fn client(&self) -> RedisResult<Client> {
        if let Source::Fixed(c) = self.0.as_ref() {
            return Ok(c.as_ref().clone());
        }
        let timed_out = || -> RedisError {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the Sentinels did not name the primary in time",
            )
            .into()
        };
        let primary = self.clone();
        let (found, answer) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("redis-sentinel".into())
            .spawn(move || {
                let client = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(RedisError::from)
                    .and_then(|runtime| {
                        runtime.block_on(async {
                            tokio::time::timeout(LOOKUP_AT_MOST, primary.client_async())
                                .await
                                .unwrap_or_else(|_| Err(timed_out()))
                        })
                    });
                let _ = found.send(client);
            })?;
        answer
            .recv_timeout(LOOKUP_AT_MOST + std::time::Duration::from_millis(500))
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// A client for the primary, for a task (Sentinel asked now).
    pub async fn client_async(&self) -> RedisResult<Client> {
        match self.0.as_ref() {
            Source::Fixed(c) => Ok(c.as_ref().clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With a CA file, the crate gives every Sentinel one user and password: Sentinels that
    /// take different ones are refused at open, saying so (not connected to with the first's).
    #[test]
    fn sentinels_over_tls_with_a_ca_file_share_their_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let target = |second: &str| RedisTarget {
            url: "rediss://:pw@127.0.0.1:1/0".into(),
            sentinels: vec!["rediss://:a@127.0.0.1:2/".into(), second.into()],
            master: "bg".into(),
            ca_file: Some(ca.clone()),
        };
        let refused = Primary::open(&target("rediss://:b@127.0.0.1:3/"))
            .err()
            .expect("two passwords");
        assert!(
            refused.to_string().contains("same user and password"),
            "{refused}"
        );
        assert!(Primary::open(&target("rediss://:a@127.0.0.1:3/")).is_ok());
    }

    /// A Sentinel whose host takes connections and then says nothing (hung, or a partition
    /// after the connect): a blocking caller asking it for the primary gets an error within
    /// seconds. Before, the crate's blocking lookup waited on it without a timeout, holding a
    /// store read, and every read queued behind it, for the system's TCP timeouts.
    #[test]
    fn a_silent_sentinel_does_not_hold_a_blocking_caller() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        // accepted (by the kernel's backlog) and never answered
        let primary = Primary::open(&RedisTarget {
            url: "redis://127.0.0.1:1/0".into(),
            sentinels: vec![format!("redis://127.0.0.1:{port}/")],
            master: "breakglass".into(),
            ca_file: None,
        })
        .unwrap();
        let (done, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(primary.client().map(|_| ()));
        });
        let got = answer
            .recv_timeout(LOOKUP_AT_MOST + std::time::Duration::from_secs(5))
            .expect("answered within seconds");
        assert!(got.is_err(), "no primary named");
        drop(silent);
    }
}

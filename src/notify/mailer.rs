//! Where notices go: an SMTP server (STARTTLS, implicit TLS or plain for a local relay; AUTH
//! with the password from `BREAKGLASS_SMTP_PASSWORD`), or `.eml` files in `data.dir/outbox`
//! for development. Failures are sorted into permanent (dead-letter) and transient (retry).
//! A send to an SMTP server ends within `notify.smtp.timeout_secs`, whatever the server does
//! (the client's own timeout covers its connect only): a notice's lease, one timeout more than
//! its recipients' sends (each sent to alone), outlasts them.
//!
//! It must not: render or decide (it sends the stored bytes).

use std::path::Path;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::message::Rendered;
use crate::configuration::{MailTransport, NotifySettings, SmtpTls};

pub const SMTP_PASSWORD_ENV: &str = "BREAKGLASS_SMTP_PASSWORD";

pub enum Mailer {
    /// The transport, and how long a send may take in all.
    Smtp(AsyncSmtpTransport<Tokio1Executor>, Duration),
    File(AsyncFileTransport<Tokio1Executor>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Will not succeed by retrying (5xx, a malformed address).
    Permanent(String),
    /// Might succeed later (4xx, connection refused, timeout, I/O).
    Transient(String),
}

impl Mailer {
    pub fn from_settings(s: &NotifySettings, data_dir: &Path) -> anyhow::Result<Mailer> {
        Ok(match s.transport {
            MailTransport::File => {
                let dir = data_dir.join("outbox");
                std::fs::create_dir_all(&dir)?;
                Mailer::File(AsyncFileTransport::new(dir))
            }
            MailTransport::Smtp => {
                let smtp = &s.smtp;
                let deadline = Duration::from_secs(smtp.timeout_secs);
                let mut b = match smtp.tls {
                    SmtpTls::None => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                    }
                    SmtpTls::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?
                    }
                    SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
                }
                .port(smtp.port)
                .timeout(Some(deadline));
                if let Some(user) = &smtp.username {
                    let password = std::env::var(SMTP_PASSWORD_ENV).map_err(|_| {
                        anyhow::anyhow!(
                            "notify.smtp.username is set: {SMTP_PASSWORD_ENV} must be too"
                        )
                    })?;
                    b = b.credentials(Credentials::new(user.clone(), password));
                }
                Mailer::Smtp(b.build(), deadline)
            }
        })
    }

    /// Sends `m`'s bytes to `to` (one of its recipients, or all).
    pub async fn send(&self, m: &Rendered, to: &[&str]) -> Result<(), SendError> {
        let to = to
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SendError::Permanent(format!("bad recipient address: {e}")))?;
        let from = m
            .from
            .parse()
            .map_err(|e| SendError::Permanent(format!("bad sender address: {e}")))?;
        let envelope = Envelope::new(Some(from), to)
            .map_err(|e| SendError::Permanent(format!("bad envelope: {e}")))?;
        match self {
            // a server that stops answering after the connect (a tarpit, a stalled relay) would
            // hold the send, and the notice's lease with it, for as long as the connection
            // lasts: the send is dropped at the deadline, its connection closed (the client
            // keeps no pool). The message may still have been taken: sent again, it can
            // arrive twice, as the same message
            Mailer::Smtp(t, deadline) => {
                match tokio::time::timeout(*deadline, t.send_raw(&envelope, &m.raw)).await {
                    Err(_) => Err(SendError::Transient(format!(
                        "the SMTP server did not finish the send within {} s",
                        deadline.as_secs()
                    ))),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
                    Ok(Err(e)) => Err(SendError::Transient(e.to_string())),
                }
            }
            Mailer::File(t) => t
                .send_raw(&envelope, &m.raw)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}

//! Where notices go: an SMTP server (STARTTLS, implicit TLS or plain for a local relay; AUTH
//! with the password from `BREAKGLASS_SMTP_PASSWORD`), or `.eml` files in `data.dir/outbox`
//! for development. Failures are sorted into permanent (dead-letter) and transient (retry).
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
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
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
                .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
                if let Some(user) = &smtp.username {
                    let password = std::env::var(SMTP_PASSWORD_ENV).map_err(|_| {
                        anyhow::anyhow!(
                            "notify.smtp.username is set: {SMTP_PASSWORD_ENV} must be too"
                        )
                    })?;
                    b = b.credentials(Credentials::new(user.clone(), password));
                }
                Mailer::Smtp(b.build())
            }
        })
    }

    pub async fn send(&self, m: &Rendered) -> Result<(), SendError> {
        let to =
            m.to.iter()
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
            Mailer::Smtp(t) => t
                .send_raw(&envelope, &m.raw)
                .await
                .map(|_| ())
                .map_err(|e| {
                    if e.is_permanent() {
                        SendError::Permanent(e.to_string())
                    } else {
                        SendError::Transient(e.to_string())
                    }
                }),
            Mailer::File(t) => t
                .send_raw(&envelope, &m.raw)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}

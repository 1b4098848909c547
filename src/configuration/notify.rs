//! The patient notice section (`notify`): how notices are sent (SMTP or a dev folder) and
//! retried.
//!
//! It must not: hold a secret in the TOML file (the SMTP password comes from the environment).

use super::*;

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
    /// How long after it is due a notice waits for its access's chain record: then it goes
    /// out saying the record is not confirmed yet (the patient is not kept waiting on the
    /// chain). 0: a notice never waits for the chain.
    pub chain_wait_hours: u64,
}

impl NotifySettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(format!("notify.from {:?} is not a mailbox", self.from));
        }
        for (name, value) in [
            ("notify.retry_initial_secs", self.retry_initial_secs),
            ("notify.poll_interval_ms", self.poll_interval_ms),
            ("notify.smtp.timeout_secs", self.smtp.timeout_secs),
            // (0 would dead-letter a notice at its first failure, a relay restarting say)
            ("notify.give_up_after_hours", self.give_up_after_hours),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        let host = self.smtp.host.trim_matches(|c| c == '[' || c == ']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if self.transport == MailTransport::Smtp
            && self.smtp.username.is_some()
            && self.smtp.tls == SmtpTls::None
            && !loopback
        {
            return Err(format!(
                "notify.smtp.username is set with notify.smtp.tls = \"none\" to {}: the password would cross the network in the clear (use \"starttls\" or \"implicit\")",
                self.smtp.host
            ));
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err(format!(
                "notify.retry_max_secs ({}) must be at least notify.retry_initial_secs ({})",
                self.retry_max_secs, self.retry_initial_secs
            ));
        }
        Ok(())
    }
}

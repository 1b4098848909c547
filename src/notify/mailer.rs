//! Where notices go: an SMTP server (STARTTLS, implicit TLS or plain for a local relay; AUTH
//! with the password from `BREAKGLASS_SMTP_PASSWORD`), or `.eml` files in `data.dir/outbox`
//! for development. Failures are sorted into permanent (dead-letter) and transient (retry): a
//! reply is permanent only when it refuses the recipient's mailbox (`refuses_mailbox`); every
//! other failure, 5xx replies about the service's own setup included (authentication, a sender
//! or relay refused by policy), is retried until `notify.give_up_after_hours`, so that a
//! rotated password does not dead-letter every notice sent meanwhile.
//! A send to an SMTP server ends within `notify.smtp.timeout_secs`, whatever the server does
//! (the client's own timeout covers its connect only): a notice's lease, one timeout more than
//! its recipients' sends (each sent to alone), outlasts them.
//!
//! It must not: render or decide (it sends the stored bytes).

use std::os::unix::fs::PermissionsExt;
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
                // the messages in the clear, as a mailbox holds them: the service's user's alone
                let dir = data_dir.join("outbox");
                std::fs::create_dir_all(&dir)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
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
        let to_names = to;
        let to = to
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SendError::Permanent(format!("bad recipient address: {e}")))?;
        let from = m
            .from
            .parse()
            .map_err(|e| SendError::Permanent(format!("bad sender address: {e}")))?;
        let raw = addressed(&m.raw, &to);
        let envelope = Envelope::new(Some(from), to)
            .map_err(|e| SendError::Permanent(format!("bad envelope: {e}")))?;
        match self {
            // a server that stops answering after the connect (a tarpit, a stalled relay) would
            // hold the send, and the notice's lease with it, for as long as the connection
            // lasts: the send is dropped at the deadline, its connection closed (the client
            // keeps no pool). The message may still have been taken: sent again, it can
            // arrive twice, as the same message
            Mailer::Smtp(t, deadline) => {
                match tokio::time::timeout(*deadline, t.send_raw(&envelope, &raw)).await {
                    Err(_) => Err(SendError::Transient(format!(
                        "the SMTP server did not finish the send within {} s",
                        deadline.as_secs()
                    ))),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if refuses_mailbox(&e, to_names, &m.from) => {
                        Err(SendError::Permanent(e.to_string()))
                    }
                    Ok(Err(e)) => Err(SendError::Transient(e.to_string())),
                }
            }
            Mailer::File(t) => t
                .send_raw(&envelope, &raw)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}

/// A notice's bytes as `to` receive them: with a `To:` header naming them alone (a notice is
/// stored without one, so that the patient and their delegate do not see each other's
/// address). One stored with its own `To:` (before) has it replaced, folded lines and all.
fn addressed<'a>(raw: &'a [u8], to: &[lettre::Address]) -> std::borrow::Cow<'a, [u8]> {
    if to.is_empty() {
        return std::borrow::Cow::Borrowed(raw);
    }
    let names: Vec<String> = to.iter().map(ToString::to_string).collect();
    let mut out = format!("To: {}\r\n", names.join(", ")).into_bytes();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |end| end + 2);
    let mut in_to = false;
    for line in raw[..end].split_inclusive(|b| *b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        in_to = if folded {
            in_to
        } else {
            line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"to:")
        };
        if !in_to {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&raw[end..]);
    std::borrow::Cow::Owned(out)
}

/// Whether an SMTP failure refuses the recipient's mailbox for good (`refuses`, over the
/// reply's code and text).
fn refuses_mailbox(e: &lettre::transport::smtp::Error, recipients: &[&str], sender: &str) -> bool {
    e.status()
        .filter(|_| e.is_permanent())
        .is_some_and(|code| refuses(u16::from(code), &e.to_string(), recipients, sender))
}

/// Whether a reply (`code`, `text`) refuses the recipient's mailbox for good. The client does
/// not say which command was refused, so the reply must: a 5xx of the mailbox kind (550
/// unavailable, 551 not local, 552 over its storage, 553 name not allowed), not a policy's or
/// the sender's by its enhanced status code (RFC 3463: `5.7.x` relaying denied, blocked;
/// `5.1.0`, `5.1.7`, `5.1.8` the sender's address), that names the recipient (each is sent to
/// alone) and not the sender, or else whose enhanced code is the recipient's: an addressing
/// one (`5.1.1`-`5.1.6`, `5.1.10`), a mailbox one (`5.2.x`), or the "recipient rejected" some
/// servers give as 550 `5.4.1` and `5.5.0`. Anything else is the service's setup or the
/// server's (a refused login, 530, 534, 535; 500-504; 554; a 550 that names nothing):
/// retried until the notice gives up.
fn refuses(code: u16, text: &str, recipients: &[&str], sender: &str) -> bool {
    if !matches!(code, 550..=553) {
        return false;
    }
    let enhanced = enhanced_code(text);
    if matches!(enhanced, Some((7, _)) | Some((1, 0 | 7 | 8))) {
        return false;
    }
    let (to_named, from_named) = (
        recipients.iter().any(|r| names(text, r)),
        names(text, sender),
    );
    if to_named && !from_named {
        return true;
    }
    match enhanced {
        Some((1, detail)) => matches!(detail, 1..=6 | 10),
        Some((2, _)) => true,
        Some((4, 1)) | Some((5, 0)) => code == 550,
        _ => false,
    }
}

/// Whether `text` names `address` whole (in any ASCII case): not as part of a longer address
/// (`notices@h` is not named by `patient.notices@h`).
fn names(text: &str, address: &str) -> bool {
    if address.is_empty() {
        return false;
    }
    let (lower, needle) = (text.to_ascii_lowercase(), address.to_ascii_lowercase());
    let part = |b: u8| b.is_ascii_alphanumeric() || b"._%+-@".contains(&b);
    let bytes = lower.as_bytes();
    lower.match_indices(&needle).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let end = i + needle.len();
        // (a full stop after it ends a sentence, not the address)
        let after = bytes.get(end).copied();
        let after_next = bytes.get(end + 1).copied();
        !before.is_some_and(part)
            && match after {
                None => true,
                Some(b'.') => !after_next.is_some_and(|b| b.is_ascii_alphanumeric()),
                Some(b) => !part(b),
            }
    })
}

/// The first enhanced status code `5.x.y` in a reply's text, as (x, y).
fn enhanced_code(text: &str) -> Option<(u16, u16)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find_map(|word| {
            let mut parts = word.split('.');
            let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
            if class != "5" || parts.next().is_some() || subject.len() > 3 || detail.len() > 3 {
                return None;
            }
            Some((subject.parse().ok()?, detail.parse().ok()?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy names its recipient alone; a message stored with its own `To:` (before notices
    /// were stored without one) has it replaced: the patient and the delegate saw each other.
    #[test]
    fn each_copy_is_addressed_to_its_recipient_alone() {
        let ana: lettre::Address = "ana@example.org".parse().unwrap();
        let raw = b"From: p@h.example\r\nSubject: x\r\n\r\nbody with\r\nTo: not a header\r\n";
        let sent = addressed(raw, std::slice::from_ref(&ana));
        assert!(sent.starts_with(b"To: ana@example.org\r\nFrom: "));
        assert!(sent.ends_with(raw));
        // one stored with its own `To:` naming both (folded) has it replaced
        let old = b"From: p@h.example\r\nTO: ana@example.org,\r\n bo@example.org\r\nSubject: x\r\n\r\nbody\r\nTo: y\r\n";
        assert_eq!(
            &*addressed(old, &[ana]),
            &b"To: ana@example.org\r\nFrom: p@h.example\r\nSubject: x\r\n\r\nbody\r\nTo: y\r\n"[..]
        );
    }

    /// Only a refusal of the recipient's mailbox is for good: one naming the recipient, or,
    /// naming neither address, with a recipient's enhanced code; one naming the sender, a
    /// policy's, or a bare 550 is retried.
    #[test]
    fn only_a_refusal_of_the_recipients_mailbox_is_for_good() {
        let (to, from) = (["ana@example.org"], "notices@hospital.example");
        let r = |code, text: &str| refuses(code, text, &to, from);
        // the recipient's
        assert!(r(
            550,
            "permanent error (550): 5.1.1 <Ana@Example.org>: mailbox unavailable"
        ));
        assert!(r(
            550,
            "permanent error (550): <ana@example.org> no such user"
        ));
        assert!(r(550, "permanent error (550): 5.1.1 user unknown"));
        assert!(r(552, "permanent error (552): 5.2.2 mailbox full"));
        assert!(r(
            550,
            "permanent error (550): 5.5.0 Requested action not taken: mailbox unavailable"
        ));
        assert!(r(
            550,
            "permanent error (550): 5.4.1 Recipient address rejected: Access denied"
        ));
        // the sender's, the server's, or the service's setup
        assert!(!r(
            553,
            "permanent error (553): 5.7.1 <notices@hospital.example>: Sender address rejected"
        ));
        assert!(!r(
            550,
            "permanent error (550): 5.1.0 <notices@hospital.example>: Sender address rejected"
        ));
        assert!(!r(
            550,
            "permanent error (550): 5.1.0 Sender address rejected"
        ));
        assert!(!r(553, "permanent error (553): 5.1.8 bad sender domain"));
        assert!(!r(550, "permanent error (550): relay not permitted"));
        assert!(!r(550, "permanent error (550): Administrative prohibition"));
        assert!(!r(
            550,
            "permanent error (550): 5.7.1 Service unavailable; client host blocked"
        ));
        assert!(!r(
            535,
            "permanent error (535): 5.7.8 Authentication credentials invalid"
        ));
        assert!(!r(
            554,
            "permanent error (554): 5.0.0 transaction failed <ana@example.org>"
        ));
        assert!(!r(552, "permanent error (552): 5.3.4 message too big"));
        // a policy's refusal quoting the recipient is still the policy's
        assert!(!r(
            550,
            "permanent error (550): 5.7.1 <ana@example.org>... Relaying denied"
        ));
        assert!(!r(
            550,
            "permanent error (550): 5.7.1 message to ana@example.org blocked as spam"
        ));
        // an address is named whole: the recipient inside a longer address is not it
        assert!(!r(550, "permanent error (550): <xana@example.org> unknown"));
        assert!(r(550, "permanent error (550): mailbox ana@example.org."));
        let r2 = |text: &str| {
            refuses(
                550,
                text,
                &["patient.notices@h.example"],
                "notices@h.example",
            )
        };
        assert!(r2(
            "permanent error (550): <patient.notices@h.example> no such user"
        ));
    }

    #[test]
    fn the_enhanced_code_of_a_reply_is_found_in_its_text() {
        assert_eq!(
            enhanced_code("permanent error (550): 5.1.1 <a@b>: mailbox unavailable"),
            Some((1, 1))
        );
        assert_eq!(
            enhanced_code("permanent error (553): 5.7.1 sender not allowed"),
            Some((7, 1))
        );
        assert_eq!(
            enhanced_code("permanent error (550): mailbox unavailable"),
            None
        );
        // an address's digits or a version are not a code
        assert_eq!(
            enhanced_code("permanent error (550): <u5.1@x.example> 1.2.3 gone"),
            None
        );
        assert_eq!(enhanced_code("permanent error (550) 5.1.10.2"), None);
    }
}

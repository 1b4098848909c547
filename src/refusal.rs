//! A refusal: what the service answers when it will not do what was asked. An HTTP status, a
//! stable machine-readable code, a title and a sentence for the person who asked; rendered as
//! RFC 9457 problem details by `http::problem`. The grant path, the admin and paging endpoints
//! all refuse this way.
//!
//! It must not: carry protected health information (a refusal is logged and counted).

/// A refusal: an HTTP status, a stable code and a sentence for the clinician.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
}

impl Refusal {
    /// Whether the access was recorded although the answer is a refusal (no token could be
    /// signed after the durable write), or may yet be (its write did not answer in time): the
    /// only refusals that use the request's nonce up.
    pub fn recorded(&self) -> bool {
        matches!(self.code, "token-unavailable" | "audit-pending")
    }

    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Refusal {
        Refusal {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }
}

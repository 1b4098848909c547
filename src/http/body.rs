//! Request bodies read as they arrive, up to a bound and in time (`bounded`): a body that
//! declares a length past it (`Content-Length`) is refused before any of it is read, and one
//! that runs past it before the rest is read; never buffered whole first (a `web::Bytes`
//! extractor reads up to its limit before the handler runs, credentials unchecked).
//!
//! It must not: decide what a refusal says (each caller names its own code).

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// The connection failed while it was read.
    Unreadable,
    /// It is longer than the bound.
    TooLarge,
    /// It did not arrive in time (`bounded`).
    TooSlow,
}

/// How long a body may take to arrive, from when it is first read, beyond its bytes at
/// `BODY_MIN_RATE`: a client that declares a length and sends part of it (or none) holds its
/// connection and its buffer no longer (a 16 KiB request 10 s, a 16 MiB import ~4.5 min).
pub const BODY_SECS: u64 = 10;
/// The slowest a body of the largest size a request may have is let arrive, bytes a second.
pub const BODY_MIN_RATE: u64 = 64 * 1024;

/// Why a form was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnreadForm {
    /// The body is not sent as a form.
    NotAForm,
    /// Its body was not read.
    Body(Unread),
}

/// The refusal of a body that did not arrive in time (408 `body-too-slow`).
pub fn too_slow() -> crate::refusal::Refusal {
    crate::refusal::Refusal::new(
        408,
        "body-too-slow",
        "Body too slow",
        "the request's body did not arrive in time (at least 64 KiB a second, and 10 s more); send it again",
    )
}

/// The refusal of a body that was not read (`unread`), as a problem: 400 `malformed-request`
/// when the connection failed, 408 `body-too-slow`, or `too_large` past its bound (each body
/// says its own bound and what it is).
pub fn refusal(
    unread: Unread,
    too_large: impl FnOnce() -> crate::refusal::Refusal,
) -> crate::refusal::Refusal {
    match unread {
        Unread::Unreadable => crate::refusal::Refusal::new(
            400,
            "malformed-request",
            "Malformed request",
            "the body could not be read",
        ),
        Unread::TooSlow => too_slow(),
        Unread::TooLarge => too_large(),
    }
}

/// The refusal of a request whose body, `what`, does not say it is JSON (415
/// `unsupported-media-type`). Required of every JSON body: a browser sends a cross-site form's
/// post (`text/plain`) without asking first, and with the credentials it holds for the site.
pub fn not_json(req: &HttpRequest, what: &str) -> Option<crate::refusal::Refusal> {
    (!is_json(req)).then(|| crate::refusal::Refusal {
        status: 415,
        code: "unsupported-media-type",
        title: "Unsupported media type",
        detail: format!("{what} is JSON: send it with Content-Type: application/json"),
    })
}

/// Whether the request says its body is JSON (`application/json`, or a `+json` type).
fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| {
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
}

/// A form's fields, in the order they came.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The form posted in `req` (`application/x-www-form-urlencoded`), at most `max` bytes, read
/// as `bounded` reads: call it after the request's credentials are checked.
pub async fn form(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<Form, UnreadForm> {
    let is_form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(UnreadForm::NotAForm);
    }
    let body = bounded(req, payload, max).await.map_err(UnreadForm::Body)?;
    Ok(Form(
        url::form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// The body of `req`, `payload`, at most `max` bytes, within `BODY_SECS` and `max` bytes at
/// `BODY_MIN_RATE`.
pub async fn bounded(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<web::Bytes, Unread> {
    let within = BODY_SECS + max as u64 / BODY_MIN_RATE;
    bounded_within(req, payload, max, std::time::Duration::from_secs(within)).await
}

/// `bounded`, within `deadline`.
pub async fn bounded_within(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
    deadline: std::time::Duration,
) -> Result<web::Bytes, Unread> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Unread::TooLarge);
    }
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| Unread::Unreadable)?;
            if body.len() + chunk.len() > max {
                return Err(Unread::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(Unread::TooSlow))
}

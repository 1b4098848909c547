//! Refusals as RFC 9457 problem details (`application/problem+json`), with the stable `code`
//! beside the standard members.
//!
//! It must not: decide anything (the refusal is made where the decision is).

use actix_web::HttpResponse;
use serde_json::json;

use crate::refusal::Refusal;

/// When to try again after a refusal that passes (RFC 9110 `Retry-After`, seconds): a rate
/// limit, or a part of the service or the chain away for a moment. The tablet shows it.
const RETRY_AFTER_RATE_LIMITED: &str = "10";
const RETRY_AFTER_UNAVAILABLE: &str = "5";

pub fn problem(r: &Refusal) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(r.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = HttpResponse::build(status);
    match r.status {
        429 => {
            answer.insert_header(("Retry-After", RETRY_AFTER_RATE_LIMITED));
        }
        503 => {
            answer.insert_header(("Retry-After", RETRY_AFTER_UNAVAILABLE));
        }
        _ => {}
    }
    answer.content_type("application/problem+json").json(json!({
        "type": format!("https://breakglass.example/problems/{}", r.code),
        "title": r.title,
        "status": r.status,
        "detail": r.detail,
        "code": r.code,
    }))
}

//! Refusals as RFC 9457 problem details (`application/problem+json`), with the stable `code`
//! beside the standard members.
//!
//! It must not: decide anything (the refusal is made where the decision is).

use actix_web::HttpResponse;
use serde_json::json;

use crate::refusal::Refusal;

pub fn problem(r: &Refusal) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(r.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(json!({
            "type": format!("https://breakglass.example/problems/{}", r.code),
            "title": r.title,
            "status": r.status,
            "detail": r.detail,
            "code": r.code,
        }))
}

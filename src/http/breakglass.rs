//! `POST /v1/break-glass`, `GET /v1/accesses/{id}` and `GET /.well-known/jwks.json`. Refusals
//! are RFC 9457 problem details with a stable `code`.

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use crate::access::{BreakGlass, Refusal};
use crate::request::MAX_BODY_BYTES;
use crate::store::SubmissionState;

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

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/break-glass", web::post().to(break_glass))
        .route("/v1/accesses/{id}", web::get().to(access))
        .route("/.well-known/jwks.json", web::get().to(jwks));
}

async fn break_glass(bg: web::Data<BreakGlass>, mut payload: web::Payload) -> HttpResponse {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return problem(&Refusal {
                status: 400,
                code: "malformed-request",
                title: "Malformed request",
                detail: "the body could not be read".into(),
            });
        };
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return problem(&Refusal {
                status: 413,
                code: "request-too-large",
                title: "Request too large",
                detail: format!("a break-glass request is at most {MAX_BODY_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    let started = std::time::Instant::now();
    match bg.request(&body).await {
        Ok(grant) => {
            bg.metrics.grants.inc();
            bg.metrics
                .grant_seconds
                .observe(started.elapsed().as_secs_f64());
            let a = &grant.access;
            HttpResponse::Created()
                .insert_header(("cache-control", "no-store"))
                .json(json!({
                    "access_token": grant.token,
                    "token_type": "Bearer",
                    "expires_in": a.expires_at.saturating_sub(a.granted_at),
                    "scope": grant.scope,
                    "access_id": a.id,
                    "purpose_of_use": crate::token::PURPOSE_OF_USE,
                    "access": format!("/v1/accesses/{}", a.id),
                }))
        }
        Err(r) => {
            bg.metrics
                .refusals
                .get_or_create(&crate::metrics::Code {
                    code: r.code.into(),
                })
                .inc();
            problem(&r)
        }
    }
}

/// Where an access stands: recorded here, then on chain (pending -> submitted -> confirmed).
async fn access(bg: web::Data<BreakGlass>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    let not_found = || {
        problem(&Refusal {
            status: 404,
            code: "unknown-access",
            title: "Unknown access",
            detail: "no access with this id".into(),
        })
    };
    if id.len() != 64 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return not_found();
    }
    let store = &bg.state.store;
    let (Ok(Some(a)), Ok(sub)) = (store.access(&id), store.submission(&format!("record:{id}")))
    else {
        return not_found();
    };
    let chain = match sub.map(|s| s.state) {
        None | Some(SubmissionState::Pending) => json!({ "state": "pending" }),
        Some(SubmissionState::Sent { txid, .. }) => json!({ "state": "submitted", "txid": txid }),
        Some(SubmissionState::Confirmed { txid, height, .. }) => {
            json!({ "state": "confirmed", "txid": txid, "block_height": height })
        }
        Some(SubmissionState::Failed {
            txid,
            height,
            result,
        }) => json!({ "state": "failed", "txid": txid, "block_height": height, "result": result }),
    };
    let notice = match store.notice(&id) {
        Ok(Some(n)) => super::admin::notice_view(&n),
        _ => json!(null),
    };
    // the reason stays out: it is for reviewers and the patient's notice
    HttpResponse::Ok().json(json!({
        "notice": notice,
        "access_id": a.id,
        "provider": a.provider,
        "role": a.role,
        "patient": a.patient,
        "data_types": a.data_types,
        "granted_at": a.granted_at,
        "expires_at": a.expires_at,
        "window_minutes": a.window_minutes,
        "rules": a.rules,
        // why the clinician counted as on call: the paging source, service and incident
        "on_call": a.on_call,
        "chain": chain,
    }))
}

async fn jwks(bg: web::Data<BreakGlass>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "public, max-age=300"))
        .json(bg.tokens.jwks())
}

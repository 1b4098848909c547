//! The critical-data vault's FHIR reads and its import:
//!
//! - `GET /fhir/Patient/{id}/$summary` (the IPS operation) and `GET /fhir/{Type}?patient={id}`
//!   (per-type search), with a break-glass token (`Authorization: Bearer`): a FHIR R4
//!   searchset Bundle of the resources its scopes cover, `Cache-Control: no-store`;
//! - `POST /v1/admin/summaries`: a patient's summary (a FHIR R4 Bundle), for an admin client.
//!
//! It must not: do work beyond calling into `vault`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::admin::Admin;
use super::problem::problem;
use crate::refusal::Refusal;
use crate::vault::{bundle, Vault};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/fhir/Patient/{id}/$summary", web::get().to(summary))
        .route("/fhir/{kind}", web::get().to(search))
        .route("/v1/admin/summaries", web::post().to(import));
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    super::credentials(req, "Bearer")
}

/// A read's answer: never stored by a cache, never sniffed as another type; a refusal of the
/// token (401) says how to authenticate and, for a token given, that it is not valid (RFC 6750
/// section 3).
fn answer(result: Result<serde_json::Value, Refusal>) -> HttpResponse {
    use actix_web::http::header::{self, HeaderValue};
    match result {
        Ok(bundle) => HttpResponse::Ok()
            .content_type("application/fhir+json")
            .insert_header(("cache-control", "no-store"))
            .insert_header(("x-content-type-options", "nosniff"))
            .json(bundle),
        Err(r) => {
            let mut res = problem(&r);
            let headers = res.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            if r.status == 401 {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(if r.code == "no-token" {
                        "Bearer realm=\"breakglass\""
                    } else {
                        "Bearer realm=\"breakglass\", error=\"invalid_token\""
                    }),
                );
            }
            res
        }
    }
}

async fn summary(
    req: HttpRequest,
    path: web::Path<String>,
    vault: web::Data<Vault>,
) -> HttpResponse {
    answer(vault.read(bearer(&req), &path, None).await)
}

#[derive(serde::Deserialize)]
struct Search {
    patient: Option<String>,
}

async fn search(
    req: HttpRequest,
    path: web::Path<String>,
    vault: web::Data<Vault>,
) -> HttpResponse {
    let kind = path.into_inner();
    if !bundle::RESOURCE_TYPES.contains(&kind.as_str()) {
        return answer(Err(Refusal::new(
            404,
            "unknown-resource-type",
            "Unknown resource type",
            format!("{kind} is not served here"),
        )));
    }
    let Some(patient) = web::Query::<Search>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().patient)
    else {
        return answer(Err(Refusal::new(
            400,
            "patient-required",
            "Patient required",
            "search with ?patient=<patient id>",
        )));
    };
    answer(vault.read(bearer(&req), &patient, Some(&kind)).await)
}

async fn import(
    req: HttpRequest,
    payload: web::Payload,
    vault: web::Data<Vault>,
    admin: web::Data<Admin>,
) -> HttpResponse {
    let Some(client) = super::tokens::basic_client(&req, &admin.clients) else {
        return problem(&Refusal::new(
            401,
            "invalid-client",
            "Invalid client",
            "the admin API takes HTTP Basic as a configured admin client",
        ));
    };
    if let Some(refused) = super::body::not_json(&req, "a summary (a FHIR bundle)") {
        return problem(&refused);
    }
    let body = match super::body::bounded(&req, payload, bundle::MAX_BYTES).await {
        Ok(body) => body,
        Err(unread) => {
            return problem(&super::body::refusal(unread, || {
                Refusal::new(
                    413,
                    "summary-too-large",
                    "Summary too large",
                    format!(
                        "a summary is at most {} bytes; nothing was stored",
                        bundle::MAX_BYTES
                    ),
                )
            }))
        }
    };
    match vault.import(&body, &client).await {
        Ok(imported) => HttpResponse::Created().json(imported),
        Err(r) => problem(&r),
    }
}

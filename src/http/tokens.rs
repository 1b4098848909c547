//! Token introspection (RFC 7662) and revocation (RFC 7009) for resource servers, which
//! authenticate with HTTP Basic as a configured client. A revoked token is inactive at once,
//! for every replica that shares the store.
//!
//! A request's credentials are checked before any of its body is read, and its body (a form,
//! `MAX_FORM_BYTES` at most) is read as it arrives (`body::form`).
//!
//! It must not: accept a client that is not configured, or tell an unknown token from an expired
//! one.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::body::{Unread, UnreadForm};
use crate::access::BreakGlass;
use crate::configuration::ResourceServerClient;
use crate::store::{apply_async, Batch};

pub struct Clients(pub Vec<ResourceServerClient>);

/// How long a form posted here may be: a token and a hint, with room to spare.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/token")
            .route("/introspect", web::post().to(introspect))
            .route("/revoke", web::post().to(revoke)),
    );
}

fn invalid_request(description: String) -> Box<HttpResponse> {
    Box::new(
        HttpResponse::BadRequest()
            .json(json!({ "error": "invalid_request", "error_description": description })),
    )
}

/// The client id, when the Basic credentials match a configured client.
fn client(req: &HttpRequest, clients: &Clients) -> Option<String> {
    basic_client(req, &clients.0)
}

/// The client id, when the request's HTTP Basic credentials match one of `clients` (the
/// secret compared by its SHA-256, in constant time).
pub fn basic_client(req: &HttpRequest, clients: &[ResourceServerClient]) -> Option<String> {
    let encoded = super::credentials(req, "Basic")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    clients
        .iter()
        .find(|c| {
            c.id == id
                && bool::from(
                    c.secret_sha256
                        .to_ascii_lowercase()
                        .as_bytes()
                        .ct_eq(digest.as_bytes()),
                )
        })
        .map(|c| c.id.clone())
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("www-authenticate", "Basic realm=\"breakglass\""))
        .content_type("application/problem+json")
        .json(json!({ "type": "https://breakglass.example/problems/invalid-client", "title": "Invalid client", "status": 401,
                      "detail": "resource servers authenticate with HTTP Basic as a configured client", "code": "invalid-client" }))
}

/// The authenticated caller (before any of the body is read) and the `token` field of the
/// form posted (RFC 7662, 7009: `application/x-www-form-urlencoded`), or the answer to give
/// instead.
async fn caller_and_token(
    req: &HttpRequest,
    payload: web::Payload,
    clients: &Clients,
) -> Result<(String, String), Box<HttpResponse>> {
    let caller = client(req, clients).ok_or_else(|| Box::new(unauthorized()))?;
    let form = super::body::form(req, payload, MAX_FORM_BYTES)
        .await
        .map_err(|unread| match unread {
            UnreadForm::Body(Unread::TooLarge) => {
                Box::new(HttpResponse::PayloadTooLarge().json(json!({
                    "error": "invalid_request",
                    "error_description": format!("the form is at most {MAX_FORM_BYTES} bytes"),
                })))
            }
            UnreadForm::NotAForm => {
                invalid_request("the body is not a form (application/x-www-form-urlencoded)".into())
            }
            UnreadForm::Body(Unread::Unreadable) => {
                invalid_request("the body could not be read".into())
            }
            UnreadForm::Body(Unread::TooSlow) => {
                Box::new(HttpResponse::RequestTimeout().json(json!({
                    "error": "invalid_request",
                    "error_description": "the form did not arrive in time",
                })))
            }
        })?;
    let token = form
        .get("token")
        .map(str::to_owned)
        .ok_or_else(|| invalid_request("token is required".into()))?;
    Ok((caller, token))
}

async fn introspect(
    req: HttpRequest,
    payload: web::Payload,
    bg: web::Data<BreakGlass>,
    clients: web::Data<Clients>,
) -> HttpResponse {
    let (caller, token) = match caller_and_token(&req, payload, &clients).await {
        Ok(ct) => ct,
        Err(answer) => return *answer,
    };
    let inactive = || {
        HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(json!({ "active": false }))
    };
    let claims = match bg.tokens.verify(&token) {
        Ok(claims) => claims,
        Err(_) => {
            // one of ours whose window closed, still presented: that use is in the log too
            // (a resource server reading on after the window is what reviewers look for), up
            // to a share a minute (a resource server asked with an old token each time it is
            // shown one: unbounded, anyone holding one would grow the log); answered inactive
            // whether or not it could be written, as any token that is not active (an answer
            // that differed would tell an expired token of ours from one of no one's)
            if let Some(claims) = bg.tokens.expired(&token) {
                if bg.expired_introspections.check().is_err()
                    || logged(&bg, &claims, &caller, false).await.is_err()
                {
                    bg.metrics.expired_introspections_unlogged.inc();
                } else {
                    tracing::info!(access = %claims.jti, client = %caller, "an expired token introspected");
                }
            }
            return inactive();
        }
    };
    // revoked, or its clinician suspended since the grant: not honoured
    let standing = crate::token::standing(&bg.state, &claims).await;
    // every use of a token we issued is in the audit log before it is answered: reviewers see
    // what was read, when and by which resource server
    let active = matches!(standing, Ok(crate::token::Standing::Honoured));
    if let Err(unlogged) = logged(&bg, &claims, &caller, active).await {
        return unlogged;
    }
    match standing {
        Ok(crate::token::Standing::Honoured) => {}
        Ok(_) => return inactive(),
        Err(e) => {
            tracing::error!(error = %e, "revocation list or chain-state cache unavailable");
            return HttpResponse::ServiceUnavailable()
                .json(json!({ "error": "temporarily_unavailable" }));
        }
    }
    tracing::info!(access = %claims.jti, client = %caller, "token introspected");
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({
            "active": true,
            "scope": claims.scope,
            "client_id": claims.client_id,
            "token_type": "Bearer",
            "exp": claims.exp,
            "iat": claims.iat,
            "sub": claims.sub,
            "aud": claims.aud,
            "iss": claims.iss,
            "jti": claims.jti,
            "purpose_of_use": claims.purpose_of_use,
            "patient": claims.patient,
        }))
}

/// An introspection of token `claims` by `caller`, answered `active` or not, written to the
/// audit log; else the answer to give (503: nothing is answered unlogged).
async fn logged(
    bg: &BreakGlass,
    claims: &crate::token::AccessClaims,
    caller: &str,
    active: bool,
) -> Result<(), HttpResponse> {
    let used = Batch {
        audit: vec![crate::audit::Record::now(
            crate::audit::Event::Introspection {
                jti: claims.jti.clone(),
                client: caller.to_string(),
                active,
                patient: claims.patient.parse().ok(),
            },
        )],
        ..Batch::default()
    };
    apply_async(&bg.state.store, used).await.map_err(|e| {
        tracing::error!(error = %e, "an introspection could not be added to the audit log");
        HttpResponse::ServiceUnavailable().json(json!({ "error": "temporarily_unavailable" }))
    })
}

async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    bg: web::Data<BreakGlass>,
    clients: web::Data<Clients>,
) -> HttpResponse {
    let (caller, token) = match caller_and_token(&req, payload, &clients).await {
        Ok(ct) => ct,
        Err(answer) => return *answer,
    };
    // RFC 7009: an invalid or unknown token is answered 200 as well
    if let Ok(claims) = bg.tokens.verify(&token) {
        if let Err(e) = apply_async(
            &bg.state.store,
            Batch {
                revoked: vec![(claims.jti.clone(), claims.exp)],
                audit: vec![crate::audit::Record::now(crate::audit::Event::Revocation {
                    jti: claims.jti.clone(),
                    by: caller.clone(),
                    patient: claims.patient.parse().ok(),
                })],
                ..Batch::default()
            },
        )
        .await
        {
            tracing::error!(error = %e, "could not record a revocation");
            return HttpResponse::ServiceUnavailable()
                .json(json!({ "error": "temporarily_unavailable" }));
        }
        tracing::info!(access = %claims.jti, client = %caller, "token revoked");
    }
    HttpResponse::Ok().finish()
}

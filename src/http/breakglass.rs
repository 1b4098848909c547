//! `POST /v1/break-glass`, `GET /v1/accesses/{id}` and `GET /.well-known/jwks.json`. Refusals
//! are RFC 9457 problem details with a stable `code`.
//!
//! It must not: decide (it calls `access`), or show the reason outside the authorized view.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use crate::access::BreakGlass;
use crate::refusal::Refusal;
use crate::request::MAX_BODY_BYTES;
use crate::store::SubmissionState;

use super::problem::problem;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/break-glass", web::post().to(break_glass))
        .route("/v1/accesses/{id}", web::get().to(access))
        .route("/.well-known/jwks.json", web::get().to(jwks));
}

async fn break_glass(
    bg: web::Data<BreakGlass>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // every refusal counted by its code, those of the body's form and size too
    let refused = |r: Refusal| {
        bg.metrics
            .refusals
            .get_or_create(&crate::metrics::Code {
                code: r.code.into(),
            })
            .inc();
        problem(&r)
    };
    if let Some(r) = super::body::not_json(&req, "a break-glass request") {
        return refused(r);
    }
    let body = match super::body::bounded(&req, payload, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(unread) => {
            return refused(super::body::refusal(unread, || Refusal {
                status: 413,
                code: "request-too-large",
                title: "Request too large",
                detail: format!("a break-glass request is at most {MAX_BODY_BYTES} bytes"),
            }))
        }
    };
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
        Err(r) => refused(r),
    }
}

fn store_unavailable() -> HttpResponse {
    problem(&Refusal {
        status: 503,
        code: "store-unavailable",
        title: "Store unavailable",
        detail: "the store cannot be read right now; try again".into(),
    })
}

/// `refusal` as a problem; a 401 with the scheme to authenticate with (RFC 6750).
fn challenged(refusal: &Refusal) -> HttpResponse {
    let mut answer = problem(refusal);
    if refusal.status == 401 {
        answer.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer realm=\"breakglass\""),
        );
    }
    answer
}

/// Who may see the whole of an access: the holder of its own token (while it is valid, not
/// revoked, and its clinician still verified on chain), or an admin client.
enum Viewer {
    Anyone,
    /// The holder of the access's token: the whole access but the clinician's reason (resource
    /// servers log tokens, so a token opens nothing the clinician wrote).
    Holder,
    /// An admin client (its id): the whole access.
    Admin(String),
    Refused(&'static str),
    /// The token verified, but does not stand (revoked, its clinician no longer verified), or
    /// where it stands could not be told: refused as the vault refuses it.
    NotHonoured(Refusal),
}

async fn viewer(
    req: &HttpRequest,
    bg: &BreakGlass,
    admin: &super::admin::Admin,
    access_id: &str,
) -> Viewer {
    if req.headers().get("authorization").is_none() {
        return Viewer::Anyone;
    }
    if let Some(token) = super::credentials(req, "Bearer") {
        return match bg.tokens.verify(token) {
            Ok(c) if c.jti == access_id => match crate::token::standing(&bg.state, &c).await {
                Ok(standing) => standing
                    .refusal()
                    .map_or(Viewer::Holder, Viewer::NotHonoured),
                Err(e) => Viewer::NotHonoured(crate::token::standing_unknown(&e)),
            },
            Ok(_) => Viewer::Refused("the token is for another access"),
            Err(_) => Viewer::Refused("the token is not valid (expired, or not ours)"),
        };
    }
    match super::tokens::basic_client(req, &admin.clients) {
        Some(client) => Viewer::Admin(client),
        None => Viewer::Refused("not an admin client"),
    }
}

/// Where an access stands. Its id is on chain, so anyone who has it sees where the chain record
/// stands (pending -> submitted -> confirmed) and the window; the rest (the clinician, the
/// patient's pseudonymous id, the data types, the rules, why the clinician counted as on call,
/// the patient's notice) only the holder of the access's token (`Authorization: Bearer`) and
/// admin clients (HTTP Basic); the clinician's reason, admin clients alone (its hash to the
/// token's holder, as in the token).
async fn access(
    req: HttpRequest,
    bg: web::Data<BreakGlass>,
    admin: web::Data<super::admin::Admin>,
    review: web::Data<crate::review::Review>,
    id: web::Path<String>,
) -> HttpResponse {
    let id = id.into_inner();
    let not_found = || {
        problem(&Refusal {
            status: 404,
            code: "unknown-access",
            title: "Unknown access",
            detail: "no access with this id".into(),
        })
    };
    let access_id = match id.parse::<crate::domain::AccessId>() {
        // the id as the service writes it (lower-case hex), not another spelling of it
        Ok(a) if a.to_string() == id => a,
        _ => return not_found(),
    };
    let (entitled, admin_client) = match viewer(&req, &bg, &admin, &id).await {
        Viewer::Anyone => (false, None),
        Viewer::Holder => (true, None),
        Viewer::Admin(client) => (true, Some(client)),
        Viewer::NotHonoured(refusal) => return challenged(&refusal),
        Viewer::Refused(why) => {
            return challenged(&Refusal {
                status: 401,
                code: "invalid-credentials",
                title: "Invalid credentials",
                detail: format!(
                    "{why}: the whole access is shown to the holder of its token and to admin clients; without credentials, where its chain record stands"
                ),
            })
        }
    };
    let store = &bg.state.store;
    let (a, sub) = match (
        store.access(&access_id),
        store.submission(&format!("record:{id}")),
    ) {
        (Ok(Some(a)), Ok(sub)) => (a, sub),
        (Ok(None), _) => return not_found(),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "the store cannot be read for an access");
            return store_unavailable();
        }
    };
    let chain = chain_record(sub.map(|s| s.state));
    let mut view = json!({
        "access_id": a.id,
        "granted_at": a.granted_at,
        "expires_at": a.expires_at,
        "window_minutes": a.window_minutes,
        "chain": chain,
        "view": if entitled { "full" } else { "public" },
    });
    if entitled {
        // the mail server's replies (which may echo the patient's address) to admin clients
        // only; the token's holder sees where the notice stands
        let notice = match store.notice(&access_id) {
            Ok(Some(n)) if admin_client.is_some() => super::admin::notice_view(&n),
            Ok(Some(n)) => {
                let mut v = super::admin::notice_view(&n);
                if let Some(m) = v.as_object_mut() {
                    m.retain(|k, _| {
                        ["access_id", "state", "due_at", "attempts", "at"].contains(&k.as_str())
                    });
                }
                v
            }
            _ => json!(null),
        };
        // the reason is only ever shown here, to admin clients: never in a token, to its
        // holder, or in a log; and an admin client's read is in the audit log before the
        // answer (none: nothing shown)
        let reason = admin_client.is_some().then(|| bg.reason(&a)).flatten();
        if let Some(client) = &admin_client {
            if let Err(r) = review
                .viewed(&access_id, a.patient, client.clone(), reason.is_some())
                .await
            {
                return problem(&r);
            }
        }
        let more = json!({
            "notice": notice,
            "provider": a.provider,
            "role": a.role,
            "patient": a.patient,
            "patient_registered": a.patient_registered,
            "data_types": a.data_types,
            "reason": reason.as_ref().map(|r| &r.text),
            // with the salt its hash was made with: SHA-256(salt ‖ reason) is the chain's
            // `reason-hash` (none for an access recorded before salts: the reason's own)
            "reason_salt": reason.as_ref().and_then(|r| r.salt).map(hex::encode),
            "reason_hash": a.reason_hash,
            "rules": a.rules,
            // why the clinician counted as on call: the paging source, service and incident
            "on_call": a.on_call,
            // granted on a stale view of the chain, as a degraded-mode policy allowed
            "degraded": a.degraded,
            "chain_lag_blocks": a.chain_lag_blocks,
        });
        if let (Some(v), serde_json::Value::Object(m)) = (view.as_object_mut(), more) {
            v.extend(m);
        }
    }
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(view)
}

/// Where an access's chain record stands, as the public view tells it.
fn chain_record(state: Option<SubmissionState>) -> Json {
    match state {
        None | Some(SubmissionState::Pending) => json!({ "state": "pending" }),
        // signed, not yet accepted by the node: nothing can mine it yet
        Some(SubmissionState::Sent {
            txid,
            broadcasts: 0,
            ..
        }) => json!({ "state": "pending", "txid": txid }),
        Some(SubmissionState::Sent { txid, .. }) => json!({ "state": "submitted", "txid": txid }),
        Some(SubmissionState::Confirmed { txid, height, .. }) => {
            json!({ "state": "confirmed", "txid": txid, "block_height": height })
        }
        Some(SubmissionState::Failed {
            txid,
            height,
            result,
            ..
        }) => json!({ "state": "failed", "txid": txid, "block_height": height, "result": result }),
    }
}

async fn jwks(bg: web::Data<BreakGlass>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "public, max-age=300"))
        .json(bg.tokens.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(broadcasts: u32) -> SubmissionState {
        SubmissionState::Sent {
            txid: "ab".repeat(32),
            nonce: 3,
            raw: String::new(),
            sent_at_height: 7,
            broadcasts,
        }
    }

    #[test]
    fn submitted_means_the_node_accepted_it() {
        // signed but never broadcast: nothing can mine it yet
        assert_eq!(chain_record(Some(sent(0)))["state"], "pending");
        assert_eq!(chain_record(Some(sent(0)))["txid"], "ab".repeat(32));
        assert_eq!(chain_record(Some(sent(1)))["state"], "submitted");
        assert_eq!(chain_record(None)["state"], "pending");
    }
}

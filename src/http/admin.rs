//! The operators' API, HTTP Basic as a configured `admin.clients` entry: importing the patient
//! directory (a FHIR R4 bundle of `Patient` resources) and listing notices by state (the
//! dead-letter list, patients without a contact). Answers carry pseudonymous ids and states,
//! never contact details.
//!
//! It must not: give a verdict or change chain state (admin clients import and read).

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::problem::problem;
use crate::configuration::ResourceServerClient;
use crate::refusal::Refusal;
use crate::seal::Keyring;
use crate::store::{NoticeState, Store};

pub struct Admin {
    pub clients: Vec<ResourceServerClient>,
    pub store: Arc<dyn Store>,
    /// The chain-state cache: a provider it has not seen yet is read from the node once.
    pub chain: crate::chain::state::ChainState,
    pub keyring: Arc<Keyring>,
    pub patient_id_system: String,
    pub provider_principal_system: String,
    /// Told after patients' contacts are imported: the notifier then looks again at the
    /// notices that had nobody to tell (`Notifier::contacts_imported`).
    pub contacts_imported: Arc<tokio::sync::Notify>,
}

/// A FHIR bundle of a few thousand patients fits.
const MAX_IMPORT_BYTES: usize = 16 * 1024 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/admin/patients").route(web::post().to(import_patients)))
        .service(
            web::resource("/v1/admin/providers")
                .route(web::post().to(import_providers))
                .route(web::get().to(providers)),
        )
        .route("/v1/admin/notices", web::get().to(notices));
}

fn store_unavailable(detail: &str) -> HttpResponse {
    problem(&Refusal {
        status: 503,
        code: "store-unavailable",
        title: "Store unavailable",
        detail: detail.into(),
    })
}

fn unauthorized() -> HttpResponse {
    problem(&Refusal {
        status: 401,
        code: "invalid-client",
        title: "Invalid client",
        detail: "the admin API takes HTTP Basic as a configured admin client".into(),
    })
}

/// A directory import's body, once its client is known: credentials are checked before any
/// of it is read, and it is read as it arrives, up to `MAX_IMPORT_BYTES` (413
/// `import-too-large`); else the refusal to answer.
async fn import_body(
    req: &HttpRequest,
    admin: &Admin,
    payload: web::Payload,
) -> Result<(String, web::Bytes), HttpResponse> {
    let Some(client) = super::tokens::basic_client(req, &admin.clients) else {
        return Err(unauthorized());
    };
    if let Some(refused) = super::body::not_json(req, "a directory (a FHIR bundle)") {
        return Err(problem(&refused));
    }
    super::body::bounded(req, payload, MAX_IMPORT_BYTES)
        .await
        .map(|body| (client, body))
        .map_err(|unread| {
            problem(&super::body::refusal(unread, || Refusal {
                status: 413,
                code: "import-too-large",
                title: "Import too large",
                detail: format!(
                    "a directory import is at most {MAX_IMPORT_BYTES} bytes; nothing was imported"
                ),
            }))
        })
}

/// The answer to a directory import: the report, the bundle's refusal, or a store failure.
fn import_answer(
    what: &'static str,
    code: &'static str,
    title: &'static str,
    result: Result<crate::directory::ImportReport, crate::directory::ImportError>,
) -> HttpResponse {
    match result {
        Ok(report) => {
            tracing::info!(
                imported = report.imported,
                rejected = report.rejected.len(),
                "{what} directory import"
            );
            HttpResponse::Ok().json(report)
        }
        Err(crate::directory::ImportError::Rejected(reason)) => problem(&Refusal {
            status: 400,
            code,
            title,
            detail: reason,
        }),
        Err(e) => {
            tracing::error!(error = %e, "{what} directory import failed");
            store_unavailable("the directory could not be written; nothing was imported")
        }
    }
}

async fn import_patients(
    req: HttpRequest,
    admin: web::Data<Admin>,
    payload: web::Payload,
) -> HttpResponse {
    let (client, body) = match import_body(&req, &admin, payload).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let result = crate::directory::import(
        &admin.store,
        &admin.keyring,
        &admin.patient_id_system,
        &body,
        &client,
    )
    .await;
    if result.as_ref().is_ok_and(|r| r.imported > 0) {
        // a patient nobody could tell of an access may be reachable now
        admin.contacts_imported.notify_one();
    }
    import_answer(
        "patient",
        "not-a-patient-bundle",
        "Not a FHIR bundle of patients",
        result,
    )
}

async fn import_providers(
    req: HttpRequest,
    admin: web::Data<Admin>,
    payload: web::Payload,
) -> HttpResponse {
    let (client, body) = match import_body(&req, &admin, payload).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let result = crate::directory::import_providers(
        &admin.store,
        &admin.provider_principal_system,
        &body,
        &client,
    )
    .await;
    import_answer(
        "provider",
        "not-a-practitioner-bundle",
        "Not a FHIR bundle of practitioners",
        result,
    )
}

/// The provider directory, each entry with how it stands against the chain.
async fn providers(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    if super::tokens::basic_client(&req, &admin.clients).is_none() {
        return unauthorized();
    }
    let entries = match admin.store.directory_entries() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "listing the provider directory");
            return store_unavailable("the directory could not be read");
        }
    };
    let mut list = Vec::with_capacity(entries.len());
    for e in &entries {
        let chain = admin.chain.provider(&e.principal).await.ok();
        list.push(json!({
                "principal": e.principal,
                "display_name": e.display_name,
                "role": e.role,
                "department": e.department,
                "organization": e.organization,
                "paging_ids": e.paging_ids,
                "info_hash": hex::encode(e.info_hash()),
                "verification": e.verification(chain.as_ref()),
        }));
    }
    HttpResponse::Ok().json(json!({ "providers": list }))
}

#[derive(serde::Deserialize)]
struct NoticeQuery {
    state: Option<StateName>,
}

/// A notice's state by name, as notices are listed and filtered (`?state=`): one list, so
/// that a state shown can always be asked for, and one asked for that is none is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum StateName {
    Pending,
    Sent,
    Dead,
    NoContact,
}

impl StateName {
    fn of(s: &NoticeState) -> StateName {
        match s {
            NoticeState::Pending => StateName::Pending,
            NoticeState::Sent { .. } => StateName::Sent,
            NoticeState::Dead { .. } => StateName::Dead,
            NoticeState::NoContact { .. } => StateName::NoContact,
        }
    }
}

/// The notice part of an access as reviewers and operators see it.
pub fn notice_view(n: &crate::store::Notice) -> serde_json::Value {
    let mut v = json!({
        "access_id": n.access_id,
        "patient": n.patient,
        "state": StateName::of(&n.state),
        "due_at": n.due_at,
        "attempts": n.attempts,
        "message_id": n.message_id,
        "last_error": n.last_error,
    });
    if let Some(at) = n.reopened {
        // nobody could be told at first; the patient's contact was imported since
        v["reopened_at"] = json!(at);
    }
    match &n.state {
        NoticeState::Sent { at } | NoticeState::NoContact { at } => v["at"] = json!(at),
        NoticeState::Dead { at, reason } => {
            v["at"] = json!(at);
            v["reason"] = json!(reason);
        }
        NoticeState::Pending => v["next_at"] = json!(n.next_at),
    }
    v
}

async fn notices(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    if super::tokens::basic_client(&req, &admin.clients).is_none() {
        return unauthorized();
    }
    // read after the credentials (an extractor would answer first, in its own words); a
    // parameter that is not `state` (`?status=dead`) is refused, not read as no filter
    let asked =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    if let Some(other) = asked.keys().find(|k| k.as_str() != "state") {
        return problem(&Refusal {
            status: 400,
            code: "unknown-parameter",
            title: "Unknown parameter",
            detail: format!("notices are filtered by `state` alone, not by {other:?}"),
        });
    }
    let q = match web::Query::<NoticeQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return problem(&Refusal {
                status: 400,
                code: "unknown-state",
                title: "Unknown state",
                detail: format!("not a notice's state: {e}"),
            })
        }
    };
    let all = match admin.store.notices() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "listing notices");
            return store_unavailable("the notices could not be read");
        }
    };
    let list: Vec<_> = all
        .iter()
        .filter(|n| q.state.is_none_or(|s| s == StateName::of(&n.state)))
        .map(notice_view)
        .collect();
    HttpResponse::Ok().json(json!({ "notices": list }))
}

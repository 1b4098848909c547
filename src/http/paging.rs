//! The paging webhooks: `POST /v1/paging/pagerduty`, `/v1/paging/opsgenie` and
//! `/v1/paging/webhook` (generic). Each is verified (signature or token, age, replay) before it
//! may change who is on call; a refusal is a 4xx problem with a stable code and changes
//! nothing. Secrets files are read at each delivery, so a rotated secret needs no restart.
//!
//! It must not: change on-call state for a delivery whose signature does not verify.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::problem::problem;
use crate::clock::now_secs;
use crate::metrics::{Metrics, Webhook};
use crate::paging::webhook::{self, Delivery, WebhookError};
use crate::paging::{generic, load_secrets, opsgenie, pagerduty, Applied, Change, OnCall};
use crate::refusal::Refusal;

/// A webhook body is small; anything larger is refused before it is read.
const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

pub struct Paging {
    pub oncall: Arc<OnCall>,
    pub metrics: Arc<Metrics>,
    pub pagerduty_secrets: Option<PathBuf>,
    pub opsgenie_secrets: Option<PathBuf>,
    pub webhook_secrets: Option<PathBuf>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/paging")
            .route("/pagerduty", web::post().to(pagerduty))
            .route("/opsgenie", web::post().to(opsgenie))
            .route("/webhook", web::post().to(generic)),
    );
}

fn header<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Paging {
    /// 503 `paging-unavailable` (what the delivery needs cannot be read or written: the page
    /// is not applied, and the paging system sends it again), counted as every other outcome.
    fn unavailable(&self, source: &str, what: &str, e: impl std::fmt::Display) -> HttpResponse {
        tracing::error!(source, error = %e, "{what} cannot be read");
        self.count(source, "paging-unavailable");
        problem(&Refusal {
            status: 503,
            code: "paging-unavailable",
            title: "Paging state unavailable",
            detail: format!("{what} cannot be read; try again"),
        })
    }

    fn refused(&self, source: &str, e: WebhookError) -> HttpResponse {
        // the code only: the detail can name a paging id or an email, and goes to the sender
        tracing::warn!(source, code = e.code(), "paging webhook refused");
        self.count(source, e.code());
        problem(&Refusal {
            status: e.status(),
            code: e.code(),
            title: e.title(),
            detail: e.to_string(),
        })
    }

    fn count(&self, source: &str, outcome: &str) {
        self.metrics
            .webhooks
            .get_or_create(&Webhook {
                source: source.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A webhook's body, read up to `MAX_WEBHOOK_BYTES`: beyond, or unreadable, refused as a
    /// problem (413 `webhook-too-large`, 400 `malformed-webhook`) and counted.
    async fn body(
        &self,
        source: &str,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<web::Bytes, HttpResponse> {
        let refused = |status: u16, code: &'static str, title: &'static str, detail: String| {
            self.count(source, code);
            problem(&Refusal {
                status,
                code,
                title,
                detail,
            })
        };
        super::body::bounded(req, payload, MAX_WEBHOOK_BYTES)
            .await
            .map_err(|unread| match unread {
                super::body::Unread::Unreadable => refused(
                    400,
                    "malformed-webhook",
                    "Malformed webhook",
                    "the body could not be read".into(),
                ),
                super::body::Unread::TooSlow => {
                    let r = super::body::too_slow();
                    refused(r.status, r.code, r.title, r.detail)
                }
                super::body::Unread::TooLarge => refused(
                    413,
                    "webhook-too-large",
                    "Webhook too large",
                    format!("a webhook is at most {MAX_WEBHOOK_BYTES} bytes"),
                ),
            })
    }

    /// The common path of every source: whether it is configured, the secrets (re-read at each
    /// delivery, off the runtime) and what of the credentials the headers carry (`early`: a
    /// token whole, a signature's presence), all before any of the body is read; then its body
    /// (bounded), the signature over it before anything else of the body is read, the mapping,
    /// the body, its age, the replay claim and the durable apply.
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        source: &str,
        req: &HttpRequest,
        payload: web::Payload,
        secrets: &Option<PathBuf>,
        early: impl FnOnce(&[Vec<u8>]) -> Result<(), WebhookError>,
        verify: impl FnOnce(&[Vec<u8>], &[u8]) -> Result<(), WebhookError>,
        read: impl FnOnce(&[u8], &HashMap<String, String>) -> Result<Delivery, WebhookError>,
    ) -> HttpResponse {
        let Some(path) = secrets.clone() else {
            self.count(source, "paging-source-not-configured");
            return problem(&Refusal {
                status: 404,
                code: "paging-source-not-configured",
                title: "Paging source not configured",
                detail: format!(
                    "the {} webhook is not configured on this service",
                    match source {
                        "pagerduty" => "PagerDuty",
                        "opsgenie" => "Opsgenie",
                        _ => "generic",
                    }
                ),
            });
        };
        let secrets = match web::block(move || load_secrets(&path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.unavailable(source, "the webhook secrets", e),
            Err(e) => return self.unavailable(source, "the webhook secrets", e),
        };
        if let Err(e) = early(&secrets) {
            return self.refused(source, e);
        }
        let body = match self.body(source, req, payload).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        if let Err(e) = verify(&secrets, &body) {
            return self.refused(source, e);
        }
        let oncall = self.oncall.clone();
        let map = match web::block(move || oncall.mapping.snapshot()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return self.unavailable(source, "the responder mapping", e),
            Err(e) => return self.unavailable(source, "the responder mapping", e),
        };
        let now = now_secs();
        let v = match read(&body, &map).and_then(|v| {
            let releases = v.change.as_ref().is_some_and(|c| c.releases(now));
            webhook::fresh(v.at, now, self.oncall.window_secs, releases)?;
            Ok(v)
        }) {
            Ok(v) => v,
            Err(e) => return self.refused(source, e),
        };
        if !self.oncall.claim(&v.id, now).await {
            return self.refused(source, WebhookError::Replayed(v.id));
        }
        let mut what = match &v.change {
            Some(Change::Page { responders, .. }) if responders.is_empty() => "no-responder",
            Some(Change::Page { .. }) => "on-call",
            Some(Change::Resolved { .. }) => "off-call",
            // a shift that ended
            Some(c) if c.releases(now) => "off-call",
            Some(Change::Shift { .. }) => "on-call",
            Some(Change::Synced { .. }) | None => "ignored",
        };
        if !v.unmapped.is_empty() {
            // the count only: paging ids can be staff emails, which stay out of the logs
            tracing::warn!(
                source,
                unmapped = v.unmapped.len(),
                "paged users map to no provider (see the webhook's answer)"
            );
        }
        if let Some(change) = v.change {
            let until = now + 2 * self.oncall.window_secs;
            match self.oncall.apply(change, Some((&v.id, until))).await {
                Ok(Applied::Changed) => {}
                Ok(Applied::Superseded) => what = "superseded",
                Err(e) => return self.unavailable(source, "the on-call state", e),
            }
        }
        tracing::info!(source, delivery = %v.id, change = what, "paging webhook accepted");
        self.count(source, "accepted");
        HttpResponse::Accepted().json(json!({
            "status": "accepted",
            "delivery": v.id,
            "change": what,
            "unmapped": v.unmapped,
        }))
    }
}

async fn pagerduty(
    req: HttpRequest,
    paging: web::Data<Paging>,
    payload: web::Payload,
) -> HttpResponse {
    let signature = header(&req, "x-pagerduty-signature");
    paging
        .receive(
            "pagerduty",
            &req,
            payload,
            &paging.pagerduty_secrets,
            |_| webhook::required(signature, "X-PagerDuty-Signature").map(drop),
            |secrets, body| pagerduty::verify(signature, body, secrets),
            pagerduty::parse,
        )
        .await
}

async fn opsgenie(
    req: HttpRequest,
    paging: web::Data<Paging>,
    payload: web::Payload,
) -> HttpResponse {
    let token = header(&req, "x-breakglass-token");
    paging
        .receive(
            "opsgenie",
            &req,
            payload,
            &paging.opsgenie_secrets,
            // a header: checked whole before the body is read
            |secrets| opsgenie::verify(token, secrets),
            |_, _| Ok(()),
            opsgenie::parse,
        )
        .await
}

async fn generic(
    req: HttpRequest,
    paging: web::Data<Paging>,
    payload: web::Payload,
) -> HttpResponse {
    let (ts, sig) = (
        header(&req, "x-breakglass-timestamp"),
        header(&req, "x-breakglass-signature"),
    );
    paging
        .receive(
            "webhook",
            &req,
            payload,
            &paging.webhook_secrets,
            |_| {
                webhook::required(ts, "X-Breakglass-Timestamp")?;
                webhook::required(sig, "X-Breakglass-Signature").map(drop)
            },
            |secrets, body| generic::verify(ts, sig, body, secrets),
            // `verify` passed: the timestamp is there, and signed
            |body, map| generic::parse(ts.unwrap_or_default(), body, map),
        )
        .await
}

//! The HTTP edges: the public API (health, readiness, metrics; the break-glass, token, admin
//! and paging endpoints in their files) and the event-observer endpoints the stacks-node POSTs
//! to. Handlers stay thin; the work is in `access`, `chain` and `paging`.
//!
//! It must not: do work beyond calling into `access`, `chain`, `paging` and the store.

pub mod admin;
pub mod body;
pub mod breakglass;
pub mod fhir;
pub mod paging;
pub mod problem;
pub mod review;
pub mod tablet;
pub mod tokens;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::chain::events::NewBlock;
use crate::chain::follower::{Applied, Follower};
use crate::chain::status::FollowerStatus;
use crate::metrics::{Gauges, SyncGauge};
use crate::store::Store;

pub struct Health {
    pub store: Arc<dyn Store>,
    pub follower: Arc<FollowerStatus>,
    pub keys_loaded: bool,
    pub max_lag_blocks: u64,
    pub fresh_ms: u64,
    pub seconds_per_block: u64,
    pub oncall: Arc<crate::paging::OnCall>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub submitter: Arc<crate::chain::submitter::Submitter>,
    /// Whether notices are emailed (`notify.transport = "smtp"`), or only written to the
    /// outbox (`"file"`: development; a deployment so set tells no patient).
    pub notices_emailed: bool,
}

/// The credentials of the request's `Authorization` header in `scheme` (`Bearer`, `Basic`),
/// the scheme matched in any case (RFC 9110 §11.1).
pub fn credentials<'a>(req: &'a actix_web::HttpRequest, scheme: &str) -> Option<&'a str> {
    let header = req.headers().get("authorization")?.to_str().ok()?;
    let (given, credentials) = header.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim_start())
}

pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .configure(breakglass::routes)
        .configure(tokens::routes)
        .configure(admin::routes)
        .configure(paging::routes)
        .configure(review::routes)
        .configure(fhir::routes)
        .configure(tablet::routes);
}

/// Alive, unless the store stopped writing after a failed write: only a restart recovers it
/// (from disk), so the orchestrator should restart the process.
async fn healthz(health: web::Data<Health>) -> HttpResponse {
    match health.store.stopped() {
        None => HttpResponse::Ok().json(json!({ "status": "alive" })),
        Some(_) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "store-stopped",
            "detail": "a write to the store failed; every write fails until a restart recovers it from disk",
        })),
    }
}

async fn metrics(health: web::Data<Health>) -> HttpResponse {
    let now = crate::clock::now_secs();
    // the store's counts on the blocking pool: a store that does not answer (up to its read
    // timeouts) holds a scrape, not a worker that grants
    let store = health.store.clone();
    let counts = web::block(move || {
        let open = store.open_counts()?;
        let uncontacted = store.uncontacted_count()?;
        // the log's entries the grants' follow-up has not read yet
        let head = store.audit_head()?.map_or(0, |h| h.seq);
        let behind = head.saturating_sub(store.followed()?.unwrap_or(0));
        Ok::<_, crate::store::StoreError>((open, uncontacted, behind))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|counts| counts.map_err(|e| e.to_string()))
    .inspect_err(|e| tracing::warn!(error = %e, "metrics: the open counts could not be read"))
    .ok();
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(health.metrics.render(&gauges(&health, counts, now)))
}

/// Ready when the store answers, the keys are loaded and the service's view of the chain is not
/// stale: the follower within `max_lag_blocks` of the node, and the node silent for no longer
/// than that many blocks' time (`access::view::chain_view`, as the grants judge it: a poll that
/// failed once does not take every replica out of a load balancer while grants go on). The paging syncs are reported but do not
/// make the service unready: a sync that failed closed refuses only the clinicians who are on
/// call through it alone, while the other sources, token introspection and the reviews go on.
/// A store that answers but refuses writes (a Redis server at its `maxmemory`) is not ready
/// either: a grant, an introspection and a revocation are each recorded before they are
/// answered, so none can be. `store_writes` says why writes fail (the store's error: it does
/// not answer, it stopped writing, it is full), or `ok`.
async fn readyz(health: web::Data<Health>) -> HttpResponse {
    // on the blocking pool: a store that does not answer holds this probe, not a worker
    let store = health.store.clone();
    let (store_ok, writes_refused) = web::block(move || match store.ping() {
        Ok(()) => (true, store.writable().err().map(|e| e.to_string())),
        Err(e) => (false, Some(e.to_string())),
    })
    .await
    .unwrap_or_else(|e| (false, Some(e.to_string())));
    let f = &health.follower;
    let view = crate::access::view::chain_view(
        f,
        crate::clock::now_ms(),
        health.seconds_per_block,
        health.max_lag_blocks,
        health.fresh_ms,
    );
    let follower_ok = !view.stale;
    let ready = store_ok && writes_refused.is_none() && follower_ok && health.keys_loaded;
    let now = crate::clock::now_secs();
    let paging: serde_json::Map<String, serde_json::Value> = health
        .oncall
        .health()
        .into_iter()
        .map(|(source, h)| {
            let state = match (h.fresh(now), h.last_error.is_some()) {
                (true, false) => "ok",
                (true, true) => "degraded: last good roster within its grace period",
                (false, _) if h.last_success.is_none() => "failed closed: never synced",
                (false, _) => "failed closed: grace period over",
            };
            let v = json!({
                "ok": h.fresh(now) && h.last_error.is_none(),
                "state": state,
                "last_success": h.last_success,
                "last_attempt": h.last_attempt,
                "last_error": h.last_error,
                "consecutive_failures": h.consecutive_failures,
                "grace_secs": h.grace_secs,
            });
            (source, v)
        })
        .collect();
    let body = json!({
        "ready": ready,
        "checks": {
            "paging": paging,
            "store": store_ok,
            "store_writes": writes_refused.as_deref().unwrap_or("ok"),
            "keys": health.keys_loaded,
            // (not a condition of readiness: grants go on; it says a notice reaches nobody)
            "notices": {
                "transport": if health.notices_emailed { "smtp" } else { "file" },
                "emailed": health.notices_emailed,
            },
            "follower": {
                "ok": follower_ok,
                "applied_height": f.applied(),
                "node_tip_height": f.node_tip(),
                "node_reachable": view.reachable,
                "lag_blocks": (view.lag_blocks != u64::MAX).then_some(view.lag_blocks),
                "max_lag_blocks": health.max_lag_blocks,
            }
        }
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The event-observer endpoints, under `prefix` (`""`, or `/<secret>` when
/// `follower.path_secret_file` is set: stacks-node's `events_observer.endpoint` may carry a
/// path, so only who knows it reaches `/new_block`; a second layer, since a pushed block is
/// checked against the node anyway). `/new_block` answers 200 once the block is durably
/// applied, or found not to be the node's (the node must not resend a block it abandoned);
/// a failure answers 500, four pushes already being read or checked, or one from the same
/// peer, 503 (before the body is read), so that the node sends it again; a body past 64 MiB 413, not in within 10 s 408,
/// not a block's JSON 400.
pub fn observer(prefix: String) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.route(&format!("{prefix}/new_block"), web::post().to(new_block));
        if prefix.is_empty() {
            cfg.default_service(web::to(|| async { HttpResponse::Ok().finish() }));
        } else {
            // the node's other payloads (new_burn_block, mempool) under the secret path; a
            // path without the secret is not found
            cfg.route(
                &format!("{prefix}/{{payload}}"),
                web::post().to(|| async { HttpResponse::Ok().finish() }),
            )
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() }));
        }
    }
}

/// Answered so that the node sends the block again (it does until it gets a 200).
fn send_again(why: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .json(json!({ "applied": false, "detail": why }))
}

/// The largest `/new_block` body read (a block's JSON with its transactions and events).
const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;
/// How long a `/new_block` body may take to arrive, once admitted (the node is near).
const EVENT_READ_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

async fn new_block(
    req: actix_web::HttpRequest,
    follower: web::Data<Follower>,
    payload: web::Payload,
) -> HttpResponse {
    // admitted before its body is read, so that no more than a few bodies are in memory at
    // once, however many are posted (the node sends a block again until it gets a 200)
    let Some(admitted) = follower.admit(req.peer_addr().map(|a| a.ip())) else {
        return send_again("busy checking other blocks");
    };
    let refused = |status, code, title, detail: String| {
        problem::problem(&crate::refusal::Refusal::new(status, code, title, detail))
    };
    let body = match body::bounded_within(&req, payload, MAX_EVENT_BYTES, EVENT_READ_AT_MOST).await
    {
        Ok(body) => body,
        Err(body::Unread::TooLarge) => {
            return refused(
                413,
                "event-too-large",
                "Event too large",
                format!("an event is at most {MAX_EVENT_BYTES} bytes"),
            )
        }
        Err(body::Unread::Unreadable) => {
            return refused(
                400,
                "malformed-event",
                "Malformed event",
                "the body could not be read".into(),
            )
        }
        Err(body::Unread::TooSlow) => {
            return refused(
                408,
                "event-too-slow",
                "Event too slow",
                format!(
                    "the body did not arrive within {} s",
                    EVENT_READ_AT_MOST.as_secs()
                ),
            )
        }
    };
    let block: NewBlock = match serde_json::from_slice(&body) {
        Ok(block) => block,
        Err(e) => {
            return refused(
                400,
                "malformed-event",
                "Malformed event",
                format!("not a block event: {e}"),
            )
        }
    };
    let height = block.block_height;
    match follower.on_block(block, admitted).await {
        Ok(Applied::NotOnChain(why)) => {
            HttpResponse::Ok().json(json!({ "applied": false, "detail": why }))
        }
        // the node sends a block again until it gets a 200
        Ok(Applied::NotYet(why)) => send_again(&why),
        Ok(_) => HttpResponse::Ok().json(json!({ "applied": true })),
        Err(e) => {
            tracing::error!(height, error = %e, "could not apply block; the node will retry");
            HttpResponse::InternalServerError().body(e.to_string())
        }
    }
}

/// The gauges `/metrics` shows, read now from the paging sources, the follower and the
/// submitter, with the store's counts (read by the caller): the open operations and notices,
/// and the log's entries the grants' follow-up has not read.
fn gauges(health: &Health, counts: Option<((u64, u64), u64, u64)>, now: u64) -> Gauges {
    let (oncall, follower) = (&health.oncall, &health.follower);
    Gauges {
        syncs: oncall
            .health()
            .into_iter()
            .map(|(source, h)| SyncGauge {
                up: h.fresh(now),
                last_success: h.last_success.unwrap_or(0),
                failures: h.consecutive_failures,
                source,
            })
            .collect(),
        on_call: oncall
            .counts(now)
            .into_iter()
            .map(|(source, n)| (source, n as u64))
            .collect(),
        on_call_unreadable: oncall.unreadable() as u64,
        applied_height: follower.applied(),
        node_tip_height: follower.node_tip(),
        pushes_not_on_chain: follower
            .pushes_not_on_chain
            .load(std::sync::atomic::Ordering::SeqCst),
        operations_failed: follower
            .operations_failed
            .load(std::sync::atomic::Ordering::SeqCst),
        submitter_lease_held: health.submitter.holds_lease(),
        open: counts.map(|(open, _, _)| open),
        uncontacted: counts.map(|(_, uncontacted, _)| uncontacted),
        follow_up_behind: counts.map(|(_, _, behind)| behind),
    }
}

//! The clinician's tablet page (`GET /tablet`, `templates/tablet.html`, with
//! `/static/tablet.js` doing the signing, the request and the read) and what it asks first
//! (`GET /tablet/options?principal=`: the clinician's role and what the policies let them open).
//!
//! It must not: do work beyond calling into `access` (the page posts to `/v1/break-glass` and
//! reads `/fhir`, like any client).

use actix_web::{web, HttpRequest, HttpResponse};
use minijinja::{context, Environment};

use super::problem::problem;
use crate::access::BreakGlass;
use crate::refusal::Refusal;
use crate::stacks::Address;

const TABLET_JS: &str = include_str!("../../static/tablet.js");
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                   img-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub struct TabletPage(String);

impl TabletPage {
    /// Renders the page once: it depends only on the network.
    pub fn new(chain_id: u32, mainnet: bool) -> Result<TabletPage, minijinja::Error> {
        let mut env = Environment::new();
        env.add_template("tablet.html", include_str!("../../templates/tablet.html"))?;
        let html = env.get_template("tablet.html")?.render(context! {
            domain => crate::request::domain(chain_id).to_hex(),
            network => if mainnet { "mainnet" } else { "testnet" },
        })?;
        Ok(TabletPage(html))
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tablet", web::get().to(page))
        .route("/tablet/options", web::get().to(options))
        .route("/static/tablet.js", web::get().to(script));
}

async fn page(page: web::Data<TabletPage>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", CSP))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .body(page.0.clone())
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(TABLET_JS)
}

#[derive(serde::Deserialize)]
struct Who {
    principal: String,
}

async fn options(req: HttpRequest, bg: web::Data<BreakGlass>) -> HttpResponse {
    let principal = web::Query::<Who>::from_query(req.query_string())
        .ok()
        .and_then(|w| w.principal.parse::<Address>().ok());
    let Some(principal) = principal else {
        return problem(&Refusal::new(
            400,
            "invalid-principal",
            "Invalid principal",
            "ask with ?principal=<a Stacks principal>",
        ));
    };
    match bg.options(principal).await {
        Ok(o) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(o),
        Err(r) => problem(&r),
    }
}

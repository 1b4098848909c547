//! The reference handlers the load test measures beside the service, on the same framework
//! and worker count: `GET /hello` (the framework's floor: a small JSON answer) and
//! `POST /crypto` (only the unavoidable crypto: recover the SIP-018 signer of the request,
//! sign one Ed25519 JWT).
//!
//!   cargo run --release --example reference_server -- <port> <data-dir>

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use breakglass::domain::Role;
use breakglass::request;
use breakglass::stacks::tx::TESTNET_CHAIN_ID;
use breakglass::store::AccessRecord;
use breakglass::token::TokenIssuer;

/// The same allocator as the service, so that the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn hello() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "hello": "world" }))
}

async fn crypto(tokens: web::Data<Arc<TokenIssuer>>, body: web::Bytes) -> HttpResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let Ok(r) = request::verify(&body, TESTNET_CHAIN_ID, false, now) else {
        return HttpResponse::BadRequest().finish();
    };
    let record = AccessRecord {
        id: hex::encode(r.message_hash),
        provider: r.signer.to_string(),
        role: Role::Nurse,
        patient: r.patient,
        data_types: r.data_types,
        reason_sealed: String::new(),
        reason_hash: String::new(),
        device: r.device,
        nonce: r.nonce,
        issued_at: r.issued_at,
        granted_at: now,
        expires_at: now + 600,
        window_minutes: 10,
        window_blocks: 60,
        rules: vec![],
        message_hash: String::new(),
        signature: String::new(),
        on_call: None,
    };
    match tokens.issue(&tokens.claims(&record, &r.reason)) {
        Ok(t) => HttpResponse::Created().json(serde_json::json!({ "access_token": t })),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    // as the service runs (startup::no_huge_pages)
    breakglass::startup::no_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(18081);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "/tmp/reference-server".into()),
    );
    let tokens = Arc::new(
        TokenIssuer::load_or_generate(&dir, "iss", "fhir").map_err(std::io::Error::other)?,
    );
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(tokens.clone()))
            .route("/hello", web::get().to(hello))
            .route("/crypto", web::post().to(crypto))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}

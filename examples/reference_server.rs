//! The reference handlers the load test measures beside the service, on the same framework
//! and worker count: `GET /hello` (the framework's floor: a small JSON answer),
//! `POST /crypto` (only the unavoidable crypto: recover the SIP-018 signer of the request,
//! sign one Ed25519 JWT) and `POST /durable` (that crypto and the one unavoidable durable
//! write: the record appended to the store's own journal, synced, one write per group of
//! requests waiting for it, and nothing else: no redb, no checkpoints, no chain record or
//! notice). The last is the floor of a grant's latency on the machine's disk. Given a Redis
//! URL, also `POST /durable-redis`: the crypto and the record written to that Redis (one
//! `HSET` on the multiplexed async connection; the server syncs its append-only file once per
//! event loop for every write in it): a grant's floor on the shared store. And
//! `POST /durable-redis-grant-bytes`, for diagnosis only: the same, the record's value
//! lengthened to as many bytes as a grant's write sends Redis (`GRANT_WRITE_BYTES`), so that
//! what a grant costs beyond the bytes it must make durable can be told from what its bytes
//! cost the disk. And `POST /durable-redis-unlinked-grant`, for diagnosis too: the crypto and
//! a grant's durable work on Redis as one script, without its order (`UNLINKED_GRANT`).
//!
//!   cargo run --release --example reference_server -- <port> <data-dir> [<redis-url>]

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use actix_web::{web, App, HttpResponse, HttpServer};
use breakglass::domain::Role;
use breakglass::request;
use breakglass::stacks::tx::TESTNET_CHAIN_ID;
use breakglass::store::{AccessRecord, Journal};
use breakglass::token::TokenIssuer;

/// The same allocator as the service, so that the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn hello() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "hello": "world" }))
}

/// A record awaiting its synced write, and where to answer once it is durable.
type Write = (Vec<u8>, tokio::sync::oneshot::Sender<bool>);

/// The durable writes' file: zero-filled once, then overwritten from its start again each
/// time it is full, as the service's journal writes a spare segment.
const DURABLE_BYTES: u64 = 64 << 20;

/// Starts the thread that makes records durable: each group of waiting records is one frame
/// of the store's journal (`Journal::append`: direct I/O and `O_DSYNC`).
fn durable_writer(path: PathBuf) -> std::io::Result<mpsc::Sender<Write>> {
    Journal::zero_fill(&path, DURABLE_BYTES).map_err(std::io::Error::other)?;
    let mut journal = Journal::reuse(&path).map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::channel::<Write>();
    std::thread::Builder::new()
        .name("durable-writer".into())
        .spawn(move || {
            let mut seq = 0u64;
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                let payload: Vec<u8> = group.iter().flat_map(|(r, _)| r.iter().copied()).collect();
                if journal.bytes() + payload.len() as u64 + (1 << 20) > DURABLE_BYTES {
                    match Journal::reuse(&path) {
                        Ok(j) => journal = j,
                        Err(e) => {
                            // the waiting requests and every later one get 503
                            eprintln!("durable writer stopped: {e}");
                            return;
                        }
                    }
                }
                seq += 1;
                let ok = journal.append(seq, &payload).is_ok();
                for (_, done) in group {
                    let _ = done.send(ok);
                }
            }
        })?;
    Ok(tx)
}

/// The request verified and the record a grant would hold (no policy, no store).
fn verified(body: &[u8]) -> Option<AccessRecord> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = request::verify(body, TESTNET_CHAIN_ID, false, now).ok()?;
    let record = AccessRecord {
        id: breakglass::domain::AccessId(r.message_hash),
        provider: r.signer,
        role: Role::Nurse,
        patient: r.patient,
        data_types: r.data_types,
        reason_sealed: String::new(),
        // as the grant does: the token carries a hash of the reason (there salted), never the
        // reason; the same work here
        reason_hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(r.reason.as_bytes())),
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
        degraded: false,
        chain_lag_blocks: 0,
        patient_registered: Some(true),
    };
    Some(record)
}

fn granted(token: Result<String, impl std::fmt::Debug>) -> HttpResponse {
    match token {
        Ok(t) => HttpResponse::Created().json(serde_json::json!({ "access_token": t })),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn crypto(tokens: web::Data<Arc<TokenIssuer>>, body: web::Bytes) -> HttpResponse {
    let Some(record) = verified(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    granted(tokens.issue(&tokens.claims(&record)))
}

/// The verified record and its bytes, or the status to answer instead.
fn record_and_bytes(body: &[u8]) -> Result<(AccessRecord, Vec<u8>), u16> {
    let record = verified(body).ok_or(400u16)?;
    let bytes = serde_json::to_vec(&record).map_err(|_| 500u16)?;
    Ok((record, bytes))
}

fn status(code: u16) -> HttpResponse {
    HttpResponse::new(actix_web::http::StatusCode::from_u16(code).unwrap_or_default())
}

async fn durable(
    tokens: web::Data<Arc<TokenIssuer>>,
    writer: web::Data<mpsc::Sender<Write>>,
    body: web::Bytes,
) -> HttpResponse {
    let (record, bytes) = match record_and_bytes(&body) {
        Ok(r) => r,
        Err(code) => return status(code),
    };
    // as the service does: the token is signed while the write syncs
    let (done, written) = tokio::sync::oneshot::channel();
    if writer.send((bytes, done)).is_err() {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let token = tokens.issue(&tokens.claims(&record));
    match written.await {
        Ok(true) => granted(token),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// How long the record's value is made for `/durable-redis-grant-bytes`: so that the write
/// adds as many bytes to Redis's append-only file as a grant's write did before the grants'
/// follow-up (3,685 bytes each, in the load test's grants one at a time, against 738 for
/// `/durable-redis`): its access, audit entry, notice, chain operation, their indexes, the
/// audit head, its nonce and rate. A grant's write now leaves its notice and chain operation
/// to the follow-up and writes ~0.9 KB less: this row overstates it by that much.
const GRANT_WRITE_BYTES: usize = 3_550;

async fn durable_redis(
    tokens: web::Data<Arc<TokenIssuer>>,
    redis: web::Data<redis::aio::ConnectionManager>,
    body: web::Bytes,
) -> HttpResponse {
    redis_write(tokens, redis, body, 0).await
}

async fn durable_redis_grant_bytes(
    tokens: web::Data<Arc<TokenIssuer>>,
    redis: web::Data<redis::aio::ConnectionManager>,
    body: web::Bytes,
) -> HttpResponse {
    redis_write(tokens, redis, body, GRANT_WRITE_BYTES).await
}

/// The crypto and one `HSET` of the record, its value lengthened to `at_least` bytes.
async fn redis_write(
    tokens: web::Data<Arc<TokenIssuer>>,
    redis: web::Data<redis::aio::ConnectionManager>,
    body: web::Bytes,
    at_least: usize,
) -> HttpResponse {
    let (record, mut bytes) = match record_and_bytes(&body) {
        Ok(r) => r,
        Err(code) => return status(code),
    };
    if bytes.len() < at_least {
        bytes.resize(at_least, b' ');
    }
    // as the service does: the token is signed while the write syncs
    let mut conn = redis.get_ref().clone();
    let mut cmd = redis::cmd("HSET");
    cmd.arg("reference:accesses")
        .arg(record.id.to_string())
        .arg(bytes);
    let written = tokio::spawn(async move { cmd.query_async::<i64>(&mut conn).await });
    let token = tokens.issue(&tokens.claims(&record));
    match written.await {
        Ok(Ok(_)) => granted(token),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// For diagnosis only: a grant's durable work on Redis without its order, as one script sent
/// from the request's own thread on the multiplexed connection, as the floor's `HSET` is (no
/// writer thread, no group, no writer's mark, no audit head checked or linked). As the
/// service's grant script does (`linked_script`): up to 16 stale nonces forgotten, the nonce
/// looked up and taken, the clinician's rate (GCRA) looked up and taken, and the access, the
/// audit event (numbered here: `HINCRBY`) and its by-access index written. Its distance from
/// `/durable-redis` is what that work costs beyond the floor's write; the service's grant adds
/// the writer's order and the audit links.
const UNLINKED_GRANT: &str = r"
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', secs, 'LIMIT', 0, 16)
if #stale > 0 then redis.call('ZREM', KEYS[3], unpack(stale)) end
local seen = redis.call('ZSCORE', KEYS[3], ARGV[4])
if seen and tonumber(seen) > secs then return -1 end
local tat = tonumber(redis.call('HGET', KEYS[4], ARGV[6]) or now)
if tat < now then tat = now end
if tat + tonumber(ARGV[7]) - now > tonumber(ARGV[8]) then return -2 end
local seq = redis.call('HINCRBY', KEYS[5], 'audit-seq', 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], seq, ARGV[3])
redis.call('HSET', KEYS[6], ARGV[1] .. ':' .. seq, '')
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[6], tat + tonumber(ARGV[7]))
return seq
";

async fn durable_redis_unlinked_grant(
    tokens: web::Data<Arc<TokenIssuer>>,
    redis: web::Data<redis::aio::ConnectionManager>,
    script: web::Data<redis::Script>,
    body: web::Bytes,
) -> HttpResponse {
    let (record, bytes) = match record_and_bytes(&body) {
        Ok(r) => r,
        Err(code) => return status(code),
    };
    let id = record.id.to_string();
    let event = serde_json::json!({ "grant": &record, "at": record.granted_at });
    let Ok(event) = serde_json::to_vec(&event) else {
        return status(500);
    };
    let clinician = record.provider.to_string();
    let nonce = format!("{clinician}:{}", record.nonce);
    let until = record.issued_at + 600;
    let mut conn = redis.get_ref().clone();
    let script = script.into_inner();
    // as the service does: the token is signed while the write syncs
    let written = tokio::spawn(async move {
        let mut invocation = script.prepare_invoke();
        invocation
            .key("reference:accesses")
            .key("reference:audit")
            .key("reference:nonces")
            .key("reference:rates")
            .key("reference:meta")
            .key("reference:audit-by-access")
            .arg(&id)
            .arg(bytes)
            .arg(event)
            .arg(nonce)
            .arg(until)
            .arg(clinician)
            // GCRA: an emission of 1 ms, a burst no load test reaches
            .arg(1u64)
            .arg(1_000_000_000_000u64);
        invocation.invoke_async::<i64>(&mut conn).await
    });
    let token = tokens.issue(&tokens.claims(&record));
    match written.await {
        Ok(Ok(seq)) if seq > 0 => granted(token),
        Ok(Ok(-2)) => status(429),
        Ok(Ok(_)) => status(409),
        _ => HttpResponse::ServiceUnavailable().finish(),
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
    let keyring =
        breakglass::seal::Keyring::from_keys(&[[7; 32]]).map_err(std::io::Error::other)?;
    let tokens = Arc::new(
        TokenIssuer::load_or_generate(&dir, "iss", "fhir", &keyring)
            .map_err(std::io::Error::other)?,
    );
    let writer = durable_writer(dir.join("durable.journal"))?;
    let redis = match args.get(3) {
        Some(url) => Some(
            redis::Client::open(url.as_str())
                .map_err(std::io::Error::other)?
                .get_connection_manager()
                .await
                .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    HttpServer::new(move || {
        let app = App::new()
            .app_data(web::Data::new(tokens.clone()))
            .app_data(web::Data::new(writer.clone()))
            .route("/hello", web::get().to(hello))
            .route("/crypto", web::post().to(crypto))
            .route("/durable", web::post().to(durable));
        match &redis {
            Some(r) => app
                .app_data(web::Data::new(r.clone()))
                .app_data(web::Data::new(redis::Script::new(UNLINKED_GRANT)))
                .route("/durable-redis", web::post().to(durable_redis))
                .route(
                    "/durable-redis-unlinked-grant",
                    web::post().to(durable_redis_unlinked_grant),
                )
                .route(
                    "/durable-redis-grant-bytes",
                    web::post().to(durable_redis_grant_bytes),
                ),
            None => app,
        }
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}

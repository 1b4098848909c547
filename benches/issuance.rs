//! Micro-benchmarks of break-glass issuance: the unavoidable crypto (verify the SIP-018
//! request, sign one Ed25519 JWT), and the whole grant path with its durable write, without
//! HTTP. `cargo bench --bench issuance`; the HTTP load test is `scripts/bench` (see README).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use breakglass::access::BreakGlass;
use breakglass::chain::contracts::Contracts;
use breakglass::chain::rpc::NodeClient;
use breakglass::chain::state::ChainState;
use breakglass::chain::status::FollowerStatus;
use breakglass::configuration::Settings;
use breakglass::domain::{DataType, PatientId, ProviderStatus, Role};
use breakglass::policy::Policies;
use breakglass::request;
use breakglass::stacks::{tx::TESTNET_CHAIN_ID, Address};
use breakglass::store::{Batch, Preferences, ProviderState, RedbStore, Store};
use breakglass::token::TokenIssuer;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use secp256k1::{PublicKey, SecretKey, SECP256K1};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn body(key: &SecretKey, nonce: u64) -> Vec<u8> {
    let m = request::message(
        &PatientId([5; 32]),
        &["allergies", "medications"],
        "unresponsive, suspected anaphylaxis",
        nonce,
        now(),
        Some("tablet"),
    );
    serde_json::to_vec(&request::sign(key, TESTNET_CHAIN_ID, &m)).unwrap()
}

fn benches(c: &mut Criterion) {
    let key = SecretKey::from_slice(&[11u8; 32]).unwrap();
    let principal =
        Address::from_public_key(&PublicKey::from_secret_key(SECP256K1, &key), false).to_string();
    let dir = tempfile::tempdir().unwrap();
    let keyring = Arc::new(breakglass::seal::Keyring::from_keys(&[[7; 32]]).unwrap());
    let tokens =
        Arc::new(TokenIssuer::load_or_generate(dir.path(), "iss", "fhir", &keyring).unwrap());
    let one = body(&key, 1);

    c.bench_function("verify request (parse + SIP-018 recover)", |b| {
        b.iter(|| request::verify(&one, TESTNET_CHAIN_ID, false, now()).unwrap())
    });

    // the crypto-only reference: what any correct implementation must do per request
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("bench.redb")).unwrap());
    store
        .apply(Batch {
            providers: vec![(
                principal.parse().unwrap(),
                Some(ProviderState::Registered {
                    role: Role::Nurse,
                    status: ProviderStatus::Verified,
                    info_hash: None,
                }),
            )],
            preferences: vec![(
                PatientId([5; 32]),
                Preferences {
                    allow: true,
                    data_types: DataType::ALL.to_vec(),
                    max_window: 720,
                    is_default: true,
                    registered: Some(false),
                },
            )],
            ..Batch::default()
        })
        .unwrap();
    c.bench_function("crypto floor (verify request + sign JWT)", |b| {
        b.iter(|| {
            let r = request::verify(&one, TESTNET_CHAIN_ID, false, now()).unwrap();
            let record = breakglass::store::AccessRecord {
                id: breakglass::domain::AccessId([0; 32]),
                provider: r.signer,
                role: Role::Nurse,
                patient: r.patient,
                data_types: r.data_types,
                reason_sealed: String::new(),
                reason_hash: String::new(),
                device: None,
                nonce: r.nonce,
                issued_at: r.issued_at,
                granted_at: now(),
                expires_at: now() + 600,
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
            tokens.issue(&tokens.claims(&record)).unwrap()
        })
    });

    // the whole grant: checks from the cache, Cedar, one durable redb write, the token
    let mut settings = Settings::default();
    settings.issuance.grants_per_minute = 1_000_000;
    let state = ChainState::new(
        store.clone(),
        NodeClient::new("http://127.0.0.1:9", Duration::from_millis(10), 0),
        Contracts {
            address: settings.chain.contracts_address,
        },
    );
    // a follower in touch with the node at block 1, as the poller keeps it
    let follower = Arc::new(FollowerStatus::default());
    follower.applied.store(1, Ordering::SeqCst);
    follower.node_tip.store(1, Ordering::SeqCst);
    follower.node_reachable.store(true, Ordering::SeqCst);
    let polled = follower.clone();
    std::thread::spawn(move || loop {
        polled
            .last_poll_ok_ms
            .store(breakglass::clock::now_ms(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
    });
    let bg = BreakGlass::new(
        &settings,
        state,
        follower,
        Arc::new(Policies::defaults().unwrap()),
        tokens.clone(),
        keyring.clone(),
        breakglass::metrics::Metrics::new(),
        Arc::new(breakglass::coordination::Coordinator::local(
            settings.issuance.grants_per_minute,
        )),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut nonce = 10u64;
    c.bench_function("grant (checks + durable write + token)", |b| {
        b.iter_batched(
            || {
                nonce += 1;
                body(&key, nonce)
            },
            |b| rt.block_on(bg.request(&b)).map_err(|r| r.detail).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = issuance;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(issuance);

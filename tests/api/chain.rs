//! The service against the real devnet: the follower keeps the chain-state cache within a
//! block of the chain, the submitter's operations are confirmed exactly once across
//! restarts, and readiness follows the node.

use std::time::Duration;

use crate::support::*;
use breakglass::domain::{DataType, PatientId, ProviderStatus, Purpose, Role};
use breakglass::stacks::Value;
use breakglass::store::{Consent, ConsentKey, Preferences, ProviderState, SubmissionState};

const SECS: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_sees_verification_and_suspension_within_one_block() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(&devnet.rpc, dir.path(), |_| {}).await;
    devnet.observe(app.observer_addr).await;
    eventually("ready", SECS, async || ready(&app).await.then_some(())).await;

    let deployer = deployer_key();
    devnet.deployer_as_authority().await;
    let provider = new_key();
    let who = address_of(&provider);
    devnet.fund(&who).await;
    devnet.mine().await;

    // a provider the service has never heard of: one read-only call fills the cache
    let state = app.follower.state.provider(&who).await.unwrap();
    assert_eq!(state, ProviderState::Unregistered);

    devnet.register_nurse(&provider).await;
    devnet.mine().await;
    let pending = ProviderState::Registered {
        role: Role::Nurse,
        status: ProviderStatus::Pending,
        info_hash: Some([1u8; 32]),
    };
    // the block names a principal the cache does not hold: nothing is stored for it, and its
    // first use reads it from the node
    eventually("registration seen", SECS, async || {
        (app.status.applied() >= devnet.tip().await).then_some(())
    })
    .await;
    assert_eq!(app.store.provider(&who).unwrap(), None);
    assert_eq!(app.follower.state.provider(&who).await.unwrap(), pending);

    for (function, status) in [
        ("verify-provider", ProviderStatus::Verified),
        ("suspend-provider", ProviderStatus::Suspended),
    ] {
        let before = devnet.tip().await;
        let txid = devnet
            .call(&deployer, "access-control", function, vec![principal(&who)])
            .await;
        devnet.mine().await;
        assert_eq!(devnet.receipt(&txid).await["status"], "success");
        let mined_at = devnet.tip().await;
        assert_eq!(mined_at, before + 1, "one block");
        let want = ProviderState::Registered {
            role: Role::Nurse,
            status,
            info_hash: Some([1u8; 32]),
        };
        // seen from that one block alone: no further block is mined while we wait
        eventually(function, SECS, async || {
            (app.store.provider(&who).unwrap() == Some(want.clone())).then_some(())
        })
        .await;
        assert_eq!(app.follower.state.provider(&who).await.unwrap(), want);
        assert_eq!(devnet.tip().await, mined_at);
        // the follower marks the block applied just after its write lands
        eventually("applied", SECS, async || {
            (app.status.applied() >= mined_at).then_some(())
        })
        .await;
    }

    // a patient's emergency preferences and consents, each seen from the one block that set it
    let patient_key = new_key();
    let patient = address_of(&patient_key);
    // the id patient-consent derives: sha256(consensus bytes of the principal ++ salt)
    let salt = [0x42u8; 32];
    let derived = [principal(&patient).serialize(), salt.to_vec()].concat();
    let patient_id = PatientId(<sha2::Sha256 as sha2::Digest>::digest(&derived).into());
    devnet.fund(&patient).await;
    devnet
        .call(
            &patient_key,
            "patient-consent",
            "register-patient",
            vec![Value::buffer(salt)],
        )
        .await;
    devnet.mine().await;
    // (a miss is read as of the block the service applied last: the registration's)
    let registered_at = devnet.tip().await;
    eventually("the registration applied", SECS, async || {
        (app.status.applied() >= registered_at).then_some(())
    })
    .await;
    // before any preferences are set, a miss reads the contract's defaults
    let defaults = app.follower.state.preferences(&patient_id).await.unwrap();
    assert!(defaults.allow && defaults.is_default && defaults.max_window == 720);

    devnet
        .set_preferences(&patient_key, false, &["allergies"], 30)
        .await;
    devnet.mine().await;
    let opted_out = Preferences {
        allow: false,
        data_types: vec![DataType::Allergies],
        max_window: 30,
        is_default: false,
        registered: Some(true),
    };
    eventually("preferences seen", SECS, async || {
        (app.store.preferences(&patient_id).unwrap() == Some(opted_out.clone())).then_some(())
    })
    .await;

    let key = ConsentKey {
        patient: patient_id,
        provider: who,
        data_type: DataType::Medications,
        purpose: Purpose::Treatment,
    };
    assert!(!app.follower.state.consent(&key).await.unwrap().active);
    let expires = devnet.tip().await + 100;
    devnet
        .call(
            &patient_key,
            "patient-consent",
            "grant-consent",
            vec![
                principal(&who),
                Value::ascii("medications"),
                Value::UInt(expires.into()),
            ],
        )
        .await;
    devnet.mine().await;
    let granted = Consent {
        active: true,
        expires_at: expires,
    };
    eventually("consent seen", SECS, async || {
        (app.store.consent(&key).unwrap() == Some(granted.clone())).then_some(())
    })
    .await;
    devnet
        .call(
            &patient_key,
            "patient-consent",
            "revoke-consent",
            vec![principal(&who), Value::ascii("medications")],
        )
        .await;
    devnet.mine().await;
    eventually("revocation seen", SECS, async || {
        (app.store.consent(&key).unwrap().is_some_and(|c| !c.active)).then_some(())
    })
    .await;
    app.stop().await;
}

fn anchor_args(n: u8) -> Vec<Value> {
    vec![Value::buffer([n; 32]), Value::UInt(n.into())]
}

/// Hands the submitter operation `anchor:n`, an anchor of the audit log (`anchor_args(n)`).
async fn submit_anchor(app: &breakglass::startup::Application, n: u8) {
    app.submitter
        .submit(
            &format!("anchor:{n}"),
            "access-control",
            "anchor-audit",
            &anchor_args(n),
        )
        .await
        .unwrap();
}

async fn state_of(app: &breakglass::startup::Application, id: &str) -> SubmissionState {
    app.store.submission(id).unwrap().unwrap().state
}

async fn confirmed(app: &breakglass::startup::Application, id: &str) {
    eventually(id, SECS, async || {
        matches!(state_of(app, id).await, SubmissionState::Confirmed { .. }).then_some(())
    })
    .await;
}

/// The submitter's own loop slowed right down: the test drives its steps.
fn slow(s: &mut breakglass::configuration::Settings) {
    s.submitter.interval_ms = 3_600_000;
}

/// A service in `dir` on `devnet` (its submitter slowed right down), its key funded and made the
/// contract's responder, ready.
async fn responder(devnet: &Devnet, dir: &std::path::Path) -> breakglass::startup::Application {
    let app = app(&devnet.rpc, dir, slow).await;
    devnet.observe(app.observer_addr).await;
    devnet.make_responder(&app.submitter.sender).await;
    eventually("ready", SECS, async || ready(&app).await.then_some(())).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_operations_are_confirmed_once_across_restarts() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let app1 = responder(&devnet, dir.path()).await;
    let service = app1.submitter.sender;

    // 1. an anchor, signed with the service's key, confirmed through the follower
    submit_anchor(&app1, 1).await;
    app1.submitter.tick().await.unwrap();
    assert!(matches!(
        state_of(&app1, "anchor:1").await,
        SubmissionState::Sent { broadcasts: 1, .. }
    ));
    devnet.mine().await;
    confirmed(&app1, "anchor:1").await;

    // 2. signed and kept, then the service dies before it broadcasts
    submit_anchor(&app1, 2).await;
    app1.submitter.prepare().await.unwrap();
    let SubmissionState::Sent { txid: txid2, .. } = state_of(&app1, "anchor:2").await else {
        panic!("not signed")
    };
    // 3. broadcast, then the service dies before the block
    submit_anchor(&app1, 3).await;
    app1.submitter.tick().await.unwrap();
    app1.stop().await;

    let app2 = app(&devnet.rpc, dir.path(), slow).await;
    devnet.observe(app2.observer_addr).await;
    // the same operation asked for again is the same operation
    let again = app2
        .submitter
        .submit(
            "anchor:2",
            "access-control",
            "anchor-audit",
            &anchor_args(2),
        )
        .await
        .unwrap();
    assert!(matches!(again.state, SubmissionState::Sent { ref txid, .. } if *txid == txid2));
    assert!(app2
        .submitter
        .submit(
            "anchor:2",
            "access-control",
            "anchor-audit",
            &anchor_args(9)
        )
        .await
        .is_err());
    app2.submitter.tick().await.unwrap();
    devnet.mine().await;
    confirmed(&app2, "anchor:2").await;
    confirmed(&app2, "anchor:3").await;
    let SubmissionState::Confirmed {
        txid: Some(mined2), ..
    } = state_of(&app2, "anchor:2").await
    else {
        panic!()
    };
    assert_eq!(
        mined2, txid2,
        "the transaction signed before the crash is the one mined"
    );

    // 4. broadcast and mined while no follower listens: a rebroadcast meets BadNonce, and the
    //    chain says the operation is done
    submit_anchor(&app2, 4).await;
    app2.submitter.tick().await.unwrap();
    app2.stop().await;
    devnet.mine().await;
    let app3 = app(&devnet.rpc, dir.path(), |s| {
        s.submitter.interval_ms = 3_600_000;
        s.submitter.rebroadcast_after_blocks = 1;
    })
    .await;
    devnet.mine_empty(2).await;
    eventually("node tip seen", SECS, async || {
        (app3.status.node_tip() >= devnet.tip().await).then_some(())
    })
    .await;
    app3.submitter.tick().await.unwrap();
    confirmed(&app3, "anchor:4").await;

    // exactly one transaction per operation ever reached the chain
    assert_eq!(devnet.nonce(&service).await, 4);
    let count = app3
        .follower
        .state
        .rpc
        .call_read(
            &format!("{}.access-control", crate::support::deployer()),
            "get-anchor-count",
            &[],
            &service,
        )
        .await
        .unwrap();
    assert_eq!(count, Value::UInt(4));
    app3.stop().await;
}

/// An operation whose nonce another transaction of the service's key took in the mempool
/// (`ConflictingNonceInMempool`; not on chain, so not done) is signed again with the lowest
/// nonce none of the service's own open transactions holds, and the next nonce never goes
/// back. Before, it was signed again with the chain's nonce, over the first of ours in
/// flight, and the next nonce went back under them: each later operation met a conflict
/// until blocks caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_nonce_was_taken_is_signed_after_the_ones_in_flight() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = responder(&devnet, dir.path()).await;
    let service = app.submitter.sender;
    let nonce_of = async |id: &str| match state_of(&app, id).await {
        SubmissionState::Sent { nonce, .. } => nonce,
        other => panic!("{id}: {other:?}"),
    };
    let submit = async |n: u8| {
        submit_anchor(&app, n).await;
    };
    // (anchors of counts 10, 20, then 50 and 30: with the other transaction's 25, in the
    // order they are mined, each covers more than the last)
    // two in flight (nonces 0 and 1), a third signed and kept (2), not broadcast yet
    submit(10).await;
    submit(20).await;
    app.submitter.tick().await.unwrap();
    submit(50).await;
    app.submitter.prepare().await.unwrap();
    assert_eq!(nonce_of("anchor:50").await, 2);
    // something else signed with the service's key takes nonce 2 in the mempool
    let key = breakglass::keys::ServiceKeys::load_or_generate(dir.path())
        .unwrap()
        .stacks;
    devnet
        .call(&key, "access-control", "anchor-audit", anchor_args(25))
        .await;
    // the third's broadcast meets the conflict: signed again with the lowest nonce none of
    // ours holds (2, which the other may yet leave unused), not over our own 0
    app.submitter.tick().await.unwrap();
    assert_eq!(nonce_of("anchor:50").await, 2, "not over ours in flight");
    submit(30).await;
    app.submitter.tick().await.unwrap();
    assert_eq!(
        nonce_of("anchor:30").await,
        3,
        "the next nonce did not go back"
    );
    // the other's transaction is mined with ours: the third's nonce is used, and it is
    // signed again after them all
    devnet.mine().await;
    for n in [10, 20, 30] {
        confirmed(&app, &format!("anchor:{n}")).await;
    }
    app.submitter.tick().await.unwrap();
    assert_eq!(nonce_of("anchor:50").await, 4);
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    confirmed(&app, "anchor:50").await;
    assert_eq!(
        devnet.nonce(&service).await,
        5,
        "five transactions, none refused"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_node_through_an_outage() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let devnet_dir = data.path().join("devnet");
    let port_s = port.to_string();
    let devnet_args = [
        "--port",
        port_s.as_str(),
        "--data-dir",
        devnet_dir.to_str().unwrap(),
    ];
    let mut devnet = Devnet::start(&devnet_args).await;
    let dir = tempfile::tempdir().unwrap();
    // the view goes stale after 3 blocks' time without the node: 9 s
    let app = app(&devnet.rpc, dir.path(), |s| {
        s.issuance.seconds_per_block = 3
    })
    .await;
    devnet.observe(app.observer_addr).await;
    eventually("ready", SECS, async || ready(&app).await.then_some(())).await;
    devnet.mine_empty(3).await;
    let tip = devnet.tip().await;
    eventually("blocks applied", SECS, async || {
        (app.status.applied() == tip).then_some(())
    })
    .await;

    devnet.kill().await;
    // a node away for less than the grants' staleness leaves the service ready, as its grants
    // go on (before, the first failed poll made every replica unready at once)
    eventually("a poll that failed", SECS, async || {
        (!app
            .status
            .node_reachable
            .load(std::sync::atomic::Ordering::SeqCst))
        .then_some(())
    })
    .await;
    assert!(ready(&app).await, "ready while the view is not yet stale");
    eventually("not ready while the node is down", SECS, async || {
        (!ready(&app).await).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !ready(&app).await,
        "still not ready after 30 s without a node"
    );

    let observer = format!("http://{}", app.observer_addr);
    let mut args = devnet_args.to_vec();
    args.extend(["--observer", observer.as_str()]);
    let devnet = Devnet::start(&args).await;
    assert_eq!(
        devnet.tip().await,
        tip,
        "the devnet came back with its chain"
    );
    devnet.mine_empty(5).await;
    let tip = devnet.tip().await;
    eventually("ready again", SECS, async || {
        ready(&app).await.then_some(())
    })
    .await;
    eventually("caught up", SECS, async || {
        (app.status.applied() == tip).then_some(())
    })
    .await;
    app.stop().await;
}

/// A catch-up reads the node's tip before it re-reads the cached entries, so that they are at
/// least as new as the tip they land with. Here a suspension is mined while the catch-up's read
/// of the nurse's entry is on its way back: the entry says verified, as it was when read, and
/// the follower must not mark the suspension's block as read past with it. Before, it read the
/// tip after the entries: the block was marked read (its push then found it known and read
/// nothing), and the nurse stayed verified in the cache until another block named them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_mined_while_a_catch_up_reads_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (devnet, demo) = demo_devnet(dir.path(), "0").await;
    let proxy = HoldingProxy::start(&devnet.rpc);
    // the node's pushes go nowhere: the follower catches up by polling, every 5 s of quiet
    let app = app(&proxy.url, &dir.path().join("service"), |s| {
        s.chain.request_timeout_ms = 60_000;
    })
    .await;
    let nurse = provider(&demo, "nurse");
    let who: breakglass::stacks::Address = nurse["principal"].as_str().unwrap().parse().unwrap();
    eventually("the first catch-up", SECS, async || {
        (app.status.applied() == devnet.tip().await).then_some(())
    })
    .await;
    let verified = app.follower.state.provider(&who).await.unwrap();
    assert!(
        matches!(
            verified,
            ProviderState::Registered {
                status: ProviderStatus::Verified,
                ..
            }
        ),
        "{verified:?}"
    );
    // the next catch-up's read of the nurse's entry is held, and the suspension mined meanwhile
    let (told, done) = proxy.hold(
        principal(&who)
            .to_hex()
            .trim_start_matches("0x")
            .to_string(),
    );
    devnet.mine_empty(1).await;
    tokio::time::timeout(Duration::from_secs(30), told)
        .await
        .expect("a catch-up read the nurse's entry")
        .unwrap();
    crate::breakglass::send_suspension_by(&devnet, &demo, nurse).await;
    devnet.mine().await;
    done.send(()).unwrap();
    eventually(
        "the suspension in the cache",
        Duration::from_secs(30),
        async || {
            matches!(
                app.store.provider(&who).unwrap(),
                Some(ProviderState::Registered {
                    status: ProviderStatus::Suspended,
                    ..
                })
            )
            .then_some(())
        },
    )
    .await;
    app.stop().await;
    proxy.server.stop(false).await;
}

/// What a principal is not (a reviewer, a registered provider) is not kept in the cache: rows
/// that said so, stored by an earlier version, are dropped by the next catch-up, which used to
/// read each from the node again (every catch-up, for every key anyone had signed in with),
/// while a real reviewer's and provider's rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_drops_what_principals_are_not_and_keeps_what_they_are() {
    use breakglass::store::{Batch, Store};
    let dir = tempfile::tempdir().unwrap();
    let (devnet, demo) = demo_devnet(dir.path(), "0").await;
    let service = dir.path().join("service");
    let (made, nurse, reviewer) = (
        address_of(&new_key()),
        provider(&demo, "nurse")["principal"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        provider(&demo, "reviewer")["principal"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    // and a patient id no one registered, and one registered (as stored before ids the node
    // says are not registered were remembered in memory instead)
    let (nobody, registered): (breakglass::domain::PatientId, breakglass::domain::PatientId) = (
        breakglass::domain::PatientId([0x5a; 32]),
        patient(&demo, true).parse().unwrap(),
    );
    let prefs = |registered| breakglass::store::Preferences {
        allow: true,
        data_types: vec![],
        max_window: 1,
        is_default: true,
        registered: Some(registered),
    };
    {
        std::fs::create_dir_all(&service).unwrap();
        let store = breakglass::store::RedbStore::open(&service.join("breakglass.redb")).unwrap();
        store
            .apply(Batch {
                reviewers: vec![(made, false), (nurse, false), (reviewer, true)],
                providers: vec![(made, Some(ProviderState::Unregistered))],
                preferences: vec![(nobody, prefs(false)), (registered, prefs(true))],
                ..Batch::default()
            })
            .unwrap();
    }
    // the node's pushes go nowhere: the follower catches up by polling
    let app = app(&devnet.rpc, &service, |_| {}).await;
    eventually("the first catch-up", SECS, async || {
        (app.status.applied() == devnet.tip().await).then_some(())
    })
    .await;
    assert_eq!(app.store.reviewer(&made).unwrap(), None);
    assert_eq!(app.store.reviewer(&nurse).unwrap(), None);
    assert_eq!(app.store.provider(&made).unwrap(), None);
    assert_eq!(app.store.reviewer(&reviewer).unwrap(), Some(true));
    assert_eq!(app.store.preferences(&nobody).unwrap(), None);
    let kept = app.store.preferences(&registered).unwrap().unwrap();
    assert_eq!(kept.registered, Some(true));
    assert_ne!(kept.max_window, 1, "read again from the node");
    // and what they are not is still answered (from the node, then from memory)
    assert!(!app.follower.state.is_reviewer(&nurse).await.unwrap());
    assert!(app.follower.state.is_reviewer(&reviewer).await.unwrap());
    app.stop().await;
}

/// Our signed transaction's bytes found in a block are not taken for it being mined unless its
/// nonce is used: another transaction can carry a copy of them (in a `buff` argument, say), and
/// ours, still on its way, is not marked failed; one mined and refused by the contract is. Before, an operation without its effect on
/// chain whose bytes a block held was marked failed for good, though its transaction was
/// still to be mined (and if dropped, its nonce left every later one waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_our_transaction_inside_a_block_does_not_fail_its_operation() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = responder(&devnet, dir.path()).await;
    submit_anchor(&app, 7).await;
    app.submitter.prepare().await.unwrap();
    let SubmissionState::Sent { raw, .. } = state_of(&app, "anchor:7").await else {
        panic!("signed and kept");
    };
    // a block the node served, with a copy of our transaction's bytes inside it
    let rpc = &app.follower.state.rpc;
    let mut block = rpc.block_at(devnet.tip().await).await.unwrap().unwrap();
    block.bytes.extend(hex::decode(&raw).unwrap());
    let mut changes = Vec::new();
    breakglass::chain::submitter::confirmations(
        &block,
        rpc,
        &app.follower.state.contracts,
        app.store.as_ref(),
        &mut changes,
    )
    .await
    .unwrap();
    assert!(changes.is_empty(), "nothing marked: {changes:?}");
    // ours, sent and mined, is confirmed as usual
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    confirmed(&app, "anchor:7").await;
    // and one the contract refuses when it is mined (an anchor covering fewer entries than the
    // last), its nonce used, is marked failed
    submit_anchor(&app, 5).await;
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    eventually("anchor:5 failed", SECS, async || {
        matches!(
            state_of(&app, "anchor:5").await,
            SubmissionState::Failed { .. }
        )
        .then_some(())
    })
    .await;

    // after skipped blocks, a check of the operations they may have mined that cannot finish
    // (here the store refuses the write of what it found) is made again at the next tick.
    // Before, the mark was cleared first and put back only when the node's nonce could not be
    // read: the rest stayed sent for good
    let mut seen_as_sent = app.store.submission("anchor:7").unwrap().unwrap();
    let SubmissionState::Confirmed {
        txid: Some(txid),
        nonce: Some(nonce),
        raw: Some(raw),
        ..
    } = seen_as_sent.state.clone()
    else {
        panic!("anchor:7 confirmed with its transaction");
    };
    seen_as_sent.state = SubmissionState::Sent {
        txid,
        nonce,
        raw,
        sent_at_height: 1,
        broadcasts: 1,
    };
    breakglass::store::apply_async(
        &app.store,
        breakglass::store::Batch {
            submissions: vec![seen_as_sent],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let skipped = &app.status.skipped_blocks;
    skipped.store(true, std::sync::atomic::Ordering::SeqCst);
    app.redb.as_ref().unwrap().stop_writing("the disk is gone");
    assert!(app.submitter.reconcile().await.is_err());
    assert!(
        skipped.load(std::sync::atomic::Ordering::SeqCst),
        "checked again at the next tick"
    );
    app.stop().await;
}

/// An operation this replica cannot make a transaction of (its arguments do not decode:
/// written by a newer version during an upgrade, say) is left pending, for a replica that can,
/// and the operations after it are signed and sent; one that could not be signed for an hour
/// is failed, so that what waits on it goes on. Before, its error ended every tick before
/// anything after it was signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_cannot_be_signed_holds_nothing_back() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = responder(&devnet, dir.path()).await;
    let garbled = breakglass::chain::submitter::operation(
        "0-garbled",
        "access-control",
        "anchor-audit",
        &["not a clarity value".to_string()],
    );
    let mut old = breakglass::chain::submitter::operation(
        "0-garbled-long-ago",
        "access-control",
        "anchor-audit",
        &["not a clarity value".to_string()],
    );
    old.created_at_ms -= breakglass::chain::submitter::UNSIGNABLE_FOR_MS + 1_000;
    app.store
        .apply(breakglass::store::Batch {
            submissions: vec![garbled, old],
            ..breakglass::store::Batch::default()
        })
        .unwrap();
    submit_anchor(&app, 1).await;
    app.submitter.tick().await.unwrap();
    assert_eq!(state_of(&app, "0-garbled").await, SubmissionState::Pending);
    match state_of(&app, "0-garbled-long-ago").await {
        SubmissionState::Failed { result, nonce, .. } => {
            assert!(result.starts_with("not signed"), "{result}");
            assert_eq!(nonce, None, "no nonce taken for it");
        }
        other => panic!("{other:?}"),
    }
    match state_of(&app, "anchor:1").await {
        SubmissionState::Sent { nonce, .. } => assert_eq!(nonce, 0, "the first nonce"),
        other => panic!("{other:?}"),
    }
    devnet.mine().await;
    confirmed(&app, "anchor:1").await;
    // the failure is in the audit log, once, with why (the one left pending is not)
    app.submitter.tick().await.unwrap();
    let failures = logged(app.store.as_ref(), "chain-failure");
    assert!(
        matches!(&failures[..], [breakglass::audit::Event::ChainFailure {
            operation, function, access: None, txid: None, result, cleared: false, ..
        }] if operation == "0-garbled-long-ago" && function == "anchor-audit" && result.starts_with("not signed")),
        "{failures:?}"
    );
    // and counted for operators
    assert_eq!(
        app.status
            .operations_failed
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A reorg the pushes did not show (the node's new branch posted from its tip, its first
/// blocks not: a gap) is seen all the same: the block applied last is no longer the node's, so
/// what it confirmed is reopened. Before, a gap was read as blocks missed on the same chain:
/// the operation stayed confirmed in the abandoned block, and the transaction, not mined on
/// the new branch, left its nonce unused under every later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_behind_a_gap_in_the_pushes_reopens_what_it_abandoned() {
    let devnet = Devnet::start(&["--ephemeral"]).await;
    let dir = tempfile::tempdir().unwrap();
    // no observer registered and the poller asleep: the test posts the node's blocks itself
    let app = app(&devnet.rpc, dir.path(), |s| {
        slow(s);
        s.follower.poll_interval_ms = 3_600_000;
    })
    .await;
    devnet.make_responder(&app.submitter.sender).await;
    let (observer, rpc) = (app.observer_addr, devnet.rpc.clone());
    let push = async |h: u64| {
        let got = reqwest::get(format!("{rpc}/devnet/blocks/{h}"))
            .await
            .unwrap();
        if got.status() == 404 {
            return; // not a block this devnet mined (its genesis)
        }
        let block: serde_json::Value = got.json().await.unwrap();
        let res = reqwest::Client::new()
            .post(format!("http://{observer}/new_block"))
            .json(&block)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert_eq!(status, 200, "block {h}: {}", res.text().await.unwrap());
    };
    for h in 1..=devnet.tip().await {
        push(h).await;
    }
    submit_anchor(&app, 1).await;
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    let mined = devnet.tip().await;
    push(mined).await;
    match state_of(&app, "anchor:1").await {
        SubmissionState::Confirmed { height, .. } => assert_eq!(height, mined),
        other => panic!("{other:?}"),
    }

    // the node moves to a branch without that block, two blocks past it; only its tip is
    // posted
    let fork = devnet
        .post("/devnet/fork?depth=1", serde_json::json!({}))
        .await;
    assert_eq!(fork["tip"], serde_json::json!(mined + 1), "{fork}");
    devnet.mine_empty(1).await;
    let tip = devnet.tip().await;
    assert_eq!(tip, mined + 2);
    push(tip).await;
    assert!(
        matches!(
            state_of(&app, "anchor:1").await,
            SubmissionState::Sent { .. }
        ),
        "reopened, to be sent again as the same transaction: {:?}",
        state_of(&app, "anchor:1").await
    );
    // sent again, it is mined on the new branch
    app.submitter.tick().await.unwrap();
    devnet.mine().await;
    push(devnet.tip().await).await;
    confirmed(&app, "anchor:1").await;
}

/// The index block hash of the block `mined` (a `/devnet/mine` answer) mined last.
fn mined_hash(mined: &serde_json::Value) -> [u8; 32] {
    let hex = mined["blocks"][0]["index_block_hash"].as_str().unwrap();
    hex::decode(hex.trim_start_matches("0x"))
        .unwrap()
        .try_into()
        .unwrap()
}

/// Replicas share the chain-state cache and each asks its own node: a cache fill reads as of
/// the block the shared store is at (`?tip=`), not the node's tip. A node without that block
/// (behind the replica that applied it) says so, and nothing is kept or granted on its older
/// answer: before, it answered as of its own tip and the fill kept that under the newer block,
/// a clinician verified there whom the stored block had suspended, until a later block named
/// them. A node ahead of the store answers as of the stored block, which the block after it,
/// when applied, reads past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_reads_as_of_the_stored_block_and_keeps_nothing_from_a_node_without_it() {
    use breakglass::chain::{rpc::RpcError, state::ChainState, state::StateError};
    use breakglass::store::{Batch, RedbStore, Store, Tip};
    use std::sync::Arc;

    let devnet = Devnet::start(&["--ephemeral"]).await;
    let deployer = deployer_key();
    devnet.deployer_as_authority().await;
    let provider = new_key();
    let who = address_of(&provider);
    devnet.fund(&who).await;
    devnet.register_nurse(&provider).await;
    devnet.mine().await;
    devnet
        .call(
            &deployer,
            "access-control",
            "verify-provider",
            vec![principal(&who)],
        )
        .await;
    let verified_in = mined_hash(&devnet.mine().await);
    let verified_at = devnet.tip().await;
    devnet
        .call(
            &deployer,
            "access-control",
            "suspend-provider",
            vec![principal(&who)],
        )
        .await;
    devnet.mine().await;
    let suspended_at = devnet.tip().await;
    let registered = |status| ProviderState::Registered {
        role: Role::Nurse,
        status,
        info_hash: Some([1u8; 32]),
    };

    // a replica's cache over a store at `tip`, asking this devnet
    let dir = tempfile::tempdir().unwrap();
    let replica = |name: &str, tip: Tip| {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join(name)).unwrap());
        store
            .apply(Batch {
                tip: Some(tip),
                ..Batch::default()
            })
            .unwrap();
        let rpc = breakglass::chain::rpc::NodeClient::new(&devnet.rpc, Duration::from_secs(5), 1);
        let contracts = breakglass::chain::contracts::Contracts {
            address: crate::support::deployer(),
        };
        ChainState::new(store, rpc, contracts)
    };

    // the store at a block this node has not got (another replica's node is ahead): refused,
    // nothing kept, whatever this node would say of its own tip
    let ahead = replica("ahead.redb", Tip::new(suspended_at + 1, [0xab; 32]));
    let got = ahead.provider(&who).await;
    assert!(
        matches!(got, Err(StateError::Rpc(RpcError::NoSuchTip { .. }))),
        "{got:?}"
    );
    assert_eq!(ahead.store.provider(&who).unwrap(), None, "nothing kept");

    // the store at the block that verified them, the node since past their suspension: the
    // answer and what is kept are as of the stored block
    let behind = replica("behind.redb", Tip::new(verified_at, verified_in));
    assert_eq!(
        behind.provider(&who).await.unwrap(),
        registered(ProviderStatus::Verified)
    );
    assert_eq!(
        behind.store.provider(&who).unwrap(),
        Some(registered(ProviderStatus::Verified))
    );
    // and at the node's tip, its own answer
    let at_tip = replica("tip.redb", Tip::new(0, [0; 32]));
    assert_eq!(
        at_tip.provider(&who).await.unwrap(),
        registered(ProviderStatus::Suspended)
    );
}

/// Replicas on Redis, each following its own node: a replica that starts while its node is
/// behind the tip another replica stored (from a node ahead) waits for its node instead of
/// reading that as a reorg: the stored tip stays, no catch-up writes the node's lower tip over
/// it, and the replica counts the gap as lag (not ready: three blocks, beyond the two
/// allowed). Before, its first poll caught up "after a reorg": every cached entry read from
/// the node behind and written with the node's lower tip over the later block's (a
/// suspension between them undone for every replica), and our operations read back from
/// height 0. Once its node reaches that height, whether the stored block is on its chain
/// decides: here it is not (a made-up hash), and the node's chain is caught up to as a reorg's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_node_is_behind_the_stored_tip_at_start_waits_for_it() {
    use breakglass::store::{Batch, RedisStore, Store, Tip};
    let devnet = Devnet::start(&["--ephemeral"]).await;
    devnet.mine_empty(2).await;
    let node_tip = devnet.tip().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    // another replica's tip, three blocks above this node's
    let ahead = Tip::applied(node_tip + 3, [0xcd; 32]);
    RedisStore::open(&redis.url(), "lag:")
        .unwrap()
        .apply(Batch {
            tip: Some(ahead),
            ..Batch::default()
        })
        .unwrap();
    let app = app(&devnet.rpc, dir.path(), |s| {
        s.data.redis_url = Some(redis.url());
        s.data.redis_prefix = "lag:".into();
        s.follower.poll_interval_ms = 200;
    })
    .await;
    devnet.observe(app.observer_addr).await;
    // polls while the node is behind: the stored tip stays, nothing caught up
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.store.tip().unwrap(), Some(ahead));
    assert!(!app
        .status
        .skipped_blocks
        .load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(app.status.lag(), 3);
    assert!(!ready(&app).await, "not ready while its node is behind");
    // the node passes it: its blocks applied from there
    devnet.mine_empty(4).await;
    let tip = devnet.tip().await;
    eventually("the node's blocks applied", SECS, async || {
        let stored = app.store.tip().unwrap()?;
        (stored.height == tip).then_some(())
    })
    .await;
    eventually("ready", SECS, async || ready(&app).await.then_some(())).await;
    app.stop().await;

    // a store of its own (redb): the tip stored is this service's, so a node without it was
    // reset (or left it in a reorg): caught up to at once, as before
    let own = tempfile::tempdir().unwrap();
    let higher = Tip::applied(devnet.tip().await + 3, [0xcd; 32]);
    breakglass::store::RedbStore::open(&own.path().join("breakglass.redb"))
        .unwrap()
        .apply(Batch {
            tip: Some(higher),
            ..Batch::default()
        })
        .unwrap();
    let alone = crate::support::app(&devnet.rpc, own.path(), |_| {}).await;
    devnet.observe(alone.observer_addr).await;
    let node_tip = devnet.tip().await;
    eventually("caught up to the node's chain", SECS, async || {
        let stored = alone.store.tip().unwrap()?;
        (stored.height == node_tip && stored.index_block_hash != [0xcd; 32]).then_some(())
    })
    .await;
    assert_eq!(alone.status.lag(), 0);
}

//! Store conformance: every `Store` implementation must pass these (redb, and Redis on a real
//! redis-server), and each backend's own: reopening, concurrent writers, crashes.

use breakglass::domain::{AccessId, DataType, PatientId, ProviderStatus, Purpose, Role};
use breakglass::stacks::Address;
use breakglass::store::*;

/// The access id of the tests with one access.
fn a1() -> AccessId {
    AccessId([0xa1; 32])
}

/// An access id, numbered (in order).
fn numbered(i: u64) -> AccessId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&i.to_be_bytes());
    AccessId(id)
}

/// A principal, numbered.
fn p(n: u8) -> Address {
    Address::new(26, [n; 20]).unwrap()
}

/// An access record, numbered.
fn access(i: u64) -> AccessRecord {
    AccessRecord {
        id: numbered(i),
        provider: p(i as u8),
        role: Role::Nurse,
        patient: PatientId([(i % 251) as u8; 32]),
        data_types: vec![DataType::Allergies, DataType::Medications],
        reason_sealed: "ab".repeat(200),
        reason_hash: format!("{i:064x}"),
        device: None,
        nonce: i,
        issued_at: i,
        granted_at: i + 1,
        expires_at: i + 600,
        window_minutes: 10,
        window_blocks: 60,
        rules: vec!["rule".into()],
        message_hash: format!("{:064x}", i + 1),
        signature: format!("{:0130x}", i + 2),
        on_call: None,
        degraded: false,
        chain_lag_blocks: 0,
        patient_registered: Some(true),
    }
}

fn submission(id: &str, state: SubmissionState, at: u64) -> Submission {
    Submission {
        id: id.into(),
        contract_name: "access-control".into(),
        function: "anchor-audit".into(),
        args: vec!["0x01".into()],
        state,
        created_at_ms: at,
    }
}

fn sent(txid: &str) -> SubmissionState {
    SubmissionState::Sent {
        txid: txid.into(),
        nonce: 3,
        raw: "00".into(),
        sent_at_height: 7,
        broadcasts: 1,
    }
}

pub fn conformance(store: &dyn Store) {
    store.ping().unwrap();
    assert_eq!(store.tip().unwrap(), None);
    assert_eq!(store.nonce().unwrap(), None);
    assert_eq!(store.provider(&p(1)).unwrap(), None);
    assert!(store.open_submissions().unwrap().is_empty());
    assert_eq!(store.open_counts().unwrap(), (0, 0));

    let patient = PatientId([7; 32]);
    let key = ConsentKey {
        patient,
        provider: p(2),
        data_type: DataType::Allergies,
        purpose: Purpose::Treatment,
    };
    let prefs = Preferences {
        allow: true,
        data_types: vec![DataType::Allergies, DataType::BloodType],
        max_window: 60,
        is_default: false,
        registered: Some(true),
    };
    let verified = ProviderState::Registered {
        role: Role::Nurse,
        status: ProviderStatus::Verified,
        info_hash: None,
    };
    store
        .apply(Batch {
            tip: Some(Tip::new(10, [1; 32])),
            providers: vec![
                (p(1), Some(verified.clone())),
                (p(9), Some(ProviderState::Unregistered)),
            ],
            preferences: vec![(patient, prefs.clone())],
            consents: vec![(
                key.clone(),
                Consent {
                    active: true,
                    expires_at: 99,
                },
            )],
            responders: vec![(p(3), true)],
            submissions: vec![
                submission("b", SubmissionState::Pending, 2),
                submission("a", sent("t1"), 1),
            ],
            nonce: Some(4),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.tip().unwrap(), Some(Tip::new(10, [1; 32])));
    assert_eq!(store.provider(&p(1)).unwrap(), Some(verified));
    assert_eq!(
        store.provider(&p(9)).unwrap(),
        Some(ProviderState::Unregistered)
    );
    let mut providers = store.providers().unwrap();
    providers.sort();
    assert_eq!(providers, vec![p(1), p(9)]);
    assert_eq!(store.preferences(&patient).unwrap(), Some(prefs));
    assert_eq!(store.patients().unwrap(), vec![patient]);
    assert_eq!(
        store.consent(&key).unwrap(),
        Some(Consent {
            active: true,
            expires_at: 99
        })
    );
    assert_eq!(store.consents().unwrap(), vec![key.clone()]);
    assert_eq!(store.responder(&p(3)).unwrap(), Some(true));
    assert_eq!(store.responders().unwrap(), vec![p(3)]);
    assert_eq!(store.nonce().unwrap(), Some(4));
    // open submissions, oldest first
    let open: Vec<String> = store
        .open_submissions()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(open, vec!["a", "b"]);
    // cache entries dropped, before the same batch's own entries are written
    store
        .apply(Batch {
            providers: vec![(p(7), Some(ProviderState::Unregistered))],
            responders: vec![(p(8), true)],
            ..Batch::default()
        })
        .unwrap();
    store
        .apply(Batch {
            uncached: Uncached {
                providers: vec![p(7)],
                responders: vec![p(8), p(6)],
                ..Uncached::default()
            },
            responders: vec![(p(6), false)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.provider(&p(7)).unwrap(), None);
    assert_eq!(store.responder(&p(8)).unwrap(), None);
    assert_eq!(
        store.responder(&p(6)).unwrap(),
        Some(false),
        "written after the drop"
    );
    // every operation, or those of an id prefix, oldest first
    let ids = |prefix: &str| -> Vec<String> {
        store
            .submissions_prefixed(prefix)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(ids(""), vec!["a", "b"]);
    assert_eq!(ids("b"), vec!["b"]);
    assert!(ids("c").is_empty());

    // later writes replace; a provider set to None leaves the cache; closed submissions are
    // no longer open but still found by id
    store
        .apply(Batch {
            providers: vec![(p(1), None)],
            consents: vec![(
                key.clone(),
                Consent {
                    active: false,
                    expires_at: 99,
                },
            )],
            submissions: vec![submission(
                "a",
                SubmissionState::Confirmed {
                    txid: Some("t1".into()),
                    height: 11,
                    result: "(ok u0)".into(),
                    nonce: Some(3),
                    raw: Some("00".into()),
                },
                1,
            )],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.provider(&p(1)).unwrap(), None);
    assert_eq!(
        store.consent(&key).unwrap(),
        Some(Consent {
            active: false,
            expires_at: 99
        })
    );
    assert!(!store.consent(&key).unwrap().unwrap().is_active_at(1));
    assert_eq!(store.open_submissions().unwrap().len(), 1);
    assert_eq!(store.open_counts().unwrap().0, 1);
    assert!(matches!(
        store.submission("a").unwrap().unwrap().state,
        SubmissionState::Confirmed { height: 11, .. }
    ));
    // several operations read together, in the order named, an absent one as none
    let together = store
        .submissions_named(&["none".into(), "a".into(), "none".into()])
        .unwrap();
    assert_eq!(
        together,
        vec![None, store.submission("a").unwrap(), None],
        "{together:?}"
    );
    // the tip a batch does not name stays
    assert_eq!(store.tip().unwrap().unwrap().height, 10);

    // access records and used request nonces
    assert_eq!(store.access(&a1()).unwrap(), None);
    assert_eq!(store.replay("ST1:5").unwrap(), None);
    let record = AccessRecord {
        id: a1(),
        provider: p(1),
        role: Role::Nurse,
        patient,
        data_types: vec![DataType::Allergies],
        reason_sealed: "00".into(),
        reason_hash: "h".into(),
        device: Some("t".into()),
        nonce: 5,
        issued_at: 1,
        granted_at: 2,
        expires_at: 600,
        window_minutes: 10,
        window_blocks: 60,
        rules: vec!["rule".into()],
        message_hash: "m".into(),
        signature: "s".into(),
        on_call: None,
        degraded: false,
        chain_lag_blocks: 0,
        patient_registered: Some(true),
    };
    store
        .apply(Batch {
            accesses: vec![record.clone()],
            replay: vec![("ST1:5".into(), 121)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.access(&a1()).unwrap(), Some(record.clone()));
    assert_eq!(store.access_ids().unwrap(), vec![a1()]);
    // several read together: those stored, in the order named
    assert_eq!(
        store.accesses(&[numbered(7), a1(), numbered(8)]).unwrap(),
        vec![record.clone()]
    );
    assert!(store.accesses(&[]).unwrap().is_empty());
    store
        .apply(Batch {
            accesses: vec![access(9)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(
        store.accesses(&[a1(), numbered(9)]).unwrap(),
        vec![record, access(9)],
        "in the order named, not the keys'"
    );
    assert_eq!(store.replay("ST1:5").unwrap(), Some(121));

    assert_eq!(store.revoked("a1").unwrap(), None);
    store
        .apply(Batch {
            revoked: vec![("a1".into(), 600)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.revoked("a1").unwrap(), Some(600));

    // notices: the open ones are read through their index, as operations are
    let due = Notice::new(numbered(1), patient, 10);
    let sent_notice = Notice {
        state: NoticeState::Sent { at: 11 },
        ..Notice::new(numbered(2), patient, 10)
    };
    store
        .apply(Batch {
            notices: vec![due.clone(), sent_notice.clone()],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.open_notices().unwrap(), vec![due.clone()]);
    assert_eq!(store.notices().unwrap().len(), 2);
    let (_, notices_open) = store.open_counts().unwrap();
    assert_eq!(notices_open, 1, "what operators see: the one open notice");
    // a rescan reads only the open notices it does not hold yet
    let also = Notice::new(numbered(3), patient, 20);
    store
        .apply(Batch {
            notices: vec![also.clone()],
            ..Batch::default()
        })
        .unwrap();
    let known = std::collections::HashSet::from([due.access_id]);
    assert_eq!(
        store.open_notices_but(&known, None).unwrap(),
        vec![also.clone()]
    );
    assert_eq!(
        store
            .open_notices_but(&Default::default(), None)
            .unwrap()
            .len(),
        2
    );
    // and, given a time, only those due by it (a replica's rescan: what is due soon, not all
    // that is open), as each is next due now: a retry's later time moves it
    let by = |until| due_by(store, &Default::default(), until);
    assert_eq!(by(9), vec![], "none due yet");
    assert_eq!(by(10), vec![due.access_id]);
    assert_eq!(by(20), vec![due.access_id, also.access_id]);
    assert_eq!(due_by(store, &known, 20), vec![also.access_id]);
    let retried = Notice {
        next_at: 30,
        attempts: 1,
        ..due.clone()
    };
    store
        .apply(Batch {
            notices: vec![retried],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(by(20), vec![also.access_id], "retried at 30");
    assert_eq!(by(30), vec![due.access_id, also.access_id]);
    store
        .apply(Batch {
            notices: vec![Notice {
                state: NoticeState::Sent { at: 21 },
                ..also
            }],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.open_notices_but(&known, None).unwrap().is_empty());
    assert!(store.open_notices_but(&known, Some(30)).unwrap().is_empty());
    store
        .apply(Batch {
            notices: vec![Notice {
                state: NoticeState::Sent { at: 12 },
                ..due.clone()
            }],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.open_notices().unwrap().is_empty());
    assert_eq!(store.notices().unwrap().len(), 3);
    assert_eq!(store.open_counts().unwrap().1, 0);

    audit_conformance(store);
}

/// The open notices next due by `until` but those of `known`, as a replica's rescan reads them.
fn due_by(
    store: &dyn Store,
    known: &std::collections::HashSet<AccessId>,
    until: u64,
) -> Vec<AccessId> {
    store
        .open_notices_but(known, Some(until))
        .unwrap()
        .into_iter()
        .map(|n| n.access_id)
        .collect()
}

/// Many operations and notices made and closed, a few left open: what the index holds.
fn open_and_closed(store: &dyn Store) {
    for chunk in (0..300u64).collect::<Vec<_>>().chunks(100) {
        store
            .apply(Batch {
                submissions: chunk
                    .iter()
                    .map(|&i| submission(&format!("op{i:03}"), SubmissionState::Pending, i))
                    .collect(),
                notices: chunk
                    .iter()
                    .map(|&i| Notice::new(numbered(i), PatientId([1; 32]), i))
                    .collect(),
                ..Batch::default()
            })
            .unwrap();
    }
    // all but every 100th closed
    let closed = |i: &u64| i % 100 != 7;
    store
        .apply(Batch {
            submissions: (0..300u64)
                .filter(closed)
                .map(|i| {
                    let failed = SubmissionState::Failed {
                        txid: "t".into(),
                        height: 1,
                        result: "(err u1)".into(),
                        nonce: None,
                        raw: None,
                    };
                    submission(&format!("op{i:03}"), failed, i)
                })
                .collect(),
            notices: (0..300u64)
                .filter(closed)
                .map(|i| Notice {
                    state: NoticeState::Sent { at: i },
                    ..Notice::new(numbered(i), PatientId([1; 32]), i)
                })
                .collect(),
            ..Batch::default()
        })
        .unwrap();
}

/// What `open_and_closed` leaves open.
fn left_open(store: &dyn Store) -> (Vec<String>, Vec<AccessId>) {
    let ops = store
        .open_submissions()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut notices: Vec<AccessId> = store
        .open_notices()
        .unwrap()
        .into_iter()
        .map(|n| n.access_id)
        .collect();
    notices.sort_by_key(|id| id.0);
    (ops, notices)
}

fn expected_open() -> (Vec<String>, Vec<AccessId>) {
    (
        vec!["op007".into(), "op107".into(), "op207".into()],
        vec![numbered(7), numbered(107), numbered(207)],
    )
}

/// The open operations and notices are kept in an index by every write: the index names the
/// open ones only (the submitter and the notifier read it, not every row ever written), and a
/// store written before the index existed has it built when it opens.
#[test]
fn redb_keeps_an_index_of_what_is_open_and_builds_it_for_an_older_store() {
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let table = |name| TableDefinition::<&str, &[u8]>::new(name);
    {
        let store = RedbStore::open(&path).unwrap();
        open_and_closed(&store);
        assert_eq!(left_open(&store), expected_open());
    }
    {
        // what redb holds (every write checkpointed at close): the open ones only
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let keys = |name| -> Vec<String> {
            let t = tx.open_table(table(name)).unwrap();
            t.iter()
                .unwrap()
                .map(|r| r.unwrap().0.value().to_string())
                .collect()
        };
        assert_eq!(keys("open_submissions"), expected_open().0);
        assert_eq!(keys("open_notices").len(), 3);
        assert_eq!(
            tx.open_table(table("submissions")).unwrap().len().unwrap(),
            300
        );
    }
    // as a store of an earlier version left it: no index, no mark
    unindexed(&path);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(left_open(&store), expected_open());
}

/// Takes the open indexes and their mark out of the redb store at `path`, as a store of a
/// version before them has none.
fn unindexed(path: &std::path::Path) {
    let table = |name| redb::TableDefinition::<&str, &[u8]>::new(name);
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.delete_table(table("open_submissions")).unwrap();
    tx.delete_table(table("open_notices")).unwrap();
    tx.open_table(table("meta"))
        .unwrap()
        .remove("open_indexed")
        .unwrap();
    tx.commit().unwrap();
}

/// A notice's access id for a row that does not decode.
fn garbled() -> AccessId {
    numbered(900)
}

/// An open operation and an open notice whose rows do not decode (a later version's, a fault
/// of the disk) are left out of the open rows the submitter and the notifier read, and the
/// rest are read: before, one such row made every read of them fail (on redb, until a restart
/// that failed the same way), and the store of an older version, whose indexes are built when
/// it opens, did not open at all.
#[test]
fn an_open_row_that_does_not_decode_keeps_no_other_from_its_worker_on_redb() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let table = |name| TableDefinition::<&str, &[u8]>::new(name);
    {
        let store = RedbStore::open(&path).unwrap();
        open_and_closed(&store);
    }
    let id = garbled().to_string();
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        for (name, key, value) in [
            ("submissions", "op-bad", &b"not json"[..]),
            ("open_submissions", "op-bad", b""),
            ("notices", id.as_str(), b"{\"access_id\": 7"),
            ("open_notices", id.as_str(), b"0"),
        ] {
            tx.open_table(table(name))
                .unwrap()
                .insert(key, value)
                .unwrap();
        }
        tx.commit().unwrap();
    }
    {
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(left_open(&store), expected_open());
        assert_eq!(
            due_by(&store, &Default::default(), 107),
            vec![numbered(7), numbered(107)]
        );
    }
    // as a store of an earlier version left it: its indexes are built when it opens
    unindexed(&path);
    {
        let store = RedbStore::open(&path).expect("a row that does not decode does not stop it");
        assert_eq!(left_open(&store), expected_open());
    }
    // the rows that do not decode stay indexed (each read says them), not forgotten
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(tx
        .open_table(table("open_submissions"))
        .unwrap()
        .get("op-bad")
        .unwrap()
        .is_some());
    assert!(tx
        .open_table(table("open_notices"))
        .unwrap()
        .get(id.as_str())
        .unwrap()
        .is_some());
}

/// As on redb, on Redis.
#[test]
fn an_open_row_that_does_not_decode_keeps_no_other_from_its_worker_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    let store = RedisStore::open(&server.url(), "garbled:").unwrap();
    open_and_closed(&store);
    let id = garbled().to_string();
    let mut run = |cmd: &mut redis::Cmd| {
        let _: () = cmd.query(&mut conn).unwrap();
    };
    run(redis::cmd("HSET")
        .arg("garbled:submissions")
        .arg("op-bad")
        .arg("not json"));
    run(redis::cmd("HSET")
        .arg("garbled:open_submissions")
        .arg("op-bad")
        .arg(""));
    run(redis::cmd("HSET")
        .arg("garbled:notices")
        .arg(&id)
        .arg("{\"access_id\": 7"));
    run(redis::cmd("ZADD")
        .arg("garbled:due:open_notices")
        .arg(0)
        .arg(&id));
    assert_eq!(left_open(&store), expected_open());
    assert_eq!(
        due_by(&store, &Default::default(), 107),
        vec![numbered(7), numbered(107)]
    );
    // as a store of an earlier version left it: its indexes built by the first read
    run(redis::cmd("DEL")
        .arg("garbled:open_submissions")
        .arg("garbled:due:open_notices"));
    run(redis::cmd("HDEL").arg("garbled:meta").arg("open_indexed"));
    let store = RedisStore::open(&server.url(), "garbled:").unwrap();
    assert_eq!(left_open(&store), expected_open());
    assert_eq!(
        store.open_counts().unwrap(),
        (4, 4),
        "the rows that do not decode stay indexed"
    );
}

/// The audit log: entries numbered and linked in the order batches are applied (events in one
/// batch in their order), the head kept, the index by access; and the tables #19 and #20 added.
fn audit_conformance(store: &dyn Store) {
    use breakglass::audit::{follows, Event, Head, Record};
    let sign_in = |outcome: &str| Record {
        at: 1_700_000_000_000,
        event: Event::SignIn {
            reviewer: Some(p(3)),
            outcome: outcome.into(),
        },
    };
    let notice = Record {
        at: 1_700_000_000_001,
        event: Event::Notice {
            access: a1(),
            patient: PatientId([1; 32]),
            state: "sent".into(),
        },
    };
    assert_eq!(store.audit_head().unwrap(), None);
    store
        .apply(Batch {
            audit: vec![sign_in("ok"), notice.clone()],
            ..Batch::default()
        })
        .unwrap();
    store
        .apply(Batch {
            audit: vec![sign_in("not-a-reviewer")],
            reviewers: vec![(p(3), true)],
            ..Batch::default()
        })
        .unwrap();
    let entries = store.audit_entries(1, 10).unwrap();
    assert_eq!(entries.len(), 3);
    let head = entries
        .iter()
        .try_fold(Head::default(), |h, e| follows(&h, e))
        .expect("the entries link");
    assert_eq!(store.audit_head().unwrap(), Some(head));
    assert_eq!(head.seq, 3);
    assert_eq!(entries[1].parsed().unwrap(), notice.event);
    assert_eq!(store.audit_entries(3, 10).unwrap().len(), 1);
    assert_eq!(store.audit_entries(2, 1).unwrap()[0].seq, 2);
    let of = store.audit_of(&a1()).unwrap();
    assert_eq!(of.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(store.reviewer(&p(3)).unwrap(), Some(true));
    assert_eq!(store.reviewers().unwrap(), vec![p(3)]);

    let patient = PatientId([4; 32]);
    assert_eq!(store.summary(&patient).unwrap(), None);
    assert_eq!(store.summary_hash(&patient).unwrap(), None);
    let hash = SummaryHash {
        hash: "ab".repeat(32),
        version: 2,
        block: 9,
    };
    store
        .apply(Batch {
            summaries: vec![(patient, Some(vec![1, 2, 3]))],
            summary_digests: vec![(patient, Some(SummaryDigest::of(b"plain", &[1, 2, 3])))],
            summary_hashes: vec![(patient, Some(hash.clone())), (PatientId([5; 32]), None)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.summary(&patient).unwrap(), Some(vec![1, 2, 3]));
    let digest = store.summary_digest(&patient).unwrap().unwrap();
    assert_eq!(digest, SummaryDigest::of(b"plain", &[1, 2, 3]));
    assert!(digest.describes(&[1, 2, 3]) && !digest.describes(&[1, 2]));
    assert_eq!(store.summary_digest(&PatientId([5; 32])).unwrap(), None);
    assert_eq!(store.summary_hash(&patient).unwrap(), Some(Some(hash)));
    assert_eq!(store.summary_hash(&PatientId([5; 32])).unwrap(), Some(None));
    assert_eq!(store.summary_hash_ids().unwrap().len(), 2);
    // a removal removes the digest too
    store
        .apply(Batch {
            summaries: vec![(patient, None)],
            summary_digests: vec![(patient, None)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.summary(&patient).unwrap(), None);
    assert_eq!(store.summary_digest(&patient).unwrap(), None);
}

#[test]
fn redb_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    conformance(&store);
}

/// `data.cache_mib`: a cache far smaller than the data (records read back from evicted
/// pages, checkpoints writing pages the cache could not hold) loses nothing.
#[test]
fn a_store_with_a_cache_smaller_than_its_data_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let options = RedbOptions {
        checkpoints: Checkpoints {
            every: std::time::Duration::from_millis(20),
            when_idle_for: std::time::Duration::from_millis(5),
        },
        cache_bytes: 64 << 10,
    };
    let n = 2_000u64;
    {
        let store = RedbStore::open_with(&path, options).unwrap();
        conformance(&store);
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            store
                .apply(Batch {
                    accesses: chunk.iter().map(|&i| access(i)).collect(),
                    ..Batch::default()
                })
                .unwrap();
        }
        // some answered by the overlay, most by redb through the small cache
        for i in (0..n).step_by(7) {
            assert_eq!(store.access(&numbered(i)).unwrap(), Some(access(i)));
        }
    }
    let store = RedbStore::open_with(&path, options).unwrap();
    for i in 0..n {
        assert_eq!(store.access(&numbered(i)).unwrap(), Some(access(i)));
    }
}

#[test]
fn redb_store_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(Batch {
                tip: Some(Tip::new(5, [9; 32])),
                submissions: vec![submission("op", sent("tx"), 1)],
                nonce: Some(8),
                ..Batch::default()
            })
            .unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.tip().unwrap().unwrap().height, 5);
    assert_eq!(store.nonce().unwrap(), Some(8));
    assert_eq!(store.open_submissions().unwrap()[0].state, sent("tx"));
}

/// One process on the embedded store remembers the request nonces used before a restart that
/// are still fresh, and the store forgets the others (else a row per grant stays forever and
/// is read at every start).
#[test]
fn a_restart_remembers_fresh_nonces_and_forgets_stale_ones() {
    use breakglass::coordination::Local;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let now = crate::support::now();
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(Batch {
                replay: vec![
                    ("ST1:1".into(), now - 10),
                    ("ST1:2".into(), now + 600),
                    ("ST2:1".into(), now - 1),
                ],
                ..Batch::default()
            })
            .unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let local = Local::new(std::num::NonZeroU32::new(60).unwrap());
    assert_eq!(local.recall(&store).unwrap(), 1);
    assert_eq!(store.replays().unwrap(), vec![("ST1:2".into(), now + 600)]);
    // the fresh one is a replay; a forgotten one is not kept (its request is stale anyway)
    assert!(!local.use_nonce("ST1:2", now + 600));
    assert!(local.use_nonce("ST1:1", now + 600));
    drop(store);
    assert_eq!(RedbStore::open(&path).unwrap().replays().unwrap().len(), 1);
}

/// One process on the embedded store takes each clinician's grants of the last two minutes
/// again at a restart (its nonces, kept with them, say when each request was issued, by the
/// clinician's clock, a minute off at most): a clinician who used their burst is not given a
/// full one by the restart, even with a clock behind; one whose grants are older, or another
/// clinician, is not held back. Before, a restart reset every rate.
#[test]
fn a_restart_keeps_each_clinicians_rate_of_the_last_minute() {
    use breakglass::access::NONCE_KEPT_SECS;
    use breakglass::coordination::Local;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let now = crate::support::now();
    // ten grants a minute: ST1 had ten in the last 30 s, its tablet's clock 50 s behind; ST2
    // had ten two minutes and a half ago
    let replay = (0..10u64)
        .map(|n| (format!("ST1:{n}"), now - 80 + n + NONCE_KEPT_SECS))
        .chain((0..10u64).map(|n| (format!("ST2:{n}"), now - 150 + n + NONCE_KEPT_SECS)))
        .collect();
    store
        .apply(Batch {
            replay,
            ..Batch::default()
        })
        .unwrap();
    let local = Local::new(std::num::NonZeroU32::new(10).unwrap());
    assert_eq!(local.recall(&store).unwrap(), 10);
    assert!(!local.within_rate("ST1"), "ST1's burst is used");
    for n in 0..10 {
        assert!(local.within_rate("ST2"), "ST2's grant {n}: a full burst");
    }
    assert!(local.within_rate("ST3"));
}

/// The audit log goes on from its head after a reopen: the next entry links to the last one
/// written before it (the writer reads the head back at open).
#[test]
fn the_audit_log_goes_on_across_reopen() {
    use breakglass::audit::{follows, Event, Head, Record};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let event = |n: u64| Record {
        at: n,
        event: Event::SignIn {
            reviewer: None,
            outcome: format!("o{n}"),
        },
    };
    for round in 0..3u64 {
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(Batch {
                audit: vec![event(round * 2), event(round * 2 + 1)],
                ..Batch::default()
            })
            .unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let entries = store.audit_entries(1, 100).unwrap();
    assert_eq!(entries.len(), 6);
    let head = entries
        .iter()
        .try_fold(Head::default(), |h, e| follows(&h, e))
        .unwrap();
    assert_eq!(store.audit_head().unwrap(), Some(head));
}

#[test]
fn consent_expiry_is_exclusive() {
    let c = Consent {
        active: true,
        expires_at: 10,
    };
    assert!(c.is_active_at(9));
    assert!(!c.is_active_at(10));
}

#[test]
fn concurrent_writes_are_all_applied_in_order() {
    // many writers at once: the writer thread commits them in groups; each still lands
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for j in 0..20 {
                    let state = ProviderState::Registered {
                        role: Role::Nurse,
                        status: if j % 2 == 0 {
                            ProviderStatus::Pending
                        } else {
                            ProviderStatus::Verified
                        },
                        info_hash: None,
                    };
                    store
                        .apply(Batch {
                            providers: vec![(p(i as u8), Some(state))],
                            nonce: Some(i * 100 + j),
                            ..Batch::default()
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..32 {
        // each writer's last write (j = 19, verified) is what stays
        assert_eq!(
            store.provider(&p(i as u8)).unwrap(),
            Some(ProviderState::Registered {
                role: Role::Nurse,
                status: ProviderStatus::Verified,
                info_hash: None,
            })
        );
    }
    assert_eq!(store.providers().unwrap().len(), 32);
}

/// Copies the store's files (redb and the journal's segments) as they are on disk while it
/// runs: what a crash (SIGKILL) leaves.
fn crash_copy(from: &std::path::Path, to: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    let mut journal = vec![];
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        std::fs::copy(&p, to.join(&name)).unwrap();
        if name.to_string_lossy().contains(".journal") {
            journal.push(to.join(name));
        }
    }
    journal.sort();
    journal
}

/// A store that does not checkpoint while a test runs: redb holds its writes non-durably and
/// the journal's segments stay.
fn without_checkpoints() -> RedbOptions {
    RedbOptions {
        checkpoints: Checkpoints {
            every: std::time::Duration::from_secs(3600),
            when_idle_for: std::time::Duration::from_secs(3600),
        },
        ..RedbOptions::default()
    }
}

#[test]
fn acknowledged_writes_survive_a_crash_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    // no checkpoint while the test runs: redb holds the writes only non-durably
    let store = RedbStore::open_with(&live.join("s.redb"), without_checkpoints()).unwrap();
    for i in 0..50u64 {
        store
            .apply(Batch {
                providers: vec![(
                    p(i as u8),
                    Some(ProviderState::Registered {
                        role: Role::Physician,
                        status: ProviderStatus::Verified,
                        info_hash: None,
                    }),
                )],
                replay: vec![(format!("ST{i}:{i}"), 100 + i)],
                nonce: Some(i),
                ..Batch::default()
            })
            .unwrap();
    }
    let crashed = dir.path().join("crashed");
    let segments = crash_copy(&live, &crashed);
    assert!(
        segments
            .iter()
            .map(|s| std::fs::metadata(s).unwrap().len())
            .sum::<u64>()
            > 0,
        "the writes are still only in the journal"
    );

    // a torn last frame (a write the crash cut short) is dropped, the rest recovered
    let torn = dir.path().join("torn");
    let segments = crash_copy(&live, &torn);
    {
        use std::io::Write;
        let mut j = std::fs::OpenOptions::new()
            .append(true)
            .open(segments.last().unwrap())
            .unwrap();
        j.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
            .unwrap();
    }

    for copy in [&crashed, &torn] {
        let reopened = RedbStore::open(&copy.join("s.redb")).unwrap();
        assert_eq!(reopened.nonce().unwrap(), Some(49));
        assert_eq!(reopened.providers().unwrap().len(), 50);
        assert_eq!(reopened.replay("ST7:7").unwrap(), Some(107));
        // recovery checkpoints: the journal's segments are gone, and writes go on
        assert!(std::fs::read_dir(copy).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".journal")));
        reopened
            .apply(Batch {
                nonce: Some(50),
                ..Batch::default()
            })
            .unwrap();
        drop(reopened);
        let again = RedbStore::open(&copy.join("s.redb")).unwrap();
        assert_eq!(again.nonce().unwrap(), Some(50));
        assert_eq!(again.providers().unwrap().len(), 50);
    }
}

/// The journal's files in a directory: names and sizes.
type Listing = [(String, u64)];

/// A store that starts taking writes moves its journal off the new file it began (whose
/// every sync also commits its growing size) onto a zero-filled spare as soon as there is
/// one, and keeps spares for the segments after it.
#[test]
fn a_busy_store_journals_onto_zero_filled_spares() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    // no checkpoint during the test: the new file stays on disk once closed, and no segment
    // is recycled into a spare
    let store = RedbStore::open_with(&path, without_checkpoints()).unwrap();
    let files = |dir: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(name, _)| name.contains(".journal"))
            .collect();
        v.sort();
        v
    };
    let write = |i: u64| {
        store
            .apply(Batch {
                nonce: Some(i),
                ..Batch::default()
            })
            .unwrap()
    };
    let spare_bytes = 9 << 20;
    let spares_ready = |files: &[(String, u64)]| {
        files
            .iter()
            .filter(|(name, len)| {
                name.contains(".journal-spare") && !name.ends_with(".tmp") && *len == spare_bytes
            })
            .count()
    };
    let on_spares = |files: &[(String, u64)]| {
        files
            .iter()
            .filter(|(name, len)| name.contains(".journal.") && *len == spare_bytes)
            .count()
    };
    let eventually = |what: &str, done: &dyn Fn(&Listing) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done(&files(dir.path())) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {:?}",
                files(dir.path())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // each write is at least one 4 KiB block of the journal: 64 of them ask for spares
    let mut i = 0;
    while i < 100 {
        write(i);
        i += 1;
    }
    eventually("no spare was prepared", &|f| {
        spares_ready(f) + on_spares(f) > 0
    });
    // the write after a spare is ready closes the new file, the next one goes to a spare
    for _ in 0..2 {
        write(i);
        i += 1;
    }
    let now = files(dir.path());
    assert_eq!(
        on_spares(&now),
        1,
        "the journal moved onto a spare: {now:?}"
    );
    let first = now
        .iter()
        .find(|(name, _)| name.ends_with(".journal.00000000000000000001"))
        .unwrap_or_else(|| panic!("the journal began in a new file: {now:?}"));
    assert!(
        first.1 >= 64 * 4096 && first.1 < spare_bytes,
        "left long before it was full: {first:?}"
    );
    eventually("two spares were zero-filled, one is left", &|f| {
        spares_ready(f) == 1 && on_spares(f) == 1
    });
    drop(store);
    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(reopened.nonce().unwrap(), Some(i - 1));
}

// --- Redis ---

#[test]
fn redis_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "conformance:").unwrap();
    conformance(&store);
}

/// Replicas sharing Redis: a cache fill is written only while the store's tip is the one it
/// read before it asked the node (`Guard::tip`); refused, it writes nothing.
#[test]
fn a_fill_on_redis_is_written_only_over_the_tip_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "t:").unwrap();
    let tip = |height: u64| Tip::new(height, [height as u8; 32]);
    let verified = ProviderState::Registered {
        role: Role::Nurse,
        status: ProviderStatus::Verified,
        info_hash: None,
    };
    let fill = |before: Option<Tip>| Batch {
        providers: vec![(p(1), Some(verified.clone()))],
        guard: Some(Guard {
            tip: Some(before),
            ..Guard::default()
        }),
        ..Batch::default()
    };
    let block = |height: u64| Batch {
        tip: Some(tip(height)),
        ..Batch::default()
    };
    // before any block: a fill read with no tip
    store.apply(fill(None)).unwrap();
    store.apply(block(1)).unwrap();
    store.apply(block(2)).unwrap();
    // a fill read at block 1, block 2 written meanwhile (by another replica): refused
    store
        .apply(Batch {
            providers: vec![(p(1), None)],
            ..Batch::default()
        })
        .unwrap();
    assert!(matches!(
        store.apply(fill(Some(tip(1)))),
        Err(StoreError::Guarded(Guarded::Changed))
    ));
    assert_eq!(
        store.provider(&p(1)).unwrap(),
        None,
        "nothing of it written"
    );
    // read at block 2: written
    store.apply(fill(Some(tip(2)))).unwrap();
    assert_eq!(store.provider(&p(1)).unwrap(), Some(verified));
    assert_eq!(store.tip().unwrap(), Some(tip(2)));
}

/// Replicas sharing Redis: an operation made new (`Guard::absent`: a summary's import, an
/// anchor) is written only if it is not there yet. The same import sent again to another
/// replica, which read before the first was written, must not put back as pending the
/// operation the submitter signed meanwhile: it would be signed again, a second transaction.
#[test]
fn a_new_operation_on_redis_is_made_once_not_put_back_over_its_signing() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "t:").unwrap();
    let made = |id: &str| Batch {
        submissions: vec![submission(id, SubmissionState::Pending, 1)],
        guard: Some(Guard {
            absent: vec![id.into()],
            ..Guard::default()
        }),
        ..Batch::default()
    };
    store.apply(made("summary:x")).unwrap();
    // signed by the submitter
    store
        .apply(Batch {
            submissions: vec![submission("summary:x", sent("tx1"), 1)],
            ..Batch::default()
        })
        .unwrap();
    // the second import's write lands: refused, the signed operation as it was
    assert!(matches!(
        store.apply(made("summary:x")),
        Err(StoreError::Guarded(Guarded::Changed))
    ));
    assert_eq!(
        store.submission("summary:x").unwrap().unwrap().state,
        sent("tx1")
    );
    // another operation is made as before
    store.apply(made("summary:y")).unwrap();
    assert!(store.submission("summary:y").unwrap().is_some());
    // with the import's audit entry in the same write (linked on the audit head): refused
    // whole, the signed operation as it was and the entry not appended
    let logged = |id: &str, n: u64| Batch {
        audit: vec![numbered_event(0, n)],
        ..made(id)
    };
    store.apply(logged("summary:z", 1)).unwrap();
    store
        .apply(Batch {
            submissions: vec![submission("summary:z", sent("tx2"), 1)],
            ..Batch::default()
        })
        .unwrap();
    assert!(matches!(
        store.apply(logged("summary:z", 2)),
        Err(StoreError::Guarded(Guarded::Changed))
    ));
    assert_eq!(
        store.submission("summary:z").unwrap().unwrap().state,
        sent("tx2")
    );
    assert_eq!(store.audit_head().unwrap().unwrap().seq, 1);
    store.apply(logged("summary:w", 3)).unwrap();
    assert!(store.submission("summary:w").unwrap().is_some());
    assert_eq!(store.audit_head().unwrap().unwrap().seq, 2);
}

/// An audit event numbered `n`, by writer `w`.
fn numbered_event(w: usize, n: u64) -> breakglass::audit::Record {
    breakglass::audit::Record {
        at: n,
        event: breakglass::audit::Event::SignIn {
            reviewer: None,
            outcome: format!("w{w}-{n}"),
        },
    }
}

/// Grant `n` of clinician ST1 (its nonce `ST1:n`, a rate it never exceeds), its audit event
/// writer 0's `n` (`numbered_event`).
fn st1_grant(n: u64) -> Batch {
    let claim = Claim {
        nonce: format!("ST1:{n}"),
        keep_secs: 600,
        clinician: "ST1".into(),
        emission_ms: 1,
        burst_ms: 60_000,
    };
    Batch {
        audit: vec![numbered_event(0, n)],
        ..claimed(n, claim)
    }
}

/// The audit log of `store` is one chain, each entry linked to the one before, with no event
/// twice: its events' outcomes.
fn one_chain(store: &dyn Store) -> Vec<String> {
    use breakglass::audit::{follows, Head};
    let entries = store.audit_entries(1, 100_000).unwrap();
    let head = entries
        .iter()
        .try_fold(Head::default(), |h, e| follows(&h, e))
        .expect("one chain");
    assert_eq!(
        store.audit_head().unwrap(),
        Some(head).filter(|h| h.seq > 0)
    );
    let outcomes: Vec<String> = entries
        .iter()
        .map(|e| {
            let event: serde_json::Value = serde_json::from_str(e.event.get()).unwrap();
            event["outcome"].as_str().unwrap().to_string()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = outcomes.iter().collect();
    assert_eq!(distinct.len(), outcomes.len(), "an entry written twice");
    outcomes
}

/// Two stores (two replicas) writing at once to one Redis, each from several threads (so that
/// each keeps groups on the server while the other moves the audit head under them): nothing
/// lost, and one audit log in one order, every entry linked to the one before.
#[test]
fn two_redis_writers_at_once_keep_one_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let stores: Vec<std::sync::Arc<RedisStore>> = (0..2)
        .map(|_| std::sync::Arc::new(RedisStore::open(&server.url(), "two:").unwrap()))
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let store = stores[w % 2].clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    store
                        .apply(Batch {
                            replay: vec![(format!("w{w}:{i}"), i)],
                            audit: vec![numbered_event(w, i)],
                            ..Batch::default()
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let reader = &stores[0];
    assert_eq!(reader.replays().unwrap().len(), 320);
    assert_eq!(one_chain(reader.as_ref()).len(), 320);
    assert_eq!(
        stores[1].audit_head().unwrap(),
        reader.audit_head().unwrap()
    );
}

/// The writer's connections cut, and Redis SIGKILLed, while many writes wait: every write
/// acknowledged before is there after the restart, no audit entry is written twice (a write
/// whose answer was lost is found done by the head it left), and writes go on linked after
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_many_writes_keeps_every_acknowledged_one_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::support::RedisServer::start(dir.path());
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(RedisStore::open(&server.url(), "kill:").unwrap());
    let url = server.url();
    let admin = move || {
        redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut n = 0u64;
    for round in 0..40 {
        let writes: Vec<_> = (0..64)
            .map(|_| {
                n += 1;
                let batch = Batch {
                    replay: vec![(format!("k{n}"), n)],
                    audit: vec![numbered_event(0, n)],
                    ..Batch::default()
                };
                (n, apply_started(&store, batch))
            })
            .collect();
        if round == 5 || round == 30 {
            // every connection cut while groups are on the server: answers lost, not writes
            let _: () = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                .query(&mut admin())
                .unwrap();
        }

        if round == 10 {
            server.kill();
        }
        if round == 20 {
            server.restart();
        }
        for (n, write) in writes {
            match write.await {
                Ok(()) => acknowledged.push(n),
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 0, "the outage refused writes");
    assert!(
        acknowledged.iter().any(|&n| n > 64 * 21),
        "writes go on after the restart"
    );
    let outcomes = one_chain(store.as_ref());
    for n in &acknowledged {
        assert!(
            store.replay(&format!("k{n}")).unwrap().is_some(),
            "{n} lost"
        );
        assert!(outcomes.contains(&format!("w0-{n}")), "{n}'s entry lost");
    }
}

/// A Redis server, a `LossyProxy` in front of it, and a store under `prefix` that reaches the
/// server through the proxy.
fn behind_a_lossy_proxy(
    dir: &std::path::Path,
    prefix: &str,
) -> (
    crate::support::RedisServer,
    crate::support::LossyProxy,
    std::sync::Arc<RedisStore>,
) {
    let server = crate::support::RedisServer::start(dir);
    let proxy = crate::support::LossyProxy::start(server.port);
    let store = std::sync::Arc::new(RedisStore::open(&proxy.url(), prefix).unwrap());
    (server, proxy, store)
}

/// Has `store` write `batch` through `proxy`, which loses the answer of its script (the server
/// ran it); returns once the answer is lost, with the writer, which waits to send it again
/// until the proxy's `release`.
fn answer_lost(
    proxy: &crate::support::LossyProxy,
    store: &std::sync::Arc<RedisStore>,
    batch: Batch,
) -> std::thread::JoinHandle<Result<(), StoreError>> {
    proxy
        .lose_next_script_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.apply(batch))
    };
    proxy
        .lost
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("an answer was lost");
    writer
}

/// A group whose answer was lost (the server ran it, the connection dropped before the answer
/// came) and that another replica wrote after, before the writer could send it again: the
/// retry finds it written (its writer's mark) and answers it so. Before the mark, the retry
/// linked it again on the other replica's entries: its audit events were written twice and
/// its grant answered `replayed-request` (its own nonce), although recorded.
#[test]
fn a_group_whose_answer_was_lost_is_found_written_whoever_wrote_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, proxy, store) = behind_a_lossy_proxy(dir.path(), "lost:");
    let other = RedisStore::open(&server.url(), "lost:").unwrap();
    let claimed = st1_grant;
    // the script is on the server (a first answer is not an unknown script's)
    store.apply(claimed(1)).unwrap();
    let writer = answer_lost(&proxy, &store, claimed(2));
    // another replica writes before the retry reaches the server
    other
        .apply(Batch {
            audit: vec![numbered_event(1, 3)],
            ..Batch::default()
        })
        .unwrap();
    proxy.release.send(()).unwrap();
    assert_eq!(
        writer.join().unwrap().map_err(|e| e.to_string()),
        Ok(()),
        "written, and answered so"
    );
    let outcomes = one_chain(&other);
    assert_eq!(outcomes, vec!["w0-1", "w0-2", "w1-3"], "each entry once");
    // the writer goes on linking after the other replica's entry
    store.apply(claimed(4)).unwrap();
    assert_eq!(one_chain(&other).last().unwrap(), "w0-4");
    // at their ends: the writer whose answer was lost keeps its mark (a copy of a group may
    // still come from the connection it dropped), the other's is taken out
    drop(other);
    drop(store);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("lost:meta")
        .query(&mut server.connection())
        .unwrap();
    let marks: Vec<&String> = fields
        .iter()
        .filter(|f| f.starts_with("written:") && !f.ends_with(":refused"))
        .collect();
    assert_eq!(marks.len(), 1, "{fields:?}");
    // the one whose answer was lost: its fourth group (the last one, linked a second time on
    // the head the other replica left); the other's mark would read 1
    let kept: String = redis::cmd("HGET")
        .arg("lost:meta")
        .arg(marks[0])
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(kept, "4");
}

/// A write whose outcome the writer cannot tell (its answer lost, and the copy sent again not
/// answered either) may have landed: the replica's copy in memory of the chain-state rows it
/// carried is dropped, so that they are read from Redis again, not as they were before it (a
/// clinician suspended by that write would otherwise still read as verified on this replica,
/// its follower finding the block applied when it tries again).
#[test]
fn chain_state_whose_write_may_have_landed_is_read_from_redis_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, proxy, store) = behind_a_lossy_proxy(dir.path(), "unknown:");
    let state = |status| ProviderState::Registered {
        role: Role::Nurse,
        status,
        info_hash: None,
    };
    let write = move |status| Batch {
        providers: vec![(p(1), Some(state(status)))],
        ..Batch::default()
    };
    store.apply(write(ProviderStatus::Verified)).unwrap();
    assert_eq!(
        store.provider(&p(1)).unwrap(),
        Some(state(ProviderStatus::Verified))
    );
    // the server runs it; its answer is lost, and the copy sent again finds no server that
    // answers (the next connection is held)
    let writer = answer_lost(&proxy, &store, write(ProviderStatus::Suspended));
    let answer = writer.join().unwrap();
    assert!(answer.is_err(), "not known to be written: {answer:?}");
    proxy.release.send(()).unwrap();
    let other = RedisStore::open(&server.url(), "unknown:").unwrap();
    assert_eq!(
        other.provider(&p(1)).unwrap(),
        Some(state(ProviderStatus::Suspended)),
        "the write landed"
    );
    assert_eq!(
        store.provider(&p(1)).unwrap(),
        Some(state(ProviderStatus::Suspended)),
        "read as the server has it, not as the replica held it before"
    );
}

/// A group whose answer was lost, with replicas' acknowledgement asked for: the retry that
/// finds it written (`{3}`) writes again (its mark, as it is) before it answers, so that the
/// `WAIT` that follows on the new connection waits for replicas that have the group. From
/// Redis 7.2 on, `WAIT` counts a connection's own last write only: had the retry written
/// nothing, the replicas would be counted at once, whether or not they had the group, and a
/// token issued on a write a failover could lose. (Debian's 7.0 counts any connection's
/// writes; its append-only file tells the retry's write here.)
#[tokio::test]
async fn a_group_found_written_by_its_retry_is_acknowledged_after_a_write_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = primary_and_replica(dir.path());
    let proxy = crate::support::LossyProxy::start(primary.port);
    let store = std::sync::Arc::new(
        RedisStore::open_with(
            &proxy.url(),
            "acked:",
            Acknowledgement {
                replicas: 1,
                timeout_ms: 2000,
            },
        )
        .unwrap(),
    );
    let claimed = st1_grant;
    until_acknowledged(&store, 100).await;
    // the script is on the server (a first answer is not an unknown script's)
    store.apply(claimed(1)).unwrap();
    let mut conn = primary.connection();
    // what the primary has written to its append-only file (a `WAIT` adds nothing there,
    // where it adds its `REPLCONF GETACK` to the replication stream)
    let mut written = move || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut conn)
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("aof_current_size:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("the primary's append-only file")
    };
    let writer = answer_lost(&proxy, &store, claimed(2));
    let before = written();
    proxy.release.send(()).unwrap();
    assert_eq!(
        writer.join().unwrap().map_err(|e| e.to_string()),
        Ok(()),
        "written, acknowledged, and answered so"
    );
    assert!(
        written() > before,
        "the retry found the group written and wrote (its mark) before its WAIT"
    );
    let on_replica = RedisStore::open(&replica.url(), "acked:").unwrap();
    assert!(
        on_replica.access(&numbered(2)).unwrap().is_some(),
        "the replica has it"
    );
    let on_primary = RedisStore::open(&primary.url(), "acked:").unwrap();
    assert_eq!(
        one_chain(&on_primary),
        vec!["w0-1", "w0-2"],
        "each entry once"
    );
}

/// A grant's group costs Redis as few commands as it can: each command a script calls costs
/// the server a few microseconds beside its work (a grant's group alone, ~70 µs at 1,000 req/s,
/// against ~4 µs for one `HSET`). The writer's mark is read with the audit head, one `HMGET`,
/// and set with the head, one `HSET` of `META` (its rows last); the rates are read with one
/// more. What it writes is as before: a retry of the group finds it written.
#[tokio::test]
async fn a_grants_group_reads_and_sets_its_writers_mark_with_the_audit_head() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "few:").unwrap();
    // the script is on the server
    store.apply(st1_grant(1)).unwrap();
    let mut conn = server.connection();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    store.apply(st1_grant(2)).unwrap();
    let (calls, stats) = command_calls(&mut conn);
    assert_eq!(calls("hget"), 0, "no field read alone: {stats}");
    assert_eq!(
        calls("hmget"),
        2,
        "the mark with the head, the rates: {stats}"
    );
    assert_eq!(
        calls("hset"),
        4,
        "the access, the audit entry, the rates, and the head with the mark: {stats}"
    );
    let meta: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("few:meta")
        .query(&mut conn)
        .unwrap();
    assert!(
        meta.iter()
            .any(|(field, value)| field.starts_with("written:") && value == "2"),
        "the writer's mark names its second group: {meta:?}"
    );
    assert_eq!(one_chain(&store), vec!["w0-1", "w0-2"], "each entry once");
}

/// How many times the server ran each command since its last `CONFIG RESETSTAT` (by its
/// lower-case name), and the `INFO commandstats` that says so.
fn command_calls(conn: &mut redis::Connection) -> (impl Fn(&str) -> u64, String) {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let text = stats.clone();
    let calls = move |command: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    (calls, stats)
}

/// A batch with audit events under a lease (a notice's outcome, recorded with its audit entry)
/// is written while the lease is its holder's with its token, linked on the audit head as any
/// other; once another replica took the lease, it is refused whole (`Guarded::Fenced`): neither
/// its rows nor its audit entry.
#[tokio::test]
async fn a_batch_with_audit_events_under_a_lapsed_lease_writes_nothing() {
    use breakglass::coordination::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "fenced:").unwrap();
    let coordination = Coordinator::redis(&server.url(), "fenced:", 3).unwrap();
    let fenced = |n: u64, token: u64| Batch {
        accesses: vec![access(n)],
        audit: vec![numbered_event(0, n)],
        guard: Some(Guard {
            fence: Some(Fence {
                lease: "notice:x".into(),
                holder: "replica-a".into(),
                token,
            }),
            ..Guard::default()
        }),
        ..Batch::default()
    };
    let held = coordination
        .lease("notice:x", "replica-a", 300)
        .await
        .unwrap()
        .expect("the lease is free");
    store.apply(fenced(1, held)).unwrap();
    // paused past the lease: another replica took it
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    coordination
        .lease("notice:x", "replica-b", 60_000)
        .await
        .unwrap()
        .expect("the lease lapsed");
    assert!(matches!(
        store.apply(fenced(2, held)),
        Err(StoreError::Guarded(Guarded::Fenced))
    ));
    assert!(
        store.access(&numbered(1)).unwrap().is_some(),
        "written while held"
    );
    assert!(
        store.access(&numbered(2)).unwrap().is_none(),
        "not written once passed"
    );
    assert_eq!(
        one_chain(&store),
        vec!["w0-1"],
        "its audit entry not written"
    );
    // an unguarded write links on as before
    store.apply(st1_grant(3)).unwrap();
    assert_eq!(one_chain(&store), vec!["w0-1", "w0-3"]);
}

/// A group the writer gave up on (no answer within its wait: a hung server, a network that
/// holds a segment) is sent again on a new connection, and the writer goes on; when the server
/// reads the first copy late, after the writer's later groups, it writes nothing: a row the
/// later group wrote keeps its value. Before the writer's mark was checked on every write, a
/// write without audit events (a `MULTI` then) landed late over the later one, and the writer
/// waited on a connection that never answers until TCP gave up.
#[test]
fn a_group_the_writer_gave_up_on_is_sent_again_and_never_lands_after_a_later_one() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (server, proxy, store) = behind_a_lossy_proxy(dir.path(), "late:");
    let mut conn = server.connection();
    let revoked = |until: u64| Batch {
        revoked: vec![("jti-late".into(), until)],
        ..Batch::default()
    };
    let mut value = move || -> Option<Vec<u8>> {
        redis::cmd("HGET")
            .arg("late:revoked")
            .arg("jti-late")
            .query(&mut conn)
            .unwrap()
    };
    // the script is on the server (a first answer is not an unknown script's)
    store.apply(revoked(1)).unwrap();
    proxy.hold_next_script.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (done, written) = std::sync::mpsc::channel();
    {
        let store = store.clone();
        std::thread::spawn(move || done.send(store.apply(revoked(2))));
    }
    proxy
        .held
        .recv_timeout(Duration::from_secs(20))
        .expect("the group is held");
    let written = written
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer gave up on the held copy and sent it again");
    assert_eq!(
        written.map_err(|e| e.to_string()),
        Ok(()),
        "written by the second copy"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "the writer gave up on the first copy after its wait, not {waited:?}"
    );
    let second = value().expect("written");
    store.apply(revoked(3)).unwrap();
    let third = value().expect("written");
    assert_ne!(second, third);
    // the first copy reaches the server now, after the group that followed it
    proxy.deliver_late.send(()).unwrap();
    proxy
        .late_answered
        .recv_timeout(Duration::from_secs(20))
        .expect("the server answered the late copy");
    assert_eq!(value(), Some(third), "the later group's value stays");
    store.apply(revoked(4)).unwrap();
    assert_ne!(value(), Some(second), "the writer goes on");
}

/// As on redb (`redb_keeps_an_index_of_what_is_open_…`): the indexes name the open operations
/// (a hash) and notices (a set scored by when each is next due) only, and a store written
/// before them (or with the notices' index as a hash, as before it was scored) has them built
/// at its first read of one.
#[test]
fn redis_keeps_an_index_of_what_is_open_and_builds_it_for_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    let fields = |conn: &mut redis::Connection, key: &str| -> Vec<String> {
        let mut f: Vec<String> = redis::cmd("HKEYS").arg(key).query(conn).unwrap();
        f.sort();
        f
    };
    {
        let store = RedisStore::open(&server.url(), "index:").unwrap();
        open_and_closed(&store);
        assert_eq!(left_open(&store), expected_open());
    }
    assert_eq!(
        fields(&mut conn, "index:open_submissions"),
        expected_open().0
    );
    let due: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("index:due:open_notices")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        due,
        expected_open()
            .1
            .iter()
            .map(|id| (
                id.to_string(),
                u64::from_be_bytes(id.0[..8].try_into().unwrap())
            ))
            .collect::<Vec<_>>(),
        "each open notice scored by when it is due (notice i: at i)"
    );
    assert_eq!(fields(&mut conn, "index:submissions").len(), 300);
    // as a store of an earlier version left it: no index, no mark; or the notices' index as
    // the hash it was before it was scored
    let _: () = redis::cmd("DEL")
        .arg("index:open_submissions")
        .arg("index:due:open_notices")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("index:open_notices")
        .arg(numbered(7).to_string())
        .arg("")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg("index:meta")
        .arg("open_indexed")
        .query(&mut conn)
        .unwrap();
    let store = RedisStore::open(&server.url(), "index:").unwrap();
    assert_eq!(left_open(&store), expected_open());
    assert_eq!(
        fields(&mut conn, "index:open_submissions"),
        expected_open().0
    );
    assert_eq!(store.open_counts().unwrap(), (3, 3));
    // a build that raced the closing of rows (a replica starting while others work) names
    // closed rows, or rows gone: counted until a read finds them closed and prunes them
    let _: () = redis::cmd("HSET")
        .arg("index:open_submissions")
        .arg("op008")
        .arg("")
        .arg("op-gone")
        .arg("")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("index:due:open_notices")
        .arg(8)
        .arg(numbered(8).to_string())
        .query(&mut conn)
        .unwrap();
    assert_eq!(store.open_counts().unwrap(), (5, 4));
    assert_eq!(left_open(&store), expected_open(), "the reads skip them");
    assert_eq!(store.open_counts().unwrap(), (3, 3), "and prune them");
    assert_eq!(
        fields(&mut conn, "index:open_submissions"),
        expected_open().0
    );
    // a rescan's read of what is due reads the set by score, however many are open
    let due = |until| due_by(&store, &Default::default(), until);
    assert_eq!(due(6), vec![]);
    assert_eq!(due(107), vec![numbered(7), numbered(107)]);
    // read a page at a time: many due at the same second, over several pages, all read once
    store
        .apply(Batch {
            notices: (1000..1280u64)
                .map(|i| {
                    Notice::new(
                        numbered(i),
                        PatientId([1; 32]),
                        if i < 1250 { 500 } else { 501 },
                    )
                })
                .collect(),
            ..Batch::default()
        })
        .unwrap();
    let at_500 = due(500);
    assert_eq!(at_500.len(), 3 + 250);
    assert_eq!(
        at_500
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        253,
        "none twice"
    );
    assert_eq!(due(501).len(), 3 + 280);
}

/// On Redis the operations of one family (a patient's summary hashes, the anchors) are read
/// through the names kept beside the table (`ZRANGEBYLEX`, then those rows), not by walking
/// every operation ever made (one a grant); a store written before the names has them made
/// by a process's first read, and read by walking the table while they cannot be (a full
/// server).
#[test]
fn redis_reads_a_family_of_operations_by_their_names_and_names_those_of_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    let ids = |ops: Vec<Submission>| ops.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let records = (0..2_000u64).map(|i| format!("record:{i:05}"));
    let family = [
        "summary:p1:aa",
        "summary:p1:bb",
        "summary:p2:aa",
        "anchor:1",
    ];
    {
        let store = RedisStore::open(&server.url(), "named:").unwrap();
        for (at, chunk) in records
            .chain(family.map(String::from))
            .collect::<Vec<_>>()
            .chunks(500)
            .enumerate()
        {
            let submissions = chunk
                .iter()
                .map(|id| submission(id, SubmissionState::Pending, at as u64))
                .collect();
            store
                .apply(Batch {
                    submissions,
                    ..Batch::default()
                })
                .unwrap();
        }
        // a later write of one (sent) leaves it named once, with its new value
        store
            .apply(Batch {
                submissions: vec![submission("summary:p1:bb", sent("t1"), 9)],
                ..Batch::default()
            })
            .unwrap();
        store.open_submissions().unwrap();
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .unwrap();
        let p1 = store.submissions_prefixed("summary:p1:").unwrap();
        assert_eq!(ids(p1.clone()), ["summary:p1:aa", "summary:p1:bb"]);
        assert_eq!(p1[1].state, sent("t1"));
        assert_eq!(
            ids(store.submissions_prefixed("anchor:").unwrap()),
            ["anchor:1"]
        );
        assert!(store
            .submissions_prefixed("summary:p3:")
            .unwrap()
            .is_empty());
        let (calls, stats) = command_calls(&mut conn);
        assert_eq!(calls("hscan"), 0, "no operation walked: {stats}");
        assert_eq!(calls("zrangebylex"), 3, "a read of names each: {stats}");
        // one made after the process's first read is named by its own write
        store
            .apply(Batch {
                submissions: vec![submission("summary:p1:cc", SubmissionState::Pending, 10)],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(
            ids(store.submissions_prefixed("summary:p1:").unwrap()),
            ["summary:p1:aa", "summary:p1:bb", "summary:p1:cc"]
        );
    }
    let names = |conn: &mut redis::Connection| -> u64 {
        redis::cmd("ZCARD")
            .arg("named:names:submissions")
            .query(conn)
            .unwrap()
    };
    assert_eq!(names(&mut conn), 2_005, "each operation named once");
    // as a store of an earlier version left them: no names (or some missing)
    let () = redis::cmd("DEL")
        .arg("named:names:submissions")
        .query(&mut conn)
        .unwrap();
    let family = [
        "summary:p1:aa",
        "summary:p2:aa",
        "summary:p1:bb",
        "summary:p1:cc",
    ];
    {
        let store = RedisStore::open(&server.url(), "named:").unwrap();
        server.set_maxmemory(1);
        assert_eq!(
            ids(store.submissions_prefixed("summary:p").unwrap()),
            family,
            "read by walking the table: the names could not be written"
        );
        assert_eq!(names(&mut conn), 0);
        server.set_maxmemory(0);
    }
    let store = RedisStore::open(&server.url(), "named:").unwrap();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        ids(store.submissions_prefixed("summary:p").unwrap()),
        family,
        "oldest first"
    );
    assert_eq!(names(&mut conn), 2_005, "named by its first read");
    assert_eq!(
        ids(store.submissions_prefixed("anchor:").unwrap()),
        ["anchor:1"]
    );
    let (calls, stats) = command_calls(&mut conn);
    assert_eq!(calls("zadd"), 21, "in pages of 100: {stats}");
    assert_eq!(
        calls("zrangebylex"),
        3,
        "the names listed (none), then each read's: {stats}"
    );
}

/// A check of the operations' names that cannot count them (the server away a moment) is
/// made again within seconds, not a minute: meanwhile reads walk the table (each one ~2 s at a
/// million operations), then go by the names again.
#[test]
fn names_that_could_not_be_counted_are_checked_again_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    let store = RedisStore::open(&server.url(), "recount:").unwrap();
    store
        .apply(Batch {
            submissions: vec![submission("anchor:1", SubmissionState::Pending, 1)],
            ..Batch::default()
        })
        .unwrap();
    server.pause();
    assert!(store.submissions_prefixed("anchor:").is_err());
    server.resume();
    std::thread::sleep(std::time::Duration::from_millis(5_500));
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let read = store.submissions_prefixed("anchor:").unwrap();
    assert_eq!(read.len(), 1);
    let (calls, stats) = command_calls(&mut conn);
    assert_eq!(calls("hscan"), 0, "read by its names: {stats}");
    assert_eq!(calls("zcard"), 1, "counted again: {stats}");
}

/// A Redis server at its `maxmemory` (under `noeviction`, the one policy a store opens on)
/// refuses a write whole: nothing of it lands (not the operation it closes, not that
/// operation's row in the open index, not its audit entry), the store says why (`writable`)
/// and reads go on; once the server has room, the same write lands, linked on the same log.
#[test]
fn a_full_redis_refuses_a_write_whole_and_takes_it_once_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "full:").unwrap();
    store
        .apply(Batch {
            submissions: vec![submission("op", sent("tx"), 1)],
            audit: vec![numbered_event(0, 1)],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.writable().is_ok());
    let confirmed = SubmissionState::Confirmed {
        txid: Some("tx".into()),
        height: 9,
        result: "(ok true)".into(),
        nonce: Some(3),
        raw: Some("00".into()),
    };
    // the operation confirmed: its row and its open-index row (a delete, which a full server
    // would take on its own) in one write, with an audit entry
    let closing = || Batch {
        submissions: vec![submission("op", confirmed.clone(), 1)],
        audit: vec![numbered_event(0, 2)],
        ..Batch::default()
    };

    server.set_maxmemory(1);
    let refused = store
        .apply(closing())
        .expect_err("a full server takes no write");
    assert!(refused.to_string().contains("OOM"), "{refused}");
    let open = store.open_submissions().unwrap();
    assert_eq!(open.len(), 1, "still open, and still indexed as open");
    assert_eq!(open[0].state, sent("tx"));
    assert_eq!(one_chain(&store), ["w0-1"]);
    let why = store.writable().expect_err("the store says it is full");
    assert!(why.to_string().contains("out of memory"), "{why}");

    server.set_maxmemory(0);
    assert!(store.writable().is_ok());
    store.apply(closing()).unwrap();
    assert!(store.open_submissions().unwrap().is_empty());
    assert_eq!(store.submission("op").unwrap().unwrap().state, confirmed);
    assert_eq!(one_chain(&store), ["w0-1", "w0-2"]);
}

/// A Redis server that evicts keys when it is full is refused when the store opens: it would
/// drop used nonces (a replay granted again), leases and the audit trail without a word.
#[test]
fn a_redis_that_evicts_keys_is_refused_at_open() {
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let dir = tempfile::tempdir().unwrap();
        let server = crate::support::RedisServer::start_with(
            dir.path(),
            &["--maxmemory", "1gb", "--maxmemory-policy", policy],
        );
        let refused = RedisStore::open(&server.url(), "evicts:")
            .err()
            .expect("a server that evicts is refused");
        assert!(
            refused
                .to_string()
                .contains(&format!("maxmemory-policy {policy}")),
            "{refused}"
        );
    }
    // a server that refuses `CONFIG` (a managed one) is asked through `INFO`: refused too
    // (before, its policy was not read, and it was taken)
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start_with(
        dir.path(),
        &[
            "--maxmemory-policy",
            "allkeys-lru",
            "--rename-command",
            "CONFIG",
            "",
        ],
    );
    let refused = RedisStore::open(&server.url(), "evicts:")
        .err()
        .expect("a server that evicts is refused, CONFIG or not");
    assert!(
        refused.to_string().contains("maxmemory-policy allkeys-lru"),
        "{refused}"
    );
}

/// A server that starts evicting keys once the store is open (after a failover, the promoted
/// replica set up otherwise; or a setting changed) is not ready: `writable` (every /readyz)
/// reads the server as it is now. Before, the policy was read once, at open.
#[test]
fn a_redis_that_evicts_keys_after_the_store_opened_is_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "later:").unwrap();
    assert!(store.writable().is_ok());
    let policy = |p: &str| server.config_set("maxmemory-policy", p);
    policy("allkeys-lru");
    let why = store.writable().expect_err("evicting now");
    assert!(
        why.to_string().contains("maxmemory-policy allkeys-lru"),
        "{why}"
    );
    policy("noeviction");
    assert!(store.writable().is_ok());
}

/// A node of a Redis Cluster is refused when the store opens (a group's one script writes
/// keys a Cluster would spread over several primaries), and, when it did not answer then, by
/// `writable` (every /readyz) once it does: the checks made at open are made again there.
#[test]
fn a_redis_cluster_node_is_refused_at_open_or_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.conf");
    let cluster = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        nodes.to_str().unwrap(),
    ];
    let mut server = crate::support::RedisServer::start_with(dir.path(), &cluster);
    let refused = RedisStore::open(&server.url(), "cluster:")
        .err()
        .expect("a Cluster node is refused");
    assert!(refused.to_string().contains("Redis Cluster"), "{refused}");
    // not answering when the store opens: opened, and not writable once it answers
    server.kill();
    let store = RedisStore::open(&server.url(), "cluster:").unwrap();
    server.restart();
    // (its first reads may still find the connection the server dropped)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let why = loop {
        let why = store
            .writable()
            .expect_err("a Cluster node is not writable");
        if why.to_string().contains("Redis Cluster") || std::time::Instant::now() > deadline {
            break why;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(why.to_string().contains("Redis Cluster"), "{why}");
    // a server as it should be is writable
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "cluster:").unwrap();
    assert!(store.writable().is_ok());
}

/// A certificate authority and a server certificate for 127.0.0.1 it signed, as PEM files in
/// `dir`: `(ca.pem, server.pem, server.key)`.
fn tls_files(dir: &std::path::Path, ca_name: &str) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = [
        dir.join(format!("{ca_name}.pem")),
        dir.join("server.pem"),
        dir.join("server.key"),
    ];
    std::fs::write(&files[0], ca.pem()).unwrap();
    std::fs::write(&files[1], server.pem()).unwrap();
    std::fs::write(&files[2], key.serialize_pem()).unwrap();
    files
}

/// A Redis server with a TLS port beside its own (`--tls-port`, the server's certificate and
/// key; clients not asked for theirs), and that port.
fn tls_server(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (crate::support::RedisServer, u16) {
    let tls_port = crate::support::free_port();
    let server = crate::support::RedisServer::start_with(
        dir,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    (server, tls_port)
}

/// `store` writes and reads an access, is writable, and what it wrote is on `server` (read in
/// the clear, on its own port, under `prefix`): that store, opened there.
fn writes_there(
    store: &RedisStore,
    server: &crate::support::RedisServer,
    prefix: &str,
) -> RedisStore {
    store
        .apply(Batch {
            accesses: vec![access(1)],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.access(&numbered(1)).unwrap().is_some());
    assert!(store.writable().is_ok());
    let on_server = RedisStore::open(&server.url(), prefix).unwrap();
    assert!(on_server.access(&numbered(1)).unwrap().is_some());
    on_server
}

/// A `rediss://` server (TLS): the store writes and reads through it when its certificate is
/// signed by an authority in `data.redis_ca_file`, and does not talk to one whose certificate
/// is not (another authority's, or none the system trusts): reads and writes fail, nothing
/// is sent in the clear.
#[test]
fn a_redis_store_talks_tls_to_a_server_its_authority_signed() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = tls_files(dir.path(), "hospital-ca");
    let (server, tls_port) = tls_server(dir.path(), &cert, &key);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let target = |ca_file: Option<std::path::PathBuf>| RedisTarget {
        ca_file,
        ..RedisTarget::from(url.as_str())
    };
    let store = RedisStore::open(target(Some(ca.clone())), "tls:").unwrap();
    let on_server = writes_there(&store, &server, "tls:");
    // another authority, or the system's roots: no connection
    let other_dir = tempfile::tempdir().unwrap();
    let [other_ca, _, _] = tls_files(other_dir.path(), "other-ca");
    for untrusted in [Some(other_ca), None] {
        let store = RedisStore::open(target(untrusted.clone()), "tls:").unwrap();
        let refused = store.ping().expect_err("an untrusted certificate");
        assert!(
            refused.to_string().to_lowercase().contains("certificate"),
            "{untrusted:?}: {refused}"
        );
        assert!(store
            .apply(Batch {
                accesses: vec![access(2)],
                ..Batch::default()
            })
            .is_err());
    }
    assert!(on_server.access(&numbered(2)).unwrap().is_none());
    // a CA file that is not there, or holds no certificate (the server's key, say): refused at
    // open, naming it
    let missing = RedisStore::open(target(Some(dir.path().join("nope.pem"))), "tls:")
        .err()
        .expect("no CA file");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let no_certificate = RedisStore::open(target(Some(key.clone())), "tls:")
        .err()
        .expect("no certificate in it");
    assert!(
        no_certificate.to_string().contains("no PEM certificate"),
        "{no_certificate}"
    );
}

/// Through Sentinel over TLS (`rediss://` Sentinels, a `rediss://` `data.redis_url`): the
/// Sentinels and the primary each names are reached by TLS only, their certificates checked
/// against `data.redis_ca_file`; the store writes and reads there. With another authority, or
/// the system's roots, it reaches neither: nothing is written.
#[test]
fn a_redis_store_finds_its_primary_through_sentinels_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = tls_files(dir.path(), "hospital-ca");
    let primary_dir = dir.path().join("primary");
    std::fs::create_dir_all(&primary_dir).unwrap();
    let (server, tls_port) = tls_server(&primary_dir, &cert, &key);
    let sentinel = crate::support::Sentinel::start_tls(
        &dir.path().join("sentinel"),
        tls_port,
        "bg",
        &[ca.clone(), cert, key],
    );
    assert!(sentinel.url().starts_with("rediss://"));
    // the URL's host and port are not used: the Sentinel names the primary, by its TLS port
    let target = |ca_file: Option<std::path::PathBuf>| RedisTarget {
        url: "rediss://127.0.0.1:1/0".into(),
        sentinels: vec![sentinel.url()],
        master: "bg".into(),
        ca_file,
    };
    let store = RedisStore::open(target(Some(ca)), "stls:").unwrap();
    let on_server = writes_there(&store, &server, "stls:");
    let other_dir = tempfile::tempdir().unwrap();
    let [other_ca, _, _] = tls_files(other_dir.path(), "other-ca");
    for untrusted in [Some(other_ca), None] {
        let refused = RedisStore::open(target(untrusted.clone()), "stls:")
            .and_then(|store| {
                store.ping()?;
                store.apply(Batch {
                    accesses: vec![access(2)],
                    ..Batch::default()
                })
            })
            .expect_err("an untrusted certificate");
        assert!(
            refused.to_string().to_lowercase().contains("certificate"),
            "{untrusted:?}: {refused}"
        );
    }
    assert!(on_server.access(&numbered(2)).unwrap().is_none());
}

/// What a store wrote is there for a store opened later (another process, a replica).
#[test]
fn a_redis_store_opened_again_reads_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    {
        let store = RedisStore::open(&server.url(), "reopen:").unwrap();
        store
            .apply(Batch {
                nonce: Some(8),
                submissions: vec![submission("op", sent("tx"), 1)],
                ..Batch::default()
            })
            .unwrap();
    }
    let store = RedisStore::open(&server.url(), "reopen:").unwrap();
    assert_eq!(store.nonce().unwrap(), Some(8));
    assert_eq!(store.open_submissions().unwrap()[0].state, sent("tx"));
    // another prefix is another store on the same server
    let other = RedisStore::open(&server.url(), "other:").unwrap();
    assert_eq!(other.nonce().unwrap(), None);
}

/// Redis killed (SIGKILL) and started again with its append-only file: every acknowledged
/// write is there, and the same store goes on reading and writing (it opens its connections
/// again); while it is down, writes and `ping` fail rather than pretend.
#[test]
fn an_acknowledged_write_survives_redis_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(&server.url(), "restart:").unwrap();
    for i in 0..20u64 {
        store
            .apply(Batch {
                replay: vec![(format!("k{i}"), i)],
                ..Batch::default()
            })
            .unwrap();
    }
    server.kill();
    assert!(store.ping().is_err());
    assert!(store
        .apply(Batch {
            nonce: Some(1),
            ..Batch::default()
        })
        .is_err());
    server.restart();
    assert_eq!(store.replays().unwrap().len(), 20);
    store.ping().unwrap();
    store
        .apply(Batch {
            nonce: Some(2),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.nonce().unwrap(), Some(2));
}

// --- what replicas agree on beside the rows (`coordination`) ---

/// A grant's write as a replica makes it: access `n`, its audit entry, its claim.
fn claimed(n: u64, claim: Claim) -> Batch {
    use breakglass::audit::{Event, Record};
    Batch {
        accesses: vec![access(n)],
        audit: vec![Record {
            at: n,
            event: Event::SignIn {
                reviewer: None,
                outcome: format!("grant {n}"),
            },
        }],
        claims: vec![claim],
        ..Batch::default()
    }
}

/// A Redis of its own (its files in the directory kept), with a replica's coordinator (its
/// claims) and store on it under `prefix`.
fn claims_on_redis(
    prefix: &str,
) -> (
    tempfile::TempDir,
    crate::support::RedisServer,
    breakglass::coordination::RedisCoordinator,
    RedisStore,
) {
    use breakglass::coordination::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let Coordinator::Redis(shared) = Coordinator::redis(&server.url(), prefix, 1000).unwrap()
    else {
        unreachable!("shared")
    };
    let store = RedisStore::open(&server.url(), prefix).unwrap();
    (dir, server, shared, store)
}

/// A replica whose clock runs behind the server's by more than a request's freshness claims a
/// nonce: it stays used on the server for as long as that replica may take the request as
/// fresh, counted on the server's clock. Before, the claim carried the time on the replica's
/// clock, which the server already counted as past: the same signed request sent to that
/// replica again was granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_claimed_by_a_replica_whose_clock_runs_behind_stays_used() {
    let (_dir, server, shared, store) = claims_on_redis("sk:");
    // its clock 200 s behind: the request fresh on it until 120 s from its now
    let behind = crate::support::now() - 200;
    let claim = shared.claim("ST1:7", behind + 120, behind, "ST1");
    store.apply(claimed(1, claim.clone())).unwrap();
    assert!(
        matches!(
            store.apply(claimed(2, claim)),
            Err(StoreError::Guarded(Guarded::Replayed))
        ),
        "sent again: a replay"
    );
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg(format!("sk:{NONCES}"))
        .arg("ST1:7")
        .query(&mut server.connection())
        .unwrap();
    let now = crate::support::now();
    assert!(
        score.is_some_and(|s| s >= now + 118 && s <= now + 121),
        "kept 120 s on the server's clock: {score:?} at {now}"
    );
}

/// Two replicas' coordinators on one Redis: a nonce is used once across both, a clinician's
/// rate counts across both, a lease has one holder until it lapses and then a greater fencing
/// token, and a write carrying a lapsed lease's token (or over an operation that changed) is
/// refused and writes nothing. With the server gone they answer errors, never "fresh" or
/// "yours"; back, they work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_nonces_rates_and_leases_on_redis_and_a_lapsed_lease_cannot_write() {
    use breakglass::audit::{follows, Head};
    use breakglass::coordination::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::support::RedisServer::start(dir.path());
    let a = Coordinator::redis(&server.url(), "co:", 3).unwrap();
    let b = Coordinator::redis(&server.url(), "co:", 3).unwrap();
    assert!(a.is_shared());
    let open = || -> std::sync::Arc<dyn Store> {
        std::sync::Arc::new(RedisStore::open(&server.url(), "co:").unwrap())
    };
    let (store_a, store_b) = (open(), open());
    let until = crate::support::now() + 60;
    // a grant's write, as a replica makes it: its access, its audit entry, its claim
    let mut granted = 0u64;
    let grant = |on: &Coordinator, key: &str, until: u64, who: &str, n: u64| {
        let Coordinator::Redis(shared) = on else {
            unreachable!("shared")
        };
        claimed(n, shared.claim(key, until, crate::support::now(), who))
    };
    let refused = |r: Result<(), StoreError>| match r {
        Err(StoreError::Guarded(g)) => g,
        other => panic!("refused, not {other:?}"),
    };

    store_a.apply(grant(&a, "ST1:1", until, "ST1", 1)).unwrap();
    granted += 1;
    assert_eq!(
        refused(store_b.apply(grant(&b, "ST1:1", until, "ST1", 2))),
        Guarded::Replayed,
        "a replay on the other replica"
    );
    assert_eq!(
        store_b.access(&numbered(2)).unwrap(),
        None,
        "nothing written"
    );
    // one that may be forgotten now is gone by itself
    store_a
        .apply(grant(&a, "ST2:2", crate::support::now() + 1, "ST2", 3))
        .unwrap();
    granted += 1;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    store_b.apply(grant(&b, "ST2:2", until, "ST2", 4)).unwrap();
    granted += 1;
    // the used nonces are one sorted set, scored with when each may be forgotten: the stale
    // one was dropped by the next write
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let used: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(format!("co:{NONCES}"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    assert_eq!(used, vec![("ST1:1".into(), until), ("ST2:2".into(), until)]);

    // three a minute, across both (ST1 has one): the fourth is refused, and takes nothing (its
    // nonce stays fresh), while another clinician's goes on
    store_b.apply(grant(&b, "ST1:2", until, "ST1", 5)).unwrap();
    store_a.apply(grant(&a, "ST1:3", until, "ST1", 6)).unwrap();
    granted += 2;
    assert_eq!(
        refused(store_b.apply(grant(&b, "ST1:4", until, "ST1", 7))),
        Guarded::RateLimited,
        "the fourth in a minute"
    );
    assert_eq!(
        refused(store_a.apply(grant(&a, "ST1:4", until, "ST1", 8))),
        Guarded::RateLimited,
        "not a replay: the refused claim took no nonce"
    );
    store_b.apply(grant(&b, "ST3:1", until, "ST3", 9)).unwrap();
    granted += 1;

    // in one group (queued behind a large write): a refused claim leaves the others of its
    // group written, linked
    let large = apply_started(
        &store_a,
        Batch {
            replay: (0..20_000)
                .map(|i| (format!("filler:{i}"), until))
                .collect(),
            ..Batch::default()
        },
    );
    let answers: Vec<_> = [
        grant(&a, "ST4:1", until, "ST4", 10),
        grant(&a, "ST4:1", until, "ST4", 11),
        grant(&a, "ST1:5", until, "ST1", 12),
        grant(&a, "ST5:1", until, "ST5", 13),
    ]
    .into_iter()
    .map(|batch| apply_started(&store_a, batch))
    .collect();
    large.await.unwrap();
    let mut outcomes = Vec::new();
    for answer in answers {
        outcomes.push(answer.await);
    }
    assert!(outcomes[0].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    assert_eq!(refused(outcomes[1].clone()), Guarded::Replayed);
    assert_eq!(refused(outcomes[2].clone()), Guarded::RateLimited);
    granted += 2;
    for (n, written) in [(10, true), (11, false), (12, false), (13, true)] {
        assert_eq!(store_b.access(&numbered(n)).unwrap().is_some(), written);
    }
    let entries = store_b.audit_entries(1, 100).unwrap();
    assert_eq!(entries.len() as u64, granted, "one entry per written grant");
    let head = entries
        .iter()
        .try_fold(Head::default(), |h, e| follows(&h, e))
        .expect("one chain");
    assert_eq!(store_a.audit_head().unwrap(), Some(head));

    let t1 = a.lease("submitter:x", "a", 400).await.unwrap().unwrap();
    assert_eq!(
        a.lease("submitter:x", "a", 400).await.unwrap(),
        Some(t1),
        "renewed"
    );
    assert_eq!(
        b.lease("submitter:x", "b", 400).await.unwrap(),
        None,
        "held by a"
    );
    b.release("submitter:x", "b").await.unwrap();
    assert_eq!(
        b.lease("submitter:x", "b", 400).await.unwrap(),
        None,
        "b cannot let a's go"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let t2 = b.lease("submitter:x", "b", 60_000).await.unwrap().unwrap();
    assert!(t2 > t1, "a lapsed lease taken over with a greater token");
    {
        // a lease a notice: the tokens' record does not grow with them
        let mut c = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let fences = |c: &mut redis::Connection| -> usize {
            redis::cmd("HLEN").arg("co:fences").query(c).unwrap()
        };
        let before = fences(&mut c);
        let mut last = t2;
        for n in 0..50 {
            let name = format!("notice:{n}");
            let t = a.lease(&name, "a", 60_000).await.unwrap().unwrap();
            assert!(t > last, "tokens grow across names");
            last = t;
            a.release(&name, "a").await.unwrap();
        }
        assert_eq!(fences(&mut c), before, "no field a lease name");
        // a name an earlier version counted on its own is given a token beyond its count
        redis::cmd("HSET")
            .arg("co:fences")
            .arg("notice:old")
            .arg(last + 100)
            .query::<()>(&mut c)
            .unwrap();
        let t = a.lease("notice:old", "a", 60_000).await.unwrap().unwrap();
        assert_eq!(t, last + 101);
        a.release("notice:old", "a").await.unwrap();
        assert!(a.lease("notice:1", "a", 60_000).await.unwrap().unwrap() > t);
        a.release("notice:1", "a").await.unwrap();
    }

    // the writes a lease guards
    let store = RedisStore::open(&server.url(), "co:").unwrap();
    let op = submission("op", SubmissionState::Pending, 1);
    store
        .apply(Batch {
            submissions: vec![op.clone()],
            ..Batch::default()
        })
        .unwrap();
    let signed_by = |holder: &str, token: u64, read: &Submission| Batch {
        submissions: vec![Submission {
            state: sent("tx"),
            ..read.clone()
        }],
        nonce: Some(4),
        guard: Some(Guard {
            fence: Some(Fence {
                lease: "submitter:x".into(),
                holder: holder.into(),
                token,
            }),
            submissions: vec![read.clone()],
            ..Guard::default()
        }),
        ..Batch::default()
    };
    let signed = |token: u64, read: &Submission| signed_by("b", token, read);
    assert!(matches!(
        store.apply(signed_by("a", t1, &op)),
        Err(StoreError::Guarded(Guarded::Fenced))
    ));
    // the token given again to another holder (the lease's last write lost in a failover):
    // the holder tells them apart
    assert!(matches!(
        store.apply(signed_by("a", t2, &op)),
        Err(StoreError::Guarded(Guarded::Fenced))
    ));
    assert_eq!(
        store.submission("op").unwrap().unwrap().state,
        SubmissionState::Pending
    );
    assert_eq!(store.nonce().unwrap(), None, "nothing of a fenced write");
    let stale = Submission {
        created_at_ms: 0,
        ..op.clone()
    };
    assert!(matches!(
        store.apply(signed(t2, &stale)),
        Err(StoreError::Guarded(Guarded::Changed))
    ));
    assert_eq!(store.nonce().unwrap(), None);
    store.apply(signed(t2, &op)).unwrap();
    assert_eq!(store.submission("op").unwrap().unwrap().state, sent("tx"));
    assert_eq!(store.nonce().unwrap(), Some(4));
    b.release("submitter:x", "b").await.unwrap();
    assert!(
        matches!(
            store.apply(signed(t2, &op)),
            Err(StoreError::Guarded(Guarded::Fenced))
        ),
        "a released lease fences too"
    );

    server.kill();
    assert!(
        store_a.apply(grant(&a, "ST6:1", until, "ST6", 20)).is_err(),
        "never written unrecorded"
    );
    assert!(a.lease("submitter:x", "a", 400).await.is_err());
    server.restart();
    crate::support::eventually("the store reconnects", crate::support::SECS, async || {
        store_a.apply(grant(&a, "ST6:1", until, "ST6", 20)).ok()
    })
    .await;
    assert_eq!(
        refused(store_b.apply(grant(&b, "ST1:1", until, "ST1", 21))),
        Guarded::Replayed,
        "used nonces survive the restart (AOF)"
    );
    assert!(b.lease("submitter:y", "b", 400).await.unwrap().is_some());
}

/// A burst's used nonces go stale together (their requests were issued within moments): the
/// writes after it forget them `FORGET_AT_ONCE` (16) at a time, not all in one write that
/// would hold the server for as long as a burst is large; meanwhile a nonce past its time is
/// no replay, and a fresh one still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonces_are_forgotten_a_bounded_number_a_write_and_count_as_unused() {
    let (_dir, server, shared, store) = claims_on_redis("st:");
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let nonces = format!("st:{NONCES}");
    let now = crate::support::now();
    let until = now + 60;
    // a burst of 100 grants' nonces, all stale now
    let mut burst = redis::cmd("ZADD");
    burst.arg(&nonces);
    for i in 0..100 {
        burst.arg(now - 5).arg(format!("burst:{i:04}"));
    }
    burst.query::<()>(&mut conn).unwrap();
    let grant = |key: &str, n: u64| {
        claimed(
            n,
            shared.claim(key, until, crate::support::now(), &format!("ST{n}")),
        )
    };
    let stale = |conn: &mut redis::Connection| -> u64 {
        redis::cmd("ZCOUNT")
            .arg(&nonces)
            .arg("-inf")
            .arg(crate::support::now())
            .query(conn)
            .unwrap()
    };

    // the last of the burst, claimed again: past its time, so not a replay
    store.apply(grant("burst:0099", 1)).unwrap();
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg(&nonces)
        .arg("burst:0099")
        .query(&mut conn)
        .unwrap();
    let kept = |score: Option<u64>| score.is_some_and(|s| s.abs_diff(until) <= 1);
    assert!(
        kept(score),
        "claimed anew, fresh until its new time: {score:?}"
    );
    assert_eq!(
        stale(&mut conn),
        100 - 16 - 1,
        "one write forgot 16 of the burst, no more"
    );
    assert!(
        matches!(
            store.apply(grant("burst:0099", 2)),
            Err(StoreError::Guarded(Guarded::Replayed))
        ),
        "fresh again: a replay"
    );
    // a refused write writes nothing, stale nonces included (before, it forgot 16: each
    // replay refused was a write, a sync and replication, a flood of them a flood of writes)
    assert_eq!(stale(&mut conn), 83, "a refused write forgets none");
    // the writes that follow forget the rest, 16 each
    for n in 3..8 {
        store.apply(grant(&format!("fresh:{n}"), n)).unwrap();
    }
    assert_eq!(stale(&mut conn), 83 - 5 * 16);
    store.apply(grant("fresh:8", 8)).unwrap();
    assert_eq!(stale(&mut conn), 0, "the burst forgotten");
    let used: u64 = redis::cmd("ZCARD").arg(&nonces).query(&mut conn).unwrap();
    assert_eq!(used, 1 + 6, "the fresh nonces kept");
}

/// On-call state changed on one replica (a webhook's shift) is what another replica answers:
/// read again before it says "not on call", and on its periodic reload when a shift ends.
#[test]
fn on_call_state_from_one_replica_is_read_by_another() {
    use breakglass::paging::{Change, Lookup, OnCall};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let secrets = dir.path().join("webhook-secrets");
    std::fs::write(&secrets, "a-secret-of-this-test\n").unwrap();
    let mut settings = breakglass::configuration::OnCallSettings::default();
    settings.webhook.secrets_file = Some(secrets);
    let replica = || {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(RedisStore::open(&server.url(), "oncall:").unwrap());
        OnCall::load(&settings, store)
            .unwrap()
            .shared_with_replicas(true)
    };
    let (a, b) = (replica(), replica());
    let nurse = p(3).to_string();
    let now = crate::support::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(matches!(
        rt.block_on(b.lookup_fresh(&nurse, now)),
        Lookup::NotOnCall
    ));
    let shift = |until: u64| Change::Shift {
        principal: nurse.clone(),
        fact: breakglass::domain::OnCall::scheduled("webhook", None, Some(now - 60), Some(until)),
    };
    rt.block_on(a.apply(shift(now + 3600), None)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert!(
        matches!(rt.block_on(b.lookup_fresh(&nurse, now)), Lookup::OnCall(_)),
        "the other replica reads the shift before refusing"
    );
    // the shift ended on the first replica: the second's reload says so
    let end = Change::Shift {
        principal: nurse.clone(),
        fact: breakglass::domain::OnCall::scheduled("webhook", None, Some(now - 30), Some(now - 1)),
    };
    rt.block_on(a.apply(end, None)).unwrap();
    assert!(
        matches!(b.lookup(&nurse, now), Lookup::OnCall(_)),
        "not read yet"
    );
    b.reload().unwrap();
    assert!(matches!(b.lookup(&nurse, now), Lookup::NotOnCall));
    // a hung Redis: "not on call" is answered from the state last read within its short
    // wait, not after the store's read timeouts (1.5 s, then once more), which held a grant
    // past its own 5 s wait for its write
    server.pause();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let asked = std::time::Instant::now();
    assert!(matches!(
        rt.block_on(b.lookup_fresh(&nurse, now)),
        Lookup::NotOnCall
    ));
    let waited = asked.elapsed();
    server.resume();
    assert!(
        waited < std::time::Duration::from_secs(1),
        "answered after {waited:?}"
    );
}

/// Many reads at once of a hung Redis: those that waited for a connection while the first
/// ones found no answer are refused when they get one, not let through to wait their own
/// timeouts. Before, each did, one round of the store's connections after another: twelve
/// readers' last answered after ~9 s, where none waits much past the first ones' ~3 s now.
#[test]
fn reads_waiting_for_a_connection_to_a_hung_redis_are_refused_once_one_found_no_answer() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(server.url().as_str(), "hung-many:").unwrap();
    assert!(store.access(&numbered(1)).unwrap().is_none());
    server.pause();
    let waited: Vec<(bool, Duration)> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let asked = Instant::now();
                    let read = store.access(&numbered(1));
                    (read.is_err(), asked.elapsed())
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    server.resume();
    assert!(waited.iter().all(|(err, _)| *err), "{waited:?}");
    let longest = waited.iter().map(|(_, w)| *w).max().unwrap();
    assert!(longest < Duration::from_secs(7), "{waited:?}");
}

/// A hung Redis (SIGSTOP: connections accepted, nothing answered) holds one read for its
/// timeouts (1.5 s, then once more on a new connection); the reads after it are refused at
/// once, saying why, instead of each holding its caller's thread (a background task's, an
/// introspection's) for seconds; a second on, one read asks it again (the others still refused
/// while it waits); and once the server answers again, so do reads, within the second they are
/// refused for. Before, every read waited 3 s.
#[test]
fn reads_of_a_hung_redis_are_refused_at_once_after_one_found_no_answer() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let store = RedisStore::open(server.url().as_str(), "hung:").unwrap();
    store
        .apply(Batch {
            accesses: vec![access(1)],
            ..Batch::default()
        })
        .unwrap();
    let read = || {
        let asked = Instant::now();
        let read = store.access(&numbered(1));
        (read, asked.elapsed())
    };
    assert!(read().0.unwrap().is_some());
    server.pause();
    let (first, waited) = read();
    assert!(first.is_err(), "{first:?}");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "the first read waited {waited:?}"
    );
    for _ in 0..3 {
        let (refused, waited) = read();
        let why = refused.unwrap_err().to_string();
        assert!(why.contains("does not answer"), "{why}");
        assert!(
            waited < Duration::from_millis(200),
            "refused after {waited:?}"
        );
    }
    // a second on, one read asks the server again; while it waits, the others are still
    // refused at once
    std::thread::sleep(Duration::from_millis(1100));
    std::thread::scope(|s| {
        let asking = s.spawn(read);
        std::thread::sleep(Duration::from_millis(300));
        let (refused, waited) = read();
        assert!(refused.is_err(), "{refused:?}");
        assert!(
            waited < Duration::from_millis(200),
            "refused after {waited:?}"
        );
        let (asked, waited) = asking.join().unwrap();
        assert!(asked.is_err(), "{asked:?}");
        assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    });
    server.resume();
    let back = Instant::now();
    while !matches!(read().0, Ok(Some(_))) {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "reads did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        back.elapsed() < Duration::from_millis(2500),
        "read again after {:?}",
        back.elapsed()
    );
}

/// A Redis primary and its replica, their files under `dir`.
fn primary_and_replica(
    dir: &std::path::Path,
) -> (crate::support::RedisServer, crate::support::RedisServer) {
    let (primary_dir, replica_dir) = (dir.join("primary"), dir.join("replica"));
    std::fs::create_dir_all(&primary_dir).unwrap();
    std::fs::create_dir_all(&replica_dir).unwrap();
    let primary = crate::support::RedisServer::start(&primary_dir);
    let replica = crate::support::RedisServer::start_replica(&replica_dir, &primary);
    (primary, replica)
}

/// Writes access `n` until the write is acknowledged: the replica links up in its own time,
/// and until then a write that needs it is not.
async fn until_acknowledged(store: &RedisStore, n: u64) {
    crate::support::eventually(
        "the replica acknowledges",
        crate::support::SECS,
        async || {
            store
                .apply(Batch {
                    accesses: vec![access(n)],
                    ..Batch::default()
                })
                .ok()
        },
    )
    .await;
}

/// With `data.redis_wait_replicas`, a write is done only once the server's replicas have it:
/// with the replica up a write is acknowledged and readable there; with it down a write fails
/// (no grant on it) within the wait, the store is not writable (/readyz says why: Redis has
/// fewer replicas than the writes wait for) until the replica is back, and what the primary kept
/// reaches it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_the_redis_replicas_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, mut replica) = primary_and_replica(dir.path());
    let store = RedisStore::open_with(
        &primary.url(),
        "ack:",
        Acknowledgement {
            replicas: 1,
            timeout_ms: 400,
        },
    )
    .unwrap();
    let grant = |n: u64| Batch {
        accesses: vec![access(n)],
        ..Batch::default()
    };
    until_acknowledged(&store, 1).await;
    let on_replica = RedisStore::open(&replica.url(), "ack:").unwrap();
    store.apply(grant(2)).unwrap();
    assert!(
        on_replica.access(&numbered(2)).unwrap().is_some(),
        "acknowledged: the replica has it"
    );

    replica.kill();
    let started_unacknowledged = std::time::Instant::now();
    match store.apply(grant(3)) {
        Err(StoreError::Backend(why)) => {
            assert!(why.contains("acknowledged by 0 of the 1"), "{why}")
        }
        other => panic!("not acknowledged, not {other:?}"),
    }
    let waited = started_unacknowledged.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(400)
            && waited < std::time::Duration::from_secs(5),
        "it waited {waited:?}, the wait being 400 ms"
    );
    let why = store.writable().expect_err("no replica: not writable");
    assert!(
        why.to_string().contains("0 of the server's replicas"),
        "{why}"
    );
    // while the replica is away, writes are refused at once and not written (not each
    // written and waited on for nothing, grants queued behind those waits)
    let refused_at_once = std::time::Instant::now();
    std::thread::scope(|s| {
        let store = &store;
        let writes: Vec<_> = (5..13)
            .map(|n| s.spawn(move || (n, store.apply(grant(n)))))
            .collect();
        for w in writes {
            match w.join().unwrap() {
                (_, Err(StoreError::Unwritten(why))) => assert!(
                    why.contains("0 of the server's replicas") && why.contains("not written"),
                    "{why}"
                ),
                (n, other) => panic!("{n}: refused unwritten, not {other:?}"),
            }
        }
    });
    let waited = refused_at_once.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(400),
        "eight writes refused in {waited:?}, without waiting out the 400 ms"
    );
    replica.restart();
    // writable again once the replica is connected, before any write
    crate::support::eventually("writable again", crate::support::SECS, async || {
        store.writable().ok()
    })
    .await;
    crate::support::eventually("acknowledged again", crate::support::SECS, async || {
        store.apply(grant(4)).ok()
    })
    .await;
    let on_replica = RedisStore::open(&replica.url(), "ack:").unwrap();
    for n in [1, 2, 3, 4] {
        assert!(
            on_replica.access(&numbered(n)).unwrap().is_some(),
            "{n} is on the replica"
        );
    }
    for n in 5..13 {
        assert!(
            store.access(&numbered(n)).unwrap().is_none(),
            "{n} was refused: not written"
        );
    }
}

/// With `data.redis_sentinels`, the store and the coordination follow the primary Sentinel
/// names: the primary killed, a replica is promoted (and the other made its replica), and
/// writes (each acknowledged by a replica) go on on it without a restart; what was
/// acknowledged before is there, the audit log goes on from its head, and a lease is renewed
/// by its holder with its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_sentinel_failover_to_the_promoted_replica() {
    use breakglass::audit::{follows, Event, Head, Record};
    use breakglass::coordination::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let mut primary = crate::support::RedisServer::start(&path("primary"));
    let replicas = [
        crate::support::RedisServer::start_replica(&path("replica-a"), &primary),
        crate::support::RedisServer::start_replica(&path("replica-b"), &primary),
    ];
    let sentinel = crate::support::Sentinel::start(&path("sentinel"), &primary, "bg");
    let query = |url: &str, cmd: &redis::Cmd| -> Option<redis::Value> {
        let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
        cmd.query(&mut c).ok()
    };
    crate::support::eventually(
        "the Sentinel knows both replicas",
        crate::support::SECS,
        async || {
            let known = query(
                &sentinel.url(),
                redis::cmd("SENTINEL").arg("REPLICAS").arg("bg"),
            )?;
            matches!(known, redis::Value::Array(r) if r.len() == 2).then_some(())
        },
    )
    .await;
    // the URL's host and port are not used: the Sentinel says where the primary is
    let target = RedisTarget {
        url: "redis://127.0.0.1:1/0".into(),
        sentinels: vec![sentinel.url()],
        master: "bg".into(),
        ca_file: None,
    };
    let store = RedisStore::open_with(
        &target,
        "fail:",
        Acknowledgement {
            replicas: 1,
            timeout_ms: 500,
        },
    )
    .unwrap();
    let coordinator = Coordinator::redis(&target, "fail:", 60).unwrap();
    let event = |n: u64| Record {
        at: n,
        event: Event::SignIn {
            reviewer: None,
            outcome: format!("e{n}"),
        },
    };
    let grant = |n: u64| Batch {
        accesses: vec![access(n)],
        audit: vec![event(n)],
        ..Batch::default()
    };
    crate::support::eventually("a replica acknowledges", crate::support::SECS, async || {
        store.apply(grant(1)).ok()
    })
    .await;
    let token = coordinator.lease("submitter:x", "a", 30_000).await.unwrap();
    assert!(token.is_some());
    // the lease reached both replicas before the primary goes
    crate::support::eventually("the lease replicated", crate::support::SECS, async || {
        let hget = redis::cmd("HGET")
            .arg("fail:lease:submitter:x")
            .arg("holder")
            .clone();
        replicas
            .iter()
            .all(|r| matches!(query(&r.url(), &hget), Some(redis::Value::BulkString(_))))
            .then_some(())
    })
    .await;

    primary.kill();
    crate::support::eventually(
        "writes go on on the promoted replica",
        std::time::Duration::from_secs(60),
        async || store.apply(grant(2)).ok(),
    )
    .await;
    let master = redis::Value::BulkString(b"master".to_vec());
    let promoted = replicas
        .iter()
        .filter(|r| {
            matches!(query(&r.url(), &redis::cmd("ROLE")),
                Some(redis::Value::Array(role)) if role[0] == master)
        })
        .count();
    assert_eq!(promoted, 1, "one replica is the primary now");
    // one log: the entries written after the failover link to those before them. A write the
    // replica did not acknowledge within its wait is refused but may still have landed, so the
    // writes retried above may each be in the log more than once: e1 one or more times, then
    // e2. Read until the Sentinel answers (it may not name a primary for a moment as the
    // failover ends)
    let entries = crate::support::eventually(
        "both grants and their log read on the promoted primary",
        crate::support::SECS,
        async || {
            let found = [1, 2]
                .iter()
                .all(|n| matches!(store.access(&numbered(*n)), Ok(Some(_))));
            found.then_some(())?;
            store.audit_entries(1, 10_000).ok()
        },
    )
    .await;
    let outcomes: Vec<String> = entries
        .iter()
        .map(|e| match e.parsed().unwrap() {
            Event::SignIn { outcome, .. } => outcome,
            other => panic!("{other:?}"),
        })
        .collect();
    let firsts = outcomes.iter().take_while(|o| *o == "e1").count();
    assert!(
        firsts >= 1 && firsts < outcomes.len() && outcomes[firsts..].iter().all(|o| o == "e2"),
        "e1, then e2: {outcomes:?}"
    );
    let mut head = Head::default();
    for e in &entries {
        head = follows(&head, e).unwrap_or_else(|b| panic!("entry {} is not linked: {b:?}", e.seq));
    }
    assert_eq!(store.audit_head().unwrap(), Some(head));
    // the coordination found the new primary too: the holder renews with its token
    let renewed =
        crate::support::eventually("the lease renewed", crate::support::SECS, async || {
            coordinator.lease("submitter:x", "a", 30_000).await.ok()
        })
        .await;
    assert_eq!(renewed, token);
    assert_eq!(
        coordinator.lease("submitter:x", "b", 30_000).await.unwrap(),
        None
    );
}

/// A primary that hangs (SIGSTOP: its connections open, nothing answered) is replaced by the
/// Sentinel's failover, and the writer, which was waiting on it, gives up within its wait and
/// writes on the promoted replica, without a restart (and so does the coordination, whose
/// lease holder renews there); when the old primary comes back, the
/// Sentinel makes it a replica and what the writer gave up on there is gone, nothing else.
/// Before the writer had a wait, it waited on the hung primary until TCP gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_leaves_a_hung_primary_for_the_one_a_failover_promoted() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let primary = crate::support::RedisServer::start(&path("primary"));
    let replica = crate::support::RedisServer::start_replica(&path("replica"), &primary);
    let sentinel = crate::support::Sentinel::start(&path("sentinel"), &primary, "bg");
    let role = |url: &str| -> Option<Vec<u8>> {
        let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
        match redis::cmd("ROLE").query(&mut c).ok()? {
            redis::Value::Array(role) => match role.first()? {
                redis::Value::BulkString(r) => Some(r.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    crate::support::eventually(
        "the Sentinel knows the replica",
        crate::support::SECS,
        async || {
            let mut c = redis::Client::open(sentinel.url())
                .ok()?
                .get_connection()
                .ok()?;
            let known: redis::Value = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("bg")
                .query(&mut c)
                .ok()?;
            matches!(known, redis::Value::Array(r) if r.len() == 1).then_some(())
        },
    )
    .await;
    let target = RedisTarget {
        url: "redis://127.0.0.1:1/0".into(),
        sentinels: vec![sentinel.url()],
        master: "bg".into(),
        ca_file: None,
    };
    let store = std::sync::Arc::new(RedisStore::open(&target, "hung:").unwrap());
    let grant = |n: u64| Batch {
        accesses: vec![access(n)],
        audit: vec![numbered_event(0, n)],
        ..Batch::default()
    };
    let coordinator = breakglass::coordination::Coordinator::redis(&target, "hung:", 60).unwrap();
    store.apply(grant(1)).unwrap();
    let token = coordinator.lease("submitter:x", "a", 60_000).await.unwrap();
    assert!(token.is_some());
    crate::support::eventually("the replica has them", crate::support::SECS, async || {
        let mut c = replica.connection();
        let n: usize = redis::cmd("HLEN").arg("hung:accesses").query(&mut c).ok()?;
        let leased: bool = redis::cmd("EXISTS")
            .arg("hung:lease:submitter:x")
            .query(&mut c)
            .ok()?;
        (n == 1 && leased).then_some(())
    })
    .await;

    primary.pause();
    let started = std::time::Instant::now();
    let writing = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            // the first write waits on the hung primary; the writer gives up on it, and a
            // later one finds the promoted replica
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match store.apply(grant(2)) {
                    Ok(()) => return Ok(()),
                    Err(e) if std::time::Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
    };
    let written = tokio::time::timeout(Duration::from_secs(90), writing)
        .await
        .expect("the writer is not waiting on the hung primary still")
        .unwrap();
    assert_eq!(written.map_err(|e| e.to_string()), Ok(()));
    let took = started.elapsed();
    assert_eq!(
        role(&replica.url()).as_deref(),
        Some(&b"master"[..]),
        "the replica was promoted"
    );
    // the coordination leaves the hung primary too: the holder renews with its token
    let renewed = tokio::time::timeout(
        Duration::from_secs(60),
        crate::support::eventually("the lease renewed", Duration::from_secs(60), async || {
            coordinator.lease("submitter:x", "a", 60_000).await.ok()
        }),
    )
    .await
    .expect("the coordination is not waiting on the hung primary still");
    assert_eq!(renewed, token);
    primary.resume();
    crate::support::eventually(
        "the old primary is made a replica",
        Duration::from_secs(60),
        async || (role(&primary.url()).as_deref() == Some(&b"slave"[..])).then_some(()),
    )
    .await;
    store.apply(grant(3)).unwrap();
    assert_eq!(
        one_chain(store.as_ref()),
        vec!["w0-1", "w0-2", "w0-3"],
        "one log, each entry once (written after {took:?})"
    );
    for n in [1, 2, 3] {
        assert!(
            store.access(&numbered(n)).unwrap().is_some(),
            "{n} is there"
        );
    }
}

/// A verdict is written once, whichever replica gives it: two stores on one Redis each write a
/// verdict for the same accesses at once (in groups with other writes); for each access one is
/// written and the other refused (`Guarded::Reviewed`) with nothing of its batch written, and
/// the other writes of its group go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_cannot_both_give_an_access_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let stores: Vec<std::sync::Arc<dyn Store>> = (0..2)
        .map(|_| {
            std::sync::Arc::new(RedisStore::open(&server.url(), "review:").unwrap())
                as std::sync::Arc<dyn Store>
        })
        .collect();
    let attempt_verdict = |access: u64, by: usize, attempt: u32| Batch {
        verdicts: vec![Verdict {
            access_id: numbered(access),
            reviewer: p(by as u8 + 1),
            verdict: breakglass::domain::VerdictKind::Appropriate,
            note_sealed: String::new(),
            note_hash: format!("{by}"),
            signature: String::new(),
            at: access,
            revoked: false,
            attempt,
        }],
        replay: vec![(format!("verdict:{access}:{by}:{attempt}"), 1)],
        audit: vec![numbered_event(by, access)],
        ..Batch::default()
    };
    let verdict = |access: u64, by: usize| attempt_verdict(access, by, 0);
    let mut writes = Vec::new();
    for access in 0..50u64 {
        for (by, store) in stores.iter().enumerate() {
            writes.push(breakglass::store::apply_started(store, verdict(access, by)));
            // and a write of the same group without a verdict
            writes.push(breakglass::store::apply_started(
                store,
                Batch {
                    audit: vec![numbered_event(by + 2, access)],
                    ..Batch::default()
                },
            ));
        }
    }
    let results = futures_util::future::join_all(writes).await;
    let (mut written, mut refused) = (0, 0);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(()) => written += 1,
            Err(StoreError::Guarded(Guarded::Reviewed)) if i % 2 == 0 => refused += 1,
            Err(e) => panic!("write {i}: {e}"),
        }
    }
    assert_eq!((written, refused), (150, 50));
    let store = &stores[0];
    assert_eq!(store.verdicts().unwrap().len(), 50);
    // the refused batches wrote nothing: for each access, the verdict kept is the one whose
    // replay row and audit event were written, and the other's are not there
    let replays: std::collections::HashSet<String> = store
        .replays()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(replays.len(), 50);
    for v in store.verdicts().unwrap() {
        let access = u64::from_be_bytes(v.access_id.0[..8].try_into().unwrap());
        assert!(replays.contains(&format!("verdict:{access}:{}:0", v.note_hash)));
    }
    assert_eq!(one_chain(store.as_ref()).len(), 150);

    // an access's next attempt (its verdict refused on chain): one of the two again, and it is
    // the access's verdict from then on
    let again = futures_util::future::join_all(
        stores
            .iter()
            .enumerate()
            .map(|(by, store)| breakglass::store::apply_started(store, attempt_verdict(0, by, 1))),
    )
    .await;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1, "{again:?}");
    let latest = store.verdict(&numbered(0)).unwrap().unwrap();
    assert_eq!(latest.attempt, 1);
    assert_eq!(latest.operation(), format!("review:{}:1", numbered(0)));
    assert_eq!(store.verdicts().unwrap().len(), 50);
    assert!(store
        .verdicts()
        .unwrap()
        .iter()
        .any(|v| v.access_id == numbered(0) && v.attempt == 1));
}

/// Reviewers' challenges and sessions keep the same rules in one process and across replicas
/// on Redis: a challenge spent once (wherever), kept spent until it expires, and a session that
/// idles out unused and ends at its maximum however much it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_challenges_and_sessions_keep_their_rules_in_memory_and_on_redis() {
    use breakglass::coordination::{Coordinator, OpenSession};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let local = std::sync::Arc::new(Coordinator::local(10));
    let shared = (
        std::sync::Arc::new(Coordinator::redis(&server.url(), "si:", 10).unwrap()),
        std::sync::Arc::new(Coordinator::redis(&server.url(), "si:", 10).unwrap()),
    );
    for (a, b) in [(local.clone(), local), shared] {
        let later = crate::support::now() + 60;
        assert!(a.spend_challenge("c1", later).await.unwrap());
        assert!(!b.spend_challenge("c1", later).await.unwrap(), "spent once");
        assert!(!a.spend_challenge("c1", later).await.unwrap(), "spent once");
        assert!(b.spend_challenge("c2", later).await.unwrap());
        // a spent challenge is kept until it could not be used anyway, then let go: in one
        // process at its expiry, on Redis ten minutes after (replicas' clocks differ)
        let soon = crate::support::now() + 1;
        assert!(a.spend_challenge("c3", soon).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        assert!(!b.spend_challenge("c1", later).await.unwrap(), "still kept");
        if std::sync::Arc::ptr_eq(&a, &b) {
            assert!(a.spend_challenge("c3", soon).await.unwrap(), "let go");
        } else {
            let mut redis = server.connection();
            let ttl: i64 = redis::cmd("TTL")
                .arg("si:challenge:c3")
                .query(&mut redis)
                .unwrap();
            assert!(
                (541..=601).contains(&ttl),
                "kept ten minutes past its expiry: {ttl}"
            );
            let ttl: i64 = redis::cmd("TTL")
                .arg("si:challenge:c1")
                .query(&mut redis)
                .unwrap();
            assert!(
                (640..=661).contains(&ttl),
                "kept ten minutes past its expiry: {ttl}"
            );
        }

        let opened = |created_ms| OpenSession {
            reviewer: "ST1REVIEWER".into(),
            csrf: "f00d".into(),
            created_ms,
        };
        // idles out after 1 s unused, each use keeping it open
        a.open_session("s1", &opened(breakglass::clock::now_ms()), 1_000, 60_000)
            .await
            .unwrap();
        for _ in 0..4 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let s = b.touch_session("s1", 1_000, 60_000).await.unwrap();
            assert_eq!(s.map(|s| s.csrf), Some("f00d".to_string()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        assert_eq!(b.touch_session("s1", 1_000, 60_000).await.unwrap(), None);
        // ends 1.5 s after it opened, used or not
        a.open_session("s2", &opened(breakglass::clock::now_ms()), 60_000, 1_500)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(b
            .touch_session("s2", 60_000, 1_500)
            .await
            .unwrap()
            .is_some());
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        assert_eq!(a.touch_session("s2", 60_000, 1_500).await.unwrap(), None);
        // ended on one, ended on both
        a.open_session("s3", &opened(breakglass::clock::now_ms()), 60_000, 60_000)
            .await
            .unwrap();
        b.end_session("s3").await.unwrap();
        assert_eq!(a.touch_session("s3", 60_000, 60_000).await.unwrap(), None);
    }
}

/// On Redis the index by access is a sorted set, each access's trail read by its prefix
/// (`ZRANGEBYLEX`) rather than by walking every entry's row; a store an earlier version wrote
/// (the index a hash) has it moved into the sorted set at the first read, the trails unchanged.
#[test]
fn redis_reads_an_access_trail_by_its_prefix_and_moves_an_older_index() {
    use breakglass::audit::{Event, Record};
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    let event = |access: u64, state: &str| Record {
        at: access,
        event: Event::Notice {
            access: numbered(access),
            patient: PatientId([1; 32]),
            state: state.into(),
        },
    };
    let trail = |store: &RedisStore, access: u64| -> Vec<u64> {
        store
            .audit_of(&numbered(access))
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    };
    {
        let store = RedisStore::open(&server.url(), "trail:").unwrap();
        // 1,500 accesses, two entries each, interleaved: more than a step of the read
        for round in ["pending", "sent"] {
            for access in 0..1_500 {
                store
                    .apply(Batch {
                        audit: vec![event(access, round)],
                        ..Batch::default()
                    })
                    .unwrap();
            }
        }
        assert_eq!(trail(&store, 7), vec![8, 1_508]);
        assert_eq!(trail(&store, 1_499), vec![1_500, 3_000]);
        assert!(trail(&store, 2_000).is_empty());
    }
    let kind: String = redis::cmd("TYPE")
        .arg("trail:sorted:audit_by_access")
        .query(&mut conn)
        .unwrap();
    assert_eq!(kind, "zset");
    let members: u64 = redis::cmd("ZCARD")
        .arg("trail:sorted:audit_by_access")
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, 3_000);
    // as an earlier version kept it: a hash of the same keys, empty values
    let keys: Vec<String> = redis::cmd("ZRANGE")
        .arg("trail:sorted:audit_by_access")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let mut old = redis::pipe();
    old.del("trail:sorted:audit_by_access").ignore();
    for k in &keys {
        old.hset("trail:audit_by_access", k, "").ignore();
    }
    let _: () = old.query(&mut conn).unwrap();
    let store = RedisStore::open(&server.url(), "trail:").unwrap();
    assert_eq!(trail(&store, 7), vec![8, 1_508]);
    assert_eq!(trail(&store, 1_499), vec![1_500, 3_000]);
    let gone: bool = redis::cmd("EXISTS")
        .arg("trail:audit_by_access")
        .query(&mut conn)
        .unwrap();
    assert!(!gone, "the hash is moved, then deleted");
    // and written to the sorted set from then on
    store
        .apply(Batch {
            audit: vec![event(7, "failed")],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(trail(&store, 7), vec![8, 1_508, 3_001]);
}

/// Notices closed with nobody to tell, for patients 1 and 2 (and one sent, one open): what
/// `uncontacted_notices` reads, in access order.
fn nobody_to_tell(store: &dyn Store) {
    let notice = |i: u64, patient: u8, state: NoticeState| Notice {
        state,
        ..Notice::new(numbered(i), PatientId([patient; 32]), i)
    };
    store
        .apply(Batch {
            notices: vec![
                notice(1, 1, NoticeState::NoContact { at: 1 }),
                notice(2, 2, NoticeState::NoContact { at: 2 }),
                notice(3, 2, NoticeState::Sent { at: 3 }),
                notice(4, 3, NoticeState::Pending),
            ],
            ..Batch::default()
        })
        .unwrap();
}

fn uncontacted(store: &dyn Store) -> Vec<AccessId> {
    let mut ids: Vec<AccessId> = store
        .uncontacted()
        .unwrap()
        .into_iter()
        .map(|(id, patient)| {
            assert_eq!(patient, PatientId([id.0[7]; 32]), "notice i: patient i");
            id
        })
        .collect();
    ids.sort_by_key(|id| id.0);
    ids
}

/// The notices with nobody to tell are kept in an index by every write of them, and leave it
/// when opened again (a contact imported since: `Notice::reopened`), so that the notifier
/// finds those a new contact reaches without reading every notice; which patients have a
/// contact is read at once.
fn uncontacted_conformance(store: &dyn Store) {
    nobody_to_tell(store);
    assert_eq!(uncontacted(store), vec![numbered(1), numbered(2)]);
    store
        .apply(Batch {
            contacts: vec![(PatientId([2; 32]), Some(b"sealed".to_vec()))],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(
        store
            .have_contacts(&[PatientId([1; 32]), PatientId([2; 32]), PatientId([9; 32])])
            .unwrap(),
        vec![false, true, false]
    );
    let mut opened = store.notice(&numbered(2)).unwrap().unwrap();
    opened.state = NoticeState::Pending;
    opened.reopened = Some(10);
    opened.next_at = 10;
    store
        .apply(Batch {
            notices: vec![opened.clone()],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(uncontacted(store), vec![numbered(1)]);
    assert!(store
        .open_notices()
        .unwrap()
        .iter()
        .any(|n| n.access_id == numbered(2)));
    // sent since: not back in the index
    opened.state = NoticeState::Sent { at: 11 };
    store
        .apply(Batch {
            notices: vec![opened],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(uncontacted(store), vec![numbered(1)]);
}

#[test]
fn redb_keeps_an_index_of_notices_with_nobody_to_tell_and_builds_it_for_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        uncontacted_conformance(&store);
    }
    // as a store of the version before it left it: no index, no mark (the open indexes built)
    {
        let table = |name| redb::TableDefinition::<&str, &[u8]>::new(name);
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(table("uncontacted_notices")).unwrap();
        tx.open_table(table("meta"))
            .unwrap()
            .remove("uncontacted_indexed")
            .unwrap();
        tx.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(uncontacted(&store), vec![numbered(1)]);
}

#[test]
fn redis_keeps_an_index_of_notices_with_nobody_to_tell_and_builds_it_for_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::RedisServer::start(dir.path());
    let mut conn = server.connection();
    {
        let store = RedisStore::open(&server.url(), "u:").unwrap();
        uncontacted_conformance(&store);
    }
    // as a store of the version before it left it: no index (each process builds what the
    // indexes lack at its first read of one)
    let _: () = redis::cmd("DEL")
        .arg("u:uncontacted_notices")
        .query(&mut conn)
        .unwrap();
    let store = RedisStore::open(&server.url(), "u:").unwrap();
    assert_eq!(uncontacted(&store), vec![numbered(1)]);
    // and names only it: the notice opened again since is no row at all (not an empty one)
    assert_eq!(store.uncontacted_count().unwrap(), 1);
}

//! `breakglass audit verify`: walks the whole log from its first entry, checks every link and
//! every entry's hash, then every anchor our service put on chain (`get-anchor`) against the
//! entry it covers, and names the first entry that does not match; then the log's index by
//! access (what a reviewer's trail of an access is read through) against the entries the log
//! holds: a row missing (an entry hidden from its access's trail) or naming an entry that is not
//! about its access is named; and every grant's access record against what its entry says was
//! granted (`AccessRecord::digest`, in grants logged since 2026-12-06, night): one altered or
//! removed in the store since is named. (The command opens the
//! store as the service would at start, applying what its journal holds.)
//!
//! It must not: write to the log.

use serde::Serialize;

use crate::chain::contracts::{self, Contracts};
use crate::chain::rpc::NodeClient;
use crate::stacks::{Address, Value};
use crate::store::{Store, StoreError};

use super::{follows, Broken, Head};

/// An anchor read from the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub index: u64,
    pub count: u64,
    pub head: String,
    pub block: u64,
}

/// A log that holds together, and what it was checked against.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub entries: u64,
    pub head: String,
    /// Our anchors on chain, each matched against the entry it covers.
    pub anchors_checked: usize,
    /// The latest of them.
    pub latest_anchor: Option<Anchor>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] Broken),
    #[error("entry {seq}: anchor {index} on chain (block {block}) names head {anchored} for {seq} entries, but the log's entry {seq} hashes to {found}")]
    Anchor {
        seq: u64,
        index: u64,
        block: u64,
        anchored: String,
        found: String,
    },
    #[error("anchor {index} on chain covers {count} entries, but the log holds only {entries}: entries were removed")]
    Truncated {
        index: u64,
        count: u64,
        entries: u64,
    },
    #[error("the store's head (entry {stored}) is not the log's last entry ({walked})")]
    Head { stored: u64, walked: u64 },
    #[error("entry {seq}: it is in the log past its head (entry {head}), which was set back: the entries after the head are hidden from every reader")]
    PastHead { seq: u64, head: u64 },
    #[error("entry {seq}: it is about access {access}, but the index of the log by access does not name it there (a reviewer's trail of that access does not show it)")]
    Unindexed { seq: u64, access: String },
    #[error("entry {seq}: the index of the log by access names it for access {access}, which it is not about (it would show in that access's trail)")]
    Misindexed { seq: u64, access: String },
    #[error("entry {seq}: access {access}'s record in the store is not what this grant logged ({why}): it was altered since")]
    AccessAltered {
        seq: u64,
        access: String,
        why: &'static str,
    },
    #[error("the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the node: {0}")]
    Node(#[from] crate::chain::rpc::RpcError),
}

impl VerifyError {
    /// The first entry that does not match, when one is to blame.
    pub fn entry(&self) -> Option<u64> {
        match self {
            VerifyError::Broken(
                Broken::Altered { seq }
                | Broken::Unlinked { seq, .. }
                | Broken::Gap { seq, .. }
                | Broken::Unreadable { seq, .. },
            ) => Some(*seq),
            VerifyError::Anchor { seq, .. }
            | VerifyError::PastHead { seq, .. }
            | VerifyError::Unindexed { seq, .. }
            | VerifyError::Misindexed { seq, .. }
            | VerifyError::AccessAltered { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// Every anchor `responder` put on chain, oldest first.
pub async fn anchors(
    rpc: &NodeClient,
    contracts: &Contracts,
    responder: &Address,
) -> Result<Vec<Anchor>, crate::chain::rpc::RpcError> {
    let contract = contracts.access_control();
    let sender = &contracts.address;
    let n = rpc
        .call_read(&contract, "get-anchor-count", &[], sender)
        .await?;
    let n = contracts::uint(Some(&n)).unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..n {
        let a = rpc
            .call_read(&contract, "get-anchor", &[Value::UInt(i)], sender)
            .await?;
        let Value::Some(t) = a else { continue };
        let Some(m) = t.as_tuple() else { continue };
        if contracts::principal(m.get("responder")).as_ref() != Some(responder) {
            continue;
        }
        let num = |k: &str| contracts::uint(m.get(k)).and_then(|v| u64::try_from(v).ok());
        let (Some(count), Some(block), Some(head)) =
            (num("count"), num("block"), contracts::buff32(m.get("head")))
        else {
            continue;
        };
        out.push(Anchor {
            index: i as u64,
            count,
            head: hex::encode(head),
            block,
        });
    }
    Ok(out)
}

/// An entry whose bytes are not an entry at all (not JSON, say) is named as the entry that
/// breaks the log, by its number, as an altered one is: not reported as the store failing. A
/// page's read fails at its first such entry (entries are read in order): its number, if it
/// is one past `walked`.
fn unreadable(e: &StoreError, walked: u64) -> Option<(u64, String)> {
    match e {
        StoreError::Corrupt(key, why) => key
            .parse::<u64>()
            .ok()
            .filter(|seq| *seq > walked)
            .map(|seq| (seq, why.clone())),
        _ => None,
    }
}

/// The access an entry of a kind this version does not read names (its `access` field), if
/// it names one.
fn named_access(entry: &super::Entry) -> Option<crate::domain::AccessId> {
    #[derive(serde::Deserialize)]
    struct Named {
        access: String,
    }
    serde_json::from_str::<Named>(entry.event.get())
        .ok()?
        .access
        .parse()
        .ok()
}

/// The first of `grants` (entry, access, the digest it logged) whose access record is not
/// what it logged: altered, unreadable, or gone. Their records are read together; if one of
/// them does not read, one at a time, so that it is named.
fn records_altered(
    store: &dyn Store,
    grants: &[(u64, crate::domain::AccessId, String)],
) -> Result<Option<VerifyError>, StoreError> {
    if grants.is_empty() {
        return Ok(None);
    }
    let ids: Vec<_> = grants.iter().map(|(_, a, _)| *a).collect();
    let stored: std::collections::HashMap<_, Option<String>> = match store.accesses(&ids) {
        Ok(records) => records
            .into_iter()
            .map(|a| (a.id, Some(a.digest())))
            .collect(),
        Err(StoreError::Corrupt(..)) => {
            let mut each = std::collections::HashMap::new();
            for id in &ids {
                match store.access(id) {
                    Ok(Some(a)) => {
                        each.insert(*id, Some(a.digest()));
                    }
                    Ok(None) => {}
                    Err(StoreError::Corrupt(..)) => {
                        each.insert(*id, None);
                    }
                    Err(e) => return Err(e),
                }
            }
            each
        }
        Err(e) => return Err(e),
    };
    Ok(grants.iter().find_map(|(seq, access, digest)| {
        let (seq, access) = (*seq, *access);
        let why = match stored.get(&access) {
            None => "no record",
            Some(None) => "its record does not read",
            Some(Some(d)) if d != digest => "a field differs",
            Some(Some(_)) => return None,
        };
        Some(VerifyError::AccessAltered {
            seq,
            access: access.to_string(),
            why,
        })
    }))
}

/// Walks the log in `store` up to its head as read first (entries appended meanwhile, by a
/// service still running, are left for the next check), and checks it against `anchors`
/// (oldest first, read before).
pub fn check(store: &dyn Store, anchors: &[Anchor]) -> Result<Report, VerifyError> {
    const PAGE: usize = 1024;
    let stored = store.audit_head()?.unwrap_or_default();
    let mut head = Head::default();
    let mut next_anchor = 0;
    let mut checked = 0;
    // (access, entry) of every entry about an access, as the index by access must name them
    let mut indexed = std::collections::BTreeSet::new();
    // the first grant whose access record is not as it logged, and the grants walked whose
    // records are still to check (a page's at a time, read together)
    let mut altered: Option<VerifyError> = None;
    let mut grants = Vec::new();
    'walk: loop {
        // an unreadable entry is named once the entries before it are checked (one of them,
        // altered, may be the first to break the log)
        let (page, last_page, broken) = match store.audit_entries(head.seq + 1, PAGE) {
            Ok(page) => {
                let last = page.len() < PAGE;
                (page, last, None)
            }
            Err(e) => match unreadable(&e, head.seq) {
                Some((seq, why)) => {
                    let before =
                        store.audit_entries(head.seq + 1, (seq - head.seq - 1) as usize)?;
                    (before, true, Some(Broken::Unreadable { seq, why }))
                }
                None => return Err(e.into()),
            },
        };
        if altered.is_none() {
            altered = records_altered(store, &std::mem::take(&mut grants))?;
        }
        grants.clear();
        for entry in &page {
            if head.seq == stored.seq {
                break 'walk;
            }
            head = follows(&head, entry)?;
            match entry.parsed() {
                Ok(super::Event::Grant {
                    access,
                    record: Some(digest),
                    ..
                }) => {
                    indexed.insert((access, entry.seq));
                    grants.push((entry.seq, access, digest));
                }
                Ok(event) => {
                    if let Some(access) = event.access() {
                        indexed.insert((access, entry.seq));
                    }
                }
                // a kind this version does not read (a later version's): indexed under the
                // access it names, if it names one, as that version indexes it
                Err(_) => {
                    if let Some(access) = named_access(entry) {
                        indexed.insert((access, entry.seq));
                    }
                }
            }
            while let Some(a) = anchors.get(next_anchor) {
                if a.count > head.seq {
                    break;
                }
                if a.count == head.seq {
                    let found = hex::encode(head.hash);
                    if found != a.head {
                        return Err(VerifyError::Anchor {
                            seq: head.seq,
                            index: a.index,
                            block: a.block,
                            anchored: a.head.clone(),
                            found,
                        });
                    }
                    checked += 1;
                }
                next_anchor += 1;
            }
        }
        if let Some(broken) = broken {
            // (an entry past the head read first is left for the next check)
            if head.seq < stored.seq {
                return Err(broken.into());
            }
            break;
        }
        if last_page || head.seq == stored.seq {
            break;
        }
    }
    if let Some(a) = anchors.iter().find(|a| a.count > head.seq) {
        return Err(VerifyError::Truncated {
            index: a.index,
            count: a.count,
            entries: head.seq,
        });
    }
    if stored != head {
        return Err(VerifyError::Head {
            stored: stored.seq,
            walked: head.seq,
        });
    }
    // every reader stops at the head: an entry past it (the head set back, or its row
    // removed) hides the rest of the log. One a running service wrote since the head was read
    // moved the head with it, in the same write
    if store.audit_row_exists(head.seq + 1)?
        && store.audit_head()?.unwrap_or_default().seq == stored.seq
    {
        return Err(VerifyError::PastHead {
            seq: head.seq + 1,
            head: head.seq,
        });
    }
    // (rows for entries past the head read first are a running service's, left for later)
    let index: std::collections::BTreeSet<_> = store
        .audit_index()?
        .into_iter()
        .filter(|(_, seq)| *seq <= head.seq)
        .collect();
    let missing = indexed.difference(&index).map(|(a, seq)| (*seq, a));
    let extra = index.difference(&indexed).map(|(a, seq)| (*seq, a));
    let misindexed = missing
        .clone()
        .chain(extra.clone())
        .min_by_key(|(seq, _)| *seq)
        .map(|(seq, access)| {
            let access = access.to_string();
            if missing.clone().any(|(s, _)| s == seq) {
                VerifyError::Unindexed { seq, access }
            } else {
                VerifyError::Misindexed { seq, access }
            }
        });
    if altered.is_none() {
        altered = records_altered(store, &grants)?;
    }
    // the first entry that does not match, whether its index row or its grant's record
    if let Some(e) = [misindexed, altered]
        .into_iter()
        .flatten()
        .min_by_key(VerifyError::entry)
    {
        return Err(e);
    }
    Ok(Report {
        entries: head.seq,
        head: hex::encode(head.hash),
        anchors_checked: checked,
        latest_anchor: anchors.last().cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, Record};
    use crate::store::{Batch, RedbStore};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn entries(n: usize) -> Batch {
        Batch {
            audit: (0..n)
                .map(|_| {
                    Record::now(Event::SignIn {
                        reviewer: None,
                        outcome: "unknown-signer".into(),
                    })
                })
                .collect(),
            ..Batch::default()
        }
    }

    /// Every grant's access record is checked against the digest its entry carries: one edited
    /// in the store since (its rules, say, to make a grant look allowed) or removed is named
    /// by its grant's entry; a key rotation's new sealing of the reason is not an alteration.
    /// Before, access records lay outside the hash chain: a record edited in place went unseen.
    #[test]
    fn an_access_record_altered_since_its_grant_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let granted = |a: &crate::store::AccessRecord| Batch {
            audit: vec![Record::now(a.granted())],
            accesses: vec![a.clone()],
            ..Batch::default()
        };
        let rewritten = |a: crate::store::AccessRecord| Batch {
            accesses: vec![a],
            ..Batch::default()
        };
        let a = crate::dev::test_access(1, vec![crate::domain::DataType::Allergies]);
        let b = crate::dev::test_access(2, vec![crate::domain::DataType::Allergies]);
        store.apply(entries(3)).unwrap();
        store.apply(granted(&a)).unwrap();
        store.apply(granted(&b)).unwrap();
        assert!(check(&store, &[]).is_ok());
        // the reason sealed again (a data key's rotation): the same grant
        let mut resealed = a.clone();
        resealed.reason_sealed = "ab".repeat(40);
        store.apply(rewritten(resealed)).unwrap();
        assert!(check(&store, &[]).is_ok());
        // the rules edited in place
        let mut edited = b.clone();
        edited.rules = vec!["on-call-nurse-allergies".into()];
        store.apply(rewritten(edited)).unwrap();
        match check(&store, &[]) {
            Err(e @ VerifyError::AccessAltered { seq: 5, why, .. }) => {
                assert_eq!(why, "a field differs");
                assert_eq!(e.entry(), Some(5));
            }
            other => panic!("{other:?}"),
        }
        store.apply(rewritten(b)).unwrap();
        assert!(check(&store, &[]).is_ok());
    }

    /// An access record that does not read at all (overwritten in Redis) is named by its
    /// grant, not reported as the store failing (which left the rest of the log unchecked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_access_record_that_does_not_read_is_named_by_its_grant() {
        let redis = crate::dev::test_redis().await;
        let store = crate::store::RedisStore::open(redis.url.as_str(), "v:").unwrap();
        let a = crate::dev::test_access(1, vec![crate::domain::DataType::Allergies]);
        let b = crate::dev::test_access(2, vec![crate::domain::DataType::Allergies]);
        for x in [&a, &b] {
            let batch = Batch {
                audit: vec![Record::now(x.granted())],
                accesses: vec![x.clone()],
                ..Batch::default()
            };
            store.apply(batch).unwrap();
        }
        assert!(check(&store, &[]).is_ok());
        let mut raw = redis.connection();
        let () = redis::cmd("HSET")
            .arg("v:accesses")
            .arg(b.id.to_string())
            .arg("{not a record")
            .query(&mut raw)
            .unwrap();
        match check(&store, &[]) {
            Err(VerifyError::AccessAltered { seq: 2, why, .. }) => {
                assert_eq!(why, "its record does not read")
            }
            other => panic!("{other:?}"),
        }
        // and one removed
        let () = redis::cmd("HDEL")
            .arg("v:accesses")
            .arg(b.id.to_string())
            .query(&mut raw)
            .unwrap();
        match check(&store, &[]) {
            Err(VerifyError::AccessAltered { seq: 2, why, .. }) => assert_eq!(why, "no record"),
            other => panic!("{other:?}"),
        }
    }

    /// An entry of a kind this version does not read (a later version's) is indexed under the
    /// access it names, as that version indexes it: its index row is not reported as naming an
    /// entry not about its access.
    #[test]
    fn an_entry_of_a_later_kind_is_indexed_under_the_access_it_names() {
        let entry = crate::audit::test_entry;
        let id = "ab".repeat(32);
        assert_eq!(
            named_access(&entry(&format!(r#"{{"kind":"later","access":"{id}"}}"#))),
            Some(id.parse().unwrap())
        );
        assert_eq!(named_access(&entry(r#"{"kind":"later"}"#)), None);
        assert_eq!(
            named_access(&entry(r#"{"kind":"later","access":"x"}"#)),
            None
        );
    }

    /// A log checked while the service goes on writing to it (on Redis, `audit verify` reads
    /// the live store): the walk stops at the head it read first and the log verifies. Before,
    /// it walked on past that head and compared with the head read after, which had moved.
    #[test]
    fn a_log_still_written_to_verifies_up_to_the_head_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        for _ in 0..6 {
            store.apply(entries(500)).unwrap();
        }
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (store, writing) = (store.clone(), writing.clone());
            std::thread::spawn(move || {
                let mut written = 0;
                while writing.load(Ordering::SeqCst) {
                    store.apply(entries(1)).unwrap();
                    written += 1;
                }
                written
            })
        };
        // the writer under way
        let start = store.audit_head().unwrap().unwrap().seq;
        while store.audit_head().unwrap().unwrap().seq < start + 3 {
            std::thread::yield_now();
        }
        let mut reports = Vec::new();
        for _ in 0..5 {
            reports.push(check(store.as_ref(), &[]));
        }
        writing.store(false, Ordering::SeqCst);
        let written = writer.join().unwrap();
        assert!(written > 3);
        for r in reports {
            let r = r.expect("the log verifies up to the head read first");
            assert!(r.entries >= 3_000);
        }
        // and whole once the writing stopped
        let head = store.audit_head().unwrap().unwrap();
        assert_eq!(check(store.as_ref(), &[]).unwrap().entries, head.seq);
    }

    /// The index of the log by access (what a reviewer's trail is read through) is checked
    /// against the log: a row dropped (an entry hidden from its access's trail) or added
    /// (another entry shown in an access's trail) is named by its entry. Before, the walk
    /// checked the log alone, and the trails read through the index were trusted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_row_dropped_or_added_is_named() {
        let redis = crate::dev::test_redis().await;
        let store = crate::store::RedisStore::open(redis.url.as_str(), "ix:").unwrap();
        let (a, b) = (crate::access::access_id(1), crate::access::access_id(2));
        let verdict = |access| {
            Record::now(Event::Verdict {
                access,
                reviewer: "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap(),
                verdict: "appropriate".into(),
                note_hash: String::new(),
                patient: crate::domain::PatientId([1; 32]),
                revoked: false,
            })
        };
        let mut batch = entries(1);
        batch.audit.extend([verdict(a), verdict(b), verdict(a)]);
        store.apply(batch).unwrap();
        assert_eq!(check(&store, &[]).unwrap().entries, 4);

        let mut raw = redis.connection();
        let row = |access: &crate::domain::AccessId, seq: u64| format!("{access}:{seq:020}");
        // (kept as a sorted set, each row a member of score 0)
        let add = |raw: &mut redis::Connection, member: String| {
            redis::cmd("ZADD")
                .arg("ix:sorted:audit_by_access")
                .arg(0)
                .arg(member)
                .query::<()>(raw)
                .unwrap()
        };
        let remove = |raw: &mut redis::Connection, member: String| {
            redis::cmd("ZREM")
                .arg("ix:sorted:audit_by_access")
                .arg(member)
                .query::<()>(raw)
                .unwrap()
        };
        // entry 4 (about a) dropped from the index
        remove(&mut raw, row(&a, 4));
        assert_eq!(
            store.audit_of(&a).unwrap().len(),
            1,
            "hidden from a's trail"
        );
        match check(&store, &[]) {
            Err(VerifyError::Unindexed { seq: 4, access }) => assert_eq!(access, a.to_string()),
            other => panic!("{other:?}"),
        }
        add(&mut raw, row(&a, 4));
        assert_eq!(check(&store, &[]).unwrap().entries, 4);
        // entry 3 (about b) named for a too, and the sign-in (about none) for b
        add(&mut raw, row(&a, 3));
        match check(&store, &[]) {
            Err(e @ VerifyError::Misindexed { seq: 3, .. }) => assert_eq!(e.entry(), Some(3)),
            other => panic!("{other:?}"),
        }
        remove(&mut raw, row(&a, 3));
        add(&mut raw, row(&b, 1));
        assert!(matches!(
            check(&store, &[]),
            Err(VerifyError::Misindexed { seq: 1, .. })
        ));
    }

    /// Every reader stops at the log's head: a head set back (or its row removed) hid the
    /// entries after it from the export, the trails and this check, which said the log was
    /// whole. Entries past the head are named.
    #[tokio::test]
    async fn entries_past_a_head_set_back_are_named() {
        let redis = crate::dev::test_redis().await;
        let store = crate::store::RedisStore::open(redis.url.as_str(), "ph:").unwrap();
        store.apply(entries(4)).unwrap();
        assert_eq!(check(&store, &[]).unwrap().entries, 4);
        let second = store.audit_entries(2, 1).unwrap().remove(0);
        let mut raw = redis.connection();
        let head = |raw: &mut redis::Connection, head: Option<Head>| {
            let cmd = match head {
                Some(h) => {
                    let mut c = redis::cmd("HSET");
                    c.arg("ph:meta")
                        .arg("audit_head")
                        .arg(serde_json::to_string(&h).unwrap());
                    c
                }
                None => {
                    let mut c = redis::cmd("HDEL");
                    c.arg("ph:meta").arg("audit_head");
                    c
                }
            };
            cmd.query::<()>(raw).unwrap();
        };
        head(
            &mut raw,
            Some(Head {
                seq: 2,
                hash: second.hash,
            }),
        );
        let hidden = check(&store, &[]).unwrap_err();
        assert!(
            matches!(hidden, VerifyError::PastHead { seq: 3, head: 2 }),
            "{hidden}"
        );
        assert_eq!(hidden.entry(), Some(3));
        head(&mut raw, None);
        assert!(matches!(
            check(&store, &[]),
            Err(VerifyError::PastHead { seq: 1, head: 0 })
        ));
    }
}

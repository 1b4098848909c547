//! Anchoring the audit log on chain: every `every_entries` new entries, or every `every` when
//! fewer came, the log's head (the last entry's hash and how many entries it covers) becomes
//! the operation `anchor:<head>` (`anchor-audit`), sent by the chain submitter like any other.
//! One anchor is open at a time, so they reach the chain in order (the contract refuses an
//! anchor covering fewer entries than the same responder's last: each responder anchors its
//! own log). One the chain refused covers nothing: its head is anchored again, under an id of
//! its own (`anchor:<head>:<n>`), and each refusal since the last anchor taken doubles the wait
//! before the next (from `every`, up to a day), whatever its head. With
//! replicas, one anchors at a time: it holds a lease (`LEASE`), reads what the store holds when
//! it takes it, and its writes are fenced, so a replica paused past its lease makes no anchor.
//!
//! It must not: write the log (the store does) or send transactions (the submitter does).

use std::sync::Arc;
use std::time::Duration;

use crate::chain::contracts::ACCESS_CONTROL;
use crate::chain::submitter;
use crate::coordination::{Coordinator, Turn};
use crate::stacks::Value;
use crate::store::{Batch, Guard, Store, StoreError, Submission};

/// What every anchor operation's id begins with (then the head's hash).
pub const ANCHOR_PREFIX: &str = "anchor:";

/// The lease replicas take to anchor: one per store.
const LEASE: &str = "audit-anchor";

use super::Head;

/// When to anchor.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every_entries: u64,
    pub every: Duration,
}

/// The operation that anchors `head`.
pub fn operation(head: &Head) -> Submission {
    submitter::operation(
        &format!("{ANCHOR_PREFIX}{}", hex::encode(head.hash)),
        ACCESS_CONTROL,
        "anchor-audit",
        &[
            Value::Buffer(head.hash.to_vec()).to_hex(),
            Value::UInt(head.seq.into()).to_hex(),
        ],
    )
}

/// How many entries an anchor operation covers (its second argument).
pub fn covers(s: &Submission) -> Option<u64> {
    if s.function != "anchor-audit" {
        return None;
    }
    match Value::from_hex(s.args.get(1)?).ok()? {
        Value::UInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// Whether the chain refused anchor operation `s` (mined with an error).
fn failed(s: &Submission) -> bool {
    matches!(s.state, crate::store::SubmissionState::Failed { .. })
}

/// What the anchoring task remembers between ticks.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Entries covered by the last anchor made (open or not).
    covered: u64,
    /// When it was made (Unix ms).
    made_at: u64,
    /// The open anchor's id, if one is open.
    open: Option<String>,
    /// How many anchors the chain refused since the last it took (whatever their heads): the
    /// next waits `every` doubled as many times less one, up to a day.
    refused: u32,
}

impl Anchors {
    /// What the store says: the last anchor operation made, and whether it is still open. A
    /// log never anchored counts its time from now (the first anchor comes after
    /// `every_entries` entries or `every`, as later ones do).
    pub fn read(store: &dyn Store) -> Result<Anchors, StoreError> {
        let mut a = Anchors {
            made_at: crate::clock::now_ms(),
            ..Anchors::default()
        };
        // the anchors alone (not every operation ever made: one a grant), by their ids' prefix
        let (mut newest_refused, mut anchored) = (None, false);
        let mut refusals = Vec::new();
        for s in store.submissions_prefixed(ANCHOR_PREFIX)? {
            if let Some(n) = covers(&s) {
                // one the chain refused covers nothing: its head is anchored again (timed
                // from it, below)
                if failed(&s) {
                    newest_refused = newest_refused.max(Some(s.created_at_ms));
                    refusals.push(s.created_at_ms);
                    continue;
                }
                if n >= a.covered {
                    a.covered = n;
                    a.made_at = s.created_at_ms;
                    anchored = true;
                }
                if s.is_open() {
                    a.open = Some(s.id.clone());
                }
            }
        }
        // (a refusal newer than the last anchor made: the next is timed from it, as the
        // process that saw it would have)
        if let Some(at) = newest_refused.filter(|at| !anchored || *at > a.made_at) {
            a.made_at = at;
        }
        let since = if anchored { a.made_at } else { 0 };
        a.refused = refusals
            .iter()
            .filter(|at| !anchored || **at >= since)
            .count() as u32;
        Ok(a)
    }

    /// The anchor to make now, if one is due: none while one is open.
    pub fn due(
        &mut self,
        store: &dyn Store,
        schedule: Schedule,
        now_ms: u64,
    ) -> Result<Option<Submission>, StoreError> {
        if let Some(id) = &self.open {
            match store.submission(id)? {
                Some(s) if s.is_open() => return Ok(None),
                Some(s) if failed(&s) => {
                    // refused on chain: what it covered is to be anchored again, `every` after
                    // it was made (not at once: what refused it may hold a while)
                    let made_at = self.made_at;
                    *self = Anchors::read(store)?;
                    self.made_at = made_at;
                }
                _ => {
                    self.open = None;
                    self.refused = 0;
                }
            }
        }
        let Some(head) = store.audit_head()? else {
            return Ok(None);
        };
        let new = head.seq.saturating_sub(self.covered);
        let waited = now_ms.saturating_sub(self.made_at) >= schedule.every.as_millis() as u64;
        if new == 0 || (new < schedule.every_entries && !waited) {
            return Ok(None);
        }
        if self.refused > 0 {
            // refused since the last anchor taken: again once `every` has passed, doubling
            // with each refusal up to a day, whatever the head (what refused it, a responder
            // not authorized say, may hold a while, and each attempt costs a fee)
            let backoff = schedule
                .every
                .saturating_mul(1 << (self.refused - 1).min(16))
                .min(Duration::from_secs(24 * 3600).max(schedule.every));
            if now_ms.saturating_sub(self.made_at) < backoff.as_millis() as u64 {
                return Ok(None);
            }
        }
        let mut op = operation(&head);
        // this head's anchors so far, each by its id (`anchor:<head>`, then `anchor:<head>:<n>`
        // for each made again after the chain refused the one before): read one by one, not
        // by a scan of every operation ever made
        let mut n = 1;
        while let Some(made) = store.submission(&submitter::numbered(&op.id, n))? {
            if !failed(&made) {
                // this head was anchored already, or is being (the same head is anchored once)
                self.covered = head.seq;
                return Ok(None);
            }
            n += 1;
        }
        op.id = submitter::numbered(&op.id, n);
        self.covered = head.seq;
        self.made_at = now_ms;
        self.open = Some(op.id.clone());
        Ok(Some(op))
    }
}

/// The anchoring of one replica: its lease's holder name, and what it read of the anchors
/// under the lease token it last held (read again when it takes the lease anew).
pub struct Anchorer {
    store: Arc<dyn Store>,
    coordination: Arc<Coordinator>,
    holder: String,
    lease_ms: u64,
    schedule: Schedule,
    /// The lease token it read `Anchors` under (`0` without replicas), and what it read.
    read: Option<(u64, Anchors)>,
}

impl Anchorer {
    pub fn new(
        store: Arc<dyn Store>,
        coordination: Arc<Coordinator>,
        lease_ms: u64,
        schedule: Schedule,
    ) -> Anchorer {
        Anchorer {
            store,
            coordination,
            holder: crate::coordination::replica_id(),
            lease_ms,
            schedule,
            read: None,
        }
    }

    /// One look: the anchor it made, if one was due (with replicas, only while it holds the
    /// lease, its write fenced with it).
    pub async fn step(&mut self, now_ms: u64) -> Result<Option<String>, StoreError> {
        let fence = match self
            .coordination
            .turn(LEASE, &self.holder, self.lease_ms)
            .await?
        {
            Turn::Mine(fence) => fence,
            Turn::Theirs => {
                // another replica anchors; read again when this one takes over
                self.read = None;
                return Ok(None);
            }
        };
        let token = fence.as_ref().map_or(0, |f| f.token);
        let anchors = match &mut self.read {
            Some((t, a)) if *t == token => a,
            _ => {
                let a = Anchors::read(self.store.as_ref())?;
                &mut self.read.insert((token, a)).1
            }
        };
        let Some(op) = anchors.due(self.store.as_ref(), self.schedule, now_ms)? else {
            return Ok(None);
        };
        let id = op.id.clone();
        let batch = Batch {
            submissions: vec![op],
            // made once: a write of it whose answer was lost, landed and read since, is not
            // put back as pending by this one (its transaction would be signed twice)
            guard: fence.map(|fence| Guard {
                fence: Some(fence),
                absent: vec![id.clone()],
                ..Guard::default()
            }),
            ..Batch::default()
        };
        if let Err(e) = crate::store::apply_async(&self.store, batch).await {
            // what the store holds is read again
            self.read = None;
            return Err(e);
        }
        tracing::info!(operation = %id, "audit head to be anchored on chain");
        Ok(Some(id))
    }

    /// Makes the anchors that are due until `shutdown`, looking every `tick`.
    pub async fn run(mut self, tick: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.step(crate::clock::now_ms()).await {
                tracing::warn!(error = %e, "audit anchoring could not read or write the store");
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, Record};
    use crate::store::{RedisStore, SubmissionState};

    /// The anchors are read by their ids' prefix, not among every operation ever made (one a
    /// grant, read whole at each start and takeover): an operation of another kind that does
    /// not decode does not stop the anchoring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_anchors_are_read_by_their_ids_alone() {
        let redis = crate::dev::test_redis().await;
        let store = RedisStore::open(redis.url.as_str(), "b:").unwrap();
        let anchor = operation(&Head {
            seq: 7,
            hash: [3; 32],
        });
        store
            .apply(Batch {
                submissions: vec![anchor.clone()],
                ..Batch::default()
            })
            .unwrap();
        let mut raw = redis.connection();
        redis::cmd("HSET")
            .arg("b:submissions")
            .arg("record:garbled")
            .arg(b"\x00not an operation".as_slice())
            .query::<()>(&mut raw)
            .unwrap();
        assert!(store.submissions().is_err(), "the garbled row is there");
        let a = Anchors::read(&store).unwrap();
        assert_eq!((a.covered, a.open), (7, Some(anchor.id)));
    }

    async fn entry(store: &Arc<dyn Store>) {
        let batch = Batch {
            audit: vec![Record::now(Event::SignIn {
                reviewer: None,
                outcome: "unknown-signer".into(),
            })],
            ..Batch::default()
        };
        crate::store::apply_async(store, batch).await.unwrap();
    }

    /// The anchor `id` mined (the submitter's part).
    async fn mined(store: &Arc<dyn Store>, id: &str) {
        let mut op = store.submission(id).unwrap().unwrap();
        op.state = SubmissionState::Confirmed {
            txid: None,
            height: 1,
            result: "(ok true)".into(),
            nonce: None,
            raw: None,
        };
        let batch = Batch {
            submissions: vec![op],
            ..Batch::default()
        };
        crate::store::apply_async(store, batch).await.unwrap();
    }

    /// Anchor `op`, made at `at` (ms), refused on chain under `nonce`.
    fn refuse(store: &Arc<dyn Store>, op: &Submission, at: u64, nonce: u64) {
        let mut refused = op.clone();
        refused.created_at_ms = at;
        refused.state = SubmissionState::Failed {
            txid: format!("{nonce:064x}"),
            height: 2 + nonce,
            result: "(err u202)".into(),
            nonce: Some(nonce),
            raw: None,
        };
        store
            .apply(Batch {
                submissions: vec![refused],
                ..Batch::default()
            })
            .unwrap();
    }

    /// An anchor the chain refused covers nothing: its head is anchored again (under an id of
    /// its own), `every` after it was made. Before, its id stood for the head for good and its
    /// entries counted as covered: the log's tail stayed unanchored while no entry came.
    #[tokio::test]
    async fn a_refused_anchor_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let schedule = Schedule {
            every_entries: 1,
            every: Duration::from_secs(600),
        };
        entry(&store).await;
        let mut anchors = Anchors::read(store.as_ref()).unwrap();
        let first = anchors
            .due(store.as_ref(), schedule, 1_000)
            .unwrap()
            .unwrap();
        // (the times of this test's clock)
        refuse(&store, &first, 1_000, 0);
        // not at once; `every` after the refused one was made, under an id of its own
        assert_eq!(anchors.due(store.as_ref(), schedule, 2_000).unwrap(), None);
        let again = anchors
            .due(store.as_ref(), schedule, 1_000 + 600_000)
            .unwrap()
            .expect("made again");
        assert_eq!(again.id, format!("{}:2", first.id));
        assert_eq!((covers(&again), again.args.clone()), (Some(1), first.args));
        // a process started since reads the refused one as covering nothing
        store
            .apply(Batch {
                submissions: vec![again.clone()],
                ..Batch::default()
            })
            .unwrap();
        let read = Anchors::read(store.as_ref()).unwrap();
        assert_eq!((read.covered, read.open), (1, Some(again.id.clone())));
        // refused again: the next waits twice as long (each attempt costs a fee), timed from
        // the refused one's making (as a process started since reads it)
        refuse(&store, &again, 1_000 + 600_000, 1);
        let mut later = Anchors::read(store.as_ref()).unwrap();
        assert_eq!((later.covered, later.made_at), (0, 1_000 + 600_000));
        let at = 1_000 + 600_000;
        assert_eq!(
            later.due(store.as_ref(), schedule, at + 600_000).unwrap(),
            None
        );
        // whatever the head: a new entry does not make one sooner (each would be a fee)
        entry(&store).await;
        assert_eq!(
            later.due(store.as_ref(), schedule, at + 600_000).unwrap(),
            None
        );
        let third = later
            .due(store.as_ref(), schedule, at + 1_200_000)
            .unwrap()
            .expect("made again after twice the time");
        assert_eq!(covers(&third), Some(2), "the head as it is now");
    }

    /// Replicas on one Redis: one anchors at a time (the other makes none while the first
    /// holds the lease, where before each made its own anchor of the same log); once the
    /// first stops, the other takes over after the lease and anchors on from what the store
    /// holds; the first, back, makes none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_replicas_one_anchors_at_a_time_and_another_takes_over_after_its_lease() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> = Arc::new(RedisStore::open(redis.url.as_str(), "a:").unwrap());
        let coordination = Arc::new(Coordinator::redis(redis.url.as_str(), "a:", 60).unwrap());
        let lease_ms = 1_000;
        let replica = |holder: &str| Anchorer {
            store: Arc::new(RedisStore::open(redis.url.as_str(), "a:").unwrap()),
            coordination: coordination.clone(),
            holder: holder.into(),
            lease_ms,
            schedule: Schedule {
                every_entries: 1,
                every: Duration::from_secs(3_600),
            },
            read: None,
        };
        let (mut a, mut b) = (replica("a"), replica("b"));
        let now = crate::clock::now_ms;

        // both look before anything is logged (each remembers what it read)
        assert_eq!(a.step(now()).await.unwrap(), None);
        assert_eq!(b.step(now()).await.unwrap(), None);
        entry(&store).await;
        let first = a.step(now()).await.unwrap().expect("a anchors");
        // while a's anchor is open, the log grows: b makes no anchor of its own
        entry(&store).await;
        assert_eq!(b.step(now()).await.unwrap(), None, "a holds the lease");
        mined(&store, &first).await;
        assert_eq!(b.step(now()).await.unwrap(), None, "a holds the lease");
        let second = a.step(now()).await.unwrap().expect("a anchors on");

        // a stops; its anchor is mined and the log grows
        mined(&store, &second).await;
        entry(&store).await;
        entry(&store).await;
        tokio::time::sleep(Duration::from_millis(lease_ms + 300)).await;
        let third = b.step(now()).await.unwrap().expect("b took over");
        assert_eq!(a.step(now()).await.unwrap(), None, "b holds the lease");

        let anchors: Vec<u64> = store
            .submissions()
            .unwrap()
            .iter()
            .filter_map(covers)
            .collect();
        let head = store.audit_head().unwrap().unwrap();
        assert_eq!(anchors.len(), 3, "{anchors:?}");
        let covered: Vec<u64> = [&first, &second, &third]
            .iter()
            .map(|id| covers(&store.submission(id).unwrap().unwrap()).unwrap())
            .collect();
        assert_eq!(covered, vec![1, 2, head.seq]);
        assert_eq!(head.seq, 4);
    }
}

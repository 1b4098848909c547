//! Which processes of the service run, as the store knows them, so that the log names the end
//! of each: one that stops logs its `stop`; one that goes without (it crashed, was killed, its
//! host was lost) has its end logged by another, a `stop` with `lost`.
//!
//! Each process has a row (`Batch::replicas`: when it started, when it last said it runs, its
//! build), written with its start's entry, renewed every third of a lease (`data.lease_ms`), and
//! taken out with its stop's entry, once nothing else runs in it. Each replica reads the rows
//! with each renewal; a row it has read unchanged for `LOST_AFTER_LEASES` leases, every read
//! answered meanwhile (by its own monotonic clock: the rows' times are their writers' clocks,
//! and a store away for a while refuses every renewal), is a process gone: the replica that
//! holds the lease `LEASE` (one at a time) logs its end and takes its row out in one write,
//! fenced (a replica paused past its lease writes nothing), so each end is logged once. A
//! replica paused that long (a frozen VM, cut off from the store) is logged as lost; its next
//! renewal finds its row taken out and writes it back with a `resume` entry (its later stop is
//! logged too). Each process looks once
//! at its start, before it serves: one process on its own store (the embedded one, whose file
//! only it can open) logs the processes before it that left a row as lost then, at once (no
//! other runs).
//!
//! It must not: log a process that runs as lost (its row renewed within the time), nor one
//! twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Event, Record};
use crate::coordination::{Coordinator, Turn};
use crate::store::{
    apply_async, Batch, Guard, Guarded, ReplicaRow, ReplicaSeen, Store, StoreError,
};

/// The lease replicas take to log the ends of those gone: one per store.
const LEASE: &str = "replicas";

/// After how many leases (`data.lease_ms`) unseen a replica is taken for gone.
pub const LOST_AFTER_LEASES: u64 = 3;

/// This process's row and what it does with the others'.
pub struct Replicas {
    store: Arc<dyn Store>,
    coordination: Arc<Coordinator>,
    /// This process (`coordination::replica_id`).
    me: String,
    version: String,
    started_ms: u64,
    lease_ms: u64,
    observed: Mutex<Observed>,
}

impl Replicas {
    pub fn new(
        store: Arc<dyn Store>,
        coordination: Arc<Coordinator>,
        version: &str,
        lease_ms: u64,
    ) -> Replicas {
        Replicas {
            store,
            coordination,
            me: crate::coordination::replica_id(),
            version: version.to_string(),
            started_ms: crate::clock::now_ms(),
            lease_ms,
            observed: Mutex::default(),
        }
    }

    /// This process's row as of `now_ms`, to write (with its start's entry, then every
    /// `beat_every`).
    pub fn seen(&self, now_ms: u64) -> (String, Option<ReplicaSeen>) {
        (
            self.me.clone(),
            Some(ReplicaSeen {
                started_ms: self.started_ms,
                seen_ms: now_ms,
                version: self.version.clone(),
            }),
        )
    }

    /// This process's row taken out (with its stop's entry).
    pub fn gone(&self) -> (String, Option<ReplicaSeen>) {
        (self.me.clone(), None)
    }

    /// How often this process's row is renewed: a third of a lease.
    pub fn beat_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).max(1))
    }

    /// After how long unseen another process is taken for gone: with replicas,
    /// `LOST_AFTER_LEASES` leases; one process on its own store, at once (no other runs).
    fn lost_after_ms(&self) -> u64 {
        if self.coordination.is_shared() {
            LOST_AFTER_LEASES * self.lease_ms
        } else {
            0
        }
    }

    /// Logs the end of each process gone (a `stop` with `lost`) and takes its row out, if
    /// this replica holds the lease: how many. A row is gone when this replica has read it
    /// unchanged for `lost_after_ms`, its reads all answered meanwhile (`Observed`): a store
    /// away for a while, or a replica's clock off, is no loss. Each end is one write, fenced and
    /// guarded on the row as read: not written if the row was renewed meanwhile, or taken out
    /// by another (a lease that changed hands between its read and its write).
    pub async fn log_lost(&self) -> Result<usize, StoreError> {
        let store = self.store.clone();
        let read_from = Instant::now();
        // the store's reads block: off the runtime's threads
        let read = tokio::task::spawn_blocking(move || store.replicas())
            .await
            .map_err(|e| StoreError::Backend(format!("the replicas' rows: {e}")))
            .and_then(|r| r);
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                lock(&self.observed).forget();
                return Err(e);
            }
        };
        let lost_after = Duration::from_millis(self.lost_after_ms());
        let mut lost =
            lock(&self.observed).unchanged(&self.me, rows, (read_from, Instant::now()), lost_after);
        if lost.is_empty() {
            return Ok(0);
        }
        let fence = match self
            .coordination
            .turn(LEASE, &self.me, self.lease_ms)
            .await?
        {
            Turn::Mine(fence) => fence,
            // another replica logs them
            Turn::Theirs => return Ok(0),
        };
        lost.sort_by_key(|row| row.seen.seen_ms);
        let mut logged = 0;
        for ReplicaRow { id, seen, bytes } in lost {
            let batch = Batch {
                // (when it was last seen, by its clock: no later than this entry, by this one's)
                audit: vec![Record::now(Event::Stop {
                    replica: id.clone(),
                    lost: Some(seen.seen_ms.min(crate::clock::now_ms())),
                })],
                replicas: vec![(id.clone(), None)],
                guard: Some(Guard {
                    fence: fence.clone(),
                    // its bytes as read: a row of another version compared whole
                    replica: Some((id.clone(), Some(bytes))),
                    ..Guard::default()
                }),
                ..Batch::default()
            };
            match apply_async(&self.store, batch).await {
                Ok(()) => {
                    tracing::warn!(replica = %id, "a process of the service gone without a stop: its end is logged");
                    logged += 1;
                }
                // renewed meanwhile, or its end logged by another
                Err(StoreError::Guarded(Guarded::Changed)) => {}
                // the lease went to another replica meanwhile: it looks
                Err(StoreError::Guarded(Guarded::Fenced)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(logged)
    }

    /// Renews this process's row and logs the ends of those gone, every `beat_every`, until
    /// `stop` (sent once nothing else runs in the process: then the stop's write takes the row
    /// out, and the row is not renewed after it). While its own renewal is refused (the store
    /// away, or taking no writes), it takes no other for gone: theirs are refused too. Each
    /// renewal is written over the row as this process last wrote it (`written`: the one its
    /// start's entry wrote, at first): one found taken out (another logged this process's
    /// end: it was paused, or cut off from the store, that long) is written back with a
    /// `resume` entry (`renewed`).
    pub async fn run(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut written: Option<ReplicaSeen>,
    ) {
        loop {
            match self.renewed(written.as_ref()).await {
                Ok(row) => {
                    written = Some(row);
                    if let Err(e) = self.log_lost().await {
                        tracing::warn!(error = %e, "the ends of processes gone could not be logged");
                    }
                }
                Err(e) => {
                    lock(&self.observed).forget();
                    tracing::warn!(error = %e, "this process's row among the replicas could not be renewed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.beat_every()) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

impl Replicas {
    /// This process's row written anew: over `before` (as this process last wrote it) if
    /// given, else whatever the store holds. Found taken out, its end logged by another, it is
    /// written back with a `resume` entry, only while still absent; found otherwise changed
    /// (a renewal whose answer was lost, landed after all), written over as it is.
    async fn renewed(&self, before: Option<&ReplicaSeen>) -> Result<ReplicaSeen, StoreError> {
        let (id, row) = self.seen(crate::clock::now_ms());
        let seen = row.clone().expect("a row this process runs with");
        let guarded = |held: Option<Vec<u8>>| {
            Some(Guard {
                replica: Some((id.clone(), held)),
                ..Guard::default()
            })
        };
        let beat = Batch {
            replicas: vec![(id.clone(), row.clone())],
            guard: match before {
                Some(b) => guarded(Some(b.stored()?)),
                None => None,
            },
            ..Batch::default()
        };
        match apply_async(&self.store, beat).await {
            Err(StoreError::Guarded(Guarded::Changed)) => {}
            done => return done.map(|()| seen),
        }
        // (no later than this entry, by this process's clock, which may have been set back)
        let since = before.map_or(0, |b| b.seen_ms).min(crate::clock::now_ms());
        let back = Batch {
            audit: vec![Record::now(Event::Resume {
                replica: id.clone(),
                since,
            })],
            replicas: vec![(id.clone(), row.clone())],
            guard: guarded(None),
            ..Batch::default()
        };
        match apply_async(&self.store, back).await {
            Ok(()) => {
                tracing::warn!(replica = %id, since, "this process was logged as gone (paused, or cut off from the store, too long): it runs again, logged");
                Ok(seen)
            }
            // not taken out, but not as this process wrote it: a renewal whose answer was lost
            Err(StoreError::Guarded(Guarded::Changed)) => {
                let again = Batch {
                    replicas: vec![(id, row)],
                    ..Batch::default()
                };
                apply_async(&self.store, again).await.map(|()| seen)
            }
            Err(e) => Err(e),
        }
    }
}

/// The other replicas' rows as this one read them: each one's last bytes and since when (by
/// this process's monotonic clock) it has read them.
#[derive(Default)]
struct Observed(HashMap<String, (Vec<u8>, Instant)>);

impl Observed {
    /// The rows of `rows` but `me`'s that this replica has read unchanged for `lost_after` or
    /// longer; each other row remembered from now if it is new or changed, and the rows gone
    /// from the store forgotten. `read` is when the read was sent and when it was answered: a
    /// row new or changed counts from the answer, and how long one was unchanged until the
    /// read was sent (the time the read took is not counted).
    fn unchanged(
        &mut self,
        me: &str,
        rows: Vec<ReplicaRow>,
        (sent, answered): (Instant, Instant),
        lost_after: Duration,
    ) -> Vec<ReplicaRow> {
        self.0.retain(|id, _| rows.iter().any(|r| &r.id == id));
        rows.into_iter()
            .filter(|row| {
                if row.id == me {
                    return false;
                }
                match self.0.get(&row.id) {
                    Some((bytes, since)) if *bytes == row.bytes => {
                        sent.saturating_duration_since(*since) >= lost_after
                    }
                    _ => {
                        self.0.insert(row.id.clone(), (row.bytes.clone(), answered));
                        lost_after.is_zero()
                    }
                }
            })
            .collect()
    }

    /// A read failed, or this replica's own renewal: what was read before says nothing of the
    /// time since (every renewal may have been refused meanwhile too).
    fn forget(&mut self) {
        self.0.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbStore, RedisStore};

    /// The replicas' rows as the store holds them, by id.
    fn ids(store: &dyn Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .replicas()
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect();
        ids.sort();
        ids
    }

    /// Every event the log holds, oldest first.
    fn events(store: &dyn Store) -> Vec<Event> {
        let head = store.audit_head().unwrap().map_or(0, |h| h.seq);
        store
            .audit_entries(1, head as usize)
            .unwrap()
            .iter()
            .map(|e| e.parsed().unwrap())
            .collect()
    }

    /// The ends the log holds: (replica, when it was last seen).
    fn ends(store: &dyn Store) -> Vec<(String, Option<u64>)> {
        events(store)
            .into_iter()
            .filter_map(|e| match e {
                Event::Stop { replica, lost } => Some((replica, lost)),
                _ => None,
            })
            .collect()
    }

    fn row(id: &str, seen_ms: u64) -> (String, Option<ReplicaSeen>) {
        (
            id.to_string(),
            Some(ReplicaSeen {
                started_ms: 1,
                seen_ms,
                version: "0.1.0+test".into(),
            }),
        )
    }

    /// Writes `rows` (replicas' rows) as they are.
    async fn write(store: &Arc<dyn Store>, rows: Vec<(String, Option<ReplicaSeen>)>) {
        let batch = Batch {
            replicas: rows,
            ..Batch::default()
        };
        apply_async(store, batch).await.unwrap()
    }

    /// `row` as `Store::replicas` reads it back.
    fn read_as((id, seen): (String, Option<ReplicaSeen>)) -> ReplicaRow {
        let seen = seen.unwrap();
        ReplicaRow {
            id,
            bytes: serde_json::to_vec(&seen).unwrap(),
            seen,
        }
    }

    /// With replicas on one Redis, a row read unchanged for three leases is logged as lost
    /// once, whichever replicas look at once, and taken out; one renewed meanwhile is not. Each
    /// looker is this process here, named apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_gone_without_a_stop_is_logged_once_by_one_of_the_others() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> = Arc::new(RedisStore::open(redis.url.as_str(), "r:").unwrap());
        // gone after 3 × 1 s unchanged
        let lease_ms = 1_000;
        let looking: Vec<Arc<Replicas>> = ["a", "b", "c"]
            .into_iter()
            .map(|me| {
                let coordination =
                    Arc::new(Coordinator::redis(redis.url.as_str(), "r:", 10).unwrap());
                Arc::new(Replicas {
                    me: me.into(),
                    ..Replicas::new(store.clone(), coordination, "0.1.0+test", lease_ms)
                })
            })
            .collect();
        let write = async |rows| write(&store, rows).await;
        let look = async || -> usize {
            futures_util::future::join_all(looking.iter().map(|r| r.log_lost()))
                .await
                .into_iter()
                .map(Result::unwrap)
                .sum()
        };
        let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));
        // rows whose times are long past (their writers' clocks behind, say): not gone until
        // read unchanged for three leases
        let t = crate::clock::now_ms() - 60_000;
        write(vec![row("gone", t), row("renewed", t)]).await;
        assert_eq!(look().await, 0, "first read: not gone yet");
        sleep(1_500).await;
        write(vec![row("renewed", t + 1)]).await;
        assert_eq!(look().await, 0);
        sleep(1_500).await;
        assert_eq!(look().await, 1, "gone: unchanged for 3 s");
        assert_eq!(ends(store.as_ref()), [("gone".to_string(), Some(t))]);
        assert_eq!(ids(store.as_ref()), ["renewed"]);
        assert_eq!(look().await, 0, "once");
        sleep(1_700).await;
        assert_eq!(look().await, 1, "renewed no more");
        assert_eq!(
            ends(store.as_ref()),
            [
                ("gone".to_string(), Some(t)),
                ("renewed".to_string(), Some(t + 1))
            ]
        );
        assert!(ids(store.as_ref()).is_empty());
        // an end is written only over the row as it was read: not over one renewed since, nor
        // one taken out since (its end logged by the replica that held the lease before)
        write(vec![row("x", t + 5)]).await;
        for (id, (_, as_read)) in [("x", row("x", t)), ("gone", row("gone", t))] {
            let end = Batch {
                audit: vec![Record::now(Event::Stop {
                    replica: id.into(),
                    lost: Some(t),
                })],
                replicas: vec![(id.into(), None)],
                guard: Some(Guard {
                    replica: Some((id.into(), as_read.map(|r| serde_json::to_vec(&r).unwrap()))),
                    ..Guard::default()
                }),
                ..Batch::default()
            };
            assert!(matches!(
                apply_async(&store, end).await,
                Err(StoreError::Guarded(Guarded::Changed))
            ));
        }
        assert_eq!(ends(store.as_ref()).len(), 2);
        assert_eq!(ids(store.as_ref()), ["x"]);
        // a row written by a later version, with a field this one does not know (its JSON
        // fields in another order too): gone once unchanged for three leases, as any other, its
        // end written over its bytes as read
        let later = format!(
            r#"{{"version":"0.2.0+later","seen_ms":{},"zone":"b","started_ms":1}}"#,
            t + 7
        );
        let () = redis::cmd("HSET")
            .arg("r:meta")
            .arg("replica:later")
            .arg(&later)
            .query(&mut redis.connection())
            .unwrap();
        assert_eq!(ids(store.as_ref()), ["later", "x"]);
        assert_eq!(look().await, 0, "first read of the later row");
        sleep(3_200).await;
        assert_eq!(look().await, 2, "x and the later row: unchanged for 3 s");
        assert_eq!(
            ends(store.as_ref())[2..],
            [
                ("x".to_string(), Some(t + 5)),
                ("later".to_string(), Some(t + 7))
            ]
        );
        assert!(ids(store.as_ref()).is_empty());
    }

    /// A process whose end another logged (paused, or cut off from the store, past the time)
    /// writes its row back at its next renewal, with a `resume` entry, once; a renewal whose
    /// answer was lost (the row not as this process thought it left it, but there) is no
    /// resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_logged_as_gone_that_runs_again_logs_its_resume() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> = Arc::new(RedisStore::open(redis.url.as_str(), "rs:").unwrap());
        let coordination = Arc::new(Coordinator::redis(redis.url.as_str(), "rs:", 10).unwrap());
        let me = Arc::new(Replicas {
            me: "me".into(),
            ..Replicas::new(store.clone(), coordination, "0.1.0+test", 300)
        });
        let resumes = |store: &dyn Store| -> Vec<(String, u64)> {
            events(store)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Resume { replica, since } => Some((replica, since)),
                    _ => None,
                })
                .collect()
        };
        // its end logged by another, as `log_lost` writes it
        let taken_out = async |seen: &ReplicaSeen| {
            let end = Batch {
                audit: vec![Record::now(Event::Stop {
                    replica: "me".into(),
                    lost: Some(seen.seen_ms),
                })],
                replicas: vec![("me".into(), None)],
                guard: Some(Guard {
                    replica: Some(("me".into(), Some(seen.stored().unwrap()))),
                    ..Guard::default()
                }),
                ..Batch::default()
            };
            apply_async(&store, end).await
        };
        let first = me.renewed(None).await.unwrap();
        let second = me.renewed(Some(&first)).await.unwrap();
        assert!(resumes(store.as_ref()).is_empty(), "renewed as it was");
        taken_out(&second).await.unwrap();
        assert!(ids(store.as_ref()).is_empty());
        let third = me.renewed(Some(&second)).await.unwrap();
        assert_eq!(ids(store.as_ref()), ["me"], "its row back");
        assert_eq!(
            resumes(store.as_ref()),
            [("me".to_string(), second.seen_ms)],
            "since it last said it ran"
        );
        assert_eq!(
            ends(store.as_ref()),
            [("me".to_string(), Some(second.seen_ms))]
        );
        // a renewal that landed though its answer was lost: the row is not `third`, but there
        write(&store, vec![row("me", third.seen_ms + 1)]).await;
        let fourth = me.renewed(Some(&third)).await.unwrap();
        assert_eq!(resumes(store.as_ref()).len(), 1, "no resume");
        // the renewals' loop does the same
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(me.clone().run(stopped, Some(fourth)));
        // (taken out as read: a renewal between the read and the write refuses it, read again)
        while taken_out(&store.replicas().unwrap().pop().unwrap().seen)
            .await
            .is_err()
        {}
        let until = Instant::now() + Duration::from_secs(10);
        while resumes(store.as_ref()).len() < 2 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(resumes(store.as_ref()).len(), 2, "its next renewal's");
        assert_eq!(ids(store.as_ref()), ["me"]);
        stop.send(true).unwrap();
        running.await.unwrap();
    }

    /// What a replica read before a read that failed (the store away: every renewal refused
    /// meanwhile too) does not count: a row is gone only when read unchanged for the whole
    /// time, every read answered.
    #[test]
    fn a_row_is_gone_only_when_read_unchanged_for_the_whole_time() {
        let mut o = Observed::default();
        let at = Instant::now();
        let after = Duration::from_secs(30);
        let rows = || [read_as(row("me", 1)), read_as(row("other", 1))].to_vec();
        let read = |at: Instant| (at, at + Duration::from_millis(5));
        assert!(o.unchanged("me", rows(), read(at), after).is_empty());
        let just_before = at + after;
        assert!(
            o.unchanged("me", rows(), (just_before, just_before), after)
                .is_empty(),
            "counted from when the first read was answered"
        );
        let gone = o.unchanged(
            "me",
            rows(),
            read(at + after + Duration::from_millis(5)),
            after,
        );
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "other", "never this replica");
        // the store away (a read refused): from the next read on
        o.forget();
        assert!(o
            .unchanged("me", rows(), read(at + after * 2), after)
            .is_empty());
        assert_eq!(
            o.unchanged("me", rows(), read(at + after * 4), after).len(),
            1
        );
        // a row renewed counts from its new value
        let mut renewed = rows();
        renewed[1] = read_as(row("other", 2));
        assert!(o
            .unchanged("me", renewed, read(at + after * 4), after)
            .is_empty());
        // on its own store (nothing to wait for) another's row is gone at once
        let mut alone = Observed::default();
        assert_eq!(
            alone
                .unchanged("me", rows(), read(at), Duration::ZERO)
                .len(),
            1
        );
    }

    /// One process on its own store: the processes before it that left a row (killed) are
    /// logged as lost at once, its own row kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_process_before_on_the_same_store_is_logged_as_lost_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let me = Replicas::new(store.clone(), Arc::new(Coordinator::local(10)), "v", 10_000);
        let now = crate::clock::now_ms();
        apply_async(
            &store,
            Batch {
                replicas: vec![row("killed", now - 5), me.seen(now)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(me.log_lost().await.unwrap(), 1);
        assert_eq!(
            ends(store.as_ref()),
            [("killed".to_string(), Some(now - 5))]
        );
        assert_eq!(ids(store.as_ref()), [crate::coordination::replica_id()]);
        assert_eq!(me.log_lost().await.unwrap(), 0);
        // its stop takes its row out
        apply_async(
            &store,
            Batch {
                replicas: vec![me.gone()],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
        assert!(ids(store.as_ref()).is_empty());
    }
}

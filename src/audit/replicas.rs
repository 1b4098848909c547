//! Which processes of the service run, as the store knows them, so that the log names the end
//! of each: one that stops logs its `stop`; one that goes without (it crashed, was killed, its
//! host was lost) has its end logged by another, a `stop` with `lost`.
//!
//! Each process has a row (`Batch::replicas`: when it started, when it last said it runs, its
//! build), written with its start's entry, renewed every third of a lease (`data.lease_ms`), and
//! taken out with its stop's entry. A row not renewed for `LOST_AFTER_LEASES` leases is a
//! process gone: the replica that holds the lease `LEASE` (one at a time) logs its end and takes
//! its row out in one write, fenced (a replica paused past its lease writes nothing), so each
//! end is logged once. A replica paused that long (a frozen VM, say) is logged as lost, and its
//! row comes back with its next renewal (its later stop is logged too). Each process looks once
//! at its start, before it serves, then with each renewal: one process on its own store (the
//! embedded one, whose file only it can open) logs the processes before it that left a row as
//! lost at its start, at once (no other runs).
//!
//! It must not: log a process that runs as lost (its row renewed within the time), nor one
//! twice.

use std::sync::Arc;
use std::time::Duration;

use super::{Event, Record};
use crate::coordination::Coordinator;
use crate::store::{apply_async, Batch, Fence, Guard, Guarded, ReplicaSeen, Store, StoreError};

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

    /// Logs the end of each process gone by `now_ms` (a `stop` with `lost`) and takes its row
    /// out, in one write, if this replica holds the lease: how many.
    pub async fn log_lost(&self, now_ms: u64) -> Result<usize, StoreError> {
        let fence = if self.coordination.is_shared() {
            match self
                .coordination
                .lease(LEASE, &self.me, self.lease_ms)
                .await?
            {
                Some(token) => Some(Fence {
                    lease: LEASE.into(),
                    holder: self.me.clone(),
                    token,
                }),
                // another replica looks
                None => return Ok(0),
            }
        } else {
            None
        };
        let store = self.store.clone();
        // the store's reads block: off the runtime's threads
        let rows = tokio::task::spawn_blocking(move || store.replicas())
            .await
            .map_err(|e| StoreError::Backend(format!("the replicas' rows: {e}")))??;
        let lost_after = self.lost_after_ms();
        let mut lost: Vec<(String, ReplicaSeen)> = rows
            .into_iter()
            .filter(|(id, seen)| {
                *id != self.me && seen.seen_ms.saturating_add(lost_after) <= now_ms
            })
            .collect();
        if lost.is_empty() {
            return Ok(0);
        }
        lost.sort_by_key(|(_, seen)| seen.seen_ms);
        let n = lost.len();
        let batch = Batch {
            audit: lost
                .iter()
                .map(|(id, seen)| {
                    Record::now(Event::Stop {
                        replica: id.clone(),
                        lost: Some(seen.seen_ms),
                    })
                })
                .collect(),
            replicas: lost.into_iter().map(|(id, _)| (id, None)).collect(),
            guard: fence.map(|fence| Guard {
                fence: Some(fence),
                ..Guard::default()
            }),
            ..Batch::default()
        };
        match apply_async(&self.store, batch).await {
            Ok(()) => {
                tracing::warn!(
                    replicas = n,
                    "processes of the service gone without a stop: their ends are logged"
                );
                Ok(n)
            }
            // the lease went to another replica meanwhile: it looks
            Err(StoreError::Guarded(Guarded::Fenced)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Renews this process's row and logs the ends of those gone, every `beat_every`, until
    /// `shutdown` (then the stop's write takes the row out).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let beat = Batch {
                replicas: vec![self.seen(crate::clock::now_ms())],
                ..Batch::default()
            };
            if let Err(e) = apply_async(&self.store, beat).await {
                tracing::warn!(error = %e, "this process's row among the replicas could not be renewed");
            }
            if let Err(e) = self.log_lost(crate::clock::now_ms()).await {
                tracing::warn!(error = %e, "the ends of processes gone could not be logged");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.beat_every()) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
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
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// The ends the log holds: (replica, when it was last seen).
    fn ends(store: &dyn Store) -> Vec<(String, Option<u64>)> {
        let head = store.audit_head().unwrap().map_or(0, |h| h.seq);
        store
            .audit_entries(1, head as usize)
            .unwrap()
            .iter()
            .filter_map(|e| match e.parsed().unwrap() {
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

    /// With replicas on one Redis, one not seen for three leases is logged as lost once,
    /// whichever replicas look at once, and its row taken out; one seen within them is not
    /// (the replica that looks is not either: the next test). Each is this process here,
    /// named apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_gone_without_a_stop_is_logged_once_by_one_of_the_others() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> = Arc::new(RedisStore::open(redis.url.as_str(), "r:").unwrap());
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
        let now = crate::clock::now_ms();
        let rows = vec![row("gone", now - 3_001), row("paused", now - 2_500)];
        apply_async(
            &store,
            Batch {
                replicas: rows,
                ..Batch::default()
            },
        )
        .await
        .unwrap();
        let look =
            |at: u64| futures_util::future::join_all(looking.iter().map(move |r| r.log_lost(at)));
        let logged: usize = look(now).await.into_iter().map(Result::unwrap).sum();
        assert_eq!(logged, 1);
        assert_eq!(
            ends(store.as_ref()),
            [("gone".to_string(), Some(now - 3_001))]
        );
        assert_eq!(ids(store.as_ref()), ["paused"]);
        let again: usize = look(now).await.into_iter().map(Result::unwrap).sum();
        assert_eq!(again, 0, "once");
        // a looker's own row renewed, and "paused" unseen past three leases
        let later = now + 1_000;
        apply_async(
            &store,
            Batch {
                replicas: vec![looking[0].seen(later)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
        let logged: usize = look(later).await.into_iter().map(Result::unwrap).sum();
        assert_eq!(logged, 1);
        assert_eq!(
            ends(store.as_ref()),
            [
                ("gone".to_string(), Some(now - 3_001)),
                ("paused".to_string(), Some(now - 2_500))
            ]
        );
        assert_eq!(ids(store.as_ref()), ["a"]);
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
        assert_eq!(me.log_lost(now).await.unwrap(), 1);
        assert_eq!(
            ends(store.as_ref()),
            [("killed".to_string(), Some(now - 5))]
        );
        assert_eq!(ids(store.as_ref()), [crate::coordination::replica_id()]);
        assert_eq!(me.log_lost(now).await.unwrap(), 0);
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

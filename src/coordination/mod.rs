//! What replicas agree on besides the store's rows: used request nonces, per-clinician rate
//! limits, and leases (one holder at a time, each grant of a lease with a fencing token that a
//! later grant exceeds). One process on the embedded store keeps them in memory (`Local`: a
//! request's nonce and rate are taken before its write); replicas sharing a Redis server keep
//! them there (`Redis`: a request's nonce and rate are a `store::Claim` its grant's write
//! takes, atomically and in the same synced write), so a nonce used on one replica is refused
//! on every other, a clinician's rate counts across all of them, and one replica at a time
//! holds the chain submitter's lease or a notice's.
//!
//! Reviewers' spent sign-in challenges and sessions are kept the same way (in memory, or on
//! Redis with an expiry), so that a reviewer moves between replicas without signing in again.
//!
//! Replicas on Redis also agree on their keys (`agree_on_keys`, `publish_keys`: the hash
//! `replica-keys`): a replica whose current data key, token signing key or service key is not
//! the recorded one does not start.
//!
//! A lease's fencing token goes with the holder's writes (`store::Guard`): the store refuses a
//! write whose token is no longer the lease's, so a holder that was paused past its lease (and
//! replaced) cannot write, or sign and broadcast, with what it read before.
//!
//! It must not: answer "fresh" for a nonce it could not record, or grant a lease it could not
//! record (an unreachable server is an error, never a yes).

mod local;
mod redis;
mod seen;

use std::num::NonZeroU32;

pub use self::redis::RedisCoordinator;
use crate::store::{Fence, StoreError};
pub use local::Local;

pub enum Coordinator {
    Local(Local),
    Redis(RedisCoordinator),
}

impl Coordinator {
    /// In memory, for one process; `grants_per_minute` per clinician.
    pub fn local(grants_per_minute: u32) -> Coordinator {
        Coordinator::Local(Local::new(per_minute(grants_per_minute)))
    }

    /// On the Redis server at `url`, under the store's `prefix`.
    pub fn redis(
        url: impl Into<crate::store::RedisTarget>,
        prefix: &str,
        grants_per_minute: u32,
    ) -> Result<Coordinator, StoreError> {
        Ok(Coordinator::Redis(RedisCoordinator::new(
            url,
            prefix,
            per_minute(grants_per_minute),
        )?))
    }

    /// Whether other processes share it.
    pub fn is_shared(&self) -> bool {
        matches!(self, Coordinator::Redis(_))
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms`: its fencing token, or `None`
    /// while another holder has it.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.lease(name, holder, ttl_ms)),
            Coordinator::Redis(r) => r.lease(name, holder, ttl_ms).await,
        }
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms` (`lease`), as the fence that
    /// writes under it carry, which the store checks (a holder paused past its lease writes
    /// nothing): `None` while another holder has it.
    pub async fn fence(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<Fence>, StoreError> {
        Ok(self.lease(name, holder, ttl_ms).await?.map(|token| Fence {
            lease: name.to_string(),
            holder: holder.to_string(),
            token,
        }))
    }

    /// Whether `holder` may now do the work that one process at a time does under lease
    /// `name` (the anchors, the grants' follow-up, the ends of replicas gone): with replicas,
    /// only while it holds the lease (taken or renewed for `ttl_ms`), its writes fenced with
    /// it; one process alone does it unleased, unfenced.
    pub async fn turn(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Turn, StoreError> {
        if !self.is_shared() {
            return Ok(Turn::Mine(None));
        }
        Ok(match self.fence(name, holder, ttl_ms).await? {
            Some(fence) => Turn::Mine(Some(fence)),
            None => Turn::Theirs,
        })
    }

    /// Lets lease `name` go, if `holder` has it.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.release(name, holder);
                Ok(())
            }
            Coordinator::Redis(r) => r.release(name, holder).await,
        }
    }
}

/// Whether a process may do a leased piece of work now (`Coordinator::turn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// It may: its writes carry this fence (`None`: one process alone, nothing to fence).
    Mine(Option<Fence>),
    /// Another replica holds the lease.
    Theirs,
}

/// The keys a replica runs with, which every replica sharing a store must share
/// (deploy/README.md): what one seals, signs or sends, the others open, verify and continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKeys {
    /// The data keys' ids (`seal::Keyring::ids`), the current one first.
    pub data: Vec<String>,
    /// The token signing keys' ids (`token::TokenIssuer::kids`), the current one first.
    pub token: Vec<String>,
    /// The service's principal (its Stacks key's).
    pub responder: String,
}

impl ReplicaKeys {
    /// The data key's id it seals with (none: empty).
    pub fn current_data(&self) -> &str {
        current(&self.data)
    }

    /// The token signing key's id it signs with (none: empty).
    pub fn current_token(&self) -> &str {
        current(&self.token)
    }
}

/// The first of `ids` (the current key's), or empty.
fn current(ids: &[String]) -> &str {
    ids.first().map(String::as_str).unwrap_or("")
}

/// What the replicas sharing a store run with, as the first to start recorded it (and
/// `keys rotate-data` or `keys publish` since: `Coordinator::publish_keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub data: String,
    pub token: String,
    pub responder: String,
}

/// Whether `ours` can work beside replicas that run with `recorded`: an error saying what
/// differs and what to do. The current keys must be the recorded ones, not merely in the ring:
/// keys generated on a first run on a new host stay beside keys copied after, and (newer)
/// would be current; a rotation is recorded by `keys rotate-data` or `keys publish`
/// (`Coordinator::publish_keys`).
pub fn agree(ours: &ReplicaKeys, recorded: &Recorded) -> Result<(), String> {
    if ours.responder != recorded.responder {
        return Err(format!(
            "this replica's service key is {}'s, the replicas sharing its store run as {}: give every replica the same service key (BREAKGLASS_SERVICE_KEY or the same key file)",
            ours.responder, recorded.responder
        ));
    }
    data_key_agrees(&ours.data, &recorded.data)?;
    let current = ours.current_token();
    if current != recorded.token {
        return Err(format!(
            "this replica signs tokens with key {current}, the replicas sharing its store with {}: their tokens would not verify here, nor this one's there; make data.dir/keys the same as theirs (copy it over, removing token keys generated here), or, if its newer key is a rotation, record it with `breakglass keys publish` and give it to every replica",
            recorded.token
        ));
    }
    Ok(())
}

/// Whether data keys `ours` (the current one first) seal with `recorded`'s key.
fn data_key_agrees(ours: &[String], recorded: &str) -> Result<(), String> {
    let current = current(ours);
    if current == recorded {
        return Ok(());
    }
    if ours.iter().any(|k| k == recorded) {
        return Err(format!(
            "this replica seals with data key {current}, the replicas sharing its store with {recorded}: remove the data keys generated here from data.dir/keys (or BREAKGLASS_DATA_KEY), or, if its newer key is a rotation, record it with `breakglass keys publish` and give it to every replica"
        ));
    }
    Err(format!(
        "this replica has no data key {recorded} (its own: {}), which the replicas sharing its store seal with: it could not open what they sealed, nor they what it seals; make data.dir/keys the same as theirs (copy it over, removing the keys generated here) or set BREAKGLASS_DATA_KEY to theirs",
        ours.join(", ")
    ))
}

impl Coordinator {
    /// Checks this replica's keys against those the replicas sharing its store run with
    /// (`agree`); the first to start records its own. `Ok(None)`: agreed; `Ok(Some(why))`:
    /// this replica must not start. In one process, nothing to agree with.
    pub async fn agree_on_keys(&self, ours: &ReplicaKeys) -> Result<Option<String>, StoreError> {
        let Coordinator::Redis(r) = self else {
            return Ok(None);
        };
        let recorded = r.record_keys(ours).await?;
        Ok(agree(ours, &recorded).err())
    }

    /// Whether `ours` are the keys the replicas sharing this store run with (`agree`), read
    /// without recording anything: `Ok(Some(why))` when not; nothing recorded yet, or one
    /// process: nothing to agree with.
    pub async fn keys_agree(&self, ours: &ReplicaKeys) -> Result<Option<String>, StoreError> {
        let Coordinator::Redis(r) = self else {
            return Ok(None);
        };
        Ok(match r.recorded_keys().await? {
            Some(recorded) => agree(ours, &recorded).err(),
            None => None,
        })
    }

    /// Whether data keys `ours` (the current one first) are those the replicas sharing this
    /// store seal with, for a command that seals while the service is stopped: `Ok(Some(why))`
    /// when not. Nothing recorded yet, or one process: nothing to agree with.
    pub async fn agree_on_data_key(&self, ours: &[String]) -> Result<Option<String>, StoreError> {
        let Coordinator::Redis(r) = self else {
            return Ok(None);
        };
        Ok(match r.recorded_keys().await? {
            Some(recorded) => data_key_agrees(ours, &recorded.data).err(),
            None => None,
        })
    }

    /// The principal the replicas sharing this store run as, as the first to start recorded
    /// it: `None` when none has started (or one process).
    pub async fn recorded_responder(&self) -> Result<Option<String>, StoreError> {
        let Coordinator::Redis(r) = self else {
            return Ok(None);
        };
        Ok(r.recorded_keys().await?.map(|recorded| recorded.responder))
    }

    /// Records this host's current keys (`ours`) as the ones the replicas sharing this store
    /// run with: a rotation (`keys rotate-data`, `keys publish`), after which a replica
    /// started without them is refused. Only from a host that has the recorded keys and the
    /// same service key (not a host set up on its own), and only over the record as read (two
    /// rotations at once: one is refused).
    pub async fn publish_keys(&self, ours: &ReplicaKeys) -> Result<Published, StoreError> {
        let Coordinator::Redis(r) = self else {
            return Ok(Published::NothingRecorded);
        };
        let Some(recorded) = r.recorded_keys().await? else {
            return Ok(Published::NothingRecorded);
        };
        if ours.responder != recorded.responder
            || !ours.data.contains(&recorded.data)
            || !ours.token.contains(&recorded.token)
        {
            return Ok(Published::Refused(format!(
                "this host does not run with the replicas' keys (data key {}, token key {}, service {}): a rotation is recorded from a host that has them, its new keys beside them",
                recorded.data, recorded.token, recorded.responder
            )));
        }
        Ok(if r.publish_keys(&recorded, ours).await? {
            Published::Recorded
        } else {
            Published::Refused(
                "the replicas' keys were recorded again meanwhile (another rotation): run it again"
                    .into(),
            )
        })
    }
}

/// What `Coordinator::publish_keys` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Recorded: the replicas run with these keys from now on.
    Recorded,
    /// No replicas' keys to change (one process, or none recorded yet: the first replica to
    /// start records its own).
    NothingRecorded,
    /// Not recorded, and why.
    Refused(String),
}

/// A reviewer's open session as replicas share it (`review::Session`): who signed in, the
/// CSRF token of its forms, and when it opened (unix ms). Kept under the SHA-256 of its cookie's
/// token (hex), never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub reviewer: String,
    pub csrf: String,
    pub created_ms: u64,
}

/// A reviewer's session whose time ran out, taken out by `lapsed_sessions`: who, when it
/// opened and until when it was open (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapsed {
    pub reviewer: String,
    pub created_ms: u64,
    pub until_ms: u64,
}

/// A session taken out by `lapsed_sessions` (its key), and what it was, if its record was
/// still there. `sessions_ended` once its end is logged; one not ended within
/// `ENDING_LEASE_MS` is taken out again (by any replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub key: String,
    pub lapsed: Option<Lapsed>,
}

/// How long a session taken out waits for its end to be logged before it may be taken out
/// again (its taker stopped, or could not write the log).
pub const ENDING_LEASE_MS: u64 = 5 * 60 * 1000;

impl Lapsed {
    /// Why it ended: `max-age` (it reached `max_ms` after it opened) or `idle` (unused for the
    /// idle timeout).
    pub fn why(&self, max_ms: u64) -> &'static str {
        if self.until_ms >= self.created_ms.saturating_add(max_ms) {
            "max-age"
        } else {
            "idle"
        }
    }
}

/// Reviewers' spent sign-in challenges and sessions: in this process's memory (`Local`), or on
/// Redis, so that a reviewer signed in on one replica is signed in on all, and a challenge handed
/// out by one can be signed in with on another, once.
impl Coordinator {
    /// Spends sign-in challenge `nonce` (hex), good until `until` (unix s): whether it was
    /// unspent (once only, on every replica). Challenges are not kept when handed out (they
    /// carry their own proof, `review::Review::challenge`); only a spent one is, until it could
    /// no longer be used anyway.
    pub async fn spend_challenge(&self, nonce: &str, until: u64) -> Result<bool, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.spend_challenge(nonce, until)),
            Coordinator::Redis(r) => r.spend_challenge(nonce, until).await,
        }
    }

    /// Opens session `key` for at most `idle_ms` unused and `max_ms` in all.
    pub async fn open_session(
        &self,
        key: &str,
        session: &OpenSession,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.open_session(key, session);
                Ok(())
            }
            Coordinator::Redis(r) => r.open_session(key, session, idle_ms.min(max_ms)).await,
        }
    }

    /// Session `key`, if it is open, kept from idling out for `idle_ms` more (never past
    /// `max_ms` after it opened).
    pub async fn touch_session(
        &self,
        key: &str,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<Option<OpenSession>, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.touch_session(key, idle_ms, max_ms)),
            Coordinator::Redis(r) => r.touch_session(key, idle_ms, max_ms).await,
        }
    }

    /// Ends session `key`: whether it was open (or waiting to be taken out).
    pub async fn end_session(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.end_session(key)),
            Coordinator::Redis(r) => r.end_session(key).await,
        }
    }

    /// Takes out at most `limit` sessions whose time ran out by `now_ms` (unused for `idle_ms`,
    /// or open for `max_ms`), each by one replica, for their ends to be logged (then
    /// `sessions_ended`); a session taken out `ENDING_LEASE_MS` ago and not ended since comes
    /// again.
    pub async fn lapsed_sessions(
        &self,
        now_ms: u64,
        idle_ms: u64,
        max_ms: u64,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        match self {
            Coordinator::Local(l) => Ok(l.lapsed_sessions(now_ms, idle_ms, max_ms, limit)),
            Coordinator::Redis(r) => r.lapsed_sessions(now_ms, limit).await,
        }
    }

    /// The sessions that end because this process stops, taken out, each with until when it
    /// was to be open (unused for `idle_ms`, or open for `max_ms`): in memory, every one (a
    /// restart forgets them), those whose time ran out already and whose ends are not logged
    /// included; on Redis none (they go on on the other replicas, and on this one when it
    /// starts again).
    pub fn sessions_ending_with_this_process(&self, idle_ms: u64, max_ms: u64) -> Vec<Lapsed> {
        match self {
            Coordinator::Local(l) => l.take_every_session(idle_ms, max_ms),
            Coordinator::Redis(_) => Vec::new(),
        }
    }

    /// The sessions `keys`, taken out by `lapsed_sessions`, ended: their ends are logged.
    pub async fn sessions_ended(&self, keys: &[String]) -> Result<(), StoreError> {
        match self {
            Coordinator::Local(l) => {
                l.sessions_ended(keys);
                Ok(())
            }
            Coordinator::Redis(r) => r.sessions_ended(keys).await,
        }
    }
}

fn per_minute(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Who this process is among the replicas, for leases and logs: host name, process id and a
/// random part drawn once per process (`host:pid:random`). Host and pid alone do not tell two
/// replicas apart: containers given the same host name each run the service as pid 1, and a
/// lease held by one would be renewed by the other, the same fencing token in both.
pub fn replica_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let run: u32 = secp256k1::rand::random();
        format!("{host}:{}:{run:08x}", std::process::id())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::{agree, replica_id, Claimed, Coordinator, OpenSession, ReplicaKeys, Turn};

    /// Sessions whose time ran out are taken out once, with why, whichever process asks (one
    /// in memory; two on one Redis): an unused one by its idle timeout, one in use by its
    /// maximum; one in use is not, nor one signed out. A session taken out is not open, and
    /// cannot be signed out (its end is logged as its time's); one whose end was not logged
    /// comes again after `ENDING_LEASE_MS`, and once ended, never.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_whose_time_ran_out_are_taken_out_once_with_why() {
        let redis = crate::dev::test_redis().await;
        let on_redis = || Coordinator::redis(redis.url.as_str(), "s:", 10).unwrap();
        let local = Coordinator::local(10);
        let (a, b) = (on_redis(), on_redis());
        let reviewers = |claimed: &[Claimed]| {
            let mut r: Vec<(String, String, u64, u64)> = claimed
                .iter()
                .map(|c| {
                    let l = c.lapsed.clone().expect("its record");
                    (c.key.clone(), l.reviewer, l.created_ms, l.until_ms)
                })
                .collect();
            r.sort();
            r
        };
        for (first, second) in [(&local, &local), (&a, &b)] {
            let (idle, max) = (2_000, 2_500);
            let now = crate::clock::now_ms();
            let open = |who: &str, created_ms| OpenSession {
                reviewer: who.into(),
                csrf: "c".into(),
                created_ms,
            };
            // "idle" left unused; "max" used 0.6 s later (its maximum before its idle
            // timeout, then); "out" signed out
            for (key, who) in [("idle", "r1"), ("max", "r2"), ("out", "r3")] {
                first
                    .open_session(key, &open(who, now), idle, max)
                    .await
                    .unwrap();
            }
            assert!(first.end_session("out").await.unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            assert!(first
                .touch_session("max", idle, max)
                .await
                .unwrap()
                .is_some());
            assert_eq!(
                second
                    .lapsed_sessions(now + 100, idle, max, 10)
                    .await
                    .unwrap(),
                vec![],
                "none ran out yet"
            );
            let taken = second
                .lapsed_sessions(now + 3_000, idle, max, 10)
                .await
                .unwrap();
            assert_eq!(
                reviewers(&taken),
                [
                    ("idle".into(), "r1".into(), now, now + 2_000),
                    ("max".into(), "r2".into(), now, now + 2_500)
                ]
            );
            let mut why: Vec<_> = taken
                .iter()
                .map(|c| c.lapsed.as_ref().unwrap().why(max))
                .collect();
            why.sort();
            assert_eq!(why, ["idle", "max-age"]);
            assert_eq!(
                first
                    .lapsed_sessions(now + 3_000, idle, max, 10)
                    .await
                    .unwrap(),
                vec![],
                "each by one"
            );
            // taken out: not open, not signed out
            assert_eq!(first.touch_session("idle", idle, max).await.unwrap(), None);
            assert!(!first.end_session("idle").await.unwrap());
            // "max"'s end logged, "idle"'s not (its taker stopped): "idle" comes again after
            // the lease (on Redis by its own clock: the claims made older here), once
            second.sessions_ended(&["max".to_string()]).await.unwrap();
            let later = now + 3_000 + super::ENDING_LEASE_MS;
            if first.is_shared() {
                let _: () = redis::cmd("ZUNIONSTORE")
                    .arg("s:sessions-ending")
                    .arg(1)
                    .arg("s:sessions-ending")
                    .arg("WEIGHTS")
                    .arg(0)
                    .query(&mut redis.connection())
                    .unwrap();
            }
            let again = first.lapsed_sessions(later, idle, max, 10).await.unwrap();
            assert_eq!(
                reviewers(&again),
                [("idle".into(), "r1".into(), now, now + 2_000)]
            );
            first.sessions_ended(&["idle".to_string()]).await.unwrap();
            assert_eq!(
                second
                    .lapsed_sessions(later + super::ENDING_LEASE_MS, idle, max, 10)
                    .await
                    .unwrap(),
                vec![]
            );
            // one whose time ran out (opened 3 s ago), not taken out yet: not open, waiting
            // to be taken out (not dropped unseen); another signed out twice (its answer lost,
            // sent again): ended both times
            first
                .open_session("late", &open("r4", now - 3_000), idle, max)
                .await
                .unwrap();
            assert_eq!(first.touch_session("late", idle, max).await.unwrap(), None);
            first
                .open_session("twice", &open("r5", now), idle, max)
                .await
                .unwrap();
            assert!(first.end_session("twice").await.unwrap());
            if first.is_shared() {
                assert!(first.end_session("twice").await.unwrap(), "sent again");
            }
            assert_eq!(first.touch_session("twice", idle, max).await.unwrap(), None);
            let late = second
                .lapsed_sessions(crate::clock::now_ms(), idle, max, 10)
                .await
                .unwrap();
            assert_eq!(
                reviewers(&late),
                [("late".into(), "r4".into(), now - 3_000, now - 1_000)]
            );
            second.sessions_ended(&["late".to_string()]).await.unwrap();
            // a session open until later, its maximum lowered since (a restart with a smaller
            // `review.max_secs`): it ended at its new maximum, as it is taken out
            first
                .open_session("cut", &open("r6", now - 3_000), 10_000, 60_000)
                .await
                .unwrap();
            assert_eq!(
                first.touch_session("cut", 10_000, 2_000).await.unwrap(),
                None
            );
            let cut = second
                .lapsed_sessions(crate::clock::now_ms(), 10_000, 2_000, 10)
                .await
                .unwrap();
            assert_eq!(
                reviewers(&cut),
                [("cut".into(), "r6".into(), now - 3_000, now - 1_000)]
            );
            assert_eq!(cut[0].lapsed.as_ref().unwrap().why(2_000), "max-age");
            second.sessions_ended(&["cut".to_string()]).await.unwrap();
        }
        // a process that stops ends the sessions in its memory, each with until when it was
        // to be open: one whose time ran out (its end not logged yet) and one still open. On
        // Redis none: they go on
        let now = crate::clock::now_ms();
        for (key, created_ms) in [("ran-out", now - 3_000), ("open", now)] {
            let s = OpenSession {
                reviewer: key.into(),
                csrf: "c".into(),
                created_ms,
            };
            for c in [&local, &a] {
                c.open_session(key, &s, 2_000, 2_500).await.unwrap();
            }
        }
        let mut ending: Vec<_> = local
            .sessions_ending_with_this_process(2_000, 2_500)
            .into_iter()
            .map(|l| (l.reviewer, l.created_ms, l.until_ms))
            .collect();
        ending.sort();
        assert_eq!(
            ending,
            [
                ("open".into(), now, now + 2_000),
                ("ran-out".into(), now - 3_000, now - 1_000)
            ]
        );
        assert!(local
            .sessions_ending_with_this_process(2_000, 2_500)
            .is_empty());
        assert!(a.sessions_ending_with_this_process(2_000, 2_500).is_empty());
    }

    fn keys(data: &[&str], token: &[&str], responder: &str) -> ReplicaKeys {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ReplicaKeys {
            data: own(data),
            token: own(token),
            responder: responder.into(),
        }
    }

    /// Replicas on one Redis: the first to start records its keys; one with another data
    /// key, token key or service key is refused, saying which, and so is one with the recorded
    /// keys but a newer current one (generated on a first run, then the others' copied beside
    /// it) until a rotation records it: only from a host with the recorded keys, only over the
    /// record as read. After it, a replica with only the old keys is refused. Commands that
    /// seal offline are checked on the data key alone. In one process there is nothing to
    /// agree with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_on_one_store_agree_on_their_keys_or_do_not_start() {
        use super::Published;
        let redis = crate::dev::test_redis().await;
        let on_redis = || Coordinator::redis(redis.url.as_str(), "k:", 10).unwrap();
        let first = keys(&["d1"], &["t1"], "ST1RESPONDER");
        let shared = on_redis();
        assert_eq!(
            shared.agree_on_data_key(&first.data).await.unwrap(),
            None,
            "none yet"
        );
        assert_eq!(shared.keys_agree(&first).await.unwrap(), None, "none yet");
        assert_eq!(
            shared.publish_keys(&first).await.unwrap(),
            Published::NothingRecorded
        );
        let Coordinator::Redis(r) = &shared else {
            unreachable!()
        };
        assert_eq!(
            r.recorded_keys().await.unwrap(),
            None,
            "checks record nothing"
        );
        assert_eq!(on_redis().agree_on_keys(&first).await.unwrap(), None);
        assert_eq!(
            on_redis().agree_on_keys(&first).await.unwrap(),
            None,
            "again"
        );
        let rotated = keys(&["d2", "d1"], &["t2", "t1"], "ST1RESPONDER");
        for (other, names) in [
            (keys(&["d9"], &["t1"], "ST1RESPONDER"), "no data key d1"),
            (keys(&["d1"], &["t9", "t1"], "ST1RESPONDER"), "with key t9"),
            (keys(&["d1"], &["t1"], "ST2OTHER"), "run as ST1RESPONDER"),
            (rotated.clone(), "seals with data key d2"),
        ] {
            let why = on_redis().agree_on_keys(&other).await.unwrap();
            assert!(why.as_deref().is_some_and(|w| w.contains(names)), "{why:?}");
        }
        // a host set up on its own cannot record its keys for the replicas
        for foreign in [
            keys(&["d9", "d8"], &["t1"], "ST1RESPONDER"),
            keys(&["d2", "d1"], &["t9"], "ST1RESPONDER"),
            keys(&["d2", "d1"], &["t2", "t1"], "ST2OTHER"),
        ] {
            assert!(matches!(
                shared.publish_keys(&foreign).await.unwrap(),
                Published::Refused(_)
            ));
        }
        assert_eq!(
            shared.publish_keys(&rotated).await.unwrap(),
            Published::Recorded
        );
        // sent again after its answer was lost (over the record as first read): recorded
        let before = super::Recorded {
            data: "d1".into(),
            token: "t1".into(),
            responder: "ST1RESPONDER".into(),
        };
        assert!(r.publish_keys(&before, &rotated).await.unwrap());
        assert_eq!(shared.keys_agree(&rotated).await.unwrap(), None);
        assert!(shared.keys_agree(&first).await.unwrap().is_some());
        assert_eq!(on_redis().agree_on_keys(&rotated).await.unwrap(), None);
        let why = on_redis().agree_on_keys(&first).await.unwrap();
        assert!(why.is_some_and(|w| w.contains("no data key d2")));
        assert_eq!(shared.agree_on_data_key(&rotated.data).await.unwrap(), None);
        assert!(shared
            .agree_on_data_key(&first.data)
            .await
            .unwrap()
            .is_some());
        let local = Coordinator::local(10);
        assert_eq!(local.agree_on_keys(&first).await.unwrap(), None);
        assert_eq!(local.agree_on_data_key(&first.data).await.unwrap(), None);
        assert_eq!(
            local.publish_keys(&rotated).await.unwrap(),
            Published::NothingRecorded
        );
    }

    #[test]
    fn keys_agree_only_when_the_current_ones_are_the_recorded_ones() {
        let recorded = super::Recorded {
            data: "d1".into(),
            token: "t1".into(),
            responder: "ST1".into(),
        };
        assert_eq!(agree(&keys(&["d1"], &["t1"], "ST1"), &recorded), Ok(()));
        // older keys beside the recorded ones
        assert_eq!(
            agree(&keys(&["d1", "d0"], &["t1", "t0"], "ST1"), &recorded),
            Ok(())
        );
        for ours in [
            keys(&["d2", "d1"], &["t1"], "ST1"),
            keys(&["d1"], &["t2", "t1"], "ST1"),
            keys(&["d2"], &["t1"], "ST1"),
            keys(&["d1"], &["t2"], "ST1"),
            keys(&["d1"], &["t1"], "ST2"),
            keys(&[], &[], "ST1"),
        ] {
            assert!(agree(&ours, &recorded).is_err(), "{ours:?}");
        }
    }

    /// Leased work: with replicas one holder at a time does it, its writes fenced with the
    /// lease's token, and a later holder's token is greater; one process alone does it
    /// unleased (its lease stays free for any other use).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leased_work_is_one_replicas_at_a_time_its_writes_fenced() {
        let redis = crate::dev::test_redis().await;
        let shared = Coordinator::redis(redis.url.as_str(), "t:", 10).unwrap();
        let Turn::Mine(Some(first)) = shared.turn("work", "a", 300).await.unwrap() else {
            panic!("the lease is free");
        };
        assert_eq!((first.lease.as_str(), first.holder.as_str()), ("work", "a"));
        assert_eq!(shared.turn("work", "b", 300).await.unwrap(), Turn::Theirs);
        let Turn::Mine(Some(renewed)) = shared.turn("work", "a", 300).await.unwrap() else {
            panic!("its holder renews it");
        };
        assert_eq!(renewed.token, first.token, "renewed: the same token");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let Turn::Mine(Some(next)) = shared.turn("work", "b", 300).await.unwrap() else {
            panic!("the lease lapsed");
        };
        assert!(next.token > first.token);
        let local = Coordinator::local(10);
        assert_eq!(
            local.turn("work", "a", 300).await.unwrap(),
            Turn::Mine(None)
        );
        assert_eq!(
            local.turn("work", "b", 300).await.unwrap(),
            Turn::Mine(None)
        );
        assert!(
            local.fence("work", "b", 300).await.unwrap().is_some(),
            "not taken by a turn"
        );
    }

    #[test]
    fn a_replica_is_named_by_host_pid_and_a_random_part_drawn_once() {
        let id = replica_id();
        let parts: Vec<&str> = id.rsplitn(3, ':').collect();
        let [random, pid, host] = parts[..] else {
            panic!("{id} is not host:pid:random");
        };
        assert!(!host.is_empty());
        assert_eq!(pid, std::process::id().to_string());
        // two containers with the same host name, each the service as pid 1, still differ
        assert_eq!(random.len(), 8);
        assert!(u32::from_str_radix(random, 16).is_ok());
        assert_eq!(replica_id(), id, "the same for the whole process");
    }
}

//! The coordination of replicas on their shared Redis server. Leases are small Lua scripts,
//! each one round trip, over the `redis` crate's async connection manager (it reconnects by
//! itself; a command while the server is away fails at once, within its timeout, and the
//! caller sees an error). Nonces and rates are not a round trip of their own: a grant's write
//! takes them (`claim`, `store::Claim`), in the same synced write as its record.
//!
//! Keys, under the store's prefix: `nonces` (a sorted set of used `signer:nonce`, each scored
//! with when the request could no longer be fresh, and forgotten then), `rates` (a hash of each
//! clinician's theoretical arrival time of GCRA, the algorithm `governor` runs for one
//! process: one field per clinician), `lease:<name>` (a hash: holder and fencing token,
//! expiring with the lease) and `fences` (field `*`: the last token given, for any lease; never
//! expires, so tokens only grow; an earlier version kept a field per lease name, read still to
//! go beyond it); for reviewers, `challenge:<nonce>` (a spent sign-in
//! challenge, expiring ten minutes after the challenge does), `session:<sha256 of the token>` (a hash:
//! reviewer, CSRF token, when it opened, until when it is open; kept a day past that, for its
//! end to be logged), `sessions-due` (a sorted set of the open sessions' keys, each scored
//! with until when it is open: `lapsed_sessions` takes out those whose time ran out) and
//! `sessions-ending` (those taken out, scored with when, until their ends are logged:
//! `sessions_ended`);
//! `replica-keys` (a hash: the current data key's and token key's ids and the service's
//! principal the replicas run with, recorded by the first to start).

use std::num::NonZeroU32;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;

use crate::store::{must_reconnect, Claim, Primary, RedisTarget, StoreError};

/// How long a command may take before the server counts as unreachable.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// How long opening the connection may take, its retries included (`conn`).
const CONNECT_WITHIN: Duration = Duration::from_millis(3000);

/// How long after the connection could not be opened callers are refused at once (`conn`).
const REFUSED_AFTER_FAILED_CONNECT: Duration = Duration::from_secs(1);

pub struct RedisCoordinator {
    primary: Primary,
    prefix: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// When the connection last could not be opened.
    failed_connect: std::sync::Mutex<Option<std::time::Instant>>,
    per_minute: u64,
    lease: Script,
    release: Script,
    spend_challenge: Script,
    record_keys: Script,
    publish_keys: Script,
    open_session: Script,
    touch_session: Script,
    end_session: Script,
    lapsed_sessions: Script,
    sessions_ended: Script,
}

fn redis_err(e: ::redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// Takes or renews a lease: its token, or -1 while another holder has it. Tokens come from one
/// counter for every lease (`fences`' field `*`; a field per lease name, as before 2026-12-06,
/// grew by one every notice, for ever); a name an earlier version counted on its own (its
/// field, which replicas of that version still use while an upgrade rolls) is given a token
/// beyond that field's. A token is checked with its holder, by equality: nothing relies on the
/// order of two holders' tokens (an old replica's next may be lower than a new one's).
const LEASE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'holder', 'fence')
if cur[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(cur[2])
end
if not cur[1] then
  local counted = redis.call('HMGET', KEYS[2], '*', ARGV[3])
  local f = math.max(tonumber(counted[1]) or 0, tonumber(counted[2]) or 0) + 1
  redis.call('HSET', KEYS[2], '*', f)
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', f)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return f
end
return -1
";

/// Spends a sign-in challenge: OK if it was not spent yet (kept `ARGV[1]` s), else nil.
const SPEND_CHALLENGE: &str = r"
return redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
";

/// The keys the replicas run with (`KEYS[1]`, a hash): recorded as `ARGV` when there are none
/// yet; the record as it then is.
const RECORD_KEYS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'data', ARGV[1], 'token', ARGV[2], 'responder', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'data', 'token', 'responder')
";

/// The keys the replicas run with set to data key `ARGV[3]` and token key `ARGV[4]`, if they
/// are still `ARGV[1]` and `ARGV[2]` (or are those already: sent again after its answer was
/// lost): 1 if so.
const PUBLISH_KEYS: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'data', 'token')
if cur[1] == ARGV[3] and cur[2] == ARGV[4] then return 1 end
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'token', ARGV[4])
return 1
";

/// Session `KEYS[1]` opened at `ARGV[3]` (unix ms), open until `ARGV[4]` ms later, in
/// `sessions-due` (`KEYS[2]`) by then; the hash kept `ARGV[5]` ms longer, for its end to be
/// logged.
const OPEN_SESSION: &str = r"
local upto = tonumber(ARGV[3]) + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'reviewer', ARGV[1], 'csrf', ARGV[2], 'created', ARGV[3], 'until', string.format('%d', upto))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], upto, KEYS[1])
return 1
";

/// A session's fields, kept open until `ARGV[2]` ms from now (`ARGV[1]`, unix ms) but never
/// past `ARGV[3]` ms after it opened; nil if it is not open: taken out (in `sessions-ending`,
/// `KEYS[3]`), or its time ran out (left in `sessions-due`, `KEYS[2]`, for
/// `LAPSED_SESSIONS`). Its time is moved only when that gains a tenth of the idle timeout or
/// more, or reaches its maximum: a reviewer's requests are not each a synced write
/// (a session ends between nine tenths of the idle timeout and all of it after its last use). A
/// session opened by an earlier version, without `until`, joins `sessions-due` here.
const TOUCH_SESSION: &str = r"
local s = redis.call('HMGET', KEYS[1], 'reviewer', 'csrf', 'created', 'until', 'ended')
if not s[1] or s[5] or redis.call('ZSCORE', KEYS[3], KEYS[1]) then return nil end
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local cap = tonumber(s[3]) + tonumber(ARGV[3])
local last = cap
if s[4] then last = math.min(cap, tonumber(s[4])) end
if now >= last then
  redis.call('ZADD', KEYS[2], last, KEYS[1])
  return nil
end
local upto = math.min(now + idle, cap)
if s[4] then
  local was = tonumber(s[4])
  if upto == was or (upto - was < idle / 10 and upto < cap) then
    return {s[1], s[2], s[3]}
  end
end
redis.call('HSET', KEYS[1], 'until', string.format('%d', upto))
redis.call('PEXPIRE', KEYS[1], upto - now + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], upto, KEYS[1])
return {s[1], s[2], s[3]}
";

/// Ends session `KEYS[1]` (marked `ended`, kept a minute so that the same call sent again,
/// its answer lost, answers the same; out of `sessions-due`, `KEYS[2]`): 1 if it was open or
/// ended so already. One taken out already (in `sessions-ending`, `KEYS[3]`: its time ran out)
/// is left to be logged as such: 0.
const END_SESSION: &str = r"
if redis.call('ZSCORE', KEYS[3], KEYS[1]) then return 0 end
local s = redis.call('HMGET', KEYS[1], 'reviewer', 'ended')
redis.call('ZREM', KEYS[2], KEYS[1])
if not s[1] then return 0 end
if s[2] then return 1 end
redis.call('HSET', KEYS[1], 'ended', '1')
redis.call('PEXPIRE', KEYS[1], 60000)
return 1
";

/// Takes out at most `ARGV[2]` sessions whose time ran out by `ARGV[1]` (unix ms): first
/// those taken out more than `ARGV[3]` ms ago (by Redis's clock) and not ended since (their
/// taker stopped, or could not log their ends), then those of `sessions-due` (`KEYS[1]`);
/// each moved to `sessions-ending` (`KEYS[2]`), scored with Redis's time, so that one replica
/// takes it (again only after `ARGV[3]`). For each: its key, reviewer, when it opened and
/// until when it was open (its score in `sessions-due` when that is earlier than its hash
/// says: a session past a `max_secs` lowered since is scored at its new cap, the hash left as
/// it was) (`''` where its hash has none: gone, or opened by an earlier
/// version).
const LAPSED_SESSIONS: &str = r"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function take(key, upto)
  local s = redis.call('HMGET', key, 'reviewer', 'created', 'until')
  if s[1] and upto and (not s[3] or tonumber(upto) < tonumber(s[3])) then
    s[3] = string.format('%d', tonumber(upto))
    redis.call('HSET', key, 'until', s[3])
  end
  redis.call('ZREM', KEYS[1], key)
  redis.call('ZADD', KEYS[2], clock, key)
  table.insert(out, {key, s[1] or '', s[2] or '', s[3] or ''})
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', clock - tonumber(ARGV[3]), 'LIMIT', 0, limit)
for _, key in ipairs(stale) do take(key, false) end
if #stale < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit - #stale)
  for i = 1, #due, 2 do take(due[i], due[i + 1]) end
end
return out
";

/// The sessions `ARGV` (their keys), taken out and their ends logged: out of
/// `sessions-ending` (`KEYS[1]`), their hashes gone.
const SESSIONS_ENDED: &str = r"
for _, key in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('DEL', key)
end
return 1
";

const LAPSED_KEPT_MS: u64 = 24 * 3600 * 1000;

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisCoordinator {
    pub fn new(
        target: impl Into<RedisTarget>,
        prefix: &str,
        per_minute: NonZeroU32,
    ) -> Result<RedisCoordinator, StoreError> {
        Ok(RedisCoordinator {
            primary: Primary::open(&target.into()).map_err(redis_err)?,
            prefix: prefix.to_string(),
            conn: tokio::sync::Mutex::new(None),
            failed_connect: std::sync::Mutex::new(None),
            per_minute: u64::from(per_minute.get()),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            spend_challenge: Script::new(SPEND_CHALLENGE),
            record_keys: Script::new(RECORD_KEYS),
            publish_keys: Script::new(PUBLISH_KEYS),
            open_session: Script::new(OPEN_SESSION),
            touch_session: Script::new(TOUCH_SESSION),
            end_session: Script::new(END_SESSION),
            lapsed_sessions: Script::new(LAPSED_SESSIONS),
            sessions_ended: Script::new(SESSIONS_ENDED),
        })
    }

    /// The connection, opened on first use and again after it could not be, within
    /// `CONNECT_WITHIN`. For `REFUSED_AFTER_FAILED_CONNECT` after an attempt failed, callers
    /// are refused at once: each caller waiting for the attempt in hand made one of its own
    /// after it, in turn (a hung server held the last of ten reviewers' requests for a minute).
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let refused = || {
            self.failed_connect
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < REFUSED_AFTER_FAILED_CONNECT)
                .then(|| {
                    StoreError::Backend(
                        "redis: the connection could not be opened just now; tried again within a second".into(),
                    )
                })
        };
        if let Some(e) = refused() {
            return Err(e);
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // (an attempt that failed while this caller waited for it)
        if let Some(e) = refused() {
            return Err(e);
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(TIMEOUT))
            .set_connection_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let opened = tokio::time::timeout(CONNECT_WITHIN, async {
            self.primary
                .client_async()
                .await?
                .get_connection_manager_with_config(config)
                .await
        })
        .await;
        let failed = |e: StoreError| {
            *self
                .failed_connect
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            Err(e)
        };
        match opened {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => failed(redis_err(e)),
            Err(_) => failed(StoreError::Backend(format!(
                "redis: the connection was not opened within {} ms",
                CONNECT_WITHIN.as_millis()
            ))),
        }
    }

    /// Runs a script; after a connection found dropped (the server restarted) or on a server
    /// demoted to a replica (a failover), the connection is opened again, to the primary as
    /// it is now (`store::Primary`), and the script sent once more (a script that ran and
    /// lost its answer errs on the safe side: a lease is renewed by its holder).
    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        match call.invoke_async(&mut c).await {
            Err(e) if must_reconnect(&e) => {
                self.conn.lock().await.take();
                let mut c = self.conn().await?;
                call.invoke_async(&mut c).await.map_err(redis_err)
            }
            answer => answer.map_err(redis_err),
        }
    }

    /// A request's claim on nonce `key` (`signer:nonce`, used until `until` on this replica's
    /// clock, whose time is `now`) and on one of clinician `who`'s grants this minute, for the
    /// grant's write to take (`store::Claim`).
    pub fn claim(&self, key: &str, until: u64, now: u64, who: &str) -> Claim {
        let emission = (60_000 / self.per_minute.max(1)).max(1);
        Claim {
            nonce: key.to_string(),
            keep_secs: until.saturating_sub(now),
            clinician: who.to_string(),
            emission_ms: emission,
            burst_ms: emission * self.per_minute,
        }
    }

    pub(super) async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut call = self.lease.prepare_invoke();
        call.key(crate::store::lease_key(&self.prefix, name))
            .key(format!("{}fences", self.prefix))
            .arg(holder)
            .arg(ttl_ms.max(1))
            .arg(name);
        Ok(u64::try_from(self.invoke::<i64>(&call).await?).ok())
    }

    pub(super) async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut call = self.release.prepare_invoke();
        call.key(crate::store::lease_key(&self.prefix, name))
            .arg(holder);
        self.invoke::<i64>(&call).await.map(|_| ())
    }

    fn session_key(&self, key: &str) -> String {
        format!("{}session:{key}", self.prefix)
    }

    fn sessions_due_key(&self) -> String {
        format!("{}sessions-due", self.prefix)
    }

    fn sessions_ending_key(&self) -> String {
        format!("{}sessions-ending", self.prefix)
    }

    /// Spends challenge `nonce` (good until `until`, unix s): kept ten minutes past that, so
    /// that a replica whose clock runs behind this one's still finds it spent. A spend whose
    /// answer was lost and is sent again finds it spent: the reviewer asks for a new one.
    pub(super) async fn spend_challenge(
        &self,
        nonce: &str,
        until: u64,
    ) -> Result<bool, StoreError> {
        let keep = until.saturating_sub(crate::clock::now_secs()).max(1) + 600;
        let mut call = self.spend_challenge.prepare_invoke();
        call.key(format!("{}challenge:{nonce}", self.prefix))
            .arg(keep);
        let spent: Option<String> = self.invoke(&call).await?;
        Ok(spent.is_some())
    }

    fn replica_keys_key(&self) -> String {
        format!("{}replica-keys", self.prefix)
    }

    /// The keys the replicas run with as recorded, `ours` recorded first when there is no
    /// record yet.
    pub(super) async fn record_keys(
        &self,
        ours: &super::ReplicaKeys,
    ) -> Result<super::Recorded, StoreError> {
        let mut call = self.record_keys.prepare_invoke();
        call.key(self.replica_keys_key())
            .arg(ours.current_data())
            .arg(ours.current_token())
            .arg(&ours.responder);
        let (data, token, responder): (Option<String>, Option<String>, Option<String>) =
            self.invoke(&call).await?;
        Ok(super::Recorded {
            data: data.unwrap_or_default(),
            token: token.unwrap_or_default(),
            responder: responder.unwrap_or_default(),
        })
    }

    /// The keys the replicas run with, if they recorded them.
    pub(super) async fn recorded_keys(&self) -> Result<Option<super::Recorded>, StoreError> {
        let mut c = self.conn().await?;
        let (data, token, responder): (Option<String>, Option<String>, Option<String>) =
            ::redis::cmd("HMGET")
                .arg(self.replica_keys_key())
                .arg("data")
                .arg("token")
                .arg("responder")
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
        Ok(data.map(|data| super::Recorded {
            data,
            token: token.unwrap_or_default(),
            responder: responder.unwrap_or_default(),
        }))
    }

    /// Records `ours`' current keys as the ones the replicas run with, if the record is still
    /// `recorded`.
    pub(super) async fn publish_keys(
        &self,
        recorded: &super::Recorded,
        ours: &super::ReplicaKeys,
    ) -> Result<bool, StoreError> {
        let mut call = self.publish_keys.prepare_invoke();
        call.key(self.replica_keys_key())
            .arg(&recorded.data)
            .arg(&recorded.token)
            .arg(ours.current_data())
            .arg(ours.current_token());
        Ok(self.invoke::<i64>(&call).await? == 1)
    }

    pub(super) async fn open_session(
        &self,
        key: &str,
        session: &super::OpenSession,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut call = self.open_session.prepare_invoke();
        call.key(self.session_key(key))
            .key(self.sessions_due_key())
            .arg(&session.reviewer)
            .arg(&session.csrf)
            .arg(session.created_ms)
            .arg(ttl_ms.max(1))
            .arg(LAPSED_KEPT_MS);
        self.invoke::<i64>(&call).await.map(|_| ())
    }

    pub(super) async fn touch_session(
        &self,
        key: &str,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<Option<super::OpenSession>, StoreError> {
        let mut call = self.touch_session.prepare_invoke();
        call.key(self.session_key(key))
            .key(self.sessions_due_key())
            .key(self.sessions_ending_key())
            .arg(crate::clock::now_ms())
            .arg(idle_ms)
            .arg(max_ms)
            .arg(LAPSED_KEPT_MS);
        let fields: Option<(String, String, u64)> = self.invoke(&call).await?;
        Ok(
            fields.map(|(reviewer, csrf, created_ms)| super::OpenSession {
                reviewer,
                csrf,
                created_ms,
            }),
        )
    }

    pub(super) async fn end_session(&self, key: &str) -> Result<bool, StoreError> {
        let mut call = self.end_session.prepare_invoke();
        call.key(self.session_key(key))
            .key(self.sessions_due_key())
            .key(self.sessions_ending_key());
        self.invoke::<i64>(&call).await.map(|n| n > 0)
    }

    pub(super) async fn lapsed_sessions(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<super::Claimed>, StoreError> {
        let mut call = self.lapsed_sessions.prepare_invoke();
        call.key(self.sessions_due_key())
            .key(self.sessions_ending_key())
            .arg(now_ms)
            .arg(limit)
            .arg(super::ENDING_LEASE_MS);
        let rows: Vec<Vec<String>> = self.invoke(&call).await?;
        let prefix = format!("{}session:", self.prefix);
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let [key, reviewer, created, until] = <[String; 4]>::try_from(row).ok()?;
                let lapsed = (|| {
                    Some(super::Lapsed {
                        reviewer: Some(reviewer).filter(|r| !r.is_empty())?,
                        created_ms: created.parse().ok()?,
                        until_ms: until.parse().ok()?,
                    })
                })();
                Some(super::Claimed {
                    key: key.strip_prefix(&prefix).unwrap_or(&key).to_string(),
                    lapsed,
                })
            })
            .collect())
    }

    pub(super) async fn sessions_ended(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut call = self.sessions_ended.prepare_invoke();
        call.key(self.sessions_ending_key());
        for key in keys {
            call.arg(self.session_key(key));
        }
        self.invoke::<i64>(&call).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis host that takes connections and says nothing (hung, or cut off after the
    /// connect): callers at once all have their answer within one attempt's time, the later
    /// ones refused at once after it failed. Before, each made an attempt of its own behind the
    /// lock, one after another: the eighth waited for eight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_of_a_silent_redis_are_not_queued_behind_each_others_connects() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/", silent.local_addr().unwrap());
        let c = std::sync::Arc::new(
            RedisCoordinator::new(url.as_str(), "silent:", NonZeroU32::MIN).unwrap(),
        );
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.lease(&format!("l{i}"), "me", 1000).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_err());
        }
        let took = started.elapsed();
        assert!(took < CONNECT_WITHIN + TIMEOUT * 2, "{took:?}");
        drop(silent);
    }
}

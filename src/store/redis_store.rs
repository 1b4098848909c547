//! The shared store of many replicas: the same tables and rows as the embedded store
//! (`schema.rs`), each table one Redis hash (`<prefix><table>`), but the index of the audit
//! log by access, a sorted set (`SORTED`); the operations' ids are also kept as one, to read a
//! family of them by prefix (`NAMED`). Durable before it answers
//! only on a server that syncs its append-only file on every write (`appendonly yes`,
//! `appendfsync always`: Redis then syncs once per event loop, a group commit), its rewrites
//! of that file included (`no-appendfsync-on-rewrite no`); `open` says so in the log when the
//! server does not (`unsynced`), and, with Sentinel and no write waiting for a replica, when the
//! primary takes writes without replicas (`cut_off_writes`). `open` refuses a server that evicts
//! keys when full (any `maxmemory-policy` but `noeviction`, read from `INFO`: used nonces and
//! audit entries would vanish) and one before Redis 7.0; a full server refuses each write whole
//! (`conditional`), and `writable` says so, as it does of a server that evicts keys now (after a
//! failover, the promoted one).
//!
//! The writer (`redis_writer.rs`) takes every batch waiting at that moment and writes them in one
//! round trip, with up to two such groups in flight on its connection (eight under a light load): a script that writes their
//! rows, or, with audit events, one that links them on the audit head the writer expects (the head
//! it last wrote: a replica's own writes need no read of it). The audit log has one order across
//! every writer: if another replica moved the head meanwhile, the script writes nothing and answers
//! the head as it is, and the group is linked again on it. The same script takes the grants' claims
//! (`Claim`: a request's nonce unused, the clinician's rate), so that a grant on Redis costs one
//! synced write in all; a batch whose claim does not hold is answered `Guarded` and the rest of its
//! group written without it.
//!
//! A dropped connection is opened again and the command (the writer: its groups in flight) sent
//! again once, so a restarted server is used again as soon as it answers (a retry that finds its
//! group written, by the writer's mark written with it, is done: `conditional`). Reads give up on a
//! server that does not answer within `READ_TIMEOUT` (and refuse reads at once for
//! `QUIET_AFTER_TIMEOUT` after one did not), the writer within `WRITE_TIMEOUT` (then it tries once
//! more, on the primary as it is then): every write checks the writer's mark first, so a group it
//! gave up on never lands after a later one, nor twice. A grant stops waiting sooner, on its own
//! (`access::grant`).
//!
//! With `Acknowledgement`, every write is also waited on until that many of the server's
//! replicas have it (`WAIT`), so that a failover to one of them loses no acknowledged write.
//!
//! It must not: answer a write before the server (and the replicas it needs) did.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use redis::{Commands, Connection};

use super::reads::RowSource;
use super::redis_primary::{must_reconnect, Primary, RedisTarget};
pub use super::redis_writer::Acknowledgement;
use super::redis_writer::{Call, Job, Writer};
use super::schema::*;
use super::writer::Reply;
use super::*;

/// How many connections read at once (the break-glass path's cache reads, from each runtime
/// thread, and the background tasks').
const READERS: usize = 4;

static READ_TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The chain-state cache's tables, also kept in this process's memory as this replica last
/// wrote or read them: the break-glass path reads them without a round trip. Every block this
/// replica's follower applies (and every fill) writes through here, so a copy it wrote is as
/// fresh as the replica's own view of the chain, which the grant already checks
/// (`chain_view`). A copy read from Redis is another replica's write, as fresh as that
/// replica's view (which may be behind, or a catch-up's read before a block another replica
/// applied meanwhile): it is kept `READ_KEPT_FOR`, then read again. A catch-up's write
/// (`Batch::reread_all`) drops every copy first: what it re-read is what Redis lists, and a row
/// another replica took out of Redis since this one wrote it would stay here otherwise. A write
/// whose outcome the writer cannot tell drops its rows' copies, and none is kept until a later
/// write of the writer lands (`forget`): meanwhile these tables are read from Redis.
const LOCAL: [Table; 5] = [PROVIDERS, PREFERENCES, CONSENTS, RESPONDERS, REVIEWERS];
/// At most this many rows are kept in memory (then they are dropped and read again).
const LOCAL_MAX: usize = 200_000;
/// How long a chain-state row read from Redis (written by another replica) is kept in memory:
/// a change another replica's follower wrote (a suspension) is seen within it, at one round trip
/// a row every `READ_KEPT_FOR` on the break-glass path.
const READ_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The local copy, and how many writes changed it (a read from Redis is kept only if none
/// did while it read: it could be older than the write).
#[derive(Default)]
pub(super) struct LocalRows {
    /// Each row, and until when it is kept if it was read from Redis (`READ_KEPT_FOR`; `None`:
    /// this replica wrote it).
    rows: std::collections::HashMap<(Table, String), (Vec<u8>, Option<std::time::Instant>)>,
    writes: u64,
    /// Whether a group of the writer's with rows of these tables may yet land (`forget`): no
    /// read is kept meanwhile.
    unsettled: bool,
}

pub(super) type Local = std::sync::Arc<std::sync::RwLock<LocalRows>>;

/// Applies the rows of a group written to the local copy, after dropping every copy if the
/// group re-read the whole cache (`whole`: `Batch::reread_all`). A group written settles any
/// group of the same writer sent before it whose outcome was not known (`forget`): that one has
/// landed by now or never will (the writer's mark holds this group's number).
pub(super) fn remember(local: &Local, rows: &Rows, whole: bool) {
    let unsettled = local.read().unwrap_or_else(|e| e.into_inner()).unsettled;
    if !unsettled && !whole && !rows.iter().any(|(table, _, _)| LOCAL.contains(table)) {
        return;
    }
    let mut guard = local.write().unwrap_or_else(|e| e.into_inner());
    guard.writes += 1;
    guard.unsettled = false;
    let map = &mut guard.rows;
    if whole {
        map.clear();
    }
    for (table, key, value) in rows {
        if !LOCAL.contains(table) {
            continue;
        }
        match value {
            Some(v) => {
                if map.len() >= LOCAL_MAX {
                    map.clear();
                }
                map.insert((*table, key.clone()), (v.clone(), None));
            }
            None => {
                map.remove(&(*table, key.clone()));
            }
        }
    }
}

/// For a group sent whose outcome is not known (its answer lost, and the copy sent again not
/// answered either: it may have landed, and a copy may still land late, read by the server from
/// a dropped connection): its rows' local copies are dropped, and no read is kept until a later
/// group of the writer is written (`remember`), so that they are read as the server has them.
/// A group that re-read the whole cache (`whole`: `Batch::reread_all`) drops every copy, as
/// it would have had it been written.
pub(super) fn forget(local: &Local, rows: &Rows, whole: bool) {
    if !whole && !rows.iter().any(|(table, _, _)| LOCAL.contains(table)) {
        return;
    }
    let mut guard = local.write().unwrap_or_else(|e| e.into_inner());
    guard.writes += 1;
    guard.unsettled = true;
    if whole {
        guard.rows.clear();
    }
    for (table, key, _) in rows {
        if LOCAL.contains(table) {
            guard.rows.remove(&(*table, key.clone()));
        }
    }
}

pub struct RedisStore {
    primary: Primary,
    prefix: String,
    local: Local,
    /// Connections for reads, each used by one reader at a time.
    reads: Vec<Mutex<Option<Connection>>>,
    writer: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Whether reads ask the server (`QUIET_AFTER_TIMEOUT`).
    quiet: Mutex<Quiet>,
    /// Whether this process made the open indexes whole (`open_index_rows`): at the first
    /// read of one, since the server may be away when the store opens.
    indexed: std::sync::atomic::AtomicBool,
    /// Whether this process moved sorted tables an earlier version kept as hashes
    /// (`sorted_whole`).
    sorted: std::sync::atomic::AtomicBool,
    /// When this process last made each table's names whole (`names_whole`), and whether
    /// they were.
    names_checked: Mutex<std::collections::HashMap<Table, (std::time::Instant, bool)>>,
    metrics: GroupMetrics,
    /// How many of the server's replicas each write waits for (`Acknowledgement`): with fewer
    /// connected, the store is not writable.
    wait_replicas: u32,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// How long opening a connection may take before the server counts as unreachable.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long a read may wait for its answer before the server counts as unreachable (a hung
/// server, or a host gone without a reset, would otherwise hold the caller until TCP gives up).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long the writer waits for a write's answer (beyond the replicas' acknowledgement, when it
/// waits for one) before it drops the connection and sends the group, and those in flight behind
/// it, again on a new one, once (`redis_writer`): far beyond a healthy server's worst, so that a
/// server that hangs, or a primary a failover replaced while it hung, holds the writer seconds, not
/// until TCP gives up. The group it gave up on may still be read by the server from the dropped
/// connection; the writer's mark keeps it from landing twice or after a later group
/// (`conditional`). When the second copy fails too, the group's callers are answered with the error
/// (no token) although the first copy may still land: its access is then recorded (on chain,
/// notified) without a token, as one the replicas did not acknowledge in time is. A grant does not
/// wait this long (`access::grant`).
pub(super) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `f` (a read, or the checks at `open`) on the connection in `slot`, opening it if needed (to
/// the primary as it is now: `Primary`, within `CONNECT_TIMEOUT`, its answers awaited at most
/// `answer_within`); a connection that must be opened again (`must_reconnect`, a timed-out one too)
/// is, and `f` retried once.
fn with<T>(
    primary: &Primary,
    slot: &mut Option<Connection>,
    answer_within: Option<std::time::Duration>,
    f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
) -> Result<T, StoreError> {
    answered(primary, slot, answer_within, f).map_err(redis_err)
}

/// `with`, its error as the client gave it.
fn answered<T>(
    primary: &Primary,
    slot: &mut Option<Connection>,
    answer_within: Option<std::time::Duration>,
    mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    let mut last = None;
    for _ in 0..2 {
        if slot.is_none() {
            let conn = primary.client().and_then(|c| {
                let conn = c.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                conn.set_read_timeout(answer_within)?;
                conn.set_write_timeout(answer_within)?;
                Ok(conn)
            })?;
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_mut() else {
            continue;
        };
        match f(conn) {
            Ok(v) => return Ok(v),
            Err(e) if must_reconnect(&e) => {
                *slot = None;
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::other("the connection could not be opened again").into()
    }))
}

/// How long reads are refused at once after one found no answer within `READ_TIMEOUT` (twice:
/// `with` tries a new connection), before one read asks the server again (`Quiet`): a hung server
/// (or a host gone without a reset) would otherwise hold every read for seconds, each caller's
/// thread with it (the background tasks', an introspection's), where the first one's answer
/// already says the server is not answering.
const QUIET_AFTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether reads ask the server: it answers; it did not, and until then every read is refused
/// at once; or one read asks it again (until then, or until that read's timeouts and its wait
/// for a connection have passed, the others are refused: a hung server holds one caller at a
/// time, not each). `generation` counts the changes: only a read let through since the last
/// one changes it again (a read from before the server stopped answering, finishing late, says
/// nothing of it now).
#[derive(Clone, Copy)]
struct Quiet {
    mode: Mode,
    generation: u64,
}

#[derive(Clone, Copy)]
enum Mode {
    Answering,
    Until(std::time::Instant),
    Asking(std::time::Instant),
}

/// How long the one read that asks a quiet server again may take at most: its two tries, each
/// a new connection (with Sentinel, the primary asked for first) and a read, and its wait for
/// a connection.
const ASKING_AT_MOST: std::time::Duration = std::time::Duration::from_millis(
    (2 * (READ_TIMEOUT.as_millis()
        + CONNECT_TIMEOUT.as_millis()
        + super::redis_primary::LOOKUP_AT_MOST.as_millis())
        + READ_TIMEOUT.as_millis()) as u64,
);

impl RedisStore {
    /// Connects to the server at `target` (`redis://host:port/db`, or a primary found through
    /// Sentinel: `RedisTarget`), keeping every table under `prefix` (so that one server can
    /// hold several stores).
    pub fn open(target: impl Into<RedisTarget>, prefix: &str) -> Result<RedisStore, StoreError> {
        RedisStore::open_with(target, prefix, Acknowledgement::default())
    }

    /// `open`, with every write also acknowledged by the server's replicas (`Acknowledgement`).
    pub fn open_with(
        target: impl Into<RedisTarget>,
        prefix: &str,
        acknowledgement: Acknowledgement,
    ) -> Result<RedisStore, StoreError> {
        let target = target.into();
        let primary = Primary::open(&target).map_err(redis_err)?;
        let mut reads = None;
        let config: Vec<String> = with(&primary, &mut reads, Some(READ_TIMEOUT), |c| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("append*")
                .arg("no-appendfsync-on-rewrite")
                .query(c)
        })
        .unwrap_or_default();
        let setting = |name: &str| {
            config
                .chunks(2)
                .find(|kv| kv[0] == name)
                .map(|kv| kv.get(1).cloned().unwrap_or_default())
        };
        // from `INFO` (its default sections: memory, server, replication and cluster among
        // them; a server before 7.0 takes one section at most), which a server that refuses
        // `CONFIG` (a managed one) still answers; a server not answering now is checked by
        // `writable` (every /readyz) once it does
        let info: Option<String> = with(&primary, &mut reads, Some(READ_TIMEOUT), |c| {
            redis::cmd("INFO").query(c)
        })
        .ok();
        if let Some(why) = info.as_deref().and_then(unfit) {
            return Err(StoreError::Backend(why));
        }
        if let Some(why) = unsynced(&setting) {
            tracing::warn!("{why}");
        }
        if !target.sentinels.is_empty() && acknowledgement.replicas == 0 {
            if let Some(why) = info.as_deref().and_then(cut_off_writes) {
                tracing::warn!("{why}");
            }
        }
        let (writer, jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let local = Local::default();
        let metrics = GroupMetrics::new(GroupWriter::Redis);
        let w = Writer::new(
            primary.clone(),
            prefix,
            local.clone(),
            acknowledgement,
            metrics.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(backend)?;
        let thread = std::thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || runtime.block_on(super::redis_writer::run(w, jobs)))
            .map_err(backend)?;
        Ok(RedisStore {
            primary,
            prefix: prefix.to_string(),
            local,
            reads: std::iter::once(Mutex::new(reads))
                .chain((1..READERS).map(|_| Mutex::new(None)))
                .collect(),
            writer: Some(writer),
            thread: Some(thread),
            quiet: Mutex::new(Quiet {
                mode: Mode::Answering,
                generation: 0,
            }),
            indexed: std::sync::atomic::AtomicBool::new(false),
            sorted: std::sync::atomic::AtomicBool::new(false),
            names_checked: Mutex::new(std::collections::HashMap::new()),
            metrics,
            wait_replicas: acknowledgement.replicas,
        })
    }

    fn key(&self, table: Table) -> String {
        table_key(&self.prefix, table)
    }

    /// Whether a read may ask the server now (`Quiet`): it answers, or it did not and this
    /// read is the one that asks it again. Its generation, for `asked`.
    fn may_ask(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        match quiet.mode {
            Mode::Answering => Some(quiet.generation),
            Mode::Until(until) | Mode::Asking(until) if now < until => None,
            Mode::Until(_) | Mode::Asking(_) => {
                quiet.generation += 1;
                quiet.mode = Mode::Asking(now + ASKING_AT_MOST);
                Some(quiet.generation)
            }
        }
    }

    /// What a read let through in `generation` found: no answer in time, or one.
    fn asked(&self, generation: u64, timed_out: bool) {
        let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        if quiet.generation != generation {
            return;
        }
        if timed_out {
            quiet.generation += 1;
            quiet.mode = Mode::Until(std::time::Instant::now() + QUIET_AFTER_TIMEOUT);
        } else {
            quiet.mode = Mode::Answering;
        }
    }

    fn read<T>(
        &self,
        f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let quiet = || {
            StoreError::Backend(format!(
                "redis: the server does not answer (a read found no answer within {} ms); reads are refused at once, and the server asked by one read a second, until it answers",
                READ_TIMEOUT.as_millis()
            ))
        };
        // refused before it takes a connection: those may all be held by reads of the hung server
        let Some(generation) = self.may_ask() else {
            return Err(quiet());
        };
        // a free connection if there is one, else wait for one
        let mut slot = self
            .reads
            .iter()
            .find_map(|m| m.try_lock().ok())
            .unwrap_or_else(|| {
                let i = READ_TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reads[i % self.reads.len()]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            });
        // and again once it has one: a read that waited for a connection while another found
        // no answer is refused too, not let through to wait its own timeouts (each waiting
        // read did, one after another, for as many rounds as there were reads per connection);
        // unless the server answers again by then
        let stale = {
            let q = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
            q.generation != generation && !matches!(q.mode, Mode::Answering)
        };
        if stale {
            return Err(quiet());
        }
        let result = answered(&self.primary, &mut slot, Some(READ_TIMEOUT), f);
        // what it found is said before the connection is let go, so that a read waiting for
        // it sees it
        self.asked(generation, matches!(&result, Err(e) if e.is_timeout()));
        drop(slot);
        result.map_err(redis_err)
    }
}

/// Where lease `name` is kept (`coordination`), under the store's `prefix`: a hash of its
/// holder and fencing token, gone when the lease lapses.
pub fn lease_key(prefix: &str, name: &str) -> String {
    format!("{prefix}lease:{name}")
}

/// The sorted set of used request nonces (`Claim`: `signer:nonce`, scored with when the
/// request could no longer be fresh, unix seconds), under the store's prefix. A group's write
/// checks and adds all its nonces in one command each, and forgets the stale ones.
pub const NONCES: &str = "nonces";

/// The hash of clinicians' rates (`Claim`: GCRA's theoretical arrival time, unix ms, per
/// clinician), under the store's prefix. A time in the past counts as now, so a field needs no
/// expiry; there is one per clinician who was ever granted.
pub const RATES: &str = "rates";

/// A script of one of the writer's groups (`invocation`): first {3, ''} if the writer wrote it
/// already, its mark (a field of `META`, key 1, named by argument 3) holding the group's number or
/// a later one (argument 4 is `<number>:<after>:<again>`: `numbered`), so that a group lands once
/// and never after a later one of its writer (one sent again after its answer was lost, or given up
/// on and read late by the server from the connection the writer dropped). Then {5, ''}, nothing
/// written, unless the mark holds `after` (the group sent before it, still in flight then; 0: none)
/// or a later one: a group sent behind another is written only after it. A copy sent again (`again`
/// 1: its first copy's answer was lost) that is not written for any reason retires its number
/// (`<mark>:refused` in `META`), and a copy of a retired number answers {6, ''} and writes nothing:
/// the first copy, read late by the server from the dropped connection, cannot land after its group
/// was answered as not written (and sent again under a new number). The checks run in a function of
/// their own, whose early answer is that refusal. That answer comes after a write (the mark set
/// again as it is), so that a `WAIT` that follows on the connection (the writer's
/// `Acknowledgement`) counts the replicas that have the group: from Redis 7.2 on, `WAIT` waits only
/// for the connection's own last write, and a new connection that wrote nothing would be
/// acknowledged at once, by replicas that may lack the group. Then `checks` (which return {code,
/// detail} early when a condition fails); then the rows passed from key `ARGV[1]` and argument
/// `ARGV[2]` on (`push_rows`) are written, the mark set to the group's number, and `done` returned:
/// one atomic step on the server. Both may call `each(op, key, list, first, last)`: `op` on `key`
/// with `list[first..last]` as arguments, a command per `UNPACKED` of them at most, their answers
/// joined; and read the constants `UNPACKED` and `FORGET_AT_ONCE` as Lua locals of the same names.
/// Given `also`, the checks also find the `META` field named by that argument in the local `also`
/// (false if none), read with the mark in one command. The mark is set last, by the rows' last
/// command if that one sets fields of `META` (the writer puts `META`'s rows last), else by a
/// command of its own: each command a script calls costs Redis a few microseconds beside its work,
/// and a grant's group writes the audit head there.
fn conditional(checks: &str, also: Option<usize>, done: &str) -> redis::Script {
    let also = also.map(|arg| format!(", ARGV[{arg}]")).unwrap_or_default();
    // `#!lua`: a script that declares its flags (none: it may write) is refused whole by a
    // server over its `maxmemory`, before it runs; one that does not is run, and may write
    // there (Redis 7.0), so that a full server would grow on, or fail a script halfway
    redis::Script::new(&format!(
        r"#!lua
local got = redis.call('HMGET', KEYS[1], ARGV[3], ARGV[3] .. ':refused'{also})
local marked, refused, also = got[1], got[2], got[3]
local number, after, retire = string.match(ARGV[4], '^(%d+):(%d+):(%d)$')
if (tonumber(marked) or 0) >= tonumber(number) then
  redis.call('HSET', KEYS[1], ARGV[3], marked)
  return {{3, ''}}
end
if (tonumber(refused) or 0) >= tonumber(number) then return {{6, ''}} end
local function retiring(answer)
  if retire == '1' then redis.call('HSET', KEYS[1], ARGV[3] .. ':refused', number) end
  return answer
end
if (tonumber(marked) or 0) < tonumber(after) then return retiring({{5, ''}}) end
local UNPACKED, FORGET_AT_ONCE = {UNPACKED}, {FORGET_AT_ONCE}
local function each(op, key, list, first, last)
  local out = {{}}
  for s = first, last, UNPACKED do
    local got = redis.call(op, key, unpack(list, s, math.min(s + UNPACKED - 1, last)))
    if type(got) == 'table' then for _, v in ipairs(got) do table.insert(out, v) end end
  end
  return out
end
local no = (function()
{checks}
end)()
if no then return retiring(no) end
local a = tonumber(ARGV[2])
local mark = true
-- the mark last, as the rows' last command if that one sets fields of `META`
for i = tonumber(ARGV[1]), #KEYS do
  local op, last = ARGV[a], a + 1 + tonumber(ARGV[a + 1])
  if i == #KEYS and op == 'HSET' and KEYS[i] == KEYS[1] and last - a < UNPACKED then
    redis.call('HSET', KEYS[1], ARGV[3], number, unpack(ARGV, a + 2, last))
    mark = false
  else
    each(op, KEYS[i], ARGV, a + 2, last)
  end
  a = last + 1
end
if mark then redis.call('HSET', KEYS[1], ARGV[3], number) end
return {done}
"
    ))
}

/// How many fields an `HSCAN` reads at once. Redis runs one command at a time, and every write
/// waits behind the command in hand: a page of 1,000 of a large hash held it 0.3–0.4 ms
/// (1.5 ms at the load test's peak), so each replica's rescan of the open notices, once a lease,
/// put a few hundred such waits into the grants' tail. A page of 100 holds it ~10 times less,
/// for ten times the round trips off the break-glass path.
const SCAN_PAGE: usize = 100;

/// How many arguments one command of a `conditional` script takes at most (Lua's stack holds
/// 8,000; even, so that a field and its value stay together).
const UNPACKED: usize = 4000;

/// Starts a `conditional` script's call for group `number` of the writer whose mark is
/// `mark`, sent behind its group `after` (0: none in flight), under `prefix`, whose checks
/// take `keys` more keys and `args` more arguments.
pub(super) fn invocation(
    prefix: &str,
    (mark, number, after): (&str, u64, u64),
    keys: usize,
    args: usize,
) -> Call {
    let mut call = Call::default();
    call.key(format!("{prefix}{META}"))
        .arg(keys + 2)
        .arg(args + 5)
        .arg(mark)
        .arg(numbered(number, after, false));
    call
}

/// A group's argument 4 (`conditional`): its number, the group it was sent behind, and whether
/// this copy is one sent again, whose refusal retires the number.
pub(super) fn numbered(number: u64, after: u64, again: bool) -> String {
    format!("{number}:{after}:{}", u8::from(again))
}

/// Tables kept as a sorted set rather than a hash: their rows have empty values and are read by
/// key prefix, each member scored 0 so that the set orders them by their bytes, and
/// `ZRANGEBYLEX` reads one prefix's rows without walking the others (an access's trail in the
/// index by access, however long the log).
const SORTED: [Table; 1] = [AUDIT_BY_ACCESS];

/// Tables kept as a sorted set scored by their rows' values (a unix time in seconds, as
/// decimal text: `schema::due_at`): the open notices, by when each is next due, so that a
/// replica's rescan reads those due soon (`ZRANGEBYSCORE`), not every open notice. A store
/// written before kept that index as a hash (`<prefix><table>`): the set is built from the
/// notices by each process's first read of an index (`open_indexed`), and the hash is left
/// to replicas of the earlier version still running (`deploy/README.md`, upgrading).
const SCORED: [Table; 1] = [OPEN_NOTICES];

/// Whether `table` is kept as a sorted set (`SORTED`, `SCORED`), not a hash.
fn in_a_set(table: Table) -> bool {
    SORTED.contains(&table) || SCORED.contains(&table)
}

/// Where `table` is kept under `prefix`: a hash, or a sorted set (`SORTED`, `SCORED`).
fn table_key(prefix: &str, table: Table) -> String {
    if SORTED.contains(&table) {
        format!("{prefix}sorted:{table}")
    } else if SCORED.contains(&table) {
        format!("{prefix}due:{table}")
    } else {
        format!("{prefix}{table}")
    }
}

/// Tables kept as a hash whose keys are also kept, beside it, as a sorted set of names
/// (`<prefix>names:<table>`, each scored 0, so ordered by its bytes), written with the rows in
/// the same script: read by key prefix with `ZRANGEBYLEX` and `HMGET`, not an `HSCAN MATCH`
/// over every row. The operations: one a grant (its chain record), read by a family's prefix
/// (the anchors, a patient's summary hashes), which walked every operation ever made (~2.2 s
/// at a million, each read). Rows are never taken out of it, so its names are whole when
/// there are as many as rows: checked once a minute at most (`NAMES_CHECKED_EVERY`) by a read
/// of names, which adds those missing (a store written before them, or by a replica of an
/// earlier version during a rolling upgrade). While they cannot be (a full server refuses the
/// `ZADD`), reads walk the table as before.
const NAMED: [Table; 1] = [SUBMISSIONS];

/// How often a read of names checks they are whole (`NAMED`): two counts, or, when they
/// differ, the table's rows read whole and the missing names added.
const NAMES_CHECKED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How soon a check of names that could not count them is made again (`names_whole`).
const NAMES_CHECKED_AGAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a check of names (`RedisStore::names_whole`) did not find them whole.
enum Unnamed {
    /// Names are missing, and could not be added.
    Missing(StoreError),
    /// They could not be counted: whether any are missing is not known.
    Uncounted(StoreError),
}

/// Where the names of `table`'s rows are kept under `prefix` (`NAMED`).
fn names_key(prefix: &str, table: Table) -> String {
    format!("{prefix}names:{table}")
}

/// Adds `rows` to a `conditional` script's call, each run of rows of one table and one kind
/// (set, delete) as one command: its table's key; `HSET` or `HDEL` (`ZADD` or `ZREM` for a
/// sorted table), how many arguments follow, and the fields with their values (members with
/// their score) as arguments; a named table's run (`NAMED`) is followed by its names' (`ZADD`
/// or `ZREM`). Runs keep the rows' order, so a later write of a row wins.
pub(super) fn push_rows(call: &mut Call, prefix: &str, rows: &Rows) {
    let mut start = 0;
    while start < rows.len() {
        let (table, _, first) = &rows[start];
        let sets = first.is_some();
        let end = rows[start..]
            .iter()
            .position(|(t, _, v)| t != table || v.is_some() != sets)
            .map_or(rows.len(), |n| start + n);
        let run = &rows[start..end];
        call.key(table_key(prefix, table));
        let sorted = in_a_set(table);
        if sets && SCORED.contains(table) {
            call.arg("ZADD").arg(2 * run.len());
            for (_, key, value) in run {
                call.arg(value.as_deref().unwrap_or_default()).arg(key);
            }
        } else if sets && sorted {
            call.arg("ZADD").arg(2 * run.len());
            for (_, key, _) in run {
                call.arg(0).arg(key);
            }
        } else if sets {
            call.arg("HSET").arg(2 * run.len());
            for (_, key, value) in run {
                call.arg(key).arg(value.as_deref().unwrap_or_default());
            }
        } else {
            call.arg(if sorted { "ZREM" } else { "HDEL" })
                .arg(run.len());
            for (_, key, _) in run {
                call.arg(key);
            }
        }
        if NAMED.contains(table) {
            call.key(names_key(prefix, table));
            if sets {
                call.arg("ZADD").arg(2 * run.len());
                for (_, key, _) in run {
                    call.arg(0).arg(key);
                }
            } else {
                call.arg("ZREM").arg(run.len());
                for (_, key, _) in run {
                    call.arg(key);
                }
            }
        }
        start = end;
    }
}

/// A guarded batch: the lease's token and holder (key 2, arguments 5 and 6), a field of `META`
/// (argument 7, read with the mark; argument 8 its value, empty for none), and rows of key 3
/// (argument 9, how many; then each one's key and value, empty for absent: operations, or a
/// paging row) are checked, each only if named, and the rows written. {0, ''}: written;
/// {1, ''}: fenced; {2, ''}: changed; {3, ''}: written already.
pub(super) fn guarded_script() -> redis::Script {
    conditional(
        r"if ARGV[5] ~= '' then
  local lease = redis.call('HMGET', KEYS[2], 'fence', 'holder')
  if lease[1] ~= ARGV[5] or lease[2] ~= ARGV[6] then return {1, ''} end
end
if ARGV[7] ~= '' and (also or '') ~= ARGV[8] then return {2, ''} end
for i = 1, tonumber(ARGV[9]) do
  if (redis.call('HGET', KEYS[3], ARGV[8 + 2 * i]) or '') ~= ARGV[9 + 2 * i] then return {2, ''} end
end",
        Some(7),
        "{0, ''}",
    )
}

/// A group without audit events or conditions: {0, ''}, written; or {3, ''}, written already.
pub(super) fn plain_script() -> redis::Script {
    conditional("", None, "{0, ''}")
}

/// How many stale nonces one write forgets at most (`linked_script`): a burst's nonces,
/// which all go stale within a second or two, are forgotten over the writes that follow
/// instead of by one of them: 80,000 at once held the server ~17 ms, and 128 (the bound until
/// 2026-12-05) ~0.27 ms a write on the load test's set of ~200,000, in the tail of every grant
/// two minutes after a peak; 16, ~35 µs. A write with one claim still forgets 16 times what it
/// adds.
const FORGET_AT_ONCE: usize = 16;

/// A group of rows linked on the audit head the writer expects (argument 5; argument 6, the
/// head's field in `META`), with its requests' claims: written ({0, ''}) only if the head is
/// still that one, else {1, the head as it is} (another replica wrote: link again on it); and
/// only if every claim holds, else {2, which did not} (`<claim> replayed` or `<claim> rate`,
/// space-separated, from 0: the group is written again without their batches); {3, ''} if the
/// group was written already (`conditional`), whoever wrote since. Keys 2 and 3: `NONCES`
/// and `RATES`. Claim c: arguments 8 + 5c (its nonce), 9 + 5c (how long
/// the nonce is kept, s, from the server's `TIME`), 10 + 5c (its clinician), 11 + 5c and 12 + 5c (GCRA:
/// emission and burst, ms); argument 7, how many. However many claims, the
/// nonces and the rates are a few commands: stale nonces forgotten, all looked up at once, all
/// set at once. Then the group's verdicts, each of which must be the first for its access
/// (key 4: `VERDICTS`; argument 8 + 5n, how many, then their accesses): one that is not is
/// named as claim n + v, `reviewed`. After the verdicts, a lease's fencing token and holder
/// (key 5, the lease): a batch written alone under a lease (`Guard::fence`) is written only
/// while the lease is still that holder's with that token, else {4, ''} and nothing written
/// (the token empty: no lease); the operations it is guarded on (`Guard::submissions`, as
/// read, and `Guard::absent`, made new: argument f + 2, how many, then each one's id and its
/// value as read, empty for absent, in key 6, `SUBMISSIONS`) must be as read, and the field of
/// `META` it is guarded on (argument g = f + 3 + 2 × that many: the follow-up's place, the
/// tip or a replica's row, empty for none; argument g + 1 its value as read, empty for none) too, else {7, ''}
/// and nothing written. A nonce past its time counts as unused (its request is
/// refused as stale before it is claimed); `FORGET_AT_ONCE` of them at most are forgotten by a
/// write, so that no write does a burst's worth of work, and none by a refused one (which
/// writes nothing but its retirement: `conditional`).
pub(super) fn linked_script() -> redis::Script {
    conditional(
        r"local head = also or ''
if head ~= ARGV[5] then return {1, head} end
local n = tonumber(ARGV[7])
local failed, used, tats = {}, {}, {}
local v0 = 8 + 5 * n
local f = v0 + tonumber(ARGV[v0]) + 1
if ARGV[f] ~= '' then
  local lease = redis.call('HMGET', KEYS[5], 'fence', 'holder')
  if lease[1] ~= ARGV[f] or lease[2] ~= ARGV[f + 1] then return {4, ''} end
end
for i = 1, tonumber(ARGV[f + 2]) do
  if (redis.call('HGET', KEYS[6], ARGV[f + 1 + 2 * i]) or '') ~= ARGV[f + 2 + 2 * i] then return {7, ''} end
end
local g = f + 3 + 2 * tonumber(ARGV[f + 2])
if ARGV[g] ~= '' and (redis.call('HGET', KEYS[1], ARGV[g]) or '') ~= ARGV[g + 1] then return {7, ''} end
local reviewed = {}
for v = 1, tonumber(ARGV[v0]) do
  local access = ARGV[v0 + v]
  if reviewed[access] or redis.call('HEXISTS', KEYS[4], access) == 1 then
    table.insert(failed, (n + v - 1) .. ' reviewed')
  end
  reviewed[access] = true
end
local secs
if n > 0 then
  local t = redis.call('TIME')
  secs = tonumber(t[1])
  local now = secs * 1000 + math.floor(tonumber(t[2]) / 1000)
  local nonces, clinicians = {}, {}
  for c = 0, n - 1 do
    nonces[c + 1] = ARGV[8 + 5 * c]
    clinicians[c + 1] = ARGV[10 + 5 * c]
  end
  local seen = each('ZMSCORE', KEYS[2], nonces, 1, n)
  local stored = each('HMGET', KEYS[3], clinicians, 1, n)
  for c = 0, n - 1 do
    local nonce, who = nonces[c + 1], clinicians[c + 1]
    local emission, burst = tonumber(ARGV[11 + 5 * c]), tonumber(ARGV[12 + 5 * c])
    if used[nonce] or (seen[c + 1] and tonumber(seen[c + 1]) > secs) then
      table.insert(failed, c .. ' replayed')
    else
      local tat = tats[who] or tonumber(stored[c + 1] or now)
      if tat < now then tat = now end
      if tat + emission - now > burst then
        table.insert(failed, c .. ' rate')
      else
        tats[who] = tat + emission
        used[nonce] = secs + tonumber(ARGV[9 + 5 * c])
      end
    end
  end
end
if #failed > 0 then return {2, table.concat(failed, ' ')} end
if n > 0 then
  -- (a stale nonce counts as unused above: forgotten only by a group that writes)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', secs, 'LIMIT', 0, FORGET_AT_ONCE)
  if #stale > 0 then redis.call('ZREM', KEYS[2], unpack(stale)) end
  local scored, rates = {}, {}
  for nonce, untl in pairs(used) do
    table.insert(scored, untl)
    table.insert(scored, nonce)
  end
  for who, tat in pairs(tats) do
    table.insert(rates, who)
    table.insert(rates, tat)
  end
  each('ZADD', KEYS[2], scored, 1, #scored)
  each('HSET', KEYS[3], rates, 1, #rates)
end",
        Some(6),
        "{0, ''}",
    )
}

/// A fence as a script checks it: the lease's key, its token and its holder (with none, a
/// key no lease has and an empty token: nothing to check).
pub(super) fn fence_args<'a>(prefix: &str, fence: Option<&'a Fence>) -> (String, String, &'a str) {
    match fence {
        Some(f) => (
            lease_key(prefix, &f.lease),
            f.token.to_string(),
            f.holder.as_str(),
        ),
        None => (format!("{prefix}lease:"), String::new(), ""),
    }
}

impl RowSource for RedisStore {
    fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let local = LOCAL.contains(&table);
        let mut writes = 0;
        if local {
            let copy = self.local.read().unwrap_or_else(|e| e.into_inner());
            if let Some((v, until)) = copy.rows.get(&(table, key.to_string())) {
                if until.is_none_or(|t| std::time::Instant::now() < t) {
                    return Ok(Some(v.clone()));
                }
            }
            writes = copy.writes;
        }
        let hash = self.key(table);
        if SORTED.contains(&table) {
            self.sorted_whole()?;
            let score: Option<f64> = self.read(|c| c.zscore(&hash, key))?;
            return Ok(score.map(|_| Vec::new()));
        }
        if SCORED.contains(&table) {
            let score: Option<String> = self.read(|c| c.zscore(&hash, key))?;
            return Ok(score.map(String::into_bytes));
        }
        let value: Option<Vec<u8>> = self.read(|c| c.hget(&hash, key))?;
        if let (true, Some(v)) = (local, &value) {
            let mut copy = self.local.write().unwrap_or_else(|e| e.into_inner());
            if copy.writes == writes && !copy.unsettled && copy.rows.len() < LOCAL_MAX {
                let until = std::time::Instant::now() + READ_KEPT_FOR;
                copy.rows
                    .insert((table, key.to_string()), (v.clone(), Some(until)));
            }
        }
        Ok(value)
    }

    fn get_many(&self, table: Table, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if in_a_set(table) {
            return keys.iter().map(|k| self.get_raw(table, k)).collect();
        }
        let hash = self.key(table);
        let mut out = Vec::with_capacity(keys.len());
        // a command per `UNPACKED` keys: the server answers others between them
        for chunk in keys.chunks(UNPACKED) {
            let values: Vec<Option<Vec<u8>>> =
                self.read(|c| redis::cmd("HMGET").arg(&hash).arg(chunk).query(c))?;
            out.extend(values);
        }
        Ok(out)
    }

    /// Once a process, at its first read of an index: replicas of an earlier version (during
    /// a rolling upgrade) write no index rows, so one mark for the store would not do.
    fn open_indexed(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.indexed.load(Ordering::Acquire) {
            return Ok(());
        }
        // another replica may build them at the same time, from the same rows; an operation
        // closed meanwhile may stay named (the reads skip it), an open one is never left out
        // (a write of it since names it itself)
        let mut rows = open_index_rows(&self.scan(SUBMISSIONS)?, &self.scan(NOTICES)?)?;
        // only what they lack (as a rule nothing: every write names its own rows), so that a
        // server that refuses writes (full) is still read
        let mut named = std::collections::HashSet::new();
        for index in [OPEN_SUBMISSIONS, OPEN_NOTICES, UNCONTACTED] {
            named.extend(self.scan(index)?.into_iter().map(|(k, _)| (index, k)));
        }
        rows.retain(|(table, key, _)| !named.contains(&(*table, key.clone())));
        if !rows.is_empty() {
            let mut pipe = redis::pipe();
            for (table, key, value) in &rows {
                let value = value.as_deref().unwrap_or_default();
                if SCORED.contains(table) {
                    pipe.zadd(self.key(table), key, due_at(value)).ignore();
                } else {
                    pipe.hset(self.key(table), key, value).ignore();
                }
            }
            self.read(|c| pipe.query::<()>(c))?;
        }
        self.indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// Counted by the server (`HLEN`, `ZCARD`), without reading the rows.
    fn count(&self, table: Table) -> Result<u64, StoreError> {
        let key = self.key(table);
        if SORTED.contains(&table) {
            self.sorted_whole()?;
            return self.read(|c| c.zcard(&key));
        }
        if SCORED.contains(&table) {
            return self.read(|c| c.zcard(&key));
        }
        self.read(|c| c.hlen(&key))
    }

    /// In one script: each key's index field deleted if its row is still the value found (or
    /// still gone).
    fn prune(
        &self,
        index: Table,
        table: Table,
        closed: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        static PRUNE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local n = 0
for i = 2, #ARGV, 3 do
  local now = redis.call('HGET', KEYS[2], ARGV[i]) or ''
  local gone = ARGV[i + 1] == '1'
  if (gone and now == '') or (not gone and now == ARGV[i + 2]) then
    n = n + redis.call(ARGV[1], KEYS[1], ARGV[i])
  end
end
return n",
            )
        });
        for chunk in closed.chunks(UNPACKED / 3) {
            let mut call = PRUNE.prepare_invoke();
            call.key(self.key(index))
                .key(self.key(table))
                .arg(if SCORED.contains(&index) {
                    "ZREM"
                } else {
                    "HDEL"
                });
            for (key, value) in chunk {
                call.arg(key)
                    .arg(if value.is_none() { "1" } else { "0" })
                    .arg(value.as_deref().unwrap_or_default());
            }
            let pruned: u64 = self.read(|c| call.invoke(c))?;
            tracing::info!(
                index,
                pruned,
                "open index: closed rows it still named pruned"
            );
        }
        Ok(())
    }

    /// In bounded steps (`HSCAN`, `ZSCAN`): the server answers others between them, however
    /// large the table.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if SORTED.contains(&table) {
            return self.scan_sorted(table, "");
        }
        self.scan_matching(table, "*")
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if SORTED.contains(&table) {
            return self.scan_sorted(table, prefix);
        }
        if NAMED.contains(&table) && self.names_whole(table) {
            let keys = self.lex_range(&names_key(&self.prefix, table), prefix)?;
            let values = self.get_many(table, &keys)?;
            return Ok(keys
                .into_iter()
                .zip(values)
                .filter_map(|(k, v)| Some((k, v?)))
                .collect());
        }
        // keys here hold no glob characters
        self.scan_matching(table, &format!("{prefix}*"))
    }

    /// For a scored index (`SCORED`), only its members due by `until`, by score
    /// (`ZRANGEBYSCORE`, `SCAN_PAGE` a step), then in key order.
    fn scan_due(&self, index: Table, until: u64) -> Result<Vec<String>, StoreError> {
        if !SCORED.contains(&index) {
            return Ok(super::reads::due_keys(self.scan(index)?, until));
        }
        self.scan_due_paged(index, until, || {})
    }
}

impl RedisStore {
    /// `scan_due` on a scored index, `between` called after each full page (a test's turn to
    /// change the index meanwhile, as another replica may). Each page after the first starts
    /// right after the last member read, found by its rank when the page is read
    /// (`after_script`), so that a member removed meanwhile (a notice closed by another
    /// replica) never moves one unread past the next page: paged by an offset within a score,
    /// such a removal skipped one (a burst's notices share one due second). A page never reads
    /// more than `SCAN_PAGE` members, however many share a second. When the last member read is
    /// gone, or scored again (its notice written by another replica: its rank moved), the next
    /// page starts at its score as read (what is read twice is kept once).
    fn scan_due_paged(
        &self,
        index: Table,
        until: u64,
        mut between: impl FnMut(),
    ) -> Result<Vec<String>, StoreError> {
        let set = self.key(index);
        let from_score = |from: &str| {
            self.read(|c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&set)
                    .arg(from)
                    .arg(until)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SCAN_PAGE)
                    .query::<Vec<(String, String)>>(c)
            })
        };
        let after = after_script();
        let due = |score: &str| score.parse::<f64>().is_ok_and(|s| s <= until as f64);
        let mut keys = Vec::new();
        let mut page = from_score("-inf")?;
        loop {
            let full = page.len() == SCAN_PAGE;
            let last = page.last().cloned();
            let mut past = false;
            for (key, score) in page {
                if !due(&score) {
                    // (a page read by rank runs on past the due ones)
                    past = true;
                    break;
                }
                keys.push(key);
            }
            let Some((member, score)) = last.filter(|_| full && !past) else {
                break;
            };
            between();
            page = match self.read(|c| {
                after
                    .key(&set)
                    .arg(&member)
                    .arg(&score)
                    .arg(SCAN_PAGE)
                    .invoke::<Option<Vec<(String, String)>>>(c)
            })? {
                Some(next) => next,
                None => from_score(&score)?,
            };
        }
        // (a member read again, or scored again meanwhile, is kept once)
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// The `ARGV[3]` members after member `ARGV[1]` of sorted set `KEYS[1]`, by rank, with their
/// scores, its rank read in the same step; `false` if it is not in the set with score
/// `ARGV[2]` (as read: scored again since, its rank would skip those between).
fn after_script() -> redis::Script {
    redis::Script::new(
        r"#!lua flags=no-writes
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or score ~= ARGV[2] then return false end
local r = redis.call('ZRANK', KEYS[1], ARGV[1])
return redis.call('ZRANGE', KEYS[1], r + 1, r + tonumber(ARGV[3]), 'WITHSCORES')",
    )
}

impl RedisStore {
    /// The rows of sorted `table` (`SORTED`) whose keys start with `prefix` (ASCII, as every
    /// key is), in key order: `ZRANGEBYLEX`, a thousand a step, each step after the last.
    fn scan_sorted(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.sorted_whole()?;
        Ok(self
            .lex_range(&self.key(table), prefix)?
            .into_iter()
            .map(|k| (k, Vec::new()))
            .collect())
    }

    /// Whether `table`'s names (`NAMED`) may be read for its rows: whole when last checked,
    /// at most `NAMES_CHECKED_EVERY` ago (one read checks at a time; the others meanwhile go by
    /// the last check). A check that finds names missing and cannot add them (the server full)
    /// says so in the log, and reads walk the table until a later check can; one that cannot
    /// count them (the server away a moment) leaves the last answer as it was, and is made
    /// again after `NAMES_CHECKED_AGAIN`.
    fn names_whole(&self, table: Table) -> bool {
        let now = std::time::Instant::now();
        {
            let mut checked = self.names_checked.lock().unwrap_or_else(|e| e.into_inner());
            let last = checked.entry(table).or_insert((now, false));
            if last.0 != now && now.duration_since(last.0) < NAMES_CHECKED_EVERY {
                return last.1;
            }
            last.0 = now;
        }
        let checked = self.name_all(table);
        let mut all = self.names_checked.lock().unwrap_or_else(|e| e.into_inner());
        let last = all.entry(table).or_insert((now, false));
        match checked {
            Ok(()) => last.1 = true,
            Err(Unnamed::Missing(e)) => {
                tracing::warn!(error = %e, table, "names of a table's rows are missing and could not be added: its rows are read by walking it until they can");
                last.1 = false;
            }
            Err(Unnamed::Uncounted(e)) => {
                tracing::debug!(error = %e, table, "a table's names could not be counted: checked again shortly");
                let was = last.1;
                match now.checked_sub(NAMES_CHECKED_EVERY - NAMES_CHECKED_AGAIN) {
                    Some(sooner) => last.0 = sooner,
                    // (a clock that young: checked again at the next read)
                    None => {
                        all.remove(table);
                    }
                }
                return was;
            }
        }
        last.1
    }

    /// Adds the names `table`'s rows lack (none when it has as many names as rows), a page a
    /// command.
    fn name_all(&self, table: Table) -> Result<(), Unnamed> {
        let names = names_key(&self.prefix, table);
        let hash = self.key(table);
        let count = || -> Result<(u64, u64), StoreError> {
            Ok((
                self.read(|c| c.zcard(&names))?,
                self.read(|c| c.hlen(&hash))?,
            ))
        };
        let (named, rows) = count().map_err(Unnamed::Uncounted)?;
        if named == rows {
            return Ok(());
        }
        let add = || -> Result<usize, StoreError> {
            let listed: std::collections::HashSet<String> =
                self.lex_range(&names, "")?.into_iter().collect();
            let unnamed: Vec<String> = self
                .scan(table)?
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| !listed.contains(k))
                .collect();
            for page in unnamed.chunks(SCAN_PAGE) {
                let members: Vec<(u8, &str)> = page.iter().map(|k| (0, k.as_str())).collect();
                self.read(|c| c.zadd_multiple::<_, _, _, ()>(&names, &members))?;
            }
            Ok(unnamed.len())
        };
        let added = add().map_err(Unnamed::Missing)?;
        tracing::info!(table, added, "names a table's rows lacked added");
        Ok(())
    }

    /// The members of sorted set `set` (each scored 0) that start with `prefix` (ASCII, as
    /// every key is), in their order: `ZRANGEBYLEX`, a thousand a step, each step after the
    /// last.
    fn lex_range(&self, set: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (mut min, max) = if prefix.is_empty() {
            ("-".to_string(), "+".to_string())
        } else {
            (format!("[{prefix}"), format!("({prefix}\x7f"))
        };
        let mut rows = Vec::new();
        loop {
            let page: Vec<String> = self.read(|c| {
                redis::cmd("ZRANGEBYLEX")
                    .arg(set)
                    .arg(&min)
                    .arg(&max)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1000)
                    .query(c)
            })?;
            let last = page.len() < 1000;
            if let Some(key) = page.last() {
                min = format!("({key}");
            }
            rows.extend(page);
            if last {
                return Ok(rows);
            }
        }
    }

    /// Once a process, at its first read of a sorted table: a store written by an earlier
    /// version kept it as a hash (`<prefix><table>`), whose rows are moved into the sorted set
    /// (a thousand a step: added to the set, then taken from the hash by name). As with the
    /// open indexes, replicas of the earlier version still running write the hash
    /// (`deploy/README.md`, upgrading): a row one of them adds during the move stays in the
    /// hash (the hash is not deleted whole), for the next process's move.
    fn sorted_whole(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.sorted.load(Ordering::Acquire) {
            return Ok(());
        }
        for table in SORTED {
            let old = format!("{}{table}", self.prefix);
            let set = self.key(table);
            let rows = self.hscan(&old, "*")?;
            for page in rows.chunks(1000) {
                let members: Vec<(u8, &str)> = page.iter().map(|(k, _)| (0, k.as_str())).collect();
                let fields: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
                self.read(|c| c.zadd_multiple::<_, _, _, ()>(&set, &members))?;
                self.read(|c| c.hdel::<_, _, ()>(&old, &fields))?;
            }
        }
        self.sorted.store(true, Ordering::Release);
        Ok(())
    }

    /// The rows of `table` whose keys match `pattern`, in key order: `HSCAN` (`ZSCAN` for a
    /// scored table, its members' scores as their values), `SCAN_PAGE` fields a step.
    fn scan_matching(
        &self,
        table: Table,
        pattern: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let scan = if SCORED.contains(&table) {
            "ZSCAN"
        } else {
            "HSCAN"
        };
        self.scan_with(scan, &self.key(table), pattern)
    }

    /// The fields of `hash` that match `pattern`, with their values, in key order; read
    /// `SCAN_PAGE` at a time.
    fn hscan(&self, hash: &str, pattern: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_with("HSCAN", hash, pattern)
    }

    /// `hscan` with `HSCAN` or `ZSCAN` (members and their scores).
    fn scan_with(
        &self,
        scan: &str,
        key: &str,
        pattern: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut rows = BTreeMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<(String, Vec<u8>)>) = self.read(|c| {
                redis::cmd(scan)
                    .arg(key)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query(c)
            })?;
            rows.extend(found);
            if next == 0 {
                return Ok(rows.into_iter().collect());
            }
            cursor = next;
        }
    }
}

impl Store for RedisStore {
    fn shared(&self) -> bool {
        true
    }

    fn group_metrics(&self) -> Option<GroupMetrics> {
        Some(self.metrics.clone())
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send((
                batch,
                Reply::Blocking(reply),
                Some(std::time::Instant::now()),
            ))
            .map_err(|_| backend("the store's writer stopped"))?;
        answer
            .recv()
            .map_err(|_| backend("the store's writer stopped"))?
    }

    fn apply_then(&self, batch: Batch, done: Done) {
        if let Some(w) = &self.writer {
            // if the writer is gone, `done` is dropped with the job and the caller sees it
            let _ = w.send((batch, Reply::Async(done), Some(std::time::Instant::now())));
        }
    }

    super::reads::typed_reads!();

    fn stopped(&self) -> Option<String> {
        None
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    fn writable(&self) -> Result<(), StoreError> {
        // (the default sections, memory, server and cluster among them: a server before 7.0
        // takes one section at most)
        let info: String = self.read(|c| redis::cmd("INFO").query(c))?;
        // the server read now: after a failover, the replica promoted; or one that did not
        // answer when the store opened, and was not checked then
        match unfit(&info)
            .or_else(|| over_maxmemory(&info))
            .or_else(|| too_few_replicas(&info, self.wait_replicas))
        {
            None => Ok(()),
            Some(why) => Err(StoreError::Backend(why)),
        }
    }
}

/// How long a replica may go without acknowledging the primary's stream (`lag`, seconds; a
/// replica acknowledges every second) and still count as answering (`too_few_replicas`): one
/// hung or cut off stays `online` until the primary's `repl-timeout` (60 s by default), while
/// every `WAIT` for it times out.
const REPLICA_LAG_AT_MOST: u64 = 5;

/// Why writes to a server whose `INFO replication` answer is `info` are refused, if they are:
/// fewer of its replicas are connected (`state=online`) and acknowledging (`lag` within
/// `REPLICA_LAG_AT_MOST`) than each write waits for (`wanted`, `data.redis_wait_replicas`), so
/// that every write's `WAIT` times out and no grant is issued. Read from the server, so every
/// replica of the service says the same, at once, and is ready again as soon as Redis's
/// replicas are back.
pub(super) fn too_few_replicas(info: &str, wanted: u32) -> Option<String> {
    if wanted == 0 {
        return None;
    }
    let answering = |line: &str| {
        let field = |name: &str| {
            line.split(',')
                .find_map(|kv| kv.split_once('=').filter(|(k, _)| k.ends_with(name)))
                .map(|(_, v)| v.trim())
        };
        line.starts_with("slave")
            && field("state") == Some("online")
            && field("lag")
                .and_then(|l| l.parse::<u64>().ok())
                .is_some_and(|lag| lag <= REPLICA_LAG_AT_MOST)
    };
    let online = info.lines().filter(|l| answering(l)).count();
    (online < wanted as usize).then(|| {
        format!(
            "redis: {online} of the server's replicas are connected and acknowledging, and every write waits for {wanted} (data.redis_wait_replicas): writes are not acknowledged, and grants are refused, until they are"
        )
    })
}

/// Why a server whose `INFO` answer (memory, server and cluster) is `info` cannot hold the
/// store, if it cannot: it evicts keys (`evicting`), is too old (`too_old`), or is a node of a
/// Redis Cluster (`clustered`). Checked at open and at every `writable`.
fn unfit(info: &str) -> Option<String> {
    evicting(info)
        .or_else(|| too_old(info))
        .or_else(|| clustered(info))
}

/// Why a server whose `INFO cluster` answer is `info` cannot hold the store, if it cannot: it
/// is a node of a Redis Cluster, which spreads keys over several primaries, where a group's
/// one script writes many keys (every table, the audit head, the nonces) at once.
fn clustered(info: &str) -> Option<String> {
    (info_field(info, "cluster_enabled") == Some("1")).then(|| {
        "redis: the server is a node of a Redis Cluster (cluster_enabled:1), which the store does not support: one script writes many of its keys at once, and a Cluster spreads keys over several primaries; use one primary with replicas (and Sentinel, or a managed Redis with failover behind one address)".to_string()
    })
}

/// Why a server whose `INFO server` answer is `info` cannot hold the store, if it cannot: a
/// version before 7.0, whose scripts cannot declare that they write (`conditional`).
fn too_old(info: &str) -> Option<String> {
    let version = info_field(info, "redis_version")?;
    let major: u32 = version.split('.').next()?.parse().ok()?;
    (major < 7).then(|| {
        format!(
            "redis: the server is version {version}; 7.0 or later is needed (the store's scripts declare that they write, so that a full server refuses them whole)"
        )
    })
}

/// Why a server whose settings are `setting` (by name, from `CONFIG GET`) may lose a write it
/// acknowledged, if it may: it does not sync every write to its append-only file
/// (`appendonly yes`, `appendfsync always`), or stops syncing while it rewrites that file
/// (`no-appendfsync-on-rewrite yes`: for the seconds a rewrite takes, and a grown file is
/// rewritten again and again, every write is answered before it is on disk), or its settings
/// could not be read.
fn unsynced(setting: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let is = |name: &str, value: &str| setting(name).as_deref() == Some(value);
    if !is("appendonly", "yes") || !is("appendfsync", "always") {
        return Some("the Redis server does not sync every write (appendonly yes, appendfsync always), or its settings could not be read: an acknowledged write can be lost if it stops".into());
    }
    if !is("no-appendfsync-on-rewrite", "no") {
        return Some("the Redis server does not sync writes while it rewrites its append-only file (no-appendfsync-on-rewrite yes), or that setting could not be read: a write acknowledged during a rewrite can be lost if it stops; set it to no".into());
    }
    None
}

/// Field `name` of an `INFO` answer (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Why a primary failed over by Sentinel, whose `INFO replication` answer is `info`, may take
/// writes that the failover then throws away, when no write waits for a replica
/// (`data.redis_wait_replicas` 0): it does not refuse writes without replicas
/// (`min-replicas-to-write` unset, so `min_slaves_good_slaves` is not in the answer). Cut off
/// with some of the service's replicas from its Sentinels and its own replicas, it goes on
/// answering their grants while the Sentinels promote another; when the partition heals it is
/// made a replica of that one, and every write it took meanwhile is gone: grants with tokens
/// issued, and no record, audit entry or notice left of them.
fn cut_off_writes(info: &str) -> Option<String> {
    info_field(info, "min_slaves_good_slaves").is_none().then(|| {
        "redis: with Sentinel and data.redis_wait_replicas 0, a primary cut off from its Sentinels and replicas goes on taking grants that the failover then throws away; set min-replicas-to-write 1 and min-replicas-max-lag 10 on every Redis server (it then refuses writes without a replica, and grants are refused), or data.redis_wait_replicas 1".to_string()
    })
}

/// Why a server whose `INFO memory` answer is `info` cannot hold the store, if it cannot: it
/// evicts keys when it is full (`maxmemory_policy` other than `noeviction`, or not given).
fn evicting(info: &str) -> Option<String> {
    match info_field(info, "maxmemory_policy") {
        Some("noeviction") => None,
        policy => Some(format!(
            "redis: the server evicts keys when it is full (maxmemory-policy {}): used nonces, leases and the audit trail would vanish from it; set maxmemory-policy noeviction (a full server then refuses writes, and grants are refused, never issued unrecorded)",
            policy.unwrap_or("not given by INFO")
        )),
    }
}

/// Why a server whose `INFO memory` answer is `info` refuses writes, if it does: it uses more
/// than its `maxmemory`, counted as Redis counts it (less what it does not count for eviction),
/// and so refuses every script that may write (`conditional`) until it has room.
fn over_maxmemory(info: &str) -> Option<String> {
    let field = |name| info_field(info, name).and_then(|v| v.parse::<u64>().ok());
    let max = field("maxmemory").filter(|m| *m > 0)?;
    let used =
        field("used_memory")?.saturating_sub(field("mem_not_counted_for_evict").unwrap_or(0));
    (used > max).then(|| {
        format!(
            "redis is out of memory (using {used} bytes of its maxmemory {max}): every write is refused until it has room (raise maxmemory, or give it more memory)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a read let through since the last change changes whether reads ask the server: a
    /// read from before the server stopped answering, answered late, does not let every read
    /// ask it again; and while one read asks a quiet server, the others are refused.
    #[tokio::test]
    async fn reads_from_before_the_server_went_quiet_do_not_wake_it() {
        let redis = crate::dev::test_redis().await;
        let store = RedisStore::open(redis.url.as_str(), "q:").unwrap();
        let (first, second) = (store.may_ask().unwrap(), store.may_ask().unwrap());
        store.asked(first, true);
        assert_eq!(store.may_ask(), None, "refused once one found no answer");
        store.asked(second, false);
        assert_eq!(
            store.may_ask(),
            None,
            "a read from before says nothing of it now"
        );
        tokio::time::sleep(QUIET_AFTER_TIMEOUT + std::time::Duration::from_millis(50)).await;
        let asking = store.may_ask().expect("a second on, one read asks");
        assert_eq!(
            store.may_ask(),
            None,
            "the others are refused while it asks"
        );
        store.asked(second, true);
        assert_eq!(store.may_ask(), None, "nor does a late timeout");
        store.asked(asking, false);
        assert_eq!(
            store.may_ask(),
            Some(asking),
            "it answered: every read asks"
        );
    }

    /// Writes (`Some`) or takes out (`None`) a row of `store`'s providers' table on `redis` as
    /// another replica would, past `store`.
    fn another_replicas_provider_rows(
        redis: &crate::dev::TestRedis,
        store: &RedisStore,
    ) -> impl FnMut(&str, Option<&str>) {
        let hash = store.key(PROVIDERS);
        let mut conn = redis.connection();
        move |k, v| {
            let mut cmd = redis::cmd(if v.is_some() { "HSET" } else { "HDEL" });
            cmd.arg(&hash).arg(k);
            if let Some(v) = v {
                cmd.arg(v);
            }
            let _: i64 = cmd.query(&mut conn).unwrap();
        }
    }

    /// A row of `store`'s providers' table as `store` reads it (its copy in memory, or Redis).
    fn provider_row(store: &RedisStore, k: &str) -> Option<String> {
        store
            .get_raw(PROVIDERS, k)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// While a group of the writer's with chain-state rows may yet land (`forget`), those
    /// tables are read from the server each time, however often a row changes there (a copy of
    /// the group landing late); once a later group is written, reads are kept again.
    #[tokio::test(flavor = "multi_thread")]
    async fn chain_state_is_read_from_the_server_until_a_write_not_known_is_settled() {
        let redis = crate::dev::test_redis().await;
        let store = std::sync::Arc::new(RedisStore::open(redis.url.as_str(), "u:").unwrap());
        let mut put = another_replicas_provider_rows(&redis, &store);
        let mut set = move |v: &str| put("k", Some(v));
        let get = |store: &RedisStore| provider_row(store, "k").unwrap();
        set("1");
        assert_eq!(get(&store), "1");
        set("2");
        assert_eq!(get(&store), "1", "kept in memory");
        forget(
            &store.local,
            &vec![(PROVIDERS, "k".to_string(), Some(b"3".to_vec()))],
            false,
        );
        assert_eq!(get(&store), "2", "its copy dropped");
        set("3");
        assert_eq!(get(&store), "3", "not kept while the group may land");
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            writer.apply(Batch {
                nonce: Some(1),
                ..Batch::default()
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(get(&store), "3");
        set("4");
        assert_eq!(get(&store), "3", "kept again once a later group is written");
        // a catch-up's group (every entry re-read) whose outcome is not known: every copy
        // dropped, not only its rows'
        forget(&store.local, &Rows::new(), true);
        assert_eq!(get(&store), "4", "every copy dropped");
    }

    /// A chain-state row another replica wrote is read from Redis again once it has been kept
    /// `READ_KEPT_FOR` (a suspension that replica's follower wrote is seen within it); one this
    /// replica wrote is kept (its own follower writes every change it sees); and a catch-up's
    /// write (`Batch::reread_all`) drops every copy, so that a row another replica took out of
    /// Redis since is not read from memory.
    #[tokio::test(flavor = "multi_thread")]
    async fn chain_state_read_from_redis_is_kept_a_while_and_a_catch_up_drops_every_copy() {
        let redis = crate::dev::test_redis().await;
        let store = std::sync::Arc::new(RedisStore::open(redis.url.as_str(), "k:").unwrap());
        let mut set = another_replicas_provider_rows(&redis, &store);
        let get = provider_row;
        let apply = |batch: Batch| {
            let writer = store.clone();
            tokio::task::spawn_blocking(move || writer.apply(batch))
        };
        // "ours": written by this replica's store; "theirs": another replica's row
        let ours = crate::stacks::Address::new(26, [1; 20]).unwrap();
        let key = ours.to_string();
        let verified = ProviderState::Registered {
            role: crate::domain::Role::Nurse,
            status: crate::domain::ProviderStatus::Verified,
            info_hash: None,
        };
        apply(Batch {
            providers: vec![(ours, Some(verified.clone()))],
            ..Batch::default()
        })
        .await
        .unwrap()
        .unwrap();
        set("theirs", Some("1"));
        assert_eq!(get(&store, "theirs").as_deref(), Some("1"));
        set("theirs", Some("2"));
        set(&key, Some("written by another"));
        assert_eq!(get(&store, "theirs").as_deref(), Some("1"), "kept a while");
        tokio::time::sleep(READ_KEPT_FOR + std::time::Duration::from_millis(100)).await;
        assert_eq!(
            get(&store, "theirs").as_deref(),
            Some("2"),
            "then read again"
        );
        assert_eq!(
            store.provider(&ours).unwrap(),
            Some(verified),
            "its own write kept"
        );
        // another replica takes it out of Redis (a block it found passed); a catch-up lands
        set(&key, None);
        apply(Batch {
            reread_all: Some(crate::store::Tip::new(0, [0; 32])),
            ..Batch::default()
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(store.provider(&ours).unwrap(), None, "read from Redis");
    }

    /// A burst's notices share one due second, more of them than two pages: another replica
    /// closes one of those read (its member removed) before the next page is read, the first
    /// of the page or its last, the one the next page starts after; or writes that last one
    /// again, due later (scored again). Every member never removed is still found, once, and
    /// none not due. Before, the next page was read from an offset within that second, which
    /// the removal had moved past one never read.
    #[tokio::test]
    async fn a_member_removed_between_pages_does_not_hide_another_of_the_same_score() {
        let redis = crate::dev::test_redis().await;
        let store = RedisStore::open(redis.url.as_str(), "d:").unwrap();
        let set = store.key(OPEN_NOTICES);
        let members: Vec<String> = (0..2 * SCAN_PAGE + 50)
            .map(|i| format!("k{i:04}"))
            .collect();
        let mut conn = redis.connection();
        let mut add = |score: u64, member: &str| {
            let _: () = redis::cmd("ZADD")
                .arg(&set)
                .arg(score)
                .arg(member)
                .query(&mut conn)
                .unwrap();
        };
        for m in &members {
            add(100, m);
        }
        // a later one, and one not due
        add(150, "later");
        add(300, "not-due");
        for (removed, rescored) in [(0, false), (SCAN_PAGE - 1, false), (SCAN_PAGE - 1, true)] {
            let mut conn = redis.connection();
            let mut pages = 0;
            let found = store
                .scan_due_paged(OPEN_NOTICES, 200, || {
                    if pages == 0 {
                        let mut change = if rescored {
                            let mut c = redis::cmd("ZADD");
                            c.arg(&set).arg(160);
                            c
                        } else {
                            let mut c = redis::cmd("ZREM");
                            c.arg(&set);
                            c
                        };
                        let () = change.arg(&members[removed]).query(&mut conn).unwrap();
                    }
                    pages += 1;
                })
                .unwrap();
            assert!(pages >= 2, "more than two pages");
            for m in members.iter().chain([&"later".to_string()]) {
                assert!(
                    found.contains(m) || (*m == members[removed] && !rescored),
                    "{m} not found (k{removed:04} removed, or scored again: {rescored})"
                );
            }
            assert!(!found.contains(&"not-due".to_string()));
            let mut sorted = found.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(found, sorted, "in key order, once each");
            // back for the next round
            let _: () = redis::cmd("ZADD")
                .arg(&set)
                .arg(100)
                .arg(&members[removed])
                .query(&mut conn)
                .unwrap();
        }
    }

    #[test]
    fn a_server_that_may_answer_a_write_before_its_sync_is_named() {
        fn config<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        let synced = [
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("no-appendfsync-on-rewrite", "no"),
        ];
        assert_eq!(unsynced(&config(&synced)), None);
        let every_second = [
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("no-appendfsync-on-rewrite", "no"),
        ];
        assert!(unsynced(&config(&every_second)).is_some_and(|w| w.contains("appendfsync always")));
        let not_on_rewrite = [
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("no-appendfsync-on-rewrite", "yes"),
        ];
        assert!(unsynced(&config(&not_on_rewrite))
            .is_some_and(|w| w.contains("no-appendfsync-on-rewrite yes")));
        // settings that could not be read are no promise
        assert!(unsynced(&config(&[])).is_some());
        assert!(unsynced(&config(&synced[..2])).is_some());
    }

    /// A primary that takes writes without a replica is named (Sentinel, no write waiting for
    /// one); one set to refuse them (`min-replicas-to-write`) is not. Read from real servers.
    #[test]
    fn a_primary_that_writes_without_replicas_is_named() {
        let replication = |args: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = crate::dev::redis_server(port, dir.path())
                .args(args)
                .spawn()
                .unwrap();
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let mut info = None;
            for _ in 0..100 {
                if let Ok(mut c) = client.get_connection() {
                    info = redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut c)
                        .ok();
                    if info.is_some() {
                        break;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            info.expect("redis-server answers")
        };
        let alone = replication(&[]);
        assert!(cut_off_writes(&alone).is_some_and(|why| why.contains("min-replicas-to-write")));
        let guarded = replication(&[
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "10",
        ]);
        assert_eq!(cut_off_writes(&guarded), None);
    }

    #[test]
    fn fewer_replicas_online_than_writes_wait_for_are_named() {
        let primary = |replicas: &[&str]| {
            let mut info = format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:{}\r\n",
                replicas.len()
            );
            for (i, state) in replicas.iter().enumerate() {
                info +=
                    &format!("slave{i}:ip=10.0.0.{i},port=6379,state={state},offset=1,lag=0\r\n");
            }
            info + "master_repl_offset:1\r\n"
        };
        assert_eq!(too_few_replicas(&primary(&[]), 0), None, "none waited for");
        assert_eq!(too_few_replicas(&primary(&["online"]), 1), None);
        assert_eq!(too_few_replicas(&primary(&["online", "online"]), 2), None);
        let why = too_few_replicas(&primary(&["online", "wait_bgsave"]), 2).unwrap();
        assert!(why.contains("1 of the server's replicas"), "{why}");
        assert!(too_few_replicas(&primary(&[]), 1).is_some());
        // online, but not acknowledging (hung, cut off): not counted
        let lagging = primary(&["online"]).replace("lag=0", "lag=30");
        assert!(too_few_replicas(&lagging, 1).is_some());
        let slow = primary(&["online"]).replace("lag=0", "lag=5");
        assert_eq!(too_few_replicas(&slow, 1), None);
    }

    #[test]
    fn a_server_before_7_is_too_old_and_a_full_one_says_so() {
        let server =
            |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert!(too_old(&server("6.2.14")).is_some_and(|why| why.contains("6.2.14")));
        assert_eq!(too_old(&server("7.0.15")), None);
        assert_eq!(too_old(&server("7.4.1")), None);
        assert_eq!(too_old("# Server\r\n"), None, "unknown: not refused");
        let memory = |used: u64, max: u64, uncounted: u64| {
            format!("# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\nmaxmemory_human:2M\r\nmem_not_counted_for_evict:{uncounted}\r\n")
        };
        assert_eq!(over_maxmemory(&memory(900, 1000, 0)), None);
        assert!(over_maxmemory(&memory(1100, 1000, 0)).is_some_and(|why| why.contains("1100")));
        assert_eq!(
            over_maxmemory(&memory(1100, 1000, 200)),
            None,
            "as Redis counts it"
        );
        assert_eq!(over_maxmemory(&memory(1100, 0, 0)), None, "no maxmemory");
    }
}

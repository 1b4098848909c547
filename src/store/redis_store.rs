//! The shared store of many replicas: the same tables and rows as the embedded store
//! (`schema.rs`), each table one Redis hash (`<prefix><table>`), every `Batch` one MULTI/EXEC
//! transaction. Durable before it answers only on a server that syncs its append-only file on
//! every write (`appendonly yes`, `appendfsync always`: Redis then syncs once per event loop,
//! a group commit); `open` says so in the log when the server does not.
//!
//! The audit log has one order across every writer: a batch with audit events WATCHes the
//! head, numbers and links its entries after it and writes them with the new head in its
//! transaction; if another writer moved the head meanwhile, EXEC fails and the batch is linked
//! again on the new head.
//!
//! A dropped connection is opened again and the command retried once, so a restarted server is
//! used again as soon as it answers.
//!
//! It must not: answer a write before EXEC returned.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use redis::{Commands, Connection};

use super::reads::RowSource;
use super::schema::*;
use super::writer::{Reply, GROUP_COMMIT_MAX};
use super::*;

/// How many connections read at once (the break-glass path's cache reads, from each runtime
/// thread, and the background tasks').
const READERS: usize = 4;

static READ_TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The chain-state cache's tables, also kept in this process's memory as this replica last
/// wrote or read them: the break-glass path reads them without a round trip. Every block this
/// replica's follower applies (and every fill) writes through here, so a copy is as fresh as
/// the replica's own view of the chain, which the grant already checks (`chain_view`).
const LOCAL: [Table; 5] = [PROVIDERS, PREFERENCES, CONSENTS, RESPONDERS, REVIEWERS];
/// At most this many rows are kept in memory (then they are dropped and read again).
const LOCAL_MAX: usize = 200_000;

/// The local copy, and how many writes changed it (a read from Redis is kept only if none
/// did while it read: it could be older than the write).
#[derive(Default)]
struct LocalRows {
    rows: std::collections::HashMap<(Table, String), Vec<u8>>,
    writes: u64,
}

type Local = std::sync::Arc<std::sync::RwLock<LocalRows>>;

/// Applies written rows to the local copy.
fn remember(local: &Local, rows: &Rows) {
    if !rows.iter().any(|(table, _, _)| LOCAL.contains(table)) {
        return;
    }
    let mut guard = local.write().unwrap_or_else(|e| e.into_inner());
    guard.writes += 1;
    let map = &mut guard.rows;
    for (table, key, value) in rows {
        if !LOCAL.contains(table) {
            continue;
        }
        match value {
            Some(v) => {
                if map.len() >= LOCAL_MAX {
                    map.clear();
                }
                map.insert((*table, key.clone()), v.clone());
            }
            None => {
                map.remove(&(*table, key.clone()));
            }
        }
    }
}

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    local: Local,
    /// Connections for reads, each used by one reader at a time.
    reads: Vec<Mutex<Option<Connection>>>,
    writer: Option<mpsc::Sender<(Batch, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// Runs `f` on the connection in `slot`, opening it if needed; a dropped connection is opened
/// again and `f` retried once.
fn with<T>(
    client: &redis::Client,
    slot: &mut Option<Connection>,
    mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
) -> Result<T, StoreError> {
    for attempt in 0..2 {
        if slot.is_none() {
            *slot = Some(client.get_connection().map_err(redis_err)?);
        }
        let Some(conn) = slot.as_mut() else {
            continue;
        };
        match f(conn) {
            Ok(v) => return Ok(v),
            Err(e)
                if attempt == 0
                    && (e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_unrecoverable_error()) =>
            {
                *slot = None;
            }
            Err(e) => return Err(redis_err(e)),
        }
    }
    Err(StoreError::Backend(
        "redis: the connection could not be opened again".into(),
    ))
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://host:port/db`), keeping every table under
    /// `prefix` (so that one server can hold several stores).
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let mut reads = None;
        let config: Vec<String> = with(&client, &mut reads, |c| {
            redis::cmd("CONFIG").arg("GET").arg("append*").query(c)
        })
        .unwrap_or_default();
        let setting = |name: &str| {
            config
                .chunks(2)
                .find(|kv| kv[0] == name)
                .map(|kv| kv.get(1).cloned().unwrap_or_default())
        };
        if setting("appendonly").as_deref() != Some("yes")
            || setting("appendfsync").as_deref() != Some("always")
        {
            tracing::warn!(
                "the Redis server does not sync every write (appendonly yes, appendfsync always): an acknowledged write can be lost if it stops"
            );
        }
        let (writer, jobs) = mpsc::channel::<(Batch, Reply)>();
        let local = Local::default();
        let write_local = local.clone();
        let write_client = client.clone();
        let write_prefix = prefix.to_string();
        let thread = std::thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || {
                let mut w = Writer::new(write_local);
                while let Ok(first) = jobs.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(jobs.try_iter().take(GROUP_COMMIT_MAX - 1));
                    write_group(&write_client, &mut w, &write_prefix, waiting);
                }
            })
            .map_err(backend)?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            local,
            reads: std::iter::once(Mutex::new(reads))
                .chain((1..READERS).map(|_| Mutex::new(None)))
                .collect(),
            writer: Some(writer),
            thread: Some(thread),
        })
    }

    fn key(&self, table: Table) -> String {
        format!("{}{table}", self.prefix)
    }

    fn read<T>(
        &self,
        f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
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
        with(&self.client, &mut slot, f)
    }
}

/// Where lease `name` is kept (`coordination`), under the store's `prefix`: a hash of its
/// holder and fencing token, gone when the lease lapses.
pub fn lease_key(prefix: &str, name: &str) -> String {
    format!("{prefix}lease:{name}")
}

/// A script that runs `checks` (which return early when a condition fails), then writes the
/// rows passed after its first `rows_from - 1` keys and `rows_from` arguments (`push_rows`),
/// and returns `done`: one atomic step on the server.
fn conditional(checks: &str, rows_from: usize, done: &str) -> redis::Script {
    redis::Script::new(&format!(
        r"{checks}
for i = {rows_from}, #KEYS do
  local j = {rows_from} + 1 + 3 * (i - {rows_from})
  if ARGV[j] == 's' then redis.call('HSET', KEYS[i], ARGV[j + 1], ARGV[j + 2])
  else redis.call('HDEL', KEYS[i], ARGV[j + 1]) end
end
return {done}
"
    ))
}

/// Adds `rows` to a `conditional` script's call: each a key (its table's hash) and three
/// arguments (set or delete, the row's key, its value).
fn push_rows(call: &mut redis::ScriptInvocation<'_>, prefix: &str, rows: &Rows) {
    for (table, key, value) in rows {
        call.key(format!("{prefix}{table}"));
        match value {
            Some(v) => call.arg("s").arg(key).arg(v.as_slice()),
            None => call.arg("d").arg(key).arg(""),
        };
    }
}

/// A guarded batch: the lease's token and the operation's row are checked, and the rows
/// written. 0: written; 1: fenced; 2: changed.
fn guarded_script() -> redis::Script {
    conditional(
        r"if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 1 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 2 end",
        3,
        "0",
    )
}

/// A group of rows linked on the audit head the writer expects: written ({0, ''}) only if the
/// head is still that one, else {1, the head as it is} (another replica wrote), to link again
/// on it.
fn linked_script() -> redis::Script {
    conditional(
        r"local head = redis.call('HGET', KEYS[1], ARGV[2]) or ''
if head ~= ARGV[1] then return {1, head} end",
        2,
        "{0, ''}",
    )
}

fn guarded(
    client: &redis::Client,
    w: &mut Writer,
    prefix: &str,
    guard: &Guard,
    rows: &Rows,
) -> Result<(), StoreError> {
    let (lease, token) = match &guard.fence {
        Some((name, token)) => (lease_key(prefix, name), token.to_string()),
        None => (format!("{prefix}lease:"), String::new()),
    };
    let (id, expected) = match &guard.submission {
        Some(s) => (s.id.clone(), enc(s)?),
        None => (String::new(), Vec::new()),
    };
    let answer: i64 = with(client, &mut w.conn, |c| {
        let mut call = w.guarded.prepare_invoke();
        call.key(&lease)
            .key(format!("{prefix}{SUBMISSIONS}"))
            .arg(&token)
            .arg(&id)
            .arg(expected.as_slice());
        push_rows(&mut call, prefix, rows);
        call.invoke(c)
    })?;
    match answer {
        0 => Ok(()),
        1 => Err(StoreError::Guarded(Guarded::Fenced)),
        _ => Err(StoreError::Guarded(Guarded::Changed)),
    }
}

/// The batches waiting for the writer, in order: each run of unguarded ones as one
/// transaction (one append-only-file sync for all of them: a group commit; every caller in it
/// gets its result), each guarded one alone (its conditions are its own).
fn write_group(client: &redis::Client, w: &mut Writer, prefix: &str, waiting: Vec<(Batch, Reply)>) {
    let mut group = Batch::default();
    let mut replies = Vec::new();
    let flush = |group: &mut Batch, replies: &mut Vec<Reply>, w: &mut Writer| {
        if replies.is_empty() {
            return;
        }
        let result = write(client, w, prefix, &std::mem::take(group));
        for reply in replies.drain(..) {
            reply.send(result.clone());
        }
    };
    for (batch, reply) in waiting {
        if batch.guard.is_some() {
            flush(&mut group, &mut replies, w);
            reply.send(write(client, w, prefix, &batch));
        } else {
            group.merge(batch);
            replies.push(reply);
        }
    }
    flush(&mut group, &mut replies, w);
}

/// The writer thread's connection and what it knows of the audit head (the encoded head it
/// last wrote or read: a replica's own writes need no read of it).
pub(super) struct Writer {
    conn: Option<Connection>,
    head: Option<Vec<u8>>,
    linked: redis::Script,
    guarded: redis::Script,
    local: Local,
}

impl Writer {
    fn new(local: Local) -> Writer {
        Writer {
            conn: None,
            head: None,
            linked: linked_script(),
            guarded: guarded_script(),
            local,
        }
    }
}

/// One batch (or group), one round trip: a transaction, or, with audit events, the script
/// that writes them linked on the head it expects (linked again when another writer moved it).
/// What it wrote is remembered in the local copy.
fn write(
    client: &redis::Client,
    w: &mut Writer,
    prefix: &str,
    batch: &Batch,
) -> Result<(), StoreError> {
    let base = rows_of(batch)?;
    write_rows(client, w, prefix, batch, &base)?;
    remember(&w.local, &base);
    Ok(())
}

fn write_rows(
    client: &redis::Client,
    w: &mut Writer,
    prefix: &str,
    batch: &Batch,
    base: &Rows,
) -> Result<(), StoreError> {
    if let Some(guard) = &batch.guard {
        if !batch.audit.is_empty() {
            return Err(backend("a guarded batch cannot carry audit events"));
        }
        return guarded(client, w, prefix, guard, base);
    }
    if batch.audit.is_empty() {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (table, key, value) in base {
            let hash = format!("{prefix}{table}");
            match value {
                Some(v) => pipe.hset(hash, key, v.as_slice()).ignore(),
                None => pipe.hdel(hash, key).ignore(),
            };
        }
        return with(client, &mut w.conn, |c| pipe.query::<()>(c));
    }
    let meta = format!("{prefix}{META}");
    if w.head.is_none() {
        let head: Option<Vec<u8>> = with(client, &mut w.conn, |c| c.hget(&meta, AUDIT_HEAD))?;
        w.head = Some(head.unwrap_or_default());
    }
    loop {
        let expected = w.head.clone().unwrap_or_default();
        let mut head = if expected.is_empty() {
            crate::audit::Head::default()
        } else {
            dec(AUDIT_HEAD, &expected)?
        };
        let mut rows = base.clone();
        audit_rows(&mut head, &batch.audit, &mut rows)?;
        let new_head = enc(&head)?;
        let (moved, current): (i64, Vec<u8>) = with(client, &mut w.conn, |c| {
            let mut call = w.linked.prepare_invoke();
            call.key(&meta).arg(expected.as_slice()).arg(AUDIT_HEAD);
            push_rows(&mut call, prefix, &rows);
            call.invoke(c)
        })
        .inspect_err(|_| w.head = None)?;
        if moved == 0 || current == new_head {
            // (the second: a retry after a lost answer finds its own write done)
            w.head = Some(new_head);
            return Ok(());
        }
        // another replica appended meanwhile: link after its entries
        w.head = Some(current);
    }
}

impl RowSource for RedisStore {
    fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let local = LOCAL.contains(&table);
        let mut writes = 0;
        if local {
            let copy = self.local.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = copy.rows.get(&(table, key.to_string())) {
                return Ok(Some(v.clone()));
            }
            writes = copy.writes;
        }
        let hash = self.key(table);
        let value: Option<Vec<u8>> = self.read(|c| c.hget(&hash, key))?;
        if let (true, Some(v)) = (local, &value) {
            let mut copy = self.local.write().unwrap_or_else(|e| e.into_inner());
            if copy.writes == writes && copy.rows.len() < LOCAL_MAX {
                copy.rows.insert((table, key.to_string()), v.clone());
            }
        }
        Ok(value)
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let hash = self.key(table);
        let all: BTreeMap<String, Vec<u8>> = self.read(|c| c.hgetall(&hash))?;
        Ok(all.into_iter().collect())
    }

    fn scan_from(
        &self,
        table: Table,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let hash = self.key(table);
        let mut keys: Vec<String> = self.read(|c| c.hkeys(&hash))?;
        keys.retain(|k| k.as_str() >= start);
        keys.sort();
        keys.truncate(limit);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> =
            self.read(|c| redis::cmd("HMGET").arg(&hash).arg(&keys).query(c))?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }
}

impl Store for RedisStore {
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.writer
            .as_ref()
            .ok_or_else(|| backend("the store is closed"))?
            .send((batch, Reply::Blocking(reply)))
            .map_err(|_| backend("the store's writer stopped"))?;
        answer
            .recv()
            .map_err(|_| backend("the store's writer stopped"))?
    }

    fn apply_then(&self, batch: Batch, done: Done) {
        if let Some(w) = &self.writer {
            // if the writer is gone, `done` is dropped with the job and the caller sees it
            let _ = w.send((batch, Reply::Async(done)));
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
}

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
use super::writer::Reply;
use super::*;

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    reads: Mutex<Option<Connection>>,
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
        let write_client = client.clone();
        let write_prefix = prefix.to_string();
        let thread = std::thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || {
                let mut conn = None;
                for (batch, reply) in jobs {
                    reply.send(write(&write_client, &mut conn, &write_prefix, &batch));
                }
            })
            .map_err(backend)?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            reads: Mutex::new(reads),
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
        let mut slot = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        with(&self.client, &mut slot, f)
    }
}

/// Where lease `name` is kept (`coordination`), under the store's `prefix`: a hash of its
/// holder and fencing token, gone when the lease lapses.
pub fn lease_key(prefix: &str, name: &str) -> String {
    format!("{prefix}lease:{name}")
}

/// A guarded batch: the lease's token and the operation's row are checked, and the rows
/// written, in one script (atomic on the server). 0: written; 1: fenced; 2: changed.
const GUARDED: &str = r"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 1 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 2 end
for i = 3, #KEYS do
  local j = 4 + 3 * (i - 3)
  if ARGV[j] == 's' then redis.call('HSET', KEYS[i], ARGV[j + 1], ARGV[j + 2])
  else redis.call('HDEL', KEYS[i], ARGV[j + 1]) end
end
return 0
";

fn guarded(
    client: &redis::Client,
    conn: &mut Option<Connection>,
    prefix: &str,
    guard: &Guard,
    rows: &Rows,
) -> Result<(), StoreError> {
    let script = redis::Script::new(GUARDED);
    let (lease, token) = match &guard.fence {
        Some((name, token)) => (lease_key(prefix, name), token.to_string()),
        None => (format!("{prefix}lease:"), String::new()),
    };
    let (id, expected) = match &guard.submission {
        Some(s) => (s.id.clone(), enc(s)?),
        None => (String::new(), Vec::new()),
    };
    let answer: i64 = with(client, conn, |c| {
        let mut call = script.prepare_invoke();
        call.key(&lease)
            .key(format!("{prefix}{SUBMISSIONS}"))
            .arg(&token)
            .arg(&id)
            .arg(expected.as_slice());
        for (table, key, value) in rows {
            call.key(format!("{prefix}{table}"));
            match value {
                Some(v) => call.arg("s").arg(key).arg(v.as_slice()),
                None => call.arg("d").arg(key).arg(""),
            };
        }
        call.invoke(c)
    })?;
    match answer {
        0 => Ok(()),
        1 => Err(StoreError::Guarded(Guarded::Fenced)),
        _ => Err(StoreError::Guarded(Guarded::Changed)),
    }
}

/// One batch, one transaction; batches with audit events linked on the head as EXEC finds it.
fn write(
    client: &redis::Client,
    conn: &mut Option<Connection>,
    prefix: &str,
    batch: &Batch,
) -> Result<(), StoreError> {
    let base = rows_of(batch)?;
    if let Some(guard) = &batch.guard {
        if !batch.audit.is_empty() {
            return Err(backend("a guarded batch cannot carry audit events"));
        }
        return guarded(client, conn, prefix, guard, &base);
    }
    let meta = format!("{prefix}{META}");
    loop {
        let done: Option<()> = with(client, conn, |c| {
            let mut rows = base.clone();
            if !batch.audit.is_empty() {
                redis::cmd("WATCH").arg(&meta).query::<()>(c)?;
                let head: Option<Vec<u8>> = c.hget(&meta, AUDIT_HEAD)?;
                let mut head = match head {
                    Some(bytes) => dec(AUDIT_HEAD, &bytes).map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "audit head",
                            e.to_string(),
                        ))
                    })?,
                    None => crate::audit::Head::default(),
                };
                audit_rows(&mut head, &batch.audit, &mut rows).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Client, "audit rows", e.to_string()))
                })?;
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (table, key, value) in &rows {
                let hash = format!("{prefix}{table}");
                match value {
                    Some(v) => pipe.hset(hash, key, v.as_slice()).ignore(),
                    None => pipe.hdel(hash, key).ignore(),
                };
            }
            // EXEC answers nil when a WATCHed key changed: linked again on the new head
            let answered: Option<()> = pipe.query(c)?;
            Ok(answered)
        })?;
        if done.is_some() || batch.audit.is_empty() {
            return Ok(());
        }
    }
}

impl RowSource for RedisStore {
    fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = self.key(table);
        self.read(|c| c.hget(&hash, key))
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

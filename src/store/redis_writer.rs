//! The Redis store's writer: one task, on a thread and runtime of its own, that takes every
//! batch waiting and writes them as groups, each one script (`redis_store::conditional`) and
//! one round trip, on one connection to the primary.
//!
//! Up to `WINDOW` groups are in flight on that connection at once, and under a light load up
//! to `LIGHT_WINDOW` (while they hold few batches): a batch that arrives while a group is on
//! its way is sent at once, behind it on the same connection (Redis runs one connection's
//! commands in the order they came), instead of waiting for that group's answer before its own
//! round trip starts. Under a heavy load the batches that come meanwhile wait, to go as one
//! group (one script call for many). A group sent behind another is written only if that one
//! was (`after`: the writer's mark holds its number), so that none lands out of order or
//! linked on a head its predecessor did not leave. Answers are taken in the order sent. When a
//! group is not written as sent (its claims did not hold, another replica moved the audit
//! head, its predecessor was not written), nothing more is sent until every group in flight
//! is answered; then those not written are sent again, in their order, before anything newer.
//!
//! A connection that drops, or a group whose answer does not come within the write's wait, is
//! opened again (on the primary as it is then) and every group in flight sent again on it,
//! with their numbers, once: the writer's mark makes a copy the server already wrote answer
//! `written already`, and a copy the server reads late from the dropped connection a no-op.
//! With `Acknowledgement`, one group is in flight at a time, and each is waited on (`WAIT`,
//! on the connection that wrote it) before its callers are answered. After a `WAIT` that came
//! back short, groups are refused unwritten, at once, while the server has too few replicas
//! (`Writer::replicas_short`).
//!
//! It must not: answer a write before the server (and the replicas it needs) did; send a group
//! again that an answer said was written.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;

use super::redis_primary::{must_reconnect, Primary};
use super::redis_store::{
    fence_args, forget, guarded_script, invocation, linked_script, numbered, plain_script,
    push_rows, redis_err, remember, too_few_replicas, Local, CONNECT_TIMEOUT, NONCES, RATES,
    WRITE_TIMEOUT,
};
use super::schema::*;
use super::writer::{Reply, GROUP_COMMIT_MAX};
use super::*;

/// How many groups the writer has sent and not had answered, at most, under a heavy load:
/// two, so that a batch never waits for a whole round trip behind the group in flight, while
/// the batches that come meanwhile wait to go together (one script call for many: a call costs
/// Redis about as much as the grants in it, and many small ones would take the peak down).
const WINDOW: usize = 2;

/// Under a light load more go: while the batches in flight, with the next group's, are at most
/// `LIGHT_BATCHES`, up to `LIGHT_WINDOW` groups. A batch then goes at once, as the floor's
/// write does, not held behind two groups waiting out a slow sync (on an `appendfsync always`
/// server every batch that reached it meanwhile shares the next sync). A group not written as
/// sent then has up to seven behind it sent again (a replayed nonce, another replica's write to
/// the audit head): each a script call that writes nothing.
const LIGHT_BATCHES: usize = 8;
const LIGHT_WINDOW: usize = 8;

/// How long the writer's end waits for its mark's removal (`Writer::retire_mark`): a store's
/// close waits for it.
const MARK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a group of `next` batches may be sent behind `groups` groups in flight that hold
/// `batches` batches in all: while fewer than `WINDOW` are; beyond, while the batches in flight
/// with its own are at most `light_batches`, up to `LIGHT_WINDOW` groups.
fn room_for(groups: usize, batches: usize, next: usize, light_batches: usize) -> bool {
    groups < WINDOW || (groups < LIGHT_WINDOW && batches + next <= light_batches)
}

/// A batch to write, who waits for it, and when it was handed to the writer (taken when it is
/// first sent: its wait is counted once, not again when it is sent again).
pub(super) type Job = (Batch, Reply, Option<Instant>);

/// What one script writes: a run of batches without a guard, or one guarded batch.
type Unit = Vec<Job>;

/// How many of the server's replicas must have a write before it counts as done (`WAIT`
/// after every write), and how long to wait for them. With none (the default) a write is done
/// once the server synced it to its own append-only file. A write the replicas did not
/// acknowledge in time is an error for its callers (no token is issued on it), although the
/// server has it: it is kept, and replicated once they are back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acknowledgement {
    pub replicas: u32,
    pub timeout_ms: u64,
}

impl Acknowledgement {
    /// How long the writer waits for a command's answer (a group's script, then its `WAIT`,
    /// each) before it drops the connection (and sends again on a new one, found anew: a
    /// Sentinel names the primary as it is now). A `WAIT` that its replicas do not answer
    /// returns after `timeout_ms`, well within it.
    fn write_wait(&self) -> std::time::Duration {
        WRITE_TIMEOUT + std::time::Duration::from_millis(self.timeout_ms)
    }
}

/// Which script a group is, and for a linked one the head it was linked on and the head it
/// leaves.
enum Kind {
    Plain,
    Guarded,
    Linked { expected: Vec<u8>, leaves: Vec<u8> },
}

/// A group sent and not yet answered.
struct Sent {
    unit: Unit,
    rows: Rows,
    kind: Kind,
    number: u64,
    /// The audit head as the groups sent before it leave it (`Writer::head` when it was sent).
    base: Option<Vec<u8>>,
    /// The group in flight before it when it was sent (0: none).
    after: u64,
    script: Arc<redis::Script>,
    call: Call,
    /// Whether this is the copy sent again on a new connection (there is no third).
    again: bool,
    started: Instant,
    answer: tokio::task::JoinHandle<redis::RedisResult<(i64, Vec<u8>)>>,
}

/// The writer's connection, what it knows of the audit head, and its groups: waiting to be
/// sent, in flight, and not written as sent (to be sent again once none is in flight).
pub(super) struct Writer {
    primary: Primary,
    prefix: String,
    conn: Option<MultiplexedConnection>,
    /// The encoded audit head as the groups sent leave it (a replica's own writes need no
    /// read of it); `None`: read it before the next linked group.
    head: Option<Vec<u8>>,
    /// This writer's field in `META` (`written:<replica>:<random>`, one per writer, taken out
    /// at its end unless a copy of a group may still reach the server: `retire_mark`) and the
    /// number of the last group it sent (each group its own, whatever its answer; a copy sent
    /// again has its number): what the mark is checked against.
    mark: String,
    groups: u64,
    linked: Arc<redis::Script>,
    guarded: Arc<redis::Script>,
    plain: Arc<redis::Script>,
    local: Local,
    acknowledgement: Acknowledgement,
    metrics: GroupMetrics,
    ready: VecDeque<Unit>,
    flight: VecDeque<Sent>,
    again: Vec<Unit>,
    /// Whether a group in flight was not written (nor, then, will those behind it be): nothing
    /// more is sent until every one is answered.
    stalled: bool,
    /// `LIGHT_BATCHES` (0 in tests of a heavy load: `WINDOW` groups at most).
    light_batches: usize,
    /// Whether a connection was dropped (a write or read on it failed or timed out): a copy
    /// of a group sent on it may still reach the server (read late), so the mark stays at the
    /// writer's end, to keep that copy from landing.
    dropped: bool,
    /// Whether the last `WAIT` came back with fewer replicas than needed: until the server
    /// has them connected and acknowledging again, a group is answered at once, not written
    /// (`replicas_short`), rather than written and waited on for nothing.
    short: bool,
}

impl Writer {
    pub(super) fn new(
        primary: Primary,
        prefix: &str,
        local: Local,
        acknowledgement: Acknowledgement,
        metrics: GroupMetrics,
    ) -> Writer {
        // random: a process started again (in a container, with the same host name and pid)
        // must not take an old mark for its own
        let run: u64 = secp256k1::rand::random();
        Writer {
            primary,
            prefix: prefix.to_string(),
            conn: None,
            head: None,
            mark: format!("written:{}:{run:016x}", crate::coordination::replica_id()),
            groups: 0,
            linked: Arc::new(linked_script()),
            guarded: Arc::new(guarded_script()),
            plain: Arc::new(plain_script()),
            local,
            acknowledgement,
            metrics,
            ready: VecDeque::new(),
            flight: VecDeque::new(),
            again: Vec::new(),
            stalled: false,
            light_batches: LIGHT_BATCHES,
            dropped: false,
            short: false,
        }
    }

    /// Lets the connection go (a new one is opened for the next command).
    fn drop_connection(&mut self) {
        self.conn = None;
        self.dropped = true;
    }

    /// At the writer's end (every group answered, no sender left): its mark taken out of
    /// `META`, on the connection that wrote it, so that a writer that ends on a steady server
    /// leaves no field behind. Kept when the writer ever dropped a connection (a copy of a group
    /// may still reach the server from it: the mark keeps that copy from landing twice; a copy's
    /// record of retired numbers, `<mark>:refused`, exists only then). Not waited on for long:
    /// a server that does not answer within `MARK_WAIT` keeps it (nothing depends on its going).
    async fn retire_mark(&mut self) {
        // (no connection: none ever opened, so no mark written)
        let Some(mut conn) = self.conn.clone().filter(|_| !self.dropped) else {
            return;
        };
        let gone = tokio::time::timeout(
            MARK_WAIT,
            redis::cmd("HDEL")
                .arg(format!("{}{META}", self.prefix))
                .arg(&self.mark)
                .query_async::<i64>(&mut conn),
        )
        .await;
        if !matches!(gone, Ok(Ok(_))) {
            tracing::debug!("redis: the writer's mark stays");
        }
    }

    /// Whether another group (`ready`'s first) may be sent now: not behind one not written as
    /// sent; one at a time when each write waits for the server's replicas (`Acknowledgement`);
    /// else as `room_for` says.
    fn room(&self) -> bool {
        if !self.again.is_empty() || self.stalled {
            return false;
        }
        let groups = self.flight.len();
        if self.acknowledgement.replicas > 0 {
            return groups == 0;
        }
        room_for(
            groups,
            self.flight.iter().map(|s| s.unit.len()).sum(),
            self.ready.front().map_or(1, Vec::len),
            self.light_batches,
        )
    }

    /// Takes `first` and the jobs waiting behind it into the groups to send: a run of batches
    /// without a guard joins the last group waiting if that one has none either.
    fn take(&mut self, first: Job, jobs: &mut tokio::sync::mpsc::UnboundedReceiver<Job>) {
        let mut job = Some(first);
        let mut taken = 0;
        while let Some(j) = job.take() {
            let joins = j.0.guard.is_none()
                && self.ready.back().is_some_and(|u| {
                    u.len() < GROUP_COMMIT_MAX && u.iter().all(|(b, _, _)| b.guard.is_none())
                });
            match self.ready.back_mut() {
                Some(unit) if joins => unit.push(j),
                _ => self.ready.push_back(vec![j]),
            }
            taken += 1;
            if taken < GROUP_COMMIT_MAX {
                job = jobs.try_recv().ok();
            }
        }
    }

    /// The connection, opened if there is none (to the primary as it is now).
    async fn connection(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.acknowledgement.write_wait()));
        let client = self.primary.client_async().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// The audit head as the server has it.
    async fn read_head(&mut self) -> Result<Vec<u8>, StoreError> {
        let meta = format!("{}{META}", self.prefix);
        for attempt in 0..2 {
            let mut conn = self.connection().await.map_err(redis_err)?;
            let read: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("HGET")
                .arg(&meta)
                .arg(AUDIT_HEAD)
                .query_async(&mut conn)
                .await;
            match read {
                Ok(head) => return Ok(head.unwrap_or_default()),
                Err(e) if must_reconnect(&e) && attempt == 0 => self.drop_connection(),
                Err(e) => {
                    if must_reconnect(&e) {
                        self.drop_connection();
                    }
                    return Err(redis_err(e));
                }
            }
        }
        Err(backend("redis: the audit head could not be read"))
    }

    /// Sends `unit` as one group, behind those in flight; a unit that cannot be (its batches
    /// malformed, the server away) is answered with why.
    async fn send(&mut self, mut unit: Unit) {
        let now = Instant::now();
        for queued in unit.iter_mut().filter_map(|(_, _, queued)| queued.take()) {
            let waited = now.saturating_duration_since(queued);
            self.metrics.waits.observe(waited.as_secs_f64());
        }
        if let Err(e) = self.replicas_short().await {
            return answer_all(unit, Err(e));
        }
        let base = self.head.clone();
        let prepared = self.prepare(&unit).await;
        let (kind, rows, script, call) = match prepared {
            Ok(p) => p,
            Err(e) => return answer_all(unit, Err(e)),
        };
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                if let Kind::Linked { .. } = kind {
                    self.head = None;
                }
                return answer_all(unit, Err(redis_err(e)));
            }
        };
        if let Kind::Linked { leaves, .. } = &kind {
            self.head = Some(leaves.clone());
        }
        let number = self.groups;
        let after = self.behind();
        let answer = tokio::spawn(eval(conn, Arc::new(call.cmd(&script)), script.clone()));
        self.flight.push_back(Sent {
            unit,
            rows,
            kind,
            number,
            base,
            after,
            script,
            call,
            again: false,
            started: now,
            answer,
        });
    }

    /// The group's script and its call: its rows (each table's together, `META`'s last, so
    /// that the mark is set with them), and for audit events, their entries linked on the head
    /// the groups sent leave. Numbers the group.
    async fn prepare(
        &mut self,
        unit: &Unit,
    ) -> Result<(Kind, Rows, Arc<redis::Script>, Call), StoreError> {
        let batches: Vec<&Batch> = unit.iter().map(|(b, _, _)| b).collect();
        let mut base = Rows::new();
        for batch in &batches {
            base.extend(rows_of(batch)?);
        }
        base.sort_by_key(|(table, _, _)| (*table == META, *table));
        let audit: Vec<&crate::audit::Record> = batches.iter().flat_map(|b| &b.audit).collect();
        let claims: Vec<&Claim> = batches.iter().flat_map(|b| &b.claims).collect();
        let verdicts: Vec<String> = batches
            .iter()
            .flat_map(|b| &b.verdicts)
            .map(Verdict::key)
            .collect();
        let guard = batches.iter().find_map(|b| b.guard.as_ref());
        if guard.is_some() && batches.len() > 1 {
            return Err(backend("a guarded batch is written alone"));
        }
        let prefix = self.prefix.clone();
        // a batch with audit events under a guard (a lease, operations as read or not there
        // yet, the follow-up's place, the tip or a replica's row) is linked, its guard checked
        // there
        let (fence, guarded, field, place) = match guard {
            Some(g) if !audit.is_empty() && claims.is_empty() => {
                if g.paging.is_some() {
                    // the linked script checks no paging row: refused, not written unchecked
                    return Err(backend(
                        "a batch guarded by a paging row is written without audit events",
                    ));
                }
                // (the table is `SUBMISSIONS`: a paging row is refused above)
                let (_, rows, field, place) = guarded_rows(g)?;
                (g.fence.as_ref(), rows, field, place)
            }
            Some(g) => {
                if !claims.is_empty() {
                    return Err(backend("a guarded batch is written without claims"));
                }
                let (lease, token, holder) = fence_args(&prefix, g.fence.as_ref());
                let (table, rows, field, place) = guarded_rows(g)?;
                let mut call = self.call(2, 5 + 2 * rows.len());
                call.key(&lease)
                    .key(format!("{prefix}{table}"))
                    .arg(&token)
                    .arg(holder)
                    .arg(field)
                    .arg(place.unwrap_or_default().as_slice())
                    .arg(rows.len());
                for (id, expected) in &rows {
                    call.arg(id).arg(expected.as_slice());
                }
                push_rows(&mut call, &prefix, &base);
                return Ok((Kind::Guarded, base, self.guarded.clone(), call));
            }
            None => (None, Vec::new(), String::new(), None),
        };
        if audit.is_empty() {
            if !claims.is_empty() || !verdicts.is_empty() {
                // (a claim is known taken by its own write when the audit head moved with
                // it, and a verdict is checked by the linked write)
                return Err(backend(
                    "a batch with claims or a verdict carries its audit events",
                ));
            }
            let mut call = self.call(0, 0);
            push_rows(&mut call, &prefix, &base);
            return Ok((Kind::Plain, base, self.plain.clone(), call));
        }
        let expected = match self.head.clone() {
            Some(head) => head,
            None => {
                let head = self.read_head().await?;
                self.head = Some(head.clone());
                head
            }
        };
        let mut head = if expected.is_empty() {
            crate::audit::Head::default()
        } else {
            // one this version cannot read is read again for the next group (another replica
            // may write it anew), not kept to fail every group after this one
            dec(AUDIT_HEAD, &expected).inspect_err(|_| self.head = None)?
        };
        let mut linked = Rows::new();
        audit_rows(&mut head, &audit, &mut linked)?;
        let leaves = enc(&head)?;
        let (lease, token, holder) = fence_args(&prefix, fence);
        let mut call = self.call(5, 9 + 5 * claims.len() + verdicts.len() + 2 * guarded.len());
        call.key(format!("{prefix}{NONCES}"))
            .key(format!("{prefix}{RATES}"))
            .key(format!("{prefix}{VERDICTS}"))
            .key(&lease)
            .key(format!("{prefix}{SUBMISSIONS}"))
            .arg(expected.as_slice())
            .arg(AUDIT_HEAD)
            .arg(claims.len());
        for claim in &claims {
            call.arg(&claim.nonce)
                .arg(claim.keep_secs)
                .arg(&claim.clinician)
                .arg(claim.emission_ms)
                .arg(claim.burst_ms);
        }
        call.arg(verdicts.len());
        for access in &verdicts {
            call.arg(access);
        }
        call.arg(&token).arg(holder).arg(guarded.len());
        for (id, expected) in &guarded {
            call.arg(id).arg(expected.as_slice());
        }
        call.arg(field).arg(place.unwrap_or_default().as_slice());
        push_rows(&mut call, &prefix, &base);
        push_rows(&mut call, &prefix, &linked);
        Ok((
            Kind::Linked { expected, leaves },
            base,
            self.linked.clone(),
            call,
        ))
    }

    /// A new group's call: numbered, and written only after the group in flight before it.
    fn call(&mut self, keys: usize, args: usize) -> Call {
        self.groups += 1;
        invocation(
            &self.prefix,
            (&self.mark, self.groups, self.behind()),
            keys,
            args,
        )
    }

    /// The group a new one is sent behind: the last in flight (0: none).
    fn behind(&self) -> u64 {
        self.flight.back().map_or(0, |s| s.number)
    }

    /// Takes the answer of the first group in flight.
    async fn answered(&mut self, sent: Sent, answer: redis::RedisResult<(i64, Vec<u8>)>) {
        // a write acknowledged by replicas is timed with its `WAIT` (below)
        let started = sent.started;
        let waits = self.acknowledgement.replicas > 0 && matches!(answer, Ok((0 | 3, _)));
        if !waits {
            self.metrics.writes.observe(started.elapsed().as_secs_f64());
        }
        self.metrics.batches.observe(sent.unit.len() as f64);
        let (code, detail) = match answer {
            Ok(a) => a,
            Err(e) if !sent.again && (must_reconnect(&e) || e.is_timeout()) => {
                return self.send_again(sent).await;
            }
            Err(e) => {
                if must_reconnect(&e) || e.is_timeout() {
                    self.drop_connection();
                }
                // whether it was written is not known: the head is read again, its rows too
                self.head = None;
                self.stalled = true;
                forget(&self.local, &sent.rows, rereads_all(&sent.unit));
                return answer_all(sent.unit, Err(redis_err(e)));
            }
        };
        let Sent {
            unit,
            rows,
            kind,
            base,
            ..
        } = sent;
        if !matches!(code, 0 | 3) {
            // the first not written: the head is as the groups before it left it (those behind
            // it answer 5 and leave it so); the answers below may say more
            if !self.stalled {
                self.head = base;
            }
            self.stalled = true;
        }
        match (code, kind) {
            // written, or found written by a copy sent again (the head may have moved since:
            // the next write finds out)
            (0 | 3, _) => {
                remember(&self.local, &rows, rereads_all(&unit));
                let acknowledged = self.acknowledged().await;
                if waits {
                    self.metrics.writes.observe(started.elapsed().as_secs_f64());
                }
                answer_all(unit, acknowledged);
            }
            // the group before it was not written: neither was this one (6: a copy of it sent
            // again was refused, and retired its number)
            (5 | 6, _) => self.again.push(unit),
            (1, Kind::Guarded) => answer_all(unit, Err(StoreError::Guarded(Guarded::Fenced))),
            (2, Kind::Guarded) => answer_all(unit, Err(StoreError::Guarded(Guarded::Changed))),
            // another replica appended meanwhile: link after its entries
            (1, Kind::Linked { .. }) => {
                self.head = Some(detail);
                self.again.push(unit);
            }
            // the lease lapsed, or another replica holds it: nothing written
            (4, Kind::Linked { expected, .. }) => {
                self.head = Some(expected);
                answer_all(unit, Err(StoreError::Guarded(Guarded::Fenced)));
            }
            // an operation or a field of `META` it is guarded on is not as read: nothing written
            (7, Kind::Linked { expected, .. }) => {
                self.head = Some(expected);
                answer_all(unit, Err(StoreError::Guarded(Guarded::Changed)));
            }
            // claims that did not hold: their batches are answered why, the others sent again
            (2, Kind::Linked { expected, .. }) => {
                self.head = Some(expected);
                match refused(unit, &detail) {
                    Ok(kept) if !kept.is_empty() => self.again.push(kept),
                    Ok(_) => {}
                    Err((unit, e)) => answer_all(unit, Err(e)),
                }
            }
            (code, _) => {
                forget(&self.local, &rows, rereads_all(&unit));
                answer_all(
                    unit,
                    Err(backend(format!("redis: a write answered {code}"))),
                )
            }
        }
    }

    /// Opens the connection again and sends `first` and every group in flight behind it
    /// again on it, in their order, with their numbers.
    async fn send_again(&mut self, first: Sent) {
        self.drop_connection();
        let mut all: Vec<Sent> = std::iter::once(first)
            .chain(self.flight.drain(..))
            .collect();
        for s in &all {
            s.answer.abort();
        }
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.head = None;
                let e = redis_err(e);
                for s in all {
                    // each may have landed (its first copy), or land late
                    forget(&self.local, &s.rows, rereads_all(&s.unit));
                    answer_all(s.unit, Err(e.clone()));
                }
                return;
            }
        };
        for s in &mut all {
            s.again = true;
            // the same group, marked as the copy sent again: refused, it retires its number
            s.call.args[3] = numbered(s.number, s.after, true).into_bytes();
            let cmd = Arc::new(s.call.cmd(&s.script));
            s.answer = tokio::spawn(eval(conn.clone(), cmd, s.script.clone()));
        }
        self.flight.extend(all);
    }

    /// `cmd`'s answer on `conn`, which is let go if it failed or timed out.
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        mut conn: MultiplexedConnection,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        cmd.query_async(&mut conn).await.map_err(|e| {
            if must_reconnect(&e) || e.is_timeout() {
                self.drop_connection();
            }
            redis_err(e)
        })
    }

    /// After a `WAIT` that came back short (`short`): why the next group is not sent, if the
    /// server still has fewer replicas connected and acknowledging than each write waits for
    /// (`INFO replication`, as `/readyz` reads it). Its callers are refused at once, and
    /// nothing is written, instead of each group being written and then waiting out its `WAIT`
    /// in turn (grants queued behind them for seconds, refused as not answering). Once the
    /// replicas are back, writes go as before.
    async fn replicas_short(&mut self) -> Result<(), StoreError> {
        if !self.short {
            return Ok(());
        }
        let conn = self.connection().await.map_err(redis_err)?;
        let info: String = self
            .query(conn, redis::cmd("INFO").arg("replication"))
            .await?;
        if demoted(&info) {
            // a server made a replica (a switchover behind a fixed address): the group goes,
            // on a new connection, and is refused `READONLY` there (the connection opened
            // again for the next) or written on the primary the address names now
            self.drop_connection();
            self.short = false;
            return Ok(());
        }
        match too_few_replicas(&info, self.acknowledgement.replicas) {
            Some(why) => Err(StoreError::Unwritten(format!("{why} (not written)"))),
            None => {
                self.short = false;
                Ok(())
            }
        }
    }

    /// Waits until the replicas the writer needs have what it wrote (`Acknowledgement`).
    async fn acknowledged(&mut self) -> Result<(), StoreError> {
        let Acknowledgement {
            replicas,
            timeout_ms,
        } = self.acknowledgement;
        if replicas == 0 {
            return Ok(());
        }
        // on the connection that wrote, or not at all: `WAIT` counts the replicas that have
        // this connection's writes, and a new connection has none (it would be acknowledged
        // at once)
        let Some(conn) = self.conn.clone() else {
            return Err(backend("redis: the connection that wrote is gone"));
        };
        let acked: u32 = self
            .query(conn, redis::cmd("WAIT").arg(replicas).arg(timeout_ms))
            .await?;
        self.short = acked < replicas;
        if acked < replicas {
            return Err(StoreError::Backend(format!(
                "redis: written, but acknowledged by {acked} of the {replicas} replicas needed within {timeout_ms} ms"
            )));
        }
        Ok(())
    }
}

/// Whether a server whose `INFO replication` answer is `info` is not a primary (any longer).
fn demoted(info: &str) -> bool {
    !info.lines().any(|l| l.trim_end() == "role:master")
}

/// Runs the writer until every sender of `jobs` is gone and what they sent is answered.
pub(super) async fn run(mut w: Writer, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>) {
    let mut open = true;
    loop {
        if w.flight.is_empty() {
            w.stalled = false;
            // what was not written as sent goes first, in its order
            for unit in w.again.drain(..).rev() {
                w.ready.push_front(unit);
            }
        }
        while w.room() {
            if w.ready.is_empty() {
                match jobs.try_recv() {
                    Ok(first) => {
                        w.take(first, &mut jobs);
                        // the room asked for a group of one: asked again for the group taken
                        // (a burst may make one of many, to wait behind those in flight)
                        continue;
                    }
                    Err(_) => break,
                }
            }
            match w.ready.pop_front() {
                Some(unit) => w.send(unit).await,
                None => break,
            }
        }
        if w.flight.is_empty() {
            if !w.ready.is_empty() || !w.again.is_empty() {
                continue;
            }
            if !open {
                w.retire_mark().await;
                return;
            }
            match jobs.recv().await {
                Some(first) => w.take(first, &mut jobs),
                None => open = false,
            }
            continue;
        }
        let room = open && w.room();
        let Some(front) = w.flight.front_mut() else {
            continue;
        };
        let next = tokio::select! {
            biased;
            answer = &mut front.answer => Next::Answer(answer.unwrap_or_else(|e| {
                Err(redis::RedisError::from(std::io::Error::other(e.to_string())))
            })),
            job = jobs.recv(), if room => Next::Job(job.map(Box::new)),
        };
        match next {
            Next::Answer(answer) => {
                if let Some(sent) = w.flight.pop_front() {
                    w.answered(sent, answer).await;
                }
            }
            Next::Job(Some(first)) => w.take(*first, &mut jobs),
            Next::Job(None) => open = false,
        }
    }
}

/// What the writer waited for: the first group's answer, or a job (none: every sender gone).
enum Next {
    Answer(redis::RedisResult<(i64, Vec<u8>)>),
    Job(Option<Box<Job>>),
}

/// Whether a batch of `unit` re-read the whole chain-state cache (`Batch::reread_all`).
fn rereads_all(unit: &Unit) -> bool {
    unit.iter().any(|(b, _, _)| b.reread_all.is_some())
}

/// Runs `cmd` (a script's `EVALSHA`) on `conn`, loading `script` first if the server does not
/// have it (a restarted server).
async fn eval(
    mut conn: MultiplexedConnection,
    cmd: Arc<redis::Cmd>,
    script: Arc<redis::Script>,
) -> redis::RedisResult<(i64, Vec<u8>)> {
    match cmd.query_async(&mut conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(&mut conn).await?;
            cmd.query_async(&mut conn).await
        }
        answer => answer,
    }
}

/// What a guarded batch's script checks besides the fence: rows of a table, `SUBMISSIONS` (the
/// operations as read, and those made new, empty: absent) or `PAGING` (one row, empty:
/// absent); and a field of `META` (the follow-up's place, the tip or a replica's row; "": none)
/// with its value
/// as read (none: not there yet).
type GuardedRows = (Table, Vec<(String, Vec<u8>)>, String, Option<Vec<u8>>);

fn guarded_rows(g: &Guard) -> Result<GuardedRows, StoreError> {
    let (table, rows) = match (g.submissions.as_slice(), &g.paging) {
        (read, None) => (
            SUBMISSIONS,
            read.iter()
                .map(|s| Ok((s.id.clone(), enc(s)?)))
                .chain(g.absent.iter().map(|id| Ok((id.clone(), Vec::new()))))
                .collect::<Result<Vec<_>, StoreError>>()?,
        ),
        ([], Some((key, row))) if g.absent.is_empty() => (
            PAGING,
            vec![(
                key.clone(),
                row.as_ref().map(enc).transpose()?.unwrap_or_default(),
            )],
        ),
        _ => {
            return Err(backend(
                "a batch is guarded by operations or by a paging row, not both",
            ))
        }
    };
    let (field, place) = match (&g.followed, &g.tip, &g.replica) {
        (Some(place), None, None) => (FOLLOWED.into(), place.map(|p| enc(&p)).transpose()?),
        (None, Some(tip), None) => (TIP.into(), tip.as_ref().map(enc).transpose()?),
        (None, None, Some((id, bytes))) => (format!("{REPLICA_PREFIX}{id}"), bytes.clone()),
        (None, None, None) => (String::new(), None),
        _ => {
            return Err(backend(
                "a batch is guarded by one field of meta at most: the follow-up's place, the tip or a replica's row",
            ))
        }
    };
    Ok((table, rows, field, place))
}

/// Gives every caller in `unit` the same `result`.
fn answer_all(unit: Unit, result: Result<(), StoreError>) {
    for (_, reply, _) in unit {
        reply.send(result.clone());
    }
}

/// Answers the batches of `unit` whose claims the linked script named in `detail`
/// (`<claim> replayed|rate|reviewed ...`: claim i is its batch's, and after the claims the
/// verdicts) with why, and gives back the others; or the whole unit with an error when the
/// answer cannot be read.
fn refused(unit: Unit, detail: &[u8]) -> Result<Unit, (Unit, StoreError)> {
    let refused = match refused_claims(detail) {
        Ok(r) => r,
        Err(e) => return Err((unit, e)),
    };
    let owners: Vec<usize> = unit
        .iter()
        .enumerate()
        .flat_map(|(i, (batch, _, _))| std::iter::repeat_n(i, batch.claims.len()))
        .chain(
            unit.iter()
                .enumerate()
                .flat_map(|(i, (batch, _, _))| std::iter::repeat_n(i, batch.verdicts.len())),
        )
        .collect();
    let why: std::collections::HashMap<usize, Guarded> = refused
        .into_iter()
        .filter_map(|(claim, why)| owners.get(claim).map(|owner| (*owner, why)))
        .collect();
    if why.is_empty() {
        return Err((
            unit,
            backend("redis: the write named claims it was not given"),
        ));
    }
    let mut kept = Vec::with_capacity(unit.len());
    for (i, (batch, reply, queued)) in unit.into_iter().enumerate() {
        match why.get(&i) {
            Some(why) => reply.send(Err(StoreError::Guarded(*why))),
            None => kept.push((batch, reply, queued)),
        }
    }
    Ok(kept)
}

/// The linked script's list of claims that did not hold (`<claim> replayed|rate|reviewed ...`).
fn refused_claims(detail: &[u8]) -> Result<Vec<(usize, Guarded)>, StoreError> {
    let text = String::from_utf8_lossy(detail);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .chunks(2)
        .map(|pair| match pair {
            [claim, why] => {
                let claim = claim
                    .parse()
                    .map_err(|_| backend(format!("redis: a claim's answer: {text}")))?;
                let why = match *why {
                    "rate" => Guarded::RateLimited,
                    "reviewed" => Guarded::Reviewed,
                    _ => Guarded::Replayed,
                };
                Ok((claim, why))
            }
            _ => Err(backend(format!("redis: a claim's answer: {text}"))),
        })
        .collect()
}

/// A script's keys and arguments, gathered before it is sent (`EVALSHA`, `cmd`).
#[derive(Default)]
pub(super) struct Call {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    pub(super) fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Call {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Call {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self, script: &redis::Script) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedisStore, Store};

    /// A primary says `role:master`; a replica (one demoted by a switchover, with no replicas
    /// of its own, which the writer would otherwise take for a primary short of replicas, and
    /// never reconnect) does not.
    #[test]
    fn a_demoted_server_is_told_from_a_primary_short_of_replicas() {
        let primary =
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:9\r\n";
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.2\r\nmaster_port:6379\r\nconnected_slaves:0\r\n";
        assert!(!demoted(primary));
        assert!(demoted(replica));
        assert!(too_few_replicas(replica, 1).is_some() && too_few_replicas(primary, 1).is_some());
    }

    fn record(outcome: &str) -> crate::audit::Record {
        crate::audit::Record {
            at: 1,
            event: crate::audit::Event::SignIn {
                reviewer: None,
                outcome: outcome.into(),
            },
        }
    }

    fn claim(nonce: &str) -> Claim {
        Claim {
            nonce: nonce.into(),
            keep_secs: u64::MAX / 4,
            clinician: format!("c-{nonce}"),
            emission_ms: 1,
            burst_ms: 1_000,
        }
    }

    /// Runs a writer on `jobs`, all queued before it starts (so that it takes them at once:
    /// the first groups go out together, those after behind them as its window lets them), to
    /// the end, with `light_batches` (`LIGHT_BATCHES`; 0: `WINDOW` groups in flight at most, as
    /// under a heavy load). Also gives how many waits for a group and how many writes (round
    /// trips) its metrics counted.
    fn write_queued(
        url: &str,
        prefix: &str,
        jobs: Vec<Batch>,
        light_batches: usize,
    ) -> (Vec<Result<(), StoreError>>, (String, String)) {
        let primary = Primary::open(&url.into()).unwrap();
        let metrics = GroupMetrics::new(GroupWriter::Redis);
        let w = Writer {
            light_batches,
            ..Writer::new(
                primary,
                prefix,
                Local::default(),
                Acknowledgement::default(),
                metrics.clone(),
            )
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let answers: Vec<_> = jobs
            .into_iter()
            .map(|batch| {
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                tx.send((batch, Reply::Blocking(reply), Some(Instant::now())))
                    .unwrap();
                answer
            })
            .collect();
        drop(tx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(w, rx));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("waits", "", metrics.waits);
        registry.register("writes", "", metrics.writes);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
                .unwrap_or_default()
                .to_string()
        };
        let counts = (count("waits"), count("writes"));
        (
            answers.into_iter().map(|a| a.recv().unwrap()).collect(),
            counts,
        )
    }

    /// What a writer did with a replay of a used nonce, queued with `jobs` behind it: the
    /// replay refused as such, every other job written.
    struct AfterAReplay {
        _redis: crate::dev::TestRedis,
        store: RedisStore,
        /// How many waits for a group and writes the writer's metrics counted.
        counts: (String, String),
    }

    async fn after_a_replay(jobs: Vec<Batch>, light_batches: usize) -> AfterAReplay {
        let redis = crate::dev::test_redis().await;
        let url = redis.url.clone();
        let store = RedisStore::open(url.as_str(), "p:").unwrap();
        let used = |outcome: &str| Batch {
            claims: vec![claim("n1")],
            audit: vec![record(outcome)],
            ..Batch::default()
        };
        store.apply(used("used")).unwrap();
        let jobs = std::iter::once(used("replay")).chain(jobs).collect();
        let (answers, counts) =
            tokio::task::spawn_blocking(move || write_queued(&url, "p:", jobs, light_batches))
                .await
                .unwrap();
        assert!(
            matches!(answers[0], Err(StoreError::Guarded(Guarded::Replayed))),
            "{answers:?}"
        );
        assert!(answers[1..].iter().all(Result::is_ok), "{answers:?}");
        AfterAReplay {
            _redis: redis,
            store,
            counts,
        }
    }

    /// `batch`, guarded (by nothing): written alone, a group of its own.
    fn alone(batch: Batch) -> Batch {
        Batch {
            guard: Some(Guard::default()),
            ..batch
        }
    }

    fn paging(v: u64) -> Batch {
        Batch {
            paging: vec![("on-call".into(), Some(serde_json::json!(v)))],
            ..Batch::default()
        }
    }

    /// A group sent behind one that is not written as sent (a claim in it replayed) is not
    /// written before it either: it is sent again after the first group's other batches, so
    /// that the later write of a row still wins. Without the check of the group before
    /// (`after`), the second group lands first and the first's retry overwrites it. Under a
    /// heavy load (two in flight, the third waiting) and a light one (all three in flight).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_behind_one_not_written_as_sent_is_written_after_it() {
        for light_batches in [0, LIGHT_BATCHES] {
            a_group_behind_one_not_written_is_written_after_it(light_batches).await;
        }
    }

    async fn a_group_behind_one_not_written_is_written_after_it(light_batches: usize) {
        let done = after_a_replay(
            vec![
                // with the replay, the first group: written again without it
                Batch {
                    claims: vec![claim("n2")],
                    audit: vec![record("first")],
                    ..paging(1)
                },
                // the second, behind it
                alone(paging(2)),
                // the third, after both
                Batch {
                    audit: vec![record("last")],
                    ..Batch::default()
                },
            ],
            light_batches,
        )
        .await;
        let (waits, _) = &done.counts;
        assert_eq!(
            waits, "4",
            "each batch's wait counted once, sent again or not"
        );
        assert_eq!(
            done.store.paging().unwrap(),
            vec![("on-call".to_string(), Some(serde_json::json!(2)))],
            "the later write of the row wins"
        );
        let outcomes: Vec<String> = done
            .store
            .audit_entries(1, 10)
            .unwrap()
            .iter()
            .map(|e| match e.parsed().unwrap() {
                crate::audit::Event::SignIn { outcome, .. } => outcome,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(outcomes, ["used", "first", "last"]);
    }

    /// Once a group in flight is not written, nothing more is sent behind it (it would not be
    /// written either) until every group in flight is answered: under a heavy load (two in
    /// flight at most), a replay alone, a guarded batch sent behind it, and a third batch cost
    /// four round trips (the replay; the guarded batch, which answers that the one before it
    /// was not written; the guarded batch again; the third), not six (the third sent behind the
    /// second, refused, and sent again, then linked again on the head as it is).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_sent_behind_a_group_not_written_until_those_in_flight_are_answered() {
        let done = after_a_replay(
            vec![
                alone(paging(1)),
                Batch {
                    audit: vec![record("last")],
                    ..Batch::default()
                },
            ],
            0,
        )
        .await;
        let (_, writes) = &done.counts;
        assert_eq!(writes, "4", "round trips");
        assert_eq!(
            done.store.audit_entries(1, 10).unwrap().len(),
            2,
            "used, last"
        );
    }

    /// Under a light load the groups waiting go at once, each behind the one before on the
    /// connection (not two at a time, each waiting for an answer): a replay and four guarded
    /// batches (five groups) are five round trips before any answer, then the four not written
    /// (behind the replay) sent again together, nine in all, against six two at a time (the
    /// replay and the first, then the first again and the three others). Either way every row is
    /// written in its order: the last write of the row wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_a_light_load_the_groups_waiting_go_at_once() {
        for (light_batches, round_trips) in [(LIGHT_BATCHES, "9"), (0, "6")] {
            let done =
                after_a_replay((1..=4).map(|v| alone(paging(v))).collect(), light_batches).await;
            let (_, writes) = &done.counts;
            assert_eq!(
                writes, round_trips,
                "round trips, light_batches {light_batches}"
            );
            assert_eq!(
                done.store.paging().unwrap(),
                vec![("on-call".to_string(), Some(serde_json::json!(4)))],
                "the last write of the row wins"
            );
        }
    }

    /// A writer's mark goes with its end (every group answered, no sender left) on a server
    /// that answered all along: it leaves no field in `META`; the rows it wrote stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writers_mark_is_taken_out_at_its_end() {
        let redis = crate::dev::test_redis().await;
        let url = redis.url.clone();
        let jobs = vec![
            Batch {
                audit: vec![record("one")],
                ..Batch::default()
            },
            alone(paging(1)),
        ];
        let (answers, _) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || write_queued(&url, "m:", jobs, LIGHT_BATCHES)
        })
        .await
        .unwrap();
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let meta: Vec<String> = redis::cmd("HKEYS")
            .arg("m:meta")
            .query(&mut redis.connection())
            .unwrap();
        assert!(meta.contains(&AUDIT_HEAD.to_string()), "{meta:?}");
        assert!(
            !meta.iter().any(|f| f.starts_with("written:")),
            "the mark taken out: {meta:?}"
        );
        let store = RedisStore::open(url.as_str(), "m:").unwrap();
        assert_eq!(store.audit_entries(1, 10).unwrap().len(), 1);
        assert_eq!(store.paging().unwrap().len(), 1);
    }

    /// Which window a group is sent in: two groups at any load; beyond, up to eight groups
    /// while they hold few batches (a light load), none behind two groups of many (a heavy one).
    #[test]
    fn more_groups_go_at_once_only_under_a_light_load() {
        let room = |groups, batches, next| room_for(groups, batches, next, LIGHT_BATCHES);
        assert!(room(0, 0, 64) && room(1, 64, 64), "two at any load");
        assert!(room(2, 2, 1) && room(7, 7, 1), "a light load: up to eight");
        assert!(!room(8, 8, 0), "eight groups at most");
        assert!(
            !room(2, 8, 1) && !room(2, 2, 7),
            "eight batches at most beyond two groups"
        );
        assert!(room(2, 6, 2));
        assert!(!room_for(2, 2, 1, 0), "two at most without a light window");
    }

    /// A copy of a group sent again (its first copy's answer lost) that is refused retires the
    /// group's number: the first copy, read late by the server from the dropped connection,
    /// then writes nothing, although by then it would pass (here the clinician's rate has room
    /// again). Before, it landed: a batch answered "rate limited" written after all, and the
    /// group's other batches written twice once sent again under a new number.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_first_copy_of_a_group_refused_when_sent_again_writes_nothing() {
        let redis = crate::dev::test_redis().await;
        let url = redis.url.as_str();
        let store = RedisStore::open(url, "l:").unwrap();
        // one grant every 300 ms, none ahead
        let rated = |nonce: &str, outcome: &str| Batch {
            claims: vec![Claim {
                burst_ms: 300,
                emission_ms: 300,
                clinician: "c".into(),
                ..claim(nonce)
            }],
            audit: vec![record(outcome)],
            ..Batch::default()
        };
        store.apply(rated("n1", "first")).unwrap();
        let mut w = Writer::new(
            Primary::open(&url.into()).unwrap(),
            "l:",
            Local::default(),
            Acknowledgement::default(),
            GroupMetrics::new(GroupWriter::Redis),
        );
        let (reply, _answer) = std::sync::mpsc::sync_channel(1);
        let unit = vec![(rated("n2", "second"), Reply::Blocking(reply), None)];
        let (_, _, script, mut call) = w.prepare(&unit).await.unwrap();
        let first = Arc::new(call.cmd(&script));
        call.args[3] = numbered(w.groups, 0, true).into_bytes();
        let again = Arc::new(call.cmd(&script));
        let conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (code, _) = eval(conn.clone(), again, script.clone()).await.unwrap();
        assert_eq!(code, 2, "the copy sent again: the rate has no room");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let (code, _) = eval(conn, first, script).await.unwrap();
        assert_eq!(code, 6, "the first copy, late: its number retired");
        assert_eq!(
            store.audit_entries(1, 10).unwrap().len(),
            1,
            "the first grant alone"
        );
    }

    /// A batch with audit events under a guard is linked, its guard checked in the same step:
    /// the operations as read (and those made new, absent), the follow-up's place, the tip.
    /// Written while each holds; refused whole, nothing appended, once one changed (of two
    /// replicas failing one operation with its entry, one writes). A paging row as its guard
    /// is refused: the linked script does not check one.
    #[tokio::test]
    async fn a_batch_with_audit_events_is_written_only_while_its_guard_holds() {
        let redis = crate::dev::test_redis().await;
        let store = RedisStore::open(redis.url.as_str(), "f:").unwrap();
        let op = crate::chain::submitter::operation("record:01", "access-control", "r", &[]);
        let tip = Tip::applied(7, [7; 32]);
        store
            .apply(Batch {
                submissions: vec![op.clone()],
                tip: Some(tip),
                followed: Some(3),
                ..Batch::default()
            })
            .unwrap();
        let failed = crate::store::Submission {
            state: crate::store::SubmissionState::Failed {
                txid: String::new(),
                height: 7,
                result: "refused".into(),
                nonce: None,
                raw: None,
            },
            ..op.clone()
        };
        let read_as = |read: &crate::store::Submission| Guard {
            submissions: vec![read.clone()],
            ..Guard::default()
        };
        let cases = [
            // as read, with the tip: written (the operation failed, with its entry)
            (
                Guard {
                    tip: Some(Some(tip)),
                    ..read_as(&op)
                },
                true,
            ),
            // the operation as it was: changed since (another replica failed it)
            (read_as(&op), false),
            (read_as(&failed), true),
            // the tip as it was before a later block, or before any
            (
                Guard {
                    tip: Some(Some(Tip::applied(6, [6; 32]))),
                    ..read_as(&failed)
                },
                false,
            ),
            (
                Guard {
                    tip: Some(None),
                    ..Guard::default()
                },
                false,
            ),
            // the follow-up's place
            (
                Guard {
                    followed: Some(Some(3)),
                    ..Guard::default()
                },
                true,
            ),
            (
                Guard {
                    followed: Some(Some(2)),
                    ..Guard::default()
                },
                false,
            ),
            // an operation to make new, there already
            (
                Guard {
                    absent: vec![op.id.clone()],
                    ..Guard::default()
                },
                false,
            ),
        ];
        for (n, (guard, written)) in cases.into_iter().enumerate() {
            let before = store.audit_head().unwrap().map_or(0, |h| h.seq);
            let result = store.apply(Batch {
                submissions: vec![failed.clone()],
                audit: vec![record(&format!("guarded {n}"))],
                guard: Some(guard.clone()),
                ..Batch::default()
            });
            let after = store.audit_head().unwrap().map_or(0, |h| h.seq);
            if written {
                result.unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(after, before + 1, "{n}: its entry");
            } else {
                assert!(
                    matches!(&result, Err(StoreError::Guarded(Guarded::Changed))),
                    "{n} {guard:?}: {result:?}"
                );
                assert_eq!(after, before, "{n}: nothing appended");
            }
        }
        assert_eq!(store.submission(&op.id).unwrap(), Some(failed));
        let refused = store.apply(Batch {
            audit: vec![record("guarded")],
            paging: vec![("incident:1".into(), Some(serde_json::json!({"on": true})))],
            guard: Some(Guard {
                paging: Some(("incident:1".into(), None)),
                ..Guard::default()
            }),
            ..Batch::default()
        });
        assert!(
            matches!(&refused, Err(StoreError::Backend(why)) if why.contains("written without audit events")),
            "{refused:?}"
        );
        assert_eq!(store.paging_row("incident:1").unwrap(), None);
    }
}

//! The chain follower: receives the stacks-node's event-observer POSTs, applies each block to
//! the store durably before answering 200 (so the node retries anything not applied), and
//! polls the node's tip to notice gaps, restarts, reorgs and an unreachable node.
//!
//! Anyone who can reach the observer port can POST a block, so a push is only a hint. A block
//! is applied only once the node's RPC serves a block with the same index block hash at its
//! height (`GET /v3/blocks/height/{h}`, header hashed here); then the cache entries its print
//! events name, and those the node's block names by its own calls to our contracts (so a copy
//! with its events stripped names them too), are read back from the node (the events' values
//! are never used), and our operations whose txids are in the node's block are confirmed once
//! their effect reads back on chain (the push's list of transactions is not used). A block applies as one
//! batch: those reads, the confirmations and the new tip (with replicas, the tip another replica
//! stored for the block kept, and the write guarded on it: `write_with_changes`). The same block sent again reads only
//! what it names anew (so a stripped copy sent first loses nothing of the node's push). After
//! a gap (missed blocks, a node that went away, a restart), every cached entry is re-read from
//! the node and lands with the new tip. After a reorg (another block at a height applied, a
//! parent that is not our block, or our last block gone from the node's chain), the same, and
//! every operation confirmed from the fork point up is read back and reopened if the new
//! branch lacks it.
//!
//! It must not: take a value from a pushed event, hold its lock while checking a push with
//! the node, or read entries for a block below the tip it already read past.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::events::{self, Named, NewBlock};
use super::rpc::{NodeBlock, RpcError};
use super::state::{ChainState, StateError};
use super::status::FollowerStatus;
use super::submitter;
use crate::clock::now_ms;
use crate::store::{Batch, Guard, StoreError, Tip};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<super::rpc::RpcError> for FollowError {
    fn from(e: super::rpc::RpcError) -> FollowError {
        FollowError::State(e.into())
    }
}

/// What became of a pushed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The node's own block at its height: the entries it names were read back, our
    /// operations it mined confirmed (also read back), and it is the new tip.
    Block,
    /// Already applied, or below the tip and read past (the node sent it again, or a copy
    /// came first): only entries it names that were not read yet for its height are read.
    Again,
    /// The node has no block at that height (yet): the push is answered so that the node
    /// sends it again.
    NotYet(String),
    /// Not the node's block at that height (forged, or abandoned since): nothing changed.
    NotOnChain(String),
}

/// How many applied blocks are remembered by height, to know a reorg when the node sends
/// another block at a height already applied.
const RECENT_BLOCKS: usize = 512;

/// How many heights below the tip a block sent again may still name entries to read (the
/// node's own push arriving after a copy that named fewer); older ones read nothing.
const AGAIN_WINDOW: u64 = 16;

/// Observer pushes read and checked at once; more are answered 503 (the node sends them
/// again), before their bodies are read. One peer holds one of them at most: the node sends
/// its payloads one after another, and a client that sends a body slowly (until its 10 s run
/// out, again and again) holds one place, not every one.
const PUSHES_AT_ONCE: usize = 4;

/// One of the `PUSHES_AT_ONCE` pushes read or checked at once (`Follower::admit`), and the
/// peer it came from, let go with it.
pub struct Admitted<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    peer: Option<(
        std::net::IpAddr,
        &'a Mutex<std::collections::HashSet<std::net::IpAddr>>,
    )>,
}

/// The address a peer is counted by in `Follower::admit`: an IPv4-mapped address as its IPv4
/// one, an IPv6 one as its /64.
fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some((ip, peers)) = self.peer.take() {
            peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
        }
    }
}

/// A write that drops every entry `batch` names (read again on use), in place of its rows.
fn names_dropped(batch: &Batch) -> Batch {
    Batch {
        uncached: crate::store::Uncached::named_by(batch),
        ..Batch::default()
    }
}

/// What a block's write does with the tip (`Follower::tip_to_write`).
#[derive(Debug, PartialEq)]
enum TipWrite {
    /// Writes this block's tip, a number of its own, guarded on the tip as stored (the second).
    Write(Tip, Option<Tip>),
    /// Keeps the tip as stored (this block), and is guarded on it.
    Keep(Tip),
    /// Writes no rows and no tip (the changes to our operations alone, the entries the block
    /// names dropped): the stored tip is past this block (another replica applied a later one).
    Passed,
    /// Is not applied now: an earlier attempt was guarded on the tip, and another block at
    /// this height is stored now.
    Contested,
}

/// A block applied: its index block hash, and what it named, as read for it. `None` when
/// there is nothing more to read for it: reached by a catch-up (which read every entry), or
/// beyond `AGAIN_WINDOW` below the tip.
struct Seen {
    hash: [u8; 32],
    named: Option<Named>,
}

impl Seen {
    fn read_past(hash: [u8; 32]) -> Seen {
        Seen { hash, named: None }
    }
}

pub struct Follower {
    pub state: ChainState,
    pub status: Arc<FollowerStatus>,
    /// The blocks applied lately, by height.
    recent: Mutex<BTreeMap<u64, Seen>>,
    pushes: tokio::sync::Semaphore,
    /// The peers whose pushes hold a place now (`admit`).
    pushing: Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// A block sent again named more than a block may: the poller re-reads every entry.
    refresh_wanted: AtomicBool,
    /// The height of the tip stored when this process started (0: none).
    started_at: u64,
}

impl Follower {
    pub fn new(state: ChainState, status: Arc<FollowerStatus>) -> Result<Follower, StoreError> {
        let mut recent = BTreeMap::new();
        let mut started_at = 0;
        // (a catch-up's mark on a store that had no tip yet is not a block applied)
        if let Some(tip) = state
            .store
            .tip()?
            .filter(|t| t.height > 0 || t.index_block_hash != [0; 32])
        {
            status.applied.store(tip.height, Ordering::SeqCst);
            recent.insert(tip.height, Seen::read_past(tip.index_block_hash));
            started_at = tip.height;
        }
        // give the node's block stream its chance before polling calls it quiet
        status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        Ok(Follower {
            state,
            status,
            recent: Mutex::new(recent),
            pushes: tokio::sync::Semaphore::new(PUSHES_AT_ONCE),
            pushing: Mutex::default(),
            refresh_wanted: AtomicBool::new(false),
            started_at,
        })
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.state.store, batch).await
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Seen>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hash of the block applied at `height`, if it is remembered.
    fn hash_at(&self, height: u64) -> Option<[u8; 32]> {
        self.recent().get(&height).map(|s| s.hash)
    }

    /// Remembers the block applied at `height` (the newest), and forgets the oldest.
    fn remember(&self, height: u64, seen: Seen) {
        let mut recent = self.recent();
        recent.insert(height, seen);
        while recent.len() > RECENT_BLOCKS {
            recent.pop_first();
        }
        // below the window, a block sent again reads nothing
        for (_, s) in recent.range_mut(..=height.saturating_sub(AGAIN_WINDOW)) {
            s.named = None;
        }
    }

    /// Forgets what was applied at `from` and above (abandoned by a reorg).
    fn forget_from(&self, from: u64) {
        self.recent().retain(|h, _| *h < from);
    }

    /// A push from `peer` let in, if fewer than `PUSHES_AT_ONCE` are being read or checked
    /// and none from `peer` is (unless it is this host) (else it is answered so that the node
    /// sends it again): taken before its body is read.
    pub fn admit(&self, peer: Option<std::net::IpAddr>) -> Option<Admitted<'_>> {
        // (a node on this host, beside whoever else may post from it, is not held to it; an
        // IPv4 peer seen on an IPv6 socket is that IPv4 address, and an IPv6 peer its /64,
        // which one host holds whole)
        let peer = match peer
            .map(|ip| ip.to_canonical())
            .filter(|ip| !ip.is_loopback())
            .map(peer_key)
        {
            Some(ip) => {
                if !self
                    .pushing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ip)
                {
                    return None;
                }
                Some((ip, &self.pushing))
            }
            None => None,
        };
        // (a peer taken above is let go again if no place is free: `Admitted`'s drop)
        let mut admitted = Admitted {
            _permit: match self.pushes.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    if let Some((ip, peers)) = peer {
                        peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
                    }
                    return None;
                }
            },
            peer: None,
        };
        admitted.peer = peer;
        Some(admitted)
    }

    /// Applies one `/new_block` payload, once the node confirms it is its block at that
    /// height; returns once what it changed is durable. Nothing in the payload is believed
    /// but its height and hash, and those only as the node confirms them; its print events
    /// only name entries to read back.
    pub async fn on_block(
        &self,
        block: NewBlock,
        _admitted: Admitted<'_>,
    ) -> Result<Applied, FollowError> {
        let applied = self.apply_block(block).await;
        if let Ok(Applied::NotOnChain(_)) = &applied {
            self.status
                .pushes_not_on_chain
                .fetch_add(1, Ordering::SeqCst);
        }
        applied
    }

    async fn apply_block(&self, block: NewBlock) -> Result<Applied, FollowError> {
        let Some(pushed) = events::parse_hash32(&block.index_block_hash) else {
            return Ok(Applied::NotOnChain(
                "index_block_hash is not 32 bytes of hex".into(),
            ));
        };
        let height = block.block_height;
        if height > u64::from(u32::MAX) {
            // beyond any height the node's RPC takes (`/v3/blocks/height` is a u32)
            return Ok(Applied::NotOnChain(format!(
                "no block can be at height {height}"
            )));
        }
        // checked before waiting for the lock: a push the node does not confirm holds nothing up
        let node_block = match self.state.rpc.block_at(height).await? {
            Some(b) if b.header.block_id == pushed && b.header.height == height => b,
            Some(_) => {
                tracing::warn!(
                    height,
                    "a pushed block is not the node's block at its height: ignored"
                );
                return Ok(Applied::NotOnChain(format!(
                    "the node's block at height {height} has another hash"
                )));
            }
            None => {
                tracing::warn!(height, "a pushed block is above the node's tip: not yet");
                return Ok(Applied::NotYet(format!(
                    "the node has no block at height {height}"
                )));
            }
        };
        // what its events name, and what the node's block itself names by its calls to our
        // contracts (a copy with its events stripped still names those): read from the node
        // only for a block to apply (one applied read them then, one a catch-up read past needs
        // none), before the lock; `Some(None)`: not known that way, read as a gap
        let mut named = events::named(&events::prints(&block, &self.state.contracts));
        let (known, applied) = (self.hash_at(height), self.status.applied());
        let by_calls = if known == Some(pushed) || (known.is_none() && height <= applied) {
            None
        } else {
            Some(self.state.named_by_calls(&node_block).await?)
        };
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        let applied = self.status.applied();
        let known = self.hash_at(height);
        if known == Some(pushed) {
            return self.named_again(height, named).await;
        }
        if known.is_none() && height <= applied {
            // below the tip and read past (a catch-up): its entries were read since; only
            // our transactions it mined are looked for
            self.write_with_changes(Batch::default(), None, None, Some(&node_block))
                .await?;
            return Ok(Applied::Again);
        }
        // to apply: the names its calls gave (read before the lock; none if the follower moved
        // meanwhile: then as a gap, every cached entry read again)
        let unnamed = match by_calls {
            Some(Some(by_calls)) => {
                named.extend(by_calls);
                false
            }
            _ => true,
        };
        // another block at a height we applied, or a parent that is not the block we applied
        // below it: the chain reorganized
        let reorg = known.is_some()
            || height
                .checked_sub(1)
                .and_then(|below| self.hash_at(below))
                .is_some_and(|parent| parent != node_block.header.parent_block_id);
        let gap = !reorg && applied > 0 && height > applied + 1;
        // a gap may hide a reorg (its first blocks not pushed, or a later block posted first):
        // whether the block we applied last is still the node's says
        let left = if gap {
            self.left_behind(applied).await?
        } else {
            None
        };
        let mut batch = Batch::default();
        let mut from = None;
        if reorg || left.is_some() {
            let fork = match left {
                Some(fork) => fork,
                None => self.fork_point(applied).await?,
            };
            tracing::warn!(height, applied, from = fork, "reorg: the node's chain left blocks we applied; re-reading the cache and our confirmations");
            self.state.refresh_all(&mut batch).await?;
            from = Some(fork);
        } else if gap || unnamed || named.len() > events::MAX_NAMED {
            if gap {
                tracing::warn!(
                    from = applied,
                    to = height,
                    "gap in the block stream: re-reading the cache"
                );
            } else if unnamed {
                tracing::warn!(
                    height,
                    "what the node's block changed is not known from its calls (a transaction of a kind this service does not decode, or too many patients' calls): re-reading the cache"
                );
            }
            self.state.refresh_all(&mut batch).await?;
        } else {
            self.state.reread(&named, &mut batch).await?;
        }
        let marked = batch.reread_all;
        self.caught_up_or_unmarked(
            marked,
            self.write_with_changes(batch, Some((height, pushed)), from, Some(&node_block))
                .await,
        )
        .await?;
        if let Some(from) = from {
            self.forget_from(from.min(height));
        }
        self.remember(
            height,
            Seen {
                hash: pushed,
                named: Some(named),
            },
        );
        if gap {
            // transactions mined in the missing blocks were not seen
            self.status.skipped_blocks.store(true, Ordering::SeqCst);
        }
        self.status.applied.store(height, Ordering::SeqCst);
        self.status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        self.status.node_tip.fetch_max(height, Ordering::SeqCst);
        tracing::info!(height, "block applied");
        Ok(Applied::Block)
    }

    /// What the write of block `height` (`hash`) does with the tip: writes its own, guarded on
    /// the tip as stored (`TipWrite::Write`), or, when the store's tip is that block already
    /// (another replica sharing the store applied it), keeps the tip as stored and is guarded
    /// on it (`TipWrite::Keep`), so that its number stays (`Tip::written`): a fill another
    /// replica guarded on it is not refused for nothing, nor a catch-up's mark put on it
    /// cleared. (Written again, each replica following the node would change the tip once a
    /// block per replica.) A stored tip above this block is a later block another replica
    /// applied (its node ahead of this one's): `Passed`, neither the rows read for this block
    /// (from a node that may not have the later block yet: a suspension it made undone) nor its
    /// tip written over the later block's; unless it is `mark`, this catch-up's own mark (a
    /// reorg took the chain back below a block this replica applied: written over).
    /// `kept_before`: an earlier attempt was guarded on the tip and refused, so the tip changed
    /// since: to another block at this height, a reorg another replica saw first
    /// (`Contested`).
    fn tip_to_write(
        &self,
        height: u64,
        hash: [u8; 32],
        kept_before: bool,
        mark: Option<&Tip>,
    ) -> Result<TipWrite, StoreError> {
        Ok(match self.state.store.tip()? {
            Some(stored) if stored.height == height && stored.index_block_hash == hash => {
                TipWrite::Keep(stored)
            }
            Some(stored) if stored.height > height && mark != Some(&stored) => TipWrite::Passed,
            Some(stored) if kept_before && stored.height == height && mark != Some(&stored) => {
                TipWrite::Contested
            }
            stored => TipWrite::Write(Tip::applied(height, hash), stored),
        })
    }

    /// Writes `batch` (a block's, or a catch-up's) with the changes to our operations: those
    /// a reorg from `reopened_from` abandoned (`submitter::reopen_abandoned`), then those
    /// `confirmed_by` mined (`submitter::confirmations`), each guarded on the operation as
    /// read, in the same write. With replicas, another replica's submitter may change one of
    /// them meanwhile (sign it again with a new nonce, after the node said its nonce was used):
    /// the write is then refused (`Guarded::Changed`), and the changes are found again and
    /// written with the batch, `submitter::CHANGE_ATTEMPTS` times at most. Written unguarded,
    /// a change put the old transaction back over the new one, whose nonce then was never
    /// broadcast, every later transaction of the service waiting behind it. (One process's
    /// submitter writes under the apply lock held here.)
    ///
    /// The tip of block `tip` (height, hash; none for a block read past) is decided at each
    /// attempt (`tip_to_write`). The tip as stored guards the write (kept, or written over):
    /// refused, the tip changed since. Past this block (another replica applied a later one,
    /// before this attempt or since the last), only the changes to
    /// our operations are written: rows read for this block would land over the later block's,
    /// and its tip under it. Moved to another block at this height
    /// (a reorg another replica saw first), the block is not applied now (an error: the node's
    /// push is answered so that it is sent again, the poller tries again), and is checked with
    /// the node again from the start.
    async fn write_with_changes(
        &self,
        batch: Batch,
        tip: Option<(u64, [u8; 32])>,
        reopened_from: Option<u64>,
        confirmed_by: Option<&NodeBlock>,
    ) -> Result<(), FollowError> {
        let (rpc, contracts, store) = (
            &self.state.rpc,
            &self.state.contracts,
            self.state.store.as_ref(),
        );
        let mut kept_before = false;
        for _ in 0..submitter::CHANGE_ATTEMPTS {
            let mut changes = Vec::new();
            if let Some(from) = reopened_from {
                submitter::reopen_abandoned(from, rpc, contracts, store, &mut changes).await?;
            }
            if let Some(block) = confirmed_by {
                submitter::confirmations(block, rpc, contracts, store, &mut changes).await?;
            }
            let failed = changes
                .iter()
                .filter(|c| submitter::newly_failed(&c.read, &c.state))
                .count() as u64;
            let reorg = reopened_from.is_some();
            let Some((attempt, kept)) = self.attempt(&batch, tip, changes, kept_before, reorg)?
            else {
                return Ok(());
            };
            // once guarded on the tip (and refused), the tip is never written over another
            // block at this height by a later attempt: it is contested, passed or kept
            kept_before |= kept;
            match self.write(attempt).await {
                Ok(()) => {
                    self.status
                        .operations_failed
                        .fetch_add(failed, Ordering::SeqCst);
                    return Ok(());
                }
                Err(StoreError::Guarded(crate::store::Guarded::Changed)) => {
                    tracing::info!("an operation or the tip changed while the block was applied (another replica): the changes and the tip found again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StateError::Unsettled(
            "our operations, changed by another replica while a block was applied".into(),
        )
        .into())
    }

    /// One attempt at the write of `batch` for block `tip` with `changes` (see
    /// `write_with_changes`; `kept_before`: an earlier attempt was guarded on the tip and refused
    /// (the tip, or an operation it changes, changed since);
    /// `reorg`: the batch is a reorg's): none when there is nothing to write; else the write,
    /// and whether it is guarded on the tip as stored.
    fn attempt(
        &self,
        batch: &Batch,
        tip: Option<(u64, [u8; 32])>,
        changes: Vec<submitter::Change>,
        kept_before: bool,
        reorg: bool,
    ) -> Result<Option<(Batch, bool)>, FollowError> {
        let mut attempt = batch.clone();
        let mut kept = false;
        // a catch-up's entries (every one re-read, one read of the node each: seconds) are
        // written only under the tip as it is now: a block another replica applies meanwhile
        // refuses them (read before it, they would land over its entries, a suspension
        // undone until this replica applies that block). Once another tip than the re-read's
        // mark is stored, above its own (a later block another replica applied while it
        // read), only what changed of our operations is written, and this replica's copies in
        // memory are dropped (`Batch::reread_all`), so that it reads that block's entries. A
        // stored tip above it that is still the mark is written over only if it is a block this
        // replica applied (of a branch a reorg left); another replica's (its node ahead of this
        // one's, which a restart or a gap found behind) is not, and the mark is taken off it.
        let mut catch_up_on = None;
        if let (Some(marked), Some((height, _))) = (&batch.reread_all, tip) {
            let stored = self.state.store.tip()?;
            let theirs = stored.as_ref() == Some(marked)
                && marked.height > height
                && self.hash_at(marked.height) != Some(marked.index_block_hash);
            if theirs
                || (stored.as_ref() != Some(marked)
                    && stored.as_ref().is_some_and(|s| s.height > height))
            {
                // a reorg's entries dropped instead: the later block's writer may not have seen
                // the branch the reorg left (its node never had it), so entries that branch
                // wrote would stay; dropped, they are read from the node on use
                let mut attempt = Batch {
                    reread_all: batch.reread_all,
                    uncached: if reorg {
                        crate::store::Uncached::named_by(batch)
                    } else {
                        crate::store::Uncached::default()
                    },
                    ..Batch::default()
                };
                if theirs {
                    // the block as it was, without the mark (fills keep rows again)
                    attempt.tip = Some(marked.unmarked());
                    attempt.guard.get_or_insert_with(Guard::default).tip = Some(stored);
                }
                submitter::with_changes(&mut attempt, changes);
                return Ok(Some((attempt, false)));
            }
            catch_up_on = Some(stored);
        }
        match tip
            .map(|(height, hash)| {
                self.tip_to_write(height, hash, kept_before, batch.reread_all.as_ref())
            })
            .transpose()?
        {
            Some(TipWrite::Write(new, stored)) => {
                // refused, another replica wrote the tip since: a later block (passed next
                // time), or another at this height (contested)
                attempt.tip = Some(new);
                attempt.guard.get_or_insert_with(Guard::default).tip =
                    Some(catch_up_on.unwrap_or(stored));
                kept = true;
            }
            Some(TipWrite::Passed) => {
                // nor the rows read for it over the later block's: the entries it names are
                // dropped instead (read again on use), so that this replica's copy of them
                // (`redis_store::LocalRows`, which only its own writes refresh) is not left as it
                // was before the block; and what it changed of our operations (the replica whose
                // tip was kept may have been a catch-up's, which looks for none)
                let mut attempt = Batch {
                    uncached: crate::store::Uncached::named_by(batch),
                    reread_all: batch.reread_all,
                    ..Batch::default()
                };
                submitter::with_changes(&mut attempt, changes);
                if attempt.is_empty() {
                    return Ok(None);
                }
                return Ok(Some((attempt, false)));
            }
            Some(TipWrite::Contested) => {
                return Err(StateError::Unsettled(
                    "another block stored at this height by another replica meanwhile".into(),
                )
                .into())
            }
            Some(TipWrite::Keep(stored)) if batch.reread_all == Some(stored) => {
                // this catch-up's own mark, on the block it caught up to: taken off (else fills
                // kept nothing until the next block)
                attempt.tip = Some(stored.unmarked());
                attempt.guard.get_or_insert_with(Guard::default).tip = Some(Some(stored));
                kept = true;
            }
            Some(TipWrite::Keep(_)) | None if changes.is_empty() && batch.is_empty() => {
                return Ok(None);
            }
            Some(TipWrite::Keep(stored)) => {
                attempt.guard.get_or_insert_with(Guard::default).tip = Some(Some(stored));
                kept = true;
            }
            None => {}
        }
        submitter::with_changes(&mut attempt, changes);
        Ok(Some((attempt, kept)))
    }

    /// What a block sent again writes of the entries it names, read now from this replica's
    /// node (`batch`), the store's tip `stored` as read before: the rows, guarded on that tip,
    /// if it is a block this replica applied (its node has it, so they are at least as new);
    /// else (another replica's later block, from a node ahead of this one's) none, the entries
    /// dropped instead (read again on use, as of that block). Refused, the tip moved: dropped.
    fn read_again(&self, batch: Batch, stored: Option<Tip>) -> Batch {
        if stored.is_some_and(|t| self.hash_at(t.height) == Some(t.index_block_hash)) {
            Batch {
                guard: Some(Guard {
                    tip: Some(stored),
                    ..Guard::default()
                }),
                ..batch
            }
        } else {
            names_dropped(&batch)
        }
    }

    /// A block applied already, sent again (by the node after a copy, or by anyone): reads
    /// what it names that was not read for its height, if its height is recent and the total
    /// stays within `MAX_NAMED` (beyond, the poller re-reads everything).
    async fn named_again(&self, height: u64, named: Named) -> Result<Applied, FollowError> {
        let (new, total) = match self.recent().get(&height).and_then(|s| s.named.as_ref()) {
            Some(seen) => {
                let new = named.minus(seen);
                let total = seen.len() + new.len();
                (new, total)
            }
            // nothing more to read for it (see `Seen`)
            None => return Ok(Applied::Again),
        };
        if new.is_empty() {
            tracing::debug!(height, "block already applied");
            return Ok(Applied::Again);
        }
        if total > events::MAX_NAMED {
            tracing::warn!(
                height,
                "a block sent again names too many entries: every entry will be re-read"
            );
            self.refresh_wanted.store(true, Ordering::SeqCst);
            // the re-read reads every entry: nothing more to read for this block, so that the
            // same copy sent again (anyone can post one) does not ask for another
            if let Some(seen) = self.recent().get_mut(&height) {
                seen.named = None;
            }
            return Ok(Applied::Again);
        }
        let stored = self.state.store.tip()?;
        let mut batch = Batch::default();
        self.state.reread(&new, &mut batch).await?;
        match self.write(self.read_again(batch.clone(), stored)).await {
            Ok(()) => {}
            Err(StoreError::Guarded(crate::store::Guarded::Changed)) => {
                self.write(names_dropped(&batch)).await?
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            height,
            entries = new.len(),
            "block sent again: read what it named anew"
        );
        if let Some(seen) = self
            .recent()
            .get_mut(&height)
            .and_then(|s| s.named.as_mut())
        {
            seen.extend(new);
        }
        Ok(Applied::Again)
    }

    /// Polls the node's tip once; catches up when the block stream is behind or broken, and
    /// re-reads when the block we applied last is no longer on the node's chain (a reorg).
    pub async fn poll(&self, stale_after_ms: u64) {
        // read before the node's tip: a block applied meanwhile only makes us less behind
        let applied = self.status.applied();
        let info = match self.state.rpc.info().await {
            Ok(i) => i,
            Err(e) => {
                if self.status.node_reachable.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "stacks node unreachable");
                }
                return;
            }
        };
        if !self.status.node_reachable.swap(true, Ordering::SeqCst) {
            tracing::info!(tip = info.stacks_tip_height, "stacks node reachable");
        }
        self.status
            .node_tip
            .store(info.stacks_tip_height, Ordering::SeqCst);
        self.status
            .last_poll_ok_ms
            .store(now_ms(), Ordering::SeqCst);
        let quiet = now_ms().saturating_sub(self.status.last_block_ms.load(Ordering::SeqCst))
            > stale_after_ms;
        // behind while blocks still arrive is the observer stream catching up: wait for it, as
        // only blocks tell which of our transactions were mined
        let behind = info.stacks_tip_height > applied && quiet;
        let went_back = info.stacks_tip_height < applied;
        // the node behind the tip stored at this start (before this process applied a block):
        // waited for, not read as a reorg. With replicas on Redis each following its own node,
        // that tip is often a block another replica applied from a node ahead of this one's,
        // which this one's gets in seconds; read as a reorg, the catch-up's entries, read from
        // the node behind, and its lower tip landed over the later block's (a suspension
        // between them undone for every replica), and our operations were read back from
        // height 0. A node that has the stored block (it answers a read at it: `?tip=`) left it
        // in a reorg: caught up at once, as before; one that never had it (behind, or reset)
        // is waited for, and a reorg or a reset is seen once its chain reaches that height
        // (`left_the_chain`: another block there)
        // (on a store of its own, the stored tip is this process's: a node without it was
        // reset, or left it in a reorg, caught up to at once as before)
        let waiting = went_back
            && applied == self.started_at
            && self.state.store.shared()
            && !self.node_had(applied).await;
        let was = self.status.node_behind_by.swap(
            if waiting {
                applied - info.stacks_tip_height
            } else {
                0
            },
            Ordering::SeqCst,
        );
        if waiting {
            if was == 0 {
                tracing::warn!(
                    stored = applied,
                    node = info.stacks_tip_height,
                    "the node is behind the tip stored at this start (another replica's, from a node ahead of this one's?): waiting for it"
                );
            }
            return;
        }
        let left = match self.left_the_chain(applied).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, "could not check our tip against the node");
                false
            }
        };
        let wanted = self.refresh_wanted.swap(false, Ordering::SeqCst);
        if applied == 0 || behind || went_back || left || wanted {
            if went_back || left {
                tracing::warn!(
                    applied,
                    node = info.stacks_tip_height,
                    "the block we applied last is not on the node's chain (a reorg or a reset chain)"
                );
            }
            if let Err(e) = self.catch_up(applied, went_back || left).await {
                if wanted {
                    self.refresh_wanted.store(true, Ordering::SeqCst);
                }
                tracing::warn!(error = %e, "catch-up failed; will retry");
            }
        }
    }

    /// Whether the node has (or had: a block a reorg left) the block applied at `applied`, by
    /// a read at it; not when it answers that it has not got it, nor when it cannot be asked.
    async fn node_had(&self, applied: u64) -> bool {
        let Some(hash) = self.hash_at(applied) else {
            return false;
        };
        let state = &self.state;
        let roles = state
            .rpc
            .call_read_at(
                &state.contracts.access_control(),
                "get-roles",
                &[],
                &state.contracts.address,
                Some(&hash),
            )
            .await;
        match roles {
            Ok(_) => true,
            Err(RpcError::NoSuchTip { .. }) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the node whether it has the stored tip's block");
                false
            }
        }
    }

    /// `written`, a write of a batch that may be a catch-up's (`marked`: its mark), with the mark
    /// taken off when it failed (else fills kept nothing until the next block).
    async fn caught_up_or_unmarked(
        &self,
        marked: Option<Tip>,
        written: Result<(), FollowError>,
    ) -> Result<(), FollowError> {
        if let (Err(_), Some(marked)) = (&written, marked) {
            self.state.unmark(marked).await;
        }
        written
    }

    /// Whether the block applied at `applied` is no longer the node's block at that height.
    async fn left_the_chain(&self, applied: u64) -> Result<bool, FollowError> {
        if applied == 0 {
            return Ok(false);
        }
        let Some(ours) = self.hash_at(applied) else {
            return Ok(false);
        };
        Ok(match self.state.rpc.block_at(applied).await? {
            Some(b) => b.header.block_id != ours,
            // the node's tip is below ours: `went_back` says so
            None => false,
        })
    }

    /// Jumps to the node's tip and re-reads every cached entry, the tip read before the
    /// entries so that they are at least as new as the tip they land with (read after them, a
    /// block mined while they were read, a suspension say, would be marked read past with the
    /// entry as it was before it). `reorg`: operations confirmed in blocks above the last one
    /// still on the node's chain are read back too.
    async fn catch_up(&self, applied: u64, reorg: bool) -> Result<(), FollowError> {
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        let info = self.state.rpc.info().await?;
        let height = info.stacks_tip_height;
        let Some(tip) = self.state.rpc.block_at(height).await? else {
            return Err(StateError::Unsettled(format!("the node's tip block {height}")).into());
        };
        // (before the mark: a failed read of the node leaves no mark behind)
        let from = if reorg {
            Some(self.fork_point(applied).await?)
        } else {
            // (a reorg the poller did not see: the block we applied last left the chain since)
            self.left_behind(applied).await?
        };
        let mut batch = Batch::default();
        self.state.refresh_all(&mut batch).await?;
        let marked = batch.reread_all;
        self.caught_up_or_unmarked(
            marked,
            self.write_with_changes(batch, Some((height, tip.header.block_id)), from, None)
                .await,
        )
        .await?;
        if let Some(from) = from {
            self.forget_from(from);
        }
        self.remember(height, Seen::read_past(tip.header.block_id));
        self.status.applied.store(height, Ordering::SeqCst);
        self.status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        self.status.skipped_blocks.store(true, Ordering::SeqCst);
        tracing::info!(height, "caught up with the node by reading its state");
        Ok(())
    }

    /// Where the blocks we applied left the node's chain (`fork_point`), if the one we applied
    /// last (`applied`) did: `None` while it is still the node's (or none was applied).
    async fn left_behind(&self, applied: u64) -> Result<Option<u64>, FollowError> {
        if applied == 0 || self.hash_at(applied).is_none() {
            return Ok(None);
        }
        let fork = self.fork_point(applied).await?;
        Ok((fork <= applied).then_some(fork))
    }

    /// The lowest height from which the blocks we applied may be abandoned: one above the
    /// highest remembered block (at most `applied`) still on the node's chain; 0 when none is.
    async fn fork_point(&self, applied: u64) -> Result<u64, FollowError> {
        let remembered: Vec<(u64, [u8; 32])> = self
            .recent()
            .range(..=applied)
            .rev()
            .map(|(h, s)| (*h, s.hash))
            .collect();
        for (h, ours) in remembered {
            if let Some(b) = self.state.rpc.block_at(h).await? {
                if b.header.block_id == ours {
                    return Ok(h + 1);
                }
            }
        }
        Ok(0)
    }

    /// Polls until `shutdown` fires.
    pub async fn run_poller(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // readiness judges the lag; a catch-up waits until the block stream has been quiet
        let stale_after = ((interval.as_millis() as u64) * 3).max(5_000);
        loop {
            self.poll(stale_after).await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One peer holds one place at most (a client sending bodies slowly holds one, not all
    /// four); another peer is let in beside it, and the peer again once its push is done.
    /// This host is not held to it.
    #[test]
    fn a_peer_holds_one_place_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, f) = follower(dir.path());
        let ip = |n: u8| Some(std::net::IpAddr::from([10, 0, 0, n]));
        let first = f.admit(ip(1)).expect("let in");
        assert!(f.admit(ip(1)).is_none(), "a second from the same peer");
        let others: Vec<_> = (2..=4)
            .map(|n| f.admit(ip(n)).expect("another peer"))
            .collect();
        assert!(f.admit(ip(5)).is_none(), "every place taken");
        drop(first);
        let again = f.admit(ip(1)).expect("its place back");
        drop((again, others));
        let local = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let here: Vec<_> = (0..4).map(|_| f.admit(local).expect("this host")).collect();
        assert!(f.admit(local).is_none());
        drop(here);
        // this host on an IPv6 socket (IPv4-mapped) is this host too
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let here: Vec<_> = (0..2)
            .map(|_| f.admit(Some(mapped)).expect("this host"))
            .collect();
        drop(here);
        let v6_local: std::net::IpAddr = "::1".parse().unwrap();
        let here: Vec<_> = (0..2)
            .map(|_| f.admit(Some(v6_local)).expect("this host"))
            .collect();
        drop(here);
        // an IPv6 host's addresses in one /64 are one peer
        let one: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let held = f.admit(Some(one)).unwrap();
        assert!(f.admit(Some(other)).is_none(), "the same /64");
        drop(held);
        // a peer refused for want of a place is not left holding one
        let all: Vec<_> = (1..=4).map(|n| f.admit(ip(n)).unwrap()).collect();
        assert!(f.admit(ip(9)).is_none());
        drop(all);
        assert!(f.admit(ip(9)).is_some());
    }

    fn follower(dir: &std::path::Path) -> (Arc<dyn crate::store::Store>, Follower) {
        follower_on(Arc::new(
            crate::store::RedbStore::open(&dir.join("s.redb")).unwrap(),
        ))
    }

    fn follower_on(
        store: Arc<dyn crate::store::Store>,
    ) -> (Arc<dyn crate::store::Store>, Follower) {
        let state = ChainState::without_node(store.clone());
        (store, Follower::new(state, Arc::default()).unwrap())
    }

    /// A copy of a recent block naming more than a block may (its events are the poster's:
    /// anyone can post one) asks for one re-read of every entry, once: the same copy sent
    /// again asks for none. Before, each copy asked for another, every poll a full re-read
    /// under the lock blocks and fills wait on.
    #[tokio::test]
    async fn a_copy_naming_too_much_asks_for_one_re_read_however_often_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, follower) = follower(dir.path());
        follower.remember(
            5,
            Seen {
                hash: [5; 32],
                named: Some(Named::default()),
            },
        );
        let too_much = || Named {
            providers: (0..=events::MAX_NAMED as u64)
                .map(|i| {
                    let mut hash160 = [0u8; 20];
                    hash160[..8].copy_from_slice(&i.to_be_bytes());
                    crate::stacks::Address::new(26, hash160).unwrap()
                })
                .collect(),
            ..Named::default()
        };
        follower.named_again(5, too_much()).await.unwrap();
        assert!(follower.refresh_wanted.swap(false, Ordering::SeqCst));
        follower.named_again(5, too_much()).await.unwrap();
        assert!(
            !follower.refresh_wanted.load(Ordering::SeqCst),
            "sent again: no second re-read"
        );
    }

    fn written(t: TipWrite) -> Tip {
        match t {
            TipWrite::Write(tip, _) => tip,
            other => panic!("{other:?}, to write expected"),
        }
    }

    /// A block whose tip the store has already (another replica applied it) leaves the tip
    /// as stored, its number with it; any other block's tip is written, with a number of its
    /// own.
    #[test]
    fn a_block_already_the_stored_tip_leaves_it_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (store, follower) = follower(dir.path());
        let first = written(follower.tip_to_write(7, [7; 32], false, None).unwrap());
        assert!(first.written.is_some());
        store
            .apply(Batch {
                tip: Some(first),
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(
            follower.tip_to_write(7, [7; 32], false, None).unwrap(),
            TipWrite::Keep(first),
            "kept"
        );
        let other = written(follower.tip_to_write(7, [8; 32], false, None).unwrap());
        assert_ne!(other.written, first.written);
        written(follower.tip_to_write(8, [8; 32], false, None).unwrap());
    }

    /// A follower on a Redis store under `prefix`, and another replica's store on the same
    /// Redis and prefix.
    fn beside_another_replica(
        redis: &crate::dev::TestRedis,
        prefix: &str,
    ) -> (
        Arc<dyn crate::store::Store>,
        Follower,
        crate::store::RedisStore,
    ) {
        let url = redis.url.as_str();
        let (store, follower) = follower_on(Arc::new(
            crate::store::RedisStore::open(url, prefix).unwrap(),
        ));
        let other = crate::store::RedisStore::open(url, prefix).unwrap();
        (store, follower, other)
    }

    /// Replicas sharing Redis: this replica applies block A, whose tip another replica stored
    /// already, so it keeps that tip and guards its write on it. Before its rows land, another
    /// replica writes block B at the same height (a reorg it saw first): the write is refused,
    /// and the block is not applied now (to be checked with the node again), rather than its
    /// rows landing under B's tip unnoticed. Or another replica applies the next block C: the
    /// write is refused, and only what A changed of our operations is written, neither rows
    /// read for A over C's nor A's tip under C's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocks_rows_do_not_land_under_another_block_stored_at_its_height_meanwhile() {
        use crate::store::Store;
        let redis = crate::dev::test_redis().await;
        let (store, follower, other) = beside_another_replica(&redis, "f:");
        let stored_by_other = |tip: Tip| {
            other
                .apply(Batch {
                    tip: Some(tip),
                    ..Batch::default()
                })
                .unwrap()
        };
        let who: crate::stacks::Address =
            "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap();
        let rows = Batch {
            reviewers: vec![(who, true)],
            ..Batch::default()
        };
        let a = (7, [7; 32]);
        for (then, moved) in [
            (Tip::applied(7, [8; 32]), "another block at its height"),
            (Tip::applied(8, [9; 32]), "the next block"),
        ] {
            stored_by_other(Tip::applied(a.0, a.1));
            // the write made (the tip kept), then the tip moved by another replica, then the
            // write sent
            let (attempt, kept) = follower
                .attempt(&rows, Some(a), vec![], false, false)
                .unwrap()
                .expect("rows to write");
            assert_eq!(attempt.tip, None, "A's tip kept as stored");
            assert!(kept, "{moved}");
            stored_by_other(then);
            assert!(
                matches!(
                    store.apply(attempt),
                    Err(StoreError::Guarded(crate::store::Guarded::Changed))
                ),
                "{moved}"
            );
            // the next attempt, with what the block changed of an operation of ours
            let op = submitter::operation("record:01", "access-control", "record", &[]);
            store
                .apply(Batch {
                    submissions: vec![op.clone()],
                    ..Batch::default()
                })
                .unwrap();
            let failed = crate::store::SubmissionState::Failed {
                txid: "ab".repeat(32),
                height: a.0,
                result: "refused".into(),
                nonce: None,
                raw: None,
            };
            let change = submitter::Change {
                read: op.clone(),
                state: failed.clone(),
            };
            let next = follower.attempt(&rows, Some(a), vec![change], true, false);
            if then.height == a.0 {
                assert!(next.is_err(), "{moved}: not applied now");
                assert_eq!(store.submission(&op.id).unwrap(), Some(op), "{moved}");
            } else {
                // the change, and the entries A names dropped: neither its rows nor its tip
                let (next, kept) = next.unwrap().expect("the change");
                assert!(next.reviewers.is_empty() && next.tip.is_none(), "{moved}");
                assert_eq!(next.uncached.reviewers, vec![who], "{moved}");
                assert!(!kept, "{moved}");
                // this replica's copy of the entry (its own write) is older than what the
                // other replica stored for the later block: dropped, it is read again.
                // Before, the copy stayed as it was, stale until a restart
                store
                    .apply(Batch {
                        reviewers: vec![(who, true)],
                        ..Batch::default()
                    })
                    .unwrap();
                other
                    .apply(Batch {
                        reviewers: vec![(who, false)],
                        ..Batch::default()
                    })
                    .unwrap();
                store.apply(next).unwrap();
                let changed = store.submission(&op.id).unwrap().unwrap();
                assert_eq!(changed.state, failed, "{moved}");
                assert_eq!(store.reviewer(&who).unwrap(), None, "{moved}");
            }
            assert_eq!(store.reviewer(&who).unwrap(), None, "{moved}");
            assert_eq!(store.tip().unwrap(), Some(then), "{moved}");
        }
    }

    /// A block sent again writes the entries it names, read now from this replica's node,
    /// only under a tip this replica applied (its node has that block), guarded on it; under
    /// another replica's later block they are dropped (read again on use, as of that block).
    /// Before, they were written unguarded whatever the tip: from a node behind the later
    /// block, over its rows.
    #[test]
    fn a_block_sent_again_writes_what_it_names_only_under_a_tip_this_replica_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, follower) = follower(dir.path());
        let who: crate::stacks::Address =
            "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap();
        let rows = Batch {
            reviewers: vec![(who, true)],
            ..Batch::default()
        };
        follower.remember(
            5,
            Seen {
                hash: [5; 32],
                named: Some(Named::default()),
            },
        );
        let ours = Tip::applied(5, [5; 32]);
        let written = follower.read_again(rows.clone(), Some(ours));
        assert_eq!(written.reviewers, vec![(who, true)]);
        assert_eq!(written.guard.and_then(|g| g.tip), Some(Some(ours)));
        for theirs in [Tip::applied(6, [6; 32]), Tip::applied(5, [9; 32])] {
            let dropped = follower.read_again(rows.clone(), Some(theirs));
            assert!(dropped.reviewers.is_empty() && dropped.guard.is_none());
            assert_eq!(dropped.uncached.reviewers, vec![who]);
        }
        assert!(follower.read_again(rows, None).reviewers.is_empty());
    }

    /// A catch-up refused once at a height where its own mark is stored (another block there:
    /// a reorg) is not contested by its own mark: it writes over it. Another block stored
    /// there that is not its mark is contested.
    #[test]
    fn a_catch_ups_own_mark_at_its_height_is_not_contested() {
        let dir = tempfile::tempdir().unwrap();
        let (store, follower) = follower(dir.path());
        let marked = Tip {
            catching_up: true,
            ..Tip::applied(7, [7; 32])
        };
        store
            .apply(Batch {
                tip: Some(marked),
                ..Batch::default()
            })
            .unwrap();
        written(
            follower
                .tip_to_write(7, [8; 32], true, Some(&marked))
                .unwrap(),
        );
        assert_eq!(
            follower.tip_to_write(7, [8; 32], true, None).unwrap(),
            TipWrite::Contested
        );
    }

    /// Replicas sharing Redis, each following its own node: a block whose tip another replica
    /// moved past already (its node ahead of this one's) writes neither the rows read for it
    /// nor its tip, only drops the entries it names (read again on use, as of the later block);
    /// and a block's write decided while the tip was below it is refused if another replica
    /// stores a later block before it lands, and then passed the same way. Before, the block's
    /// first write landed over the later block's whatever the tip: its rows, read from a node
    /// without the later block (a reviewer it removed verified again), for every replica, and
    /// the replicas' tip back under the later block's until the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocks_first_write_does_not_land_over_a_later_block_another_replica_stored() {
        use crate::store::Store;
        let redis = crate::dev::test_redis().await;
        let (store, follower, other) = beside_another_replica(&redis, "p:");
        let who: crate::stacks::Address =
            "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap();
        let later = |height: u64, reviewer: bool| {
            let tip = Tip::applied(height, [height as u8; 32]);
            other
                .apply(Batch {
                    tip: Some(tip),
                    reviewers: vec![(who, reviewer)],
                    ..Batch::default()
                })
                .unwrap();
            tip
        };
        // this replica's block 7 read its reviewer from its node, before block 8 removed them
        let rows = Batch {
            reviewers: vec![(who, true)],
            ..Batch::default()
        };
        let seventh = (7, [7; 32]);

        // another replica applied block 8 first
        let eighth = later(8, false);
        let (passed, kept) = follower
            .attempt(&rows, Some(seventh), vec![], false, false)
            .unwrap()
            .expect("the entries it names to drop");
        assert!(!kept);
        assert!(passed.reviewers.is_empty() && passed.tip.is_none());
        assert_eq!(passed.uncached.reviewers, vec![who]);
        store.apply(passed).unwrap();
        assert_eq!(store.tip().unwrap(), Some(eighth), "the later block's tip");
        assert_ne!(
            store.reviewer(&who).unwrap(),
            Some(true),
            "nor this block's row"
        );

        // the tip below block 10 when its write is decided, block 11 stored before it lands
        later(9, false);
        let tenth = (10, [10; 32]);
        let (attempt, kept) = follower
            .attempt(&rows, Some(tenth), vec![], false, false)
            .unwrap()
            .expect("rows and tip to write");
        assert_eq!(attempt.tip.map(|t| t.height), Some(10));
        assert!(kept, "guarded on the tip as read");
        let eleventh = later(11, false);
        assert!(
            matches!(
                store.apply(attempt),
                Err(StoreError::Guarded(crate::store::Guarded::Changed))
            ),
            "refused"
        );
        let (again, _) = follower
            .attempt(&rows, Some(tenth), vec![], true, false)
            .unwrap()
            .expect("the entries it names to drop");
        assert!(again.reviewers.is_empty() && again.tip.is_none());
        store.apply(again).unwrap();
        assert_eq!(store.tip().unwrap(), Some(eleventh));
        assert_ne!(store.reviewer(&who).unwrap(), Some(true));

        // with the tip still as read, the write lands: rows and tip
        let twelfth = (12, [12; 32]);
        let (attempt, _) = follower
            .attempt(&rows, Some(twelfth), vec![], false, false)
            .unwrap()
            .expect("rows and tip to write");
        store.apply(attempt).unwrap();
        assert_eq!(store.tip().unwrap().map(|t| t.height), Some(12));
        assert_eq!(store.reviewer(&who).unwrap(), Some(true));
    }

    /// Replicas sharing Redis: a catch-up's entries were read (one read of the node each) while
    /// another replica applied the next block, which suspended a reviewer: the catch-up's write
    /// is refused (guarded on the tip as it was), and the next attempt writes neither its
    /// entries nor its tip, only drops this replica's copies in memory. Before, its entries
    /// landed over the block's (the reviewer verified again in Redis, for every replica that
    /// read it, until this one applied that block), its tip under the block's. A stored tip
    /// above the catch-up's that is still its mark is written over, entries and tip, only if
    /// this replica applied that block (of a branch a reorg left); over another replica's
    /// later block, the mark is taken off and nothing else written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_catch_ups_entries_do_not_land_over_a_block_applied_while_it_read() {
        use crate::store::Store;
        let redis = crate::dev::test_redis().await;
        let (store, follower, other) = beside_another_replica(&redis, "c:");
        let who: crate::stacks::Address =
            "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap();
        let stored = |tip: Tip, verified: bool| {
            other
                .apply(Batch {
                    tip: Some(tip),
                    reviewers: vec![(who, verified)],
                    ..Batch::default()
                })
                .unwrap()
        };
        // the tip as the catch-up marked it, then its entries read at the node's block 6
        let marked = Tip::applied(5, [5; 32]);
        stored(marked, true);
        let caught_up = |marked: Tip| Batch {
            reviewers: vec![(who, true)],
            reread_all: Some(marked),
            ..Batch::default()
        };
        let at = (6, [6; 32]);
        let (attempt, _) = follower
            .attempt(&caught_up(marked), Some(at), vec![], false, false)
            .unwrap()
            .expect("entries to write");
        assert_eq!(attempt.tip.map(|t| t.height), Some(6), "its own tip");
        // the next block, applied by another replica before the write lands
        let next = Tip::applied(7, [7; 32]);
        stored(next, false);
        assert!(
            matches!(
                store.apply(attempt),
                Err(StoreError::Guarded(crate::store::Guarded::Changed))
            ),
            "refused"
        );
        let (again, kept) = follower
            .attempt(&caught_up(marked), Some(at), vec![], false, false)
            .unwrap()
            .expect("the copies to drop");
        assert!(!kept);
        assert!(again.reread_all.is_some() && again.reviewers.is_empty() && again.tip.is_none());
        store.apply(again).unwrap();
        assert_eq!(store.tip().unwrap(), Some(next));
        assert_eq!(store.reviewer(&who).unwrap(), Some(false), "the block's");
        // a reorg's, the same: its entries dropped (read from the node on use), for the later
        // block's writer may not have seen the branch the reorg left
        let (reorg, _) = follower
            .attempt(&caught_up(marked), Some(at), vec![], false, true)
            .unwrap()
            .expect("the entries to drop");
        assert!(reorg.reviewers.is_empty() && reorg.tip.is_none());
        assert_eq!(reorg.uncached.reviewers, vec![who]);
        // the stored tip above it is the catch-up's own mark, over a block another replica
        // applied (its node ahead of this one's: a restart or a gap found this one behind):
        // neither entries nor tip written over it, the mark taken off. Before, the catch-up's
        // entries, read from the node behind, and its tip landed over the later block's
        let mark_of = |t: Tip| Tip {
            catching_up: true,
            ..t
        };
        let later = mark_of(Tip::applied(8, [8; 32]));
        stored(later, false);
        let (kept_off, _) = follower
            .attempt(&caught_up(later), Some(at), vec![], false, false)
            .unwrap()
            .expect("the mark to take off");
        assert!(kept_off.reviewers.is_empty());
        assert_eq!(
            kept_off.guard.as_ref().and_then(|g| g.tip),
            Some(Some(later))
        );
        store.apply(kept_off).unwrap();
        let now = store.tip().unwrap().unwrap();
        assert_eq!((now.height, now.index_block_hash), (8, [8; 32]));
        assert!(!now.catching_up, "the mark taken off");
        assert_eq!(store.reviewer(&who).unwrap(), Some(false), "the block's");
        // the stored tip above it is the catch-up's own mark over a block this replica applied
        // (a reorg took the node's chain back below it): entries and tip written over it
        let abandoned = mark_of(Tip::applied(9, [9; 32]));
        follower.remember(
            9,
            Seen {
                hash: [9; 32],
                named: Some(Named::default()),
            },
        );
        stored(abandoned, false);
        let (back, _) = follower
            .attempt(&caught_up(abandoned), Some(at), vec![], false, false)
            .unwrap()
            .expect("entries to write");
        store.apply(back).unwrap();
        assert_eq!(store.tip().unwrap().map(|t| t.height), Some(6));
        assert_eq!(store.reviewer(&who).unwrap(), Some(true), "re-read");
        // a catch-up to the very block its mark is on (nothing cached to write): the mark
        // taken off all the same. Before, it stayed, and no fill kept a row until a later block
        let on = mark_of(Tip::applied(10, [10; 32]));
        stored(on, true);
        let empty = Batch {
            reread_all: Some(on),
            ..Batch::default()
        };
        let (off, _) = follower
            .attempt(&empty, Some((10, [10; 32])), vec![], false, false)
            .unwrap()
            .expect("the mark to take off");
        store.apply(off).unwrap();
        let now = store.tip().unwrap().unwrap();
        assert_eq!((now.height, now.catching_up), (10, false));
        // another replica's block applied again over a catch-up's mark leaves it: that catch-up
        // takes it off
        let theirs = mark_of(Tip::applied(11, [11; 32]));
        stored(theirs, true);
        let again = follower
            .attempt(
                &Batch::default(),
                Some((11, [11; 32])),
                vec![],
                false,
                false,
            )
            .unwrap();
        assert!(again.is_none(), "{again:?}");
    }
}

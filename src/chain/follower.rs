//! The chain follower: receives the stacks-node's event-observer POSTs, applies each block to
//! the store durably before answering 200 (so the node retries anything not applied), and
//! polls the node's tip to notice gaps, restarts, reorgs and an unreachable node.
//!
//! Anyone who can reach the observer port can POST a block, so a push is only a hint. A block
//! is applied only once the node's RPC serves a block with the same index block hash at its
//! height (`GET /v3/blocks/height/{h}`, header hashed here); then the cache entries its print
//! events name are read back from the node (the events' values are never used), and the
//! operations it says it mined are confirmed only once their effect reads back on chain. A
//! block applies as one batch: those reads, the confirmations and the new tip. After a gap
//! (missed blocks, a node that went away, a restart), every cached entry is re-read from the
//! node and lands with the new tip. After a reorg (another block at a height applied, or our
//! last block gone from the node's chain), the same, and every operation confirmed in an
//! abandoned block is read back and reopened if the new branch lacks it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::events::{self, NewBlock};
use super::state::{ChainState, StateError};
use super::submitter;
use crate::stacks::Address;
use crate::store::{Batch, StoreError, Tip};

/// Unix seconds (`now_ms() / 1000`): the time of requests, tokens, notices and paging.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What readiness and the submitter need to know of the follower, shared and lock-free.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    pub applied: AtomicU64,
    pub node_tip: AtomicU64,
    pub last_poll_ok_ms: AtomicU64,
    pub last_block_ms: AtomicU64,
    pub node_reachable: AtomicBool,
    /// Set when blocks were skipped (a catch-up, or a block after a gap): transactions
    /// mined in them were not seen.
    pub skipped_blocks: AtomicBool,
    /// Blocks pushed to the observer that the node did not confirm (forged, or abandoned
    /// since), since start: for operators.
    pub pushes_not_on_chain: AtomicU64,
}

impl FollowerStatus {
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }
    pub fn node_tip(&self) -> u64 {
        self.node_tip.load(Ordering::SeqCst)
    }
    pub fn lag(&self) -> u64 {
        self.node_tip().saturating_sub(self.applied())
    }
    /// Within `max_lag` blocks of a node heard from within `fresh_ms`.
    pub fn in_sync(&self, max_lag: u64, fresh_ms: u64) -> bool {
        let heard =
            now_ms().saturating_sub(self.last_poll_ok_ms.load(Ordering::SeqCst)) <= fresh_ms;
        heard
            && self.node_reachable.load(Ordering::SeqCst)
            && self.applied() > 0
            && self.lag() <= max_lag
    }
}

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
    /// Already applied (the node sent it again).
    Again,
    /// Not the node's block at that height (forged, or abandoned since): nothing changed.
    NotOnChain(String),
}

/// How many applied blocks are remembered by height, to know a reorg when the node sends
/// another block at a height already applied.
const RECENT_BLOCKS: usize = 512;

pub struct Follower {
    pub state: ChainState,
    pub status: Arc<FollowerStatus>,
    /// The service's own Stacks address: whether the chain used a nonce of ours.
    sender: Address,
    /// Index block hashes of the blocks applied lately, by height.
    recent: Mutex<BTreeMap<u64, [u8; 32]>>,
}

impl Follower {
    pub fn new(
        state: ChainState,
        status: Arc<FollowerStatus>,
        sender: Address,
    ) -> Result<Follower, StoreError> {
        let mut recent = BTreeMap::new();
        if let Some(tip) = state.store.tip()? {
            status.applied.store(tip.height, Ordering::SeqCst);
            recent.insert(tip.height, tip.index_block_hash);
        }
        // give the node's block stream its chance before polling calls it quiet
        status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        Ok(Follower {
            state,
            status,
            sender,
            recent: Mutex::new(recent),
        })
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.state.store, batch).await
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, [u8; 32]>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one `/new_block` payload, once the node confirms it is its block at that
    /// height; returns once what it changed is durable. Nothing in the payload is believed
    /// but its height and hash, and those only as the node confirms them.
    pub async fn on_block(&self, block: NewBlock) -> Result<Applied, FollowError> {
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
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        match self.state.rpc.block_at(height).await? {
            Some(h) if h.block_id == pushed && h.height == height => {}
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
                tracing::warn!(height, "a pushed block is above the node's tip: ignored");
                return Ok(Applied::NotOnChain(format!(
                    "the node has no block at height {height}"
                )));
            }
        }
        self.status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        let known = self.recent().get(&height).copied();
        if known == Some(pushed) {
            tracing::debug!(height, "block already applied");
            return Ok(Applied::Again);
        }
        let applied = self.status.applied();
        let mut batch = Batch::default();
        // another block at a height we applied: the chain reorganized from there (a block at
        // a height we skipped in a catch-up is only read again)
        let reorg = known.is_some();
        if reorg {
            tracing::warn!(height, applied, "reorg: the node's chain left blocks we applied; re-reading the cache and our confirmations");
            self.state.refresh_all(&mut batch).await?;
            submitter::reopen_abandoned(
                height,
                &self.state.rpc,
                &self.state.contracts,
                self.state.store.as_ref(),
                &mut batch,
            )
            .await?;
        } else if applied > 0 && height > applied + 1 {
            tracing::warn!(
                from = applied,
                to = height,
                "gap in the block stream: re-reading the cache"
            );
            self.state.refresh_all(&mut batch).await?;
            // transactions mined in the missing blocks were not seen
            self.status.skipped_blocks.store(true, Ordering::SeqCst);
        }
        let prints = events::prints(&block, &self.state.contracts);
        let named = events::named(&prints);
        if !reorg && named.len() > events::MAX_NAMED {
            self.state.refresh_all(&mut batch).await?;
        } else if !reorg {
            self.state.reread(&named, &mut batch).await?;
        }
        submitter::confirmations(
            &block,
            &self.state.rpc,
            &self.state.contracts,
            &self.sender,
            self.state.store.as_ref(),
            &mut batch,
        )
        .await?;
        let tip = if reorg || height > applied {
            Some(Tip {
                height,
                index_block_hash: pushed,
            })
        } else {
            None
        };
        batch.tip = tip;
        self.write(batch).await?;
        {
            let mut recent = self.recent();
            if reorg {
                recent.retain(|h, _| *h < height);
            }
            recent.insert(height, pushed);
            while recent.len() > RECENT_BLOCKS {
                recent.pop_first();
            }
        }
        if tip.is_some() {
            self.status.applied.store(height, Ordering::SeqCst);
        }
        self.status.node_tip.fetch_max(height, Ordering::SeqCst);
        tracing::info!(height, events = prints.len(), "block applied");
        Ok(Applied::Block)
    }

    /// Polls the node's tip once; catches up when the block stream is behind or broken, and
    /// re-reads when the block we applied last is no longer on the node's chain (a reorg).
    pub async fn poll(&self, stale_after_ms: u64) {
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
        let applied = self.status.applied();
        let quiet = now_ms().saturating_sub(self.status.last_block_ms.load(Ordering::SeqCst))
            > stale_after_ms;
        // behind while blocks still arrive is the observer stream catching up: wait for it, as
        // only blocks tell which of our transactions were mined
        let behind = info.stacks_tip_height > applied && quiet;
        let went_back = info.stacks_tip_height < applied;
        let left = match self.left_the_chain(applied).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, "could not check our tip against the node");
                false
            }
        };
        if applied == 0 || behind || went_back || left {
            if went_back || left {
                tracing::warn!(
                    applied,
                    node = info.stacks_tip_height,
                    "the block we applied last is not on the node's chain (a reorg or a reset chain)"
                );
            }
            if let Err(e) = self.catch_up(applied, went_back || left).await {
                tracing::warn!(error = %e, "catch-up failed; will retry");
            }
        }
    }

    /// Whether the block applied at `applied` is no longer the node's block at that height.
    async fn left_the_chain(&self, applied: u64) -> Result<bool, FollowError> {
        if applied == 0 {
            return Ok(false);
        }
        let Some(ours) = self.recent().get(&applied).copied() else {
            return Ok(false);
        };
        Ok(match self.state.rpc.block_at(applied).await? {
            Some(h) => h.block_id != ours,
            // the node's tip is below ours: `went_back` says so
            None => false,
        })
    }

    /// Re-reads every cached entry and jumps to the node's tip, read after the entries so
    /// that they are at least as new as the tip they land with. `reorg`: operations confirmed
    /// in blocks above the last one still on the node's chain are read back too.
    async fn catch_up(&self, applied: u64, reorg: bool) -> Result<(), FollowError> {
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        let mut batch = Batch::default();
        self.state.refresh_all(&mut batch).await?;
        if reorg {
            let from = self.fork_point(applied).await?;
            submitter::reopen_abandoned(
                from,
                &self.state.rpc,
                &self.state.contracts,
                self.state.store.as_ref(),
                &mut batch,
            )
            .await?;
            self.recent().retain(|h, _| *h < from);
        }
        let info = self.state.rpc.info().await?;
        let height = info.stacks_tip_height;
        let Some(tip) = self.state.rpc.block_at(height).await? else {
            return Err(StateError::Unsettled(format!("the node's tip block {height}")).into());
        };
        batch.tip = Some(Tip {
            height,
            index_block_hash: tip.block_id,
        });
        self.write(batch).await?;
        self.recent().insert(height, tip.block_id);
        self.status.applied.store(height, Ordering::SeqCst);
        self.status.skipped_blocks.store(true, Ordering::SeqCst);
        tracing::info!(height, "caught up with the node by reading its state");
        Ok(())
    }

    /// The lowest height at which a block we applied is no longer the node's (`applied + 1`
    /// when all we remember still is; the oldest remembered height when none is).
    async fn fork_point(&self, applied: u64) -> Result<u64, FollowError> {
        let remembered: Vec<(u64, [u8; 32])> = self
            .recent()
            .range(..=applied)
            .rev()
            .map(|(h, b)| (*h, *b))
            .collect();
        let mut from = applied + 1;
        for (h, ours) in remembered {
            match self.state.rpc.block_at(h).await? {
                Some(b) if b.block_id == ours => return Ok(from),
                _ => from = h,
            }
        }
        Ok(from)
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

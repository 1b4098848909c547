//! The chain follower: receives the stacks-node's event-observer POSTs, applies each block to
//! the store durably before answering 200 (so the node retries anything not applied), and
//! polls the node's tip to notice gaps, restarts and an unreachable node.
//!
//! A block applies as one batch: the cache updates from its print events, the confirmations
//! of our own transactions, and the new tip. After a gap (missed blocks, a node that went
//! away, a restart), every cached entry is re-read from the node and lands with the new tip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::events::{self, NewBlock};
use super::state::{ChainState, StateError};
use super::submitter;
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

pub struct Follower {
    pub state: ChainState,
    pub status: Arc<FollowerStatus>,
}

impl Follower {
    pub fn new(state: ChainState, status: Arc<FollowerStatus>) -> Result<Follower, StoreError> {
        if let Some(tip) = state.store.tip()? {
            status.applied.store(tip.height, Ordering::SeqCst);
        }
        // give the node's block stream its chance before polling calls it quiet
        status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        Ok(Follower { state, status })
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.state.store, batch).await
    }

    /// Applies one `/new_block` payload; returns once it is durable.
    pub async fn on_block(&self, block: NewBlock) -> Result<(), FollowError> {
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        self.status.last_block_ms.store(now_ms(), Ordering::SeqCst);
        let applied = self.status.applied();
        if block.block_height <= applied && applied > 0 {
            tracing::debug!(
                height = block.block_height,
                applied,
                "block already applied"
            );
            return Ok(());
        }
        let mut batch = Batch::default();
        if applied > 0 && block.block_height > applied + 1 {
            tracing::warn!(
                from = applied,
                to = block.block_height,
                "gap in the block stream: re-reading the cache"
            );
            self.state.refresh_all(&mut batch).await?;
            // transactions mined in the missing blocks were not seen
            self.status.skipped_blocks.store(true, Ordering::SeqCst);
        }
        let prints = events::prints(&block, &self.state.contracts);
        let store = self.state.store.clone();
        events::cache_updates(&prints, store.as_ref(), &mut batch)?;
        submitter::confirmations(&block, store.as_ref(), &mut batch)?;
        batch.tip = Some(Tip {
            height: block.block_height,
            index_block_hash: events::hash32(&block.index_block_hash),
        });
        self.write(batch).await?;
        self.status
            .applied
            .store(block.block_height, Ordering::SeqCst);
        self.status
            .node_tip
            .fetch_max(block.block_height, Ordering::SeqCst);
        tracing::info!(
            height = block.block_height,
            events = prints.len(),
            "block applied"
        );
        Ok(())
    }

    /// Polls the node's tip once; catches up when the block stream is behind or broken.
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
        if applied == 0 || behind || went_back {
            if went_back {
                tracing::warn!(
                    applied,
                    node = info.stacks_tip_height,
                    "the node's tip is behind ours (a reset chain?)"
                );
            }
            if let Err(e) = self
                .catch_up(info.stacks_tip_height, &info.stacks_tip)
                .await
            {
                tracing::warn!(error = %e, "catch-up failed; will retry");
            }
        }
    }

    async fn catch_up(&self, height: u64, hash: &str) -> Result<(), FollowError> {
        // one block (or catch-up) at a time, and none while a cache fill checks and writes
        let _guard = self.state.apply_lock.lock().await;
        let mut batch = Batch::default();
        self.state.refresh_all(&mut batch).await?;
        batch.tip = Some(Tip {
            height,
            index_block_hash: events::hash32(hash),
        });
        self.write(batch).await?;
        self.status.applied.store(height, Ordering::SeqCst);
        self.status.skipped_blocks.store(true, Ordering::SeqCst);
        tracing::info!(height, "caught up with the node by reading its state");
        Ok(())
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
    use crate::chain::contracts::Contracts;
    use crate::chain::rpc::NodeClient;
    use crate::store::{RedbStore, Store};

    fn block(height: u64) -> NewBlock {
        serde_json::from_value(serde_json::json!({
            "block_height": height,
            "index_block_hash": format!("0x{}", hex::encode([height as u8; 32])),
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_gap_in_the_block_stream_tells_the_submitter_to_check_on_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
        // nothing is cached, so the gap's re-read asks the node nothing
        let rpc = NodeClient::new("http://127.0.0.1:9", Duration::from_millis(10), 0);
        let contracts = Contracts {
            address: "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".parse().unwrap(),
        };
        let status = Arc::new(FollowerStatus::default());
        let follower =
            Follower::new(ChainState::new(store, rpc, contracts), status.clone()).unwrap();
        follower.on_block(block(1)).await.unwrap();
        follower.on_block(block(2)).await.unwrap();
        assert!(!status.skipped_blocks.load(Ordering::SeqCst));
        follower.on_block(block(5)).await.unwrap();
        assert!(status.skipped_blocks.load(Ordering::SeqCst));
        assert_eq!(status.applied(), 5);
    }
}

//! What the chain follower knows of the node and of its own progress, shared lock-free with
//! readiness, the grant path (how stale its view of the chain may be), the submitter and the
//! metrics.
//!
//! It must not: do I/O, or decide anything (it holds figures; others judge them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// The service's chain operations this process found failed and logged so (the contract
    /// refused one, one could not be signed, or whether one ran cannot be told), since start:
    /// for operators (each replica counts those its own writes logged).
    pub operations_failed: AtomicU64,
    /// How far the node is behind the tip stored when this process started, while the follower
    /// waits for it (`Follower::poll`): counted as lag (the node cannot be asked about that
    /// tip's state yet).
    pub node_behind_by: AtomicU64,
}

impl FollowerStatus {
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }
    pub fn node_tip(&self) -> u64 {
        self.node_tip.load(Ordering::SeqCst)
    }
    pub fn lag(&self) -> u64 {
        self.node_tip()
            .saturating_sub(self.applied())
            .max(self.node_behind_by.load(Ordering::SeqCst))
    }
}

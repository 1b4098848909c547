//! How fresh the service's view of the chain is at one grant: the lag behind the node, or,
//! while the node is silent, the blocks that could have been mined since it last answered.
//! A policy input (`context.chain_*`), and kept with the access.
//!
//! It must not: read the node (it reads the follower's status only).

use std::sync::atomic::Ordering;

use crate::chain::status::FollowerStatus;

/// The service's view of the chain at one grant, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainView {
    pub lag_blocks: u64,
    pub reachable: bool,
    pub stale: bool,
}

/// `status` read at `now_ms`: the lag behind the node's tip, or, when the node has been
/// silent, the blocks that could have been mined since it last answered (a suspension made
/// meanwhile is not seen either way); never heard from, the view counts as stale.
pub fn chain_view(
    status: &FollowerStatus,
    now_ms: u64,
    seconds_per_block: u64,
    max_lag_blocks: u64,
    fresh_ms: u64,
) -> ChainView {
    let heard = status.last_poll_ok_ms.load(Ordering::SeqCst);
    if heard == 0 || status.applied() == 0 {
        return ChainView {
            lag_blocks: u64::MAX,
            reachable: false,
            stale: true,
        };
    }
    let silent_ms = now_ms.saturating_sub(heard);
    let silent_blocks = silent_ms / seconds_per_block.saturating_mul(1000).max(1);
    let lag_blocks = status.lag().max(silent_blocks);
    ChainView {
        lag_blocks,
        reachable: status.node_reachable.load(Ordering::SeqCst) && silent_ms <= fresh_ms,
        stale: lag_blocks > max_lag_blocks,
    }
}

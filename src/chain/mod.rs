//! Chain I/O: the node RPC client, the contracts' shapes, the chain-state cache, the follower
//! that keeps it current from event-observer POSTs, and the submitter of our own transactions.
//! The break-glass path only ever reads the cache; everything that waits on the node is here.
//!
//! It must not: be called from the break-glass path except through the cache (`state.rs`).

pub mod contracts;
pub mod events;
pub mod follower;
pub mod rpc;
pub mod state;
pub mod status;
pub mod submitter;

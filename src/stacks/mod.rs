//! Stacks wire formats: Clarity values, addresses, block headers, SIP-018 structured-data
//! signatures and transactions. Transactions are built and signed with stacks-rs; what it lacks (a decoder
//! that is safe on untrusted bytes, SIP-018, transaction decoding) lives here, in its style.
//! This module does no I/O.
//!
//! It must not: do I/O.

pub mod address;
pub mod block;
pub mod clarity;
pub mod sip018;
pub mod tx;

pub use address::Address;
pub use clarity::{Principal, Value};

//! The wall clock, in Unix milliseconds and seconds: the time of requests, tokens, notices,
//! paging and blocks heard. One place, so that every layer reads the same clock.
//!
//! It must not: depend on any other module of the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds; 0 on a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds (`now_ms() / 1000`).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

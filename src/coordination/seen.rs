//! The nonces already used, in memory, so that "used before?" needs no store read: a
//! verified request's while it is judged, and a granted one's until it is stale (a refused
//! request's is given back: the same signed request may be sent again while fresh, and is
//! judged again). Granted ones are also durable (the grant's batch) and read back at start.
//!
//! It must not: decide a grant (it only answers whether a nonce was seen).

use std::collections::HashSet;

/// Used nonces (`signer:nonce`), and the same by when they may be forgotten, so that
/// forgetting touches only the expired ones (a sweep of every entry, once a second, held the
/// lock for milliseconds at a thousand requests a second).
#[derive(Default)]
pub struct Seen {
    keys: HashSet<String>,
    by_time: std::collections::BTreeMap<u64, Vec<String>>,
}

impl Seen {
    /// Records `key`; true if it was already there (a replay).
    pub fn insert(&mut self, key: String, until: u64) -> bool {
        if self.keys.contains(&key) {
            return true;
        }
        self.by_time.entry(until).or_default().push(key.clone());
        self.keys.insert(key);
        false
    }

    /// Forgets `key`, recorded with `until`, at once (a request that may be sent again).
    pub fn remove(&mut self, key: &str, until: u64) {
        if self.keys.remove(key) {
            if let Some(keys) = self.by_time.get_mut(&until) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.by_time.remove(&until);
                }
            }
        }
    }

    /// Forgets what may be forgotten by `now`.
    pub fn forget_until(&mut self, now: u64) {
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                self.keys.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_nonces_are_kept_until_due_and_forgotten_then() {
        let mut seen = Seen::default();
        assert!(!seen.insert("ST1:1".into(), 100));
        assert!(!seen.insert("ST1:2".into(), 90));
        assert!(
            seen.insert("ST1:1".into(), 200),
            "a replay, whatever its time"
        );
        seen.forget_until(89);
        assert!(seen.insert("ST1:2".into(), 300), "not due yet");
        seen.forget_until(90);
        assert!(!seen.insert("ST1:2".into(), 300), "forgotten when due");
        assert!(seen.insert("ST1:1".into(), 100), "the other one stays");
        seen.forget_until(1000);
        assert!(seen.keys.is_empty() && seen.by_time.is_empty());
    }

    #[test]
    fn a_nonce_given_back_may_be_used_again_and_the_others_stay() {
        let mut seen = Seen::default();
        assert!(!seen.insert("ST1:1".into(), 100));
        assert!(!seen.insert("ST1:2".into(), 100));
        seen.remove("ST1:1", 100);
        assert!(!seen.insert("ST1:1".into(), 100), "usable again");
        assert!(seen.insert("ST1:2".into(), 100), "still used");
        seen.remove("ST1:1", 100);
        seen.remove("ST1:2", 100);
        assert!(seen.keys.is_empty() && seen.by_time.is_empty());
    }
}

//! The coordination of one process, in memory: nonces in `Seen` (the store's `replays`, read
//! back at start, cover a restart), each clinician's rate (GCRA, as the grant's write on Redis
//! takes it, so that a grant that recorded nothing gives its cell back; the last minute's
//! grants, read from the same `replays`, taken again at start), leases in a map (one
//! process holds them all, so a lease only changes hands after it lapses).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use super::seen::Seen;
use crate::clock::{now_ms, now_secs};
use crate::store::StoreError;

/// Spent sign-in challenges: nonce → until (unix s), and (until, nonce) in order.
type Challenges = (
    HashMap<String, u64>,
    std::collections::BTreeSet<(u64, String)>,
);

pub struct Local {
    seen: Mutex<Seen>,
    /// Each clinician's rate of grants (GCRA, as a grant's write takes it on Redis: one every
    /// `emission_ms`, at most `burst_ms` ahead): when their next grant is due, in ms on a
    /// monotonic clock from `started` (a wall clock stepped back would refuse them all). Kept
    /// here rather than in a rate limiter crate's cells, because a grant refused after its cell
    /// was taken (its write failed: nothing recorded) gives the cell back.
    rates: Mutex<HashMap<String, u64>>,
    started: std::time::Instant,
    emission_ms: u64,
    burst_ms: u64,
    /// name → (holder, until unix ms, fencing token)
    leases: Mutex<HashMap<String, (String, u64, u64)>>,
    fences: std::sync::atomic::AtomicU64,
    /// Spent sign-in challenges: nonce → until (unix s), and the same ordered by until, kept
    /// until then.
    challenges: Mutex<Challenges>,
    /// Sessions: key → (session, last used, unix ms).
    sessions: Mutex<HashMap<String, (super::OpenSession, u64)>>,
    /// Sessions taken out, their ends not logged yet: key → (what it was, taken when).
    ending: Mutex<HashMap<String, (super::Lapsed, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Local {
    pub fn new(per_minute: NonZeroU32) -> Local {
        Local {
            seen: Mutex::default(),
            rates: Mutex::default(),
            started: std::time::Instant::now(),
            emission_ms: (60_000 / u64::from(per_minute.get())).max(1),
            burst_ms: (60_000 / u64::from(per_minute.get())).max(1) * u64::from(per_minute.get()),
            leases: Mutex::default(),
            fences: std::sync::atomic::AtomicU64::new(0),
            challenges: Mutex::default(),
            sessions: Mutex::default(),
            ending: Mutex::default(),
        }
    }

    /// Remembers the nonces `store` says were used before a restart and are still fresh, and
    /// has it forget the others (one row a grant would otherwise stay forever, and be read at
    /// every start). Returns how many it remembers. The clinicians' rates too: each fresh
    /// nonce is a grant recorded within the last three minutes at most (its request issued
    /// `crate::access::NONCE_KEPT_SECS` before the nonce's `until`, by the clinician's clock,
    /// which may be a minute off either way), and each takes its cell again (coming back from
    /// the start on, not from when it was taken: stricter, for three minutes at most). Before,
    /// a restart gave every clinician a full burst again.
    pub fn recall(&self, store: &dyn crate::store::Store) -> Result<usize, StoreError> {
        let now = now_secs();
        let (fresh, stale): (Vec<_>, Vec<_>) = store
            .replays()?
            .into_iter()
            .partition(|(_, until)| *until > now);
        for (signer, _) in fresh.iter().filter_map(|(key, _)| key.rsplit_once(':')) {
            self.within_rate(signer);
        }
        // a bounded write each (the first start after a long run may forget very many)
        for chunk in stale.chunks(10_000) {
            store.apply(crate::store::Batch {
                replay_forgotten: chunk.iter().map(|(key, _)| key.clone()).collect(),
                ..Default::default()
            })?;
        }
        let n = fresh.len();
        self.remember(fresh);
        Ok(n)
    }

    /// Remembers nonces used before a restart (the store's `replays`).
    pub fn remember(&self, used: impl IntoIterator<Item = (String, u64)>) {
        let now = now_secs();
        let mut seen = lock(&self.seen);
        for (key, until) in used {
            if until > now {
                seen.insert(key, until);
            }
        }
    }

    /// Records request nonce `key` (`signer:nonce`) as used until `until` (unix seconds):
    /// true if it was fresh, false if it was used before (a replay).
    pub fn use_nonce(&self, key: &str, until: u64) -> bool {
        let mut seen = lock(&self.seen);
        seen.forget_until(now_secs());
        !seen.insert(key.to_string(), until)
    }

    /// Gives nonce `key` back (its request recorded nothing and may be sent again).
    pub fn give_back(&self, key: &str, until: u64) {
        lock(&self.seen).remove(key, until);
    }

    /// Takes one of `who`'s grants per minute: false when they have none left.
    pub fn within_rate(&self, who: &str) -> bool {
        // from 1 minute in, so that a clinician never seen reads as full
        let now = self.started.elapsed().as_millis() as u64 + 60_000;
        let mut rates = lock(&self.rates);
        if rates.len() >= RATES_KEPT {
            // those whose rate is back to full need no row
            rates.retain(|_, tat| *tat > now);
        }
        let tat = rates.get(who).copied().unwrap_or(0).max(now);
        if tat + self.emission_ms - now > self.burst_ms {
            return false;
        }
        rates.insert(who.to_string(), tat + self.emission_ms);
        true
    }

    /// Gives back one of `who`'s grants taken by `within_rate` (its grant recorded nothing).
    pub fn give_back_rate(&self, who: &str) {
        if let Some(tat) = lock(&self.rates).get_mut(who) {
            *tat = tat.saturating_sub(self.emission_ms);
        }
    }

    pub(super) fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Option<u64> {
        let now = now_ms();
        let mut leases = lock(&self.leases);
        match leases.get_mut(name) {
            Some((h, until, fence)) if h == holder || *until <= now => {
                if h != holder {
                    *fence = self
                        .fences
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        + 1;
                    *h = holder.to_string();
                }
                *until = now + ttl_ms;
                Some(*fence)
            }
            Some(_) => None,
            None => {
                let fence = self
                    .fences
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;
                leases.insert(name.to_string(), (holder.to_string(), now + ttl_ms, fence));
                Some(fence)
            }
        }
    }

    pub(super) fn release(&self, name: &str, holder: &str) {
        let mut leases = lock(&self.leases);
        if leases.get(name).is_some_and(|(h, _, _)| h == holder) {
            leases.remove(name);
        }
    }

    pub(super) fn spend_challenge(&self, nonce: &str, until: u64) -> bool {
        let now = now_secs();
        let mut guard = lock(&self.challenges);
        let (by_nonce, by_expiry) = &mut *guard;
        // the ones past their time could not be used again anyway
        while let Some((first_until, first)) = by_expiry.first().cloned() {
            if first_until > now {
                break;
            }
            by_expiry.pop_first();
            by_nonce.remove(&first);
        }
        if by_nonce.contains_key(nonce) {
            return false;
        }
        by_nonce.insert(nonce.to_string(), until);
        by_expiry.insert((until, nonce.to_string()));
        true
    }

    pub(super) fn open_session(&self, key: &str, session: &super::OpenSession) {
        lock(&self.sessions).insert(key.to_string(), (session.clone(), session.created_ms));
    }

    pub(super) fn touch_session(
        &self,
        key: &str,
        idle_ms: u64,
        max_ms: u64,
    ) -> Option<super::OpenSession> {
        let now = now_ms();
        let mut sessions = lock(&self.sessions);
        let (s, last) = sessions.get_mut(key)?;
        // (one whose time ran out stays until `lapsed_sessions` takes it out, and its end is
        // logged)
        if until(s, *last, idle_ms, max_ms) <= now {
            return None;
        }
        *last = now;
        Some(s.clone())
    }

    pub(super) fn end_session(&self, key: &str) -> bool {
        lock(&self.sessions).remove(key).is_some()
    }

    pub(super) fn lapsed_sessions(
        &self,
        now: u64,
        idle_ms: u64,
        max_ms: u64,
        limit: usize,
    ) -> Vec<super::Claimed> {
        let mut sessions = lock(&self.sessions);
        let mut ending = lock(&self.ending);
        let mut out = Vec::new();
        for (key, (lapsed, taken)) in ending.iter_mut() {
            if out.len() < limit && *taken + super::ENDING_LEASE_MS <= now {
                *taken = now;
                out.push(super::Claimed {
                    key: key.clone(),
                    lapsed: Some(lapsed.clone()),
                });
            }
        }
        let lapsed: Vec<(String, u64)> = sessions
            .iter()
            .map(|(k, (s, last))| (k.clone(), until(s, *last, idle_ms, max_ms)))
            .filter(|(_, until)| *until <= now)
            .take(limit - out.len())
            .collect();
        for (key, until_ms) in lapsed {
            if let Some((s, _)) = sessions.remove(&key) {
                let lapsed = super::Lapsed {
                    reviewer: s.reviewer,
                    created_ms: s.created_ms,
                    until_ms,
                };
                ending.insert(key.clone(), (lapsed.clone(), now));
                out.push(super::Claimed {
                    key,
                    lapsed: Some(lapsed),
                });
            }
        }
        out
    }

    /// Every open session, taken out (this process stops: they end with it).
    pub(super) fn take_every_session(&self, idle_ms: u64, max_ms: u64) -> Vec<super::Lapsed> {
        let mut out: Vec<super::Lapsed> = lock(&self.ending)
            .drain()
            .map(|(_, (lapsed, _))| lapsed)
            .collect();
        out.extend(
            lock(&self.sessions)
                .drain()
                .map(|(_, (s, last))| super::Lapsed {
                    until_ms: until(&s, last, idle_ms, max_ms),
                    reviewer: s.reviewer,
                    created_ms: s.created_ms,
                }),
        );
        out
    }

    pub(super) fn sessions_ended(&self, keys: &[String]) {
        let mut ending = lock(&self.ending);
        for key in keys {
            ending.remove(key);
        }
    }
}

/// Until when session `s`, last used at `last` (unix ms), is open.
fn until(s: &super::OpenSession, last: u64, idle_ms: u64, max_ms: u64) -> u64 {
    last.saturating_add(idle_ms)
        .min(s.created_ms.saturating_add(max_ms))
}

/// How many clinicians' rates are kept before those back to full are dropped.
const RATES_KEPT: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_has_one_holder_until_it_lapses_and_a_new_holder_gets_a_greater_token() {
        let l = Local::new(NonZeroU32::new(10).unwrap());
        let a = l.lease("submitter", "a", 60_000).unwrap();
        assert_eq!(
            l.lease("submitter", "a", 60_000),
            Some(a),
            "renewed, same token"
        );
        assert_eq!(l.lease("submitter", "b", 60_000), None, "held by a");
        l.release("submitter", "b");
        assert_eq!(
            l.lease("submitter", "b", 60_000),
            None,
            "b cannot let a's go"
        );
        l.release("submitter", "a");
        let b = l.lease("submitter", "b", 0).unwrap();
        assert!(b > a);
        let a2 = l.lease("submitter", "a", 60_000).unwrap();
        assert!(
            a2 > b,
            "b's lapsed at once: a takes it with a greater token"
        );
    }

    #[test]
    fn a_nonce_is_fresh_once_and_again_after_it_is_given_back() {
        let l = Local::new(NonZeroU32::new(2).unwrap());
        let until = now_secs() + 60;
        assert!(l.use_nonce("ST1:1", until));
        assert!(!l.use_nonce("ST1:1", until));
        l.give_back("ST1:1", until);
        assert!(l.use_nonce("ST1:1", until));
        assert!(l.within_rate("ST1") && l.within_rate("ST1") && !l.within_rate("ST1"));
        assert!(l.within_rate("ST2"), "per clinician");
        // a grant that recorded nothing gives its cell back: one more, and no more
        l.give_back_rate("ST1");
        assert!(l.within_rate("ST1") && !l.within_rate("ST1"));
    }
}

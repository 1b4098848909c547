//! Reads of an access's record by reviewers and admin clients, logged (`audit::Event::View`)
//! before the answer, and remembered a while so that a page that refreshes itself (the
//! reviewer's access page reloads every 2 s while a verdict's chain record is on its way) logs
//! one view, not one a reload. A reviewer's views are remembered by session: in a session
//! opened anew (on whichever replica), each access's first read is logged again.
//!
//! It must not: show a record whose view it could not log, or let a full memory hide a view
//! (full, it forgets, and the next views are logged again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Review;
use crate::domain::{AccessId, PatientId};
use crate::refusal::Refusal;

/// A reader's views of one access are logged once in this long (on each replica).
pub const AGAIN_AFTER: Duration = Duration::from_secs(15 * 60);
/// How many (reader, access) pairs are remembered at most.
const REMEMBERED: usize = 10_000;

/// Who reads an access's record.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    /// A signed-in reviewer, in their session: the reason and notes are shown.
    Reviewer(&'a super::Session),
    /// An admin client (its id).
    Client(&'a str),
}

/// (who read, and for a reviewer in which session; the access; whether its reason was shown)
type Key = (String, AccessId, bool);

/// The views logged lately, with when.
#[derive(Default)]
pub struct Views {
    logged: Mutex<HashMap<Key, Instant>>,
}

impl Views {
    fn due(&self, key: &Key, now: Instant) -> bool {
        let logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        logged
            .get(key)
            .is_none_or(|at| now.duration_since(*at) >= AGAIN_AFTER)
    }

    fn logged(&self, key: Key, now: Instant) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= REMEMBERED {
            logged.retain(|_, at| now.duration_since(*at) < AGAIN_AFTER);
            if logged.len() >= REMEMBERED {
                logged.clear();
            }
        }
        logged.insert(key, now);
    }
}

impl Review {
    /// Access `id`'s whole story for `viewer`, once its view is in the audit log (503
    /// `audit-unavailable` if it cannot be written: nothing is shown).
    pub async fn shown(
        &self,
        id: &AccessId,
        viewer: Viewer<'_>,
        now: u64,
    ) -> Result<super::listing::Detail, Refusal> {
        let (reviewer, by, reading) = match viewer {
            Viewer::Reviewer(s) => (
                Some(&s.reviewer),
                s.reviewer.to_string(),
                format!("{} {}", s.reviewer, s.id),
            ),
            Viewer::Client(c) => (None, c.to_string(), c.to_string()),
        };
        let detail = self.detail(id, reviewer, now).await?;
        let key = (reading, *id, detail.reason.is_some());
        self.logged_view(key, detail.summary.patient, by).await?;
        Ok(detail)
    }

    /// Logs that admin client `by` read access `access` (of `patient`), `reason` whether its
    /// reason was shown, unless that was logged less than `AGAIN_AFTER` ago here.
    pub async fn viewed(
        &self,
        access: &AccessId,
        patient: PatientId,
        by: String,
        reason: bool,
    ) -> Result<(), Refusal> {
        self.logged_view((by.clone(), *access, reason), patient, by)
            .await
    }

    /// Logs the view `key` as read by `by`, unless it was logged less than `AGAIN_AFTER` ago
    /// here.
    async fn logged_view(&self, key: Key, patient: PatientId, by: String) -> Result<(), Refusal> {
        if !self.views.due(&key, Instant::now()) {
            return Ok(());
        }
        self.audit(crate::audit::Event::View {
            access: key.1,
            patient,
            by,
            reason: key.2,
        })
        .await?;
        self.views.logged(key, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(by: &str, n: u8) -> Key {
        (by.to_string(), AccessId([n; 32]), true)
    }

    #[test]
    fn a_view_is_due_again_after_a_while_and_a_full_memory_forgets() {
        let views = Views::default();
        let t0 = Instant::now();
        assert!(views.due(&key("a", 1), t0));
        views.logged(key("a", 1), t0);
        assert!(!views.due(&key("a", 1), t0 + Duration::from_secs(60)));
        assert!(views.due(&key("b", 1), t0), "another reader's");
        assert!(views.due(&key("a", 2), t0), "another access");
        assert!(
            views.due(&(String::from("a"), AccessId([1; 32]), false), t0),
            "without the reason"
        );
        assert!(views.due(&key("a", 1), t0 + AGAIN_AFTER));
        // full of recent views (the memory holds "a" and "b", and fills up as these are
        // remembered): forgotten, so the next are logged again (never hidden)
        for n in 0..REMEMBERED {
            views.logged((n.to_string(), AccessId([0; 32]), true), t0);
        }
        assert!(views.due(&key("a", 1), t0 + Duration::from_secs(1)));
        assert!(views.logged.lock().unwrap().len() <= REMEMBERED);
    }
}

//! Anchoring the audit log on chain: every `every_entries` new entries, or every `every` when
//! fewer came, the log's head (the last entry's hash and how many entries it covers) becomes
//! the operation `anchor:<head>` (`anchor-audit`), sent by the chain submitter like any other.
//! One anchor is open at a time, so they reach the chain in order (the contract refuses an
//! anchor covering fewer entries than the last one on chain, whichever responder made it: the
//! contract has one anchored log, so one responder service anchors per deployment).
//!
//! It must not: write the log (the store does) or send transactions (the submitter does).

use std::sync::Arc;
use std::time::Duration;

use crate::chain::contracts::ACCESS_CONTROL;
use crate::chain::submitter;
use crate::stacks::Value;
use crate::store::{Batch, Store, StoreError, Submission};

use super::Head;

/// When to anchor.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every_entries: u64,
    pub every: Duration,
}

/// The operation that anchors `head`.
pub fn operation(head: &Head) -> Submission {
    submitter::operation(
        &format!("anchor:{}", hex::encode(head.hash)),
        ACCESS_CONTROL,
        "anchor-audit",
        &[
            Value::Buffer(head.hash.to_vec()).to_hex(),
            Value::UInt(head.seq.into()).to_hex(),
        ],
    )
}

/// How many entries an anchor operation covers (its second argument).
pub fn covers(s: &Submission) -> Option<u64> {
    if s.function != "anchor-audit" {
        return None;
    }
    match Value::from_hex(s.args.get(1)?).ok()? {
        Value::UInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// What the anchoring task remembers between ticks.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Entries covered by the last anchor made (open or not).
    covered: u64,
    /// When it was made (Unix ms).
    made_at: u64,
    /// The open anchor's id, if one is open.
    open: Option<String>,
}

impl Anchors {
    /// What the store says: the last anchor operation made, and whether it is still open. A
    /// log never anchored counts its time from now (the first anchor comes after
    /// `every_entries` entries or `every`, as later ones do).
    pub fn read(store: &dyn Store) -> Result<Anchors, StoreError> {
        let mut a = Anchors {
            made_at: crate::clock::now_ms(),
            ..Anchors::default()
        };
        for s in store.submissions()? {
            if let Some(n) = covers(&s) {
                if n >= a.covered {
                    a.covered = n;
                    a.made_at = s.created_at_ms;
                }
                if s.is_open() {
                    a.open = Some(s.id.clone());
                }
            }
        }
        Ok(a)
    }

    /// The anchor to make now, if one is due: none while one is open.
    pub fn due(
        &mut self,
        store: &dyn Store,
        schedule: Schedule,
        now_ms: u64,
    ) -> Result<Option<Submission>, StoreError> {
        if let Some(id) = &self.open {
            match store.submission(id)? {
                Some(s) if s.is_open() => return Ok(None),
                _ => self.open = None,
            }
        }
        let Some(head) = store.audit_head()? else {
            return Ok(None);
        };
        let new = head.seq.saturating_sub(self.covered);
        let waited = now_ms.saturating_sub(self.made_at) >= schedule.every.as_millis() as u64;
        if new == 0 || (new < schedule.every_entries && !waited) {
            return Ok(None);
        }
        let op = operation(&head);
        if store.submission(&op.id)?.is_some() {
            // this head was anchored already (the same head cannot be anchored twice)
            self.covered = head.seq;
            return Ok(None);
        }
        self.covered = head.seq;
        self.made_at = now_ms;
        self.open = Some(op.id.clone());
        Ok(Some(op))
    }
}

/// Makes the anchors that are due until `shutdown`, looking every `tick`.
pub async fn run(
    store: Arc<dyn Store>,
    schedule: Schedule,
    tick: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut anchors = match Anchors::read(store.as_ref()) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "audit anchoring could not read the store: not anchoring");
            return;
        }
    };
    loop {
        match anchors.due(store.as_ref(), schedule, crate::clock::now_ms()) {
            Ok(Some(op)) => {
                let id = op.id.clone();
                let batch = Batch {
                    submissions: vec![op],
                    ..Batch::default()
                };
                match crate::store::apply_async(&store, batch).await {
                    Ok(()) => tracing::info!(operation = %id, "audit head to be anchored on chain"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not queue an audit anchor");
                        anchors = Anchors::read(store.as_ref()).unwrap_or_default();
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit anchoring could not read the store"),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => break,
        }
    }
}

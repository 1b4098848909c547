//! Who is on call, from where hospitals keep it: a roster file, PagerDuty and Opsgenie
//! (webhooks that page responders for incidents, and periodic on-call syncs), and a generic
//! signed webhook for other paging systems. Sources combine: a clinician is on call when any
//! source says so.
//!
//! The break-glass path asks [`OnCall::lookup`], a read of memory. Webhooks and syncs change
//! it off that path, writing the store first: a webhook answered 2xx is never forgotten across
//! a restart, and neither is the last good synced roster. A sync that keeps failing leaves its
//! last good roster standing for a grace period, then fails closed: no one is on call through
//! that source until a sync succeeds. Paging user ids and emails become principals here
//! ([`Mapping`]); no decision or record past this module sees them.
//!
//! It must not: let a paging id or an email into a decision or a record (the provider
//! directory holds paging ids only for `Mapping`), or change state on an unverified webhook.

mod files;
pub mod generic;
mod mapping;
pub mod opsgenie;
pub mod pagerduty;
pub mod sync;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::configuration::OnCallSettings;
use crate::domain::OnCall as Fact;
use crate::store::{apply_async, Batch, Store, StoreError};
pub use files::{load_roster, load_secrets, secrets_of};
pub use mapping::{Mapping, MappingError};

/// An incident that paged responders. A resolved one stays as a tombstone (no responders)
/// until it ages out, so that a late delivery about it cannot bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// `pagerduty` or `opsgenie`.
    pub source: String,
    pub id: String,
    pub service: Option<String>,
    /// The principals it pages now (its assignees, mapped).
    pub responders: Vec<String>,
    /// When it first paged (unix seconds, the source's own time).
    pub since: u64,
    /// The time of the last event applied to it: older ones are superseded.
    #[serde(default)]
    pub updated: u64,
    #[serde(default)]
    pub resolved: bool,
    pub acknowledged: bool,
}

/// A synced roster: who was on call when the source last answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Roster {
    /// principal → why
    pub on_call: HashMap<String, Fact>,
    /// When the source last answered (unix seconds).
    pub synced_at: u64,
}

/// A sync source's health, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncHealth {
    pub last_success: Option<u64>,
    pub last_attempt: Option<u64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    pub grace_secs: u64,
}

impl SyncHealth {
    /// Whether the last good roster still stands.
    pub fn fresh(&self, now: u64) -> bool {
        self.last_success
            .is_some_and(|t| now.saturating_sub(t) <= self.grace_secs)
    }
}

/// What the break-glass path learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No source is configured: on-call is not checked.
    NotChecked,
    OnCall(Fact),
    NotOnCall,
}

/// A change from a webhook or a sync. `at` is the event's own time (unix seconds): a change
/// older than what was applied last to the same incident or shift is superseded.
#[derive(Debug, Clone)]
pub enum Change {
    /// An incident pages `responders` now: all of them (`replace`: PagerDuty's assignees), or
    /// these besides those it paged before (Opsgenie's users answering an alert).
    Page {
        source: String,
        id: String,
        service: Option<String>,
        responders: Vec<String>,
        replace: bool,
        /// `None` leaves it as it was.
        acknowledged: Option<bool>,
        at: u64,
    },
    /// An incident is over: its responders are no longer on call through it.
    Resolved { source: String, id: String, at: u64 },
    /// A generic-webhook shift: on call until `fact.until` (a past `until` ends it), as of
    /// `fact.since`.
    Shift { principal: String, fact: Fact },
    /// A sync's answer.
    Synced { source: String, roster: Roster },
}

impl Change {
    /// Whether it only takes responders off call (at `now`): an incident over, a shift ended.
    pub fn releases(&self, now: u64) -> bool {
        match self {
            Change::Resolved { .. } => true,
            Change::Shift { fact, .. } => fact.until.is_some_and(|u| u <= now),
            Change::Page { .. } | Change::Synced { .. } => false,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// Something newer was applied already: nothing changed.
    Superseded,
}

#[derive(Default)]
struct State {
    /// `source:id` → incident (tombstones included)
    incidents: HashMap<String, Incident>,
    /// generic-webhook shifts by principal
    shifts: HashMap<String, Fact>,
    /// source → last good roster
    rosters: HashMap<String, Roster>,
    /// webhook deliveries seen (`source:delivery id`) → forget after (unix seconds)
    seen: HashMap<String, u64>,
    /// store keys to delete with the next writes (expired deliveries, aged-out incidents),
    /// each once however often a reload finds it again
    forgotten: std::collections::BTreeSet<String>,
    /// stored rows that do not read as their kind (not JSON, or not what their key says: a
    /// row written by another version, say), by key: read as closed (`read_stored`)
    unreadable: std::collections::BTreeSet<String>,
}

/// How many aged-out rows one write deletes at most (the rest with the writes after it).
const FORGET_AT_ONCE: usize = 100;

/// The stored row `key` (a delivery or an incident) as it is, if it is there and aged out now
/// (incidents after `incident_max_secs`).
fn aged_out(
    store: &dyn Store,
    key: &str,
    incident_max_secs: u64,
) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(row) = store.paging_row(key)? else {
        return Ok(None);
    };
    let now = now_secs();
    let aged = if key.starts_with(SEEN) {
        serde_json::from_value::<u64>(row.clone()).is_ok_and(|until| until < now)
    } else if key.starts_with(INCIDENT) {
        serde_json::from_value::<Incident>(row.clone())
            .is_ok_and(|i| i.since.max(i.updated) + incident_max_secs <= now)
    } else {
        false
    };
    Ok(aged.then_some(row))
}

impl State {
    /// Drops what has aged out, remembering to delete it from the store.
    fn sweep(&mut self, now: u64, incident_max_secs: u64) {
        let forgotten = &mut self.forgotten;
        self.seen.retain(|k, until| {
            // a delivery is fresh for `w` either side of its time, and kept for `2w` from
            // when it was accepted: kept through the last second it could be accepted again
            let keep = *until >= now;
            if !keep {
                forgotten.insert(format!("{SEEN}{k}"));
            }
            keep
        });
        self.incidents.retain(|k, i| {
            let keep = i.since.max(i.updated) + incident_max_secs > now;
            if !keep {
                forgotten.insert(format!("{INCIDENT}{k}"));
            }
            keep
        });
    }
}

/// The combined on-call state.
pub struct OnCall {
    store: Arc<dyn Store>,
    roster_file: Option<HashSet<String>>,
    /// Whether any source is configured.
    checked: bool,
    state: RwLock<State>,
    health: Mutex<HashMap<String, SyncHealth>>,
    pub mapping: Mapping,
    pub window_secs: u64,
    /// An incident pages no one after this long (a lost `resolved` must not leave anyone on
    /// call for ever).
    pub incident_max_secs: u64,
    /// The webhook sources configured: what others left in the store counts for nothing.
    webhooks: HashSet<&'static str>,
    /// One change at a time: each is checked against the state, written, then applied.
    writer: tokio::sync::Mutex<()>,
    /// Whether other replicas change the stored state too (a shared store): then it is read
    /// again before a change is checked, before a delivery is claimed, before "not on call"
    /// is answered (at most every `FRESH_MS`), and every second (`reload`).
    shared: bool,
    /// When the stored state was last read (unix ms).
    reloaded_ms: std::sync::atomic::AtomicU64,
    /// Whether a read of the stored state for a "not on call" answer is still going on (off the
    /// request's thread: `reload_within`).
    reading: Arc<std::sync::atomic::AtomicBool>,
    /// A test's step between a change's check and its write (another replica's write, say).
    #[cfg(test)]
    between: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// How many times a change is checked and written again when another replica changed its row
/// meanwhile (`store::Guard::paging`), before the change is answered as failed (503: the
/// sender sends it again).
const CHANGED_TRIES: usize = 5;

/// The stored row a change writes.
fn row_of(change: &Change) -> String {
    match change {
        Change::Page { source, id, .. } | Change::Resolved { source, id, .. } => {
            format!("{INCIDENT}{source}:{id}")
        }
        Change::Shift { principal, .. } => format!("{SHIFT}{principal}"),
        Change::Synced { source, .. } => format!("{ROSTER}{source}"),
    }
}

/// How long a "not on call" answer waits for its read of the shared state: a store that does
/// not answer in time (hung) leaves the answer to the state as last read, and a request is not
/// held for the store's read timeouts (seconds).
const FRESH_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A "not on call" answer reads the shared state again only if it was read longer ago than
/// this: a stream of refusals costs one read of it per interval, not one per request.
const FRESH_MS: u64 = 100;

/// The on-call state as stored, and when each synced roster was synced.
///
/// A row that does not read as its kind (not JSON, not of its shape, or with a field its kind
/// does not have: a row another version wrote, whose meaning this one cannot be sure of) is
/// read as closed, and the rest of the state read (one such row failing the whole read left
/// every replica answering from what it knew last, however old): an incident, shift or roster
/// that does not read puts no one on call, and is replaced only by a change that does not
/// build on it (`may_replace`: a resolve, a shift that ended, or a sync's whole roster of its
/// source), so that a page replayed over a resolved incident's row does not open it again; a
/// delivery that does not read counts as seen (a replay is refused), until `seen_until` if it
/// is read so no more. Each is named in `unreadable`.
fn read_stored(
    store: &dyn Store,
    seen_until: u64,
) -> Result<(State, HashMap<String, u64>), StoreError> {
    fn of<T: serde::de::DeserializeOwned + serde::Serialize>(
        value: Option<serde_json::Value>,
    ) -> Option<T> {
        let value = value?;
        let read: T = serde_json::from_value(value.clone()).ok()?;
        // a field this version does not know (not null), at any depth, may change what the row
        // means (a field renamed, say, read as absent): the row does not read
        let known = serde_json::to_value(&read).ok()?;
        (!unknown_fields(&value, &known)).then_some(read)
    }
    fn unknown_fields(given: &serde_json::Value, known: &serde_json::Value) -> bool {
        use serde_json::Value::{Array, Object};
        match (given, known) {
            (Object(g), Object(k)) => g.iter().any(|(key, v)| match k.get(key) {
                Some(kv) => unknown_fields(v, kv),
                None => !v.is_null(),
            }),
            (Array(g), Array(k)) => g.iter().zip(k).any(|(v, kv)| unknown_fields(v, kv)),
            _ => false,
        }
    }
    let mut state = State::default();
    let mut synced = HashMap::new();
    for (key, value) in store.paging()? {
        let read = if let Some(k) = key.strip_prefix(INCIDENT) {
            of(value)
                .map(|i| state.incidents.insert(k.to_string(), i))
                .is_some()
        } else if let Some(p) = key.strip_prefix(SHIFT) {
            of(value)
                .map(|f| state.shifts.insert(p.to_string(), f))
                .is_some()
        } else if let Some(source) = key.strip_prefix(ROSTER) {
            of::<Roster>(value)
                .map(|roster| {
                    synced.insert(source.to_string(), roster.synced_at);
                    state.rosters.insert(source.to_string(), roster);
                })
                .is_some()
        } else if let Some(d) = key.strip_prefix(SEEN) {
            let until: Option<u64> = of(value);
            state
                .seen
                .insert(d.to_string(), until.unwrap_or(seen_until));
            until.is_some()
        } else {
            true
        };
        if !read {
            state.unreadable.insert(key);
        }
    }
    Ok((state, synced))
}

/// Whether `change` may replace its row when that row does not read: only if it cannot put
/// anyone on call by what the row held (`read_stored`).
fn may_replace(change: &Change, now: u64) -> bool {
    change.releases(now) || matches!(change, Change::Synced { .. })
}

const INCIDENT: &str = "incident:";
const SHIFT: &str = "shift:";
const ROSTER: &str = "roster:";
const SEEN: &str = "seen:";

/// Reads the shared on-call state again every `period` (what other replicas applied), off the
/// break-glass path.
pub async fn reload_every(
    oncall: Arc<OnCall>,
    period: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {
                let o = oncall.clone();
                let _ = tokio::task::spawn_blocking(move || o.reload_if_shared()).await;
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Backend(e.to_string()))
}

impl OnCall {
    /// Loads the roster file and mapping, and the state the store kept.
    pub fn load(settings: &OnCallSettings, store: Arc<dyn Store>) -> anyhow::Result<OnCall> {
        let roster_file = settings.roster.as_deref().map(load_roster).transpose()?;
        let webhooks: HashSet<&'static str> = [
            ("pagerduty", &settings.pagerduty.webhook_secrets_file),
            ("opsgenie", &settings.opsgenie.webhook_secrets_file),
            ("webhook", &settings.webhook.secrets_file),
        ]
        .into_iter()
        .filter_map(|(name, file)| file.is_some().then_some(name))
        .collect();
        let syncing: HashSet<&str> = [
            ("pagerduty", &settings.pagerduty.api_token_file),
            ("opsgenie", &settings.opsgenie.api_key_file),
        ]
        .into_iter()
        .filter_map(|(name, file)| file.is_some().then_some(name))
        .collect();
        let checked = roster_file.is_some() || !webhooks.is_empty() || !syncing.is_empty();
        if !checked {
            tracing::warn!("no on-call source configured: on-call is not checked");
        }
        let now = now_secs();
        let (state, synced) = read_stored(store.as_ref(), now + 2 * settings.webhook_window_secs)?;
        if !state.unreadable.is_empty() {
            tracing::error!(rows = ?state.unreadable, "on-call rows that do not read as their kind: read as closed");
        }
        let mut health: HashMap<String, SyncHealth> = synced
            .into_iter()
            .map(|(source, at)| {
                // the last good roster, as of when it was synced: its grace period runs on
                let h = SyncHealth {
                    last_success: Some(at),
                    ..SyncHealth::default()
                };
                (source, h)
            })
            .collect();
        for (source, sync) in [
            ("pagerduty", &settings.pagerduty.sync),
            ("opsgenie", &settings.opsgenie.sync),
        ] {
            health.entry(source.to_string()).or_default().grace_secs = sync.grace_secs;
        }
        health.retain(|k, _| syncing.contains(k.as_str()));
        let mut state = state;
        state.sweep(now_secs(), settings.incident_max_secs);
        Ok(OnCall {
            shared: false,
            reloaded_ms: std::sync::atomic::AtomicU64::new(0),
            reading: Arc::default(),
            mapping: Mapping::load(settings.mapping.as_deref(), store.clone())?,
            store,
            roster_file,
            checked,
            state: RwLock::new(state),
            health: Mutex::new(health),
            window_secs: settings.webhook_window_secs,
            incident_max_secs: settings.incident_max_secs,
            webhooks,
            writer: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            between: Mutex::new(None),
        })
    }

    /// Marks the stored state as shared with other replicas (`shared`).
    pub fn shared_with_replicas(mut self, shared: bool) -> OnCall {
        self.shared = shared;
        self
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Reads the stored state again (what other replicas applied): incidents, shifts, synced
    /// rosters and claimed deliveries as the store has them now.
    pub fn reload(&self) -> Result<(), StoreError> {
        self.reloaded_ms
            .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let (stored, synced) = read_stored(self.store.as_ref(), self.seen_until())?;
        self.take_stored(stored, synced);
        Ok(())
    }

    /// Until when a delivery claimed now is a replay (and one whose row does not read counts
    /// as seen).
    fn seen_until(&self) -> u64 {
        now_secs() + 2 * self.window_secs
    }

    /// `reload` for a "not on call" answer: the read on the blocking pool (the request's
    /// thread serves other requests meanwhile), waited for at most `FRESH_WAIT` (else the
    /// answer is the state as last read, and the read, when it comes, is dropped: the periodic
    /// `reload` takes the state then); none while one is going on.
    async fn reload_within(&self) {
        use std::sync::atomic::Ordering;
        if self.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reloaded_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        let (store, reading) = (self.store.clone(), self.reading.clone());
        let seen_until = self.seen_until();
        let read = tokio::task::spawn_blocking(move || {
            let read = read_stored(store.as_ref(), seen_until);
            reading.store(false, Ordering::Release);
            read
        });
        match tokio::time::timeout(FRESH_WAIT, read).await {
            Ok(Ok(Ok((stored, synced)))) => self.take_stored(stored, synced),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "on-call: the shared state could not be read again")
            }
            Ok(Err(e)) => {
                self.reading.store(false, Ordering::Release);
                tracing::warn!(error = %e, "on-call: the shared state's read stopped")
            }
            Err(_) => tracing::warn!(
                waited_ms = FRESH_WAIT.as_millis() as u64,
                "on-call: the shared state did not answer in time; answered from the state last read"
            ),
        }
    }

    /// Takes the stored state just read as this replica's.
    fn take_stored(&self, stored: State, synced: HashMap<String, u64>) {
        {
            let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            for (source, at) in synced {
                // only configured syncs have health; another replica's sync counts as ours
                if let Some(h) = health.get_mut(&source) {
                    if h.last_success.is_none_or(|s| s < at) {
                        h.last_success = Some(at);
                    }
                }
            }
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.incidents = stored.incidents;
        state.shifts = stored.shifts;
        state.rosters = stored.rosters;
        for (k, until) in stored.seen {
            state.seen.entry(k).or_insert(until);
        }
        let new: Vec<&String> = stored.unreadable.difference(&state.unreadable).collect();
        if !new.is_empty() {
            tracing::error!(rows = ?new, "on-call rows that do not read as their kind: read as closed");
        }
        state.unreadable = stored.unreadable;
        state.sweep(now_secs(), self.incident_max_secs);
    }

    /// Reads the stored state again if other replicas share it; a failed read is logged and
    /// the state known stands.
    fn reload_if_shared(&self) {
        if self.shared {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "on-call: the shared state could not be read again");
            }
        }
    }

    /// `reload_if_shared` with the store's read on the blocking pool: the request's thread
    /// serves other requests (grants) meanwhile.
    async fn reload_if_shared_async(&self) {
        if let Err(e) = self.reload_shared().await {
            tracing::warn!(error = %e, "on-call: the shared state could not be read again");
        }
    }

    /// Reads the stored state again if other replicas share it, on the blocking pool.
    async fn reload_shared(&self) -> Result<(), StoreError> {
        if !self.shared {
            return Ok(());
        }
        self.reloaded_ms
            .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let seen_until = self.seen_until();
        let (stored, synced) = self.off_thread(move |s| read_stored(s, seen_until)).await?;
        self.take_stored(stored, synced);
        Ok(())
    }

    /// `f` of the store, on the blocking pool (its reads block).
    async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("a store read stopped: {e}")))?
    }

    /// `lookup`, reading the shared state again before answering "not on call" (another
    /// replica may have just applied the page).
    pub async fn lookup_fresh(&self, principal: &str, now: u64) -> Lookup {
        let read_ms = self.reloaded_ms.load(std::sync::atomic::Ordering::Relaxed);
        match self.lookup(principal, now) {
            Lookup::NotOnCall
                if self.shared && crate::clock::now_ms().saturating_sub(read_ms) >= FRESH_MS =>
            {
                self.reload_within().await;
                self.lookup(principal, now)
            }
            found => found,
        }
    }

    /// Whether an incident pages its responders now: open, from a configured source, and
    /// younger than `incident_max_secs`.
    fn pages(&self, i: &Incident, now: u64) -> bool {
        !i.resolved
            && self.webhooks.contains(i.source.as_str())
            && i.since + self.incident_max_secs > now
    }

    /// Whether `principal` is on call now, and why. Prefers the most telling source: an
    /// acknowledged incident, an incident, a webhook shift, a synced roster, the roster file.
    /// Only configured sources count, and only within their time limits.
    pub fn lookup(&self, principal: &str, now: u64) -> Lookup {
        if !self.checked {
            return Lookup::NotChecked;
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<&Incident> = None;
        for i in state.incidents.values() {
            if self.pages(i, now)
                && i.responders.iter().any(|r| r == principal)
                && best.is_none_or(|b| !b.acknowledged && i.acknowledged)
            {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            return Lookup::OnCall(Fact {
                source: i.source.clone(),
                service: i.service.clone(),
                since: Some(i.since),
                until: Some(i.since + self.incident_max_secs),
                incident: Some(i.id.clone()),
                acknowledged: i.acknowledged,
            });
        }
        if self.webhooks.contains("webhook") {
            if let Some(f) = state.shifts.get(principal) {
                if f.until.is_none_or(|u| u > now) {
                    return Lookup::OnCall(f.clone());
                }
            }
        }
        {
            let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            for (source, roster) in &state.rosters {
                // only configured syncs have health; a roster past its grace fails closed
                if !health.get(source).is_some_and(|h| h.fresh(now)) {
                    continue;
                }
                if let Some(f) = roster.on_call.get(principal) {
                    if f.since.is_none_or(|s| s <= now) && f.until.is_none_or(|u| u > now) {
                        return Lookup::OnCall(f.clone());
                    }
                }
            }
        }
        if self
            .roster_file
            .as_ref()
            .is_some_and(|r| r.contains(principal))
        {
            return Lookup::OnCall(Fact::scheduled("roster", None, None, None));
        }
        Lookup::NotOnCall
    }

    /// Claims a webhook delivery (`source:id`): false if it was seen within the window (a
    /// replay).
    pub async fn claim(&self, delivery: &str, now: u64) -> bool {
        self.reload_if_shared_async().await;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.sweep(now, self.incident_max_secs);
        if state.seen.contains_key(delivery) {
            return false;
        }
        state
            .seen
            .insert(delivery.to_string(), now + 2 * self.window_secs);
        true
    }

    fn unclaim(&self, delivery: &str) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.seen.remove(delivery);
    }

    /// What `change` makes of the state now, or `None` if something newer was applied.
    fn next(&self, state: &State, change: &Change) -> Option<Change> {
        match change {
            Change::Page {
                source,
                id,
                service,
                responders,
                replace,
                acknowledged,
                at,
            } => {
                let cur = state.incidents.get(&format!("{source}:{id}"));
                // times are whole seconds: a page from the second its incident was resolved in
                // may have come before the resolve, so it does not bring it back
                if cur.is_some_and(|c| c.updated > *at || (c.resolved && c.updated == *at)) {
                    return None;
                }
                // a resolved incident paged again starts over
                let cur = cur.filter(|c| !c.resolved);
                let mut all = match cur {
                    Some(c) if !replace => c.responders.clone(),
                    _ => Vec::new(),
                };
                for r in responders {
                    if !all.contains(r) {
                        all.push(r.clone());
                    }
                }
                Some(Change::Page {
                    source: source.clone(),
                    id: id.clone(),
                    service: service.clone().or(cur.and_then(|c| c.service.clone())),
                    responders: all,
                    replace: true,
                    acknowledged: Some(acknowledged.unwrap_or(cur.is_some_and(|c| c.acknowledged))),
                    at: *at,
                })
            }
            Change::Resolved { source, id, at } => {
                let cur = state.incidents.get(&format!("{source}:{id}"));
                if cur.is_some_and(|c| c.updated > *at) {
                    return None;
                }
                Some(change.clone())
            }
            Change::Shift { principal, fact } => {
                let cur = state.shifts.get(principal);
                // of two shifts sent in the same second, the one that ends first stands
                let end = |f: &Fact| f.until.unwrap_or(u64::MAX);
                if cur.is_some_and(|c| {
                    c.since > fact.since || (c.since == fact.since && end(c) <= end(fact))
                }) {
                    return None;
                }
                Some(change.clone())
            }
            Change::Synced { source, roster } => {
                // another replica's round that began later wrote first
                if state
                    .rosters
                    .get(source)
                    .is_some_and(|c| c.synced_at > roster.synced_at)
                {
                    return None;
                }
                Some(change.clone())
            }
        }
    }

    /// Applies a change: checked against what was applied before, written durably, then
    /// made what `lookup` reads. A webhook's claimed delivery is written with it (so a replay
    /// after a restart is still one), or released if the write fails (so the sender's retry
    /// is not taken for a replay).
    ///
    /// With replicas, the row it writes is read before the state it is checked against, and
    /// the write is guarded by that row (`store::Guard::paging`): if another replica changed
    /// it meanwhile, the change is checked again against the state read anew.
    pub async fn apply(
        &self,
        change: Change,
        delivery: Option<(&str, u64)>,
    ) -> Result<Applied, StoreError> {
        let _one_at_a_time = self.writer.lock().await;
        let mut tries = 1;
        loop {
            match self.apply_once(&change, delivery).await {
                Err(StoreError::Guarded(crate::store::Guarded::Changed))
                    if tries < CHANGED_TRIES =>
                {
                    tries += 1;
                    tracing::debug!(
                        row = row_of(&change),
                        "on-call: another replica changed the row meanwhile: checked again"
                    );
                }
                Err(e) => {
                    if let Some((d, _)) = delivery {
                        self.unclaim(d);
                    }
                    return Err(e);
                }
                done => return done,
            }
        }
    }

    async fn apply_once(
        &self,
        change: &Change,
        delivery: Option<(&str, u64)>,
    ) -> Result<Applied, StoreError> {
        let guard = if self.shared {
            let row = row_of(change);
            let key = row.clone();
            match self.off_thread(move |s| s.paging_row(&key)).await {
                Ok(read) => Some(crate::store::Guard {
                    paging: Some((row, read)),
                    ..crate::store::Guard::default()
                }),
                // a row that is not JSON cannot be guarded on as read: a change that may
                // replace it (`may_replace`) is written over it unguarded (another replica's
                // change of it meanwhile is lost, or written after: either reads), any other
                // is refused below as over a row that does not read
                Err(StoreError::Corrupt(..)) if may_replace(change, now_secs()) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        // checked against the state as stored now, read after the guarded row: without it (the
        // read failed), the state in memory may be older than the row, and the change is not
        // made (the sender sends it again)
        self.reload_shared().await?;
        let (next, forgotten, incident) = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let row = row_of(change);
            if state.unreadable.contains(&row) && !may_replace(change, now_secs()) {
                tracing::error!(%row, "on-call: a change to a row that does not read refused (only a release replaces it)");
                return Err(StoreError::Corrupt(
                    row,
                    "the stored row does not read: only a change that releases may replace it"
                        .into(),
                ));
            }
            let next = self.next(&state, change);
            let forgotten: Vec<String> = std::iter::from_fn(|| state.forgotten.pop_first())
                .take(FORGET_AT_ONCE)
                .collect();
            let incident = match &next {
                Some(Change::Page { source, id, .. } | Change::Resolved { source, id, .. }) => {
                    state.incidents.get(&format!("{source}:{id}")).cloned()
                }
                _ => None,
            };
            (next, forgotten, incident)
        };
        // with replicas, a row is deleted only if it is still aged out as stored now: another
        // replica may have written it anew since this one found it aged out (a new page)
        // one process deletes the rows it found aged out with the change; replicas each after
        // it, on its own, guarded by the row as read (`forget_shared`)
        let mut rows: Vec<(String, Option<serde_json::Value>)> = if self.shared {
            Vec::new()
        } else {
            forgotten.iter().map(|k| (k.clone(), None)).collect()
        };
        let mut new_incident = None;
        match &next {
            Some(Change::Page {
                source,
                id,
                service,
                responders,
                acknowledged,
                at,
                ..
            }) => {
                let i = Incident {
                    source: source.clone(),
                    id: id.clone(),
                    service: service.clone(),
                    responders: responders.clone(),
                    since: incident
                        .as_ref()
                        .filter(|c| !c.resolved)
                        .map_or(*at, |c| c.since),
                    updated: *at,
                    resolved: false,
                    acknowledged: acknowledged.unwrap_or(false),
                };
                rows.push((format!("{INCIDENT}{source}:{id}"), Some(json(&i)?)));
                new_incident = Some(i);
            }
            Some(Change::Resolved { source, id, at }) => {
                let i = Incident {
                    source: source.clone(),
                    id: id.clone(),
                    service: incident.as_ref().and_then(|c| c.service.clone()),
                    responders: Vec::new(),
                    since: incident.as_ref().map_or(*at, |c| c.since),
                    updated: *at,
                    resolved: true,
                    acknowledged: false,
                };
                rows.push((format!("{INCIDENT}{source}:{id}"), Some(json(&i)?)));
                new_incident = Some(i);
            }
            Some(Change::Shift { principal, fact }) => {
                rows.push((format!("{SHIFT}{principal}"), Some(json(fact)?)))
            }
            Some(Change::Synced { source, roster }) => {
                rows.push((format!("{ROSTER}{source}"), Some(json(roster)?)))
            }
            None => {}
        }
        if let Some((d, until)) = delivery {
            rows.push((format!("{SEEN}{d}"), Some(json(&until)?)));
        }
        let batch = Batch {
            paging: rows,
            guard,
            ..Batch::default()
        };
        #[cfg(test)]
        if let Some(step) = self
            .between
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            step();
        }
        if let Err(e) = apply_async(&self.store, batch).await {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.forgotten.extend(forgotten);
            return Err(e);
        }
        if self.shared {
            self.forget_shared(forgotten).await;
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if next.is_some() {
            state.unreadable.remove(&row_of(change));
        }
        if let Some((d, _)) = delivery {
            state.unreadable.remove(&format!("{SEEN}{d}"));
        }
        if let Some(i) = new_incident {
            state.incidents.insert(format!("{}:{}", i.source, i.id), i);
        }
        match next {
            Some(Change::Shift { principal, fact }) => {
                state.shifts.insert(principal, fact);
            }
            Some(Change::Synced { source, roster }) => {
                self.synced(&source, roster.synced_at);
                state.rosters.insert(source, roster);
            }
            Some(_) => {}
            None => {
                if let Change::Synced { source, roster } = change {
                    // a round that succeeded, though another replica's later one stands: its
                    // source is as healthy as that says (its errors before are over)
                    self.synced(source, roster.synced_at);
                }
                return Ok(Applied::Superseded);
            }
        }
        Ok(Applied::Changed)
    }

    /// Records a sync round of `source` that began at `at` and succeeded.
    fn synced(&self, source: &str, at: u64) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(source.to_string()).or_default();
        h.last_success = h.last_success.max(Some(at));
        h.last_attempt = h.last_attempt.max(Some(at));
        h.last_error = None;
        h.consecutive_failures = 0;
    }

    /// With replicas, deletes the rows `keys` still aged out as stored, each by a write of its
    /// own guarded by the row as read (`store::Guard::paging`): one another replica wrote anew
    /// meanwhile (a new page) stays. Rows it could not read or delete are kept for the next
    /// write.
    async fn forget_shared(&self, keys: Vec<String>) {
        let max_secs = self.incident_max_secs;
        let read = {
            let keys = keys.clone();
            self.off_thread(move |s| {
                let mut out = Vec::new();
                for key in keys {
                    match aged_out(s, &key, max_secs) {
                        Ok(Some(row)) => out.push((key, row)),
                        Ok(None) => {}
                        // a row that is not JSON is left (read as closed: `read_stored`);
                        // the others are deleted
                        Err(StoreError::Corrupt(..)) => {
                            tracing::warn!(%key, "on-call: a row that does not read is not deleted as aged out");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await
        };
        let aged = match read {
            Ok(aged) => aged,
            Err(e) => {
                tracing::warn!(error = %e, "on-call: aged-out rows could not be read; kept for the next write");
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                state.forgotten.extend(keys);
                return;
            }
        };
        for (key, row) in aged {
            let batch = Batch {
                paging: vec![(key.clone(), None)],
                guard: Some(crate::store::Guard {
                    paging: Some((key.clone(), Some(row))),
                    ..crate::store::Guard::default()
                }),
                ..Batch::default()
            };
            match apply_async(&self.store, batch).await {
                Ok(()) | Err(StoreError::Guarded(crate::store::Guarded::Changed)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "on-call: an aged-out row could not be deleted; kept for the next write");
                    let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                    state.forgotten.insert(key);
                }
            }
        }
    }

    /// An open incident, as known now.
    pub fn incident(&self, source: &str, id: &str) -> Option<Incident> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .incidents
            .get(&format!("{source}:{id}"))
            .filter(|i| !i.resolved)
            .cloned()
    }

    /// Records a failed sync: the last good roster stands until its grace period ends.
    pub fn sync_failed(&self, source: &str, now: u64, error: String) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(source.to_string()).or_default();
        h.last_attempt = Some(now);
        h.last_error = Some(error);
        h.consecutive_failures += 1;
    }

    /// How many stored rows do not read as their kind (read as closed: `read_stored`).
    pub fn unreadable(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.unreadable.len()
    }

    /// The sync sources' health, by source.
    pub fn health(&self) -> HashMap<String, SyncHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many principals each source has on call now (for `/metrics`).
    pub fn counts(&self, now: u64) -> HashMap<String, usize> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let health = self.health();
        let mut by: HashMap<String, HashSet<&str>> = HashMap::new();
        for i in state.incidents.values() {
            if self.pages(i, now) {
                by.entry(i.source.clone())
                    .or_default()
                    .extend(i.responders.iter().map(String::as_str));
            }
        }
        if self.webhooks.contains("webhook") {
            for (p, f) in &state.shifts {
                if f.until.is_none_or(|u| u > now) {
                    by.entry("webhook".into()).or_default().insert(p);
                }
            }
        }
        for (source, roster) in &state.rosters {
            if health.get(source).is_some_and(|h| h.fresh(now)) {
                by.entry(format!("{source}-sync"))
                    .or_default()
                    .extend(roster.on_call.keys().map(String::as_str));
            }
        }
        if let Some(r) = &self.roster_file {
            by.entry("roster".into())
                .or_default()
                .extend(r.iter().map(String::as_str));
        }
        by.into_iter().map(|(k, v)| (k, v.len())).collect()
    }
}

use crate::clock::now_secs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_remembered_through_the_last_second_it_could_be_accepted_again() {
        let mut state = State::default();
        state.seen.insert("webhook:d1".into(), 100);
        state.sweep(100, 3600);
        assert!(
            state.seen.contains_key("webhook:d1"),
            "still a replay at 100"
        );
        assert!(state.forgotten.is_empty());
        state.sweep(101, 3600);
        assert!(state.seen.is_empty());
        assert_eq!(
            state.forgotten,
            std::collections::BTreeSet::from([format!("{SEEN}webhook:d1")])
        );
        // found aged out again (another reload): still one row to delete
        state.seen.insert("webhook:d1".into(), 100);
        state.sweep(101, 3600);
        assert_eq!(state.forgotten.len(), 1);
    }

    fn page(acknowledged: bool, at: u64) -> Change {
        Change::Page {
            source: "pagerduty".into(),
            id: "i1".into(),
            service: None,
            responders: vec!["ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".into()],
            replace: true,
            acknowledged: Some(acknowledged),
            at,
        }
    }

    /// Replicas on one Redis, beside rows that do not read as their kind (garbled bytes; JSON
    /// of another shape, as another version might write): the rest of the state is read (another
    /// replica's resolve is seen), and each such row is read as closed. An incident or shift
    /// that does not read puts no one on call, and is replaced only by a change that releases
    /// (a page replayed over a resolved incident's row would open it again); a delivery that
    /// does not read counts as seen. Before, any one of them failed the whole read, and each
    /// replica answered from what it knew last (the resolved incident's responder on call).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_that_do_not_read_are_read_as_closed_and_the_rest_is_read() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedisStore::open(redis.url.as_str(), "u:").unwrap());
        let mut settings = OnCallSettings::default();
        settings.pagerduty.webhook_secrets_file = Some("pagerduty-secrets".into());
        settings.webhook.secrets_file = Some("webhook-secrets".into());
        let oncall = OnCall::load(&settings, store.clone())
            .unwrap()
            .shared_with_replicas(true);
        let t = now_secs();
        let who = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";
        let nurse = "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG";
        oncall.apply(page(false, t - 10), None).await.unwrap();
        assert!(matches!(oncall.lookup(who, t), Lookup::OnCall(_)));

        // another replica resolves i1; beside it, an incident of garbled bytes, a shift and a
        // delivery of another shape
        let resolved = Incident {
            source: "pagerduty".into(),
            id: "i1".into(),
            service: None,
            responders: vec![],
            since: t - 10,
            updated: t - 5,
            resolved: true,
            acknowledged: false,
        };
        let other_shape = serde_json::json!({"version": 2, "rows": ["x"]});
        store
            .apply(Batch {
                paging: vec![
                    (
                        format!("{INCIDENT}pagerduty:i1"),
                        Some(json(&resolved).unwrap()),
                    ),
                    // a shift as a later version might write it, its end renamed: read as
                    // this version reads it, it would never end
                    (
                        format!("{SHIFT}{nurse}"),
                        Some(serde_json::json!({
                            "source": "webhook", "service": null, "since": t - 60, "until": null,
                            "incident": null, "acknowledged": false, "ends_at": t - 1,
                        })),
                    ),
                    (format!("{SEEN}webhook:d9"), Some(other_shape.clone())),
                ],
                ..Batch::default()
            })
            .unwrap();
        let mut raw = redis.connection();
        redis::cmd("HSET")
            .arg("u:paging")
            .arg(format!("{INCIDENT}pagerduty:garbled"))
            .arg(b"\x00not json".as_slice())
            .query::<()>(&mut raw)
            .unwrap();
        oncall.reload().unwrap();
        assert!(
            matches!(oncall.lookup(who, t), Lookup::NotOnCall),
            "the resolve is read beside the rows that do not read"
        );
        assert_eq!(oncall.unreadable(), 3);
        // the delivery that does not read counts as seen: its replay is refused
        assert!(!oncall.claim("webhook:d9", t).await);
        assert!(oncall.claim("webhook:d10", t).await);

        // i1's tombstone now of another shape: a page replayed over it is refused, not a
        // new incident; a resolve replaces it, and a later page then opens it again
        store
            .apply(Batch {
                paging: vec![(format!("{INCIDENT}pagerduty:i1"), Some(other_shape.clone()))],
                ..Batch::default()
            })
            .unwrap();
        assert!(matches!(
            oncall.apply(page(false, t - 8), None).await,
            Err(StoreError::Corrupt(..))
        ));
        oncall.reload().unwrap();
        assert!(matches!(oncall.lookup(who, t), Lookup::NotOnCall));
        let resolve = Change::Resolved {
            source: "pagerduty".into(),
            id: "i1".into(),
            at: t - 4,
        };
        assert_eq!(oncall.apply(resolve, None).await.unwrap(), Applied::Changed);
        assert_eq!(
            oncall.unreadable(),
            3,
            "i1 reads again (the garbled one, the shift and the delivery do not)"
        );
        // the garbled incident (not JSON): a page over it refused, a resolve replaces it
        let garbled_page = Change::Page {
            source: "pagerduty".into(),
            id: "garbled".into(),
            service: None,
            responders: vec![who.into()],
            replace: true,
            acknowledged: None,
            at: t - 3,
        };
        assert!(matches!(
            oncall.apply(garbled_page, None).await,
            Err(StoreError::Corrupt(..))
        ));
        let garbled_resolve = Change::Resolved {
            source: "pagerduty".into(),
            id: "garbled".into(),
            at: t - 3,
        };
        assert_eq!(
            oncall.apply(garbled_resolve, None).await.unwrap(),
            Applied::Changed
        );
        oncall.reload().unwrap();
        assert_eq!(
            oncall.unreadable(),
            2,
            "the garbled row replaced by the resolve"
        );
        oncall.apply(page(false, t - 2), None).await.unwrap();
        assert!(matches!(oncall.lookup(who, t), Lookup::OnCall(_)));

        // the shift that does not read puts no one on call; a shift putting the nurse on
        // call is refused over it, one that ended replaces it
        assert!(matches!(oncall.lookup(nurse, t), Lookup::NotOnCall));
        let shift = |until: u64| Change::Shift {
            principal: nurse.into(),
            fact: Fact::scheduled("webhook", None, Some(t - 60), Some(until)),
        };
        assert!(matches!(
            oncall.apply(shift(t + 3600), None).await,
            Err(StoreError::Corrupt(..))
        ));
        assert!(matches!(oncall.lookup(nurse, t), Lookup::NotOnCall));
        assert_eq!(
            oncall.apply(shift(t - 1), None).await.unwrap(),
            Applied::Changed
        );
        assert_eq!(oncall.unreadable(), 1);
        let later = Change::Shift {
            principal: nurse.into(),
            fact: Fact::scheduled("webhook", None, Some(t), Some(t + 3600)),
        };
        oncall.apply(later, None).await.unwrap();
        assert!(matches!(oncall.lookup(nurse, t), Lookup::OnCall(_)));

        // on one machine too: the state loads (before: the service did not start)
        let one = OnCall::load(&settings, store.clone()).unwrap();
        assert_eq!(one.unreadable(), 1);
        assert!(matches!(one.lookup(who, t), Lookup::OnCall(_)));
    }

    /// Replicas on one Redis: another replica resolves an incident between this one's check of
    /// an older acknowledgement and its write. The write is refused (the incident's row
    /// changed since it was read), the acknowledgement checked again, and superseded: the
    /// incident stays resolved. Before, the older acknowledgement was written over the resolve
    /// and its responder stayed on call for every replica.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_event_checked_before_another_replicas_write_does_not_undo_it() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedisStore::open(redis.url.as_str(), "p:").unwrap());
        let oncall = OnCall::load(&OnCallSettings::default(), store.clone())
            .unwrap()
            .shared_with_replicas(true);
        let t = now_secs();
        assert_eq!(
            oncall.apply(page(false, t), None).await.unwrap(),
            Applied::Changed
        );
        let row = format!("{INCIDENT}pagerduty:i1");
        let resolved = Incident {
            source: "pagerduty".into(),
            id: "i1".into(),
            service: None,
            responders: vec![],
            since: t,
            updated: t + 7,
            resolved: true,
            acknowledged: false,
        };
        let other = {
            let (store, row, resolved) = (store.clone(), row.clone(), resolved.clone());
            move || {
                store
                    .apply(Batch {
                        paging: vec![(row, Some(json(&resolved).unwrap()))],
                        ..Batch::default()
                    })
                    .unwrap()
            }
        };
        *oncall.between.lock().unwrap() = Some(Box::new(other));
        assert_eq!(
            oncall.apply(page(true, t + 5), None).await.unwrap(),
            Applied::Superseded
        );
        assert_eq!(
            store.paging_row(&row).unwrap(),
            Some(json(&resolved).unwrap())
        );
    }

    /// Of two replicas' syncs, the roster of the round that began later stands, whichever
    /// wrote last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_synced_roster_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let oncall = OnCall::load(&OnCallSettings::default(), store).unwrap();
        let synced = |at: u64| Change::Synced {
            source: "pagerduty".into(),
            roster: Roster {
                on_call: HashMap::new(),
                synced_at: at,
            },
        };
        assert_eq!(
            oncall.apply(synced(120), None).await.unwrap(),
            Applied::Changed
        );
        // a round that failed, then one that succeeded but was set aside (another replica's
        // later round stands): the source is healthy again (before, its error and count of
        // failures stayed, /readyz said degraded and alerts fired while syncs worked)
        oncall.sync_failed("pagerduty", 110, "timed out".into());
        assert_eq!(
            oncall.apply(synced(115), None).await.unwrap(),
            Applied::Superseded
        );
        let h = &oncall.health()["pagerduty"];
        assert_eq!((h.consecutive_failures, &h.last_error), (0, &None));
        assert_eq!(h.last_success, Some(120));
        assert_eq!(
            oncall.apply(synced(130), None).await.unwrap(),
            Applied::Changed
        );
    }

    /// Replicas on one Redis: this one found an incident aged out (and would delete its row
    /// with its next write); another pages it anew meanwhile. This one's next write leaves the
    /// new row. Before, it deleted it, and the new incident's responder dropped off call
    /// everywhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aged_out_row_written_anew_by_another_replica_is_not_deleted() {
        let redis = crate::dev::test_redis().await;
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedisStore::open(redis.url.as_str(), "q:").unwrap());
        let settings = OnCallSettings::default();
        let row = format!("{INCIDENT}pagerduty:i1");
        let incident = |since: u64| Incident {
            source: "pagerduty".into(),
            id: "i1".into(),
            service: None,
            responders: vec!["ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".into()],
            since,
            updated: since,
            resolved: false,
            acknowledged: false,
        };
        let write = |i: &Incident| {
            store
                .apply(Batch {
                    paging: vec![(row.clone(), Some(json(i).unwrap()))],
                    ..Batch::default()
                })
                .unwrap()
        };
        let t = now_secs();
        write(&incident(t - 2 * settings.incident_max_secs));
        // found aged out as it loads
        let oncall = OnCall::load(&settings, store.clone())
            .unwrap()
            .shared_with_replicas(true);
        // another replica pages it anew
        let fresh = incident(t);
        write(&fresh);
        let shift = Change::Shift {
            principal: "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB".into(),
            fact: Fact {
                source: "webhook".into(),
                service: None,
                since: Some(t),
                until: Some(t + 600),
                incident: None,
                acknowledged: false,
            },
        };
        assert_eq!(oncall.apply(shift, None).await.unwrap(), Applied::Changed);
        assert_eq!(store.paging_row(&row).unwrap(), Some(json(&fresh).unwrap()));

        // aged out as stored: deleted with the next write
        write(&incident(t - 2 * settings.incident_max_secs));
        oncall.reload().unwrap();
        oncall.apply(synced_now(), None).await.unwrap();
        assert_eq!(store.paging_row(&row).unwrap(), None);
    }

    fn synced_now() -> Change {
        Change::Synced {
            source: "pagerduty".into(),
            roster: Roster {
                on_call: HashMap::new(),
                synced_at: now_secs(),
            },
        }
    }
}

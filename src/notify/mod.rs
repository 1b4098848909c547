//! Patient notices: after an emergency access, one honest message to the patient (and their
//! delegate), delivered once.
//!
//! The grants' follow-up (`access::follow_up`) writes a pending `Notice` for each access,
//! made from the audit log after the grant, and tells this worker of it. This worker, off the
//! hot path, takes each notice when it is due (the window's close, or at once for
//! `notify.immediate_data_types`) and once the access is on chain (the txid is the notice's
//! proof), or `notify.chain_wait_hours` after it was due if the chain has not taken the record
//! by then (the notice then says the record is not confirmed yet). It renders the message once, seals it and stores it *before* the first attempt;
//! every attempt after that, including after a crash, sends those same bytes with the same
//! `Message-ID`, so a patient may at worst get the same message twice, never two different
//! notices under one `Message-ID` (a notice closed with nobody to tell and opened again for a
//! contact imported since is made again, under a `Message-ID` of its own). A permanent refusal (SMTP 5xx, a bad address) or 72 hours of transient failures
//! make the notice dead: listed for operators (`GET /v1/admin/notices`) and shown with the
//! access. A patient the directory cannot reach gets `no_contact`, visible the same way, and
//! is told after all once a contact is imported (`reopen_reachable`).
//!
//! Nothing is sent while the store has stopped writing (a failed write: only a restart
//! recovers it), since what was sent could not be recorded; and an attempt whose outcome
//! could not be recorded is kept in memory and recorded again, never sent again by this
//! process.
//!
//! It must not: run on the break-glass path, or send a message other than the one stored.

mod mailer;
pub mod message;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use mailer::{Mailer, SendError};
use message::{same_address, NoticeSettings, Proof, Rendered, Templates, Whom};

use crate::clock::now_secs;
use crate::configuration::{NotifySettings, Settings};
use crate::coordination::Coordinator;
use crate::domain::{AccessId, Contact};
use crate::seal::Keyring;
use crate::store::{apply_async, Batch, Notice, NoticeState, Store, SubmissionState};

/// How long a stop waits for the outcomes kept to be recorded (`Notifier::record_before_stop`).
const STOP_RECORD_WAIT: Duration = Duration::from_secs(5);

/// How far another replica's clock may run ahead of this one's before a retry time it set is
/// taken for a clock's error rather than a backoff (`step_held`).
const CLOCK_MARGIN_SECS: u64 = 60;

pub struct Notifier {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub mailer: Mailer,
    templates: Templates,
    settings: NotifySettings,
    /// Attempts made whose outcome the store did not take, by access id: recorded again at
    /// the notice's next turn instead of being sent again (`record_again`).
    unrecorded: Mutex<HashMap<AccessId, Notice>>,
    /// Where a replica takes a notice's lease before it works on it: one replica at a time
    /// sends a notice.
    coordination: Arc<Coordinator>,
    holder: String,
    /// Who takes a notice's lease to open it again (`reopen`): not `holder`, whose leases are
    /// its own again when taken twice, so that the check never lets go of a lease this
    /// replica's loop holds while it sends.
    recheck_holder: String,
    /// How long a notice's lease lasts: longer than an SMTP attempt may take.
    lease_ms: u64,
    /// With replicas, how often the open notices are read again from the store: a stopped
    /// replica's notices are found this way.
    rescan_every: Duration,
    /// With replicas, how long after an attempt started (`Notice::sending_since`) without a
    /// recorded outcome another replica sends the message again (its sender stopped).
    takeover_secs: u64,
    /// Other replicas' attempts seen in flight, by access id, and when this replica first saw
    /// each (`in_flight_wait`).
    in_flight: Mutex<HashMap<AccessId, (Attempt, std::time::Instant)>>,
    /// Told when patients' contacts were imported (`contacts_imported`): the notices closed
    /// with nobody to tell are looked at again then, not only every `RECHECK_UNCONTACTED_SECS`.
    contacts: Arc<tokio::sync::Notify>,
}

/// An attempt of a notice, as the store has it: `sending_since` and the notice's attempts.
type Attempt = (u64, u32);

/// How often the open notices are read again while the start's read of them has not succeeded.
const UNREAD_RETRY_SECS: u64 = 5;

/// How often the notices closed with nobody to tell are checked against the directory (a
/// contact imported on another replica, or one whose import raced the notice's closing): a
/// patient whose contact arrives later is told after all (`reopen_reachable`).
const RECHECK_UNCONTACTED_SECS: u64 = 60;

/// How many attempts in flight a replica times at once (`Notifier::in_flight`); past it, the
/// times start again (a takeover put off, never brought forward).
const IN_FLIGHT_TIMED: usize = 10_000;

/// The notice of an access (made by the grants' follow-up, from the access): at once if it
/// opens a data type notified at once, itself or as a section of the emergency summary.
pub fn notice_for(settings: &NotifySettings, access: &crate::store::AccessRecord) -> Notice {
    let immediate = crate::domain::covering(&access.data_types)
        .iter()
        .any(|d| settings.immediate_data_types.contains(d));
    let due = if immediate {
        access.granted_at
    } else {
        access.expires_at
    };
    Notice::new(access.id, access.patient, due)
}

impl Notifier {
    pub fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        coordination: Arc<Coordinator>,
    ) -> anyhow::Result<Notifier> {
        let lease_ms = settings.data.lease_ms;
        Ok(Notifier {
            store,
            keyring,
            mailer: Mailer::from_settings(&settings.notify, &settings.data.dir)?,
            templates: Templates::new()?,
            settings: settings.notify.clone(),
            unrecorded: Mutex::default(),
            rescan_every: Duration::from_millis(lease_ms),
            coordination,
            recheck_holder: format!("{}/recheck", crate::coordination::replica_id()),
            holder: crate::coordination::replica_id(),
            lease_ms: lease_ms
                .max((RECIPIENTS_MAX + 1) * 1_000 * settings.notify.smtp.timeout_secs),
            takeover_secs: takeover_secs(lease_ms, settings.notify.smtp.timeout_secs),
            in_flight: Mutex::default(),
            contacts: Arc::default(),
        })
    }

    /// What to tell when patients' contacts were imported: the notices closed with nobody to
    /// tell are looked at again at once (`reopen_reachable`).
    pub fn contacts_imported(&self) -> Arc<tokio::sync::Notify> {
        self.contacts.clone()
    }

    /// Whether other replicas send notices from the same store.
    fn replicas(&self) -> bool {
        self.coordination.is_shared()
    }

    /// The open notices, as the store has them now, but those of `known` (not read), and only
    /// those next due by `until`, if given; `None` (logged) when they could not be read.
    fn open_notices(
        &self,
        known: &std::collections::HashSet<AccessId>,
        until: Option<u64>,
    ) -> Option<Vec<(u64, AccessId)>> {
        match self.store.open_notices_but(known, until) {
            Ok(open) => Some(open.into_iter().map(|n| (n.next_at, n.access_id)).collect()),
            Err(e) => {
                tracing::error!(error = %e, "notices: could not read the open notices");
                None
            }
        }
    }

    /// Runs until shutdown. Open notices are read from the store once, at start (a read that
    /// fails is made again every `UNREAD_RETRY_SECS` until one does: before, they waited for
    /// the next start); after that the grants' follow-up announces each notice it makes on
    /// `new` (a notice announced just before a crash is found by the next start's read).
    pub async fn run(
        self: Arc<Self>,
        mut new: mpsc::UnboundedReceiver<(u64, crate::domain::AccessId)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let first = self.open_notices(&Default::default(), None);
        let mut unread = first.is_none();
        let mut due: BTreeSet<(u64, AccessId)> = first.into_iter().flatten().collect();
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.poll_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scanned = std::time::Instant::now();
        let (reopened, mut opened) = mpsc::unbounded_channel();
        let recheck = tokio::spawn(self.clone().recheck(reopened, shutdown.clone()));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    while let Ok(n) = opened.try_recv() {
                        due.insert(n);
                    }
                    while let Ok(n) = new.try_recv() {
                        due.insert(n);
                    }
                    if unread && scanned.elapsed() >= Duration::from_secs(UNREAD_RETRY_SECS) {
                        // the start's read failed: every open notice, read again
                        let known: std::collections::HashSet<AccessId> =
                            due.iter().map(|(_, id)| *id).collect();
                        if let Some(open) = self.open_notices(&known, None) {
                            tracing::info!(open = open.len(), "notices: the open notices read");
                            due.extend(open);
                            unread = false;
                        }
                        scanned = std::time::Instant::now();
                    }
                    if self.replicas() && scanned.elapsed() >= self.rescan_every {
                        // other replicas' notices too, each sent by whoever holds its lease:
                        // those due before the next rescan (a stopped replica's among them),
                        // read through the index by due time, however many are open
                        let known: std::collections::HashSet<AccessId> =
                            due.iter().map(|(_, id)| *id).collect();
                        let until = now_secs() + self.rescan_every.as_secs().max(1);
                        due.extend(self.open_notices(&known, Some(until)).into_iter().flatten());
                        scanned = std::time::Instant::now();
                    }
                    self.round(&mut due).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        // (a notice it was opening is opened or not: its lease lapses either way)
        recheck.abort();
        self.record_before_stop().await;
    }

    /// At a stop: the outcomes of messages sent that the store did not take yet are recorded
    /// once more (`record_again`), within `STOP_RECORD_WAIT`. Dropped with the process, each
    /// notice would still read as in flight, and another replica would send it again after the
    /// takeover period; a stop that cannot record them (the store away) leaves them so, as a
    /// crash does.
    async fn record_before_stop(&self) {
        let kept: Vec<Notice> = self.unrecorded_lock().drain().map(|(_, n)| n).collect();
        if kept.is_empty() {
            return;
        }
        let recording = async {
            for notice in kept {
                let id = notice.access_id;
                self.record_again(notice, now_secs()).await;
                if self.unrecorded_lock().contains_key(&id) {
                    tracing::warn!(access = %id, "notice: its outcome could not be recorded before the stop; another replica may send it again");
                }
            }
        };
        if tokio::time::timeout(STOP_RECORD_WAIT, recording)
            .await
            .is_err()
        {
            tracing::warn!("notices: the outcomes kept could not all be recorded before the stop");
        }
    }

    /// Looks at the notices closed with nobody to tell (`reopen_reachable`) at start, every
    /// `RECHECK_UNCONTACTED_SECS` and after each import of contacts, in a task of its own (a
    /// bulk import's many notices do not hold back the notices due), handing those opened again
    /// to the notifier's loop on `opened`.
    async fn recheck(
        self: Arc<Self>,
        opened: mpsc::UnboundedSender<(u64, AccessId)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            for due in self.reopen_reachable(now_secs()).await {
                let _ = opened.send(due);
            }
            tokio::select! {
                () = self.contacts.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(RECHECK_UNCONTACTED_SECS)) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// The notices closed with nobody to tell (`NoticeState::NoContact`) whose patient the
    /// directory reaches now (a contact imported since), opened again, due at once: the patient
    /// is told after all, of an access however old (the message says when it was, and why it
    /// comes late). The index names each notice's patient: the directory is read for those
    /// patients at once, and each contact found opened once (not each notice's, nor any
    /// notice of a patient without one). Those that could not be read or written are tried
    /// again at the next check.
    async fn reopen_reachable(&self, now: u64) -> Vec<(u64, AccessId)> {
        let closed = match self.store.uncontacted() {
            Ok(closed) if closed.is_empty() => return Vec::new(),
            Ok(closed) => closed,
            Err(e) => {
                tracing::warn!(error = %e, "notices: could not read those with nobody to tell; read again later");
                return Vec::new();
            }
        };
        let patients: Vec<_> = closed
            .iter()
            .map(|(_, p)| *p)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let present = match self.store.have_contacts(&patients) {
            Ok(present) => present,
            Err(e) => {
                tracing::warn!(error = %e, "notices: could not read the directory for those with nobody to tell; read again later");
                return Vec::new();
            }
        };
        // one whose addresses all ended would close again at once, and open again here at
        // every check: only a contact that reaches someone today opens them
        let reached: std::collections::HashSet<_> = patients
            .into_iter()
            .zip(present)
            .filter(|(_, present)| *present)
            .filter(|(patient, _)| match self.reaches(patient) {
                Ok(reaches) => reaches,
                Err(e) => {
                    tracing::warn!(error = %e, "notices: a patient's contact could not be read to open their notices again; tried again later");
                    false
                }
            })
            .map(|(patient, _)| patient)
            .collect();
        let mut opened = Vec::new();
        for (id, patient) in closed {
            if reached.contains(&patient) && self.reopen(&id, now).await {
                opened.push((now, id));
            }
        }
        opened
    }

    /// Opens the notice of access `id` again, due at once, under its lease and only if the
    /// store still has it closed with nobody to tell (another replica may have opened it, and
    /// sent it, since this one read the index); its audit entry `no-contact` stays, and the one
    /// its outcome adds follows it. Nobody is on record as having its message (a notice closed
    /// so was delivered to nobody): one made before it closed is made again, for whom the
    /// directory names now and saying it comes late, under a Message-ID of its own (an attempt
    /// whose delivery was never recorded may have reached someone with the one before), and its
    /// attempts and retry period start again. One the index still names (whose patient the
    /// directory reaches: the others are not read)
    /// though it was opened (an index built while another replica opened it) is written again
    /// as it is, which takes it out of the index. Whether it opened it.
    async fn reopen(&self, id: &AccessId, now: u64) -> bool {
        let holder = &self.recheck_holder;
        let Ok(fence) = self.lease_as(id, now, holder).await else {
            return false;
        };
        let opened = match self.store.notice(id) {
            Ok(Some(mut notice)) if matches!(notice.state, NoticeState::NoContact { .. }) => {
                notice.state = NoticeState::Pending;
                notice.reopened = Some(now);
                notice.next_at = now;
                notice.first_attempt_at = None;
                notice.attempts = 0;
                notice.sending_since = None;
                notice.last_error = None;
                notice.message = None;
                notice.message_id = None;
                notice.withdrawn.clear();
                notice.refused.clear();
                match self.save(notice, fence.as_ref()).await {
                    Ok(()) => {
                        tracing::info!(access = %id, "notice: the patient has a contact now; the notice goes out after all");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(access = %id, error = %e, "notice: could not be opened again for the patient's new contact; tried again later");
                        false
                    }
                }
            }
            Ok(Some(notice)) if notice.reopened.is_some() => {
                let again = Batch {
                    notices: vec![notice],
                    guard: fence.map(|fence| crate::store::Guard {
                        fence: Some(fence),
                        ..crate::store::Guard::default()
                    }),
                    ..Batch::default()
                };
                if let Err(e) = apply_async(&self.store, again).await {
                    tracing::warn!(access = %id, error = %e, "notice: opened already, its row in the index of those with nobody to tell could not be taken out; tried again later");
                }
                false
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(access = %id, error = %e, "notice: could not be read to open it again; tried again later");
                false
            }
        };
        self.let_go_as(id, holder).await;
        opened
    }

    /// Advances every notice that is due, keeping the ones still open in `due` with when to
    /// look at them again.
    async fn round(&self, due: &mut BTreeSet<(u64, crate::domain::AccessId)>) {
        let now = now_secs();
        while due.first().is_some_and(|(at, _)| *at <= now) {
            if let Some(why) = self.store.stopped() {
                // a message sent now could not be recorded as sent (checked before each, since
                // a write may fail during the round)
                tracing::error!(%why, "notices: the store stopped writing; nothing is sent until a restart");
                return;
            }
            let Some((_, id)) = due.pop_first() else {
                break;
            };
            let unrecorded = self.unrecorded_lock().remove(&id);
            let next = if let Some(notice) = unrecorded {
                self.record_again(notice, now).await
            } else {
                self.step(&id, now).await
            };
            if let Some(at) = next {
                due.insert((at.max(now + 1), id));
            }
        }
    }

    fn unrecorded_lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccessId, Notice>> {
        self.unrecorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an attempt's outcome (fenced as `save` says); when to look at the notice again,
    /// if ever. An outcome the store does not take, or takes no longer under this lease (it
    /// lapsed while the message was sent), is kept, to be recorded (not sent) again in 5 s
    /// under the lease taken anew, and only while the store still shows that attempt in flight
    /// (`record_again`): dropped, the replica that took the notice next would find the attempt
    /// `sending_since` and send the message again after the takeover period, this replica
    /// knowing it was taken.
    async fn record(
        &self,
        notice: Notice,
        now: u64,
        fence: Option<&crate::store::Fence>,
    ) -> Option<u64> {
        let next = notice.is_open().then_some(notice.next_at);
        match self.save(notice.clone(), fence).await {
            Ok(()) => next,
            Err(e) if fenced(&e) => {
                tracing::warn!(access = %notice.access_id, "notice: its lease lapsed (or passed to another replica) before this replica recorded its attempt; recording it again under the lease taken anew, if that attempt is still the one in flight");
                self.unrecorded_lock().insert(notice.access_id, notice);
                Some(now + 5)
            }
            Err(e) => {
                tracing::error!(access = %notice.access_id, error = %e, "notice: its attempt could not be recorded; recording it again, not sending it again");
                self.unrecorded_lock().insert(notice.access_id, notice);
                Some(now + 5)
            }
        }
    }

    /// Records again an attempt's outcome the store did not take; never sends it again. With
    /// replicas, under the notice's lease taken anew (the attempt's own was let go, or lapsed
    /// while the store was away), and only while the store still has that attempt in flight
    /// (open, `sending_since`, the same number of attempts): a replica that took the notice
    /// over since made an attempt of its own, whose record stands.
    async fn record_again(&self, notice: Notice, now: u64) -> Option<u64> {
        if !self.replicas() {
            return self.record(notice, now, None).await;
        }
        let id = notice.access_id;
        let fence = match self.lease(&id, now).await {
            Ok(fence) => fence,
            Err(next) => {
                self.unrecorded_lock().insert(id, notice);
                return Some(next);
            }
        };
        let next = match self.store.notice(&id) {
            // (the same message too: a notice opened again starts its attempts again, under a
            // Message-ID of its own)
            Ok(Some(stored))
                if stored.is_open()
                    && stored.sending_since.is_some()
                    && stored.attempts == notice.attempts
                    && stored.message_id == notice.message_id =>
            {
                self.record(notice, now, fence.as_ref()).await
            }
            Ok(stored) => {
                tracing::info!(access = %id, "notice: its attempt's outcome is on record, or another replica has made an attempt since; that record stands");
                stored.filter(Notice::is_open).map(|n| n.next_at)
            }
            Err(e) => {
                tracing::error!(access = %id, error = %e, "notice: could not be read; recording its attempt again later");
                self.unrecorded_lock().insert(id, notice);
                Some(now + 5)
            }
        };
        self.let_go(&id).await;
        next
    }

    /// Takes the lease of the notice of access `id`: with replicas, the fence its writes go
    /// with. Else when to look at the notice again (another replica holds it: once it would
    /// have lapsed).
    async fn lease(&self, id: &AccessId, now: u64) -> Result<Option<crate::store::Fence>, u64> {
        self.lease_as(id, now, &self.holder).await
    }

    /// `lease`, for `holder`.
    async fn lease_as(
        &self,
        id: &AccessId,
        now: u64,
        holder: &str,
    ) -> Result<Option<crate::store::Fence>, u64> {
        let lease = lease_name(id);
        match self.coordination.fence(&lease, holder, self.lease_ms).await {
            // replicas: the notice's writes go with the lease's token, so that a replica
            // paused past its lease (another took it, and may have sent the notice) writes
            // nothing and sends nothing when it resumes, if its pause came before its attempt
            // was recorded as in flight (`sending_since`); one that came between that record
            // and the send, longer than the takeover period, sends a second copy (at worst
            // twice, as a crash there)
            Ok(Some(fence)) => Ok(self.replicas().then_some(fence)),
            Ok(None) => Err(now + self.lease_ms.div_ceil(1000)),
            Err(e) => {
                tracing::error!(access = %id, error = %e, "notice: its lease could not be taken");
                // the store away: an attempt in flight is timed again once it is back (its
                // sender could not record its outcome meanwhile either)
                self.in_flight_lock().remove(id);
                Err(now + 5)
            }
        }
    }

    /// Lets the lease of the notice of access `id` go (one not let go lapses).
    async fn let_go(&self, id: &AccessId) {
        self.let_go_as(id, &self.holder).await;
    }

    /// `let_go`, for `holder`.
    async fn let_go_as(&self, id: &AccessId, holder: &str) {
        if let Err(e) = self.coordination.release(&lease_name(id), holder).await {
            tracing::warn!(access = %id, error = %e, "notice: its lease could not be let go; it lapses");
        }
    }

    /// One step for the notice of access `id`, as the store has it, under the notice's lease
    /// (another replica holding it works on it: looked at again once it would have lapsed).
    async fn step(&self, id: &AccessId, now: u64) -> Option<u64> {
        if self.replicas() && self.waiting_for_chain(id, now) {
            // nothing to do until the access is on chain: no lease taken for that
            return Some(now + 1);
        }
        let fence = match self.lease(id, now).await {
            Ok(fence) => fence,
            Err(next) => return Some(next),
        };
        let next = self.step_held(id, now, fence.as_ref()).await;
        self.let_go(id).await;
        next
    }

    /// Whether the notice has no message yet and waits for its access to be on chain (so it
    /// cannot have one yet): as the store says now, false when it cannot tell.
    fn waiting_for_chain(&self, id: &AccessId, now: u64) -> bool {
        let unrendered = matches!(self.store.notice(id),
            Ok(Some(n)) if n.message.is_none() && !self.waited_for_chain(&n, now));
        unrendered
            && matches!(
                self.store.submission(&format!("record:{id}")),
                Ok(Some(s)) if s.is_open()
            )
    }

    /// Whether the notice has waited for its access's chain record as long as it may
    /// (`notify.chain_wait_hours` after it was due): it goes out without it.
    fn waited_for_chain(&self, notice: &Notice, now: u64) -> bool {
        now >= notice
            .due_at
            .saturating_add(self.settings.chain_wait_hours.saturating_mul(3600))
    }

    /// One step for the notice of access `id`, its lease held (its writes fenced with
    /// `fence`, when replicas share the store).
    async fn step_held(
        &self,
        id: &AccessId,
        now: u64,
        fence: Option<&crate::store::Fence>,
    ) -> Option<u64> {
        let notice = self.store.notice(id);
        if let Ok(Some(n)) = &notice {
            if let Some(wait) = self.in_flight_wait(n) {
                // another replica sent it and has not recorded how it went (yet)
                return Some(now + wait);
            }
            let now_here = now.max(now_secs());
            if n.is_open()
                && n.next_at > now_here
                && n.next_at
                    <= now_here
                        .saturating_add(self.settings.retry_max_secs)
                        .saturating_add(CLOCK_MARGIN_SECS)
            {
                // not due yet as the store has it: another replica tried it since this one
                // learnt when it was due, and set when to try again (each replica trying it
                // at once would cut its backoff by as many replicas); judged by the time now,
                // not by when a long round began. A time further off than any backoff (and a
                // minute more: replicas' clocks differ by seconds) comes from a clock ahead of
                // this one's: not waited for
                return Some(n.next_at);
            }
        }
        match notice {
            Ok(Some(n)) if n.is_open() => {
                let read = n.clone();
                match self.advance(n, now, fence).await {
                    Ok(next) => next,
                    Err(e) if fenced(&e) => {
                        tracing::warn!(access = %id, "notice: its lease lapsed (or passed to another replica) while this replica worked on it; nothing sent");
                        Some(now + self.lease_ms.div_ceil(1000))
                    }
                    Err(e) => {
                        tracing::error!(access = %id, error = %e, "notice: could not advance");
                        self.stuck(read, now, fence).await
                    }
                }
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!(access = %id, error = %e, "notice: could not be read");
                // (the store away: its attempt in flight, if any, is timed again once it is
                // back, its sender having been unable to record it meanwhile; only this
                // notice's, so that one that cannot be read delays no other's)
                self.in_flight_lock().remove(id);
                Some(now + 5)
            }
        }
    }

    fn in_flight_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<AccessId, (Attempt, std::time::Instant)>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// With an attempt of the notice in flight (`sending_since`: sent by a replica that has
    /// not recorded how it went), how many seconds more this replica leaves it to its sender
    /// before it sends the message again: the takeover period, timed on this replica's own
    /// clock from when it first saw that attempt. `sending_since` is the sender's clock,
    /// which may run ahead of or behind this one's: timed from it, a replica whose clock ran a
    /// takeover period ahead sent the message again at once. `None` once the period has
    /// passed, or with no attempt in flight.
    fn in_flight_wait(&self, n: &Notice) -> Option<u64> {
        let mut seen = self.in_flight_lock();
        let Some(since) = n.sending_since.filter(|_| n.is_open()) else {
            seen.remove(&n.access_id);
            return None;
        };
        let attempt = (since, n.attempts);
        let first = match seen.get(&n.access_id) {
            Some((a, at)) if *a == attempt => *at,
            _ => {
                if seen.len() >= IN_FLIGHT_TIMED {
                    seen.clear();
                }
                let at = std::time::Instant::now();
                seen.insert(n.access_id, (attempt, at));
                at
            }
        };
        let waited = first.elapsed().as_secs();
        if waited >= self.takeover_secs {
            seen.remove(&n.access_id);
            return None;
        }
        Some(self.takeover_secs - waited)
    }

    /// A notice that could not advance (its access, contact or message could not be read or
    /// rendered): tried again in 5 s, and dead-lettered, where operators see it, once it has
    /// been stuck for the retry period (from its first attempt, or from when it was due, or
    /// opened again: a notice of an old access opened for a contact imported since is not
    /// dead-lettered by its first failed read).
    async fn stuck(
        &self,
        mut notice: Notice,
        now: u64,
        fence: Option<&crate::store::Fence>,
    ) -> Option<u64> {
        let hours = self.settings.give_up_after_hours;
        let since = notice.first_attempt_at.unwrap_or(
            notice
                .reopened
                .map_or(notice.due_at, |at| at.max(notice.due_at)),
        );
        if now < since.saturating_add(hours * 3600) {
            return Some(now + 5);
        }
        // the error itself stays in the log: it may quote what could not be read
        notice.state = NoticeState::Dead {
            at: now,
            reason: format!("could not be prepared for {hours} hours (the service's log says why)"),
        };
        self.record(notice, now, fence).await
    }

    /// Writes `notice`; a notice that left `pending` (sent, dead, nobody to tell) is added
    /// to the audit log in the same write. Either is written only while the lease is still
    /// `fence`'s, if given (else `Guarded::Fenced`, nothing written): a replica paused past
    /// its lease records nothing over the record of the replica that took the notice next.
    async fn save(
        &self,
        notice: Notice,
        fence: Option<&crate::store::Fence>,
    ) -> anyhow::Result<()> {
        let state = match &notice.state {
            NoticeState::Pending => None,
            NoticeState::Sent { .. } => Some("sent"),
            NoticeState::Dead { .. } => Some("dead"),
            NoticeState::NoContact { .. } => Some("no-contact"),
        };
        let audit = state
            .map(|state| {
                crate::audit::Record::now(crate::audit::Event::Notice {
                    access: notice.access_id,
                    patient: notice.patient,
                    state: state.into(),
                })
            })
            .into_iter()
            .collect();
        let guard = fence.map(|fence| crate::store::Guard {
            fence: Some(fence.clone()),
            ..crate::store::Guard::default()
        });
        apply_async(
            &self.store,
            Batch {
                notices: vec![notice],
                audit,
                guard,
                ..Batch::default()
            },
        )
        .await?;
        Ok(())
    }

    /// The patient's contact as it stands today (`Contact::current`: an address or a delegate
    /// whose period ended since the import, or has not started, is not named), if the
    /// directory has one.
    fn contact(&self, notice: &Notice) -> anyhow::Result<Option<Contact>> {
        self.contact_of(&notice.patient)
    }

    /// `patient`'s contact as it stands today (`contact`).
    fn contact_of(&self, patient: &crate::domain::PatientId) -> anyhow::Result<Option<Contact>> {
        let Some(sealed) = self.store.contact(patient)? else {
            return Ok(None);
        };
        let plain = self
            .keyring
            .open(&crate::seal::names::contact(patient), &sealed)?;
        let contact: Contact =
            serde_json::from_slice(&plain).map_err(|e| undecodable("the patient's contact", &e))?;
        Ok(Some(contact.current(&crate::directory::today())))
    }

    /// Whether the directory reaches `patient` today: a contact that names an address still
    /// theirs, or a delegate still one.
    fn reaches(&self, patient: &crate::domain::PatientId) -> anyhow::Result<bool> {
        Ok(self
            .contact_of(patient)?
            .is_some_and(|c| !message::recipients(&c).is_empty()))
    }

    /// Renders and stores the message, if the chain record and the contact allow it yet.
    async fn prepare(
        &self,
        mut notice: Notice,
        now: u64,
        fence: Option<&crate::store::Fence>,
    ) -> anyhow::Result<Prepared> {
        let proof = match self
            .store
            .submission(&format!("record:{}", notice.access_id))?
            .map(|s| s.state)
        {
            Some(SubmissionState::Confirmed {
                txid: Some(txid), ..
            }) => Proof::Transaction(txid),
            // recorded by someone else's transaction: under the access id the notice names
            Some(SubmissionState::Confirmed { txid: None, .. }) => Proof::AccessId,
            // not at all: the notice still goes out, and says so
            Some(SubmissionState::Failed { .. }) => Proof::NotRecorded,
            // not on chain for long (the node away): it goes out saying the record is not confirmed yet
            _ if self.waited_for_chain(&notice, now) => Proof::Pending,
            // not on chain yet: look again soon
            _ => return Ok(Prepared::Waiting),
        };
        let access = self
            .store
            .access(&notice.access_id)?
            .ok_or_else(|| anyhow::anyhow!("no access record"))?;
        // a contact whose addresses' and delegates' periods all ended since is none
        let Some(contact) = self
            .contact(&notice)?
            .filter(|c| !message::recipients(c).is_empty())
        else {
            tracing::warn!(access = %notice.access_id, "notice: the directory has no contact for the patient; nobody is notified");
            notice.state = NoticeState::NoContact { at: now };
            self.save(notice, fence).await?;
            return Ok(Prepared::Closed);
        };
        // the clinician by name only when their directory entry matches the chain
        let provider = self.store.directory_entry(&access.provider)?.filter(|e| {
            let chain = self.store.provider(&access.provider).ok().flatten();
            e.verification(chain.as_ref()) == crate::domain::Verification::Verified
        });
        let reason = crate::access::reasons::open(&self.keyring, &access)
            .ok_or_else(|| anyhow::anyhow!("the access's reason does not open"))?
            .text;
        let rendered = message::render(
            &self.templates,
            &NoticeSettings {
                from: &self.settings.from,
                explorer_tx_url: self.settings.explorer_tx_url.as_deref(),
                contest: &self.settings.contest,
                reopened: notice.reopened,
            },
            &access,
            &reason,
            provider.as_ref(),
            &contact,
            &proof,
        )?;
        let sealed = self.keyring.seal(
            &crate::seal::names::notice(&notice.access_id),
            &serde_json::to_vec(&rendered)?,
        )?;
        notice.message_id = Some(rendered.message_id.clone());
        notice.message = Some(hex::encode(sealed));
        // durable before the first attempt: a crash from here on re-sends these bytes
        self.save(notice.clone(), fence).await?;
        Ok(Prepared::Ready(Box::new(notice)))
    }

    /// The message's recipients as the patient's contact names them now (read again before
    /// each attempt): one it no longer names (a delegate removed, an address changed; compared
    /// whole, in any case) is withdrawn, not sent to again; a new address of someone who does
    /// not have the message yet (the patient's, the delegate's) is added to it (the same
    /// message, sealed again with it), so that the patient's new address has it, and nobody
    /// gets it twice; one withdrawn and named again waits again (unless its owner has it
    /// meanwhile). A contact that cannot be read, or is gone, changes nothing. The contact, if
    /// read.
    fn follow_directory(
        &self,
        notice: &mut Notice,
        rendered: &mut Rendered,
    ) -> anyhow::Result<Option<Contact>> {
        let contact = match self.contact(notice) {
            Ok(Some(contact)) => contact,
            // the message goes as made: telling the patient comes first
            Ok(None) => {
                tracing::warn!(access = %notice.access_id, "notice: the directory no longer has the patient's contact; sent to the recipients it was made for");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(access = %notice.access_id, error = %e, "notice: the patient's contact could not be read; sent to the recipients it was made for");
                return Ok(None);
            }
        };
        let named = message::recipients(&contact);
        if rendered.whose.is_empty() && rendered.to.len() == 1 {
            // a message of one address made before it said whose: the delegate's if the
            // contact names it as the delegate's alone (a contact with a delegate and no email)
            let only_delegates = named
                .iter()
                .all(|(a, w)| !same_address(a, &rendered.to[0]) || *w == Whom::Delegate)
                && named.iter().any(|(a, _)| same_address(a, &rendered.to[0]));
            rendered.whose = vec![if only_delegates {
                Whom::Delegate
            } else {
                Whom::Patient
            }];
        }
        for (place, address) in (0u8..).zip(&rendered.to) {
            if named.iter().any(|(n, _)| same_address(n, address)) {
                // named again: waits again, unless its owner has it meanwhile elsewhere
                if notice.withdrawn.contains(&place)
                    && !has(notice, rendered, rendered.whose(place))
                {
                    notice.withdrawn.retain(|p| *p != place);
                }
            } else if notice.waits_on(place) {
                tracing::info!(access = %notice.access_id, recipient = place, "notice: a recipient is no longer the patient's contact; not sent to");
                notice.withdrawn.push(place);
            }
        }
        let mut added = false;
        for (address, whom) in named {
            if rendered.to.iter().any(|a| same_address(a, address))
                || has(notice, rendered, Some(whom))
            {
                continue;
            }
            if rendered.to.len() >= PLACES_MAX {
                tracing::warn!(access = %notice.access_id, "notice: its recipients changed too often; a new address is not added");
                continue;
            }
            if rendered.whose.len() < rendered.to.len() {
                // a message made before it said whose each address is: said now, as it reads
                let whose: Vec<Option<Whom>> = (0..rendered.to.len() as u8)
                    .map(|p| rendered.whose(p))
                    .collect();
                let Some(whose) = whose.into_iter().collect::<Option<Vec<Whom>>>() else {
                    continue;
                };
                rendered.whose = whose;
            }
            tracing::info!(access = %notice.access_id, recipient = rendered.to.len(), "notice: a new address the patient's contact names is added");
            rendered.to.push(address.to_string());
            rendered.whose.push(whom);
            added = true;
        }
        if added {
            let sealed = self.keyring.seal(
                &crate::seal::names::notice(&notice.access_id),
                &serde_json::to_vec(&rendered)?,
            )?;
            notice.message = Some(hex::encode(sealed));
        }
        Ok(Some(contact))
    }

    /// One step for one notice; when to look at it again, if it stays open.
    async fn advance(
        &self,
        notice: Notice,
        now: u64,
        fence: Option<&crate::store::Fence>,
    ) -> anyhow::Result<Option<u64>> {
        let mut notice = match notice.message {
            Some(_) => notice,
            None => match self.prepare(notice, now, fence).await? {
                Prepared::Ready(n) => *n,
                Prepared::Waiting => return Ok(Some(now + 1)),
                Prepared::Closed => return Ok(None),
            },
        };
        let sealed = hex::decode(notice.message.as_deref().unwrap_or_default())?;
        let mut rendered: Rendered = serde_json::from_slice(
            &self
                .keyring
                .open(&crate::seal::names::notice(&notice.access_id), &sealed)?,
        )
        .map_err(|e| undecodable("the stored message", &e))?;
        self.follow_directory(&mut notice, &mut rendered)?;
        let rendered = rendered;
        // who a recipient is, for what the notice says of them
        let who = |places: &[u8]| recipients_named(places, &rendered);
        // the attempt's own time: a round that took long (a slow send before this one) must
        // not write an attempt that another replica would find already past its takeover
        let now = now_secs().max(now);
        notice.attempts += 1;
        let first = *notice.first_attempt_at.get_or_insert(now);
        let sending_since = self.replicas().then_some(now);
        if sending_since.is_some() {
            // replicas: the attempt is on record before the message leaves, so that another
            // replica does not send it while this one records how it went
            notice.sending_since = sending_since;
            self.save(notice.clone(), fence).await?;
            notice.sending_since = None;
        }
        // servers often quote the address they refuse (in any case): it never reaches a log
        // or the store
        let redact = |reason: String| {
            rendered
                .to
                .iter()
                .fold(reason, |r, address| redacted(&r, address))
        };
        // to each recipient still waiting, alone: one refusing it for good (a delegate's
        // mailbox gone) does not keep it from the others
        let mut waiting = None;
        let mut refused = None;
        let to: Vec<(u8, &String)> = (0u8..)
            .zip(&rendered.to)
            .filter(|(place, _)| notice.waits_on(*place))
            .collect();
        for (n, &(place, address)) in to.iter().enumerate() {
            let answered = match self.mailer.send(&rendered, &[address.as_str()]).await {
                Ok(()) => {
                    notice.delivered.push(place);
                    true
                }
                Err(SendError::Permanent(reason)) => {
                    notice.refused.push(place);
                    refused = Some(redact(reason));
                    true
                }
                Err(SendError::Transient(reason)) => {
                    waiting = Some(redact(reason));
                    false
                }
            };
            if answered && n + 1 < to.len() {
                // recorded before the next recipient's send: a crash during it leaves this
                // one's answer on record, and the next attempt does not send it here again
                let mut progress = notice.clone();
                progress.sending_since = sending_since;
                if let Err(e) = self.save(progress, fence).await {
                    tracing::warn!(access = %notice.access_id, error = %e, "notice: a recipient's answer could not be recorded; the others are sent to later");
                    waiting = Some("a recipient's answer could not be recorded".into());
                    break;
                }
            }
        }
        let outcome = match (waiting, refused) {
            // a recipient refused for good meanwhile is said beside why the others wait
            (Some(reason), Some(r)) => Err(SendError::Transient(format!(
                "{reason}; {} refused it for good: {r}",
                who(&notice.refused)
            ))),
            (Some(reason), None) => Err(SendError::Transient(reason)),
            (None, refused) if notice.delivered.is_empty() => {
                Err(SendError::Permanent(refused.unwrap_or_else(|| {
                    if notice.refused.is_empty() {
                        "no address it was made for is the patient's contact any more".into()
                    } else {
                        "every recipient refused it".into()
                    }
                })))
            }
            (None, refused) => Ok(refused),
        };
        match outcome {
            Ok(refused) => {
                tracing::info!(access = %notice.access_id, attempts = notice.attempts, recipients = notice.delivered.len(), refused = notice.refused.len(), "notice sent");
                notice.state = NoticeState::Sent { at: now_secs() };
                // a recipient who refused it for good, while another has it, is said, in this
                // attempt or an earlier one (the patient's mailbox gone, the delegate told)
                let refusal = (!notice.refused.is_empty()).then(|| {
                    let who = who(&notice.refused);
                    match refused {
                        Some(r) => format!("{who} refused it for good: {r}"),
                        None => format!("{who} refused it for good in an earlier attempt"),
                    }
                });
                // and one the directory no longer names, not sent to
                let withdrawn = match notice.withdrawn.len() {
                    0 => None,
                    1 => Some("not sent to an address the directory no longer names".to_string()),
                    n => Some(format!(
                        "not sent to {n} addresses the directory no longer names"
                    )),
                };
                notice.last_error = match (refusal, withdrawn) {
                    (Some(r), Some(w)) => Some(format!("{r}; {w}")),
                    (r, w) => r.or(w),
                };
            }
            Err(SendError::Permanent(_))
                if notice.delivered.is_empty() && !notice.withdrawn.is_empty() =>
            {
                // nobody has it, and not everybody refused it: the directory names nobody else
                // it can go to (an address given up, a guardianship ended since it was made;
                // a delegate's mailbox that refused it is no reason not to tell the patient),
                // as for a notice never made: closed with nobody to tell, and sent once a
                // contact reaches someone
                tracing::warn!(access = %notice.access_id, "notice: the directory no longer names anyone to tell; nobody is notified until it does");
                notice.state = NoticeState::NoContact { at: now };
            }
            Err(SendError::Permanent(reason)) => {
                tracing::error!(access = %notice.access_id, %reason, "notice refused for good: dead-lettered");
                notice.state = NoticeState::Dead { at: now, reason };
            }
            Err(SendError::Transient(reason)) => {
                let give_up = first + self.settings.give_up_after_hours * 3600;
                if now >= give_up && !notice.delivered.is_empty() {
                    // one recipient has it (the patient, say) and the other never could: sent,
                    // saying who did not get it and why
                    tracing::warn!(access = %notice.access_id, %reason, "notice: a recipient still failing after the retry period; the others have it");
                    notice.state = NoticeState::Sent { at: now_secs() };
                    let unreached: Vec<u8> = (0u8..)
                        .take(rendered.to.len())
                        .filter(|p| notice.waits_on(*p))
                        .collect();
                    notice.last_error = Some(format!(
                        "{} could not be reached in {} hours: {reason}",
                        who(&unreached),
                        self.settings.give_up_after_hours
                    ));
                } else if now >= give_up {
                    tracing::error!(access = %notice.access_id, %reason, "notice still failing after the retry period: dead-lettered");
                    notice.state = NoticeState::Dead {
                        at: now,
                        reason: format!(
                            "still failing after {} hours: {reason}",
                            self.settings.give_up_after_hours
                        ),
                    };
                } else {
                    let backoff = self
                        .settings
                        .retry_initial_secs
                        .saturating_mul(1 << (notice.attempts - 1).min(20))
                        .min(self.settings.retry_max_secs);
                    tracing::warn!(access = %notice.access_id, %reason, attempts = notice.attempts, retry_in_secs = backoff, "notice not sent; will retry");
                    notice.next_at = now + backoff;
                    notice.last_error = Some(reason);
                }
            }
        }
        Ok(self.record(notice, now, fence).await)
    }
}

/// Why sealed JSON (a contact, a message) does not decode, without the values serde would
/// quote (an address, a name): the kind of fault and where. The error is logged.
fn undecodable(what: &str, e: &serde_json::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} does not decode ({:?} at line {}, column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// `text` with every occurrence of `address` (in any ASCII case) as `<recipient>`.
fn redacted(text: &str, address: &str) -> String {
    if address.is_empty() {
        return text.to_string();
    }
    let (lower, needle) = (text.to_ascii_lowercase(), address.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(i) = lower[at..].find(&needle) {
        out.push_str(&text[at..at + i]);
        out.push_str("<recipient>");
        at += i + needle.len();
    }
    out.push_str(&text[at..]);
    out
}

/// Whether `whom` has the notice's message already, at any of their addresses (a place whose
/// owner the message does not say counts as anyone's).
fn has(notice: &Notice, rendered: &Rendered, whom: Option<Whom>) -> bool {
    notice.delivered.iter().any(|p| {
        let owner = rendered.whose(*p);
        owner.is_none() || whom.is_none() || owner == whom
    })
}

/// Who the recipients at `places` are: the patient's address, the delegate's, or both (for a
/// message that does not say whose, by place alone: `refused_recipients`).
fn recipients_named(places: &[u8], rendered: &Rendered) -> String {
    let whose: Option<Vec<Whom>> = places.iter().map(|p| rendered.whose(*p)).collect();
    let Some(whose) = whose else {
        return refused_recipients(places, rendered.to.len()).into();
    };
    match (
        whose.contains(&Whom::Patient),
        whose.contains(&Whom::Delegate),
    ) {
        (true, true) => "the patient's and the delegate's addresses",
        (true, false) => "the patient's address",
        (false, true) => "the delegate's address",
        (false, false) => "no address",
    }
    .into()
}

/// How many addresses a notice's message may be sent to in all: its first recipients and those
/// the directory named since (each change of address one more).
const PLACES_MAX: usize = 8;

/// Who of a notice's `count` recipients are at `places` (with two, the patient's first, then
/// the delegate's, as a message made before it said whose), in words.
fn refused_recipients(places: &[u8], count: usize) -> &'static str {
    if count < 2 {
        return "the recipient's address";
    }
    match (places.contains(&0), places.iter().any(|p| *p > 0)) {
        (true, true) => "the patient's and the delegate's addresses",
        (true, false) => "the patient's address",
        _ => "the delegate's address",
    }
}

/// How many recipients a notice has at most: the patient and their delegate
/// (`message::recipients`), each sent to alone, each send within one SMTP timeout: an attempt
/// ends within that many, and the notice's lease is one more (at least).
const RECIPIENTS_MAX: u64 = 2;

/// With replicas, how long another replica waits after an attempt started without a recorded
/// outcome before it sends the message again: ten `data.lease_ms`, and at least twice the
/// notice's lease in SMTP timeouts (`RECIPIENTS_MAX` sends and one more), so that an
/// attempt's sends and its record (again under the lease taken anew if it lapsed meanwhile)
/// come well before it whatever the two settings are.
fn takeover_secs(data_lease_ms: u64, smtp_timeout_secs: u64) -> u64 {
    (10 * data_lease_ms)
        .div_ceil(1000)
        .max(2 * (RECIPIENTS_MAX + 1) * smtp_timeout_secs)
}

/// The lease a replica holds while it works on the notice of access `id` (`coordination`).
fn lease_name(id: &AccessId) -> String {
    format!("notice:{id}")
}

/// Whether `e` is the store's refusal of a write whose lease lapsed (or another replica holds
/// now).
fn fenced(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::store::StoreError>(),
        Some(crate::store::StoreError::Guarded(
            crate::store::Guarded::Fenced
        ))
    )
}

/// Seals every stored notice message that is not sealed with the current data key again with
/// it (after `keys rotate-data`, with `patients rekey`). Returns how many were re-sealed.
pub async fn rekey_messages(store: &Arc<dyn Store>, keyring: &Keyring) -> anyhow::Result<usize> {
    let mut notices = Vec::new();
    for mut notice in store.notices()? {
        let Some(message) = &notice.message else {
            continue;
        };
        let name = crate::seal::names::notice(&notice.access_id);
        if let Some(sealed) = keyring.reseal(&name, &hex::decode(message)?)? {
            notice.message = Some(hex::encode(sealed));
            notices.push(notice);
        }
    }
    let n = notices.len();
    apply_async(
        store,
        Batch {
            notices,
            ..Batch::default()
        },
    )
    .await?;
    Ok(n)
}

enum Prepared {
    /// Rendered and stored: send it.
    Ready(Box<Notice>),
    /// Not on chain yet.
    Waiting,
    /// Nothing to send (no contact).
    Closed,
}

#[cfg(test)]
mod tests {
    /// A server's reply quoting the address in another case is redacted all the same (it was
    /// kept, unsealed, in the notice's error and logged).
    #[test]
    fn an_address_quoted_in_any_case_is_redacted() {
        let reply = "550 5.1.1 <Ana.Perez@Example.org>: no mailbox; ana.perez@example.org unknown";
        assert_eq!(
            super::redacted(reply, "ana.perez@example.org"),
            "550 5.1.1 <<recipient>>: no mailbox; <recipient> unknown"
        );
        assert_eq!(super::redacted("café ü", "x@y"), "café ü");
    }

    /// A contact that does not decode is said without what serde would quote of it.
    #[test]
    fn a_contact_that_does_not_decode_is_not_quoted() {
        let e = serde_json::from_slice::<crate::domain::Contact>(
            br#"{"name": 7, "email": "ana@example.org"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains('7'), "serde quotes it: {e}");
        let said = super::undecodable("the patient's contact", &e).to_string();
        assert!(
            said.starts_with("the patient's contact does not decode (Data at line 1"),
            "{said}"
        );
        let e =
            serde_json::from_slice::<crate::domain::Contact>(br#"{"email": ["ana@example.org"]}"#)
                .unwrap_err();
        assert!(!super::undecodable("x", &e).to_string().contains("ana"));
    }

    /// A message says whose each address is; one made before it did is read by place (one
    /// address: the patient's; two: the patient's, then the delegate's), and one address that
    /// is both the patient's and the delegate's is one recipient.
    #[test]
    fn whose_each_address_is() {
        use message::{recipients, Whom};
        let with = |to: &[&str], whose: Vec<Whom>| Rendered {
            from: "p@h.example".into(),
            to: to.iter().map(|a| a.to_string()).collect(),
            whose,
            message_id: "<x@h.example>".into(),
            raw: vec![],
        };
        let old: Rendered = serde_json::from_str(
            r#"{"from": "p@h.example", "to": ["a@x", "d@x"], "message_id": "<x@h.example>", "raw": ""}"#,
        )
        .unwrap();
        assert_eq!(
            (old.whose(0), old.whose(1)),
            (Some(Whom::Patient), Some(Whom::Delegate))
        );
        assert_eq!(with(&["a@x"], vec![]).whose(0), Some(Whom::Patient));
        let later = with(
            &["d@x", "a2@x", "a3@x"],
            vec![Whom::Delegate, Whom::Patient, Whom::Patient],
        );
        assert_eq!(later.whose(0), Some(Whom::Delegate));
        assert_eq!(recipients_named(&[1, 2], &later), "the patient's address");
        assert_eq!(
            recipients_named(&[0, 2], &later),
            "the patient's and the delegate's addresses"
        );
        assert_eq!(with(&["a@x", "b@x", "c@x"], vec![]).whose(2), None);
        let both = Contact {
            name: None,
            email: Some("Ana@Example.org".into()),
            language: Language::En,
            delegate: Some(crate::domain::Delegate {
                name: None,
                relationship: None,
                email: "ana@example.org".into(),
            }),
            emails: Vec::new(),
            delegates: Vec::new(),
        };
        assert_eq!(recipients(&both), vec![("Ana@Example.org", Whom::Patient)]);
    }

    #[test]
    fn who_refused_a_notice_is_said_by_their_place() {
        use super::refused_recipients as who;
        assert_eq!(who(&[0], 2), "the patient's address");
        assert_eq!(who(&[1], 2), "the delegate's address");
        assert_eq!(
            who(&[0, 1], 2),
            "the patient's and the delegate's addresses"
        );
        assert_eq!(who(&[0], 1), "the recipient's address");
    }
    use super::*;
    use crate::domain::Language;
    use crate::domain::{DataType, PatientId};
    use crate::store::AccessRecord;

    fn access(data_types: Vec<DataType>) -> AccessRecord {
        crate::dev::test_access(0xab, data_types)
    }

    #[test]
    fn a_notice_is_due_when_the_window_closes_or_at_once_for_immediate_types() {
        let mut s = Settings::default().notify;
        s.immediate_data_types = vec![DataType::AdvanceDirectives];
        let later = notice_for(&s, &access(vec![DataType::Allergies]));
        assert_eq!((later.due_at, later.next_at), (1_600, 1_600));
        let now = notice_for(
            &s,
            &access(vec![DataType::Allergies, DataType::AdvanceDirectives]),
        );
        assert_eq!(now.due_at, 1_000);
        assert_eq!(now.state, NoticeState::Pending);
        // the emergency summary opens advance directives as one of its sections
        let summary = notice_for(&s, &access(vec![DataType::EmergencySummary]));
        assert_eq!(summary.due_at, 1_000);
    }

    /// A notice's message for access `access(Allergies)`.
    fn rendered(settings: &Settings) -> Rendered {
        rendered_in(
            settings,
            Language::En,
            None,
            &Proof::Transaction("0xfeed".into()),
        )
    }

    fn rendered_in(
        settings: &Settings,
        language: Language,
        explorer_tx_url: Option<&str>,
        proof: &Proof,
    ) -> Rendered {
        rendered_opened(settings, language, explorer_tx_url, proof, None)
    }

    /// `rendered_in`, for a notice opened again at `reopened`, if given.
    fn rendered_opened(
        settings: &Settings,
        language: Language,
        explorer_tx_url: Option<&str>,
        proof: &Proof,
        reopened: Option<u64>,
    ) -> Rendered {
        let contact = Contact {
            name: None,
            email: Some("ana@example.org".into()),
            language,
            delegate: None,
            emails: Vec::new(),
            delegates: Vec::new(),
        };
        message::render(
            &Templates::new().unwrap(),
            &NoticeSettings {
                from: &settings.notify.from,
                explorer_tx_url,
                contest: "call us",
                reopened,
            },
            &access(vec![DataType::Allergies]),
            "unresponsive",
            None,
            &contact,
            proof,
        )
        .unwrap()
    }

    /// The notice says how the access is on chain: by its transaction (with the explorer's
    /// link), under its access id when the chain had the record already, when the contract
    /// refused the record, that it could not be recorded, or, when the chain has not taken it
    /// in `notify.chain_wait_hours`, that it is not confirmed yet, in both languages and both parts. Before, the last two said "recorded … in transaction -", linking to `…/-`.
    #[test]
    fn the_notice_says_how_the_access_is_on_chain_or_that_it_is_not() {
        let settings = Settings::default();
        let explorer = "https://explorer.example/txid/{txid}";
        let parts = |language, proof: &Proof| -> Vec<String> {
            let raw = rendered_in(&settings, language, Some(explorer), proof).raw;
            let mail = mailparse::parse_mail(&raw).unwrap();
            let parts: Vec<String> = mail
                .subparts
                .iter()
                .map(|p| p.get_body().unwrap())
                .collect();
            assert_eq!(parts.len(), 2, "text and html");
            parts
        };
        let cases = [
            (
                Language::En,
                "recorded on the Stacks blockchain in transaction",
                "recorded on the Stacks blockchain under the access id above",
                "could not be recorded on the Stacks blockchain",
                "is not confirmed yet",
            ),
            (
                Language::Es,
                "registrado en la cadena de bloques Stacks en la transacción",
                "registrado en la cadena de bloques Stacks con el id. de acceso indicado arriba",
                "no pudo registrarse en la cadena de bloques Stacks",
                "aún no está confirmado",
            ),
        ];
        for (language, by_tx, by_id, not_recorded, pending) in cases {
            for part in parts(language, &Proof::Pending) {
                assert!(part.contains(pending), "{part}");
                for other in [by_tx, by_id, not_recorded, "explorer.example"] {
                    assert!(!part.contains(other), "{part}");
                }
            }
            for part in parts(language, &Proof::Transaction("0xfeed".into())) {
                assert!(part.contains(by_tx) && part.contains("0xfeed"), "{part}");
                // (the html part escapes the link's slashes)
                let link = part.replace("&#x2f;", "/");
                assert!(
                    link.contains("https://explorer.example/txid/0xfeed"),
                    "{part}"
                );
                assert!(!part.contains(not_recorded), "{part}");
            }
            for part in parts(language, &Proof::AccessId) {
                assert!(part.contains(by_id), "{part}");
                assert!(
                    !part.contains(by_tx) && !part.contains(not_recorded),
                    "{part}"
                );
                assert!(!part.contains("explorer.example"), "{part}");
            }
            for part in parts(language, &Proof::NotRecorded) {
                assert!(part.contains(not_recorded), "{part}");
                assert!(!part.contains(by_tx) && !part.contains(by_id), "{part}");
                assert!(!part.contains("explorer.example"), "{part}");
            }
        }
    }

    /// A notice that comes late (nobody could be told at first; the patient's contact was
    /// imported since) says why, in both languages and both parts; one on time does not.
    #[test]
    fn a_late_notice_says_why_it_is_late() {
        let settings = Settings::default();
        for (language, why) in [
            (Language::En, "We could not reach you when it happened"),
            (Language::Es, "No pudimos contactarle cuando ocurrió"),
        ] {
            for late in [true, false] {
                let raw = rendered_opened(
                    &settings,
                    language,
                    None,
                    &Proof::AccessId,
                    late.then_some(1_700_000_000),
                )
                .raw;
                let mail = mailparse::parse_mail(&raw).unwrap();
                for part in &mail.subparts {
                    let body = part.get_body().unwrap();
                    assert_eq!(body.contains(why), late, "{body}");
                }
                // a message of its own: its own Message-ID
                let id = String::from_utf8_lossy(&raw).contains(".1700000000@");
                assert_eq!(id, late);
            }
        }
    }

    /// The messages the development transport wrote into `dir`.
    fn outbox(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.join("outbox"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_development_transport_writes_the_message_into_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::default();
        let mailer = Mailer::from_settings(&settings.notify, dir.path()).unwrap();
        let rendered = rendered(&settings);
        let to: Vec<&str> = rendered.to.iter().map(String::as_str).collect();
        mailer.send(&rendered, &to).await.unwrap();
        let files = outbox(dir.path());
        assert_eq!(files.len(), 1);
        // the stored bytes, behind the recipient's own `To:`
        let mut expected = format!("To: {}\r\n", to.join(", ")).into_bytes();
        expected.extend_from_slice(&rendered.raw);
        assert_eq!(std::fs::read(&files[0]).unwrap(), expected);
        assert!(String::from_utf8_lossy(&rendered.raw).contains("0xfeed"));
    }

    /// A notifier of one replica on a Redis of its own (killed when dropped), and a notice
    /// ready to send (its message rendered and sealed), due now, in its store.
    struct OnRedis {
        redis: crate::dev::TestRedis,
        store: Arc<dyn Store>,
        coordination: Arc<Coordinator>,
        settings: Settings,
        notifier: Notifier,
        notice: Notice,
    }

    async fn on_redis() -> OnRedis {
        on_redis_with(true).await
    }

    /// As `on_redis`; with `shared` false, the notifier coordinates in its own memory, as one
    /// process on the embedded store does (no rescans of other replicas' notices).
    async fn on_redis_with(shared: bool) -> OnRedis {
        let redis = crate::dev::test_redis().await;
        let url = redis.url.as_str();
        let store: Arc<dyn Store> = Arc::new(crate::store::RedisStore::open(url, "t:").unwrap());
        let coordination = Arc::new(if shared {
            Coordinator::redis(url, "t:", 10).unwrap()
        } else {
            Coordinator::local(10)
        });
        let mut settings = Settings::default();
        settings.data.dir = redis.dir.path().join("data");
        let keyring = Arc::new(Keyring::from_keys(&[[7; 32]]).unwrap());
        let notifier = Notifier::new(
            &settings,
            store.clone(),
            keyring.clone(),
            coordination.clone(),
        )
        .unwrap();
        let id = access(vec![DataType::Allergies]).id;
        let rendered = rendered(&settings);
        let mut notice = Notice::new(id, PatientId([7; 32]), now_secs());
        notice.message_id = Some(rendered.message_id.clone());
        notice.message = Some(hex::encode(
            keyring
                .seal(
                    &crate::seal::names::notice(&id),
                    &serde_json::to_vec(&rendered).unwrap(),
                )
                .unwrap(),
        ));
        apply_async(
            &store,
            Batch {
                notices: vec![notice.clone()],
                ..Batch::default()
            },
        )
        .await
        .expect("the notice is written");
        OnRedis {
            redis,
            store,
            coordination,
            settings,
            notifier,
            notice,
        }
    }

    /// One process (no rescans): the open notices could not be read at start (the store did
    /// not answer), and are read again until they are, then sent. Before, they waited for
    /// the next start.
    #[tokio::test]
    async fn open_notices_that_could_not_be_read_at_start_are_read_again() {
        let t = on_redis_with(false).await;
        t.redis.signal("STOP");
        let notifier = Arc::new(t.notifier);
        let (_announce, new) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(notifier.clone().run(new, shutdown));
        // the start's read gives up on the server within seconds
        tokio::time::sleep(Duration::from_secs(6)).await;
        t.redis.signal("CONT");
        let mut sent = false;
        for _ in 0..150 {
            if !outbox(&t.settings.data.dir).is_empty() {
                sent = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.send(true).unwrap();
        run.await.unwrap();
        assert!(sent, "the notice was read again and sent");
    }

    /// A notice closed with nobody to tell is opened again once its patient has a contact
    /// (imported later), due at once, by one replica: under the notice's lease (another
    /// replica holding it leaves it to the next check) and only while the store has it closed
    /// so (a second replica's check opens nothing). Before, `no_contact` was final: a patient
    /// whose contact came later was never told.
    #[tokio::test]
    async fn a_notice_with_nobody_to_tell_is_opened_once_its_patient_has_a_contact() {
        let t = on_redis().await;
        let (store, notifier) = (&t.store, &t.notifier);
        let id = t.notice.access_id;
        let mut closed = t.notice.clone();
        closed.state = NoticeState::NoContact { at: 1 };
        let write = |batch| apply_async(store, batch);
        write(Batch {
            notices: vec![closed.clone()],
            ..Batch::default()
        })
        .await
        .unwrap();
        let now = now_secs();
        assert!(
            notifier.reopen_reachable(now).await.is_empty(),
            "no contact yet"
        );
        // a contact whose only address was given up since: nobody to tell still (opened, it
        // would close again, and open again at every check)
        contact_written(&t, &ana(&["2020-01-01"])).await;
        assert!(
            notifier.reopen_reachable(now).await.is_empty(),
            "nobody reached"
        );
        contact_written(&t, &ana(&[])).await;
        let lease = lease_name(&id);
        t.coordination
            .lease(&lease, "another-replica", 60_000)
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(
            notifier.reopen_reachable(now).await.is_empty(),
            "another holds it"
        );
        assert_eq!(store.notice(&id).unwrap(), Some(closed.clone()));
        t.coordination
            .release(&lease, "another-replica")
            .await
            .unwrap();
        // this replica's own loop holds it (a lease is its holder's again when taken twice):
        // the check leaves the notice alone, and does not let go of the loop's lease
        t.coordination
            .lease(&lease, &notifier.holder, 60_000)
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(notifier.reopen_reachable(now).await.is_empty());
        assert!(
            t.coordination
                .lease(&lease, "another-replica", 60_000)
                .await
                .unwrap()
                .is_none(),
            "the loop's lease is still held"
        );
        t.coordination
            .release(&lease, &notifier.holder)
            .await
            .unwrap();
        assert_eq!(notifier.reopen_reachable(now).await, vec![(now, id)]);
        let opened = store.notice(&id).unwrap().unwrap();
        assert!(opened.is_open());
        assert_eq!((opened.reopened, opened.next_at), (Some(now), now));
        assert!(store.uncontacted().unwrap().is_empty());
        let other = Notifier::new(
            &t.settings,
            store.clone(),
            notifier.keyring.clone(),
            t.coordination.clone(),
        )
        .unwrap();
        assert!(other.reopen_reachable(now + 1).await.is_empty());
        assert_eq!(store.notice(&id).unwrap(), Some(opened.clone()));
        // a replica that read the index before the first opened it (and sent it since) opens
        // nothing under the lease: the store no longer has it closed so
        let mut sent = opened;
        sent.state = NoticeState::Sent { at: now };
        write(Batch {
            notices: vec![sent.clone()],
            ..Batch::default()
        })
        .await
        .unwrap();
        assert!(!other.reopen(&id, now + 2).await);
        assert_eq!(store.notice(&id).unwrap(), Some(sent.clone()));
        // an index built while it was opened names it still: the check takes it out (a write
        // of it as it is), and logs nothing
        let mut conn = t.redis.connection();
        let () = redis::cmd("HSET")
            .arg("t:uncontacted_notices")
            .arg(id.to_string())
            .arg(closed.patient.to_string())
            .query(&mut conn)
            .unwrap();
        assert_eq!(store.uncontacted().unwrap(), vec![(id, closed.patient)]);
        let head = store.audit_head().unwrap();
        assert!(other.reopen_reachable(now + 3).await.is_empty());
        assert!(store.uncontacted().unwrap().is_empty());
        assert_eq!(store.notice(&id).unwrap(), Some(sent));
        assert_eq!(store.audit_head().unwrap(), head);
    }

    /// Replicas on Redis: a replica that took a notice's lease, then was paused past it (a
    /// long GC or VM pause) while another replica took the lease (and may have sent the
    /// notice), neither writes the notice nor sends it when it resumes: its writes go with
    /// its lease's token, which is no longer the lease's. Before they did, it marked the notice
    /// as being sent over the other replica's record and sent it a second time.
    #[tokio::test]
    async fn a_replica_paused_past_a_notices_lease_neither_writes_nor_sends_it() {
        let t = on_redis().await;
        let (store, coordination, notifier) = (&t.store, &t.coordination, &t.notifier);
        let (id, now, notice) = (t.notice.access_id, t.notice.due_at, t.notice.clone());
        let lease = lease_name(&id);
        // this replica took the lease; paused past it, another replica took it
        let stale = coordination
            .lease(&lease, &notifier.holder, 1)
            .await
            .unwrap()
            .expect("the lease is free");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken = coordination
            .lease(&lease, "another-replica", 60_000)
            .await
            .unwrap()
            .expect("the lease lapsed");
        assert!(taken > stale);
        // this replica resumes its step
        let fence = crate::store::Fence {
            lease,
            holder: notifier.holder.clone(),
            token: stale,
        };
        let next = notifier.step_held(&id, now, Some(&fence)).await;
        assert!(
            next.is_some(),
            "looked at again later, the notice still open"
        );
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent");
        assert_eq!(
            store.notice(&id).unwrap(),
            Some(notice.clone()),
            "not written: no attempt, not marked as being sent"
        );
        // nor does it record an outcome over the other replica's (one it had sent before the
        // pause): the outcome and its audit entry go with the lease's old token too
        let audit_before = store.audit_head().unwrap();
        let mut sent = notice.clone();
        sent.state = NoticeState::Sent { at: now };
        sent.attempts = 1;
        notifier.record(sent, now, Some(&fence)).await;
        assert_eq!(
            store.notice(&id).unwrap(),
            Some(notice),
            "its outcome not recorded over the lease's new holder's"
        );
        assert_eq!(
            store.audit_head().unwrap(),
            audit_before,
            "no audit entry for it"
        );
    }

    /// Replicas on Redis: an attempt sent whose outcome the store did not take (Redis away a
    /// moment) is recorded at the notice's next turn under its lease taken anew, not sent
    /// again. Before, it was recorded with the attempt's own lease, let go meanwhile: the
    /// record was refused as fenced, and another replica sent the notice again after the
    /// takeover period. And once another replica has made an attempt of its own since, that
    /// replica's record stands.
    #[tokio::test]
    async fn an_attempt_not_recorded_is_recorded_under_the_lease_taken_again_and_not_sent_again() {
        let t = on_redis().await;
        let (store, coordination, notifier) = (&t.store, &t.coordination, &t.notifier);
        let (id, now) = (t.notice.access_id, t.notice.due_at);
        let lease = lease_name(&id);
        let (sending, _) = in_flight(&t).await;
        let write = |n: Notice| {
            apply_async(
                store,
                Batch {
                    notices: vec![n],
                    ..Batch::default()
                },
            )
        };
        // sent; its outcome kept in memory, the store having refused it
        let sent = sent(&sending, now);
        notifier.unrecorded_lock().insert(id, sent.clone());
        let audit_before = store.audit_head().unwrap();
        let mut due = BTreeSet::from([(now, id)]);
        notifier.round(&mut due).await;
        assert_eq!(store.notice(&id).unwrap(), Some(sent.clone()), "recorded");
        assert_ne!(
            store.audit_head().unwrap(),
            audit_before,
            "with its audit entry"
        );
        assert!(due.is_empty(), "closed");
        assert!(notifier.unrecorded_lock().is_empty());
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent again");
        assert!(
            coordination
                .lease(&lease, "another-replica", 1_000)
                .await
                .unwrap()
                .is_some(),
            "its lease let go"
        );

        // another replica took it over since and made an attempt of its own: that one stands
        let mut theirs = sending.clone();
        theirs.attempts = 2;
        write(theirs.clone()).await.unwrap();
        coordination
            .release(&lease, "another-replica")
            .await
            .unwrap();
        notifier.unrecorded_lock().insert(id, sent);
        let mut due = BTreeSet::from([(now, id)]);
        notifier.round(&mut due).await;
        assert_eq!(store.notice(&id).unwrap(), Some(theirs), "theirs stands");
        assert!(notifier.unrecorded_lock().is_empty(), "ours dropped");
        assert_eq!(due.len(), 1, "looked at again, still open");
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent");
    }

    /// Replicas on Redis: an attempt sent whose outcome the store did not take is recorded when
    /// the process stops (a rolling restart), though the notice is not due yet: another replica
    /// does not find it in flight and send it again after the takeover period. Before, the
    /// outcome kept in memory went with the process.
    #[tokio::test]
    async fn an_outcome_kept_in_memory_is_recorded_at_a_stop() {
        let t = on_redis().await;
        let id = t.notice.access_id;
        let (mut sending, _) = in_flight(&t).await;
        // not looked at again before the stop (its retry an hour away)
        sending.next_at = now_secs() + 3600;
        written(&t.store, &sending).await;
        let sent = sent(&sending, sending.due_at);
        t.notifier.unrecorded_lock().insert(id, sent.clone());
        let notifier = Arc::new(t.notifier);
        let (_announce, new) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(notifier.clone().run(new, shutdown));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            t.store.notice(&id).unwrap(),
            Some(sending),
            "not due: untouched"
        );
        stop.send(true).unwrap();
        run.await.unwrap();
        assert_eq!(
            t.store.notice(&id).unwrap(),
            Some(sent),
            "recorded at the stop"
        );
        assert!(notifier.unrecorded_lock().is_empty());
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent again");
    }

    /// Replicas on Redis: another replica's attempt in flight whose `sending_since` was
    /// written by a clock far behind this replica's (or this one's far ahead) is left to its
    /// sender for the takeover period timed from when this replica first sees it, on its own
    /// clock; then it is sent again, once. Before, the period was timed from `sending_since`,
    /// and the message went out again at once, while its sender may still have been sending.
    #[tokio::test]
    async fn another_replicas_attempt_in_flight_is_timed_on_this_replicas_clock() {
        let mut t = on_redis().await;
        t.notifier.takeover_secs = 1;
        let (id, now) = (t.notice.access_id, t.notice.due_at);
        let (mut sending, _) = in_flight(&t).await;
        sending.sending_since = Some(now - 3_600);
        written(&t.store, &sending).await;
        let next = t.notifier.step(&id, now).await;
        assert_eq!(next, Some(now + 1), "left to its sender for the period");
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent at once");
        assert_eq!(t.store.notice(&id).unwrap(), Some(sending));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        t.notifier.step(&id, now_secs()).await;
        assert_eq!(
            outbox(&t.settings.data.dir).len(),
            1,
            "sent again once the period passed on this replica's clock"
        );
        let after = t.store.notice(&id).unwrap().unwrap();
        assert_eq!(after.attempts, 2);
        assert!(matches!(after.state, NoticeState::Sent { .. }), "{after:?}");
    }

    /// Writes `n` to `store` as it is.
    /// A message of one address made before it said whose, the delegate's (a contact with a
    /// delegate and no email of the patient's), delivered there: once the patient's address is
    /// in the directory, it is added (before, the one address read as the patient's, who then
    /// counted as told, and was never sent to).
    #[tokio::test]
    async fn a_delegates_copy_made_before_whose_is_not_taken_for_the_patients() {
        let t = on_redis().await;
        let contact = |email: Option<&str>| Contact {
            name: None,
            email: email.map(str::to_string),
            language: Language::En,
            delegate: Some(crate::domain::Delegate {
                name: None,
                relationship: None,
                email: "guardian@example.org".into(),
            }),
            emails: Vec::new(),
            delegates: Vec::new(),
        };
        let mut rendered = rendered(&t.settings);
        rendered.to = vec!["guardian@example.org".into()];
        rendered.whose = vec![];
        let mut notice = t.notice.clone();
        notice.delivered = vec![0];
        contact_written(&t, &contact(Some("ana@example.org"))).await;
        t.notifier
            .follow_directory(&mut notice, &mut rendered)
            .unwrap()
            .expect("the contact is read");
        assert_eq!(rendered.to, vec!["guardian@example.org", "ana@example.org"]);
        assert_eq!(
            rendered.whose,
            vec![message::Whom::Delegate, message::Whom::Patient]
        );
        assert!(notice.waits_on(1) && !notice.waits_on(0));
    }

    /// A notice made for an address the directory no longer names (given up since), with
    /// nobody else to tell, is closed with nobody to tell (and indexed, to go out once a
    /// contact reaches someone), not dead-lettered as if refused.
    #[tokio::test]
    async fn a_notice_whose_every_address_ended_has_nobody_to_tell() {
        let t = on_redis().await;
        let id = t.notice.access_id;
        contact_written(&t, &ana(&["2020-01-01"])).await;
        let next = t.notifier.step_held(&id, now_secs(), None).await;
        assert_eq!(next, None, "closed");
        let closed = t.store.notice(&id).unwrap().unwrap();
        assert!(
            matches!(closed.state, NoticeState::NoContact { .. }),
            "{closed:?}"
        );
        assert_eq!(t.store.uncontacted().unwrap(), vec![(id, t.notice.patient)]);
        assert!(outbox(&t.settings.data.dir).is_empty());
        // once an address holds again it is opened and made again: for that address, saying it
        // comes late, its retry period from now (the attempt that closed it set its first)
        assert!(closed.first_attempt_at.is_some() && closed.message.is_some());
        contact_written(&t, &ana(&[])).await;
        let now = now_secs();
        assert_eq!(t.notifier.reopen_reachable(now).await, vec![(now, id)]);
        let opened = t.store.notice(&id).unwrap().unwrap();
        assert!(opened.is_open());
        assert_eq!(
            (opened.first_attempt_at, &opened.message, &opened.withdrawn),
            (None, &None, &vec![])
        );
        assert_eq!(t.notifier.stuck(opened, now, None).await, Some(now + 5));
    }

    /// A notice whose delegate's mailbox refused it for good, and whose patient the directory
    /// no longer names (an address given up since), has nobody to tell, not everybody refusing
    /// it: it closes so (and goes out once the patient's new address is imported), not dead
    /// as "every recipient refused it".
    #[tokio::test]
    async fn a_notice_refused_by_its_delegate_alone_waits_for_the_patient() {
        let t = on_redis().await;
        let id = t.notice.access_id;
        let mut rendered = rendered(&t.settings);
        rendered.to = vec!["ana@example.org".into(), "guardian@example.org".into()];
        rendered.whose = vec![message::Whom::Patient, message::Whom::Delegate];
        let mut notice = t.notice.clone();
        notice.message = Some(hex::encode(
            t.notifier
                .keyring
                .seal(
                    &crate::seal::names::notice(&id),
                    &serde_json::to_vec(&rendered).unwrap(),
                )
                .unwrap(),
        ));
        notice.refused = vec![1];
        notice.attempts = 1;
        notice.first_attempt_at = Some(now_secs());
        written(&t.store, &notice).await;
        contact_written(&t, &ana(&["2020-01-01"])).await;
        assert_eq!(t.notifier.step_held(&id, now_secs(), None).await, None);
        let closed = t.store.notice(&id).unwrap().unwrap();
        assert!(
            matches!(closed.state, NoticeState::NoContact { .. }),
            "{closed:?}"
        );
        assert_eq!(t.store.uncontacted().unwrap(), vec![(id, t.notice.patient)]);
    }

    /// A notice of an old access opened again (its patient's contact imported since) that
    /// cannot be prepared at once (a read that failed) is tried again, not dead-lettered: its
    /// retry period runs from when it was opened, not from when it was due months ago.
    #[tokio::test]
    async fn a_notice_opened_again_is_not_dead_lettered_by_its_first_failure() {
        let t = on_redis().await;
        let now = now_secs();
        let mut notice = t.notice.clone();
        notice.due_at = now - 90 * 24 * 3600;
        notice.next_at = now;
        notice.reopened = Some(now);
        assert_eq!(
            t.notifier.stuck(notice.clone(), now, None).await,
            Some(now + 5)
        );
        assert!(t
            .store
            .notice(&notice.access_id)
            .unwrap()
            .unwrap()
            .is_open());
        // one never closed, due as long ago: past its retry period, dead-lettered
        notice.reopened = None;
        assert_eq!(t.notifier.stuck(notice.clone(), now, None).await, None);
        assert!(matches!(
            t.store.notice(&notice.access_id).unwrap().unwrap().state,
            NoticeState::Dead { .. }
        ));
    }

    /// A notice another replica tried since this one learnt it was due, and put off (its
    /// attempt failed, its retry set for later), is not tried again before then: each replica's
    /// stale due time cut the backoff against a failing relay by as many replicas.
    #[tokio::test]
    async fn a_notice_put_off_by_another_replica_is_not_tried_before_its_time() {
        let t = on_redis().await;
        let now = now_secs();
        let notice = put_off(&t, now, now + 600).await;
        // this replica's due set still says it is due now
        assert_eq!(
            t.notifier.step(&notice.access_id, now).await,
            Some(now + 600)
        );
        let stored = t.store.notice(&notice.access_id).unwrap().unwrap();
        assert!(stored.is_open(), "{:?}", stored.state);
        assert_eq!(stored.attempts, 1, "not tried again");
        // put off beyond any backoff (by a replica whose clock runs ahead): not waited for
        put_off(&t, now, now + t.settings.notify.retry_max_secs + 600).await;
        assert_eq!(t.notifier.step(&notice.access_id, now).await, None);
        assert_sent(&t, &notice.access_id);
    }

    /// `t`'s notice as another replica leaves it after a failed attempt at `now`: to be tried
    /// again at `next_at`.
    async fn put_off(t: &OnRedis, now: u64, next_at: u64) -> Notice {
        let mut notice = t.notice.clone();
        notice.attempts = 1;
        notice.first_attempt_at = Some(now - 60);
        notice.next_at = next_at;
        notice.last_error = Some("451 try again later".into());
        apply_async(
            &t.store,
            Batch {
                notices: vec![notice.clone()],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
        notice
    }

    fn assert_sent(t: &OnRedis, id: &AccessId) {
        let stored = t.store.notice(id).unwrap().unwrap();
        assert!(
            matches!(stored.state, NoticeState::Sent { .. }),
            "{:?}",
            stored.state
        );
    }

    /// As above, at its time: sent.
    #[tokio::test]
    async fn a_notice_put_off_by_another_replica_is_tried_at_its_time() {
        let t = on_redis().await;
        let now = now_secs();
        let notice = put_off(&t, now, now + 600).await;
        assert_eq!(t.notifier.step(&notice.access_id, now + 600).await, None);
        assert_sent(&t, &notice.access_id);
    }

    /// A delegate whose period ended after the directory was imported (a guardianship ended)
    /// is not sent a notice's retry, and the contact named next in their place is: who is told
    /// is judged when the notice goes, from the periods the import kept.
    #[tokio::test]
    async fn a_delegate_whose_period_ended_since_the_import_is_not_told() {
        let t = on_redis().await;
        let delegate = |email: &str, relationship: &str| crate::domain::Delegate {
            name: None,
            relationship: Some(relationship.into()),
            email: email.into(),
        };
        fn dated<T>(value: T, until: &[&str]) -> crate::domain::Dated<T> {
            crate::domain::Dated {
                value,
                from: Vec::new(),
                until: until.iter().map(|u| u.to_string()).collect(),
            }
        }
        // as imported in 2019: the guardian then, until the end of 2020
        let contact = Contact {
            name: None,
            email: Some("ana@example.org".into()),
            language: Language::En,
            delegate: Some(delegate("guardian@example.org", "guardian")),
            emails: vec![dated("ana@example.org".to_string(), &[])],
            delegates: vec![
                dated(
                    delegate("guardian@example.org", "guardian"),
                    &["2020-12-31"],
                ),
                dated(delegate("kin@example.org", "next of kin"), &[]),
            ],
        };
        let mut notice = t.notice.clone();
        contact_written(&t, &contact).await;
        let mut rendered = rendered(&t.settings);
        rendered.to = vec!["ana@example.org".into(), "guardian@example.org".into()];
        rendered.whose = vec![message::Whom::Patient, message::Whom::Delegate];
        let now = t
            .notifier
            .follow_directory(&mut notice, &mut rendered)
            .unwrap()
            .expect("the contact is read");
        assert_eq!(
            now.delegate.map(|d| d.email).as_deref(),
            Some("kin@example.org")
        );
        assert_eq!(
            rendered.to,
            vec!["ana@example.org", "guardian@example.org", "kin@example.org"]
        );
        assert!(notice.waits_on(0) && !notice.waits_on(1) && notice.waits_on(2));
    }

    /// Ana's contact: her address alone, held until the ends `until` (none: for good).
    fn ana(until: &[&str]) -> Contact {
        Contact {
            name: None,
            email: Some("ana@example.org".into()),
            language: Language::En,
            delegate: None,
            emails: vec![crate::domain::Dated {
                value: "ana@example.org".into(),
                from: Vec::new(),
                until: until.iter().map(|u| u.to_string()).collect(),
            }],
            delegates: Vec::new(),
        }
    }

    /// Writes `contact` as `t`'s patient's, sealed as the directory's import seals it.
    async fn contact_written(t: &OnRedis, contact: &Contact) {
        let sealed = t
            .notifier
            .keyring
            .seal(
                &crate::seal::names::contact(&t.notice.patient),
                &serde_json::to_vec(contact).unwrap(),
            )
            .unwrap();
        apply_async(
            &t.store,
            Batch {
                contacts: vec![(t.notice.patient, Some(sealed))],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    }

    async fn written(store: &Arc<dyn Store>, n: &Notice) {
        apply_async(
            store,
            Batch {
                notices: vec![n.clone()],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    }

    /// The attempt of `t`'s notice as it is on record before its message left (attempt 1,
    /// `sending_since`), under the notice's lease since let go (lapsed): the attempt and the
    /// fence it was made under.
    async fn in_flight(t: &OnRedis) -> (Notice, crate::store::Fence) {
        let (id, now) = (t.notice.access_id, t.notice.due_at);
        let lease = lease_name(&id);
        let token = t
            .coordination
            .lease(&lease, &t.notifier.holder, 60_000)
            .await
            .unwrap()
            .expect("the lease is free");
        let mut sending = t.notice.clone();
        sending.attempts = 1;
        sending.first_attempt_at = Some(now);
        sending.sending_since = Some(now);
        written(&t.store, &sending).await;
        t.coordination
            .release(&lease, &t.notifier.holder)
            .await
            .unwrap();
        let fence = crate::store::Fence {
            lease,
            holder: t.notifier.holder.clone(),
            token,
        };
        (sending, fence)
    }

    /// `sending`'s outcome once its message was taken.
    fn sent(sending: &Notice, now: u64) -> Notice {
        let mut sent = sending.clone();
        sent.sending_since = None;
        sent.state = NoticeState::Sent { at: now };
        sent
    }

    /// Replicas on Redis: a message sent while the notice's lease lapsed (a send, or a pause,
    /// longer than the lease) has its outcome refused under that lease; it is kept and recorded
    /// at the notice's next turn under the lease taken anew, not sent again. Before, it was
    /// dropped: the store still showed the attempt in flight, and a replica sent the message a
    /// second time after the takeover period, although this one knew it had been taken.
    #[tokio::test]
    async fn an_outcome_fenced_off_after_its_send_is_recorded_under_the_lease_taken_again() {
        let t = on_redis().await;
        let (store, notifier) = (&t.store, &t.notifier);
        let (id, now) = (t.notice.access_id, t.notice.due_at);
        let (sending, lapsed) = in_flight(&t).await;
        let sent = sent(&sending, now);
        let audit_before = store.audit_head().unwrap();
        let next = notifier.record(sent.clone(), now, Some(&lapsed)).await;
        assert_eq!(next, Some(now + 5), "looked at again in 5 s");
        assert_eq!(
            store.notice(&id).unwrap(),
            Some(sending),
            "nothing written under the lapsed lease"
        );
        assert_eq!(
            notifier.unrecorded_lock().get(&id),
            Some(&sent),
            "its outcome kept"
        );
        let mut due = BTreeSet::from([(now, id)]);
        notifier.round(&mut due).await;
        assert_eq!(store.notice(&id).unwrap(), Some(sent), "recorded");
        assert_ne!(
            store.audit_head().unwrap(),
            audit_before,
            "with its audit entry"
        );
        assert!(due.is_empty(), "closed");
        assert!(outbox(&t.settings.data.dir).is_empty(), "not sent again");
    }

    /// An outcome kept from before the notice closed with nobody to tell and was opened again
    /// (made again, its attempts from 0, under a Message-ID of its own) is not recorded over
    /// the new message's attempt in flight, though their numbers match.
    #[tokio::test]
    async fn an_outcome_kept_from_before_a_notice_was_opened_again_is_not_recorded_over_it() {
        let t = on_redis().await;
        let (store, notifier) = (&t.store, &t.notifier);
        let (id, now) = (t.notice.access_id, t.notice.due_at);
        let (mut sending, lapsed) = in_flight(&t).await;
        let old = sent(&sending, now);
        // the old outcome kept; the notice, meanwhile, closed, opened again and made again
        notifier.record(old, now, Some(&lapsed)).await;
        sending.reopened = Some(now + 1);
        sending.message_id = Some(format!("<{id}.{}@hospital.example>", now + 1));
        written(store, &sending).await;
        let mut due = BTreeSet::from([(now, id)]);
        notifier.round(&mut due).await;
        assert_eq!(
            store.notice(&id).unwrap(),
            Some(sending),
            "not written over"
        );
    }

    /// Replicas on Redis, an SMTP server that accepts the connection and never answers: the
    /// send ends at `notify.smtp.timeout_secs` (the client's own timeout covers its connect
    /// only: before, the send, and the notice's lease with it, was held as long as the
    /// connection lasted), as a transient failure retried later. The attempt goes on record
    /// with its own time, not the round's: a round held up by slow sends before it wrote an
    /// attempt another replica found past its takeover period.
    #[tokio::test]
    async fn a_send_to_a_server_that_never_answers_ends_at_the_smtp_timeout() {
        let t = on_redis().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut settings = t.settings.clone();
        settings.notify.transport = crate::configuration::MailTransport::Smtp;
        settings.notify.smtp.host = "127.0.0.1".into();
        settings.notify.smtp.port = port;
        settings.notify.smtp.tls = crate::configuration::SmtpTls::None;
        settings.notify.smtp.timeout_secs = 1;
        let notifier = Notifier::new(
            &settings,
            t.store.clone(),
            Arc::new(Keyring::from_keys(&[[7; 32]]).unwrap()),
            t.coordination.clone(),
        )
        .unwrap();
        let id = t.notice.access_id;
        let fence = notifier.lease(&id, now_secs()).await.unwrap();
        let started = now_secs();
        let round_began = started - 1_000;
        let step = tokio::time::timeout(
            Duration::from_secs(10),
            notifier.step_held(&id, round_began, fence.as_ref()),
        );
        let attempt = async {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                assert!(std::time::Instant::now() < deadline, "an attempt on record");
                if let Some(n) = t
                    .store
                    .notice(&id)
                    .unwrap()
                    .filter(|n| n.sending_since.is_some())
                {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (next, attempt) = tokio::join!(step, attempt);
        let next = next.expect("the send ended within 10 s");
        assert!(
            attempt.sending_since >= Some(started),
            "the attempt on record with its own time ({:?}), not the round's ({round_began})",
            attempt.sending_since
        );
        let after = t.store.notice(&id).unwrap().unwrap();
        assert_eq!(after.state, NoticeState::Pending, "not sent");
        assert_eq!((after.attempts, after.sending_since), (1, None));
        let error = after.last_error.unwrap_or_default();
        assert!(error.contains("within 1 s"), "{error}");
        let retry = settings.notify.retry_initial_secs;
        assert!(
            after.next_at >= started + retry && next == Some(after.next_at),
            "retried {retry} s after the attempt: {} (next look {next:?})",
            after.next_at
        );
        silent.abort();
    }

    /// Another replica sends a message again only after ten `data.lease_ms` and six SMTP
    /// timeouts (an attempt's sends, one per recipient, end within two): a short lease does not
    /// bring it within reach of an attempt still going.
    #[test]
    fn a_notice_is_taken_over_after_ten_leases_and_six_smtp_timeouts() {
        assert_eq!(takeover_secs(10_000, 15), 100);
        assert_eq!(takeover_secs(200, 15), 90);
        assert_eq!(takeover_secs(1_000, 1), 10);
    }
}

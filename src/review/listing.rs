//! What reviewers see: the queue of accesses (filtered, oldest first, a page at a time, with
//! counts) and one access's whole story (the clinician then and now, the reason, on-call facts,
//! the policies' rules, the window, every use of its token, the chain record, the patient's
//! notice, the verdict and its way to the chain).
//!
//! It must not: show a reason or a note outside the reviewer's view.

use serde::{Deserialize, Serialize};

use super::Review;
use crate::chain::contracts;
use crate::domain::{
    AccessId, DataType, OnCall, PatientId, ProviderEntry, Role, VerdictKind, Verification,
};
use crate::refusal::Refusal;
use crate::stacks::{Address, Value};
use crate::store::{
    AccessRecord, NoticeState, ProviderState, StoreError, Submission, SubmissionState,
};

/// Filters of the queue (`GET /v1/reviews`, `GET /review`): all optional.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Granted at or after (Unix s).
    pub from: Option<u64>,
    /// Granted before (Unix s).
    pub to: Option<u64>,
    pub provider: Option<String>,
    pub role: Option<String>,
    pub patient: Option<String>,
    pub data_type: Option<String>,
    pub verdict: Option<String>,
    /// Only accesses without a verdict.
    pub pending: Option<bool>,
    /// Only accesses granted in degraded mode (a stale view of the chain).
    pub degraded: Option<bool>,
    /// The last access id of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

pub const MAX_PAGE: usize = 200;

/// How many access records the queue reads at once: every access is read for the counts, and
/// one read each (a round trip each on Redis) made a queue of a year's accesses take seconds.
const READ_AT_ONCE: usize = 1_000;

/// Where a chain write stands, for people.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OnChain {
    /// `pending` (not sent yet), `submitted`, `confirmed`, `failed`, or `none`.
    pub state: &'static str,
    pub txid: Option<String>,
    pub height: Option<u64>,
    pub result: Option<String>,
}

impl OnChain {
    /// An access's chain record: made by the grants' follow-up just after the grant, and
    /// pending until then, as it is once made.
    fn record(s: Option<&Submission>) -> OnChain {
        match s {
            None => OnChain {
                state: "pending",
                txid: None,
                height: None,
                result: None,
            },
            made => OnChain::of(made),
        }
    }

    fn of(s: Option<&Submission>) -> OnChain {
        let (state, txid, height, result) = match s.map(|s| &s.state) {
            None => ("none", None, None, None),
            Some(SubmissionState::Pending) => ("pending", None, None, None),
            Some(SubmissionState::Sent {
                txid, broadcasts, ..
            }) => (
                if *broadcasts > 0 {
                    "submitted"
                } else {
                    "pending"
                },
                Some(txid.clone()),
                None,
                None,
            ),
            Some(SubmissionState::Confirmed {
                txid,
                height,
                result,
                ..
            }) => (
                "confirmed",
                txid.clone(),
                Some(*height),
                Some(result.clone()),
            ),
            Some(SubmissionState::Failed {
                txid,
                height,
                result,
                ..
            }) => (
                "failed",
                Some(txid.clone()),
                Some(*height),
                Some(result.clone()),
            ),
        };
        OnChain {
            state,
            txid,
            height,
            result,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub access_id: AccessId,
    pub clinician: Address,
    /// The name the provider directory gives the clinician.
    pub clinician_name: Option<String>,
    /// How that directory entry stands against the clinician's on-chain `info-hash` (`None`:
    /// no entry, or not checked: the queue reads the chain-state cache only, the access's view
    /// the node on a miss): a name from an entry that is not what was registered (`mismatch`,
    /// `not-on-chain`), or not checked, is shown flagged.
    pub clinician_entry: Option<Verification>,
    pub role: Role,
    pub patient: PatientId,
    pub data_types: Vec<DataType>,
    pub granted_at: u64,
    pub expires_at: u64,
    pub degraded: bool,
    /// Seconds since the grant.
    pub age_secs: u64,
    pub verdict: Option<VerdictKind>,
    /// The verdict's way to the chain (`none` without a verdict).
    pub review: OnChain,
    /// The access's record on chain.
    pub record: OnChain,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    /// Accesses that match the filters.
    pub matching: usize,
    /// Of all accesses, those without a verdict, and the oldest one's age.
    pub unreviewed: usize,
    pub oldest_unreviewed_age_secs: Option<u64>,
    /// Inappropriate verdicts (the privacy office's list).
    pub inappropriate: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<Summary>,
    pub next_cursor: Option<String>,
    pub counts: Counts,
}

/// One line of an access's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct TrailLine {
    pub seq: u64,
    pub at_ms: u64,
    /// The event's kind; for one this version does not read, the kind it names
    /// (`audit::kind_of`), or `unreadable` if it names none.
    pub kind: String,
    /// `None`: an event this version does not read (a later version's kind, logged by a replica
    /// of the next version during a rolling upgrade): shown by its kind, linked to the access by
    /// the log's index alone (the export hands it on as logged).
    pub event: Option<crate::audit::Event>,
    /// Whether the entry hashes to the hash it carries and the log's next entry (or its head)
    /// links to it: an entry edited in the store is shown flagged (`audit verify` walks the
    /// whole log, and checks it against the chain's anchors).
    pub intact: bool,
}

/// The on-chain emergency record, as the node answers now.
#[derive(Debug, Clone, Serialize)]
pub struct ChainRecord {
    pub provider_status: Option<String>,
    pub within_preferences: Option<bool>,
    pub recorded_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub degraded: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictView {
    pub verdict: VerdictKind,
    pub reviewer: Address,
    pub note: Option<String>,
    /// The salt the note's hash was made with (hex; none for a note recorded before salts:
    /// its hash is the note's own): for a signed-in reviewer only, with the note.
    pub note_salt: Option<String>,
    pub note_hash: String,
    pub at: u64,
    pub revoked: bool,
    pub on_chain: OnChain,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    /// The clinician's reason, unsealed: for a signed-in reviewer only.
    pub reason: Option<String>,
    pub reason_hash: String,
    pub device: Option<String>,
    pub on_call: Option<OnCall>,
    pub rules: Vec<String>,
    pub window_minutes: u32,
    pub window_blocks: u64,
    pub chain_lag_blocks: u64,
    pub patient_registered: Option<bool>,
    pub directory: Option<DirectoryView>,
    /// The clinician's provider status now, as the chain-state cache has it.
    pub clinician_status_now: Option<String>,
    /// The chain's record, read from the node for this view (`None` if it could not be).
    pub chain_record: Option<ChainRecord>,
    pub notice: Option<String>,
    pub token_revoked: bool,
    pub trail: Vec<TrailLine>,
    /// Whether the access record as stored is what its grant's audit entry says was granted
    /// (`AccessRecord::digest`): `false`, the record or that entry altered in the store since;
    /// `None`, not told (a grant logged before its entries carried the digest, or no grant
    /// entry in the trail).
    pub record_intact: Option<bool>,
    pub verdict: Option<VerdictView>,
    /// Why the viewer may not give a verdict, if they may not.
    pub cannot_review: Option<String>,
}

fn unavailable(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "store unavailable for the review view");
    Refusal::new(
        503,
        "store-unavailable",
        "Store unavailable",
        "the store cannot be read right now; try again",
    )
}

fn bad(detail: String) -> Refusal {
    Refusal::new(400, "invalid-filter", "Invalid filter", detail)
}

/// A filter, parsed.
struct Parsed {
    provider: Option<Address>,
    role: Option<Role>,
    patient: Option<PatientId>,
    data_type: Option<DataType>,
    verdict: Option<VerdictKind>,
    cursor: Option<AccessId>,
}

fn parse<T: std::str::FromStr>(what: &str, v: &Option<String>) -> Result<Option<T>, Refusal>
where
    T::Err: std::fmt::Display,
{
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<T>().map_err(|e| bad(format!("{what}: {e}"))))
        .transpose()
}

/// A clinician's directory entry as reviewers see it: who they are, not how to page them (paging
/// ids stay in `paging/`), and whether the entry is what was registered on chain for them.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryView {
    pub display_name: String,
    pub role: Role,
    pub department: Option<String>,
    pub organization: Option<String>,
    /// `None`: not checked (the chain could not be read).
    pub verification: Option<Verification>,
}

impl DirectoryView {
    /// `chain`: the clinician as the chain has them (`None`: it could not be read).
    fn of(e: ProviderEntry, chain: Option<&ProviderState>) -> DirectoryView {
        DirectoryView {
            verification: chain.map(|c| e.verification(Some(c))),
            display_name: e.display_name,
            role: e.role,
            department: e.department,
            organization: e.organization,
        }
    }
}

/// Whether a verdict's operation failed: the chain refused it.
fn failed(op: Option<&Submission>) -> bool {
    op.is_some_and(|s| matches!(s.state, SubmissionState::Failed { .. }))
}

impl Review {
    /// Access `id`'s audit trail, read through the log's index by access: only the entries
    /// about it (a row of the index naming another entry is left out, logged), each said
    /// intact or not (`TrailLine::intact`); an entry this version does not read is shown by
    /// its kind (a privacy officer sees every entry the index names, not a gap).
    fn trail(&self, id: &AccessId) -> Result<Vec<TrailLine>, crate::store::StoreError> {
        let store = &self.state.store;
        let entries = store.audit_of(id)?;
        // (the head read after the entries: each entry read is at or before it, though more
        // were appended meanwhile)
        let head = store.audit_head()?;
        let mut lines = Vec::new();
        for e in entries {
            let event = match e.parsed() {
                Ok(event) if event.access() != Some(*id) => {
                    tracing::error!(seq = e.seq, access = %id, "the log's index names an entry for an access it is not about: left out of the trail (audit verify names it)");
                    continue;
                }
                Ok(event) => Some(event),
                Err(_) => {
                    tracing::warn!(seq = e.seq, access = %id, "an entry of an access's trail is of a kind this version does not read: shown by its kind");
                    None
                }
            };
            let kind = match &event {
                Some(event) => event.kind().to_string(),
                None => crate::audit::kind_of(&e).unwrap_or_else(|| "unreadable".into()),
            };
            let linked = match &head {
                Some(h) if h.seq == e.seq => h.hash == e.hash,
                // (a next entry that does not read leaves this one unproven, not the page
                // unanswered)
                _ => match store.audit_entries(e.seq + 1, 1) {
                    Ok(next) => next
                        .first()
                        .is_some_and(|next| next.seq == e.seq + 1 && next.prev == e.hash),
                    Err(crate::store::StoreError::Corrupt(..)) => false,
                    Err(e) => return Err(e),
                },
            };
            lines.push(TrailLine {
                seq: e.seq,
                at_ms: e.at,
                kind,
                intact: linked && e.computed_hash() == e.hash,
                event,
            });
        }
        Ok(lines)
    }

    /// The clinician's directory entry, checked against the chain as the node has them (the
    /// cache, or one read on a miss; not checked if that read fails).
    async fn directory_view(&self, who: &Address) -> Result<Option<DirectoryView>, StoreError> {
        let Some(e) = self.state.store.directory_entry(who)? else {
            return Ok(None);
        };
        let chain = match self.state.provider(who).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "a clinician's directory entry not checked against the chain");
                None
            }
        };
        Ok(Some(DirectoryView::of(e, chain.as_ref())))
    }

    /// The same from the chain-state cache alone (not checked on a miss): a queue's page names
    /// up to `MAX_PAGE` clinicians, and must not wait on the node for each.
    fn directory_cached(&self, who: &Address) -> Result<Option<DirectoryView>, StoreError> {
        Ok(self
            .state
            .store
            .directory_entry(who)?
            .map(|e| DirectoryView::of(e, self.state.cached_provider(who).as_ref())))
    }

    fn summary(
        &self,
        a: &AccessRecord,
        now: u64,
        entry: Option<&DirectoryView>,
    ) -> Result<Summary, StoreError> {
        let store = &self.state.store;
        let verdict = store.verdict(&a.id)?;
        let review = match &verdict {
            Some(v) => store.submission(&v.operation())?,
            None => None,
        };
        // a verdict the chain refused leaves the access to be reviewed again
        let verdict = verdict.filter(|_| !failed(review.as_ref()));
        let record = store.submission(&format!("record:{}", a.id))?;
        Ok(Summary {
            access_id: a.id,
            clinician: a.provider,
            clinician_entry: entry.and_then(|e| e.verification),
            clinician_name: entry.map(|e| e.display_name.clone()),
            role: a.role,
            patient: a.patient,
            data_types: a.data_types.clone(),
            granted_at: a.granted_at,
            expires_at: a.expires_at,
            degraded: a.degraded,
            age_secs: now.saturating_sub(a.granted_at),
            verdict: verdict.map(|v| v.verdict),
            review: OnChain::of(review.as_ref()),
            record: OnChain::record(record.as_ref()),
        })
    }

    /// The queue: accesses matching `filter`, oldest first, a page at a time.
    pub fn list(&self, filter: &Filter, now: u64) -> Result<Page, Refusal> {
        let f = Parsed {
            provider: parse("provider", &filter.provider)?,
            role: parse("role", &filter.role)?,
            patient: parse("patient", &filter.patient)?,
            data_type: parse("data_type", &filter.data_type)?,
            verdict: parse("verdict", &filter.verdict)?,
            cursor: parse("cursor", &filter.cursor)?,
        };
        let limit = filter.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let store = &self.state.store;
        let mut counts = Counts {
            matching: 0,
            unreviewed: 0,
            oldest_unreviewed_age_secs: None,
            inappropriate: 0,
        };
        let mut verdicts: std::collections::HashMap<AccessId, VerdictKind> = Default::default();
        let given = store.verdicts().map_err(unavailable)?;
        let operations: Vec<String> = given.iter().map(|v| v.operation()).collect();
        let reviews = store.submissions_named(&operations).map_err(unavailable)?;
        for (v, review) in given.into_iter().zip(reviews) {
            // a verdict the chain refused leaves the access to be reviewed again
            if !failed(review.as_ref()) {
                verdicts.insert(v.access_id, v.verdict);
            }
        }
        let mut page = Vec::new();
        let mut more = false;
        // access ids begin with their grant time: key order is grant order; the records are
        // read `READ_AT_ONCE` at a time (the counts need every one)
        let ids = store.access_ids().map_err(unavailable)?;
        for chunk in ids.chunks(READ_AT_ONCE) {
            for a in store.accesses(chunk).map_err(unavailable)? {
                let verdict = verdicts.get(&a.id).copied();
                match verdict {
                    None => {
                        counts.unreviewed += 1;
                        counts
                            .oldest_unreviewed_age_secs
                            .get_or_insert(now.saturating_sub(a.granted_at));
                    }
                    Some(VerdictKind::Inappropriate) => counts.inappropriate += 1,
                    Some(_) => {}
                }
                let matches = filter.from.is_none_or(|t| a.granted_at >= t)
                    && filter.to.is_none_or(|t| a.granted_at < t)
                    && f.provider.is_none_or(|p| a.provider == p)
                    && f.role.is_none_or(|r| a.role == r)
                    && f.patient.is_none_or(|p| a.patient == p)
                    && f.data_type.is_none_or(|d| a.data_types.contains(&d))
                    && (f.verdict.is_none() || verdict == f.verdict)
                    && (filter.pending != Some(true) || verdict.is_none())
                    && (filter.degraded != Some(true) || a.degraded);
                if !matches {
                    continue;
                }
                counts.matching += 1;
                if f.cursor.is_some_and(|c| a.id <= c) {
                    continue;
                }
                if page.len() == limit {
                    more = true;
                    continue;
                }
                page.push(a);
            }
        }
        let mut entries: std::collections::HashMap<Address, Option<DirectoryView>> =
            Default::default();
        let mut items = Vec::with_capacity(page.len());
        for a in &page {
            let entry = match entries.entry(a.provider) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.directory_cached(&a.provider).map_err(unavailable)?)
                }
            };
            items.push(self.summary(a, now, entry.as_ref()).map_err(unavailable)?);
        }
        let next_cursor = more
            .then(|| items.last().map(|s| s.access_id.to_string()))
            .flatten();
        Ok(Page {
            items,
            next_cursor,
            counts,
        })
    }

    /// One access's whole story, for `viewer` (a reviewer: whether they may give a verdict).
    pub async fn detail(
        &self,
        id: &AccessId,
        viewer: Option<&Address>,
        now: u64,
    ) -> Result<Detail, Refusal> {
        let store = &self.state.store;
        let a = store.access(id).map_err(unavailable)?.ok_or_else(|| {
            Refusal::new(
                404,
                "unknown-access",
                "Unknown access",
                "no access with this id was granted here",
            )
        })?;
        let directory = self
            .directory_view(&a.provider)
            .await
            .map_err(unavailable)?;
        let summary = self
            .summary(&a, now, directory.as_ref())
            .map_err(unavailable)?;
        // the reason and the note are for reviewers only (admin clients read the rest)
        let reviewer = viewer.is_some();
        let verdict = store.verdict(id).map_err(unavailable)?.map(|v| {
            let note = reviewer.then(|| self.note(&v)).flatten();
            VerdictView {
                note_salt: note.as_ref().and_then(|n| n.salt).map(hex::encode),
                note: note.map(|n| n.text),
                verdict: v.verdict,
                reviewer: v.reviewer,
                note_hash: v.note_hash,
                at: v.at,
                revoked: v.revoked,
                on_chain: summary.review.clone(),
            }
        });
        let trail = self.trail(id).map_err(unavailable)?;
        // (a grant's entry that does not verify proves nothing of the record either: its
        // digest may have been edited or removed with the record)
        let record_intact = trail.iter().find_map(|t| match &t.event {
            Some(crate::audit::Event::Grant { .. }) if !t.intact => Some(false),
            Some(crate::audit::Event::Grant {
                record: Some(digest),
                ..
            }) => Some(*digest == a.digest()),
            _ => None,
        });
        let notice = store
            .notice(id)
            .map_err(unavailable)?
            .map(|n| match n.state {
                NoticeState::Pending => "pending".to_string(),
                NoticeState::Sent { .. } => "sent".to_string(),
                // the server's reply may echo the patient's address: operators read it in the
                // notices' admin list, reviewers only that it failed
                NoticeState::Dead { .. } => "not delivered".to_string(),
                NoticeState::NoContact { .. } => "nobody to tell (no contact on file)".to_string(),
            });
        let chain_now = store.provider(&a.provider).map_err(unavailable)?;
        let clinician_status_now = match &chain_now {
            Some(ProviderState::Registered { status, .. }) => Some(status.to_string()),
            Some(ProviderState::Unregistered) => Some("unregistered".into()),
            None => None,
        };
        let cannot_review = match viewer {
            None => {
                Some("admin clients read; only a signed-in reviewer gives a verdict".to_string())
            }
            Some(v) if *v == a.provider || *v == self.responder => {
                Some("you cannot review your own access, or one you recorded".into())
            }
            Some(_) if summary.verdict.is_some() => Some("this access has its verdict".into()),
            Some(_) if summary.record.state != "confirmed" => Some(
                "the access is not confirmed on chain yet: its verdict can be given once it is"
                    .into(),
            ),
            Some(_) => None,
        };
        Ok(Detail {
            reason: reviewer.then(|| self.reason(&a)).flatten(),
            reason_hash: a.reason_hash.clone(),
            device: a.device.clone(),
            on_call: a.on_call.clone(),
            rules: a.rules.clone(),
            window_minutes: a.window_minutes,
            window_blocks: a.window_blocks,
            chain_lag_blocks: a.chain_lag_blocks,
            patient_registered: a.patient_registered,
            directory,
            clinician_status_now,
            chain_record: self.chain_record(id).await,
            notice,
            token_revoked: store
                .revoked(&id.to_string())
                .map_err(unavailable)?
                .is_some(),
            record_intact,
            trail,
            verdict,
            cannot_review,
            summary,
        })
    }

    /// The emergency record as the node has it now (not on the break-glass path).
    async fn chain_record(&self, id: &AccessId) -> Option<ChainRecord> {
        let c = &self.state.contracts;
        let v = self
            .state
            .rpc
            .call_read(
                &c.access_control(),
                "get-emergency-access",
                &[Value::Buffer(id.0.to_vec())],
                &c.address,
            )
            .await
            .ok()?;
        let Value::Some(t) = v else { return None };
        let m = t.as_tuple()?;
        let num = |k: &str| contracts::uint(m.get(k)).and_then(|n| u64::try_from(n).ok());
        Some(ChainRecord {
            provider_status: contracts::ascii(m.get("provider-status")).map(str::to_string),
            within_preferences: contracts::boolean(m.get("within-preferences")),
            recorded_at: num("recorded-at"),
            expires_at: num("expires-at"),
            degraded: contracts::boolean(m.get("degraded")),
        })
    }
}

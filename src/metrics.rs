//! `/metrics`: Prometheus (OpenMetrics text) counters the service keeps as it works, and
//! gauges set at each scrape from the values the HTTP layer reads from the parts that know
//! them (`Gauges`: the paging sources, the follower). Labels carry codes and source names only.
//!
//! It must not: label with a principal or a patient, or import what it measures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Webhook {
    pub source: String,
    /// `accepted`, or the refusal's code
    pub outcome: String,
}

pub use crate::latency::latency_histogram;

/// What the gauges show, read at scrape by whoever knows it (the paging sources, the
/// follower): `metrics` is handed values, it does not reach into what it measures.
#[derive(Debug, Default)]
pub struct Gauges {
    pub syncs: Vec<SyncGauge>,
    /// Principals on call, by source.
    pub on_call: Vec<(String, u64)>,
    /// Stored on-call rows that do not read as their kind (read as closed).
    pub on_call_unreadable: u64,
    pub applied_height: u64,
    pub node_tip_height: u64,
    pub pushes_not_on_chain: u64,
    pub operations_failed: u64,
    /// This replica holds the submitter's lease (signs and broadcasts).
    pub submitter_lease_held: bool,
    /// Operations and notices still open, in the store (`None`: it did not answer).
    pub open: Option<(u64, u64)>,
    /// Notices closed with nobody to tell (no contact on file), in the store (`None`: it did
    /// not answer).
    pub uncontacted: Option<u64>,
    /// Audit log entries whose grants' chain records and notices are not made yet
    /// (`access::follow_up`; `None`: the store did not answer).
    pub follow_up_behind: Option<u64>,
}

/// One paging sync's health.
#[derive(Debug)]
pub struct SyncGauge {
    pub source: String,
    /// Its last good roster still stands.
    pub up: bool,
    /// Unix seconds; 0 if never.
    pub last_success: u64,
    pub failures: u64,
}

pub struct Metrics {
    registry: Registry,
    pub grants: Counter,
    /// From a verified-size body to the signed token, of every grant.
    pub grant_seconds: Histogram,
    /// A grant's wait for its durable write (the audit trail), as the request sees it.
    pub audit_write_seconds: Histogram,
    pub refusals: Family<Code, Counter>,
    /// Refusals of a provider the chain knows left out of the audit log (beyond their
    /// clinician's share of entries a minute, `access::REFUSAL_ENTRIES_PER_MINUTE`, or the same
    /// signed request refused again for the same reason).
    pub refusals_unlogged: Counter,
    /// Refused vault reads without a verified token left out of the audit log (beyond
    /// `vault::ANONYMOUS_REFUSAL_ENTRIES_PER_MINUTE`).
    pub vault_refusals_unlogged: Counter,
    /// Introspections of our tokens whose window had closed left out of the audit log (beyond
    /// `access::EXPIRED_INTROSPECTIONS_PER_MINUTE`, or not written: answered inactive all the same).
    pub expired_introspections_unlogged: Counter,
    pub webhooks: Family<Webhook, Counter>,
    sync_up: Family<Source, Gauge>,
    sync_last_success: Family<Source, Gauge>,
    sync_failures: Family<Source, Gauge>,
    on_call: Family<Source, Gauge>,
    on_call_unreadable: Gauge,
    applied_height: Gauge,
    node_tip_height: Gauge,
    pushes_not_on_chain: Gauge,
    operations_failed: Gauge,
    submitter_lease_held: Gauge,
    chain_records_open: Gauge,
    notices_open: Gauge,
    notices_uncontacted: Gauge,
    follow_up_behind: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("breakglass");
        let m = Metrics {
            grants: Counter::default(),
            grant_seconds: latency_histogram(),
            audit_write_seconds: latency_histogram(),
            refusals: Family::default(),
            refusals_unlogged: Counter::default(),
            vault_refusals_unlogged: Counter::default(),
            expired_introspections_unlogged: Counter::default(),
            webhooks: Family::default(),
            sync_up: Family::default(),
            sync_last_success: Family::default(),
            sync_failures: Family::default(),
            on_call: Family::default(),
            on_call_unreadable: Gauge::default(),
            applied_height: Gauge::default(),
            node_tip_height: Gauge::default(),
            pushes_not_on_chain: Gauge::default(),
            operations_failed: Gauge::default(),
            submitter_lease_held: Gauge::default(),
            chain_records_open: Gauge::default(),
            notices_open: Gauge::default(),
            notices_uncontacted: Gauge::default(),
            follow_up_behind: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("grants", "Break-glass accesses granted", m.grants.clone());
        registry.register(
            "grant_duration_seconds",
            "Time to grant a break-glass access, from the request's body to the signed token",
            m.grant_seconds.clone(),
        );
        registry.register(
            "audit_write_duration_seconds",
            "A grant's wait for its durable write (access record, audit entry, nonce and rate claims), those given up on after 5 s included",
            m.audit_write_seconds.clone(),
        );
        registry.register(
            "refusals",
            "Break-glass requests refused, by code",
            m.refusals.clone(),
        );
        registry.register(
            "refusals_unlogged",
            "Refusals of providers the chain knows not written to the audit log: beyond their clinician's entries a minute, or the same signed request refused again for the same reason",
            m.refusals_unlogged.clone(),
        );
        registry.register(
            "vault_refusals_unlogged",
            "Refused vault reads without a verified token not written to the audit log: beyond their entries a minute",
            m.vault_refusals_unlogged.clone(),
        );
        registry.register(
            "expired_introspections_unlogged",
            "Introspections of tokens whose window had closed not written to the audit log: beyond their entries a minute, or the store not answering (answered inactive all the same)",
            m.expired_introspections_unlogged.clone(),
        );
        registry.register(
            "paging_webhooks",
            "Paging webhooks received, by source and outcome",
            m.webhooks.clone(),
        );
        registry.register(
            "paging_sync_up",
            "1 while a sync source's last good roster stands (within its grace period), 0 once it fails closed",
            m.sync_up.clone(),
        );
        registry.register(
            "paging_sync_last_success_timestamp_seconds",
            "When a sync source last answered (unix seconds)",
            m.sync_last_success.clone(),
        );
        registry.register(
            "paging_sync_consecutive_failures",
            "Failed syncs since a sync source last answered",
            m.sync_failures.clone(),
        );
        registry.register(
            "paging_on_call",
            "Clinicians on call now, by source",
            m.on_call.clone(),
        );
        registry.register(
            "paging_unreadable_rows",
            "Stored on-call rows that do not read as their kind: they put no one on call, and only a release replaces them",
            m.on_call_unreadable.clone(),
        );
        registry.register(
            "chain_applied_height",
            "The last block the follower applied",
            m.applied_height.clone(),
        );
        registry.register(
            "chain_node_tip_height",
            "The node's tip as last seen",
            m.node_tip_height.clone(),
        );
        registry.register(
            "chain_pushes_not_on_chain",
            "Blocks pushed to the event observer that the node did not confirm (forged, or abandoned since), since start",
            m.pushes_not_on_chain.clone(),
        );
        registry.register(
            "chain_operations_failed",
            "The service's chain operations (access records, verdicts, anchors, summaries' hashes) this process found failed and logged so, since start: the contract refused one, one could not be signed, or whether one ran cannot be told (each in the audit log as a chain-failure)",
            m.operations_failed.clone(),
        );
        registry.register(
            "submitter_lease_held",
            "1 while this replica holds the submitter's lease (it alone signs and broadcasts the service's transactions), else 0",
            m.submitter_lease_held.clone(),
        );
        registry.register(
            "chain_records_open",
            "Chain operations (access records, verdicts, anchors) not yet confirmed on chain, in the store all replicas share",
            m.chain_records_open.clone(),
        );
        registry.register(
            "notices_open",
            "Patient notices not yet sent or dead-lettered, in the store all replicas share",
            m.notices_open.clone(),
        );
        registry.register(
            "notices_uncontacted",
            "Patient notices with nobody to tell (no contact on file, or none still current): each goes out once the directory reaches the patient (a contact imported, or a period of one begun)",
            m.notices_uncontacted.clone(),
        );
        registry.register(
            "follow_up_behind_entries",
            "Audit log entries not yet read by the grants' follow-up, which makes each grant's chain record and patient notice (a few while grants come; growing: it is stopped)",
            m.follow_up_behind.clone(),
        );
        registry.register(
            "build",
            "This process's build: the crate's version and the commit it was built from",
            prometheus_client::metrics::info::Info::new(vec![("version", crate::startup::VERSION)]),
        );
        Metrics { registry, ..m }
    }

    /// Adds the store's group commits (`GroupMetrics`): each group's durable write, as its
    /// writer sees it (`store_journal_…` on the embedded store, `store_redis_…` on Redis), and
    /// how many batches each took, and how long each batch waited for its group.
    pub fn register_store(&mut self, group: crate::store::GroupMetrics) {
        let (name, help) = group.writer.series();
        self.registry.register(name, help, group.writes);
        self.registry.register(
            "store_group_batches",
            "How many batches each group commit of the store took (a grant waits for one group's write)",
            group.batches,
        );
        self.registry.register(
            "store_batch_wait_duration_seconds",
            "How long each batch (a grant's write, mostly) waited for the store's writer to take it into a group: behind the group in flight",
            group.waits,
        );
    }

    /// The exposition, with the gauges read now.
    /// The text exposition, with the gauges set from `gauges` (read by the caller at scrape).
    pub fn render(&self, gauges: &Gauges) -> String {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for sync in &gauges.syncs {
            let l = Source {
                source: sync.source.clone(),
            };
            self.sync_up.get_or_create(&l).set(i64::from(sync.up));
            self.sync_last_success
                .get_or_create(&l)
                .set(g(sync.last_success));
            self.sync_failures.get_or_create(&l).set(g(sync.failures));
        }
        self.on_call.clear();
        for (source, n) in &gauges.on_call {
            self.on_call
                .get_or_create(&Source {
                    source: source.clone(),
                })
                .set(g(*n));
        }
        self.on_call_unreadable.set(g(gauges.on_call_unreadable));
        self.applied_height.set(g(gauges.applied_height));
        self.node_tip_height.set(g(gauges.node_tip_height));
        self.pushes_not_on_chain.set(g(gauges.pushes_not_on_chain));
        self.operations_failed.set(g(gauges.operations_failed));
        self.submitter_lease_held
            .set(i64::from(gauges.submitter_lease_held));
        // a store that does not answer leaves the last counts (`/readyz` says it is down)
        if let Some((records, notices)) = gauges.open {
            self.chain_records_open.set(g(records));
            self.notices_open.set(g(notices));
        }
        if let Some(n) = gauges.uncontacted {
            self.notices_uncontacted.set(g(n));
        }
        if let Some(behind) = gauges.follow_up_behind {
            self.follow_up_behind.set(g(behind));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

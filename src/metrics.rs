//! `/metrics`: Prometheus (OpenMetrics text) counters the service keeps as it works, and
//! gauges read at each scrape from the parts that know them (the paging sources, the
//! follower). Labels carry codes and source names only: never a principal or a patient.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::chain::follower::FollowerStatus;
use crate::paging::OnCall;

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

pub struct Metrics {
    registry: Registry,
    pub grants: Counter,
    pub refusals: Family<Code, Counter>,
    pub webhooks: Family<Webhook, Counter>,
    sync_up: Family<Source, Gauge>,
    sync_last_success: Family<Source, Gauge>,
    sync_failures: Family<Source, Gauge>,
    on_call: Family<Source, Gauge>,
    applied_height: Gauge,
    node_tip_height: Gauge,
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
            refusals: Family::default(),
            webhooks: Family::default(),
            sync_up: Family::default(),
            sync_last_success: Family::default(),
            sync_failures: Family::default(),
            on_call: Family::default(),
            applied_height: Gauge::default(),
            node_tip_height: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("grants", "Break-glass accesses granted", m.grants.clone());
        registry.register(
            "refusals",
            "Break-glass requests refused, by code",
            m.refusals.clone(),
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
            "chain_applied_height",
            "The last block the follower applied",
            m.applied_height.clone(),
        );
        registry.register(
            "chain_node_tip_height",
            "The node's tip as last seen",
            m.node_tip_height.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition, with the gauges read now.
    pub fn render(&self, oncall: &OnCall, follower: &FollowerStatus, now: u64) -> String {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (source, h) in oncall.health() {
            let l = Source { source };
            self.sync_up.get_or_create(&l).set(i64::from(h.fresh(now)));
            self.sync_last_success
                .get_or_create(&l)
                .set(h.last_success.map_or(0, g));
            self.sync_failures
                .get_or_create(&l)
                .set(g(h.consecutive_failures));
        }
        self.on_call.clear();
        for (source, n) in oncall.counts(now) {
            self.on_call
                .get_or_create(&Source { source })
                .set(g(n as u64));
        }
        self.applied_height.set(g(follower.applied()));
        self.node_tip_height.set(g(follower.node_tip()));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

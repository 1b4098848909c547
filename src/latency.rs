//! The one bucket layout of the break-glass path's latency histograms (the grant, its durable
//! write, the store's journal), so that every figure on that path reads on the same scale.
//!
//! It must not: register or export anything (`metrics` does).

use prometheus_client::metrics::histogram::Histogram;

/// Bucket bounds (seconds) for the break-glass path's latencies: 50 µs to 50 ms, finest
/// around the 1 ms the path is held to.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
    0.02, 0.05,
];

/// A histogram of latencies on the break-glass path.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

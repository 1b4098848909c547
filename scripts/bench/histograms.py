"""Prints the service's latency histograms over one run: the difference between two scrapes
of /metrics (before, after), as count and p50/p90/p99 read off the buckets (linear within a
bucket, so as fine as the bucket bounds, src/metrics.rs).

    python3 scripts/bench/histograms.py before.txt after.txt
"""
import re
import sys

NAMES = {
    "breakglass_grant_duration_seconds": "grant, in the service",
    "breakglass_audit_write_duration_seconds": "  of which the durable write",
    "breakglass_store_journal_write_duration_seconds": "  the journal's write alone",
    "breakglass_store_redis_write_duration_seconds": "  the Redis write alone",
    "breakglass_store_batch_wait_duration_seconds": "  a batch's wait for its group",
}
# not a latency: how many batches (grants, mostly) each group commit took
GROUPS = ("breakglass_store_group_batches", "  batches per group")
BUCKET = re.compile(r'^(\w+)_bucket\{le="([^"]+)"\} (\S+)')


def buckets(path):
    out = {}
    for line in open(path):
        m = BUCKET.match(line)
        if m and (m.group(1) in NAMES or m.group(1) == GROUPS[0]):
            le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
            out.setdefault(m.group(1), {})[le] = float(m.group(3))
    return out


def quantile(bounds, q):
    total = bounds[-1][1]
    lower, below = 0.0, 0.0
    for le, count in bounds:
        if count >= q * total:
            if le == float("inf"):
                return float("inf")
            inside = count - below
            return lower + (le - lower) * ((q * total - below) / inside if inside else 1)
        lower, below = le, count
    return float("inf")


before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
for name, label in NAMES.items():
    a = after.get(name, {})
    b = before.get(name, {})
    bounds = sorted((le, a[le] - b.get(le, 0)) for le in a)
    if not bounds or bounds[-1][1] == 0:
        continue
    over = bounds[-1][1] - dict(bounds).get(0.001, 0)
    print("  %-34s n=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f over_1ms=%.2f%%" % (
        label, bounds[-1][1], *(quantile(bounds, q) * 1e6 for q in (0.5, 0.9, 0.99)),
        100 * over / bounds[-1][1]))
a, b = after.get(GROUPS[0], {}), before.get(GROUPS[0], {})
bounds = sorted((le, a[le] - b.get(le, 0)) for le in a)
if bounds and bounds[-1][1] > 0:
    print("  %-34s groups=%d p50=%.0f p90=%.0f p99=%.0f" % (
        GROUPS[1], bounds[-1][1], *(quantile(bounds, q) for q in (0.5, 0.9, 0.99))))

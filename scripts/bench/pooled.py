"""Pools the slices of one handler's alternated run (`scripts/bench/run`, `alternate`): the
latencies every slice appended to one file (`µs count` a line: bodies.lua's HISTOGRAM) and the
slices' own result lines, into one result line as wrk prints it, with the percentiles of all the
slices' requests together.

    python3 scripts/bench/pooled.py name histogram results
"""
import math
import re
import sys

RESULT = re.compile(r"rps=(\d+) .*requests=(\d+) non2xx=(\d+) late=(\d+)")


def percentile(counts, total, q):
    """The least latency at or under which at least q of the requests were answered."""
    rank, seen = max(1, math.ceil(q * total)), 0
    for value, count in counts:
        seen += count
        if seen >= rank:
            return value
    return counts[-1][0]


def main():
    name, histogram, results = sys.argv[1:4]
    pooled = {}
    for line in open(histogram):
        value, count = (int(x) for x in line.split())
        pooled[value] = pooled.get(value, 0) + count
    counts = sorted(pooled.items())
    total = sum(c for _, c in counts)
    slices = [RESULT.search(line) for line in open(results)]
    slices = [m for m in slices if m]
    if not counts or not slices:
        return
    rps = sum(int(m.group(1)) for m in slices) / len(slices)
    requests, non2xx, late = (sum(int(m.group(k)) for m in slices) for k in (2, 3, 4))
    p50, p90, p99 = (percentile(counts, total, q) for q in (0.5, 0.9, 0.99))
    print("%-36s rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d requests=%d non2xx=%d late=%d slices=%d" % (
        name, rps, p50, p90, p99, counts[-1][0], requests, non2xx, late, len(slices)))


if __name__ == "__main__":
    main()

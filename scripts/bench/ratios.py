"""Prints the load test's goals as ratios to the reference handlers, per round of
`scripts/bench/run` (ROUNDS=N) and their median over the rounds: each run's result lines on
stdin (`name rps=... p50_us=... p99_us=...`), rounds separated by `round N of M` lines.

    python3 scripts/bench/ratios.py < results

A ratio is printed only where both of its runs are in the round (ONLY= may leave some out).

Runs on Redis also report the longest sync of its append-only file and the rewrites of that
file begun in the run (`syncs: <name> ... longest_ms=N rewrites=R`). Every write waits for the
sync in flight, so a sync of tens of milliseconds (a stall of the disk, not of the service) is
in the tail of whichever run it falls in; a rewrite forks Redis with its whole data set (the
load test's earlier runs' grants, hundreds of thousands) and writes it out compressed, on the
same two cores and disk, for seconds. A p99 ratio of a round where one run had such an event
and the other not says more about the host than about the grant, so for those ratios the
rounds without either are also given apart (beside all rounds, which stay the verdict).
"""
import re
import statistics
import sys

RESULT = re.compile(r"^(.+?)\s+rps=(\d+) p50_us=(\d+) p90_us=(\d+) p99_us=(\d+)")
SYNCS = re.compile(r"^syncs: (.+?) seconds_over_5ms=\d+ longest_ms=(\d+)(?: rewrites=(\d+))?")
# a sync this long (ms) is a stall of the disk: a quiet run's longest is 2 to 14 ms here
STALL_MS = 20

# (what, numerator run, denominator run, field, goal: at least or at most)
RATIOS = [
    ("grant p99 / its floor's, 1,000 req/s", "break-glass grant, ~1000 req/s",
     "crypto + synced write, ~1000 req/s", "p99", ("at most", 1.25)),
    ("grant peak / crypto only's", "break-glass grant, peak", "crypto only, peak", "rps", None),
    ("Redis: grant p99 / its floor's, 1,000 req/s", "grant on Redis, ~1000 req/s",
     "crypto + Redis write, ~1000 req/s", "p99", ("at most", 1.25)),
    ("Redis: grant peak / crypto only's", "grant on Redis, peak", "crypto only, peak", "rps",
     ("at least", 0.60)),
    # the same goals, from the runs alternated slice by slice (`alternate` in scripts/bench/run)
    ("grant p99 / its floor's, 1,000 req/s, alternated", "break-glass grant, ~1000 req/s, alternated",
     "crypto + synced write, ~1000 req/s, alternated", "p99", ("at most", 1.25)),
    ("Redis: grant p99 / its floor's, 1,000 req/s, alternated", "grant on Redis, ~1000 req/s, alternated",
     "crypto + Redis write, ~1000 req/s, alternated", "p99", ("at most", 1.25)),
    ("Redis: grant p50 / its floor's, 1,000 req/s, alternated", "grant on Redis, ~1000 req/s, alternated",
     "crypto + Redis write, ~1000 req/s, alternated", "p50", None),
    # diagnosis, no goal: the grant against a write of as many bytes as its own
    ("Redis: grant p50 / a write of its bytes'", "grant on Redis, ~1000 req/s",
     "crypto + Redis write of a grant's bytes, ~1000 req/s", "p50", None),
    ("Redis: grant p99 / a write of its bytes'", "grant on Redis, ~1000 req/s",
     "crypto + Redis write of a grant's bytes, ~1000 req/s", "p99", None),
    ("Redis: a write of a grant's bytes, p99 / the floor's", "crypto + Redis write of a grant's bytes, ~1000 req/s",
     "crypto + Redis write, ~1000 req/s", "p99", None),
]


def rounds(lines):
    out = [{}]
    for line in lines:
        if line.startswith("round ") and out[-1]:
            out.append({})
            continue
        m = RESULT.match(line)
        if m:
            name, rps, p50, _p90, p99 = m.groups()
            out[-1][name.strip()] = {"rps": int(rps), "p50": int(p50), "p99": int(p99)}
        m = SYNCS.match(line)
        if m and m.group(1) in out[-1]:
            out[-1][m.group(1)]["sync_ms"] = int(m.group(2))
            out[-1][m.group(1)]["rewrites"] = int(m.group(3) or 0)
    return [r for r in out if r]


def stalled(run):
    return run.get("sync_ms", 0) >= STALL_MS


def rewritten(run):
    return run.get("rewrites", 0) > 0


def disturbed(run):
    return stalled(run) or rewritten(run)


def verdict(values, goal):
    line = " ".join(f"{v:.2f}" for v in values)
    if len(values) > 1:
        line += f"  median {statistics.median(values):.2f}"
    if goal:
        kind, bound = goal
        met = [v <= bound if kind == "at most" else v >= bound for v in values]
        line += f"  (goal {kind} {bound:.2f}: met in {sum(met)} of {len(met)})"
    return line


def main():
    found = rounds(sys.stdin)
    if not found:
        return
    print("goals, as ratios within each round" + (" (and their median)" if len(found) > 1 else ""))
    for what, num, den, field, goal in RATIOS:
        pairs = [(r[num], r[den]) for r in found
                 if num in r and den in r and r[den][field] > 0]
        if not pairs:
            continue
        print(f"  {what:<46} " + verdict([n[field] / d[field] for n, d in pairs], goal))
        if field != "p99" or not any(disturbed(n) or disturbed(d) for n, d in pairs):
            continue
        quiet = [n[field] / d[field] for n, d in pairs if not (disturbed(n) or disturbed(d))]
        stalls = sum(1 for n, d in pairs if stalled(n) or stalled(d))
        rewrites = sum(1 for n, d in pairs if rewritten(n) or rewritten(d))
        apart = f"  {'  the rounds without a stall or a rewrite':<46} "
        print(apart + (verdict(quiet, goal) if quiet else "none")
              + f"  (of {len(pairs)}: {stalls} had a sync of {STALL_MS} ms or more,"
              + f" {rewrites} a rewrite of Redis's file)")


if __name__ == "__main__":
    main()

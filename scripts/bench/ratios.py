"""Prints the load test's goals as ratios to the reference handlers, per round of
`scripts/bench/run` (ROUNDS=N) and their median over the rounds: each run's result lines on
stdin (`name rps=... p50_us=... p99_us=...`), rounds separated by `round N of M` lines.

    python3 scripts/bench/ratios.py < results

A ratio is printed only where both of its runs are in the round (ONLY= may leave some out).
"""
import re
import statistics
import sys

RESULT = re.compile(r"^(.+?)\s+rps=(\d+) p50_us=(\d+) p90_us=(\d+) p99_us=(\d+)")

# (what, numerator run, denominator run, field, goal: at least or at most)
RATIOS = [
    ("grant p99 / its floor's, 1,000 req/s", "break-glass grant, ~1000 req/s",
     "crypto + synced write, ~1000 req/s", "p99", ("at most", 1.25)),
    ("grant peak / crypto only's", "break-glass grant, peak", "crypto only, peak", "rps", None),
    ("Redis: grant p99 / its floor's, 1,000 req/s", "grant on Redis, ~1000 req/s",
     "crypto + Redis write, ~1000 req/s", "p99", ("at most", 1.25)),
    ("Redis: grant peak / crypto only's", "grant on Redis, peak", "crypto only, peak", "rps",
     ("at least", 0.60)),
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
    return [r for r in out if r]


def main():
    found = rounds(sys.stdin)
    if not found:
        return
    print("goals, as ratios within each round" + (" (and their median)" if len(found) > 1 else ""))
    for what, num, den, field, goal in RATIOS:
        values = [r[num][field] / r[den][field] for r in found
                  if num in r and den in r and r[den][field] > 0]
        if not values:
            continue
        text = " ".join(f"{v:.2f}" for v in values)
        line = f"  {what:<46} {text}"
        if len(values) > 1:
            line += f"  median {statistics.median(values):.2f}"
        if goal:
            kind, bound = goal
            met = [v <= bound if kind == "at most" else v >= bound for v in values]
            line += f"  (goal {kind} {bound:.2f}: met in {sum(met)} of {len(met)})"
        print(line)


if __name__ == "__main__":
    main()

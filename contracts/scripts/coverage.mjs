// Line and function coverage of the Clarity contracts from the clarinet-sdk lcov report.
// The report has one record per test; a line counts as covered when any test ran it.
// Usage: node scripts/coverage.mjs [lcov.info] [--min 95]   (exits 1 below the minimum)
import { readFileSync } from "node:fs";
import { basename } from "node:path";

const args = process.argv.slice(2);
const minAt = args.indexOf("--min");
const min = minAt >= 0 ? Number(args[minAt + 1]) : 95;
const file = args.find((a, i) => !a.startsWith("--") && args[i - 1] !== "--min") ?? "lcov.info";

const files = new Map(); // contract -> { lines: Map<line, hits>, fns: Map<name, hits> }
let current = null;
for (const line of readFileSync(file, "utf8").split("\n")) {
  if (line.startsWith("SF:")) {
    const name = basename(line.slice(3));
    if (!files.has(name)) files.set(name, { lines: new Map(), fns: new Map() });
    current = files.get(name);
  } else if (line.startsWith("DA:") && current) {
    const [ln, hits] = line.slice(3).split(",").map(Number);
    current.lines.set(ln, Math.max(current.lines.get(ln) ?? 0, hits));
  } else if (line.startsWith("FNDA:") && current) {
    const [hits, name] = line.slice(5).split(",");
    current.fns.set(name, Math.max(current.fns.get(name) ?? 0, Number(hits)));
  } else if (line === "end_of_record") {
    current = null;
  }
}

let total = 0, covered = 0, failed = false;
for (const [name, { lines, fns }] of [...files].sort()) {
  if (!name.endsWith(".clar")) continue;
  const hit = [...lines.values()].filter((h) => h > 0).length;
  const pct = (100 * hit) / lines.size;
  const missed = [...lines].filter(([, h]) => h === 0).map(([l]) => l).sort((a, b) => a - b);
  const fnMissed = [...fns].filter(([, h]) => h === 0).map(([n]) => n);
  total += lines.size; covered += hit;
  console.log(`${name}: lines ${hit}/${lines.size} (${pct.toFixed(1)}%), functions ${fns.size - fnMissed.length}/${fns.size}` +
    (missed.length ? `; lines not run: ${missed.join(", ")}` : "") +
    (fnMissed.length ? `; functions not run: ${fnMissed.join(", ")}` : ""));
  if (pct < min) failed = true;
}
if (total === 0) {
  console.error(`coverage: no Clarity lines in ${file}`);
  process.exit(1);
}
console.log(`contracts: line coverage ${((100 * covered) / total).toFixed(1)}% (minimum ${min}% per contract)`);
if (failed) {
  console.error(`coverage: below ${min}%`);
  process.exit(1);
}

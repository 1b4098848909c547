// Runs the rendezvous property tests and invariants of both contracts (see contracts/*.tests.clar).
// Usage: node scripts/rendezvous.mjs [--runs N]   (default 1000 runs each; exits 1 on any failure)
import { spawnSync } from "node:child_process";

const at = process.argv.indexOf("--runs");
const runs = at >= 0 ? process.argv[at + 1] : "1000";
let failed = 0;
for (const contract of ["patient-consent", "access-control"]) {
  for (const type of ["test", "invariant"]) {
    const started = Date.now();
    const res = spawnSync("npx", ["rv", ".", contract, type, "--runs", runs, "--bail"], { encoding: "utf8", maxBuffer: 1024 * 1024 * 1024 });
    const out = `${res.stdout ?? ""}${res.stderr ?? ""}`.replace(/\x1b\[[0-9;]*m/g, "");
    // the report's PASSED section (its FAILED section lists every check with x0 on success)
    const summary = out.slice(out.lastIndexOf("├─ + PASSED")).split("└─ - FAILED")[0].trim();
    const ok = res.status === 0; // rv exits 1 when a property or invariant fails
    console.log(`rendezvous ${contract} ${type} (${runs} runs, ${Date.now() - started} ms): ${ok ? "ok" : "FAILED"}`);
    if (!ok) {
      failed++;
      console.log(out.split("\n").slice(-60).join("\n"));
    } else {
      console.log(summary.replace(/^/gm, "  "));
    }
  }
}
if (failed) process.exit(1);

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
    const summary = out.slice(out.lastIndexOf("├─ + PASSED")).split("\nLEGEND")[0].trim();
    const ok = res.status === 0 && !/FAILED\n(?:.*\n)*?.*: x[1-9]/.test(summary);
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

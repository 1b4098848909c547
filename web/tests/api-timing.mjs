#!/usr/bin/env node
// The API's own time for what the tablet does, without a browser: sign a break-glass request
// (the page's own functions), POST /v1/break-glass, then GET /fhir/Patient/{id}/$summary with the
// token; RUNS times, each with a new nonce. The reference beside the tablet's submit-to-data time
// (scripts/bench/tablet): what the page and the browser add is the difference.
//
// env: BASE_URL, CLINICIAN_KEY, PATIENT_ID, DATA_TYPES (comma list), optional RUNS (default 50),
// WAIT_MS (default 60000: how long to wait for the first read to be served, e.g. while the
// summary's hash is being recorded on chain).
// stdout: {"ok":true,"runs":N,"grant_and_read_ms":[...],"p50":..,"p95":..}
import { performance } from "node:perf_hooks";
import { Cl } from "@stacks/transactions";
import { signStructured } from "../src/lib.mjs";
import { breakGlassMessage, randomNonce, requestBody, summaryPath } from "../src/tablet-lib.mjs";

const env = process.env;
const base = env.BASE_URL.replace(/\/+$/, "");
const runs = Number(env.RUNS) || 50;
const dataTypes = env.DATA_TYPES.split(",");
const domain = Cl.tuple({ name: Cl.stringAscii("breakglass"), version: Cl.stringAscii("1"), "chain-id": Cl.uint(0x80000000) });

async function once() {
  const message = breakGlassMessage({
    patient: env.PATIENT_ID, dataTypes, reason: "benchmark: timing the API beside the tablet",
    nonce: randomNonce(), issuedAt: Math.floor(Date.now() / 1000),
  });
  const started = performance.now();
  const signature = signStructured(message, domain, env.CLINICIAN_KEY);
  const grant = await fetch(`${base}/v1/break-glass`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify(requestBody(message, signature, domain)),
  });
  const g = await grant.json();
  if (grant.status !== 201) return { status: grant.status, body: g };
  const read = await fetch(`${base}${summaryPath(env.PATIENT_ID)}`, {
    headers: { authorization: `Bearer ${g.access_token}`, accept: "application/fhir+json" },
  });
  const bundle = await read.json();
  return { status: read.status, body: bundle, ms: performance.now() - started };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

const deadline = Date.now() + (Number(env.WAIT_MS) || 60_000);
let first;
for (;;) {
  first = await once();
  if (first.status === 200 || Date.now() > deadline) break;
  await new Promise((r) => setTimeout(r, 1000));
}
if (first.status !== 200) {
  console.log(JSON.stringify({ ok: false, step: "first read", status: first.status, body: first.body }));
  process.exit(1);
}
const times = [];
for (let i = 0; i < runs; i++) {
  const r = await once();
  if (r.status !== 200) {
    console.log(JSON.stringify({ ok: false, step: `run ${i}`, status: r.status, body: r.body }));
    process.exit(1);
  }
  times.push(Math.round(r.ms * 10) / 10);
}
console.log(JSON.stringify({ ok: true, runs, grant_and_read_ms: times, p50: pct(times, 50), p95: pct(times, 95) }));

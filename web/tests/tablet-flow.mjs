#!/usr/bin/env node
// A clinician's break-glass flow on the tablet page in headless Chromium, against a running
// service: open /tablet, import the key under the PIN 246810, choose the data types, type the
// patient id and the reason, enter the PIN, submit, and wait for the summary. RUNS > 1 ends each
// access (#end) and submits a fresh request (a new nonce). EXPECT_GONE=yes then waits for the
// last window to close and checks that the summary was wiped and that the service refuses the
// old token (the token is taken from the /v1/break-glass response as it passes, never from the
// page).
//
// env: BASE_URL, CLINICIAN_KEY (hex), PATIENT_ID (64 hex), DATA_TYPES (comma list), REASON;
// optional RUNS (default 1), EXPECT_GONE ("yes"), DEVICE, THINK_MS (the pause between the PIN
// and the tap, default 250), CHROMIUM (default /usr/bin/chromium),
// OUT_DIR (a screenshot on failure), STEP_TIMEOUT_MS (default 30000), VIEWPORT (default 820x1180,
// a tablet).
// stdout: one JSON line, {"ok":true,"runs":N,"submit_to_data_ms":[...],"p50":..,"p95":..,
// "resource_types":[...],"text":"<#summary text>","gone":true|false,"read_after_window":<status>|null,
// "principal":..,"storage_keys":[...]} and exit 0, or {"ok":false,"step":..,"error":..,...} and exit 1.
// submit_to_data_ms is measured in the page: from the click on #submit to the summary rendered
// (the page's `breakglass:data` event).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";
import { launchOptions } from "./review-flow.mjs";

export const PIN = "246810";
const STORAGE_ALLOWED = ["breakglass.tablet.key", "breakglass.tablet.device"];

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The nearest-rank percentile (p in 0..100) of numbers; null for none. */
export function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

function required(env, name, pattern) {
  const value = env[name];
  if (value === undefined || value === "" || (pattern && !pattern.test(value))) {
    throw new Error(`env ${name} is ${value === undefined || value === "" ? "missing" : `not ${pattern}`}`);
  }
  return value;
}

/** Polls fn() until it returns a truthy value. */
async function until(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError.message})` : ""}`);
    }
    await wait(100);
  }
}

async function main(env = process.env) {
  let step = "env";
  let browser = null;
  let page = null;
  const consoleLines = [];
  try {
    const base = required(env, "BASE_URL", /^https?:\/\//).replace(/\/+$/, "");
    const key = required(env, "CLINICIAN_KEY", /^(0x)?[0-9a-fA-F]{64}([0-9a-fA-F]{2})?$/);
    const patientId = required(env, "PATIENT_ID", /^(0x)?[0-9a-fA-F]{64}$/).replace(/^0x/i, "").toLowerCase();
    const dataTypes = required(env, "DATA_TYPES", /^[a-z-]+(,[a-z-]+)*$/).split(",");
    const reason = required(env, "REASON");
    const runs = env.RUNS === undefined || env.RUNS === "" ? 1 : Number(env.RUNS);
    if (!Number.isInteger(runs) || runs < 1) throw new Error(`env RUNS is not a positive integer: ${env.RUNS}`);
    const expectGone = env.EXPECT_GONE === "yes";
    const stepTimeout = Number(env.STEP_TIMEOUT_MS) || 30_000;
    const [width, height] = (env.VIEWPORT || "820x1180").split("x").map(Number);

    step = "launch";
    browser = await puppeteer.launch(launchOptions(env));
    page = await browser.newPage();
    await page.setViewport({ width, height, hasTouch: true, isMobile: true });
    page.setDefaultTimeout(stepTimeout);
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`.slice(0, 300)));
    page.on("dialog", (d) => d.dismiss().catch(() => {}));
    // the grants as they pass (the page never exposes its token)
    const grants = [];
    page.on("response", async (response) => {
      const req = response.request();
      if (req.method() !== "POST" || new URL(response.url()).pathname !== "/v1/break-glass") return;
      const entry = { status: response.status(), body: null };
      grants.push(entry);
      try {
        entry.body = await response.json();
      } catch {
        // not JSON: left null
      }
    });

    step = "open";
    const response = await page.goto(`${base}/tablet`, { waitUntil: "load" });
    if (!response || !response.ok()) throw new Error(`GET /tablet answered ${response?.status()}`);
    await page.evaluate(() => {
      window.__tabletFlowData = [];
      document.addEventListener("breakglass:data", (e) => window.__tabletFlowData.push(e.detail.ms));
    });

    step = "import-key";
    await page.waitForSelector("#key-setup:not([hidden])", { visible: true });
    await page.type("#key", key);
    await page.type("#new-pin", PIN);
    await page.click("#import-key");
    await until(
      () => page.evaluate(() => !document.querySelector("#request").hidden || document.querySelector('#status[data-kind="error"]') !== null),
      stepTimeout,
      "#request shown",
    );
    const importError = await page.$eval("#status", (el) => (el.dataset.kind === "error" ? el.textContent : null));
    if (importError) throw new Error(`import refused: ${importError}`);
    if (!(await page.$eval("#key", (el) => el.value === ""))) throw new Error("the key was left in the textarea");

    step = "options";
    await until(
      () => page.evaluate(() => document.querySelector('#data-types input[name="data-type"]') !== null || document.querySelector('#status[data-kind="error"]')?.textContent),
      stepTimeout,
      "the data types",
    );
    const optionsError = await page.$eval("#status", (el) => (el.dataset.kind === "error" ? el.textContent : null));
    if (optionsError) throw new Error(`options: ${optionsError}`);
    const principal = (await page.$eval("#who", (el) => el.textContent.trim())).split(/\s/)[0];
    for (const d of dataTypes) {
      const box = await page.$(`#dt-${d}`);
      if (!box) throw new Error(`the page offers no data type ${d}`);
      if (await box.evaluate((el) => el.getAttribute("aria-disabled") === "true")) {
        const why = await page.evaluate((id) => document.getElementById(`${id}-note`)?.textContent ?? "", `dt-${d}`);
        throw new Error(`data type ${d} is not open to this clinician: ${why}`);
      }
    }
    if (await page.$eval("#submit", (el) => el.disabled)) throw new Error("#submit is disabled");

    const times = [];
    let text = "";
    let resourceTypes = [];
    for (let run = 1; run <= runs; run++) {
      step = `request ${run}`;
      await page.$eval("#patient", (el) => (el.value = ""));
      await page.type("#patient", patientId);
      for (const d of dataTypes) {
        if (!(await page.$eval(`#dt-${d}`, (el) => el.checked))) await page.click(`label[for="dt-${d}"]`);
      }
      await page.$eval("#reason", (el) => (el.value = ""));
      await page.type("#reason", reason);
      if (env.DEVICE !== undefined) {
        await page.$eval("#device", (el) => (el.value = ""));
        if (env.DEVICE) await page.type("#device", env.DEVICE);
      }
      await page.type("#pin", PIN);
      // a person lifts a finger from the PIN pad before tapping "Sign and open" (THINK_MS,
      // default 250): the page uses that moment to derive the PIN's key
      await wait(Number(env.THINK_MS ?? 250));
      const seen = await page.evaluate(() => window.__tabletFlowData.length);
      const grantsBefore = grants.length;
      await page.click("#submit");

      step = `data ${run}`;
      await until(
        () =>
          page.evaluate(
            (n) =>
              window.__tabletFlowData.length > n ||
              (!document.querySelector("#refusal").hidden && document.querySelector("#refusal").textContent) ||
              document.querySelector('#status[data-kind="error"]')?.textContent,
            seen,
          ),
        stepTimeout,
        "the summary",
      );
      const refused = await page.evaluate(() => {
        const r = document.querySelector("#refusal");
        return !r.hidden && r.textContent ? r.textContent : document.querySelector('#status[data-kind="error"]')?.textContent ?? null;
      });
      if (refused) throw new Error(`refused: ${refused}`);
      times.push(await page.evaluate(() => window.__tabletFlowData.at(-1)));
      const rendered = await page.evaluate(() => ({
        text: document.querySelector("#summary").innerText.trim(),
        types: [...document.querySelectorAll("#summary [data-resource-type]")].map((s) => s.dataset.resourceType),
        items: document.querySelectorAll("#summary li").length,
        countdown: document.querySelector("#countdown").textContent,
      }));
      if (rendered.items === 0) throw new Error(`the summary shows no resource: ${rendered.text}`);
      if (!/^Access ends in \d+:\d\d/.test(rendered.countdown)) throw new Error(`the countdown reads ${JSON.stringify(rendered.countdown)}`);
      text = rendered.text;
      resourceTypes = rendered.types;
      await until(() => grants.length > grantsBefore && grants.at(-1).body, 5000, "the grant's answer");
      if (run < runs) {
        step = `end ${run}`;
        await page.click("#end");
        await until(() => page.evaluate(() => document.querySelector("#summary").childElementCount === 0 && !document.querySelector("#request").hidden), stepTimeout, "the wipe after #end");
      }
    }

    const last = grants.at(-1)?.body ?? {};
    let gone = false;
    let readAfter = null;
    if (expectGone) {
      step = "window-closes";
      const expiresIn = Number(last.expires_in);
      if (!Number.isFinite(expiresIn)) throw new Error("the grant has no expires_in");
      await until(
        () => page.evaluate(() => document.querySelector("#summary").childElementCount === 0 && /window has closed/.test(document.querySelector("#status").textContent)),
        expiresIn * 1000 + stepTimeout,
        "the window to close",
      );
      gone = await page.evaluate(() => document.querySelector("#summary").childElementCount === 0 && document.querySelector("#summary").textContent === "");
      if (!gone) throw new Error("#summary still holds data after the window closed");

      step = "read-after-window";
      // the server's window may end a moment after the page's (it counts from its grant)
      await wait(1000);
      readAfter = await page.evaluate(
        async (path, token) => (await fetch(path, { headers: { Authorization: `Bearer ${token}`, Accept: "application/fhir+json" }, cache: "no-store" })).status,
        `/fhir/Patient/${patientId}/$summary`,
        last.access_token,
      );
      if (readAfter >= 200 && readAfter < 300) throw new Error(`the old token still reads the summary after the window (HTTP ${readAfter})`);
    } else {
      step = "end";
      await page.click("#end");
      await until(() => page.evaluate(() => document.querySelector("#summary").childElementCount === 0), stepTimeout, "the wipe after #end");
      gone = await page.evaluate(() => document.querySelector("#summary").textContent === "");
    }

    step = "storage";
    const stored = await page.evaluate(async () => ({
      local: Object.fromEntries(Object.keys(localStorage).map((k) => [k, localStorage.getItem(k)])),
      session: Object.keys(sessionStorage),
      workers: navigator.serviceWorker ? (await navigator.serviceWorker.getRegistrations()).length : 0,
    }));
    const storageKeys = Object.keys(stored.local);
    const extra = storageKeys.filter((k) => !STORAGE_ALLOWED.includes(k));
    if (extra.length || stored.session.length) throw new Error(`the page stored more than its key: ${[...extra, ...stored.session].join(", ")}`);
    if (Object.values(stored.local).some((v) => v.includes(patientId) || v.includes(reason))) throw new Error("the patient id or the reason is in localStorage");
    if (stored.workers > 0) throw new Error("the page registered a service worker");

    const rounded = times.map((t) => Math.round(t * 10) / 10);
    console.log(
      JSON.stringify({
        ok: true,
        runs,
        submit_to_data_ms: rounded,
        p50: percentile(rounded, 50),
        p95: percentile(rounded, 95),
        resource_types: resourceTypes,
        text,
        gone,
        read_after_window: readAfter,
        principal,
        storage_keys: storageKeys,
      }),
    );
    return 0;
  } catch (error) {
    const failure = { ok: false, step, error: String(error?.message ?? error) };
    if (page) {
      try {
        failure.url = page.url();
        failure.html = (await page.evaluate(() => document.body?.innerText ?? "")).slice(0, 2000);
      } catch (e) {
        failure.html = `(page text unavailable: ${e.message})`;
      }
      if (env.OUT_DIR) {
        try {
          mkdirSync(env.OUT_DIR, { recursive: true });
          failure.screenshot = join(env.OUT_DIR, `tablet-flow-${step.replace(/[^a-z0-9-]+/gi, "_")}.png`);
          await page.screenshot({ path: failure.screenshot, fullPage: true });
        } catch (e) {
          failure.screenshot_error = e.message;
        }
      }
    }
    if (consoleLines.length) failure.console = consoleLines.slice(-20);
    console.log(JSON.stringify(failure));
    return 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
}

export { main };

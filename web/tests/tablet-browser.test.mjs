// The tablet bundle (static/tablet.js) and its driver (tablet-flow.mjs) in headless Chromium
// against fake-tablet-service.mjs (the page under a strict CSP). Needs Chromium (web/setup
// installs it); BREAKGLASS_SKIP_BROWSER=1 skips.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { deserializeCV, signStructuredData } from "@stacks/transactions";
import puppeteer from "puppeteer-core";
import { principalOf } from "../src/lib.mjs";
import { ENDED_TEXT } from "../src/tablet-lib.mjs";
import { startFakeTabletService } from "./fake-tablet-service.mjs";
import { launchOptions } from "./review-flow.mjs";
import { PIN } from "./tablet-flow.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const KEY = "7287ba251d44a4d3fd9276c88ce34c5c52a038955511cccaf77e61068649c17801"; // a devnet account's (public test material)
const OTHER_KEY = "530d9f61984c888536871c6573073bdfc0058896dc1adfe9a6a10dfacadc209101";
const PATIENT = "5ca1ab1e".repeat(8);
const REASON = "Unconscious after a fall, GCS 7 — allergies before sedation";
const skip = process.env.BREAKGLASS_SKIP_BROWSER === "1" ? "BREAKGLASS_SKIP_BROWSER=1" : false;
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";

if (!skip && !existsSync(chromium)) {
  throw new Error(`Chromium is not at ${chromium}: run web/setup (it installs the Debian chromium package), set CHROMIUM, or BREAKGLASS_SKIP_BROWSER=1`);
}

const nurse = (key = KEY, status = "verified") => ({ [principalOf(key)]: { role: "nurse", status } });

function runFlow(env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(here, "tablet-flow.mjs")], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

function oneLine(run) {
  const lines = run.stdout.trim().split("\n");
  assert.equal(lines.length, 1, run.stdout + run.stderr);
  return JSON.parse(lines[0]);
}

let browser;
before(async () => {
  if (!skip) browser = await puppeteer.launch(launchOptions());
});
after(async () => {
  await browser?.close();
});

/** A tablet-sized page in a fresh context, with CSP violations and page errors collected. */
async function tabletPage(service, { setup } = {}) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 820, height: 1180, hasTouch: true, isMobile: true });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  await page.evaluateOnNewDocument(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  if (setup) await setup(page);
  await page.goto(`${service.url}/tablet`, { waitUntil: "load" });
  return { page, context, problems };
}

/**
 * The page's clocks (Date.now and performance.now) made to jump: `window.__jump(ms)` moves both
 * ms ahead at once, as if that time had passed (a wallet's prompt left open for minutes, without
 * the test waiting for them). The fake service's clock is moved as much by its shiftClock(ms).
 */
async function jumpingClocks(page) {
  await page.evaluateOnNewDocument(() => {
    let jumped = 0;
    const wall = Date.now.bind(Date);
    const monotonic = performance.now.bind(performance);
    Date.now = () => wall() + jumped;
    performance.now = () => monotonic() + jumped;
    window.__jump = (ms) => {
      jumped += ms;
    };
  });
}

/** The statuses #status shows from now on, in window.__statuses. */
async function recordStatuses(page) {
  await page.evaluate(() => {
    window.__statuses = [];
    const status = document.querySelector("#status");
    new MutationObserver(() => window.__statuses.push(status.textContent)).observe(status, { childList: true, characterData: true, subtree: true });
  });
}

/** Until a submit has ended: access granted, refused, or an error in #status. */
async function settled(page) {
  await page.waitForFunction(() => {
    const status = document.querySelector("#status").dataset.kind;
    return document.querySelector("#end")?.hidden === false || document.querySelector("#refusal")?.hidden === false || status === "error";
  });
}

async function importKey(page, key = KEY) {
  await page.waitForSelector("#key-setup:not([hidden])");
  await page.type("#key", key);
  await page.type("#new-pin", PIN);
  await page.click("#import-key");
  await page.waitForSelector("#request:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#status").dataset.kind !== "busy");
}

async function fill(page, { patient = PATIENT, dataTypes = ["allergies"], reason = REASON, pin = PIN } = {}) {
  await page.$eval("#patient", (el) => (el.value = ""));
  await page.type("#patient", patient);
  for (const d of dataTypes) await page.click(`label[for="dt-${d}"]`);
  await page.$eval("#reason", (el) => (el.value = ""));
  if (reason) await page.type("#reason", reason);
  if (pin) await page.type("#pin", pin);
}

test("tablet-flow.mjs: two runs (a fresh nonce each, #end between), submit-to-data timings, the summary's text", { skip, timeout: 120_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  try {
    const run = await runFlow({
      BASE_URL: service.url,
      CLINICIAN_KEY: `0x${KEY.slice(0, 64)}`,
      PATIENT_ID: PATIENT,
      DATA_TYPES: "allergies,blood-type,medications",
      REASON,
      RUNS: "2",
      DEVICE: "ward-7-tablet",
    });
    const result = oneLine(run);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.equal(result.ok, true);
    assert.equal(result.runs, 2);
    assert.equal(result.submit_to_data_ms.length, 2);
    for (const ms of result.submit_to_data_ms) assert.ok(ms > 0 && ms < 30_000, String(ms));
    assert.ok(result.p50 <= result.p95);
    assert.deepEqual(result.resource_types, ["AllergyIntolerance", "Observation", "MedicationStatement", "MedicationRequest"]);
    assert.match(result.text, /^Allergies and intolerances\nPenicillin G \(pénicilline\) — criticality high/);
    assert.match(result.text, /Blood type: O Rh\(D\) positive/);
    assert.equal(result.gone, true);
    assert.equal(result.read_after_window, null);
    assert.equal(result.principal, principalOf(KEY));
    assert.deepEqual(result.storage_keys.sort(), ["breakglass.tablet.device", "breakglass.tablet.key"]);

    const { grants, refusals, reads, bodies } = service.state;
    assert.deepEqual(refusals, []);
    assert.equal(grants.length, 2);
    assert.notEqual(grants[0].nonce, grants[1].nonce);
    for (const g of grants) {
      assert.equal(g.signer, principalOf(KEY));
      assert.equal(g.patient, PATIENT);
      assert.deepEqual([...g.dataTypes].sort(), ["allergies", "blood-type", "medications"]);
      assert.equal(g.reason, REASON);
      assert.equal(g.device, "ward-7-tablet");
      assert.ok(Math.abs(g.issuedAt - Date.now() / 1000) < 120);
      assert.ok(BigInt(g.nonce) < 2n ** 53n);
    }
    for (const b of bodies) {
      assert.deepEqual(Object.keys(b), ["message", "signature", "domain"]);
      assert.equal(b.domain, service.domainHex);
      assert.equal(deserializeCV(b.message.slice(2)).type, "tuple");
    }
    assert.deepEqual(reads.map((r) => [r.status, r.accept]), [[200, "application/fhir+json"], [200, "application/fhir+json"]]);
  } finally {
    await service.close();
  }
});

test("tablet-flow.mjs EXPECT_GONE=yes: a 3 s window closes, the summary is wiped and the old token is refused", { skip, timeout: 120_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse(), windowSeconds: 3 });
  try {
    const run = await runFlow({
      BASE_URL: service.url,
      CLINICIAN_KEY: KEY,
      PATIENT_ID: `0x${PATIENT}`,
      DATA_TYPES: "advance-directives,problems",
      REASON: "Cardiac arrest: is there a DNR order?",
      EXPECT_GONE: "yes",
    });
    const result = oneLine(run);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.equal(result.ok, true);
    assert.deepEqual(result.resource_types, ["Condition", "Consent", "DocumentReference"]);
    assert.match(result.text, /Do not resuscitate \(DNR\) — active/);
    assert.equal(result.gone, true);
    assert.equal(result.read_after_window, 401);
    assert.deepEqual(service.state.reads.map((r) => r.status), [200, 401]);
    assert.deepEqual(result.storage_keys, ["breakglass.tablet.key"], "no device name given: none stored");
  } finally {
    await service.close();
  }
});

test("tablet-flow.mjs reports a data type the clinician may not open as a failure on the options step", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  try {
    const run = await runFlow({ BASE_URL: service.url, CLINICIAN_KEY: KEY, PATIENT_ID: PATIENT, DATA_TYPES: "allergies,lab-results", REASON, STEP_TIMEOUT_MS: "5000" });
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const result = oneLine(run);
    assert.equal(result.ok, false);
    assert.equal(result.step, "options");
    assert.match(result.error, /lab-results is not open to this clinician: role nurse may not open lab-results/);
    assert.deepEqual(service.state.grants, []);
  } finally {
    await service.close();
  }
});

test("tablet page: touch targets, labels and reasons of refused data types, the scan button only with a BarcodeDetector, under a strict CSP", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const { page, context, problems } = await tabletPage(service);
  try {
    assert.equal(await page.$eval("#request", (el) => el.hidden), true);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "key");
    // a short PIN is refused before anything is stored
    await page.type("#key", KEY);
    await page.type("#new-pin", "12345\n");
    await page.waitForSelector('#status[data-kind="error"]');
    assert.match(await page.$eval("#status", (el) => el.textContent), /at least 6 digits/);
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    await page.$eval("#new-pin", (el) => (el.value = ""));
    await page.type("#new-pin", PIN);
    await page.click("#import-key");
    await page.waitForSelector('#data-types input[name="data-type"]');
    await page.waitForFunction(() => !document.querySelector("#submit").disabled);
    assert.equal(await page.$eval("#key", (el) => el.value), "");
    assert.equal(await page.$eval("#who", (el) => el.textContent), `${principalOf(KEY)} — nurse (verified)`);

    const layout = await page.evaluate(() => {
      const box = (el) => {
        const r = el.getBoundingClientRect();
        return { id: el.id || el.htmlFor || el.tagName, w: r.width, h: r.height };
      };
      const visible = [...document.querySelectorAll("#request button, #request input, #request textarea, #data-types label")].filter((el) => el.offsetParent !== null);
      const rows = [...document.querySelectorAll('#data-types input[name="data-type"]')].map((input) => ({
        value: input.value,
        id: input.id,
        disabled: input.getAttribute("aria-disabled") === "true",
        focusable: !input.disabled && input.tabIndex >= 0,
        label: document.querySelector(`label[for="${input.id}"]`)?.textContent,
        described: input.getAttribute("aria-describedby") ? document.getElementById(input.getAttribute("aria-describedby"))?.textContent : null,
      }));
      return {
        targets: visible.filter((el) => !(el.type === "checkbox")).map(box),
        rows,
        scanHidden: document.querySelector("#scan").hidden,
        hasDetector: typeof window.BarcodeDetector === "function",
        countdownRole: document.querySelector("#countdown").getAttribute("role"),
      };
    });
    for (const t of layout.targets) assert.ok(t.h >= 44 && t.w >= 44, `${t.id} is ${t.w}×${t.h}`);
    assert.ok(layout.targets.some((t) => t.id === "dt-allergies"), "the data types' labels are the touch targets");
    const byValue = Object.fromEntries(layout.rows.map((r) => [r.value, r]));
    assert.equal(layout.rows.length, 12);
    assert.deepEqual(byValue.allergies, { value: "allergies", id: "dt-allergies", disabled: false, focusable: true, label: "Allergies", described: "opens for 60 min" });
    assert.deepEqual(byValue["lab-results"], {
      value: "lab-results",
      id: "dt-lab-results",
      disabled: true,
      focusable: true,
      label: "Lab results",
      described: "role nurse may not open lab-results (no policy permits it)",
    });
    // a refused data type is reached by the keyboard (its reason read with it), and neither a
    // key nor a tap checks it
    await page.focus("#dt-lab-results");
    await page.keyboard.press("Tab");
    await page.keyboard.down("Shift");
    await page.keyboard.press("Tab");
    await page.keyboard.up("Shift");
    assert.equal(await page.evaluate(() => document.activeElement?.id), "dt-lab-results", "Tab and Shift+Tab pass through it");
    await page.keyboard.press("Space");
    await page.click('label[for="dt-lab-results"]');
    assert.equal(await page.$eval("#dt-lab-results", (el) => el.checked), false);
    assert.equal(layout.scanHidden, !layout.hasDetector);

    // the reason is required: refused in the page, the focus on #status, nothing sent
    await fill(page, { dataTypes: ["allergies"], reason: "" });
    await page.click("#submit");
    await page.waitForSelector('#status[data-kind="error"]');
    assert.match(await page.$eval("#status", (el) => el.textContent), /reason is required/);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "status");
    assert.equal(await page.$eval("#pin", (el) => el.value), "", "the PIN is cleared after each attempt");
    // a wrong PIN
    await page.type("#reason", REASON);
    await page.type("#pin", "135790");
    await page.click("#submit");
    await page.waitForFunction(() => /Wrong PIN/.test(document.querySelector("#status").textContent));
    assert.equal(await page.evaluate(() => document.activeElement?.id), "status");
    assert.deepEqual(service.state.bodies, []);
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: a refused grant and a refused read show in #refusal (role=alert, focused); #end and the window wipe the data", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const { page, context, problems } = await tabletPage(service);
  try {
    await importKey(page);
    // refused (429, Retry-After): the sentence, the code, the form kept for another try
    service.refuseNext({ status: 429, code: "rate-limited", title: "Too many requests", detail: "this clinician sent too many requests; try again shortly", headers: { "Retry-After": "5" } });
    await fill(page, { dataTypes: ["allergies", "immunizations"] });
    await page.click("#submit");
    await page.waitForSelector("#refusal:not([hidden])");
    const refused = await page.evaluate(() => ({
      text: document.querySelector("#refusal").textContent,
      code: document.querySelector("#refusal code")?.textContent,
      focus: document.activeElement?.id,
      result: document.querySelector("#result").hidden,
      request: document.querySelector("#request").hidden,
      summary: document.querySelector("#summary").childElementCount,
      end: document.querySelector("#end").hidden,
      patient: document.querySelector("#patient").value,
      reason: document.querySelector("#reason").value,
    }));
    assert.equal(refused.text, "Access refused: Too many requests. This clinician sent too many requests; try again shortly. You may try again in 5 s. (code: rate-limited)");
    assert.equal(refused.code, "rate-limited");
    assert.equal(refused.focus, "refusal");
    assert.deepEqual([refused.result, refused.request, refused.summary, refused.end], [false, false, 0, true]);
    assert.equal(refused.patient, PATIENT);
    assert.equal(refused.reason, REASON);

    // granted, but the read is refused: shown the same way, the countdown runs, #end ends it
    service.refuseReadNext({ status: 502, code: "vault-unavailable", title: "Vault unavailable", detail: "the record store did not answer" });
    await page.type("#pin", PIN);
    await page.click("#submit");
    await page.waitForFunction(() => /could not be read/.test(document.querySelector("#refusal").textContent));
    assert.match(await page.$eval("#refusal", (el) => el.textContent), /the record store did not answer\. \(code: vault-unavailable\)$/i);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "refusal");
    assert.match(await page.$eval("#countdown", (el) => el.textContent), /^Access ends in (1:00:00|59:\d\d)$/);
    assert.equal(await page.$eval("#countdown", (el) => el.getAttribute("aria-live")), "off");
    assert.equal(await page.$eval("#reason", (el) => el.value), "", "the reason does not stay on screen once sent");
    await page.click("#end");
    await page.waitForFunction((t) => document.querySelector("#status").textContent === t, {}, ENDED_TEXT);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "status");

    // granted and read: the summary, then #end wipes it and resets the form
    await fill(page, { dataTypes: ["allergies", "blood-type"] });
    await page.click("#submit");
    await page.waitForSelector("#summary li");
    const shown = await page.evaluate(() => ({
      groups: [...document.querySelectorAll("#summary section")].map((s) => [s.dataset.resourceType, s.querySelector("h3").textContent, s.getAttribute("aria-labelledby") === s.querySelector("h3").id]),
      focus: document.activeElement?.id,
      request: document.querySelector("#request").hidden,
      end: document.querySelector("#end").hidden,
      status: document.querySelector("#status").textContent,
    }));
    assert.deepEqual(shown.groups, [["AllergyIntolerance", "Allergies and intolerances", true], ["Observation", "Observations", true]]);
    assert.deepEqual([shown.focus, shown.request, shown.end], ["summary", true, false]);
    assert.equal(shown.status, "Showing 3 records.");
    await page.click("#end");
    await page.waitForFunction(() => document.querySelector("#summary").childElementCount === 0);
    const closed = await page.evaluate(() => ({
      status: document.querySelector("#status").textContent,
      result: document.querySelector("#result").hidden,
      patient: document.querySelector("#patient").value,
      checked: document.querySelectorAll('input[name="data-type"]:checked').length,
      storage: Object.keys(localStorage),
      html: document.body.innerHTML,
    }));
    assert.equal(closed.status, ENDED_TEXT);
    assert.deepEqual([closed.result, closed.patient, closed.checked], [true, "", 0]);
    assert.deepEqual(closed.storage, ["breakglass.tablet.key"]);
    assert.ok(!/Penicillin|O Rh/.test(closed.html), "nothing of the record is left in the DOM");

    // a summary the server says is not the newest (the one before an update still being
    // recorded): its note is shown first, where the focus lands, and the status points to it
    const NOTE = "this is the patient's previous summary: a newer one was imported and is still being recorded";
    service.noteNextSummary(NOTE);
    await fill(page, { dataTypes: ["allergies"] });
    await page.click("#submit");
    await page.waitForSelector("#summary li");
    const noted = await page.evaluate(() => ({
      first: document.querySelector("#summary").firstElementChild?.className,
      text: document.querySelector("#summary .summary-note")?.textContent,
      visible: (document.querySelector("#summary .summary-note")?.getBoundingClientRect().height ?? 0) > 0,
      focus: document.activeElement?.id,
      status: document.querySelector("#status").textContent,
    }));
    assert.deepEqual(noted, { first: "summary-note", text: `Note: ${NOTE}`, visible: true, focus: "summary", status: "Showing 2 records. Read the note above the records first." });
    await page.click("#end");
    await page.waitForFunction(() => document.querySelector("#summary").childElementCount === 0);
    assert.deepEqual(service.state.refusals, ["rate-limited", "vault-unavailable"]);
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: a clinician without a verified role cannot submit, and the page says why", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse(KEY, "suspended") });
  const { page, context } = await tabletPage(service);
  try {
    await importKey(page);
    await page.waitForSelector('#status[data-kind="error"]');
    assert.match(await page.$eval("#status", (el) => el.textContent), /Your provider status is "suspended", not verified/);
    assert.equal(await page.$eval("#submit", (el) => el.disabled), true);
    // an unknown key
    await page.evaluate(() => localStorage.clear());
    await page.reload({ waitUntil: "load" });
    await importKey(page, OTHER_KEY);
    await page.waitForFunction(() => /not a registered provider/.test(document.querySelector("#status").textContent));
    assert.equal(await page.$eval("#submit", (el) => el.disabled), true);
    assert.equal(await page.$eval("#who", (el) => el.textContent), `${principalOf(OTHER_KEY)} — no provider role (unknown)`);
    assert.deepEqual(service.state.bodies, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page (the service's own template and stylesheet): a wrong tablet clock, a lost grant answer, a read that failed, the key's removal", { skip, timeout: 90_000 }, async () => {
  // the service's clock 5 minutes ahead of this tablet's: requests are dated by the service's
  const service = await startFakeTabletService({ clinicians: nurse(), clockMs: 5 * 60_000, realPage: true });
  service.closeConnections(true);
  const { page, context, problems } = await tabletPage(service);
  try {
    await importKey(page);
    assert.match(await page.$eval("#who", (el) => el.textContent), /This tablet's clock is 5 min behind: requests are dated by the service's clock\./);
    // the stylesheet shows "Sign and open" as not pressable until it may sign
    const grey = await page.$eval("#submit", (el) => {
      el.disabled = true;
      const off = getComputedStyle(el).backgroundColor;
      el.disabled = false;
      return [off, getComputedStyle(el).backgroundColor];
    });
    assert.notEqual(grey[0], grey[1], `disabled and enabled look alike: ${grey}`);

    // the grant's answer lost: the same signed request sent again once; granted already, so
    // the page says the answer was lost (not a replay by someone else) and what to do. Every
    // connection closed after its answer: the browser does not send it again by itself (it
    // does so on a kept-alive connection), the page does
    service.dropNextGrantAnswer();
    await fill(page, { dataTypes: ["allergies"] });
    await page.evaluate(() => {
      window.__statuses = [];
      new MutationObserver(() => window.__statuses.push(document.querySelector("#status").textContent)).observe(document.querySelector("#status"), { childList: true, characterData: true, subtree: true });
    });
    await page.click("#submit");
    await page.waitForSelector("#refusal:not([hidden])");
    const lost = await page.$eval("#refusal", (el) => el.textContent);
    assert.match(lost, /reached the service, and may have been granted, but its answer was lost/, lost);
    assert.match(lost, /Sign again to open the record: if the first was granted, a second access is recorded/, lost);
    assert.equal(service.state.grants.length, 1, "granted once");
    assert.equal(service.state.bodies.length, 2);
    assert.deepEqual(service.state.bodies[0], service.state.bodies[1], "sent again as signed, not signed anew");
    assert.ok((await page.evaluate(() => window.__statuses)).includes("The connection dropped: sending the same request again…"), "the page sent it again");
    service.closeConnections(false);
    // (and it was dated by the service's clock: accepted, 5 minutes from the tablet's)
    assert.ok(Math.abs(service.state.grants[0].issuedAt - (Date.now() + 5 * 60_000) / 1000) < 30);

    // granted, the read's connection cut: "Read the record again" reads with the same token
    service.dropReads(true);
    await page.type("#pin", PIN); // the form as it was: a new request, signed anew
    await page.click("#submit");
    await page.waitForSelector("#read-again:not([hidden])");
    service.dropReads(false);
    assert.match(await page.$eval("#refusal", (el) => el.textContent), /could not be reached[\s\S]*code: network-error/);
    const touch = await page.$eval("#read-again", (el) => el.getBoundingClientRect().height);
    assert.ok(touch >= 44, `${touch}`);
    await page.click("#read-again");
    await page.waitForSelector("#summary li");
    assert.equal(await page.$eval("#read-again", (el) => el.hidden), true);
    assert.equal(service.state.grants.length, 2, "no second access for the second read");
    const reads = service.state.reads.map((r) => r.status);
    assert.deepEqual([reads.at(-1), reads.slice(0, -1).every((r) => r === 0)], [200, true], `${reads}`);
    await page.click("#end");
    await page.waitForFunction(() => document.querySelector("#summary").childElementCount === 0);
    // granted again: dated by the service's clock as its last answer (a grant's) gave it
    await fill(page, { dataTypes: ["allergies"] });
    await page.click("#submit");
    await page.waitForSelector("#summary li");
    assert.equal(service.state.grants.length, 3);
    await page.click("#end");
    await page.waitForFunction(() => document.querySelector("#summary").childElementCount === 0);
    assert.equal(await page.$eval("#pin", (el) => el.getAttribute("autocomplete")), "one-time-code");

    // the key is removed only by a second tap
    await page.click("#forget-key");
    assert.deepEqual(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.includes("key"))), ["breakglass.tablet.key"]);
    assert.match(await page.$eval("#forget-key", (el) => el.textContent), /Tap again/);
    await page.click("#forget-key");
    await page.waitForSelector("#key-setup:not([hidden])");
    assert.deepEqual(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.includes("key"))), []);
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: a PIN typed and left is cleared after the page's idle time, and when the page is hidden", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse(), pinIdleMs: 1500 });
  const { page, context, problems } = await tabletPage(service);
  try {
    await importKey(page);
    await page.type("#pin", PIN);
    await page.waitForFunction(() => document.querySelector("#pin").value === "", { timeout: 10_000 });
    assert.match(await page.$eval("#status", (el) => el.textContent), /The PIN was cleared after 2 s unused/);
    // hidden at once after typing (well within the idle time): cleared by that, silently
    const hidden = await page.evaluate(async () => {
      const pin = document.querySelector("#pin");
      document.querySelector("#status").textContent = "";
      pin.focus();
      for (const d of "123456") {
        pin.value += d;
        pin.dispatchEvent(new Event("input"));
      }
      const typed = pin.value;
      Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
      return { typed, after: pin.value, status: document.querySelector("#status").textContent };
    });
    assert.deepEqual([hidden.typed, hidden.after], ["123456", ""]);
    assert.doesNotMatch(hidden.status, /cleared after/, "cleared by the hiding, not the idle time");
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: #scan opens the rear camera, fills #patient from the first QR code that is a patient id, and stops the camera", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const { page, context, problems } = await tabletPage(service, {
    setup: (p) =>
      p.evaluateOnNewDocument((patient) => {
        window.__scan = { constraints: null, tracks: [], detects: 0 };
        window.BarcodeDetector = class {
          constructor(options) {
            window.__scan.formats = options?.formats;
          }
          async detect() {
            window.__scan.detects += 1;
            if (window.__scan.detects === 1) return [];
            if (window.__scan.detects === 2) return [{ rawValue: "https://example.org/not-a-patient" }];
            return [{ rawValue: "https://example.org/not-a-patient" }, { rawValue: `0x${patient.toUpperCase()}` }];
          }
        };
        Object.defineProperty(navigator, "mediaDevices", {
          value: {
            async getUserMedia(constraints) {
              window.__scan.constraints = constraints;
              const canvas = document.createElement("canvas");
              canvas.width = 64;
              canvas.height = 64;
              canvas.getContext("2d").fillRect(0, 0, 64, 64);
              const stream = canvas.captureStream(5);
              window.__scan.tracks = stream.getTracks();
              return stream;
            },
          },
        });
      }, PATIENT),
  });
  try {
    await importKey(page);
    assert.equal(await page.$eval("#scan", (el) => el.hidden), false);
    await page.click("#scan");
    await page.waitForFunction(() => document.querySelector("#patient").value !== "");
    const scan = await page.evaluate(() => ({
      patient: document.querySelector("#patient").value,
      constraints: window.__scan.constraints,
      formats: window.__scan.formats,
      ended: window.__scan.tracks.map((t) => t.readyState),
      video: document.querySelector("#scanner").hidden,
      src: document.querySelector("#scanner").srcObject,
      status: document.querySelector("#status").textContent,
      pressed: document.querySelector("#scan").getAttribute("aria-pressed"),
    }));
    assert.equal(scan.patient, PATIENT);
    assert.deepEqual(scan.constraints, { video: { facingMode: "environment" }, audio: false });
    assert.deepEqual(scan.formats, ["qr_code"]);
    assert.deepEqual(scan.ended, ["ended"]);
    assert.deepEqual([scan.video, scan.src, scan.pressed], [true, null, "false"]);
    assert.equal(scan.status, "Patient id scanned.");
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: with a Stacks wallet and no stored key, the wallet gives the principal and signs; nothing is stored", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const calls = [];
  const { page, context, problems } = await tabletPage(service, {
    setup: async (p) => {
      await p.exposeFunction("__walletSign", (message, domain) =>
        signStructuredData({ message: deserializeCV(message), domain: deserializeCV(domain), privateKey: KEY }),
      );
      await p.exposeFunction("__walletCall", (method) => calls.push(method));
      await p.evaluateOnNewDocument((address) => {
        window.LeatherProvider = {
          async request(method, params) {
            await window.__walletCall(method);
            if (method === "stx_getAddresses") return { jsonrpc: "2.0", result: { addresses: [{ symbol: "STX", address }] } };
            if (method === "stx_signStructuredMessage") return { jsonrpc: "2.0", result: { signature: await window.__walletSign(params.message, params.domain), publicKey: "" } };
            return { jsonrpc: "2.0", error: { code: -32601, message: "unknown method" } };
          },
        };
      }, principalOf(KEY));
    },
  });
  try {
    await page.waitForSelector("#use-wallet");
    await page.click("#use-wallet");
    await page.waitForSelector("#request:not([hidden])");
    assert.equal(await page.$eval("#pin", (el) => el.hidden), true);
    assert.equal(await page.$eval('label[for="pin"]', (el) => el.hidden), true);
    await page.waitForFunction(() => !document.querySelector("#submit").disabled);
    await fill(page, { dataTypes: ["medications"], pin: null });
    await page.click("#submit");
    await page.waitForSelector("#summary li");
    assert.deepEqual(calls, ["stx_getAddresses", "stx_signStructuredMessage"]);
    assert.equal(service.state.grants[0].signer, principalOf(KEY));
    assert.deepEqual(await page.evaluate(() => Object.keys(localStorage)), []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: a request the wallet approved too late to be accepted is not sent; the wallet is asked once more, for a fresh one, then the clinician is told to tap again", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const calls = [];
  const signed = []; // the issued-at of each message the wallet signed
  const approvals = []; // how long each approval takes, in turn (ms; the clocks jump as much)
  const { page, context, problems } = await tabletPage(service, {
    setup: async (p) => {
      await jumpingClocks(p);
      await p.exposeFunction("__walletSign", async (message, domain) => {
        const took = approvals.shift() ?? 0;
        service.shiftClock(took);
        const cv = deserializeCV(message);
        signed.push(Number(cv.value["issued-at"].value));
        return { took, signature: await signStructuredData({ message: cv, domain: deserializeCV(domain), privateKey: KEY }) };
      });
      await p.exposeFunction("__walletCall", (method) => calls.push(method));
      await p.evaluateOnNewDocument((address) => {
        window.LeatherProvider = {
          async request(method, params) {
            await window.__walletCall(method);
            if (method === "stx_getAddresses") return { jsonrpc: "2.0", result: { addresses: [{ symbol: "STX", address }] } };
            if (method === "stx_signStructuredMessage") {
              const { took, signature } = await window.__walletSign(params.message, params.domain);
              window.__jump(took); // the prompt stayed open this long
              return { jsonrpc: "2.0", result: { signature, publicKey: "" } };
            }
            return { jsonrpc: "2.0", error: { code: -32601, message: "unknown method" } };
          },
        };
      }, principalOf(KEY));
    },
  });
  const SIGN = "stx_signStructuredMessage";
  try {
    await page.waitForSelector("#use-wallet");
    await page.click("#use-wallet");
    await page.waitForSelector("#request:not([hidden])");
    await page.waitForFunction(() => !document.querySelector("#submit").disabled);
    await fill(page, { dataTypes: ["medications"], pin: null });
    await recordStatuses(page);

    // approved after 70 s (the service takes a request 60 s off its clock): not sent; the wallet
    // asked at once for a request dated anew, approved in a moment, granted
    approvals.push(70_000, 0);
    await page.click("#submit");
    await settled(page);
    assert.deepEqual(service.state.refusals, [], "no stale request was sent");
    assert.deepEqual(calls, ["stx_getAddresses", SIGN, SIGN]);
    assert.equal(service.state.bodies.length, 1, "only the fresh request was sent");
    await page.waitForSelector("#summary li");
    assert.equal(service.state.grants[0].issuedAt, signed[1], "the second message was sent");
    assert.ok(signed[1] - signed[0] >= 70, `dated anew: ${signed}`);
    const statuses = await page.evaluate(() => window.__statuses);
    const asked = statuses.find((t) => /wallet's approval/.test(t));
    assert.match(
      asked ?? statuses.join(" | "),
      /^The wallet's approval took 1 min 1[01] s: too long for the service to accept the request \(it must be approved within 45 s\), so it was not sent\. The wallet is asking again, for a fresh request: approve it now\.$/,
    );
    await page.click("#end");
    await page.waitForFunction(() => document.querySelector("#summary").childElementCount === 0);

    // both approvals too late: nothing sent, the wallet not asked a third time, and the
    // clinician told to tap again
    await fill(page, { dataTypes: ["medications"], pin: null });
    await recordStatuses(page);
    approvals.push(70_000, 120_000);
    await page.click("#submit");
    await settled(page);
    assert.equal(service.state.bodies.length, 1, "no stale request was sent");
    assert.deepEqual(calls.slice(3), [SIGN, SIGN]);
    const told = await page.evaluate(() => ({
      status: document.querySelector("#status").textContent,
      focused: document.activeElement?.id,
      statuses: window.__statuses,
      submit: document.querySelector("#submit").disabled,
      refusal: document.querySelector("#refusal").hidden,
    }));
    assert.ok(told.statuses.some((t) => /The wallet is asking again, for a fresh request/.test(t)), told.statuses.join(" | "));
    assert.match(
      told.status,
      /^The wallet's approval took too long again \(2 min( \d s)?; a request must be approved within 45 s\), so it was not sent\. Tap "Open the record" again to sign a fresh request, and approve it in the wallet within 45 s\.$/,
    );
    assert.deepEqual([told.focused, told.submit, told.refusal], ["status", false, true]);

    // tapped again, approved in time: granted
    await page.click("#submit");
    await settled(page);
    await page.waitForSelector("#summary li");
    assert.deepEqual(calls.slice(5), [SIGN]);
    assert.equal(service.state.bodies.length, 2);
    assert.equal(service.state.grants.length, 2);
    assert.deepEqual(service.state.refusals, []);
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

test("tablet page: a request whose connection dropped is not sent again once it is too old for the service (45 s)", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeTabletService({ clinicians: nurse() });
  const { page, context, problems } = await tabletPage(service, { setup: jumpingClocks });
  try {
    await importKey(page);
    await fill(page);
    await page.setRequestInterception(true);
    const posts = [];
    page.on("request", async (request) => {
      if (request.method() !== "POST") return request.continue();
      posts.push(request.postData());
      // the connection drops 50 s after the request was sent (the clocks jump as much)
      await page.evaluate(() => window.__jump(50_000));
      service.shiftClock(50_000);
      return request.abort("connectionreset");
    });
    await recordStatuses(page);
    await page.click("#submit");
    await page.waitForFunction(() => document.querySelector("#status").dataset.kind === "error");
    assert.match(await page.$eval("#status", (el) => el.textContent), /could not be reached/);
    assert.equal(posts.length, 1, "not sent again");
    assert.ok(!(await page.evaluate(() => window.__statuses)).some((t) => /sending the same request again/.test(t)));
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await service.close();
  }
});

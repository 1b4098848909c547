// The bundle (static/review.js) and the driver (review-flow.mjs) in headless Chromium against
// fake-service.mjs. Needs Chromium (web/setup installs it); BREAKGLASS_SKIP_BROWSER=1 skips.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { principalOf } from "../src/lib.mjs";
import { startFakeService } from "./fake-service.mjs";
import { PASSPHRASE, launchOptions } from "./review-flow.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const KEY = "7287ba251d44a4d3fd9276c88ce34c5c52a038955511cccaf77e61068649c17801"; // a devnet account's (public test material)
const ACCESS_ID = "c0ffee".padEnd(64, "0");
const NOTE = "Paged at 02:10, patient unconscious.\nChecked allergies — pénicilline.\n\nNo follow-up.";
const skip = process.env.BREAKGLASS_SKIP_BROWSER === "1" ? "BREAKGLASS_SKIP_BROWSER=1" : false;
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";

if (!skip && !existsSync(chromium)) {
  throw new Error(`Chromium is not at ${chromium}: run web/setup (it installs the Debian chromium package), set CHROMIUM, or BREAKGLASS_SKIP_BROWSER=1`);
}

function runFlow(env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(here, "review-flow.mjs")], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

let browser;
before(async () => {
  if (!skip) browser = await puppeteer.launch(launchOptions());
});
after(async () => {
  await browser?.close();
});

test("Chromium launches headless with the driver's flags and runs a trivial page", { skip }, async () => {
  const page = await browser.newPage();
  await page.goto("data:text/html,<title>smoke</title><p id=x>ok</p>");
  assert.equal(await page.title(), "smoke");
  assert.equal(await page.$eval("#x", (el) => el.textContent), "ok");
  assert.match(await browser.version(), /Chrom/);
  await page.close();
});

test("review-flow.mjs: key import, sign-in, verdict with the note as CRLF, confirmation", { skip, timeout: 120_000 }, async () => {
  const service = await startFakeService({ reviewer: principalOf(KEY), accessId: ACCESS_ID, confirmAfterMs: 3000 });
  try {
    const run = await runFlow({ BASE_URL: service.url, REVIEWER_KEY: `0x${KEY.slice(0, 64)}`, ACCESS_ID, VERDICT: "needs-follow-up", NOTE });
    const lines = run.stdout.trim().split("\n");
    assert.equal(lines.length, 1, run.stdout + run.stderr);
    const result = JSON.parse(lines[0]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.equal(result.ok, true);
    assert.deepEqual(result.steps, ["launch", "open-review", "import-key", "sign-in", "queue", "verdict", "confirmed"]);
    assert.equal(result.principal, principalOf(KEY));
    assert.deepEqual(service.state.signIns, [principalOf(KEY)]);
    assert.deepEqual(service.state.refusals, []);
    const [verdict] = service.state.verdicts;
    assert.equal(verdict.verdict, "needs-follow-up");
    assert.equal(verdict.note, NOTE.replace(/\n/g, "\r\n"), "Chromium submits the textarea with CRLF");
    assert.equal(verdict.noteHash, result.note_hash);
    assert.equal(verdict.noteSalt, result.note_salt);
    assert.notEqual(verdict.noteHash, createHash("sha256").update(verdict.note).digest("hex"), "the hash is salted");
    assert.match(verdict.contentType, /^application\/x-www-form-urlencoded/);
    assert.deepEqual(verdict.fieldNames.sort(), ["csrf", "note", "note_salt", "signature", "verdict"]);
    // the page was reloaded while the review was pending
    const states = service.state.chainStates.filter((s) => s.startsWith("Review"));
    assert.ok(states.length >= 2 && states[0] === "Review: pending" && states.at(-1) === "Review: confirmed", states.join(", "));
  } finally {
    await service.close();
  }
});

test("review-flow.mjs reports a failure as one JSON line with the step, the page text and a screenshot", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeService({ reviewer: principalOf(KEY), accessId: ACCESS_ID });
  const out = mkdtempSync(join(tmpdir(), "review-flow-"));
  try {
    const run = await runFlow({
      BASE_URL: service.url,
      REVIEWER_KEY: KEY,
      ACCESS_ID: "ab".repeat(32),
      VERDICT: "appropriate",
      NOTE: "",
      OUT_DIR: out,
      STEP_TIMEOUT_MS: "2000",
    });
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const result = JSON.parse(run.stdout.trim());
    assert.equal(result.ok, false);
    assert.equal(result.step, "queue");
    assert.match(result.html, /Review queue/);
    assert.ok(readdirSync(out).some((f) => f.endsWith(".png")));
  } finally {
    await service.close();
    rmSync(out, { recursive: true, force: true });
  }
});

test("sign-in page: a wrong passphrase and a challenge that is not review-sign-in are refused, with the focus on #status", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeService({ reviewer: principalOf(KEY), accessId: ACCESS_ID, challengeAction: "transfer" });
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.goto(`${service.url}/review`);
    assert.equal(new URL(page.url()).pathname, "/review/sign-in");
    await page.waitForSelector("#key-import:not([hidden])");
    assert.equal(await page.$eval("#key-unlock", (el) => el.hidden), true);
    assert.equal(await page.$eval("#sign-in-wallet", (el) => el.hidden), true, "no wallet: the button stays hidden");

    // a bad key
    await page.type("#key", "12345");
    await page.type("#new-passphrase", PASSPHRASE);
    await page.click("#import-key");
    await page.waitForSelector('#status[data-kind="error"]');
    assert.match(await page.$eval("#status", (el) => el.textContent), /64 or 66 hexadecimal/);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "status");

    // a good one
    await page.$eval("#key", (el) => (el.value = ""));
    await page.type("#key", KEY);
    await page.click("#import-key");
    await page.waitForSelector("#key-unlock:not([hidden])");
    assert.equal(await page.$eval("#key-principal", (el) => el.textContent), principalOf(KEY));
    const stored = JSON.parse(await page.evaluate(() => localStorage.getItem("breakglass.review.key")));
    assert.deepEqual(Object.keys(stored).sort(), ["ciphertext", "iterations", "iv", "principal", "salt", "v"]);
    assert.equal(stored.iterations, 600000);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "passphrase");

    // the wrong passphrase (Enter submits)
    await page.type("#passphrase", "wrong passphrase\n");
    await page.waitForSelector('#status[data-kind="error"]');
    assert.match(await page.$eval("#status", (el) => el.textContent), /^Wrong passphrase/);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "status");

    // the right one, but the server's challenge is not a review-sign-in
    await page.$eval("#passphrase", (el) => (el.value = ""));
    await page.type("#passphrase", PASSPHRASE);
    await page.click("#sign-in");
    await page.waitForFunction(() => /review-sign-in/.test(document.querySelector("#status").textContent));
    assert.match(await page.$eval("#status", (el) => el.textContent), /Refused to sign: the challenge is not a "review-sign-in" message/);
    assert.deepEqual(service.state.signIns, []);
    assert.equal(new URL(page.url()).pathname, "/review/sign-in");

    // forget the key
    await page.click("#forget-key");
    await page.waitForSelector("#key-import:not([hidden])");
    assert.equal(await page.evaluate(() => localStorage.getItem("breakglass.review.key")), null);
  } finally {
    await context.close();
    await service.close();
  }
});

test("access page: while the reviewer types, a pending chain state is refreshed in place, not by a reload", { skip, timeout: 60_000 }, async () => {
  const service = await startFakeService({ reviewer: principalOf(KEY), accessId: ACCESS_ID, recordPendingMs: 9000 });
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.goto(`${service.url}/review/sign-in`);
    await page.waitForSelector("#key-import:not([hidden])");
    await page.type("#key", KEY);
    await page.type("#new-passphrase", PASSPHRASE);
    await page.click("#import-key");
    await page.waitForSelector("#key-unlock:not([hidden])");
    await page.type("#passphrase", PASSPHRASE);
    await Promise.all([page.waitForNavigation(), page.click("#sign-in")]);
    assert.equal(new URL(page.url()).pathname, "/review");
    await Promise.all([page.waitForNavigation(), page.click(`a[data-access-id="${ACCESS_ID}"]`)]);
    assert.equal(await page.$eval("#chain-state", (el) => el.dataset.state), "pending");
    await page.focus("#note"); // a focused field already holds the reloads off
    await page.evaluate(() => (window.__sameDocument = true));
    await page.type("#note", "typing while the record is pending");
    await page.waitForSelector('#chain-state[data-state="confirmed"]', { timeout: 20_000 });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload");
    assert.equal(await page.$eval("#note", (el) => el.value), "typing while the record is pending");

    // no verdict chosen: refused, focus on #verdict-status, nothing posted
    await page.type("#verdict-passphrase", PASSPHRASE);
    await page.click('form#verdict button[type="submit"]');
    await page.waitForSelector('#verdict-status[data-kind="error"]');
    assert.match(await page.$eval("#verdict-status", (el) => el.textContent), /Choose a verdict/);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "verdict-status");
    // a wrong passphrase: refused the same way
    await page.click('input[name="verdict"][value="appropriate"]');
    await page.$eval("#verdict-passphrase", (el) => (el.value = ""));
    await page.type("#verdict-passphrase", "not the passphrase");
    await page.click('form#verdict button[type="submit"]');
    await page.waitForFunction(() => /Wrong passphrase/.test(document.querySelector("#verdict-status").textContent));
    assert.equal(await page.evaluate(() => document.activeElement?.id), "verdict-status");
    assert.equal(await page.evaluate(() => window.__sameDocument), true);
    assert.deepEqual(service.state.verdicts, []);
  } finally {
    await context.close();
    await service.close();
  }
});

#!/usr/bin/env node
// A reviewer's whole flow in headless Chromium, against a running service:
//   open /review (→ /review/sign-in), import the key, sign in, land on the queue, open the access,
//   choose the verdict, type the note and the passphrase, submit, and wait until the page shows
//   the review confirmed on chain.
//
// env: BASE_URL, REVIEWER_KEY (hex), ACCESS_ID (64 hex), VERDICT, NOTE; optional CHROMIUM (default
// /usr/bin/chromium), OUT_DIR (a screenshot on failure), STEP_TIMEOUT_MS (default 30000),
// CONFIRM_TIMEOUT_MS (default 60000).
// stdout: one JSON line, {"ok":true,"steps":[...],"note_salt":"<hex>","note_hash":"<hex>",...} (the
// salt the page posted, and the hash of it and the note posted) and exit 0, or
// {"ok":false,"step":...,"error":...,"html":<page text excerpt>,...} and exit 1.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";
import { bytesToHex, noteHash } from "../src/lib.mjs";

export const PASSPHRASE = "correct horse battery staple";

/** Launch options that work as root in a container (no sandbox then) and headless. */
export function launchOptions(env = process.env) {
  const args = ["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions"];
  if (typeof process.getuid === "function" && process.getuid() === 0) args.push("--no-sandbox");
  return { executablePath: env.CHROMIUM || "/usr/bin/chromium", headless: true, args };
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls fn(page) until it returns a truthy value; survives navigations (their destroyed contexts). */
async function until(page, fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (;;) {
    try {
      const value = await fn(page);
      if (value) return value;
    } catch (error) {
      lastError = error; // the page navigated under the evaluation: try again
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError.message})` : ""}`);
    }
    await wait(150);
  }
}

function required(env, name, pattern) {
  const value = env[name];
  if (value === undefined || value === "" || (pattern && !pattern.test(value))) {
    throw new Error(`env ${name} is ${value === undefined || value === "" ? "missing" : `not ${pattern}`}`);
  }
  return value;
}

async function main(env = process.env) {
  const out = { steps: [] };
  let step = "env";
  let browser = null;
  let page = null;
  const consoleLines = [];
  try {
    const base = required(env, "BASE_URL", /^https?:\/\//).replace(/\/+$/, "");
    const key = required(env, "REVIEWER_KEY", /^(0x)?[0-9a-fA-F]{64}([0-9a-fA-F]{2})?$/);
    const accessId = required(env, "ACCESS_ID", /^(0x)?[0-9a-fA-F]{64}$/).replace(/^0x/i, "").toLowerCase();
    const verdict = required(env, "VERDICT", /^(appropriate|inappropriate|needs-follow-up)$/);
    const note = env.NOTE ?? "";
    // REVOKE=yes ticks "revoke the token now" (honoured with an inappropriate verdict)
    const stepTimeout = Number(env.STEP_TIMEOUT_MS) || 30_000;
    const confirmTimeout = Number(env.CONFIRM_TIMEOUT_MS) || 60_000;
    const path = async (p) => new URL(p.url()).pathname;
    const done = (name) => {
      out.steps.push(name);
      step = `after ${name}`;
    };

    step = "launch";
    browser = await puppeteer.launch(launchOptions(env));
    page = await browser.newPage();
    page.setDefaultTimeout(stepTimeout);
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`.slice(0, 300)));
    page.on("dialog", (d) => d.dismiss().catch(() => {}));
    done("launch");

    step = "open-review";
    const response = await page.goto(`${base}/review`, { waitUntil: "load" });
    if (!response) throw new Error("no response");
    if ((await path(page)) !== "/review/sign-in") {
      throw new Error(`expected a redirect to /review/sign-in, at ${page.url()} (HTTP ${response.status()})`);
    }
    done("open-review");

    step = "import-key";
    await page.waitForSelector("#key-import:not([hidden])", { visible: true });
    await page.type("#key", key);
    await page.type("#new-passphrase", PASSPHRASE);
    await page.click("#import-key");
    await until(page, (p) => p.$eval("#key-unlock", (el) => !el.hidden || document.querySelector('#status[data-kind="error"]') !== null), stepTimeout, "#key-unlock shown");
    const importError = await page.$eval("#status", (el) => (el.dataset.kind === "error" ? el.textContent : null));
    if (importError) throw new Error(`import refused: ${importError}`);
    if (!(await page.$eval("#key", (el) => el.value === ""))) throw new Error("the key was left in the textarea");
    out.principal = (await page.$eval("#key-principal", (el) => el.textContent.trim())) || undefined;
    if (!out.principal) throw new Error("#key-principal is empty");
    done("import-key");

    step = "sign-in";
    await page.type("#passphrase", PASSPHRASE);
    await page.evaluate(() => (window.__reviewFlowMark = true));
    await page.click("#sign-in");
    await until(
      page,
      (p) => p.evaluate(() => window.__reviewFlowMark !== true || document.querySelector('#status[data-kind="error"]')?.textContent || false),
      stepTimeout,
      "the sign-in to navigate",
    );
    const signInError = await page.evaluate(() => (window.__reviewFlowMark === true ? document.querySelector("#status")?.textContent : null));
    if (signInError) throw new Error(`sign-in refused: ${signInError}`);
    await page.waitForFunction(() => document.readyState === "complete");
    done("sign-in");

    step = "queue";
    if ((await path(page)) !== "/review") throw new Error(`expected the queue at /review, at ${page.url()}`);
    const link = `a[data-access-id="${accessId}"]`;
    await page.waitForSelector(link);
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(link)]);
    done("queue");

    step = "verdict";
    await page.waitForSelector("form#verdict");
    // the notice of a record that is not what its grant logged, as the page shows it (if it does)
    out.record_altered = await page.$eval("#record-altered", (el) => (el.checkVisibility() ? el.textContent.trim() : null)).catch(() => null);
    // the access's trail, each line as the page shows it
    out.trail = await page.$$eval("ol.trail li", (els) => els.map((el) => el.textContent.replace(/\s+/g, " ").trim()));
    const formAccessId = await page.$eval("form#verdict", (f) => f.dataset.accessId);
    if (formAccessId?.toLowerCase() !== accessId) throw new Error(`the form is for access ${formAccessId}, not ${accessId}`);
    await page.click(`form#verdict input[name="verdict"][value="${verdict}"]`);
    const typed = note.replace(/\r\n|\r/g, "\n"); // Enter for each line break; the browser submits CRLF
    if (typed) await page.type("#note", typed);
    const value = await page.$eval("#note", (el) => el.value);
    if (value !== typed) throw new Error(`the note typed reads ${JSON.stringify(value)}`);
    if (env.REVOKE === "yes") await page.click('input[name="revoke"]');
    await page.type("#verdict-passphrase", PASSPHRASE);
    let posted = null;
    page.on("request", (r) => {
      if (r.method() === "POST" && new URL(r.url()).pathname.endsWith("/verdict")) posted = new URLSearchParams(r.postData() ?? "");
    });
    await page.evaluate(() => (window.__reviewFlowMark = true));
    await page.click('form#verdict button[type="submit"]');
    await until(
      page,
      (p) => p.evaluate(() => window.__reviewFlowMark !== true || document.querySelector('#verdict-status[data-kind="error"]')?.textContent || false),
      stepTimeout,
      "the verdict to be posted",
    );
    const verdictError = await page.evaluate(() => (window.__reviewFlowMark === true ? document.querySelector("#verdict-status")?.textContent : null));
    if (verdictError) throw new Error(`verdict refused: ${verdictError}`);
    if (!posted) throw new Error("the verdict's post was not seen");
    out.note_salt = posted.get("note_salt") ?? "";
    if (!/^[0-9a-f]{64}$/.test(out.note_salt)) throw new Error(`the page posted the salt ${JSON.stringify(out.note_salt)}`);
    out.note_hash = bytesToHex(await noteHash(posted.get("note") ?? "", new Uint8Array(Buffer.from(out.note_salt, "hex"))));
    done("verdict");

    step = "confirmed";
    const state = await until(
      page,
      (p) => p.evaluate(() => {
        const s = document.querySelector("#chain-state")?.dataset.state;
        return s === "confirmed" || s === "failed" ? s : false;
      }),
      confirmTimeout,
      '#chain-state[data-state="confirmed"]',
    );
    if (state !== "confirmed") throw new Error(`the review's chain state is ${state}`);
    out.url = page.url();
    done("confirmed");

    console.log(JSON.stringify({ ok: true, ...out }));
    return 0;
  } catch (error) {
    const failure = { ok: false, step, steps: out.steps, error: String(error?.message ?? error) };
    if (page) {
      try {
        failure.url = page.url();
        failure.html = (await page.evaluate(() => document.body?.innerText ?? document.documentElement.outerHTML)).slice(0, 2000);
      } catch (e) {
        failure.html = `(page text unavailable: ${e.message})`;
      }
      if (env.OUT_DIR) {
        try {
          mkdirSync(env.OUT_DIR, { recursive: true });
          failure.screenshot = join(env.OUT_DIR, `review-flow-${step.replace(/[^a-z0-9-]+/gi, "_")}.png`);
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

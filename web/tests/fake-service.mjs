// A stand-in for the service's reviewer pages, for the browser tests: the same DOM, endpoints and
// checks the service is meant to have (SIP-018 sign-in challenge, session cookie, verdict form with
// CSRF, the signature over {action, access-id, verdict, note-hash} rebuilt from the posted form,
// #chain-state pending then confirmed). It serves the committed ../../static/review.js.

import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { bufferCV, serializeCV, stringAsciiCV, tupleCV, uintCV } from "@stacks/transactions";
import { decodeCV, hexToBytes, signerPrincipal } from "../src/lib.mjs";

const bundlePath = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "static", "review.js");

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body, head = "") {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">${head}
<script src="/static/review.js" defer></script></head>
<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;
}

/**
 * Starts the stand-in on 127.0.0.1 (a free port). options: reviewer (the principal allowed to sign
 * in), accessId (64 hex), confirmAfterMs (how long a verdict stays pending), challengeAction (to
 * serve a wrong challenge).
 */
export async function startFakeService({ reviewer, accessId, confirmAfterMs = 2500, challengeAction = "review-sign-in", recordPendingMs = 0 }) {
  const domain = tupleCV({ name: stringAsciiCV("breakglass"), version: stringAsciiCV("1"), "chain-id": uintCV(2147483648) });
  const domainHex = `0x${serializeCV(domain)}`;
  const challenges = new Map(); // message hex -> expiry (ms)
  const sessions = new Map(); // cookie -> { principal, csrf }
  const state = { verdicts: [], signIns: [], refusals: [], chainStates: [] };
  const started = Date.now();
  let bundle = null;

  const session = (req) => {
    const m = /(?:^|;\s*)bg_review=([0-9a-f]{64})/.exec(req.headers.cookie ?? "");
    return m ? sessions.get(m[1]) : undefined;
  };

  async function body(req) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return Buffer.concat(chunks).toString("utf8");
  }

  function send(res, status, type, text, headers = {}) {
    res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store", ...headers });
    res.end(text);
  }
  const html = (res, status, text, headers) => send(res, status, "text/html; charset=utf-8", text, headers);
  const json = (res, status, value, headers) => send(res, status, "application/json", JSON.stringify(value), headers);
  function problem(res, status, code, title, detail) {
    state.refusals.push(code);
    send(res, status, "application/problem+json", JSON.stringify({ type: "about:blank", title, status, detail, code }));
  }

  // the review's state once there is a verdict; before, the access record's (pending for recordPendingMs)
  function chainState(verdict) {
    const what = verdict ? "Review" : "Access record";
    const since = verdict ? verdict.at + confirmAfterMs : started + recordPendingMs;
    const s = Date.now() >= since ? "confirmed" : "pending";
    state.chainStates.push(`${what}: ${s}`);
    return `<p id="chain-state" data-refresh data-state="${s}">${what} ${s === "confirmed" ? "confirmed on chain" : "pending on chain"}.</p>`;
  }

  async function handle(req, res) {
    const url = new URL(req.url, "http://fake");
    const route = `${req.method} ${url.pathname}`;
    const who = session(req);

    if (route === "GET /favicon.ico") {
      res.writeHead(204);
      return res.end();
    }
    if (route === "GET /static/review.js") {
      bundle ??= readFileSync(bundlePath);
      return send(res, 200, "text/javascript; charset=utf-8", bundle);
    }
    if (route === "GET /review/sign-in") {
      return html(res, 200, page("Reviewer sign-in", `
<section id="key-import" hidden><h2>Import your key</h2>
  <label for="key">Private key (hex)</label><textarea id="key" autocomplete="off" spellcheck="false"></textarea>
  <label for="new-passphrase">New passphrase</label><input id="new-passphrase" type="password" autocomplete="new-password">
  <button id="import-key" type="button">Import key</button></section>
<section id="key-unlock" hidden><h2>Sign in</h2><p id="key-principal"></p>
  <label for="passphrase">Passphrase</label><input id="passphrase" type="password" autocomplete="current-password">
  <button id="sign-in" type="button">Sign in</button> <button id="forget-key" type="button">Forget key</button></section>
<button id="sign-in-wallet" type="button" hidden>Sign in with a wallet</button>
<p id="status" role="status" aria-live="polite"></p>`));
    }
    if (route === "POST /review/challenge") {
      const expiresAt = Math.floor(Date.now() / 1000) + 300;
      const message = tupleCV({ action: stringAsciiCV(challengeAction), nonce: bufferCV(randomBytes(16)), "expires-at": uintCV(expiresAt) });
      const messageHex = `0x${serializeCV(message)}`;
      challenges.set(messageHex, expiresAt * 1000);
      return json(res, 200, { domain: domainHex, message: messageHex, expires_at: expiresAt });
    }
    if (route === "POST /review/sign-in") {
      if (!/^application\/json/.test(req.headers["content-type"] ?? "")) return problem(res, 415, "content-type", "Unsupported media type", "JSON expected.");
      let posted;
      try {
        posted = JSON.parse(await body(req));
      } catch {
        return problem(res, 400, "malformed", "Malformed request", "The body is not JSON.");
      }
      const messageHex = String(posted.message ?? "").toLowerCase();
      const expiry = challenges.get(messageHex);
      if (!expiry || expiry < Date.now()) return problem(res, 401, "challenge-unknown", "Sign-in refused", "The challenge is unknown or expired.");
      challenges.delete(messageHex);
      let principal;
      try {
        principal = await signerPrincipal(decodeCV(messageHex), domain, posted.signature, "testnet");
      } catch {
        return problem(res, 401, "signature-invalid", "Sign-in refused", "The signature does not recover a key.");
      }
      if (principal !== reviewer) return problem(res, 403, "not-a-reviewer", "Sign-in refused", `${principal} is not a reviewer.`);
      const cookie = randomBytes(32).toString("hex");
      sessions.set(cookie, { principal, csrf: randomBytes(16).toString("hex") });
      state.signIns.push(principal);
      return json(res, 200, { redirect: "/review" }, { "Set-Cookie": `bg_review=${cookie}; Path=/review; Secure; HttpOnly; SameSite=Strict` });
    }
    if (url.pathname.startsWith("/review") && !who) {
      res.writeHead(303, { Location: "/review/sign-in" });
      return res.end();
    }
    if (route === "GET /review") {
      return html(res, 200, page("Review queue", `<ul><li><a href="/review/accesses/${accessId}" data-access-id="${accessId}">Access ${accessId.slice(0, 12)}…</a></li></ul>`));
    }
    const m = /^\/review\/accesses\/([0-9a-f]{64})(\/verdict)?$/.exec(url.pathname);
    if (m && m[1] === accessId && req.method === "GET" && !m[2]) {
      const verdict = state.verdicts.at(-1);
      const form = verdict
        ? `<p>Verdict: ${escape(verdict.verdict)}</p>`
        : `<form id="verdict" method="post" action="/review/accesses/${accessId}/verdict" data-access-id="${accessId}">
  <input type="hidden" name="csrf" value="${who.csrf}"><input type="hidden" name="signature" value="">
  <input type="hidden" name="note_salt" value="">
  <fieldset><legend>Verdict</legend>
    <label><input type="radio" name="verdict" value="appropriate"> Appropriate</label>
    <label><input type="radio" name="verdict" value="inappropriate"> Inappropriate</label>
    <label><input type="radio" name="verdict" value="needs-follow-up"> Needs follow-up</label></fieldset>
  <label for="note">Note</label><textarea id="note" name="note"></textarea>
  <label><input type="checkbox" name="revoke" value="yes"> Revoke the token</label>
  <label for="verdict-passphrase">Passphrase</label><input id="verdict-passphrase" type="password" autocomplete="current-password">
  <button type="submit">Sign and submit</button>
  <p id="verdict-status" role="status" aria-live="polite"></p>
</form>`;
      return html(res, 200, page(`Access ${accessId.slice(0, 12)}…`, `${chainState(verdict)}${form}`, `\n<meta name="breakglass-domain" content="${domainHex}">`));
    }
    if (m && m[1] === accessId && req.method === "POST" && m[2]) {
      const contentType = req.headers["content-type"] ?? "";
      const raw = await body(req);
      const fields = new URLSearchParams(raw);
      const refuse = (code, detail) => {
        state.refusals.push(code);
        return html(res, 400, page("Verdict refused", `<p id="chain-state" data-state="failed">${escape(code)}: ${escape(detail)}</p>`));
      };
      if (!contentType.startsWith("application/x-www-form-urlencoded")) return refuse("content-type", contentType);
      if (fields.get("csrf") !== who.csrf) return refuse("csrf", "bad token");
      const verdict = fields.get("verdict");
      const note = fields.get("note") ?? "";
      const noteSalt = fields.get("note_salt") ?? "";
      if (!/^[0-9a-f]{64}$/.test(noteSalt)) return refuse("note-salt", noteSalt);
      const noteHash = createHash("sha256").update(Buffer.from(noteSalt, "hex")).update(Buffer.from(note, "utf8")).digest();
      let message;
      try {
        message = tupleCV({
          action: stringAsciiCV("review"),
          "access-id": bufferCV(hexToBytes(accessId)),
          verdict: stringAsciiCV(verdict ?? ""),
          "note-hash": bufferCV(noteHash),
        });
      } catch (e) {
        return refuse("malformed", e.message);
      }
      let signer;
      try {
        signer = await signerPrincipal(message, domain, fields.get("signature") ?? "", "testnet");
      } catch (e) {
        return refuse("signature-invalid", e.message);
      }
      if (signer !== who.principal) return refuse("signature-mismatch", `signed by ${signer}, session of ${who.principal}`);
      state.verdicts.push({
        at: Date.now(),
        verdict,
        note,
        noteSalt,
        noteHash: noteHash.toString("hex"),
        revoke: fields.get("revoke"),
        fieldNames: [...fields.keys()],
        contentType,
      });
      res.writeHead(303, { Location: `/review/accesses/${accessId}` });
      return res.end();
    }
    return problem(res, 404, "not-found", "Not found", route);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) send(res, 500, "text/plain", String(e?.stack ?? e));
      else res.destroy();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    state,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(resolve); }),
  };
}

// A stand-in for the service's tablet endpoints, for the browser tests: GET /tablet (the DOM of
// web/README.md "Tablet page", under a strict CSP), /static/tablet.js (the committed bundle),
// GET /tablet/options, POST /v1/break-glass (the message parsed by src/request.rs's rules, the
// signer recovered with @stacks/transactions, low-S only, the clock skew, replayed nonces) and
// GET /fhir/Patient/{id}/$summary (a FHIR R4 document Bundle of what the token's data types
// cover; 401 once the window has closed).

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ClarityType, serializeCV, stringAsciiCV, tupleCV, uintCV } from "@stacks/transactions";
import { decodeCV, signerPrincipal, strip0x } from "../src/lib.mjs";
import { DATA_TYPES } from "../src/tablet-lib.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bundlePath = join(root, "static", "tablet.js");

/** The service's own page (templates/tablet.html, as src/http/tablet.rs fills it in). */
export function realTabletPage(domainHex, network = "testnet") {
  return readFileSync(join(root, "templates", "tablet.html"), "utf8").replaceAll("{{ domain }}", domainHex).replaceAll("{{ network }}", network);
}
const HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0n;
const CHAIN_ID = 2147483648;

export const CSP = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** The page as the service is to serve it (web/README.md, "Tablet page"). */
export function tabletPage(domainHex, network = "testnet") {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emergency access</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="breakglass-domain" content="${domainHex}">
<meta name="breakglass-network" content="${network}">
<script src="/static/tablet.js" defer></script></head>
<body><main><h1>Emergency access</h1>
<section id="key-setup" hidden><h2>Set up this tablet</h2>
  <label for="key">Your private key (hex)</label><textarea id="key" autocomplete="off" spellcheck="false" autocapitalize="off"></textarea>
  <label for="new-pin">Choose a PIN (at least 6 digits)</label><input id="new-pin" type="password" inputmode="numeric" autocomplete="new-password" minlength="6">
  <button id="import-key" type="button">Store the key</button></section>
<section id="request" hidden><h2>Break the glass</h2>
  <p id="who"></p>
  <label for="patient">Patient id</label><input id="patient" autocomplete="off" spellcheck="false" autocapitalize="off" maxlength="66">
  <button id="scan" type="button" hidden>Scan the patient's QR code</button>
  <video id="scanner" hidden playsinline muted></video>
  <fieldset id="data-types"><legend>Data to open</legend></fieldset>
  <label for="reason">Why you need it</label><textarea id="reason" maxlength="500"></textarea>
  <label for="device">Device name (optional)</label><input id="device" maxlength="64" autocomplete="off">
  <label for="pin">PIN</label><input id="pin" type="password" inputmode="numeric" autocomplete="one-time-code">
  <button id="submit" type="button">Open the record</button></section>
<section id="result" hidden><h2>Emergency access</h2>
  <p id="refusal" role="alert" hidden></p>
  <div id="summary" role="region" aria-label="The patient's data" tabindex="-1"></div>
  <p id="countdown" aria-live="polite"></p>
  <button id="end" type="button">Close the record on this tablet</button></section>
<p id="status" role="status" aria-live="polite" tabindex="-1"></p>
</main></body></html>`;
}

// what each role may open (data type -> window minutes); anything else is refused with a reason
const POLICY = {
  nurse: { allergies: 60, medications: 60, problems: 60, "blood-type": 60, "advance-directives": 60, immunizations: 60, vitals: 60 },
  physician: Object.fromEntries(DATA_TYPES.map((d) => [d, 120])),
};

const cc = (text, system, code, display) => ({ coding: [{ system, code, display: display ?? text }], text });
const SNOMED = "http://snomed.info/sct";
const LOINC = "http://loinc.org";
const clinical = (code) => cc(undefined, "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", code, code);

/** A patient's record, per data type (FHIR R4 resources, IPS-like). */
export function sampleRecord(patient) {
  const subject = { reference: `Patient/${patient}` };
  return {
    allergies: [
      {
        resourceType: "AllergyIntolerance",
        id: "alg-1",
        clinicalStatus: clinical("active"),
        verificationStatus: cc(undefined, "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed"),
        criticality: "high",
        code: cc("Penicillin G (pénicilline)", SNOMED, "764146007", "Penicillin"),
        patient: subject,
        reaction: [{ manifestation: [cc("Anaphylaxis", SNOMED, "39579001")], severity: "severe" }, { manifestation: [{ coding: [{ system: SNOMED, code: "247472004", display: "Hives" }] }] }],
      },
      {
        resourceType: "AllergyIntolerance",
        id: "alg-2",
        clinicalStatus: clinical("active"),
        criticality: "low",
        code: { coding: [{ system: SNOMED, code: "256349002", display: "Peanut" }] },
        patient: subject,
      },
    ],
    medications: [
      {
        resourceType: "MedicationStatement",
        id: "med-1",
        status: "active",
        medicationCodeableConcept: cc("Warfarin 5 mg tablet", "http://www.nlm.nih.gov/research/umls/rxnorm", "855332"),
        subject,
        dosage: [{ text: "5 mg by mouth once daily" }],
      },
      {
        resourceType: "MedicationRequest",
        id: "med-2",
        status: "active",
        intent: "order",
        medicationCodeableConcept: { coding: [{ system: "http://www.nlm.nih.gov/research/umls/rxnorm", code: "861004", display: "Metformin 500 mg" }] },
        subject,
        dosageInstruction: [{ text: "500 mg twice daily with meals" }],
      },
    ],
    problems: [
      { resourceType: "Condition", id: "cond-1", clinicalStatus: cc(undefined, "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"), code: cc("Atrial fibrillation", SNOMED, "49436004"), subject },
    ],
    "blood-type": [
      {
        resourceType: "Observation",
        id: "obs-abo",
        status: "final",
        code: cc(undefined, LOINC, "882-1", "ABO and Rh group [Type] in Blood"),
        subject,
        valueCodeableConcept: cc("O Rh(D) positive", SNOMED, "278155003", "Blood group O Rh(D) positive"),
      },
    ],
    vitals: [
      {
        resourceType: "Observation",
        id: "obs-bp",
        status: "final",
        category: [cc(undefined, "http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
        code: cc("Blood pressure", LOINC, "85354-9"),
        subject,
        effectiveDateTime: "2025-11-30T08:15:00Z",
        component: [
          { code: cc("Systolic", LOINC, "8480-6"), valueQuantity: { value: 142, unit: "mmHg" } },
          { code: cc("Diastolic", LOINC, "8462-4"), valueQuantity: { value: 91, unit: "mmHg" } },
        ],
      },
    ],
    "advance-directives": [
      {
        resourceType: "Consent",
        id: "ad-1",
        status: "active",
        scope: cc("Advance directive", "http://terminology.hl7.org/CodeSystem/consentscope", "adr"),
        category: [cc("Do not resuscitate (DNR)", LOINC, "59284-0")],
        patient: subject,
        dateTime: "2024-02-01",
      },
      {
        resourceType: "DocumentReference",
        id: "ad-2",
        status: "current",
        type: cc("Advance directive", LOINC, "42348-3", "Advance directives"),
        description: "Living will, signed 2024-02-01",
        subject,
      },
    ],
    immunizations: [
      { resourceType: "Immunization", id: "imm-1", status: "completed", vaccineCode: cc("Tetanus and diphtheria toxoids", "http://hl7.org/fhir/sid/cvx", "09"), patient: subject, occurrenceDateTime: "2021-05-04" },
    ],
  };
}

const SCOPES = {
  allergies: ["patient/AllergyIntolerance.rs"],
  medications: ["patient/MedicationStatement.rs", "patient/MedicationRequest.rs"],
  problems: ["patient/Condition.rs"],
  "blood-type": ["patient/Observation.rs?code=http://loinc.org|882-1"],
  vitals: ["patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"],
  "advance-directives": ["patient/Consent.rs", "patient/DocumentReference.rs?category=http://loinc.org|42348-3"],
  immunizations: ["patient/Immunization.rs"],
};

/** The message's fields by src/request.rs's rules, or a string saying what is wrong. */
export function parseBreakGlass(cv) {
  if (cv.type !== ClarityType.Tuple) return "message is not a tuple";
  const t = cv.value;
  const FIELDS = ["action", "data-types", "device", "issued-at", "nonce", "patient", "reason"];
  for (const k of Object.keys(t)) if (!FIELDS.includes(k)) return `message has an unknown field "${k}"`;
  for (const k of FIELDS) if (k !== "device" && !(k in t)) return `message lacks "${k}"`;
  if (t.action.type !== ClarityType.StringASCII || t.action.value !== "break-glass") return 'action must be "break-glass"';
  if (t.patient.type !== ClarityType.Buffer || t.patient.value.length !== 64) return "patient must be a 32-byte buffer";
  if (t["data-types"].type !== ClarityType.List) return "data-types must be a list";
  const items = t["data-types"].value;
  if (items.length < 1 || items.length > 8) return "data-types must name 1 to 8 data types";
  const dataTypes = [];
  for (const item of items) {
    if (item.type !== ClarityType.StringASCII) return "data-types must be strings";
    if (!DATA_TYPES.includes(item.value)) return `unknown data type "${item.value}"`;
    if (dataTypes.includes(item.value)) return `data type "${item.value}" is named twice`;
    dataTypes.push(item.value);
  }
  if (t.reason.type !== ClarityType.StringUTF8) return "reason must be a string-utf8";
  if (t.reason.value.trim() === "" || [...t.reason.value].length > 500) return "reason must be 1 to 500 characters";
  for (const k of ["nonce", "issued-at"]) {
    if (t[k].type !== ClarityType.UInt) return `${k} must be a uint`;
    if (BigInt(t[k].value) >= 2n ** 64n) return `${k} is too large`;
  }
  let device = null;
  const d = t.device;
  if (d && d.type === ClarityType.OptionalSome) {
    if (d.value.type !== ClarityType.StringASCII || d.value.value.length < 1 || d.value.value.length > 64) return "device must be 1 to 64 ASCII characters";
    device = d.value.value;
  } else if (d && d.type !== ClarityType.OptionalNone) {
    return "device must be (optional (string-ascii 64))";
  }
  return {
    patient: t.patient.value,
    dataTypes,
    reason: t.reason.value,
    nonce: BigInt(t.nonce.value),
    issuedAt: Number(BigInt(t["issued-at"].value)),
    device,
  };
}

/**
 * Starts the stand-in on 127.0.0.1 (a free port). options: clinicians ({principal: {role,
 * status}}), windowSeconds (overrides the policy's minutes), summaryDelayMs, clockMs (the
 * server's clock this far from the machine's: its Date headers and its freshness check; moved on
 * by shiftClock(ms)),
 * realPage (serve templates/tablet.html and static/review.css, not this file's page), pinIdleMs
 * (the page's <meta name="breakglass-pin-idle-ms">).
 * Returned: url, domainHex, state (options, grants, refusals, reads, bodies), refuseNext(problem)
 * and refuseReadNext(problem) (the next grant or summary read answers that problem),
 * noteNextSummary(text) (the next summary carries an OperationOutcome saying text),
 * dropNextGrantAnswer() (the next grant is made, and its connection cut before the answer),
 * closeConnections(on) (every answer closes its connection: nothing is kept alive),
 * dropReads(on) (each summary read's connection is cut while on: a browser sends a request
 * again by itself once, when a kept-alive connection drops), shiftClock(ms) (the server's clock
 * jumps ms ahead: time passed, as for a page whose clocks jump as much), close().
 */
export async function startFakeTabletService({ clinicians = {}, windowSeconds = null, summaryDelayMs = 0, clockMs = 0, realPage = false, pinIdleMs = null } = {}) {
  const domain = tupleCV({ name: stringAsciiCV("breakglass"), version: stringAsciiCV("1"), "chain-id": uintCV(CHAIN_ID) });
  const domainHex = `0x${serializeCV(domain)}`;
  const state = { options: [], grants: [], refusals: [], reads: [], bodies: [] };
  const tokens = new Map(); // token -> { patient, dataTypes, expiresAt (ms) }
  const nonces = new Set();
  let refuseNext = null;
  let refuseReadNext = null;
  let noteNext = null;
  let dropGrantAnswer = false;
  let closing = false;
  let dropRead = false;
  let bundle = null;
  const serverNow = () => Date.now() + clockMs;

  async function body(req) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return Buffer.concat(chunks).toString("utf8");
  }
  function send(res, status, type, text, headers = {}) {
    res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store", Date: new Date(serverNow()).toUTCString(), ...(closing ? { Connection: "close" } : {}), ...headers });
    res.end(text);
  }
  const json = (res, status, value, type = "application/json") => send(res, status, type, JSON.stringify(value));
  function problem(res, status, code, title, detail, headers = {}) {
    state.refusals.push(code);
    send(res, status, "application/problem+json", JSON.stringify({ type: `https://breakglass.example/problems/${code}`, title, status, detail, code }), headers);
  }

  function options(principal) {
    const who = clinicians[principal];
    const role = who?.role ?? null;
    const allowed = POLICY[role] ?? {};
    return {
      principal,
      role,
      status: who?.status ?? "unknown",
      data_types: DATA_TYPES.map((d) =>
        d in allowed
          ? { data_type: d, allowed: true, window_minutes: allowed[d] }
          : { data_type: d, allowed: false, reason: role ? `role ${role} may not open ${d} (no policy permits it)` : "not a registered provider" },
      ),
    };
  }

  async function breakGlass(req, res) {
    if (!/^application\/json\b/.test(req.headers["content-type"] ?? "")) {
      return problem(res, 415, "unsupported-media-type", "Unsupported media type", "a break-glass request is JSON: send it with Content-Type: application/json");
    }
    let posted;
    try {
      posted = JSON.parse(await body(req));
    } catch {
      return problem(res, 400, "malformed-request", "Malformed request", "the body is not the expected JSON");
    }
    state.bodies.push(posted);
    const keys = Object.keys(posted ?? {});
    if (keys.some((k) => !["message", "signature", "domain"].includes(k))) {
      return problem(res, 400, "malformed-request", "Malformed request", `the body has unknown fields: ${keys.join(", ")}`);
    }
    if (posted.domain !== undefined && String(posted.domain).toLowerCase() !== domainHex) {
      return problem(res, 400, "wrong-domain", "Signed for another domain", "the request was signed for another domain or network");
    }
    let message;
    try {
      message = decodeCV(posted.message, "message");
    } catch (e) {
      return problem(res, 400, "malformed-request", "Malformed request", `message is not a Clarity value: ${e.message}`);
    }
    const fields = parseBreakGlass(message);
    if (typeof fields === "string") return problem(res, 400, "malformed-request", "Malformed request", fields);
    const sig = String(strip0x(posted.signature ?? "")).toLowerCase();
    if (!/^[0-9a-f]{130}$/.test(sig) || BigInt(`0x${sig.slice(64, 128)}`) > HALF_ORDER) {
      return problem(res, 401, "bad-signature", "Bad signature", "the signature does not verify: not a low-S 65-byte RSV signature");
    }
    let signer;
    try {
      signer = await signerPrincipal(message, domain, sig, "testnet");
    } catch (e) {
      return problem(res, 401, "bad-signature", "Bad signature", `the signature does not verify: ${e.message}`);
    }
    const now = Math.floor(serverNow() / 1000);
    if (Math.abs(now - fields.issuedAt) > 60) {
      return problem(res, 401, "stale-request", "Stale request", `the request was issued at ${fields.issuedAt}, ${Math.abs(now - fields.issuedAt)} s away from the server's clock (at most 60 s)`);
    }
    const who = clinicians[signer];
    if (!who) return problem(res, 403, "unknown-provider", "Unknown provider", `${signer} is not a registered provider`);
    if (who.status !== "verified") return problem(res, 403, "provider-not-verified", "Provider not verified", `${signer} is ${who.status}, not verified`);
    const allowed = POLICY[who.role] ?? {};
    const denied = fields.dataTypes.find((d) => !(d in allowed));
    if (denied) return problem(res, 403, "policy-denied", "Refused by policy", `role ${who.role} may not open ${denied} (no policy permits it)`);
    const nonceKey = `${signer}/${fields.nonce}`;
    if (nonces.has(nonceKey)) return problem(res, 409, "replayed-request", "Replayed request", "this request was already used");
    if (refuseNext) {
      const r = refuseNext;
      refuseNext = null;
      return problem(res, r.status, r.code, r.title, r.detail, r.headers ?? {});
    }
    nonces.add(nonceKey);
    const seconds = windowSeconds ?? Math.min(...fields.dataTypes.map((d) => allowed[d])) * 60;
    const token = randomBytes(32).toString("base64url");
    const accessId = randomBytes(32).toString("hex");
    tokens.set(token, { patient: fields.patient, dataTypes: fields.dataTypes, expiresAt: Date.now() + seconds * 1000 });
    state.grants.push({ signer, ...fields, nonce: fields.nonce.toString(), token, accessId, messageHex: String(posted.message).toLowerCase() });
    if (dropGrantAnswer) {
      // granted and recorded; the answer, with its token, lost on the way back
      dropGrantAnswer = false;
      return res.socket.destroy();
    }
    res.writeHead(201, { "Content-Type": "application/json", "Cache-Control": "no-store", Date: new Date(serverNow()).toUTCString(), ...(closing ? { Connection: "close" } : {}) });
    return res.end(
      JSON.stringify({
        access_token: token,
        token_type: "Bearer",
        expires_in: seconds,
        scope: fields.dataTypes.flatMap((d) => SCOPES[d] ?? []).concat("purpose_of_use/BTG").join(" "),
        access_id: accessId,
        purpose_of_use: "BTG",
        access: `/v1/accesses/${accessId}`,
      }),
    );
  }

  async function summary(req, res, patient) {
    const auth = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "");
    const grant = auth ? tokens.get(auth[1]) : undefined;
    const read = (status) => state.reads.push({ status, patient, accept: req.headers.accept ?? null });
    const bearer = { "WWW-Authenticate": 'Bearer realm="breakglass", error="invalid_token"' };
    if (!grant || grant.expiresAt <= Date.now()) {
      read(401);
      return problem(res, 401, "invalid-token", "Invalid token", "the token is not valid (expired, revoked, or not ours)", bearer);
    }
    if (grant.patient !== patient) {
      read(403);
      return problem(res, 403, "wrong-patient", "Another patient", "the token opens another patient's record");
    }
    if (dropRead) {
      read(0);
      return res.socket.destroy();
    }
    if (refuseReadNext) {
      const r = refuseReadNext;
      refuseReadNext = null;
      read(r.status);
      return problem(res, r.status, r.code, r.title, r.detail, r.headers ?? {});
    }
    if (summaryDelayMs) await new Promise((r) => setTimeout(r, summaryDelayMs));
    const record = sampleRecord(patient);
    const resources = grant.dataTypes.flatMap((d) => record[d] ?? []);
    const note = noteNext;
    noteNext = null;
    read(200);
    return json(
      res,
      200,
      {
        resourceType: "Bundle",
        type: "document",
        timestamp: new Date().toISOString(),
        entry: [
          { fullUrl: "urn:uuid:composition", resource: { resourceType: "Composition", status: "final", type: cc("Patient summary Document", LOINC, "60591-5"), title: "Patient summary" } },
          ...resources.map((r) => ({ fullUrl: `urn:uuid:${r.id}`, resource: r })),
          // as the vault says it serves the summary before one still being recorded
          ...(note
            ? [{ resource: { resourceType: "OperationOutcome", issue: [{ severity: "information", code: "informational", diagnostics: note }] }, search: { mode: "outcome" } }]
            : []),
        ],
      },
      "application/fhir+json",
    );
  }

  async function handle(req, res) {
    const url = new URL(req.url, "http://fake");
    const route = `${req.method} ${url.pathname}`;
    if (route === "GET /favicon.ico") {
      res.writeHead(204);
      return res.end();
    }
    if (route === "GET /static/tablet.js") {
      bundle ??= readFileSync(bundlePath);
      return send(res, 200, "text/javascript; charset=utf-8", bundle);
    }
    if (route === "GET /static/review.css") {
      return send(res, 200, "text/css; charset=utf-8", readFileSync(join(root, "static", "review.css")));
    }
    if (route === "GET /tablet") {
      let page = realPage ? realTabletPage(domainHex) : tabletPage(domainHex);
      if (pinIdleMs) page = page.replace("<title>", `<meta name="breakglass-pin-idle-ms" content="${pinIdleMs}"><title>`);
      return send(res, 200, "text/html; charset=utf-8", page, { "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer" });
    }
    if (route === "GET /tablet/options") {
      const principal = url.searchParams.get("principal") ?? "";
      if (!/^S[0-9A-Z]{20,50}$/.test(principal)) return problem(res, 400, "malformed-request", "Malformed request", "principal is not a Stacks principal");
      state.options.push(principal);
      return json(res, 200, options(principal));
    }
    if (route === "POST /v1/break-glass") return breakGlass(req, res);
    const m = /^\/fhir\/Patient\/([0-9a-f]{64})\/\$summary$/.exec(url.pathname);
    if (m && req.method === "GET") return summary(req, res, m[1]);
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
    domainHex,
    state,
    refuseNext: (p) => (refuseNext = p),
    refuseReadNext: (p) => (refuseReadNext = p),
    noteNextSummary: (text) => (noteNext = text),
    dropNextGrantAnswer: () => (dropGrantAnswer = true),
    dropReads: (on) => (dropRead = on),
    closeConnections: (on) => (closing = on),
    shiftClock: (ms) => (clockMs += ms),
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(resolve); }),
  };
}

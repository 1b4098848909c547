// The tablet page's pure functions (src/tablet-lib.mjs), in Node's WebCrypto: node --test tests/
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  Cl,
  publicKeyFromSignatureRsv,
  publicKeyToAddress,
  serializeCV,
  signStructuredData,
  stringAsciiCV,
  tupleCV,
  uintCV,
} from "@stacks/transactions";
import { STORAGE_KEY, UserError, decryptKey, encryptKey, principalOf, signStructured, signerPrincipal } from "../src/lib.mjs";
import {
  CLOSED_TEXT,
  DATA_TYPES,
  MAX_SKEW_S,
  SEND_WITHIN_S,
  TABLET_KEY_STORAGE,
  WrongPinError,
  breakGlassMessage,
  checkPin,
  conceptText,
  countdownText,
  decryptTabletKey,
  encryptTabletKey,
  formatRemaining,
  normalizeDevice,
  parseGrant,
  parseOptions,
  parsePatientId,
  patientFromScan,
  randomNonce,
  refusalText,
  requestAge,
  requestBody,
  summaryGroups,
  summaryNotes,
  summaryPath,
  walletAddress,
  walletTooSlowText,
  warningText,
} from "../src/tablet-lib.mjs";
import { parseBreakGlass, sampleRecord } from "./fake-tablet-service.mjs";
import { percentile } from "./tablet-flow.mjs";

// the first devnet account's key (public test material)
const KEY = "753b7cc01a1a2e86221266a154af739463fce51219d97e4f856cd7200c3bd2a601";
const PRINCIPAL = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";
const PIN = "246810";
const PATIENT = "ab".repeat(32);
const domain = (chainId = 2147483648) => tupleCV({ name: stringAsciiCV("breakglass"), version: stringAsciiCV("1"), "chain-id": uintCV(chainId) });
const FAST = { iterations: 1000 }; // the PIN round trips below; the default (600,000) is checked once

// An independent Clarity serializer (SIP-005 wire format) for the message's types, to check
// @stacks/transactions against the bytes src/request.rs decodes: tuple keys in byte order.
const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const wire = {
  ascii: (s) => Buffer.concat([Buffer.from([0x0d]), u32(Buffer.byteLength(s, "ascii")), Buffer.from(s, "ascii")]),
  utf8: (s) => Buffer.concat([Buffer.from([0x0e]), u32(Buffer.byteLength(s, "utf8")), Buffer.from(s, "utf8")]),
  buff: (hex) => Buffer.concat([Buffer.from([0x02]), u32(hex.length / 2), Buffer.from(hex, "hex")]),
  uint: (n) => {
    const b = Buffer.alloc(17);
    b[0] = 0x01;
    b.writeBigUInt64BE(BigInt(n) >> 64n, 1);
    b.writeBigUInt64BE(BigInt(n) & 0xffffffffffffffffn, 9);
    return b;
  },
  list: (items) => Buffer.concat([Buffer.from([0x0b]), u32(items.length), ...items]),
  none: () => Buffer.from([0x09]),
  some: (v) => Buffer.concat([Buffer.from([0x0a]), v]),
  tuple: (fields) => {
    const keys = Object.keys(fields).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    return Buffer.concat([Buffer.from([0x0c]), u32(keys.length), ...keys.flatMap((k) => [Buffer.from([k.length]), Buffer.from(k, "ascii"), fields[k]])]);
  },
};

const REQUEST = {
  patient: `0x${PATIENT.toUpperCase()}`,
  dataTypes: ["blood-type", "allergies"],
  reason: "Unconscious, anaphylaxis suspected — réaction à la pénicilline?",
  nonce: 2 ** 53 - 1,
  issuedAt: 1_764_000_000,
  device: "ward-7 tablet",
};

test("the break-glass message serializes to the tuple src/request.rs parses: its fields, types and key order", () => {
  const message = breakGlassMessage(REQUEST);
  const expected = wire.tuple({
    action: wire.ascii("break-glass"),
    patient: wire.buff(PATIENT),
    "data-types": wire.list([wire.ascii("blood-type"), wire.ascii("allergies")]),
    reason: wire.utf8(REQUEST.reason),
    nonce: wire.uint(2 ** 53 - 1),
    "issued-at": wire.uint(1_764_000_000),
    device: wire.some(wire.ascii("ward-7 tablet")),
  });
  assert.equal(serializeCV(message), expected.toString("hex"));
  // the key order on the wire is the byte order of the names, as Rust's request.rs lists them
  const keys = [];
  const bytes = Buffer.from(serializeCV(message), "hex");
  assert.equal(bytes[0], 0x0c);
  assert.equal(bytes.readUInt32BE(1), 7);
  let at = 5;
  const skip = (v) => {
    const t = bytes[v];
    if (t === 0x0d || t === 0x0e || t === 0x02) return v + 5 + bytes.readUInt32BE(v + 1);
    if (t === 0x01) return v + 17;
    if (t === 0x09) return v + 1;
    if (t === 0x0a) return skip(v + 1);
    if (t === 0x0b) {
      let p = v + 5;
      for (let i = 0; i < bytes.readUInt32BE(v + 1); i++) p = skip(p);
      return p;
    }
    throw new Error(`type ${t}`);
  };
  for (let i = 0; i < 7; i++) {
    const len = bytes[at];
    keys.push(bytes.subarray(at + 1, at + 1 + len).toString("ascii"));
    at = skip(at + 1 + len);
  }
  assert.equal(at, bytes.length);
  assert.deepEqual(keys, ["action", "data-types", "device", "issued-at", "nonce", "patient", "reason"]);

  // without a device: (optional none)
  const bare = breakGlassMessage({ ...REQUEST, device: null });
  assert.equal(bare.value.device.type, "none");
  assert.equal(serializeCV(breakGlassMessage({ ...REQUEST, device: "   " })), serializeCV(bare));

  // the same bytes as contracts/scripts/sign-request.mjs makes with Cl (what the Rust tests use)
  const script = Cl.tuple({
    action: Cl.stringAscii("break-glass"),
    patient: Cl.bufferFromHex(PATIENT),
    "data-types": Cl.list(REQUEST.dataTypes.map((d) => Cl.stringAscii(d))),
    reason: Cl.stringUtf8(REQUEST.reason),
    nonce: Cl.uint(REQUEST.nonce),
    "issued-at": Cl.uint(REQUEST.issuedAt),
    device: Cl.some(Cl.stringAscii(REQUEST.device)),
  });
  assert.equal(Cl.serialize(script), serializeCV(message));

  // and the fake service, which follows request.rs, reads it back
  const parsed = parseBreakGlass(message);
  assert.equal(parsed.patient, PATIENT);
  assert.deepEqual(parsed.dataTypes, ["blood-type", "allergies"]);
  assert.equal(parsed.nonce, 2n ** 53n - 1n);
  assert.equal(parsed.device, "ward-7 tablet");
});

test("the signature is SIP-018 over the page's domain and recovers to the key's principal", async () => {
  const message = breakGlassMessage(REQUEST);
  const signature = signStructured(message, domain(), KEY);
  assert.match(signature, /^0x[0-9a-f]{130}$/);
  assert.equal(await signerPrincipal(message, domain(), signature, "testnet"), PRINCIPAL);
  // the hash by hand: sha256("SIP018" ‖ sha256(domain) ‖ sha256(message))
  const sha = (b) => createHash("sha256").update(b).digest();
  const hash = sha(Buffer.concat([Buffer.from("SIP018"), sha(Buffer.from(serializeCV(domain()), "hex")), sha(Buffer.from(serializeCV(message), "hex"))]));
  assert.equal(publicKeyToAddress(publicKeyFromSignatureRsv(hash.toString("hex"), signature.slice(2)), "testnet"), PRINCIPAL);
  // deterministic (RFC 6979), and what @stacks/transactions signs directly
  assert.equal(signature.slice(2), signStructuredData({ message, domain: domain(), privateKey: KEY }));
  // low-S, as the service requires
  const half = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0n;
  assert.ok(BigInt(`0x${signature.slice(66, 130)}`) <= half);
  // under another chain id, another signer
  assert.notEqual(await signerPrincipal(message, domain(1), signature, "testnet"), PRINCIPAL);

  const body = requestBody(message, signature, domain());
  assert.deepEqual(Object.keys(body), ["message", "signature", "domain"]);
  assert.equal(body.message, `0x${serializeCV(message)}`);
  assert.equal(body.domain, `0x${serializeCV(domain())}`);
});

test("the message refuses what src/request.rs refuses", () => {
  const bad = [
    [{ patient: "ab".repeat(31) }, /64 hexadecimal/],
    [{ patient: "zz".repeat(32) }, /64 hexadecimal/],
    [{ dataTypes: [] }, /at least one/],
    [{ dataTypes: ["allergies", "allergies"] }, /twice/],
    [{ dataTypes: ["x-rays"] }, /Unknown kind/],
    [{ dataTypes: DATA_TYPES.slice(0, 9) }, /at most 8/],
    [{ reason: "" }, /reason is required/],
    [{ reason: " \n\t " }, /reason is required/],
    [{ reason: "é".repeat(501) }, /at most 500/],
    [{ device: "tablette n°7" }, /ASCII/],
    [{ device: "x".repeat(65) }, /ASCII/],
    [{ nonce: 2 ** 53 }, /nonce/],
    [{ issuedAt: -1 }, /issued-at/],
  ];
  for (const [change, pattern] of bad) {
    assert.throws(() => breakGlassMessage({ ...REQUEST, ...change }), (e) => e instanceof UserError && pattern.test(e.message), JSON.stringify(change));
  }
  // 500 characters (not bytes) is fine, as in Rust's chars().count()
  assert.equal(breakGlassMessage({ ...REQUEST, reason: "é".repeat(500) }).value.reason.value.length, 500);
  assert.equal(breakGlassMessage({ ...REQUEST, dataTypes: DATA_TYPES.slice(0, 8) }).value["data-types"].value.length, 8);
});

test("patient ids are 64 hex, typed or scanned; device names are ASCII or none; nonces are 53-bit", () => {
  assert.equal(parsePatientId(`  0X${PATIENT.toUpperCase()} `), PATIENT);
  assert.equal(patientFromScan(`0x${PATIENT}`), PATIENT);
  assert.equal(patientFromScan(PATIENT), PATIENT);
  for (const raw of ["https://example.org/p/1", PATIENT.slice(1), `${PATIENT}00`, "", null, undefined]) assert.equal(patientFromScan(raw), null);
  assert.equal(summaryPath(PATIENT.toUpperCase()), `/fhir/Patient/${PATIENT}/$summary`);
  assert.equal(normalizeDevice(""), null);
  assert.equal(normalizeDevice("  icu-3  "), "icu-3");
  const nonces = new Set(Array.from({ length: 200 }, () => randomNonce()));
  assert.equal(nonces.size, 200);
  for (const n of nonces) assert.ok(Number.isSafeInteger(n) && n > 0);
  assert.ok([...nonces].some((n) => n > 2 ** 48), "the nonces use the high bits");
});

test("the key is kept under a PIN of 6+ digits, bound to the tablet's storage name", async () => {
  for (const bad of ["", "12345", "12345a", "１２３４５６", " 123456"]) assert.throws(() => checkPin(bad), UserError, bad);
  assert.equal(checkPin("000000"), "000000");
  await assert.rejects(encryptTabletKey(KEY, "12345"), /at least 6 digits/);

  const record = await encryptTabletKey(KEY.slice(0, 64), PIN);
  assert.equal(record.iterations, 600000);
  assert.equal(record.principal, PRINCIPAL);
  assert.ok(!JSON.stringify(record).includes(KEY.slice(0, 64)));
  assert.equal(await decryptTabletKey(JSON.stringify(record), PIN), KEY);
  await assert.rejects(decryptTabletKey(record, "246811"), WrongPinError);
  await assert.rejects(decryptTabletKey(record, ""), /Enter your PIN/);
  await assert.rejects(decryptTabletKey("{}", PIN), /unreadable/);
  assert.equal(TABLET_KEY_STORAGE, "breakglass.tablet.key");
  assert.notEqual(TABLET_KEY_STORAGE, STORAGE_KEY);

  // a tablet record does not open as a reviewer's, nor the reverse (the storage name is bound)
  const reviewer = await encryptKey(KEY, "24681024", FAST);
  await assert.rejects(decryptTabletKey(reviewer, "24681024"), WrongPinError);
  const tablet = await encryptTabletKey(KEY, "24681024", FAST);
  await assert.rejects(decryptKey(tablet, "24681024"), /Wrong passphrase/);
  assert.equal(await decryptTabletKey(tablet, "24681024"), KEY);
});

test("options: data types with their windows or reasons; a key without a verified role cannot submit", () => {
  const o = parseOptions(
    {
      principal: PRINCIPAL,
      role: "nurse",
      status: "verified",
      data_types: [
        { data_type: "allergies", allowed: true, window_minutes: 60 },
        { data_type: "lab-results", allowed: false, reason: "role nurse may not open lab-results (no policy permits it)" },
        { data_type: "allergies", allowed: true },
        { data_type: "<img src=x>", allowed: true },
        { data_type: "teleportation", allowed: true },
      ],
    },
    PRINCIPAL,
  );
  assert.equal(o.usable, true);
  assert.deepEqual(o.dataTypes, [
    { dataType: "allergies", label: "Allergies", allowed: true, windowMinutes: 60, reason: null },
    { dataType: "lab-results", label: "Lab results", allowed: false, windowMinutes: null, reason: "role nurse may not open lab-results (no policy permits it)" },
    { dataType: "teleportation", label: "teleportation", allowed: false, windowMinutes: null, reason: "this tablet page does not know this kind of data" },
  ]);
  const none = parseOptions({ principal: PRINCIPAL, role: null, status: "unknown", data_types: [] }, PRINCIPAL);
  assert.equal(none.usable, false);
  assert.match(none.why, /not a registered provider/);
  const suspended = parseOptions({ principal: PRINCIPAL, role: "physician", status: "suspended", data_types: [{ data_type: "allergies", allowed: true }] }, PRINCIPAL);
  assert.equal(suspended.usable, false);
  assert.match(suspended.why, /"suspended", not verified/);
  assert.throws(() => parseOptions({ principal: "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG", data_types: [] }, PRINCIPAL), /answered for/);
  assert.throws(() => parseOptions("nope", PRINCIPAL), UserError);
});

test("a grant is read for its token and window; a refusal as its sentence and code", () => {
  assert.deepEqual(parseGrant({ access_token: "t", expires_in: 299.7, scope: "patient/AllergyIntolerance.rs", access_id: "ab" }), {
    token: "t",
    expiresIn: 299,
    scope: "patient/AllergyIntolerance.rs",
    accessId: "ab",
  });
  assert.throws(() => parseGrant({ expires_in: 60 }), UserError);
  assert.throws(() => parseGrant({ access_token: "t" }), UserError);

  const r = refusalText(
    { type: "https://breakglass.example/problems/policy-denied", title: "Refused by policy", status: 403, detail: "role nurse may not open lab-results (no policy permits it)", code: "policy-denied" },
    403,
  );
  assert.equal(r.sentence, "Role nurse may not open lab-results (no policy permits it).");
  assert.equal(r.code, "policy-denied");
  // what to do next, in plain words, after the service's own sentence
  assert.equal(r.next, "Your role may not open this: untick it, or ask a colleague whose role may.");
  assert.equal(r.text, "Access refused: Refused by policy. Role nurse may not open lab-results (no policy permits it). Your role may not open this: untick it, or ask a colleague whose role may. (code: policy-denied)");
  const busy = refusalText({ title: "Rate limited", detail: "too many requests", code: "rate-limited" }, 429, { retryAfter: "7" });
  assert.equal(busy.retry, "You may try again in 7 s.");
  assert.match(busy.text, /You may try again in 7 s\. \(code: rate-limited\)$/, "the wait given says it: no second next step");
  assert.equal(refusalText({ code: "rate-limited", detail: "too many" }, 429).next, "Wait a moment, then sign again.");
  const stale = refusalText({ code: "stale-request", title: "Stale request", detail: "the request was issued at 1, 125 s away from the server's clock (at most 60 s)" }, 401);
  assert.match(stale.text, /sign again \(the page now dates requests by the service's clock\); if it happens again, set the tablet's date and time to automatic\. \(code: stale-request\)$/);
  // every code a clinician meets has its next step; one the service does not give has none
  for (const code of ["not-on-call", "patient-opted-out", "data-type-not-allowed-by-patient", "provider-not-verified", "unknown-provider", "chain-state-stale", "audit-pending", "token-revoked", "summary-integrity", "summary-update-pending"]) {
    assert.ok(refusalText({ code, detail: "d" }, 403).next, code);
  }
  assert.equal(refusalText({ code: "made-up", detail: "d" }, 403).next, null);
  const read = refusalText({ title: "Invalid token", detail: "the token is not valid (expired, revoked, or not ours)", code: "invalid-token" }, 401, { during: "read" });
  assert.equal(read.heading, "The record could not be read: Invalid token");
  // no problem body (a proxy's 502): the status stands in
  const bare = refusalText(null, 502, { during: "read" });
  assert.equal(bare.code, "http-502");
  assert.equal(bare.sentence, "The server answered 502.");
  assert.equal(refusalText({ code: "<b>x</b>", detail: "d" }, 400).code, "http-400", "a code that is not a token is not shown");
});

test("a request's age is the older of the service's clock and the monotonic one; one older than the service takes, less 15 s, is not sent", () => {
  // the service's allowance as src/request.rs has it
  const rust = readFileSync(new URL("../../src/request.rs", import.meta.url), "utf8");
  assert.equal(MAX_SKEW_S, Number(/pub const MAX_SKEW_SECS: u64 = (\d+);/.exec(rust)?.[1]));
  assert.equal(SEND_WITHIN_S, MAX_SKEW_S - 15);
  assert.equal(requestAge(1000, 1030, 30_000), 30);
  // the tablet's clock set back while the wallet's prompt was open: the monotonic clock counts
  assert.equal(requestAge(1000, 990, 70_400), 70.4);
  // the monotonic clock stood still while the tablet slept: the wall clock counts
  assert.equal(requestAge(1000, 1300, 2_000), 300);
  assert.equal(requestAge(undefined, 1030, Number.NaN), Infinity, "unknown is too old");
  assert.equal(requestAge(1000, 1000 + SEND_WITHIN_S, 0) > SEND_WITHIN_S, false);
  assert.equal(requestAge(1000, 1000, SEND_WITHIN_S * 1000 + 1) > SEND_WITHIN_S, true);
});

test("a wallet's approval that took too long: the wallet is asked once more, then the clinician told to tap again", () => {
  assert.equal(
    walletTooSlowText(70.4),
    "The wallet's approval took 1 min 10 s: too long for the service to accept the request (it must be approved within 45 s), so it was not sent. The wallet is asking again, for a fresh request: approve it now.",
  );
  assert.equal(
    walletTooSlowText(180, { again: true }),
    'The wallet\'s approval took too long again (3 min; a request must be approved within 45 s), so it was not sent. Tap "Sign and open" again to sign a fresh request, and approve it in the wallet within 45 s.',
  );
  assert.match(walletTooSlowText(46, { again: true, button: "Open the record" }), /\(46 s; .*Tap "Open the record" again/);
  assert.match(walletTooSlowText(Infinity), /^The wallet's approval took more than 45 s: too long/, "an age not known");
});

test("the countdown reads m:ss (h:mm:ss from an hour), rounding up, never below zero", () => {
  assert.equal(formatRemaining(299), "4:59");
  assert.equal(formatRemaining(298.2), "4:59");
  assert.equal(formatRemaining(60), "1:00");
  assert.equal(formatRemaining(9), "0:09");
  assert.equal(formatRemaining(0), "0:00");
  assert.equal(formatRemaining(-3), "0:00");
  assert.equal(formatRemaining(Number.NaN), "0:00");
  assert.equal(formatRemaining(3600), "1:00:00");
  assert.equal(formatRemaining(2 * 3600 + 5 * 60 + 7), "2:05:07");
  assert.equal(countdownText(299), "Access ends in 4:59");
  assert.equal(warningText(300), "5 minutes of access left.");
  assert.equal(warningText(60), "1 minute of access left.");
  assert.equal(warningText(10), "10 seconds of access left.");
  assert.equal(CLOSED_TEXT, "The access window has closed; the data was removed from this screen.");
});

test("a FHIR Bundle reads as groups of lines, most urgent first, the blood type first among observations", () => {
  const record = sampleRecord(PATIENT);
  const bundle = {
    resourceType: "Bundle",
    type: "searchset",
    entry: [
      { resource: { resourceType: "Composition", title: "Patient summary" } },
      { resource: { resourceType: "Patient", id: PATIENT, name: [{ text: "Not shown" }] } },
      ...record.immunizations,
      ...record.vitals,
      ...record.medications,
      ...record.allergies,
      ...record["blood-type"],
      ...record["advance-directives"],
      ...record.problems,
      { resourceType: "MedicationStatement", medicationReference: { reference: "Medication/m1" }, dosage: [{ text: "1 puff as needed" }], status: "active" },
      { resourceType: "Medication", id: "m1", code: { coding: [{ display: "Salbutamol inhaler" }] } },
      { resourceType: "Observation", code: { coding: [{ system: "http://loinc.org", code: "2339-0", display: "Glucose" }] }, valueQuantity: { value: 5.4, unit: "mmol/L" }, status: "preliminary" },
      { resourceType: "OperationOutcome", issue: [] },
      { resourceType: "Basic", id: "b1", code: { text: "Something else" } },
    ].map((resource) => ({ resource: resource.resource ?? resource })),
  };
  const groups = summaryGroups(bundle);
  assert.deepEqual(
    groups.map((g) => g.type),
    ["AllergyIntolerance", "Observation", "MedicationStatement", "MedicationRequest", "Condition", "Consent", "DocumentReference", "Immunization", "Medication", "Basic"],
  );
  const lines = Object.fromEntries(groups.map((g) => [g.type, g.lines]));
  assert.deepEqual(lines.AllergyIntolerance, [
    "Penicillin G (pénicilline) — criticality high — reaction: Anaphylaxis, Hives (severe) — active",
    "Peanut — criticality low — active",
  ]);
  assert.deepEqual(lines.Observation, [
    "Blood type: O Rh(D) positive",
    "Blood pressure: Systolic 142 mmHg, Diastolic 91 mmHg — 2025-11-30",
    "Glucose: 5.4 mmol/L — preliminary",
  ]);
  assert.deepEqual(lines.MedicationStatement, ["Warfarin 5 mg tablet — 5 mg by mouth once daily", "Salbutamol inhaler — 1 puff as needed"]);
  assert.deepEqual(lines.MedicationRequest, ["Metformin 500 mg — 500 mg twice daily with meals"]);
  assert.deepEqual(lines.Condition, ["Atrial fibrillation — active"]);
  assert.deepEqual(lines.Consent, ["Do not resuscitate (DNR) — active — 2024-02-01"]);
  assert.deepEqual(lines.DocumentReference, ["Advance directive — Living will, signed 2024-02-01 — current"]);
  assert.deepEqual(lines.Immunization, ["Tetanus and diphtheria toxoids — 2021-05-04"]);
  assert.deepEqual(lines.Basic, ["Something else"]);
  assert.equal(groups[0].title, "Allergies and intolerances");

  // markup in the data stays text (the page sets textContent), and very long lines are cut
  const odd = summaryGroups({ resourceType: "Bundle", entry: [{ resource: { resourceType: "Condition", code: { text: `<img src=x onerror=alert(1)>${"x".repeat(600)}` } } }] });
  assert.ok(odd[0].lines[0].startsWith("<img src=x onerror=alert(1)>"));
  assert.equal([...odd[0].lines[0]].length, 400);
  assert.deepEqual(summaryGroups({ resourceType: "Bundle", type: "searchset" }), []);
  assert.throws(() => summaryGroups({ resourceType: "OperationOutcome" }), /not a FHIR Bundle/);
  // the server's notes on the summary itself: its OperationOutcome entries, not records
  assert.deepEqual(summaryNotes(bundle), []);
  const noted = {
    resourceType: "Bundle",
    entry: [
      { resource: { resourceType: "AllergyIntolerance", code: { text: "Peanut" } } },
      { resource: { resourceType: "OperationOutcome", issue: [{ severity: "information", diagnostics: "a newer summary is being recorded" }, { details: { text: "second" } }, {}] }, search: { mode: "outcome" } },
    ],
  };
  assert.deepEqual(summaryNotes(noted), ["a newer summary is being recorded", "second"]);
  assert.deepEqual(summaryGroups(noted).map((g) => g.type), ["AllergyIntolerance"]);
  assert.equal([...summaryNotes({ resourceType: "Bundle", entry: [{ resource: { resourceType: "OperationOutcome", issue: [{ diagnostics: "y".repeat(900) }] }, search: { mode: "outcome" } }] })[0]].length, 400);
  // an OperationOutcome that is not the server's outcome entry is not its note
  assert.deepEqual(summaryNotes({ resourceType: "Bundle", entry: [{ resource: { resourceType: "OperationOutcome", issue: [{ diagnostics: "x" }] }, search: { mode: "match" } }] }), []);
  assert.throws(() => summaryNotes({ resourceType: "OperationOutcome" }), /not a FHIR Bundle/);
  assert.throws(() => summaryGroups(null), UserError);
  assert.equal(conceptText({ coding: [{ code: "X1" }] }), "X1");
  assert.equal(conceptText(undefined), null);
});

test("a wallet gives its address by stx_getAddresses (or getAddresses), on the page's network", async () => {
  const calls = [];
  const provider = {
    async request(method) {
      calls.push(method);
      if (method === "stx_getAddresses") throw { error: { code: -32601, message: "unknown method" } };
      return { result: { addresses: [{ symbol: "BTC", address: "bc1qxyz" }, { symbol: "STX", address: "SP1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSQTBDQZ" }, { symbol: "STX", address: PRINCIPAL }] } };
    },
  };
  assert.equal(await walletAddress(provider, "testnet"), PRINCIPAL);
  assert.deepEqual(calls, ["stx_getAddresses", "getAddresses"]);
  assert.equal(await walletAddress({ request: async () => ({ result: { addresses: [{ address: PRINCIPAL }] } }) }), PRINCIPAL);
  await assert.rejects(walletAddress({ request: async () => ({ result: { addresses: [{ address: PRINCIPAL }] } }) }, "mainnet"), /no Stacks mainnet address/);
});

test("percentiles are nearest-rank", () => {
  assert.equal(percentile([], 50), null);
  assert.equal(percentile([5], 95), 5);
  assert.equal(percentile([3, 1, 2, 4], 50), 2);
  assert.equal(percentile([...Array(100).keys()].map((i) => i + 1), 95), 95);
  assert.equal(principalOf(KEY), PRINCIPAL);
});

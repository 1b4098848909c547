// The clinician's tablet page's pure functions: no DOM, no storage, no network (tablet.mjs wires
// them to the page; tests/tablet.test.mjs runs them in Node). Built on lib.mjs (hex, keys,
// PBKDF2 → AES-GCM, SIP-018 signing, wallets), which the reviewer pages share.
//
// - The clinician's key is kept only encrypted under a PIN of at least 6 digits, as the
//   reviewer's key is under a passphrase (PBKDF2-SHA256 600,000 → AES-GCM-256), with the
//   tablet's own storage name bound as associated data: a tablet record does not open as a
//   reviewer's record, nor the reverse.
// - A break-glass request is SIP-018 structured data under the page's domain:
//   {action: "break-glass", patient: (buff 32), data-types: (list 8 (string-ascii 32)),
//    reason: (string-utf8 500), nonce: uint, issued-at: uint, device: (optional (string-ascii 64))}
//   checked here by the same rules as src/request.rs, so the tablet refuses what the service would.
// - What the server answers (options, a grant, a FHIR Bundle, a problem) is read into plain
//   values; the page only ever puts them into the DOM as text.

import {
  bufferCV,
  listCV,
  noneCV,
  privateKeyToAddress,
  serializeCV,
  someCV,
  stringAsciiCV,
  stringUtf8CV,
  tupleCV,
  uintCV,
} from "@stacks/transactions";
import {
  PBKDF2_ITERATIONS,
  UserError,
  bytesToHex,
  deriveAesKey,
  hexToBytes,
  normalizePrivateKey,
  parseKeyRecord,
  strip0x,
  subtle,
} from "./lib.mjs";

export const TABLET_KEY_STORAGE = "breakglass.tablet.key";
export const DEVICE_STORAGE = "breakglass.tablet.device";
export const BREAK_GLASS_ACTION = "break-glass";
export const MIN_PIN_DIGITS = 6;
export const MAX_DATA_TYPES = 8;
export const MAX_REASON_CHARS = 500;
export const MAX_DEVICE_CHARS = 64;
export const CLOSED_TEXT = "The access window has closed; the data was removed from this screen.";
/** What the status says once the clinician closed the record on this tablet (the window runs on). */
export const ENDED_TEXT = "The record was closed on this tablet; the data was removed from this screen. The access itself stays open until its window ends.";

/** The service's data types (src/domain: DataType), with the words a clinician reads. */
export const DATA_TYPE_LABELS = Object.freeze({
  allergies: "Allergies",
  medications: "Medications",
  problems: "Problems",
  "blood-type": "Blood type",
  "advance-directives": "Advance directives",
  immunizations: "Immunizations",
  "emergency-summary": "Emergency summary",
  vitals: "Vital signs",
  "lab-results": "Lab results",
  procedures: "Procedures",
  imaging: "Imaging",
  "clinical-notes": "Clinical notes",
});
export const DATA_TYPES = Object.freeze(Object.keys(DATA_TYPE_LABELS));

export class WrongPinError extends UserError {
  constructor() {
    super("Wrong PIN: the key stored on this tablet could not be decrypted. Check the PIN and try again.");
    this.name = "WrongPinError";
  }
}

// ---------------------------------------------------------------------------------------------
// the clinician's key, under a PIN

const HEX = /^[0-9a-f]*$/;

/** A PIN as typed: at least 6 digits (ASCII), else a UserError. */
export function checkPin(pin, { what = "PIN" } = {}) {
  if (typeof pin !== "string" || !/^[0-9]+$/.test(pin) || pin.length < MIN_PIN_DIGITS) {
    throw new UserError(`The ${what} is at least ${MIN_PIN_DIGITS} digits (0–9 only).`);
  }
  return pin;
}

function tabletAssociatedData(principal) {
  return new TextEncoder().encode(`${TABLET_KEY_STORAGE}/v1/${principal}`);
}

/**
 * Encrypts a key under a PIN: the record for localStorage["breakglass.tablet.key"],
 * `{v: 1, principal, salt, iv, ciphertext, iterations}` (hex), the same shape as the reviewer's.
 */
export async function encryptTabletKey(privateKey, pin, { network = "testnet", iterations = PBKDF2_ITERATIONS, crypto } = {}) {
  const key = normalizePrivateKey(privateKey);
  checkPin(pin, { what: "new PIN" });
  const c = subtle(crypto);
  const principal = privateKeyToAddress(key, network);
  const salt = c.getRandomValues(new Uint8Array(16));
  const iv = c.getRandomValues(new Uint8Array(12));
  const aes = await deriveAesKey(c, pin, salt, iterations);
  const ciphertext = new Uint8Array(
    await c.subtle.encrypt({ name: "AES-GCM", iv, additionalData: tabletAssociatedData(principal) }, aes, hexToBytes(key)),
  );
  return { v: 1, principal, salt: bytesToHex(salt), iv: bytesToHex(iv), ciphertext: bytesToHex(ciphertext), iterations };
}

/** Decrypts a tablet record with its PIN: the 66-hex key. A wrong PIN is a WrongPinError. */
export async function decryptTabletKey(record, pin, { crypto } = {}) {
  const r = parseKeyRecord(record);
  if (!r) throw new UserError("The key stored on this tablet is unreadable: import the key again.");
  if (typeof pin !== "string" || pin === "") throw new UserError("Enter your PIN.");
  const c = subtle(crypto);
  const aes = await deriveAesKey(c, pin, hexToBytes(r.salt), r.iterations);
  let plain;
  try {
    plain = await c.subtle.decrypt(
      { name: "AES-GCM", iv: hexToBytes(r.iv), additionalData: tabletAssociatedData(r.principal) },
      aes,
      hexToBytes(r.ciphertext),
    );
  } catch {
    throw new WrongPinError();
  }
  const key = normalizePrivateKey(bytesToHex(new Uint8Array(plain)));
  const mainnet = r.principal.startsWith("SP") || r.principal.startsWith("SM");
  if (privateKeyToAddress(key, mainnet ? "mainnet" : "testnet") !== r.principal) {
    throw new UserError("The key stored on this tablet does not match its principal: import the key again.");
  }
  return key;
}

// ---------------------------------------------------------------------------------------------
// the request

/** A patient id as typed or scanned (64 hex, optional 0x, white space around) to 64 lower-case hex. */
export function parsePatientId(input) {
  const h = String(strip0x(String(input ?? "").trim()) ?? "").toLowerCase();
  if (h.length !== 64 || !HEX.test(h)) {
    throw new UserError("The patient id is 64 hexadecimal characters (0–9, a–f; an optional 0x before them).");
  }
  return h;
}

/** A scanned code's raw value as a patient id, or null if it is not one. */
export function patientFromScan(rawValue) {
  try {
    return parsePatientId(rawValue);
  } catch {
    return null;
  }
}

/** The device name: null when blank, else 1 to 64 printable ASCII characters. */
export function normalizeDevice(input) {
  const d = String(input ?? "").trim();
  if (d === "") return null;
  if (d.length > MAX_DEVICE_CHARS || !/^[\x20-\x7e]+$/.test(d)) {
    throw new UserError(`The device name is at most ${MAX_DEVICE_CHARS} plain ASCII characters (letters, digits, punctuation).`);
  }
  return d;
}

/** A 53-bit random nonce (an integer JavaScript keeps exactly), never 0. */
export function randomNonce({ crypto } = {}) {
  const c = crypto ?? globalThis.crypto;
  for (;;) {
    const [hi, lo] = c.getRandomValues(new Uint32Array(2));
    const n = (hi & 0x1fffff) * 2 ** 32 + lo;
    if (n !== 0) return n;
  }
}

/**
 * The message `{action, patient, data-types, reason, nonce, issued-at, device}` checked by the
 * rules of src/request.rs (known data types, 1 to 8, none twice; a reason of 1 to 500 characters
 * that is not only white space; device 1 to 64 ASCII or none). Clarity serializes a tuple's keys
 * in name order, so the field order here does not matter.
 */
export function breakGlassMessage({ patient, dataTypes, reason, nonce, issuedAt, device = null }) {
  const id = parsePatientId(patient);
  const types = Array.isArray(dataTypes) ? dataTypes : [];
  if (types.length === 0) throw new UserError("Choose at least one kind of data to open.");
  if (types.length > MAX_DATA_TYPES) throw new UserError(`One request opens at most ${MAX_DATA_TYPES} kinds of data.`);
  const seen = new Set();
  for (const t of types) {
    if (!DATA_TYPES.includes(t)) throw new UserError(`Unknown kind of data: ${String(t).slice(0, 40)}.`);
    if (seen.has(t)) throw new UserError(`${DATA_TYPE_LABELS[t]} is chosen twice.`);
    seen.add(t);
  }
  const text = typeof reason === "string" ? reason : "";
  if (text.trim() === "") throw new UserError("Write why you need the data (the reason is required).");
  if ([...text].length > MAX_REASON_CHARS) throw new UserError(`The reason is at most ${MAX_REASON_CHARS} characters.`);
  for (const [name, n] of [["nonce", nonce], ["issued-at", issuedAt]]) {
    if (!Number.isSafeInteger(n) || n < 0) throw new UserError(`The request's ${name} is not a whole number.`);
  }
  const dev = device === null || device === undefined ? null : normalizeDevice(device);
  return tupleCV({
    action: stringAsciiCV(BREAK_GLASS_ACTION),
    patient: bufferCV(hexToBytes(id)),
    "data-types": listCV(types.map((t) => stringAsciiCV(t))),
    reason: stringUtf8CV(text),
    nonce: uintCV(nonce),
    "issued-at": uintCV(issuedAt),
    device: dev === null ? noneCV() : someCV(stringAsciiCV(dev)),
  });
}

/** The body of POST /v1/break-glass: message, signature and (so a wrong network is named) domain. */
export function requestBody(message, signature, domain) {
  const body = { message: `0x${serializeCV(message)}`, signature };
  if (domain) body.domain = `0x${serializeCV(domain)}`;
  return body;
}

// ---------------------------------------------------------------------------------------------
// the server's answers

/**
 * GET /tablet/options: who the key is to the service and which data types it may open.
 * `usable` is false (with `why`) unless the principal has a role and is verified.
 */
export function parseOptions(json, principal) {
  if (!json || typeof json !== "object" || !Array.isArray(json.data_types)) {
    throw new UserError("The server's list of data types is not readable.");
  }
  if (principal && json.principal && json.principal !== principal) {
    throw new UserError(`The server answered for ${json.principal}, not for ${principal}.`);
  }
  const role = typeof json.role === "string" && json.role ? json.role : null;
  const status = typeof json.status === "string" && json.status ? json.status : "unknown";
  const dataTypes = [];
  for (const d of json.data_types) {
    const name = d?.data_type;
    if (typeof name !== "string" || !/^[a-z][a-z0-9-]{0,31}$/.test(name) || dataTypes.some((x) => x.dataType === name)) continue;
    const minutes = Number.isFinite(d.window_minutes) && d.window_minutes > 0 ? d.window_minutes : null;
    const known = DATA_TYPES.includes(name);
    const allowed = d.allowed === true && known;
    dataTypes.push({
      dataType: name,
      label: DATA_TYPE_LABELS[name] ?? name,
      allowed,
      windowMinutes: allowed ? minutes : null,
      reason: allowed ? null : str(d.reason) ?? (known ? "not available to you" : "this tablet page does not know this kind of data"),
    });
  }
  let why = null;
  if (role === null) why = `${json.principal ?? principal ?? "This key"} is not a registered provider: break-glass requests from it are refused.`;
  else if (status !== "verified") why = `Your provider status is "${status}", not verified: break-glass requests are refused until an authority verifies you.`;
  else if (!dataTypes.some((d) => d.allowed)) why = `No data type is open to the role ${role}.`;
  return { principal: json.principal ?? principal ?? null, role, status, usable: why === null, why, dataTypes };
}

/** The 201 answer of POST /v1/break-glass. */
export function parseGrant(json) {
  const token = json?.access_token;
  const expiresIn = json?.expires_in;
  if (typeof token !== "string" || token === "" || !Number.isFinite(expiresIn) || expiresIn < 0) {
    throw new UserError("The server granted access but its answer is not readable (no token or window).");
  }
  return {
    token,
    expiresIn: Math.floor(expiresIn),
    scope: typeof json.scope === "string" ? json.scope : Array.isArray(json.scope) ? json.scope.join(" ") : "",
    accessId: typeof json.access_id === "string" ? json.access_id : null,
  };
}

/** Where the patient's summary is read. */
export function summaryPath(patient) {
  return `/fhir/Patient/${parsePatientId(patient)}/$summary`;
}

// What a clinician can do about each refusal the service gives, in plain words: the service's
// own sentence says why (and names the principal, the nonce or the data type), this says what
// next. A code without an entry shows the service's sentence alone.
const UNAVAILABLE = "The service cannot confirm this right now: try again in a moment. If it goes on, follow the hospital's downtime procedure.";
const CLOSE_AND_AGAIN = "This access no longer opens the record: close it, and break the glass again if you still need the data.";
export const NEXT_STEPS = Object.freeze({
  "stale-request": "This tablet's clock differs from the service's: sign again (the page now dates requests by the service's clock); if it happens again, set the tablet's date and time to automatic.",
  "bad-signature": "Reload this page and sign again; if it happens again, import your key again.",
  "wrong-domain": "Reload this page and sign again: it was made for another network or version of the service.",
  "replayed-request": "Sign a new request (each one is recorded as an access of its own).",
  "rate-limited": "Wait a moment, then sign again.",
  "unknown-provider": "This key is not registered as a clinician on the chain: check it is your key, or ask the credentialing office.",
  "provider-not-verified": "Your credentials are not verified now (pending, suspended or revoked): ask the credentialing office.",
  "not-on-call": "No paging system shows you on call for this: acknowledge the page, or ask the on-call lead to page you, then sign again.",
  "patient-opted-out": "The patient refused emergency access to their records: treat without them, by the hospital's usual routes.",
  "data-type-not-allowed-by-patient": "Untick what the patient did not allow, then sign again.",
  "policy-denied": "Your role may not open this: untick it, or ask a colleague whose role may.",
  "chain-state-stale": UNAVAILABLE,
  "chain-state-unavailable": UNAVAILABLE,
  "too-many-lookups": UNAVAILABLE,
  "store-unavailable": UNAVAILABLE,
  "audit-unavailable": UNAVAILABLE,
  "token-unavailable": UNAVAILABLE,
  "audit-pending": "The service did not record the access in time, so nothing opened (it may still be recorded): try again in a moment.",
  "invalid-token": CLOSE_AND_AGAIN,
  "token-revoked": CLOSE_AND_AGAIN,
  "no-token": CLOSE_AND_AGAIN,
  "insufficient-scope": CLOSE_AND_AGAIN,
  "wrong-patient": CLOSE_AND_AGAIN,
  "summary-integrity": "The stored record does not match the one on chain: do not rely on it, and tell the service's operators.",
  "summary-update-pending": "The record is being updated: read it again in a minute.",
  "no-summary": "No emergency summary is on file for this patient.",
  "summary-not-recorded": "No emergency summary is on file for this patient.",
  "malformed-request": "Check the patient id (64 characters from the wristband) and the reason, then sign again.",
  "invalid-patient-id": "Check the patient id (64 characters from the wristband), then sign again.",
});

/**
 * An RFC 9457 problem for #refusal: the sentence to read (`detail`, else `title`), what to do
 * next (`NEXT_STEPS`, by code), the stable `code`, and a one-line `text`. `during` is "grant",
 * "read" or "options"; `retryAfter` the Retry-After header, if any.
 */
export function refusalText(problem, status, { during = "grant", retryAfter = null } = {}) {
  const p = problem && typeof problem === "object" ? problem : {};
  const title = typeof p.title === "string" && p.title.trim() ? p.title.trim() : null;
  const detail = typeof p.detail === "string" && p.detail.trim() ? p.detail.trim() : null;
  const httpStatus = Number.isInteger(status) ? status : Number.isInteger(p.status) ? p.status : null;
  const lead = { read: "The record could not be read", options: "What you may open could not be loaded" }[during] ?? "Access refused";
  let sentence = detail ?? title ?? `the server answered ${httpStatus ?? "with an error"}`;
  sentence = sentence.charAt(0).toUpperCase() + sentence.slice(1);
  if (!/[.!?]$/.test(sentence)) sentence += ".";
  const code = typeof p.code === "string" && /^[A-Za-z0-9._-]{1,64}$/.test(p.code) ? p.code : httpStatus ? `http-${httpStatus}` : "unknown";
  const seconds = Number.parseInt(retryAfter ?? "", 10);
  const retry = Number.isFinite(seconds) && seconds >= 0 ? `You may try again in ${seconds} s.` : null;
  // (a wait the server gave says what to do already for a code whose next step is to wait)
  const next = Object.hasOwn(NEXT_STEPS, code) && !(retry && code === "rate-limited") ? NEXT_STEPS[code] : null;
  const heading = title && detail ? `${lead}: ${title}` : lead;
  const text = `${heading}. ${sentence}${retry ? ` ${retry}` : ""}${next ? ` ${next}` : ""} (code: ${code})`;
  return { heading, sentence, code, retry, next, text };
}

// ---------------------------------------------------------------------------------------------
// a request's freshness

/** How far from its clock the service takes a request's issued-at (src/request.rs MAX_SKEW_SECS). */
export const MAX_SKEW_S = 60;
/**
 * The oldest a signed request may be when it is sent: the rest of MAX_SKEW_S is left to the
 * network (a request is given up on after 15 s). Also how long a request whose answer was lost
 * is sent again.
 */
export const SEND_WITHIN_S = MAX_SKEW_S - 15;

/**
 * How old (in seconds) a request dated `issuedAt` (unix s, by the service's clock) is: by the
 * service's clock as the page has it now (`serverNowS`), and by the monotonic clock since it was
 * dated (`elapsedMs`), whichever says older (a tablet clock set back meanwhile, or a monotonic
 * clock that stood still while the tablet slept, does not make it look younger). Unknown
 * (not numbers) is too old.
 */
export function requestAge(issuedAt, serverNowS, elapsedMs) {
  const age = Math.max(serverNowS - issuedAt, elapsedMs / 1000);
  return Number.isNaN(age) ? Infinity : age;
}

/** Seconds in words: "50 s", "1 min 10 s", "3 min" (unknown: more than SEND_WITHIN_S). */
function durationText(seconds) {
  if (!Number.isFinite(seconds)) return `more than ${SEND_WITHIN_S} s`;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
}

/**
 * What the page says when the wallet's approval took `seconds`, so long that the signed request
 * would be refused as stale (`SEND_WITHIN_S`): it was not sent. The first time the wallet is
 * asked once more, for a request dated anew; `again` (the second time too) the clinician is
 * asked to tap `button` again.
 */
export function walletTooSlowText(seconds, { again = false, button = "Sign and open" } = {}) {
  const took = durationText(seconds);
  if (!again) {
    return `The wallet's approval took ${took}: too long for the service to accept the request (it must be approved within ${SEND_WITHIN_S} s), so it was not sent. The wallet is asking again, for a fresh request: approve it now.`;
  }
  return `The wallet's approval took too long again (${took}; a request must be approved within ${SEND_WITHIN_S} s), so it was not sent. Tap "${button}" again to sign a fresh request, and approve it in the wallet within ${SEND_WITHIN_S} s.`;
}

// ---------------------------------------------------------------------------------------------
// the countdown

/** Seconds as m:ss, or h:mm:ss from an hour (never negative). */
export function formatRemaining(seconds) {
  const s = Math.max(0, Math.ceil(Number.isFinite(seconds) ? seconds : 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export function countdownText(seconds) {
  return `Access ends in ${formatRemaining(seconds)}`;
}

/** The spoken warnings (seconds left) a countdown passes: each once. */
export const WARNINGS = Object.freeze([300, 60, 30, 10]);

export function warningText(seconds) {
  if (seconds >= 60) {
    const m = Math.round(seconds / 60);
    return `${m} minute${m === 1 ? "" : "s"} of access left.`;
  }
  return `${seconds} seconds of access left.`;
}

// ---------------------------------------------------------------------------------------------
// a FHIR R4 Bundle as text

const GROUPS = [
  ["AllergyIntolerance", "Allergies and intolerances"],
  ["Observation", "Observations"],
  ["MedicationStatement", "Medications taken"],
  ["MedicationRequest", "Medications prescribed"],
  ["Condition", "Problems"],
  ["Consent", "Advance directives"],
  ["DocumentReference", "Documents"],
  ["Immunization", "Immunizations"],
  ["Procedure", "Procedures"],
  ["DiagnosticReport", "Reports"],
  ["ImagingStudy", "Imaging studies"],
  ["DeviceUseStatement", "Devices in use"],
  ["Device", "Devices"],
  ["Medication", "Medication details"],
  ["Practitioner", "Practitioners"],
  ["PractitionerRole", "Practitioner roles"],
  ["Organization", "Organizations"],
];
const GROUP_ORDER = new Map(GROUPS.map(([t], i) => [t, i]));
const GROUP_TITLE = new Map(GROUPS);
const LOINC = "http://loinc.org";
const BLOOD_TYPE_CODES = new Set(["882-1", "883-9", "10331-7", "34474-5"]);
const MAX_LINE = 400;

const str = (v) => (typeof v === "string" && v.trim() ? v.trim() : null);

function clip(s) {
  const chars = [...s];
  return chars.length > MAX_LINE ? `${chars.slice(0, MAX_LINE - 1).join("")}…` : s;
}

/** A CodeableConcept (or a Coding) as words: its text, else a coding's display, else its code. */
export function conceptText(cc) {
  if (!cc || typeof cc !== "object") return null;
  const direct = str(cc.text) ?? str(cc.display);
  if (direct) return direct;
  const codings = Array.isArray(cc.coding) ? cc.coding : [];
  for (const c of codings) if (str(c?.display)) return str(c.display);
  for (const c of codings) if (str(c?.code)) return str(c.code);
  return str(cc.code);
}

const codeOf = (cc) => (Array.isArray(cc?.coding) ? cc.coding.map((c) => str(c?.code)).find(Boolean) : null) ?? null;
const hasCoding = (cc, system, codes) => Array.isArray(cc?.coding) && cc.coding.some((c) => c?.system === system && codes.has(c?.code));
const date = (v) => (str(v) ? str(v).slice(0, 10) : null);

function quantityText(q) {
  if (!q || typeof q !== "object" || q.value === undefined || q.value === null) return null;
  const unit = str(q.unit) ?? str(q.code);
  return `${q.comparator ?? ""}${q.value}${unit ? ` ${unit}` : ""}`;
}

function valueText(r) {
  return (
    conceptText(r.valueCodeableConcept) ??
    quantityText(r.valueQuantity) ??
    str(r.valueString) ??
    (typeof r.valueBoolean === "boolean" ? (r.valueBoolean ? "yes" : "no") : null) ??
    (Number.isFinite(r.valueInteger) ? String(r.valueInteger) : null) ??
    date(r.valueDateTime)
  );
}

const join = (parts) => clip(parts.filter(Boolean).join(" — "));

function medication(r, resolve) {
  return (
    conceptText(r.medicationCodeableConcept) ??
    str(r.medicationReference?.display) ??
    conceptText(resolve(r.medicationReference?.reference)?.code) ??
    "Unnamed medication"
  );
}

function humanName(names) {
  const n = (Array.isArray(names) ? names : [])[0];
  if (!n) return null;
  return str(n.text) ?? ([...(Array.isArray(n.prefix) ? n.prefix : []), ...(Array.isArray(n.given) ? n.given : []), n.family].filter((x) => str(x)).join(" ") || null);
}

function dosage(list) {
  const texts = (Array.isArray(list) ? list : []).map((d) => str(d?.text)).filter(Boolean);
  return texts.length ? texts.join("; ") : null;
}

const LINE = {
  AllergyIntolerance(r) {
    const reactions = (Array.isArray(r.reaction) ? r.reaction : [])
      .flatMap((x) => (Array.isArray(x?.manifestation) ? x.manifestation : []))
      .map(conceptText)
      .filter(Boolean);
    const severities = (Array.isArray(r.reaction) ? r.reaction : []).map((x) => str(x?.severity)).filter(Boolean);
    const verification = codeOf(r.verificationStatus);
    return join([
      conceptText(r.code) ?? "Unnamed allergy",
      str(r.criticality) ? `criticality ${r.criticality}` : null,
      reactions.length ? `reaction: ${[...new Set(reactions)].join(", ")}${severities.length ? ` (${[...new Set(severities)].join(", ")})` : ""}` : null,
      codeOf(r.clinicalStatus),
      verification && verification !== "confirmed" ? verification : null,
    ]);
  },
  Observation(r) {
    const bloodType = hasCoding(r.code, LOINC, BLOOD_TYPE_CODES);
    let value = valueText(r);
    if (!value && Array.isArray(r.component)) {
      const parts = r.component.map((c) => {
        const v = valueText(c ?? {});
        return v ? `${conceptText(c.code) ?? "component"} ${v}` : null;
      });
      value = parts.filter(Boolean).join(", ") || null;
    }
    return join([
      `${bloodType ? "Blood type" : conceptText(r.code) ?? "Unnamed observation"}: ${value ?? "no value"}`,
      bloodType ? null : date(r.effectiveDateTime ?? r.issued),
      str(r.status) && !["final", "amended", "corrected"].includes(r.status) ? r.status : null,
    ]);
  },
  MedicationStatement(r, resolve) {
    return join([medication(r, resolve), dosage(r.dosage), str(r.status) && r.status !== "active" ? r.status : null]);
  },
  MedicationRequest(r, resolve) {
    return join([medication(r, resolve), dosage(r.dosageInstruction), str(r.status) && r.status !== "active" ? r.status : null]);
  },
  Condition(r) {
    return join([conceptText(r.code) ?? "Unnamed problem", codeOf(r.clinicalStatus), conceptText(r.severity)]);
  },
  Consent(r) {
    const category = (Array.isArray(r.category) ? r.category : []).map(conceptText).find(Boolean);
    return join([category ?? conceptText(r.scope) ?? "Consent", str(r.status), date(r.dateTime)]);
  },
  DocumentReference(r) {
    const category = (Array.isArray(r.category) ? r.category : []).map(conceptText).find(Boolean);
    const type = conceptText(r.type);
    return join([type ?? category ?? "Document", type && category && type !== category ? category : null, str(r.description), str(r.status), date(r.date)]);
  },
  Immunization(r) {
    return join([conceptText(r.vaccineCode) ?? "Unnamed vaccine", date(r.occurrenceDateTime) ?? str(r.occurrenceString), str(r.status) && r.status !== "completed" ? r.status : null]);
  },
  Procedure(r) {
    return join([conceptText(r.code) ?? "Unnamed procedure", date(r.performedDateTime ?? r.performedPeriod?.start), str(r.status) && r.status !== "completed" ? r.status : null]);
  },
  DiagnosticReport(r) {
    return join([conceptText(r.code) ?? "Report", str(r.conclusion), date(r.effectiveDateTime ?? r.issued), str(r.status) && r.status !== "final" ? r.status : null]);
  },
  ImagingStudy(r) {
    const modality = (Array.isArray(r.modality) ? r.modality : []).map(conceptText).filter(Boolean).join(", ");
    return join([str(r.description) ?? "Imaging study", modality || null, date(r.started)]);
  },
  DeviceUseStatement(r, resolve) {
    const device = resolve(r.device?.reference);
    return join([str(r.device?.display) ?? deviceName(device) ?? "Device", str(r.status)]);
  },
  Device(r) {
    return join([deviceName(r) ?? "Device", str(r.status)]);
  },
  Medication(r) {
    return join([conceptText(r.code) ?? "Medication", conceptText(r.form)]);
  },
  Practitioner(r) {
    return join([humanName(r.name) ?? "Practitioner"]);
  },
  PractitionerRole(r) {
    return join([(Array.isArray(r.code) ? r.code : []).map(conceptText).find(Boolean) ?? "Role", str(r.practitioner?.display), str(r.organization?.display)]);
  },
  Organization(r) {
    return join([str(r.name) ?? "Organization"]);
  },
};

function deviceName(d) {
  if (!d) return null;
  return (Array.isArray(d.deviceName) ? d.deviceName : []).map((n) => str(n?.name)).find(Boolean) ?? conceptText(d.type);
}

function genericLine(r) {
  return join([conceptText(r.code) ?? conceptText(r.type) ?? str(r.id) ?? r.resourceType, str(r.status)]);
}

/**
 * A Bundle (document or searchset) as groups `{type, title, lines}`, one per resourceType, most
 * urgent first (allergies, then observations with the blood type first, medications, ...). Left
 * out: the IPS Composition (the document's structure), the Patient (the id on the screen names
 * them), search outcomes and entries without a resource. A reference to another entry (a
 * Medication) is followed. Refused (UserError) unless it is a Bundle.
 */
export function summaryGroups(bundle) {
  if (!bundle || typeof bundle !== "object" || bundle.resourceType !== "Bundle") {
    throw new UserError("The server's answer is not a FHIR Bundle.");
  }
  const entries = (Array.isArray(bundle.entry) ? bundle.entry : []).filter(
    (e) => e?.resource && typeof e.resource === "object" && typeof e.resource.resourceType === "string",
  );
  // references within the Bundle (a MedicationStatement's Medication, say): by fullUrl or Type/id
  const byReference = new Map();
  for (const e of entries) {
    if (typeof e.fullUrl === "string") byReference.set(e.fullUrl, e.resource);
    if (typeof e.resource.id === "string") byReference.set(`${e.resource.resourceType}/${e.resource.id}`, e.resource);
  }
  const resolve = (ref) => (typeof ref === "string" ? byReference.get(ref) ?? null : null);
  const groups = new Map();
  for (const entry of entries) {
    const r = entry.resource;
    if (r.resourceType === "Composition" || r.resourceType === "OperationOutcome" || r.resourceType === "Patient" || entry.search?.mode === "outcome") continue;
    const type = r.resourceType;
    if (!groups.has(type)) groups.set(type, []);
    const line = (LINE[type] ?? genericLine)(r, resolve);
    const first = type === "Observation" && hasCoding(r.code, LOINC, BLOOD_TYPE_CODES);
    groups.get(type)[first ? "unshift" : "push"](line);
  }
  return [...groups.entries()]
    .map(([type, lines]) => ({ type, title: GROUP_TITLE.get(type) ?? type, lines }))
    .sort((a, b) => (GROUP_ORDER.get(a.type) ?? GROUPS.length) - (GROUP_ORDER.get(b.type) ?? GROUPS.length) || a.type.localeCompare(b.type));
}

/**
 * What the server says about the summary itself, for the clinician to read before it: the
 * diagnostics of the Bundle's OperationOutcome entries (the vault serving the summary before a
 * newer one still being recorded, say), each cut to a line's length. Refused (UserError) unless
 * it is a Bundle.
 */
export function summaryNotes(bundle) {
  if (!bundle || typeof bundle !== "object" || bundle.resourceType !== "Bundle") {
    throw new UserError("The server's answer is not a FHIR Bundle.");
  }
  const notes = [];
  for (const entry of Array.isArray(bundle.entry) ? bundle.entry : []) {
    const r = entry?.resource;
    // the server's own outcome entries only (search mode "outcome"), not a record's resource
    if (r?.resourceType !== "OperationOutcome" || entry?.search?.mode !== "outcome") continue;
    for (const issue of Array.isArray(r.issue) ? r.issue : []) {
      const text = str(issue?.diagnostics) ?? conceptText(issue?.details);
      if (text) notes.push(clip(text));
    }
  }
  return notes;
}

// ---------------------------------------------------------------------------------------------
// wallets

/**
 * The wallet's Stacks address on the network: `stx_getAddresses` (Leather, Xverse, as
 * @stacks/connect calls it), else the older `getAddresses`.
 */
export async function walletAddress(provider, network = "testnet") {
  const ours = network === "mainnet" ? /^S[PM][0-9A-Z]{20,50}$/ : /^S[TN][0-9A-Z]{20,50}$/;
  for (const method of ["stx_getAddresses", "getAddresses"]) {
    let response;
    try {
      response = await provider.request(method);
    } catch {
      continue;
    }
    const list = response?.result?.addresses ?? response?.addresses ?? [];
    const found = (Array.isArray(list) ? list : []).find((a) => typeof a?.address === "string" && ours.test(a.address));
    if (found) return found.address;
  }
  throw new UserError(`The wallet gave no Stacks ${network} address.`);
}

// The reviewer pages' pure functions: no DOM, no storage, no network. The browser bundle
// (review.mjs) wires them to the pages; tests/unit.test.mjs runs them in Node (>= 20, whose
// globalThis.crypto is WebCrypto). The tablet page (tablet-lib.mjs) builds on them too: hex,
// keys, `subtle` and `deriveAesKey`, SIP-018 signing, wallets.
//
// - The reviewer's key is kept in the browser only encrypted: AES-GCM-256 under a key derived
//   with PBKDF2-SHA256 (600,000 iterations, 16-byte random salt) from a passphrase; the record's
//   principal is bound to the ciphertext as associated data.
// - Sign-in and verdicts are SIP-018 structured data (sha256("SIP018" || sha256(domain) ||
//   sha256(message))), signed in RSV order as wallets do, hex with 0x.

import {
  ClarityType,
  bufferCV,
  deserializeCV,
  encodeStructuredDataBytes,
  privateKeyToAddress,
  publicKeyFromSignatureRsv,
  publicKeyToAddress,
  serializeCV,
  signStructuredData,
  stringAsciiCV,
  tupleCV,
} from "@stacks/transactions";

export const STORAGE_KEY = "breakglass.review.key";
export const PBKDF2_ITERATIONS = 600_000;
export const DOMAIN_NAME = "breakglass";
export const SIGN_IN_ACTION = "review-sign-in";
export const REVIEW_ACTION = "review";
export const VERDICTS = Object.freeze(["appropriate", "inappropriate", "needs-follow-up"]);
export const MIN_PASSPHRASE_LENGTH = 8;

/** A refusal whose message is meant for the reviewer (shown as it is). */
export class UserError extends Error {
  constructor(message) {
    super(message);
    this.name = "UserError";
  }
}

export class WrongPassphraseError extends UserError {
  constructor() {
    super("Wrong passphrase: the stored key could not be decrypted. Check the passphrase and try again.");
    this.name = "WrongPassphraseError";
  }
}

// ---------------------------------------------------------------------------------------------
// hex

const HEX = /^[0-9a-f]*$/;

export function strip0x(hex) {
  return typeof hex === "string" && /^0x/i.test(hex) ? hex.slice(2) : hex;
}

/** Strict hex (even length, [0-9a-f] after lowercasing, optional 0x) to bytes. */
export function hexToBytes(hex) {
  const h = String(strip0x(hex)).toLowerCase();
  if (h.length % 2 !== 0 || !HEX.test(h)) throw new UserError("not hex");
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

// ---------------------------------------------------------------------------------------------
// the key

/** "mainnet" only if the page says so, else "testnet". */
export function networkFrom(metaContent) {
  return String(metaContent ?? "").trim().toLowerCase() === "mainnet" ? "mainnet" : "testnet";
}

/**
 * A private key as pasted (64 or 66 hex characters, optional 0x, surrounding white space) to
 * the 66-character compressed form (…01) that Stacks wallets use: the service derives the signer's
 * principal from the compressed public key, so a 64-character key means the same principal here.
 */
export function normalizePrivateKey(input) {
  const h = String(input ?? "").trim().replace(/^0x/i, "").toLowerCase();
  if (!HEX.test(h) || (h.length !== 64 && h.length !== 66)) {
    throw new UserError("A private key is 64 or 66 hexadecimal characters (an optional 0x before them).");
  }
  if (h.length === 66 && !h.endsWith("01")) {
    throw new UserError("A 66-character private key ends in 01 (the compressed-key flag).");
  }
  const key = h.length === 64 ? `${h}01` : h;
  try {
    privateKeyToAddress(key, "testnet"); // refuses 0 and values >= the curve order
  } catch {
    throw new UserError("That is not a valid secp256k1 private key.");
  }
  return key;
}

/** The single-sig principal of a key (compressed public key) on the network. */
export function principalOf(privateKey, network = "testnet") {
  return privateKeyToAddress(normalizePrivateKey(privateKey), network);
}

export function subtle(crypto) {
  const c = crypto ?? globalThis.crypto;
  if (!c?.subtle) throw new UserError("This browser has no WebCrypto (a secure context, https or localhost, is needed).");
  return c;
}

function associatedData(principal) {
  return new TextEncoder().encode(`${STORAGE_KEY}/v1/${principal}`);
}

export async function deriveAesKey(c, passphrase, salt, iterations) {
  const base = await c.subtle.importKey("raw", new TextEncoder().encode(passphrase), "PBKDF2", false, ["deriveKey"]);
  return c.subtle.deriveKey(
    { name: "PBKDF2", hash: "SHA-256", salt, iterations },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

/**
 * Encrypts a key under a passphrase: the record to keep in localStorage (JSON-serializable):
 * `{v: 1, principal, salt, iv, ciphertext, iterations}`, bytes as hex.
 */
export async function encryptKey(privateKey, passphrase, { network = "testnet", iterations = PBKDF2_ITERATIONS, crypto } = {}) {
  const key = normalizePrivateKey(privateKey);
  if (typeof passphrase !== "string" || passphrase.length < MIN_PASSPHRASE_LENGTH) {
    throw new UserError(`Choose a passphrase of at least ${MIN_PASSPHRASE_LENGTH} characters.`);
  }
  const c = subtle(crypto);
  const principal = privateKeyToAddress(key, network);
  const salt = c.getRandomValues(new Uint8Array(16));
  const iv = c.getRandomValues(new Uint8Array(12));
  const aes = await deriveAesKey(c, passphrase, salt, iterations);
  const ciphertext = new Uint8Array(
    await c.subtle.encrypt({ name: "AES-GCM", iv, additionalData: associatedData(principal) }, aes, hexToBytes(key)),
  );
  return { v: 1, principal, salt: bytesToHex(salt), iv: bytesToHex(iv), ciphertext: bytesToHex(ciphertext), iterations };
}

/** A stored record (JSON text or object) checked for shape; null if absent or unusable. */
export function parseKeyRecord(stored) {
  if (stored == null || stored === "") return null;
  let r = stored;
  if (typeof stored === "string") {
    try {
      r = JSON.parse(stored);
    } catch {
      return null;
    }
  }
  if (!r || typeof r !== "object" || r.v !== 1) return null;
  if (typeof r.principal !== "string" || !/^S[0-9A-Z]{20,50}$/.test(r.principal)) return null;
  for (const f of ["salt", "iv", "ciphertext"]) {
    if (typeof r[f] !== "string" || !/^(0x)?[0-9a-fA-F]+$/.test(r[f]) || r[f].length % 2 !== 0) return null;
  }
  const iterations = r.iterations ?? PBKDF2_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 10_000_000) return null;
  return { v: 1, principal: r.principal, salt: r.salt, iv: r.iv, ciphertext: r.ciphertext, iterations };
}

/** Decrypts a record with the passphrase: the 66-hex key. A wrong passphrase is WrongPassphraseError. */
export async function decryptKey(record, passphrase, { crypto } = {}) {
  const r = parseKeyRecord(record);
  if (!r) throw new UserError("The stored key is unreadable. Forget it and import the key again.");
  if (typeof passphrase !== "string" || passphrase === "") throw new UserError("Enter the passphrase of the stored key.");
  const c = subtle(crypto);
  const aes = await deriveAesKey(c, passphrase, hexToBytes(r.salt), r.iterations);
  let plain;
  try {
    plain = await c.subtle.decrypt(
      { name: "AES-GCM", iv: hexToBytes(r.iv), additionalData: associatedData(r.principal) },
      aes,
      hexToBytes(r.ciphertext),
    );
  } catch {
    throw new WrongPassphraseError();
  }
  const key = normalizePrivateKey(bytesToHex(new Uint8Array(plain)));
  const mainnet = r.principal.startsWith("SP") || r.principal.startsWith("SM");
  if (privateKeyToAddress(key, mainnet ? "mainnet" : "testnet") !== r.principal) {
    throw new UserError("The stored key does not match its principal. Forget it and import the key again.");
  }
  return key;
}

// ---------------------------------------------------------------------------------------------
// Clarity values

/**
 * A serialized Clarity value (hex, optional 0x) decoded; refused unless it serializes back to the
 * same bytes (no trailing bytes, canonical form), since the signature covers re-serialized bytes.
 */
export function decodeCV(hex, what = "value") {
  const h = String(strip0x(hex ?? "")).toLowerCase();
  if (h === "" || h.length % 2 !== 0 || !HEX.test(h)) throw new UserError(`The server's ${what} is not hex.`);
  let cv;
  try {
    cv = deserializeCV(h);
  } catch {
    throw new UserError(`The server's ${what} is not a Clarity value.`);
  }
  if (serializeCV(cv) !== h) throw new UserError(`The server's ${what} is not a canonical Clarity value.`);
  return cv;
}

function asciiField(tuple, name) {
  const v = tuple?.type === ClarityType.Tuple ? tuple.value[name] : undefined;
  return v?.type === ClarityType.StringASCII ? v.value : undefined;
}

/** The SIP-018 domain of breakglass `{name: "breakglass", version, chain-id}`, from hex. */
export function parseDomain(hex) {
  const domain = decodeCV(hex, "signing domain");
  if (domain.type !== ClarityType.Tuple) throw new UserError("The server's signing domain is not a tuple.");
  if (asciiField(domain, "name") !== DOMAIN_NAME) {
    throw new UserError(`Refused to sign: the signing domain is not "${DOMAIN_NAME}".`);
  }
  if (asciiField(domain, "version") === undefined || domain.value["chain-id"]?.type !== ClarityType.UInt) {
    throw new UserError("The server's signing domain lacks a version or a chain-id.");
  }
  return domain;
}

/**
 * The answer of POST /review/challenge (`{domain, message, expires_at}`) checked: the message is a
 * tuple whose action is "review-sign-in" and the domain is breakglass's; else a UserError.
 */
export function parseChallenge(json) {
  if (!json || typeof json !== "object") throw new UserError("The server's sign-in challenge is not JSON.");
  const domain = parseDomain(json.domain);
  const message = decodeCV(json.message, "sign-in challenge");
  if (message.type !== ClarityType.Tuple || asciiField(message, "action") !== SIGN_IN_ACTION) {
    throw new UserError(`Refused to sign: the challenge is not a "${SIGN_IN_ACTION}" message.`);
  }
  return {
    domain,
    message,
    domainHex: `0x${serializeCV(domain)}`,
    messageHex: `0x${serializeCV(message)}`,
    expiresAt: Number.isFinite(json.expires_at) ? json.expires_at : undefined,
  };
}

/** SIP-018 signature (RSV, 0x hex) of message under domain with the key. */
export function signStructured(message, domain, privateKey) {
  return `0x${signStructuredData({ message, domain, privateKey: normalizePrivateKey(privateKey) })}`;
}

/** The principal that made a SIP-018 signature (RSV hex), for checks and tests. */
export async function signerPrincipal(message, domain, signature, network = "testnet", { crypto } = {}) {
  const c = subtle(crypto);
  const hash = new Uint8Array(await c.subtle.digest("SHA-256", encodeStructuredDataBytes({ message, domain })));
  const publicKey = publicKeyFromSignatureRsv(bytesToHex(hash), strip0x(signature));
  return publicKeyToAddress(publicKey, network);
}

// ---------------------------------------------------------------------------------------------
// verdicts

/** Line breaks as a browser submits a textarea's value: CRLF. */
export function normalizeNote(note) {
  return String(note ?? "").replace(/\r\n|\r|\n/g, "\r\n");
}

/** 32 random bytes: the salt of a note's hash, drawn for each verdict. */
export function newNoteSalt({ crypto } = {}) {
  return subtle(crypto).getRandomValues(new Uint8Array(32));
}

/**
 * The note's hash as the chain records it: SHA-256 of the salt (32 bytes) and the normalized
 * note's UTF-8 bytes. A note is short text about a patient's care, often one of a few phrases;
 * without the salt its hash would be found by hashing guesses.
 */
export async function noteHash(note, salt, { crypto } = {}) {
  if (!(salt instanceof Uint8Array) || salt.length !== 32) throw new UserError("The note's salt is not 32 bytes.");
  const c = subtle(crypto);
  const text = new TextEncoder().encode(normalizeNote(note));
  const bytes = new Uint8Array(salt.length + text.length);
  bytes.set(salt);
  bytes.set(text, salt.length);
  return new Uint8Array(await c.subtle.digest("SHA-256", bytes));
}

/** `{action: "review", access-id, verdict, note-hash}` for an access id (64 hex) and a verdict. */
export function reviewMessage({ accessId, verdict, noteHash: hash }) {
  const id = String(strip0x(accessId ?? "")).toLowerCase();
  if (id.length !== 64 || !HEX.test(id)) throw new UserError("This page's access id is not 64 hexadecimal characters.");
  if (!VERDICTS.includes(verdict)) throw new UserError(`Choose a verdict: ${VERDICTS.join(", ")}.`);
  if (!(hash instanceof Uint8Array) || hash.length !== 32) throw new UserError("The note hash is not 32 bytes.");
  return tupleCV({
    action: stringAsciiCV(REVIEW_ACTION),
    "access-id": bufferCV(hexToBytes(id)),
    verdict: stringAsciiCV(verdict),
    "note-hash": bufferCV(hash),
  });
}

// ---------------------------------------------------------------------------------------------
// the server's answers

/** An RFC 9457 problem as one line: `title — detail (code)`, from what of it there is. */
export function problemText(problem, status) {
  const p = problem && typeof problem === "object" ? problem : {};
  const title = typeof p.title === "string" && p.title ? p.title : `The server answered ${status ?? p.status ?? "an error"}`;
  let text = title;
  if (typeof p.detail === "string" && p.detail) text += ` — ${p.detail}`;
  if (typeof p.code === "string" && p.code) text += ` (${p.code})`;
  return text;
}

/** A redirect target kept to this origin (a path starting with one "/"), else the fallback. */
export function sameOriginPath(target, fallback = "/review") {
  return typeof target === "string" && /^\/(?![/\\])/.test(target) ? target : fallback;
}

// ---------------------------------------------------------------------------------------------
// wallets (Leather, Xverse: the provider object they inject)

/** The injected Stacks provider with a `request` method, if any. */
export function walletProvider(win) {
  for (const name of ["LeatherProvider", "StacksProvider"]) {
    const p = win?.[name];
    if (p && typeof p.request === "function") return p;
  }
  return null;
}

/**
 * Asks the wallet to sign: `stx_signStructuredMessage` with `{message, domain}` as hex without 0x
 * (what @stacks/connect's `request` sends after serializing Clarity values). The provider answers
 * a JSON-RPC response `{result: {signature, publicKey}}` or `{error}`; the signature comes back 0x-hex.
 */
export async function walletSign(provider, message, domain) {
  let response;
  try {
    response = await provider.request("stx_signStructuredMessage", {
      message: serializeCV(message),
      domain: serializeCV(domain),
    });
  } catch (e) {
    response = { error: e?.error ?? e ?? {} };
  }
  if (response?.error) {
    throw new UserError(`The wallet did not sign: ${response.error.message ?? "refused"}.`);
  }
  const signature = response?.result?.signature ?? response?.signature;
  const h = String(strip0x(signature ?? "")).toLowerCase();
  if (h.length !== 130 || !HEX.test(h)) throw new UserError("The wallet's signature is not 65 bytes of hex.");
  return `0x${h}`;
}

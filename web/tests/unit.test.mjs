// The reviewer pages' pure functions (src/lib.mjs), in Node's WebCrypto: node --test tests/
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import {
  bufferCV,
  ClarityType,
  privateKeyToAddress,
  serializeCV,
  stringAsciiCV,
  tupleCV,
  uintCV,
} from "@stacks/transactions";
import {
  DOMAIN_NAME,
  PBKDF2_ITERATIONS,
  UserError,
  WrongPassphraseError,
  bytesToHex,
  decryptKey,
  encryptKey,
  normalizeNote,
  normalizePrivateKey,
  newNoteSalt,
  noteHash,
  parseChallenge,
  parseDomain,
  parseKeyRecord,
  principalOf,
  problemText,
  reviewMessage,
  sameOriginPath,
  signStructured,
  signerPrincipal,
  walletProvider,
  walletSign,
} from "../src/lib.mjs";

// the first devnet account's key (public test material)
const KEY = "753b7cc01a1a2e86221266a154af739463fce51219d97e4f856cd7200c3bd2a601";
const PASSPHRASE = "correct horse battery staple";
const ACCESS_ID = "ab".repeat(32);

const domain = (name = DOMAIN_NAME) =>
  tupleCV({ name: stringAsciiCV(name), version: stringAsciiCV("1"), "chain-id": uintCV(2147483648) });
const hex = (cv) => `0x${serializeCV(cv)}`;
const signInMessage = (action = "review-sign-in") =>
  tupleCV({ action: stringAsciiCV(action), nonce: bufferCV(new Uint8Array(16).fill(7)), "expires-at": uintCV(1_900_000_000) });

test("a private key is taken as 64 or 66 hex, with 0x and white space, as its compressed form", () => {
  const bare = KEY.slice(0, 64);
  assert.equal(normalizePrivateKey(KEY), KEY);
  assert.equal(normalizePrivateKey(bare), KEY);
  assert.equal(normalizePrivateKey(`  0x${bare.toUpperCase()}\n`), KEY);
  assert.equal(principalOf(bare, "testnet"), privateKeyToAddress(KEY, "testnet"));
  assert.equal(principalOf(KEY, "testnet"), "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM");
  assert.match(principalOf(KEY, "mainnet"), /^SP/);
  for (const bad of ["", "xyz", KEY.slice(0, 62), `${bare}02`, `${KEY}00`, "00".repeat(32), "ff".repeat(32)]) {
    assert.throws(() => normalizePrivateKey(bad), UserError, bad);
  }
});

test("the key round-trips through PBKDF2 (600,000) and AES-GCM; a wrong passphrase is refused", async () => {
  const record = await encryptKey(KEY.slice(0, 64), PASSPHRASE);
  assert.equal(record.v, 1);
  assert.equal(record.iterations, PBKDF2_ITERATIONS);
  assert.equal(record.principal, "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM");
  assert.equal(record.salt.length, 32);
  assert.equal(record.iv.length, 24);
  assert.equal(record.ciphertext.length, (33 + 16) * 2);
  assert.ok(!JSON.stringify(record).includes(KEY.slice(0, 64)));
  const stored = JSON.stringify(record);
  assert.deepEqual(parseKeyRecord(stored), record);
  assert.equal(await decryptKey(stored, PASSPHRASE), KEY);
  await assert.rejects(decryptKey(stored, "correct horse battery stapler"), WrongPassphraseError);
  await assert.rejects(decryptKey(stored, ""), UserError);

  // the principal is bound to the ciphertext: another one in the record fails like a wrong passphrase
  const moved = { ...record, principal: "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG" };
  await assert.rejects(decryptKey(moved, PASSPHRASE), WrongPassphraseError);
  // and two encryptions differ (fresh salt and iv)
  const again = await encryptKey(KEY, PASSPHRASE, { iterations: 1000 });
  assert.notEqual(again.salt, record.salt);
  assert.equal(await decryptKey(again, PASSPHRASE), KEY);
});

test("encryption refuses a short passphrase and stored records of the wrong shape are ignored", async () => {
  await assert.rejects(encryptKey(KEY, "short"), UserError);
  for (const bad of [null, "", "{", "[]", '{"v":2}', JSON.stringify({ v: 1, principal: "x", salt: "00", iv: "00", ciphertext: "00" })]) {
    assert.equal(parseKeyRecord(bad), null, String(bad));
  }
});

test("a note is normalized to CRLF as a browser submits a textarea, then hashed as UTF-8 after a salt of 32 random bytes", async () => {
  assert.equal(normalizeNote("a\nb\r\nc\rd"), "a\r\nb\r\nc\r\nd");
  assert.equal(normalizeNote("\n\n"), "\r\n\r\n");
  assert.equal(normalizeNote("x\r\n"), "x\r\n");
  assert.equal(normalizeNote(""), "");
  const note = "Paged at 02:10.\nRecord opened — café, ½ dose";
  const salt = newNoteSalt();
  const expected = createHash("sha256").update(salt).update(Buffer.from(note.replace(/\n/g, "\r\n"), "utf8")).digest("hex");
  assert.equal(bytesToHex(await noteHash(note, salt)), expected);
  assert.equal(bytesToHex(await noteHash(note.replace(/\n/g, "\r\n"), salt)), expected);
  assert.equal(bytesToHex(await noteHash("", salt)), createHash("sha256").update(salt).digest("hex"));
  // salted: not the note's own hash, and another salt another hash
  assert.notEqual(bytesToHex(await noteHash("fine", salt)), createHash("sha256").update("fine").digest("hex"));
  const other = newNoteSalt();
  assert.equal(other.length, 32);
  assert.notEqual(bytesToHex(other), bytesToHex(salt));
  assert.notEqual(bytesToHex(await noteHash(note, other)), expected);
  await assert.rejects(noteHash(note), UserError);
  await assert.rejects(noteHash(note, new Uint8Array(31)), UserError);
});

test("the review message is the tuple the service rebuilds, and its signature recovers to the key's principal", async () => {
  const hash = await noteHash("reviewed\nok", newNoteSalt());
  const message = reviewMessage({ accessId: `0x${ACCESS_ID.toUpperCase()}`, verdict: "needs-follow-up", noteHash: hash });
  const expected = tupleCV({
    action: stringAsciiCV("review"),
    "access-id": bufferCV(Buffer.from(ACCESS_ID, "hex")),
    verdict: stringAsciiCV("needs-follow-up"),
    "note-hash": bufferCV(hash),
  });
  assert.equal(serializeCV(message), serializeCV(expected));

  const d = parseDomain(hex(domain()));
  const signature = signStructured(message, d, KEY.slice(0, 64));
  assert.match(signature, /^0x[0-9a-f]{130}$/);
  assert.ok(["00", "01"].includes(signature.slice(-2)), "RSV: the recovery id last");
  assert.equal(await signerPrincipal(message, d, signature), principalOf(KEY));

  // the same check by hand, as the service does it: sha256("SIP018" || sha256(domain) || sha256(message))
  const sha = (b) => createHash("sha256").update(b).digest();
  const digest = sha(Buffer.concat([Buffer.from("SIP018"), sha(Buffer.from(serializeCV(d), "hex")), sha(Buffer.from(serializeCV(message), "hex"))]));
  const { publicKeyFromSignatureRsv, publicKeyToAddress } = await import("@stacks/transactions");
  assert.equal(publicKeyToAddress(publicKeyFromSignatureRsv(digest.toString("hex"), signature.slice(2)), "testnet"), principalOf(KEY));

  // another verdict is another message
  const other = reviewMessage({ accessId: ACCESS_ID, verdict: "appropriate", noteHash: hash });
  assert.notEqual(await signerPrincipal(other, d, signature), principalOf(KEY));

  assert.throws(() => reviewMessage({ accessId: ACCESS_ID, verdict: "fine", noteHash: hash }), UserError);
  assert.throws(() => reviewMessage({ accessId: "ab", verdict: "appropriate", noteHash: hash }), UserError);
  assert.throws(() => reviewMessage({ accessId: ACCESS_ID, verdict: "appropriate", noteHash: new Uint8Array(31) }), UserError);
});

test("a sign-in challenge is signed only if it is a review-sign-in message under the breakglass domain", async () => {
  const good = parseChallenge({ domain: hex(domain()), message: hex(signInMessage()), expires_at: 1_900_000_000 });
  assert.equal(good.message.type, ClarityType.Tuple);
  assert.equal(good.messageHex, hex(signInMessage()));
  assert.equal(good.expiresAt, 1_900_000_000);
  const signature = signStructured(good.message, good.domain, KEY);
  assert.equal(await signerPrincipal(good.message, good.domain, signature), principalOf(KEY));

  const refused = (challenge, pattern) => assert.throws(() => parseChallenge(challenge), (e) => e instanceof UserError && pattern.test(e.message));
  refused({ domain: hex(domain()), message: hex(signInMessage("review")) }, /not a "review-sign-in" message/);
  refused({ domain: hex(domain()), message: hex(stringAsciiCV("review-sign-in")) }, /not a "review-sign-in" message/);
  refused({ domain: hex(domain()), message: hex(tupleCV({ action: bufferCV(Buffer.from("review-sign-in")) })) }, /not a "review-sign-in"/);
  refused({ domain: hex(domain("other-app")), message: hex(signInMessage()) }, /domain is not "breakglass"/);
  refused({ domain: hex(tupleCV({ name: stringAsciiCV("breakglass") })), message: hex(signInMessage()) }, /lacks a version or a chain-id/);
  refused({ domain: hex(domain()), message: `${hex(signInMessage())}00` }, /not a canonical Clarity value/);
  refused({ domain: hex(domain()), message: "0xzz" }, /not hex/);
  refused({ domain: hex(domain()) }, /not hex/);
  refused(null, /not JSON/);
});

test("problems read as `title — detail (code)`, redirects stay on this origin", () => {
  assert.equal(
    problemText({ title: "Challenge expired", detail: "Sign in again.", code: "challenge-expired", status: 401 }),
    "Challenge expired — Sign in again. (challenge-expired)",
  );
  assert.equal(problemText({ title: "Forbidden" }, 403), "Forbidden");
  assert.equal(problemText(null, 502), "The server answered 502");
  assert.equal(sameOriginPath("/review"), "/review");
  assert.equal(sameOriginPath("/review/accesses/ab?x=1"), "/review/accesses/ab?x=1");
  for (const bad of ["//evil.example/", "https://evil.example/", "/\\evil.example", "review", undefined]) {
    assert.equal(sameOriginPath(bad), "/review", String(bad));
  }
});

test("a wallet is asked for stx_signStructuredMessage with hex values and its RSV signature is kept", async () => {
  assert.equal(walletProvider({}), null);
  const calls = [];
  const d = domain();
  const m = signInMessage();
  const provider = {
    async request(method, params) {
      calls.push({ method, params });
      return { jsonrpc: "2.0", id: "1", result: { signature: signStructured(m, d, KEY).slice(2), publicKey: "02" } };
    },
  };
  assert.equal(walletProvider({ StacksProvider: provider }), provider);
  assert.equal(walletProvider({ LeatherProvider: provider, StacksProvider: {} }), provider);
  const signature = await walletSign(provider, m, d);
  assert.deepEqual(calls, [{ method: "stx_signStructuredMessage", params: { message: serializeCV(m), domain: serializeCV(d) } }]);
  assert.equal(await signerPrincipal(m, d, signature), principalOf(KEY));

  const refusing = { request: async () => ({ jsonrpc: "2.0", id: "1", error: { code: 4001, message: "User rejected" } }) };
  await assert.rejects(walletSign(refusing, m, d), /User rejected/);
  const throwing = { request: async () => { throw { jsonrpc: "2.0", error: { code: 4001, message: "User canceled" } }; } };
  await assert.rejects(walletSign(throwing, m, d), /User canceled/);
});

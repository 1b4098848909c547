// A reviewer's verdict relayed by a responder with the reviewer's SIP-018 signature: the
// reviewer signs in a browser (with @stacks/transactions' signStructuredData here, what a wallet's
// stx_signStructuredMessage also produces), the responder sends review-emergency-access with the
// signature as its last argument, and the contract recovers the reviewer from it.
//
// The simnet's accounts are known only by address, so the signers here are keys made for the
// tests (fixed, so that runs repeat); the simnet takes any address as a call's sender, so a made
// key's principal also registers as a provider or records as a responder where a case needs it.
import { describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { Cl, ClarityValue, encodeStructuredDataBytes, privateKeyToAddress, signStructuredData } from "@stacks/transactions";
import {
  PATIENT_ID, authority, call, deployer, governance, hash, id, ok, physician, prints, read, recordArgs,
  registerProvider, responder, reviewer, stranger, verifiedProvider, verifiedReviewer,
} from "./helpers";

const C = "access-control";
const ERR = { NOT_RESPONDER: 202, NOT_REVIEWER: 203, PROVIDER_NOT_VERIFIED: 208, ACCESS_NOT_FOUND: 214, ALREADY_REVIEWED: 215,
  INVALID_VERDICT: 216, SELF_REVIEW: 217, BAD_REVIEW_SIGNATURE: 225 };
const err = (code: number) => Cl.uint(code);
const lastTrace = () =>
  (simnet as unknown as { getLastContractCallTrace(): string | undefined }).getLastContractCallTrace() ?? "";

/** A fixed test key (compressed, as wallets make them) and its principal on the simnet (testnet). */
function key(label: string) {
  const privateKey = createHash("sha256").update(`breakglass test key: ${label}`).digest("hex") + "01";
  return { privateKey, principal: privateKeyToAddress(privateKey, "testnet") };
}
const signer = key("reviewer in a browser");

const A = "d0";
const accessId = (n = A) => Cl.bufferFromHex(n.repeat(32));
/** The simnet's chain id, as the contract's `chain-id` reads it. */
const chainId = () => BigInt((simnet.execute("chain-id").result as { value: bigint }).value);
const domain = () =>
  Cl.tuple({ name: Cl.stringAscii("breakglass"), version: Cl.stringAscii("1"), "chain-id": Cl.uint(chainId()) });
const message = (access: ClarityValue, verdict: string, note: ClarityValue) =>
  Cl.tuple({ action: Cl.stringAscii("review"), "access-id": access, verdict: Cl.stringAscii(verdict), "note-hash": note });

/** The 65-byte RSV signature a reviewer's browser makes over a review. */
function sign(privateKey: string, verdict = "appropriate", access = accessId(), note = hash("cd")) {
  return signStructuredData({ message: message(access, verdict, note), domain: domain(), privateKey });
}

function relay(signature: string | null, verdict = "appropriate", sender = responder, access = accessId(), note = hash("cd")) {
  const sig = signature === null ? Cl.none() : Cl.some(Cl.bufferFromHex(signature));
  return call(C, "review-emergency-access", [access, Cl.stringAscii(verdict), note, sig], sender);
}

/** Governance, a verified physician, the browser signer made a reviewer, and access `A` recorded. */
function setup() {
  governance();
  verifiedProvider(physician, "physician");
  verifiedReviewer(signer.principal);
  ok(C, "record-emergency-access", recordArgs(A, physician), responder);
}

describe("relayed reviews", () => {
  it("get-review-message-hash is the SIP-018 hash @stacks/transactions signs, for every verdict", () => {
    // the simnet runs as testnet
    expect(chainId()).toBe(0x80000000n);
    for (const verdict of ["appropriate", "inappropriate", "needs-follow-up"]) {
      const expected = createHash("sha256").update(encodeStructuredDataBytes({
        message: message(accessId("7e"), verdict, hash("5c")), domain: domain(),
      })).digest();
      expect(read(C, "get-review-message-hash", [accessId("7e"), Cl.stringAscii(verdict), hash("5c")]))
        .toStrictEqual(Cl.buffer(expected));
    }
    // the bytes hashed: "SIP018", the domain's hash, the message's hash
    const bytes = encodeStructuredDataBytes({ message: message(accessId(), "appropriate", hash("cd")), domain: domain() });
    expect(Buffer.from(bytes.slice(0, 6)).toString("ascii")).toBe("SIP018");
    expect(bytes.length).toBe(70);
  });

  it("a responder relays a reviewer's signed verdict; the signer is the reviewer, and the event names the relay", () => {
    setup();
    const res = relay(sign(signer.privateKey, "needs-follow-up"), "needs-follow-up");
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)).toEqual([Cl.tuple({
      topic: Cl.stringAscii("emergency-access-reviewed"), "access-id": accessId(), reviewer: Cl.principal(signer.principal),
      verdict: Cl.stringAscii("needs-follow-up"), "note-hash": hash("cd"), provider: Cl.principal(physician),
      "patient-id": id(PATIENT_ID), "relayed-by": Cl.some(Cl.principal(responder)),
    })]);
    expect(read(C, "get-emergency-review", [accessId()])).toBeSome(Cl.tuple({
      reviewer: Cl.principal(signer.principal), verdict: Cl.stringAscii("needs-follow-up"), "note-hash": hash("cd"),
      block: Cl.uint(simnet.blockHeight),
    }));
    // once: the same signature again, or the reviewer's own direct call, is a second review
    expect(relay(sign(signer.privateKey, "needs-follow-up"), "needs-follow-up").result).toBeErr(err(ERR.ALREADY_REVIEWED));
    expect(relay(null, "appropriate", signer.principal).result).toBeErr(err(ERR.ALREADY_REVIEWED));
  });

  it("a signature by a principal that is not a reviewer is refused (u203); so is a removed reviewer's", () => {
    setup();
    const outsider = key("not a reviewer");
    expect(relay(sign(outsider.privateKey)).result).toBeErr(err(ERR.NOT_REVIEWER));
    ok(C, "remove-reviewer", [Cl.principal(signer.principal)], deployer);
    expect(relay(sign(signer.privateKey)).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(read(C, "get-emergency-review", [accessId()])).toBeNone();
  });

  it("a signature made before its reviewer was suspended is refused when relayed after (u208), and stands once reinstated", () => {
    setup();
    const signature = sign(signer.privateKey);
    ok(C, "suspend-provider", [Cl.principal(signer.principal)], authority);
    expect(relay(signature).result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    expect(read(C, "get-emergency-review", [accessId()])).toBeNone();
    ok(C, "reinstate-provider", [Cl.principal(signer.principal)], authority);
    expect(relay(signature).result).toBeOk(Cl.bool(true));
  });

  it("only a responder relays (u202), before the access is looked up or the signature recovered", () => {
    setup();
    const signature = sign(signer.privateKey);
    for (const who of [stranger, deployer, authority, reviewer, physician, signer.principal]) {
      expect(relay(signature, "appropriate", who).result, who).toBeErr(err(ERR.NOT_RESPONDER));
      expect(lastTrace(), who).toContain("is-responder tx-sender");
      expect(lastTrace(), who).not.toContain("review-signer");
    }
    expect(relay(signature, "appropriate", stranger, accessId("ee")).result).toBeErr(err(ERR.NOT_RESPONDER));
    // a responder relaying a review of an access that does not exist: u214, nothing recovered
    expect(relay(signature, "appropriate", responder, accessId("ee")).result).toBeErr(err(ERR.ACCESS_NOT_FOUND));
    expect(lastTrace()).not.toContain("review-signer");
    // (a relay of an access that exists does recover the signer)
    expect(relay(sign(key("not a reviewer").privateKey)).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(lastTrace()).toContain("review-signer");
    // a removed responder no longer relays
    ok(C, "remove-responder", [Cl.principal(responder)], deployer);
    expect(relay(signature).result).toBeErr(err(ERR.NOT_RESPONDER));
    expect(read(C, "get-emergency-review", [accessId()])).toBeNone();
  });

  it("a signature over another verdict, note or access recovers another principal (u203); one that recovers no key is u225", () => {
    setup();
    // signed "appropriate" with note cd for access d0; relayed with something else changed
    const signature = sign(signer.privateKey, "appropriate");
    expect(relay(signature, "inappropriate").result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(relay(signature, "needs-follow-up").result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(relay(signature, "appropriate", responder, accessId(), hash("ce")).result).toBeErr(err(ERR.NOT_REVIEWER));
    // signed for another chain (mainnet's id)
    const mainnet = signStructuredData({
      message: message(accessId(), "appropriate", hash("cd")), privateKey: signer.privateKey,
      domain: Cl.tuple({ name: Cl.stringAscii("breakglass"), version: Cl.stringAscii("1"), "chain-id": Cl.uint(1) }),
    });
    expect(relay(mainnet).result).toBeErr(err(ERR.NOT_REVIEWER));
    // the signature altered: another s, or the other recovery id, recovers some other key
    const r = signature.slice(0, 64), sHex = signature.slice(64, 128), v = parseInt(signature.slice(128), 16);
    const otherS = sHex.slice(0, 62) + (parseInt(sHex.slice(62), 16) ^ 1).toString(16).padStart(2, "0");
    expect(relay(r + otherS + signature.slice(128)).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(relay(r + sHex + (v ^ 1).toString(16).padStart(2, "0")).result).toBeErr(err(ERR.NOT_REVIEWER));
    // 65 bytes that recover no key: r = 0, all zeros, a recovery id beyond 3, an r that is no
    // point's x coordinate
    expect(relay("00".repeat(32) + sHex + signature.slice(128)).result).toBeErr(err(ERR.BAD_REVIEW_SIGNATURE));
    expect(relay("00".repeat(65)).result).toBeErr(err(ERR.BAD_REVIEW_SIGNATURE));
    expect(relay(r + sHex + "04").result).toBeErr(err(ERR.BAD_REVIEW_SIGNATURE));
    expect(relay("11".repeat(64) + "00").result).toBeErr(err(ERR.BAD_REVIEW_SIGNATURE));
    expect(read(C, "get-emergency-review", [accessId()])).toBeNone();
    // the signature as made, for what it signed, works
    expect(relay(signature, "appropriate").result).toBeOk(Cl.bool(true));
  });

  it("a signature is bound to its access: reused for a second access it recovers another principal (u203)", () => {
    setup();
    ok(C, "record-emergency-access", recordArgs("d1", physician), responder);
    const signature = sign(signer.privateKey, "appropriate", accessId(A));
    expect(relay(signature, "appropriate", responder, accessId("d1")).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(read(C, "get-emergency-review", [accessId("d1")])).toBeNone();
    expect(relay(signature, "appropriate", responder, accessId(A)).result).toBeOk(Cl.bool(true));
    // and, accepted once, it is not accepted again for its own access either
    expect(relay(signature, "appropriate", responder, accessId(A)).result).toBeErr(err(ERR.ALREADY_REVIEWED));
    expect(relay(sign(signer.privateKey, "appropriate", accessId("d1")), "appropriate", responder, accessId("d1")).result)
      .toBeOk(Cl.bool(true));
  });

  it("a relayed verdict must be known (u216), checked after the signer is a reviewer", () => {
    setup();
    expect(relay(sign(signer.privateKey, "meh"), "meh").result).toBeErr(err(ERR.INVALID_VERDICT));
    expect(relay(sign(key("not a reviewer").privateKey, "meh"), "meh").result).toBeErr(err(ERR.NOT_REVIEWER));
  });

  it("no relayed self-review (u217): neither the access's provider nor the responder that recorded it", () => {
    governance();
    // a provider who is also a reviewer signs a review of their own access
    const provider = key("provider and reviewer");
    registerProvider(provider.principal, "physician");
    ok(C, "verify-provider", [Cl.principal(provider.principal)], authority);
    ok(C, "add-reviewer", [Cl.principal(provider.principal)], deployer);
    ok(C, "record-emergency-access", recordArgs(A, provider.principal), responder);
    expect(relay(sign(provider.privateKey)).result).toBeErr(err(ERR.SELF_REVIEW));
    // a second responder, also a reviewer, records an access; its signature relayed by the first
    const recorder = key("responder and reviewer");
    ok(C, "add-responder", [Cl.principal(recorder.principal)], deployer);
    verifiedReviewer(recorder.principal);
    verifiedProvider(physician, "physician");
    ok(C, "record-emergency-access", recordArgs("d1", physician), recorder.principal);
    expect(relay(sign(recorder.privateKey, "appropriate", accessId("d1")), "appropriate", responder, accessId("d1")).result)
      .toBeErr(err(ERR.SELF_REVIEW));
    expect(read(C, "get-emergency-review", [accessId(A)])).toBeNone();
    expect(read(C, "get-emergency-review", [accessId("d1")])).toBeNone();
    // the provider may review an access it has no part in, relayed by its recorder
    const res = relay(sign(provider.privateKey, "appropriate", accessId("d1")), "appropriate", recorder.principal, accessId("d1"));
    expect(res.result).toBeOk(Cl.bool(true));
    expect(Cl.prettyPrint(prints(res)[0])).toContain(`relayed-by: (some '${recorder.principal})`);
  });
});

import { describe, expect, it } from "vitest";
import { Cl } from "@stacks/transactions";
import {
  PATIENT2_ID, PATIENT_ID, authority, call, deployer, governance, hash, id, nurse, ok, patient, physician, prints, read,
  recordArgs, registerPatient, registerProvider, responder, reviewer, stranger, verifiedProvider, verifiedReviewer,
} from "./helpers";

const C = "access-control";
const ERR = {
  NOT_OWNER: 200, NOT_AUTHORITY: 201, NOT_RESPONDER: 202, NOT_REVIEWER: 203, ALREADY_REGISTERED: 204,
  PROVIDER_NOT_FOUND: 205, INVALID_ROLE: 206, INVALID_TRANSITION: 207, PROVIDER_NOT_VERIFIED: 208,
  INVALID_DATA_TYPE: 209, INVALID_PURPOSE: 210, NO_CONSENT: 211, DUPLICATE_ACCESS: 212, INVALID_WINDOW: 213,
  ACCESS_NOT_FOUND: 214, ALREADY_REVIEWED: 215, INVALID_VERDICT: 216, SELF_REVIEW: 217, ANCHOR_REGRESSION: 218,
  ALREADY_MEMBER: 219, NOT_MEMBER: 220, NO_DATA_TYPES: 221, SELF_CREDENTIALING: 222, NOT_PENDING_OWNER: 223,
  PROXY_CALL: 224, BAD_REVIEW_SIGNATURE: 225, NOT_CUSTODIAN: 226, SUMMARY_NOT_FOUND: 227,
};
const err = (code: number) => Cl.uint(code);
/** The simnet's trace of the last contract call: every expression evaluated, with the contract called. */
const lastTrace = () =>
  (simnet as unknown as { getLastContractCallTrace(): string | undefined }).getLastContractCallTrace() ?? "";
const status = (who: string) => {
  const p = read(C, "get-provider", [Cl.principal(who)]);
  return /status: "([a-z]+)"/.exec(Cl.prettyPrint(p))?.[1];
};

describe("governance", () => {
  const roles = [
    ["add-authority", "remove-authority", "is-authority", "authority"],
    ["add-responder", "remove-responder", "is-responder", "responder"],
    ["add-reviewer", "remove-reviewer", "is-reviewer", "reviewer"],
    ["add-custodian", "remove-custodian", "is-custodian", "custodian"],
  ];
  for (const [add, remove, is, name] of roles) {
    it(`${add} / ${remove}: owner only, each once, with events`, () => {
      expect(call(C, add, [Cl.principal(stranger)], stranger).result).toBeErr(err(ERR.NOT_OWNER));
      expect(read(C, is, [Cl.principal(stranger)])).toBeBool(false);
      const added = call(C, add, [Cl.principal(stranger)], deployer);
      expect(added.result).toBeOk(Cl.bool(true));
      expect(prints(added)).toEqual([Cl.tuple({ topic: Cl.stringAscii(`${name}-added`), principal: Cl.principal(stranger) })]);
      expect(read(C, is, [Cl.principal(stranger)])).toBeBool(true);
      expect(call(C, add, [Cl.principal(stranger)], deployer).result).toBeErr(err(ERR.ALREADY_MEMBER));
      expect(call(C, remove, [Cl.principal(stranger)], stranger).result).toBeErr(err(ERR.NOT_OWNER));
      const removed = call(C, remove, [Cl.principal(stranger)], deployer);
      expect(removed.result).toBeOk(Cl.bool(true));
      expect(prints(removed)[0]).toEqual(Cl.tuple({ topic: Cl.stringAscii(`${name}-removed`), principal: Cl.principal(stranger) }));
      expect(read(C, is, [Cl.principal(stranger)])).toBeBool(false);
      expect(call(C, remove, [Cl.principal(stranger)], deployer).result).toBeErr(err(ERR.NOT_MEMBER));
    });
  }

  it("the owner is the deployer and hands over ownership in two steps; the old owner then cannot govern", () => {
    expect(read(C, "get-contract-owner", [])).toBePrincipal(deployer);
    expect(call(C, "set-contract-owner", [Cl.principal(stranger)], stranger).result).toBeErr(err(ERR.NOT_OWNER));
    // a proposal alone moves nothing, and a newer one replaces it
    ok(C, "set-contract-owner", [Cl.principal(stranger)], deployer);
    const res = call(C, "set-contract-owner", [Cl.principal(authority)], deployer);
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)[0]).toEqual(Cl.tuple({ topic: Cl.stringAscii("owner-proposed"), owner: Cl.principal(authority), by: Cl.principal(deployer) }));
    expect(read(C, "get-contract-owner", [])).toBePrincipal(deployer);
    expect(read(C, "get-pending-owner", [])).toBeSome(Cl.principal(authority));
    expect(call(C, "accept-contract-owner", [], stranger).result).toBeErr(err(ERR.NOT_PENDING_OWNER));
    const accepted = call(C, "accept-contract-owner", [], authority);
    expect(accepted.result).toBeOk(Cl.bool(true));
    expect(prints(accepted)[0]).toEqual(Cl.tuple({ topic: Cl.stringAscii("owner-changed"), owner: Cl.principal(authority), previous: Cl.principal(deployer) }));
    expect(read(C, "get-contract-owner", [])).toBePrincipal(authority);
    expect(read(C, "get-pending-owner", [])).toBeNone();
    expect(call(C, "accept-contract-owner", [], authority).result).toBeErr(err(ERR.NOT_PENDING_OWNER));
    expect(call(C, "add-responder", [Cl.principal(responder)], deployer).result).toBeErr(err(ERR.NOT_OWNER));
    expect(call(C, "add-responder", [Cl.principal(responder)], authority).result).toBeOk(Cl.bool(true));
  });
});

describe("providers", () => {
  it("registers with a sequential id, pending, with an event", () => {
    const res = registerProvider(physician, "physician");
    expect(res.result).toBeOk(Cl.uint(1));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("provider-registered"), provider: Cl.principal(physician), "provider-id": Cl.uint(1),
      role: Cl.stringAscii("physician"), "info-hash": hash("11"), "credentials-hash": hash("22"),
    }));
    expect(registerProvider(nurse, "nurse").result).toBeOk(Cl.uint(2));
    expect(status(physician)).toBe("pending");
    expect(read(C, "is-verified-provider", [Cl.principal(physician)])).toBeBool(false);
    expect(read(C, "get-provider-by-id", [Cl.uint(2)])).toBeSome(Cl.principal(nurse));
    expect(read(C, "get-provider-by-id", [Cl.uint(3)])).toBeNone();
    expect(read(C, "get-provider-count", [])).toBeUint(2);
  });

  it("accepts every role and refuses an unknown one (u206) or a second registration (u204)", () => {
    const all = ["physician", "nurse", "paramedic", "pharmacist", "reviewer", "admin"];
    expect(read(C, "get-roles", [])).toStrictEqual(Cl.list(all.map((r) => Cl.stringAscii(r))));
    for (const r of all) expect(read(C, "is-valid-role", [Cl.stringAscii(r)])).toBeBool(true);
    expect(call(C, "register-provider", [hash("11"), Cl.stringAscii("surgeon"), hash("22")], physician).result).toBeErr(err(ERR.INVALID_ROLE));
    registerProvider(physician, "physician");
    expect(call(C, "register-provider", [hash("11"), Cl.stringAscii("nurse"), hash("22")], physician).result).toBeErr(err(ERR.ALREADY_REGISTERED));
    expect(read(C, "get-provider-count", [])).toBeUint(1);
  });

  it("authorities verify, suspend, reinstate and revoke, each with an event naming the authority", () => {
    governance();
    registerProvider(physician, "physician");
    const steps: [string, string, string][] = [
      ["verify-provider", "verified", "provider-verified"],
      ["suspend-provider", "suspended", "provider-suspended"],
      ["reinstate-provider", "verified", "provider-reinstated"],
      ["revoke-provider", "revoked", "provider-revoked"],
    ];
    for (const [fn, st, topic] of steps) {
      const res = call(C, fn, [Cl.principal(physician)], authority);
      expect(res.result).toBeOk(Cl.bool(true));
      expect(status(physician)).toBe(st);
      expect(prints(res)[0]).toEqual(Cl.tuple({
        topic: Cl.stringAscii(topic), provider: Cl.principal(physician), "provider-id": Cl.uint(1),
        role: Cl.stringAscii("physician"), status: Cl.stringAscii(st), authority: Cl.principal(authority),
      }));
      expect(read(C, "is-verified-provider", [Cl.principal(physician)])).toBeBool(st === "verified");
    }
  });

  it("only an authority may change a provider's status (u201), and nothing changes", () => {
    governance();
    registerProvider(physician, "physician");
    for (const who of [stranger, deployer, responder, reviewer, physician]) {
      expect(call(C, "verify-provider", [Cl.principal(physician)], who).result).toBeErr(err(ERR.NOT_AUTHORITY));
    }
    ok(C, "verify-provider", [Cl.principal(physician)], authority);
    for (const fn of ["suspend-provider", "revoke-provider"]) {
      expect(call(C, fn, [Cl.principal(physician)], stranger).result).toBeErr(err(ERR.NOT_AUTHORITY));
    }
    expect(status(physician)).toBe("verified");
    ok(C, "suspend-provider", [Cl.principal(physician)], authority);
    expect(call(C, "reinstate-provider", [Cl.principal(physician)], stranger).result).toBeErr(err(ERR.NOT_AUTHORITY));
    expect(status(physician)).toBe("suspended");
  });

  it("a removed authority loses its power at once", () => {
    governance();
    registerProvider(physician, "physician");
    ok(C, "remove-authority", [Cl.principal(authority)], deployer);
    expect(call(C, "verify-provider", [Cl.principal(physician)], authority).result).toBeErr(err(ERR.NOT_AUTHORITY));
  });

  it("refuses transitions the status does not allow (u207) and unknown providers (u205)", () => {
    governance();
    registerProvider(physician, "physician");
    const t = (fn: string) => call(C, fn, [Cl.principal(physician)], authority).result;
    expect(t("suspend-provider")).toBeErr(err(ERR.INVALID_TRANSITION));
    expect(t("reinstate-provider")).toBeErr(err(ERR.INVALID_TRANSITION));
    t("verify-provider");
    expect(t("verify-provider")).toBeErr(err(ERR.INVALID_TRANSITION));
    expect(t("reinstate-provider")).toBeErr(err(ERR.INVALID_TRANSITION));
    t("revoke-provider");
    for (const fn of ["verify-provider", "suspend-provider", "reinstate-provider", "revoke-provider"]) {
      expect(t(fn)).toBeErr(err(ERR.INVALID_TRANSITION));
    }
    expect(status(physician)).toBe("revoked");
    expect(call(C, "verify-provider", [Cl.principal(stranger)], authority).result).toBeErr(err(ERR.PROVIDER_NOT_FOUND));
    expect(call(C, "set-provider-role", [Cl.principal(stranger), Cl.stringAscii("nurse")], authority).result).toBeErr(err(ERR.PROVIDER_NOT_FOUND));
  });

  it("authorities change a provider's role; not of a revoked provider, not to an unknown role", () => {
    governance();
    registerProvider(physician, "nurse");
    const set = (role: string, who = authority) => call(C, "set-provider-role", [Cl.principal(physician), Cl.stringAscii(role)], who);
    expect(set("physician", stranger).result).toBeErr(err(ERR.NOT_AUTHORITY));
    expect(set("wizard").result).toBeErr(err(ERR.INVALID_ROLE));
    const res = set("physician");
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("provider-role-changed"), provider: Cl.principal(physician), "provider-id": Cl.uint(1),
      role: Cl.stringAscii("physician"), "previous-role": Cl.stringAscii("nurse"), authority: Cl.principal(authority),
    }));
    expect(Cl.prettyPrint(read(C, "get-provider", [Cl.principal(physician)]))).toContain('role: "physician"');
    ok(C, "revoke-provider", [Cl.principal(physician)], authority);
    expect(set("nurse").result).toBeErr(err(ERR.INVALID_TRANSITION));
  });

  it("new credentials send a verified provider back to pending; a revoked provider cannot update", () => {
    governance();
    verifiedProvider(physician, "physician");
    const res = call(C, "update-provider-credentials", [hash("33"), hash("44")], physician);
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("provider-credentials-updated"), provider: Cl.principal(physician), "provider-id": Cl.uint(1),
      "info-hash": hash("33"), "credentials-hash": hash("44"), status: Cl.stringAscii("pending"),
    }));
    expect(status(physician)).toBe("pending");
    expect(read(C, "is-verified-provider", [Cl.principal(physician)])).toBeBool(false);
    expect(call(C, "update-provider-credentials", [hash("33"), hash("44")], stranger).result).toBeErr(err(ERR.PROVIDER_NOT_FOUND));
    ok(C, "revoke-provider", [Cl.principal(physician)], authority);
    expect(call(C, "update-provider-credentials", [hash("55"), hash("66")], physician).result).toBeErr(err(ERR.INVALID_TRANSITION));
  });

  it("a suspended provider cannot lift the suspension with new credentials (u207)", () => {
    governance();
    verifiedProvider(physician, "physician");
    ok(C, "suspend-provider", [Cl.principal(physician)], authority);
    expect(call(C, "update-provider-credentials", [hash("33"), hash("44")], physician).result).toBeErr(err(ERR.INVALID_TRANSITION));
    expect(status(physician)).toBe("suspended");
    // only an authority's reinstatement does
    ok(C, "reinstate-provider", [Cl.principal(physician)], authority);
    expect(status(physician)).toBe("verified");
  });

  it("an authority cannot verify, reinstate or change the role of its own provider record (u222)", () => {
    governance();
    registerProvider(authority, "physician");
    const self = (fn: string, args = [Cl.principal(authority)]) => call(C, fn, args, authority).result;
    expect(self("verify-provider")).toBeErr(err(ERR.SELF_CREDENTIALING));
    expect(self("set-provider-role", [Cl.principal(authority), Cl.stringAscii("nurse")])).toBeErr(err(ERR.SELF_CREDENTIALING));
    expect(status(authority)).toBe("pending");
    // a second authority can
    ok(C, "add-authority", [Cl.principal(stranger)], deployer);
    ok(C, "verify-provider", [Cl.principal(authority)], stranger);
    ok(C, "suspend-provider", [Cl.principal(authority)], stranger);
    expect(self("reinstate-provider")).toBeErr(err(ERR.SELF_CREDENTIALING));
    expect(self("revoke-provider")).toBeErr(err(ERR.SELF_CREDENTIALING));
    expect(status(authority)).toBe("suspended");
  });
});

describe("consented access requests", () => {
  const request = (dt = "allergies", purpose = "treatment", who = physician) =>
    call(C, "request-access", [id(PATIENT_ID), Cl.stringAscii(dt), Cl.stringAscii(purpose)], who);

  it("grants a verified provider with active consent, logs it and prints it", () => {
    governance();
    verifiedProvider(physician, "physician");
    registerPatient();
    ok("patient-consent", "grant-consent", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.uint(simnet.blockHeight + 10)], patient);
    const res = request();
    expect(res.result).toBeOk(Cl.uint(1));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("access-granted"), "access-log-id": Cl.uint(1), provider: Cl.principal(physician),
      "patient-id": id(PATIENT_ID), "data-type": Cl.stringAscii("allergies"), purpose: Cl.stringAscii("treatment"),
    }));
    expect(read(C, "get-access-count", [])).toBeUint(1);
    const entry = Cl.prettyPrint(read(C, "get-access-log-entry", [Cl.uint(1)]));
    expect(entry).toContain(`provider: '${physician}`);
    expect(entry).toContain(`block: u${simnet.blockHeight}`);
    expect(request().result).toBeOk(Cl.uint(2));
  });

  it("refuses without consent (u211), with revoked or expired consent, and logs nothing", () => {
    governance();
    verifiedProvider(physician, "physician");
    registerPatient();
    expect(request().result).toBeErr(err(ERR.NO_CONSENT));
    ok("patient-consent", "grant-consent", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.uint(simnet.blockHeight + 3)], patient);
    ok("patient-consent", "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], patient);
    expect(request().result).toBeErr(err(ERR.NO_CONSENT));
    ok("patient-consent", "grant-consent", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.uint(simnet.blockHeight + 2)], patient);
    simnet.mineEmptyBlocks(2);
    expect(request().result).toBeErr(err(ERR.NO_CONSENT));
    // consent for another purpose does not count
    ok("patient-consent", "grant-consent-for-purpose", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.stringAscii("research"), Cl.uint(simnet.blockHeight + 10)], patient);
    expect(request("allergies", "insurance").result).toBeErr(err(ERR.NO_CONSENT));
    expect(read(C, "get-access-count", [])).toBeUint(0);
  });

  it("refuses unverified, suspended and unknown providers (u208), bad data types (u209) and purposes (u210)", () => {
    governance();
    registerProvider(physician, "physician");
    registerPatient();
    ok("patient-consent", "grant-consent", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.uint(simnet.blockHeight + 50)], patient);
    expect(request().result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    ok(C, "verify-provider", [Cl.principal(physician)], authority);
    ok(C, "suspend-provider", [Cl.principal(physician)], authority);
    expect(request().result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    expect(request("allergies", "treatment", stranger).result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    ok(C, "reinstate-provider", [Cl.principal(physician)], authority);
    expect(request("tarot").result).toBeErr(err(ERR.INVALID_DATA_TYPE));
    expect(request("allergies", "curiosity").result).toBeErr(err(ERR.INVALID_PURPOSE));
    expect(request().result).toBeOk(Cl.uint(1));
  });
});

describe("emergency access", () => {
  const A = "d0";
  function setup() {
    governance();
    verifiedProvider(physician, "physician");
    verifiedProvider(reviewer, "reviewer");
  }

  it("a responder records an access for a verified provider, with indexes and an event", () => {
    setup();
    const res = call(C, "record-emergency-access", recordArgs(A, physician, PATIENT_ID, ["allergies", "medications"], 60), responder);
    expect(res.result).toBeOk(Cl.uint(0));
    const accessId = Cl.bufferFromHex(A.repeat(32));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("emergency-access-recorded"), "access-id": accessId, provider: Cl.principal(physician),
      "provider-role": Cl.stringAscii("physician"), "provider-status": Cl.stringAscii("verified"), "patient-id": id(PATIENT_ID),
      "data-types": Cl.list([Cl.stringAscii("allergies"), Cl.stringAscii("medications")]), window: Cl.uint(60),
      // who recorded it (a reviewer's self-review rule names it) and its window's blocks, as the record holds them
      responder: Cl.principal(responder), "recorded-at": Cl.uint(simnet.blockHeight),
      "expires-at": Cl.uint(simnet.blockHeight + 60),
      "reason-hash": hash("ab"), "within-preferences": Cl.bool(true), degraded: Cl.bool(false), index: Cl.uint(0),
    }));
    const rec = Cl.prettyPrint(read(C, "get-emergency-access", [accessId]));
    expect(rec).toContain("degraded: false");
    expect(rec).toContain(`recorded-at: u${simnet.blockHeight}`);
    expect(rec).toContain(`expires-at: u${simnet.blockHeight + 60}`);
    expect(rec).toContain(`responder: '${responder}`);
    expect(read(C, "get-emergency-count", [])).toBeUint(1);
    expect(read(C, "get-emergency-access-id", [Cl.uint(0)])).toBeSome(accessId);
    expect(read(C, "get-patient-emergency-count", [id(PATIENT_ID)])).toBeUint(1);
    expect(read(C, "get-patient-emergency-access-id", [id(PATIENT_ID), Cl.uint(0)])).toBeSome(accessId);
    expect(read(C, "get-emergency-access", [Cl.bufferFromHex("ee".repeat(32))])).toBeNone();
  });

  it("a duplicate access id gets its own error (u212), even after the provider is suspended", () => {
    setup();
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    expect(call(C, "record-emergency-access", recordArgs(A, physician), responder).result).toBeErr(err(ERR.DUPLICATE_ACCESS));
    ok(C, "suspend-provider", [Cl.principal(physician)], authority);
    expect(call(C, "record-emergency-access", recordArgs(A, physician), responder).result).toBeErr(err(ERR.DUPLICATE_ACCESS));
    expect(read(C, "get-emergency-count", [])).toBeUint(1);
  });

  it("only responders record (u202); a removed responder no longer can", () => {
    setup();
    for (const who of [stranger, deployer, authority, reviewer, physician]) {
      expect(call(C, "record-emergency-access", recordArgs(A, physician), who).result).toBeErr(err(ERR.NOT_RESPONDER));
    }
    ok(C, "remove-responder", [Cl.principal(responder)], deployer);
    expect(call(C, "record-emergency-access", recordArgs(A, physician), responder).result).toBeErr(err(ERR.NOT_RESPONDER));
    expect(read(C, "get-emergency-count", [])).toBeUint(0);
  });

  it("records an access granted before the provider was suspended or revoked, with the status at recording; never for an unregistered principal (u205)", () => {
    governance();
    const rec = (n: string, who: string) => call(C, "record-emergency-access", recordArgs(n, who), responder).result;
    const status = (n: string) => Cl.prettyPrint(read(C, "get-emergency-access", [Cl.bufferFromHex(n.repeat(32))]));
    expect(rec("01", stranger)).toBeErr(err(ERR.PROVIDER_NOT_FOUND));
    registerProvider(physician, "physician");
    ok(C, "verify-provider", [Cl.principal(physician)], authority);
    expect(rec("02", physician)).toBeOk(Cl.uint(0));
    expect(status("02")).toContain('provider-status: "verified"');
    // granted off chain while verified; suspended in the block before the record is mined
    ok(C, "suspend-provider", [Cl.principal(physician)], authority);
    const suspended = call(C, "record-emergency-access", recordArgs("03", physician), responder);
    expect(suspended.result).toBeOk(Cl.uint(1));
    expect(Cl.prettyPrint(prints(suspended)[0])).toContain('provider-status: "suspended"');
    expect(status("03")).toContain('provider-status: "suspended"');
    ok(C, "revoke-provider", [Cl.principal(physician)], authority);
    expect(rec("04", physician)).toBeOk(Cl.uint(2));
    expect(status("04")).toContain('provider-status: "revoked"');
    expect(read(C, "get-emergency-count", [])).toBeUint(3);
  });

  it("refuses empty or unknown data types and bad windows", () => {
    setup();
    const rec = (dts: string[], w: number) => call(C, "record-emergency-access", recordArgs(A, physician, PATIENT_ID, dts, w), responder).result;
    expect(rec([], 10)).toBeErr(err(ERR.NO_DATA_TYPES));
    expect(rec(["allergies", "palmistry"], 10)).toBeErr(err(ERR.INVALID_DATA_TYPE));
    expect(rec(["allergies"], 0)).toBeErr(err(ERR.INVALID_WINDOW));
    expect(rec(["allergies"], 4321)).toBeErr(err(ERR.INVALID_WINDOW));
    expect(read(C, "get-emergency-count", [])).toBeUint(0);
    expect(rec(["allergies"], 4320)).toBeOk(Cl.uint(0));
  });

  it("bounds the window by patient-consent's get-max-emergency-window, the one definition", () => {
    setup();
    const max = Number((read("patient-consent", "get-max-emergency-window", []) as any).value);
    expect(max).toBe(4320);
    const rec = (n: string, w: number) => call(C, "record-emergency-access", recordArgs(n, physician, PATIENT_ID, ["allergies"], w), responder);
    expect(rec("01", max + 1).result).toBeErr(err(ERR.INVALID_WINDOW));
    const res = rec("02", max);
    expect(res.result).toBeOk(Cl.uint(0));
    // no second copy of the bound here
    const source = simnet.getContractSource(C)!;
    expect(source).toContain("(contract-call? .patient-consent get-max-emergency-window)");
    expect(source).not.toContain(String(max));
    // a patient may allow exactly as long a window as an access may be recorded with
    registerPatient();
    ok("patient-consent", "set-emergency-preferences", [Cl.bool(true), Cl.list([Cl.stringAscii("allergies")]), Cl.uint(max)], patient);
    expect(read("patient-consent", "is-emergency-access-allowed", [id(PATIENT_ID), Cl.list([Cl.stringAscii("allergies")]), Cl.uint(max)])).toBeBool(true);
  });

  it("records the degraded flag as given, in the record and the event", () => {
    setup();
    const res = call(C, "record-emergency-access", recordArgs(A, physician, PATIENT_ID, ["allergies"], 60, true), responder);
    expect(res.result).toBeOk(Cl.uint(0));
    expect(Cl.prettyPrint(prints(res)[0])).toContain("degraded: true");
    expect(Cl.prettyPrint(read(C, "get-emergency-access", [Cl.bufferFromHex(A.repeat(32))]))).toContain("degraded: true");
    ok(C, "record-emergency-access", recordArgs("d1", physician, PATIENT_ID, ["allergies"], 60, false), responder);
    expect(Cl.prettyPrint(read(C, "get-emergency-access", [Cl.bufferFromHex("d1".repeat(32))]))).toContain("degraded: false");
  });

  it("a refused record never calls patient-consent: the caller and local checks come first", () => {
    setup();
    ok(C, "record-emergency-access", recordArgs("ee", physician), responder);
    const refusals: [string, ReturnType<typeof recordArgs>, string, number][] = [
      ["a stranger", recordArgs(A, physician), stranger, ERR.NOT_RESPONDER],
      ["the owner", recordArgs(A, physician), deployer, ERR.NOT_RESPONDER],
      ["a duplicate", recordArgs("ee", physician), responder, ERR.DUPLICATE_ACCESS],
      ["no data types", recordArgs(A, physician, PATIENT_ID, []), responder, ERR.NO_DATA_TYPES],
      ["a zero window", recordArgs(A, physician, PATIENT_ID, ["allergies"], 0), responder, ERR.INVALID_WINDOW],
      ["an unregistered provider", recordArgs(A, stranger), responder, ERR.PROVIDER_NOT_FOUND],
    ];
    for (const [what, args, who, code] of refusals) {
      expect(call(C, "record-emergency-access", args, who).result, what).toBeErr(err(code));
      const trace = lastTrace();
      expect(trace, what).toContain("assert-direct-call");
      expect(trace, what).not.toContain("patient-consent");
    }
    // an accepted record asks patient-consent last, whether it stayed within the preferences
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    expect(lastTrace()).toContain("patient-consent is-emergency-access-allowed");
  });

  it("an access opens up to 8 data types: the seven critical ones and one more", () => {
    setup();
    const critical = ["allergies", "medications", "problems", "blood-type", "advance-directives", "immunizations", "emergency-summary"];
    expect(call(C, "record-emergency-access", recordArgs(A, physician, PATIENT_ID, [...critical, "vitals"]), responder).result).toBeOk(Cl.uint(0));
    // a ninth does not fit the argument's type, (list 8 (string-ascii 32)), nor patient-consent's
    const arg = (contract: string, fn: string, name: string) => simnet.getContractsInterfaces()
      .get(`${deployer}.${contract}`)!.functions.find((f) => f.name === fn)!.args.find((a) => a.name === name)!.type;
    expect(arg(C, "record-emergency-access", "data-types")).toEqual({ list: { type: { "string-ascii": { length: 32 } }, length: 8 } });
    expect(arg("patient-consent", "is-emergency-access-allowed", "data-types")).toEqual(arg(C, "record-emergency-access", "data-types"));
  });

  it("records an access outside the patient's preferences, flagged for reviewers", () => {
    setup();
    registerPatient();
    ok("patient-consent", "set-emergency-preferences", [Cl.bool(false), Cl.list([]), Cl.uint(10)], patient);
    const res = call(C, "record-emergency-access", recordArgs(A, physician), responder);
    expect(res.result).toBeOk(Cl.uint(0));
    expect(Cl.prettyPrint(read(C, "get-emergency-access", [Cl.bufferFromHex(A.repeat(32))]))).toContain("within-preferences: false");
  });

  it("reviewers review once (u215), with a verdict and an event; others cannot (u203)", () => {
    setup();
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    const accessId = Cl.bufferFromHex(A.repeat(32));
    const review = (verdict: string, who = reviewer) =>
      call(C, "review-emergency-access", [accessId, Cl.stringAscii(verdict), hash("cd"), Cl.none()], who);
    expect(review("appropriate", stranger).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(review("appropriate", responder).result).toBeErr(err(ERR.NOT_REVIEWER));
    expect(review("meh").result).toBeErr(err(ERR.INVALID_VERDICT));
    expect(read(C, "get-emergency-review", [accessId])).toBeNone();
    const res = review("inappropriate");
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("emergency-access-reviewed"), "access-id": accessId, reviewer: Cl.principal(reviewer),
      verdict: Cl.stringAscii("inappropriate"), "note-hash": hash("cd"), provider: Cl.principal(physician),
      "patient-id": id(PATIENT_ID), "relayed-by": Cl.none(),
    }));
    expect(Cl.prettyPrint(read(C, "get-emergency-review", [accessId]))).toContain('verdict: "inappropriate"');
    expect(review("appropriate").result).toBeErr(err(ERR.ALREADY_REVIEWED));
    expect(Cl.prettyPrint(read(C, "get-emergency-review", [accessId]))).toContain('verdict: "inappropriate"');
    expect(read(C, "get-verdicts", [])).toStrictEqual(
      Cl.list(["appropriate", "inappropriate", "needs-follow-up"].map((v) => Cl.stringAscii(v))));
  });

  it("a reviewer must be a verified provider to review (u208): not one suspended, revoked or never credentialed", () => {
    setup();
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    const accessId = Cl.bufferFromHex(A.repeat(32));
    const review = (who = reviewer) =>
      call(C, "review-emergency-access", [accessId, Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], who);
    // a reviewer with no provider record at all
    ok(C, "add-reviewer", [Cl.principal(nurse)], deployer);
    expect(review(nurse).result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    // registered, not verified yet
    registerProvider(nurse, "reviewer");
    expect(review(nurse).result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    // suspended by an authority: refused until reinstated
    ok(C, "suspend-provider", [Cl.principal(reviewer)], authority);
    expect(review().result).toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    expect(read(C, "get-emergency-review", [accessId])).toBeNone();
    ok(C, "reinstate-provider", [Cl.principal(reviewer)], authority);
    ok(C, "record-emergency-access", recordArgs("a2", physician), responder);
    expect(review().result).toBeOk(Cl.bool(true));
    // revoked: refused for good
    ok(C, "revoke-provider", [Cl.principal(reviewer)], authority);
    const second = Cl.bufferFromHex("a2".repeat(32));
    expect(call(C, "review-emergency-access", [second, Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], reviewer).result)
      .toBeErr(err(ERR.PROVIDER_NOT_VERIFIED));
    expect(read(C, "get-emergency-review", [second])).toBeNone();
  });

  it("accepts every verdict, \"needs-follow-up\" too", () => {
    setup();
    const verdicts = ["appropriate", "inappropriate", "needs-follow-up"];
    verdicts.forEach((verdict, i) => {
      const n = `e${i}`;
      ok(C, "record-emergency-access", recordArgs(n, physician), responder);
      const accessId = Cl.bufferFromHex(n.repeat(32));
      expect(call(C, "review-emergency-access", [accessId, Cl.stringAscii(verdict), hash("cd"), Cl.none()], reviewer).result)
        .toBeOk(Cl.bool(true));
      expect(Cl.prettyPrint(read(C, "get-emergency-review", [accessId]))).toContain(`verdict: "${verdict}"`);
    });
  });

  it("refuses a review of an unknown access (u214) and of one's own access (u217)", () => {
    setup();
    ok(C, "add-reviewer", [Cl.principal(physician)], deployer);
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    expect(call(C, "review-emergency-access", [Cl.bufferFromHex("ee".repeat(32)), Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], reviewer).result).toBeErr(err(ERR.ACCESS_NOT_FOUND));
    expect(call(C, "review-emergency-access", [Cl.bufferFromHex(A.repeat(32)), Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], physician).result).toBeErr(err(ERR.SELF_REVIEW));
  });

  it("the responder that recorded an access cannot review it (u217)", () => {
    setup();
    verifiedReviewer(responder);
    ok(C, "record-emergency-access", recordArgs(A, physician), responder);
    expect(call(C, "review-emergency-access", [Cl.bufferFromHex(A.repeat(32)), Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], responder).result).toBeErr(err(ERR.SELF_REVIEW));
    expect(call(C, "review-emergency-access", [Cl.bufferFromHex(A.repeat(32)), Cl.stringAscii("appropriate"), hash("cd"), Cl.none()], reviewer).result).toBeOk(Cl.bool(true));
  });
});

describe("audit anchors", () => {
  it("responders anchor the audit head; the count never goes back (u218)", () => {
    governance();
    expect(read(C, "get-latest-anchor", [])).toBeNone();
    expect(call(C, "anchor-audit", [hash("01"), Cl.uint(5)], stranger).result).toBeErr(err(ERR.NOT_RESPONDER));
    const res = call(C, "anchor-audit", [hash("01"), Cl.uint(5)], responder);
    expect(res.result).toBeOk(Cl.uint(0));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("audit-anchored"), head: hash("01"), count: Cl.uint(5), "anchor-index": Cl.uint(0),
      responder: Cl.principal(responder),
    }));
    expect(call(C, "anchor-audit", [hash("02"), Cl.uint(4)], responder).result).toBeErr(err(ERR.ANCHOR_REGRESSION));
    // as many entries under another head would fork the anchored history; the same head again is fine
    expect(call(C, "anchor-audit", [hash("02"), Cl.uint(5)], responder).result).toBeErr(err(ERR.ANCHOR_REGRESSION));
    expect(call(C, "anchor-audit", [hash("01"), Cl.uint(5)], responder).result).toBeOk(Cl.uint(1));
    expect(call(C, "anchor-audit", [hash("02"), Cl.uint(9)], responder).result).toBeOk(Cl.uint(2));
    expect(read(C, "get-anchor-count", [])).toBeUint(3);
    expect(Cl.prettyPrint(read(C, "get-latest-anchor", []))).toContain("count: u9");
    expect(Cl.prettyPrint(read(C, "get-anchor", [Cl.uint(0)]))).toContain("count: u5");
    expect(read(C, "get-anchor", [Cl.uint(3)])).toBeNone();
  });

  it("each responder's anchors grow on their own: another's larger count does not block ours (u218 per responder)", () => {
    governance();
    const other = stranger;
    ok(C, "add-responder", [Cl.principal(other)], deployer);
    expect(read(C, "get-latest-anchor-of", [Cl.principal(responder)])).toBeNone();
    expect(call(C, "anchor-audit", [hash("01"), Cl.uint(5)], responder).result).toBeOk(Cl.uint(0));
    // another responder's log is far longer: its anchor neither blocks ours nor counts as ours
    expect(call(C, "anchor-audit", [hash("aa"), Cl.uint(1000)], other).result).toBeOk(Cl.uint(1));
    expect(call(C, "anchor-audit", [hash("02"), Cl.uint(9)], responder).result).toBeOk(Cl.uint(2));
    expect(Cl.prettyPrint(read(C, "get-latest-anchor-of", [Cl.principal(responder)]))).toContain("count: u9");
    expect(Cl.prettyPrint(read(C, "get-latest-anchor-of", [Cl.principal(other)]))).toContain("count: u1000");
    // each is still held to its own: ours below 9, theirs below 1000, or the same count forked
    expect(call(C, "anchor-audit", [hash("03"), Cl.uint(8)], responder).result).toBeErr(err(ERR.ANCHOR_REGRESSION));
    expect(call(C, "anchor-audit", [hash("03"), Cl.uint(9)], responder).result).toBeErr(err(ERR.ANCHOR_REGRESSION));
    expect(call(C, "anchor-audit", [hash("bb"), Cl.uint(999)], other).result).toBeErr(err(ERR.ANCHOR_REGRESSION));
    expect(call(C, "anchor-audit", [hash("02"), Cl.uint(9)], responder).result).toBeOk(Cl.uint(3));
    expect(read(C, "get-anchor-count", [])).toBeUint(4);
    expect(Cl.prettyPrint(read(C, "get-latest-anchor", []))).toContain(`responder: '${responder}`);
  });
});

describe("emergency summaries", () => {
  // the service holds the responder's key and is appointed custodian too, as in the devnet demo
  const custodian = responder;
  const set = (patientId: string, h: string, who = custodian) =>
    call(C, "set-summary-hash", [id(patientId), hash(h)], who);
  const clear = (patientId: string, who = custodian) => call(C, "clear-summary-hash", [id(patientId)], who);
  const summary = (patientId = PATIENT_ID) => read(C, "get-summary-hash", [id(patientId)]);
  const version = (patientId = PATIENT_ID) => read(C, "get-summary-version", [id(patientId)]);
  /** The stored record; `block` defaults to the latest block, the one the last call was mined in. */
  const record = (h: string, v: number, who = custodian, block = simnet.blockHeight) =>
    Cl.tuple({ hash: hash(h), custodian: Cl.principal(who), block: Cl.uint(block), version: Cl.uint(v) });
  function setup() {
    governance();
    ok(C, "add-custodian", [Cl.principal(custodian)], deployer);
  }

  it("a custodian sets a patient's summary hash, version 1 first, with the record and an event", () => {
    setup();
    expect(summary()).toBeNone();
    expect(version()).toBeUint(0);
    const res = set(PATIENT_ID, "a1");
    expect(res.result).toBeOk(Cl.uint(1));
    expect(prints(res)).toEqual([Cl.tuple({
      topic: Cl.stringAscii("summary-hash-set"), "patient-id": id(PATIENT_ID), hash: hash("a1"),
      custodian: Cl.principal(custodian), version: Cl.uint(1),
    })]);
    expect(summary()).toBeSome(record("a1", 1));
    expect(version()).toBeUint(1);
  });

  it("each set is the next version, per patient; the record holds the latest", () => {
    setup();
    ok(C, "set-summary-hash", [id(PATIENT_ID), hash("a1")], custodian);
    simnet.mineEmptyBlocks(3);
    const second = set(PATIENT_ID, "a2");
    expect(second.result).toBeOk(Cl.uint(2));
    expect(summary()).toBeSome(record("a2", 2));
    // the same hash again is a new version too (an update that changed nothing is still recorded)
    expect(set(PATIENT_ID, "a2").result).toBeOk(Cl.uint(3));
    // another custodian continues the same count, and the record names it
    ok(C, "add-custodian", [Cl.principal(stranger)], deployer);
    const third = set(PATIENT_ID, "a4", stranger);
    expect(third.result).toBeOk(Cl.uint(4));
    expect(Cl.prettyPrint(prints(third)[0])).toContain("version: u4");
    expect(summary()).toBeSome(record("a4", 4, stranger));
    const at = simnet.blockHeight;
    // another patient's count starts at 1, and a patient never registered on chain is accepted
    expect(read("patient-consent", "get-patient-principal", [id(PATIENT2_ID)])).toBeNone();
    expect(set(PATIENT2_ID, "b1").result).toBeOk(Cl.uint(1));
    expect(summary(PATIENT2_ID)).toBeSome(record("b1", 1));
    expect(summary()).toBeSome(record("a4", 4, stranger, at));
  });

  it("only custodians set or clear a hash (u226), and nothing changes", () => {
    setup();
    ok(C, "set-summary-hash", [id(PATIENT_ID), hash("a1")], custodian);
    const before = summary();
    registerPatient();
    ok(C, "remove-custodian", [Cl.principal(custodian)], deployer);
    ok(C, "add-custodian", [Cl.principal(nurse)], deployer);
    // the owner, a responder, an authority, a reviewer, the patient themselves and a stranger
    for (const who of [deployer, responder, authority, reviewer, patient, stranger]) {
      const s = set(PATIENT_ID, "ff", who);
      expect(s.result, who).toBeErr(err(ERR.NOT_CUSTODIAN));
      expect(s.events).toEqual([]);
      expect(clear(PATIENT_ID, who).result, who).toBeErr(err(ERR.NOT_CUSTODIAN));
      // the caller is checked before the summary: no u227 for a patient without one
      expect(clear(PATIENT2_ID, who).result, who).toBeErr(err(ERR.NOT_CUSTODIAN));
    }
    expect(summary()).toEqual(before);
    expect(version()).toBeUint(1);
    // the custodian appointed in its place can
    expect(set(PATIENT_ID, "a2", nurse).result).toBeOk(Cl.uint(2));
  });

  it("a removed custodian loses its power at once; appointed again, it goes on from the last version", () => {
    setup();
    ok(C, "set-summary-hash", [id(PATIENT_ID), hash("a1")], custodian);
    const at = simnet.blockHeight;
    ok(C, "remove-custodian", [Cl.principal(custodian)], deployer);
    expect(read(C, "is-custodian", [Cl.principal(custodian)])).toBeBool(false);
    expect(set(PATIENT_ID, "a2").result).toBeErr(err(ERR.NOT_CUSTODIAN));
    expect(clear(PATIENT_ID).result).toBeErr(err(ERR.NOT_CUSTODIAN));
    expect(summary()).toBeSome(record("a1", 1, custodian, at));
    // still a responder: the roles are separate
    expect(read(C, "is-responder", [Cl.principal(custodian)])).toBeBool(true);
    ok(C, "add-custodian", [Cl.principal(custodian)], deployer);
    expect(set(PATIENT_ID, "a2").result).toBeOk(Cl.uint(2));
  });

  it("a custodian clears a withdrawn summary with an event; then none; versions never repeat", () => {
    setup();
    ok(C, "set-summary-hash", [id(PATIENT_ID), hash("a1")], custodian);
    ok(C, "set-summary-hash", [id(PATIENT_ID), hash("a2")], custodian);
    const res = clear(PATIENT_ID);
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)).toEqual([Cl.tuple({
      topic: Cl.stringAscii("summary-hash-cleared"), "patient-id": id(PATIENT_ID), custodian: Cl.principal(custodian),
      version: Cl.uint(2),
    })]);
    expect(summary()).toBeNone();
    expect(version()).toBeUint(2);
    // nothing left to clear (u227), nor for a patient that never had one
    const again = clear(PATIENT_ID);
    expect(again.result).toBeErr(err(ERR.SUMMARY_NOT_FOUND));
    expect(again.events).toEqual([]);
    expect(clear(PATIENT2_ID).result).toBeErr(err(ERR.SUMMARY_NOT_FOUND));
    // a new summary goes on from the last version set
    expect(set(PATIENT_ID, "a3").result).toBeOk(Cl.uint(3));
    expect(summary()).toBeSome(record("a3", 3));
  });
});

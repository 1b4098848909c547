import { describe, expect, it } from "vitest";
import { Cl } from "@stacks/transactions";
import {
  PATIENT_ID, PATIENT2_ID, SALT, call, deployer, hash, id, patientIdOf, nurse, ok, patient, patient2, physician, prints, read,
  registerPatient, stranger,
} from "./helpers";

const C = "patient-consent";
const grant = (provider: string, dt: string, expires: number, who = patient) =>
  call(C, "grant-consent", [Cl.principal(provider), Cl.stringAscii(dt), Cl.uint(expires)], who);
const check = (provider: string, dt: string, who = patient) =>
  read(C, "check-consent", [Cl.principal(who), Cl.principal(provider), Cl.stringAscii(dt)]);

describe("patient registration", () => {
  it("links a principal and a pseudonymous patient id both ways and prints the event", () => {
    const res = registerPatient();
    expect(res.result).toBeOk(id(PATIENT_ID));
    expect(read(C, "get-patient-id", [Cl.principal(patient)])).toBeSome(id(PATIENT_ID));
    expect(read(C, "get-patient-principal", [id(PATIENT_ID)])).toBeSome(Cl.principal(patient));
    expect(prints(res)).toEqual([
      Cl.tuple({ topic: Cl.stringAscii("patient-registered"), "patient-id": id(PATIENT_ID), patient: Cl.principal(patient) }),
    ]);
  });

  it("refuses a second registration of the same principal (u101)", () => {
    registerPatient();
    expect(call(C, "register-patient", [hash("77")], patient).result).toBeErr(Cl.uint(101));
    expect(read(C, "get-patient-id", [Cl.principal(patient)])).toBeSome(id(PATIENT_ID));
  });

  it("derives the id from the principal and a salt: no one can register someone else's id", () => {
    expect(read(C, "derive-patient-id", [Cl.principal(patient), Cl.bufferFromHex(SALT)])).toStrictEqual(id(PATIENT_ID));
    registerPatient();
    // the same salt from another principal is another id, whatever it has seen on chain
    const other = call(C, "register-patient", [Cl.bufferFromHex(SALT)], patient2);
    expect(other.result).toBeOk(id(PATIENT2_ID));
    expect(PATIENT2_ID).not.toBe(PATIENT_ID);
    expect(read(C, "get-patient-principal", [id(PATIENT_ID)])).toBeSome(Cl.principal(patient));
    // another salt, another id
    expect(patientIdOf(patient, "00".repeat(32))).not.toBe(PATIENT_ID);
  });

  it("answers none for unknown principals and ids", () => {
    expect(read(C, "get-patient-id", [Cl.principal(stranger)])).toBeNone();
    expect(read(C, "get-patient-principal", [id(PATIENT2_ID)])).toBeNone();
  });
});

describe("consent", () => {
  it("grants treatment consent that checks true until it expires", () => {
    registerPatient();
    const expires = simnet.blockHeight + 5;
    const res = grant(physician, "allergies", expires);
    expect(res.result).toBeOk(Cl.uint(0));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("consent-granted"), "patient-id": id(PATIENT_ID), provider: Cl.principal(physician),
      "data-type": Cl.stringAscii("allergies"), purpose: Cl.stringAscii("treatment"),
      "expires-at": Cl.uint(expires), "history-index": Cl.uint(0),
    }));
    expect(check(physician, "allergies")).toBeBool(true);
    // granular: another data type or another provider is not covered
    expect(check(physician, "medications")).toBeBool(false);
    expect(check(nurse, "allergies")).toBeBool(false);
    // expiry is exclusive: active while height < expires-at
    simnet.mineEmptyBlocks(expires - simnet.blockHeight - 1);
    expect(check(physician, "allergies")).toBeBool(true);
    simnet.mineEmptyBlock();
    expect(simnet.blockHeight).toBe(expires);
    expect(check(physician, "allergies")).toBeBool(false);
  });

  it("revokes: the consent checks false at once and the revoke is kept in the history", () => {
    registerPatient();
    grant(physician, "allergies", simnet.blockHeight + 100);
    const res = call(C, "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], patient);
    expect(res.result).toBeOk(Cl.uint(1));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("consent-revoked"), "patient-id": id(PATIENT_ID), provider: Cl.principal(physician),
      "data-type": Cl.stringAscii("allergies"), purpose: Cl.stringAscii("treatment"), "history-index": Cl.uint(1),
    }));
    expect(check(physician, "allergies")).toBeBool(false);
    const consent = read(C, "get-consent", [id(PATIENT_ID), Cl.principal(physician), Cl.stringAscii("allergies"), Cl.stringAscii("treatment")]);
    expect(Cl.prettyPrint(consent)).toContain("active: false");
    expect(Cl.prettyPrint(consent)).toContain(`revoked-at: (some u${simnet.blockHeight})`);
  });

  it("refuses to revoke a consent that is not active (u105): never granted, already revoked, expired", () => {
    registerPatient();
    const revoke = () => call(C, "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], patient);
    expect(revoke().result).toBeErr(Cl.uint(105));
    grant(physician, "allergies", simnet.blockHeight + 3);
    expect(revoke().result).toBeOk(Cl.uint(1));
    expect(revoke().result).toBeErr(Cl.uint(105));
    grant(physician, "allergies", simnet.blockHeight + 2);
    simnet.mineEmptyBlocks(3);
    expect(revoke().result).toBeErr(Cl.uint(105));
    expect(read(C, "get-consent-history-count", [id(PATIENT_ID)])).toBeUint(3);
  });

  it("a re-grant after a revoke makes the consent active again", () => {
    registerPatient();
    grant(physician, "allergies", simnet.blockHeight + 50);
    call(C, "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], patient);
    expect(grant(physician, "allergies", simnet.blockHeight + 50).result).toBeOk(Cl.uint(2));
    expect(check(physician, "allergies")).toBeBool(true);
  });

  it("keeps consent per purpose: treatment consent does not cover research", () => {
    registerPatient();
    const args = (purpose: string) => [Cl.principal(physician), Cl.stringAscii("lab-results"), Cl.stringAscii(purpose)];
    expect(call(C, "grant-consent-for-purpose", [...args("research"), Cl.uint(simnet.blockHeight + 10)], patient).result).toBeOk(Cl.uint(0));
    expect(read(C, "check-consent-by-id", [id(PATIENT_ID), ...args("research")])).toBeBool(true);
    expect(read(C, "check-consent-by-id", [id(PATIENT_ID), ...args("treatment")])).toBeBool(false);
    expect(check(physician, "lab-results")).toBeBool(false);
    expect(call(C, "revoke-consent-for-purpose", args("research"), patient).result).toBeOk(Cl.uint(1));
    expect(read(C, "check-consent-by-id", [id(PATIENT_ID), ...args("research")])).toBeBool(false);
  });

  it("refuses bad grants and changes nothing", () => {
    registerPatient();
    const h = simnet.blockHeight;
    expect(grant(physician, "allergies", h + 10, stranger).result).toBeErr(Cl.uint(100));
    expect(grant(physician, "horoscope", h + 10).result).toBeErr(Cl.uint(103));
    expect(grant(physician, "allergies", h).result).toBeErr(Cl.uint(104));
    expect(grant(physician, "allergies", 0).result).toBeErr(Cl.uint(104));
    expect(grant(patient, "allergies", h + 10).result).toBeErr(Cl.uint(108));
    expect(call(C, "grant-consent-for-purpose", [Cl.principal(physician), Cl.stringAscii("allergies"),
      Cl.stringAscii("marketing"), Cl.uint(h + 10)], patient).result).toBeErr(Cl.uint(106));
    expect(read(C, "get-consent-history-count", [id(PATIENT_ID)])).toBeUint(0);
    expect(check(physician, "allergies")).toBeBool(false);
  });

  it("refuses a revoke from an unregistered principal (u100)", () => {
    expect(call(C, "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], stranger).result).toBeErr(Cl.uint(100));
  });

  it("checks false for an unregistered patient", () => {
    expect(check(physician, "allergies", stranger)).toBeBool(false);
  });

  it("keeps every grant and revoke in order, readable by index", () => {
    registerPatient();
    const h = simnet.blockHeight;
    grant(physician, "allergies", h + 100);
    grant(nurse, "medications", h + 200);
    call(C, "revoke-consent", [Cl.principal(physician), Cl.stringAscii("allergies")], patient);
    expect(read(C, "get-consent-history-count", [id(PATIENT_ID)])).toBeUint(3);
    const entry = (i: number) => Cl.prettyPrint(read(C, "get-consent-history-entry", [id(PATIENT_ID), Cl.uint(i)]));
    expect(entry(0)).toContain('action: "grant"');
    expect(entry(0)).toContain(`provider: '${physician}`);
    expect(entry(1)).toContain('data-type: "medications"');
    expect(entry(1)).toContain(`expires-at: u${h + 200}`);
    expect(entry(2)).toContain('action: "revoke"');
    expect(read(C, "get-consent-history-entry", [id(PATIENT_ID), Cl.uint(3)])).toBeNone();
    expect(read(C, "get-consent-history-count", [id(PATIENT2_ID)])).toBeUint(0);
  });

  it("knows 12 data types, the size of the preference lists, and a patient can allow them all", () => {
    const all = read(C, "get-data-types", []) as any;
    expect(all.value.length).toBe(12);
    // the preference lists are exactly that long: a new data type must raise them with it
    const arg = (fn: string) => simnet.getContractsInterfaces().get(`${deployer}.${C}`)!.functions
      .find((f) => f.name === fn)!.args.find((a) => a.name === "data-types")!.type as any;
    expect(arg("set-emergency-preferences").list.length).toBe(all.value.length);
    expect(arg("are-valid-data-types").list.length).toBe(all.value.length);
    expect(arg("is-emergency-access-allowed").list.length).toBe(8);
    registerPatient();
    expect(call(C, "set-emergency-preferences", [Cl.bool(true), all, Cl.uint(60)], patient).result).toBeOk(Cl.bool(true));
    expect(read(C, "are-valid-data-types", [all])).toBeBool(true);
    // one emergency access asks for at most 8 of them (the list type of is-emergency-access-allowed)
    const eight = Cl.list(all.value.slice(0, 8));
    expect(read(C, "is-emergency-access-allowed", [id(PATIENT_ID), eight, Cl.uint(60)])).toBeBool(true);
  });

  it("exposes the one longest emergency window, 4320 blocks", () => {
    expect(read(C, "get-max-emergency-window", [])).toBeUint(4320);
  });

  it("lists the known data types and purposes", () => {
    expect(Cl.prettyPrint(read(C, "get-data-types", []))).toContain('"advance-directives"');
    expect(read(C, "get-purposes", [])).toStrictEqual(Cl.list(
      ["treatment", "research", "insurance", "transfer"].map((p) => Cl.stringAscii(p))));
    expect(read(C, "is-valid-data-type", [Cl.stringAscii("blood-type")])).toBeBool(true);
    expect(read(C, "is-valid-data-type", [Cl.stringAscii("Blood-Type")])).toBeBool(false);
    expect(read(C, "are-valid-data-types", [Cl.list([Cl.stringAscii("allergies"), Cl.stringAscii("x")])])).toBeBool(false);
    expect(read(C, "are-valid-data-types", [Cl.list([])])).toBeBool(true);
  });
});

describe("emergency preferences", () => {
  const prefs = (allow: boolean, dts: string[], window: number, who = patient) =>
    call(C, "set-emergency-preferences", [Cl.bool(allow), Cl.list(dts.map((d) => Cl.stringAscii(d))), Cl.uint(window)], who);
  const allowed = (dts: string[], window: number, pid = PATIENT_ID) =>
    read(C, "is-emergency-access-allowed", [id(pid), Cl.list(dts.map((d) => Cl.stringAscii(d))), Cl.uint(window)]);

  it("has sane defaults for a patient who never set them: critical data types, 720 blocks", () => {
    const p = Cl.prettyPrint(read(C, "get-emergency-preferences", [id(PATIENT2_ID)]));
    expect(p).toContain("allow: true");
    expect(p).toContain("is-default: true");
    expect(p).toContain("max-window: u720");
    expect(p).toContain('"allergies"');
    expect(p).not.toContain('"clinical-notes"');
    expect(allowed(["allergies", "blood-type"], 720, PATIENT2_ID)).toBeBool(true);
    expect(allowed(["allergies"], 721, PATIENT2_ID)).toBeBool(false);
    expect(allowed(["clinical-notes"], 10, PATIENT2_ID)).toBeBool(false);
  });

  it("sets preferences that then govern emergency access, and prints the event", () => {
    registerPatient();
    const res = prefs(true, ["allergies", "medications"], 30);
    expect(res.result).toBeOk(Cl.bool(true));
    expect(prints(res)[0]).toEqual(Cl.tuple({
      topic: Cl.stringAscii("emergency-preferences-set"), "patient-id": id(PATIENT_ID), allow: Cl.bool(true),
      "data-types": Cl.list([Cl.stringAscii("allergies"), Cl.stringAscii("medications")]), "max-window": Cl.uint(30),
    }));
    expect(Cl.prettyPrint(read(C, "get-emergency-preferences", [id(PATIENT_ID)]))).toContain("is-default: false");
    expect(allowed(["medications", "allergies"], 30)).toBeBool(true);
    expect(allowed(["medications", "blood-type"], 30)).toBeBool(false);
    expect(allowed(["allergies"], 31)).toBeBool(false);
  });

  it("an opt-out refuses every emergency access", () => {
    registerPatient();
    prefs(false, ["allergies"], 30);
    expect(allowed(["allergies"], 1)).toBeBool(false);
  });

  it("refuses bad preferences and keeps the previous ones", () => {
    registerPatient();
    prefs(true, ["allergies"], 30);
    expect(prefs(true, ["allergies"], 30, stranger).result).toBeErr(Cl.uint(100));
    expect(prefs(true, ["allergies", "gossip"], 30).result).toBeErr(Cl.uint(103));
    expect(prefs(true, ["allergies"], 0).result).toBeErr(Cl.uint(107));
    expect(prefs(true, ["allergies"], 4321).result).toBeErr(Cl.uint(107));
    expect(prefs(true, ["allergies"], 4320).result).toBeOk(Cl.bool(true));
    expect(Cl.prettyPrint(read(C, "get-emergency-preferences", [id(PATIENT_ID)]))).toContain("max-window: u4320");
  });

  it("nothing here names the deployer specially", () => {
    // the contract has no owner: the deployer is a patient like any other
    expect(call(C, "register-patient", [Cl.bufferFromHex(SALT)], deployer).result).toBeOk(id(patientIdOf(deployer)));
  });
});

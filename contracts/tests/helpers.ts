// Shared set-up for the contract tests: named accounts and small steps that put the
// contracts into a known state. Every helper asserts its own call succeeded, so a test
// that builds on it fails at the step that broke.
import { expect } from "vitest";
import { createHash } from "node:crypto";
import { Cl, ClarityValue, serializeCV } from "@stacks/transactions";

export const accounts = simnet.getAccounts();
export const deployer = accounts.get("deployer")!;
export const authority = accounts.get("wallet_1")!;
export const responder = accounts.get("wallet_2")!;
export const reviewer = accounts.get("wallet_3")!;
export const physician = accounts.get("wallet_4")!;
export const nurse = accounts.get("wallet_5")!;
export const patient = accounts.get("wallet_6")!;
export const patient2 = accounts.get("wallet_7")!;
export const stranger = accounts.get("wallet_8")!;

/** The salt the test patients register with. */
export const SALT = "5a".repeat(32);

/** A patient id as patient-consent derives it: sha256(consensus bytes of the principal ++ salt). */
export function patientIdOf(who: string, salt = SALT): string {
  const principal = Buffer.from(serializeCV(Cl.principal(who)), "hex");
  return createHash("sha256").update(Buffer.concat([principal, Buffer.from(salt, "hex")])).digest("hex");
}

export const PATIENT_ID = patientIdOf(patient);
export const PATIENT2_ID = patientIdOf(patient2);
export const hash = (byte: string) => Cl.bufferFromHex(byte.repeat(32));
export const id = (hex: string) => Cl.bufferFromHex(hex);

export function call(contract: string, fn: string, args: ClarityValue[], sender: string) {
  return simnet.callPublicFn(contract, fn, args, sender);
}

export function read(contract: string, fn: string, args: ClarityValue[], sender = deployer) {
  return simnet.callReadOnlyFn(contract, fn, args, sender).result;
}

export function ok(contract: string, fn: string, args: ClarityValue[], sender: string) {
  const res = call(contract, fn, args, sender);
  expect(res.result.type, `${contract}.${fn} by ${sender}: ${Cl.prettyPrint(res.result)}`).toBe("ok");
  return res;
}

/** The print events of a call, as Clarity values. */
export function prints(res: { events: any[] }) {
  return res.events.filter((e) => e.event === "print_event").map((e) => e.data.value as ClarityValue);
}

export function registerPatient(who = patient, salt = SALT) {
  return ok("patient-consent", "register-patient", [Cl.bufferFromHex(salt)], who);
}

export function governance() {
  ok("access-control", "add-authority", [Cl.principal(authority)], deployer);
  ok("access-control", "add-responder", [Cl.principal(responder)], deployer);
  ok("access-control", "add-reviewer", [Cl.principal(reviewer)], deployer);
}

export function registerProvider(who: string, role: string) {
  return ok("access-control", "register-provider", [hash("11"), Cl.stringAscii(role), hash("22")], who);
}

export function verifiedProvider(who: string, role: string) {
  registerProvider(who, role);
  ok("access-control", "verify-provider", [Cl.principal(who)], authority);
}

/** `who` made a reviewer by the owner and, as a reviewer must be to review, a provider the
 * authority verified (after `governance`). */
export function verifiedReviewer(who: string) {
  ok("access-control", "add-reviewer", [Cl.principal(who)], deployer);
  verifiedProvider(who, "reviewer");
}

/** The arguments of access-control's record-emergency-access; `degraded` last, as there. */
export function recordArgs(accessId: string, provider: string, patientId = PATIENT_ID,
                           dataTypes = ["allergies"], window = 60, degraded = false) {
  return [
    Cl.bufferFromHex(accessId.repeat(32)),
    Cl.principal(provider),
    id(patientId),
    Cl.list(dataTypes.map((d) => Cl.stringAscii(d))),
    Cl.uint(window),
    hash("ab"),
    Cl.bool(degraded),
  ];
}

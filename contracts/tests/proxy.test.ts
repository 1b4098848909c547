// Calls through another contract. A hostile contract forwards every public function of both
// contracts; the real patient, owner, authority, responder, reviewer, custodian or provider is
// tricked into calling it. Inside the forwarded call tx-sender is still that person, so a
// contract that authorized with tx-sender alone would act for them. Both contracts refuse any
// call whose contract-caller is not tx-sender (patient-consent u110, access-control u224): each
// case below checks the refusal, that nothing changed (through the read-only getters) and that
// nothing was printed, then makes the same call directly to show it would have worked and
// changed that state.
import { beforeEach, describe, expect, it } from "vitest";
import { Cl, ClarityValue } from "@stacks/transactions";
import {
  PATIENT_ID, SALT, authority, call, deployer, governance, hash, id, nurse, ok, patient, patient2, physician,
  read, recordArgs, registerPatient, registerProvider, responder, reviewer, stranger, verifiedProvider,
} from "./helpers";

const PC = "patient-consent";
const AC = "access-control";
const PC_ERR_PROXY_CALL = 110;
const AC_ERR_PROXY_CALL = 224;

/** The hostile contract, deployed by a wallet that holds no role. */
const PROXY_NAME = "hostile-proxy";
const PROXY = `${stranger}.${PROXY_NAME}`;
const pc = `'${deployer}.${PC}`;
const ac = `'${deployer}.${AC}`;
const PROXY_SOURCE = `
;; forwards every public function of patient-consent and access-control, as whoever calls it
(define-public (register-patient (salt (buff 32)))
  (contract-call? ${pc} register-patient salt))
(define-public (grant-consent (provider principal) (data-type (string-ascii 32)) (expires-at uint))
  (contract-call? ${pc} grant-consent provider data-type expires-at))
(define-public (grant-consent-for-purpose (provider principal) (data-type (string-ascii 32)) (purpose (string-ascii 16)) (expires-at uint))
  (contract-call? ${pc} grant-consent-for-purpose provider data-type purpose expires-at))
(define-public (revoke-consent (provider principal) (data-type (string-ascii 32)))
  (contract-call? ${pc} revoke-consent provider data-type))
(define-public (revoke-consent-for-purpose (provider principal) (data-type (string-ascii 32)) (purpose (string-ascii 16)))
  (contract-call? ${pc} revoke-consent-for-purpose provider data-type purpose))
(define-public (set-emergency-preferences (allow bool) (data-types (list 12 (string-ascii 32))) (max-window uint))
  (contract-call? ${pc} set-emergency-preferences allow data-types max-window))

(define-public (set-contract-owner (new-owner principal)) (contract-call? ${ac} set-contract-owner new-owner))
(define-public (accept-contract-owner) (contract-call? ${ac} accept-contract-owner))
(define-public (add-authority (who principal)) (contract-call? ${ac} add-authority who))
(define-public (remove-authority (who principal)) (contract-call? ${ac} remove-authority who))
(define-public (add-responder (who principal)) (contract-call? ${ac} add-responder who))
(define-public (remove-responder (who principal)) (contract-call? ${ac} remove-responder who))
(define-public (add-reviewer (who principal)) (contract-call? ${ac} add-reviewer who))
(define-public (remove-reviewer (who principal)) (contract-call? ${ac} remove-reviewer who))
(define-public (add-custodian (who principal)) (contract-call? ${ac} add-custodian who))
(define-public (remove-custodian (who principal)) (contract-call? ${ac} remove-custodian who))
(define-public (register-provider (info-hash (buff 32)) (role (string-ascii 16)) (credentials-hash (buff 32)))
  (contract-call? ${ac} register-provider info-hash role credentials-hash))
(define-public (update-provider-credentials (info-hash (buff 32)) (credentials-hash (buff 32)))
  (contract-call? ${ac} update-provider-credentials info-hash credentials-hash))
(define-public (verify-provider (who principal)) (contract-call? ${ac} verify-provider who))
(define-public (suspend-provider (who principal)) (contract-call? ${ac} suspend-provider who))
(define-public (reinstate-provider (who principal)) (contract-call? ${ac} reinstate-provider who))
(define-public (revoke-provider (who principal)) (contract-call? ${ac} revoke-provider who))
(define-public (set-provider-role (who principal) (role (string-ascii 16))) (contract-call? ${ac} set-provider-role who role))
(define-public (request-access (patient-id (buff 32)) (data-type (string-ascii 32)) (purpose (string-ascii 16)))
  (contract-call? ${ac} request-access patient-id data-type purpose))
(define-public (record-emergency-access (access-id (buff 32)) (provider principal) (patient-id (buff 32))
                                        (data-types (list 8 (string-ascii 32))) (window uint)
                                        (reason-hash (buff 32)) (degraded bool))
  (contract-call? ${ac} record-emergency-access access-id provider patient-id data-types window reason-hash degraded))
(define-public (review-emergency-access (access-id (buff 32)) (verdict (string-ascii 16)) (note-hash (buff 32))
                                        (reviewer-signature (optional (buff 65))))
  (contract-call? ${ac} review-emergency-access access-id verdict note-hash reviewer-signature))
(define-public (anchor-audit (head (buff 32)) (count uint)) (contract-call? ${ac} anchor-audit head count))
(define-public (set-summary-hash (patient-id (buff 32)) (hash (buff 32)))
  (contract-call? ${ac} set-summary-hash patient-id hash))
(define-public (clear-summary-hash (patient-id (buff 32))) (contract-call? ${ac} clear-summary-hash patient-id))

;; the same contract acting for itself, as itself
(define-public (register-itself (salt (buff 32)))
  (as-contract (contract-call? ${pc} register-patient salt)))
(define-public (anchor-as-itself (head (buff 32)) (count uint))
  (as-contract (contract-call? ${ac} anchor-audit head count)))
`;

beforeEach(() => {
  const res = simnet.deployContract(PROXY_NAME, PROXY_SOURCE, { clarityVersion: 3 }, stranger);
  expect(res.result).toBeBool(true);
});

type Case = {
  contract: typeof PC | typeof AC;
  fn: string;
  /** The principal tricked into calling the proxy: the one the call would act for. */
  who: string;
  args: () => ClarityValue[];
  /** Puts the contracts where the direct call succeeds. */
  setup?: () => void;
  /** Read-only answers that the call, made directly, changes. */
  state: () => ClarityValue[];
};

const consent = (purpose = "treatment", dt = "allergies") =>
  read(PC, "get-consent", [id(PATIENT_ID), Cl.principal(physician), Cl.stringAscii(dt), Cl.stringAscii(purpose)]);
const historyCount = () => read(PC, "get-consent-history-count", [id(PATIENT_ID)]);
const grant = (purpose = "treatment") =>
  ok(PC, "grant-consent-for-purpose", [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.stringAscii(purpose),
    Cl.uint(simnet.blockHeight + 50)], patient);
const provider = (who = physician) => read(AC, "get-provider", [Cl.principal(who)]);
const owners = () => [read(AC, "get-contract-owner", []), read(AC, "get-pending-owner", [])];
const ACCESS_ID = Cl.bufferFromHex("d0".repeat(32));

const membership = (add: string, remove: string, is: string): Case[] => [
  { contract: AC, fn: add, who: deployer, args: () => [Cl.principal(nurse)],
    state: () => [read(AC, is, [Cl.principal(nurse)])] },
  { contract: AC, fn: remove, who: deployer, args: () => [Cl.principal(nurse)],
    setup: () => { ok(AC, add, [Cl.principal(nurse)], deployer); },
    state: () => [read(AC, is, [Cl.principal(nurse)])] },
];

const CASES: Case[] = [
  // patient-consent: the patient
  { contract: PC, fn: "register-patient", who: patient, args: () => [Cl.bufferFromHex(SALT)],
    state: () => [read(PC, "get-patient-id", [Cl.principal(patient)]), read(PC, "get-patient-principal", [id(PATIENT_ID)])] },
  { contract: PC, fn: "grant-consent", who: patient,
    args: () => [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.uint(simnet.blockHeight + 50)],
    setup: () => { registerPatient(); }, state: () => [consent(), historyCount()] },
  { contract: PC, fn: "grant-consent-for-purpose", who: patient,
    args: () => [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.stringAscii("research"), Cl.uint(simnet.blockHeight + 50)],
    setup: () => { registerPatient(); }, state: () => [consent("research"), historyCount()] },
  { contract: PC, fn: "revoke-consent", who: patient, args: () => [Cl.principal(physician), Cl.stringAscii("allergies")],
    setup: () => { registerPatient(); grant(); }, state: () => [consent(), historyCount()] },
  { contract: PC, fn: "revoke-consent-for-purpose", who: patient,
    args: () => [Cl.principal(physician), Cl.stringAscii("allergies"), Cl.stringAscii("research")],
    setup: () => { registerPatient(); grant("research"); }, state: () => [consent("research"), historyCount()] },
  { contract: PC, fn: "set-emergency-preferences", who: patient,
    args: () => [Cl.bool(false), Cl.list([Cl.stringAscii("allergies")]), Cl.uint(10)],
    setup: () => { registerPatient(); }, state: () => [read(PC, "get-emergency-preferences", [id(PATIENT_ID)])] },

  // access-control: governance by the owner, and the owner-to-be
  { contract: AC, fn: "set-contract-owner", who: deployer, args: () => [Cl.principal(stranger)], state: owners },
  { contract: AC, fn: "accept-contract-owner", who: authority, args: () => [],
    setup: () => { ok(AC, "set-contract-owner", [Cl.principal(authority)], deployer); }, state: owners },
  ...membership("add-authority", "remove-authority", "is-authority"),
  ...membership("add-responder", "remove-responder", "is-responder"),
  ...membership("add-reviewer", "remove-reviewer", "is-reviewer"),
  ...membership("add-custodian", "remove-custodian", "is-custodian"),

  // providers, and the authority that credentials them
  { contract: AC, fn: "register-provider", who: physician, args: () => [hash("11"), Cl.stringAscii("physician"), hash("22")],
    state: () => [provider(), read(AC, "get-provider-count", [])] },
  { contract: AC, fn: "update-provider-credentials", who: physician, args: () => [hash("33"), hash("44")],
    setup: () => { governance(); verifiedProvider(physician, "physician"); }, state: () => [provider()] },
  { contract: AC, fn: "verify-provider", who: authority, args: () => [Cl.principal(physician)],
    setup: () => { governance(); registerProvider(physician, "physician"); }, state: () => [provider()] },
  { contract: AC, fn: "suspend-provider", who: authority, args: () => [Cl.principal(physician)],
    setup: () => { governance(); verifiedProvider(physician, "physician"); }, state: () => [provider()] },
  { contract: AC, fn: "reinstate-provider", who: authority, args: () => [Cl.principal(physician)],
    setup: () => { governance(); verifiedProvider(physician, "physician"); ok(AC, "suspend-provider", [Cl.principal(physician)], authority); },
    state: () => [provider()] },
  { contract: AC, fn: "revoke-provider", who: authority, args: () => [Cl.principal(physician)],
    setup: () => { governance(); verifiedProvider(physician, "physician"); }, state: () => [provider()] },
  { contract: AC, fn: "set-provider-role", who: authority, args: () => [Cl.principal(physician), Cl.stringAscii("nurse")],
    setup: () => { governance(); verifiedProvider(physician, "physician"); }, state: () => [provider()] },
  { contract: AC, fn: "request-access", who: physician,
    args: () => [id(PATIENT_ID), Cl.stringAscii("allergies"), Cl.stringAscii("treatment")],
    setup: () => { governance(); verifiedProvider(physician, "physician"); registerPatient(); grant(); },
    state: () => [read(AC, "get-access-count", []), read(AC, "get-access-log-entry", [Cl.uint(1)])] },

  // the responder service and the reviewer
  { contract: AC, fn: "record-emergency-access", who: responder, args: () => recordArgs("d0", physician),
    setup: () => { governance(); verifiedProvider(physician, "physician"); },
    state: () => [read(AC, "get-emergency-count", []), read(AC, "get-emergency-access", [ACCESS_ID]),
                  read(AC, "get-patient-emergency-count", [id(PATIENT_ID)])] },
  { contract: AC, fn: "review-emergency-access", who: reviewer, args: () => [ACCESS_ID, Cl.stringAscii("appropriate"), hash("cd"), Cl.none()],
    setup: () => { governance(); verifiedProvider(physician, "physician"); verifiedProvider(reviewer, "reviewer");
                   ok(AC, "record-emergency-access", recordArgs("d0", physician), responder); },
    state: () => [read(AC, "get-emergency-review", [ACCESS_ID])] },
  { contract: AC, fn: "anchor-audit", who: responder, args: () => [hash("01"), Cl.uint(5)],
    setup: () => { governance(); }, state: () => [read(AC, "get-anchor-count", []), read(AC, "get-latest-anchor", [])] },

  // the data custodian (here the responder, appointed custodian as in the devnet demo)
  { contract: AC, fn: "set-summary-hash", who: responder, args: () => [id(PATIENT_ID), hash("a1")],
    setup: () => { governance(); ok(AC, "add-custodian", [Cl.principal(responder)], deployer); },
    state: () => [read(AC, "get-summary-hash", [id(PATIENT_ID)]), read(AC, "get-summary-version", [id(PATIENT_ID)])] },
  { contract: AC, fn: "clear-summary-hash", who: responder, args: () => [id(PATIENT_ID)],
    setup: () => { governance(); ok(AC, "add-custodian", [Cl.principal(responder)], deployer);
                   ok(AC, "set-summary-hash", [id(PATIENT_ID), hash("a1")], responder); },
    state: () => [read(AC, "get-summary-hash", [id(PATIENT_ID)])] },
];

describe("calls through another contract", () => {
  it("the proxy cases cover every public function of both contracts", () => {
    const interfaces = simnet.getContractsInterfaces();
    for (const contract of [PC, AC]) {
      const publicFns = interfaces.get(`${deployer}.${contract}`)!.functions
        .filter((f) => f.access === "public").map((f) => f.name).sort();
      expect(CASES.filter((c) => c.contract === contract).map((c) => c.fn).sort()).toEqual(publicFns);
    }
  });

  for (const c of CASES) {
    const code = c.contract === PC ? PC_ERR_PROXY_CALL : AC_ERR_PROXY_CALL;
    it(`${c.contract}.${c.fn} through a hostile contract is refused (u${code}) and changes nothing`, () => {
      c.setup?.();
      const before = c.state();
      const proxied = call(PROXY, c.fn, c.args(), c.who);
      expect(proxied.result).toBeErr(Cl.uint(code));
      expect(proxied.events).toEqual([]);
      expect(c.state()).toEqual(before);
      // made directly, by the same principal with the same arguments, the call works
      const direct = call(c.contract, c.fn, c.args(), c.who);
      expect(direct.result.type, Cl.prettyPrint(direct.result)).toBe("ok");
      expect(c.state()).not.toEqual(before);
    });
  }

  it("a contract still acts for itself, as itself (as-contract), and only for itself", () => {
    // it registers as a patient under its own principal, never the caller's
    const registered = call(PROXY, "register-itself", [Cl.bufferFromHex(SALT)], patient2);
    expect(registered.result).toBeOk(read(PC, "derive-patient-id", [Cl.principal(PROXY), Cl.bufferFromHex(SALT)]));
    expect(read(PC, "get-patient-id", [Cl.principal(patient2)])).toBeNone();
    // a contract appointed responder anchors as itself ...
    ok(AC, "add-responder", [Cl.principal(PROXY)], deployer);
    expect(call(PROXY, "anchor-as-itself", [hash("01"), Cl.uint(5)], stranger).result).toBeOk(Cl.uint(0));
    expect(Cl.prettyPrint(read(AC, "get-latest-anchor", []))).toContain(`responder: '${PROXY}`);
    // ... but forwarding a call is still refused, whoever makes it
    expect(call(PROXY, "anchor-audit", [hash("01"), Cl.uint(6)], stranger).result).toBeErr(Cl.uint(AC_ERR_PROXY_CALL));
    expect(read(AC, "get-anchor-count", [])).toBeUint(1);
  });
});

// --seed-demo: one verified clinician per role, two patients (one who allows emergency access
// to the critical data types, one who opted out), and an authorized responder (also a data
// custodian, so that the service, which signs with the responder's key in dev, records the hash
// of each patient's emergency summary through its submitter), all created by real signed
// transactions through the devnet's own mempool. Keys are generated per devnet and
// written, with mode 0600, to a JSON file the service's dev mode and newcomers sign with.
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import {
  Cl, ClarityValue, PostConditionMode, makeContractCall, privateKeyToAddress, randomPrivateKey, serializeCV,
} from "@stacks/transactions";
import { Chain } from "./chain.js";

/**
 * The deployer key of Clarinet's standard devnet accounts (settings/Devnet.toml), published by
 * Clarinet for local devnets: it holds nothing anywhere and is the one key this repo names.
 */
export const DEVNET_DEPLOYER_KEY = "753b7cc01a1a2e86221266a154af739463fce51219d97e4f856cd7200c3bd2a601";

export const ROLES = ["physician", "nurse", "paramedic", "pharmacist", "reviewer", "admin"] as const;
const FEE = 10_000n;
const STARTING_BALANCE = 1_000_000_000n; // 1,000 STX

type Identity = { principal: string; private_key: string };
export type DemoIdentities = {
  network: { chain_id: number; deployer: string; contracts: { patient_consent: string; access_control: string } };
  providers: (Identity & { role: string; display_name: string; department: string; organization: string; info_hash: string })[];
  patients: (Identity & { salt: string; patient_id: string; emergency_access: boolean })[];
  responder: Identity;
  authority: Identity;
};

/** A patient id as patient-consent derives it: sha256(consensus bytes of the principal ++ salt). */
export function patientIdOf(principal: string, salt: string): string {
  const bytes = Buffer.from(serializeCV(Cl.principal(principal)), "hex");
  return createHash("sha256").update(Buffer.concat([bytes, Buffer.from(salt, "hex")])).digest("hex");
}

const identity = (): Identity => {
  const private_key = randomPrivateKey();
  return { private_key, principal: privateKeyToAddress(private_key, "testnet") };
};

export async function seedDemo(chain: Chain, file: string, log: (m: string) => void): Promise<DemoIdentities> {
  const deployer = privateKeyToAddress(DEVNET_DEPLOYER_KEY, "testnet");
  if (!chain.contractExists(`${deployer}.access-control`)) {
    throw new Error(`the contracts are not deployed by the standard devnet deployer ${deployer}`);
  }
  const names: Record<string, string> = {
    physician: "Dr. Ada Demo", nurse: "Nurse Ben Demo", paramedic: "Paramedic Cy Demo",
    pharmacist: "Pharmacist Di Demo", reviewer: "Reviewer Eve Demo", admin: "Admin Fay Demo",
  };
  const demo: DemoIdentities = {
    network: { chain_id: 0x80000000, deployer,
      contracts: { patient_consent: `${deployer}.patient-consent`, access_control: `${deployer}.access-control` } },
    providers: ROLES.map((role) => {
      const id = identity();
      // the provider's directory entry, hashed as the service checks it: canonical JSON
      // (members sorted by name, no whitespace) of department, display_name, organization, role
      const info = { department: "Emergency", display_name: names[role], organization: "Demo General Hospital", role };
      return { ...id, role, display_name: names[role], department: info.department, organization: info.organization,
               info_hash: createHash("sha256").update(JSON.stringify(info)).digest("hex") };
    }),
    patients: [true, false].map((emergency_access) => {
      // the id patient-consent derives from the patient's principal and their salt
      const id = identity();
      const salt = randomBytes(32).toString("hex");
      return { ...id, salt, patient_id: patientIdOf(id.principal, salt), emergency_access };
    }),
    responder: identity(),
    authority: identity(),
  };
  const everyone = [...demo.providers, ...demo.patients, demo.responder, demo.authority];
  for (const who of everyone) chain.mint(who.principal, STARTING_BALANCE);

  const nonces = new Map<string, bigint>();
  const send = async (key: string, contract: string, fn: string, args: ClarityValue[]) => {
    const sender = privateKeyToAddress(key, "testnet");
    const nonce = nonces.get(sender) ?? chain.account(sender).nonce;
    nonces.set(sender, nonce + 1n);
    const tx = await makeContractCall({
      contractAddress: deployer, contractName: contract, functionName: fn, functionArgs: args,
      senderKey: key, network: "testnet", nonce, fee: FEE, postConditionMode: PostConditionMode.Deny,
    });
    return chain.submit(tx.serializeBytes());
  };
  const txids: string[] = [];
  const reviewer = demo.providers.find((p) => p.role === "reviewer")!;
  txids.push(await send(DEVNET_DEPLOYER_KEY, "access-control", "add-authority", [Cl.principal(demo.authority.principal)]));
  txids.push(await send(DEVNET_DEPLOYER_KEY, "access-control", "add-responder", [Cl.principal(demo.responder.principal)]));
  txids.push(await send(DEVNET_DEPLOYER_KEY, "access-control", "add-custodian", [Cl.principal(demo.responder.principal)]));
  txids.push(await send(DEVNET_DEPLOYER_KEY, "access-control", "add-reviewer", [Cl.principal(reviewer.principal)]));
  for (const p of demo.providers) {
    txids.push(await send(p.private_key, "access-control", "register-provider",
      [Cl.bufferFromHex(p.info_hash), Cl.stringAscii(p.role), Cl.bufferFromHex(createHash("sha256").update(`credentials:${p.principal}`).digest("hex"))]));
    txids.push(await send(demo.authority.private_key, "access-control", "verify-provider", [Cl.principal(p.principal)]));
  }
  for (const patient of demo.patients) {
    txids.push(await send(patient.private_key, "patient-consent", "register-patient", [Cl.bufferFromHex(patient.salt)]));
    txids.push(await send(patient.private_key, "patient-consent", "set-emergency-preferences", [
      Cl.bool(patient.emergency_access),
      Cl.list(["allergies", "medications", "problems", "blood-type", "advance-directives", "immunizations"].map((d) => Cl.stringAscii(d))),
      Cl.uint(120),
    ]));
  }
  // registrations must land before the verifications that follow them in each sender's queue
  for (let i = 0; i < 4 && chain.pending().length > 0; i++) chain.mine();
  const failed = txids.map((t) => chain.receipts.get(t)!).filter((r) => r.status !== "success");
  if (failed.length > 0) {
    throw new Error(`demo seeding failed: ${failed.map((r) => `${r.function_name} ${r.status} ${r.raw_result ?? ""}`).join("; ")}`);
  }
  writeFileSync(file, JSON.stringify(demo, null, 2) + "\n", { mode: 0o600 });
  log(`seeded ${demo.providers.length} verified providers, ${demo.patients.length} patients and a responder (also a custodian) in ${txids.length} transactions`);
  return demo;
}

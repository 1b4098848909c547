// The devnet as a process: interval mining, observer retries, restart with its block log,
// demo seeding, and the deployment plans applied over RPC by the deploy script.
import { afterEach, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Cl, cvToHex, privateKeyToAddress, randomPrivateKey } from "@stacks/transactions";
import { CONTRACTS_DIR, DEPLOYER, Devnet, client, startDevnet, startObserver, waitFor } from "./harness";

const AC = `${DEPLOYER}.access-control`;
const PC = `${DEPLOYER}.patient-consent`;
const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
async function devnet(args: string[]): Promise<Devnet> {
  const d = await startDevnet(args);
  cleanups.push(() => d.stop());
  return d;
}
function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), "devnet-test-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe("mining", () => {
  it("mines a block every --block-time seconds and announces each to observers", async () => {
    const observer = await startObserver();
    cleanups.push(() => observer.close());
    const d = await devnet(["--ephemeral", "--block-time", "0.2", "--observer", observer.url]);
    const start = (await client(d.rpc).get("/v2/info")).body.stacks_tip_height;
    await waitFor("three interval blocks", async () => (await client(d.rpc).get("/v2/info")).body.stacks_tip_height >= start + 3);
    const heights = await waitFor("three /new_block POSTs", () => {
      const h = observer.received.filter((r) => r.path === "/new_block").map((r) => r.body.block_height);
      return h.length >= 3 ? h : undefined;
    });
    expect(heights.slice(0, 3)).toEqual([start + 1, start + 2, start + 3]);
  });

  it("retries an observer that fails until it answers 200, keeping block order", async () => {
    const observer = await startObserver(3);
    cleanups.push(() => observer.close());
    const d = await devnet(["--ephemeral", "--observer", observer.url]);
    const c = client(d.rpc);
    await c.mine();
    await c.mine();
    const got = await waitFor("both blocks after the failures", () => {
      const blocks = observer.received.filter((r) => r.path === "/new_block");
      return blocks.length >= 2 ? blocks : undefined;
    });
    expect(observer.failures()).toBe(3);
    expect(got[1].body.block_height).toBe(got[0].body.block_height + 1);
    expect(got[1].body.parent_index_block_hash).toBe(got[0].body.index_block_hash);
  });

  it("mines empty blocks on demand to let time pass", async () => {
    const d = await devnet(["--ephemeral"]);
    const c = client(d.rpc);
    const before = (await c.get("/v2/info")).body.stacks_tip_height;
    const res = await c.post("/devnet/mine?empty=25");
    expect(res.body.blocks).toHaveLength(25);
    expect((await c.get("/v2/info")).body.stacks_tip_height).toBe(before + 25);
    expect((await c.post("/devnet/mine?empty=0")).status).toBe(400);
  });
});

describe("--exit-with-stdin", () => {
  it("stops when its parent's end of stdin closes", async () => {
    const d = await startDevnet(["--ephemeral", "--exit-with-stdin"]);
    const exited = new Promise<number | null>((ok) => d.proc.once("exit", (code) => ok(code)));
    expect((await client(d.rpc).get("/v2/info")).status).toBe(200);
    d.proc.stdin!.end();
    expect(await exited).toBe(0);
  });
});

describe("restart", () => {
  it("replays its block log: same tip, same state, same nonces, after SIGTERM or SIGKILL", async () => {
    const dir = tempDir();
    const first = await startDevnet(["--data-dir", dir]);
    const c1 = client(first.rpc);
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c1.fund(me);
    await c1.broadcast(await c1.signCall(key, AC, "register-provider",
      [Cl.bufferFromHex("11".repeat(32)), Cl.stringAscii("paramedic"), Cl.bufferFromHex("22".repeat(32))]));
    await c1.mine();
    const info1 = (await c1.get("/v2/info")).body;
    const provider1 = cvToHex(await c1.callRead(AC, "get-provider", [Cl.principal(me)]));
    expect(await first.stop("SIGKILL")).toBe(null);

    const second = await devnet(["--data-dir", dir]);
    const c2 = client(second.rpc);
    const info2 = (await c2.get("/v2/info")).body;
    expect(info2.stacks_tip_height).toBe(info1.stacks_tip_height);
    expect(info2.stacks_tip).toBe(info1.stacks_tip);
    expect(cvToHex(await c2.callRead(AC, "get-provider", [Cl.principal(me)]))).toBe(provider1);
    expect(await c2.nonce(me)).toBe(1n);
    // and it goes on from there
    const again = await c2.broadcast(await c2.signCall(key, AC, "update-provider-credentials",
      [Cl.bufferFromHex("33".repeat(32)), Cl.bufferFromHex("44".repeat(32))]));
    expect(again.status).toBe(200);
    await c2.mine();
    expect((await c2.get(`/devnet/tx/${again.body}`)).body.status).toBe("success");
    expect(await second.stop("SIGTERM")).toBe(0);

    const fresh = await devnet(["--data-dir", dir, "--reset"]);
    expect((await client(fresh.rpc).get(`/v2/accounts/${me}?proof=0`)).body.nonce).toBe(0);
  });

  it("replays a block log only against the contracts it was made with", async () => {
    const dir = tempDir();
    const first = await devnet(["--data-dir", dir]);
    await client(first.rpc).mine();
    expect(await first.stop("SIGTERM")).toBe(0);
    // as if the contracts had changed since (a pulled commit)
    writeFileSync(join(dir, "contracts.sha256"), "00".repeat(32) + "\n");
    await expect(startDevnet(["--data-dir", dir])).rejects.toThrow(/contracts changed .* --reset/);
    // a new chain starts, and is then replayed as usual
    const fresh = await devnet(["--data-dir", dir, "--reset"]);
    await client(fresh.rpc).mine();
    const tip = (await client(fresh.rpc).get("/v2/info")).body.stacks_tip_height;
    expect(await fresh.stop("SIGTERM")).toBe(0);
    const again = await devnet(["--data-dir", dir]);
    expect((await client(again.rpc).get("/v2/info")).body.stacks_tip_height).toBe(tip);
  });
});

describe("--seed-demo", () => {
  it("registers and verifies one clinician per role, two patients and a responder (also a custodian), and keeps them across restarts", async () => {
    const dir = tempDir();
    const d = await startDevnet(["--data-dir", dir, "--seed-demo"]);
    const file = d.ready.demo_file as string;
    expect(file).toBe(join(dir, "demo-identities.json"));
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const demo = JSON.parse(readFileSync(file, "utf8"));
    const c = client(d.rpc);
    expect(demo.providers.map((p: any) => p.role)).toEqual(["physician", "nurse", "paramedic", "pharmacist", "reviewer", "admin"]);
    for (const p of demo.providers) {
      expect(privateKeyToAddress(p.private_key, "testnet")).toBe(p.principal);
      expect(await c.callRead(AC, "is-verified-provider", [Cl.principal(p.principal)])).toEqual(Cl.bool(true));
      expect(Cl.prettyPrint(await c.callRead(AC, "get-provider", [Cl.principal(p.principal)]))).toContain(`role: "${p.role}"`);
    }
    expect(await c.callRead(AC, "is-responder", [Cl.principal(demo.responder.principal)])).toEqual(Cl.bool(true));
    // the service signs with the responder's key in dev, and records summary hashes as a custodian
    expect(await c.callRead(AC, "is-custodian", [Cl.principal(demo.responder.principal)])).toEqual(Cl.bool(true));
    const reviewer = demo.providers.find((p: any) => p.role === "reviewer");
    expect(await c.callRead(AC, "is-reviewer", [Cl.principal(reviewer.principal)])).toEqual(Cl.bool(true));
    const [allows, optedOut] = demo.patients;
    expect(allows.patient_id).toMatch(/^[0-9a-f]{64}$/);
    expect(await c.callRead(PC, "get-patient-id", [Cl.principal(allows.principal)])).toEqual(Cl.some(Cl.bufferFromHex(allows.patient_id)));
    const dts = Cl.list([Cl.stringAscii("allergies")]);
    expect(await c.callRead(PC, "is-emergency-access-allowed", [Cl.bufferFromHex(allows.patient_id), dts, Cl.uint(60)])).toEqual(Cl.bool(true));
    expect(await c.callRead(PC, "is-emergency-access-allowed", [Cl.bufferFromHex(optedOut.patient_id), dts, Cl.uint(60)])).toEqual(Cl.bool(false));
    // the demo keys are generated per devnet, never fixed
    expect(new Set(demo.providers.map((p: any) => p.private_key)).size).toBe(6);
    await d.stop();

    const again = await devnet(["--data-dir", dir, "--seed-demo"]);
    expect(JSON.parse(readFileSync(again.ready.demo_file, "utf8"))).toEqual(demo);
    expect(await client(again.rpc).callRead(AC, "is-verified-provider", [Cl.principal(demo.providers[0].principal)])).toEqual(Cl.bool(true));
    expect(await client(again.rpc).callRead(AC, "is-custodian", [Cl.principal(demo.responder.principal)])).toEqual(Cl.bool(true));
  });
});

describe("deploy script", () => {
  it("applies a deployment plan over RPC, then finds it already applied", async () => {
    const d = await devnet(["--ephemeral"]);
    const c = client(d.rpc);
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me, 10_000_000n);
    const plan = readFileSync(join(CONTRACTS_DIR, "deployments/default.testnet-plan.yaml"), "utf8")
      .replaceAll("ST000000000000000000002AMW42H", me);
    const planPath = join(CONTRACTS_DIR, "deployments", `test-${process.pid}.yaml`);
    writeFileSync(planPath, plan);
    cleanups.push(() => rmSync(planPath, { force: true }));
    const run = (extra: Record<string, string> = {}) => promisify(execFile)(process.execPath,
      ["--import", "tsx", "scripts/deploy.ts", "--plan", planPath, "--node", d.rpc, "--mine", "--timeout", "30"],
      { cwd: CONTRACTS_DIR, env: { ...process.env, BREAKGLASS_DEPLOYER_KEY: key, ...extra } });

    const out = (await run()).stdout;
    expect(out).toContain(`access-control: deployed as ${me}.access-control`);
    const roles = await c.callRead(`${me}.access-control`, "get-roles", []);
    expect(Cl.prettyPrint(roles)).toContain('"physician"');
    // the new access-control talks to its own patient-consent
    expect(await c.callRead(`${me}.patient-consent`, "is-valid-data-type", [Cl.stringAscii("allergies")])).toEqual(Cl.bool(true));
    expect(await c.nonce(me)).toBe(2n);

    const second = (await run()).stdout;
    expect(second).toContain("patient-consent: already deployed, same source");
    expect(await c.nonce(me)).toBe(2n);

    const wrongKey = run({ BREAKGLASS_DEPLOYER_KEY: randomPrivateKey() });
    await expect(wrongKey).rejects.toThrow(/the plan expects sender/);
  });

  it("refuses a plan for another network", async () => {
    const d = await devnet(["--ephemeral"]);
    const result = promisify(execFile)(process.execPath,
      ["--import", "tsx", "scripts/deploy.ts", "--plan", "deployments/default.mainnet-plan.yaml", "--node", d.rpc],
      { cwd: CONTRACTS_DIR, env: { ...process.env, BREAKGLASS_DEPLOYER_KEY: randomPrivateKey() } });
    await expect(result).rejects.toThrow(/network id 2147483648, the mainnet plan needs 1/);
  });
});

/** The index block hash of a block as `/v3/blocks/height/{h}` serves it, computed the way
 * stacks-core does from the Nakamoto header (version 0), independently of the devnet's code. */
async function blockIdAt(rpc: string, height: number): Promise<string | null> {
  const res = await fetch(`${rpc}/v3/blocks/height/${height}`);
  if (res.status === 404) return null;
  expect(res.headers.get("content-type")).toBe("application/octet-stream");
  const b = Buffer.from(await res.arrayBuffer());
  const fixed = 1 + 8 + 8 + 20 + 32 + 32 + 32 + 8 + 65;
  const signers = b.readUInt32BE(fixed);
  const pox = fixed + 4 + 65 * signers;
  const poxEnd = pox + 2 + 4 + b.readUInt32BE(pox + 2);
  const sha = (...p: Buffer[]) => { const h = createHash("sha512-256"); p.forEach((x) => h.update(x)); return h.digest(); };
  const blockHash = sha(b.subarray(0, fixed), b.subarray(pox, poxEnd));
  return sha(blockHash, b.subarray(17, 37)).toString("hex");
}

describe("block ids and forks", () => {
  it("serves each block's header by height with the ids it announced, and forks on demand", async () => {
    const observer = await startObserver();
    cleanups.push(() => observer.close());
    const dir = tempDir();
    const d = await devnet(["--data-dir", dir, "--observer", observer.url]);
    const c = client(d.rpc);
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me);
    const raw = await c.signCall(key, AC, "register-provider",
      [Cl.bufferFromHex("11".repeat(32)), Cl.stringAscii("nurse"), Cl.bufferFromHex("22".repeat(32))]);
    const txid = (await c.broadcast(raw)).body;
    await c.mine();
    await c.post("/devnet/mine?empty=2");
    const info = (await c.get("/v2/info")).body;
    const blocks = await waitFor("blocks observed", () => {
      const b = observer.received.filter((r) => r.path === "/new_block").map((r) => r.body);
      return b.length >= 4 ? b : undefined;
    });
    for (const b of blocks) {
      expect(await blockIdAt(d.rpc, b.block_height)).toBe(b.index_block_hash.slice(2));
    }
    const tenure = (await c.get("/v3/tenures/info")).body;
    expect(tenure.tip_height).toBe(info.stacks_tip_height);
    expect(tenure.tip_block_id).toBe(await blockIdAt(d.rpc, info.stacks_tip_height));
    expect(await blockIdAt(d.rpc, info.stacks_tip_height + 1)).toBe(null);

    // abandon the last three blocks (the registration among them): a longer branch replaces them
    const registeredAt = blocks.find((b) => b.transactions.some((t: any) => t.txid === `0x${txid}`)).block_height;
    const depth = info.stacks_tip_height - registeredAt + 1;
    const before = await blockIdAt(d.rpc, registeredAt);
    const fork = await c.post(`/devnet/fork?depth=${depth}`);
    expect(fork.status).toBe(200);
    expect(fork.body.dropped).toEqual([txid]);
    expect(fork.body.tip).toBe(info.stacks_tip_height + 1);
    expect(await blockIdAt(d.rpc, registeredAt)).not.toBe(before);
    expect(await blockIdAt(d.rpc, registeredAt - 1)).toBe(blocks.find((b) => b.block_height === registeredAt - 1)?.index_block_hash.slice(2));
    expect(cvToHex(await c.callRead(AC, "get-provider", [Cl.principal(me)]))).toBe(cvToHex(Cl.none()));
    expect(await c.nonce(me)).toBe(0n);
    expect((await c.get(`/devnet/tx/${txid}`)).body.status).toBe("dropped");
    // observers get the new branch, linked to the block before the fork
    const branch = await waitFor("the new branch observed", () => {
      const b = observer.received.filter((r) => r.path === "/new_block").map((r) => r.body).slice(blocks.length);
      return b.length === depth + 1 ? b : undefined;
    });
    expect(branch[0].block_height).toBe(registeredAt);
    expect(branch[0].parent_index_block_hash).toBe(blocks.find((b) => b.block_height === registeredAt - 1).index_block_hash);
    // the same signed transaction can be mined again on the new branch
    expect((await c.broadcast(raw)).status).toBe(200);
    await c.mine();
    expect((await c.get(`/devnet/tx/${txid}`)).body.status).toBe("success");
    const tip = (await c.get("/v2/info")).body;
    await d.stop("SIGKILL");

    // the rewritten log replays to the new branch
    const again = await devnet(["--data-dir", dir]);
    const c2 = client(again.rpc);
    expect((await c2.get("/v2/info")).body.stacks_tip).toBe(tip.stacks_tip);
    expect(await c2.nonce(me)).toBe(1n);
  });
});

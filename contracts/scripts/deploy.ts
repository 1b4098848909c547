// Applies a Clarinet deployment plan (deployments/*.yaml) to any stacks-node over its RPC:
// the devnet, a testnet or a mainnet node. The Clarinet CLI is not needed.
//
//   npm run deploy -- --plan deployments/default.testnet-plan.yaml [--node URL] [--mine] [--timeout S]
//
// The deployer key comes from BREAKGLASS_DEPLOYER_KEY (hex); only a devnet plan falls back to
// the public devnet deployer key. Batches are applied in order, each waiting until its
// contracts are visible on the node. A contract already deployed with the same source is
// skipped, so the script can be run again after a failure; a different source is an error.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { parse } from "yaml";
import { ClarityVersion, PostConditionMode, makeContractDeploy, privateKeyToAddress } from "@stacks/transactions";
import { DEVNET_DEPLOYER_KEY } from "../devnet/demo.js";

type Publish = { "contract-name": string; "expected-sender": string; cost: number; path: string; "clarity-version"?: number };
type Plan = { network: string; "stacks-node"?: string; plan: { batches: { id: number; transactions: { "contract-publish"?: Publish }[] }[] } };

const CHAIN_IDS: Record<string, number> = { devnet: 0x80000000, testnet: 0x80000000, mainnet: 0x00000001 };

const { values: opt } = parseArgs({
  options: {
    plan: { type: "string" },
    node: { type: "string" },
    mine: { type: "boolean", default: false },
    timeout: { type: "string", default: "600" },
  },
});

const fail = (msg: string): never => {
  process.stderr.write(`deploy: ${msg}\n`);
  process.exit(1);
};

async function rpc(node: string, path: string, init?: RequestInit): Promise<Response> {
  try {
    return await fetch(node + path, { ...init, signal: AbortSignal.timeout(15_000) });
  } catch (e) {
    return fail(`${path} on ${node} failed: ${(e as Error).message}`);
  }
}

async function main() {
  if (!opt.plan) fail("usage: deploy --plan <deployments/*.yaml> [--node URL] [--mine] [--timeout seconds]");
  const planPath = resolve(opt.plan!);
  const plan = parse(readFileSync(planPath, "utf8")) as Plan;
  const projectDir = resolve(dirname(planPath), "..");
  const chainId = CHAIN_IDS[plan.network] ?? fail(`unknown network ${plan.network}`);
  const network = plan.network === "mainnet" ? "mainnet" : "testnet";
  const node = (opt.node ?? plan["stacks-node"] ?? fail("no node: pass --node or set stacks-node in the plan")).replace(/\/+$/, "");
  const key = process.env.BREAKGLASS_DEPLOYER_KEY ?? (plan.network === "devnet" ? DEVNET_DEPLOYER_KEY : undefined)
    ?? fail(`set BREAKGLASS_DEPLOYER_KEY to the ${plan.network} deployer's private key (hex)`);
  const sender = privateKeyToAddress(key, network);

  const info = await (await rpc(node, "/v2/info")).json() as { network_id: number; stacks_tip_height: number };
  if (info.network_id !== chainId) fail(`${node} serves network id ${info.network_id}, the ${plan.network} plan needs ${chainId}`);
  const account = await (await rpc(node, `/v2/accounts/${sender}?proof=0`)).json() as { nonce: number };
  let nonce = BigInt(account.nonce);
  console.log(`deploying to ${node} (tip ${info.stacks_tip_height}) as ${sender}, nonce ${nonce}`);

  for (const batch of plan.plan.batches) {
    const waiting: string[] = [];
    for (const entry of batch.transactions) {
      const c = entry["contract-publish"];
      if (!c) fail(`batch ${batch.id}: only contract-publish transactions are supported`);
      const p = c!;
      if (p["expected-sender"] !== sender) {
        fail(`${p["contract-name"]}: the plan expects sender ${p["expected-sender"]}, the key is ${sender}; edit the plan`);
      }
      const source = readFileSync(resolve(projectDir, p.path), "utf8");
      const existing = await rpc(node, `/v2/contracts/source/${sender}/${p["contract-name"]}`);
      if (existing.status === 200) {
        const { source: deployed } = await existing.json() as { source: string };
        if (deployed.trim() !== source.trim()) fail(`${sender}.${p["contract-name"]} is deployed with a different source`);
        console.log(`${p["contract-name"]}: already deployed, same source`);
        continue;
      }
      const tx = await makeContractDeploy({
        contractName: p["contract-name"], codeBody: source, senderKey: key, network, nonce, fee: BigInt(p.cost),
        clarityVersion: (p["clarity-version"] ?? 3) as ClarityVersion, postConditionMode: PostConditionMode.Deny,
      });
      const res = await rpc(node, "/v2/transactions", {
        method: "POST", headers: { "content-type": "application/octet-stream" }, body: Buffer.from(tx.serializeBytes()),
      });
      const body = await res.text();
      if (res.status !== 200) fail(`${p["contract-name"]}: the node rejected the deploy: ${body}`);
      console.log(`${p["contract-name"]}: sent ${JSON.parse(body)} (nonce ${nonce})`);
      nonce++;
      waiting.push(p["contract-name"]);
    }
    const deadline = Date.now() + Number(opt.timeout) * 1000;
    for (const name of waiting) {
      for (;;) {
        if (opt.mine) await rpc(node, "/devnet/mine", { method: "POST" });
        if ((await rpc(node, `/v2/contracts/interface/${sender}/${name}`)).status === 200) break;
        if (Date.now() > deadline) fail(`${name}: not on chain after ${opt.timeout} s`);
        await new Promise((r) => setTimeout(r, opt.mine ? 200 : 2000));
      }
      console.log(`${name}: deployed as ${sender}.${name}`);
    }
  }
}

main().catch((e) => fail((e as Error).stack ?? String(e)));

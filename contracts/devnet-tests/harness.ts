// Test harness: starts the real devnet process, a test event observer, and a small client
// built only on @stacks/transactions and fetch (what any stacks-node client would use).
import { ChildProcess, spawn } from "node:child_process";
import { createServer, Server } from "node:http";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ClarityValue, PostConditionMode, cvToHex, hexToCV, makeContractCall, makeSTXTokenTransfer, privateKeyToAddress,
} from "@stacks/transactions";

export const CONTRACTS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** Clarinet's public devnet deployer key (settings/Devnet.toml). */
export const DEPLOYER_KEY = "753b7cc01a1a2e86221266a154af739463fce51219d97e4f856cd7200c3bd2a601";
export const DEPLOYER = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";

export type Devnet = {
  rpc: string;
  ready: Record<string, any>;
  proc: ChildProcess;
  stderr: () => string;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
};

export async function startDevnet(args: string[] = []): Promise<Devnet> {
  const proc = spawn(process.execPath, ["--import", "tsx", "devnet/main.ts", "--port", "0", "--block-time", "0", ...args],
    { cwd: CONTRACTS_DIR, stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  proc.stderr!.on("data", (d) => (err += d));
  const ready = await new Promise<Record<string, any>>((ok, fail) => {
    let out = "";
    proc.stdout!.on("data", (d) => {
      out += d;
      for (const line of out.split("\n")) {
        if (line.startsWith("{") && line.includes('"ready"')) return ok(JSON.parse(line));
      }
    });
    proc.once("exit", (code) => fail(new Error(`devnet exited (${code}) before ready:\n${err}`)));
  });
  const exited = new Promise<number | null>((ok) => proc.once("exit", (code) => ok(code)));
  return {
    rpc: ready.rpc, ready, proc, stderr: () => err,
    stop: async (signal = "SIGTERM") => {
      if (proc.exitCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** An event observer that records every POST; it can be told to fail the first N. */
export async function startObserver(failFirst = 0) {
  const received: { path: string; body: any }[] = [];
  let failures = 0;
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      if (failures < failFirst) {
        failures++;
        res.writeHead(500).end("not yet");
        return;
      }
      received.push({ path: req.url!, body: JSON.parse(body) });
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`, received, failures: () => failures,
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  };
}

export async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function client(rpc: string) {
  const self = {
    async get(path: string) {
      const res = await fetch(rpc + path);
      return { status: res.status, body: await parse(res) };
    },
    async post(path: string, body?: unknown, type = "application/json") {
      const res = await fetch(rpc + path, {
        method: "POST", headers: { "content-type": type },
        body: body === undefined ? undefined : type === "application/json" ? JSON.stringify(body) : (body as any),
      });
      return { status: res.status, body: await parse(res) };
    },
    broadcast(raw: Uint8Array) {
      return self.post("/v2/transactions", Buffer.from(raw), "application/octet-stream");
    },
    mine: () => self.post("/devnet/mine"),
    async nonce(principal: string): Promise<bigint> {
      return BigInt((await self.get(`/v2/accounts/${principal}?proof=0`)).body.nonce);
    },
    async callRead(contract: string, fn: string, args: ClarityValue[], sender = DEPLOYER): Promise<ClarityValue> {
      const [address, name] = contract.split(".");
      const r = await self.post(`/v2/contracts/call-read/${address}/${name}/${fn}`, { sender, arguments: args.map(cvToHex) });
      if (r.status !== 200 || !r.body.okay) throw new Error(`call-read ${fn}: ${JSON.stringify(r.body)}`);
      return hexToCV(r.body.result);
    },
    async signCall(key: string, contract: string, fn: string, args: ClarityValue[], opts: { nonce?: bigint; fee?: bigint; network?: any } = {}) {
      const [contractAddress, contractName] = contract.split(".");
      const nonce = opts.nonce ?? (await self.nonce(privateKeyToAddress(key, "testnet")));
      const tx = await makeContractCall({
        contractAddress, contractName, functionName: fn, functionArgs: args, senderKey: key,
        network: opts.network ?? "testnet", nonce, fee: opts.fee ?? 5_000n, postConditionMode: PostConditionMode.Deny,
      });
      return tx.serializeBytes();
    },
    /** Sends STX from the devnet deployer to `principal` with a signed token transfer, and mines it. */
    async fund(principal: string, amount = 100_000_000n) {
      const tx = await makeSTXTokenTransfer({
        recipient: principal, amount, senderKey: DEPLOYER_KEY, network: "testnet",
        nonce: await self.nonce(DEPLOYER), fee: 1_000n,
      });
      const r = await self.broadcast(tx.serializeBytes());
      if (r.status !== 200) throw new Error(`fund: ${JSON.stringify(r.body)}`);
      await self.mine();
      return r.body as string;
    },
  };
  return self;
}

async function parse(res: Response): Promise<any> {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

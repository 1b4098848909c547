// breakglass devnet: the project's contracts on the clarinet-sdk simnet behind the stacks-node
// RPC and event-observer protocol. See `--help`.
import { existsSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Chain } from "./chain.js";
import { Observers } from "./observers.js";
import { createRpcServer } from "./rpc.js";
import { seedDemo } from "./demo.js";

const CONTRACTS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const HELP = `breakglass devnet: a local stacks-node stand-in running the real contracts

Usage: npm run devnet -- [options]      (from contracts/)

  --host <addr>          RPC listen address (default 127.0.0.1)
  --port <n>             RPC port, 0 for any free port (default 20443)
  --block-time <s>       mine a block every <s> seconds; 0 mines only on POST /devnet/mine (default 5)
  --observer <url>       POST event-observer payloads (/new_block, /new_burn_block) here; repeatable
  --data-dir <dir>       block log and demo identities (default <repo>/.data/devnet)
  --ephemeral            keep nothing on disk
  --reset                delete the data directory's chain first
  --seed-demo            create demo clinicians, patients and a responder (kept across restarts)
  --manifest <path>      Clarinet.toml (default contracts/Clarinet.toml)
  --verbose              also log the VM's output (contract prints) to stderr
  --exit-with-stdin      stop when standard input closes (when started by a parent process
                         that may die without stopping it)

Prints one JSON line {"event":"ready",...} on stdout when it serves; logs go to stderr.`;

const { values: opt } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "20443" },
    "block-time": { type: "string", default: "5" },
    observer: { type: "string", multiple: true, default: [] },
    "data-dir": { type: "string", default: join(CONTRACTS_DIR, "..", ".data", "devnet") },
    ephemeral: { type: "boolean", default: false },
    reset: { type: "boolean", default: false },
    "seed-demo": { type: "boolean", default: false },
    manifest: { type: "string", default: join(CONTRACTS_DIR, "Clarinet.toml") },
    verbose: { type: "boolean", default: false },
    "exit-with-stdin": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

const log = (m: string) => process.stderr.write(`devnet: ${m}\n`);
// The simnet writes contract prints and SDK notices with console.log; stdout carries only the
// ready line, so that output goes to stderr, and only when asked for.
console.log = (...args: unknown[]) => {
  if (opt.verbose) process.stderr.write(args.map(String).join(" ") + "\n");
};

async function main() {
  if (opt.help) {
    process.stdout.write(HELP + "\n");
    return;
  }
  const blockTime = Number(opt["block-time"]);
  const port = Number(opt.port);
  if (!Number.isFinite(blockTime) || blockTime < 0) throw new Error("--block-time must be a number of seconds >= 0");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error("--port must be 0..65535");
  const dataDir = opt.ephemeral ? null : resolve(opt["data-dir"]!);
  const manifest = resolve(opt.manifest!);
  if (dataDir && opt.reset) rmSync(join(dataDir, "chain.jsonl"), { force: true });

  // the SDK resolves contract paths and writes its simnet plan relative to the working directory
  process.chdir(dirname(manifest));
  const chain = await Chain.open(manifest, dataDir);
  log(`${chain.replayed ? "replayed" : "started"} chain at height ${chain.tipHeight}`);

  let demoFile: string | null = null;
  if (opt["seed-demo"]) {
    demoFile = join(dataDir ?? join(CONTRACTS_DIR, "..", ".data", "devnet-ephemeral"), "demo-identities.json");
    if (chain.replayed && existsSync(demoFile)) {
      log(`demo identities kept from the previous run: ${demoFile}`);
    } else {
      const { mkdirSync } = await import("node:fs");
      mkdirSync(dirname(demoFile), { recursive: true });
      await seedDemo(chain, demoFile, log);
      log(`demo identities written to ${demoFile}`);
    }
  }

  const observers = new Observers(opt.observer as string[], log);
  let lastBurn = chain.tip.burnHeight;
  chain.onBlock((block) => {
    observers.announce(block, block.burn_block_height !== lastBurn);
    lastBurn = block.burn_block_height;
  });

  const server = createRpcServer(chain, observers, log);
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(port, opt.host, ok);
  });
  const address = server.address() as { port: number };
  const rpc = `http://${opt.host}:${address.port}`;

  const timer = blockTime > 0 ? setInterval(() => {
    try {
      chain.mine();
    } catch (e) {
      log(`mining failed: ${(e as Error).stack}`);
    }
  }, blockTime * 1000) : null;

  const stop = (signal: string) => {
    log(`${signal}: stopping`);
    if (timer) clearInterval(timer);
    observers.stop();
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  if (opt["exit-with-stdin"]) {
    process.stdin.on("end", () => stop("stdin closed"));
    process.stdin.on("error", () => stop("stdin closed"));
    process.stdin.resume();
  }

  process.stdout.write(JSON.stringify({
    event: "ready", rpc, tip: chain.tipHeight, block_time: blockTime, data_dir: dataDir,
    demo_file: demoFile, observers: opt.observer,
  }) + "\n");
  log(`stacks-node RPC on ${rpc}${timer ? `, a block every ${blockTime} s` : ", mining on POST /devnet/mine"}`);
  if (demoFile) log(`demo clinicians, patients and responder (with their keys): ${demoFile}`);
}

main().catch((e) => {
  log(`fatal: ${(e as Error).message}`);
  process.exit(1);
});

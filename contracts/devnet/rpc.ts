// The stacks-node RPC subset the service uses (see shared/stacks-reference.md), with the node's
// JSON and error shapes, plus a few /devnet/ endpoints for tests and tools.
import { createServer, IncomingMessage, Server, ServerResponse } from "node:http";
import { ClarityValue, cvToHex, deserializeCV, validateStacksAddress } from "@stacks/transactions";
import { Chain } from "./chain.js";
import { RejectedError, TESTNET_CHAIN_ID } from "./admission.js";
import { Observers } from "./observers.js";

const MAX_TX_BYTES = 2 * 1024 * 1024;
const MAX_JSON_BYTES = 1024 * 1024;

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export function createRpcServer(chain: Chain, observers: Observers, log: (msg: string) => void): Server {
  return createServer(async (req, res) => {
    try {
      await route(chain, observers, req, res);
    } catch (e) {
      if (e instanceof HttpError) return text(res, e.status, e.message);
      log(`rpc ${req.method} ${req.url}: ${(e as Error).stack ?? e}`);
      text(res, 500, `internal error: ${(e as Error).message}`);
    }
  });
}

async function route(chain: Chain, observers: Observers, req: IncomingMessage, res: ServerResponse) {
  const url = new URL(req.url ?? "/", "http://devnet");
  const path = url.pathname;
  const m = (re: RegExp) => re.exec(path);
  let p: RegExpExecArray | null;

  if (req.method === "GET" && path === "/v2/info") return json(res, 200, info(chain));

  if (req.method === "GET" && (p = m(/^\/v2\/accounts\/([^/]+)$/))) {
    const principal = p[1];
    if (!isPrincipal(principal)) throw new HttpError(400, `Invalid principal: ${principal}`);
    const { balance, nonce } = chain.account(principal);
    const body: Record<string, unknown> = { balance: u128(balance), locked: u128(0n), unlock_height: 0, nonce: Number(nonce) };
    if (url.searchParams.get("proof") !== "0") Object.assign(body, { balance_proof: "", nonce_proof: "" });
    return json(res, 200, body);
  }

  if (req.method === "POST" && (p = m(/^\/v2\/contracts\/call-read\/([^/]+)\/([^/]+)\/([^/]+)$/))) {
    const [, address, name, fn] = p;
    const body = await readJson(req);
    const contract = `${address}.${name}`;
    if (typeof body?.sender !== "string" || !isPrincipal(body.sender) || !Array.isArray(body.arguments)) {
      throw new HttpError(400, "Failed to parse JSON body: expected {\"sender\": principal, \"arguments\": [hex]}");
    }
    let args: ClarityValue[];
    try {
      args = body.arguments.map((a: string) => deserializeCV(a.replace(/^0x/, "")));
    } catch {
      throw new HttpError(400, "Failed to deserialize Clarity value arguments");
    }
    // `?tip=<index block hash>`: as of that block, as a node reads it (64 hex digits; anything
    // else, as a node does, reads at the tip); a block it has not got is a 404 before anything
    const tip = url.searchParams.get("tip");
    const at = tip && /^[0-9a-f]{64}$/i.test(tip) ? `0x${tip.toLowerCase()}` : null;
    if (at !== null && chain.heightOf(at) === undefined) return text(res, 404, "Chain tip not found");
    const abi = chain.functionArgs(contract, fn);
    if (abi === "no-contract") return json(res, 200, { okay: false, cause: `Unchecked(NoSuchContract("${contract}"))` });
    if (abi === "no-function" || abi.access !== "read_only") {
      return json(res, 200, { okay: false, cause: `Unchecked(NoSuchPublicFunction("${contract}", "${fn}"))` });
    }
    if (abi.args.length !== args.length) {
      return json(res, 200, { okay: false, cause: `Unchecked(IncorrectArgumentCount(${abi.args.length}, ${args.length}))` });
    }
    try {
      const result = at === null ? chain.callRead(contract, fn, args, body.sender) : chain.callReadAt(contract, fn, args, body.sender, at);
      if (result === "no-such-tip") return text(res, 404, "Chain tip not found");
      return json(res, 200, { okay: true, result: cvToHex(result) });
    } catch (e) {
      return json(res, 200, { okay: false, cause: String((e as Error).message).split("\n")[0] });
    }
  }

  if (req.method === "GET" && (p = m(/^\/v2\/contracts\/interface\/([^/]+)\/([^/]+)$/))) {
    const iface = chain.interfaces().get(`${p[1]}.${p[2]}`);
    if (!iface) throw new HttpError(404, "No contract interface data found");
    return json(res, 200, iface);
  }

  if (req.method === "GET" && (p = m(/^\/v2\/contracts\/source\/([^/]+)\/([^/]+)$/))) {
    const source = chain.simnet.getContractSource(`${p[1]}.${p[2]}`);
    if (source === undefined) throw new HttpError(404, "No contract source data found");
    return json(res, 200, { source, publish_height: 0 });
  }

  if (req.method === "POST" && (p = m(/^\/v2\/map_entry\/([^/]+)\/([^/]+)\/([^/]+)$/))) {
    const key = await readJson(req);
    if (typeof key !== "string") throw new HttpError(400, "Expected a JSON string with the hex-encoded map key");
    let keyCv: ClarityValue;
    try {
      keyCv = deserializeCV(key.replace(/^0x/, ""));
    } catch {
      throw new HttpError(400, "Failed to deserialize the map key");
    }
    try {
      const v = chain.simnet.getMapEntry(`${p[1]}.${p[2]}`, p[3], keyCv);
      return json(res, 200, { data: cvToHex(v) });
    } catch {
      throw new HttpError(404, "No such map or contract");
    }
  }

  if (req.method === "GET" && (p = m(/^\/v2\/data_var\/([^/]+)\/([^/]+)\/([^/]+)$/))) {
    try {
      const v = chain.simnet.getDataVar(`${p[1]}.${p[2]}`, p[3]);
      return json(res, 200, { data: cvToHex(v) });
    } catch {
      throw new HttpError(404, "Data var not found");
    }
  }

  if (req.method === "GET" && path === "/v2/fees/transfer") return json(res, 200, 1);

  if (req.method === "GET" && (p = m(/^\/v3\/blocks\/height\/(\d+)$/))) {
    const height = Number(p[1]);
    if (!Number.isSafeInteger(height) || height > 4294967295) throw new HttpError(400, "Invalid block height");
    const raw = chain.blockBytes(height);
    if (!raw) throw new HttpError(404, `No block at height ${height}`);
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": raw.length });
    return res.end(raw);
  }

  if (req.method === "GET" && path === "/v3/tenures/info") {
    const tip = chain.tip;
    return json(res, 200, {
      consensus_hash: tip.consensusHash.slice(2), tip_block_id: tip.indexHash.slice(2), tip_height: tip.height,
      tenure_start_block_id: tip.indexHash.slice(2), parent_consensus_hash: tip.consensusHash.slice(2),
      parent_tenure_start_block_id: tip.indexHash.slice(2), reward_cycle: 0,
    });
  }

  if (req.method === "POST" && path === "/v2/transactions") {
    const type = (req.headers["content-type"] ?? "").split(";")[0].trim();
    let raw: Uint8Array;
    if (type === "application/octet-stream") {
      raw = await readBody(req, MAX_TX_BYTES);
    } else if (type === "application/json") {
      const body = await readJson(req);
      if (typeof body?.tx !== "string" || !/^(0x)?([0-9a-fA-F]{2})+$/.test(body.tx)) throw new HttpError(400, "Failed to parse tx");
      raw = Buffer.from(body.tx.replace(/^0x/, ""), "hex");
    } else {
      throw new HttpError(400, "Wrong Content-Type for transaction; expected application/json or application/octet-stream");
    }
    if (raw.length === 0) throw new HttpError(400, "Invalid Http request: expected non-zero-length body for PostTransaction");
    try {
      return json(res, 200, chain.submit(raw));
    } catch (e) {
      if (!(e instanceof RejectedError)) throw e;
      const r = e.rejection;
      if (r.text) return text(res, r.status, r.text);
      const body: Record<string, unknown> = { txid: e.txid, error: "transaction rejected", reason: r.reason };
      if (r.reason_data) body.reason_data = r.reason_data;
      return json(res, r.status, body);
    }
  }

  // ------------------------------------------------------------------ devnet-only endpoints

  if (req.method === "POST" && path === "/devnet/mine") {
    const empty = url.searchParams.get("empty");
    const blocks = empty !== null ? chain.mineEmpty(boundedInt(empty, 1, 10_000)) : chain.mine();
    return json(res, 200, { blocks: blocks.map((b) => ({ height: b.block_height, hash: b.block_hash,
      index_block_hash: b.index_block_hash, txids: b.transactions.map((t) => t.txid) })), tip: chain.tipHeight });
  }

  if (req.method === "POST" && path === "/devnet/fork") {
    const depth = boundedInt(url.searchParams.get("depth") ?? "1", 1, 10_000);
    if (depth > chain.blocks.length) throw new HttpError(400, `only ${chain.blocks.length} blocks were mined`);
    const { blocks, dropped } = await chain.fork(depth);
    return json(res, 200, { blocks: blocks.map((b) => ({ height: b.block_height, hash: b.block_hash,
      index_block_hash: b.index_block_hash })), dropped, tip: chain.tipHeight });
  }

  if (req.method === "GET" && (p = m(/^\/devnet\/tx\/(?:0x)?([0-9a-fA-F]{64})$/))) {
    const receipt = chain.receipts.get(p[1].toLowerCase());
    if (!receipt) throw new HttpError(404, "unknown transaction");
    return json(res, 200, receipt);
  }

  if (req.method === "GET" && (p = m(/^\/devnet\/blocks\/(\d+)$/))) {
    const block = chain.blocks.find((b) => b.block_height === Number(p![1]));
    if (!block) throw new HttpError(404, "no such block mined by this devnet");
    return json(res, 200, block);
  }

  if (req.method === "GET" && path === "/devnet/mempool") {
    return json(res, 200, chain.pending().map((a) => ({ txid: a.txid, origin: a.origin, nonce: Number(a.nonce) })));
  }

  if (req.method === "GET" && path === "/devnet/observers") return json(res, 200, observers.list());

  if (req.method === "POST" && path === "/devnet/observers") {
    const body = await readJson(req);
    if (typeof body?.url !== "string" || !/^https?:\/\//.test(body.url)) throw new HttpError(400, "expected {\"url\": \"http://host:port\"}");
    observers.add(body.url);
    return json(res, 200, observers.list());
  }

  if (req.method === "POST" && path === "/devnet/faucet") {
    const body = await readJson(req);
    if (typeof body?.principal !== "string" || !isPrincipal(body.principal)) throw new HttpError(400, "expected {\"principal\", \"amount\"}");
    const amount = BigInt(boundedInt(String(body.amount ?? 100_000_000), 1, 1e15));
    chain.mint(body.principal, amount);
    return json(res, 200, { principal: body.principal, balance: chain.account(body.principal).balance.toString() });
  }

  throw new HttpError(404, `no route for ${req.method} ${path}`);
}

function info(chain: Chain) {
  const tip = chain.tip;
  return {
    peer_version: 4207599116,
    pox_consensus: tip.consensusHash.slice(2),
    burn_block_height: tip.burnHeight,
    stable_pox_consensus: tip.consensusHash.slice(2),
    stable_burn_block_height: tip.burnHeight,
    server_version: "breakglass-devnet (clarinet-sdk simnet)",
    network_id: TESTNET_CHAIN_ID,
    parent_network_id: 3669344250,
    stacks_tip_height: tip.height,
    stacks_tip: tip.hash.slice(2),
    stacks_tip_consensus_hash: tip.consensusHash.slice(2),
    genesis_chainstate_hash: "74237aa39aa50a83de11a4f53e9d3bb7d43461d1de9873f402e5453ae60bc59b",
    unanchored_tip: null,
    unanchored_seq: null,
    tenure_height: tip.burnHeight,
    exit_at_block_height: null,
    is_fully_synced: true,
    node_public_key: null,
    node_public_key_hash: null,
    stackerdbs: [],
  };
}

function isPrincipal(s: string): boolean {
  const [address, name, ...rest] = s.split(".");
  return rest.length === 0 && validateStacksAddress(address) && (name === undefined || /^[a-zA-Z]([a-zA-Z0-9]|[-_])*$/.test(name));
}

function u128(n: bigint): string {
  return "0x" + n.toString(16).padStart(32, "0");
}

function boundedInt(s: string, min: number, max: number): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min || n > max) throw new HttpError(400, `expected an integer from ${min} to ${max}`);
  return n;
}

async function readBody(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new HttpError(400, "Invalid Http request: body is too big");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function readJson(req: IncomingMessage): Promise<any> {
  const body = await readBody(req, MAX_JSON_BYTES);
  try {
    return JSON.parse(Buffer.from(body).toString("utf8"));
  } catch {
    throw new HttpError(400, "Failed to parse JSON body");
  }
}

function json(res: ServerResponse, status: number, body: unknown) {
  const s = JSON.stringify(body, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(s) });
  res.end(s);
}

function text(res: ServerResponse, status: number, body: string) {
  res.writeHead(status, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
  res.end(body);
}


// The devnet's chain: the clarinet-sdk simnet (the maintained Clarity VM) running the project's
// contracts, wrapped with what a stacks-node adds around it: a mempool with nonce and fee
// rules, blocks with hashes and receipts, accounts, and a durable block log so that a
// restarted devnet replays to the same state.
//
// Each mined block holds at most one transaction. The simnet aborts a whole block when one of
// its transactions hits a runtime error (and loses the other transactions' receipts), so one
// transaction per block keeps every receipt exact; Nakamoto chains mine blocks every few
// seconds, so callers see nothing unusual. Post-conditions are decoded but not enforced.
import { createHash } from "node:crypto";
import {
  appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { initSimnet, tx as simTx, type Simnet } from "@stacks/clarinet-sdk";
import { Cl, ClarityValue, cvToHex, hexToCV } from "@stacks/transactions";
import { Admitted, ChainView, RejectedError, admit } from "./admission.js";
import type { AbiType } from "./abi.js";

/** Fees are paid to this (burn) address: the devnet has no miner to pay. */
export const FEE_RECIPIENT = "ST000000000000000000002AMW42H";
/** stacks-core's limit on how far ahead of the account nonce a mempool transaction may be. */
export const MAX_CHAINING = 25n;

export type TxStatus = "pending" | "success" | "abort_by_response" | "dropped";

export type Receipt = {
  txid: string;
  status: TxStatus;
  origin: string;
  nonce: number;
  fee: number;
  kind: "call" | "deploy" | "transfer";
  contract_id?: string;
  function_name?: string;
  block_height?: number;
  block_hash?: string;
  raw_result?: string;
  vm_error?: string;
  events: ObserverEvent[];
  reason?: string;
};

export type ObserverEvent = { txid: string; event_index: number; committed: boolean; type: string; [k: string]: unknown };

export type Block = {
  block_height: number;
  block_hash: string;
  index_block_hash: string;
  parent_block_hash: string;
  parent_index_block_hash: string;
  consensus_hash: string;
  burn_block_height: number;
  burn_block_hash: string;
  burn_block_time: number;
  block_time: number;
  tenure_height: number;
  transactions: {
    txid: string; tx_index: number; status: TxStatus; raw_result: string; raw_tx: string;
    contract_abi: null; burnchain_op: null; vm_error: string | null;
    execution_cost: { read_count: number; read_length: number; runtime: number; write_count: number; write_length: number };
    microblock_sequence: null; microblock_hash: null; microblock_parent_hash: null;
  }[];
  events: ObserverEvent[];
};

// `salt` tells a block of a fork's new branch from the abandoned one at the same height
type LogEntry = { op: "mint"; principal: string; amount: string } | { op: "block"; time: number; tx: string | null; salt?: string };

const sha512_256 = (s: string | Uint8Array) => createHash("sha512-256").update(s).digest("hex");
const sha512_256b = (...parts: Uint8Array[]) => {
  const h = createHash("sha512-256");
  for (const p of parts) h.update(p);
  return h.digest();
};
const u64be = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
const u32be = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const bytes = (hex: string) => Buffer.from(hex.replace(/^0x/, ""), "hex");

/**
 * A Nakamoto block header (version 0) as stacks-core serializes it, and the two ids a
 * stacks-node derives from it: the block hash (sha512/256 of the header without the signer
 * signatures) and the index block hash (sha512/256 of the block hash then the consensus hash).
 * The devnet has no miner or signers: the miner signature is zeros and no signer signs.
 */
export function nakamotoHeader(h: { height: number; consensusHash: string; parentId: string; txRoot: string;
                                    stateRoot: string; time: number }) {
  const signed = Buffer.concat([
    Buffer.from([0]), u64be(h.height), u64be(0), bytes(h.consensusHash), bytes(h.parentId), bytes(h.txRoot),
    bytes(h.stateRoot), u64be(h.time), Buffer.alloc(65),
  ]);
  const signers = u32be(0);
  const poxTreatment = Buffer.concat([Buffer.from([0, 1]), u32be(1), Buffer.from([1])]); // BitVec: 1 bit, set
  const blockHash = sha512_256b(signed, poxTreatment);
  const indexHash = sha512_256b(blockHash, bytes(h.consensusHash));
  return { bytes: Buffer.concat([signed, signers, poxTreatment]), blockHash: hex0x(blockHash.toString("hex")),
           indexHash: hex0x(indexHash.toString("hex")) };
}
const hex0x = (s: string) => (s.startsWith("0x") ? s : `0x${s}`);

export class Chain implements ChainView {
  readonly blocks: Block[] = [];
  readonly receipts = new Map<string, Receipt>();
  /** Each mined block's header and raw transactions, as `/v3/blocks/height/{h}` serves them. */
  private raw = new Map<number, Buffer>();
  /** Every log entry of the chain as it stands (a fork rewrites the log from it). */
  private entries: LogEntry[] = [];
  private forks = 0;
  private mempool: Admitted[] = [];
  private nonces = new Map<string, bigint>();
  private listeners: ((block: Block) => void)[] = [];
  private logPath: string | null;
  private genesisHeight: number;

  private constructor(public simnet: Simnet, dataDir: string | null, private manifest: string) {
    this.logPath = dataDir ? join(dataDir, "chain.jsonl") : null;
    this.genesisHeight = simnet.blockHeight;
  }

  /**
   * Starts the simnet with the contracts of `manifest` deployed, replaying `dataDir`'s log if
   * any. A log is replayed only against the contracts it was made with (their fingerprint is
   * kept beside it): replayed against changed contracts, its transactions would build another
   * state than the one the service and the demo identities remember.
   */
  static async open(manifest: string, dataDir: string | null): Promise<Chain> {
    const simnet = await initSimnet(manifest, true);
    const chain = new Chain(simnet, dataDir, manifest);
    if (dataDir) {
      mkdirSync(dataDir, { recursive: true });
      const fingerprint = contractsFingerprint(dirname(manifest));
      const stamp = join(dataDir, "contracts.sha256");
      if (existsSync(chain.logPath!)) {
        const madeWith = existsSync(stamp) ? readFileSync(stamp, "utf8").trim() : "unknown";
        if (madeWith !== fingerprint) {
          throw new Error(`the contracts changed since the chain in ${dataDir} was made: start a new chain with --reset (breakglass dev --reset)`);
        }
        chain.replay(readFileSync(chain.logPath!, "utf8"));
      }
      writeFileSync(stamp, fingerprint + "\n", { mode: 0o600 });
    }
    return chain;
  }

  /** Whether the log held any blocks or mints (a replayed, not a fresh, chain). */
  get replayed(): boolean {
    return this.blocks.length > 0 || this.replayedMints > 0;
  }
  private replayedMints = 0;

  onBlock(listener: (block: Block) => void) {
    this.listeners.push(listener);
  }

  // ---------------------------------------------------------------------------- reads

  get tipHeight(): number {
    return this.simnet.blockHeight;
  }

  get tip(): { height: number; hash: string; indexHash: string; consensusHash: string; burnHeight: number; burnHash: string } {
    const last = this.blocks.at(-1);
    if (last) {
      return { height: last.block_height, hash: last.block_hash, indexHash: last.index_block_hash,
               consensusHash: last.consensus_hash, burnHeight: last.burn_block_height, burnHash: last.burn_block_hash };
    }
    const g = this.genesis();
    return { height: this.genesisHeight, hash: g.blockHash, indexHash: g.indexHash,
             consensusHash: g.consensusHash, burnHeight: this.simnet.burnBlockHeight,
             burnHash: hex0x(sha512_256(`burn:${this.simnet.burnBlockHeight}`)) };
  }

  /** The header the devnet gives the height it starts at (before its first mined block). */
  private genesis() {
    const h = this.genesisHeight;
    const consensusHash = hex0x(sha512_256(`genesis-consensus:${h}`).slice(0, 40));
    const zero = hex0x("00".repeat(32));
    return { ...nakamotoHeader({ height: h, consensusHash, parentId: zero, txRoot: zero, stateRoot: zero, time: 0 }),
             consensusHash };
  }

  /**
   * The canonical block at `height` as `/v3/blocks/height/{height}` serves it: the header,
   * then the transactions (a u32 count, then each raw transaction); null when there is none.
   */
  blockBytes(height: number): Buffer | null {
    if (height === this.genesisHeight && this.blocks.length === 0) return Buffer.concat([this.genesis().bytes, u32be(0)]);
    return this.raw.get(height) ?? null;
  }

  account(principal: string): { balance: bigint; nonce: bigint } {
    const balance = this.simnet.getAssetsMap().get("STX")?.get(principal) ?? 0n;
    return { balance, nonce: this.nonces.get(principal) ?? 0n };
  }

  interfaces() {
    return this.simnet.getContractsInterfaces();
  }

  contractExists(contract: string): boolean {
    return this.interfaces().has(contract);
  }

  functionArgs(contract: string, fn: string) {
    const iface = this.interfaces().get(contract);
    if (!iface) return "no-contract" as const;
    const f = iface.functions.find((x: any) => x.name === fn);
    if (!f) return "no-function" as const;
    return { access: f.access as string, args: f.args as { name: string; type: AbiType }[] };
  }

  callRead(contract: string, fn: string, args: ClarityValue[], sender: string): ClarityValue {
    return this.simnet.callReadOnlyFn(contract, fn, args, sender).result;
  }

  /** The height of this chain's block whose index block hash is `indexHash`, if it has one. */
  heightOf(indexHash: string): number | undefined {
    if (indexHash === this.tip.indexHash) return this.tip.height;
    return this.blocks.find((b) => b.index_block_hash === indexHash)?.block_height
      ?? (indexHash === this.genesis().indexHash ? this.genesisHeight : undefined);
  }

  /**
   * `callRead` as of the end of the canonical block whose index block hash is `indexHash`, as a
   * node answers a call-read with `?tip=`: the tip's state, or an earlier block's through
   * Clarity's `at-block` (the simnet keeps each block's state); `"no-such-tip"` when no block of
   * this chain has that hash (a node behind the block, or on another fork). Unlike a node's, an
   * earlier block's read runs with the deployer as `tx-sender` (no read-only function of these
   * contracts looks at it).
   */
  callReadAt(contract: string, fn: string, args: ClarityValue[], sender: string, indexHash: string): ClarityValue | "no-such-tip" {
    if (indexHash === this.tip.indexHash) return this.callRead(contract, fn, args, sender);
    const height = this.heightOf(indexHash);
    if (height === undefined) return "no-such-tip";
    // the simnet's block at a devnet block's height holds that block's state (the tip's is
    // still open: read above without `at-block`)
    const id = hexToCV(this.simnet.runSnippet(`(unwrap-panic (get-stacks-block-info? id-header-hash u${height}))`) as string);
    const call = `(contract-call? '${contract} ${fn} ${args.map((a) => Cl.prettyPrint(a)).join(" ")})`;
    const result = this.simnet.runSnippet(`(at-block ${Cl.prettyPrint(id)} ${call})`);
    if (typeof result !== "string" || !result.startsWith("0x")) throw new Error(`at-block read: ${String(result)}`);
    return hexToCV(result);
  }

  pending(): Admitted[] {
    return [...this.mempool];
  }

  // ---------------------------------------------------------------------------- writes

  /** Admits a raw transaction to the mempool, as POST /v2/transactions does; returns the txid. */
  submit(raw: Uint8Array): string {
    const admitted = admit(raw, this);
    if (this.mempool.some((m) => m.txid === admitted.txid)) {
      return admitted.txid; // the node answers a transaction already in its mempool with its txid
    }
    const fail = (reason: string, reason_data?: Record<string, unknown>): never => {
      throw new RejectedError({ status: 400, reason, reason_data }, admitted.txid);
    };
    const expected = this.nonces.get(admitted.origin) ?? 0n;
    if (admitted.nonce < expected) {
      fail("BadNonce", { expected: Number(expected), actual: Number(admitted.nonce), principal: admitted.origin, is_origin: true });
    }
    if (admitted.nonce > expected + MAX_CHAINING) {
      fail("TooMuchChaining", { message: "Nonce would exceed chaining limit in mempool",
        expected: Number(expected + MAX_CHAINING), actual: Number(admitted.nonce), principal: admitted.origin, is_origin: true });
    }
    if (this.mempool.some((m) => m.origin === admitted.origin && m.nonce === admitted.nonce)) {
      fail("ConflictingNonceInMempool");
    }
    const owed = this.mempool.filter((m) => m.origin === admitted.origin).reduce((s, m) => s + cost(m), 0n) + cost(admitted);
    const { balance } = this.account(admitted.origin);
    if (balance < owed) {
      fail("NotEnoughFunds", { expected: u128hex(owed), actual: u128hex(balance) });
    }
    this.mempool.push(admitted);
    this.receipts.set(admitted.txid, {
      txid: admitted.txid, status: "pending", origin: admitted.origin, nonce: Number(admitted.nonce),
      fee: Number(admitted.fee), ...describe(admitted), events: [],
    });
    return admitted.txid;
  }

  /** Gives `principal` STX out of thin air (devnet faucet); logged so a replay gives it again. */
  mint(principal: string, amount: bigint) {
    this.simnet.mintSTX(principal, amount);
    this.append({ op: "mint", principal, amount: amount.toString() });
  }

  /**
   * Mines every mempool transaction whose nonce is due, one block each, in arrival order;
   * or one empty block when none is due. Returns the blocks mined.
   */
  mine(time = Math.floor(Date.now() / 1000)): Block[] {
    const mined: Block[] = [];
    for (;;) {
      const next = this.mempool.find((m) => m.nonce === (this.nonces.get(m.origin) ?? 0n));
      if (!next) break;
      this.mempool = this.mempool.filter((m) => m !== next);
      if (this.account(next.origin).balance < cost(next)) {
        // funds spent since admission: the node would drop it
        const r = this.receipts.get(next.txid)!;
        r.status = "dropped";
        r.reason = "NotEnoughFunds";
        continue;
      }
      mined.push(this.execute(next, time));
      this.append({ op: "block", time, tx: next.raw });
    }
    if (mined.length === 0) {
      mined.push(this.execute(null, time));
      this.append({ op: "block", time, tx: null });
    }
    for (const block of mined) for (const l of this.listeners) l(block);
    return mined;
  }

  /** Mines `count` empty blocks (for tests that need time to pass: expiries, windows). */
  mineEmpty(count: number, time = Math.floor(Date.now() / 1000), salt?: string): Block[] {
    const mined: Block[] = [];
    for (let i = 0; i < count; i++) {
      mined.push(this.execute(null, time, salt));
      this.append({ op: "block", time, tx: null, ...(salt ? { salt } : {}) });
    }
    for (const block of mined) for (const l of this.listeners) l(block);
    return mined;
  }

  // ---------------------------------------------------------------------------- internals

  /**
   * A reorg, as a stacks-node sees one: the last `depth` blocks are abandoned and a longer
   * branch (`depth` + 1 empty blocks) becomes canonical. The abandoned blocks' transactions
   * are dropped, not mined again (their senders must broadcast them again), which is the
   * harder case for a client. The chain is rebuilt by replaying its log up to the fork point
   * in a new simnet (the simnet cannot rewind), and the log is rewritten to the new branch.
   * Returns the new branch's blocks, announced to observers like any others.
   */
  async fork(depth: number, time = Math.floor(Date.now() / 1000)): Promise<{ blocks: Block[]; dropped: string[] }> {
    // the new simnet first: from here on nothing awaits, so no block is mined meanwhile
    const fresh = await initSimnet(this.manifest, true);
    if (!Number.isInteger(depth) || depth < 1 || depth > this.blocks.length) {
      throw new Error(`a fork's depth must be from 1 to the ${this.blocks.length} blocks mined`);
    }
    const keep = this.blocks.length - depth;
    const kept: LogEntry[] = [];
    const laterMints: LogEntry[] = [];
    let blocks = 0;
    for (const e of this.entries) {
      if (e.op === "block") {
        if (blocks++ < keep) kept.push(e);
      } else if (blocks <= keep) {
        kept.push(e);
      } else {
        laterMints.push(e); // the faucet is not on chain: what it gave stays given
      }
    }
    const dropped = this.blocks.slice(keep).flatMap((b) => b.transactions.map((t) => t.txid.replace(/^0x/, "")));
    this.simnet = fresh;
    this.blocks.length = 0;
    this.raw.clear();
    this.nonces.clear();
    this.entries = [];
    this.replay([...kept, ...laterMints]);
    for (const txid of dropped) {
      const r = this.receipts.get(txid);
      if (r) Object.assign(r, { status: "dropped", reason: "reorg", block_height: undefined, block_hash: undefined, events: [] });
    }
    this.forks++;
    const branch: Block[] = [];
    for (let i = 0; i <= depth; i++) {
      branch.push(this.execute(null, time, `fork-${this.forks}`));
      this.entries.push({ op: "block", time, tx: null, salt: `fork-${this.forks}` });
    }
    this.rewriteLog();
    for (const block of branch) for (const l of this.listeners) l(block);
    return { blocks: branch, dropped };
  }

  private execute(a: Admitted | null, time: number, salt?: string): Block {
    let results: { result: ClarityValue; events: any[] }[] | null = null;
    let vmError: string | null = null;
    if (a === null) {
      this.simnet.mineEmptyBlock();
    } else {
      const txs = [];
      if (a.fee > 0n) txs.push(simTx.transferSTX(Number(a.fee), FEE_RECIPIENT, a.origin));
      const w = a.work;
      if (w.kind === "call") txs.push(simTx.callPublicFn(w.contract, w.fn, w.args, a.origin));
      else if (w.kind === "deploy") txs.push(simTx.deployContract(w.name, w.source, { clarityVersion: w.clarityVersion }, a.origin));
      else txs.push(simTx.transferSTX(Number(w.amount), w.recipient, a.origin));
      try {
        results = this.simnet.mineBlock(txs);
      } catch (e) {
        vmError = String((e as Error).message ?? e).split("\n")[0];
      }
      this.nonces.set(a.origin, a.nonce + 1n);
    }
    const height = this.simnet.blockHeight;
    const parent = this.tip;
    const burnHeight = this.simnet.burnBlockHeight;
    const seed = `${height}:${parent.indexHash}:${a?.txid ?? ""}:${time}:${salt ?? ""}`;
    const consensusHash = hex0x(sha512_256(`consensus:${seed}`).slice(0, 40));
    const txRoot = hex0x(sha512_256(a ? bytes(a.raw) : new Uint8Array()));
    const header = nakamotoHeader({ height, consensusHash, parentId: parent.indexHash, txRoot,
                                    stateRoot: hex0x(sha512_256(`state:${seed}`)), time });
    const blockHash = header.blockHash;
    this.raw.set(height, Buffer.concat([header.bytes, u32be(a ? 1 : 0), a ? bytes(a.raw) : Buffer.alloc(0)]));
    const block: Block = {
      block_height: height,
      block_hash: blockHash,
      index_block_hash: header.indexHash,
      parent_block_hash: parent.hash,
      parent_index_block_hash: parent.indexHash,
      consensus_hash: consensusHash,
      burn_block_height: burnHeight,
      burn_block_hash: hex0x(sha512_256(`burn:${burnHeight}`)),
      burn_block_time: time,
      block_time: time,
      tenure_height: burnHeight,
      transactions: [],
      events: [],
    };
    if (a) {
      const txid = hex0x(a.txid);
      const outcome = results?.at(-1);
      const ok = outcome !== undefined && (a.work.kind === "deploy" || (outcome.result as any).type === "ok");
      const status: TxStatus = ok ? "success" : "abort_by_response";
      const rawResult = outcome === undefined ? "0x0809" // (err none): the VM aborted the transaction
        : a.work.kind === "deploy" ? "0x0703" : hex0x(cvToHex(outcome.result));
      const events = (outcome?.events ?? []).map((e, i) => toObserverEvent(txid, i, e));
      block.transactions.push({
        txid, tx_index: 0, status, raw_result: rawResult, raw_tx: hex0x(a.raw), contract_abi: null,
        burnchain_op: null, vm_error: vmError,
        execution_cost: { read_count: 0, read_length: 0, runtime: 0, write_count: 0, write_length: 0 },
        microblock_sequence: null, microblock_hash: null, microblock_parent_hash: null,
      });
      block.events = events;
      const receipt: Receipt = this.receipts.get(a.txid) ?? {
        txid: a.txid, status: "pending", origin: a.origin, nonce: Number(a.nonce), fee: Number(a.fee), ...describe(a), events: [],
      };
      Object.assign(receipt, { status, block_height: height, block_hash: blockHash, raw_result: rawResult, events,
                               vm_error: vmError ?? undefined });
      this.receipts.set(a.txid, receipt);
    }
    this.blocks.push(block);
    return block;
  }

  private append(entry: LogEntry) {
    if (this.replaying) return;
    this.entries.push(entry);
    if (!this.logPath) return;
    const fd = openSync(this.logPath, "a", 0o600);
    try {
      appendFileSync(fd, JSON.stringify(entry) + "\n");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  private replaying = false;

  /** Writes the log anew from `entries` (after a fork), atomically. */
  private rewriteLog() {
    if (!this.logPath) return;
    const tmp = `${this.logPath}.tmp`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeFileSync(fd, this.entries.map((e) => JSON.stringify(e) + "\n").join(""));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.logPath);
  }

  private replay(log: string | LogEntry[]) {
    this.replaying = true;
    try {
      const lines = typeof log === "string" ? log.split("\n") : log;
      for (const line of lines) {
        let entry: LogEntry;
        if (typeof line === "string") {
          if (!line.trim()) continue;
          try {
            entry = JSON.parse(line);
          } catch {
            break; // a torn last line from a crash: everything before it was fsynced whole
          }
        } else {
          entry = line;
        }
        this.entries.push(entry);
        if (entry.op === "mint") {
          this.simnet.mintSTX(entry.principal, BigInt(entry.amount));
          this.replayedMints++;
        } else if (entry.tx === null) {
          this.execute(null, entry.time, entry.salt);
        } else {
          const a = admit(Buffer.from(entry.tx, "hex"), this);
          this.execute(a, entry.time, entry.salt);
        }
      }
    } finally {
      this.replaying = false;
    }
  }
}

function cost(a: Admitted): bigint {
  return a.fee + (a.work.kind === "transfer" ? a.work.amount : 0n);
}

function u128hex(n: bigint): string {
  return "0x" + n.toString(16).padStart(32, "0");
}

function describe(a: Admitted): Pick<Receipt, "kind" | "contract_id" | "function_name"> {
  const w = a.work;
  if (w.kind === "call") return { kind: "call", contract_id: w.contract, function_name: w.fn };
  if (w.kind === "deploy") return { kind: "deploy", contract_id: `${a.origin}.${w.name}` };
  return { kind: "transfer" };
}

/** simnet event -> stacks-node event-observer event */
function toObserverEvent(txid: string, index: number, e: { event: string; data: any }): ObserverEvent {
  const base = { txid, event_index: index, committed: true };
  if (e.event === "print_event") {
    return { ...base, type: "contract_event",
      contract_event: { contract_identifier: e.data.contract_identifier, topic: e.data.topic ?? "print",
                        raw_value: hex0x(e.data.raw_value) } };
  }
  const { value: _value, ...data } = e.data ?? {};
  if (typeof data.amount === "bigint") data.amount = data.amount.toString();
  return { ...base, type: e.event, [e.event]: data };
}

/** SHA-256 over the deployed contracts' sources (`contracts/*.clar`, not the property tests). */
function contractsFingerprint(projectDir: string): string {
  const dir = join(projectDir, "contracts");
  const h = createHash("sha256");
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".clar") && !f.endsWith(".tests.clar")).sort()) {
    h.update(f).update("\0").update(readFileSync(join(dir, f))).update("\0");
  }
  return h.digest("hex");
}

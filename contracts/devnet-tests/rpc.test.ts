// The devnet as a stacks-node: a client built only on @stacks/transactions signs contract
// calls, posts them, mines, receives /new_block at an observer and reads results back; every
// bad transaction gets the node's error and changes nothing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import {
  Cl, cvToHex, deserializeCV, hexToCV, makeContractCall, makeSTXTokenTransfer, privateKeyToAddress, randomPrivateKey,
} from "@stacks/transactions";
import { STACKS_TESTNET } from "@stacks/network";
import { DEPLOYER, DEPLOYER_KEY, Devnet, client, startDevnet, startObserver, waitFor } from "./harness";

const AC = `${DEPLOYER}.access-control`;
const hash = (s: string) => Cl.bufferFromHex(createHash("sha256").update(s).digest("hex"));
const register = (c: ReturnType<typeof client>, key: string, opts = {}) =>
  c.signCall(key, AC, "register-provider", [hash("info"), Cl.stringAscii("nurse"), hash("creds")], opts);

let devnet: Devnet;
let observer: Awaited<ReturnType<typeof startObserver>>;
let c: ReturnType<typeof client>;

beforeAll(async () => {
  observer = await startObserver();
  devnet = await startDevnet(["--ephemeral", "--observer", observer.url]);
  c = client(devnet.rpc);
});
afterAll(async () => {
  await devnet?.stop();
  await observer?.close();
});

/** Everything a refused transaction must leave as it was. */
async function snapshot(principal: string) {
  return {
    nonce: await c.nonce(principal),
    balance: (await c.get(`/v2/accounts/${principal}?proof=0`)).body.balance,
    mempool: (await c.get("/devnet/mempool")).body.length,
    provider: cvToHex(await c.callRead(AC, "get-provider", [Cl.principal(principal)])),
    tip: (await c.get("/v2/info")).body.stacks_tip_height,
  };
}

describe("stacks-node RPC", () => {
  it("serves /v2/info with the testnet network id and a tip that moves when a block is mined", async () => {
    const before = (await c.get("/v2/info")).body;
    expect(before.network_id).toBe(0x80000000);
    expect(typeof before.stacks_tip).toBe("string");
    const mined = await c.mine();
    expect(mined.body.blocks).toHaveLength(1);
    const after = (await c.get("/v2/info")).body;
    expect(after.stacks_tip_height).toBe(before.stacks_tip_height + 1);
    expect(after.stacks_tip).not.toBe(before.stacks_tip);
  });

  it("signs, posts, mines, observes and reads back a contract call", async () => {
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me);
    expect((await c.get(`/v2/accounts/${me}?proof=0`)).body.balance).toBe("0x" + (100_000_000).toString(16).padStart(32, "0"));

    const raw = await register(c, key);
    const posted = await c.broadcast(raw);
    expect(posted.status).toBe(200);
    const txid = posted.body as string;
    expect(txid).toMatch(/^[0-9a-f]{64}$/);
    expect((await c.get(`/devnet/tx/${txid}`)).body.status).toBe("pending");
    // a node answers the same transaction again with its txid
    expect((await c.broadcast(raw)).body).toBe(txid);

    const mined = await c.mine();
    expect(mined.body.blocks[0].txids).toEqual([`0x${txid}`]);
    const receipt = (await c.get(`/devnet/tx/${txid}`)).body;
    expect(receipt.status).toBe("success");
    expect(hexToCV(receipt.raw_result)).toEqual(Cl.ok(Cl.uint(1)));

    const block = await waitFor("the /new_block POST", () =>
      observer.received.find((r) => r.path === "/new_block" && r.body.transactions.some((t: any) => t.txid === `0x${txid}`)));
    const tx = block.body.transactions[0];
    expect(tx.status).toBe("success");
    expect(tx.raw_tx).toBe("0x" + Buffer.from(raw).toString("hex"));
    expect(block.body.block_height).toBe(mined.body.blocks[0].height);
    const event = block.body.events.find((e: any) => e.type === "contract_event");
    expect(event.txid).toBe(`0x${txid}`);
    expect(event.contract_event.contract_identifier).toBe(AC);
    expect(event.contract_event.topic).toBe("print");
    const printed = deserializeCV(event.contract_event.raw_value.slice(2)) as any;
    expect(printed.value.topic).toEqual(Cl.stringAscii("provider-registered"));
    expect(printed.value.provider).toEqual(Cl.principal(me));

    const provider = await c.callRead(AC, "get-provider", [Cl.principal(me)]);
    expect(Cl.prettyPrint(provider)).toContain('status: "pending"');
    expect(await c.nonce(me)).toBe(1n);
  });

  it("makes an aborted call observable: status abort_by_response with the contract's error", async () => {
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me);
    const raw = await c.signCall(key, AC, "verify-provider", [Cl.principal(me)]);
    const txid = (await c.broadcast(raw)).body;
    await c.mine();
    const receipt = (await c.get(`/devnet/tx/${txid}`)).body;
    expect(receipt.status).toBe("abort_by_response");
    expect(hexToCV(receipt.raw_result)).toEqual(Cl.error(Cl.uint(205)));
    const block = await waitFor("the aborted tx at the observer", () =>
      observer.received.find((r) => r.path === "/new_block" && r.body.transactions.some((t: any) => t.txid === `0x${txid}`)));
    expect(block.body.transactions[0].status).toBe("abort_by_response");
    expect(block.body.events).toEqual([]);
    // an aborted transaction still uses its nonce and pays its fee
    expect(await c.nonce(me)).toBe(1n);
  });

  it("answers call-read errors like a node", async () => {
    const [address] = AC.split(".");
    const unknown = await c.post(`/v2/contracts/call-read/${address}/no-such-contract/get-roles`, { sender: DEPLOYER, arguments: [] });
    expect(unknown.status).toBe(200);
    expect(unknown.body.okay).toBe(false);
    expect(unknown.body.cause).toContain("NoSuchContract");
    const notReadOnly = await c.post(`/v2/contracts/call-read/${address}/access-control/add-authority`,
      { sender: DEPLOYER, arguments: [cvToHex(Cl.principal(DEPLOYER))] });
    expect(notReadOnly.body.okay).toBe(false);
    const badJson = await c.post(`/v2/contracts/call-read/${address}/access-control/get-roles`, "{", "application/json");
    expect(badJson.status).toBe(400);
    const roles = await c.callRead(AC, "get-roles", []);
    expect(Cl.prettyPrint(roles)).toContain('"paramedic"');
    expect((await c.get("/v2/accounts/not-a-principal")).status).toBe(400);
    expect((await c.get(`/v2/contracts/interface/${address}/access-control`)).body.functions.length).toBeGreaterThan(10);
  });

  it("reads as of a block with ?tip=, and answers a block it has not got with 404", async () => {
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me);
    const before = (await c.mine()).body.blocks[0].index_block_hash as string;
    await c.broadcast(await register(c, key));
    const registered = (await c.mine()).body.blocks[0].index_block_hash as string;
    const [address] = AC.split(".");
    const read = (query: string) =>
      c.post(`/v2/contracts/call-read/${address}/access-control/get-provider${query}`,
        { sender: DEPLOYER, arguments: [cvToHex(Cl.principal(me))] });
    const at = async (query: string) => {
      const r = await read(query);
      expect(r.status).toBe(200);
      expect(r.body.okay).toBe(true);
      return Cl.prettyPrint(hexToCV(r.body.result));
    };
    // the tip, then earlier blocks once it is not the tip any more
    expect(await at(`?tip=${registered.slice(2)}`)).toContain('status: "pending"');
    await c.mine();
    expect(await at("")).toContain('status: "pending"');
    expect(await at(`?tip=${registered.slice(2)}`)).toContain('status: "pending"');
    expect(await at(`?tip=${before.slice(2)}`)).toBe("none");
    // as a node: a tip that is not a block id reads at the tip; a block it has not got is a 404
    expect(await at("?tip=latest")).toContain('status: "pending"');
    const unknown = await read(`?tip=${"ab".repeat(32)}`);
    expect(unknown.status).toBe(404);
    expect(unknown.body).toContain("Chain tip not found");
  });
});

describe("refused transactions change nothing", () => {
  let key: string;
  let me: string;
  beforeAll(async () => {
    key = randomPrivateKey();
    me = privateKeyToAddress(key, "testnet");
    await c.fund(me);
  });

  async function expectRejected(raw: Uint8Array, reason: string, status = 400) {
    const before = await snapshot(me);
    const res = await c.broadcast(raw);
    expect(res.status).toBe(status);
    if (reason === "Deserialization") {
      expect(typeof res.body).toBe("string");
      expect(res.body).toContain("Failed to deserialize posted transaction");
    } else {
      expect(res.body.error).toBe("transaction rejected");
      expect(res.body.reason).toBe(reason);
      expect(res.body.txid).toMatch(/^[0-9a-f]{64}$/);
    }
    await c.mine();
    const after = await snapshot(me);
    expect({ ...after, tip: before.tip }).toEqual(before);
    return res.body;
  }

  it("a bad signature: SignatureValidation", async () => {
    const raw = await register(c, key);
    raw[50] ^= 0xff; // inside r of the origin's signature
    const body = await expectRejected(raw, "SignatureValidation");
    expect(body.reason_data.message).toBeTruthy();
  });

  it("a signature by another key: SignatureValidation", async () => {
    const raw = await register(c, key);
    const other = await register(c, randomPrivateKey(), { nonce: 0n });
    raw.set(other.subarray(44, 109), 44);
    await expectRejected(raw, "SignatureValidation");
  });

  it("a high-S (malleated) signature: SignatureValidation", async () => {
    const raw = await register(c, key);
    const n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
    const s = BigInt("0x" + Buffer.from(raw.subarray(77, 109)).toString("hex"));
    raw.set(Buffer.from((n - s).toString(16).padStart(64, "0"), "hex"), 77);
    raw[44] ^= 1; // the recovery id flips with s
    const body = await expectRejected(raw, "SignatureValidation");
    expect(body.reason_data.message).toContain("high S");
  });

  it("a nonce already used: BadNonce with expected and actual", async () => {
    const ok = await register(c, key);
    expect((await c.broadcast(ok)).status).toBe(200);
    await c.mine();
    const stale = await c.signCall(key, AC, "update-provider-credentials", [hash("a"), hash("b")], { nonce: 0n });
    const body = await expectRejected(stale, "BadNonce");
    expect(body.reason_data).toEqual({ expected: 1, actual: 0, principal: me, is_origin: true });
  });

  it("a transaction already mined, posted again: BadNonce", async () => {
    const raw = await c.signCall(key, AC, "update-provider-credentials", [hash("x"), hash("y")]);
    expect((await c.broadcast(raw)).status).toBe(200);
    await c.mine();
    const body = await expectRejected(raw, "BadNonce");
    expect(body.reason_data.actual).toBe(body.reason_data.expected - 1);
  });

  it("a nonce too far ahead: TooMuchChaining", async () => {
    const n = await c.nonce(me);
    const far = await c.signCall(key, AC, "update-provider-credentials", [hash("a"), hash("b")], { nonce: n + 26n });
    await expectRejected(far, "TooMuchChaining");
  });

  it("garbage bytes: a plain-text Deserialization error", async () => {
    await expectRejected(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]), "Deserialization");
    const truncated = (await register(c, key)).subarray(0, 60);
    await expectRejected(truncated, "Deserialization");
  });

  it("a mainnet transaction or a foreign chain id: BadTransactionVersion", async () => {
    await expectRejected(await register(c, key, { network: "mainnet" }), "BadTransactionVersion");
    await expectRejected(await register(c, key, { network: { ...STACKS_TESTNET, chainId: 0x80000001 } }), "BadTransactionVersion");
  });

  it("an unknown contract, function or ill-typed argument: NoSuchContract, NoSuchPublicFunction, BadFunctionArgument", async () => {
    await expectRejected(await c.signCall(key, `${DEPLOYER}.nothing-here`, "f", []), "NoSuchContract");
    await expectRejected(await c.signCall(key, AC, "get-roles", []), "NoSuchPublicFunction");
    await expectRejected(await c.signCall(key, AC, "no-such-fn", []), "NoSuchPublicFunction");
    const body = await expectRejected(await c.signCall(key, AC, "register-provider", [hash("i"), Cl.uint(1), hash("c")]), "BadFunctionArgument");
    expect(body.reason_data.message).toContain("role");
    await expectRejected(await c.signCall(key, AC, "register-provider", [hash("i"), Cl.stringAscii("x".repeat(17)), hash("c")]), "BadFunctionArgument");
    await expectRejected(await c.signCall(key, AC, "register-provider", [hash("i")]), "BadFunctionArgument");
  });

  it("a fee below one microstack per byte: FeeTooLow; more than the balance: NotEnoughFunds", async () => {
    await expectRejected(await register(c, key, { fee: 10n }), "FeeTooLow");
    const body = await expectRejected(await register(c, key, { fee: 10n ** 12n }), "NotEnoughFunds");
    expect(body.reason_data.expected).toMatch(/^0x[0-9a-f]{32}$/);
  });

  it("a second transaction with a nonce already in the mempool: ConflictingNonceInMempool", async () => {
    const n = await c.nonce(me);
    const first = await c.signCall(key, AC, "update-provider-credentials", [hash("1"), hash("2")], { nonce: n });
    const second = await c.signCall(key, AC, "update-provider-credentials", [hash("3"), hash("4")], { nonce: n });
    expect((await c.broadcast(first)).status).toBe(200);
    const res = await c.broadcast(second);
    expect(res.body.reason).toBe("ConflictingNonceInMempool");
    await c.mine();
    expect(await c.nonce(me)).toBe(n + 1n);
  });

  it("a transaction with a future nonce waits in the mempool for the gap to fill", async () => {
    const n = await c.nonce(me);
    const later = await c.signCall(key, AC, "update-provider-credentials", [hash("5"), hash("6")], { nonce: n + 1n });
    const laterId = (await c.broadcast(later)).body;
    await c.mine();
    expect((await c.get(`/devnet/tx/${laterId}`)).body.status).toBe("pending");
    const now = await c.signCall(key, AC, "update-provider-credentials", [hash("7"), hash("8")], { nonce: n });
    const nowId = (await c.broadcast(now)).body;
    const mined = await c.mine();
    expect(mined.body.blocks.map((b: any) => b.txids[0])).toEqual([`0x${nowId}`, `0x${laterId}`]);
    expect(await c.nonce(me)).toBe(n + 2n);
  });

  it("a JSON body {tx: hex} is accepted like raw bytes; other content types are refused", async () => {
    const raw = await c.signCall(key, AC, "update-provider-credentials", [hash("9"), hash("a")]);
    const wrongType = await c.post("/v2/transactions", Buffer.from(raw), "text/plain");
    expect(wrongType.status).toBe(400);
    const res = await c.post("/v2/transactions", { tx: Buffer.from(raw).toString("hex") });
    expect(res.status).toBe(200);
    await c.mine();
    expect((await c.get(`/devnet/tx/${res.body}`)).body.status).toBe("success");
  });
});

describe("token transfers", () => {
  it("moves STX and charges the fee", async () => {
    const key = randomPrivateKey();
    const me = privateKeyToAddress(key, "testnet");
    await c.fund(me, 1_000_000n);
    const tx = await makeSTXTokenTransfer({ recipient: DEPLOYER, amount: 1000n, senderKey: key, network: "testnet", nonce: 0n, fee: 500n });
    expect((await c.broadcast(tx.serializeBytes())).status).toBe(200);
    await c.mine();
    expect(BigInt((await c.get(`/v2/accounts/${me}?proof=0`)).body.balance)).toBe(1_000_000n - 1000n - 500n);
    const self = await makeSTXTokenTransfer({ recipient: me, amount: 1n, senderKey: key, network: "testnet", nonce: 1n, fee: 500n });
    expect((await c.broadcast(self.serializeBytes())).body.reason).toBe("TransferRecipientCannotEqualSender");
  });
});

// Keep the import of makeContractCall and DEPLOYER_KEY honest: the deployer key is the public
// devnet one and signs governance calls like any key would.
describe("governance with the public devnet deployer key", () => {
  it("the deployer adds an authority with a signed call", async () => {
    const authority = privateKeyToAddress(randomPrivateKey(), "testnet");
    const tx = await makeContractCall({
      contractAddress: DEPLOYER, contractName: "access-control", functionName: "add-authority",
      functionArgs: [Cl.principal(authority)], senderKey: DEPLOYER_KEY, network: "testnet",
      nonce: await c.nonce(DEPLOYER), fee: 5000n,
    });
    expect((await c.broadcast(tx.serializeBytes())).status).toBe(200);
    await c.mine();
    expect(await c.callRead(AC, "is-authority", [Cl.principal(authority)])).toEqual(Cl.bool(true));
  });
});

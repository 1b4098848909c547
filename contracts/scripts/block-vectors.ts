// Makes tests/data/block-vectors.json: transactions of every payload kind a Nakamoto block
// holds (tenure changes, coinbases, transfers, deploys, contract calls with post conditions,
// sponsored and multisig), serialized and signed by @stacks/transactions, the library wallets
// and miners' tools use, and one block of them (the devnet's header, then the transactions)
// with their txids in order. The service's block walker must agree with each.
//
//   npx tsx scripts/block-vectors.ts > ../tests/data/block-vectors.json
import {
  AnchorMode, Cl, ClarityVersion, createMultiSigSpendingCondition, createNakamotoCoinbasePayload,
  createCoinbasePayload, createSingleSigSpendingCondition, createStandardAuth, createTenureChangePayload,
  AddressHashMode, makeContractCall, makeContractDeploy, makeSTXTokenTransfer, Pc, privateKeyToPublic,
  privateKeyToAddress, StacksTransactionWire, TenureChangeCause, TransactionSigner, PostConditionMode,
  makeUnsignedContractCall,
} from "@stacks/transactions";
import { nakamotoHeader } from "../devnet/chain.ts";

const KEYS = [
  "58b209cef017b52795c11ec4c2f3845d6d689cab0eba2d530a89dc5a9b979ea801",
  "7287ba251d44a4d3fd9276c88ce34c5c52a038955511cccaf77e61068649c17801",
  "d655b2523bcd65e34889725c73064feb17ceb796831c0e111ba1a552b0f31b3901",
];
const DEPLOYER = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";
const network = "testnet";
const hex = (n: number, byte: string) => byte.repeat(n);

type Vector = { kind: string; tx_hex: string; txid: string; origin: string; nonce: number; sponsored: boolean;
                contract?: string; function?: string; args?: string[] };

function signed(payload: Parameters<typeof createTenureChangePayload> extends never ? never : any, key: string,
                nonce: number): StacksTransactionWire {
  const auth = createStandardAuth(
    createSingleSigSpendingCondition(AddressHashMode.P2PKH, privateKeyToPublic(key) as string, nonce, 0));
  const tx = new StacksTransactionWire({ payload, auth, network });
  tx.anchorMode = AnchorMode.OnChainOnly;
  const signer = new TransactionSigner(tx);
  signer.signOrigin(key);
  return tx;
}

const vectors: Vector[] = [];
function add(kind: string, tx: StacksTransactionWire, key: string, nonce: number, extra: Partial<Vector> = {}) {
  vectors.push({ kind, tx_hex: tx.serialize(), txid: tx.txid(), origin: privateKeyToAddress(key, network),
                 nonce, sponsored: tx.auth.authType === 0x05, ...extra });
}

const [miner, clinician, patient] = KEYS;

add("tenure-change", signed(createTenureChangePayload(hex(20, "11"), hex(20, "22"), hex(20, "33"), hex(32, "44"), 7,
                                                       TenureChangeCause.BlockFound, hex(20, "55")), miner, 0), miner, 0);
add("tenure-extend", signed(createTenureChangePayload(hex(20, "11"), hex(20, "11"), hex(20, "66"), hex(32, "77"), 12,
                                                       TenureChangeCause.Extended, hex(20, "55")), miner, 1), miner, 1);
add("coinbase", signed(createNakamotoCoinbasePayload(new Uint8Array(32).fill(9), Cl.none(), new Uint8Array(80).fill(8)),
                       miner, 2), miner, 2);
add("coinbase", signed(createNakamotoCoinbasePayload(new Uint8Array(32).fill(9),
                                                     Cl.some(Cl.contractPrincipal(DEPLOYER, "pool")),
                                                     new Uint8Array(80).fill(7)), miner, 3), miner, 3);
add("coinbase", signed(createCoinbasePayload(new Uint8Array(32).fill(5)), miner, 4), miner, 4);
add("coinbase", signed(createCoinbasePayload(new Uint8Array(32).fill(5), Cl.standardPrincipal(DEPLOYER)), miner, 5),
    miner, 5);
add("token-transfer", await makeSTXTokenTransfer({ recipient: DEPLOYER, amount: 1234n, memo: "shift change", fee: 180,
                                                   nonce: 0, senderKey: patient, network }), patient, 0);
add("smart-contract", await makeContractDeploy({ contractName: "hello", codeBody: "(define-read-only (hi) u1)",
                                                 clarityVersion: ClarityVersion.Clarity3, fee: 3000, nonce: 1,
                                                 senderKey: patient, network }), patient, 1);
{
  const args = [Cl.standardPrincipal(privateKeyToAddress(clinician, network))];
  const tx = await makeContractCall({
    contractAddress: DEPLOYER, contractName: "access-control", functionName: "suspend-provider", functionArgs: args,
    fee: 2000, nonce: 4, senderKey: clinician, network, postConditionMode: PostConditionMode.Allow,
    postConditions: [
      Pc.principal(privateKeyToAddress(clinician, network)).willSendLte(10n).ustx(),
      Pc.principal(`${DEPLOYER}.access-control`).willSendGte(1n).ft(`${DEPLOYER}.token`, "coin"),
      Pc.principal(privateKeyToAddress(clinician, network)).willNotSendAsset()
        .nft(`${DEPLOYER}.badges::badge`, Cl.tuple({ id: Cl.uint(3) })),
    ],
  });
  add("contract-call", tx, clinician, 4, { contract: `${DEPLOYER}.access-control`, function: "suspend-provider",
                                           args: args.map((a) => Cl.serialize(a)) });
}
{
  const args = [Cl.bool(false), Cl.list([Cl.stringAscii("allergies")]), Cl.uint(10)];
  const tx = await makeContractCall({
    contractAddress: DEPLOYER, contractName: "patient-consent", functionName: "set-emergency-preferences",
    functionArgs: args, fee: 0, nonce: 2, senderKey: patient, network, sponsored: true,
  });
  const signer = TransactionSigner.createSponsorSigner(tx, createSingleSigSpendingCondition(
    AddressHashMode.P2PKH, privateKeyToPublic(miner) as string, 6, 500));
  signer.signSponsor(miner);
  add("contract-call", tx, patient, 2, { contract: `${DEPLOYER}.patient-consent`,
                                         function: "set-emergency-preferences", args: args.map((a) => Cl.serialize(a)) });
}
{
  // post-condition mode Originator (SIP-040)
  const args = [Cl.bufferFromHex(hex(32, "cd"))];
  const tx = await makeContractCall({
    contractAddress: DEPLOYER, contractName: "access-control", functionName: "clear-summary-hash", functionArgs: args,
    fee: 700, nonce: 5, senderKey: clinician, network, postConditionMode: PostConditionMode.Originator,
  });
  add("contract-call", tx, clinician, 5, { contract: `${DEPLOYER}.access-control`, function: "clear-summary-hash",
                                           args: args.map((a) => Cl.serialize(a)) });
}
{
  // a 2-of-3 multisig origin, unsigned (no fields yet): still a well-formed transaction
  const args = [Cl.bufferFromHex(hex(32, "ab"))];
  const tx = await makeUnsignedContractCall({
    contractAddress: DEPLOYER, contractName: "access-control", functionName: "clear-summary-hash", functionArgs: args,
    fee: 900, nonce: 0, numSignatures: 2, publicKeys: KEYS.map((k) => privateKeyToPublic(k) as string), network,
  });
  vectors.push({ kind: "contract-call", tx_hex: tx.serialize(), txid: tx.txid(),
                 origin: "", nonce: 0, sponsored: false, contract: `${DEPLOYER}.access-control`,
                 function: "clear-summary-hash", args: args.map((a) => Cl.serialize(a)) });
}
void createMultiSigSpendingCondition;

const txs = vectors.map((v) => Buffer.from(v.tx_hex, "hex"));
const count = Buffer.alloc(4);
count.writeUInt32BE(txs.length);
const header = nakamotoHeader({ height: 42, consensusHash: `0x${hex(20, "c0")}`, parentId: `0x${hex(32, "b0")}`,
                                txRoot: `0x${hex(32, "00")}`, stateRoot: `0x${hex(32, "00")}`, time: 1_760_000_000 });
const block = Buffer.concat([header.bytes, count, ...txs]);

process.stdout.write(JSON.stringify({
  generator: "@stacks/transactions 7.6.0 (contracts/scripts/block-vectors.ts)",
  transactions: vectors,
  block: { hex: block.toString("hex"), index_block_hash: header.indexHash.replace(/^0x/, ""), height: 42,
           txids: vectors.map((v) => v.txid) },
}, null, 1) + "\n");

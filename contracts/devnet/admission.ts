// Mempool admission: what a stacks-node checks before it accepts a posted transaction, with
// the node's rejection names and `reason_data` shapes (stacks-core MemPoolRejection::into_json).
import {
  AddressHashMode, AuthType, ClarityValue, PayloadType, StacksTransactionWire,
  addressFromVersionHash, addressHashModeToVersion, addressToString, deserializeTransaction,
} from "@stacks/transactions";
import { AbiType, mismatch } from "./abi.js";

export const TESTNET_CHAIN_ID = 0x80000000;
/** The transaction version byte of testnet transactions (mainnet: 0x00). */
export const TESTNET_TX_VERSION = 0x80;
/** secp256k1 group order / 2: signatures with a larger s are malleable and refused. */
const HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0n;
/** stacks-core MINIMUM_TX_FEE_RATE_PER_BYTE */
const MIN_FEE_PER_BYTE = 1n;

export type Rejection = { status: number; reason: string; reason_data?: Record<string, unknown>; text?: string };

export type Work =
  | { kind: "call"; contract: string; fn: string; args: ClarityValue[] }
  | { kind: "deploy"; name: string; source: string; clarityVersion: 1 | 2 | 3 | 4 }
  | { kind: "transfer"; recipient: string; amount: bigint };

export type Admitted = {
  txid: string;
  raw: string;
  origin: string;
  nonce: bigint;
  fee: bigint;
  work: Work;
};

/** What admission needs to know of the chain. */
export interface ChainView {
  functionArgs(contract: string, fn: string): { access: string; args: { name: string; type: AbiType }[] } | "no-contract" | "no-function";
  contractExists(contract: string): boolean;
}

export class RejectedError extends Error {
  constructor(readonly rejection: Rejection, readonly txid?: string) {
    super(rejection.reason);
  }
}

const reject = (reason: string, reason_data?: Record<string, unknown>): never => {
  throw new RejectedError({ status: 400, reason, reason_data });
};

/** Decodes and checks a raw transaction; throws RejectedError with the node's answer. */
export function admit(raw: Uint8Array, chain: ChainView): Admitted {
  let tx: StacksTransactionWire;
  try {
    tx = deserializeTransaction(raw);
    if (tx.serializeBytes().length !== raw.length) throw new Error("trailing bytes after the transaction");
  } catch (e) {
    // stacks-core answers a body it cannot decode with a plain-text 400
    throw new RejectedError({ status: 400, reason: "Deserialization",
      text: `Failed to deserialize posted transaction: ${(e as Error).message}` });
  }
  const txid = tx.txid();
  try {
    return check(tx, txid, raw, chain);
  } catch (e) {
    if (e instanceof RejectedError) throw new RejectedError(e.rejection, txid);
    throw e;
  }
}

function check(tx: StacksTransactionWire, txid: string, raw: Uint8Array, chain: ChainView): Admitted {
  if (tx.transactionVersion !== TESTNET_TX_VERSION || tx.chainId !== TESTNET_CHAIN_ID) {
    reject("BadTransactionVersion");
  }
  if (tx.auth.authType !== AuthType.Standard) {
    reject("ServerFailureOther", { message: "the devnet accepts standard (non-sponsored) transactions only" });
  }
  const condition = tx.auth.spendingCondition as any;
  try {
    tx.verifyOrigin();
  } catch (e) {
    reject("SignatureValidation", { message: (e as Error).message });
  }
  for (const sig of signaturesOf(condition)) {
    const s = BigInt("0x" + sig.slice(66, 130));
    if (s > HALF_ORDER) reject("SignatureValidation", { message: "signature is not canonical (high S)" });
  }
  const version = addressHashModeToVersion(condition.hashMode as AddressHashMode, "testnet");
  const origin = addressToString(addressFromVersionHash(version, condition.signer));
  const fee = BigInt(condition.fee);
  const minFee = BigInt(raw.length) * MIN_FEE_PER_BYTE;
  if (fee < minFee) reject("FeeTooLow", { expected: Number(minFee), actual: Number(fee) });

  const payload = tx.payload as any;
  let work: Work;
  switch (payload.payloadType as PayloadType) {
    case PayloadType.ContractCall: {
      const contract = `${addressToString(payload.contractAddress)}.${payload.contractName.content}`;
      const fn = payload.functionName.content as string;
      const args = (payload.functionArgs as ClarityValue[]).map((a) => a);
      const abi = chain.functionArgs(contract, fn);
      if (abi === "no-contract") reject("NoSuchContract");
      if (abi === "no-function" || (abi as any).access !== "public") reject("NoSuchPublicFunction");
      const params = (abi as Exclude<typeof abi, string>).args;
      if (params.length !== args.length) {
        reject("BadFunctionArgument", { message: `expected ${params.length} arguments, got ${args.length}` });
      }
      for (const [i, p] of params.entries()) {
        const m = mismatch(p.type, args[i], p.name);
        if (m) reject("BadFunctionArgument", { message: m });
      }
      work = { kind: "call", contract, fn, args };
      break;
    }
    case PayloadType.SmartContract:
    case PayloadType.VersionedSmartContract: {
      const name = payload.contractName.content as string;
      const id = `${origin}.${name}`;
      if (chain.contractExists(id)) reject("ContractAlreadyExists", { contract_identifier: id });
      work = { kind: "deploy", name, source: payload.codeBody.content,
               clarityVersion: (payload.clarityVersion ?? 3) as 1 | 2 | 3 | 4 };
      break;
    }
    case PayloadType.TokenTransfer: {
      const recipient = payload.recipient.value as string; // a principal Clarity value
      const amount = BigInt(payload.amount);
      if (amount <= 0n) reject("TransferAmountMustBePositive");
      if (recipient === origin) reject("TransferRecipientCannotEqualSender", { recipient });
      work = { kind: "transfer", recipient, amount };
      break;
    }
    case PayloadType.Coinbase:
    case PayloadType.CoinbaseToAltRecipient:
    case PayloadType.NakamotoCoinbase:
      return reject("NoCoinbaseViaMempool");
    case PayloadType.TenureChange:
      return reject("NoTenureChangeViaMempool");
    default:
      return reject("ServerFailureOther", { message: `payload type ${payload.payloadType} is not supported by the devnet` });
  }
  return { txid, raw: Buffer.from(raw).toString("hex"), origin, nonce: BigInt(condition.nonce), fee, work };
}

function signaturesOf(condition: any): string[] {
  if (condition.signature) return [condition.signature.data as string];
  return (condition.fields ?? [])
    .filter((f: any) => f.contents?.type !== undefined && typeof f.contents.data === "string" && f.contents.data.length === 130)
    .map((f: any) => f.contents.data as string);
}

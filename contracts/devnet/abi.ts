// Checks Clarity values against a contract's ABI types, as a stacks-node does before it
// admits a contract call to its mempool (`BadFunctionArgument`). Runtime type errors would
// otherwise surface only inside the VM, where they abort a whole simnet block.
import { ClarityValue } from "@stacks/transactions";

export type AbiType =
  | string
  | { buffer: { length: number } }
  | { "string-ascii": { length: number } }
  | { "string-utf8": { length: number } }
  | { optional: AbiType }
  | { response: { ok: AbiType; error: AbiType } }
  | { list: { type: AbiType; length: number } }
  | { tuple: { name: string; type: AbiType }[] };

/** Why `value` does not fit `type`, or null when it does. */
export function mismatch(type: AbiType, value: ClarityValue, path = "argument"): string | null {
  const v = value as any;
  const want = typeof type === "string" ? type : Object.keys(type)[0];
  const fail = () => `${path}: expected ${JSON.stringify(type)}, got ${v.type}`;
  if (typeof type === "string") {
    switch (type) {
      case "uint128": return v.type === "uint" ? null : fail();
      case "int128": return v.type === "int" ? null : fail();
      case "bool": return v.type === "true" || v.type === "false" ? null : fail();
      case "principal":
      case "trait_reference": return v.type === "address" || v.type === "contract" ? null : fail();
      case "none": return v.type === "none" ? null : fail();
      default: return `${path}: unsupported ABI type ${type}`;
    }
  }
  const t = type as any;
  switch (want) {
    case "buffer":
      if (v.type !== "buffer") return fail();
      return v.value.length / 2 <= t.buffer.length ? null : `${path}: buffer longer than ${t.buffer.length} bytes`;
    case "string-ascii":
      if (v.type !== "ascii") return fail();
      return v.value.length <= t["string-ascii"].length ? null : `${path}: string longer than ${t["string-ascii"].length}`;
    case "string-utf8":
      if (v.type !== "utf8") return fail();
      return [...v.value].length <= t["string-utf8"].length ? null : `${path}: string longer than ${t["string-utf8"].length}`;
    case "optional":
      if (v.type === "none") return null;
      if (v.type !== "some") return fail();
      return mismatch(t.optional, v.value, `${path}.some`);
    case "response":
      if (v.type === "ok") return mismatch(t.response.ok, v.value, `${path}.ok`);
      if (v.type === "err") return mismatch(t.response.error, v.value, `${path}.err`);
      return fail();
    case "list": {
      if (v.type !== "list") return fail();
      if (v.value.length > t.list.length) return `${path}: list longer than ${t.list.length}`;
      for (const [i, item] of v.value.entries()) {
        const m = mismatch(t.list.type, item, `${path}[${i}]`);
        if (m) return m;
      }
      return null;
    }
    case "tuple": {
      if (v.type !== "tuple") return fail();
      const keys = Object.keys(v.value);
      if (keys.length !== t.tuple.length) return `${path}: tuple has ${keys.length} fields, expected ${t.tuple.length}`;
      for (const field of t.tuple) {
        if (!(field.name in v.value)) return `${path}: tuple lacks field ${field.name}`;
        const m = mismatch(field.type, v.value[field.name], `${path}.${field.name}`);
        if (m) return m;
      }
      return null;
    }
    default:
      return `${path}: unsupported ABI type ${JSON.stringify(type)}`;
  }
}

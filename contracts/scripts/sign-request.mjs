// Signs a break-glass request as a clinician's tablet would, with @stacks/transactions (the
// library wallets use), and prints the JSON body for POST /v1/break-glass.
//
//   node scripts/sign-request.mjs '{"private_key": "...", "patient": "<64 hex>",
//     "data_types": ["allergies"], "reason": "...", "nonce": 1, "issued_at": <unix s>,
//     "device": "tablet-1", "chain_id": 2147483648}'
//
// Omitted: nonce (random), issued_at (now), device (none), chain_id (testnet).
import { Cl, signStructuredData } from "@stacks/transactions";

const input = JSON.parse(process.argv[2] ?? "{}");
for (const k of ["private_key", "patient", "data_types", "reason"]) {
  if (input[k] === undefined) {
    process.stderr.write(`sign-request: ${k} is required\n`);
    process.exit(2);
  }
}
const chainId = input.chain_id ?? 0x80000000;
const domain = Cl.tuple({ name: Cl.stringAscii("breakglass"), version: Cl.stringAscii("1"), "chain-id": Cl.uint(chainId) });
const message = Cl.tuple({
  action: Cl.stringAscii("break-glass"),
  patient: Cl.bufferFromHex(input.patient),
  "data-types": Cl.list(input.data_types.map((d) => Cl.stringAscii(d))),
  reason: Cl.stringUtf8(input.reason),
  nonce: Cl.uint(input.nonce ?? Math.floor(Math.random() * 2 ** 48)),
  "issued-at": Cl.uint(input.issued_at ?? Math.floor(Date.now() / 1000)),
  device: input.device ? Cl.some(Cl.stringAscii(input.device)) : Cl.none(),
});
const signature = signStructuredData({ message, domain, privateKey: input.private_key });
process.stdout.write(JSON.stringify({ message: Cl.serialize(message), signature }) + "\n");

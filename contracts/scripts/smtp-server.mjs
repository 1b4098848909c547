// A real SMTP server for the service's tests (nodemailer's smtp-server): accepts every message
// and writes it, byte for byte, to <dir>/<n>.eml with its envelope in <n>.json. Recipients
// whose local part starts with "bounce" are refused with 550 (a permanent failure), those whose
// local part starts with "later" with 450 (a transient one, every time). A recipient
// whose local part starts with "hold" is, the first time it is named, never answered: the
// server writes <dir>/held-<address> and keeps the client waiting (a crash test kills the
// client then); named again, it is accepted. With --refuse-senders-while <file>, every sender is
// refused with 553 5.7.1 (a relay's policy, as after its setup changed) while that file exists.
//
//   node scripts/smtp-server.mjs --port <port> --dir <dir> [--delay-ms <ms>] [--refuse-senders-while <file>]
// --delay-ms holds each final reply that long after the message is written (a slow server: a
// client that dies meanwhile has delivered the message without hearing so).
// Prints {"ready":true,"port":<port>} once listening; stops on SIGTERM or when stdin closes.
import { SMTPServer } from "smtp-server";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const port = Number(arg("port", "2525"));
const dir = arg("dir", "./mail");
const delayMs = Number(arg("delay-ms", "0"));
const refuseSendersWhile = arg("refuse-senders-while", null);
mkdirSync(dir, { recursive: true });
let count = 0;
const held = new Set();

const server = new SMTPServer({
  authOptional: true,
  disabledCommands: ["STARTTLS"],
  logger: false,
  onMailFrom(address, _session, callback) {
    if (refuseSendersWhile && existsSync(refuseSendersWhile)) {
      const err = new Error(`5.7.1 <${address.address}>: sender not allowed by policy`);
      err.responseCode = 553;
      return callback(err);
    }
    callback();
  },
  onRcptTo(address, _session, callback) {
    if (address.address.split("@")[0].startsWith("bounce")) {
      // as real servers do, the refusal quotes the address
      const err = new Error(`5.1.1 <${address.address}>: mailbox unavailable`);
      err.responseCode = 550;
      return callback(err);
    }
    if (address.address.split("@")[0].startsWith("later")) {
      // a mailbox that is never reached, for now (greylisting, a full disk): a 4xx
      const err = new Error(`4.2.0 <${address.address}>: try again later`);
      err.responseCode = 450;
      return callback(err);
    }
    if (address.address.split("@")[0].startsWith("hold") && !held.has(address.address)) {
      held.add(address.address);
      writeFileSync(join(dir, `held-${address.address}`), "");
      return; // never answered
    }
    callback();
  },
  onData(stream, session, callback) {
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      count += 1;
      const name = String(count).padStart(5, "0");
      writeFileSync(join(dir, `${name}.eml`), Buffer.concat(chunks));
      writeFileSync(
        join(dir, `${name}.json`),
        JSON.stringify({
          from: session.envelope.mailFrom && session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map((r) => r.address),
        }),
      );
      setTimeout(() => callback(null, `queued as ${name}`), delayMs);
    });
  },
});
// a client that dies mid-session (the crash tests SIGKILL the service while it sends) resets
// its connection; smtp-server reports that as an 'error' event, which would otherwise end
// this process and refuse every later connection
server.on("error", (err) => {
  process.stderr.write(`smtp-server: ${err.code || ""} ${err.message}\n`);
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ ready: true, port }) + "\n");
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.resume();

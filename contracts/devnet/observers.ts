// Event-observer delivery, as a stacks-node does it: every payload is POSTed as JSON to each
// observer, in order, and retried until the observer answers 200. Delivery does not block
// mining (stacks-node's `event_dispatcher_blocking = false`), but an observer never sees block
// N+1 before it has accepted block N.
import type { Block } from "./chain.js";

type Item = { path: string; body: unknown };

export class Observers {
  private queues = new Map<string, Item[]>();
  private busy = new Set<string>();
  private stopped = false;

  constructor(urls: string[], private log: (msg: string) => void, private retryMs = 250) {
    for (const url of urls) this.add(url);
  }

  add(url: string) {
    const base = url.replace(/\/+$/, "");
    if (!this.queues.has(base)) this.queues.set(base, []);
  }

  list(): { url: string; pending: number }[] {
    return [...this.queues].map(([url, q]) => ({ url, pending: q.length }));
  }

  /** Queues the payloads a stacks-node sends for a new block. */
  announce(block: Block, newBurnBlock: boolean) {
    if (newBurnBlock) {
      this.push("/new_burn_block", {
        burn_block_hash: block.burn_block_hash,
        burn_block_height: block.burn_block_height,
        reward_recipients: [],
        reward_slot_holders: [],
        burn_amount: 0,
        consensus_hash: block.consensus_hash,
        parent_burn_block_hash: block.parent_block_hash,
      });
    }
    this.push("/new_block", block);
  }

  private push(path: string, body: unknown) {
    for (const [url, q] of this.queues) {
      q.push({ path, body });
      void this.drain(url);
    }
  }

  private async drain(url: string) {
    if (this.busy.has(url)) return;
    this.busy.add(url);
    try {
      const q = this.queues.get(url)!;
      let delay = this.retryMs;
      while (q.length > 0 && !this.stopped) {
        const item = q[0];
        const ok = await post(url + item.path, item.body);
        if (ok === true) {
          q.shift();
          delay = this.retryMs;
        } else {
          this.log(`observer ${url}${item.path} failed (${ok}); retrying in ${delay} ms`);
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 5000);
        }
      }
    } finally {
      this.busy.delete(url);
    }
  }

  stop() {
    this.stopped = true;
  }
}

async function post(url: string, body: unknown): Promise<true | string> {
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    await res.arrayBuffer();
    return res.status === 200 ? true : `HTTP ${res.status}`;
  } catch (e) {
    return (e as Error).message;
  }
}

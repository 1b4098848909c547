// Bundles src/review.mjs into ../static/review.js (committed; served as /static/review.js).
//   node build.mjs          writes the bundle
//   node build.mjs --check  builds into a temporary file and fails if it differs from the committed one
// The output depends only on the sources and the locked esbuild and dependency versions.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const target = join(web, "..", "static", "review.js");
const check = process.argv.includes("--check");

const result = await esbuild.build({
  absWorkingDir: web,
  entryPoints: ["src/review.mjs"],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  charset: "utf8",
  legalComments: "eof",
  sourcemap: false,
  define: { "process.env.NODE_ENV": '"production"' },
  banner: {
    js: "/* breakglass reviewer pages: built from web/src by esbuild (cd web && npm run build); do not edit. */",
  },
  write: false,
  logLevel: "warning",
});
const bundle = result.outputFiles[0].contents;

if (!check) {
  writeFileSync(target, bundle);
  console.log(`wrote ${relative(process.cwd(), target)} (${bundle.length} bytes)`);
} else {
  const dir = mkdtempSync(join(tmpdir(), "breakglass-review-js-"));
  const fresh = join(dir, "review.js");
  writeFileSync(fresh, bundle);
  let committed = null;
  try {
    committed = readFileSync(target);
  } catch {
    // missing: reported below
  }
  if (committed !== null && Buffer.compare(committed, Buffer.from(bundle)) === 0) {
    rmSync(dir, { recursive: true, force: true });
    console.log(`static/review.js matches web/src (${bundle.length} bytes)`);
  } else {
    console.error(
      committed === null
        ? `static/review.js is missing; run \`npm run build\` in web/ (fresh build: ${fresh})`
        : `static/review.js differs from a fresh build of web/src (${fresh}); run \`npm run build\` in web/ and commit it`,
    );
    process.exit(1);
  }
}

// Bundles the browser code into ../static/ (committed; served as /static/<name>.js):
//   src/review.mjs → static/review.js   (the reviewer pages)
//   src/tablet.mjs → static/tablet.js   (the clinician's tablet page)
//   node build.mjs          writes each bundle that changed
//   node build.mjs --check  builds into a temporary directory and fails if either differs from the committed one
// Each output depends only on its sources and the locked esbuild and dependency versions.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes("--check");

const BUNDLES = [
  {
    entry: "src/review.mjs",
    file: "review.js",
    banner: "/* breakglass reviewer pages: built from web/src by esbuild (cd web && npm run build); do not edit. */",
  },
  {
    entry: "src/tablet.mjs",
    file: "tablet.js",
    banner: "/* breakglass clinician's tablet page: built from web/src by esbuild (cd web && npm run build); do not edit. */",
  },
];

async function build({ entry, banner }) {
  const result = await esbuild.build({
    absWorkingDir: web,
    entryPoints: [entry],
    bundle: true,
    format: "iife",
    platform: "browser",
    target: ["es2020"],
    minify: true,
    charset: "utf8",
    legalComments: "eof",
    sourcemap: false,
    define: { "process.env.NODE_ENV": '"production"' },
    banner: { js: banner },
    write: false,
    logLevel: "warning",
  });
  return result.outputFiles[0].contents;
}

let failed = false;
let dir = null;
for (const b of BUNDLES) {
  const bundle = await build(b);
  const target = join(web, "..", "static", b.file);
  let committed = null;
  try {
    committed = readFileSync(target);
  } catch {
    // missing: written, or reported below
  }
  const same = committed !== null && Buffer.compare(committed, Buffer.from(bundle)) === 0;
  if (!check) {
    if (same) {
      console.log(`${relative(process.cwd(), target)} is up to date (${bundle.length} bytes)`);
    } else {
      writeFileSync(target, bundle);
      console.log(`wrote ${relative(process.cwd(), target)} (${bundle.length} bytes)`);
    }
    continue;
  }
  if (same) {
    console.log(`static/${b.file} matches web/src (${bundle.length} bytes)`);
    continue;
  }
  dir ??= mkdtempSync(join(tmpdir(), "breakglass-web-js-"));
  const fresh = join(dir, b.file);
  writeFileSync(fresh, bundle);
  failed = true;
  console.error(
    committed === null
      ? `static/${b.file} is missing; run \`npm run build\` in web/ (fresh build: ${fresh})`
      : `static/${b.file} differs from a fresh build of web/src (${fresh}); run \`npm run build\` in web/ and commit it`,
  );
}
if (failed) process.exit(1);

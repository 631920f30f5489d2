// Writes a gzip and a brotli copy beside every compressible file of the built page (dist/), so
// the gateway serves them precompressed, chosen by the browser's Accept-Encoding. Node's own
// zlib at the highest levels: done once per build, not per request.

import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { extname, join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const DIST = new URL("../dist/", import.meta.url).pathname;
const COMPRESSIBLE = new Set([".html", ".js", ".css", ".json", ".svg", ".map", ".txt"]);

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else yield path;
  }
}

let before = 0;
let gzipped = 0;
let brotli = 0;
for (const path of files(DIST)) {
  if (!COMPRESSIBLE.has(extname(path))) continue;
  const body = readFileSync(path);
  const gz = gzipSync(body, { level: 9 });
  const br = brotliCompressSync(body, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
      [constants.BROTLI_PARAM_SIZE_HINT]: body.length,
    },
  });
  writeFileSync(`${path}.gz`, gz);
  writeFileSync(`${path}.br`, br);
  before += body.length;
  gzipped += gz.length;
  brotli += br.length;
}
const kb = (n) => `${(n / 1024).toFixed(0)} KiB`;
console.log(`compressed: ${kb(before)} as ${kb(gzipped)} gzip, ${kb(brotli)} brotli`);

// Generates src/protocol.ts, the protocol's types, from the JSON Schema the Rust protocol crate
// writes (protocol/schema/client-protocol.json). `--check` compares instead of writing and
// fails when the checked-in file is stale.

import { readFileSync, writeFileSync } from "node:fs";
import { compile } from "json-schema-to-typescript";

const SCHEMA = new URL("../../../protocol/schema/client-protocol.json", import.meta.url);
const OUT = new URL("../src/protocol.ts", import.meta.url);

export async function generate() {
  const schema = JSON.parse(readFileSync(SCHEMA, "utf8"));
  return compile(schema, "ClientProtocol", {
    bannerComment:
      "/* Generated from protocol/schema/client-protocol.json by scripts/generate.mjs: do not edit.\n" +
      " * Regenerate with `npm run generate` after the protocol changes. */",
    additionalProperties: false,
    unreachableDefinitions: true,
    style: { printWidth: 100 },
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const text = await generate();
  if (process.argv.includes("--check")) {
    const current = readFileSync(OUT, "utf8");
    if (current !== text) {
      console.error("src/protocol.ts is stale: run `npm run generate` in clients/typescript");
      process.exit(1);
    }
  } else {
    writeFileSync(OUT, text);
  }
}

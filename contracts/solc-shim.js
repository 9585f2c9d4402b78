#!/usr/bin/env node
// A `solc` executable over the pinned solc-js (package.json), for tools that run the native
// compiler's command line (crytic-compile, hence slither): it answers
//   solc --version
//   solc FILE.sol... --combined-json abi,ast,bin,... [--allow-paths ...] [prefix=path ...]
// compiling with the settings of compile.js (EVM version, optimizer) through standard JSON and
// printing the combined layout the native solc prints. Nothing else of solc's CLI is offered.
"use strict";

const fs = require("fs");
const solc = require("solc");
const { EVM_VERSION, OPTIMIZER, METADATA } = require("./compile.js");

// --combined-json field -> [standard JSON output selection, how to read it from a contract].
const FIELDS = {
  abi: ["abi", (c) => c.abi],
  bin: ["evm.bytecode.object", (c) => c.evm.bytecode.object],
  "bin-runtime": ["evm.deployedBytecode.object", (c) => c.evm.deployedBytecode.object],
  srcmap: ["evm.bytecode.sourceMap", (c) => c.evm.bytecode.sourceMap],
  "srcmap-runtime": ["evm.deployedBytecode.sourceMap", (c) => c.evm.deployedBytecode.sourceMap],
  userdoc: ["userdoc", (c) => c.userdoc],
  devdoc: ["devdoc", (c) => c.devdoc],
  hashes: ["evm.methodIdentifiers", (c) => c.evm.methodIdentifiers],
  metadata: ["metadata", (c) => c.metadata],
  "storage-layout": ["storageLayout", (c) => c.storageLayout],
};

function fail(message) {
  process.stderr.write(`solc-shim: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const files = [];
  const remaps = [];
  let fields = null;
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === "--combined-json") fields = (argv[++i] || "").split(",").filter(Boolean);
    else if (a === "--allow-paths" || a === "--base-path" || a === "--include-path") ++i;
    else if (a.startsWith("--")) fail(`unsupported option ${a}`);
    else if (a.includes("=")) remaps.push(a);
    else files.push(a);
  }
  if (fields === null) fail("expected --version or --combined-json FIELDS");
  if (!files.length) fail("no source file given");
  return { files, remaps, fields };
}

function combined({ files, remaps, fields }) {
  const wanted = fields.filter((f) => f !== "ast" && f !== "compact-format");
  for (const f of wanted) if (!(f in FIELDS)) fail(`unsupported --combined-json field ${f}`);
  const sources = {};
  for (const f of files) sources[f] = { content: fs.readFileSync(f, "utf8") };
  const input = {
    language: "Solidity",
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      metadata: METADATA,
      remappings: remaps,
      outputSelection: { "*": { "*": wanted.map((f) => FIELDS[f][0]), "": ["ast"] } },
    },
  };
  const findImports = (p) =>
    fs.existsSync(p) ? { contents: fs.readFileSync(p, "utf8") } : { error: `${p} not found` };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if ((output.errors || []).some((e) => e.severity === "error")) process.exit(1);
  const result = { contracts: {}, sourceList: [], sources: {}, version: solc.version() };
  for (const [file, byName] of Object.entries(output.contracts || {})) {
    for (const [name, c] of Object.entries(byName)) {
      const entry = {};
      for (const f of wanted) entry[f] = FIELDS[f][1](c);
      result.contracts[`${file}:${name}`] = entry;
    }
  }
  const byId = Object.entries(output.sources).sort((a, b) => a[1].id - b[1].id);
  for (const [file, s] of byId) {
    result.sourceList.push(file);
    result.sources[file] = fields.includes("ast") ? { AST: s.ast, id: s.id } : { id: s.id };
  }
  return result;
}

const argv = process.argv.slice(2);
if (argv.includes("--version")) {
  process.stdout.write(
    `solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`
  );
} else {
  process.stdout.write(JSON.stringify(combined(parseArgs(argv))) + "\n");
}

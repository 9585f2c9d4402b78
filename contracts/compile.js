#!/usr/bin/env node
// Compiles every contracts/*.sol with the pinned solc (package.json) for the pinned EVM version
// and writes one artifact per contract (ABI + bytecode) to contracts/artifacts/, or to --out DIR.
// Artifacts are committed; tests/test_chain_artifacts.py recompiles and fails if they differ.
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const EVM_VERSION = "prague";
// runs 10000: deployment is paid once, commits and proofs every round, so favour runtime gas.
const OPTIMIZER = { enabled: true, runs: 10000 };
// No metadata hash: the bytecode depends on the code, not on comments or file paths.
const METADATA = { bytecodeHash: "none", appendCBOR: false };

function parseArgs(argv) {
  const i = argv.indexOf("--out");
  return { out: i >= 0 ? path.resolve(argv[i + 1]) : path.join(__dirname, "artifacts") };
}

function compile() {
  const files = fs.readdirSync(__dirname).filter((f) => f.endsWith(".sol")).sort();
  const sources = {};
  for (const f of files) sources[f] = { content: fs.readFileSync(path.join(__dirname, f), "utf8") };
  const input = {
    language: "Solidity",
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      metadata: METADATA,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(1);
  const artifacts = {};
  for (const file of files) {
    for (const [name, c] of Object.entries(output.contracts[file])) {
      artifacts[name] = {
        contractName: name,
        source: file,
        compiler: solc.version(),
        evmVersion: EVM_VERSION,
        optimizer: OPTIMIZER,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
    }
  }
  return artifacts;
}

// The settings every compile of the contracts uses (solc-shim.js too: what slither analyses is
// what is deployed).
module.exports = { EVM_VERSION, OPTIMIZER, METADATA };

if (require.main === module) {
  const { out } = parseArgs(process.argv.slice(2));
  fs.mkdirSync(out, { recursive: true });
  for (const [name, artifact] of Object.entries(compile())) {
    fs.writeFileSync(path.join(out, name + ".json"), JSON.stringify(artifact, null, 2) + "\n");
    process.stdout.write(`${name}: ${(artifact.deployedBytecode.length - 2) / 2} bytes deployed\n`);
  }
}

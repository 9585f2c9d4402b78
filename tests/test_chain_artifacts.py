"""The committed contract artifacts are exactly what the pinned compiler makes of the sources.

Needs node and ``npm ci --prefix contracts`` (the README's test command runs it); without them
this test fails rather than skips, so a stale artifact cannot slip through CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "contracts"


def test_artifacts_match_a_fresh_compile(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is not installed: the contract artifacts cannot be checked"
    assert (CONTRACTS / "node_modules" / "solc").is_dir(), (
        "contracts/node_modules/solc is missing: run `npm ci --prefix contracts` first"
    )
    out = subprocess.run(
        [node, str(CONTRACTS / "compile.js"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, f"compile.js failed:\n{out.stderr}"
    fresh = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    committed = {
        p.name: json.loads(p.read_text()) for p in (CONTRACTS / "artifacts").glob("*.json")
    }
    assert sorted(fresh) == sorted(committed), "artifacts/ and the contracts' names differ"
    for name, art in fresh.items():
        for key in art:
            assert art[key] == committed[name].get(key), (
                f"contracts/artifacts/{name}: {key} differs from a fresh compile; "
                "run `node contracts/compile.js` and commit the result"
            )


def test_compiler_and_evm_version_are_pinned() -> None:
    package = json.loads((CONTRACTS / "package.json").read_text())
    solc_pin = package["devDependencies"]["solc"]
    lock = json.loads((CONTRACTS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/solc"]["version"] == solc_pin
    for path in (CONTRACTS / "artifacts").glob("*.json"):
        art = json.loads(path.read_text())
        assert art["compiler"].startswith(solc_pin + "+commit."), (
            path.name,
            art["compiler"],
            solc_pin,
        )
        assert art["evmVersion"] == "prague"
    for sol in CONTRACTS.glob("*.sol"):
        assert f"pragma solidity {solc_pin};" in sol.read_text(), (
            f"{sol.name} must pin solidity {solc_pin}"
        )


def test_the_solc_shim_answers_as_solc_with_the_deployed_bytecode(tmp_path: Path) -> None:
    """contracts/solc-shim.js (the `solc` slither runs, see .ci/slither): `--version` names the
    pinned compiler and `--combined-json` gives the committed artifacts' code and ABI."""
    node = shutil.which("node")
    assert node, "node is not installed: the solc shim cannot be checked"
    shim = [node, str(CONTRACTS / "solc-shim.js")]
    version = subprocess.run([*shim, "--version"], capture_output=True, text=True, timeout=60)
    pin = json.loads((CONTRACTS / "package.json").read_text())["devDependencies"]["solc"]
    assert version.returncode == 0 and f"Version: {pin}+commit." in version.stdout, version
    fields = "abi,ast,bin,bin-runtime,srcmap,srcmap-runtime,userdoc,devdoc,hashes"
    sol = "contracts/RoundRegistry.sol"
    out = subprocess.run(
        [*shim, sol, "--combined-json", fields, "--allow-paths", ".,contracts"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    combined = json.loads(out.stdout)
    art = json.loads((CONTRACTS / "artifacts" / "RoundRegistry.json").read_text())
    c = combined["contracts"][f"{sol}:RoundRegistry"]
    assert "0x" + c["bin-runtime"] == art["deployedBytecode"] and c["abi"] == art["abi"]
    assert c["hashes"]["attestRound(uint256,uint256,bytes32,bytes32,bytes32,bytes32,uint256)"]
    assert combined["sourceList"] == [sol] and combined["sources"][sol]["AST"]["nodeType"] == (
        "SourceUnit"
    )
    bad = subprocess.run([*shim, sol, "--optimize"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unsupported option --optimize" in bad.stderr

"""An embedded chain that outlives its process: a journal of raw transactions, and its replay.

The embedded chain (eth-tester + py-evm) lives in memory and dies with the process that made
it. Its state is a pure function of its genesis and of the signed transactions it mined, in
order, and both are deterministic here: eth-tester funds the same 10 accounts (private keys 1 to
10) in every genesis, and a signed transaction mines to the same result on the same state. So
a folder holding

- ``chain.json``: the chain id, the genesis state root and the registry address, and
- ``transactions``: every raw signed transaction the chain accepted, one line each
  (``0x<raw transaction> 0x<hash of the block it was mined in>``), appended and flushed as it
  is sent,

is enough to rebuild the chain in another process (only ``eth_sendRawTransaction`` is
recorded: :class:`~bcfl_engine.chain.Ledger` signs every transaction locally and sends nothing
else that changes state): :func:`replay` starts a fresh embedded
chain, checks that its chain id and genesis state root are the recorded ones, sends the
transactions again in order, and checks that the registry is back at its recorded address.
Same deployer, same nonces: same contract address, same tasks, same round commits. Block
hashes are not reproduced (every embedded genesis carries random bytes and every block a random
``prevrandao``), so the replay also returns the map from each replayed block to the hash that
block had on the recorded chain: a task keeps the origin (the hash of its creating block) that
names its rounds in the payload store.

No node to install or keep running, nothing listening on a port, and the folder can be copied
to another machine and audited there. (A local anvil node would need the npm package, which
``pip install`` alone does not bring, and a process left running after the demo.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ChainError, InvalidArgument
from . import _web3
from ._deps import need

MANIFEST = "chain.json"
TRANSACTIONS = "transactions"
KIND = "bcfl embedded chain journal"
VERSION = 2  # 2: each transaction line also names its original block


def is_journal(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that :func:`record` wrote."""
    return (Path(path) / MANIFEST).is_file()


def _genesis(w3: Any) -> dict[str, Any]:
    return {
        "chain_id": int(w3.eth.chain_id),
        "genesis_state_root": "0x" + bytes(w3.eth.get_block(0)["stateRoot"]).hex(),
    }


def _raw_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


def record(w3: Any, folder: str | os.PathLike[str]) -> Path:
    """Start a journal of the embedded chain ``w3`` in ``folder`` (emptied first).

    Call it before the chain's first transaction; every raw transaction the chain accepts from
    then on is appended to ``folder/transactions``. :func:`set_registry` completes the manifest.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, TRANSACTIONS):
        (path / name).unlink(missing_ok=True)
    (path / TRANSACTIONS).touch()
    _write_manifest(path, {"kind": KIND, "version": VERSION, **_genesis(w3), "registry": None})
    w3.middleware_onion.add(_recorder(path / TRANSACTIONS), name="bcfl journal")
    return path


def set_registry(folder: str | os.PathLike[str], address: str) -> None:
    """Record the address of the registry the journal's chain holds."""
    path = Path(folder)
    manifest = read_manifest(path)
    manifest["registry"] = address
    _write_manifest(path, manifest)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path / MANIFEST)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The journal's ``chain.json``; InvalidArgument if ``folder`` holds none or not ours."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(
            f"{folder} is not a chain folder: it has no {MANIFEST} "
            "(expected the chain/ folder a demo on the embedded chain wrote, or a node URL)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ChainError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ChainError(f"{path} is not a {KIND}")
    if manifest.get("version") != VERSION:
        raise ChainError(f"{path} is version {manifest.get('version')}; this build reads {VERSION}")
    return manifest


def _recorder(journal: Path) -> type:
    """A web3 middleware class appending each accepted ``eth_sendRawTransaction`` to ``journal``."""
    base = need("web3").middleware.Web3Middleware

    class JournalRecorder(base):  # type: ignore[misc, valid-type]
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: str, params: Any) -> Any:
                response = make_request(method, params)
                if method == "eth_sendRawTransaction" and not response.get("error"):
                    # The embedded chain mines each transaction at once: its block is known.
                    receipt = make_request("eth_getTransactionReceipt", [response["result"]])
                    block = _raw_hex(receipt["result"]["blockHash"])
                    with open(journal, "a", encoding="ascii") as fh:
                        fh.write(f"{_raw_hex(params[0])} {block}\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                return response

            return middleware

    return JournalRecorder


def replay(folder: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], dict[bytes, bytes]]:
    """A fresh embedded chain rebuilt from the journal in ``folder``: ``(web3, manifest,
    blocks)``, where ``blocks`` maps each replayed block's hash to the recorded one.

    Raises ChainError if the fresh chain's genesis differs from the recorded one, if a
    recorded transaction is malformed or not mined again, or if no registry ends up at the
    recorded address.
    """
    path = Path(folder)
    manifest = read_manifest(path)
    w3, _ = _web3.embedded_chain()
    fresh = _genesis(w3)
    for key, value in fresh.items():
        if manifest.get(key) != value:
            raise ChainError(
                f"{path}: {key} of this embedded chain is {value}, the journal's is "
                f"{manifest.get(key)} (another eth-tester or py-evm version?)"
            )
    try:
        lines = (path / TRANSACTIONS).read_text(encoding="ascii").splitlines()
    except (OSError, ValueError) as exc:
        raise ChainError(f"{path / TRANSACTIONS} cannot be read: {exc}") from exc
    blocks: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, 1):
        where = f"{path / TRANSACTIONS} line {number}"
        try:
            tx_hex, block_hex = line.split(" ")
            raw = bytes.fromhex(tx_hex.removeprefix("0x"))
            original = bytes.fromhex(block_hex.removeprefix("0x"))
        except ValueError:
            raise ChainError(
                f"{where} is not a hex transaction and its block hash: {line[:40]!r}"
            ) from None
        if len(original) != 32:
            raise ChainError(f"{where}: the block hash is not 32 bytes")
        try:
            tx_hash = w3.eth.send_raw_transaction(raw)
            receipt = w3.eth.get_transaction_receipt(tx_hash)
        except Exception as exc:  # eth-tester's validation errors share no base class
            raise ChainError(f"{where} was not mined again: {exc}") from exc
        blocks[bytes(receipt["blockHash"])] = original
    registry = manifest.get("registry")
    if not registry or not bytes(w3.eth.get_code(registry)):
        raise ChainError(f"{path}: no contract at the recorded registry address {registry}")
    return w3, manifest, blocks

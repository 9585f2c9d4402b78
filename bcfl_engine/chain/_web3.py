"""The web3 plumbing under :class:`~bcfl_engine.chain.Ledger`: artifacts, chains, reverts.

One place knows how each backend reports a revert: eth-tester (the embedded chain) raises its
``TransactionFailed`` holding the raw revert bytes (or their ``repr``), a JSON-RPC node makes
web3 raise ``ContractCustomError`` with the data as hex. :func:`translate` turns both into the
same :class:`~bcfl_engine.chain.errors.ContractRevert` subclass.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from importlib import resources
from typing import Any

from ..errors import ChainError, InvalidArgument
from ._deps import need
from .errors import REVERT_MESSAGES, REVERTS, ContractRevert, TransactionFailed

_REVERTED = "execution reverted: "


@functools.cache
def artifact(name: str) -> dict[str, Any]:
    """The compiled artifact ``contracts/artifacts/<name>.json`` (ABI, bytecode, compiler)."""
    path = resources.files("bcfl_engine.contracts").joinpath("artifacts", f"{name}.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ChainError(
            f"contract artifact {name}.json is missing from the package: {exc}"
        ) from exc


def embedded_chain() -> tuple[Any, list[bytes]]:
    """A fresh in-process chain (eth-tester + py-evm) under Prague rules, the EVM version the
    contracts are compiled for: web3 and the keys of its 10 funded accounts.

    The genesis block carries 32 random bytes, so every block hash differs between two chains
    even when the same transactions run in the same second: a task is told apart from the
    task of the same id at the same address on another embedded chain by its block's hash.
    """
    web3 = need("web3")
    tester = need("eth_tester")
    prague = need("eth.vm.forks").PragueVM
    genesis = tester.PyEVMBackend.generate_genesis_params(overrides={"extra_data": os.urandom(32)})
    backend = tester.PyEVMBackend(genesis_parameters=genesis, vm_configuration=((0, prague),))
    w3 = web3.Web3(web3.EthereumTesterProvider(tester.EthereumTester(backend)))
    return w3, [key.to_bytes() for key in backend.account_keys]


def http_chain(url: str, timeout: float) -> Any:
    """web3 on a JSON-RPC node at ``url``; ChainError if it does not answer."""
    web3 = need("web3")
    w3 = web3.Web3(web3.Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - one round trip proves the node answers
    except Exception as exc:  # requests' and web3's connection errors have no common base
        raise ChainError(f"no JSON-RPC node answers at {url}: {exc}") from exc
    return w3


@functools.cache
def _errors_by_selector(name: str) -> dict[bytes, tuple[str, list[str], list[str]]]:
    keccak = need("eth_utils").keccak
    table = {}
    for item in artifact(name)["abi"]:
        if item["type"] == "error":
            types = [i["type"] for i in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (item["name"], types, [i["name"] for i in item["inputs"]])
    return table


def _literal_bytes(text: str) -> bytes | None:
    # eth-tester's web3 provider flattens revert bytes into "execution reverted: b'...'".
    start = text.find(_REVERTED)
    literal = text[start + len(_REVERTED) :] if start >= 0 else text
    if not literal.startswith(("b'", 'b"')):
        return None
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert bytes carried by ``exc`` or the exceptions it was raised from."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        data = getattr(cur, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            return bytes.fromhex(data[2:])
        for arg in cur.args:
            if isinstance(arg, bytes) and len(arg) >= 4:
                return arg
            if isinstance(arg, str) and (found := _literal_bytes(arg)) is not None:
                return found
        cur = cur.__cause__ or cur.__context__
    return None


def translate(exc: BaseException, contract: str = "RoundRegistry") -> ChainError:
    """The typed error for a failed call or transaction of ``contract``."""
    data = revert_data(exc)
    entry = _errors_by_selector(contract).get(data[:4]) if data else None
    if entry is None:
        return TransactionFailed(f"{contract} call failed: {exc}")
    name, types, names = entry
    values = need("eth_abi").decode(types, data[4:])  # type: ignore[index]
    fields = dict(zip(names, values, strict=True))
    shown = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}
    message = REVERT_MESSAGES.get(name, name).format(**shown)
    return REVERTS.get(name, ContractRevert)(f"{name}: {message}", name, fields)


def checksum(w3: Any, address: str) -> str:
    """``address`` in its EIP-55 form; InvalidArgument if it is not a 20-byte address."""
    try:
        return str(w3.to_checksum_address(address))
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            f"expected a 20-byte address (0x + 40 hex digits); got {address!r}"
        ) from exc

"""A local anvil node for tests, benchmarks and demos: started on 127.0.0.1, stopped after.

anvil comes from the npm package ``@foundry-rs/anvil`` pinned in ``contracts/package.json``
(``npm ci --prefix contracts``); ``BCFL_ANVIL`` or an ``anvil`` on PATH is used otherwise.

>>> with AnvilNode() as node:                       # doctest: +SKIP
...     ledger = Ledger.connect(node.url, key=node.fund_key(b"seed"))
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import ChainError, MissingDependency
from ..updates import keccak256
from ._deps import need


def anvil_path() -> Path:
    """Where anvil is: ``BCFL_ANVIL``, else ``contracts/node_modules/.bin/anvil``, else PATH."""
    if env := os.environ.get("BCFL_ANVIL"):
        return Path(env)
    local = Path(str(resources.files("bcfl_engine.contracts"))) / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    if found := shutil.which("anvil"):
        return Path(found)
    raise MissingDependency(
        f"anvil not found at {local} nor on PATH; run `npm ci --prefix contracts`"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AnvilNode:
    """An anvil process under Prague rules on a free port of 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``url`` is its JSON-RPC
    address, ``w3`` a web3 connected to it.
    """

    def __init__(
        self, *, hardfork: str = "prague", gas_limit: int = 30_000_000, timeout: float = 60.0
    ) -> None:
        self.hardfork, self.gas_limit, self.timeout = hardfork, gas_limit, timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.w3: Any = None

    def start(self) -> AnvilNode:
        web3 = need("web3")
        port = _free_port()
        args = ["--host", "127.0.0.1", "--port", str(port), "--hardfork", self.hardfork]
        self.proc = subprocess.Popen(
            [str(anvil_path()), *args, "--gas-limit", str(self.gas_limit)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # own process group: the npm wrapper and anvil stop together
        )
        self.url = f"http://127.0.0.1:{port}"
        self.w3 = web3.Web3(web3.Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + self.timeout
        while not self.w3.is_connected():
            if self.proc.poll() is not None:
                raise ChainError(f"anvil exited with code {self.proc.returncode} before answering")
            if time.monotonic() > deadline:
                self.stop()
                raise ChainError(f"anvil did not answer on {self.url} within {self.timeout:.0f} s")
            time.sleep(0.1)
        return self

    def fund_key(self, seed: bytes, wei: int = 10**24) -> bytes:
        """A private key derived from ``seed`` whose account holds ``wei`` (anvil_setBalance)."""
        key = keccak256(b"bcfl anvil account " + seed)
        address = need("eth_account").Account.from_key(key).address
        self.w3.provider.make_request("anvil_setBalance", [address, hex(wei)])
        return key

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

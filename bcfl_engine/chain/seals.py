"""Sealed rounds: a round's payloads fixed on chain before its result, and the block after.

A bucketed secure round (:mod:`bcfl_engine.buckets`) must draw its buckets from something the
aggregator cannot choose. It seals its payloads first (:meth:`Seals.seal_round`: the updates
root and ``n``, once per round), then takes the hash of the next block as a beacon
(:meth:`Seals.beacon`): when the seal was sent, nobody could know that hash, and once it is
mined, the aggregator can no longer change the payloads it sealed. Anyone reads both back from
the chain (:meth:`Seals.sealed`, :meth:`Seals.block_name`).

On a chain that mines only when it gets a transaction (the embedded chain, anvil) the beacon's
block is made by a 0-value transfer from the aggregator to itself, which the embedded chain's
journal records like any transaction, so a replayed chain has the same blocks in the same
order and :meth:`Seals.block_name` names each by the hash it had on the recorded chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import ChainError
from ._parts import LedgerParts
from .errors import AlreadySealed
from .merkle import as_bytes32


@dataclass(frozen=True)
class SealRecord:
    """A sealed round, as its ``RoundSealed`` event tells it."""

    task: int
    round: int
    updates_root: bytes
    n: int
    block_number: int


class Seals(LedgerParts):
    """The sealing calls of :class:`~bcfl_engine.chain.Ledger` (a mixin)."""

    def seal_round(self, task: int, round: int, *, updates_root: bytes, n: int) -> SealRecord:
        """Seal round ``round`` of ``task`` with ``updates_root`` over ``n`` updates (aggregator
        only). Sealing again with the same root and ``n`` returns the seal (a restarted
        aggregator); with others, AlreadySealed."""
        root = as_bytes32(updates_root, "updates_root")
        held = self.sealed(task, round)
        if held is None:
            self.transact("sealRound", task, round, root, n)
            held = self.sealed(task, round)
            if held is None:
                raise ChainError(f"sealRound of round {round} was mined without its event")
        if (held.updates_root, held.n) != (root, n):
            raise AlreadySealed(
                f"round {round} of task {task} is sealed with another updates root or n "
                f"(0x{held.updates_root.hex()[:16]}..., n={held.n})",
                "AlreadySealed",
                {"task": task, "round": round},
            )
        return held

    def sealed(self, task: int, round: int) -> SealRecord | None:
        """The seal of round ``round`` of ``task``, or None."""
        logs = self.contract.events.RoundSealed.get_logs(
            argument_filters={"task": task, "round": round}, from_block=self.from_block
        )
        if not logs:
            return None
        a = logs[0]["args"]
        return SealRecord(a["task"], a["round"], bytes(a["updatesRoot"]), a["n"],
                          int(logs[0]["blockNumber"]))  # fmt: skip

    def block_name(self, number: int) -> bytes:
        """The hash of block ``number`` (on a replayed embedded chain: the hash it had on the
        recorded chain)."""
        block = bytes(self.w3.eth.get_block(number)["hash"])
        return self._block_names.get(block, block)

    def beacon(self, seal: SealRecord, timeout: float = 120.0) -> bytes:
        """The hash of the block after ``seal``'s, waiting up to ``timeout`` seconds for it (a
        chain that mines on demand gets it from a 0-value transfer of the aggregator's)."""
        target = seal.block_number + 1
        deadline = time.monotonic() + timeout
        while self.w3.eth.block_number < target:
            if self._mines_on_demand():
                self._self_transfer()
                continue
            if time.monotonic() > deadline:
                raise ChainError(
                    f"block {target} (after the seal of round {seal.round}) was not mined "
                    f"within {timeout:.0f} s"
                )
            time.sleep(1.0)
        return self.block_name(target)

    def _mines_on_demand(self) -> bool:
        version = str(self.w3.client_version).lower()
        return "ethereumtester" in version or "anvil" in version

    def _self_transfer(self) -> None:
        account = self._signer()
        w3 = self.w3
        tx = {
            "to": account.address,
            "value": 0,
            "gas": 21_000,
            "gasPrice": w3.eth.gas_price,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
        try:
            tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
            w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        except Exception as exc:
            raise ChainError(f"could not move the chain on past a seal: {exc}") from exc

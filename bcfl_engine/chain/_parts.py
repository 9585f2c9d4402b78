"""What the ledger's mixins (:mod:`.keys`, :mod:`.seals`, :mod:`.quorum`, :mod:`.proofs`) use
of :class:`~bcfl_engine.chain.Ledger`, declared once for the type checker.

At run time :class:`LedgerParts` is an empty base: :class:`~bcfl_engine.chain.Ledger` itself
provides every member, and it lists the mixins as its bases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .records import Meta, Receipt, RoundRecord, TaskInfo
    from .signing import PayloadDomain

    class LedgerParts(Protocol):
        w3: Any
        contract: Any
        from_block: int
        _block_names: dict[bytes, bytes]

        def call(self, fn: str, *args: Any) -> Any: ...

        def transact(self, fn: str, *args: Any) -> Receipt: ...

        def _signer(self) -> Any: ...

        def record(self, task: int, round: int) -> RoundRecord | None: ...

        def task_info(self, task: int) -> TaskInfo: ...

        def commit_round(
            self,
            task: int,
            round: int,
            *,
            updates_root: bytes,
            result_digest: bytes,
            meta: Meta,
            n: int,
            contributions_root: bytes | None = None,
        ) -> Receipt: ...

        @property
        def address(self) -> str: ...

        @property
        def sender(self) -> str: ...

        @property
        def domain(self) -> PayloadDomain: ...

else:

    class LedgerParts:
        """An empty base at run time (see the module)."""

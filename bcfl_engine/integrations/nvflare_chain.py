"""Chain commits for NVIDIA FLARE's plaintext jobs: signed contributions, one commit a round.

A site signs what it sends (:class:`SignContribution`, a filter in the site's
``task_result_filters``; or :func:`sign_dxo` from Python; :mod:`.nvflare_sign`, re-exported
here): its payload and weight signed with the site's secp256k1 key, the signature in the DXO's
meta under :data:`META_KEY`.

With ``ledger=`` the :class:`~bcfl_engine.integrations.nvflare_robust.RobustAggregator` checks
each contribution's signature when it accepts it (a missing or wrong one is a rejection with a
logged reason, as NVFlare rejects a bad contribution), and when the round closes runs the
accepted ones through an :class:`~bcfl_engine.round.AggregationRound` (stored durably,
aggregated by the rule, committed: Merkle root, result digest, metadata), so ``bcfl audit``
recomputes the round. NVFlare round ``r`` (from 0) is registry round ``r + 1``: a round that
commits nothing (no signed contribution accepted) leaves the registry one round behind, and the
rounds after it are not committed (logged); NVFlare carries on either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import BcflError, InvalidArgument, PayloadError

try:
    from nvflare.apis.dxo import DXO
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.app_constant import AppConstants
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from ..errors import MissingDependency

    raise MissingDependency(
        f"the NVIDIA FLARE integration needs nvflare ({exc}); pip install 'bcfl_engine[nvflare]'"
    ) from None

# The site side, re-exported here: job configs name bcfl_engine.integrations.nvflare_chain.
from .nvflare_sign import (  # noqa: F401
    META_KEY,
    SignContribution,
    contribution_bytes,
    he_bundle,
    sign_dxo,
    signed_payload,
    signed_weight,
)


def connect(ledger: Any, registry: str | None, key_env: str) -> Any:
    """The aggregator's ledger: a :class:`~bcfl_engine.chain.Ledger` as is, or a node's URL
    (a job's JSON config holds no objects) with the ``registry`` address, sending from the key
    in the environment variable ``key_env``."""
    if not isinstance(ledger, str):
        return ledger
    from ..chain import Ledger

    if registry is None:
        raise InvalidArgument("ledger= as a URL needs registry=, the registry's address")
    key = os.environ.get(key_env)
    if not key:
        raise InvalidArgument(f"ledger= as a URL needs the aggregator's key in ${key_env}")
    return Ledger.connect(ledger, key=key, address=registry)


def contribution_round(shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
    """The contribution's DXO when it is for the current round with return code OK (its
    signature is then checked); None where NVFlare's own accept rejects it and says why."""
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_constant import ReturnCode

    current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    if shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND) != current:
        return None
    if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
        return None
    try:
        return from_shareable(shareable)
    except Exception:  # NVFlare's accept names a malformed DXO
        return None


class ChainRound:
    """The server's side: the signed contributions of one NVFlare round, checked on accept and
    committed through an :class:`~bcfl_engine.round.AggregationRound` when the round closes."""

    def __init__(
        self,
        ledger: Any,
        task: Any,
        participants: Sequence[str],
        store: Any,
        exclude_vars: Any = None,
        registry: str | None = None,
        key_env: str = "BCFL_CHAIN_KEY",
    ) -> None:
        from ..chain.merkle import address_bytes
        from ..store import PayloadStore

        if not isinstance(task, int) or isinstance(task, bool) or task < 1:
            raise InvalidArgument(f"ledger= needs task=, the registry task id; got {task!r}")
        if not participants:
            raise InvalidArgument("ledger= needs participants=, the task's registered addresses")
        if store is None:
            raise InvalidArgument("ledger= needs store=, the folder the round's payloads go to")
        if isinstance(ledger, str) and registry is None:
            raise InvalidArgument("ledger= as a URL needs registry=, the registry's address")
        # A URL is connected on first use: a job's components are built when it is exported too.
        self._spec: tuple[Any, str | None, str] = (ledger, registry, key_env)
        self._ledger: Any = None
        self.task, self.exclude_vars = task, exclude_vars
        self.participants = list(participants)
        self._members = frozenset(address_bytes(p, "participant") for p in participants)
        self.store = store if isinstance(store, PayloadStore) else PayloadStore(store)
        self.signed: dict[str, Any] = {}  # contributor name -> Payload, for this round
        self.round = 0  # the NVFlare round being collected (registry round + 1)

    @property
    def ledger(self) -> Any:
        if self._ledger is None:
            self._ledger = connect(*self._spec)
        return self._ledger

    def check(self, dxo: DXO, name: str, nvflare_round: int) -> Any:
        """The contribution's signed :class:`~bcfl_engine.protocol.Payload` (its encrypted
        layers bundled, else its arrays); PayloadError if it is unsigned, signed for another
        round, or not signed by a participant."""
        from ..chain import SignedPayload, verify_payload
        from ..protocol import Payload, payload_digest

        meta = dxo.get_meta_prop(META_KEY)
        if not isinstance(meta, dict):
            raise PayloadError(f"no signature (DXO meta {META_KEY!r}; see SignContribution)")
        try:
            address, signature = str(meta["address"]), bytes.fromhex(meta["signature"])
        except (KeyError, TypeError, ValueError):
            raise PayloadError(f"malformed signature meta {META_KEY!r}") from None
        data, weight = signed_payload(dxo, self.exclude_vars)
        round = nvflare_round + 1
        signed = SignedPayload(self.task, round, payload_digest(data), address, signature, weight)
        verify_payload(
            signed, task=self.task, round=round, participants=self._members,
            domain=self.ledger.domain,
        )  # fmt: skip
        return Payload(address, data, signature, weight)

    def check_reply(self, shareable: Shareable, name: str, fl_ctx: FLContext) -> Any:
        """``(dxo, signed payload)`` of a reply for the current round; None where NVFlare's own
        accept rejects it and says why; PayloadError (or another engine error: no key, no
        chain) for a reply without its site's valid signature."""
        dxo = contribution_round(shareable, fl_ctx)
        if dxo is None:
            return None
        self.round = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
        return dxo, self.check(dxo, name, self.round)

    def commit(
        self, names: Sequence[str], nvflare_round: int, options: dict[str, Any]
    ) -> tuple[Any, str | None]:
        """Run the round: submit the payloads of ``names`` (in acceptance order), aggregate with
        ``options`` (rule, f, params, backend), commit. Returns the aggregate (a float32 vector
        of the arrays in name order), or None and why nothing was committed."""
        from ..round import AggregationRound

        missing = [n for n in names if n not in self.signed]
        if missing:
            return None, f"no signed payload of {', '.join(missing)}"
        payloads = [self.signed[n] for n in names]
        dim = None if options.get("secure") else len(payloads[0].data) // 4
        try:
            rnd = AggregationRound(
                self.ledger, self.task, nvflare_round + 1, self.store,
                participants=self.participants, dim=dim, **options,
            )  # fmt: skip
            refused = [
                f"{n}: {r}"
                for n, r in zip(names, rnd.submit_many(payloads), strict=True)
                if isinstance(r, BcflError)
            ]
            if refused:
                return None, "the round refused " + "; ".join(refused)
            result = rnd.finalize()
        except BcflError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return result.update, None


def accept_reply(
    agg: Any,
    shareable: Shareable,
    fl_ctx: FLContext,
    accept: Callable[[], bool],
    errors: tuple[type[BaseException], ...],
    on_signed: Callable[[DXO], None] | None = None,
) -> bool:
    """An engine aggregator's ``accept``: NVFlare's (``accept()``), the reply's signature
    checked first when ``agg.chain`` commits rounds; a reply that fails either, with one of
    ``errors``, is rejected with the reason in the log. ``on_signed`` sees each accepted signed
    reply's DXO."""
    from nvflare.apis.fl_constant import ReservedKey

    name = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
    chain: ChainRound | None = agg.chain
    signed = None
    try:
        if chain is not None:  # unsigned, mis-signed, or no chain to check against
            signed = chain.check_reply(shareable, name, fl_ctx)
    except BcflError as exc:
        agg.log_error(fl_ctx, f"discarding the contribution of {name}: {exc}")
        return False
    try:
        accepted = bool(accept())
    except errors as exc:
        agg.log_error(fl_ctx, f"discarding the contribution of {name}: {exc}")
        return False
    if accepted and signed is not None:
        assert chain is not None
        chain.signed[name] = signed[1]
        if on_signed is not None:
            on_signed(signed[0])
    return accepted

"""NVIDIA FLARE messages and a server loop for the tests: what a client sends (a DXO in a
Shareable, FOBS bytes) and how NVFlare's server drives an aggregator (START_RUN, then
``fobs.loads`` + ``accept`` per message, then ``aggregate``)."""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs


class _Engine:
    """What FLComponent needs of an engine in these tests: somewhere to fire log events."""

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        pass


def he_context(primes: list[int] | None = None) -> Any:
    """HEBuilder's default (CKKS, N=8192, [60, 40, 40], 2^40, symmetric, relin keys)."""
    import tenseal as ts

    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=primes or [60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.generate_relin_keys()
    ctx.global_scale = 2**40
    return ctx


def message(
    layers: dict[str, Any],
    site: str,
    round_: int = 0,
    steps: int = 1,
    kind: str = DataKind.WEIGHTS,
    rc: str | None = None,
    algorithm: str | None = "CKKS",
) -> bytes:
    meta: dict[str, Any] = {MetaKey.NUM_STEPS_CURRENT_ROUND: steps}
    if algorithm:
        meta[MetaKey.PROCESSED_ALGORITHM] = algorithm
    shareable = DXO(kind, layers, meta=meta).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_)
    if rc is not None:
        shareable.set_return_code(rc)
    return fobs.dumps(shareable)  # type: ignore[no-any-return]


def server(cls: type, round_: int = 0, **kwargs: Any) -> tuple[Any, FLContext]:
    fl_ctx = FLContextManager(engine=_Engine(), identity_name="server", job_id="t").new_context()
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_, private=True, sticky=True)
    agg = cls(**kwargs)
    agg.handle_event(EventType.START_RUN, fl_ctx)
    return agg, fl_ctx


def run(cls: type, messages: list[bytes], **kwargs: Any) -> tuple[list[bool], DXO]:
    """accept each message (fobs.loads'd), then aggregate: (accepted flags, the DXO out)."""
    agg, fl_ctx = server(cls, **kwargs)
    flags = [agg.accept(fobs.loads(m), fl_ctx) for m in messages]
    return flags, from_shareable(agg.aggregate(fl_ctx))

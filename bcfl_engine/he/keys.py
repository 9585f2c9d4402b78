"""Keys and contexts: generate a TenSEAL CKKS context, share its public part, read its primes.

The key holder (or every client, as in NVIDIA FLARE) keeps the secret context; the aggregator
gets :meth:`Keys.public_context`: the encryption parameters and the public key, no secret key
and no relinearization or Galois keys (a sum needs neither).

:func:`context_info` reads what the codec checks payloads against straight from SEAL's
context chain through TenSEAL's bundled SEAL API (``tenseal.sealapi``): the ring degree, the
global scale and, for each data level from the highest to the lowest, its ``parms_id`` (SEAL's
hash of the level's parameters, written in every ciphertext) and its primes. Nothing is
decrypted or guessed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument, MissingDependency
from . import presets as _presets


def tenseal() -> Any:
    """The ``tenseal`` module, or MissingDependency naming the extra to install."""
    try:
        import tenseal as ts
        import tenseal.sealapi
    except ImportError as exc:  # pragma: no cover - the he extra is installed in CI
        raise MissingDependency(
            f"CKKS needs tenseal ({exc}); pip install 'bcfl_engine[he]'"
        ) from None
    return ts


@dataclass(frozen=True)
class Level:
    """One data level of the modulus chain: SEAL's ``parms_id`` and the primes left."""

    parms_id: tuple[int, int, int, int]
    primes: tuple[int, ...]

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(q.bit_length() for q in self.primes)


@dataclass(frozen=True)
class ContextInfo:
    """What a ciphertext payload is validated against.

    Attributes
    ----------
    poly_degree : ring degree ``N`` (``N / 2`` slots)
    scale : the context's global scale: every fresh ciphertext carries it
    levels : data levels, highest (most primes, where TenSEAL encrypts) first, lowest last
    """

    poly_degree: int
    scale: float
    levels: tuple[Level, ...]

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def highest(self) -> Level:
        return self.levels[0]

    @property
    def lowest(self) -> Level:
        return self.levels[-1]

    def level_of(self, parms_id: tuple[int, ...]) -> Level | None:
        """The data level whose ``parms_id`` this is, or None (another context, or a key level)."""
        for level in self.levels:
            if level.parms_id == tuple(parms_id):
                return level
        return None


@functools.lru_cache(maxsize=8)
def _load_bytes(data: bytes) -> Any:
    try:
        return tenseal().context_from(data)
    except MissingDependency:
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"not a serialized TenSEAL context ({len(data)} bytes): {exc}"
        ) from None


def load_context(context: Any) -> Any:
    """A ``tenseal.Context`` from itself or from its serialized bytes (cached per bytes)."""
    ts = tenseal()
    if isinstance(context, ts.Context):
        return context
    if isinstance(context, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(context))
    raise InvalidArgument(
        f"context must be a tenseal.Context or its bytes; got {type(context).__name__}"
    )


def _info(ctx: Any) -> ContextInfo:
    sc = ctx.seal_context().data
    levels = []
    cd = sc.first_context_data()
    while cd is not None:
        primes = tuple(int(m.value()) for m in cd.parms().coeff_modulus())
        levels.append(Level(tuple(int(x) for x in cd.parms_id()), primes))  # type: ignore[arg-type]
        cd = cd.next_context_data()
    n = int(sc.key_context_data().parms().poly_modulus_degree())
    return ContextInfo(n, float(ctx.global_scale), tuple(levels))


@functools.lru_cache(maxsize=8)
def _info_bytes(data: bytes) -> ContextInfo:
    return _info(_load_bytes(data))


def context_info(context: Any) -> ContextInfo:
    """The :class:`ContextInfo` of a ``tenseal.Context`` or of its serialized bytes."""
    if isinstance(context, ContextInfo):
        return context
    if isinstance(context, (bytes, bytearray, memoryview)):
        return _info_bytes(bytes(context))
    return _info(load_context(context))


@dataclass
class Keys:
    """A CKKS key pair as TenSEAL contexts.

    Attributes
    ----------
    secret_context : ``tenseal.Context`` holding the secret key (key holder / clients)
    preset : the :class:`~bcfl_engine.he.presets.Preset` it was made from
    """

    secret_context: Any
    preset: _presets.Preset
    _public: bytes | None = field(default=None, repr=False)

    def public_context(self) -> bytes:
        """Serialized public context: parameters and public key, no secret, relin or Galois keys."""
        if self._public is None:
            self._public = self.secret_context.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        return self._public

    @property
    def info(self) -> ContextInfo:
        return context_info(self.secret_context)


def generate_keys(preset: str | _presets.Preset | None = None) -> Keys:
    """A fresh CKKS key pair for ``preset`` (see :data:`~bcfl_engine.he.presets.PRESETS`; None:
    :data:`~bcfl_engine.he.presets.DEFAULT`)."""
    p = _presets.get(_presets.DEFAULT if preset is None else preset)
    ts = tenseal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_degree, coeff_mod_bit_sizes=list(p.coeff_bits))
    ctx.global_scale = p.scale
    return Keys(ctx, p)

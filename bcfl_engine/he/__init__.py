"""CKKS secure aggregation through TenSEAL: keys, client encryption, the SEAL wire format, the homomorphic weighted sum.

>>> from bcfl_engine import he
>>> keys = he.generate_keys()                               # doctest: +SKIP
>>> blob = he.encrypt(update, keys.public_context())         # doctest: +SKIP
>>> agg = he.aggregate([blob, ...], context=keys.public_context())  # doctest: +SKIP
>>> he.decrypt(agg, keys.secret_context)                     # doctest: +SKIP

Keys made without a preset are "lean" (:data:`~bcfl_engine.he.presets.DEFAULT`): payloads of
9.5 bytes per parameter switched to ``2^b`` (:mod:`bcfl_engine.he.lean`), ``|x| <= 1`` and
integer weights summing to at most 1,000; ``generate_keys("default")`` for compact payloads at
the top of a 60/40/40 chain (fractional weights, more headroom, 30 bytes per parameter).

Multiparty keys (no single holder of the secret): :mod:`bcfl_engine.he.multiparty`.
"""

from __future__ import annotations

from . import lean, presets
from .aggregate import aggregate
from .batch import CiphertextBatch
from .ckks_sum import ckks_sum, ckks_sum_reference
from .client import decrypt, encrypt
from .keys import ContextInfo, Keys, context_info, generate_keys
from .presets import PRESETS, Preset

__all__ = [
    "PRESETS",
    "CiphertextBatch",
    "ContextInfo",
    "Keys",
    "Preset",
    "aggregate",
    "ckks_sum",
    "ckks_sum_reference",
    "context_info",
    "decrypt",
    "encrypt",
    "generate_keys",
    "lean",
    "presets",
]

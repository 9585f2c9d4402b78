"""Central differential privacy around any Message API strategy, on the engine's kernels.

:class:`DifferentialPrivacyServerSideFixedClipping` takes Flower's constructor arguments
(``strategy, noise_multiplier, clipping_norm, num_sampled_clients``) and wraps any strategy of
:mod:`.flower` (or Flower's own): each reply's update (its arrays minus the global arrays the
round was configured with, all arrays as one vector) is clipped to L2 norm ``clipping_norm`` by
:func:`bcfl_engine.rules.clip` (all replies in one ``[n, d]`` call), the wrapped strategy
aggregates the clipped replies, and Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / num_sampled_clients`` is added to every coordinate of the
aggregate from :mod:`bcfl_engine.dp_noise` (keyed BLAKE3 under a fresh OS key, Box-Muller in
float64). With ``noise_multiplier = 0`` the result is the wrapped strategy's aggregate of the
clipped replies.

The privacy statement is :mod:`bcfl_engine.dp`'s, and so are its conditions: it holds for an
unweighted mean over ``num_sampled_clients`` (a weighted FedAvg with unequal weights, or a
robust rule, is not what the noise scale was computed for), and epsilon is accounted by
:func:`bcfl_engine.dp.epsilon`, not here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
import torch

from .. import rules
from ..dp import GaussianDP
from ..dp_noise import NoiseGenerator, add_noise_, random_words, standard_normal
from ..errors import InvalidArgument, MissingDependency

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.logger import log
    from flwr.serverapp.strategy import Strategy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None


class DifferentialPrivacyServerSideFixedClipping(Strategy):
    """Server-side fixed clipping and Gaussian noise around ``strategy`` (module docstring).

    Parameters
    ----------
    strategy : the Message API strategy that aggregates the clipped replies
    noise_multiplier : ``z >= 0``
    clipping_norm : ``C > 0``, the L2 bound of each client's update
    num_sampled_clients : ``m >= 1``; the noise's standard deviation is ``z * C / m``
    generator : a :class:`bcfl_engine.dp.NoiseGenerator`, for tests only (None: fresh OS keys)
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        generator: NoiseGenerator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise InvalidArgument(
                f"strategy must be a flwr.serverapp.strategy.Strategy; got {type(strategy).__name__}"
            )
        self.strategy = strategy
        self.dp = GaussianDP(clipping_norm, noise_multiplier, num_sampled_clients)
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.num_sampled_clients = num_sampled_clients
        self.generator = generator
        self._current: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"DifferentialPrivacyServerSideFixedClipping(strategy={self.strategy!r})"

    def summary(self) -> None:
        log(
            INFO,
            "\t├── DP server-side fixed clipping (bcfl_engine): noise multiplier %s, clipping "
            "norm %s, %s sampled clients (noise std %s)",
            self.noise_multiplier,
            self.clipping_norm,
            self.num_sampled_clients,
            self.dp.noise_std,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
    ) -> Iterable[Message]:
        # The global arrays the replies' updates are measured from.
        self._current = {k: np.array(arrays[k].numpy()) for k in arrays}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._current is None:
            raise InvalidArgument(
                "aggregate_train before configure_train: the global arrays the updates are "
                "clipped against are unknown"
            )
        clipped = _clip_replies(list(replies), self._current, float(self.clipping_norm))
        arrays, metrics = self.strategy.aggregate_train(server_round, clipped)
        if arrays is not None and self.dp.noise_std > 0:
            arrays = _noised(arrays, self.dp.noise_std, self.generator)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def _clip_replies(
    replies: list[Message], current: dict[str, np.ndarray], clipping_norm: float
) -> list[Message]:
    """New replies whose arrays are ``current + clip(reply - current)``; replies with an
    error or without arrays pass as they are (the wrapped strategy judges them)."""
    keys = list(current)
    at: list[tuple[int, str]] = []  # (reply index, ArrayRecord key) of each clipped row
    rows = []
    for i, msg in enumerate(replies):
        if msg.has_error() or not msg.has_content():
            continue
        for name, record in msg.content.items():
            if isinstance(record, ArrayRecord) and list(record) == keys:
                parts = [np.asarray(record[k].numpy(), dtype=np.float64) - current[k] for k in keys]
                rows.append(np.concatenate([p.reshape(-1) for p in parts]).astype(np.float32))
                at.append((i, name))
    if not rows:
        return replies
    x = rules.clip(torch.from_numpy(np.stack(rows)), max_norm=clipping_norm).numpy()
    out = list(replies)
    for (i, name), row in zip(at, x, strict=True):
        msg = out[i]
        new, offset = ArrayRecord(), 0
        for k in keys:
            base = current[k]
            delta = row[offset : offset + base.size].reshape(base.shape)
            new[k] = _array(base + delta, base.dtype)
            offset += base.size
        # A shallow copy with new content: the caller's reply is left as it came.
        out[i] = copy.copy(msg)
        out[i].content = RecordDict({**dict(msg.content.items()), name: new})
    return out


def _array(values: np.ndarray, dtype: np.dtype) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(values.astype(dtype, copy=False)))


def _noised(arrays: ArrayRecord, std: float, generator: NoiseGenerator | None) -> ArrayRecord:
    """``arrays`` with ``N(0, std^2)`` added to every value of every floating array: the
    float32 ones in one draw over their concatenation, the others (float64, float16) in float64
    and cast back; each sum in float64, rounded once. Integer arrays (counters) pass as they
    are: noise of scale ``std`` is not what they hold."""
    keys = list(arrays)
    values = {k: np.asarray(arrays[k].numpy()) for k in keys}
    f32 = [k for k in keys if values[k].dtype == np.float32]
    if f32:
        flat = torch.from_numpy(np.concatenate([values[k].reshape(-1) for k in f32]))
        add_noise_(flat, std, generator)
        offset = 0
        for k in f32:
            size = values[k].size
            values[k] = flat.numpy()[offset : offset + size].reshape(values[k].shape)
            offset += size
    for k in keys:
        v = values[k]
        if np.issubdtype(v.dtype, np.floating) and v.dtype != np.float32 and v.size:
            words = np.frombuffer(random_words(3 * ((v.size + 1) // 2), generator), dtype="<u8")
            z = standard_normal(words, v.size).reshape(v.shape)
            values[k] = (v.astype(np.float64) + std * z).astype(v.dtype)
    out = ArrayRecord()
    for k in keys:
        out[k] = _array(values[k], values[k].dtype)
    return out

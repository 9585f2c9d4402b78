"""Central differential privacy: the mean of clipped updates plus Gaussian noise, and its budget.

The mechanism (DP-FedAvg, McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018; Flower's server-side fixed clipping uses the same noise scale): each update
``x_i`` (a model delta, a row of ``[n_clients, dim]``) is scaled to L2 norm at most ``C``
(``clipping_norm``), the clipped updates are summed and divided by ``m``
(``num_sampled_clients``, fixed in advance), and each coordinate gets Gaussian noise of standard
deviation ``sigma = z * C / m`` (``z``, ``noise_multiplier``)::

    out = (1/m) sum_i x_i min(1, C / ||x_i||) + N(0, sigma^2 I)

Sensitivity: adding or removing one client's update moves the clipped sum by at most ``C`` in L2,
so ``out`` moves by at most ``C / m``; the Gaussian mechanism with ``sigma = z * (C / m)`` is then
what the accountant analyses (add-or-remove-one neighbouring; a client sampled with probability
``q`` per round, Poisson sampling). This holds for the *unweighted* sum over the fixed ``m``: a
weighted mean moves by ``w_i C / sum(w)``, unbounded in the weights, so client weights are not
used with ``dp=`` (explicit ones raise), and the divisor is ``m`` even when ``n != m`` clients
came (then ``out`` is not the mean of the ``n``; with ``n == m`` it is).

Only the mean has a stated and implemented sensitivity here. The robust rules (median, Krum,
trimmed mean, ...) and pre-steps (NNM mixes updates) raise :class:`~bcfl_engine.errors.
DPUnsupported` with ``dp=``: their sensitivity is either the diameter of the update space or
depends on the other clients' updates, and nothing that is not proven is accounted.

Clipping costs no ``[n, d]`` write: the clip becomes a per-row coefficient of the sum
(``csrc/dp.cpp``: the rows' norms, then the plain weighted-mean kernel with the coefficients;
Triton: the clip rule's norm kernel, then the mean kernel with the coefficients; torch: float64
norms over column blocks, then one matrix-vector product). A row's scale is known only once the
whole row has been read, so ``x`` is read twice, except where the norms are already known: an
:class:`~bcfl_engine.updates.UpdateBatch` (what a round, or ``add``, fills) takes each row's
norm in the pass that checks it is finite (:attr:`~bcfl_engine.updates.UpdateBatch.norms`),
and ``be.aggregate(batch, dp=...)`` and a private round hand them to the native kernel, which
then reads ``x`` once.
The reference, :func:`clipped_mean_reference`, clips then sums, as the definition reads.
The noise (:mod:`bcfl_engine.dp_noise`) is drawn from keyed BLAKE3 under a fresh key from the
operating system; the native kernel adds it in the clipped mean's final write (the same bits as
:func:`add_noise_` after :func:`clipped_mean`), the other backends in one more pass. Its normals
can also be made ahead of the aggregate (:func:`prepare_noise`, the same bits for the same
draw), which a private round does when it is made, while it waits for its clients: the
aggregate then adds them in one read of 8 bytes a coordinate.

Accounting (:func:`epsilon`) uses Google's ``dp-accounting``: Renyi DP (Mironov 2017; the
sampled Gaussian of Mironov, Talwar, Zhang 2019) and privacy loss distributions (PLD, Koskela et
al. 2020; Doroshenko et al. 2022), both for the same event; the smaller epsilon is the budget
spent (both are upper bounds), and :class:`Accounting` says which one it was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import rules
from .backends import choose, dispatch
from .dp_kernels import KERNELS, cm_native
from .dp_noise import (
    NoiseGenerator,
    PreparedNoise,
    add_noise_,
    draw_key,
    noise_words,
    prepare_noise,
)
from .errors import DPUnsupported, InvalidArgument, MissingDependency, PayloadError
from .rules._common import (
    check_updates,
    raise_nonfinite,
)
from .updates import all_finite

__all__ = [
    "Accounting",
    "GaussianDP",
    "NoiseGenerator",
    "PreparedNoise",
    "account",
    "add_noise_",
    "clip_update",
    "clipped_mean",
    "clipped_mean_reference",
    "draw_key",
    "epsilon",
    "noise_words",
    "prepare_noise",
    "private_mean",
]

#: The rules whose sensitivity under ``dp=`` is stated (module docstring) and implemented.
SUPPORTED_RULES = ("mean",)


@dataclass(frozen=True)
class GaussianDP:
    """Central Gaussian DP of the mean (see the module docstring).

    Parameters
    ----------
    clipping_norm : ``C``, the L2 bound of each update, finite and > 0
    noise_multiplier : ``z`` >= 0; the noise's standard deviation is ``z * C / m``
    num_sampled_clients : ``m`` >= 1, the divisor of the clipped sum
    delta : the ``delta`` of the ``(epsilon, delta)`` guarantee, in (0, 1)
    budget : the most epsilon a task may spend (at ``delta``), or None (accounted, not capped)
    """

    clipping_norm: float
    noise_multiplier: float
    num_sampled_clients: int
    delta: float = 1e-5
    budget: float | None = None

    def __post_init__(self) -> None:
        def real(name: str, v: object, lo: float, strict: bool) -> None:
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            if not ok or (v <= lo if strict else v < lo):  # type: ignore[operator]
                bound = f"> {lo}" if strict else f">= {lo}"
                raise InvalidArgument(
                    f"GaussianDP: {name} must be a finite number {bound}; got {v!r}"
                )

        real("clipping_norm", self.clipping_norm, 0.0, True)
        real("noise_multiplier", self.noise_multiplier, 0.0, False)
        m = self.num_sampled_clients
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise InvalidArgument(f"GaussianDP: num_sampled_clients must be an int >= 1; got {m!r}")
        real("delta", self.delta, 0.0, True)
        if self.delta >= 1:
            raise InvalidArgument(f"GaussianDP: delta must be < 1; got {self.delta!r}")
        if self.budget is not None:
            real("budget", self.budget, 0.0, True)

    @property
    def noise_std(self) -> float:
        """``noise_multiplier * clipping_norm / num_sampled_clients``, per coordinate."""
        return self.noise_multiplier * self.clipping_norm / self.num_sampled_clients

    @property
    def sum_noise_std(self) -> float:
        """``noise_multiplier * clipping_norm``: the same noise at the scale of the clipped
        *sum* (what the parties of a multiparty round add, :mod:`bcfl_engine.he.mpnoise`)."""
        return self.noise_multiplier * self.clipping_norm

    def as_meta(self) -> dict[str, Any]:
        """The parameters as a round commits them (JSON numbers)."""
        return {
            "mechanism": "gaussian",
            "clipping_norm": float(self.clipping_norm),
            "noise_multiplier": float(self.noise_multiplier),
            "num_sampled_clients": self.num_sampled_clients,
            "delta": float(self.delta),
            "budget": None if self.budget is None else float(self.budget),
        }

    @classmethod
    def from_meta(cls, obj: object) -> GaussianDP:
        """The parameters a round committed; PayloadError if malformed."""
        keys = ("clipping_norm", "noise_multiplier", "num_sampled_clients", "delta", "budget")
        if not isinstance(obj, Mapping) or obj.get("mechanism") != "gaussian":
            raise PayloadError(f"round metadata: dp must be a gaussian mechanism; got {obj!r:.120}")
        try:
            return cls(**{k: obj[k] for k in keys})
        except KeyError as exc:
            raise PayloadError(f"round metadata: dp field {exc} is missing") from None
        except InvalidArgument as exc:
            raise PayloadError(f"round metadata: {exc}") from None


def check_rule(rule: str, pre: Sequence[Any] = (), params: Mapping[str, Any] | None = None) -> None:
    """DPUnsupported unless ``rule`` (with no pre-step and no extra parameter) has a stated and
    implemented sensitivity: only "mean"."""
    rules.get(rule)  # InvalidArgument for an unknown name
    if rule not in SUPPORTED_RULES:
        raise DPUnsupported(
            f"dp= with rule {rule!r}: its sensitivity is not stated and implemented; "
            f"supported: {', '.join(SUPPORTED_RULES)} (the clipped sum has sensitivity C)"
        )
    if pre:
        raise DPUnsupported(
            "dp= with pre-steps: the mechanism clips each update itself, and a mixing step "
            "(nnm) changes the sensitivity; pass pre=()"
        )
    if params:
        raise DPUnsupported(f"dp= with extra rule parameters {sorted(params)}")


def clip_update(x: Any, clipping_norm: float) -> tuple[torch.Tensor, float]:
    """A client's own clip, before it encrypts: ``(x min(1, C / ||x||)`` as float32 ``[d]``,
    ``||x||`` before the clip``)``, the norm in float64. The returned vector's float64 norm is at
    most ``C`` after float32 rounding (the factor is nudged down until it is).

    Under CKKS nobody sees an update, so a client that skips this cannot be detected: one
    unclipped update breaks the sensitivity ``C`` the noise is sized for. Where that matters run
    the bucketed robust round (``AggregationRound(secure="ckks", keys=..., rule="median")``),
    which bounds what one update moves, instead of (not with) ``dp=``. CKKS encoding adds up to
    the preset's precision per value after the clip (``sqrt(d) 2^-20`` in norm at most, against
    ``C``): left out of the sensitivity.
    """
    C = GaussianDP(clipping_norm, 0.0, 1).clipping_norm  # validates it
    v = torch.as_tensor(x).reshape(-1).to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise InvalidArgument("clip_update: the update has a non-finite value")
    norm = float(torch.linalg.vector_norm(v))
    factor = 1.0 if norm <= C else C / norm
    while True:
        out = (v * factor).to(torch.float32)
        if float(torch.linalg.vector_norm(out.double())) <= C:
            return out, norm
        factor = math.nextafter(factor * (1 - 2.0**-24), 0.0)


# ---- the clipped mean -----------------------------------------------------------------------


def clipped_mean_reference(x: torch.Tensor, clipping_norm: float, m: int) -> torch.Tensor:
    """Pure torch: :func:`~bcfl_engine.rules.clip_reference` of the rows, their sum in float64,
    divided by ``m`` -> float32 ``[d]``."""
    clipped = rules.clip_reference(x, max_norm=clipping_norm)
    return (clipped.double().sum(dim=0) / m).float()


def clipped_mean(
    x: torch.Tensor,
    clipping_norm: float,
    num_sampled_clients: int,
    *,
    backend: str | None = None,
    check: bool = True,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(1/m) sum_i x_i min(1, C / ||x_i||)`` of ``x`` ``[n, d]`` -> float32 ``[d]``, without
    noise (the deterministic part of :func:`private_mean`, which an audit recomputes).

    Norms accumulate in float64 in every backend (as :func:`~bcfl_engine.rules.clip`). A clipped
    row's norm is ``C`` up to float32 rounding of the scaled values (relative 1e-7).
    ``check``: reject non-finite updates (no pass of its own: they make the result non-finite).
    ``norms``: the rows' norms taken at intake (:attr:`~bcfl_engine.updates.UpdateBatch.norms`,
    the native kernel's bits), which the native backend uses instead of reading ``x`` for them
    (the same result); other backends take their own.
    """
    x = check_updates(x, "dp mean")
    dp = GaussianDP(clipping_norm, 0.0, num_sampled_clients)  # validates both
    kernel = choose("clipped_mean", KERNELS, x, backend)
    if kernel.backend == "native" and norms is not None:
        out = cm_native(x, dp.clipping_norm, dp.num_sampled_clients, norms=_norms(norms, x))
    else:
        out = dispatch(
            "clipped_mean", KERNELS, x, backend, float(dp.clipping_norm), dp.num_sampled_clients
        )
    if check and not all_finite(out):
        raise_nonfinite(x, "dp mean")
    return out


def _norms(norms: Any, x: torch.Tensor) -> torch.Tensor:
    """``norms`` checked as the native kernel reads them: float64 ``[n]`` on the CPU."""
    if (
        not isinstance(norms, torch.Tensor)
        or norms.dtype != torch.float64
        or tuple(norms.shape) != (x.shape[0],)
        or norms.device.type != "cpu"
    ):
        raise InvalidArgument(f"norms must be a float64 CPU tensor of shape ({x.shape[0]},)")
    return norms.contiguous()


def private_mean(
    x: torch.Tensor,
    dp: GaussianDP,
    *,
    backend: str | None = None,
    generator: NoiseGenerator | None = None,
    check: bool = True,
    norms: torch.Tensor | None = None,
    noise: PreparedNoise | None = None,
) -> torch.Tensor:
    """:func:`clipped_mean` plus ``N(0, dp.noise_std^2)`` per coordinate -> float32 ``[d]``.

    ``generator``: a :class:`NoiseGenerator` for tests; None draws a fresh key from the
    operating system (never reuse noise). ``norms``: as :func:`clipped_mean`'s. ``noise``: the
    normals of a draw made beforehand (:func:`prepare_noise`), used up here; then no
    ``generator``.
    """
    if not isinstance(dp, GaussianDP):
        raise InvalidArgument(f"dp must be a GaussianDP; got {type(dp).__name__}")
    x = check_updates(x, "dp mean")
    if noise is not None:
        return _with_prepared(x, dp, backend, check, norms, noise, generator)
    kernel = choose("clipped_mean", KERNELS, x, backend)
    if kernel.backend != "native" or dp.noise_std == 0:
        out = clipped_mean(
            x, dp.clipping_norm, dp.num_sampled_clients, backend=backend, check=check, norms=norms
        )
        return add_noise_(out, dp.noise_std, generator)
    # The noise in the clipped mean's final write (the same bits as add_noise_ after it): a
    # non-finite result is then a non-finite update (|noise| < 9.5 std), or an overflow past
    # float32's range, returned as it is (as add_noise_ would).
    key = draw_key(generator)
    given = None if norms is None else _norms(norms, x)
    out = cm_native(x, dp.clipping_norm, dp.num_sampled_clients, key, dp.noise_std, given)
    if check and not all_finite(out):
        raise_nonfinite(x, "dp mean")
    return out


def _with_prepared(
    x: torch.Tensor,
    dp: GaussianDP,
    backend: str | None,
    check: bool,
    norms: torch.Tensor | None,
    noise: PreparedNoise,
    generator: NoiseGenerator | None,
) -> torch.Tensor:
    """:func:`private_mean` with the normals of ``noise`` (checked, then used up)."""
    if not isinstance(noise, PreparedNoise):
        raise InvalidArgument(f"noise must be a PreparedNoise; got {type(noise).__name__}")
    if generator is not None:
        raise InvalidArgument("private_mean: prepared noise or a generator, not both")
    if noise.dim != x.shape[1]:
        raise InvalidArgument(
            f"the prepared noise has {noise.dim} coordinates; the updates {x.shape[1]}"
        )
    if noise.used:
        noise.take()  # raises: used before
    kernel = choose("clipped_mean", KERNELS, x, backend)
    C, m = dp.clipping_norm, dp.num_sampled_clients
    if kernel.backend == "native" and dp.noise_std != 0:
        given = None if norms is None else _norms(norms, x)
        out = cm_native(x, C, m, None, dp.noise_std, given, noise.take())
    else:
        out = clipped_mean(x, C, m, backend=backend, check=check, norms=norms)
        z = noise.take()
        if dp.noise_std != 0:  # float32 + float64 in place, the sum in float64, rounded once
            out.add_(z.to(out.device), alpha=dp.noise_std)
        return out
    if check and not all_finite(out):
        raise_nonfinite(x, "dp mean")
    return out


# ---- accounting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounting:
    """Epsilon spent at ``delta``: ``epsilon = min(rdp, pld)``, ``method`` the one that gave it."""

    epsilon: float
    method: str
    rdp: float
    pld: float
    delta: float


def _dp_accounting() -> Any:
    try:
        import dp_accounting
        from dp_accounting import pld as _pld  # noqa: F401
        from dp_accounting import rdp as _rdp  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(
            f"privacy accounting needs dp-accounting ({exc}); pip install 'bcfl_engine[dp]'"
        ) from None
    return dp_accounting


def _event(dpa: Any, runs: tuple[tuple[float, float, int], ...]) -> Any:
    parts = []
    for z, q, count in runs:
        gauss = dpa.GaussianDpEvent(z)
        one = gauss if q == 1.0 else dpa.PoissonSampledDpEvent(q, gauss)
        parts.append(dpa.SelfComposedDpEvent(one, count))
    return parts[0] if len(parts) == 1 else dpa.ComposedDpEvent(parts)


@functools.lru_cache(maxsize=256)
def _account(runs: tuple[tuple[float, float, int], ...], delta: float) -> Accounting:
    if any(z == 0.0 for z, _, _ in runs):
        return Accounting(math.inf, "none (noise multiplier 0)", math.inf, math.inf, delta)
    dpa = _dp_accounting()
    event = _event(dpa, runs)
    rdp = dpa.rdp.RdpAccountant()
    rdp.compose(event)
    eps_rdp = float(rdp.get_epsilon(delta))
    pld = dpa.pld.PLDAccountant()
    pld.compose(event)
    eps_pld = float(pld.get_epsilon(delta))
    if eps_pld < eps_rdp:
        return Accounting(eps_pld, "pld", eps_rdp, eps_pld, delta)
    return Accounting(eps_rdp, "rdp", eps_rdp, eps_pld, delta)


def account(rounds: Sequence[tuple[float, float]], delta: float) -> Accounting:
    """Epsilon at ``delta`` of the rounds ``[(noise_multiplier, sample_rate), ...]`` composed
    (each a Poisson-sampled Gaussian mechanism; ``sample_rate`` 1 is every client every round).
    Runs of equal rounds are composed as one self-composed event (same epsilon, less work)."""
    if not 0 < delta < 1:
        raise InvalidArgument(f"delta must be in (0, 1); got {delta!r}")
    runs: list[tuple[float, float, int]] = []
    for z, q in rounds:
        z, q = float(z), float(q)
        if not (math.isfinite(z) and z >= 0 and 0 < q <= 1):
            raise InvalidArgument(
                f"a round needs noise_multiplier >= 0 and sample_rate in (0, 1]; got {(z, q)}"
            )
        if runs and runs[-1][:2] == (z, q):
            runs[-1] = (z, q, runs[-1][2] + 1)
        else:
            runs.append((z, q, 1))
    if not runs:
        return Accounting(0.0, "none (no round)", 0.0, 0.0, delta)
    return _account(tuple(runs), float(delta))


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds of the Gaussian mechanism with
    ``noise_multiplier``, each client sampled with probability ``sample_rate`` per round: the
    smaller of dp-accounting's RDP and PLD bounds (:func:`account` says which)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise InvalidArgument(f"rounds must be an int >= 0; got {rounds!r}")
    return account([(noise_multiplier, sample_rate)] * rounds, delta).epsilon

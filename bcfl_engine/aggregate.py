"""``aggregate``: one call from any form of client updates to their aggregate."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import rules
from .errors import InvalidArgument
from .updates import ParamSpec, UpdateBatch

PreStep = str | tuple[str, dict[str, Any]]


def as_matrix(
    updates: Any, weights: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None, ParamSpec | None, bool]:
    """``(x [n, d], weights or None, spec to unflatten with or None, validated)`` of ``updates``.

    ``validated`` is True when every row was already checked finite on the way in.
    """
    if isinstance(updates, UpdateBatch):
        if len(updates) == 0:
            raise InvalidArgument("the batch is empty")
        w = updates.weights if weights is None else weights
        return updates.data, w, updates.spec, not updates.allow_nonfinite
    if isinstance(updates, np.ndarray):
        if updates.ndim != 2:
            raise InvalidArgument(f"an array of updates must be 2-D [n, d]; got {updates.shape}")
        with warnings.catch_warnings():
            # A read-only array (np.memmap mode='r', writeable=False) is wrapped without a
            # copy: the rules only read it, and aggregate refuses an in-place step on it.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(updates)), weights, None, False
    if isinstance(updates, torch.Tensor):
        if updates.dim() != 2:
            raise InvalidArgument(
                f"a tensor of updates must be 2-D [n, d]; got {tuple(updates.shape)}"
            )
        return updates, weights, None, False
    if _is_list(updates):
        batch = _list_batch(updates)
        return batch.data, weights, batch.spec, True
    raise InvalidArgument(
        "updates must be a [n, d] tensor or array, an UpdateBatch, or a list of state dicts / "
        f"arrays lists; got {type(updates).__name__}"
    )


def _is_list(updates: Any) -> bool:
    return isinstance(updates, Sequence) and not isinstance(updates, (str, bytes))


def _list_batch(updates: Sequence[Any]) -> UpdateBatch:
    """A list of state dicts / array lists as a batch (each one checked on the way in)."""
    if len(updates) == 0:
        raise InvalidArgument("no updates to aggregate")
    batch = UpdateBatch(ParamSpec.infer(updates[0]), len(updates))
    for i, u in enumerate(updates):
        batch.add(str(i), u)
    return batch


def aggregate(
    updates: Any,
    rule: str = "mean",
    f: int = 0,
    weights: Any = None,
    backend: str | None = None,
    pre: Sequence[PreStep] = (),
    dp: Any = None,
    generator: Any = None,
    noise: Any = None,
    **params: Any,
) -> Any:
    """Aggregate client updates with a rule.

    Parameters
    ----------
    updates : ``[n, d]`` tensor or ndarray, an :class:`UpdateBatch`, or a list of state dicts /
        lists of numpy arrays (Flower's NDArrays).
    rule : a name from :data:`bcfl_engine.rules.RULES` of kind "aggregate".
    f : the number of Byzantine clients to tolerate (the rule states its precondition).
    weights : ``[n]`` positive client weights, for weighted rules (mean, geometric_median). An
        UpdateBatch brings its own; unweighted rules ignore a batch's weights but reject
        explicit ones.
    backend : "torch", "native", "triton" or None (automatic; ``BCFL_BACKEND`` overrides).
    pre : pre-aggregation steps applied in order, each a name ("nnm") or ``(name, params)``
        (``("clip", {"max_norm": 1.0})``); ``f`` and ``backend`` are passed on where they apply.
    dp : a :class:`bcfl_engine.dp.GaussianDP`: each update clipped to ``dp.clipping_norm``, the
        clipped sum divided by ``dp.num_sampled_clients``, Gaussian noise added
        (:func:`bcfl_engine.dp.private_mean`). Only ``rule="mean"``, unweighted: other rules,
        pre-steps and explicit weights raise DPUnsupported; a batch's weights are not used.
    generator : with ``dp``, a :class:`bcfl_engine.dp.NoiseGenerator` (tests); None draws a
        fresh key from the operating system.
    noise : with ``dp``, a :class:`bcfl_engine.dp.PreparedNoise` (:func:`bcfl_engine.dp.
        prepare_noise`): the normals of a draw made beforehand, added here and used up.
    **params : extra parameters of the rule (``m`` for multi_krum, ``tau`` for
        centered_clipping, ...).

    Returns
    -------
    The aggregate in the structure of one update: a ``[d]`` float32 tensor for a tensor input,
    a ``[d]`` ndarray for an ndarray, a state dict or array list for lists of those.
    """
    if dp is not None:
        return _private(updates, rule, f, weights, backend, pre, dp, generator, noise, params)
    if noise is not None:
        raise InvalidArgument("noise= is the noise of a private mean: pass dp= with it")
    info = rules.get(rule)
    if info.kind != "aggregate":
        raise InvalidArgument(f"{rule!r} is a pre-aggregation step; pass it as pre=[{rule!r}]")
    explicit_weights = weights is not None
    x, w, spec, validated = as_matrix(updates, weights)
    if not info.weighted and explicit_weights:
        raise InvalidArgument(f"rule {rule!r} does not take client weights")
    if not info.takes_f and f:
        raise InvalidArgument(f"rule {rule!r} does not take f")
    for step in pre:
        name, step_params = (step, {}) if isinstance(step, str) else step
        pinfo = rules.get(name)
        if pinfo.kind != "pre":
            raise InvalidArgument(f"{name!r} is not a pre-aggregation step")
        kw = dict(step_params)
        if kw.get("inplace") and isinstance(updates, np.ndarray) and not updates.flags.writeable:
            raise InvalidArgument(f"{name}: inplace on a read-only array (writeable=False)")
        if pinfo.takes_f:
            kw.setdefault("f", f)
        x = pinfo.fn(x, backend=backend, check=not validated, **kw)
        validated = True
    kw = dict(params)
    if info.weighted and w is not None:
        kw["weights"] = w
    if info.takes_f:
        kw["f"] = f
    out = info.fn(x, backend=backend, check=not validated, **kw)
    return _shaped(out, updates, spec)


def _shaped(out: torch.Tensor, updates: Any, spec: ParamSpec | None) -> Any:
    """``out`` ``[d]`` in the structure of one of ``updates``."""
    if spec is not None:
        return spec.unflatten(out)
    if isinstance(updates, np.ndarray):
        return out.cpu().numpy()
    return out


def _private(
    updates: Any,
    rule: str,
    f: int,
    weights: Any,
    backend: str | None,
    pre: Sequence[PreStep],
    dp: Any,
    generator: Any,
    noise: Any,
    params: dict[str, Any],
) -> Any:
    """:func:`aggregate` with ``dp``: the checks, then :func:`bcfl_engine.dp.private_mean`."""
    from . import dp as dpmod
    from .errors import DPUnsupported

    dpmod.check_rule(rule, pre, params)
    if weights is not None:
        raise DPUnsupported(
            "dp= with client weights: a weighted mean's sensitivity grows with the weights; "
            "the private mean is unweighted"
        )
    if f:
        raise DPUnsupported(f"dp= with f={f}: the mean tolerates no Byzantine client")
    if _is_list(updates):
        updates = _list_batch(updates)  # (its spec shapes the result as one of the list)
    x, _, spec, validated = as_matrix(updates, None)
    # A batch's norms, taken at intake, spare the native kernel a read of x (None when stale).
    norms = updates.norms if isinstance(updates, UpdateBatch) else None
    out = dpmod.private_mean(
        x, dp, backend=backend, generator=generator, check=not validated, norms=norms, noise=noise
    )
    return _shaped(out, updates, spec)

"""Distance rules (Krum, Multi-Krum, Bulyan) of :mod:`bcfl_engine.distributed` on column shards.

The ``[n, n]`` distances are summed across the ranks' column shards, the selection runs on the
same matrix on every rank, and the selected rows are combined column by column. What is
bit-identical to one process and what is not is stated in :mod:`bcfl_engine.distributed`.
"""

from __future__ import annotations

from typing import Any

import torch

from .backends import native
from .distributed_comm import Layout, fold_in_rank_order, gather_objects, sum_in_rank_order
from .errors import BackendUnavailable
from .rules._distances import REFERENCE_BLOCK


def distance_rule(
    xc: torch.Tensor,
    layout: Layout,
    rule: str,
    f: int,
    m: int | None,
    kernel: str,
    group: Any,
) -> torch.Tensor:
    """Krum / Multi-Krum on column shards: partial distances, one sum in rank order, the
    selection (same on every rank), then the selected rows by columns: float32 ``[c_r]``."""
    from .rules._distances import checked, gram_to_sq_dists, krum_order

    n = layout.n
    if kernel == "torch":
        dist_ = _torch_distances(xc, n, group)
    else:
        p = xc[_global_pivot(xc, layout, group)].float().contiguous()
        part = _partial_gram(xc, p, kernel)
        dist_ = gram_to_sq_dists(sum_in_rank_order(part, group, "all-gather of partial Grams"))
    checked(dist_, xc, rule, check=False)
    if rule == "bulyan":
        return _bulyan(xc, dist_, f, kernel)
    idx = krum_order(dist_, f)[: 1 if rule == "krum" else m]
    if rule == "krum" or xc.shape[1] == 0:
        return xc[int(idx[0])].float() if rule == "krum" else xc.new_empty(0, dtype=torch.float32)
    return _select_mean(xc, idx, kernel)


def _bulyan(xc: torch.Tensor, dist_: torch.Tensor, f: int, kernel: str) -> torch.Tensor:
    """Bulyan's selection (iterated Krum on the summed distances, by the backend's own code),
    then its coordinate stage, by the backend's own kernel, on this rank's columns."""
    from .rules._distances import iterated_krum
    from .rules.bulyan import _select_native, bulyan_coordinates_reference

    n = xc.shape[0]
    theta, beta = n - 2 * f, n - 4 * f
    select = _select_native if kernel == "native" else iterated_krum  # the same rows
    idx = select(dist_, f, theta)
    if xc.shape[1] == 0:
        return xc.new_empty(0, dtype=torch.float32)
    if kernel == "native":
        out = torch.empty(xc.shape[1], dtype=torch.float32)
        native().bulyan_coordinates(xc.contiguous(), idx, beta, out)
        return out
    if kernel == "triton":
        from .kernels.bulyan import bulyan_coordinates
        from .rules.median import finite_columns

        out = bulyan_coordinates(xc.contiguous(), idx, beta)
        return finite_columns(out, xc, lambda part: bulyan_coordinates_reference(part, idx, beta))
    return bulyan_coordinates_reference(xc, idx, beta)


def _torch_distances(xc: torch.Tensor, n: int, group: Any) -> torch.Tensor:
    """:func:`.rules._distances.sq_dists_reference` of the whole matrix, the same bits: each
    rank's shard is whole ``REFERENCE_BLOCK`` blocks of the same grid (the layout's ``align``),
    each block's partial is the reference's own (:func:`~.rules._distances.reference_block`),
    and the partials are added in block order across ranks (:func:`fold_in_rank_order`).
    Holds this rank's ``[n, n]`` partials (``8 n^2`` bytes a block) until its turn."""
    from .rules._distances import reference_block

    parts = [
        reference_block(xc[:, j0 : j0 + REFERENCE_BLOCK])
        for j0 in range(0, xc.shape[1], REFERENCE_BLOCK)
    ]
    zero = torch.zeros(n, n, dtype=torch.float64, device=xc.device)
    upper = fold_in_rank_order(zero, parts, group)
    return upper + upper.T


def _global_pivot(xc: torch.Tensor, layout: Layout, group: Any) -> int:
    """The single-process pivot (:func:`.rules._distances.pivot`): its strided column sample
    (global columns ``0, s, 2s, ...``) gathered from the column shards in rank order."""
    from .rules._distances import pivot_of_sample, pivot_stride

    s = pivot_stride(layout.d)
    c0, c1 = layout.my_columns
    first = -(-c0 // s) * s
    local = xc[:, first - c0 :: s].double() if first < c1 else xc[:, :0].double()
    # Pickled: as CPU tensors (a CUDA tensor would be unpickled onto the sender's device).
    parts = gather_objects(local.cpu(), group, "exchange of the pivot sample")
    return pivot_of_sample(torch.cat(parts, dim=1))


def _partial_gram(xc: torch.Tensor, p: torch.Tensor, kernel: str) -> torch.Tensor:
    """``(X - p)(X - p)^T`` over this rank's columns, float64 ``[n, n]``, by the same Gram code
    as the single-process native / Triton paths of :mod:`.rules._distances`."""
    from .rules._distances import _finite_gram, _gram_blas, _symmetric

    n = xc.shape[0]
    if xc.shape[1] == 0:
        return torch.zeros(n, n, dtype=torch.float64, device=xc.device)
    xc = xc.contiguous()
    if kernel == "triton":
        from .kernels._distances import gram

        return _finite_gram(_symmetric(gram(xc, p)), xc, p)
    try:
        lib = native()
    except BackendUnavailable:
        return _finite_gram(_gram_blas(xc, p), xc, p)
    out = torch.empty(n, n, dtype=torch.float64)
    lib.gram_centered(xc, p, out)
    return _finite_gram(out, xc, p)


def _select_mean(xc: torch.Tensor, idx: torch.Tensor, kernel: str) -> torch.Tensor:
    """The mean of rows ``idx`` of ``xc`` by the backend Multi-Krum uses in one process."""
    if kernel == "native":
        from .rules.multi_krum import select_mean_native

        return select_mean_native(xc, idx)
    if kernel == "triton":
        from .kernels.multi_krum import select_mean

        return select_mean(xc.contiguous(), idx)
    return xc[idx].double().mean(dim=0).float()

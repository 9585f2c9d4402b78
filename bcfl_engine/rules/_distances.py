"""Pairwise squared distances of the updates, and the selections built on them.

Krum, Multi-Krum, Bulyan and NNM all start from the ``[n, n]`` matrix of squared distances
``D[i, j] = ||x_i - x_j||^2`` and then choose rows from it. This module holds both halves:

- :func:`sq_dists`: ``D`` in float64 by one of three backends. The torch reference sums
  ``(x_i - x_j)^2`` directly in float64 (the oracle). The native and Triton paths stream the
  Gram matrix ``G = X X^T`` over column blocks (memory ``O(n * block + n^2)``, not ``O(n d)``)
  and take ``D[i, j] = G_ii + G_jj - 2 G_ij``.
- the selections (:func:`krum_scores`, :func:`krum_order`, :func:`iterated_krum`,
  :func:`nearest`): pure torch on the small ``[n, n]`` matrix, shared by every backend, so that
  backends can differ only in ``D``. Ties are broken towards the lowest index.

Precision of the Gram path. ``G_ii + G_jj - 2 G_ij`` cancels: with updates that share a large
common component (FL updates do), float32 error in ``G`` becomes a large relative error in ``D``
and can change a selection. Two measures keep ``D`` within ~1e-6 of the float64 oracle
(relative to the distances themselves, not to the norms):

1. Every column block is centred on a *pivot* update before its product (distances do not
   change under translation). The pivot is a medoid of a strided sample of columns, so a
   far-away Byzantine update cannot become the centre and blow the centred norms up again
   (centring on the column mean would let one outlier at distance R move the centre by R/n).
2. Products are float32 within a block of columns (a few thousand: 512 per SIMD lane in the
   C++ kernel, ``GRAM_BLOCK`` through BLAS) and accumulate in float64 across blocks. A float64
   GEMM instead measured ~6x slower on 2 cores (0.63 s vs 0.10 s at n=64, d=1M), more than the
   whole float32 pass; float32 throughout would let the rounding of ``d`` terms reach ``D``.

What remains: a pair of updates both far from the pivot (two Byzantine updates close to each
other, far from the honest ones) has its distance only to ~1e-7 of their distance *from the
pivot*. Such a pair cannot decide a selection among updates near the pivot; the tests check
that selections match the float64 oracle with far outliers present.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch, native
from ..errors import BackendUnavailable
from ._common import DIST_BLOCK, RECHECK_BELOW, raise_nonfinite

# Without the extension: columns per block of the float32 Gram products through torch's BLAS
# (4096 x n=64 rows = 1 MiB; 2048 was 1.3x slower at n=64, d=1M, one thread, 8192 within 3%),
# and row panels of the upper triangle (rows [I, I+P) against [I, n)): P=64 at n=256 does 62% of
# the flops of a full X X^T but ran at 0.89 of its time, as small GEMMs run slower.
GRAM_BLOCK = 4096
GRAM_PANEL = 64
# Columns sampled (strided) to pick the pivot: enough to tell a cluster from far outliers.
PIVOT_SAMPLE = 1024
# Column block of the float64 reference: [n, 16384] float64 temporaries (8 MiB at n=64).
REFERENCE_BLOCK = 1 << 14


# ---- distances ------------------------------------------------------------------------------


def sq_dists_reference(x: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = sum_k (x[i, k] - x[j, k])^2`` in float64, directly (no Gram); ``[n, n]``.

    The sum across columns is defined by blocks: the upper triangles of
    :func:`reference_block` over ``REFERENCE_BLOCK``-column blocks at multiples of
    ``REFERENCE_BLOCK``, added in block order. :mod:`bcfl_engine.distributed` adds the same
    blocks in the same order across ranks, so its distances are these bits.
    """
    n, d = x.shape
    upper = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for j0 in range(0, d, REFERENCE_BLOCK):
        upper += reference_block(x[:, j0 : j0 + REFERENCE_BLOCK])
    return upper + upper.T


def reference_block(b: torch.Tensor) -> torch.Tensor:
    """The upper triangle (zeros elsewhere) of one block's ``sum_k (b[i, k] - b[j, k])^2``,
    float64 ``[n, n]``."""
    n = b.shape[0]
    b = b.double()
    out = torch.zeros(n, n, dtype=torch.float64, device=b.device)
    for i in range(n - 1):
        out[i, i + 1 :] = ((b[i + 1 :] - b[i]) ** 2).sum(dim=1)
    return out


def gram_to_sq_dists(gram: torch.Tensor) -> torch.Tensor:
    """``D = diag(G) + diag(G)^T - 2 G``, clamped at 0 (rounding), with an exact 0 diagonal."""
    g = gram.diagonal()
    dist = (g[:, None] + g[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def pivot(x: torch.Tensor) -> int:
    """A medoid of ``x`` on a strided sample of at most ~2 * PIVOT_SAMPLE columns.

    The row with the smallest sum of squared distances to its ``ceil(n / 2)`` nearest others:
    inside the majority cluster whenever a majority of the updates is close together.
    """
    return pivot_of_sample(x[:, :: pivot_stride(x.shape[1])].double())


def pivot_stride(d: int) -> int:
    """The stride of the columns :func:`pivot` samples from ``d`` columns."""
    return max(1, d // PIVOT_SAMPLE)


def pivot_of_sample(sample: torch.Tensor) -> int:
    """:func:`pivot` given its float64 sample ``[n, k]`` (columns ``0, s, 2s, ...`` of ``x``,
    ``s = pivot_stride(d)``), however the rows are held."""
    n = sample.shape[0]
    if n <= 2:
        return 0
    dist = gram_to_sq_dists((sample - sample[0]) @ (sample - sample[0]).T)
    return int(torch.argmin(krum_scores(dist, (n + 1) // 2)))


def _gram_blas(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(X - p)(X - p)^T`` by torch's BLAS on row panels of the upper triangle: float32
    products per block of columns, float64 sums across blocks."""
    n, d = x.shape
    gram = torch.zeros(n, n, dtype=torch.float64)
    buf = torch.empty(n, min(GRAM_BLOCK, d), dtype=torch.float32)
    for j0 in range(0, d, GRAM_BLOCK):
        k = min(GRAM_BLOCK, d - j0)
        # One pass converts the storage dtype and centres (p is float32, so f16/bf16 promote).
        b = torch.sub(x[:, j0 : j0 + k], p[j0 : j0 + k], out=buf[:, :k])
        for i0 in range(0, n, GRAM_PANEL):
            gram[i0 : i0 + GRAM_PANEL, i0:] += b[i0 : i0 + GRAM_PANEL] @ b[i0:].T
    return _symmetric(gram)


def sq_dists_native(x: torch.Tensor) -> torch.Tensor:
    """CPU fast path of :func:`sq_dists_reference`: the centred Gram, streamed over columns.

    The extension's symmetric kernel (``csrc/_distances.cpp``: upper tiles only) when it is
    built, else GEMMs through torch's BLAS (same float32-block / float64-sum numerics; 1.5-2x
    slower at n=64, d=1M and ~1.15x at n=256: it computes most of the lower triangle too).
    """
    x = x if x.is_contiguous() else x.contiguous()
    p = x[pivot(x)].float().contiguous()
    try:
        lib = native()
    except BackendUnavailable:
        return gram_to_sq_dists(_finite_gram(_gram_blas(x, p), x, p))
    n = x.shape[0]
    gram = torch.empty(n, n, dtype=torch.float64)
    lib.gram_centered(x, p, gram)
    return gram_to_sq_dists(_finite_gram(gram, x, p))


def sq_dists_triton(x: torch.Tensor) -> torch.Tensor:
    """GPU fast path of :func:`sq_dists_reference`: the Gram kernel of ``kernels/_distances.py``."""
    from ..kernels._distances import gram

    x = x if x.is_contiguous() else x.contiguous()
    p = x[pivot(x)].float().contiguous()
    return gram_to_sq_dists(_finite_gram(_symmetric(gram(x, p)), x, p))


def _finite_gram(gram: torch.Tensor, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``gram``, or where its float32 products overflowed (rows beyond ~1e19 from the pivot) or
    all underflowed (every row within ~1e-10 of the pivot: updates of 1e-30) the same centred
    Gram in float64, where no finite float32 input overflows (``(2 * 3.4e38)^2 * d`` is far
    below the float64 maximum) or underflows. Non-finite input gives a non-finite Gram either
    way, which :func:`checked` reports."""
    if not bool(torch.isfinite(p).all()):
        return gram
    if bool(torch.isfinite(gram).all()) and float(gram.diagonal().max()) >= RECHECK_BELOW:
        return gram
    if float(gram.diagonal().max()) == 0.0 and bool((x == p).all()):
        return gram  # all rows equal: every distance is 0
    n, d = x.shape
    out = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for j0 in range(0, d, DIST_BLOCK):
        b = x[:, j0 : j0 + DIST_BLOCK].double() - p[j0 : j0 + DIST_BLOCK].double()
        out += b @ b.T
    return out


def checked(dist: torch.Tensor, x: torch.Tensor, rule: str, check: bool) -> torch.Tensor:
    """``dist``, after rejecting non-finite input (with ``check``) without a pass of its own.

    A NaN or an infinity in row ``i`` makes ``D[i, :]`` non-finite in every backend (the
    reference sums ``(x_i - x_j)^2`` in float64; the Gram paths have ``G_ii`` non-finite, or
    everything when the pivot is that row), and finite input gives a finite ``D`` (the float64
    Gram of :func:`_finite_gram`). So only rows with a non-finite distance are scanned, to name
    the culprit."""
    if check:
        bad = ~torch.isfinite(dist).all(dim=1)
        if bool(bad.any()):
            raise_nonfinite(x, rule, bad.nonzero().reshape(-1))
    return dist


def _symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is that of ``upper``."""
    u = torch.triu(upper)
    return u + torch.triu(u, diagonal=1).T


DISTANCES = (
    Kernel("torch", sq_dists_reference),
    Kernel("native", sq_dists_native),
    Kernel("triton", sq_dists_triton),
)


def sq_dists(x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Squared pairwise distances of the rows of ``x`` ``[n, d]``: float64 ``[n, n]``."""
    return dispatch("sq_dists", DISTANCES, x, backend)


# ---- selections on D (every backend) --------------------------------------------------------


def krum_scores(dist: torch.Tensor, k: int) -> torch.Tensor:
    """``score_i = sum of the k smallest D[i, j], j != i``: float64 ``[n]`` (0 when k = 0)."""
    n = dist.shape[0]
    off = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))
    return off.sort(dim=1).values[:, :k].sum(dim=1)


def krum_order(dist: torch.Tensor, f: int) -> torch.Tensor:
    """All rows by increasing Krum score (``k = n - f - 2`` neighbours), ties by lowest index."""
    scores = krum_scores(dist, dist.shape[0] - f - 2)
    return torch.sort(scores, stable=True).indices


def iterated_krum(dist: torch.Tensor, f: int, theta: int) -> torch.Tensor:
    """Bulyan's selection: ``theta`` rows, each the Krum winner among those not yet chosen.

    With ``r`` rows remaining the score sums ``k_r = r - f - 2`` nearest distances, clamped to
    ``[1, r - 1]``: the last rounds leave ``r = 2f + 1`` rows, too few for Krum's ``r > 2f + 2``.
    Returns the indices in the order chosen; ties go to the lowest index.
    """
    n = dist.shape[0]
    inf = torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device)
    # Sort every row once (O(n^2 log n)); each step then takes, per row, its first k neighbours
    # still remaining (O(n^2)), instead of sorting the remaining sub-matrix at every step.
    vals, order = (dist + torch.diag(inf)).sort(dim=1)
    alive = torch.ones(n, dtype=torch.bool, device=dist.device)
    chosen = []
    for r in range(n, n - theta, -1):
        k = min(max(r - f - 2, 1), r - 1)
        keep = alive[order]
        rank = keep.cumsum(dim=1)
        take = keep & (rank <= k)
        # Compact the k values of each row to the front, so that rows with equal neighbour
        # distances sum them in the same order and tie exactly (the lowest index then wins).
        first = torch.zeros(n, k, dtype=dist.dtype, device=dist.device)
        rows, _ = take.nonzero(as_tuple=True)
        first[rows, rank[take] - 1] = vals[take]
        scores = torch.where(alive, first.sum(dim=1), inf)
        win = int(torch.argmin(scores))  # the first of equal minima
        chosen.append(win)
        alive[win] = False
    return torch.tensor(chosen, dtype=torch.int64)


def nearest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """For each row its ``k`` nearest rows, itself first, then by distance and index: ``[n, k]``."""
    d = dist.clone()
    d.fill_diagonal_(-1.0)
    return torch.sort(d, dim=1, stable=True).indices[:, :k]

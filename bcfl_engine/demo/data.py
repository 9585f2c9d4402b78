"""Real medical data sets that ship with scikit-learn, split non-IID across hospitals.

- ``breast_cancer``: Wisconsin diagnostic breast cancer (569 patients, 30 features of a fine
  needle aspirate, malignant or benign); a classification task scored by accuracy.
- ``diabetes``: Efron et al. 2004 (442 patients, 10 baseline variables, disease progression
  one year later); a regression task scored by RMSE in the target's units.

Hospitals see different patient mixes: each label (for diabetes, each quartile of the target)
is spread across hospitals by Dirichlet(``alpha``) proportions (Hsu et al., "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification", 2019); a
smaller ``alpha`` is more skewed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgument, MissingDependency

DATASETS = ("breast_cancer", "diabetes")
MIN_PER_CLIENT = 8


@dataclass
class FederatedData:
    """One data set split across hospitals.

    Attributes
    ----------
    name : "breast_cancer" | "diabetes"
    task : "classification" | "regression"
    clients : per hospital ``(x [m_i, features] float32, y [m_i] float32)``
    test : the held-out ``(x, y)`` every model is scored on
    n_features : the number of input features
    y_scale : regression targets are standardized; multiply an error by this for the target's units
    """

    name: str
    task: str
    clients: list[tuple[torch.Tensor, torch.Tensor]]
    test: tuple[torch.Tensor, torch.Tensor]
    n_features: int
    y_scale: float = 1.0

    @property
    def metric(self) -> str:
        """The score reported per round: "accuracy" (higher is better) or "rmse" (lower)."""
        return "accuracy" if self.task == "classification" else "rmse"


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise MissingDependency(
            f"the demo needs scikit-learn ({exc}); pip install 'bcfl_engine[demo]'"
        ) from None
    if name == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
        return x, y.astype(np.float64), "classification"
    if name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
        return x, y.astype(np.float64), "regression"
    raise InvalidArgument(f"dataset must be one of {DATASETS}; got {name!r}")


def dirichlet_split(
    groups: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Indices per client: each group's members spread by Dirichlet(alpha) proportions.

    Redraws until every client has at least :data:`MIN_PER_CLIENT` samples (a hospital with
    almost no patients does not train a model worth sending).
    """
    if n_clients * MIN_PER_CLIENT > len(groups):
        raise InvalidArgument(
            f"{len(groups)} training samples cannot give {n_clients} hospitals "
            f"{MIN_PER_CLIENT} samples each; use at most {len(groups) // MIN_PER_CLIENT} clients"
        )
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for g in np.unique(groups):
            members = rng.permutation(np.flatnonzero(groups == g))
            share = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for c, piece in enumerate(np.split(members, cuts)):
                parts[c].extend(piece.tolist())
        if min(len(p) for p in parts) >= MIN_PER_CLIENT:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise InvalidArgument(
        f"alpha={alpha} is too skewed to give every hospital {MIN_PER_CLIENT} samples"
    )


def load(
    name: str = "breast_cancer",
    clients: int = 10,
    *,
    alpha: float = 1.0,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> FederatedData:
    """Load ``name``, hold out ``test_fraction`` for scoring, split the rest across ``clients``.

    Features are standardized with the training pool's mean and deviation (the consortium's
    agreed normalization); regression targets too, and ``y_scale`` converts errors back.
    """
    if not isinstance(clients, int) or clients < 1:
        raise InvalidArgument(f"clients must be an int >= 1; got {clients!r}")
    if not 0 < test_fraction < 1:
        raise InvalidArgument(f"test_fraction must be in (0, 1); got {test_fraction}")
    if not alpha > 0:
        raise InvalidArgument(f"alpha must be > 0; got {alpha}")
    x, y, task = _raw(name)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = round(test_fraction * len(y))
    test_idx, train_idx = order[:n_test], order[n_test:]
    mu, sd = x[train_idx].mean(0), x[train_idx].std(0) + 1e-12
    x = (x - mu) / sd
    y_scale = 1.0
    if task == "regression":
        y_mu, y_sd = y[train_idx].mean(), y[train_idx].std()
        y = (y - y_mu) / y_sd
        y_scale = float(y_sd)
        quartiles = np.quantile(y[train_idx], [0.25, 0.5, 0.75])
        groups = np.searchsorted(quartiles, y[train_idx])
    else:
        groups = y[train_idx].astype(np.int64)
    split = dirichlet_split(groups, clients, alpha, rng)

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(x[idx], dtype=torch.float32), torch.tensor(y[idx], dtype=torch.float32)

    return FederatedData(
        name=name,
        task=task,
        clients=[tensors(train_idx[s]) for s in split],
        test=tensors(test_idx),
        n_features=x.shape[1],
        y_scale=y_scale,
    )

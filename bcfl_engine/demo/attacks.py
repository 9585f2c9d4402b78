"""Byzantine hospitals: what a compromised or faulty participant sends instead of its update.

- ``sign_flip``: the update reversed and amplified, ``-scale * u`` (Damaskinos et al.,
  "AGGREGATHOR", MLSys 2019; Allen-Zhu et al. 2021 use the same reversal).
- ``scaled_noise``: Gaussian noise ``scale`` times the update's RMS, carrying no signal
  (the "Gaussian" attack of Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017).
- ``label_flip``: honest training on poisoned labels (benign <-> malignant; a regression
  target negated), the data-poisoning attack of Biggio et al., ICML 2012 / Tolpegin et al.,
  "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020.

``mix`` gives the Byzantine hospitals these attacks in turn.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgument

ATTACKS = ("sign_flip", "scaled_noise", "label_flip")
SIGN_FLIP_SCALE = 10.0
NOISE_SCALE = 20.0


def byzantine_count(n_clients: int, fraction: float) -> int:
    """How many of ``n_clients`` are Byzantine for a ``fraction`` in [0, 0.5)."""
    if not 0 <= fraction < 0.5:
        raise InvalidArgument(f"the Byzantine fraction must be in [0, 0.5); got {fraction}")
    return int(np.floor(fraction * n_clients + 1e-9))


def assign(n_clients: int, fraction: float, attack: str = "mix", seed: int = 0) -> dict[int, str]:
    """Which hospitals are Byzantine and how: ``{client index: attack}``, drawn with ``seed``."""
    if attack != "mix" and attack not in ATTACKS:
        raise InvalidArgument(f"attack must be 'mix' or one of {ATTACKS}; got {attack!r}")
    k = byzantine_count(n_clients, fraction)
    chosen = sorted(
        np.random.default_rng(seed + 7).choice(n_clients, size=k, replace=False).tolist()
    )
    return {
        c: (ATTACKS[i % len(ATTACKS)] if attack == "mix" else attack) for i, c in enumerate(chosen)
    }


def poison_labels(y: torch.Tensor, task: str) -> torch.Tensor:
    """Labels a label-flipping hospital trains on: ``1 - y`` (binary) or ``-y`` (standardized)."""
    return 1.0 - y if task == "classification" else -y


def sign_flip(update: torch.Tensor, scale: float = SIGN_FLIP_SCALE) -> torch.Tensor:
    """``-scale * update``."""
    return -scale * update


def scaled_noise(update: torch.Tensor, seed: int, scale: float = NOISE_SCALE) -> torch.Tensor:
    """Gaussian noise with standard deviation ``scale * rms(update)`` (no signal at all)."""
    g = torch.Generator().manual_seed(seed)
    rms = float(update.float().pow(2).mean().sqrt()) or 1e-3
    return torch.randn(update.shape, generator=g) * (scale * rms)


def corrupt(attack: str, update: torch.Tensor, seed: int) -> torch.Tensor:
    """The update a hospital running ``attack`` sends, from the update it trained.

    ``label_flip`` acts on the training data (:func:`poison_labels`), so its update passes
    through unchanged here.
    """
    if attack == "sign_flip":
        return sign_flip(update)
    if attack == "scaled_noise":
        return scaled_noise(update, seed)
    if attack == "label_flip":
        return update
    raise InvalidArgument(f"unknown attack {attack!r}; known: {ATTACKS}")

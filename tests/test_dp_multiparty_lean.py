"""Distributed DP noise (bcfl_engine.he.mpnoise, bcfl_engine.dp_shares) on lean aggregates under a
"lean16" multiparty key, the demo's: the decrypted aggregate minus the plaintext sum carries the
declared standard deviation (within 2%), N-of-N and 3-of-5; without noise the same key decrypts
within its precision."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.he import lean_wire
from bcfl_engine.he import multiparty as mp

pytest.importorskip("tenseal")

PARTIES = [1, 2, 3, 4, 5]
D = 4 * 8192  # four paired ciphertexts at N = 8192: 32768 noisy values an aggregate
SIGMA = 0.25  # far above the key's own error (2^-5 on a sum), far below its headroom / 64 (32)


def check_noise(noise: np.ndarray, sigma: float, tol: float = 0.02) -> None:
    """The sample std within ``tol`` of ``sigma`` and the mean within 4 standard errors of 0.
    2% is 5.1 standard errors of the sample std at 32768 values (sigma / sqrt(2 (d - 1)))."""
    d = noise.size
    std, mean = float(noise.std()), float(noise.mean())
    assert abs(std / sigma - 1) <= tol, (std, sigma, d)
    assert abs(mean) <= 4 * sigma / math.sqrt(d), (mean, sigma, d)


@pytest.fixture(scope="module", params=[None, 3], ids=["5-of-5", "3-of-5"])
def setup(request: Any) -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i, preset="lean16") for i in PARTIES]
    public, _ = mp.local_setup(parties, threshold=request.param)
    rng = np.random.default_rng(12)
    xs = [rng.uniform(-1, 1, D) for _ in range(3)]
    payloads = [he.encrypt(x, public) for x in xs]
    assert all(p[:4] == lean_wire.LEAN_MAGIC for p in payloads)  # lean payloads, not stock ones
    agg = he.aggregate(payloads, [2, 1, 3], context=public)
    active = PARTIES if request.param is None else [1, 3, 4]
    plain = 2 * xs[0] + xs[1] + 3 * xs[2]
    return dict(parties=parties, payloads=payloads, agg=agg, active=active, plain=plain)


def _decrypt(s: dict[str, Any], sigma: float | None) -> np.ndarray:
    shares = [
        mp.KeyShare(p.party, p.preset, p._seed, shamir=p._shamir).decryption_share(
            s["agg"],
            contributions=s["payloads"],
            active=s["active"],
            min_clients=3,
            weights=[2, 1, 3],
            dp_sigma=sigma,
        )
        for p in s["parties"]
        if p.party in s["active"]
    ]  # fresh parties (same seeds, empty logs): one request with and one without noise
    return mp.combine_decryption(s["agg"], shares)


def test_the_decrypted_lean_sum_carries_the_declared_noise(setup: dict[str, Any]) -> None:
    s = setup
    out = _decrypt(s, SIGMA)
    assert out.shape == (D,)
    check_noise(out - s["plain"], SIGMA)
    clean = _decrypt(s, None)
    assert np.abs(clean - s["plain"]).max() <= mp.precision(len(s["active"]), "lean16")

"""Multiparty presets for a stated smudging margin: the smudging noise is the preset's
(Preset.smudge_bits), and "threshold16" (16-bit margin, one 60-bit prime, paired compact
payloads) decrypts collectively within its stated precision at 15 bytes per parameter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he import mpcontext, presets
from bcfl_engine.he import multiparty as mp

ts = pytest.importorskip("tenseal")
PARTIES = [1, 2, 3]
D = 8192  # one paired ciphertext at N = 8192


def test_smudging_noise_is_a_property_of_the_preset() -> None:
    assert set(mp.MULTIPARTY_PRESETS) == {"threshold", "threshold16"}
    for name in mp.MULTIPARTY_PRESETS:
        p = presets.get(name)
        assert p.multiparty and p.smudge_bound == math.isqrt(3 << (2 * p.smudge_bits))
        assert (p.smudge_margin > 0 and f"{p.smudge_margin}-bit" in p.note) or name == "threshold"
    assert mpcontext.SMUDGE_BOUND == presets.get("threshold").smudge_bound == math.isqrt(3 << 100)
    assert presets.get("threshold16").smudge_bits == 30
    assert not presets.get("lean").multiparty and presets.get("lean").smudge_bound == 0
    with pytest.raises(InvalidArgument, match="smudging"):
        mp.KeyShare.generate(1, "lean")


def test_threshold16_states_what_it_gives() -> None:
    p = presets.get("threshold16")
    assert p.security_bits == 128 and p.pair and p.payload_primes == 1
    assert p.bytes_per_parameter() == 15.0
    assert p.headroom_weight_sum is not None and p.headroom_weight_sum >= 1000
    # the margin: sigma 2^30 over 5.5 standard deviations of the noise of 1,000 fresh payloads
    # under 8 parties (21.3 sqrt(parties) each, SEAL's divide-by-the-special-prime rounding)
    worst = 5.5 * math.sqrt(8192 * 8 * (2 / 3) / 12) * math.sqrt(1000)
    assert p.smudge_bits - math.log2(worst) >= p.smudge_margin


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i, preset="threshold16") for i in PARTIES]
    public, _crs = mp.local_setup(parties)  # runs the known-answer test
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, D) for _ in range(4)]
    payloads = [he.encrypt(x, public) for x in xs]
    return dict(parties=parties, public=public, xs=xs, payloads=payloads)


def test_threshold16_payloads_are_paired_compact_at_15_bytes(setup: dict[str, Any]) -> None:
    assert abs(len(setup["payloads"][0]) / D - 15.0) < 0.02


def test_threshold16_weighted_sum_decrypts_within_precision_with_its_smudging(
    setup: dict[str, Any],
) -> None:
    w = [1, 5, 2, 7]
    agg = he.aggregate(setup["payloads"], w, context=setup["public"])
    shares = [
        p.decryption_share(agg, contributions=setup["payloads"], active=PARTIES, weights=w)
        for p in setup["parties"]
    ]
    got = mp.combine_decryption(agg, shares)[:D]
    expected = sum(wi * x for wi, x in zip(w, setup["xs"], strict=True))
    err = float(np.abs(got - expected).max())
    assert err <= mp.precision(len(PARTIES), "threshold16")
    # The smudging noise of sigma 2^30 shows: error ~ 2^30 sqrt(3 N / 2) / 2^47 a value (std
    # 8.5e-4); without it the error would be ~1e-10 (the ciphertext's own noise).
    assert err > 1e-4, err


def test_info_table_states_each_multiparty_preset_smudging() -> None:
    lines = presets.table()
    for name in mp.MULTIPARTY_PRESETS:
        p = presets.get(name)
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        assert f"smudging 2^{p.smudge_bits} ({p.smudge_margin}-bit margin)" in line
        assert f"{p.bytes_per_parameter():.2f}" in line

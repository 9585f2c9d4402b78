"""Multiparty presets for a stated smudging margin: the smudging noise is the preset's
(Preset.smudge_bits); "threshold16" (16-bit margin, one 60-bit prime, paired compact payloads)
decrypts collectively within its stated precision at 15 bytes per parameter, and "lean16" (the
same margin on lean payloads switched to 2^58) at 11.25: its parties check the lifted
aggregate's c1 against the lean contributions' c1 summed mod 2^58 and lifted."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he import mpcontext, presets, wire
from bcfl_engine.he import multiparty as mp

ts = pytest.importorskip("tenseal")
PARTIES = [1, 2, 3]
D = 8192  # one paired ciphertext at N = 8192


def test_smudging_noise_is_a_property_of_the_preset() -> None:
    assert set(mp.MULTIPARTY_PRESETS) == {"threshold", "threshold16", "lean16"}
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


@pytest.fixture(scope="module")
def lean16() -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i, preset="lean16") for i in PARTIES]
    public, _crs = mp.local_setup(parties)
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, D) for _ in range(4)]
    payloads = [he.encrypt(x, public) for x in xs]
    return dict(parties=parties, public=public, xs=xs, payloads=payloads)


def test_lean16_states_what_it_gives(lean16: dict[str, Any]) -> None:
    from bcfl_engine.he import lean_wire

    p = presets.get("lean16")
    assert p.lean and p.multiparty and p.pair and p.security_bits == 128
    assert p.bytes_per_parameter() == 11.25 <= 12
    assert len(lean16["payloads"][0]) / D <= 11.27  # 84 header bytes over 8,192 reals
    layout = lean_wire.layout_of(lean16["payloads"][0])
    assert (layout.b, layout.k, layout.max_weight_sum) == (58, 26, 1000)
    assert lean_wire.headroom_weight_sum(layout.q0, p.scale, 1.0, True) >= 1000
    # the margin: sigma 2^31 over 5.5 standard deviations of the secret-dependent noise of
    # 1,000 payloads, 8 parties: the switch's c1 s rounding (21.3 sqrt(8)) and the fresh noise
    # (21.3 sqrt(8), times 2^58 / q_0), lifted back to q_0 (times q_0 / 2^58 ~ 2)
    one = math.sqrt(8192 * 8 * (2 / 3) / 12)
    worst = 5.5 * math.hypot(one, one / 2) * 2 * math.sqrt(1000)
    assert p.smudge_bits - math.log2(worst) >= p.smudge_margin


def test_lean16_weighted_sum_decrypts_collectively(lean16: dict[str, Any]) -> None:
    w, payloads = [2, 1, 0, 9], lean16["payloads"]
    agg = he.aggregate(payloads, w, context=lean16["public"])
    shares = [
        p.decryption_share(agg, contributions=payloads, active=PARTIES, weights=w, min_clients=3)
        for p in lean16["parties"]
    ]
    got = mp.combine_decryption(agg, shares)[:D]
    expected = sum(wi * x for wi, x in zip(w, lean16["xs"], strict=True))
    err = float(np.abs(got - expected).max())
    assert 1e-4 < err <= mp.precision(len(PARTIES), "lean16"), err  # smudging 2^31 shows


def test_lean16_parties_refuse_what_is_not_the_lean_sum(lean16: dict[str, Any]) -> None:
    from bcfl_engine.errors import DecryptionRefused

    payloads, party = lean16["payloads"], lean16["parties"][0]
    agg = he.aggregate(payloads, context=lean16["public"])
    # one client's payload, lifted: the decryption oracle
    one = he.aggregate(payloads[:1], context=lean16["public"])
    with pytest.raises(DecryptionRefused, match="not the sum"):
        party.decryption_share(one, contributions=payloads, active=PARTIES)
    with pytest.raises(DecryptionRefused, match="not the sum"):
        party.decryption_share(agg, contributions=payloads, active=PARTIES, weights=[1, 1, 1, 2])
    with pytest.raises(DecryptionRefused, match="1 distinct"):
        party.decryption_share(agg, contributions=[payloads[0]] * 4, active=PARTIES)
    party.decryption_share(agg, contributions=payloads, active=PARTIES, min_clients=4)


def test_wide_switch_sum_and_lift_equal_the_references() -> None:
    """b = 58 (past the float64 estimates' 50 bits): switch, sum and lift in C++ (128-bit
    division and products) and on the torch / numpy references, each exact."""
    import torch

    from bcfl_engine.backends import _load_native
    from bcfl_engine.errors import BackendUnavailable
    from bcfl_engine.he import lean

    q0 = (1 << 59) - (1 << 20) + 1  # odd, below 2^59
    rng = np.random.default_rng(9)
    x = rng.integers(0, q0, (3, 2, 67), dtype=np.uint64)
    x[0, 0, :4] = [0, 1, q0 - 1, q0 // 2]
    got = lean.switch(torch.from_numpy(x.view(np.int64)), q0, 58, 26)
    assert np.array_equal(got.numpy().view(np.uint64), lean.switch_reference(x, q0, 58, 26))
    y = lean.switch_reference(x, q0, 58, 0)
    w = [3, (1 << 58) - 1, 1000]
    s = lean.lean_sum(torch.from_numpy(y.view(np.int64)), 58, w)
    assert np.array_equal(s.numpy().view(np.uint64), lean.sum_reference(y, 58, w))
    assert np.array_equal(lean.lift(y, q0, 58), lean.lift_reference(y, q0, 58))
    built = _load_native()[0] is not None  # CI builds the extension; a pure-Python install not
    for backend in ("torch", "native") if built else ("torch",):
        got = lean.switch(torch.from_numpy(x.view(np.int64)), q0, 58, 26, backend=backend)
        assert np.array_equal(got.numpy().view(np.uint64), lean.switch_reference(x, q0, 58, 26))
    with pytest.raises(BackendUnavailable, match="b <= 50"):
        lean.switch(torch.from_numpy(x.view(np.int64)), q0, 58, 26, backend="triton")
    for backend in ("torch", "native") if built else ("torch",):
        s = lean.lean_sum(torch.from_numpy(y.view(np.int64)), 58, w, backend=backend)
        assert np.array_equal(s.numpy().view(np.uint64), lean.sum_reference(y, 58, w))
    with pytest.raises(BackendUnavailable, match="b <= 50"):
        lean.lean_sum(torch.from_numpy(y.view(np.int64)), 58, w, backend="triton")
    for backend in ("native", "numpy") if built else ("numpy",):
        assert np.array_equal(lean.lift(y, q0, 58, backend=backend), lean.lift_reference(y, q0, 58))


def test_bench_reports_each_preset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/bench_mp_presets.py on 3 clients and 2 parties: one row per preset, its bytes
    per parameter as stated, bits on the mean within the stated precision."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mp_presets.py"
    spec = importlib.util.spec_from_file_location("bench_mp_presets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["bench", "--presets", "threshold16", "lean16", "--clients", "3", "--parties", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[2:]}
    for name in ("threshold16", "lean16"):
        p = presets.get(name)
        assert abs(float(rows[name][2]) - p.bytes_per_parameter()) < 0.02
        assert 2.0 ** -float(rows[name][3]) * 3 <= mp.precision(2, name)


def test_wide_payloads_unpack_and_sum_fused_as_the_two_pass_path(lean16: dict[str, Any]) -> None:
    """lean16's rows of 32 and 58 bits: C++ unpacking (a 58-bit value can span 9 bytes) and the
    fused sum equal the Python unpacking and the torch sum bit for bit."""
    from bcfl_engine.backends import _load_native
    from bcfl_engine.he import lean_wire
    from bcfl_engine.he.lean_aggregate import aggregate_lean

    if _load_native()[0] is None:
        pytest.skip("the C++ extension is not built (CI builds it)")
    blob = lean16["payloads"][1]
    layout = lean_wire.layout_of(blob)
    native = lean_wire.parse(blob, layout)
    body, pos = memoryview(blob), lean_wire.HEADER.size
    for c in range(layout.ciphertexts):
        for p, bits in ((0, layout.b - layout.k), (1, layout.b)):
            size = layout.poly_degree * bits // 8
            want = wire.unpack_bits(body[pos : pos + size], bits, layout.poly_degree)
            assert np.array_equal(native[c, p], want << np.uint64(layout.k if p == 0 else 0))
            pos += size
    payloads, w = lean16["payloads"], [3, 1, 4, 1]
    fused = aggregate_lean(payloads, w, context=lean16["public"])
    assert fused == aggregate_lean(payloads, w, context=lean16["public"], backend="torch")

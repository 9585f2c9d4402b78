"""The lean preset end to end: 1,000 clients' payloads aggregate and decrypt to their mean within
2^-20 at <= 10 bytes per parameter; the headroom is checked on both sides."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.errors import HeadroomExceeded, InvalidWeight, PayloadError
from bcfl_engine.he import lean_wire, presets

D = 8192  # one paired ciphertext at N = 8192


@functools.lru_cache(maxsize=1)
def keys() -> he.Keys:
    return he.generate_keys("lean")


def test_preset_states_its_numbers() -> None:
    p = presets.get("lean")
    assert p.lean and p.pair and p.security_bits == 128
    assert p.bytes_per_parameter() <= 10.0 and p.bytes_per_parameter() == 9.5
    assert p.bound == 1.0 and p.max_weight_sum == 1000
    assert p.headroom_weight_sum is not None and p.headroom_weight_sum >= p.max_weight_sum
    assert p.mean_precision <= 2.0**-20
    for word in ("20 bits", "1,000", "|x| <= 1", "headroom"):
        assert word in p.note


def test_real_q0_holds_the_stated_headroom() -> None:
    p, info = presets.get("lean"), keys().info
    (q0,) = info.lowest.primes
    assert q0 >= 2**60 * (1 - 2.0**-20)  # what Preset.headroom assumes of SEAL's prime
    assert q0 / (2 * p.scale) >= p.headroom
    assert lean_wire.headroom_weight_sum(q0, p.scale, 1.0, True) >= p.max_weight_sum


def test_thousand_clients_mean_within_2_to_the_minus_20() -> None:
    """1,000 distinct encryptions (no repeats: repeated payloads would correlate the noise)."""
    pub, rng = keys().public_context(), np.random.default_rng(0)
    total = np.zeros(D)
    blobs = []
    for _ in range(1000):
        x = rng.uniform(-1, 1, D)
        total += x
        blobs.append(he.encrypt(x, pub))
    assert len(blobs[0]) / D <= 10.0, f"{len(blobs[0]) / D:.3f} bytes per parameter"
    mean = he.decrypt(he.aggregate(blobs, context=pub), keys().secret_context) / 1000
    err = np.abs(mean - total / 1000)
    assert err.max() < 2.0**-20, f"max error 2^{math.log2(err.max()):.2f} at {int(err.argmax())}"


@pytest.fixture(scope="module")
def few() -> tuple[list[np.ndarray], list[bytes]]:
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-1, 1, 3 * D + 5) for _ in range(5)]  # 4 ciphertexts, the last one partial
    return xs, [he.encrypt(x, keys().public_context()) for x in xs]


@pytest.mark.parametrize("path", ["fused", "native", "torch", "triton"])
def test_every_backend_gives_the_same_aggregate(path: str, few: tuple) -> None:
    xs, blobs = few
    w = [1, 7, 0, 300, 2]
    backend = None if path == "fused" else path
    if path == "native":
        from bcfl_engine.he.lean_aggregate import aggregate_lean

        got = aggregate_lean(
            blobs, w, backend="native", block=2, fused=False
        )  # the two-pass path, blocks of 2
    else:
        got = he.aggregate(blobs, w, context=keys().public_context(), backend=backend)
    lay = lean_wire.layout_of(blobs[0])
    from bcfl_engine.he import lean

    want_vals = lean.sum_reference(np.stack([lean_wire.parse(b, lay) for b in blobs]), lay.b, w)
    assert got == lean_wire.to_tenseal(want_vals, lay)
    out = he.decrypt(got, keys().secret_context)
    ref = sum(wi * x for wi, x in zip(w, xs, strict=True))
    assert out.shape == ref.shape and np.abs(out - ref).max() < 310 * 2.0**-14


def test_weight_sum_over_the_headroom_is_refused_before_anything_is_read(few: tuple) -> None:
    _, blobs = few
    broken = [blobs[0], b"not a payload", *blobs[2:]]
    with pytest.raises(HeadroomExceeded, match="1001"):
        he.aggregate(broken, [1, 1, 1, 998, 0])  # the headroom check comes before parsing
    with pytest.raises(HeadroomExceeded, match="1001"):
        he.aggregate([blobs[0]] * 1001)
    with pytest.raises(InvalidWeight, match="integer"):
        he.aggregate(blobs, [1, 0.5, 1, 1, 1])
    with pytest.raises(PayloadError, match="client 1"):
        he.aggregate(broken, [1, 1, 1, 997, 0])
    assert len(he.aggregate([blobs[0]] * 1000)) > 0  # at the bound: accepted


def test_client_refuses_values_beyond_the_bound() -> None:
    pub = keys().public_context()
    x = np.zeros(10)
    x[3] = 1.0 + 2**-20
    with pytest.raises(HeadroomExceeded, match=r"x\[3\]"):
        he.encrypt(x, pub)
    x[3] = -1.0
    assert np.abs(he.decrypt(he.encrypt(x, pub), keys().secret_context) - x).max() < 2.0**-14


def test_pairing_is_the_default_and_can_be_turned_off() -> None:
    pub, rng = keys().public_context(), np.random.default_rng(2)
    x = rng.uniform(-1, 1, D)
    paired, plain = he.encrypt(x, pub), he.encrypt(x, pub, pair=False)
    assert lean_wire.layout_of(paired).pair and not lean_wire.layout_of(plain).pair
    assert len(plain) - lean_wire.HEADER.size == 2 * (len(paired) - lean_wire.HEADER.size)
    for blob in (paired, plain):
        assert np.abs(he.decrypt(blob, keys().secret_context) - x).max() < 2.0**-14


def test_a_forged_header_is_refused(few: tuple) -> None:
    _, blobs = few
    lay = lean_wire.layout_of(blobs[0])
    raised = bytearray(blobs[0])
    raised[80:84] = (5000).to_bytes(4, "little")  # max_weight_sum past what q_0 holds
    with pytest.raises(PayloadError, match="headroom"):
        lean_wire.layout_of(bytes(raised))
    lowered = bytearray(blobs[0])
    lowered[80:84] = (10).to_bytes(4, "little")  # within the headroom, but not the others'
    with pytest.raises(PayloadError, match="client 2"):
        he.aggregate([blobs[0], blobs[1], bytes(lowered)], [1, 1, 1])
    assert lay.max_weight_sum == 1000 and lean_wire.HEADER.size == 84


def test_bcfl_info_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from bcfl_engine.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("CKKS presets") :].splitlines()
    assert "B/param" in table[1] and "mean of 1000" in table[1] and "headroom" in table[1]
    for p in presets.PRESETS.values():
        (line,) = [x for x in table if x.split()[:1] == [p.name]]
        assert f"{p.bytes_per_parameter():.2f}" in line and "128-bit" in line
        assert f"2^{math.log2(p.mean_precision):.4g}" in line
        assert f"2^{math.log2(p.headroom):.4g}" in line
    (lean_line,) = [x for x in table if x.split()[:1] == ["lean"]]
    assert "9.50" in lean_line and "weights sum <= 1000" in lean_line
    assert "'lean' when unnamed" in out


def test_keys_made_without_a_preset_are_lean() -> None:
    """he.generate_keys() makes a lean key: its payloads are lean, <= 10 bytes per parameter."""
    k = he.generate_keys()
    assert presets.DEFAULT == "lean" and k.preset.name == "lean"
    blob = he.encrypt(np.linspace(-1, 1, D), k.public_context())
    assert blob[:4] == lean_wire.LEAN_MAGIC and len(blob) <= 10 * D + lean_wire.HEADER.size


def test_running_sum_equals_the_aggregate_and_checks_headroom_as_weights_come(few: tuple) -> None:
    from bcfl_engine.he.lean_aggregate import LeanRunningSum

    _, blobs = few
    rs = LeanRunningSum(keys().public_context())
    for i, (blob, w) in enumerate(zip(blobs, [1, 7, 0, 300, 2], strict=True)):
        rs.add(i, blob, w)
    assert rs.weight_sum == 310
    before = rs.result()
    assert before == he.aggregate(blobs, [1, 7, 0, 300, 2], context=keys().public_context())
    with pytest.raises(HeadroomExceeded, match=r"client 'x'.*1001"):
        rs.add("x", blobs[0], 691)
    with pytest.raises(PayloadError, match="client 'y'"):
        rs.add("y", blobs[0][:-1], 1)
    with pytest.raises(InvalidWeight, match="client 'z'"):
        rs.add("z", blobs[0], 1.5)
    assert rs.weight_sum == 310 and rs.result() == before  # refused payloads changed nothing
    rs.add("w", blobs[0], 690)  # exactly at the headroom
    assert rs.weight_sum == 1000


def test_stock_tenseal_decrypts_the_lifted_aggregate() -> None:
    """Unpaired lean payloads: the aggregate is a plain TenSEAL vector at q_0 that stock
    TenSEAL loads and decrypts itself."""
    import tenseal as ts

    pub, rng = keys().public_context(), np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, 5000) for _ in range(3)]
    agg = he.aggregate([he.encrypt(x, pub, pair=False) for x in xs], [2, 1, 1], context=pub)
    vec = ts.ckks_vector_from(keys().secret_context, agg)
    got = np.asarray(vec.decrypt())
    assert got.shape == (5000,)
    assert np.abs(got - (2 * xs[0] + xs[1] + xs[2])).max() < 4 * 2.0**-14


def test_a_list_of_vectors_per_client() -> None:
    pub, rng = keys().public_context(), np.random.default_rng(4)
    xs = [[rng.uniform(-1, 1, 100), rng.uniform(-1, 1, 9000)] for _ in range(3)]
    blobs = [[he.encrypt(v, pub) for v in client] for client in xs]
    outs = he.aggregate(blobs, [1, 2, 3], context=pub)
    for j, out in enumerate(outs):
        want = sum(w * c[j] for w, c in zip([1, 2, 3], xs, strict=True))
        assert np.abs(he.decrypt(out, keys().secret_context) - want).max() < 6 * 2.0**-14


def test_the_native_finish_writes_what_the_numpy_one_does(few: tuple) -> None:
    """The aggregate's last step (lift, NTT, proto) with and without the extension: same bytes."""
    from unittest import mock

    _, blobs = few
    lay = lean_wire.layout_of(blobs[0])
    vals = lean_wire.parse(blobs[1], lay)
    native_bytes = lean_wire.to_tenseal(vals, lay)
    with mock.patch.object(lean_wire, "_load_native", lambda: (None, "not built")):
        assert lean_wire.to_tenseal(vals, lay) == native_bytes

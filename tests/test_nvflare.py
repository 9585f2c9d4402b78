"""The NVIDIA FLARE HE drop-in against NVFlare's own aggregator, on the same FOBS messages.

Both aggregators are driven as NVFlare's server drives them: ``handle_event(START_RUN)``, then
``fobs.loads`` + ``accept`` per client message, then ``aggregate``. The messages are what
``HEModelEncryptor`` sends (a ``ckks_vector`` per layer under HEBuilder's default context). This
process registers the engine's decomposer first: NVFlare's aggregator then gets
:class:`WireCKKSVector` objects, which it uses as TenSEAL vectors (each rebuilt from its bytes
exactly as NVFlare's decomposer rebuilds it); the fallback test runs NVFlare's decomposer in a
subprocess.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")
pytest.importorskip("nvflare")

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable  # noqa: E402
from nvflare.apis.fl_constant import ReturnCode  # noqa: E402
from nvflare.app_common.app_constant import AppConstants  # noqa: E402
from nvflare.app_opt.he.intime_accumulate_model_aggregator import (  # noqa: E402
    HEInTimeAccumulateWeightedAggregator as Stock,
)
from nvflare.fuel.utils import fobs  # noqa: E402
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize  # noqa: E402
from nvflare_msgs import he_context, message, run, server  # noqa: E402

from bcfl_engine.errors import PayloadError  # noqa: E402
from bcfl_engine.he import wire  # noqa: E402
from bcfl_engine.integrations import nvflare_wire  # noqa: E402
from bcfl_engine.integrations.nvflare import HEInTimeAccumulateWeightedAggregator as Ours  # noqa: E402
from bcfl_engine.integrations.nvflare_wire import LayerSum, WireCKKSVector, wire_of  # noqa: E402

nvflare_wire.register()  # first in this process: FOBS keeps it
nvflare_fobs_initialize()
ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"conv.weight": 5000, "conv.bias": 17, "fc.weight": 9000}  # 2 ciphertexts, 1, 3


@pytest.fixture(scope="module")
def ctx() -> Any:
    return he_context()


@pytest.fixture(scope="module")
def plain() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{k: rng.uniform(-1, 1, d) for k, d in LAYERS.items()} for _ in range(4)]


def params(ctx: Any, values: dict[str, np.ndarray], steps: int = 1) -> dict[str, Any]:
    """HEModelEncryptor's layers: each times its steps, one ckks_vector; 'head' left plain."""
    out: dict[str, Any] = {k: ts.ckks_vector(ctx, (v * steps).tolist()) for k, v in values.items()}
    out["head"] = np.arange(6, dtype=np.float32) * steps
    return out


def assert_same(a: DXO, b: DXO) -> None:
    """Same kind, meta, keys in the same order; ciphertexts byte for byte, arrays exactly."""
    assert a.data_kind == b.data_kind
    assert a.meta == b.meta
    assert list(a.data) == list(b.data)
    for k, v in a.data.items():
        if isinstance(v, ts.CKKSVector):
            assert type(b.data[k]) is ts.CKKSVector, k
            assert v.serialize() == b.data[k].serialize(), f"layer {k} differs"
        else:
            assert np.array_equal(v, b.data[k]) and v.dtype == b.data[k].dtype, k


@pytest.mark.parametrize(
    "kind, kwargs, steps",
    [
        pytest.param(DataKind.WEIGHTS, {}, [1, 1, 1, 1], id="weights"),
        pytest.param(DataKind.WEIGHT_DIFF, {}, [3, 1, 2, 5], id="weight_diff-steps"),
        pytest.param(
            DataKind.WEIGHTS,
            {"aggregation_weights": {"site-0": 2.0, "site-2": 0.5}, "exclude_vars": "bias"},
            [1, 2, 1, 1],
            id="weights-excluded",
        ),
    ],
)
def test_same_bytes_as_nvflare(
    ctx: Any, plain: list, kind: str, kwargs: dict, steps: list[int]
) -> None:
    messages = [
        message(params(ctx, v, s), f"site-{i}", steps=s, kind=kind)
        for i, (v, s) in enumerate(zip(plain, steps, strict=True))
    ]
    flags_a, a = run(Stock, messages, expected_data_kind=kind, **kwargs)
    flags_b, b = run(Ours, messages, expected_data_kind=kind, **kwargs)
    assert flags_a == flags_b == [True] * 4
    assert_same(a, b)
    keys = [k for k in [*LAYERS, "head"] if not ("exclude_vars" in kwargs and "bias" in k)]
    assert b.meta[MetaKey.PROCESSED_KEYS] == {k: k != "head" for k in keys}
    # What it holds, as NVFlare computes it: the clients multiplied by their steps, the
    # server divides by W = sum of aggregation weight x steps (HE leaves the weights out of
    # the ciphertexts).
    w = [kwargs.get("aggregation_weights", {}).get(f"site-{i}", 1.0) for i in range(4)]
    total = sum(wi * s for wi, s in zip(w, steps, strict=True))
    want = sum(s * v["fc.weight"] for s, v in zip(steps, plain, strict=True)) / total
    got = np.array(b.data["fc.weight"].decrypt(ctx.secret_key()))
    assert np.abs(got - want).max() < 1e-4


def test_weigh_by_local_iter_takes_nvflare_path(ctx: Any, plain: list) -> None:
    """weigh_by_local_iter=True multiplies ciphertexts by float weights in TenSEAL (a level
    each): NVFlare's own arithmetic, which with HEBuilder's two data primes then has no level
    left for 1/W. Same accepts, same error, in both."""
    messages = [message(params(ctx, v), f"site-{i}", steps=2) for i, v in enumerate(plain[:2])]
    errors = []
    for cls in (Stock, Ours):
        agg, fl_ctx = server(cls, expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=True)
        assert all(agg.accept(fobs.loads(m), fl_ctx) for m in messages)
        with pytest.raises(ValueError) as exc:
            agg.aggregate(fl_ctx)
        errors.append(str(exc.value))
    assert errors[0] == errors[1] == "scale out of bounds"


def test_rejections_as_nvflare(ctx: Any, plain: list, caplog: pytest.LogCaptureFixture) -> None:
    """Wrong round, duplicate contributor, wrong data kind, an error return code: the same
    accept answers and log lines, and the same aggregate of what was accepted."""
    ok = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain[:2])]
    bad = [
        message(params(ctx, plain[2]), "site-2", round_=3),  # wrong round
        message(params(ctx, plain[3]), "site-0"),  # duplicate contributor
        message(params(ctx, plain[3]), "site-3", kind=DataKind.WEIGHT_DIFF),  # data kind
        message(params(ctx, plain[3]), "site-4", rc=ReturnCode.EXECUTION_EXCEPTION),
    ]
    logs = {}
    for cls in (Stock, Ours):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            flags, out = run(cls, ok + bad, expected_data_kind=DataKind.WEIGHTS)
        assert flags == [True, True, False, False, False, False]
        logs[cls] = (out, [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()
                           or "expected" in r.getMessage() or "rc:" in r.getMessage()])  # fmt: skip
    assert_same(logs[Stock][0], logs[Ours][0])
    assert logs[Stock][1] == logs[Ours][1] and len(logs[Ours][1]) == 4


def test_other_context_rejected_with_reason(
    ctx: Any, plain: list, caplog: pytest.LogCaptureFixture
) -> None:
    """Other encryption parameters (NVFlare's TenSEAL add raises on them): rejected with the
    reason, and the round's aggregate is that of the others."""
    other = he_context(primes=[60, 40, 50])
    good = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain[:3])]
    intruder = message(params(other, plain[3]), "site-3")
    with caplog.at_level(logging.ERROR):
        flags, out = run(Ours, [*good[:2], intruder, good[2]], expected_data_kind=DataKind.WEIGHTS)
    assert flags == [True, True, False, True]
    assert any("site-3" in r.getMessage() and "another context" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    _, ref = run(Stock, good, expected_data_kind=DataKind.WEIGHTS)
    assert_same(ref, out)


def test_one_key_loaded_by_each_client_is_one_context(ctx: Any, plain: list) -> None:
    """Each client loads the context file itself: TenSEAL draws new relinearization keys at
    every load, so the context bytes on the wire differ per client; same parameters, accepted,
    NVFlare's bytes."""
    secret = ctx.serialize(save_secret_key=True)
    loaded = [ts.context_from(secret) for _ in plain]
    assert loaded[0].serialize() != loaded[1].serialize()
    messages = [
        message(params(c, v), f"site-{i}")
        for i, (c, v) in enumerate(zip(loaded, plain, strict=True))
    ]
    flags_a, a = run(Stock, messages, expected_data_kind=DataKind.WEIGHTS)
    flags_b, b = run(Ours, messages, expected_data_kind=DataKind.WEIGHTS)
    assert flags_a == flags_b == [True] * 4
    assert_same(a, b)


def test_other_scale_rejected_with_reason(
    ctx: Any, plain: list, caplog: pytest.LogCaptureFixture
) -> None:
    """Same parameters, another scale (NVFlare's TenSEAL add raises): the ciphertexts' scale
    is checked against the round's, the contribution rejected with the reason."""
    other = he_context()
    other.global_scale = 2**35
    good = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain[:2])]
    with caplog.at_level(logging.ERROR):
        flags, out = run(
            Ours, [good[0], message(params(other, plain[2]), "site-2"), good[1]],
            expected_data_kind=DataKind.WEIGHTS,
        )  # fmt: skip
    assert flags == [True, False, True]
    assert any("site-2" in r.getMessage() and "scale" in r.getMessage() for r in caplog.records)
    _, ref = run(Stock, good, expected_data_kind=DataKind.WEIGHTS)
    assert_same(ref, out)


def test_malformed_layer_rolls_back_the_message(
    ctx: Any, plain: list, caplog: pytest.LogCaptureFixture
) -> None:
    """A message whose last encrypted layer is corrupt: rejected with the reason, and none of
    its layers (the good ones were already summed) stays in the round."""
    good = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain[:3])]
    layers = params(ctx, plain[3])
    vec, context = wire_of(layers["fc.weight"])
    layers["fc.weight"] = WireCKKSVector(vec[:-100], context)  # cut short
    with caplog.at_level(logging.ERROR):
        flags, out = run(
            Ours,
            [good[0], message(layers, "site-3"), *good[1:]],
            expected_data_kind=DataKind.WEIGHTS,
        )
    assert flags == [True, False, True, True]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("site-3" in m and "discarding" in m for m in errors), errors
    _, ref = run(Stock, good, expected_data_kind=DataKind.WEIGHTS)
    assert_same(ref, out)


def test_layer_encrypted_then_plain_is_rejected(ctx: Any, plain: list) -> None:
    first = message(params(ctx, plain[0]), "site-0")
    mixed = params(ctx, plain[1])
    mixed["conv.bias"] = plain[1]["conv.bias"]
    flags, out = run(Ours, [first, message(mixed, "site-1")], expected_data_kind=DataKind.WEIGHTS)
    assert flags == [True, False]
    _, ref = run(Stock, [first], expected_data_kind=DataKind.WEIGHTS)
    assert_same(ref, out)


def test_objects_rebuilt_are_summed_and_said_once(
    ctx: Any, plain: list, caplog: pytest.LogCaptureFixture
) -> None:
    """Layers that arrive as TenSEAL objects (a WireCKKSVector already used; a plain
    CKKSVector where NVFlare's decomposer was registered first): same bytes, one warning."""
    messages = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain)]
    agg, fl_ctx = server(Ours, expected_data_kind=DataKind.WEIGHTS)
    with caplog.at_level(logging.WARNING):
        for i, m in enumerate(messages):
            shareable = fobs.loads(m)
            if i % 2:
                dxo = from_shareable(shareable)
                for v in dxo.data.values():
                    if isinstance(v, ts.CKKSVector):
                        assert v.size() > 0  # used: the bytes are no longer the vector's
            assert agg.accept(shareable, fl_ctx)
    out = from_shareable(agg.aggregate(fl_ctx))
    told = [r for r in caplog.records if "rebuilt by NVFlare's decomposer" in r.getMessage()]
    assert len(told) == 1
    _, ref = run(Stock, messages, expected_data_kind=DataKind.WEIGHTS)
    assert_same(ref, out)


def test_two_rounds_and_a_new_context(ctx: Any, plain: list) -> None:
    """The round's context and sums reset with aggregate(): round 1 may use another context."""
    other = he_context()
    agg, fl_ctx = server(Ours, expected_data_kind=DataKind.WEIGHTS)
    stock, stock_ctx = server(Stock, expected_data_kind=DataKind.WEIGHTS)
    for r, c in enumerate((ctx, other)):
        fl_ctx.set_prop(AppConstants.CURRENT_ROUND, r, private=True, sticky=True)
        stock_ctx.set_prop(AppConstants.CURRENT_ROUND, r, private=True, sticky=True)
        messages = [message(params(c, v), f"site-{i}", round_=r) for i, v in enumerate(plain)]
        assert all(agg.accept(fobs.loads(m), fl_ctx) for m in messages)
        assert all(stock.accept(fobs.loads(m), stock_ctx) for m in messages)
        assert_same(
            from_shareable(stock.aggregate(stock_ctx)), from_shareable(agg.aggregate(fl_ctx))
        )


def test_exact_division(ctx: Any, plain: list) -> None:
    """Dividing by the scale: one level more, closer to the mean than NVFlare's 1/W."""
    steps = [3, 1, 2, 5]
    messages = [
        message(params(ctx, v, s), f"site-{i}", steps=s)
        for i, (v, s) in enumerate(zip(plain, steps, strict=True))
    ]
    _, ref = run(Stock, messages, expected_data_kind=DataKind.WEIGHTS)
    _, out = run(Ours, messages, expected_data_kind=DataKind.WEIGHTS, exact_division=True)
    assert out.meta == ref.meta
    want = sum(s * v["fc.weight"] for s, v in zip(steps, plain, strict=True)) / sum(steps)
    err = {}
    for name, dxo in (("nvflare", ref), ("exact", out)):
        v = dxo.data["fc.weight"]
        err[name] = np.abs(np.array(v.decrypt(ctx.secret_key())) - want).max()
    assert err["exact"] < err["nvflare"] / 200, err  # measured ~3,800x here
    levels = [d.data["fc.weight"].ciphertext()[0].coeff_modulus_size() for d in (ref, out)]
    assert levels == [1, 2]  # NVFlare's 1/W used the last level; exact division keeps it
    assert out.data["fc.weight"].serialize() != ref.data["fc.weight"].serialize()
    assert np.array_equal(out.data["head"], ref.data["head"])


def test_wire_vector_is_a_ckks_vector(ctx: Any, plain: list) -> None:
    """What the decomposer returns: the same FOBS bytes as NVFlare's pair, a CKKSVector that
    decrypts, operations returning plain CKKSVectors."""
    vec = ts.ckks_vector(ctx, plain[0]["conv.bias"].tolist())
    pair = (vec.serialize(), vec.context().serialize())
    wired = fobs.loads(fobs.dumps({"v": vec}))["v"]
    assert isinstance(wired, WireCKKSVector) and wired.untouched
    assert wire_of(wired) == pair
    assert fobs.dumps({"v": wired}) == fobs.dumps({"v": vec})
    doubled = wired + wired
    assert type(doubled) is ts.CKKSVector and not wired.untouched
    got = np.array(doubled.decrypt(ctx.secret_key()))
    assert np.abs(got - 2 * plain[0]["conv.bias"]).max() < 1e-4


def test_nvflare_decomposer_first_falls_back(tmp_path: Path) -> None:
    """In a process where NVFlare's decomposer was registered first (its components built
    before ours), the layers arrive as objects: same bytes as NVFlare, and it says so."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from nvflare.app_opt.he import decomposers
        decomposers.register()
        import test_nvflare as t
        from nvflare_msgs import he_context, message, run
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        ctx = he_context()
        import numpy as np
        rng = np.random.default_rng(1)
        msgs = [message(t.params(ctx, {{"w": rng.uniform(-1, 1, 5000)}}), f"site-{{i}}")
                for i in range(3)]
        a = run(t.Stock, msgs, expected_data_kind="WEIGHTS")[1]
        b = run(t.Ours, msgs, expected_data_kind="WEIGHTS")[1]
        t.assert_same(a, b)
        print("SAME", type(t.fobs.loads(msgs[0]).get("DXO", None)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SAME" in done.stdout
    assert done.stdout.count("rebuilt by NVFlare's decomposer") == 1


def test_tenseal_0315_payloads_sum_bit_exactly() -> None:
    """Vectors made by TenSEAL 0.3.15 (nvflare[he]'s pin; tests/data/make_tenseal_0315.py):
    summed by the aggregator's layer sum, residue for residue TenSEAL 0.3.15's own sum. Their
    parameters come from a 0.3.18 context of the same parameters (same primes, same parms_id),
    since 0.3.18 refuses 0.3.15's context."""
    data = np.load(ROOT / "tests" / "data" / "tenseal_0315.npz")
    clients = [data[f"client{i}"].tobytes() for i in range(3)]
    same = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=2048, coeff_mod_bit_sizes=[27, 27])
    same.global_scale = 2**20
    layer = LayerSum(same.serialize())
    for i, blob in enumerate(clients):
        layer.stage(blob, f"site-{i}")
        layer.keep()
    assert layer.version == (4, 1)  # SEAL 4.1 in 0.3.15; 0.3.18 writes 4.3
    assert layer.layout is not None
    want, version = wire.parse(data["total"].tobytes(), layer.layout)
    assert version == layer.version
    assert np.array_equal(layer.acc.numpy().view(np.uint64), want)
    assert layer.vector_bytes() == wire.to_tenseal(want, layer.layout, layer.layout.scale, version)


def test_context_of_another_tenseal_is_rejected_with_reason() -> None:
    """A layer under a context this TenSEAL cannot load: a PayloadError naming the client and
    why (NVFlare's decomposer raises while decoding the message)."""
    layer = LayerSum(b"\x0a\x02\x08\x01")  # not a context this TenSEAL loads
    with pytest.raises(PayloadError, match=r"site-7.*does not load in TenSEAL"):
        layer.stage(b"\x00" * 64, "site-7")
    assert layer.acc is None


def test_without_the_extension_same_bytes(
    ctx: Any, plain: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where bcfl_engine._C is not built, the layer sums take the Python codec and the torch
    sum: the same bytes as NVFlare's."""
    from bcfl_engine.integrations import nvflare_wire as nw

    monkeypatch.setattr(nw, "_load_native", lambda: (None, "not built (test)"))
    messages = [message(params(ctx, v), f"site-{i}") for i, v in enumerate(plain)]
    _, a = run(Stock, messages, expected_data_kind=DataKind.WEIGHTS)
    _, b = run(Ours, messages, expected_data_kind=DataKind.WEIGHTS)
    assert_same(a, b)


def test_a_round_with_no_contribution_is_nvflares() -> None:
    outs = [server(cls, expected_data_kind=DataKind.WEIGHTS) for cls in (Stock, Ours)]
    a, b = (from_shareable(agg.aggregate(fl_ctx)) for agg, fl_ctx in outs)
    assert a.data == b.data == {} and a.meta == b.meta

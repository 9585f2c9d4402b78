"""Row norms taken at intake (UpdateBatch.norms): the native clipped mean's own bits, handed
back to the private mean so it reads the rows once; stale norms are never used."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import extreme_rows, make_updates

import bcfl_engine as be
from bcfl_engine import dp as bdp
from bcfl_engine.backends import _load_native
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, ShapeMismatch
from bcfl_engine.updates import UpdateBatch, intake_norms

if _load_native()[0] is None:
    pytest.skip("intake norms come from the native extension", allow_module_level=True)


def kernel_norms(x: torch.Tensor) -> torch.Tensor:
    """The norms the native clipped mean computes for itself (it writes them back)."""
    n, d = x.shape
    norms = torch.empty(n, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    _load_native()[0].clipped_mean(x, w, 1.0, norms, False, torch.empty(d), None, None, 0.0, None)
    return norms


def filled(x: torch.Tensor, **kw) -> UpdateBatch:
    batch = UpdateBatch(x.shape[1], capacity=x.shape[0] + 2, **kw)
    for i in range(x.shape[0]):
        batch.add(f"c{i}", x[i])
    return batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_add_takes_the_kernels_norms(dtype: torch.dtype) -> None:
    x = (make_updates(5, 3000, seed=1) * torch.linspace(0.1, 10, 5)[:, None]).to(dtype)
    batch = filled(x, dtype=dtype)
    assert batch.norms is not None
    assert torch.equal(batch.norms, kernel_norms(batch.data))
    assert torch.equal(intake_norms(batch.data), batch.norms)


def test_norms_of_extreme_rows_are_exact_and_finite() -> None:
    # Squares that overflow or underflow float32 are summed again in float64: finite norms.
    x = extreme_rows(10, 1031, seed=2)
    batch = filled(x)
    want = torch.linalg.vector_norm(x.double(), dim=1)
    assert torch.isfinite(batch.norms).all()
    assert torch.allclose(batch.norms, want, rtol=1e-6, atol=0)


def test_a_torch_write_after_intake_makes_the_norms_unknown() -> None:
    x = make_updates(4, 500, seed=3)
    batch = filled(x)
    assert batch.norms is not None
    batch.data[1] *= 1000.0  # in place, through torch: counted
    assert batch.norms is None
    batch.add("late", x[0])  # a later intake does not make the stale norm of row 1 good again
    assert batch.norms is None


def test_a_refused_add_keeps_the_norms() -> None:
    x = make_updates(3, 64, seed=4)
    batch = filled(x)
    bad = x[0].clone()
    bad[7] = math.nan
    with pytest.raises(NonFiniteUpdate, match="index 7"):
        batch.add("nan", bad)
    with pytest.raises(ShapeMismatch):
        batch.add("short", torch.ones(10))
    assert len(batch) == 3
    assert torch.equal(batch.norms, kernel_norms(batch.data))


def test_claim_takes_norms_or_drops_them() -> None:
    x = make_updates(4, 256, seed=5)
    batch = UpdateBatch(256, capacity=4)
    rows = batch.free_rows(2)
    rows.numpy()[:] = x[:2].numpy()
    batch.claim(["a", "b"], [1.0, 1.0], [None, None], norms=intake_norms(rows))
    assert torch.equal(batch.norms, kernel_norms(x[:2]))
    with pytest.raises(InvalidArgument, match="norms"):
        batch.claim(["c"], [1.0], [None], norms=torch.ones(2, dtype=torch.float64))
    assert len(batch) == 2 and batch.norms is not None  # the refused claim changed nothing
    batch.free_rows(1).numpy()[:] = x[2].numpy()
    batch.claim(["c"], [1.0], [None])  # no norms: unknown from here on
    assert batch.norms is None


def test_private_mean_of_a_batch_uses_its_norms_and_equals_the_tensors(monkeypatch) -> None:
    x = make_updates(6, 5000, seed=6) * torch.linspace(0.5, 3, 6)[:, None]
    batch = filled(x)
    dp = bdp.GaussianDP(clipping_norm=60.0, noise_multiplier=0.7, num_sampled_clients=6)
    seen = []
    real = bdp.cm_native

    def spy(*args, **kw):
        seen.append(args[5] if len(args) > 5 else kw.get("norms"))
        return real(*args, **kw)

    monkeypatch.setattr(bdp, "cm_native", spy)
    got = be.aggregate(batch, rule="mean", dp=dp, generator=bdp.NoiseGenerator(1))
    want = be.aggregate(x, rule="mean", dp=dp, generator=bdp.NoiseGenerator(1))
    assert torch.equal(got, want)
    assert seen[0] is not None and seen[1] is None  # the batch's norms, then the kernel's own
    clean = be.aggregate(batch, rule="mean", dp=bdp.GaussianDP(60.0, 0.0, 6))
    assert torch.equal(clean, bdp.clipped_mean(x, 60.0, 6))


def test_a_row_changed_after_intake_is_still_clipped() -> None:
    # The stale norm would have let the enlarged row through unclipped.
    x = make_updates(4, 1000, seed=7)  # norms ~32
    batch = filled(x)
    batch.data[2] *= 1e4
    dp = bdp.GaussianDP(clipping_norm=40.0, noise_multiplier=0.0, num_sampled_clients=4)
    got = be.aggregate(batch, rule="mean", dp=dp)
    assert torch.equal(got, bdp.clipped_mean(batch.data, 40.0, 4))
    assert float(torch.linalg.vector_norm(got.double())) <= 40.0 + 1e-3


def test_given_norms_are_checked() -> None:
    x = make_updates(3, 10)
    dp = bdp.GaussianDP(1.0, 1.0, 3)
    with pytest.raises(InvalidArgument, match="norms"):
        bdp.private_mean(x, dp, backend="native", norms=torch.ones(3))  # float32
    with pytest.raises(InvalidArgument, match="norms"):
        bdp.clipped_mean(x, 1.0, 3, backend="native", norms=torch.ones(4, dtype=torch.float64))


def test_a_list_of_state_dicts_gets_its_norms_at_intake_too(monkeypatch) -> None:
    x = make_updates(4, 30, seed=8) * 3
    dicts = [{"w": x[i, :20].reshape(4, 5).clone(), "b": x[i, 20:].clone()} for i in range(4)]
    dp = bdp.GaussianDP(clipping_norm=8.0, noise_multiplier=0.5, num_sampled_clients=4)
    seen = []
    real = bdp.cm_native

    def spy(*args, **kw):
        seen.append(args[5] if len(args) > 5 else kw.get("norms"))
        return real(*args, **kw)

    monkeypatch.setattr(bdp, "cm_native", spy)
    out = be.aggregate(dicts, rule="mean", dp=dp, generator=bdp.NoiseGenerator(2))
    want = be.aggregate(x, rule="mean", dp=dp, generator=bdp.NoiseGenerator(2))
    assert seen[0] is not None
    assert torch.equal(torch.cat([out["w"].reshape(-1), out["b"]]), want)


# ---- noise made before the aggregate (prepare_noise) --------------------------------------------


@pytest.mark.parametrize("d", [1, 4097, 70_001])
def test_prepared_noise_is_the_noise_the_kernel_makes(d: int) -> None:
    x = make_updates(5, d, seed=d) * 2
    dp = bdp.GaussianDP(clipping_norm=d**0.5, noise_multiplier=0.9, num_sampled_clients=5)
    fused = bdp.private_mean(x, dp, backend="native", generator=bdp.NoiseGenerator(3))
    noise = bdp.prepare_noise(d, bdp.NoiseGenerator(3))
    assert torch.equal(bdp.private_mean(x, dp, backend="native", noise=noise), fused)
    assert noise.used
    batch = filled(x)  # and with the batch's norms
    again = bdp.prepare_noise(d, bdp.NoiseGenerator(3))
    assert torch.equal(be.aggregate(batch, dp=dp, noise=again), fused)
    # The torch backend adds the same normals (its clipped mean rounds its own way).
    other = bdp.private_mean(
        x, dp, backend="torch", noise=bdp.prepare_noise(d, bdp.NoiseGenerator(3))
    )
    assert torch.allclose(other, fused, rtol=1e-5, atol=1e-6 * dp.clipping_norm)


def test_prepared_normals_match_the_numpy_formula_and_are_standard() -> None:
    from bcfl_engine.dp_noise import noise_words, standard_normal

    d = 1_000_001
    z = bdp.prepare_noise(d, bdp.NoiseGenerator(9)).take()
    ref = standard_normal(noise_words(d, bdp.NoiseGenerator(9)).numpy(), d)
    assert torch.allclose(z, torch.from_numpy(ref), rtol=1e-13, atol=1e-15)
    assert abs(float(z.std()) - 1) < 0.01 and abs(float(z.mean())) < 4 / math.sqrt(d)
    other = bdp.prepare_noise(d).take()  # a fresh OS key each time
    assert not torch.equal(z, other)


def test_prepared_noise_is_used_once_and_checked() -> None:
    x = make_updates(3, 50, seed=1)
    dp = bdp.GaussianDP(1.0, 1.0, 3)
    noise = bdp.prepare_noise(50)
    be.aggregate(x, dp=dp, noise=noise)
    with pytest.raises(InvalidArgument, match="already added"):
        be.aggregate(x, dp=dp, noise=noise)
    with pytest.raises(InvalidArgument, match="49 coordinates"):
        be.aggregate(x, dp=dp, noise=bdp.prepare_noise(49))
    fresh = bdp.prepare_noise(50)
    with pytest.raises(InvalidArgument, match="not both"):
        be.aggregate(x, dp=dp, noise=fresh, generator=bdp.NoiseGenerator(1))
    with pytest.raises(InvalidArgument, match="pass dp="):
        be.aggregate(x, noise=fresh)
    assert not fresh.used  # refused calls used nothing
    with pytest.raises(InvalidArgument, match="d must be"):
        bdp.prepare_noise(0)

"""ParamSpec and UpdateBatch: round trips, one copy per update, and rejected input that changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcfl_engine import ParamSpec, UpdateBatch, keccak256
from bcfl_engine.errors import (
    BatchFull,
    DuplicateClient,
    InvalidArgument,
    InvalidWeight,
    NonFiniteUpdate,
    ShapeMismatch,
)


def state_dict(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g).double(),
        "fc.weight": torch.randn(2, 7, generator=g).half(),
    }


def test_state_dict_round_trip_keeps_names_shapes_dtypes() -> None:
    sd = state_dict(0)
    spec = ParamSpec.infer(sd)
    assert spec.dim == 36 + 4 + 14 and spec.kind == "state_dict"
    back = spec.unflatten(spec.flatten(sd))
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0)


def test_ndarrays_round_trip() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], dtype=np.float64)]
    spec = ParamSpec.infer(arrays)
    vec = spec.flatten(arrays)
    assert vec.tolist() == [0, 1, 2, 3, 4, 5, 1.5]
    back = spec.unflatten(vec)
    assert [a.dtype for a in back] == [np.float32, np.float64]
    np.testing.assert_array_equal(back[0], arrays[0])


def test_zero_dim_integer_and_float64_arrays_keep_shape_dtype_and_value() -> None:
    """BatchNorm's num_batches_tracked is a 0-d int64; a float64 vector comes back exactly."""
    arrays = [
        np.array(7, dtype=np.int64),
        np.array([0.1, 1 / 3], dtype=np.float64),
        np.array(2.5, dtype=np.float32),
        np.arange(4, dtype=np.int32)[::2],  # not contiguous
    ]
    spec = ParamSpec.infer(arrays)
    assert [e.shape for e in spec.entries] == [(), (2,), (), (2,)] and spec.dim == 6
    vec = spec.flatten(arrays, dtype=torch.float64)
    assert vec.tolist() == [7, 0.1, 1 / 3, 2.5, 0, 2]
    back = spec.unflatten(vec)
    assert [(a.shape, a.dtype) for a in back] == [(a.shape, a.dtype) for a in arrays]
    for got, want in zip(back, arrays, strict=True):
        np.testing.assert_array_equal(got, want)  # float64 bit for bit
    # an integer comes back rounded, not truncated: 6.9999995 is 7
    near = spec.unflatten(vec - torch.tensor([5e-7, 0, 0, 0, 0, 0], dtype=torch.float64))
    assert near[0] == 7 and near[0].dtype == np.int64
    sd = {"num_batches_tracked": torch.tensor(3), "w": torch.ones(2)}
    sd_spec = ParamSpec.infer(sd)
    sd_back = sd_spec.unflatten(sd_spec.flatten(sd) * 0.9999999)
    assert sd_back["num_batches_tracked"].shape == () and int(sd_back["num_batches_tracked"]) == 3


def test_structure_mismatches_are_named() -> None:
    spec = ParamSpec.infer(state_dict(0))
    bad = state_dict(1)
    bad["fc.weight"] = torch.zeros(7, 2)
    with pytest.raises(ShapeMismatch, match=r"fc.weight.*\(2, 7\).*\(7, 2\)"):
        spec.flatten(bad)
    del bad["fc.weight"]
    with pytest.raises(ShapeMismatch, match="missing"):
        spec.flatten(bad)
    with pytest.raises(InvalidArgument, match="state dict, a list of arrays or a tensor"):
        ParamSpec.infer("weights")


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"]
)
def test_batch_add_copies_each_update_into_its_row(dtype: torch.dtype) -> None:
    sds = [state_dict(i) for i in range(3)]
    spec = ParamSpec.infer(sds[0])
    batch = UpdateBatch(spec, capacity=5, dtype=dtype)
    for i, sd in enumerate(sds):
        assert batch.add(f"h{i}", sd, weight=i + 1) == i
    assert len(batch) == 3 and batch.data.shape == (3, spec.dim) and batch.data.dtype == dtype
    assert batch.weights.tolist() == [1.0, 2.0, 3.0]
    expected = spec.flatten(sds[1]).to(dtype)
    torch.testing.assert_close(batch.data[1], expected, rtol=0, atol=0)
    assert batch.data.data_ptr() == batch._buf.data_ptr()  # a view, no copy


def test_rejected_updates_leave_the_batch_unchanged() -> None:
    batch = UpdateBatch(4, capacity=2)
    batch.add("a", torch.ones(4))
    snapshot = batch.data.clone()
    cases = [
        (DuplicateClient, lambda: batch.add("a", torch.zeros(4))),
        (ShapeMismatch, lambda: batch.add("b", torch.zeros(5))),
        (InvalidWeight, lambda: batch.add("b", torch.zeros(4), weight=0)),
        (InvalidWeight, lambda: batch.add("b", torch.zeros(4), weight=float("nan"))),
        (NonFiniteUpdate, lambda: batch.add("b", torch.tensor([0.0, float("inf"), 0.0, 0.0]))),
        (InvalidArgument, lambda: batch.add("", torch.zeros(4))),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
        assert len(batch) == 1 and batch.client_ids == ["a"]
        torch.testing.assert_close(batch.data, snapshot, rtol=0, atol=0)
    batch.add("b", torch.zeros(4))
    with pytest.raises(BatchFull, match="full"):
        batch.add("c", torch.zeros(4))


def test_float16_overflow_is_rejected() -> None:
    batch = UpdateBatch(3, capacity=1, dtype=torch.float16)
    with pytest.raises(NonFiniteUpdate, match="overflows"):
        batch.add("big", torch.tensor([1.0, 1e6, 0.0]))
    assert len(batch) == 0


def test_spooled_batch_lives_in_a_file(tmp_path) -> None:
    batch = UpdateBatch(1000, capacity=3, spool=tmp_path)
    assert batch.spool_path is not None and batch.spool_path.stat().st_size == 3 * 1000 * 4
    batch.add("a", torch.arange(1000, dtype=torch.float32))
    on_disk = np.fromfile(batch.spool_path, dtype=np.float32, count=1000)
    np.testing.assert_array_equal(on_disk, np.arange(1000, dtype=np.float32))


def test_digest_is_the_payload_digest_of_the_row_unless_given() -> None:
    from bcfl_engine.protocol import payload_digest

    batch = UpdateBatch(3, capacity=3)
    batch.add("a", torch.tensor([1.0, 2.0, 3.0]))
    batch.add("b", torch.zeros(3), digest=b"\x01" * 32)
    assert batch.digest(0) == payload_digest(np.array([1, 2, 3], dtype="<f4").tobytes())
    assert batch.digest(1) == b"\x01" * 32
    # Ethereum's keccak256 of the empty string, a known constant.
    assert keccak256(b"").hex().startswith("c5d2460186f7233c927e7db2dcc703c0")
    with pytest.raises(InvalidArgument):
        batch.add("c", torch.zeros(3), digest=b"short")


def test_finite_check_is_exact_when_the_sum_overflows() -> None:
    from bcfl_engine.updates import all_finite

    huge = torch.full((10,), 3e38)  # finite values whose float32 sum overflows
    assert all_finite(huge)
    huge[3], huge[4] = float("inf"), float("-inf")  # opposite infinities sum to NaN
    assert not all_finite(huge)
    assert not all_finite(torch.tensor([1.0, float("nan")]))

"""The fused aggregate (csrc/ckks_accumulate.cpp) against the batch path and the torch reference.

Same payloads, same bytes out: stock TenSEAL payloads (zstd, zlib, stored), compact ones
(bit-packed or not, paired), mixed in one call, with and without weights; bit widths from 17 to
60 bits (every path of the bit unpacker, 59 included); and on bad input the same client named
with the same message as the batch parser, whichever payload is bad.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_engine import he
from bcfl_engine.errors import PayloadError
from bcfl_engine.he import wire
from bcfl_engine.he.accumulate import accumulate
from bcfl_engine.he.aggregate import fused_path

ts = pytest.importorskip("tenseal")
pytest.importorskip("bcfl_engine._C")

BATCH = dict(backend="torch", codec="native")  # the two-pass path: CiphertextBatch + ckks_sum


@pytest.fixture(scope="module")
def keys() -> he.Keys:
    return he.generate_keys("test")


@pytest.fixture(scope="module")
def stock(keys: he.Keys) -> dict[str, list[bytes]]:
    """5 clients' d = 2500 vectors (3 ciphertexts of 1024 slots) in every SEAL compression."""
    rng = np.random.default_rng(0)
    blobs = [ts.ckks_vector(keys.secret_context, rng.uniform(-1, 1, 2500).tolist()).serialize()
             for _ in range(5)]  # fmt: skip
    layout = wire.peek(blobs[0], keys.info)
    res = [wire.parse(b, layout)[0] for b in blobs]
    return {
        "zstd": blobs,
        "zlib": [wire.to_tenseal(r, layout, layout.scale, (4, 3), wire.COMPR_ZLIB) for r in res],
        "none": [wire.to_tenseal(r, layout, layout.scale, (4, 3)) for r in res],
        "compact": [wire.write_compact(r, layout, bitpacked=True) for r in res],
        "compact-u64": [wire.write_compact(r, layout, bitpacked=False) for r in res],
    }


def test_fused_is_the_default_path() -> None:
    assert fused_path(None, None) and fused_path("native", "native")
    assert not fused_path("torch", None) and not fused_path(None, "python")


@pytest.mark.parametrize("kind", ["zstd", "zlib", "none", "compact", "compact-u64", "mixed"])
@pytest.mark.parametrize("weights", [None, [3, 1, 4, 1, 5], [0.5, 0.25, 1.0, 2.0, 0.125]],
                         ids=["sum", "int", "frac"])  # fmt: skip
def test_fused_gives_the_batch_paths_bytes(
    keys: he.Keys, stock: dict[str, list[bytes]], kind: str, weights: list | None
) -> None:
    if kind == "mixed":  # one layout, every encoding: client i in encoding i
        blobs = [stock[k][i] for i, k in enumerate(["zstd", "zlib", "none", "zstd", "none"])]
    else:
        blobs = stock[kind]
    pub = keys.public_context()
    for n in (1, 2, 5):  # one client, two, a prime number
        w = None if weights is None else weights[:n]
        got = he.aggregate(blobs[:n], w, context=pub, frac_bits=4)
        assert got == he.aggregate(blobs[:n], w, context=pub, frac_bits=4, **BATCH), n


def test_compact_encodings_mix_and_paired(keys: he.Keys) -> None:
    pub = keys.public_context()
    xs = np.random.default_rng(1).uniform(-1, 1, (7, 3001))
    for pair in (False, True):
        blobs = [he.encrypt(x, pub, pair=pair, bitpacked=i % 2 == 0) for i, x in enumerate(xs)]
        w = [1, 2, 3, 4, 5, 6, 7]
        got = he.aggregate(blobs, w)
        assert got == he.aggregate(blobs, w, backend="torch", codec="python")


# Fake levels with primes of every kind of bit width (the sum never needs them prime): widths
# whose residues fit one 8-byte load after their start shift, 59 (which needs 16 bytes), 60.
WIDTHS = [[17], [31, 33], [45, 57], [58, 59, 60], [60]]


@pytest.mark.parametrize("widths", WIDTHS, ids=["-".join(map(str, w)) for w in WIDTHS])
@pytest.mark.parametrize("wkind", ["sum", "big"])
def test_bit_widths_and_lazy_reduction_against_the_reference(widths: list[int], wkind: str) -> None:
    rng = np.random.default_rng(sum(widths))
    primes = tuple(int((1 << (b - 1)) + 2 * rng.integers(1, 1 << 15) + 1) for b in widths)
    N, d, n = 1024, 1100, 17  # 2 ciphertexts; 17 clients: two lazy reductions and a remainder
    layout = wire.Layout(N, primes, (1, 2, 3, 4), 2.0**20, wire.chunk_sizes(d, N // 2, False),
                         d, False)  # fmt: skip
    q = np.array(primes, dtype=np.uint64)[:, None]
    x = np.stack([rng.integers(0, 2**63, layout.shape, dtype=np.uint64) % q for _ in range(n)])
    x[:, ..., :64] = q - 1  # the largest residues: the lazy sums' worst case
    x[:, ..., 64:70] = 0
    w = None if wkind == "sum" else [2**59 + 7 * i for i in range(n)]
    want = he.ckks_sum_reference(torch.from_numpy(x.view(np.int64)), primes, w)
    for packed in (True, False):
        blobs = [wire.write_compact(xi, layout, bitpacked=packed) for xi in x]
        got, versions = accumulate(blobs, layout, w)
        assert versions == [None] * n
        diff = (got != want).nonzero()
        assert diff.numel() == 0, f"{diff.shape[0]} residues differ; first at {diff[0].tolist()}"


def bad_variants(blobs: list[bytes], layout: wire.Layout) -> dict[str, bytes]:
    res, _ = wire.parse(blobs[0], layout)
    unreduced = res.copy()
    unreduced[1, 1, 0, 7] = layout.primes[0]
    huge = res.copy()
    huge[0, 0, 0, 3] = 2**63 + 5  # past 2^63: the sign trick of the range check must see it
    flipped = bytearray(blobs[0])  # (a flipped literal bit can decode fine: no zstd checksum)
    off, _ = wire.parse_proto(memoryview(blobs[0])).spans[1]
    flipped[off + 16] ^= 0xFF  # the second ciphertext's zstd frame magic
    return {
        "truncated": blobs[0][:-100],
        "empty": b"",
        "unreduced-stock": wire.to_tenseal(unreduced, layout, layout.scale),
        "unreduced-u64": wire.write_compact(unreduced, layout, bitpacked=False),
        "huge-u64": wire.write_compact(huge, layout, bitpacked=False),
        "flipped-zstd": bytes(flipped),
        "trailing": blobs[0] + b"\x00",
    }


@pytest.mark.parametrize("where", [0, 2, 4], ids=["first", "middle", "last"])
def test_bad_payloads_name_the_same_client_with_the_same_message(
    keys: he.Keys, stock: dict[str, list[bytes]], where: int
) -> None:
    pub, blobs = keys.public_context(), stock["zstd"]
    layout = wire.peek(blobs[0], keys.info)
    ids = ["ann", "bob", "cy", "dee", "eve"]
    for name, bad in bad_variants(blobs, layout).items():
        mixed = list(blobs)
        mixed[where] = bad
        errors = []
        for kw in ({}, BATCH):
            with pytest.raises(PayloadError) as exc:
                he.aggregate(mixed, [1, 2, 3, 4, 5], context=pub, client_ids=ids, **kw)
            errors.append(str(exc.value))
        assert errors[0].startswith(f"client {ids[where]!r}:"), (name, errors[0])
        assert errors[0] == errors[1], name
    # two bad clients: the first one is named
    two = [blobs[0], b"junk", blobs[2], blobs[3][:50], blobs[4]]
    with pytest.raises(PayloadError, match="client 'bob'"):
        he.aggregate(two, context=pub, client_ids=ids)
    assert len(stock["zstd"]) == 5 and stock["zstd"][0] == blobs[0]  # inputs untouched


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["zstd", "zlib", "none", "compact", "compact-u64"]),
    pos=st.integers(min_value=0, max_value=1 << 20),
    value=st.integers(min_value=1, max_value=255),
    head=st.booleans(),
    victim=st.integers(min_value=0, max_value=2),
)
def test_mutations_accepted_or_rejected_like_the_batch_parser(
    keys: he.Keys, stock: dict[str, list[bytes]], which: str, pos: int, value: int, head: bool,
    victim: int,
) -> None:  # fmt: skip
    blobs = list(stock[which][:3])
    b = bytearray(blobs[victim])
    pos = pos % 200 if head else pos % len(b)
    b[pos] ^= value
    blobs[victim] = bytes(b)
    layout = wire.peek(stock[which][0], keys.info)
    outs: list[object] = []
    for fused in (True, False):
        try:
            if fused:
                outs.append(accumulate(blobs, layout, [1, 2, 3], ["a", "b", "c"])[0])
            else:
                batch = he.CiphertextBatch(keys.public_context(), 3, layout=layout, codec="native")
                batch.add_many(list(zip("abc", blobs, strict=True)))
                outs.append(batch.sum([1, 2, 3], backend="torch")[0])
        except PayloadError as exc:
            outs.append(str(exc))
    if isinstance(outs[0], str) or isinstance(outs[1], str):
        assert outs[0] == outs[1]
    else:
        assert torch.equal(outs[0], outs[1])  # type: ignore[arg-type]


def test_acc_adds_one_payload_at_a_time(keys: he.Keys, stock: dict[str, list[bytes]]) -> None:
    """``acc=``: payloads decoded one call each into a running sum give the one-call sum, in
    place; a wrong buffer is refused before anything is read."""
    from bcfl_engine.errors import InvalidArgument

    blobs = stock["zstd"]
    layout = wire.peek(blobs[0], keys.info)
    want, _ = accumulate(blobs, layout)
    acc, _ = accumulate(blobs[:1], layout)
    for b in blobs[1:]:
        out, versions = accumulate([b], layout, acc=acc)
        assert out is acc and versions[0] is not None  # a TenSEAL payload's SEAL version
    assert torch.equal(acc, want)
    strided = torch.zeros(acc.shape[::-1], dtype=torch.int64).permute(3, 2, 1, 0)
    for bad in (acc.to(torch.int32), acc[..., :-1], strided):
        with pytest.raises(InvalidArgument, match="acc must be"):
            accumulate(blobs[:1], layout, acc=bad)

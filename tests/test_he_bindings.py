"""The CKKS bindings of csrc/bindings_he.cpp check every argument before any byte is read or written.

he_parse, he_parse_many, he_proto_bytes, he_write_proto, he_accumulate and ckks_sum take tensors
and bytes-like objects (never addresses). Each one is called here with a good set of arguments
(its result checked against the Python codec or the torch reference) and then with one defect
at a time: a wrong dtype, a non-contiguous array, a shape that disagrees with the layout, an
output that overlaps an input, a buffer shorter than the layout says, an output in read-only
memory, a layout that is not a checked CkksLayout. Every defect raises InvalidArgument and
leaves every argument as it was. A CkksLayout refuses bad fields when it is built.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bcfl_engine import he
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he import wire
from bcfl_engine.he.accumulate import native_layout
from bcfl_engine.he.ckks_sum import shoup_tables

C_ = pytest.importorskip("bcfl_engine._C")

# A fake level (the codec never needs the primes prime): N = 64, two primes, d = 70 reals in
# C = 3 ciphertexts of 32 slots; three clients.
N, PRIMES, D, NCLIENTS = 64, (1073741789, 1152921504606846883), 70, 3
LAYOUT = wire.Layout(N, PRIMES, (1, 2, 3, 4), 2.0**20, wire.chunk_sizes(D, N // 2, False), D, False)
SHAPE = LAYOUT.shape  # [C, 2, K, N]
C, K = LAYOUT.ciphertexts, LAYOUT.residues


def residues(seed: int = 0) -> torch.Tensor:
    """Clients' residues [n, C, 2, K, N] int64, each below its prime."""
    rng = np.random.default_rng(seed)
    q = np.array(PRIMES, dtype=np.uint64)[:, None]
    x = rng.integers(0, 2**63, (NCLIENTS, *SHAPE), dtype=np.uint64) % q
    return torch.from_numpy(x.view(np.int64))


X = residues()
BLOBS = [wire.write_compact(x.numpy().view(np.uint64), LAYOUT) for x in X]
WEIGHTS = [3, 1, 4]
PROTO_SIZE = C_.he_proto_size(native_layout(LAYOUT))


def lay(layout: wire.Layout = LAYOUT) -> Any:
    """The extension's CkksLayout of ``layout``."""
    return native_layout(layout)


# The layout as the bindings took it before CkksLayout: a tuple holding addresses.
OLD_TUPLE = (N, K, C, D, 0, LAYOUT.scale, 12345678, 12345678, 12345678)


def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def strided(*shape: int) -> torch.Tensor:
    """An int64 tensor of ``shape`` that is not contiguous (the transpose of a contiguous one)."""
    return zeros(*reversed(shape)).permute(*reversed(range(len(shape))))


def overlapping_payload(blob: bytes, out_words: int) -> tuple[np.ndarray, torch.Tensor]:
    """``blob`` as a uint8 array whose memory is also the start of an int64 output."""
    store = zeros(max(out_words, len(blob) // 8 + 1))
    raw = store.numpy().view(np.uint8)
    raw[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    return raw[: len(blob)], store[:out_words]


# ---- the six bindings, good arguments, then one defect at a time -------------------------------


def parse_args(**o: Any) -> tuple:
    return (o.get("blob", BLOBS[0]), o.get("lay", lay()), o.get("out", zeros(*SHAPE)))


def parse_many_args(**o: Any) -> tuple:
    return (
        o.get("blobs", list(BLOBS)),
        o.get("lay", lay()),
        o.get("out", zeros(NCLIENTS, *SHAPE)),
    )


def proto_bytes_args(**o: Any) -> tuple:
    return (o.get("data", X[0].clone()), o.get("lay", lay()), LAYOUT.scale, 4, 3)


def write_proto_args(**o: Any) -> tuple:
    return (*proto_bytes_args(**o), o.get("out", bytearray(PROTO_SIZE)))


def accumulate_args(**o: Any) -> tuple:
    w, ws = shoup_tables(WEIGHTS, PRIMES)
    return (
        o.get("blobs", list(BLOBS)),
        o.get("lay", lay()),
        o.get("w", w),
        o.get("ws", ws),
        o.get("acc", zeros(*SHAPE)),
    )


def sum_args(**o: Any) -> tuple:
    w, ws = shoup_tables(WEIGHTS, PRIMES)
    q = torch.tensor([int(p) for p in PRIMES], dtype=torch.int64)
    x = o.get("x", X.clone())
    return (
        x,
        o.get("q", q),
        o.get("w", w),
        o.get("ws", ws),
        o.get("acc"),
        o.get("out", zeros(*SHAPE)),
    )


def test_good_arguments_give_the_reference_results() -> None:
    rc, msg, major, _ = C_.he_parse(*(a := parse_args()))
    assert (rc, msg, major) == (0, "", 0) and torch.equal(a[2], X[0])
    bad, msg, versions = C_.he_parse_many(*(a := parse_many_args()))
    assert (bad, msg, versions) == (-1, "", [(0, 0)] * NCLIENTS) and torch.equal(a[2], X)
    proto = C_.he_proto_bytes(*proto_bytes_args())
    assert proto == wire.to_tenseal(X[0].numpy().view(np.uint64), LAYOUT, LAYOUT.scale, (4, 3))
    C_.he_write_proto(*(a := write_proto_args()))
    assert bytes(a[-1]) == proto
    want = he.ckks_sum_reference(X, PRIMES, WEIGHTS)
    bad, msg, _ = C_.he_accumulate(*(a := accumulate_args()))
    assert (bad, msg) == (-1, "") and torch.equal(a[4], want)
    C_.ckks_sum(*(a := sum_args()))
    assert torch.equal(a[5], want)
    acc = want.clone()  # acc may be the output itself: accumulate in place
    C_.ckks_sum(*sum_args(acc=acc, out=acc))
    assert torch.equal(acc, he.ckks_sum_reference(X, PRIMES, WEIGHTS, acc=want))


def test_a_bad_payload_is_a_result_not_an_error() -> None:
    rc, msg, _, _ = C_.he_parse(*parse_args(blob=BLOBS[0][:-9]))
    assert rc != 0 and msg
    bad, msg, _ = C_.he_accumulate(*accumulate_args(blobs=[BLOBS[0], b"", BLOBS[2]]))
    assert bad == 1 and msg


def _cases() -> dict[str, tuple[Callable[..., Any], Callable[[], tuple]]]:
    store = zeros(NCLIENTS * int(np.prod(SHAPE)) + PROTO_SIZE // 8 + 1)
    overlap_data = store[: int(np.prod(SHAPE))].view(SHAPE)
    words = int(np.prod(SHAPE))
    p_blob, p_out = overlapping_payload(BLOBS[0], words)
    m_blob, m_out = overlapping_payload(BLOBS[1], NCLIENTS * words)
    a_blob, a_out = overlapping_payload(BLOBS[2], words)
    return {
        # he_parse
        "parse-out-dtype": (C_.he_parse, lambda: parse_args(out=zeros(*SHAPE, dtype=torch.int32))),
        "parse-payload-type": (C_.he_parse, lambda: parse_args(blob="not bytes")),
        "parse-out-strided": (C_.he_parse, lambda: parse_args(out=strided(*SHAPE))),
        "parse-payload-strided": (C_.he_parse, lambda: parse_args(blob=memoryview(BLOBS[0])[::2])),
        "parse-out-shape": (C_.he_parse, lambda: parse_args(out=zeros(C, 2, K, N // 2))),
        "parse-layout-sizes-short": (
            C_.he_parse,
            lambda: parse_args(lay=lay(dataclasses.replace(LAYOUT, sizes=LAYOUT.sizes[:-1]))),
        ),
        "parse-layout-address": (C_.he_parse, lambda: parse_args(lay=OLD_TUPLE)),
        "parse-out-overlaps-payload": (
            C_.he_parse,
            lambda: parse_args(blob=p_blob, out=p_out.view(SHAPE)),
        ),
        # he_parse_many
        "parse_many-out-dtype": (
            C_.he_parse_many,
            lambda: parse_many_args(out=zeros(NCLIENTS, *SHAPE, dtype=torch.float64)),
        ),
        "parse_many-payload-type": (
            C_.he_parse_many,
            lambda: parse_many_args(blobs=[BLOBS[0], 7, BLOBS[2]]),
        ),
        "parse_many-payloads-sequence": (C_.he_parse_many, lambda: parse_many_args(blobs=BLOBS[0])),
        "parse_many-out-strided": (
            C_.he_parse_many,
            lambda: parse_many_args(out=strided(NCLIENTS, *SHAPE)),
        ),
        "parse_many-out-short": (
            C_.he_parse_many,
            lambda: parse_many_args(out=zeros(NCLIENTS - 1, *SHAPE)),
        ),
        "parse_many-out-overlaps-payload": (
            C_.he_parse_many,
            lambda: parse_many_args(
                blobs=[BLOBS[0], m_blob, BLOBS[2]], out=m_out.view(NCLIENTS, *SHAPE)
            ),
        ),
        # he_proto_bytes (it allocates its output: no output to get wrong)
        "proto_bytes-data-dtype": (
            C_.he_proto_bytes,
            lambda: proto_bytes_args(data=X[0].to(torch.float64)),
        ),
        "proto_bytes-data-strided": (
            C_.he_proto_bytes,
            lambda: proto_bytes_args(data=strided(*SHAPE)),
        ),
        "proto_bytes-data-short": (
            C_.he_proto_bytes,
            lambda: proto_bytes_args(data=zeros(C - 1, 2, K, N)),
        ),
        "proto_bytes-layout-tuple": (C_.he_proto_bytes, lambda: proto_bytes_args(lay=OLD_TUPLE)),
        # he_write_proto
        "write_proto-data-dtype": (
            C_.he_write_proto,
            lambda: write_proto_args(data=X[0].to(torch.int32)),
        ),
        "write_proto-out-readonly-bytes": (
            C_.he_write_proto,
            lambda: write_proto_args(out=bytes(PROTO_SIZE)),
        ),
        "write_proto-data-strided": (
            C_.he_write_proto,
            lambda: write_proto_args(data=strided(*SHAPE)),
        ),
        "write_proto-out-strided": (
            C_.he_write_proto,
            lambda: write_proto_args(out=memoryview(bytearray(2 * PROTO_SIZE))[::2]),
        ),
        "write_proto-data-shape": (
            C_.he_write_proto,
            lambda: write_proto_args(data=zeros(C, 2, K + 1, N)),
        ),
        "write_proto-out-short": (
            C_.he_write_proto,
            lambda: write_proto_args(out=bytearray(PROTO_SIZE - 1)),
        ),
        "write_proto-out-overlaps-data": (
            C_.he_write_proto,
            lambda: write_proto_args(data=overlap_data, out=store.numpy().view(np.uint8)),
        ),
        # he_accumulate
        "accumulate-acc-dtype": (
            C_.he_accumulate,
            lambda: accumulate_args(acc=zeros(*SHAPE, dtype=torch.float32)),
        ),
        "accumulate-w-dtype": (
            C_.he_accumulate,
            lambda: accumulate_args(w=torch.ones(NCLIENTS, K, dtype=torch.float64)),
        ),
        "accumulate-payload-type": (
            C_.he_accumulate,
            lambda: accumulate_args(blobs=[BLOBS[0], None, BLOBS[2]]),
        ),
        "accumulate-acc-strided": (C_.he_accumulate, lambda: accumulate_args(acc=strided(*SHAPE))),
        "accumulate-w-strided": (C_.he_accumulate, lambda: accumulate_args(w=strided(NCLIENTS, K))),
        "accumulate-acc-shape": (
            C_.he_accumulate,
            lambda: accumulate_args(acc=zeros(C, 2, K, N, 1)),
        ),
        "accumulate-w-short": (
            C_.he_accumulate,
            lambda: accumulate_args(w=zeros(NCLIENTS - 1, K), ws=zeros(NCLIENTS - 1, K)),
        ),
        "accumulate-w-without-ws": (C_.he_accumulate, lambda: accumulate_args(ws=None)),
        "accumulate-acc-overlaps-payload": (
            C_.he_accumulate,
            lambda: accumulate_args(blobs=[BLOBS[0], BLOBS[1], a_blob], acc=a_out.view(SHAPE)),
        ),
        "accumulate-acc-overlaps-w": (
            C_.he_accumulate,
            lambda: (
                lambda t: accumulate_args(w=t[: NCLIENTS * K].view(NCLIENTS, K), acc=t.view(SHAPE))
            )(zeros(words)),
        ),
        # ckks_sum
        "sum-x-dtype": (C_.ckks_sum, lambda: sum_args(x=X.to(torch.float64))),
        "sum-out-dtype": (C_.ckks_sum, lambda: sum_args(out=zeros(*SHAPE, dtype=torch.int32))),
        "sum-x-strided": (C_.ckks_sum, lambda: sum_args(x=strided(*X.shape))),
        "sum-acc-strided": (C_.ckks_sum, lambda: sum_args(acc=strided(*SHAPE))),
        "sum-out-shape": (C_.ckks_sum, lambda: sum_args(out=zeros(C, 2, K, N - 1))),
        "sum-primes-short": (C_.ckks_sum, lambda: sum_args(q=torch.tensor([PRIMES[0]]))),
        "sum-primes-large": (
            C_.ckks_sum,
            lambda: sum_args(q=torch.tensor([PRIMES[0], 2**61 + 1], dtype=torch.int64)),
        ),
        "sum-w-short": (
            C_.ckks_sum,
            lambda: sum_args(w=zeros(NCLIENTS - 1, K), ws=zeros(NCLIENTS - 1, K)),
        ),
        "sum-out-overlaps-x": (C_.ckks_sum, lambda: (lambda x: sum_args(x=x, out=x[1]))(X.clone())),
        "sum-out-overlaps-acc": (
            C_.ckks_sum,
            lambda: (lambda t: sum_args(acc=t[:-8].view(SHAPE), out=t[8:].view(SHAPE)))(
                zeros(int(np.prod(SHAPE)) + 8)
            ),
        ),
    }


CASES = _cases()

# What each case's message must say (so a case cannot pass on some other check), by the first
# defect word of its id.
MESSAGES = {
    "dtype": "dtype must be",
    "type": "bytes-like object; got",
    "strided": "contiguous",
    "shape": "shape must be",
    "short": "",  # a tensor's "shape must be"; he_write_proto's "must hold"
    "address": "expected a bcfl_engine._C.CkksLayout",
    "overlaps": "overlaps an input",
    "sequence": "expected a sequence",
    "tuple": "expected a bcfl_engine._C.CkksLayout",
    "readonly": "writable bytes-like",
    "without": "both be None or both tensors",
    "large": "in (1, 2^60)",
}


def expected_message(case: str) -> str:
    words = case.split("-")[1:]
    for word in words:
        if word in MESSAGES:
            if word == "short":
                return "must hold" if case.startswith("write_proto") else "shape must be"
            return MESSAGES[word]
    raise AssertionError(f"{case}: no expected message")


BAD_LAYOUTS = {
    "N-not-a-power-of-two": dict(N=N + 1),
    "N-too-large": dict(N=1 << 18),
    "no-primes": dict(primes=()),
    "prime-too-large": dict(primes=(PRIMES[0], 2**60 + 33)),
    "prime-not-an-int": dict(primes=(1.5e9,)),
    "prime-negative": dict(primes=(-7,)),
    "primes-a-string": dict(primes="123"),
    "parms_id-short": dict(parms_id=(1, 2, 3)),
    "no-sizes": dict(sizes=()),
    "d-negative": dict(d=-1),
    "pair-2": dict(pair=2),
}


@pytest.mark.parametrize("defect", list(BAD_LAYOUTS))
def test_a_bad_layout_is_refused_when_built(defect: str) -> None:
    good = dict(N=N, d=D, pair=0, scale=LAYOUT.scale, primes=PRIMES, parms_id=(1, 2, 3, 4),
                sizes=LAYOUT.sizes)  # fmt: skip
    assert C_.CkksLayout(**good).shape == SHAPE
    with pytest.raises(InvalidArgument, match="CkksLayout"):
        C_.CkksLayout(**{**good, **BAD_LAYOUTS[defect]})


def snapshot(args: Any) -> Any:
    """A deep copy of every array-like in ``args``, to compare with after the call."""
    if isinstance(args, (tuple, list)):
        return [snapshot(a) for a in args]
    if isinstance(args, torch.Tensor):
        return args.clone()
    if isinstance(args, (bytes, bytearray, memoryview, np.ndarray)):
        return bytes(memoryview(args).tobytes())
    return args


def same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return bool(a == b)


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_argument_raises_and_changes_nothing(case: str) -> None:
    fn, make = CASES[case]
    args = make()
    before = snapshot(args)
    with pytest.raises(InvalidArgument) as info:
        fn(*args)
    assert expected_message(case) in str(info.value), (case, str(info.value))
    after = snapshot(args)
    assert same(before, after), f"{case}: an argument changed"


def test_every_binding_has_a_case_of_every_defect() -> None:
    want = {
        "parse": {"dtype", "strided", "shape", "overlaps"},
        "parse_many": {"dtype", "strided", "short", "overlaps"},
        "proto_bytes": {"dtype", "strided", "short"},
        "write_proto": {"dtype", "strided", "shape", "short", "overlaps", "readonly"},
        "accumulate": {"dtype", "strided", "shape", "short", "overlaps"},
        "sum": {"dtype", "strided", "shape", "short", "overlaps"},
    }
    for binding, defects in want.items():
        names = [c for c in CASES if c.split("-", 1)[0] == binding]
        for defect in defects:
            assert any(defect in c for c in names), (binding, defect)


# ---- outputs in read-only memory (a crash must fail the test, not end pytest) -------------------

READONLY_SCRIPT = r"""
import sys, warnings
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
import test_he_bindings as t
from bcfl_engine.errors import InvalidArgument

warnings.simplefilter("ignore")  # torch.from_numpy of a read-only array
words = t.NCLIENTS * int(np.prod(t.SHAPE))
m = np.memmap(sys.argv[1], dtype=np.int64, mode="r", shape=(words,))
ro = torch.from_numpy(m)
one = ro[: int(np.prod(t.SHAPE))].view(t.SHAPE)
raw = np.frombuffer(m, dtype=np.uint8)  # writeable=False: refused by the buffer protocol too
calls = {
    "he_parse": (t.C_.he_parse, t.parse_args(out=one)),
    "he_parse_many": (t.C_.he_parse_many, t.parse_many_args(out=ro.view(t.NCLIENTS, *t.SHAPE))),
    "he_write_proto": (t.C_.he_write_proto, t.write_proto_args(out=raw)),
    "he_accumulate": (t.C_.he_accumulate, t.accumulate_args(acc=one)),
    "ckks_sum": (t.C_.ckks_sum, t.sum_args(out=one)),
    "ckks_sum in place": (t.C_.ckks_sum, t.sum_args(acc=one, out=one)),
}
outcomes = []
for name, (fn, args) in calls.items():
    try:
        fn(*args)
        outcomes.append(name + ": no error")
    except InvalidArgument as exc:
        outcomes.append(name + ": InvalidArgument" + (" (read-only)" if "read-only" in str(exc) else ""))
print(";".join(outcomes))
"""


def test_read_only_outputs_are_refused_not_written(tmp_path: Path) -> None:
    path = tmp_path / "out.i64"
    words = NCLIENTS * int(np.prod(SHAPE))
    data = np.arange(words, dtype=np.int64)
    data.tofile(path)
    proc = subprocess.run(
        [sys.executable, "-c", READONLY_SCRIPT, str(path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    outcomes = proc.stdout.strip().splitlines()[-1].split(";")
    assert len(outcomes) == 6 and all("InvalidArgument" in o for o in outcomes), outcomes
    # The tensors' memory is refused by the writability probe, not by a dtype or shape check.
    assert all(o.endswith("(read-only)") for o in outcomes if "write_proto" not in o), outcomes
    assert np.array_equal(np.fromfile(path, dtype=np.int64), data)


def test_the_python_codec_needs_no_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the native codec builds a CkksLayout: a pure-Python install still parses.
    from bcfl_engine.he import accumulate, batch

    def missing() -> Any:
        raise ImportError("no extension")

    monkeypatch.setattr(accumulate, "native", missing)
    monkeypatch.setattr(batch, "native", missing)
    b = batch.CiphertextBatch(layout=LAYOUT, codec="python", capacity=NCLIENTS)
    for i, blob in enumerate(BLOBS):
        b.add(i, blob)
    assert torch.equal(b.residues, X)

"""Declared sizes against the bytes: a payload cannot make the aggregator allocate what it claims.

A payload declares sizes in several places: a compact header (K, N, C, d), a CKKSVectorProto
(sizes, d, the ciphertext fields), a SEAL header (the object's size), a ciphertext's metadata
(N, K, size) and a zstd frame header (its content size). Each is checked against the payload's
byte length and the context before anything is allocated for it, by every path (fused native,
batch native, Python): a typed PayloadError that names the field, never a MemoryError.

The hostile payloads run in a subprocess whose address space is capped at 1 GiB above what it
holds once everything is imported: a path that allocated what a payload declares (200 GiB, 1 TiB)
would fail there with MemoryError or RuntimeError instead of PayloadError.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("tenseal")

SCRIPT = r"""
import json, resource, struct, sys
import numpy as np
import tenseal as ts
from bcfl_engine import he
from bcfl_engine.backends import _load_native
from bcfl_engine.he import wire
from bcfl_engine.he.seal import SEAL_HEADER, SEAL_MAGIC

keys = he.generate_keys("test")
pub = keys.public_context()
stock = ts.ckks_vector(keys.secret_context, np.linspace(-1, 1, 1500).tolist()).serialize()
layout = wire.peek(stock, keys.info)
res, _ = wire.parse(stock, layout)
stored = wire.to_tenseal(res, layout, layout.scale)
compact = wire.write_compact(res, layout, bitpacked=True)


def with_first_ct(blob, edit):
    proto = wire.parse_proto(memoryview(blob))
    cts = [blob[o : o + n] for o, n in proto.spans]
    cts[0] = edit(cts[0])
    return wire.write_proto(cts, proto.sizes, proto.scale, proto.d, proto.pair)


def zstd_header(ct, header):
    # The stock frame header is magic, descriptor 0x60 (single segment, 2-byte content size).
    body = ct[16:]
    assert body[:5] == bytes.fromhex("28b52ffd60"), body[:5].hex()
    new = body[:4] + header + body[7:]
    return SEAL_HEADER.pack(SEAL_MAGIC, 16, ct[3], ct[4], 2, 0, 16 + len(new)) + new


def fcs8(size):  # descriptor 0xE0: single segment, 8-byte Frame_Content_Size
    return b"\xe0" + size.to_bytes(8, "little")


expected = 97 + 16 * layout.residues * layout.poly_degree
big = struct.pack("<4sBBHIIQ", b"BCKS", 1, 1, 2, 32768, 204800, 204800 * 16384)
big += struct.pack("<4Qd", 1, 2, 3, 4, 2.0**40) + struct.pack("<2Q", (1 << 59) + 1, (1 << 59) + 3)
meta_huge = bytearray(stored)
off = wire.parse_proto(memoryview(stored)).spans[0][0] + 16
meta_huge[off + 41 : off + 57] = struct.pack("<QQ", 1 << 40, 1 << 20)  # N, K
size_huge = bytearray(stored)
size_huge[off + 33 : off + 41] = struct.pack("<Q", 1 << 40)  # the ciphertext's size (2 polys)
count_huge = bytearray(stored)
count_huge[off + 89 : off + 97] = struct.pack("<Q", 1 << 50)  # the residue array's count
seal_huge = bytearray(stored)
seal_huge[off - 8 : off] = struct.pack("<Q", 1 << 62)
bad_c = bytearray(compact)
bad_c[12:16] = struct.pack("<I", layout.ciphertexts + 1000)
more_sizes = stored + bytes([1 << 3, 0x80, 0x08])  # one more `sizes` entry (1024)
# 100,000 ciphertexts of 27 bytes (a SEAL header, a zstd frame header claiming the right size,
# an empty RLE block): 3 MB of payload claiming 3.2 GB of residues at this level.
tiny_frame = bytes.fromhex("28b52ffd") + fcs8(expected) + bytes([0x03, 0, 0])
tiny = SEAL_HEADER.pack(SEAL_MAGIC, 16, 4, 3, 2, 0, 16 + len(tiny_frame)) + tiny_frame
first = wire.parse_proto(memoryview(stock))
many = wire.write_proto(
    [stock[o : o + n] for o, n in first.spans] + [tiny] * 99_998,
    (1024,) * 100_000,
    first.scale,
    None,
    False,
)

cases = {
    "compact-80B-declaring-200GiB": bytes(big),
    "compact-truncated": compact[:-1],
    "compact-oversized": compact + b"\0",
    "compact-C-vs-d": bytes(bad_c),
    "zstd-frame-claiming-1TiB": with_first_ct(stock, lambda ct: zstd_header(ct, fcs8(1 << 40))),
    "zstd-content-size-plus-one": with_first_ct(
        stock, lambda ct: zstd_header(ct, fcs8(expected + 1))
    ),
    "zstd-content-size-minus-one": with_first_ct(
        stock, lambda ct: zstd_header(ct, fcs8(expected - 1))
    ),
    "zstd-no-content-size": with_first_ct(stock, lambda ct: zstd_header(ct, b"\x00\x38")),
    "seal-header-declaring-2^62": bytes(seal_huge),
    "ciphertext-meta-declaring-N2^40-K2^20": bytes(meta_huge),
    "ciphertext-meta-declaring-size-2^40": bytes(size_huge),
    "residue-array-declaring-2^50-values": bytes(count_huge),
    "proto-sizes-vs-ciphertexts": more_sizes,
    "proto-truncated": stock[: len(stock) // 2],
    "100k-tiny-zstd-ciphertexts": many,
}

valid = {"compact": compact, "stock": stock}
paths = {
    "aggregate": lambda b: he.aggregate([b, stock], context=pub),
    "aggregate-no-context": lambda b: he.aggregate([b], context=None),
    "aggregate-python": lambda b: he.aggregate([b, stock], context=pub, codec="python"),
    "aggregate-second": lambda b: he.aggregate([stock, b], context=pub),
    "aggregate-second-batch": lambda b: he.aggregate([stock, b], context=pub, fused=False),
    "batch-python": lambda b: he.CiphertextBatch(pub, 2, codec="python").add("c", b),
    "batch-python-layout": lambda b: he.CiphertextBatch(
        pub, 2, layout=layout, codec="python"
    ).add("c", b),
}
if _load_native()[0] is not None:
    paths["batch-native"] = lambda b: he.CiphertextBatch(pub, 2, codec="native").add("c", b)
    paths["batch-native-layout"] = lambda b: he.CiphertextBatch(
        pub, 2, layout=layout, codec="native"
    ).add("c", b)

with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
try:
    bytearray(2 << 30)
    capped = False
except MemoryError:
    capped = True
for name, blob in valid.items():  # the valid payloads still pass under the cap
    for path, call in paths.items():
        if not (path == "aggregate-no-context" and name == "stock"):
            call(blob)
out = []
for name, blob in cases.items():
    for path, call in paths.items():
        if path == "aggregate-no-context" and not name.startswith("compact"):
            continue
        try:
            call(blob)
            out.append([name, path, "accepted", ""])
        except BaseException as exc:
            out.append([name, path, type(exc).__name__, str(exc)])
print(json.dumps({"capped": capped, "results": out}))
"""

# Each case: the words (any of) that name the declaration at fault in every path's message.
FIELDS = {
    "compact-80B-declaring-200GiB": [
        "holds 80 bytes; its header (K=2, N=32768, C=204800)",
        "compact header: K=2; the batch has K=1",
    ],
    "compact-truncated": ["compact payload holds"],
    "compact-oversized": ["compact payload holds"],
    "compact-C-vs-d": ["ciphertexts; C=", "compact header: C=1002; the batch has C=2"],
    "zstd-frame-claiming-1TiB": ["zstd frame declares a content size of 1099511627776 bytes"],
    "zstd-content-size-plus-one": ["zstd frame declares a content size of"],
    "zstd-content-size-minus-one": ["zstd frame declares a content size of"],
    "zstd-no-content-size": ["zstd frame does not declare its content size"],
    "seal-header-declaring-2^62": ["SEAL header says 4611686018427387904 bytes"],
    "ciphertext-meta-declaring-N2^40-K2^20": [
        "N=1099511627776, K=1048576",
        "SEAL body holds",
    ],
    "ciphertext-meta-declaring-size-2^40": ["ciphertext size 1099511627776; expected 2"],
    "residue-array-declaring-2^50-values": ["residue array holds", "residue array header invalid"],
    "proto-sizes-vs-ciphertexts": ["3 sizes for 2 ciphertexts", "ciphertexts and 3 sizes"],
    "proto-truncated": ["exceeds the", "runs past the end"],
    "100k-tiny-zstd-ciphertexts": [
        "fewer than one byte a residue",
        "more than the 2 ciphertexts expected",
        "100000 ciphertexts and 100000 sizes; expected 2",
    ],
}


@pytest.fixture(scope="module")
def results() -> dict:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out: dict = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def test_the_address_space_cap_bites(results: dict) -> None:
    assert results["capped"], "a 2 GiB allocation succeeded under the cap: the cases prove nothing"


@pytest.mark.parametrize("case", sorted(FIELDS))
def test_declared_sizes_raise_a_payload_error_naming_the_field(results: dict, case: str) -> None:
    rows = [r for r in results["results"] if r[0] == case]
    assert len(rows) >= 7, rows
    for _, path, kind, msg in rows:
        assert kind == "PayloadError", f"{path}: {kind}: {msg}"
        assert any(f in msg for f in FIELDS[case]), f"{path}: {msg}"

"""The payload parsers under attack: mutated payloads give PayloadError or a valid row, never a crash.

Hypothesis mutates real payloads (truncation, bit flips, byte overwrites, forged lengths) and
feeds both codecs: they must agree on accept/reject and, when both accept, on every residue.
A sanitizer test compiles the codec (csrc/seal_codec.cpp, seal_body.cpp, seal_zstd.cpp,
ckks_accumulate.cpp) standalone with -fsanitize=address,undefined and runs it on a corpus of mutated payloads: any read past a buffer or undefined behaviour fails it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_engine import he
from bcfl_engine.errors import PayloadError
from bcfl_engine.he import wire

ts = pytest.importorskip("tenseal")
pytest.importorskip("bcfl_engine._C")
ROOT = Path(__file__).resolve().parents[1]


class Corpus:
    """Valid payloads of one layout (N = 2048, 2 ciphertexts): stock zstd/zlib/none, compact."""

    def __init__(self) -> None:
        self.keys = he.generate_keys("test")
        ctx = self.keys.secret_context
        x = np.linspace(-1, 1, 1500)
        stock = ts.ckks_vector(ctx, x.tolist()).serialize()
        self.layout = wire.peek(stock, self.keys.info)
        res, _ = wire.parse(stock, self.layout)
        self.payloads = {
            "zstd": stock,
            "zlib": wire.to_tenseal(res, self.layout, self.layout.scale, (4, 3), wire.COMPR_ZLIB),
            "none": wire.to_tenseal(res, self.layout, self.layout.scale, (4, 3)),
            "compact": wire.write_compact(res, self.layout, bitpacked=True),
            "compact-u64": wire.write_compact(res, self.layout, bitpacked=False),
        }


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus()


def parse_both(corpus: Corpus, blob: bytes) -> tuple[object, object]:
    """Each codec's residues, or the PayloadError it raised."""
    out = []
    for codec in ("native", "python"):
        batch = he.CiphertextBatch(
            corpus.keys.public_context(), 1, layout=corpus.layout, codec=codec
        )
        try:
            batch.add("c", blob)
            out.append(batch.residues[0].clone())
        except PayloadError as exc:
            out.append(exc)
    return out[0], out[1]


def mutate(blob: bytes, kind: str, pos: int, value: int) -> bytes:
    b = bytearray(blob)
    pos %= len(b)
    if kind == "truncate":
        return bytes(b[:pos])
    if kind == "flip":
        b[pos] ^= 1 << (value % 8)
    elif kind == "set":
        b[pos] = value % 256
    elif kind == "length":  # a forged varint / u64 length: huge, off by one, or zero
        forged = [0xFFFFFFFFFFFFFFFF, 1 << 40, len(blob) + 1, 0][value % 4]
        b[pos : pos + 8] = struct.pack("<Q", forged)
    elif kind == "append":
        b += bytes([value % 256]) * (1 + pos % 9)
    return bytes(b)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["zstd", "zlib", "none", "compact", "compact-u64"]),
    kind=st.sampled_from(["truncate", "flip", "set", "length", "append"]),
    pos=st.integers(min_value=0, max_value=1 << 20),
    value=st.integers(min_value=0, max_value=255),
    head=st.booleans(),
)
def test_mutated_payloads_are_rejected_or_parsed_identically(
    corpus: Corpus, which: str, kind: str, pos: int, value: int, head: bool
) -> None:
    blob = corpus.payloads[which]
    if head:  # most checks guard the first ~200 bytes: aim there half the time
        pos %= 200
    native, python = parse_both(corpus, mutate(blob, kind, pos, value))
    if isinstance(native, PayloadError) or isinstance(python, PayloadError):
        assert isinstance(native, PayloadError) and isinstance(python, PayloadError), (
            native,
            python,
        )
        assert "client 'c'" in str(native) and "client 'c'" in str(python)
    else:
        assert np.array_equal(native, python)


def test_every_corpus_payload_parses(corpus: Corpus) -> None:
    rows = [parse_both(corpus, blob) for blob in corpus.payloads.values()]
    for native, python in rows:
        assert np.array_equal(native, python) and np.array_equal(native, rows[0][0])


def test_unreduced_residue_is_rejected(corpus: Corpus) -> None:
    res, _ = wire.parse(corpus.payloads["none"], corpus.layout)
    res[1, 0, 0, 5] = corpus.layout.primes[0]  # q itself: one past the largest residue
    for blob in (
        wire.to_tenseal(res, corpus.layout, corpus.layout.scale),
        wire.write_compact(res, corpus.layout, False),
    ):
        native, python = parse_both(corpus, blob)
        assert isinstance(native, PayloadError) and "not below its prime" in str(native)
        assert isinstance(python, PayloadError) and "not below its prime" in str(python)


DRIVER = r"""
// Feeds each payload file to bcfl::parse_payload under ASan/UBSan.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>
#include "seal_codec.h"
#include "ckks_accumulate.h"
int main(int argc, char** argv) {
  std::ifstream lay(argv[1]);
  long long n, k, c, d, pair; double scale;
  lay >> n >> k >> c >> d >> pair >> scale;
  std::vector<uint64_t> primes(k), pid(4); std::vector<int64_t> sizes(c);
  for (auto& q : primes) lay >> q;
  for (auto& p : pid) lay >> p;
  for (auto& s : sizes) lay >> s;
  bcfl::CkksLayout L{n, k, c, d, (int)pair, scale, primes.data(), pid.data(), sizes.data()};
  std::vector<uint64_t> out(c * 2 * k * n), acc(c * 2 * k * n);
  std::ifstream f0(argv[2], std::ios::binary);  // the first file: a valid payload
  std::vector<uint8_t> first((std::istreambuf_iterator<char>(f0)), std::istreambuf_iterator<char>());
  int accepted = 0;
  for (int i = 2; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    char msg[bcfl::kMsgLen]; uint8_t version[2];
    // An exact-size heap copy: ASan flags a read even one byte past the payload.
    auto* p = new uint8_t[buf.size() + 1];
    std::copy(buf.begin(), buf.end(), p);
    const int ok = bcfl::parse_payload(p, (int64_t)buf.size(), L, out.data(), version, msg) == 0;
    accepted += ok;
    // The fused path on the same bytes, alone and beside a valid payload: same verdict.
    const uint64_t bufs[2] = {(uint64_t)p, (uint64_t)first.data()};
    const int64_t lens[2] = {(int64_t)buf.size(), (int64_t)first.size()};
    uint8_t versions[4];
    std::fill(acc.begin(), acc.end(), 0);
    if ((bcfl::accumulate_payloads(2, bufs, lens, L, nullptr, nullptr, acc.data(), versions, msg) < 0) != ok ||
        (bcfl::accumulate_payloads(1, bufs, lens, L, nullptr, nullptr, acc.data(), versions, msg) < 0) != ok)
      std::printf("fused and batch parsers disagree on %s\n", argv[i]);
    delete[] p;
  }
  std::printf("accepted %d of %d\n", accepted, argc - 2);
}
"""


CODEC_SOURCES = ("seal_codec.cpp", "seal_body.cpp", "seal_zstd.cpp", "ckks_accumulate.cpp")


@pytest.mark.slow
def test_codec_under_address_and_ub_sanitizers(corpus: Corpus, tmp_path: Path) -> None:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    (tmp_path / "driver.cpp").write_text(DRIVER)
    libs, defs = ["-lz", "-ldl"], []  # zstd loaded at run time (csrc/seal_zstd.h)
    if os.path.exists("/usr/include/zstd.h"):
        libs, defs = ["-lz", "-lzstd"], ["-DBCFL_HAVE_ZSTD=1"]
    exe = tmp_path / "fuzz"
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
        f"-I{ROOT / 'csrc'}",
        *defs,
        *(str(ROOT / "csrc" / f) for f in CODEC_SOURCES),
        str(tmp_path / "driver.cpp"),
        "-o",
        str(exe),
        *libs,
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    L = corpus.layout
    (tmp_path / "layout.txt").write_text(
        " ".join(
            map(
                str,
                [
                    L.poly_degree,
                    L.residues,
                    L.ciphertexts,
                    L.d,
                    int(L.pair),
                    repr(L.scale),
                    *L.primes,
                    *L.parms_id,
                    *L.sizes,
                ],
            )
        )
    )
    rng = np.random.default_rng(0)
    files = []
    for name, blob in corpus.payloads.items():
        variants = [blob] + [
            mutate(
                blob,
                kind,
                int(rng.integers(0, 300 if i % 2 else len(blob))),
                int(rng.integers(0, 256)),
            )
            for i, kind in enumerate(["truncate", "flip", "set", "length", "append"] * 8)
        ]
        for i, v in enumerate(variants):
            path = tmp_path / f"{name}-{i}.bin"
            path.write_bytes(v)
            files.append(str(path))
    run = subprocess.run(
        [str(exe), str(tmp_path / "layout.txt"), *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "disagree" not in run.stdout, run.stdout[-3000:]
    assert "runtime error" not in run.stderr and "AddressSanitizer" not in run.stderr, run.stderr[
        -3000:
    ]
    accepted = int(run.stdout.split()[1])
    assert len(corpus.payloads) <= accepted < len(files)  # the originals pass, most mutants do not

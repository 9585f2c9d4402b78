"""zstd without its headers: stock TenSEAL payloads (zstd by default) aggregate bit-exact anyway.

The extension is rebuilt here with ``BCFL_ZSTD_HEADERS=0``, as on a machine without libzstd-dev
(the README's main command on a fresh machine), and loaded in a subprocess in place of the
installed one: it must load ``libzstd.so.1`` at run time, link no libzstd, and sum stock payloads
bit for bit as TenSEAL does. With the runtime library out of reach (``BCFL_ZSTD_LIBRARY``) the
Python codec decompresses zstd bodies for it, with the same result. ``bcfl info`` names the path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bcfl_engine import backends
from bcfl_engine.backends import ZstdPath, _load_native, zstd_line, zstd_path

ROOT = Path(__file__).resolve().parents[1]

# Run in a subprocess: argv[1] is the extension to load as bcfl_engine._C. Prints, as JSON, the
# zstd path, the module's file, and for each aggregation path whether its residues equal
# TenSEAL's own sum's, bit for bit.
SCRIPT = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bcfl_engine._C", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["bcfl_engine._C"] = mod

import numpy as np
import tenseal as ts
from bcfl_engine import he
from bcfl_engine.backends import native, zstd_path
from bcfl_engine.he import wire

keys = he.generate_keys("test")
ctx, pub = keys.secret_context, keys.public_context()
rng = np.random.default_rng(7)
blobs = [ts.ckks_vector(ctx, rng.uniform(-1, 1, 2500).tolist()).serialize() for _ in range(3)]
assert all(wire.parse_proto(memoryview(b)).spans for b in blobs)
weights = [1, 3, 2]
acc = None
for blob, w in zip(blobs, weights):
    for _ in range(w):  # TenSEAL's own homomorphic sum: w additions
        v = ts.ckks_vector_from(ctx, blob)
        acc = v if acc is None else acc + v
want = acc.serialize()
k, n = len(keys.info.highest.primes), keys.info.poly_degree

def residues(blob):
    spans = wire.parse_proto(memoryview(blob)).spans
    return [bytes(wire.seal_body(memoryview(blob)[o : o + ln], k, n)[1]) for o, ln in spans]

compressed = [memoryview(b)[o + 5] for b in blobs for o, _ in wire.parse_proto(memoryview(b)).spans]
got = {
    "fused": he.aggregate(blobs, weights, context=pub),
    "batch-native": he.aggregate(blobs, weights, context=pub, codec="native", fused=False),
    "batch-one-by-one": he.aggregate(blobs, weights, context=pub, codec="native", block=1),
}
print(json.dumps({
    "file": native().__file__,
    "path": zstd_path()[0].name,
    "stock_zstd": all(c == wire.COMPR_ZSTD for c in compressed),
    "exact": {name: residues(out) == residues(want) for name, out in got.items()},
}))
"""


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([ROOT / "setup.py", *(p for p in (ROOT / "csrc").iterdir() if p.is_file())]):
        h.update(path.name.encode() + path.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def headerless_build(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The extension built from this tree with BCFL_ZSTD_HEADERS=0 (cached per source digest)."""
    # CI (BCFL_REQUIRE_NATIVE=1) builds strictly: a missing toolchain fails there, not skips.
    strict = os.environ.get("BCFL_REQUIRE_NATIVE") == "1"
    missing = [m for m in ("pybind11",) if importlib.util.find_spec(m) is None]
    missing += [] if shutil.which("g++") or shutil.which("c++") else ["a C++ compiler"]
    if missing:
        assert not strict, f"BCFL_REQUIRE_NATIVE=1 but no {missing}"
        pytest.skip(f"no {missing}")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    base = cache.mkdir("zstd-headerless") if cache else tmp_path_factory.mktemp("headerless")
    out = base / _source_digest()
    built = list(out.glob("bcfl_engine/_C*"))
    if not built:
        env = {**os.environ, "BCFL_BUILD_EXT": "1", "BCFL_ZSTD_HEADERS": "0"}
        env.pop("BCFL_SANITIZE", None)  # loaded into a plain interpreter below
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out)]
        run = subprocess.run(
            [*cmd, "--build-temp", str(out / "obj")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        built = list(out.glob("bcfl_engine/_C*"))
    assert len(built) == 1, built
    return built[0]


def _run(so: Path, **env: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(so)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result: dict = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_headerless_build_links_no_libzstd(headerless_build: Path) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf (binutils)")
    needed = subprocess.run([readelf, "-d", str(headerless_build)], capture_output=True, text=True)
    assert needed.returncode == 0 and "NEEDED" in needed.stdout, needed.stderr
    assert "libzstd" not in needed.stdout


@pytest.mark.slow
def test_headerless_build_sums_stock_payloads_bit_exact(headerless_build: Path) -> None:
    pytest.importorskip("tenseal")
    got = _run(headerless_build, BCFL_ZSTD_LIBRARY="")
    assert got["file"] == str(headerless_build)
    assert got["stock_zstd"], "TenSEAL no longer compresses with zstd: this test checks nothing"
    assert got["path"] == ZstdPath.RUNTIME.name
    assert got["exact"] == {"fused": True, "batch-native": True, "batch-one-by-one": True}


@pytest.mark.slow
def test_without_the_runtime_library_the_python_codec_decodes_zstd(headerless_build: Path) -> None:
    pytest.importorskip("tenseal")
    pytest.importorskip("zstandard")
    got = _run(headerless_build, BCFL_ZSTD_LIBRARY=str(ROOT / "no-such-libzstd.so.1"))
    assert got["path"] == ZstdPath.PYTHON.name
    assert got["exact"] == {"fused": True, "batch-native": True, "batch-one-by-one": True}


def test_zstd_path_matches_the_extension() -> None:
    path, detail = zstd_path()
    mod, _ = _load_native()
    if mod is None:
        assert path in (ZstdPath.PYTHON, ZstdPath.NONE)
    else:
        source, lib = mod.zstd_info()
        want = {1: (ZstdPath.HEADERS,), 2: (ZstdPath.RUNTIME,)}
        assert path in want.get(source, (ZstdPath.PYTHON, ZstdPath.NONE))
        if path is ZstdPath.RUNTIME:
            assert detail == lib and Path(lib).exists()
    assert zstd_line().startswith(f"zstd: {path.value}")


def test_bcfl_info_names_the_zstd_path(capsys: pytest.CaptureFixture[str]) -> None:
    from bcfl_engine.cli import main

    assert main(["info"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("zstd: ")]
    assert lines == [zstd_line()]


@pytest.mark.parametrize("zstandard", [True, False], ids=["zstandard", "no-zstandard"])
def test_without_the_extension_zstd_falls_to_python_or_none(
    monkeypatch: pytest.MonkeyPatch, zstandard: bool
) -> None:
    def module_reason(name: str, extra: str) -> str | None:
        return None if zstandard or name != "zstandard" else "zstandard not importable"

    monkeypatch.setattr(backends, "_load_native", lambda: (None, "extension not built"))
    monkeypatch.setattr(backends, "_module_reason", module_reason)
    zstd_path.cache_clear()
    try:
        path, detail = zstd_path()
        assert path is (ZstdPath.PYTHON if zstandard else ZstdPath.NONE)
        assert "extension not built" in detail and not backends.native_zstd()
    finally:
        zstd_path.cache_clear()

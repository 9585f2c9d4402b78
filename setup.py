"""Build script: the Python package, its kernels, contract artifacts and the optional C++ extension.

BCFL_BUILD_EXT selects how the extension ``bcfl_engine._C`` (csrc/, C++17 + OpenMP) is built:
  auto (default)  try; on failure warn and install the pure-Python package (slower CPU paths)
  1               build it or fail the install (CI)
  0               do not build it
BCFL_NATIVE_ARCH=0 drops ``-march=native`` (set it when building a wheel for other machines).
BCFL_ZSTD_HEADERS selects how the codec reaches zstd (TenSEAL's default compression):
  auto (default)  zstd.h found: compile against it and link libzstd; else load libzstd.so.1 at
                  run time (no headers needed; csrc/seal_zstd.h declares what it calls)
  1               require zstd.h (fail the build without it)
  0               never use zstd.h: the run-time path, as on a machine without libzstd-dev
BCFL_BUILD_JOBS: parallel compile jobs (default: one per CPU).
"""

from __future__ import annotations

import os
import sys
from glob import glob
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

BUILD_EXT = os.environ.get("BCFL_BUILD_EXT", "auto").strip().lower()
if BUILD_EXT not in {"auto", "0", "1"}:
    sys.exit(f"BCFL_BUILD_EXT must be auto, 0 or 1; got {BUILD_EXT!r}")


class OptionalBuildExt(build_ext):
    """Builds the extension; under BCFL_BUILD_EXT=auto a failure only warns."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if BUILD_EXT == "1":
                raise
            print(
                f"WARNING: bcfl_engine._C not built ({exc}); CPU paths fall back.", file=sys.stderr
            )

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            if BUILD_EXT == "1":
                raise
            print(f"WARNING: {ext.name} not built ({exc}); CPU paths fall back.", file=sys.stderr)


ZSTD_HEADERS = os.environ.get("BCFL_ZSTD_HEADERS", "auto").strip().lower()
if ZSTD_HEADERS not in {"auto", "0", "1"}:
    sys.exit(f"BCFL_ZSTD_HEADERS must be auto, 0 or 1; got {ZSTD_HEADERS!r}")


def zstd_header() -> str | None:
    """The directory holding zstd.h among the compiler's default include paths, or None.

    Directories from CPATH and friends count too: whoever sets them sets LIBRARY_PATH as well.
    """
    dirs = ["/usr/include", "/usr/local/include"]
    for var in ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    return next((d for d in dirs if os.path.exists(os.path.join(d, "zstd.h"))), None)


def zstd_options() -> dict:
    """Extension options for zstd: linked against the headers, or loaded at run time (dlopen)."""
    found = zstd_header() if ZSTD_HEADERS != "0" else None
    if ZSTD_HEADERS == "1" and found is None:
        sys.exit("BCFL_ZSTD_HEADERS=1 but no zstd.h (install libzstd-dev)")
    if found is None:
        return {"libraries": ["z", "dl"], "define_macros": []}
    return {"libraries": ["z", "zstd"], "define_macros": [("BCFL_HAVE_ZSTD", "1")]}


def extensions() -> list:
    if BUILD_EXT == "0":
        return []
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension

    # Sources compile in parallel (setuptools alone compiles one file at a time).
    ParallelCompile("BCFL_BUILD_JOBS").install()

    args = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("BCFL_NATIVE_ARCH", "1") != "0":
        args.append("-march=native")
    if os.environ.get("BCFL_SANITIZE"):
        # Address + undefined-behaviour sanitizer build for the codec fuzz tests.
        args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link = ["-fopenmp"] + (
        ["-fsanitize=address,undefined"] if os.environ.get("BCFL_SANITIZE") else []
    )
    return [
        Pybind11Extension(
            "bcfl_engine._C",
            sorted(glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=args,
            extra_link_args=link,
            **zstd_options(),
        )
    ]


setup(
    name="bcfl_engine",
    version="0.1.0",
    description="Aggregation engine for blockchain-based federated learning: CKKS secure "
    "aggregation, Byzantine-robust rules and on-chain round proofs.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "bcfl_engine",
        "bcfl_engine.rules",
        "bcfl_engine.he",
        "bcfl_engine.chain",
        "bcfl_engine.integrations",
        "bcfl_engine.demo",
        "bcfl_engine.kernels",
        "bcfl_engine.contracts",
    ],
    package_dir={
        "bcfl_engine": "bcfl_engine",
        "bcfl_engine.kernels": "kernels",
        "bcfl_engine.contracts": "contracts",
    },
    package_data={"bcfl_engine.contracts": ["*.sol", "artifacts/*.json", "package.json"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "tqdm>=4.60",
        "pycryptodome>=3.18",
        # blake3: the payload digest (protocol.payload_digest), ~4 GB/s per core vs keccak's 0.26.
        "blake3>=0.4",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "numba": ["numba>=0.59"],
        "he": ["tenseal==0.3.18", "zstandard>=0.22"],
        # coincurve: libsecp256k1 for eth-keys; signature checks drop from ~40 ms to ~0.5 ms.
        "chain": ["web3>=7", "eth-tester[py-evm]>=0.14.0b1", "eth-account>=0.13", "coincurve>=20"],
        "flower": ["flwr[simulation]>=1.20"],
        # NVIDIA FLARE's HE aggregator and robust rules (bcfl_engine.integrations.nvflare); the
        # server's TenSEAL must be the clients' (nvflare[he] pins 0.3.15 on Python < 3.13).
        "nvflare": ["nvflare==2.9.0", "tenseal==0.3.18", "zstandard>=0.22"],
        # Google's privacy accountant (RDP and PLD) for bcfl_engine.dp's budgets.
        "dp": ["dp-accounting==0.6.0"],
        # The demo's flags work after the README's install: --dp-noise accounts with dp-accounting.
        "demo": ["scikit-learn>=1.3", "matplotlib>=3.7", "dp-accounting==0.6.0"],
        # ByzFL (a benchmark peer) is installed with --no-deps: its package requires torchvision,
        # which would replace the CPU torch with a multi-GB CUDA build; its aggregators need neither.
        "bench": ["pytest-benchmark>=4", "flwr>=1.20"],
        "dev": [
            "blake3>=0.4",
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.10",
            "pybind11>=2.12",
            "triton>=3.0",
            "numba>=0.59",
            "tenseal==0.3.18",
            "zstandard>=0.22",
            "web3>=7",
            "eth-tester[py-evm]>=0.14.0b1",
            "eth-account>=0.13",
            "coincurve>=20",
            "flwr[simulation]>=1.20",
            "nvflare==2.9.0",
            "scikit-learn>=1.3",
            "matplotlib>=3.7",
            "pytest-benchmark>=4",
            "dp-accounting==0.6.0",
        ],
    },
    entry_points={"console_scripts": ["bcfl=bcfl_engine.cli:main"]},
)

#!/usr/bin/env bash
# The robust-rule and CKKS benchmarks on a CUDA device: the engine's Triton path against its torch
# reference, ByzFL and plain torch on the same device (Flower on the host, numpy), each size
# reported in GB/s against the device's copy bandwidth (a device-to-device y.copy_(x) over the
# same buffer, measured in the same run: the "of copy" column) and the x.sum() read floor.
#
#   benchmarks/gpu.sh                       # n=64, d=1M and n=1000, d=100k
#   benchmarks/gpu.sh --quick --json gpu.json
# Extra arguments go to benchmarks/robust.py (--sizes, --rules, --repeats, --budget, --json).
set -euo pipefail
cd "$(dirname "$0")/.."

python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device (a CUDA build of torch and a GPU are needed)")
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, torch {torch.__version__}")
PY

python benchmarks/robust.py --device cuda --backend triton "$@"
# CKKS: the Triton modular sum next to the CPU paths and TenSEAL (bcfl-compact-gpu row).
if [[ " $* " == *" --quick "* ]]; then
  python benchmarks/bench_ckks.py --quick
else
  python benchmarks/bench_ckks.py --n 32 256
fi

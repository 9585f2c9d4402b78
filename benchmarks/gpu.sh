#!/usr/bin/env bash
# The robust-rule and CKKS benchmarks on a CUDA device: the engine's Triton path against its torch
# reference, ByzFL and plain torch on the same device (Flower on the host, numpy), each size
# reported in GB/s against the device's copy bandwidth (a device-to-device y.copy_(x) over the
# same buffer, measured in the same run: the "of copy" column) and the x.sum() read floor.
#
#   benchmarks/gpu.sh                       # n=64, d=1M and n=1000, d=100k
#   benchmarks/gpu.sh --quick --json gpu.json
# Extra arguments go to benchmarks/robust.py (--sizes, --rules, --repeats, --budget, --json).
# With more than one GPU it also runs the distributed aggregate over NCCL (one rank per GPU,
# torchrun), each result checked bit for bit against one process on GPU 0; with one GPU that
# part is skipped with a message. (The NCCL path has not been run on GPUs yet.)
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

# The distributed aggregate over NCCL: one rank per GPU, the rows on each rank's GPU.
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
if (( ngpu > 1 )); then
  if [[ " $* " == *" --quick "* ]]; then size=(--clients 64 --dim 100000); else size=(--clients 1000 --dim 1000000); fi
  for rule in mean median krum; do
    f=1; [[ $rule == mean ]] && f=0
    python -m torch.distributed.run --nproc-per-node "$ngpu" --master-addr 127.0.0.1 \
      --master-port "$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
      -m bcfl_engine.distributed --dist-backend nccl "${size[@]}" --rule "$rule" --f "$f" --check
  done
else
  echo "gpu.sh: the NCCL distributed aggregate needs 2 or more GPUs; this machine has $ngpu: skipped"
fi

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in one command: the gpu-marked tests, then the GPU benchmark (tinygrad_gpt on CuPy
# against torch CUDA, eager per-head and fused SDPA, on the lecture config).
#
#   benchmarks/gpu.sh              tests + benchmark (lecture config; results in benchmarks/results/gpu/)
#   benchmarks/gpu.sh --quick      tests + a short benchmark (small config)
#   benchmarks/gpu.sh --train      also the lecture preset's 5000-step training run on cuda (goal: val loss <= 1.49)
#   benchmarks/gpu.sh --no-tests   benchmark only
#
# Environment: PYTHON (default python3); OUT (default benchmarks/results/gpu); TF32=1 lets both engines use TF32
# tensor-core matmuls (default: off in both, full float32; the choice is printed); TINYGRAD_GPT_KERNELS=0 times the
# plain CuPy path without the numba kernels.
#
# Dependencies: when CuPy, numba-cuda, torch and pytest already import (the lent GPU machines have them and no
# network), nothing is installed and the package runs from this checkout. Otherwise the extras that match the driver
# are installed: CUDA 12 -> .[gpu,test,bench]; CUDA 13 -> .[gpu-cu13,bench] plus pytest and hypothesis ([test] pins
# the CUDA 12 builds of CuPy and numba-cuda, for CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
QUICK=0 TRAIN=0 TESTS=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --train) TRAIN=1 ;;
    --no-tests) TESTS=0 ;;
    *) echo "gpu.sh: unknown argument $arg (use --quick, --train, --no-tests)" >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "gpu.sh: no NVIDIA GPU (nvidia-smi failed)" >&2; exit 2; }
CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)

echo "== dependencies"
if $PY -c "import cupy, numba.cuda, torch, pytest, hypothesis, safetensors, tqdm, matplotlib" 2>/dev/null; then
  echo "using the installed packages (nothing installed)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif [ "${CUDA_MAJOR:-12}" -ge 13 ]; then
  $PY -m pip install -q -e ".[gpu-cu13,bench]" "pytest>=7" "hypothesis>=6.80"
else
  $PY -m pip install -q -e ".[gpu,test,bench]"
fi

# TF32: one choice for both engines, printed with the results
if [ "${TF32:-0}" = "1" ]; then
  export CUPY_TF32=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
  unset NVIDIA_TF32_OVERRIDE
  TF32_NOTE="TF32 ON in both engines (CUPY_TF32=1, TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)"
else
  export NVIDIA_TF32_OVERRIDE=0 CUPY_TF32=0
  TF32_NOTE="TF32 OFF in both engines (NVIDIA_TF32_OVERRIDE=0: cuBLAS computes float32 matmuls in float32)"
fi

$PY - <<EOF
import cupy, numba, numba.cuda, torch
import tinygrad_gpt
from tinygrad_gpt import kernels
print("cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| driver", cupy.cuda.runtime.driverGetVersion(), "| device", cupy.cuda.Device().compute_capability)
print("numba", numba.__version__, "| numba-cuda", getattr(numba.cuda, "implementation", "?"),
      "| torch", torch.__version__, "(CUDA", torch.version.cuda, ")", "| tinygrad_gpt", tinygrad_gpt.__version__)
print("torch.backends.cuda.matmul.allow_tf32 =", torch.backends.cuda.matmul.allow_tf32)
print("custom kernels:", "on" if kernels.enabled() else "off (TINYGRAD_GPT_KERNELS=0 or numba-cuda unusable)")
print("$TF32_NOTE")
EOF

status=0
if [ "$TESTS" = "1" ]; then
  echo "== tests marked gpu"
  $PY -m pytest -m gpu -q -p no:cacheprovider -rs || status=$?
fi

echo "== benchmark ($TF32_NOTE)"
mkdir -p "$OUT"
ENGINES="tinygrad_gpt-cuda torch-lecture-cuda torch-fused-cuda"   # torch eager as the lecture writes it; fused SDPA
if [ "$QUICK" = "1" ]; then
  $PY benchmarks/bench.py --devices cuda --engines $ENGINES --quick --out "$OUT" || status=$?
else
  $PY benchmarks/bench.py --devices cuda --engines $ENGINES --configs lecture --out "$OUT" || status=$?
fi
echo "$TF32_NOTE" > "$OUT/tf32.txt"

if [ "$TRAIN" = "1" ]; then
  echo "== training: lecture preset on cuda, 5000 steps (the lecture reports val 1.4873; goal <= 1.49)"
  $PY -m tinygrad_gpt train --preset lecture --device cuda --out runs/lecture-cuda --force --no-progress || status=$?
fi
exit $status

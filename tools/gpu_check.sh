#!/usr/bin/env bash
# The first run on a GPU machine: an environment with mmcv's CUDA ops, then the GPU suite, a
# short --amp training of each demo on cuda:0, the per-layer profile at the COCO Table-1 shape
# and one Table-4 task on CUDA; the report goes to work_dirs/gpu_check/report.md. Under 10
# minutes on one GPU once the environment exists. See docs/gpu_check.md.
#
# Without a GPU it says so and exits 0. With one, every stage runs even when one before it
# failed; the exit status is 1 when any stage (the setup included) failed.
#
# Environment:
#   FLORA_MM_VENV   the environment with the CUDA build of mmcv, built or refreshed here with
#                   FORCE_CUDA=1 bash tools/setup_env.sh (default <repo>/.venv-cuda, apart from
#                   the CPU build's .venv)
#   GPU_CHECK_SETUP=0  use FLORA_MM_VENV as it is, no setup_env (a machine without network)
#   TORCH_CUDA_ARCH_LIST  archs of the CUDA build (default: this GPU's, e.g. 9.0; a wheel cached
#                   for other archs is reused only when they are named here)
#   GPU_CHECK_OUT   report folder (default work_dirs/gpu_check; emptied first)
#   PYTHON          interpreter that looks for the GPU (default: the environment's, else python3)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${GPU_CHECK_OUT:-work_dirs/gpu_check}
VENV=${FLORA_MM_VENV:-$ROOT/.venv-cuda}

# the GPU's compute capability (e.g. 9.0), empty without a GPU
ARCH=
for py in "${PYTHON:-}" "$VENV/bin/python" "$ROOT/.venv/bin/python" python3; do
  if [ -n "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
    PROBE=$py
    ARCH=$("$py" -c 'import torch
if torch.cuda.is_available(): print("%d.%d" % torch.cuda.get_device_capability(0))')
    break
  fi
done
if [ -z "$ARCH" ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1)
fi
if [ -z "$ARCH" ]; then
  echo "[gpu_check] no CUDA GPU on this machine (torch sees none, no nvidia-smi GPU): nothing" \
    "to check; run it on a GPU machine (docs/gpu_check.md)"
  exit 0
fi

rm -rf "$OUT"
mkdir -p "$OUT"
SETUP_RC=0
if [ "${GPU_CHECK_SETUP:-1}" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
  echo "[gpu_check] GPU arch $ARCH; FORCE_CUDA=1 FLORA_MM_VENV=$VENV bash tools/setup_env.sh" \
    "(archs $TORCH_CUDA_ARCH_LIST; log $OUT/setup.log)"
  FORCE_CUDA=1 FLORA_MM_VENV=$VENV bash tools/setup_env.sh > "$OUT/setup.log" 2>&1
  SETUP_RC=$?
else
  echo "[gpu_check] GPU_CHECK_SETUP=0: using $VENV as it is" > "$OUT/setup.log"
fi
PY=$VENV/bin/python
[ -x "$PY" ] || PY=${PROBE:-python3}
PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PY" -m flora_mm.testing.gpu_check \
  --root "$ROOT" --out "$OUT" --setup-log "$OUT/setup.log" --setup-rc "$SETUP_RC"

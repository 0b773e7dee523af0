#!/usr/bin/env bash
# Build (or refresh) the project environment in .venv: torch, mmcv with compiled ops, the mm*
# packages, timm and flora_mm itself. Idempotent: a second run with unchanged requirements
# returns in seconds; the mmcv wheel (about 15 min to compile on 2 cores, CPU ops) is cached
# outside the repository and reused by every later install, CI runs included.
#
# Environment:
#   FLORA_MM_VENV   where the environment lives (default: <repo>/.venv)
#   FLORA_MM_CACHE  wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/flora_mm)
#   FORCE_CUDA=1    also compile mmcv's CUDA kernels with the system nvcc (needs no GPU)
#   TORCH_CUDA_ARCH_LIST  GPU archs of the CUDA kernels (default: "8.0;9.0", A100 and H100)
#   FLORA_MM_MMCV_BUILD   keep the unpacked mmcv sources and compiled objects in this directory,
#                   so that a failed or interrupted compile resumes instead of restarting
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/tools/setup_env.sh
VENV=${FLORA_MM_VENV:-$ROOT/.venv}
CACHE=${FLORA_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flora_mm}
PYTHON=${PYTHON:-python3.11}
CONSTRAINTS=$ROOT/requirements/constraints.txt
MMCV_VERSION=$(sed -n 's/^mmcv==//p' "$CONSTRAINTS")
TORCH_VERSION=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
if [ "${FORCE_CUDA:-0}" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
  # one wheel per arch list: "8.0;9.0" -> cuda-sm80-sm90
  VARIANT=cuda-sm$(echo "$TORCH_CUDA_ARCH_LIST" | sed 's/[.+]//g; s/PTX/-ptx/g; s/[; ]\+/-sm/g')
else
  VARIANT=cpu
fi

log() { printf '[setup_env] %s\n' "$*" >&2; }

# Everything that decides the environment's contents; a change re-runs the install.
fingerprint() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$SELF" | sha256sum | cut -c1-16
  echo "$VARIANT"
}
STAMP=$VENV/.flora_mm_stamp

# --- start-up hook (issue 13): every Python start in the environment applies
# flora_mm/compat.py's fixes, so the mm* packages' own tools (mmrotate's tools/test.py imports
# mmrotate.models before a config can load flora_mm) work unchanged. compat.py imports only the
# standard library up front; a fix that needs a package runs when that package is imported.
write_startup_hook() {
  local site compat=$ROOT/flora_mm/compat.py
  for site in "$VENV"/lib/python3*/site-packages; do
    printf "import os.path, runpy; os.path.isfile('%s') and runpy.run_path('%s', run_name='flora_mm_compat_startup')['apply_compat']()\n" \
      "$compat" "$compat" > "$site/flora_mm_compat.pth"
  done
}
# ---

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ]; then
  write_startup_hook
  log "environment up to date: $VENV"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
export PIP_CONSTRAINT=$CONSTRAINTS
# pip, minus the per-package notes about this machine's local file indexes
pip_install() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  return "${PIPESTATUS[0]}"
}

log "installing build tools and torch $TORCH_VERSION"
pip_install install -q setuptools wheel ninja
pip_install install -q torch torchvision

# The one place where mmcv's sources are changed before compiling; each patch is checked.
patch_mmcv_sources() {
  local src=$1
  # 1. mmcv hard-codes -std=c++14 (cxx and nvcc); torch >= 2.10 headers refuse anything older
  #    than C++20.
  sed -i 's/-std=c++14/-std=c++20/g' "$src/setup.py"
  grep -q -- '-std=c++20' "$src/setup.py" && ! grep -q -- '-std=c++14' "$src/setup.py" \
    || { log "patch 1: mmcv setup.py has no -std flag to raise"; exit 1; }
}

# The build environment of the CUDA kernels (no GPU needed: nothing is launched).
cuda_build_env() {
  command -v nvcc >/dev/null || { log "FORCE_CUDA=1 needs nvcc on PATH"; exit 1; }
  # torch guesses CUDA_HOME as nvcc's grandparent, wrong when nvcc on PATH is a wrapper
  # (/usr/local/bin/nvcc here); nvcc itself reports its toolkit root.
  if [ -z "${CUDA_HOME:-}" ]; then
    CUDA_HOME=$(nvcc -dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')
    export CUDA_HOME=$(cd "$CUDA_HOME" && pwd -P)
  fi
  # torch's ATen/cuda headers include cuBLAS/cuSPARSE/cuSOLVER headers, which a bare toolkit
  # lacks; torch's own nvidia-* wheels ship them.
  local nv_inc
  nv_inc=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "include"))')
  [ -f "$nv_inc/cusparse.h" ] || { log "no cusparse.h under $nv_inc"; exit 1; }
  export CPATH=$nv_inc${CPATH:+:$CPATH}
  log "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_HOME=$CUDA_HOME, archs $TORCH_CUDA_ARCH_LIST"
}

PY_TAG=$("$VENV/bin/python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
WHEEL_DIR=$CACHE/wheels/mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_${PY_TAG}_${VARIANT}
MMCV_WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$MMCV_WHEEL" ]; then
  if [ "$VARIANT" = cpu ]; then
    log "compiling mmcv $MMCV_VERSION with CPU ops; about 15 min on 2 cores, once"
  else
    cuda_build_env
    log "compiling mmcv $MMCV_VERSION with CPU and CUDA ops; about 2 CPU-hours (1 h+ on 2 cores), once"
  fi
  if [ -n "${FLORA_MM_MMCV_BUILD:-}" ]; then
    BUILD=$FLORA_MM_MMCV_BUILD
    mkdir -p "$BUILD"
  else
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
  fi
  SRC=$BUILD/mmcv-$MMCV_VERSION
  if [ ! -d "$SRC" ]; then
    pip_install download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
  fi
  patch_mmcv_sources "$SRC"
  rm -rf "$BUILD/out"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    pip_install wheel -q --no-build-isolation --no-deps "$SRC" -w "$BUILD/out"
  mkdir -p "$WHEEL_DIR"
  # rename into place so an interrupted build never leaves a half-written wheel in the cache
  BUILT=$(ls "$BUILD"/out/mmcv-*.whl)
  cp "$BUILT" "$WHEEL_DIR/.tmp-$(basename "$BUILT")"
  mv "$WHEEL_DIR/.tmp-$(basename "$BUILT")" "$WHEEL_DIR/$(basename "$BUILT")"
  MMCV_WHEEL=$WHEEL_DIR/$(basename "$BUILT")
fi
log "using $MMCV_WHEEL"

log "installing the OpenMMLab stack"
pip_install install -q "$MMCV_WHEEL" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
  -r "$ROOT/requirements/tools.txt"
pip_install install -q --no-build-isolation --no-deps -e "$ROOT"
# peft and what it needs beyond the stack, off the default sys.path (requirements/peft.txt says
# why); tests/test_adapters/test_adapter_peft.py puts it on sys.path. Renamed into place, so an
# interrupted install leaves no half-filled directory.
PEFT_SITE=$VENV/peft-site
rm -rf "$PEFT_SITE.tmp"
pip_install install -q --no-deps --target "$PEFT_SITE.tmp" -r "$ROOT/requirements/peft.txt"
rm -rf "$PEFT_SITE"
mv "$PEFT_SITE.tmp" "$PEFT_SITE"
if [ "$VARIANT" != cpu ]; then
  # cuobjdump, with which tests/test_stack/test_cuda_build.py finds the kernels in the wheel
  pip_install install -q -r "$ROOT/requirements/cuda.txt"
fi
write_startup_hook

"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmrotate, timm, flora_mm; print('stack ok: flora_mm', flora_mm.__version__, '| mmcv ops compiled with CUDA:', mmcv.ops.get_compiling_cuda_version())"
fingerprint > "$STAMP"

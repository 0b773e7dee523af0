#!/usr/bin/env bash
# Build (or refresh) the project environment in .venv: torch, mmcv with compiled ops, the mm*
# packages, timm and flora_mm itself. Idempotent: a second run with unchanged requirements
# returns in seconds; the mmcv wheel (~13 min to compile on 2 cores) is cached outside the
# repository and reused by every later install, CI runs included.
#
# Environment:
#   FLORA_MM_VENV   where the environment lives (default: <repo>/.venv)
#   FLORA_MM_CACHE  wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/flora_mm)
#   FORCE_CUDA=1    also compile mmcv's CUDA kernels (GPU nodes; needs nvcc)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FLORA_MM_VENV:-$ROOT/.venv}
CACHE=${FLORA_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flora_mm}
PYTHON=${PYTHON:-python3.11}
CONSTRAINTS=$ROOT/requirements/constraints.txt
MMCV_VERSION=$(sed -n 's/^mmcv==//p' "$CONSTRAINTS")
TORCH_VERSION=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
VARIANT=$([ "${FORCE_CUDA:-0}" = 1 ] && echo cuda || echo cpu)

log() { printf '[setup_env] %s\n' "$*" >&2; }

# Everything that decides the environment's contents; a change re-runs the install.
fingerprint() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" | sha256sum | cut -c1-16
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

WHEEL_DIR=$CACHE/wheels/mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_cp311_${VARIANT}
MMCV_WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$MMCV_WHEEL" ]; then
  log "compiling mmcv $MMCV_VERSION with ops ($VARIANT); about 13 min on 2 cores, once"
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  pip_install download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
  tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
  SRC=$BUILD/mmcv-$MMCV_VERSION
  # torch >= 2.10 headers refuse anything older than C++20.
  sed -i 's/-std=c++14/-std=c++20/g' "$SRC/setup.py"
  grep -q -- '-std=c++20' "$SRC/setup.py" || { log "mmcv setup.py has no -std flag to raise"; exit 1; }
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
write_startup_hook

"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmrotate, timm, flora_mm; print('stack ok: flora_mm', flora_mm.__version__)"
fingerprint > "$STAMP"

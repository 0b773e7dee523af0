#!/usr/bin/env bash
# The quick start: build the environment, write the tiny datasets, fine-tune ConvNeXt-V2-atto
# with FLoRA on one of them with 2 processes (tools/dist_train.sh; gloo on a CPU-only machine),
# evaluate the checkpoint with 2 processes (tools/dist_test.sh) and print the metrics.
#
# Last, it draws the checkpoint's predictions on two test images (tools/infer.py) into
# <work dir>/infer/vis/.
#
# Usage: bash tools/demo.sh [CONFIG] [NPROC]
#   CONFIG  default configs/demo/upernet_convnextv2-atto-flora_tiny-ade.py (about 3 minutes on
#           2 CPU cores); the other demos are configs/demo/mask-rcnn_*.py and oriented-rcnn_*.py
#   NPROC   processes (GPUs when there are any), default 2
# Environment: FLORA_MM_TINY_DATA (default data/tiny), WORK_DIR (default work_dirs/demo/<name>),
# PORT (torchrun master port, default 29500).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=${1:-configs/demo/upernet_convnextv2-atto-flora_tiny-ade.py}
NPROC=${2:-2}
WORK_DIR=${WORK_DIR:-work_dirs/demo/$(basename "$CONFIG" .py)}
export FLORA_MM_TINY_DATA=${FLORA_MM_TINY_DATA:-data/tiny}
START=$SECONDS

bash tools/setup_env.sh
export PYTHON="${FLORA_MM_VENV:-$ROOT/.venv}/bin/python"

echo "[demo] writing the tiny datasets under $FLORA_MM_TINY_DATA"
"$PYTHON" tools/misc/make_tiny_datasets.py --root "$FLORA_MM_TINY_DATA" > /dev/null

echo "[demo] training $CONFIG with $NPROC processes -> $WORK_DIR"
bash tools/dist_train.sh "$CONFIG" "$NPROC" --work-dir "$WORK_DIR"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")

echo "[demo] evaluating $CHECKPOINT with $NPROC processes"
rm -rf "$WORK_DIR/test"
bash tools/dist_test.sh "$CONFIG" "$CHECKPOINT" "$NPROC" --work-dir "$WORK_DIR/test"

# mmengine's LoggerHook writes the test metrics to <work_dir>/<timestamp>/<timestamp>.json
"$PYTHON" - "$WORK_DIR/test" "$CONFIG" "$CHECKPOINT" <<'EOF'
import glob
import json
import sys

work_dir, config, checkpoint = sys.argv[1:]
log = sorted(glob.glob(f'{work_dir}/*/*.json'))[-1]
metrics = {k: v for k, v in json.load(open(log)).items() if k not in ('time', 'data_time')}
print(f'\n[demo] {config}\n[demo] checkpoint {checkpoint}')
for key, value in metrics.items():
    print(f'[demo]   {key:24s} {value}')
EOF

echo "[demo] drawing the predictions on two test images"
rm -rf "$WORK_DIR/infer"
"$PYTHON" tools/infer.py "$CONFIG" "$CHECKPOINT" --test-set 2 --out-dir "$WORK_DIR/infer" \
  > "$WORK_DIR/infer.log"
for picture in "$WORK_DIR"/infer/vis/*; do echo "[demo]   $picture"; done
echo "[demo] done in $((SECONDS - START)) s"

"""Plot ``AdapterAnalysisHook`` curves (paper Fig. 4) of several runs side by side.

    python tools/analysis/plot_adapter_curves.py WORK_DIR [WORK_DIR ...] \
        --labels FLoRA LoRA DoRA --out fig4.png [--stage all]

Each WORK_DIR is a training work dir (the latest ``<timestamp>/vis_data/scalars.json`` below it
is read) or a ``<timestamp>`` log dir, or a ``scalars.json`` file. Left: mean ``||dW||_F``;
right: mean feature amplification factor, against the iteration.
"""
from __future__ import annotations

import argparse
import os.path as osp

from flora_mm.analysis.curves import plot_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Plot AdapterAnalysisHook curves (Fig. 4)')
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--labels', nargs='+', help='one per work dir (default: dir names)')
    parser.add_argument('--stage', default='all', help="'all' or e.g. 'stage2'")
    parser.add_argument('--out', default='adapter_curves.png')
    args = parser.parse_args(argv)
    labels = args.labels or [osp.basename(osp.normpath(p)) for p in args.work_dirs]
    plot_runs(args.work_dirs, labels, args.out, args.stage)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()

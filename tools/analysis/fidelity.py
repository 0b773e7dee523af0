"""Does FLoRA beat LoRA at equal budget on a conv backbone, more so under a domain shift?

A command line over :mod:`flora_mm.analysis.fidelity` (see docs/fidelity.md); results under
``--out`` (default ``<root>/<full|quick>``)::

    python tools/analysis/fidelity.py            # 3 seeds, 9 cells x 2 tasks
    python tools/analysis/fidelity.py --quick    # smoke test: 1 seed, few iterations
    python tools/analysis/fidelity.py --sweep-scale   # also FLoRA at s in {0.04, 0.4, 4}

Every finished run is cached (``runs/<task>/<cell>/seed<k>/result.json``, keyed by everything
its result depends on), so an interrupted experiment resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from flora_mm.analysis.fidelity import QUICK, SCALES, TASKS, Settings, run_experiment

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 seed, frozen / LoRA / FLoRA, 8 iterations')
    parser.add_argument('--sweep-scale', action='store_true',
                        help=f'also run FLoRA at s in {SCALES} at every budget')
    parser.add_argument('--root', default=osp.join(REPO, 'work_dirs', 'fidelity'),
                        help='holds the cached pre-training and generated data')
    parser.add_argument('--out', help='output folder (default <root>/<quick|full>)')
    parser.add_argument('--configs', default=osp.join(REPO, 'configs'),
                        help='configs root holding fidelity/*.py (default: the repository\'s)')
    parser.add_argument('--seeds', type=int, nargs='+')
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS))
    parser.add_argument('--cells', nargs='+',
                        help='e.g. frozen full bitfit flora@b1 lora@b2 dora@b1 flora@b2-s1')
    parser.add_argument('--iters', type=int, help="training iterations (default: the configs')")
    parser.add_argument('--num-train', type=int)
    parser.add_argument('--num-val', type=int)
    parser.add_argument('--lr', type=float, help="AdamW learning rate (default: the configs')")
    parser.add_argument('--pretrain-iters', type=int)
    parser.add_argument('--report-only', action='store_true',
                        help='only summarize the runs finished so far (no training)')
    parser.add_argument('--jobs', type=int,
                        help='trainings at a time, each in its own process (default: 1 with '
                             '--quick, else 2 if the machine has 2 cores)')
    parser.add_argument('--threads', type=int,
                        help='torch threads per training (default: CPU cores / jobs)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the experiment and write its reports; returns the summary."""
    args = parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    for key in ('seeds', 'tasks', 'cells', 'iters', 'num_train', 'num_val', 'lr',
                'pretrain_iters'):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    settings = Settings(**overrides, sweep_scale=args.sweep_scale)
    out = args.out or osp.join(args.root, 'quick' if args.quick else 'full')
    jobs = args.jobs or (1 if args.quick else min(2, os.cpu_count() or 1))
    return run_experiment(settings, args.root, out, args.configs, jobs=jobs, threads=args.threads,
                          report_only=args.report_only,
                          log=lambda msg: print(msg, flush=True))


if __name__ == '__main__':
    main()

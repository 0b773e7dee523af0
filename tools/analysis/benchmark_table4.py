"""Table 4 at the real sizes: train-step time and peak memory of the Table-1 configs.

Builds the real ConvNeXt-V2-L configs (Mask R-CNN 1333x800 on COCO, UperNet 512x512 on
ADE20K, Oriented R-CNN 1024x1024 on DOTA) for the frozen base, the limit (frozen base with
activation gradients through every layer), FLoRA / LoRA / DoRA r42, LoHa / LoKr at the same
budget and full fine-tuning, with and without ``with_cp``, and measures one training iteration
on a synthetic batch (median after warm-up) and the peak memory the iterations add, in a fresh
process per job; each adapter method also gets its floor (the limit plus its own MACs at the
limit's rate) and its time over it. Results merge
into the JSON after every job, so a run can be interrupted and resumed; ``--report-only``
prints the table of what is there. See ``flora_mm.analysis.table4``.

Examples:
    python tools/analysis/benchmark_table4.py --tasks ade20k --methods flora lora limit
    python tools/analysis/benchmark_table4.py --tasks coco --methods limit flora lora loha \
        lokr --with-cp 0 --out docs/benchmarks/table4_coco_methods_cpu.json
    python tools/analysis/benchmark_table4.py --device cuda --amp bfloat16 \
        --out work_dirs/benchmarks/table4_cuda.json
"""
import argparse
import os.path as osp

from flora_mm.analysis.table4 import METHODS, TASKS, format_table, run_table, summarize, \
    table_jobs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--with-cp', nargs='+', type=int, default=[0, 1], choices=[0, 1],
                        help='activation checkpointing settings to measure')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--amp', nargs='?', const='auto', default=None,
                        choices=['auto', 'float16', 'bfloat16'],
                        help='mixed precision (flora_mm.AmpOptimWrapper); auto: float16 on '
                        'CUDA, bfloat16 on CPU (the only CPU choice)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help="default: 1 on CPU (2 for UperNet, whose pooled branch has a "
                        "BatchNorm), the config's batch on CUDA")
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--steps', type=int, default=2, help='timed iterations per run')
    parser.add_argument('--rounds', type=int, default=1,
                        help='runs per job (fresh process each, order rotated per round)')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--count-macs', action='store_true',
                        help='count the MACs of one more, untimed step in every job (the '
                        "limit's jobs always do: the floor needs them)")
    parser.add_argument('--timeout', type=float, default=None, help='seconds per run')
    parser.add_argument('--configs-root', default=osp.join(REPO, 'configs'))
    parser.add_argument('--out', default='work_dirs/benchmarks/table4.json')
    parser.add_argument('--report-only', action='store_true',
                        help='print the table of the results in --out, run nothing')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_only:
        import json
        with open(args.out) as f:
            print(format_table(summarize(json.load(f)['runs'])))
        return
    if args.amp == 'auto':
        args.amp = 'float16' if args.device.startswith('cuda') else 'bfloat16'
    jobs = table_jobs(args.tasks, args.methods, args.with_cp, root=args.configs_root,
                      device=args.device, amp=args.amp, batch_size=args.batch_size,
                      warmup=args.warmup, steps=args.steps, threads=args.threads,
                      count_macs=args.count_macs)
    report = run_table(jobs, args.out, rounds=args.rounds, timeout=args.timeout)
    print(format_table(report['summary']))
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()

"""Train-step time, peak memory and merged-inference latency of FLoRA vs LoRA / DoRA / LoHa /
LoKr / full FT.

For each timm ConvNeXt-V2 architecture, every method adapts the same layers (all convs and
linears under ``stages``) and trains the classification head, as in a dense-prediction
fine-tune where the task head is always trained:

* ``frozen``: no adapters, frozen backbone (only the head trains) - the floor;
* ``flora_auto`` / ``flora_factorized`` / ``flora_merged``: FLoRA with each forward mode;
* ``lora`` / ``dora`` / ``loha`` / ``lokr``: ranks solved (``solve_rank``) to FLoRA's adapter
  parameter count; LoHa and LoKr with the options of their Table-1 rows (LoHa
  ``use_effective_conv2d``, LoKr ``decompose_factor=4``); both run merged (no factorized path);
* ``full``: every parameter trains.

Time: one train step (zero_grad + forward + cross-entropy + backward + AdamW step), methods
interleaved within each repeat so drifts of the machine hit all of them alike; medians.

Peak memory: each method runs in a fresh subprocess that builds the model and optimizer and
runs ``--memory-steps`` train steps; reported is the peak resident set size minus the one
before the steps (``flora_mm.analysis.measure.peak_memory``), i.e. what train steps add on
top of the resident model. Linux only.

Inference: the plain model vs the same model after ``merge_adapters(unload=True)`` (FLoRA with a
non-zero update merged and dropped), eval mode, ``torch.inference_mode``; the unmerged FLoRA
model (``auto``) is listed for reference.

Example:
    python tools/analysis/benchmark_adapters.py --archs convnextv2_atto --batch-size 4 \
        --repeats 3
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from flora_mm.adapters import adapter_layers, atomic_write, count_adapter_params, freeze_base, \
    inject_adapters, merge_adapters, solve_rank
from flora_mm.analysis.measure import median_ms, peak_memory, rotated, write_json

METHODS = ('frozen', 'flora_auto', 'flora_factorized', 'flora_merged', 'lora', 'dora', 'loha',
           'lokr', 'full')
# methods at FLoRA's parameter count: their adapter config without the rank
SOLVED = {'lora': {'type': 'LoRA'}, 'dora': {'type': 'DoRA'},
          'loha': {'type': 'LoHa', 'use_effective_conv2d': True},
          'lokr': {'type': 'LoKr', 'decompose_factor': 4}}
TARGETS = [r'stages\..*']
HEAD = ['head']
NUM_CLASSES = 100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', nargs='+',
                        default=['convnextv2_atto', 'convnextv2_nano', 'convnextv2_tiny'])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--inference-repeats', type=int, default=None,
                        help='forward-only repeats (default: 3 x --repeats, they are cheap)')
    parser.add_argument('--rank', type=int, default=8, help='FLoRA channel rank')
    parser.add_argument('--kernel-rank', type=int, default=2, help='FLoRA spatial rank')
    parser.add_argument('--memory-steps', type=int, default=2)
    parser.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default='work_dirs/benchmarks/adapters.json')
    parser.add_argument('--child', help=argparse.SUPPRESS)  # JSON job of a memory subprocess
    return parser.parse_args(argv)


def create_model(arch: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        sys.exit('benchmark_adapters needs timm (pip install timm)')
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)


def adapter_cfg(method: str, ranks: dict) -> dict | None:
    """The inject_adapters config of a benchmark method (None: no adapters)."""
    if method.startswith('flora'):
        return {'type': 'FLoRA', 'rank': ranks['flora'], 'kernel_rank': ranks['kernel'],
                'targets': TARGETS, 'forward_mode': method.split('_')[1]}
    if method in SOLVED:
        return {**SOLVED[method], 'rank': ranks[method], 'targets': TARGETS}
    return None


def build(arch: str, method: str, ranks: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Model with the method's adapters and freeze policy, plus its AdamW optimizer."""
    model = create_model(arch)
    cfg = adapter_cfg(method, ranks)
    if cfg is not None:
        inject_adapters(model, cfg)
        freeze_base(model, cfg['type'], trainable=HEAD)
    else:
        freeze_base(model, 'Full' if method == 'full' else 'Frozen',
                    trainable=[] if method == 'full' else HEAD)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    return x, torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=gen)


def solve_ranks(arch: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """FLoRA ranks from the CLI, the other adapters' ranks at FLoRA's parameter count."""
    ranks = {'flora': args.rank, 'kernel': args.kernel_rank}
    probe = create_model(arch)
    inject_adapters(probe, adapter_cfg('flora_auto', ranks))
    budget = count_adapter_params(probe)['total']
    plain = create_model(arch)
    solved = [m for m in SOLVED if m in args.methods]
    for method in solved:
        ranks[method] = solve_rank(plain, {**SOLVED[method], 'targets': TARGETS}, budget)
    counts = {'flora': budget}
    for method in solved:
        model = create_model(arch)
        inject_adapters(model, adapter_cfg(method, ranks))
        counts[method] = count_adapter_params(model)['total']
    return ranks, counts


def memory_child(job: dict) -> None:
    """Subprocess entry: report the RSS a train step adds on top of the built model."""
    torch.set_num_threads(job['threads'])
    args = argparse.Namespace(**job['args'])
    model, optimizer = build(job['arch'], job['method'], job['ranks'])
    x, y = batch(args)
    with peak_memory('cpu') as mem:
        for _ in range(args.memory_steps):
            train_step(model, optimizer, x, y)
    print(json.dumps({'rss_before': mem['before'], 'peak_rss': mem['peak'],
                      'step_peak': mem['added']}))


def measure_memory(arch: str, method: str, ranks: dict, args: argparse.Namespace) -> dict:
    job = {'arch': arch, 'method': method, 'ranks': ranks, 'threads': args.threads,
           'args': {k: v for k, v in vars(args).items() if k != 'child'}}
    result = subprocess.run([sys.executable, os.path.abspath(__file__), '--child',
                             json.dumps(job)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_training(arch: str, ranks: dict, args: argparse.Namespace) -> dict:
    x, y = batch(args)
    runs = {m: build(arch, m, ranks) for m in args.methods}
    for model, optimizer in runs.values():
        for _ in range(args.warmup):
            train_step(model, optimizer, x, y)
    times = {m: [] for m in args.methods}
    for repeat in range(args.repeats):
        for method in rotated(list(runs), repeat):
            model, optimizer = runs[method]
            start = time.perf_counter()
            train_step(model, optimizer, x, y)
            times[method].append(time.perf_counter() - start)
    trainable = {m: sum(p.numel() for p in model.parameters() if p.requires_grad)
                 for m, (model, _) in runs.items()}
    return {'samples_s': times, 'median_ms': {m: median_ms(t) for m, t in times.items()},
            'trainable_params': trainable}


def bench_inference(arch: str, ranks: dict, args: argparse.Namespace) -> dict:
    x, _ = batch(args)
    plain = create_model(arch).eval()
    adapted = copy.deepcopy(plain)
    inject_adapters(adapted, adapter_cfg('flora_auto', ranks))
    with torch.no_grad():  # a non-zero update, so that merging really changes the weights
        for layer in adapter_layers(adapted).values():
            layer.flora_core.normal_(0, 0.01)
    merged = merge_adapters(copy.deepcopy(adapted), unload=True).eval()
    models = {'plain': plain, 'merged_unloaded': merged, 'flora_unmerged': adapted.eval()}
    times = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(args.warmup):
                model(x)
        for repeat in range(args.inference_repeats or 3 * args.repeats):
            for name in rotated(list(models), repeat):
                model = models[name]
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {'samples_s': times, 'median_ms': {k: median_ms(t) for k, t in times.items()}}


def ratios(values: dict, reference: str) -> dict:
    ref = values.get(reference)
    return {k: (v / ref if ref else None) for k, v in values.items()}


def print_tables(arch: str, result: dict) -> None:
    train = result['train']['median_ms']
    mem = {k: v['step_peak'] / 2**20 for k, v in result.get('memory', {}).items()}
    params = result['adapter_params']
    print(f"\n== {arch}  batch {result['batch_size']} x {result['img_size']}px  ranks "
          f"{result['ranks']}")
    print(f"{'method':18s} {'adapter':>9s} {'step ms':>9s} {'/LoRA':>7s} {'/frozen':>8s} "
          f"{'mem MiB':>9s} {'/LoRA':>7s} {'/frozen':>8s}")
    for method in train:
        key = 'flora' if method.startswith('flora') else method
        n = params.get(key, '')
        row = (f'{method:18s} {n:>9} {train[method]:9.1f} '
               f"{_fmt(result['train_vs_lora'].get(method))} "
               f"{_fmt(result['train_vs_frozen'].get(method), 8)}")
        if method in mem:
            row += (f' {mem[method]:9.1f} {_fmt(result["mem_vs_lora"].get(method))} '
                    f'{_fmt(result["mem_vs_frozen"].get(method), 8)}')
        print(row)
    inf = result['inference']['median_ms']
    print('inference ms: ' + ', '.join(f'{k} {v:.1f}' for k, v in inf.items()) +
          f"; merged/plain {inf['merged_unloaded'] / inf['plain']:.3f}")


def _fmt(value, width=7) -> str:
    return f'{value:{width}.3f}' if value is not None else ' ' * (width - 1) + '-'


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(json.loads(args.child))
        return
    report = {'meta': {'torch': torch.__version__, 'threads': args.threads,
                       'machine': platform.processor() or platform.machine(),
                       'args': {k: v for k, v in vars(args).items() if k != 'child'},
                       'memory': 'peak RSS minus RSS before the steps, fresh subprocess each',
                       'targets': {'flora_step_vs_lora': 1.05, 'flora_mem_vs_lora': 1.05,
                                   'merged_inference_vs_plain': 1.03}},
              'archs': {}}
    for arch in args.archs:
        ranks, counts = solve_ranks(arch, args)
        result = {'ranks': ranks, 'adapter_params': counts, 'batch_size': args.batch_size,
                  'img_size': args.img_size}
        result['train'] = bench_training(arch, ranks, args)
        gc.collect()
        result['train_vs_lora'] = ratios(result['train']['median_ms'], 'lora')
        result['train_vs_frozen'] = ratios(result['train']['median_ms'], 'frozen')
        if not args.no_memory:
            result['memory'] = {m: measure_memory(arch, m, ranks, args) for m in args.methods}
            step_peaks = {m: v['step_peak'] for m, v in result['memory'].items()}
            result['mem_vs_lora'] = ratios(step_peaks, 'lora')
            result['mem_vs_frozen'] = ratios(step_peaks, 'frozen')
        result['inference'] = bench_inference(arch, ranks, args)
        report['archs'][arch] = result
        print_tables(arch, result)
        write_json(args.out, report)  # partial results survive an interrupted run
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()

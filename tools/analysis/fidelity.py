"""Does FLoRA beat LoRA at equal budget on a conv backbone, more so under a domain shift?

One command, results under ``--out`` (default ``work_dirs/fidelity/<full|quick>``)::

    python tools/analysis/fidelity.py            # 3 seeds, 9 cells x 2 tasks
    python tools/analysis/fidelity.py --quick    # smoke test: 1 seed, few iterations
    python tools/analysis/fidelity.py --sweep-scale   # also FLoRA at s in {0.04, 0.4, 4}

1. Pre-trains ``convnextv2_atto`` on a generated source domain (front-view scenes, dense
   segmentation; cached in ``work_dirs/fidelity/pretrain``), saved as a timm state dict.
2. Fine-tunes it through the real detection pipelines (``configs/fidelity``, the runner of
   ``tools/train.py``) on an in-domain task (mmdet RetinaNet detecting the buildings, trees and
   cars of the source scenes, COCO box AP) and a shifted one (mmrotate Rotated RetinaNet on
   top-down rotated planes / ships / large vehicles with new textures, DOTA mAP), with: frozen
   backbone, BitFit, full fine-tuning, and LoRA / DoRA / FLoRA at two budgets matched with
   ``solve_rank`` to FLoRA's parameter count.
3. Writes ``results.json``, ``table.md`` (Table 1 layout, mean +- std, paired t-test FLoRA vs
   LoRA per task and budget), ``results.png`` and Fig. 4-like ``curves_<task>.png`` from the
   ``AdapterAnalysisHook`` logs.

Every finished run is cached (``runs/<task>/<cell>/seed<k>/result.json``), so an interrupted
experiment resumes where it stopped, and runs are ordered so that the main comparison (FLoRA vs
LoRA at the first budget, all seeds) finishes first. ``--jobs 2`` runs two trainings at a time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Callable

import torch

from flora_mm.analysis.curves import plot_runs
from flora_mm.analysis.source_domain import (make_scene_coco, make_topdown_dota,
                                              pretrain_source)
from flora_mm.analysis.stats import mean_std, paired_ttest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@dataclass(frozen=True)
class Task:
    """One fine-tuning task: its config, data generator and reported metric."""

    title: str
    config: str
    make_data: Callable[..., dict]  # (root, num_train=, num_val=, img_size=, seed=) -> summary
    metric_key: str  # the evaluator's key; reported x100
    metric_name: str


TASKS = {
    'scenes': Task('in-domain (front-view scenes, mmdet RetinaNet)',
                   'configs/fidelity/retinanet_convnextv2-atto-flora_fpn_scenes-coco.py',
                   make_scene_coco, 'coco/bbox_mAP', 'box AP'),
    'topdown': Task('shifted (top-down, rotated; mmrotate Rotated RetinaNet)',
                    'configs/fidelity/rotated-retinanet-le90_convnextv2-atto-flora_fpn_'
                    'topdown-dota.py', make_topdown_dota, 'dota/mAP', 'mAP50'),
}
SCALES = (0.04, 0.4, 4.0)
POLICY_CELLS = {'frozen': 'Frozen', 'bitfit': 'BitFit', 'full': 'Full'}
ADAPTERS = ('lora', 'dora', 'flora')
ADAPTER_TYPES = {'lora': 'LoRA', 'dora': 'DoRA', 'flora': 'FLoRA'}


@dataclass
class Settings:
    """Everything that defines the experiment (hashed into the run cache keys)."""

    seeds: list = field(default_factory=lambda: [0, 1, 2])
    tasks: list = field(default_factory=lambda: list(TASKS))
    cells: list = field(default_factory=lambda: [
        'flora@b1', 'lora@b1', 'frozen', 'full', 'bitfit', 'dora@b1', 'flora@b2', 'lora@b2',
        'dora@b2'])
    iters: int = 400
    batch: int = 4
    lr: float = 2e-3
    img_size: int = 96
    num_train: int = 96
    num_val: int = 48
    flora_ranks: tuple = (4, 16)  # FLoRA channel ranks defining budgets b1, b2
    kernel_rank: int = 2
    flora_scale: float = 4.0
    sweep_scale: bool = False
    analysis_interval: int = 20
    pretrain_iters: int = 100
    pretrain_batch: int = 16
    pretrain_img_size: int = 64

    def run_key(self) -> str:
        """Hash of the settings a single run depends on (not seeds / cells / sweep)."""
        keys = ('iters', 'batch', 'lr', 'img_size', 'num_train', 'num_val', 'kernel_rank',
                'analysis_interval', 'pretrain_iters', 'pretrain_batch', 'pretrain_img_size')
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


QUICK = dict(seeds=[0], cells=['frozen', 'lora@b1', 'flora@b1'], iters=8, num_train=8,
             num_val=4, analysis_interval=4, pretrain_iters=30, pretrain_batch=8)


def all_cells(settings: Settings) -> list[str]:
    """The requested cells plus the scale sweep's extra FLoRA scales (at every budget)."""
    cells = list(settings.cells)
    if settings.sweep_scale:
        cells += [f'flora@{budget}-s{s:g}' for budget in budget_names(settings)
                  for s in SCALES if s != settings.flora_scale]
    return cells


def budget_names(settings: Settings) -> list[str]:
    """``['b1', 'b2', ...]``, one budget per FLoRA rank."""
    return [f'b{i}' for i in range(1, len(settings.flora_ranks) + 1)]


def run_order(settings: Settings) -> list[tuple[str, str, int]]:
    """``(task, cell, seed)`` in priority order, so that an interrupted experiment still has
    complete, seed-paired groups: FLoRA vs LoRA at b1, then the other b1 baselines, then the
    scale sweep, then the rest; seed-major inside each group."""
    cells = all_cells(settings)
    groups = [['flora@b1', 'lora@b1'], ['frozen', 'full', 'bitfit', 'dora@b1'],
              [c for c in cells if '-s' in c]]
    groups.append([c for c in cells if not any(c in g for g in groups)])
    return [(task, cell, seed) for group in groups for seed in settings.seeds
            for cell in group if cell in cells for task in settings.tasks]


def display_key(cell: str) -> tuple:
    """Table 1 order: frozen, full, BitFit, then per budget LoRA, DoRA, FLoRA (+ sweep)."""
    if cell in POLICY_CELLS:
        return (0, list(POLICY_CELLS).index(cell), '', 0.0)
    method, rest = cell.split('@')
    scale = float(rest.split('-s')[1]) if '-s' in rest else 0.0
    return (1, rest.split('-')[0], ADAPTERS.index(method), scale)


def cell_scale(cell: str, settings: Settings) -> float:
    """FLoRA scale of a cell (``flora@b1-s0.4`` -> 0.4, otherwise the default)."""
    return float(cell.split('-s')[1]) if '-s' in cell else settings.flora_scale


# ------------------------------------------------------------------------------------ budgets
def solve_budgets(settings: Settings, targets: list[str]) -> dict:
    """Ranks of every adapter cell: FLoRA's ranks define the budgets, LoRA / DoRA are solved.

    Returns:
        ``{'b1': {'budget': n, 'flora': {'rank', 'params'}, 'lora': ..., 'dora': ...}, ...}``.
    """
    from flora_mm.adapters import count_adapter_params, inject_adapters, solve_rank
    from flora_mm.models.backbones.flora_convnextv2 import FLoRAConvNeXtV2
    budgets = {}
    for i, rank in enumerate(settings.flora_ranks, 1):
        entry: dict = {}
        for method in ('flora', 'lora', 'dora'):
            cfg = dict(type=ADAPTER_TYPES[method], targets=targets)
            if method == 'flora':
                cfg.update(rank=rank, kernel_rank=settings.kernel_rank)
            else:
                cfg['rank'] = solve_rank(FLoRAConvNeXtV2(arch='atto'), cfg, entry['budget'])
            model = FLoRAConvNeXtV2(arch='atto')
            inject_adapters(model, cfg)
            params = count_adapter_params(model)['total']
            entry[method] = {'rank': cfg['rank'], 'params': params}
            entry.setdefault('budget', params)
        budgets[f'b{i}'] = entry
    return budgets


def adapter_for(cell: str, settings: Settings, budgets: dict, targets: list[str]) -> dict:
    """The backbone ``adapter=`` dict of a cell."""
    if cell in POLICY_CELLS:
        return {'type': POLICY_CELLS[cell]}
    method, rest = cell.split('@')
    budget = rest.split('-')[0]
    rank = budgets[budget][method]['rank']
    cfg = {'type': ADAPTER_TYPES[method], 'rank': rank, 'targets': targets}
    if method == 'flora':
        cfg.update(kernel_rank=settings.kernel_rank, scale=cell_scale(cell, settings))
    else:
        cfg['alpha'] = rank  # scale 1, as in the baseline configs
    return cfg


# ------------------------------------------------------------------------------------ data
def prepare_data(root: str, settings: Settings) -> dict:
    """Generate both fine-tuning sets (deterministic; regenerated only when missing)."""
    roots = {}
    for task in settings.tasks:
        path = osp.join(root, f'{task}_{settings.img_size}px_{settings.num_train}'
                              f'x{settings.num_val}')
        done = osp.join(path, '.complete')
        if not osp.exists(done):
            TASKS[task].make_data(path, num_train=settings.num_train,
                                  num_val=settings.num_val, img_size=settings.img_size, seed=0)
            open(done, 'w').close()
        roots[task] = path + '/'
    return roots


# ------------------------------------------------------------------------------------ runs
def build_config(task: str, data_root: str, adapter: dict, seed: int, settings: Settings,
                 pretrained: str, work_dir: str):
    """The task's ``configs/fidelity`` config, pointed at this run's data, weights and adapter.

    The schedule is set here: AdamW, linear warm-up then poly decay over ``settings.iters``,
    an infinite sampler (no epoch-end pause), and no validation (one test pass gives the
    metric).
    """
    from mmengine.config import ConfigDict
    from flora_mm.apis import load_config
    cfg = load_config(osp.join(REPO, TASKS[task].config), work_dir=work_dir)
    cfg.model.backbone.pretrained = pretrained
    cfg.model.backbone.adapter = ConfigDict(adapter)
    cfg.train_dataloader.batch_size = settings.batch
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    for loader in ('train_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    if 'ann_file' in cfg.test_evaluator:  # COCO evaluates against the json itself
        cfg.test_evaluator.ann_file = data_root + 'annotations/instances_val2017.json'
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=settings.iters)
    warmup = max(1, settings.iters // 15)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
        dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=warmup,
             end=settings.iters)]
    cfg.optim_wrapper.optimizer.lr = settings.lr
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9,
                                        save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=max(1, settings.iters // 5))
    cfg.custom_hooks = [dict(type='flora_mm.AdapterAnalysisHook',
                             interval=settings.analysis_interval)]
    cfg.randomness = dict(seed=seed)
    cfg.experiment_name = f'{osp.basename(osp.dirname(work_dir))}_seed{seed}_{time.time_ns()}'
    # Visualizers are per-name singletons: the runtimes name it 'visualizer', which would send
    # every later run's scalars to the first run's vis_data.
    cfg.visualizer.name = cfg.experiment_name
    return cfg


def relative_update(model: torch.nn.Module) -> float:
    """Mean over adapted layers of ``||dW||_F / ||W||_F`` (NaN without adapters)."""
    from flora_mm.adapters import adapter_layers
    ratios = [float(layer.delta_weight().norm() / layer.weight.norm())
              for layer in adapter_layers(model).values()]
    return sum(ratios) / len(ratios) if ratios else math.nan


def run_one(task: str, cell: str, seed: int, data_root: str, settings: Settings,
            budgets: dict, targets: list[str], pretrained: str, out: str,
            cache_only: bool = False) -> dict | None:
    """Train and test one (task, cell, seed); cached in ``result.json``.

    Returns:
        The run's record; None if ``cache_only`` and no matching cached record exists.
    """
    work_dir = osp.join(out, 'runs', task, cell, f'seed{seed}')
    result_file = osp.join(work_dir, 'result.json')
    if osp.exists(result_file):
        with open(result_file) as f:
            cached = json.load(f)
        if cached.get('run_key') == settings.run_key():
            return cached
    if cache_only:
        return None
    from flora_mm.adapters import count_adapter_params
    from flora_mm.analysis.metrics import model_stats
    from flora_mm.apis import build_runner
    adapter = adapter_for(cell, settings, budgets, targets)
    cfg = build_config(task, data_root, adapter, seed, settings, pretrained, work_dir)
    start = time.time()
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.test()
    backbone = runner.model.backbone
    stats = model_stats(backbone)
    result = dict(task=task, cell=cell, seed=seed, adapter=adapter, run_key=settings.run_key(),
                  # mmdet's CocoMetric reports nothing when the model detects nothing
                  metric=100 * float(metrics.get(TASKS[task].metric_key, 0.0)),
                  metrics={k: float(v) for k, v in metrics.items()},
                  trainable_backbone=count_adapter_params(backbone)['trainable'],
                  delta_norm=stats.get('delta_norm', {}).get('all', math.nan),
                  amplification=stats.get('amplification', {}).get('all', math.nan),
                  relative_update=relative_update(backbone),
                  log_dir=runner.log_dir, seconds=round(time.time() - start, 1))
    with open(result_file, 'w') as f:
        json.dump(result, f, indent=1)
    return result


# ------------------------------------------------------------------------------------ summary
def summarize(results: list[dict], settings: Settings, budgets: dict, pretrain: dict) -> dict:
    """Mean +- std per cell, paired t-tests FLoRA vs LoRA, scale-sweep rule check."""
    cells: dict = {}
    for r in results:
        cell = cells.setdefault(r['task'], {}).setdefault(r['cell'], {
            'values': {}, 'trainable_backbone': r['trainable_backbone'], 'delta_norm': {},
            'relative_update': {}, 'amplification': {}})
        cell['values'][r['seed']] = r['metric']
        for key in ('delta_norm', 'relative_update', 'amplification'):
            cell[key][r['seed']] = r[key]
    for per_task in cells.values():
        for cell in per_task.values():
            cell['mean'], cell['std'] = mean_std(list(cell['values'].values()))
            cell['n'] = len(cell['values'])
            for key in ('delta_norm', 'relative_update', 'amplification'):
                cell[f'{key}_mean'] = mean_std(list(cell[key].values()))[0]
    ttests = {task: {b: paired_ttest(per_task[f'flora@{b}']['values'],
                                     per_task[f'lora@{b}']['values'])
                     for b in budgets if f'flora@{b}' in per_task and f'lora@{b}' in per_task}
              for task, per_task in cells.items()}
    metrics = {t: TASKS[t].metric_name for t in cells}
    summary = dict(settings=asdict(settings), pretrain=pretrain, budgets=budgets,
                   metric=metrics, cells=cells, ttest_flora_vs_lora=ttests)
    if settings.sweep_scale:
        summary['scale_sweep'] = scale_sweep(cells, settings)
    return summary


def scale_sweep(cells: dict, settings: Settings) -> dict:
    """Per task and budget: metric and update size per FLoRA scale, and whether "the scale
    with the largest final relative update ``||dW||/||W||`` is the best scale" holds."""
    sweep: dict = {}
    for task, per_task in cells.items():
        for budget in budget_names(settings):
            rows = {}
            for s in SCALES:
                cell = (f'flora@{budget}' if s == settings.flora_scale
                        else f'flora@{budget}-s{s:g}')
                if cell in per_task:
                    c = per_task[cell]
                    rows[f'{s:g}'] = dict(mean=c['mean'], std=c['std'], n=c['n'],
                                          relative_update=c['relative_update_mean'],
                                          delta_norm=c['delta_norm_mean'])
            entry: dict = dict(rows=rows)
            if len(rows) == len(SCALES):
                best = max(rows, key=lambda s: rows[s]['mean'])
                largest = max(rows, key=lambda s: rows[s]['relative_update'])
                entry.update(best_scale=best, largest_update_scale=largest,
                             rule_holds=best == largest)
            sweep.setdefault(task, {})[budget] = entry
    return sweep


def _fmt(cell: dict | None, seeds: int) -> str:
    """``mean ± std``, with ``(n=k)`` when fewer than the requested ``seeds`` finished."""
    if cell is None:
        return 'n/a'
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}" + (f" (n={cell['n']})"
                                                        if cell['n'] < seeds else '')


def write_table(summary: dict, path: str) -> str:
    """Markdown laid out like the paper's Table 1 (rows: methods, columns: tasks)."""
    cells, budgets = summary['cells'], summary['budgets']
    seeds = len(summary['settings']['seeds'])
    tasks = [t for t in TASKS if t in cells]
    lines = [f"| Method | # Params (backbone, trainable) | "
             + ' | '.join(f'{t}: {TASKS[t].title}, {TASKS[t].metric_name}' for t in tasks)
             + ' |',
             '|' + '---|' * (2 + len(tasks))]

    def row(label: str, cell: str) -> None:
        present = [cells[t].get(cell) for t in tasks]
        if not any(present):
            return
        params = next(c['trainable_backbone'] for c in present if c)
        lines.append(f'| {label} | {params:,} | '
                     + ' | '.join(_fmt(c, seeds) for c in present) + ' |')

    row('Base (frozen backbone)', 'frozen')
    row('Fully FT', 'full')
    row('BitFit', 'bitfit')
    for b in budgets:
        for method in ADAPTERS:
            row(f"{ADAPTER_TYPES[method]} (r={budgets[b][method]['rank']}, budget {b})",
                f'{method}@{b}')
    lines.append('')
    lines.append('Paired t-test FLoRA - LoRA per task and budget (seeds paired):')
    lines.append('')
    for task, per_budget in summary['ttest_flora_vs_lora'].items():
        for b, t in per_budget.items():
            lines.append(f"- {task} {b}: mean diff {t['mean_diff']:+.2f}, t = {t['t']:.2f}, "
                         f"p = {t['p']:.3g} (n = {t['n']})")
    if 'scale_sweep' in summary:
        columns = [(t, b) for t in tasks for b in budgets]
        lines += ['', 'FLoRA scale sweep, metric (mean final ||dW||/||W||):', '',
                  '| s | ' + ' | '.join(f'{t} {b}' for t, b in columns) + ' |',
                  '|' + '---|' * (1 + len(columns))]
        for s in SCALES:
            vals = []
            for t, b in columns:
                r = summary['scale_sweep'].get(t, {}).get(b, {}).get('rows', {}).get(f'{s:g}')
                vals.append('n/a' if r is None else _fmt(r, seeds)
                            + f" ({r['relative_update']:.3g})")
            lines.append(f'| {s:g} | ' + ' | '.join(vals) + ' |')
        lines.append('')
        for t, b in columns:
            sw = summary['scale_sweep'].get(t, {}).get(b, {})
            if 'rule_holds' in sw:
                lines.append(f"- {t} {b}: best s = {sw['best_scale']}, largest update at s = "
                             f"{sw['largest_update_scale']} -> rule "
                             f"{'holds' if sw['rule_holds'] else 'fails'}")
    text = '\n'.join(lines) + '\n'
    with open(path, 'w') as f:
        f.write(text)
    return text


def write_plot(summary: dict, path: str) -> None:
    """Bar chart of mean +- std per cell and task."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cells = summary['cells']
    tasks = [t for t in TASKS if t in cells]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        names = sorted(cells[task], key=display_key)
        means = [cells[task][n]['mean'] for n in names]
        stds = [cells[task][n]['std'] for n in names]
        colors = ['tab:red' if n.startswith('flora') else 'tab:blue' if n.startswith('lora')
                  else 'tab:purple' if n.startswith('dora') else 'tab:gray' for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
        ax.set_ylabel(TASKS[task].metric_name)
        ax.set_title(f'{task}: {TASKS[task].title}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_curves(results: list[dict], out: str) -> list[str]:
    """Fig. 4-like curves of the first seed's FLoRA / LoRA / DoRA runs at budget b1."""
    paths = []
    for task in TASKS:
        seed = min(r['seed'] for r in results)
        # The run's work dir, not the recorded log_dir, so that a moved output folder works.
        runs = {r['cell']: osp.join(out, 'runs', task, r['cell'], f'seed{seed}')
                for r in results if r['task'] == task and r['seed'] == seed
                and r['cell'] in ('flora@b1', 'lora@b1', 'dora@b1')}
        if runs:
            path = osp.join(out, f'curves_{task}.png')
            plot_runs(list(runs.values()), list(runs), path, title=f'{task}: {TASKS[task].title}')
            paths.append(path)
    return paths


def _run_with_threads(threads: int, run: dict) -> dict:
    torch.set_num_threads(threads)
    return run_one(**run)


def _execute(runs: list[dict], jobs: int, threads: int | None):
    """Yield the records of ``runs`` (``run_one`` keyword dicts) as they finish.

    ``jobs > 1`` trains in that many spawned worker processes: on a small CPU two one-thread
    trainings finish sooner than two two-thread ones in a row, since these models are too
    small to keep several cores busy.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    if jobs <= 1 or len(runs) <= 1:
        for run in runs:
            yield _run_with_threads(threads, run)
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context('spawn')) as pool:
        futures = [pool.submit(_run_with_threads, threads, run) for run in runs]
        for future in as_completed(futures):
            yield future.result()


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 seed, frozen / LoRA / FLoRA, 8 iterations')
    parser.add_argument('--sweep-scale', action='store_true',
                        help=f'also run FLoRA (budget b1) at s in {SCALES}')
    parser.add_argument('--root', default=osp.join(REPO, 'work_dirs', 'fidelity'),
                        help='holds the cached pre-training and generated data')
    parser.add_argument('--out', help='output folder (default <root>/<quick|full>)')
    parser.add_argument('--seeds', type=int, nargs='+')
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS))
    parser.add_argument('--cells', nargs='+',
                        help='e.g. frozen full bitfit flora@b1 lora@b2 dora@b1')
    parser.add_argument('--iters', type=int)
    parser.add_argument('--num-train', type=int)
    parser.add_argument('--num-val', type=int)
    parser.add_argument('--lr', type=float, help='AdamW learning rate (default 2e-3)')
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
    root = args.root
    out = args.out or osp.join(root, 'quick' if args.quick else 'full')
    os.makedirs(out, exist_ok=True)
    pretrained = osp.join(root, 'pretrain',
                          f'convnextv2_atto_source_{settings.pretrain_iters}it.pth')
    pretrain = pretrain_source(pretrained, iters=settings.pretrain_iters,
                               batch=settings.pretrain_batch,
                               img_size=settings.pretrain_img_size)
    print(f'source pre-training: {pretrain}', flush=True)
    data = prepare_data(osp.join(root, 'data'), settings)
    from flora_mm.apis import load_config
    targets = list(load_config(osp.join(REPO, TASKS['scenes'].config)).adapter_targets)
    budgets = solve_budgets(settings, targets)
    print(f'budgets: {json.dumps(budgets)}', flush=True)
    runs = [dict(task=task, cell=cell, seed=seed, data_root=data[task], settings=settings,
                 budgets=budgets, targets=targets, pretrained=pretrained, out=out)
            for task, cell, seed in run_order(settings)]
    results = [r for r in (run_one(**run, cache_only=True) for run in runs) if r is not None]
    done = {(r['task'], r['cell'], r['seed']) for r in results}
    todo = [] if args.report_only else [
        run for run in runs if (run['task'], run['cell'], run['seed']) not in done]
    jobs = args.jobs or (1 if args.quick else min(2, os.cpu_count() or 1))
    for r in _execute(todo, jobs, args.threads):
        print(f"[fidelity] {r['task']} {r['cell']} seed {r['seed']}: "
              f"{TASKS[r['task']].metric_name} {r['metric']:.2f} ({r['seconds']} s)",
              flush=True)
        results.append(r)
    summary = summarize(results, settings, budgets, pretrain)
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(write_table(summary, osp.join(out, 'table.md')))
    write_plot(summary, osp.join(out, 'results.png'))
    write_curves(results, out)
    return summary


if __name__ == '__main__':
    main()

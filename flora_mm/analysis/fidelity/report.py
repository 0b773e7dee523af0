"""Reporting the fidelity experiment: statistics per cell, a Table-1-like table and plots."""
from __future__ import annotations

import json
import os.path as osp
from dataclasses import asdict
from typing import Callable

from flora_mm.adapters import atomic_write
from ..curves import plot_runs
from ..stats import mean_std, paired_ttest
from .cells import ADAPTERS, Cell
from .settings import SCALES, TASKS, Settings

_UPDATE_KEYS = ('delta_norm', 'relative_update', 'amplification')


def summarize(results: list[dict], settings: Settings, budgets: dict, pretrain: dict) -> dict:
    """Mean +- std per cell, paired t-tests FLoRA vs LoRA, and the scale sweep.

    Args:
        results: Run records (``run_one``).
        settings: The experiment.
        budgets: ``solve_budgets``' ranks and counts.
        pretrain: The source pre-training record.

    Returns:
        The summary (``results.json``).
    """
    cells: dict = {}
    for r in results:
        cell = cells.setdefault(r['task'], {}).setdefault(r['cell'], {
            'values': {}, 'trainable_backbone': r['trainable_backbone'],
            **{key: {} for key in _UPDATE_KEYS}})
        cell['values'][r['seed']] = r['metric']
        for key in _UPDATE_KEYS:
            cell[key][r['seed']] = r[key]
    for per_task in cells.values():
        for cell in per_task.values():
            cell['mean'], cell['std'] = mean_std(list(cell['values'].values()))
            cell['n'] = len(cell['values'])
            for key in _UPDATE_KEYS:
                cell[f'{key}_mean'] = mean_std(list(cell[key].values()))[0]
    ttests = {task: {b: paired_ttest(per_task[f'flora@{b}']['values'],
                                     per_task[f'lora@{b}']['values'])
                     for b in budgets if f'flora@{b}' in per_task and f'lora@{b}' in per_task}
              for task, per_task in cells.items()}
    summary = dict(settings=asdict(settings), pretrain=pretrain, budgets=budgets,
                   metric={t: TASKS[t].metric_name for t in cells}, cells=cells,
                   ttest_flora_vs_lora=ttests)
    if settings.sweep_scale:
        summary['scale_sweep'] = scale_sweep(cells, settings)
    return summary


def scale_sweep(cells: dict, settings: Settings) -> dict:
    """Per task and budget: metric and update size per FLoRA scale, and whether "the scale
    with the largest final relative update ``||dW||/||W||`` is the best scale" holds."""
    sweep: dict = {}
    for task, per_task in cells.items():
        for budget in settings.budget_names():
            rows = {}
            for s in SCALES:
                cell = str(Cell('flora', budget, None if s == settings.flora_scale else s))
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


def format_table(summary: dict) -> str:
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
        for method, name in ADAPTERS.items():
            row(f"{name} (r={budgets[b][method]['rank']}, budget {b})", f'{method}@{b}')
    lines += ['', 'Paired t-test FLoRA - LoRA per task and budget (seeds paired):', '']
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
    return '\n'.join(lines) + '\n'


def write_plot(summary: dict, path: str) -> None:
    """Bar chart of mean +- std per cell and task (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cells = summary['cells']
    tasks = [t for t in TASKS if t in cells]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    colors = {'flora': 'tab:red', 'lora': 'tab:blue', 'dora': 'tab:purple'}
    for ax, task in zip(axes[0], tasks):
        names = sorted(cells[task], key=lambda n: Cell.parse(n).sort_key())
        means = [cells[task][n]['mean'] for n in names]
        stds = [cells[task][n]['std'] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3,
               color=[colors.get(Cell.parse(n).method, 'tab:gray') for n in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
        ax.set_ylabel(TASKS[task].metric_name)
        ax.set_title(f'{task}: {TASKS[task].title}', fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format='png'))
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


def write_text(path: str, text: str) -> None:
    """Write ``text`` through a temporary file, never leaving a partial ``path``."""
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def write_reports(results: list[dict], settings: Settings, budgets: dict, pretrain: dict,
                  out: str, log: Callable[[str], None] = print) -> dict:
    """Write ``results.json``, ``table.md``, ``results.png`` and ``curves_<task>.png``.

    Returns:
        The summary.
    """
    summary = summarize(results, settings, budgets, pretrain)
    table = format_table(summary)
    write_text(osp.join(out, 'results.json'), json.dumps(summary, indent=1))
    write_text(osp.join(out, 'table.md'), table)
    log(table)
    write_plot(summary, osp.join(out, 'results.png'))
    write_curves(results, out)
    return summary

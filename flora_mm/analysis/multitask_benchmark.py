"""Benchmark: one shared frozen base (:class:`~flora_mm.apis.MultiTaskModel`) vs one model per task.

Each mode runs in a fresh subprocess (so the resident memory of one does not count for the
other) that loads every task and reports:

* ``load_s``: seconds to build all tasks and load their checkpoints;
* ``rss_mb``: resident set size added by loading them (``VmRSS`` after ``gc``, Linux);
* ``tensor_mb``: bytes of the distinct storages of all parameters and buffers (a tensor shared
  by several tasks counts once);
* ``switch_ms``: for ``shared``, the time to make another task's adapter set active (median
  and max over ``switches`` round-robin switches); separate resident models need no switch,
  and the alternative that keeps one model in memory pays ``reload_s`` (median time to
  build and load one task) per switch.
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

MODES = ('shared', 'separate')


def _rss_mb() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


def _tensor_mb(models) -> float:
    seen = {}
    for model in models:
        for tensor in list(model.parameters()) + list(model.buffers()):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**20


def measure(mode: str, tasks: Sequence[dict], switches: int = 30) -> dict:
    """Load ``tasks`` in this process and measure (see the module doc).

    Args:
        mode: ``'shared'`` (one MultiTaskModel) or ``'separate'`` (one inferencer per task).
        tasks: Dicts with ``name``, ``config``, ``checkpoint`` and optional ``cfg_options``.
        switches: Round-robin switches timed in ``shared`` mode.
    """
    import torch

    from flora_mm.apis import MultiTaskModel, build_inferencer
    from flora_mm.apis.launch import load_config
    for task in tasks:  # imports and registries before the baseline
        load_config(task['config'], cfg_options=task.get('cfg_options'))
    from mmdet.apis import DetInferencer  # noqa: F401
    from mmseg.apis import MMSegInferencer  # noqa: F401
    torch.set_num_threads(1)
    gc.collect()
    base_rss = _rss_mb()
    start = time.perf_counter()
    result = dict(mode=mode, tasks=[t['name'] for t in tasks])
    if mode == 'shared':
        multi = MultiTaskModel()
        for task in tasks:
            multi.add_task(task['name'], task['config'], task['checkpoint'],
                           task.get('cfg_options'))
        models = [multi.model(t['name']) for t in tasks]
    elif mode == 'separate':
        models, per_task = [], []
        for task in tasks:
            begin = time.perf_counter()
            models.append(build_inferencer(task['config'], task['checkpoint'],
                                           cfg_options=task.get('cfg_options')).model)
            per_task.append(time.perf_counter() - begin)
        result['reload_s'] = statistics.median(per_task)
    else:
        raise ValueError(f'mode {mode!r} is not one of {MODES}')
    result['load_s'] = time.perf_counter() - start
    gc.collect()
    result['rss_mb'] = _rss_mb() - base_rss
    result['tensor_mb'] = _tensor_mb(models)
    result['backbone_params'] = sum(p.numel() for p in models[0].backbone.parameters())
    if mode == 'shared':
        names = [t['name'] for t in tasks]
        times = [multi.switch(names[i % len(names)]) * 1e3
                 for i in range(1, switches + 1)]
        result['switch_ms'] = dict(median=statistics.median(times), max=max(times))
        result['adapter_tensors_mb'] = sum(
            v.numel() * v.element_size() for v in multi._tasks[names[0]].state.values()) / 2**20
    return result


def run_benchmark(tasks: List[dict], out: str, switches: int = 30) -> Dict[str, dict]:
    """Measure each mode in a fresh subprocess; print a table, write ``out`` (JSON)."""
    from flora_mm.adapters import atomic_write
    results = {}
    for mode in MODES:
        job = json.dumps(dict(mode=mode, tasks=tasks, switches=switches))
        proc = subprocess.run(
            [sys.executable, '-c', 'import sys, json; from flora_mm.analysis.multitask_benchmark '
             'import measure; job = json.loads(sys.argv[1]); print("RESULT", json.dumps('
             'measure(job["mode"], job["tasks"], job["switches"])))', job],
            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f'{mode} benchmark failed:\n{proc.stdout[-3000:]}\n'
                               f'{proc.stderr[-3000:]}')
        results[mode] = json.loads(lines[-1][len('RESULT '):])
    shared, separate = results['shared'], results['separate']
    summary = dict(
        tasks=shared['tasks'], backbone_params=shared['backbone_params'],
        rss_ratio=shared['rss_mb'] / separate['rss_mb'],
        tensor_ratio=shared['tensor_mb'] / separate['tensor_mb'],
        switch_ms=shared['switch_ms']['median'],
        reload_over_switch=separate['reload_s'] * 1e3 / shared['switch_ms']['median'])
    rows = [('', 'load all (s)', 'RSS added (MB)', 'tensors (MB)', 'switch (ms)'),
            ('shared base', f'{shared["load_s"]:.1f}', f'{shared["rss_mb"]:.0f}',
             f'{shared["tensor_mb"]:.0f}',
             f'{shared["switch_ms"]["median"]:.2f} (max {shared["switch_ms"]["max"]:.2f})'),
            ('separate models', f'{separate["load_s"]:.1f}', f'{separate["rss_mb"]:.0f}',
             f'{separate["tensor_mb"]:.0f}',
             f'0 resident / {separate["reload_s"] * 1e3:.0f} reload')]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print('\n'.join(' | '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows))
    print(f'tasks {summary["tasks"]}, backbone {summary["backbone_params"]:,} parameters; '
          f'memory shared / separate: RSS {summary["rss_ratio"]:.3f}, tensors '
          f'{summary["tensor_ratio"]:.3f}; reloading a model takes '
          f'{summary["reload_over_switch"]:.0f}x a switch')
    report = dict(results=results, summary=summary)
    atomic_write(out, lambda tmp: open(tmp, 'w').write(json.dumps(report, indent=1)))
    return report


__all__ = ['measure', 'run_benchmark']

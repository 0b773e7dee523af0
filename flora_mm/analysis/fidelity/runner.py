"""Running the fidelity experiment: data, per-run configs, cached runs, a process pool."""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Callable, Iterator

import torch

from ..source_domain import pretrain_source
from .cells import solve_budgets
from .report import write_reports, write_text
from .settings import TASKS, Settings


def prepare_data(root: str, settings: Settings) -> dict:
    """Generate the fine-tuning sets (deterministic; regenerated only when missing).

    Returns:
        ``{task: data_root}``, each ending with ``/``.
    """
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


def load_task_config(task: str, configs: str):
    """The task's config as written (model, data pipeline, schedule), from the configs root
    ``configs`` (the repository's ``configs/``)."""
    from flora_mm.apis import load_config
    return load_config(osp.join(configs, TASKS[task].config))


def set_iters(cfg, iters: int) -> None:
    """Shorten or lengthen the config's schedule to ``iters``, rescaling every scheduler's
    ``begin`` / ``end`` in proportion (a warm-up stays at least one iteration)."""
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iters
    for scheduler in cfg.param_scheduler:
        for key in ('begin', 'end'):
            if scheduler.get(key):
                scheduler[key] = max(1, round(scheduler[key] * iters / old))


def build_config(task: str, data_root: str, adapter: dict, seed: int, settings: Settings,
                 pretrained: str, work_dir: str, configs: str):
    """The task's config pointed at this run's data, weights and adapter.

    The schedule is the config's (``settings.iters`` / ``lr`` override it); validation is off
    (one test pass gives the metric), no checkpoint is written, and ``AdapterAnalysisHook``
    logs the Fig. 4 quantities every ``settings.analysis_interval`` iterations.
    """
    from mmengine.config import ConfigDict
    cfg = load_task_config(task, configs)
    cfg.work_dir = work_dir
    cfg.model.backbone.pretrained = pretrained
    cfg.model.backbone.adapter = ConfigDict(adapter)
    for loader in ('train_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    if 'ann_file' in cfg.test_evaluator:  # COCO evaluates against the json itself
        cfg.test_evaluator.ann_file = data_root + 'annotations/instances_val2017.json'
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg.pop('val_interval', None)
    if settings.iters is not None:
        set_iters(cfg, settings.iters)
    if settings.lr is not None:
        cfg.optim_wrapper.optimizer.lr = settings.lr
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9,
                                        save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook',
                                    interval=max(1, cfg.train_cfg.max_iters // 5))
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
            adapter: dict, run_key: str, pretrained: str, out: str, configs: str,
            cache_only: bool = False) -> dict | None:
    """Train and test one (task, cell, seed); cached in its ``result.json``.

    Returns:
        The run's record; None if ``cache_only`` and no record with ``run_key`` exists.
    """
    work_dir = osp.join(out, 'runs', task, cell, f'seed{seed}')
    result_file = osp.join(work_dir, 'result.json')
    if osp.exists(result_file):
        with open(result_file) as f:
            cached = json.load(f)
        if cached.get('run_key') == run_key:
            return cached
    if cache_only:
        return None
    from flora_mm.adapters import count_adapter_params
    from flora_mm.analysis.metrics import model_stats
    from flora_mm.apis import build_runner
    cfg = build_config(task, data_root, adapter, seed, settings, pretrained, work_dir, configs)
    start = time.time()
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.test()
    backbone = runner.model.backbone
    stats = model_stats(backbone)
    result = dict(task=task, cell=cell, seed=seed, adapter=adapter, run_key=run_key,
                  # mmdet's CocoMetric reports nothing when the model detects nothing
                  metric=100 * float(metrics.get(TASKS[task].metric_key, 0.0)),
                  metrics={k: float(v) for k, v in metrics.items()},
                  trainable_backbone=count_adapter_params(backbone)['trainable'],
                  delta_norm=stats.get('delta_norm', {}).get('all', math.nan),
                  amplification=stats.get('amplification', {}).get('all', math.nan),
                  relative_update=relative_update(backbone),
                  log_dir=runner.log_dir, seconds=round(time.time() - start, 1))
    write_text(result_file, json.dumps(result, indent=1))
    return result


def _run_with_threads(threads: int, run: dict) -> dict:
    torch.set_num_threads(threads)
    return run_one(**run)


def execute(runs: list[dict], jobs: int, threads: int | None) -> Iterator[dict]:
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


def run_experiment(settings: Settings, root: str, out: str, configs: str, jobs: int = 1,
                   threads: int | None = None, report_only: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the experiment and write its reports.

    Args:
        settings: The experiment.
        root: Holds the cached source pre-training (``pretrain/``) and data (``data/``).
        out: Output folder: ``runs/<task>/<cell>/seed<k>/`` and the reports.
        configs: The configs root holding the task configs (the repository's ``configs/``).
        jobs: Trainings at a time, each in its own process.
        threads: Torch threads per training (default: CPU cores / jobs).
        report_only: Only summarize the runs finished so far.
        log: Progress printer.

    Returns:
        The summary written to ``results.json``.
    """
    os.makedirs(out, exist_ok=True)
    pretrained = osp.join(root, 'pretrain',
                          f'convnextv2_atto_source_{settings.pretrain_iters}it.pth')
    pretrain = pretrain_source(pretrained, iters=settings.pretrain_iters,
                               batch=settings.pretrain_batch,
                               img_size=settings.pretrain_img_size, log=log)
    log(f'source pre-training: {pretrain}')
    data = prepare_data(osp.join(root, 'data'), settings)
    budgets = solve_budgets(settings.flora_ranks, settings.kernel_rank)
    log(f'budgets: {json.dumps(budgets)}')
    config_texts = {task: load_task_config(task, configs).pretty_text for task in settings.tasks}
    runs = []
    for task, cell, seed in settings.run_order():
        adapter = cell.adapter(budgets, settings.kernel_rank, settings.flora_scale)
        runs.append(dict(task=task, cell=str(cell), seed=seed, data_root=data[task],
                         settings=settings, adapter=adapter,
                         run_key=settings.run_key(config_texts[task], adapter, seed),
                         pretrained=pretrained, out=out, configs=configs))
    results = [r for r in (run_one(**run, cache_only=True) for run in runs) if r is not None]
    done = {(r['task'], r['cell'], r['seed']) for r in results}
    todo = [] if report_only else [
        run for run in runs if (run['task'], run['cell'], run['seed']) not in done]
    for r in execute(todo, jobs, threads):
        log(f"[fidelity] {r['task']} {r['cell']} seed {r['seed']}: "
            f"{TASKS[r['task']].metric_name} {r['metric']:.2f} ({r['seconds']} s)")
        results.append(r)
    return write_reports(results, settings, budgets, pretrain, out, log=log)


"""What defines the fidelity experiment: its tasks, its settings and the order of its runs."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..source_domain import make_scene_coco, make_topdown_dota
from .cells import Cell


@dataclass(frozen=True)
class Task:
    """One fine-tuning task: its config (which owns model, data pipeline and schedule), data
    generator and reported metric."""

    title: str
    config: str  # relative to the configs root (the repository's ``configs/``)
    make_data: Callable[..., dict]  # (root, num_train=, num_val=, img_size=, seed=) -> summary
    metric_key: str  # the evaluator's key; reported x100
    metric_name: str


TASKS = {
    'scenes': Task('in-domain (front-view scenes, mmdet RetinaNet)',
                   'fidelity/retinanet_convnextv2-atto-flora_fpn_scenes-coco.py',
                   make_scene_coco, 'coco/bbox_mAP', 'box AP'),
    'topdown': Task('shifted (top-down, rotated; mmrotate Rotated RetinaNet)',
                    'fidelity/rotated-retinanet-le90_convnextv2-atto-flora_fpn_'
                    'topdown-dota.py', make_topdown_dota, 'dota/mAP', 'mAP50'),
}
SCALES = (0.04, 0.4, 4.0)  # FLoRA's scale sweep (paper Fig. 5)
# Settings that are not part of a single run's result: which runs to do.
SELECTION = ('seeds', 'tasks', 'cells', 'sweep_scale')


@dataclass
class Settings:
    """The experiment's settings; the schedule (iterations, lr, batch) is the task configs'.

    ``iters`` and ``lr``, when set, override the configs (the warm-up and decay are rescaled
    to ``iters``). Every field outside ``SELECTION`` goes into the run cache key.
    """

    seeds: list = field(default_factory=lambda: [0, 1, 2])
    tasks: list = field(default_factory=lambda: list(TASKS))
    cells: list = field(default_factory=lambda: [
        'flora@b1', 'lora@b1', 'frozen', 'full', 'bitfit', 'dora@b1', 'flora@b2', 'lora@b2',
        'dora@b2'])
    sweep_scale: bool = False
    iters: int | None = None
    lr: float | None = None
    img_size: int = 96
    num_train: int = 96
    num_val: int = 48
    flora_ranks: tuple = (4, 16)  # FLoRA channel ranks defining budgets b1, b2
    kernel_rank: int = 2
    flora_scale: float = 4.0
    analysis_interval: int = 20
    pretrain_iters: int = 100
    pretrain_batch: int = 16
    pretrain_img_size: int = 64

    def __post_init__(self) -> None:
        for name in self.cells:
            cell = Cell.parse(name)
            if cell.budget is not None and cell.budget not in self.budget_names():
                raise ValueError(f'cell {name!r}: budget {cell.budget!r} is not one of '
                                 f'{self.budget_names()} (one per flora_ranks entry)')
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f'tasks {unknown} are not among {list(TASKS)}')

    def budget_names(self) -> list[str]:
        """``['b1', 'b2', ...]``, one budget per FLoRA rank."""
        return [f'b{i}' for i in range(1, len(self.flora_ranks) + 1)]

    def all_cells(self) -> list[Cell]:
        """The requested cells plus the scale sweep's extra FLoRA scales (at every budget)."""
        cells = [Cell.parse(name) for name in self.cells]
        if self.sweep_scale:
            cells += [Cell('flora', budget, s) for budget in self.budget_names()
                      for s in SCALES if s != self.flora_scale]
        return cells

    def run_order(self) -> list[tuple[str, Cell, int]]:
        """``(task, cell, seed)`` in priority order, so that an interrupted experiment still
        has complete, seed-paired groups: FLoRA vs LoRA at b1, then the other b1 baselines,
        then the scale sweep, then the rest; seed-major inside each group."""
        cells = self.all_cells()
        first = [Cell('flora', 'b1'), Cell('lora', 'b1')]
        baselines = [Cell('frozen'), Cell('full'), Cell('bitfit'), Cell('dora', 'b1')]
        groups = [first, baselines, [c for c in cells if c.scale is not None]]
        groups.append([c for c in cells if not any(c in g for g in groups)])
        return [(task, cell, seed) for group in groups for seed in self.seeds
                for cell in group if cell in cells for task in self.tasks]

    def run_key(self, task_config: str, adapter: dict, seed: int) -> str:
        """Cache key of one run: everything its result depends on.

        Args:
            task_config: The task's resolved config (``Config.pretty_text`` before the run's
                paths are set), so that editing a config or its bases invalidates its runs.
            adapter: The run's ``adapter=`` dict (method, rank, kernel rank, scale).
            seed: The run's seed.
        """
        own = {k: v for k, v in asdict(self).items() if k not in SELECTION}
        blob = json.dumps(dict(settings=own, config=task_config, adapter=adapter, seed=seed),
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# The smoke test: one seed, three cells, a few iterations on a few images.
QUICK = dict(seeds=[0], cells=['frozen', 'lora@b1', 'flora@b1'], iters=8, num_train=8,
             num_val=4, analysis_interval=4, pretrain_iters=30, pretrain_batch=8)

"""Does FLoRA beat LoRA at equal budget on a conv backbone, more so under a domain shift?

The experiment of ``docs/fidelity.md``, run by ``tools/analysis/fidelity.py``: ConvNeXt-V2-atto
pre-trained on a generated source domain (:mod:`flora_mm.analysis.source_domain`), fine-tuned
through mmdet's RetinaNet in-domain and mmrotate's Rotated RetinaNet under a shift
(``configs/fidelity``, which own the schedule) with frozen backbone, BitFit, full fine-tuning
and LoRA / DoRA / FLoRA at equal budgets; several seeds, paired t-tests, Fig. 4 curves.

* :mod:`.cells`: the table's cells (``Cell``, named ``frozen``, ``lora@b1``,
  ``flora@b2-s0.4``) and the budgets that fix their ranks;
* :mod:`.settings`: tasks, ``Settings`` and the order and cache keys of the runs;
* :mod:`.runner`: data, per-run configs, cached runs, a process pool, ``run_experiment``;
* :mod:`.report`: statistics, the Table-1-like markdown, plots.
"""
from .cells import Cell, solve_budgets
from .report import summarize, write_reports
from .runner import build_config, run_experiment, run_one
from .settings import QUICK, SCALES, TASKS, Settings, Task

__all__ = [
    'Cell', 'QUICK', 'SCALES', 'Settings', 'TASKS', 'Task', 'build_config', 'run_experiment',
    'run_one', 'solve_budgets', 'summarize', 'write_reports'
]

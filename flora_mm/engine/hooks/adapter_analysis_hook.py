"""Log the Frobenius norm of adapter updates and their feature amplification (paper Fig. 4)."""
from __future__ import annotations

from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.logging import print_log

from flora_mm.analysis.metrics import DEFAULT_STAGE_PATTERNS, model_stats
from flora_mm.registry import HOOKS
from .utils import unwrap_model

SCALAR_PREFIX = 'adapter'


@HOOKS.register_module()
class AdapterAnalysisHook(Hook):
    """Every ``interval`` training iterations, log per stage and averaged over all adapted
    layers: ``adapter/delta_norm/<stage>`` (``||dW||_F``, scale applied) and
    ``adapter/amplification/<stage>`` (``||dW||_F / ||U^T W V||_F``, see
    :mod:`flora_mm.analysis.metrics`), ``<stage>`` being ``stage0``..``stageN``, ``other``
    (stem, layers outside a stage) and ``all``.

    The values go to ``runner.visualizer.add_scalars`` with ``step`` = the iteration (so to
    ``vis_data/scalars.json`` with ``LocalVisBackend`` and to TensorBoard with
    ``TensorboardVisBackend``), to ``runner.message_hub`` under the same keys (readable by
    other hooks; outside the ``train/`` prefix so the log processor does not re-log stale
    values at its own interval) and, averaged over layers, to the text log. Iteration 0 is
    logged before training starts: FLoRA and LoRA updates are exactly zero there.

    Works with the layers of every adapter method anywhere in the model (backbone adapters or
    ``FLoRAHook`` ones); the cost is one small SVD per adapted layer per call.

    Args:
        interval: Log every ``interval`` iterations.
        stage_patterns: Regexes on qualified layer names whose group 1 is the stage index.
        log_text: Also print the overall means to the text log.
    """

    priority = 'LOW'  # after the optimizer step of the same iteration

    def __init__(self, interval: int = 50,
                 stage_patterns: Optional[Sequence[str]] = None,
                 log_text: bool = True) -> None:
        if interval < 1:
            raise ValueError(f'AdapterAnalysisHook: interval must be >= 1, got {interval}')
        self.interval = interval
        self.stage_patterns = tuple(stage_patterns or DEFAULT_STAGE_PATTERNS)
        self.log_text = log_text
        self._warned = False

    def before_train(self, runner) -> None:
        self._log(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self._log(runner, runner.iter + 1)

    def _log(self, runner, step: int) -> None:
        model = unwrap_model(runner.model)
        stats = model_stats(model, self.stage_patterns)
        if not stats:
            if not self._warned:
                print_log('AdapterAnalysisHook: the model has no (unmerged) adapter layers; '
                          'nothing to log', logger='current')
                self._warned = True
            return
        scalars = {f'{SCALAR_PREFIX}/{metric}/{stage}': value
                   for metric, per_stage in stats.items() for stage, value in per_stage.items()}
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.visualizer.add_scalars(scalars, step=step)
        if self.log_text:
            print_log(f'Iter(train) [{step}] adapter analysis: mean ||dW||_F '
                      f'{stats["delta_norm"]["all"]:.4g}, mean amplification '
                      f'{stats["amplification"]["all"]:.4g}', logger='current')

"""FLoRAHook: adapt and freeze any model from a config, keeping DDP and the optimizer right."""
import copy
import logging
import re
from typing import Dict, Optional, Sequence, Set

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import BaseOptimWrapper, OptimWrapperDict
from torch.nn.parallel import DistributedDataParallel

from flora_mm.adapters import adapt_model, param_table
from flora_mm.adapters.adapt import trainable_ids
from flora_mm.registry import HOOKS
from .adapter_checkpoint_hook import AdapterCheckpointHook
from .utils import unwrap_model


@HOOKS.register_module()
class FLoRAHook(Hook):
    """Inject adapters into any model, freeze the rest, and keep DDP / optimizer consistent.

    At ``before_run`` (the runner has wrapped the model in DDP in ``__init__`` and, in
    ``train()``, built the optimizer wrapper and parameter schedulers just before):

    1. :func:`~flora_mm.adapters.adapt_model`: inject ``adapter`` into the matching layers
       that have no adapter yet (layers adapted at construction, e.g. by
       ``FLoRAConvNeXtV2(adapter=...)``, are left alone) and freeze everything except adapter
       parameters, ``trainable`` and what submodules keep trainable under every policy (their
       ``keep_trainable`` regexes, e.g. the output norms of ``FLoRAConvNeXtV2``);
    2. if the set of trainable parameters changed and the model is DDP-wrapped, re-wrap it with
       ``runner.wrap_model`` (DDP registers its gradient hooks for the parameters that required
       grad at wrap time; a stale wrapper needs ``find_unused_parameters`` or fails with
       "Expected to have finished reduction"). The new wrapper broadcasts rank 0's weights, so
       randomly initialised adapter factors agree on every rank;
    3. when training, if the optimizer holds anything but the trainable parameters, rebuild
       the optimizer wrapper from ``cfg.optim_wrapper`` (frozen parameters pruned), re-apply
       ``auto_scale_lr`` and rebuild the parameter schedulers from ``cfg.param_scheduler``;
    4. log a table of trainable parameters per top-level module.

    Everything happens before ``_init_model_weights`` and ``load_or_resume``, so pretrained
    ``init_cfg`` weights, ``load_from`` and ``--resume`` act on the adapted model and the new
    optimizer. It runs before hooks that copy the model (EMA) in ``before_run``.

    Args:
        adapter: ``inject_adapters`` config (``type``, ``rank``, ``kernel_rank``, ``scale``,
            ``targets`` regexes fullmatched on module names of the unwrapped model, e.g.
            ``r'backbone\\.layer\\d\\.\\d+\\.conv\\d'``). None injects nothing.
        trainable: Regexes (fullmatch on parameter or module names) that stay trainable, e.g.
            ``['neck', 'rpn_head', 'roi_head']``. With ``adapter=None`` and ``trainable`` the
            existing adapters plus ``trainable`` are kept; with neither, ``requires_grad`` is
            left as the model set it.
        adapter_only_checkpoint: Moved to :class:`AdapterCheckpointHook`; ``True`` is the
            former spelling of adding that hook, and this hook then delegates to one.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 adapter: Optional[dict] = None,
                 trainable: Sequence[str] = (),
                 adapter_only_checkpoint: bool = False):
        if isinstance(trainable, str):
            trainable = [trainable]
        for pattern in trainable:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f'FLoRAHook: trainable regex {pattern!r} is invalid: '
                                 f'{err}') from None
        self.adapter = copy.deepcopy(adapter)
        self.trainable = list(trainable)
        self._checkpoint_hook = AdapterCheckpointHook() if adapter_only_checkpoint else None

    def before_run(self, runner) -> None:
        """Inject, freeze, re-wrap and rebuild the optimizer as needed (see class doc)."""
        model = unwrap_model(runner.model)
        report = adapt_model(model, self.adapter, self.trainable)
        if self.adapter is not None:
            print_log(f'FLoRAHook: {report.summary()}', logger='current')
        if report.refrozen:
            print_log(f'FLoRAHook: {report.refrozen_warning()}', logger='current',
                      level=logging.WARNING)
        if report.changed and is_model_wrapper(runner.model):
            self._rewrap(runner, model)
        if isinstance(runner.optim_wrapper, BaseOptimWrapper) and (
                report.changed or _optimizer_ids(runner.optim_wrapper) != trainable_ids(model)):
            self._rebuild_optim_wrapper(runner)
        print_log('FLoRAHook: trainable parameters\n' + param_table(model), logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Delegate to :class:`AdapterCheckpointHook` if ``adapter_only_checkpoint``."""
        if self._checkpoint_hook is not None:
            self._checkpoint_hook.before_save_checkpoint(runner, checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Delegate to :class:`AdapterCheckpointHook` if ``adapter_only_checkpoint``."""
        if self._checkpoint_hook is not None:
            self._checkpoint_hook.after_load_checkpoint(runner, checkpoint)

    @staticmethod
    def _rewrap(runner, model: nn.Module) -> None:
        old = runner.model
        if not isinstance(old, DistributedDataParallel):
            raise RuntimeError(
                f'FLoRAHook changed the trainable parameters of a model wrapped in '
                f'{type(old).__name__}; only DistributedDataParallel wrappers can be rebuilt. '
                'Build the model with its adapters instead (e.g. FLoRAConvNeXtV2(adapter=...))')
        runner.model = None
        # Drop the stale wrapper (and with it its reducer's gradient hooks) before wrapping
        # again; DDP's constructor broadcasts rank 0's parameters and buffers.
        del old
        runner.model = runner.wrap_model(copy.deepcopy(runner.cfg.get('model_wrapper_cfg')),
                                         model)
        print_log(f'FLoRAHook: re-wrapped the model in {type(runner.model).__name__} for the '
                  'new set of trainable parameters', logger='current')

    @staticmethod
    def _rebuild_optim_wrapper(runner) -> None:
        cfg = runner.cfg
        if cfg.get('optim_wrapper') is None:
            raise RuntimeError('FLoRAHook must rebuild the optimizer for the new trainable '
                               'parameters but runner.cfg has no `optim_wrapper`; build the '
                               'runner with Runner.from_cfg(cfg)')
        optim_wrapper = runner.build_optim_wrapper(copy.deepcopy(cfg.optim_wrapper))
        wrappers = (list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict)
                    else [optim_wrapper])
        for wrapper in wrappers:
            # Constructors such as mmengine's default add frozen parameters too; the optimizer
            # has no state yet, so pruning its groups is safe.
            groups = wrapper.optimizer.param_groups
            for group in groups:
                group['params'] = [p for p in group['params'] if p.requires_grad]
            groups[:] = [g for g in groups if g['params']]
            if not groups:
                raise RuntimeError('FLoRAHook: no trainable parameter is left for the '
                                   'optimizer; check `adapter` and `trainable`')
        runner.optim_wrapper = optim_wrapper
        # scale_lr refuses built schedulers (they snapshot the lr): rebuild them afterwards.
        runner.param_schedulers = copy.deepcopy(cfg.get('param_scheduler'))
        runner.scale_lr(optim_wrapper, runner.auto_scale_lr)
        if runner.param_schedulers is not None:
            runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
        print_log('FLoRAHook: rebuilt the optimizer wrapper and parameter schedulers with the '
                  'trainable parameters only', logger='current')


def _optimizer_ids(optim_wrapper: BaseOptimWrapper) -> Set[int]:
    wrappers: Dict = (dict(optim_wrapper.items()) if isinstance(optim_wrapper, OptimWrapperDict)
                      else {'': optim_wrapper})
    return {id(p) for w in wrappers.values() for g in w.optimizer.param_groups
            for p in g['params']}

"""FLoRAHook: adapt and freeze any model from a config, keeping DDP and the optimizer right."""
import copy
import logging
import re
from typing import Dict, List, Optional, Sequence, Set

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import BaseOptimWrapper, OptimWrapperDict
from torch.nn.parallel import DistributedDataParallel

from flora_mm.adapters import count_adapter_params, freeze_base, inject_adapters
from flora_mm.registry import HOOKS

# Key under checkpoint['meta'] describing an adapter-only checkpoint.
META_KEY = 'flora_mm'


def frozen_state_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the frozen parameters (``requires_grad=False``) of ``model``.

    Buffers (BatchNorm statistics, ...) are never listed: they are small and may change during
    training even in frozen modules, so adapter-only checkpoints keep them.
    """
    return [k for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, nn.Parameter) and not v.requires_grad]


def strip_frozen(checkpoint: dict, model: nn.Module) -> List[str]:
    """Turn a runner checkpoint into an adapter-only one, in place.

    Drops the frozen parameters from ``checkpoint['state_dict']`` and records their names in
    ``checkpoint['meta']['flora_mm']`` (``adapter_only=True``, ``dropped_keys``), so loading can
    tell an intentionally absent tensor from a really missing one.

    Args:
        checkpoint: Dict with ``state_dict`` (and ``meta``) as the runner saves it.
        model: The (unwrapped) model the checkpoint was taken from.

    Returns:
        The dropped keys.
    """
    state = checkpoint['state_dict']
    dropped = [k for k in frozen_state_keys(model) if k in state]
    for key in dropped:
        del state[key]
    checkpoint.setdefault('meta', {})[META_KEY] = dict(adapter_only=True, dropped_keys=dropped)
    return dropped


def is_adapter_only(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` was written with frozen weights dropped (:func:`strip_frozen`)."""
    meta = checkpoint.get('meta') or {}
    return bool((meta.get(META_KEY) or {}).get('adapter_only'))


def fill_frozen(checkpoint: dict, model: nn.Module) -> List[str]:
    """Complete an adapter-only checkpoint with the frozen tensors of ``model``, in place.

    The base weights must already be the pretrained ones (backbone ``pretrained=`` loads them
    at construction, ``init_cfg`` pretrained weights in ``init_weights()``).

    Args:
        checkpoint: An adapter-only checkpoint (see :func:`is_adapter_only`).
        model: The (unwrapped) model it will be loaded into.

    Returns:
        The dropped keys the model does not have (the caller reports them).
    """
    dropped = checkpoint['meta'][META_KEY]['dropped_keys']
    own = model.state_dict()
    state = checkpoint['state_dict']
    for key in dropped:
        if key in own and key not in state:
            state[key] = own[key]
    return [k for k in dropped if k not in own]


def param_table(model: nn.Module) -> str:
    """Trainable / adapter / total parameters per top-level module, and in total."""
    rows = [('module', 'params', 'trainable', 'adapter', '% trainable')]
    children = list(model.named_children())
    own = [p for n, p in model.named_parameters(recurse=False)]
    groups = [(name, list(child.parameters()), child) for name, child in children]
    if own:
        groups.append(('(root)', own, None))
    total = sum(p.numel() for p in model.parameters())
    for name, params, child in groups:
        n = sum(p.numel() for p in params)
        t = sum(p.numel() for p in params if p.requires_grad)
        a = count_adapter_params(child)['total'] if child is not None else 0
        rows.append((name, f'{n:,}', f'{t:,}', f'{a:,}', f'{100 * t / max(n, 1):.2f}'))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows.append(('total', f'{total:,}', f'{trainable:,}',
                 f'{count_adapter_params(model)["total"]:,}',
                 f'{100 * trainable / max(total, 1):.2f}'))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, '-' * len(lines[0]))
    lines.insert(len(lines) - 1, '-' * len(lines[0]))
    return '\n'.join(lines)


@HOOKS.register_module()
class FLoRAHook(Hook):
    """Inject adapters into any model, freeze the rest, and keep DDP / optimizer consistent.

    At ``before_run`` (the runner has wrapped the model in DDP in ``__init__`` and, in
    ``train()``, built the optimizer wrapper and parameter schedulers just before):

    1. inject ``adapter`` into the matching layers that have no adapter yet (layers adapted at
       construction, e.g. by ``FLoRAConvNeXtV2(adapter=...)``, are left alone);
    2. freeze everything except adapter parameters, ``trainable`` and what submodules keep
       trainable under every policy (their ``keep_trainable`` regexes: the output norms of
       ``FLoRAConvNeXtV2``);
    3. if the set of trainable parameters changed and the model is DDP-wrapped, re-wrap it with
       ``runner.wrap_model`` (DDP registers its gradient hooks for the parameters that required
       grad at wrap time; a stale wrapper needs ``find_unused_parameters`` or fails with
       "Expected to have finished reduction"). The new wrapper broadcasts rank 0's weights, so
       randomly initialised adapter factors agree on every rank;
    4. when training, if the optimizer holds anything but the trainable parameters, rebuild
       the optimizer wrapper from ``cfg.optim_wrapper`` (frozen parameters pruned), re-apply
       ``auto_scale_lr`` and rebuild the parameter schedulers from ``cfg.param_scheduler``;
    5. log a table of trainable parameters per top-level module.

    Everything happens before ``_init_model_weights`` and ``load_or_resume``, so pretrained
    ``init_cfg`` weights, ``load_from`` and ``--resume`` act on the adapted model and the new
    optimizer.

    With ``adapter_only_checkpoint=True`` saved checkpoints drop the frozen parameters (buffers,
    trainable weights, optimizer, schedulers and message hub are kept), so ``--resume``
    restores training exactly as long as the frozen base comes from pretrained weights
    (``pretrained=`` of the backbone, ``init_cfg`` of type Pretrained). Loading such a
    checkpoint fills the frozen tensors from the model; at test time (no ``init_weights`` call
    by the runner) the hook runs ``init_weights()`` first so ``init_cfg`` weights are in place.

    Args:
        adapter: ``inject_adapters`` config (``type``, ``rank``, ``kernel_rank``, ``scale``,
            ``targets`` regexes fullmatched on module names of the unwrapped model, e.g.
            ``r'backbone\\.layer\\d\\.\\d+\\.conv\\d'``). None injects nothing.
        trainable: Regexes (fullmatch on parameter or module names) that stay trainable, e.g.
            ``['neck', 'rpn_head', 'roi_head']``. With ``adapter=None`` and ``trainable`` the
            existing adapters plus ``trainable`` are kept; with neither, ``requires_grad`` is
            left as the model set it.
        adapter_only_checkpoint: Drop frozen parameters from saved checkpoints.
        priority: Hook priority; runs before hooks that copy the model (EMA) in ``before_run``.
    """

    def __init__(self,
                 adapter: Optional[dict] = None,
                 trainable: Sequence[str] = (),
                 adapter_only_checkpoint: bool = False,
                 priority: str = 'VERY_HIGH'):
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
        self.adapter_only_checkpoint = adapter_only_checkpoint
        self.priority = priority

    # ----------------------------------------------------------------- before_run
    def before_run(self, runner) -> None:
        """Inject, freeze, re-wrap and rebuild the optimizer as needed (see class doc)."""
        model = _unwrap(runner.model)
        changed = self.adapt(model)
        if changed and is_model_wrapper(runner.model):
            self._rewrap(runner, model)
        if isinstance(runner.optim_wrapper, BaseOptimWrapper) and (
                changed or _optimizer_ids(runner.optim_wrapper) != _trainable_ids(model)):
            self._rebuild_optim_wrapper(runner)
        print_log('FLoRAHook: trainable parameters\n' + param_table(model), logger='current')

    def adapt(self, model: nn.Module) -> bool:
        """Inject ``adapter`` where no adapter exists yet and apply the freeze policy.

        Args:
            model: The unwrapped model, modified in place.

        Returns:
            Whether the set of trainable parameters changed.
        """
        was_trainable = _trainable_ids(model)
        if self.adapter is not None:
            cfg = dict(self.adapter)
            existing = count_adapter_params(model)['per_layer']
            # Layers adapted at construction keep their adapter; inject where none exists.
            cfg['exclude'] = list(cfg.get('exclude') or []) + [re.escape(n) for n in existing]
            injected = inject_adapters(model, cfg)
            freeze_base(model, cfg['type'], self.trainable + _kept_by_modules(model))
            scales = sorted({layer.adapter_scale for layer in injected.values()})
            print_log(f'FLoRAHook: {cfg["type"]} injected into {len(injected)} layers '
                      + (f'(scale {", ".join(f"{s:g}" for s in scales)}) ' if scales else '')
                      + f'({len(existing)} were adapted already)', logger='current')
        elif self.trainable:
            freeze_base(model, 'FLoRA', self.trainable + _kept_by_modules(model))
        else:
            return False
        # Some modules reset requires_grad in train() (mmdet ResNet's frozen_stages), which
        # the loop calls every iteration: settle that now so DDP and the optimizer see the
        # parameters that will really be trained.
        intended = _trainable_ids(model)
        model.train(model.training)
        refrozen = [n for n, p in model.named_parameters()
                    if id(p) in intended and not p.requires_grad]
        if refrozen:
            print_log(f'FLoRAHook: {len(refrozen)} parameters are re-frozen by the model\'s '
                      f'own train() (e.g. mmdet ResNet frozen_stages) and stay frozen: '
                      f'{refrozen[:8]}{" ..." if len(refrozen) > 8 else ""}; exclude them '
                      'from the adapter targets or lower frozen_stages',
                      logger='current', level=logging.WARNING)
        return _trainable_ids(model) != was_trainable

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

    # ----------------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Drop frozen parameters from the checkpoint if ``adapter_only_checkpoint``."""
        if self.adapter_only_checkpoint:
            strip_frozen(checkpoint, _unwrap(runner.model))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Complete an adapter-only checkpoint with the model's pretrained frozen weights."""
        if not is_adapter_only(checkpoint):
            return
        model = _unwrap(runner.model)
        if (not isinstance(runner.optim_wrapper, BaseOptimWrapper)
                and hasattr(model, 'init_weights') and not getattr(model, 'is_init', True)):
            # test()/val() never initialise weights; frozen init_cfg weights are needed now.
            print_log('FLoRAHook: adapter-only checkpoint at test time: running '
                      'model.init_weights() so that frozen weights come from their pretrained '
                      'sources', logger='current')
            model.init_weights()
        absent = fill_frozen(checkpoint, model)
        print_log(f'FLoRAHook: adapter-only checkpoint: '
                  f'{len(checkpoint["meta"][META_KEY]["dropped_keys"]) - len(absent)} frozen '
                  'tensors taken from the pretrained model', logger='current')
        if absent:
            print_log(f'FLoRAHook: frozen keys of the checkpoint that the model lacks: '
                      f'{absent}', logger='current', level=logging.WARNING)


def _kept_by_modules(model: nn.Module) -> List[str]:
    """Regexes of parameters that submodules keep trainable under every freeze policy (their
    ``keep_trainable`` attribute, e.g. FLoRAConvNeXtV2's output norms), as model names."""
    return [f'{re.escape(name)}\\.(?:{pattern})' if name else pattern
            for name, module in model.named_modules()
            for pattern in getattr(module, 'keep_trainable', ())]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _trainable_ids(model: nn.Module) -> Set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _optimizer_ids(optim_wrapper: BaseOptimWrapper) -> Set[int]:
    wrappers: Dict = (dict(optim_wrapper.items()) if isinstance(optim_wrapper, OptimWrapperDict)
                      else {'': optim_wrapper})
    return {id(p) for w in wrappers.values() for g in w.optimizer.param_groups
            for p in g['params']}

"""A test-only hook, imported by the configs of the tool tests (``custom_imports``): records per
rank what the runner really uses (wrapper, optimizer contents, weights, losses)."""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class FLoRAProbeHook(Hook):
    """Saves ``probe_rank<r>.pt`` in ``out_dir`` with ``info``, ``before`` and ``after``."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def before_train(self, runner) -> None:
        # after before_run (FLoRAHook), weight init and load/resume: what training will use
        model = runner.model
        module = model.module if is_model_wrapper(model) else model
        names = {id(p): n for n, p in module.named_parameters()}
        self.info = dict(
            rank=runner.rank, world_size=runner.world_size, wrapper=type(model).__name__,
            find_unused_parameters=getattr(model, 'find_unused_parameters', None),
            device_ids=getattr(model, 'device_ids', 'n/a'),
            optimizer=sorted(names[id(p)] for g in runner.optim_wrapper.optimizer.param_groups
                             for p in g['params']),
            trainable=sorted(n for n, p in module.named_parameters() if p.requires_grad),
            scheduler_optimizer_ok=all(
                s.optimizer in (runner.optim_wrapper, runner.optim_wrapper.optimizer)
                for s in (runner.param_schedulers or [])),
            start_iter=runner.iter, losses={})
        self.before = {n: p.detach().clone() for n, p in module.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.info['losses'][runner.iter] = float(outputs['loss'])

    def after_train(self, runner) -> None:
        model = runner.model
        module = model.module if is_model_wrapper(model) else model
        after = {n: p.detach().clone() for n, p in module.named_parameters()}
        torch.save(dict(info=self.info, before=self.before, after=after),
                   osp.join(self.out_dir, f'probe_rank{runner.rank}.pt'))

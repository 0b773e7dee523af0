"""A test-only hook, imported by the configs of the GPU training tests (``custom_imports``):
records what training really ran on (device, optimizer wrapper, autocast, process group)."""
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class GPUProbeHook(Hook):
    """Saves ``gpu_probe_rank<r>.pt`` in ``out_dir``: ``info``, ``before`` and ``after``."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    @staticmethod
    def _module(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        module = self._module(runner)
        self.info = dict(
            wrapper=type(runner.model).__name__,
            device_ids=getattr(runner.model, 'device_ids', None),
            devices=sorted({str(p.device) for p in module.parameters()}),
            optim_wrapper=type(runner.optim_wrapper).__name__,
            backend=dist.get_backend() if dist.is_initialized() else None,
            world_size=runner.world_size, losses=[], autocast=[],
            trainable=sorted(n for n, p in module.named_parameters() if p.requires_grad))
        self.before = {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
        # what the backbone's forward runs under: autocast on, and its dtype
        module.backbone.register_forward_pre_hook(self._record_autocast)

    def _record_autocast(self, module, args) -> None:
        if module.training:
            self.info['autocast'].append((torch.is_autocast_enabled('cuda'),
                                          str(torch.get_autocast_dtype('cuda'))))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.info['losses'].append(float(outputs['loss']))

    def after_train(self, runner) -> None:
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        self.info['loss_scale'] = float(scaler.get_scale()) if scaler is not None else None
        after = {n: p.detach().cpu().clone() for n, p in self._module(runner).named_parameters()}
        torch.save(dict(info=self.info, before=self.before, after=after),
                   osp.join(self.out_dir, f'gpu_probe_rank{runner.rank}.pt'))

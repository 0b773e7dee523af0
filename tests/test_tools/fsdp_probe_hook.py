"""A test-only hook for sharded runs (``custom_imports``): rank 0 saves the full parameters
(gathered with ``summon_full_params``) before and after training, and the losses."""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from flora_mm.engine import fsdp_clean_name


def _full_params(model) -> dict:
    with FSDP.summon_full_params(model, writeback=False):
        return {fsdp_clean_name(n): p.detach().clone() for n, p in model.module.named_parameters()}


@HOOKS.register_module(force=True)
class FSDPProbeHook(Hook):
    """Saves ``probe.pt`` in ``out_dir``: ``wrapper``, ``units``, ``start_iter``, ``losses``,
    ``inputs`` (pixel sums), ``trainable``, the full optimizer state at the start and the full
    parameters ``before`` / ``after`` training."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def before_train(self, runner) -> None:
        model = runner.model
        self.info = dict(
            wrapper=type(model).__name__, world_size=runner.world_size, start_iter=runner.iter,
            units=sorted(fsdp_clean_name(n) for n, m in model.named_modules()
                         if isinstance(m, FSDP) and n),
            trainable=sorted(fsdp_clean_name(n) for n, p in model.named_parameters()
                             if p.requires_grad),
            losses={}, inputs={})
        self.before = _full_params(model)
        self.optimizer = FSDP.optim_state_dict(model, runner.optim_wrapper.optimizer)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.info['losses'][runner.iter] = float(outputs['loss'])
        self.info['inputs'][runner.iter] = [float(x.float().sum()) for x in data_batch['inputs']]

    def after_train(self, runner) -> None:
        after = _full_params(runner.model)
        if runner.rank == 0:
            torch.save(dict(info=self.info, before=self.before, after=after,
                            optimizer=self.optimizer),
                       osp.join(self.out_dir, 'probe.pt'))

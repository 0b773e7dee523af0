"""One frozen backbone, several fine-tuned tasks: switch adapter sets without reloading the base.

FLoRA leaves the pretrained weights untouched, so models fine-tuned from the same ConvNeXt-V2
weights (Mask R-CNN on COCO, UperNet on ADE20K, Oriented R-CNN on DOTA, ...) differ in their
backbone only by the adapter tensors (plus whatever ``trainable`` kept trainable).
:class:`MultiTaskModel` builds the backbone once (pretrained weights loaded once), gives every
task its own neck and heads around that same module, keeps each task's backbone tensors on
the side and copies them in when the task is selected.
"""
import copy
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.config import Config

from .inference import build_inferencer, run_inferencer
from .launch import build_model, load_config

# Backbone settings that do not change the eval-mode network (may differ between tasks).
TRAIN_ONLY_KEYS = ('drop_path_rate', 'with_cp', 'init_cfg')


def _backbone_signature(cfg: Config) -> dict:
    backbone = copy.deepcopy(cfg.model.backbone.to_dict())
    for key in TRAIN_ONLY_KEYS:
        backbone.pop(key, None)
    return backbone


class _Task:
    """A task's model (heads around the shared backbone), inferencer and backbone tensors."""

    def __init__(self, name: str, inferencer, state: Dict[str, torch.Tensor]):
        self.name = name
        self.inferencer = inferencer
        self.state = state


class MultiTaskModel:
    """Several fine-tuned models sharing one frozen backbone instance.

    Example::

        mt = MultiTaskModel()
        mt.add_task('seg', 'configs/.../upernet_...py', 'seg.pth')
        mt.add_task('det', 'configs/.../mask-rcnn_...py', 'det.pth')   # base not reloaded
        mt.infer('det', ['a.jpg'], 'out/det')    # DetInferencer, det adapters active
        mt.infer('seg', ['a.jpg'], 'out/seg')    # switch: copies the seg adapter tensors in

    Every task must use the same backbone config (``arch``, ``pretrained``, ``adapter``,
    ``trainable``, ``out_indices``; ``drop_path_rate`` / ``with_cp`` may differ) and its
    checkpoint (full or adapter-only) must hold the same frozen weights; both are checked.

    Args:
        device: Torch device of the shared backbone and every task.
    """

    def __init__(self, device: str = 'cpu'):
        self.device = device
        self.backbone: Optional[nn.Module] = None
        self._signature: Optional[dict] = None
        self._first_config = None
        self._tasks: Dict[str, _Task] = {}
        self.active: Optional[str] = None
        self._task_keys: List[str] = []

    @property
    def tasks(self) -> List[str]:
        return list(self._tasks)

    def add_task(self, name: str, config, checkpoint: str,
                 cfg_options: Optional[dict] = None) -> None:
        """Add a fine-tuned model; the first task builds the shared backbone.

        Args:
            name: Task name used by :meth:`switch` / :meth:`infer`.
            config: Its config file (or loaded Config).
            checkpoint: Its full or adapter-only checkpoint.
            cfg_options: Config overrides.

        Raises:
            ValueError: Duplicate name, a backbone config that differs from the first task's
                (the differing keys are named), a checkpoint with other frozen weights.
        """
        from flora_mm.engine.checkpoint import frozen_state_keys
        if name in self._tasks:
            raise ValueError(f'task {name!r} exists already')
        cfg = load_config(config, cfg_options=cfg_options) if isinstance(config, str) else config
        signature = _backbone_signature(cfg)
        if self.backbone is None:
            self.backbone = build_model(cfg, cfg.model.backbone).to(self.device)
            self._signature, self._first_config = signature, config
            self._task_keys = [k for k in self.backbone.state_dict()
                               if k not in set(frozen_state_keys(self.backbone))]
        elif signature != self._signature:
            keys = sorted(k for k in set(signature) | set(self._signature)
                          if signature.get(k) != self._signature.get(k))
            raise ValueError(
                f'task {name!r}: model.backbone differs from the shared one (of '
                f'{self._first_config}) in {keys}: '
                + ', '.join(f'{k}={signature.get(k)!r} vs {self._signature.get(k)!r}'
                            for k in keys))
        # Heads around a small stand-in backbone, then the shared one takes its place: the
        # task's own copy of the base weights is never built.
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.backbone = dict(type='flora_mm.FLoRAConvNeXtV2', arch='atto',
                                  out_indices=self.backbone.out_indices)
        model = build_model(cfg, model_cfg)
        model.backbone = self.backbone
        self.active = None  # loading the checkpoint writes this task's tensors
        inferencer = build_inferencer(cfg, checkpoint, self.device, built_model=model)
        state = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()
                 if k in self._task_keys}
        self._tasks[name] = _Task(name, inferencer, state)
        self.active = name

    def switch(self, name: str) -> float:
        """Make ``name``'s adapter set active; returns the seconds it took (0 if active)."""
        if name not in self._tasks:
            raise KeyError(f'unknown task {name!r}; tasks: {self.tasks}')
        if name == self.active:
            return 0.
        start = time.perf_counter()
        own = self.backbone.state_dict(keep_vars=True)
        with torch.no_grad():
            for key, value in self._tasks[name].state.items():
                own[key].copy_(value)
        self.active = name
        return time.perf_counter() - start

    def model(self, name: str) -> nn.Module:
        """The task's model (shared backbone) with its adapter set active."""
        self.switch(name)
        return self._tasks[name].inferencer.model

    def inferencer(self, name: str):
        """The task's inferencer with its adapter set active (switch again after others)."""
        self.switch(name)
        return self._tasks[name].inferencer

    def infer(self, name: str, images: Sequence[str], out_dir: str,
              score_thr: float = 0.3) -> List[dict]:
        """Switch to ``name`` and run :func:`~flora_mm.apis.inference.run_inferencer`."""
        return run_inferencer(self.inferencer(name), images, out_dir, score_thr)


__all__ = ['MultiTaskModel']

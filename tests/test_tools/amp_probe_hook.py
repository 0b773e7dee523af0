"""A test-only hook (``custom_imports`` of the --amp test): records what mixed precision really
did in training: the optimizer wrapper, the autocast state and dtypes inside the backbone."""
import json
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class AmpProbeHook(Hook):
    """Writes ``amp_probe.json`` in ``out_dir``."""

    priority = 'LOWEST'

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.calls = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model

        def record(module, args, outputs):
            self.calls.append(dict(autocast=torch.is_autocast_enabled('cpu'),
                                   autocast_dtype=str(torch.get_autocast_dtype('cpu')),
                                   input=str(args[0].dtype),
                                   outputs=[str(o.dtype) for o in outputs]))

        model.backbone.register_forward_hook(record)
        wrapper = runner.optim_wrapper
        self.info = dict(wrapper=f'{type(wrapper).__module__}.{type(wrapper).__name__}',
                         cast_dtype=str(wrapper.cast_dtype),
                         param_dtypes={n: str(p.dtype) for n, p in model.named_parameters()})

    def after_train(self, runner) -> None:
        with open(osp.join(self.out_dir, 'amp_probe.json'), 'w') as f:
            json.dump(dict(self.info, calls=self.calls), f)

"""AdapterCheckpointHook: save checkpoints without the frozen base, load them back whole."""
import logging

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import BaseOptimWrapper
from torch.distributed.fsdp import FullyShardedDataParallel

from flora_mm.registry import HOOKS
from ..checkpoint import META_KEY, fill_frozen, is_adapter_only, strip_frozen
from .utils import unwrap_model


@HOOKS.register_module()
class AdapterCheckpointHook(Hook):
    """Adapter-only checkpoints: frozen parameters are dropped when saving, filled when loading.

    Saved checkpoints keep buffers, trainable weights, optimizer, schedulers and message hub,
    so ``--resume`` restores training exactly as long as the frozen base comes from pretrained
    weights (``pretrained=`` of the backbone, ``init_cfg`` of type Pretrained). Loading an
    adapter-only checkpoint (``load_from``, ``--resume``, ``tools/test.py``) fills the frozen
    tensors from the model; at test time (the runner calls no ``init_weights``) the hook runs
    ``init_weights()`` first so that ``init_cfg`` weights are in place. Full checkpoints load
    as usual.

    Which parameters are frozen is read at save time (``requires_grad``), so the hook works
    with adapters built into the model and with those added by ``FLoRAHook``.
    """

    priority = 'VERY_HIGH'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Drop the frozen parameters from ``checkpoint['state_dict']``."""
        strip_frozen(checkpoint, unwrap_model(runner.model))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Complete an adapter-only checkpoint with the model's pretrained frozen weights."""
        if not is_adapter_only(checkpoint):
            return
        if isinstance(runner.model, FullyShardedDataParallel):
            # The strategy loads with strict=False, which keeps the frozen base the model was
            # built with (pretrained); filling from state_dict() would gather the whole model.
            print_log('AdapterCheckpointHook: adapter-only checkpoint under FSDP: the frozen '
                      'tensors stay those the model was built with (pretrained)',
                      logger='current')
            return
        model = unwrap_model(runner.model)
        if (not isinstance(runner.optim_wrapper, BaseOptimWrapper)
                and hasattr(model, 'init_weights') and not getattr(model, 'is_init', True)):
            # test()/val() never initialise weights; frozen init_cfg weights are needed now.
            print_log('AdapterCheckpointHook: adapter-only checkpoint at test time: running '
                      'model.init_weights() so that frozen weights come from their pretrained '
                      'sources', logger='current')
            model.init_weights()
        absent = fill_frozen(checkpoint, model)
        print_log(f'AdapterCheckpointHook: adapter-only checkpoint: '
                  f'{len(checkpoint["meta"][META_KEY]["dropped_keys"]) - len(absent)} frozen '
                  'tensors taken from the pretrained model', logger='current')
        if absent:
            print_log(f'AdapterCheckpointHook: frozen keys of the checkpoint that the model '
                      f'lacks: {absent}', logger='current', level=logging.WARNING)

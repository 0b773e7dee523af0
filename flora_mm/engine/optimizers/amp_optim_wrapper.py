"""mmengine's ``AmpOptimWrapper``, also on machines without a GPU (bfloat16 autocast on CPU)."""
from typing import Optional, Union

import torch
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, \
    is_npu_available
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper

from flora_mm.registry import OPTIM_WRAPPERS


def _accelerator_available() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """Mixed-precision optimizer wrapper: ``tools/train.py --amp`` on GPUs and CPUs.

    On a GPU (NPU, MLU, MUSA) this is exactly mmengine's ``AmpOptimWrapper``: autocast in
    ``dtype`` (default float16) with a ``GradScaler`` (``loss_scale='dynamic'``, a float, or
    a dict of ``GradScaler`` arguments). mmengine 0.10.7 refuses to build that wrapper without
    one; here, on a CPU, the forward runs under CPU autocast in bfloat16, the only dtype
    mmengine's CPU autocast accepts, and the loss is not scaled: bfloat16 has fp32's exponent
    range, so gradients do not underflow (loss scaling exists for float16). ``loss_scale`` is
    then validated but unused, and checkpoints hold an empty ``loss_scaler`` state, which both
    variants load.

    Args:
        loss_scale: ``'dynamic'``, a float (static scale) or a dict of ``GradScaler`` kwargs.
        dtype: Autocast dtype (``'float16'``, ``'bfloat16'`` or a ``torch.dtype``); None
            means float16 on GPUs and bfloat16 on CPUs.
        use_fsdp: Use ``ShardedGradScaler`` (GPU only).
        **kwargs: Arguments of ``OptimWrapper``.
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None,
                 use_fsdp: bool = False,
                 **kwargs):
        if _accelerator_available():
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if not (loss_scale == 'dynamic' or isinstance(loss_scale, (float, dict))):
            raise TypeError(f'loss_scale must be a float, a dict or "dynamic", got '
                            f'{loss_scale!r}')
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f'AmpOptimWrapper: dtype={dtype!r} on a CPU; CPU autocast '
                             "supports only bfloat16 (optim_wrapper.dtype='bfloat16' or unset)")
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

"""ConvNeXt-V2 (timm) as an OpenMMLab backbone, with adapters injected at construction."""
import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from flora_mm.adapters import ADAPTER_METHODS, adapt_model, cast_frozen_weights
from flora_mm.registry import MODELS
from .convnextv2_checkpoint import load_pretrained

ARCHS = ('atto', 'femto', 'pico', 'nano', 'tiny', 'base', 'large', 'huge')
# The output norms ``norm{i}`` (the names of the official ConvNeXt detection / segmentation
# backbones and of mmpretrain's ConvNeXt): new modules, trained with the neck by every method.
OUT_NORMS = r'norm\d'


@MODELS.register_module()
class FLoRAConvNeXtV2(BaseModule):
    """timm's ConvNeXt-V2 as a dense-prediction backbone, with optional adapters.

    The stem and stages of ``timm.create_model(f'convnextv2_{arch}')`` become direct children,
    so parameter names are timm's (``stem.0.weight``, ``stages.2.downsample.1.weight``,
    ``stages.2.blocks.5.mlp.fc1.weight``): timm checkpoints load unchanged, adapter
    ``targets`` and the layer-decay optimizer constructor use the same names.

    Every returned stage goes through its own channels-first LayerNorm ``norm{i}`` (eps 1e-6),
    as in the official ConvNeXt(-V2) detection / segmentation backbones and mmpretrain's
    ConvNeXt with ``out_indices``, so the neck sees normalized features. The names match
    theirs, so ``norm{i}`` of a detector / segmentor checkpoint load; a classification
    checkpoint has none, and the norms start at identity (weight 1, bias 0). They are trained
    under every method, frozen base included, like the neck (``keep_trainable``).

    In train mode a stage without trainable parameters (the frozen base, or a stage that no
    adapter target reaches) runs in eval mode, so its drop path is off and the heads see the
    same features as at test time.

    Construction order (all in ``__init__``, because mmengine's test path never calls
    ``init_weights``): build the network, load ``pretrained``, inject the adapter, freeze the
    base. The model is therefore final before the runner wraps it in DDP and builds the
    optimizer.

    Args:
        arch: ``'atto'``, ``'femto'``, ``'pico'``, ``'nano'``, ``'tiny'``, ``'base'``,
            ``'large'`` or ``'huge'`` (timm ``convnextv2_<arch>``).
        out_indices: Stages whose outputs are returned (0..3, strides 4, 8, 16, 32).
        drop_path_rate: Stochastic depth rate, linearly increasing over the blocks.
        with_cp: Activation checkpointing per block (non-reentrant, so it works with frozen
            inputs and DDP); saves memory for large models at the cost of a second forward.
        norm_eval: Keep ``BatchNorm`` layers in eval mode while training. ConvNeXt-V2 itself
            only has LayerNorm and GRN, which have no running statistics, so this is a no-op
            for the stock network; frozen norms come from the adapter's freeze policy instead.
        pretrained: Local checkpoint file (timm, official fine-tuned, or FCMAE pre-training;
            optionally wrapped in ``state_dict`` / ``model``; ``.safetensors`` accepted).
        adapter: ``inject_adapters`` config, e.g. ``dict(type='FLoRA', rank=32, kernel_rank=2,
            scale=0.4)``; None trains the plain network (full fine-tuning). Without
            ``targets`` every Conv2d/Linear of the backbone is adapted: stem, downsampling
            convs, depthwise 7x7 convs and both point-wise layers of every block (the paper
            adapts "all weight matrices or tensors"); norms and GRN stay frozen. ``type`` may
            also be a freeze policy ('BitFit', 'Full', 'Frozen').
        trainable: Regexes (fullmatch on parameter or module names of this backbone) that
            stay trainable in addition to the adapter and the output norms, e.g.
            ``[r'.*norm.*']``.
        frozen_dtype: ``'bfloat16'`` or ``'float16'`` stores the frozen base weights of the
            adapted layers (99.9% of the backbone) in that dtype, halving their memory, for
            mixed-precision training (``--amp``); adapter parameters stay fp32, and the
            backbone also runs without autocast (ops in the input's dtype). Needs an adapter
            method (one of ``flora_mm.adapters.ADAPTER_METHODS``). None keeps everything in
            fp32.
        init_cfg: mmengine init config. ``type='Pretrained'`` is rejected: use ``pretrained``,
            which is loaded at construction and also works at test time.
    """

    def __init__(self,
                 arch: str = 'atto',
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 norm_eval: bool = False,
                 pretrained: Optional[str] = None,
                 adapter: Optional[dict] = None,
                 trainable: Sequence[str] = (),
                 frozen_dtype: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if init_cfg is not None and any(
                cfg.get('type') == 'Pretrained'
                for cfg in (init_cfg if isinstance(init_cfg, list) else [init_cfg])):
            raise ValueError('FLoRAConvNeXtV2: use `pretrained=<local file>` instead of '
                             "init_cfg=dict(type='Pretrained'): weights in init_cfg are only "
                             'loaded by init_weights(), which the test path never calls')
        super().__init__(init_cfg=init_cfg)
        if arch not in ARCHS:
            raise ValueError(f'FLoRAConvNeXtV2: arch={arch!r} is not one of {list(ARCHS)}')
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices) or len(
                set(out_indices)) != len(out_indices):
            raise ValueError(f'FLoRAConvNeXtV2: out_indices={out_indices} must be distinct '
                             'stage indices in 0..3')
        if trainable and adapter is None:
            raise ValueError('FLoRAConvNeXtV2: `trainable` needs an `adapter` (without one the '
                             'whole backbone is trained)')
        if frozen_dtype is not None and adapter is None:
            raise ValueError(f'FLoRAConvNeXtV2: frozen_dtype={frozen_dtype!r} needs an adapter '
                             f'of type {list(ADAPTER_METHODS)} (it stores the frozen base '
                             'weights of adapted layers)')
        import timm  # local: only this backbone needs timm
        from timm.layers import LayerNorm2d
        net = timm.create_model(
            f'convnextv2_{arch}', pretrained=False, num_classes=0,
            drop_path_rate=drop_path_rate)
        self.arch = arch
        self.out_indices = out_indices
        self.with_cp = with_cp
        self.norm_eval = norm_eval
        self.pretrained = pretrained
        self.stem = net.stem
        self.stages = net.stages
        self.depths = tuple(len(stage.blocks) for stage in self.stages)
        self.out_channels = tuple(net.feature_info[i]['num_chs'] for i in out_indices)
        for i, channels in zip(out_indices, self.out_channels):
            self.add_module(f'norm{i}', LayerNorm2d(channels, eps=1e-6))
        if pretrained is not None:
            load_pretrained(self, pretrained, fresh=[OUT_NORMS + r'\..*'])
        self.adapter = copy.deepcopy(adapter)
        self.frozen_dtype = frozen_dtype
        # Regexes every freeze policy keeps trainable, here and in FLoRAHook.
        self.keep_trainable = [OUT_NORMS] + list(trainable)
        if adapter is not None:
            report = adapt_model(self, adapter, trainable)
            if frozen_dtype is not None:
                try:
                    cast_frozen_weights(self, frozen_dtype)
                except ValueError as err:
                    raise ValueError(f'FLoRAConvNeXtV2: frozen_dtype={frozen_dtype!r} with '
                                     f"adapter type {adapter['type']!r}: {err}") from None
            print_log(f'FLoRAConvNeXtV2-{arch}: {report.summary()}', logger='current')

    def init_weights(self) -> None:
        """Keep the weights set in ``__init__`` (timm init or ``pretrained``)."""
        if self.pretrained is None:
            super().init_weights()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return the normalized feature maps of ``out_indices`` (NCHW, strides 4/8/16/32)."""
        x = self.stem(x)
        outs = []
        use_cp = self.with_cp and self.training and torch.is_grad_enabled()
        for i, stage in enumerate(self.stages[:max(self.out_indices) + 1]):
            x = stage.downsample(x)
            for block in stage.blocks:
                x = cp.checkpoint(block, x, use_reentrant=False) if use_cp else block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> 'FLoRAConvNeXtV2':
        """Set train mode; stages without trainable parameters stay in eval mode (no drop
        path), BatchNorm layers too if ``norm_eval``."""
        super().train(mode)
        for stage in self.stages:
            # Decided at every call: FLoRAHook may inject adapters after construction.
            if mode and not any(p.requires_grad for p in stage.parameters()):
                stage.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


__all__ = ['FLoRAConvNeXtV2', 'ARCHS']

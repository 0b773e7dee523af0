"""Layer-wise learning-rate decay for timm ConvNeXt names (and plain ViTs such as InternViT).

mmdet's ``LearningRateDecayOptimizerConstructor`` expects mmpretrain names
(``backbone.downsample_layers.*``, ``backbone.stages.<i>.<j>.*``); timm's names
(``backbone.stem.*``, ``backbone.stages.<i>.downsample.*``, ``backbone.stages.<i>.blocks.<j>.*``)
do not fit it. This constructor implements the ConvNeXt-V2 fine-tuning recipe on timm names.
"""
import re
from typing import Dict, List, Optional, Sequence

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from flora_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')
_BLOCK = re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.')
_DOWNSAMPLE = re.compile(r'stages\.(\d+)\.downsample\.')
# A plain ViT (InternViT): one stage of ``blocks.<j>``, embeddings below the first block.
_VIT_BLOCK = re.compile(r'blocks\.(\d+)\.')
_VIT_EMBED = ('patch_embed.', 'cls_token', 'pos_embed')


def infer_depths(names: Sequence[str]) -> List[int]:
    """Blocks per stage from timm ConvNeXt or plain ViT parameter names (relative to the
    backbone).

    A plain ViT (``blocks.<j>.*``, no stages) is one stage.

    Args:
        names: Parameter names such as ``stages.2.blocks.5.mlp.fc1.weight``.

    Returns:
        ``[blocks in stage 0, blocks in stage 1, ...]``.

    Raises:
        ValueError: No ``stages.<i>.blocks.<j>.`` name found.
    """
    depths: Dict[int, int] = {}
    for name in names:
        match = _BLOCK.match(name)
        vit = _VIT_BLOCK.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
        elif vit:
            depths[0] = max(depths.get(0, 0), int(vit.group(1)) + 1)
    if not depths:
        raise ValueError('no timm ConvNeXt block names (stages.<i>.blocks.<j>.*) or ViT block '
                         'names (blocks.<j>.*) found under the backbone prefix; check '
                         "paramwise_cfg['backbone_prefix']")
    return [depths.get(i, 0) for i in range(max(depths) + 1)]


def num_layer_ids(depths: Sequence[int], decay_type: str = 'layer_wise') -> int:
    """Number of layer ids, i.e. the id of everything outside the backbone plus one."""
    return (sum(depths) if decay_type == 'layer_wise' else len(depths)) + 2


def get_layer_id_for_convnext_or_vit(name: Optional[str], depths: Sequence[int],
                                     decay_type: str = 'layer_wise') -> int:
    """Layer id of a timm ConvNeXt or plain ViT parameter; the lr multiplier is
    ``decay_rate ** (num_ids - 1 - id)``.

    ``layer_wise`` follows ConvNeXt-V2's ``layer_decay_type='single'``: block ``j`` of stage
    ``i`` gets ``sum(depths[:i]) + j + 1``; the stem and each stage's downsampling layer share
    the id of the first block after them; everything outside the backbone gets
    ``sum(depths) + 1`` (multiplier 1). A plain ViT, as BEiT / InternVL do: embeddings get 0,
    block ``j`` gets ``j + 1``. ``stage_wise``: the stem and stage 0 get 1, stage ``i``
    gets ``i + 1``, the rest ``len(depths) + 1``.

    Args:
        name: Parameter name relative to the backbone (``stages.1.blocks.0.conv_dw.weight``),
            or None for a parameter outside the backbone.
        depths: Blocks per stage.
        decay_type: 'layer_wise' or 'stage_wise'.

    Returns:
        The layer id.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"paramwise_cfg['decay_type']={decay_type!r} is not one of "
                         f'{list(DECAY_TYPES)}')
    outside = num_layer_ids(depths, decay_type) - 1
    if name is None:
        return outside
    if name.startswith('stem.'):
        return 1
    if name.startswith(_VIT_EMBED):
        return 0
    vit = _VIT_BLOCK.match(name)
    if vit:
        return int(vit.group(1)) + 1 if decay_type == 'layer_wise' else 1
    block = _BLOCK.match(name)
    down = _DOWNSAMPLE.match(name)
    stage = int((block or down).group(1)) if (block or down) else None
    if stage is None:
        return outside  # e.g. a norm after the last stage
    if decay_type == 'stage_wise':
        return max(stage, 0) + 1
    first = sum(depths[:stage]) + 1
    return first + int(block.group(2)) if block else first


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for a timm ConvNeXt or a plain ViT backbone; only trainable
    parameters.

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float, required): lr multiplier per layer id below the top.
    - ``decay_type``: 'layer_wise' (default, one id per block) or 'stage_wise'.
    - ``backbone_prefix``: where the backbone's parameters live (default ``'backbone.'``;
      ``''`` for a bare backbone).

    No weight decay for biases, 1-d parameters (LayerNorm, GRN) and ``pos_embed`` /
    ``cls_token``, as in mmdet's constructor. Frozen parameters (``requires_grad=False``) are
    left out of the optimizer, so with adapters it holds exactly the trainable parameters.

    Example::

        optim_wrapper = dict(
            type='OptimWrapper',
            constructor='flora_mm.LayerDecayOptimizerConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise'))
    """

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Add one param group per (layer id, decay / no decay) to ``params``.

        Args:
            params: Param groups, extended in place.
            module: The model (DDP-wrapped models are unwrapped by the caller).
        """
        cfg = dict(self.paramwise_cfg)
        if 'decay_rate' not in cfg:
            raise ValueError("LayerDecayOptimizerConstructor needs paramwise_cfg['decay_rate']")
        unknown = set(cfg) - {'decay_rate', 'decay_type', 'backbone_prefix'}
        if unknown:
            raise ValueError(f'LayerDecayOptimizerConstructor: unknown paramwise_cfg keys '
                             f'{sorted(unknown)}')
        decay_rate = float(cfg['decay_rate'])
        decay_type = cfg.get('decay_type', 'layer_wise')
        prefix = cfg.get('backbone_prefix', 'backbone.')
        named = list(module.named_parameters())
        depths = infer_depths([n[len(prefix):] for n, _ in named if n.startswith(prefix)])
        num_ids = num_layer_ids(depths, decay_type)
        groups: Dict[str, dict] = {}
        for name, param in named:
            if not param.requires_grad:
                continue
            relative = name[len(prefix):] if name.startswith(prefix) else None
            layer_id = get_layer_id_for_convnext_or_vit(relative, depths, decay_type)
            no_decay = (param.ndim <= 1 or name.endswith('.bias')
                        or name.rsplit('.', 1)[-1] in ('pos_embed', 'cls_token'))
            key = f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}'
            if key not in groups:
                scale = decay_rate**(num_ids - 1 - layer_id)
                groups[key] = dict(params=[], lr=self.base_lr * scale, lr_scale=scale,
                                   layer_id=layer_id, group_name=key)
                if no_decay or self.base_wd is not None:
                    groups[key]['weight_decay'] = 0. if no_decay else self.base_wd
            groups[key]['params'].append(param)
        if get_dist_info()[0] == 0:
            lines = [f'  {k}: {len(g["params"])} tensors, lr_scale={g["lr_scale"]:.4g}, '
                     f'weight_decay={g.get("weight_decay", "default")}' for k, g in sorted(
                         groups.items(), key=lambda kv: kv[1]['layer_id'])]
            print_log(f'LayerDecayOptimizerConstructor ({decay_type}, rate {decay_rate}, '
                      f'depths {depths}):\n' + '\n'.join(lines), logger='current')
        params.extend(groups.values())

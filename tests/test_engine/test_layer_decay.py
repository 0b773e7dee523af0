"""LayerDecayOptimizerConstructor: layer ids on timm names, lr multipliers, decay, trainables."""
import pytest
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

import flora_mm  # noqa: F401
from flora_mm.engine.optimizers import (get_layer_id_for_convnext_or_vit, infer_depths,
                                        num_layer_ids)
from flora_mm.models import FLoRAConvNeXtV2

ATTO = (2, 2, 6, 2)


@pytest.mark.parametrize('name,expected', [
    ('stem.0.weight', 1),
    ('stem.1.bias', 1),
    ('stages.0.blocks.0.conv_dw.weight', 1),
    ('stages.0.blocks.1.mlp.fc2.flora_core', 2),
    ('stages.1.downsample.1.weight', 3),
    ('stages.1.blocks.0.norm.weight', 3),
    ('stages.1.blocks.1.mlp.grn.weight', 4),
    ('stages.2.downsample.0.weight', 5),
    ('stages.2.blocks.5.mlp.fc1.flora_factors.0', 10),
    ('stages.3.downsample.1.bias', 11),
    ('stages.3.blocks.1.conv_dw.weight', 12),
    (None, 13),
])
def test_layer_wise_ids(name, expected):
    assert get_layer_id_for_convnext_or_vit(name, ATTO, 'layer_wise') == expected
    assert num_layer_ids(ATTO, 'layer_wise') == 14


@pytest.mark.parametrize('name,expected', [
    ('stem.0.weight', 1), ('stages.0.blocks.1.conv_dw.weight', 1),
    ('stages.1.downsample.1.weight', 2), ('stages.2.blocks.5.norm.weight', 3),
    ('stages.3.blocks.0.conv_dw.weight', 4), (None, 5)])
def test_stage_wise_ids(name, expected):
    assert get_layer_id_for_convnext_or_vit(name, ATTO, 'stage_wise') == expected


def test_infer_depths_and_errors():
    names = [n for n, _ in FLoRAConvNeXtV2(arch='tiny').named_parameters()]
    assert infer_depths(names) == [3, 3, 9, 3]
    with pytest.raises(ValueError, match='backbone_prefix'):
        infer_depths(['neck.conv.weight'])
    with pytest.raises(ValueError, match='decay_type'):
        get_layer_id_for_convnext_or_vit('stem.0.weight', ATTO, 'block_wise')


class Detector(nn.Module):
    """Stand-in for an mmdet detector: ``backbone`` + ``neck`` attributes."""

    def __init__(self):
        super().__init__()
        self.backbone = FLoRAConvNeXtV2(
            arch='atto', adapter=dict(type='FLoRA', rank=2, kernel_rank=1, scale=1.),
            trainable=[r'stages\.3\.blocks\.1\.norm'])
        self.neck = nn.Conv2d(320, 8, 1)


def _official_single_id(name, depths):
    """ConvNeXt-V2 repo's ``get_num_layer_for_convnext_single`` on official names, applied to
    timm names translated back (stem = downsample_layers.0)."""
    parts = name.split('.')[1:]
    if not name.startswith('backbone.') or parts[0] not in ('stem', 'stages'):
        return sum(depths) + 1  # heads, and the output norms (``norm{i}``) as the official code
    if parts[0] == 'stem':
        return sum(depths[:0]) + 1
    stage = int(parts[1])
    if parts[2] == 'downsample':
        return sum(depths[:stage]) + 1
    return sum(depths[:stage]) + int(parts[3]) + 1


def test_optimizer_groups_lr_and_weight_decay():
    model = Detector()
    rate, lr, wd = 0.7, 1e-3, 0.05
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', constructor='flora_mm.LayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
        paramwise_cfg=dict(decay_rate=rate, decay_type='layer_wise')))
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            in_optimizer[names[id(p)]] = (group['lr'], group['weight_decay'])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(in_optimizer) == trainable
    assert 'backbone.stem.0.weight' not in in_optimizer  # frozen base
    assert 'backbone.stages.3.blocks.1.norm.weight' in in_optimizer  # `trainable` regex
    for name, (group_lr, group_wd) in in_optimizer.items():
        layer_id = _official_single_id(name, ATTO)
        assert group_lr == pytest.approx(lr * rate**(sum(ATTO) + 1 - layer_id)), name
        param = dict(model.named_parameters())[name]
        no_decay = param.ndim == 1 or name.endswith('.bias')
        assert group_wd == (0. if no_decay else wd), name
    assert in_optimizer['neck.weight'] == (pytest.approx(lr), wd)
    assert in_optimizer['backbone.stem.0.flora_core'][0] == pytest.approx(lr * rate**12)


def test_constructor_requires_decay_rate():
    with pytest.raises(ValueError, match='decay_rate'):
        build_optim_wrapper(Detector(), dict(
            type='OptimWrapper', constructor='flora_mm.LayerDecayOptimizerConstructor',
            optimizer=dict(type='SGD', lr=0.1), paramwise_cfg=dict(decay_type='layer_wise')))

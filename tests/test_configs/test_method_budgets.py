"""The LoHa / LoKr rows of Table 1 sit at FLoRA r42's budget (the paper's 12.77M) on the real
ConvNeXt-V2-L, built on the meta device (nothing allocated).

For each config: its rank is what ``solve_rank`` picks for 12.77M with the config's other
keys, the injected adapters count what the method's declared shapes say layer by layer, the
count is within the rank's rounding of the budget (no other rank comes closer), and it is
within 1 % of what the FLoRA r42 config itself trains.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import flora_mm  # noqa: F401  (registers flora_mm's modules)
from flora_mm.adapters import adapter_layers, count_adapter_params, layer_param_count, \
    solve_rank

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PAPER_FLORA_R42 = 12_770_000  # Table 1's FLoRA row, the budget of every r42 row
TASKS = {'mask-rcnn': ('mask-rcnn_convnextv2-l', '_fpn_1x_coco.py'),
         'upernet': ('upernet_convnextv2-l', '_8xb2-160k_ade20k-512x512.py'),
         'oriented-rcnn': ('oriented-rcnn-le90_convnextv2-l', '_fpn_1x_dota.py')}
ROWS = {'loha-r19': 'LoHa', 'lokr-r180': 'LoKr'}


def _backbone(path: str, adapter='keep') -> torch.nn.Module:
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    backbone = cfg.model.backbone
    backbone.pretrained = None
    if adapter != 'keep':
        backbone.adapter = adapter
    with torch.device('meta'):
        return MODELS.build(backbone)


@pytest.fixture(scope='module')
def plain_large():
    path = osp.join(ROOT, 'configs', 'flora', 'mask-rcnn',
                    'mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py')
    return _backbone(path, adapter=None), count_adapter_params(_backbone(path))['total']


@pytest.mark.parametrize('row', list(ROWS))
@pytest.mark.parametrize('task', list(TASKS))
def test_row_is_at_flora_r42_budget(task, row, plain_large):
    plain, flora_r42 = plain_large
    prefix, suffix = TASKS[task]
    path = osp.join(ROOT, 'configs', 'baselines', task, f'{prefix}-{row}{suffix}')
    adapter = Config.fromfile(path).model.backbone.adapter.to_dict()
    assert adapter['type'] == ROWS[row]
    assert adapter['rank'] == solve_rank(plain, adapter, PAPER_FLORA_R42)

    backbone = _backbone(path)
    layers = adapter_layers(backbone)
    assert len(layers) == 1 + 3 + 3 * sum(backbone.depths)  # every conv / linear
    options = {k: v for k, v in adapter.items() if k not in ('type', 'rank')}
    declared = {name: layer_param_count(tuple(layer.weight.shape), adapter['type'],
                                        adapter['rank'], **options)
                for name, layer in layers.items()}
    counts = count_adapter_params(backbone)
    assert counts['per_layer'] == declared
    total = counts['total']
    assert counts['trainable'] == total + sum(  # plus the output norms, as every row
        p.numel() for n, p in backbone.named_parameters() if n.startswith('norm'))

    def count(rank):
        return sum(layer_param_count(tuple(layer.weight.shape), adapter['type'], rank,
                                     **options) for layer in layers.values())

    gap = abs(total - PAPER_FLORA_R42)
    assert gap <= min(abs(count(adapter['rank'] + d) - PAPER_FLORA_R42) for d in (-1, 1))
    assert abs(total / flora_r42 - 1) < 0.01

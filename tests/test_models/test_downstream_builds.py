"""``type='flora_mm.FLoRAConvNeXtV2'`` resolves inside mmdet, mmseg and mmrotate models, also
under an inherited ``mmdet::`` / ``mmseg::`` / ``mmrotate::`` base (which sets ``_scope_``)."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS

import flora_mm  # noqa: F401
from flora_mm.adapters import count_adapter_params
from flora_mm.apis import register_task_modules
from flora_mm.models import FLoRAConvNeXtV2

BACKBONE = """
backbone=dict(
    _delete_=True,
    type='flora_mm.FLoRAConvNeXtV2',
    arch='atto',
    out_indices=(0, 1, 2, 3),
    adapter=dict(type='FLoRA', rank=4, kernel_rank=1, scale=0.4)),
"""

CONFIGS = {
    'mask_rcnn': (f"""
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)
model = dict(
    {BACKBONE}
    neck=dict(in_channels=[40, 80, 160, 320]))
""", 'mmdet'),
    'upernet': (f"""
_base_ = 'mmseg::_base_/models/upernet_r50.py'
custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    {BACKBONE}
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=32, norm_cfg=norm_cfg,
                     num_classes=150),
    auxiliary_head=dict(in_channels=160, channels=16, norm_cfg=norm_cfg, num_classes=150))
""", 'mmseg'),
    'oriented_rcnn': (f"""
_base_ = 'mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py'
custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)
model = dict(
    {BACKBONE}
    neck=dict(in_channels=[40, 80, 160, 320]))
""", 'mmrotate'),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(CONFIGS))
def test_backbone_builds_inside_downstream_models(tmp_path, name):
    text, scope = CONFIGS[name]
    path = tmp_path / f'{name}.py'
    path.write_text(textwrap.dedent(text))
    cfg = Config.fromfile(str(path))
    # the inherited package base tags the model with its scope; no default_scope is needed
    assert cfg.model._scope_ == scope
    assert cfg.model.backbone.type == 'flora_mm.FLoRAConvNeXtV2'
    register_task_modules(Config(dict(default_scope=scope)))
    model = MODELS.build(cfg.model).eval()
    assert isinstance(model.backbone, FLoRAConvNeXtV2)
    assert len(count_adapter_params(model.backbone)['per_layer']) == 40
    # the backbone is frozen except its adapters and output norms; the rest is untouched
    assert all(('flora_' in n or n.startswith('norm')) == p.requires_grad
               for n, p in model.backbone.named_parameters())
    other = [p for n, p in model.named_parameters() if not n.startswith('backbone.')]
    assert other and all(p.requires_grad for p in other)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.extract_feat(x)
        if name == 'upernet':
            assert tuple(model._forward(x).shape) == (1, 150, 16, 16)
            assert [tuple(f.shape[1:]) for f in feats] == [(40, 16, 16), (80, 8, 8),
                                                            (160, 4, 4), (320, 2, 2)]
        else:  # FPN: 5 levels of 256 channels, strides 4..64
            assert [tuple(f.shape[1:]) for f in feats] == [(256, 64 // s, 64 // s)
                                                            for s in (4, 8, 16, 32)] + [
                                                                (256, 1, 1)]

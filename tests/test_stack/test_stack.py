"""The pinned OpenMMLab stack imports and works together on Python 3.11."""
import importlib

import numpy as np
import pytest
import torch


def test_versions_are_the_pinned_ones():
    import mmcv
    import mmdet
    import mmengine
    import mmrotate
    import mmseg
    import timm

    import flora_mm
    assert mmcv.__version__ == '2.0.1'
    assert mmengine.__version__ == '0.10.7'
    assert mmdet.__version__ == '3.1.0'
    assert mmseg.__version__ == '1.2.2'
    assert mmrotate.__version__ == '1.0.0rc1'
    assert timm.__version__.startswith('1.0.')
    assert flora_mm.__version__



def test_mmdet_package_base_config_resolves(tmp_path):
    """``mmdet::`` bases go through mmengine's pkg_resources lookup (needs setuptools < 81)."""
    from mmengine.config import Config
    cfg_file = tmp_path / 'child.py'
    cfg_file.write_text("_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'\n"
                        "model = dict(backbone=dict(depth=18))\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.type == 'MaskRCNN'
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.type == 'ResNet'




def test_mask_rcnn_forward_backward_on_cpu():
    """A tiny mmdet Mask R-CNN computes finite losses and gradients on CPU (RoIAlign, nms)."""
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import MODELS
    from mmengine.structures import InstanceData
    from mmdet.structures.mask import BitmapMasks

    register_all_modules()
    cfg = Config.fromfile(importlib.import_module('mmdet').__path__[0]
                          + '/.mim/configs/_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    model = MODELS.build(cfg.model)
    torch.manual_seed(0)
    inputs = torch.randint(0, 255, (1, 3, 64, 64)).float()
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                         pad_shape=(64, 64), scale_factor=(1., 1.)))
    masks = np.zeros((1, 64, 64), dtype=np.uint8)
    masks[0, 10:40, 12:50] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[12., 10., 50., 40.]]),
                                       labels=torch.tensor([3]), masks=BitmapMasks(masks, 64, 64))
    data = model.data_preprocessor({'inputs': [inputs[0]], 'data_samples': [sample]}, True)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_head.parameters())


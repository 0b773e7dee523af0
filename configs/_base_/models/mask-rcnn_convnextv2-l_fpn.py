# Mask R-CNN + FPN (mmdet's base) on the ConvNeXt-V2-L backbone of convnextv2-l.py.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', './convnextv2-l.py']

model = dict(
    backbone=dict(_delete_=True, **_base_.convnextv2_large),
    neck=dict(in_channels=[192, 384, 768, 1536]))
